//! OffsetCommit (key 8): committed offsets of a group, durable in the
//! coordinator shard's WAL before the answer. Partitions of unknown topics
//! get UNKNOWN_TOPIC_OR_PARTITION; the rest share the group's verdict.
//!
//! Authorization (`--authorizer`), as Kafka: READ on the group, else every
//! partition gets GROUP_AUTHORIZATION_FAILED; then READ on each topic,
//! else its partitions get TOPIC_AUTHORIZATION_FAILED and are not
//! committed.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use kafka_protocol::ResponseError;

use super::Ctx;
use crate::errors::{codes, group_error_code};
use crate::plane::{CommitRequest, CommittedOffset, GroupRequest, GroupResponse};
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: OffsetCommitRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> OffsetCommitResponse {
    let group = AclResourceType::Group;
    if !ctx.allowed(session, AclOperation::Read, group, &req.group_id.0) {
        let denied = ResponseError::GroupAuthorizationFailed.code();
        return answer(req, |_| denied);
    }
    let now_ms = super::now_ms();
    let mut offsets = Vec::new();
    for t in &req.topics {
        if topic_refusal(&t.name.0, ctx, session).is_some() {
            continue;
        }
        for p in &t.partitions {
            let commit_timestamp_ms = if p.commit_timestamp >= 0 {
                p.commit_timestamp
            } else {
                now_ms
            };
            offsets.push((
                t.name.0.to_string(),
                p.partition_index,
                CommittedOffset {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    commit_timestamp_ms,
                },
            ));
        }
    }
    let commit = CommitRequest {
        group_id: req.group_id.0.to_string(),
        generation_id: req.generation_id_or_member_epoch,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        offsets,
    };
    let code = match ctx.not_coordinator(&commit.group_id) {
        Some(code) => code,
        None => match ctx.shard.group(GroupRequest::Commit(commit)).await {
            GroupResponse::Commit(r) => group_error_code(r.error.as_ref()),
            _ => codes::NONE,
        },
    };
    answer(req, |name| {
        topic_refusal(name, ctx, session).unwrap_or(code)
    })
}

/// Why a topic's offsets are not committed: TOPIC_AUTHORIZATION_FAILED
/// without READ on it, UNKNOWN_TOPIC_OR_PARTITION when it does not exist.
fn topic_refusal(name: &str, ctx: &Ctx, session: &Session) -> Option<i16> {
    if !ctx.allowed(session, AclOperation::Read, AclResourceType::Topic, name) {
        return Some(ResponseError::TopicAuthorizationFailed.code());
    }
    ctx.topic(name)
        .is_none()
        .then(codes::unknown_topic_or_partition)
}

/// Every requested partition answered with its topic's code.
fn answer(req: OffsetCommitRequest, code_of: impl Fn(&str) -> i16) -> OffsetCommitResponse {
    let mut resp = OffsetCommitResponse::default();
    resp.topics = req
        .topics
        .into_iter()
        .map(|t| {
            let code = code_of(&t.name.0);
            let mut out = OffsetCommitResponseTopic::default();
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = OffsetCommitResponsePartition::default();
                    r.partition_index = p.partition_index;
                    r.error_code = code;
                    r
                })
                .collect();
            out.name = t.name;
            out
        })
        .collect();
    resp
}
