//! CreateTopics (key 19). Each topic is one metadata (Raft) entry; the
//! answer waits until the shards owning its partitions have created them
//! (`Shard::await_topic_ready`), bounded by the request's `timeout_ms`.
//! `num_partitions = -1` takes the node default; replication factor must be
//! -1 or 1 (single node); manual assignments are refused.

use std::collections::BTreeMap;

use futures::future::join_all;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use sluice_raft::TopicSpec;

use super::{str_bytes, topic_uuid, valid_topic_name, with_deadline, Ctx};
use crate::config::PARTITIONS_PER_TOPIC_MAX;
use crate::errors::{codes, meta_error_code, shard_error_code};

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

pub async fn handle(req: CreateTopicsRequest, version: i16, ctx: &Ctx) -> CreateTopicsResponse {
    let wait_ms = ready_wait_ms(req.timeout_ms);
    let validate_only = req.validate_only;
    let results = join_all(
        req.topics
            .into_iter()
            .map(|t| create_one(t, validate_only, wait_ms, ctx)),
    )
    .await;
    let mut resp = CreateTopicsResponse::default();
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
    if validate_only {
        return ok_result(&t, None, partitions);
    }
    let topic = match ctx.meta.create_topic(spec).await {
        Ok(topic) => topic,
        Err(e) => return result(&t, meta_error_code(&e), Some(e.to_string())),
    };
    tracing::debug!(topic = name, partitions, "topic created");
    match with_deadline(wait_ms, ctx.shard.await_topic_ready(&topic)).await {
        Some(Ok(())) => ok_result(&t, Some(topic_uuid(&topic)), partitions),
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
        return Err((
            codes::invalid_replica_assignment(),
            "manual replica assignment is not supported".into(),
        ));
    }
    if t.replication_factor != -1 && t.replication_factor != 1 {
        return Err((
            codes::invalid_replication_factor(),
            "replication factor must be 1 on a single node".into(),
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
    let configs: BTreeMap<String, String> = t
        .configs
        .iter()
        .filter_map(|c| {
            c.value
                .as_ref()
                .map(|v| (c.name.to_string(), v.to_string()))
        })
        .collect();
    crate::topic_config::validate_known(&configs).map_err(|m| (codes::invalid_config(), m))?;
    Ok(TopicSpec {
        name: name.to_string(),
        partitions,
        configs,
        replication_factor: 1,
        assignment: Vec::new(),
    })
}

fn ok_result(t: &CreatableTopic, id: Option<uuid::Uuid>, partitions: u32) -> CreatableTopicResult {
    let mut r = result(t, codes::NONE, None);
    r.topic_id = id.unwrap_or_default();
    r.num_partitions = i32::try_from(partitions).unwrap_or(i32::MAX);
    r.replication_factor = 1;
    r
}

fn result(t: &CreatableTopic, error_code: i16, message: Option<String>) -> CreatableTopicResult {
    let mut r = CreatableTopicResult::default();
    r.name = t.name.clone();
    r.error_code = error_code;
    r.error_message = message.map(str_bytes);
    r
}
