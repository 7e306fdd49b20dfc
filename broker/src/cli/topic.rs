//! `sluice topic`: CreateTopics, Metadata, ListOffsets, DescribeConfigs,
//! DeleteTopics, IncrementalAlterConfigs and CreatePartitions through librdkafka's
//! admin client.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use rdkafka::admin::{
    ConfigEntry, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{json, Value};

use super::incremental::{alter_topic_configs, ConfigOp};
use super::output::{id_list, OutputArgs, Report, Table};
use super::{describe_code, describe_error, parse_key_value, ConnArgs};

/// `sluice topic ...`
#[derive(Args, Debug)]
pub struct TopicArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    out: OutputArgs,
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Partitions (default: the broker's default).
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        partitions: Option<i32>,
        /// Replicas of each partition (default: the broker's default).
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        replication_factor: Option<i32>,
        /// A topic config (repeatable), e.g. --config retention.ms=3600000.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List the topics.
    List,
    /// Partitions (leader, replicas, ISR, log start and end offsets) and configs of a topic.
    Describe { name: String },
    /// Delete a topic.
    Delete { name: String },
    /// Set or remove configs of a topic; the others keep their values.
    AlterConfig {
        name: String,
        /// A config to set (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value, required_unless_present = "delete")]
        set: Vec<(String, String)>,
        /// A config to remove, back to its default (repeatable).
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Grow a topic to a new total number of partitions.
    AddPartitions {
        name: String,
        /// The new total number of partitions.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
    },
}

pub fn run(args: TopicArgs) -> anyhow::Result<ExitCode> {
    let conn = &args.conn;
    let report = match &args.command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => create(conn, name, (*partitions, *replication_factor), configs),
        TopicCommand::List => list(conn),
        TopicCommand::Describe { name } => describe(conn, name),
        TopicCommand::Delete { name } => delete(conn, name),
        TopicCommand::AlterConfig { name, set, delete } => alter_config(conn, name, set, delete),
        TopicCommand::AddPartitions { name, count } => add_partitions(conn, name, *count),
    }?;
    report.emit(args.out.format);
    Ok(ExitCode::SUCCESS)
}

/// The outcome of an operation on one topic as a report: `verb` in the
/// text, the fields of `json` in the JSON.
fn done(
    conn: &ConnArgs,
    name: &str,
    results: rdkafka::error::KafkaResult<Vec<rdkafka::admin::TopicResult>>,
    verb: &str,
    json: Value,
) -> anyhow::Result<Report> {
    let results = results.map_err(|e| anyhow!(describe_error(&e)));
    for result in results.with_context(|| conn.on(format!("topic {name:?}")))? {
        if let Err((_, code)) = result {
            return Err(anyhow!(describe_code(code)))
                .with_context(|| conn.on(format!("topic {name:?}")));
        }
    }
    Ok(Report {
        text: format!("{verb} topic {name:?}\n"),
        json,
    })
}

fn create(
    conn: &ConnArgs,
    name: &str,
    (partitions, replication_factor): (Option<i32>, Option<i32>),
    configs: &[(String, String)],
) -> anyhow::Result<Report> {
    // -1: the broker's default (KIP-464).
    let replication = TopicReplication::Fixed(replication_factor.unwrap_or(-1));
    let mut topic = NewTopic::new(name, partitions.unwrap_or(-1), replication);
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let admin = conn.admin()?;
    let results = futures::executor::block_on(admin.create_topics([&topic], &conn.admin_options()));
    let json = json!({"topic": name, "created": true});
    done(conn, name, results, "created", json)
}

fn delete(conn: &ConnArgs, name: &str) -> anyhow::Result<Report> {
    let admin = conn.admin()?;
    let results = futures::executor::block_on(admin.delete_topics(&[name], &conn.admin_options()));
    done(
        conn,
        name,
        results,
        "deleted",
        json!({"topic": name, "deleted": true}),
    )
}

fn add_partitions(conn: &ConnArgs, name: &str, count: u32) -> anyhow::Result<Report> {
    let admin = conn.admin()?;
    let count_usize = usize::try_from(count).context("partition count")?;
    let partitions = NewPartitions::new(name, count_usize);
    let results =
        futures::executor::block_on(admin.create_partitions([&partitions], &conn.admin_options()));
    let json = json!({"topic": name, "partitions": count});
    let mut report = done(conn, name, results, "grew", json)?;
    report.text = format!("topic {name:?} now has {count} partitions\n");
    Ok(report)
}

fn list(conn: &ConnArgs) -> anyhow::Result<Report> {
    let consumer = conn.consumer(None, &[])?;
    let metadata = conn.metadata(&consumer, None)?;
    let mut topics: Vec<_> = metadata.topics().iter().collect();
    topics.sort_by(|a, b| a.name().cmp(b.name()));
    let mut table = Table::new(&["TOPIC", "PARTITIONS", "REPLICATION"]);
    let mut json = Vec::with_capacity(topics.len());
    for t in topics {
        let replication = t.partitions().first().map_or(0, |p| p.replicas().len());
        table.row(vec![
            t.name().to_string(),
            t.partitions().len().to_string(),
            replication.to_string(),
        ]);
        json.push(json!({
            "topic": t.name(),
            "partitions": t.partitions().len(),
            "replication_factor": replication,
        }));
    }
    Ok(Report {
        text: table.render(),
        json: Value::Array(json),
    })
}

/// One partition as `topic describe` shows it.
struct PartitionRow {
    id: i32,
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    log_start: i64,
    log_end: i64,
}

fn describe(conn: &ConnArgs, name: &str) -> anyhow::Result<Report> {
    let consumer = conn.consumer(None, &[])?;
    let partitions = partition_rows(conn, &consumer, name)?;
    let configs = topic_configs(conn, name)?;

    let mut table = Table::new(&[
        "PARTITION",
        "LEADER",
        "REPLICAS",
        "ISR",
        "LOG-START",
        "LOG-END",
    ]);
    for p in &partitions {
        table.row(vec![
            p.id.to_string(),
            p.leader.to_string(),
            id_list(&p.replicas),
            id_list(&p.isr),
            p.log_start.to_string(),
            p.log_end.to_string(),
        ]);
    }
    let mut config_table = Table::new(&["CONFIG", "VALUE", "SOURCE"]);
    for c in &configs {
        config_table.row(vec![
            c.name.clone(),
            config_value(c),
            source_name(&c.source).to_string(),
        ]);
    }
    let text = format!(
        "Topic: {name}\n{}\n{}",
        table.render(),
        config_table.render()
    );
    let json = json!({
        "topic": name,
        "partitions": partitions.iter().map(|p| json!({
            "partition": p.id,
            "leader": p.leader,
            "replicas": p.replicas,
            "isr": p.isr,
            "log_start_offset": p.log_start,
            "log_end_offset": p.log_end,
        })).collect::<Vec<_>>(),
        "configs": configs.iter().map(|c| json!({
            "name": c.name,
            "value": if c.is_sensitive { None } else { c.value.clone() },
            "source": source_name(&c.source),
            "read_only": c.is_read_only,
            "sensitive": c.is_sensitive,
        })).collect::<Vec<_>>(),
    });
    Ok(Report { text, json })
}

/// The topic's partitions from Metadata, with their watermarks.
fn partition_rows(
    conn: &ConnArgs,
    consumer: &BaseConsumer,
    name: &str,
) -> anyhow::Result<Vec<PartitionRow>> {
    let context = || conn.on(format!("topic {name:?}"));
    let metadata = conn.metadata(consumer, Some(name))?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| anyhow!(describe_code(RDKafkaErrorCode::UnknownTopicOrPartition)))
        .with_context(context)?;
    if let Some(err) = topic.error() {
        return Err(anyhow!(describe_code(err.into()))).with_context(context);
    }
    let mut rows = Vec::with_capacity(topic.partitions().len());
    for p in topic.partitions() {
        let (log_start, log_end) = consumer
            .fetch_watermarks(name, p.id(), conn.timeout())
            .map_err(|e| anyhow!(describe_error(&e)))
            .with_context(|| conn.on(format!("partition {name}:{}", p.id())))?;
        rows.push(PartitionRow {
            id: p.id(),
            leader: p.leader(),
            replicas: p.replicas().to_vec(),
            isr: p.isr().to_vec(),
            log_start,
            log_end,
        });
    }
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

/// Every config of the topic, as DescribeConfigs lists them.
fn topic_configs(conn: &ConnArgs, name: &str) -> anyhow::Result<Vec<ConfigEntry>> {
    let context = || conn.on(format!("configs of topic {name:?}"));
    let admin = conn.admin()?;
    let resource = ResourceSpecifier::Topic(name);
    let results =
        futures::executor::block_on(admin.describe_configs([&resource], &conn.admin_options()))
            .map_err(|e| anyhow!(describe_error(&e)))
            .with_context(context)?;
    let resource = results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no answer"))
        .with_context(context)?
        .map_err(|code| anyhow!(describe_code(code)))
        .with_context(context)?;
    Ok(resource.entries)
}

fn config_value(c: &ConfigEntry) -> String {
    match (&c.value, c.is_sensitive) {
        (_, true) => "(sensitive)".to_string(),
        (Some(v), false) => v.clone(),
        (None, false) => "-".to_string(),
    }
}

/// Kafka's name of a config source.
fn source_name(source: &ConfigSource) -> &'static str {
    match source {
        ConfigSource::Unknown => "UNKNOWN",
        ConfigSource::DynamicTopic => "DYNAMIC_TOPIC_CONFIG",
        ConfigSource::DynamicBroker => "DYNAMIC_BROKER_CONFIG",
        ConfigSource::DynamicDefaultBroker => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        ConfigSource::StaticBroker => "STATIC_BROKER_CONFIG",
        ConfigSource::Default => "DEFAULT_CONFIG",
    }
}

/// IncrementalAlterConfigs (`incremental.rs`): each key set or deleted on
/// its own, so a concurrent change of another key is kept. The dynamic
/// configs are read first, to refuse deleting a key that is not set (as
/// Kafka's `kafka-configs.sh` does) and to show what they are now.
fn alter_config(
    conn: &ConnArgs,
    name: &str,
    set: &[(String, String)],
    delete: &[String],
) -> anyhow::Result<Report> {
    let context = || conn.on(format!("topic {name:?}"));
    let mut dynamic: BTreeMap<String, String> = topic_configs(conn, name)?
        .into_iter()
        .filter(|c| c.source == ConfigSource::DynamicTopic)
        .filter_map(|c| Some((c.name, c.value?)))
        .collect();
    for key in delete {
        if dynamic.remove(key).is_none() {
            bail!("{}: config {key:?} is not set on the topic", context());
        }
    }
    for (key, value) in set {
        dynamic.insert(key.clone(), value.clone());
    }
    let ops: Vec<ConfigOp> = (delete.iter().map(|k| ConfigOp::Delete(k)))
        .chain(set.iter().map(|(k, v)| ConfigOp::Set(k, v)))
        .collect();
    let admin = conn.admin()?;
    if let Err(e) = alter_topic_configs(&admin, name, &ops, conn.timeout()) {
        let reason = describe_code(e.code);
        return Err(if e.message.is_empty() {
            anyhow!(reason)
        } else {
            anyhow!("{reason}: {}", e.message)
        })
        .with_context(context);
    }
    let mut table = Table::new(&["CONFIG", "VALUE"]);
    for (key, value) in &dynamic {
        table.row(vec![key.clone(), value.clone()]);
    }
    Ok(Report {
        text: format!(
            "altered configs of topic {name:?}; its dynamic configs now:\n{}",
            table.render()
        ),
        json: json!({"topic": name, "configs": dynamic}),
    })
}
