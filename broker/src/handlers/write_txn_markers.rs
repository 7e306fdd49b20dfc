//! WriteTxnMarkers (key 27): a transaction coordinator asks this node to
//! write markers (control batches) to partitions it leads. Every marker of
//! the request is written at once (they share WAL commits and replication
//! rounds); each partition is answered once the in-sync replicas have its
//! marker. Needs ALTER or CLUSTER_ACTION on the cluster (`--authorizer`),
//! else every partition gets CLUSTER_AUTHORIZATION_FAILED, as Kafka's
//! error response.

use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};

use kafka_protocol::ResponseError;

use super::Ctx;
use crate::errors::{codes, shard_error_code};
use crate::plane::TxnMarker;
use crate::security::{AclOperation, Session};

pub async fn handle(
    req: WriteTxnMarkersRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> WriteTxnMarkersResponse {
    let allowed = ctx.allowed_on_cluster(session, AclOperation::Alter)
        || ctx.allowed_on_cluster(session, AclOperation::ClusterAction);
    let mut writes = Vec::new();
    for (mi, m) in req.markers.iter().enumerate() {
        let marker = TxnMarker {
            producer_id: m.producer_id.0,
            producer_epoch: m.producer_epoch,
            commit: m.transaction_result,
            coordinator_epoch: m.coordinator_epoch,
        };
        for (ti, t) in m.topics.iter().enumerate() {
            let topic = if allowed { ctx.topic(&t.name.0) } else { None };
            for &p in &t.partition_indexes {
                let topic = topic.clone();
                writes.push(async move {
                    let code = match topic {
                        _ if !allowed => ResponseError::ClusterAuthorizationFailed.code(),
                        None => codes::unknown_topic_or_partition(),
                        Some(topic) => match ctx.shard.write_txn_marker(topic, p, marker).await {
                            Ok(_) => codes::NONE,
                            Err(e) => shard_error_code(&e),
                        },
                    };
                    (mi, ti, p, code)
                });
            }
        }
    }
    let mut codes_of = futures::future::join_all(writes).await.into_iter();
    let mut resp = WriteTxnMarkersResponse::default();
    for (mi, m) in req.markers.into_iter().enumerate() {
        let mut out = WritableTxnMarkerResult::default();
        out.producer_id = m.producer_id;
        for (ti, t) in m.topics.into_iter().enumerate() {
            let mut tr = WritableTxnMarkerTopicResult::default();
            for _ in 0..t.partition_indexes.len() {
                let Some((wm, wt, p, code)) = codes_of.next() else {
                    break;
                };
                debug_assert_eq!((wm, wt), (mi, ti), "answers come in request order");
                let mut r = WritableTxnMarkerPartitionResult::default();
                r.partition_index = p;
                r.error_code = code;
                tr.partitions.push(r);
            }
            tr.name = t.name;
            out.topics.push(tr);
        }
        resp.markers.push(out);
    }
    resp
}
