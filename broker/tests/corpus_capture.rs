//! The corpus of real client traffic (`tests/corpus/*.bin`): librdkafka,
//! kafka-python and kafkajs drive the real broker through a recording
//! proxy (`common/proxy.rs`), and every connection's client-to-broker
//! stream (size-prefixed request frames, exactly as sent) is captured.
//!
//! With `SLUICE_CORPUS_WRITE=1` the capture replaces the stored corpus:
//! one file per connection, `<client>-<NN>.bin`, trimmed to stay small
//! (at most `SAME_SHAPE_MAX` frames of one api key, version and size per
//! client). Otherwise the test checks that every stored file is a
//! sequence of whole request frames and that every (api key, api version)
//! the clients sent in this run is in the stored corpus, so the corpus
//! stays representative as the clients or the broker change.
//!
//! The corpus seeds the mutation replay against the live broker
//! (`hostile_replay.rs`) and the in-process fuzzer (`src/fuzz.rs`).

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::executor::block_on;
use proxy::{Recording, RecordingProxy};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// One external client script, at most.
const SCRIPT_MAX: Duration = Duration::from_secs(120);
/// One client wait (admin operation, delivery, consuming).
const WAIT: Duration = Duration::from_secs(30);
/// Frames of one api key, version and size kept per client.
const SAME_SHAPE_MAX: usize = 3;
/// Frames of one api key and version kept per client.
const KEY_VERSION_MAX: usize = 24;
/// The stored corpus, at most.
const CORPUS_BYTES_MAX: usize = 300 * 1024;

const RK_TOPIC: &str = "corpus-rk";
const RK_DOOMED: &str = "corpus-rk-doomed";
const RK_GROUP: &str = "corpus-rk-group";
const RK_PARTITIONS: i32 = 3;
const RK_CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
const RK_RECORDS_PER_PRODUCER: i32 = 16;

#[test]
fn client_traffic_corpus() {
    ensure_python_requirements();
    let node_modules = ensure_node_modules();
    let mut proxy = RecordingProxy::bind(proxy::ProxyLimits::default());
    let advertised = proxy.addr();
    let b = Broker::start_with(
        1,
        &[
            "--advertised-listener",
            &advertised,
            "--group-initial-rebalance-delay-ms",
            "0",
        ],
    );
    proxy.start(b.port);
    let bootstrap = proxy.addr();

    let mut captured: Vec<(&str, Vec<Recording>)> = Vec::new();
    let started = Instant::now();
    let mark = proxy.connections();
    librdkafka_traffic(&bootstrap);
    captured.push(("librdkafka", finish_phase(&proxy, mark)));
    let mark = proxy.connections();
    kafka_python_traffic(&bootstrap);
    captured.push(("kafka-python", finish_phase(&proxy, mark)));
    let mark = proxy.connections();
    kafkajs_traffic(&bootstrap, &node_modules);
    captured.push(("kafkajs", finish_phase(&proxy, mark)));
    assert_eq!(proxy.refused(), 0, "the proxy refused connections");
    assert!(b.alive(), "the broker died:\n{}", b.log_text());

    let clients: Vec<(&str, Vec<Vec<Bytes>>)> = captured
        .iter()
        .map(|(client, recs)| (*client, recs.iter().map(frames_of).collect()))
        .collect();
    let sent = key_versions(&clients);
    for (client, conns) in &clients {
        let frames: usize = conns.iter().map(Vec::len).sum();
        eprintln!(
            "{client}: {} connections, {frames} frames, api keys {:?}",
            conns.len(),
            sent[client].iter().map(|kv| kv.0).collect::<BTreeSet<_>>()
        );
    }
    eprintln!("captured in {:?}", started.elapsed());
    assert_clients_did_their_part(&sent);

    if std::env::var("SLUICE_CORPUS_WRITE").is_ok_and(|v| v == "1") {
        write_corpus(&clients);
    }
    check_stored_corpus(&sent);
}

/// The recordings of the connections accepted since `mark`, once their
/// clients closed them all.
fn finish_phase(proxy: &RecordingProxy, mark: usize) -> Vec<Recording> {
    assert!(
        proxy.wait_all_closed(Duration::from_secs(20)),
        "client connections still open after the client ended"
    );
    let recs = proxy.recordings_from(mark);
    assert!(!recs.is_empty(), "the client made no connection");
    for r in &recs {
        assert!(!r.truncated, "a recording hit the proxy's byte bound");
    }
    recs
}

/// The whole request frames of one recording.
fn frames_of(r: &Recording) -> Vec<Bytes> {
    split_request_frames(&r.bytes).unwrap_or_else(|e| panic!("a recorded stream: {e}"))
}

type Sent<'a> = BTreeMap<&'a str, BTreeSet<(i16, i16)>>;

fn key_versions<'a>(clients: &[(&'a str, Vec<Vec<Bytes>>)]) -> Sent<'a> {
    clients
        .iter()
        .map(|(client, conns)| {
            let set = conns
                .iter()
                .flatten()
                .map(|f| frame_key_version(f))
                .collect();
            (*client, set)
        })
        .collect()
}

/// Each client sent the requests its driver is there for (api keys).
fn assert_clients_did_their_part(sent: &Sent<'_>) {
    // Produce, Fetch, ListOffsets, Metadata, OffsetCommit, OffsetFetch,
    // FindCoordinator, JoinGroup, Heartbeat, LeaveGroup, SyncGroup,
    // ApiVersions, CreateTopics, DeleteTopics, InitProducerId: all three.
    let common: &[i16] = &[0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18, 19, 20, 22];
    let expected: [(&str, &[i16]); 3] = [
        // + ListGroups, DescribeGroups, DeleteRecords, DescribeConfigs,
        // AlterConfigs, CreatePartitions, DeleteGroups.
        ("librdkafka", &[15, 16, 21, 32, 33, 37, 42]),
        // + IncrementalAlterConfigs, OffsetDelete, DescribeCluster.
        ("kafka-python", &[15, 16, 21, 32, 37, 42, 44, 47, 60]),
        ("kafkajs", &[15, 16, 21, 32, 37, 42]),
    ];
    for (client, extra) in expected {
        let keys: BTreeSet<i16> = sent[client].iter().map(|kv| kv.0).collect();
        let missing: Vec<i16> = common
            .iter()
            .chain(extra)
            .copied()
            .filter(|k| !keys.contains(k))
            .collect();
        assert!(
            missing.is_empty(),
            "{client} sent no request of api keys {missing:?}"
        );
    }
}

// ---------------------------------------------------------------- the stored corpus

/// Replaces `tests/corpus/*.bin` with the trimmed capture.
fn write_corpus(clients: &[(&str, Vec<Vec<Bytes>>)]) {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).expect("mkdir corpus");
    for entry in std::fs::read_dir(&dir).expect("read corpus dir") {
        let path = entry.expect("corpus dir entry").path();
        if path.extension().is_some_and(|e| e == "bin") {
            std::fs::remove_file(&path).expect("remove old corpus file");
        }
    }
    let mut total = 0usize;
    for (client, conns) in clients {
        let kept = trim(conns);
        let mut index = 0;
        for frames in kept.iter().filter(|f| !f.is_empty()) {
            let bytes: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
            let path = dir.join(format!("{client}-{index:02}.bin"));
            std::fs::write(&path, &bytes).expect("write corpus file");
            total += bytes.len();
            index += 1;
        }
        eprintln!("wrote {index} files for {client}");
    }
    eprintln!("corpus: {total} bytes in {}", dir.display());
    assert!(
        total <= CORPUS_BYTES_MAX,
        "corpus of {total} bytes is over {CORPUS_BYTES_MAX}"
    );
}

/// One client's connections with repeated frames dropped: at most
/// `SAME_SHAPE_MAX` of one (key, version, size) and `KEY_VERSION_MAX` of
/// one (key, version); the first of each is always kept.
fn trim(conns: &[Vec<Bytes>]) -> Vec<Vec<Bytes>> {
    let mut shapes: HashMap<(i16, i16, usize), usize> = HashMap::new();
    let mut kinds: HashMap<(i16, i16), usize> = HashMap::new();
    conns
        .iter()
        .map(|frames| {
            frames
                .iter()
                .filter(|f| {
                    let (key, version) = frame_key_version(f);
                    let shape = shapes.entry((key, version, f.len())).or_default();
                    let kind = kinds.entry((key, version)).or_default();
                    let keep = *shape < SAME_SHAPE_MAX && *kind < KEY_VERSION_MAX;
                    if keep {
                        *shape += 1;
                        *kind += 1;
                    }
                    keep
                })
                .cloned()
                .collect()
        })
        .collect()
}

/// Every stored file is whole request frames, the corpus is small, and
/// it holds every (api key, api version) the clients sent in this run.
fn check_stored_corpus(sent: &Sent<'_>) {
    let stored = corpus_frames();
    assert!(
        !stored.is_empty(),
        "no corpus in {}: run with SLUICE_CORPUS_WRITE=1",
        corpus_dir().display()
    );
    let mut total = 0usize;
    let mut have: BTreeMap<String, BTreeSet<(i16, i16)>> = BTreeMap::new();
    for (name, frames) in &stored {
        assert!(!frames.is_empty(), "{name} holds no frame");
        let client = name
            .rsplit_once('-')
            .map(|(c, _)| c.to_string())
            .expect("<client>-<NN>.bin");
        for f in frames {
            total += f.len();
            have.entry(client.clone())
                .or_default()
                .insert(frame_key_version(f));
        }
    }
    assert!(total <= CORPUS_BYTES_MAX, "corpus of {total} bytes");
    let mut missing = Vec::new();
    for (client, kvs) in sent {
        let stored = have.get(*client).cloned().unwrap_or_default();
        missing.extend(
            kvs.difference(&stored)
                .map(|(k, v)| format!("{client}: api key {k} v{v}")),
        );
    }
    assert!(
        missing.is_empty(),
        "the stored corpus lacks requests the clients send now: {missing:?}; \
         regenerate it with SLUICE_CORPUS_WRITE=1 cargo test -p sluice --test corpus_capture"
    );
    eprintln!("stored corpus: {} files, {total} bytes", stored.len());
}

// ---------------------------------------------------------------- librdkafka

fn rk_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("client.id", "corpus-librdkafka")
        .set("socket.timeout.ms", "10000")
        .set("message.timeout.ms", "20000");
    c
}

fn rk_admin_opts() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(WAIT))
}

/// Admin, a producer per compression codec, an idempotent producer, a
/// consumer group, offsets and deletions.
fn librdkafka_traffic(bootstrap: &str) {
    let admin: AdminClient<DefaultClientContext> = rk_config(bootstrap).create().expect("admin");
    let main = NewTopic::new(RK_TOPIC, RK_PARTITIONS, TopicReplication::Fixed(1))
        .set("retention.ms", "3600000")
        .set("cleanup.policy", "delete")
        .set("max.message.bytes", "1048576");
    let doomed = NewTopic::new(RK_DOOMED, 1, TopicReplication::Fixed(1));
    for r in block_on(admin.create_topics([&main, &doomed], &rk_admin_opts())).expect("create") {
        r.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }
    admin
        .inner()
        .fetch_metadata(None, WAIT)
        .expect("librdkafka's all-topics Metadata (closed by the broker? see its log)");
    let topic = ResourceSpecifier::Topic(RK_TOPIC);
    for r in block_on(admin.describe_configs([&topic], &rk_admin_opts())).expect("describe") {
        r.expect("describe configs");
    }
    let alter = AlterConfig::new(ResourceSpecifier::Topic(RK_TOPIC))
        .set("retention.ms", "7200000")
        .set("cleanup.policy", "delete");
    for r in block_on(admin.alter_configs([&alter], &rk_admin_opts())).expect("alter") {
        r.expect("alter configs");
    }
    let grow = NewPartitions::new(RK_DOOMED, 2);
    for r in block_on(admin.create_partitions([&grow], &rk_admin_opts())).expect("grow") {
        r.unwrap_or_else(|(t, e)| panic!("create partitions {t}: {e}"));
    }

    for codec in RK_CODECS {
        rk_produce(bootstrap, RK_TOPIC, &[("compression.codec", codec)]);
    }
    rk_produce(bootstrap, RK_TOPIC, &[("enable.idempotence", "true")]);
    rk_produce(bootstrap, RK_DOOMED, &[]);
    let expected = (RK_CODECS.len() as i32 + 1) * RK_RECORDS_PER_PRODUCER;
    rk_consume_group(bootstrap, expected);

    let mut upto = TopicPartitionList::new();
    upto.add_partition_offset(RK_DOOMED, 0, Offset::Offset(1))
        .expect("tpl");
    block_on(admin.delete_records(&upto, &rk_admin_opts())).expect("delete records");
    for r in block_on(admin.delete_groups(&[RK_GROUP], &rk_admin_opts())).expect("delete groups") {
        r.unwrap_or_else(|(g, e)| panic!("delete group {g}: {e}"));
    }
    for r in block_on(admin.delete_topics(&[RK_DOOMED], &rk_admin_opts())).expect("delete") {
        r.unwrap_or_else(|(t, e)| panic!("delete {t}: {e}"));
    }
}

/// `RK_RECORDS_PER_PRODUCER` keyed records with headers, acks=all, over
/// the topic's first partitions, through a fresh producer.
fn rk_produce(bootstrap: &str, topic: &str, extra: &[(&str, &str)]) {
    let mut c = rk_config(bootstrap);
    c.set("acks", "all").set("linger.ms", "5");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    let p: FutureProducer = c.create().expect("producer");
    let tag = extra.first().map_or("plain", |kv| kv.1);
    let futures: Vec<_> = (0..RK_RECORDS_PER_PRODUCER)
        .map(|i| {
            let key = format!("k{i}");
            let value = format!("librdkafka {tag} record {i} {}", "x".repeat(40));
            let headers = OwnedHeaders::new().insert(Header {
                key: "h",
                value: Some(&format!("v{i}")),
            });
            let record = FutureRecord::to(topic)
                .partition(i % 2)
                .key(&key)
                .payload(&value)
                .headers(headers);
            p.send_result(record).map_err(|(e, _)| e).expect("enqueue")
        })
        .collect();
    for f in futures {
        let delivery = block_on(f).expect("delivery future");
        delivery.unwrap_or_else(|(e, _)| panic!("delivery ({tag}): {e}"));
    }
}

/// A consumer group member: subscribes, reads `expected` records, commits,
/// reads committed offsets, watermarks, offsets for a time and the group
/// list, heartbeats a while, leaves.
fn rk_consume_group(bootstrap: &str, expected: i32) {
    let mut c = rk_config(bootstrap);
    c.set("group.id", RK_GROUP)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "200")
        .set("fetch.wait.max.ms", "100");
    let consumer: BaseConsumer = c.create().expect("consumer");
    consumer.subscribe(&[RK_TOPIC]).expect("subscribe");
    let deadline = Instant::now() + WAIT;
    let mut got = 0;
    while got < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => eprintln!("librdkafka consumer: {e}"),
            None => {}
        }
    }
    assert_eq!(got, expected, "librdkafka group consumer read too few");
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    consumer.committed(WAIT).expect("committed");
    let mut times = TopicPartitionList::new();
    for p in 0..RK_PARTITIONS {
        consumer
            .fetch_watermarks(RK_TOPIC, p, WAIT)
            .expect("watermarks");
        times
            .add_partition_offset(RK_TOPIC, p, Offset::Offset(0))
            .expect("tpl");
    }
    consumer
        .offsets_for_times(times, WAIT)
        .expect("offsets for times");
    consumer
        .fetch_group_list(Some(RK_GROUP), WAIT)
        .expect("group list");
    // Heartbeats and empty fetches.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let _ = consumer.poll(Duration::from_millis(100));
    }
    consumer.unsubscribe();
}

// ---------------------------------------------------------------- other clients

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name)
        .display()
        .to_string()
}

fn assert_script_ok(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kafka_python_traffic(bootstrap: &str) {
    let out = run_bounded(
        Command::new("python3")
            .arg(script("capture_kafka_python.py"))
            .arg(bootstrap),
        None,
        SCRIPT_MAX,
    );
    assert_script_ok("capture_kafka_python.py", &out);
}

fn kafkajs_traffic(bootstrap: &str, node_modules: &Path) {
    let out = run_bounded(
        Command::new("node")
            .arg(script("capture_kafkajs.js"))
            .arg(bootstrap)
            .env("NODE_PATH", node_modules),
        None,
        SCRIPT_MAX,
    );
    assert_script_ok("capture_kafkajs.js", &out);
}
