//! Search over topics that set `sluice.search.enable=true`, through the
//! admin port's Elasticsearch-compatible API, against the real binary:
//!
//! - `es_clients`: JSON and plain-text records produced by librdkafka
//!   (lz4, zstd, gzip; keys, headers, explicit timestamps) into two
//!   search-enabled topics become searchable; the pytest suite
//!   `tests/python_search` then runs every query type and aggregation with
//!   the official `elasticsearch` client and `opensearch-py`, checking the
//!   answers against the produced records. A topic without search is not
//!   searchable until IncrementalAlterConfigs enables it, and then its
//!   existing records are; invalid values of the config are refused.
//! - `kill_during_produce_finds_every_acknowledged_record_once`: SIGKILL
//!   during an acks=all load, restart: the searchable records are exactly
//!   the records of the log (each once), every acknowledged one among them.
//! - `deletion_and_retention_remove_index_data`: a deleted topic, records
//!   expired by `retention.ms` and records below a DeleteRecords log start
//!   are no longer found; `/metrics` document counts drop.
//! - `thousand_topics_one_shard_memory`: 1000 search-enabled topics of 3
//!   partitions on one shard: peak RSS and idle CPU once indexed.
//!
//! Needs python3 with `tests/python/requirements.txt` (installed when
//! missing) for `es_clients`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    ApiKey, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

const SEARCH: (&str, &str) = ("sluice.search.enable", "true");
/// A record is searchable about 1 s (`--search-refresh-ms`) after its
/// acknowledgement; a debug build on 2 busy cores gets this long.
const INDEXED: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
/// Kafka's INVALID_CONFIG.
const INVALID_CONFIG: i16 = 40;

/// A restarted broker takes its old port again, which a broker starting
/// in a parallel test of this file could take meanwhile (both come from
/// the kernel's ephemeral range): starts and restarts hold this.
static PORTS: Mutex<()> = Mutex::new(());

fn ports() -> MutexGuard<'static, ()> {
    PORTS.lock().unwrap_or_else(|p| p.into_inner())
}

fn start(shards: u32, extra: &[&str]) -> Broker {
    let _ports = ports();
    Broker::start_with(shards, extra)
}

// ---------------------------------------------------------------- Kafka side

fn admin(b: &Broker) -> AdminClient<DefaultClientContext> {
    client_config(b).create().expect("admin")
}

fn admin_opts() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
}

/// CreateTopics of `names`, each with `partitions` and `configs`: the
/// error code of each topic that failed.
fn create_topics(
    b: &Broker,
    names: &[String],
    partitions: i32,
    configs: &[(&str, &str)],
) -> Vec<(String, RDKafkaErrorCode)> {
    let a = admin(b);
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            let mut t = NewTopic::new(n, partitions, TopicReplication::Fixed(1));
            for (k, v) in configs {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let results = futures::executor::block_on(a.create_topics(topics.iter(), &admin_opts()))
        .expect("create_topics");
    results.into_iter().filter_map(Result::err).collect()
}

fn create(b: &Broker, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let failed = create_topics(b, &[name.to_string()], partitions, configs);
    assert!(failed.is_empty(), "create {name}: {failed:?}");
}

/// IncrementalAlterConfigs (raw frame, v1) SET of one topic config: the
/// resource's error code.
fn incremental_set(b: &Broker, topic: &str, key: &str, value: &str) -> i16 {
    let mut config = AlterableConfig::default();
    config.name = StrBytes::from_string(key.to_string());
    config.config_operation = 0;
    config.value = Some(StrBytes::from_string(value.to_string()));
    let mut resource = AlterConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = StrBytes::from_string(topic.to_string());
    resource.configs = vec![config];
    let mut req = IncrementalAlterConfigsRequest::default();
    req.resources = vec![resource];
    let mut s = connect(b);
    let resp: IncrementalAlterConfigsResponse =
        call(&mut s, ApiKey::IncrementalAlterConfigs, 1, &req);
    assert_eq!(resp.responses.len(), 1);
    resp.responses[0].error_code
}

/// One record to produce, and where it landed.
#[derive(Clone, Debug)]
struct Rec {
    topic: String,
    partition: i32,
    offset: i64,
    key: String,
    value: String,
    timestamp: i64,
    headers: Vec<(String, String)>,
}

/// Sends `recs` with `producer` (acks=all) and records each delivered
/// partition and offset.
fn produce(p: &FutureProducer, recs: &mut [Rec]) {
    let futures: Vec<_> = recs
        .iter()
        .map(|r| {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k.as_str(),
                    value: Some(v.as_str()),
                });
            }
            let record = FutureRecord::to(&r.topic)
                .partition(r.partition)
                .key(r.key.as_str())
                .payload(r.value.as_str())
                .timestamp(r.timestamp)
                .headers(headers);
            p.send_result(record).map_err(|(e, _)| e).expect("enqueue")
        })
        .collect();
    for (r, f) in recs.iter_mut().zip(futures) {
        let d = futures::executor::block_on(f)
            .expect("delivery future canceled")
            .unwrap_or_else(|(e, _)| panic!("delivery to {} failed: {e}", r.topic));
        r.partition = d.partition;
        r.offset = d.offset;
    }
}

fn producer_with(b: &Broker, compression: &str) -> FutureProducer {
    producer(
        b,
        &[
            ("acks", "all"),
            ("compression.type", compression),
            ("linger.ms", "20"),
            ("batch.num.messages", "200"),
        ],
    )
}

/// The (log start, high watermark) of every partition of `topic`.
fn watermarks(b: &Broker, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let c = consumer(b);
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
        })
        .collect()
}

// ---------------------------------------------------------------- search side

/// A request to the Elasticsearch-compatible API: status and JSON body
/// (`Null` when the body is not JSON).
fn es(b: &Broker, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let text = body.map(Value::to_string);
    let reply = http_request(b, method, path, text.as_deref());
    let value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
    (reply.status, value)
}

/// `GET /{index}/_count`: `Ok(count)`, or the status and body of an error.
fn count(b: &Broker, index: &str) -> Result<u64, (u16, Value)> {
    let (status, v) = es(b, "GET", &format!("/{index}/_count"), None);
    match (status, v["count"].as_u64()) {
        (200, Some(n)) => Ok(n),
        _ => Err((status, v)),
    }
}

/// Waits (bounded) until `/{index}/_count` is `want`.
fn wait_count(b: &Broker, index: &str, want: u64, limit: Duration) {
    let began = Instant::now();
    let deadline = began + limit;
    loop {
        let got = count(b, index);
        if got == Ok(want) {
            eprintln!(
                "{index}: {want} searchable after {} ms",
                began.elapsed().as_millis()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/{index}/_count is {got:?}, not {want}, after {limit:?}"
        );
        std::thread::sleep(POLL);
    }
}

/// Whether `index` answers as not searchable: Elasticsearch's 404
/// `index_not_found_exception`, or no hit at all.
fn not_searchable(b: &Broker, index: &str) -> Result<(), String> {
    let (status, v) = es(
        b,
        "POST",
        &format!("/{index}/_search"),
        Some(&json!({"query": {"match_all": {}}})),
    );
    match status {
        404 if v["error"]["type"] == "index_not_found_exception" && v["status"] == 404 => Ok(()),
        200 if v["hits"]["total"]["value"] == 0 && v["hits"]["hits"] == json!([]) => Ok(()),
        _ => Err(format!("{status} {v}")),
    }
}

fn wait_not_searchable(b: &Broker, index: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match not_searchable(b, index) {
            Ok(()) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{index} still searchable after {limit:?}: {e}"
            ),
        }
        std::thread::sleep(POLL);
    }
}

/// `POST /{index}/_search` that must succeed: the body.
fn search(b: &Broker, index: &str, body: Value) -> Value {
    let (status, v) = es(b, "POST", &format!("/{index}/_search"), Some(&body));
    assert_eq!(status, 200, "search {index} {body}: {v}");
    v
}

/// The offsets of every hit of `index`'s `partition` (with `filter` added),
/// in pages of `page` by `_offset` ascending, each page starting after the
/// last offset of the one before; panics on a hit twice in a page.
fn partition_offsets(b: &Broker, index: &str, partition: i32, filter: Value) -> Vec<i64> {
    const PAGE: usize = 1_000;
    let mut out: Vec<i64> = Vec::new();
    let mut next = 0i64;
    loop {
        let body = json!({
            "query": {"bool": {"filter": [
                {"range": {"_partition": {"gte": partition, "lte": partition}}},
                {"range": {"_offset": {"gte": next}}},
                filter,
            ]}},
            "size": PAGE,
            "sort": [{"_offset": {"order": "asc"}}],
        });
        let v = search(b, index, body);
        let hits = v["hits"]["hits"].as_array().expect("hits").clone();
        let offsets: Vec<i64> = hits
            .iter()
            .map(|h| {
                assert_eq!(h["_index"], index, "{h}");
                assert_eq!(h["_partition"].as_i64(), Some(partition as i64), "{h}");
                let o = h["_offset"].as_i64().expect("_offset");
                assert_eq!(h["_id"], format!("{partition}-{o}"), "{h}");
                o
            })
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{index}/{partition}: offsets of a page not strictly ascending (a hit twice?): {offsets:?}"
        );
        out.extend(&offsets);
        match offsets.last() {
            Some(last) if hits.len() == PAGE => next = last + 1,
            _ => return out,
        }
    }
}

/// The sum of the first `/metrics` family of `names` that has samples.
fn index_metric(b: &Broker, names: &[&str]) -> Option<(String, u64)> {
    names
        .iter()
        .find_map(|n| metric_sum(b, n).map(|v| (n.to_string(), v)))
}

/// Documents in the index (its last commit), by `/metrics`.
const DOC_METRICS: &[&str] = &["sluice_index_docs"];

// ---------------------------------------------------------------- es_clients

const USERS: [(&str, usize); 6] = [
    ("ann", 6),
    ("bob", 5),
    ("cid", 4),
    ("dee", 3),
    ("eve", 2),
    ("fay", 1),
];
const LEVELS: [(&str, usize); 4] = [("info", 7), ("warn", 4), ("error", 3), ("debug", 1)];
const PHRASES: [&str; 8] = [
    "connection reset by peer",
    "request served from cache",
    "disk full on volume",
    "timeout waiting for upstream",
    "user login failed",
    "slow query detected",
    "cache miss for key",
    "disk timeout during write",
];

/// Picks by weight: `weights` repeated, position `i`.
fn weighted(weights: &[(&'static str, usize)], i: usize) -> &'static str {
    let sum: usize = weights.iter().map(|w| w.1).sum();
    let mut at = i % sum;
    for (name, w) in weights {
        if at < *w {
            return name;
        }
        at -= w;
    }
    unreachable!()
}

/// The JSON value of record `i`.
fn json_value(i: usize) -> String {
    let mut v = json!({
        "user": weighted(&USERS, i),
        "level": weighted(&LEVELS, i),
        "latency": (i * 37) % 997,
        "msg": format!("{} {}", PHRASES[i % 8], PHRASES[(i / 8) % 8]),
    });
    if i % 3 != 0 {
        v["payload"] = json!({"id": format!("p-{i}"), "n": i});
    }
    v.to_string()
}

fn rec(topic: &str, partitions: i32, i: usize, base_ms: i64, value: String) -> Rec {
    Rec {
        topic: topic.to_string(),
        partition: (i % partitions as usize) as i32,
        offset: -1,
        key: format!("{topic}-k{i}"),
        value,
        timestamp: base_ms + i as i64 * 1_000,
        headers: vec![
            ("trace".to_string(), format!("t-{i}")),
            ("src".to_string(), "rdkafka".to_string()),
        ],
    }
}

fn expected_file(searchable: &[&str], topics: &[(&str, i32)], recs: &[Rec]) -> Value {
    json!({
        "searchable": searchable,
        "topics": topics.iter().map(|(t, p)| (t.to_string(), json!(p))).collect::<serde_json::Map<_, _>>(),
        "records": recs.iter().map(|r| json!({
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "key": r.key,
            "value": r.value,
            "timestamp": r.timestamp,
            "headers": r.headers.iter().cloned().collect::<BTreeMap<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn es_clients() {
    common::ensure_python_requirements();
    let b = start(2, &[]);

    // The root answers like Elasticsearch 8 (the official client checks).
    let root = http_request(&b, "GET", "/", None);
    assert_eq!(root.status, 200, "{root:?}");
    assert_eq!(
        root.header("x-elastic-product"),
        Some("Elasticsearch"),
        "{root:?}"
    );
    let info: Value = serde_json::from_str(&root.body).expect("GET / is JSON");
    assert!(
        info["version"]["number"]
            .as_str()
            .is_some_and(|v| v.starts_with("8.")),
        "{info}"
    );
    let head = http_request(&b, "HEAD", "/", None);
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.body.is_empty(), "HEAD has no body: {head:?}");

    // An invalid value is refused at creation.
    let failed = create_topics(
        &b,
        &["undecided".to_string()],
        1,
        &[("sluice.search.enable", "maybe")],
    );
    assert_eq!(
        failed,
        vec![("undecided".to_string(), RDKafkaErrorCode::InvalidConfig)]
    );

    create(&b, "logs-app", 3, &[SEARCH]);
    create(&b, "logs-web", 2, &[SEARCH]);
    create(&b, "plain", 1, &[]);

    let base_ms = (now_ms() - 3 * 3600 * 1000) / 60_000 * 60_000;
    let mut app: Vec<Rec> = (0..1_200)
        .map(|i| rec("logs-app", 3, i, base_ms, json_value(i)))
        .collect();
    let mut web: Vec<Rec> = (1_200..1_900)
        .map(|i| rec("logs-web", 2, i, base_ms, json_value(i)))
        .chain((1_900..2_000).map(|i| {
            rec(
                "logs-web",
                2,
                i,
                base_ms,
                format!("GET /page/{i} 200 served in {} ms", i % 50),
            )
        }))
        .collect();
    let mut plain: Vec<Rec> = (2_000..2_150)
        .map(|i| rec("plain", 1, i, base_ms, json_value(i)))
        .collect();
    produce(&producer_with(&b, "lz4"), &mut app);
    produce(&producer_with(&b, "zstd"), &mut web);
    produce(&producer_with(&b, "gzip"), &mut plain);
    let searchable: Vec<Rec> = app.iter().chain(&web).cloned().collect();
    let produced = searchable.len() as u64;

    let dir = tempfile::tempdir().expect("tempdir");
    let expected_path = dir.path().join("expected.json");
    let expected = expected_file(
        &["logs-app", "logs-web"],
        &[("logs-app", 3), ("logs-web", 2)],
        &searchable,
    );
    std::fs::write(&expected_path, expected.to_string()).expect("write expected");

    wait_count(&b, "logs-*", produced, INDEXED);
    assert_eq!(count(&b, "logs-app"), Ok(app.len() as u64));
    assert_eq!(count(&b, "logs-web"), Ok(web.len() as u64));
    // GET with a body serves as POST does (curl and Kibana's dev tools
    // send GET), for _search and _count.
    let errors = app
        .iter()
        .filter(|r| r.value.contains("\"level\":\"error\""))
        .count();
    let q = json!({"query": {"term": {"level.keyword": "error"}}, "size": 0});
    for method in ["GET", "POST"] {
        let (status, v) = es(&b, method, "/logs-app/_search", Some(&q));
        assert_eq!(status, 200, "{method} _search: {v}");
        assert_eq!(v["hits"]["total"]["value"], errors, "{method} _search: {v}");
        let (status, v) = es(
            &b,
            method,
            "/logs-app/_count",
            Some(&json!({"query": q["query"]})),
        );
        assert_eq!(status, 200, "{method} _count: {v}");
        assert_eq!(v["count"], errors, "{method} _count: {v}");
    }

    // Every query type and aggregation through both Python clients.
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_search");
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
                suite,
            ])
            .env("SLUICE_ADMIN", format!("127.0.0.1:{}", b.admin_port))
            .env("SLUICE_EXPECTED", &expected_path),
        None,
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{}", stdout.lines().last().unwrap_or_default());
    assert!(
        out.status.success(),
        "Elasticsearch client suite failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains(" passed"), "no test ran:\n{stdout}");
    assert!(!stdout.contains(" skipped"), "tests skipped:\n{stdout}");

    // A topic without search is not searchable: Elasticsearch's answer
    // for an unknown index (404 index_not_found_exception), as for a topic
    // that does not exist.
    for index in ["plain", "no-such-topic"] {
        let (status, v) = es(
            &b,
            "POST",
            &format!("/{index}/_search"),
            Some(&json!({"query": {"match_all": {}}})),
        );
        assert_eq!(status, 404, "{index}: {v}");
        assert_eq!(v["error"]["type"], "index_not_found_exception", "{v}");
        assert_eq!(v["status"], 404, "{v}");
        assert_eq!(count(&b, index).map_err(|e| e.0), Err(404));
    }
    // `_all` and patterns leave it out.
    assert_eq!(count(&b, "_all"), Ok(produced));

    // An invalid value is refused by IncrementalAlterConfigs too ...
    assert_eq!(
        incremental_set(&b, "plain", "sluice.search.enable", "maybe"),
        INVALID_CONFIG
    );
    // ... and enabling search makes the records already there searchable.
    assert_eq!(
        incremental_set(&b, "plain", "sluice.search.enable", "true"),
        0
    );
    wait_count(&b, "plain", plain.len() as u64, INDEXED);
    assert_eq!(count(&b, "_all"), Ok(produced + plain.len() as u64));
    let offsets = partition_offsets(&b, "plain", 0, json!({"match_all": {}}));
    let want: Vec<i64> = plain.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, want);
    let bobs = plain
        .iter()
        .filter(|r| r.value.contains("\"user\":\"bob\""))
        .count();
    let v = search(
        &b,
        "plain",
        json!({"query": {"term": {"user.keyword": "bob"}}, "size": 0}),
    );
    assert_eq!(v["hits"]["total"]["value"], bobs, "{v}");
    // Records produced after enabling are indexed too.
    let mut more: Vec<Rec> = (2_150..2_160)
        .map(|i| rec("plain", 1, i, base_ms, json_value(i)))
        .collect();
    produce(&producer_with(&b, "none"), &mut more);
    wait_count(&b, "plain", (plain.len() + more.len()) as u64, INDEXED);

    // `/metrics`: the documents of every searchable record, and the
    // index's files.
    let docs = produced + (plain.len() + more.len()) as u64;
    let deadline = Instant::now() + INDEXED;
    while metric_sum(&b, "sluice_index_docs") != Some(docs) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    assert_eq!(metric_sum(&b, "sluice_index_docs"), Some(docs));
    assert!(metric_sum(&b, "sluice_index_disk_bytes").unwrap_or(0) > 0);
    assert_eq!(metric_sum(&b, "sluice_index_batches_failed_total"), Some(0));
    assert!(metric_sum(&b, "sluice_index_searches_total").unwrap_or(0) > 0);

    // The index lives under the data dir.
    let index_dirs: Vec<_> = (0..2)
        .map(|s| b.data_dir.join(format!("shard-{s}")).join("index"))
        .filter(|d| d.is_dir())
        .collect();
    assert!(
        !index_dirs.is_empty(),
        "no shard-N/index under {}",
        b.data_dir.display()
    );
}

// ---------------------------------------------------------------- kill during produce

const DURABLE_PARTITIONS: i32 = 4;
const INFLIGHT_RECORDS_MAX: usize = 200;

type Acked = Arc<Mutex<BTreeSet<(i32, i64)>>>;

/// Produces JSON records until `stop`, recording each acknowledged
/// (partition, offset).
fn load(b: &Broker, stop: Arc<AtomicBool>, acked: Acked) -> std::thread::JoinHandle<u64> {
    let p = producer(
        b,
        &[
            ("acks", "all"),
            ("retries", "0"),
            ("message.timeout.ms", "5000"),
            ("linger.ms", "2"),
            ("compression.type", "lz4"),
        ],
    );
    // The producer runs in the test process (blocking librdkafka calls),
    // beside the broker under test, never inside it.
    std::thread::spawn(move || {
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut batch = Vec::with_capacity(INFLIGHT_RECORDS_MAX);
            for _ in 0..INFLIGHT_RECORDS_MAX {
                let value = json!({"n": sent, "msg": "durable record", "user": "ann"}).to_string();
                let partition = (sent % DURABLE_PARTITIONS as u64) as i32;
                let r = FutureRecord::to("durable")
                    .partition(partition)
                    .key("k")
                    .payload(&value);
                if let Ok(f) = p.send_result(r) {
                    batch.push(f);
                }
                sent += 1;
            }
            for f in batch {
                if let Ok(Ok(d)) = futures::executor::block_on(f) {
                    acked.lock().unwrap().insert((d.partition, d.offset));
                }
            }
        }
        sent
    })
}

#[test]
fn kill_during_produce_finds_every_acknowledged_record_once() {
    let mut b = start(2, &[]);
    create(&b, "durable", DURABLE_PARTITIONS, &[SEARCH]);
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(&b, Arc::clone(&stop), Arc::clone(&acked));
    // Kill once records are acknowledged and some are already indexed, so
    // the index on disk is behind the log at the kill.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && (acked.lock().unwrap().len() < 1_500 || count(&b, "durable").unwrap_or(0) == 0)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let indexed_at_kill = count(&b, "durable").unwrap_or(0);
    {
        let _ports = ports();
        b.kill();
        stop.store(true, Ordering::Relaxed);
        let sent = loader.join().expect("loader");
        eprintln!(
            "killed with {} acknowledged of {sent} sent, {indexed_at_kill} searchable",
            acked.lock().unwrap().len()
        );
        b.restart();
    }
    let mut acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.len() >= 500,
        "too few acknowledged records before the kill: {}",
        acked.len()
    );

    // More after the restart.
    let p = producer(&b, &[("acks", "all")]);
    let more: Vec<_> = (0..200)
        .map(|i| {
            (
                i % DURABLE_PARTITIONS,
                "k".to_string(),
                json!({"n": i, "msg": "after restart"}).to_string(),
                None,
            )
        })
        .collect();
    acked.extend(produce_all(&p, "durable", &more));
    drop(p);

    // What the log holds, read with a consumer.
    let marks = watermarks(&b, "durable", DURABLE_PARTITIONS);
    let total: i64 = marks.iter().map(|(lo, hi)| hi - lo).sum();
    let log: BTreeSet<(i32, i64)> = consume_all(
        &b,
        "durable",
        DURABLE_PARTITIONS,
        total as usize,
        Duration::from_secs(60),
    )
    .into_iter()
    .map(|m| (m.partition, m.offset))
    .collect();
    assert_eq!(log.len() as i64, total, "the log reads back whole");
    let lost: Vec<_> = acked.difference(&log).take(5).collect();
    assert!(lost.is_empty(), "acknowledged records lost: {lost:?}");

    wait_count(&b, "durable", total as u64, Duration::from_secs(60));
    let mut found = BTreeSet::new();
    for p in 0..DURABLE_PARTITIONS {
        for o in partition_offsets(&b, "durable", p, json!({"match_all": {}})) {
            assert!(found.insert((p, o)), "({p}, {o}) found twice");
        }
    }
    let missing: Vec<_> = log.difference(&found).take(5).collect();
    let extra: Vec<_> = found.difference(&log).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "search and log differ: missing {missing:?}, not in the log {extra:?}"
    );
    // `_count` equals the set's size: nothing is indexed twice.
    assert_eq!(count(&b, "durable"), Ok(found.len() as u64));
    assert!(acked.is_subset(&found));
}

// ---------------------------------------------------------------- deletion, retention, DeleteRecords

#[test]
fn deletion_and_retention_remove_index_data() {
    let b = start(1, &["--search-refresh-ms", "500"]);
    create(&b, "doomed", 2, &[SEARCH]);
    create(&b, "expiring", 1, &[SEARCH]);
    create(&b, "keeper", 1, &[SEARCH]);
    create(&b, "trimmed", 1, &[SEARCH]);
    let now = now_ms();
    let p = producer(&b, &[("acks", "all"), ("linger.ms", "5")]);
    let json_recs = |n: usize, partitions: i32, ts: Option<i64>| -> Vec<_> {
        (0..n)
            .map(|i| {
                (
                    i as i32 % partitions,
                    format!("k{i}"),
                    json!({"i": i, "msg": "search me", "user": "ann"}).to_string(),
                    ts,
                )
            })
            .collect()
    };
    produce_all(&p, "doomed", &json_recs(200, 2, None));
    // An hour old: expired as soon as `retention.ms` is set below that.
    produce_all(&p, "expiring", &json_recs(100, 1, Some(now - 3_600_000)));
    produce_all(&p, "keeper", &json_recs(100, 1, None));
    produce_all(&p, "trimmed", &json_recs(100, 1, None));
    for (topic, n) in [
        ("doomed", 200),
        ("expiring", 100),
        ("keeper", 100),
        ("trimmed", 100),
    ] {
        wait_count(&b, topic, n, INDEXED);
    }
    assert!(b.data_dir.join("shard-0").join("index").is_dir());
    let before = index_metric(&b, DOC_METRICS);
    eprintln!("index documents before the deletions: {before:?}");

    // A deleted topic is gone from search, and from the document count.
    let a = admin(&b);
    let r = futures::executor::block_on(a.delete_topics(&["doomed"], &admin_opts()))
        .expect("delete_topics");
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    wait_not_searchable(&b, "doomed", INDEXED);
    assert_eq!(count(&b, "_all"), Ok(300));
    if let Some((name, docs)) = &before {
        let deadline = Instant::now() + INDEXED;
        loop {
            let left = metric_sum(&b, name).unwrap_or(0);
            if left + 200 <= *docs {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} {left} did not drop from {docs} after deleting 200 documents"
            );
            std::thread::sleep(POLL);
        }
    }

    // DeleteRecords: records below the new log start are not found.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("trimmed", 0, Offset::Offset(40))
        .expect("tpl");
    let out =
        futures::executor::block_on(a.delete_records(&tpl, &admin_opts())).expect("delete_records");
    assert!(out.elements()[0].error().is_ok(), "{out:?}");
    wait_count(&b, "trimmed", 60, INDEXED);
    let offsets = partition_offsets(&b, "trimmed", 0, json!({"match_all": {}}));
    assert_eq!(offsets, (40..100).collect::<Vec<i64>>());
    let v = search(
        &b,
        "trimmed",
        json!({"query": {"range": {"_offset": {"lt": 40}}}}),
    );
    assert_eq!(v["hits"]["total"]["value"], 0, "{v}");
    let v = search(
        &b,
        "trimmed",
        json!({"query": {"match": {"msg": "search"}}, "size": 0}),
    );
    assert_eq!(v["hits"]["total"]["value"], 60, "{v}");

    // Retention: `expiring`'s records are an hour old; once its
    // retention is 2 s, its log start moves past them all.
    assert_eq!(incremental_set(&b, "expiring", "retention.ms", "2000"), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (lo, hi) = watermarks(&b, "expiring", 1)[0];
        if lo == hi && hi == 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not expire `expiring`: ({lo}, {hi})"
        );
        std::thread::sleep(POLL);
    }
    let deadline = Instant::now() + INDEXED;
    loop {
        match count(&b, "expiring") {
            Ok(0) => break,
            Err((404, _)) => break,
            other => assert!(
                Instant::now() < deadline,
                "expired records still searchable: {other:?}"
            ),
        }
        std::thread::sleep(POLL);
    }
    let v = search(
        &b,
        "expiring",
        json!({"query": {"match": {"msg": "search"}}}),
    );
    assert_eq!(v["hits"]["total"]["value"], 0, "{v}");
    // The others are untouched.
    assert_eq!(count(&b, "keeper"), Ok(100));
    assert_eq!(count(&b, "trimmed"), Ok(60));
    if let Some((name, _)) = &before {
        let docs = metric_sum(&b, name).unwrap_or(0);
        eprintln!("{name} after deletion, DeleteRecords and retention: {docs}");
        assert_eq!(docs, 160, "{name}: keeper 100 + trimmed 60");
    }
}

// ---------------------------------------------------------------- many topics

const MANY_TOPICS: usize = 1_000;
const MANY_PARTITIONS: i32 = 3;
/// What 1000 indexed topics may add to the one-shard broker's RSS: its
/// peak (VmHWM) over its RSS once started, measured in the same run. (The
/// idle RSS is mostly the binary's pages, which grow with its size, not
/// with the indexes.)
const RSS_GROWTH_MAX: u64 = 32 << 20;

#[test]
fn thousand_topics_one_shard_memory() {
    let b = start(1, &[]);
    let idle = b.rss_bytes();
    let began = Instant::now();
    let names: Vec<String> = (0..MANY_TOPICS).map(|i| format!("many-{i:04}")).collect();
    for batch in names.chunks(100) {
        let failed = create_topics(&b, batch, MANY_PARTITIONS, &[SEARCH]);
        assert!(failed.is_empty(), "{failed:?}");
    }
    eprintln!(
        "{MANY_TOPICS} topics created in {} ms",
        began.elapsed().as_millis()
    );
    let p = producer(&b, &[("acks", "all"), ("linger.ms", "20")]);
    let futures: Vec<_> = names
        .iter()
        .flat_map(|t| (0..MANY_PARTITIONS).map(move |part| (t, part)))
        .map(|(t, part)| {
            let value = json!({"topic": t, "partition": part, "msg": "one of many"}).to_string();
            let r = FutureRecord::to(t).partition(part).key("k").payload(&value);
            p.send_result(r).map_err(|(e, _)| e).expect("enqueue")
        })
        .collect();
    for f in futures {
        futures::executor::block_on(f)
            .expect("canceled")
            .unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"));
    }
    drop(p);
    let want = MANY_TOPICS as u64 * MANY_PARTITIONS as u64;
    eprintln!(
        "{want} records acknowledged after {} ms",
        began.elapsed().as_millis()
    );
    wait_count(&b, "_all", want, Duration::from_secs(120));
    assert_eq!(count(&b, "many-*"), Ok(want));
    let v = search(
        &b,
        "many-0421",
        json!({"query": {"match_phrase": {"msg": "one of many"}}}),
    );
    assert_eq!(v["hits"]["total"]["value"], 3, "{v}");

    let peak = b.peak_rss_bytes();
    let growth = peak.saturating_sub(idle);
    eprintln!(
        "peak RSS (VmHWM) with {MANY_TOPICS} x {MANY_PARTITIONS} indexed partitions on one shard: {} MiB, {} MiB over the started broker's {} MiB (RSS now {} MiB)",
        peak >> 20,
        growth >> 20,
        idle >> 20,
        b.rss_bytes() >> 20
    );
    assert!(
        growth < RSS_GROWTH_MAX,
        "1000 indexed topics took the RSS {} MiB over the started broker's, more than {} MiB",
        growth >> 20,
        RSS_GROWTH_MAX >> 20
    );

    // Idle once caught up: no work per topic, partition or index.
    std::thread::sleep(Duration::from_secs(2));
    let cpu_before = b.cpu_time();
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let used = b.cpu_time() - cpu_before;
    let share = used.as_secs_f64() / wall.elapsed().as_secs_f64();
    eprintln!(
        "idle CPU over {} ms: {} ms ({:.1}% of a core)",
        wall.elapsed().as_millis(),
        used.as_millis(),
        share * 100.0
    );
    assert!(
        share < 0.05,
        "idle broker used {:.1}% of a core",
        share * 100.0
    );
}
