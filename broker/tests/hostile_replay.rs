//! Mutated real client traffic against the running broker binary: the
//! corpus of librdkafka, kafka-python and kafkajs connections
//! (`tests/corpus/`, see `corpus_capture.rs`) is replayed by `WORKERS`
//! threads over many connections, about a third of the frames mutated by
//! `common/mutate.rs` (bit flips, lying counts and lengths, varints, api
//! key and version swaps, truncation, splices, lying size prefixes).
//!
//! One malformed frame must never take the broker down: every
//! `CHECK_EVERY_FRAMES` mutated frames (and at least every `CHECK_EVERY`)
//! the process must be alive, a fresh connection must get an ApiVersions
//! answer and the log must hold no panic. Afterwards an rdkafka client
//! produces and consumes, and the broker's memory is back to idle: no
//! open connection, the request-buffer pool as before, no task, fetch
//! waiter or produce left behind, and RSS above the idle value by at most
//! the request-buffer pools plus `RSS_SLACK_BYTES`.
//!
//! Bounded: `SLUICE_REPLAY_FRAMES` mutated frames (default
//! `FRAMES_DEFAULT`) or `SLUICE_REPLAY_SECONDS` (default
//! `SECONDS_DEFAULT`), whichever comes first; `SLUICE_REPLAY_SEED` picks
//! the run (default `SEED_DEFAULT`). When the broker dies, the streams of
//! the connections open at that moment are saved under
//! `$CARGO_TARGET_TMPDIR/hostile-replay/` and the test fails naming them.

mod common;
#[path = "common/mutate.rs"]
mod mutate;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, ResponseHeader};
use kafka_protocol::protocol::Decodable;

/// Threads replaying at once, each with one connection at a time.
const WORKERS: usize = 16;
/// Mutated frames of a default run (`SLUICE_REPLAY_FRAMES`).
const FRAMES_DEFAULT: u64 = 20_000;
/// Time bound of a default run (`SLUICE_REPLAY_SECONDS`).
const SECONDS_DEFAULT: u64 = 60;
/// Seed of a default run (`SLUICE_REPLAY_SEED`).
const SEED_DEFAULT: u64 = 0x5e1c_e5ee_d001;
/// Liveness checks: every this many mutated frames, and at least this
/// often.
const CHECK_EVERY_FRAMES: u64 = 500;
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// One connection sends at most this many frames, for at most this long.
const FRAMES_PER_CONNECTION_MAX: usize = 48;
const CONNECTION_TIME_MAX: Duration = Duration::from_secs(3);
/// After each frame, how long a worker waits for a reply or a close.
const READ_WAIT: Duration = Duration::from_millis(5);
/// One in this many frames is mutated (the others are sent as recorded).
const MUTATE_ONE_IN: u32 = 3;
/// One in this many mutations splices in a second corpus frame.
const PAIR_ONE_IN: u32 = 8;
/// The wait for one reply while replaying the corpus unmutated.
const REPLY_WAIT: Duration = Duration::from_secs(5);
/// How long the broker has to return to idle after the run: a long poll
/// whose client pipelined more frames and then went away ends within the
/// broker's cap on `max_wait_ms` (60 s).
const SETTLE: Duration = Duration::from_secs(70);
/// RSS the run may leave behind besides the request-buffer pools (which
/// lying size prefixes fill, and whose freed bytes the allocator keeps):
/// the tail cache, index and metadata of what mutated requests
/// legitimately wrote or created (records, topics, groups).
const RSS_SLACK_BYTES: u64 = 32 << 20;
/// `/metrics` families read here.
const CONNECTIONS: &str = "sluice_shard_connections";
const TASKS: &str = "sluice_shard_tasks";
const PRODUCE_TASKS: &str = "sluice_shard_produce_tasks";
const FETCH_WAITERS: &str = "sluice_shard_fetch_waiters";
const POOL_USED: &str = "sluice_shard_pool_used_bytes";
const POOL_LIMIT: &str = "sluice_shard_pool_limit_bytes";
const POOL_PEAK: &str = "sluice_shard_pool_peak_bytes";
const REQUEST_BUFFERS: &str = "pool=\"request_buffers\"";
const REJECTED: &str = "sluice_shard_requests_rejected_total";
const PARTITIONS: &str = "sluice_shard_partitions";
const INDEX_ENTRIES: &str = "sluice_shard_index_entries";
const RSS_ANON: &str = "sluice_process_resident_anon_bytes";
const HEALTH_TOPIC: &str = "healthcheck";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

#[test]
fn mutated_client_traffic_never_takes_the_broker_down() {
    let (names, corpus): (Vec<String>, Vec<Vec<Bytes>>) = corpus_frames().into_iter().unzip();
    assert!(
        corpus.len() >= 3,
        "no corpus in tests/corpus: run corpus_capture with SLUICE_CORPUS_WRITE=1"
    );
    mutator_sanity(&corpus);

    let mut b = Broker::start_with(
        2,
        &[
            "--frame-read-timeout-ms",
            "2000",
            "--group-initial-rebalance-delay-ms",
            "0",
        ],
    );
    served_matches_api_versions(&b);
    create_topic(&b, HEALTH_TOPIC, 1);
    for (topic, partitions) in CORPUS_TOPICS {
        create_topic(&b, topic, *partitions);
    }
    let refused_unmutated = replay_unmutated(&b, &names, &corpus);
    assert_healthy(&b);
    let request_buffers_limit =
        metric_sum_where(&b, POOL_LIMIT, REQUEST_BUFFERS).expect("request_buffers limit");
    let (idle, settled) = settle(&b, None);
    eprintln!("idle: {idle:?}");
    assert!(settled, "the broker is not idle before the run");

    let seed = env_or("SLUICE_REPLAY_SEED", SEED_DEFAULT);
    let frames_max = env_or("SLUICE_REPLAY_FRAMES", FRAMES_DEFAULT);
    let time_max = Duration::from_secs(env_or("SLUICE_REPLAY_SECONDS", SECONDS_DEFAULT));
    let run = Run::new(&b, Arc::new(corpus), seed, frames_max);
    let started = Instant::now();
    let workers = run.spawn_workers();
    let death = run.monitor(&mut b, started + time_max);
    run.stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("worker thread");
    }
    let elapsed = started.elapsed();
    run.tally.report(seed, elapsed);
    if let Some(why) = death {
        let saved = run.save_open_streams(seed);
        panic!(
            "{why}\nseed {seed}: the streams of the {} connections open then are in {} \
             (rerun: SLUICE_REPLAY_SEED={seed})",
            saved.1,
            saved.0.display()
        );
    }

    assert!(b.alive(), "the broker exited:\n{}", log_tail(&b, 60));
    api_versions(b.port).unwrap_or_else(|e| panic!("ApiVersions after the run: {e}"));
    assert_healthy(&b);
    let failures = after_the_run(&b, &idle, request_buffers_limit, &refused_unmutated);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What is wrong with the broker after the run: not back to idle, RSS
/// grown past its bound, a panic in the log, real requests refused.
fn after_the_run(
    b: &Broker,
    idle: &Idle,
    request_buffers_limit: u64,
    refused_unmutated: &[String],
) -> Vec<String> {
    let (after, settled) = settle(b, Some(idle));
    eprintln!("after: {after:?}");
    let mut failures = Vec::new();
    if !settled {
        failures.push(format!(
            "not back to idle {SETTLE:?} after the run: connections {} (idle {}), \
             fetch waiters {} (idle {}), request buffers {} bytes (idle {}), tasks {} (idle {}), \
             produce tasks {} (idle {})",
            after.connections,
            idle.connections,
            after.fetch_waiters,
            idle.fetch_waiters,
            after.request_buffers_bytes,
            idle.request_buffers_bytes,
            after.tasks,
            idle.tasks,
            after.produce_tasks,
            idle.produce_tasks
        ));
    }
    let rss_growth_max = request_buffers_limit + RSS_SLACK_BYTES;
    eprintln!(
        "RSS: idle {} MiB, after {} MiB (bound: idle + {} MiB, the request-buffer pools + {} MiB)",
        idle.rss_bytes >> 20,
        after.rss_bytes >> 20,
        rss_growth_max >> 20,
        RSS_SLACK_BYTES >> 20
    );
    if after.rss_bytes > idle.rss_bytes + rss_growth_max {
        failures.push(format!(
            "RSS grew from {} to {} bytes (bound: {rss_growth_max} more)",
            idle.rss_bytes, after.rss_bytes
        ));
    }
    let panics = grep_log(b, &BAD_LINES);
    if !panics.is_empty() {
        failures.push(format!("the broker log: {panics:?}"));
    }
    if !refused_unmutated.is_empty() {
        failures.push(format!(
            "the broker closed connections on real client requests of the corpus, unmutated: \
             {refused_unmutated:?}"
        ));
    }
    failures
}

// ---------------------------------------------------------------- the mutator

/// The mutator is deterministic per seed, mutates (almost) every frame,
/// keeps the size prefix true about nine times in ten and lies in every
/// way otherwise, bounds what it adds, and swaps in served keys.
fn mutator_sanity(corpus: &[Vec<Bytes>]) {
    let frames: Vec<&Bytes> = corpus.iter().flatten().collect();
    let run = |seed: u64| {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut out = Vec::new();
        frames
            .iter()
            .cycle()
            .take(4000)
            .map(|f| {
                mutate::mutate(&mut rng, f, &mut out);
                out.clone()
            })
            .collect::<Vec<_>>()
    };
    let (a, again, other) = (run(1), run(1), run(2));
    assert_eq!(a, again, "same seed, same mutations");
    assert_ne!(a, other, "another seed, other mutations");

    let (mut changed, mut true_prefix, mut swapped) = (0usize, 0usize, 0usize);
    let mut lies = BTreeSet::new();
    for (m, f) in a.iter().zip(frames.iter().cycle()) {
        assert!(
            m.len() >= 4 && m.len() <= f.len() + mutate::STACKED_MAX * mutate::GROWTH_BYTES_MAX
        );
        changed += usize::from(m[..] != f[..]);
        let prefix = i32::from_be_bytes([m[0], m[1], m[2], m[3]]);
        let len = (m.len() - 4) as i64;
        match i64::from(prefix) {
            p if p == len => true_prefix += 1,
            p if p < 0 => drop(lies.insert("negative")),
            p if p > len + 1024 => drop(lies.insert("huge")),
            p if p > len => drop(lies.insert("bigger")),
            _ => drop(lies.insert("smaller")),
        }
        let moved = mutate::key_version(m).filter(|kv| Some(*kv) != mutate::key_version(f));
        if let Some((k, v)) = moved {
            swapped += usize::from(
                mutate::SERVED
                    .iter()
                    .any(|&(key, lo, hi)| key == k && (lo..=hi).contains(&v)),
            );
        }
    }
    let n = a.len();
    assert!(changed * 100 >= n * 95, "{changed} of {n} frames changed");
    assert!(
        (n * 80..=n * 97).contains(&(true_prefix * 100)),
        "{true_prefix} of {n} size prefixes true"
    );
    assert_eq!(lies.len(), 4, "size prefix lies seen: {lies:?}");
    assert!(
        swapped * 100 >= n,
        "{swapped} of {n} moved to another served key/version"
    );

    let mut varint = Vec::new();
    for (v, want) in [
        (0u32, &[0x00][..]),
        (1, &[0x01]),
        (300, &[0xac, 0x02]),
        (u32::MAX, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
    ] {
        varint.clear();
        mutate::put_uvarint(&mut varint, v);
        assert_eq!(varint, want, "uvarint {v}");
    }
}

/// `mutate::SERVED` is what the broker advertises.
fn served_matches_api_versions(b: &Broker) {
    let advertised = api_versions(b.port).expect("ApiVersions");
    let served: BTreeSet<(i16, i16, i16)> = mutate::SERVED.iter().copied().collect();
    assert_eq!(
        served, advertised,
        "mutate::SERVED differs from the broker's ApiVersions answer"
    );
}

// ---------------------------------------------------------------- talking to the broker

/// The broker's ApiVersions v3 answer on a fresh connection, as (key, min,
/// max); `Err` when there is none within 10 s.
fn api_versions(port: u16) -> Result<BTreeSet<(i16, i16, i16)>, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let req = request_frame(ApiKey::ApiVersions, 3, 7, &ApiVersionsRequest::default());
    s.write_all(&req).map_err(|e| format!("write: {e}"))?;
    let mut size = [0u8; 4];
    s.read_exact(&mut size).map_err(|e| format!("read: {e}"))?;
    let len = usize::try_from(i32::from_be_bytes(size)).map_err(|_| "negative size")?;
    if len > 1 << 20 {
        return Err(format!("a reply of {len} bytes"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(&mut body, 0).map_err(|e| e.to_string())?;
    let resp = ApiVersionsResponse::decode(&mut body, 3).map_err(|e| e.to_string())?;
    if header.correlation_id != 7 || resp.error_code != 0 {
        return Err(format!("answer {header:?} {}", resp.error_code));
    }
    Ok(resp
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect())
}

/// Counts whole reply frames in what the broker sends, without keeping
/// their bytes.
#[derive(Default)]
struct Replies {
    prefix: [u8; 4],
    prefix_len: usize,
    body_left: usize,
    count: u64,
}

impl Replies {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                self.count += u64::from(self.body_left == 0);
                continue;
            }
            self.prefix[self.prefix_len] = bytes[0];
            self.prefix_len += 1;
            bytes = &bytes[1..];
            if self.prefix_len == 4 {
                self.prefix_len = 0;
                self.body_left = usize::try_from(i32::from_be_bytes(self.prefix)).unwrap_or(0);
                self.count += u64::from(self.body_left == 0);
            }
        }
    }
}

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
enum Conn {
    Open,
    /// End of stream or reset: the broker closed the connection.
    Closed,
}

/// Reads what arrives within `wait`, then whatever is there already.
fn drain(s: &mut TcpStream, replies: &mut Replies, wait: Duration) -> Conn {
    let mut buf = [0u8; 16 * 1024];
    let mut timeout = wait;
    // Bounded: 64 reads of what is already there.
    for _ in 0..64 {
        if s.set_read_timeout(Some(timeout)).is_err() {
            return Conn::Closed;
        }
        match s.read(&mut buf) {
            Ok(0) => return Conn::Closed,
            Ok(n) => replies.feed(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Conn::Open
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Conn::Closed,
        }
        timeout = Duration::from_micros(100);
    }
    Conn::Open
}

fn open(port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_nodelay(true).ok()?;
    Some(s)
}

/// Replays every corpus connection as recorded, one frame at a time,
/// waiting for each reply: creates the groups and offsets the mutated
/// frames then reach. Returns the requests after which the broker closed
/// the connection instead of answering (file, frame index, api key and
/// version).
fn replay_unmutated(b: &Broker, names: &[String], corpus: &[Vec<Bytes>]) -> Vec<String> {
    let mut refused = Vec::new();
    let mut replies = 0;
    for (file, frames) in corpus.iter().enumerate() {
        let mut s = open(b.port).expect("connect");
        let mut r = Replies::default();
        for (i, f) in frames.iter().enumerate() {
            let (key, version) = frame_key_version(f);
            let before = r.count;
            let write = s.write_all(f);
            let deadline = Instant::now() + REPLY_WAIT;
            let mut state = if write.is_ok() {
                Conn::Open
            } else {
                Conn::Closed
            };
            while state == Conn::Open && r.count == before && Instant::now() < deadline {
                state = drain(&mut s, &mut r, Duration::from_millis(50));
            }
            if state == Conn::Closed {
                refused.push(format!(
                    "{} frame {i}: api key {key} v{version}",
                    names[file]
                ));
                break;
            }
        }
        replies += r.count;
    }
    eprintln!("unmutated corpus: {replies} replies, refused: {refused:?}");
    refused
}

// ---------------------------------------------------------------- the run

#[derive(Default)]
struct Tally {
    mutated: AtomicU64,
    unmutated: AtomicU64,
    opened: AtomicU64,
    closed_by_broker: AtomicU64,
    connect_failures: AtomicU64,
    replies: AtomicU64,
}

impl Tally {
    fn report(&self, seed: u64, elapsed: Duration) {
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        eprintln!(
            "hostile replay: seed {seed}, {} mutated frames (+{} unmutated), {} connections opened, \
             {} closed by the broker, {} failed to connect, {} replies, {:.1} s",
            get(&self.mutated),
            get(&self.unmutated),
            get(&self.opened),
            get(&self.closed_by_broker),
            get(&self.connect_failures),
            get(&self.replies),
            elapsed.as_secs_f64()
        );
    }
}

struct Run {
    port: u16,
    corpus: Arc<Vec<Vec<Bytes>>>,
    seed: u64,
    frames_max: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    /// Per worker: what it sent on its current connection.
    streams: Arc<Vec<Mutex<Vec<u8>>>>,
}

impl Run {
    fn new(b: &Broker, corpus: Arc<Vec<Vec<Bytes>>>, seed: u64, frames_max: u64) -> Run {
        Run {
            port: b.port,
            corpus,
            seed,
            frames_max,
            stop: Arc::new(AtomicBool::new(false)),
            tally: Arc::new(Tally::default()),
            streams: Arc::new((0..WORKERS).map(|_| Mutex::new(Vec::new())).collect()),
        }
    }

    fn spawn_workers(&self) -> Vec<std::thread::JoinHandle<()>> {
        (0..WORKERS)
            .map(|id| {
                let w = Worker {
                    id,
                    port: self.port,
                    corpus: self.corpus.clone(),
                    rng: fastrand::Rng::with_seed(
                        self.seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    ),
                    frames_max: self.frames_max,
                    stop: self.stop.clone(),
                    tally: self.tally.clone(),
                    streams: self.streams.clone(),
                };
                // Client threads of the test process (`WORKERS` of them),
                // each playing one hostile client against the broker.
                std::thread::Builder::new()
                    .name(format!("replay-{id}"))
                    .spawn(move || w.run())
                    .expect("spawn worker")
            })
            .collect()
    }

    /// Checks the broker while the workers run; returns why it is broken,
    /// if it is. Ends when the workers are done or at `deadline`.
    fn monitor(&self, b: &mut Broker, deadline: Instant) -> Option<String> {
        let mut log = LogScan::default();
        let mut next_frames = CHECK_EVERY_FRAMES;
        let mut last_check = Instant::now();
        loop {
            let sent = self.tally.mutated.load(Ordering::SeqCst);
            let done = sent >= self.frames_max || Instant::now() >= deadline;
            if done || sent >= next_frames || last_check.elapsed() >= CHECK_EVERY {
                if let Some(why) = self.check(b, &mut log, sent) {
                    return Some(why);
                }
                next_frames = sent + CHECK_EVERY_FRAMES;
                last_check = Instant::now();
            }
            if done {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check(&self, b: &mut Broker, log: &mut LogScan, sent: u64) -> Option<String> {
        let bad = log.scan(b);
        if let Some(status) = b.exit_status() {
            return Some(format!(
                "the broker exited ({status}) after {sent} mutated frames\n\
                 broken lines of its log: {bad:?}\nthe end of its log:\n{}",
                log_tail(b, 30)
            ));
        }
        if !bad.is_empty() {
            return Some(format!(
                "after {sent} mutated frames the broker log says:\n{}",
                bad.join("\n")
            ));
        }
        if let Err(e) = api_versions(b.port) {
            let status = b.exit_status();
            return Some(format!(
                "after {sent} mutated frames a fresh connection got no ApiVersions answer ({e}); \
                 exit status {status:?}; log:\n{}",
                log_tail(b, 30)
            ));
        }
        None
    }

    /// Writes each worker's current stream to a file; returns the
    /// directory and how many were written.
    fn save_open_streams(&self, seed: u64) -> (PathBuf, usize) {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hostile-replay");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut n = 0;
        for (id, s) in self.streams.iter().enumerate() {
            let bytes = s.lock().unwrap_or_else(|e| e.into_inner());
            if !bytes.is_empty() {
                std::fs::write(dir.join(format!("seed{seed}-worker{id}.bin")), &*bytes)
                    .expect("save");
                n += 1;
            }
        }
        (dir, n)
    }
}

struct Worker {
    id: usize,
    port: u16,
    corpus: Arc<Vec<Vec<Bytes>>>,
    rng: fastrand::Rng,
    frames_max: u64,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    streams: Arc<Vec<Mutex<Vec<u8>>>>,
}

impl Worker {
    fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let Some(s) = open(self.port) else {
                self.tally.connect_failures.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            self.tally.opened.fetch_add(1, Ordering::SeqCst);
            if !self.connection(s) {
                return;
            }
        }
    }

    /// One connection: frames of one corpus connection from a random
    /// start, some mutated. False when the frame budget is spent.
    fn connection(&mut self, mut s: TcpStream) -> bool {
        let corpus = self.corpus.clone();
        let file = &corpus[self.rng.usize(..corpus.len())];
        let start = self.rng.usize(..file.len());
        let streams = self.streams.clone();
        let mut stream = streams[self.id].lock().unwrap_or_else(|e| e.into_inner());
        stream.clear();
        let mut replies = Replies::default();
        let mut frame = Vec::new();
        let deadline = Instant::now() + CONNECTION_TIME_MAX;
        let mut budget_left = true;
        let mut state = Conn::Open;
        for i in 0..FRAMES_PER_CONNECTION_MAX {
            if self.stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                break;
            }
            let recorded = &file[(start + i) % file.len()];
            if self.rng.u32(..MUTATE_ONE_IN) == 0 {
                if self.tally.mutated.fetch_add(1, Ordering::SeqCst) >= self.frames_max {
                    self.tally.mutated.fetch_sub(1, Ordering::SeqCst);
                    budget_left = false;
                    break;
                }
                self.mutate(recorded, &mut frame);
            } else {
                self.tally.unmutated.fetch_add(1, Ordering::SeqCst);
                frame.clear();
                frame.extend_from_slice(recorded);
            }
            stream.extend_from_slice(&frame);
            if s.write_all(&frame).is_err() {
                state = Conn::Closed;
                break;
            }
            state = drain(&mut s, &mut replies, READ_WAIT);
            if state == Conn::Closed {
                break;
            }
        }
        if state == Conn::Open {
            // A last look: did the broker answer or close?
            state = drain(&mut s, &mut replies, READ_WAIT * 4);
        }
        if state == Conn::Closed {
            self.tally.closed_by_broker.fetch_add(1, Ordering::SeqCst);
        }
        self.tally
            .replies
            .fetch_add(replies.count, Ordering::SeqCst);
        let _ = s.shutdown(Shutdown::Both);
        budget_left
    }

    fn mutate(&mut self, recorded: &[u8], out: &mut Vec<u8>) {
        if self.rng.u32(..PAIR_ONE_IN) == 0 {
            let file = &self.corpus[self.rng.usize(..self.corpus.len())];
            let other = &file[self.rng.usize(..file.len())];
            mutate::mutate_pair(&mut self.rng, recorded, other, out);
        } else {
            mutate::mutate(&mut self.rng, recorded, out);
        }
    }
}

// ---------------------------------------------------------------- broker state

/// The broker's idle state, as `/metrics` and `/proc` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Idle {
    connections: u64,
    tasks: u64,
    produce_tasks: u64,
    fetch_waiters: u64,
    request_buffers_bytes: u64,
    rss_bytes: u64,
    // Not compared: what the mutated requests legitimately left behind.
    rejected: u64,
    partitions: u64,
    index_entries: u64,
    pools_bytes: u64,
    request_buffers_peak_bytes: u64,
    rss_anon_bytes: u64,
}

fn idle_now(b: &Broker) -> Idle {
    let m = |name| metric_sum(b, name).unwrap_or_else(|| panic!("no {name} on /metrics"));
    Idle {
        connections: m(CONNECTIONS),
        tasks: m(TASKS),
        produce_tasks: m(PRODUCE_TASKS),
        fetch_waiters: m(FETCH_WAITERS),
        request_buffers_bytes: metric_sum_where(b, POOL_USED, REQUEST_BUFFERS)
            .expect("request_buffers pool on /metrics"),
        rss_bytes: b.rss_bytes(),
        rejected: metric_sum(b, REJECTED).unwrap_or(0),
        partitions: m(PARTITIONS),
        index_entries: m(INDEX_ENTRIES),
        pools_bytes: m(POOL_USED),
        request_buffers_peak_bytes: metric_sum_where(b, POOL_PEAK, REQUEST_BUFFERS)
            .expect("request_buffers peak on /metrics"),
        rss_anon_bytes: m(RSS_ANON),
    }
}

/// Waits until the broker is idle: no connection open; with `baseline`,
/// every gauge back to its value (RSS and counters excepted). Returns the
/// last state seen and whether it settled within `SETTLE`.
fn settle(b: &Broker, baseline: Option<&Idle>) -> (Idle, bool) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = idle_now(b);
        let settled = match baseline {
            None => now.connections == 0 && now.fetch_waiters == 0 && now.produce_tasks == 0,
            Some(base) => {
                now.connections == base.connections
                    && now.tasks == base.tasks
                    && now.produce_tasks == base.produce_tasks
                    && now.fetch_waiters == base.fetch_waiters
                    && now.request_buffers_bytes == base.request_buffers_bytes
            }
        };
        if settled || Instant::now() >= deadline {
            return (now, settled);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------- the log

/// Reads the broker log from where the last scan stopped.
#[derive(Default)]
struct LogScan {
    offset: u64,
}

/// Lines that mean the broker is broken.
const BAD_LINES: [&str; 3] = ["panicked", "memory allocation of", "fatal runtime error"];

impl LogScan {
    fn scan(&mut self, b: &Broker) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(b.log_path()) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut text = Vec::new();
        // Bounded: at most 64 MiB per scan; the rest waits for the next.
        let _ = (&mut f).take(64 << 20).read_to_end(&mut text);
        self.offset += text.len() as u64;
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| BAD_LINES.iter().any(|bad| l.contains(bad)))
            .map(str::to_string)
            .collect()
    }
}

fn grep_log(b: &Broker, words: &[&str]) -> Vec<String> {
    b.log_text()
        .lines()
        .filter(|l| words.iter().any(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

fn log_tail(b: &Broker, lines: usize) -> String {
    let text = b.log_text();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
