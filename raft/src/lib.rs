//! Cluster metadata of a Sluice node: topics, their partitions and where
//! each partition lives (shard, replicas, leader, ISR, leader epoch), the
//! registered brokers, and the security metadata (SCRAM credentials, ACLs,
//! client quotas: `security`), replicated through Raft.
//!
//! # Role
//!
//! Every metadata change is one Raft log entry (openraft 0.9).
//!
//! - Alone (`MetaConfig::cluster` is `None`) the group is one voter, this
//!   node: no network, no timers (openraft's tick is off), and the node
//!   registers itself as a broker once.
//! - In a cluster every node is a voter; the membership (all voters, each
//!   with its cluster address) is initialized on first start by any node
//!   that no leader reached within one election timeout. Nodes talk over
//!   `network` (TCP, length-delimited JSON frames). The Raft leader is the
//!   controller: brokers heartbeat to it, and it fences the ones whose
//!   lease runs out (`control`). A write proposed on another node is
//!   forwarded to the leader; without a leader it is retried until a
//!   deadline, then fails with `MetaError::NoQuorum`.
//!
//! Placement of new partitions (shard and replicas), the effect of broker
//! fencing on leaders and ISRs, leader elections (preferred, unclean, and
//! by the topic config `unclean.leader.election.enable`) and the progress
//! of partition reassignments are decided in the state machine's `apply`
//! from replicated data only, so every node computes the same answer.
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
//! - controller: `Metadata::controller` is an atomic load of the Raft
//!   leader's id, kept current by a watcher of openraft's metrics.
//!
//! Disk IO (fdatasync of the log, vote, snapshot) is blocking and happens on
//! the control thread; the shards never wait on it except through the
//! futures above. In a cluster the node-to-node listener and its
//! connections also run on the control thread; record data never does.
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
//!   `WRITES_INFLIGHT_MAX` writes in flight (of which at most
//!   `control::FORWARDS_INFLIGHT_MAX` forwarded to the leader), at most
//!   `network::INBOUND_CONNECTIONS_MAX` inbound node connections and
//!   `network::FRAME_MAX` bytes per frame, and the in-memory log is
//!   bounded by the snapshot policy.
//! - No periodic work of this crate shows in logs: per-entry events and
//!   heartbeats are `debug`; start-up, topic changes, broker registration,
//!   fencing and unfencing are `info`, once per event (never per
//!   partition). A cluster node waiting for a quorum at start logs once
//!   per 10 s. (openraft itself logs failed RPCs to an unreachable peer.)
//! - Only the control thread writes metadata.
//!
//! # Use from a shard
//!
//! `Metadata::start` blocks (alone: until this node leads; in a cluster:
//! without limit, until a leader is known and this node applied the log):
//! call it on the main thread before the shard executors start, then move
//! a clone into each:
//!
//! ```text
//! let meta = Metadata::start(cfg)?;              // main thread
//! let m = meta.clone();                          // into the glommio executor
//! glommio::spawn_local(async move {
//!     let mut view = m.view();
//!     loop {                                     // routing-table follower
//!         let next = m.changed(view.version).await;
//!         if next.version == view.version { break }  // service shut down
//!         view = next;
//!         // ... rebuild this shard's routing from `view` ...
//!     }
//! });
//! let topic = m.create_topic(spec).await?;       // from any glommio task
//! ```
//!
//! `shutdown` joins the control thread: call it from the thread that
//! started the service, after the shards stop.
//!
//! On-disk formats are documented in `log_store`, `snapshot` and `durable`.
//! Snapshot data is an rkyv 0.8 archive; log entries are JSON (openraft's
//! own types are serde, not rkyv) inside length + CRC32C frames.

mod control;
mod durable;
mod log_store;
mod network;
mod security;
mod snapshot;
mod state_machine;
mod types;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use crate::control::{Command, ControlArgs, Tuning};
pub use crate::control::{REQUESTS_MAX, WRITES_INFLIGHT_MAX};
pub use crate::network::ClusterTls;
pub use crate::security::acl::{
    AclBinding, AclDecision, AclEntry, AclFilter, AclOperation, AclPatternType, AclPermission,
    AclResourceType, Acls, PatternFilter, CLUSTER_RESOURCE, WILDCARD_HOST, WILDCARD_PRINCIPAL,
    WILDCARD_RESOURCE,
};
pub use crate::security::quota::{
    validate_quota_alteration, QuotaAlteration, QuotaEntity, QuotaEntityType, QuotaFilter,
    QuotaFilterComponent, QuotaMap, QuotaMatch, QuotaName, QuotaOps, QuotaScope, QuotaValues,
    Quotas, CONNECTION_CREATION_RATE, CONSUMER_BYTE_RATE, CONTROLLER_MUTATION_RATE,
    PRODUCER_BYTE_RATE, REQUEST_PERCENTAGE,
};
pub use crate::security::scram::{
    ScramAlterResults, ScramCredential, ScramMechanism, ScramUsers, UserScram,
};
pub use crate::security::{SecurityError, ACLS_MAX, QUOTA_ENTITIES_MAX, SCRAM_USERS_MAX};
pub use crate::state_machine::UNCLEAN_LEADER_ELECTION;
use crate::state_machine::{validate_partitions, Placement, Published};
pub use crate::types::{
    BrokerMap, BrokerMeta, ClusterConfig, Election, Endpoint, MetaConfig, MetaError, MetadataView,
    PartitionMeta, PartitionRef, Reassignment, ReassignmentMap, TopicChange, TopicIdMap, TopicMap,
    TopicMeta, TopicSpec, NO_LEADER, PRODUCER_ID_BLOCK_SIZE,
};
use crate::types::{MetaRequest, MetaResponse};

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
    /// The Raft leader's id (`NO_LEADER`: none known), kept by the control
    /// thread.
    leader: Arc<AtomicU64>,
    /// See `Metadata::serving`.
    serving: Arc<std::sync::atomic::AtomicBool>,
    control: Mutex<Option<Control>>,
}

struct Control {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("version", &self.view().version)
            .finish()
    }
}

impl Metadata {
    /// Spawns the control thread ("sluice-control"), opens/creates the Raft
    /// log and snapshot under `data_dir/raft`, initializes the membership on
    /// first start (this node alone, or every voter of `cfg.cluster`), and
    /// waits until the state machine is loaded: alone, until this node
    /// leads (it then registers itself as a broker if it is not registered
    /// with its advertised address); in a cluster, without a time limit,
    /// until a leader is known and this node applied the committed log
    /// (logging once per 10 s how many voters answer). Metadata survives
    /// restarts.
    ///
    /// Blocks the calling thread until then: call it before starting the
    /// shard executors.
    pub fn start(cfg: MetaConfig) -> Result<Metadata, MetaError> {
        Metadata::start_tuned(cfg, Tuning::DEFAULT)
    }

    fn start_tuned(cfg: MetaConfig, tuning: Tuning) -> Result<Metadata, MetaError> {
        if cfg.shards == 0 || cfg.partitions_per_shard_max == 0 {
            return Err(MetaError::Internal(
                "shards and partitions_per_shard_max must be > 0".into(),
            ));
        }
        let limits = Placement {
            node_id: cfg.node_id,
            shards: cfg.shards,
            partitions_per_shard_max: cfg.partitions_per_shard_max,
        };
        let published = Arc::new(Published::new(cfg.node_id));
        let leader = Arc::new(AtomicU64::new(NO_LEADER));
        let waits_for_serving = cfg
            .cluster
            .as_ref()
            .is_some_and(|c| c.heartbeat_when_serving);
        let serving = Arc::new(std::sync::atomic::AtomicBool::new(!waits_for_serving));
        let (commands_tx, commands) = mpsc::channel(REQUESTS_MAX);
        let (stop_tx, stop) = oneshot::channel();
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        let args = ControlArgs {
            cfg,
            tuning,
            published: Arc::clone(&published),
            leader: Arc::clone(&leader),
            serving: Arc::clone(&serving),
            commands,
            stop,
            ready: ready_tx,
        };
        // The control thread: the one dedicated metadata thread of a node.
        let thread = std::thread::Builder::new()
            .name(CONTROL_THREAD_NAME.to_string())
            .spawn(move || control::run(args))
            .map_err(|e| MetaError::Internal(format!("spawn {CONTROL_THREAD_NAME}: {e}")))?;
        let started = ready
            .recv()
            .unwrap_or_else(|_| Err(MetaError::Internal("control thread died".into())));
        if let Err(e) = started {
            let _ = thread.join();
            return Err(e);
        }
        let control = Mutex::new(Some(Control {
            stop: stop_tx,
            thread,
        }));
        Ok(Metadata {
            inner: Arc::new(Inner {
                published,
                commands: commands_tx,
                limits,
                leader,
                serving,
                control,
            }),
        })
    }

    /// One Raft entry; resolves once committed and applied. Placement: each
    /// partition goes to the shard with the fewest partitions (ties: lowest
    /// shard index) and to `replication_factor` live brokers (rotating
    /// start, leader first), or to `assignment` when given; decided in the
    /// state machine apply so it is deterministic. More replicas than live
    /// brokers: `MetaError::InvalidReplicationFactor`.
    pub async fn create_topic(&self, spec: TopicSpec) -> Result<Arc<TopicMeta>, MetaError> {
        validate_partitions(spec.partitions, &self.inner.limits)?;
        if self.view().topics.contains_key(spec.name.as_str()) {
            return Err(MetaError::TopicExists(spec.name));
        }
        let request = MetaRequest::CreateTopic {
            name: spec.name,
            id: *uuid::Uuid::new_v4().as_bytes(),
            partitions: spec.partitions,
            configs: spec.configs,
            created_ms: now_ms(),
            replication_factor: spec.replication_factor,
            assignment: spec.assignment,
        };
        self.propose(request).await
    }

    /// One Raft entry removing the topic; resolves with what was removed.
    pub async fn delete_topic(&self, name: &str) -> Result<Arc<TopicMeta>, MetaError> {
        self.propose(MetaRequest::DeleteTopic {
            name: name.to_string(),
        })
        .await
    }

    /// Latest applied metadata: an `Arc` clone of an immutable view.
    pub fn view(&self) -> Arc<MetadataView> {
        self.inner.published.view()
    }

    /// Runs `f` on the latest applied metadata without taking a reference
    /// to it: no write to the count every shard shares (arc-swap's
    /// thread-local guard), for checks on the request path. `f` must not
    /// block: the view it sees stays alive until it returns.
    pub fn peek<R>(&self, f: impl FnOnce(&MetadataView) -> R) -> R {
        self.inner.published.peek(f)
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
        let control = self
            .inner
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
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

    /// One Raft entry growing a topic to `partitions` partitions in total;
    /// resolves with the new topic metadata.
    pub async fn create_partitions(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<Arc<TopicMeta>, MetaError> {
        self.create_partitions_assigned(name, partitions, Vec::new())
            .await
    }

    /// `create_partitions` with the replica list of each new partition
    /// (preferred leader first; empty: placed by the controller). Checked
    /// in apply: one list per new partition, as many replicas as the
    /// topic's partitions have, registered brokers, none twice
    /// (`MetaError::InvalidReplicaAssignment`).
    pub async fn create_partitions_assigned(
        &self,
        name: &str,
        partitions: u32,
        assignment: Vec<Vec<u64>>,
    ) -> Result<Arc<TopicMeta>, MetaError> {
        validate_partitions(partitions, &self.inner.limits)?;
        self.propose(MetaRequest::CreatePartitions {
            name: name.to_string(),
            partitions,
            assignment,
        })
        .await
    }

    /// One Raft entry electing leaders of `partitions` (topic, partition):
    /// preferred (the first replica, when in sync and unfenced;
    /// `ElectionNotNeeded` when it leads already, else
    /// `PreferredLeaderNotAvailable`) or unclean (only for a partition
    /// without leader: a live in-sync replica, else any live replica, which
    /// then is the ISR alone; `ElectionNotNeeded` when it has a leader,
    /// `EligibleLeadersNotAvailable` when no replica is live). A new leader
    /// bumps the epoch. Resolves with one result per partition, in order.
    pub async fn elect_leaders(
        &self,
        election: Election,
        partitions: Vec<(String, u32)>,
    ) -> Result<Vec<Result<(), MetaError>>, MetaError> {
        let n = partitions.len();
        let request = MetaRequest::ElectLeaders {
            election,
            partitions,
        };
        self.propose_each(request, n).await
    }

    /// One Raft entry starting (`Some(target replicas)`) or cancelling
    /// (`None`) partition reassignments. A started one adds the target
    /// replicas first (`replicas` = target, then the original replicas not
    /// in it); the ISR change that makes the ISR hold every target replica
    /// completes it (replicas := target, ISR := ISR ∩ target, a removed
    /// leader hands over to the first in-sync target replica, epoch + 1).
    /// A cancellation restores the original replicas. Resolves with one
    /// result per partition, in order.
    pub async fn reassign_partitions(
        &self,
        moves: Vec<(String, u32, Option<Vec<u64>>)>,
    ) -> Result<Vec<Result<(), MetaError>>, MetaError> {
        let n = moves.len();
        self.propose_each(MetaRequest::Reassign { moves }, n).await
    }

    async fn propose_each(
        &self,
        request: MetaRequest,
        n: usize,
    ) -> Result<Vec<Result<(), MetaError>>, MetaError> {
        match self.propose_raw(request).await? {
            MetaResponse::Each(results) if results.len() == n => Ok(results),
            other => Err(MetaError::Internal(format!(
                "unexpected answer to a per-partition entry: {other:?}"
            ))),
        }
    }

    /// One Raft entry replacing a topic's configs (validated by the caller).
    pub async fn set_topic_configs(
        &self,
        name: &str,
        configs: std::collections::BTreeMap<String, String>,
    ) -> Result<Arc<TopicMeta>, MetaError> {
        self.propose(MetaRequest::SetTopicConfigs {
            name: name.to_string(),
            configs,
        })
        .await
    }

    /// One Raft entry reserving a block of `PRODUCER_ID_BLOCK_SIZE`
    /// producer ids; resolves with its first id. Blocks are never reused,
    /// across restarts too (they derive from the entry's log index).
    pub async fn reserve_producer_ids(&self) -> Result<i64, MetaError> {
        match self.propose_raw(MetaRequest::ReserveProducerIds).await? {
            MetaResponse::ProducerIds(start) => Ok(start),
            other => Err(MetaError::Internal(format!(
                "unexpected answer to a producer id reservation: {other:?}"
            ))),
        }
    }

    /// One Raft entry changing a partition's ISR; refused unless `leader`
    /// leads the partition at `leader_epoch`. Resolves once applied.
    pub async fn alter_isr(
        &self,
        topic: &str,
        partition: u32,
        leader: u64,
        leader_epoch: i32,
        isr: Vec<u64>,
    ) -> Result<(), MetaError> {
        let request = MetaRequest::AlterIsr {
            topic: topic.to_string(),
            partition,
            leader,
            leader_epoch,
            isr,
        };
        match self.propose_raw(request).await? {
            MetaResponse::Done(result) => result,
            other => Err(MetaError::Internal(format!(
                "unexpected answer to an ISR change: {other:?}"
            ))),
        }
    }

    /// One Raft entry adding or replacing (`upsertions`) and deleting
    /// SCRAM credentials (AlterUserScramCredentials); resolves with one
    /// result per item, in order (see `ScramAlterResults`). Errors per
    /// item: `DuplicateResource` (the same user and mechanism twice in the
    /// request), `ResourceNotFound` (deleting a credential that does not
    /// exist), `UnacceptableCredential` (empty user, iterations outside
    /// 4096..=16384, keys not of the hash's size); a user's items apply
    /// together or not at all. No entry when both lists are empty.
    pub async fn alter_scram_credentials(
        &self,
        upsertions: Vec<(String, ScramCredential)>,
        deletions: Vec<(String, ScramMechanism)>,
    ) -> Result<ScramAlterResults, MetaError> {
        if upsertions.is_empty() && deletions.is_empty() {
            return Ok(ScramAlterResults::default());
        }
        self.alter_scram(upsertions, deletions, false).await
    }

    /// Creates SCRAM credentials of users that have none when the entry
    /// is applied (bootstrap users); a user that has one keeps it and its
    /// items are answered `DuplicateResource`.
    pub async fn create_scram_users(
        &self,
        upsertions: Vec<(String, ScramCredential)>,
    ) -> Result<ScramAlterResults, MetaError> {
        if upsertions.is_empty() {
            return Ok(ScramAlterResults::default());
        }
        self.alter_scram(upsertions, Vec::new(), true).await
    }

    async fn alter_scram(
        &self,
        upsertions: Vec<(String, ScramCredential)>,
        deletions: Vec<(String, ScramMechanism)>,
        if_absent: bool,
    ) -> Result<ScramAlterResults, MetaError> {
        let (n_up, n_del) = (upsertions.len(), deletions.len());
        let request = MetaRequest::AlterScramCredentials {
            upsertions,
            deletions,
            if_absent,
        };
        match self.propose_raw(request).await? {
            MetaResponse::ScramAltered(r)
                if r.upsertions.len() == n_up && r.deletions.len() == n_del =>
            {
                Ok(r)
            }
            other => Err(unexpected("a SCRAM alteration", &other)),
        }
    }

    /// One Raft entry adding ACL bindings (CreateAcls); resolves with one
    /// result per binding, in order: `Ok` (also when it existed already)
    /// or `InvalidRequest` (see `AclBinding::validate`, or `ACLS_MAX`
    /// reached). No entry when `bindings` is empty.
    pub async fn create_acls(
        &self,
        bindings: Vec<AclBinding>,
    ) -> Result<Vec<Result<(), SecurityError>>, MetaError> {
        if bindings.is_empty() {
            return Ok(Vec::new());
        }
        let n = bindings.len();
        match self.propose_raw(MetaRequest::CreateAcls(bindings)).await? {
            MetaResponse::AclsCreated(r) if r.len() == n => Ok(r),
            other => Err(unexpected("an ACL creation", &other)),
        }
    }

    /// One Raft entry deleting the ACL bindings each filter matches
    /// (DeleteAcls); resolves with, per filter in order, the bindings it
    /// matched (a binding two filters match is in both lists). No entry
    /// when `filters` is empty.
    pub async fn delete_acls(
        &self,
        filters: Vec<AclFilter>,
    ) -> Result<Vec<Vec<AclBinding>>, MetaError> {
        if filters.is_empty() {
            return Ok(Vec::new());
        }
        let n = filters.len();
        match self.propose_raw(MetaRequest::DeleteAcls(filters)).await? {
            MetaResponse::AclsDeleted(r) if r.len() == n => Ok(r),
            other => Err(unexpected("an ACL deletion", &other)),
        }
    }

    /// AlterClientQuotas: sets (`Some`) or removes (`None`) quota keys per
    /// entity; resolves with one result per entity, in order (`Ok` or
    /// `InvalidRequest`, see `validate_quota_alteration`). Entities that
    /// fail validation are answered here and left out of the entry (which
    /// is not written when none is left); the entry is checked again when
    /// applied.
    pub async fn alter_client_quotas(
        &self,
        alterations: Vec<QuotaAlteration>,
    ) -> Result<Vec<Result<(), SecurityError>>, MetaError> {
        let mut results: Vec<Result<(), SecurityError>> = alterations
            .iter()
            .map(|(entity, ops)| validate_quota_alteration(entity, ops))
            .collect();
        // Only finite values reach the log: JSON has no NaN or infinity.
        let valid: Vec<_> = alterations
            .into_iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(a, _)| a)
            .collect();
        if valid.is_empty() {
            return Ok(results);
        }
        let n = valid.len();
        let applied = match self
            .propose_raw(MetaRequest::AlterClientQuotas(valid))
            .await?
        {
            MetaResponse::QuotasAltered(r) if r.len() == n => r,
            other => return Err(unexpected("a client quota alteration", &other)),
        };
        let mut applied = applied.into_iter();
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = applied.next().expect("one result per proposed entity");
        }
        assert!(applied.next().is_none());
        Ok(results)
    }

    /// The node id of the current controller (the Raft leader), if known.
    pub fn controller(&self) -> Option<u64> {
        match self.inner.leader.load(Ordering::Acquire) {
            NO_LEADER => None,
            leader => Some(leader),
        }
    }

    /// This node serves its clients (its Kafka listeners accept): with
    /// `ClusterConfig::heartbeat_when_serving`, its heartbeats (and so its
    /// registration, unfencing and leaderships) start now. Idempotent.
    pub fn serving(&self) {
        self.inner
            .serving
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.limits.node_id
    }

    async fn propose(&self, request: MetaRequest) -> Result<Arc<TopicMeta>, MetaError> {
        match self.propose_raw(request).await? {
            MetaResponse::Topic(result) => result,
            other => Err(MetaError::Internal(format!(
                "no topic in the write response: {other:?}"
            ))),
        }
    }

    async fn propose_raw(&self, request: MetaRequest) -> Result<MetaResponse, MetaError> {
        let (reply, answer) = oneshot::channel();
        let command = Command { request, reply };
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| MetaError::ShuttingDown)?;
        answer.await.unwrap_or(Err(MetaError::ShuttingDown))
    }
}

fn unexpected(what: &str, answer: &MetaResponse) -> MetaError {
    MetaError::Internal(format!("unexpected answer to {what}: {answer:?}"))
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use futures::executor::block_on;

    use super::*;

    fn init_logs() {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }

    fn config(dir: &Path, shards: u32, per_shard: u32) -> MetaConfig {
        MetaConfig {
            data_dir: dir.to_path_buf(),
            node_id: 7,
            shards,
            partitions_per_shard_max: per_shard,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            endpoints: Vec::new(),
            cluster: None,
        }
    }

    fn start(dir: &Path, shards: u32, per_shard: u32) -> Metadata {
        init_logs();
        Metadata::start(config(dir, shards, per_shard)).expect("metadata starts")
    }

    /// Snapshots every 100 entries so snapshot and purge paths run.
    fn start_snapshotting(dir: &Path, shards: u32, per_shard: u32) -> Metadata {
        init_logs();
        let tuning = Tuning {
            snapshot_logs_since_last: 100,
            logs_kept_after_snapshot: 10,
        };
        Metadata::start_tuned(config(dir, shards, per_shard), tuning).expect("metadata starts")
    }

    fn spec(name: &str, partitions: u32) -> TopicSpec {
        let configs = BTreeMap::from([("cleanup.policy".to_string(), "delete".to_string())]);
        TopicSpec {
            name: name.to_string(),
            partitions,
            configs,
            replication_factor: 1,
            assignment: Vec::new(),
        }
    }

    fn create(meta: &Metadata, name: &str, partitions: u32) -> Result<Arc<TopicMeta>, MetaError> {
        block_on(meta.create_topic(spec(name, partitions)))
    }

    fn shards_of(topic: &TopicMeta) -> Vec<u32> {
        topic.partitions.iter().map(|p| p.shard).collect()
    }

    #[test]
    fn create_shows_in_view_with_balanced_placement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 4, 100);
        let v0 = meta.view().version;
        let a = create(&meta, "a", 6).expect("create a");
        let b = create(&meta, "b", 3).expect("create b");
        assert_eq!(shards_of(&a), vec![0, 1, 2, 3, 0, 1]);
        assert_eq!(shards_of(&b), vec![2, 3, 0]);
        assert!(a.partitions.iter().all(|p| p.leader == 7));
        assert_ne!(a.id, b.id);
        assert_eq!(a.id[6] >> 4, 4, "uuid v4");
        assert_eq!(
            a.configs.get("cleanup.policy").map(String::as_str),
            Some("delete")
        );
        let view = meta.view();
        assert_eq!(view.node_id, 7);
        assert_eq!(view.version, v0 + 2);
        assert_eq!(
            view.topics.keys().map(|k| &**k).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(view.topics["a"], a);
        let mut load = [0u32; 4];
        view.topics
            .values()
            .flat_map(|t| &t.partitions)
            .for_each(|p| load[p.shard as usize] += 1);
        assert_eq!(load, [3, 2, 2, 2]);
        meta.shutdown();
    }

    #[test]
    fn duplicate_is_rejected_before_and_in_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 2, 10);
        create(&meta, "dup", 1).expect("first");
        assert_eq!(
            create(&meta, "dup", 1),
            Err(MetaError::TopicExists("dup".into()))
        );
        // Two concurrent proposals both pass the proposer's check; apply decides.
        let (x, y) = block_on(futures::future::join(
            meta.create_topic(spec("race", 2)),
            meta.create_topic(spec("race", 2)),
        ));
        assert!(x.is_ok() != y.is_ok(), "exactly one wins: {x:?} {y:?}");
        let lost = if x.is_ok() { y } else { x };
        assert_eq!(lost, Err(MetaError::TopicExists("race".into())));
        assert_eq!(meta.view().topics["race"].partitions.len(), 2);
        meta.shutdown();
    }

    /// Consecutive views share structure: their diff (what shards apply)
    /// is exactly the entries applied in between.
    #[test]
    fn consecutive_views_differ_by_the_applied_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 2, 1000);
        for i in 0..300 {
            create(&meta, &format!("t{i:03}"), 1).expect("create");
        }
        let before = meta.view();
        create(&meta, "t150x", 2).expect("create");
        block_on(meta.delete_topic("t007")).expect("delete");
        block_on(meta.create_partitions("t200", 3)).expect("grow");
        let after = meta.view();
        let changes: Vec<String> = before
            .topics
            .diff(&after.topics)
            .map(|c| match c {
                TopicChange::Add(name, _) => format!("+{name}"),
                TopicChange::Update { new: (name, _), .. } => format!("~{name}"),
                TopicChange::Remove(name, _) => format!("-{name}"),
            })
            .collect();
        assert_eq!(changes, vec!["-t007", "+t150x", "~t200"]);
        assert_eq!(after.topics.len(), 300);
        meta.shutdown();
    }

    #[test]
    fn delete_removes_and_frees_partitions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 2, 2);
        let t = create(&meta, "gone", 4).expect("create");
        assert!(matches!(
            create(&meta, "other", 1),
            Err(MetaError::PartitionLimit { .. })
        ));
        let deleted = block_on(meta.delete_topic("gone")).expect("delete");
        assert_eq!(deleted, t);
        assert!(!meta.view().topics.contains_key("gone"));
        assert_eq!(
            block_on(meta.delete_topic("gone")),
            Err(MetaError::UnknownTopic("gone".into()))
        );
        create(&meta, "other", 4).expect("space was freed");
        meta.shutdown();
    }

    #[test]
    fn partition_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 2, 3);
        assert!(matches!(
            create(&meta, "zero", 0),
            Err(MetaError::InvalidPartitions(_))
        ));
        assert!(matches!(
            create(&meta, "huge", 7),
            Err(MetaError::InvalidPartitions(_))
        ));
        create(&meta, "four", 4).expect("four");
        let err = create(&meta, "three", 3).expect_err("over the limit");
        assert_eq!(
            err,
            MetaError::PartitionLimit {
                limit: 6,
                requested: 3
            }
        );
        assert!(err.to_string().contains("limit of 6"), "{err}");
        assert!(!meta.view().topics.contains_key("three"));
        create(&meta, "two", 2).expect("fits exactly");
        meta.shutdown();
    }

    #[test]
    fn restart_keeps_topics_and_versions_grow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 3, 10);
        create(&meta, "kept", 3).expect("create");
        create(&meta, "dropped", 1).expect("create");
        block_on(meta.delete_topic("dropped")).expect("delete");
        let before = meta.view();
        meta.shutdown();
        meta.shutdown(); // Idempotent.
        assert_eq!(create(&meta, "late", 1), Err(MetaError::ShuttingDown));

        let meta = start(dir.path(), 3, 10);
        let after = meta.view();
        assert!(
            after.version >= before.version,
            "{} >= {}",
            after.version,
            before.version
        );
        assert_eq!(after.topics, before.topics);
        let next = create(&meta, "next", 3).expect("create after restart");
        assert_eq!(
            shards_of(&next),
            vec![0, 1, 2],
            "placement state survived the restart"
        );
        assert!(meta.view().version > after.version);
        meta.shutdown();
    }

    #[test]
    fn partitions_grow_and_configs_change_through_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 2, 10);
        let t = create(&meta, "grow", 1).expect("create");
        let grown = block_on(meta.create_partitions("grow", 3)).expect("grow");
        assert_eq!(grown.id, t.id);
        assert_eq!(shards_of(&grown), vec![0, 1, 0]);
        assert!(matches!(
            block_on(meta.create_partitions("grow", 3)),
            Err(MetaError::InvalidPartitions(_))
        ));
        let configs = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
        let changed = block_on(meta.set_topic_configs("grow", configs.clone())).expect("set");
        assert_eq!(changed.configs, configs);
        assert_eq!(changed.partitions.len(), 3);
        meta.shutdown();
        let meta = start(dir.path(), 2, 10);
        let after = meta.view().topics.get("grow").cloned().expect("kept");
        assert_eq!((after.partitions.len(), &after.configs), (3, &configs));
        meta.shutdown();
    }

    #[test]
    fn producer_id_blocks_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 1, 10);
        let a = block_on(meta.reserve_producer_ids()).expect("reserve");
        let b = block_on(meta.reserve_producer_ids()).expect("reserve");
        assert!(b >= a + PRODUCER_ID_BLOCK_SIZE, "{a} then {b}");
        meta.shutdown();
        let meta = start(dir.path(), 1, 10);
        let c = block_on(meta.reserve_producer_ids()).expect("reserve after restart");
        assert!(
            c >= b + PRODUCER_ID_BLOCK_SIZE,
            "{b} then {c} after restart"
        );
        meta.shutdown();
    }

    #[test]
    fn snapshot_and_purge_survive_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start_snapshotting(dir.path(), 4, 1000);
        for i in 0..300 {
            create(&meta, &format!("t{i:03}"), 1 + i % 3).expect("create");
        }
        let before = meta.view();
        meta.shutdown();
        let raft_dir = dir.path().join("raft");
        assert!(raft_dir.join("snapshot").exists(), "a snapshot was built");
        assert!(raft_dir.join("purged").exists(), "the log was purged");
        let meta = start_snapshotting(dir.path(), 4, 1000);
        let after = meta.view();
        assert_eq!(after.topics, before.topics);
        assert!(after.version >= before.version);
        create(&meta, "after-restart", 1).expect("create");
        assert!(meta.view().version > before.version);
        meta.shutdown();
    }

    fn scram(mechanism: ScramMechanism, iterations: u32) -> ScramCredential {
        ScramCredential {
            mechanism,
            iterations,
            salt: b"salt".to_vec(),
            stored_key: vec![1; mechanism.hash_bytes()],
            server_key: vec![2; mechanism.hash_bytes()],
        }
    }

    fn read_acl(name: &str, principal: &str) -> AclBinding {
        AclBinding {
            resource_type: AclResourceType::Topic,
            resource_name: name.into(),
            pattern_type: AclPatternType::Literal,
            principal: principal.into(),
            host: "*".into(),
            operation: AclOperation::Read,
            permission: AclPermission::Allow,
        }
    }

    fn client_entity(client_id: &str) -> QuotaEntity {
        QuotaEntity {
            user: None,
            client_id: Some(QuotaName::Named(client_id.into())),
            ip: None,
        }
    }

    /// SCRAM credentials, ACLs and quotas go through the log, show in the
    /// view, and survive restarts (log replay, then a snapshot).
    #[test]
    fn security_metadata_through_the_log_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start_snapshotting(dir.path(), 1, 10);
        let v0 = meta.view().version;
        assert!(meta.view().users.is_empty() && meta.view().acls.is_empty());
        // Empty requests write nothing.
        block_on(meta.create_acls(Vec::new())).expect("no-op");
        block_on(meta.alter_scram_credentials(Vec::new(), Vec::new())).expect("no-op");
        assert_eq!(meta.view().version, v0);

        let r = block_on(meta.alter_scram_credentials(
            vec![
                ("alice".into(), scram(ScramMechanism::Sha256, 4096)),
                ("bob".into(), scram(ScramMechanism::Sha512, 4096)),
                ("bob".into(), scram(ScramMechanism::Sha512, 8192)),
            ],
            vec![("nobody".into(), ScramMechanism::Sha256)],
        ))
        .expect("alter");
        assert_eq!(r.upsertions[0], Ok(()));
        assert!(matches!(
            r.upsertions[1],
            Err(SecurityError::DuplicateResource(_))
        ));
        assert!(matches!(
            r.deletions[0],
            Err(SecurityError::ResourceNotFound(_))
        ));
        let r =
            block_on(meta.create_acls(vec![read_acl("t", "User:alice"), read_acl("", "User:x")]))
                .expect("create");
        assert!(r[0].is_ok() && matches!(r[1], Err(SecurityError::InvalidRequest(_))));
        let r = block_on(meta.alter_client_quotas(vec![
            (
                client_entity("c"),
                vec![(CONSUMER_BYTE_RATE.into(), Some(4096.0))],
            ),
            (
                client_entity("bad"),
                vec![(CONSUMER_BYTE_RATE.into(), Some(f64::INFINITY))],
            ),
            (
                client_entity("d"),
                vec![(REQUEST_PERCENTAGE.into(), Some(0.1 + 0.2))],
            ),
        ]))
        .expect("quotas");
        assert!(r[0].is_ok() && r[1].is_err() && r[2].is_ok(), "{r:?}");
        let ip = "10.1.2.3".parse().expect("ip");
        let check = |m: &Metadata| {
            let view = m.view();
            let alice = view.users.get("alice").expect("alice");
            assert_eq!(
                alice.get(ScramMechanism::Sha256).map(|c| c.iterations),
                Some(4096)
            );
            assert!(!view.users.contains_key("bob"));
            let read = |who| {
                view.acls
                    .authorize(who, ip, AclOperation::Read, AclResourceType::Topic, "t")
            };
            assert_eq!(read("User:alice"), AclDecision::Allow);
            assert_eq!(read("User:bob"), AclDecision::Deny);
            assert_eq!(
                view.quotas.resolve("u", "c", CONSUMER_BYTE_RATE),
                Some(4096.0)
            );
            assert_eq!(
                view.quotas.resolve("u", "d", REQUEST_PERCENTAGE),
                Some(0.1 + 0.2)
            );
            assert_eq!(view.quotas.len(), 2);
        };
        check(&meta);
        meta.shutdown();
        let meta = start_snapshotting(dir.path(), 1, 10);
        check(&meta);
        // Enough entries for a snapshot (every 100), then a restart from it.
        for i in 0..110 {
            let acl = read_acl(&format!("t{i}"), "User:carol");
            let r = block_on(meta.create_acls(vec![acl])).expect("create");
            assert_eq!(r, vec![Ok(())]);
        }
        let deleted = block_on(meta.delete_acls(vec![AclFilter {
            principal: Some("User:carol".into()),
            resource_name: Some("t7".into()),
            ..AclFilter::any()
        }]))
        .expect("delete");
        assert_eq!(deleted[0], vec![read_acl("t7", "User:carol")]);
        meta.shutdown();
        assert!(dir.path().join("raft").join("snapshot").exists());
        let meta = start_snapshotting(dir.path(), 1, 10);
        check(&meta);
        assert_eq!(meta.view().acls.len(), 1 + 109);
        meta.shutdown();
    }

    #[test]
    fn torn_log_tail_is_recovered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 2, 10);
        create(&meta, "first", 1).expect("create");
        create(&meta, "last", 1).expect("create");
        meta.shutdown();
        let log = dir.path().join("raft").join("log");
        let len = std::fs::metadata(&log).expect("log").len();
        // Cut into the last frame ("last"'s entry) and add garbage.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .expect("open");
        file.set_len(len - 3).expect("cut");
        drop(file);
        let mut bytes = std::fs::read(&log).expect("read");
        bytes.extend_from_slice(&[0xAB; 5]);
        std::fs::write(&log, bytes).expect("write");

        let meta = start(dir.path(), 2, 10);
        let view = meta.view();
        assert!(view.topics.contains_key("first"));
        assert!(!view.topics.contains_key("last"), "the torn entry is gone");
        create(&meta, "last", 1).expect("log accepts appends after the cut");
        meta.shutdown();
        let meta = start(dir.path(), 2, 10);
        assert_eq!(meta.view().topics.len(), 2);
        meta.shutdown();
    }

    #[test]
    fn changed_wakes_waiters_on_another_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 2, 10);
        let since = meta.view().version;
        let waiter = {
            let meta = meta.clone();
            std::thread::spawn(move || block_on(meta.changed(since)))
        };
        std::thread::sleep(Duration::from_millis(20));
        create(&meta, "wake", 1).expect("create");
        let seen = waiter.join().expect("waiter");
        assert!(seen.version > since);
        assert!(seen.topics.contains_key("wake"));
        // Already newer: resolves at once.
        assert_eq!(block_on(meta.changed(since)).version, seen.version);
        // Shutdown releases waiters.
        let waiter = {
            let meta = meta.clone();
            std::thread::spawn(move || block_on(meta.changed(u64::MAX)))
        };
        meta.shutdown();
        waiter.join().expect("released by shutdown");
    }

    #[test]
    fn lone_node_registers_itself_once_and_controls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 2, 10);
        assert_eq!(meta.controller(), Some(7));
        assert_eq!(meta.node_id(), 7);
        let view = meta.view();
        let me = view.brokers.get(&7).expect("registered");
        assert_eq!(
            (me.host.as_str(), me.port, me.fenced),
            ("127.0.0.1", 9092, false)
        );
        let version = view.version;
        assert_eq!(
            block_on(meta.create_topic(TopicSpec {
                replication_factor: 2,
                ..spec("two", 1)
            })),
            Err(MetaError::InvalidReplicationFactor {
                requested: 2,
                available: 1
            })
        );
        meta.shutdown();
        let meta = start(dir.path(), 2, 10);
        assert!(meta.view().version >= version);
        let replayed = meta.view().version;
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(meta.view().version, replayed, "no second registration");
        meta.shutdown();
        // A new advertised address is registered again.
        let mut cfg = config(dir.path(), 2, 10);
        cfg.advertised_port = 9093;
        let meta = Metadata::start(cfg).expect("starts");
        assert_eq!(meta.view().brokers[&7].port, 9093);
        meta.shutdown();
    }

    #[test]
    fn idle_node_does_no_visible_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 1, 10);
        let version = meta.view().version;
        let log_len = || {
            std::fs::metadata(dir.path().join("raft").join("log"))
                .expect("log")
                .len()
        };
        let before = log_len();
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(meta.view().version, version, "no entries while idle");
        assert_eq!(log_len(), before, "no log writes while idle");
        meta.shutdown();
    }

    #[test]
    fn timing_1000_creates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = start(dir.path(), 8, 1000);
        let mut samples_us: Vec<u64> = (0..1000)
            .map(|i| {
                let t = Instant::now();
                create(&meta, &format!("topic-{i:04}"), 3).expect("create");
                t.elapsed().as_micros() as u64
            })
            .collect();
        assert_eq!(meta.view().topics.len(), 1000);
        let t = Instant::now();
        create(&meta, "one-more", 3).expect("create");
        let last_us = t.elapsed().as_micros();
        samples_us.sort_unstable();
        let pick = |q: f64| samples_us[((samples_us.len() - 1) as f64 * q) as usize];
        println!(
            "create_topic x1000: p50 {} us, p99 {} us, max {} us; with 1000 topics: {} us",
            pick(0.50),
            pick(0.99),
            pick(1.0),
            last_us
        );
        meta.shutdown();
    }
}
