//! Clusters whose nodes replicate over a secured listener, with the
//! authorizer on: over mutual TLS, each node connecting to the others'
//! `SSL` inter-broker listener with its own certificate and authorized as
//! that certificate's principal (a super user), their metadata (Raft)
//! links over mutual TLS too (`--cluster-tls`), refusing a plain
//! connection, a certificate of another CA and one whose principal is not
//! a super user; or over `SASL_SSL`, each
//! node authenticating with SCRAM as a super user, and re-authenticating
//! on its open connections (KIP-368). Clients keep a PLAINTEXT listener,
//! and are given every node's address on it.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{raw_call, Cluster, ClusterOptions};
use common::pki::{Pem, NODE_PRINCIPAL};
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
        "--cluster-tls",
        "true",
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
    cluster_port_refuses_all_but_nodes(&c, &pki);
    stalled_handshakes_are_bounded(&c, &pki);
}

/// SCRAM-SHA-512 authentications that succeeded on a node (every shard).
fn sasl_successes(admin_port: u16) -> u64 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin_port)).expect("admin port");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text.lines()
        .filter(|l| l.starts_with("sluice_shard_sasl_authentications_total{"))
        .filter(|l| l.contains("result=\"succeeded\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn nodes_replicate_over_sasl_ssl_as_a_scram_super_user_and_reauthenticate() {
    const REAUTH_MS: u64 = 3000;
    let pki = common::pki::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users");
    std::fs::write(&users, "broker:broker-secret\n").expect("users file");
    let password = dir.path().join("password");
    std::fs::write(&password, "broker-secret\n").expect("password file");
    let mut opts = ClusterOptions::new(3, 1);
    opts.internal_ssl = Some((pki.node.cert.clone(), pki.node.key.clone(), pki.ca.clone()));
    opts.internal_protocol = "SASL_SSL";
    opts.args = vec![
        "--authorizer".into(),
        "true".into(),
        "--super-users".into(),
        "User:broker".into(),
        "--allow-everyone-if-no-acl-found".into(),
        "true".into(),
        "--min-insync-replicas".into(),
        "3".into(),
        "--bootstrap-users-file".into(),
        users.display().to_string(),
        "--inter-broker-sasl-mechanism".into(),
        "SCRAM-SHA-512".into(),
        "--inter-broker-sasl-username".into(),
        "broker".into(),
        "--inter-broker-sasl-password-file".into(),
        password.display().to_string(),
        "--connections-max-reauth-ms".into(),
        REAUTH_MS.to_string(),
    ];
    let c = Cluster::start_with(opts);
    c.create_topic("sasl-replicated", 1, 3, &[])
        .expect("create a replicated topic");
    c.wait_leader("sasl-replicated", 0, None, TIMEOUT);
    let p = c.producer(&[("acks", "all"), ("message.timeout.ms", "30000")]);
    let send = |i: u32| {
        let value = format!("v{i}");
        let record = FutureRecord::<(), _>::to("sasl-replicated")
            .payload(&value)
            .partition(0);
        futures::executor::block_on(p.send(record, TIMEOUT))
            .unwrap_or_else(|(e, _)| panic!("acks=all over SASL_SSL: {e}"));
    };
    for i in 0..20 {
        send(i);
    }
    assert_eq!(
        c.wait_isr("sasl-replicated", 0, &[1, 2, 3], TIMEOUT)
            .isr
            .len(),
        3
    );

    // Past two session lifetimes, the followers still fetch on the
    // connections they opened, authenticating again on them: acks=all
    // keeps succeeding, and no fetcher lost its leader.
    let logs_from: Vec<usize> = c
        .ids()
        .iter()
        .map(|id| c.node(*id).log_text().len())
        .collect();
    let before: u64 = c
        .ids()
        .iter()
        .map(|id| sasl_successes(c.node(*id).admin_port))
        .sum();
    let until = Instant::now() + Duration::from_millis(2 * REAUTH_MS + 500);
    let mut i = 20;
    while Instant::now() < until {
        send(i);
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let after: u64 = c
        .ids()
        .iter()
        .map(|id| sasl_successes(c.node(*id).admin_port))
        .sum();
    assert!(
        after >= before + 2,
        "no re-authentication seen: {before} -> {after} SCRAM successes"
    );
    for (id, from) in c.ids().into_iter().zip(logs_from) {
        let log = c.node(id).log_text();
        for refusal in ["cannot reach a partition leader", "Unauthenticated("] {
            assert!(
                !log[from..].contains(refusal),
                "node {id} logged '{refusal}' while re-authenticating:\n{}",
                &log[from..]
            );
        }
    }
    assert_eq!(
        c.wait_isr("sasl-replicated", 0, &[1, 2, 3], TIMEOUT)
            .isr
            .len(),
        3
    );
}

/// A stale vote request (term 0, from a node that does not exist) as the
/// metadata links frame it: harmless, and answered by any node that reads
/// it.
fn stale_vote_frame() -> Vec<u8> {
    let body = br#"{"from":9,"to":1,"body":{"Vote":{"vote":{"leader_id":{"term":0,"node_id":9},"committed":false},"last_log_id":null}}}"#;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// Sends `stale_vote_frame` to a cluster port and returns the answer's
/// body, `None` when the connection ends without one (within 10 s).
fn vote_answer(stream: &mut dyn ReadWrite) -> Option<String> {
    stream.write_all(&stale_vote_frame()).ok()?;
    stream.flush().ok()?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(size).min(1 << 20) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A TLS connection to a cluster port that trusts `ca` and presents `as_`.
fn tls_to(port: u16, ca: &Path, as_: &Pem) -> Box<dyn ReadWrite> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("root");
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&as_.cert)
        .expect("cert")
        .map(|c| c.expect("cert"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(&as_.key).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client config");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = raw_tcp(port);
    Box::new(rustls::StreamOwned::new(conn, tcp))
}

fn raw_tcp(port: u16) -> TcpStream {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp
}

/// The metadata links of a `--cluster-tls` cluster answer a node's
/// certificate only.
fn cluster_port_refuses_all_but_nodes(c: &Cluster, pki: &common::pki::Pki) {
    let port = c.node(1).cluster_port;
    let mut plain = raw_tcp(port);
    assert_eq!(
        vote_answer(&mut plain),
        None,
        "a plain connection is answered"
    );
    let mut other_ca = tls_to(port, &pki.ca, &pki.untrusted);
    assert_eq!(
        vote_answer(&mut *other_ca),
        None,
        "another CA's certificate is answered"
    );
    let mut not_super = tls_to(port, &pki.ca, &pki.client);
    assert_eq!(
        vote_answer(&mut *not_super),
        None,
        "a client's certificate is answered"
    );
    let deadline = Instant::now() + TIMEOUT;
    while !c.node(1).log_text().contains("failed mutual TLS") {
        assert!(Instant::now() < deadline, "no refusal logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The same frame with a node's certificate is read and answered (the
    // vote refused): the refusals above are the checks, not the frame.
    let mut node = tls_to(port, &pki.ca, &pki.node);
    let answer = vote_answer(&mut *node).expect("a node's certificate is answered");
    assert!(answer.contains("\"Vote\""), "{answer}");
    assert!(answer.contains("\"vote_granted\":false"), "{answer}");
}

/// Connections that never finish their TLS handshake hold a handshake
/// slot (at most 4 per IP), not one of the nodes' inbound slots, and only
/// for the handshake's 3 s bound.
fn stalled_handshakes_are_bounded(c: &Cluster, pki: &common::pki::Pki) {
    let port = c.node(1).cluster_port;
    let stalled: Vec<TcpStream> = (0..4).map(|_| raw_tcp(port)).collect();
    // Accepted in order: the fifth from the same IP is closed at once.
    let mut fifth = raw_tcp(port);
    fifth
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    match fifth.read(&mut [0u8; 16]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a fifth stalled handshake from one IP was held: {other:?}"),
    }
    // The stalled ones are closed once the handshake's bound is over.
    let began = Instant::now();
    for mut s in stalled {
        match s.read(&mut [0u8; 16]) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a stalled handshake was not closed: {other:?}"),
        }
    }
    let held = began.elapsed();
    assert!(
        held < Duration::from_secs(6),
        "stalled handshakes held {held:?}"
    );
    // And the nodes' certificate is answered again.
    let mut node = tls_to(port, &pki.ca, &pki.node);
    let answer = vote_answer(&mut *node).expect("a node's certificate is answered");
    assert!(answer.contains("\"Vote\""), "{answer}");
}
