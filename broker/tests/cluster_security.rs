//! A cluster whose nodes replicate over mutual TLS, with the authorizer
//! on: each node connects to the others' `SSL` inter-broker listener with
//! its own certificate, and is authorized as that certificate's principal
//! (a super user); clients keep a PLAINTEXT listener, and are given every
//! node's address on it.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::time::Duration;

use cluster::{raw_call, Cluster, ClusterOptions};
use common::pki::NODE_PRINCIPAL;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateAclsRequest, CreateAclsResponse, FetchRequest, FetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::producer::FutureRecord;

const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn nodes_replicate_over_mutual_tls_as_their_certificate_principal() {
    let pki = common::pki::generate();
    let mut opts = ClusterOptions::new(3, 1);
    opts.internal_ssl = Some((pki.node.cert.clone(), pki.node.key.clone(), pki.ca.clone()));
    opts.args = [
        "--authorizer",
        "true",
        "--super-users",
        NODE_PRINCIPAL,
        // The test's clients are User:ANONYMOUS on the PLAINTEXT listener.
        "--allow-everyone-if-no-acl-found",
        "true",
        "--min-insync-replicas",
        "3",
    ]
    .map(String::from)
    .to_vec();
    let c = Cluster::start_with(opts);
    // Clients may not act as replicas: an anonymous follower fetch is
    // refused, so replication below can only be the nodes' own.
    let deny = CreateAclsRequest::default().with_creations(vec![AclCreation::default()
        .with_resource_type(4) // CLUSTER
        .with_resource_name(StrBytes::from_static_str("kafka-cluster"))
        .with_resource_pattern_type(3) // LITERAL
        .with_principal(StrBytes::from_static_str("User:ANONYMOUS"))
        .with_host(StrBytes::from_static_str("*"))
        .with_operation(10) // CLUSTER_ACTION
        .with_permission_type(2)]); // DENY
    let r: CreateAclsResponse =
        raw_call(c.node(1).kafka_port, ApiKey::CreateAcls, 3, &deny, TIMEOUT).expect("CreateAcls");
    assert_eq!(
        r.results[0].error_code, 0,
        "{:?}",
        r.results[0].error_message
    );

    c.create_topic("secure", 1, 3, &[])
        .expect("create a replicated topic");
    let leader = c.wait_leader("secure", 0, None, TIMEOUT);
    // acks=all with min.insync.replicas=3: every record is on all three.
    let p = c.producer(&[("acks", "all"), ("message.timeout.ms", "30000")]);
    for i in 0..20 {
        let value = format!("v{i}");
        let record = FutureRecord::<(), _>::to("secure")
            .payload(&value)
            .partition(0);
        futures::executor::block_on(p.send(record, TIMEOUT))
            .unwrap_or_else(|(e, _)| panic!("acks=all over mutual TLS: {e}"));
    }
    let view = c.wait_isr("secure", 0, &[1, 2, 3], TIMEOUT);
    assert_eq!(view.isr.len(), 3);

    // The same follower fetch from a client on the PLAINTEXT listener.
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(2))
        .with_max_wait_ms(0)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("secure")))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_partition_max_bytes(1 << 20)])]);
    let port = c.node(leader).kafka_port;
    let r: FetchResponse = raw_call(port, ApiKey::Fetch, 11, &fetch, TIMEOUT).expect("Fetch");
    // As Kafka answers a follower fetch without CLUSTER_ACTION.
    let code = r.responses[0].partitions[0].error_code;
    assert_eq!(code, TOPIC_AUTHORIZATION_FAILED, "{r:?}");

    // Every node's PLAINTEXT address is what a PLAINTEXT client is given.
    let listed = c.metadata_from(1, None).expect("metadata").brokers;
    for id in c.ids() {
        let (host, port) = &listed[&(id as i32)];
        assert_eq!(
            (host.as_str(), *port),
            ("127.0.0.1", i32::from(c.node(id).advertised_port))
        );
    }
}
