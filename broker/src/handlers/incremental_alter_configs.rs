//! IncrementalAlterConfigs (key 44): SET, DELETE (back to the default),
//! APPEND and SUBTRACT (list configs: `cleanup.policy`) on a topic's
//! configs; the result is validated and stored like AlterConfigs (one Raft
//! entry): a name that is no Kafka topic config or a value of the wrong
//! type is INVALID_CONFIG. Broker resources are answered as AlterConfigs
//! answers them (every broker setting is static: INVALID_CONFIG).
//! Authorization as AlterConfigs (`alter_configs::config_access_refused`:
//! ALTER_CONFIGS on the topic, or on the cluster for a broker).

use std::collections::BTreeMap;

use kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::alter_configs::{
    alter_broker, config_access_refused, refuse_resource, set_topic_configs, RESOURCE_BROKER,
    RESOURCE_TOPIC,
};
use super::{str_bytes, Ctx};
use crate::errors::codes;
use crate::security::{AclOperation, Session};
use crate::topic_config::{self, ConfigType};

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

pub async fn handle(
    req: IncrementalAlterConfigsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> IncrementalAlterConfigsResponse {
    let mut resp = IncrementalAlterConfigsResponse::default();
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
    let name = r.resource_name.as_str();
    let Some(topic) = ctx.topic(name) else {
        return (
            codes::unknown_topic_or_partition(),
            Some(format!("unknown topic '{name}'")),
        );
    };
    let mut configs = topic.configs.clone();
    for c in &r.configs {
        let value = c.value.as_ref().map(|v| v.as_str());
        if let Err(message) = apply_op(&mut configs, c.name.as_str(), c.config_operation, value) {
            return (codes::invalid_config(), Some(message));
        }
    }
    set_topic_configs(ctx, name, configs, validate_only).await
}

/// Applies one operation to `configs`.
fn apply_op(
    configs: &mut BTreeMap<String, String>,
    name: &str,
    op: i8,
    value: Option<&str>,
) -> Result<(), String> {
    let (kind, default) = match (topic_config::def_of(name), topic_config::kafka_only(name)) {
        (Some(def), _) => (def.kind, def.default),
        (None, Some(kind)) => (kind, ""),
        (None, None) => return Err(format!("unknown topic config '{name}'")),
    };
    let need_value = || value.ok_or_else(|| format!("no value for '{name}'"));
    match op {
        OP_SET => {
            configs.insert(name.to_string(), need_value()?.to_string());
        }
        OP_DELETE => {
            configs.remove(name);
        }
        OP_APPEND | OP_SUBTRACT if kind == ConfigType::List => {
            let current = configs.get(name).map(String::as_str).unwrap_or(default);
            let edited = topic_config::edit_list(Some(current), need_value()?, op == OP_APPEND);
            configs.insert(name.to_string(), edited);
        }
        OP_APPEND | OP_SUBTRACT => return Err(format!("'{name}' is not a list config")),
        other => return Err(format!("unknown config operation {other}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations() {
        let mut c = BTreeMap::new();
        apply_op(&mut c, "retention.ms", OP_SET, Some("5")).expect("set");
        apply_op(&mut c, "cleanup.policy", OP_APPEND, Some("compact")).expect("append");
        assert_eq!(c["cleanup.policy"], "delete,compact");
        apply_op(&mut c, "cleanup.policy", OP_SUBTRACT, Some("delete")).expect("subtract");
        assert_eq!(c["cleanup.policy"], "compact");
        apply_op(&mut c, "retention.ms", OP_DELETE, None).expect("delete");
        assert!(!c.contains_key("retention.ms"));
        assert!(apply_op(&mut c, "retention.ms", OP_APPEND, Some("1")).is_err());
        assert!(apply_op(&mut c, "nope", OP_SET, Some("1")).is_err());
        apply_op(&mut c, "compression.type", OP_SET, Some("zstd")).expect("kafka config");
        assert_eq!(c["compression.type"], "zstd");
    }
}
