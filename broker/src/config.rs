//! Command line, environment and TOML configuration of `sluice start`.
//!
//! Every setting is a flag (`--data-dir`), an environment variable
//! (`SLUICE_DATA_DIR`) and a key of the `--config` TOML file (`data_dir`).
//! Precedence: flag > env > file > built-in default. clap resolves flag, env
//! and default; the file then fills only the settings whose value came from
//! a default (`ArgMatches::value_source`). `Settings::resolve` validates the
//! merged values and names the offending setting when one is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand};
use serde::Deserialize;

use crate::security::listeners::{self, Listener, SecurityProtocol};
use crate::security::tls::{ClientAuth, Tls, TlsFiles};
use crate::security::{Authorizer, Security};

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
/// Voters a cluster may have.
pub const VOTERS_MAX: usize = 64;
/// Replication factor of a cluster without `--default-replication-factor`:
/// min(this, voters).
pub const DEFAULT_REPLICATION_FACTOR_CLUSTER: u16 = 3;
/// Bounds of `--broker-heartbeat-ms`; the lease must be at least two
/// heartbeats.
const BROKER_HEARTBEAT_MS_MIN: u64 = 10;
const BROKER_HEARTBEAT_MS_MAX: u64 = 60_000;
/// Bounds of `--replica-fetch-max-bytes`.
const REPLICA_FETCH_BYTES_MIN: u64 = 64 << 10;
const REPLICA_FETCH_BYTES_MAX: u64 = 1 << 30;
/// Longest `--replica-fetch-wait-max-ms` (it must also stay below
/// `--replica-lag-time-max-ms`).
const REPLICA_FETCH_WAIT_MS_MAX: u64 = 60_000;

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
    #[command(flatten)]
    Client(crate::cli::ClientCommand),
    /// Check the host and the data dir before a start (the same flags and --config as start); exits 1 when a check fails.
    Check(crate::check::CheckArgs),
    /// Print a shell completion script (e.g. sluice completions bash > /etc/bash_completion.d/sluice).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for sluice and each subcommand into --dir, or print sluice(1) to stdout.
    Manpage {
        /// Directory to write sluice.1, sluice-start.1, ... into (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
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

    /// The longest transaction timeout a transactional producer may ask for (transaction.max.timeout.ms).
    #[arg(
        long,
        env = "SLUICE_TRANSACTION_MAX_TIMEOUT_MS",
        value_name = "MS",
        default_value = "900000"
    )]
    pub transaction_max_timeout_ms: u64,

    /// Idle time after which a transactional id and its producer id are forgotten (transactional.id.expiration.ms).
    #[arg(
        long,
        env = "SLUICE_TRANSACTIONAL_ID_EXPIRATION_MS",
        value_name = "MS",
        default_value = "604800000"
    )]
    pub transactional_id_expiration_ms: u64,

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

    /// Address this node accepts node-to-node (metadata) traffic on; required with --cluster-voters.
    #[arg(long, env = "SLUICE_CLUSTER_LISTEN", value_name = "HOST:PORT")]
    pub cluster_listen: Option<SocketAddr>,

    /// Every node of the cluster as ID@HOST:PORT (its --cluster-listen address), comma-separated, this node included. Unset: a single node.
    #[arg(long, env = "SLUICE_CLUSTER_VOTERS", value_name = "ID@HOST:PORT,...")]
    pub cluster_voters: Option<String>,

    /// Mutual TLS on the node-to-node (metadata) links, with --tls-cert-file and --tls-key-file, each node checking the others' certificates against --tls-client-ca-file (and, with --authorizer, that their principal is one of --super-users). Without it, anything that reaches --cluster-listen can write metadata: keep it on a private network.
    #[arg(long, env = "SLUICE_CLUSTER_TLS", value_name = "BOOL", default_value = "false", action = clap::ArgAction::Set)]
    pub cluster_tls: bool,

    /// Replicas of auto-created topics and of CreateTopics with replication_factor = -1. Default: 1 on a single node, min(3, voters) in a cluster.
    #[arg(long, env = "SLUICE_DEFAULT_REPLICATION_FACTOR", value_name = "N")]
    pub default_replication_factor: Option<u16>,

    /// min.insync.replicas of topics that do not set it: acks=all produces need this many in-sync replicas.
    #[arg(
        long,
        env = "SLUICE_MIN_INSYNC_REPLICAS",
        value_name = "N",
        default_value = "1"
    )]
    pub min_insync_replicas: u32,

    /// A follower that has not caught up with the leader for this long leaves the ISR (replica.lag.time.max.ms).
    #[arg(
        long,
        env = "SLUICE_REPLICA_LAG_TIME_MAX_MS",
        value_name = "MS",
        default_value = "30000"
    )]
    pub replica_lag_time_max_ms: u64,

    /// How often a node heartbeats to the controller.
    #[arg(
        long,
        env = "SLUICE_BROKER_HEARTBEAT_MS",
        value_name = "MS",
        default_value = "250"
    )]
    pub broker_heartbeat_ms: u64,

    /// A node without a heartbeat for this long is fenced: it leaves the ISRs and its leaderships move.
    #[arg(
        long,
        env = "SLUICE_BROKER_LEASE_MS",
        value_name = "MS",
        default_value = "1500"
    )]
    pub broker_lease_ms: u64,

    /// Longest wait of a follower's fetch at the leader when there is nothing new (replica.fetch.wait.max.ms). New data ends the wait at once; this is what an idle cluster pays: at 500 ms, 1000 x 3 partitions with 3 replicas cost each node ~3% of a core, at 2000 ms under 1%.
    #[arg(
        long,
        env = "SLUICE_REPLICA_FETCH_WAIT_MAX_MS",
        value_name = "MS",
        default_value = "2000"
    )]
    pub replica_fetch_wait_max_ms: u64,

    /// Bytes one follower fetch asks for at most (replica.fetch.response.max.bytes).
    #[arg(
        long,
        env = "SLUICE_REPLICA_FETCH_MAX_BYTES",
        value_name = "SIZE",
        default_value = "10MiB"
    )]
    pub replica_fetch_max_bytes: ByteSize,

    /// Longest time from a record's acknowledgement to its being searchable, for topics with sluice.search.enable (once indexing caught up).
    #[arg(
        long,
        env = "SLUICE_SEARCH_REFRESH_MS",
        value_name = "MS",
        default_value = "1000"
    )]
    pub search_refresh_ms: u64,

    /// Search index builders per shard: each holds one heap of --search-builder-heap, charged to the shard's memory once the shard indexes a topic.
    #[arg(
        long,
        env = "SLUICE_SEARCH_BUILDERS_PER_SHARD",
        value_name = "N",
        default_value = "1"
    )]
    pub search_builders_per_shard: u32,

    /// Heap of one search index builder (at least 15MB, the search library's minimum); a full heap cuts a split.
    #[arg(
        long,
        env = "SLUICE_SEARCH_BUILDER_HEAP",
        value_name = "SIZE",
        default_value = "15MB"
    )]
    pub search_builder_heap: ByteSize,

    /// Per shard: an open searcher stays open between searches while the heap it holds (64 KiB per split, estimated; its mapped files are page cache) is at most this much (the index cache).
    #[arg(
        long,
        env = "SLUICE_SEARCH_CACHE",
        value_name = "SIZE",
        default_value = "256MiB"
    )]
    pub search_cache: ByteSize,

    /// Kafka listeners as NAME://HOST:PORT,... (NAME: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL or one of --listener-security-protocol-map). Replaces --listen.
    #[arg(long, env = "SLUICE_LISTENERS", value_name = "NAME://HOST:PORT,...")]
    pub listeners: Option<String>,

    /// The address each listener gives clients in Metadata, as NAME://HOST:PORT,... (default: the address it binds).
    #[arg(
        long,
        env = "SLUICE_ADVERTISED_LISTENERS",
        value_name = "NAME://HOST:PORT,..."
    )]
    pub advertised_listeners: Option<String>,

    /// Security protocols of named listeners, as NAME:PROTOCOL,... (e.g. INTERNAL:PLAINTEXT,EXTERNAL:SASL_SSL).
    #[arg(
        long,
        env = "SLUICE_LISTENER_SECURITY_PROTOCOL_MAP",
        value_name = "NAME:PROTOCOL,..."
    )]
    pub listener_security_protocol_map: Option<String>,

    /// The listener other nodes reach this one on (replication, transaction markers); registered in the metadata. Default: the first of --listeners. In a cluster: PLAINTEXT (a private network), SSL (mutual TLS), or SASL_PLAINTEXT / SASL_SSL with --inter-broker-sasl-username.
    #[arg(long, env = "SLUICE_INTER_BROKER_LISTENER_NAME", value_name = "NAME")]
    pub inter_broker_listener_name: Option<String>,

    /// SASL mechanism nodes authenticate to each other's SASL inter-broker listener with: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (Kafka's sasl.mechanism.inter.broker.protocol).
    #[arg(
        long,
        env = "SLUICE_INTER_BROKER_SASL_MECHANISM",
        value_name = "MECHANISM",
        default_value = "SCRAM-SHA-512"
    )]
    pub inter_broker_sasl_mechanism: String,

    /// The user this node authenticates as on the other nodes' SASL inter-broker listener (a super user under --authorizer).
    #[arg(long, env = "SLUICE_INTER_BROKER_SASL_USERNAME", value_name = "NAME")]
    pub inter_broker_sasl_username: Option<String>,

    /// File holding the password of --inter-broker-sasl-username (one line; read at start, never logged).
    #[arg(
        long,
        env = "SLUICE_INTER_BROKER_SASL_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub inter_broker_sasl_password_file: Option<PathBuf>,

    /// PEM file with the TLS certificate chain of SSL and SASL_SSL listeners (reloaded on SIGHUP).
    #[arg(long, env = "SLUICE_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert-file (reloaded on SIGHUP).
    #[arg(long, env = "SLUICE_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM file with the CA certificates client certificates must chain to (mTLS; the principal is the certificate's subject).
    #[arg(long, env = "SLUICE_TLS_CLIENT_CA_FILE", value_name = "FILE")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// Client certificates: none, requested or required (default: required when --tls-client-ca-file is given).
    #[arg(long, env = "SLUICE_TLS_CLIENT_AUTH", value_name = "MODE")]
    pub tls_client_auth: Option<String>,

    /// SASL mechanisms of SASL listeners, comma-separated: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
    #[arg(
        long,
        env = "SLUICE_SASL_ENABLED_MECHANISMS",
        value_name = "LIST",
        default_value = "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    )]
    pub sasl_enabled_mechanisms: String,

    /// File of name:password lines: SCRAM users created at start when they do not exist yet (the environment variable SLUICE_BOOTSTRAP_USERS takes name:password,... the same way).
    #[arg(long, env = "SLUICE_BOOTSTRAP_USERS_FILE", value_name = "FILE")]
    pub bootstrap_users_file: Option<PathBuf>,

    /// A SASL authentication lasts this long; the client re-authenticates on the same connection before it ends (KIP-368), else it is closed. 0: forever.
    #[arg(
        long,
        env = "SLUICE_CONNECTIONS_MAX_REAUTH_MS",
        value_name = "MS",
        default_value = "0"
    )]
    pub connections_max_reauth_ms: u64,

    /// A failed SASL authentication is answered after this delay (then the connection is closed).
    #[arg(
        long,
        env = "SLUICE_FAILED_AUTHENTICATION_DELAY_MS",
        value_name = "MS",
        default_value = "100"
    )]
    pub failed_authentication_delay_ms: u64,

    /// Check ACLs on every request.
    #[arg(long, env = "SLUICE_AUTHORIZER", value_name = "BOOL", default_value = "false", action = clap::ArgAction::Set)]
    pub authorizer: bool,

    /// Principals allowed everything when --authorizer is on, as User:NAME;User:OTHER (separated by ;, as certificate principals hold commas).
    #[arg(long, env = "SLUICE_SUPER_USERS", value_name = "LIST")]
    pub super_users: Option<String>,

    /// With --authorizer: allow a request on a resource no ACL names.
    #[arg(long, env = "SLUICE_ALLOW_EVERYONE_IF_NO_ACL_FOUND", value_name = "BOOL", default_value = "false", action = clap::ArgAction::Set)]
    pub allow_everyone_if_no_acl_found: bool,

    /// Open Kafka connections one client IP may have per shard (max.connections.per.ip); one over it is closed at accept.
    #[arg(
        long,
        env = "SLUICE_MAX_CONNECTIONS_PER_IP",
        value_name = "N",
        default_value = "4294967295"
    )]
    pub max_connections_per_ip: u32,

    /// File holding the bearer token of the admin HTTP port (its first line). Without it the admin port must be a loopback address.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Serve the admin HTTP port over TLS (HTTPS) with --tls-cert-file and --tls-key-file (reloaded on SIGHUP); no client certificate is asked for.
    #[arg(long, env = "SLUICE_ADMIN_TLS", value_name = "BOOL", default_value = "false", action = clap::ArgAction::Set)]
    pub admin_tls: bool,

    /// Settings given by flag, environment or file (setting ids, e.g.
    /// "min_insync_replicas"): their DescribeConfigs source is
    /// STATIC_BROKER_CONFIG, the others' DEFAULT_CONFIG.
    #[arg(skip)]
    pub explicit: BTreeSet<String>,
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
    transaction_max_timeout_ms: Option<u64>,
    transactional_id_expiration_ms: Option<u64>,
    partitions_per_shard_max: Option<u32>,
    wal_commit_bytes_max: Option<ByteSize>,
    connections_per_shard_max: Option<u32>,
    wal_segment_bytes: Option<ByteSize>,
    frame_read_timeout_ms: Option<u64>,
    cluster_listen: Option<SocketAddr>,
    cluster_voters: Option<String>,
    default_replication_factor: Option<u16>,
    min_insync_replicas: Option<u32>,
    replica_lag_time_max_ms: Option<u64>,
    broker_heartbeat_ms: Option<u64>,
    broker_lease_ms: Option<u64>,
    replica_fetch_wait_max_ms: Option<u64>,
    replica_fetch_max_bytes: Option<ByteSize>,
    search_refresh_ms: Option<u64>,
    search_builders_per_shard: Option<u32>,
    search_builder_heap: Option<ByteSize>,
    search_cache: Option<ByteSize>,
    listeners: Option<String>,
    advertised_listeners: Option<String>,
    listener_security_protocol_map: Option<String>,
    inter_broker_listener_name: Option<String>,
    inter_broker_sasl_mechanism: Option<String>,
    inter_broker_sasl_username: Option<String>,
    inter_broker_sasl_password_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    tls_client_ca_file: Option<PathBuf>,
    tls_client_auth: Option<String>,
    sasl_enabled_mechanisms: Option<String>,
    bootstrap_users_file: Option<PathBuf>,
    connections_max_reauth_ms: Option<u64>,
    failed_authentication_delay_ms: Option<u64>,
    authorizer: Option<bool>,
    super_users: Option<String>,
    allow_everyone_if_no_acl_found: Option<bool>,
    admin_token_file: Option<PathBuf>,
    admin_tls: Option<bool>,
    cluster_tls: Option<bool>,
    max_connections_per_ip: Option<u32>,
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
    /// The inter-broker listener's address (the only one without
    /// `--listeners`).
    pub listen: SocketAddr,
    /// Every Kafka listener; the inter-broker one's advertised address is
    /// `advertised_host:advertised_port`.
    pub listeners: Vec<Listener>,
    pub tls_files: Option<TlsFiles>,
    pub sasl_mechanisms: Vec<&'static str>,
    pub bootstrap_users_file: Option<PathBuf>,
    pub connections_max_reauth_ms: u64,
    pub failed_authentication_delay_ms: u64,
    pub authorizer: Option<Authorizer>,
    pub admin_token_file: Option<PathBuf>,
    /// The admin port serves HTTPS with `tls_files`' certificate.
    pub admin_tls: bool,
    /// Mutual TLS on the cluster (Raft) links.
    pub cluster_tls: bool,
    /// Nodes connect to each other's `SSL` or `SASL_SSL` inter-broker
    /// listener over TLS.
    pub inter_broker_tls: bool,
    /// Nodes authenticate to each other's `SASL_*` inter-broker listener
    /// with these.
    pub inter_broker_sasl: Option<crate::sasl::client::ClientCredentials>,
    pub max_connections_per_ip: u32,
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
    pub transaction_max_timeout_ms: i64,
    pub transactional_id_expiration_ms: i64,
    pub partitions_per_shard_max: Option<u32>,
    pub wal_commit_bytes_max: u64,
    pub connections_per_shard_max: u32,
    pub wal_segment_bytes: u64,
    pub frame_read_timeout_ms: u64,
    /// `None`: a single node (one-voter metadata group, no cluster traffic).
    pub cluster: Option<ClusterSettings>,
    pub default_replication_factor: u16,
    pub min_insync_replicas: u32,
    pub replica_lag_time_max_ms: u64,
    pub broker_heartbeat_ms: u64,
    pub broker_lease_ms: u64,
    pub replica_fetch_wait_max_ms: u64,
    pub replica_fetch_max_bytes: u32,
    pub search_refresh_ms: u64,
    pub search_builders_per_shard: u32,
    pub search_builder_heap_bytes: u64,
    pub search_cache_bytes: u64,
    /// Settings given by flag, environment or file (setting ids).
    pub explicit: BTreeSet<String>,
}

/// One broker setting as DescribeConfigs lists it (resource type BROKER):
/// Kafka's name, the value, and whether it was set (flag, environment,
/// file: STATIC_BROKER_CONFIG) or is the default (DEFAULT_CONFIG). Every
/// one is read-only: broker settings are read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub name: &'static str,
    pub value: Option<String>,
    pub explicit: bool,
    pub kind: crate::topic_config::ConfigType,
    /// The setting that gives it (its id: the TOML key; the flag with
    /// dashes, the variable upper-cased after `SLUICE_`); empty when fixed.
    pub flag: &'static str,
}

/// The node-to-node settings of a cluster member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub listen: SocketAddr,
    /// Every voter's node id and cluster address (`host:port`).
    pub voters: BTreeMap<u64, String>,
}

impl StartArgs {
    /// Fills the settings that still hold their default (or are unset)
    /// from the `--config` file, if any.
    pub fn merge_file(mut self, matches: &ArgMatches) -> anyhow::Result<StartArgs> {
        self.explicit = matches
            .ids()
            .filter(|id| {
                matches!(
                    matches.value_source(id.as_str()),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            })
            .map(|id| id.to_string())
            .collect();
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
                    self.explicit.insert(stringify!($field).to_string());
                }
            };
            (opt $field:ident) => {
                if let (true, Some(v)) = (defaulted(stringify!($field)), file.$field) {
                    self.$field = Some(v);
                    self.explicit.insert(stringify!($field).to_string());
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
        fill!(transaction_max_timeout_ms);
        fill!(transactional_id_expiration_ms);
        fill!(opt partitions_per_shard_max);
        fill!(wal_commit_bytes_max);
        fill!(connections_per_shard_max);
        fill!(wal_segment_bytes);
        fill!(frame_read_timeout_ms);
        fill!(opt cluster_listen);
        fill!(opt cluster_voters);
        fill!(opt default_replication_factor);
        fill!(min_insync_replicas);
        fill!(replica_lag_time_max_ms);
        fill!(broker_heartbeat_ms);
        fill!(broker_lease_ms);
        fill!(replica_fetch_wait_max_ms);
        fill!(replica_fetch_max_bytes);
        fill!(search_refresh_ms);
        fill!(search_builders_per_shard);
        fill!(search_builder_heap);
        fill!(search_cache);
        fill!(opt listeners);
        fill!(opt advertised_listeners);
        fill!(opt listener_security_protocol_map);
        fill!(opt inter_broker_listener_name);
        fill!(inter_broker_sasl_mechanism);
        fill!(opt inter_broker_sasl_username);
        fill!(opt inter_broker_sasl_password_file);
        fill!(opt tls_cert_file);
        fill!(opt tls_key_file);
        fill!(opt tls_client_ca_file);
        fill!(opt tls_client_auth);
        fill!(sasl_enabled_mechanisms);
        fill!(opt bootstrap_users_file);
        fill!(connections_max_reauth_ms);
        fill!(failed_authentication_delay_ms);
        fill!(authorizer);
        fill!(opt super_users);
        fill!(allow_everyone_if_no_acl_found);
        fill!(opt admin_token_file);
        fill!(admin_tls);
        fill!(cluster_tls);
        fill!(max_connections_per_ip);
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
        let listeners = resolve_listeners(&args)?;
        let inter_broker = inter_broker_listener(&args, &listeners)?;
        let (listen, advertised_host, advertised_port) = (
            inter_broker.addr,
            inter_broker.advertised_host.clone(),
            inter_broker.advertised_port,
        );
        if args.cluster_tls && args.cluster_voters.is_none() {
            bail!("--cluster-tls (SLUICE_CLUSTER_TLS, cluster_tls): only in a cluster (--cluster-voters)");
        }
        let tls_files = resolve_tls(&args, &listeners)?;
        let sasl_mechanisms = resolve_mechanisms(&args.sasl_enabled_mechanisms)?;
        let authorizer = args.authorizer.then(|| Authorizer {
            super_users: args
                .super_users
                .as_deref()
                .unwrap_or("")
                // `;` only: certificate principals hold commas.
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            allow_if_no_acl: args.allow_everyone_if_no_acl_found,
        });
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
        let transaction_max_timeout_ms = match i64::try_from(args.transaction_max_timeout_ms) {
            Ok(ms) if (1..=i64::from(i32::MAX)).contains(&ms) => ms,
            _ => bail!(
                "--transaction-max-timeout-ms (SLUICE_TRANSACTION_MAX_TIMEOUT_MS, transaction_max_timeout_ms): {} is not in 1..={}",
                args.transaction_max_timeout_ms,
                i32::MAX
            ),
        };
        let transactional_id_expiration_ms = match i64::try_from(args.transactional_id_expiration_ms) {
            Ok(ms) if ms >= 1 => ms,
            _ => bail!(
                "--transactional-id-expiration-ms (SLUICE_TRANSACTIONAL_ID_EXPIRATION_MS, transactional_id_expiration_ms): {} is not in 1..=i64::MAX",
                args.transactional_id_expiration_ms
            ),
        };
        let cluster = resolve_cluster(&args)?;
        let replication = resolve_replication(&args, cluster.as_ref())?;
        if let Some(l) = listeners.iter().find(|l| l.addr == args.admin_listen) {
            bail!(
                "--admin-listen (SLUICE_ADMIN_LISTEN, admin_listen): same address as listener {} ({})",
                l.name,
                l.addr
            );
        }
        let inter_broker_tls = inter_broker.protocol.tls();
        let inter_broker_sasl = match cluster {
            Some(_) if inter_broker.protocol.sasl() => Some(resolve_inter_broker_sasl(
                &args,
                inter_broker,
                &sasl_mechanisms,
            )?),
            _ => None,
        };
        if args.cluster_tls && !tls_files.as_ref().is_some_and(|t| t.client_ca.is_some()) {
            bail!("--cluster-tls (SLUICE_CLUSTER_TLS, cluster_tls): needs --tls-cert-file, --tls-key-file and --tls-client-ca-file, the CA the nodes' certificates chain to");
        }
        if cluster.is_some()
            && inter_broker_tls
            && tls_files.as_ref().is_none_or(|t| t.client_ca.is_none())
        {
            bail!(
                "--inter-broker-listener-name (SLUICE_INTER_BROKER_LISTENER_NAME, inter_broker_listener_name): the {} listener {} needs --tls-client-ca-file, the CA the nodes' certificates chain to (each node checks the others' against it, and connects with its --tls-cert-file)",
                inter_broker.protocol,
                inter_broker.name
            );
        }
        Ok(Settings {
            data_dir: args.data_dir,
            listen,
            listeners,
            tls_files,
            sasl_mechanisms,
            bootstrap_users_file: args.bootstrap_users_file,
            connections_max_reauth_ms: args.connections_max_reauth_ms,
            failed_authentication_delay_ms: args.failed_authentication_delay_ms,
            authorizer,
            admin_token_file: args.admin_token_file,
            admin_tls: args.admin_tls,
            cluster_tls: args.cluster_tls,
            inter_broker_tls: inter_broker_tls && cluster.is_some(),
            inter_broker_sasl,
            max_connections_per_ip: args.max_connections_per_ip,
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
            transaction_max_timeout_ms,
            transactional_id_expiration_ms,
            partitions_per_shard_max: args.partitions_per_shard_max,
            wal_commit_bytes_max,
            connections_per_shard_max: args.connections_per_shard_max,
            wal_segment_bytes,
            frame_read_timeout_ms: args.frame_read_timeout_ms,
            cluster,
            default_replication_factor: replication.default_replication_factor,
            min_insync_replicas: args.min_insync_replicas,
            replica_lag_time_max_ms: args.replica_lag_time_max_ms,
            broker_heartbeat_ms: args.broker_heartbeat_ms,
            broker_lease_ms: args.broker_lease_ms,
            replica_fetch_wait_max_ms: args.replica_fetch_wait_max_ms,
            replica_fetch_max_bytes: replication.replica_fetch_max_bytes,
            search_refresh_ms: args.search_refresh_ms,
            search_builders_per_shard: args.search_builders_per_shard,
            search_builder_heap_bytes: args.search_builder_heap.0,
            search_cache_bytes: args.search_cache.0,
            explicit: args.explicit,
        })
    }

    /// The node's security settings; reads the TLS material.
    pub fn security(&self) -> anyhow::Result<Security> {
        let tls = self.tls_files.clone().map(Tls::load).transpose()?;
        Ok(Security {
            listeners: self.listeners.clone(),
            tls,
            sasl_mechanisms: self.sasl_mechanisms.clone(),
            reauth_ms: self.connections_max_reauth_ms,
            failed_auth_delay: std::time::Duration::from_millis(
                self.failed_authentication_delay_ms,
            ),
            authorizer: self.authorizer.clone(),
            connections_per_ip_max: self.max_connections_per_ip,
            inter_broker_tls: self.inter_broker_tls,
            inter_broker_sasl: self.inter_broker_sasl.clone().map(std::sync::Arc::new),
        })
    }

    /// The broker configs DescribeConfigs lists for this node, by Kafka
    /// name (`sluice.*` for settings Kafka lacks), sorted by name.
    pub fn broker_configs(&self) -> Vec<BrokerConfig> {
        use crate::topic_config::ConfigType::{Boolean, Int, List, Long, String as Str};
        let log_dir = std::fs::canonicalize(&self.data_dir)
            .unwrap_or_else(|_| self.data_dir.clone())
            .display()
            .to_string();
        let voters = self.cluster.as_ref().map(|c| {
            c.voters
                .iter()
                .map(|(id, addr)| format!("{id}@{addr}"))
                .collect::<Vec<_>>()
                .join(",")
        });
        let advertised = self
            .listeners
            .iter()
            .map(Listener::advertised)
            .collect::<Vec<_>>()
            .join(",");
        let bound = self
            .listeners
            .iter()
            .map(|l| format!("{}://{}", l.name, l.addr))
            .collect::<Vec<_>>()
            .join(",");
        let protocols = self
            .listeners
            .iter()
            .map(|l| format!("{}:{}", l.name, l.protocol))
            .collect::<Vec<_>>()
            .join(",");
        let inter_broker = self
            .listeners
            .iter()
            .find(|l| l.addr == self.listen)
            .map(|l| l.name.clone());
        let super_users = self.authorizer.as_ref().map(|a| a.super_users.join(";"));
        let offsets_partitions = crate::plane::offsets_topic_partitions(self.shards).to_string();
        let set = |id: &str| self.explicit.contains(id);
        let mut out: Vec<BrokerConfig> = [
            (
                "advertised.listeners",
                Some(advertised),
                "advertised_listener",
                Str,
            ),
            (
                "auto.create.topics.enable",
                Some(self.auto_create_topics.to_string()),
                "auto_create_topics",
                Boolean,
            ),
            (
                "broker.heartbeat.interval.ms",
                Some(self.broker_heartbeat_ms.to_string()),
                "broker_heartbeat_ms",
                Long,
            ),
            ("broker.id", Some(self.node_id.to_string()), "node_id", Int),
            (
                "broker.session.timeout.ms",
                Some(self.broker_lease_ms.to_string()),
                "broker_lease_ms",
                Long,
            ),
            ("controller.quorum.voters", voters, "cluster_voters", List),
            (
                "default.replication.factor",
                Some(self.default_replication_factor.to_string()),
                "default_replication_factor",
                Int,
            ),
            (
                "group.initial.rebalance.delay.ms",
                Some(self.group_initial_rebalance_delay_ms.to_string()),
                "group_initial_rebalance_delay_ms",
                Int,
            ),
            ("listeners", Some(bound), "listeners", List),
            (
                "listener.security.protocol.map",
                Some(protocols),
                "listener_security_protocol_map",
                List,
            ),
            (
                "inter.broker.listener.name",
                inter_broker,
                "inter_broker_listener_name",
                Str,
            ),
            (
                "sasl.enabled.mechanisms",
                Some(self.sasl_mechanisms.join(",")),
                "sasl_enabled_mechanisms",
                List,
            ),
            (
                "connections.max.reauth.ms",
                Some(self.connections_max_reauth_ms.to_string()),
                "connections_max_reauth_ms",
                Long,
            ),
            (
                "connection.failed.authentication.delay.ms",
                Some(self.failed_authentication_delay_ms.to_string()),
                "failed_authentication_delay_ms",
                Int,
            ),
            (
                "ssl.client.auth",
                Some(
                    self.tls_files
                        .as_ref()
                        .map_or("none", |t| t.client_auth.name())
                        .to_string(),
                ),
                "tls_client_auth",
                Str,
            ),
            (
                "sluice.authorizer",
                Some(self.authorizer.is_some().to_string()),
                "authorizer",
                Boolean,
            ),
            ("super.users", super_users, "super_users", List),
            (
                "allow.everyone.if.no.acl.found",
                Some(
                    self.authorizer
                        .as_ref()
                        .is_some_and(|a| a.allow_if_no_acl)
                        .to_string(),
                ),
                "allow_everyone_if_no_acl_found",
                Boolean,
            ),
            ("log.dirs", Some(log_dir), "data_dir", List),
            (
                "min.insync.replicas",
                Some(self.min_insync_replicas.to_string()),
                "min_insync_replicas",
                Int,
            ),
            ("node.id", Some(self.node_id.to_string()), "node_id", Int),
            (
                "num.partitions",
                Some(self.default_partitions.to_string()),
                "default_partitions",
                Int,
            ),
            (
                "offsets.topic.num.partitions",
                Some(offsets_partitions),
                "shards",
                Int,
            ),
            (
                "producer.id.expiration.ms",
                Some(self.producer_id_expiration_ms.to_string()),
                "producer_id_expiration_ms",
                Int,
            ),
            (
                "transaction.max.timeout.ms",
                Some(self.transaction_max_timeout_ms.to_string()),
                "transaction_max_timeout_ms",
                Int,
            ),
            (
                "transactional.id.expiration.ms",
                Some(self.transactional_id_expiration_ms.to_string()),
                "transactional_id_expiration_ms",
                Long,
            ),
            (
                "replica.fetch.response.max.bytes",
                Some(self.replica_fetch_max_bytes.to_string()),
                "replica_fetch_max_bytes",
                Int,
            ),
            (
                "replica.fetch.wait.max.ms",
                Some(self.replica_fetch_wait_max_ms.to_string()),
                "replica_fetch_wait_max_ms",
                Int,
            ),
            (
                "replica.lag.time.max.ms",
                Some(self.replica_lag_time_max_ms.to_string()),
                "replica_lag_time_max_ms",
                Long,
            ),
            (
                "sluice.memory.bytes",
                Some(self.memory_bytes.to_string()),
                "memory",
                Long,
            ),
            (
                "sluice.search.builder.heap.bytes",
                Some(self.search_builder_heap_bytes.to_string()),
                "search_builder_heap",
                Long,
            ),
            (
                "sluice.search.builders.per.shard",
                Some(self.search_builders_per_shard.to_string()),
                "search_builders_per_shard",
                Int,
            ),
            (
                "sluice.search.cache.bytes",
                Some(self.search_cache_bytes.to_string()),
                "search_cache",
                Long,
            ),
            (
                "sluice.search.refresh.ms",
                Some(self.search_refresh_ms.to_string()),
                "search_refresh_ms",
                Long,
            ),
            (
                "sluice.shards",
                Some(self.shards.to_string()),
                "shards",
                Int,
            ),
            (
                "sluice.wal.commit.bytes.max",
                Some(self.wal_commit_bytes_max.to_string()),
                "wal_commit_bytes_max",
                Long,
            ),
            (
                "sluice.wal.segment.bytes",
                Some(self.wal_segment_bytes.to_string()),
                "wal_segment_bytes",
                Long,
            ),
            (
                "socket.request.max.bytes",
                Some(self.request_max_bytes.to_string()),
                "request_max_bytes",
                Int,
            ),
            (
                "unclean.leader.election.enable",
                Some("false".to_string()),
                "",
                Boolean,
            ),
        ]
        .into_iter()
        .map(|(name, value, id, kind)| BrokerConfig {
            name,
            value,
            explicit: !id.is_empty() && set(id),
            kind,
            flag: id,
        })
        .collect();
        out.sort_by_key(|c| c.name);
        out
    }

    /// The cluster id in Metadata and DescribeCluster responses: the same
    /// on every node of a cluster, derived from the voters (ids and
    /// addresses, in id order; so every node must spell them alike); a
    /// single node's is derived from its node id.
    pub fn cluster_id(&self) -> String {
        let Some(cluster) = &self.cluster else {
            return format!("sluice-{}", self.node_id);
        };
        let text = cluster
            .voters
            .iter()
            .map(|(id, addr)| format!("{id}@{addr}"))
            .collect::<Vec<_>>()
            .join(",");
        format!("sluice-{:016x}", fnv1a(text.as_bytes()))
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

/// FNV-1a 64: a hash that is the same in every build (the cluster id must
/// not change with the compiler).
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Parses `--cluster-voters`: `ID@HOST:PORT` items, comma-separated.
pub fn parse_voters(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut voters = BTreeMap::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!(
                "'{text}' has an empty item (expected ID@HOST:PORT,...)"
            ));
        }
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| format!("'{item}' is not ID@HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("'{item}': '{id}' is not a node id"))?;
        if id > i32::MAX as u64 {
            return Err(format!("'{item}': node id {id} is above 2147483647"));
        }
        let addr = addr.trim();
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("'{item}' is not ID@HOST:PORT"))?;
        let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.is_empty() || !port_ok || bare.contains(char::is_whitespace) {
            return Err(format!("'{item}': '{addr}' is not HOST:PORT"));
        }
        if voters.insert(id, addr.to_string()).is_some() {
            return Err(format!("node id {id} is listed twice"));
        }
        if voters.len() > VOTERS_MAX {
            return Err(format!("more than {VOTERS_MAX} voters"));
        }
    }
    Ok(voters)
}

fn resolve_cluster(args: &StartArgs) -> anyhow::Result<Option<ClusterSettings>> {
    const VOTERS: &str = "--cluster-voters (SLUICE_CLUSTER_VOTERS, cluster_voters)";
    const LISTEN: &str = "--cluster-listen (SLUICE_CLUSTER_LISTEN, cluster_listen)";
    let Some(text) = args.cluster_voters.as_deref() else {
        if let Some(listen) = args.cluster_listen {
            bail!("{LISTEN}: {listen} given without --cluster-voters");
        }
        return Ok(None);
    };
    let voters = parse_voters(text).map_err(|e| anyhow::anyhow!("{VOTERS}: {e}"))?;
    if !voters.contains_key(&args.node_id) {
        bail!(
            "{VOTERS}: this node (--node-id {}) is not one of the voters {:?}",
            args.node_id,
            voters.keys().collect::<Vec<_>>()
        );
    }
    let Some(listen) = args.cluster_listen else {
        bail!("{LISTEN}: required with --cluster-voters");
    };
    if listen == args.listen || listen == args.admin_listen {
        bail!("{LISTEN}: {listen} is already --listen or --admin-listen");
    }
    Ok(Some(ClusterSettings { listen, voters }))
}

struct Replication {
    default_replication_factor: u16,
    replica_fetch_max_bytes: u32,
}

fn resolve_replication(
    args: &StartArgs,
    cluster: Option<&ClusterSettings>,
) -> anyhow::Result<Replication> {
    let voters = cluster.map_or(1, |c| c.voters.len());
    let voters_u16 = u16::try_from(voters).unwrap_or(u16::MAX);
    let default_replication_factor = match args.default_replication_factor {
        None if cluster.is_some() => DEFAULT_REPLICATION_FACTOR_CLUSTER.min(voters_u16),
        None => 1,
        Some(n) if n >= 1 && n <= voters_u16 => n,
        Some(n) => bail!(
            "--default-replication-factor (SLUICE_DEFAULT_REPLICATION_FACTOR, default_replication_factor): {n} is not in 1..={voters} (the voters)"
        ),
    };
    if args.min_insync_replicas == 0 || args.min_insync_replicas > i16::MAX as u32 {
        bail!(
            "--min-insync-replicas (SLUICE_MIN_INSYNC_REPLICAS, min_insync_replicas): {} is not in 1..=32767",
            args.min_insync_replicas
        );
    }
    if !(BROKER_HEARTBEAT_MS_MIN..=BROKER_HEARTBEAT_MS_MAX).contains(&args.broker_heartbeat_ms) {
        bail!(
            "--broker-heartbeat-ms (SLUICE_BROKER_HEARTBEAT_MS, broker_heartbeat_ms): {} is not in {BROKER_HEARTBEAT_MS_MIN}..={BROKER_HEARTBEAT_MS_MAX}",
            args.broker_heartbeat_ms
        );
    }
    if args.broker_lease_ms < 2 * args.broker_heartbeat_ms || args.broker_lease_ms > 3_600_000 {
        bail!(
            "--broker-lease-ms (SLUICE_BROKER_LEASE_MS, broker_lease_ms): {} is not in 2 x --broker-heartbeat-ms ({})..=3600000",
            args.broker_lease_ms,
            2 * args.broker_heartbeat_ms
        );
    }
    if !(1..=REPLICA_FETCH_WAIT_MS_MAX).contains(&args.replica_fetch_wait_max_ms) {
        bail!(
            "--replica-fetch-wait-max-ms (SLUICE_REPLICA_FETCH_WAIT_MAX_MS, replica_fetch_wait_max_ms): {} is not in 1..={REPLICA_FETCH_WAIT_MS_MAX}",
            args.replica_fetch_wait_max_ms
        );
    }
    check_search(args)?;
    if args.replica_lag_time_max_ms <= args.replica_fetch_wait_max_ms
        || args.replica_lag_time_max_ms > 3_600_000
    {
        bail!(
            "--replica-lag-time-max-ms (SLUICE_REPLICA_LAG_TIME_MAX_MS, replica_lag_time_max_ms): {} is not above --replica-fetch-wait-max-ms ({}) and at most 3600000",
            args.replica_lag_time_max_ms,
            args.replica_fetch_wait_max_ms
        );
    }
    let bytes = args.replica_fetch_max_bytes.0;
    if !(REPLICA_FETCH_BYTES_MIN..=REPLICA_FETCH_BYTES_MAX).contains(&bytes) {
        bail!(
            "--replica-fetch-max-bytes (SLUICE_REPLICA_FETCH_MAX_BYTES, replica_fetch_max_bytes): {bytes} is not in 64KiB..=1GiB"
        );
    }
    Ok(Replication {
        default_replication_factor,
        replica_fetch_max_bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
    })
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

/// `--listeners`, or the one plaintext listener of `--listen` and
/// `--advertised-listener`.
fn resolve_listeners(args: &StartArgs) -> anyhow::Result<Vec<Listener>> {
    let map = listeners::parse_protocol_map(args.listener_security_protocol_map.as_deref())?;
    let Some(text) = args.listeners.as_deref() else {
        if args.advertised_listeners.is_some() {
            bail!("--advertised-listeners (SLUICE_ADVERTISED_LISTENERS, advertised_listeners): given without --listeners (use --advertised-listener with --listen)");
        }
        let (host, port) = resolve_advertised(args.advertised_listener.as_deref(), args.listen)?;
        return Ok(vec![Listener {
            name: "PLAINTEXT".into(),
            protocol: SecurityProtocol::Plaintext,
            addr: args.listen,
            advertised_host: host,
            advertised_port: port,
        }]);
    };
    if args.explicit.contains("listen") || args.advertised_listener.is_some() {
        bail!("--listeners (SLUICE_LISTENERS, listeners): given with --listen or --advertised-listener; use one form");
    }
    listeners::resolve(text, args.advertised_listeners.as_deref(), &map)
}

fn inter_broker_listener<'l>(
    args: &StartArgs,
    listeners: &'l [Listener],
) -> anyhow::Result<&'l Listener> {
    let Some(name) = &args.inter_broker_listener_name else {
        return Ok(&listeners[0]);
    };
    listeners
        .iter()
        .find(|l| l.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| anyhow::anyhow!("--inter-broker-listener-name (SLUICE_INTER_BROKER_LISTENER_NAME, inter_broker_listener_name): '{name}' is not one of the listeners"))
}

/// The credentials this node authenticates with on the other nodes'
/// `SASL_*` inter-broker listener.
fn resolve_inter_broker_sasl(
    args: &StartArgs,
    inter_broker: &Listener,
    enabled: &[&'static str],
) -> anyhow::Result<crate::sasl::client::ClientCredentials> {
    let name = &args.inter_broker_sasl_mechanism;
    let mechanism = crate::sasl::Mechanism::from_name(name)
        .filter(|m| enabled.contains(&m.name()))
        .ok_or_else(|| anyhow::anyhow!(
            "--inter-broker-sasl-mechanism (SLUICE_INTER_BROKER_SASL_MECHANISM, inter_broker_sasl_mechanism): '{name}' is not one of --sasl-enabled-mechanisms ({})",
            enabled.join(",")
        ))?;
    let (Some(username), Some(file)) = (
        &args.inter_broker_sasl_username,
        &args.inter_broker_sasl_password_file,
    ) else {
        bail!(
            "--inter-broker-sasl-username and --inter-broker-sasl-password-file (SLUICE_INTER_BROKER_SASL_USERNAME, SLUICE_INTER_BROKER_SASL_PASSWORD_FILE): required by the {} inter-broker listener {}",
            inter_broker.protocol,
            inter_broker.name
        );
    };
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "--inter-broker-sasl-password-file (SLUICE_INTER_BROKER_SASL_PASSWORD_FILE, inter_broker_sasl_password_file): cannot read {}",
            file.display()
        )
    })?;
    let password = text.lines().next().unwrap_or("");
    if username.is_empty() || password.is_empty() {
        bail!(
            "--inter-broker-sasl-username / --inter-broker-sasl-password-file (SLUICE_INTER_BROKER_SASL_USERNAME, SLUICE_INTER_BROKER_SASL_PASSWORD_FILE): the user name and the password may not be empty ({})",
            file.display()
        );
    }
    Ok(crate::sasl::client::ClientCredentials::new(
        mechanism,
        username.clone(),
        password.to_string(),
    ))
}

fn resolve_tls(args: &StartArgs, listeners: &[Listener]) -> anyhow::Result<Option<TlsFiles>> {
    let tls_listener = listeners.iter().find(|l| l.protocol.tls());
    let auth = match args.tls_client_auth.as_deref() {
        None if args.tls_client_ca_file.is_some() => ClientAuth::Required,
        None => ClientAuth::None,
        Some(name) => ClientAuth::from_name(name).ok_or_else(|| {
            anyhow::anyhow!("--tls-client-auth (SLUICE_TLS_CLIENT_AUTH, tls_client_auth): '{name}' is not none, requested or required")
        })?,
    };
    if auth != ClientAuth::None && args.tls_client_ca_file.is_none() {
        bail!("--tls-client-auth (SLUICE_TLS_CLIENT_AUTH, tls_client_auth): {} needs --tls-client-ca-file", auth.name());
    }
    let needed_by = match tls_listener {
        Some(l) => Some(format!("listener {}", l.name)),
        None => (args.admin_tls.then(|| "--admin-tls".to_string()))
            .or_else(|| args.cluster_tls.then(|| "--cluster-tls".to_string())),
    };
    match (needed_by, &args.tls_cert_file, &args.tls_key_file) {
        (None, None, None) if args.tls_client_ca_file.is_none() => Ok(None),
        (None, ..) => bail!("--tls-cert-file (SLUICE_TLS_CERT_FILE, tls_cert_file): TLS settings given but no SSL or SASL_SSL listener, no --admin-tls and no --cluster-tls"),
        (Some(by), None, _) | (Some(by), _, None) => bail!(
            "--tls-cert-file and --tls-key-file (SLUICE_TLS_CERT_FILE, SLUICE_TLS_KEY_FILE): required by {by}"
        ),
        (Some(_), Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca_file.clone(),
            client_auth: auth,
        })),
    }
}

fn resolve_mechanisms(text: &str) -> anyhow::Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(m) = crate::security::SASL_MECHANISMS
            .iter()
            .find(|m| **m == name)
        else {
            bail!("--sasl-enabled-mechanisms (SLUICE_SASL_ENABLED_MECHANISMS, sasl_enabled_mechanisms): '{name}' is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512");
        };
        if !out.contains(m) {
            out.push(*m);
        }
    }
    if out.is_empty() {
        bail!("--sasl-enabled-mechanisms (SLUICE_SASL_ENABLED_MECHANISMS, sasl_enabled_mechanisms): no mechanism given");
    }
    Ok(out)
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

    const VOTERS: &str = "1@10.0.0.1:9093,2@10.0.0.2:9093,3@10.0.0.3:9093";

    fn cluster(node: &str, extra: &[&str]) -> anyhow::Result<Settings> {
        let mut argv = vec![
            "sluice",
            "start",
            "--node-id",
            node,
            "--cluster-voters",
            VOTERS,
            "--cluster-listen",
            "127.0.0.1:9093",
        ];
        argv.extend_from_slice(extra);
        parse(&argv)
    }

    #[test]
    fn single_node_has_no_cluster_and_replication_factor_one() {
        let s = parse(&["sluice", "start"]).unwrap();
        assert_eq!(s.cluster, None);
        assert_eq!(s.default_replication_factor, 1);
        assert_eq!(s.min_insync_replicas, 1);
        assert_eq!(s.replica_lag_time_max_ms, 30_000);
        assert_eq!((s.broker_heartbeat_ms, s.broker_lease_ms), (250, 1500));
        assert_eq!(s.replica_fetch_wait_max_ms, 2000);
        assert_eq!(s.replica_fetch_max_bytes, 10 << 20);
        assert_eq!(s.cluster_id(), "sluice-1");
        let e = parse(&["sluice", "start", "--default-replication-factor", "2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--default-replication-factor"), "{e}");
    }

    #[test]
    fn cluster_settings_parse() {
        let s = cluster("2", &[]).unwrap();
        let c = s.cluster.clone().expect("cluster");
        assert_eq!(c.listen.to_string(), "127.0.0.1:9093");
        assert_eq!(c.voters.len(), 3);
        assert_eq!(c.voters[&3], "10.0.0.3:9093");
        assert_eq!(s.default_replication_factor, 3, "min(3, voters)");
        let s = cluster("1", &["--default-replication-factor", "2"]).unwrap();
        assert_eq!(s.default_replication_factor, 2);
        let two = parse(&[
            "sluice",
            "start",
            "--cluster-voters",
            "1@a:1,2@b:2",
            "--cluster-listen",
            "127.0.0.1:9093",
        ])
        .unwrap();
        assert_eq!(two.default_replication_factor, 2, "min(3, 2 voters)");
    }

    #[test]
    fn a_sasl_inter_broker_listener_needs_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("password");
        std::fs::write(&file, "secret\nignored\n").expect("password file");
        let file = file.to_str().expect("utf-8 path");
        let listeners = [
            "--listeners",
            "PLAINTEXT://127.0.0.1:9092,INTERNAL://127.0.0.1:9094",
            "--listener-security-protocol-map",
            "PLAINTEXT:PLAINTEXT,INTERNAL:SASL_PLAINTEXT",
            "--inter-broker-listener-name",
            "INTERNAL",
        ];
        let with = |extra: &[&str]| {
            let mut argv = listeners.to_vec();
            argv.extend_from_slice(extra);
            cluster("1", &argv)
        };
        let e = with(&[]).unwrap_err().to_string();
        assert!(e.contains("--inter-broker-sasl-username"), "{e}");
        let creds = [
            "--inter-broker-sasl-username",
            "node",
            "--inter-broker-sasl-password-file",
            file,
        ];
        let s = with(&creds).expect("settings");
        let sasl = s.inter_broker_sasl.expect("credentials");
        assert_eq!(sasl.mechanism.name(), "SCRAM-SHA-512");
        assert_eq!(sasl.username, "node");
        assert_eq!(
            sasl,
            crate::sasl::client::ClientCredentials::new(
                crate::sasl::Mechanism::ScramSha512,
                "node".into(),
                "secret".into()
            ),
            "the password is the file's first line"
        );
        assert!(!format!("{sasl:?}").contains("secret"), "never printed");
        assert!(!s.inter_broker_tls);
        // A mechanism the listeners do not offer is refused.
        let mut plain_only = creds.to_vec();
        plain_only.extend(["--sasl-enabled-mechanisms", "PLAIN"]);
        let e = with(&plain_only).unwrap_err().to_string();
        assert!(e.contains("--inter-broker-sasl-mechanism"), "{e}");
        plain_only.extend(["--inter-broker-sasl-mechanism", "PLAIN"]);
        assert!(with(&plain_only).is_ok());
        // Mutual TLS of the metadata links needs the certificate files and
        // the CA, and a cluster.
        let e = with(&[&creds[..], &["--cluster-tls", "true"]].concat())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cluster-tls"), "{e}");
        let e = parse(&["sluice", "start", "--cluster-tls", "true"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("only in a cluster"), "{e}");
        // A single node connects to no other: nothing is needed.
        let mut single = vec!["sluice", "start"];
        single.extend_from_slice(&listeners);
        assert!(parse(&single)
            .expect("single node")
            .inter_broker_sasl
            .is_none());
    }

    #[test]
    fn cluster_id_is_the_same_on_every_node() {
        let ids: Vec<String> = ["1", "2", "3"]
            .iter()
            .map(|n| cluster(n, &[]).unwrap().cluster_id())
            .collect();
        assert_eq!(ids[0], ids[1]);
        assert_eq!(ids[1], ids[2]);
        assert_ne!(ids[0], "sluice-1");
        // The order voters are written in does not matter.
        let reordered = parse(&[
            "sluice",
            "start",
            "--cluster-voters",
            "3@10.0.0.3:9093, 1@10.0.0.1:9093,2@10.0.0.2:9093",
            "--cluster-listen",
            "127.0.0.1:9093",
        ])
        .unwrap();
        assert_eq!(reordered.cluster_id(), ids[0]);
        let other = parse(&[
            "sluice",
            "start",
            "--cluster-voters",
            "1@10.0.0.1:9093,2@10.0.0.2:9093",
            "--cluster-listen",
            "127.0.0.1:9093",
        ])
        .unwrap();
        assert_ne!(other.cluster_id(), ids[0], "another cluster");
    }

    #[test]
    fn bad_cluster_settings_name_the_setting() {
        for bad in [
            "1@a:1,,2@b:2",
            "1a:1",
            "x@a:1",
            "1@a",
            "1@a:0",
            "1@:9",
            "1@a:99999",
            "3000000000@a:1",
        ] {
            let e = parse(&[
                "sluice",
                "start",
                "--cluster-voters",
                bad,
                "--cluster-listen",
                "127.0.0.1:9093",
            ])
            .unwrap_err()
            .to_string();
            assert!(e.contains("--cluster-voters"), "{bad}: {e}");
        }
        let e = parse(&[
            "sluice",
            "start",
            "--cluster-voters",
            "1@a:1,1@b:2",
            "--cluster-listen",
            "127.0.0.1:9093",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("twice"), "{e}");
        let e = cluster("4", &[]).unwrap_err().to_string();
        assert!(e.contains("not one of the voters"), "{e}");
        let e = parse(&["sluice", "start", "--cluster-voters", VOTERS])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cluster-listen"), "{e}");
        let e = parse(&["sluice", "start", "--cluster-listen", "127.0.0.1:9093"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cluster-listen"), "{e}");
        let e = cluster("1", &["--default-replication-factor", "4"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--default-replication-factor"), "{e}");
        let e = cluster("1", &["--default-replication-factor", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--default-replication-factor"), "{e}");
        let e = cluster("1", &["--min-insync-replicas", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--min-insync-replicas"), "{e}");
        let e = cluster("1", &["--broker-lease-ms", "400"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--broker-lease-ms"), "{e}");
        let e = cluster("1", &["--replica-lag-time-max-ms", "500"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--replica-lag-time-max-ms"), "{e}");
        let e = cluster("1", &["--replica-fetch-max-bytes", "1KiB"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--replica-fetch-max-bytes"), "{e}");
    }

    #[test]
    fn cluster_settings_from_file_env_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            format!(
                "node_id = 3\ncluster_voters = \"{VOTERS}\"\ncluster_listen = \"127.0.0.1:9093\"\nmin_insync_replicas = 2\nreplica_fetch_max_bytes = \"1MiB\"\nbroker_heartbeat_ms = 100\nbroker_lease_ms = 1000\nreplica_fetch_wait_max_ms = 200\nreplica_lag_time_max_ms = 5000\ndefault_replication_factor = 2\nadvertised_listener = \"kafka-3:9092\"\n"
            ),
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = parse(&["sluice", "start", "--config", p]).unwrap();
        assert_eq!(s.node_id, 3);
        assert_eq!(s.cluster.as_ref().map(|c| c.voters.len()), Some(3));
        assert_eq!(s.min_insync_replicas, 2);
        assert_eq!(s.replica_fetch_max_bytes, 1 << 20);
        assert_eq!((s.broker_heartbeat_ms, s.broker_lease_ms), (100, 1000));
        assert_eq!(s.replica_fetch_wait_max_ms, 200);
        assert_eq!(s.replica_lag_time_max_ms, 5000);
        assert_eq!(s.default_replication_factor, 2);
        assert_eq!(
            (s.advertised_host.as_str(), s.advertised_port),
            ("kafka-3", 9092)
        );
        let s = parse(&[
            "sluice",
            "start",
            "--config",
            p,
            "--min-insync-replicas",
            "3",
        ])
        .unwrap();
        assert_eq!(s.min_insync_replicas, 3, "a flag beats the file");
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

/// Search settings: a refresh of 1 ms to 1 h, 1 to 16 builders of at
/// least the search library's 15 MB heap each.
fn check_search(args: &StartArgs) -> anyhow::Result<()> {
    if !(1..=3_600_000).contains(&args.search_refresh_ms) {
        bail!(
            "--search-refresh-ms (SLUICE_SEARCH_REFRESH_MS, search_refresh_ms): {} is not in 1..=3600000",
            args.search_refresh_ms
        );
    }
    if !(1..=16).contains(&args.search_builders_per_shard) {
        bail!(
            "--search-builders-per-shard (SLUICE_SEARCH_BUILDERS_PER_SHARD, search_builders_per_shard): {} is not in 1..=16",
            args.search_builders_per_shard
        );
    }
    let heap_min = sluice_shard::SEARCH_BUILDER_HEAP_BYTES_MIN as u64;
    // Tantivy refuses a builder heap of 4 GB less 1 MB or more.
    let heap_max = 4_000_000_000u64;
    if args.search_builder_heap.0 < heap_min || args.search_builder_heap.0 > heap_max {
        bail!(
            "--search-builder-heap (SLUICE_SEARCH_BUILDER_HEAP, search_builder_heap): {} bytes is not in {heap_min}..={heap_max}",
            args.search_builder_heap.0
        );
    }
    Ok(())
}
