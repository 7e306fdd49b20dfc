"""kafka-python's idempotent acks=all producer against a 3-node cluster
while nodes are SIGKILLed, then a read-back proving no acknowledged record
was lost, duplicated, moved or reordered.

Driven by `tests/cluster_python.rs`, which starts the cluster, creates the
topic (RF=3, min.insync.replicas=2), runs this script and kills nodes
while it writes. Not a pytest module (the single-node suite does not
collect it). Protocol with the driver:

- environment: SLUICE_BOOTSTRAP (host:port,...), SLUICE_TOPIC,
  SLUICE_PARTITIONS, SLUICE_MAX_SECONDS and SLUICE_MAX_RECORDS (bounds of
  the write loop);
- stdin: a line `STOP` (or the end of input) ends the write loop;
- stdout: `ACK <partition> <sent unix ms> <acked unix ms>` for every
  acknowledged record, `ACKED <n> ...` about once a second, `VERIFIED ...`
  after a clean read-back, `LOST`, `DUPLICATE`, `MOVED`, `ORDER`, `GAP`
  lines as evidence otherwise (exit status 1).
"""

import os
import sys
import threading
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

BOOTSTRAP = os.environ["SLUICE_BOOTSTRAP"].split(",")
TOPIC = os.environ.get("SLUICE_TOPIC", "py-failover")
PARTITIONS = int(os.environ.get("SLUICE_PARTITIONS", "4"))
MAX_SECONDS = float(os.environ.get("SLUICE_MAX_SECONDS", "120"))
MAX_RECORDS = int(os.environ.get("SLUICE_MAX_RECORDS", "200000"))
# Records handed to the producer and not yet acknowledged or failed.
INFLIGHT_RECORDS_MAX = 2000
# Pause between sends: at most about 500 records a second.
SEND_GAP_S = 0.002
# Waiting for the last outstanding records after the loop.
FLUSH_TIMEOUT_S = 60
# Reading every partition back.
READ_TIMEOUT_S = 60
# Evidence lines printed per kind of violation.
EVIDENCE_MAX = 20

out_lock = threading.Lock()


def emit(line):
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def now_ms():
    return int(time.time() * 1000)


class Deliveries:
    def __init__(self):
        self.lock = threading.Lock()
        self.acked = []  # (partition, seq, offset)
        self.failed = []  # (partition, seq, error)
        self.inflight = 0

    def on_ack(self, partition, seq, sent_ms, metadata):
        acked_ms = now_ms()
        with self.lock:
            self.acked.append((partition, seq, metadata.offset))
            self.inflight -= 1
        if metadata.partition != partition:
            emit(f"MOVED record {partition}-{seq} acknowledged on partition {metadata.partition}")
        emit(f"ACK {partition} {sent_ms} {acked_ms}")

    def on_fail(self, partition, seq, exc):
        with self.lock:
            self.failed.append((partition, seq, repr(exc)))
            self.inflight -= 1


def watch_stdin(stop):
    """Sets `stop` at a `STOP` line or the end of input."""
    for line in sys.stdin:
        if line.strip() == "STOP":
            break
    stop.set()


def produce(stop):
    d = Deliveries()
    producer = KafkaProducer(
        bootstrap_servers=BOOTSTRAP,
        acks="all",
        enable_idempotence=True,
        retries=2**31 - 1,
        max_in_flight_requests_per_connection=5,
        linger_ms=5,
        request_timeout_ms=10_000,
        delivery_timeout_ms=120_000,
        retry_backoff_ms=100,
        reconnect_backoff_ms=50,
        reconnect_backoff_max_ms=1_000,
        metadata_max_age_ms=5_000,
        max_block_ms=30_000,
    )
    seqs = [0] * PARTITIONS
    sent = 0
    start = time.monotonic()
    next_report = start + 1.0
    while not stop.is_set() and sent < MAX_RECORDS and time.monotonic() - start < MAX_SECONDS:
        now = time.monotonic()
        if now >= next_report:
            with d.lock:
                emit(f"ACKED {len(d.acked)} sent {sent} failed {len(d.failed)} inflight {d.inflight}")
            next_report = now + 1.0
        with d.lock:
            full = d.inflight >= INFLIGHT_RECORDS_MAX
            if not full:
                d.inflight += 1
        if full:
            time.sleep(0.005)
            continue
        p = sent % PARTITIONS
        seq = seqs[p]
        sent_ms = now_ms()
        try:
            future = producer.send(
                TOPIC,
                key=f"key-{p}".encode(),
                value=f"{p}-{seq}".encode(),
                partition=p,
            )
        except Exception as e:  # noqa: BLE001 (the buffer stayed full): the same record again
            with d.lock:
                d.inflight -= 1
            emit(f"send refused: {e!r}")
            time.sleep(0.05)
            continue
        future.add_callback(d.on_ack, p, seq, sent_ms)
        future.add_errback(d.on_fail, p, seq)
        seqs[p] += 1
        sent += 1
        time.sleep(SEND_GAP_S)
    reason = "stop" if stop.is_set() else ("count" if sent >= MAX_RECORDS else "time")
    emit(f"LOOP DONE ({reason}): sent {sent}")
    try:
        producer.flush(timeout=FLUSH_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001
        emit(f"flush: {e!r}")
    producer.close(timeout=10)
    with d.lock:
        return sent, list(d.acked), list(d.failed), d.inflight


def read_back():
    """Every record of every partition from offset 0 up to the high
    watermark: {partition: [(offset, key, value)]}, and the watermarks."""
    consumer = KafkaConsumer(
        bootstrap_servers=BOOTSTRAP,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=15_000,
        reconnect_backoff_max_ms=1_000,
    )
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    ends = {tp.partition: off for tp, off in consumer.end_offsets(tps, timeout_ms=30_000).items()}
    got = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + READ_TIMEOUT_S

    def done():
        return all((got[p][-1][0] + 1 if got[p] else 0) >= ends[p] for p in range(PARTITIONS))

    while not done():
        if time.monotonic() > deadline:
            have = {p: (got[p][-1][0] if got[p] else -1) for p in range(PARTITIONS)}
            emit(f"READ TIMEOUT: last offsets {have}, high watermarks {ends}")
            break
        for tp, records in consumer.poll(timeout_ms=500).items():
            for m in records:
                key = m.key.decode() if m.key is not None else None
                value = m.value.decode() if m.value is not None else None
                got[tp.partition].append((m.offset, key, value))
    consumer.close()
    return got, ends


def verify(acked, got, ends):
    """Evidence lines for every violation (empty when the log is right)."""
    bad = {}

    def evidence(kind, text):
        lines = bad.setdefault(kind, [])
        if len(lines) < EVIDENCE_MAX:
            lines.append(f"{kind} {text}")
        else:
            lines.append(None)

    at = {}  # (partition, seq) -> offset in the log
    for p in range(PARTITIONS):
        last = None
        expect = 0
        for offset, key, value in got[p]:
            if offset != expect:
                evidence("GAP", f"{p}: offset {offset} after {expect - 1}")
            expect = offset + 1
            if key != f"key-{p}":
                evidence("MOVED", f"{p}/{offset}: key {key!r}")
            vp, _, s = (value or "").partition("-")
            if vp != str(p) or not s.isdigit():
                evidence("MOVED", f"{p}/{offset}: value {value!r}")
                continue
            seq = int(s)
            if (p, seq) in at:
                evidence("DUPLICATE", f"{p}-{seq} at offsets {at[(p, seq)]} and {offset}")
            elif last is not None and seq < last:
                evidence("ORDER", f"{p}/{offset}: record {seq} after {last}")
            at.setdefault((p, seq), offset)
            last = seq if last is None else max(last, seq)
    for p, seq, offset in acked:
        where = at.get((p, seq))
        if where is None:
            evidence("LOST", f"acknowledged {p}-{seq} at offset {offset}: not in the log "
                     f"(high watermark {ends.get(p)}, read {len(got[p])})")
        elif where != offset:
            evidence("MOVED", f"acknowledged {p}-{seq} at offset {offset}, found at {where}")
    acked_offsets = {}
    for p, seq, offset in acked:
        if (p, offset) in acked_offsets:
            evidence("DUPLICATE", f"offset {p}/{offset} acknowledged for {acked_offsets[(p, offset)]} and {seq}")
        acked_offsets[(p, offset)] = seq
    return bad


def main():
    stop = threading.Event()
    threading.Thread(target=watch_stdin, args=(stop,), daemon=True).start()
    sent, acked, failed, inflight = produce(stop)
    emit(f"PRODUCED sent {sent} acked {len(acked)} failed {len(failed)} unresolved {inflight}")
    for f in failed[:10]:
        emit(f"FAILED {f}")
    got, ends = read_back()
    read = sum(len(v) for v in got.values())
    bad = verify(acked, got, ends)
    if bad:
        for lines in bad.values():
            shown = [line for line in lines if line is not None]
            for line in shown:
                emit(line)
            if len(shown) < len(lines):
                emit(f"... and {len(lines) - len(shown)} more {shown[0].split()[0]}")
        emit(f"FAILED VERIFY: acked {len(acked)}, read {read}, high watermarks {ends}")
        return 1
    if not acked:
        emit("FAILED VERIFY: nothing acknowledged")
        return 1
    emit(f"VERIFIED acked {len(acked)} read {read} failed {len(failed)} high watermarks {ends}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
