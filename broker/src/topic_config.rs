//! Topic configs Sluice knows: their names, defaults, types and validation.
//! CreateTopics, AlterConfigs and IncrementalAlterConfigs validate values
//! here; DescribeConfigs lists these keys with their value or default.
//! Values live in `TopicMeta::configs` (the metadata Raft log) and reach
//! the shards with the metadata view; the produce path reads
//! `max.message.bytes` and `message.timestamp.type`, the shards' retention
//! task `retention.ms`, `retention.bytes` and `cleanup.policy`.
//! `segment.bytes` is stored and described, not enforced (segments belong
//! to a shard's WAL: `--wal-segment-bytes`).

use std::collections::BTreeMap;

/// Kafka's `ConfigType` codes (DescribeConfigs v3+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigType {
    String = 2,
    Int = 3,
    Long = 5,
    List = 7,
}

/// One topic config key.
#[derive(Debug)]
pub struct ConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub kind: ConfigType,
    pub doc: &'static str,
}

pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    ConfigDef {
        name: "cleanup.policy",
        default: "delete",
        kind: ConfigType::List,
        doc: "delete, compact, or both (comma separated)",
    },
    ConfigDef {
        name: "max.message.bytes",
        default: "1048588",
        kind: ConfigType::Int,
        doc: "largest record batch accepted, bytes",
    },
    ConfigDef {
        name: "message.timestamp.type",
        default: "CreateTime",
        kind: ConfigType::String,
        doc: "CreateTime or LogAppendTime",
    },
    ConfigDef {
        name: "retention.bytes",
        default: "-1",
        kind: ConfigType::Long,
        doc: "bytes kept per partition (-1: no limit)",
    },
    ConfigDef {
        name: "retention.ms",
        default: "604800000",
        kind: ConfigType::Long,
        doc: "time records are kept, ms (-1: forever)",
    },
    ConfigDef {
        name: "segment.bytes",
        default: "1073741824",
        kind: ConfigType::Int,
        doc: "segment size, bytes",
    },
];

pub fn def_of(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks one value of a known key; unknown keys are an error.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let def = def_of(name).ok_or_else(|| format!("unknown topic config '{name}'"))?;
    let bad = || format!("invalid value '{value}' for topic config '{name}'");
    match name {
        "cleanup.policy" => {
            let ok = value
                .split(',')
                .map(str::trim)
                .all(|p| p == "delete" || p == "compact");
            ok.then_some(()).ok_or_else(bad)
        }
        "message.timestamp.type" => matches!(value, "CreateTime" | "LogAppendTime")
            .then_some(())
            .ok_or_else(bad),
        "segment.bytes" => int_at_least(value, 14).ok_or_else(bad),
        "max.message.bytes" => int_at_least(value, 0).ok_or_else(bad),
        _ => match def.kind {
            ConfigType::Long => value
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= -1)
                .map(|_| ())
                .ok_or_else(bad),
            _ => Ok(()),
        },
    }
}

fn int_at_least(value: &str, min: i32) -> Option<()> {
    value.parse::<i32>().ok().filter(|v| *v >= min).map(|_| ())
}

/// Validates the values of the known keys of `configs`. Unknown keys are
/// kept as given at topic creation (tools pass configs Sluice does not
/// use); AlterConfigs and IncrementalAlterConfigs refuse to set them.
pub fn validate_known(configs: &BTreeMap<String, String>) -> Result<(), String> {
    configs
        .iter()
        .filter(|(k, _)| def_of(k).is_some())
        .try_for_each(|(k, v)| validate(k, v))
}

/// Adds (`append`) or removes list items of `cleanup.policy`-like values.
pub fn edit_list(current: Option<&str>, item: &str, append: bool) -> String {
    let mut items: Vec<&str> = current
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let wanted: Vec<&str> = item.split(',').map(str::trim).collect();
    if append {
        for w in wanted {
            if !items.contains(&w) {
                items.push(w);
            }
        }
    } else {
        items.retain(|i| !wanted.contains(i));
    }
    items.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_validated() {
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("retention.bytes", "abc").is_err());
        assert!(validate("segment.bytes", "13").is_err());
        assert!(validate("segment.bytes", "1048576").is_ok());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "forever").is_err());
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("message.timestamp.type", "Now").is_err());
        assert!(validate("max.message.bytes", "2000000").is_ok());
        assert!(validate("no.such.key", "1").is_err());
        for d in TOPIC_CONFIGS {
            assert!(validate(d.name, d.default).is_ok(), "{}", d.name);
        }
    }

    #[test]
    fn list_edits() {
        assert_eq!(edit_list(Some("delete"), "compact", true), "delete,compact");
        assert_eq!(
            edit_list(Some("delete,compact"), "delete", false),
            "compact"
        );
        assert_eq!(edit_list(None, "compact", true), "compact");
    }
}
