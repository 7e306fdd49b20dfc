//! DeleteRecords (key 21): advances each partition's log start offset
//! (offset -1: up to the high watermark). The owning shard logs the new
//! log start as a WAL entry and answers once it is durable, with the
//! partition's low watermark; an offset above the high watermark gets
//! OFFSET_OUT_OF_RANGE. Only the partition's leader deletes (else
//! NOT_LEADER_OR_FOLLOWER). A topic `session` may not DELETE
//! (`--authorizer`) gets TOPIC_AUTHORIZATION_FAILED for each partition.

use futures::future::join_all;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use kafka_protocol::ResponseError;

use super::Ctx;
use crate::errors::{codes, shard_error_code};
use crate::plane::DeleteRecordsPartition;
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: DeleteRecordsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.as_str();
        let allowed = ctx.allowed(session, AclOperation::Delete, AclResourceType::Topic, name);
        let topic = if allowed { ctx.topic(name) } else { None };
        let work = t.partitions.iter().map(|p| {
            let topic = topic.clone();
            let (index, offset) = (p.partition_index, p.offset);
            async move {
                let mut r = DeleteRecordsPartitionResult::default();
                r.partition_index = index;
                r.low_watermark = -1;
                if !allowed {
                    r.error_code = ResponseError::TopicAuthorizationFailed.code();
                    return r;
                }
                let Some(topic) = topic else {
                    r.error_code = codes::unknown_topic_or_partition();
                    return r;
                };
                if let Err(code) = ctx.led_here(&topic, index) {
                    r.error_code = code;
                    return r;
                }
                let req = DeleteRecordsPartition {
                    topic,
                    partition: index,
                    offset,
                };
                match ctx.shard.delete_records(req).await {
                    Ok(low) => r.low_watermark = low,
                    Err(e) => r.error_code = shard_error_code(&e),
                }
                r
            }
        });
        let mut out = DeleteRecordsTopicResult::default();
        out.partitions = join_all(work).await;
        out.name = t.name;
        topics.push(out);
    }
    let mut resp = DeleteRecordsResponse::default();
    resp.topics = topics;
    resp
}
