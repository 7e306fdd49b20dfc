"""kafka-python's admin client against the admin calls cluster tools make:
CreatePartitions with explicit assignments, ElectLeaders, partition
reassignments (AlterPartitionReassignments, ListPartitionReassignments),
DescribeLogDirs, AlterReplicaLogDirs, broker configs (DescribeConfigs,
AlterConfigs, IncrementalAlterConfigs) and topic config validation.

Most run against one node; the reassignment that must not lose a record
runs against three nodes on loopback (`Cluster`). Run with the rest of the
suite (`cargo test -p sluice --test python_suite`) or:

    SLUICE_BIN=target/debug/sluice python3 -m pytest broker/tests/python/test_cluster_admin.py
"""

import os
import subprocess
import tempfile
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import (
    InvalidConfigurationError,
    InvalidReplicationAssignmentError,
    LogDirNotFoundError,
    NoError,
    NoReassignmentInProgressError,
)

from test_kafka_python import Broker, broker, create_topic, free_port  # noqa: F401 (fixture)

START_TIMEOUT_S = 90
MOVE_TIMEOUT_S = 90


def admin_of(bootstrap):
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)


def error_codes(response):
    """(topic, partition) -> error code of an ElectLeadersResponse."""
    out = {}
    for t in response.replica_election_results:
        for p in t.partition_result:
            out[(t.topic, p.partition_id)] = p.error_code
    return out


def produce(bootstrap, topic, count, prefix):
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for i in range(count):
        p.send(topic, value=f"{prefix}-{i}".encode(), partition=0).get(timeout=30)
    p.close()


def consume(bootstrap, topic, count):
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=20_000,
    )
    c.assign([TopicPartition(topic, 0)])
    c.seek_to_beginning()
    got = []
    for m in c:
        got.append((m.offset, m.value.decode()))
        if len(got) == count:
            break
    c.close()
    return got


def test_create_partitions_with_explicit_assignments(broker):
    create_topic(broker, "py-assign", 1)
    admin = admin_of(broker.bootstrap)
    try:
        admin.create_partitions({"py-assign": NewPartitions(total_count=3, new_assignments=[[1], [1]])})
        parts = admin.describe_topics(["py-assign"])[0]["partitions"]
        assert sorted(p["partition_index"] for p in parts) == [0, 1, 2]
        assert all(p["replica_nodes"] == [1] for p in parts)
        # Broker 2 is not registered; a list per new partition is needed;
        # every partition of the topic has one replica.
        for bad in (
            NewPartitions(total_count=4, new_assignments=[[2]]),
            NewPartitions(total_count=5, new_assignments=[[1]]),
            NewPartitions(total_count=4, new_assignments=[[1, 2]]),
        ):
            with pytest.raises(InvalidReplicationAssignmentError):
                admin.create_partitions({"py-assign": bad})
        assert len(admin.describe_topics(["py-assign"])[0]["partitions"]) == 3
    finally:
        admin.close()


def test_elections_on_a_led_partition_are_not_needed(broker):
    create_topic(broker, "py-elect", 2)
    admin = admin_of(broker.bootstrap)
    try:
        for election_type in (0, 1):
            r = admin.elect_leaders(election_type, {"py-elect": [0, 1]}, raise_errors=False)
            codes = error_codes(r)
            assert codes == {("py-elect", 0): 84, ("py-elect", 1): 84}, r
        # Like Kafka's own admin client, kafka-python does not raise for
        # ELECTION_NOT_NEEDED.
        admin.elect_leaders(0, {"py-elect": [0]})
        # Every partition (kafka-python lists them all): none needs one.
        r = admin.elect_leaders(0, None, raise_errors=False)
        codes = error_codes(r)
        assert ("py-elect", 1) in codes and set(codes.values()) == {84}, r
    finally:
        admin.close()


def test_log_dirs_show_partition_sizes_and_cannot_move(broker):
    create_topic(broker, "py-dirs", 2)
    produce(broker.bootstrap, "py-dirs", 50, "x" * 100)
    admin = admin_of(broker.bootstrap)
    try:
        described = admin.describe_log_dirs()
        assert len(described) == 1, described
        text = repr(described)
        data_dir = os.path.realpath(os.path.join(broker.tmp.name, "data"))
        assert data_dir in text, text
        dirs = described[0]
        # The structure kafka-python returns: find the partition sizes.
        sizes = {}

        def walk(x):
            if isinstance(x, dict):
                if "partition_index" in x and "partition_size" in x:
                    sizes[x["partition_index"]] = x["partition_size"]
                for v in x.values():
                    walk(v)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    walk(v)

        walk(dirs)
        assert sizes.get(0, 0) > 50 * 100, described
        moved = admin.alter_replica_log_dirs({("py-dirs", 0, 1): data_dir, ("py-dirs", 1, 1): "/elsewhere"})
        by_partition = {k[1]: v for k, v in moved.items()}
        assert by_partition[0] is NoError, moved
        assert by_partition[1] is LogDirNotFoundError, moved
    finally:
        admin.close()


def test_broker_configs_are_described_and_read_only():
    b = Broker(shards=1, extra=("--min-insync-replicas", "1"))
    admin = admin_of(b.bootstrap)
    try:
        res = ConfigResource(ConfigResourceType.BROKER, "1")
        described = admin.describe_configs([res], config_filter="all")
        configs = described["broker"]["1"]
        assert configs["broker.id"]["value"] == "1"
        assert configs["min.insync.replicas"]["config_source"] == "STATIC_BROKER_CONFIG"
        assert configs["num.partitions"]["config_source"] == "DEFAULT_CONFIG"
        assert configs["log.dirs"]["value"] == os.path.realpath(os.path.join(b.tmp.name, "data"))
        assert all(c["read_only"] for c in configs.values()), configs
        for incremental in (True, False):
            change = ConfigResource(ConfigResourceType.BROKER, "1", configs={"min.insync.replicas": "2"})
            r = admin.alter_configs([change], incremental=incremental, raise_on_unknown=False)
            assert "InvalidConfigurationError" in str(r), r
        # A topic without its own min.insync.replicas shows the broker's.
        create_topic(b, "py-min-isr", 1)
        t = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "py-min-isr")], config_filter="all")
        entry = t["topic"]["py-min-isr"]["min.insync.replicas"]
        assert (entry["value"], entry["config_source"]) == ("1", "STATIC_BROKER_CONFIG"), entry
    finally:
        admin.close()
        assert b.stop() == 0


def test_topic_configs_are_validated(broker):
    admin = admin_of(broker.bootstrap)
    try:
        ok = NewTopic(
            name="py-conf-ok",
            num_partitions=1,
            replication_factor=1,
            topic_configs={
                "compression.type": "zstd",
                "min.insync.replicas": "1",
                "unclean.leader.election.enable": "true",
            },
        )
        admin.create_topics([ok])
        for name, configs in (
            ("py-conf-unknown", {"no.such.config": "1"}),
            ("py-conf-min-isr", {"min.insync.replicas": "0"}),
            ("py-conf-unclean", {"unclean.leader.election.enable": "sometimes"}),
            ("py-conf-segment-ms", {"segment.ms": "soon"}),
        ):
            with pytest.raises(InvalidConfigurationError):
                admin.create_topics([NewTopic(name=name, num_partitions=1, replication_factor=1, topic_configs=configs)])
        topic = ConfigResource(ConfigResourceType.TOPIC, "py-conf-ok")
        described = admin.describe_configs([topic], config_filter="all")["topic"]["py-conf-ok"]
        assert described["unclean.leader.election.enable"]["value"] == "true"
        assert described["compression.type"]["value"] == "zstd"
        for incremental in (True, False):
            change = ConfigResource(ConfigResourceType.TOPIC, "py-conf-ok", configs={"no.such.config": "1"})
            r = admin.alter_configs([change], incremental=incremental, raise_on_unknown=False)
            assert "InvalidConfigurationError" in str(r), r
    finally:
        admin.close()


def test_reassignment_errors_on_one_node(broker):
    create_topic(broker, "py-move", 1)
    admin = admin_of(broker.bootstrap)
    try:
        tp = TopicPartition("py-move", 0)
        r = admin.alter_partition_reassignments({tp: [2]})
        assert r[tp] is InvalidReplicationAssignmentError, r
        r = admin.alter_partition_reassignments({tp: None})
        assert r[tp] is NoReassignmentInProgressError, r
        # To its own replicas: done at once.
        r = admin.alter_partition_reassignments({tp: [1]})
        assert r[tp] is None, r
        assert admin.list_partition_reassignments() == {}
    finally:
        admin.close()


class Cluster:
    """Three nodes on loopback, each with its own data dir and ports."""

    def __init__(self, nodes=3):
        binary = os.environ.get("SLUICE_BIN")
        if not binary:
            pytest.fail("set SLUICE_BIN to the sluice binary")
        self.tmp = tempfile.TemporaryDirectory()
        ids = range(1, nodes + 1)
        self.ports = {i: free_port() for i in ids}
        raft = {i: free_port() for i in ids}
        voters = ",".join(f"{i}@127.0.0.1:{raft[i]}" for i in ids)
        self.procs = {}
        self.logs = {}
        for i in ids:
            log = os.path.join(self.tmp.name, f"node{i}.log")
            self.logs[i] = log
            args = [
                binary, "start",
                "--node-id", str(i),
                "--data-dir", os.path.join(self.tmp.name, f"data{i}"),
                "--listen", f"127.0.0.1:{self.ports[i]}",
                "--admin-listen", f"127.0.0.1:{free_port()}",
                "--cluster-listen", f"127.0.0.1:{raft[i]}",
                "--cluster-voters", voters,
                "--shards", "1",
                "--memory", "256MiB",
                "--replica-lag-time-max-ms", "5000",
            ]
            with open(log, "w") as f:
                self.procs[i] = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + START_TIMEOUT_S
        for i in ids:
            while "sluice ready" not in self.log_text(i):
                if self.procs[i].poll() is not None or time.time() > deadline:
                    self.stop()
                    pytest.fail(f"node {i} did not start:\n{self.log_text(i)}")
                time.sleep(0.1)
        admin = admin_of(self.bootstrap)
        try:
            while len(admin.describe_cluster()["brokers"]) < nodes:
                if time.time() > deadline:
                    pytest.fail("the cluster did not list every broker")
                time.sleep(0.2)
        finally:
            admin.close()

    @property
    def bootstrap(self):
        return ",".join(f"127.0.0.1:{p}" for p in self.ports.values())

    def log_text(self, i):
        with open(self.logs[i]) as f:
            return f.read()

    def stop(self):
        codes = {}
        for i, p in self.procs.items():
            p.terminate()
        for i, p in self.procs.items():
            try:
                codes[i] = p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                codes[i] = None
        self.tmp.cleanup()
        return codes


def replicas_of(admin, topic):
    parts = admin.describe_topics([topic])[0]["partitions"]
    p = [p for p in parts if p["partition_index"] == 0][0]
    return p["replica_nodes"], p["isr_nodes"], p["leader_id"]


def test_reassignment_copies_every_record_to_the_new_replicas():
    cluster = Cluster()
    ok = False
    try:
        admin = admin_of(cluster.bootstrap)
        admin.create_topics([
            NewTopic(name="mv-one", num_partitions=-1, replication_factor=-1, replica_assignments={0: [1]}),
            NewTopic(name="mv-two", num_partitions=-1, replication_factor=-1, replica_assignments={0: [1, 2]}),
        ])
        count = 300
        produce(cluster.bootstrap, "mv-one", count, "one")
        produce(cluster.bootstrap, "mv-two", count, "two")
        before = {t: consume(cluster.bootstrap, t, count) for t in ("mv-one", "mv-two")}
        assert [len(v) for v in before.values()] == [count, count]

        targets = {TopicPartition("mv-one", 0): [3], TopicPartition("mv-two", 0): [2, 3]}
        r = admin.alter_partition_reassignments(targets)
        assert all(e is None for e in r.values()), r
        deadline = time.time() + MOVE_TIMEOUT_S
        while True:
            ongoing = admin.list_partition_reassignments()
            done = {t: replicas_of(admin, t.topic) for t in targets}
            if not ongoing and all(sorted(done[t][0]) == sorted(targets[t]) for t in targets):
                break
            if ongoing:
                for tp, state in ongoing.items():
                    assert set(state["adding_replicas"]) <= set(targets[tp]), ongoing
            assert time.time() < deadline, f"not moved in time: {ongoing} {done}"
            time.sleep(0.2)
        for tp, target in targets.items():
            replicas, isr, leader = replicas_of(admin, tp.topic)
            assert replicas == target and sorted(isr) == sorted(target) and leader == target[0], (tp, replicas, isr, leader)
        # Node 1 holds none of them now: every record comes from the new replicas.
        after = {t: consume(f"127.0.0.1:{cluster.ports[3]}", t, count) for t in ("mv-one", "mv-two")}
        assert after == before
        # The new leaders take writes.
        produce(cluster.bootstrap, "mv-one", 10, "later")
        assert len(consume(cluster.bootstrap, "mv-one", count + 10)) == count + 10
        # A cancelled move restores the replicas it started from.
        tp = TopicPartition("mv-two", 0)
        admin.alter_partition_reassignments({tp: [1, 3]})
        admin.alter_partition_reassignments({tp: None})
        assert admin.list_partition_reassignments() == {}
        assert replicas_of(admin, "mv-two")[0] == [2, 3]
        admin.close()
        ok = True
    finally:
        logs = {i: cluster.log_text(i) for i in cluster.procs} if not ok else {}
        codes = cluster.stop()
        if not ok:
            for i, text in logs.items():
                print(f"--- node {i} ---\n{text[-6000:]}")
    assert all(c == 0 for c in codes.values()), codes
