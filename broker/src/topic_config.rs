//! Topic configs Sluice knows: their names, defaults, types and validation.
//! CreateTopics, AlterConfigs and IncrementalAlterConfigs validate values
//! here; DescribeConfigs lists these keys with their value or default.
//! Values live in `TopicMeta::configs` (the metadata Raft log) and reach
//! the shards with the metadata view; the produce path reads
//! `max.message.bytes`, `message.timestamp.type` and
//! `min.insync.replicas` (default `--min-insync-replicas`), the shards'
//! retention task `retention.ms`, `retention.bytes` and `cleanup.policy`,
//! the shards' compaction `cleanup.policy=compact`, `delete.retention.ms`,
//! `min.cleanable.dirty.ratio`, `min.compaction.lag.ms` and
//! `max.compaction.lag.ms`, the metadata's leader elections
//! `unclean.leader.election.enable`, and the shards' search indexing
//! `sluice.search.enable`.
//! `segment.bytes` is stored and described, not enforced (segments belong
//! to a shard's WAL: `--wal-segment-bytes`).
//!
//! Every other topic config of Kafka (`KAFKA_TOPIC_CONFIGS`: compression,
//! flushing, compaction tuning, tiered storage...) is accepted with a value
//! of its type, stored and described, and has no effect; a name that is no
//! Kafka topic config is refused with INVALID_CONFIG, as Kafka does.

use std::collections::BTreeMap;

/// Kafka's `ConfigType` codes (DescribeConfigs v3+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
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
        name: MIN_INSYNC_REPLICAS,
        default: "1",
        kind: ConfigType::Int,
        doc: "in-sync replicas an acks=all produce needs (default: the broker's --min-insync-replicas)",
    },
    ConfigDef {
        name: sluice_shard::SEARCH_ENABLE,
        default: "false",
        kind: ConfigType::Boolean,
        doc: "index the topic's records for search (admin port, Elasticsearch query API)",
    },
    ConfigDef {
        name: "delete.retention.ms",
        default: "86400000",
        kind: ConfigType::Long,
        doc: "compacted topics: how long a tombstone stays after compaction first kept it, ms",
    },
    ConfigDef {
        name: "min.cleanable.dirty.ratio",
        default: "0.5",
        kind: ConfigType::Double,
        doc: "compacted topics: share of the cleanable log not yet compacted that starts a pass",
    },
    ConfigDef {
        name: "min.compaction.lag.ms",
        default: "0",
        kind: ConfigType::Long,
        doc: "compacted topics: records younger than this are not compacted, ms",
    },
    ConfigDef {
        name: "max.compaction.lag.ms",
        default: "9223372036854775807",
        kind: ConfigType::Long,
        doc: "compacted topics: a record older than this gets compacted whatever the dirty ratio, ms",
    },
    ConfigDef {
        name: "segment.bytes",
        default: "1073741824",
        kind: ConfigType::Int,
        doc: "segment size, bytes (stored, not enforced: segments belong to a shard's WAL)",
    },
    ConfigDef {
        name: sluice_raft::UNCLEAN_LEADER_ELECTION,
        default: "false",
        kind: ConfigType::Boolean,
        doc: "a partition whose in-sync replicas are all down is led by an out-of-sync one (records may be lost)",
    },
];

/// The topic config whose default is the broker's `--min-insync-replicas`.
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// Kafka's other topic configs: accepted (with a value of their type),
/// stored and described, without effect in Sluice.
pub const KAFKA_TOPIC_CONFIGS: &[(&str, ConfigType)] = &[
    ("compression.gzip.level", ConfigType::Int),
    ("compression.lz4.level", ConfigType::Int),
    ("compression.type", ConfigType::String),
    ("compression.zstd.level", ConfigType::Int),
    ("file.delete.delay.ms", ConfigType::Long),
    ("flush.messages", ConfigType::Long),
    ("flush.ms", ConfigType::Long),
    ("follower.replication.throttled.replicas", ConfigType::List),
    ("index.interval.bytes", ConfigType::Int),
    ("leader.replication.throttled.replicas", ConfigType::List),
    ("local.retention.bytes", ConfigType::Long),
    ("local.retention.ms", ConfigType::Long),
    ("message.downconversion.enable", ConfigType::Boolean),
    ("message.format.version", ConfigType::String),
    ("message.timestamp.after.max.ms", ConfigType::Long),
    ("message.timestamp.before.max.ms", ConfigType::Long),
    ("message.timestamp.difference.max.ms", ConfigType::Long),
    ("preallocate", ConfigType::Boolean),
    ("remote.log.copy.disable", ConfigType::Boolean),
    ("remote.log.delete.on.disable", ConfigType::Boolean),
    ("remote.storage.enable", ConfigType::Boolean),
    ("segment.index.bytes", ConfigType::Int),
    ("segment.jitter.ms", ConfigType::Long),
    ("segment.ms", ConfigType::Long),
];

pub fn def_of(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// The type of a Kafka topic config Sluice stores without using.
pub fn kafka_only(name: &str) -> Option<ConfigType> {
    KAFKA_TOPIC_CONFIGS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, kind)| kind)
}

/// Whether `value` is one of `kind` (Kafka's parsing: booleans are
/// true/false in any case, numbers are decimal).
fn of_type(kind: ConfigType, value: &str) -> bool {
    match kind {
        ConfigType::Boolean => {
            value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")
        }
        ConfigType::Int => value.trim().parse::<i32>().is_ok(),
        ConfigType::Long => value.trim().parse::<i64>().is_ok(),
        ConfigType::Double => value.trim().parse::<f64>().is_ok_and(f64::is_finite),
        ConfigType::String | ConfigType::List => true,
    }
}

/// Checks one value; a name that is no Kafka topic config is an error.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let bad = || format!("invalid value '{value}' for topic config '{name}'");
    let Some(def) = def_of(name) else {
        return match kafka_only(name) {
            Some(kind) if of_type(kind, value) => Ok(()),
            Some(_) => Err(bad()),
            None => Err(format!("unknown topic config '{name}'")),
        };
    };
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
        MIN_INSYNC_REPLICAS => int_at_least(value, 1).ok_or_else(bad),
        "min.cleanable.dirty.ratio" => value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .map(|_| ())
            .ok_or_else(bad),
        "delete.retention.ms" | "min.compaction.lag.ms" => value
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .map(|_| ())
            .ok_or_else(bad),
        "max.compaction.lag.ms" => value
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 1)
            .map(|_| ())
            .ok_or_else(bad),
        _ => match def.kind {
            ConfigType::Long => value
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= -1)
                .map(|_| ())
                .ok_or_else(bad),
            kind => of_type(kind, value).then_some(()).ok_or_else(bad),
        },
    }
}

fn int_at_least(value: &str, min: i32) -> Option<()> {
    value.parse::<i32>().ok().filter(|v| *v >= min).map(|_| ())
}

/// Validates every key and value of `configs` (CreateTopics,
/// AlterConfigs, IncrementalAlterConfigs): names that are no Kafka topic
/// config and values of the wrong type are refused.
pub fn validate_all(configs: &BTreeMap<String, String>) -> Result<(), String> {
    configs.iter().try_for_each(|(k, v)| validate(k, v))
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
        assert!(validate("min.insync.replicas", "2").is_ok());
        assert!(validate("min.insync.replicas", "0").is_err());
        assert!(validate("unclean.leader.election.enable", "TRUE").is_ok());
        assert!(validate("unclean.leader.election.enable", "yes").is_err());
        // Kafka's configs Sluice does not use: accepted when well typed.
        assert!(validate("compression.type", "zstd").is_ok());
        assert!(validate("segment.ms", "60000").is_ok());
        assert!(validate("segment.ms", "soon").is_err());
        assert!(validate("preallocate", "maybe").is_err());
        let mut all = BTreeMap::new();
        all.insert("retention.ms".to_string(), "5".to_string());
        all.insert("flush.ms".to_string(), "5".to_string());
        assert!(validate_all(&all).is_ok());
        all.insert("retention.msx".to_string(), "5".to_string());
        assert!(validate_all(&all).unwrap_err().contains("retention.msx"));
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
