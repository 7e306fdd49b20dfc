//! Hostile clients against one broker: frames whose counts and lengths lie
//! (top-level and nested, at the oldest and newest version served), partial
//! frames that stall, thousands of silent connections, requests naming tens
//! of thousands of topics or partitions, and record batches whose counts
//! lie. After each the broker process is alive, the bad connection alone
//! was closed (or answered with a Kafka error), and rdkafka clients opened
//! before the attack still produce and consume.
//!
//! One broker serves every test of this file (`shared`): the tests take
//! turns on it, each under its lock, so the numbers one test reads on
//! `/metrics` (connections, pool use, rejections) are not disturbed by
//! another. Only the idle-timeout test needs other settings and starts its
//! own broker.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use kafka_protocol::compression::Compressor;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const CORRUPT_MESSAGE: i16 = 2;
const INVALID_RECORD: i16 = 87;
/// `--frame-read-timeout-ms` of the shared broker.
const FRAME_READ_TIMEOUT: Duration = Duration::from_millis(2000);
/// The `/metrics` families read here.
const REJECTED: &str = "sluice_shard_requests_rejected_total";
const TIMED_OUT: &str = "sluice_shard_connections_timed_out_total";
const CONNECTIONS: &str = "sluice_shard_connections";
const POOL_USED: &str = "sluice_shard_pool_used_bytes";
const POOL_LIMIT: &str = "sluice_shard_pool_limit_bytes";
const REQUEST_BUFFERS: &str = "pool=\"request_buffers\"";
/// Topics of the shared broker (auto-creation is off there).
const WITNESS_TOPIC: &str = "witness";
const EXISTING_TOPIC: &str = "existing";
const EXISTING_PARTITIONS: i32 = 3;
const LIES_TOPIC: &str = "lies";
const LIES_PAYLOAD_TOPIC: &str = "lies-in-payload";

// ---------------------------------------------------------------- the shared broker

static SHARED: OnceLock<Mutex<Option<Broker>>> = OnceLock::new();

/// Stops the shared broker when the test binary exits (a static is never
/// dropped, and the broker must not outlive its tests).
extern "C" fn stop_shared() {
    if let Some(m) = SHARED.get() {
        let mut guard = m.lock().unwrap_or_else(|e| e.into_inner());
        drop(guard.take());
    }
}

/// Runs `f` with the shared broker, alone; starts it on first use. A
/// failure prints the end of the broker's log, then fails the test.
fn with_shared(f: impl FnOnce(&mut Broker)) {
    let m = SHARED.get_or_init(|| {
        raise_fd_limit(4096);
        let b = Broker::start_with(
            2,
            &[
                "--frame-read-timeout-ms",
                "2000",
                "--auto-create-topics",
                "false",
            ],
        );
        for (topic, partitions) in [
            ("healthcheck", 1),
            (WITNESS_TOPIC, 1),
            (EXISTING_TOPIC, EXISTING_PARTITIONS),
            (LIES_TOPIC, 1),
            (LIES_PAYLOAD_TOPIC, 1),
        ] {
            create_topic(&b, topic, partitions);
        }
        // SAFETY: registers a plain function to run at exit.
        assert_eq!(unsafe { libc::atexit(stop_shared) }, 0, "atexit");
        Mutex::new(Some(b))
    });
    let mut guard = m.lock().unwrap_or_else(|e| e.into_inner());
    let b = guard.as_mut().expect("shared broker");
    if !b.alive() {
        // Each test is judged on its own: a broker an earlier test killed
        // (that test failed) is started again on the same data.
        eprintln!("the shared broker died in an earlier test; starting it again");
        b.kill();
        b.restart();
    }
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(b))) {
        eprintln!("---- end of sluice log ----\n{}", log_tail(b, 80));
        resume_unwind(panic);
    }
}

fn log_tail(b: &Broker, lines: usize) -> String {
    let text = b.log_text();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------- witnesses

/// A producer and a consumer opened before an attack; `check` produces one
/// record through them and reads it back.
struct Witness {
    producer: FutureProducer,
    consumer: BaseConsumer,
    checks: u32,
}

impl Witness {
    fn open(b: &Broker, topic: &str) -> Witness {
        let producer = producer(b, &[("acks", "all")]);
        let consumer = consumer(b);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .expect("tpl");
        consumer.assign(&tpl).expect("assign");
        let mut w = Witness {
            producer,
            consumer,
            checks: 0,
        };
        w.check(topic, "opened");
        w
    }

    /// Produces a record with a fresh value and reads it back (bounded:
    /// 30 s).
    fn check(&mut self, topic: &str, after: &str) {
        self.checks += 1;
        let value = format!("witness-{}-{after}", self.checks);
        let acked = produce_all(
            &self.producer,
            topic,
            &[(0, "w".into(), value.clone(), None)],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.offset() == acked[0].1 => {
                    assert_eq!(m.payload(), Some(value.as_bytes()), "after {after}");
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("witness consumer after {after}: {e}"),
                None => {}
            }
        }
        panic!("witness did not read its record back after {after}");
    }
}

// ---------------------------------------------------------------- raw frames

/// A request frame like `request_frame`, with a chosen client id.
fn frame<T: Encodable>(key: ApiKey, version: i16, client_id: &str, body: &T) -> Vec<u8> {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = 11;
    header.client_id = Some(StrBytes::from_string(client_id.to_string()));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, key.request_header_version(version))
        .expect("header");
    body.encode(&mut buf, version)
        .unwrap_or_else(|e| panic!("{key:?} v{version}: {e:#}"));
    let size = i32::try_from(buf.len() - 4).expect("size");
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf.to_vec()
}

/// The body of `key` at `version` uses compact (varint) lengths.
fn flexible(key: ApiKey, version: i16) -> bool {
    key.request_header_version(version) >= 2
}

/// How a count or length is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Width {
    /// i32: non-flexible array counts.
    I32,
    /// i16: non-flexible string lengths (and the header's client id).
    I16,
    /// Unsigned varint of length + 1: compact arrays and strings.
    Compact,
}

impl Width {
    fn bytes(self) -> usize {
        match self {
            Width::I32 => 4,
            Width::I16 => 2,
            Width::Compact => 1,
        }
    }

    /// The huge values an attacker writes in place of the field.
    fn lies(self) -> Vec<Vec<u8>> {
        match self {
            Width::I32 => vec![0x7fff_ffffi32.to_be_bytes().to_vec()],
            Width::I16 => vec![0x7fffi16.to_be_bytes().to_vec()],
            // 0xFFFFFFFF and 0x7FFFFFFF as unsigned varints.
            Width::Compact => vec![
                vec![0xff, 0xff, 0xff, 0xff, 0x0f],
                vec![0xff, 0xff, 0xff, 0xff, 0x07],
            ],
        }
    }
}

/// Where a field sits: the same request encoded with the field at 0 and at
/// 1 (elements, or bytes of a string) differs first in that field, after
/// the size prefix. Checks that both encodings hold those values there.
fn locate(zero: &[u8], one: &[u8], width: Width) -> usize {
    let first = (4..zero.len().min(one.len()))
        .find(|&i| zero[i] != one[i])
        .expect("the encodings differ");
    let at = first + 1 - width.bytes();
    let field = |f: &[u8]| -> i64 {
        match width {
            Width::I32 => i64::from(i32::from_be_bytes(f[at..at + 4].try_into().expect("4"))),
            Width::I16 => i64::from(i16::from_be_bytes(f[at..at + 2].try_into().expect("2"))),
            Width::Compact => i64::from(f[at]) - 1,
        }
    };
    assert_eq!(
        (field(zero), field(one)),
        (0, 1),
        "field at byte {at} ({width:?}) does not hold the count"
    );
    at
}

/// `frame` with the field at `at` replaced by `lie`; the size prefix is
/// fixed so the frame stays well framed.
fn with_lie(frame: &[u8], at: usize, width: Width, lie: &[u8]) -> Vec<u8> {
    let mut out = frame[..at].to_vec();
    out.extend_from_slice(lie);
    out.extend_from_slice(&frame[at + width.bytes()..]);
    let size = i32::try_from(out.len() - 4).expect("size");
    out[..4].copy_from_slice(&size.to_be_bytes());
    out
}

/// Frames of one request whose field lies, and what they are.
struct Attack {
    what: String,
    frames: Vec<Vec<u8>>,
}

/// Builds attack frames from a request built with the field at 0 and 1.
fn attack(what: String, build: impl Fn(usize) -> Vec<u8>, width: Width) -> Attack {
    let (zero, one) = (build(0), build(1));
    let at = locate(&zero, &one, width);
    let frames = width
        .lies()
        .iter()
        .map(|lie| with_lie(&one, at, width, lie))
        .collect();
    Attack { what, frames }
}

/// Sends each frame on a connection of its own and expects it closed; the
/// broker must stay up and count every frame as rejected.
fn expect_rejected(b: &Broker, a: &Attack) {
    let before = metric_sum(b, REJECTED).unwrap_or(0);
    for f in &a.frames {
        let mut s = connect(b);
        s.write_all(f).expect("write");
        assert_closed(&mut s);
        assert!(b.alive(), "broker died on {}", a.what);
    }
    let want = before + a.frames.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut now = before;
    while Instant::now() < deadline {
        now = metric_sum(b, REJECTED).unwrap_or(0);
        if now >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        now, want,
        "{}: {REJECTED} went from {before} to {now}",
        a.what
    );
}

// ---------------------------------------------------------------- requests

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn record(i: usize, value: &str) -> Record {
    Record {
        transactional: false,
        control: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: i as i64,
        // offset - sequence the same for every record keeps them in one
        // batch; its base sequence is -1 (not idempotent).
        sequence: i as i32 - 1,
        timestamp: now_ms(),
        key: Some(Bytes::from(format!("k{i}"))),
        value: Some(Bytes::from(value.to_string())),
        headers: Default::default(),
    }
}

/// A valid uncompressed v2 batch of `values`.
fn batch(values: &[String]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| record(i, v))
        .collect();
    encode_batch(&records)
}

fn partition_data(index: i32, records: Bytes) -> PartitionProduceData {
    let mut p = PartitionProduceData::default();
    p.index = index;
    p.records = Some(records);
    p
}

fn produce_request(topics: Vec<TopicProduceData>) -> ProduceRequest {
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 10_000;
    r.topic_data = topics;
    r
}

fn topic_data(topic: &str, partitions: Vec<PartitionProduceData>) -> TopicProduceData {
    let mut t = TopicProduceData::default();
    t.name = name(topic);
    t.partition_data = partitions;
    t
}

/// Produce with `topics` topics, one partition each.
fn produce_topics(version: i16, topics: usize) -> Vec<u8> {
    let records = batch(&["a".into()]);
    let t = (0..topics)
        .map(|i| {
            topic_data(
                &format!("attack-{i}"),
                vec![partition_data(0, records.clone())],
            )
        })
        .collect();
    frame(ApiKey::Produce, version, "hostile", &produce_request(t))
}

/// Produce with one topic of `partitions` partitions.
fn produce_partitions(version: i16, partitions: usize) -> Vec<u8> {
    let records = batch(&["a".into()]);
    let p = (0..partitions)
        .map(|i| partition_data(i as i32, records.clone()))
        .collect();
    let req = produce_request(vec![topic_data("attack", p)]);
    frame(ApiKey::Produce, version, "hostile", &req)
}

fn fetch_partition(partition: i32) -> FetchPartition {
    let mut p = FetchPartition::default();
    p.partition = partition;
    p.partition_max_bytes = 1 << 20;
    p
}

fn fetch_request(topic: &str, partitions: impl Iterator<Item = i32>) -> FetchRequest {
    let mut t = FetchTopic::default();
    t.topic = name(topic);
    t.partitions = partitions.map(fetch_partition).collect();
    let mut r = FetchRequest::default();
    r.max_wait_ms = 200;
    r.min_bytes = 1;
    r.topics = vec![t];
    r
}

fn fetch_topics(version: i16, topics: usize) -> Vec<u8> {
    let mut r = fetch_request("x", 0..1);
    let t = r.topics.pop().expect("one topic");
    r.topics = (0..topics).map(|_| t.clone()).collect();
    frame(ApiKey::Fetch, version, "hostile", &r)
}

fn metadata_request(version: i16, topics: impl Iterator<Item = String>) -> MetadataRequest {
    let mut r = MetadataRequest::default();
    r.topics = Some(
        topics
            .map(|n| {
                let mut t = MetadataRequestTopic::default();
                t.name = Some(name(&n));
                t
            })
            .collect(),
    );
    if version >= 4 {
        r.allow_auto_topic_creation = false;
    }
    r
}

fn metadata_topics(version: i16, topics: usize) -> Vec<u8> {
    let r = metadata_request(version, (0..topics).map(|i| format!("attack-{i}")));
    frame(ApiKey::Metadata, version, "hostile", &r)
}

/// Metadata naming one topic whose name is `length` bytes.
fn metadata_name_length(version: i16, length: usize) -> Vec<u8> {
    let r = metadata_request(version, std::iter::once("x".repeat(length)));
    frame(ApiKey::Metadata, version, "hostile", &r)
}

/// Metadata from a client id of `length` bytes.
fn metadata_client_id_length(version: i16, length: usize) -> Vec<u8> {
    let r = metadata_request(version, std::iter::once("x".to_string()));
    frame(ApiKey::Metadata, version, &"c".repeat(length), &r)
}

fn create_topics(version: i16, topics: usize) -> Vec<u8> {
    let mut r = CreateTopicsRequest::default();
    r.topics = (0..topics)
        .map(|i| {
            let mut t = CreatableTopic::default();
            t.name = name(&format!("attack-{i}"));
            t.num_partitions = 1;
            t.replication_factor = 1;
            t
        })
        .collect();
    r.timeout_ms = 5000;
    frame(ApiKey::CreateTopics, version, "hostile", &r)
}

fn offset_commit(version: i16, topics: usize) -> Vec<u8> {
    let mut r = OffsetCommitRequest::default();
    r.group_id = GroupId(str_bytes("attack-group"));
    r.topics = (0..topics)
        .map(|i| {
            let mut p = OffsetCommitRequestPartition::default();
            p.partition_index = 0;
            p.committed_offset = 1;
            p.committed_metadata = Some(str_bytes(""));
            let mut t = OffsetCommitRequestTopic::default();
            t.name = name(&format!("attack-{i}"));
            t.partitions = vec![p];
            t
        })
        .collect();
    frame(ApiKey::OffsetCommit, version, "hostile", &r)
}

fn join_group(version: i16, protocols: usize) -> Vec<u8> {
    let mut r = JoinGroupRequest::default();
    r.group_id = GroupId(str_bytes("attack-group"));
    r.session_timeout_ms = 10_000;
    r.protocol_type = str_bytes("consumer");
    r.protocols = (0..protocols)
        .map(|i| {
            let mut p = JoinGroupRequestProtocol::default();
            p.name = str_bytes(&format!("range-{i}"));
            p.metadata = Bytes::from_static(&[0, 0, 0, 0]);
            p
        })
        .collect();
    frame(ApiKey::JoinGroup, version, "hostile", &r)
}

/// The versions the broker serves for `key`, oldest and newest.
fn served(key: ApiKey) -> [i16; 2] {
    match key {
        ApiKey::Produce => [0, 9],
        ApiKey::Fetch => [0, 12],
        ApiKey::Metadata => [0, 12],
        ApiKey::CreateTopics => [0, 7],
        ApiKey::OffsetCommit => [0, 9],
        ApiKey::JoinGroup => [0, 9],
        other => panic!("{other:?} is not attacked here"),
    }
}

/// Builds a request frame at a version with n elements in one array.
type Build = fn(i16, usize) -> Vec<u8>;

/// The top-level array of each attacked request, built with n elements.
fn top_level_builders() -> Vec<(ApiKey, Build)> {
    vec![
        (ApiKey::Produce, produce_topics),
        (ApiKey::Fetch, fetch_topics),
        (ApiKey::Metadata, metadata_topics),
        (ApiKey::CreateTopics, create_topics),
        (ApiKey::OffsetCommit, offset_commit),
        (ApiKey::JoinGroup, join_group),
    ]
}

/// The array count of `key` at `version` (i32, or compact when flexible).
fn count_width(key: ApiKey, version: i16) -> Width {
    if flexible(key, version) {
        Width::Compact
    } else {
        Width::I32
    }
}

fn string_width(key: ApiKey, version: i16) -> Width {
    if flexible(key, version) {
        Width::Compact
    } else {
        Width::I16
    }
}

// ---------------------------------------------------------------- (a) counts that lie

/// The frames of every attacked API at its oldest and newest version, with
/// the top-level array count set huge, are each closed; the broker stays
/// up, counts them, and the clients opened before go on working.
#[test]
fn huge_top_level_counts_close_only_their_connection() {
    with_shared(|b| {
        let mut w = Witness::open(b, WITNESS_TOPIC);
        for (key, build) in top_level_builders() {
            for version in served(key) {
                let what = format!("{key:?} v{version} top-level count");
                let a = attack(
                    what.clone(),
                    |n| build(version, n),
                    count_width(key, version),
                );
                expect_rejected(b, &a);
                w.check(WITNESS_TOPIC, &what);
            }
        }
        assert!(b.alive());
    });
}

/// Nested counts and lengths: the partition array inside Produce's topic,
/// a topic name's length inside Metadata, and the header's client id.
#[test]
fn huge_nested_counts_and_lengths_close_only_their_connection() {
    with_shared(|b| {
        let mut w = Witness::open(b, WITNESS_TOPIC);
        let mut attacks = Vec::new();
        for version in served(ApiKey::Produce) {
            attacks.push(attack(
                format!("Produce v{version} partition count"),
                |n| produce_partitions(version, n),
                count_width(ApiKey::Produce, version),
            ));
        }
        for version in served(ApiKey::Metadata) {
            attacks.push(attack(
                format!("Metadata v{version} topic name length"),
                |n| metadata_name_length(version, n),
                string_width(ApiKey::Metadata, version),
            ));
            // The header's client id is an i16-length string in every
            // header version.
            attacks.push(attack(
                format!("Metadata v{version} client id length"),
                |n| metadata_client_id_length(version, n),
                Width::I16,
            ));
        }
        for a in &attacks {
            expect_rejected(b, a);
            w.check(WITNESS_TOPIC, &a.what);
        }
        assert!(b.alive());
    });
}

// ---------------------------------------------------------------- (b) stalled frames

/// Sockets set non-blocking; each polled until it reads end of stream.
/// Returns when each closed (from `start`), `None` for those still open at
/// `deadline`.
fn close_times(
    socks: &mut [TcpStream],
    start: Instant,
    deadline: Instant,
) -> Vec<Option<Duration>> {
    for s in socks.iter() {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let mut closed: Vec<Option<Duration>> = vec![None; socks.len()];
    while Instant::now() < deadline && closed.iter().any(Option::is_none) {
        poll_closed(socks, &mut closed, start);
        std::thread::sleep(Duration::from_millis(20));
    }
    closed
}

/// One pass over non-blocking sockets: records when each newly closed one
/// was found closed (from `start`).
fn poll_closed(socks: &mut [TcpStream], closed: &mut [Option<Duration>], start: Instant) {
    for (s, c) in socks.iter_mut().zip(closed.iter_mut()) {
        if c.is_none() && is_closed_now(s) {
            *c = Some(start.elapsed());
        }
    }
}

/// A non-blocking socket: has the broker closed it?
fn is_closed_now(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("the broker sent {n} bytes on a connection that sent no request"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("read: {e}"),
    }
}

/// Polls `read` until `done` holds of its value (bounded by `limit`);
/// returns the last value read.
fn wait_for(limit: Duration, read: impl Fn() -> u64, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + limit;
    let mut v = read();
    while !done(v) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        v = read();
    }
    v
}

fn request_buffers_used(b: &Broker) -> u64 {
    metric_sum_where(b, POOL_USED, REQUEST_BUFFERS).unwrap_or(0)
}

fn connections(b: &Broker) -> u64 {
    metric_sum(b, CONNECTIONS).unwrap_or(0)
}

/// Connections that send part of a size prefix, or a prefix announcing
/// 1 MiB and 10 bytes of it, then stall, are closed after
/// `--frame-read-timeout-ms`; clients keep working meanwhile, and the
/// request buffers they held return to the pool.
#[test]
fn stalled_partial_frames_are_closed_after_the_frame_read_timeout() {
    const HALF_PREFIXES: usize = 200;
    const BODY_BYTES: usize = 1 << 20;
    with_shared(|b| {
        let mut w = Witness::open(b, WITNESS_TOPIC);
        let idle_used = request_buffers_used(b);
        let idle_connections = connections(b);
        let timed_out_before = metric_sum(b, TIMED_OUT).unwrap_or(0);
        // At most half of the smallest shard's request-buffer pool, so
        // every stalled body is reserved at once wherever it lands.
        let pool_min = metric_min_where(b, POOL_LIMIT, REQUEST_BUFFERS).expect("pool limit");
        let bodies = usize::try_from(pool_min / 2 / BODY_BYTES as u64)
            .expect("count")
            .min(20);
        assert!(bodies >= 4, "request_buffers pool of {pool_min} bytes");
        let start = Instant::now();
        let mut socks = Vec::new();
        for _ in 0..HALF_PREFIXES {
            let mut s = connect(b);
            s.write_all(&[0, 0]).expect("write half a prefix");
            socks.push(s);
        }
        for _ in 0..bodies {
            let mut s = connect(b);
            s.write_all(&(BODY_BYTES as i32).to_be_bytes())
                .expect("write prefix");
            s.write_all(&[0u8; 10]).expect("write 10 bytes");
            socks.push(s);
        }
        let sent = start.elapsed();
        // While they stall: the bodies are reserved, clients still work.
        let want = idle_used + (bodies * BODY_BYTES) as u64;
        let used = wait_for(
            Duration::from_secs(1),
            || request_buffers_used(b),
            |u| u >= want,
        );
        w.check(WITNESS_TOPIC, "stalled frames");
        let checked = start.elapsed();
        let closed = close_times(&mut socks, start, start + Duration::from_secs(12));
        let open = closed.iter().filter(|c| c.is_none()).count();
        let times: Vec<Duration> = closed.iter().flatten().copied().collect();
        let first = times.iter().min().copied().unwrap_or_default();
        let last = times.iter().max().copied().unwrap_or_default();
        println!(
            "stalled: {HALF_PREFIXES} half prefixes + {bodies} x 1 MiB bodies sent in {sent:?}; \
             request_buffers {idle_used} idle, {used} stalled; witness ok at {checked:?}; \
             closed between {first:?} and {last:?}, {open} still open"
        );
        assert!(used >= want, "stalled bodies reserved: {used} < {want}");
        assert_eq!(open, 0, "partial frames still open after 12 s");
        assert!(
            first >= FRAME_READ_TIMEOUT - Duration::from_millis(300),
            "closed before the frame read timeout: {first:?}"
        );
        assert!(last <= Duration::from_secs(6), "last closed at {last:?}");
        drop(socks);
        let used = wait_for(
            Duration::from_secs(5),
            || request_buffers_used(b),
            |u| u == idle_used,
        );
        assert_eq!(used, idle_used, "request_buffers back to idle");
        let open = wait_for(
            Duration::from_secs(5),
            || connections(b),
            |c| c == idle_connections,
        );
        assert_eq!(
            open, idle_connections,
            "connections back to their count before"
        );
        let timed_out = metric_sum(b, TIMED_OUT).unwrap_or(0) - timed_out_before;
        assert_eq!(timed_out, (HALF_PREFIXES + bodies) as u64, "{TIMED_OUT}");
        w.check(WITNESS_TOPIC, "stalled frames closed");
        assert!(b.alive());
    });
}

// ---------------------------------------------------------------- (c) silent connections

/// Thousands of connections that never send a byte: clients keep working,
/// each costs the broker a bounded amount of memory, the frame read
/// timeout leaves them alone (no frame started), and closing them brings
/// the connection count back.
#[test]
fn thousands_of_silent_connections_cost_little_and_block_nothing() {
    const SILENT: usize = 2000;
    const BYTES_PER_CONNECTION_MAX: u64 = 80 << 10;
    with_shared(|b| {
        let mut w = Witness::open(b, WITNESS_TOPIC);
        let idle_connections = connections(b);
        std::thread::sleep(Duration::from_millis(300));
        let rss_before = b.rss_bytes();
        let start = Instant::now();
        let mut socks: Vec<TcpStream> = (0..SILENT).map(|_| connect(b)).collect();
        let want = idle_connections + SILENT as u64;
        let open = wait_for(Duration::from_secs(30), || connections(b), |c| c >= want);
        let accepted = start.elapsed();
        assert_eq!(open, want, "every silent connection accepted");
        std::thread::sleep(Duration::from_millis(300));
        let rss_open = b.rss_bytes();
        w.check(WITNESS_TOPIC, "silent connections");
        // Past the frame read timeout: none of them started a frame.
        std::thread::sleep(FRAME_READ_TIMEOUT + Duration::from_millis(500));
        let closed = close_times(&mut socks, start, Instant::now());
        let closed = closed.iter().filter(|c| c.is_some()).count();
        let per = rss_open.saturating_sub(rss_before) / SILENT as u64;
        println!(
            "silent: {SILENT} connections accepted in {accepted:?}; RSS {} -> {} KiB: \
             {per} bytes per idle connection",
            rss_before >> 10,
            rss_open >> 10
        );
        assert_eq!(closed, 0, "silent connections closed by the frame timeout");
        assert!(
            per < BYTES_PER_CONNECTION_MAX,
            "{per} bytes per idle connection"
        );
        drop(socks);
        let open = wait_for(
            Duration::from_secs(10),
            || connections(b),
            |c| c == idle_connections,
        );
        assert_eq!(
            open, idle_connections,
            "connections back to their count before"
        );
        w.check(WITNESS_TOPIC, "silent connections closed");
        assert!(b.alive());
    });
}

// ---------------------------------------------------------------- (d) huge requests

/// Sends `req` and times the answer; the answer must come (not a close)
/// within `ANSWER_TIME_MAX`.
fn timed_call<Req: Encodable, Resp: kafka_protocol::protocol::Decodable>(
    s: &mut TcpStream,
    key: ApiKey,
    version: i16,
    req: &Req,
    what: &str,
) -> Resp {
    const ANSWER_TIME_MAX: Duration = Duration::from_secs(30);
    let start = Instant::now();
    let resp = call(s, key, version, req);
    let took = start.elapsed();
    println!("huge: {what} answered in {took:?}");
    assert!(took < ANSWER_TIME_MAX, "{what} took {took:?}");
    resp
}

/// Partition indexes past the end of `EXISTING_TOPIC`, and negative ones.
fn bad_partitions(past_end: i32) -> Vec<i32> {
    let mut p: Vec<i32> = (EXISTING_PARTITIONS..EXISTING_PARTITIONS + past_end).collect();
    p.extend([i32::MAX, -1, -2, i32::MIN]);
    p
}

fn list_offsets_request(topic: &str, partitions: &[i32]) -> ListOffsetsRequest {
    let mut t = ListOffsetsTopic::default();
    t.name = name(topic);
    t.partitions = partitions
        .iter()
        .map(|&i| {
            let mut p = ListOffsetsPartition::default();
            p.partition_index = i;
            p.timestamp = -1;
            p
        })
        .collect();
    let mut r = ListOffsetsRequest::default();
    r.replica_id = BrokerId(-1);
    r.topics = vec![t];
    r
}

/// Every (partition, error) of a ListOffsets answer.
fn list_offsets_errors(r: &ListOffsetsResponse) -> Vec<(i32, i16)> {
    r.topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, p.error_code))
        .collect()
}

fn fetch_errors(r: &FetchResponse) -> Vec<(i32, i16)> {
    r.responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, p.error_code))
        .collect()
}

fn produce_errors(r: &ProduceResponse) -> Vec<(i32, i16)> {
    r.responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .map(|p| (p.index, p.error_code))
        .collect()
}

/// `got` answers exactly `partitions`, in order, each with `code`.
fn assert_all(what: &str, got: &[(i32, i16)], partitions: &[i32], code: i16) {
    assert_eq!(got.len(), partitions.len(), "{what}: answered partitions");
    for ((p, e), want) in got.iter().zip(partitions) {
        assert_eq!(p, want, "{what}: partitions in request order");
        assert_eq!(*e, code, "{what}: partition {p}");
    }
}

/// Requests naming tens of thousands of unknown topics or partitions are
/// answered, each item with its Kafka error, in bounded time, on a
/// connection that stays usable.
#[test]
fn requests_naming_tens_of_thousands_of_unknown_items_are_answered() {
    const TOPICS: usize = 20_000;
    const PARTITIONS: i32 = 20_000;
    const PRODUCE_PARTITIONS: i32 = 10_000;
    const DELETES: usize = 10_000;
    with_shared(|b| {
        let mut w = Witness::open(b, WITNESS_TOPIC);
        let mut s = connect(b);
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        // Metadata for 20,000 unknown topics, auto-creation off.
        for version in [4, 12] {
            let names: Vec<String> = (0..TOPICS).map(|i| format!("nowhere-{i}")).collect();
            let req = metadata_request(version, names.iter().cloned());
            let what = format!("Metadata v{version} of {TOPICS} unknown topics");
            let r: MetadataResponse = timed_call(&mut s, ApiKey::Metadata, version, &req, &what);
            assert_eq!(r.topics.len(), TOPICS, "{what}");
            for (t, n) in r.topics.iter().zip(&names) {
                assert_eq!(t.name.as_ref().map(|x| x.0.as_str()), Some(n.as_str()));
                assert_eq!(t.error_code, UNKNOWN_TOPIC_OR_PARTITION, "{what}: {n}");
            }
        }
        w.check(WITNESS_TOPIC, "huge Metadata");
        let unknown: Vec<i32> = (0..PARTITIONS).collect();
        let bad = bad_partitions(PARTITIONS);
        for version in [1, 7] {
            for (topic, partitions) in [("nowhere", &unknown), (EXISTING_TOPIC, &bad)] {
                let what = format!(
                    "ListOffsets v{version}: {} partitions of {topic}",
                    partitions.len()
                );
                let req = list_offsets_request(topic, partitions);
                let r: ListOffsetsResponse =
                    timed_call(&mut s, ApiKey::ListOffsets, version, &req, &what);
                assert_all(
                    &what,
                    &list_offsets_errors(&r),
                    partitions,
                    UNKNOWN_TOPIC_OR_PARTITION,
                );
            }
        }
        w.check(WITNESS_TOPIC, "huge ListOffsets");
        for version in [4, 12] {
            for (topic, partitions) in [("nowhere", &unknown), (EXISTING_TOPIC, &bad)] {
                let what = format!(
                    "Fetch v{version}: {} partitions of {topic}",
                    partitions.len()
                );
                let req = fetch_request(topic, partitions.iter().copied());
                let r: FetchResponse = timed_call(&mut s, ApiKey::Fetch, version, &req, &what);
                assert_eq!(r.error_code, 0, "{what}");
                assert_all(
                    &what,
                    &fetch_errors(&r),
                    partitions,
                    UNKNOWN_TOPIC_OR_PARTITION,
                );
            }
        }
        w.check(WITNESS_TOPIC, "huge Fetch");
        let records = batch(&["never stored".into()]);
        let produce_unknown: Vec<i32> = (0..PRODUCE_PARTITIONS).collect();
        let produce_bad = bad_partitions(PRODUCE_PARTITIONS);
        for (topic, partitions) in [
            ("nowhere", &produce_unknown),
            (EXISTING_TOPIC, &produce_bad),
        ] {
            let what = format!("Produce v9: {} partitions of {topic}", partitions.len());
            let data = partitions
                .iter()
                .map(|&p| partition_data(p, records.clone()))
                .collect();
            let req = produce_request(vec![topic_data(topic, data)]);
            let r: ProduceResponse = timed_call(&mut s, ApiKey::Produce, 9, &req, &what);
            assert_all(
                &what,
                &produce_errors(&r),
                partitions,
                UNKNOWN_TOPIC_OR_PARTITION,
            );
        }
        // A valid partition beside bad ones is written; the bad ones not.
        let mixed = [0, EXISTING_PARTITIONS, -1, i32::MAX];
        let data = mixed
            .iter()
            .map(|&p| partition_data(p, batch(&[format!("mixed-{p}")])))
            .collect();
        let req = produce_request(vec![topic_data(EXISTING_TOPIC, data)]);
        let r: ProduceResponse = call(&mut s, ApiKey::Produce, 9, &req);
        let codes = produce_errors(&r);
        assert_eq!(codes[0], (0, 0), "the valid partition is written");
        assert_all(
            "mixed",
            &codes[1..],
            &mixed[1..],
            UNKNOWN_TOPIC_OR_PARTITION,
        );
        let got = consume_all(
            b,
            EXISTING_TOPIC,
            EXISTING_PARTITIONS,
            1,
            Duration::from_secs(20),
        );
        let values: Vec<&str> = got.iter().map(|m| m.value.as_str()).collect();
        assert_eq!(
            values,
            ["mixed-0"],
            "only the valid partition holds a record"
        );
        w.check(WITNESS_TOPIC, "huge Produce");
        for version in [1, 6] {
            let names: Vec<String> = (0..DELETES).map(|i| format!("nowhere-{i}")).collect();
            let mut req = DeleteTopicsRequest::default();
            req.timeout_ms = 10_000;
            if version >= 6 {
                req.topics = names
                    .iter()
                    .map(|n| {
                        let mut t = DeleteTopicState::default();
                        t.name = Some(name(n));
                        t
                    })
                    .collect();
            } else {
                req.topic_names = names.iter().map(|n| name(n)).collect();
            }
            let what = format!("DeleteTopics v{version} of {DELETES} unknown topics");
            let r: DeleteTopicsResponse =
                timed_call(&mut s, ApiKey::DeleteTopics, version, &req, &what);
            assert_eq!(r.responses.len(), DELETES, "{what}");
            for (t, n) in r.responses.iter().zip(&names) {
                assert_eq!(t.name.as_ref().map(|x| x.0.as_str()), Some(n.as_str()));
                assert_eq!(t.error_code, UNKNOWN_TOPIC_OR_PARTITION, "{what}: {n}");
            }
        }
        // The same connection is still served.
        let r: ApiVersionsResponse = call(
            &mut s,
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default(),
        );
        assert_eq!(r.error_code, 0);
        w.check(WITNESS_TOPIC, "huge DeleteTopics");
        assert!(b.alive());
    });
}

// ---------------------------------------------------------------- (e) batches that lie

const RECORD_COUNT_AT: usize = 57;
const LAST_OFFSET_DELTA_AT: usize = 23;
const ATTRIBUTES_AT: usize = 21;
const CRC_AT: usize = 17;
const BATCH_HEADER_BYTES: usize = 61;

/// A batch of `values` compressed with `codec`; `edit` rewrites the
/// encoded records before they are compressed (or stored, uncompressed).
fn batch_with(values: &[String], codec: Compression, edit: &dyn Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| record(i, v))
        .collect();
    let options = RecordEncodeOptions {
        version: 2,
        compression: codec,
    };
    let mut buf = BytesMut::new();
    if codec == Compression::None {
        RecordBatchEncoder::encode(&mut buf, records.iter(), &options).expect("encode");
        let edited = edit(&buf[BATCH_HEADER_BYTES..]);
        let mut b = buf[..BATCH_HEADER_BYTES].to_vec();
        b.extend_from_slice(&edited);
        let length = i32::try_from(b.len() - 12).expect("length");
        b[8..12].copy_from_slice(&length.to_be_bytes());
        return with_crc(b);
    }
    let compress = |plain: &mut BytesMut, out: &mut BytesMut, c: Compression| {
        let edited = edit(plain);
        let put = |tmp: &mut BytesMut| -> anyhow::Result<()> {
            tmp.put_slice(&edited);
            Ok(())
        };
        use kafka_protocol::compression as cmpr;
        match c {
            Compression::Gzip => cmpr::Gzip::compress(out, |t: &mut BytesMut| put(t)),
            Compression::Snappy => cmpr::Snappy::compress(out, |t: &mut BytesMut| put(t)),
            Compression::Lz4 => cmpr::Lz4::compress(out, |t: &mut BytesMut| put(t)),
            Compression::Zstd => cmpr::Zstd::compress(out, |t: &mut BytesMut| put(t)),
            Compression::None => unreachable!("handled above"),
        }
    };
    RecordBatchEncoder::encode_with_custom_compression(
        &mut buf,
        records.iter(),
        &options,
        Some(compress),
    )
    .expect("encode compressed");
    buf.to_vec()
}

fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Sets recordCount and lastOffsetDelta; fixes the CRC.
fn with_counts(mut b: Vec<u8>, count: i32, last_offset_delta: i32) -> Vec<u8> {
    b[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
    b[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
        .copy_from_slice(&last_offset_delta.to_be_bytes());
    with_crc(b)
}

fn read_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn zigzag(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Reads a zigzag varint at `at`; returns it and the bytes it took.
fn read_zigzag(b: &[u8], at: usize) -> (i64, usize) {
    let mut raw = 0u64;
    for i in 0..10 {
        let byte = b[at + i];
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return ((raw >> 1) as i64 ^ -((raw & 1) as i64), i + 1);
        }
    }
    panic!("varint too long at {at}")
}

/// The encoded records with the first record's header count (the last
/// field of a record without headers) replaced by `count`, and that
/// record's length fixed.
fn first_header_count(records: &[u8], count: i64) -> Vec<u8> {
    let (length, took) = read_zigzag(records, 0);
    let body = &records[took..took + length as usize];
    assert_eq!(body.last(), Some(&0), "a record without headers");
    let mut new_body = body[..body.len() - 1].to_vec();
    zigzag(&mut new_body, count);
    let mut out = Vec::new();
    zigzag(&mut out, new_body.len() as i64);
    out.extend_from_slice(&new_body);
    out.extend_from_slice(&records[took + length as usize..]);
    out
}

/// One lie told by a batch of three records.
struct Lie {
    what: String,
    batch: Vec<u8>,
}

fn lies(codec: Compression) -> Vec<Lie> {
    let values: Vec<String> = (0..3).map(|i| format!("lie-{codec:?}-{i}")).collect();
    let keep = |r: &[u8]| r.to_vec();
    let plain = batch_with(&values, codec, &keep);
    assert_eq!(
        (
            read_i32(&plain, RECORD_COUNT_AT),
            read_i32(&plain, LAST_OFFSET_DELTA_AT)
        ),
        (3, 2)
    );
    // (what, recordCount, lastOffsetDelta, the two agree): a compressed
    // batch whose two counts agree is not refused (its records are not
    // decompressed); those are in `lies_in_payload`.
    let counts: [(&str, i32, i32, bool); 7] = [
        ("more records claimed, lastOffsetDelta agreeing", 5, 4, true),
        ("more records claimed", 5, 2, false),
        (
            "fewer records claimed, lastOffsetDelta agreeing",
            2,
            1,
            true,
        ),
        ("negative record count", -1, -2, false),
        ("zero record count", 0, -1, false),
        ("lastOffsetDelta past the count", 3, 7, false),
        ("lastOffsetDelta i32::MAX", 3, i32::MAX, false),
    ];
    let mut out: Vec<Lie> = counts
        .iter()
        .filter(|&&(_, _, _, agree)| codec == Compression::None || !agree)
        .map(|&(what, count, delta, _)| Lie {
            what: format!("{codec:?}: {what}"),
            batch: with_counts(plain.clone(), count, delta),
        })
        .collect();
    if codec == Compression::None {
        for count in [1_000_000i64, -1] {
            out.push(Lie {
                what: format!("{codec:?}: a record claiming {count} headers"),
                batch: batch_with(&values, codec, &|r| first_header_count(r, count)),
            });
        }
    } else {
        for id in 5..=7i16 {
            let mut b = plain.clone();
            let attributes = (i16::from_be_bytes([b[21], b[22]]) & !0x07) | id;
            b[21..23].copy_from_slice(&attributes.to_be_bytes());
            out.push(Lie {
                what: format!("{codec:?} batch with codec id {id}"),
                batch: with_crc(b),
            });
        }
    }
    out
}

/// Lies inside compressed records, which the produce path does not
/// decompress (the batch is stored as sent).
fn lies_in_payload() -> Vec<Lie> {
    let values: Vec<String> = (0..3).map(|i| format!("payload-lie-{i}")).collect();
    let mut out = Vec::new();
    for codec in [Compression::Gzip, Compression::Zstd] {
        for count in [1_000_000i64, -1] {
            out.push(Lie {
                what: format!("{codec:?}: a record claiming {count} headers"),
                batch: batch_with(&values, codec, &|r| first_header_count(r, count)),
            });
        }
        let plain = batch_with(&values, codec, &|r| r.to_vec());
        for (count, delta) in [(5, 4), (2, 1)] {
            out.push(Lie {
                what: format!("{codec:?}: {count} records claimed, 3 inside"),
                batch: with_counts(plain.clone(), count, delta),
            });
        }
    }
    out
}

/// Produce of one batch to partition 0 of `topic` on `s`: its error code.
fn produce_one(s: &mut TcpStream, topic: &str, records: Vec<u8>) -> i16 {
    let req = produce_request(vec![topic_data(
        topic,
        vec![partition_data(0, Bytes::from(records))],
    )]);
    let r: ProduceResponse = call(s, ApiKey::Produce, 9, &req);
    let codes = produce_errors(&r);
    assert_eq!(codes.len(), 1);
    codes[0].1
}

/// Batches whose record count, lastOffsetDelta or record header counts lie
/// are refused with CORRUPT_MESSAGE or INVALID_RECORD for their partition,
/// on a connection that stays open; nothing of them is stored, and the
/// valid batches around them are.
#[test]
fn record_batches_whose_counts_lie_are_refused_and_not_stored() {
    with_shared(|b| {
        let mut w = Witness::open(b, WITNESS_TOPIC);
        let mut s = connect(b);
        let mut stored = Vec::new();
        let mut good = |s: &mut TcpStream, after: &str| {
            let value = format!("good-{}", stored.len());
            let code = produce_one(s, LIES_TOPIC, batch(std::slice::from_ref(&value)).to_vec());
            assert_eq!(code, 0, "a valid batch after {after}");
            stored.push(value);
        };
        good(&mut s, "nothing");
        let codecs = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ];
        for codec in codecs {
            for lie in lies(codec) {
                let code = produce_one(&mut s, LIES_TOPIC, lie.batch);
                println!("lies: {} -> {code}", lie.what);
                assert!(
                    code == CORRUPT_MESSAGE || code == INVALID_RECORD,
                    "{}: error {code}",
                    lie.what
                );
                good(&mut s, &lie.what);
            }
        }
        // The end offset counts every stored record: no refused batch
        // took an offset.
        let end: ListOffsetsResponse = call(
            &mut s,
            ApiKey::ListOffsets,
            7,
            &list_offsets_request(LIES_TOPIC, &[0]),
        );
        let end = &end.topics[0].partitions[0];
        assert_eq!(
            (end.error_code, end.offset),
            (0, stored.len() as i64),
            "end offset"
        );
        let got = consume_all(b, LIES_TOPIC, 1, stored.len(), Duration::from_secs(20));
        let values: Vec<&str> = got.iter().map(|m| m.value.as_str()).collect();
        assert_eq!(
            values, stored,
            "only the valid batches are stored, in order"
        );
        let offsets: Vec<i64> = got.iter().map(|m| m.offset).collect();
        let expected: Vec<i64> = (0..stored.len() as i64).collect();
        assert_eq!(offsets, expected, "no offsets taken by refused batches");
        // Inside compressed records: answered, never a close or a crash.
        for lie in lies_in_payload() {
            let code = produce_one(&mut s, LIES_PAYLOAD_TOPIC, lie.batch);
            println!(
                "lies in compressed records (not decompressed): {} -> {code}",
                lie.what
            );
        }
        let r: ApiVersionsResponse = call(
            &mut s,
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default(),
        );
        assert_eq!(r.error_code, 0, "the connection is still served");
        w.check(WITNESS_TOPIC, "lying batches");
        assert!(b.alive());
    });
}

/// Clients that park a long-poll Fetch (50 s) and then close their socket
/// do not hold their connection, nor the shard's waiter, for the rest of
/// the wait: both are gone within seconds.
#[test]
fn a_long_poll_ends_with_its_client() {
    const CLIENTS: usize = 20;
    const PARKED_TOPIC: &str = "parked";
    with_shared(|b| {
        if !topic_exists(b, PARKED_TOPIC) {
            create_topic(b, PARKED_TOPIC, 1);
        }
        let idle_connections = connections(b);
        let idle_waiters = metric_sum(b, FETCH_WAITERS).unwrap_or(0);
        let mut req = fetch_request(PARKED_TOPIC, 0..1);
        req.max_wait_ms = 50_000;
        let socks: Vec<TcpStream> = (0..CLIENTS)
            .map(|i| {
                let mut s = connect(b);
                let frame = request_frame(ApiKey::Fetch, 12, i as i32, &req);
                s.write_all(&frame).expect("send fetch");
                s
            })
            .collect();
        let parked = wait_for(
            Duration::from_secs(10),
            || metric_sum(b, FETCH_WAITERS).unwrap_or(0),
            |w| w >= idle_waiters + CLIENTS as u64,
        );
        assert!(
            parked >= idle_waiters + CLIENTS as u64,
            "parked fetches: {parked}"
        );
        let closed_at = Instant::now();
        drop(socks);
        let waiters = wait_for(
            Duration::from_secs(10),
            || metric_sum(b, FETCH_WAITERS).unwrap_or(0),
            |w| w <= idle_waiters,
        );
        let open = wait_for(
            Duration::from_secs(10),
            || connections(b),
            |c| c <= idle_connections,
        );
        eprintln!(
            "long polls released {:?} after their clients closed",
            closed_at.elapsed()
        );
        assert_eq!(
            waiters, idle_waiters,
            "fetch waiters after the clients closed"
        );
        assert_eq!(
            open, idle_connections,
            "connections after the clients closed"
        );
        assert!(b.alive());
    });
}

const FETCH_WAITERS: &str = "sluice_shard_fetch_waiters";

fn topic_exists(b: &Broker, topic: &str) -> bool {
    let mut s = connect(b);
    let mut t = MetadataRequestTopic::default();
    t.name = Some(name(topic));
    let mut req = MetadataRequest::default();
    req.topics = Some(vec![t]);
    let resp: MetadataResponse = call(&mut s, ApiKey::Metadata, 4, &req);
    resp.topics.first().is_some_and(|t| t.error_code == 0)
}

/// A Metadata v4 request of null topic names (2 bytes each on the wire,
/// ~72 decoded) whose frame and decoded arrays together exceed the
/// request-buffer pool is closed at once (`decoded_too_large`) rather than
/// waiting for memory only it holds; a client meanwhile is not held up.
#[test]
fn a_frame_that_decodes_past_the_pool_is_refused_at_once() {
    with_shared(|b| {
        let mut w = Witness::open(b, WITNESS_TOPIC);
        let pool = metric_min_where(b, POOL_LIMIT, REQUEST_BUFFERS).expect("pool limit");
        let elem = std::mem::size_of::<MetadataRequestTopic>() as u64;
        let n = pool / (elem + 2) + 1000;
        let mut body = BytesMut::new();
        body.put_i32(i32::try_from(n).expect("count"));
        for _ in 0..n {
            body.put_i16(-1);
        }
        body.put_u8(0); // allow_auto_topic_creation
        let mut f = frame(
            ApiKey::Metadata,
            4,
            "decoded-too-large",
            &MetadataRequest::default(),
        );
        // The default request's body (empty array, allow_auto) is replaced.
        f.truncate(f.len() - 5);
        f.extend_from_slice(&body);
        let size = i32::try_from(f.len() - 4).expect("size");
        f[..4].copy_from_slice(&size.to_be_bytes());
        let label = "reason=\"decoded_too_large\"";
        let before = metric_sum_where(b, REJECTED, label).unwrap_or(0);
        let started = Instant::now();
        let mut s = connect(b);
        s.write_all(&f).expect("write");
        assert_closed(&mut s);
        let closed_after = started.elapsed();
        eprintln!(
            "{} byte frame of {n} null names closed after {closed_after:?}",
            f.len()
        );
        assert!(closed_after < Duration::from_secs(5), "{closed_after:?}");
        let after = wait_for(
            Duration::from_secs(5),
            || metric_sum_where(b, REJECTED, label).unwrap_or(0),
            |v| v > before,
        );
        assert_eq!(after, before + 1, "{REJECTED}{{{label}}}");
        w.check(WITNESS_TOPIC, "after a frame that decodes past the pool");
        assert!(b.alive());
    });
}
