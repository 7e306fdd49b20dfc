//! Node-to-node transport of the metadata group.
//!
//! # Wire format
//!
//! TCP, one frame per message: a 4-byte big-endian length, then the JSON
//! of an `Envelope { from, to, body }` (tokio-util's length-delimited
//! codec, frames up to `FRAME_MAX` bytes, enough for a snapshot chunk). A
//! connection carries one request at a time: the client writes a request
//! frame and reads exactly one response frame before the next request.
//! Requests (`Request`): openraft's AppendEntries, Vote and InstallSnapshot;
//! `ClientWrite`, a metadata entry a non-leader forwards to the leader; and
//! `BrokerHeartbeat`, a node's lease renewal sent to the controller.
//!
//! # Client side
//!
//! `Link` is one lazily (re)connected connection to one peer. A call is
//! bounded by a timeout (openraft's `RPCOption` TTL for Raft RPCs); a call
//! that fails or is cancelled midway drops the connection, so a late
//! answer can never be read as the answer to the next request. openraft
//! gets one `Link` per client it asks the factory for (`ClusterNetwork`);
//! transport failures are `Unreachable`, which openraft retries with
//! backoff. A node never connects to itself: such a client is refused and
//! logged, and fails every call as unreachable.
//!
//! # Server side
//!
//! `serve` accepts on `ClusterConfig::listen`, on the control thread's
//! runtime: at most `INBOUND_CONNECTIONS_MAX` connections at once (more are
//! closed at once, with a rate-limited warning), each answering its
//! requests in order through a `Service`. Under TLS a connection takes one
//! of those slots only once its peer is admitted: before, it holds one of
//! `HANDSHAKES_MAX` handshake slots (at most `HANDSHAKES_PER_IP_MAX` per
//! address) for at most `ACCEPT_HANDSHAKE_TIMEOUT`, so peers without a
//! certificate cannot hold the slots the nodes' links need. A frame that does not decode, or is addressed to another
//! node, closes the connection.
//!
//! # Mutual TLS
//!
//! With `ClusterConfig::tls`, every link is TLS: the connecting node checks
//! the listener's certificate against the cluster's CA and the host it
//! dialled, the listener asks for the connecting node's certificate and
//! checks it against the same CA, and each side then asks `ClusterTls::admit`
//! whether the other's certificate may speak for a node (the broker: its
//! principal is a super user, under the authorizer). A peer that fails is
//! closed before any frame is read, with a rate-limited warning. Without
//! it, anything that reaches the cluster port can write metadata: the
//! port then belongs on a private network.
//!
//! Without cluster settings there is nothing to talk to: `NoNetworkFactory`
//! hands openraft clients that fail every RPC as unreachable (a one-voter
//! group never asks for one).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::types::{MetaError, MetaRequest, MetaResponse, Node, NodeId, TypeConfig};

/// Largest frame sent or accepted, bytes (a snapshot chunk is far smaller).
pub(crate) const FRAME_MAX: usize = 64 << 20;
/// Inbound node-to-node connections served at once; more are closed.
pub(crate) const INBOUND_CONNECTIONS_MAX: usize = 64;
/// Bound of a connection attempt, ms.
pub(crate) const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Bound of an inbound TLS handshake (a node's completes in milliseconds).
const ACCEPT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Inbound TLS handshakes in progress at once; more are closed.
const HANDSHAKES_MAX: usize = 32;
/// Inbound TLS handshakes in progress from one IP address at once.
const HANDSHAKES_PER_IP_MAX: u32 = 4;
/// Interval between two warnings about refused inbound peers.
const REFUSED_WARN_INTERVAL: Duration = Duration::from_secs(30);

/// Mutual TLS of the links between nodes, given by the node's owner (which
/// holds the certificates and may reload them: each new link takes the
/// configurations in use then).
pub trait ClusterTls: Send + Sync + std::fmt::Debug {
    /// The listening side: presents this node's certificate and requires
    /// the connecting node's (an error fails the connection).
    fn server_config(&self) -> io::Result<Arc<rustls::ServerConfig>>;
    /// The connecting side: presents this node's certificate and checks
    /// the listener's (an error fails the connection).
    fn client_config(&self) -> io::Result<Arc<rustls::ClientConfig>>;
    /// Whether the peer whose verified chain this is (its own certificate
    /// first) may speak for a node; `Err` says why not.
    fn admit(&self, chain: &[CertificateDer<'_>]) -> Result<(), String>;
}

/// What travels in one frame.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    pub from: NodeId,
    pub to: NodeId,
    pub body: T,
}

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A metadata entry forwarded by a node that is not the leader.
    ClientWrite(MetaRequest),
    /// A node renews its lease with the controller.
    BrokerHeartbeat {
        id: NodeId,
        host: String,
        port: u16,
        /// Its listeners' advertised addresses.
        #[serde(default)]
        endpoints: Vec<crate::types::Endpoint>,
    },
}

/// The answer to a `Request`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// A forwarded write was committed and applied (or failed for good).
    Written(Result<MetaResponse, MetaError>),
    /// A heartbeat was recorded.
    HeartbeatOk,
    /// This node is not the leader; the one it knows of, if any.
    NotLeader(Option<NodeId>),
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The request never left this node (no connection, refused target).
    #[error("request not sent to node {to}: {source}")]
    NotSent { to: NodeId, source: io::Error },
    /// Sent, but no answer came: the peer may or may not have acted on it.
    #[error("no answer from node {to}: {source}")]
    NoAnswer { to: NodeId, source: io::Error },
}

/// A link's byte stream: plain TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for S {}

type Conn = Framed<Box<dyn Stream>, LengthDelimitedCodec>;

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(FRAME_MAX)
        .new_codec()
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// One connection to one peer, (re)connected on demand, one request at a
/// time.
pub(crate) struct Link {
    from: NodeId,
    to: NodeId,
    /// `None`: this link would connect the node to itself; it never does.
    addr: Option<String>,
    tls: Option<Arc<dyn ClusterTls>>,
    conn: Option<Conn>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl Link {
    pub(crate) fn new(
        from: NodeId,
        to: NodeId,
        addr: String,
        tls: Option<Arc<dyn ClusterTls>>,
    ) -> Link {
        let addr = if from == to {
            tracing::error!(
                node_id = from,
                "raft: asked to connect a node to itself; refused"
            );
            None
        } else {
            Some(addr)
        };
        Link {
            from,
            to,
            addr,
            tls,
            conn: None,
        }
    }

    pub(crate) fn to(&self) -> NodeId {
        self.to
    }

    /// Sends `body` and waits for its answer, all within `ttl`.
    pub(crate) async fn call(
        &mut self,
        body: Request,
        ttl: Duration,
    ) -> Result<Response, CallError> {
        let to = self.to;
        let not_sent = |source| CallError::NotSent { to, source };
        let no_answer = |source| CallError::NoAnswer { to, source };
        let deadline = tokio::time::Instant::now() + ttl;
        let frame = serde_json::to_vec(&Envelope {
            from: self.from,
            to,
            body,
        })
        .map_err(|e| not_sent(io::Error::other(e)))?;
        // Taken out for the call: put back only after a whole exchange.
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                let addr = self.addr.as_deref().ok_or_else(|| {
                    not_sent(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a node does not connect to itself",
                    ))
                })?;
                let connect_by = deadline
                    .min(tokio::time::Instant::now() + Duration::from_millis(CONNECT_TIMEOUT_MS));
                let stream = tokio::time::timeout_at(connect_by, TcpStream::connect(addr))
                    .await
                    .map_err(|_| not_sent(io::ErrorKind::TimedOut.into()))?
                    .map_err(not_sent)?;
                stream.set_nodelay(true).map_err(not_sent)?;
                let stream: Box<dyn Stream> = match &self.tls {
                    None => Box::new(stream),
                    Some(tls) => {
                        let handshake = tls_connect(tls.as_ref(), addr, stream);
                        let stream = tokio::time::timeout_at(connect_by, handshake)
                            .await
                            .map_err(|_| not_sent(io::ErrorKind::TimedOut.into()))?
                            .map_err(not_sent)?;
                        Box::new(stream)
                    }
                };
                Framed::new(stream, codec())
            }
        };
        let exchange = async {
            conn.send(Bytes::from(frame)).await?;
            let answer = conn
                .next()
                .await
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))??;
            let answer: Envelope<Response> =
                serde_json::from_slice(&answer).map_err(|e| invalid(e.to_string()))?;
            if answer.from != to || answer.to != self.from {
                return Err(invalid(format!(
                    "answer from node {} to node {}, expected {to} to {}",
                    answer.from, answer.to, self.from
                )));
            }
            Ok(answer.body)
        };
        let answer = tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| no_answer(io::ErrorKind::TimedOut.into()))?
            .map_err(no_answer)?;
        self.conn = Some(conn);
        Ok(answer)
    }
}

/// The TLS handshake with the node at `addr` (`host:port`): its
/// certificate must be valid for `host`, chain to the cluster's CA and be
/// admitted.
async fn tls_connect(
    tls: &dyn ClusterTls,
    addr: &str,
    stream: TcpStream,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| invalid(format!("{host}: not a TLS server name: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(tls.client_config()?);
    let stream = connector.connect(name, stream).await?;
    let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
    tls.admit(chain).map_err(|why| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the node at {addr} is not admitted: {why}"),
        )
    })?;
    Ok(stream)
}

/// The TLS handshake of an inbound link, within `ACCEPT_HANDSHAKE_TIMEOUT`:
/// the peer's certificate must chain to the cluster's CA and be admitted.
async fn tls_accept(tls: &dyn ClusterTls, stream: TcpStream) -> io::Result<Box<dyn Stream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config()?);
    let stream = tokio::time::timeout(ACCEPT_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
    tls.admit(chain)
        .map_err(|why| io::Error::new(io::ErrorKind::PermissionDenied, why))?;
    Ok(Box::new(stream))
}

/// Rate-limited warnings about inbound peers refused (by TLS, or over the
/// inbound limits).
#[derive(Debug, Default)]
struct Refusals {
    /// (refusals since the last warning, when it was).
    state: Mutex<(u64, Option<std::time::Instant>)>,
}

impl Refusals {
    fn note(&self, peer: std::net::SocketAddr, refusal: &Refusal) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += 1;
        if state
            .1
            .is_some_and(|at| at.elapsed() < REFUSED_WARN_INTERVAL)
        {
            tracing::debug!(%peer, ?refusal, "cluster listener: peer refused");
            return;
        }
        match refusal {
            Refusal::TooMany { limit, what } => tracing::warn!(
                %peer,
                limit,
                refused = state.0,
                "cluster listener: too many {what}; a connection was closed"
            ),
            Refusal::Tls(error) => tracing::warn!(
                %peer,
                %error,
                refused = state.0,
                "cluster listener: a connection failed mutual TLS and was closed (it needs a certificate of the cluster's CA, admitted as a node)"
            ),
        }
        *state = (0, Some(std::time::Instant::now()));
    }
}

/// Which peers answered their last call: for the start-up log, and the
/// one rate-limited warning per unreachable peer (openraft's own logs of
/// each failed call are turned off by the broker).
#[derive(Debug, Default)]
pub(crate) struct Reachability {
    peers: Mutex<BTreeMap<NodeId, PeerState>>,
}

/// Interval between two warnings about one unreachable peer.
const UNREACHABLE_WARN_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct PeerState {
    answered: bool,
    /// The last call found nothing listening at the peer's address (its
    /// process is gone, or its port closed): a connection refused.
    refused: bool,
    /// Calls that failed since the peer last answered.
    failures: u64,
    /// Failures already reported in a warning.
    reported: u64,
    last_warning: Option<std::time::Instant>,
}

impl Reachability {
    /// Records one call's outcome. A peer that stops answering is reported
    /// once, then at most every `UNREACHABLE_WARN_INTERVAL` with the count
    /// of failed calls since; its return is reported once.
    fn note(&self, peer: NodeId, result: &Result<Response, CallError>) {
        let answered = result.is_ok();
        let refused = matches!(result, Err(CallError::NotSent { source, .. })
            if source.kind() == io::ErrorKind::ConnectionRefused);
        let mut map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let state = map.entry(peer).or_insert(PeerState {
            answered: true,
            refused: false,
            failures: 0,
            reported: 0,
            last_warning: None,
        });
        state.refused = refused;
        if answered {
            if !state.answered {
                tracing::info!(
                    node_id = peer,
                    failed_calls = state.failures,
                    "raft: node reachable again"
                );
            }
            *state = PeerState {
                answered: true,
                refused: false,
                failures: 0,
                reported: 0,
                last_warning: None,
            };
            return;
        }
        state.answered = false;
        state.failures += 1;
        let due = state
            .last_warning
            .map_or(true, |at| at.elapsed() >= UNREACHABLE_WARN_INTERVAL);
        if due {
            tracing::warn!(
                node_id = peer,
                failed_calls = state.failures,
                since_last_warning = state.failures - state.reported,
                "raft: cannot reach node; retrying"
            );
            state.reported = state.failures;
            state.last_warning = Some(std::time::Instant::now());
        }
    }

    /// Whether the last call to `peer` was refused (nothing listens at its
    /// address).
    pub(crate) fn refused(&self, peer: NodeId) -> bool {
        let map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&peer).is_some_and(|p| p.refused)
    }

    /// Peers whose last call was answered.
    pub(crate) fn answering(&self) -> usize {
        let map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|a| a.answered).count()
    }
}

/// Hands openraft one `Link` per client it asks for.
#[derive(Debug, Clone)]
pub(crate) struct ClusterNetwork {
    pub(crate) node_id: NodeId,
    /// Every voter's cluster address (used when a membership node has none).
    pub(crate) voters: Arc<BTreeMap<NodeId, String>>,
    pub(crate) reachability: Arc<Reachability>,
    pub(crate) tls: Option<Arc<dyn ClusterTls>>,
}

/// openraft's client for one peer.
#[derive(Debug)]
pub(crate) struct ClusterClient {
    link: Link,
    reachability: Arc<Reachability>,
}

impl RaftNetworkFactory<TypeConfig> for ClusterNetwork {
    type Network = ClusterClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        let addr = if node.addr.is_empty() {
            self.voters.get(&target).cloned().unwrap_or_default()
        } else {
            node.addr.clone()
        };
        ClusterClient {
            link: Link::new(self.node_id, target, addr, self.tls.clone()),
            reachability: Arc::clone(&self.reachability),
        }
    }
}

impl ClusterClient {
    async fn call<E: std::error::Error>(
        &mut self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, Node, E>> {
        let result = self.link.call(request, option.hard_ttl()).await;
        self.reachability.note(self.link.to(), &result);
        result.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    fn unexpected<E: std::error::Error>(&self, answer: &Response) -> RPCError<NodeId, Node, E> {
        let e = invalid(format!(
            "node {} answered with an unexpected {answer:?}",
            self.link.to()
        ));
        RPCError::Unreachable(Unreachable::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for ClusterClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.link.to(), e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.link.to(), e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Response::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.link.to(), e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }
}

/// Answers the requests of one node's peers.
pub(crate) trait Service: Send + Sync + 'static {
    fn handle(&self, from: NodeId, request: Request) -> BoxFuture<'static, Response>;
}

/// Accepts peers on `listener` until the runtime stops, over mutual TLS
/// with `tls`.
pub(crate) async fn serve(
    listener: TcpListener,
    node_id: NodeId,
    service: Arc<dyn Service>,
    tls: Option<Arc<dyn ClusterTls>>,
) {
    let slots = Arc::new(Semaphore::new(INBOUND_CONNECTIONS_MAX));
    let handshakes = Arc::new(Handshakes::default());
    let refusals = Arc::new(Refusals::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "cluster listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cluster connection closed");
            continue;
        }
        let service = Arc::clone(&service);
        let refusals = Arc::clone(&refusals);
        let Some(tls) = tls.clone() else {
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                refusals.note(
                    peer,
                    &Refusal::TooMany {
                        limit: INBOUND_CONNECTIONS_MAX,
                        what: "connections",
                    },
                );
                continue;
            };
            tokio::spawn(async move {
                serve_peer(Box::new(stream), peer, node_id, service).await;
                drop(slot);
            });
            continue;
        };
        let Some(handshake) = Handshakes::enter(&handshakes, peer.ip()) else {
            refusals.note(
                peer,
                &Refusal::TooMany {
                    limit: HANDSHAKES_MAX,
                    what: "TLS handshakes",
                },
            );
            continue;
        };
        let slots = Arc::clone(&slots);
        tokio::spawn(async move {
            let stream = tls_accept(tls.as_ref(), stream).await;
            drop(handshake);
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => return refusals.note(peer, &Refusal::Tls(e)),
            };
            let Ok(slot) = slots.try_acquire_owned() else {
                return refusals.note(
                    peer,
                    &Refusal::TooMany {
                        limit: INBOUND_CONNECTIONS_MAX,
                        what: "connections",
                    },
                );
            };
            serve_peer(stream, peer, node_id, service).await;
            drop(slot);
        });
    }
}

/// Why an inbound peer was closed.
#[derive(Debug)]
enum Refusal {
    /// Over one of the inbound limits.
    TooMany { limit: usize, what: &'static str },
    /// Its TLS handshake failed or it was not admitted.
    Tls(io::Error),
}

async fn serve_peer(
    stream: Box<dyn Stream>,
    peer: std::net::SocketAddr,
    node_id: NodeId,
    service: Arc<dyn Service>,
) {
    if let Err(e) = serve_connection(stream, node_id, service).await {
        tracing::debug!(%peer, error = %e, "cluster connection closed");
    }
}

/// Inbound TLS handshakes in progress: how many in all and from each IP.
#[derive(Debug, Default)]
struct Handshakes {
    by_ip: Mutex<HashMap<IpAddr, u32>>,
}

/// One handshake in progress, counted until dropped.
struct Handshake {
    of: Arc<Handshakes>,
    ip: IpAddr,
}

impl Handshakes {
    /// A handshake slot for `ip`, or `None` over `HANDSHAKES_MAX` in all or
    /// `HANDSHAKES_PER_IP_MAX` for `ip`.
    fn enter(of: &Arc<Handshakes>, ip: IpAddr) -> Option<Handshake> {
        let mut by_ip = of.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let total: u32 = by_ip.values().sum();
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= HANDSHAKES_PER_IP_MAX || total as usize >= HANDSHAKES_MAX {
            if *count == 0 {
                by_ip.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(Handshake {
            of: Arc::clone(of),
            ip,
        })
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut by_ip = self.of.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

async fn serve_connection(
    stream: Box<dyn Stream>,
    node_id: NodeId,
    service: Arc<dyn Service>,
) -> io::Result<()> {
    let mut conn = Framed::new(stream, codec());
    while let Some(frame) = conn.next().await {
        let frame = frame?;
        let request: Envelope<Request> =
            serde_json::from_slice(&frame).map_err(|e| invalid(e.to_string()))?;
        if request.to != node_id {
            return Err(invalid(format!(
                "a request for node {} reached node {node_id}",
                request.to
            )));
        }
        let body = service.handle(request.from, request.body).await;
        let answer = serde_json::to_vec(&Envelope {
            from: node_id,
            to: request.from,
            body,
        })
        .map_err(io::Error::other)?;
        conn.send(Bytes::from(answer)).await?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("no raft network: node {target} is unreachable from node {from}")]
struct NoNetwork {
    from: NodeId,
    target: NodeId,
}

/// Without cluster settings: hands out clients that fail every RPC.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoNetworkFactory {
    pub(crate) node_id: NodeId,
}

/// A client for `target` that fails every RPC as unreachable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoNetworkClient {
    from: NodeId,
    target: NodeId,
}

impl NoNetworkClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, Node, E> {
        RPCError::Unreachable(Unreachable::new(&NoNetwork {
            from: self.from,
            target: self.target,
        }))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoNetworkFactory {
    type Network = NoNetworkClient;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Self::Network {
        if target == self.node_id {
            tracing::error!(target, "raft: asked to connect a node to itself; refused");
        } else {
            tracing::debug!(target, "raft: no network, peer unreachable");
        }
        NoNetworkClient {
            from: self.node_id,
            target,
        }
    }
}

impl RaftNetwork<TypeConfig> for NoNetworkClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Service for Echo {
        fn handle(&self, from: NodeId, request: Request) -> BoxFuture<'static, Response> {
            Box::pin(async move {
                match request {
                    Request::BrokerHeartbeat { id, .. } if id == from => Response::HeartbeatOk,
                    Request::ClientWrite(MetaRequest::ReserveProducerIds) => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Response::Written(Ok(MetaResponse::ProducerIds(from as i64)))
                    }
                    _ => Response::NotLeader(Some(9)),
                }
            })
        }
    }

    fn heartbeat(id: NodeId) -> Request {
        Request::BrokerHeartbeat {
            id,
            host: "h".into(),
            port: 1,
            endpoints: Vec::new(),
        }
    }

    #[test]
    fn handshakes_are_bounded_per_ip_and_in_all_and_released_on_drop() {
        let of = Arc::new(Handshakes::default());
        let ip = |last: u8| IpAddr::from([10, 0, 0, last]);
        let from_one: Vec<Handshake> = (0..HANDSHAKES_PER_IP_MAX)
            .map(|_| Handshakes::enter(&of, ip(1)).expect("under the per-IP bound"))
            .collect();
        assert!(
            Handshakes::enter(&of, ip(1)).is_none(),
            "a fifth from one IP"
        );
        drop(from_one);
        assert!(Handshakes::enter(&of, ip(1)).is_some(), "released on drop");
        let mut all = Vec::new();
        for last in 0..=u8::MAX {
            match Handshakes::enter(&of, ip(last)) {
                Some(h) => all.push(h),
                None => break,
            }
        }
        assert_eq!(all.len(), HANDSHAKES_MAX);
        drop(all);
        assert!(of.by_ip.lock().expect("lock").is_empty(), "nothing left");
    }

    #[test]
    fn calls_reconnect_time_out_and_refuse_self() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let server = tokio::spawn(serve(listener, 2, Arc::new(Echo), None));
            let ttl = Duration::from_secs(5);
            let mut link = Link::new(1, 2, addr.clone(), None);
            assert!(matches!(
                link.call(heartbeat(1), ttl).await,
                Ok(Response::HeartbeatOk)
            ));
            assert!(matches!(
                link.call(heartbeat(3), ttl).await,
                Ok(Response::NotLeader(Some(9)))
            ));
            // A call cut by its timeout drops the connection: the late
            // answer is never taken for the next call's.
            let slow = Request::ClientWrite(MetaRequest::ReserveProducerIds);
            assert!(matches!(
                link.call(slow, Duration::from_millis(50)).await,
                Err(CallError::NoAnswer { .. })
            ));
            assert!(matches!(
                link.call(heartbeat(1), ttl).await,
                Ok(Response::HeartbeatOk)
            ));
            // Addressed to another node: the server closes the connection.
            let mut wrong = Link::new(1, 5, addr.clone(), None);
            assert!(wrong.call(heartbeat(1), ttl).await.is_err());
            // Never to itself.
            let mut me = Link::new(2, 2, addr, None);
            assert!(matches!(
                me.call(heartbeat(2), ttl).await,
                Err(CallError::NotSent { .. })
            ));
            server.abort();
            // Nobody listens any more: not sent.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut gone = Link::new(1, 2, "127.0.0.1:1".into(), None);
            assert!(matches!(
                gone.call(heartbeat(1), ttl).await,
                Err(CallError::NotSent { .. })
            ));
        });
    }
}
