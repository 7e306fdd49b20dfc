//! Command line, environment and TOML configuration of `sluice start`.
//!
//! Every setting is a flag (`--data-dir`), an environment variable
//! (`SLUICE_DATA_DIR`) and a key of the `--config` TOML file (`data_dir`).
//! Precedence: flag > env > file > built-in default. clap resolves flag, env
//! and default; the file then fills only the settings whose value came from
//! a default (`ArgMatches::value_source`). `Settings::resolve` validates the
//! merged values and names the offending setting when one is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand};
use serde::Deserialize;

/// Kafka limits a topic name to 249 characters; partitions per request are
/// bounded so a mistyped number cannot ask the metadata for millions.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;
/// Smallest memory budget a node accepts.
pub const MEMORY_BYTES_MIN: u64 = 64 << 20;
/// Range of `--wal-commit-bytes-max`: the smallest keeps the largest Kafka
/// record batch by default (1 MiB + 12 bytes) within one WAL entry.
const WAL_COMMIT_BYTES_MIN: u64 = 2 << 20;
const WAL_COMMIT_BYTES_MAX: u64 = 32 << 20;
/// Range of `--wal-segment-bytes`; a segment holds at least two commits.
const WAL_SEGMENT_BYTES_MIN: u64 = 4 << 20;
const WAL_SEGMENT_BYTES_MAX: u64 = 4 << 30;
/// Estimated bytes one idle partition costs the node (its struct and map
/// slot, its share of the metadata view and of the Raft state: about 520
/// bytes of RSS measured at 100,002 partitions, see README "Many topics on
/// one core"), with
/// headroom for a few index entries; divides the partition-state share of a
/// shard's budget into a partition limit.
pub const PARTITION_BYTES_ESTIMATE: u64 = 1 << 10;
/// Largest `--connections-per-shard-max`: each open connection holds a
/// socket, a task and its buffers, so the bound is a file-descriptor bound
/// as much as a memory one.
pub const CONNECTIONS_PER_SHARD_LIMIT: u32 = 1_000_000;
/// Bounds of `--frame-read-timeout-ms`.
pub const FRAME_READ_TIMEOUT_MS_MIN: u64 = 100;
pub const FRAME_READ_TIMEOUT_MS_MAX: u64 = 3_600_000;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a Kafka-compatible, thread-per-core message broker"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a broker node (single node: one-voter metadata group).
    Start(StartArgs),
}

/// `sluice start` settings. Each is also an env var and a TOML key.
#[derive(Args, Debug, Clone)]
pub struct StartArgs {
    /// TOML file with settings (keys are the flag names with `_`, e.g. data_dir). Flags and env vars override it.
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory for the WALs (one per shard) and the metadata log.
    #[arg(
        long,
        env = "SLUICE_DATA_DIR",
        value_name = "DIR",
        default_value = "./sluice-data"
    )]
    pub data_dir: PathBuf,

    /// Address the Kafka listener binds on every shard (SO_REUSEPORT).
    #[arg(
        long,
        env = "SLUICE_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9092"
    )]
    pub listen: SocketAddr,

    /// host:port given to clients in Metadata responses (default: --listen).
    #[arg(long, env = "SLUICE_ADVERTISED_LISTENER", value_name = "HOST:PORT")]
    pub advertised_listener: Option<String>,

    /// Address of the admin HTTP server (GET /healthz).
    #[arg(
        long,
        env = "SLUICE_ADMIN_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9644"
    )]
    pub admin_listen: SocketAddr,

    /// Number of shards (one glommio executor thread each). Default: cores - 1, at least 1.
    #[arg(long, env = "SLUICE_SHARDS", value_name = "N")]
    pub shards: Option<u32>,

    /// Pin shard i to core i+1 (core 0 keeps the control thread).
    #[arg(long, env = "SLUICE_PIN_CORES", value_name = "BOOL", default_value = "false", action = clap::ArgAction::Set)]
    pub pin_cores: bool,

    /// Total memory budget of the node, split evenly over the shards (e.g. 1GiB, 512MiB).
    #[arg(
        long,
        env = "SLUICE_MEMORY",
        value_name = "SIZE",
        default_value = "1GiB"
    )]
    pub memory: ByteSize,

    /// Broker id of this node in Metadata responses (0..=2147483647).
    #[arg(long, env = "SLUICE_NODE_ID", value_name = "ID", default_value = "1")]
    pub node_id: u64,

    /// Partitions of auto-created topics and of CreateTopics with num_partitions = -1.
    #[arg(
        long,
        env = "SLUICE_DEFAULT_PARTITIONS",
        value_name = "N",
        default_value = "1"
    )]
    pub default_partitions: u32,

    /// Create unknown topics named in Metadata requests that allow it.
    #[arg(long, env = "SLUICE_AUTO_CREATE_TOPICS", value_name = "BOOL", default_value = "true", action = clap::ArgAction::Set)]
    pub auto_create_topics: bool,

    /// group.initial.rebalance.delay.ms: how long a new consumer group waits for more members before its first assignment.
    #[arg(
        long,
        env = "SLUICE_GROUP_INITIAL_REBALANCE_DELAY_MS",
        value_name = "MS",
        default_value = "3000"
    )]
    pub group_initial_rebalance_delay_ms: u64,

    /// Log filter (tracing EnvFilter syntax: "info", "sluice=debug,info"). RUST_LOG overrides it.
    #[arg(
        long,
        env = "SLUICE_LOG_LEVEL",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log_level: String,

    /// Partitions one shard accepts; CreateTopics beyond it fails with POLICY_VIOLATION. Also bounded by --memory (an eighth of a shard's memory, PARTITION_BYTES_ESTIMATE per partition).
    #[arg(long, env = "SLUICE_PARTITIONS_PER_SHARD_MAX", value_name = "N")]
    pub partitions_per_shard_max: Option<u32>,

    /// Bytes one WAL commit writes at most (also the largest record batch, less 4 KiB). Each shard's glommio io_memory arena is sized from it: 2 x this + 512 KiB.
    #[arg(
        long,
        env = "SLUICE_WAL_COMMIT_BYTES_MAX",
        value_name = "SIZE",
        default_value = "2MiB"
    )]
    pub wal_commit_bytes_max: ByteSize,

    /// Size of each WAL segment file (the unit of space reclamation by
    /// retention).
    #[arg(
        long,
        env = "SLUICE_WAL_SEGMENT_BYTES",
        value_name = "SIZE",
        default_value = "64MiB"
    )]
    pub wal_segment_bytes: ByteSize,

    /// Largest request frame accepted (socket.request.max.bytes); larger frames close the connection.
    #[arg(
        long,
        env = "SLUICE_REQUEST_MAX_BYTES",
        value_name = "SIZE",
        default_value = "100MiB"
    )]
    pub request_max_bytes: ByteSize,

    /// Idle time after which an idempotent producer's sequence state is dropped (producer.id.expiration.ms).
    #[arg(
        long,
        env = "SLUICE_PRODUCER_ID_EXPIRATION_MS",
        value_name = "MS",
        default_value = "86400000"
    )]
    pub producer_id_expiration_ms: u64,

    /// Open Kafka connections one shard accepts; a connection over it is closed at accept (with a warning at most every 10 s per shard).
    #[arg(
        long,
        env = "SLUICE_CONNECTIONS_PER_SHARD_MAX",
        value_name = "N",
        default_value = "10000"
    )]
    pub connections_per_shard_max: u32,

    /// Time a request frame may take to arrive once its first byte came (its size prefix, and then its body once its memory is reserved); a connection that holds a partial frame longer is closed. Below the 15 s others may wait for request memory, so one slow sender cannot make them give up.
    #[arg(
        long,
        env = "SLUICE_FRAME_READ_TIMEOUT_MS",
        value_name = "MS",
        default_value = "10000"
    )]
    pub frame_read_timeout_ms: u64,
}

/// The TOML file: the same settings, all optional. Unknown keys are refused.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertised_listener: Option<String>,
    admin_listen: Option<SocketAddr>,
    shards: Option<u32>,
    pin_cores: Option<bool>,
    memory: Option<ByteSize>,
    node_id: Option<u64>,
    default_partitions: Option<u32>,
    auto_create_topics: Option<bool>,
    group_initial_rebalance_delay_ms: Option<u64>,
    log_level: Option<String>,
    request_max_bytes: Option<ByteSize>,
    producer_id_expiration_ms: Option<u64>,
    partitions_per_shard_max: Option<u32>,
    wal_commit_bytes_max: Option<ByteSize>,
    connections_per_shard_max: Option<u32>,
    wal_segment_bytes: Option<ByteSize>,
    frame_read_timeout_ms: Option<u64>,
}

/// A size in bytes, written as an integer or with a unit: "512MiB", "1GiB",
/// "64KiB", "1000000", "10MB" (decimal units are powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("'{s}' is not a size (e.g. 512MiB, 1GiB, 1048576)"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            other => {
                return Err(format!(
                "unknown size unit '{other}' in '{s}' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size '{s}' overflows"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Validated settings of a node.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub advertised_host: String,
    pub advertised_port: u16,
    pub admin_listen: SocketAddr,
    pub shards: u32,
    pub pin_cores: bool,
    pub memory_bytes: u64,
    pub node_id: i32,
    pub default_partitions: u32,
    pub auto_create_topics: bool,
    pub group_initial_rebalance_delay_ms: u64,
    pub log_level: String,
    pub request_max_bytes: u32,
    pub producer_id_expiration_ms: i64,
    pub partitions_per_shard_max: Option<u32>,
    pub wal_commit_bytes_max: u64,
    pub connections_per_shard_max: u32,
    pub wal_segment_bytes: u64,
    pub frame_read_timeout_ms: u64,
}

impl StartArgs {
    /// Fills the settings that still hold their default (or are unset)
    /// from the `--config` file, if any.
    pub fn merge_file(mut self, matches: &ArgMatches) -> anyhow::Result<StartArgs> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let file = read_file(&path)?;
        let defaulted = |id: &str| {
            !matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        macro_rules! fill {
            ($field:ident) => {
                if let (true, Some(v)) = (defaulted(stringify!($field)), file.$field) {
                    self.$field = v;
                }
            };
            (opt $field:ident) => {
                if let (true, Some(v)) = (defaulted(stringify!($field)), file.$field) {
                    self.$field = Some(v);
                }
            };
        }
        fill!(data_dir);
        fill!(listen);
        fill!(opt advertised_listener);
        fill!(admin_listen);
        fill!(opt shards);
        fill!(pin_cores);
        fill!(memory);
        fill!(node_id);
        fill!(default_partitions);
        fill!(auto_create_topics);
        fill!(group_initial_rebalance_delay_ms);
        fill!(log_level);
        fill!(request_max_bytes);
        fill!(producer_id_expiration_ms);
        fill!(opt partitions_per_shard_max);
        fill!(wal_commit_bytes_max);
        fill!(connections_per_shard_max);
        fill!(wal_segment_bytes);
        fill!(frame_read_timeout_ms);
        Ok(self)
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config: cannot read {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("--config: invalid settings in {}", path.display()))
}

impl Settings {
    /// Validates merged arguments; every error names the setting.
    pub fn resolve(args: StartArgs) -> anyhow::Result<Settings> {
        let shards = resolve_shards(args.shards)?;
        let (advertised_host, advertised_port) =
            resolve_advertised(args.advertised_listener.as_deref(), args.listen)?;
        let node_id = match i32::try_from(args.node_id) {
            Ok(id) => id,
            Err(_) => bail!(
                "--node-id (SLUICE_NODE_ID, node_id): {} is above 2147483647",
                args.node_id
            ),
        };
        let memory_bytes = args.memory.0;
        if memory_bytes < MEMORY_BYTES_MIN * u64::from(shards).max(1) {
            bail!(
                "--memory (SLUICE_MEMORY, memory): {memory_bytes} bytes is below the minimum of {} MiB per shard ({shards} shards)",
                MEMORY_BYTES_MIN >> 20
            );
        }
        if args.default_partitions == 0 || args.default_partitions > PARTITIONS_PER_TOPIC_MAX {
            bail!(
                "--default-partitions (SLUICE_DEFAULT_PARTITIONS, default_partitions): {} is not in 1..={PARTITIONS_PER_TOPIC_MAX}",
                args.default_partitions
            );
        }
        let request_max_bytes = match u32::try_from(args.request_max_bytes.0) {
            Ok(n) if n >= 1024 && n <= i32::MAX as u32 => n,
            _ => bail!(
                "--request-max-bytes (SLUICE_REQUEST_MAX_BYTES, request_max_bytes): {} is not in 1KiB..2GiB",
                args.request_max_bytes.0
            ),
        };
        let wal_commit_bytes_max = args.wal_commit_bytes_max.0;
        if !(WAL_COMMIT_BYTES_MIN..=WAL_COMMIT_BYTES_MAX).contains(&wal_commit_bytes_max)
            || wal_commit_bytes_max % 4096 != 0
        {
            bail!("--wal-commit-bytes-max (SLUICE_WAL_COMMIT_BYTES_MAX, wal_commit_bytes_max): {wal_commit_bytes_max} is not a multiple of 4KiB in 2MiB..=32MiB");
        }
        let wal_segment_bytes = args.wal_segment_bytes.0;
        if !(WAL_SEGMENT_BYTES_MIN..=WAL_SEGMENT_BYTES_MAX).contains(&wal_segment_bytes)
            || wal_segment_bytes % 4096 != 0
            || wal_segment_bytes < 2 * wal_commit_bytes_max
        {
            bail!("--wal-segment-bytes (SLUICE_WAL_SEGMENT_BYTES, wal_segment_bytes): {wal_segment_bytes} is not a multiple of 4KiB in 4MiB..=4GiB of at least two WAL commits ({wal_commit_bytes_max})");
        }
        if args.partitions_per_shard_max == Some(0) {
            bail!("--partitions-per-shard-max (SLUICE_PARTITIONS_PER_SHARD_MAX, partitions_per_shard_max): must be at least 1");
        }
        if !(1..=CONNECTIONS_PER_SHARD_LIMIT).contains(&args.connections_per_shard_max) {
            bail!(
                "--connections-per-shard-max (SLUICE_CONNECTIONS_PER_SHARD_MAX, connections_per_shard_max): {} is not in 1..={CONNECTIONS_PER_SHARD_LIMIT}",
                args.connections_per_shard_max
            );
        }
        if !(FRAME_READ_TIMEOUT_MS_MIN..=FRAME_READ_TIMEOUT_MS_MAX)
            .contains(&args.frame_read_timeout_ms)
        {
            bail!(
                "--frame-read-timeout-ms (SLUICE_FRAME_READ_TIMEOUT_MS, frame_read_timeout_ms): {} is not in {FRAME_READ_TIMEOUT_MS_MIN}..={FRAME_READ_TIMEOUT_MS_MAX}",
                args.frame_read_timeout_ms
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&args.log_level) {
            bail!(
                "--log-level (SLUICE_LOG_LEVEL, log_level): '{}' is not a log filter: {e}",
                args.log_level
            );
        }
        let producer_id_expiration_ms = match i64::try_from(args.producer_id_expiration_ms) {
            Ok(ms) if ms >= 1 => ms,
            _ => bail!(
                "--producer-id-expiration-ms (SLUICE_PRODUCER_ID_EXPIRATION_MS, producer_id_expiration_ms): {} is not in 1..=i64::MAX",
                args.producer_id_expiration_ms
            ),
        };
        if args.listen == args.admin_listen {
            bail!(
                "--admin-listen (SLUICE_ADMIN_LISTEN, admin_listen): same address as --listen ({})",
                args.listen
            );
        }
        Ok(Settings {
            data_dir: args.data_dir,
            listen: args.listen,
            advertised_host,
            advertised_port,
            admin_listen: args.admin_listen,
            shards,
            pin_cores: args.pin_cores,
            memory_bytes,
            node_id,
            default_partitions: args.default_partitions,
            auto_create_topics: args.auto_create_topics,
            group_initial_rebalance_delay_ms: args.group_initial_rebalance_delay_ms,
            log_level: args.log_level,
            request_max_bytes,
            producer_id_expiration_ms,
            partitions_per_shard_max: args.partitions_per_shard_max,
            wal_commit_bytes_max,
            connections_per_shard_max: args.connections_per_shard_max,
            wal_segment_bytes,
            frame_read_timeout_ms: args.frame_read_timeout_ms,
        })
    }

    /// Memory budget of one shard.
    pub fn shard_memory_bytes(&self) -> u64 {
        self.memory_bytes / u64::from(self.shards)
    }

    /// Partitions one shard accepts: `--partitions-per-shard-max`, and at
    /// most what the shard's partition-state share of memory (an eighth)
    /// holds at `PARTITION_BYTES_ESTIMATE` each.
    pub fn partitions_per_shard_max(&self) -> u32 {
        let n = self.shard_memory_bytes() / 8 / PARTITION_BYTES_ESTIMATE;
        let derived = u32::try_from(n.clamp(1, 1_000_000)).unwrap_or(1_000_000);
        self.partitions_per_shard_max
            .map_or(derived, |explicit| explicit.min(derived))
    }
}

/// Cores available to this process.
pub fn cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(1))
        .unwrap_or(1)
}

fn resolve_shards(shards: Option<u32>) -> anyhow::Result<u32> {
    const SHARDS_MAX: u32 = 256;
    match shards {
        None => Ok(cores().saturating_sub(1).max(1)),
        Some(n) if (1..=SHARDS_MAX).contains(&n) => Ok(n),
        Some(n) => bail!("--shards (SLUICE_SHARDS, shards): {n} is not in 1..={SHARDS_MAX}"),
    }
}

fn resolve_advertised(
    advertised: Option<&str>,
    listen: SocketAddr,
) -> anyhow::Result<(String, u16)> {
    let Some(text) = advertised else {
        if listen.ip().is_unspecified() {
            bail!("--advertised-listener (SLUICE_ADVERTISED_LISTENER, advertised_listener): required when --listen is {listen}");
        }
        return Ok((listen.ip().to_string(), listen.port()));
    };
    let bad = || {
        anyhow::anyhow!("--advertised-listener (SLUICE_ADVERTISED_LISTENER, advertised_listener): '{text}' is not HOST:PORT")
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn parse(argv: &[&str]) -> anyhow::Result<Settings> {
        let matches = Cli::command().try_get_matches_from(argv)?;
        let (_, sub) = matches.subcommand().expect("subcommand");
        let args = StartArgs::from_arg_matches(sub)?;
        Settings::resolve(args.merge_file(sub)?)
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("1GiB".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
        assert_eq!("512MiB".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
        assert_eq!("10MB".parse::<ByteSize>(), Ok(ByteSize(10_000_000)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert!("lots".parse::<ByteSize>().is_err());
        assert!("1XB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn defaults() {
        let s = parse(&["sluice", "start"]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(
            (s.advertised_host.as_str(), s.advertised_port),
            ("127.0.0.1", 9092)
        );
        assert_eq!(s.admin_listen.to_string(), "127.0.0.1:9644");
        assert!(s.shards >= 1);
        assert!(!s.pin_cores && s.auto_create_topics);
        assert_eq!(s.default_partitions, 1);
        assert_eq!(s.request_max_bytes, 100 << 20);
        assert_eq!(s.data_dir, PathBuf::from("./sluice-data"));
        assert_eq!(s.connections_per_shard_max, 10_000);
    }

    #[test]
    fn partition_limit_is_the_flag_bounded_by_memory() {
        let base = ["sluice", "start", "--shards", "1", "--memory", "1GiB"];
        let s = parse(&base).expect("defaults");
        assert_eq!(
            s.partitions_per_shard_max(),
            131_072,
            "an eighth of 1 GiB at 1 KiB each"
        );
        let mut argv = base.to_vec();
        argv.extend(["--partitions-per-shard-max", "500"]);
        assert_eq!(parse(&argv).expect("flag").partitions_per_shard_max(), 500);
        let mut argv = base.to_vec();
        argv.extend(["--partitions-per-shard-max", "10000000"]);
        assert_eq!(
            parse(&argv).expect("flag").partitions_per_shard_max(),
            131_072
        );
        let mut argv = base.to_vec();
        argv.extend(["--partitions-per-shard-max", "0"]);
        assert!(parse(&argv).is_err());
        let mut argv = base.to_vec();
        argv.extend(["--wal-commit-bytes-max", "1MiB"]);
        let e = parse(&argv).expect_err("below the minimum").to_string();
        assert!(e.contains("--wal-commit-bytes-max"), "{e}");
    }

    #[test]
    fn file_fills_only_defaulted_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "shards = 3\nmemory = \"2GiB\"\nnode_id = 7\ndefault_partitions = 4\nconnections_per_shard_max = 50\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = parse(&[
            "sluice",
            "start",
            "--config",
            p,
            "--default-partitions",
            "2",
        ])
        .unwrap();
        assert_eq!(s.shards, 3);
        assert_eq!(s.memory_bytes, 2 << 30);
        assert_eq!(s.node_id, 7);
        assert_eq!(s.default_partitions, 2, "a flag beats the file");
        assert_eq!(s.connections_per_shard_max, 50);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let e = parse(&["sluice", "start", "--shards", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--shards"), "{e}");
        let e = parse(&["sluice", "start", "--memory", "1MiB"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--memory"), "{e}");
        let e = parse(&["sluice", "start", "--advertised-listener", "nohost"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--advertised-listener"), "{e}");
        let e = parse(&["sluice", "start", "--connections-per-shard-max", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--connections-per-shard-max"), "{e}");
        let e = parse(&["sluice", "start", "--memory", "bogus"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--memory"), "{e}");
    }

    #[test]
    fn wal_segment_bytes_from_flag_file_and_default() {
        let s = parse(&["sluice", "start"]).unwrap();
        assert_eq!(s.wal_segment_bytes, 64 << 20);
        let s = parse(&["sluice", "start", "--wal-segment-bytes", "4MiB"]).unwrap();
        assert_eq!(s.wal_segment_bytes, 4 << 20);
        for bad in ["3MiB", "5000000", "8GiB"] {
            let e = parse(&["sluice", "start", "--wal-segment-bytes", bad])
                .unwrap_err()
                .to_string();
            assert!(e.contains("--wal-segment-bytes"), "{bad}: {e}");
        }
        let e = parse(&[
            "sluice",
            "start",
            "--wal-segment-bytes",
            "4MiB",
            "--wal-commit-bytes-max",
            "4MiB",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("two WAL commits"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "wal_segment_bytes = \"16MiB\"\n").unwrap();
        let p = path.to_str().unwrap();
        let s = parse(&["sluice", "start", "--config", p]).unwrap();
        assert_eq!(s.wal_segment_bytes, 16 << 20);
    }

    #[test]
    fn file_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "shardz = 3\n").unwrap();
        let e = format!(
            "{:#}",
            parse(&["sluice", "start", "--config", path.to_str().unwrap()]).unwrap_err()
        );
        assert!(e.contains("shardz"), "{e}");
    }
}
