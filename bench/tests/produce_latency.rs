//! Checks the latency `sluice-bench produce` reports against a known one.
//!
//! A TCP proxy on loopback sits between the bench and a real broker and
//! hands every byte the broker sends to the client `RESPONSE_DELAY` after it
//! arrived (requests pass at once). The broker advertises the proxy's
//! address, so every connection librdkafka opens goes through it. Every
//! acknowledgement therefore takes at least `RESPONSE_DELAY`, and the
//! median should take little more: the broker's own produce latency (an
//! fdatasync) plus the client's. A bench that times acknowledgements late
//! (for example when it notices them only every so many sends) reports a
//! median tens of milliseconds above the delay.
//!
//! `--batch-bytes 1` puts each record in its own request, so every record
//! gets its own delivery report: the most reports the bench has to keep up
//! with at a given rate. The records due while librdkafka connects through
//! the proxy (warm-up) then arrive as a burst of reports, which a bench that
//! serves one report per send slot never works off.
//!
//! Delaying bytes by a fixed time from their arrival keeps the responses of
//! one connection in order and does not add the delays of earlier responses
//! to later ones.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{free_port, run_bench};
use serde_json::Value;

/// Delay the proxy adds to every byte from the broker.
const RESPONSE_DELAY: Duration = Duration::from_millis(20);
/// How far above `RESPONSE_DELAY` the reported median may be: room for the
/// broker's fdatasync and a shared 2-core machine, well below the tens of
/// milliseconds of an acknowledgement timed late.
const P50_MARGIN: Duration = Duration::from_millis(10);
/// Connections one proxy accepts (librdkafka opens a few per client).
const PROXY_CONNECTIONS_MAX: usize = 32;
/// Chunks read from the broker and not yet due, per connection.
const CHUNKS_QUEUED_MAX: usize = 65_536;
const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Longest a proxy runs; every proxy loop ends by then.
const PROXY_LIFETIME_MAX: Duration = Duration::from_secs(180);
/// Iterations of any one proxy loop, a bound besides the lifetime.
const PROXY_LOOP_ITERATIONS_MAX: u64 = 50_000_000;
/// How long a proxy thread blocks before it checks whether to stop.
const PROXY_WAIT_SLICE: Duration = Duration::from_millis(50);

/// Low and high send rates (records/s) the bench is checked at. The high
/// one is what a debug broker on a shared 2-core machine keeps up with.
const RATE_LOW_PER_SEC: u32 = 200;
const RATE_HIGH_PER_SEC: u32 = 5_000;
/// Warm-up and measured window of each bench run.
const WARMUP_SECONDS: u32 = 1;
const MEASURE_SECONDS: u32 = 3;

/// Why a proxy thread stops: asked to, or past its lifetime.
#[derive(Clone)]
struct StopSignal {
    stop: Arc<AtomicBool>,
    deadline: Instant,
}

impl StopSignal {
    fn is_set(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// Loopback TCP proxy that delays the upstream-to-client direction by a
/// fixed time per byte. Stops and joins its threads when dropped.
struct DelayProxy {
    port: u16,
    stop: StopSignal,
    acceptor: Option<JoinHandle<()>>,
}

impl DelayProxy {
    /// Listens on a free loopback port now, so that the broker can be told
    /// to advertise it; relays to `upstream` once `start` is called.
    fn bind() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy port");
        let port = listener.local_addr().expect("proxy addr").port();
        (listener, port)
    }

    fn start(listener: TcpListener, upstream: SocketAddr, delay: Duration) -> DelayProxy {
        let port = listener.local_addr().expect("proxy addr").port();
        let stop = StopSignal {
            stop: Arc::new(AtomicBool::new(false)),
            deadline: Instant::now() + PROXY_LIFETIME_MAX,
        };
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let signal = stop.clone();
        // Test threads, outside the broker process: its shards own their
        // cores, the proxy is only the test's stand-in for a slow network.
        let acceptor = std::thread::spawn(move || accept_loop(listener, upstream, delay, signal));
        DelayProxy {
            port,
            stop,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, delay: Duration, stop: StopSignal) {
    const ACCEPT_PAUSE: Duration = Duration::from_millis(2);
    let mut relays: Vec<JoinHandle<()>> = Vec::new();
    let mut connections: usize = 0;
    for _ in 0..PROXY_LOOP_ITERATIONS_MAX {
        if stop.is_set() || connections >= PROXY_CONNECTIONS_MAX {
            break;
        }
        match listener.accept() {
            Ok((client, _)) => {
                connections += 1;
                relays.extend(start_relay(client, upstream, delay, &stop));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_PAUSE),
            Err(e) => panic!("proxy accept: {e}"),
        }
    }
    for relay in relays {
        let _ = relay.join();
    }
}

/// Three threads per connection: requests straight through, responses read
/// as they come (stamped) and written when due.
fn start_relay(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    stop: &StopSignal,
) -> Vec<JoinHandle<()>> {
    client
        .set_nonblocking(false)
        .expect("blocking client socket");
    let broker = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
        .expect("proxy connects to the broker");
    for socket in [&client, &broker] {
        socket.set_nodelay(true).expect("nodelay");
        socket
            .set_read_timeout(Some(PROXY_WAIT_SLICE))
            .expect("read timeout");
    }
    let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(CHUNKS_QUEUED_MAX);
    let clone = |s: &TcpStream| s.try_clone().expect("clone socket");
    let (client_in, client_out) = (clone(&client), client);
    let (broker_in, broker_out) = (clone(&broker), broker);
    let (s1, s2, s3) = (stop.clone(), stop.clone(), stop.clone());
    // Blocking relays, one thread per direction and stage: test threads,
    // bounded by `PROXY_CONNECTIONS_MAX` and the proxy's lifetime.
    vec![
        std::thread::spawn(move || forward_now(client_in, broker_out, s1)),
        std::thread::spawn(move || read_stamped(broker_in, tx, s2)),
        std::thread::spawn(move || write_when_due(rx, client_out, delay, s3)),
    ]
}

/// Reads up to `CHUNK_BYTES_MAX` through `buf`; `None` when the peer closed
/// or failed, an empty chunk when nothing came within the wait slice.
fn read_chunk(from: &mut TcpStream, buf: &mut [u8]) -> Option<Vec<u8>> {
    assert_eq!(buf.len(), CHUNK_BYTES_MAX);
    match from.read(buf) {
        Ok(0) => None,
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Some(Vec::new())
        }
        Err(_) => None,
    }
}

fn forward_now(mut from: TcpStream, mut to: TcpStream, stop: StopSignal) {
    let mut buf = vec![0u8; CHUNK_BYTES_MAX];
    for _ in 0..PROXY_LOOP_ITERATIONS_MAX {
        if stop.is_set() {
            break;
        }
        let Some(chunk) = read_chunk(&mut from, &mut buf) else {
            break;
        };
        if to.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn read_stamped(mut from: TcpStream, to: SyncSender<(Instant, Vec<u8>)>, stop: StopSignal) {
    let mut buf = vec![0u8; CHUNK_BYTES_MAX];
    for _ in 0..PROXY_LOOP_ITERATIONS_MAX {
        if stop.is_set() {
            break;
        }
        let Some(chunk) = read_chunk(&mut from, &mut buf) else {
            break;
        };
        if !chunk.is_empty() && to.send((Instant::now(), chunk)).is_err() {
            break;
        }
    }
    // Dropping the sender tells the writer no more is coming.
}

fn write_when_due(
    from: Receiver<(Instant, Vec<u8>)>,
    mut to: TcpStream,
    delay: Duration,
    stop: StopSignal,
) {
    for _ in 0..PROXY_LOOP_ITERATIONS_MAX {
        if stop.is_set() {
            break;
        }
        let (arrived, chunk) = match from.recv_timeout(PROXY_WAIT_SLICE) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let due = arrived + delay;
        let wait = due.saturating_duration_since(Instant::now());
        assert!(wait <= delay, "a chunk is never due later than its delay");
        std::thread::sleep(wait);
        if to.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Runs `produce` at `rate` through the proxy and returns its JSON line.
fn produce_through(proxy_port: u16, topic: &str, rate: u32) -> Value {
    let bootstrap = format!("127.0.0.1:{proxy_port}");
    let (rate, warmup, seconds) = (
        rate.to_string(),
        WARMUP_SECONDS.to_string(),
        MEASURE_SECONDS.to_string(),
    );
    let run = run_bench(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--topic",
        topic,
        "--rate",
        &rate,
        "--seconds",
        &seconds,
        "--warmup-seconds",
        &warmup,
        "--record-bytes",
        "100",
        "--acks",
        "all",
        "--linger-ms",
        "0",
        "--batch-bytes",
        "1",
        "--json",
    ]);
    run.json()
}

fn assert_p50_near_delay(json: &Value, rate: u32) {
    let latency = &json["latency_us"];
    let p50_us = latency["p50"].as_u64().expect("latency_us.p50");
    let (low_us, high_us) = (
        RESPONSE_DELAY.as_micros() as u64,
        (RESPONSE_DELAY + P50_MARGIN).as_micros() as u64,
    );
    eprintln!(
        "rate {rate}/s: latency_us {latency}, send_lag_us {}",
        json["send_lag_us"]
    );
    assert!(
        (low_us..=high_us).contains(&p50_us),
        "at {rate}/s through a {RESPONSE_DELAY:?} proxy the median latency should be \
         within {low_us}..={high_us} us, got {p50_us}: {json}"
    );
    assert_eq!(json["records_failed"], 0, "{json}");
    let sent = json["records_sent"].as_u64().expect("records_sent");
    let expected = u64::from(rate * (WARMUP_SECONDS + MEASURE_SECONDS));
    assert_eq!(sent, expected, "open loop sends every slot: {json}");
}

#[test]
fn produce_latency_matches_a_known_response_delay() {
    let broker_port = free_port();
    let (listener, proxy_port) = DelayProxy::bind();
    // The broker advertises the proxy's address.
    let advertised = format!("127.0.0.1:{proxy_port}");
    let _broker = common::Broker::start_on(broker_port, &["--advertised-listener", &advertised]);
    let upstream = SocketAddr::from(([127, 0, 0, 1], broker_port));
    let proxy = DelayProxy::start(listener, upstream, RESPONSE_DELAY);
    for (topic, rate) in [("slow", RATE_LOW_PER_SEC), ("fast", RATE_HIGH_PER_SEC)] {
        let json = produce_through(proxy.port, topic, rate);
        assert_p50_near_delay(&json, rate);
    }
}
