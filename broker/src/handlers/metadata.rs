//! Metadata (key 3): the unfenced brokers, the controller, topics and their
//! partitions (leader and its epoch, replicas, in-sync replicas, replicas
//! on fenced brokers as offline; a leaderless partition answers leader -1
//! with LEADER_NOT_AVAILABLE). Unknown topics are created when the node
//! allows it and the request does (`allow_auto_topic_creation`, implied
//! below v4), with the node's default replication factor.
//!
//! Authorization (`--authorizer`), as Kafka's KafkaApis: topics `session`
//! may not DESCRIBE are left out of an all-topics answer and answered
//! TOPIC_AUTHORIZATION_FAILED when named (by id: without their name);
//! auto-creation needs CREATE on the cluster or on the topic (else
//! TOPIC_AUTHORIZATION_FAILED). Authorized operations (v8+, when asked)
//! are Kafka's bit fields: the topic's for every topic answered without an
//! authorization error, the cluster's (v8-10) when it may DESCRIBE it
//! (else 0).

use std::sync::Arc;

use futures::future::join_all;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::ResponseError;
use sluice_raft::{MetaError, MetadataView, PartitionMeta, TopicMeta, TopicSpec, NO_LEADER};

use super::{str_bytes, topic_name, topic_uuid, valid_topic_name, wire_id, with_deadline, Ctx};
use crate::errors::{codes, meta_error_code, shard_error_code};
use crate::security::{AclOperation, AclResourceType, Session, CLUSTER};

/// How long an auto-creation waits for the shards to open the partitions.
const AUTO_CREATE_READY_MS_MAX: u64 = 10_000;

/// First version with authorized operations.
const AUTHORIZED_OPERATIONS_MIN_VERSION: i16 = 8;
/// Last version with the cluster's authorized operations.
const CLUSTER_OPERATIONS_MAX_VERSION: i16 = 10;

pub async fn handle(
    req: MetadataRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> MetadataResponse {
    let allow_auto = ctx.node.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    let mut topics: Vec<MetadataResponseTopic> = match requested(req.topics, version) {
        None => {
            let view = ctx.view();
            let security = &ctx.node.security;
            view.topics
                .values()
                .filter(|t| {
                    let (op, kind) = (AclOperation::Describe, AclResourceType::Topic);
                    security.authorize(&view, session, op, kind, &t.name)
                })
                .map(|t| describe(t, &view))
                .collect()
        }
        Some(list) => {
            let work = list
                .into_iter()
                .map(|t| lookup(t, allow_auto, ctx, session));
            join_all(work).await
        }
    };
    let mut resp = MetadataResponse::default();
    if version >= AUTHORIZED_OPERATIONS_MIN_VERSION {
        if req.include_topic_authorized_operations {
            topic_operations(&mut topics, ctx, session);
        }
        if req.include_cluster_authorized_operations && version <= CLUSTER_OPERATIONS_MAX_VERSION {
            resp.cluster_authorized_operations = cluster_operations(ctx, session);
        }
    }
    resp.brokers = brokers(ctx, session);
    resp.cluster_id = Some(str_bytes(ctx.node.cluster_id.clone()));
    resp.controller_id = BrokerId(ctx.controller_id());
    resp.topics = topics;
    resp
}

/// The operations `session` may do on the cluster as Kafka's bit field
/// (bit = operation code), 0 when it may not DESCRIBE the cluster.
/// Shared with DescribeCluster.
pub(crate) fn cluster_operations(ctx: &Ctx, session: &Session) -> i32 {
    let view = ctx.view();
    let (op, kind) = (AclOperation::Describe, AclResourceType::Cluster);
    if !ctx
        .node
        .security
        .authorize(&view, session, op, kind, CLUSTER)
    {
        return 0;
    }
    authorized_operations(ctx, &view, session, kind, CLUSTER)
}

/// Sets the authorized operations of every topic answered without an
/// authorization error, as Kafka does.
fn topic_operations(topics: &mut [MetadataResponseTopic], ctx: &Ctx, session: &Session) {
    let view = ctx.view();
    let denied = ResponseError::TopicAuthorizationFailed.code();
    for t in topics.iter_mut().filter(|t| t.error_code != denied) {
        if let Some(name) = &t.name {
            let kind = AclResourceType::Topic;
            t.topic_authorized_operations =
                authorized_operations(ctx, &view, session, kind, name.0.as_str());
        }
    }
}

/// Kafka's message of an authorization error (`Errors.message()`), which
/// its error responses carry; `kafka_protocol` only names the variant.
/// Shared by the handlers that answer one.
pub(crate) fn denied_message(error: ResponseError) -> String {
    let message = match error {
        ResponseError::TopicAuthorizationFailed => "Topic authorization failed.",
        ResponseError::GroupAuthorizationFailed => "Group authorization failed.",
        ResponseError::ClusterAuthorizationFailed => "Cluster authorization failed.",
        ResponseError::TransactionalIdAuthorizationFailed => {
            "Transactional Id authorization failed."
        }
        other => return format!("{other:?}"),
    };
    message.to_string()
}

/// Kafka's `AuthHelper::authorizedOperations`: the bit field (bit =
/// operation code) of the operations Kafka supports on the resource type
/// that `session` may do on resource `name`; every supported one without
/// `--authorizer`. Shared by Metadata, DescribeCluster, DescribeGroups.
pub(crate) fn authorized_operations(
    ctx: &Ctx,
    view: &MetadataView,
    session: &Session,
    kind: AclResourceType,
    name: &str,
) -> i32 {
    use AclOperation::*;
    let supported: &[AclOperation] = match kind {
        AclResourceType::Topic => &[
            Read,
            Write,
            Create,
            Describe,
            Delete,
            Alter,
            DescribeConfigs,
            AlterConfigs,
        ],
        AclResourceType::Group => &[Read, Describe, Delete, DescribeConfigs, AlterConfigs],
        AclResourceType::Cluster => &[
            Create,
            ClusterAction,
            DescribeConfigs,
            AlterConfigs,
            IdempotentWrite,
            Alter,
            Describe,
        ],
        AclResourceType::TransactionalId => &[Describe, Write],
    };
    let security = &ctx.node.security;
    let field = supported
        .iter()
        .filter(|&&op| security.authorize(view, session, op, kind, name))
        .fold(0i32, |field, op| field | 1i32 << op.code());
    assert!(field >= 0, "operation codes are below 31");
    field
}

/// `None`: all topics. v0 has no null array; its empty list means all.
fn requested(
    topics: Option<Vec<MetadataRequestTopic>>,
    version: i16,
) -> Option<Vec<MetadataRequestTopic>> {
    match topics {
        Some(list) if list.is_empty() && version == 0 => None,
        other => other,
    }
}

/// Every unfenced broker (taken after the topics: a topic's leader was
/// registered before it led anything).
fn brokers(ctx: &Ctx, session: &Session) -> Vec<MetadataResponseBroker> {
    ctx.live_brokers(&ctx.view(), session)
        .into_iter()
        .map(|a| {
            let mut b = MetadataResponseBroker::default();
            b.node_id = BrokerId(a.id);
            b.host = str_bytes(a.host);
            b.port = a.port;
            b
        })
        .collect()
}

async fn lookup(
    req: MetadataRequestTopic,
    allow_auto: bool,
    ctx: &Ctx,
    session: &Session,
) -> MetadataResponseTopic {
    let Some(name) = req.name else {
        return lookup_by_id(req.topic_id, ctx, session);
    };
    let name = name.0.as_str();
    let denied = ResponseError::TopicAuthorizationFailed.code();
    // Existence is not disclosed to a principal that may not describe.
    if !ctx.allowed(
        session,
        AclOperation::Describe,
        AclResourceType::Topic,
        name,
    ) {
        return error_topic(name, denied);
    }
    let view = ctx.view();
    if let Some(topic) = view.topics.get(name) {
        return describe(topic, &view);
    }
    if allow_auto && !may_create(ctx, session, name) {
        let mut t = error_topic(name, denied);
        t.is_internal = crate::handlers::produce::is_internal_topic(name);
        return t;
    }
    if !valid_topic_name(name) {
        return error_topic(name, codes::invalid_topic());
    }
    if !allow_auto {
        return error_topic(name, codes::unknown_topic_or_partition());
    }
    auto_create(name, ctx).await
}

/// CREATE on the cluster or on the topic.
fn may_create(ctx: &Ctx, session: &Session, name: &str) -> bool {
    ctx.allowed_on_cluster(session, AclOperation::Create)
        || ctx.allowed(session, AclOperation::Create, AclResourceType::Topic, name)
}

fn lookup_by_id(id: uuid::Uuid, ctx: &Ctx, session: &Session) -> MetadataResponseTopic {
    let view = ctx.view();
    let (op, kind) = (AclOperation::Describe, AclResourceType::Topic);
    match view.topic_by_id(id.as_bytes()) {
        // Ids are not secret (Kafka): the id is answered, not the name.
        Some(topic)
            if !ctx
                .node
                .security
                .authorize(&view, session, op, kind, &topic.name) =>
        {
            let mut t = MetadataResponseTopic::default();
            t.error_code = ResponseError::TopicAuthorizationFailed.code();
            t.topic_id = id;
            t
        }
        Some(topic) => describe(topic, &view),
        None => {
            let mut t = MetadataResponseTopic::default();
            t.error_code = codes::unknown_topic_id();
            t.topic_id = id;
            t
        }
    }
}

async fn auto_create(name: &str, ctx: &Ctx) -> MetadataResponseTopic {
    let spec = TopicSpec {
        name: name.to_string(),
        partitions: ctx.node.default_partitions,
        configs: Default::default(),
        replication_factor: ctx.node.default_replication_factor,
        assignment: Vec::new(),
    };
    let topic = match ctx.meta.create_topic(spec).await {
        Ok(topic) => topic,
        Err(MetaError::TopicExists(_)) => match ctx.topic(name) {
            Some(topic) => topic,
            None => return error_topic(name, codes::unknown_topic_or_partition()),
        },
        Err(e) => return error_topic(name, meta_error_code(&e)),
    };
    tracing::info!(
        topic = name,
        partitions = topic.partitions.len(),
        "topic auto-created"
    );
    match with_deadline(
        AUTO_CREATE_READY_MS_MAX,
        ctx.shard.await_topic_ready(&topic),
    )
    .await
    {
        Some(Ok(())) => describe(&topic, &ctx.view()),
        Some(Err(e)) => error_topic(name, shard_error_code(&e)),
        // Kafka's answer for a topic whose partitions are still being set up.
        None => error_topic(
            name,
            kafka_protocol::ResponseError::LeaderNotAvailable.code(),
        ),
    }
}

fn describe(topic: &Arc<TopicMeta>, view: &MetadataView) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = Some(topic_name(&topic.name));
    t.topic_id = topic_uuid(topic);
    t.is_internal = crate::handlers::produce::is_internal_topic(&topic.name);
    t.partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| describe_partition(index, p, view))
        .collect();
    t
}

fn describe_partition(
    index: usize,
    p: &PartitionMeta,
    view: &MetadataView,
) -> MetadataResponsePartition {
    let ids = |nodes: &[u64]| nodes.iter().map(|&n| BrokerId(wire_id(n))).collect();
    let mut mp = MetadataResponsePartition::default();
    mp.partition_index = i32::try_from(index).unwrap_or(i32::MAX);
    mp.leader_id = BrokerId(wire_id(p.leader));
    mp.leader_epoch = p.leader_epoch;
    mp.replica_nodes = ids(&p.replicas);
    mp.isr_nodes = ids(&p.isr);
    let offline: Vec<u64> = p
        .replicas
        .iter()
        .copied()
        .filter(|n| view.brokers.get(n).is_some_and(|b| b.fenced))
        .collect();
    mp.offline_replicas = ids(&offline);
    if p.leader == NO_LEADER {
        mp.error_code = ResponseError::LeaderNotAvailable.code();
    }
    mp
}

fn error_topic(name: &str, error_code: i16) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.error_code = error_code;
    t.name = Some(topic_name(name));
    t
}
