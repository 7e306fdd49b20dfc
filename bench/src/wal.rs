//! `sluice-bench wal`: drives one `sluice-wal` WAL on one core with a fixed
//! number of appends in flight and prints durable throughput, commit sizes
//! and append latency percentiles. The only subcommand that links the WAL
//! directly instead of talking Kafka.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use sluice_wal::{CrcSpan, Payload, SyncMode, Wal, WalConfig};

#[derive(clap::Args, Debug)]
pub struct WalArgs {
    /// Directory for the WAL's segments (created; removed afterwards unless --keep).
    #[arg(long)]
    dir: PathBuf,
    /// Payload bytes per append.
    #[arg(long, default_value_t = 16384)]
    record_bytes: usize,
    /// Appends in flight at once (closed loop).
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// How commits are made durable: fdatasync after each write, or O_DSYNC writes.
    #[arg(long, value_enum, default_value_t = SyncArg::Fdatasync)]
    sync: SyncArg,
    /// Whether each payload's CRC32C is computed by the WAL (`computed`), or
    /// mostly given with it (`given`: all but the first 64 bytes, as a produce
    /// hands over a record batch's verified CRC).
    #[arg(long, value_enum, default_value_t = CrcArg::Computed)]
    payload_crc: CrcArg,
    /// Bytes one commit may write at most.
    #[arg(long, default_value_t = WalConfig::COMMIT_BYTES_MAX_DEFAULT)]
    commit_bytes_max: u64,
    /// Keep the WAL directory after the run.
    #[arg(long)]
    keep: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum SyncArg {
    Fdatasync,
    Dsync,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum CrcArg {
    Computed,
    Given,
}

/// Bytes at the head of a payload whose CRC the WAL computes under
/// `--payload-crc given` (an entry header and a batch's own header).
const HEAD_BYTES_COMPUTED: usize = 64;

/// What one lane-run measured.
struct Measured {
    appends: u64,
    bytes: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

pub fn run(a: WalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.in_flight > 0 && a.in_flight <= 65_536,
        "--in-flight must be 1..=65536"
    );
    anyhow::ensure!(
        a.seconds > 0 && a.seconds <= 3600,
        "--seconds must be 1..=3600"
    );
    let dir = a
        .dir
        .join(format!("sluice-bench-wal-{}", std::process::id()));
    let mut cfg = WalConfig::new(&dir);
    cfg.sync_mode = match a.sync {
        SyncArg::Fdatasync => SyncMode::Fdatasync,
        SyncArg::Dsync => SyncMode::Dsync,
    };
    cfg.commit_bytes_max = a.commit_bytes_max;
    cfg.queue_bytes_max = cfg.queue_bytes_max.max(cfg.commit_bytes_max);
    let record_bytes = a.record_bytes;
    let in_flight = a.in_flight;
    let crc_given = a.payload_crc == CrcArg::Given;
    let (warmup, measure) = (
        Duration::from_secs(a.warmup_seconds),
        Duration::from_secs(a.seconds),
    );
    let result = LocalExecutorBuilder::new(Placement::Unbound)
        .name("bench-wal")
        .io_memory(24 << 20)
        .spawn(move || drive(cfg, record_bytes, in_flight, crc_given, warmup, measure))
        .map_err(|e| anyhow::anyhow!("starting the glommio executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("executor: {e:?}"))?;
    if !a.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (m, stats) = result?;
    print(&a, &m, &stats);
    Ok(())
}

async fn drive(
    cfg: WalConfig,
    record_bytes: usize,
    in_flight: usize,
    crc_given: bool,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<(Measured, sluice_wal::WalStats)> {
    let (wal, _) = Wal::open(cfg).await.context("opening the WAL")?;
    let payload = bench_payload(record_bytes, crc_given);
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + measure;
    let latency = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let counts = Rc::new(RefCell::new((0u64, 0u64)));
    let before = Rc::new(RefCell::new(None));
    let mut lanes = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let (wal, payload, latency, counts, before) = (
            wal.clone(),
            payload.clone(),
            latency.clone(),
            counts.clone(),
            before.clone(),
        );
        lanes.push(glommio::spawn_local(async move {
            loop {
                let t = Instant::now();
                if t >= stop_at {
                    return Ok::<(), anyhow::Error>(());
                }
                wal.append_payload(1, payload.clone()).await?;
                let done = Instant::now();
                if done >= measure_from && done < stop_at {
                    if before.borrow().is_none() {
                        *before.borrow_mut() = Some(wal.stats());
                    }
                    latency
                        .borrow_mut()
                        .saturating_record((done - t).as_micros() as u64);
                    let mut c = counts.borrow_mut();
                    c.0 += 1;
                    c.1 += payload.len() as u64;
                }
            }
        }));
    }
    for lane in lanes {
        lane.await?;
    }
    let stats = wal.stats();
    let base = before.borrow_mut().take().unwrap_or_else(|| stats.clone());
    wal.close().await?;
    let (appends, bytes) = *counts.borrow();
    let latency_us = latency.borrow().clone();
    let mut delta = stats;
    delta.commits -= base.commits;
    delta.bytes_written -= base.bytes_written;
    Ok((
        Measured {
            appends,
            bytes,
            elapsed: measure,
            latency_us,
        },
        delta,
    ))
}

/// The payload every append writes; under `crc_given`, with the CRC of
/// all but its head computed once here.
fn bench_payload(record_bytes: usize, crc_given: bool) -> Payload {
    let bytes = Bytes::from(vec![0xA5u8; record_bytes]);
    if !crc_given || record_bytes <= HEAD_BYTES_COMPUTED {
        return Payload::new(bytes);
    }
    let head = HEAD_BYTES_COMPUTED as u32;
    let span = CrcSpan::compute(&bytes, head, record_bytes as u32 - head);
    Payload::with_crc_spans(bytes, vec![span])
}

fn print(a: &WalArgs, m: &Measured, s: &sluice_wal::WalStats) {
    let secs = m.elapsed.as_secs_f64();
    let appends_per_sec = m.appends as f64 / secs;
    let mb_per_sec = m.bytes as f64 / secs / 1e6;
    let avg_commit_bytes = if s.commits > 0 {
        s.bytes_written / s.commits
    } else {
        0
    };
    let p = |q: f64| m.latency_us.value_at_quantile(q);
    println!(
        "wal {:?}, CRC {:?}: {} B records, {} in flight, {} s: {:.0} appends/s, {:.1} MB/s, {} commits ({:.0}/s), {} B per commit on average",
        a.sync,
        a.payload_crc,
        a.record_bytes,
        a.in_flight,
        a.seconds,
        appends_per_sec,
        mb_per_sec,
        s.commits,
        s.commits as f64 / secs,
        avg_commit_bytes
    );
    println!(
        "append latency us: p50 {} p99 {} p99.9 {} max {}",
        p(0.5),
        p(0.99),
        p(0.999),
        m.latency_us.max()
    );
    if a.json {
        let j = serde_json::json!({
            "scenario": "wal",
            "sync": format!("{:?}", a.sync).to_lowercase(),
            "payload_crc": format!("{:?}", a.payload_crc).to_lowercase(),
            "record_bytes": a.record_bytes,
            "in_flight": a.in_flight,
            "seconds": secs,
            "messages": m.appends,
            "appends_per_sec": appends_per_sec,
            "msgs_per_sec": appends_per_sec,
            "mb_per_sec": mb_per_sec,
            "commits": s.commits,
            "avg_commit_bytes": avg_commit_bytes,
            "p50_us": p(0.5),
            "p99_us": p(0.99),
            "p999_us": p(0.999),
            "max_us": m.latency_us.max(),
        });
        println!("{j}");
    }
}
