//! Every served API at every advertised version, through the real frame
//! handling (header decode, dispatch, response encode) against a real
//! metadata service and data plane, decoded back with the client codecs.
//! Catches fields set outside the versions that carry them (the codec
//! refuses to encode those) and version-specific request shapes.

use std::rc::Rc;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use clap::{CommandFactory, FromArgMatches};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::config::{Cli, Settings, StartArgs};
use crate::connection::{serve_frame_for_tests, ConnLimits};
use crate::handlers::{topic_name, Ctx};
use crate::plane::{self, Shard};

/// Runs `f` on one shard (a real data plane and metadata service in a
/// temporary data dir, set up as `sluice start --shards 1` with `extra`
/// arguments) and returns its answer. Shared by the in-process tests of
/// the request path (here and `fuzz`).
pub(crate) fn on_one_shard<T, F, Fut>(extra: &[&str], f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(Rc<Ctx>, Settings) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let mut argv = vec!["sluice", "start", "--shards", "1", "--data-dir"];
    argv.push(dir.path().to_str().expect("utf-8 path"));
    argv.extend_from_slice(extra);
    let matches = Cli::command().try_get_matches_from(argv).expect("args");
    let (_, sub) = matches.subcommand().expect("start");
    let settings =
        Settings::resolve(StartArgs::from_arg_matches(sub).expect("start args")).expect("settings");
    let meta = sluice_raft::Metadata::start(sluice_raft::MetaConfig {
        data_dir: dir.path().to_path_buf(),
        node_id: 1,
        shards: 1,
        partitions_per_shard_max: settings.partitions_per_shard_max(),
        advertised_host: "127.0.0.1".into(),
        advertised_port: 9092,
        endpoints: Vec::new(),
        cluster: None,
    })
    .expect("metadata");
    let meta2 = meta.clone();
    let mesh = plane::new_mesh(1);
    // The shard's executor thread, as the broker runs one per shard.
    let answer = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(plane::io_memory_bytes(&settings) as usize)
        .spawn(move || async move {
            let shard = Shard::start(plane::shard_config(&settings, 0), mesh, meta2.clone())
                .await
                .expect("shard");
            let mut node = crate::server::node_info(&settings);
            node.cluster_id = "test".into();
            node.default_partitions = 2;
            node.advertised_host = "127.0.0.1".into();
            node.advertised_port = 9092;
            let ctx = Rc::new(Ctx::new(Rc::clone(&shard), meta2, Arc::new(node)));
            let answer = f(ctx, settings).await;
            shard.close().await;
            answer
        })
        .expect("executor")
        .join()
        .expect("executor thread");
    meta.shutdown();
    answer
}

/// The client id of `frame`'s requests.
pub(crate) const CLIENT_ID: &str = "wire-test";

/// A request (header and body, without the size prefix).
pub(crate) fn frame<T: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Bytes {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str(CLIENT_ID));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    buf.freeze()
}

/// Marker so `Client::call` only takes request bodies.
trait HeaderVersionOf {}
impl<T: kafka_protocol::protocol::Request> HeaderVersionOf for T {}

fn response<T: Decodable>(key: ApiKey, version: i16, correlation_id: i32, mut bytes: Bytes) -> T {
    let size = bytes.get_i32() as usize;
    assert_eq!(size, bytes.len());
    let header = ResponseHeader::decode(&mut bytes, key.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, correlation_id);
    let body =
        T::decode(&mut bytes, version).unwrap_or_else(|e| panic!("{key:?} v{version}: {e:#}"));
    assert!(
        !bytes.has_remaining(),
        "{key:?} v{version}: {} trailing bytes",
        bytes.remaining()
    );
    body
}

fn batch(n: usize) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: Default::default(),
        })
        .collect();
    encode_batch(&records)
}

/// `records` as one uncompressed record batch (magic 2).
pub(crate) fn encode_batch(records: &[Record]) -> Bytes {
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &options).expect("record batch");
    buf.freeze()
}

struct Client<'a> {
    ctx: &'a Ctx,
    next_id: i32,
}

impl Client<'_> {
    async fn call<Req, Resp>(&mut self, key: ApiKey, version: i16, req: &Req) -> Resp
    where
        Req: Encodable + HeaderVersionOf,
        Resp: Decodable,
    {
        self.next_id += 1;
        let limits = ConnLimits {
            request_max_bytes: 1 << 20,
            frame_read_timeout: std::time::Duration::from_secs(30),
            // One frame at a time: no read side to stop.
            stop: tokio::sync::watch::channel(false).1,
        };
        let reply =
            serve_frame_for_tests(frame(key, version, self.next_id, req), self.ctx, &limits).await;
        response(key, version, self.next_id, reply.expect("a response"))
    }
}

#[test]
fn every_api_at_every_version() {
    on_one_shard(&[], |ctx, _| async move {
        let mut client = Client {
            ctx: &ctx,
            next_id: 0,
        };
        run_all(&mut client).await;
    });
}

async fn run_all(c: &mut Client<'_>) {
    for v in 0..=3 {
        let r: ApiVersionsResponse = c
            .call(ApiKey::ApiVersions, v, &api_versions_request(v))
            .await;
        assert_eq!(r.error_code, 0);
        assert!(r
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::Fetch as i16 && k.max_version == 12));
    }
    for v in 0..=7 {
        let name = format!("created-v{v}");
        let r: CreateTopicsResponse = c
            .call(ApiKey::CreateTopics, v, &create_request(&name, 3))
            .await;
        assert_eq!(
            r.topics[0].error_code, 0,
            "CreateTopics v{v}: {:?}",
            r.topics[0].error_message
        );
        let again: CreateTopicsResponse = c
            .call(ApiKey::CreateTopics, v, &create_request(&name, 3))
            .await;
        assert_eq!(again.topics[0].error_code, 36, "CreateTopics v{v} twice");
    }
    let mut dry = create_request("dry-run", -1);
    dry.validate_only = true;
    let r: CreateTopicsResponse = c.call(ApiKey::CreateTopics, 7, &dry).await;
    assert_eq!(
        (r.topics[0].error_code, r.topics[0].num_partitions),
        (0, 2),
        "validate_only, default partitions"
    );
    assert!(
        c.ctx.topic("dry-run").is_none(),
        "validate_only creates nothing"
    );
    let r: CreateTopicsResponse = c
        .call(ApiKey::CreateTopics, 7, &create_request("defaulted", -1))
        .await;
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(
        c.ctx.topic("defaulted").map(|t| t.partitions.len()),
        Some(2),
        "-1 partitions = node default"
    );
    let bad: CreateTopicsResponse = c
        .call(ApiKey::CreateTopics, 7, &create_request("bad name", 1))
        .await;
    assert_eq!(bad.topics[0].error_code, 17);
    for v in 0..=12 {
        let r: MetadataResponse = c
            .call(ApiKey::Metadata, v, &metadata_request("auto-topic", v))
            .await;
        assert_eq!(r.brokers.len(), 1, "Metadata v{v}");
        assert_eq!(r.brokers[0].port, 9092);
        let t = &r.topics[0];
        assert_eq!(t.error_code, 0, "Metadata v{v}");
        assert_eq!(
            t.partitions.len(),
            2,
            "auto-created with the default partitions"
        );
    }
    for v in 0..=9 {
        let r: ProduceResponse = c
            .call(ApiKey::Produce, v, &produce_request("auto-topic", 3))
            .await;
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0, "Produce v{v}");
        assert_eq!(p.base_offset, 3 * i64::from(v), "Produce v{v}");
    }
    for v in 0..=12 {
        let r: FetchResponse = c
            .call(ApiKey::Fetch, v, &fetch_request("auto-topic", v))
            .await;
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "Fetch v{v}");
        assert_eq!(p.high_watermark, 30, "Fetch v{v}");
        assert!(
            p.records.as_ref().is_some_and(|r| !r.is_empty()),
            "Fetch v{v}"
        );
    }
    for v in 0..=7 {
        let r: ListOffsetsResponse = c
            .call(
                ApiKey::ListOffsets,
                v,
                &list_offsets_request("auto-topic", v),
            )
            .await;
        let p = &r.topics[0].partitions[0];
        assert_eq!(p.error_code, 0, "ListOffsets v{v}");
        let latest = if v == 0 {
            p.old_style_offsets[0]
        } else {
            p.offset
        };
        assert_eq!(latest, 30, "ListOffsets v{v}");
    }
    for v in 0..=4 {
        let r: OffsetForLeaderEpochResponse = c
            .call(
                ApiKey::OffsetForLeaderEpoch,
                v,
                &epoch_request("auto-topic", -1),
            )
            .await;
        let p = &r.topics[0].partitions[0];
        assert_eq!(p.error_code, 0, "OffsetForLeaderEpoch v{v}");
        assert_eq!(p.end_offset, 30, "OffsetForLeaderEpoch v{v}: the log end");
        let epoch = if v >= 1 { 0 } else { -1 };
        assert_eq!(p.leader_epoch, epoch, "OffsetForLeaderEpoch v{v}");
    }
    let r: OffsetForLeaderEpochResponse = c
        .call(
            ApiKey::OffsetForLeaderEpoch,
            4,
            &epoch_request("auto-topic", 1),
        )
        .await;
    assert_eq!(
        r.topics[0].partitions[0].error_code, 75,
        "a newer current epoch: UNKNOWN_LEADER_EPOCH"
    );
    for v in 0..=6 {
        let r: DeleteTopicsResponse = c
            .call(
                ApiKey::DeleteTopics,
                v,
                &delete_request(&format!("created-v{v}"), v),
            )
            .await;
        assert_eq!(r.responses[0].error_code, 0, "DeleteTopics v{v}");
    }
}

fn api_versions_request(v: i16) -> ApiVersionsRequest {
    let mut r = ApiVersionsRequest::default();
    if v >= 3 {
        r.client_software_name = StrBytes::from_static_str("wire-test");
        r.client_software_version = StrBytes::from_static_str("1");
    }
    r
}

fn create_request(name: &str, partitions: i32) -> CreateTopicsRequest {
    let mut t = CreatableTopic::default();
    t.name = topic_name(name);
    t.num_partitions = partitions;
    t.replication_factor = 1;
    let mut r = CreateTopicsRequest::default();
    r.topics = vec![t];
    r.timeout_ms = 5000;
    r
}

fn metadata_request(name: &str, v: i16) -> MetadataRequest {
    let mut t = MetadataRequestTopic::default();
    t.name = Some(topic_name(name));
    let mut r = MetadataRequest::default();
    r.topics = Some(vec![t]);
    r.allow_auto_topic_creation = v >= 4 || r.allow_auto_topic_creation;
    r
}

fn produce_request(name: &str, n: usize) -> ProduceRequest {
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(batch(n));
    let mut t = TopicProduceData::default();
    t.name = topic_name(name);
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = 1;
    r.timeout_ms = 5000;
    r.topic_data = vec![t];
    r
}

fn fetch_request(name: &str, v: i16) -> FetchRequest {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = 0;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = topic_name(name);
    t.partitions = vec![p];
    let mut r = FetchRequest::default();
    r.replica_id = BrokerId(-1);
    r.max_wait_ms = 10;
    r.min_bytes = 1;
    if v >= 3 {
        r.max_bytes = 1 << 20;
    }
    r.topics = vec![t];
    r
}

fn list_offsets_request(name: &str, _v: i16) -> ListOffsetsRequest {
    let mut p = ListOffsetsPartition::default();
    p.partition_index = 0;
    p.timestamp = -1;
    let mut t = ListOffsetsTopic::default();
    t.name = topic_name(name);
    t.partitions = vec![p];
    let mut r = ListOffsetsRequest::default();
    r.replica_id = BrokerId(-1);
    r.topics = vec![t];
    r
}

fn epoch_request(name: &str, current_leader_epoch: i32) -> OffsetForLeaderEpochRequest {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    let mut p = OffsetForLeaderPartition::default();
    p.partition = 0;
    p.current_leader_epoch = current_leader_epoch;
    p.leader_epoch = 0;
    let mut t = OffsetForLeaderTopic::default();
    t.topic = topic_name(name);
    t.partitions = vec![p];
    let mut r = OffsetForLeaderEpochRequest::default();
    r.topics = vec![t];
    r
}

fn delete_request(name: &str, v: i16) -> DeleteTopicsRequest {
    let mut r = DeleteTopicsRequest::default();
    if v >= 6 {
        let mut t = DeleteTopicState::default();
        t.name = Some(topic_name(name));
        r.topics = vec![t];
    } else {
        r.topic_names = vec![topic_name(name)];
    }
    r.timeout_ms = 5000;
    r
}
