//! Test harness: starts the real `sluice` broker on free loopback ports,
//! runs the `sluice-bench` binary against it, and reads the broker's end
//! offsets with an independent rdkafka consumer.
//!
//! The broker binary comes from `SLUICE_BIN`, else
//! `<target dir>/debug/sluice`; when that is absent it is built once per
//! test process with `cargo build -p sluice --bin sluice`.

#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::Value;

const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("bench/ sits in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The broker binary, built once when it is missing.
pub fn sluice_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(path);
    }
    let path = target_dir().join("debug").join("sluice");
    static BUILD: Once = Once::new();
    if !path.exists() {
        BUILD.call_once(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "sluice", "--bin", "sluice"])
                .current_dir(workspace_root())
                .status()
                .expect("running cargo build -p sluice");
            assert!(
                status.success(),
                "cargo build -p sluice --bin sluice failed: {status}"
            );
        });
    }
    assert!(path.exists(), "no broker binary at {}", path.display());
    path
}

#[path = "../../../broker/tests/common/ports.rs"]
mod ports;
pub use ports::free_port;

/// A running broker; killed when dropped.
pub struct Broker {
    child: Child,
    pub bootstrap: String,
    data_dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_on(free_port(), &[])
    }

    /// A broker listening on `kafka_port`, with `extra` flags.
    #[allow(dead_code)] // not every test binary uses every helper
    pub fn start_on(kafka_port: u16, extra: &[&str]) -> Broker {
        let bin = sluice_bin();
        let data_dir = tempfile::tempdir().expect("tempdir");
        let admin_port = free_port();
        let log = File::create(data_dir.path().join("broker.log")).expect("broker log");
        let child = Command::new(&bin)
            .arg("start")
            .args(["--listen", &format!("127.0.0.1:{kafka_port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(extra)
            .arg("--data-dir")
            .arg(data_dir.path().join("data"))
            .args(["--shards", "1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut broker = Broker {
            child,
            bootstrap: format!("127.0.0.1:{kafka_port}"),
            data_dir,
        };
        broker.wait_until_accepting();
        broker
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("broker.log")).unwrap_or_default()
    }

    fn wait_until_accepting(&mut self) {
        let addr: SocketAddr = self.bootstrap.parse().expect("socket address");
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "broker exited during start ({status}); log:\n{}",
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not accept on {addr}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("broker log:\n{}", self.log());
        }
    }
}

/// Result of one `sluice-bench` run.
pub struct BenchRun {
    pub output: Output,
    pub stdout: String,
    pub stderr: String,
}

impl BenchRun {
    /// The last stdout line, parsed as JSON.
    pub fn json(&self) -> Value {
        let last = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("no stdout; stderr:\n{}", self.stderr));
        serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
    }
}

pub fn bench_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-bench"));
    command.args(args).stdin(Stdio::null());
    command
}

/// Runs `sluice-bench`, asserting it succeeds.
pub fn run_bench(args: &[&str]) -> BenchRun {
    let output = bench_command(args).output().expect("running sluice-bench");
    let run = BenchRun {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        output,
    };
    assert!(
        run.output.status.success(),
        "sluice-bench {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        run.output.status,
        run.stdout,
        run.stderr
    );
    run
}

/// Records in a topic according to the broker: the sum over partitions of
/// high minus low watermark.
pub fn records_in_topic(bootstrap: &str, topic: &str) -> u64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-bench-tests")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .expect("metadata");
    let entry = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("topic in metadata");
    assert!(
        !entry.partitions().is_empty(),
        "topic {topic} has no partitions"
    );
    entry
        .partitions()
        .iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), REQUEST_TIMEOUT)
                .expect("watermarks");
            assert!(0 <= low && low <= high, "watermarks {low}..{high}");
            (high - low) as u64
        })
        .sum()
}

/// Asserts `latency_us` has p50 <= p90 <= ... <= max.
pub fn assert_percentiles_monotone(json: &Value) {
    let latency = &json["latency_us"];
    let keys = ["p50", "p90", "p99", "p999", "p9999", "max"];
    let values: Vec<u64> = keys
        .iter()
        .map(|k| {
            latency[k]
                .as_u64()
                .unwrap_or_else(|| panic!("latency_us.{k} missing in {json}"))
        })
        .collect();
    // max is the exact maximum; percentiles are bucket upper bounds, at most
    // 0.1% above it.
    let (percentiles, max) = (&values[..5], values[5]);
    assert!(
        percentiles.windows(2).all(|w| w[0] <= w[1]),
        "percentiles not monotone: {latency}"
    );
    assert!(
        percentiles[4] <= max + max / 1000 + 1,
        "p99.99 above max: {latency}"
    );
}

/// Asserts the fields every `--json` line has.
pub fn assert_common_fields(json: &Value) {
    for key in ["seconds", "messages", "msgs_per_sec", "mb_per_sec"] {
        assert!(json[key].is_number(), "{key} missing in {json}");
    }
}
