//! Bad input over raw sockets: malformed frames close the connection, bad
//! requests get Kafka error codes, and after each a healthy rdkafka client
//! still works against the same broker.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, TimestampType};

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn batch(values: &[Vec<u8>]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now_ms(),
            key: None,
            value: Some(Bytes::from(v.clone())),
            headers: Default::default(),
        })
        .collect();
    encode_batch(&records)
}

fn produce(topic: &str, records: Bytes) -> ProduceRequest {
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(records);
    let mut t = TopicProduceData::default();
    t.name = name(topic);
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 10_000;
    r.topic_data = vec![t];
    r
}

fn produce_error(b: &Broker, topic: &str, records: Bytes) -> i16 {
    let mut s = connect(b);
    let resp: ProduceResponse = call(&mut s, ApiKey::Produce, 9, &produce(topic, records));
    resp.responses[0].partition_responses[0].error_code
}

fn metadata(topic: &str) -> MetadataRequest {
    let mut t = MetadataRequestTopic::default();
    t.name = Some(name(topic));
    let mut r = MetadataRequest::default();
    r.topics = Some(vec![t]);
    r.allow_auto_topic_creation = true;
    r
}

#[test]
fn truncated_frame_closes_the_connection() {
    let b = Broker::start(2);
    let mut s = connect(&b);
    let frame = request_frame(ApiKey::ApiVersions, 0, 1, &ApiVersionsRequest::default());
    s.write_all(&frame[..frame.len() - 3]).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_closed(&mut s);
    assert_healthy(&b);
}

#[test]
fn garbage_frame_closes_the_connection() {
    let b = Broker::start(2);
    let mut s = connect(&b);
    let garbage: Vec<u8> = (0..64u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    s.write_all(&(garbage.len() as i32).to_be_bytes())
        .expect("write");
    s.write_all(&garbage).expect("write");
    assert_closed(&mut s);
    // A known api key with a body that does not decode.
    let mut s = connect(&b);
    let mut frame = request_frame(ApiKey::Metadata, 9, 1, &metadata("x"));
    frame.truncate(14);
    frame[..4].copy_from_slice(&10i32.to_be_bytes());
    s.write_all(&frame).expect("write");
    assert_closed(&mut s);
    assert_healthy(&b);
}

#[test]
fn oversized_or_negative_size_prefix_closes_the_connection() {
    let b = Broker::start_with(1, &["--request-max-bytes", "1MiB"]);
    for size in [(1 << 20) + 1, i32::MAX, -1, -100] {
        let mut s = connect(&b);
        s.write_all(&size.to_be_bytes()).expect("write");
        s.write_all(&[0u8; 16]).expect("write");
        assert_closed(&mut s);
    }
    assert_healthy(&b);
}

#[test]
fn unknown_api_key_closes_the_connection() {
    let b = Broker::start(1);
    let mut s = connect(&b);
    let mut frame = request_frame(ApiKey::ApiVersions, 0, 1, &ApiVersionsRequest::default());
    frame[4..6].copy_from_slice(&1000i16.to_be_bytes());
    s.write_all(&frame).expect("write");
    assert_closed(&mut s);
    // A real Kafka API this broker does not serve (JoinGroup).
    let mut s = connect(&b);
    let mut frame = request_frame(ApiKey::ApiVersions, 0, 1, &ApiVersionsRequest::default());
    frame[4..6].copy_from_slice(&(ApiKey::JoinGroup as i16).to_be_bytes());
    s.write_all(&frame).expect("write");
    assert_closed(&mut s);
    assert_healthy(&b);
}

#[test]
fn unsupported_api_versions_version_gets_error_35_and_our_ranges() {
    let b = Broker::start(1);
    let mut s = connect(&b);
    let mut frame = request_frame(ApiKey::ApiVersions, 3, 99, &ApiVersionsRequest::default());
    frame[6..8].copy_from_slice(&99i16.to_be_bytes());
    s.write_all(&frame).expect("write");
    let mut bytes = read_response(&mut s).expect("a response");
    use kafka_protocol::protocol::Decodable;
    let header = ResponseHeader::decode(&mut bytes, 0).expect("header v0");
    assert_eq!(header.correlation_id, 99);
    let resp = ApiVersionsResponse::decode(&mut bytes, 0).expect("v0 body");
    assert_eq!(resp.error_code, 35);
    let fetch = resp
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Fetch as i16)
        .expect("fetch advertised");
    assert_eq!((fetch.min_version, fetch.max_version), (0, 12));
    // The connection stays usable: a supported version is answered.
    let ok: ApiVersionsResponse = call(
        &mut s,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    );
    assert_eq!(ok.error_code, 0);
    // Any other API at an unsupported version closes the connection.
    let mut s = connect(&b);
    let mut frame = request_frame(ApiKey::Metadata, 12, 1, &metadata("x"));
    frame[6..8].copy_from_slice(&13i16.to_be_bytes());
    s.write_all(&frame).expect("write");
    assert_closed(&mut s);
    assert_healthy(&b);
}

#[test]
fn crc_mismatch_is_corrupt_message() {
    let b = Broker::start(2);
    create_topic(&b, "crc", 1);
    let good = batch(&[b"hello".to_vec(), b"world".to_vec()]);
    let mut bad = good.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    assert_eq!(
        produce_error(&b, "crc", Bytes::from(bad)),
        2,
        "CORRUPT_MESSAGE"
    );
    assert_eq!(
        produce_error(&b, "crc", good),
        0,
        "the same batch intact is accepted"
    );
    assert_healthy(&b);
}

#[test]
fn old_message_format_is_refused() {
    let b = Broker::start(1);
    create_topic(&b, "old", 1);
    let mut v1 = batch(&[b"x".to_vec()]).to_vec();
    v1[16] = 1;
    let code = produce_error(&b, "old", Bytes::from(v1));
    assert!(
        code == 43 || code == 2,
        "UNSUPPORTED_FOR_MESSAGE_FORMAT or CORRUPT_MESSAGE, got {code}"
    );
    assert_healthy(&b);
}

#[test]
fn too_large_batch_is_message_too_large() {
    let b = Broker::start(2);
    create_topic(&b, "big", 1);
    let code = produce_error(&b, "big", batch(&[vec![7u8; 1_200_000]]));
    assert_eq!(code, 10, "MESSAGE_TOO_LARGE");
    assert_eq!(produce_error(&b, "big", batch(&[vec![7u8; 100_000]])), 0);
    assert_healthy(&b);
}

#[test]
fn unknown_topic_with_auto_create_off_is_error_3() {
    let b = Broker::start_with(2, &["--auto-create-topics", "false"]);
    let mut s = connect(&b);
    let resp: MetadataResponse = call(&mut s, ApiKey::Metadata, 12, &metadata("nowhere"));
    assert_eq!(resp.topics[0].error_code, 3);
    assert_eq!(produce_error(&b, "nowhere", batch(&[b"x".to_vec()])), 3);
    // Auto-creation is off, so the healthy client needs its topic created.
    create_topic(&b, "healthcheck", 1);
    assert_healthy(&b);
}

#[test]
fn bad_topic_names_are_error_17() {
    let b = Broker::start(1);
    let mut s = connect(&b);
    for bad in ["bad name", "..", "slash/topic", &"x".repeat(250)] {
        let resp: MetadataResponse = call(&mut s, ApiKey::Metadata, 12, &metadata(bad));
        assert_eq!(resp.topics[0].error_code, 17, "metadata {bad:?}");
        let mut t = CreatableTopic::default();
        t.name = name(bad);
        t.num_partitions = 1;
        t.replication_factor = 1;
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 5000;
        let resp: CreateTopicsResponse = call(&mut s, ApiKey::CreateTopics, 7, &req);
        assert_eq!(resp.topics[0].error_code, 17, "create {bad:?}");
    }
    assert_healthy(&b);
}

#[test]
fn internal_topics_refuse_client_produce_and_are_marked_internal() {
    let b = Broker::start(1);
    let mut s = connect(&b);
    for internal in ["__consumer_offsets", "__transaction_state"] {
        // Only the coordinators write them (Kafka: INVALID_TOPIC_EXCEPTION).
        assert_eq!(
            produce_error(&b, internal, batch(&[b"x".to_vec()])),
            17,
            "produce to {internal}"
        );
        let resp: MetadataResponse = call(&mut s, ApiKey::Metadata, 12, &metadata(internal));
        let t = &resp.topics[0];
        assert_eq!(t.error_code, 0, "metadata {internal}");
        assert!(t.is_internal, "{internal} is internal");
    }
    let resp: MetadataResponse = call(&mut s, ApiKey::Metadata, 12, &metadata("plain"));
    assert!(!resp.topics[0].is_internal, "an ordinary topic is not");
    assert_healthy(&b);
}

#[test]
fn acks_zero_gets_no_response_and_order_is_kept() {
    let b = Broker::start(2);
    create_topic(&b, "quiet", 1);
    let mut s = connect(&b);
    let mut silent = produce("quiet", batch(&[b"a".to_vec()]));
    silent.acks = 0;
    // acks=0 produce, then a pipelined ApiVersions: the only answer is the
    // ApiVersions one (correlation id 7 from `call`).
    s.write_all(&request_frame(ApiKey::Produce, 9, 1, &silent))
        .expect("write");
    let resp: ApiVersionsResponse = call(
        &mut s,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    );
    assert_eq!(resp.error_code, 0);
    // Pipelined requests are answered in order.
    let mut frames = Vec::new();
    for id in 0..5 {
        frames.extend(request_frame(
            ApiKey::Metadata,
            12,
            100 + id,
            &metadata("quiet"),
        ));
    }
    s.write_all(&frames).expect("write");
    for id in 0..5 {
        let mut bytes = read_response(&mut s).expect("response");
        use kafka_protocol::protocol::Decodable;
        let header = ResponseHeader::decode(&mut bytes, 1).expect("header");
        assert_eq!(header.correlation_id, 100 + id);
    }
}

/// ApiVersions on `s`: `Some(error code)` when answered, `None` when the
/// broker closed the connection.
fn api_versions_answer(s: &mut TcpStream) -> Option<i16> {
    use kafka_protocol::protocol::Decodable;
    let frame = request_frame(ApiKey::ApiVersions, 3, 5, &ApiVersionsRequest::default());
    // A refused connection may already be reset: the write fails then.
    if s.write_all(&frame).is_err() {
        return None;
    }
    let mut bytes = read_response(s)?;
    let header = ResponseHeader::decode(&mut bytes, 0).expect("header v0");
    assert_eq!(header.correlation_id, 5);
    let resp = ApiVersionsResponse::decode(&mut bytes, 3).expect("v3 body");
    Some(resp.error_code)
}

/// A new connection that gets an ApiVersions answer, retried while the
/// broker has not yet noticed a closed one (bounded: 100 tries, 10 s).
fn connect_answered(b: &Broker) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..100 {
        let mut s = connect(b);
        if let Some(code) = api_versions_answer(&mut s) {
            assert_eq!(code, 0);
            return s;
        }
        assert!(Instant::now() < deadline, "no connection slot freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no connection slot freed")
}

fn metric(b: &Broker, sample: &str) -> Option<u64> {
    common::http_get(b, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn connections_over_the_limit_are_closed_at_accept_with_one_warning() {
    const FLAG: &str = "--connections-per-shard-max";
    let b = Broker::start_with(1, &[FLAG, "2"]);
    let mut first = connect_answered(&b);
    let second = connect_answered(&b);
    // Counted from here: a connection of the start-up's readiness check
    // may still have held a slot a moment ago.
    let refused = "sluice_shard_connections_refused_total{shard=\"0\"}";
    let before = metric(&b, refused).unwrap_or(0);
    // Over the limit: closed at accept, before any request is read.
    let mut third = connect(&b);
    assert_closed(&mut third);
    let mut fourth = connect(&b);
    assert_eq!(api_versions_answer(&mut fourth), None, "fourth is refused");
    assert_eq!(
        metric(&b, refused),
        Some(before + 2),
        "both refusals counted"
    );
    let warnings = b
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(FLAG))
        .count();
    assert_eq!(warnings, 1, "one warning naming {FLAG}:\n{}", b.log_text());
    // Closing one frees a slot, which a new connection then uses.
    drop(second);
    let mut replacement = connect_answered(&b);
    // The connections within the limit were never disturbed.
    assert_eq!(api_versions_answer(&mut first), Some(0));
    assert_eq!(api_versions_answer(&mut replacement), Some(0));
    let warnings = b
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(FLAG))
        .count();
    assert_eq!(warnings, 1, "refusals within 10 s share one warning");
}
