//! `produce`: producer throughput and produce latency.
//!
//! Two modes:
//! - closed loop (no `--rate`): send as fast as the client allows, keeping at
//!   most `--in-flight-max` records unacknowledged; latency is measured from
//!   the actual send.
//! - open loop (`--rate R`): record `seq` is due at `seq / R` seconds; its
//!   latency is measured from that intended time, so a stalled broker shows
//!   up in the percentiles instead of slowing the load down (coordinated
//!   omission corrected).
//!
//! Records whose (intended) send time falls in the warm-up are sent but not
//! counted.
//!
//! With `--transactional-commit-ms N` the producer is transactional
//! (`transactional.id`, KIP-98): it runs `init_transactions` at the start
//! (in the warm-up), keeps one transaction open and commits it every N ms
//! (checked before each send, so a commit is at most one send late), and
//! commits the last one before the drain. The sender blocks during a
//! commit (librdkafka flushes the transaction's records first, without
//! waiting for `linger.ms`, while the polling thread below serves their
//! delivery reports; see `commit_transaction` for why the commit bypasses
//! rdkafka's wrapper, which polled in 100 ms slices); records
//! due meanwhile go out late and, in open loop, their latency counts from
//! their intended time. A record is acknowledged when its produce is, not
//! when its transaction commits (the end-to-end latency of `e2e` shows the
//! latter). Commit durations are reported as `commit_latency_us`; a
//! transaction that has to be aborted fails the run.
//!
//! Threads: the calling thread paces and sends and never polls; librdkafka's
//! delivery reports are served by the `ThreadedProducer`'s polling thread,
//! which blocks on the delivery queue and is woken as soon as librdkafka
//! queues a report, so an acknowledgement's time is taken when librdkafka
//! delivered it, not when the sender got round to polling. (A sender that
//! polls between sends, `poll(0)`, serves one delivery event per call: once
//! reports queue up faster than that, for example after the catch-up burst
//! of the warm-up, they stay queued and every later acknowledgement is
//! timed late by the whole backlog.) The delivery state's lock is taken
//! only by the polling thread until the run ends.

use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use rdkafka::bindings as rdsys;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::args::{Acks, CommonArgs, DRAIN_SECONDS_MAX, TRANSACTIONAL_COMMIT_MS_MAX};
use crate::client::{ensure_topic, ErrorProbe};
use crate::control::{stop_requested, Progress};
use crate::payload::{filler, new_run_id, Header};
use crate::report::{
    emit, new_latency_histogram, record_latency_us, LatencySummary, Outputs, Summary,
};

// The delivery opaque carries a u64 nanosecond timestamp in a usize.
const _: () = assert!(usize::BITS == 64, "sluice-bench needs a 64-bit target");

/// Longest pause of the open-loop pacer before it checks the clock again.
const PACER_SLEEP_MAX: Duration = Duration::from_millis(1);
/// How late the kernel may end one of the sender's sleeps (Linux's default
/// timer slack is 50 us, which would make every paced send that late).
const PACER_TIMER_SLACK_NS: u64 = 1_000;
/// Pause of the sender while it waits for acknowledgements to make room (the
/// in-flight bound or librdkafka's queue is full).
const ACK_WAIT: Duration = Duration::from_micros(100);
/// Pause between two checks of the drain.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(1);
/// Drain time left after Ctrl-C.
const DRAIN_AFTER_STOP: Duration = Duration::from_secs(5);
const RATE_PER_SEC_MAX: f64 = 50_000_000.0;
/// Time `init_transactions` may take (finding the coordinator included).
const INIT_TRANSACTIONS_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before a retriable commit failure is retried.
const COMMIT_RETRY_PAUSE: Duration = Duration::from_millis(10);

#[derive(clap::Args, Debug, Clone)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Fixed send rate in records/s (open loop); omit for maximum throughput.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Most records sent but not yet acknowledged at any time.
    #[arg(long = "in-flight-max", value_name = "RECORDS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub in_flight_records_max: u64,
    /// Transactional producer committing every MS milliseconds.
    #[arg(long, value_name = "MS", value_parser = parse_commit_ms)]
    pub transactional_commit_ms: Option<u64>,
}

/// A commit interval in milliseconds, within 1..=`TRANSACTIONAL_COMMIT_MS_MAX`.
pub fn parse_commit_ms(text: &str) -> anyhow::Result<u64> {
    let ms: u64 = text
        .parse()
        .with_context(|| format!("not a whole number of milliseconds: {text:?}"))?;
    if !(1..=TRANSACTIONAL_COMMIT_MS_MAX).contains(&ms) {
        bail!("the commit interval must be within 1..={TRANSACTIONAL_COMMIT_MS_MAX} ms, got {ms}");
    }
    Ok(ms)
}

/// The commit interval of `--transactional-commit-ms`, checked against the
/// client settings (a transactional producer is idempotent, which needs
/// acks=all).
pub fn transactional_commit(
    common: &CommonArgs,
    commit_ms: Option<u64>,
) -> anyhow::Result<Option<Duration>> {
    let Some(ms) = commit_ms else {
        return Ok(None);
    };
    if common.client.acks != Acks::All {
        bail!(
            "--transactional-commit-ms needs --acks all (a transactional producer is idempotent), got {:?}",
            common.client.acks
        );
    }
    Ok(Some(Duration::from_millis(ms)))
}

pub fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let rate: f64 = text
        .parse()
        .with_context(|| format!("not a number: {text:?}"))?;
    if !rate.is_finite() || rate <= 0.0 || rate > RATE_PER_SEC_MAX {
        bail!("rate must be within (0, {RATE_PER_SEC_MAX}] records/s, got {rate}");
    }
    Ok(rate)
}

/// What one producer run does; shared with `e2e` and `consume --fill`.
#[derive(Clone)]
pub struct ProducerPlan {
    pub topic: String,
    pub record_bytes: usize,
    pub rate_per_sec: Option<f64>,
    pub in_flight_records_max: u64,
    pub warmup: Duration,
    pub measure: Duration,
    pub records_max: u64,
    pub run_id: u32,
    /// Time zero of the run: intended send times count from here.
    pub origin: Instant,
    /// A counter shown on the progress line (e.g. records received).
    pub progress_extra: Option<(&'static str, Arc<AtomicU64>)>,
    /// Transactional producer committing at this interval; `None` for a
    /// plain producer.
    pub transactional_commit: Option<Duration>,
}

impl ProducerPlan {
    pub fn new(
        common: &CommonArgs,
        rate_per_sec: Option<f64>,
        in_flight_records_max: u64,
    ) -> ProducerPlan {
        ProducerPlan {
            topic: common.topic.clone(),
            record_bytes: common.record_bytes as usize,
            rate_per_sec,
            in_flight_records_max,
            warmup: common.warmup(),
            measure: common.measure(),
            records_max: common.records_max,
            run_id: new_run_id(),
            origin: Instant::now(),
            progress_extra: None,
            transactional_commit: None,
        }
    }

    /// The `transactional.id` of a transactional run: unique per run, so
    /// runs never fence each other (`-X transactional.id=...` overrides it).
    pub fn transactional_id(&self) -> String {
        format!("sluice-bench-{}", self.run_id)
    }

    /// Words for the report header describing the producer's mode.
    pub fn describe_transactions(&self) -> String {
        match self.transactional_commit {
            Some(every) => format!("transactional, commit every {} ms; ", every.as_millis()),
            None => String::new(),
        }
    }

    fn send_end_ns(&self) -> u64 {
        duration_ns(self.warmup + self.measure)
    }

    fn hard_deadline(&self) -> Instant {
        self.origin + self.warmup + self.measure + Duration::from_secs(DRAIN_SECONDS_MAX)
    }

    /// Intended send time of record `seq` in open loop.
    fn intended_ns(&self, seq: u64, rate_per_sec: f64) -> u64 {
        (seq as f64 * 1e9 / rate_per_sec) as u64
    }
}

/// What a producer run measured.
pub struct ProduceOutcome {
    pub sent: u64,
    pub acked_total: u64,
    pub acked_measured: u64,
    pub failed: u64,
    pub first_failure: Option<String>,
    /// Records neither acknowledged nor failed when the deadline passed.
    pub unfinished: u64,
    pub queue_full_waits: u64,
    pub send_error: Option<String>,
    /// Client-level errors librdkafka reported (connection loss, ...).
    pub client_errors: u64,
    pub latency: Histogram<u64>,
    /// How late measured records were handed to librdkafka after their
    /// intended send time (open loop: the pacer's own delay, part of
    /// `latency`; closed loop: zero).
    pub send_lag: Histogram<u64>,
    pub seconds: f64,
    pub interrupted: bool,
    /// What the transactions did (transactional runs only).
    pub transactions: Option<TxnOutcome>,
}

/// The transactions of a transactional run.
pub struct TxnOutcome {
    pub committed: u64,
    pub aborted: u64,
    /// Records sent in transactions that were aborted.
    pub records_aborted: u64,
    pub first_error: Option<String>,
    /// Duration of each successful `commit_transaction` (us), which flushes
    /// the transaction's outstanding records first.
    pub commit_latency: Histogram<u64>,
}

#[derive(Default)]
struct DeliveryState {
    acked_total: u64,
    acked_measured: u64,
    failed: u64,
    first_failure: Option<String>,
    last_measured_ack_ns: u64,
}

/// Producer context: turns delivery reports into counts and latencies.
struct DeliveryProbe {
    origin: Instant,
    measure_from_ns: u64,
    completed: AtomicU64,
    state: Mutex<(DeliveryState, Histogram<u64>)>,
    errors: ErrorProbe,
}

impl DeliveryProbe {
    fn lock(&self) -> MutexGuard<'_, (DeliveryState, Histogram<u64>)> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn on_ack(&self, intended_ns: u64) {
        let now_ns = elapsed_ns(self.origin);
        let mut guard = self.lock();
        let (state, hist) = &mut *guard;
        state.acked_total += 1;
        if intended_ns >= self.measure_from_ns {
            state.acked_measured += 1;
            state.last_measured_ack_ns = state.last_measured_ack_ns.max(now_ns);
            record_latency_us(hist, now_ns.saturating_sub(intended_ns) / 1_000);
        }
    }

    fn on_failure(&self, error: &KafkaError) {
        let mut guard = self.lock();
        guard.0.failed += 1;
        if guard.0.first_failure.is_none() {
            guard.0.first_failure = Some(error.to_string());
        }
    }
}

impl ClientContext for DeliveryProbe {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.on_error(&error, reason);
    }
}

impl ProducerContext for DeliveryProbe {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, intended_ns: usize) {
        match result {
            Ok(_) => self.on_ack(intended_ns as u64),
            Err((error, _)) => self.on_failure(error),
        }
        self.completed.fetch_add(1, Ordering::Release);
    }
}

type BenchProducer = ThreadedProducer<DeliveryProbe>;

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let every = transactional_commit(common, args.transactional_commit_ms)?;
    ensure_topic(common)?;
    let mut plan = ProducerPlan::new(common, args.rate, args.in_flight_records_max);
    plan.transactional_commit = every;
    let outcome = run_producer(common, &plan)?;
    let mode = match args.rate {
        Some(rate) => format!("open loop, rate={rate}/s"),
        None => format!("closed loop, in_flight_max={}", args.in_flight_records_max),
    };
    let mut summary = Summary::new(
        "produce",
        format!(
            "{mode}; {}{}",
            plan.describe_transactions(),
            common.describe()
        ),
    );
    fill_summary(&mut summary, &outcome, &plan);
    emit(&summary, &Outputs::of(common))?;
    check_delivered(&outcome)
}

/// Puts a producer outcome into a summary as the main figures.
pub fn fill_summary(summary: &mut Summary, outcome: &ProduceOutcome, plan: &ProducerPlan) {
    summary.seconds = outcome.seconds;
    summary.messages = outcome.acked_measured;
    summary.bytes = outcome.acked_measured * plan.record_bytes as u64;
    summary.latency = Some(outcome.latency.clone());
    summary.interrupted = outcome.interrupted;
    put_producer_counts(summary, outcome, plan);
}

pub fn put_producer_counts(summary: &mut Summary, outcome: &ProduceOutcome, plan: &ProducerPlan) {
    summary.put("warmup_seconds", plan.warmup.as_secs_f64());
    summary.put("records_sent", outcome.sent);
    summary.put("messages_total_acked", outcome.acked_total);
    summary.put("records_failed", outcome.failed);
    summary.put("records_unfinished", outcome.unfinished);
    summary.put("queue_full_waits", outcome.queue_full_waits);
    summary.put("client_errors", outcome.client_errors);
    if let Some(rate) = plan.rate_per_sec {
        summary.put("rate_target", rate);
        summary.put(
            "send_lag_us",
            serde_json::json!(LatencySummary::of(&outcome.send_lag)),
        );
    }
    if let Some(failure) = &outcome.first_failure {
        summary.put("first_failure", failure.clone());
    }
    if let Some(error) = &outcome.send_error {
        summary.put("send_error", error.clone());
    }
    if let (Some(every), Some(txn)) = (plan.transactional_commit, &outcome.transactions) {
        summary.put(
            "transactional_commit_ms",
            u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
        );
        summary.put("transactions_committed", txn.committed);
        summary.put("transactions_aborted", txn.aborted);
        summary.put("records_aborted", txn.records_aborted);
        summary.put(
            "commit_latency_us",
            serde_json::json!(LatencySummary::of(&txn.commit_latency)),
        );
        if let Some(error) = &txn.first_error {
            summary.put("first_transaction_error", error.clone());
        }
    }
}

/// Fails when any record was not acknowledged.
pub fn check_delivered(outcome: &ProduceOutcome) -> anyhow::Result<()> {
    if let Some(error) = &outcome.send_error {
        bail!("sending stopped early: {error}");
    }
    if outcome.failed > 0 || outcome.unfinished > 0 {
        bail!(
            "{} records failed and {} were unacknowledged at the deadline (first failure: {})",
            outcome.failed,
            outcome.unfinished,
            outcome.first_failure.as_deref().unwrap_or("none")
        );
    }
    if let Some(txn) = outcome.transactions.as_ref().filter(|t| t.aborted > 0) {
        bail!(
            "{} transactions ({} records) were aborted (first error: {})",
            txn.aborted,
            txn.records_aborted,
            txn.first_error.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

/// Runs the producer: warm-up, measured window, then drain.
pub fn run_producer(common: &CommonArgs, plan: &ProducerPlan) -> anyhow::Result<ProduceOutcome> {
    assert!(plan.record_bytes > 0 && plan.in_flight_records_max > 0);
    let probe = DeliveryProbe {
        origin: plan.origin,
        measure_from_ns: duration_ns(plan.warmup),
        completed: AtomicU64::new(0),
        state: Mutex::new((DeliveryState::default(), new_latency_histogram())),
        errors: ErrorProbe::default(),
    };
    let config = match plan.transactional_commit {
        Some(every) => common.transactional_producer_config(&plan.transactional_id(), every),
        None => common.producer_config(),
    };
    let producer: BenchProducer = config
        .create_with_context(probe)
        .context("creating producer")?;
    let mut txn = match plan.transactional_commit {
        Some(every) => Some(Transactions::start(&producer, every)?),
        None => None,
    };
    let mut progress = Progress::new("produce", plan.origin);
    let mut sent = send_loop(&producer, plan, &mut progress, txn.as_mut());
    if let Some(txn) = txn.as_mut().filter(|_| sent.send_error.is_none()) {
        // The last transaction commits before the drain (its commit
        // flushes the records still in flight).
        let deadline = if sent.interrupted {
            Instant::now() + DRAIN_AFTER_STOP
        } else {
            plan.hard_deadline()
        };
        if let Err(error) = txn.end(&producer, sent.count, deadline, false) {
            eprintln!("the last transaction did not commit: {error}");
            sent.send_error = Some(error);
        }
    }
    let send_window_ns = sent.stopped_at_ns.saturating_sub(duration_ns(plan.warmup));
    let unfinished = drain(&producer, plan, sent.count, &mut progress);
    let mut outcome = collect(&producer, sent, unfinished, send_window_ns);
    outcome.transactions = txn.map(Transactions::outcome);
    assert!(outcome.acked_total + outcome.failed + outcome.unfinished == outcome.sent);
    // Dropping the producer stops and joins its polling thread.
    Ok(outcome)
}

struct Sent {
    count: u64,
    queue_full_waits: u64,
    stopped_at_ns: u64,
    interrupted: bool,
    /// Why sending stopped early, when librdkafka refused a record.
    send_error: Option<String>,
    /// Send time minus intended time of measured records (us).
    lag: Histogram<u64>,
}

/// The open transaction of a transactional run and what the earlier ones
/// did.
struct Transactions {
    every: Duration,
    began_at: Instant,
    /// Records sent before the open transaction began.
    began_at_count: u64,
    committed: u64,
    aborted: u64,
    records_aborted: u64,
    first_error: Option<String>,
    commit_latency: Histogram<u64>,
}

/// Why a `commit_transaction` failed, and what librdkafka says may follow.
#[derive(Debug, Clone)]
struct CommitFailure {
    /// librdkafka's error name and text.
    message: String,
    /// The commit may be called again (its flush or request timed out).
    retriable: bool,
    /// The transaction must be aborted.
    abortable: bool,
}

impl std::fmt::Display for CommitFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Commits the open transaction with librdkafka's own
/// `rd_kafka_commit_transaction`, not rdkafka's `Producer::commit_transaction`.
///
/// rdkafka 0.39 flushes before it hands over to librdkafka, and its flush
/// calls `rd_kafka_flush(rk, 0)` and, while records are outstanding,
/// `BaseProducer::poll(100 ms)` on the calling thread, which returns only
/// when the whole 100 ms are up, however soon the delivery reports arrive.
/// With records always in flight every commit took that 100 ms (plus the
/// commit itself), and the sender polled delivery reports meanwhile.
/// librdkafka's commit flushes by itself: with delivery reports as events
/// (rdkafka's mode) its `rd_kafka_flush` makes the broker threads send at
/// once, ignoring `linger.ms`, and waits on a condition variable until the
/// `ThreadedProducer`'s polling thread has served the last delivery report,
/// so the commit takes what the flush and the EndTxn round trip take, and
/// delivery reports stay with the polling thread.
fn commit_transaction(producer: &BenchProducer, timeout: Duration) -> Result<(), CommitFailure> {
    let timeout_ms = libc::c_int::try_from(timeout.as_millis())
        .unwrap_or(libc::c_int::MAX)
        .max(1);
    // SAFETY: the client pointer is valid while `producer` is borrowed; the
    // call blocks until the commit is over or the timeout passed.
    let error =
        unsafe { rdsys::rd_kafka_commit_transaction(producer.client().native_ptr(), timeout_ms) };
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: `error` is a valid error object that this function owns; it is
    // read, then destroyed once, and not used afterwards.
    let failure = unsafe {
        let text = |ptr: *const libc::c_char| {
            if ptr.is_null() {
                String::new()
            } else {
                CStr::from_ptr(ptr).to_string_lossy().into_owned()
            }
        };
        let failure = CommitFailure {
            message: format!(
                "{}: {}",
                text(rdsys::rd_kafka_error_name(error)),
                text(rdsys::rd_kafka_error_string(error))
            ),
            retriable: rdsys::rd_kafka_error_is_retriable(error) != 0,
            abortable: rdsys::rd_kafka_error_txn_requires_abort(error) != 0,
        };
        rdsys::rd_kafka_error_destroy(error);
        failure
    };
    Err(failure)
}

impl Transactions {
    /// Registers the transactional id with its coordinator and begins the
    /// first transaction.
    fn start(producer: &BenchProducer, every: Duration) -> anyhow::Result<Transactions> {
        producer
            .init_transactions(INIT_TRANSACTIONS_TIMEOUT)
            .context("init_transactions")?;
        producer.begin_transaction().context("begin_transaction")?;
        Ok(Transactions {
            every,
            began_at: Instant::now(),
            began_at_count: 0,
            committed: 0,
            aborted: 0,
            records_aborted: 0,
            first_error: None,
            commit_latency: new_latency_histogram(),
        })
    }

    fn due(&self) -> bool {
        self.began_at.elapsed() >= self.every
    }

    fn note(&mut self, error: &dyn std::fmt::Display) {
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    /// Commits the open transaction (`sent` records were sent so far),
    /// retrying a retriable failure until `deadline` and aborting an
    /// abortable one, then begins the next one when `next`. An error means
    /// the producer cannot go on (fatal, fenced, or out of time).
    fn end(
        &mut self,
        producer: &BenchProducer,
        sent: u64,
        deadline: Instant,
        next: bool,
    ) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let Err(error) = commit_transaction(producer, left) else {
                self.committed += 1;
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                record_latency_us(&mut self.commit_latency, us);
                break;
            };
            self.note(&error);
            let (retriable, abortable) = (error.retriable, error.abortable);
            if retriable && Instant::now() < deadline {
                std::thread::sleep(COMMIT_RETRY_PAUSE);
                continue;
            }
            if !abortable {
                return Err(format!("commit_transaction: {error}"));
            }
            eprintln!("aborting a transaction: {error}");
            producer
                .abort_transaction(left)
                .map_err(|e| format!("abort_transaction after {error}: {e}"))?;
            self.aborted += 1;
            self.records_aborted += sent - self.began_at_count;
            break;
        }
        if next {
            producer
                .begin_transaction()
                .map_err(|e| format!("begin_transaction: {e}"))?;
        }
        self.began_at = Instant::now();
        self.began_at_count = sent;
        Ok(())
    }

    fn outcome(self) -> TxnOutcome {
        TxnOutcome {
            committed: self.committed,
            aborted: self.aborted,
            records_aborted: self.records_aborted,
            first_error: self.first_error,
            commit_latency: self.commit_latency,
        }
    }
}

fn send_loop(
    producer: &BenchProducer,
    plan: &ProducerPlan,
    progress: &mut Progress,
    mut txn: Option<&mut Transactions>,
) -> Sent {
    set_timer_slack_ns(PACER_TIMER_SLACK_NS);
    let mut payload = filler(plan.record_bytes, u64::from(plan.run_id));
    let mut sent = Sent {
        count: 0,
        queue_full_waits: 0,
        stopped_at_ns: 0,
        interrupted: false,
        send_error: None,
        lag: new_latency_histogram(),
    };
    let (end_ns, measure_from_ns) = (plan.send_end_ns(), duration_ns(plan.warmup));
    let deadline = plan.hard_deadline();
    while sent.count < plan.records_max {
        if stop_requested() {
            sent.interrupted = true;
            break;
        }
        if let Some(txn) = txn.as_deref_mut().filter(|t| t.due()) {
            if let Err(error) = txn.end(producer, sent.count, deadline, true) {
                eprintln!("sending stopped: {error}");
                sent.send_error = Some(error);
                break;
            }
        }
        let now_ns = elapsed_ns(plan.origin);
        let completed = producer.context().completed.load(Ordering::Acquire);
        progress.tick(completed, || progress_detail(plan, sent.count, completed));
        if sent.count - completed >= plan.in_flight_records_max {
            if Instant::now() >= deadline {
                sent.send_error = Some(format!(
                    "{} records unacknowledged until the deadline",
                    sent.count - completed
                ));
                break;
            }
            std::thread::sleep(ACK_WAIT);
            continue;
        }
        let intended_ns = match next_send(plan, sent.count, now_ns, end_ns) {
            NextSend::Now(ns) => ns,
            NextSend::Wait(wait) => {
                std::thread::sleep(wait.min(PACER_SLEEP_MAX));
                continue;
            }
            NextSend::Done => break,
        };
        Header {
            run_id: plan.run_id,
            seq: sent.count,
            sent_ns: intended_ns,
        }
        .write(&mut payload);
        match send_one(
            producer,
            plan,
            &payload,
            intended_ns,
            &mut sent.queue_full_waits,
        ) {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => {
                eprintln!("sending stopped: {error}");
                sent.send_error = Some(error);
                break;
            }
        }
        sent.count += 1;
        if intended_ns >= measure_from_ns {
            let lag_ns = elapsed_ns(plan.origin).saturating_sub(intended_ns);
            record_latency_us(&mut sent.lag, lag_ns / 1_000);
        }
    }
    sent.stopped_at_ns = elapsed_ns(plan.origin).min(end_ns);
    sent
}

/// Asks the kernel to end this thread's sleeps within `slack_ns` of their
/// deadline, so the pacer sends on time. Best effort: on failure the
/// pacer is only later, which `send_lag_us` shows.
fn set_timer_slack_ns(slack_ns: u64) {
    assert!(slack_ns > 0, "a timer slack of 0 restores the default");
    // SAFETY: PR_SET_TIMERSLACK reads one integer argument and changes only
    // the calling thread's timer slack.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack_ns as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "note: could not lower the pacer's timer slack: {}",
            std::io::Error::last_os_error()
        );
    }
}

enum NextSend {
    Now(u64),
    Wait(Duration),
    Done,
}

/// When the next record goes out: now (closed loop), at its slot (open
/// loop), or never (the window is over).
fn next_send(plan: &ProducerPlan, seq: u64, now_ns: u64, end_ns: u64) -> NextSend {
    match plan.rate_per_sec {
        None if now_ns >= end_ns => NextSend::Done,
        None => NextSend::Now(now_ns),
        Some(rate) => {
            let due_ns = plan.intended_ns(seq, rate);
            if due_ns >= end_ns {
                NextSend::Done
            } else if due_ns > now_ns {
                NextSend::Wait(Duration::from_nanos(due_ns - now_ns))
            } else {
                NextSend::Now(due_ns)
            }
        }
    }
}

/// Enqueues one record, waiting while librdkafka's queue is full. Returns
/// false when the run must stop (deadline or Ctrl-C) before it fit, and the
/// reason when librdkafka refuses the record.
fn send_one(
    producer: &BenchProducer,
    plan: &ProducerPlan,
    payload: &[u8],
    intended_ns: u64,
    queue_full_waits: &mut u64,
) -> Result<bool, String> {
    let deadline = plan.hard_deadline();
    loop {
        let record =
            BaseRecord::<(), [u8], usize>::with_opaque_to(&plan.topic, intended_ns as usize)
                .payload(payload);
        match producer.send(record) {
            Ok(()) => return Ok(true),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                *queue_full_waits += 1;
                std::thread::sleep(ACK_WAIT);
                if stop_requested() || Instant::now() >= deadline {
                    return Ok(false);
                }
            }
            Err((error, _)) => {
                let fatal = producer.client().fatal_error();
                let reason =
                    fatal.map_or(String::new(), |(code, text)| format!(" ({code}: {text})"));
                return Err(format!("send to {}: {error}{reason}", plan.topic));
            }
        }
    }
}

/// Waits until every sent record is acknowledged or failed, or the deadline
/// passes; returns how many are still outstanding.
fn drain(producer: &BenchProducer, plan: &ProducerPlan, sent: u64, progress: &mut Progress) -> u64 {
    let mut deadline = plan.hard_deadline();
    loop {
        let completed = producer.context().completed.load(Ordering::Acquire);
        if completed >= sent || Instant::now() >= deadline {
            return sent.saturating_sub(completed);
        }
        if stop_requested() {
            deadline = deadline.min(Instant::now() + DRAIN_AFTER_STOP);
        }
        progress.tick(completed, || {
            format!("completed, draining {} outstanding", sent - completed)
        });
        std::thread::sleep(DRAIN_CHECK_INTERVAL);
    }
}

fn collect(
    producer: &BenchProducer,
    sent: Sent,
    unfinished: u64,
    send_window_ns: u64,
) -> ProduceOutcome {
    let probe = producer.context();
    let guard = probe.lock();
    let (state, hist) = &*guard;
    let measure_from_ns = probe.measure_from_ns;
    let ack_window_ns = state.last_measured_ack_ns.saturating_sub(measure_from_ns);
    let window_ns = if state.acked_measured > 0 {
        send_window_ns.max(ack_window_ns)
    } else {
        send_window_ns
    };
    ProduceOutcome {
        sent: sent.count,
        acked_total: state.acked_total,
        acked_measured: state.acked_measured,
        failed: state.failed,
        first_failure: state.first_failure.clone(),
        unfinished,
        queue_full_waits: sent.queue_full_waits,
        send_error: sent.send_error,
        client_errors: probe.errors.count(),
        latency: hist.clone(),
        send_lag: sent.lag,
        seconds: window_ns as f64 / 1e9,
        interrupted: sent.interrupted,
        transactions: None,
    }
}

fn progress_detail(plan: &ProducerPlan, sent: u64, completed: u64) -> String {
    let extra = match &plan.progress_extra {
        Some((label, counter)) => format!(" {label}={}", counter.load(Ordering::Relaxed)),
        None => String::new(),
    };
    format!(
        "completed (acked or failed), sent={sent} in_flight={}{extra}",
        sent - completed
    )
}

pub fn elapsed_ns(origin: Instant) -> u64 {
    duration_ns(origin.elapsed())
}

pub fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }

    fn plan(rate: Option<f64>) -> ProducerPlan {
        let cli = Cli::parse_from(["t", "--seconds", "1", "--warmup-seconds", "0"]);
        ProducerPlan::new(&cli.args.common, rate, 10)
    }

    #[test]
    fn open_loop_slots_follow_the_rate() {
        let p = plan(Some(1000.0));
        let end_ns = p.send_end_ns();
        assert!(matches!(next_send(&p, 0, 0, end_ns), NextSend::Now(0)));
        assert!(matches!(
            next_send(&p, 5, 5_000_000, end_ns),
            NextSend::Now(5_000_000)
        ));
        // Behind schedule: sent now, latency still counted from the slot.
        assert!(matches!(
            next_send(&p, 5, 9_000_000, end_ns),
            NextSend::Now(5_000_000)
        ));
        match next_send(&p, 5, 4_000_000, end_ns) {
            NextSend::Wait(w) => assert_eq!(w, Duration::from_millis(1)),
            _ => panic!("expected a wait"),
        }
        assert!(matches!(next_send(&p, 1000, 0, end_ns), NextSend::Done));
    }

    #[test]
    fn closed_loop_sends_until_the_window_ends() {
        let p = plan(None);
        let end_ns = p.send_end_ns();
        assert!(matches!(next_send(&p, 7, 123, end_ns), NextSend::Now(123)));
        assert!(matches!(next_send(&p, 7, end_ns, end_ns), NextSend::Done));
    }

    #[test]
    fn transactional_commit_is_validated() {
        assert!(parse_commit_ms("0").is_err());
        assert!(parse_commit_ms("1.5").is_err());
        assert!(parse_commit_ms("300001").is_err());
        assert_eq!(parse_commit_ms("100").expect("valid"), 100);
        let cli = Cli::parse_from(["t", "--transactional-commit-ms", "250"]);
        let every = transactional_commit(&cli.args.common, cli.args.transactional_commit_ms)
            .expect("acks all is the default");
        assert_eq!(every, Some(Duration::from_millis(250)));
        let cli = Cli::parse_from(["t", "--transactional-commit-ms", "250", "--acks", "1"]);
        assert!(transactional_commit(&cli.args.common, cli.args.transactional_commit_ms).is_err());
        let cli = Cli::parse_from(["t"]);
        assert_eq!(
            transactional_commit(&cli.args.common, cli.args.transactional_commit_ms)
                .expect("no option"),
            None
        );
    }

    #[test]
    fn rate_is_validated() {
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("inf").is_err());
        assert_eq!(parse_rate("2500").expect("valid"), 2500.0);
    }
}
