//! DescribeCluster (key 60): this node is the only broker and the
//! controller. Authorized operations are not computed (INT32_MIN, "not
//! requested", as Kafka answers without an authorizer).

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{str_bytes, Ctx};

pub fn handle(req: &DescribeClusterRequest, version: i16, ctx: &Ctx) -> DescribeClusterResponse {
    let n = &ctx.node;
    let mut broker = DescribeClusterBroker::default();
    broker.broker_id = BrokerId(n.node_id);
    broker.host = str_bytes(n.advertised_host.clone());
    broker.port = i32::from(n.advertised_port);
    let mut resp = DescribeClusterResponse::default();
    resp.endpoint_type = if version >= 1 { req.endpoint_type } else { 1 };
    resp.cluster_id = str_bytes(n.cluster_id.clone());
    resp.controller_id = BrokerId(n.node_id);
    resp.brokers = vec![broker];
    resp.cluster_authorized_operations = i32::MIN;
    resp
}
