//! Helpers shared by the shard's integration tests: a single-node
//! metadata service, a glommio executor to run a test on, views injected
//! to give partitions roles, and small record-batch readers.
// Each test binary uses a part of these.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_raft::{MetaConfig, Metadata, MetadataView, PartitionMeta, TopicMeta};
use sluice_shard::Shard;

/// Versions of injected views start here, above anything the metadata
/// service publishes during a test.
pub const VIEW_BASE: u64 = 1 << 40;

pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A one-voter metadata service of node 1 for `shards` shards.
pub fn start_meta(dir: &Path, shards: u32) -> Metadata {
    init_logs();
    let cfg = MetaConfig {
        data_dir: dir.to_path_buf(),
        node_id: 1,
        shards,
        partitions_per_shard_max: 100,
        advertised_host: "127.0.0.1".into(),
        advertised_port: 9092,
        endpoints: Vec::new(),
        cluster: None,
    };
    Metadata::start(cfg).expect("metadata starts")
}

/// Runs `f` on a fresh glommio executor and waits for it.
pub fn on_executor<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .expect("executor")
        .join()
        .expect("executor thread");
}

pub async fn sleep_ms(ms: u64) {
    glommio::timer::sleep(Duration::from_millis(ms)).await;
}

/// Gives partition 0 of `topic` this leader, epoch, replicas and ISR in a
/// view injected into `shard` (version `VIEW_BASE + step`), as the
/// metadata service of a cluster would publish it.
#[allow(clippy::too_many_arguments)]
pub fn set_partition(
    shard: &Shard,
    meta: &Metadata,
    topic: &Arc<TopicMeta>,
    step: u64,
    leader: u64,
    epoch: i32,
    replicas: &[u64],
    isr: &[u64],
) -> Arc<TopicMeta> {
    let mut t = (**topic).clone();
    t.partitions[0] = PartitionMeta {
        shard: 0,
        leader,
        leader_epoch: epoch,
        replicas: replicas.to_vec(),
        isr: isr.to_vec(),
    };
    let t = Arc::new(t);
    let mut v: MetadataView = (*meta.view()).clone();
    v.version = VIEW_BASE + step;
    v.topics.insert(Arc::from(t.name.as_str()), Arc::clone(&t));
    shard.apply_view_for_tests(Arc::new(v));
    t
}

/// Kafka's zig-zag varint.
pub fn varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// The base offset of a record batch.
pub fn base_offset(b: &[u8]) -> i64 {
    i64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}
