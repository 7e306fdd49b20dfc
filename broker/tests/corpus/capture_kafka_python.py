"""kafka-python traffic for the request corpus (run by corpus_capture.rs).

Usage: python3 capture_kafka_python.py HOST:PORT

Admin (create topics with configs, describe and alter configs, create
partitions, describe cluster, groups and group offsets, delete records,
group offsets, groups and a topic), a gzip producer and a plain one with
keys and headers, and a consumer group that reads everything back and
commits. Every wait is bounded; any failure exits non-zero.
"""

import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

TOPIC = "corpus-py"
DOOMED = "corpus-py-doomed"
GROUP = "corpus-py-group"
RECORDS = 6
WAIT_S = 30
CLIENT_ID = "corpus-kafka-python"


def main(bootstrap):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=CLIENT_ID, request_timeout_ms=15000)
    try:
        admin.create_topics([
            NewTopic(name=TOPIC, num_partitions=2, replication_factor=1,
                     topic_configs={"retention.ms": "3600000", "cleanup.policy": "delete"}),
            NewTopic(name=DOOMED, num_partitions=1, replication_factor=1),
        ])
        topic = ConfigResource(ConfigResourceType.TOPIC, TOPIC)
        admin.describe_configs([topic], config_filter="all")
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, TOPIC, configs={"retention.bytes": "1048576"})])
        admin.describe_cluster()
        admin.describe_topics([TOPIC])

        produce(bootstrap, compression="gzip", first=0)
        produce(bootstrap, compression=None, first=RECORDS // 2)
        consume(bootstrap)

        admin.list_groups()
        admin.describe_groups([GROUP])
        admin.list_group_offsets({GROUP: None})
        admin.create_partitions({DOOMED: NewPartitions(total_count=2)})
        admin.delete_records({TopicPartition(TOPIC, 0): 1})
        admin.delete_group_offsets(GROUP, [TopicPartition(TOPIC, 1)])
        admin.delete_groups([GROUP])
        admin.delete_topics([DOOMED])
    finally:
        admin.close()


def produce(bootstrap, compression, first):
    p = KafkaProducer(bootstrap_servers=bootstrap, client_id=CLIENT_ID, acks="all",
                      compression_type=compression, linger_ms=5)
    try:
        futures = [
            p.send(TOPIC, key=f"k{i}".encode(), value=f"kafka-python record {i}".encode(),
                   headers=[("h", f"v{i}".encode())], partition=i % 2)
            for i in range(first, first + RECORDS // 2)
        ]
        for f in futures:
            f.get(timeout=WAIT_S)
    finally:
        p.close(timeout=WAIT_S)


def consume(bootstrap):
    c = KafkaConsumer(TOPIC, bootstrap_servers=bootstrap, client_id=CLIENT_ID, group_id=GROUP,
                      auto_offset_reset="earliest", enable_auto_commit=False,
                      session_timeout_ms=10000, heartbeat_interval_ms=200, fetch_max_wait_ms=100)
    try:
        got = 0
        deadline = time.time() + WAIT_S
        while got < RECORDS and time.time() < deadline:
            got += sum(len(v) for v in c.poll(timeout_ms=200).values())
        if got < RECORDS:
            raise SystemExit(f"consumed {got} of {RECORDS} records")
        c.commit()
        parts = [TopicPartition(TOPIC, p) for p in range(2)]
        c.committed(parts[0])
        c.end_offsets(parts)
        c.beginning_offsets(parts)
        c.offsets_for_times({parts[0]: 0})
        # A few heartbeats.
        end = time.time() + 1.0
        while time.time() < end:
            c.poll(timeout_ms=100)
    finally:
        c.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
