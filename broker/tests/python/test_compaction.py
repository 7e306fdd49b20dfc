"""kafka-python against a compacted topic of the real sluice binary.

Run by broker/tests/compaction.rs (`kafka_python_reads_compacted_topic`),
which starts sluice with one shard and 4 MiB WAL segments and passes its
address in SLUICE_COMPACTION_BOOTSTRAP; without it these tests are skipped
(the kafka-python suite of python_suite.rs collects this directory too, and
its brokers have the default segment size, which needs far more filler).

Compaction leaves the active part of the log alone: the records are written
first, then one record of a fresh key alone (each partition's last entry),
then filler to another topic of the same shard, which seals the WAL
segments holding them.
"""

import os
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import InvalidRecordError

BOOTSTRAP = os.environ.get("SLUICE_COMPACTION_BOOTSTRAP")
pytestmark = pytest.mark.skipif(
    not BOOTSTRAP,
    reason="run by broker/tests/compaction.rs, which starts the broker (SLUICE_COMPACTION_BOOTSTRAP)",
)

WAIT_S = 60
POLL_S = 0.2
READ_S = 30
FILLER_TOPIC = "py-filler"
FILLER_VALUE_BYTES = 100 * 1024
FILLER_BYTES = 10 << 20
COMPACT = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"}


def create_topic(name, partitions, configs):
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=15_000)
    try:
        admin.create_topics([
            NewTopic(name=name, num_partitions=partitions, replication_factor=1, topic_configs=configs)
        ])
    finally:
        admin.close()


@pytest.fixture(scope="module")
def filler_topic():
    create_topic(FILLER_TOPIC, 1, {})
    return FILLER_TOPIC


def value(key, version, size):
    label = f"{key}:v{version}:".encode()
    assert len(label) <= size
    return label + bytes([ord("a") + version % 26]) * (size - len(label))


def send_all(producer, topic, records):
    """Sends (partition, key, value) records, all in flight at once; returns
    {(partition, offset): (key, value)} of the acknowledged records."""
    futures = [
        (producer.send(topic, key=k.encode(), value=v, partition=p), k, v)
        for p, k, v in records
    ]
    acked = {}
    for f, k, v in futures:
        md = f.get(timeout=30)
        assert (md.partition, md.offset) not in acked
        acked[(md.partition, md.offset)] = (k, v)
    return acked


def fill(topic):
    """Filler to the non-compacted topic: seals the segments written before."""
    p = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5)
    try:
        count = FILLER_BYTES // FILLER_VALUE_BYTES
        send_all(p, topic, [(0, f"f{i}", value("f", i, FILLER_VALUE_BYTES)) for i in range(count)])
    finally:
        p.close(timeout=10)


def latest_per_key(acked):
    latest = {}
    for (partition, offset), (k, _) in acked.items():
        if (partition, k) not in latest or latest[(partition, k)] < offset:
            latest[(partition, k)] = offset
    return {(p, o): acked[(p, o)] for (p, _), o in latest.items()}


def read_all(topic, ends):
    """Every record of `topic` from the beginning up to `ends` (partition ->
    offset after the last record), in the order received; None when the
    end was not reached within READ_S."""
    c = KafkaConsumer(
        bootstrap_servers=BOOTSTRAP,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        c.assign(tps)
        c.seek_to_beginning()
        out = []
        deadline = time.time() + READ_S
        while any(c.position(tp) < ends[tp.partition] for tp in tps):
            if time.time() > deadline:
                return None
            for records in c.poll(timeout_ms=200).values():
                for r in records:
                    out.append((r.partition, r.offset, r.key.decode(), r.value))
        return out
    finally:
        c.close()


def check_read(read, acked):
    """Offsets strictly increase per partition and each record read is the
    one acknowledged at its offset; returns {(partition, offset): (key, value)}."""
    last = {}
    got = {}
    for partition, offset, k, v in read:
        assert offset > last.get(partition, -1), f"partition {partition}: {offset} after {last[partition]}"
        last[partition] = offset
        assert acked.get((partition, offset)) == (k, v), f"{partition}@{offset}: not the acknowledged record"
        got[(partition, offset)] = (k, v)
    return got


def wait_compacted(topic, ends, acked, expected):
    deadline = time.time() + WAIT_S
    while True:
        read = read_all(topic, ends)
        if read is not None:
            got = check_read(read, acked)
            if got == expected:
                return
            state = f"read {len(got)} records, expected {len(expected)}: missing {sorted(set(expected) - set(got))[:10]}, extra {sorted(set(got) - set(expected))[:10]}"
        else:
            state = "did not reach the end"
        assert time.time() < deadline, f"{topic} not compacted within {WAIT_S} s: {state}"
        time.sleep(POLL_S)


def test_consumer_reads_latest_value_per_key(filler_topic):
    topic = "py-compact"
    partitions = 2
    keys = [f"k{i}" for i in range(6)]
    create_topic(topic, partitions, COMPACT)
    p = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5)
    try:
        records = [
            (i % partitions, k, value(k, version, 1024))
            for version in range(30)
            for i, k in enumerate(keys)
        ]
        # The last key is deleted: its tombstone stays (delete.retention.ms
        # is a day by default).
        records.append(((len(keys) - 1) % partitions, keys[-1], None))
        acked = send_all(p, topic, records)
        p.flush()
        acked.update(send_all(p, topic, [(q, "end", value("end", 0, 64)) for q in range(partitions)]))
    finally:
        p.close(timeout=10)
    ends = {q: max(o for (pp, o) in acked if pp == q) + 1 for q in range(partitions)}

    c = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None)
    tps = [TopicPartition(topic, q) for q in range(partitions)]
    assert {tp.partition: o for tp, o in c.end_offsets(tps).items()} == ends
    c.close()

    fill(filler_topic)
    expected = latest_per_key(acked)
    assert len(expected) == len(keys) + partitions
    assert sum(1 for (_, v) in expected.values() if v is None) == 1
    wait_compacted(topic, ends, acked, expected)

    c = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None)
    assert {tp.partition: o for tp, o in c.end_offsets(tps).items()} == ends, "compaction moved the high watermark"
    assert all(o == 0 for o in c.beginning_offsets(tps).values()), "compaction moved the log start"
    c.close()


def test_keyless_send_raises():
    topic = "py-compact-keyless"
    create_topic(topic, 1, {"cleanup.policy": "compact"})
    p = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    try:
        with pytest.raises(InvalidRecordError) as e:
            p.send(topic, value=b"no key", partition=0).get(timeout=30)
        assert "without key" in str(e.value), str(e.value)
    finally:
        p.close(timeout=10)
    p = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    try:
        md = p.send(topic, key=b"k", value=b"v", partition=0).get(timeout=30)
        assert (md.partition, md.offset) == (0, 0), "the refused record took an offset"
    finally:
        p.close(timeout=10)
