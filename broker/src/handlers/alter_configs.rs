//! AlterConfigs (key 33): replaces a topic's whole config set (keys left
//! out return to their defaults), as Kafka does. Each topic is one
//! metadata (Raft) entry; values are validated in `topic_config` first.
//! Broker resources are refused with INVALID_REQUEST: broker settings are
//! static (flags, env, file).
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

/// Config resource types of the protocol.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

pub async fn handle(req: AlterConfigsRequest, _version: i16, ctx: &Ctx) -> AlterConfigsResponse {
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

/// The answer for a resource type other than TOPIC.
pub fn refuse_resource(resource_type: i8) -> (i16, Option<String>) {
    let message = if resource_type == RESOURCE_BROKER {
        "broker configs are static (flags, environment, config file)".to_string()
    } else {
        format!("config resource type {resource_type} is not supported")
    };
    (codes::invalid_request(), Some(message))
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
    if let Err(message) = topic_config::validate_known(&configs) {
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
