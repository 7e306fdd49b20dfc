//! Seeded mutation fuzzing of the whole request path, on stable Rust.
//!
//! Each input is the byte stream of one client connection, served by the
//! real `connection::serve` (size prefix, frame memory, `frame_check`,
//! header, every served API and version, the handlers, record-batch
//! validation, the WAL) against a real data plane and metadata service.
//! Inputs are mutated copies of seeds: the corpus of real client traffic
//! in `tests/corpus/` (librdkafka, kafka-python, kafkajs) and a populated
//! request of every served API at every version (`frame_check::samples`).
//! Mutations come from `tests/common/mutate.rs` (the live-broker replay
//! uses the same), plus counts and lengths found by `frame_check` set to
//! extreme values.
//!
//! A panic in any connection fails the run and writes the input to
//! `target/fuzz-crashes/`; an abort ends the process, and
//! `target/fuzz-progress` names an input shortly before (inputs are a pure
//! function of seed and index: rerun with `SLUICE_FUZZ_FIRST` and
//! `SLUICE_FUZZ_CONCURRENCY=1`). At the end, every frame's memory must be
//! back in its pool.
//!
//! Bounded by default (`cargo test` runs it for `SECONDS_DEFAULT`); a long
//! run: `SLUICE_FUZZ_INPUTS=10000000 SLUICE_FUZZ_SECONDS=100000 cargo test
//! --release -p sluice --bin sluice fuzz -- --nocapture`.

#[path = "../tests/common/corpus.rs"]
mod corpus;
#[path = "../tests/common/mutate.rs"]
mod mutate;

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncWrite};
use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::ApiKey;

use crate::connection::{self, Closes, ConnLimits, Rejected, TimedOut};
use crate::frame_check::samples::RawBody;
use crate::frame_check::{self, LengthKind};
use crate::handlers::Ctx;
use crate::wire_tests;

/// Inputs of a default run (`SLUICE_FUZZ_INPUTS`).
const INPUTS_DEFAULT: u64 = 5_000_000;
/// Time bound of a default run (`SLUICE_FUZZ_SECONDS`).
const SECONDS_DEFAULT: u64 = 45;
/// Connections served at once (`SLUICE_FUZZ_CONCURRENCY`).
const CONCURRENCY_DEFAULT: usize = 64;
/// One connection's longest life (a mutated Fetch may ask to wait long).
const CONNECTION_TIME_MAX: Duration = Duration::from_secs(1);
/// Inputs between two writes of `target/fuzz-progress`.
const PROGRESS_EVERY: u64 = 1024;
/// Frames of one seed connection replayed in one input, at most.
const FRAMES_PER_INPUT_MAX: usize = 24;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `sluice start` arguments of the fuzzed shard (beside `--shards 1`).
const SHARD_ARGS: &[&str] = &["--memory", "256MiB", "--request-max-bytes", "8MiB"];

/// One client connection's stream: reads give `input`, writes are counted.
struct Wire {
    input: Bytes,
    written: Rc<std::cell::Cell<u64>>,
}

impl AsyncRead for Wire {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        let _ = self.input.split_to(n);
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.set(self.written.get() + buf.len() as u64);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A seed: the frames (with size prefixes) of one client connection.
struct Seed {
    frames: Vec<Bytes>,
}

fn framed(body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(body.len() + 4);
    b.put_i32(body.len() as i32);
    b.put_slice(body);
    b.freeze()
}

/// A request frame (with its size prefix) around a sample body.
fn sample_frame(key: ApiKey, version: i16, body: Bytes, correlation_id: i32) -> Bytes {
    framed(&wire_tests::frame(
        key,
        version,
        correlation_id,
        &RawBody(body),
    ))
}

fn seeds() -> Vec<Seed> {
    let mut seeds: Vec<Seed> = corpus::corpus_frames()
        .into_iter()
        .map(|(_, frames)| Seed { frames })
        .filter(|s| !s.frames.is_empty())
        .collect();
    for (i, (key, version, _, body)) in frame_check::samples::all().into_iter().enumerate() {
        seeds.push(Seed {
            frames: vec![sample_frame(key, version, body, i as i32)],
        });
    }
    seeds
}

/// Input `index` of the run seeded with `seed`: a pure function of both.
fn input(seeds: &[Seed], seed: u64, index: u64) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let s = &seeds[rng.usize(..seeds.len())];
    let first = rng.usize(..s.frames.len());
    let count = rng
        .usize(1..=FRAMES_PER_INPUT_MAX)
        .min(s.frames.len() - first);
    let mutated = first + rng.usize(..count);
    let mut out = Vec::new();
    for (i, frame) in s.frames[first..first + count].iter().enumerate() {
        if first + i != mutated {
            out.extend_from_slice(frame);
        } else if rng.u8(..4) == 0 {
            aim_at_length(&mut rng, frame, &mut out);
        } else {
            let mut m = Vec::new();
            if rng.u8(..8) == 0 {
                let other = &seeds[rng.usize(..seeds.len())].frames[0];
                mutate::mutate_pair(&mut rng, frame, other, &mut m);
            } else {
                mutate::mutate(&mut rng, frame, &mut m);
            }
            out.extend_from_slice(&m);
        }
    }
    Bytes::from(out)
}

/// Sets one count or length field that `frame_check` found in `frame` to
/// an extreme value; the frame's size prefix is fixed up.
fn aim_at_length(rng: &mut fastrand::Rng, frame: &[u8], out: &mut Vec<u8>) {
    let body = &frame[4..];
    let parsed = (body.len() >= 4)
        .then(|| {
            let key = ApiKey::try_from(i16::from_be_bytes([body[0], body[1]])).ok()?;
            Some((key, i16::from_be_bytes([body[2], body[3]])))
        })
        .flatten();
    let fields = parsed
        .map(|(key, version)| frame_check::length_fields(key, version, body))
        .unwrap_or_default();
    if fields.is_empty() {
        out.extend_from_slice(frame);
        return;
    }
    let (at, kind) = fields[rng.usize(..fields.len())];
    let mut b = body.to_vec();
    let (old, values): (usize, &[&[u8]]) = match kind {
        LengthKind::Varint => (
            b[at..]
                .iter()
                .take(5)
                .position(|&x| x < 0x80)
                .map_or(5, |p| p + 1),
            &[
                &[0xff, 0xff, 0xff, 0xff, 0x0f],
                &[0x80, 0x80, 0x80, 0x80, 0x08],
                &[0x00],
                &[0x7f],
            ],
        ),
        LengthKind::I32 => (
            4,
            &[
                &[0x7f, 0xff, 0xff, 0xff],
                &[0xff, 0xff, 0xff, 0xfe],
                &[0, 0, 0, 0],
                &[0x00, 0x01, 0x00, 0x00],
            ],
        ),
        LengthKind::I16 => (2, &[&[0x7f, 0xff], &[0x80, 0x00], &[0xff, 0xff], &[0, 0]]),
    };
    let v = values[rng.usize(..values.len())];
    b.splice(at..(at + old).min(b.len()), v.iter().copied());
    out.extend_from_slice(&framed(&b));
}

/// What a run did.
#[derive(Default, Debug)]
struct Tally {
    inputs: u64,
    reply_bytes: u64,
    panics: u64,
}

#[test]
fn fuzz_request_path() {
    let inputs_max: u64 = env_or("SLUICE_FUZZ_INPUTS", INPUTS_DEFAULT);
    let seconds: u64 = env_or("SLUICE_FUZZ_SECONDS", SECONDS_DEFAULT);
    let seed: u64 = env_or("SLUICE_FUZZ_SEED", 1);
    let first: u64 = env_or("SLUICE_FUZZ_FIRST", 0);
    let concurrency: usize = env_or("SLUICE_FUZZ_CONCURRENCY", CONCURRENCY_DEFAULT).max(1);
    let started = Instant::now();
    let tally = wire_tests::on_one_shard(SHARD_ARGS, move |ctx, settings| async move {
        // Never stopped: the sender lives as long as the connections.
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let limits = Rc::new(ConnLimits {
            request_max_bytes: settings.request_max_bytes,
            frame_read_timeout: Duration::from_secs(1),
            stop,
        });
        let closes = Rc::new(Closes::default());
        let seeds = Rc::new(seeds());
        assert!(!seeds.is_empty());
        // The seeds unmutated first: they create the topics and groups
        // that mutated inputs then reach.
        for s in seeds.iter() {
            let stream: Vec<u8> = s.frames.iter().flat_map(|f| f.iter().copied()).collect();
            serve_one(Bytes::from(stream), &ctx, &limits, &closes).await;
        }
        let deadline = started + Duration::from_secs(seconds);
        let tally = std::cell::RefCell::new(Tally::default());
        let indexes = futures::stream::iter(first..first.saturating_add(inputs_max))
            .take_while(|_| futures::future::ready(Instant::now() < deadline));
        indexes
            .for_each_concurrent(concurrency, |i| {
                let (seeds, tally) = (&seeds, &tally);
                let (ctx, limits, closes) = (&ctx, &limits, &closes);
                async move {
                    if i % PROGRESS_EVERY == 0 {
                        progress(i);
                    }
                    let input = input(seeds, seed, i);
                    let served =
                        std::panic::AssertUnwindSafe(serve_one(input.clone(), ctx, limits, closes))
                            .catch_unwind()
                            .await;
                    let mut t = tally.borrow_mut();
                    t.inputs += 1;
                    match served {
                        Ok(bytes) => t.reply_bytes += bytes,
                        Err(_) => {
                            t.panics += 1;
                            save_crash(seed, i, &input);
                        }
                    }
                }
            })
            .await;
        let tally = tally.into_inner();
        // Every frame's memory is back in its pool once its connection
        // ended (connections hold no buffer between frames).
        let stats = ctx.shard.stats();
        let request_pool = stats
            .pools
            .iter()
            .find(|p| p.name == "request_buffers")
            .expect("request_buffers pool");
        assert_eq!(request_pool.used_bytes, 0, "request buffers leaked");
        report(&tally, &closes, started.elapsed());
        tally
    });
    assert_eq!(
        tally.panics, 0,
        "panics: inputs saved in target/fuzz-crashes"
    );
}

/// Serves one connection's input to its end (or `CONNECTION_TIME_MAX`);
/// returns the bytes written back.
async fn serve_one(input: Bytes, ctx: &Ctx, limits: &ConnLimits, closes: &Closes) -> u64 {
    let written = Rc::new(std::cell::Cell::new(0));
    let wire = Wire {
        input,
        written: written.clone(),
    };
    let serve = std::pin::pin!(connection::serve(
        wire,
        "fuzz".into(),
        ctx,
        limits,
        closes,
        crate::security::Session::anonymous()
    ));
    let sleep = std::pin::pin!(glommio::timer::sleep(CONNECTION_TIME_MAX));
    futures::future::select(serve, sleep).await;
    written.get()
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

fn progress(index: u64) {
    let _ = std::fs::write(target_dir().join("fuzz-progress"), index.to_string());
}

fn save_crash(seed: u64, index: u64, input: &[u8]) {
    let dir = target_dir().join("fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("seed{seed}-input{index}.bin"));
    let _ = std::fs::write(&path, input);
    eprintln!(
        "panic on input {index} (seed {seed}): saved to {}",
        path.display()
    );
}

fn report(tally: &Tally, closes: &Closes, elapsed: Duration) {
    let rejected: Vec<String> = Rejected::ALL
        .iter()
        .map(|&r| format!("{}={}", r.label(), closes.rejected(r)))
        .collect();
    let timed_out: Vec<String> = TimedOut::ALL
        .iter()
        .map(|&t| format!("{}={}", t.label(), closes.timed_out(t)))
        .collect();
    eprintln!(
        "fuzz: {} inputs in {:.1} s ({:.0}/s), {} reply bytes, panics {}; closed: {}; timed out: {}",
        tally.inputs,
        elapsed.as_secs_f64(),
        tally.inputs as f64 / elapsed.as_secs_f64().max(1e-9),
        tally.reply_bytes,
        tally.panics,
        rejected.join(" "),
        timed_out.join(" ")
    );
}
