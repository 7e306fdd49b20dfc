//! The control thread: a tokio current-thread runtime running openraft and
//! serving the requests that `Metadata` handles send from any thread.
//!
//! Alone (no cluster settings) the group is this one voter: openraft's tick
//! is off, nothing runs while idle, and the node registers itself as a
//! broker once.
//!
//! In a cluster the same thread also runs:
//!
//! - the node-to-node listener (`network::serve`), answering openraft's
//!   RPCs, forwarded writes and broker heartbeats;
//! - a heartbeat task: every `heartbeat_ms` the node renews its broker
//!   lease with the controller (the Raft leader): over the network, or
//!   straight into its own lease table when it leads;
//! - a lease task that acts only on the leader: every `heartbeat_ms` it
//!   proposes `RegisterBroker` for a heartbeating broker that is unknown or
//!   has a new address, `UnfenceBroker` for a fenced one that heartbeats,
//!   and `FenceBroker` for an unfenced one silent for `lease_ms`, or for
//!   two heartbeat intervals when its Raft port refuses connections (its
//!   process is gone); a new leader gives every broker half a lease first.
//!   Heartbeat instants live
//!   in memory only; at most one proposal per broker is outstanding;
//! - a watcher of openraft's metrics that keeps `Metadata::controller`
//!   current.
//!
//! A write proposed on a node that does not lead is forwarded to the leader
//! (`FORWARDS_INFLIGHT_MAX` at once); while there is no leader it is
//! retried with backoff until `WRITE_DEADLINE_MS`, then fails with
//! `MetaError::NoQuorum`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};

use crate::log_store::LogStore;
use crate::network::{
    self, CallError, ClusterNetwork, Link, NoNetworkFactory, Reachability, Request, Response,
    Service,
};
use crate::state_machine::{Placement, Published, StateMachine};
use crate::types::{
    ClusterConfig, Endpoint, MetaConfig, MetaError, MetaRequest, MetaResponse, Raft, NO_LEADER,
};

/// Requests queued from handles to the control thread.
pub const REQUESTS_MAX: usize = 1024;
/// Raft writes in flight at once on the control thread (openraft batches
/// them into one append + fsync).
pub const WRITES_INFLIGHT_MAX: usize = 256;
/// How long a one-voter `start` waits for leadership and the replayed
/// state machine.
pub(crate) const START_TIMEOUT_MS: u64 = 30_000;
/// A cluster `start` waits without limit; it logs this often meanwhile.
pub(crate) const QUORUM_WAIT_LOG_MS: u64 = 10_000;
/// How long a write may wait for a leader and its commit, ms.
pub(crate) const WRITE_DEADLINE_MS: u64 = 10_000;
/// First and longest pause between write attempts while there is no
/// leader, ms.
pub(crate) const WRITE_BACKOFF_MIN_MS: u64 = 50;
pub(crate) const WRITE_BACKOFF_MAX_MS: u64 = 1_000;
/// Writes forwarded to the leader at once (each holds a connection).
pub(crate) const FORWARDS_INFLIGHT_MAX: usize = 8;
/// Raft timing of a cluster: heartbeat and election timeout range, ms. A
/// lost leader is replaced within about two election timeouts.
pub(crate) const RAFT_HEARTBEAT_MS: u64 = 200;
pub(crate) const RAFT_ELECTION_MIN_MS: u64 = 800;
pub(crate) const RAFT_ELECTION_MAX_MS: u64 = 1_300;
/// Bound of one snapshot chunk's transfer, ms.
pub(crate) const RAFT_SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 5_000;
/// Longest host name accepted in a heartbeat.
const HOST_MAX: usize = 255;

/// Knobs that are constants in production and small in tests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// Entries between snapshots.
    pub snapshot_logs_since_last: u64,
    /// Entries kept after a snapshot (for a lagging follower).
    /// With the above, this bounds the in-memory log.
    pub logs_kept_after_snapshot: u64,
}

impl Tuning {
    pub(crate) const DEFAULT: Tuning = Tuning {
        snapshot_logs_since_last: 2000,
        logs_kept_after_snapshot: 200,
    };
}

pub(crate) type Reply = oneshot::Sender<Result<MetaResponse, MetaError>>;

/// A request from a handle: the log entry to propose and where to answer.
pub(crate) struct Command {
    pub request: MetaRequest,
    pub reply: Reply,
}

/// Everything the control thread needs, moved into it.
pub(crate) struct ControlArgs {
    pub cfg: MetaConfig,
    pub tuning: Tuning,
    pub published: Arc<Published>,
    /// The current Raft leader's id, `NO_LEADER` when none is known.
    pub leader: Arc<AtomicU64>,
    /// Set by `Metadata::serving`; heartbeats wait for it when the cluster
    /// config asks so.
    pub serving: Arc<std::sync::atomic::AtomicBool>,
    pub commands: mpsc::Receiver<Command>,
    pub stop: oneshot::Receiver<()>,
    pub ready: std::sync::mpsc::SyncSender<Result<(), MetaError>>,
}

/// Body of the "sluice-control" thread.
pub(crate) fn run(args: ControlArgs) {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time();
    if args.cfg.cluster.is_some() {
        builder.enable_io();
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = args
                .ready
                .send(Err(MetaError::Internal(format!("tokio runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(control_main(args));
    // Dropping the runtime ends the listener and every connection.
}

async fn control_main(args: ControlArgs) {
    let ControlArgs {
        cfg,
        tuning,
        published,
        leader,
        serving,
        commands,
        stop,
        ready,
    } = args;
    let node = match boot(
        &cfg,
        tuning,
        Arc::clone(&published),
        Arc::clone(&leader),
        serving,
    )
    .await
    {
        Ok(node) => node,
        Err(e) => {
            published.close();
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    serve(&node, commands, stop).await;
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!(error = %e, "metadata: raft shutdown");
    }
    leader.store(NO_LEADER, Ordering::Release);
    published.close();
    tracing::info!(node_id = cfg.node_id, "metadata: control thread stopped");
}

/// Heartbeat interval of the one-voter group, ms. openraft 0.9's tick loop
/// wakes every 1.5 heartbeat intervals even with the tick disabled (measured:
/// 55 voluntary context switches of `sluice-control` in 10 idle seconds at
/// 250 ms). A lone voter sends no heartbeats and needs no election timeout:
/// `initialize` elects it at once, and at restart openraft restores a node
/// whose committed vote is its own as leader at once (`Engine::startup`),
/// so restart time does not depend on these intervals.
const SOLO_HEARTBEAT_INTERVAL_MS: u64 = 3_600_000;

fn raft_config(tuning: Tuning, cluster: bool) -> Result<Arc<Config>, MetaError> {
    let config = if cluster {
        Config {
            cluster_name: "sluice-metadata".to_string(),
            heartbeat_interval: RAFT_HEARTBEAT_MS,
            election_timeout_min: RAFT_ELECTION_MIN_MS,
            election_timeout_max: RAFT_ELECTION_MAX_MS,
            install_snapshot_timeout: RAFT_SNAPSHOT_CHUNK_TIMEOUT_MS,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: tuning.logs_kept_after_snapshot,
            ..Config::default()
        }
    } else {
        Config {
            cluster_name: "sluice-metadata".to_string(),
            heartbeat_interval: SOLO_HEARTBEAT_INTERVAL_MS,
            election_timeout_min: 2 * SOLO_HEARTBEAT_INTERVAL_MS,
            election_timeout_max: 3 * SOLO_HEARTBEAT_INTERVAL_MS,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: tuning.logs_kept_after_snapshot,
            ..Config::default()
        }
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| MetaError::Internal(format!("raft config: {e}")))
}

/// The control thread's state, shared by its tasks.
struct Node {
    node_id: u64,
    raft: Raft,
    published: Arc<Published>,
    cluster: Option<Cluster>,
}

/// The cluster side of a node.
struct Cluster {
    cfg: ClusterConfig,
    advertised_host: String,
    advertised_port: u16,
    endpoints: Vec<Endpoint>,
    reachability: Arc<Reachability>,
    /// Bounds the writes forwarded to the leader at once.
    forwards: Semaphore,
    /// Idle connections for forwarded writes (at most
    /// `FORWARDS_INFLIGHT_MAX`, all to the latest leader written to).
    idle_links: Mutex<Vec<Link>>,
    leases: Mutex<Leases>,
    /// Heartbeats are sent only while true.
    serving: Arc<std::sync::atomic::AtomicBool>,
}

/// The controller's lease table (meaningful on the leader only).
#[derive(Default)]
struct Leases {
    /// Last heartbeat of each broker since this node last became leader.
    heard: BTreeMap<u64, Heard>,
    /// Brokers with a proposal outstanding.
    proposing: BTreeSet<u64>,
}

struct Heard {
    at: Instant,
    host: String,
    port: u16,
    endpoints: Vec<Endpoint>,
}

/// Listeners a heartbeat may announce (more are not a real node's).
const ENDPOINTS_MAX: usize = 32;

fn internal(e: impl std::fmt::Display) -> MetaError {
    MetaError::Internal(e.to_string())
}

/// Opens storage, starts openraft, initializes a new group, starts the
/// cluster tasks, and waits until a leader is known and this node applied
/// its log.
async fn boot(
    cfg: &MetaConfig,
    tuning: Tuning,
    published: Arc<Published>,
    leader: Arc<AtomicU64>,
    serving: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Arc<Node>, MetaError> {
    if let Some(cluster) = &cfg.cluster {
        if !cluster.voters.contains_key(&cfg.node_id) {
            return Err(MetaError::Internal(format!(
                "node {} is not one of the voters {:?}",
                cfg.node_id,
                cluster.voters.keys().collect::<Vec<_>>()
            )));
        }
    }
    let dir = cfg.data_dir.join("raft");
    let storage = |e: std::io::Error| MetaError::Storage(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(storage)?;
    let (log, report) = LogStore::open(&dir).map_err(storage)?;
    let limits = Placement {
        node_id: cfg.node_id,
        shards: cfg.shards,
        partitions_per_shard_max: cfg.partitions_per_shard_max,
    };
    let sm = StateMachine::open(
        dir.clone(),
        limits,
        Arc::clone(&published),
        report.last_index,
    )
    .map_err(storage)?;
    let node = match &cfg.cluster {
        None => boot_alone(cfg, tuning, log, sm, published).await?,
        Some(cluster) => boot_cluster(cfg, cluster, tuning, log, sm, published, serving).await?,
    };
    watch_leader(&node.raft, leader);
    let version = node
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |l| l.index);
    tracing::info!(
        node_id = cfg.node_id,
        entries = report.entries,
        torn_bytes = report.torn_bytes,
        version,
        leader = ?node.raft.metrics().borrow().current_leader,
        dir = %dir.display(),
        "metadata: ready"
    );
    Ok(node)
}

async fn boot_alone(
    cfg: &MetaConfig,
    tuning: Tuning,
    log: LogStore,
    sm: StateMachine,
    published: Arc<Published>,
) -> Result<Arc<Node>, MetaError> {
    let network = NoNetworkFactory {
        node_id: cfg.node_id,
    };
    let raft = Raft::new(cfg.node_id, raft_config(tuning, false)?, network, log, sm)
        .await
        .map_err(internal)?;
    if !raft.is_initialized().await.map_err(internal)? {
        let members = BTreeMap::from([(cfg.node_id, BasicNode::default())]);
        raft.initialize(members).await.map_err(internal)?;
        tracing::info!(
            node_id = cfg.node_id,
            "metadata: new one-voter raft group initialized"
        );
    }
    wait_ready(&raft, cfg.node_id).await?;
    quiet_if_alone(&raft, cfg.node_id);
    let node = Arc::new(Node {
        node_id: cfg.node_id,
        raft,
        published,
        cluster: None,
    });
    register_self(&node, cfg).await?;
    Ok(node)
}

/// A lone voter is its own controller: it registers itself as a broker
/// once (again only if its advertised address changed).
async fn register_self(node: &Node, cfg: &MetaConfig) -> Result<(), MetaError> {
    let registered = node
        .published
        .view()
        .brokers
        .get(&cfg.node_id)
        .is_some_and(|b| {
            b.host == cfg.advertised_host
                && b.port == cfg.advertised_port
                && b.endpoints == cfg.endpoints
                && !b.fenced
        });
    if registered {
        return Ok(());
    }
    let request = MetaRequest::RegisterBroker {
        id: cfg.node_id,
        host: cfg.advertised_host.clone(),
        port: cfg.advertised_port,
        endpoints: cfg.endpoints.clone(),
    };
    match write(node, request).await? {
        MetaResponse::Done(result) => result,
        other => Err(MetaError::Internal(format!(
            "unexpected answer to a broker registration: {other:?}"
        ))),
    }
}

async fn boot_cluster(
    cfg: &MetaConfig,
    cluster: &ClusterConfig,
    tuning: Tuning,
    log: LogStore,
    sm: StateMachine,
    published: Arc<Published>,
    serving: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Arc<Node>, MetaError> {
    let listener = tokio::net::TcpListener::bind(cluster.listen)
        .await
        .map_err(|e| MetaError::Internal(format!("cluster listener {}: {e}", cluster.listen)))?;
    let reachability = Arc::new(Reachability::default());
    let network = ClusterNetwork {
        node_id: cfg.node_id,
        voters: Arc::new(cluster.voters.clone()),
        reachability: Arc::clone(&reachability),
        tls: cluster.tls.clone(),
    };
    let raft = Raft::new(cfg.node_id, raft_config(tuning, true)?, network, log, sm)
        .await
        .map_err(internal)?;
    let node = Arc::new(Node {
        node_id: cfg.node_id,
        raft: raft.clone(),
        published,
        cluster: Some(Cluster {
            cfg: cluster.clone(),
            advertised_host: cfg.advertised_host.clone(),
            advertised_port: cfg.advertised_port,
            endpoints: cfg.endpoints.clone(),
            reachability,
            forwards: Semaphore::new(FORWARDS_INFLIGHT_MAX),
            idle_links: Mutex::new(Vec::new()),
            leases: Mutex::new(Leases::default()),
            serving,
        }),
    });
    let service: Arc<dyn Service> = Arc::new(PeerService {
        node: Arc::clone(&node),
    });
    tokio::spawn(network::serve(
        listener,
        cfg.node_id,
        service,
        cluster.tls.clone(),
    ));
    tracing::info!(node_id = cfg.node_id, listen = %cluster.listen, voters = ?cluster.voters, "metadata: cluster listener up");
    let voters: BTreeMap<u64, BasicNode> = cluster
        .voters
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    if raft.is_initialized().await.map_err(internal)? {
        let configured: Vec<u64> = voters.keys().copied().collect();
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let stored: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        if stored != configured {
            tracing::warn!(?stored, ?configured, "metadata: the stored voters differ from the configured ones; the stored ones are used");
        }
    } else if joined_by_a_leader(&raft).await {
        tracing::info!(
            node_id = cfg.node_id,
            "metadata: joined the existing raft group"
        );
    } else {
        // Safe on every node: each proposes the same membership as entry 0.
        match raft.initialize(voters).await {
            Ok(()) => tracing::info!(
                node_id = cfg.node_id,
                "metadata: new raft group initialized"
            ),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::debug!(error = %e, "metadata: already joined a group")
            }
            Err(e) => return Err(internal(e)),
        }
    }
    tokio::spawn(heartbeat_loop(Arc::clone(&node)));
    tokio::spawn(lease_loop(Arc::clone(&node)));
    wait_quorum(&node).await?;
    Ok(node)
}

/// A new node first gives a group that already runs one election timeout
/// to reach it: initializing starts an election at once, which would
/// depose a working leader. True if a leader brought it in meanwhile.
async fn joined_by_a_leader(raft: &Raft) -> bool {
    let joined = raft
        .wait(Some(Duration::from_millis(RAFT_ELECTION_MAX_MS)))
        .metrics(
            |m| m.current_leader.is_some() || m.last_log_index.is_some(),
            "replicated to by a leader",
        )
        .await;
    joined.is_ok()
}

async fn wait_ready(raft: &Raft, node_id: u64) -> Result<(), MetaError> {
    let timeout = Duration::from_millis(START_TIMEOUT_MS);
    let ready = raft
        .wait(Some(timeout))
        .metrics(
            |m| {
                m.current_leader == Some(node_id)
                    && m.last_applied.is_some()
                    && m.last_applied.map(|l| l.index) == m.last_log_index
            },
            "leader with the log applied",
        )
        .await;
    ready
        .map(|_| ())
        .map_err(|e| MetaError::Internal(format!("metadata start: {e}")))
}

/// Waits, without limit, until a leader is known and this node applied
/// its log; logs once per `QUORUM_WAIT_LOG_MS` meanwhile.
async fn wait_quorum(node: &Node) -> Result<(), MetaError> {
    let Some(cluster) = &node.cluster else {
        return Ok(());
    };
    loop {
        let ready = node
            .raft
            .wait(Some(Duration::from_millis(QUORUM_WAIT_LOG_MS)))
            .metrics(
                |m| {
                    m.current_leader.is_some()
                        && m.last_applied.is_some()
                        && m.last_applied.map(|l| l.index) == m.last_log_index
                },
                "a leader known and the log applied",
            )
            .await;
        match ready {
            Ok(_) => return Ok(()),
            Err(WaitError::Timeout(..)) => {
                let reachable = 1 + cluster.reachability.answering();
                tracing::info!(
                    node_id = node.node_id,
                    "waiting for a metadata quorum: {reachable} of {} voters reachable",
                    cluster.cfg.voters.len()
                );
            }
            Err(WaitError::ShuttingDown) => return Err(MetaError::ShuttingDown),
        }
    }
}

/// A lone voter that leads has nothing to time out: no peers to heartbeat,
/// no election to start. Turning openraft's tick off keeps an idle node
/// idle (openraft's tick timer still wakes, but does no work and logs
/// nothing). A group with other voters keeps ticking.
fn quiet_if_alone(raft: &Raft, node_id: u64) {
    let alone = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().voter_ids().eq([node_id])
    };
    if alone {
        raft.runtime_config().tick(false);
        tracing::debug!(node_id, "metadata: one-voter group, raft tick disabled");
    }
}

/// Keeps `leader` equal to openraft's current leader.
fn watch_leader(raft: &Raft, leader: Arc<AtomicU64>) {
    let mut metrics = raft.metrics();
    // Current before `start` returns, not only once the task first runs.
    let current = metrics.borrow().current_leader;
    leader.store(current.unwrap_or(NO_LEADER), Ordering::Release);
    tokio::spawn(async move {
        loop {
            let (current, term) = {
                let m = metrics.borrow_and_update();
                (m.current_leader, m.current_term)
            };
            let before = leader.swap(current.unwrap_or(NO_LEADER), Ordering::AcqRel);
            if before != current.unwrap_or(NO_LEADER) {
                match current {
                    Some(id) => {
                        tracing::info!(controller = id, term, "metadata: controller elected")
                    }
                    None => tracing::info!(term, "metadata: no controller; election under way"),
                }
            }
            if metrics.changed().await.is_err() {
                leader.store(NO_LEADER, Ordering::Release);
                return;
            }
        }
    });
}

/// Serves commands until told to stop or every handle is gone.
async fn serve(
    node: &Arc<Node>,
    mut commands: mpsc::Receiver<Command>,
    mut stop: oneshot::Receiver<()>,
) {
    let inflight = Arc::new(Semaphore::new(WRITES_INFLIGHT_MAX));
    loop {
        let command = tokio::select! {
            _ = &mut stop => break,
            command = commands.recv() => match command {
                Some(command) => command,
                None => break,
            },
        };
        let Ok(permit) = Arc::clone(&inflight).acquire_owned().await else {
            break;
        };
        let node = Arc::clone(node);
        tokio::spawn(async move {
            let result = write(&node, command.request).await;
            // The asker may have gone away; nothing to do then.
            let _ = command.reply.send(result);
            drop(permit);
        });
    }
    // Queued commands are dropped: their askers see `ShuttingDown`.
    commands.close();
}

fn no_quorum_in_time() -> MetaError {
    MetaError::NoQuorum(format!(
        "the change was not committed within {WRITE_DEADLINE_MS} ms"
    ))
}

/// Proposes one entry and waits until it is committed and applied: here
/// when this node leads, else forwarded to the leader; retried with
/// backoff while no leader is known, until `WRITE_DEADLINE_MS`.
async fn write(node: &Node, request: MetaRequest) -> Result<MetaResponse, MetaError> {
    let deadline = Instant::now() + Duration::from_millis(WRITE_DEADLINE_MS);
    let mut backoff = Duration::from_millis(WRITE_BACKOFF_MIN_MS);
    loop {
        let attempt = tokio::time::timeout_at(deadline, node.raft.client_write(request.clone()))
            .await
            .map_err(|_| no_quorum_in_time())?;
        match attempt {
            Ok(response) => return Ok(response.data),
            Err(RaftError::Fatal(Fatal::Stopped)) => return Err(MetaError::ShuttingDown),
            Err(RaftError::Fatal(Fatal::StorageError(e))) => {
                return Err(MetaError::Storage(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => return Err(MetaError::Internal(e.to_string())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let Some(cluster) = &node.cluster else {
                    return Err(MetaError::Internal(format!("not the metadata leader: {f}")));
                };
                if let Some(leader) = f.leader_id.filter(|l| *l != node.node_id) {
                    if let Some(result) = forward(node, cluster, leader, &request, deadline).await {
                        return result;
                    }
                }
            }
            Err(RaftError::APIError(e)) => return Err(MetaError::Internal(e.to_string())),
        }
        if Instant::now() + backoff >= deadline {
            return Err(MetaError::NoQuorum(format!(
                "no metadata leader answered within {WRITE_DEADLINE_MS} ms"
            )));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(WRITE_BACKOFF_MAX_MS));
    }
}

/// Sends a write to the leader. `None`: it was not taken (the leader was
/// unreachable or no longer leads): try again.
async fn forward(
    node: &Node,
    cluster: &Cluster,
    leader: u64,
    request: &MetaRequest,
    deadline: Instant,
) -> Option<Result<MetaResponse, MetaError>> {
    let addr = cluster.cfg.voters.get(&leader)?.clone();
    let _permit = tokio::time::timeout_at(deadline, cluster.forwards.acquire())
        .await
        .ok()?
        .ok()?;
    let mut link = {
        let mut idle = cluster.idle_links.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|l| l.to() == leader);
        idle.pop()
    }
    .unwrap_or_else(|| Link::new(node.node_id, leader, addr, cluster.cfg.tls.clone()));
    let ttl = deadline.saturating_duration_since(Instant::now());
    let answer = link.call(Request::ClientWrite(request.clone()), ttl).await;
    let result = match answer {
        Ok(Response::Written(result)) => Some(result),
        Ok(Response::NotLeader(_)) => None,
        Ok(other) => Some(Err(MetaError::Internal(format!(
            "node {leader} answered a forwarded write with {other:?}"
        )))),
        Err(CallError::NotSent { source, .. }) => {
            tracing::debug!(leader, error = %source, "metadata: write not forwarded");
            return None;
        }
        Err(CallError::NoAnswer { source, .. }) => {
            return Some(Err(MetaError::NoQuorum(format!(
                "the metadata leader (node {leader}) did not answer ({source}); the change may or may not be applied"
            ))));
        }
    };
    let mut idle = cluster.idle_links.lock().unwrap_or_else(|p| p.into_inner());
    if idle.len() < FORWARDS_INFLIGHT_MAX {
        idle.push(link);
    }
    result
}

/// Whether this node leads now.
fn leads(node: &Node) -> bool {
    let metrics = node.raft.metrics();
    let m = metrics.borrow();
    m.current_leader == Some(node.node_id) && m.state == ServerState::Leader
}

/// The controller side of a heartbeat.
fn heard(node: &Node, cluster: &Cluster, id: u64, announced: Heard) -> Response {
    if !leads(node) {
        return Response::NotLeader(node.raft.metrics().borrow().current_leader);
    }
    let oversized = announced.host.len() > HOST_MAX
        || announced.endpoints.len() > ENDPOINTS_MAX
        || announced
            .endpoints
            .iter()
            .any(|e| e.host.len() > HOST_MAX || e.listener.len() > HOST_MAX);
    if !cluster.cfg.voters.contains_key(&id) || oversized {
        tracing::debug!(
            id,
            oversized,
            "metadata: heartbeat from a node that is not a voter, or with oversized addresses; ignored"
        );
        return Response::NotLeader(None);
    }
    let mut leases = cluster.leases.lock().unwrap_or_else(|p| p.into_inner());
    leases.heard.insert(id, announced);
    Response::HeartbeatOk
}

/// Renews this node's lease every `heartbeat_ms`.
async fn heartbeat_loop(node: Arc<Node>) {
    let Some(cluster) = &node.cluster else {
        return;
    };
    let period = Duration::from_millis(cluster.cfg.heartbeat_ms.max(1));
    let ttl = Duration::from_millis(cluster.cfg.lease_ms.max(cluster.cfg.heartbeat_ms).max(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut link: Option<Link> = None;
    loop {
        tick.tick().await;
        if !cluster.serving.load(Ordering::Acquire) {
            continue;
        }
        let leader = node.raft.metrics().borrow().current_leader;
        let Some(leader) = leader else {
            continue;
        };
        let host = cluster.advertised_host.clone();
        let port = cluster.advertised_port;
        let endpoints = cluster.endpoints.clone();
        if leader == node.node_id {
            let announced = Heard {
                at: Instant::now(),
                host,
                port,
                endpoints,
            };
            heard(&node, cluster, node.node_id, announced);
            continue;
        }
        let Some(addr) = cluster.cfg.voters.get(&leader) else {
            continue;
        };
        if link.as_ref().map(Link::to) != Some(leader) {
            link = Some(Link::new(
                node.node_id,
                leader,
                addr.clone(),
                cluster.cfg.tls.clone(),
            ));
        }
        let Some(link) = link.as_mut() else {
            continue;
        };
        let request = Request::BrokerHeartbeat {
            id: node.node_id,
            host,
            port,
            endpoints,
        };
        match link.call(request, ttl).await {
            Ok(Response::HeartbeatOk) => {}
            Ok(answer) => tracing::debug!(leader, ?answer, "metadata: heartbeat not taken"),
            Err(e) => tracing::debug!(leader, error = %e, "metadata: heartbeat failed"),
        }
    }
}

/// On the leader: registers, unfences and fences brokers by their leases.
async fn lease_loop(node: Arc<Node>) {
    let Some(cluster) = &node.cluster else {
        return;
    };
    let lease = Duration::from_millis(cluster.cfg.lease_ms);
    let heartbeat = Duration::from_millis(cluster.cfg.heartbeat_ms.max(1));
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut leading_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        if !leads(&node) {
            if leading_since.take().is_some() {
                let mut leases = cluster.leases.lock().unwrap_or_else(|p| p.into_inner());
                leases.heard.clear();
            }
            continue;
        }
        // A new leader gives every broker half a lease: a live broker
        // learns of the new leader from its first AppendEntries and
        // heartbeats it within one interval, while a broker that died with
        // the old leader is fenced sooner than after a whole new lease.
        let since = *leading_since.get_or_insert_with(|| {
            let now = Instant::now();
            now.checked_sub(lease / 2).unwrap_or(now)
        });
        let now = Instant::now();
        let view = node.published.view();
        let mut proposals = Vec::new();
        {
            let mut leases = cluster.leases.lock().unwrap_or_else(|p| p.into_inner());
            for &id in cluster.cfg.voters.keys() {
                if leases.proposing.contains(&id) {
                    continue;
                }
                let last = leases.heard.get(&id);
                let heard_at = last.map_or(since, |h| h.at.max(since));
                let silent = now.duration_since(heard_at);
                // A node whose Raft port refuses connections is gone
                // (killed, or restarting): its lease ends after two missed
                // heartbeats instead of a whole lease.
                let gone = id != node.node_id
                    && cluster.reachability.refused(id)
                    && silent >= 2 * heartbeat;
                let fresh = last.filter(|h| now.duration_since(h.at) < lease && !gone);
                let request = match (fresh, view.brokers.get(&id)) {
                    (Some(h), None) => Some(MetaRequest::RegisterBroker {
                        id,
                        host: h.host.clone(),
                        port: h.port,
                        endpoints: h.endpoints.clone(),
                    }),
                    (Some(h), Some(b))
                        if b.host != h.host || b.port != h.port || b.endpoints != h.endpoints =>
                    {
                        Some(MetaRequest::RegisterBroker {
                            id,
                            host: h.host.clone(),
                            port: h.port,
                            endpoints: h.endpoints.clone(),
                        })
                    }
                    (Some(_), Some(b)) if b.fenced => Some(MetaRequest::UnfenceBroker { id }),
                    (None, Some(b)) if !b.fenced => {
                        (silent >= lease || gone).then_some(MetaRequest::FenceBroker { id })
                    }
                    _ => None,
                };
                if let Some(request) = request {
                    leases.proposing.insert(id);
                    proposals.push((id, request));
                }
            }
        }
        for (id, request) in proposals {
            let node = Arc::clone(&node);
            tokio::spawn(async move {
                tracing::debug!(?request, "metadata: lease change proposed");
                let result = tokio::time::timeout(
                    Duration::from_millis(WRITE_DEADLINE_MS),
                    node.raft.client_write(request),
                )
                .await;
                match result {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(id, error = %e, "metadata: lease change not written")
                    }
                    Err(_) => tracing::debug!(id, "metadata: lease change not committed in time"),
                }
                if let Some(cluster) = &node.cluster {
                    let mut leases = cluster.leases.lock().unwrap_or_else(|p| p.into_inner());
                    leases.proposing.remove(&id);
                }
            });
        }
    }
}

/// Answers the other nodes.
struct PeerService {
    node: Arc<Node>,
}

impl Service for PeerService {
    fn handle(&self, _from: u64, request: Request) -> BoxFuture<'static, Response> {
        let node = Arc::clone(&self.node);
        Box::pin(async move {
            let raft = &node.raft;
            match request {
                Request::AppendEntries(rpc) => {
                    Response::AppendEntries(raft.append_entries(rpc).await)
                }
                Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
                Request::InstallSnapshot(rpc) => {
                    Response::InstallSnapshot(raft.install_snapshot(rpc).await)
                }
                Request::ClientWrite(request) => {
                    let written = tokio::time::timeout(
                        Duration::from_millis(WRITE_DEADLINE_MS),
                        raft.client_write(request),
                    )
                    .await;
                    match written {
                        Err(_) => Response::Written(Err(no_quorum_in_time())),
                        Ok(Ok(response)) => Response::Written(Ok(response.data)),
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                            Response::NotLeader(f.leader_id)
                        }
                        Ok(Err(RaftError::Fatal(Fatal::Stopped))) => {
                            Response::Written(Err(MetaError::ShuttingDown))
                        }
                        Ok(Err(e)) => Response::Written(Err(internal(e))),
                    }
                }
                Request::BrokerHeartbeat {
                    id,
                    host,
                    port,
                    endpoints,
                } => match &node.cluster {
                    Some(cluster) => {
                        let announced = Heard {
                            at: Instant::now(),
                            host,
                            port,
                            endpoints,
                        };
                        heard(&node, cluster, id, announced)
                    }
                    None => Response::NotLeader(None),
                },
            }
        })
    }
}
