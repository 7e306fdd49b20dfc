//! Start-up and shutdown of a node.
//!
//! Order: TLS material -> metadata (control thread) -> bootstrap users ->
//! shard mesh -> one OS thread per shard running a glommio `LocalExecutor`
//! (start the shard, bind every Kafka listener with SO_REUSEPORT, accept)
//! -> admin HTTP thread -> one `info` line when ready. SIGTERM/SIGINT:
//! every shard stops accepting and closes its data plane (WAL close), the
//! admin server and the control thread stop, and the process exits 0.
//! SIGHUP reloads the TLS certificate and key (new connections get them).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::future::{select, Either};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use sluice_raft::{ClusterConfig, MetaConfig, Metadata};
use sluice_shard::RecoveryProgress;
use tokio::sync::watch;

use crate::admin::AdminState;
use crate::config::{cores, Settings};
use crate::connection::{self, ConnLimits};
use crate::handlers::{Ctx, NodeInfo};
use crate::markers::MarkerSender;
use crate::plane::{self, Shard, ShardMesh, WarnLimiter};
use crate::probe::{self, ProbeServer};
use crate::replica::{self, ReplicaFetcher};
use crate::security::{self, Security, Session};

/// Shortest time between two "connection limit" warnings of one shard.
const REFUSAL_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Connections refused for a `connection_creation_rate` quota that a shard
/// holds at once until their delayed close (one file descriptor each).
const DELAYED_CLOSES_MAX: usize = 512;
/// The longest a refused connection is held before it is closed.
const DELAYED_CLOSE_MAX: Duration = Duration::from_secs(10);

/// A shard's Kafka connections: how many are open, how many were refused
/// at accept for `--connections-per-shard-max`. Shard-local (one executor).
#[derive(Debug)]
pub struct Connections {
    open: Cell<usize>,
    refused: Cell<u64>,
    warnings: WarnLimiter,
    /// TLS handshakes that failed or timed out.
    pub tls_failed: Cell<u64>,
    /// Open connections per peer IP (entries of IPs with none are
    /// removed: bounded by the open connections).
    per_ip: std::cell::RefCell<std::collections::HashMap<std::net::IpAddr, u32>>,
    /// New connections per IP under a `connection_creation_rate` quota.
    creation_rates: crate::security::quota::ConnectionRates,
    /// Refused connections held open until their delayed close.
    closing: Cell<usize>,
    tls_warnings: WarnLimiter,
    /// Connections closed for bad input or a deadline, by reason.
    pub closes: connection::Closes,
}

impl Connections {
    fn new(creation_rates: crate::security::quota::ConnectionRates) -> Connections {
        Connections {
            open: Cell::new(0),
            refused: Cell::new(0),
            warnings: WarnLimiter::new(REFUSAL_WARN_INTERVAL),
            tls_failed: Cell::new(0),
            per_ip: Default::default(),
            creation_rates,
            closing: Cell::new(0),
            tls_warnings: WarnLimiter::new(REFUSAL_WARN_INTERVAL),
            closes: connection::Closes::default(),
        }
    }

    pub fn open(&self) -> u64 {
        self.open.get() as u64
    }

    /// Counts a connection from `ip` unless `max` are open already.
    fn admit_ip(&self, ip: std::net::IpAddr, max: u32) -> bool {
        let mut per_ip = self.per_ip.borrow_mut();
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return false;
        }
        *n += 1;
        true
    }

    fn release_ip(&self, ip: std::net::IpAddr) {
        let mut per_ip = self.per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    /// Connections refused at accept since start.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }

    /// Counts a refusal for `--max-connections-per-ip`, with a warning at
    /// most once per `REFUSAL_WARN_INTERVAL`.
    fn refuse_ip(&self, shard: u32, limit: u32, peer: &str) {
        self.refused.set(self.refused.get() + 1);
        if let Some(earlier) = self.warnings.due() {
            tracing::warn!(
                shard,
                peer,
                limit,
                refused = earlier + 1,
                "connections per IP limit reached: closed a new connection at accept (--max-connections-per-ip)"
            );
        }
    }

    /// Counts a refusal for an IP's `connection_creation_rate` quota, with a
    /// warning at most once per `REFUSAL_WARN_INTERVAL`.
    fn refuse_rate(&self, shard: u32, peer: &str) {
        self.refused.set(self.refused.get() + 1);
        if let Some(earlier) = self.warnings.due() {
            tracing::warn!(
                shard,
                peer,
                refused = earlier + 1,
                "connection_creation_rate quota of the client's IP reached: a new connection is closed after its throttle time"
            );
        }
    }

    /// Closes a connection refused for its IP's `connection_creation_rate`
    /// once `delay` is over, as Kafka does, so that a client reconnecting
    /// at once is paced by its quota instead of spinning. Nothing is read
    /// from it. At most `DELAYED_CLOSES_MAX` are held per shard (each holds
    /// a file descriptor); beyond that, and at shutdown, they close at once.
    fn close_after(self: &Rc<Self>, stream: glommio::net::TcpStream, delay: Duration) {
        if self.closing.get() >= DELAYED_CLOSES_MAX {
            return;
        }
        self.closing.set(self.closing.get() + 1);
        let conns = Rc::clone(self);
        glommio::spawn_local(async move {
            glommio::timer::sleep(delay.min(DELAYED_CLOSE_MAX)).await;
            drop(stream);
            conns.closing.set(conns.closing.get() - 1);
        })
        .detach();
    }

    /// Counts one refusal; warns at most once per `REFUSAL_WARN_INTERVAL`,
    /// with the number of refusals since the previous warning.
    fn refuse(&self, shard: u32, limit: usize, peer: &str) {
        self.refused.set(self.refused.get() + 1);
        let Some(earlier) = self.warnings.due() else {
            tracing::debug!(
                shard,
                peer,
                "connection limit reached; closing new connection"
            );
            return;
        };
        // This refusal and the ones left out since the previous warning.
        let refused = earlier + 1;
        tracing::warn!(
            shard,
            peer,
            limit,
            refused,
            "connection limit reached: closed new connections at accept (raise --connections-per-shard-max)"
        );
    }
}

/// Runs a node until SIGTERM/SIGINT.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("--data-dir: cannot create {}", settings.data_dir.display()))?;
    for listener in &settings.listeners {
        probe_listen(listener.addr)?;
    }
    let security = Arc::new(settings.security()?);
    if settings.admin_tls && security.tls.is_none() {
        bail!("--admin-tls: no TLS certificate loaded (--tls-cert-file, --tls-key-file)");
    }
    let admin_token =
        crate::admin::token(settings.admin_token_file.as_deref(), settings.admin_listen)?;
    let admin_listener = crate::admin::bind(settings.admin_listen)?;
    let (stop_tx, _stop_rx) = watch::channel(false);
    handle_signals(stop_tx.clone(), Arc::clone(&security))?;
    if let Some(cluster) = &settings.cluster {
        if settings.authorizer.is_some() && !settings.cluster_tls {
            tracing::warn!(
                cluster_listen = %cluster.listen,
                "--authorizer is on but --cluster-tls is off: whatever reaches --cluster-listen can write metadata (users, ACLs); keep that port on a private network or turn --cluster-tls on"
            );
        }
        let plain_password = settings.inter_broker_sasl.as_ref().is_some_and(|creds| {
            creds.mechanism == crate::sasl::Mechanism::Plain && !settings.inter_broker_tls
        });
        if plain_password {
            tracing::warn!(
                "--inter-broker-sasl-mechanism PLAIN on a SASL_PLAINTEXT inter-broker listener sends the inter-broker user's password in clear to whatever answers at the other nodes' addresses: use SCRAM or SASL_SSL"
            );
        }
        tracing::info!(
            node_id = settings.node_id,
            cluster_listen = %cluster.listen,
            voters = cluster.voters.len(),
            cluster_tls = settings.cluster_tls,
            "waiting for a metadata quorum"
        );
    }
    crate::systemd::status("starting: reading the metadata log");
    let meta = Metadata::start(meta_config(&settings, &security))
        .context("starting the metadata service")?;
    let result = crate::users::bootstrap(&settings, &meta).and_then(|()| {
        serve(
            &settings,
            &meta,
            security,
            (admin_listener, admin_token),
            &stop_tx,
        )
    });
    stop_tx.send_replace(true);
    meta.shutdown();
    result
}

/// SIGTERM and SIGINT stop the node; SIGHUP reloads the TLS material.
fn handle_signals(stop: watch::Sender<bool>, security: Arc<Security>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("installing the SIGTERM/SIGINT/SIGHUP handlers")?;
    // A thread of its own: it sleeps in the signal pipe's read until a
    // signal comes (no wake-ups while idle), and a reload reads files,
    // which no shard or runtime thread should wait for.
    std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal != SIGHUP {
                    stop.send_replace(true);
                    continue;
                }
                match &security.tls {
                    None => tracing::info!("SIGHUP: no TLS listener, nothing to reload"),
                    Some(tls) => match tls.reload() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: TLS reload failed; the previous certificate stays in use"),
                    },
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// The metadata service's settings: a one-voter group of this node, or a
/// member of the cluster's voters.
fn meta_config(settings: &Settings, security: &Arc<Security>) -> MetaConfig {
    MetaConfig {
        data_dir: settings.data_dir.clone(),
        node_id: u64::try_from(settings.node_id).unwrap_or(0),
        shards: settings.shards,
        partitions_per_shard_max: settings.partitions_per_shard_max(),
        advertised_host: settings.advertised_host.clone(),
        advertised_port: settings.advertised_port,
        endpoints: settings
            .listeners
            .iter()
            .map(|l| sluice_raft::Endpoint {
                listener: l.name.clone(),
                host: l.advertised_host.clone(),
                port: l.advertised_port,
            })
            .collect(),
        cluster: settings.cluster.as_ref().map(|c| ClusterConfig {
            listen: c.listen,
            voters: c.voters.clone(),
            heartbeat_ms: settings.broker_heartbeat_ms,
            lease_ms: settings.broker_lease_ms,
            heartbeat_when_serving: true,
            tls: settings.cluster_tls.then(|| {
                let links = crate::security::ClusterLinks(Arc::clone(security));
                Arc::new(links) as Arc<dyn sluice_raft::ClusterTls>
            }),
        }),
    }
}

/// Shards bind with SO_REUSEPORT, which would let a second node of the same
/// user share the port silently. Refuse when something already accepts
/// connections there. (A plain bind is no test: after a crash, closed
/// connections of the old process still hold the port for a while.)
fn probe_listen(addr: SocketAddr) -> anyhow::Result<()> {
    const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
    const PROBE_RETRY_FOR: Duration = Duration::from_secs(2);
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    // A process killed a moment ago still answers for a few tens of ms
    // (the kernel closes its io_uring's sockets asynchronously): ask again
    // for a bounded while before calling the port taken.
    let deadline = std::time::Instant::now() + PROBE_RETRY_FOR;
    while std::net::TcpStream::connect_timeout(&target, PROBE_TIMEOUT).is_ok() {
        if std::time::Instant::now() >= deadline {
            bail!("--listen/--listeners {addr}: another process is already listening there");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn serve(
    settings: &Settings,
    meta: &Metadata,
    security: Arc<Security>,
    (admin_listener, admin_token): (std::net::TcpListener, Option<String>),
    stop_tx: &watch::Sender<bool>,
) -> anyhow::Result<()> {
    // A cluster creates it once enough brokers registered (on the first
    // FindCoordinator, see `handlers::find_coordinator`): created now, it
    // would get a replication factor of the brokers up at this moment.
    if settings.cluster.is_none() {
        ensure_coordinator_topic(meta, plane::OFFSETS_TOPIC, settings.shards)?;
        ensure_coordinator_topic(meta, plane::TXN_TOPIC, settings.shards)?;
    }
    let stop = stop_tx.subscribe();
    let mut node = node_info(settings);
    node.security = security;
    let node = Arc::new(node);
    let (ready_tx, ready_rx) = std_mpsc::channel::<Result<u32, String>>();
    crate::systemd::status(&format!(
        "starting: recovering {} shards (WAL replay)",
        settings.shards
    ));
    let (probes, probe_servers) = probe::channels(settings.shards);
    let search = sluice_shard::SearchHandles::new(settings.shards);
    let (shards, progress, spawned) = spawn_shards(
        settings,
        meta,
        &node,
        &stop,
        ready_tx,
        probe_servers,
        &search,
    );
    let started = spawned.and_then(|()| wait_ready(&ready_rx, &progress));
    let state = AdminState {
        probes,
        meta: meta.clone(),
        min_insync_replicas: settings.min_insync_replicas as usize,
        search: crate::search::SearchState::new(search),
        token: admin_token,
        tls: settings.admin_tls.then(|| Arc::clone(&node.security)),
        watchdog: crate::systemd::watchdog_interval(),
    };
    let state_token = state.token.is_some();
    let admin = match started {
        Ok(()) => crate::admin::start(admin_listener, state, stop.clone()),
        Err(e) => Err(e),
    };
    if let Ok(admin) = &admin {
        // Only now is this node announced (heartbeats): it serves.
        meta.serving();
        let listeners: Vec<String> = settings
            .listeners
            .iter()
            .map(|l| format!("{}://{}", l.name, l.addr))
            .collect();
        let advertised: Vec<String> = settings.listeners.iter().map(|l| l.advertised()).collect();
        tracing::info!(
            kafka = listeners.join(","),
            advertised = advertised.join(","),
            admin = %admin.addr,
            admin_access = if state_token { "bearer token" } else { "loopback only, no token" },
            admin_tls = settings.admin_tls,
            shards = settings.shards,
            pinned = settings.pin_cores,
            data_dir = %settings.data_dir.display(),
            "sluice ready"
        );
        crate::systemd::ready(&format!(
            "serving: kafka {}, admin {}",
            listeners.join(","),
            admin.addr
        ));
        wait_stop(stop.clone());
        tracing::info!("stopping: closing listeners, draining connections, closing shards");
        crate::systemd::stopping("stopping: draining connections, closing the WALs");
    }
    stop_tx.send_replace(true);
    // Start-up failed: a shard may be stuck joining the mesh with a peer
    // that never came; do not wait for it, the process exits.
    let admin = admin?;
    join_shards(shards);
    admin.join();
    tracing::info!("stopped");
    Ok(())
}

/// The node facts the handlers share.
pub fn node_info(settings: &Settings) -> NodeInfo {
    NodeInfo {
        node_id: settings.node_id,
        advertised_host: settings.advertised_host.clone(),
        advertised_port: settings.advertised_port,
        cluster_id: settings.cluster_id(),
        default_partitions: settings.default_partitions,
        auto_create_topics: settings.auto_create_topics,
        default_replication_factor: settings.default_replication_factor,
        cluster: settings.cluster.is_some(),
        offsets_topic_partitions: plane::offsets_topic_partitions(settings.shards),
        started: std::time::Instant::now(),
        broker_configs: settings.broker_configs(),
        security: Arc::new(Security::default()),
        quota_board: Arc::new(security::quota::QuotaBoard::new(settings.shards)),
    }
}

/// Creates `__consumer_offsets` or `__transaction_state` (whose
/// partitions place consumer groups and transactional ids on shards) on
/// first start of a single node; later starts keep its partition count.
fn ensure_coordinator_topic(meta: &Metadata, name: &str, shards: u32) -> anyhow::Result<()> {
    if meta.view().topics.contains_key(name) {
        return Ok(());
    }
    let spec = sluice_raft::TopicSpec {
        name: name.to_string(),
        partitions: plane::offsets_topic_partitions(shards),
        configs: [("cleanup.policy".to_string(), "compact".to_string())].into(),
        replication_factor: 1,
        assignment: Vec::new(),
    };
    match futures::executor::block_on(meta.create_topic(spec)) {
        Ok(_) | Err(sluice_raft::MetaError::TopicExists(_)) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("creating {name}: {e}")),
    }
}

/// One executor thread per shard. Returns the threads started even when a
/// later one failed, so the caller can stop and join them.
fn spawn_shards(
    settings: &Settings,
    meta: &Metadata,
    node: &Arc<NodeInfo>,
    stop: &watch::Receiver<bool>,
    ready: std_mpsc::Sender<Result<u32, String>>,
    probes: Vec<ProbeServer>,
    search: &Arc<sluice_shard::SearchHandles>,
) -> (
    Vec<glommio::ExecutorJoinHandle<()>>,
    Vec<Arc<RecoveryProgress>>,
    anyhow::Result<()>,
) {
    let progress: Vec<Arc<RecoveryProgress>> = (0..settings.shards)
        .map(|_| Arc::new(RecoveryProgress::default()))
        .collect();
    let mesh = plane::new_mesh(settings.shards);
    let drained = Arc::new(AtomicU32::new(0));
    let mut shards = Vec::with_capacity(settings.shards as usize);
    for ((id, probe), replay) in (0..settings.shards).zip(probes).zip(&progress) {
        let args = ShardArgs {
            probe,
            id,
            settings: settings.clone(),
            mesh: mesh.clone(),
            meta: meta.clone(),
            node: Arc::clone(node),
            stop: stop.clone(),
            ready: ready.clone(),
            search: Arc::clone(search),
            progress: Arc::clone(replay),
            drained: Arc::clone(&drained),
        };
        match spawn_shard(args) {
            Ok(handle) => shards.push(handle),
            Err(e) => return (shards, progress, Err(e)),
        }
    }
    (shards, progress, Ok(()))
}

/// How often the start-up status reports the WAL replay's progress.
const RECOVERY_STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Waits for every shard to be ready; meanwhile the systemd status line
/// tells how much of the WAL has been replayed, every
/// `RECOVERY_STATUS_INTERVAL`, and each shard that is done.
fn wait_ready(
    ready: &std_mpsc::Receiver<Result<u32, String>>,
    progress: &[Arc<RecoveryProgress>],
) -> anyhow::Result<()> {
    let shards = progress.len();
    let replayed = || {
        progress
            .iter()
            .map(|p| p.bytes())
            .fold((0, 0), |(r, t), (pr, pt)| (r + pr, t + pt))
    };
    let mut done = 0;
    while done < shards {
        match ready.recv_timeout(RECOVERY_STATUS_INTERVAL) {
            Ok(Ok(_)) => {
                done += 1;
                crate::systemd::status(&recovery_status(done, shards, replayed()));
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                crate::systemd::status(&recovery_status(done, shards, replayed()));
            }
            Ok(Err(e)) => bail!("{e}"),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                bail!("a shard thread exited during start-up")
            }
        }
    }
    Ok(())
}

/// The start-up status line: shards done, and the WAL replayed of all
/// shards (bytes `(replayed, total)`).
fn recovery_status(done: usize, shards: usize, (replayed, total): (u64, u64)) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let percent = replayed
        .saturating_mul(100)
        .checked_div(total)
        .unwrap_or(100);
    format!(
        "starting: {done} of {shards} shards recovered (WAL replay {percent}%: {:.1} of {:.1} MiB)",
        mib(replayed),
        mib(total)
    )
}

fn wait_stop(mut stop: watch::Receiver<bool>) {
    let rt = tokio::runtime::Builder::new_current_thread().build();
    match rt {
        Ok(rt) => rt.block_on(async move {
            let _ = stop.wait_for(|s| *s).await;
        }),
        Err(e) => tracing::error!(error = %e, "cannot wait for signals; stopping"),
    }
}

fn join_shards(shards: Vec<glommio::ExecutorJoinHandle<()>>) {
    // Shards return promptly once `stop` flips: they stop accepting, close
    // the data plane (WAL close flushes queued appends) and exit.
    for handle in shards {
        if let Err(e) = handle.join() {
            tracing::error!(error = %e, "shard thread failed");
        }
    }
}

struct ShardArgs {
    id: u32,
    settings: Settings,
    mesh: ShardMesh,
    meta: Metadata,
    node: Arc<NodeInfo>,
    stop: watch::Receiver<bool>,
    ready: std_mpsc::Sender<Result<u32, String>>,
    probe: ProbeServer,
    /// Where the shard publishes its search index.
    search: Arc<sluice_shard::SearchHandles>,
    /// Where the shard reports its WAL replay at start.
    progress: Arc<RecoveryProgress>,
    /// Shards done draining their client connections (see `drain`).
    drained: Arc<AtomicU32>,
}

fn placement(settings: &Settings, id: u32) -> Placement {
    if !settings.pin_cores {
        return Placement::Unbound;
    }
    // Core 0 keeps the control thread when there is room for it.
    let cores = cores() as usize;
    let core = if cores > settings.shards as usize {
        id as usize + 1
    } else {
        id as usize % cores
    };
    Placement::Fixed(core)
}

fn spawn_shard(args: ShardArgs) -> anyhow::Result<glommio::ExecutorJoinHandle<()>> {
    let name = format!("sluice-shard-{}", args.id);
    LocalExecutorBuilder::new(placement(&args.settings, args.id))
        .name(&name)
        // Sized from the WAL's commit size (`plane::io_memory_bytes`). Above
        // RLIMIT_MEMLOCK (without CAP_IPC_LOCK) glommio skips registering it
        // with io_uring (one warning) and still allocates commit buffers
        // from it.
        .io_memory(usize::try_from(plane::io_memory_bytes(&args.settings)).unwrap_or(usize::MAX))
        // One blocking thread, unpinned even when the shard is: SASL
        // PLAIN's PBKDF2 runs there and must not take the shard's core.
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
        .spawn(move || shard_main(args))
        .map_err(|e| anyhow::anyhow!("starting executor {name}: {e}"))
}

async fn shard_main(args: ShardArgs) {
    let ShardArgs {
        id,
        settings,
        mesh,
        meta,
        node,
        stop,
        ready,
        probe,
        search,
        progress,
        drained,
    } = args;
    let mut cfg = plane::shard_config(&settings, id);
    cfg.search_handles = Some(search);
    cfg.recovery_progress = Some(progress);
    let shard = match Shard::start(cfg, mesh, meta.clone()).await {
        Ok(shard) => shard,
        Err(e) => {
            let _ = ready.send(Err(format!("shard {id}: start failed: {e}")));
            return;
        }
    };
    let mut listeners = Vec::with_capacity(node.security.listeners.len());
    for l in &node.security.listeners {
        match TcpListener::bind(l.addr) {
            Ok(bound) => listeners.push(bound),
            Err(e) => {
                let _ = ready.send(Err(format!(
                    "listener {}://{}: cannot bind: {e}",
                    l.name, l.addr
                )));
                shard.close().await;
                return;
            }
        }
    }
    let _ = ready.send(Ok(id));
    let ctx = Rc::new(Ctx::new(Rc::clone(&shard), meta, node));
    if settings.cluster.is_some() {
        let fetcher = ReplicaFetcher::new(Rc::clone(&ctx), replica::Tuning::from(&settings));
        glommio::spawn_local(fetcher.run(stop.clone())).detach();
        shard.set_remote_markers(Rc::new(MarkerSender::new(Rc::downgrade(&ctx))));
    }
    let limits = Rc::new(ConnLimits {
        request_max_bytes: settings.request_max_bytes,
        frame_read_timeout: Duration::from_millis(settings.frame_read_timeout_ms),
        stop: stop.clone(),
    });
    let creation_rates =
        security::quota::ConnectionRates::new(Arc::clone(&ctx.node.quota_board), id);
    let conns = Rc::new(Connections::new(creation_rates));
    glommio::spawn_local(probe.run(Rc::clone(&shard), Rc::clone(&conns))).detach();
    let limit = settings.connections_per_shard_max as usize;
    let accepts = listeners.into_iter().enumerate().map(|(index, listener)| {
        let shared = (Rc::clone(&ctx), Rc::clone(&limits));
        accept_loop(
            listener,
            index,
            shared,
            (Rc::clone(&conns), limit, id),
            stop.clone(),
        )
    });
    futures::future::join_all(accepts).await;
    drain(&conns, &ctx, &drained, settings.shards).await;
    shard.close().await;
    tracing::debug!(shard = id, "shard stopped");
}

/// The longest a stopping node waits for its clients' connections to
/// write the replies of the requests they read (a long-polling fetch ends
/// within its `max_wait_ms`; a peer that does not read is cut off here).
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// Waits until every client connection of the shard wrote its replies and
/// closed (they read no new request once `stop` is set), then until every
/// shard did (a produce read here may be queued at another shard's
/// partition, and is answered once durable there), at most `DRAIN_MAX` in
/// all. Other nodes' replica fetchers stay connected until the shard
/// closes: produces with acks=all wait for their fetches.
async fn drain(conns: &Connections, ctx: &Ctx, drained: &AtomicU32, shards: u32) {
    let shard = ctx.shard.id();
    let deadline = std::time::Instant::now() + DRAIN_MAX;
    let clients = || {
        conns
            .open
            .get()
            .saturating_sub(ctx.replica_connections.get())
    };
    let open = clients();
    while clients() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let left = clients();
    if left > 0 {
        tracing::warn!(
            shard,
            left,
            "stopping: client connections still open after the drain; closing them"
        );
    } else if open > 0 {
        tracing::debug!(shard, open, "stopping: every client connection drained");
    }
    drained.fetch_add(1, Ordering::AcqRel);
    while drained.load(Ordering::Acquire) < shards && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// Accepts the connections of listener `index` (of `Security::listeners`)
/// until `stop`.
async fn accept_loop(
    listener: TcpListener,
    index: usize,
    (ctx, limits): (Rc<Ctx>, Rc<ConnLimits>),
    (conns, limit, shard): (Rc<Connections>, usize, u32),
    mut stop: watch::Receiver<bool>,
) {
    let protocol = ctx.node.security.listeners[index].protocol;
    let per_ip_max = ctx.node.security.connections_per_ip_max;
    loop {
        if *stop.borrow() {
            return;
        }
        let accepted = {
            let stopped = std::pin::pin!(stop.changed());
            match select(std::pin::pin!(listener.accept()), stopped).await {
                Either::Left((accepted, _)) => accepted,
                Either::Right(_) => return,
            }
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let peer_addr = stream.peer_addr().ok();
        let peer = peer_addr
            .map(|a: SocketAddr| a.to_string())
            .unwrap_or_default();
        let host = peer_addr.map(|a| a.ip().to_string()).unwrap_or_default();
        if conns.open.get() >= limit {
            // Dropping the stream closes it: the client reads EOF.
            conns.refuse(shard, limit, &peer);
            continue;
        }
        let ip = peer_addr.map(|a| a.ip());
        if let Some(ip) = ip {
            if let Err(delay) = conns.creation_rates.admit(&ctx.view().quotas, ip) {
                conns.refuse_rate(shard, &peer);
                conns.close_after(stream, delay);
                continue;
            }
            if !conns.admit_ip(ip, per_ip_max) {
                conns.refuse_ip(shard, per_ip_max, &peer);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let (ctx, limits, conns) = (Rc::clone(&ctx), Rc::clone(&limits), Rc::clone(&conns));
        conns.open.set(conns.open.get() + 1);
        glommio::spawn_local(async move {
            if !protocol.tls() {
                let session = Session::new(index, protocol, host, None);
                connection::serve(stream, peer, &ctx, &limits, &conns.closes, session).await;
            } else if let Some((tls, principal)) =
                tls_accept(stream, protocol, &peer, &ctx, &limits, &conns).await
            {
                let session = Session::new(index, protocol, host, principal);
                connection::serve(tls, peer, &ctx, &limits, &conns.closes, session).await;
            }
            conns.open.set(conns.open.get() - 1);
            if let Some(ip) = ip {
                conns.release_ip(ip);
            }
        })
        .detach();
    }
}

/// The TLS handshake of a new connection, within `--frame-read-timeout-ms`;
/// with the principal of its client certificate, if it sent one. A failed
/// handshake closes the connection (counted, a rate-limited warning).
async fn tls_accept(
    stream: glommio::net::TcpStream,
    protocol: security::SecurityProtocol,
    peer: &str,
    ctx: &Ctx,
    limits: &ConnLimits,
    conns: &Connections,
) -> Option<(
    futures_rustls::server::TlsStream<glommio::net::TcpStream>,
    Option<String>,
)> {
    let tls = ctx.node.security.tls.as_ref()?;
    let handshake = std::pin::pin!(tls.acceptor(protocol).accept(stream));
    let deadline = std::time::Instant::now() + limits.frame_read_timeout;
    let timeout = std::pin::pin!(ctx.shard.sleep_until(deadline));
    let failure = match select(handshake, timeout).await {
        Either::Left((Ok(stream), _)) => {
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first());
            match cert.map(security::tls::principal_of) {
                None => return Some((stream, None)),
                Some(Some(principal)) => return Some((stream, Some(principal))),
                // A verified certificate whose subject cannot be named: not
                // ANONYMOUS, refused.
                Some(None) => "client certificate subject cannot be read".to_string(),
            }
        }
        Either::Left((Err(e), _)) => e.to_string(),
        Either::Right(_) => "timed out".to_string(),
    };
    conns.tls_failed.set(conns.tls_failed.get() + 1);
    match conns.tls_warnings.due() {
        Some(suppressed) => {
            tracing::warn!(peer, error = %failure, suppressed, "TLS handshake failed; connection closed")
        }
        None => tracing::debug!(peer, error = %failure, "TLS handshake failed"),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recovery_status_tells_shards_and_bytes() {
        assert_eq!(
            recovery_status(0, 2, (3 << 20, 12 << 20)),
            "starting: 0 of 2 shards recovered (WAL replay 25%: 3.0 of 12.0 MiB)"
        );
        assert_eq!(
            recovery_status(1, 1, (0, 0)),
            "starting: 1 of 1 shards recovered (WAL replay 100%: 0.0 of 0.0 MiB)"
        );
    }
}
