//! ElectLeaders (key 43): preferred (type 0; the only one of v0) and
//! unclean (type 1) leader elections, decided by the metadata in one Raft
//! entry per `ENTRY_PARTITIONS_MAX` partitions (see
//! `Metadata::elect_leaders`):
//!
//! - preferred: the first replica leads when it is in sync and unfenced
//!   (PREFERRED_LEADER_NOT_AVAILABLE otherwise); ELECTION_NOT_NEEDED when
//!   it leads already;
//! - unclean: only a partition without leader gets one, a live in-sync
//!   replica if there is one, else any live replica (which is then the
//!   ISR alone: records it lacks are lost); ELECTION_NOT_NEEDED when the
//!   partition has a leader, ELIGIBLE_LEADERS_NOT_AVAILABLE when no replica
//!   is live.
//!
//! A new leader bumps the partition's leader epoch. `topic_partitions`
//! null means every partition: only those an election would change are
//! elected and answered, as Kafka does.
//!
//! Needs ALTER on the cluster (`--authorizer`), else
//! CLUSTER_AUTHORIZATION_FAILED at the top (v1+) and for each named
//! partition, as in Kafka.

use std::collections::BTreeMap;

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse};
use sluice_raft::{Election, MetaError, MetadataView, NO_LEADER};

use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name, Ctx};
use crate::errors::{codes, meta_error_code};
use crate::security::{AclOperation, Session};

/// Kafka's `ElectionType` codes.
const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;
/// Partitions one metadata entry elects at most (a request naming more
/// becomes several entries).
const ENTRY_PARTITIONS_MAX: usize = 10_000;

/// One partition's answer: topic, partition, and its error (code, message).
type Answer = (String, i32, Result<(), (i16, String)>);

pub async fn handle(
    req: ElectLeadersRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> ElectLeadersResponse {
    let mut resp = ElectLeadersResponse::default();
    if !ctx.allowed_on_cluster(session, AclOperation::Alter) {
        let denied = ResponseError::ClusterAuthorizationFailed;
        return refused(
            &req,
            version,
            denied.code(),
            super::metadata::denied_message(denied),
        );
    }
    let election = match req.election_type {
        PREFERRED => Election::Preferred,
        UNCLEAN => Election::Unclean,
        other => {
            let message = format!("unknown election type {other}");
            return refused(&req, version, codes::invalid_request(), message);
        }
    };
    let view = ctx.view();
    let all = req.topic_partitions.is_none();
    let mut answers: Vec<Answer> = Vec::new();
    let mut asked: Vec<(String, u32)> = Vec::new();
    match &req.topic_partitions {
        None => asked = eligible(&view, election),
        Some(topics) => {
            for t in topics {
                for &p in &t.partitions {
                    match u32::try_from(p) {
                        Ok(p) => asked.push((t.topic.to_string(), p)),
                        Err(_) => answers.push((
                            t.topic.to_string(),
                            p,
                            Err((
                                codes::unknown_topic_or_partition(),
                                format!("no partition {p}"),
                            )),
                        )),
                    }
                }
            }
        }
    }
    for chunk in asked.chunks(ENTRY_PARTITIONS_MAX) {
        let outcome = ctx.meta.elect_leaders(election, chunk.to_vec()).await;
        for (i, (topic, p)) in chunk.iter().enumerate() {
            let r = match &outcome {
                Ok(each) => each[i].clone(),
                Err(e) => Err(e.clone()),
            };
            if all && matches!(r, Err(MetaError::ElectionNotNeeded(_))) {
                continue;
            }
            let r = r.map_err(|e| (meta_error_code(&e), e.to_string()));
            answers.push((topic.clone(), *p as i32, r));
        }
    }
    resp.replica_election_results = results(answers.into_iter());
    resp
}

/// The whole request refused: the top-level code (v1+), and every named
/// partition gets it too (v0 has no top-level code).
fn refused(
    req: &ElectLeadersRequest,
    version: i16,
    code: i16,
    message: String,
) -> ElectLeadersResponse {
    let mut resp = ElectLeadersResponse::default();
    if version >= 1 {
        resp.error_code = code;
    }
    let named = req
        .topic_partitions
        .iter()
        .flatten()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.to_string(), *p)));
    resp.replica_election_results =
        results(named.map(|(t, p)| (t, p, Err((code, message.clone())))));
    resp
}

/// The partitions an election of every partition would change.
fn eligible(view: &MetadataView, election: Election) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for (name, topic) in &view.topics {
        for (i, p) in topic.partitions.iter().enumerate() {
            let wanted = match election {
                Election::Preferred => p.replicas.first().is_some_and(|r| *r != p.leader),
                Election::Unclean => p.leader == NO_LEADER,
            };
            if wanted {
                out.push((name.to_string(), i as u32));
            }
        }
    }
    out
}

/// The answers grouped by topic, in the order topics first appear.
fn results(answers: impl Iterator<Item = Answer>) -> Vec<ReplicaElectionResult> {
    let mut order: Vec<String> = Vec::new();
    let mut by_topic: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
    for (topic, partition, r) in answers {
        let mut pr = PartitionResult::default();
        pr.partition_id = partition;
        if let Err((code, message)) = r {
            pr.error_code = code;
            pr.error_message = Some(str_bytes(message));
        }
        if !by_topic.contains_key(&topic) {
            order.push(topic.clone());
        }
        by_topic.entry(topic).or_default().push(pr);
    }
    order
        .into_iter()
        .map(|topic| {
            let mut t = ReplicaElectionResult::default();
            t.partition_result = by_topic.remove(&topic).unwrap_or_default();
            t.topic = topic_name(&topic);
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_grouped_by_topic_in_order() {
        let r = results(
            [
                ("b".to_string(), 1, Ok(())),
                ("a".to_string(), 0, Err((84, "not needed".to_string()))),
                ("b".to_string(), 0, Ok(())),
            ]
            .into_iter(),
        );
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].topic.as_str(), "b");
        assert_eq!(r[0].partition_result.len(), 2);
        assert_eq!(r[1].partition_result[0].error_code, 84);
        assert_eq!(
            r[1].partition_result[0].error_message.as_deref(),
            Some("not needed")
        );
    }
}
