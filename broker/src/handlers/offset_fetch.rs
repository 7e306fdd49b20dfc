//! OffsetFetch (key 9): committed offsets of a group; -1 (and no error) for
//! a partition with none. v0-7 ask for one group, v8+ for many; a null
//! topic list (v2+) asks for every committed partition. With
//! `require_stable` (v7+) a partition whose offset an open transaction
//! holds answers UNSTABLE_OFFSET_COMMIT, which consumers retry.
//!
//! Authorization (`--authorizer`), per group as Kafka: DESCRIBE on the
//! group (else GROUP_AUTHORIZATION_FAILED); the committed partitions of
//! topics `session` may not DESCRIBE are left out of an all-partitions
//! answer, and named ones answer TOPIC_AUTHORIZATION_FAILED without being
//! looked up.

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse};

use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name, Ctx};
use crate::errors::{codes, group_error_code};
use crate::plane::{GroupRequest, GroupResponse, OffsetFetchRequest as FetchOffsets};
use crate::security::{AclOperation, AclResourceType, Session};

type Partitions = Option<Vec<(String, i32)>>;

pub async fn handle(
    req: OffsetFetchRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> OffsetFetchResponse {
    let mut resp = OffsetFetchResponse::default();
    if version >= 8 {
        for g in req.groups {
            let parts = g.topics.map(|ts| {
                ts.iter()
                    .flat_map(|t| {
                        t.partition_indexes
                            .iter()
                            .map(|p| (t.name.0.to_string(), *p))
                    })
                    .collect()
            });
            let group = fetch_group(g.group_id, parts, req.require_stable, ctx, session).await;
            resp.groups.push(group);
        }
        return resp;
    }
    let parts: Partitions = req.topics.map(|ts| {
        ts.iter()
            .flat_map(|t| {
                t.partition_indexes
                    .iter()
                    .map(|p| (t.name.0.to_string(), *p))
            })
            .collect()
    });
    let g = fetch_group(req.group_id, parts, req.require_stable, ctx, session).await;
    resp.error_code = g.error_code;
    resp.topics = g
        .topics
        .into_iter()
        .map(|t| {
            let mut out = OffsetFetchResponseTopic::default();
            out.name = t.name;
            out.partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut o = OffsetFetchResponsePartition::default();
                    o.partition_index = p.partition_index;
                    o.committed_offset = p.committed_offset;
                    o.committed_leader_epoch = p.committed_leader_epoch;
                    o.metadata = p.metadata;
                    o.error_code = p.error_code;
                    o
                })
                .collect();
            out
        })
        .collect();
    resp
}

async fn fetch_group(
    group_id: GroupId,
    mut partitions: Partitions,
    require_stable: bool,
    ctx: &Ctx,
    session: &Session,
) -> OffsetFetchResponseGroup {
    let kind = AclResourceType::Group;
    let refused = (!ctx.allowed(session, AclOperation::Describe, kind, &group_id.0))
        .then(|| ResponseError::GroupAuthorizationFailed.code());
    if let Some(code) = refused.or_else(|| ctx.not_coordinator(&group_id.0)) {
        let mut out = OffsetFetchResponseGroup::default();
        out.group_id = group_id;
        out.error_code = code;
        return out;
    }
    let may_describe = |topic: &str| {
        ctx.allowed(
            session,
            AclOperation::Describe,
            AclResourceType::Topic,
            topic,
        )
    };
    // Named partitions of topics it may not describe are not looked up.
    let mut undescribable: Vec<(String, i32)> = Vec::new();
    if let Some(named) = partitions.as_mut() {
        named.retain(|(topic, p)| {
            let allowed = may_describe(topic);
            if !allowed {
                undescribable.push((topic.clone(), *p));
            }
            allowed
        });
    }
    let all = partitions.is_none();
    let mut out = fetch_allowed(group_id, partitions, require_stable, ctx).await;
    if out.error_code != codes::NONE {
        return out;
    }
    if all {
        out.topics.retain(|t| may_describe(t.name.0.as_str()));
    }
    for (topic, partition) in undescribable {
        let mut p = OffsetFetchResponsePartitions::default();
        p.partition_index = partition;
        p.committed_offset = -1;
        p.committed_leader_epoch = -1;
        p.metadata = Some(str_bytes(""));
        p.error_code = ResponseError::TopicAuthorizationFailed.code();
        push_partition(&mut out.topics, &topic, p);
    }
    out
}

/// Asks the coordinator for the committed offsets of `partitions` (all
/// the group's when `None`).
async fn fetch_allowed(
    group_id: GroupId,
    partitions: Partitions,
    require_stable: bool,
    ctx: &Ctx,
) -> OffsetFetchResponseGroup {
    let req = FetchOffsets {
        group_id: group_id.0.to_string(),
        partitions,
        require_stable,
    };
    let GroupResponse::OffsetFetch(r) = ctx.shard.group(GroupRequest::OffsetFetch(req)).await
    else {
        unreachable!("an offset fetch is answered with offsets");
    };
    let mut out = OffsetFetchResponseGroup::default();
    out.group_id = group_id;
    out.error_code = group_error_code(r.error.as_ref());
    let mut topics: Vec<OffsetFetchResponseTopics> = Vec::new();
    for (topic, partition, committed) in r.offsets {
        let mut p = OffsetFetchResponsePartitions::default();
        p.partition_index = partition;
        p.committed_leader_epoch = -1;
        p.committed_offset = -1;
        p.metadata = Some(str_bytes(""));
        if r.unstable
            .iter()
            .any(|(t, q)| *t == topic && *q == partition)
        {
            p.error_code = ResponseError::UnstableOffsetCommit.code();
        } else if let Some(c) = committed {
            p.committed_offset = c.offset;
            p.committed_leader_epoch = c.leader_epoch;
            p.metadata = Some(str_bytes(c.metadata.unwrap_or_default()));
        }
        push_partition(&mut topics, &topic, p);
    }
    out.topics = topics;
    out
}

/// Appends `p` to the last topic when it is `topic`, else as a new topic.
fn push_partition(
    topics: &mut Vec<OffsetFetchResponseTopics>,
    topic: &str,
    p: OffsetFetchResponsePartitions,
) {
    match topics.last_mut() {
        Some(t) if t.name.0.as_str() == topic => t.partitions.push(p),
        _ => {
            let mut t = OffsetFetchResponseTopics::default();
            t.name = topic_name(topic);
            t.partitions.push(p);
            topics.push(t);
        }
    }
}
