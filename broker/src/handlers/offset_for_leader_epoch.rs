//! OffsetForLeaderEpoch (key 23), versions 0-4: for each partition, the
//! largest leader epoch <= the requested one in this leader's log and the
//! offset where it ends (the start of the next epoch, or the log end for
//! the current one). A follower truncates its log there before fetching.
//! Only the leader answers (else NOT_LEADER_OR_FOLLOWER); a
//! `current_leader_epoch` (v2+, -1: unchecked) older than the partition's
//! gets FENCED_LEADER_EPOCH, a newer one UNKNOWN_LEADER_EPOCH. An epoch
//! the log does not know is answered with epoch and end offset -1.
//!
//! Authorization (`--authorizer`), as Kafka's KafkaApis (KIP-320): with
//! CLUSTER_ACTION on the cluster (followers) every topic may be asked;
//! without, a topic `session` may not DESCRIBE gets
//! TOPIC_AUTHORIZATION_FAILED for each of its partitions.

use futures::future::join_all;
use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderPartition;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use super::Ctx;
use crate::errors::{codes, shard_error_code};
use crate::plane;
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: OffsetForLeaderEpochRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> OffsetForLeaderEpochResponse {
    let cluster_action = ctx.allowed_on_cluster(session, AclOperation::ClusterAction);
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.topic.0.to_string();
        let mut out = OffsetForLeaderTopicResult::default();
        let allowed = cluster_action
            || ctx.allowed(
                session,
                AclOperation::Describe,
                AclResourceType::Topic,
                &name,
            );
        out.partitions = if allowed {
            join_all(t.partitions.iter().map(|p| one(&name, p, version, ctx))).await
        } else {
            t.partitions.iter().map(|p| refused(p.partition)).collect()
        };
        out.topic = t.topic;
        topics.push(out);
    }
    let mut resp = OffsetForLeaderEpochResponse::default();
    resp.topics = topics;
    resp
}

fn refused(partition: i32) -> EpochEndOffset {
    let mut r = EpochEndOffset::default();
    r.partition = partition;
    r.leader_epoch = -1;
    r.end_offset = -1;
    r.error_code = ResponseError::TopicAuthorizationFailed.code();
    r
}

async fn one(name: &str, p: &OffsetForLeaderPartition, version: i16, ctx: &Ctx) -> EpochEndOffset {
    let mut r = EpochEndOffset::default();
    r.partition = p.partition;
    r.leader_epoch = -1;
    r.end_offset = -1;
    let Some(topic) = ctx.topic(name) else {
        r.error_code = codes::unknown_topic_or_partition();
        return r;
    };
    let current = match ctx.led_here(&topic, p.partition) {
        Ok(meta) => meta.leader_epoch,
        Err(code) => {
            r.error_code = code;
            return r;
        }
    };
    if version >= 2 && p.current_leader_epoch >= 0 && p.current_leader_epoch != current {
        r.error_code = if p.current_leader_epoch < current {
            ResponseError::FencedLeaderEpoch.code()
        } else {
            ResponseError::UnknownLeaderEpoch.code()
        };
        return r;
    }
    match plane::end_offset_for_epoch(&ctx.shard, &topic, p.partition, p.leader_epoch).await {
        Ok((epoch, end_offset)) => {
            r.leader_epoch = if version >= 1 { epoch } else { -1 };
            r.end_offset = end_offset;
        }
        Err(e) => r.error_code = shard_error_code(&e),
    }
    r
}
