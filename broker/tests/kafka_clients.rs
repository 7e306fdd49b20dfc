//! The real `sluice` binary with librdkafka (rdkafka) clients: produce and
//! consume round trips with every codec over 1, 2 and 4 shards (several
//! partitions, so batches cross shards), topic auto-creation, metadata,
//! ListOffsets by time, acks 0/1/all, and clean shutdown on SIGTERM.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

const CODECS: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd"];
const PARTITIONS: i32 = 6;
const RECORDS_PER_CODEC: usize = 300;

fn round_trips(shards: u32) {
    let broker = Broker::start(shards);
    for codec in CODECS {
        let topic = format!("codec-{codec}");
        create_topic(&broker, &topic, PARTITIONS);
        let p = producer(
            &broker,
            &[
                ("compression.codec", codec),
                ("acks", "all"),
                ("batch.num.messages", "50"),
            ],
        );
        let records: Vec<_> = (0..RECORDS_PER_CODEC)
            .map(|i| {
                (
                    i as i32 % PARTITIONS,
                    format!("key-{i}"),
                    format!("{codec}-value-{i}-{}", "x".repeat(i % 97)),
                    None,
                )
            })
            .collect();
        let acked = produce_all(&p, &topic, &records);
        let got = consume_all(
            &broker,
            &topic,
            PARTITIONS,
            records.len(),
            Duration::from_secs(30),
        );
        check_round_trip(codec, &records, &acked, &got);
    }
    assert!(broker.log_text().contains(&format!("shards={shards}")));
}

/// Every record is read back once, at its acknowledged offset, offsets of
/// each partition are 0..n without gaps, and order within a partition is
/// the produce order.
fn check_round_trip(
    codec: &str,
    sent: &[(i32, String, String, Option<i64>)],
    acked: &[(i32, i64)],
    got: &[Consumed],
) {
    assert_eq!(
        got.len(),
        sent.len(),
        "{codec}: consumed {} of {}",
        got.len(),
        sent.len()
    );
    let by_pos: BTreeMap<(i32, i64), &Consumed> =
        got.iter().map(|m| ((m.partition, m.offset), m)).collect();
    assert_eq!(by_pos.len(), got.len(), "{codec}: duplicate offsets");
    for ((partition, key, value, _), &(ack_partition, ack_offset)) in sent.iter().zip(acked) {
        assert_eq!(*partition, ack_partition);
        let m = by_pos
            .get(&(ack_partition, ack_offset))
            .unwrap_or_else(|| panic!("{codec}: {key} missing at {ack_offset}"));
        assert_eq!(
            (&m.key, &m.value),
            (key, value),
            "{codec}: wrong record at {partition}/{ack_offset}"
        );
    }
    for p in 0..PARTITIONS {
        let offsets: Vec<i64> = got
            .iter()
            .filter(|m| m.partition == p)
            .map(|m| m.offset)
            .collect();
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, expected, "{codec}: partition {p} offsets");
    }
}

#[test]
fn round_trip_every_codec_one_shard() {
    round_trips(1);
}

#[test]
fn round_trip_every_codec_two_shards() {
    round_trips(2);
}

#[test]
fn round_trip_every_codec_four_shards() {
    round_trips(4);
}

#[test]
fn metadata_and_auto_creation() {
    let broker = Broker::start_with(2, &["--default-partitions", "3", "--node-id", "5"]);
    let p = producer(&broker, &[]);
    // librdkafka producers allow auto-creation: naming the topic creates it.
    let md = p
        .client()
        .fetch_metadata(Some("auto-created"), Duration::from_secs(10))
        .expect("metadata");
    let brokers = md.brokers();
    assert_eq!(brokers.len(), 1);
    assert_eq!(brokers[0].id(), 5);
    assert_eq!(brokers[0].port(), i32::from(broker.port));
    assert_eq!(brokers[0].host(), "127.0.0.1");
    let topic = &md.topics()[0];
    assert_eq!(topic.name(), "auto-created");
    assert!(topic.error().is_none(), "{:?}", topic.error());
    assert_eq!(topic.partitions().len(), 3, "default partitions");
    for part in topic.partitions() {
        assert_eq!(part.leader(), 5);
        assert_eq!(part.replicas(), &[5]);
    }
    // Produce and consume on the auto-created topic.
    let acked = produce_all(&p, "auto-created", &[(2, "k".into(), "v".into(), None)]);
    assert_eq!(acked, vec![(2, 0)]);
    // All-topics metadata lists it, plus an explicitly created one.
    create_topic(&broker, "explicit", 4);
    let all = p
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let names: BTreeMap<&str, usize> = all
        .topics()
        .iter()
        .map(|t| (t.name(), t.partitions().len()))
        .collect();
    assert_eq!(names.get("auto-created"), Some(&3));
    assert_eq!(names.get("explicit"), Some(&4));
}

#[test]
fn offsets_for_times() {
    let broker = Broker::start(2);
    create_topic(&broker, "timed", 2);
    let p = producer(&broker, &[("linger.ms", "0"), ("acks", "all")]);
    let t0 = 1_700_000_000_000i64;
    // One record per batch (sent one by one), timestamps 10 s apart.
    for i in 0..10i64 {
        produce_all(
            &p,
            "timed",
            &[(1, format!("k{i}"), format!("v{i}"), Some(t0 + i * 10_000))],
        );
    }
    let c = consumer(&broker);
    let query = |ts: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("timed", 1, Offset::Offset(ts))
            .expect("tpl");
        let r = c
            .offsets_for_times(tpl, Duration::from_secs(10))
            .expect("offsets_for_times");
        r.find_partition("timed", 1).expect("partition").offset()
    };
    assert_eq!(query(t0), Offset::Offset(0));
    assert_eq!(
        query(t0 + 1),
        Offset::Offset(1),
        "first record at or after the time"
    );
    assert_eq!(query(t0 + 45_000), Offset::Offset(5));
    assert_eq!(query(t0 + 90_000), Offset::Offset(9));
    assert_eq!(
        query(t0 + 1_000_000),
        Offset::End,
        "after every record: no offset"
    );
    let (low, high) = c
        .fetch_watermarks("timed", 1, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!((low, high), (0, 10));
    let (low, high) = c
        .fetch_watermarks("timed", 0, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!((low, high), (0, 0));
}

#[test]
fn acks_zero_one_all() {
    let broker = Broker::start(2);
    for (acks, partitions) in [("0", 2), ("1", 3), ("all", 4)] {
        let topic = format!("acks-{acks}");
        create_topic(&broker, &topic, partitions);
        let p = producer(&broker, &[("acks", acks)]);
        let records: Vec<_> = (0..200)
            .map(|i| (i % partitions, format!("k{i}"), format!("{acks}-{i}"), None))
            .collect();
        let acked = produce_all(&p, &topic, &records);
        if acks != "0" {
            for p in 0..partitions {
                let offsets: Vec<i64> = acked.iter().filter(|a| a.0 == p).map(|a| a.1).collect();
                assert_eq!(
                    offsets,
                    (0..offsets.len() as i64).collect::<Vec<_>>(),
                    "acks={acks} partition {p}"
                );
            }
        }
        p.flush(Duration::from_secs(10)).expect("flush");
        let got = consume_all(
            &broker,
            &topic,
            partitions,
            records.len(),
            Duration::from_secs(30),
        );
        assert_eq!(got.len(), records.len(), "acks={acks}");
        let mut values: Vec<&str> = got.iter().map(|m| m.value.as_str()).collect();
        values.sort_unstable();
        let mut expected: Vec<&str> = records.iter().map(|r| r.2.as_str()).collect();
        expected.sort_unstable();
        assert_eq!(values, expected, "acks={acks}");
    }
}

#[test]
fn sigterm_stops_cleanly_and_data_survives() {
    let mut broker = Broker::start(2);
    create_topic(&broker, "kept", 2);
    let p = producer(&broker, &[("acks", "all")]);
    let records: Vec<_> = (0..50)
        .map(|i| (i % 2, format!("k{i}"), format!("v{i}"), None))
        .collect();
    produce_all(&p, "kept", &records);
    drop(p);
    let status = broker.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(broker.log_text().contains("stopped"));
    broker.restart();
    let got = consume_all(&broker, "kept", 2, records.len(), Duration::from_secs(30));
    assert_eq!(got.len(), records.len());
}

#[test]
fn admin_healthz() {
    let broker = Broker::start(1);
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", broker.admin_port)).expect("admin connect");
    use std::io::{Read, Write};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("ok"), "{out}");
}
