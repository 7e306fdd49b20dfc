//! DescribeCluster (key 60): the unfenced brokers and the controller.
//! Authorized operations are not computed (INT32_MIN, "not requested", as
//! Kafka answers without an authorizer).

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{str_bytes, Ctx};

pub fn handle(req: &DescribeClusterRequest, version: i16, ctx: &Ctx) -> DescribeClusterResponse {
    let mut resp = DescribeClusterResponse::default();
    resp.endpoint_type = if version >= 1 { req.endpoint_type } else { 1 };
    resp.cluster_id = str_bytes(ctx.node.cluster_id.clone());
    resp.controller_id = BrokerId(ctx.controller_id());
    resp.brokers = ctx
        .live_brokers(&ctx.view())
        .into_iter()
        .map(|a| {
            let mut b = DescribeClusterBroker::default();
            b.broker_id = BrokerId(a.id);
            b.host = str_bytes(a.host);
            b.port = a.port;
            b
        })
        .collect();
    resp.cluster_authorized_operations = i32::MIN;
    resp
}
