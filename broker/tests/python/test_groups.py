"""kafka-python consumer groups against the real sluice binary: members
share partitions and commit, the admin client lists, describes and deletes
groups and reads their committed offsets. Each consumer polls in its own
thread, as an application would (a join waits for the other members).
"""

import threading
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import NoError
from kafka.structs import OffsetAndMetadata

from test_kafka_python import Broker, create_topic, producer

TIMEOUT_S = 60


@pytest.fixture
def broker():
    b = Broker(shards=2, extra=("--group-initial-rebalance-delay-ms", "200"))
    yield b
    code = b.stop()
    assert code == 0, f"sluice exit code {code}"


class Member(threading.Thread):
    """A group consumer polling and committing in its own thread."""

    def __init__(self, broker, group, topic):
        super().__init__(daemon=True)
        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.assigned = set()
        self.seen = []
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                batches = self.consumer.poll(timeout_ms=100)
                for records in batches.values():
                    for r in records:
                        with self.lock:
                            self.seen.append((r.partition, r.offset))
                if batches:
                    self.consumer.commit()
                with self.lock:
                    self.assigned = {tp.partition for tp in self.consumer.assignment()}
        except Exception as e:  # reported by the test thread
            self.error = e
        finally:
            self.consumer.close()


def wait_for(what, condition):
    deadline = time.time() + TIMEOUT_S
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_group_members_share_partitions_and_commit(broker):
    create_topic(broker, "py-group-topic", 4)
    members = [Member(broker, "py-group", "py-group-topic") for _ in range(2)]
    for m in members:
        m.start()

    def split():
        sets = [m.assigned for m in members]
        return all(len(s) == 2 for s in sets) and len(sets[0] | sets[1]) == 4

    wait_for("two partitions each", split)
    p = producer(broker, acks="all")
    for i in range(40):
        p.send("py-group-topic", value=f"v{i}".encode(), partition=i % 4)
    p.flush()
    p.close()
    wait_for("every record", lambda: sum(len(m.seen) for m in members) >= 40)

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15_000)
    try:
        wait_for("commits", lambda: sum(
            o.offset for o in admin.list_group_offsets({"py-group": None})["py-group"].values()) == 40)
        listed = {g["group_id"]: g for g in admin.list_groups()}
        assert listed["py-group"]["group_state"] == "Stable"
        described = admin.describe_groups(["py-group"])["py-group"]
        assert described["group_state"] == "Stable"
        assert described["protocol_type"] == "consumer"
        assert len(described["members"]) == 2
    finally:
        for m in members:
            m.stop.set()
        for m in members:
            m.join(timeout=30)
            assert m.error is None, m.error
        admin.close()
    seen = [x for m in members for x in m.seen]
    assert len(seen) == len(set(seen)) == 40


def test_admin_deletes_offsets_and_groups(broker):
    create_topic(broker, "py-del-topic", 2)
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="py-del", enable_auto_commit=False)
    c.commit({
        TopicPartition("py-del-topic", 0): OffsetAndMetadata(7, "", -1),
        TopicPartition("py-del-topic", 1): OffsetAndMetadata(9, "", -1),
    })
    c.close()
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15_000)
    try:
        offsets = admin.list_group_offsets({"py-del": None})["py-del"]
        assert offsets[TopicPartition("py-del-topic", 0)].offset == 7
        deleted = admin.delete_group_offsets("py-del", [TopicPartition("py-del-topic", 0)])
        assert deleted[TopicPartition("py-del-topic", 0)] is NoError
        offsets = admin.list_group_offsets({"py-del": None})["py-del"]
        assert list(offsets) == [TopicPartition("py-del-topic", 1)]
        assert admin.delete_groups(["py-del"]) == {"py-del": "OK"}
        assert admin.list_group_offsets({"py-del": None})["py-del"] == {}
        assert admin.delete_groups(["py-del"])["py-del"] == "GroupIdNotFoundError"
    finally:
        admin.close()
