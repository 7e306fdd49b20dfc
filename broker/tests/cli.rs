//! `sluice start` configuration through the real binary: bad values are
//! refused at start with the setting's name, and precedence is
//! flag > env > file > default.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

fn sluice(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Runs a start that must fail; returns its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = sluice(args, env).output().expect("run sluice");
    assert!(
        !out.status.success(),
        "expected a refusal for {args:?} {env:?}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Starts with `args`/`env`, waits for the ready line, returns it, kills.
fn ready_line(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let data = dir.join(format!("data-{}", free_port()));
    let mut all = vec![
        "start",
        "--listen",
        &listen,
        "--admin-listen",
        &admin,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let mut child = sluice(&all, env)
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("sluice ready") && Instant::now() < deadline {
        match stderr.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = text
        .lines()
        .find(|l| l.contains("sluice ready"))
        .unwrap_or_else(|| panic!("not ready:\n{text}"));
    line.to_string()
}

#[test]
fn bad_values_are_refused_naming_the_setting() {
    let e = refused(&["start", "--memory", "lots"], &[]);
    assert!(e.contains("--memory"), "{e}");
    let e = refused(&["start", "--shards", "0"], &[]);
    assert!(e.contains("--shards"), "{e}");
    let e = refused(&["start"], &[("SLUICE_DEFAULT_PARTITIONS", "0")]);
    assert!(e.contains("--default-partitions"), "{e}");
    let e = refused(&["start", "--listen", "nowhere"], &[]);
    assert!(e.contains("--listen"), "{e}");
    let e = refused(&["start", "--log-level", "info,[[["], &[]);
    assert!(e.contains("--log-level"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "memory = \"12 parsecs\"\n").unwrap();
    let e = refused(&["start", "--config", file.to_str().unwrap()], &[]);
    assert!(e.contains("memory"), "{e}");
}

#[test]
fn flag_beats_env_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(
        &file,
        "shards = 3\nadvertised_listener = \"file.example:1111\"\n",
    )
    .unwrap();
    let cfg = file.to_str().unwrap();
    let line = ready_line(dir.path(), &["--config", cfg], &[]);
    assert!(
        line.contains("shards=3") && line.contains("file.example:1111"),
        "file: {line}"
    );
    let line = ready_line(dir.path(), &["--config", cfg], &[("SLUICE_SHARDS", "2")]);
    assert!(
        line.contains("shards=2") && line.contains("file.example:1111"),
        "env over file: {line}"
    );
    let line = ready_line(
        dir.path(),
        &["--config", cfg, "--shards", "1"],
        &[("SLUICE_SHARDS", "2")],
    );
    assert!(line.contains("shards=1"), "flag over env: {line}");
}

/// Runs to completion within `secs`; returns (success, stderr).
fn run_bounded(mut cmd: Command, secs: u64) -> (bool, String) {
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err);
            return (status.success(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn start_up_failures_exit_with_the_cause() {
    // Something already listening on the Kafka port (its backlog accepts).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin = format!("127.0.0.1:{}", free_port());
    let args = [
        "start",
        "--listen",
        &busy,
        "--admin-listen",
        &admin,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let (ok, err) = run_bounded(sluice(&args, &[]), 30);
    assert!(!ok && err.contains("--listen"), "port in use: {err}");

    // A shard that cannot open its WAL fails start-up; the process exits.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("shard-1"), b"not a directory").unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        "start",
        "--listen",
        &listen,
        "--admin-listen",
        &admin,
        "--data-dir",
        data.to_str().unwrap(),
        "--shards",
        "2",
    ];
    let (ok, err) = run_bounded(sluice(&args, &[]), 30);
    assert!(!ok && err.contains("shard 1"), "shard failure: {err}");
}
