//! `mixed-retention`: WAL disk use over time when a short-retention topic
//! and a long-retention topic share a broker (one shard: both topics of
//! one partition each by default).
//!
//! A Sluice shard's WAL holds all its partitions, so one partition that
//! keeps its records holds on to every segment they lie in, unless the
//! broker copies its few live entries out of the mostly dead segments. This
//! scenario makes exactly that load and watches the disk:
//!
//! - topics `<--topic>-short` (`retention.ms` = `--short-retention-ms`) and
//!   `<--topic>-long` (`retention.ms=-1`), created through the AdminClient;
//! - for `--seconds`, records of `--record-bytes` at `--mb-per-sec` in
//!   total (open loop, paced per topic), `--long-share` of the bytes to the
//!   long topic;
//! - every second, and for `--settle-seconds` after producing stops, one
//!   line on stdout from the broker's `/metrics` at `--admin` (plain HTTP):
//!   WAL disk bytes (the sum of `sluice_shard_wal_segment_bytes` over
//!   shards), the live estimate, disk / live, the bytes the segment
//!   collector moved and the segments retention removed.
//!
//! The summary (and `--json`) gives the peak and final disk bytes, the
//! final live estimate and ratio, the largest ratio from 2 x
//! `--short-retention-ms` on (over every sample, and over those taken while
//! producing), the largest disk - 2 x live over the same samples (the
//! collector's bound allows the active segment), and the bytes the
//! collector moved. Latency is from each record's intended send time to its
//! acknowledgement (`--hgrm-out`, `--plot`).
//!
//! The live estimate is what retention must keep, counted from this run's
//! acknowledgements: every payload byte acknowledged to the long topic
//! plus the payload bytes acknowledged to the short topic within the last
//! `--short-retention-ms` (in `AckWindow`'s time buckets, so it reads high
//! by at most one bucket). Batch and WAL frame headers are not in it.
//!
//! Metrics a broker does not export (an older Sluice has no collector)
//! show as `-`; anything but Sluice has no WAL metrics and fails the first
//! scrape.
//!
//! Invariants: every loop is bounded by time (`--seconds` +
//! `--settle-seconds` + a drain of at most `args::DRAIN_SECONDS_MAX`, each
//! HTTP request by `HTTP_TIMEOUT`) and checks `stop_requested()`; the
//! acknowledgement window holds at most `WINDOW_BUCKETS_MAX + 2` buckets
//! and the series one sample per second of the run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::args::{parse_seconds, CommonArgs, DRAIN_SECONDS_MAX};
use crate::client::{
    new_admin, new_consumer, wait_for_partitions, BenchContext, Created, ErrorProbe,
    REQUEST_TIMEOUT,
};
use crate::control::stop_requested;
use crate::payload::{filler, new_run_id, Header};
use crate::report::{emit, new_latency_histogram, record_latency_us, Outputs, Summary};

/// Time between two `/metrics` samples.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Whole-request timeout of one `/metrics` GET: at most two sample intervals.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Buckets of the short topic's acknowledgement window at most (plus two
/// partial ones); a bucket is at least `WINDOW_BUCKET_MS_MIN` wide.
const WINDOW_BUCKETS_MAX: u64 = 1_000;
const WINDOW_BUCKET_MS_MIN: u64 = 100;
/// Records sent but not yet acknowledged at most (under librdkafka's own
/// queue bound of 100,000 messages).
const IN_FLIGHT_RECORDS_MAX: u64 = 50_000;
/// Sends between two non-blocking polls of the delivery queue.
const SENDS_PER_POLL: u64 = 256;
/// Longest pause of the pacer or the settle loop before it looks again.
const PACER_SLEEP_MAX: Duration = Duration::from_millis(1);
const SETTLE_POLL_MAX: Duration = Duration::from_millis(50);
/// Drain time left after Ctrl-C.
const DRAIN_AFTER_STOP: Duration = Duration::from_secs(5);
const MB_PER_SEC_MAX: f64 = 10_000.0;
const BYTES_PER_MB: f64 = 1_000_000.0;
const BYTES_PER_MIB: f64 = 1_048_576.0;

const METRIC_DISK_BYTES: &str = "sluice_shard_wal_segment_bytes";
const METRIC_SEGMENTS: &str = "sluice_shard_wal_segments";
const METRIC_MOVED_BYTES: &str = "sluice_wal_collector_bytes_moved_total";
const METRIC_SEGMENTS_REMOVED: &str = "sluice_shard_wal_segments_removed_total";

/// `CommonArgs` flattened, some of its defaults and help changed by their
/// ids (`tests::defaults_are_the_scenario_s` fails when one goes missing).
#[derive(clap::Args, Debug, Clone)]
#[command(
    mut_arg("topic", |a| a
        .default_value("sluice-bench-mixed")
        .help("Prefix of the two topics: <TOPIC>-short and <TOPIC>-long")),
    mut_arg("partitions", |a| a.help("Partitions of each topic")),
    mut_arg("seconds", |a| a
        .default_value("60")
        .help("Time the load runs")),
    // No warm-up: the disk is measured from the first record on.
    mut_arg("warmup_seconds", |a| a.default_value("0").hide(true)),
)]
pub struct MixedRetentionArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// host:port of the broker's admin HTTP server (`/metrics`).
    #[arg(long, default_value = "127.0.0.1:9644")]
    pub admin: String,
    /// `retention.ms` of `<TOPIC>-short`.
    #[arg(long, default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub short_retention_ms: u64,
    /// Payload bytes per second of both topics together, in MB (10^6 bytes).
    #[arg(long, default_value_t = 20.0, value_parser = parse_mb_per_sec)]
    pub mb_per_sec: f64,
    /// Share of the payload bytes that go to `<TOPIC>-long` (retention.ms=-1).
    #[arg(long, default_value_t = 0.02, value_parser = parse_share)]
    pub long_share: f64,
    /// Sampling goes on this long after producing stops.
    #[arg(long, default_value_t = 20.0, value_parser = parse_seconds)]
    pub settle_seconds: f64,
}

fn parse_mb_per_sec(text: &str) -> anyhow::Result<f64> {
    let rate: f64 = text
        .parse()
        .with_context(|| format!("not a number: {text:?}"))?;
    if !rate.is_finite() || rate <= 0.0 || rate > MB_PER_SEC_MAX {
        bail!("MB/s must be within (0, {MB_PER_SEC_MAX}], got {rate}");
    }
    Ok(rate)
}

fn parse_share(text: &str) -> anyhow::Result<f64> {
    let share: f64 = text
        .parse()
        .with_context(|| format!("not a number: {text:?}"))?;
    if !(0.0..=1.0).contains(&share) {
        bail!("the share must be within 0..=1, got {share}");
    }
    Ok(share)
}

/// The two topics; the index of each in every per-topic array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Short = 0,
    Long = 1,
}

impl Stream {
    const BOTH: [Stream; 2] = [Stream::Short, Stream::Long];

    fn from_bit(bit: usize) -> Stream {
        if bit & 1 == 0 {
            Stream::Short
        } else {
            Stream::Long
        }
    }
}

/// What the run does, derived from the arguments.
struct Plan {
    topics: [String; 2],
    record_bytes: u64,
    /// Records per second of each topic (0: none).
    rates_per_sec: [f64; 2],
    window_ms: u64,
    produce: Duration,
    settle: Duration,
    records_max: u64,
    run_id: u32,
    origin: Instant,
}

impl Plan {
    fn new(args: &MixedRetentionArgs) -> Plan {
        let common = &args.common;
        let records_per_sec = args.mb_per_sec * BYTES_PER_MB / common.record_bytes as f64;
        let long = records_per_sec * args.long_share;
        Plan {
            topics: [
                format!("{}-short", common.topic),
                format!("{}-long", common.topic),
            ],
            record_bytes: common.record_bytes,
            rates_per_sec: [records_per_sec - long, long],
            window_ms: args.short_retention_ms,
            produce: common.measure(),
            settle: Duration::from_secs_f64(args.settle_seconds),
            records_max: common.records_max,
            run_id: new_run_id(),
            origin: Instant::now(),
        }
    }

    fn produce_end_ns(&self) -> u64 {
        duration_ns(self.produce)
    }

    fn settle_end_ns(&self) -> u64 {
        duration_ns(self.produce + self.settle)
    }
}

pub fn run(args: MixedRetentionArgs) -> anyhow::Result<()> {
    let common = &args.common;
    if common.warmup_seconds > 0.0 {
        bail!("mixed-retention has no warm-up: the disk is measured from the first record");
    }
    let mut plan = Plan::new(&args);
    let retention = [args.short_retention_ms.to_string(), "-1".to_string()];
    for stream in Stream::BOTH {
        let i = stream as usize;
        prepare_topic(common, &plan.topics[i], &retention[i])?;
    }
    let mut sampler = Sampler::new(&args.admin, &plan);
    sampler
        .check()
        .context("the broker's /metrics must answer before the load starts")?;
    let producer: MixProducer = common
        .producer_config()
        .create_with_context(AckProbe::new(&plan))
        .context("creating producer")?;
    plan.origin = Instant::now();
    producer.context().lock().origin = plan.origin;
    let load = run_load(&producer, &plan, &mut sampler);
    let unfinished = drain(&producer, load.sent, load.interrupted);
    let mut summary = Summary::new("mixed-retention", describe(&args));
    fill_summary(&mut summary, &plan, &load, &producer, &sampler);
    summary.put("records_unfinished", unfinished);
    emit(&summary, &Outputs::of(common))?;
    check(&producer, &sampler, unfinished, &load)
}

fn describe(args: &MixedRetentionArgs) -> String {
    format!(
        "admin={} short_retention_ms={} mb_per_sec={} long_share={} settle_seconds={}; {}",
        args.admin,
        args.short_retention_ms,
        args.mb_per_sec,
        args.long_share,
        args.settle_seconds,
        args.common.describe()
    )
}

// ---------------------------------------------------------------------------
// Topics

/// Creates `name` with `retention.ms`, or checks that the existing topic
/// has it, and waits for its partitions.
fn prepare_topic(common: &CommonArgs, name: &str, retention_ms: &str) -> anyhow::Result<()> {
    let admin = new_admin(common)?;
    let created = create_with_retention(&admin, common, name, retention_ms)
        .with_context(|| format!("creating topic {name} on {}", common.bootstrap))?;
    if created == Created::AlreadyExisted {
        let found = retention_of(&admin, name)?;
        if found.as_deref() != Some(retention_ms) {
            bail!(
                "topic {name} already exists with retention.ms={} (this run needs {retention_ms}): \
                 delete it or pass another --topic",
                found.as_deref().unwrap_or("unset")
            );
        }
        eprintln!(
            "note: topic {name} already existed (retention.ms={retention_ms}): its earlier \
             records count on disk but not in the live estimate"
        );
    }
    let consumer = new_consumer(common, "sluice-bench-metadata")?;
    wait_for_partitions(&consumer, name, REQUEST_TIMEOUT * 3)?;
    Ok(())
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .operation_timeout(Some(REQUEST_TIMEOUT))
}

fn create_with_retention(
    admin: &AdminClient<BenchContext>,
    common: &CommonArgs,
    name: &str,
    retention_ms: &str,
) -> anyhow::Result<Created> {
    assert!(common.partitions > 0 && common.replication_factor > 0);
    let topic = NewTopic::new(
        name,
        common.partitions,
        TopicReplication::Fixed(common.replication_factor),
    )
    .set("retention.ms", retention_ms);
    let results = futures::executor::block_on(admin.create_topics([&topic], &admin_options()))
        .with_context(|| format!("CreateTopics {name}"))?;
    match results.first() {
        Some(Ok(_)) => Ok(Created::New),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(Created::AlreadyExisted),
        Some(Err((topic, code))) => bail!("CreateTopics {topic}: {code}"),
        None => bail!("CreateTopics {name}: empty response"),
    }
}

/// The topic's `retention.ms` as DescribeConfigs reports it.
fn retention_of(admin: &AdminClient<BenchContext>, name: &str) -> anyhow::Result<Option<String>> {
    let resource = ResourceSpecifier::Topic(name);
    let results =
        futures::executor::block_on(admin.describe_configs([&resource], &admin_options()))
            .with_context(|| format!("DescribeConfigs {name}"))?;
    match results.into_iter().next() {
        Some(Ok(config)) => Ok(config.get("retention.ms").and_then(|e| e.value.clone())),
        Some(Err(code)) => bail!("DescribeConfigs {name}: {code}"),
        None => bail!("DescribeConfigs {name}: empty response"),
    }
}

// ---------------------------------------------------------------------------
// Acknowledgements

/// Payload bytes acknowledged to the short topic per time bucket, oldest
/// first, covering the last `window_ms`.
struct AckWindow {
    window_ms: u64,
    bucket_ms: u64,
    buckets: VecDeque<(u64, u64)>,
}

impl AckWindow {
    fn new(window_ms: u64) -> AckWindow {
        assert!(window_ms > 0);
        let bucket_ms = (window_ms / WINDOW_BUCKETS_MAX).max(WINDOW_BUCKET_MS_MIN);
        AckWindow {
            window_ms,
            bucket_ms,
            buckets: VecDeque::new(),
        }
    }

    fn add(&mut self, now_ms: u64, bytes: u64) {
        let bucket = now_ms / self.bucket_ms;
        match self.buckets.back_mut() {
            Some((last, sum)) if *last >= bucket => *sum += bytes,
            _ => self.buckets.push_back((bucket, bytes)),
        }
        self.trim(now_ms);
    }

    /// Drops the buckets that ended a whole window ago or earlier.
    fn trim(&mut self, now_ms: u64) {
        let from_ms = now_ms.saturating_sub(self.window_ms);
        while let Some(&(bucket, _)) = self.buckets.front() {
            if (bucket + 1) * self.bucket_ms > from_ms {
                break;
            }
            self.buckets.pop_front();
        }
        let buckets_max = self.window_ms / self.bucket_ms + 2;
        assert!(self.buckets.len() as u64 <= buckets_max);
    }

    fn bytes(&mut self, now_ms: u64) -> u64 {
        self.trim(now_ms);
        self.buckets.iter().map(|&(_, bytes)| bytes).sum()
    }
}

/// What the delivery reports told so far.
struct Acks {
    origin: Instant,
    record_bytes: u64,
    acked: [u64; 2],
    failed: u64,
    first_failure: Option<String>,
    short_recent: AckWindow,
    /// From the intended send time to the acknowledgement (µs).
    latency: Histogram<u64>,
}

impl Acks {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn acked_bytes(&self, stream: Stream) -> u64 {
        self.acked[stream as usize] * self.record_bytes
    }

    /// Long-topic bytes plus short-topic bytes of the last window.
    fn live_bytes(&mut self) -> u64 {
        let now_ms = self.now_ms();
        self.acked_bytes(Stream::Long) + self.short_recent.bytes(now_ms)
    }
}

/// Producer context: turns delivery reports into the acknowledgement
/// ledger. Reports run on the sending thread (it polls), so the lock is
/// never contended.
struct AckProbe {
    completed: AtomicU64,
    acks: Mutex<Acks>,
    errors: ErrorProbe,
}

impl AckProbe {
    fn new(plan: &Plan) -> AckProbe {
        AckProbe {
            completed: AtomicU64::new(0),
            acks: Mutex::new(Acks {
                origin: plan.origin,
                record_bytes: plan.record_bytes,
                acked: [0; 2],
                failed: 0,
                first_failure: None,
                short_recent: AckWindow::new(plan.window_ms),
                latency: new_latency_histogram(),
            }),
            errors: ErrorProbe::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Acks> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for AckProbe {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.on_error(&error, reason);
    }
}

impl ProducerContext for AckProbe {
    /// The intended send time in ns, shifted left by one, and the stream.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let stream = Stream::from_bit(opaque);
        let intended_ns = (opaque >> 1) as u64;
        let mut acks = self.lock();
        match result {
            Ok(_) => {
                let now_ms = acks.now_ms();
                acks.acked[stream as usize] += 1;
                if stream == Stream::Short {
                    let bytes = acks.record_bytes;
                    acks.short_recent.add(now_ms, bytes);
                }
                let now_ns = duration_ns(acks.origin.elapsed());
                let latency_us = now_ns.saturating_sub(intended_ns) / 1_000;
                record_latency_us(&mut acks.latency, latency_us);
            }
            Err((error, _)) => {
                acks.failed += 1;
                if acks.first_failure.is_none() {
                    acks.first_failure = Some(error.to_string());
                }
            }
        }
        self.completed.fetch_add(1, Ordering::Release);
    }
}

type MixProducer = BaseProducer<AckProbe>;

// ---------------------------------------------------------------------------
// Load

/// Open-loop schedule: record `k` of a topic is due at `k / rate` seconds;
/// the earlier due of the two goes next.
struct Pacer {
    rates_per_sec: [f64; 2],
    next: [u64; 2],
    end_ns: u64,
}

impl Pacer {
    fn due_ns(&self, stream: Stream) -> Option<u64> {
        let i = stream as usize;
        let rate = self.rates_per_sec[i];
        if rate <= 0.0 {
            return None;
        }
        let due_ns = (self.next[i] as f64 * 1e9 / rate) as u64;
        (due_ns < self.end_ns).then_some(due_ns)
    }

    /// The next record to send and when it is due; `None` when both
    /// topics' schedules are past the end.
    fn next(&self) -> Option<(Stream, u64)> {
        Stream::BOTH
            .into_iter()
            .filter_map(|s| self.due_ns(s).map(|due| (s, due)))
            .min_by_key(|&(_, due)| due)
    }

    fn advance(&mut self, stream: Stream) {
        self.next[stream as usize] += 1;
    }
}

struct Load {
    sent: u64,
    queue_full_waits: u64,
    in_flight_waits: u64,
    send_error: Option<String>,
    /// When the last record was sent (or sending stopped).
    produce_seconds: f64,
    interrupted: bool,
}

/// Sends on schedule until `--seconds`, then keeps polling; samples the
/// broker every second until the settle time ends.
fn run_load(producer: &MixProducer, plan: &Plan, sampler: &mut Sampler) -> Load {
    let mut sender = Sender {
        producer,
        plan,
        pacer: Pacer {
            rates_per_sec: plan.rates_per_sec,
            next: [0; 2],
            end_ns: plan.produce_end_ns(),
        },
        payload: filler(plan.record_bytes as usize, u64::from(plan.run_id)),
        load: Load {
            sent: 0,
            queue_full_waits: 0,
            in_flight_waits: 0,
            send_error: None,
            produce_seconds: 0.0,
            interrupted: false,
        },
    };
    let mut sample_due_ns = 0;
    sampler.print_header();
    loop {
        if stop_requested() {
            sender.load.interrupted = true;
            break;
        }
        let now_ns = elapsed_ns(plan.origin);
        if now_ns >= sample_due_ns {
            let live_bytes = producer.context().lock().live_bytes();
            sampler.take(now_ns, now_ns < plan.produce_end_ns(), live_bytes);
            sample_due_ns = next_sample_ns(sample_due_ns, now_ns);
        }
        if now_ns >= plan.settle_end_ns() {
            break;
        }
        let until_sample = Duration::from_nanos(sample_due_ns.saturating_sub(now_ns));
        match sender.next() {
            Some((stream, due_ns)) if due_ns <= now_ns => sender.send_due(stream, due_ns),
            Some((_, due_ns)) => {
                producer.poll(Duration::ZERO);
                let until_due = Duration::from_nanos(due_ns - now_ns);
                std::thread::sleep(until_due.min(until_sample).min(PACER_SLEEP_MAX));
            }
            None => {
                sender.stopped_at(now_ns);
                producer.poll(until_sample.min(SETTLE_POLL_MAX));
            }
        }
    }
    sender.stopped_at(elapsed_ns(plan.origin));
    sender.load
}

/// The sample after the one due at `due_ns`, skipping those missed.
fn next_sample_ns(due_ns: u64, now_ns: u64) -> u64 {
    let interval_ns = duration_ns(SAMPLE_INTERVAL);
    let next_ns = due_ns + interval_ns;
    if next_ns > now_ns {
        next_ns
    } else {
        now_ns - (now_ns - due_ns) % interval_ns + interval_ns
    }
}

/// The sending side of the load: the schedule, the payload buffer and the
/// counts.
struct Sender<'a> {
    producer: &'a MixProducer,
    plan: &'a Plan,
    pacer: Pacer,
    payload: Vec<u8>,
    load: Load,
}

impl Sender<'_> {
    /// The next record due, unless sending is over (end of the schedule,
    /// `--records-max`, or a refused record).
    fn next(&self) -> Option<(Stream, u64)> {
        let sending = self.load.send_error.is_none() && self.load.sent < self.plan.records_max;
        self.pacer.next().filter(|_| sending)
    }

    /// Notes when sending stopped, the first time it is seen.
    fn stopped_at(&mut self, now_ns: u64) {
        if self.load.produce_seconds == 0.0 {
            self.load.produce_seconds = now_ns.min(self.plan.produce_end_ns()) as f64 / 1e9;
        }
    }

    /// Sends the record due now, unless too many are in flight or
    /// librdkafka's queue is full (then it stays due for a later turn).
    fn send_due(&mut self, stream: Stream, due_ns: u64) {
        let (producer, load) = (self.producer, &mut self.load);
        let completed = producer.context().completed.load(Ordering::Acquire);
        if load.sent - completed >= IN_FLIGHT_RECORDS_MAX {
            load.in_flight_waits += 1;
            producer.poll(PACER_SLEEP_MAX);
            return;
        }
        Header {
            run_id: self.plan.run_id,
            seq: load.sent,
            sent_ns: due_ns,
        }
        .write(&mut self.payload);
        let opaque = ((due_ns as usize) << 1) | stream as usize;
        let topic = &self.plan.topics[stream as usize];
        let record =
            BaseRecord::<(), [u8], usize>::with_opaque_to(topic, opaque).payload(&self.payload[..]);
        match producer.send(record) {
            Ok(()) => {
                self.pacer.advance(stream);
                load.sent += 1;
                if load.sent % SENDS_PER_POLL == 0 {
                    producer.poll(Duration::ZERO);
                }
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                load.queue_full_waits += 1;
                producer.poll(PACER_SLEEP_MAX);
            }
            Err((error, _)) => {
                let error = format!("send to {topic}: {error}");
                eprintln!("sending stopped: {error}");
                load.send_error = Some(error);
            }
        }
    }
}

/// Waits for the records still unacknowledged after the settle time;
/// returns how many are left at the deadline.
fn drain(producer: &MixProducer, sent: u64, interrupted: bool) -> u64 {
    let left = || sent.saturating_sub(producer.context().completed.load(Ordering::Acquire));
    if left() > 0 {
        let bound = if interrupted {
            DRAIN_AFTER_STOP
        } else {
            Duration::from_secs(DRAIN_SECONDS_MAX)
        };
        eprintln!(
            "waiting up to {}s for {} outstanding records",
            bound.as_secs(),
            left()
        );
        if let Err(error) = producer.flush(bound) {
            eprintln!("flush: {error}");
        }
    }
    left()
}

// ---------------------------------------------------------------------------
// Sampling the broker

/// The figures one `/metrics` answer gives (summed over shards); `None`
/// where the broker does not export the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scrape {
    disk_bytes: u64,
    segments: Option<u64>,
    moved_bytes: Option<u64>,
    segments_removed: Option<u64>,
}

impl Scrape {
    fn parse(text: &str) -> anyhow::Result<Scrape> {
        let disk_bytes = sum_metric(text, METRIC_DISK_BYTES)
            .ok_or_else(|| anyhow!("/metrics has no {METRIC_DISK_BYTES}"))?;
        Ok(Scrape {
            disk_bytes,
            segments: sum_metric(text, METRIC_SEGMENTS),
            moved_bytes: sum_metric(text, METRIC_MOVED_BYTES),
            segments_removed: sum_metric(text, METRIC_SEGMENTS_REMOVED),
        })
    }
}

/// The sum of every sample of `name` (any labels) in a Prometheus text
/// exposition; `None` when there is none.
fn sum_metric(text: &str, name: &str) -> Option<u64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.as_bytes().first() {
            Some(b'{') => rest.rsplit_once('}').map(|(_, v)| v),
            Some(b' ') => Some(rest),
            _ => None,
        };
        let Some(number) = value.and_then(|v| v.split_whitespace().next()) else {
            continue;
        };
        let parsed = number
            .parse::<u64>()
            .ok()
            .or_else(|| number.parse::<f64>().ok().map(|f| f.max(0.0) as u64));
        if let Some(v) = parsed {
            sum = Some(sum.unwrap_or(0u64).saturating_add(v));
        }
    }
    sum
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    elapsed_s: f64,
    producing: bool,
    live_bytes: u64,
    scrape: Scrape,
}

impl Sample {
    fn ratio(&self) -> Option<f64> {
        (self.live_bytes > 0).then(|| self.scrape.disk_bytes as f64 / self.live_bytes as f64)
    }
}

/// Reads `/metrics` and keeps the series.
struct Sampler {
    agent: ureq::Agent,
    url: String,
    samples: Vec<Sample>,
    samples_max: usize,
    errors: u64,
    first_error: Option<String>,
}

impl Sampler {
    fn new(admin: &str, plan: &Plan) -> Sampler {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(HTTP_CONNECT_TIMEOUT)
            .timeout(HTTP_TIMEOUT)
            .build();
        let run = plan.produce + plan.settle;
        let samples_max = (run.as_secs_f64() / SAMPLE_INTERVAL.as_secs_f64()).ceil() as usize + 2;
        Sampler {
            agent,
            url: format!("http://{admin}/metrics"),
            samples: Vec::with_capacity(samples_max),
            samples_max,
            errors: 0,
            first_error: None,
        }
    }

    fn scrape(&self) -> anyhow::Result<Scrape> {
        let response = self
            .agent
            .get(&self.url)
            .call()
            // ureq's error names the URL.
            .map_err(|error| anyhow!("GET {error}"))?;
        let text = response
            .into_string()
            .with_context(|| format!("GET {}: reading the answer", self.url))?;
        Scrape::parse(&text)
    }

    fn check(&self) -> anyhow::Result<()> {
        let scrape = self.scrape()?;
        if scrape.moved_bytes.is_none() {
            eprintln!("note: the broker exports no {METRIC_MOVED_BYTES} (no segment collector)");
        }
        Ok(())
    }

    fn print_header(&self) {
        println!(
            "{:>7} {:>6} {:>12} {:>5} {:>11} {:>9} {:>11} {:>8}",
            "time_s",
            "phase",
            "wal_disk_MiB",
            "segs",
            "live_MiB",
            "disk/live",
            "moved_MiB",
            "removed"
        );
    }

    fn take(&mut self, now_ns: u64, producing: bool, live_bytes: u64) {
        if self.samples.len() >= self.samples_max {
            return;
        }
        match self.scrape() {
            Ok(scrape) => {
                let sample = Sample {
                    elapsed_s: now_ns as f64 / 1e9,
                    producing,
                    live_bytes,
                    scrape,
                };
                println!("{}", sample_line(&sample));
                self.samples.push(sample);
            }
            Err(error) => {
                self.errors += 1;
                eprintln!("[{:>7.1}s] sample failed: {error:#}", now_ns as f64 / 1e9);
                self.first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / BYTES_PER_MIB
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_string())
}

fn sample_line(s: &Sample) -> String {
    format!(
        "{:>7.1} {:>6} {:>12.1} {:>5} {:>11.1} {:>9} {:>11} {:>8}",
        s.elapsed_s,
        if s.producing { "load" } else { "settle" },
        mib(s.scrape.disk_bytes),
        or_dash(s.scrape.segments.map(|n| n.to_string())),
        mib(s.live_bytes),
        or_dash(s.ratio().map(|r| format!("{r:.2}"))),
        or_dash(s.scrape.moved_bytes.map(|b| format!("{:.1}", mib(b)))),
        or_dash(s.scrape.segments_removed.map(|n| n.to_string())),
    )
}

// ---------------------------------------------------------------------------
// Report

/// The figures of the series the summary reports.
#[derive(Debug, Default, PartialEq)]
struct SeriesFigures {
    disk_bytes_peak: u64,
    disk_bytes_final: u64,
    live_bytes_final: u64,
    ratio_final: Option<f64>,
    /// Over the samples at or after `steady_from_s`.
    ratio_max_steady: Option<f64>,
    /// The same while producing: without the drain of the short window at
    /// the end, which the broker's expiry follows a little later.
    ratio_max_steady_load: Option<f64>,
    disk_over_2x_live_bytes_max_steady: Option<i64>,
    moved_bytes_final: Option<u64>,
    segments_removed_final: Option<u64>,
}

fn series_figures(samples: &[Sample], steady_from_s: f64) -> SeriesFigures {
    let Some(last) = samples.last() else {
        return SeriesFigures::default();
    };
    let steady = || samples.iter().filter(|s| s.elapsed_s >= steady_from_s);
    let over = |s: &Sample| s.scrape.disk_bytes as i64 - 2 * s.live_bytes as i64;
    SeriesFigures {
        disk_bytes_peak: samples
            .iter()
            .map(|s| s.scrape.disk_bytes)
            .max()
            .unwrap_or(0),
        disk_bytes_final: last.scrape.disk_bytes,
        live_bytes_final: last.live_bytes,
        ratio_final: last.ratio(),
        ratio_max_steady: steady().filter_map(Sample::ratio).reduce(f64::max),
        ratio_max_steady_load: steady()
            .filter(|s| s.producing)
            .filter_map(Sample::ratio)
            .reduce(f64::max),
        disk_over_2x_live_bytes_max_steady: steady().map(over).max(),
        moved_bytes_final: last.scrape.moved_bytes,
        segments_removed_final: last.scrape.segments_removed,
    }
}

fn fill_summary(
    summary: &mut Summary,
    plan: &Plan,
    load: &Load,
    producer: &MixProducer,
    sampler: &Sampler,
) {
    let acks = producer.context().lock();
    summary.seconds = load.produce_seconds;
    summary.messages = acks.acked.iter().sum();
    summary.bytes = summary.messages * plan.record_bytes;
    summary.latency = Some(acks.latency.clone());
    summary.interrupted = load.interrupted;
    summary.put("latency_is", "intended send time to acknowledgement");
    summary.put("records_sent", load.sent);
    summary.put("records_failed", acks.failed);
    summary.put("queue_full_waits", load.queue_full_waits);
    summary.put("in_flight_waits", load.in_flight_waits);
    summary.put("client_errors", producer.context().errors.count());
    summary.put("acked_bytes_short", acks.acked_bytes(Stream::Short));
    summary.put("acked_bytes_long", acks.acked_bytes(Stream::Long));
    if let Some(failure) = &acks.first_failure {
        summary.put("first_failure", failure.clone());
    }
    if let Some(error) = &load.send_error {
        summary.put("send_error", error.clone());
    }
    drop(acks);
    let steady_from_s = 2.0 * plan.window_ms as f64 / 1_000.0;
    let f = series_figures(&sampler.samples, steady_from_s);
    summary.put("samples", sampler.samples.len() as u64);
    summary.put("sample_errors", sampler.errors);
    summary.put("disk_bytes_peak", f.disk_bytes_peak);
    summary.put("disk_bytes_final", f.disk_bytes_final);
    summary.put("live_bytes_final", f.live_bytes_final);
    summary.put("ratio_final", f.ratio_final);
    summary.put("ratio_max_after_s", steady_from_s);
    summary.put("ratio_max", f.ratio_max_steady);
    summary.put("ratio_max_load", f.ratio_max_steady_load);
    summary.put(
        "disk_minus_2x_live_bytes_max",
        f.disk_over_2x_live_bytes_max_steady,
    );
    summary.put("collector_bytes_moved", f.moved_bytes_final);
    summary.put("wal_segments_removed", f.segments_removed_final);
    if let Some(error) = &sampler.first_error {
        summary.put("first_sample_error", error.clone());
    }
}

fn check(
    producer: &MixProducer,
    sampler: &Sampler,
    unfinished: u64,
    load: &Load,
) -> anyhow::Result<()> {
    if let Some(error) = &load.send_error {
        bail!("sending stopped early: {error}");
    }
    let acks = producer.context().lock();
    if acks.failed > 0 || unfinished > 0 {
        bail!(
            "{} records failed and {unfinished} were unacknowledged at the deadline \
             (first failure: {})",
            acks.failed,
            acks.first_failure.as_deref().unwrap_or("none")
        );
    }
    if sampler.samples.is_empty() && !load.interrupted {
        bail!(
            "no /metrics sample succeeded (first error: {})",
            sampler.first_error.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn elapsed_ns(origin: Instant) -> u64 {
    duration_ns(origin.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MixedRetentionArgs,
    }

    #[test]
    fn defaults_are_the_scenario_s() {
        let cli = Cli::try_parse_from(["t"]).expect("defaults parse");
        let a = cli.args;
        assert_eq!(a.common.seconds, 60.0);
        assert_eq!(a.common.warmup_seconds, 0.0);
        assert_eq!(a.common.record_bytes, 1024);
        assert_eq!(a.short_retention_ms, 5_000);
        assert_eq!(a.mb_per_sec, 20.0);
        assert_eq!(a.long_share, 0.02);
        assert_eq!(a.settle_seconds, 20.0);
        let plan = Plan::new(&a);
        assert_eq!(plan.topics[0], "sluice-bench-mixed-short");
        assert_eq!(plan.topics[1], "sluice-bench-mixed-long");
        let bytes_per_sec: f64 = plan.rates_per_sec.iter().sum::<f64>() * 1024.0;
        assert!((bytes_per_sec - 20e6).abs() < 1.0);
        assert!((plan.rates_per_sec[1] * 1024.0 - 0.4e6).abs() < 1.0);
        assert!(Cli::try_parse_from(["t", "--long-share", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["t", "--mb-per-sec", "0"]).is_err());
    }

    #[test]
    fn pacer_interleaves_by_rate_and_stops_at_the_end() {
        let mut pacer = Pacer {
            rates_per_sec: [3.0, 1.0],
            next: [0; 2],
            end_ns: 1_000_000_000,
        };
        let mut order = Vec::new();
        while let Some((stream, due)) = pacer.next() {
            order.push((stream, due / 1_000_000));
            pacer.advance(stream);
            assert!(order.len() <= 4, "{order:?}");
        }
        assert_eq!(
            order,
            vec![
                (Stream::Short, 0),
                (Stream::Long, 0),
                (Stream::Short, 333),
                (Stream::Short, 666)
            ]
        );
        let idle = Pacer {
            rates_per_sec: [0.0, 0.0],
            next: [0; 2],
            end_ns: 1,
        };
        assert_eq!(idle.next(), None);
    }

    #[test]
    fn window_keeps_the_last_retention_only() {
        let mut w = AckWindow::new(1_000);
        assert_eq!(w.bucket_ms, WINDOW_BUCKET_MS_MIN);
        w.add(0, 10);
        w.add(50, 5);
        w.add(950, 1);
        assert_eq!(w.bytes(999), 16);
        assert_eq!(w.bytes(1_099), 16);
        assert_eq!(w.bytes(1_100), 1);
        assert_eq!(w.bytes(2_000), 0);
        let wide = AckWindow::new(86_400_000);
        assert_eq!(wide.bucket_ms, 86_400);
    }

    #[test]
    fn metrics_are_summed_over_shards() {
        let text = "# HELP sluice_shard_wal_segment_bytes Disk bytes.\n\
                    # TYPE sluice_shard_wal_segment_bytes gauge\n\
                    sluice_shard_wal_segment_bytes{shard=\"0\"} 16777216\n\
                    sluice_shard_wal_segment_bytes{shard=\"1\"} 33554432\n\
                    sluice_shard_wal_segments{shard=\"0\"} 1\n\
                    sluice_shard_wal_segments_removed_total{shard=\"0\"} 7\n\
                    sluice_wal_collector_bytes_moved_total 1.5e3\n";
        let scrape = Scrape::parse(text).expect("has the disk metric");
        assert_eq!(scrape.disk_bytes, 50_331_648);
        assert_eq!(scrape.segments, Some(1));
        assert_eq!(scrape.segments_removed, Some(7));
        assert_eq!(scrape.moved_bytes, Some(1_500));
        assert!(Scrape::parse("other_metric 1\n").is_err());
        assert_eq!(sum_metric("sluice_x_total 3\n", "sluice_x"), None);
    }

    #[test]
    fn samples_after_a_missed_one_keep_the_grid() {
        assert_eq!(next_sample_ns(0, 10), 1_000_000_000);
        assert_eq!(next_sample_ns(1_000_000_000, 3_500_000_000), 4_000_000_000);
    }

    #[test]
    fn figures_of_a_series() {
        let at = |elapsed_s: f64, disk: u64, live: u64| Sample {
            elapsed_s,
            producing: true,
            live_bytes: live,
            scrape: Scrape {
                disk_bytes: disk,
                segments: None,
                moved_bytes: Some(elapsed_s as u64),
                segments_removed: None,
            },
        };
        let mut samples = [at(1.0, 100, 1), at(10.0, 300, 100), at(11.0, 200, 50)];
        samples[2].producing = false;
        let f = series_figures(&samples, 10.0);
        assert_eq!(f.disk_bytes_peak, 300);
        assert_eq!(f.disk_bytes_final, 200);
        assert_eq!(f.ratio_final, Some(4.0));
        assert_eq!(f.ratio_max_steady, Some(4.0));
        assert_eq!(f.ratio_max_steady_load, Some(3.0));
        assert_eq!(f.disk_over_2x_live_bytes_max_steady, Some(100));
        assert_eq!(f.moved_bytes_final, Some(11));
        assert_eq!(series_figures(&[], 0.0), SeriesFigures::default());
    }
}
