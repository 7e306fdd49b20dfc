use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::samples::RawBody;
use super::*;
use crate::wire_tests::CLIENT_ID;

/// Header + body of a request, without the size prefix.
fn frame<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Bytes {
    crate::wire_tests::frame(key, version, 7, body)
}

fn name(s: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(s))
}

fn produce() -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name("t"))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from_static(b"not a batch")))])])
}

#[test]
fn every_served_api_has_a_schema_and_empty_requests_pass() {
    for (key, min, max) in samples::served() {
        for version in min..=max {
            let bytes = match key {
                ApiKey::Produce => frame(key, version, &ProduceRequest::default()),
                ApiKey::Fetch => frame(key, version, &FetchRequest::default()),
                ApiKey::Metadata => frame(key, version, &MetadataRequest::default()),
                ApiKey::ApiVersions => frame(key, version, &ApiVersionsRequest::default()),
                ApiKey::CreateTopics => frame(key, version, &CreateTopicsRequest::default()),
                ApiKey::AddPartitionsToTxn => {
                    frame(key, version, &AddPartitionsToTxnRequest::default())
                }
                ApiKey::AddOffsetsToTxn => frame(key, version, &AddOffsetsToTxnRequest::default()),
                ApiKey::EndTxn => frame(key, version, &EndTxnRequest::default()),
                ApiKey::WriteTxnMarkers => frame(key, version, &WriteTxnMarkersRequest::default()),
                ApiKey::TxnOffsetCommit => frame(key, version, &TxnOffsetCommitRequest::default()),
                ApiKey::DescribeTransactions => {
                    frame(key, version, &DescribeTransactionsRequest::default())
                }
                ApiKey::ListTransactions => {
                    frame(key, version, &ListTransactionsRequest::default())
                }
                ApiKey::SaslHandshake => frame(key, version, &SaslHandshakeRequest::default()),
                ApiKey::SaslAuthenticate => {
                    frame(key, version, &SaslAuthenticateRequest::default())
                }
                ApiKey::DescribeAcls => frame(key, version, &DescribeAclsRequest::default()),
                ApiKey::CreateAcls => frame(key, version, &CreateAclsRequest::default()),
                ApiKey::DeleteAcls => frame(key, version, &DeleteAclsRequest::default()),
                ApiKey::DescribeClientQuotas => {
                    frame(key, version, &DescribeClientQuotasRequest::default())
                }
                ApiKey::AlterClientQuotas => {
                    frame(key, version, &AlterClientQuotasRequest::default())
                }
                ApiKey::DescribeUserScramCredentials => frame(
                    key,
                    version,
                    &DescribeUserScramCredentialsRequest::default(),
                ),
                ApiKey::AlterUserScramCredentials => {
                    frame(key, version, &AlterUserScramCredentialsRequest::default())
                }
                _ => continue,
            };
            let checked =
                check(key, version, &bytes).unwrap_or_else(|r| panic!("{key:?} v{version}: {r}"));
            assert!(checked.header_bytes >= 8 && checked.header_bytes < bytes.len() + 1);
        }
        assert!(schema::of(key).is_some(), "{key:?}");
    }
}

#[test]
fn huge_top_level_count_is_refused_before_decoding() {
    for version in [3, 8] {
        let mut bytes = frame(ApiKey::Produce, version, &produce()).to_vec();
        // Header v1: 8 bytes + client id (2 + its length); then
        // transactional id (null, 2), acks 2, timeout 4: the topic count.
        let at = 8 + 2 + CLIENT_ID.len() + 2 + 2 + 4;
        assert_eq!(&bytes[at..at + 4], &1i32.to_be_bytes());
        bytes[at..at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        let refusal = check(ApiKey::Produce, version, &bytes).unwrap_err();
        assert!(
            matches!(refusal.what, Problem::TooLong { length, .. } if length == i32::MAX as u64),
            "{refusal}"
        );
        assert_eq!(refusal.at, at + 4);
    }
}

#[test]
fn huge_compact_count_and_negative_lengths_are_refused() {
    let bytes = frame(ApiKey::Produce, 9, &produce()).to_vec();
    let lengths = length_fields(ApiKey::Produce, 9, &bytes);
    assert!(lengths.len() >= 4, "{lengths:?}");
    for &(at, _) in &lengths {
        let mut b = bytes[..at].to_vec();
        // A varint of 0xFFFFFFFF, then the rest unchanged (minus the old
        // one-byte varint).
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        b.extend_from_slice(&bytes[at + 1..]);
        assert!(check(ApiKey::Produce, 9, &b).is_err(), "at {at}");
    }
    let mut neg = frame(ApiKey::Produce, 3, &produce()).to_vec();
    let at = 8 + 2 + CLIENT_ID.len() + 2 + 2 + 4 + 4; // topic name length
    neg[at..at + 2].copy_from_slice(&(-2i16).to_be_bytes());
    let r = check(ApiKey::Produce, 3, &neg).unwrap_err();
    assert_eq!(r.what, Problem::NegativeLength(-2));
}

#[test]
fn truncation_is_refused_and_trailing_bytes_ignored() {
    let bytes = frame(ApiKey::Produce, 7, &produce());
    assert!(check(ApiKey::Produce, 7, &bytes).is_ok());
    for len in 0..bytes.len() {
        assert!(
            check(ApiKey::Produce, 7, &bytes[..len]).is_err(),
            "len {len}"
        );
    }
    // Bytes after the request are ignored (as by the codec and Kafka).
    let mut longer = bytes.to_vec();
    longer.extend_from_slice(&[1, 0, 0]);
    let checked = check(ApiKey::Produce, 7, &longer).unwrap();
    assert_eq!(checked.header_bytes + checked.body_bytes, bytes.len());
}

#[test]
fn decoded_bytes_count_the_codec_element_sizes() {
    let topics: Vec<MetadataRequestTopic> = (0..1000)
        .map(|_| MetadataRequestTopic::default().with_name(Some(name("a"))))
        .collect();
    let req = MetadataRequest::default().with_topics(Some(topics));
    let bytes = frame(ApiKey::Metadata, 12, &req);
    let checked = check(ApiKey::Metadata, 12, &bytes).unwrap();
    let elem = std::mem::size_of::<MetadataRequestTopic>() as u64;
    assert_eq!(checked.decoded_bytes, 1000 * elem);
}

#[test]
fn fetch_known_tags_must_fill_their_size() {
    let req = FetchRequest::default()
        .with_cluster_id(Some(StrBytes::from_static_str("c")))
        .with_topics(vec![FetchTopic::default()
            .with_topic(name("t"))
            .with_partitions(vec![FetchPartition::default()])]);
    let bytes = frame(ApiKey::Fetch, 12, &req).to_vec();
    check(ApiKey::Fetch, 12, &bytes).unwrap();
    // The tagged section is last: count 1, tag 0, size 2, value "\x02c".
    let n = bytes.len();
    assert_eq!(&bytes[n - 5..], &[1, 0, 2, 2, b'c']);
    let mut lying = bytes.clone();
    lying[n - 3] = 3; // size 3 for a 2-byte value
    lying.push(0);
    let r = check(ApiKey::Fetch, 12, &lying).unwrap_err();
    assert!(
        matches!(r.what, Problem::TagSize { tag: 0, size: 3 }),
        "{r}"
    );
    // Tag 1 (replica state) is not valid below v15.
    let mut tag1 = bytes[..n - 5].to_vec();
    tag1.extend_from_slice(&[1, 1, 12]);
    tag1.extend_from_slice(&[0; 12]);
    assert_eq!(
        check(ApiKey::Fetch, 12, &tag1).unwrap_err().what,
        Problem::TagNotValid(1)
    );
}

#[test]
fn oldest_and_newest_create_topics_pass() {
    let req = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name("x"))
        .with_num_partitions(3)
        .with_replication_factor(1)]);
    for version in [0, 7] {
        let bytes = frame(ApiKey::CreateTopics, version, &req);
        check(ApiKey::CreateTopics, version, &bytes).unwrap();
    }
    let mut b = BytesMut::new();
    b.put_slice(&frame(ApiKey::CreateTopics, 0, &req));
    b.truncate(b.len() - 1);
    assert!(check(ApiKey::CreateTopics, 0, &b).is_err());
}

#[test]
fn every_sample_passes_and_every_length_set_huge_is_refused() {
    let mut fields = 0usize;
    for (key, version, variant, body) in samples::all() {
        let bytes = frame(key, version, &RawBody(body.clone()));
        let what = format!("{key:?} v{version} variant {variant}");
        let checked = check(key, version, &bytes).unwrap_or_else(|r| panic!("{what}: {r}"));
        assert_eq!(checked.body_bytes, body.len(), "{what}");
        assert_eq!(checked.header_bytes + body.len(), bytes.len(), "{what}");
        let lengths = length_fields(key, version, &bytes);
        fields += lengths.len();
        for (at, kind) in lengths {
            let b = with_length(&bytes, at, kind, Huge::Max);
            assert!(
                check(key, version, &b).is_err(),
                "{what}: length at {at} set to its max passed"
            );
            if kind != LengthKind::Varint {
                let b = with_length(&bytes, at, kind, Huge::Negative);
                assert!(
                    check(key, version, &b).is_err(),
                    "{what}: length at {at} set to -2 passed"
                );
            }
        }
    }
    assert!(fields > 3000, "{fields} length fields");
}

enum Huge {
    Max,
    Negative,
}

/// `bytes` with the length at `at` replaced by the largest (or a negative
/// non-null) value of its encoding.
fn with_length(bytes: &[u8], at: usize, kind: LengthKind, huge: Huge) -> Vec<u8> {
    let (old, new): (usize, &[u8]) = match (kind, huge) {
        (LengthKind::Varint, _) => (varint_len(&bytes[at..]), &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        (LengthKind::I32, Huge::Max) => (4, &[0x7f, 0xff, 0xff, 0xff]),
        (LengthKind::I32, Huge::Negative) => (4, &[0xff, 0xff, 0xff, 0xfe]),
        (LengthKind::I16, Huge::Max) => (2, &[0x7f, 0xff]),
        (LengthKind::I16, Huge::Negative) => (2, &[0xff, 0xfe]),
    };
    let mut b = bytes[..at].to_vec();
    b.extend_from_slice(new);
    b.extend_from_slice(&bytes[at + old..]);
    b
}

fn varint_len(b: &[u8]) -> usize {
    b.iter()
        .take(5)
        .position(|&x| x < 0x80)
        .map_or(5, |p| p + 1)
}

/// Prints what `check` adds to decoding on the produce path (and for a
/// Metadata request naming many topics): ns per frame for the codec's
/// decode alone and for check + decode, best of several rounds. Asserts
/// only that both agree. `SLUICE_MEASURE_ITERATIONS` sets the rounds'
/// length (small by default, so `cargo test` stays quick); measure with
/// `SLUICE_MEASURE_ITERATIONS=20000 cargo test --release -p sluice --bin
/// sluice measure_check_cost -- --nocapture`.
#[test]
fn measure_check_cost() {
    use kafka_protocol::protocol::Decodable;
    let iterations: u32 = std::env::var("SLUICE_MEASURE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let batch = Bytes::from(vec![7u8; 16 << 10]);
    let one = ProduceRequest::default()
        .with_acks(-1)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name("bench"))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.clone()))])]);
    let parts: Vec<PartitionProduceData> = (0..1000)
        .map(|i| {
            PartitionProduceData::default()
                .with_index(i)
                .with_records(Some(batch.slice(..100)))
        })
        .collect();
    let many = ProduceRequest::default()
        .with_acks(-1)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name("bench"))
            .with_partition_data(parts)]);
    let topics: Vec<MetadataRequestTopic> = (0..1000)
        .map(|i| {
            MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(format!("topic-{i}")))))
        })
        .collect();
    let metadata = MetadataRequest::default().with_topics(Some(topics));
    let cases: [(&str, ApiKey, i16, Bytes); 5] = [
        (
            "produce v7, 1 partition, 16 KiB",
            ApiKey::Produce,
            7,
            frame(ApiKey::Produce, 7, &one),
        ),
        (
            "produce v9, 1 partition, 16 KiB",
            ApiKey::Produce,
            9,
            frame(ApiKey::Produce, 9, &one),
        ),
        (
            "produce v7, 1000 partitions",
            ApiKey::Produce,
            7,
            frame(ApiKey::Produce, 7, &many),
        ),
        (
            "produce v9, 1000 partitions",
            ApiKey::Produce,
            9,
            frame(ApiKey::Produce, 9, &many),
        ),
        (
            "metadata v12, 1000 topics",
            ApiKey::Metadata,
            12,
            frame(ApiKey::Metadata, 12, &metadata),
        ),
    ];
    for (what, key, version, bytes) in cases {
        let decode = |checked: bool| {
            let mut b = bytes.clone();
            if checked {
                check(key, version, &b).expect("passes");
            }
            RequestHeader::decode(&mut b, key.request_header_version(version)).expect("header");
            match key {
                ApiKey::Produce => ProduceRequest::decode(&mut b, version).map(|_| ()),
                _ => MetadataRequest::decode(&mut b, version).map(|_| ()),
            }
            .expect("decodes");
            assert!(b.is_empty());
        };
        let best = |checked: bool| {
            (0..5)
                .map(|_| {
                    let start = std::time::Instant::now();
                    for _ in 0..iterations {
                        decode(checked);
                    }
                    start.elapsed().as_nanos() as f64 / f64::from(iterations)
                })
                .fold(f64::MAX, f64::min)
        };
        let (plain, checked) = (best(false), best(true));
        eprintln!(
            "{what}: decode {plain:.0} ns, check + decode {checked:.0} ns ({:.3}x)",
            checked / plain
        );
    }
}

/// librdkafka 2.12's all-topics Metadata v12 request, as captured: three
/// bytes follow the body, which Kafka ignores; so does the check.
#[test]
fn librdkafka_metadata_v12_with_trailing_bytes_passes() {
    let mut frame = vec![0x00, 0x03, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x04, 0x00, 0x11];
    frame.extend_from_slice(b"corpus-librdkafka");
    frame.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]);
    let checked = check(ApiKey::Metadata, 12, &frame).unwrap();
    assert_eq!(checked.header_bytes, 28);
    assert_eq!(checked.body_bytes, 4);
}

/// A version is flexible (compact lengths, tagged fields) exactly when its
/// request header is v2, for every served API and version.
#[test]
fn flexible_versions_match_the_header_versions() {
    for (key, min, max) in samples::served() {
        let schema = schema::of(key).unwrap_or_else(|| panic!("{key:?}: no schema"));
        for version in min..=max {
            assert_eq!(
                version >= schema.flexible_min,
                key.request_header_version(version) >= 2,
                "{key:?} v{version}"
            );
        }
    }
}

/// ListTransactions' producer id filters are an array of i64: a count is
/// refused once its 8-byte elements pass the end, and counts 8 bytes each.
#[test]
fn list_transactions_i64_array_counts_eight_bytes_an_element() {
    let req = ListTransactionsRequest::default().with_producer_id_filters(vec![ProducerId(5); 3]);
    for version in [0, 1] {
        let bytes = frame(ApiKey::ListTransactions, version, &req).to_vec();
        let checked = check(ApiKey::ListTransactions, version, &bytes).unwrap();
        assert_eq!(checked.decoded_bytes, 3 * 8);
        // Header v2: 8 bytes + client id (2 + its length) + tags (1); then
        // the state filters (compact count 0: 1 byte): the i64 count, 3 + 1.
        let at = 8 + 2 + CLIENT_ID.len() + 1 + 1;
        assert_eq!(bytes[at], 4);
        // Five elements: 40 bytes, more than the 24 (+ the rest) there,
        // though fewer than the bytes left.
        let mut b = bytes.clone();
        b[at] = 6;
        let left = b.len() - at - 1;
        assert!(5 <= left && 5 * 8 > left, "{left}");
        let r = check(ApiKey::ListTransactions, version, &b).unwrap_err();
        assert!(
            matches!(r.what, Problem::TooLong { length: 5, .. }),
            "v{version}: {r}"
        );
    }
}
