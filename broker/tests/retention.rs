//! Retention against the real binary with small WAL segments (4 MiB):
//! `retention.ms` and `retention.bytes` move log starts past whole entries
//! of sealed segments, WAL segment files are removed once nothing live is
//! left in them, and what recovery needs from them (log starts, committed
//! group offsets) is carried forward: after a SIGKILL and a restart the
//! watermarks and committed offsets are unchanged, the long-retention topic
//! is whole and the next produce continues at the high watermark.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const RECORD_BYTES: usize = 10 * 1024;
const WAIT: Duration = Duration::from_secs(90);

/// Sum of a metric family's samples over every shard (0 when absent).
fn metric(b: &Broker, name: &str) -> u64 {
    common::metric_sum(b, name).unwrap_or(0)
}

fn wal_files(b: &Broker) -> usize {
    let dir = b.data_dir.join("shard-0").join("wal");
    std::fs::read_dir(&dir)
        .expect("wal dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .count()
}

fn create_with(b: &Broker, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = client_config(b).create().expect("admin");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results =
        futures::executor::block_on(admin.create_topics([&topic], &opts)).expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }
}

fn fill(b: &Broker, topic: &str, partitions: i32, bytes: usize) -> Vec<(i32, i64)> {
    let p = producer(b, &[("acks", "all")]);
    let value = "r".repeat(RECORD_BYTES);
    let records: Vec<_> = (0..bytes / RECORD_BYTES)
        .map(|i| (i as i32 % partitions, format!("k{i}"), value.clone(), None))
        .collect();
    produce_all(&p, topic, &records)
}

fn watermarks(c: &BaseConsumer, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
        })
        .collect()
}

fn group_consumer(b: &Broker) -> BaseConsumer {
    let mut c = client_config(b);
    c.set("group.id", "retention-group")
        .set("enable.auto.commit", "false");
    c.create().expect("consumer")
}

fn committed(b: &Broker) -> i64 {
    let c = group_consumer(b);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("long", 0);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    match got.find_partition("long", 0).expect("partition").offset() {
        Offset::Offset(o) => o,
        other => panic!("no committed offset: {other:?}"),
    }
}

/// Waits (bounded) until every partition of `topic` moved its log start
/// (`whole`: up to the high watermark) and at least `removed` segments were
/// removed.
fn wait_expired(
    b: &Broker,
    c: &BaseConsumer,
    topic: &str,
    partitions: i32,
    whole: bool,
    removed: u64,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let w = watermarks(c, topic, partitions);
        let expired = w.iter().all(|(lo, hi)| *lo > 0 && (lo == hi || !whole));
        let gone = metric(b, "sluice_shard_wal_segments_removed_total");
        if expired && gone >= removed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not act on {topic}: {w:?}, segments removed {gone}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn retention_removes_segments_and_a_restart_keeps_offsets() {
    let mut b = Broker::start_with(1, &["--wal-segment-bytes", "4MiB"]);
    create_with(&b, "long", 1, &[]);
    // A committed offset first: its group record lies in the first segment.
    {
        let c = group_consumer(&b);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("long", 0, Offset::Offset(42))
            .expect("tpl");
        c.commit(&tpl, CommitMode::Sync).expect("commit");
    }
    assert_eq!(committed(&b), 42);

    create_with(&b, "short", 2, &[("retention.ms", "1500")]);
    fill(&b, "short", 2, 20 << 20);
    let c = consumer(&b);
    // The log start records of `short` land after its data ...
    wait_expired(&b, &c, "short", 2, false, 1);
    // ... and the segments holding them go too once more expires.
    create_with(&b, "short2", 1, &[("retention.ms", "1500")]);
    fill(&b, "short2", 1, 12 << 20);
    create_with(
        &b,
        "sized",
        1,
        &[("retention.ms", "-1"), ("retention.bytes", "1048576")],
    );
    let sized = fill(&b, "sized", 1, 8 << 20);
    let long = fill(&b, "long", 1, 6 << 20);
    wait_expired(&b, &c, "short2", 1, true, 8);
    wait_expired(&b, &c, "short", 2, true, 8);
    // retention.bytes: the log start moved, and at least the limit is kept.
    let (lo, hi) = watermarks(&c, "sized", 1)[0];
    assert_eq!(hi, sized.len() as i64);
    assert!(lo > 0, "retention.bytes moved nothing");
    assert!(
        (hi - lo) as usize * RECORD_BYTES >= 1 << 20,
        "kept only {} records",
        hi - lo
    );
    // 46 MB went into 4 MiB segments; about 7 MB is live.
    let files_after = wal_files(&b);
    assert!(files_after <= 4, "{files_after} segment files left");
    assert_eq!(
        metric(&b, "sluice_shard_wal_segments") as usize,
        files_after,
        "/metrics and the data dir disagree"
    );
    assert!(metric(&b, "sluice_shard_retention_log_start_moves_total") >= 3);
    assert!(b.log_text().contains("retention removed WAL segments"));
    // Fetching below the log start: nothing from the expired topic.
    assert!(consume_all(&b, "short", 2, 1, Duration::from_secs(2)).is_empty());

    let before: Vec<_> = ["short", "short2", "sized", "long"]
        .iter()
        .map(|t| watermarks(&c, t, if *t == "short" { 2 } else { 1 }))
        .collect();
    drop(c);
    b.kill();
    b.restart();

    let c = consumer(&b);
    let after: Vec<_> = ["short", "short2", "sized", "long"]
        .iter()
        .map(|t| watermarks(&c, t, if *t == "short" { 2 } else { 1 }))
        .collect();
    assert_eq!(before, after, "watermarks changed across the restart");
    assert_eq!(committed(&b), 42, "committed offset lost");
    let whole = consume_all(&b, "long", 1, long.len(), WAIT);
    assert_eq!(whole.len(), long.len(), "long-retention topic not whole");
    assert!(whole.iter().enumerate().all(|(i, r)| r.offset == i as i64));
    let next = fill(&b, "short", 2, 2 * RECORD_BYTES);
    assert_eq!(
        next,
        vec![(0, before[0][0].1), (1, before[0][1].1)],
        "produce after restart did not continue at the high watermark"
    );
}

/// Kafka deletes an expired active segment (rolling a new one first): the
/// entries in a quiet shard's active WAL segment expire too, with no roll,
/// and so does the next produce after everything had expired.
#[test]
fn entries_in_the_active_segment_expire_without_a_roll() {
    let b = Broker::start_with(1, &[]);
    create_with(&b, "quiet", 1, &[("retention.ms", "1000")]);
    let first = fill(&b, "quiet", 1, 4 * RECORD_BYTES);
    assert_eq!(first.last(), Some(&(0, 3)));
    let c = consumer(&b);
    wait_expired(&b, &c, "quiet", 1, true, 0);
    let next = fill(&b, "quiet", 1, 2 * RECORD_BYTES);
    assert_eq!(next, vec![(0, 4), (0, 5)]);
    wait_expired(&b, &c, "quiet", 1, true, 0);
    assert_eq!(watermarks(&c, "quiet", 1), vec![(6, 6)]);
    assert_eq!(metric(&b, "sluice_shard_wal_segments_removed_total"), 0);
    assert!(consume_all(&b, "quiet", 1, 1, Duration::from_secs(2)).is_empty());
}
