//! TxnOffsetCommit (key 28): offsets committed inside a transaction, sent
//! to the group coordinator. They are written to the group's offsets
//! partition as a transactional batch of the producer and count only once
//! the transaction commits (its marker lands there). Partitions of unknown
//! topics get UNKNOWN_TOPIC_OR_PARTITION; the rest share the verdict.

use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use super::Ctx;
use crate::errors::{codes, group_error_code};
use crate::plane::{CommitRequest, CommittedOffset, GroupRequest, GroupResponse, TxnCommitRequest};
use crate::security::Session;

pub async fn handle(
    req: TxnOffsetCommitRequest,
    _version: i16,
    ctx: &Ctx, session: &Session,
) -> TxnOffsetCommitResponse {
    let now_ms = super::now_ms();
    let mut offsets = Vec::new();
    for t in &req.topics {
        if ctx.topic(&t.name.0).is_none() {
            continue;
        }
        for p in &t.partitions {
            offsets.push((
                t.name.0.to_string(),
                p.partition_index,
                CommittedOffset {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    commit_timestamp_ms: now_ms,
                },
            ));
        }
    }
    let commit = TxnCommitRequest {
        commit: CommitRequest {
            group_id: req.group_id.0.to_string(),
            generation_id: req.generation_id,
            member_id: req.member_id.to_string(),
            group_instance_id: req.group_instance_id.map(|s| s.to_string()),
            offsets,
        },
        transactional_id: req.transactional_id.0.to_string(),
        producer_id: req.producer_id.0,
        producer_epoch: req.producer_epoch,
    };
    let code = match ctx.not_coordinator(&commit.commit.group_id) {
        Some(code) => code,
        None => match ctx.shard.group(GroupRequest::TxnCommit(commit)).await {
            GroupResponse::Commit(r) => group_error_code(r.error.as_ref()),
            _ => codes::NONE,
        },
    };
    let mut resp = TxnOffsetCommitResponse::default();
    resp.topics = req
        .topics
        .into_iter()
        .map(|t| {
            let known = ctx.topic(&t.name.0).is_some();
            let mut out = TxnOffsetCommitResponseTopic::default();
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = TxnOffsetCommitResponsePartition::default();
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
