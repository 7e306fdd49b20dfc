//! The broker's only door to the shard data plane (`sluice-shard`).
//!
//! Handlers use the names re-exported here, never the crate directly, so
//! the data plane's API shows up in one place. `shard_config` is the single
//! spot that turns node settings into a `ShardConfig`.

pub use sluice_shard::{
    new_mesh, FetchPartition, FetchPartitionResult, FetchRequest, ListOffsetsPartition,
    PoolStats, ProducePartition, RequestBuffer, Shard, ShardConfig, ShardError, ShardMesh,
    ShardStats,
};

use crate::config::Settings;

/// Share of a shard's memory budget given to its tail cache.
const TAIL_CACHE_SHARE_DIVISOR: u64 = 4;

/// Builds the configuration of shard `shard_id` from the node settings.
pub fn shard_config(settings: &Settings, shard_id: u32) -> ShardConfig {
    let memory_bytes_max = settings.shard_memory_bytes();
    let mut cfg = ShardConfig::new(shard_id, settings.shards, settings.data_dir.clone());
    cfg.memory_bytes_max = memory_bytes_max;
    cfg.tail_cache_bytes_max = (memory_bytes_max / TAIL_CACHE_SHARE_DIVISOR)
        .min(ShardConfig::TAIL_CACHE_BYTES_MAX_DEFAULT);
    cfg
}
