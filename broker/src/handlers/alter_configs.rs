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
//!
//! Authorization (`--authorizer`), per resource as Kafka: ALTER_CONFIGS on
//! the topic (TOPIC_AUTHORIZATION_FAILED) or, for a broker, on the cluster
//! (CLUSTER_AUTHORIZATION_FAILED); see `config_access_refused`.

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use kafka_protocol::ResponseError;

use super::{str_bytes, Ctx};
use crate::errors::{codes, meta_error_code};
use crate::security::{AclOperation, AclResourceType, Session, CLUSTER};
use crate::topic_config;

/// Config resource types of the protocol.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
const RESOURCE_BROKER_LOGGER: i8 = 8;
const RESOURCE_CLIENT_METRICS: i8 = 16;
const RESOURCE_GROUP: i8 = 32;

pub async fn handle(
    req: AlterConfigsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> AlterConfigsResponse {
    let mut resp = AlterConfigsResponse::default();
    for r in req.resources {
        let op = AclOperation::AlterConfigs;
        let refused = config_access_refused(ctx, session, op, r.resource_type, &r.resource_name);
        let (code, message) = match refused {
            Some(refusal) => refusal,
            None => alter_one(&r, req.validate_only, ctx).await,
        };
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

/// Kafka's authorization of a config resource (DescribeConfigs,
/// AlterConfigs, IncrementalAlterConfigs): `op` (DESCRIBE_CONFIGS or
/// ALTER_CONFIGS) on the topic, on the group, or on the cluster for
/// broker, broker logger and client metrics resources. The refusal (code
/// and Kafka's message), or `None`: allowed, or a type no ACL names (the
/// handler refuses it).
pub fn config_access_refused(
    ctx: &Ctx,
    session: &Session,
    op: AclOperation,
    resource_type: i8,
    name: &str,
) -> Option<(i16, Option<String>)> {
    let (kind, acl_name, error) = match resource_type {
        RESOURCE_TOPIC => (
            AclResourceType::Topic,
            name,
            ResponseError::TopicAuthorizationFailed,
        ),
        RESOURCE_GROUP => (
            AclResourceType::Group,
            name,
            ResponseError::GroupAuthorizationFailed,
        ),
        RESOURCE_BROKER | RESOURCE_BROKER_LOGGER | RESOURCE_CLIENT_METRICS => (
            AclResourceType::Cluster,
            CLUSTER,
            ResponseError::ClusterAuthorizationFailed,
        ),
        _ => return None,
    };
    if ctx.allowed(session, op, kind, acl_name) {
        return None;
    }
    Some((error.code(), Some(super::metadata::denied_message(error))))
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
