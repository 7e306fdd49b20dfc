//! Per-shard counters and latency histograms. `Shard::stats` returns them
//! as plain data (`ShardStats`); the broker exports them. Counters are
//! plain integers on the shard's core; nothing here logs.

use hdrhistogram::Histogram;
use sluice_wal::WalStats;

use crate::budget::PoolStats;
use crate::waiters::WaitersStats;

/// Topics listed in `ShardStats::top_topics`.
pub const TOP_TOPICS_MAX: usize = 10;

/// Highest latency the histograms record (60 s), in microseconds.
const LATENCY_US_MAX: u64 = 60_000_000;

pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static histogram bounds")
}

/// Counters kept by the shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub produce_requests: u64,
    pub produce_errors: u64,
    pub produce_busy: u64,
    pub produce_bytes: u64,
    pub produce_records_offsets: u64,
    pub fetch_requests: u64,
    pub fetch_partitions: u64,
    pub fetch_bytes: u64,
    pub fetch_long_polls: u64,
    pub fetch_tail_hits: u64,
    pub fetch_wal_reads: u64,
    /// Fetches that stopped early because `fetch_response` was full.
    pub fetch_busy: u64,
    /// Fetches answered empty (throttled) because their memory wait ran out.
    pub fetch_throttled: u64,
    pub list_offsets_requests: u64,
    /// Requests this shard sent to other shards / served for them.
    pub remote_sent: u64,
    pub remote_served: u64,
    pub remote_timeouts: u64,
    pub recovered_entries: u64,
    /// WAL entries of unknown (deleted) partitions or unknown kinds.
    pub recovery_skipped_entries: u64,
    pub partitions_created: u64,
    pub partitions_deleted: u64,
    /// Idempotent retries answered with the original offsets.
    pub produce_duplicates: u64,
    /// Idle idempotent producers dropped by sweeps.
    pub producers_expired: u64,
    /// Partition log starts moved by retention.
    pub retention_log_start_moves: u64,
    /// WAL segments removed by retention.
    pub retention_segments_removed: u64,
    /// Log start and group records appended again before a removal.
    pub retention_carried_records: u64,
    /// Compaction passes over a partition that wrote replacements.
    pub compaction_passes: u64,
    /// Records, and among them tombstones, compaction dropped.
    pub compaction_records_removed: u64,
    pub compaction_tombstones_removed: u64,
    /// Entries compaction replaced, and the bytes of the replacements.
    pub compaction_entries_replaced: u64,
    pub compaction_bytes_written: u64,
    /// Entries the segment collector copied forward, and their bytes.
    pub collector_entries_moved: u64,
    pub collector_bytes_moved: u64,
    /// Follower appends (`append_replica` calls that wrote entries) and
    /// their bytes.
    pub replica_appends: u64,
    pub replica_append_bytes: u64,
    /// Follower log truncations (`truncate_replica`, `restart_replica_at`).
    pub replica_truncations: u64,
    /// ISR changes this shard proposed as partition leader.
    pub isr_proposals: u64,
    /// acks=-1 produces that waited for the ISR after durability.
    pub produce_isr_waits: u64,
    /// Transactions this shard's coordinator completed, by outcome.
    pub txn_commits: u64,
    pub txn_aborts: u64,
    /// Transactions aborted because their timeout passed.
    pub txn_timeouts: u64,
    /// Ongoing transactions aborted because a new producer instance of the
    /// id fenced the old one.
    pub txn_fenced: u64,
    /// Transaction markers the coordinator wrote (one per partition).
    pub txn_markers: u64,
    /// Transactional ids forgotten after `transactional.id.expiration.ms`.
    pub txn_ids_expired: u64,
}

/// What one partition replica holds on this node (DescribeLogDirs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionDisk {
    pub topic_id: [u8; 16],
    pub partition: u32,
    /// Bytes of its stored record batches (the sum over its index entries).
    pub bytes: u64,
    /// Its log end offset.
    pub log_end: i64,
    /// How far its log end is behind the high watermark it knows (0 for a
    /// leader: Kafka's `offset_lag` of a current log).
    pub offset_lag: i64,
    pub is_leader: bool,
}

/// A snapshot of one shard's observability state.
#[derive(Clone, Debug)]
pub struct ShardStats {
    pub shard_id: u32,
    pub partitions: u64,
    /// In-memory size of one idle partition struct, bytes.
    pub partition_struct_bytes: u64,
    /// Index entries (stored WAL entries) over all partitions.
    pub index_entries: u64,
    pub tail_cache_entries: u64,
    pub tail_cache_evictions: u64,
    pub applied_metadata_version: u64,
    pub counters: Counters,
    pub waiters: WaitersStats,
    pub pools: Vec<PoolStats>,
    /// The shard's whole memory budget (`ShardConfig::memory_bytes_max`).
    pub memory_bytes_max: u64,
    /// Times a connection waited for request-buffer memory (backpressure).
    pub request_waits: u64,
    /// Long-lived tasks of the shard (inboxes, watcher, deadlines).
    pub tasks: u64,
    /// Produces waiting for durability (one short-lived task each).
    pub produce_tasks: u64,
    /// Produces waiting for memory in the admissions queue now.
    pub produce_admissions_waiting: u64,
    /// Produces that had to wait for memory (admissions queue).
    pub produce_admission_waits: u64,
    /// Produces answered Busy because a memory wait ran out.
    pub produce_admission_timeouts: u64,
    /// The topics holding the most partition state on this shard:
    /// (topic id, bytes), largest first, at most `TOP_TOPICS_MAX`.
    pub top_topics: Vec<([u8; 16], u64)>,
    /// Mesh sends that found the peer's channel full.
    pub mesh_full_waits: u64,
    pub wal: WalStats,
    /// Produce latency at the requesting shard (to durability for acks != 0).
    pub produce_latency_us: Histogram<u64>,
    /// Fetch latency at the requesting shard, long-poll waits included.
    pub fetch_latency_us: Histogram<u64>,
}
