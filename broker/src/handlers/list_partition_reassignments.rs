//! ListPartitionReassignments (key 46): the reassignments in progress
//! (`MetadataView::reassignments`), each with the partition's current
//! replicas (target first, then the replicas being removed) and the
//! replicas being added and removed; all of them when `topics` is null,
//! else those of the named partitions (others are left out, as in Kafka).
//! Needs DESCRIBE on the cluster (`--authorizer`), else
//! CLUSTER_AUTHORIZATION_FAILED with the named partitions listed bare, as
//! Kafka's error response.

use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};
use sluice_raft::{MetadataView, Reassignment};

use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name, wire_id, Ctx};
use crate::security::{AclOperation, Session};

pub fn handle(
    req: ListPartitionReassignmentsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> ListPartitionReassignmentsResponse {
    if !ctx.allowed_on_cluster(session, AclOperation::Describe) {
        return refused(&req);
    }
    let view = ctx.view();
    let mut found: Vec<(String, Vec<OngoingPartitionReassignment>)> = Vec::new();
    let mut push = |topic: &str, partition: u32, r: &Reassignment| {
        let entry = ongoing(&view, topic, partition, r);
        match found.last_mut() {
            Some((t, list)) if t == topic => list.push(entry),
            _ => found.push((topic.to_string(), vec![entry])),
        }
    };
    match &req.topics {
        None => {
            for ((topic, partition), r) in &view.reassignments {
                push(topic, *partition, r);
            }
        }
        Some(topics) => {
            for t in topics {
                for &p in &t.partition_indexes {
                    let Ok(partition) = u32::try_from(p) else {
                        continue;
                    };
                    let key = (std::sync::Arc::from(t.name.as_str()), partition);
                    if let Some(r) = view.reassignments.get(&key) {
                        push(t.name.as_str(), partition, r);
                    }
                }
            }
        }
    }
    let mut resp = ListPartitionReassignmentsResponse::default();
    resp.topics = found
        .into_iter()
        .map(|(name, partitions)| {
            let mut t = OngoingTopicReassignment::default();
            t.name = topic_name(&name);
            t.partitions = partitions;
            t
        })
        .collect();
    resp
}

/// Kafka's error response: CLUSTER_AUTHORIZATION_FAILED, each named
/// partition listed with nothing else.
fn refused(req: &ListPartitionReassignmentsRequest) -> ListPartitionReassignmentsResponse {
    let denied = ResponseError::ClusterAuthorizationFailed;
    let mut resp = ListPartitionReassignmentsResponse::default();
    resp.error_code = denied.code();
    resp.error_message = Some(str_bytes(super::metadata::denied_message(denied)));
    resp.topics = req
        .topics
        .iter()
        .flatten()
        .map(|t| {
            let mut out = OngoingTopicReassignment::default();
            out.name = t.name.clone();
            out.partitions = t
                .partition_indexes
                .iter()
                .map(|&p| {
                    let mut o = OngoingPartitionReassignment::default();
                    o.partition_index = p;
                    o
                })
                .collect();
            out
        })
        .collect();
    resp
}

fn ids(list: &[u64]) -> Vec<BrokerId> {
    list.iter().map(|id| BrokerId(wire_id(*id))).collect()
}

fn ongoing(
    view: &MetadataView,
    topic: &str,
    partition: u32,
    r: &Reassignment,
) -> OngoingPartitionReassignment {
    let replicas = view
        .topics
        .get(topic)
        .and_then(|t| t.partitions.get(partition as usize))
        .map(|p| p.replicas.clone())
        .unwrap_or_default();
    let mut o = OngoingPartitionReassignment::default();
    o.partition_index = i32::try_from(partition).unwrap_or(i32::MAX);
    o.replicas = ids(&replicas);
    o.adding_replicas = ids(&r.adding);
    o.removing_replicas = ids(&r.removing);
    o
}
