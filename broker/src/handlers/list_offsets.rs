//! ListOffsets (key 2): EARLIEST (-2), LATEST (-1) or the first offset whose
//! timestamp is at or after the given one. v0 answers in `old_style_offsets`.
//! LATEST with `isolation_level` 1 (read_committed, v2+) answers the last
//! stable offset instead of the high watermark, as Kafka does.
//! Only the partition's leader answers (else NOT_LEADER_OR_FOLLOWER).
//! A topic `session` may not DESCRIBE (`--authorizer`) gets
//! TOPIC_AUTHORIZATION_FAILED for each of its partitions, as in Kafka.

use futures::future::join_all;
use kafka_protocol::messages::list_offsets_request::ListOffsetsPartition as RequestPartition;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use kafka_protocol::ResponseError;

use super::Ctx;
use crate::errors::{codes, shard_error_code};
use crate::plane::ListOffsetsPartition;
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: ListOffsetsRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> ListOffsetsResponse {
    let mut work = Vec::new();
    let isolation_level = if version >= 2 { req.isolation_level } else { 0 };
    let mut topics = Vec::with_capacity(req.topics.len());
    for (ti, t) in req.topics.into_iter().enumerate() {
        let mut out = ListOffsetsTopicResponse::default();
        out.name = t.name.clone();
        topics.push(out);
        let allowed = ctx.allowed(
            session,
            AclOperation::Describe,
            AclResourceType::Topic,
            t.name.0.as_str(),
        );
        if !allowed {
            topics[ti].partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = ListOffsetsPartitionResponse::default();
                    r.partition_index = p.partition_index;
                    r.error_code = ResponseError::TopicAuthorizationFailed.code();
                    r
                })
                .collect();
            continue;
        }
        let name = t.name.0.to_string();
        for p in t.partitions {
            work.push(list_one(
                ti,
                name.clone(),
                p,
                (version, isolation_level),
                ctx,
            ));
        }
    }
    for (ti, p) in join_all(work).await {
        topics[ti].partitions.push(p);
    }
    let mut resp = ListOffsetsResponse::default();
    resp.topics = topics;
    resp
}

async fn list_one(
    ti: usize,
    name: String,
    p: RequestPartition,
    (version, isolation_level): (i16, i8),
    ctx: &Ctx,
) -> (usize, ListOffsetsPartitionResponse) {
    let mut r = ListOffsetsPartitionResponse::default();
    r.partition_index = p.partition_index;
    let Some(topic) = ctx.topic(&name) else {
        r.error_code = codes::unknown_topic_or_partition();
        return (ti, r);
    };
    let epoch = match ctx.led_here(&topic, p.partition_index) {
        Ok(meta) => meta.leader_epoch,
        Err(code) => {
            r.error_code = code;
            return (ti, r);
        }
    };
    let req = ListOffsetsPartition {
        topic,
        partition: p.partition_index,
        timestamp: p.timestamp,
        isolation_level,
    };
    let result = ctx.shard.list_offsets(req).await;
    if let Some(e) = &result.error {
        r.error_code = shard_error_code(e);
        return (ti, r);
    }
    if version == 0 {
        r.old_style_offsets = vec![result.offset];
    } else {
        r.offset = result.offset;
        r.timestamp = result.timestamp;
        r.leader_epoch = if version >= 4 { epoch } else { -1 };
    }
    (ti, r)
}
