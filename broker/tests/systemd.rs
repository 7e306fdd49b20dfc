//! systemd integration through the real binary: the notification protocol
//! (`Type=notify`: status, READY=1, the watchdog, STOPPING=1) read from a
//! real `NOTIFY_SOCKET`, and a graceful SIGTERM under load that loses no
//! acknowledged record.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, Broker};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message};

/// Datagrams received on `socket` until one contains `wanted` (or the
/// deadline passed); every one received, in order.
fn notifications_until(socket: &UnixDatagram, wanted: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = text.lines().any(|l| l == wanted);
            got.push(text);
            if done {
                break;
            }
        }
    }
    got
}

#[test]
fn readiness_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let port = free_port();
    // systemd names the watched process in WATCHDOG_PID: the shell's pid,
    // which `exec` hands to sluice.
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .args(["start", "--shards", "1", "--memory", "256MiB"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .env("NOTIFY_SOCKET", &path)
        // A 2 s watchdog: pinged every second.
        .env("WATCHDOG_USEC", "2000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluice");
    let start = notifications_until(&socket, "READY=1", Duration::from_secs(60));
    let ready = start.last().cloned().unwrap_or_default();
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "no READY=1: {start:?}"
    );
    // Readiness comes once the listener accepts.
    std::net::TcpStream::connect(("127.0.0.1", port))
        .expect("READY=1 before the listener accepted");
    assert!(
        ready.contains(&format!(
            "STATUS=serving: kafka PLAINTEXT://127.0.0.1:{port}"
        )),
        "{ready}"
    );
    for status in [
        "STATUS=starting: recovering 1 shards",
        "STATUS=starting: 1 of 1 shards recovered (WAL replay 100%: ",
    ] {
        assert!(
            start.iter().any(|n| n.starts_with(status)),
            "no {status:?} before READY=1: {start:?}"
        );
    }
    let pings = notifications_until(&socket, "WATCHDOG=1", Duration::from_secs(10));
    assert!(
        pings.iter().any(|n| n.lines().any(|l| l == "WATCHDOG=1")),
        "no watchdog ping: {pings:?}"
    );
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let stop = notifications_until(&socket, "STOPPING=1", Duration::from_secs(30));
    assert!(
        stop.iter().any(|n| n.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1: {stop:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
}

/// Sequence numbers of the records the broker acknowledged.
#[derive(Default)]
struct Acked(Mutex<Vec<u64>>);

impl ClientContext for Acked {}

impl ProducerContext for Acked {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            if let Some(seq) = sequence(m.payload()) {
                self.0.lock().expect("acked").push(seq);
            }
        }
    }
}

fn sequence(payload: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(payload?)
        .ok()?
        .strip_prefix("v-")?
        .parse()
        .ok()
}

#[test]
fn sigterm_under_load_drains_and_loses_nothing_acknowledged() {
    const TOPIC: &str = "drained";
    let mut b = Broker::start(2);
    common::create_topic(&b, TOPIC, 4);
    let running = Arc::new(AtomicBool::new(true));
    // Records handed to the producer so far (the load thread's count).
    let handed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut config = common::client_config(&b);
    config
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "5000")
        .set("retries", "0");
    let producer: BaseProducer<Acked> = config
        .create_with_context(Acked::default())
        .expect("producer");
    let producer = Arc::new(producer);
    let load = {
        let (producer, running) = (Arc::clone(&producer), Arc::clone(&running));
        let handed = Arc::clone(&handed);
        // The load generator: a thread of the test process, not the broker's.
        std::thread::spawn(move || {
            let mut sent = 0u64;
            let stop_by = Instant::now() + Duration::from_secs(60);
            // Bounded: until told to stop, at most 60 s.
            while running.load(Ordering::Relaxed) && Instant::now() < stop_by {
                let value = format!("v-{sent}");
                match producer.send(BaseRecord::<(), str>::to(TOPIC).payload(&value)) {
                    Ok(()) => {
                        sent += 1;
                        handed.store(sent, Ordering::Relaxed);
                    }
                    Err(_) => {
                        producer.poll(Duration::from_millis(5));
                    }
                }
                producer.poll(Duration::ZERO);
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let before = producer.context().0.lock().expect("acked").len();
    let handed_before = handed.load(Ordering::Relaxed);
    let t = Instant::now();
    let status = b.terminate();
    let stopped_in = t.elapsed();
    running.store(false, Ordering::Relaxed);
    let sent = load.join().expect("load thread");
    // What is not acknowledged by now never will be (message.timeout.ms).
    let _ = producer.flush(Duration::from_secs(10));
    let mut acked = producer.context().0.lock().expect("acked").clone();
    acked.sort_unstable();
    assert!(status.success(), "exit status {status}");
    assert!(before > 0, "nothing was acknowledged under load");
    // The signal came under load: records were waiting for their
    // acknowledgement (or for a request) when it was sent.
    assert!(
        handed_before as usize > before,
        "no record was outstanding at the signal ({handed_before} handed, {before} acknowledged)"
    );
    eprintln!(
        "SIGTERM under load: stopped in {stopped_in:?}; {sent} records sent, {} acknowledged ({before} before the signal)",
        acked.len()
    );
    b.restart();
    let mut found: Vec<u64> =
        common::consume_all(&b, TOPIC, 4, acked.len(), Duration::from_secs(120))
            .into_iter()
            .filter_map(|c| sequence(Some(c.value.as_bytes())))
            .collect();
    found.sort_unstable();
    let lost: Vec<u64> = acked
        .iter()
        .filter(|s| found.binary_search(s).is_err())
        .take(10)
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged records lost: {lost:?} (of {})",
        acked.len()
    );
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    let Ok(found) = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
    else {
        return eprintln!("no sh: skipped");
    };
    if !found.status.success() {
        return eprintln!("systemd-analyze is not installed: skipped");
    }
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dir = tempfile::tempdir().expect("tempdir");
    // verify checks that each command exists: point them at this build.
    for unit in ["sluice.service", "sluice@.service"] {
        let text = std::fs::read_to_string(deploy.join(unit)).expect("unit file");
        let text = text.replace("/usr/local/bin/sluice", env!("CARGO_BIN_EXE_sluice"));
        std::fs::write(dir.path().join(unit), text).expect("write unit");
    }
    let out = common::run_bounded(
        Command::new("systemd-analyze")
            .current_dir(dir.path())
            .args(["verify", "sluice.service", "sluice@1.service"]),
        None,
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
