//! One shard's index: a Tantivy index under the shard's data dir, written
//! by one helper thread, read by searches from the admin thread.
//!
//! Splits are the index's segments: each is a small immutable index that a
//! builder cuts when its heap is full (`builder_heap_bytes`) or when the
//! refresh interval (`refresh`) passes with documents pending (a commit),
//! and that Tantivy's merge policy merges in the background. At most
//! `builders` builders run at once (Tantivy's indexing workers, each with
//! its own heap of at least Tantivy's 15 MB minimum); the caller charges
//! `builders * builder_heap_bytes` to its memory budget.
//!
//! Durability: every commit carries, as its payload, the next offset of
//! every partition it covers (`Positions`). After a crash the shard resumes
//! each partition at the offset the last commit records, so records are
//! indexed again only after the last durable commit, and never twice
//! (documents below a partition's position are skipped). An index that
//! does not open is removed and rebuilt from the log, with one warning.
//!
//! Threads: the helper thread `sluice-index-N`, and Tantivy's own workers
//! (builders, one segment updater, one merge thread), all created by the
//! helper, so they inherit its CPU affinity (set by the caller), never a
//! shard core's. With nothing queued the helper blocks on its channel: an
//! idle index wakes nothing.
//!
//! The queue between the shard and the helper is bounded in operations
//! (`queue_ops_max`) and the bytes it holds are counted
//! (`IndexStats::queued_bytes`), so the shard can bound them too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tantivy::indexer::IndexWriterOptions;
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, Term};
use tracing::{debug, warn};

use crate::doc::{document, Origin, RecordRef};
use crate::schema::{partition_term, topic_id_term, Fields};

/// Decodes the records of stored record batches (the caller's log format)
/// into `each`; `scratch` is reused for decompression. Errors name a bad
/// batch; the records before it were delivered.
pub type Decoder = fn(
    batches: &[u8],
    scratch: &mut Vec<u8>,
    each: &mut dyn FnMut(RecordRef<'_>),
) -> Result<u64, String>;

/// Tantivy's smallest heap per indexing worker (`MEMORY_BUDGET_NUM_BYTES_MIN`,
/// not exported; `IndexWriter` refuses less).
pub const BUILDER_HEAP_BYTES_MIN: usize = 15_000_000;

/// Blocks of decompressed stored documents an open searcher caches per
/// segment (Tantivy's default is 100).
const DOC_STORE_CACHE_BLOCKS: usize = 2;
/// Heap an open searcher holds per split, estimated: its document-store
/// cache (16 KiB blocks) and the term-dictionary and column metadata it
/// reads at open. The split's files are mapped: page cache, which the
/// kernel reclaims, not heap.
const SEARCHER_BYTES_PER_SPLIT: u64 = DOC_STORE_CACHE_BLOCKS as u64 * 16 * 1024 + 32 * 1024;

#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// The index directory (created when missing).
    pub dir: PathBuf,
    pub shard: u32,
    /// Indexing workers (builders) at once.
    pub builders: usize,
    /// Heap of each builder; at least `BUILDER_HEAP_BYTES_MIN`.
    pub builder_heap_bytes: usize,
    /// Longest time a queued record waits before it is searchable.
    pub refresh: Duration,
    /// Operations queued between the shard and the helper thread.
    pub queue_ops_max: usize,
    /// An open searcher is kept between searches while the heap it holds
    /// (estimated per split) is at most this many bytes (the index cache).
    pub cache_bytes_max: u64,
}

/// Partition (topic id, partition) -> next offset to index.
pub type Positions = BTreeMap<([u8; 16], i32), i64>;

/// Work for the helper thread.
#[derive(Debug)]
pub enum Op {
    /// Records of `batches` at offsets `from..next` (records below `from`
    /// or below what the partition already indexed are skipped).
    Index {
        origin: Origin,
        batches: Bytes,
        from: i64,
        next: i64,
    },
    /// The partition's log start moved: drop documents below `offset`.
    DeleteBelow {
        topic_id: [u8; 16],
        partition: i32,
        offset: i64,
    },
    /// The topic is gone or no longer searchable: drop its documents.
    DeleteTopic { topic_id: [u8; 16] },
    /// The partition left this shard: drop its documents and position.
    DeletePartition { topic_id: [u8; 16], partition: i32 },
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index at {dir}: {reason}")]
    Open { dir: String, reason: String },
    #[error("the index queue is full")]
    Full(Op),
    #[error("the index thread stopped")]
    Stopped,
    #[error("{0}")]
    Tantivy(String),
}

/// Counters of one shard's index (read by `/metrics`).
#[derive(Debug, Default)]
pub struct IndexStats {
    pub docs_indexed: AtomicU64,
    pub records_skipped: AtomicU64,
    pub batches_failed: AtomicU64,
    pub commits: AtomicU64,
    /// Time spent committing, and the longest commit.
    pub commit_micros: AtomicU64,
    pub commit_micros_max: AtomicU64,
    pub commit_failures: AtomicU64,
    pub deletes: AtomicU64,
    /// Documents in the last commit (deleted ones excluded once merged).
    pub docs_committed: AtomicU64,
    pub segments: AtomicU64,
    /// Bytes of the index's files after the last commit.
    pub disk_bytes: AtomicU64,
    /// Bytes of record batches queued for the helper.
    pub queued_bytes: AtomicU64,
    /// Record batch bytes the helper took off the queue.
    pub consumed_bytes: AtomicU64,
    pub searcher_opens: AtomicU64,
    /// Heap of the open searcher, estimated (0 when closed): the index cache.
    pub cache_bytes: AtomicU64,
    pub searches: AtomicU64,
}

/// A snapshot of `IndexStats` (for `/metrics` and `/admin/memory`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexFigures {
    pub shard: u32,
    pub docs_indexed: u64,
    pub docs_committed: u64,
    pub records_skipped: u64,
    pub batches_failed: u64,
    pub commits: u64,
    pub commit_micros: u64,
    pub commit_micros_max: u64,
    pub commit_failures: u64,
    pub deletes: u64,
    pub segments: u64,
    pub disk_bytes: u64,
    pub queued_bytes: u64,
    pub searcher_opens: u64,
    pub cache_bytes: u64,
    pub cache_bytes_max: u64,
    pub searches: u64,
}

/// What the helper thread and searches share.
pub struct Shared {
    pub fields: Fields,
    pub shard: u32,
    index: Index,
    /// The open searcher's reader (`None` until a search needs it, and
    /// after one that found the index larger than the cache bound).
    reader: Mutex<Option<IndexReader>>,
    cache_bytes_max: u64,
    pub stats: IndexStats,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

/// The handle a shard keeps: sends work, closes the helper on drop.
pub struct ShardIndex {
    tx: Option<SyncSender<Op>>,
    pub shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ShardIndex {
    /// Opens (or creates, or rebuilds when damaged) the index in `cfg.dir`
    /// and starts its helper thread. Returns the positions of the last
    /// commit: where each partition resumes.
    pub fn open(cfg: IndexConfig, decode: Decoder) -> Result<(ShardIndex, Positions), IndexError> {
        assert!(cfg.builders >= 1 && cfg.queue_ops_max >= 1);
        let fields = Fields::new();
        let (index, positions) = open_or_rebuild(&cfg.dir, &fields)?;
        let builder_heap = cfg.builder_heap_bytes.max(BUILDER_HEAP_BYTES_MIN);
        let shared = Arc::new(Shared {
            fields,
            shard: cfg.shard,
            index,
            reader: Mutex::new(None),
            cache_bytes_max: cfg.cache_bytes_max,
            stats: IndexStats::default(),
        });
        shared.note_disk(&cfg.dir);
        let (tx, rx) = sync_channel(cfg.queue_ops_max);
        let helper = Helper {
            shared: shared.clone(),
            positions: positions.clone(),
            decode,
            refresh: cfg.refresh,
            dir: cfg.dir.clone(),
        };
        let options = IndexWriterOptions::builder()
            .memory_budget_per_thread(builder_heap)
            .num_worker_threads(cfg.builders)
            .num_merge_threads(1)
            .build();
        let writer = shared
            .index
            .writer_with_options(options)
            .map_err(|e| IndexError::Open {
                dir: cfg.dir.display().to_string(),
                reason: e.to_string(),
            })?;
        writer.set_merge_policy(Box::new(merge_policy()));
        // The helper thread: document building and commits block (Tantivy's
        // queue, fsync), so they cannot run on a shard's executor. It
        // inherits the caller's affinity and priority (the shard unpins the
        // opening thread first), so it never owns a shard core.
        let thread = std::thread::Builder::new()
            .name(format!("sluice-index-{}", cfg.shard))
            .spawn(move || helper.run(writer, rx))
            .map_err(|e| IndexError::Open {
                dir: cfg.dir.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok((
            ShardIndex {
                tx: Some(tx),
                shared,
                thread: Some(thread),
            },
            positions,
        ))
    }

    /// Queues `op` without blocking; a full queue gives it back.
    pub fn try_send(&self, op: Op) -> Result<(), IndexError> {
        let tx = self.tx.as_ref().ok_or(IndexError::Stopped)?;
        let bytes = match &op {
            Op::Index { batches, .. } => batches.len() as u64,
            _ => 0,
        };
        match tx.try_send(op) {
            Ok(()) => {
                self.shared
                    .stats
                    .queued_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(op)) => Err(IndexError::Full(op)),
            Err(TrySendError::Disconnected(_)) => Err(IndexError::Stopped),
        }
    }

    /// Stops the helper after it committed what it holds. Blocks until it
    /// did: call it off the shard's hot path (at shutdown).
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ShardIndex {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    /// A searcher over the last commit, opened if none is (the index
    /// cache). Runs on the caller's thread.
    pub fn searcher(&self) -> Result<Searcher, IndexError> {
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = reader.as_ref() {
            return Ok(r.searcher());
        }
        let r: IndexReader = self
            .index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .doc_store_cache_num_blocks(DOC_STORE_CACHE_BLOCKS)
            .try_into()
            .map_err(|e| IndexError::Tantivy(e.to_string()))?;
        self.stats.searcher_opens.fetch_add(1, Ordering::Relaxed);
        let searcher = r.searcher();
        let cost = searcher.segment_readers().len() as u64 * SEARCHER_BYTES_PER_SPLIT;
        if cost <= self.cache_bytes_max {
            self.stats.cache_bytes.store(cost, Ordering::Relaxed);
            *reader = Some(r);
        }
        Ok(searcher)
    }

    pub fn figures(&self) -> IndexFigures {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IndexFigures {
            shard: self.shard,
            docs_indexed: get(&s.docs_indexed),
            docs_committed: get(&s.docs_committed),
            records_skipped: get(&s.records_skipped),
            batches_failed: get(&s.batches_failed),
            commits: get(&s.commits),
            commit_micros: get(&s.commit_micros),
            commit_micros_max: get(&s.commit_micros_max),
            commit_failures: get(&s.commit_failures),
            deletes: get(&s.deletes),
            segments: get(&s.segments),
            disk_bytes: get(&s.disk_bytes),
            queued_bytes: get(&s.queued_bytes).saturating_sub(get(&s.consumed_bytes)),
            searcher_opens: get(&s.searcher_opens),
            cache_bytes: get(&s.cache_bytes),
            cache_bytes_max: self.cache_bytes_max,
            searches: get(&s.searches),
        }
    }

    /// After a commit: the open searcher sees it, or is closed when the
    /// index outgrew the cache.
    fn refresh_reader(&self) {
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let cost = self.stats.segments.load(Ordering::Relaxed) * SEARCHER_BYTES_PER_SPLIT;
        if cost > self.cache_bytes_max {
            *reader = None;
            self.stats.cache_bytes.store(0, Ordering::Relaxed);
            return;
        }
        if let Some(r) = reader.as_ref() {
            if let Err(e) = r.reload() {
                debug!(shard = self.shard, error = %e, "index reader reload failed; closing it");
                *reader = None;
                self.stats.cache_bytes.store(0, Ordering::Relaxed);
                return;
            }
            self.stats.cache_bytes.store(cost, Ordering::Relaxed);
        }
    }

    fn note_disk(&self, dir: &Path) {
        let bytes = std::fs::read_dir(dir)
            .map(|it| {
                it.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        self.stats.disk_bytes.store(bytes, Ordering::Relaxed);
        if let Ok(metas) = self.index.searchable_segment_metas() {
            let docs: u64 = metas.iter().map(|m| u64::from(m.num_docs())).sum();
            self.stats
                .segments
                .store(metas.len() as u64, Ordering::Relaxed);
            self.stats.docs_committed.store(docs, Ordering::Relaxed);
        }
    }
}

/// Gives the allocator's free memory back to the system, at most once per
/// `TRIM_INTERVAL` for the whole process. glibc keeps what a thread freed
/// in that thread's arena; the index's threads (the builders, the merger,
/// searches) allocate and free tens of MB at a time, which would otherwise
/// stay resident (200 MB after a 1M-record run). Called after commits and
/// searches, never on a shard core; trimming locks each arena in turn, so
/// it is not done per search.
pub fn release_free_memory() {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = LAST_MS.load(Ordering::Relaxed);
    if now_ms < last + TRIM_INTERVAL.as_millis() as u64
        || LAST_MS
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    // SAFETY: malloc_trim has no preconditions; it locks each arena in turn.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Shortest time between two `release_free_memory` trims.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Tantivy's log merge policy, except that a split with half its
/// documents deleted (retention, DeleteRecords, a deleted topic) is merged
/// (rewritten without them) even when it has no peers to merge with. A
/// split with all its documents deleted is dropped at the next commit.
fn merge_policy() -> tantivy::indexer::LogMergePolicy {
    let mut p = tantivy::indexer::LogMergePolicy::default();
    p.set_del_docs_ratio_before_merge(0.5);
    p
}

/// Opens the index in `dir` with its positions; creates it when missing;
/// removes and recreates it (one warning) when it does not open.
fn open_or_rebuild(dir: &Path, fields: &Fields) -> Result<(Index, Positions), IndexError> {
    let err = |e: &dyn std::fmt::Display| IndexError::Open {
        dir: dir.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    if dir.join("meta.json").exists() {
        // Tantivy panics on some damaged files (a file shorter than its
        // footer): a panic here is damage like any other.
        let opened = std::panic::catch_unwind(|| open_existing(dir, fields))
            .unwrap_or_else(|_| Err("opening it panicked".to_string()));
        match opened {
            Ok(found) => return Ok(found),
            Err(reason) => {
                warn!(dir = %dir.display(), %reason, "search index damaged; rebuilding it from the log");
                std::fs::remove_dir_all(dir).map_err(|e| err(&e))?;
                std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
            }
        }
    }
    let index = Index::create_in_dir(dir, fields.schema.clone()).map_err(|e| err(&e))?;
    Ok((index, Positions::new()))
}

fn open_existing(dir: &Path, fields: &Fields) -> Result<(Index, Positions), String> {
    let index = Index::open_in_dir(dir).map_err(|e| e.to_string())?;
    if index.schema() != fields.schema {
        return Err("its schema is not this version's".into());
    }
    // Every segment of the last commit must open and pass its checksums.
    let damaged = index.validate_checksum().map_err(|e| e.to_string())?;
    if !damaged.is_empty() {
        return Err(format!("{} files fail their checksum", damaged.len()));
    }
    let metas = index.load_metas().map_err(|e| e.to_string())?;
    let positions = match metas.payload.as_deref() {
        None => Positions::new(),
        Some(p) => decode_positions(p)?,
    };
    Ok((index, positions))
}

/// Commit payload: `[[topic id hex, partition, next offset], ...]`.
fn encode_positions(p: &Positions) -> String {
    let list: Vec<(String, i32, i64)> = p
        .iter()
        .map(|((id, part), next)| (topic_id_term(id), *part, *next))
        .collect();
    serde_json::to_string(&list).unwrap_or_default()
}

fn decode_positions(s: &str) -> Result<Positions, String> {
    let list: Vec<(String, i32, i64)> =
        serde_json::from_str(s).map_err(|e| format!("commit payload: {e}"))?;
    let mut out = Positions::new();
    for (id, part, next) in list {
        let id = parse_topic_id(&id).ok_or_else(|| format!("commit payload: topic id {id}"))?;
        out.insert((id, part), next);
    }
    Ok(out)
}

fn parse_topic_id(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

/// The helper thread's state.
struct Helper {
    shared: Arc<Shared>,
    /// Next offset to index per partition: the last commit's, then moved
    /// by every indexed batch.
    positions: Positions,
    decode: Decoder,
    refresh: Duration,
    dir: PathBuf,
}

impl Helper {
    fn run(mut self, mut writer: IndexWriter, rx: Receiver<Op>) {
        let mut scratch = Vec::new();
        // Set while uncommitted changes wait: when they must be committed.
        let mut due: Option<Instant> = None;
        loop {
            let op = match due {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match op {
                Ok(op) => {
                    // A panic while building documents (a record the
                    // decoder or Tantivy chokes on) loses that operation,
                    // counted, not the index.
                    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.apply(&writer, op, &mut scratch)
                    }));
                    if applied.is_err() {
                        self.shared
                            .stats
                            .batches_failed
                            .fetch_add(1, Ordering::Relaxed);
                        warn!(
                            shard = self.shared.shard,
                            "indexing an operation panicked; it was skipped"
                        );
                    }
                    due.get_or_insert_with(|| Instant::now() + self.refresh);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if due.is_some_and(|at| Instant::now() >= at) {
                self.commit(&mut writer);
                due = None;
            }
        }
        if due.is_some() {
            self.commit(&mut writer);
        }
        let _ = writer.wait_merging_threads();
    }

    fn apply(&mut self, writer: &IndexWriter, op: Op, scratch: &mut Vec<u8>) {
        let stats = &self.shared.stats;
        match op {
            Op::Index {
                origin,
                batches,
                from,
                next,
            } => {
                stats
                    .consumed_bytes
                    .fetch_add(batches.len() as u64, Ordering::Relaxed);
                self.index_batches(writer, &origin, &batches, from, next, scratch);
            }
            Op::DeleteBelow {
                topic_id,
                partition,
                offset,
            } => {
                let f = &self.shared.fields;
                let pk = TermQuery::new(
                    Term::from_field_text(f.partition_key, &partition_term(&topic_id, partition)),
                    IndexRecordOption::Basic,
                );
                let below = RangeQuery::new(
                    std::ops::Bound::Unbounded,
                    std::ops::Bound::Excluded(Term::from_field_u64(f.offset, offset.max(0) as u64)),
                );
                let q: Box<dyn Query> = Box::new(BooleanQuery::new(vec![
                    (Occur::Must, Box::new(pk) as Box<dyn Query>),
                    (Occur::Must, Box::new(below)),
                ]));
                if writer.delete_query(q).is_ok() {
                    stats.deletes.fetch_add(1, Ordering::Relaxed);
                }
                let pos = self
                    .positions
                    .entry((topic_id, partition))
                    .or_insert(offset);
                *pos = (*pos).max(offset);
            }
            Op::DeleteTopic { topic_id } => {
                let f = &self.shared.fields;
                writer.delete_term(Term::from_field_text(f.topic_id, &topic_id_term(&topic_id)));
                stats.deletes.fetch_add(1, Ordering::Relaxed);
                self.positions.retain(|(id, _), _| *id != topic_id);
            }
            Op::DeletePartition {
                topic_id,
                partition,
            } => {
                let f = &self.shared.fields;
                let pk = partition_term(&topic_id, partition);
                writer.delete_term(Term::from_field_text(f.partition_key, &pk));
                stats.deletes.fetch_add(1, Ordering::Relaxed);
                self.positions.remove(&(topic_id, partition));
            }
        }
    }

    fn index_batches(
        &mut self,
        writer: &IndexWriter,
        origin: &Origin,
        batches: &[u8],
        from: i64,
        next: i64,
        scratch: &mut Vec<u8>,
    ) {
        let stats = &self.shared.stats;
        let pos = self
            .positions
            .entry((origin.topic_id, origin.partition))
            .or_insert(0);
        let start = (*pos).max(from);
        let fields = &self.shared.fields;
        let mut indexed = 0u64;
        let mut skipped = 0u64;
        let result = (self.decode)(batches, scratch, &mut |r| {
            if r.offset < start || r.offset >= next {
                skipped += 1;
                return;
            }
            if writer.add_document(document(fields, origin, &r)).is_ok() {
                indexed += 1;
            }
        });
        *pos = (*pos).max(next);
        stats.docs_indexed.fetch_add(indexed, Ordering::Relaxed);
        stats.records_skipped.fetch_add(skipped, Ordering::Relaxed);
        if let Err(reason) = result {
            stats.batches_failed.fetch_add(1, Ordering::Relaxed);
            debug!(shard = self.shared.shard, topic = %origin.topic, partition = origin.partition, %reason, "record batch not indexed");
        }
    }

    fn commit(&mut self, writer: &mut IndexWriter) {
        let stats = &self.shared.stats;
        let payload = encode_positions(&self.positions);
        let started = Instant::now();
        let result = writer.prepare_commit().and_then(|mut c| {
            c.set_payload(&payload);
            c.commit()
        });
        match result {
            Ok(_) => {
                let micros = started.elapsed().as_micros() as u64;
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.commit_micros.fetch_add(micros, Ordering::Relaxed);
                stats.commit_micros_max.fetch_max(micros, Ordering::Relaxed);
            }
            Err(e) => {
                stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                warn!(shard = self.shared.shard, error = %e, "search index commit failed");
                return;
            }
        }
        self.shared.note_disk(&self.dir);
        self.shared.refresh_reader();
        release_free_memory();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test decoder: `batches` is lines `offset<TAB>value`.
    fn lines(
        batches: &[u8],
        _: &mut Vec<u8>,
        each: &mut dyn FnMut(RecordRef<'_>),
    ) -> Result<u64, String> {
        let text = std::str::from_utf8(batches).map_err(|e| e.to_string())?;
        let mut n = 0;
        for line in text.lines() {
            let (off, value) = line.split_once('\t').ok_or("no tab")?;
            let offset: i64 = off.parse().map_err(|_| "offset")?;
            each(RecordRef {
                offset,
                timestamp_ms: 1_000 + offset,
                key: None,
                value: Some(value.as_bytes()),
                headers: &[],
            });
            n += 1;
        }
        Ok(n)
    }

    fn config(dir: &Path) -> IndexConfig {
        IndexConfig {
            dir: dir.to_path_buf(),
            shard: 0,
            builders: 1,
            builder_heap_bytes: BUILDER_HEAP_BYTES_MIN,
            refresh: Duration::from_millis(50),
            queue_ops_max: 4,
            cache_bytes_max: 1 << 30,
        }
    }

    fn batch(range: std::ops::Range<i64>) -> Bytes {
        Bytes::from(
            range
                .map(|o| format!("{o}\t{{\"n\":{o},\"user\":\"u{}\"}}\n", o % 3))
                .collect::<String>(),
        )
    }

    fn send(ix: &ShardIndex, op: Op) {
        let mut op = op;
        for _ in 0..1000 {
            match ix.try_send(op) {
                Ok(()) => return,
                Err(IndexError::Full(back)) => {
                    op = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("queue stayed full");
    }

    fn wait_docs(ix: &ShardIndex, n: u64) {
        for _ in 0..400 {
            if ix.shared.searcher().unwrap().num_docs() == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "expected {n} docs, have {}",
            ix.shared.searcher().unwrap().num_docs()
        );
    }

    #[test]
    fn commits_resume_positions_skip_duplicates_and_deletes_apply() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = Origin {
            topic: "t".into(),
            topic_id: [7; 16],
            partition: 1,
        };
        {
            let (ix, positions) = ShardIndex::open(config(tmp.path()), lines).unwrap();
            assert!(positions.is_empty());
            send(
                &ix,
                Op::Index {
                    origin: origin.clone(),
                    batches: batch(0..10),
                    from: 0,
                    next: 10,
                },
            );
            // The same records again (a carried-forward entry): skipped.
            send(
                &ix,
                Op::Index {
                    origin: origin.clone(),
                    batches: batch(5..12),
                    from: 5,
                    next: 12,
                },
            );
            wait_docs(&ix, 12);
            send(
                &ix,
                Op::DeleteBelow {
                    topic_id: [7; 16],
                    partition: 1,
                    offset: 4,
                },
            );
            wait_docs(&ix, 8);
        }
        let (ix, positions) = ShardIndex::open(config(tmp.path()), lines).unwrap();
        assert_eq!(positions.get(&([7; 16], 1)), Some(&12));
        assert_eq!(ix.shared.searcher().unwrap().num_docs(), 8);
        // Another partition of the topic, then that partition leaves.
        let other = Origin {
            partition: 2,
            ..origin.clone()
        };
        send(
            &ix,
            Op::Index {
                origin: other,
                batches: batch(0..3),
                from: 0,
                next: 3,
            },
        );
        wait_docs(&ix, 11);
        send(
            &ix,
            Op::DeletePartition {
                topic_id: [7; 16],
                partition: 2,
            },
        );
        wait_docs(&ix, 8);
        send(&ix, Op::DeleteTopic { topic_id: [7; 16] });
        wait_docs(&ix, 0);
    }

    #[test]
    fn a_damaged_index_is_rebuilt_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = Origin {
            topic: "t".into(),
            topic_id: [1; 16],
            partition: 0,
        };
        {
            let (ix, _) = ShardIndex::open(config(tmp.path()), lines).unwrap();
            send(
                &ix,
                Op::Index {
                    origin,
                    batches: batch(0..5),
                    from: 0,
                    next: 5,
                },
            );
            wait_docs(&ix, 5);
        }
        // Damage every segment file.
        for e in std::fs::read_dir(tmp.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".idx") || name.ends_with(".store") {
                std::fs::write(e.path(), b"garbage").unwrap();
            }
        }
        let (ix, positions) = ShardIndex::open(config(tmp.path()), lines).unwrap();
        assert!(positions.is_empty());
        assert_eq!(ix.shared.searcher().unwrap().num_docs(), 0);
    }
}
