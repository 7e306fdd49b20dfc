//! Which `__transaction_state` partitions this shard coordinates, and
//! loading their transactional ids from their logs.
//!
//! `sync_txn_partitions` runs after every applied view (and once after
//! recovery): a partition of this shard newly led here is queued for
//! loading; the ids of one no longer led here are dropped from memory
//! (their marker tasks stop at their next step; the new coordinator loads
//! the prepared state and writes the markers again, which is harmless: a
//! marker repeated is an empty transaction's end).
//!
//! One task per shard (`run_txn_loads`) reads a queued partition's entries
//! from its log start to its log end in slices of at most
//! `LOAD_SLICE_BYTES` and applies their records in offset order (the last
//! one of an id wins; a tombstone forgets it). Until the partition is
//! loaded its ids get `CoordinatorLoadInProgress`. Once loaded, prepared
//! transactions get their markers written; the deadlines of the others are
//! in the deadline set.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_raft::TopicMeta;
use tracing::{debug, info, trace, warn};

use super::{record, txn_partition_for, TxnError, TXN_TOPIC};
use crate::engine::Engine;
use crate::entry::PartitionKey;
use crate::group::{batch_kind, batch_records, BatchKind, LOAD_SLICE_BYTES};
use crate::waiters::{sleep_until, WaitSlot};

/// Pause before a failed load starts again, or before looking again at
/// entries of the partition that are not durable yet.
const LOAD_RETRY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug)]
struct Led {
    /// Changes every time the partition becomes led here.
    generation: u64,
    loaded: bool,
}

/// The shard's `__transaction_state` partitions and their loading.
#[derive(Default)]
pub(crate) struct TxnLog {
    /// `__transaction_state` as the last synchronized view holds it.
    topic: RefCell<Option<Arc<TopicMeta>>>,
    /// Partitions of this shard led here, by partition index.
    led: RefCell<BTreeMap<u32, Led>>,
    /// Partitions to load, with the generation they were queued for.
    queue: RefCell<VecDeque<(u32, u64)>>,
    /// Wakes the loading task.
    wake: Rc<WaitSlot>,
    /// Fired by the loading task when its queue is drained.
    idle: Rc<WaitSlot>,
    /// The loading task is working on a partition.
    busy: Cell<bool>,
    next_generation: Cell<u64>,
    /// Recovery is over: roles are synchronized from now on.
    recovered: Cell<bool>,
    /// Wakes the deadline task when a deadline moved earlier.
    pub(crate) timer_wake: Rc<WaitSlot>,
    /// The deadline that task sleeps until (ms since the epoch).
    pub(crate) armed: Cell<Option<i64>>,
}

impl TxnLog {
    /// The tenure of `partition` here: changes every time it becomes led
    /// here (`None`: not led here).
    pub(crate) fn generation(&self, partition: u32) -> Option<u64> {
        self.led.borrow().get(&partition).map(|l| l.generation)
    }

    /// This shard serves the ids of `partition` now.
    pub(crate) fn serves(&self, partition: u32) -> bool {
        self.led.borrow().get(&partition).is_some_and(|l| l.loaded)
    }

    fn is_current(&self, partition: u32, generation: u64) -> bool {
        self.led
            .borrow()
            .get(&partition)
            .is_some_and(|l| l.generation == generation && !l.loaded)
    }
}

/// Where the bytes of one entry being loaded come from.
enum Source {
    Cached(Bytes),
    Wal(sluice_wal::Position),
}

impl Engine {
    /// The `__transaction_state` partition of `id` if this shard serves it
    /// now: led here and loaded.
    pub(crate) fn txn_gate(&self, id: &str) -> Result<u32, TxnError> {
        let topic = self.txn_log.topic.borrow();
        let Some(t) = topic.as_ref() else {
            return Err(TxnError::CoordinatorNotAvailable);
        };
        let n = u32::try_from(t.partitions.len()).unwrap_or(0);
        if n == 0 {
            return Err(TxnError::CoordinatorNotAvailable);
        }
        let p = txn_partition_for(id, n);
        match self.txn_log.led.borrow().get(&p) {
            None => Err(TxnError::NotCoordinator),
            Some(l) if !l.loaded => Err(TxnError::CoordinatorLoadInProgress),
            Some(_) => Ok(p),
        }
    }

    /// Resolves once the loading task has no partition left to load.
    pub(crate) async fn await_txn_loads(&self) {
        let log = &self.txn_log;
        while log.busy.get() || !log.queue.borrow().is_empty() {
            if self.closing.get() {
                return;
            }
            log.idle.wait().await;
        }
    }

    /// After recovery: from now on roles are synchronized.
    pub(crate) fn txns_recovered(&self) {
        self.txn_log.recovered.set(true);
        self.sync_txns(true);
    }

    /// Brings the led `__transaction_state` partitions in line with the
    /// applied view (module doc). Cheap when the topic did not change.
    pub(crate) fn sync_txn_partitions(&self) {
        self.sync_txns(false);
    }

    fn sync_txns(&self, force: bool) {
        let log = &self.txn_log;
        if !log.recovered.get() {
            return;
        }
        let new_topic = self
            .applied_view()
            .and_then(|v| v.topics.get(TXN_TOPIC).cloned());
        let old_topic = log.topic.borrow().clone();
        let unchanged = match (&old_topic, &new_topic) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        // Roles come from the topic's partition metadata: an unchanged
        // topic changed no role.
        if unchanged && !force {
            return;
        }
        let replaced = old_topic.as_ref().map(|t| (t.id, t.partitions.len()))
            != new_topic.as_ref().map(|t| (t.id, t.partitions.len()));
        let now_led: BTreeSet<u32> = match &new_topic {
            None => BTreeSet::new(),
            Some(t) => {
                let parts = self.parts.borrow();
                crate::view::keys_on(t, self.id())
                    .filter(|k| parts.get(k).is_some_and(|p| p.is_leader))
                    .map(|k| k.partition)
                    .collect()
            }
        };
        *log.topic.borrow_mut() = new_topic;
        let mut led = log.led.borrow_mut();
        let gone: BTreeSet<u32> = if replaced {
            std::mem::take(&mut *led).into_keys().collect()
        } else {
            led.keys()
                .filter(|p| !now_led.contains(p))
                .copied()
                .collect()
        };
        led.retain(|p, _| !gone.contains(p));
        let mut queued = 0;
        for p in &now_led {
            if led.contains_key(p) {
                continue;
            }
            let generation = log.next_generation.get() + 1;
            log.next_generation.set(generation);
            led.insert(
                *p,
                Led {
                    generation,
                    loaded: false,
                },
            );
            log.queue.borrow_mut().push_back((*p, generation));
            queued += 1;
        }
        log.queue
            .borrow_mut()
            .retain(|(p, g)| led.get(p).is_some_and(|l| l.generation == *g && !l.loaded));
        drop(led);
        if !gone.is_empty() || replaced {
            let dropped = self
                .txns
                .borrow_mut()
                .drop_where(|p| replaced || gone.contains(&p));
            if dropped > 0 {
                info!(shard = self.id(), partitions = ?gone, ids = dropped, "transaction state partitions no longer led here: their ids are dropped");
            }
        }
        if queued > 0 {
            debug!(
                shard = self.id(),
                partitions = queued,
                "transaction state partitions led here: loading them"
            );
            log.wake.fire();
        }
    }

    /// Loads one partition's transactional ids (module doc). `Err` on a
    /// WAL read error (the caller starts the load again).
    async fn load_txn_partition(
        self: &Rc<Self>,
        partition: u32,
        generation: u64,
    ) -> Result<(), String> {
        let Some(topic) = self.txn_log.topic.borrow().clone() else {
            return Ok(());
        };
        let key = PartitionKey {
            topic_id: topic.id,
            partition,
        };
        let started = Instant::now();
        // Ids of the partition from an earlier tenure are stale.
        self.txns.borrow_mut().drop_where(|p| p == partition);
        let (mut from, mut records) = (None::<i64>, 0u64);
        loop {
            if !self.txn_log.is_current(partition, generation) || self.closing.get() {
                return Ok(());
            }
            let planned = {
                let parts = self.parts.borrow();
                let Some(p) = parts.get(&key).filter(|p| p.is_leader) else {
                    return Ok(());
                };
                let start = from.unwrap_or(p.log_start_offset).max(p.log_start_offset);
                let durable = p.durable_all();
                let mut planned = Vec::new();
                let mut bytes = 0u64;
                for b in &durable[p.locate(start).min(durable.len())..] {
                    if !planned.is_empty() && bytes + u64::from(b.bytes) > LOAD_SLICE_BYTES {
                        break;
                    }
                    bytes += u64::from(b.bytes);
                    let source = match (&b.cached, b.position) {
                        (Some(c), _) => Source::Cached(c.clone()),
                        (None, Some(position)) => Source::Wal(position),
                        (None, None) => unreachable!("durable entries have a position"),
                    };
                    planned.push((b.base_offset, b.last_offset, source));
                }
                if planned.is_empty() && start >= p.next_offset {
                    drop(parts);
                    if let Some(l) = self.txn_log.led.borrow_mut().get_mut(&partition) {
                        l.loaded = true;
                    }
                    break;
                }
                planned
            };
            if planned.is_empty() {
                // Entries not durable yet.
                sleep_until(&self.waiters, Instant::now() + LOAD_RETRY).await;
                continue;
            }
            let mut read = Vec::with_capacity(planned.len());
            for (base, last, source) in planned {
                let b = match source {
                    Source::Cached(b) => b,
                    Source::Wal(position) => self.read_offsets_entry(key, position, base).await?,
                };
                read.push((last, b));
            }
            if !self.txn_log.is_current(partition, generation) || self.closing.get() {
                return Ok(());
            }
            let log_start = self
                .parts
                .borrow()
                .get(&key)
                .map_or(i64::MAX, |p| p.log_start_offset);
            let mut txns = self.txns.borrow_mut();
            for (last, b) in &read {
                for batch in crate::batch::batches(b) {
                    if crate::batch::base_offset(batch) < log_start
                        || batch_kind(batch) != BatchKind::Plain
                    {
                        continue;
                    }
                    let recs = match batch_records(batch) {
                        Ok(r) => r,
                        Err(reason) => {
                            warn!(shard = self.id(), partition, offset = crate::batch::base_offset(batch), %reason, "undecodable transaction record batch skipped");
                            continue;
                        }
                    };
                    for (k, v) in recs {
                        let Some(id) = k.and_then(record::id_of) else {
                            continue;
                        };
                        match v.map(record::decode) {
                            None => txns.apply(id, partition, None),
                            Some(Ok(meta)) => txns.apply(id, partition, Some(meta)),
                            Some(Err(reason)) => {
                                warn!(shard = self.id(), partition, transactional_id = id, %reason, "undecodable transaction record skipped");
                                continue;
                            }
                        }
                        records += 1;
                    }
                }
                from = Some(last + 1);
            }
            trace!(
                shard = self.id(),
                partition,
                ?from,
                "transaction state slice applied"
            );
        }
        let prepared = self.txns.borrow().prepared_in(partition);
        info!(
            shard = self.id(),
            partition,
            records,
            ids = self.txns.borrow().len(),
            prepared = prepared.len(),
            ms = started.elapsed().as_millis() as u64,
            "transaction state partition loaded"
        );
        for (id, meta) in prepared {
            self.start_markers(id, partition, meta);
        }
        self.txn_log.timer_wake.fire();
        Ok(())
    }
}

/// The shard's one loading task for `__transaction_state` partitions.
pub(crate) async fn run_txn_loads(engine: Rc<Engine>) {
    loop {
        let next = engine.txn_log.queue.borrow_mut().pop_front();
        engine.txn_log.busy.set(next.is_some());
        let Some((partition, generation)) = next else {
            engine.txn_log.idle.fire();
            let wake = engine.txn_log.wake.clone();
            wake.wait().await;
            if engine.closing.get() {
                return;
            }
            continue;
        };
        while let Err(e) = engine.load_txn_partition(partition, generation).await {
            warn!(shard = engine.id(), partition, error = %e, "loading transaction state failed; trying again");
            sleep_until(&engine.waiters, Instant::now() + LOAD_RETRY * 10).await;
            if engine.closing.get() {
                return;
            }
        }
    }
}
