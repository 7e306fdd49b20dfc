//! The admin calls cluster tools make, against three real nodes on loopback
//! (`common::cluster`), with librdkafka's admin client (rdkafka) where it
//! has the call and raw requests (the `kafka-protocol` codec) where it does
//! not (ElectLeaders). kafka-python's admin client covers every one of them
//! too, and the reassignment that must not lose a record, in
//! `tests/python/test_cluster_admin.py`.
//!
//! - CreatePartitions with explicit replica assignments, refused for an
//!   unknown broker;
//! - broker configs: described with this node's values, read-only;
//! - ElectLeaders: preferred (after the preferred leader came back), every
//!   partition at once (null), unclean (a partition whose only in-sync
//!   replica died, led then by an out-of-sync one), and the topic config
//!   `unclean.leader.election.enable` doing the same without a request.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster::{raw_call, Cluster};
use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, ElectLeadersRequest, ElectLeadersResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;

const WAIT: Duration = Duration::from_secs(60);
const RAW_TIMEOUT: Duration = Duration::from_secs(30);
const ELECTION_NOT_NEEDED: i16 = 84;

fn opts() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
}

/// CreateTopics with one replica list per partition.
fn create_assigned(c: &Cluster, name: &str, lists: &[&[i32]], configs: &[(&str, &str)]) {
    let admin = c.admin();
    let mut topic = NewTopic::new(name, lists.len() as i32, TopicReplication::Variable(lists));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = futures::executor::block_on(admin.create_topics([&topic], &opts()))
        .unwrap_or_else(|e| panic!("create_topics {name}: {e}"));
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }
    c.wait_topic(name, lists.len() as i32, WAIT);
}

/// ElectLeaders v2 through node `via`: (topic, partition) -> error code.
fn elect(
    c: &Cluster,
    via: u64,
    election_type: i8,
    partitions: Option<&[(&str, i32)]>,
) -> Vec<(String, i32, i16)> {
    let mut req = ElectLeadersRequest::default();
    req.election_type = election_type;
    req.timeout_ms = 30_000;
    req.topic_partitions = partitions.map(|ps| {
        ps.iter()
            .map(|(t, p)| {
                let mut tp = TopicPartitions::default();
                tp.topic = TopicName(StrBytes::from_string(t.to_string()));
                tp.partitions = vec![*p];
                tp
            })
            .collect()
    });
    let resp: ElectLeadersResponse = raw_call(
        c.node(via).kafka_port,
        ApiKey::ElectLeaders,
        2,
        &req,
        RAW_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("ElectLeaders via {via}: {e}"));
    assert_eq!(resp.error_code, 0, "{resp:?}");
    resp.replica_election_results
        .iter()
        .flat_map(|t| {
            t.partition_result
                .iter()
                .map(move |p| (t.topic.to_string(), p.partition_id, p.error_code))
        })
        .collect()
}

fn produce(c: &Cluster, topic: &str, count: usize) {
    let p = c.producer(&[("acks", "1")]);
    for i in 0..count {
        let value = format!("v{i}");
        let record = FutureRecord::<(), _>::to(topic)
            .payload(&value)
            .partition(0);
        futures::executor::block_on(p.send(record, Duration::from_secs(30)))
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }
}

/// Waits until every reachable node reports `topic`/0 without a leader.
fn wait_leaderless(c: &Cluster, topic: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let leaders: BTreeSet<i32> = c
            .reachable()
            .into_iter()
            .filter_map(|id| c.metadata_from(id, Some(&[topic])).ok())
            .filter_map(|v| v.partition(topic, 0).map(|p| p.leader))
            .collect();
        if leaders == BTreeSet::from([-1]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}/0 still led: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn explicit_partition_assignments_and_broker_configs() {
    let c = Cluster::start(3, 1, &[]);
    create_assigned(&c, "grow", &[&[1, 2]], &[]);
    let admin = c.admin();
    let grow = NewPartitions::new("grow", 3).assign(&[&[2, 3], &[3, 1]]);
    let r = futures::executor::block_on(admin.create_partitions([&grow], &opts())).expect("call");
    assert!(r[0].is_ok(), "{r:?}");
    c.wait_topic("grow", 3, WAIT);
    let v = c.metadata(Some(&["grow"])).expect("metadata");
    let lists: Vec<Vec<i32>> = (0..3)
        .map(|p| v.partition("grow", p).expect("partition").replicas.clone())
        .collect();
    assert_eq!(lists, vec![vec![1, 2], vec![2, 3], vec![3, 1]]);
    assert_eq!(v.partition("grow", 2).expect("p2").leader, 3);
    let bad = NewPartitions::new("grow", 4).assign(&[&[2, 9]]);
    let r = futures::executor::block_on(admin.create_partitions([&bad], &opts())).expect("call");
    assert!(
        matches!(&r[0], Err((_, RDKafkaErrorCode::InvalidReplicaAssignment))),
        "{r:?}"
    );

    // Broker 2's configs, as node 2 reports them (librdkafka sends there).
    let described = futures::executor::block_on(
        admin.describe_configs([&ResourceSpecifier::Broker(2)], &opts()),
    )
    .expect("describe");
    let res = described[0].as_ref().expect("broker 2");
    let id = res.get("broker.id").expect("broker.id");
    assert_eq!(id.value.as_deref(), Some("2"));
    assert!(id.is_read_only);
    let voters = res.get("controller.quorum.voters").expect("voters");
    assert_eq!(
        voters.value.as_deref().map(|v| v.split(',').count()),
        Some(3)
    );
    // rdkafka's AlterConfigs drops per-resource errors: a raw request.
    let mut config = AlterableConfig::default();
    config.name = StrBytes::from_static_str("min.insync.replicas");
    config.value = Some(StrBytes::from_static_str("2"));
    let mut resource = AlterConfigsResource::default();
    resource.resource_type = 4;
    resource.resource_name = StrBytes::from_static_str("2");
    resource.configs = vec![config];
    let mut req = AlterConfigsRequest::default();
    req.resources = vec![resource];
    let resp: AlterConfigsResponse = raw_call(
        c.node(2).kafka_port,
        ApiKey::AlterConfigs,
        1,
        &req,
        RAW_TIMEOUT,
    )
    .expect("AlterConfigs");
    let r = &resp.responses[0];
    assert_eq!(r.error_code, 40, "INVALID_CONFIG: {r:?}");
    let message = r.error_message.as_deref().unwrap_or_default();
    assert!(message.contains("--min-insync-replicas"), "{message}");
    // Broker 3's configs are not node 2's to describe.
    let mut other = req.clone();
    other.resources[0].resource_name = StrBytes::from_static_str("3");
    let resp: AlterConfigsResponse = raw_call(
        c.node(2).kafka_port,
        ApiKey::AlterConfigs,
        1,
        &other,
        RAW_TIMEOUT,
    )
    .expect("AlterConfigs");
    assert_eq!(resp.responses[0].error_code, 42, "INVALID_REQUEST");
}

#[test]
fn preferred_unclean_and_topic_config_elections() {
    let mut c = Cluster::start(
        3,
        1,
        &["--broker-heartbeat-ms", "100", "--broker-lease-ms", "1000"],
    );
    create_assigned(&c, "pref", &[&[1, 2, 3]], &[]);
    create_assigned(&c, "clean", &[&[2, 3]], &[]);
    create_assigned(
        &c,
        "dirty",
        &[&[2, 3]],
        &[("unclean.leader.election.enable", "true")],
    );
    c.wait_all_in_sync(&["pref", "clean", "dirty"], WAIT);

    // Preferred: node 1 leaves and comes back; an election gives it back
    // its leadership, with a new epoch.
    c.kill(1);
    assert_eq!(c.wait_leader("pref", 0, Some(1), WAIT), 2);
    c.restart(1);
    let before = c.wait_isr("pref", 0, &[1, 2, 3], WAIT);
    assert_eq!(before.leader, 2);
    let r = elect(&c, 3, 0, Some(&[("pref", 0)]));
    assert_eq!(r, vec![("pref".to_string(), 0, 0)]);
    assert_eq!(c.wait_leader("pref", 0, Some(2), WAIT), 1);
    let after = c.metadata(Some(&["pref"])).expect("metadata");
    assert!(after.partition("pref", 0).expect("p").leader_epoch > before.leader_epoch);
    let r = elect(&c, 2, 0, Some(&[("pref", 0), ("nope", 0)]));
    assert_eq!(r[0].2, ELECTION_NOT_NEEDED, "{r:?}");
    assert_eq!(r[1].2, 3, "unknown topic: {r:?}");
    // Every partition (null): only those that move are answered, and
    // every one of them moves (offsets partitions node 1 led before), once
    // node 1 is back in the ISR of every partition, internal ones too.
    let every: Vec<String> = c
        .metadata(None)
        .expect("metadata")
        .topics
        .into_keys()
        .collect();
    c.wait_all_in_sync(&every.iter().map(String::as_str).collect::<Vec<_>>(), WAIT);
    for (t, p, code) in elect(&c, 1, 0, None) {
        assert_eq!(code, 0, "{t}/{p}");
    }
    assert!(elect(&c, 1, 0, None).is_empty(), "nothing left to elect");

    // Unclean: node 3 dies and falls behind; then node 2, the last
    // in-sync replica, dies too.
    c.kill(3);
    c.wait_isr("clean", 0, &[2], WAIT);
    c.wait_isr("dirty", 0, &[2], WAIT);
    produce(&c, "clean", 5);
    produce(&c, "dirty", 5);
    c.kill(2);
    c.restart(3);
    // The topic that allows it is led by its out-of-sync replica at once.
    assert_eq!(c.wait_leader("dirty", 0, None, WAIT), 3);
    let dirty = c.wait_isr("dirty", 0, &[3], WAIT);
    assert_eq!(dirty.leader, 3);
    // The other stays leaderless until an unclean election is asked for.
    wait_leaderless(&c, "clean", WAIT);
    std::thread::sleep(Duration::from_secs(2));
    wait_leaderless(&c, "clean", Duration::from_secs(1));
    assert_eq!(
        elect(&c, 1, 0, Some(&[("clean", 0)])),
        vec![("clean".to_string(), 0, 80)],
        "preferred replica 2 is down"
    );
    assert_eq!(
        elect(&c, 1, 1, Some(&[("clean", 0), ("pref", 0)])),
        vec![
            ("clean".to_string(), 0, 0),
            ("pref".to_string(), 0, ELECTION_NOT_NEEDED)
        ]
    );
    assert_eq!(c.wait_leader("clean", 0, None, WAIT), 3);
    c.wait_isr("clean", 0, &[3], WAIT);
    // The new leader takes writes.
    produce(&c, "clean", 1);
}
