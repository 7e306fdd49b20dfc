//! The operator's client subcommands of `sluice`: topics, produce, consume,
//! consumer groups and cluster state.
//!
//! They speak the Kafka protocol through librdkafka (`rdkafka`), never
//! through the broker's own code, so every command also works against any
//! Kafka-compatible broker; `cluster metrics` alone reads a Sluice node's
//! admin HTTP port. Each command runs on the main thread and blocks on its
//! client calls, each bounded by `--timeout`.
//!
//! Contract with scripts: answers go to stdout (a table, or `--format
//! json`), errors to stderr naming the brokers and the Kafka error;
//! exit 0 on success, 1 when the broker or the operation failed, 2 on a
//! usage error (clap).

mod cluster;
mod consume;
mod group;
mod incremental;
mod output;
mod produce;
mod topic;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, DefaultConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;

/// Client subcommands, flattened into `sluice`'s own subcommands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Create, list, describe, delete and configure topics.
    Topic(topic::TopicArgs),
    /// Send the lines of stdin to a topic, one record each.
    Produce(produce::ProduceArgs),
    /// Print a topic's records.
    Consume(consume::ConsumeArgs),
    /// List, describe and delete consumer groups; move their committed offsets.
    Group(group::GroupArgs),
    /// Brokers and partition health; a summary of a node's metrics.
    Cluster(cluster::ClusterArgs),
}

/// Runs a client subcommand; errors are printed here, once.
pub fn run(command: ClientCommand) -> ExitCode {
    let result = match command {
        ClientCommand::Topic(args) => topic::run(args),
        ClientCommand::Produce(args) => produce::run(args),
        ClientCommand::Consume(args) => consume::run(args),
        ClientCommand::Group(args) => group::run(args),
        ClientCommand::Cluster(args) => cluster::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How to reach the brokers; every client subcommand takes these.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Bootstrap brokers (host:port, comma-separated).
    #[arg(
        long,
        env = "SLUICE_BROKERS",
        default_value = "127.0.0.1:9092",
        value_name = "HOST:PORT,...",
        global = true
    )]
    pub brokers: String,

    /// A file of librdkafka client settings, KEY=VALUE per line (# comments), as kcat -F and Kafka's --command-config take: secrets stay out of the command line.
    #[arg(long, env = "SLUICE_CLIENT_CONFIG", value_name = "FILE", value_parser = parse_properties_file, global = true)]
    pub client_config: Option<Properties>,

    /// A librdkafka client setting (repeatable), e.g. -X security.protocol=SASL_SSL; wins over sluice's own defaults and --client-config.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_key_value, global = true)]
    pub client_settings: Vec<(String, String)>,

    /// Seconds to wait for the brokers' answers (and, for produce, for each delivery).
    #[arg(long = "timeout", value_name = "SECS", default_value = "30", value_parser = clap::value_parser!(u64).range(1..=3600), global = true)]
    pub timeout_secs: u64,
}

impl ConnArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// The client configuration: brokers, then `defaults`, then
    /// `--client-config`, then `-X`.
    pub fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        // librdkafka logs through the `log` crate, which nothing here
        // prints; failures reach the operator as the calls' errors.
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        let from_file = self.client_config.iter().flat_map(|p| &p.0);
        for (key, value) in from_file.chain(&self.client_settings) {
            config.set(key, value);
        }
        config
    }

    /// `what` on the brokers, for error contexts.
    pub fn on(&self, what: impl std::fmt::Display) -> String {
        format!("{what} on {}", self.brokers)
    }

    pub fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        self.config(&[])
            .create()
            .map_err(|e| anyhow!(describe_error(&e)))
            .context("cannot create the admin client")
    }

    pub fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout()))
            .operation_timeout(Some(self.timeout()))
    }

    /// A consumer handle, `defaults` over auto-commit off, `-X` over both.
    /// Also for metadata, watermarks and group offsets: unlike the admin
    /// client's producer handle, its Metadata requests do not auto-create
    /// the topics they name, and it joins `group` only if subscribed.
    pub fn consumer(
        &self,
        group: Option<&str>,
        defaults: &[(&str, &str)],
    ) -> anyhow::Result<BaseConsumer> {
        self.consumer_with(group, defaults, DefaultConsumerContext)
    }

    /// `consumer`, with its callbacks (`context`).
    pub fn consumer_with<C: ConsumerContext>(
        &self,
        group: Option<&str>,
        defaults: &[(&str, &str)],
        context: C,
    ) -> anyhow::Result<BaseConsumer<C>> {
        let mut settings = vec![("enable.auto.commit", "false")];
        settings.extend(group.map(|g| ("group.id", g)));
        settings.extend_from_slice(defaults);
        self.config(&settings)
            .create_with_context(context)
            .map_err(|e| anyhow!(describe_error(&e)))
            .context("cannot create the client")
    }

    /// Cluster metadata (all topics, or one).
    pub fn metadata<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        topic: Option<&str>,
    ) -> anyhow::Result<Metadata> {
        consumer
            .fetch_metadata(topic, self.timeout())
            .map_err(|e| anyhow!(describe_error(&e)))
            .with_context(|| self.on("metadata"))
    }
}

/// `KEY=VALUE` of `-X`, `--config`, `--set` and `--header`.
/// Client settings read from a `--client-config` file.
#[derive(Debug, Clone)]
pub struct Properties(Vec<(String, String)>);

/// Reads `KEY=VALUE` lines (blank lines and `#` comments skipped); the
/// error names the file and the line, never its text (it may hold a
/// password).
fn parse_properties_file(path: &str) -> Result<Properties, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                out.push((key.trim().to_string(), value.trim().to_string()))
            }
            _ => return Err(format!("{path}: line {} is not KEY=VALUE", i + 1)),
        }
    }
    Ok(Properties(out))
}

pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The Kafka name of an error code, e.g. `TOPIC_ALREADY_EXISTS` (from the
/// variant name, `TopicAlreadyExists`).
pub fn code_name(code: RDKafkaErrorCode) -> String {
    let camel = format!("{code:?}");
    let mut name = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// `NAME (description)` of an error code.
pub fn describe_code(code: RDKafkaErrorCode) -> String {
    // Display is `Variant (librdkafka's description)`: keep the description.
    let shown = code.to_string();
    let description = shown
        .strip_prefix(&format!("{code:?} ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or(&shown);
    format!("{} ({description})", code_name(code))
}

/// `NAME (description)` of a client error, or its text when it has no code.
pub fn describe_error(e: &KafkaError) -> String {
    // `rdkafka_error_code` leaves out the admin operations' codes.
    let code = match e {
        KafkaError::AdminOp(code) => Some(*code),
        e => e.rdkafka_error_code(),
    };
    match code {
        Some(code) => describe_code(code),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_kafkas() {
        assert_eq!(
            code_name(RDKafkaErrorCode::TopicAlreadyExists),
            "TOPIC_ALREADY_EXISTS"
        );
        assert_eq!(
            code_name(RDKafkaErrorCode::UnknownTopicOrPartition),
            "UNKNOWN_TOPIC_OR_PARTITION"
        );
        assert_eq!(
            describe_code(RDKafkaErrorCode::TopicAlreadyExists),
            "TOPIC_ALREADY_EXISTS (Broker: Topic already exists)"
        );
    }

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("a=b=c"),
            Ok(("a".to_string(), "b=c".to_string()))
        );
        assert!(parse_key_value("=x").is_err());
        assert!(parse_key_value("x").is_err());
    }
}
