//! The idempotent producer against the real binary: InitProducerId, retried
//! batches answered with their original offsets (also after a SIGKILL and
//! recovery from the WAL), sequence gaps and fenced epochs refused, and an
//! idempotent librdkafka producer whose broker is killed mid-stream ending
//! with every record exactly once, in order.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;

/// Tests of this file run one at a time: a restarted broker reuses its
/// port, which a broker starting in a parallel test could take meanwhile
/// (both come from the kernel's ephemeral range).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rdkafka::producer::FutureRecord;

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;

/// One batch of `count` records from producer `id`/`epoch` starting at `seq`.
fn batch(id: i64, epoch: i16, seq: i32, count: i32) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: seq + i,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("seq-{}", seq + i))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &options).expect("encode batch");
    buf.freeze()
}

/// Produces `records` to partition 0 of `topic`: (error code, base offset).
fn produce(b: &Broker, topic: &str, records: Bytes) -> (i16, i64) {
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(records);
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 10_000;
    r.topic_data = vec![t];
    let mut s = connect(b);
    let resp: ProduceResponse = call(&mut s, ApiKey::Produce, 9, &r);
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn init_producer_id(b: &Broker, transactional_id: Option<&str>) -> InitProducerIdResponse {
    let mut r = InitProducerIdRequest::default();
    r.transactional_id =
        transactional_id.map(|t| TransactionalId(StrBytes::from_string(t.to_string())));
    r.transaction_timeout_ms = 60_000;
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    let mut s = connect(b);
    call(&mut s, ApiKey::InitProducerId, 4, &r)
}

#[test]
fn retries_gaps_and_fenced_epochs_over_raw_frames() {
    let _serial = serial();
    let mut broker = Broker::start(2);
    create_topic(&broker, "idem-raw", 1);
    let a = init_producer_id(&broker, None);
    let b = init_producer_id(&broker, None);
    assert_eq!((a.error_code, a.producer_epoch), (0, 0));
    assert!(a.producer_id.0 >= 0 && b.producer_id.0 != a.producer_id.0);
    let tx = init_producer_id(&broker, Some("tx-1"));
    assert_eq!(tx.error_code, TRANSACTIONAL_ID_AUTHORIZATION_FAILED);

    let id = a.producer_id.0;
    assert_eq!(produce(&broker, "idem-raw", batch(id, 0, 0, 3)), (0, 0));
    assert_eq!(
        produce(&broker, "idem-raw", batch(id, 0, 0, 3)),
        (0, 0),
        "a retried batch gets its original offset"
    );
    assert_eq!(produce(&broker, "idem-raw", batch(id, 0, 3, 2)), (0, 3));
    let (code, _) = produce(&broker, "idem-raw", batch(id, 0, 9, 1));
    assert_eq!(code, OUT_OF_ORDER_SEQUENCE_NUMBER, "a gap is refused");

    // The window is rebuilt from the WAL after a crash.
    broker.kill();
    std::thread::sleep(Duration::from_millis(300));
    broker.restart();
    assert_eq!(
        produce(&broker, "idem-raw", batch(id, 0, 3, 2)),
        (0, 3),
        "duplicate detected after recovery"
    );
    let (code, _) = produce(&broker, "idem-raw", batch(id, 0, 6, 1));
    assert_eq!(code, OUT_OF_ORDER_SEQUENCE_NUMBER, "gap after recovery");
    assert_eq!(produce(&broker, "idem-raw", batch(id, 0, 5, 1)), (0, 5));

    // A newer epoch starts at sequence 0 and fences the older one.
    assert_eq!(produce(&broker, "idem-raw", batch(id, 1, 0, 1)), (0, 6));
    let (code, _) = produce(&broker, "idem-raw", batch(id, 0, 6, 1));
    assert_eq!(code, INVALID_PRODUCER_EPOCH);

    let got = consume_all(&broker, "idem-raw", 1, 7, Duration::from_secs(20));
    let values: Vec<&str> = got.iter().map(|m| m.value.as_str()).collect();
    assert_eq!(
        values,
        ["seq-0", "seq-1", "seq-2", "seq-3", "seq-4", "seq-5", "seq-0"],
        "nothing was written twice"
    );
}

const RECORDS: u64 = 20_000;
const PARTITIONS: i32 = 2;
/// Records enqueued before waiting for their deliveries.
const CHUNK_RECORDS: u64 = 500;

#[test]
fn librdkafka_idempotent_producer_across_sigkill_is_exactly_once_in_order() {
    let _serial = serial();
    let mut broker = Broker::start(2);
    create_topic(&broker, "idem", PARTITIONS);
    let p = producer(
        &broker,
        &[
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "120000"),
            ("socket.timeout.ms", "5000"),
            ("retry.backoff.ms", "50"),
        ],
    );
    let delivered = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&delivered);
    let sender = std::thread::spawn(move || {
        let mut failures = Vec::new();
        for chunk in 0..RECORDS / CHUNK_RECORDS {
            let futures: Vec<_> = (chunk * CHUNK_RECORDS..(chunk + 1) * CHUNK_RECORDS)
                .map(|i| {
                    let partition = (i % PARTITIONS as u64) as i32;
                    let value = format!("{i}");
                    let r = FutureRecord::to("idem")
                        .partition(partition)
                        .key("k")
                        .payload(&value);
                    p.send_result(r).map_err(|(e, _)| e).expect("enqueue")
                })
                .collect();
            for f in futures {
                match futures::executor::block_on(f) {
                    Ok(Ok(_)) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err((e, _))) => failures.push(e.to_string()),
                    Err(_) => failures.push("canceled".into()),
                }
            }
        }
        failures
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) < RECORDS / 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    broker.kill();
    std::thread::sleep(Duration::from_millis(300));
    broker.restart();
    let failures = sender.join().expect("sender");
    assert!(failures.is_empty(), "deliveries failed: {failures:?}");

    let got = consume_all(
        &broker,
        "idem",
        PARTITIONS,
        RECORDS as usize + 1,
        Duration::from_secs(30),
    );
    for partition in 0..PARTITIONS {
        let values: Vec<u64> = got
            .iter()
            .filter(|m| m.partition == partition)
            .map(|m| m.value.parse().expect("a number"))
            .collect();
        let expected: Vec<u64> = (0..RECORDS)
            .filter(|i| (i % PARTITIONS as u64) as i32 == partition)
            .collect();
        assert_eq!(
            values.len(),
            expected.len(),
            "partition {partition}: every record exactly once"
        );
        assert_eq!(values, expected, "partition {partition}: in order");
    }
}
