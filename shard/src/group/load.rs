//! Group state kept in `__consumer_offsets`: which of its partitions this
//! shard coordinates, loading their groups from their logs, writing group
//! records through the produce path, and carrying the groups' state
//! forward so that the WAL stays reclaimable.
//!
//! # Coordinated partitions
//!
//! A shard coordinates the groups of the offsets partitions placed on it
//! that this node leads (`GroupLog::led`). `sync_group_partitions` runs
//! after every applied view (and once after recovery): a partition newly
//! led here is queued for loading, one no longer led here has its groups
//! dropped from memory (members waiting for an answer get NOT_COORDINATOR;
//! they rejoin at the new coordinator, as in Kafka) and their
//! `group_state` charges released.
//!
//! # Loading
//!
//! One task per shard (`run_group_loads`) serves the queue of partitions
//! to load (at most one entry per offsets partition led here, so it is
//! bounded by that topic's partition count). It reads the partition's
//! stored entries from its log start to its log end in slices of at most
//! `LOAD_SLICE_BYTES` (tail cache or WAL reads), and applies their group
//! records in offset order. The partition counts as loaded once the slice
//! that reaches its log end is applied, in the same synchronous section.
//! Until then requests for its groups get `CoordinatorLoadInProgress`. A
//! load whose partition stops being led here (or is led again meanwhile)
//! is abandoned at the next slice.
//!
//! # Writing
//!
//! A group record is one record batch produced into its partition with
//! acks=-1 (`start_group_write`): answered once the in-sync replicas have
//! it. It is applied to memory when the produce is queued (its offset is
//! assigned in call order, so memory follows log order); a produce refused
//! before writing (not leader, too few in-sync replicas, full queue) is not
//! applied. Produce errors become group errors as Kafka maps them
//! (`group_write_error`).
//!
//! # Carry-forward
//!
//! The cleaner does not compact `__consumer_offsets`, so a partition's old
//! group records would pin their WAL segments forever. When retention finds sealed segments that
//! only offsets partitions coordinated here keep from being removed
//! (`carry_group_partitions`), each such partition gets a snapshot: a
//! `PartitionReset` record and then its groups' committed offsets as commit
//! records, written like any group record; once the in-sync replicas have
//! it, the partition's log start moves to the snapshot's first offset
//! (the durable kind-3 entry DeleteRecords uses), or to the partition's
//! last stable offset when a transaction holding offsets of its groups
//! is still open (its records must load again after a restart). Followers
//! move theirs through `Shard::advance_replica_log_start`.
//!
//! # Old data directories
//!
//! Groups replayed from `KIND_GROUP` WAL entries at recovery stay in memory
//! under the loaded log. Each offsets partition led here that got some is
//! carried (snapshot + log start) right after its first load, and no WAL
//! segment is removed while one of them is not yet carried. Legacy groups
//! of partitions not led here at start are dropped.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use sluice_raft::TopicMeta;
use sluice_wal::Position;
use tracing::{debug, info, trace, warn};

use super::record::{self, BatchKind, GroupRecord};
use super::types::GroupError;
use super::{offsets_partition_for, OFFSETS_TOPIC};
use crate::budget::Pool;
use crate::engine::Engine;
use crate::entry::{PartitionKey, ENTRY_HEADER_BYTES};
use crate::waiters::{sleep_until, WaitSlot};
use crate::{ProducePartition, ProducePartitionResult, ShardError};

/// Bytes of stored entries one loading step reads before applying them.
pub const LOAD_SLICE_BYTES: u64 = 1 << 20;
/// How long a group record write waits for the in-sync replicas once
/// durable here (Kafka's `offsets.commit.timeout.ms`).
pub const GROUP_WRITE_TIMEOUT_MS: u32 = 5_000;
/// Pause before a failed load starts again, and the longest wait for a
/// pending entry of a partition being loaded before looking again.
const LOAD_RETRY: Duration = Duration::from_secs(1);
/// Encoded bytes of committed offsets per commit record of a snapshot.
const SNAPSHOT_RECORD_BYTES: usize = 64 << 10;

/// An offsets partition led here.
#[derive(Clone, Copy, Debug)]
struct Led {
    /// Changes every time the partition becomes led here.
    generation: u64,
    loaded: bool,
}

/// The shard's offsets partitions and their loading (see the module doc).
#[derive(Default)]
pub(crate) struct GroupLog {
    /// `__consumer_offsets` as the last synchronized view holds it.
    topic: RefCell<Option<Arc<TopicMeta>>>,
    /// Offsets partitions of this shard led here, by partition index.
    led: RefCell<BTreeMap<u32, Led>>,
    /// Partitions to load, with the generation they were queued for.
    queue: RefCell<VecDeque<(u32, u64)>>,
    /// Wakes the loading task (queue no longer empty).
    wake: Rc<WaitSlot>,
    /// Fired by the loading task when its queue is drained.
    idle: Rc<WaitSlot>,
    /// The loading task is working on a partition.
    busy: Cell<bool>,
    next_generation: Cell<u64>,
    /// Recovery is over: roles are synchronized from now on.
    recovered: Cell<bool>,
    /// Recovery replayed `KIND_GROUP` entries.
    legacy_replayed: Cell<bool>,
    /// Led partitions holding groups replayed from `KIND_GROUP` entries
    /// that are not yet written to their log.
    legacy: RefCell<BTreeSet<u32>>,
    /// Partitions with a carry-forward in flight.
    carrying: RefCell<BTreeSet<u32>>,
}

impl GroupLog {
    fn is_current(&self, partition: u32, generation: u64) -> bool {
        self.led
            .borrow()
            .get(&partition)
            .is_some_and(|l| l.generation == generation && !l.loaded)
    }

    /// Some led partition still holds groups replayed from `KIND_GROUP`
    /// entries that its log does not have yet: no WAL segment may go.
    pub(crate) fn holds_unwritten_legacy(&self) -> bool {
        !self.legacy.borrow().is_empty()
    }

    pub(crate) fn note_legacy_replayed(&self) {
        self.legacy_replayed.set(true);
    }
}

/// Where the bytes of one entry being loaded come from.
enum Source {
    Cached(Bytes),
    Wal(Position),
}

/// One loading step's plan.
enum Step {
    /// The partition is no longer led here, or is led again (a new load
    /// is queued): the load is abandoned.
    Abandon,
    /// Every entry is applied; the partition is marked loaded.
    Done,
    /// Entries below the log end are not durable yet.
    WaitPending,
    Read(Vec<(i64, i64, Source)>),
}

/// Kafka's mapping of a failed group record write to a group error.
pub(crate) fn group_write_error(e: ShardError) -> GroupError {
    match e {
        ShardError::UnknownTopicOrPartition
        | ShardError::NotEnoughReplicas
        | ShardError::NotEnoughReplicasAfterAppend
        | ShardError::Timeout => GroupError::CoordinatorNotAvailable,
        ShardError::NotLeader
        | ShardError::Storage(_)
        | ShardError::FencedLeaderEpoch { .. }
        | ShardError::UnknownLeaderEpoch { .. } => GroupError::NotCoordinator,
        ShardError::MessageTooLarge { .. }
        | ShardError::InvalidRecord(_)
        | ShardError::CorruptMessage(_) => GroupError::OffsetMetadataTooLarge,
        other => GroupError::Shard(other),
    }
}

impl Engine {
    /// The offsets partition of `group_id` if this shard serves its groups
    /// now: the partition is led here and loaded. Otherwise
    /// `CoordinatorNotAvailable` (no offsets topic), `NotCoordinator` (not
    /// led here) or `CoordinatorLoadInProgress`.
    pub(crate) fn group_gate(&self, group_id: &str) -> Result<u32, GroupError> {
        let topic = self.group_log.topic.borrow();
        let Some(t) = topic.as_ref() else {
            return Err(GroupError::CoordinatorNotAvailable);
        };
        let n = u32::try_from(t.partitions.len()).unwrap_or(0);
        if n == 0 {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        let p = offsets_partition_for(group_id, n);
        match self.group_log.led.borrow().get(&p) {
            None => Err(GroupError::NotCoordinator),
            Some(l) if !l.loaded => Err(GroupError::CoordinatorLoadInProgress),
            Some(_) => Ok(p),
        }
    }

    /// Offsets partition `partition` is led here and its groups loaded.
    pub(crate) fn offsets_partition_loaded(&self, partition: u32) -> bool {
        self.group_log
            .led
            .borrow()
            .get(&partition)
            .is_some_and(|l| l.loaded)
    }

    fn offsets_key(&self, partition: u32) -> Option<(Arc<TopicMeta>, PartitionKey)> {
        let topic = self.group_log.topic.borrow().clone()?;
        let key = PartitionKey {
            topic_id: topic.id,
            partition,
        };
        Some((topic, key))
    }

    /// Whether `group_id` maps to `partition` of an offsets topic of
    /// `partitions` partitions.
    fn in_partition(group_id: &str, partitions: u32, partition: u32) -> bool {
        partitions > 0 && offsets_partition_for(group_id, partitions) == partition
    }

    /// After recovery: synchronizes the led offsets partitions with the
    /// applied view (queuing their loads), drops replayed `KIND_GROUP`
    /// groups of partitions not led here and notes those that are.
    pub(crate) fn groups_recovered(&self) {
        self.group_log.recovered.set(true);
        self.sync_groups(true);
        if !self.group_log.legacy_replayed.get() {
            return;
        }
        let topic = self.group_log.topic.borrow().clone();
        let led: BTreeSet<u32> = self.group_log.led.borrow().keys().copied().collect();
        let n = topic
            .as_ref()
            .map_or(0, |t| u32::try_from(t.partitions.len()).unwrap_or(0));
        let part_of = |id: &str| (n > 0).then(|| offsets_partition_for(id, n));
        let mut coord = self.groups.borrow_mut();
        let held: BTreeSet<u32> = coord
            .groups
            .keys()
            .filter_map(|id| part_of(id))
            .filter(|p| led.contains(p))
            .collect();
        let dropped = coord.drop_groups(
            |id| !part_of(id).is_some_and(|p| led.contains(&p)),
            GroupError::NotCoordinator,
        );
        drop(coord);
        if dropped > 0 {
            warn!(
                shard = self.id(),
                groups = dropped,
                "groups recovered from old group WAL entries whose offsets partition is not led here are dropped"
            );
        }
        debug!(shard = self.id(), partitions = ?held, "offsets partitions with groups from old group WAL entries");
        *self.group_log.legacy.borrow_mut() = held;
    }

    /// Brings the led offsets partitions in line with the applied view:
    /// queues loads of newly led ones, drops the groups of those no longer
    /// led here (see the module doc). Cheap when `__consumer_offsets` did
    /// not change.
    pub(crate) fn sync_group_partitions(&self) {
        self.sync_groups(false);
    }

    fn sync_groups(&self, force: bool) {
        let log = &self.group_log;
        if !log.recovered.get() {
            return;
        }
        let new_topic = self
            .applied_view()
            .and_then(|v| v.topics.get(OFFSETS_TOPIC).cloned());
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
        let count = |t: &Option<Arc<TopicMeta>>| {
            t.as_ref()
                .map_or(0, |t| u32::try_from(t.partitions.len()).unwrap_or(0))
        };
        let (old_n, new_n) = (count(&old_topic), count(&new_topic));
        // Another topic under the name, or another partition count: every
        // group may map elsewhere now.
        let replaced =
            old_topic.as_ref().map(|t| t.id) != new_topic.as_ref().map(|t| t.id) || old_n != new_n;
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
        let gone: BTreeSet<u32> = if replaced && old_topic.is_some() {
            std::mem::take(&mut *led).into_keys().collect()
        } else {
            let gone: BTreeSet<u32> = led
                .keys()
                .filter(|p| !now_led.contains(p))
                .copied()
                .collect();
            led.retain(|p, _| !gone.contains(p));
            gone
        };
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
        if !gone.is_empty() {
            let mut legacy = log.legacy.borrow_mut();
            for p in &gone {
                if legacy.remove(p) {
                    warn!(
                        shard = self.id(),
                        partition = p,
                        "offsets partition no longer led here before its old group WAL entries were written to it"
                    );
                }
            }
            drop(legacy);
            let everything = replaced && old_topic.is_some();
            let pick = |id: &str| {
                everything || (old_n > 0 && gone.contains(&offsets_partition_for(id, old_n)))
            };
            let dropped = self
                .groups
                .borrow_mut()
                .drop_groups(pick, GroupError::NotCoordinator);
            self.groups.borrow_mut().drop_txn_offsets(pick);
            info!(
                shard = self.id(),
                partitions = ?gone,
                groups = dropped,
                "offsets partitions no longer led here: their groups are dropped"
            );
        }
        if queued > 0 {
            debug!(
                shard = self.id(),
                partitions = queued,
                "offsets partitions led here: loading their groups"
            );
            log.wake.fire();
        }
    }

    /// Resolves once the loading task has no partition left to load.
    pub(crate) async fn await_group_loads(&self) {
        let log = &self.group_log;
        while log.busy.get() || !log.queue.borrow().is_empty() {
            if self.closing.get() {
                return;
            }
            log.idle.wait().await;
        }
    }

    /// Loads one partition's groups (module doc). `Err` on a WAL read
    /// error (the caller starts the load again).
    async fn load_partition(
        self: &Rc<Self>,
        partition: u32,
        generation: u64,
    ) -> Result<(), String> {
        let Some((_, key)) = self.offsets_key(partition) else {
            return Ok(());
        };
        let started = Instant::now();
        let (mut from, mut entries, mut records) = (None::<i64>, 0u64, 0u64);
        loop {
            let step = self.plan_load(&key, partition, generation, from);
            let planned = match step {
                Step::Abandon => return Ok(()),
                Step::Done => {
                    let groups = self.groups.borrow().groups();
                    info!(
                        shard = self.id(),
                        partition,
                        entries,
                        records,
                        groups,
                        ms = started.elapsed().as_millis() as u64,
                        "offsets partition loaded"
                    );
                    if self.group_log.legacy.borrow().contains(&partition) {
                        let engine = self.clone();
                        glommio::spawn_local(async move {
                            engine.write_legacy(partition).await;
                        })
                        .detach();
                    }
                    return Ok(());
                }
                Step::WaitPending => {
                    let slot = WaitSlot::new();
                    let deadline = Instant::now() + LOAD_RETRY;
                    match self.waiters.register(&slot, vec![key], deadline) {
                        Some(_guard) => slot.wait().await,
                        None => {
                            sleep_until(&self.waiters, deadline).await;
                        }
                    }
                    if self.closing.get() {
                        return Ok(());
                    }
                    continue;
                }
                Step::Read(planned) => planned,
            };
            let bytes: u64 = planned
                .iter()
                .map(|(_, _, s)| match s {
                    Source::Cached(b) => b.len() as u64,
                    Source::Wal(_) => 0,
                })
                .sum();
            let mut held = self.budget.reserve_forced(Pool::FetchResponse, bytes);
            let mut read = Vec::with_capacity(planned.len());
            for (base, last, source) in planned {
                let b = match source {
                    Source::Cached(b) => b,
                    Source::Wal(position) => {
                        let b = self.read_offsets_entry(key, position, base).await?;
                        held.absorb(
                            self.budget
                                .reserve_forced(Pool::FetchResponse, b.len() as u64),
                        );
                        b
                    }
                };
                read.push((base, last, b));
            }
            if !self.group_log.is_current(partition, generation) || self.closing.get() {
                return Ok(());
            }
            // Applied in one synchronous section with the check above.
            let log_start = self
                .parts
                .borrow()
                .get(&key)
                .map_or(i64::MAX, |p| p.log_start_offset);
            let n = self
                .group_log
                .topic
                .borrow()
                .as_ref()
                .map_or(0, |t| u32::try_from(t.partitions.len()).unwrap_or(0));
            for (_, last, b) in &read {
                entries += 1;
                for batch in crate::batch::batches(b) {
                    if crate::batch::base_offset(batch) < log_start {
                        continue;
                    }
                    let txn = match record::batch_kind(batch) {
                        BatchKind::Marker(producer_id, commit) => {
                            self.groups
                                .borrow_mut()
                                .complete_txn(producer_id, commit, |id| {
                                    Engine::in_partition(id, n, partition)
                                });
                            continue;
                        }
                        BatchKind::Transactional(producer_id) => Some(producer_id),
                        BatchKind::Plain | BatchKind::Other => None,
                    };
                    for rec in record::decode_batch(batch) {
                        if let (Some(producer_id), Ok(GroupRecord::Commit { group_id, offsets })) =
                            (txn, &rec)
                        {
                            // Held until the transaction's marker, below.
                            self.groups.borrow_mut().add_txn_offsets(
                                producer_id,
                                group_id.clone(),
                                offsets.clone(),
                            );
                            records += 1;
                            continue;
                        }
                        match rec {
                            Ok(GroupRecord::PartitionReset) => {
                                self.groups.borrow_mut().drop_groups(
                                    |id| Engine::in_partition(id, n, partition),
                                    GroupError::NotCoordinator,
                                );
                            }
                            Ok(rec) => self.groups.borrow_mut().apply(rec),
                            Err(reason) => {
                                warn!(shard = self.id(), partition, offset = crate::batch::base_offset(batch), %reason, "undecodable group record skipped");
                                continue;
                            }
                        }
                        records += 1;
                    }
                }
                from = Some(last + 1);
            }
            drop(held);
            trace!(shard = self.id(), partition, ?from, "offsets slice applied");
        }
    }

    /// The next slice of a load, from the in-memory index (no I/O); marks
    /// the partition loaded when nothing is left.
    fn plan_load(
        &self,
        key: &PartitionKey,
        partition: u32,
        generation: u64,
        from: Option<i64>,
    ) -> Step {
        if !self.group_log.is_current(partition, generation) || self.closing.get() {
            return Step::Abandon;
        }
        let parts = self.parts.borrow();
        let Some(p) = parts.get(key).filter(|p| p.is_leader) else {
            return Step::Abandon;
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
        if !planned.is_empty() {
            return Step::Read(planned);
        }
        if start < p.next_offset {
            return Step::WaitPending;
        }
        drop(parts);
        if let Some(l) = self.group_log.led.borrow_mut().get_mut(&partition) {
            l.loaded = true;
        }
        Step::Done
    }

    /// Reads one entry of an offsets partition back from the WAL.
    pub(crate) async fn read_offsets_entry(
        &self,
        key: PartitionKey,
        position: Position,
        base_offset: i64,
    ) -> Result<Bytes, String> {
        let e = self
            .wal
            .read(position)
            .await
            .map_err(|e| format!("reading offset {base_offset}: {e}"))?;
        let crate::compact::Stored {
            header, records, ..
        } = crate::compact::decode_stored(e.kind, &e.payload)?;
        if header.key != key || header.base_offset != base_offset {
            return Err(format!(
                "WAL position {} holds another entry than offset {base_offset}",
                position.0
            ));
        }
        Ok(records)
    }

    /// Writes `records` into offsets partition `partition` (one batch
    /// each, acks=-1, in order) and returns the waits for their answers.
    /// `Err` when the first is refused before anything is queued (nothing
    /// to apply then). One synchronous section: the records take
    /// consecutive places in the partition's order.
    pub(crate) fn start_group_write(
        self: &Rc<Self>,
        partition: u32,
        records: &[GroupRecord],
    ) -> Result<Vec<oneshot::Receiver<ProducePartitionResult>>, GroupError> {
        let now = crate::produce::now_ms();
        let batches = records
            .iter()
            .map(|r| record::encode_batch(r, now))
            .collect();
        self.start_coordinator_write(partition, batches)
    }

    /// `start_group_write` of batches already encoded.
    pub(crate) fn start_coordinator_write(
        self: &Rc<Self>,
        partition: u32,
        batches: Vec<Bytes>,
    ) -> Result<Vec<oneshot::Receiver<ProducePartitionResult>>, GroupError> {
        let (topic, key) = self
            .offsets_key(partition)
            .ok_or(GroupError::CoordinatorNotAvailable)?;
        self.start_internal_write(topic, key, batches, GROUP_WRITE_TIMEOUT_MS)
            .map_err(group_write_error)
    }

    /// Writes coordinator `batches` (group or transaction records) into
    /// the partition `key` of `topic`, which this shard owns, one entry
    /// each, acks=-1, in order, in one synchronous section; returns the
    /// waits for their answers. `Err` when one is too large or the first
    /// is refused before anything is queued.
    pub(crate) fn start_internal_write(
        self: &Rc<Self>,
        topic: Arc<TopicMeta>,
        key: PartitionKey,
        batches: Vec<Bytes>,
        timeout_ms: u32,
    ) -> Result<Vec<oneshot::Receiver<ProducePartitionResult>>, ShardError> {
        let entry_max = u64::from(self.wal.config().entry_bytes_max)
            - crate::compact::REPLACE_HEADER_BYTES as u64;
        let message_max = topic
            .configs
            .get("max.message.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(crate::batch::MAX_MESSAGE_BYTES_DEFAULT);
        if let Some(b) = batches.iter().find(|b| {
            b.len() as u64 + ENTRY_HEADER_BYTES as u64 > entry_max || b.len() as u64 > message_max
        }) {
            return Err(ShardError::MessageTooLarge {
                bytes: b.len() as u64,
                max: message_max.min(entry_max),
            });
        }
        {
            let parts = self.parts.borrow();
            let p = parts.get(&key).ok_or(ShardError::UnknownTopicOrPartition)?;
            if !p.is_leader {
                return Err(ShardError::NotLeader);
            }
        }
        let mut waits = Vec::with_capacity(batches.len());
        for records in batches {
            let (tx, mut rx) = oneshot::channel();
            self.produce_owner(
                ProducePartition {
                    topic: Arc::clone(&topic),
                    partition: key.partition as i32,
                    records,
                    acks: -1,
                    timeout_ms,
                    origin: crate::Origin::Coordinator,
                    transactional_id: None,
                },
                tx,
            );
            if waits.is_empty() {
                if let Ok(Some(r)) = rx.try_recv() {
                    return Err(r
                        .error
                        .unwrap_or_else(|| ShardError::Storage("answered early".into())));
                }
            }
            waits.push(rx);
        }
        Ok(waits)
    }

    /// The answer of one group record write: `None` once the in-sync
    /// replicas have it.
    pub(crate) async fn group_write_result(
        rx: oneshot::Receiver<ProducePartitionResult>,
    ) -> Result<i64, GroupError> {
        match rx.await {
            Ok(ProducePartitionResult {
                error: None,
                base_offset,
                ..
            }) => Ok(base_offset),
            Ok(ProducePartitionResult { error: Some(e), .. }) => Err(group_write_error(e)),
            Err(_) => Err(GroupError::Shard(ShardError::ShuttingDown)),
        }
    }

    /// The snapshot of a partition's groups: a reset, then their committed
    /// offsets as commit records of at most `SNAPSHOT_RECORD_BYTES` each.
    fn snapshot_records(&self, partition: u32) -> Vec<GroupRecord> {
        let n = self
            .group_log
            .topic
            .borrow()
            .as_ref()
            .map_or(0, |t| u32::try_from(t.partitions.len()).unwrap_or(0));
        let mut out = vec![GroupRecord::PartitionReset];
        let coord = self.groups.borrow();
        let mut ids: Vec<&String> = coord
            .groups
            .keys()
            .filter(|id| Engine::in_partition(id, n, partition))
            .collect();
        ids.sort_unstable();
        for id in ids {
            let g = &coord.groups[id];
            let mut offsets = Vec::new();
            let mut bytes = 0usize;
            for ((t, p), c) in &g.offsets {
                let size = t.len() + c.metadata.as_ref().map_or(0, String::len) + 30;
                if !offsets.is_empty() && bytes + size > SNAPSHOT_RECORD_BYTES {
                    out.push(GroupRecord::Commit {
                        group_id: id.clone(),
                        offsets: std::mem::take(&mut offsets),
                    });
                    bytes = 0;
                }
                bytes += size;
                offsets.push((t.clone(), *p, c.clone()));
            }
            if !offsets.is_empty() {
                out.push(GroupRecord::Commit {
                    group_id: id.clone(),
                    offsets,
                });
            }
        }
        out
    }

    /// Carry-forward of one partition (module doc): writes the snapshot of
    /// its groups, and once the in-sync replicas have it moves the log
    /// start to its first offset. Returns the new log start.
    pub(crate) async fn carry_group_partition(
        self: &Rc<Self>,
        partition: u32,
    ) -> Result<i64, GroupError> {
        let loaded = self
            .group_log
            .led
            .borrow()
            .get(&partition)
            .is_some_and(|l| l.loaded);
        if !loaded {
            return Err(GroupError::CoordinatorLoadInProgress);
        }
        if !self.group_log.carrying.borrow_mut().insert(partition) {
            return Err(GroupError::Shard(ShardError::Busy));
        }
        let result = self.carry_inner(partition).await;
        self.group_log.carrying.borrow_mut().remove(&partition);
        result
    }

    async fn carry_inner(self: &Rc<Self>, partition: u32) -> Result<i64, GroupError> {
        let records = self.snapshot_records(partition);
        let count = records.len();
        let waits = self.start_group_write(partition, &records)?;
        // Offsets committed inside a transaction open now are not in the
        // snapshot: the log start must stay at or below that transaction's
        // first record, so a restart loads them again (taken in the same
        // synchronous section as the snapshot).
        let open_first = self.offsets_key(partition).map_or(i64::MAX, |(_, key)| {
            self.parts.borrow().get(&key).map_or(i64::MAX, |p| {
                p.txns.as_deref().map_or(i64::MAX, |t| {
                    t.last_stable_offset(i64::MAX, p.log_start_offset)
                })
            })
        });
        let mut first = None;
        let mut failed = None;
        for rx in waits {
            match Engine::group_write_result(rx).await {
                Ok(base) => {
                    first.get_or_insert(base);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let first = first.ok_or(GroupError::CoordinatorNotAvailable)?;
        let (_, key) = self
            .offsets_key(partition)
            .ok_or(GroupError::CoordinatorNotAvailable)?;
        let first = first.min(open_first);
        let append = self.wal.append(
            crate::delete_records::KIND_LOG_START,
            crate::delete_records::encode(&key, first),
        );
        append
            .await
            .map_err(|e| group_write_error(ShardError::Storage(e.to_string())))?;
        let log_start = self.apply_log_start(&key, first);
        debug!(
            shard = self.id(),
            partition,
            records = count,
            log_start,
            "offsets partition carried forward"
        );
        Ok(log_start)
    }

    /// Writes a partition's groups replayed from old `KIND_GROUP` entries
    /// into its log (a carry-forward), retrying while it stays led here.
    async fn write_legacy(self: &Rc<Self>, partition: u32) {
        while self.group_log.legacy.borrow().contains(&partition) && !self.closing.get() {
            match self.carry_group_partition(partition).await {
                Ok(_) => {
                    self.group_log.legacy.borrow_mut().remove(&partition);
                    info!(
                        shard = self.id(),
                        partition,
                        "groups from old group WAL entries written to their offsets partition"
                    );
                    return;
                }
                Err(e) => {
                    debug!(shard = self.id(), partition, error = %e, "writing old groups to their offsets partition failed; retrying");
                    sleep_until(&self.waiters, Instant::now() + LOAD_RETRY).await;
                }
            }
        }
    }

    /// Before segments are removed: carries forward every loaded offsets
    /// partition led here whose live entries are all that keeps sealed WAL
    /// segments from being removed (module doc).
    pub(crate) async fn carry_group_partitions(self: &Rc<Self>) {
        let carried: BTreeMap<PartitionKey, u32> = {
            let Some(topic) = self.group_log.topic.borrow().clone() else {
                return;
            };
            self.group_log
                .led
                .borrow()
                .iter()
                .filter(|(_, l)| l.loaded)
                .map(|(p, _)| {
                    let key = PartitionKey {
                        topic_id: topic.id,
                        partition: *p,
                    };
                    (key, *p)
                })
                .collect()
        };
        if carried.is_empty() {
            return;
        }
        let all = self.removal_boundary_of(|_| true);
        let others = self.removal_boundary_of(|k| !carried.contains_key(k));
        if self.wal.removable_below(Position(others)) <= self.wal.removable_below(Position(all)) {
            return;
        }
        for (key, partition) in carried {
            if self
                .first_live_position(&key)
                .is_some_and(|pos| pos < others)
            {
                if let Err(e) = self.carry_group_partition(partition).await {
                    debug!(shard = self.id(), partition, error = %e, "offsets partition not carried forward");
                }
            }
        }
    }

    /// Runs a group loading step for `partition` again from its log start:
    /// its groups are dropped and it is queued once more.
    fn restart_load(&self, partition: u32, generation: u64) {
        let log = &self.group_log;
        let mut led = log.led.borrow_mut();
        let Some(l) = led
            .get_mut(&partition)
            .filter(|l| l.generation == generation)
        else {
            return;
        };
        let next = log.next_generation.get() + 1;
        log.next_generation.set(next);
        l.generation = next;
        l.loaded = false;
        drop(led);
        log.queue.borrow_mut().push_back((partition, next));
        let n = log
            .topic
            .borrow()
            .as_ref()
            .map_or(0, |t| u32::try_from(t.partitions.len()).unwrap_or(0));
        self.groups.borrow_mut().drop_groups(
            |id| Engine::in_partition(id, n, partition),
            GroupError::CoordinatorLoadInProgress,
        );
    }
}

/// The shard's one group-loading task (module doc): parked on a wake slot
/// while nothing is queued.
pub(crate) async fn run_group_loads(engine: Rc<Engine>) {
    let log = &engine.group_log;
    loop {
        let next = log.queue.borrow_mut().pop_front();
        let Some((partition, generation)) = next else {
            log.busy.set(false);
            log.idle.fire();
            log.wake.wait().await;
            continue;
        };
        log.busy.set(true);
        if !log.is_current(partition, generation) {
            continue;
        }
        if let Err(reason) = engine.load_partition(partition, generation).await {
            engine.warn_rate_limited("loading an offsets partition", &reason);
            engine.restart_load(partition, generation);
            sleep_until(&engine.waiters, Instant::now() + LOAD_RETRY).await;
        }
    }
}
