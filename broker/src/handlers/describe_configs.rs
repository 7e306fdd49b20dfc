//! DescribeConfigs (key 32). Topics: every key of `topic_config` with its
//! value (DYNAMIC_TOPIC_CONFIG when set on the topic, DEFAULT_CONFIG
//! otherwise), filtered by the requested keys. Brokers: a few read-only
//! static settings of this node.

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::alter_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::{str_bytes, Ctx};
use crate::errors::codes;
use crate::topic_config::{ConfigType, TOPIC_CONFIGS};

/// Kafka's `ConfigSource` codes.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

pub fn handle(req: DescribeConfigsRequest, version: i16, ctx: &Ctx) -> DescribeConfigsResponse {
    let docs = req.include_documentation;
    let mut resp = DescribeConfigsResponse::default();
    resp.results = req
        .resources
        .iter()
        .map(|r| describe_one(r, version, docs, ctx))
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
            TOPIC_CONFIGS
                .iter()
                .filter(|d| wanted(d.name))
                .map(|d| {
                    let set = topic.configs.get(d.name);
                    let source = if set.is_some() {
                        SOURCE_DYNAMIC_TOPIC
                    } else {
                        SOURCE_DEFAULT
                    };
                    let value = set.map_or(d.default, String::as_str);
                    let mut e = entry(d.name, value, source, d.kind, version);
                    e.read_only = false;
                    if version >= 3 {
                        e.documentation = docs.then(|| str_bytes(d.doc));
                    }
                    e
                })
                .collect()
        }
        RESOURCE_BROKER => broker_entries(ctx, version)
            .into_iter()
            .filter(|e| wanted(e.name.as_str()))
            .collect(),
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

fn broker_entries(ctx: &Ctx, version: i16) -> Vec<DescribeConfigsResourceResult> {
    let n = &ctx.node;
    [
        (
            "auto.create.topics.enable",
            n.auto_create_topics.to_string(),
            ConfigType::String,
        ),
        ("broker.id", n.node_id.to_string(), ConfigType::Int),
        (
            "num.partitions",
            n.default_partitions.to_string(),
            ConfigType::Int,
        ),
    ]
    .into_iter()
    .map(|(name, value, kind)| {
        let mut e = entry(name, &value, SOURCE_STATIC_BROKER, kind, version);
        e.read_only = true;
        e
    })
    .collect()
}

fn entry(
    name: &str,
    value: &str,
    source: i8,
    kind: ConfigType,
    version: i16,
) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default();
    e.name = str_bytes(name);
    e.value = Some(str_bytes(value));
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
