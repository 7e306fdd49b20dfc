//! `sluice check`, `sluice completions` and `sluice manpage`, run as the
//! real binary: a good setup passes, a bad one (locked memory lowered in
//! the child, the data dir on tmpfs) fails with the fix named.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

/// Checks every `sluice check` run reports, in order.
const CHECKS: [&str; 11] = [
    "settings",
    "io_uring",
    "memlock",
    "open_files",
    "filesystem",
    "o_direct",
    "disk_space",
    "cpus",
    "thp",
    "cpu_governor",
    "clocksource",
];

/// One parsed output line: status, check name, the rest.
#[derive(Debug)]
struct Line {
    status: String,
    check: String,
    text: String,
}

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// `sluice check` on `data_dir` with one shard and few connections (so the
/// open-files limit of a CI shell is enough); `memlock` lowers the child's
/// RLIMIT_MEMLOCK before it runs.
fn run_check(data_dir: &Path, memlock: Option<u64>, extra: &[&str]) -> Output {
    let mut cmd = sluice();
    cmd.args([
        "check",
        "--shards",
        "1",
        "--connections-per-shard-max",
        "100",
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .args(extra)
    .env_remove("SLUICE_CONFIG");
    if let Some(bytes) = memlock {
        // SAFETY: setrlimit is async-signal-safe; lowering needs no privilege.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.output().expect("run sluice check")
}

/// Parses the text output, asserting the format of every line: `STATUS
/// check  found`, and `; fix: ...` exactly when the status is not PASS.
fn parse(out: &Output) -> Vec<Line> {
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf-8");
    let lines: Vec<Line> = stdout
        .lines()
        .map(|l| {
            let (status, rest) = l.split_once(' ').expect("status");
            let (check, text) = rest.split_once(' ').expect("check name");
            assert!(
                ["PASS", "WARN", "FAIL"].contains(&status),
                "bad status: {l}"
            );
            assert!(
                check.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "bad check name: {l}"
            );
            let text = text.trim_start().to_string();
            assert!(!text.is_empty(), "nothing found: {l}");
            assert_eq!(text.contains("; fix: "), status != "PASS", "{l}");
            Line {
                status: status.into(),
                check: check.into(),
                text,
            }
        })
        .collect();
    let names: Vec<&str> = lines.iter().map(|l| l.check.as_str()).collect();
    assert_eq!(names, CHECKS, "{stdout}");
    lines
}

fn line<'a>(lines: &'a [Line], check: &str) -> &'a Line {
    lines
        .iter()
        .find(|l| l.check == check)
        .expect("check reported")
}

#[test]
fn check_passes_on_a_good_setup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let out = run_check(&data, None, &[]);
    let lines = parse(&out);
    // THP, the governor and the clock source depend on the host and may
    // warn; what a broker cannot run without must pass.
    for l in &lines {
        assert_ne!(l.status, "FAIL", "{l:?}");
    }
    for check in [
        "settings",
        "io_uring",
        "o_direct",
        "open_files",
        "disk_space",
    ] {
        assert_eq!(line(&lines, check).status, "PASS", "{lines:?}");
    }
    assert!(
        line(&lines, "o_direct")
            .text
            .contains("nearest existing parent"),
        "the data dir is not made yet: {lines:?}"
    );
    assert!(!data.exists(), "check must not create the data dir");
    let left = std::fs::read_dir(tmp.path()).expect("read_dir").count();
    assert_eq!(left, 0, "the O_DIRECT probe file is removed");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn check_fails_on_low_memlock_and_warns_on_tmpfs() {
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("tempdir in /dev/shm")
    } else {
        tempfile::tempdir().expect("tempdir")
    };
    let out = run_check(tmp.path(), Some(64 << 10), &[]);
    let lines = parse(&out);
    let memlock = line(&lines, "memlock");
    assert_eq!(memlock.status, "FAIL", "{lines:?}");
    assert!(memlock.text.contains("64 KiB"), "{memlock:?}");
    assert!(memlock.text.contains("LimitMEMLOCK"), "{memlock:?}");
    if shm.is_dir() {
        let fs = line(&lines, "filesystem");
        let direct = line(&lines, "o_direct");
        assert!(
            fs.status != "PASS" || direct.status != "PASS",
            "tmpfs must be reported: {lines:?}"
        );
        if fs.status != "PASS" {
            assert!(fs.text.contains("tmpfs"), "{fs:?}");
        }
    } else {
        eprintln!("no /dev/shm: the tmpfs part was skipped");
    }
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn check_json_and_bad_settings() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run_check(tmp.path(), Some(64 << 10), &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["ok"], false, "{doc}");
    let checks = doc["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().expect("name"))
        .collect();
    assert_eq!(names, CHECKS);
    let memlock = checks
        .iter()
        .find(|c| c["check"] == "memlock")
        .expect("memlock");
    assert_eq!(memlock["status"], "FAIL", "{memlock}");
    assert!(memlock["fix"].is_string(), "{memlock}");
    let io_uring = checks
        .iter()
        .find(|c| c["check"] == "io_uring")
        .expect("io_uring");
    assert_eq!(io_uring["status"], "PASS", "{io_uring}");
    assert!(io_uring.get("fix").is_none(), "{io_uring}");

    // A bad setting is one FAIL naming it, as `start` would refuse it.
    let out = sluice()
        .args(["check", "--shards", "0", "--data-dir"])
        .arg(tmp.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("FAIL settings"), "{stdout}");
    assert!(stdout.contains("--shards"), "{stdout}");
}

#[test]
fn check_reads_the_config_file_like_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("sluice.toml");
    std::fs::write(
        &config,
        "shards = 1\nconnections_per_shard_max = 7\nwal_segment_bytes = \"16MiB\"\n",
    )
    .expect("write config");
    let out = sluice()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(tmp.path())
        .output()
        .expect("run");
    let lines = parse(&out);
    let settings = line(&lines, "settings");
    assert!(
        settings.text.contains("WAL segments of 16 MiB"),
        "{settings:?}"
    );
    assert!(settings.text.contains("7 connections"), "{settings:?}");
    let files = line(&lines, "open_files");
    assert!(
        files.text.contains("= 391"),
        "1 x (7 + 128) + 256: {files:?}"
    );
}

#[test]
fn completions_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = sluice().args(["completions", shell]).output().expect("run");
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).expect("utf-8");
        for word in ["start", "check", "data-dir", "connections-per-shard-max"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = sluice()
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn manpages_are_written_for_each_subcommand() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("man1");
    let out = sluice()
        .args(["manpage", "--dir"])
        .arg(&dir)
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    for page in ["sluice.1", "sluice-start.1", "sluice-check.1"] {
        let text = std::fs::read_to_string(dir.join(page)).expect(page);
        assert!(text.contains(".TH"), "{page} has a title");
    }
    let start = std::fs::read_to_string(dir.join("sluice-start.1")).expect("start page");
    assert!(start.contains("data\\-dir"), "start's page lists its flags");
    let out = sluice().arg("manpage").output().expect("run");
    assert!(out.status.success(), "{out:?}");
    let top = String::from_utf8(out.stdout).expect("utf-8");
    assert!(top.contains(".TH sluice 1"), "{top}");
    assert!(top.contains("check"), "the top page lists the subcommands");
}
