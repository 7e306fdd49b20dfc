//! DescribeConfigs (key 32).
//!
//! - Topics: every key of `topic_config::TOPIC_CONFIGS` with its value:
//!   DYNAMIC_TOPIC_CONFIG when set on the topic; otherwise the default,
//!   which for `min.insync.replicas` is the broker's
//!   (STATIC_BROKER_CONFIG when `--min-insync-replicas` was given,
//!   DEFAULT_CONFIG otherwise); Kafka topic configs Sluice stores without
//!   using are listed when set. Filtered by the requested keys.
//! - Brokers (name = this node's id, or empty for the cluster default):
//!   the node's settings under Kafka's names (`Settings::broker_configs`),
//!   STATIC_BROKER_CONFIG when given by flag, environment or file,
//!   DEFAULT_CONFIG otherwise, every one read-only (Sluice has no dynamic
//!   broker configs). Another broker's id is INVALID_REQUEST, as in Kafka
//!   (clients send a broker's describe to that broker).
//!
//! Authorization (`--authorizer`), per resource as Kafka: DESCRIBE_CONFIGS
//! on the topic (TOPIC_AUTHORIZATION_FAILED) or, for a broker, on the
//! cluster (CLUSTER_AUTHORIZATION_FAILED), with Kafka's message and no
//! configs.

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::alter_configs::{
    check_broker_name, config_access_refused, RESOURCE_BROKER, RESOURCE_TOPIC,
};
use super::{str_bytes, Ctx};
use crate::errors::codes;
use crate::security::{AclOperation, Session};
use crate::topic_config::{ConfigType, KAFKA_TOPIC_CONFIGS, MIN_INSYNC_REPLICAS, TOPIC_CONFIGS};

/// Kafka's `ConfigSource` codes.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

pub fn handle(
    req: DescribeConfigsRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> DescribeConfigsResponse {
    let docs = req.include_documentation;
    let mut resp = DescribeConfigsResponse::default();
    resp.results = req
        .resources
        .iter()
        .map(|r| {
            let op = AclOperation::DescribeConfigs;
            match config_access_refused(ctx, session, op, r.resource_type, &r.resource_name) {
                Some((code, message)) => {
                    let mut out = DescribeConfigsResult::default();
                    out.resource_type = r.resource_type;
                    out.resource_name = r.resource_name.clone();
                    out.error_code = code;
                    out.error_message = message.map(str_bytes);
                    out
                }
                None => describe_one(r, version, docs, ctx),
            }
        })
        .collect();
    resp
}

fn describe_one(
    r: &DescribeConfigsResource,
    version: i16,
    docs: bool,
    ctx: &Ctx,
) -> DescribeConfigsResult {
    let mut out = DescribeConfigsResult::default();
    out.resource_type = r.resource_type;
    out.resource_name = r.resource_name.clone();
    let wanted = |name: &str| {
        r.configuration_keys
            .as_ref()
            .map_or(true, |keys| keys.iter().any(|k| k.as_str() == name))
    };
    let entries = match r.resource_type {
        RESOURCE_TOPIC => {
            let Some(topic) = ctx.topic(r.resource_name.as_str()) else {
                out.error_code = codes::unknown_topic_or_partition();
                out.error_message = Some(str_bytes(format!("unknown topic '{}'", r.resource_name)));
                return out;
            };
            let broker_min_isr = ctx
                .node
                .broker_configs
                .iter()
                .find(|c| c.name == MIN_INSYNC_REPLICAS);
            let known = TOPIC_CONFIGS.iter().filter(|d| wanted(d.name)).map(|d| {
                let set = topic.configs.get(d.name);
                let (value, source) = match (set, broker_min_isr) {
                    (Some(v), _) => (v.clone(), SOURCE_DYNAMIC_TOPIC),
                    (None, Some(b)) if d.name == MIN_INSYNC_REPLICAS => (
                        b.value.clone().unwrap_or_else(|| d.default.to_string()),
                        if b.explicit {
                            SOURCE_STATIC_BROKER
                        } else {
                            SOURCE_DEFAULT
                        },
                    ),
                    (None, _) => (d.default.to_string(), SOURCE_DEFAULT),
                };
                let mut e = entry(d.name, Some(&value), source, d.kind, version);
                e.read_only = false;
                if version >= 3 {
                    e.documentation = docs.then(|| str_bytes(d.doc));
                }
                e
            });
            let stored = KAFKA_TOPIC_CONFIGS
                .iter()
                .filter(|(name, _)| wanted(name))
                .filter_map(|&(name, kind)| {
                    let v = topic.configs.get(name)?;
                    let mut e = entry(name, Some(v), SOURCE_DYNAMIC_TOPIC, kind, version);
                    e.read_only = false;
                    if version >= 3 {
                        e.documentation =
                            docs.then(|| str_bytes("stored; Sluice does not use this config"));
                    }
                    Some(e)
                });
            known.chain(stored).collect()
        }
        RESOURCE_BROKER => {
            if let Err((code, message)) = check_broker_name(r.resource_name.as_str(), ctx) {
                out.error_code = code;
                out.error_message = Some(str_bytes(message));
                return out;
            }
            ctx.node
                .broker_configs
                .iter()
                .filter(|c| wanted(c.name))
                .map(|c| {
                    let source = if c.explicit {
                        SOURCE_STATIC_BROKER
                    } else {
                        SOURCE_DEFAULT
                    };
                    let mut e = entry(c.name, c.value.as_deref(), source, c.kind, version);
                    e.read_only = true;
                    if version >= 3 && docs {
                        let doc = if c.flag.is_empty() {
                            "fixed in Sluice (read-only)".to_string()
                        } else {
                            format!(
                                "set at start with --{} (read-only: Sluice has no dynamic broker configs)",
                                c.flag.replace('_', "-")
                            )
                        };
                        e.documentation = Some(str_bytes(doc));
                    }
                    e
                })
                .collect()
        }
        other => {
            out.error_code = codes::invalid_request();
            out.error_message = Some(str_bytes(format!(
                "config resource type {other} is not supported"
            )));
            return out;
        }
    };
    out.configs = entries;
    out
}

fn entry(
    name: &str,
    value: Option<&str>,
    source: i8,
    kind: ConfigType,
    version: i16,
) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default();
    e.name = str_bytes(name);
    e.value = value.map(str_bytes);
    // Each field exists only in some versions; the codec refuses others.
    if version == 0 {
        e.is_default = source == SOURCE_DEFAULT;
    } else {
        e.config_source = source;
    }
    if version >= 3 {
        e.config_type = kind as i8;
    }
    e.is_sensitive = false;
    e
}
