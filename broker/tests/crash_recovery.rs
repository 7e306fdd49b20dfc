//! SIGKILL during an acks=all load: every record the broker acknowledged
//! before the kill is present after a restart on the same data dir, at its
//! acknowledged offset, and new produces continue each partition without a
//! gap.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;

const PARTITIONS: i32 = 4;
/// Records in flight at once in the background producer.
const INFLIGHT_RECORDS_MAX: usize = 200;

type Acked = Arc<Mutex<BTreeMap<(i32, i64), String>>>;

/// Produces until `stop`, recording each acknowledged (partition, offset).
fn load(
    bootstrap_broker: &Broker,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> std::thread::JoinHandle<u64> {
    let p = producer(
        bootstrap_broker,
        &[
            ("acks", "all"),
            ("retries", "0"),
            ("message.timeout.ms", "5000"),
            ("linger.ms", "2"),
        ],
    );
    std::thread::spawn(move || {
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut batch = Vec::with_capacity(INFLIGHT_RECORDS_MAX);
            for _ in 0..INFLIGHT_RECORDS_MAX {
                let value = format!("record-{sent}");
                let partition = (sent % PARTITIONS as u64) as i32;
                let r = FutureRecord::to("durable")
                    .partition(partition)
                    .key("k")
                    .payload(&value);
                if let Ok(f) = p.send_result(r) {
                    batch.push((value, f));
                }
                sent += 1;
            }
            for (value, f) in batch {
                if let Ok(Ok(d)) = futures::executor::block_on(f) {
                    acked.lock().unwrap().insert((d.partition, d.offset), value);
                }
            }
        }
        sent
    })
}

#[test]
fn sigkill_under_acks_all_load_loses_nothing_acknowledged() {
    let mut broker = Broker::start(2);
    create_topic(&broker, "durable", PARTITIONS);
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(&broker, Arc::clone(&stop), Arc::clone(&acked));
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 2_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.kill();
    stop.store(true, Ordering::Relaxed);
    let sent = loader.join().expect("loader");
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.len() >= 1_000,
        "too few acknowledged records before the kill: {} of {sent}",
        acked.len()
    );

    broker.restart();
    let c = consumer(&broker);
    let mut ends = BTreeMap::new();
    for p in 0..PARTITIONS {
        let (low, high) = c
            .fetch_watermarks("durable", p, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!(low, 0);
        let last_acked = acked
            .keys()
            .filter(|k| k.0 == p)
            .map(|k| k.1)
            .max()
            .unwrap_or(-1);
        assert!(
            high > last_acked,
            "partition {p}: high watermark {high} <= acknowledged offset {last_acked}"
        );
        ends.insert(p, high);
    }
    let total: i64 = ends.values().sum();
    let got = consume_all(
        &broker,
        "durable",
        PARTITIONS,
        total as usize,
        Duration::from_secs(60),
    );
    assert_eq!(got.len() as i64, total, "every stored record is readable");
    let stored: BTreeMap<(i32, i64), &str> = got
        .iter()
        .map(|m| ((m.partition, m.offset), m.value.as_str()))
        .collect();
    for ((p, offset), value) in &acked {
        assert_eq!(
            stored.get(&(*p, *offset)).copied(),
            Some(value.as_str()),
            "acknowledged record at {p}/{offset}"
        );
    }
    for p in 0..PARTITIONS {
        let offsets: Vec<i64> = got
            .iter()
            .filter(|m| m.partition == p)
            .map(|m| m.offset)
            .collect();
        assert_eq!(
            offsets,
            (0..ends[&p]).collect::<Vec<_>>(),
            "partition {p}: no gaps after recovery"
        );
    }
    // New produces continue each partition right after the recovered end.
    let pr = producer(&broker, &[("acks", "all")]);
    let fresh: Vec<_> = (0..PARTITIONS)
        .map(|p| (p, "k".to_string(), format!("after-{p}"), None))
        .collect();
    for (p, offset) in produce_all(&pr, "durable", &fresh) {
        assert_eq!(
            offset, ends[&p],
            "partition {p}: first offset after restart"
        );
    }
}
