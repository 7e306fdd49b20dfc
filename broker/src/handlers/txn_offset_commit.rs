//! TxnOffsetCommit (key 28): offsets committed inside a transaction, sent
//! to the group coordinator. They are written to the group's offsets
//! partition as a transactional batch of the producer and count only once
//! the transaction commits (its marker lands there). Partitions of unknown
//! topics get UNKNOWN_TOPIC_OR_PARTITION; the rest share the verdict.
//!
//! Authorization (`--authorizer`), as Kafka: WRITE on the transactional id
//! (else every partition TRANSACTIONAL_ID_AUTHORIZATION_FAILED), READ on
//! the group (else GROUP_AUTHORIZATION_FAILED), then READ on each topic
//! (else its partitions TOPIC_AUTHORIZATION_FAILED, not committed).

use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use kafka_protocol::ResponseError;

use super::Ctx;
use crate::errors::{codes, group_error_code};
use crate::plane::{CommitRequest, CommittedOffset, GroupRequest, GroupResponse, TxnCommitRequest};
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: TxnOffsetCommitRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> TxnOffsetCommitResponse {
    if let Some(code) = refusal(&req, ctx, session) {
        return answer(req, |_| code);
    }
    let now_ms = super::now_ms();
    let mut offsets = Vec::new();
    for t in &req.topics {
        if topic_refusal(&t.name.0, ctx, session).is_some() {
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
            group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
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
    answer(req, |name| {
        topic_refusal(name, ctx, session).unwrap_or(code)
    })
}

/// The whole request refused: WRITE on the transactional id, then READ on
/// the group.
fn refusal(req: &TxnOffsetCommitRequest, ctx: &Ctx, session: &Session) -> Option<i16> {
    let (id, group) = (req.transactional_id.0.as_str(), req.group_id.0.as_str());
    ctx.txn_offsets_refusal(session, id, group)
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
fn answer(req: TxnOffsetCommitRequest, code_of: impl Fn(&str) -> i16) -> TxnOffsetCommitResponse {
    let mut resp = TxnOffsetCommitResponse::default();
    resp.topics = req
        .topics
        .into_iter()
        .map(|t| {
            let code = code_of(&t.name.0);
            let mut out = TxnOffsetCommitResponseTopic::default();
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = TxnOffsetCommitResponsePartition::default();
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
