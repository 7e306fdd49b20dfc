//! OffsetFetch (key 9): committed offsets of a group; -1 (and no error) for
//! a partition with none. v0-7 ask for one group, v8+ for many; a null
//! topic list (v2+) asks for every committed partition. With
//! `require_stable` (v7+) a partition whose offset an open transaction
//! holds answers UNSTABLE_OFFSET_COMMIT, which consumers retry.

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse};

use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name, Ctx};
use crate::errors::group_error_code;
use crate::plane::{GroupRequest, GroupResponse, OffsetFetchRequest as FetchOffsets};
use crate::security::Session;

type Partitions = Option<Vec<(String, i32)>>;

pub async fn handle(req: OffsetFetchRequest, version: i16, ctx: &Ctx, session: &Session) -> OffsetFetchResponse {
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
            resp.groups
                .push(fetch_group(g.group_id, parts, req.require_stable, ctx).await);
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
    let g = fetch_group(req.group_id, parts, req.require_stable, ctx).await;
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
    partitions: Partitions,
    require_stable: bool,
    ctx: &Ctx,
) -> OffsetFetchResponseGroup {
    if let Some(code) = ctx.not_coordinator(&group_id.0) {
        let mut out = OffsetFetchResponseGroup::default();
        out.group_id = group_id;
        out.error_code = code;
        return out;
    }
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
        match topics.last_mut() {
            Some(t) if t.name.0.as_str() == topic => t.partitions.push(p),
            _ => {
                let mut t = OffsetFetchResponseTopics::default();
                t.name = topic_name(&topic);
                t.partitions.push(p);
                topics.push(t);
            }
        }
    }
    out.topics = topics;
    out
}
