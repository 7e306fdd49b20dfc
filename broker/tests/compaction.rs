//! Log compaction against the real binary, with librdkafka and kafka-python:
//! a topic with `cleanup.policy=compact` keeps the latest record of each key
//! at the offset it was acknowledged at (consumers see gaps, watermarks do
//! not move), tombstones go once `delete.retention.ms` has passed, keyless
//! records are refused with INVALID_RECORD, and a SIGKILL during compaction
//! loses and duplicates nothing.
//!
//! Compaction never touches the active part of a shard's log (entries in the
//! active WAL segment and each partition's last entry), so every test starts
//! one shard with 4 MiB WAL segments, writes the compacted records, then one
//! record of a fresh key alone (the partition's last entry), then filler to
//! another topic of the same shard, which seals the segments holding them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, TimestampType};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// The smallest WAL segment the broker accepts, so little filler seals one.
const SEGMENT_FLAGS: [&str; 2] = ["--wal-segment-bytes", "4MiB"];
/// How long compaction may take to show an effect.
const WAIT: Duration = Duration::from_secs(60);
/// Sleep between two looks at a condition.
const POLL: Duration = Duration::from_millis(200);
/// One read of a topic from its beginning to its end.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const FILLER_TOPIC: &str = "filler";
const FILLER_VALUE_BYTES: usize = 100 * 1024;
/// More than two 4 MiB segments: what was written before lies in sealed
/// segments afterwards.
const FILLER_BYTES: usize = 10 << 20;
/// Filler that rolls at least one more segment, to wake compaction again.
const NUDGE_BYTES: usize = 5 << 20;
const NUDGE_EVERY: Duration = Duration::from_secs(3);
const NUDGES_MAX: u32 = 10;
const INVALID_RECORD: i16 = 87;

// ---------------------------------------------------------------- records

/// A record's key and value (`None`: a tombstone).
#[derive(Clone, PartialEq, Eq)]
struct Rec {
    key: String,
    value: Option<Vec<u8>>,
}

impl std::fmt::Debug for Rec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            None => write!(f, "{}=null", self.key),
            Some(v) => {
                let head = String::from_utf8_lossy(&v[..v.len().min(24)]).into_owned();
                write!(f, "{}={head:?}.. ({} bytes)", self.key, v.len())
            }
        }
    }
}

/// Records by `(partition, offset)`.
type Log = BTreeMap<(i32, i64), Rec>;

/// A record to send: partition, key, value (`None`: a tombstone).
type ToSend = (i32, String, Option<Vec<u8>>);

/// A value of `bytes` bytes that names its key and version.
fn value(key: &str, version: usize, bytes: usize) -> Vec<u8> {
    let mut v = format!("{key}:v{version}:").into_bytes();
    assert!(v.len() <= bytes, "value too small for its label");
    let fill = b'a' + (version % 26) as u8;
    v.resize(bytes, fill);
    v
}

fn key(i: usize) -> String {
    format!("key-{i:02}")
}

/// Sends `records` (all in flight at once, librdkafka queues them) and
/// returns each acknowledged record at its `(partition, offset)`.
fn produce(p: &FutureProducer, topic: &str, records: &[ToSend]) -> Log {
    let futures: Vec<_> = records
        .iter()
        .map(|(partition, key, value)| {
            let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
                .partition(*partition)
                .key(key.as_str());
            if let Some(v) = value {
                r = r.payload(v.as_slice());
            }
            p.send_result(r).map_err(|(e, _)| e).expect("enqueue")
        })
        .collect();
    let mut log = Log::new();
    for (f, (_, key, value)) in futures.into_iter().zip(records) {
        let delivery = futures::executor::block_on(f).expect("delivery future canceled");
        let d = delivery.unwrap_or_else(|(e, _)| panic!("delivery to {topic} failed: {e}"));
        let rec = Rec {
            key: key.clone(),
            value: value.clone(),
        };
        assert!(
            log.insert((d.partition, d.offset), rec).is_none(),
            "two records acknowledged at {topic}/{}@{}",
            d.partition,
            d.offset
        );
    }
    assert_eq!(log.len(), records.len());
    log
}

/// One record of key `key` to each partition, each alone in its produce
/// request (after everything before it was acknowledged): the partition's
/// last entry, which compaction never touches.
fn produce_last(p: &FutureProducer, topic: &str, partitions: i32, key: &str) -> Log {
    let records: Vec<ToSend> = (0..partitions)
        .map(|partition| (partition, key.to_string(), Some(value(key, 0, 64))))
        .collect();
    produce(p, topic, &records)
}

/// `bytes` of 100 KiB records to the (non-compacted) filler topic: seals
/// the WAL segments written before.
fn fill(b: &Broker, bytes: usize) {
    let p = producer(b, &[("acks", "all")]);
    let records: Vec<ToSend> = (0..bytes.div_ceil(FILLER_VALUE_BYTES))
        .map(|i| (0, format!("f{i}"), Some(value("f", i, FILLER_VALUE_BYTES))))
        .collect();
    produce(&p, FILLER_TOPIC, &records);
}

/// What compaction leaves of `log`: per partition and key, the record at
/// the highest offset.
fn latest_per_key(log: &Log) -> Log {
    let mut latest: BTreeMap<(i32, &str), i64> = BTreeMap::new();
    for ((partition, offset), rec) in log {
        let o = latest
            .entry((*partition, rec.key.as_str()))
            .or_insert(*offset);
        *o = (*o).max(*offset);
    }
    latest
        .into_iter()
        .map(|((partition, _), offset)| ((partition, offset), log[&(partition, offset)].clone()))
        .collect()
}

fn without_tombstones(log: &Log) -> Log {
    log.iter()
        .filter(|(_, r)| r.value.is_some())
        .map(|(po, r)| (*po, r.clone()))
        .collect()
}

/// Per partition, the offset after the last acknowledged record.
fn log_ends(log: &Log, partitions: i32) -> Vec<i64> {
    (0..partitions)
        .map(|p| {
            log.range((p, i64::MIN)..=(p, i64::MAX))
                .next_back()
                .map_or(0, |((_, o), _)| o + 1)
        })
        .collect()
}

// ---------------------------------------------------------------- broker

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

/// Sum of a metric family's samples over every shard (0 when absent).
fn metric(b: &Broker, name: &str) -> u64 {
    metric_sum(b, name).unwrap_or(0)
}

fn passes(b: &Broker) -> u64 {
    metric(b, "sluice_compaction_passes_total")
}

fn bytes_written(b: &Broker) -> u64 {
    metric(b, "sluice_compaction_bytes_written_total")
}

fn watermarks(b: &Broker, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let c = consumer(b);
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
        })
        .collect()
}

// ---------------------------------------------------------------- reading

/// A consumer that reports the end of each partition.
fn eof_consumer(b: &Broker) -> BaseConsumer {
    let mut c = client_config(b);
    // assign() needs a group id; offsets are explicit and never committed.
    c.set("group.id", "compaction-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    c.create().expect("consumer")
}

/// Reads every partition of `topic` from the beginning to its end, in the
/// order received; `Err` on a consumer error or when the end was not
/// reached within `READ_TIMEOUT`.
fn read_all(b: &Broker, topic: &str, partitions: i32) -> Result<Vec<(i32, i64, Rec)>, String> {
    let c = eof_consumer(b);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    let mut out = Vec::new();
    while at_end.len() < partitions as usize {
        if Instant::now() > deadline {
            return Err(format!(
                "{topic}: only partitions {at_end:?} reached their end within {READ_TIMEOUT:?} ({} records read)",
                out.len()
            ));
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push((
                m.partition(),
                m.offset(),
                Rec {
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value: m.payload().map(<[u8]>::to_vec),
                },
            )),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(format!("{topic}: consumer error: {e}")),
            None => {}
        }
    }
    Ok(out)
}

/// Checks what holds at any time, compaction or not: per partition the
/// offsets read strictly increase, and each record read is the one
/// acknowledged at its offset. Returns the records by offset.
fn check_read(read: &[(i32, i64, Rec)], produced: &Log) -> Log {
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut log = Log::new();
    for (partition, offset, rec) in read {
        if let Some(prev) = last.insert(*partition, *offset) {
            assert!(
                *offset > prev,
                "partition {partition}: offset {offset} read after {prev}"
            );
        }
        assert_eq!(
            Some(rec),
            produced.get(&(*partition, *offset)),
            "partition {partition} offset {offset}: read a record that was not acknowledged there"
        );
        log.insert((*partition, *offset), rec.clone());
    }
    log
}

/// Up to 10 entries of `a` missing from `b`.
fn missing(a: &Log, b: &Log) -> Vec<String> {
    a.iter()
        .filter(|(po, r)| b.get(po) != Some(r))
        .take(10)
        .map(|((p, o), r)| format!("{p}@{o} {r:?}"))
        .collect()
}

/// Reads `topic` from the beginning (every `POLL`, for up to `WAIT`) until
/// it holds exactly `expected`; every read is checked with `check_read`.
/// `nudge`, when given, runs every `NUDGE_EVERY` (at most `NUDGES_MAX`
/// times) while the topic is not there yet.
fn wait_for_log(
    b: &Broker,
    topic: &str,
    partitions: i32,
    produced: &Log,
    expected: &Log,
    mut nudge: Option<&mut dyn FnMut()>,
) {
    let began = Instant::now();
    let deadline = began + WAIT;
    let mut last_nudge = Instant::now();
    let mut nudges = 0;
    loop {
        let state = match read_all(b, topic, partitions) {
            Ok(read) => {
                let log = check_read(&read, produced);
                if log == *expected {
                    eprintln!(
                        "{topic}: compacted to {} records after {} ms ({nudges} nudges)",
                        log.len(),
                        began.elapsed().as_millis()
                    );
                    return;
                }
                format!(
                    "read {} records, expected {}; expected but not read: {:?}; read but not expected: {:?}",
                    log.len(),
                    expected.len(),
                    missing(expected, &log),
                    missing(&log, expected)
                )
            }
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{topic} was not compacted as expected within {WAIT:?}: {state}; passes {}, records removed {}",
            passes(b),
            metric(b, "sluice_compaction_records_removed_total")
        );
        if let Some(n) = nudge.as_mut() {
            if last_nudge.elapsed() >= NUDGE_EVERY && nudges < NUDGES_MAX {
                n();
                nudges += 1;
                last_nudge = Instant::now();
            }
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn compacted_topic_keeps_latest_value_per_key() {
    const TOPIC: &str = "c1";
    const PARTITIONS: i32 = 2;
    const KEYS: usize = 20;
    const UPDATES: usize = 100;
    const DELETED: [usize; 3] = [3, 8, 13];
    let b = Broker::start_with(1, &SEGMENT_FLAGS);
    create_with(
        &b,
        TOPIC,
        PARTITIONS,
        &[
            ("cleanup.policy", "compact"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "86400000"),
        ],
    );
    create_with(&b, FILLER_TOPIC, 1, &[]);
    let p = producer(&b, &[("acks", "all")]);
    let partition_of = |k: usize| (k % PARTITIONS as usize) as i32;
    let mut records: Vec<ToSend> = Vec::new();
    for version in 0..UPDATES {
        for k in 0..KEYS {
            records.push((partition_of(k), key(k), Some(value(&key(k), version, 1024))));
        }
    }
    for k in DELETED {
        records.push((partition_of(k), key(k), None));
    }
    let mut produced = produce(&p, TOPIC, &records);
    produced.append(&mut produce_last(&p, TOPIC, PARTITIONS, "end"));
    let ends = log_ends(&produced, PARTITIONS);
    let before = watermarks(&b, TOPIC, PARTITIONS);
    assert_eq!(
        before,
        ends.iter().map(|e| (0, *e)).collect::<Vec<_>>(),
        "watermarks before compaction"
    );
    fill(&b, FILLER_BYTES);

    let expected = latest_per_key(&produced);
    assert_eq!(expected.len(), KEYS + PARTITIONS as usize);
    assert_eq!(
        expected.values().filter(|r| r.value.is_none()).count(),
        DELETED.len(),
        "the deleted keys' tombstones are their latest records"
    );
    wait_for_log(&b, TOPIC, PARTITIONS, &produced, &expected, None);

    assert_eq!(
        watermarks(&b, TOPIC, PARTITIONS),
        before,
        "compaction moved the watermarks"
    );
    let removed = metric(&b, "sluice_compaction_records_removed_total");
    assert!(
        removed >= (produced.len() - expected.len()) as u64,
        "sluice_compaction_records_removed_total is {removed}, {} records were removed",
        produced.len() - expected.len()
    );
    assert!(passes(&b) >= 1, "no compaction pass counted");
    assert!(bytes_written(&b) > 0, "no compaction bytes counted");
    // The topic stays writable at its high watermark.
    let next = produce_last(&p, TOPIC, PARTITIONS, "after");
    assert_eq!(
        next.keys().map(|(_, o)| *o).collect::<Vec<_>>(),
        ends,
        "produce after compaction did not continue at the high watermark"
    );
}

#[test]
fn tombstones_go_after_delete_retention() {
    const TOPIC: &str = "c2";
    const KEYS: usize = 10;
    const UPDATES: usize = 20;
    const DELETED: [usize; 4] = [1, 4, 7, 9];
    let b = Broker::start_with(1, &SEGMENT_FLAGS);
    create_with(
        &b,
        TOPIC,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "1000"),
        ],
    );
    create_with(&b, FILLER_TOPIC, 1, &[]);
    let p = producer(&b, &[("acks", "all")]);
    let mut records: Vec<ToSend> = Vec::new();
    for version in 0..UPDATES {
        for k in 0..KEYS {
            records.push((0, key(k), Some(value(&key(k), version, 1024))));
        }
    }
    for k in DELETED {
        records.push((0, key(k), None));
    }
    let mut produced = produce(&p, TOPIC, &records);
    produced.append(&mut produce_last(&p, TOPIC, 1, "end"));
    let before = watermarks(&b, TOPIC, 1);
    fill(&b, FILLER_BYTES);

    // The deleted keys leave nothing once their tombstones expired: the
    // cleaner wakes at their horizon by itself, with no further writes.
    let expected = without_tombstones(&latest_per_key(&produced));
    assert_eq!(expected.len(), KEYS - DELETED.len() + 1);
    wait_for_log(&b, TOPIC, 1, &produced, &expected, None);

    let deleted: BTreeSet<String> = DELETED.iter().map(|k| key(*k)).collect();
    assert!(expected.values().all(|r| !deleted.contains(&r.key)));
    let tombstones = metric(&b, "sluice_compaction_tombstones_removed_total");
    assert!(
        tombstones >= DELETED.len() as u64,
        "sluice_compaction_tombstones_removed_total is {tombstones}"
    );
    assert_eq!(
        watermarks(&b, TOPIC, 1),
        before,
        "compaction moved the watermarks"
    );
}

/// A produce request (v9) of one batch to partition 0 of `topic`.
fn produce_request(topic: &str, batch: Bytes) -> ProduceRequest {
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(batch);
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 10_000;
    r.topic_data = vec![t];
    r
}

/// One batch of records with these keys (`None`: keyless), offsets 0, 1, ...
fn raw_batch(keys: &[Option<&str>]) -> Bytes {
    let records: Vec<Record> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch where `offset - sequence`
            // changes: equal steps keep the records in one batch (the
            // sequence is not looked at without a producer id).
            sequence: i as i32,
            timestamp: now_ms(),
            key: k.map(|k| Bytes::from(k.to_string())),
            value: Some(Bytes::from(format!("raw-{i}"))),
            headers: Default::default(),
        })
        .collect();
    let batch = encode_batch(&records);
    let length = i32::from_be_bytes(batch[8..12].try_into().expect("batchLength"));
    assert_eq!(12 + length as usize, batch.len(), "one batch");
    batch
}

/// Sends one keyless record and returns its delivery result.
fn send_keyless(p: &FutureProducer, topic: &str) -> Result<(i32, i64), KafkaError> {
    let r: FutureRecord<'_, str, str> = FutureRecord::to(topic).partition(0).payload("no key");
    let f = p.send_result(r).map_err(|(e, _)| e).expect("enqueue");
    let delivery = futures::executor::block_on(f).expect("delivery future canceled");
    delivery
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| e)
}

#[test]
fn keyless_records_refused() {
    let b = Broker::start(1);
    create_with(&b, "c3", 1, &[("cleanup.policy", "compact")]);
    create_with(&b, "c3-both", 1, &[("cleanup.policy", "compact,delete")]);
    create_with(&b, "plain", 1, &[]);
    let p = producer(&b, &[("acks", "all")]);

    for topic in ["c3", "c3-both"] {
        match send_keyless(&p, topic) {
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord)) => {}
            other => panic!("{topic}: a keyless record got {other:?}, not InvalidRecord"),
        }
        let keyed = produce(&p, topic, &[(0, "k".into(), Some(b"v".to_vec()))]);
        assert_eq!(
            keyed.keys().collect::<Vec<_>>(),
            [&(0, 0)],
            "{topic}: the refused record took an offset"
        );
    }
    assert_eq!(send_keyless(&p, "plain").expect("keyless to plain"), (0, 0));

    // The raw response: INVALID_RECORD, the batch index of the first
    // keyless record, the reason; nothing of the batch is appended.
    let mut s = connect(&b);
    let batch = raw_batch(&[Some("a"), None, Some("b"), None]);
    let resp: ProduceResponse = call(&mut s, ApiKey::Produce, 9, &produce_request("c3", batch));
    let r = &resp.responses[0].partition_responses[0];
    assert_eq!(r.error_code, INVALID_RECORD, "{r:?}");
    let indexes: Vec<i32> = r.record_errors.iter().map(|e| e.batch_index).collect();
    assert!(
        indexes.first() == Some(&1) && indexes.iter().all(|i| [1, 3].contains(i)),
        "record_errors should name the keyless records (first 1): {:?}",
        r.record_errors
    );
    let message = r.error_message.as_deref().unwrap_or_default();
    assert!(
        message.contains("without key"),
        "error_message {message:?} does not say the record has no key"
    );
    let keyed = raw_batch(&[Some("a"), Some("b")]);
    let resp: ProduceResponse = call(&mut s, ApiKey::Produce, 9, &produce_request("c3", keyed));
    let r = &resp.responses[0].partition_responses[0];
    assert_eq!((r.error_code, r.base_offset), (0, 1), "{r:?}");
    let resp: ProduceResponse = call(
        &mut s,
        ApiKey::Produce,
        9,
        &produce_request("plain", raw_batch(&[None, None])),
    );
    let r = &resp.responses[0].partition_responses[0];
    assert_eq!((r.error_code, r.base_offset), (0, 1), "{r:?}");
}

#[test]
fn kafka_python_reads_compacted_topic() {
    ensure_python_requirements();
    let b = Broker::start_with(1, &SEGMENT_FLAGS);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/test_compaction.py"
    );
    let out = run_bounded(
        Command::new("python3")
            .args([
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-p",
                "no:warnings",
                path,
            ])
            .env("SLUICE_BIN", env!("CARGO_BIN_EXE_sluice"))
            .env("SLUICE_COMPACTION_BOOTSTRAP", b.bootstrap()),
        None,
        Duration::from_secs(240),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kafka-python compaction tests failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(" passed") && !stdout.contains("skipped"),
        "the kafka-python compaction tests did not all run:\n{stdout}"
    );
    assert!(
        metric(&b, "sluice_compaction_records_removed_total") > 0,
        "the broker counted no compacted record"
    );
}

/// The latest acknowledged record of each key and the log end of the
/// single partition survive a restart; whatever is read is what was
/// acknowledged at its offset.
fn check_after_restart(b: &Broker, topic: &str, produced: &Log) {
    let deadline = Instant::now() + WAIT;
    let read = loop {
        match read_all(b, topic, 1) {
            Ok(read) => break read,
            Err(e) => assert!(Instant::now() < deadline, "after a restart: {e}"),
        }
        std::thread::sleep(POLL);
    };
    let log = check_read(&read, produced);
    let lost = missing(&latest_per_key(produced), &log);
    assert!(
        lost.is_empty(),
        "latest records lost across a SIGKILL: {lost:?}"
    );
    assert_eq!(
        watermarks(b, topic, 1),
        vec![(0, log_ends(produced, 1)[0])],
        "watermarks after a restart"
    );
}

/// Produces `bytes` of filler from another thread, so the caller can kill
/// the broker while segments roll and compaction runs. Filler is not
/// checked: librdkafka may deliver it after the restart, or fail it, and
/// both are counted. Returns `(acknowledged, failed)`.
fn fill_in_background(bootstrap: String, bytes: usize) -> std::thread::JoinHandle<(usize, usize)> {
    // A test thread (the client side), so the kill can land while it writes.
    std::thread::spawn(move || {
        let p: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("broker.address.family", "v4")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "10000")
            .create()
            .expect("producer");
        let value = value("f", 0, FILLER_VALUE_BYTES);
        let futures: Vec<_> = (0..bytes.div_ceil(FILLER_VALUE_BYTES))
            .map(|i| {
                let k = format!("f{i}");
                let r: FutureRecord<'_, str, [u8]> = FutureRecord::to(FILLER_TOPIC)
                    .partition(0)
                    .key(k.as_str())
                    .payload(value.as_slice());
                p.send_result(r).map_err(|(e, _)| e).expect("enqueue")
            })
            .collect();
        let mut acked = 0;
        let mut failed = 0;
        for f in futures {
            // Each resolves within `message.timeout.ms`.
            match futures::executor::block_on(f) {
                Ok(Ok(_)) => acked += 1,
                _ => failed += 1,
            }
        }
        (acked, failed)
    })
}

#[test]
fn sigkill_during_compaction() {
    const TOPIC: &str = "ck";
    const KEYS: usize = 10;
    const VALUE_BYTES: usize = 100 * 1024;
    /// 30 MiB of updates first, then less each round.
    const FIRST_UPDATES: usize = 30;
    const MORE_UPDATES: usize = 8;
    const KILLS: usize = 3;
    const JITTER_MS_MAX: u64 = 300;
    /// Compaction writes within this once the filler seals the topic's
    /// records (passes are at least 1 s apart).
    const MOVE_WAIT: Duration = Duration::from_secs(20);
    const MOVE_POLL: Duration = Duration::from_millis(2);
    let mut b = Broker::start_with(1, &SEGMENT_FLAGS);
    create_with(
        &b,
        TOPIC,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    );
    create_with(&b, FILLER_TOPIC, 1, &[]);

    let mut produced = Log::new();
    let mut version = 0;
    for round in 0..KILLS {
        let updates = if round == 0 {
            FIRST_UPDATES
        } else {
            MORE_UPDATES
        };
        {
            let p = producer(&b, &[("acks", "all")]);
            let mut records: Vec<ToSend> = Vec::new();
            for _ in 0..updates {
                for k in 0..KEYS {
                    records.push((0, key(k), Some(value(&key(k), version, VALUE_BYTES))));
                }
                version += 1;
            }
            let mut new = produce(&p, TOPIC, &records);
            new.append(&mut produce_last(&p, TOPIC, 1, &format!("end-{round}")));
            let first = *new.keys().next().expect("records");
            assert_eq!(
                first,
                (0, log_ends(&produced, 1)[0]),
                "round {round} did not continue at the log end"
            );
            produced.append(&mut new);
        }

        // The filler seals what was just written and wakes compaction: kill
        // the moment a replacement was written (perhaps the first of a
        // pass), or a little later (the pass or the segment collector
        // after it).
        let moved_from = (passes(&b), bytes_written(&b));
        let filler = fill_in_background(b.bootstrap(), FILLER_BYTES);
        let deadline = Instant::now() + MOVE_WAIT;
        let mut moved = moved_from;
        while moved == moved_from && Instant::now() < deadline {
            std::thread::sleep(MOVE_POLL);
            moved = (passes(&b), bytes_written(&b));
        }
        let jitter = match round {
            0 => Duration::ZERO,
            _ => Duration::from_millis(fastrand::u64(0..=JITTER_MS_MAX)),
        };
        std::thread::sleep(jitter);
        eprintln!(
            "kill {}: {jitter:?} after passes {} -> {}, bytes written {} -> {}",
            round + 1,
            moved_from.0,
            moved.0,
            moved_from.1,
            moved.1
        );
        b.kill();
        b.restart();
        check_after_restart(&b, TOPIC, &produced);
        let (acked, failed) = filler.join().expect("filler thread");
        eprintln!(
            "kill {}: filler acknowledged {acked}, failed {failed}",
            round + 1
        );
    }

    let expected = latest_per_key(&produced);
    assert_eq!(expected.len(), KEYS + KILLS);
    let mut nudge = || fill(&b, NUDGE_BYTES);
    wait_for_log(
        &b,
        TOPIC,
        1,
        &produced,
        &expected,
        Some(&mut nudge as &mut dyn FnMut()),
    );
}
