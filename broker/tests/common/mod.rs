//! Test harness: runs the real `sluice` binary on free loopback ports with
//! a temporary data dir, and kills it on drop. Helpers for rdkafka clients
//! and for raw Kafka frames over a std `TcpStream`.

#![allow(dead_code)]

mod corpus;
pub mod pki;
mod ports;

#[allow(unused_imports)]
pub use corpus::{corpus_dir, corpus_frames, split_request_frames};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const START_TIMEOUT: Duration = Duration::from_secs(60);

pub use ports::free_port;

/// A running broker process.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    pub data_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    starts: usize,
    _tmp: Option<tempfile::TempDir>,
}

impl Broker {
    /// A broker with `shards` shards on a fresh data dir.
    pub fn start(shards: u32) -> Broker {
        Broker::start_with(shards, &[])
    }

    /// A broker with extra command-line arguments.
    pub fn start_with(shards: u32, extra: &[&str]) -> Broker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut b = Broker::launch(&dir, free_port(), shards, extra);
        b._tmp = Some(tmp);
        b
    }

    /// A broker whose `extra` arguments give `--listeners`; `port` is one
    /// of them (the readiness check and `bootstrap()` use it).
    pub fn start_on(port: u16, shards: u32, extra: &[&str]) -> Broker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut b = Broker::launch(&dir, port, shards, extra);
        b._tmp = Some(tmp);
        b
    }

    fn launch(dir: &Path, port: u16, shards: u32, extra: &[&str]) -> Broker {
        let admin_port = free_port();
        let mut args: Vec<String> = vec![
            "start".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin_port}"),
            "--shards".into(),
            shards.to_string(),
        ];
        if !extra.contains(&"--listeners") {
            args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        }
        if !extra.contains(&"--memory") {
            args.extend(["--memory".into(), format!("{}MiB", 256 * shards)]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir
            .parent()
            .expect("parent")
            .join(format!("sluice-{port}.log"));
        let mut b = Broker {
            child: None,
            port,
            admin_port,
            data_dir: dir.to_path_buf(),
            log,
            args,
            starts: 0,
            _tmp: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(self.data_dir.parent().expect("parent")).expect("mkdir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&self.args)
            .env("RUST_LOG", "info,sluice=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        self.child = Some(child);
        self.starts += 1;
        self.wait_ready();
    }

    /// After a SIGKILL the kernel tears the old process's io_uring down
    /// asynchronously; until then its listening socket still completes
    /// handshakes, and the new process would refuse the port as taken.
    fn wait_port_released(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                panic!(
                    "sluice exited during start-up ({status}):\n{}",
                    self.log_text()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.log_text().matches("sluice ready").count() >= self.starts
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not start in time:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, no cleanup by the broker.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = i32::try_from(c.id()).expect("pid");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("sluice did not stop on SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the binary again on the same data dir and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.wait_port_released();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- sluice log ----\n{}", self.log_text());
        }
    }
}

// ---------------------------------------------------------------- rdkafka

pub fn client_config(b: &Broker) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", b.bootstrap())
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        .set("message.timeout.ms", "20000");
    c
}

pub fn producer(b: &Broker, extra: &[(&str, &str)]) -> FutureProducer {
    let mut c = client_config(b);
    c.set("linger.ms", "5");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("producer")
}

pub fn consumer(b: &Broker) -> BaseConsumer {
    let mut c = client_config(b);
    // assign() needs a group id; offsets are explicit and never committed,
    // so no group coordinator is involved.
    c.set("group.id", "sluice-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    c.create().expect("consumer")
}

/// Creates a topic through the admin API (CreateTopics) and waits for it.
pub fn create_topic(b: &Broker, name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = client_config(b).create().expect("admin");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results =
        futures::executor::block_on(admin.create_topics([&topic], &opts)).expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }
}

/// Sends `(partition, key, value, timestamp)` records and returns the
/// acknowledged `(partition, offset)` of each, in order.
pub fn produce_all(
    p: &FutureProducer,
    topic: &str,
    records: &[(i32, String, String, Option<i64>)],
) -> Vec<(i32, i64)> {
    let futures: Vec<_> = records
        .iter()
        .map(|(partition, key, value, ts)| {
            let mut r = FutureRecord::to(topic)
                .partition(*partition)
                .key(key.as_str())
                .payload(value.as_str());
            if let Some(ts) = ts {
                r = r.timestamp(*ts);
            }
            p.send_result(r).map_err(|(e, _)| e).expect("enqueue")
        })
        .collect();
    futures
        .into_iter()
        .map(|f| {
            let delivery = futures::executor::block_on(f).expect("delivery future canceled");
            let d = delivery.unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"));
            (d.partition, d.offset)
        })
        .collect()
}

/// One consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: String,
    pub timestamp: Option<i64>,
}

/// Reads every partition of `topic` from the beginning until `expected`
/// records arrived (or the timeout passed).
pub fn consume_all(
    b: &Broker,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    let c = consumer(b);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(Consumed {
                partition: m.partition(),
                offset: m.offset(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                timestamp: m.timestamp().to_millis(),
            }),
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    out
}

/// A healthy client still works: produce one record and read it back.
pub fn assert_healthy(b: &Broker) {
    let topic = "healthcheck";
    let p = producer(b, &[("acks", "all")]);
    let value = format!("alive-{}", Instant::now().elapsed().as_nanos());
    let acked = produce_all(&p, topic, &[(0, "k".into(), value.clone(), None)]);
    let offset = acked[0].1;
    let got = consume_all(
        b,
        topic,
        1,
        usize::try_from(offset + 1).expect("offset"),
        Duration::from_secs(20),
    );
    assert!(
        got.iter().any(|m| m.offset == offset && m.value == value),
        "healthy client did not read its record back"
    );
}

// ---------------------------------------------------------------- raw frames

/// Encodes a request frame (size prefix, header, body).
pub fn request_frame<T: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Vec<u8> {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str("raw-test"));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, key.request_header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    let size = i32::try_from(buf.len() - 4).expect("size");
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf.to_vec()
}

pub fn connect(b: &Broker) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", b.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s
}

/// Reads one response frame; `None` when the broker closed the connection.
pub fn read_response(s: &mut TcpStream) -> Option<Bytes> {
    let mut size = [0u8; 4];
    match s.read_exact(&mut size) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("read: {e}"),
    }
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).expect("response body");
    Some(Bytes::from(body))
}

/// Sends a request and decodes the response of the same version.
pub fn call<Req: Encodable, Resp: Decodable>(
    s: &mut TcpStream,
    key: ApiKey,
    version: i16,
    req: &Req,
) -> Resp {
    s.write_all(&request_frame(key, version, 7, req))
        .expect("write");
    let mut bytes = read_response(s).expect("a response, not a closed connection");
    let header = ResponseHeader::decode(&mut bytes, key.response_header_version(version))
        .expect("response header");
    assert_eq!(header.correlation_id, 7);
    let resp = Resp::decode(&mut bytes, version).expect("response body");
    assert!(!bytes.has_remaining(), "trailing bytes in response");
    resp
}

/// `records` as one uncompressed record batch (magic 2).
pub fn encode_batch(records: &[kafka_protocol::records::Record]) -> Bytes {
    use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &options).expect("encode batch");
    buf.freeze()
}

/// Asserts the broker closes `s` (reads EOF) within the read timeout.
pub fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(_) => panic!("expected the connection to be closed, got bytes"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected a closed connection, got {e}"),
    }
}

// ---------------------------------------------------------------- other clients

/// Runs `cmd` to completion with `stdin` as its input, killing it when it
/// outlives `limit`; stdout and stderr go through temp files, so a chatty
/// process never blocks on a full pipe.
pub fn run_bounded(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> std::process::Output {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out_path = tmp.path().join("stdout");
    let err_path = tmp.path().join("stderr");
    let out = std::fs::File::create(&out_path).expect("stdout file");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input).expect("write stdin");
        // Dropping the pipe closes it: the child sees end of input.
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}:\n{}\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: std::fs::read(&out_path).expect("read stdout"),
        stderr: std::fs::read(&err_path).expect("read stderr"),
    }
}

/// Plain HTTP/1.1 GET on the broker's admin port; asserts a 200 and
/// returns the body.
pub fn http_get(b: &Broker, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", b.admin_port)).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    assert!(text.starts_with("HTTP/1.1 200"), "GET {path}: {text}");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    body.to_string()
}

/// The sum of a `/metrics` family's samples over all its label sets (every
/// shard); `None` when the family has no sample.
pub fn metric_sum(b: &Broker, name: &str) -> Option<u64> {
    let text = http_get(b, "/metrics");
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum::<f64>() as u64)
}

// ---------------------------------------------------------------- process and limits

impl Broker {
    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the broker process is still running (not exited: an exited
    /// child stays a zombie until reaped, so its state is read, not just
    /// its presence).
    pub fn alive(&self) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        matches!(state, Some(s) if s != 'Z' && s != 'X')
    }

    /// The broker's resident set size (`VmRSS` of `/proc/PID/status`), bytes.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.pid().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .expect("VmRSS")
    }
}

/// The `/metrics` samples of family `name` whose labels contain `label`
/// (`key="value"`), as values.
pub fn metric_samples_where(b: &Broker, name: &str, label: &str) -> Vec<f64> {
    let text = http_get(b, "/metrics");
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|rest| {
            rest.split_once('}')
                .is_some_and(|(labels, _)| labels.contains(label))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}

/// The sum of the samples of `name` whose labels contain `label`.
pub fn metric_sum_where(b: &Broker, name: &str, label: &str) -> Option<u64> {
    let samples = metric_samples_where(b, name, label);
    (!samples.is_empty()).then(|| samples.iter().sum::<f64>() as u64)
}

/// The smallest sample of `name` whose labels contain `label` (e.g. the
/// smallest shard's pool).
pub fn metric_min_where(b: &Broker, name: &str, label: &str) -> Option<u64> {
    let samples = metric_samples_where(b, name, label);
    samples.into_iter().reduce(f64::min).map(|v| v as u64)
}

/// Raises this process's open-file limit to at least `wanted` (within the
/// hard limit), so tests can hold thousands of sockets; the broker it
/// spawns afterwards inherits it. Panics when the hard limit is lower.
pub fn raise_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    assert!(
        limit.rlim_max >= wanted as libc::rlim_t,
        "RLIMIT_NOFILE hard limit {} is below {wanted}",
        limit.rlim_max
    );
    if limit.rlim_cur < wanted as libc::rlim_t {
        limit.rlim_cur = wanted as libc::rlim_t;
        // SAFETY: as above.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    }
}

// ---------------------------------------------------------------- corpus of client traffic

/// Topics the stored corpus (`tests/corpus/`) names, with their partition
/// counts: the capture creates them, and a replay creates them first so
/// that the recorded requests reach partitions.
pub const CORPUS_TOPICS: &[(&str, i32)] = &[
    ("corpus-rk", 3),
    ("corpus-rk-doomed", 2),
    ("corpus-py", 2),
    ("corpus-py-doomed", 2),
    ("corpus-js", 2),
    ("corpus-js-doomed", 2),
];

/// The `(api key, api version)` of a framed request (size prefix first).
pub fn frame_key_version(frame: &[u8]) -> (i16, i16) {
    assert!(frame.len() >= 8, "a request frame has a header");
    (
        i16::from_be_bytes([frame[4], frame[5]]),
        i16::from_be_bytes([frame[6], frame[7]]),
    )
}

impl Broker {
    /// The exit status once the process has exited (reaps it); `None`
    /// while it runs or after `kill`/`terminate`.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

/// Installs `tests/python/requirements.txt` with pip when one of its
/// packages (kafka-python, pytest, the Elasticsearch and OpenSearch
/// clients) is missing, so `cargo test` alone runs on a fresh machine.
pub fn ensure_python_requirements() {
    let present = Command::new("python3")
        .args(["-c", "import kafka, pytest, elasticsearch, opensearchpy"])
        .stderr(Stdio::null())
        .status()
        .expect("python3 must be installed")
        .success();
    if present {
        return;
    }
    let req = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/requirements.txt");
    let out = run_bounded(
        Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            req,
        ]),
        None,
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "pip install -r {req} failed");
}

/// Runs `npm ci` in `tests/node` (the pinned kafkajs of its
/// `package-lock.json`) when kafkajs is not installed; returns its
/// `node_modules` directory.
pub fn ensure_node_modules() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    let modules = dir.join("node_modules");
    if modules.join("kafkajs/package.json").exists() {
        return modules;
    }
    let out = run_bounded(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
        None,
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "npm ci in {} failed ({}):\n{}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    modules
}

impl Broker {
    /// The file the broker's stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

// ---------------------------------------------------------------- search (Elasticsearch-compatible API)

/// An HTTP answer of the admin port: status, headers (names in lower
/// case) and body (chunked transfer decoded).
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to the broker's admin port (`Connection: close`),
/// any method, with an optional JSON body; any status is returned.
pub fn http_request(b: &Broker, method: &str, path: &str, body: Option<&str>) -> HttpReply {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let url = format!("http://127.0.0.1:{}{path}", b.admin_port);
    let req = agent.request(method, &url).set("Connection", "close");
    let result = match body {
        Some(body) => req
            .set("Content-Type", "application/json")
            .send_string(body),
        None => req.call(),
    };
    let response = match result {
        Ok(response) => response,
        // ureq reports 4xx and 5xx as errors; they are answers here.
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = response.status();
    let mut headers: Vec<(String, String)> = Vec::new();
    for name in response.headers_names() {
        if headers.iter().any(|(k, _)| *k == name) {
            continue;
        }
        for value in response.all(&name) {
            headers.push((name.clone(), value.to_string()));
        }
    }
    let mut raw = Vec::new();
    response
        .into_reader()
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path}: read body: {e}"));
    HttpReply {
        status,
        headers,
        body: String::from_utf8_lossy(&raw).into_owned(),
    }
}

impl Broker {
    /// The broker's peak resident set size (`VmHWM` of `/proc/PID/status`),
    /// bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let pid = self.pid().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .expect("VmHWM")
    }

    /// CPU time the broker used so far (user + system, every thread),
    /// from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.pid().expect("running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        // Fields after the command name (in parentheses): state is field 3,
        // utime 14 and stime 15 (1-based), in clock ticks.
        let rest = stat.rsplit_once(") ").map(|(_, r)| r).expect("stat format");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }
}

/// Now, in Unix ms: the timestamp of hand-built records, which retention
/// (7 days by default) would expire at once if it were long past.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
