//! Failover of a 3-node cluster under kafka-python's idempotent acks=all
//! producer (`tests/python/cluster_failover.py`): the cluster of the real
//! `sluice` binary on loopback (`common/cluster.rs`), a topic with RF=3 and
//! `min.insync.replicas=2`, the script writing keyed, numbered records
//! while this test SIGKILLs and restarts nodes: the leader of a partition
//! and another node, each back after a pause about the broker lease (it
//! may return before it is fenced), then the controller and a leader
//! again, each down until a new controller or leader took over. The script
//! then reads every partition back and exits non-zero on any acknowledged
//! record lost, duplicated, moved or out of order; this test asserts its
//! exit status and prints how long writes took to resume after each kill.
//!
//! Needs python3 with `tests/python/requirements.txt` (installed when
//! missing). Settings: `SLUICE_CLUSTER_PY_KILLS` (default 4),
//! `SLUICE_CLUSTER_KILL_PAUSE_MS` (shortest time a killed node stays
//! down, 2000), `SLUICE_TEST_LOG` (the nodes' log filter).

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster::{p50_p99, Cluster, ClusterOptions};

const TOPIC: &str = "py-failover";
const PARTITIONS: i32 = 4;
/// Leader changes, ISR changes and catch-up finish within this.
const SETTLE: Duration = Duration::from_secs(60);
/// Writes resume after a kill within this.
const RESUME: Duration = Duration::from_secs(60);
/// Acknowledgements before the first kill (or `WARM` elapsed).
const WARM_ACKS: usize = 500;
const WARM: Duration = Duration::from_secs(20);
/// More acknowledgements after the last restart (or `TAIL` elapsed).
const TAIL_ACKS: usize = 300;
const TAIL: Duration = Duration::from_secs(20);
/// Bounds handed to the script's write loop: the driver's `STOP` ends it,
/// these only if the driver is gone (its phases may take minutes on a
/// loaded machine: up to a minute each to settle, restart and resume).
const SCRIPT_WRITE_SECONDS: u64 = 900;
const SCRIPT_MAX_RECORDS: u64 = 200_000;
/// The script's flush and read-back after `STOP`.
const SCRIPT_FINISH: Duration = Duration::from_secs(150);
/// Sleep between two looks at a condition.
const POLL: Duration = Duration::from_millis(20);
/// Lines of the script's stderr printed on failure.
const STDERR_TAIL_LINES: usize = 80;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// An acknowledgement the script reported.
#[derive(Debug, Clone, Copy)]
struct Ack {
    partition: i32,
    sent_ms: u64,
    acked_ms: u64,
}

#[derive(Default)]
struct Output {
    acks: Vec<Ack>,
    /// Every other stdout line.
    lines: Vec<String>,
}

/// The running script; killed on drop (a failed test leaves nothing).
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Output>>,
    reader: Option<JoinHandle<()>>,
    stderr: tempfile::NamedTempFile,
}

impl Script {
    fn start(c: &Cluster) -> Script {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/cluster_failover.py"
        );
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let mut child = Command::new("python3")
            .args(["-u", path])
            .env("SLUICE_BOOTSTRAP", c.bootstrap())
            .env("SLUICE_TOPIC", TOPIC)
            .env("SLUICE_PARTITIONS", PARTITIONS.to_string())
            .env("SLUICE_MAX_SECONDS", SCRIPT_WRITE_SECONDS.to_string())
            .env("SLUICE_MAX_RECORDS", SCRIPT_MAX_RECORDS.to_string())
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("stderr file"))
            .spawn()
            .expect("python3 must be installed (with tests/python/requirements.txt)");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout pipe");
        let out = Arc::new(Mutex::new(Output::default()));
        let reader = {
            let out = Arc::clone(&out);
            // A test-process thread drains the script's stdout, so the child never
            // blocks on a full pipe while the test kills nodes.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut o = out.lock().unwrap();
                    match parse_ack(&line) {
                        Some(a) => o.acks.push(a),
                        None => {
                            eprintln!("py: {line}");
                            o.lines.push(line);
                        }
                    }
                }
            })
        };
        Script {
            child,
            stdin,
            out,
            reader: Some(reader),
            stderr,
        }
    }

    fn acks(&self) -> usize {
        self.out.lock().unwrap().acks.len()
    }

    /// Panics (with its output) when the script ended early.
    fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "the script exited early ({status}):\n{}\n{}",
                self.out.lock().unwrap().lines.join("\n"),
                self.stderr_tail()
            );
        }
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
    }

    /// Time from `kill_ms` until every partition acknowledged a record sent
    /// after it (`None` when that takes longer than `RESUME`).
    fn resume_delay(&mut self, kill_ms: u64) -> Option<Duration> {
        let deadline = Instant::now() + RESUME;
        loop {
            let firsts: Vec<Option<u64>> = {
                let o = self.out.lock().unwrap();
                (0..PARTITIONS)
                    .map(|p| {
                        o.acks
                            .iter()
                            .filter(|a| a.partition == p && a.sent_ms >= kill_ms)
                            .map(|a| a.acked_ms)
                            .min()
                    })
                    .collect()
            };
            if firsts.iter().all(Option::is_some) {
                let last = firsts.into_iter().flatten().max()?;
                return Some(Duration::from_millis(last.saturating_sub(kill_ms)));
            }
            if Instant::now() > deadline {
                return None;
            }
            self.check_alive();
            std::thread::sleep(POLL);
        }
    }

    /// Ends the write loop and waits (bounded) for the verdict.
    fn finish(&mut self) -> std::process::ExitStatus {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"STOP\n");
        }
        let deadline = Instant::now() + SCRIPT_FINISH;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the script did not finish within {SCRIPT_FINISH:?} of STOP:\n{}\n{}",
                    self.out.lock().unwrap().lines.join("\n"),
                    self.stderr_tail()
                );
            }
            std::thread::sleep(POLL);
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the reachable nodes agree on a controller other than `not`.
fn wait_new_controller(c: &Cluster, not: u64) -> u64 {
    let deadline = Instant::now() + SETTLE;
    loop {
        match c.controller() {
            Some(id) if id != not => return id,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no controller other than node {not} within {SETTLE:?}"
        );
        std::thread::sleep(POLL);
    }
}

/// `ACK <partition> <sent unix ms> <acked unix ms>`.
fn parse_ack(line: &str) -> Option<Ack> {
    let mut f = line.strip_prefix("ACK ")?.split_whitespace();
    let a = Ack {
        partition: f.next()?.parse().ok()?,
        sent_ms: f.next()?.parse().ok()?,
        acked_ms: f.next()?.parse().ok()?,
    };
    f.next().is_none().then_some(a)
}

#[test]
fn kafka_python_idempotent_acks_all_survives_killing_leaders_another_node_and_the_controller() {
    common::ensure_python_requirements();
    let began = Instant::now();
    let kills = env_usize("SLUICE_CLUSTER_PY_KILLS", 4);
    // About the broker lease, so a node may be back before it is fenced.
    let pause = Duration::from_millis(env_usize("SLUICE_CLUSTER_KILL_PAUSE_MS", 2_000) as u64);
    let mut opts = ClusterOptions::new(3, 2);
    opts.links = false;
    let mut c = Cluster::start_with(opts);
    c.create_topic(TOPIC, PARTITIONS, 3, &[("min.insync.replicas", "2")])
        .expect("create");
    c.wait_all_in_sync(&[TOPIC], SETTLE);
    eprintln!(
        "cluster up, topic created after {} ms",
        began.elapsed().as_millis()
    );

    // Declared after the cluster: dropped (killed) first.
    let mut script = Script::start(&c);
    let warm = Instant::now() + WARM;
    while script.acks() < WARM_ACKS && Instant::now() < warm {
        script.check_alive();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        script.acks() > 0,
        "nothing acknowledged within {WARM:?}:\n{}",
        script.stderr_tail()
    );

    let mut delays = Vec::new();
    let mut stalled = Vec::new();
    let mut last_restart_ms = 0;
    for k in 0..kills {
        c.wait_all_in_sync(&[TOPIC], SETTLE);
        let partition = (k % PARTITIONS as usize) as i32;
        let leader = c.wait_leader(TOPIC, partition, None, SETTLE);
        let controller = c.wait_controller(SETTLE);
        // Kills 1 and 2 restart the node after `pause`, about the broker
        // lease: it may be back before it is fenced and keep its
        // leaderships. Kills 3 and 4 keep it down until the others moved
        // on (a new controller; a new leader of the partition).
        let (victim, role, failover) = match k % 4 {
            0 => (leader, format!("leader of {partition}"), false),
            1 => {
                let other = c
                    .ids()
                    .into_iter()
                    .find(|id| *id != leader && *id != controller)
                    .or_else(|| c.ids().into_iter().find(|id| *id != leader))
                    .expect("another node");
                (other, "another node".to_string(), false)
            }
            2 => (controller, "controller".to_string(), true),
            _ => (leader, format!("leader of {partition}"), true),
        };
        let kill_at = Instant::now();
        let kill_ms = unix_ms();
        c.kill(victim);
        let mut moved = String::new();
        if failover {
            let took = if victim == controller {
                let next = wait_new_controller(&c, victim);
                format!("node {next} controls")
            } else {
                let next = c.wait_leader(TOPIC, partition, Some(victim), SETTLE);
                format!("node {next} leads {partition}")
            };
            moved = format!(", {took} after {} ms", kill_at.elapsed().as_millis());
        }
        std::thread::sleep(pause.saturating_sub(kill_at.elapsed()));
        c.restart(victim);
        last_restart_ms = unix_ms();
        match script.resume_delay(kill_ms) {
            Some(d) => {
                eprintln!(
                    "kill {}: node {victim} ({role}{moved}): every partition acknowledged again after {} ms",
                    k + 1,
                    d.as_millis()
                );
                delays.push(d);
            }
            None => {
                eprintln!(
                    "kill {}: node {victim} ({role}{moved}): writes did not resume within {RESUME:?}",
                    k + 1
                );
                stalled.push(k + 1);
            }
        }
    }
    c.wait_all_in_sync(&[TOPIC], SETTLE);
    // A last stretch of load after the final restart.
    let before = script.acks();
    let tail = Instant::now() + TAIL;
    while script.acks() < before + TAIL_ACKS && Instant::now() < tail {
        script.check_alive();
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = script.finish();
    let (acks, lines) = {
        let o = script.out.lock().unwrap();
        (o.acks.clone(), o.lines.clone())
    };
    let after_restart = acks.iter().filter(|a| a.acked_ms > last_restart_ms).count();
    let (p50, p99) = p50_p99(&delays);
    eprintln!(
        "{kills} kills: resume delays {:?} ms (p50 {} ms, p99 {} ms); acknowledged {} ({} after the last restart); {} s in all",
        delays.iter().map(Duration::as_millis).collect::<Vec<_>>(),
        p50.as_millis(),
        p99.as_millis(),
        acks.len(),
        after_restart,
        began.elapsed().as_secs()
    );
    assert!(
        status.success(),
        "the script found acknowledged records lost, duplicated or out of order ({status}):\n{}\n{}",
        lines.join("\n"),
        script.stderr_tail()
    );
    assert!(
        lines.iter().any(|l| l.starts_with("VERIFIED ")),
        "no verdict from the script:\n{}",
        lines.join("\n")
    );
    assert!(
        stalled.is_empty(),
        "writes never resumed after kills {stalled:?}"
    );
    assert!(
        after_restart > 0,
        "nothing acknowledged after the last restart"
    );
    assert!(
        acks.len() >= WARM_ACKS,
        "too little load: {} acknowledged",
        acks.len()
    );
}
