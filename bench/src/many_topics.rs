//! `many-topics`: metadata scale. Creates `--topics` topics of
//! `--partitions` partitions (one CreateTopics request per topic, timed),
//! writes one record to every partition whose payload names its topic and
//! partition, reads every partition back from the beginning and verifies
//! each record. Any partition without its record fails the run, naming it.
//!
//! Producing and reading go through one fresh librdkafka client per slice
//! of `--client-topics-max` topics, slice after slice. A single librdkafka
//! client walks every partition it knows on each produce, timer and fetch
//! decision, so one client for 100,000 partitions measures the client, not
//! the broker (its records time out before they are even sent).
//!
//! With `--broker-pid`, the broker's RSS and CPU are sampled before, during
//! and after, and its idle CPU is measured over `--idle-seconds` at the end.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::json;

use crate::args::{parse_seconds, CommonArgs};
use crate::client::{create_topic, new_admin, new_consumer, Created, ErrorProbe};
use crate::control::{sleep_interruptible, stop_requested, Progress};
use crate::payload::new_run_id;
use crate::procstat::{sample, ProcSample, Sampler};
use crate::report::{emit, new_latency_histogram, record_latency_us, Outputs, Summary};

/// Missing or failed names listed in the report (the rest are counted).
const NAMES_LISTED_MAX: usize = 50;
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(clap::Args, Debug, Clone)]
pub struct ManyTopicsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Number of topics, named `<--topic>-<run>-<index>`.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub topics: u32,
    /// Broker process id: sample its RSS and CPU from /proc.
    #[arg(long)]
    pub broker_pid: Option<i32>,
    /// Time over which the broker's idle CPU is measured at the end.
    #[arg(long, default_value_t = 20.0, value_parser = parse_seconds)]
    pub idle_seconds: f64,
    /// Upper bound on each phase (create, produce, verify).
    #[arg(long, default_value_t = 300.0, value_parser = parse_seconds)]
    pub phase_seconds_max: f64,
    /// Topics one librdkafka client produces to or reads from; the run uses
    /// one fresh client per slice of this many topics, one after another.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub client_topics_max: u32,
}

/// The topics of one run; `index_of` maps a name back to its index.
struct Layout {
    names: Vec<String>,
    index_of: HashMap<String, u32>,
    partitions: i32,
    run_id: u32,
}

impl Layout {
    fn new(prefix: &str, topics: u32, partitions: i32) -> Layout {
        let run_id = new_run_id();
        let names: Vec<String> = (0..topics)
            .map(|i| format!("{prefix}-{run_id:08x}-{i:05}"))
            .collect();
        let index_of = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        Layout {
            names,
            index_of,
            partitions,
            run_id,
        }
    }

    fn slots(&self) -> usize {
        self.names.len() * self.partitions as usize
    }

    fn slot(&self, topic: &str, partition: i32) -> Option<usize> {
        let index = *self.index_of.get(topic)? as usize;
        (0..self.partitions)
            .contains(&partition)
            .then(|| index * self.partitions as usize + partition as usize)
    }

    fn slot_name(&self, slot: usize) -> String {
        let per_topic = self.partitions as usize;
        format!("{}[{}]", self.names[slot / per_topic], slot % per_topic)
    }

    fn payload(&self, topic: &str, partition: i32) -> String {
        format!(
            "sluice-bench many-topics run={:08x} topic={topic} partition={partition}",
            self.run_id
        )
    }

    fn run_prefix(&self) -> String {
        format!("sluice-bench many-topics run={:08x} ", self.run_id)
    }

    /// The topic names in slices of at most `size`.
    fn slices(&self, size: u32) -> std::slice::Chunks<'_, String> {
        self.names.chunks(size.max(1) as usize)
    }
}

pub fn run(args: ManyTopicsArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let layout = Layout::new(&common.topic, args.topics, common.partitions);
    let phase_max = Duration::from_secs_f64(args.phase_seconds_max);
    let mut watch = args.broker_pid.map(BrokerWatch::start).transpose()?;
    let origin = Instant::now();
    let created = create_all(common, &layout, phase_max)?;
    if let Some(w) = watch.as_mut() {
        w.phase("create");
    }
    let produced = produce_all(common, &layout, args.client_topics_max, phase_max)?;
    if let Some(w) = watch.as_mut() {
        w.phase("produce");
    }
    let verified = verify_all(common, &layout, args.client_topics_max, phase_max)?;
    if let Some(w) = watch.as_mut() {
        w.phase("verify");
    }
    let mut summary = Summary::new("many-topics", describe(&args, &layout));
    summary.seconds = origin.elapsed().as_secs_f64();
    fill_summary(&mut summary, &layout, &created, &produced, &verified);
    summary.put("client_topics_max", args.client_topics_max);
    if let Some(watch) = watch {
        watch.finish(Duration::from_secs_f64(args.idle_seconds), &mut summary);
    }
    emit(&summary, &Outputs::of(common))?;
    check(&layout, &created, &verified)
}

fn describe(args: &ManyTopicsArgs, layout: &Layout) -> String {
    format!(
        "topics={} partitions={} client_topics_max={} prefix={}-{:08x} bootstrap={}",
        args.topics,
        layout.partitions,
        args.client_topics_max,
        args.common.topic,
        layout.run_id,
        args.common.bootstrap
    )
}

struct Creation {
    latency: Histogram<u64>,
    new: u64,
    existed: u64,
    failed: Vec<String>,
    seconds: f64,
    interrupted: bool,
}

/// One CreateTopics request per topic, one after the other, each timed.
fn create_all(
    common: &CommonArgs,
    layout: &Layout,
    phase_max: Duration,
) -> anyhow::Result<Creation> {
    let admin = new_admin(common)?;
    let start = Instant::now();
    let mut progress = Progress::new("create-topics", start);
    let mut creation = Creation {
        latency: new_latency_histogram(),
        new: 0,
        existed: 0,
        failed: Vec::new(),
        seconds: 0.0,
        interrupted: false,
    };
    for name in &layout.names {
        if stop_requested() || start.elapsed() >= phase_max {
            creation.interrupted = true;
            break;
        }
        let sent_at = Instant::now();
        let result = create_topic(&admin, name, layout.partitions, common.replication_factor);
        record_latency_us(&mut creation.latency, sent_at.elapsed().as_micros() as u64);
        match result {
            Ok(Created::New) => creation.new += 1,
            Ok(Created::AlreadyExisted) => creation.existed += 1,
            Err(error) => creation.failed.push(format!("{error:#}")),
        }
        progress.tick(creation.latency.len(), || {
            format!("topics created of {}", layout.names.len())
        });
    }
    creation.seconds = start.elapsed().as_secs_f64();
    Ok(creation)
}

#[derive(Default)]
struct Deliveries {
    acked: u64,
    failed: u64,
    failures: Vec<String>,
}

impl Deliveries {
    fn merge(&mut self, other: Deliveries) {
        self.acked += other.acked;
        self.failed += other.failed;
        let room = NAMES_LISTED_MAX.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
    }
}

/// Producer context that counts deliveries and keeps the first failures.
struct DeliveryCount {
    state: Mutex<Deliveries>,
    errors: ErrorProbe,
}

impl ClientContext for DeliveryCount {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.on_error(&error, reason);
    }
}

impl ProducerContext for DeliveryCount {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => state.acked += 1,
            Err((error, message)) => {
                state.failed += 1;
                if state.failures.len() < NAMES_LISTED_MAX {
                    state.failures.push(format!(
                        "{}[{}]: {error}",
                        message.topic(),
                        message.partition()
                    ));
                }
            }
        }
    }
}

struct Production {
    sent: u64,
    deliveries: Deliveries,
    seconds: f64,
}

/// One record to every partition: one producer per slice of topics, each
/// flushed (bounded by the phase deadline) before the next slice starts.
fn produce_all(
    common: &CommonArgs,
    layout: &Layout,
    client_topics_max: u32,
    phase_max: Duration,
) -> anyhow::Result<Production> {
    let start = Instant::now();
    let deadline = start + phase_max;
    let mut sent = 0u64;
    let mut deliveries = Deliveries::default();
    let mut progress = Progress::new("produce", start);
    for slice in layout.slices(client_topics_max) {
        if stop_requested() || Instant::now() >= deadline {
            break;
        }
        let (slice_sent, slice_deliveries) =
            produce_slice(common, layout, slice, deadline, &mut progress, sent)?;
        sent += slice_sent;
        deliveries.merge(slice_deliveries);
    }
    Ok(Production {
        sent,
        deliveries,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Sends one record to every partition of `topics` through a fresh
/// producer and flushes it; the count sent and the deliveries seen.
fn produce_slice(
    common: &CommonArgs,
    layout: &Layout,
    topics: &[String],
    deadline: Instant,
    progress: &mut Progress,
    sent_before: u64,
) -> anyhow::Result<(u64, Deliveries)> {
    let context = DeliveryCount {
        state: Mutex::new(Deliveries::default()),
        errors: ErrorProbe::default(),
    };
    let producer: BaseProducer<DeliveryCount> = common
        .producer_config()
        .create_with_context(context)
        .context("creating producer")?;
    let mut sent = 0u64;
    'topics: for name in topics {
        for partition in 0..layout.partitions {
            let payload = layout.payload(name, partition);
            if !send_waiting(&producer, name, partition, payload.as_bytes(), deadline) {
                break 'topics;
            }
            sent += 1;
            progress.tick(sent_before + sent, || "records sent".into());
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if let Err(error) = producer.flush(left) {
        eprintln!("flush: {error} (records still outstanding are reported as not acknowledged)");
    }
    let deliveries = std::mem::take(
        &mut *producer
            .context()
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    Ok((sent, deliveries))
}

/// Enqueues one record, polling while librdkafka's queue is full; false when
/// the deadline or Ctrl-C came first.
fn send_waiting(
    producer: &BaseProducer<DeliveryCount>,
    topic: &str,
    partition: i32,
    payload: &[u8],
    deadline: Instant,
) -> bool {
    loop {
        if stop_requested() || Instant::now() >= deadline {
            return false;
        }
        let record = BaseRecord::<(), [u8], ()>::to(topic)
            .partition(partition)
            .payload(payload);
        match producer.send(record) {
            Ok(()) => {
                producer.poll(Duration::ZERO);
                return true;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(10));
            }
            Err((error, _)) => {
                eprintln!("send to {topic}[{partition}]: {error}");
                return true;
            }
        }
    }
}

struct Verification {
    found: Vec<bool>,
    verified: u64,
    mismatched: Vec<String>,
    bytes: u64,
    seconds: f64,
    interrupted: bool,
}

/// Reads every partition from offset 0 (`auto.offset.reset=earliest`
/// covers a log start above it) until each holds this run's record, the
/// phase deadline, or Ctrl-C: one fresh consumer per slice of topics.
fn verify_all(
    common: &CommonArgs,
    layout: &Layout,
    client_topics_max: u32,
    phase_max: Duration,
) -> anyhow::Result<Verification> {
    let start = Instant::now();
    let deadline = start + phase_max;
    let mut v = Verification {
        found: vec![false; layout.slots()],
        verified: 0,
        mismatched: Vec::new(),
        bytes: 0,
        seconds: 0.0,
        interrupted: false,
    };
    let mut progress = Progress::new("verify", start);
    for slice in layout.slices(client_topics_max) {
        if stop_requested() || Instant::now() >= deadline {
            break;
        }
        verify_slice(common, layout, slice, deadline, &mut v, &mut progress)?;
    }
    v.interrupted = stop_requested();
    v.seconds = start.elapsed().as_secs_f64();
    Ok(v)
}

/// Reads the partitions of `topics` until every one of them was verified
/// or the deadline passed.
fn verify_slice(
    common: &CommonArgs,
    layout: &Layout,
    topics: &[String],
    deadline: Instant,
    v: &mut Verification,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let consumer = new_consumer(
        common,
        &format!("sluice-bench-many-topics-{:08x}", layout.run_id),
    )?;
    let mut list = TopicPartitionList::with_capacity(topics.len() * layout.partitions as usize);
    for name in topics {
        for partition in 0..layout.partitions {
            list.add_partition_offset(name, partition, Offset::Offset(0))
                .context("building assignment")?;
        }
    }
    consumer.assign(&list).context("assign")?;
    let expected = v.verified + list.count() as u64;
    while v.verified < expected {
        if stop_requested() || Instant::now() >= deadline {
            break;
        }
        if let Some(Ok(message)) = consumer.poll(POLL_TIMEOUT) {
            let payload = message.payload().unwrap_or(&[]);
            v.check(layout, message.topic(), message.partition(), payload);
        }
        progress.tick(v.verified, || {
            format!("records verified of {}", layout.slots())
        });
    }
    Ok(())
}

impl Verification {
    fn check(&mut self, layout: &Layout, topic: &str, partition: i32, payload: &[u8]) {
        let Some(slot) = layout.slot(topic, partition) else {
            return;
        };
        if payload == layout.payload(topic, partition).as_bytes() {
            if !self.found[slot] {
                self.found[slot] = true;
                self.verified += 1;
                self.bytes += payload.len() as u64;
            }
        } else if payload.starts_with(layout.run_prefix().as_bytes())
            && self.mismatched.len() < NAMES_LISTED_MAX
        {
            let text = String::from_utf8_lossy(payload);
            self.mismatched
                .push(format!("{topic}[{partition}] holds {text:?}"));
        }
    }

    fn missing(&self, layout: &Layout) -> (usize, Vec<String>) {
        let missing: Vec<usize> = (0..self.found.len())
            .filter(|&slot| !self.found[slot])
            .collect();
        let names = missing
            .iter()
            .take(NAMES_LISTED_MAX)
            .map(|&slot| layout.slot_name(slot))
            .collect();
        (missing.len(), names)
    }
}

fn fill_summary(
    summary: &mut Summary,
    layout: &Layout,
    c: &Creation,
    p: &Production,
    v: &Verification,
) {
    let (missing, missing_names) = v.missing(layout);
    summary.messages = v.verified;
    summary.bytes = v.bytes;
    summary.latency = Some(c.latency.clone());
    summary.interrupted = c.interrupted || v.interrupted;
    summary.put("topics", layout.names.len() as u64);
    summary.put("partitions_per_topic", layout.partitions);
    summary.put("partitions_total", layout.slots() as u64);
    summary.put("latency_is", "CreateTopics request, one topic each");
    summary.put("create_seconds", c.seconds);
    summary.put("topics_created", c.new);
    summary.put("topics_existed", c.existed);
    summary.put("create_failures", json!(c.failed));
    summary.put("produce_seconds", p.seconds);
    summary.put("records_sent", p.sent);
    summary.put("records_acked", p.deliveries.acked);
    summary.put("records_failed", p.deliveries.failed);
    summary.put("produce_failures", json!(p.deliveries.failures));
    summary.put("verify_seconds", v.seconds);
    summary.put("records_verified", v.verified);
    summary.put("records_missing", missing as u64);
    summary.put("missing", json!(missing_names));
    summary.put("mismatched", json!(v.mismatched));
    summary.put("verified", missing == 0 && v.mismatched.is_empty());
}

fn check(layout: &Layout, c: &Creation, v: &Verification) -> anyhow::Result<()> {
    let (missing, names) = v.missing(layout);
    if missing == 0 && v.mismatched.is_empty() && c.failed.is_empty() {
        return Ok(());
    }
    for failure in &c.failed {
        eprintln!("CREATE FAILED: {failure}");
    }
    for mismatch in &v.mismatched {
        eprintln!("WRONG RECORD: {mismatch}");
    }
    let more = missing.saturating_sub(names.len());
    eprintln!(
        "MISSING {missing} of {} records: {}{}",
        layout.slots(),
        names.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    );
    bail!(
        "many-topics verification failed: {missing} missing, {} wrong, {} topics not created",
        v.mismatched.len(),
        c.failed.len()
    )
}

/// The broker's memory and CPU across the phases.
struct BrokerWatch {
    pid: i32,
    before: ProcSample,
    phases: Vec<(&'static str, ProcSample)>,
    sampler: Sampler,
}

impl BrokerWatch {
    fn start(pid: i32) -> anyhow::Result<BrokerWatch> {
        let before = sample(pid)?;
        let sampler = Sampler::start(pid)?;
        Ok(BrokerWatch {
            pid,
            before,
            phases: Vec::new(),
            sampler,
        })
    }

    fn phase(&mut self, name: &'static str) {
        match sample(self.pid) {
            Ok(s) => self.phases.push((name, s)),
            Err(error) => eprintln!("broker sample after {name}: {error:#}"),
        }
    }

    /// Measures idle CPU, stops the sampler and puts every figure into the
    /// summary.
    fn finish(self, idle: Duration, summary: &mut Summary) {
        let sampled = self.sampler.finish();
        summary.put("broker_rss_kb_before", self.before.rss_kb);
        summary.put("broker_rss_kb_max_sampled", sampled.rss_kb_max);
        summary.put("broker_rss_samples", sampled.samples);
        let mut previous = self.before;
        for (name, s) in &self.phases {
            summary.put(
                &format!("broker_cpu_seconds_{name}"),
                s.cpu_seconds_since(&previous),
            );
            summary.put(&format!("broker_rss_kb_after_{name}"), s.rss_kb);
            previous = *s;
        }
        summary.put("broker_hwm_kb", previous.hwm_kb);
        eprintln!("measuring broker idle CPU over {:.0}s", idle.as_secs_f64());
        let idle_start = sample(self.pid);
        sleep_interruptible(idle);
        match (idle_start, sample(self.pid)) {
            (Ok(start), Ok(end)) => {
                summary.put(
                    "broker_idle_seconds",
                    end.at.duration_since(start.at).as_secs_f64(),
                );
                summary.put("broker_idle_cpu_percent", end.cpu_percent_since(&start));
                summary.put("broker_rss_kb_after_idle", end.rss_kb);
                summary.put("broker_hwm_kb", end.hwm_kb);
            }
            (Err(error), _) | (_, Err(error)) => eprintln!("broker idle sample: {error:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_back_to_names() {
        let layout = Layout::new("mt", 3, 2);
        assert_eq!(layout.slots(), 6);
        let name = layout.names[2].clone();
        let slot = layout.slot(&name, 1).expect("known");
        assert_eq!(slot, 5);
        assert_eq!(layout.slot_name(slot), format!("{name}[1]"));
        assert_eq!(layout.slot(&name, 2), None);
        assert_eq!(layout.slot("other", 0), None);
    }

    #[test]
    fn slices_cover_every_topic_once() {
        let layout = Layout::new("mt", 7, 1);
        let slices: Vec<usize> = layout.slices(3).map(|s| s.len()).collect();
        assert_eq!(slices, vec![3, 3, 1]);
        let joined: Vec<String> = layout.slices(3).flatten().cloned().collect();
        assert_eq!(joined, layout.names);
        assert_eq!(layout.slices(100).count(), 1);
    }

    #[test]
    fn verification_accepts_only_the_right_payload() {
        let layout = Layout::new("mt", 2, 2);
        let mut v = Verification {
            found: vec![false; 4],
            verified: 0,
            mismatched: Vec::new(),
            bytes: 0,
            seconds: 0.0,
            interrupted: false,
        };
        let (a, b) = (layout.names[0].clone(), layout.names[1].clone());
        v.check(&layout, &a, 0, layout.payload(&a, 0).as_bytes());
        v.check(&layout, &a, 0, layout.payload(&a, 0).as_bytes());
        v.check(&layout, &a, 1, layout.payload(&b, 1).as_bytes());
        v.check(&layout, &b, 1, b"some other run");
        assert_eq!(v.verified, 1);
        assert_eq!(v.mismatched.len(), 1);
        let (missing, names) = v.missing(&layout);
        assert_eq!(missing, 3);
        assert_eq!(names[0], format!("{a}[1]"));
    }
}
