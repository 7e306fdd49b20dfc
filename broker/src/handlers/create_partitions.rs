//! CreatePartitions (key 37): grows a topic to `count` partitions, one
//! metadata (Raft) entry per topic; new partitions are placed on shards as
//! CreateTopics places them, and the answer waits (bounded by the
//! request's `timeout_ms`) until their shards created them. Explicit
//! `assignments` give the replicas of each new partition (preferred
//! leader first): one list per new partition, as many replicas as the
//! topic's partitions have, no broker twice; the metadata checks in apply
//! that every broker is registered (INVALID_REPLICA_ASSIGNMENT otherwise).
//! Partitions never shrink. A topic `session` may not ALTER
//! (`--authorizer`) gets TOPIC_AUTHORIZATION_FAILED, as in Kafka.

use futures::future::join_all;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use kafka_protocol::ResponseError;

use super::{str_bytes, with_deadline, Ctx};
use crate::config::PARTITIONS_PER_TOPIC_MAX;
use crate::errors::{codes, meta_error_code, shard_error_code};
use crate::security::quota::MutationQuota;
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: CreatePartitionsRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> CreatePartitionsResponse {
    let wait_ms = super::create_topics::ready_wait_ms(req.timeout_ms);
    let validate_only = req.validate_only;
    // KIP-599: versions 3 and later refuse a topic over the quota.
    let mutations = MutationQuota::new(ctx, session, version >= 3);
    let mutations = &mutations;
    let results = join_all(req.topics.iter().map(|t| async move {
        let name = t.name.0.as_str();
        if !ctx.allowed(session, AclOperation::Alter, AclResourceType::Topic, name) {
            let denied = ResponseError::TopicAuthorizationFailed;
            return (denied.code(), Some(super::metadata::denied_message(denied)));
        }
        let have = ctx.topic(name).map_or(0, |topic| topic.partitions.len());
        let added = usize::try_from(t.count).unwrap_or(0).saturating_sub(have);
        if !validate_only && added > 0 && !mutations.admit(u32::try_from(added).unwrap_or(u32::MAX))
        {
            let e = ResponseError::ThrottlingQuotaExceeded;
            return (
                e.code(),
                Some("The throttling quota has been exceeded.".into()),
            );
        }
        grow_one(t, validate_only, wait_ms, ctx).await
    }))
    .await;
    let mut resp = CreatePartitionsResponse::default();
    resp.throttle_time_ms = mutations.throttle_ms();
    resp.results = req
        .topics
        .iter()
        .zip(results)
        .map(|(t, (code, message))| {
            let mut r = CreatePartitionsTopicResult::default();
            r.name = t.name.clone();
            r.error_code = code;
            r.error_message = message.map(str_bytes);
            r
        })
        .collect();
    resp
}

async fn grow_one(
    t: &CreatePartitionsTopic,
    validate_only: bool,
    wait_ms: u64,
    ctx: &Ctx,
) -> (i16, Option<String>) {
    let name = t.name.0.as_str();
    let Some(topic) = ctx.topic(name) else {
        return (
            codes::unknown_topic_or_partition(),
            Some(format!("unknown topic '{name}'")),
        );
    };
    let have = topic.partitions.len();
    let count = match u32::try_from(t.count) {
        Ok(n) if n as usize > have && n <= PARTITIONS_PER_TOPIC_MAX => n,
        _ => {
            let message = format!(
                "topic '{name}' has {have} partitions; {} is not in {}..={PARTITIONS_PER_TOPIC_MAX}",
                t.count,
                have + 1
            );
            return (codes::invalid_partitions(), Some(message));
        }
    };
    let assignment = match assignment(t, count as usize - have, &topic) {
        Ok(a) => a,
        Err(message) => return (codes::invalid_replica_assignment(), Some(message)),
    };
    if validate_only {
        return (codes::NONE, None);
    }
    let grown = match ctx
        .meta
        .create_partitions_assigned(name, count, assignment)
        .await
    {
        Ok(t) => t,
        Err(e) => return (meta_error_code(&e), Some(e.to_string())),
    };
    tracing::info!(topic = name, partitions = count, "partitions created");
    match with_deadline(wait_ms, ctx.shard.await_topic_ready(&grown)).await {
        Some(Ok(())) => (codes::NONE, None),
        Some(Err(e)) => (shard_error_code(&e), Some(e.to_string())),
        None => (
            codes::request_timed_out(),
            Some("partitions not ready in time".into()),
        ),
    }
}

/// The replica lists of the `new` partitions (empty: placed by the
/// controller). Whether the brokers are registered is the metadata's to
/// decide, in apply.
fn assignment(
    t: &CreatePartitionsTopic,
    new: usize,
    topic: &sluice_raft::TopicMeta,
) -> Result<Vec<Vec<u64>>, String> {
    let Some(lists) = t.assignments.as_ref().filter(|a| !a.is_empty()) else {
        return Ok(Vec::new());
    };
    if lists.len() != new {
        return Err(format!(
            "{new} new partitions but {} replica assignments",
            lists.len()
        ));
    }
    let factor = topic.partitions.first().map_or(1, |p| p.replicas.len());
    lists
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let replicas = super::replica_list(&a.broker_ids)?;
            if replicas.len() != factor {
                return Err(format!(
                    "new partition {} has {} replicas; the topic's partitions have {factor}",
                    topic.partitions.len() + i,
                    replicas.len()
                ));
            }
            Ok(replicas)
        })
        .collect()
}
