//! Disk full: the WAL lives on a small loop-mounted ext4 file system. Needs
//! root (mount); CI and the development machines run as root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{check_payload, payload, run, small_config};
use sluice_wal::{Position, Wal, WalError};

struct LoopMount {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopMount {
    fn new(size_mb: u32) -> LoopMount {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(u64::from(size_mb) << 20).unwrap();
        sh(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&img));
        sh(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt));
        LoopMount { mnt, _dir: dir }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn free_bytes(p: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

#[test]
fn full_disk_is_an_error_and_appends_resume_after_space_is_freed() {
    let m = LoopMount::new(24);
    let wal_dir = m.mnt.join("wal");
    let filler = m.mnt.join("filler");
    // Leave room for about three 1 MiB segments.
    let fill = free_bytes(&m.mnt).saturating_sub(3 << 20);
    std::fs::write(&filler, vec![1u8; fill as usize]).unwrap();
    let cfg = small_config(&wal_dir);
    run(async move {
        let (wal, _) = Wal::open(cfg).await.unwrap();
        let mut acked: Vec<(u64, Position)> = Vec::new();
        let mut seq = 0;
        let err = loop {
            assert!(seq < 10_000, "the file system never filled up");
            match wal.append(1, payload(seq, 20_000)).await {
                Ok(p) => acked.push((seq, p)),
                Err(e) => break e,
            }
            seq += 1;
        };
        assert!(matches!(err, WalError::NoSpace { .. }), "expected NoSpace, got {err}");
        assert!(acked.len() > 50);
        // Still full: still an error, not a panic or a hang.
        assert!(matches!(wal.append(1, payload(seq, 20_000)).await, Err(WalError::NoSpace { .. })));
        for (s, p) in &acked {
            assert_eq!(check_payload(&wal.read(*p).await.unwrap().payload), Some(*s));
        }
        std::fs::remove_file(&filler).unwrap();
        for _ in 0..100 {
            let p = wal.append(1, payload(seq, 20_000)).await.expect("appends work again once space is freed");
            acked.push((seq, p));
            seq += 1;
        }
        let entries = common::read_all(&wal).await;
        let seqs: Vec<u64> = entries.iter().map(|e| check_payload(&e.payload).unwrap()).collect();
        let want: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, want, "the log holds exactly the acknowledged entries, in order");
        wal.close().await.unwrap();
    });
}

/// tmpfs has no O_DIRECT: the WAL falls back to buffered writes + fdatasync
/// and still round-trips across a reopen.
#[test]
fn tmpfs_falls_back_to_buffered_writes() {
    let dir = tempfile::tempdir().unwrap();
    sh(Command::new("mount").args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"]).arg(dir.path()));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(dir.path().to_owned());
    let cfg = small_config(&dir.path().join("wal"));
    let positions = run({
        let cfg = cfg.clone();
        async move {
            let (wal, _) = Wal::open(cfg).await.unwrap();
            let mut ps = Vec::new();
            for i in 0..300 {
                ps.push(wal.append(1, payload(i, 7000)).await.unwrap());
            }
            wal.close().await.unwrap();
            ps
        }
    });
    run(async move {
        let (wal, rec) = Wal::open(cfg).await.unwrap();
        assert_eq!(rec.torn_bytes_dropped, 0);
        for (i, p) in positions.iter().enumerate() {
            assert_eq!(check_payload(&wal.read(*p).await.unwrap().payload), Some(i as u64));
        }
        wal.close().await.unwrap();
    });
}
