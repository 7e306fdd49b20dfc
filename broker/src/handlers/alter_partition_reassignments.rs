//! AlterPartitionReassignments (key 45): moves partitions to other
//! replicas, or cancels a move (`replicas` null), one metadata (Raft) entry
//! per `ENTRY_PARTITIONS_MAX` partitions (see
//! `Metadata::reassign_partitions`).
//!
//! A move adds the target replicas first: the partition's replicas become
//! the target followed by the original replicas not in it, so the new
//! replicas are created on their nodes and copy the log from the leader
//! through ordinary replication (from the leader's log start). The leader
//! adds each to the ISR when it has caught up; the ISR change that makes
//! the ISR hold every target replica completes the move in the same apply:
//! replicas := target, ISR := ISR ∩ target, and a leader that is not a
//! target replica hands over to the first in-sync target replica (epoch +
//! 1). Until then every record acknowledged with acks=all is on every
//! in-sync replica, so none is lost. A cancellation restores the original
//! replicas (NO_REASSIGNMENT_IN_PROGRESS when there is none). Target
//! brokers must be registered (INVALID_REPLICA_ASSIGNMENT otherwise).
//!
//! Needs ALTER on the cluster (`--authorizer`), else
//! CLUSTER_AUTHORIZATION_FAILED at the top and for every partition, as
//! Kafka's error response.

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
};

use kafka_protocol::ResponseError;

use super::{replica_list, str_bytes, topic_name, Ctx};
use crate::errors::{codes, meta_error_code};
use crate::security::{AclOperation, Session};

/// Partitions one metadata entry moves at most.
const ENTRY_PARTITIONS_MAX: usize = 10_000;

type Answer = Result<(), (i16, String)>;

pub async fn handle(
    req: AlterPartitionReassignmentsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> AlterPartitionReassignmentsResponse {
    if !ctx.allowed_on_cluster(session, AclOperation::Alter) {
        return refused(&req);
    }
    let mut answers: Vec<(String, i32, Option<Answer>)> = Vec::new();
    let mut moves: Vec<(String, u32, Option<Vec<u64>>)> = Vec::new();
    let mut slots: Vec<usize> = Vec::new();
    for t in &req.topics {
        let topic = t.name.to_string();
        for p in &t.partitions {
            let index = p.partition_index;
            let bad = |code: i16, m: String| (topic.clone(), index, Some(Err((code, m))));
            let Ok(partition) = u32::try_from(index) else {
                answers.push(bad(
                    codes::unknown_topic_or_partition(),
                    format!("no partition {index}"),
                ));
                continue;
            };
            let target = match p.replicas.as_deref().map(replica_list) {
                None => None,
                Some(Ok(list)) => Some(list),
                Some(Err(m)) => {
                    answers.push(bad(codes::invalid_replica_assignment(), m));
                    continue;
                }
            };
            slots.push(answers.len());
            answers.push((topic.clone(), index, None));
            moves.push((topic.clone(), partition, target));
        }
    }
    let mut slot = slots.into_iter();
    for chunk in moves.chunks(ENTRY_PARTITIONS_MAX) {
        let outcome = ctx.meta.reassign_partitions(chunk.to_vec()).await;
        for i in 0..chunk.len() {
            let r = match &outcome {
                Ok(each) => each[i].clone(),
                Err(e) => Err(e.clone()),
            };
            let at = slot.next().expect("one slot per move");
            answers[at].2 = Some(r.map_err(|e| (meta_error_code(&e), e.to_string())));
        }
    }
    let mut resp = AlterPartitionReassignmentsResponse::default();
    let mut order: Vec<String> = Vec::new();
    let mut by_topic: BTreeMap<String, Vec<ReassignablePartitionResponse>> = BTreeMap::new();
    for (topic, index, answer) in answers {
        let mut r = ReassignablePartitionResponse::default();
        r.partition_index = index;
        if let Some(Err((code, message))) = answer {
            r.error_code = code;
            r.error_message = Some(str_bytes(message));
        }
        if !by_topic.contains_key(&topic) {
            order.push(topic.clone());
        }
        by_topic.entry(topic).or_default().push(r);
    }
    resp.responses = order
        .into_iter()
        .map(|name| {
            let mut t = ReassignableTopicResponse::default();
            t.partitions = by_topic.remove(&name).unwrap_or_default();
            t.name = topic_name(&name);
            t
        })
        .collect();
    resp
}

/// Kafka's error response: CLUSTER_AUTHORIZATION_FAILED at the top and for
/// every partition.
fn refused(req: &AlterPartitionReassignmentsRequest) -> AlterPartitionReassignmentsResponse {
    let denied = ResponseError::ClusterAuthorizationFailed;
    let mut resp = AlterPartitionReassignmentsResponse::default();
    resp.error_code = denied.code();
    resp.error_message = Some(str_bytes(super::metadata::denied_message(denied)));
    resp.responses = req
        .topics
        .iter()
        .map(|t| {
            let mut out = ReassignableTopicResponse::default();
            out.name = t.name.clone();
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = ReassignablePartitionResponse::default();
                    r.partition_index = p.partition_index;
                    r.error_code = denied.code();
                    r.error_message = Some(str_bytes(super::metadata::denied_message(denied)));
                    r
                })
                .collect();
            out
        })
        .collect();
    resp
}
