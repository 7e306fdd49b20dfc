#![allow(dead_code)]

use std::future::Future;
use std::path::Path;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use sluice_wal::{Wal, WalConfig};

/// Runs `f` on a fresh glommio executor on this thread.
pub fn run<F, T>(f: F) -> T
where
    F: Future<Output = T>,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(2 << 20)
        .make()
        .expect("glommio executor")
        .run(f)
}

/// Small segments so tests cross segment boundaries.
pub fn small_config(dir: &Path) -> WalConfig {
    let mut cfg = WalConfig::new(dir);
    cfg.segment_bytes = 1 << 20;
    cfg.commit_bytes_max = 256 << 10;
    cfg.entry_bytes_max = 128 << 10;
    cfg.queue_bytes_max = 1 << 20;
    cfg
}

/// A payload that encodes its sequence number and can be checked for damage.
pub fn payload(seq: u64, len: usize) -> Bytes {
    let len = len.max(8);
    let mut v = vec![(seq % 251) as u8; len];
    v[..8].copy_from_slice(&seq.to_le_bytes());
    Bytes::from(v)
}

/// Checks a payload built by `payload` and returns its sequence number.
pub fn check_payload(p: &[u8]) -> Option<u64> {
    if p.len() < 8 {
        return None;
    }
    let seq = u64::from_le_bytes(p[..8].try_into().ok()?);
    p[8..].iter().all(|&b| b == (seq % 251) as u8).then_some(seq)
}

pub async fn read_all(wal: &Wal) -> Vec<sluice_wal::Entry> {
    let mut out = Vec::new();
    let mut r = wal.reader(wal.start());
    while let Some(e) = r.next().await {
        out.push(e.expect("entry reads back"));
    }
    out
}
