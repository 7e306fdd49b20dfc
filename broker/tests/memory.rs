//! Memory budget, partition limits and the admin memory endpoints, against
//! the real `sluice` binary with rdkafka clients.
//!
//! - `/metrics` and `/admin/memory` answer with every pool of every shard;
//! - a partition count beyond `--partitions-per-shard-max` is refused with
//!   POLICY_VIOLATION and a message naming the limit; one warning at 80%;
//! - many producers with large batches and consumers with large fetches
//!   keep RSS under the budget plus a fixed overhead, every acknowledged
//!   record is read back, and afterwards connections, tasks and the
//!   transient pools return to their idle baseline (the leak test).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client_config, consume_all, create_topic, Broker};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

/// Plain HTTP/1.1 GET on the admin port; returns the body.
fn http_get(b: &Broker, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", b.admin_port)).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    assert!(text.starts_with("HTTP/1.1 200"), "GET {path}: {text}");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    body.to_string()
}

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
    let internal = u64::from(sluice_shard::group::offsets_topic_partitions(2));
    assert_eq!(
        partitions,
        4 + internal,
        "4 of topic m and {internal} of __consumer_offsets"
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
    // __consumer_offsets takes `internal` of the 20 partitions the shard
    // accepts; "fits" brings the count to 80%.
    let internal = sluice_shard::group::offsets_topic_partitions(1) as i32;
    assert_eq!(internal, 8, "the arithmetic below assumes 8");
    let b = Broker::start_with(1, &["--partitions-per-shard-max", "20"]);
    create_topic(&b, "fits", 16 - internal);
    let admin: AdminClient<DefaultClientContext> = client_config(&b).create().expect("admin");
    let topic = NewTopic::new("too-many", 5, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results =
        futures::executor::block_on(admin.create_topics([&topic], &opts)).expect("create_topics");
    match &results[0] {
        Err((_, RDKafkaErrorCode::PolicyViolation)) => {}
        other => panic!("expected POLICY_VIOLATION, got {other:?}"),
    }
    create_topic(&b, "exactly", 4);
    let log = b.log_text();
    assert_eq!(
        log.matches("partition count reached 80%").count(),
        1,
        "one warning at 80%:\n{log}"
    );
    // The raw response carries the message naming the limit.
    let msg = create_topics_message(&b, "again", 1);
    assert!(
        msg.contains("partition limit of 20") && msg.contains("--partitions-per-shard-max"),
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
/// The broker's `--memory` in this test, and what RSS may add to it
/// (binary, libraries, thread stacks, allocator slack).
const MEMORY_MIB: u64 = 64;
const FIXED_OVERHEAD_MIB: u64 = 48;

/// One producer thread: large batches, acks=all. Returns what was
/// acknowledged: (partition, offset) -> value prefix.
fn produce_load(b: &Broker, id: usize) -> Vec<((i32, i64), String)> {
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
        let mut record = FutureRecord::to(LOAD_TOPIC)
            .partition(partition)
            .key("k")
            .payload(&value);
        let fut = loop {
            match p.send_result(record) {
                Ok(fut) => break fut,
                // The client's own queue is full: wait for deliveries.
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        pending.push((tag, fut));
    }
    let mut acked = Vec::new();
    for (tag, fut) in pending {
        if let Ok(Ok(d)) = futures::executor::block_on(fut) {
            acked.push(((d.partition, d.offset), tag));
        }
    }
    acked
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
    let baseline = memory_report(&b)["shards"][0].clone();
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
    let mut rss_peak = 0u64;
    let mut sampled = 0;
    while producers.iter().any(|p| !p.is_finished()) {
        let r = memory_report(&b);
        rss_peak = rss_peak.max(r["process"]["rss_bytes"].as_u64().unwrap_or(0));
        sampled += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let acked: Vec<_> = producers
        .into_iter()
        .flat_map(|p| p.join().expect("producer thread"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    for c in consumers {
        c.join().expect("consumer thread");
    }
    let bound = (MEMORY_MIB + FIXED_OVERHEAD_MIB) << 20;
    eprintln!(
        "rss peak {} MiB over {sampled} samples, bound {} MiB; {} acknowledged of {}; consumers read {}",
        rss_peak >> 20,
        bound >> 20,
        acked.len(),
        PRODUCERS * RECORDS_PER_PRODUCER,
        read.load(Ordering::Relaxed)
    );
    eprintln!(
        "pools after the load: {}",
        memory_report(&b)["shards"][0]["pools"]
    );
    assert!(
        rss_peak > 0 && rss_peak <= bound,
        "RSS {rss_peak} over {bound}"
    );
    assert!(
        acked.len() * 2 >= PRODUCERS * RECORDS_PER_PRODUCER,
        "most records are acknowledged eventually"
    );
    assert_every_ack_survives(&b, &acked);
    assert_back_to_baseline(&b, &baseline);
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
