//! Memory budget, partition limits and the admin memory endpoints, against
//! the real `sluice` binary with rdkafka clients.
//!
//! - `/metrics` and `/admin/memory` answer with every pool of every shard;
//! - a partition count beyond `--partitions-per-shard-max` is refused with
//!   POLICY_VIOLATION and a message naming the limit; one warning at 80%;
//! - many producers with large batches and consumers with large fetches
//!   keep RSS under the budget plus a fixed overhead; full pools make work
//!   wait (pool waits counted on /metrics) instead of failing it: every
//!   record is acknowledged and read back, and afterwards connections,
//!   tasks and the transient pools return to their idle baseline (the leak
//!   test);
//! - a client that sends a large Fetch and never reads the answer is
//!   disconnected after the write bound, and the response's memory
//!   (`fetch_response`) is released.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client_config, consume_all, create_topic, http_get, Broker};
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde_json::Value;

fn memory_report(b: &Broker) -> Value {
    serde_json::from_str(&http_get(b, "/admin/memory")).expect("/admin/memory is JSON")
}

fn pool(shard: &Value, name: &str) -> u64 {
    shard["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["pool"] == name)
        .and_then(|p| p["used_bytes"].as_u64())
        .unwrap_or_else(|| panic!("pool {name} missing: {shard}"))
}

#[test]
fn metrics_and_memory_report_cover_every_shard_and_pool() {
    let b = Broker::start(2);
    create_topic(&b, "m", 4);
    let text = http_get(&b, "/metrics");
    for family in [
        "sluice_process_resident_bytes",
        "sluice_shard_pool_used_bytes{shard=\"1\",pool=\"request_buffers\"}",
        "sluice_shard_pool_limit_bytes{shard=\"0\",pool=\"partition_state\"}",
        "sluice_shard_pool_used_bytes{shard=\"0\",pool=\"io_memory\"}",
        "sluice_shard_partitions{shard=\"0\"}",
        "sluice_shard_connections{shard=\"1\"}",
        "sluice_shard_tasks{shard=\"0\"}",
        "sluice_shard_wal_sync_latency_seconds_bucket{",
        "sluice_shard_wal_commit_bytes_count{shard=\"1\"}",
        "sluice_shard_produce_latency_seconds_count{shard=\"0\"}",
        "sluice_shard_fetch_latency_seconds_sum{shard=\"1\"}",
    ] {
        assert!(text.contains(family), "/metrics lacks {family}:\n{text}");
    }
    let report = memory_report(&b);
    assert!(report["process"]["rss_bytes"].as_u64().unwrap_or(0) > 0);
    let shards = report["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    let partitions: u64 = shards
        .iter()
        .map(|s| s["partitions"].as_u64().unwrap_or(0))
        .sum();
    // __consumer_offsets and __transaction_state have as many each.
    let internal = 2 * u64::from(sluice_shard::group::offsets_topic_partitions(2));
    assert_eq!(
        partitions,
        4 + internal,
        "4 of topic m and {internal} of __consumer_offsets and __transaction_state"
    );
    let charged: u64 = shards.iter().map(|s| pool(s, "partition_state")).sum();
    assert!(charged > 0, "partitions are charged to the budget");
    let top = shards[0]["top_topics"].as_array().expect("top_topics");
    assert!(top.iter().any(|t| t["topic"] == "m"), "{report}");
}

#[test]
fn partition_limit_is_refused_with_a_message_naming_it() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    // __consumer_offsets and __transaction_state take `internal` of the 40
    // partitions the shard accepts; "fits" brings the count to 80%.
    let internal = 2 * sluice_shard::group::offsets_topic_partitions(1) as i32;
    assert_eq!(internal, 16, "the arithmetic below assumes 16");
    let b = Broker::start_with(1, &["--partitions-per-shard-max", "40"]);
    create_topic(&b, "fits", 32 - internal);
    let admin: AdminClient<DefaultClientContext> = client_config(&b).create().expect("admin");
    let topic = NewTopic::new("too-many", 9, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results =
        futures::executor::block_on(admin.create_topics([&topic], &opts)).expect("create_topics");
    match &results[0] {
        Err((_, RDKafkaErrorCode::PolicyViolation)) => {}
        other => panic!("expected POLICY_VIOLATION, got {other:?}"),
    }
    create_topic(&b, "exactly", 8);
    let log = b.log_text();
    assert_eq!(
        log.matches("partition count reached 80%").count(),
        1,
        "one warning at 80%:\n{log}"
    );
    // The raw response carries the message naming the limit.
    let msg = create_topics_message(&b, "again", 1);
    assert!(
        msg.contains("partition limit of 40") && msg.contains("--partitions-per-shard-max"),
        "{msg}"
    );
}

fn create_topics_message(b: &Broker, name: &str, partitions: i32) -> String {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{ApiKey, CreateTopicsRequest, CreateTopicsResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let mut t = CreatableTopic::default();
    t.name = TopicName(StrBytes::from_string(name.to_string()));
    t.num_partitions = partitions;
    t.replication_factor = 1;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 10_000;
    let mut s = common::connect(b);
    let resp: CreateTopicsResponse = common::call(&mut s, ApiKey::CreateTopics, 5, &req);
    let r = &resp.topics[0];
    assert_eq!(r.error_code, 44, "POLICY_VIOLATION");
    r.error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default()
}

const LOAD_TOPIC: &str = "load";
const LOAD_PARTITIONS: i32 = 8;
const PRODUCERS: usize = 6;
const RECORDS_PER_PRODUCER: usize = 1000;
const VALUE_BYTES: usize = 16 << 10;
/// The broker's `--memory` in this test, and what its peak RSS may add to
/// it and to the idle process (binary, libraries, thread stacks): memory the
/// allocator keeps after it was freed (glibc's heap).
const MEMORY_MIB: u64 = 64;
const ALLOCATOR_SLACK_MIB: u64 = 32;
/// How long the slow consumers may take to read the log after the load.
const SLOW_READ_TIME_MAX: Duration = Duration::from_secs(40);

/// What one producer thread saw: the acknowledged records
/// ((partition, offset), value prefix) and the failed deliveries.
type ProducerOutcome = (Vec<((i32, i64), String)>, Vec<String>);

/// One producer thread: large batches, acks=all.
fn produce_load(b: &Broker, id: usize) -> ProducerOutcome {
    let p: FutureProducer = client_config(b)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    let body = "x".repeat(VALUE_BYTES);
    let mut pending = Vec::new();
    for i in 0..RECORDS_PER_PRODUCER {
        let tag = format!("p{id}-r{i}:");
        let value = format!("{tag}{body}");
        let partition = (i % LOAD_PARTITIONS as usize) as i32;
        let record = FutureRecord::to(LOAD_TOPIC)
            .partition(partition)
            .key("k")
            .payload(&value);
        let fut = send_when_room(&p, record);
        pending.push((tag, fut));
    }
    let (mut acked, mut failed) = (Vec::new(), Vec::new());
    for (tag, fut) in pending {
        match futures::executor::block_on(fut) {
            Ok(Ok(d)) => acked.push(((d.partition, d.offset), tag)),
            Ok(Err((e, _))) => failed.push(format!("{tag} {e}")),
            Err(_) => failed.push(format!("{tag} delivery future canceled")),
        }
    }
    (acked, failed)
}

/// A consumer reading from the start with large fetches, slowly, until
/// told to stop.
fn slow_consumer(b: &Broker, stop: &AtomicBool, read: &AtomicU64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let c: BaseConsumer = client_config(b)
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("fetch.wait.max.ms", "500")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..LOAD_PARTITIONS {
        tpl.add_partition_offset(LOAD_TOPIC, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            read.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn saturated_pools_keep_rss_bounded_and_acknowledged_records_survive() {
    let b = Arc::new(Broker::start_with(
        1,
        &["--memory", &format!("{MEMORY_MIB}MiB")],
    ));
    create_topic(&b, LOAD_TOPIC, LOAD_PARTITIONS);
    let idle = memory_report(&b);
    eprintln!("idle process memory: {}", idle["process"]);
    let baseline = idle["shards"][0].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let (b, stop, read) = (Arc::clone(&b), Arc::clone(&stop), Arc::clone(&read));
            std::thread::spawn(move || slow_consumer(&b, &stop, &read))
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || produce_load(&b, id))
        })
        .collect();
    let (mut acked, mut failed) = (Vec::new(), Vec::new());
    for p in producers {
        let (a, f) = p.join().expect("producer thread");
        acked.extend(a);
        failed.extend(f);
    }
    // The consumers go on reading everything with their large fetches
    // (bounded in time), so fetch answers meet a full log.
    let total = (PRODUCERS * RECORDS_PER_PRODUCER) as u64;
    let deadline = Instant::now() + SLOW_READ_TIME_MAX;
    while read.load(Ordering::Relaxed) < 3 * total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for c in consumers {
        c.join().expect("consumer thread");
    }
    eprintln!("process memory after: {}", memory_report(&b)["process"]);
    // The kernel's high-water mark covers the whole run, between samples too.
    let rss_peak = memory_report(&b)["process"]["rss_peak_bytes"]
        .as_u64()
        .unwrap_or(0);
    let idle_rss = idle["process"]["rss_bytes"].as_u64().unwrap_or(0);
    let bound = idle_rss + ((MEMORY_MIB + ALLOCATOR_SLACK_MIB) << 20);
    let consumed = read.load(Ordering::Relaxed);
    eprintln!(
        "rss peak (VmHWM) {} MiB, bound {} MiB; {} acknowledged of {}; consumers read {consumed}",
        rss_peak >> 20,
        bound >> 20,
        acked.len(),
        PRODUCERS * RECORDS_PER_PRODUCER,
    );
    assert!(
        consumed >= total,
        "the slow consumers read at least one copy of the log: {consumed} of {total}"
    );
    eprintln!(
        "pools after the load: {}",
        memory_report(&b)["shards"][0]["pools"]
    );
    assert!(
        rss_peak > 0 && rss_peak <= bound,
        "RSS {rss_peak} over {bound}"
    );
    let waits = pool_waits(&b);
    eprintln!("pool waits on /metrics: {waits:?}");
    assert!(
        failed.is_empty(),
        "{} deliveries failed, first: {}",
        failed.len(),
        failed[0]
    );
    assert_eq!(
        acked.len(),
        PRODUCERS * RECORDS_PER_PRODUCER,
        "every record is acknowledged"
    );
    assert!(
        waits.values().sum::<u64>() > 0,
        "full pools made work wait (backpressure): {waits:?}"
    );
    assert_every_ack_survives(&b, &acked);
    assert_back_to_baseline(&b, &baseline);
}

/// `sluice_shard_pool_waits_total` of shard 0, by pool.
fn pool_waits(b: &Broker) -> HashMap<String, u64> {
    let text = http_get(b, "/metrics");
    text.lines()
        .filter_map(|l| l.strip_prefix("sluice_shard_pool_waits_total{"))
        .filter_map(|l| {
            let (labels, value) = l.split_once("} ")?;
            let pool = labels.split("pool=\"").nth(1)?.split('"').next()?;
            Some((pool.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn assert_every_ack_survives(b: &Broker, acked: &[((i32, i64), String)]) {
    let total_offsets = acked.iter().map(|((_, o), _)| *o + 1).max().unwrap_or(0);
    let expected = acked.len();
    let got = consume_all(
        b,
        LOAD_TOPIC,
        LOAD_PARTITIONS,
        expected.max(total_offsets as usize),
        Duration::from_secs(120),
    );
    let stored: HashMap<(i32, i64), &str> = got
        .iter()
        .map(|m| ((m.partition, m.offset), m.value.as_str()))
        .collect();
    for ((partition, offset), tag) in acked {
        let value = stored
            .get(&(*partition, *offset))
            .unwrap_or_else(|| panic!("acknowledged record {partition}/{offset} is missing"));
        assert!(
            value.starts_with(tag.as_str()),
            "{partition}/{offset} holds another record"
        );
    }
}

/// After the clients are gone: no connection, no produce task, no request,
/// produce or fetch memory held, the same long-lived tasks as before.
fn assert_back_to_baseline(b: &Broker, baseline: &Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = memory_report(b)["shards"][0].clone();
        let settled = now["connections"] == 0
            && now["produce_tasks"] == 0
            && now["fetch_waiters"] == 0
            && now["tasks"] == baseline["tasks"]
            && pool(&now, "request_buffers") == 0
            && pool(&now, "produce_inflight") == 0
            && pool(&now, "fetch_response") == 0
            && pool(&now, "io_memory") == pool(baseline, "io_memory");
        if settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not back to the idle baseline:\nnow {now}\nbaseline {baseline}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const STALLED_TOPIC: &str = "stalled";
/// Records of `STALLED_VALUE_BYTES` in the stalled reader's topic: far more
/// than the loopback socket buffers hold, so the reply cannot be written.
const STALLED_RECORDS: usize = 24;
const STALLED_VALUE_BYTES: usize = 700 << 10;
/// The broker's write bound (`REPLY_WRITE_TIMEOUT`, 30 s) and some slack.
const STALLED_DISCONNECT_WITHIN: Duration = Duration::from_secs(60);

#[test]
fn a_client_that_never_reads_its_fetch_answer_is_disconnected_and_its_memory_released() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, FetchRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let b = Broker::start_with(1, &["--memory", "256MiB"]);
    create_topic(&b, STALLED_TOPIC, 1);
    let p = common::producer(&b, &[("acks", "all"), ("batch.size", "1000000")]);
    let value = "v".repeat(STALLED_VALUE_BYTES);
    let records: Vec<_> = (0..STALLED_RECORDS)
        .map(|i| (0, format!("k{i}"), value.clone(), None))
        .collect();
    common::produce_all(&p, STALLED_TOPIC, &records);
    drop(p);

    let mut partition = FetchPartition::default();
    partition.partition = 0;
    partition.fetch_offset = 0;
    partition.partition_max_bytes = 64 << 20;
    let mut topic = FetchTopic::default();
    topic.topic = TopicName(StrBytes::from_static_str(STALLED_TOPIC));
    topic.partitions = vec![partition];
    let mut req = FetchRequest::default();
    req.replica_id = kafka_protocol::messages::BrokerId(-1);
    req.max_wait_ms = 0;
    req.min_bytes = 1;
    req.max_bytes = 64 << 20;
    req.topics = vec![topic];
    let mut s = common::connect(&b);
    s.write_all(&common::request_frame(ApiKey::Fetch, 4, 9, &req))
        .expect("send the fetch");
    // Never read: the reply stalls in the socket, its batches charged.
    let started = Instant::now();
    let response_bytes = (STALLED_RECORDS * STALLED_VALUE_BYTES) as u64;
    let mut held_peak = 0;
    loop {
        let shard = memory_report(&b)["shards"][0].clone();
        let held = pool(&shard, "fetch_response");
        held_peak = held_peak.max(held);
        if held_peak > 0 && held == 0 && shard["connections"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < STALLED_DISCONNECT_WITHIN,
            "the stalled reader is still connected or its memory held \
             (fetch_response peak {held_peak}): {shard}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "disconnected after {:?}; fetch_response held {held_peak} bytes meanwhile",
        started.elapsed()
    );
    assert!(
        held_peak >= response_bytes,
        "the response's batches ({response_bytes} bytes) were charged, peak {held_peak}"
    );
    // The client sees the end of the stream before the whole reply.
    let mut read = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => read += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("expected a closed connection, got {e}"),
        }
    }
    assert!(read < response_bytes, "read {read} of {response_bytes}");
    common::assert_healthy(&b);
}

const FIRE_TOPIC: &str = "fire-and-forget";
const FIRE_PRODUCERS: usize = 4;
const FIRE_RECORDS_PER_PRODUCER: usize = 1500;

/// One acks=0 producer: the broker answers nothing, so a produce it drops
/// is lost silently. Returns the tags of the records it sent.
fn produce_unacknowledged(b: &Broker, id: usize) -> Vec<String> {
    let p: FutureProducer = client_config(b)
        .set("acks", "0")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    let body = "y".repeat(VALUE_BYTES);
    let mut pending = Vec::new();
    for i in 0..FIRE_RECORDS_PER_PRODUCER {
        let tag = format!("z{id}-r{i}:");
        let value = format!("{tag}{body}");
        let partition = (i % LOAD_PARTITIONS as usize) as i32;
        let record = FutureRecord::<(), _>::to(FIRE_TOPIC)
            .partition(partition)
            .payload(&value);
        let fut = send_when_room(&p, record);
        pending.push((tag, fut));
    }
    pending
        .into_iter()
        .map(|(tag, fut)| {
            let sent = futures::executor::block_on(fut);
            assert!(matches!(sent, Ok(Ok(_))), "{tag} not sent: {sent:?}");
            tag
        })
        .collect()
}

#[test]
fn fire_and_forget_producers_wait_for_memory_instead_of_losing_records() {
    let b = Arc::new(Broker::start_with(
        1,
        &["--memory", &format!("{MEMORY_MIB}MiB")],
    ));
    create_topic(&b, FIRE_TOPIC, LOAD_PARTITIONS);
    let baseline = memory_report(&b)["shards"][0].clone();
    let producers: Vec<_> = (0..FIRE_PRODUCERS)
        .map(|id| {
            let b = Arc::clone(&b);
            // Client threads of the test (the broker is another process).
            std::thread::spawn(move || produce_unacknowledged(&b, id))
        })
        .collect();
    let sent: Vec<String> = producers
        .into_iter()
        .flat_map(|p| p.join().expect("producer thread"))
        .collect();
    let waits = pool_waits(&b);
    let got = consume_all(
        &b,
        FIRE_TOPIC,
        LOAD_PARTITIONS,
        sent.len(),
        Duration::from_secs(120),
    );
    eprintln!(
        "{} sent, {} stored; pool waits {waits:?}; {}",
        sent.len(),
        got.len(),
        memory_report(&b)["shards"][0]["pools"]
    );
    let stored: std::collections::HashSet<&str> = got
        .iter()
        .filter_map(|m| m.value.split_once(':').map(|(tag, _)| tag))
        .collect();
    let lost: Vec<_> = sent
        .iter()
        .filter(|t| !stored.contains(t.trim_end_matches(':')))
        .collect();
    assert!(
        lost.is_empty(),
        "{} records lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    assert!(
        waits.get("produce_inflight").copied().unwrap_or(0) > 0,
        "in-flight produce memory filled and produces waited: {waits:?}"
    );
    assert_back_to_baseline(&b, &baseline);
}

/// Queues `record`, waiting while the client's own queue is full.
fn send_when_room<K, P>(p: &FutureProducer, mut record: FutureRecord<'_, K, P>) -> DeliveryFuture
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match p.send_result(record) {
            Ok(fut) => return fut,
            Err((_, back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn group_state(b: &Broker) -> u64 {
    pool(&memory_report(b)["shards"][0], "group_state")
}

#[test]
fn a_deleted_group_returns_the_group_state_pool_to_its_baseline() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let b = Broker::start_with(1, &["--group-initial-rebalance-delay-ms", "200"]);
    create_topic(&b, "gs", 4);
    let baseline = group_state(&b);
    let text = http_get(&b, "/metrics");
    let family = "sluice_shard_pool_used_bytes{shard=\"0\",pool=\"group_state\"}";
    assert!(text.contains(family), "/metrics lacks {family}");
    {
        let consumer: BaseConsumer = client_config(&b)
            .set("group.id", "gs-group")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "300")
            .create()
            .expect("consumer");
        consumer.subscribe(&["gs"]).expect("subscribe");
        let deadline = Instant::now() + Duration::from_secs(60);
        while consumer.assignment().map_or(0, |a| a.count()) < 4 {
            assert!(Instant::now() < deadline, "no assignment");
            let _ = consumer.poll(Duration::from_millis(50));
        }
        let with_member = group_state(&b);
        assert!(
            with_member > baseline,
            "a member is charged: {with_member} <= {baseline}"
        );
        let mut tpl = TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition_offset("gs", p, Offset::Offset(1))
                .expect("offset");
        }
        consumer.commit(&tpl, CommitMode::Sync).expect("commit");
        assert!(group_state(&b) > with_member, "offsets are charged");
    }
    // The consumer left (closed on drop); its offsets keep the group.
    let deadline = Instant::now() + Duration::from_secs(30);
    let admin: AdminClient<DefaultClientContext> = client_config(&b).create().expect("admin");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    loop {
        let res = futures::executor::block_on(admin.delete_groups(&["gs-group"], &opts))
            .expect("delete_groups");
        if res.iter().all(|r| r.is_ok()) {
            break;
        }
        // NON_EMPTY_GROUP until the leave is processed.
        assert!(Instant::now() < deadline, "group never deleted: {res:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while group_state(&b) != baseline {
        assert!(
            Instant::now() < deadline,
            "group_state stays at {} (baseline {baseline})",
            group_state(&b)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
