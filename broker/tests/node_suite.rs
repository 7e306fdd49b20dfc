//! Runs the kafkajs suite (`tests/node`, node's built-in test runner)
//! against this build's `sluice` binary, so `cargo test` covers kafkajs.
//! Needs node and npm; the pinned kafkajs of `tests/node/package-lock.json`
//! is installed with `npm ci` on first use when missing (`.ci/run` installs
//! node and npm).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// The whole node suite; each of its tests has its own, smaller bound.
const NODE_SUITE_MAX: Duration = Duration::from_secs(300);

#[test]
fn kafkajs_suite() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");
    ensure_node_modules();
    // A new consumer group starts at once instead of waiting for members.
    let b = Broker::start_with(1, &["--group-initial-rebalance-delay-ms", "0"]);
    let no_auto = Broker::start_with(1, &["--auto-create-topics", "false"]);
    let out = run_bounded(
        Command::new("node")
            .args(["--test", "--test-reporter=tap"])
            .current_dir(dir)
            .env("SLUICE_BOOTSTRAP", b.bootstrap())
            .env("SLUICE_BOOTSTRAP_NO_AUTO", no_auto.bootstrap()),
        None,
        NODE_SUITE_MAX,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kafkajs suite failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("# pass ") && l != "# pass 0"),
        "no test ran:\n{stdout}"
    );
    assert!(stdout.contains("\n# fail 0\n"), "{stdout}");
}
