//! One partition's state: a small struct with no task, timer, file or
//! pre-sized buffer. Its batches live in the shard's WAL; the partition
//! keeps a sparse index with one `StoredBatch` per WAL entry.
//!
//! Replication: a partition with more than one replica also holds a boxed
//! `Replication` (its durable log end, the epoch cache, the ISR of the
//! applied view, and on the leader each follower's progress). A
//! single-replica partition holds `None` there: it costs one pointer.
//!
//! High watermark (HW):
//! - one replica: the durable log end (every durable entry is committed);
//! - leader with followers: the largest of its current HW and
//!   `min(durable log end, log end of every other member of the ISR)` (the
//!   ISR of the applied view, joined with an ISR change in flight, so a
//!   member being added counts before it is committed); an ISR member whose
//!   log end is unknown (no fetch since this node became leader) holds it;
//! - follower: the largest of its current HW and `min(leader's HW, durable
//!   log end)`.
//!
//! The HW only moves back by truncation (`truncate`, `restart_at`).
//!
//! Transactions: a partition that saw a transactional batch holds a boxed
//! `Txns` (`txn_index`: its open transactions, those whose marker the HW
//! has not passed, the aborted index); one that never did holds `None`.
//! Its last stable offset (`last_stable_offset`) is what read_committed
//! consumers read below.
//!
//! Invariants (checked by `check`): `log_start_offset <= last stable offset
//! <= high_watermark <= durable end <= next_offset`; batches are sorted by
//! offset and do not overlap; every batch below the durable end has a WAL
//! position.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_raft::PartitionMeta;
use sluice_wal::Position;

use crate::batch;
use crate::entry::{EntryHeader, PartitionKey};
use crate::producer_state::ProducerStates;
use crate::txn_index::{self, TxnEvent, TxnEventKind, Txns};

/// One stored WAL entry of the partition (one produce request's batches).
#[derive(Clone, Debug)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    /// Bytes of the record batches (without the WAL entry header).
    pub bytes: u32,
    /// Where the entry is in the WAL; `None` until the append is durable.
    pub position: Option<Position>,
    /// The batches, while they are in the tail cache or being appended.
    pub cached: Option<Bytes>,
}

#[derive(Debug)]
pub struct Partition {
    pub key: PartitionKey,
    /// The partition's leader epoch in the applied view: the leader stamps
    /// it into every batch it appends.
    pub leader_epoch: i32,
    /// This node leads the partition (applied view).
    pub is_leader: bool,
    pub next_offset: i64,
    pub log_start_offset: i64,
    /// Consumers see offsets below it (see the module doc).
    pub high_watermark: i64,
    pub batches: Vec<StoredBatch>,
    /// Idempotent producers' sequence windows (empty map when none).
    pub producers: ProducerStates,
    /// Replication state; `None` for a single-replica partition.
    pub repl: Option<Box<Replication>>,
    /// Transaction state; `None` while the partition tracks no transaction
    /// (it never saw one, or all it saw are settled and pruned).
    pub txns: Option<Box<Txns>>,
    /// Retention's last pass had no expiry of this partition to wait for
    /// (it had no entry below the HW, or they all expired): its next HW
    /// move wakes the retention task (`Engine::hw_moved`). True until a
    /// first pass saw it.
    pub retention_untimed: bool,
}

/// The replication state of a partition with more than one replica.
#[derive(Debug)]
pub struct Replication {
    /// Last durable offset + 1 (the HW of a single replica).
    pub durable_end: i64,
    /// The leader of the applied view (`NO_LEADER` when none).
    pub leader: u64,
    /// The ISR of the applied view.
    pub isr: Vec<u64>,
    /// Epoch cache: `(leader epoch, first offset written in it)`, both
    /// increasing.
    pub epochs: Vec<(i32, i64)>,
    /// Leader only: the other replicas' progress.
    pub followers: Vec<FollowerProgress>,
    /// The ISR this node proposed and that is not applied yet: at most one
    /// ISR change in flight per partition.
    pub proposed_isr: Option<Vec<u64>>,
    /// Follower only: the log must be truncated by leader epoch before the
    /// next fetch (set whenever the partition becomes a follower or its
    /// leader or epoch changes; cleared by `Shard::mark_truncated`).
    pub needs_truncation: bool,
    /// Follower only: the leader's HW as last reported.
    pub leader_high_watermark: i64,
}

/// What the leader knows of one follower.
#[derive(Clone, Copy, Debug)]
pub struct FollowerProgress {
    pub node: u64,
    /// The follower's log end (its last fetch offset); -1 until it fetches.
    pub log_end: i64,
    /// Last time it was caught up with the leader's durable log end.
    pub caught_up: Instant,
    /// Time of its previous fetch and the leader's durable end then.
    pub last_fetch: Option<(Instant, i64)>,
}

impl FollowerProgress {
    fn new(node: u64, now: Instant) -> FollowerProgress {
        FollowerProgress {
            node,
            log_end: -1,
            caught_up: now,
            last_fetch: None,
        }
    }
}

/// What applying a partition's metadata changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaChange {
    /// Role, leader or leader epoch changed (or replication just started).
    pub leadership: bool,
    pub isr: bool,
    pub hw_moved: bool,
    pub repl_created: bool,
    pub repl_dropped: bool,
}

/// What a replica fetch changed on the leader.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchProgress {
    pub hw_moved: bool,
    /// The ISR to propose (the follower joins it).
    pub expand: Option<Vec<u64>>,
}

impl Replication {
    fn new(durable_end: i64) -> Replication {
        Replication {
            durable_end,
            leader: sluice_raft::NO_LEADER,
            isr: Vec::new(),
            epochs: Vec::new(),
            followers: Vec::new(),
            proposed_isr: None,
            needs_truncation: false,
            leader_high_watermark: 0,
        }
    }

    /// Records that epoch `epoch` starts at `start` (ignored unless newer
    /// than the latest cached epoch). Entries starting at or after `start`
    /// are replaced, as Kafka's epoch cache does.
    pub fn push_epoch(&mut self, epoch: i32, start: i64) {
        if epoch < 0 || self.epochs.last().is_some_and(|(e, _)| *e >= epoch) {
            return;
        }
        while self.epochs.last().is_some_and(|(_, s)| *s >= start) {
            self.epochs.pop();
        }
        self.epochs.push((epoch, start));
    }

    /// Records that epoch `epoch` starts at `start` wherever it fits in
    /// the cache (recovery of a copied entry, older than entries replayed
    /// before it); ignored when it contradicts the cache.
    pub fn insert_epoch(&mut self, epoch: i32, start: i64) {
        if epoch < 0 {
            return;
        }
        match self.epochs.binary_search_by_key(&epoch, |e| e.0) {
            Ok(i) => {
                if start < self.epochs[i].1 && (i == 0 || self.epochs[i - 1].1 < start) {
                    self.epochs[i].1 = start;
                }
            }
            Err(i) => {
                let after = i == 0 || self.epochs[i - 1].1 < start;
                let before = self.epochs.get(i).map_or(true, |e| start < e.1);
                if after && before {
                    self.epochs.insert(i, (epoch, start));
                }
            }
        }
    }

    /// The latest cached epoch, -1 when none.
    pub fn latest_epoch(&self) -> i32 {
        self.epochs.last().map_or(-1, |e| e.0)
    }

    /// The leader's bound on the HW: `end` lowered to the log end of every
    /// other ISR member (-1 while one is unknown).
    fn isr_bound(&self, end: i64) -> i64 {
        let members = self.isr.iter().chain(self.proposed_isr.iter().flatten());
        members
            .filter_map(|n| self.followers.iter().find(|f| f.node == *n))
            .fold(end, |bound, f| bound.min(f.log_end))
    }
}

impl Partition {
    pub fn new(key: PartitionKey) -> Partition {
        Partition {
            key,
            leader_epoch: 0,
            is_leader: true,
            next_offset: 0,
            log_start_offset: 0,
            high_watermark: 0,
            batches: Vec::new(),
            producers: ProducerStates::default(),
            repl: None,
            txns: None,
            retention_untimed: true,
        }
    }

    /// The last stable offset: the first offset of the oldest transaction
    /// open here or closed by a marker not yet below the HW, else the HW;
    /// never below the log start (`txn_index`).
    pub fn last_stable_offset(&self) -> i64 {
        self.txns.as_deref().map_or(self.high_watermark, |t| {
            t.last_stable_offset(self.high_watermark, self.log_start_offset)
        })
    }

    /// The bytes of the transaction state, as charged to `partition_state`
    /// (0 without one).
    pub fn txn_bytes(&self) -> u64 {
        self.txns.as_deref().map_or(0, Txns::bytes)
    }

    /// The first offset of `producer_id`'s open transaction here.
    pub fn open_txn(&self, producer_id: i64) -> Option<i64> {
        self.txns.as_deref().and_then(|t| t.open_first(producer_id))
    }

    /// A transactional batch of `producer_id` at `offset`: opens its
    /// transaction here unless one is open.
    pub fn begin_txn(&mut self, producer_id: i64, offset: i64) {
        self.txns
            .get_or_insert_with(Default::default)
            .begin(producer_id, offset);
    }

    /// A marker of `producer_id` at `producer_epoch` written at `offset`:
    /// closes its open transaction (an abort goes into the aborted index)
    /// and records the epoch (`ProducerStates::record_marker`). Returns the
    /// closed transaction's first offset, `None` when none was open here.
    pub fn end_txn(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        offset: i64,
        commit: bool,
        now_ms: i64,
    ) -> Option<i64> {
        self.producers
            .record_marker(producer_id, producer_epoch, offset, now_ms);
        let first = self
            .txns
            .as_deref_mut()
            .and_then(|t| t.end(producer_id, offset, commit));
        self.drop_empty_txns();
        first
    }

    /// Follows the transactions of stored `records` (batches at their
    /// offsets: a follower's copy of the leader's, or replayed by
    /// recovery): transactional batches open, markers close. The leader
    /// does the same per request in `produce`, after its checks; here the
    /// leader's checks are trusted.
    pub fn replay_txns(&mut self, records: &[u8], now_ms: i64) {
        for b in batch::batches(records) {
            if let Some(e) = txn_index::batch_event(b, 0) {
                self.apply_txn_event(&e, now_ms);
            }
        }
    }

    /// Recovery's replay of the transaction events it gathered from every
    /// stored entry (`txn_index::TxnEvents`): in offset order, those of
    /// the entries the index holds at their WAL position (the events of an
    /// entry a replacement took the place of, that a truncation cut, or
    /// that was never indexed are left out), which is what following the
    /// surviving entries in offset order gives; then settles, the HW being
    /// the log end. Markers record their producer's epoch here
    /// (`end_txn`).
    pub fn replay_recovered_txns(&mut self, mut events: Vec<TxnEvent>, now_ms: i64) {
        events.sort_unstable_by_key(|e| (e.offset, e.position));
        for e in &events {
            let held = self.batches.get(self.locate(e.offset)).is_some_and(|b| {
                b.base_offset <= e.offset && b.position.is_some_and(|p| p.0 == e.position)
            });
            if held {
                self.apply_txn_event(e, now_ms);
            }
        }
        self.settle_txns();
    }

    fn apply_txn_event(&mut self, e: &TxnEvent, now_ms: i64) {
        match e.kind {
            TxnEventKind::Begin => self.begin_txn(e.producer_id, e.offset),
            TxnEventKind::End { commit } => {
                self.end_txn(e.producer_id, e.producer_epoch, e.offset, commit, now_ms);
            }
        }
    }

    /// Forgets the closed transactions the HW passed and the aborted
    /// entries below the log start; drops the state once it tracks
    /// nothing.
    pub fn settle_txns(&mut self) {
        let (hw, log_start) = (self.high_watermark, self.log_start_offset);
        if let Some(t) = self.txns.as_deref_mut() {
            t.settle(hw);
            t.prune_below(log_start);
        }
        self.drop_empty_txns();
    }

    fn drop_empty_txns(&mut self) {
        if self.txns.as_deref().is_some_and(Txns::is_empty) {
            self.txns = None;
        }
    }

    /// Last durable offset + 1.
    pub fn durable_end(&self) -> i64 {
        self.repl
            .as_ref()
            .map_or(self.high_watermark, |r| r.durable_end)
    }

    /// Takes `offsets` offsets for a new entry and records it as pending.
    /// Returns its base offset.
    pub fn assign(&mut self, offsets: i64, max_timestamp: i64, records: Bytes) -> i64 {
        assert!(offsets > 0);
        let base_offset = self.next_offset;
        self.push_pending(
            base_offset,
            base_offset + offsets - 1,
            max_timestamp,
            records,
        );
        base_offset
    }

    /// Records a pending entry at offsets chosen elsewhere (a follower's
    /// copy of the leader's batches): `base_offset >= next_offset`.
    pub fn push_pending(
        &mut self,
        base_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
        records: Bytes,
    ) {
        assert!(base_offset >= self.next_offset && last_offset >= base_offset);
        self.next_offset = last_offset + 1;
        self.batches.push(StoredBatch {
            base_offset,
            last_offset,
            max_timestamp,
            bytes: records.len() as u32,
            position: None,
            cached: Some(records),
        });
    }

    /// The entry at `base_offset` is durable at `position`. Returns true if
    /// the durable end or the high watermark moved.
    pub fn mark_durable(&mut self, base_offset: i64, position: Position) -> bool {
        if let Some(i) = self.find(base_offset) {
            self.batches[i].position = Some(position);
        }
        self.refresh()
    }

    /// The append of the entry at `base_offset` failed: its offsets are
    /// skipped (a gap, never reused: the WAL may still hold the entry).
    pub fn mark_failed(&mut self, base_offset: i64) -> bool {
        if let Some(i) = self.find(base_offset) {
            assert!(
                self.batches[i].position.is_none(),
                "a durable entry cannot fail"
            );
            self.batches.remove(i);
        }
        self.refresh()
    }

    /// Moves the durable end over every durable entry that follows it and
    /// recomputes the high watermark (module doc). Returns true if either
    /// moved.
    pub fn refresh(&mut self) -> bool {
        let before = (self.durable_end(), self.high_watermark);
        let mut end = before.0;
        let mut i = self.locate(end);
        while let Some(b) = self.batches.get(i) {
            if b.position.is_none() {
                break;
            }
            end = b.last_offset + 1;
            i += 1;
        }
        match self.repl.as_deref_mut() {
            None => self.high_watermark = end,
            Some(r) => {
                r.durable_end = end;
                let bound = if self.is_leader {
                    r.isr_bound(end)
                } else {
                    r.leader_high_watermark.min(end)
                };
                self.high_watermark = self.high_watermark.max(bound);
            }
        }
        assert!(
            self.log_start_offset <= self.high_watermark
                && self.high_watermark <= self.durable_end()
                && self.durable_end() <= self.next_offset
        );
        (self.durable_end(), self.high_watermark) != before
    }

    /// Adds an entry found by recovery. Entries must come in offset order.
    pub fn push_recovered(
        &mut self,
        header: &EntryHeader,
        bytes: u32,
        position: Position,
    ) -> Result<(), String> {
        if header.base_offset < self.next_offset {
            return Err(format!(
                "entry at offset {} below next offset {}",
                header.base_offset, self.next_offset
            ));
        }
        if self.batches.is_empty() {
            self.log_start_offset = header.base_offset;
        }
        self.batches.push(StoredBatch {
            base_offset: header.base_offset,
            last_offset: header.last_offset,
            max_timestamp: header.max_timestamp,
            bytes,
            position: Some(position),
            cached: None,
        });
        self.next_offset = header.last_offset + 1;
        self.high_watermark = self.next_offset;
        if let Some(r) = self.repl.as_deref_mut() {
            r.durable_end = self.next_offset;
        }
        Ok(())
    }

    /// After recovery: a replicated partition starts with its HW at its log
    /// start (the HW is not stored; it rises again as the ISR confirms the
    /// log), a leader caches its current epoch, a follower must truncate.
    pub fn recovered(&mut self) {
        let Some(r) = self.repl.as_deref_mut() else {
            return;
        };
        r.durable_end = self.next_offset;
        self.high_watermark = self.log_start_offset;
        r.leader_high_watermark = self.log_start_offset;
        if self.is_leader {
            r.push_epoch(self.leader_epoch, self.next_offset);
        } else {
            r.needs_truncation = true;
        }
    }

    /// `note_epochs` for batches older than the entries already replayed
    /// (a copied entry met by recovery).
    pub fn note_older_epochs(&mut self, records: &[u8]) {
        let Some(r) = self.repl.as_deref_mut() else {
            return;
        };
        for b in batch::batches(records) {
            r.insert_epoch(batch::leader_epoch(b), batch::base_offset(b));
        }
    }

    /// Merges entries recovery set aside (copies of entries whose segment
    /// is gone, met after newer entries of the partition): sorted, apart
    /// from each other and from the index. Returns how many were added
    /// (an overlapping one is dropped, and counted in the error).
    pub fn merge_recovered(&mut self, mut pending: Vec<StoredBatch>) -> (u64, Option<String>) {
        pending.sort_by_key(|b| b.base_offset);
        let was_empty = self.batches.is_empty();
        let first_before = self.batches.first().map(|b| b.base_offset);
        let old = std::mem::take(&mut self.batches);
        let mut merged = Vec::with_capacity(old.len() + pending.len());
        let (mut a, mut b) = (old.into_iter().peekable(), pending.into_iter().peekable());
        let (mut added, mut dropped) = (0u64, 0u64);
        loop {
            let take_pending = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => y.base_offset < x.base_offset,
                (None, Some(_)) => true,
                (_, None) => false,
            };
            let next = if take_pending { b.next() } else { a.next() };
            let Some(next) = next else { break };
            let fits = merged
                .last()
                .map_or(true, |l: &StoredBatch| l.last_offset < next.base_offset)
                && (!take_pending || a.peek().map_or(true, |x| next.last_offset < x.base_offset));
            if take_pending && !fits {
                dropped += 1;
                continue;
            }
            added += u64::from(take_pending);
            merged.push(next);
        }
        self.batches = merged;
        if let Some(first) = self.batches.first().map(|b| b.base_offset) {
            if was_empty {
                self.log_start_offset = first;
            } else if first_before.is_some_and(|f| first < f) {
                self.log_start_offset = self.log_start_offset.min(first);
            }
        }
        if let Some(last) = self.batches.last().map(|b| b.last_offset) {
            if last >= self.next_offset {
                self.next_offset = last + 1;
                self.high_watermark = self.next_offset;
                if let Some(r) = self.repl.as_deref_mut() {
                    r.durable_end = self.next_offset;
                }
            }
        }
        let error = (dropped > 0).then(|| format!("{dropped} copied entries overlap the log"));
        (added, error)
    }

    /// Caches the epochs stamped in `records` (a follower's append, or
    /// recovery). No-op for a single-replica partition.
    pub fn note_epochs(&mut self, records: &[u8]) {
        let Some(r) = self.repl.as_deref_mut() else {
            return;
        };
        for b in batch::batches(records) {
            r.push_epoch(batch::leader_epoch(b), batch::base_offset(b));
        }
    }

    /// Truncates the log at `offset`, entry-granular: an entry holding
    /// `offset` is dropped whole, so the log then ends at its base offset.
    /// Producer-state and epoch-cache entries at or above the new end are
    /// forgotten, and so are transactions opened there (those closed by a
    /// marker there are open again) and aborted entries whose marker was
    /// there (`Txns::truncate`). Returns the index entries dropped.
    pub fn truncate(&mut self, offset: i64) -> u64 {
        if offset >= self.next_offset {
            return 0;
        }
        let offset = offset.max(0);
        let i = self.locate(offset);
        let new_end = match self.batches.get(i) {
            Some(b) if b.base_offset < offset => b.base_offset,
            _ => offset,
        };
        let dropped = (self.batches.len() - i) as u64;
        self.batches.truncate(i);
        self.cut_at(new_end);
        dropped
    }

    /// Drops the whole log and continues at `offset` (a follower whose log
    /// ends below the leader's log start). Returns the index entries dropped.
    pub fn restart_at(&mut self, offset: i64) -> u64 {
        let offset = offset.max(0);
        let dropped = self.batches.len() as u64;
        self.batches.clear();
        self.producers = ProducerStates::default();
        self.txns = None;
        if let Some(r) = self.repl.as_deref_mut() {
            r.epochs.clear();
        }
        self.next_offset = offset;
        self.log_start_offset = offset;
        self.high_watermark = offset;
        if let Some(r) = self.repl.as_deref_mut() {
            r.durable_end = offset;
            r.leader_high_watermark = offset;
        }
        dropped
    }

    fn cut_at(&mut self, new_end: i64) {
        self.next_offset = new_end;
        self.log_start_offset = self.log_start_offset.min(new_end);
        self.high_watermark = self.high_watermark.min(new_end);
        if let Some(r) = self.repl.as_deref_mut() {
            r.durable_end = r.durable_end.min(new_end);
            r.leader_high_watermark = r.leader_high_watermark.min(new_end);
            r.epochs.retain(|(_, start)| *start < new_end);
        }
        self.producers.forget_from(new_end);
        if let Some(t) = self.txns.as_deref_mut() {
            t.truncate(new_end);
        }
        self.drop_empty_txns();
    }

    /// Kafka's OffsetForLeaderEpoch on this replica: `(largest cached epoch
    /// <= requested, start offset of the next larger epoch)`, or the log end
    /// for the latest epoch; `(-1, -1)` when unknown. A single-replica
    /// partition is never truncated: any epoch up to the current one ends at
    /// its log end.
    pub fn end_offset_for_epoch(&self, requested: i32) -> (i32, i64) {
        if requested < 0 {
            return (-1, -1);
        }
        let Some(r) = self.repl.as_deref() else {
            return if requested <= self.leader_epoch {
                (requested, self.next_offset)
            } else {
                (-1, -1)
            };
        };
        if r.epochs.last().is_some_and(|(e, _)| *e == requested) {
            return (requested, self.next_offset);
        }
        match r.epochs.iter().position(|(e, _)| *e > requested) {
            None => (-1, -1),
            Some(0) => (requested, r.epochs[0].1),
            Some(i) => (r.epochs[i - 1].0, r.epochs[i].1),
        }
    }

    /// Applies the partition's metadata from a new view: role, epoch,
    /// replicas and ISR. `node` is this node's id.
    pub fn apply_meta(&mut self, pm: &PartitionMeta, node: u64, now: Instant) -> MetaChange {
        let mut c = MetaChange::default();
        let is_leader = pm.leader == node;
        let leadership = is_leader != self.is_leader || pm.leader_epoch != self.leader_epoch;
        self.is_leader = is_leader;
        self.leader_epoch = pm.leader_epoch;
        let replicated = pm.replicas.len() > 1;
        match (replicated, self.repl.is_some()) {
            (true, false) => {
                self.repl = Some(Box::new(Replication::new(self.high_watermark)));
                c.repl_created = true;
            }
            (false, true) => {
                let r = self.repl.take().expect("checked");
                self.high_watermark = self.high_watermark.max(r.durable_end);
                c.repl_dropped = true;
                c.hw_moved = true;
            }
            _ => {}
        }
        let has_data = !self.batches.is_empty();
        let (log_start, next) = (self.log_start_offset, self.next_offset);
        let hw = self.high_watermark;
        let Some(r) = self.repl.as_deref_mut() else {
            c.leadership = leadership;
            return c;
        };
        let moved = c.repl_created || leadership || r.leader != pm.leader;
        r.leader = pm.leader;
        if r.isr != pm.isr {
            r.isr = pm.isr.clone();
            c.isr = true;
        }
        if moved || c.isr {
            r.proposed_isr = None;
        }
        if is_leader {
            if moved {
                r.followers = pm
                    .replicas
                    .iter()
                    .filter(|n| **n != node)
                    .map(|n| FollowerProgress::new(*n, now))
                    .collect();
                // Replication starting on a log written before it: its
                // older batches' epochs are not known; they count as this one.
                let start = if c.repl_created && has_data {
                    log_start
                } else {
                    next
                };
                r.push_epoch(pm.leader_epoch, start);
            } else {
                r.followers.retain(|f| pm.replicas.contains(&f.node));
                for n in pm.replicas.iter().filter(|n| **n != node) {
                    if !r.followers.iter().any(|f| f.node == *n) {
                        r.followers.push(FollowerProgress::new(*n, now));
                    }
                }
            }
            r.needs_truncation = false;
        } else {
            if !r.followers.is_empty() {
                r.followers = Vec::new();
            }
            if moved {
                r.needs_truncation = true;
                r.leader_high_watermark = hw;
            }
        }
        c.leadership = moved;
        c.hw_moved |= self.refresh();
        c
    }

    /// A replica fetch from follower `node` at `fetch_offset` (within the
    /// log): records its log end and when it was last caught up (its fetch
    /// offset reached the durable end now, or the durable end of its
    /// previous fetch), moves the HW, and says whether the follower should
    /// join the ISR (it is out of it, no ISR change is in flight, and its
    /// log end reached the HW and the start of the current epoch, as in
    /// Kafka). No-op unless this node leads the partition.
    pub fn record_fetch(&mut self, node: u64, fetch_offset: i64, now: Instant) -> FetchProgress {
        let mut out = FetchProgress::default();
        let (end, hw) = (self.durable_end(), self.high_watermark);
        if !self.is_leader {
            return out;
        }
        let Some(r) = self.repl.as_deref_mut() else {
            return out;
        };
        let epoch_start = r.epochs.last().map_or(0, |e| e.1);
        let Some(f) = r.followers.iter_mut().find(|f| f.node == node) else {
            return out;
        };
        f.log_end = fetch_offset;
        if fetch_offset >= end {
            f.caught_up = now;
        } else if let Some((at, end_then)) = f.last_fetch {
            if fetch_offset >= end_then {
                f.caught_up = f.caught_up.max(at);
            }
        }
        f.last_fetch = Some((now, end));
        let log_end = f.log_end;
        if !r.isr.contains(&node)
            && r.proposed_isr.is_none()
            && log_end >= hw
            && log_end >= epoch_start
        {
            let mut isr = r.isr.clone();
            isr.push(node);
            r.proposed_isr = Some(isr.clone());
            out.expand = Some(isr);
        }
        out.hw_moved = self.refresh();
        out
    }

    /// Leader: the ISR without the followers that have not been caught up
    /// for `lag`, when there are such followers and no ISR change is in
    /// flight (it is then marked in flight).
    pub fn shrink_isr(&mut self, now: Instant, lag: Duration) -> Option<Vec<u64>> {
        if !self.is_leader {
            return None;
        }
        let r = self.repl.as_deref_mut()?;
        if r.proposed_isr.is_some() {
            return None;
        }
        let lagging = |n: &u64| {
            r.followers
                .iter()
                .any(|f| f.node == *n && now.saturating_duration_since(f.caught_up) > lag)
        };
        if !r.isr.iter().any(lagging) {
            return None;
        }
        let isr: Vec<u64> = r.isr.iter().copied().filter(|n| !lagging(n)).collect();
        r.proposed_isr = Some(isr.clone());
        Some(isr)
    }

    /// Members of the ISR of the applied view (1 for a single replica).
    pub fn isr_len(&self) -> usize {
        self.repl.as_ref().map_or(1, |r| r.isr.len())
    }

    /// Index of the first entry whose last offset is >= `offset`.
    /// The entries lying wholly inside `base..=last`, as an index range;
    /// `None` when an entry straddles either end.
    pub fn covered(&self, base: i64, last: i64) -> Option<std::ops::Range<usize>> {
        let from = self.batches.partition_point(|b| b.base_offset < base);
        let to = self.batches.partition_point(|b| b.last_offset <= last);
        let straddles = |i: usize| {
            self.batches
                .get(i)
                .is_some_and(|b| b.base_offset < base && b.last_offset >= base)
        };
        if from > 0 && straddles(from - 1) {
            return None;
        }
        if self
            .batches
            .get(to)
            .is_some_and(|b| b.base_offset <= last && b.last_offset > last)
        {
            return None;
        }
        Some(from..to.max(from))
    }

    /// Puts a replacement (compaction, or an entry copied forward by the
    /// segment collector) in place of the entries lying wholly inside its
    /// range; `None` for a replacement that kept nothing. Returns the
    /// entries removed and whether one was added, or `Err` when an entry
    /// straddles the range. Offsets, the log start and the high watermark
    /// do not move.
    pub fn replace(
        &mut self,
        base: i64,
        last: i64,
        with: Option<StoredBatch>,
    ) -> Result<(u64, bool), String> {
        let range = self
            .covered(base, last)
            .ok_or_else(|| format!("an entry straddles the replaced range {base}..={last}"))?;
        let removed = range.len() as u64;
        let added = with.is_some();
        self.batches.splice(range, with);
        debug_assert!(self
            .batches
            .windows(2)
            .all(|w| w[0].last_offset < w[1].base_offset));
        Ok((removed, added))
    }

    /// Recovery's side of `replace`: the replacement may also extend the
    /// log (its originals were removed with their segment), and one that
    /// lands before every entry lowers the log start to its base (the
    /// caller applies the log start records afterwards).
    pub fn replace_recovered(
        &mut self,
        header: &EntryHeader,
        replaced_last: i64,
        bytes: u32,
        position: Position,
    ) -> Result<(u64, bool), String> {
        let with = (bytes > 0).then(|| StoredBatch {
            base_offset: header.base_offset,
            last_offset: header.last_offset,
            max_timestamp: header.max_timestamp,
            bytes,
            position: Some(position),
            cached: None,
        });
        let was_empty = self.batches.is_empty();
        let out = self.replace(header.base_offset, replaced_last, with)?;
        if was_empty && out.1 {
            self.log_start_offset = header.base_offset;
        } else if out.1 {
            self.log_start_offset = self.log_start_offset.min(header.base_offset);
        }
        if replaced_last >= self.next_offset {
            self.next_offset = replaced_last + 1;
            self.high_watermark = self.next_offset;
            if let Some(r) = self.repl.as_deref_mut() {
                r.durable_end = self.next_offset;
            }
        }
        Ok(out)
    }

    /// The smallest WAL position of the partition's live entries (from the
    /// log start); the WAL's durable end `end` for one not durable yet.
    /// Entries copied forward are out of position order, so every live
    /// entry is looked at.
    pub fn first_live_position(&self, end: u64) -> Option<u64> {
        self.batches[self.locate(self.log_start_offset)..]
            .iter()
            .map(|b| b.position.map_or(end, |p| p.0))
            .min()
    }

    pub fn locate(&self, offset: i64) -> usize {
        self.batches.partition_point(|b| b.last_offset < offset)
    }

    fn find(&self, base_offset: i64) -> Option<usize> {
        self.batches
            .binary_search_by_key(&base_offset, |b| b.base_offset)
            .ok()
    }

    pub fn batch_mut(&mut self, base_offset: i64) -> Option<&mut StoredBatch> {
        let i = self.find(base_offset)?;
        Some(&mut self.batches[i])
    }

    /// The entries below the high watermark, in offset order.
    pub fn durable(&self) -> &[StoredBatch] {
        let end = self.locate(self.high_watermark);
        &self.batches[..end]
    }

    /// The durable entries (below the durable end), what a replica fetch
    /// may read.
    pub fn durable_all(&self) -> &[StoredBatch] {
        let end = self.locate(self.durable_end());
        &self.batches[..end]
    }

    /// ListOffsets by timestamp: the first durable entry whose largest
    /// timestamp is at or after `timestamp_ms`.
    pub fn by_timestamp(&self, timestamp_ms: i64) -> Option<&StoredBatch> {
        self.durable()
            .iter()
            .find(|b| b.max_timestamp >= timestamp_ms)
    }

    /// ListOffsets -3 (max timestamp): the durable entry with the largest
    /// timestamp (the first one on ties).
    pub fn max_timestamp(&self) -> Option<&StoredBatch> {
        self.durable()
            .iter()
            .fold(None, |best: Option<&StoredBatch>, b| match best {
                Some(x) if x.max_timestamp >= b.max_timestamp => Some(x),
                _ => Some(b),
            })
    }

    pub fn check(&self) -> Result<(), String> {
        let lso = self.last_stable_offset();
        if !(self.log_start_offset <= lso && lso <= self.high_watermark) {
            return Err(format!(
                "last stable offset {lso} outside log start {} ..= hw {}",
                self.log_start_offset, self.high_watermark
            ));
        }
        if !(self.log_start_offset <= self.high_watermark
            && self.high_watermark <= self.durable_end()
            && self.durable_end() <= self.next_offset)
        {
            return Err(format!(
                "offsets out of order: log start {} hw {} durable end {} next {}",
                self.log_start_offset,
                self.high_watermark,
                self.durable_end(),
                self.next_offset
            ));
        }
        for w in self.batches.windows(2) {
            if w[0].last_offset >= w[1].base_offset {
                return Err(format!("entries overlap at {}", w[1].base_offset));
            }
        }
        if self.durable_all().iter().any(|b| b.position.is_none()) {
            return Err("an entry below the durable end has no WAL position".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_raft::PartitionMeta;

    fn part() -> Partition {
        Partition::new(PartitionKey {
            topic_id: [0; 16],
            partition: 0,
        })
    }

    #[test]
    fn high_watermark_follows_durability_in_order() {
        let mut p = part();
        let a = p.assign(3, 10, Bytes::from_static(b"a"));
        let b = p.assign(2, 20, Bytes::from_static(b"b"));
        assert_eq!((a, b, p.next_offset, p.high_watermark), (0, 3, 5, 0));
        assert!(
            !p.mark_durable(b, Position(100)),
            "b is durable but a is not yet"
        );
        assert_eq!(p.high_watermark, 0);
        assert!(p.mark_durable(a, Position(50)));
        assert_eq!(p.high_watermark, 5);
        assert_eq!(p.locate(4), 1);
        assert_eq!(p.by_timestamp(15).map(|x| x.base_offset), Some(3));
        assert_eq!(p.max_timestamp().map(|x| x.base_offset), Some(3));
        p.check().expect("invariants");
    }

    fn durable_entries(p: &mut Partition, sizes: &[i64]) {
        for (i, n) in sizes.iter().enumerate() {
            let base = p.assign(*n, 10 * i as i64, Bytes::from_static(b"x"));
            p.mark_durable(base, Position(1000 * i as u64));
        }
    }

    fn stored(base: i64, last: i64, position: u64) -> StoredBatch {
        StoredBatch {
            base_offset: base,
            last_offset: last,
            max_timestamp: 0,
            bytes: 1,
            position: Some(Position(position)),
            cached: None,
        }
    }

    #[test]
    fn a_replacement_takes_the_place_of_whole_entries_only() {
        let mut p = part();
        // Entries 0..=2, 3..=4, 5..=9, 10..=10.
        durable_entries(&mut p, &[3, 2, 5, 1]);
        assert_eq!(p.covered(3, 9), Some(1..3));
        assert_eq!(p.covered(4, 9), None, "3..=4 straddles");
        assert_eq!(p.covered(3, 8), None, "5..=9 straddles");
        assert_eq!(
            p.replace(3, 9, Some(stored(3, 9, 9000))).expect("whole"),
            (2, true)
        );
        let bases: Vec<i64> = p.batches.iter().map(|b| b.base_offset).collect();
        assert_eq!(bases, vec![0, 3, 10]);
        assert_eq!(
            (p.log_start_offset, p.high_watermark, p.next_offset),
            (0, 11, 11)
        );
        // Out of position order now: the smallest live position counts.
        assert_eq!(p.first_live_position(u64::MAX), Some(0));
        assert_eq!(p.replace(0, 2, None).expect("whole"), (1, false));
        assert_eq!(p.first_live_position(u64::MAX), Some(3000));
        assert_eq!(p.locate(0), 0, "a fetch in the gap gets the next entry");
        p.check().expect("invariants");
    }

    #[test]
    fn recovered_replacements_extend_or_lower_the_log() {
        let mut p = part();
        let key = p.key;
        let header = |base, last| EntryHeader {
            key,
            base_offset: base,
            last_offset: last,
            max_timestamp: 0,
        };
        // Only the copies remain: 20..=29 first, then 0..=9 copied later.
        let h = header(20, 29);
        p.replace_recovered(&h, h.last_offset, 5, Position(1))
            .expect("fits");
        assert_eq!((p.log_start_offset, p.next_offset), (20, 30));
        let h = header(0, 9);
        p.replace_recovered(&h, h.last_offset, 5, Position(2))
            .expect("fits");
        assert_eq!((p.log_start_offset, p.next_offset), (0, 30));
        // A later entry continues the log.
        let h = header(30, 39);
        p.push_recovered(&h, 5, Position(3)).expect("in order");
        assert_eq!(p.batches.len(), 3);
        p.check().expect("invariants");
    }

    #[test]
    fn set_aside_copies_merge_in_order() {
        let mut p = part();
        let key = p.key;
        for base in [40, 50] {
            let h = EntryHeader {
                key,
                base_offset: base,
                last_offset: base + 9,
                max_timestamp: 0,
            };
            p.push_recovered(&h, 1, Position(base as u64))
                .expect("in order");
        }
        let copies = vec![stored(20, 29, 900), stored(0, 9, 800), stored(45, 47, 1)];
        let (added, error) = p.merge_recovered(copies);
        assert_eq!(added, 2);
        assert!(error.is_some(), "45..=47 overlaps 40..=49");
        let bases: Vec<i64> = p.batches.iter().map(|b| b.base_offset).collect();
        assert_eq!(bases, vec![0, 20, 40, 50]);
        assert_eq!((p.log_start_offset, p.next_offset), (0, 60));
        p.check().expect("invariants");

        let mut r = Replication::new(0);
        r.push_epoch(5, 100);
        r.insert_epoch(3, 50);
        r.insert_epoch(4, 40);
        r.insert_epoch(1, 10);
        assert_eq!(r.epochs, vec![(1, 10), (3, 50), (5, 100)]);
    }

    fn meta(leader: u64, epoch: i32, replicas: &[u64], isr: &[u64]) -> PartitionMeta {
        PartitionMeta {
            shard: 0,
            leader,
            leader_epoch: epoch,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
        }
    }

    /// Appends durable entries of `sizes` offsets each.
    fn write(p: &mut Partition, sizes: &[i64]) {
        for n in sizes {
            let base = p.assign(*n, 0, Bytes::from_static(b"x"));
            p.mark_durable(base, Position(base as u64));
        }
    }

    #[test]
    fn single_replica_costs_one_pointer_and_an_idle_replica_under_1k() {
        assert_eq!(
            std::mem::size_of::<Option<Box<Replication>>>(),
            std::mem::size_of::<usize>()
        );
        const { assert!(crate::engine::REPLICATION_BYTES < 1024) };
        let mut p = part();
        let c = p.apply_meta(&meta(1, 0, &[1], &[1]), 1, Instant::now());
        assert_eq!(c, MetaChange::default());
        assert!(p.repl.is_none() && p.is_leader);
        write(&mut p, &[3]);
        assert_eq!(p.high_watermark, 3, "one replica: HW = durable end");
    }

    #[test]
    fn leader_high_watermark_is_the_isr_minimum() {
        let now = Instant::now();
        let mut p = part();
        let c = p.apply_meta(&meta(1, 2, &[1, 2, 3], &[1, 2, 3]), 1, now);
        assert!(c.repl_created && c.leadership);
        assert_eq!(p.repl.as_ref().expect("repl").epochs, vec![(2, 0)]);
        write(&mut p, &[5, 5]);
        assert_eq!((p.durable_end(), p.high_watermark), (10, 0));
        assert!(!p.record_fetch(2, 7, now).hw_moved, "follower 3 unknown");
        assert!(p.record_fetch(3, 4, now).hw_moved);
        assert_eq!(p.high_watermark, 4);
        p.record_fetch(3, 10, now);
        assert_eq!(p.high_watermark, 7);
        // Follower 2 leaves the ISR: the HW is the durable end.
        let c = p.apply_meta(&meta(1, 2, &[1, 2, 3], &[1, 3]), 1, now);
        assert!(c.isr && c.hw_moved && !c.leadership);
        assert_eq!(p.high_watermark, 10);
        // A slow fetch never lowers it.
        p.record_fetch(3, 2, now);
        assert_eq!(p.high_watermark, 10);
        p.check().expect("invariants");
    }

    #[test]
    fn follower_joins_the_isr_once_caught_up_one_proposal_at_a_time() {
        let now = Instant::now();
        let mut p = part();
        p.apply_meta(&meta(1, 0, &[1, 2], &[1]), 1, now);
        write(&mut p, &[4]);
        assert_eq!(p.high_watermark, 4, "ISR of the leader alone");
        assert_eq!(p.record_fetch(2, 3, now).expand, None, "behind the HW");
        assert_eq!(p.record_fetch(2, 4, now).expand, Some(vec![1, 2]));
        assert_eq!(p.record_fetch(2, 4, now).expand, None, "one in flight");
        // While the addition is in flight the follower already holds the HW.
        write(&mut p, &[2]);
        assert_eq!(p.high_watermark, 4);
        p.apply_meta(&meta(1, 0, &[1, 2], &[1, 2]), 1, now);
        assert!(p.repl.as_ref().expect("repl").proposed_isr.is_none());
        p.record_fetch(2, 6, now);
        assert_eq!(p.high_watermark, 6);
    }

    #[test]
    fn lagging_followers_are_shrunk_out() {
        let t0 = Instant::now();
        let lag = Duration::from_millis(100);
        let mut p = part();
        p.apply_meta(&meta(1, 0, &[1, 2, 3], &[1, 2, 3]), 1, t0);
        write(&mut p, &[4]);
        let t1 = t0 + Duration::from_millis(60);
        p.record_fetch(2, 4, t1); // caught up at t1
        p.record_fetch(3, 1, t1); // behind
        assert_eq!(p.shrink_isr(t1, lag), None);
        let t2 = t0 + Duration::from_millis(150);
        assert_eq!(p.shrink_isr(t2, lag), Some(vec![1, 2]));
        assert_eq!(p.shrink_isr(t2, lag), None, "one in flight");
        // A follower that keeps fetching what was there at its previous
        // fetch stays caught up under load.
        let mut q = part();
        q.apply_meta(&meta(1, 0, &[1, 2], &[1, 2]), 1, t0);
        write(&mut q, &[4]);
        q.record_fetch(2, 2, t1); // behind, at t1
        write(&mut q, &[4]);
        let t3 = t1 + Duration::from_millis(80);
        q.record_fetch(2, 4, t3); // behind again, but at the end of t1's log
        let t4 = t1 + Duration::from_millis(90);
        assert_eq!(q.shrink_isr(t4, lag), None, "caught up as of t1");
        assert_eq!(q.shrink_isr(t1 + lag * 2, lag), Some(vec![1]));
    }

    #[test]
    fn epoch_cache_answers_like_kafka() {
        let now = Instant::now();
        let mut p = part();
        p.apply_meta(&meta(2, 1, &[1, 2], &[1, 2]), 1, now);
        assert!(p.repl.as_ref().expect("repl").needs_truncation);
        // A follower caches epochs from the batches it appends.
        let mut records = Vec::new();
        for (base, epoch) in [(0i64, 1i32), (3, 1), (5, 3)] {
            let mut b = crate::batch::testing::batch(2, 0, b"v");
            crate::batch::patch(&mut b, base, None, epoch);
            records.extend(b);
        }
        p.note_epochs(&records);
        p.push_pending(0, 6, 0, Bytes::from(records));
        assert_eq!(p.repl.as_ref().expect("repl").epochs, vec![(1, 0), (3, 5)]);
        // Leader again at epoch 5.
        p.apply_meta(&meta(1, 5, &[1, 2], &[1, 2]), 1, now);
        assert_eq!(p.end_offset_for_epoch(5), (5, 7), "latest: the log end");
        assert_eq!(p.end_offset_for_epoch(4), (3, 7));
        assert_eq!(p.end_offset_for_epoch(3), (3, 7));
        assert_eq!(p.end_offset_for_epoch(2), (1, 5));
        assert_eq!(p.end_offset_for_epoch(1), (1, 5));
        assert_eq!(p.end_offset_for_epoch(0), (0, 0), "older than all");
        assert_eq!(p.end_offset_for_epoch(6), (-1, -1));
        assert_eq!(p.end_offset_for_epoch(-1), (-1, -1));
        let mut single = part();
        single.apply_meta(&meta(1, 2, &[1], &[1]), 1, now);
        write(&mut single, &[3]);
        assert_eq!(single.end_offset_for_epoch(1), (1, 3));
        assert_eq!(single.end_offset_for_epoch(3), (-1, -1));
    }

    #[test]
    fn truncation_is_entry_granular_and_forgets_what_it_drops() {
        let now = Instant::now();
        let mut p = part();
        p.apply_meta(&meta(2, 1, &[2, 1], &[2, 1]), 1, now);
        let mut records = Vec::new();
        for (base, epoch, pid, seq) in [(0i64, 1i32, 7i64, 0i32), (4, 2, 7, 4), (8, 3, 8, 0)] {
            let b = crate::batch::testing::with_producer(
                crate::batch::testing::batch(4, 0, b"v"),
                pid,
                0,
                seq,
            );
            let mut b = b;
            crate::batch::patch(&mut b, base, None, epoch);
            p.note_epochs(&b);
            crate::producer_state::record_batches(&mut p.producers, &b, 0);
            p.push_pending(base, base + 3, 0, Bytes::from(b.clone()));
            p.mark_durable(base, Position(base as u64));
            records.extend(b);
        }
        p.repl.as_mut().expect("repl").leader_high_watermark = 12;
        p.refresh();
        assert_eq!((p.high_watermark, p.next_offset), (12, 12));
        assert_eq!(p.truncate(20), 0, "past the end: nothing");
        assert_eq!(p.truncate(6), 2, "the entry holding 6 goes whole");
        assert_eq!(
            (p.next_offset, p.high_watermark, p.durable_end()),
            (4, 4, 4)
        );
        assert_eq!(p.repl.as_ref().expect("repl").epochs, vec![(1, 0)]);
        assert_eq!(p.producers.len(), 1, "producer 8 only wrote above");
        p.check().expect("invariants");
        assert_eq!(p.restart_at(50), 1);
        assert_eq!(
            (p.log_start_offset, p.high_watermark, p.next_offset),
            (50, 50, 50)
        );
        p.check().expect("invariants");
    }

    #[test]
    fn follower_high_watermark_is_bounded_by_the_leader_and_durability() {
        let now = Instant::now();
        let mut p = part();
        p.apply_meta(&meta(2, 0, &[2, 1], &[2, 1]), 1, now);
        p.push_pending(0, 9, 0, Bytes::from_static(b"x"));
        p.repl.as_mut().expect("repl").leader_high_watermark = 20;
        assert!(!p.refresh());
        assert_eq!(p.high_watermark, 0, "nothing durable yet");
        p.mark_durable(0, Position(0));
        assert_eq!(p.high_watermark, 10);
        p.repl.as_mut().expect("repl").leader_high_watermark = 5;
        p.refresh();
        assert_eq!(p.high_watermark, 10, "never lowered but by truncation");
        // Becoming leader: epoch pushed at the log end, followers unknown.
        let c = p.apply_meta(&meta(1, 1, &[2, 1], &[2, 1]), 1, now);
        assert!(c.leadership);
        let r = p.repl.as_ref().expect("repl");
        assert_eq!(r.epochs.last(), Some(&(1, 10)));
        assert_eq!(r.followers.len(), 1);
        assert_eq!(r.followers[0].log_end, -1);
        assert!(!r.needs_truncation);
    }

    /// Stores `b` as the next durable entry, following its transactions
    /// as a follower (or recovery) does.
    fn store_replayed(p: &mut Partition, mut b: Vec<u8>) -> i64 {
        let base = p.next_offset;
        let last = crate::batch::patch(&mut b, base, None, 0);
        p.replay_txns(&b, 0);
        crate::producer_state::record_batches(&mut p.producers, &b, 0);
        p.push_pending(base, last, 0, Bytes::from(b));
        p.mark_durable(base, Position(base as u64));
        base
    }

    #[test]
    fn replayed_transactions_hold_the_last_stable_offset() {
        use crate::batch::testing::{batch, transactional, with_producer};
        use crate::batch::{control_batch, EndTxn};
        use crate::producer_state::{ProducerBatch, ProducerError};
        assert_eq!(
            std::mem::size_of::<Option<Box<Txns>>>(),
            std::mem::size_of::<usize>(),
            "a partition without transactions pays one pointer"
        );
        let mut p = part();
        assert_eq!((p.last_stable_offset(), p.txn_bytes()), (0, 0));
        store_replayed(
            &mut p,
            transactional(with_producer(batch(2, 0, b"a"), 5, 1, 0)),
        );
        store_replayed(&mut p, batch(1, 0, b"b"));
        assert_eq!((p.high_watermark, p.last_stable_offset()), (3, 0));
        assert_eq!(p.open_txn(5), Some(0));
        assert!(p.txn_bytes() > 0);
        // The coordinator aborts it at epoch 2 (a timeout bumps the epoch).
        let end = EndTxn {
            commit: false,
            coordinator_epoch: 0,
        };
        let marker = store_replayed(&mut p, control_batch(5, 2, end, 0));
        assert_eq!(marker, 3);
        assert_eq!((p.high_watermark, p.last_stable_offset()), (4, 4));
        p.check().expect("invariants");
        let older = ProducerBatch {
            producer_id: 5,
            epoch: 1,
            first_seq: 2,
            last_seq: 2,
        };
        assert_eq!(
            p.producers.check(&older, 0, i64::MAX),
            Err(ProducerError::FencedEpoch { current: 2, got: 1 }),
            "the marker's epoch fences the older one"
        );
        let aborted = |p: &Partition| {
            p.txns
                .as_deref()
                .map_or(Vec::new(), |t| t.collect_aborted(0, 10))
        };
        assert_eq!(aborted(&p), vec![(5, 0)]);
        // Truncating the marker away opens the transaction again.
        p.truncate(3);
        assert_eq!((p.open_txn(5), p.last_stable_offset()), (Some(0), 0));
        assert!(aborted(&p).is_empty());
        p.check().expect("invariants");
        store_replayed(&mut p, control_batch(5, 2, end, 0));
        p.settle_txns();
        assert_eq!(aborted(&p), vec![(5, 0)]);
        // The log start passes the transaction's start, not its marker:
        // the entry stays; once past the marker, it goes.
        p.log_start_offset = 1;
        p.settle_txns();
        assert_eq!(aborted(&p), vec![(5, 0)]);
        p.log_start_offset = 4;
        p.settle_txns();
        assert!(p.txns.is_none(), "nothing left to track");
        store_replayed(
            &mut p,
            transactional(with_producer(batch(1, 0, b"c"), 6, 0, 0)),
        );
        assert_eq!(p.last_stable_offset(), 4);
        p.restart_at(50);
        assert!(p.txns.is_none());
        assert_eq!(p.last_stable_offset(), 50);
    }

    #[test]
    fn recovered_transactions_follow_the_entries_the_index_kept() {
        use crate::batch::testing::{batch, transactional, with_producer};
        use crate::batch::{control_batch, EndTxn};
        use crate::txn_index::TxnEvents;
        let abort = EndTxn {
            commit: false,
            coordinator_epoch: 0,
        };
        let txn = |pid: i64, epoch: i16, n: i32| {
            transactional(with_producer(batch(n, 0, b"t"), pid, epoch, 0))
        };
        // Batches at `base` on, as one stored entry.
        let entry = |parts: Vec<Vec<u8>>, base: i64| {
            let mut b = parts.concat();
            let last = crate::batch::patch(&mut b, base, None, 0);
            (b, base, last)
        };
        let mut p = part();
        let key = p.key;
        let mut events = TxnEvents::default();
        // The WAL, in its order (recovery's): producer 7's transaction at
        // 0..=1 is only left as a copy written after its abort at 3.
        let push = |p: &mut Partition, ev: &mut TxnEvents, e: &(Vec<u8>, i64, i64), pos: u64| {
            let h = EntryHeader {
                key,
                base_offset: e.1,
                last_offset: e.2,
                max_timestamp: 0,
            };
            p.push_recovered(&h, e.0.len() as u32, Position(pos))
                .expect("in order");
            ev.gather(key, &e.0, pos);
        };
        let plain = entry(vec![batch(1, 0, b"p")], 2);
        push(&mut p, &mut events, &plain, 200);
        let marker = entry(vec![control_batch(7, 0, abort, 0)], 3);
        push(&mut p, &mut events, &marker, 300);
        // The copy of 0..=1, older than the entries replayed: set aside.
        let copy = entry(vec![txn(7, 0, 2)], 0);
        events.gather(key, &copy.0, 400);
        // Producer 8's transaction from 4, two batches in one entry (one
        // event), then compacted: its batch at 4 lost every record.
        let open = entry(vec![txn(8, 0, 1), txn(8, 0, 1)], 4);
        push(&mut p, &mut events, &open, 500);
        let kept = entry(vec![txn(8, 0, 1)], 5);
        let h = EntryHeader {
            key,
            base_offset: 4,
            last_offset: 5,
            max_timestamp: 0,
        };
        p.replace_recovered(&h, 5, kept.0.len() as u32, Position(600))
            .expect("replaces");
        events.gather(key, &kept.0, 600);
        // Producer 9's transaction at 6, cut by a truncation.
        let cut = entry(vec![txn(9, 0, 1)], 6);
        push(&mut p, &mut events, &cut, 700);
        p.truncate(6);
        events.truncate(&key, 6);
        // Producer 11 fenced at epoch 2 by a marker closing nothing.
        let fence = entry(vec![control_batch(11, 2, abort, 0)], 6);
        push(&mut p, &mut events, &fence, 800);
        let (added, error) = p.merge_recovered(vec![StoredBatch {
            base_offset: 0,
            last_offset: 1,
            max_timestamp: 0,
            bytes: copy.0.len() as u32,
            position: Some(Position(400)),
            cached: None,
        }]);
        assert_eq!((added, error), (1, None));

        p.replay_recovered_txns(events.take(&key), 0);
        assert_eq!(events.bytes(), 0);
        let t = p.txns.as_deref().expect("transactions");
        assert_eq!(t.collect_aborted(0, 10), vec![(7, 0)], "from the copy");
        assert_eq!(p.open_txn(8), Some(5), "from the compacted replacement");
        assert_eq!((p.open_txn(7), p.open_txn(9)), (None, None));
        assert_eq!((p.high_watermark, p.last_stable_offset()), (7, 5));
        assert_eq!(
            p.producers.check_epoch(11, 1, 0, i64::MAX),
            Err(crate::producer_state::ProducerError::FencedEpoch { current: 2, got: 1 })
        );
        p.check().expect("invariants");
    }

    #[test]
    fn failed_append_leaves_a_gap() {
        let mut p = part();
        let a = p.assign(1, 0, Bytes::from_static(b"a"));
        let b = p.assign(1, 0, Bytes::from_static(b"b"));
        p.mark_durable(b, Position(9));
        assert!(p.mark_failed(a));
        assert_eq!(
            (p.high_watermark, p.next_offset, p.batches.len()),
            (2, 2, 1)
        );
        p.check().expect("invariants");
    }
}
