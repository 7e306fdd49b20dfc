//! Retention: moves log start offsets past expired entries and removes WAL
//! segments that hold nothing live.
//!
//! One task per shard (`run_retention`), no timer per partition. A pass:
//!
//! 1. For each partition of a topic whose `cleanup.policy` includes
//!    `delete` (but `__consumer_offsets`, whose log start only the group
//!    coordinator moves), walks its oldest entries below the high watermark
//!    and moves the log start past each whole entry that is older than
//!    `retention.ms` (its largest timestamp) or that `retention.bytes`
//!    allows to drop. Entries of the active WAL segment expire too, as
//!    Kafka deletes an expired active segment (rolling a new one first): a
//!    shard's WAL is shared, so its active segment may not roll for a long
//!    time on a quiet shard, and the segment collector copies old entries
//!    into it. Their bytes stay until the segment is sealed and removed.
//!    The new log start is a durable `KIND_LOG_START` entry (the
//!    DeleteRecords record), applied once durable; index entries and
//!    tail-cache bytes below it are released.
//! 2. Offsets partitions coordinated here whose old group records alone
//!    keep sealed segments from being removed are carried forward: their
//!    groups' state is written again as group records and their log start
//!    moved past the superseded ones (`group::load`).
//! 3. The removal boundary is the WAL position of the first live entry of
//!    every partition of the shard (entries of deleted partitions are
//!    dead). When whole sealed segments lie below it, what recovery still
//!    needs from them is appended again first: a log start record for each
//!    partition whose log start is above 0. Once those are durable, the
//!    segments are removed (`Wal::remove_below`). Nothing is removed while
//!    groups replayed from old `KIND_GROUP` entries are not yet written to
//!    their offsets partition.
//!
//! The task sleeps until the oldest unexpired entry can expire (on
//! the shard's one deadline structure), until the WAL rolls a segment (new
//! sealed entries), or until a metadata view is applied (configs changed,
//! topics deleted). With nothing to expire it has no deadline: idle costs
//! nothing. A partition whose entries retention is not timing (none below
//! the HW, or all expired) is marked, and its next HW move wakes the task
//! (`Engine::hw_moved`); an idle partition wakes nothing. Passes are at
//! least `PASS_INTERVAL_MIN` apart.

use std::collections::HashMap;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::select;
use sluice_wal::{Append, Position};
use tracing::{debug, info, trace};

use crate::budget::Pool;
use crate::delete_records::{encode, KIND_LOG_START};
use crate::engine::{Engine, INDEX_ENTRY_BYTES};
use crate::entry::PartitionKey;
use crate::waiters::sleep_until;

/// Least time between two retention passes of a shard.
pub const PASS_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// A topic's retention settings, as its configs say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// -1: forever.
    pub ms: i64,
    /// -1: no limit.
    pub bytes: i64,
}

impl Retention {
    pub const MS_DEFAULT: i64 = 7 * 24 * 3600 * 1000;

    /// `None` when nothing is deleted (`cleanup.policy` without `delete`,
    /// or both limits off).
    pub fn of(configs: &std::collections::BTreeMap<String, String>) -> Option<Retention> {
        let delete = configs
            .get("cleanup.policy")
            .map_or(true, |v| v.split(',').any(|p| p.trim() == "delete"));
        let num = |k: &str, d: i64| configs.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        let r = Retention {
            ms: num("retention.ms", Self::MS_DEFAULT),
            bytes: num("retention.bytes", -1),
        };
        (delete && (r.ms >= 0 || r.bytes >= 0)).then_some(r)
    }
}

/// Where the oldest entries of one partition may move its log start to.
#[derive(Debug, PartialEq, Eq)]
pub struct Expiry {
    /// The new log start (the current one when nothing expired).
    pub log_start: i64,
    /// Wall-clock ms at which the first kept entry expires, if any.
    pub next_ms: Option<i64>,
}

/// Pure: walks `p`'s live entries below the high watermark oldest first and
/// stops at the first one retention keeps.
pub fn expire(p: &crate::partition::Partition, r: Retention, now_ms: i64) -> Expiry {
    let live = &p.durable()[p.locate(p.log_start_offset)..];
    let mut size: i64 = live.iter().map(|b| i64::from(b.bytes)).sum();
    let mut log_start = p.log_start_offset;
    for b in live {
        let by_time = r.ms >= 0 && now_ms.saturating_sub(b.max_timestamp) > r.ms;
        let by_size = r.bytes >= 0 && size - i64::from(b.bytes) >= r.bytes;
        if !(by_time || by_size) {
            return Expiry {
                log_start,
                next_ms: (r.ms >= 0).then(|| b.max_timestamp.saturating_add(r.ms) + 1),
            };
        }
        log_start = b.last_offset + 1;
        size -= i64::from(b.bytes);
    }
    Expiry {
        log_start,
        next_ms: None,
    }
}

impl Engine {
    /// One retention pass. Returns the wall-clock ms of the next expiry.
    pub(crate) async fn retention_pass(self: &Rc<Self>) -> Option<i64> {
        let now_ms = crate::produce::now_ms();
        let (moves, next_ms) = self.plan_log_starts(now_ms);
        if !moves.is_empty() {
            let appends: Vec<(PartitionKey, i64, Append)> = moves
                .into_iter()
                .map(|(k, o)| (k, o, self.wal.append(KIND_LOG_START, encode(&k, o))))
                .collect();
            let mut moved = 0u64;
            for (key, offset, append) in appends {
                match append.await {
                    Ok(_) => {
                        self.apply_log_start(&key, offset);
                        moved += 1;
                    }
                    Err(e) => {
                        self.warn_rate_limited("retention log start append", &e);
                        return next_ms;
                    }
                }
            }
            self.counters.borrow_mut().retention_log_start_moves += moved;
            debug!(
                shard = self.id(),
                partitions = moved,
                "retention moved log starts"
            );
        }
        self.carry_group_partitions().await;
        self.release_below_log_start();
        self.remove_dead_segments().await;
        next_ms
    }

    /// The log starts retention moves, and the next expiry. Marks the
    /// partitions whose next entry below the HW must wake the task
    /// (`Partition::retention_untimed`): time-retained ones with nothing
    /// left to expire later.
    fn plan_log_starts(&self, now_ms: i64) -> (Vec<(PartitionKey, i64)>, Option<i64>) {
        let view = self.applied_view();
        let mut parts = self.parts.borrow_mut();
        let mut moves = Vec::new();
        let mut next: Option<i64> = None;
        let me = self.id();
        for topic in view.iter().flat_map(|v| v.topics.values()) {
            let retention =
                Retention::of(&topic.configs).filter(|_| topic.name != crate::group::OFFSETS_TOPIC);
            for key in crate::view::keys_on(topic, me) {
                let Some(p) = parts.get_mut(&key) else {
                    continue;
                };
                let Some(r) = retention else {
                    p.retention_untimed = false;
                    continue;
                };
                let e = expire(p, r, now_ms);
                p.retention_untimed = r.ms >= 0 && e.next_ms.is_none();
                if e.log_start > p.log_start_offset {
                    moves.push((key, e.log_start));
                }
                if let Some(n) = e.next_ms {
                    next = Some(next.map_or(n, |x| x.min(n)));
                }
            }
        }
        (moves, next)
    }

    /// Drops index entries (and their tail-cache bytes) wholly below each
    /// partition's log start; returns their `partition_state` charge. Also
    /// forgets the transactions the partitions' HW and log start passed
    /// (`Partition::settle_txns`), which no other pass may visit soon.
    pub(crate) fn release_below_log_start(&self) {
        let mut dropped = 0u64;
        let mut starts: HashMap<PartitionKey, i64> = HashMap::new();
        for (k, p) in self.parts.borrow_mut().iter_mut() {
            if p.txns.is_some() {
                let before = p.txn_bytes();
                p.settle_txns();
                self.charge_txn_bytes(before, p.txn_bytes());
            }
            let n = p
                .batches
                .partition_point(|b| b.last_offset < p.log_start_offset);
            if n > 0 {
                p.batches.drain(..n);
                dropped += n as u64;
                starts.insert(*k, p.log_start_offset);
            }
        }
        if dropped > 0 {
            self.budget
                .discharge(Pool::PartitionState, dropped * INDEX_ENTRY_BYTES);
            self.tail.borrow_mut().forget_below(&starts);
            trace!(
                shard = self.id(),
                entries = dropped,
                "index entries below log starts released"
            );
        }
    }

    /// WAL position below which nothing of a live partition remains.
    fn removal_boundary(&self) -> u64 {
        self.removal_boundary_of(|_| true)
    }

    /// WAL position below which nothing live remains of the partitions
    /// `counted` selects (and of no sealed segment's successor: at most
    /// the active segment's base).
    pub(crate) fn removal_boundary_of(&self, counted: impl Fn(&PartitionKey) -> bool) -> u64 {
        let sealed_end = self.wal.active_base().0;
        let parts = self.parts.borrow();
        parts
            .keys()
            .filter(|k| counted(k))
            .filter_map(|k| self.first_live_in(&parts, k))
            .fold(sealed_end, u64::min)
    }

    /// Smallest WAL position of the partition's live entries (the WAL's
    /// durable end for one not durable yet); `None` when it has none.
    pub(crate) fn first_live_position(&self, key: &PartitionKey) -> Option<u64> {
        self.first_live_in(&self.parts.borrow(), key)
    }

    fn first_live_in(
        &self,
        parts: &HashMap<PartitionKey, crate::partition::Partition>,
        key: &PartitionKey,
    ) -> Option<u64> {
        let end = self.wal.durable_end().0;
        parts.get(key)?.first_live_position(end)
    }

    /// Carries what recovery needs past the boundary, then removes the
    /// sealed segments below it.
    async fn remove_dead_segments(&self) {
        let boundary = self.removal_boundary();
        if self.wal.removable_below(Position(boundary)) == 0 {
            return;
        }
        if self.group_log.holds_unwritten_legacy() {
            trace!(
                shard = self.id(),
                "WAL segments kept: old group records not yet in their offsets partition"
            );
            return;
        }
        let carried: Vec<Append> = {
            let parts = self.parts.borrow();
            parts
                .values()
                .filter(|p| p.log_start_offset > 0)
                .map(|p| {
                    self.wal
                        .append(KIND_LOG_START, encode(&p.key, p.log_start_offset))
                })
                .collect()
        };
        let records = carried.len() as u64;
        for append in carried {
            if let Err(e) = append.await {
                self.warn_rate_limited("retention carry append", &e);
                return;
            }
        }
        // Live entries only move forward and carried records sit at the
        // end, so the boundary computed above still holds.
        let started = Instant::now();
        match self.wal.remove_below(Position(boundary)).await {
            Ok(removed) => {
                {
                    let mut c = self.counters.borrow_mut();
                    c.retention_carried_records += records;
                    c.retention_segments_removed += removed;
                }
                info!(
                    shard = self.id(),
                    segments = removed,
                    log_starts = records,
                    wal_start = self.wal.start().0,
                    ms = started.elapsed().as_millis() as u64,
                    "retention removed WAL segments"
                );
            }
            Err(e) => self.warn_rate_limited("removing WAL segments", &e),
        }
    }
}

/// Waits until `PASS_INTERVAL_MIN` after the previous pass of a
/// background task (retention, the cleaner); returns the new pass's start.
pub(crate) async fn next_pass(
    waiters: &Rc<crate::waiters::Waiters>,
    last: Option<Instant>,
) -> Instant {
    if let Some(earliest) = last.map(|t| t + PASS_INTERVAL_MIN) {
        if Instant::now() < earliest {
            sleep_until(waiters, earliest).await;
        }
    }
    Instant::now()
}

/// Waits for `event`, or until the wall-clock `deadline_ms` when there is
/// one (on the shard's deadline structure).
pub(crate) async fn event_or_deadline(
    waiters: &Rc<crate::waiters::Waiters>,
    event: impl std::future::Future<Output = ()>,
    deadline_ms: Option<i64>,
) {
    let event = pin!(event);
    match deadline_ms {
        None => event.await,
        Some(ms) => {
            let wait = ms.saturating_sub(crate::produce::now_ms()).max(0) as u64;
            let d = Instant::now() + Duration::from_millis(wait);
            let _ = select(event, pin!(sleep_until(waiters, d))).await;
        }
    }
}

/// The shard's one retention task.
pub(crate) async fn run_retention(engine: Rc<Engine>) {
    let mut last_pass: Option<Instant> = None;
    let mut rolls_seen = 0;
    loop {
        let started = next_pass(&engine.waiters, last_pass).await;
        if engine.closing.get() {
            return;
        }
        let rolls = engine.wal.rolls();
        last_pass = Some(started);
        let moved = engine.counters.borrow().retention_log_start_moves;
        let next_ms = engine.retention_pass().await;
        let moved = engine.counters.borrow().retention_log_start_moves != moved;
        if rolls != rolls_seen || moved {
            // New sealed segments, or entries expired: the segment
            // collector may have work too (the WAL wakes one task per roll).
            rolls_seen = rolls;
            engine.cleaner_wake.fire();
        }
        trace!(shard = engine.id(), ?next_ms, "retention pass done");
        let wake = engine.retention_wake.clone();
        let event = async {
            let rolled = pin!(engine.wal.rolled(rolls));
            let _ = select(rolled, pin!(wake.wait())).await;
        };
        event_or_deadline(&engine.waiters, event, next_ms).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Partition;
    use bytes::Bytes;

    fn part() -> Partition {
        let mut p = Partition::new(PartitionKey {
            topic_id: [0; 16],
            partition: 0,
        });
        for (i, ts) in [100, 200, 300].iter().enumerate() {
            let base = p.assign(10, *ts, Bytes::from_static(b"0123456789"));
            p.mark_durable(base, Position(1000 * i as u64));
        }
        p
    }

    #[test]
    fn time_and_size_move_past_whole_entries() {
        let mut p = part();
        let r = Retention { ms: 50, bytes: -1 };
        assert_eq!(
            expire(&p, r, 1000),
            Expiry {
                log_start: 30,
                next_ms: None
            }
        );
        assert_eq!(
            expire(&p, r, 220),
            Expiry {
                log_start: 10,
                next_ms: Some(251)
            }
        );
        let r = Retention { ms: -1, bytes: 10 };
        assert_eq!(expire(&p, r, 0).log_start, 20);
        let r = Retention { ms: -1, bytes: 25 };
        assert_eq!(expire(&p, r, 0).log_start, 0);
        // Nothing at or above the high watermark expires.
        p.assign(10, 0, Bytes::from_static(b"0123456789"));
        let r = Retention { ms: 50, bytes: -1 };
        assert_eq!(expire(&p, r, 1000).log_start, 30);
    }

    #[test]
    fn policy_from_configs() {
        let mut c = std::collections::BTreeMap::new();
        assert_eq!(
            Retention::of(&c),
            Some(Retention {
                ms: Retention::MS_DEFAULT,
                bytes: -1
            })
        );
        c.insert("cleanup.policy".to_string(), "compact".to_string());
        assert_eq!(Retention::of(&c), None);
        c.insert("cleanup.policy".to_string(), "compact,delete".to_string());
        c.insert("retention.ms".to_string(), "-1".to_string());
        assert_eq!(Retention::of(&c), None);
    }
}
