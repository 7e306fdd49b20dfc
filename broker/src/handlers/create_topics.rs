//! CreateTopics (key 19). Each topic is one metadata (Raft) entry; the
//! answer waits until the shards owning its partitions have created them
//! (`Shard::await_topic_ready`), bounded by the request's `timeout_ms`.
//! `num_partitions = -1` takes the node default, `replication_factor = -1`
//! the node's default replication factor (at most the live brokers);
//! explicit `assignments` (with both at -1, as Kafka requires) give each
//! partition's replicas, the preferred leader first. The answer carries
//! the replication factor the topic got. Configs are checked by
//! `topic_config::validate_all`: a name that is no Kafka topic config, or
//! a value of the wrong type, is INVALID_CONFIG.
//!
//! Authorization (`--authorizer`), as Kafka's controller, before any
//! other check: CREATE on the cluster or on the topic, else
//! TOPIC_AUTHORIZATION_FAILED ("Authorization failed."); a created topic
//! `session` may not DESCRIBE_CONFIGS answers `topic_config_error_code`
//! TOPIC_AUTHORIZATION_FAILED (v5+).

use std::collections::BTreeMap;

use futures::future::join_all;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use sluice_raft::TopicSpec;

use kafka_protocol::ResponseError;

use super::{str_bytes, topic_uuid, valid_topic_name, with_deadline, Ctx};
use crate::config::PARTITIONS_PER_TOPIC_MAX;
use crate::errors::{codes, meta_error_code, shard_error_code};
use crate::security::quota::MutationQuota;
use crate::security::{AclOperation, AclResourceType, Session};

/// Upper bound of the wait for the shards, whatever the request asks.
const READY_WAIT_MS_MAX: u64 = 60_000;

/// How long to wait for the owning shards to create new partitions: the
/// request's `timeout_ms`, at least 1 ms and at most `READY_WAIT_MS_MAX`.
/// Shared by CreateTopics and CreatePartitions.
pub fn ready_wait_ms(timeout_ms: i32) -> u64 {
    u64::try_from(timeout_ms)
        .unwrap_or(0)
        .clamp(1, READY_WAIT_MS_MAX)
}

pub async fn handle(
    req: CreateTopicsRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> CreateTopicsResponse {
    let wait_ms = ready_wait_ms(req.timeout_ms);
    let validate_only = req.validate_only;
    let cluster_create = ctx.allowed_on_cluster(session, AclOperation::Create);
    // KIP-599: versions 6 and later refuse a topic over the quota.
    let mutations = MutationQuota::new(ctx, session, version >= 6);
    let mutations = &mutations;
    let results = join_all(req.topics.into_iter().map(|t| async move {
        let name = t.name.0.as_str();
        let may_create = cluster_create
            || ctx.allowed(session, AclOperation::Create, AclResourceType::Topic, name);
        let may_describe_configs = ctx.allowed(
            session,
            AclOperation::DescribeConfigs,
            AclResourceType::Topic,
            name,
        );
        let partitions = if !t.assignments.is_empty() {
            u32::try_from(t.assignments.len()).unwrap_or(u32::MAX)
        } else if t.num_partitions > 0 {
            t.num_partitions.unsigned_abs()
        } else {
            ctx.node.default_partitions
        };
        let mut r = if may_create && !validate_only && !mutations.admit(partitions) {
            let e = ResponseError::ThrottlingQuotaExceeded;
            result(
                &t,
                e.code(),
                Some("The throttling quota has been exceeded.".into()),
            )
        } else if may_create {
            create_one(t, validate_only, wait_ms, ctx).await
        } else {
            let code = ResponseError::TopicAuthorizationFailed.code();
            result(&t, code, Some("Authorization failed.".into()))
        };
        let refused_or_created = !may_create || r.error_code == codes::NONE;
        if version >= 5 && !may_describe_configs && refused_or_created {
            r.topic_config_error_code = ResponseError::TopicAuthorizationFailed.code();
        }
        r
    }))
    .await;
    let mut resp = CreateTopicsResponse::default();
    resp.throttle_time_ms = mutations.throttle_ms();
    resp.topics = results
        .into_iter()
        .map(|r| if version >= 1 { r } else { without_message(r) })
        .collect();
    resp
}

fn without_message(mut r: CreatableTopicResult) -> CreatableTopicResult {
    r.error_message = None;
    r
}

async fn create_one(
    t: CreatableTopic,
    validate_only: bool,
    wait_ms: u64,
    ctx: &Ctx,
) -> CreatableTopicResult {
    let name = t.name.0.to_string();
    let spec = match validate(&t, &name, ctx) {
        Ok(spec) => spec,
        Err((code, message)) => return result(&t, code, Some(message)),
    };
    let partitions = spec.partitions;
    let factor = spec
        .assignment
        .first()
        .map_or(spec.replication_factor, |r| {
            u16::try_from(r.len()).unwrap_or(u16::MAX)
        });
    if validate_only {
        return ok_result(&t, None, partitions, factor);
    }
    let topic = match ctx.meta.create_topic(spec).await {
        Ok(topic) => topic,
        Err(e) => return result(&t, meta_error_code(&e), Some(e.to_string())),
    };
    tracing::debug!(topic = name, partitions, "topic created");
    match with_deadline(wait_ms, ctx.shard.await_topic_ready(&topic)).await {
        Some(Ok(())) => {
            let factor = topic.partitions.first().map_or(factor, |p| {
                u16::try_from(p.replicas.len()).unwrap_or(u16::MAX)
            });
            ok_result(&t, Some(topic_uuid(&topic)), partitions, factor)
        }
        Some(Err(e)) => result(&t, shard_error_code(&e), Some(e.to_string())),
        None => result(
            &t,
            codes::request_timed_out(),
            Some("partitions not ready in time".into()),
        ),
    }
}

fn validate(t: &CreatableTopic, name: &str, ctx: &Ctx) -> Result<TopicSpec, (i16, String)> {
    if !valid_topic_name(name) {
        return Err((
            codes::invalid_topic(),
            format!("invalid topic name '{name}'"),
        ));
    }
    if ctx.topic(name).is_some() {
        return Err((
            codes::topic_already_exists(),
            format!("topic '{name}' already exists"),
        ));
    }
    if !t.assignments.is_empty() {
        return explicit(t, name);
    }
    let live = ctx.live_count(&ctx.view());
    let replication_factor = match t.replication_factor {
        -1 => ctx.node.default_replication_factor,
        n if n >= 1 => n as u16,
        n => {
            return Err((
                codes::invalid_replication_factor(),
                format!("replication factor {n} is not -1 or at least 1"),
            ))
        }
    };
    if usize::from(replication_factor) > live {
        return Err((
            codes::invalid_replication_factor(),
            format!(
                "replication factor {replication_factor} is larger than the {live} live brokers"
            ),
        ));
    }
    let partitions = match t.num_partitions {
        -1 => ctx.node.default_partitions,
        n if n >= 1 && n as u32 <= PARTITIONS_PER_TOPIC_MAX => n as u32,
        n => {
            return Err((
                codes::invalid_partitions(),
                format!("{n} partitions is not in 1..={PARTITIONS_PER_TOPIC_MAX}"),
            ))
        }
    };
    let configs = configs_of(t)?;
    Ok(TopicSpec {
        name: name.to_string(),
        partitions,
        configs,
        replication_factor,
        assignment: Vec::new(),
    })
}

fn configs_of(t: &CreatableTopic) -> Result<BTreeMap<String, String>, (i16, String)> {
    let configs: BTreeMap<String, String> = t
        .configs
        .iter()
        .filter_map(|c| {
            c.value
                .as_ref()
                .map(|v| (c.name.to_string(), v.to_string()))
        })
        .collect();
    crate::topic_config::validate_all(&configs).map_err(|m| (codes::invalid_config(), m))?;
    Ok(configs)
}

/// A topic with explicit replica assignments: partitions 0..n each listed
/// once, every list as long as the first, no broker twice in one list.
/// Whether the brokers exist is the metadata's to decide.
fn explicit(t: &CreatableTopic, name: &str) -> Result<TopicSpec, (i16, String)> {
    let bad = |m: String| (codes::invalid_replica_assignment(), m);
    if t.num_partitions != -1 || t.replication_factor != -1 {
        return Err((
            codes::invalid_request(),
            "with assignments, num_partitions and replication_factor must be -1".into(),
        ));
    }
    let count = t.assignments.len();
    if count > PARTITIONS_PER_TOPIC_MAX as usize {
        return Err((
            codes::invalid_partitions(),
            format!("{count} partitions is not in 1..={PARTITIONS_PER_TOPIC_MAX}"),
        ));
    }
    let mut assignment: Vec<Option<Vec<u64>>> = vec![None; count];
    for a in &t.assignments {
        let slot = usize::try_from(a.partition_index)
            .ok()
            .and_then(|i| assignment.get_mut(i))
            .ok_or_else(|| {
                bad(format!(
                    "partition {} is not in 0..{count}",
                    a.partition_index
                ))
            })?;
        let replicas = super::replica_list(&a.broker_ids).map_err(bad)?;
        if slot.replace(replicas).is_some() {
            return Err(bad(format!(
                "partition {} is listed twice",
                a.partition_index
            )));
        }
    }
    let assignment: Vec<Vec<u64>> = assignment.into_iter().flatten().collect();
    let factor = assignment.first().map_or(0, Vec::len);
    if assignment.iter().any(|r| r.len() != factor) {
        return Err(bad("every partition must have as many replicas".into()));
    }
    Ok(TopicSpec {
        name: name.to_string(),
        partitions: u32::try_from(count).unwrap_or(u32::MAX),
        configs: configs_of(t)?,
        replication_factor: u16::try_from(factor).unwrap_or(u16::MAX),
        assignment,
    })
}

fn ok_result(
    t: &CreatableTopic,
    id: Option<uuid::Uuid>,
    partitions: u32,
    replication_factor: u16,
) -> CreatableTopicResult {
    let mut r = result(t, codes::NONE, None);
    r.topic_id = id.unwrap_or_default();
    r.num_partitions = i32::try_from(partitions).unwrap_or(i32::MAX);
    r.replication_factor = i16::try_from(replication_factor).unwrap_or(i16::MAX);
    r
}

fn result(t: &CreatableTopic, error_code: i16, message: Option<String>) -> CreatableTopicResult {
    let mut r = CreatableTopicResult::default();
    r.name = t.name.clone();
    r.error_code = error_code;
    r.error_message = message.map(str_bytes);
    r
}
