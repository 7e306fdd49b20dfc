//! The cleaner: one task per shard, in the shard's background task queue,
//! that compacts the partitions of compacted topics and copies live
//! entries out of mostly dead WAL segments (the segment collector). What a
//! pass keeps and the replacement entries it writes are in `compact.rs`.
//!
//! # Compaction
//!
//! A partition of a topic whose `cleanup.policy` includes `compact` (but
//! `__consumer_offsets`, which the group coordinator carries forward
//! itself) is compacted on every replica, each on its own (as in Kafka). Its log has a clean
//! part (offsets below `clean_end`, compacted before) and a dirty part.
//! The cleanable end is the first entry that is not durable below the
//! last stable offset (so below the high watermark, and never inside a
//! transaction that is open or whose marker the HW has not passed), is
//! younger than `min.compaction.lag.ms`, or belongs to the active part:
//! the partition's last entry and the entries after its last one in a
//! sealed WAL segment (those still being written). The active part of the
//! log is never compacted. The records of aborted transactions (the
//! partition's aborted index) do not enter the key map, so they never
//! make a committed record of their key go; markers are kept whole. A partition is compacted when its
//! cleanable dirty bytes reach `min.cleanable.dirty.ratio` of its cleanable
//! bytes, when a dirty entry is older than `max.compaction.lag.ms`, or
//! when tombstones it kept reach their horizon. The dirtiest goes first.
//!
//! A pass over one partition reads its entries one at a time (from the
//! WAL), never the whole log at once: first the dirty part, into the key
//! map (charged to the `Compaction` pool; when it is full the pass stops
//! its dirty part there), then the whole cleanable part again, rewriting
//! each entry by the map. Consecutive rewritten entries are gathered into
//! one replacement (up to `GROUP_BYTES_TARGET` of batches). Its index
//! entry ends at the last batch it kept, so every index entry still ends
//! with a batch at its last offset, and a fetch in the gap after it goes on
//! to the next entry (there is one: the last entry is never compacted), so
//! a consumer always moves forward. Unchanged clean entries are left where they are. Before
//! a replacement is appended, the index must still hold exactly the
//! entries it replaces (checked in the same synchronous section as the
//! append, so a truncation can never be overtaken by an older copy); once
//! durable it takes their place in the index. A SIGKILL anywhere leaves
//! either the originals or the replacement, which recovery replays in WAL
//! order: nothing is lost or duplicated, and the pass starts again.
//!
//! # The segment collector
//!
//! A shard's WAL holds all its partitions, and a segment is removed only
//! as part of a prefix of dead segments (`retention`). After each pass the
//! collector measures the live bytes of every sealed segment from the
//! partition indexes and takes the prefix of sealed segments that frees
//! the most beyond twice the live bytes it must copy (its size minus its
//! live bytes over `COLLECT_LIVE_RATIO_MAX`), if any; it copies
//! the live entries of that prefix forward (as replacements of their own
//! range), oldest first, at most `COLLECT_BYTES_PER_SEC`, then wakes
//! retention, which removes the prefix. A segment more live than dead is
//! never copied for its own sake, so an idle shard settles. Once the
//! cleaner has run, every prefix of the sealed segments holds at least
//! `COLLECT_LIVE_RATIO_MAX` live bytes:
//! the WAL's disk use stays below `1 / COLLECT_LIVE_RATIO_MAX` times the
//! live data plus the active segment.
//!
//! # When it runs
//!
//! Passes are at least `PASS_INTERVAL_MIN` apart. Between them the task
//! sleeps until `cleaner_wake` fires (the retention task fires it after a
//! segment roll, the metadata watcher after an applied view that changed
//! topics or roles)
//! or its next deadline (a dirty entry passing `min.compaction.lag.ms` or
//! `max.compaction.lag.ms`, tombstones reaching their horizon), on the
//! shard's one deadline structure; with nothing to do it has no deadline.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use sluice_wal::Position;
use tracing::{debug, info, warn};

use crate::budget::Pool;
use crate::compact::{
    decode_stored, encode_replace, relocation_payload, rewrite_entry, CompactConfig, Dropped,
    KeyMap, Replacement, Rules, Stored, KEY_MAP_ENTRY_BYTES, KIND_REPLACE, REPLACE_HEADER_BYTES,
};
use crate::engine::{Engine, INDEX_ENTRY_BYTES};
use crate::entry::{self, EntryHeader, PartitionKey, ENTRY_HEADER_BYTES};
use crate::partition::StoredBatch;
use crate::records::{rewrite_walk, DecodeLimits};
use crate::retention::{event_or_deadline, next_pass};
use crate::waiters::sleep_until;

/// Batches gathered into one replacement before it is closed.
const GROUP_BYTES_TARGET: usize = 512 << 10;
/// Entries gathered into one replacement at most.
const GROUP_ENTRIES_MAX: usize = 4096;
/// Largest key map of a pass (and at most half the `Compaction` pool).
const KEY_MAP_BYTES_MAX: u64 = 64 << 20;
/// A pass needs room for at least this many keys.
const KEY_MAP_KEYS_MIN: u64 = 1024;
/// The collector takes a prefix of sealed segments when at most this share
/// of it is live.
pub const COLLECT_LIVE_RATIO_MAX: f64 = 0.5;
/// The collector copies at most this many bytes per second.
const COLLECT_BYTES_PER_SEC: u64 = 32 << 20;
/// The collector's pace is checked after each slice of this many bytes.
const COLLECT_SLICE_BYTES: u64 = 1 << 20;
/// Framing bytes of a WAL entry around its payload, for live-byte counts.
const FRAME_BYTES: u64 = 16;

/// What the cleaner remembers of a compacted partition.
#[derive(Clone, Copy, Debug, Default)]
struct Clean {
    /// Offsets below it were compacted.
    clean_end: i64,
    /// The earliest horizon of the tombstones it kept.
    tombstones_due_ms: Option<i64>,
}

/// The cleaner's state: one small record per compacted partition of the
/// shard (none for other partitions).
#[derive(Debug, Default)]
pub struct CleanerState {
    parts: HashMap<PartitionKey, Clean>,
}

impl CleanerState {
    /// The partition's log was cut at `end`: nothing above it is clean.
    pub fn cut(&mut self, key: &PartitionKey, end: i64) {
        if let Some(c) = self.parts.get_mut(key) {
            c.clean_end = c.clean_end.min(end);
        }
    }

    /// Recovery replayed a replacement.
    pub fn recovered(&mut self, r: &Replacement) {
        if !r.compacted {
            return;
        }
        let c = self.parts.entry(r.key).or_default();
        c.clean_end = c.clean_end.max(r.last_offset + 1);
        if r.tombstone_horizon_ms >= 0 {
            c.tombstones_due_ms = Some(
                c.tombstones_due_ms
                    .map_or(r.tombstone_horizon_ms, |d| d.min(r.tombstone_horizon_ms)),
            );
        }
    }
}

/// A partition a pass compacts.
struct Plan {
    key: PartitionKey,
    cfg: CompactConfig,
    /// Its cleanable entries: `(base, last, position)`, oldest first.
    entries: Vec<(i64, i64, Position)>,
    /// Index in `entries` of the first dirty one.
    clean_idx: usize,
    dirty_ratio: f64,
}

/// One replacement being gathered.
struct Group {
    members: Vec<(i64, i64, Position)>,
    batches: Vec<u8>,
    max_timestamp: i64,
    /// -1: it keeps no tombstone.
    horizon: i64,
    dropped: Dropped,
}

impl Default for Group {
    fn default() -> Group {
        Group {
            members: Vec::new(),
            batches: Vec::new(),
            max_timestamp: -1,
            horizon: -1,
            dropped: Dropped::default(),
        }
    }
}

/// The shard's one cleaner task.
pub(crate) async fn run_cleaner(engine: Rc<Engine>) {
    let mut last_pass: Option<Instant> = None;
    loop {
        last_pass = Some(next_pass(&engine.waiters, last_pass).await);
        if engine.closing.get() {
            return;
        }
        let replaced = engine.counters.borrow().compaction_entries_replaced;
        let next_ms = engine.compaction_pass().await;
        let compacted = engine.counters.borrow().compaction_entries_replaced != replaced;
        if engine.collect_pass().await > 0 || compacted {
            // Segments may be dead now: retention removes them.
            engine.retention_wake.fire();
        }
        event_or_deadline(&engine.waiters, engine.cleaner_wake.wait(), next_ms).await;
    }
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Engine {
    /// Compacts the partitions that are due; returns the wall-clock ms of
    /// the next deadline.
    async fn compaction_pass(self: &Rc<Self>) -> Option<i64> {
        let now = crate::produce::now_ms();
        let (mut plans, next) = self.plan_compaction(now);
        plans.sort_by(|a, b| b.dirty_ratio.total_cmp(&a.dirty_ratio));
        let mut next = next;
        for plan in plans {
            if self.closing.get() {
                break;
            }
            let key = plan.key;
            match self.compact_partition(plan, now).await {
                // The key map filled up: the rest of the dirty part next.
                Ok(true) => next = earliest(next, Some(now)),
                Ok(false) => {}
                Err(e) => {
                    self.warn_rate_limited("compacting a partition", &e);
                    debug!(
                        shard = self.id(),
                        partition = key.partition,
                        "compaction pass stopped"
                    );
                }
            }
        }
        // Tombstones kept by these passes reach their horizon later.
        let due = self
            .cleaner
            .borrow()
            .parts
            .values()
            .filter_map(|c| c.tombstones_due_ms)
            .filter(|d| *d > now)
            .min();
        earliest(next, due)
    }

    /// The partitions due now, and the next deadline of the others.
    fn plan_compaction(&self, now: i64) -> (Vec<Plan>, Option<i64>) {
        let Some(view) = self.applied_view() else {
            return (Vec::new(), None);
        };
        let active_base = self.wal.active_base();
        let parts = self.parts.borrow();
        let mut cleaner = self.cleaner.borrow_mut();
        let mut plans = Vec::new();
        let mut next: Option<i64> = None;
        let me = self.id();
        let mut seen = std::collections::HashSet::new();
        for topic in view.topics.values() {
            if topic.name == crate::group::OFFSETS_TOPIC {
                continue;
            }
            let Some(cfg) = CompactConfig::of(&topic.configs) else {
                continue;
            };
            for key in crate::view::keys_on(topic, me) {
                let Some(p) = parts.get(&key) else { continue };
                seen.insert(key);
                let state = cleaner.parts.entry(key).or_default();
                let live = &p.batches[p.locate(p.log_start_offset)..];
                let stable = p.last_stable_offset();
                // The active part: the last entry and the entries after the
                // last one in a sealed segment (an old entry the collector
                // copied into the active segment is not active).
                let sealed = |b: &StoredBatch| b.position.is_some_and(|pos| pos < active_base);
                let active_from = live
                    .iter()
                    .rposition(sealed)
                    .map_or(0, |i| i + 1)
                    .min(live.len().saturating_sub(1));
                let mut limit = 0;
                for (i, b) in live[..active_from].iter().enumerate() {
                    if b.position.is_none() || b.last_offset >= stable {
                        break;
                    }
                    if b.max_timestamp > now.saturating_sub(cfg.min_lag_ms) {
                        next = earliest(
                            next,
                            Some(b.max_timestamp.saturating_add(cfg.min_lag_ms) + 1),
                        );
                        break;
                    }
                    limit = i + 1;
                }
                let clean_idx = live[..limit].partition_point(|b| b.base_offset < state.clean_end);
                let total: u64 = live[..limit].iter().map(|b| u64::from(b.bytes)).sum();
                let dirty: u64 = live[clean_idx..limit]
                    .iter()
                    .map(|b| u64::from(b.bytes))
                    .sum();
                let ratio = if total == 0 {
                    0.0
                } else {
                    dirty as f64 / total as f64
                };
                let overdue = live[clean_idx..limit]
                    .first()
                    .is_some_and(|b| b.max_timestamp.saturating_add(cfg.max_lag_ms) <= now);
                let tombstones_due = state.tombstones_due_ms.is_some_and(|d| d <= now);
                let due = (dirty > 0 && (ratio >= cfg.min_dirty_ratio || overdue))
                    || (tombstones_due && limit > 0);
                if !due {
                    if let Some(b) = live[clean_idx..limit].first() {
                        if cfg.max_lag_ms < i64::MAX {
                            next = earliest(
                                next,
                                Some(b.max_timestamp.saturating_add(cfg.max_lag_ms)),
                            );
                        }
                    }
                    if !tombstones_due {
                        next = earliest(next, state.tombstones_due_ms);
                    }
                    continue;
                }
                let entries = live[..limit]
                    .iter()
                    .filter_map(|b| Some((b.base_offset, b.last_offset, b.position?)))
                    .collect();
                plans.push(Plan {
                    key,
                    cfg,
                    entries,
                    clean_idx,
                    dirty_ratio: ratio,
                });
            }
        }
        cleaner.parts.retain(|k, _| seen.contains(k));
        (plans, next)
    }

    /// Whether `b` is a batch of an aborted transaction of partition `key`
    /// (its producer's entry in the aborted index covers its offset).
    fn is_aborted_batch(&self, key: PartitionKey, b: &[u8]) -> bool {
        if !crate::batch::is_transactional(b) || crate::batch::is_control(b) {
            return false;
        }
        let producer_id = crate::batch::producer_fields(b).producer_id;
        let offset = crate::batch::base_offset(b);
        self.parts
            .borrow()
            .get(&key)
            .and_then(|p| p.txns.as_deref())
            .is_some_and(|t| t.is_aborted(producer_id, offset))
    }

    /// Reads one indexed entry back, checking it is the one indexed.
    async fn read_entry(
        &self,
        key: PartitionKey,
        base: i64,
        position: Position,
    ) -> Result<(u8, bytes::Bytes, Stored), String> {
        let e = self
            .wal
            .read(position)
            .await
            .map_err(|e| format!("reading offset {base}: {e}"))?;
        let stored = decode_stored(e.kind, &e.payload)?;
        if stored.header.key != key || stored.header.base_offset != base {
            return Err(format!(
                "WAL position {} holds another entry than offset {base}",
                position.0
            ));
        }
        Ok((e.kind, e.payload, stored))
    }

    /// `read_entry` for a pass: `None` when the entry is no longer where
    /// the pass found it (retention, or a truncation, moved on meanwhile).
    async fn read_live(
        &self,
        key: PartitionKey,
        base: i64,
        position: Position,
    ) -> Result<Option<Stored>, String> {
        match self.read_entry(key, base, position).await {
            Ok((_, _, stored)) => Ok(Some(stored)),
            Err(_) if !self.is_live_at(key, base, position) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One compaction pass over one partition (module doc). True when
    /// the key map filled up before the end of the dirty part.
    async fn compact_partition(self: &Rc<Self>, plan: Plan, now: i64) -> Result<bool, String> {
        let Plan {
            key,
            cfg,
            entries,
            clean_idx,
            ..
        } = plan;
        let entry_max = u64::from(self.wal.config().entry_bytes_max);
        let buffers = 3 * entry_max;
        let map_bytes = (self.budget.max(Pool::Compaction) / 2)
            .min(KEY_MAP_BYTES_MAX)
            .min(self.budget.max(Pool::Compaction).saturating_sub(buffers));
        if map_bytes < KEY_MAP_KEYS_MIN * KEY_MAP_ENTRY_BYTES {
            return Err(format!(
                "the compaction pool ({} bytes) is too small for a key map",
                self.budget.max(Pool::Compaction)
            ));
        }
        let Some(_memory) = self
            .budget
            .try_reserve(Pool::Compaction, map_bytes + buffers)
        else {
            return Err("the compaction pool is in use".to_string());
        };
        let mut map = KeyMap::new((map_bytes / KEY_MAP_ENTRY_BYTES) as usize);
        let limits = DecodeLimits::default();
        let mut scratch = Vec::new();

        // The dirty part into the key map, until it is full.
        let mut dirty_end = clean_idx;
        'map: for &(base, _, position) in &entries[clean_idx..] {
            let Some(stored) = self.read_live(key, base, position).await? else {
                return Ok(false);
            };
            let mut full = false;
            for b in crate::batch::batches(&stored.records) {
                if self.is_aborted_batch(key, b) {
                    continue;
                }
                // A batch that does not decode is kept whole by the rewrite:
                // its keys are not mapped.
                let _ = rewrite_walk(b, &limits, &mut scratch, &mut |r, _| {
                    if let Some(k) = r.key {
                        full |= !map.put(k, r.offset);
                    }
                });
            }
            if full {
                break 'map;
            }
            dirty_end += 1;
            glommio::yield_if_needed().await;
        }
        if dirty_end == clean_idx && clean_idx < entries.len() {
            warn!(
                shard = self.id(),
                partition = key.partition,
                keys = map.len(),
                "compaction: one entry holds more keys than the key map; partition not compacted"
            );
        }

        // The whole cleanable part, rewritten by the map.
        let mut group: Option<Group> = None;
        // Offsets below it are clean after this pass (until an entry is
        // left dirty: a group given up, or the index changed).
        let mut clean_end: Option<i64> = None;
        let mut stalled = false;
        let mut due: Option<i64> = None;
        let mut dropped_all = Dropped::default();
        let mut replaced = 0u64;
        for idx in 0..dirty_end {
            let (base, last, position) = entries[idx];
            let Some(stored) = self.read_live(key, base, position).await? else {
                break;
            };
            let clean = idx < clean_idx;
            let horizon = stored.replace.map_or(-1, |r| r.tombstone_horizon_ms);
            let rules = Rules {
                map: &map,
                tombstones_expired: clean && horizon >= 0 && horizon <= now,
            };
            let mut out = Vec::new();
            let (dropped, _) = rewrite_entry(&stored.records, &rules, &mut scratch, &mut out)?;
            let kept_horizon = if dropped.tombstones_kept == 0 {
                -1
            } else if horizon >= 0 {
                // Kept by an earlier pass: its horizon stands.
                horizon
            } else {
                now.saturating_add(cfg.delete_retention_ms)
            };
            let changed = dropped.records > 0 || (!clean && dropped.tombstones_kept > 0);
            if !changed && group.is_none() {
                if kept_horizon >= 0 {
                    due = earliest(due, Some(kept_horizon));
                }
                if !stalled {
                    clean_end = Some(last + 1);
                }
                continue;
            }
            let limit = entry_max as usize - REPLACE_HEADER_BYTES - ENTRY_HEADER_BYTES;
            if out.len() > limit {
                // Rewritten larger than an entry may be (recompressed):
                // left as it is.
                group = None;
                stalled = true;
                continue;
            }
            let g = group.get_or_insert_with(Group::default);
            if g.batches.len() + out.len() > limit {
                // Cannot close before it grows too large: leave these
                // entries as they are and start again here.
                *g = Group::default();
                stalled = true;
            }
            g.members.push((base, last, position));
            g.batches.extend_from_slice(&out);
            g.max_timestamp = g.max_timestamp.max(stored.header.max_timestamp);
            g.horizon = g.horizon.max(kept_horizon);
            g.dropped.add(dropped);
            let close = g.batches.len() >= GROUP_BYTES_TARGET
                || g.members.len() >= GROUP_ENTRIES_MAX
                || idx + 1 == dirty_end
                || !changed;
            if !close {
                continue;
            }
            let g = group.take().expect("a group is open");
            if g.horizon >= 0 {
                due = earliest(due, Some(g.horizon));
            }
            let dropped = g.dropped;
            // Only a range every entry before which is clean may be marked
            // clean: recovery takes the last clean mark as the clean end.
            match self.write_replacement(key, g, !stalled).await {
                Ok(true) => {
                    replaced += 1;
                    dropped_all.add(dropped);
                    if !stalled {
                        clean_end = Some(last + 1);
                    }
                }
                Ok(false) => stalled = true,
                Err(e) => {
                    self.warn_rate_limited("writing a compacted entry", &e);
                    stalled = true;
                }
            }
            glommio::yield_if_needed().await;
        }
        {
            let mut cleaner = self.cleaner.borrow_mut();
            let state = cleaner.parts.entry(key).or_default();
            if let Some(end) = clean_end {
                state.clean_end = state.clean_end.max(end);
            }
            state.tombstones_due_ms = due;
        }
        if replaced > 0 {
            let mut c = self.counters.borrow_mut();
            c.compaction_passes += 1;
            c.compaction_records_removed += dropped_all.records;
            c.compaction_tombstones_removed += dropped_all.tombstones;
        }
        debug!(
            shard = self.id(),
            partition = key.partition,
            keys = map.len(),
            replacements = replaced,
            records_removed = dropped_all.records,
            "compaction pass"
        );
        Ok(dirty_end < entries.len())
    }

    /// Appends one replacement and puts it in the index once durable.
    /// Returns false when the index changed meanwhile (nothing replaced).
    async fn write_replacement(
        &self,
        key: PartitionKey,
        g: Group,
        clean: bool,
    ) -> Result<bool, String> {
        let first = g.members[0];
        let last = *g.members.last().expect("a group has members");
        let (base, last_offset) = (first.0, last.1);
        // The index entry ends at the last batch kept (a fetch after it
        // goes on to the next entry); none when nothing was kept.
        let kept_last = crate::compact::last_batch_offset(&g.batches);
        let inner = match kept_last {
            Some(kept_last) => entry::encode(
                &EntryHeader {
                    key,
                    base_offset: crate::batch::base_offset(&g.batches),
                    last_offset: kept_last,
                    max_timestamp: g.max_timestamp,
                },
                &g.batches,
            ),
            None => bytes::BytesMut::new(),
        };
        let r = Replacement {
            key,
            base_offset: base,
            last_offset,
            compacted: clean,
            tombstone_horizon_ms: g.horizon,
        };
        let payload = encode_replace(&r, &inner);
        let payload_bytes = payload.len() as u64;
        // The index must still hold exactly the members; the append is
        // queued in the same synchronous section.
        let append = {
            let parts = self.parts.borrow();
            let Some(p) = parts.get(&key) else {
                return Ok(false);
            };
            let Some(range) = p.covered(base, last_offset) else {
                return Ok(false);
            };
            let same = range.len() == g.members.len()
                && p.batches[range]
                    .iter()
                    .zip(&g.members)
                    .all(|(b, m)| b.base_offset == m.0 && b.position == Some(m.2));
            if !same {
                return Ok(false);
            }
            self.wal.append(KIND_REPLACE, payload)
        };
        let position = append.await.map_err(|e| e.to_string())?;
        let batch = kept_last.map(|kept_last| StoredBatch {
            base_offset: base,
            last_offset: kept_last,
            max_timestamp: g.max_timestamp,
            bytes: g.batches.len() as u32,
            position: Some(position),
            cached: None,
        });
        if !self.put_replacement(key, (last.0, last.2), (base, last_offset), batch) {
            return Ok(false);
        }
        let mut c = self.counters.borrow_mut();
        c.compaction_entries_replaced += g.members.len() as u64;
        c.compaction_bytes_written += payload_bytes;
        Ok(true)
    }

    /// Puts a durable replacement in the index in place of the entries in
    /// its range, unless the entry `(base, position)` it must cover is gone
    /// (the log was truncated meanwhile: recovery replays the replacement
    /// before the truncation, so it never comes back).
    fn put_replacement(
        &self,
        key: PartitionKey,
        must: (i64, Position),
        (base, last): (i64, i64),
        with: Option<StoredBatch>,
    ) -> bool {
        let (removed, added) = {
            let mut parts = self.parts.borrow_mut();
            let Some(p) = parts.get_mut(&key) else {
                return false;
            };
            let present = p
                .batches
                .binary_search_by_key(&must.0, |b| b.base_offset)
                .is_ok_and(|i| p.batches[i].position == Some(must.1));
            if !present {
                return false;
            }
            match p.replace(base, last, with) {
                Ok(x) => x,
                Err(e) => {
                    warn!(shard = self.id(), partition = key.partition, %e, "replacement not applied");
                    return false;
                }
            }
        };
        self.tail.borrow_mut().forget_range(&key, base, last);
        let now_entries = u64::from(added);
        if removed > now_entries {
            self.budget.discharge(
                Pool::PartitionState,
                (removed - now_entries) * INDEX_ENTRY_BYTES,
            );
        }
        true
    }

    /// The segment collector (module doc). Returns the bytes it copied.
    async fn collect_pass(&self) -> u64 {
        let bases = self.wal.segment_bases();
        if bases.len() < 2 {
            return 0;
        }
        let sealed = bases.len() - 1;
        let active_base = bases[sealed];
        let mut live = vec![0u64; sealed];
        let mut candidates: Vec<(Position, PartitionKey, i64)> = Vec::new();
        {
            let parts = self.parts.borrow();
            for p in parts.values() {
                for b in &p.batches[p.locate(p.log_start_offset)..] {
                    let Some(pos) = b.position else { continue };
                    if pos.0 >= active_base || pos.0 < bases[0] {
                        continue;
                    }
                    let i = bases.partition_point(|x| *x <= pos.0) - 1;
                    live[i] += u64::from(b.bytes) + (ENTRY_HEADER_BYTES as u64) + FRAME_BYTES;
                }
            }
            // The prefix that frees the most beyond twice what it copies
            // (size - 2 x live): never one that is mostly live, and after
            // the copy every prefix is at least half live.
            let (mut cum_live, mut cum_size, mut end) = (0u64, 0u64, None);
            let mut best = 0i64;
            for i in 0..sealed {
                cum_live += live[i];
                cum_size += bases[i + 1] - bases[i];
                let gain = cum_size as i64 - (cum_live as f64 / COLLECT_LIVE_RATIO_MAX) as i64;
                if gain > best {
                    best = gain;
                    end = Some((bases[i + 1], cum_live));
                }
            }
            let Some((end, live_bytes)) = end else {
                return 0;
            };
            if live_bytes == 0 {
                return 0;
            }
            for p in parts.values() {
                // Entries above the high watermark are not acknowledged
                // yet: they stay (and keep their segment) until they are.
                let acked = &p.batches[p.locate(p.log_start_offset)..p.locate(p.high_watermark)];
                for b in acked {
                    if let Some(pos) = b.position.filter(|pos| pos.0 < end) {
                        candidates.push((pos, p.key, b.base_offset));
                    }
                }
            }
        }
        candidates.sort_unstable_by_key(|c| c.0);
        let started = Instant::now();
        let (mut moved, mut moved_bytes, mut slice) = (0u64, 0u64, 0u64);
        for (position, key, base) in candidates {
            if self.closing.get() {
                break;
            }
            match self.relocate(key, base, position).await {
                Ok(Some(bytes)) => {
                    moved += 1;
                    moved_bytes += bytes;
                    slice += bytes;
                }
                Ok(None) => {}
                Err(e) => {
                    // Left where it is: its segment stays until it expires.
                    self.warn_rate_limited("copying a live WAL entry forward", &e);
                }
            }
            if slice >= COLLECT_SLICE_BYTES {
                slice = 0;
                let due = started
                    + Duration::from_secs_f64(moved_bytes as f64 / COLLECT_BYTES_PER_SEC as f64);
                if Instant::now() < due {
                    sleep_until(&self.waiters, due).await;
                }
            }
            glommio::yield_if_needed().await;
        }
        if moved > 0 {
            {
                let mut c = self.counters.borrow_mut();
                c.collector_entries_moved += moved;
                c.collector_bytes_moved += moved_bytes;
            }
            info!(
                shard = self.id(),
                entries = moved,
                bytes = moved_bytes,
                ms = started.elapsed().as_millis() as u64,
                "segment collector copied live entries forward"
            );
        }
        moved_bytes
    }

    /// Copies one live entry to the WAL's end as a replacement of its own
    /// range. `None` when it is no longer live where it was.
    async fn relocate(
        &self,
        key: PartitionKey,
        base: i64,
        position: Position,
    ) -> Result<Option<u64>, String> {
        let (kind, payload, stored) = match self.read_entry(key, base, position).await {
            Ok(x) => x,
            // Removed or replaced meanwhile.
            Err(_) if !self.is_live_at(key, base, position) => return Ok(None),
            Err(e) => return Err(e),
        };
        let copy = relocation_payload(kind, &payload, &stored);
        let bytes = copy.len() as u64;
        let append = {
            if !self.is_live_at(key, base, position) {
                return Ok(None);
            }
            self.wal.append(KIND_REPLACE, copy)
        };
        let new_position = append.await.map_err(|e| e.to_string())?;
        let mut parts = self.parts.borrow_mut();
        if let Some(b) = parts.get_mut(&key).and_then(|p| p.batch_mut(base)) {
            if b.position == Some(position) {
                b.position = Some(new_position);
            }
        }
        Ok(Some(bytes))
    }

    fn is_live_at(&self, key: PartitionKey, base: i64, position: Position) -> bool {
        let parts = self.parts.borrow();
        let Some(p) = parts.get(&key) else {
            return false;
        };
        p.batches
            .binary_search_by_key(&base, |b| b.base_offset)
            .ok()
            .map(|i| &p.batches[i])
            .is_some_and(|b| b.position == Some(position) && b.last_offset >= p.log_start_offset)
    }
}
