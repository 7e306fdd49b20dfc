//! The broker's only door to the shard data plane (`sluice-shard`).
//!
//! Handlers use the names re-exported here, never the crate directly, so
//! the data plane's API shows up in one place. `shard_config` is the single
//! spot that turns node settings into a `ShardConfig`.

pub use sluice_shard::group::{
    CommitRequest, CommittedOffset, GroupError, GroupRequest, GroupResponse, HeartbeatRequest,
    JoinRequest, LeaveRequest, LeavingMember, OffsetDeleteRequest, OffsetFetchRequest, Protocol,
    SyncRequest, OFFSETS_TOPIC,
};
pub use sluice_shard::{
    new_mesh, DeleteRecordsPartition, FetchPartition, FetchPartitionResult, FetchRequest,
    ListOffsetsPartition, PoolStats, ProducePartition, ProduceTicket, RequestBuffer,
    ResponseMemory, Shard, ShardConfig, ShardError, ShardMesh, ShardStats, WarnLimiter,
};

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
    cfg.io_memory_bytes = io_memory_bytes(settings);
    cfg.wal.commit_bytes_max = settings.wal_commit_bytes_max;
    cfg.wal.segment_bytes = settings.wal_segment_bytes;
    cfg.wal.entry_bytes_max =
        u32::try_from(settings.wal_commit_bytes_max - ENTRY_BELOW_COMMIT_BYTES).unwrap_or(u32::MAX);
    cfg.tail_cache_bytes_max = (memory_bytes_max / TAIL_CACHE_SHARE_DIVISOR)
        .min(ShardConfig::TAIL_CACHE_BYTES_MAX_DEFAULT);
    cfg.group_initial_rebalance_delay_ms = settings.group_initial_rebalance_delay_ms;
    cfg
}
