//! Search indexing, the shard's side: which partitions are indexed, and the
//! one task that feeds their acknowledged records to the shard's index
//! (`sluice_index::ShardIndex`, built on its helper thread).
//!
//! - A partition is indexed when its topic sets `sluice.search.enable=true`
//!   and it is hosted on this shard. `SearchQueue` holds that set and the
//!   partitions with records not yet sent; the shard's `Waiters::notify`
//!   (every growth of a partition's high watermark) marks them.
//! - One task per shard (`run_indexer`), in a low-priority task queue,
//!   sends each dirty partition's entries below the high watermark (only
//!   acknowledged records are ever indexed), at most `SLICE_BYTES` per
//!   partition per turn, yielding between partitions. It reads what the
//!   tail cache no longer holds from the WAL, like a fetch. Decoding,
//!   decompression and index building run on the helper thread.
//! - The index opens lazily, on a thread of its own (opening may read
//!   every file of a large index to check it), the first time the shard has
//!   a searchable partition, or at start when the shard has an index.
//! - Memory: the index's builders (`builders * builder_heap_bytes`) are
//!   charged to the `search_index` pool when it opens, and the record bytes
//!   queued for the helper while they are queued (at most
//!   `QUEUED_BYTES_MAX`).
//! - The log start moves (retention, DeleteRecords): the documents below it
//!   are deleted; a topic deleted or no longer searchable: its documents
//!   are deleted.
//! - Idle: the task waits on one `WaitSlot`; with nothing dirty nothing
//!   wakes, and the helper thread blocks on its queue.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_index::{IndexConfig, IndexError, Op, Origin, Positions, RecordRef, ShardIndex, Shared};
use sluice_raft::MetadataView;
use tracing::info;

use crate::budget::Pool;
use crate::engine::Engine;
use crate::entry::PartitionKey;
use crate::waiters::WaitSlot;

/// The topic config that opts a topic into search.
pub const SEARCH_ENABLE: &str = "sluice.search.enable";

/// Record bytes of one partition sent per turn before the next partition.
const SLICE_BYTES: u64 = 1 << 20;
/// Record bytes queued for the helper thread at most.
const QUEUED_BYTES_MAX: u64 = 8 << 20;
/// Operations queued for the helper thread at most.
const QUEUE_OPS_MAX: usize = 64;
/// Pause before opening the index again after it failed to open.
const OPEN_RETRY_PAUSE: Duration = Duration::from_secs(10);
/// Pause when the helper's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// Settings of a shard's search index.
#[derive(Clone, Debug)]
pub struct SearchTuning {
    /// Index builders at once (Tantivy indexing workers).
    pub builders: usize,
    /// Heap of each builder (at least Tantivy's 15 MB).
    pub builder_heap_bytes: usize,
    /// Longest time from acknowledgement to searchable, once caught up.
    pub refresh_ms: u64,
    /// Bytes of index an open searcher may map and stay open (the index
    /// cache).
    pub cache_bytes_max: u64,
}

impl Default for SearchTuning {
    fn default() -> SearchTuning {
        SearchTuning {
            builders: 1,
            builder_heap_bytes: sluice_index::writer::BUILDER_HEAP_BYTES_MIN,
            refresh_ms: 1_000,
            cache_bytes_max: 256 << 20,
        }
    }
}

/// The node's shard indexes, for searches from the admin thread: each
/// shard sets its slot once its index is open.
#[derive(Default, Debug)]
pub struct SearchHandles {
    shards: Vec<std::sync::OnceLock<Arc<Shared>>>,
}

impl SearchHandles {
    pub fn new(shards: u32) -> Arc<SearchHandles> {
        Arc::new(SearchHandles {
            shards: (0..shards).map(|_| std::sync::OnceLock::new()).collect(),
        })
    }

    /// The open indexes, by shard.
    pub fn open(&self) -> impl Iterator<Item = &Arc<Shared>> {
        self.shards.iter().filter_map(|s| s.get())
    }

    fn set(&self, shard: u32, shared: Arc<Shared>) {
        if let Some(slot) = self.shards.get(shard as usize) {
            let _ = slot.set(shared);
        }
    }
}

/// Whether `configs` enable search (`true`, any case).
pub fn search_enabled(configs: &std::collections::BTreeMap<String, String>) -> bool {
    configs
        .get(SEARCH_ENABLE)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The indexed partitions and those with records not yet sent.
#[derive(Default)]
pub(crate) struct SearchQueue {
    enabled: RefCell<HashSet<PartitionKey>>,
    dirty: RefCell<BTreeSet<PartitionKey>>,
    pub wake: Rc<WaitSlot>,
}

impl SearchQueue {
    /// A partition grew: queue it when indexed.
    pub fn grew(&self, key: &PartitionKey) {
        if self.enabled.borrow().contains(key) {
            self.dirty.borrow_mut().insert(*key);
            self.wake.fire();
        }
    }
}

/// One indexed partition.
struct Indexed {
    origin: Origin,
    /// Next offset to send; `None` until the index gave its position.
    sent: Option<i64>,
    /// The log start whose deletion was sent.
    deleted_below: i64,
}

/// The shard's search state.
#[derive(Default)]
pub(crate) struct Search {
    pub queue: Rc<SearchQueue>,
    index: RefCell<Option<ShardIndex>>,
    /// Positions of the last commit not yet taken by a partition.
    resume: RefCell<Positions>,
    parts: RefCell<HashMap<PartitionKey, Indexed>>,
    /// Deletions waiting to be queued.
    ops: RefCell<VecDeque<Op>>,
    /// Bytes charged to `Pool::SearchIndex` for queued records.
    queued_charged: Cell<u64>,
    /// Bytes charged to `Pool::SearchIndex` for the builders.
    builders_charged: Cell<u64>,
    /// Open the index even with nothing to index (it exists at start).
    open_wanted: Cell<bool>,
}

impl Engine {
    /// After a view: the partitions to index, and deletions for topics no
    /// longer searchable. O(search-enabled topics + indexed partitions).
    pub(crate) fn sync_search(&self, view: &MetadataView) {
        let search = &self.search;
        let mut wanted: HashMap<PartitionKey, Origin> = HashMap::new();
        {
            let parts = self.parts.borrow();
            for (name, topic) in view.topics.iter() {
                if !search_enabled(&topic.configs) {
                    continue;
                }
                for i in 0..topic.partitions.len() {
                    let key = PartitionKey {
                        topic_id: topic.id,
                        partition: i as u32,
                    };
                    if parts.contains_key(&key) {
                        let origin = Origin {
                            topic: name.to_string(),
                            topic_id: topic.id,
                            partition: i as i32,
                        };
                        wanted.insert(key, origin);
                    }
                }
            }
        }
        let mut indexed = search.parts.borrow_mut();
        let mut dropped = Vec::new();
        indexed.retain(|k, _| {
            let keep = wanted.contains_key(k);
            if !keep {
                dropped.push(*k);
            }
            keep
        });
        let kept_topics: HashSet<[u8; 16]> = wanted.keys().map(|k| k.topic_id).collect();
        let mut dropped_topics = BTreeSet::new();
        for k in dropped {
            if kept_topics.contains(&k.topic_id) {
                // The partition left this shard (reassigned), its topic
                // stays searchable here.
                search.ops.borrow_mut().push_back(Op::DeletePartition {
                    topic_id: k.topic_id,
                    partition: k.partition as i32,
                });
            } else {
                dropped_topics.insert(k.topic_id);
            }
        }
        for t in dropped_topics {
            search
                .ops
                .borrow_mut()
                .push_back(Op::DeleteTopic { topic_id: t });
        }
        let mut fresh = false;
        for (k, origin) in wanted {
            indexed.entry(k).or_insert_with(|| {
                fresh = true;
                search.queue.dirty.borrow_mut().insert(k);
                Indexed {
                    origin,
                    sent: None,
                    deleted_below: 0,
                }
            });
        }
        *search.queue.enabled.borrow_mut() = indexed.keys().copied().collect();
        if fresh || !search.ops.borrow().is_empty() {
            search.queue.wake.fire();
        }
    }

    /// The log start of `key` moved: its documents below it go.
    pub(crate) fn search_log_start_moved(&self, key: &PartitionKey) {
        self.search.queue.grew(key);
    }

    /// Opens the index on a thread of its own, unpinned and at a lower
    /// priority; its helper and Tantivy's threads inherit both.
    async fn open_search_index(&self) -> Result<(), IndexError> {
        let cfg = IndexConfig {
            dir: self
                .cfg
                .data_dir
                .join(format!("shard-{}", self.id()))
                .join("index"),
            shard: self.id(),
            builders: self.cfg.search.builders.max(1),
            builder_heap_bytes: self.cfg.search.builder_heap_bytes,
            refresh: Duration::from_millis(self.cfg.search.refresh_ms.max(1)),
            queue_ops_max: QUEUE_OPS_MAX,
            cache_bytes_max: self.cfg.search.cache_bytes_max,
        };
        let (tx, rx) = futures::channel::oneshot::channel();
        // A short-lived thread, not this core: opening reads (and checks)
        // the index's files, and the helper and Tantivy's threads it starts
        // must inherit an unpinned, low-priority thread, not the shard's.
        let spawned = std::thread::Builder::new()
            .name(format!("sluice-index-open-{}", self.id()))
            .spawn(move || {
                leave_the_data_cores();
                let _ = tx.send(ShardIndex::open(cfg, decode));
            });
        if let Err(e) = spawned {
            return Err(IndexError::Tantivy(e.to_string()));
        }
        let (index, positions) = rx.await.map_err(|_| IndexError::Stopped)??;
        let builders = (self.cfg.search.builders.max(1) as u64)
            * self
                .cfg
                .search
                .builder_heap_bytes
                .max(sluice_index::writer::BUILDER_HEAP_BYTES_MIN) as u64;
        self.budget.charge_forced(Pool::SearchIndex, builders);
        self.search.builders_charged.set(builders);
        self.search.open_wanted.set(false);
        // Topics and partitions indexed before that are no longer indexed
        // here.
        let indexed = self.search.parts.borrow();
        let topics: HashSet<[u8; 16]> = indexed.keys().map(|k| k.topic_id).collect();
        let gone: BTreeSet<[u8; 16]> = positions
            .keys()
            .map(|(t, _)| *t)
            .filter(|t| !topics.contains(t))
            .collect();
        let moved: Vec<([u8; 16], i32)> = positions
            .keys()
            .filter(|(t, p)| {
                topics.contains(t)
                    && !indexed.contains_key(&PartitionKey {
                        topic_id: *t,
                        partition: *p as u32,
                    })
            })
            .copied()
            .collect();
        drop(indexed);
        for (topic_id, partition) in moved {
            self.search.ops.borrow_mut().push_back(Op::DeletePartition {
                topic_id,
                partition,
            });
        }
        for t in gone {
            self.search
                .ops
                .borrow_mut()
                .push_back(Op::DeleteTopic { topic_id: t });
        }
        info!(
            shard = self.id(),
            partitions = positions.len(),
            "search index opened"
        );
        if let Some(handles) = &self.cfg.search_handles {
            handles.set(self.id(), index.shared.clone());
        }
        *self.search.resume.borrow_mut() = positions;
        *self.search.index.borrow_mut() = Some(index);
        Ok(())
    }

    /// Queues `op`; gives it back when the queue is full.
    fn send_search(&self, op: Op) -> Result<(), Op> {
        let index = self.search.index.borrow();
        let Some(ix) = index.as_ref() else {
            return Err(op);
        };
        match ix.try_send(op) {
            Ok(()) => Ok(()),
            Err(IndexError::Full(op)) => Err(op),
            // The helper stopped: at close, or after a panic it caught
            // and counted; the work is dropped.
            Err(_) => Ok(()),
        }
    }

    /// Bytes queued for the helper now, charged to the pool.
    fn settle_search_charge(&self) -> u64 {
        let index = self.search.index.borrow();
        let Some(ix) = index.as_ref() else {
            return 0;
        };
        let stats = &ix.shared.stats;
        let queued = stats
            .queued_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(
                stats
                    .consumed_bytes
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
        let charged = self.search.queued_charged.replace(queued);
        if queued > charged {
            self.budget
                .charge_forced(Pool::SearchIndex, queued - charged);
        } else {
            self.budget.discharge(Pool::SearchIndex, charged - queued);
        }
        queued
    }

    /// One turn over the dirty partitions. Returns false when the helper's
    /// queue is full (pause before the next turn).
    async fn search_turn(self: &Rc<Self>) -> bool {
        loop {
            // The borrow ends with this statement (a `while let` would hold
            // it through the body).
            let Some(op) = self.search.ops.borrow_mut().pop_front() else {
                break;
            };
            if let Err(op) = self.send_search(op) {
                self.search.ops.borrow_mut().push_front(op);
                return false;
            }
        }
        let keys: Vec<PartitionKey> = std::mem::take(&mut *self.search.queue.dirty.borrow_mut())
            .into_iter()
            .collect();
        let mut flowing = true;
        for (i, key) in keys.iter().enumerate() {
            if !flowing || self.closing.get() {
                self.search
                    .queue
                    .dirty
                    .borrow_mut()
                    .extend(keys[i..].iter().copied());
                break;
            }
            flowing = self.index_partition(key).await;
            glommio::yield_if_needed().await;
        }
        flowing
    }

    /// Sends up to `SLICE_BYTES` of `key`'s acknowledged records; leaves it
    /// dirty when more remain. False when the helper's queue is full.
    async fn index_partition(self: &Rc<Self>, key: &PartitionKey) -> bool {
        let mut sent_bytes = 0u64;
        loop {
            let Some(step) = self.next_search_step(key) else {
                return true;
            };
            if sent_bytes >= SLICE_BYTES || self.settle_search_charge() >= QUEUED_BYTES_MAX {
                self.search.queue.dirty.borrow_mut().insert(*key);
                return sent_bytes > 0;
            }
            let op = match step {
                Step::Delete(op) => op,
                Step::Entry {
                    origin,
                    source,
                    from,
                    next,
                } => {
                    let batches = match source {
                        Source::Cached(b) => b,
                        Source::Wal {
                            position,
                            base_offset,
                        } => {
                            match self.read_stored(*key, position, base_offset, None).await {
                                Ok(b) => b,
                                Err(e) => {
                                    // Retention moved or removed it meanwhile
                                    // (the next step sees the new position or
                                    // log start), or storage failed: try again
                                    // after a pause, never skip live records.
                                    if !matches!(e, crate::ShardError::OffsetOutOfRange) {
                                        self.warn_rate_limited("reading an entry to index", &e);
                                    }
                                    self.search.queue.dirty.borrow_mut().insert(*key);
                                    return false;
                                }
                            }
                        }
                    };
                    sent_bytes += batches.len() as u64;
                    Op::Index {
                        origin,
                        batches,
                        from,
                        next,
                    }
                }
            };
            let next = match &op {
                Op::Index { next, .. } => Some(*next),
                _ => None,
            };
            if let Err(op) = self.send_search(op) {
                if let Op::DeleteBelow { .. } | Op::DeleteTopic { .. } = op {
                    self.search.ops.borrow_mut().push_back(op);
                }
                self.search.queue.dirty.borrow_mut().insert(*key);
                return false;
            }
            if let Some(next) = next {
                self.note_sent(key, next);
            }
        }
    }

    fn note_sent(&self, key: &PartitionKey, next: i64) {
        if let Some(ix) = self.search.parts.borrow_mut().get_mut(key) {
            ix.sent = Some(ix.sent.unwrap_or(0).max(next));
        }
    }

    /// What to send next for `key`: a deletion below a moved log start,
    /// or the entry holding its next unsent offset below the HW.
    fn next_search_step(&self, key: &PartitionKey) -> Option<Step> {
        let mut indexed = self.search.parts.borrow_mut();
        let ix = indexed.get_mut(key)?;
        let parts = self.parts.borrow();
        let p = parts.get(key)?;
        let sent = *ix.sent.get_or_insert_with(|| {
            self.search
                .resume
                .borrow_mut()
                .remove(&(key.topic_id, key.partition as i32))
                .unwrap_or(0)
        });
        if p.log_start_offset > ix.deleted_below {
            ix.deleted_below = p.log_start_offset;
            if sent > 0 {
                return Some(Step::Delete(Op::DeleteBelow {
                    topic_id: key.topic_id,
                    partition: key.partition as i32,
                    offset: p.log_start_offset,
                }));
            }
        }
        let from = sent.max(p.log_start_offset);
        if from >= p.high_watermark {
            if from > sent {
                ix.sent = Some(from);
            }
            return None;
        }
        let entry = p.batches.get(p.locate(from))?;
        if entry.base_offset >= p.high_watermark {
            return None;
        }
        let next = (entry.last_offset + 1).min(p.high_watermark);
        let source = match (&entry.cached, entry.position) {
            (Some(b), _) => Source::Cached(b.clone()),
            (None, Some(position)) => Source::Wal {
                position,
                base_offset: entry.base_offset,
            },
            (None, None) => return None,
        };
        Some(Step::Entry {
            origin: ix.origin.clone(),
            source,
            from,
            next,
        })
    }
}

enum Source {
    Cached(Bytes),
    Wal {
        position: sluice_wal::Position,
        base_offset: i64,
    },
}

enum Step {
    Delete(Op),
    Entry {
        origin: Origin,
        source: Source,
        from: i64,
        next: i64,
    },
}

/// The shard's indexing task (see the module doc).
pub(crate) async fn run_indexer(engine: Rc<Engine>) {
    if index_exists(&engine.cfg.data_dir, engine.id()) {
        // Opened at once: deletions made while the node was down reach it.
        engine.search.open_wanted.set(true);
    }
    loop {
        if engine.closing.get() {
            return;
        }
        let idle = engine.search.queue.dirty.borrow().is_empty()
            && engine.search.ops.borrow().is_empty()
            && !engine.search.open_wanted.get();
        if idle {
            engine.settle_search_charge();
            engine.search.queue.wake.wait().await;
            continue;
        }
        if engine.search.index.borrow().is_none() {
            if let Err(e) = engine.open_search_index().await {
                engine.warn_rate_limited("opening the search index (retried in 10 s)", &e);
                glommio::timer::sleep(OPEN_RETRY_PAUSE).await;
                continue;
            }
        }
        if !engine.search_turn().await {
            glommio::timer::sleep(QUEUE_FULL_PAUSE).await;
        }
    }
}

impl Engine {
    /// Stops the helper thread after its last commit, waiting for it on a
    /// thread of its own.
    pub(crate) async fn close_search(&self) {
        let Some(index) = self.search.index.borrow_mut().take() else {
            return;
        };
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        // Joining the helper blocks until its last commit is synced: done
        // on a short-lived thread so the shard's executor keeps running.
        let spawned = std::thread::Builder::new()
            .name(format!("sluice-index-close-{}", self.id()))
            .spawn(move || {
                let mut index = index;
                index.close();
                let _ = tx.send(());
            });
        if spawned.is_ok() {
            let _ = rx.await;
        }
        let charged = self.search.builders_charged.take() + self.search.queued_charged.take();
        self.budget.discharge(Pool::SearchIndex, charged);
    }
}

/// Whether the shard has an index on disk (opened at start, so deletions
/// made while it was down reach it).
pub(crate) fn index_exists(data_dir: &std::path::Path, shard: u32) -> bool {
    data_dir
        .join(format!("shard-{shard}"))
        .join("index")
        .join("meta.json")
        .exists()
}

/// Lets the calling thread run on every CPU at a lower priority (nice 10):
/// threads it creates inherit both.
fn leave_the_data_cores() {
    // SAFETY: plain syscalls on the calling thread with a local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpus = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).clamp(1, 1024) as usize;
        for c in 0..cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// The index's decoder: the shard's record batches.
fn decode(
    batches: &[u8],
    scratch: &mut Vec<u8>,
    each: &mut dyn FnMut(RecordRef<'_>),
) -> Result<u64, String> {
    let mut errors = Vec::new();
    let decoded = crate::records::decode_batches(
        batches,
        &crate::records::DecodeLimits::default(),
        scratch,
        &mut errors,
        each,
    )?;
    match errors.first() {
        None => Ok(decoded),
        Some(e) => Err(format!("{} batches not decoded, first: {e}", errors.len())),
    }
}
