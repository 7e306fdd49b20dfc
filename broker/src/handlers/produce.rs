//! Produce (key 0), in two parts so a connection can pipeline produces:
//! `start` routes every partition of the request to the data plane at once
//! (in the owner's order before it returns), `Started::finish` awaits the
//! answers and builds the response in the request's order. Records must be
//! v2 record batches (magic 2): older message formats get
//! UNSUPPORTED_FOR_MESSAGE_FORMAT. acks=0 gets no response at all; the
//! writes are still awaited (a connection cannot run ahead of the data
//! plane) and a failed one closes the connection, as in Kafka: the client
//! has no other way to learn of it. A partition this node does not lead
//! is answered NOT_LEADER_OR_FOLLOWER (the client refreshes its metadata).
//! A request's `transactional_id` goes with each partition to the data
//! plane, which checks the transactional batches (`sluice_shard::Origin`).
//!
//! Authorization (`--authorizer`), as Kafka's KafkaApis, before anything
//! is queued: a request whose first batch of any partition is
//! transactional needs WRITE on its transactional id, else every
//! partition gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED; each topic needs
//! WRITE, else its partitions get TOPIC_AUTHORIZATION_FAILED while the
//! others are still written. With acks=0 a refusal closes the connection,
//! as any other failed partition does.

use std::sync::Arc;

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use kafka_protocol::ResponseError;

use super::{str_bytes, Ctx};
use crate::errors::{codes, is_busy, shard_error_code, BUSY_THROTTLE_MS};
use crate::plane::{Origin, ProducePartition, ProduceTicket, ShardError};
use crate::security::{AclOperation, AclResourceType, Session};

/// Offset of the magic byte in a record batch (and in old message sets).
const MAGIC_OFFSET: usize = 16;
const RECORD_BATCH_MAGIC: u8 = 2;
/// Offset of a v2 record batch's attributes (big-endian i16).
const ATTRIBUTES_OFFSET: usize = 21;
/// The transactional bit of a v2 record batch's attributes.
const TRANSACTIONAL_FLAG: u16 = 0x10;

/// A produce request whose partitions are all started.
pub struct Started {
    version: i16,
    acks: i16,
    responses: Vec<TopicProduceResponse>,
    /// (topic index, partition answer), in the request's order.
    partitions: Vec<(usize, Partition)>,
}

enum Partition {
    Answered(PartitionProduceResponse),
    Waiting(i32, ProduceTicket),
}

/// The end of a produce request.
pub enum Finished {
    Reply(ProduceResponse),
    /// acks=0, every partition written.
    Silent,
    /// acks=0 and a partition failed with this code.
    SilentFailed(i16),
}

/// Starts and finishes one request (no pipelining).
pub async fn handle(
    req: ProduceRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> Option<ProduceResponse> {
    match start(req, version, ctx, session).await.finish().await {
        Finished::Reply(r) => Some(r),
        Finished::Silent | Finished::SilentFailed(_) => None,
    }
}

/// Validates the request and starts every partition, in the request's
/// order: when this returns, each partition's batch has its place in that
/// partition's order (see `Shard::produce_start`). Partitions `session`
/// may not write are answered here and never queued.
pub async fn start(req: ProduceRequest, version: i16, ctx: &Ctx, session: &Session) -> Started {
    let acks = req.acks;
    // How long acks=-1 waits for the in-sync replicas once durable here.
    let timeout_ms = u32::try_from(req.timeout_ms).unwrap_or(0);
    let invalid_acks = (!(-1..=1).contains(&acks)).then(codes::invalid_required_acks);
    let txn_refused = transactional_id_refused(&req, ctx, session);
    let transactional_id: Option<Arc<str>> = req
        .transactional_id
        .as_ref()
        .map(|id| Arc::from(id.0.as_str()));
    let mut responses = Vec::with_capacity(req.topic_data.len());
    let mut partitions = Vec::new();
    for (topic_index, topic) in req.topic_data.into_iter().enumerate() {
        responses.push(topic_response(&topic));
        let TopicProduceData {
            name,
            partition_data,
            ..
        } = topic;
        // Kafka's order: the transactional id, then the topic, then acks.
        let refuse = txn_refused.or_else(|| {
            let allowed = ctx.allowed(
                session,
                AclOperation::Write,
                AclResourceType::Topic,
                name.0.as_str(),
            );
            if allowed {
                invalid_acks
            } else {
                Some(ResponseError::TopicAuthorizationFailed.code())
            }
        });
        for p in partition_data {
            let started = start_one(
                name.0.as_str(),
                p,
                (acks, timeout_ms, &transactional_id),
                refuse,
                ctx,
            )
            .await;
            partitions.push((topic_index, started));
        }
    }
    Started {
        version,
        acks,
        responses,
        partitions,
    }
}

impl Started {
    /// Awaits every partition's answer and builds the response.
    pub async fn finish(self) -> Finished {
        let Started {
            version,
            acks,
            mut responses,
            partitions,
        } = self;
        for (topic_index, partition) in partitions {
            let r = match partition {
                Partition::Answered(r) => r,
                Partition::Waiting(index, ticket) => partition_response(index, ticket).await,
            };
            responses[topic_index].partition_responses.push(r);
        }
        if acks == 0 {
            let failed = responses
                .iter()
                .flat_map(|t| t.partition_responses.iter())
                .map(|p| p.error_code)
                .find(|&code| code != codes::NONE);
            return failed.map_or(Finished::Silent, Finished::SilentFailed);
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
        Finished::Reply(resp)
    }
}

/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED when the request carries
/// transactional records (the first batch of some partition is
/// transactional, as Kafka's `RequestUtils::hasTransactionalRecords`
/// checks) and `session` may not WRITE its transactional id (or it names
/// none). Reads no batch without `--authorizer`.
fn transactional_id_refused(req: &ProduceRequest, ctx: &Ctx, session: &Session) -> Option<i16> {
    if ctx.node.security.authorizer.is_none() || !has_transactional_records(req) {
        return None;
    }
    let allowed = req.transactional_id.as_ref().is_some_and(|id| {
        ctx.allowed(
            session,
            AclOperation::Write,
            AclResourceType::TransactionalId,
            id.0.as_str(),
        )
    });
    (!allowed).then(|| ResponseError::TransactionalIdAuthorizationFailed.code())
}

fn has_transactional_records(req: &ProduceRequest) -> bool {
    req.topic_data
        .iter()
        .flat_map(|t| t.partition_data.iter())
        .filter_map(|p| p.records.as_deref())
        .any(first_batch_transactional)
}

/// Whether `records` starts with a v2 batch whose transactional bit is set.
fn first_batch_transactional(records: &[u8]) -> bool {
    if records.get(MAGIC_OFFSET) != Some(&RECORD_BATCH_MAGIC) {
        return false;
    }
    match records.get(ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]) & TRANSACTIONAL_FLAG != 0,
        _ => false,
    }
}

/// The message of a partition refused before it was queued: Kafka's for
/// a refused transactional id (the request's error response), none else.
fn refusal_message(code: i16) -> Option<String> {
    let txn = ResponseError::TransactionalIdAuthorizationFailed;
    (code == txn.code()).then(|| super::metadata::denied_message(txn))
}

fn topic_response(topic: &TopicProduceData) -> TopicProduceResponse {
    let mut t = TopicProduceResponse::default();
    t.name = topic.name.clone();
    t.partition_responses = Vec::with_capacity(topic.partition_data.len());
    t
}

/// Kafka's internal topics: written by the coordinators only, marked
/// internal in Metadata.
pub(crate) fn is_internal_topic(name: &str) -> bool {
    name == crate::plane::OFFSETS_TOPIC || name == crate::plane::TXN_TOPIC
}

async fn start_one(
    name: &str,
    p: PartitionProduceData,
    (acks, timeout_ms, transactional_id): (i16, u32, &Option<Arc<str>>),
    refuse: Option<i16>,
    ctx: &Ctx,
) -> Partition {
    let index = p.index;
    let fail = |code: i16, message: Option<String>| {
        Partition::Answered(error_response(index, code, message))
    };
    if let Some(code) = refuse {
        return fail(code, refusal_message(code));
    }
    let Some(topic) = ctx.topic(name) else {
        return fail(codes::unknown_topic_or_partition(), None);
    };
    if is_internal_topic(name) {
        // As Kafka: only the group and transaction coordinators write
        // their topics.
        let message = format!("cannot append to internal topic {name}");
        return fail(codes::invalid_topic(), Some(message));
    }
    // Produce v10+ would carry the current leader here; served up to v9.
    if let Err(code) = ctx.led_here(&topic, index) {
        return fail(code, None);
    }
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
    let ticket = ctx
        .shard
        .produce_start(ProducePartition {
            topic,
            partition: index,
            records,
            acks,
            timeout_ms,
            origin: Origin::Client,
            transactional_id: transactional_id.clone(),
        })
        .await;
    Partition::Waiting(index, ticket)
}

async fn partition_response(index: i32, ticket: ProduceTicket) -> PartitionProduceResponse {
    let result = ticket.wait().await;
    let mut r = PartitionProduceResponse::default();
    r.index = index;
    match result.error {
        Some(e) => {
            r.error_code = shard_error_code(&e);
            r.error_message = Some(str_bytes(e.to_string()));
            r.base_offset = -1;
            if let ShardError::KeylessRecord { batch_index } = e {
                // KIP-467: the record that made the batch fail (v8+).
                r.record_errors = vec![BatchIndexAndErrorMessage::default()
                    .with_batch_index(batch_index)
                    .with_batch_index_error_message(Some(str_bytes(
                        "Compacted topic cannot accept message without key".to_string(),
                    )))];
            }
        }
        None => {
            r.base_offset = result.base_offset;
            r.log_append_time_ms = result.log_append_time_ms;
            r.log_start_offset = result.log_start_offset;
        }
    }
    r
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
