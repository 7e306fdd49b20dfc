//! Runs the kafka-python suite (`tests/python`, pytest) against this build's
//! `sluice` binary, so `cargo test` covers a second client library.
//! Needs python3 with the packages of `tests/python/requirements.txt`
//! (`.ci/run` installs them).

mod common;

use std::process::Command;

#[test]
fn kafka_python_suite() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python");
    common::ensure_python_requirements();
    let out = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:warnings",
            dir,
        ])
        .env("SLUICE_BIN", env!("CARGO_BIN_EXE_sluice"))
        .output()
        .expect("python3 must be installed (with tests/python/requirements.txt)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kafka-python suite failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains(" passed"), "no test ran:\n{stdout}");
}
