//! The broker's only door to the shard data plane (`sluice-shard`).
//!
//! Handlers use the names re-exported here, never the crate directly, so
//! the data plane's API shows up in one place. `shard_config` is the single
//! spot that turns node settings into a `ShardConfig`.

pub use sluice_shard::group::{offsets_partition_for, offsets_topic_partitions};
pub use sluice_shard::group::{
    CommitRequest, CommittedOffset, GroupError, GroupRequest, GroupResponse, HeartbeatRequest,
    JoinRequest, LeaveRequest, LeavingMember, OffsetDeleteRequest, OffsetFetchRequest, Protocol,
    SyncRequest, OFFSETS_TOPIC,
};
pub use sluice_shard::{
    new_mesh, DeleteRecordsPartition, FetchPartition, FetchPartitionResult, FetchRequest,
    ListOffsetsPartition, Origin, PoolStats, ProducePartition, ProduceTicket, RequestBuffer,
    ResponseMemory, Shard, ShardConfig, ShardError, ShardMesh, ShardStats, WarnLimiter,
};

pub use sluice_shard::group::TxnCommitRequest;
pub use sluice_shard::txn::{RemoteMarkers, TxnError, TxnRequest, TxnResponse, TXN_TOPIC};
pub use sluice_shard::TxnMarker;

use crate::config::Settings;

/// Share of a shard's memory budget given to its tail cache.
const TAIL_CACHE_SHARE_DIVISOR: u64 = 4;

/// Room in the `io_memory` arena beside two whole commits: segment headers
/// and recovery reads also take their buffers from it.
const IO_MEMORY_MARGIN_BYTES: u64 = 512 << 10;
/// The WAL's largest entry is this much below its largest commit (frame
/// header, commit marker, block alignment).
const ENTRY_BELOW_COMMIT_BYTES: u64 = 4096;

/// glommio `io_memory` of one shard executor: two whole WAL commits (the
/// one being written and the next being filled) plus a margin, so commit
/// buffers never fall back to fresh heap buffers (see `sluice-wal`,
/// "Buffers"). Charged to the shard's budget as the `io_memory` pool.
pub fn io_memory_bytes(settings: &Settings) -> u64 {
    2 * settings.wal_commit_bytes_max + IO_MEMORY_MARGIN_BYTES
}

/// Builds the configuration of shard `shard_id` from the node settings.
pub fn shard_config(settings: &Settings, shard_id: u32) -> ShardConfig {
    let memory_bytes_max = settings.shard_memory_bytes();
    let mut cfg = ShardConfig::new(shard_id, settings.shards, settings.data_dir.clone());
    cfg.memory_bytes_max = memory_bytes_max;
    cfg.producer_id_expiration_ms = settings.producer_id_expiration_ms;
    cfg.transaction_max_timeout_ms = settings.transaction_max_timeout_ms;
    cfg.transactional_id_expiration_ms = settings.transactional_id_expiration_ms;
    cfg.io_memory_bytes = io_memory_bytes(settings);
    cfg.wal.commit_bytes_max = settings.wal_commit_bytes_max;
    cfg.wal.segment_bytes = settings.wal_segment_bytes;
    cfg.wal.entry_bytes_max =
        u32::try_from(settings.wal_commit_bytes_max - ENTRY_BELOW_COMMIT_BYTES).unwrap_or(u32::MAX);
    cfg.tail_cache_bytes_max = (memory_bytes_max / TAIL_CACHE_SHARE_DIVISOR)
        .min(ShardConfig::TAIL_CACHE_BYTES_MAX_DEFAULT);
    cfg.group_initial_rebalance_delay_ms = settings.group_initial_rebalance_delay_ms;
    cfg.min_insync_replicas = settings.min_insync_replicas;
    cfg.replica_lag_time_max_ms = settings.replica_lag_time_max_ms;
    cfg.search = sluice_shard::SearchTuning {
        builders: settings.search_builders_per_shard as usize,
        builder_heap_bytes: usize::try_from(settings.search_builder_heap_bytes)
            .unwrap_or(usize::MAX),
        refresh_ms: settings.search_refresh_ms,
        cache_bytes_max: settings.search_cache_bytes,
    };
    cfg
}

// Replication: the data plane's follower side, as the broker uses it
// (the replica fetcher in `replica.rs` and the handlers use only these).

use std::sync::Arc;

use bytes::Bytes;
use sluice_raft::TopicMeta;

pub use sluice_shard::Followed;

/// The partitions of this shard that this node follows, and the version
/// of that set they were read at.
pub fn followed(shard: &Shard) -> (u64, Vec<Followed>) {
    let version = shard.followed_version();
    (version, shard.followed())
}

/// Resolves once the followed set (or a follower's leader or epoch)
/// changed after version `since`; returns the new version.
pub async fn followed_changed(shard: &Shard, since: u64) -> u64 {
    shard.followed_changed(since).await
}

/// Moves a follower's log start up to the leader's (never past its own
/// high watermark); resolves with the log start after.
pub async fn advance_replica_log_start(
    shard: &Shard,
    topic: &Arc<TopicMeta>,
    partition: i32,
    leader_log_start: i64,
) -> Result<i64, ShardError> {
    shard
        .advance_replica_log_start(topic, partition, leader_log_start)
        .await
}

/// Appends fetched batches to a follower's log with their offsets kept;
/// resolves with the new log end once durable.
pub async fn append_replica(
    shard: &Shard,
    topic: &Arc<TopicMeta>,
    partition: i32,
    records: Bytes,
    leader_high_watermark: i64,
) -> Result<i64, ShardError> {
    shard
        .append_replica(topic, partition, records, leader_high_watermark)
        .await
}

/// Truncates a follower's log to end at `offset`; resolves with the new
/// log end.
pub async fn truncate_replica(
    shard: &Shard,
    topic: &Arc<TopicMeta>,
    partition: i32,
    offset: i64,
) -> Result<i64, ShardError> {
    shard.truncate_replica(topic, partition, offset).await
}

/// Drops a follower's whole log and continues it at `offset` (its log end
/// is below the leader's log start).
pub async fn restart_replica_at(
    shard: &Shard,
    topic: &Arc<TopicMeta>,
    partition: i32,
    offset: i64,
) -> Result<i64, ShardError> {
    shard.restart_replica_at(topic, partition, offset).await
}

/// The follower finished its truncation for `leader_epoch`: it may fetch.
/// False when the epoch moved meanwhile (truncate again).
pub fn mark_truncated(
    shard: &Shard,
    topic: &Arc<TopicMeta>,
    partition: i32,
    leader_epoch: i32,
) -> Result<bool, ShardError> {
    shard.mark_truncated(topic, partition, leader_epoch)
}

/// (epoch, end offset) of the largest epoch <= `epoch` in the leader's
/// log (OffsetForLeaderEpoch); (-1, -1) when there is none.
pub async fn end_offset_for_epoch(
    shard: &Shard,
    topic: &Arc<TopicMeta>,
    partition: i32,
    epoch: i32,
) -> Result<(i32, i64), ShardError> {
    shard.end_offset_for_epoch(topic, partition, epoch).await
}

/// A data-plane fetch; `replica_id` is the fetching follower's node id
/// (None: a consumer).
pub fn fetch_request(
    partitions: Vec<FetchPartition>,
    max_wait_ms: u32,
    min_bytes: u32,
    max_bytes: u32,
    isolation_level: i8,
    replica_id: Option<u64>,
) -> FetchRequest {
    FetchRequest {
        partitions,
        max_wait_ms,
        min_bytes,
        max_bytes,
        isolation_level,
        replica_id,
    }
}

/// One partition of a data-plane fetch (`current_leader_epoch` -1: not
/// checked).
pub fn fetch_partition(
    topic: Arc<TopicMeta>,
    partition: i32,
    fetch_offset: i64,
    partition_max_bytes: u32,
    current_leader_epoch: i32,
) -> FetchPartition {
    FetchPartition {
        topic,
        partition,
        fetch_offset,
        partition_max_bytes,
        current_leader_epoch,
    }
}
