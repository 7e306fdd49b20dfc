//! Fetch (key 1), versions 0-12 (topics by name). No fetch sessions: every
//! response carries session id 0, which tells clients to send full fetch
//! requests; a request naming a session id gets FETCH_SESSION_ID_NOT_FOUND.
//! The long poll (max_wait_ms / min_bytes) lives in the data plane; stored
//! batches come back whole and are concatenated here.
//!
//! A partition this node does not lead is answered NOT_LEADER_OR_FOLLOWER
//! (v12: with the current leader and epoch in the `current_leader` tagged
//! field). A request with `replica_id >= 0` is a follower's: the data
//! plane serves it as a replica fetch (the follower's fetch offset is its
//! log end, which moves the high watermark and the ISR).
//!
//! read_committed (v4+, `isolation_level` 1): the data plane reads below the
//! last stable offset and lists the aborted transactions among the returned
//! records, answered in `aborted_transactions`; every answer (v4+) carries
//! the last stable offset.
//!
//! Authorization (`--authorizer`), as Kafka's KafkaApis: a consumer needs
//! READ on each topic, a follower (`replica_id >= 0`) CLUSTER_ACTION on
//! the cluster; a partition refused gets TOPIC_AUTHORIZATION_FAILED (every
//! partition of a refused follower: Kafka has no top-level answer for it).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
};
use kafka_protocol::messages::{BrokerId, ProducerId};
use kafka_protocol::messages::{FetchRequest, FetchResponse};

use kafka_protocol::ResponseError;

use super::Ctx;
use crate::errors::{codes, is_busy, shard_error_code, BUSY_THROTTLE_MS};
use crate::plane::{self, FetchPartitionResult, ResponseMemory};
use crate::security::{AclOperation, AclResourceType, Session};

/// Longest long poll served, whatever the client asks.
const MAX_WAIT_MS_MAX: u32 = 60_000;

/// Where one requested partition's answer comes from.
enum Slot {
    Plane(usize),
    Error(i16),
    /// Not led here: NOT_LEADER_OR_FOLLOWER, with (leader id, epoch).
    NotLeader(i16, (i32, i32)),
}

/// The response, and the `fetch_response` memory its batches hold: the
/// connection drops it once the response is written.
pub async fn handle(
    req: FetchRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> (FetchResponse, Option<ResponseMemory>) {
    let mut resp = FetchResponse::default();
    if version >= 7 && req.session_id != 0 {
        resp.error_code = codes::fetch_session_id_not_found();
        return (resp, None);
    }
    let max_wait_ms = u32::try_from(req.max_wait_ms)
        .unwrap_or(0)
        .min(MAX_WAIT_MS_MAX);
    let (slots, partitions) = plan(&req, ctx, session);
    let (results, held) = if partitions.is_empty() {
        if slots.iter().all(|(_, s)| s.is_empty()) {
            glommio::timer::sleep(Duration::from_millis(u64::from(max_wait_ms))).await;
        }
        (Vec::new(), None)
    } else {
        let max_bytes = if version >= 3 {
            req.max_bytes
        } else {
            i32::MAX
        };
        let replica_id = u64::try_from(req.replica_id.0).ok();
        let plane_req = plane::fetch_request(
            partitions,
            max_wait_ms,
            u32::try_from(req.min_bytes).unwrap_or(0),
            u32::try_from(max_bytes).unwrap_or(0),
            req.isolation_level,
            replica_id,
        );
        let (results, held) = ctx.shard.fetch_held(plane_req).await;
        (results, Some(held))
    };
    let throttled = results.iter().any(|r| r.throttled);
    resp.responses = assemble(&req, slots, results, version);
    let busy = resp
        .responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .any(|p| is_busy(p.error_code));
    if (busy || throttled) && version >= 1 {
        resp.throttle_time_ms = BUSY_THROTTLE_MS;
    }
    (resp, held)
}

type Slots = Vec<(usize, Vec<Slot>)>;

fn plan(req: &FetchRequest, ctx: &Ctx, session: &Session) -> (Slots, Vec<plane::FetchPartition>) {
    let mut partitions = Vec::new();
    let mut slots = Vec::with_capacity(req.topics.len());
    // A follower's fetch: CLUSTER_ACTION, asked once.
    let replica_allowed = (req.replica_id.0 >= 0)
        .then(|| ctx.allowed_on_cluster(session, AclOperation::ClusterAction));
    for (ti, t) in req.topics.iter().enumerate() {
        let name = t.topic.0.as_str();
        let allowed = replica_allowed.unwrap_or_else(|| {
            ctx.allowed(session, AclOperation::Read, AclResourceType::Topic, name)
        });
        let topic = if allowed { ctx.topic(name) } else { None };
        let mut topic_slots = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            if !allowed {
                topic_slots.push(Slot::Error(ResponseError::TopicAuthorizationFailed.code()));
                continue;
            }
            let Some(topic) = topic.clone() else {
                topic_slots.push(Slot::Error(codes::unknown_topic_or_partition()));
                continue;
            };
            if let Err(code) = ctx.led_here(&topic, p.partition) {
                let hint = Ctx::leader_hint(&topic, p.partition);
                topic_slots.push(Slot::NotLeader(code, hint));
                continue;
            }
            topic_slots.push(Slot::Plane(partitions.len()));
            partitions.push(plane::fetch_partition(
                topic,
                p.partition,
                p.fetch_offset,
                u32::try_from(p.partition_max_bytes).unwrap_or(0),
                p.current_leader_epoch,
            ));
        }
        slots.push((ti, topic_slots));
    }
    (slots, partitions)
}

fn assemble(
    req: &FetchRequest,
    slots: Slots,
    results: Vec<FetchPartitionResult>,
    version: i16,
) -> Vec<FetchableTopicResponse> {
    let mut results: Vec<Option<FetchPartitionResult>> = results.into_iter().map(Some).collect();
    slots
        .into_iter()
        .map(|(ti, topic_slots)| {
            let t = &req.topics[ti];
            let mut out = FetchableTopicResponse::default();
            out.topic = t.topic.clone();
            out.partitions = t
                .partitions
                .iter()
                .zip(topic_slots)
                .map(|(p, slot)| match slot {
                    Slot::Plane(i) => match results.get_mut(i).and_then(Option::take) {
                        Some(r) => partition_data(p.partition, r),
                        None => error_data(
                            p.partition,
                            kafka_protocol::ResponseError::UnknownServerError.code(),
                        ),
                    },
                    Slot::Error(code) => error_data(p.partition, code),
                    Slot::NotLeader(code, (leader, epoch)) => {
                        let mut d = error_data(p.partition, code);
                        if version >= 12 {
                            let mut current = LeaderIdAndEpoch::default();
                            current.leader_id = BrokerId(leader);
                            current.leader_epoch = epoch;
                            d.current_leader = current;
                        }
                        d
                    }
                })
                .collect();
            out
        })
        .collect()
}

fn partition_data(partition: i32, r: FetchPartitionResult) -> PartitionData {
    if let Some(e) = &r.error {
        let mut d = error_data(partition, shard_error_code(e));
        d.high_watermark = r.high_watermark;
        d.log_start_offset = r.log_start_offset;
        return d;
    }
    let mut d = PartitionData::default();
    d.partition_index = partition;
    d.high_watermark = r.high_watermark;
    d.last_stable_offset = r.last_stable_offset;
    d.log_start_offset = r.log_start_offset;
    d.aborted_transactions = Some(
        r.aborted
            .iter()
            .map(|&(producer_id, first_offset)| {
                AbortedTransaction::default()
                    .with_producer_id(ProducerId(producer_id))
                    .with_first_offset(first_offset)
            })
            .collect(),
    );
    d.records = Some(concat(r.records));
    d
}

fn concat(mut batches: Vec<Bytes>) -> Bytes {
    if batches.len() == 1 {
        return batches.pop().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(batches.iter().map(Bytes::len).sum());
    batches.iter().for_each(|b| out.extend_from_slice(b));
    out.freeze()
}

fn error_data(partition: i32, error_code: i16) -> PartitionData {
    let mut d = PartitionData::default();
    d.partition_index = partition;
    d.error_code = error_code;
    d.high_watermark = -1;
    d.records = Some(Bytes::new());
    d
}
