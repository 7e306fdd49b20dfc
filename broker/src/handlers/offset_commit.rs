//! OffsetCommit (key 8): committed offsets of a group, durable in the
//! coordinator shard's WAL before the answer. Partitions of unknown topics
//! get UNKNOWN_TOPIC_OR_PARTITION; the rest share the group's verdict.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use super::Ctx;
use crate::errors::{codes, group_error_code};
use crate::plane::{CommitRequest, CommittedOffset, GroupRequest, GroupResponse};
use crate::security::Session;

pub async fn handle(req: OffsetCommitRequest, _version: i16, ctx: &Ctx, session: &Session) -> OffsetCommitResponse {
    let now_ms = super::now_ms();
    let mut offsets = Vec::new();
    for t in &req.topics {
        if ctx.topic(&t.name.0).is_none() {
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
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
        offsets,
    };
    let code = match ctx.not_coordinator(&commit.group_id) {
        Some(code) => code,
        None => match ctx.shard.group(GroupRequest::Commit(commit)).await {
            GroupResponse::Commit(r) => group_error_code(r.error.as_ref()),
            _ => codes::NONE,
        },
    };
    let mut resp = OffsetCommitResponse::default();
    resp.topics = req
        .topics
        .into_iter()
        .map(|t| {
            let known = ctx.topic(&t.name.0).is_some();
            let mut out = OffsetCommitResponseTopic::default();
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = OffsetCommitResponsePartition::default();
                    r.partition_index = p.partition_index;
                    r.error_code = if known {
                        code
                    } else {
                        codes::unknown_topic_or_partition()
                    };
                    r
                })
                .collect();
            out.name = t.name;
            out
        })
        .collect();
    resp
}
