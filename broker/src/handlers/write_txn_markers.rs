//! WriteTxnMarkers (key 27): a transaction coordinator asks this node to
//! write markers (control batches) to partitions it leads. Each partition
//! is answered once the in-sync replicas have its marker.

use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};

use super::Ctx;
use crate::errors::{codes, shard_error_code};
use crate::plane::TxnMarker;

pub async fn handle(
    req: WriteTxnMarkersRequest,
    _version: i16,
    ctx: &Ctx,
) -> WriteTxnMarkersResponse {
    let mut resp = WriteTxnMarkersResponse::default();
    for m in req.markers {
        let marker = TxnMarker {
            producer_id: m.producer_id.0,
            producer_epoch: m.producer_epoch,
            commit: m.transaction_result,
            coordinator_epoch: m.coordinator_epoch,
        };
        let mut out = WritableTxnMarkerResult::default();
        out.producer_id = m.producer_id;
        for t in m.topics {
            let mut tr = WritableTxnMarkerTopicResult::default();
            let topic = ctx.topic(&t.name.0);
            let writes = t.partition_indexes.iter().map(|&p| {
                let topic = topic.clone();
                async move {
                    let mut r = WritableTxnMarkerPartitionResult::default();
                    r.partition_index = p;
                    r.error_code = match topic {
                        None => codes::unknown_topic_or_partition(),
                        Some(topic) => match ctx.shard.write_txn_marker(topic, p, marker).await {
                            Ok(_) => codes::NONE,
                            Err(e) => shard_error_code(&e),
                        },
                    };
                    r
                }
            });
            tr.partitions = futures::future::join_all(writes).await;
            tr.name = t.name;
            out.topics.push(tr);
        }
        resp.markers.push(out);
    }
    resp
}
