//! Command-line arguments shared by every Kafka scenario, and their mapping
//! onto librdkafka configuration (`ClientConfig`).
//!
//! Invariant: `-X key=value` pairs are applied last, so they override every
//! setting the named flags make.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::ClientConfig;

/// Default for librdkafka's `message.timeout.ms`: a record not acknowledged
/// within this time is reported as failed, so that a run against a dead
/// broker ends inside its drain deadline instead of librdkafka's 300 s.
const MESSAGE_TIMEOUT_MS_DEFAULT: u64 = 25_000;

/// Time allowed after the measured window for outstanding work to finish.
pub const DRAIN_SECONDS_MAX: u64 = 30;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    #[value(name = "0")]
    None,
    #[value(name = "1")]
    Leader,
    #[value(name = "all", alias = "-1")]
    All,
}

impl Acks {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

/// Client settings, applied to the producer (and `-X` to every client).
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Producer linger (librdkafka `linger.ms`).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Maximum bytes in one producer batch (librdkafka `batch.size`).
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_bytes: u64,
    /// Producer compression codec.
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,
    /// Acknowledgements the producer waits for.
    #[arg(long, value_enum, default_value_t = Acks::All)]
    pub acks: Acks,
    /// Enable the idempotent producer (`enable.idempotence=true`).
    #[arg(long)]
    pub idempotence: bool,
    /// Any librdkafka property, repeated: `-X fetch.wait.max.ms=10`.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub extra: Vec<(String, String)>,
}

/// Arguments every Kafka scenario takes.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Broker address list (`bootstrap.servers`).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic to use (for `many-topics`: the prefix of the topic names).
    #[arg(long, default_value = "sluice-bench")]
    pub topic: String,
    /// Partitions of the topic, created with this count when missing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=100_000))]
    pub partitions: i32,
    /// Replication factor used when the topic is created.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=16))]
    pub replication_factor: i32,
    /// Payload size of each record.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub record_bytes: u64,
    /// Length of the measured window (for `consume`: its upper bound).
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Time run before the measured window; its records are not counted.
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    pub warmup_seconds: f64,
    /// Hard cap on the records one run sends or reads.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub records_max: u64,
    /// Print one JSON object as the last line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write the latency histogram in HdrHistogram percentile-distribution
    /// text format (values in milliseconds).
    #[arg(long, value_name = "FILE")]
    pub hgrm_out: Option<PathBuf>,
    /// Draw latency by percentile as an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl CommonArgs {
    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_seconds)
    }

    pub fn measure(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    /// Configuration shared by every client: address and the `-X` overrides
    /// are added by `finish`.
    fn base_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config.set("client.id", "sluice-bench");
        config
    }

    fn finish(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.client.extra {
            config.set(key, value);
        }
        config
    }

    pub fn producer_config(&self) -> ClientConfig {
        let config = self.producer_settings();
        self.finish(config)
    }

    /// A transactional producer's configuration: `transactional.id` (which
    /// needs idempotence, so `--idempotence` is implied) and a transaction
    /// timeout well above the commit interval (librdkafka requires
    /// `message.timeout.ms` <= `transaction.timeout.ms`).
    pub fn transactional_producer_config(
        &self,
        transactional_id: &str,
        commit_every: Duration,
    ) -> ClientConfig {
        let mut config = self.producer_settings();
        config.set("transactional.id", transactional_id);
        config.set("enable.idempotence", "true");
        let timeout_ms = transaction_timeout_ms(commit_every);
        config.set("transaction.timeout.ms", timeout_ms.to_string());
        self.finish(config)
    }

    fn producer_settings(&self) -> ClientConfig {
        let client = &self.client;
        let mut config = self.base_config();
        config.set("linger.ms", client.linger_ms.to_string());
        config.set("batch.size", client.batch_bytes.to_string());
        config.set("compression.type", client.compression.as_librdkafka());
        config.set("acks", client.acks.as_librdkafka());
        config.set("enable.idempotence", client.idempotence.to_string());
        config.set("message.timeout.ms", MESSAGE_TIMEOUT_MS_DEFAULT.to_string());
        config
    }

    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let config = self.consumer_settings(group_id);
        self.finish(config)
    }

    /// A consumer that reads committed records only
    /// (`isolation.level=read_committed`, also librdkafka's default).
    pub fn read_committed_consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.consumer_settings(group_id);
        config.set("isolation.level", "read_committed");
        self.finish(config)
    }

    fn consumer_settings(&self, group_id: &str) -> ClientConfig {
        let mut config = self.base_config();
        config.set("group.id", group_id);
        config.set("enable.auto.commit", "false");
        config.set("auto.offset.reset", "earliest");
        config.set("enable.partition.eof", "false");
        config
    }

    pub fn admin_config(&self) -> ClientConfig {
        let config = self.base_config();
        self.finish(config)
    }

    /// One line naming the settings a run used, for the report header.
    pub fn describe(&self) -> String {
        let c = &self.client;
        format!(
            "bootstrap={} topic={} partitions={} record_bytes={} linger_ms={} batch_bytes={} \
             compression={:?} acks={:?} idempotence={} extra={:?}",
            self.bootstrap,
            self.topic,
            self.partitions,
            self.record_bytes,
            c.linger_ms,
            c.batch_bytes,
            c.compression,
            c.acks,
            c.idempotence,
            c.extra
        )
    }
}

/// Longest commit interval of a transactional producer.
pub const TRANSACTIONAL_COMMIT_MS_MAX: u64 = 300_000;
/// Shortest transaction timeout asked for (Kafka's default).
const TRANSACTION_TIMEOUT_MS_MIN: u64 = 60_000;

/// `transaction.timeout.ms` for a producer committing every `commit_every`:
/// twice the interval plus 10 s, at least 60 s (Kafka's default), so a
/// slow commit does not let the coordinator abort the transaction; at most
/// 610 s, below the broker's default `transaction.max.timeout.ms` (900 s).
pub fn transaction_timeout_ms(commit_every: Duration) -> u64 {
    let every_ms = u64::try_from(commit_every.as_millis()).unwrap_or(u64::MAX);
    every_ms
        .saturating_mul(2)
        .saturating_add(10_000)
        .max(TRANSACTION_TIMEOUT_MS_MIN)
}

pub fn parse_key_value(text: &str) -> anyhow::Result<(String, String)> {
    let (key, value) = text
        .split_once('=')
        .with_context(|| format!("expected KEY=VALUE, got {text:?}"))?;
    if key.trim().is_empty() {
        bail!("empty key in {text:?}");
    }
    Ok((key.trim().to_string(), value.to_string()))
}

/// Seconds as a finite, non-negative number no larger than one day.
pub fn parse_seconds(text: &str) -> anyhow::Result<f64> {
    const SECONDS_MAX: f64 = 86_400.0;
    let seconds: f64 = text
        .parse()
        .with_context(|| format!("not a number: {text:?}"))?;
    if !seconds.is_finite() || !(0.0..=SECONDS_MAX).contains(&seconds) {
        bail!("seconds must be within 0..={SECONDS_MAX}, got {seconds}");
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_splits_on_first_equals() {
        let (k, v) = parse_key_value("sasl.jaas=a=b").expect("valid");
        assert_eq!(k, "sasl.jaas");
        assert_eq!(v, "a=b");
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }

    #[test]
    fn transaction_timeout_covers_the_commit_interval() {
        assert_eq!(transaction_timeout_ms(Duration::from_millis(100)), 60_000);
        assert_eq!(transaction_timeout_ms(Duration::from_secs(40)), 90_000);
        let longest = transaction_timeout_ms(Duration::from_millis(TRANSACTIONAL_COMMIT_MS_MAX));
        assert!(longest <= 900_000, "{longest}");
    }

    #[test]
    fn seconds_are_bounded() {
        assert_eq!(parse_seconds("1.5").expect("valid"), 1.5);
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("1e9").is_err());
    }
}
