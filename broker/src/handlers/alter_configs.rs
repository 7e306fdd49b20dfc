//! AlterConfigs (key 33): replaces a topic's whole config set (keys left
//! out return to their defaults), as Kafka does. Each topic is one
//! metadata (Raft) entry; names and values are validated in
//! `topic_config` first (a name that is no Kafka topic config, or a value
//! of the wrong type: INVALID_CONFIG).
//!
//! Broker resources (name: this node's id, or empty for the cluster
//! default): every broker setting is static (flag, environment, file, read
//! at start), so a change of a known one is refused with INVALID_CONFIG
//! saying which setting to change instead, and an unknown name with
//! INVALID_CONFIG too; an empty change succeeds. Another broker's id is
//! INVALID_REQUEST, as in Kafka.
//!
//! Concurrent alters of one topic are last-writer-wins: each entry carries
//! the full new set.

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::{str_bytes, Ctx};
use crate::errors::{codes, meta_error_code};
use crate::topic_config;
use crate::security::Session;

/// Config resource types of the protocol.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

pub async fn handle(req: AlterConfigsRequest, _version: i16, ctx: &Ctx, session: &Session) -> AlterConfigsResponse {
    let mut resp = AlterConfigsResponse::default();
    for r in req.resources {
        let (code, message) = alter_one(&r, req.validate_only, ctx).await;
        let mut out = AlterConfigsResourceResponse::default();
        out.resource_type = r.resource_type;
        out.resource_name = r.resource_name;
        out.error_code = code;
        out.error_message = message.map(str_bytes);
        resp.responses.push(out);
    }
    resp
}

async fn alter_one(
    r: &AlterConfigsResource,
    validate_only: bool,
    ctx: &Ctx,
) -> (i16, Option<String>) {
    if r.resource_type == RESOURCE_BROKER {
        let names = r.configs.iter().map(|c| c.name.as_str());
        return alter_broker(r.resource_name.as_str(), names, ctx);
    }
    if r.resource_type != RESOURCE_TOPIC {
        return refuse_resource(r.resource_type);
    }
    let configs: BTreeMap<String, String> = r
        .configs
        .iter()
        .filter_map(|c| {
            c.value
                .as_ref()
                .map(|v| (c.name.to_string(), v.to_string()))
        })
        .collect();
    if let Err(message) = configs
        .iter()
        .try_for_each(|(k, v)| topic_config::validate(k, v))
    {
        return (codes::invalid_config(), Some(message));
    }
    set_topic_configs(ctx, r.resource_name.as_str(), configs, validate_only).await
}

/// The answer for a resource type other than TOPIC and BROKER.
pub fn refuse_resource(resource_type: i8) -> (i16, Option<String>) {
    let message = format!("config resource type {resource_type} is not supported");
    (codes::invalid_request(), Some(message))
}

/// A BROKER resource must name this node or be empty (cluster default).
pub fn check_broker_name(name: &str, ctx: &Ctx) -> Result<(), (i16, String)> {
    if name.is_empty() || name.parse::<i32>().ok() == Some(ctx.node.node_id) {
        return Ok(());
    }
    Err((
        codes::invalid_request(),
        format!(
            "unexpected broker id '{name}': this is broker {} (send a broker's configs to that broker, or use an empty name)",
            ctx.node.node_id
        ),
    ))
}

/// A change of broker configs `names` (AlterConfigs and
/// IncrementalAlterConfigs): refused unless empty, every setting being
/// static.
pub fn alter_broker<'a>(
    resource: &str,
    mut names: impl Iterator<Item = &'a str>,
    ctx: &Ctx,
) -> (i16, Option<String>) {
    if let Err((code, message)) = check_broker_name(resource, ctx) {
        return (code, Some(message));
    }
    let Some(name) = names.next() else {
        return (codes::NONE, None);
    };
    let message = match ctx.node.broker_configs.iter().find(|c| c.name == name) {
        Some(c) if !c.flag.is_empty() => format!(
            "broker config '{name}' is read-only: it is the static setting --{} (SLUICE_{}, TOML key {}), read at start; Sluice has no dynamic broker configs",
            c.flag.replace('_', "-"),
            c.flag.to_ascii_uppercase(),
            c.flag
        ),
        Some(_) => format!("broker config '{name}' is read-only: Sluice fixes it"),
        None => format!("unknown broker config '{name}'"),
    };
    (codes::invalid_config(), Some(message))
}

/// Validates `configs` and, unless `validate_only`, stores them as the
/// topic's new config set (one Raft entry).
pub async fn set_topic_configs(
    ctx: &Ctx,
    name: &str,
    configs: BTreeMap<String, String>,
    validate_only: bool,
) -> (i16, Option<String>) {
    if ctx.topic(name).is_none() {
        return (
            codes::unknown_topic_or_partition(),
            Some(format!("unknown topic '{name}'")),
        );
    }
    if let Err(message) = topic_config::validate_all(&configs) {
        return (codes::invalid_config(), Some(message));
    }
    if validate_only {
        return (codes::NONE, None);
    }
    match ctx.meta.set_topic_configs(name, configs).await {
        Ok(_) => {
            tracing::info!(topic = name, "topic configs altered");
            (codes::NONE, None)
        }
        Err(e) => (meta_error_code(&e), Some(e.to_string())),
    }
}
