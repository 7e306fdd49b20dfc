//! Crash test: a child process appends and reports every acknowledged
//! position on a pipe; the parent SIGKILLs it at random moments, reopens the
//! WAL and checks that every acknowledged entry is present and intact and
//! that the log holds no gap (entries are numbered in append order).
//!
//! The child is this same test binary, re-run with `WAL_CRASH_CHILD_DIR` set.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{check_payload, payload, read_all, run, small_config};
use rand::Rng;
use sluice_wal::Wal;

const KILLS: usize = 24;
const IN_FLIGHT: u64 = 64;

#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("WAL_CRASH_CHILD_DIR") else { return };
    run(async move {
        let (wal, _) = Wal::open(small_config(std::path::Path::new(&dir))).await.expect("child opens the WAL");
        let next = read_all(&wal).await.len() as u64;
        let acked = std::rc::Rc::new(std::cell::RefCell::new(std::io::stdout()));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut tasks = Vec::new();
        for lane in 0..IN_FLIGHT {
            let wal = wal.clone();
            let acked = acked.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut seq = next + lane;
                while Instant::now() < deadline {
                    let len = 8 + (seq * 7919 % 6000) as usize;
                    let pos = wal.append(1, payload(seq, len)).await.expect("append");
                    use std::io::Write;
                    let mut out = acked.borrow_mut();
                    writeln!(out, "{seq} {}", pos.0).expect("pipe");
                    out.flush().expect("pipe");
                    seq += IN_FLIGHT;
                }
            }));
        }
        for t in tasks {
            t.await;
        }
    });
}

#[test]
fn sigkill_never_loses_an_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("WAL_CRASH_CHILD_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = Duration::from_millis(rng.gen_range(30..400));
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut it = line.split(' ');
                let (Some(s), Some(p)) = (it.next(), it.next()) else { continue };
                if let (Ok(s), Ok(p)) = (s.parse::<u64>(), p.parse::<u64>()) {
                    lines.push((s, p));
                }
            }
            lines
        });
        std::thread::sleep(kill_after);
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let got = reader.join().unwrap();
        acked.extend(got);
        verify(dir.path(), &acked, round);
    }
    assert!(acked.len() > 1000, "the child acknowledged only {} entries in {KILLS} runs", acked.len());
}

fn verify(dir: &std::path::Path, acked: &[(u64, u64)], round: usize) {
    let cfg = small_config(dir);
    let entries = run(async move {
        let (wal, _) = Wal::open(cfg).await.expect("reopen after SIGKILL");
        let entries = read_all(&wal).await;
        wal.close().await.unwrap();
        entries
    });
    let seqs: Vec<u64> = entries.iter().map(|e| check_payload(&e.payload).expect("intact payload")).collect();
    // Appends from 64 lanes are in call order per commit; within the log the
    // sequence numbers must be a permutation-free prefix: 0..n, no gap.
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    for (i, s) in sorted.iter().enumerate() {
        assert_eq!(*s, i as u64, "round {round}: gap or repeat in the recovered log at {i}");
    }
    let by_seq: std::collections::HashMap<u64, u64> = entries.iter().map(|e| (check_payload(&e.payload).unwrap(), e.position.0)).collect();
    for (seq, pos) in acked {
        assert_eq!(by_seq.get(seq), Some(pos), "round {round}: acknowledged entry {seq} at {pos} is missing");
    }
}
