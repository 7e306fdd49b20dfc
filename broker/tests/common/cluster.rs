//! A cluster of real `sluice` processes on loopback for the cluster tests.
//!
//! Each node gets its own temp data dir, Kafka port, cluster (Raft) port and
//! admin port; node ids are 1..=N. `Cluster::start` launches them, then
//! waits (bounded) until every node answers Metadata listing all N brokers.
//!
//! With links (the default), every path between nodes goes through a test
//! proxy, so links can be cut while the processes stay alive:
//!
//! - Kafka: each node advertises `127.0.0.1:<proxy>` (`--advertised-listener`)
//!   forwarding to its real Kafka port. Replica fetchers reach leaders
//!   through the advertised address, and so do the harness's clients.
//! - Raft: `--cluster-voters` (the same list on every node) names, for each
//!   node, a proxy port forwarding to that node's `--cluster-listen`.
//!
//! A proxy tells which node opened a connection by looking its socket up in
//! `/proc/net/tcp{,6}` and the nodes' `/proc/PID/fd`; anything else is a
//! client. `cut(i)` closes every proxied connection to or from node i and
//! refuses new ones (node i is unplugged: no peer and no client reaches it
//! through the proxies; raw requests to its real port still do);
//! `heal(i)` lets them through again.
//!
//! Test-side std threads: one accept thread for all proxy listeners, two
//! per proxied connection (at most `LINKS_MAX` connections). Every thread
//! looks at the stop flag at least every `PUMP_POLL`, and dropping the
//! cluster closes every connection, joins every thread and kills every
//! node.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest,
    MetadataResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::common::{free_port, request_frame, Consumed};

/// Formation: every node lists every broker within this.
const FORM_TIMEOUT: Duration = Duration::from_secs(90);
/// A restarted node lists the running brokers within this.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);
/// One raw request (connect, write, read).
const RAW_TIMEOUT: Duration = Duration::from_secs(10);
/// Sleep between two looks at a condition.
const POLL: Duration = Duration::from_millis(100);
/// A proxy pump looks at the stop flag at least this often.
const PUMP_POLL: Duration = Duration::from_millis(500);
/// A proxied write that makes no progress this long ends the connection.
const PUMP_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes moved by one read of a pump.
const PUMP_CHUNK_BYTES: usize = 64 * 1024;
/// Proxied connections open at once; more are closed at accept.
const LINKS_MAX: usize = 1024;
/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 120;

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub shards: u32,
    /// Extra `sluice start` arguments, the same for every node.
    pub args: Vec<String>,
    /// Proxy every link between nodes (needed for `cut`/`heal`).
    pub links: bool,
    /// Node ids in launch order (default 1..=nodes).
    pub start_order: Vec<u64>,
    /// Pause between two launches.
    pub start_gap: Duration,
    /// Nodes replicate over a listener named INTERNAL on a port of its
    /// own, of `internal_protocol`, with these TLS files (certificate, key,
    /// CA); clients keep the PLAINTEXT one. Links are not proxied there.
    pub internal_ssl: Option<(PathBuf, PathBuf, PathBuf)>,
    /// `SSL` (mutual TLS, the default) or `SASL_SSL` (give the SASL
    /// settings in `args`).
    pub internal_protocol: &'static str,
}

impl ClusterOptions {
    pub fn new(nodes: usize, shards: u32) -> ClusterOptions {
        ClusterOptions {
            nodes,
            shards,
            args: Vec::new(),
            links: true,
            start_order: (1..=nodes as u64).collect(),
            start_gap: Duration::ZERO,
            internal_ssl: None,
            internal_protocol: "SSL",
        }
    }
}

/// One node's process and addresses.
pub struct Node {
    pub id: u64,
    /// The real Kafka listener (`--listen`).
    pub kafka_port: u16,
    /// What Metadata hands out (`--advertised-listener`): the Kafka proxy
    /// with links, else `kafka_port`.
    pub advertised_port: u16,
    /// `--cluster-listen`.
    pub cluster_port: u16,
    /// This node's port in `--cluster-voters`: the Raft proxy with links,
    /// else `cluster_port`.
    pub voter_port: u16,
    pub admin_port: u16,
    pub data_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A running cluster; killed (and its data removed) on drop.
pub struct Cluster {
    nodes: Vec<Node>,
    links: Option<Arc<Links>>,
    accept: Option<JoinHandle<()>>,
    opts: ClusterOptions,
    tmp: tempfile::TempDir,
}

impl Cluster {
    /// `nodes` nodes of `shards` shards with proxied links, launched in id
    /// order, with `extra` arguments for every node.
    pub fn start(nodes: usize, shards: u32, extra: &[&str]) -> Cluster {
        let mut opts = ClusterOptions::new(nodes, shards);
        opts.args = extra.iter().map(|s| s.to_string()).collect();
        Cluster::start_with(opts)
    }

    pub fn start_with(opts: ClusterOptions) -> Cluster {
        assert!(opts.nodes >= 1);
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut taken = BTreeSet::new();
        let mut port = || loop {
            let p = free_port();
            if taken.insert(p) {
                return p;
            }
        };
        struct Ports {
            kafka: u16,
            cluster: u16,
            admin: u16,
            internal: u16,
        }
        let ports: Vec<Ports> = (0..opts.nodes)
            .map(|_| Ports {
                kafka: port(),
                cluster: port(),
                admin: port(),
                internal: port(),
            })
            .collect();
        // The proxies' listeners are bound (and held) here, so their ports
        // cannot be taken by anyone else.
        let mut listeners = Vec::new();
        let (advertised, voters): (Vec<u16>, Vec<u16>) = if opts.links {
            let mut adv = Vec::new();
            let mut vot = Vec::new();
            for (i, p) in ports.iter().enumerate() {
                let kafka = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
                let raft = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
                adv.push(kafka.local_addr().expect("addr").port());
                vot.push(raft.local_addr().expect("addr").port());
                listeners.push((kafka, i, p.kafka));
                listeners.push((raft, i, p.cluster));
            }
            (adv, vot)
        } else {
            (
                ports.iter().map(|p| p.kafka).collect(),
                ports.iter().map(|p| p.cluster).collect(),
            )
        };
        let voters_arg = voters
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes: Vec<Node> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let id = i as u64 + 1;
                let dir = tmp.path().join(format!("node-{id}"));
                let mut args: Vec<String> = vec![
                    "start".into(),
                    "--data-dir".into(),
                    dir.join("data").display().to_string(),
                    "--admin-listen".into(),
                    format!("127.0.0.1:{}", p.admin),
                    "--shards".into(),
                    opts.shards.to_string(),
                    "--node-id".into(),
                    id.to_string(),
                    "--cluster-listen".into(),
                    format!("127.0.0.1:{}", p.cluster),
                    "--cluster-voters".into(),
                    voters_arg.clone(),
                ];
                if !opts.args.iter().any(|a| a == "--memory") {
                    args.extend(["--memory".into(), format!("{}MiB", 256 * opts.shards)]);
                }
                match &opts.internal_ssl {
                    None => args.extend([
                        "--listen".into(),
                        format!("127.0.0.1:{}", p.kafka),
                        "--advertised-listener".into(),
                        format!("127.0.0.1:{}", advertised[i]),
                    ]),
                    Some((cert, key, ca)) => args.extend([
                        "--listeners".into(),
                        format!(
                            "PLAINTEXT://127.0.0.1:{},INTERNAL://127.0.0.1:{}",
                            p.kafka, p.internal
                        ),
                        "--advertised-listeners".into(),
                        format!(
                            "PLAINTEXT://127.0.0.1:{},INTERNAL://127.0.0.1:{}",
                            advertised[i], p.internal
                        ),
                        "--listener-security-protocol-map".into(),
                        format!("PLAINTEXT:PLAINTEXT,INTERNAL:{}", opts.internal_protocol),
                        "--inter-broker-listener-name".into(),
                        "INTERNAL".into(),
                        "--tls-cert-file".into(),
                        cert.display().to_string(),
                        "--tls-key-file".into(),
                        key.display().to_string(),
                        "--tls-client-ca-file".into(),
                        ca.display().to_string(),
                    ]),
                }
                args.extend(opts.args.iter().cloned());
                Node {
                    id,
                    kafka_port: p.kafka,
                    advertised_port: advertised[i],
                    cluster_port: p.cluster,
                    voter_port: voters[i],
                    admin_port: p.admin,
                    data_dir: dir.join("data"),
                    log: dir.join("sluice.log"),
                    args,
                    child: None,
                }
            })
            .collect();
        let links = opts.links.then(|| {
            Arc::new(Links {
                stop: AtomicBool::new(false),
                cut: (0..opts.nodes).map(|_| AtomicBool::new(false)).collect(),
                pids: Mutex::new(vec![None; opts.nodes]),
                conns: Mutex::new(Vec::new()),
                threads: Mutex::new(Vec::new()),
                refused: AtomicUsize::new(0),
            })
        });
        let accept = links.as_ref().map(|l| {
            let l = Arc::clone(l);
            for (listener, _, _) in &listeners {
                listener.set_nonblocking(true).expect("nonblocking");
            }
            // The link proxies run in the test process (blocking std sockets), not
            // on a broker core: one accept thread for all of them.
            std::thread::Builder::new()
                .name("cluster-proxy-accept".into())
                .spawn(move || accept_loop(&listeners, &l))
                .expect("spawn accept thread")
        });
        let mut c = Cluster {
            nodes,
            links,
            accept,
            opts: opts.clone(),
            tmp,
        };
        for (n, id) in opts.start_order.iter().enumerate() {
            if n > 0 && !opts.start_gap.is_zero() {
                std::thread::sleep(opts.start_gap);
            }
            c.spawn(*id);
        }
        let all: BTreeSet<u64> = (1..=opts.nodes as u64).collect();
        for id in 1..=opts.nodes as u64 {
            c.wait_listed(id, &all, FORM_TIMEOUT);
        }
        c
    }

    fn idx(&self, id: u64) -> usize {
        assert!(
            id >= 1 && id as usize <= self.nodes.len(),
            "no node {id} in a cluster of {}",
            self.nodes.len()
        );
        id as usize - 1
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[self.idx(id)]
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    fn spawn(&mut self, id: u64) {
        let i = self.idx(id);
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "node {id} runs already");
        std::fs::create_dir_all(&n.data_dir).expect("mkdir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("log file");
        let filter = std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into());
        // SLUICE_CLUSTER_BIN runs another build of the binary (a copy kept
        // while the tree is rebuilt, a release build).
        let bin = std::env::var_os("SLUICE_CLUSTER_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_sluice")),
            PathBuf::from,
        );
        let child = Command::new(bin)
            .args(&n.args)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        let pid = child.id();
        n.child = Some(child);
        if let Some(l) = &self.links {
            lock(&l.pids)[i] = Some(pid);
        }
    }

    /// Panics (with the node's log) when node `id` exited by itself.
    fn check_alive(&mut self, id: u64) {
        let i = self.idx(id);
        let n = &mut self.nodes[i];
        if let Some(status) = n.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            n.child = None;
            panic!(
                "node {id} exited ({status}):\n{}",
                std::fs::read_to_string(&n.log).unwrap_or_default()
            );
        }
    }

    /// Waits until node `id` answers Metadata listing (at least) `expect`.
    pub fn wait_listed(&mut self, id: u64, expect: &BTreeSet<u64>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            self.check_alive(id);
            match self.metadata_from(id, Some(&[])) {
                Ok(v) => {
                    let listed: BTreeSet<u64> = v.brokers.keys().map(|b| *b as u64).collect();
                    if expect.is_subset(&listed) {
                        return;
                    }
                    last = format!("lists brokers {listed:?}");
                }
                Err(e) => last = e,
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not list brokers {expect:?} within {timeout:?} (last: {last}):\n{}",
                self.node(id).log_tail()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Ids of the nodes whose process runs.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.running())
            .map(|n| n.id)
            .collect()
    }

    /// Running nodes not cut off.
    pub fn reachable(&self) -> Vec<u64> {
        self.running()
            .into_iter()
            .filter(|id| !self.is_cut(*id))
            .collect()
    }

    pub fn is_cut(&self, id: u64) -> bool {
        let i = self.idx(id);
        self.links
            .as_ref()
            .is_some_and(|l| l.cut[i].load(Ordering::SeqCst))
    }

    /// SIGKILL node `id`, no cleanup by the broker.
    pub fn kill(&mut self, id: u64) {
        let i = self.idx(id);
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(l) = &self.links {
            lock(&l.pids)[i] = None;
        }
    }

    /// SIGTERM node `id` and wait for its exit status.
    pub fn terminate(&mut self, id: u64) -> ExitStatus {
        let i = self.idx(id);
        let mut c = self.nodes[i].child.take().expect("running");
        let pid = i32::try_from(c.id()).expect("pid");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = c.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "node {id} did not stop on SIGTERM:\n{}",
                    self.nodes[i].log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(l) = &self.links {
            lock(&l.pids)[i] = None;
        }
        status
    }

    /// Starts node `id` again on the same data dir and ports and waits until
    /// it lists every reachable node (itself included).
    pub fn restart(&mut self, id: u64) {
        let i = self.idx(id);
        assert!(self.nodes[i].child.is_none(), "stop node {id} first");
        // After a SIGKILL the kernel tears the old io_uring down
        // asynchronously; until then the old listener still answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.nodes[i].kafka_port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn(id);
        let mut expect: BTreeSet<u64> = self.reachable().into_iter().collect();
        if self.is_cut(id) {
            expect = [id].into();
        }
        self.wait_listed(id, &expect, RESTART_TIMEOUT);
    }

    /// The node's resident set size (`VmRSS`), bytes.
    pub fn rss_bytes(&self, id: u64) -> u64 {
        let pid = self.node(id).pid().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .expect("VmRSS")
    }

    // ------------------------------------------------------------ links

    /// Unplugs node `id`: closes every proxied connection to or from it and
    /// refuses new ones until `heal`.
    pub fn cut(&self, id: u64) {
        let i = self.idx(id);
        let l = self.links.as_ref().expect("a cluster started with links");
        let conns = lock(&l.conns);
        l.cut[i].store(true, Ordering::SeqCst);
        for c in conns.iter() {
            if c.to == i || c.from == Some(i) {
                c.close();
            }
        }
    }

    pub fn heal(&self, id: u64) {
        let i = self.idx(id);
        let l = self.links.as_ref().expect("a cluster started with links");
        let _conns = lock(&l.conns);
        l.cut[i].store(false, Ordering::SeqCst);
    }

    /// Proxied connections open now, as (from node id or 0 for a client,
    /// to node id).
    pub fn open_links(&self) -> Vec<(u64, u64)> {
        let Some(l) = &self.links else {
            return Vec::new();
        };
        lock(&l.conns)
            .iter()
            .filter(|c| c.pumps.load(Ordering::SeqCst) > 0)
            .map(|c| (c.from.map_or(0, |f| f as u64 + 1), c.to as u64 + 1))
            .collect()
    }

    // ------------------------------------------------------------ raw requests

    /// Metadata (v12) from node `id`'s real Kafka port: `None` asks for
    /// every topic, `Some(&[])` for none.
    pub fn metadata_from(&self, id: u64, topics: Option<&[&str]>) -> Result<View, String> {
        let mut req = MetadataRequest::default();
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    let mut r = MetadataRequestTopic::default();
                    r.name = Some(TopicName(StrBytes::from_string(t.to_string())));
                    r
                })
                .collect()
        });
        req.allow_auto_topic_creation = false;
        let resp: MetadataResponse = raw_call(
            self.node(id).kafka_port,
            ApiKey::Metadata,
            12,
            &req,
            RAW_TIMEOUT,
        )?;
        Ok(View::from(resp))
    }

    /// The first answer of a reachable node (controller first when known).
    pub fn metadata(&self, topics: Option<&[&str]>) -> Result<View, String> {
        let mut last = "no reachable node".to_string();
        for id in self.reachable() {
            match self.metadata_from(id, topics) {
                Ok(v) => return Ok(v),
                Err(e) => last = format!("node {id}: {e}"),
            }
        }
        Err(last)
    }

    /// The controller (Raft leader) as the reachable nodes report it in
    /// Metadata (`controller_id`), when they agree on one.
    pub fn controller(&self) -> Option<u64> {
        let mut seen = BTreeSet::new();
        for id in self.reachable() {
            let v = self.metadata_from(id, Some(&[])).ok()?;
            seen.insert(v.controller);
        }
        match seen.into_iter().collect::<Vec<_>>()[..] {
            [c] if c >= 1 => Some(c as u64),
            _ => None,
        }
    }

    /// Waits until the reachable nodes agree on a controller.
    pub fn wait_controller(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.controller() {
                return c;
            }
            assert!(Instant::now() < deadline, "no agreed controller");
            std::thread::sleep(POLL);
        }
    }

    /// The leader of `topic`/`partition` as the first reachable node
    /// reports it.
    pub fn node_of_leader(&self, topic: &str, partition: i32) -> Option<u64> {
        let v = self.metadata(Some(&[topic])).ok()?;
        let p = v.partition(topic, partition)?;
        (p.leader >= 1).then_some(p.leader as u64)
    }

    /// Waits until every reachable node reports the same live leader for
    /// `topic`/`partition`, other than `not`; returns it.
    pub fn wait_leader(
        &self,
        topic: &str,
        partition: i32,
        not: Option<u64>,
        timeout: Duration,
    ) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let reachable = self.reachable();
            let mut leaders = BTreeSet::new();
            for id in &reachable {
                match self.metadata_from(*id, Some(&[topic])) {
                    Ok(v) => {
                        leaders.insert(v.partition(topic, partition).map_or(-1, |p| p.leader));
                    }
                    Err(e) => {
                        leaders.insert(-1);
                        last = e;
                    }
                }
            }
            if let [l] = leaders.iter().copied().collect::<Vec<_>>()[..] {
                if l >= 1 && Some(l as u64) != not && reachable.contains(&(l as u64)) {
                    return l as u64;
                }
            }
            if !leaders.is_empty() {
                last = format!("leaders reported: {leaders:?}");
            }
            assert!(
                Instant::now() < deadline,
                "{topic}/{partition}: no agreed leader (other than {not:?}) within {timeout:?} ({last})"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits until every reachable node reports `topic`/`partition` with
    /// exactly the ISR `isr` (any order); returns the partition as the
    /// first reachable node sees it.
    pub fn wait_isr(
        &self,
        topic: &str,
        partition: i32,
        isr: &[u64],
        timeout: Duration,
    ) -> PartitionView {
        let want: BTreeSet<i32> = isr.iter().map(|i| *i as i32).collect();
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let mut all = true;
            let mut first = None;
            for id in self.reachable() {
                match self.metadata_from(id, Some(&[topic])) {
                    Ok(v) => match v.partition(topic, partition) {
                        Some(p) => {
                            let got: BTreeSet<i32> = p.isr.iter().copied().collect();
                            if got != want || p.leader < 1 {
                                all = false;
                                last = format!("node {id}: {p:?}");
                            }
                            first.get_or_insert(p.clone());
                        }
                        None => {
                            all = false;
                            last = format!("node {id}: no such partition");
                        }
                    },
                    Err(e) => {
                        all = false;
                        last = e;
                    }
                }
            }
            if all {
                if let Some(p) = first {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{topic}/{partition}: ISR not {want:?} within {timeout:?} (last: {last})"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits until every partition of every topic of `topics` has the full
    /// ISR of its replicas (as every reachable node reports it).
    pub fn wait_all_in_sync(&self, topics: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let mut ok = true;
            for id in self.reachable() {
                match self.metadata_from(id, Some(topics)) {
                    Ok(v) => {
                        for t in topics {
                            match v.topics.get(*t) {
                                Some((0, parts)) if !parts.is_empty() => {
                                    for p in parts {
                                        let r: BTreeSet<_> = p.replicas.iter().collect();
                                        let i: BTreeSet<_> = p.isr.iter().collect();
                                        if r != i || p.leader < 1 {
                                            ok = false;
                                            last = format!("node {id}: {t}/{}: {p:?}", p.index);
                                        }
                                    }
                                }
                                other => {
                                    ok = false;
                                    last = format!("node {id}: {t}: {other:?}");
                                }
                            }
                        }
                    }
                    Err(e) => {
                        ok = false;
                        last = e;
                    }
                }
                if !ok {
                    break;
                }
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{topics:?} not fully in sync within {timeout:?} (last: {last})"
            );
            std::thread::sleep(POLL);
        }
    }

    /// FindCoordinator (v3, group key) asked of a reachable node.
    pub fn coordinator(&self, group: &str) -> Result<u64, String> {
        self.find_coordinator(group, 0)
    }

    /// FindCoordinator (v3, transaction key) asked of a reachable node.
    pub fn txn_coordinator(&self, transactional_id: &str) -> Result<u64, String> {
        self.find_coordinator(transactional_id, 1)
    }

    fn find_coordinator(&self, key: &str, key_type: i8) -> Result<u64, String> {
        let mut req = FindCoordinatorRequest::default();
        req.key = StrBytes::from_string(key.to_string());
        req.key_type = key_type;
        let mut last = "no reachable node".to_string();
        for id in self.reachable() {
            let resp: Result<FindCoordinatorResponse, _> = raw_call(
                self.node(id).kafka_port,
                ApiKey::FindCoordinator,
                3,
                &req,
                RAW_TIMEOUT,
            );
            match resp {
                Ok(r) if r.error_code == 0 && r.node_id.0 >= 1 => return Ok(r.node_id.0 as u64),
                Ok(r) => last = format!("node {id}: error {} node {}", r.error_code, r.node_id.0),
                Err(e) => last = format!("node {id}: {e}"),
            }
        }
        Err(last)
    }

    // ------------------------------------------------------------ rdkafka

    /// Every node's advertised address, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.bootstrap_of(&self.ids())
    }

    pub fn bootstrap_of(&self, ids: &[u64]) -> String {
        ids.iter()
            .map(|id| format!("127.0.0.1:{}", self.node(*id).advertised_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap())
            .set("broker.address.family", "v4")
            .set("socket.timeout.ms", "10000")
            .set("message.timeout.ms", "30000")
            .set("topic.metadata.refresh.interval.ms", "2000")
            .set("reconnect.backoff.max.ms", "1000");
        c
    }

    pub fn producer(&self, extra: &[(&str, &str)]) -> FutureProducer {
        let mut c = self.client_config();
        c.set("linger.ms", "5");
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c.create().expect("producer")
    }

    /// A consumer for `assign()` (no commits, no group coordination).
    pub fn consumer(&self) -> BaseConsumer {
        let mut c = self.client_config();
        c.set("group.id", "sluice-cluster-tests")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        c.create().expect("consumer")
    }

    pub fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.client_config().create().expect("admin")
    }

    /// CreateTopics through the admin API (`replication_factor` -1 for the
    /// default); on success waits until every reachable node shows every
    /// partition with a leader.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i32,
        configs: &[(&str, &str)],
    ) -> Result<(), RDKafkaErrorCode> {
        let admin = self.admin();
        let mut topic = NewTopic::new(
            name,
            partitions,
            TopicReplication::Fixed(replication_factor),
        );
        for (k, v) in configs {
            topic = topic.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = futures::executor::block_on(admin.create_topics([&topic], &opts))
            .unwrap_or_else(|e| panic!("create_topics {name}: {e}"));
        for r in results {
            r.map_err(|(_, e)| e)?;
        }
        self.wait_topic(name, partitions, Duration::from_secs(60));
        Ok(())
    }

    /// Waits until every reachable node shows `topic` with `partitions`
    /// partitions, each with a leader.
    pub fn wait_topic(&self, topic: &str, partitions: i32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let mut ok = true;
            for id in self.reachable() {
                match self.metadata_from(id, Some(&[topic])) {
                    Ok(v) => match v.topics.get(topic) {
                        Some((0, parts))
                            if parts.len() == partitions as usize
                                && parts.iter().all(|p| p.leader >= 1) => {}
                        other => {
                            ok = false;
                            last = format!("node {id}: {other:?}");
                        }
                    },
                    Err(e) => {
                        ok = false;
                        last = e;
                    }
                }
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: {partitions} led partitions not seen within {timeout:?} (last: {last})"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Reads every partition of `topic` from offset 0 up to its high
    /// watermark (asked of the leaders) and returns the records by
    /// partition, in offset order. Errors from the client while leaders
    /// move are retried until `timeout`.
    pub fn read_all(
        &self,
        topic: &str,
        partitions: i32,
        timeout: Duration,
    ) -> BTreeMap<i32, Vec<Consumed>> {
        let deadline = Instant::now() + timeout;
        let c = self.consumer();
        let mut ends = BTreeMap::new();
        for p in 0..partitions {
            loop {
                match c.fetch_watermarks(topic, p, Duration::from_secs(5)) {
                    Ok((_, high)) => {
                        ends.insert(p, high);
                        break;
                    }
                    Err(e) => {
                        assert!(Instant::now() < deadline, "{topic}/{p}: watermarks: {e}");
                        std::thread::sleep(POLL);
                    }
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            if ends[&p] > 0 {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .expect("tpl");
            }
        }
        let mut out: BTreeMap<i32, Vec<Consumed>> =
            (0..partitions).map(|p| (p, Vec::new())).collect();
        if tpl.count() == 0 {
            return out;
        }
        c.assign(&tpl).expect("assign");
        let done = |out: &BTreeMap<i32, Vec<Consumed>>| {
            out.iter()
                .all(|(p, v)| v.last().map_or(-1, |m| m.offset) + 1 >= ends[p])
        };
        while !done(&out) {
            assert!(
                Instant::now() < deadline,
                "{topic}: not read to the end within {timeout:?}: have {:?}, want {ends:?}",
                out.iter()
                    .map(|(p, v)| (*p, v.last().map_or(-1, |m| m.offset)))
                    .collect::<Vec<_>>()
            );
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => out.entry(m.partition()).or_default().push(Consumed {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    timestamp: m.timestamp().to_millis(),
                }),
                Some(Err(e)) => eprintln!("{topic}: consumer: {e} (retrying)"),
                None => {}
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(l) = &self.links {
            let conns = lock(&l.conns);
            l.stop.store(true, Ordering::SeqCst);
            for c in conns.iter() {
                c.close();
            }
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        if let Some(l) = &self.links {
            let threads = std::mem::take(&mut *lock(&l.threads));
            for t in threads {
                let _ = t.join();
            }
        }
        let ids = self.ids();
        for id in ids {
            self.kill(id);
        }
        if std::thread::panicking() {
            // The whole logs outlive the temp dir, for a look after the run.
            let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "cluster-logs/{}-{}",
                std::process::id(),
                std::thread::current()
                    .name()
                    .unwrap_or("test")
                    .replace("::", "-")
            ));
            let _ = std::fs::create_dir_all(&keep);
            for n in &self.nodes {
                let kept = keep.join(format!("node-{}.log", n.id));
                let _ = std::fs::copy(&n.log, &kept);
                eprintln!(
                    "---- node {} log (last {LOG_TAIL_LINES} lines; all of it in {}) ----\n{}",
                    n.id,
                    kept.display(),
                    n.log_tail()
                );
            }
        }
        let _ = &self.tmp;
    }
}

// ---------------------------------------------------------------- metadata

/// One partition as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub index: i32,
    pub error: i16,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
}

/// A Metadata answer.
#[derive(Debug, Clone)]
pub struct View {
    pub cluster_id: Option<String>,
    pub controller: i32,
    /// Broker id -> (host, port).
    pub brokers: BTreeMap<i32, (String, i32)>,
    /// Topic -> (error code, partitions by index).
    pub topics: BTreeMap<String, (i16, Vec<PartitionView>)>,
}

impl View {
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionView> {
        self.topics
            .get(topic)?
            .1
            .iter()
            .find(|p| p.index == partition)
    }
}

impl From<MetadataResponse> for View {
    fn from(r: MetadataResponse) -> View {
        let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<i32>>();
        View {
            cluster_id: r.cluster_id.map(|s| s.to_string()),
            controller: r.controller_id.0,
            brokers: r
                .brokers
                .iter()
                .map(|b| (b.node_id.0, (b.host.to_string(), b.port)))
                .collect(),
            topics: r
                .topics
                .iter()
                .map(|t| {
                    let mut parts: Vec<PartitionView> = t
                        .partitions
                        .iter()
                        .map(|p| PartitionView {
                            index: p.partition_index,
                            error: p.error_code,
                            leader: p.leader_id.0,
                            leader_epoch: p.leader_epoch,
                            replicas: ids(&p.replica_nodes),
                            isr: ids(&p.isr_nodes),
                            offline: ids(&p.offline_replicas),
                        })
                        .collect();
                    parts.sort_by_key(|p| p.index);
                    (
                        t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                        (t.error_code, parts),
                    )
                })
                .collect(),
        }
    }
}

/// One request to `127.0.0.1:port`, answered within `timeout`.
pub fn raw_call<Req: Encodable, Resp: Decodable>(
    port: u16,
    key: ApiKey,
    version: i16,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(&request_frame(key, version, 11, req))
        .map_err(|e| format!("write: {e}"))?;
    let mut size = [0u8; 4];
    s.read_exact(&mut size).map_err(|e| format!("read: {e}"))?;
    let len = usize::try_from(i32::from_be_bytes(size)).map_err(|_| "negative size".to_string())?;
    if len > 64 << 20 {
        return Err(format!("response of {len} bytes"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
    let mut bytes = Bytes::from(body);
    let header = ResponseHeader::decode(&mut bytes, key.response_header_version(version))
        .map_err(|e| format!("header: {e}"))?;
    if header.correlation_id != 11 {
        return Err(format!("correlation id {}", header.correlation_id));
    }
    let resp = Resp::decode(&mut bytes, version).map_err(|e| format!("body: {e}"))?;
    if bytes.has_remaining() {
        return Err("trailing bytes".into());
    }
    Ok(resp)
}

/// p50 and p99 (nearest rank) of `samples`.
pub fn p50_p99(samples: &[Duration]) -> (Duration, Duration) {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    (rank(0.50), rank(0.99))
}

// ---------------------------------------------------------------- link proxies

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Links {
    stop: AtomicBool,
    /// By node index: cut off.
    cut: Vec<AtomicBool>,
    /// By node index: the running process.
    pids: Mutex<Vec<Option<u32>>>,
    /// Proxied connections (closed ones are pruned at each accept).
    conns: Mutex<Vec<Arc<Link>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    refused: AtomicUsize,
}

/// One proxied connection.
struct Link {
    /// Node index that opened it; `None` for a client.
    from: Option<usize>,
    /// Node index it goes to.
    to: usize,
    down: TcpStream,
    up: TcpStream,
    /// Pumps still running (two at the start).
    pumps: AtomicUsize,
}

impl Link {
    fn close(&self) {
        let _ = self.down.shutdown(Shutdown::Both);
        let _ = self.up.shutdown(Shutdown::Both);
    }
}

/// One thread accepts on every proxy listener: (listener, node index it
/// leads to, upstream port).
fn accept_loop(listeners: &[(TcpListener, usize, u16)], links: &Arc<Links>) {
    while !links.stop.load(Ordering::SeqCst) {
        let mut idle = true;
        for (listener, to, upstream) in listeners {
            match listener.accept() {
                Ok((client, peer)) => {
                    idle = false;
                    let local = listener.local_addr().expect("proxy addr");
                    serve(client, peer, local, *to, *upstream, links);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {}
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn serve(
    client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    to: usize,
    upstream: u16,
    links: &Arc<Links>,
) {
    let pids: Vec<(usize, u32)> = lock(&links.pids)
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| (i, p)))
        .collect();
    let from = socket_inode(peer, local).and_then(|inode| owner(inode, &pids));
    let is_cut = |i: usize| links.cut[i].load(Ordering::SeqCst);
    if is_cut(to) || from.is_some_and(is_cut) {
        links.refused.fetch_add(1, Ordering::Relaxed);
        return; // dropping `client` closes it
    }
    let Ok(server) = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], upstream)),
        Duration::from_secs(2),
    ) else {
        return;
    };
    let setup = |s: &TcpStream| -> std::io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(PUMP_POLL))?;
        s.set_write_timeout(Some(PUMP_WRITE_TIMEOUT))?;
        s.set_nodelay(true)
    };
    if setup(&client).is_err() || setup(&server).is_err() {
        return;
    }
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        return;
    };
    let link = Arc::new(Link {
        from,
        to,
        down: c3,
        up: s3,
        pumps: AtomicUsize::new(2),
    });
    {
        // Registered under the lock `cut` and drop take, after looking at
        // their flags again: a cut never misses a connection.
        let mut conns = lock(&links.conns);
        conns.retain(|c| c.pumps.load(Ordering::SeqCst) > 0);
        if links.stop.load(Ordering::SeqCst)
            || is_cut(to)
            || from.is_some_and(is_cut)
            || conns.len() >= LINKS_MAX
        {
            links.refused.fetch_add(1, Ordering::Relaxed);
            link.close();
            return;
        }
        conns.push(Arc::clone(&link));
    }
    let mut threads = lock(&links.threads);
    threads.retain(|t| !t.is_finished());
    for (name, a, b) in [("up", client, server), ("down", s2, c2)] {
        let (l, ls) = (Arc::clone(&link), Arc::clone(links));
        // One test-process thread per direction of a proxied connection
        // (blocking copies); finished ones are reaped above.
        let t = std::thread::Builder::new()
            .name(format!("cluster-proxy-{name}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                pump(a, b, &ls);
                l.pumps.fetch_sub(1, Ordering::SeqCst);
            })
            .expect("spawn pump");
        threads.push(t);
    }
}

/// Copies `from` to `to` until `from` ends (then half-closes `to`), an
/// error (then closes both) or the stop flag.
fn pump(mut from: TcpStream, mut to: TcpStream, links: &Links) {
    let mut buf = vec![0u8; PUMP_CHUNK_BYTES];
    while !links.stop.load(Ordering::SeqCst) {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// The inode of the socket whose local address is `local` and remote
/// address `remote` (the other end of a connection the proxy accepted).
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && proc_addr_is(f[1], local, v6) && proc_addr_is(f[2], remote, v6) {
                return f[9].parse().ok().filter(|i| *i != 0);
            }
        }
    }
    None
}

/// Whether `/proc/net/tcp{,6}`'s `HEX:PORT` is the IPv4 `addr` (mapped to
/// IPv6 in `tcp6`).
fn proc_addr_is(hex: &str, addr: SocketAddr, v6: bool) -> bool {
    let (SocketAddr::V4(a), Some((ip, port))) = (addr, hex.split_once(':')) else {
        return false;
    };
    if u16::from_str_radix(port, 16).ok() != Some(a.port()) {
        return false;
    }
    // The kernel prints each 32-bit word of the address in host order.
    let v4 = format!("{:08X}", u32::from_ne_bytes(a.ip().octets()));
    if v6 {
        let ffff = format!("{:08X}", u32::from_ne_bytes([0, 0, 0xff, 0xff]));
        ip == format!("0000000000000000{ffff}{v4}")
    } else {
        ip == v4
    }
}

/// The node index whose process holds socket `inode`.
fn owner(inode: u64, pids: &[(usize, u32)]) -> Option<usize> {
    let target = format!("socket:[{inode}]");
    pids.iter().find_map(|(i, pid)| {
        let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        dir.filter_map(Result::ok)
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == target.as_str()))
            .then_some(*i)
    })
}
