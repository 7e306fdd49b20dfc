//! The Raft log on disk: openraft's `RaftLogStorage` (storage v2).
//!
//! Files under `data_dir/raft`:
//!
//! - `log`: append-only, one frame (see `durable`) per entry; the payload is
//!   the JSON of `openraft::Entry<TypeConfig>`. Entries are contiguous by
//!   index. Appends are written then `fdatasync`ed before openraft is told
//!   they are flushed. On open a torn tail (short frame or bad CRC) is cut
//!   off and the cut is synced.
//! - `vote`: one frame, JSON of the vote; replaced by temp + fsync + rename
//!   + directory fsync.
//! - `purged`: one frame, JSON of the last purged log id, written the same
//!   way *before* the log is rewritten without the purged entries, so a crash
//!   in between only leaves entries that are skipped on open.
//!
//! The whole (unpurged) log is also held in memory: this is cluster metadata,
//! a few thousand entries between snapshots at most (the snapshot policy
//! bounds it). Reads are served from memory.
//!
//! The committed log id is not persisted: after a restart a lone voter
//! elects itself and commits a blank entry (in a cluster, the leader's
//! commit index reaches the node), and so it re-applies everything after
//! the snapshot.
//!
//! All IO is blocking; it runs on the dedicated control thread, where
//! blocking the current-thread runtime for an fsync is the intended cost.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, RaftLogReader, StorageIOError};

use crate::durable;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOG_FILE: &str = "log";
const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";

/// One entry in memory and where its frame starts in `log`.
#[derive(Debug)]
struct Stored {
    offset: u64,
    entry: Entry,
}

#[derive(Debug)]
struct LogInner {
    dir: PathBuf,
    file: File,
    /// Bytes of `log` that hold whole, valid frames.
    file_len: u64,
    entries: BTreeMap<u64, Stored>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
}

/// The log store handed to openraft; its reader shares the same state.
#[derive(Debug, Clone)]
pub(crate) struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

/// What `open` found, for start-up logging and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogOpenReport {
    pub entries: u64,
    pub torn_bytes: u64,
    pub last_index: Option<u64>,
}

fn io_err(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, truncating a torn tail.
    pub(crate) fn open(dir: &Path) -> io::Result<(LogStore, LogOpenReport)> {
        let last_purged: Option<LogId> = durable::read_record(dir, PURGED_FILE)?;
        let vote: Option<Vote> = durable::read_record(dir, VOTE_FILE)?;
        let path = dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let bytes = std::fs::read(&path)?;
        let (entries, valid_len) = decode_log(&bytes, last_purged.map(|l| l.index))?;
        let torn_bytes = bytes.len() as u64 - valid_len;
        if torn_bytes > 0 {
            tracing::warn!(torn_bytes, valid_len, "raft log: truncating torn tail");
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        durable::fsync_dir(dir)?;
        let report = LogOpenReport {
            entries: entries.len() as u64,
            torn_bytes,
            last_index: entries
                .keys()
                .next_back()
                .copied()
                .or(last_purged.map(|l| l.index)),
        };
        let inner = LogInner {
            dir: dir.to_path_buf(),
            file,
            file_len: valid_len,
            entries,
            last_purged,
            vote,
        };
        Ok((
            LogStore {
                inner: Arc::new(Mutex::new(inner)),
            },
            report,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // Poisoning means a panic on the control thread mid-IO; the state is
        // still the last consistent one we wrote, so keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Decodes frames until the first torn one. Returns the entries newer than
/// `purged_index` and the byte length of the valid prefix.
fn decode_log(bytes: &[u8], purged_index: Option<u64>) -> io::Result<(BTreeMap<u64, Stored>, u64)> {
    let mut entries = BTreeMap::new();
    let mut pos = 0usize;
    let mut prev: Option<u64> = None;
    while let Some((payload, used)) = durable::frame_decode(&bytes[pos..]) {
        let entry: Entry = serde_json::from_slice(payload).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("raft log at {pos}: {e}"),
            )
        })?;
        let index = entry.log_id.index;
        if prev.is_some_and(|p| p + 1 != index) {
            let msg = format!("raft log at {pos}: index {index} after {prev:?}");
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        }
        prev = Some(index);
        if purged_index.map_or(true, |p| index > p) {
            entries.insert(
                index,
                Stored {
                    offset: pos as u64,
                    entry,
                },
            );
        }
        pos += used;
    }
    Ok((entries, pos as u64))
}

impl LogInner {
    fn append(&mut self, entries: Vec<Entry>) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for entry in &entries {
            if let Some((&last, _)) = self.entries.iter().next_back() {
                let expected = offsets.len() as u64 + last + 1;
                assert_eq!(
                    entry.log_id.index, expected,
                    "raft log append must be contiguous"
                );
            }
            offsets.push(self.file_len + buf.len() as u64);
            let payload = serde_json::to_vec(entry).map_err(io::Error::other)?;
            durable::frame_encode(&mut buf, &payload);
        }
        self.file.write_all_at(&buf, self.file_len)?;
        self.file.sync_data()?;
        self.file_len += buf.len() as u64;
        for (entry, offset) in entries.into_iter().zip(offsets) {
            tracing::debug!(log_id = %entry.log_id, "raft log: appended");
            self.entries
                .insert(entry.log_id.index, Stored { offset, entry });
        }
        Ok(())
    }

    /// Removes entries at and after `index`.
    fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some(first) = self.entries.range(index..).next().map(|(_, s)| s.offset) else {
            return Ok(());
        };
        self.file.set_len(first)?;
        self.file.sync_data()?;
        self.file_len = first;
        self.entries.split_off(&index);
        debug_assert!(self.entries.keys().next_back().map_or(true, |&l| l < index));
        Ok(())
    }

    /// Removes entries up to and including `log_id`; rewrites the file.
    fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        assert!(self.last_purged <= Some(log_id), "purge must move forward");
        durable::write_record(&self.dir, PURGED_FILE, &log_id)?;
        self.last_purged = Some(log_id);
        self.entries = self.entries.split_off(&(log_id.index + 1));
        self.rewrite()
    }

    /// Writes the in-memory entries to a fresh `log` and swaps it in.
    fn rewrite(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        for stored in self.entries.values_mut() {
            stored.offset = buf.len() as u64;
            let payload = serde_json::to_vec(&stored.entry).map_err(io::Error::other)?;
            durable::frame_encode(&mut buf, &payload);
        }
        durable::write_atomic(&self.dir, LOG_FILE, &buf)?;
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(LOG_FILE))?;
        self.file_len = buf.len() as u64;
        Ok(())
    }

    fn log_state(&self) -> LogState<TypeConfig> {
        let last = self.entries.values().next_back().map(|s| s.entry.log_id);
        LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: last.or(self.last_purged),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.lock();
        Ok(inner
            .entries
            .range(range)
            .map(|(_, s)| s.entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(self.lock().log_state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut inner = self.lock();
        durable::write_record(&inner.dir, VOTE_FILE, vote)
            .map_err(|e| StorageIOError::write_vote(io_err(e)))?;
        tracing::debug!(%vote, "raft: vote saved");
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let result = self.lock().append(entries.into_iter().collect());
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err =
                    StorageIOError::write_logs(io_err(io::Error::new(e.kind(), e.to_string())));
                callback.log_io_completed(Err(e));
                Err(err.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "raft log: truncate");
        self.lock()
            .truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "raft log: purge");
        self.lock()
            .purge(log_id)
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 7), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(store: &LogStore) -> Vec<u64> {
        store.lock().entries.keys().copied().collect()
    }

    #[test]
    fn append_truncate_purge_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, report) = LogStore::open(dir.path()).expect("open");
        assert_eq!(
            report,
            LogOpenReport {
                entries: 0,
                torn_bytes: 0,
                last_index: None
            }
        );
        store
            .lock()
            .append((1..=10).map(entry).collect())
            .expect("append");
        store.lock().truncate(8).expect("truncate");
        assert_eq!(indexes(&store), (1..=7).collect::<Vec<_>>());
        store
            .lock()
            .append(vec![entry(8)])
            .expect("append after truncate");
        store.lock().purge(entry(3).log_id).expect("purge");
        assert_eq!(indexes(&store), (4..=8).collect::<Vec<_>>());
        let state = store.lock().log_state();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(8));
        drop(store);

        let (store, report) = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(
            report,
            LogOpenReport {
                entries: 5,
                torn_bytes: 0,
                last_index: Some(8)
            }
        );
        assert_eq!(indexes(&store), (4..=8).collect::<Vec<_>>());
        store.lock().purge(entry(8).log_id).expect("purge all");
        let state = store.lock().log_state();
        assert_eq!(
            state.last_log_id.map(|l| l.index),
            Some(8),
            "last log id falls back to purged"
        );
        store
            .lock()
            .append(vec![entry(9)])
            .expect("append after full purge");
    }

    #[test]
    fn torn_tail_is_cut_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = LogStore::open(dir.path()).expect("open");
        store
            .lock()
            .append((1..=3).map(entry).collect())
            .expect("append");
        let len = store.lock().file_len;
        drop(store);
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).expect("write torn");
        let (store, report) = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(report.entries, 2);
        assert!(report.torn_bytes > 0);
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            store.lock().file_len
        );
        assert!(store.lock().file_len < len);
        store.lock().append(vec![entry(3)]).expect("re-append");
        drop(store);
        let (_, report) = LogStore::open(dir.path()).expect("reopen again");
        assert_eq!(
            report,
            LogOpenReport {
                entries: 3,
                torn_bytes: 0,
                last_index: Some(3)
            }
        );
    }
}
