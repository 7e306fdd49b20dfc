//! A recording TCP proxy for tests: listens on a free 127.0.0.1 port,
//! forwards every client connection to the broker, and records what each
//! client sent (for a Kafka client: its size-prefixed request frames,
//! exactly as written). Start the broker with `--advertised-listener
//! 127.0.0.1:<proxy port>` so that clients come back through the proxy
//! after Metadata.
//!
//! Plain std threads: one accept thread, two per connection (one each
//! way). Bounded: at most `connections_max` connections are served (later
//! ones are closed at accept and counted), at most `recorded_bytes_max`
//! bytes are recorded over all connections (a connection past it is
//! forwarded but no longer recorded, and marked truncated). Every thread
//! polls the stop flag at least every `POLL`, so dropping the proxy ends
//! them all.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a blocked thread looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// A write to either side that makes no progress for this long ends the
/// connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to the broker.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes moved by one read.
const CHUNK_BYTES: usize = 64 * 1024;

/// The proxy's bounds.
#[derive(Debug, Clone, Copy)]
pub struct ProxyLimits {
    pub connections_max: usize,
    pub recorded_bytes_max: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            connections_max: 256,
            recorded_bytes_max: 64 << 20,
        }
    }
}

/// What one client connection sent.
#[derive(Debug, Default, Clone)]
pub struct Recording {
    /// The client-to-broker bytes, in order.
    pub bytes: Vec<u8>,
    /// Bytes were left out for `recorded_bytes_max`.
    pub truncated: bool,
    /// The client has not closed its side yet.
    pub open: bool,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    recorded_bytes: AtomicUsize,
    refused: AtomicUsize,
    conns: Mutex<Vec<Arc<Mutex<Recording>>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A recording proxy; bound at creation, forwarding once started.
pub struct RecordingProxy {
    listener: Option<TcpListener>,
    port: u16,
    limits: ProxyLimits,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl RecordingProxy {
    /// Binds a free loopback port; nothing is accepted before `start`
    /// (connections wait in the backlog).
    pub fn bind(limits: ProxyLimits) -> RecordingProxy {
        assert!(limits.connections_max > 0);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        RecordingProxy {
            listener: Some(listener),
            port,
            limits,
            shared: Arc::new(Shared::default()),
            accept: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts forwarding to `127.0.0.1:<upstream_port>`.
    pub fn start(&mut self, upstream_port: u16) {
        let listener = self.listener.take().expect("started once");
        listener.set_nonblocking(true).expect("nonblocking");
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let (shared, limits) = (self.shared.clone(), self.limits);
        // Test-side threads, in the test process: the proxy stands where a
        // network hop would, outside the broker and its pinned shards.
        let handle = std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(&listener, upstream, &shared, limits))
            .expect("spawn accept thread");
        self.accept = Some(handle);
    }

    /// Connections accepted and forwarded so far.
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Connections closed at accept for `connections_max`.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// A copy of the recordings of connections `from..`, in accept order.
    pub fn recordings_from(&self, from: usize) -> Vec<Recording> {
        let conns = lock(&self.shared.conns);
        conns.iter().skip(from).map(|r| lock(r).clone()).collect()
    }

    /// Waits until every client closed its connection; false when some
    /// are still open after `timeout`.
    pub fn wait_all_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let open = lock(&self.shared.conns).iter().any(|r| lock(r).open);
            if !open {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    upstream: SocketAddr,
    shared: &Arc<Shared>,
    limits: ProxyLimits,
) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if lock(&shared.conns).len() >= limits.connections_max {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    continue; // dropping `client` closes it
                }
                serve(client, upstream, shared, limits);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Connects to the broker and starts the two copying threads.
fn serve(client: TcpStream, upstream: SocketAddr, shared: &Arc<Shared>, limits: ProxyLimits) {
    let Ok(broker) = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT) else {
        return; // the client sees its connection closed
    };
    let setup = |s: &TcpStream| -> std::io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(POLL))?;
        s.set_write_timeout(Some(WRITE_TIMEOUT))?;
        s.set_nodelay(true)
    };
    if setup(&client).is_err() || setup(&broker).is_err() {
        return;
    }
    let (Ok(client2), Ok(broker2)) = (client.try_clone(), broker.try_clone()) else {
        return;
    };
    let recording = Arc::new(Mutex::new(Recording {
        open: true,
        ..Recording::default()
    }));
    lock(&shared.conns).push(recording.clone());
    let id = lock(&shared.conns).len();
    let s1 = shared.clone();
    // Two blocking pumps per proxied connection (bounded by the proxy's
    // connection limit), in the test process, not the broker.
    let up = std::thread::Builder::new()
        .name(format!("proxy-{id}-up"))
        .spawn(move || {
            copy(
                client,
                broker,
                &s1,
                Some((&recording, limits.recorded_bytes_max)),
            );
            lock(&recording).open = false;
        })
        .expect("spawn proxy thread");
    let s2 = shared.clone();
    let down = std::thread::Builder::new()
        .name(format!("proxy-{id}-down"))
        .spawn(move || copy(broker2, client2, &s2, None))
        .expect("spawn proxy thread");
    lock(&shared.threads).extend([up, down]);
}

/// Copies `from` to `to` until `from` ends (then half-closes `to`), a
/// write fails (then closes both) or the proxy stops; records what it
/// copies when given a recording.
fn copy(
    mut from: TcpStream,
    mut to: TcpStream,
    shared: &Shared,
    record: Option<(&Mutex<Recording>, usize)>,
) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    while !shared.stop.load(Ordering::SeqCst) {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if let Some((recording, max)) = record {
            let mut r = lock(recording);
            let total = shared.recorded_bytes.fetch_add(n, Ordering::SeqCst) + n;
            if total <= max && !r.truncated {
                r.bytes.extend_from_slice(&buf[..n]);
            } else {
                r.truncated = true;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
