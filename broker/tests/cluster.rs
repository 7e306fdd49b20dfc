//! A 3-node cluster of the real `sluice` binary on loopback (see
//! `common/cluster.rs`), driven by librdkafka and raw Kafka requests:
//! formation, replicated topics, failover under an idempotent acks=all load
//! with SIGKILLs of leaders, followers and the controller, a leader cut off
//! from the others, topic changes while a node is down, a consumer group
//! through the loss of its coordinator, transactions over partitions led
//! by every node (markers written to other nodes' partitions, read back
//! with read_committed), 1000 topics x 3 partitions, and a clean stop of
//! every node on SIGTERM.
//!
//! The tests run one at a time (`SERIAL`): each starts three brokers, and
//! their timings mean little when two clusters share the cores.
//!
//! Settings: `SLUICE_CLUSTER_KILLS` (kills in the failover test, default 6),
//! `SLUICE_CLUSTER_KILL_PAUSE_MS` (how long a killed node stays down, 2000),
//! `SLUICE_CLUSTER_TOPICS` (topics in the many-topics test, default 1000),
//! `SLUICE_TEST_LOG` (the nodes' log filter, default `info`).

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster::{p50_p99, raw_call, Cluster, ClusterOptions};
use common::{encode_batch, now_ms, produce_all, run_bounded, Consumed};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, DescribeConfigsRequest, DescribeConfigsResponse, ProduceRequest, ProduceResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, TimestampType};
use rdkafka::admin::{AdminOptions, AlterConfig, NewPartitions, ResourceSpecifier};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, FutureProducer, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// One cluster at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Leader changes, ISR changes and catch-up finish within this.
const SETTLE: Duration = Duration::from_secs(90);
/// Reading a topic back.
const READ: Duration = Duration::from_secs(120);
/// Error codes.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn set(v: &[i32]) -> BTreeSet<i32> {
    v.iter().copied().collect()
}

/// Kills the leader of `topic`/`partition` until `target` leads it (the
/// killed node is restarted and back in sync before the next try).
fn move_leader(c: &mut Cluster, topic: &str, partition: i32, target: u64, tries: usize) -> bool {
    for _ in 0..tries {
        let leader = c.wait_leader(topic, partition, None, SETTLE);
        if leader == target {
            return true;
        }
        c.kill(leader);
        c.wait_leader(topic, partition, Some(leader), SETTLE);
        c.restart(leader);
        c.wait_all_in_sync(&[topic], SETTLE);
    }
    c.wait_leader(topic, partition, None, SETTLE) == target
}

// ---------------------------------------------------------------- formation

#[test]
fn formation_in_reverse_order_replicated_topics_and_rf_above_nodes_refused() {
    let _serial = serial();
    let mut opts = ClusterOptions::new(3, 1);
    opts.links = false;
    opts.start_order = vec![3, 2, 1];
    opts.start_gap = Duration::from_secs(1);
    let c = Cluster::start_with(opts);

    // Every node lists the same three brokers at their advertised
    // addresses, under one cluster id, with one controller.
    let expect: BTreeMap<i32, (String, i32)> = c
        .ids()
        .iter()
        .map(|id| {
            (
                *id as i32,
                (
                    "127.0.0.1".to_string(),
                    i32::from(c.node(*id).advertised_port),
                ),
            )
        })
        .collect();
    let mut cluster_ids = BTreeSet::new();
    for id in c.ids() {
        let v = c.metadata_from(id, Some(&[])).expect("metadata");
        assert_eq!(v.brokers, expect, "brokers listed by node {id}");
        cluster_ids.insert(v.cluster_id.clone());
    }
    assert_eq!(cluster_ids.len(), 1, "one cluster id: {cluster_ids:?}");
    assert!(
        cluster_ids
            .iter()
            .all(|c| c.as_deref().is_some_and(|s| !s.is_empty())),
        "a cluster id: {cluster_ids:?}"
    );
    let controller = c.wait_controller(Duration::from_secs(30));
    assert!((1..=3).contains(&controller));

    // RF=3: three replicas, an ISR of three, leaders on every node.
    c.create_topic("formed", 6, 3, &[]).expect("create RF=3");
    c.wait_all_in_sync(&["formed"], SETTLE);
    let mut leaders = BTreeMap::<i32, usize>::new();
    for id in c.ids() {
        let v = c.metadata_from(id, Some(&["formed"])).expect("metadata");
        let (err, parts) = &v.topics["formed"];
        assert_eq!(*err, 0);
        assert_eq!(parts.len(), 6);
        for p in parts {
            assert_eq!(p.error, 0, "node {id}: {p:?}");
            assert_eq!(set(&p.replicas), set(&[1, 2, 3]), "node {id}: {p:?}");
            assert_eq!(p.replicas.len(), 3, "node {id}: {p:?}");
            assert_eq!(set(&p.isr), set(&[1, 2, 3]), "node {id}: {p:?}");
            assert!(p.replicas.contains(&p.leader), "node {id}: {p:?}");
            assert!(p.leader_epoch >= 0, "node {id}: {p:?}");
            assert!(p.offline.is_empty(), "node {id}: {p:?}");
            if id == 1 {
                *leaders.entry(p.leader).or_default() += 1;
            }
        }
    }
    assert_eq!(
        leaders.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3],
        "leaders spread over the nodes: {leaders:?}"
    );

    // Without a replication factor a topic gets min(3, voters) replicas.
    c.create_topic("defaulted", 2, -1, &[])
        .expect("create default RF");
    let v = c.metadata(Some(&["defaulted"])).expect("metadata");
    for p in &v.topics["defaulted"].1 {
        assert_eq!(set(&p.replicas), set(&[1, 2, 3]), "{p:?}");
    }

    // More replicas than nodes is refused, and nothing is created.
    assert_eq!(
        c.create_topic("too-many", 1, 4, &[]),
        Err(RDKafkaErrorCode::InvalidReplicationFactor)
    );
    for id in c.ids() {
        let v = c.metadata_from(id, Some(&["too-many"])).expect("metadata");
        assert_eq!(
            v.topics["too-many"].0, UNKNOWN_TOPIC_OR_PARTITION,
            "node {id}"
        );
    }

    // Records round-trip through the leaders with acks=all.
    let p = c.producer(&[("acks", "all")]);
    let records: Vec<_> = (0..60)
        .map(|i| (i % 6, format!("k{i}"), format!("v{i}"), None))
        .collect();
    let acked = produce_all(&p, "formed", &records);
    let log = c.read_all("formed", 6, READ);
    for ((part, _, value, _), (ap, ao)) in records.iter().zip(&acked) {
        assert_eq!(part, ap);
        let got = log[ap]
            .iter()
            .find(|m| m.offset == *ao)
            .map(|m| m.value.as_str());
        assert_eq!(got, Some(value.as_str()), "{ap}/{ao}");
    }
    assert_eq!(log.values().map(Vec::len).sum::<usize>(), 60);
}

// ---------------------------------------------------------------- failover

const FAILOVER_TOPIC: &str = "failover";
const FAILOVER_PARTITIONS: i32 = 4;
/// Records handed to the producer and not yet acknowledged or failed.
const INFLIGHT_RECORDS_MAX: usize = 2_000;
/// Pause between sends: about a thousand records a second.
const SEND_GAP: Duration = Duration::from_millis(1);

/// An acknowledged record.
#[derive(Debug, Clone, Copy)]
struct Ack {
    partition: i32,
    seq: u64,
    offset: i64,
    sent: Instant,
    acked: Instant,
}

#[derive(Default)]
struct Deliveries {
    acks: Mutex<Vec<Ack>>,
    failed: Mutex<Vec<(i32, u64, String)>>,
    inflight: AtomicUsize,
}

struct Tracker(Arc<Deliveries>);

impl ClientContext for Tracker {}

impl ProducerContext for Tracker {
    type DeliveryOpaque = Box<(i32, u64, Instant)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (partition, seq, sent) = *opaque;
        match result {
            Ok(m) => self.0.acks.lock().unwrap().push(Ack {
                partition,
                seq,
                offset: m.offset(),
                sent,
                acked: Instant::now(),
            }),
            Err((e, _)) => self
                .0
                .failed
                .lock()
                .unwrap()
                .push((partition, seq, e.to_string())),
        }
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Time from `kill` until every partition acknowledged a record sent after
/// it (waits up to `SETTLE`).
fn resume_delay(d: &Deliveries, kill: Instant) -> Option<Duration> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let firsts: Vec<Option<Instant>> = {
            let acks = d.acks.lock().unwrap();
            (0..FAILOVER_PARTITIONS)
                .map(|p| {
                    acks.iter()
                        .filter(|a| a.partition == p && a.sent >= kill)
                        .map(|a| a.acked)
                        .min()
                })
                .collect()
        };
        if firsts.iter().all(Option::is_some) {
            return firsts.into_iter().flatten().max().map(|t| t - kill);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idempotent_acks_all_load_survives_killing_leaders_followers_and_the_controller() {
    let _serial = serial();
    let kills = env_usize("SLUICE_CLUSTER_KILLS", 6);
    // As systemd's RestartSec=2 would: about the broker lease, so a node
    // may be back before it is fenced.
    let pause = Duration::from_millis(env_usize("SLUICE_CLUSTER_KILL_PAUSE_MS", 2_000) as u64);
    let mut opts = ClusterOptions::new(3, 2);
    opts.links = false;
    let mut c = Cluster::start_with(opts);
    c.create_topic(
        FAILOVER_TOPIC,
        FAILOVER_PARTITIONS,
        3,
        &[("min.insync.replicas", "2")],
    )
    .expect("create");
    c.wait_all_in_sync(&[FAILOVER_TOPIC], SETTLE);

    let deliveries = Arc::new(Deliveries::default());
    let mut cfg: ClientConfig = c.client_config();
    cfg.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .set("retry.backoff.ms", "100");
    let producer: ThreadedProducer<Tracker> = cfg
        .create_with_context(Tracker(Arc::clone(&deliveries)))
        .expect("producer");
    let producer = Arc::new(producer);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (producer, stop, sent, d) = (
            Arc::clone(&producer),
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&deliveries),
        );
        // The producer loop runs in the test process, not on a broker core:
        // a thread of its own keeps sending while the test kills nodes.
        std::thread::spawn(move || {
            let mut seqs = [0u64; FAILOVER_PARTITIONS as usize];
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                if d.inflight.load(Ordering::SeqCst) >= INFLIGHT_RECORDS_MAX {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let p = (n % FAILOVER_PARTITIONS as usize) as i32;
                let seq = seqs[p as usize];
                let key = format!("key-{p}");
                let value = format!("{p}-{seq}");
                d.inflight.fetch_add(1, Ordering::SeqCst);
                let r =
                    BaseRecord::with_opaque_to(FAILOVER_TOPIC, Box::new((p, seq, Instant::now())))
                        .partition(p)
                        .key(&key)
                        .payload(&value);
                match producer.send(r) {
                    Ok(()) => {
                        seqs[p as usize] += 1;
                        n += 1;
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        // Queue full: the same record again shortly.
                        d.inflight.fetch_sub(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                std::thread::sleep(SEND_GAP);
            }
        })
    };

    // Some load before the first kill.
    let warm = Instant::now() + Duration::from_secs(30);
    while deliveries.acks.lock().unwrap().len() < 1_000 && Instant::now() < warm {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut delays = Vec::new();
    let mut stalled = Vec::new();
    for k in 0..kills {
        c.wait_all_in_sync(&[FAILOVER_TOPIC], SETTLE);
        let partition = (k % FAILOVER_PARTITIONS as usize) as i32;
        let leader = c.wait_leader(FAILOVER_TOPIC, partition, None, SETTLE);
        let controller = c.wait_controller(SETTLE);
        let (victim, role) = match k % 3 {
            0 => (leader, format!("leader of {partition}")),
            1 => {
                let other = c
                    .ids()
                    .into_iter()
                    .find(|id| *id != leader && *id != controller)
                    .or_else(|| c.ids().into_iter().find(|id| *id != leader))
                    .expect("another node");
                (other, "another node".to_string())
            }
            _ => (controller, "controller".to_string()),
        };
        let kill = Instant::now();
        c.kill(victim);
        std::thread::sleep(pause);
        c.restart(victim);
        match resume_delay(&deliveries, kill) {
            Some(d) => {
                eprintln!(
                    "kill {}: node {victim} ({role}): every partition acknowledged again after {} ms",
                    k + 1,
                    d.as_millis()
                );
                delays.push(d);
            }
            None => {
                eprintln!(
                    "kill {}: node {victim} ({role}): writes did not resume",
                    k + 1
                );
                stalled.push(k + 1);
            }
        }
    }
    c.wait_all_in_sync(&[FAILOVER_TOPIC], SETTLE);
    // A last stretch of load after the final restart.
    let before = deliveries.acks.lock().unwrap().len();
    let tail = Instant::now() + Duration::from_secs(30);
    while deliveries.acks.lock().unwrap().len() < before + 500 && Instant::now() < tail {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    sender.join().expect("sender");
    producer
        .flush(Duration::from_secs(150))
        .expect("every record acknowledged or failed");
    let acks = std::mem::take(&mut *deliveries.acks.lock().unwrap());
    let failed = std::mem::take(&mut *deliveries.failed.lock().unwrap());
    let (p50, p99) = p50_p99(&delays);
    eprintln!(
        "{kills} kills: resume delay p50 {} ms, p99 {} ms; sent {}, acknowledged {}, failed {}",
        p50.as_millis(),
        p99.as_millis(),
        sent.load(Ordering::SeqCst),
        acks.len(),
        failed.len()
    );
    for f in failed.iter().take(10) {
        eprintln!("failed: {f:?}");
    }
    assert!(
        stalled.is_empty(),
        "writes never resumed after kills {stalled:?}"
    );
    assert!(
        acks.len() > before,
        "nothing acknowledged after the last restart"
    );

    // Every acknowledged record once, at its acknowledged offset; every
    // partition in send order, no record twice.
    let log = c.read_all(FAILOVER_TOPIC, FAILOVER_PARTITIONS, READ);
    let mut at: BTreeMap<(i32, u64), i64> = BTreeMap::new();
    for (p, records) in &log {
        let mut last: Option<u64> = None;
        for (i, m) in records.iter().enumerate() {
            assert_eq!(m.offset, i as i64, "{p}: offsets without gaps");
            assert_eq!(m.key, format!("key-{p}"), "{p}/{}", m.offset);
            let (vp, seq) = m.value.split_once('-').expect("value p-seq");
            assert_eq!(vp, p.to_string(), "{p}/{}", m.offset);
            let seq: u64 = seq.parse().expect("seq");
            assert!(
                last.map_or(true, |l| seq > l),
                "{p}/{}: record {seq} after {last:?}: out of order or twice",
                m.offset
            );
            last = Some(seq);
            assert!(at.insert((*p, seq), m.offset).is_none());
        }
    }
    for a in &acks {
        assert_eq!(
            at.get(&(a.partition, a.seq)),
            Some(&a.offset),
            "acknowledged record {}-{} at offset {}",
            a.partition,
            a.seq,
            a.offset
        );
    }
    assert!(acks.len() >= 1_000, "too little load: {}", acks.len());
}

// ---------------------------------------------------------------- a leader cut off

fn record(offset: i64, value: &str) -> Record {
    Record {
        transactional: false,
        control: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp: now_ms(),
        key: Some(Bytes::from_static(b"key")),
        value: Some(Bytes::from(value.to_string())),
        headers: Default::default(),
    }
}

/// A raw acks=all Produce of `values` as one batch straight to node `id`'s
/// Kafka port (not through the link proxies): the partition's error code,
/// or `None` when no answer came.
fn raw_produce_all(c: &Cluster, id: u64, topic: &str, values: &[String]) -> Option<i16> {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| record(i as i64, v))
        .collect();
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(encode_batch(&records));
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 3_000;
    r.topic_data = vec![t];
    let resp: Result<ProduceResponse, String> = raw_call(
        c.node(id).kafka_port,
        ApiKey::Produce,
        9,
        &r,
        Duration::from_secs(15),
    );
    match resp {
        Ok(resp) => Some(resp.responses[0].partition_responses[0].error_code),
        Err(e) => {
            eprintln!("raw produce to node {id}: {e}");
            None
        }
    }
}

#[test]
fn leader_cut_off_stops_acknowledging_and_truncates_its_tail_after_heal() {
    let _serial = serial();
    let mut c = Cluster::start(3, 1, &[]);
    let topic = "cut";
    c.create_topic(topic, 1, 3, &[("min.insync.replicas", "2")])
        .expect("create");
    c.wait_all_in_sync(&[topic], SETTLE);
    let p = c.producer(&[("acks", "all"), ("enable.idempotence", "true")]);
    let before: Vec<_> = (0..100)
        .map(|i| (0, "k".to_string(), format!("before-{i}"), None))
        .collect();
    produce_all(&p, topic, &before);
    drop(p);

    let old = c.wait_leader(topic, 0, None, SETTLE);
    eprintln!("cutting node {old} (leader of {topic}/0)");
    c.cut(old);

    // The cut-off leader appends but can no longer acknowledge acks=all.
    let unacked: Vec<String> = (0..5).map(|i| format!("unacked-{i}")).collect();
    let answer = raw_produce_all(&c, old, topic, &unacked);
    // No answer, or REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS(_AFTER_APPEND)
    // or NOT_LEADER_OR_FOLLOWER: anything but an acknowledgement, and not
    // a refusal of the batch itself.
    assert!(
        matches!(answer, None | Some(6 | 7 | 19 | 20)),
        "a leader cut off from its followers answered acks=all with {answer:?}"
    );
    eprintln!("cut-off leader answered acks=all with {answer:?}");

    // The majority elects a new leader and takes writes.
    let new = c.wait_leader(topic, 0, Some(old), SETTLE);
    eprintln!("node {new} leads {topic}/0 on the majority side");
    let p = c.producer(&[("acks", "all"), ("enable.idempotence", "true")]);
    let after: Vec<_> = (0..100)
        .map(|i| (0, "k".to_string(), format!("after-{i}"), None))
        .collect();
    let acked_after = produce_all(&p, topic, &after);
    drop(p);
    assert_eq!(
        acked_after[0].1, 100,
        "the new leader continues after offset 99"
    );

    // Healed, the old leader truncates its tail and rejoins the ISR.
    c.heal(old);
    c.wait_isr(topic, 0, &[1, 2, 3], SETTLE);
    let expected: Vec<String> = before.iter().chain(&after).map(|r| r.2.clone()).collect();
    let check = |c: &Cluster, when: &str| {
        let log = c.read_all(topic, 1, READ);
        let values: Vec<&str> = log[&0].iter().map(|m| m.value.as_str()).collect();
        assert_eq!(values, expected, "{topic}/0 {when}");
        let offsets: Vec<i64> = log[&0].iter().map(|m| m.offset).collect();
        assert_eq!(offsets, (0..200).collect::<Vec<_>>(), "{when}");
    };
    check(&c, "after the heal");

    // Read it again with the old leader leading: its log is the new one.
    if move_leader(&mut c, topic, 0, old, 4) {
        check(&c, "led by the old leader again");
        eprintln!("node {old} leads {topic}/0 again and serves the majority's log");
    } else {
        eprintln!(
            "node {old} did not become leader again; its log was checked only through the ISR"
        );
    }
}

// ---------------------------------------------------------------- changes while a node is down

fn describe_topic_config(c: &Cluster, id: u64, topic: &str, key: &str) -> Option<String> {
    let mut res = DescribeConfigsResource::default();
    res.resource_type = 2; // topic
    res.resource_name = StrBytes::from_string(topic.to_string());
    res.configuration_keys = Some(vec![StrBytes::from_string(key.to_string())]);
    let mut req = DescribeConfigsRequest::default();
    req.resources = vec![res];
    let resp: DescribeConfigsResponse = raw_call(
        c.node(id).kafka_port,
        ApiKey::DescribeConfigs,
        1,
        &req,
        Duration::from_secs(10),
    )
    .expect("DescribeConfigs");
    let r = &resp.results[0];
    assert_eq!(r.error_code, 0, "DescribeConfigs {topic} on node {id}");
    r.configs
        .iter()
        .find(|e| e.name.as_str() == key)
        .and_then(|e| e.value.as_ref().map(|v| v.to_string()))
}

/// `sluice cluster health --format json` against node `id`: its exit
/// code and its report.
fn health(c: &Cluster, id: u64) -> (Option<i32>, serde_json::Value) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["cluster", "health", "--format", "json", "--timeout", "10"])
        .args(["--brokers", &c.bootstrap_of(&[id])])
        .env_remove("SLUICE_BROKERS");
    let o = run_bounded(&mut cmd, None, Duration::from_secs(60));
    let report = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "cluster health printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), report)
}

/// Polls `sluice cluster health` on node `id` (bounded by `SETTLE`) until
/// its exit code is `code`; returns the report.
fn health_until(c: &Cluster, id: u64, code: i32) -> serde_json::Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (got, report) = health(c, id);
        if got == Some(code) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "cluster health never exited {code}: {got:?} {report}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn topics_created_deleted_and_altered_while_a_node_is_down_reach_it_after_restart() {
    let _serial = serial();
    let mut opts = ClusterOptions::new(3, 1);
    opts.links = false;
    let mut c = Cluster::start_with(opts);
    c.create_topic("keep", 3, 3, &[]).expect("create keep");
    c.create_topic("doomed", 2, 3, &[]).expect("create doomed");
    c.wait_all_in_sync(&["keep", "doomed"], SETTLE);
    let down = 3;
    // A partition of "keep" whose preferred leader is the node going down.
    let v = c.metadata(Some(&["keep"])).expect("metadata");
    let part = v.topics["keep"]
        .1
        .iter()
        .find(|p| p.replicas.first() == Some(&(down as i32)))
        .map_or(0, |p| p.index);
    let p = c.producer(&[("acks", "all")]);
    let first: Vec<_> = (0..50)
        .map(|i| (part, "k".to_string(), format!("first-{i}"), None))
        .collect();
    produce_all(&p, "keep", &first);

    c.kill(down);
    // Fenced: the others stop listing it.
    let deadline = Instant::now() + SETTLE;
    while c
        .metadata_from(1, Some(&[]))
        .map(|v| v.brokers.contains_key(&(down as i32)))
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "node {down} never fenced");
        std::thread::sleep(Duration::from_millis(100));
    }
    // `sluice cluster health` fails while partitions lack a replica.
    let report = health_until(&c, 1, 1);
    assert_eq!(report["healthy"], serde_json::json!(false), "{report}");
    let problems = report["problems"].as_array().cloned().unwrap_or_default();
    assert!(
        !problems.is_empty()
            && problems.iter().all(|p| p
                .as_str()
                .is_some_and(|p| p.ends_with("is under-replicated"))),
        "{report}"
    );

    let admin = c.admin();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let deleted = futures::executor::block_on(admin.delete_topics(&["doomed"], &opts))
        .expect("delete_topics");
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    let alter = AlterConfig::new(ResourceSpecifier::Topic("keep")).set("retention.ms", "3600000");
    let altered =
        futures::executor::block_on(admin.alter_configs([&alter], &opts)).expect("alter_configs");
    assert!(altered.iter().all(Result::is_ok), "{altered:?}");
    c.create_topic("born", 3, 2, &[])
        .expect("create born with a node down");
    let grown = futures::executor::block_on(
        admin.create_partitions([&NewPartitions::new("born", 4)], &opts),
    )
    .expect("create_partitions");
    assert!(grown.iter().all(Result::is_ok), "{grown:?}");
    c.wait_topic("born", 4, SETTLE);
    let second: Vec<_> = (0..50)
        .map(|i| (part, "k".to_string(), format!("second-{i}"), None))
        .collect();
    produce_all(&p, "keep", &second);
    drop(p);

    c.restart(down);
    // Its own Metadata shows every change.
    let deadline = Instant::now() + SETTLE;
    loop {
        let v = c
            .metadata_from(down, Some(&["keep", "doomed", "born"]))
            .expect("metadata");
        let ok = v.topics["doomed"].0 == UNKNOWN_TOPIC_OR_PARTITION
            && v.topics["born"].0 == 0
            && v.topics["born"].1.len() == 4
            && v.topics["keep"].0 == 0
            && v.topics["keep"].1.len() == 3;
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {down} did not catch up with the metadata: {:?}",
            v.topics
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        describe_topic_config(&c, down, "keep", "retention.ms").as_deref(),
        Some("3600000"),
        "the config altered while node {down} was down"
    );
    c.wait_all_in_sync(&["keep", "born"], SETTLE);
    let report = health_until(&c, down, 0);
    assert_eq!(
        (&report["healthy"], &report["problems"]),
        (&serde_json::json!(true), &serde_json::json!([])),
        "{report}"
    );

    // Led by the restarted node, the partition holds everything written
    // while it was down, and takes writes.
    assert!(
        move_leader(&mut c, "keep", part, down, 4),
        "node {down} never led keep/{part} again"
    );
    let p = c.producer(&[("acks", "all")]);
    let third: Vec<_> = (0..10)
        .map(|i| (part, "k".to_string(), format!("third-{i}"), None))
        .collect();
    let acked = produce_all(&p, "keep", &third);
    assert_eq!(acked[0].1, 100);
    let log = c.read_all("keep", 3, READ);
    let values: Vec<&str> = log[&part].iter().map(|m| m.value.as_str()).collect();
    let expected: Vec<&str> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|r| r.2.as_str())
        .collect();
    assert_eq!(values, expected);
}

// ---------------------------------------------------------------- consumer group

fn group_consumer(c: &Cluster, group: &str) -> BaseConsumer {
    let mut cfg = c.client_config();
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500")
        .set("enable.partition.eof", "false");
    cfg.create().expect("group consumer")
}

/// Commits `offset + 1` for `topic`/`partition`, retrying while the
/// coordinator moves; false when it never went through.
fn commit_one(consumer: &BaseConsumer, topic: &str, partition: i32, offset: i64) -> bool {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1))
        .expect("tpl");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => return true,
            Err(e) => {
                eprintln!("commit {topic}/{partition}@{}: {e} (retrying)", offset + 1);
                if Instant::now() > deadline {
                    return false;
                }
                // Keep the group session alive while waiting.
                let _ = consumer.poll(Duration::from_millis(0));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[test]
fn consumer_group_keeps_its_committed_offsets_through_the_loss_of_its_coordinator() {
    let _serial = serial();
    let mut opts = ClusterOptions::new(3, 1);
    opts.links = false;
    opts.args = vec!["--group-initial-rebalance-delay-ms".into(), "200".into()];
    let mut c = Cluster::start_with(opts);
    let topic = "grouped";
    c.create_topic(topic, 3, 3, &[]).expect("create");
    let p = c.producer(&[("acks", "all")]);
    let records: Vec<_> = (0..300)
        .map(|i| (i % 3, format!("k{i}"), format!("v{i}"), None))
        .collect();
    produce_all(&p, topic, &records);
    drop(p);

    let group = "survivors";
    let a = group_consumer(&c, group);
    a.subscribe(&[topic]).expect("subscribe");
    let mut seen: Vec<(i32, i64)> = Vec::new();
    let mut uncommitted: BTreeSet<(i32, i64)> = BTreeSet::new();
    let consume_until = |a: &BaseConsumer,
                         seen: &mut Vec<(i32, i64)>,
                         uncommitted: &mut BTreeSet<(i32, i64)>,
                         n: usize| {
        let deadline = Instant::now() + SETTLE;
        while seen.iter().collect::<BTreeSet<_>>().len() < n {
            assert!(
                Instant::now() < deadline,
                "consumed {} distinct records of {n}",
                seen.iter().collect::<BTreeSet<_>>().len()
            );
            match a.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let (part, off) = (m.partition(), m.offset());
                    drop(m);
                    seen.push((part, off));
                    if !commit_one(a, topic, part, off) {
                        uncommitted.insert((part, off));
                    }
                }
                Some(Err(e)) => eprintln!("consumer: {e} (continuing)"),
                None => {}
            }
        }
    };
    consume_until(&a, &mut seen, &mut uncommitted, 150);

    // Offsets of __consumer_offsets are replicated like any partition.
    let coordinator = c.coordinator(group).expect("coordinator");
    eprintln!("killing node {coordinator}, the coordinator of {group}");
    c.kill(coordinator);
    consume_until(&a, &mut seen, &mut uncommitted, 300);
    let mut counts: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for s in &seen {
        *counts.entry(*s).or_default() += 1;
    }
    let twice: Vec<_> = counts
        .iter()
        .filter(|(k, n)| **n > 1 && !uncommitted.contains(k))
        .collect();
    assert!(
        twice.is_empty(),
        "committed records read again after the coordinator died: {twice:?}"
    );
    let new_coordinator = c.coordinator(group).expect("coordinator");
    assert_ne!(new_coordinator, coordinator);
    drop(a);

    // A fresh member of the group starts from the committed offsets: the
    // end of every partition, nothing left to read.
    c.restart(coordinator);
    let b = group_consumer(&c, group);
    let mut tpl = TopicPartitionList::new();
    for part in 0..3 {
        tpl.add_partition(topic, part);
    }
    let committed = b
        .committed_offsets(tpl, Duration::from_secs(20))
        .expect("committed offsets");
    for e in committed.elements() {
        assert_eq!(
            e.offset(),
            Offset::Offset(100),
            "committed offset of {topic}/{}",
            e.partition()
        );
    }
    b.subscribe(&[topic]).expect("subscribe");
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        if let Some(Ok(m)) = b.poll(Duration::from_millis(100)) {
            panic!(
                "a committed record was delivered again: {}/{}",
                m.partition(),
                m.offset()
            );
        }
    }
}

// ---------------------------------------------------------------- transactions

/// Partitions of the transactional topic: each node leads two.
const TXN_PARTITIONS: i32 = 6;
/// Records per partition and transaction.
const TXN_PER_PARTITION: usize = 3;

/// A consumer of `isolation.level` `isolation`, for `assign()`.
fn isolated_consumer(c: &Cluster, isolation: &str) -> BaseConsumer {
    let mut cfg = c.client_config();
    cfg.set("group.id", "sluice-cluster-txn")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", isolation);
    cfg.create().expect("consumer")
}

/// The end offset of every partition as a consumer of `isolation` sees it:
/// the high watermark (markers included) for read_uncommitted, the last
/// stable offset for read_committed.
fn txn_ends(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i64>, String> {
    (0..TXN_PARTITIONS)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, high)| high)
                .map_err(|e| format!("{topic}/{p}: {e}"))
        })
        .collect()
}

/// Reads every partition of `topic` from the beginning with `isolation`
/// until each one's position reaches `ends` (a position moves past the
/// markers too); the values by partition, in offset order.
fn read_isolated(
    c: &Cluster,
    topic: &str,
    ends: &[i64],
    isolation: &str,
) -> BTreeMap<i32, Vec<(i64, String)>> {
    let consumer = isolated_consumer(c, isolation);
    let mut tpl = TopicPartitionList::new();
    for p in 0..TXN_PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + READ;
    let mut out: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.entry(m.partition()).or_default().push((
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )),
            Some(Err(e)) => eprintln!("{isolation} read of {topic}: {e} (continuing)"),
            None => {}
        }
        let at: BTreeMap<i32, i64> = consumer
            .position()
            .expect("position")
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect();
        let reached =
            (0..TXN_PARTITIONS).all(|p| at.get(&p).is_some_and(|o| *o >= ends[p as usize]));
        if reached {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{isolation} read of {topic} stopped at {at:?}, ends {ends:?}"
        );
    }
}

/// `init_transactions`, called again while it fails (the coordinator's
/// partition of `__transaction_state` is created on first use).
fn init_transactions(p: &FutureProducer) {
    let deadline = Instant::now() + SETTLE;
    loop {
        match p.init_transactions(Duration::from_secs(10)) {
            Ok(()) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "init_transactions: {e}");
                eprintln!("init_transactions: {e} (calling it again)");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[test]
fn transactions_over_partitions_led_by_every_node_commit_and_abort_everywhere() {
    let _serial = serial();
    let mut opts = ClusterOptions::new(3, 2);
    opts.links = false;
    let c = Cluster::start_with(opts);
    let topic = "txn-spread";
    c.create_topic(topic, TXN_PARTITIONS, 3, &[])
        .expect("create");
    c.wait_all_in_sync(&[topic], SETTLE);
    let leaders: BTreeSet<u64> = (0..TXN_PARTITIONS)
        .map(|p| c.wait_leader(topic, p, None, SETTLE))
        .collect();
    assert_eq!(
        leaders,
        c.ids().into_iter().collect(),
        "every node leads a partition of {topic}"
    );

    let id = "txn-spread-1";
    let p = c.producer(&[("transactional.id", id)]);
    init_transactions(&p);
    let coordinator = c.txn_coordinator(id).expect("transaction coordinator");
    eprintln!("node {coordinator} coordinates {id}; partition leaders {leaders:?}");

    // Commit, abort, commit: the aborted records sit between committed
    // ones in every partition.
    let mut committed: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let mut all: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for (round, commit) in [(0, true), (1, false), (2, true)] {
        p.begin_transaction()
            .unwrap_or_else(|e| panic!("begin {round}: {e}"));
        let records: Vec<_> = (0..TXN_PARTITIONS)
            .flat_map(|part| {
                (0..TXN_PER_PARTITION)
                    .map(move |i| (part, format!("k{i}"), format!("r{round}-p{part}-{i}"), None))
            })
            .collect();
        let acked = produce_all(&p, topic, &records);
        let end = if commit {
            p.commit_transaction(Duration::from_secs(60))
        } else {
            p.abort_transaction(Duration::from_secs(60))
        };
        end.unwrap_or_else(|e| panic!("end of round {round} (commit {commit}): {e}"));
        for ((part, _, value, _), (at_part, offset)) in records.iter().zip(&acked) {
            assert_eq!(part, at_part, "delivered to the partition asked for");
            all.entry(*part).or_default().push((*offset, value.clone()));
            if commit {
                committed
                    .entry(*part)
                    .or_default()
                    .push((*offset, value.clone()));
            }
        }
    }
    drop(p);

    // The markers reach every partition, whichever node leads it: the
    // last stable offset catches up with the high watermark everywhere.
    let lso_reader = isolated_consumer(&c, "read_committed");
    let hw_reader = isolated_consumer(&c, "read_uncommitted");
    let deadline = Instant::now() + SETTLE;
    let hw = loop {
        let lso = txn_ends(&lso_reader, topic);
        let hw = txn_ends(&hw_reader, topic);
        if let (Ok(lso), Ok(hw)) = (&lso, &hw) {
            if lso == hw {
                break hw.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: LSO {lso:?} never reached HW {hw:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let per_partition = (3 * (TXN_PER_PARTITION + 1)) as i64;
    assert_eq!(
        hw,
        vec![per_partition; TXN_PARTITIONS as usize],
        "each transaction adds its records and one marker to every partition"
    );
    let read = read_isolated(&c, topic, &hw, "read_committed");
    assert_eq!(
        read, committed,
        "read_committed: the committed records, in order, and nothing else"
    );
    let read = read_isolated(&c, topic, &hw, "read_uncommitted");
    assert_eq!(read, all, "read_uncommitted: every record, in order");
}

// ---------------------------------------------------------------- many topics

#[test]
fn a_thousand_topics_of_three_replicated_partitions_survive_a_node_loss() {
    let _serial = serial();
    let topics = env_usize("SLUICE_CLUSTER_TOPICS", 1000);
    let partitions = 3;
    let mut opts = ClusterOptions::new(3, 1);
    opts.links = false;
    let mut c = Cluster::start_with(opts);
    let names: Vec<String> = (0..topics).map(|i| format!("many-{i:05}")).collect();

    let started = Instant::now();
    let admin = c.admin();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
    for chunk in names.chunks(100) {
        let new: Vec<_> = chunk
            .iter()
            .map(|n| {
                rdkafka::admin::NewTopic::new(
                    n,
                    partitions,
                    rdkafka::admin::TopicReplication::Fixed(3),
                )
            })
            .collect();
        let results =
            futures::executor::block_on(admin.create_topics(&new, &opts)).expect("create_topics");
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
        }
    }
    // Every node knows every partition's leader.
    let deadline = Instant::now() + SETTLE;
    for id in c.ids() {
        loop {
            let v = c.metadata_from(id, None).expect("metadata");
            let led = names
                .iter()
                .filter(|n| {
                    v.topics.get(n.as_str()).is_some_and(|(e, ps)| {
                        *e == 0
                            && ps.len() == partitions as usize
                            && ps.iter().all(|p| p.leader >= 1)
                    })
                })
                .count();
            if led == topics {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} knows {led} of {topics} topics with leaders"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let created = started.elapsed();

    let started = Instant::now();
    let p = c.producer(&[("acks", "all"), ("linger.ms", "20")]);
    for chunk in names.chunks(250) {
        let futures: Vec<_> = chunk
            .iter()
            .flat_map(|n| (0..partitions).map(move |part| (n, part)))
            .map(|(n, part)| {
                let value = format!("{n}/{part}");
                let f = p
                    .send_result(
                        rdkafka::producer::FutureRecord::to(n)
                            .partition(part)
                            .key("k")
                            .payload(&value),
                    )
                    .map_err(|(e, _)| e)
                    .expect("enqueue");
                (value, f)
            })
            .collect();
        for (value, f) in futures {
            let d = futures::executor::block_on(f).expect("delivery");
            let d = d.unwrap_or_else(|(e, _)| panic!("{value}: {e}"));
            assert_eq!(d.offset, 0, "{value}");
        }
    }
    drop(p);
    let produced = started.elapsed();

    let read_everything = |c: &Cluster, when: &str| {
        let started = Instant::now();
        let consumer = c.consumer();
        let mut tpl = TopicPartitionList::new();
        for n in &names {
            for part in 0..partitions {
                tpl.add_partition_offset(n, part, Offset::Beginning)
                    .expect("tpl");
            }
        }
        consumer.assign(&tpl).expect("assign");
        let mut got: BTreeSet<String> = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(180);
        while got.len() < topics * partitions as usize {
            assert!(
                Instant::now() < deadline,
                "{when}: read {} of {} records",
                got.len(),
                topics * partitions as usize
            );
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let value =
                        String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                    assert_eq!(value, format!("{}/{}", m.topic(), m.partition()), "{when}");
                    assert_eq!(m.offset(), 0, "{when}: {value}");
                    got.insert(value);
                }
                Some(Err(e)) => eprintln!("{when}: consumer: {e} (continuing)"),
                None => {}
            }
        }
        started.elapsed()
    };
    let read = read_everything(&c, "all nodes up");
    let rss: Vec<String> = c
        .ids()
        .iter()
        .map(|id| {
            format!(
                "node {id} {:.1} MiB",
                c.rss_bytes(*id) as f64 / (1 << 20) as f64
            )
        })
        .collect();
    eprintln!(
        "{topics} topics x {partitions} partitions, RF=3: created in {:.2} s, one record each in {:.2} s, read back in {:.2} s; RSS {}",
        created.as_secs_f64(),
        produced.as_secs_f64(),
        read.as_secs_f64(),
        rss.join(", ")
    );

    // One node lost: every partition is led by the other two and readable.
    let victim = 1;
    c.kill(victim);
    let deadline = Instant::now() + SETTLE;
    loop {
        let v = c.metadata_from(2, None).expect("metadata");
        let stale = names
            .iter()
            .flat_map(|n| {
                v.topics
                    .get(n.as_str())
                    .map(|t| t.1.clone())
                    .unwrap_or_default()
            })
            .filter(|p| p.leader < 1 || p.leader == victim as i32)
            .count();
        if stale == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stale} partitions still led by node {victim} or leaderless"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let read = read_everything(&c, "node 1 down");
    eprintln!(
        "with node {victim} down: all {} records read back in {:.2} s",
        topics * partitions as usize,
        read.as_secs_f64()
    );
}

#[allow(dead_code)]
fn unused(_: Consumed) {}

// ---------------------------------------------------------------- clean stop

#[test]
fn sigterm_stops_every_node_of_a_cluster_even_the_last_one() {
    let _serial = serial();
    let mut opts = ClusterOptions::new(3, 1);
    opts.links = false;
    let mut c = Cluster::start_with(opts);
    c.create_topic("stopping", 3, 3, &[("min.insync.replicas", "2")])
        .expect("create");
    let p = c.producer(&[("acks", "all")]);
    let records: Vec<_> = (0..30)
        .map(|i| (i % 3, "k".to_string(), format!("v{i}"), None))
        .collect();
    produce_all(&p, "stopping", &records);
    drop(p);
    // One after the other: the first with a full cluster, the last alone.
    for id in [2, 3, 1] {
        let started = Instant::now();
        let status = c.terminate(id);
        assert!(status.success(), "node {id} exited with {status}");
        eprintln!(
            "node {id} stopped on SIGTERM in {} ms",
            started.elapsed().as_millis()
        );
    }
}
