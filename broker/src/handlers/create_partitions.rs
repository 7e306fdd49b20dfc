//! CreatePartitions (key 37): grows a topic to `count` partitions, one
//! metadata (Raft) entry per topic; new partitions are placed on shards as
//! CreateTopics places them, and the answer waits (bounded by the
//! request's `timeout_ms`) until their shards created them. Manual
//! assignments are refused; partitions never shrink.

use futures::future::join_all;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::{str_bytes, with_deadline, Ctx};
use crate::config::PARTITIONS_PER_TOPIC_MAX;
use crate::errors::{codes, meta_error_code, shard_error_code};

pub async fn handle(
    req: CreatePartitionsRequest,
    _version: i16,
    ctx: &Ctx,
) -> CreatePartitionsResponse {
    let wait_ms = super::create_topics::ready_wait_ms(req.timeout_ms);
    let validate_only = req.validate_only;
    let results = join_all(
        req.topics
            .iter()
            .map(|t| grow_one(t, validate_only, wait_ms, ctx)),
    )
    .await;
    let mut resp = CreatePartitionsResponse::default();
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
    if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
        return (
            codes::invalid_replica_assignment(),
            Some("manual replica assignment is not supported".into()),
        );
    }
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
    if validate_only {
        return (codes::NONE, None);
    }
    let grown = match ctx.meta.create_partitions(name, count).await {
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
