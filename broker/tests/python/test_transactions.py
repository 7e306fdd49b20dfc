"""kafka-python's transactional producer against the real sluice binary
(KIP-98): committed records are visible to a read_committed consumer and
aborted ones are not (a read_uncommitted consumer sees both), the last
stable offset reaches the log end once the last transaction committed, a
second producer with the same transactional_id fences the first, and
offsets sent to a transaction become the group's committed offsets when it
commits (consume-transform-produce).

One broker (two shards) serves every test of this module.
"""

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from test_kafka_python import Broker, create_topic

WAIT_S = 30
PARTITIONS = 4


@pytest.fixture(scope="module")
def broker():
    b = Broker(shards=2, extra=("--group-initial-rebalance-delay-ms", "200"))
    yield b
    code = b.stop()
    assert code == 0, f"sluice exit code {code}"


def txn_producer(broker, transactional_id, **kwargs):
    return KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        transactional_id=transactional_id,
        linger_ms=5,
        max_block_ms=30_000,
        **kwargs,
    )


def send_all(p, topic, records):
    """Sends (partition, value) records and waits for every acknowledgement;
    returns {partition: [(offset, value)]} in send order."""
    futures = [(v, p.send(topic, key=b"k", value=v.encode(), partition=part)) for part, v in records]
    acked = {}
    for v, f in futures:
        md = f.get(timeout=WAIT_S)
        acked.setdefault(md.partition, []).append((md.offset, v))
    return acked


def records(tag, partitions, per):
    return [(part, f"{tag}-p{part}-{i}") for part in partitions for i in range(per)]


def end_offsets(broker, topic, isolation_level):
    """End offsets as a client of this isolation level sees them: the last
    stable offset for read_committed, the log end for read_uncommitted."""
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, isolation_level=isolation_level)
    try:
        tps = [TopicPartition(topic, part) for part in range(PARTITIONS)]
        return {tp.partition: o for tp, o in c.end_offsets(tps).items()}
    finally:
        c.close()


def wait_stable(broker, topic):
    """Waits until no transaction is open on topic (LSO == log end on every
    partition: the markers are written); returns the log end offsets."""
    deadline = time.time() + WAIT_S
    while True:
        lso = end_offsets(broker, topic, "read_committed")
        hw = end_offsets(broker, topic, "read_uncommitted")
        if lso == hw:
            return hw
        assert time.time() < deadline, f"{topic}: LSO {lso} never reached the log end {hw}"
        time.sleep(0.1)


def read_to_end(broker, topic, ends, isolation_level):
    """Reads every partition from the beginning until each position reaches
    ends (positions move past transaction markers too); returns
    {partition: [(offset, value)]}."""
    c = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    tps = [TopicPartition(topic, part) for part in range(PARTITIONS)]
    c.assign(tps)
    c.seek_to_beginning()
    got = {}
    deadline = time.time() + WAIT_S
    try:
        while any(c.position(tp) < ends[tp.partition] for tp in tps):
            assert time.time() < deadline, (
                f"{isolation_level} read of {topic} stopped at "
                f"{ {tp.partition: c.position(tp) for tp in tps} }, ends {ends}"
            )
            for tp, batch in c.poll(timeout_ms=200).items():
                for r in batch:
                    got.setdefault(tp.partition, []).append((r.offset, r.value.decode()))
    finally:
        c.close()
    return got


def test_committed_visible_aborted_invisible(broker):
    topic = "py-txn"
    create_topic(broker, topic, PARTITIONS)
    p = txn_producer(broker, "py-txn-1")
    p.init_transactions()
    committed, every = {}, {}
    rounds = 7  # even rounds commit, odd ones abort: the first and last commit
    for round_ in range(rounds):
        p.begin_transaction()
        acked = send_all(p, topic, records(f"r{round_}", range(PARTITIONS), 4))
        p.flush()
        # The open transaction holds the LSO at its first offset.
        lso = end_offsets(broker, topic, "read_committed")
        for part, recs in acked.items():
            assert lso[part] == recs[0][0], f"round {round_}: LSO {lso} while open"
        if round_ % 2 == 0:
            p.commit_transaction()
        else:
            p.abort_transaction()
        for part, recs in acked.items():
            every.setdefault(part, []).extend(recs)
            if round_ % 2 == 0:
                committed.setdefault(part, []).extend(recs)
    p.close()

    ends = wait_stable(broker, topic)
    # Every transaction wrote 4 records and one marker to each partition.
    assert ends == {part: rounds * 5 for part in range(PARTITIONS)}
    assert read_to_end(broker, topic, ends, "read_committed") == committed
    assert read_to_end(broker, topic, ends, "read_uncommitted") == every


def test_second_producer_fences_the_first(broker):
    topic = "py-txn-fence"
    create_topic(broker, topic, PARTITIONS)
    a = txn_producer(broker, "py-txn-fence")
    a.init_transactions()
    a.begin_transaction()
    a_open = send_all(a, topic, records("a-open", [0, 1], 3))

    # B's init aborts A's open transaction and bumps the epoch.
    b = txn_producer(broker, "py-txn-fence")
    b.init_transactions()

    failed = None
    try:
        for part in range(PARTITIONS):
            a.send(topic, key=b"k", value=f"a-late-p{part}".encode(), partition=part)
        a.commit_transaction()
    except KafkaError as e:  # ProducerFencedError, InvalidProducerEpochError, ...
        failed = e
    assert failed is not None, "the fenced producer's commit must fail"
    try:
        a.close(timeout=5)
    except KafkaError:
        pass

    b.begin_transaction()
    b_acked = send_all(b, topic, records("b", range(PARTITIONS), 3))
    b.commit_transaction()
    b.close()

    ends = wait_stable(broker, topic)
    got = read_to_end(broker, topic, ends, "read_committed")
    assert {part: [v for _, v in recs] for part, recs in got.items()} == {
        part: [v for _, v in recs] for part, recs in b_acked.items()
    }, f"read_committed: B's records only (A failed with {failed!r})"
    everything = read_to_end(broker, topic, ends, "read_uncommitted")
    seen = [v for recs in everything.values() for _, v in recs]
    assert not [v for v in seen if v.startswith("a-late")], "the fenced producer's records reached the log"
    for recs in list(a_open.values()) + list(b_acked.values()):
        for _, v in recs:
            assert v in seen


def test_offsets_sent_to_a_transaction_are_committed_with_it(broker):
    source, sink, group = "py-ctp-in", "py-ctp-out", "py-ctp"
    create_topic(broker, source, PARTITIONS)
    create_topic(broker, sink, PARTITIONS)
    plain = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in range(40):
        plain.send(source, value=f"in-{i}".encode(), partition=i % PARTITIONS)
    plain.flush()
    plain.close()

    c = KafkaConsumer(
        source,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    p = txn_producer(broker, "py-ctp-txn")
    p.init_transactions()
    done = 0
    aborted_once = False
    deadline = time.time() + WAIT_S * 2
    while done < 40:
        assert time.time() < deadline, f"processed {done} of 40"
        batches = c.poll(timeout_ms=200, max_records=10)
        if not batches:
            continue
        p.begin_transaction()
        n = 0
        for tp, batch in batches.items():
            for r in batch:
                p.send(sink, value=b"out-" + r.value, partition=tp.partition)
                n += 1
        offsets = {tp: OffsetAndMetadata(c.position(tp), "", -1) for tp in batches}
        p.send_offsets_to_transaction(offsets, c.group_metadata())
        if not aborted_once:
            # The first batch is aborted, offsets included: read it again.
            aborted_once = True
            p.abort_transaction()
            for tp in batches:
                c.seek(tp, batches[tp][0].offset)
            continue
        p.commit_transaction()
        done += n
    c.close()
    p.close()

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15_000)
    try:
        deadline = time.time() + WAIT_S
        while True:
            offsets = admin.list_group_offsets({group: None})[group]
            got = {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == source}
            if got == {part: 10 for part in range(PARTITIONS)} or time.time() > deadline:
                break
            time.sleep(0.2)
        assert got == {part: 10 for part in range(PARTITIONS)}
    finally:
        admin.close()

    ends = wait_stable(broker, sink)
    out = read_to_end(broker, sink, ends, "read_committed")
    for part in range(PARTITIONS):
        values = [v for _, v in out.get(part, [])]
        assert values == [f"out-in-{i}" for i in range(part, 40, PARTITIONS)], f"partition {part}"
