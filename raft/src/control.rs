//! The control thread: a tokio current-thread runtime running openraft and
//! serving the requests that `Metadata` handles send from any thread.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::log_store::LogStore;
use crate::network::NoNetworkFactory;
use crate::state_machine::{Placement, Published, StateMachine};
use crate::types::{MetaConfig, MetaError, MetaRequest, MetaResponse, Raft};

/// Requests queued from handles to the control thread.
pub const REQUESTS_MAX: usize = 1024;
/// Raft writes in flight at once on the control thread (openraft batches
/// them into one append + fsync).
pub const WRITES_INFLIGHT_MAX: usize = 256;
/// How long `start` waits for leadership and the replayed state machine.
pub(crate) const START_TIMEOUT_MS: u64 = 30_000;
/// Knobs that are constants in production and small in tests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// Entries between snapshots.
    pub snapshot_logs_since_last: u64,
    /// Entries kept after a snapshot (for a future lagging follower).
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
    pub commands: mpsc::Receiver<Command>,
    pub stop: oneshot::Receiver<()>,
    pub ready: std::sync::mpsc::SyncSender<Result<(), MetaError>>,
}

/// Body of the "sluice-control" thread.
pub(crate) fn run(args: ControlArgs) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            let _ = args
                .ready
                .send(Err(MetaError::Internal(format!("tokio runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(control_main(args));
}

async fn control_main(args: ControlArgs) {
    let ControlArgs {
        cfg,
        tuning,
        published,
        commands,
        stop,
        ready,
    } = args;
    let raft = match boot(&cfg, tuning, Arc::clone(&published)).await {
        Ok(raft) => raft,
        Err(e) => {
            published.close();
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    serve(&raft, commands, stop).await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "metadata: raft shutdown");
    }
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

fn raft_config(tuning: Tuning) -> Result<Arc<Config>, MetaError> {
    // Peers are refused (`network`): the group is always one voter.
    let config = Config {
        cluster_name: "sluice-metadata".to_string(),
        heartbeat_interval: SOLO_HEARTBEAT_INTERVAL_MS,
        election_timeout_min: 2 * SOLO_HEARTBEAT_INTERVAL_MS,
        election_timeout_max: 3 * SOLO_HEARTBEAT_INTERVAL_MS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: tuning.logs_kept_after_snapshot,
        ..Config::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| MetaError::Internal(format!("raft config: {e}")))
}

/// Opens storage, starts openraft, initializes a new group, and waits until
/// this node leads and has applied its whole log.
async fn boot(
    cfg: &MetaConfig,
    tuning: Tuning,
    published: Arc<Published>,
) -> Result<Raft, MetaError> {
    let dir = cfg.data_dir.join("raft");
    let storage = |e: std::io::Error| MetaError::Storage(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(storage)?;
    let (log, report) = LogStore::open(&dir).map_err(storage)?;
    let limits = Placement {
        node_id: cfg.node_id,
        shards: cfg.shards,
        partitions_per_shard_max: cfg.partitions_per_shard_max,
    };
    let sm =
        StateMachine::open(dir.clone(), limits, published, report.last_index).map_err(storage)?;
    let network = NoNetworkFactory {
        node_id: cfg.node_id,
    };
    let raft = Raft::new(cfg.node_id, raft_config(tuning)?, network, log, sm)
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
    let version = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
    tracing::info!(
        node_id = cfg.node_id,
        entries = report.entries,
        torn_bytes = report.torn_bytes,
        version,
        dir = %dir.display(),
        "metadata: raft leader ready"
    );
    Ok(raft)
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

fn internal(e: impl std::fmt::Display) -> MetaError {
    MetaError::Internal(e.to_string())
}

/// Serves commands until told to stop or every handle is gone.
async fn serve(
    raft: &Raft,
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
        let raft = raft.clone();
        tokio::spawn(async move {
            let result = write(&raft, command.request).await;
            // The asker may have gone away; nothing to do then.
            let _ = command.reply.send(result);
            drop(permit);
        });
    }
    // Queued commands are dropped: their askers see `ShuttingDown`.
    commands.close();
}

/// Proposes one entry and waits until it is committed and applied.
async fn write(raft: &Raft, request: MetaRequest) -> Result<MetaResponse, MetaError> {
    match raft.client_write(request).await {
        Ok(response) => Ok(response.data),
        Err(RaftError::Fatal(Fatal::Stopped)) => Err(MetaError::ShuttingDown),
        Err(RaftError::Fatal(Fatal::StorageError(e))) => Err(MetaError::Storage(e.to_string())),
        Err(RaftError::Fatal(e)) => Err(MetaError::Internal(e.to_string())),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(MetaError::Internal(format!("not the metadata leader: {f}")))
        }
        Err(RaftError::APIError(e)) => Err(MetaError::Internal(e.to_string())),
    }
}
