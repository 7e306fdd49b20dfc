//! librdkafka plumbing shared by the scenarios: a client context that
//! reports client errors at most once per second, topic creation through
//! the AdminClient, and partition / watermark look-ups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::args::CommonArgs;

/// Time one metadata, watermark or admin request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Prints client-level errors (broker down, authentication, ...) on stderr,
/// at most one line per second, and counts them all.
#[derive(Default)]
pub struct ErrorProbe {
    errors: AtomicU64,
    printed_at_ms: AtomicU64,
    origin: OnceInstant,
}

#[derive(Default)]
struct OnceInstant(std::sync::OnceLock<Instant>);

impl OnceInstant {
    fn elapsed_ms(&self) -> u64 {
        let origin = self.0.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl ErrorProbe {
    pub fn on_error(&self, error: &KafkaError, reason: &str) {
        const PRINT_INTERVAL_MS: u64 = 1_000;
        let count = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms = self.origin.elapsed_ms() + PRINT_INTERVAL_MS;
        let last_ms = self.printed_at_ms.load(Ordering::Relaxed);
        if now_ms >= last_ms + PRINT_INTERVAL_MS
            && self
                .printed_at_ms
                .compare_exchange(last_ms, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            eprintln!("client error ({count} so far): {error}: {reason}");
        }
    }

    pub fn count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Context for consumers and admin clients.
#[derive(Default)]
pub struct BenchContext {
    pub errors: ErrorProbe,
}

impl ClientContext for BenchContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.on_error(&error, reason);
    }
}

impl ConsumerContext for BenchContext {}

pub type BenchConsumer = BaseConsumer<BenchContext>;

pub fn new_consumer(common: &CommonArgs, group_id: &str) -> anyhow::Result<BenchConsumer> {
    common
        .consumer_config(group_id)
        .create_with_context(BenchContext::default())
        .context("creating consumer")
}

/// A consumer of `isolation.level=read_committed`.
pub fn new_read_committed_consumer(
    common: &CommonArgs,
    group_id: &str,
) -> anyhow::Result<BenchConsumer> {
    common
        .read_committed_consumer_config(group_id)
        .create_with_context(BenchContext::default())
        .context("creating read_committed consumer")
}

pub fn new_admin(common: &CommonArgs) -> anyhow::Result<AdminClient<BenchContext>> {
    common
        .admin_config()
        .create_with_context(BenchContext::default())
        .context("creating admin client")
}

/// Outcome of one CreateTopics request for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New,
    AlreadyExisted,
}

/// Sends one CreateTopics request for `name`; an existing topic is not an
/// error.
pub fn create_topic(
    admin: &AdminClient<BenchContext>,
    name: &str,
    partitions: i32,
    replication_factor: i32,
) -> anyhow::Result<Created> {
    assert!(partitions > 0 && replication_factor > 0);
    let topic = NewTopic::new(
        name,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
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

/// Creates `common.topic` when missing and waits until its metadata lists
/// every partition; returns the partition ids.
pub fn ensure_topic(common: &CommonArgs) -> anyhow::Result<Vec<i32>> {
    let admin = new_admin(common)?;
    let created = create_topic(
        &admin,
        &common.topic,
        common.partitions,
        common.replication_factor,
    )
    .with_context(|| {
        format!(
            "making sure topic {} exists on {}",
            common.topic, common.bootstrap
        )
    })?;
    let consumer = new_consumer(common, "sluice-bench-metadata")?;
    let ids = wait_for_partitions(&consumer, &common.topic, REQUEST_TIMEOUT * 3)?;
    if created == Created::AlreadyExisted && ids.len() != common.partitions as usize {
        eprintln!(
            "note: topic {} already existed with {} partitions (asked for {})",
            common.topic,
            ids.len(),
            common.partitions
        );
    }
    Ok(ids)
}

/// Polls metadata until `topic` has partitions, each with a leader, or the
/// timeout passes.
pub fn wait_for_partitions(
    consumer: &BenchConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match partitions_with_leaders(consumer, topic) {
            Ok(ids) if !ids.is_empty() => return Ok(ids),
            Ok(_) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline || crate::control::stop_requested() {
            return Err(last_error.unwrap_or_else(|| {
                anyhow!("topic {topic} has no partitions with leaders after {timeout:?}")
            }));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn partitions_with_leaders(consumer: &BenchConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .with_context(|| format!("metadata for {topic}"))?;
    let Some(entry) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(Vec::new());
    };
    if entry.error().is_some() || entry.partitions().iter().any(|p| p.leader() < 0) {
        return Ok(Vec::new());
    }
    let mut ids: Vec<i32> = entry.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Low and high watermark of one partition.
#[derive(Debug, Clone, Copy)]
pub struct Watermarks {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

pub fn watermarks(
    consumer: &BenchConsumer,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<Vec<Watermarks>> {
    partitions
        .iter()
        .map(|&partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                .with_context(|| format!("watermarks of {topic}[{partition}]"))?;
            Ok(Watermarks {
                partition,
                low,
                high,
            })
        })
        .collect()
}
