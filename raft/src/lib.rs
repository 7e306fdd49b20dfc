//! Cluster metadata of a Sluice node: topics, their partitions and where
//! each partition lives (shard and leader), replicated through Raft.
//!
//! # Role
//!
//! Every metadata change is one Raft log entry (openraft 0.9). Today the
//! group has one voter, this node; the same code path takes more voters
//! once an inter-node network exists (`network` is the only stub).
//! Placement of new partitions is decided in the state machine's `apply`,
//! so every replica computes the same answer.
//!
//! # Threads
//!
//! Chosen design: openraft runs on a dedicated OS thread named
//! `sluice-control` with a tokio *current-thread* runtime. Shard threads
//! (glommio executors) never run tokio; they talk to the control thread
//! through runtime-agnostic primitives only:
//!
//! - requests: a bounded `tokio::sync::mpsc` queue (`REQUESTS_MAX`), each
//!   carrying a `tokio::sync::oneshot` for the answer. tokio's `sync`
//!   module needs no tokio runtime: its futures are woken by plain
//!   `Waker`s, so they can be awaited from glommio tasks;
//! - reads: `Metadata::view` is an `arc_swap` load of an immutable
//!   `MetadataView`, no lock, no await;
//! - change notification: `Metadata::changed` awaits a `tokio::sync::watch`
//!   of the applied version.
//!
//! Disk IO (fdatasync of the log, vote, snapshot) is blocking and happens on
//! the control thread; the shards never wait on it except through the
//! futures above.
//!
//! # Invariants
//!
//! - `MetadataView::version` is the index of the last applied log entry; it
//!   never goes back, also across restarts.
//! - An entry is acknowledged to openraft as flushed only after
//!   `fdatasync` of the log file; the vote is replaced by temp file +
//!   fsync + rename + directory fsync.
//! - On open, a torn log tail (short frame or bad CRC32C) is truncated; any
//!   other damage (snapshot, vote, a bad entry inside a valid frame) stops
//!   start-up with `MetaError::Storage`.
//! - Every queue is bounded: `REQUESTS_MAX` queued requests,
//!   `WRITES_INFLIGHT_MAX` writes in flight, and the in-memory log is
//!   bounded by the snapshot policy.
//! - No periodic work shows in logs: per-entry events are `debug`,
//!   start-up and topic changes are `info`.
//! - Only the control thread writes metadata.
//!
//! On-disk formats are documented in `log_store`, `snapshot` and `durable`.
//! Snapshot data is an rkyv 0.8 archive; log entries are JSON (openraft's
//! own types are serde, not rkyv) inside length + CRC32C frames.

mod control;
mod durable;
mod log_store;
mod network;
mod snapshot;
mod state_machine;
mod types;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

pub use crate::control::{REQUESTS_MAX, WRITES_INFLIGHT_MAX};
use crate::control::{Command, ControlArgs};
use crate::state_machine::{validate_partitions, Placement, Published};
pub use crate::types::{
    MetaConfig, MetaError, MetaRequest, MetaResponse, MetadataView, PartitionMeta, TopicMeta, TopicSpec, TypeConfig,
};

/// Name of the control thread.
pub const CONTROL_THREAD_NAME: &str = "sluice-control";

/// A `Send + Sync` handle to the node's metadata service. Cheap to clone.
#[derive(Clone)]
pub struct Metadata {
    inner: Arc<Inner>,
}

struct Inner {
    published: Arc<Published>,
    commands: mpsc::Sender<Command>,
    limits: Placement,
    control: Mutex<Option<Control>>,
}

struct Control {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata").field("version", &self.view().version).finish()
    }
}

impl Metadata {
    /// Spawns the control thread ("sluice-control"), opens/creates the Raft
    /// log and snapshot under `data_dir/raft`, initializes the one-voter
    /// membership on first start, and waits until this node is leader and
    /// the state machine is loaded. Metadata survives restarts.
    ///
    /// Blocks the calling thread until then: call it before starting the
    /// shard executors.
    pub fn start(cfg: MetaConfig) -> Result<Metadata, MetaError> {
        if cfg.shards == 0 || cfg.partitions_per_shard_max == 0 {
            return Err(MetaError::Internal("shards and partitions_per_shard_max must be > 0".into()));
        }
        let limits = Placement {
            node_id: cfg.node_id,
            shards: cfg.shards,
            partitions_per_shard_max: cfg.partitions_per_shard_max,
        };
        let published = Arc::new(Published::new(cfg.node_id));
        let (commands_tx, commands) = mpsc::channel(REQUESTS_MAX);
        let (stop_tx, stop) = oneshot::channel();
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        let args = ControlArgs { cfg, published: Arc::clone(&published), commands, stop, ready: ready_tx };
        let thread = std::thread::Builder::new()
            .name(CONTROL_THREAD_NAME.to_string())
            .spawn(move || control::run(args))
            .map_err(|e| MetaError::Internal(format!("spawn {CONTROL_THREAD_NAME}: {e}")))?;
        let started = ready.recv().unwrap_or_else(|_| Err(MetaError::Internal("control thread died".into())));
        if let Err(e) = started {
            let _ = thread.join();
            return Err(e);
        }
        let control = Mutex::new(Some(Control { stop: stop_tx, thread }));
        Ok(Metadata { inner: Arc::new(Inner { published, commands: commands_tx, limits, control }) })
    }

    /// One Raft entry; resolves once committed and applied. Placement: each
    /// partition goes to the shard with the fewest partitions (ties: lowest
    /// shard index), decided in the state machine apply so it is
    /// deterministic.
    pub async fn create_topic(&self, spec: TopicSpec) -> Result<Arc<TopicMeta>, MetaError> {
        validate_partitions(spec.partitions, &self.inner.limits)?;
        if self.view().topics.contains_key(&spec.name) {
            return Err(MetaError::TopicExists(spec.name));
        }
        let request = MetaRequest::CreateTopic {
            name: spec.name,
            id: *uuid::Uuid::new_v4().as_bytes(),
            partitions: spec.partitions,
            configs: spec.configs,
            created_ms: now_ms(),
        };
        self.propose(request).await
    }

    /// One Raft entry removing the topic; resolves with what was removed.
    pub async fn delete_topic(&self, name: &str) -> Result<Arc<TopicMeta>, MetaError> {
        self.propose(MetaRequest::DeleteTopic { name: name.to_string() }).await
    }

    /// Latest applied metadata: an `Arc` clone of an immutable view.
    pub fn view(&self) -> Arc<MetadataView> {
        self.inner.published.view()
    }

    /// Resolves when `view().version > since` (runtime-agnostic; usable from
    /// glommio tasks). After `shutdown` it resolves at once with the last
    /// view, whatever its version.
    pub async fn changed(&self, since: u64) -> Arc<MetadataView> {
        self.inner.published.changed(since).await
    }

    /// Stops the control thread cleanly and waits for it (idempotent).
    /// Requests in flight resolve with `MetaError::ShuttingDown`.
    pub fn shutdown(&self) {
        let control = self.inner.control.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(Control { stop, thread }) = control else {
            return;
        };
        let _ = stop.send(());
        if thread.thread().id() == std::thread::current().id() {
            return; // Never join ourselves; the thread is already stopping.
        }
        if thread.join().is_err() {
            tracing::error!("metadata: control thread panicked");
        }
    }

    async fn propose(&self, request: MetaRequest) -> Result<Arc<TopicMeta>, MetaError> {
        let (reply, answer) = oneshot::channel();
        let command = Command { request, reply };
        self.inner.commands.send(command).await.map_err(|_| MetaError::ShuttingDown)?;
        answer.await.unwrap_or(Err(MetaError::ShuttingDown))
    }
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
