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
    ListOffsetsPartition, ProducePartition, Shard, ShardConfig, ShardError, ShardMesh,
};

use crate::config::Settings;

/// Share of a shard's memory budget given to its tail cache.
const TAIL_CACHE_SHARE_DIVISOR: u64 = 4;

/// Builds the configuration of shard `shard_id` from the node settings.
pub fn shard_config(settings: &Settings, shard_id: u32) -> ShardConfig {
    let memory_bytes_max = settings.shard_memory_bytes();
    let mut cfg = ShardConfig::new(shard_id, settings.shards, settings.data_dir.clone());
    cfg.memory_bytes_max = memory_bytes_max;
    cfg.producer_id_expiration_ms = settings.producer_id_expiration_ms;
    cfg.tail_cache_bytes_max = (memory_bytes_max / TAIL_CACHE_SHARE_DIVISOR)
        .min(ShardConfig::TAIL_CACHE_BYTES_MAX_DEFAULT);
    cfg.group_initial_rebalance_delay_ms = settings.group_initial_rebalance_delay_ms;
    cfg
}
