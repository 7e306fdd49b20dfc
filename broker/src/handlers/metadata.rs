//! Metadata (key 3): brokers (this node), controller, topics and their
//! partitions. Unknown topics are created when the node allows it and the
//! request does (`allow_auto_topic_creation`, implied below v4).

use std::sync::Arc;

use futures::future::join_all;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use sluice_raft::{MetaError, TopicMeta, TopicSpec};

use super::{str_bytes, topic_name, topic_uuid, valid_topic_name, with_deadline, Ctx};
use crate::errors::{codes, meta_error_code, shard_error_code};

/// How long an auto-creation waits for the shards to open the partitions.
const AUTO_CREATE_READY_MS_MAX: u64 = 10_000;

pub async fn handle(req: MetadataRequest, version: i16, ctx: &Ctx) -> MetadataResponse {
    let allow_auto = ctx.node.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    let topics = match requested(req.topics, version) {
        None => ctx
            .view()
            .topics
            .values()
            .map(|t| describe(t, ctx))
            .collect(),
        Some(list) => join_all(list.into_iter().map(|t| lookup(t, allow_auto, ctx))).await,
    };
    let mut resp = MetadataResponse::default();
    resp.brokers = vec![this_broker(ctx)];
    resp.cluster_id = Some(str_bytes(ctx.node.cluster_id.clone()));
    resp.controller_id = BrokerId(ctx.node.node_id);
    resp.topics = topics;
    resp
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

fn this_broker(ctx: &Ctx) -> MetadataResponseBroker {
    let mut b = MetadataResponseBroker::default();
    b.node_id = BrokerId(ctx.node.node_id);
    b.host = str_bytes(ctx.node.advertised_host.clone());
    b.port = i32::from(ctx.node.advertised_port);
    b
}

async fn lookup(req: MetadataRequestTopic, allow_auto: bool, ctx: &Ctx) -> MetadataResponseTopic {
    let Some(name) = req.name else {
        return lookup_by_id(req.topic_id, ctx);
    };
    let name = name.0.as_str();
    if !valid_topic_name(name) {
        return error_topic(name, codes::invalid_topic());
    }
    if let Some(topic) = ctx.topic(name) {
        return describe(&topic, ctx);
    }
    if !allow_auto {
        return error_topic(name, codes::unknown_topic_or_partition());
    }
    auto_create(name, ctx).await
}

fn lookup_by_id(id: uuid::Uuid, ctx: &Ctx) -> MetadataResponseTopic {
    let view = ctx.view();
    match view.topic_by_id(id.as_bytes()) {
        Some(topic) => describe(topic, ctx),
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
        replication_factor: 1,
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
        Some(Ok(())) => describe(&topic, ctx),
        Some(Err(e)) => error_topic(name, shard_error_code(&e)),
        // Kafka's answer for a topic whose partitions are still being set up.
        None => error_topic(
            name,
            kafka_protocol::ResponseError::LeaderNotAvailable.code(),
        ),
    }
}

fn describe(topic: &Arc<TopicMeta>, ctx: &Ctx) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = Some(topic_name(&topic.name));
    t.topic_id = topic_uuid(topic);
    t.is_internal = topic.name == crate::plane::OFFSETS_TOPIC;
    t.partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let leader = BrokerId(i32::try_from(p.leader).unwrap_or(ctx.node.node_id));
            let mut mp = MetadataResponsePartition::default();
            mp.partition_index = i32::try_from(index).unwrap_or(i32::MAX);
            mp.leader_id = leader;
            mp.leader_epoch = 0;
            mp.replica_nodes = vec![leader];
            mp.isr_nodes = vec![leader];
            mp
        })
        .collect();
    t
}

fn error_topic(name: &str, error_code: i16) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.error_code = error_code;
    t.name = Some(topic_name(name));
    t
}
