//! Produce (key 0). Every partition of the request goes to the data plane
//! at once (the plane routes it to the owning shard); the response keeps
//! the request's order. Records must be v2 record batches (magic 2): older
//! message formats get UNSUPPORTED_FOR_MESSAGE_FORMAT. acks=0 gets no
//! response at all, but the write is still awaited so a connection cannot
//! run ahead of the data plane.

use futures::future::join_all;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::{str_bytes, Ctx};
use crate::errors::{codes, is_busy, shard_error_code, BUSY_THROTTLE_MS};
use crate::plane::ProducePartition;

/// Offset of the magic byte in a record batch (and in old message sets).
const MAGIC_OFFSET: usize = 16;
const RECORD_BATCH_MAGIC: u8 = 2;

pub async fn handle(req: ProduceRequest, version: i16, ctx: &Ctx) -> Option<ProduceResponse> {
    let acks = req.acks;
    let refuse = if !(-1..=1).contains(&acks) {
        Some(codes::invalid_required_acks())
    } else if req.transactional_id.is_some() {
        Some(codes::transactional_id_authorization_failed())
    } else {
        None
    };
    let mut responses = Vec::with_capacity(req.topic_data.len());
    let mut work = Vec::new();
    for (topic_index, topic) in req.topic_data.into_iter().enumerate() {
        responses.push(topic_response(&topic));
        let TopicProduceData {
            name,
            partition_data,
            ..
        } = topic;
        for p in partition_data {
            work.push(produce_one(
                topic_index,
                name.0.as_str().to_string(),
                p,
                acks,
                refuse,
                ctx,
            ));
        }
    }
    for (topic_index, partition) in join_all(work).await {
        responses[topic_index].partition_responses.push(partition);
    }
    if acks == 0 {
        return None;
    }
    let mut resp = ProduceResponse::default();
    resp.responses = responses;
    let busy = resp
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .any(|p| is_busy(p.error_code));
    if busy && version >= 1 {
        resp.throttle_time_ms = BUSY_THROTTLE_MS;
    }
    if version < 8 {
        resp.responses
            .iter_mut()
            .flat_map(|t| t.partition_responses.iter_mut())
            .for_each(|p| p.error_message = None);
    }
    Some(resp)
}

fn topic_response(topic: &TopicProduceData) -> TopicProduceResponse {
    let mut t = TopicProduceResponse::default();
    t.name = topic.name.clone();
    t.partition_responses = Vec::with_capacity(topic.partition_data.len());
    t
}

async fn produce_one(
    topic_index: usize,
    name: String,
    p: PartitionProduceData,
    acks: i16,
    refuse: Option<i16>,
    ctx: &Ctx,
) -> (usize, PartitionProduceResponse) {
    let index = p.index;
    let fail =
        |code: i16, message: Option<String>| (topic_index, error_response(index, code, message));
    if let Some(code) = refuse {
        return fail(code, None);
    }
    let Some(topic) = ctx.topic(&name) else {
        return fail(codes::unknown_topic_or_partition(), None);
    };
    let records = match p.records {
        Some(r) => r,
        None => return fail(codes::corrupt_message(), Some("no records".into())),
    };
    match records.get(MAGIC_OFFSET) {
        Some(&RECORD_BATCH_MAGIC) => {}
        Some(0 | 1) => {
            return fail(
                codes::unsupported_for_message_format(),
                Some("message format v0/v1 is not supported".into()),
            )
        }
        _ => return fail(codes::corrupt_message(), Some("not a record batch".into())),
    }
    let result = ctx
        .shard
        .produce(ProducePartition {
            topic,
            partition: index,
            records,
            acks,
        })
        .await;
    let mut r = PartitionProduceResponse::default();
    r.index = index;
    match result.error {
        Some(e) => {
            r.error_code = shard_error_code(&e);
            r.error_message = Some(str_bytes(e.to_string()));
            r.base_offset = -1;
        }
        None => {
            r.base_offset = result.base_offset;
            r.log_append_time_ms = result.log_append_time_ms;
            r.log_start_offset = result.log_start_offset;
        }
    }
    (topic_index, r)
}

fn error_response(
    index: i32,
    error_code: i16,
    message: Option<String>,
) -> PartitionProduceResponse {
    let mut r = PartitionProduceResponse::default();
    r.index = index;
    r.error_code = error_code;
    r.base_offset = -1;
    r.error_message = message.map(str_bytes);
    r
}
