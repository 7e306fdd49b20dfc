//! Counters and histograms the broker exports (commit sizes, sync latency,
//! queue depth). Owned by the WAL's executor; `Wal::stats` hands out a copy.

use hdrhistogram::Histogram;

/// A snapshot of the WAL's observability state.
#[derive(Clone, Debug)]
pub struct WalStats {
    pub appends: u64,
    pub commits: u64,
    pub bytes_written: u64,
    /// Appends that had to wait because `queue_bytes_max` was reached.
    pub backpressure_waits: u64,
    pub queue_bytes: u64,
    pub queue_entries: u64,
    pub disk_bytes: u64,
    pub segments: u64,
    /// Segment files removed (space reclaimed) since open.
    pub segments_removed: u64,
    pub start: u64,
    pub durable_end: u64,
    /// Entries per commit.
    pub commit_entries: Histogram<u64>,
    /// Bytes per commit (frames, before block padding).
    pub commit_bytes: Histogram<u64>,
    /// Write + sync time per commit, microseconds.
    pub sync_latency_us: Histogram<u64>,
}

impl WalStats {
    pub(crate) fn new() -> WalStats {
        let h = |max: u64| Histogram::new_with_bounds(1, max, 3).expect("static histogram bounds");
        WalStats {
            appends: 0,
            commits: 0,
            bytes_written: 0,
            backpressure_waits: 0,
            queue_bytes: 0,
            queue_entries: 0,
            disk_bytes: 0,
            segments: 0,
            segments_removed: 0,
            start: 0,
            durable_end: 0,
            commit_entries: h(1 << 24),
            commit_bytes: h(1 << 32),
            sync_latency_us: h(60_000_000),
        }
    }

    pub(crate) fn record_commit(&mut self, entries: u64, bytes: u64, latency_us: u64) {
        self.commits += 1;
        self.bytes_written += bytes;
        self.commit_entries.saturating_record(entries.max(1));
        self.commit_bytes.saturating_record(bytes.max(1));
        self.sync_latency_us.saturating_record(latency_us.max(1));
    }
}
