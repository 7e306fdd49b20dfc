//! DescribeCluster (key 60): the unfenced brokers and the controller.
//! As in Kafka every principal may ask (no authorization error): the
//! cluster's authorized operations, when asked for, are those `session`
//! may do (0 when it may not DESCRIBE the cluster); INT32_MIN ("not
//! requested") otherwise.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{str_bytes, Ctx};
use crate::security::Session;

/// Kafka's "not requested" value of `cluster_authorized_operations`.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

pub fn handle(
    req: &DescribeClusterRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> DescribeClusterResponse {
    let mut resp = DescribeClusterResponse::default();
    resp.endpoint_type = if version >= 1 { req.endpoint_type } else { 1 };
    resp.cluster_id = str_bytes(ctx.node.cluster_id.clone());
    resp.controller_id = BrokerId(ctx.controller_id());
    resp.brokers = ctx
        .live_brokers(&ctx.view(), session)
        .into_iter()
        .map(|a| {
            let mut b = DescribeClusterBroker::default();
            b.broker_id = BrokerId(a.id);
            b.host = str_bytes(a.host);
            b.port = a.port;
            b
        })
        .collect();
    resp.cluster_authorized_operations = if req.include_cluster_authorized_operations {
        super::metadata::cluster_operations(ctx, session)
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    };
    resp
}
