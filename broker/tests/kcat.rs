//! kcat (the librdkafka command-line client, Debian package `kcat`) as a
//! user types it: produce lines from stdin to an auto-created topic, read
//! them back, list metadata, keyed and compressed messages. Outputs are
//! compared exactly.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const KCAT_RUN_MAX: Duration = Duration::from_secs(60);

/// Runs `kcat -b <broker> ARGS` with `stdin`, asserts it succeeded and
/// returns its stdout.
fn kcat(b: &Broker, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new("kcat");
    cmd.arg("-b").arg(b.bootstrap()).args(args);
    assert!(
        which_kcat(),
        "kcat must be installed (Debian: apt-get install kcat; .ci/run does it)"
    );
    let out: Output = run_bounded(&mut cmd, stdin.map(str::as_bytes), KCAT_RUN_MAX);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kcat {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn which_kcat() -> bool {
    Command::new("kcat")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn produce_lines_then_consume_them_in_order() {
    let b = Broker::start(1);
    // Producing to an unknown topic creates it (auto-creation is on).
    kcat(
        &b,
        &["-P", "-t", "lines"],
        Some("one\ntwo\nthree\nfour\nfive\n"),
    );
    let got = kcat(&b, &["-C", "-t", "lines", "-o", "beginning", "-e"], None);
    assert_eq!(got, "one\ntwo\nthree\nfour\nfive\n");

    // A second run appends after them; offsets are kcat's %o.
    kcat(&b, &["-P", "-t", "lines"], Some("six\n"));
    let got = kcat(
        &b,
        &[
            "-C",
            "-t",
            "lines",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%p %o %s\n",
        ],
        None,
    );
    assert_eq!(
        got,
        "0 0 one\n0 1 two\n0 2 three\n0 3 four\n0 4 five\n0 5 six\n"
    );
    // From an offset, and a bounded count.
    let got = kcat(&b, &["-C", "-t", "lines", "-o", "4", "-c", "1", "-e"], None);
    assert_eq!(got, "five\n");
}

#[test]
fn metadata_lists_the_topic() {
    let b = Broker::start(1);
    kcat(&b, &["-P", "-t", "listed"], Some("x\n"));
    create_topic(&b, "listed-three", 3);
    let port = b.port;
    // The first line names the broker that answered: "1: HOST:PORT/1",
    // or "-1: HOST:PORT/bootstrap" while librdkafka has not yet learned
    // its id, which is the client's timing; the rest is exact.
    let one = kcat(&b, &["-L", "-t", "listed"], None);
    let (first, rest) = one.split_once('\n').expect("lines");
    assert!(
        first.starts_with("Metadata for listed (from broker ")
            && first.contains(&format!(": 127.0.0.1:{port}/")),
        "{one}"
    );
    assert_eq!(
        rest,
        format!(
            " 1 brokers:\n  broker 1 at 127.0.0.1:{port} (controller)\n \
             1 topics:\n  topic \"listed\" with 1 partitions:\n    \
             partition 0, leader 1, replicas: 1, isrs: 1\n"
        )
    );
    let all = kcat(&b, &["-L"], None);
    let (first, rest) = all.split_once('\n').expect("lines");
    assert!(
        first.starts_with("Metadata for all topics (from broker ")
            && first.contains(&format!(": 127.0.0.1:{port}/")),
        "{all}"
    );
    assert!(
        rest.starts_with(&format!(
            " 1 brokers:\n  broker 1 at 127.0.0.1:{port} (controller)\n 4 topics:\n"
        )),
        "{all}"
    );
    assert!(
        all.contains(
            "  topic \"listed\" with 1 partitions:\n    \
             partition 0, leader 1, replicas: 1, isrs: 1\n"
        ),
        "{all}"
    );
    assert!(
        all.contains(
            "  topic \"listed-three\" with 3 partitions:\n    \
             partition 0, leader 1, replicas: 1, isrs: 1\n    \
             partition 1, leader 1, replicas: 1, isrs: 1\n    \
             partition 2, leader 1, replicas: 1, isrs: 1\n"
        ),
        "{all}"
    );
}

#[test]
fn keyed_compressed_messages_read_back_with_keys() {
    let b = Broker::start(1);
    for codec in ["snappy", "gzip", "lz4", "zstd"] {
        let topic = format!("keyed-{codec}");
        kcat(
            &b,
            &["-P", "-t", &topic, "-K:", "-z", codec],
            Some("k1:v1\nk2:v2\nk1:v3\n:no key\n"),
        );
        let got = kcat(
            &b,
            &["-C", "-t", &topic, "-o", "beginning", "-e", "-K:"],
            None,
        );
        assert_eq!(got, "k1:v1\nk2:v2\nk1:v3\n:no key\n", "codec {codec}");
        let got = kcat(
            &b,
            &[
                "-C",
                "-t",
                &topic,
                "-o",
                "beginning",
                "-e",
                "-f",
                "%o [%k] %s (%S bytes)\n",
            ],
            None,
        );
        assert_eq!(
            got,
            "0 [k1] v1 (2 bytes)\n1 [k2] v2 (2 bytes)\n2 [k1] v3 (2 bytes)\n3 [] no key (6 bytes)\n",
            "codec {codec}"
        );
    }
}
