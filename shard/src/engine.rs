//! The shard's state and its life cycle: start (WAL open, mesh join,
//! recovery), the inbox tasks, the metadata watcher, routing helpers,
//! ListOffsets, topic readiness, stats and close. Produce and fetch live in
//! `produce` and `fetch`.
//!
//! Runs on one executor; all state is `Rc`/`RefCell`/`Cell`, and no borrow
//! is held across an await.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{select, Either};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::Task;
use hdrhistogram::Histogram;
use sluice_raft::{Metadata, MetadataView, TopicMap, TopicMeta};
use sluice_wal::{Wal, WalConfig};
use tracing::{debug, info, trace, warn};

use crate::budget::{Budget, BudgetLimits, Pool};
use crate::entry::{self, PartitionKey, KIND_BATCHES};
use crate::mesh::{FetchKey, Peers, ShardMesh, ShardMsg};
use crate::partition::Partition;
use crate::stats::{latency_histogram, Counters, ShardStats, TOP_TOPICS_MAX};
use crate::tail::TailCache;
use crate::waiters::{run_deadlines, sleep_until, WaitSlot, Waiters};
use crate::warn::WarnLimiter;
use crate::{ListOffsetsPartition, ListOffsetsResult, ShardConfig, ShardError};

/// Shares of the background task queue (search indexing) against the
/// default queue's 1000: a tenth of the core while both have work.
const BACKGROUND_SHARES: usize = 100;

/// Shortest time between two storage-error warnings of one shard.
const STORAGE_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Bytes charged to `Pool::PartitionState` per partition: its struct, its
/// key and the map slot holding them (hashbrown: one control byte).
pub(crate) const PARTITION_BYTES: u64 =
    (std::mem::size_of::<Partition>() + std::mem::size_of::<PartitionKey>() + 1) as u64;
/// Bytes charged to `Pool::PartitionState` per index entry.
pub(crate) const INDEX_ENTRY_BYTES: u64 =
    std::mem::size_of::<crate::partition::StoredBatch>() as u64;
/// Bytes charged to `Pool::PartitionState` per replicated partition: its
/// boxed replication state, its ISR, follower progress and a few epochs
/// (an estimate of the small vectors it holds).
pub(crate) const REPLICATION_BYTES: u64 =
    (std::mem::size_of::<crate::partition::Replication>() + 256) as u64;

pub(crate) struct Engine {
    pub cfg: ShardConfig,
    pub meta: Metadata,
    pub node_id: u64,
    pub wal: Wal,
    pub budget: Rc<Budget>,
    pub waiters: Rc<Waiters>,
    pub parts: RefCell<HashMap<PartitionKey, Partition>>,
    pub tail: RefCell<TailCache>,
    pub peers: Option<Peers>,
    pub applied_version: Cell<u64>,
    /// The last view `apply_view` applied (the base of the next diff).
    last_view: RefCell<Option<Arc<MetadataView>>>,
    /// `await_topic_ready` requests parked until a version is applied.
    version_waiters: RefCell<Vec<(u64, oneshot::Sender<u64>)>>,
    /// Cancel slots of fetches served for other shards.
    pub fetch_cancels: RefCell<HashMap<FetchKey, Rc<WaitSlot>>>,
    pub fetch_seq: Cell<u64>,
    tasks: RefCell<Vec<Task<()>>>,
    pub closing: Cell<bool>,
    /// Produce tasks waiting for durability.
    pub produce_tasks: Cell<u64>,
    /// Produces waiting for memory, in call order (`produce`).
    pub admissions: crate::produce::Admissions,
    pub counters: RefCell<Counters>,
    pub produce_latency_us: RefCell<Histogram<u64>>,
    pub fetch_latency_us: RefCell<Histogram<u64>>,
    storage_warnings: WarnLimiter,
    /// Consumer groups this shard coordinates (`group`).
    pub groups: RefCell<crate::group::Coordinator>,
    /// Wakes the group-deadline task when a group deadline moved earlier.
    pub group_wake: Rc<WaitSlot>,
    /// The group deadline that task sleeps until.
    pub group_armed: Cell<Option<Instant>>,
    /// The offsets partitions this shard coordinates and their loading.
    pub group_log: crate::group::GroupLog,
    /// Transactional ids this shard coordinates (`txn`).
    pub txns: RefCell<crate::txn::TxnCoordinator>,
    /// The `__transaction_state` partitions this shard coordinates, their
    /// loading and the deadline task's wake-up.
    pub(crate) txn_log: crate::txn::TxnLog,
    /// Writes transaction markers to partitions other nodes lead (set by
    /// the broker in a cluster).
    pub remote_markers: RefCell<Option<Rc<dyn crate::txn::RemoteMarkers>>>,
    /// This shard's unused producer ids: `next..end` of its reserved block.
    producer_ids: Cell<(i64, i64)>,
    /// Wakes the retention task (configs changed, topics deleted).
    pub retention_wake: Rc<WaitSlot>,
    /// Replicated partitions this node leads (`replica::run_isr_shrink`).
    pub leading: RefCell<BTreeSet<PartitionKey>>,
    /// Replicated partitions this node does not lead (`Shard::followed`).
    pub following: RefCell<BTreeSet<PartitionKey>>,
    /// Bumped when `following` or a followed partition's leader or epoch
    /// changes (`Shard::followed_changed`).
    pub followed_version: Cell<u64>,
    /// Wakes the ISR-shrink task when the shard starts leading a
    /// replicated partition.
    pub isr_wake: Rc<WaitSlot>,
    /// Search indexing: indexed partitions and the index (`search`).
    pub search: crate::search::Search,
    /// Compaction and the segment collector (`cleaner`).
    pub cleaner: RefCell<crate::cleaner::CleanerState>,
    /// Wakes the cleaner task (configs changed, topics created).
    pub cleaner_wake: Rc<WaitSlot>,
}

impl Engine {
    pub async fn start(
        cfg: ShardConfig,
        mesh: ShardMesh,
        meta: Metadata,
    ) -> Result<Rc<Engine>, ShardError> {
        validate(&cfg, &mesh)?;
        let wal_cfg = wal_config(&cfg);
        let (wal, report) = Wal::open(wal_cfg)
            .await
            .map_err(|e| ShardError::Storage(format!("opening the WAL: {e}")))?;
        info!(
            shard = cfg.shard_id,
            segments = report.segments,
            torn_bytes = report.torn_bytes_dropped,
            "shard WAL opened"
        );
        let (peers, inboxes) = if cfg.shards > 1 {
            let (peers, inboxes) = Peers::join(mesh).await?;
            peers.say_hello(cfg.shard_id).await?;
            (Some(peers), inboxes)
        } else {
            (None, Vec::new())
        };
        let engine = Rc::new(Engine::new(cfg, meta, wal, peers));
        let queue = engine.search.queue.clone();
        engine.waiters.on_growth(Rc::new(move |k| queue.grew(k)));
        engine.spawn(run_deadlines(engine.waiters.clone()));
        engine.spawn(crate::group::run_group_timers(engine.clone()));
        engine.spawn(engine.clone().run_admissions());
        let view = engine.meta.view();
        engine.apply_view(&view);
        engine.recover().await?;
        engine.groups_recovered();
        engine.spawn(crate::group::run_group_loads(engine.clone()));
        engine.txns_recovered();
        engine.spawn(crate::txn::run_txn_loads(engine.clone()));
        engine.spawn(crate::txn::run_txn_timers(engine.clone()));
        engine.spawn(crate::retention::run_retention(engine.clone()));
        engine.spawn(crate::replica::run_isr_shrink(engine.clone()));
        engine.spawn_low_priority(crate::search::run_indexer(engine.clone()));
        engine.spawn_low_priority(crate::cleaner::run_cleaner(engine.clone()));
        for (peer, rx) in inboxes {
            engine.spawn(run_inbox(engine.clone(), peer, rx));
        }
        engine.await_mesh_ready().await?;
        engine.spawn(watch_metadata(engine.clone()));
        // The groups of the offsets partitions led here at start.
        engine.await_group_loads().await;
        // And the transactional ids of the `__transaction_state` ones.
        engine.await_txn_loads().await;
        Ok(engine)
    }

    fn new(cfg: ShardConfig, meta: Metadata, wal: Wal, peers: Option<Peers>) -> Engine {
        let limits = BudgetLimits::derive(
            cfg.memory_bytes_max,
            cfg.tail_cache_bytes_max,
            cfg.io_memory_bytes,
        );
        let budget = Budget::new(limits);
        Engine {
            node_id: meta.view().node_id,
            meta,
            wal,
            budget: budget.clone(),
            waiters: Waiters::new(cfg.fetch_waiters_max),
            parts: RefCell::new(HashMap::new()),
            tail: RefCell::new(TailCache::default()),
            peers,
            applied_version: Cell::new(0),
            last_view: RefCell::new(None),
            version_waiters: RefCell::new(Vec::new()),
            fetch_cancels: RefCell::new(HashMap::new()),
            fetch_seq: Cell::new(0),
            tasks: RefCell::new(Vec::new()),
            closing: Cell::new(false),
            produce_tasks: Cell::new(0),
            admissions: Default::default(),
            counters: RefCell::new(Counters::default()),
            produce_latency_us: RefCell::new(latency_histogram()),
            fetch_latency_us: RefCell::new(latency_histogram()),
            storage_warnings: WarnLimiter::new(STORAGE_WARN_INTERVAL),
            groups: RefCell::new(crate::group::Coordinator::new(
                cfg.shard_id,
                Duration::from_millis(cfg.group_initial_rebalance_delay_ms),
                budget.clone(),
            )),
            group_wake: WaitSlot::new(),
            group_armed: Cell::new(None),
            group_log: Default::default(),
            txns: RefCell::new(crate::txn::TxnCoordinator::new(
                cfg.transactional_id_expiration_ms,
                budget.clone(),
            )),
            txn_log: Default::default(),
            remote_markers: RefCell::new(None),
            producer_ids: Cell::new((0, 0)),
            retention_wake: WaitSlot::new(),
            leading: RefCell::new(BTreeSet::new()),
            following: RefCell::new(BTreeSet::new()),
            followed_version: Cell::new(0),
            isr_wake: WaitSlot::new(),
            search: Default::default(),
            cleaner: Default::default(),
            cleaner_wake: WaitSlot::new(),
            cfg,
        }
    }

    fn spawn(&self, fut: impl Future<Output = ()> + 'static) {
        self.tasks.borrow_mut().push(glommio::spawn_local(fut));
    }

    /// Spawns `fut` into the shard's background task queue: a small share
    /// of the core when produces and fetches want it.
    fn spawn_low_priority(&self, fut: impl Future<Output = ()> + 'static) {
        let tq = glommio::executor().create_task_queue(
            glommio::Shares::Static(BACKGROUND_SHARES),
            glommio::Latency::NotImportant,
            "background",
        );
        match glommio::spawn_local_into(fut, tq) {
            Ok(task) => self.tasks.borrow_mut().push(task),
            Err(e) => warn!(shard = self.id(), error = %e, "no background task queue"),
        }
    }

    pub fn id(&self) -> u32 {
        self.cfg.shard_id
    }

    /// Waits until every peer said hello (bounded by `remote_reply_timeout_ms`).
    async fn await_mesh_ready(&self) -> Result<(), ShardError> {
        let Some(peers) = &self.peers else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_millis(self.cfg.remote_reply_timeout_ms);
        while !peers.is_ready() {
            if self.until(peers.ready.wait(), deadline).await.is_none() {
                return Err(ShardError::Timeout);
            }
        }
        Ok(())
    }

    /// Rebuilds every partition's index from the WAL, from its start.
    async fn recover(&self) -> Result<(), ShardError> {
        let started = Instant::now();
        let (wal_start, wal_end) = (self.wal.start().0, self.wal.durable_end().0);
        let total = wal_end.saturating_sub(wal_start);
        let progress = self.cfg.recovery_progress.clone();
        if let Some(p) = &progress {
            p.begin(total);
        }
        let mut reader = self.wal.reader(self.wal.start());
        let (mut entries, mut skipped, mut damaged) = (0u64, 0u64, 0u64);
        let mut log_starts: HashMap<PartitionKey, i64> = HashMap::new();
        let mut set_aside: HashMap<PartitionKey, Vec<crate::partition::StoredBatch>> =
            HashMap::new();
        // The transaction events of every entry holding batches, replayed
        // per partition at the end (`txn_index::TxnEvents`).
        let mut txn_events = crate::txn_index::TxnEvents::default();
        // Epoch caches are rebuilt from the batch headers.
        for p in self.parts.borrow_mut().values_mut() {
            if let Some(r) = p.repl.as_deref_mut() {
                r.epochs.clear();
            }
        }
        while let Some(next) = reader.next().await {
            let e = next.map_err(|e| ShardError::Storage(format!("recovering the WAL: {e}")))?;
            if let Some(p) = &progress {
                p.replayed(e.position.0.saturating_sub(wal_start));
            }
            if e.kind == crate::group::KIND_GROUP {
                if let Err(reason) = self.recover_group_entry(&e.payload) {
                    damaged += 1;
                    warn!(shard = self.id(), position = e.position.0, %reason, "undecodable group record skipped");
                }
                continue;
            }
            if e.kind == crate::delete_records::KIND_LOG_START {
                match crate::delete_records::decode(&e.payload) {
                    Ok((key, offset)) => {
                        let explicit = log_starts.entry(key).or_insert(offset);
                        *explicit = (*explicit).max(offset);
                        self.recover_log_start(&key, offset);
                    }
                    Err(reason) => {
                        damaged += 1;
                        warn!(shard = self.id(), position = e.position.0, %reason, "undecodable WAL entry skipped");
                    }
                }
                continue;
            }
            if e.kind == crate::replica::KIND_TRUNCATE {
                match crate::replica::decode_truncate(&e.payload) {
                    Ok((key, offset, cut)) => {
                        self.merge_set_aside(&key, &mut set_aside);
                        // The cut's log start stands over older records.
                        log_starts.remove(&key);
                        let end = self.cut_log(&key, offset, cut);
                        let before = txn_events.bytes();
                        match cut {
                            crate::replica::Cut::Truncate => txn_events.truncate(&key, end),
                            crate::replica::Cut::RestartAt => txn_events.clear(&key),
                        }
                        self.charge_txn_bytes(before, txn_events.bytes());
                    }
                    Err(reason) => {
                        damaged += 1;
                        warn!(shard = self.id(), position = e.position.0, %reason, "undecodable WAL entry skipped");
                    }
                }
                continue;
            }
            if e.kind == crate::compact::KIND_REPLACE {
                match crate::compact::decode_stored(e.kind, &e.payload) {
                    Ok(stored) => {
                        if let Err(reason) = self.recover_replacement(
                            &stored,
                            e.position,
                            &mut set_aside,
                            &mut txn_events,
                        ) {
                            damaged += 1;
                            warn!(shard = self.id(), position = e.position.0, %reason, "replacement WAL entry skipped");
                        } else {
                            entries += 1;
                        }
                    }
                    Err(reason) => {
                        damaged += 1;
                        warn!(shard = self.id(), position = e.position.0, %reason, "undecodable WAL entry skipped");
                    }
                }
                continue;
            }
            let replicated = e.kind == crate::replica::KIND_REPLICA_BATCHES;
            if e.kind != KIND_BATCHES && !replicated {
                skipped += 1;
                continue;
            }
            let (header, records) = match entry::decode(&e.payload) {
                Ok(x) => x,
                Err(reason) => {
                    damaged += 1;
                    warn!(shard = self.id(), position = e.position.0, %reason, "undecodable WAL entry skipped");
                    continue;
                }
            };
            let mut parts = self.parts.borrow_mut();
            let pushed = parts
                .get_mut(&header.key)
                .map(|p| p.push_recovered(&header, records.len() as u32, e.position));
            if matches!(pushed, Some(Ok(()))) {
                if replicated {
                    if let Some(p) = parts.get_mut(&header.key) {
                        let now = crate::produce::now_ms();
                        crate::producer_state::record_batches(&mut p.producers, &records, now);
                    }
                } else {
                    self.recover_producer(&mut parts, &header, &records);
                }
                if let Some(p) = parts.get_mut(&header.key) {
                    p.note_epochs(&records);
                }
                let before = txn_events.bytes();
                txn_events.gather(header.key, &records, e.position.0);
                self.charge_txn_bytes(before, txn_events.bytes());
            }
            match pushed {
                Some(Ok(())) => {
                    entries += 1;
                    self.budget
                        .charge_forced(Pool::PartitionState, INDEX_ENTRY_BYTES);
                }
                Some(Err(reason)) => {
                    damaged += 1;
                    warn!(shard = self.id(), position = e.position.0, %reason, "out-of-order WAL entry skipped");
                }
                None => skipped += 1,
            }
        }
        let keys: Vec<PartitionKey> = set_aside.keys().copied().collect();
        for key in keys {
            self.merge_set_aside(&key, &mut set_aside);
        }
        // Transactions, from the entries the index kept, in offset order.
        let now = crate::produce::now_ms();
        for key in txn_events.keys() {
            let before = txn_events.bytes();
            let events = txn_events.take(&key);
            self.charge_txn_bytes(before, txn_events.bytes());
            let mut parts = self.parts.borrow_mut();
            let Some(p) = parts.get_mut(&key) else {
                continue;
            };
            let before = p.txn_bytes();
            p.replay_recovered_txns(events, now);
            self.charge_txn_bytes(before, p.txn_bytes());
        }
        // A replacement that came before every other entry of its
        // partition lowered its log start; the log start records win.
        for (key, offset) in log_starts {
            self.apply_log_start(&key, offset);
        }
        for p in self.parts.borrow_mut().values_mut() {
            p.recovered();
        }
        self.release_below_log_start();
        self.check_partitions();
        if let Some(p) = &progress {
            p.replayed(total);
        }
        let mut c = self.counters.borrow_mut();
        c.recovered_entries = entries;
        c.recovery_skipped_entries = skipped + damaged;
        let ms = started.elapsed().as_millis() as u64;
        info!(
            shard = self.id(),
            entries,
            skipped,
            damaged,
            partitions = self.parts.borrow().len(),
            txn_events_bytes = txn_events.peak_bytes(),
            ms,
            "shard recovered"
        );
        Ok(())
    }

    /// Replays a replacement entry (compaction, or an entry the segment
    /// collector copied forward): it takes the place of the entries inside
    /// its range. Producer sequence windows are not rebuilt from it (its
    /// batches are older than what the originals recorded when they were
    /// replayed). Its transaction events (transactional batches, markers)
    /// are gathered like those of entries of kinds 1 and 5; the end of
    /// recovery replays those of the entries the index kept, in offset
    /// order: a copy whose originals' segment is gone brings back their
    /// open transactions, aborted index entries and marker epochs, and a
    /// replacement stands for the range it replaces.
    fn recover_replacement(
        &self,
        stored: &crate::compact::Stored,
        position: sluice_wal::Position,
        set_aside: &mut HashMap<PartitionKey, Vec<crate::partition::StoredBatch>>,
        txn_events: &mut crate::txn_index::TxnEvents,
    ) -> Result<(), String> {
        if let Some(r) = stored.replace.as_ref() {
            self.cleaner.borrow_mut().recovered(r);
        }
        let key = stored.header.key;
        let mut parts = self.parts.borrow_mut();
        let Some(p) = parts.get_mut(&key) else {
            return Ok(());
        };
        p.note_older_epochs(&stored.records);
        let h = &stored.header;
        let replaced_last = stored.replace.map_or(h.last_offset, |r| r.last_offset);
        let covered = p
            .covered(h.base_offset, replaced_last)
            .ok_or_else(|| format!("an entry straddles {}..={replaced_last}", h.base_offset))?;
        let pending = set_aside.entry(key).or_default();
        let after_pending = pending
            .last()
            .map_or(true, |l| l.last_offset < h.base_offset);
        if covered.is_empty()
            && covered.start < p.batches.len()
            && after_pending
            && !stored.records.is_empty()
        {
            // A copy of entries whose segment is gone, older than entries
            // already replayed: inserted with the others at once, later
            // (one insertion each would shift the whole index every time).
            pending.push(crate::partition::StoredBatch {
                base_offset: h.base_offset,
                last_offset: h.last_offset,
                max_timestamp: h.max_timestamp,
                bytes: stored.records.len() as u32,
                position: Some(position),
                cached: None,
            });
            drop(parts);
            self.gather_txn_events(txn_events, stored, position);
            return Ok(());
        }
        drop(parts);
        self.merge_set_aside(&key, set_aside);
        let mut parts = self.parts.borrow_mut();
        let Some(p) = parts.get_mut(&key) else {
            return Ok(());
        };
        let (removed, added) = p.replace_recovered(
            &stored.header,
            replaced_last,
            stored.records.len() as u32,
            position,
        )?;
        drop(parts);
        if added {
            self.budget
                .charge_forced(Pool::PartitionState, INDEX_ENTRY_BYTES);
            self.gather_txn_events(txn_events, stored, position);
        }
        self.budget
            .discharge(Pool::PartitionState, removed * INDEX_ENTRY_BYTES);
        Ok(())
    }

    /// Gathers the transaction events of a replacement recovery indexed.
    fn gather_txn_events(
        &self,
        txn_events: &mut crate::txn_index::TxnEvents,
        stored: &crate::compact::Stored,
        position: sluice_wal::Position,
    ) {
        let before = txn_events.bytes();
        txn_events.gather(stored.header.key, &stored.records, position.0);
        self.charge_txn_bytes(before, txn_events.bytes());
    }

    /// Inserts the copies recovery set aside for `key` (see
    /// `recover_replacement`).
    fn merge_set_aside(
        &self,
        key: &PartitionKey,
        set_aside: &mut HashMap<PartitionKey, Vec<crate::partition::StoredBatch>>,
    ) {
        let Some(pending) = set_aside.remove(key).filter(|v| !v.is_empty()) else {
            return;
        };
        let mut parts = self.parts.borrow_mut();
        let Some(p) = parts.get_mut(key) else {
            return;
        };
        let (added, error) = p.merge_recovered(pending);
        drop(parts);
        self.budget
            .charge_forced(Pool::PartitionState, added * INDEX_ENTRY_BYTES);
        if let Some(reason) = error {
            warn!(shard = self.id(), partition = key.partition, %reason, "copied WAL entries skipped");
        }
    }

    /// Rebuilds the producer state from a recovered entry's batch headers.
    /// The producer counts as last seen at recovery time, so its state
    /// lives at least `producer_id_expiration_ms` after a restart.
    fn recover_producer(
        &self,
        parts: &mut HashMap<PartitionKey, Partition>,
        header: &entry::EntryHeader,
        records: &bytes::Bytes,
    ) {
        // A marker is recorded by `Partition::replay_recovered_txns`.
        if crate::batch::batches(records).any(crate::batch::is_control) {
            return;
        }
        let Ok(Some(pb)) = crate::producer_state::producer_batch(records) else {
            return;
        };
        if let Some(p) = parts.get_mut(&header.key) {
            let now = crate::produce::now_ms();
            p.producers
                .record(&pb, header.base_offset, header.last_offset, now);
        }
    }

    /// A producer id from this shard's block; reserves a new block (one
    /// Raft entry) when it is used up.
    pub async fn allocate_producer_id(&self) -> Result<i64, sluice_raft::MetaError> {
        let (next, end) = self.producer_ids.get();
        if next < end {
            self.producer_ids.set((next + 1, end));
            return Ok(next);
        }
        let start = self.meta.reserve_producer_ids().await?;
        let end = start + sluice_raft::PRODUCER_ID_BLOCK_SIZE;
        // Another request may have refilled the block meanwhile: keep the
        // newer block; ids of the other are simply never handed out.
        self.producer_ids.set((start + 1, end));
        debug!(shard = self.id(), start, "producer id block reserved");
        Ok(start)
    }

    /// Charges the change of a partition's transaction state, `before` ->
    /// `after` bytes (`Partition::txn_bytes`), to `partition_state`: past
    /// its limit if need be, as index entries are (produces wait for room
    /// before they come this far).
    pub(crate) fn charge_txn_bytes(&self, before: u64, after: u64) {
        if after > before {
            self.budget
                .charge_forced(Pool::PartitionState, after - before);
        } else if before > after {
            self.budget.discharge(Pool::PartitionState, before - after);
        }
    }

    fn check_partitions(&self) {
        for p in self.parts.borrow().values() {
            if let Err(e) = p.check() {
                panic!("partition {:?} violates its invariants: {e}", p.key);
            }
        }
    }

    /// Creates the partitions this node replicates on this shard, applies
    /// role, epoch and ISR changes to them, and drops those whose topic is
    /// gone or that this node no longer replicates. Runs on the watcher task
    /// (and once at start).
    ///
    /// Only topics that changed since the last applied view are visited
    /// (`view::apply_changes`: a diff of two persistent maps that skips
    /// their shared nodes), so a view with one new topic costs
    /// O(log topics), not a pass over every topic or partition.
    pub fn apply_view(&self, view: &Arc<MetadataView>) {
        let me = self.id();
        let prev = self.last_view.replace(Some(Arc::clone(view)));
        let empty = TopicMap::new();
        let old_topics = prev.as_ref().map_or(&empty, |p| &p.topics);
        let applied = crate::view::apply_changes(
            me,
            self.node_id,
            &mut self.parts.borrow_mut(),
            old_topics,
            &view.topics,
        );
        let (created, gone) = (applied.created, &applied.gone);
        if !gone.is_empty() {
            self.budget.discharge(
                Pool::PartitionState,
                gone.len() as u64 * PARTITION_BYTES
                    + applied.gone_entries * INDEX_ENTRY_BYTES
                    + applied.gone_replicated * REPLICATION_BYTES
                    + applied.gone_txn_bytes,
            );
        }
        self.budget
            .charge_forced(Pool::PartitionState, created * PARTITION_BYTES);
        let was_leading = !self.leading.borrow().is_empty();
        let mut followed_changed = false;
        for k in gone {
            self.tail.borrow_mut().forget(k);
            self.waiters.notify(k);
            self.leading.borrow_mut().remove(k);
            followed_changed |= self.following.borrow_mut().remove(k);
        }
        for (k, change) in &applied.changed {
            if change.repl_created {
                self.budget
                    .charge_forced(Pool::PartitionState, REPLICATION_BYTES);
            }
            if change.repl_dropped {
                self.budget
                    .discharge(Pool::PartitionState, REPLICATION_BYTES);
            }
            let (replicated, leads) = self
                .parts
                .borrow()
                .get(k)
                .map_or((false, false), |p| (p.repl.is_some(), p.is_leader));
            let mut leading = self.leading.borrow_mut();
            let mut following = self.following.borrow_mut();
            if replicated && leads {
                leading.insert(*k);
            } else {
                leading.remove(k);
            }
            let was_following = if replicated && !leads {
                !following.insert(*k)
            } else {
                following.remove(k)
            };
            followed_changed |= was_following != (replicated && !leads)
                || (replicated && !leads && change.leadership);
            drop((leading, following));
            // acks=-1 produces re-check the role and the ISR; fetches and
            // retention the HW.
            self.hw_moved(k);
        }
        for k in &applied.reassigned {
            // This node no longer replicates the partition: should it come
            // back, its log starts afresh, also after a restart.
            let append = self.wal.append(
                crate::replica::KIND_TRUNCATE,
                crate::replica::encode_truncate(k, 0, crate::replica::Cut::RestartAt),
            );
            glommio::spawn_local(async move {
                let _ = append.await;
            })
            .detach();
        }
        if followed_changed {
            self.bump_followed();
        }
        if !was_leading && !self.leading.borrow().is_empty() {
            self.isr_wake.fire();
        }
        {
            let mut c = self.counters.borrow_mut();
            c.partitions_created += created;
            c.partitions_deleted += gone.len() as u64;
        }
        assert!(
            view.version >= self.applied_version.get(),
            "metadata versions never go back"
        );
        self.applied_version.set(view.version);
        // Offsets partitions led here: load their groups; no longer led:
        // drop them.
        self.sync_group_partitions();
        self.sync_txn_partitions();
        if applied.topics_changed > 0 {
            // Only a topic change (configs, partitions, placement) can
            // change what is indexed here.
            self.sync_search(view);
        }
        self.release_version_waiters();
        if !gone.is_empty() || (created == 0 && applied.topics_changed > 0) {
            // Deleted partitions' entries are dead; configs may have changed.
            self.retention_wake.fire();
        }
        if applied.topics_changed > 0 || !applied.changed.is_empty() {
            // Compaction configs, or which partitions this node leads.
            self.cleaner_wake.fire();
        }
        if created > 0 || !gone.is_empty() || !applied.changed.is_empty() {
            debug!(
                shard = me,
                version = view.version,
                topics = applied.topics_changed,
                created,
                deleted = gone.len(),
                changed = applied.changed.len(),
                "shard applied metadata"
            );
        }
    }

    /// The last metadata view applied on this shard.
    pub(crate) fn applied_view(&self) -> Option<Arc<MetadataView>> {
        self.last_view.borrow().clone()
    }

    fn release_version_waiters(&self) {
        let applied = self.applied_version.get();
        let mut waiters = self.version_waiters.borrow_mut();
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *waiters)
            .into_iter()
            .partition(|(v, _)| *v <= applied);
        *waiters = keep;
        drop(waiters);
        for (_, reply) in done {
            let _ = reply.send(applied);
        }
    }

    /// Answers `reply` once metadata `version` is applied on this shard.
    pub fn version_waiter(&self, version: u64, reply: oneshot::Sender<u64>) {
        let applied = self.applied_version.get();
        if applied >= version {
            let _ = reply.send(applied);
            return;
        }
        let mut waiters = self.version_waiters.borrow_mut();
        if waiters.len() >= self.cfg.version_waiters_max {
            return; // Dropping `reply` tells the requester: busy.
        }
        waiters.push((version, reply));
    }

    pub async fn await_topic_ready(&self, topic: &Arc<TopicMeta>) -> Result<(), ShardError> {
        let view = self.meta.view();
        if !view
            .topics
            .get(topic.name.as_str())
            .is_some_and(|t| t.id == topic.id)
        {
            return Err(ShardError::UnknownTopicOrPartition);
        }
        let owners: BTreeSet<u32> = topic.partitions.iter().map(|p| p.shard).collect();
        let deadline = Instant::now() + Duration::from_millis(self.cfg.topic_ready_timeout_ms);
        let waits = owners
            .into_iter()
            .map(|o| self.await_version_on(o, view.version, deadline));
        for r in futures::future::join_all(waits).await {
            r?;
        }
        Ok(())
    }

    async fn await_version_on(
        &self,
        owner: u32,
        version: u64,
        deadline: Instant,
    ) -> Result<(), ShardError> {
        let (tx, rx) = oneshot::channel();
        if owner == self.id() {
            self.version_waiter(version, tx);
            return match self.until(rx, deadline).await {
                Some(Ok(_)) => Ok(()),
                Some(Err(_)) => Err(ShardError::Busy),
                None => Err(ShardError::Timeout),
            };
        }
        self.call(
            owner,
            ShardMsg::AwaitVersion { version, reply: tx },
            rx,
            deadline,
        )
        .await
        .map(|_| ())
    }

    /// The shard owning a partition, or why it cannot be served here.
    pub fn owner_of(&self, topic: &TopicMeta, partition: i32) -> Result<u32, ShardError> {
        let pm = usize::try_from(partition)
            .ok()
            .and_then(|p| topic.partitions.get(p))
            .ok_or(ShardError::UnknownTopicOrPartition)?;
        if pm.leader != self.node_id || pm.shard >= self.cfg.shards {
            return Err(ShardError::NotLeader);
        }
        Ok(pm.shard)
    }

    pub fn key_of(topic: &TopicMeta, partition: i32) -> Result<PartitionKey, ShardError> {
        let partition =
            u32::try_from(partition).map_err(|_| ShardError::UnknownTopicOrPartition)?;
        Ok(PartitionKey {
            topic_id: topic.id,
            partition,
        })
    }

    /// Resolves with `fut`'s output, or `None` once `deadline` passes.
    pub async fn until<F: Future>(&self, fut: F, deadline: Instant) -> Option<F::Output> {
        let fut = std::pin::pin!(fut);
        let sleep = std::pin::pin!(sleep_until(&self.waiters, deadline));
        match select(fut, sleep).await {
            Either::Left((v, _)) => Some(v),
            Either::Right(_) => None,
        }
    }

    /// Sends a request to another shard and waits for its answer.
    pub async fn call<T>(
        &self,
        owner: u32,
        msg: ShardMsg,
        rx: oneshot::Receiver<T>,
        deadline: Instant,
    ) -> Result<T, ShardError> {
        let Some(peers) = &self.peers else {
            return Err(ShardError::NotLeader);
        };
        self.counters.borrow_mut().remote_sent += 1;
        let exchange = async {
            peers.send(owner, msg).await?;
            rx.await.map_err(|_| ShardError::ShuttingDown)
        };
        match self.until(exchange, deadline).await {
            Some(r) => r,
            None => {
                self.counters.borrow_mut().remote_timeouts += 1;
                Err(ShardError::Timeout)
            }
        }
    }

    pub async fn list_offsets(&self, req: ListOffsetsPartition) -> ListOffsetsResult {
        self.counters.borrow_mut().list_offsets_requests += 1;
        let owner = match self.owner_of(&req.topic, req.partition) {
            Ok(o) => o,
            Err(e) => return ListOffsetsResult::failed(e),
        };
        if owner == self.id() {
            return self.list_offsets_owner(&req);
        }
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + Duration::from_millis(self.cfg.remote_reply_timeout_ms);
        self.call(
            owner,
            ShardMsg::ListOffsets { req, reply: tx },
            rx,
            deadline,
        )
        .await
        .unwrap_or_else(ListOffsetsResult::failed)
    }

    /// ListOffsets on the owning shard, at stored-entry granularity;
    /// read_committed answers only offsets below the last stable offset
    /// (LATEST: the last stable offset itself).
    pub fn list_offsets_owner(&self, req: &ListOffsetsPartition) -> ListOffsetsResult {
        let parts = self.parts.borrow();
        let Some(p) = Engine::key_of(&req.topic, req.partition)
            .ok()
            .and_then(|k| parts.get(&k))
        else {
            return ListOffsetsResult::failed(ShardError::UnknownTopicOrPartition);
        };
        if !p.is_leader {
            return ListOffsetsResult::failed(ShardError::NotLeader);
        }
        let found = |b: Option<&crate::partition::StoredBatch>| match b {
            Some(b) => (b.base_offset, b.max_timestamp),
            None => (-1, -1),
        };
        // read_committed: nothing at or above the last stable offset is
        // answered (Kafka's `lastFetchableOffset`).
        let fetchable = if req.isolation_level == 1 {
            p.last_stable_offset()
        } else {
            p.high_watermark
        };
        let stable = |b: Option<&crate::partition::StoredBatch>| {
            found(b.filter(|b| b.base_offset < fetchable))
        };
        let (offset, timestamp) = match req.timestamp {
            -2 => (p.log_start_offset, -1),
            -1 => (fetchable, -1),
            -3 => stable(p.max_timestamp()),
            ts => stable(p.by_timestamp(ts)),
        };
        ListOffsetsResult {
            error: None,
            offset,
            timestamp,
        }
    }

    /// Every partition replica of the node (all shards) with its size.
    pub async fn partition_disk(&self) -> Result<Vec<crate::stats::PartitionDisk>, ShardError> {
        let mut out = self.partition_disk_owner();
        for shard in (0..self.cfg.shards).filter(|s| *s != self.id()) {
            let (tx, rx) = oneshot::channel();
            let deadline = Instant::now() + Duration::from_millis(self.cfg.remote_reply_timeout_ms);
            let msg = ShardMsg::PartitionDisk { reply: tx };
            out.extend(self.call(shard, msg, rx, deadline).await?);
        }
        Ok(out)
    }

    /// The partitions of this shard with their sizes: one pass over them
    /// and their index entries, no allocation but the answer.
    pub fn partition_disk_owner(&self) -> Vec<crate::stats::PartitionDisk> {
        let parts = self.parts.borrow();
        parts
            .values()
            .map(|p| {
                let known_hw = match p.repl.as_deref() {
                    Some(r) if !p.is_leader => r.leader_high_watermark,
                    _ => p.high_watermark,
                };
                crate::stats::PartitionDisk {
                    topic_id: p.key.topic_id,
                    partition: p.key.partition,
                    bytes: p.batches.iter().map(|b| u64::from(b.bytes)).sum(),
                    log_end: p.next_offset,
                    offset_lag: (known_hw - p.next_offset).max(0),
                    is_leader: p.is_leader,
                }
            })
            .collect()
    }

    /// Handles one message from another shard. Only local work: never sends
    /// on the mesh (answers go on oneshots).
    fn serve(self: &Rc<Self>, peer: usize, msg: ShardMsg) {
        if !matches!(msg, ShardMsg::Hello { .. } | ShardMsg::CancelFetch { .. }) {
            self.counters.borrow_mut().remote_served += 1;
        }
        match msg {
            ShardMsg::Hello { shard_id } => {
                if let Some(p) = &self.peers {
                    p.hello(peer, shard_id);
                }
            }
            ShardMsg::Produce { req, reply } => self.produce_owner(req, reply),
            ShardMsg::Fetch { key, req, reply } => self.serve_fetch(key, req, reply),
            ShardMsg::CancelFetch { key } => {
                if let Some(slot) = self.fetch_cancels.borrow().get(&key) {
                    slot.cancel();
                }
            }
            ShardMsg::ListOffsets { req, reply } => {
                let _ = reply.send(self.list_offsets_owner(&req));
            }
            ShardMsg::EndOffsetForEpoch {
                topic,
                partition,
                epoch,
                reply,
            } => {
                let _ = reply.send(self.end_offset_for_epoch_owner(&topic, partition, epoch));
            }
            ShardMsg::AwaitVersion { version, reply } => self.version_waiter(version, reply),
            ShardMsg::PartitionDisk { reply } => {
                let _ = reply.send(self.partition_disk_owner());
            }
            ShardMsg::Group { req, reply } => self.group_owner(req, reply),
            ShardMsg::Txn { req, reply } => self.txn_owner(req, reply),
            ShardMsg::DeleteRecords { req, reply } => self.delete_records_owner(req, reply),
        }
    }

    /// A warning at most once per `STORAGE_WARN_INTERVAL` per shard, with
    /// the repeats left out since the last one (storage errors can repeat
    /// per request: a full disk must not fill the log too).
    pub fn warn_rate_limited(&self, what: &str, error: &dyn std::fmt::Display) {
        let Some(suppressed) = self.storage_warnings.due() else {
            trace!(shard = self.id(), what, %error, "repeated");
            return;
        };
        warn!(shard = self.id(), what, %error, suppressed, "shard storage error");
    }

    pub fn stats(&self) -> ShardStats {
        let parts = self.parts.borrow();
        let tail = self.tail.borrow();
        ShardStats {
            shard_id: self.id(),
            partitions: parts.len() as u64,
            partition_struct_bytes: std::mem::size_of::<Partition>() as u64,
            index_entries: parts.values().map(|p| p.batches.len() as u64).sum(),
            tail_cache_entries: tail.len() as u64,
            tail_cache_evictions: tail.evictions,
            applied_metadata_version: self.applied_version.get(),
            counters: self.counters.borrow().clone(),
            waiters: self.waiters.stats(),
            pools: self.budget.stats(),
            memory_bytes_max: self.cfg.memory_bytes_max,
            request_waits: self.budget.waits(Pool::RequestBuffers),
            produce_admissions_waiting: self.admissions.len() as u64,
            produce_admission_waits: self.admissions.waits.get(),
            produce_admission_timeouts: self.admissions.timeouts.get(),
            tasks: self.tasks.borrow().len() as u64,
            produce_tasks: self.produce_tasks.get(),
            top_topics: top_topics(&parts),
            mesh_full_waits: self.peers.as_ref().map_or(0, |p| p.full_waits.get()),
            wal: self.wal.stats(),
            produce_latency_us: self.produce_latency_us.borrow().clone(),
            fetch_latency_us: self.fetch_latency_us.borrow().clone(),
        }
    }

    pub async fn close(&self) {
        if self.closing.replace(true) {
            return;
        }
        self.waiters.fire_all();
        self.bump_followed();
        self.version_waiters.borrow_mut().clear();
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        for t in tasks {
            t.cancel().await;
        }
        // Produces still waiting for memory learn the shard is closing.
        self.admissions.clear();
        if let Some(p) = &self.peers {
            p.close();
        }
        self.close_search().await;
        if let Err(e) = self.wal.clone().close().await {
            warn!(shard = self.id(), error = %e, "closing the shard WAL");
        }
        debug!(shard = self.id(), "shard closed");
    }
}

/// Partition-state bytes per topic, the largest `TOP_TOPICS_MAX`.
fn top_topics(parts: &HashMap<PartitionKey, Partition>) -> Vec<([u8; 16], u64)> {
    let mut by_topic: HashMap<[u8; 16], u64> = HashMap::new();
    for (k, p) in parts {
        *by_topic.entry(k.topic_id).or_default() +=
            PARTITION_BYTES + p.batches.len() as u64 * INDEX_ENTRY_BYTES;
    }
    let mut v: Vec<_> = by_topic.into_iter().collect();
    v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(TOP_TOPICS_MAX);
    v
}

fn validate(cfg: &ShardConfig, mesh: &ShardMesh) -> Result<(), ShardError> {
    if cfg.shards == 0 || cfg.shard_id >= cfg.shards {
        return Err(ShardError::Config(format!(
            "shard id {} with {} shards",
            cfg.shard_id, cfg.shards
        )));
    }
    if mesh.shards() != cfg.shards {
        return Err(ShardError::Config(format!(
            "mesh of {} shards, config says {}",
            mesh.shards(),
            cfg.shards
        )));
    }
    let inflight = BudgetLimits::derive(
        cfg.memory_bytes_max,
        cfg.tail_cache_bytes_max,
        cfg.io_memory_bytes,
    )
    .produce_inflight_bytes_max;
    if inflight < u64::from(cfg.wal.entry_bytes_max) {
        return Err(ShardError::Config(format!(
            "memory_bytes_max {} leaves {inflight} bytes for in-flight produce, below one WAL entry ({})",
            cfg.memory_bytes_max, cfg.wal.entry_bytes_max
        )));
    }
    Ok(())
}

fn wal_config(cfg: &ShardConfig) -> WalConfig {
    let mut w = WalConfig::new(
        cfg.data_dir
            .join(format!("shard-{}", cfg.shard_id))
            .join("wal"),
    );
    w.segment_bytes = cfg.wal.segment_bytes;
    w.queue_bytes_max = cfg.wal.queue_bytes_max;
    w.commit_bytes_max = cfg.wal.commit_bytes_max;
    w.entry_bytes_max = cfg.wal.entry_bytes_max;
    w.sync_mode = cfg.wal.sync_mode;
    w
}

/// One inbox task per peer shard.
async fn run_inbox(engine: Rc<Engine>, peer: usize, rx: ConnectedReceiver<ShardMsg>) {
    while let Some(msg) = rx.recv().await {
        engine.serve(peer, msg);
    }
    debug!(shard = engine.id(), peer, "shard inbox closed");
}

/// The shard's one metadata watcher: applies every new metadata version.
async fn watch_metadata(engine: Rc<Engine>) {
    loop {
        let applied = engine.applied_version.get();
        let view = engine.meta.changed(applied).await;
        if view.version <= applied {
            debug!(
                shard = engine.id(),
                "metadata service stopped; watcher ends"
            );
            return;
        }
        // A view applied meanwhile by another path (tests) may be newer.
        if view.version > engine.applied_version.get() {
            engine.apply_view(&view);
        }
    }
}
