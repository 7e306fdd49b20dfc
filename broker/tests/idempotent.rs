//! The idempotent producer against the real binary: InitProducerId, retried
//! batches answered with their original offsets (also after a SIGKILL and
//! recovery from the WAL), sequence gaps and fenced epochs refused, and an
//! idempotent librdkafka producer whose broker is killed mid-stream (or
//! whose connections are cut by a proxy after the broker stored a batch)
//! ending with every record exactly once, in order.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
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
use kafka_protocol::records::{Record, TimestampType};
use rdkafka::producer::FutureRecord;

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;

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
            timestamp: now_ms(),
            key: None,
            value: Some(Bytes::from(format!("seq-{}", seq + i))),
            headers: Default::default(),
        })
        .collect();
    encode_batch(&records)
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
    // A transactional id gets its own producer id from its coordinator,
    // and each new instance the next epoch (which fences the previous).
    let tx = init_producer_id(&broker, Some("tx-1"));
    assert_eq!((tx.error_code, tx.producer_epoch), (0, 0));
    assert!(![a.producer_id.0, b.producer_id.0].contains(&tx.producer_id.0));
    let again = init_producer_id(&broker, Some("tx-1"));
    assert_eq!(
        (again.error_code, again.producer_id.0, again.producer_epoch),
        (0, tx.producer_id.0, 1)
    );

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
    let duplicates = broker
        .log_text()
        .matches("duplicate produce answered")
        .count();
    eprintln!("retried batches answered as duplicates after the restart: {duplicates}");

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

/// A TCP proxy in front of the broker. While `cutting`, at most once per
/// `cut_every` it lets a large request (a produce) through, holds back the
/// broker's answer long enough for the batch to be written and durable,
/// then cuts every connection: the client must retry a batch the broker
/// already stored.
struct CuttingProxy {
    stop: Arc<std::sync::atomic::AtomicBool>,
    cutting: Arc<std::sync::atomic::AtomicBool>,
}

/// State shared by the proxy's pipes.
#[derive(Clone)]
struct Cuts {
    generation: Arc<AtomicU64>,
    cutting: Arc<std::sync::atomic::AtomicBool>,
    last_cut: Arc<std::sync::Mutex<Instant>>,
    cut_every: Duration,
}

impl CuttingProxy {
    fn start_on(port: u16, broker_port: u16, cut_every: Duration) -> CuttingProxy {
        use std::sync::atomic::AtomicBool;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Cuts {
            generation: Arc::new(AtomicU64::new(0)),
            cutting: Arc::new(AtomicBool::new(false)),
            last_cut: Arc::new(std::sync::Mutex::new(Instant::now())),
            cut_every,
        };
        let (stop2, cuts2) = (Arc::clone(&stop), cuts.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let upstream =
                            std::net::TcpStream::connect(("127.0.0.1", broker_port)).expect("up");
                        let hold = Arc::new(AtomicBool::new(false));
                        pipe(&client, &upstream, &cuts2, &hold, true);
                        pipe(&upstream, &client, &cuts2, &hold, false);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        CuttingProxy {
            stop,
            cutting: cuts.cutting,
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until either side closes or a cut happens.
/// `requests`: this pipe carries client requests (and may cut).
fn pipe(
    from: &std::net::TcpStream,
    to: &std::net::TcpStream,
    cuts: &Cuts,
    hold: &Arc<std::sync::atomic::AtomicBool>,
    requests: bool,
) {
    use std::io::{Read, Write};
    const PRODUCE_BYTES_MIN: usize = 1024;
    let (mut from, mut to) = (
        from.try_clone().expect("clone"),
        to.try_clone().expect("clone"),
    );
    let (cuts, hold) = (cuts.clone(), Arc::clone(hold));
    let born = cuts.generation.load(Ordering::Relaxed);
    from.set_read_timeout(Some(Duration::from_millis(10)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while cuts.generation.load(Ordering::Relaxed) == born {
            if !requests && hold.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            if requests && n >= PRODUCE_BYTES_MIN && cuts.cutting.load(Ordering::Relaxed) {
                let mut last = cuts.last_cut.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= cuts.cut_every {
                    *last = Instant::now();
                    hold.store(true, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                    cuts.generation.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

#[test]
fn librdkafka_idempotent_producer_with_cut_connections_is_exactly_once_in_order() {
    let _serial = serial();
    let proxy_port = free_port();
    let advertised = format!("127.0.0.1:{proxy_port}");
    let broker = Broker::start_with(2, &["--advertised-listener", &advertised]);
    // Clients learn the proxy's address from Metadata, so it runs first.
    let proxy = CuttingProxy::start_on(proxy_port, broker.port, Duration::from_millis(250));
    create_topic(&broker, "idem-cut", PARTITIONS);
    proxy.cutting.store(true, Ordering::Relaxed);
    let mut c = rdkafka::config::ClientConfig::new();
    c.set("bootstrap.servers", &advertised)
        .set("broker.address.family", "v4")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "120000")
        .set("retry.backoff.ms", "20")
        .set("reconnect.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "100")
        .set("linger.ms", "5");
    let p: rdkafka::producer::FutureProducer = c.create().expect("producer");
    let records = 4_000u64;
    let mut failures = Vec::new();
    for chunk in 0..records / CHUNK_RECORDS {
        let futures: Vec<_> = (chunk * CHUNK_RECORDS..(chunk + 1) * CHUNK_RECORDS)
            .map(|i| {
                let value = format!("{i}");
                let r = FutureRecord::to("idem-cut")
                    .partition((i % PARTITIONS as u64) as i32)
                    .key("k")
                    .payload(&value);
                p.send_result(r).map_err(|(e, _)| e).expect("enqueue")
            })
            .collect();
        for f in futures {
            match futures::executor::block_on(f) {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => failures.push(e.to_string()),
                Err(_) => failures.push("canceled".into()),
            }
        }
    }
    drop(p);
    // Consumers reach the broker through the proxy too (it is the
    // advertised address): stop cutting, keep forwarding.
    proxy.cutting.store(false, Ordering::Relaxed);
    assert!(failures.is_empty(), "deliveries failed: {failures:?}");
    let duplicates = broker
        .log_text()
        .matches("duplicate produce answered")
        .count();
    // Informational: whether a cut lands between the write and its answer
    // depends on timing (seen: 0 to 7 per run), so it is not asserted; the
    // raw-frame test above asserts the duplicate answers themselves.
    eprintln!("retried batches answered as duplicates: {duplicates}");
    let got = consume_all(
        &broker,
        "idem-cut",
        PARTITIONS,
        records as usize + 1,
        Duration::from_secs(30),
    );
    for partition in 0..PARTITIONS {
        let values: Vec<u64> = got
            .iter()
            .filter(|m| m.partition == partition)
            .map(|m| m.value.parse().expect("a number"))
            .collect();
        let expected: Vec<u64> = (0..records)
            .filter(|i| (i % PARTITIONS as u64) as i32 == partition)
            .collect();
        assert_eq!(
            values, expected,
            "partition {partition}: exactly once, in order"
        );
    }
    drop(proxy);
}

/// A produce request of one batch to one partition of `topic`.
fn produce_request(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    let mut p = PartitionProduceData::default();
    p.index = partition;
    p.records = Some(records);
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = acks;
    r.timeout_ms = 10_000;
    r.topic_data = vec![t];
    r
}

/// WAL commits of all shards so far, from `/metrics`.
fn wal_commits(b: &Broker) -> u64 {
    common::metric_sum(b, "sluice_shard_wal_commits_total")
        .expect("no WAL commit counter in /metrics")
}

/// Reads one response and returns its correlation id and body.
fn response(s: &mut std::net::TcpStream, key: ApiKey, version: i16) -> (i32, Bytes) {
    use kafka_protocol::protocol::Decodable;
    let mut bytes = read_response(s).expect("a response, not a closed connection");
    let header = ResponseHeader::decode(&mut bytes, key.response_header_version(version))
        .expect("response header");
    (header.correlation_id, bytes)
}

#[test]
fn pipelined_produces_keep_order_and_share_wal_commits() {
    use kafka_protocol::protocol::Decodable;
    use std::io::Write;
    const PARTS: i32 = 4;
    const REQUESTS: i32 = 48;
    const RECORDS_PER_BATCH: i32 = 3;
    const METADATA_AFTER: i32 = 24;
    const METADATA_ID: i32 = 1_000;
    let _serial = serial();
    let broker = Broker::start(2);
    create_topic(&broker, "pipelined", PARTS);
    let id = init_producer_id(&broker, None).producer_id.0;
    let mut s = connect(&broker);
    // Metadata on this connection first, so the burst finds the topic
    // ready on every shard.
    let mut meta = MetadataRequest::default();
    meta.topics = None; // All topics.
    let _: MetadataResponse = call(&mut s, ApiKey::Metadata, 9, &meta);

    // All frames back to back in one write, without waiting for answers.
    let mut burst = Vec::new();
    let mut expected_ids = Vec::new();
    for i in 0..REQUESTS {
        if i == METADATA_AFTER {
            burst.extend(request_frame(ApiKey::Metadata, 9, METADATA_ID, &meta));
            expected_ids.push(METADATA_ID);
        }
        let seq = (i / PARTS) * RECORDS_PER_BATCH;
        let records = batch(id, 0, seq, RECORDS_PER_BATCH);
        let req = produce_request("pipelined", i % PARTS, records, -1);
        burst.extend(request_frame(ApiKey::Produce, 9, i, &req));
        expected_ids.push(i);
    }
    let commits_before = wal_commits(&broker);
    s.write_all(&burst).expect("write burst");
    let mut ids = Vec::new();
    for &expected in &expected_ids {
        if expected == METADATA_ID {
            let (cid, mut body) = response(&mut s, ApiKey::Metadata, 9);
            ids.push(cid);
            let m = MetadataResponse::decode(&mut body, 9).expect("metadata body");
            assert!(m
                .topics
                .iter()
                .any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "pipelined")));
            continue;
        }
        let (cid, mut body) = response(&mut s, ApiKey::Produce, 9);
        ids.push(cid);
        let r = ProduceResponse::decode(&mut body, 9).expect("produce body");
        let p = &r.responses[0].partition_responses[0];
        let i = expected;
        assert_eq!(p.index, i % PARTS, "request {i}");
        assert_eq!(p.error_code, 0, "request {i}: sequence accepted in order");
        assert_eq!(
            p.base_offset,
            i64::from((i / PARTS) * RECORDS_PER_BATCH),
            "request {i}: offsets of a partition follow the frames' order"
        );
    }
    assert_eq!(ids, expected_ids, "answers in request order");
    let commits = wal_commits(&broker) - commits_before;
    println!("WAL commits for {REQUESTS} pipelined produces: {commits}");
    assert!(commits >= 1);
    // Unshared, each produce is its own commit (48). Shared, 5-10 on a
    // quiet machine, up to 13 seen on a loaded 2-core one; half is the
    // bound, which sharing meets with room on any machine.
    assert!(
        commits <= (REQUESTS / 2) as u64,
        "{commits} WAL commits for {REQUESTS} produces on one connection: not shared"
    );

    // acks=0: no answer; the next request's answer comes first.
    let seq = (REQUESTS / PARTS) * RECORDS_PER_BATCH;
    let ok = produce_request("pipelined", 0, batch(id, 0, seq, 1), 0);
    s.write_all(&request_frame(ApiKey::Produce, 9, 2_000, &ok))
        .expect("write");
    let _: MetadataResponse = call(&mut s, ApiKey::Metadata, 9, &meta);
    // A failed produce with acks=0 (a sequence gap) closes the connection.
    let gap = produce_request("pipelined", 0, batch(id, 0, seq + 100, 1), 0);
    s.write_all(&request_frame(ApiKey::Produce, 9, 2_001, &gap))
        .expect("write");
    assert_closed(&mut s);
    assert_eq!(
        produce(&broker, "pipelined", batch(id, 0, seq + 1, 1)),
        (0, i64::from(seq + 1)),
        "the acks=0 batch was written, the gap was not"
    );
}
