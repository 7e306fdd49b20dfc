//! `sluice-wal`: the per-core write-ahead log. It is the durability of the
//! whole broker: an append is acknowledged only once it is on disk.
//!
//! - **Ownership.** One `Wal` per shard, opened on and owned by that shard's
//!   glommio executor (one core). It is `!Send`; no other thread touches it.
//! - **I/O.** Segment files are written with O_DIRECT through io_uring
//!   (glommio's `DmaFile`), each commit as one aligned write starting at the
//!   partial last block (kept in memory), followed by `fdatasync`
//!   (`SyncMode::Fdatasync`, the default). `SyncMode::Dsync` opens segments
//!   with O_DSYNC instead and skips the separate sync; `sluice-bench wal
//!   --sync dsync` measures both on the disk at hand (see ARCHITECTURE.md for
//!   the figures that chose the default). On tmpfs, which has no O_DIRECT,
//!   glommio writes through the page cache; the WAL warns once.
//! - **Group commit sized by load.** While one write+sync is in flight, new
//!   appends queue; the next commit takes everything queued (up to
//!   `commit_bytes_max`) the moment the previous one completes. A lone append
//!   is written at once. When nothing is queued the batcher task is parked:
//!   no timer, no wake-up, no log line.
//!   Commit N+1 is written while commit N syncs, and commit N+2 is laid out
//!   while N+1 is written (see `log`).
//! - **One pass over the bytes.** Laying out a commit copies each payload
//!   into the commit's buffer once, checksumming it as it is copied; runs of
//!   a payload whose CRC32C the caller already holds (`Payload::
//!   with_crc_spans`, e.g. record batches whose own CRC was verified) are
//!   copied only, their CRCs combined into the frame's. Reads and recovery
//!   check every frame's CRC over the bytes read.
//! - **Buffers.** Each commit's aligned buffer comes from the executor's
//!   `io_memory` arena (glommio's `alloc_dma_buffer`); two exist at once (one
//!   written, one laid out), each at most `commit_bytes_max` unless it holds
//!   a single larger entry. Size that arena to at least twice
//!   `commit_bytes_max`, a power of two (the arena's allocator rounds each
//!   buffer up to one): a commit that does not fit falls back to a fresh heap
//!   buffer and pays a page fault per 4 KiB (measured: 16 KiB records at 256
//!   in flight went from 211 MB/s to 443 MB/s when the arena was made large
//!   enough).
//! - **Bounds.** `queue_bytes_max` (appends wait, in call order, and the waits
//!   are counted), `commit_bytes_max`, `entry_bytes_max`, `segment_bytes`.
//! - **Recovery.** See `recovery`: a torn tail is truncated and reported;
//!   damage before the tail is an error naming its position.
//! - **Format.** See `format` for the on-disk layout.
//!
//! Invariants: `start <= durable_end`; every position below `durable_end` is
//! durable and never rewritten with different bytes; entries are logged in
//! the order `append` was called; the WAL knows nothing about Kafka.

mod crc;
mod error;
pub mod format;
mod log;
mod recovery;
mod segment;
mod stats;

use std::path::PathBuf;

pub use error::WalError;
pub use format::CrcSpan;
pub use log::{segment_paths, Append, Wal, WalReader};
pub use stats::WalStats;

/// A stable 64-bit address of an entry in the log.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Position(pub u64);

/// What one append writes: the entry's bytes and, optionally, the CRC32C
/// of runs of them that the caller already holds (`CrcSpan`), so the frame's
/// CRC is combined from those instead of computed over the bytes again.
#[derive(Clone, Debug, Default)]
pub struct Payload {
    bytes: bytes::Bytes,
    spans: Box<[CrcSpan]>,
}

impl Payload {
    /// A payload whose CRC the WAL computes in full.
    pub fn new(bytes: bytes::Bytes) -> Payload {
        Payload {
            bytes,
            spans: Box::default(),
        }
    }

    /// A payload with runs of known CRC. The caller vouches for each span's
    /// `crc` over exactly those bytes of `bytes` (debug builds check it);
    /// spans must be in order, apart and within the bytes (checked always).
    pub fn with_crc_spans(bytes: bytes::Bytes, spans: Vec<CrcSpan>) -> Payload {
        assert!(
            format::spans_fit(&spans, bytes.len()),
            "CRC spans out of order or past the payload"
        );
        debug_assert!(
            spans.iter().all(|s| {
                let run = &bytes[s.offset as usize..s.end() as usize];
                crc32c::crc32c(run) == s.crc
            }),
            "a CRC span does not match its bytes"
        );
        Payload {
            bytes,
            spans: spans.into_boxed_slice(),
        }
    }

    pub fn bytes(&self) -> &bytes::Bytes {
        &self.bytes
    }

    pub fn spans(&self) -> &[CrcSpan] {
        &self.spans
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl From<bytes::Bytes> for Payload {
    fn from(bytes: bytes::Bytes) -> Payload {
        Payload::new(bytes)
    }
}

/// One entry read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub position: Position,
    pub kind: u8,
    pub payload: bytes::Bytes,
    /// Position of the frame after this one.
    pub next: Position,
}

/// What `Wal::open` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Entries scanned in the active (last) segment.
    pub entries: u64,
    /// The durable end after recovery.
    pub end: Position,
    /// Bytes of a torn tail that were dropped (0 after a clean shutdown).
    pub torn_bytes_dropped: u64,
    pub segments: usize,
}

/// How a commit is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// One O_DIRECT write, then `fdatasync`.
    Fdatasync,
    /// Segments opened with O_DSYNC: the write itself is durable.
    Dsync,
}

/// Settings of one WAL. Every bound has a default and a unit in its name.
#[derive(Clone, Debug)]
pub struct WalConfig {
    pub dir: PathBuf,
    /// Size of each segment file, preallocated at creation.
    pub segment_bytes: u64,
    /// Bytes of appends waiting for a commit before `append` waits.
    pub queue_bytes_max: u64,
    /// Bytes written by one commit at most.
    pub commit_bytes_max: u64,
    /// Payload bytes of one entry at most.
    pub entry_bytes_max: u32,
    pub sync_mode: SyncMode,
}

impl WalConfig {
    pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
    pub const QUEUE_BYTES_MAX_DEFAULT: u64 = 64 << 20;
    pub const COMMIT_BYTES_MAX_DEFAULT: u64 = 4 << 20;
    pub const ENTRY_BYTES_MAX_DEFAULT: u32 = (4 << 20) - 4096;

    pub fn new(dir: impl Into<PathBuf>) -> WalConfig {
        WalConfig {
            dir: dir.into(),
            segment_bytes: Self::SEGMENT_BYTES_DEFAULT,
            queue_bytes_max: Self::QUEUE_BYTES_MAX_DEFAULT,
            commit_bytes_max: Self::COMMIT_BYTES_MAX_DEFAULT,
            entry_bytes_max: Self::ENTRY_BYTES_MAX_DEFAULT,
            sync_mode: SyncMode::Fdatasync,
        }
    }

    fn validate(&self) -> Result<(), WalError> {
        let bad = |m: String| Err(WalError::Config(m));
        let block = format::BLOCK_BYTES;
        if self.segment_bytes % block != 0 || self.segment_bytes < 4 * block {
            return bad(format!(
                "segment_bytes {} must be a multiple of {block} and at least {}",
                self.segment_bytes,
                4 * block
            ));
        }
        if self.commit_bytes_max > self.segment_bytes - format::SEGMENT_HEADER_BYTES
            || self.commit_bytes_max > u64::from(u32::MAX)
        {
            return bad(format!(
                "commit_bytes_max {} must fit in one segment",
                self.commit_bytes_max
            ));
        }
        let biggest = format::frame_bytes(self.entry_bytes_max)
            + format::align_up(format::COMMIT_FRAME_BYTES, 8);
        if biggest > self.commit_bytes_max {
            return bad(format!(
                "entry_bytes_max {} does not fit in commit_bytes_max {}",
                self.entry_bytes_max, self.commit_bytes_max
            ));
        }
        if self.queue_bytes_max < self.commit_bytes_max {
            return bad(format!(
                "queue_bytes_max {} is below commit_bytes_max {}",
                self.queue_bytes_max, self.commit_bytes_max
            ));
        }
        Ok(())
    }
}
