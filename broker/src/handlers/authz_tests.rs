//! Authorization of the Kafka API handlers (`--authorizer`): requests run
//! through the handlers with authenticated sessions against a real data
//! plane and metadata service, whose ACLs are created through the
//! metadata (`Metadata::create_acls`), as CreateAcls creates them.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTransaction;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::records::{Record, TimestampType};
use sluice_raft::{AclBinding, AclPatternType, AclPermission};

use crate::config::Settings;
use crate::handlers::{add_partitions_to_txn, create_topics, describe_configs, fetch};
use crate::handlers::{find_coordinator, init_producer_id, metadata, offset_commit, produce};
use crate::handlers::{str_bytes, topic_name, Ctx};
use crate::security::{
    AclOperation, AclResourceType, Authorizer, Security, SecurityProtocol, Session, CLUSTER,
};
use crate::wire_tests::{encode_batch, on_one_shard};

const ADMIN: &str = "User:admin";
const TOPIC_FAILED: i16 = 29;
const GROUP_FAILED: i16 = 30;
const CLUSTER_FAILED: i16 = 31;
const TXN_ID_FAILED: i16 = 53;

/// `ctx` with `--authorizer` on: `User:admin` a super user, a resource no
/// ACL names denied.
fn authorizing(ctx: &Ctx, settings: &Settings) -> Ctx {
    let mut node = crate::server::node_info(settings);
    node.cluster_id = "test".into();
    node.default_partitions = 1;
    node.advertised_host = "127.0.0.1".into();
    node.advertised_port = 9092;
    node.security = Arc::new(Security {
        authorizer: Some(Authorizer {
            super_users: vec![ADMIN.into()],
            allow_if_no_acl: false,
        }),
        ..Security::default()
    });
    Ctx::new(Rc::clone(&ctx.shard), ctx.meta.clone(), Arc::new(node))
}

fn session(principal: &str) -> Session {
    let s = Session::new(0, SecurityProtocol::SaslPlaintext, "127.0.0.1".into(), None);
    s.authenticate(principal, None);
    s
}

fn acl(
    kind: AclResourceType,
    name: &str,
    principal: &str,
    op: AclOperation,
    permission: AclPermission,
) -> AclBinding {
    AclBinding {
        resource_type: kind,
        resource_name: name.into(),
        pattern_type: AclPatternType::Literal,
        principal: principal.into(),
        host: "*".into(),
        operation: op,
        permission,
    }
}

fn allow(kind: AclResourceType, name: &str, principal: &str, op: AclOperation) -> AclBinding {
    acl(kind, name, principal, op, AclPermission::Allow)
}

async fn create_acls(ctx: &Ctx, bindings: Vec<AclBinding>) {
    let results = ctx.meta.create_acls(bindings).await.expect("create acls");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// Creates `names` (one partition each) as the super user.
async fn create(ctx: &Ctx, names: &[&str]) {
    let mut req = CreateTopicsRequest::default();
    req.timeout_ms = 10_000;
    req.topics = names
        .iter()
        .map(|name| {
            let mut t = CreatableTopic::default();
            t.name = topic_name(name);
            t.num_partitions = 1;
            t.replication_factor = 1;
            t
        })
        .collect();
    let resp = create_topics::handle(req, 7, ctx, &session(ADMIN)).await;
    for t in &resp.topics {
        assert_eq!(t.error_code, 0, "{:?}", t);
    }
}

fn record(transactional: bool) -> Record {
    Record {
        transactional,
        control: false,
        partition_leader_epoch: 0,
        producer_id: if transactional { 7 } else { -1 },
        producer_epoch: if transactional { 0 } else { -1 },
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: if transactional { 0 } else { -1 },
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(Bytes::from_static(b"v")),
        headers: Default::default(),
    }
}

fn produce_request(topics: &[&str], transactional_id: Option<&str>) -> ProduceRequest {
    let mut r = ProduceRequest::default();
    r.acks = 1;
    r.timeout_ms = 5000;
    r.transactional_id = transactional_id.map(|id| TransactionalId(str_bytes(id)));
    r.topic_data = topics
        .iter()
        .map(|name| {
            let mut p = PartitionProduceData::default();
            p.index = 0;
            p.records = Some(encode_batch(&[record(transactional_id.is_some())]));
            let mut t = TopicProduceData::default();
            t.name = topic_name(name);
            t.partition_data = vec![p];
            t
        })
        .collect();
    r
}

/// Each topic's first partition's code, by topic name.
async fn produce_codes(ctx: &Ctx, s: &Session, req: ProduceRequest) -> Vec<(String, i16)> {
    let resp = produce::handle(req, 9, ctx, s).await.expect("acks=1");
    resp.responses
        .iter()
        .map(|t| (t.name.0.to_string(), t.partition_responses[0].error_code))
        .collect()
}

fn named_metadata(names: &[&str]) -> MetadataRequest {
    let mut r = MetadataRequest::default();
    r.topics = Some(
        names
            .iter()
            .map(|n| {
                let mut t = MetadataRequestTopic::default();
                t.name = Some(topic_name(n));
                t
            })
            .collect(),
    );
    r
}

fn all_topics() -> MetadataRequest {
    let mut r = MetadataRequest::default();
    r.topics = None;
    r
}

fn metadata_names(resp: &MetadataResponse) -> Vec<(String, i16)> {
    let mut names: Vec<(String, i16)> = resp
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| (n.to_string(), t.error_code)))
        .filter(|(n, _)| !n.starts_with("__"))
        .collect();
    names.sort();
    names
}

#[test]
fn produce_needs_write_on_each_topic() {
    on_one_shard(&[], |ctx, settings| async move {
        let ctx = authorizing(&ctx, &settings);
        create(&ctx, &["t1", "t2"]).await;
        let topic = AclResourceType::Topic;
        create_acls(
            &ctx,
            vec![allow(topic, "t1", "User:alice", AclOperation::Write)],
        )
        .await;
        let alice = session("User:alice");
        let codes = produce_codes(&ctx, &alice, produce_request(&["t1", "t2"], None)).await;
        assert_eq!(codes, vec![("t1".into(), 0), ("t2".into(), TOPIC_FAILED)]);
        // The refused partition was not written.
        let admin = session(ADMIN);
        let fetched = fetch_codes(&ctx, &admin, "t2").await;
        assert_eq!(fetched, (0, 0), "t2: no error, high watermark 0");
        // A super user writes anywhere.
        let codes = produce_codes(&ctx, &admin, produce_request(&["t1", "t2"], None)).await;
        assert_eq!(codes, vec![("t1".into(), 0), ("t2".into(), 0)]);
        // Without an ACL, nothing (allow.everyone.if.no.acl.found off).
        let bob = session("User:bob");
        let codes = produce_codes(&ctx, &bob, produce_request(&["t1"], None)).await;
        assert_eq!(codes, vec![("t1".into(), TOPIC_FAILED)]);
    });
}

#[test]
fn deny_beats_allow() {
    on_one_shard(&[], |ctx, settings| async move {
        let ctx = authorizing(&ctx, &settings);
        create(&ctx, &["t1"]).await;
        let topic = AclResourceType::Topic;
        create_acls(
            &ctx,
            vec![
                allow(topic, "t1", "User:alice", AclOperation::All),
                acl(
                    topic,
                    "*",
                    "User:*",
                    AclOperation::Write,
                    AclPermission::Deny,
                ),
            ],
        )
        .await;
        let alice = session("User:alice");
        let codes = produce_codes(&ctx, &alice, produce_request(&["t1"], None)).await;
        assert_eq!(codes, vec![("t1".into(), TOPIC_FAILED)]);
        // READ is not denied: the fetch goes through.
        assert_eq!(fetch_codes(&ctx, &alice, "t1").await.0, 0);
        // Super users pass whatever the ACLs say.
        let admin = session(ADMIN);
        let codes = produce_codes(&ctx, &admin, produce_request(&["t1"], None)).await;
        assert_eq!(codes, vec![("t1".into(), 0)]);
    });
}

#[test]
fn transactional_produce_needs_write_on_the_transactional_id() {
    on_one_shard(&[], |ctx, settings| async move {
        let ctx = authorizing(&ctx, &settings);
        create(&ctx, &["t1", "t2"]).await;
        let topic = AclResourceType::Topic;
        create_acls(
            &ctx,
            vec![allow(topic, "t1", "User:alice", AclOperation::Write)],
        )
        .await;
        let alice = session("User:alice");
        let req = produce_request(&["t1", "t2"], Some("tx"));
        let resp = produce::handle(req, 9, &ctx, &alice).await.expect("acks=1");
        for t in &resp.responses {
            let p = &t.partition_responses[0];
            assert_eq!(p.error_code, TXN_ID_FAILED, "{}", t.name.0.as_str());
            assert_eq!(
                p.error_message.as_deref(),
                Some("Transactional Id authorization failed.")
            );
        }
    });
}

/// (error code, high watermark) of partition 0 of `name`.
async fn fetch_codes(ctx: &Ctx, s: &Session, name: &str) -> (i16, i64) {
    let resp = fetch::handle(fetch_request(name, -1), 12, ctx, s).await.0;
    let p = &resp.responses[0].partitions[0];
    (p.error_code, p.high_watermark)
}

fn fetch_request(name: &str, replica_id: i32) -> FetchRequest {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = topic_name(name);
    t.partitions = vec![p];
    let mut r = FetchRequest::default();
    r.replica_id = BrokerId(replica_id);
    r.max_wait_ms = 10;
    r.max_bytes = 1 << 20;
    r.topics = vec![t];
    r
}

#[test]
fn fetch_needs_read_and_a_replica_cluster_action() {
    on_one_shard(&[], |ctx, settings| async move {
        let ctx = authorizing(&ctx, &settings);
        create(&ctx, &["t1"]).await;
        let alice = session("User:alice");
        assert_eq!(fetch_codes(&ctx, &alice, "t1").await.0, TOPIC_FAILED);
        let topic = AclResourceType::Topic;
        create_acls(
            &ctx,
            vec![allow(topic, "t1", "User:alice", AclOperation::Read)],
        )
        .await;
        assert_eq!(fetch_codes(&ctx, &alice, "t1").await.0, 0);
        // As a follower (replica id 1): READ is not enough.
        let resp = fetch::handle(fetch_request("t1", 1), 12, &ctx, &alice)
            .await
            .0;
        assert_eq!(resp.error_code, 0);
        assert_eq!(resp.responses[0].partitions[0].error_code, TOPIC_FAILED);
    });
}

#[test]
fn metadata_hides_topics_it_may_not_describe() {
    on_one_shard(&[], |ctx, settings| async move {
        let ctx = authorizing(&ctx, &settings);
        create(&ctx, &["t1", "t2"]).await;
        let topic = AclResourceType::Topic;
        // WRITE implies DESCRIBE.
        create_acls(
            &ctx,
            vec![allow(topic, "t1", "User:alice", AclOperation::Write)],
        )
        .await;
        let alice = session("User:alice");
        let all = metadata::handle(all_topics(), 12, &ctx, &alice).await;
        assert_eq!(metadata_names(&all), vec![("t1".into(), 0)]);
        let named = metadata::handle(named_metadata(&["t1", "t2"]), 12, &ctx, &alice).await;
        assert_eq!(
            metadata_names(&named),
            vec![("t1".into(), 0), ("t2".into(), TOPIC_FAILED)]
        );
        // A describable topic that does not exist needs CREATE to be
        // auto-created.
        create_acls(
            &ctx,
            vec![allow(topic, "new", "User:alice", AclOperation::Describe)],
        )
        .await;
        let mut req = named_metadata(&["new"]);
        req.allow_auto_topic_creation = true;
        let resp = metadata::handle(req, 12, &ctx, &alice).await;
        assert_eq!(metadata_names(&resp), vec![("new".into(), TOPIC_FAILED)]);
        assert!(ctx.topic("new").is_none());
        // The super user sees every topic; its operations are all of them.
        let mut req = all_topics();
        req.include_topic_authorized_operations = true;
        let all = metadata::handle(req, 12, &ctx, &session(ADMIN)).await;
        assert_eq!(
            metadata_names(&all),
            vec![("t1".into(), 0), ("t2".into(), 0)]
        );
        let every_topic_op = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8);
        let every_topic_op = every_topic_op | (1 << 10) | (1 << 11);
        assert!(all
            .topics
            .iter()
            .all(|t| t.topic_authorized_operations == every_topic_op));
        // Alice's: WRITE and the DESCRIBE it implies.
        let mut req = named_metadata(&["t1"]);
        req.include_topic_authorized_operations = true;
        let resp = metadata::handle(req, 12, &ctx, &alice).await;
        assert_eq!(
            resp.topics[0].topic_authorized_operations,
            (1 << 4) | (1 << 8)
        );
    });
}

fn commit_request(group: &str, topic: &str) -> OffsetCommitRequest {
    let mut p = OffsetCommitRequestPartition::default();
    p.partition_index = 0;
    p.committed_offset = 1;
    let mut t = OffsetCommitRequestTopic::default();
    t.name = topic_name(topic);
    t.partitions = vec![p];
    let mut r = OffsetCommitRequest::default();
    r.group_id = GroupId(str_bytes(group));
    r.generation_id_or_member_epoch = -1;
    r.topics = vec![t];
    r
}

#[test]
fn offset_commit_needs_read_on_the_group_then_the_topic() {
    on_one_shard(&[], |ctx, settings| async move {
        let ctx = authorizing(&ctx, &settings);
        create(&ctx, &["t1"]).await;
        let alice = session("User:alice");
        let topic = AclResourceType::Topic;
        create_acls(
            &ctx,
            vec![allow(topic, "t1", "User:alice", AclOperation::Read)],
        )
        .await;
        let resp = offset_commit::handle(commit_request("g", "t1"), 8, &ctx, &alice).await;
        assert_eq!(resp.topics[0].partitions[0].error_code, GROUP_FAILED);
        let group = AclResourceType::Group;
        create_acls(
            &ctx,
            vec![allow(group, "g", "User:alice", AclOperation::Read)],
        )
        .await;
        let resp = offset_commit::handle(commit_request("g", "t2"), 8, &ctx, &alice).await;
        assert_eq!(resp.topics[0].partitions[0].error_code, TOPIC_FAILED);
        let resp = offset_commit::handle(commit_request("g", "t1"), 8, &ctx, &alice).await;
        let code = resp.topics[0].partitions[0].error_code;
        assert!(
            code != GROUP_FAILED && code != TOPIC_FAILED,
            "authorized: {code}"
        );
    });
}

#[test]
fn find_coordinator_needs_describe_per_key() {
    on_one_shard(&[], |ctx, settings| async move {
        let ctx = authorizing(&ctx, &settings);
        let group = AclResourceType::Group;
        create_acls(
            &ctx,
            vec![allow(group, "g1", "User:alice", AclOperation::Read)],
        )
        .await;
        let alice = session("User:alice");
        let mut req = FindCoordinatorRequest::default();
        req.key_type = 0;
        req.coordinator_keys = vec![str_bytes("g1"), str_bytes("g2")];
        let resp = find_coordinator::handle(req, 4, &ctx, &alice).await;
        let codes: Vec<i16> = resp.coordinators.iter().map(|c| c.error_code).collect();
        assert_ne!(codes[0], GROUP_FAILED);
        assert_eq!(codes[1], GROUP_FAILED);
        assert_eq!(resp.coordinators[1].node_id, BrokerId(-1));
        let mut req = FindCoordinatorRequest::default();
        req.key_type = 1;
        req.key = str_bytes("tx");
        let resp = find_coordinator::handle(req, 3, &ctx, &alice).await;
        assert_eq!(resp.error_code, TXN_ID_FAILED);
        assert_eq!(
            resp.error_message.as_deref(),
            Some("Transactional Id authorization failed.")
        );
    });
}

fn init_producer_id_request() -> InitProducerIdRequest {
    let mut r = InitProducerIdRequest::default();
    r.transactional_id = None;
    r.transaction_timeout_ms = 60_000;
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    r
}

#[test]
fn idempotent_producers_need_idempotent_write_or_write_on_some_topic() {
    on_one_shard(&[], |ctx, settings| async move {
        let ctx = authorizing(&ctx, &settings);
        let topic = AclResourceType::Topic;
        let deny = |name: &str, pattern| {
            let mut b = acl(
                topic,
                name,
                "User:carol",
                AclOperation::Write,
                AclPermission::Deny,
            );
            b.pattern_type = pattern;
            b
        };
        create_acls(
            &ctx,
            vec![
                allow(topic, "orders", "User:alice", AclOperation::Write),
                // Carol's only WRITE is covered by a prefixed DENY.
                allow(topic, "logs.app", "User:carol", AclOperation::Write),
                deny("logs.", AclPatternType::Prefixed),
                allow(topic, "orders", "User:dave", AclOperation::Read),
                allow(
                    AclResourceType::Cluster,
                    CLUSTER,
                    "User:erin",
                    AclOperation::IdempotentWrite,
                ),
            ],
        )
        .await;
        for (who, code) in [
            ("User:alice", 0),
            ("User:carol", CLUSTER_FAILED),
            ("User:dave", CLUSTER_FAILED),
            ("User:erin", 0),
            (ADMIN, 0),
        ] {
            let resp =
                init_producer_id::handle(init_producer_id_request(), 4, &ctx, &session(who)).await;
            assert_eq!(resp.error_code, code, "{who}");
        }
        let mut req = init_producer_id_request();
        req.transactional_id = Some(TransactionalId(str_bytes("tx")));
        let resp = init_producer_id::handle(req, 4, &ctx, &session("User:alice")).await;
        assert_eq!(resp.error_code, TXN_ID_FAILED);
    });
}

#[test]
fn admin_requests_need_their_cluster_and_topic_operations() {
    on_one_shard(&[], |ctx, settings| async move {
        let ctx = authorizing(&ctx, &settings);
        let alice = session("User:alice");
        // CreateTopics: CREATE on the cluster or the topic.
        let topic = AclResourceType::Topic;
        create_acls(
            &ctx,
            vec![allow(topic, "mine", "User:alice", AclOperation::Create)],
        )
        .await;
        let mut req = CreateTopicsRequest::default();
        req.timeout_ms = 10_000;
        req.topics = ["mine", "theirs"]
            .iter()
            .map(|name| {
                let mut t = CreatableTopic::default();
                t.name = topic_name(name);
                t.num_partitions = 1;
                t.replication_factor = 1;
                t
            })
            .collect();
        let resp = create_topics::handle(req, 7, &ctx, &alice).await;
        assert_eq!(resp.topics[0].error_code, 0);
        // Created, but its configs are not hers to describe.
        assert_eq!(resp.topics[0].topic_config_error_code, TOPIC_FAILED);
        assert_eq!(resp.topics[1].error_code, TOPIC_FAILED);
        assert_eq!(
            resp.topics[1].error_message.as_deref(),
            Some("Authorization failed.")
        );
        assert!(ctx.topic("theirs").is_none());
        // DescribeConfigs of a broker: DESCRIBE_CONFIGS on the cluster.
        let mut r = DescribeConfigsResource::default();
        r.resource_type = 4;
        r.resource_name = str_bytes("");
        let mut req = DescribeConfigsRequest::default();
        req.resources = vec![r];
        let resp = describe_configs::handle(req, 4, &ctx, &alice);
        assert_eq!(resp.results[0].error_code, CLUSTER_FAILED);
        assert!(resp.results[0].configs.is_empty());
        // AddPartitionsToTxn v4 comes from brokers: CLUSTER_ACTION.
        let mut t = AddPartitionsToTxnTransaction::default();
        t.transactional_id = TransactionalId(str_bytes("tx"));
        let mut req = AddPartitionsToTxnRequest::default();
        req.transactions = vec![t];
        let resp = add_partitions_to_txn::handle(req, 4, &ctx, &alice).await;
        assert_eq!(resp.error_code, CLUSTER_FAILED);
        assert!(resp.results_by_transaction.is_empty());
    });
}
