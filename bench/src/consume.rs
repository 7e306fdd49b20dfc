//! `consume`: reads a topic from the beginning as fast as the client can,
//! up to the end offsets seen when the run starts.
//!
//! The consumer is assigned every partition explicitly (no group
//! rebalance), starting at each partition's low watermark. Records read
//! during the warm-up are not counted, unless the whole read finished inside
//! the warm-up, in which case every record counts (and the report says so).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::args::CommonArgs;
use crate::client::{ensure_topic, new_consumer, watermarks, BenchConsumer, Watermarks};
use crate::control::{stop_requested, Progress};
use crate::payload::new_run_id;
use crate::produce::{check_delivered, duration_ns, elapsed_ns, run_producer, ProducerPlan};
use crate::report::{emit, Outputs, Summary};

/// Upper bound on the time `--fill-records` may take.
const FILL_SECONDS_MAX: u64 = 600;
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(clap::Args, Debug, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// First produce this many records (as fast as possible) into the topic.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub fill_records: Option<u64>,
}

pub fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let partitions = ensure_topic(common)?;
    if let Some(records) = args.fill_records {
        fill(common, records)?;
    }
    let consumer = new_consumer(common, &format!("sluice-bench-consume-{}", new_run_id()))?;
    let marks = watermarks(&consumer, &common.topic, &partitions)?;
    assign_from_low(&consumer, &common.topic, &marks)?;
    let read = read_until_end(&consumer, common, &marks);
    let settings = format!(
        "topic={} bootstrap={} partitions read={}",
        common.topic,
        common.bootstrap,
        marks.len()
    );
    let mut summary = Summary::new("consume", settings);
    fill_summary(&mut summary, &read, common);
    emit(&summary, &Outputs::of(common))
}

fn fill(common: &CommonArgs, records: u64) -> anyhow::Result<()> {
    eprintln!("filling {} with {records} records", common.topic);
    let mut plan = ProducerPlan::new(common, None, 100_000);
    plan.records_max = records;
    plan.warmup = Duration::ZERO;
    plan.measure = Duration::from_secs(FILL_SECONDS_MAX);
    let outcome = run_producer(common, &plan)?;
    check_delivered(&outcome)
}

fn assign_from_low(
    consumer: &BenchConsumer,
    topic: &str,
    marks: &[Watermarks],
) -> anyhow::Result<()> {
    let mut list = TopicPartitionList::with_capacity(marks.len());
    for mark in marks {
        list.add_partition_offset(topic, mark.partition, Offset::Offset(mark.low))
            .with_context(|| format!("assigning {topic}[{}]", mark.partition))?;
    }
    consumer.assign(&list).context("assign")
}

/// Counts of one read.
#[derive(Debug, Default)]
struct Read {
    total: u64,
    measured: u64,
    total_bytes: u64,
    measured_bytes: u64,
    expected: u64,
    errors: u64,
    first_error: Option<String>,
    first_measured_ns: Option<u64>,
    last_ns: u64,
    measure_from_ns: u64,
    interrupted: bool,
}

/// Next offset to read and end offset, per partition (same order as the
/// sorted watermarks).
struct Positions {
    partitions: Vec<i32>,
    next: Vec<i64>,
    high: Vec<i64>,
    remaining: u64,
}

impl Positions {
    fn new(marks: &[Watermarks]) -> Positions {
        let mut sorted = marks.to_vec();
        sorted.sort_by_key(|m| m.partition);
        let remaining = sorted.iter().map(|m| (m.high - m.low).max(0) as u64).sum();
        Positions {
            partitions: sorted.iter().map(|m| m.partition).collect(),
            next: sorted.iter().map(|m| m.low).collect(),
            high: sorted.iter().map(|m| m.high).collect(),
            remaining,
        }
    }

    /// Accounts a record; returns whether it is new and below the end offset.
    fn advance(&mut self, partition: i32, offset: i64) -> bool {
        let Ok(i) = self.partitions.binary_search(&partition) else {
            return false;
        };
        if offset < self.next[i] || offset >= self.high[i] {
            return false;
        }
        // Offsets may skip (compaction, transaction markers): count what remains.
        let skipped = (offset - self.next[i]) as u64;
        self.remaining = self.remaining.saturating_sub(skipped + 1);
        self.next[i] = offset + 1;
        true
    }
}

fn read_until_end(consumer: &BenchConsumer, common: &CommonArgs, marks: &[Watermarks]) -> Read {
    let origin = Instant::now();
    let deadline = origin + common.warmup() + common.measure();
    let mut positions = Positions::new(marks);
    let mut read = Read {
        expected: positions.remaining,
        measure_from_ns: duration_ns(common.warmup()),
        ..Read::default()
    };
    let mut progress = Progress::new("consume", origin);
    while positions.remaining > 0 && read.total < common.records_max {
        if stop_requested() || Instant::now() >= deadline {
            read.interrupted = stop_requested();
            break;
        }
        match consumer.poll(POLL_TIMEOUT) {
            Some(Ok(message)) if positions.advance(message.partition(), message.offset()) => {
                let bytes = message.payload().map_or(0, <[u8]>::len) as u64;
                read.count(elapsed_ns(origin), bytes);
            }
            Some(Err(error)) => read.on_error(&error),
            Some(Ok(_)) | None => {}
        }
        progress.tick(read.total, || {
            format!("records read, {} to go", positions.remaining)
        });
    }
    read
}

impl Read {
    fn count(&mut self, now_ns: u64, bytes: u64) {
        self.total += 1;
        self.total_bytes += bytes;
        self.last_ns = now_ns;
        if now_ns >= self.measure_from_ns {
            self.measured += 1;
            self.measured_bytes += bytes;
            self.first_measured_ns.get_or_insert(now_ns);
        }
    }

    fn on_error(&mut self, error: &rdkafka::error::KafkaError) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }
}

fn fill_summary(summary: &mut Summary, read: &Read, common: &CommonArgs) {
    let finished_in_warmup = read.measured == 0 && read.total > 0 && read.total == read.expected;
    if finished_in_warmup {
        summary.messages = read.total;
        summary.bytes = read.total_bytes;
        summary.seconds = read.last_ns as f64 / 1e9;
        summary.put(
            "note",
            "read finished inside the warm-up; all records counted",
        );
    } else {
        summary.messages = read.measured;
        summary.bytes = read.measured_bytes;
        summary.seconds = read.last_ns.saturating_sub(read.measure_from_ns) as f64 / 1e9;
    }
    summary.interrupted = read.interrupted;
    summary.put("warmup_seconds", common.warmup_seconds);
    summary.put("messages_total_read", read.total);
    summary.put("messages_expected", read.expected);
    summary.put("consume_errors", read.errors);
    if let Some(error) = &read.first_error {
        summary.put("first_error", error.clone());
    }
    if read.expected == 0 {
        eprintln!(
            "note: topic {} is empty; use --fill-records N to write records first",
            common.topic
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks() -> Vec<Watermarks> {
        vec![
            Watermarks {
                partition: 1,
                low: 10,
                high: 12,
            },
            Watermarks {
                partition: 0,
                low: 0,
                high: 3,
            },
        ]
    }

    #[test]
    fn positions_count_each_record_once() {
        let mut p = Positions::new(&marks());
        assert_eq!(p.remaining, 5);
        assert!(p.advance(0, 0));
        assert!(!p.advance(0, 0), "duplicate");
        assert!(p.advance(1, 10));
        assert!(!p.advance(1, 12), "past the end offset");
        assert!(!p.advance(7, 0), "unknown partition");
        assert!(p.advance(0, 2), "offset gap skips one");
        assert_eq!(p.remaining, 1);
        assert!(p.advance(1, 11));
        assert_eq!(p.remaining, 0);
    }
}
