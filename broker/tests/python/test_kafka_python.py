"""kafka-python against the real sluice binary.

The binary comes from the SLUICE_BIN environment variable (for example
target/debug/sluice). Each test starts its own broker on free loopback ports
with a temporary data dir and stops it afterwards.

    SLUICE_BIN=target/debug/sluice python3 -m pytest broker/tests/python
"""

import os
import socket
import subprocess
import tempfile
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from ports import free_port

START_TIMEOUT_S = 60


class Broker:
    def __init__(self, shards=2, extra=()):
        binary = os.environ.get("SLUICE_BIN")
        if not binary:
            pytest.fail("set SLUICE_BIN to the sluice binary")
        self.tmp = tempfile.TemporaryDirectory()
        self.port = free_port()
        admin_port = free_port()
        self.log_path = os.path.join(self.tmp.name, "sluice.log")
        args = [
            binary, "start",
            "--data-dir", os.path.join(self.tmp.name, "data"),
            "--listen", f"127.0.0.1:{self.port}",
            "--admin-listen", f"127.0.0.1:{admin_port}",
            "--shards", str(shards),
            "--memory", f"{256 * shards}MiB",
            *extra,
        ]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready()

    def _wait_ready(self):
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sluice exited ({self.proc.returncode}):\n{self.log_text()}")
            if "sluice ready" in self.log_text():
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", self.port)) == 0:
                        return
            time.sleep(0.05)
        pytest.fail(f"sluice did not start:\n{self.log_text()}")

    def log_text(self):
        with open(self.log_path) as f:
            return f.read()

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self.log.close()
        self.tmp.cleanup()
        return code


@pytest.fixture
def broker():
    b = Broker(shards=2)
    yield b
    code = b.stop()
    assert code == 0, f"sluice exit code {code}"


def consumer(broker):
    return KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
    )


def producer(broker, **kwargs):
    # kafka-python 3's defaults: idempotence on (InitProducerId, sequences).
    return KafkaProducer(bootstrap_servers=broker.bootstrap, **kwargs)


def create_topic(broker, name, partitions):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15_000)
    try:
        admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def test_produce_consume_round_trip(broker):
    create_topic(broker, "py-round-trip", 3)
    p = producer(broker, acks="all", linger_ms=5)
    sent = {}
    for i in range(150):
        partition = i % 3
        md = p.send("py-round-trip", key=f"k{i}".encode(), value=f"v{i}".encode(), partition=partition).get(timeout=20)
        sent[(md.partition, md.offset)] = f"v{i}"
    p.close()
    for partition in range(3):
        offsets = sorted(o for (pp, o) in sent if pp == partition)
        assert offsets == list(range(50)), f"partition {partition} offsets"

    c = consumer(broker)
    c.assign([TopicPartition("py-round-trip", p) for p in range(3)])
    c.seek_to_beginning()
    got = {}
    for message in c:
        got[(message.partition, message.offset)] = message.value.decode()
        if len(got) == len(sent):
            break
    c.close()
    assert got == sent


def test_create_topic_with_admin_client(broker):
    create_topic(broker, "py-admin", 4)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15_000)
    try:
        assert "py-admin" in admin.list_topics()
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(name="py-admin", num_partitions=4, replication_factor=1)])
        described = admin.describe_topics(["py-admin"])
        assert len(described[0]["partitions"]) == 4
        admin.delete_topics(["py-admin"])
        deadline = time.time() + 10
        while "py-admin" in admin.list_topics() and time.time() < deadline:
            time.sleep(0.1)
        assert "py-admin" not in admin.list_topics()
    finally:
        admin.close()


def test_list_offsets(broker):
    create_topic(broker, "py-offsets", 1)
    p = producer(broker, acks=1, linger_ms=0)
    t0 = 1_700_000_000_000
    for i in range(5):
        p.send("py-offsets", value=b"x", partition=0, timestamp_ms=t0 + i * 1000).get(timeout=20)
    p.close()
    c = consumer(broker)
    tp = TopicPartition("py-offsets", 0)
    assert c.beginning_offsets([tp])[tp] == 0
    assert c.end_offsets([tp])[tp] == 5
    found = c.offsets_for_times({tp: t0 + 2500})[tp]
    assert found is not None and found.offset == 3
    assert c.offsets_for_times({tp: t0 + 100_000})[tp] is None
    c.close()


def test_default_producer_is_idempotent(broker):
    create_topic(broker, "py-idempotent", 2)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap)
    assert p.config["enable_idempotence"], "kafka-python 3 defaults to idempotence"
    futures = [
        p.send("py-idempotent", value=f"v{i}".encode(), partition=i % 2)
        for i in range(200)
    ]
    acked = [f.get(timeout=20) for f in futures]
    manager = p._transaction_manager
    assert manager is not None and manager.producer_id_and_epoch.producer_id >= 0
    assert manager.producer_id_and_epoch.epoch == 0
    p.close()
    for partition in range(2):
        offsets = sorted(md.offset for md in acked if md.partition == partition)
        assert offsets == list(range(100))

    c = consumer(broker)
    c.assign([TopicPartition("py-idempotent", p) for p in range(2)])
    c.seek_to_beginning()
    got = []
    for message in c:
        got.append((message.partition, message.value.decode()))
        if len(got) == 200:
            break
    c.close()
    for partition in range(2):
        values = [v for (pp, v) in got if pp == partition]
        assert values == [f"v{i}" for i in range(partition, 200, 2)], "exactly once, in order"


def test_topic_admin_calls(broker):
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions

    create_topic(broker, "py-conf", 1)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15_000)
    try:
        topic = lambda configs=None: ConfigResource(ConfigResourceType.TOPIC, "py-conf", configs=configs)
        # IncrementalAlterConfigs: SET, and APPEND on the list config.
        result = admin.alter_configs([topic({"retention.ms": "5000", "cleanup.policy": ("APPEND", "compact")})])
        assert result["topic"]["py-conf"] == "OK", result
        described = admin.describe_configs([topic()], config_filter="all")["topic"]["py-conf"]
        assert described["retention.ms"]["value"] == "5000"
        assert described["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
        assert described["cleanup.policy"]["value"] == "delete,compact"
        assert described["segment.bytes"]["config_source"] == "DEFAULT_CONFIG"
        bad = admin.alter_configs([topic({"retention.bytes": "lots"})])
        assert "InvalidConfigurationError" in str(bad["topic"]["py-conf"]), bad
        unknown = admin.alter_configs([topic({"no.such.config": "1"})], raise_on_unknown=False)
        assert "InvalidConfigurationError" in str(unknown["topic"]["py-conf"]), unknown

        admin.create_partitions({"py-conf": NewPartitions(total_count=4)})
        deadline = time.time() + 10
        while time.time() < deadline:
            parts = admin.describe_topics(["py-conf"])[0]["partitions"]
            if len(parts) == 4:
                break
            time.sleep(0.1)
        assert len(parts) == 4

        cluster = admin.describe_cluster()
        assert [b["broker_id"] for b in cluster["brokers"]] == [1]
    finally:
        admin.close()
    p = producer(broker, acks="all")
    # The topic is compacted now (APPEND above): records need a key.
    md = p.send("py-conf", key=b"k", value=b"x", partition=3).get(timeout=20)
    assert (md.partition, md.offset) == (3, 0)
    p.close()
