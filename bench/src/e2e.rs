//! `e2e`: end-to-end latency. A producer sends at a fixed rate (open loop)
//! while a consumer thread reads the same topic; each record carries its
//! intended send time in its payload header (`payload::Header`), so the
//! latency is receive time minus intended send time (coordinated omission
//! corrected), on one clock in one process.
//!
//! The consumer starts at the end offsets seen before the producer starts,
//! and ignores records of other runs (different run id).
//!
//! With `--transactional-commit-ms N` the producer is transactional and
//! commits every N ms (see `produce`), and the consumer reads with
//! `isolation.level=read_committed`, so a record's latency runs until its
//! transaction's commit marker made it readable. Without the option the
//! consumer's configuration is left as it was (librdkafka's default
//! isolation level, read_committed, which plain records never wait for).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::args::CommonArgs;
use crate::client::{
    ensure_topic, new_consumer, new_read_committed_consumer, watermarks, BenchConsumer,
};
use crate::control::stop_requested;
use crate::payload::{Header, HEADER_BYTES};
use crate::produce::{
    duration_ns, elapsed_ns, parse_commit_ms, parse_rate, put_producer_counts, run_producer,
    transactional_commit, ProducerPlan,
};
use crate::report::{
    emit, new_latency_histogram, record_latency_us, LatencySummary, Outputs, Summary,
};

const POLL_TIMEOUT: Duration = Duration::from_millis(20);
/// How long the consumer keeps reading after Ctrl-C.
const READ_AFTER_STOP: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug, Clone)]
pub struct E2eArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Send rate in records/s.
    #[arg(long, default_value_t = 1000.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Most records sent but not yet acknowledged at any time.
    #[arg(long = "in-flight-max", value_name = "RECORDS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub in_flight_records_max: u64,
    /// Transactional producer committing every MS milliseconds; the
    /// consumer then reads with isolation.level=read_committed.
    #[arg(long, value_name = "MS", value_parser = parse_commit_ms)]
    pub transactional_commit_ms: Option<u64>,
}

/// State shared between the producer (main thread) and the consumer thread.
struct Shared {
    received: Arc<AtomicU64>,
    /// Records the producer had acknowledged when it finished; `u64::MAX`
    /// while it is still running.
    expected: AtomicU64,
}

/// What the consumer thread measured.
struct Received {
    latency: Histogram<u64>,
    total: u64,
    measured: u64,
    measured_bytes: u64,
    foreign: u64,
    errors: u64,
}

pub fn run(args: E2eArgs) -> anyhow::Result<()> {
    let common = &args.common;
    if (common.record_bytes as usize) < HEADER_BYTES {
        bail!("e2e needs --record-bytes >= {HEADER_BYTES} to carry the send time");
    }
    let every = transactional_commit(common, args.transactional_commit_ms)?;
    let partitions = ensure_topic(common)?;
    let consumer = match every {
        Some(_) => new_read_committed_consumer(common, "sluice-bench-e2e")?,
        None => new_consumer(common, "sluice-bench-e2e")?,
    };
    assign_at_end(&consumer, &common.topic, &partitions)?;
    let mut plan = ProducerPlan::new(common, Some(args.rate), args.in_flight_records_max);
    plan.transactional_commit = every;
    let shared = Shared {
        received: Arc::new(AtomicU64::new(0)),
        expected: AtomicU64::new(u64::MAX),
    };
    plan.progress_extra = Some(("received", shared.received.clone()));
    let (produced, received) = std::thread::scope(|scope| {
        let (plan_ref, shared_ref) = (&plan, &shared);
        let reader = scope.spawn(move || read_loop(&consumer, plan_ref, shared_ref));
        let produced = run_producer(common, &plan);
        // Records of aborted transactions are acknowledged but never read.
        let acked = produced.as_ref().map_or(0, |o| {
            let aborted = o.transactions.as_ref().map_or(0, |t| t.records_aborted);
            o.acked_total.saturating_sub(aborted)
        });
        shared.expected.store(acked, Ordering::Release);
        (produced, reader.join())
    });
    let produced = produced?;
    let received = received.map_err(|_| anyhow::anyhow!("consumer thread panicked"))?;
    let summary = summarize(common, &plan, &produced, &received);
    emit(&summary, &Outputs::of(common))?;
    check_complete(&produced, &received)
}

fn assign_at_end(consumer: &BenchConsumer, topic: &str, partitions: &[i32]) -> anyhow::Result<()> {
    let marks = watermarks(consumer, topic, partitions)?;
    let mut list = TopicPartitionList::with_capacity(marks.len());
    for mark in &marks {
        list.add_partition_offset(topic, mark.partition, Offset::Offset(mark.high))
            .with_context(|| format!("assigning {topic}[{}]", mark.partition))?;
    }
    consumer.assign(&list).context("assign")
}

/// Reads until every acknowledged record arrived, the run's hard deadline,
/// or shortly after Ctrl-C.
fn read_loop(consumer: &BenchConsumer, plan: &ProducerPlan, shared: &Shared) -> Received {
    let measure_from_ns = duration_ns(plan.warmup);
    let mut deadline = plan.origin
        + plan.warmup
        + plan.measure
        + Duration::from_secs(crate::args::DRAIN_SECONDS_MAX);
    let mut received = Received {
        latency: new_latency_histogram(),
        total: 0,
        measured: 0,
        measured_bytes: 0,
        foreign: 0,
        errors: 0,
    };
    while received.total < shared.expected.load(Ordering::Acquire) && Instant::now() < deadline {
        if stop_requested() {
            deadline = deadline.min(Instant::now() + READ_AFTER_STOP);
        }
        match consumer.poll(POLL_TIMEOUT) {
            Some(Ok(message)) => {
                let payload = message.payload().unwrap_or(&[]);
                received.on_record(payload, plan, measure_from_ns);
                shared.received.store(received.total, Ordering::Relaxed);
            }
            Some(Err(_)) => received.errors += 1,
            None => {}
        }
    }
    received
}

impl Received {
    fn on_record(&mut self, payload: &[u8], plan: &ProducerPlan, measure_from_ns: u64) {
        let now_ns = elapsed_ns(plan.origin);
        match Header::read(payload) {
            Some(header) if header.run_id == plan.run_id => {
                self.total += 1;
                if header.sent_ns >= measure_from_ns {
                    self.measured += 1;
                    self.measured_bytes += payload.len() as u64;
                    record_latency_us(
                        &mut self.latency,
                        now_ns.saturating_sub(header.sent_ns) / 1_000,
                    );
                }
            }
            _ => self.foreign += 1,
        }
    }
}

fn summarize(
    common: &CommonArgs,
    plan: &ProducerPlan,
    produced: &crate::produce::ProduceOutcome,
    received: &Received,
) -> Summary {
    let settings = format!(
        "rate={}/s; {}{}",
        plan.rate_per_sec.unwrap_or(0.0),
        plan.describe_transactions(),
        common.describe()
    );
    let mut summary = Summary::new("e2e", settings);
    summary.seconds = produced.seconds;
    summary.messages = received.measured;
    summary.bytes = received.measured_bytes;
    summary.latency = Some(received.latency.clone());
    summary.interrupted = produced.interrupted;
    put_producer_counts(&mut summary, produced, plan);
    summary.put(
        "produce_latency_us",
        serde_json::json!(LatencySummary::of(&produced.latency)),
    );
    summary.put("messages_received_total", received.total);
    summary.put(
        "messages_missing",
        produced.acked_total.saturating_sub(received.total),
    );
    summary.put("records_foreign", received.foreign);
    summary.put("consume_errors", received.errors);
    if plan.transactional_commit.is_some() {
        summary.put("consumer_isolation_level", "read_committed");
    }
    summary
}

fn check_complete(
    produced: &crate::produce::ProduceOutcome,
    received: &Received,
) -> anyhow::Result<()> {
    crate::produce::check_delivered(produced)?;
    if received.total < produced.acked_total && !produced.interrupted {
        bail!(
            "{} of {} acknowledged records were not received before the deadline",
            produced.acked_total - received.total,
            produced.acked_total
        );
    }
    Ok(())
}
