//! Three metadata nodes in one process, over loopback: replication through
//! a follower, leader failover, a restarted node catching up, broker
//! fencing and unfencing, replication-factor and ISR-change checks,
//! security metadata written through a follower.
//! Every wait is bounded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use sluice_raft::{
    AclBinding, AclOperation, AclPatternType, AclPermission, AclResourceType, ClusterConfig,
    MetaConfig, MetaError, Metadata, QuotaEntity, QuotaName, TopicSpec, NO_LEADER,
    REQUEST_PERCENTAGE,
};

const HEARTBEAT_MS: u64 = 100;
const LEASE_MS: u64 = 1_000;
/// Bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

#[path = "../../broker/tests/common/ports.rs"]
mod ports;
use ports::free_port;

struct Cluster {
    _dir: tempfile::TempDir,
    configs: BTreeMap<u64, MetaConfig>,
    nodes: BTreeMap<u64, Metadata>,
}

impl Cluster {
    fn configs() -> (tempfile::TempDir, BTreeMap<u64, MetaConfig>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: BTreeMap<u64, u16> = (1..=3).map(|id| (id, free_port())).collect();
        let voters: BTreeMap<u64, String> = ports
            .iter()
            .map(|(id, port)| (*id, format!("127.0.0.1:{port}")))
            .collect();
        let configs = ports
            .iter()
            .map(|(&id, &port)| {
                let cfg = MetaConfig {
                    data_dir: PathBuf::from(dir.path()).join(format!("node-{id}")),
                    node_id: id,
                    shards: 2,
                    partitions_per_shard_max: 100,
                    advertised_host: "127.0.0.1".into(),
                    advertised_port: 9000 + id as u16,
                    endpoints: vec![sluice_raft::Endpoint {
                        listener: "EXTERNAL".into(),
                        host: format!("node-{id}.example"),
                        port: 9100 + id as u16,
                    }],
                    cluster: Some(ClusterConfig {
                        tls: None,
                        listen: format!("127.0.0.1:{port}").parse().expect("addr"),
                        voters: voters.clone(),
                        heartbeat_ms: HEARTBEAT_MS,
                        lease_ms: LEASE_MS,
                        heartbeat_when_serving: false,
                    }),
                };
                (id, cfg)
            })
            .collect();
        (dir, configs)
    }

    /// Starts the nodes in `order`, each on its own thread (a node's start
    /// blocks until there is a quorum).
    fn start(order: &[u64]) -> Cluster {
        init_logs();
        let (dir, configs) = Cluster::configs();
        let (tx, rx) = mpsc::channel();
        for (i, id) in order.iter().enumerate() {
            let cfg = configs[id].clone();
            let tx = tx.clone();
            let id = *id;
            // `Metadata::start` blocks until a quorum exists, so each node starts
            // on a thread of its own (as the broker starts it before its shards).
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150 * i as u64));
                let _ = tx.send((id, Metadata::start(cfg)));
            });
        }
        let mut nodes = BTreeMap::new();
        for _ in order {
            let (id, started) = rx.recv_timeout(WAIT).expect("every node starts in time");
            nodes.insert(id, started.expect("node starts"));
        }
        let cluster = Cluster {
            _dir: dir,
            configs,
            nodes,
        };
        cluster.wait_live(&[1, 2, 3]);
        cluster
    }

    fn node(&self, id: u64) -> &Metadata {
        &self.nodes[&id]
    }

    /// The controller, once every running node agrees on a running one.
    fn controller(&self) -> u64 {
        wait_for("an agreed controller", || {
            let seen: Vec<Option<u64>> = self.nodes.values().map(Metadata::controller).collect();
            match seen.first() {
                Some(Some(c))
                    if self.nodes.contains_key(c) && seen.iter().all(|s| *s == Some(*c)) =>
                {
                    Some(*c)
                }
                _ => None,
            }
        })
    }

    fn follower(&self) -> u64 {
        let controller = self.controller();
        *self
            .nodes
            .keys()
            .find(|id| **id != controller)
            .expect("a follower")
    }

    /// Waits until every running node sees exactly `ids` registered and
    /// unfenced.
    fn wait_live(&self, ids: &[u64]) {
        wait_for("brokers live", || {
            self.nodes
                .values()
                .all(|m| {
                    let live: Vec<u64> = m
                        .view()
                        .brokers
                        .values()
                        .filter(|b| !b.fenced)
                        .map(|b| b.id)
                        .collect();
                    live == ids
                })
                .then_some(())
        });
    }

    fn stop(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("running");
        node.shutdown();
    }

    fn restart(&mut self, id: u64) {
        let cfg = self.configs[&id].clone();
        let (tx, rx) = mpsc::channel();
        // `Metadata::start` blocks until the node rejoins a quorum.
        std::thread::spawn(move || {
            let _ = tx.send(Metadata::start(cfg));
        });
        let node = rx
            .recv_timeout(WAIT)
            .expect("restarts in time")
            .expect("restarts");
        self.nodes.insert(id, node);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values() {
            node.shutdown();
        }
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spec(name: &str, partitions: u32, replication_factor: u16) -> TopicSpec {
    TopicSpec {
        name: name.to_string(),
        partitions,
        configs: BTreeMap::new(),
        replication_factor,
        assignment: Vec::new(),
    }
}

fn assigned(name: &str, assignment: Vec<Vec<u64>>) -> TopicSpec {
    TopicSpec {
        partitions: assignment.len() as u32,
        assignment,
        ..spec(name, 1, 1)
    }
}

#[test]
fn follower_writes_replicate_leader_fails_over_node_rejoins() {
    let mut cluster = Cluster::start(&[3, 1, 2]);
    let follower = cluster.follower();
    let created = block_on(cluster.node(follower).create_topic(spec("rf3", 3, 3)))
        .expect("create through a follower");
    for p in &created.partitions {
        assert_eq!(p.replicas.len(), 3);
        assert_eq!(p.isr, p.replicas);
        assert_eq!(p.leader, p.replicas[0]);
        assert_eq!(p.leader_epoch, 0);
    }
    let mut leaders: Vec<u64> = created.partitions.iter().map(|p| p.leader).collect();
    leaders.sort_unstable();
    assert_eq!(leaders, vec![1, 2, 3], "leaderships spread over the nodes");
    for (id, node) in &cluster.nodes {
        let seen = wait_for("the topic on every node", || {
            node.view().topics.get("rf3").cloned()
        });
        assert_eq!(seen, created, "node {id}");
    }
    // Security entries are forwarded too, and a quota value crosses JSON
    // with its bits.
    let acl = AclBinding {
        resource_type: AclResourceType::Group,
        resource_name: "g-".into(),
        pattern_type: AclPatternType::Prefixed,
        principal: "User:*".into(),
        host: "*".into(),
        operation: AclOperation::Read,
        permission: AclPermission::Allow,
    };
    let acls = block_on(cluster.node(follower).create_acls(vec![acl])).expect("acls");
    assert_eq!(acls, vec![Ok(())]);
    let entity = QuotaEntity {
        user: Some(QuotaName::Default),
        client_id: None,
        ip: None,
    };
    let percent = 0.1 + 0.2;
    let ops = vec![(REQUEST_PERCENTAGE.to_string(), Some(percent))];
    let altered = block_on(
        cluster
            .node(follower)
            .alter_client_quotas(vec![(entity, ops)]),
    );
    assert_eq!(altered.expect("quotas"), vec![Ok(())]);
    for (id, node) in &cluster.nodes {
        let bits = wait_for("the quota on every node", || {
            let view = node.view();
            let value = view.quotas.resolve("u", "c", REQUEST_PERCENTAGE)?;
            (view.acls.len() == 1).then_some(value.to_bits())
        });
        assert_eq!(bits, percent.to_bits(), "node {id}");
    }

    assert_eq!(
        block_on(cluster.node(follower).create_topic(spec("rf4", 1, 4))),
        Err(MetaError::InvalidReplicationFactor {
            requested: 4,
            available: 3
        })
    );

    // The leader stops: another takes over within a few seconds.
    let old = cluster.controller();
    let stopped_at = Instant::now();
    cluster.stop(old);
    let new = cluster.controller();
    assert_ne!(new, old);
    let failover = stopped_at.elapsed();
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    let survivor = *cluster
        .nodes
        .keys()
        .find(|id| **id != new)
        .expect("two left");
    block_on(cluster.node(survivor).create_topic(spec("after", 2, 2)))
        .expect("creates work with 2 of 3");
    block_on(cluster.node(new).create_topic(spec("after-2", 1, 1))).expect("on the leader too");

    // The stopped node comes back on its data and catches up.
    cluster.restart(old);
    let back = cluster.node(old);
    wait_for("the restarted node caught up", || {
        let view = back.view();
        (view.topics.contains_key("after") && view.topics.contains_key("after-2")).then_some(())
    });
    // The stopped node may have been fenced meanwhile (its leaderships
    // moved, epochs bumped): the topic and its replica sets are unchanged.
    let now = back.view().topics["rf3"].clone();
    assert_eq!(
        (now.id, now.partitions.len()),
        (created.id, created.partitions.len())
    );
    for (p, c) in now.partitions.iter().zip(&created.partitions) {
        assert_eq!(p.replicas, c.replicas);
    }
    cluster.wait_live(&[1, 2, 3]);
    let controller = cluster.controller();
    assert!(cluster.nodes.contains_key(&controller));
    block_on(cluster.node(old).create_topic(spec("from-rejoined", 1, 3)))
        .expect("create through the rejoined node");
}

#[test]
fn silent_broker_is_fenced_then_unfenced() {
    let mut cluster = Cluster::start(&[1, 2, 3]);
    let quiet = cluster.follower();
    let other = *cluster
        .nodes
        .keys()
        .find(|id| **id != quiet)
        .expect("another node");
    let third = 6 - quiet - other;
    let led = block_on(cluster.node(other).create_topic(assigned(
        "led",
        vec![vec![quiet, other, third], vec![other, quiet, third]],
    )))
    .expect("create");
    assert_eq!(led.partitions[0].leader, quiet);
    let alone = block_on(
        cluster
            .node(other)
            .create_topic(assigned("alone", vec![vec![quiet]])),
    )
    .expect("create");
    assert_eq!(alone.partitions[0].leader, quiet);

    cluster.stop(quiet);
    let remaining: Vec<u64> = cluster.nodes.keys().copied().collect();
    cluster.wait_live(&remaining);
    for node in cluster.nodes.values() {
        let view = node.view();
        let broker = &view.brokers[&quiet];
        assert!(broker.fenced);
        // Its listeners' addresses came with its heartbeats.
        let external = format!("node-{quiet}.example");
        let want = (external.as_str(), 9100 + quiet as u16);
        assert_eq!(broker.address_for("external"), want);
        assert_eq!(
            broker.address_for("OTHER"),
            ("127.0.0.1", 9000 + quiet as u16)
        );
        let p0 = &view.topics["led"].partitions[0];
        assert_eq!(p0.leader, other, "leadership moved to the next ISR member");
        assert_eq!(p0.leader_epoch, 1);
        assert_eq!(p0.isr, vec![other, third]);
        let p1 = &view.topics["led"].partitions[1];
        assert_eq!((p1.leader, p1.leader_epoch), (other, 0), "untouched leader");
        assert_eq!(p1.isr, vec![other, third]);
        let a = &view.topics["alone"].partitions[0];
        assert_eq!((a.leader, a.leader_epoch), (NO_LEADER, 1));
        assert_eq!(a.isr, vec![quiet], "the last ISR member stays");
    }
    assert_eq!(
        block_on(cluster.node(other).create_topic(spec("rf3", 1, 3))),
        Err(MetaError::InvalidReplicationFactor {
            requested: 3,
            available: 2
        })
    );

    cluster.restart(quiet);
    cluster.wait_live(&[1, 2, 3]);
    for node in cluster.nodes.values() {
        let view = wait_for("the leaderless partition led again", || {
            let view = node.view();
            (view.topics["alone"].partitions[0].leader == quiet).then_some(view)
        });
        assert_eq!(view.topics["alone"].partitions[0].leader_epoch, 2);
        let p0 = &view.topics["led"].partitions[0];
        assert_eq!(p0.leader, other, "no automatic leader move back");
        assert_eq!(p0.isr, vec![other, third], "the ISR grows only by AlterIsr");
    }
}

#[test]
fn alter_isr_checks_the_leader_and_its_epoch() {
    let cluster = Cluster::start(&[2, 3, 1]);
    let follower = cluster.follower();
    let node = cluster.node(follower);
    let t = block_on(node.create_topic(assigned("isr", vec![vec![1, 2, 3]]))).expect("create");
    let p = &t.partitions[0];
    assert_eq!((p.leader, p.leader_epoch), (1, 0));
    assert_eq!(
        block_on(node.alter_isr("isr", 0, 1, 5, vec![1, 2])),
        Err(MetaError::StaleLeaderEpoch { current: 0, got: 5 })
    );
    assert!(matches!(
        block_on(node.alter_isr("isr", 0, 2, 0, vec![2, 3])),
        Err(MetaError::Internal(_))
    ));
    assert!(matches!(
        block_on(node.alter_isr("isr", 0, 1, 0, vec![2, 3])),
        Err(MetaError::Internal(_))
    ));
    assert!(matches!(
        block_on(node.alter_isr("isr", 0, 1, 0, vec![1, 7])),
        Err(MetaError::Internal(_))
    ));
    block_on(node.alter_isr("isr", 0, 1, 0, vec![1, 3])).expect("shrink");
    for m in cluster.nodes.values() {
        wait_for("the ISR change everywhere", || {
            (m.view().topics["isr"].partitions[0].isr == vec![1, 3]).then_some(())
        });
    }
    block_on(node.alter_isr("isr", 0, 1, 0, vec![1, 2, 3])).expect("grow back");
}

#[test]
fn start_waits_for_a_quorum() {
    init_logs();
    let (_dir, configs) = Cluster::configs();
    let (tx, rx) = mpsc::channel();
    let spawn = |id: u64| {
        let cfg = configs[&id].clone();
        let tx = tx.clone();
        // `Metadata::start` blocks until a quorum exists: one thread per node.
        std::thread::spawn(move || {
            let _ = tx.send((id, Metadata::start(cfg)));
        });
    };
    spawn(2);
    assert!(
        rx.recv_timeout(Duration::from_millis(2_500)).is_err(),
        "one voter of three is no quorum"
    );
    spawn(3);
    let mut nodes = BTreeMap::new();
    for _ in 0..2 {
        let (id, started) = rx.recv_timeout(WAIT).expect("a quorum of two starts");
        nodes.insert(id, started.expect("starts"));
    }
    let controller = wait_for("a controller", || nodes[&2].controller());
    assert!(controller == 2 || controller == 3);
    spawn(1);
    let (id, started) = rx.recv_timeout(WAIT).expect("the third joins");
    nodes.insert(id, started.expect("starts"));
    wait_for("the third sees the controller", || {
        (nodes[&1].controller() == Some(controller)).then_some(())
    });
    for node in nodes.values() {
        node.shutdown();
    }
}
