//! `search`: indexing lag, indexing throughput and query latency of a
//! broker's Elasticsearch-compatible search API, and what indexing costs
//! produce throughput.
//!
//! Records go in through librdkafka like every Kafka scenario. The search
//! API is reached over plain HTTP at `--admin` (`POST /{topic}/_search`,
//! `POST /{topic}/_count`, `GET /metrics`) with a blocking `ureq` agent;
//! nothing of the broker's internals is used. A topic opts in with the
//! topic config `sluice.search.enable=true`, set when this scenario
//! creates it.
//!
//! Phases, in order:
//! 1. topics: `{topic}` searchable and, with `--compare-off`,
//!    `{topic}-nosearch` plain; then the search API must answer `_count`;
//! 2. `--query-records N`: N records to `{topic}` as fast as the client
//!    allows (closed loop), then wait until all are searchable;
//! 3. `--compare-off`: the load (`--rate` for `--seconds`) to
//!    `{topic}-nosearch`;
//! 4. the same load to `{topic}` while a sampler thread measures the
//!    indexing lag;
//! 5. catch-up: `_count` polled until every record of the run is
//!    searchable (indexing records/s after production ends and overall);
//! 6. `--queries` queries of each kind, one at a time;
//! 7. the `/metrics` lines starting with `sluice_index`.
//!
//! Records are JSON objects
//! `{"user":"u123","level":"info","latency":57,"msg":"words ...","seq":N}`
//! padded with words to about `--record-bytes`. `seq` numbers start at the
//! topic's total high watermark, so runs of this scenario on one topic
//! never share one, and `seq >= base` counts exactly this run's records.
//!
//! Indexing lag: every `LAG_SAMPLE_INTERVAL` the sampler takes the record
//! acknowledged most recently (its `seq` and the instant its delivery
//! report ran) and polls `_count` for exactly that `seq` every
//! `LAG_POLL_INTERVAL` until it is found, at most `LAG_WAIT_MAX`. The lag
//! runs from the acknowledgement to the answer that found the record, so
//! it reads high by up to one poll interval plus one request.
//!
//! Invariant: every wait is bounded (drain, catch-up, lag samples, HTTP
//! timeouts) and checks `stop_requested()`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use serde_json::{json, Value};

use crate::args::{parse_seconds, ClientArgs, CommonArgs, DRAIN_SECONDS_MAX};
use crate::client::{
    new_admin, new_consumer, wait_for_partitions, watermarks, BenchContext, Created, ErrorProbe,
    REQUEST_TIMEOUT,
};
use crate::control::{stop_requested, Progress};
use crate::produce::parse_rate;
use crate::report::{latency_lines, new_latency_histogram, record_latency_us, LatencySummary};

/// The topic config that makes a topic searchable.
const SEARCH_ENABLE: &str = "sluice.search.enable";
/// Suffix of the topic the same load goes to with search off.
const NOSEARCH_SUFFIX: &str = "-nosearch";
/// Prefix of the `/metrics` lines printed at the end.
const METRICS_PREFIX: &str = "sluice_index";

/// Time between two lag samples.
const LAG_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);
/// Time between two `_count` polls of the pending samples.
const LAG_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// A sample not searchable after this long is given up (and counted).
const LAG_WAIT_MAX: Duration = Duration::from_secs(30);
/// Samples waiting to be found at most; none is taken while this many wait.
const LAG_PENDING_MAX: usize = 64;

/// Time between two `_count` polls while waiting for a catch-up.
const CATCH_UP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Longest wait for every record of a phase to be searchable.
const CATCH_UP_MAX: Duration = Duration::from_secs(600);
/// A catch-up whose count does not grow for this long is given up.
const CATCH_UP_STALL_MAX: Duration = Duration::from_secs(30);
/// Longest wait for the search API to answer at start.
const API_READY_MAX: Duration = Duration::from_secs(15);

const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Whole-request timeout of one HTTP call.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of an HTTP error body quoted in messages.
const ERROR_BODY_QUOTED_MAX: usize = 300;

/// Records sent but not yet acknowledged at most.
const IN_FLIGHT_RECORDS_MAX: u64 = 100_000;
/// Sends between two non-blocking polls of the delivery queue.
const SENDS_PER_POLL: u64 = 256;
/// Longest pause of the open-loop pacer before it checks the clock again.
const PACER_SLEEP_MAX: Duration = Duration::from_millis(1);
/// Drain time left after Ctrl-C.
const DRAIN_AFTER_STOP: Duration = Duration::from_secs(5);

/// Distinct `user` values (`u0` .. `u{USERS-1}`).
const USERS: u64 = 1_000;
/// `latency` values are 1..=LATENCY_MAX.
const LATENCY_MAX: u64 = 1_000;
/// Width of the `latency` range of the bool query.
const LATENCY_RANGE_WIDTH: u64 = 100;
/// Levels and their weights in percent.
const LEVELS: [(&str, u64); 4] = [("info", 70), ("debug", 15), ("warn", 10), ("error", 5)];
/// Hits asked for by the term and bool queries.
const QUERY_HITS_SIZE: u64 = 10;
/// Buckets asked for by the terms aggregation.
const AGG_BUCKETS_SIZE: u64 = 10;
/// Words of the `msg` padding.
const WORDS: [&str; 32] = [
    "request",
    "served",
    "cache",
    "miss",
    "hit",
    "upstream",
    "timeout",
    "retry",
    "user",
    "login",
    "logout",
    "session",
    "token",
    "expired",
    "payment",
    "accepted",
    "declined",
    "order",
    "shipped",
    "queue",
    "worker",
    "started",
    "stopped",
    "disk",
    "latency",
    "slow",
    "fast",
    "error",
    "warning",
    "connection",
    "reset",
    "ok",
];

#[derive(clap::Args, Debug, Clone)]
pub struct SearchArgs {
    /// Broker address list (`bootstrap.servers`).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// host:port of the broker's admin HTTP server (search API, /metrics).
    #[arg(long, default_value = "127.0.0.1:9644")]
    pub admin: String,
    /// Searchable topic; the search-off one is `{topic}-nosearch`.
    #[arg(long, default_value = "sluice-bench-search")]
    pub topic: String,
    /// Partitions of each topic, created with this count when missing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=100_000))]
    pub partitions: i32,
    /// Replication factor used when a topic is created.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=16))]
    pub replication_factor: i32,
    /// Send rate of the measured load, records/s (open loop).
    #[arg(long, default_value_t = 20_000.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Length of the measured load.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Approximate size of each JSON record.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(64..=1_000_000))]
    pub record_bytes: u64,
    /// Queries of each kind.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub queries: u64,
    /// First write this many records as fast as possible and wait until
    /// they are searchable, so the queries run over them.
    #[arg(long, value_name = "RECORDS", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub query_records: Option<u64>,
    /// Also send the load to `{topic}-nosearch` first and print the
    /// search-on / search-off throughput ratio (`--compare-off false` skips).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub compare_off: bool,
    /// Print one JSON object as the last line on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl SearchArgs {
    /// The shared Kafka settings, to build clients with the usual mapping.
    fn common(&self, topic: &str) -> CommonArgs {
        CommonArgs {
            bootstrap: self.bootstrap.clone(),
            topic: topic.to_string(),
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            record_bytes: self.record_bytes,
            seconds: self.seconds,
            warmup_seconds: 0.0,
            records_max: u64::MAX,
            json: self.json,
            hgrm_out: None,
            plot: None,
            client: self.client.clone(),
        }
    }

    fn nosearch_topic(&self) -> String {
        format!("{}{NOSEARCH_SUFFIX}", self.topic)
    }

    fn describe(&self) -> String {
        format!(
            "admin={} rate={}/s seconds={} queries={} query_records={} compare_off={}; {}",
            self.admin,
            self.rate,
            self.seconds,
            self.queries,
            self.query_records.unwrap_or(0),
            self.compare_off,
            self.common(&self.topic).describe()
        )
    }
}

pub fn run(args: SearchArgs) -> anyhow::Result<()> {
    let admin = SearchApi::new(&args.admin);
    let common = args.common(&args.topic);
    let seq_base = prepare_topic(&common, &[(SEARCH_ENABLE, "true")])?;
    let nosearch = args.nosearch_topic();
    let common_off = args.common(&nosearch);
    if args.compare_off {
        prepare_topic(&common_off, &[])?;
    }
    admin.wait_ready(&args.topic)?;
    let mut report = Report::new(&args);
    let mut seq_next = seq_base;

    if let Some(records) = args.query_records {
        eprintln!(
            "search: writing {records} records to {} for the queries",
            args.topic
        );
        let load = Load::closed(&args.topic, records, seq_next, args.record_bytes);
        let outcome = produce(&common, &load, None)?;
        seq_next += outcome.sent;
        report.produce("preload", &outcome);
        let catch_up = wait_indexed(&admin, &args.topic, seq_base, outcome.acked);
        report.catch_up("preload", &catch_up, &outcome);
    }

    let load = Load::open(
        &args.topic,
        args.rate,
        args.seconds,
        seq_next,
        args.record_bytes,
    );
    let outcome_off = if args.compare_off && !stop_requested() {
        eprintln!("search: load to {nosearch} (search off)");
        let load_off = Load {
            topic: nosearch.clone(),
            ..load.clone()
        };
        let outcome = produce(&common_off, &load_off, None)?;
        report.produce("produce_off", &outcome);
        Some(outcome)
    } else {
        None
    };

    eprintln!("search: load to {} (search on)", args.topic);
    let shared = Arc::new(AckShared::default());
    let done = AtomicBool::new(false);
    // The lag sampler polls the search API with blocking HTTP while the
    // load runs: a thread of the bench process, not of any broker.
    let (outcome_on, lag, catch_up) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_lag(&args.admin, &args.topic, &shared, &done));
        let outcome = produce(&common, &load, Some(Arc::clone(&shared)));
        done.store(true, Ordering::Release);
        let catch_up = outcome
            .as_ref()
            .ok()
            .map(|o| wait_indexed(&admin, &args.topic, load.seq_base, o.acked));
        let lag = sampler
            .join()
            .unwrap_or_else(|_| LagOutcome::failed("lag sampler panicked"));
        (outcome, lag, catch_up)
    });
    let outcome_on = outcome_on?;
    report.produce("produce_on", &outcome_on);
    report.main = Some((outcome_on.seconds, outcome_on.acked));
    if let Some(off) = &outcome_off {
        let ratio = ratio(outcome_on.records_per_sec(), off.records_per_sec());
        report.put("produce_on_off_ratio", ratio);
    }
    report.lag(&lag);
    if let Some(catch_up) = &catch_up {
        report.catch_up("index", catch_up, &outcome_on);
    }

    let mut queries_ok = 0;
    for kind in QueryKind::ALL {
        if stop_requested() {
            break;
        }
        let outcome = run_queries(&admin, &args.topic, kind, args.queries);
        queries_ok += outcome.latency.len();
        report.queries(kind, &outcome);
    }

    let metrics = match admin.metrics() {
        Ok(text) => text
            .lines()
            .filter(|line| line.starts_with(METRICS_PREFIX))
            .map(str::to_string)
            .collect(),
        Err(error) => vec![format!("# /metrics: {error:#}")],
    };
    report.print(&metrics);

    for outcome in [Some(&outcome_on), outcome_off.as_ref()]
        .into_iter()
        .flatten()
    {
        outcome.check_delivered()?;
    }
    if queries_ok == 0 && !stop_requested() {
        bail!("no query succeeded (first errors above)");
    }
    Ok(())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------
// Topics

/// Creates `common.topic` with `configs` when missing, waits for its
/// partitions, and returns its total high watermark (the next run's first
/// `seq`).
fn prepare_topic(common: &CommonArgs, configs: &[(&str, &str)]) -> anyhow::Result<u64> {
    let admin = new_admin(common)?;
    let created = create_topic_with(
        &admin,
        &common.topic,
        common.partitions,
        common.replication_factor,
        configs,
    )
    .with_context(|| format!("creating topic {} on {}", common.topic, common.bootstrap))?;
    let consumer = new_consumer(common, "sluice-bench-metadata")?;
    let ids = wait_for_partitions(&consumer, &common.topic, REQUEST_TIMEOUT * 3)?;
    if created == Created::AlreadyExisted {
        eprintln!(
            "note: topic {} already existed ({} partitions); its configs were left as they are \
             (this scenario needs {configs:?})",
            common.topic,
            ids.len()
        );
    }
    let marks = watermarks(&consumer, &common.topic, &ids)?;
    Ok(marks.iter().map(|m| m.high.max(0) as u64).sum())
}

fn create_topic_with(
    admin: &AdminClient<BenchContext>,
    name: &str,
    partitions: i32,
    replication_factor: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<Created> {
    assert!(partitions > 0 && replication_factor > 0);
    let mut topic = NewTopic::new(
        name,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let options = AdminOptions::new()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .operation_timeout(Some(REQUEST_TIMEOUT));
    let results = futures::executor::block_on(admin.create_topics([&topic], &options))
        .with_context(|| format!("CreateTopics {name}"))?;
    match results.first() {
        Some(Ok(_)) => Ok(Created::New),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(Created::AlreadyExisted),
        Some(Err((topic, code))) => bail!("CreateTopics {topic}: {code}"),
        None => bail!("CreateTopics {name}: empty response"),
    }
}

// ---------------------------------------------------------------------------
// Records

/// A small xorshift generator: fast and seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next() % n
    }

    fn level(&mut self) -> &'static str {
        let mut roll = self.below(100);
        for (level, weight) in LEVELS {
            if roll < weight {
                return level;
            }
            roll -= weight;
        }
        LEVELS[0].0
    }
}

/// Builds the JSON records, reusing one buffer.
struct RecordMaker {
    rng: Rng,
    record_bytes: usize,
    buf: String,
}

impl RecordMaker {
    fn new(record_bytes: u64, seed: u64) -> RecordMaker {
        RecordMaker {
            rng: Rng::new(seed),
            record_bytes: record_bytes as usize,
            buf: String::with_capacity(record_bytes as usize + 64),
        }
    }

    /// One record with `seq`, about `record_bytes` long (never shorter
    /// than its fields and one word).
    fn make(&mut self, seq: u64) -> &str {
        const TAIL_FIXED: usize = r#"","seq":}"#.len();
        let user = self.rng.below(USERS);
        let level = self.rng.level();
        let latency = 1 + self.rng.below(LATENCY_MAX);
        self.buf.clear();
        let _ = write!(
            self.buf,
            r#"{{"user":"u{user}","level":"{level}","latency":{latency},"msg":""#
        );
        let tail_len = TAIL_FIXED + decimal_digits(seq);
        let mut first = true;
        while first || self.buf.len() + tail_len < self.record_bytes {
            if !first {
                self.buf.push(' ');
            }
            first = false;
            self.buf
                .push_str(WORDS[self.rng.below(WORDS.len() as u64) as usize]);
        }
        let _ = write!(self.buf, r#"","seq":{seq}}}"#);
        &self.buf
    }
}

fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

// ---------------------------------------------------------------------------
// Producing

/// One phase's load.
#[derive(Clone, Debug)]
struct Load {
    topic: String,
    /// Open loop at this rate; closed loop when `None`.
    rate: Option<f64>,
    /// Sending stops after this long (open loop).
    duration: Option<Duration>,
    /// Sending stops after this many records.
    records: u64,
    seq_base: u64,
    record_bytes: u64,
}

impl Load {
    fn open(topic: &str, rate: f64, seconds: f64, seq_base: u64, record_bytes: u64) -> Load {
        Load {
            topic: topic.to_string(),
            rate: Some(rate),
            duration: Some(Duration::from_secs_f64(seconds)),
            records: u64::MAX,
            seq_base,
            record_bytes,
        }
    }

    fn closed(topic: &str, records: u64, seq_base: u64, record_bytes: u64) -> Load {
        Load {
            topic: topic.to_string(),
            rate: None,
            duration: None,
            records,
            seq_base,
            record_bytes,
        }
    }

    /// When record `index` of the phase is due, from the phase's origin.
    fn due(&self, index: u64) -> Option<Duration> {
        self.rate
            .map(|rate| Duration::from_secs_f64(index as f64 / rate))
    }
}

/// What a delivery report needs: the record's seq and intended send time.
struct Sent {
    seq: u64,
    intended: Instant,
}

/// Delivery state, written by delivery reports on the producing thread and
/// read by the lag sampler.
struct AckShared {
    completed: AtomicU64,
    state: Mutex<AckState>,
}

struct AckState {
    acked: u64,
    acked_bytes: u64,
    failed: u64,
    first_failure: Option<String>,
    /// The record acknowledged most recently and when.
    last_ack: Option<(u64, Instant)>,
    /// Acknowledgement latency from the intended send time (µs).
    latency: Histogram<u64>,
}

impl Default for AckShared {
    fn default() -> AckShared {
        AckShared {
            completed: AtomicU64::new(0),
            state: Mutex::new(AckState {
                acked: 0,
                acked_bytes: 0,
                failed: 0,
                first_failure: None,
                last_ack: None,
                latency: new_latency_histogram(),
            }),
        }
    }
}

impl AckShared {
    fn lock(&self) -> MutexGuard<'_, AckState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn last_ack(&self) -> Option<(u64, Instant)> {
        self.lock().last_ack
    }
}

struct AckProbe {
    shared: Arc<AckShared>,
    errors: ErrorProbe,
}

impl ClientContext for AckProbe {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.on_error(&error, reason);
    }
}

impl ProducerContext for AckProbe {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        let now = Instant::now();
        {
            let mut state = self.shared.lock();
            match result {
                Ok(message) => {
                    state.acked += 1;
                    state.acked_bytes += message.payload_len() as u64;
                    state.last_ack = Some((sent.seq, now));
                    let latency_us = now.saturating_duration_since(sent.intended).as_micros();
                    record_latency_us(&mut state.latency, latency_us as u64);
                }
                Err((error, _)) => {
                    state.failed += 1;
                    if state.first_failure.is_none() {
                        state.first_failure = Some(error.to_string());
                    }
                }
            }
        }
        self.shared.completed.fetch_add(1, Ordering::Release);
    }
}

/// What one phase's producer measured.
struct LoadOutcome {
    sent: u64,
    acked: u64,
    acked_bytes: u64,
    failed: u64,
    first_failure: Option<String>,
    unfinished: u64,
    send_error: Option<String>,
    client_errors: u64,
    latency: Histogram<u64>,
    /// From the first send to the later of the last send and last ack.
    seconds: f64,
    /// When the last record was acknowledged (or the drain ended).
    ended: Instant,
    started: Instant,
}

impl LoadOutcome {
    fn records_per_sec(&self) -> f64 {
        per_second(self.acked as f64, self.seconds)
    }

    fn check_delivered(&self) -> anyhow::Result<()> {
        if let Some(error) = &self.send_error {
            bail!("sending stopped early: {error}");
        }
        if self.failed > 0 || self.unfinished > 0 {
            bail!(
                "{} records failed and {} were unacknowledged at the deadline (first failure: {})",
                self.failed,
                self.unfinished,
                self.first_failure.as_deref().unwrap_or("none")
            );
        }
        Ok(())
    }
}

/// Sends one phase's load and waits for its acknowledgements (bounded).
/// `shared` is the delivery state to fill (the lag sampler reads it).
fn produce(
    common: &CommonArgs,
    load: &Load,
    shared: Option<Arc<AckShared>>,
) -> anyhow::Result<LoadOutcome> {
    let shared = shared.unwrap_or_default();
    let probe = AckProbe {
        shared: Arc::clone(&shared),
        errors: ErrorProbe::default(),
    };
    let producer: BaseProducer<AckProbe> = common
        .producer_config()
        .create_with_context(probe)
        .context("creating producer")?;
    // Connect and learn the leaders before the clock starts.
    producer
        .client()
        .fetch_metadata(Some(&load.topic), REQUEST_TIMEOUT)
        .with_context(|| format!("metadata for {}", load.topic))?;
    let mut maker = RecordMaker::new(load.record_bytes, load.seq_base ^ 0x9E37_79B9_7F4A_7C15);
    let origin = Instant::now();
    let end = load.duration.map(|d| origin + d);
    let mut progress = Progress::new("produce", origin);
    let mut sent = 0u64;
    let mut send_error = None;
    let deadline = end.unwrap_or(origin + CATCH_UP_MAX) + Duration::from_secs(DRAIN_SECONDS_MAX);
    'send: while sent < load.records && !stop_requested() {
        let now = Instant::now();
        let completed = shared.completed.load(Ordering::Acquire);
        progress.tick(completed, || {
            format!("acked or failed ({}), sent={sent}", load.topic)
        });
        if sent - completed >= IN_FLIGHT_RECORDS_MAX {
            producer.poll(Duration::from_millis(1));
            continue;
        }
        let intended = match load.due(sent) {
            Some(due) => origin + due,
            None => now,
        };
        if end.is_some_and(|end| intended >= end) || now >= deadline {
            break;
        }
        if intended > now {
            producer.poll(Duration::ZERO);
            std::thread::sleep((intended - now).min(PACER_SLEEP_MAX));
            continue;
        }
        let seq = load.seq_base + sent;
        let payload = maker.make(seq);
        loop {
            let record = BaseRecord::<(), str, Box<Sent>>::with_opaque_to(
                &load.topic,
                Box::new(Sent { seq, intended }),
            )
            .payload(payload);
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(1));
                    if stop_requested() || Instant::now() >= deadline {
                        break 'send;
                    }
                }
                Err((error, _)) => {
                    eprintln!("sending stopped: {error}");
                    send_error = Some(format!("send to {}: {error}", load.topic));
                    break 'send;
                }
            }
        }
        sent += 1;
        if sent % SENDS_PER_POLL == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    let send_ended = Instant::now();
    let mut drain_deadline = deadline.max(send_ended + Duration::from_secs(DRAIN_SECONDS_MAX));
    loop {
        let completed = shared.completed.load(Ordering::Acquire);
        if completed >= sent || Instant::now() >= drain_deadline {
            break;
        }
        if stop_requested() {
            drain_deadline = drain_deadline.min(Instant::now() + DRAIN_AFTER_STOP);
        }
        progress.tick(completed, || {
            format!("acked or failed, draining {}", sent - completed)
        });
        producer.poll(Duration::from_millis(10));
    }
    let completed = shared.completed.load(Ordering::Acquire);
    let state = shared.lock();
    let last_ack = state.last_ack.map_or(send_ended, |(_, at)| at);
    let ended = last_ack.max(send_ended);
    Ok(LoadOutcome {
        sent,
        acked: state.acked,
        acked_bytes: state.acked_bytes,
        failed: state.failed,
        first_failure: state.first_failure.clone(),
        unfinished: sent.saturating_sub(completed),
        send_error,
        client_errors: producer.context().errors.count(),
        latency: state.latency.clone(),
        seconds: ended.duration_since(origin).as_secs_f64(),
        ended,
        started: origin,
    })
}

// ---------------------------------------------------------------------------
// The search API

/// Blocking client of the admin port's search API.
struct SearchApi {
    agent: ureq::Agent,
    base: String,
}

/// `_count` of this run's records with exactly `seq`.
fn count_seq_body(seq: u64) -> Value {
    json!({"query": {"range": {"seq": {"gte": seq, "lte": seq}}}})
}

/// `_count` of the records with `seq >= from`.
fn count_from_body(from: u64) -> Value {
    json!({"query": {"range": {"seq": {"gte": from}}}})
}

impl SearchApi {
    fn new(admin: &str) -> SearchApi {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(HTTP_CONNECT_TIMEOUT)
            .timeout(HTTP_TIMEOUT)
            .build();
        SearchApi {
            agent,
            base: format!("http://{admin}"),
        }
    }

    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let response = self
            .agent
            .post(&url)
            .send_json(body)
            .map_err(|error| http_error(&url, error))?;
        response
            .into_json::<Value>()
            .with_context(|| format!("POST {url}: reading the JSON answer"))
    }

    fn count(&self, topic: &str, body: &Value) -> anyhow::Result<u64> {
        let answer = self.post(&format!("/{topic}/_count"), body)?;
        answer["count"]
            .as_u64()
            .ok_or_else(|| anyhow!("_count of {topic}: no \"count\" in {answer}"))
    }

    fn search(&self, topic: &str, body: &Value) -> anyhow::Result<Value> {
        self.post(&format!("/{topic}/_search"), body)
    }

    fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("{}/metrics", self.base);
        let response = self
            .agent
            .get(&url)
            .call()
            .map_err(|error| http_error(&url, error))?;
        response
            .into_string()
            .with_context(|| format!("GET {url}: reading the answer"))
    }

    /// Waits until `_count` on `topic` answers (the topic's search config
    /// may take a moment to reach the broker's index).
    fn wait_ready(&self, topic: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + API_READY_MAX;
        loop {
            match self.count(topic, &count_from_body(0)) {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() >= deadline || stop_requested() => {
                    return Err(error.context(format!(
                        "the search API at {} did not answer within {API_READY_MAX:?}",
                        self.base
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

fn http_error(url: &str, error: ureq::Error) -> anyhow::Error {
    match error {
        ureq::Error::Status(code, response) => {
            let mut body = response.into_string().unwrap_or_default();
            if body.len() > ERROR_BODY_QUOTED_MAX {
                let cut = (0..=ERROR_BODY_QUOTED_MAX)
                    .rev()
                    .find(|&i| body.is_char_boundary(i))
                    .unwrap_or(0);
                body.truncate(cut);
                body.push_str("...");
            }
            anyhow!("{url}: HTTP {code}: {body}")
        }
        ureq::Error::Transport(transport) => anyhow!("{url}: {transport}"),
    }
}

// ---------------------------------------------------------------------------
// Indexing lag

struct LagOutcome {
    /// Lag of the samples found (µs).
    latency: Histogram<u64>,
    /// Samples not found within `LAG_WAIT_MAX`.
    timed_out: u64,
    /// Samples still waiting when a stop was requested.
    abandoned: u64,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

impl LagOutcome {
    fn failed(reason: &str) -> LagOutcome {
        LagOutcome {
            latency: new_latency_histogram(),
            timed_out: 0,
            abandoned: 0,
            requests: 0,
            errors: 1,
            first_error: Some(reason.to_string()),
        }
    }
}

/// Samples the indexing lag while `done` is false, then waits (bounded)
/// for the samples still pending. Runs on its own thread with its own HTTP
/// agent.
fn sample_lag(admin: &str, topic: &str, shared: &AckShared, done: &AtomicBool) -> LagOutcome {
    let api = SearchApi::new(admin);
    let mut outcome = LagOutcome {
        latency: new_latency_histogram(),
        timed_out: 0,
        abandoned: 0,
        requests: 0,
        errors: 0,
        first_error: None,
    };
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut last_seq = None;
    let mut next_sample = Instant::now();
    let mut final_taken = false;
    loop {
        if stop_requested() {
            outcome.abandoned = pending.len() as u64;
            break;
        }
        let finished = done.load(Ordering::Acquire);
        let round = Instant::now();
        if !final_taken && (finished || round >= next_sample) {
            // After `done`, the last acknowledgement is final: one more sample.
            final_taken = finished;
            if pending.len() < LAG_PENDING_MAX {
                if let Some((seq, at)) = shared.last_ack() {
                    if last_seq != Some(seq) {
                        pending.push_back((seq, at));
                        last_seq = Some(seq);
                    }
                }
            }
            next_sample = round + LAG_SAMPLE_INTERVAL;
        }
        if final_taken && pending.is_empty() {
            break;
        }
        pending.retain(|&(seq, acked_at)| {
            outcome.requests += 1;
            match api.count(topic, &count_seq_body(seq)) {
                Ok(n) if n > 0 => {
                    let lag = acked_at.elapsed();
                    record_latency_us(&mut outcome.latency, lag.as_micros() as u64);
                    return false;
                }
                Ok(_) => {}
                Err(error) => {
                    outcome.errors += 1;
                    if outcome.first_error.is_none() {
                        outcome.first_error = Some(format!("{error:#}"));
                    }
                }
            }
            if acked_at.elapsed() >= LAG_WAIT_MAX {
                outcome.timed_out += 1;
                return false;
            }
            true
        });
        let spent = round.elapsed();
        std::thread::sleep(LAG_POLL_INTERVAL.saturating_sub(spent));
    }
    outcome
}

// ---------------------------------------------------------------------------
// Catch-up

struct CatchUp {
    /// Records of the phase searchable when its production ended.
    count_at_end: u64,
    /// Records searchable at the last poll.
    count: u64,
    expected: u64,
    /// From the end of production to the last poll.
    seconds: f64,
    reached: bool,
    error: Option<String>,
}

/// Polls `_count` of `seq >= seq_base` until it reaches `expected`, stalls
/// for `CATCH_UP_STALL_MAX`, or `CATCH_UP_MAX` passes.
fn wait_indexed(api: &SearchApi, topic: &str, seq_base: u64, expected: u64) -> CatchUp {
    let started = Instant::now();
    let body = count_from_body(seq_base);
    let mut catch_up = CatchUp {
        count_at_end: 0,
        count: 0,
        expected,
        seconds: 0.0,
        reached: false,
        error: None,
    };
    let mut first = true;
    let mut grew_at = started;
    let mut progress = Progress::new("indexed", started);
    loop {
        let round = Instant::now();
        match api.count(topic, &body) {
            Ok(count) => {
                if first {
                    catch_up.count_at_end = count;
                }
                if count > catch_up.count || first {
                    grew_at = round;
                }
                catch_up.count = count;
                first = false;
                catch_up.error = None;
            }
            Err(error) => catch_up.error = Some(format!("{error:#}")),
        }
        catch_up.seconds = started.elapsed().as_secs_f64();
        if catch_up.count >= expected {
            catch_up.reached = true;
            return catch_up;
        }
        if stop_requested()
            || started.elapsed() >= CATCH_UP_MAX
            || grew_at.elapsed() >= CATCH_UP_STALL_MAX
        {
            eprintln!(
                "note: {} of {expected} records searchable after {:.1} s; stopped waiting{}",
                catch_up.count,
                catch_up.seconds,
                catch_up
                    .error
                    .as_deref()
                    .map_or(String::new(), |e| format!(" (last error: {e})"))
            );
            return catch_up;
        }
        progress.tick(catch_up.count, || format!("searchable of {expected}"));
        std::thread::sleep(CATCH_UP_POLL_INTERVAL.saturating_sub(round.elapsed()));
    }
}

// ---------------------------------------------------------------------------
// Queries

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueryKind {
    /// `term` on `user.keyword`.
    Term,
    /// `bool` of a `range` on `latency` and a `term` on `level.keyword`.
    BoolRange,
    /// `terms` aggregation on `user.keyword`, no hits.
    TermsAgg,
}

impl QueryKind {
    const ALL: [QueryKind; 3] = [QueryKind::Term, QueryKind::BoolRange, QueryKind::TermsAgg];

    fn name(self) -> &'static str {
        match self {
            QueryKind::Term => "term",
            QueryKind::BoolRange => "bool_range",
            QueryKind::TermsAgg => "terms_agg",
        }
    }

    fn body(self, rng: &mut Rng) -> Value {
        match self {
            QueryKind::Term => json!({
                "query": {"term": {"user.keyword": format!("u{}", rng.below(USERS))}},
                "size": QUERY_HITS_SIZE,
            }),
            QueryKind::BoolRange => {
                let low = 1 + rng.below(LATENCY_MAX - LATENCY_RANGE_WIDTH + 1);
                json!({
                    "query": {"bool": {"filter": [
                        {"range": {"latency": {"gte": low, "lt": low + LATENCY_RANGE_WIDTH}}},
                        {"term": {"level.keyword": rng.level()}},
                    ]}},
                    "size": QUERY_HITS_SIZE,
                })
            }
            QueryKind::TermsAgg => json!({
                "size": 0,
                "aggs": {"users": {"terms": {"field": "user.keyword", "size": AGG_BUCKETS_SIZE}}},
            }),
        }
    }

    /// What one answer found: total hits, or buckets for the aggregation.
    fn found(self, answer: &Value) -> Option<u64> {
        match self {
            QueryKind::Term | QueryKind::BoolRange => {
                let total = &answer["hits"]["total"];
                total["value"].as_u64().or_else(|| total.as_u64())
            }
            QueryKind::TermsAgg => answer["aggregations"]["users"]["buckets"]
                .as_array()
                .map(|b| b.len() as u64),
        }
    }
}

struct QueryOutcome {
    /// Latency of the answered queries (µs).
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    /// Sum of `found` over the answers that had it.
    found_sum: u64,
    found_answers: u64,
}

fn run_queries(api: &SearchApi, topic: &str, kind: QueryKind, queries: u64) -> QueryOutcome {
    let mut rng = Rng::new(0x5EA2_C4B3 ^ queries);
    let mut outcome = QueryOutcome {
        latency: new_latency_histogram(),
        errors: 0,
        first_error: None,
        found_sum: 0,
        found_answers: 0,
    };
    eprintln!("search: {queries} {} queries", kind.name());
    for _ in 0..queries {
        if stop_requested() {
            break;
        }
        let body = kind.body(&mut rng);
        let start = Instant::now();
        match api.search(topic, &body) {
            Ok(answer) => {
                record_latency_us(&mut outcome.latency, start.elapsed().as_micros() as u64);
                if let Some(found) = kind.found(&answer) {
                    outcome.found_sum += found;
                    outcome.found_answers += 1;
                }
            }
            Err(error) => {
                outcome.errors += 1;
                if outcome.first_error.is_none() {
                    outcome.first_error = Some(format!("{error:#}"));
                }
            }
        }
    }
    outcome
}

// ---------------------------------------------------------------------------
// Report

const BYTES_PER_MB: f64 = 1_000_000.0;
const US_PER_MS: f64 = 1_000.0;

fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        amount / seconds
    } else {
        0.0
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / US_PER_MS
}

/// Figures in the order they were measured, printed as a table and put
/// into the JSON object.
struct Report {
    settings: String,
    json: bool,
    /// Seconds and records of the search-on load.
    main: Option<(f64, u64)>,
    record_bytes: u64,
    figures: Vec<(String, Value)>,
    /// Latency tables printed under the figures.
    tables: Vec<String>,
}

impl Report {
    fn new(args: &SearchArgs) -> Report {
        Report {
            settings: args.describe(),
            json: args.json,
            main: None,
            record_bytes: args.record_bytes,
            figures: Vec::new(),
            tables: Vec::new(),
        }
    }

    fn put(&mut self, key: &str, value: impl Into<Value>) {
        self.figures.push((key.to_string(), value.into()));
    }

    fn produce(&mut self, label: &str, outcome: &LoadOutcome) {
        self.put(&format!("{label}_records"), outcome.acked);
        self.put(&format!("{label}_seconds"), outcome.seconds);
        self.put(
            &format!("{label}_records_per_sec"),
            outcome.records_per_sec(),
        );
        let mb = outcome.acked_bytes as f64 / BYTES_PER_MB;
        self.put(
            &format!("{label}_mb_per_sec"),
            per_second(mb, outcome.seconds),
        );
        let ack = LatencySummary::of(&outcome.latency);
        self.put(&format!("{label}_ack_ms_p50"), ms(ack.p50));
        self.put(&format!("{label}_ack_ms_p99"), ms(ack.p99));
        if outcome.failed + outcome.unfinished > 0 || outcome.client_errors > 0 {
            self.put(&format!("{label}_records_failed"), outcome.failed);
            self.put(&format!("{label}_records_unfinished"), outcome.unfinished);
            self.put(&format!("{label}_client_errors"), outcome.client_errors);
        }
        if let Some(error) = outcome
            .send_error
            .as_ref()
            .or(outcome.first_failure.as_ref())
        {
            self.put(&format!("{label}_first_error"), error.clone());
        }
        self.tables
            .push(latency_lines(&format!("{label} ack latency"), &ack));
    }

    fn catch_up(&mut self, label: &str, catch_up: &CatchUp, load: &LoadOutcome) {
        let backlog = catch_up.expected.saturating_sub(catch_up.count_at_end);
        let indexed_after = catch_up.count.saturating_sub(catch_up.count_at_end);
        self.put(&format!("{label}_searchable_at_end"), catch_up.count_at_end);
        self.put(&format!("{label}_backlog_at_end"), backlog);
        self.put(&format!("{label}_catch_up_seconds"), catch_up.seconds);
        self.put(
            &format!("{label}_records_per_sec_after_end"),
            per_second(indexed_after as f64, catch_up.seconds),
        );
        let overall_seconds =
            (load.ended.duration_since(load.started)).as_secs_f64() + catch_up.seconds;
        self.put(
            &format!("{label}_records_per_sec_overall"),
            per_second(catch_up.count as f64, overall_seconds),
        );
        self.put(&format!("{label}_all_searchable"), catch_up.reached);
        if let Some(error) = &catch_up.error {
            self.put(&format!("{label}_count_error"), error.clone());
        }
    }

    fn lag(&mut self, lag: &LagOutcome) {
        let summary = LatencySummary::of(&lag.latency);
        self.put("index_lag_ms_p50", ms(summary.p50));
        self.put("index_lag_ms_p99", ms(summary.p99));
        self.put("index_lag_ms_max", ms(summary.max));
        self.put("index_lag_samples", summary.count);
        self.put("index_lag_timed_out", lag.timed_out);
        if lag.abandoned > 0 {
            self.put("index_lag_abandoned", lag.abandoned);
        }
        self.put("index_lag_count_requests", lag.requests);
        if lag.errors > 0 {
            self.put("index_lag_errors", lag.errors);
        }
        if let Some(error) = &lag.first_error {
            self.put("index_lag_first_error", error.clone());
        }
        self.tables.push(latency_lines("indexing lag", &summary));
    }

    fn queries(&mut self, kind: QueryKind, outcome: &QueryOutcome) {
        let name = kind.name();
        let summary = LatencySummary::of(&outcome.latency);
        self.put(&format!("query_{name}_ms_p50"), ms(summary.p50));
        self.put(&format!("query_{name}_ms_p99"), ms(summary.p99));
        self.put(&format!("query_{name}_count"), summary.count);
        if outcome.found_answers > 0 {
            let what = if kind == QueryKind::TermsAgg {
                "buckets"
            } else {
                "hits"
            };
            self.put(
                &format!("query_{name}_{what}_avg"),
                outcome.found_sum as f64 / outcome.found_answers as f64,
            );
        }
        if outcome.errors > 0 {
            self.put(&format!("query_{name}_errors"), outcome.errors);
        }
        if let Some(error) = &outcome.first_error {
            self.put(&format!("query_{name}_first_error"), error.clone());
        }
        self.tables
            .push(latency_lines(&format!("query {name}"), &summary));
    }

    fn print(&self, metrics: &[String]) {
        let mut out = String::new();
        let _ = writeln!(out, "== search ({})", self.settings);
        if stop_requested() {
            let _ = writeln!(out, "   interrupted: figures cover the run until Ctrl-C");
        }
        for (key, value) in &self.figures {
            let _ = writeln!(out, "   {key:<40} {:>14}", compact(value));
        }
        for table in &self.tables {
            out.push_str(table);
        }
        if !metrics.is_empty() {
            let _ = writeln!(out, "   /metrics lines starting with {METRICS_PREFIX}:");
            for line in metrics {
                let _ = writeln!(out, "     {line}");
            }
        }
        print!("{out}");
        if self.json {
            println!("{}", self.to_json());
        }
    }

    fn to_json(&self) -> Value {
        let (seconds, messages) = self.main.unwrap_or((0.0, 0));
        let bytes = messages * self.record_bytes;
        let mut object = serde_json::Map::new();
        object.insert("scenario".into(), json!("search"));
        object.insert("seconds".into(), json!(seconds));
        object.insert("messages".into(), json!(messages));
        object.insert(
            "msgs_per_sec".into(),
            json!(per_second(messages as f64, seconds)),
        );
        object.insert(
            "mb_per_sec".into(),
            json!(per_second(bytes as f64 / BYTES_PER_MB, seconds)),
        );
        object.insert("interrupted".into(), json!(stop_requested()));
        for (key, value) in &self.figures {
            object.insert(key.clone(), value.clone());
        }
        Value::Object(object)
    }
}

fn compact(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SearchArgs,
    }

    #[test]
    fn records_are_json_of_about_the_asked_size() {
        for record_bytes in [64u64, 200, 1000] {
            let mut maker = RecordMaker::new(record_bytes, 7);
            for seq in [0u64, 9, 10, 123_456_789_012] {
                let text = maker.make(seq).to_string();
                let value: Value = serde_json::from_str(&text).expect("valid JSON");
                assert_eq!(value["seq"].as_u64(), Some(seq));
                assert!(value["user"].as_str().expect("user").starts_with('u'));
                assert!(LEVELS.iter().any(|(l, _)| value["level"] == *l));
                let latency = value["latency"].as_u64().expect("latency");
                assert!((1..=LATENCY_MAX).contains(&latency));
                assert!(!value["msg"].as_str().expect("msg").is_empty());
                if record_bytes >= 200 {
                    let len = text.len() as u64;
                    assert!(
                        len >= record_bytes && len < record_bytes + 16,
                        "{len} for {record_bytes}: {text}"
                    );
                }
            }
        }
    }

    #[test]
    fn digits_are_counted() {
        assert_eq!(decimal_digits(0), 1);
        assert_eq!(decimal_digits(9), 1);
        assert_eq!(decimal_digits(10), 2);
        assert_eq!(decimal_digits(u64::MAX), 20);
    }

    #[test]
    fn query_answers_are_read() {
        let hits = json!({"hits": {"total": {"value": 12, "relation": "eq"}, "hits": []}});
        assert_eq!(QueryKind::Term.found(&hits), Some(12));
        let old_style = json!({"hits": {"total": 3}});
        assert_eq!(QueryKind::BoolRange.found(&old_style), Some(3));
        let agg = json!({"aggregations": {"users": {"buckets": [{"key": "u1", "doc_count": 4}]}}});
        assert_eq!(QueryKind::TermsAgg.found(&agg), Some(1));
        assert_eq!(QueryKind::TermsAgg.found(&hits), None);
        let mut rng = Rng::new(1);
        for kind in QueryKind::ALL {
            assert!(kind.body(&mut rng).is_object());
        }
    }

    #[test]
    fn defaults_and_compare_off_flag() {
        let cli = Cli::parse_from(["t"]);
        assert_eq!(cli.args.admin, "127.0.0.1:9644");
        assert_eq!(cli.args.rate, 20_000.0);
        assert_eq!(cli.args.record_bytes, 200);
        assert_eq!(cli.args.queries, 200);
        assert!(cli.args.compare_off);
        assert_eq!(cli.args.query_records, None);
        let cli = Cli::parse_from(["t", "--compare-off", "false", "--query-records", "1000"]);
        assert!(!cli.args.compare_off);
        assert_eq!(cli.args.query_records, Some(1000));
        assert_eq!(cli.args.nosearch_topic(), "sluice-bench-search-nosearch");
    }

    #[test]
    fn open_load_paces_by_rate() {
        let load = Load::open("t", 1000.0, 1.0, 5, 200);
        assert_eq!(load.due(0), Some(Duration::ZERO));
        assert_eq!(load.due(500), Some(Duration::from_millis(500)));
        assert_eq!(Load::closed("t", 10, 0, 200).due(3), None);
    }
}
