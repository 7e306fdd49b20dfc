//! `sluice-shard`: the per-core data plane of a Sluice node.
//!
//! # Role
//!
//! One `Shard` per glommio executor (one per data core; shards may be
//! over-committed, unpinned, on fewer cores). A shard owns its WAL at
//! `data_dir/shard-{id}/wal` and the partitions the metadata places on it
//! (`PartitionMeta::shard == id`) that this node replicates (it is in
//! `PartitionMeta::replicas`); a partition this node stops replicating is
//! dropped like a deleted one. "The WAL is the log": record batches of
//! all the shard's partitions are WAL entries (format in `entry`), each
//! partition keeps a sparse in-memory index of its entries (`partition`),
//! recent batches are served from a tail cache (`tail`), older ones are read
//! back from the WAL.
//!
//! Each partition also keeps its idempotent producers' sequence windows
//! (`producer_state`) and, once it sees a transaction, its transaction
//! state (`txn_index`: open transactions, the last stable offset, the
//! aborted index that read_committed fetches answer with); markers are
//! written by `Shard::write_txn_marker`. DeleteRecords moves its log start
//! (`delete_records`).
//!
//! Replication (`replica`, Kafka's ISR model): a partition's role comes
//! from the applied view: leader when `PartitionMeta::leader` is this node,
//! follower otherwise. Only the leader serves produce and fetch; it stamps
//! its leader epoch into every batch it appends. A partition with more than
//! one replica keeps a boxed replication state (durable log end, epoch
//! cache, ISR, followers' progress); a single-replica partition keeps none
//! and behaves as before. Followers fetch from the leader node's Kafka
//! listener (the broker's replica fetcher, one per shard) with replica
//! fetches (`FetchRequest::replica_id`), write what they get with
//! `append_replica`, truncate by leader epoch with `truncate_replica`
//! (`end_offset_for_epoch` on the leader), and learn what to follow from
//! `followed` / `followed_changed`. The leader grows the ISR when a
//! follower catches up and shrinks it when one lags
//! (`replica_lag_time_max_ms`), through `Metadata::alter_isr`.
//!
//! Consumer groups (`group`): a group's coordinator is the node leading
//! its `__consumer_offsets` partition, on the shard owning that partition.
//! Group records (offset commits and deletions, group deletions) are
//! record batches in that partition, written through the produce path with
//! acks=-1 and replicated like any partition. A shard loads the groups of
//! an offsets partition from its log whenever it becomes its leader (one
//! loading task per shard; meanwhile those groups answer
//! `CoordinatorLoadInProgress`) and drops them from memory when it stops
//! leading it (`NotCoordinator`). Retention carries a partition's group
//! state forward and moves its log start when its old records alone keep
//! WAL segments; followers follow the leader's log start through
//! `advance_replica_log_start`.
//!
//! The broker front end calls `produce`, `fetch` and `list_offsets` on the
//! shard that owns the connection; work for a partition of another shard is
//! sent to it over the shard mesh (`mesh`: glommio's bounded SPSC channels,
//! batches travel as `Bytes`, answers come back on oneshot channels).
//!
//! # Tasks per shard (none per partition)
//!
//! One inbox task per peer shard, one metadata watcher, one deadline task
//! with one timer (`waiters`), one admission task (produces waiting for
//! memory), the group-deadline task, the group-loading task (parked while
//! no offsets partition waits to be loaded), the retention task, the ISR-shrink task (asleep, with no
//! timer, while the shard leads no partition with followers), the WAL's
//! batcher, one short-lived task per in-flight produce (it waits for
//! durability, and for acks=-1 on a replicated partition for the high
//! watermark, even if the requester went away), and one short-lived task
//! per ISR change in flight (at most one per partition).
//!
//! # Invariants
//!
//! - Offsets are assigned and `Wal::append` is called in the same
//!   synchronous section: WAL order == offset order within a partition.
//! - `log_start_offset <= high_watermark <= durable end <= next_offset`,
//!   and `log_start_offset <= last stable offset <= high_watermark`
//!   (read_committed consumers read below the last stable offset).
//!   The high watermark covers durable entries only: with one replica it is
//!   the durable end; on a leader with followers, the smallest log end of
//!   the ISR (never moving back); on a follower, min(leader's HW, durable
//!   end). Consumers read below it; replica fetches below the durable end.
//! - acks=1 is answered after local durability; acks=-1 after the high
//!   watermark passed the entry, refused before writing when the ISR is
//!   smaller than `min.insync.replicas` (`NotEnoughReplicas`), failed when
//!   it falls below while waiting (`NotEnoughReplicasAfterAppend`) or this
//!   node stops leading (`NotLeader`).
//! - A follower's log only changes by `append_replica` (leader batches,
//!   unchanged), truncations and log start moves
//!   (`advance_replica_log_start`), which are WAL entries replayed in WAL
//!   order: a truncated tail never comes back after a restart.
//! - A group is served only by the shard whose node leads its offsets
//!   partition, once that partition's log is loaded; its records are
//!   applied in the partition's offset order (at load, and when queued).
//! - Every byte that grows with load is reserved in the shard's `Budget`
//!   first (in-flight produce, tail cache, fetch responses); work that does
//!   not fit waits for memory in arrival order, at most `MEMORY_WAIT`, and
//!   only a wait that runs out answers `ShardError::Busy` (or an empty,
//!   throttled fetch). Queues are bounded (`SHARD_INBOX_MESSAGES_MAX`,
//!   `fetch_waiters_max`, `version_waiters_max`, `ADMISSIONS_MAX`,
//!   `POOL_WAITERS_MAX`).
//! - Shard state is `Rc`/`RefCell`/`Cell`, never borrowed across an await;
//!   no lock exists. Hot paths log at `trace!`.

mod batch;
mod budget;
mod cleaner;
pub mod compact;
mod delete_records;
mod engine;
mod entry;
mod fetch;
pub mod group;
mod mesh;
mod partition;
mod produce;
mod producer_state;
pub mod records;
mod replica;
mod retention;
mod search;
mod stats;
mod tail;
pub mod txn;
mod txn_index;
mod view;
mod waiters;
mod warn;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use sluice_raft::{Metadata, MetadataView, TopicMeta};

pub use crate::batch::{ATTRIBUTE_LOG_APPEND_TIME, BATCH_HEADER_BYTES, MAX_MESSAGE_BYTES_DEFAULT};
pub use crate::budget::{PoolStats, MEMORY_WAIT, POOL_WAITERS_MAX};
pub use crate::entry::{ENTRY_HEADER_BYTES, KIND_BATCHES};
pub use crate::mesh::{new_mesh, ShardMesh, ShardMsg, SHARD_INBOX_MESSAGES_MAX};
pub use crate::produce::ProduceTicket;
pub use crate::produce::ADMISSIONS_MAX;
pub use crate::replica::{KIND_REPLICA_BATCHES, KIND_TRUNCATE};
pub use crate::search::{search_enabled, SearchHandles, SearchTuning, SEARCH_ENABLE};
pub use crate::stats::{PartitionDisk, ShardStats};
pub use crate::waiters::WaitersStats;
pub use crate::warn::WarnLimiter;
pub use sluice_index::writer::BUILDER_HEAP_BYTES_MIN as SEARCH_BUILDER_HEAP_BYTES_MIN;
pub use sluice_wal::SyncMode;

/// Tuning of the shard's WAL (its directory is chosen by the shard).
#[derive(Clone, Debug)]
pub struct WalTuning {
    pub segment_bytes: u64,
    pub queue_bytes_max: u64,
    pub commit_bytes_max: u64,
    pub entry_bytes_max: u32,
    pub sync_mode: SyncMode,
}

impl Default for WalTuning {
    fn default() -> WalTuning {
        use sluice_wal::WalConfig as W;
        WalTuning {
            segment_bytes: W::SEGMENT_BYTES_DEFAULT,
            queue_bytes_max: W::QUEUE_BYTES_MAX_DEFAULT,
            commit_bytes_max: W::COMMIT_BYTES_MAX_DEFAULT,
            entry_bytes_max: W::ENTRY_BYTES_MAX_DEFAULT,
            sync_mode: SyncMode::Fdatasync,
        }
    }
}

/// Settings of one shard.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub shard_id: u32,
    pub shards: u32,
    /// The node's data directory; the shard uses `data_dir/shard-{id}/`.
    pub data_dir: PathBuf,
    /// Upper bound of the tail cache (also at most half of the memory).
    pub tail_cache_bytes_max: u64,
    /// The shard's memory budget, split into pools (see `budget`).
    pub memory_bytes_max: u64,
    /// The executor's glommio `io_memory` arena (WAL commit buffers come
    /// from it); charged to the budget whole (`io_memory` pool).
    pub io_memory_bytes: u64,
    pub wal: WalTuning,
    /// Long-poll fetches and deadlines waiting at once; more are answered
    /// at once (without waiting).
    pub fetch_waiters_max: usize,
    /// `await_topic_ready` requests parked on this shard at once.
    pub version_waiters_max: usize,
    /// Kafka's `group.initial.rebalance.delay.ms`: how long a new group
    /// waits for more members before its first generation.
    pub group_initial_rebalance_delay_ms: u64,
    /// How long `await_topic_ready` waits for the owning shards.
    pub topic_ready_timeout_ms: u64,
    /// Extra time an answer from another shard may take beyond the
    /// request's own wait (`max_wait_ms` for fetches).
    pub remote_reply_timeout_ms: u64,
    /// Idle time after which an idempotent producer's state is forgotten
    /// (Kafka's `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: i64,
    /// The longest transaction timeout a producer may ask for (Kafka's
    /// `transaction.max.timeout.ms`).
    pub transaction_max_timeout_ms: i64,
    /// Idle time after which a transactional id is forgotten (Kafka's
    /// `transactional.id.expiration.ms`).
    pub transactional_id_expiration_ms: i64,
    /// In-sync replicas an acks=-1 produce needs (Kafka's
    /// `min.insync.replicas`); the topic config of that name overrides it.
    pub min_insync_replicas: u32,
    /// A follower in the ISR that has not been caught up with the leader's
    /// log end for this long is removed from the ISR (Kafka's
    /// `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// The search index of topics that set `sluice.search.enable`.
    pub search: SearchTuning,
    /// Where the shard publishes its open search index for searches.
    pub search_handles: Option<std::sync::Arc<SearchHandles>>,
    /// Where the shard reports how far its WAL replay at start has come.
    pub recovery_progress: Option<Arc<RecoveryProgress>>,
}

/// How far a shard's replay of its WAL at start has come, in bytes of the
/// WAL: written by the shard as it replays, read by the node's start-up
/// status on another thread (relaxed atomics: a progress report, nothing
/// is ordered by it).
#[derive(Debug, Default)]
pub struct RecoveryProgress {
    replayed: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
}

impl RecoveryProgress {
    /// (replayed, total) bytes; the total is known once the WAL is open.
    pub fn bytes(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let total = self.total.load(Relaxed);
        (self.replayed.load(Relaxed).min(total), total)
    }

    pub(crate) fn begin(&self, total: u64) {
        self.total
            .store(total, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn replayed(&self, bytes: u64) {
        self.replayed
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ShardConfig {
    pub const TAIL_CACHE_BYTES_MAX_DEFAULT: u64 = 64 << 20;
    pub const MEMORY_BYTES_MAX_DEFAULT: u64 = 512 << 20;
    pub const FETCH_WAITERS_MAX_DEFAULT: usize = 10_000;
    pub const VERSION_WAITERS_MAX_DEFAULT: usize = 1024;
    pub const GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT: u64 = 3_000;
    pub const PRODUCER_ID_EXPIRATION_MS_DEFAULT: i64 = 86_400_000;
    pub const TRANSACTION_MAX_TIMEOUT_MS_DEFAULT: i64 = 900_000;
    pub const TRANSACTIONAL_ID_EXPIRATION_MS_DEFAULT: i64 = 604_800_000;
    pub const MIN_INSYNC_REPLICAS_DEFAULT: u32 = 1;
    pub const REPLICA_LAG_TIME_MAX_MS_DEFAULT: u64 = 30_000;

    pub fn new(shard_id: u32, shards: u32, data_dir: impl Into<PathBuf>) -> ShardConfig {
        ShardConfig {
            shard_id,
            shards,
            data_dir: data_dir.into(),
            tail_cache_bytes_max: Self::TAIL_CACHE_BYTES_MAX_DEFAULT,
            memory_bytes_max: Self::MEMORY_BYTES_MAX_DEFAULT,
            io_memory_bytes: 0,
            wal: WalTuning::default(),
            fetch_waiters_max: Self::FETCH_WAITERS_MAX_DEFAULT,
            version_waiters_max: Self::VERSION_WAITERS_MAX_DEFAULT,
            group_initial_rebalance_delay_ms: Self::GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT,
            topic_ready_timeout_ms: 10_000,
            remote_reply_timeout_ms: 30_000,
            producer_id_expiration_ms: Self::PRODUCER_ID_EXPIRATION_MS_DEFAULT,
            transaction_max_timeout_ms: Self::TRANSACTION_MAX_TIMEOUT_MS_DEFAULT,
            transactional_id_expiration_ms: Self::TRANSACTIONAL_ID_EXPIRATION_MS_DEFAULT,
            min_insync_replicas: Self::MIN_INSYNC_REPLICAS_DEFAULT,
            replica_lag_time_max_ms: Self::REPLICA_LAG_TIME_MAX_MS_DEFAULT,
            search: SearchTuning::default(),
            search_handles: None,
            recovery_progress: None,
        }
    }
}

/// Errors of the data plane. The broker maps them to Kafka error codes in
/// one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("corrupt record batch: {0}")]
    CorruptMessage(String),
    #[error("record batch of {bytes} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { bytes: u64, max: u64 },
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),
    /// A record without a key for a compacted topic (Kafka INVALID_RECORD,
    /// with the record's index in its batch as the record error).
    #[error(
        "Compacted topic cannot accept message without key (record {batch_index} of its batch)"
    )]
    KeylessRecord { batch_index: i32 },
    #[error("fetch offset out of range")]
    OffsetOutOfRange,
    #[error("this node does not lead the partition")]
    NotLeader,
    #[error("timed out")]
    Timeout,
    #[error("storage error: {0}")]
    Storage(String),
    /// A memory pool stayed full for the whole wait, or a bounded queue is
    /// full; retriable.
    #[error("shard is busy (memory budget or queue full), retry later")]
    Busy,
    #[error("shard is shutting down")]
    ShuttingDown,
    #[error("invalid shard configuration: {0}")]
    Config(String),
    #[error("out of order sequence number: expected {expected}, got {got}")]
    OutOfOrderSequence { expected: i32, got: i32 },
    #[error("producer epoch {got} is older than the current epoch {current}")]
    InvalidProducerEpoch { current: i16, got: i16 },
    /// acks=-1 and the ISR is smaller than `min.insync.replicas`: nothing
    /// was written (Kafka NOT_ENOUGH_REPLICAS, 19).
    #[error("the in-sync replicas are fewer than min.insync.replicas")]
    NotEnoughReplicas,
    /// acks=-1: written, but the ISR fell below `min.insync.replicas`
    /// before the high watermark passed it (Kafka
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND, 20).
    #[error("written, but the in-sync replicas fell below min.insync.replicas")]
    NotEnoughReplicasAfterAppend,
    /// The requester's leader epoch is older than this replica's (Kafka
    /// FENCED_LEADER_EPOCH, 74).
    #[error("leader epoch {got} is older than the current epoch {current}")]
    FencedLeaderEpoch { current: i32, got: i32 },
    /// The requester's leader epoch is newer than this replica's: its
    /// metadata is ahead (Kafka UNKNOWN_LEADER_EPOCH, 76).
    #[error("leader epoch {got} is newer than the current epoch {current}")]
    UnknownLeaderEpoch { current: i32, got: i32 },
    /// A non-transactional batch of a producer whose transaction is open
    /// in the partition (Kafka INVALID_TXN_STATE, 48).
    #[error("invalid transaction state: {0}")]
    InvalidTxnState(String),
    /// Transactional batches in a Produce request without a transactional
    /// id (Kafka TRANSACTIONAL_ID_AUTHORIZATION_FAILED, 53).
    #[error("transactional records without a transactional id")]
    TransactionalIdAuthorizationFailed,
}

/// One transaction marker for one partition: the control batch that ends
/// producer `producer_id`'s transaction there (`Engine::write_txn_marker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    /// The leader epoch of the coordinator's `__transaction_state`
    /// partition.
    pub coordinator_epoch: i32,
}

/// Who writes a produce's batches: what they may hold and which checks
/// they pass (Kafka's `AppendOrigin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A Kafka client's Produce request: never a control batch (those are
    /// INVALID_RECORD, as in Kafka); an idempotent producer's sequences
    /// are checked.
    Client,
    /// The broker's own writes: group records, transaction state records
    /// and transaction markers. May be control batches; take no part in
    /// sequence checks (their epoch is still checked).
    Coordinator,
}

/// Produce to one partition.
#[derive(Clone, Debug)]
pub struct ProducePartition {
    pub topic: Arc<TopicMeta>,
    pub partition: i32,
    pub records: bytes::Bytes,
    pub acks: i16,
    /// The request's `timeout_ms`: how long an acks=-1 produce waits for
    /// the in-sync replicas once durable here (then `ShardError::Timeout`).
    pub timeout_ms: u32,
    /// Who writes the batches.
    pub origin: Origin,
    /// The Produce request's transactional id, if any. Not checked yet: it
    /// is kept for a server-side check that the partition was added to the
    /// producer's transaction (KIP-890).
    pub transactional_id: Option<Arc<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducePartitionResult {
    pub error: Option<ShardError>,
    pub base_offset: i64,
    /// The time stamped on the batches for LogAppendTime topics, else -1.
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

impl ProducePartitionResult {
    pub fn failed(error: ShardError) -> ProducePartitionResult {
        ProducePartitionResult {
            error: Some(error),
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FetchRequest {
    pub partitions: Vec<FetchPartition>,
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    pub max_bytes: u32,
    /// 0 read_uncommitted, 1 read_committed: only entries below the last
    /// stable offset, with the aborted transactions among them
    /// (`FetchPartitionResult::aborted`). Replica fetches ignore it.
    pub isolation_level: i8,
    /// The follower node id of a replica fetch (Kafka's `replica_id`), `None`
    /// for a consumer. A replica fetch reads up to the leader's durable log
    /// end (not the high watermark), records the follower's progress (its
    /// log end is its `fetch_offset`), may add it to the ISR, and its long
    /// poll wakes when the durable log end moves.
    pub replica_id: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct FetchPartition {
    pub topic: Arc<TopicMeta>,
    pub partition: i32,
    pub fetch_offset: i64,
    pub partition_max_bytes: u32,
    /// The requester's idea of the leader epoch, -1 for none. An older
    /// one is `FencedLeaderEpoch`, a newer one `UnknownLeaderEpoch`.
    pub current_leader_epoch: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchPartitionResult {
    pub error: Option<ShardError>,
    pub high_watermark: i64,
    /// The partition's last stable offset (`<= high_watermark`).
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Whole stored batches, to be concatenated by the front end.
    pub records: Vec<bytes::Bytes>,
    /// read_committed: `(producer id, first offset)` of the aborted
    /// transactions the returned records may hold (their marker at or
    /// above the fetch offset, their first offset at or below the last
    /// offset returned), in marker order; empty without records and for
    /// read_uncommitted.
    pub aborted: Vec<(i64, i64)>,
    /// Answered without records because `fetch_response` stayed full for
    /// the whole memory wait: the client should back off
    /// (`throttle_time_ms`).
    pub throttled: bool,
}

impl FetchPartitionResult {
    pub fn failed(error: ShardError) -> FetchPartitionResult {
        FetchPartitionResult {
            error: Some(error),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            records: Vec::new(),
            aborted: Vec::new(),
            throttled: false,
        }
    }

    pub fn records_bytes(&self) -> u64 {
        self.records.iter().map(|b| b.len() as u64).sum()
    }
}

#[derive(Clone, Debug)]
pub struct ListOffsetsPartition {
    pub topic: Arc<TopicMeta>,
    pub partition: i32,
    /// -2 earliest, -1 latest, -3 max timestamp, otherwise a timestamp (ms).
    pub timestamp: i64,
    /// 0 read_uncommitted, 1 read_committed: latest (-1) answers the last
    /// stable offset instead of the high watermark.
    pub isolation_level: i8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListOffsetsResult {
    pub error: Option<ShardError>,
    pub offset: i64,
    pub timestamp: i64,
}

impl ListOffsetsResult {
    pub fn failed(error: ShardError) -> ListOffsetsResult {
        ListOffsetsResult {
            error: Some(error),
            offset: -1,
            timestamp: -1,
        }
    }
}

/// DeleteRecords on one partition: the new log start offset (-1: the high
/// watermark).
#[derive(Clone, Debug)]
pub struct DeleteRecordsPartition {
    pub topic: Arc<TopicMeta>,
    pub partition: i32,
    pub offset: i64,
}

/// The partition's log start offset after the call (its low watermark).
pub type DeleteRecordsResult = Result<i64, ShardError>;
/// A partition of this shard that this node follows (`Shard::followed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Followed {
    pub topic: Arc<TopicMeta>,
    pub partition: i32,
    /// Node id of its leader (never `NO_LEADER`: leaderless partitions are
    /// not listed).
    pub leader: u64,
    pub leader_epoch: i32,
    /// This replica's log end: the next fetch offset.
    pub log_end: i64,
    /// The latest epoch in this replica's epoch cache (-1: none), for
    /// OffsetForLeaderEpoch and the fetch's `last_fetched_epoch`.
    pub last_fetched_epoch: i32,
    /// The log must be truncated by leader epoch (OffsetForLeaderEpoch to
    /// the leader, then `truncate_replica`) before fetching; cleared by
    /// `mark_truncated`.
    pub needs_truncation: bool,
}

/// Request-buffer memory held by one request frame; released on drop.
pub struct RequestBuffer(#[allow(dead_code)] budget::Reservation);

/// `fetch_response` memory held by the batches of one fetch answer; released
/// on drop (once the response is written).
pub struct ResponseMemory(Option<budget::Reservation>);

impl ResponseMemory {
    pub fn bytes(&self) -> u64 {
        self.0.as_ref().map_or(0, budget::Reservation::bytes)
    }
}

/// The shard of one executor. `!Send`: created and used on its executor.
pub struct Shard {
    core: Rc<engine::Engine>,
}

impl Shard {
    /// Joins the mesh, opens the shard's WAL and recovers its partitions from
    /// it, starts the inbox tasks, the deadline task and the metadata watcher.
    pub async fn start(
        cfg: ShardConfig,
        mesh: ShardMesh,
        meta: Metadata,
    ) -> Result<Rc<Shard>, ShardError> {
        let core = engine::Engine::start(cfg, mesh, meta).await?;
        Ok(Rc::new(Shard { core }))
    }

    pub fn id(&self) -> u32 {
        self.core.cfg.shard_id
    }

    pub fn metadata(&self) -> Arc<MetadataView> {
        self.core.meta.view()
    }

    /// Resolves when every shard that owns a partition of the topic has
    /// applied a metadata version that includes it.
    pub async fn await_topic_ready(&self, topic: &Arc<TopicMeta>) -> Result<(), ShardError> {
        self.core.await_topic_ready(topic).await
    }

    /// Routes to the owning shard and resolves with the partition result.
    /// acks=1/-1: after the batches are durable; acks=0: once queued.
    pub async fn produce(&self, req: ProducePartition) -> ProducePartitionResult {
        self.core.produce(req).await
    }

    /// Starts a produce and returns the wait for its answer. When this
    /// resolves, the produce holds its place in the partition's order:
    /// produces started one after another (from one task) are applied to
    /// a partition in that order, whichever shard owns it. It waits only
    /// for room in the owner's inbox (another shard); durability is
    /// awaited by `ProduceTicket::wait`.
    pub async fn produce_start(&self, req: ProducePartition) -> ProduceTicket {
        self.core.produce_start(req).await
    }

    /// Long-poll fetch over any number of partitions on any shards.
    pub async fn fetch(&self, req: FetchRequest) -> Vec<FetchPartitionResult> {
        self.core.fetch(req).await.0
    }

    /// `fetch`, with the `fetch_response` memory charged for the returned
    /// batches: keep it until the response is written, then drop it.
    pub async fn fetch_held(
        &self,
        req: FetchRequest,
    ) -> (Vec<FetchPartitionResult>, ResponseMemory) {
        let (results, held) = self.core.fetch(req).await;
        (results, ResponseMemory(held))
    }

    /// EARLIEST(-2), LATEST(-1), MAX_TIMESTAMP(-3) or by timestamp, at batch
    /// granularity: the base offset and max timestamp of the first stored
    /// entry whose max timestamp is >= the target. read_committed
    /// (`isolation_level` 1): LATEST is the last stable offset, and the
    /// others answer nothing at or above it.
    pub async fn list_offsets(&self, req: ListOffsetsPartition) -> ListOffsetsResult {
        self.core.list_offsets(req).await
    }

    /// Routes a consumer-group request to the shard owning the group's
    /// `__consumer_offsets` partition. Served there only while this node
    /// leads that partition and its groups are loaded; otherwise the
    /// answer carries `GroupError::NotCoordinator` or
    /// `GroupError::CoordinatorLoadInProgress` (see `group`).
    pub async fn group(&self, req: group::GroupRequest) -> group::GroupResponse {
        self.core.group(req).await
    }

    /// A request for the transaction coordinator of its transactional id.
    pub async fn txn(&self, req: txn::TxnRequest) -> txn::TxnResponse {
        self.core.txn(req).await
    }

    /// Installs the writer of markers to partitions other nodes lead.
    pub fn set_remote_markers(&self, remote: Rc<dyn txn::RemoteMarkers>) {
        *self.core.remote_markers.borrow_mut() = Some(remote);
    }

    /// The transactional ids every shard coordinates (ListTransactions).
    pub async fn list_txns(
        &self,
        states: Vec<String>,
        producer_ids: Vec<i64>,
    ) -> Vec<txn::TxnListing> {
        self.core.list_txns(states, producer_ids).await
    }

    /// Writes one transaction marker to a partition this node leads
    /// (WriteTxnMarkers); the marker's offset once the in-sync replicas
    /// have it.
    pub async fn write_txn_marker(
        &self,
        topic: Arc<TopicMeta>,
        partition: i32,
        marker: TxnMarker,
    ) -> Result<i64, ShardError> {
        self.core.write_txn_marker(topic, partition, marker).await
    }

    /// The groups every shard serves (ListGroups).
    pub async fn list_groups(&self) -> Vec<group::GroupListing> {
        self.core.list_groups().await
    }

    /// Advances the partition's log start offset (a WAL entry, answered
    /// when durable); resolves with the new log start.
    pub async fn delete_records(&self, req: DeleteRecordsPartition) -> DeleteRecordsResult {
        self.core.delete_records(req).await
    }

    /// Kafka's OffsetForLeaderEpoch for one partition this node leads,
    /// answered by the shard that owns it (routed like `list_offsets`):
    /// `(largest epoch <= requested_epoch in the leader's epoch cache,
    /// start offset of the next larger epoch)`, or `(requested_epoch, log
    /// end)` when it is the latest epoch; `(-1, -1)` when the epoch is
    /// unknown (-1, or newer than every cached one). An epoch older than
    /// every cached one answers `(requested_epoch, first cached start)`.
    /// A single-replica partition (never truncated) answers its log end for
    /// any epoch up to its current one. Errors: `UnknownTopicOrPartition`,
    /// `NotLeader` (this node does not lead it in the request's or the
    /// shard's view).
    pub async fn end_offset_for_epoch(
        &self,
        topic: &Arc<TopicMeta>,
        partition: i32,
        requested_epoch: i32,
    ) -> Result<(i32, i64), ShardError> {
        self.core
            .end_offset_for_epoch(topic, partition, requested_epoch)
            .await
    }

    /// Follower append, for the replica fetcher. MUST be called on the
    /// shard that owns the partition (`PartitionMeta::shard == self.id()`,
    /// else `NotLeader`); this node must replicate it without leading it
    /// (else `NotLeader`).
    ///
    /// `records` are whole record batches as fetched from the leader
    /// (offsets and leader epochs as the leader stamped them; they are
    /// validated — framing, CRC32C, counts — but never patched). Batches
    /// wholly below this replica's log end are skipped; a batch holding the
    /// log end, or batches out of offset order, are `InvalidRecord`.
    /// Offsets may skip forward (the leader's log has gaps where an append
    /// of its own failed), as Kafka allows. The rest is appended as WAL
    /// entries of kind `KIND_REPLICA_BATCHES` (normally one; split at batch
    /// boundaries when larger than a WAL entry; a single batch larger than
    /// one is `MessageTooLarge`), charged to `produce_inflight` until
    /// durable (waiting at most `MEMORY_WAIT`, then `Busy`) and answered
    /// once durable. The batches' idempotent producer sequences and leader
    /// epochs are recorded (so deduplication and OffsetForLeaderEpoch
    /// survive a failover to this replica). Then HW = min(leader's HW,
    /// durable log end) (never lowered).
    ///
    /// Empty `records` only pass `leader_high_watermark` on. Returns the
    /// log end after the append: the next fetch offset. A failed WAL append
    /// cuts the log back to where the failed entry began (`Storage`).
    ///
    /// Calls for one partition must not overlap each other or
    /// `truncate_replica` (the fetcher handles a partition in one task).
    pub async fn append_replica(
        &self,
        topic: &Arc<TopicMeta>,
        partition: i32,
        records: bytes::Bytes,
        leader_high_watermark: i64,
    ) -> Result<i64, ShardError> {
        self.core
            .append_replica(topic, partition, records, leader_high_watermark)
            .await
    }

    /// Follower truncation (after OffsetForLeaderEpoch), on the owning
    /// shard, for a partition this node replicates without leading it (else
    /// `NotLeader`). Drops the index entries at or above `offset`, entry
    /// granular: an entry holding `offset` is dropped whole, so the log then
    /// ends at its base offset (which is returned). The HW is lowered to it,
    /// producer-state and epoch-cache entries at or above it are forgotten,
    /// and the dropped entries' memory is released. The cut is a durable
    /// WAL entry (`KIND_TRUNCATE`), replayed by recovery in WAL order, so the
    /// truncated tail never comes back after a restart; it applies at once
    /// and the call returns once the entry is durable (`Storage` if that
    /// fails). An `offset` at or past the log end changes nothing and
    /// returns the log end; a negative one is `OffsetOutOfRange`.
    pub async fn truncate_replica(
        &self,
        topic: &Arc<TopicMeta>,
        partition: i32,
        offset: i64,
    ) -> Result<i64, ShardError> {
        let cut = replica::Cut::Truncate;
        self.core.cut_replica(topic, partition, offset, cut).await
    }

    /// Drops a follower's whole log and continues it at `offset` (Kafka's
    /// truncate-fully-and-start-at, for a follower whose log end is below
    /// the leader's log start: its fetch got `OffsetOutOfRange`). Log
    /// start, HW and log end become `offset`. Same conditions and
    /// durability as `truncate_replica`; returns `offset`.
    pub async fn restart_replica_at(
        &self,
        topic: &Arc<TopicMeta>,
        partition: i32,
        offset: i64,
    ) -> Result<i64, ShardError> {
        let cut = replica::Cut::RestartAt;
        self.core.cut_replica(topic, partition, offset, cut).await
    }

    /// Follower log start, for the replica fetcher: moves the log start of
    /// a partition this node follows forward to `leader_log_start` (the
    /// `log_start_offset` of the leader's fetch response) when that is
    /// larger, so that the leader's retention, DeleteRecords and group
    /// carry-forward reclaim the follower's WAL too. Never past this
    /// replica's high watermark (so never past its log end): a follower
    /// behind the leader's log start keeps its log start at its HW until
    /// it has fetched further (or restarts at the leader's log start
    /// through `restart_replica_at`). The move is the durable kind-3 log
    /// start entry DeleteRecords writes, replayed by recovery; it applies
    /// once durable and wakes retention. Returns the log start after the
    /// call (unchanged, without writing, when `leader_log_start` is not
    /// larger). MUST be called on the owning shard, for a partition this
    /// node replicates without leading it (else `NotLeader`); calls must
    /// not overlap `append_replica` or the truncations of the same
    /// partition. Errors: `UnknownTopicOrPartition`, `NotLeader`,
    /// `Storage`, `ShuttingDown`.
    pub async fn advance_replica_log_start(
        &self,
        topic: &Arc<TopicMeta>,
        partition: i32,
        leader_log_start: i64,
    ) -> Result<i64, ShardError> {
        self.core
            .advance_replica_log_start(topic, partition, leader_log_start)
            .await
    }

    /// The partitions of this shard that this node follows: replicated
    /// (more than one replica), not led here, with a leader (leaderless
    /// ones are left out until one is elected). In partition-key order.
    pub fn followed(&self) -> Vec<Followed> {
        self.core.followed()
    }

    /// Clears `needs_truncation` of a followed partition once the fetcher
    /// truncated it for `leader_epoch` (the `Followed::leader_epoch` it
    /// acted on). Returns false, and leaves the flag set, when the
    /// partition's epoch moved meanwhile (truncate again). Errors:
    /// `UnknownTopicOrPartition`, `NotLeader` (not followed here).
    pub fn mark_truncated(
        &self,
        topic: &Arc<TopicMeta>,
        partition: i32,
        leader_epoch: i32,
    ) -> Result<bool, ShardError> {
        self.core.mark_truncated(topic, partition, leader_epoch)
    }

    /// The version of the followed set: bumped when a partition is added to
    /// or removed from `followed()`, or a followed partition's leader or
    /// epoch changes (and once at close).
    pub fn followed_version(&self) -> u64 {
        self.core.followed_version.get()
    }

    /// Resolves with the followed-set version once it is greater than
    /// `since` (at once if it already is, or the shard is closing). Woken
    /// by view application; no polling. Usage: `let v =
    /// shard.followed_version(); let set = shard.followed(); ...;
    /// shard.followed_changed(v).await`.
    pub async fn followed_changed(&self, since: u64) -> u64 {
        self.core.followed_changed(since).await
    }

    /// Testing only: applies `view` as if the metadata service had
    /// published it (roles, epochs, ISRs that a single-node `Metadata`
    /// cannot produce). Views the service publishes later are applied only
    /// once their version is greater than `view.version`.
    #[doc(hidden)]
    pub fn apply_view_for_tests(&self, view: Arc<MetadataView>) {
        if view.version > self.core.applied_version.get() {
            self.core.apply_view(&view);
        }
    }

    /// A new producer id (epoch 0) for InitProducerId, from this shard's
    /// block; an exhausted block is replaced by one Raft entry.
    pub async fn allocate_producer_id(&self) -> Result<i64, sluice_raft::MetaError> {
        self.core.allocate_producer_id().await
    }

    /// Reserves `bytes` of the request-buffer pool for a request frame,
    /// waiting (in arrival order) while the pool is full: the connection
    /// stops reading its socket until memory frees. `None` when the wait
    /// runs out (`MEMORY_WAIT`: memory held by idle connections' buffers
    /// can keep a large frame from ever fitting, and waiters are not
    /// overtaken), when `bytes` exceed `request_bytes_max()` or when
    /// `POOL_WAITERS_MAX` connections already wait. Released when the
    /// returned value is dropped.
    pub async fn reserve_request(&self, bytes: u64) -> Option<RequestBuffer> {
        let pool = budget::Pool::RequestBuffers;
        let reserve = self.core.budget.reserve(pool, bytes);
        let deadline = std::time::Instant::now() + MEMORY_WAIT;
        let r = self.core.until(reserve, deadline).await?.ok()?;
        Some(RequestBuffer(r))
    }

    /// Charges `bytes` to the request-buffer pool at once, past its limit
    /// if need be (counted in its `over_bytes`): memory a request already
    /// admitted takes to decode, which must not wait behind newcomers for
    /// bytes the request itself holds. Later reservations wait until the
    /// pool is back under its limit.
    pub fn reserve_request_forced(&self, bytes: u64) -> RequestBuffer {
        RequestBuffer(
            self.core
                .budget
                .reserve_forced(budget::Pool::RequestBuffers, bytes),
        )
    }

    /// Resolves at `deadline`, through the shard's one deadline structure
    /// (no timer of its own while that has room).
    pub async fn sleep_until(&self, deadline: std::time::Instant) {
        waiters::sleep_until(&self.core.waiters, deadline).await;
    }

    /// The largest request frame this shard can ever hold: its
    /// request-buffer pool.
    pub fn request_bytes_max(&self) -> u64 {
        self.core.budget.max(budget::Pool::RequestBuffers)
    }

    /// Every partition replica this node holds (on every shard), with the
    /// bytes of its stored batches, its log end and offset lag
    /// (DescribeLogDirs). Costs one pass over each shard's partitions and
    /// index entries; the other shards answer over the mesh.
    pub async fn partition_disk(&self) -> Result<Vec<PartitionDisk>, ShardError> {
        self.core.partition_disk().await
    }

    /// Counters, pools and latency histograms of this shard.
    pub fn stats(&self) -> ShardStats {
        self.core.stats()
    }

    /// Stops the shard's tasks, releases waiting fetches and closes the WAL
    /// (queued appends are written first).
    pub async fn close(&self) {
        self.core.close().await
    }
}
