//! Admin HTTP server on its own small thread ("sluice-admin", a tokio
//! current-thread runtime with hyper 1). Serves `GET /healthz` -> 200 "ok",
//! `GET /metrics` (Prometheus text) and `GET /admin/memory` (JSON), both
//! built from snapshots the shards send on request (`probe`); everything
//! else is 404. Never runs on a shard core's executor.
//!
//! Access: without `--admin-token-file` the server must bind a loopback
//! address (start-up refuses another); with it, every route but `/healthz`
//! needs `Authorization: Bearer <token>` (else 401). With `--admin-tls` it
//! serves HTTPS only, with the Kafka listeners' certificate (a SIGHUP
//! reload applies to new connections here too); a handshake must finish
//! within `TLS_HANDSHAKE_TIMEOUT`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sluice_raft::Metadata;
use tokio::sync::watch;

use crate::probe::ProbeClient;

/// What the routes read: the shards (through their probes) and metadata.
pub struct AdminState {
    pub probes: ProbeClient,
    pub meta: Metadata,
    /// The broker default of `min.insync.replicas` (for `/metrics`).
    pub min_insync_replicas: usize,
    /// The search API (`search`).
    pub search: crate::search::SearchState,
    /// The bearer token every route but `/healthz` needs, if set.
    pub token: Option<String>,
    /// Serve HTTPS with this TLS material (`--admin-tls`).
    pub tls: Option<Arc<crate::security::Security>>,
    /// Ping systemd's watchdog this often while every shard answers its
    /// probe (`WatchdogSec=`).
    pub watchdog: Option<std::time::Duration>,
}

/// Reads `--admin-token-file` (its first line; at least 16 characters)
/// and checks the admin address: without a token it must be loopback.
pub fn token(file: Option<&std::path::Path>, addr: SocketAddr) -> anyhow::Result<Option<String>> {
    let Some(path) = file else {
        if !addr.ip().is_loopback() {
            anyhow::bail!("--admin-listen {addr}: not a loopback address; give --admin-token-file to serve it elsewhere (every route but /healthz then needs the bearer token)");
        }
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--admin-token-file: cannot read {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        anyhow::bail!(
            "--admin-token-file {}: the token must be at least 16 characters",
            path.display()
        );
    }
    Ok(Some(token))
}

/// Whether `req` carries the token (compared in constant time).
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Admin connections served at once; further ones wait in the backlog.
const ADMIN_CONNECTIONS_MAX: usize = 64;
/// A TLS client must finish its handshake within this, or is dropped.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct AdminHandle {
    pub addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl AdminHandle {
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("admin thread panicked");
        }
    }
}

/// Binds the admin address; called early so a bad address fails start-up
/// before any shard opens its WAL.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("--admin-listen {addr}: cannot bind"))?;
    listener.set_nonblocking(true).context("admin listener")?;
    Ok(listener)
}

/// Serves on a new thread until `stop` turns true (once the node is ready,
/// so /healthz answers only then).
pub fn start(
    listener: std::net::TcpListener,
    state: AdminState,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<AdminHandle> {
    let addr = listener.local_addr().context("admin listener")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        // Searches run on blocking threads, at most this many at once:
        // more threads would only add allocator arenas.
        .max_blocking_threads(crate::search::SEARCHES_MAX)
        .build()
        .context("admin runtime")?;
    let state = Arc::new(state);
    // The admin thread: off every shard core by design (module header).
    let thread = std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || rt.block_on(serve(listener, state, stop)))
        .context("spawning the admin thread")?;
    Ok(AdminHandle { addr, thread })
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<AdminState>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "admin listener unusable"),
    };
    if let Some(every) = state.watchdog {
        tokio::task::spawn(watchdog(state.probes.clone(), every, stop.clone()));
    }
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(ADMIN_CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let state = Arc::clone(&state);
        tokio::task::spawn(async move {
            let tls = state.tls.as_ref().and_then(|s| s.tls.as_ref());
            match tls.map(|t| tokio_rustls::TlsAcceptor::from(t.admin_config())) {
                None => serve_connection(stream, state).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => serve_connection(stream, state).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Pings systemd's watchdog every `every` while each shard answers its
/// probe: a shard stuck in a busy loop or a blocking call stops the pings,
/// and systemd restarts the node.
async fn watchdog(
    probes: ProbeClient,
    every: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    /// Probes a ping waits for: a shard's probe queue may be full for a
    /// moment (scrapes of /metrics), which is not a stuck shard.
    const TRIES: usize = 3;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut silent = None;
        for _ in 0..TRIES {
            let answers = probes.collect().await;
            silent = answers.iter().find_map(|a| a.as_ref().err().copied());
            if silent.is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        match silent {
            None => crate::systemd::watchdog(),
            Some(shard) => tracing::warn!(
                shard,
                "watchdog: shard did not answer its probe; not telling systemd it is alive"
            ),
        }
    }
}

async fn serve_connection<S>(stream: S, state: Arc<AdminState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| route(req, Arc::clone(&state)));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin connection error");
    }
}

async fn route(
    req: Request<Incoming>,
    state: Arc<AdminState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
    const JSON: &str = "application/json";
    if let Some(token) = &state.token {
        if req.uri().path() != "/healthz" && !authorized(&req, token) {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"bearer token required")));
            *resp.status_mut() = StatusCode::UNAUTHORIZED;
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return Ok(resp);
        }
    }
    if crate::search::handles(req.uri().path()) {
        let view = state.meta.view();
        return Ok(crate::search::serve(req, view, &state.search).await);
    }
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, TEXT, "ok".to_string()),
        (&Method::GET, "/metrics") => {
            let probes = state.probes.collect().await;
            (
                StatusCode::OK,
                PROMETHEUS,
                crate::metrics::render_prometheus(
                    probes,
                    crate::metrics::ClusterFigures::of(
                        &state.meta.view(),
                        state.meta.controller(),
                        state.min_insync_replicas,
                    ),
                    state.search.figures(),
                ),
            )
        }
        (&Method::GET, "/admin/memory") => {
            let probes = state.probes.collect().await;
            let view = state.meta.view();
            let body = crate::metrics::render_memory_json(probes, &view, &state.search.figures());
            (StatusCode::OK, JSON, body)
        }
        _ => (StatusCode::NOT_FOUND, TEXT, "not found".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}
