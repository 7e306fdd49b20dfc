//! Runs the kafka-python suite (`tests/python`, pytest) against this build's
//! `sluice` binary, so `cargo test` covers a second client library.
//! Needs python3 with the packages of `tests/python/requirements.txt`
//! (`.ci/run` installs them).

use std::process::Command;

#[test]
fn kafka_python_suite() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python");
    ensure_requirements(dir);
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

/// Installs `requirements.txt` with pip when kafka-python or pytest is
/// missing, so `cargo test` alone runs this suite on a fresh machine.
fn ensure_requirements(dir: &str) {
    let present = Command::new("python3")
        .args(["-c", "import kafka, pytest"])
        .status()
        .expect("python3 must be installed")
        .success();
    if present {
        return;
    }
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(format!("{dir}/requirements.txt"))
        .status()
        .expect("python3 -m pip");
    assert!(
        status.success(),
        "pip install -r {dir}/requirements.txt failed"
    );
}
