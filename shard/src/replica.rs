//! Partition replication, the data-plane side (Kafka's ISR model).
//!
//! Roles come from the applied metadata view (`view`, `Partition::apply_meta`):
//! a node leads a partition when `PartitionMeta::leader` is its id and
//! follows it otherwise. A partition with more than one replica keeps a
//! boxed `partition::Replication`; the shard keeps the keys of those it leads
//! (`Engine::leading`) and of those it follows (`Engine::following`).
//!
//! Leader side:
//! - a replica fetch (`FetchRequest::replica_id`) records the follower's log
//!   end and catch-up time (`record_replica_fetch`), moves the high watermark
//!   (waking acks=-1 produces and consumer long polls) and, when a follower
//!   outside the ISR has caught up, proposes the ISR with it
//!   (`Metadata::alter_isr`, in a short task; at most one ISR change in flight
//!   per partition);
//! - one task per shard (`run_isr_shrink`) proposes the ISR without the
//!   followers that have not been caught up for `replica_lag_time_max_ms`; it
//!   checks every half of that while the shard leads a partition with
//!   followers and sleeps on a wake slot (no timer) otherwise;
//! - OffsetForLeaderEpoch is answered from the epoch cache
//!   (`end_offset_for_epoch`).
//!
//! Follower side (called by the broker's replica fetcher, on the shard that
//! owns the partition): `append_replica` writes the leader's batches as they
//! are (offsets and epochs unchanged) as WAL entries of kind
//! `KIND_REPLICA_BATCHES` (5; the format of `KIND_BATCHES`), records the
//! producers' sequences per batch and the epochs, and follows the
//! transactions as the leader did (`Partition::replay_txns`: transactional
//! batches open, markers close, aborts go into the aborted index), so a
//! follower that becomes leader knows its last stable offset and what to
//! tell read_committed consumers; `truncate_replica` and
//! `restart_replica_at` cut the log with a WAL entry of kind `KIND_TRUNCATE`
//! (4) that recovery replays in WAL order:
//!
//! ```text
//! offset size field
//!      0    1 format version u8 (= 1)
//!      1   16 topic id [u8; 16]
//!     17    4 partition u32, big-endian
//!     21    8 offset i64, big-endian
//!     29    1 mode u8: 0 truncate at offset (entry granular), 1 restart the
//!               whole log at offset
//! ```

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::channel::oneshot;
use sluice_raft::{TopicMeta, NO_LEADER};
use tracing::{debug, trace};

use crate::batch;
use crate::budget::{Pool, MEMORY_WAIT};
use crate::engine::{Engine, INDEX_ENTRY_BYTES};
use crate::entry::{self, EntryHeader, PartitionKey, ENTRY_HEADER_BYTES};
use crate::mesh::ShardMsg;
use crate::waiters::{sleep_until, WaitSlot};
use crate::{FetchPartition, Followed, ShardError};

/// WAL entry kind of a log truncation (format in the module doc).
pub const KIND_TRUNCATE: u8 = 4;
/// WAL entry kind of batches copied from the leader (format of
/// `entry::KIND_BATCHES`; producer state is recovered per batch).
pub const KIND_REPLICA_BATCHES: u8 = 5;
const TRUNCATE_ENTRY_BYTES: usize = 30;
const FORMAT_VERSION: u8 = 1;
/// The pseudo-partition `followed_changed` waiters watch in `Waiters`
/// (no topic id has all bits set: ids are UUID v4).
pub(crate) const FOLLOWED_KEY: PartitionKey = PartitionKey {
    topic_id: [0xFF; 16],
    partition: u32::MAX,
};
/// How long one `followed_changed` registration waits before registering
/// again (a bound for the shard's deadline structure, not a poll).
const FOLLOWED_WAIT: Duration = Duration::from_secs(3600);
/// Pause of `followed_changed` when the waiter structure is full.
const FOLLOWED_RETRY: Duration = Duration::from_millis(100);

/// How a truncation entry cuts the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Drop the entries at or above the offset (entry granular).
    Truncate = 0,
    /// Drop the whole log; it continues at the offset.
    RestartAt = 1,
}

pub fn encode_truncate(key: &PartitionKey, offset: i64, cut: Cut) -> Bytes {
    let mut b = BytesMut::with_capacity(TRUNCATE_ENTRY_BYTES);
    b.put_u8(FORMAT_VERSION);
    b.put_slice(&key.topic_id);
    b.put_u32(key.partition);
    b.put_i64(offset);
    b.put_u8(cut as u8);
    assert_eq!(b.len(), TRUNCATE_ENTRY_BYTES);
    b.freeze()
}

pub fn decode_truncate(payload: &[u8]) -> Result<(PartitionKey, i64, Cut), String> {
    if payload.len() != TRUNCATE_ENTRY_BYTES || payload[0] != FORMAT_VERSION {
        return Err(format!(
            "truncation entry of {} bytes, version {:?}",
            payload.len(),
            payload.first()
        ));
    }
    let mut topic_id = [0u8; 16];
    topic_id.copy_from_slice(&payload[1..17]);
    let partition = u32::from_be_bytes([payload[17], payload[18], payload[19], payload[20]]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&payload[21..29]);
    let cut = match payload[29] {
        0 => Cut::Truncate,
        1 => Cut::RestartAt,
        m => return Err(format!("truncation entry with mode {m}")),
    };
    let key = PartitionKey {
        topic_id,
        partition,
    };
    Ok((key, i64::from_be_bytes(offset), cut))
}

/// One WAL entry of a follower append: whole batches within `range` of the
/// records.
struct Chunk {
    range: std::ops::Range<usize>,
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
}

/// Splits the batches of validated `records` that end at or above
/// `log_end` into entries of at most `payload_max` bytes. Batches wholly
/// below `log_end` are skipped; one holding it, or batches out of offset
/// order, are errors. Offsets may skip (the leader's log has a gap where an
/// append of its own failed), as in Kafka.
fn chunks(records: &[u8], log_end: i64, payload_max: usize) -> Result<Vec<Chunk>, ShardError> {
    let mut out: Vec<Chunk> = Vec::new();
    let mut next = log_end;
    let mut at = 0usize;
    for b in batch::batches(records) {
        let (start, len) = (at, b.len());
        at += len;
        let base = batch::base_offset(b);
        let delta = i64::from(batch::producer_fields(b).last_offset_delta);
        let Some(last) = base.checked_add(delta) else {
            return Err(ShardError::InvalidRecord(format!(
                "replicated batch at offset {base} overflows the offsets"
            )));
        };
        if last < log_end && out.is_empty() {
            continue;
        }
        if base < next {
            return Err(ShardError::InvalidRecord(format!(
                "replicated batch at offset {base} overlaps the log, which ends at {next}"
            )));
        }
        if len > payload_max {
            return Err(ShardError::MessageTooLarge {
                bytes: len as u64,
                max: payload_max as u64,
            });
        }
        next = last + 1;
        let ts = batch::max_timestamp(b);
        match out.last_mut() {
            Some(c) if c.range.end == start && c.range.len() + len <= payload_max => {
                c.range.end = start + len;
                c.last_offset = last;
                c.max_timestamp = c.max_timestamp.max(ts);
            }
            _ => out.push(Chunk {
                range: start..start + len,
                base_offset: base,
                last_offset: last,
                max_timestamp: ts,
            }),
        }
    }
    Ok(out)
}

impl Engine {
    /// The key of a partition placed on this shard, whatever its role.
    fn local_key(&self, topic: &TopicMeta, partition: i32) -> Result<PartitionKey, ShardError> {
        let pm = usize::try_from(partition)
            .ok()
            .and_then(|p| topic.partitions.get(p))
            .ok_or(ShardError::UnknownTopicOrPartition)?;
        if pm.shard != self.id() {
            return Err(ShardError::NotLeader);
        }
        Engine::key_of(topic, partition)
    }

    /// Follower append: see `Shard::append_replica`.
    pub async fn append_replica(
        self: &Rc<Self>,
        topic: &Arc<TopicMeta>,
        partition: i32,
        records: Bytes,
        leader_high_watermark: i64,
    ) -> Result<i64, ShardError> {
        if self.closing.get() {
            return Err(ShardError::ShuttingDown);
        }
        let key = self.local_key(topic, partition)?;
        self.check_follower(&key)?;
        if records.is_empty() {
            return self.follower_high_watermark(&key, leader_high_watermark);
        }
        batch::validate_replicated(&records, u64::MAX)?;
        let payload_max = self.wal.config().entry_bytes_max as usize
            - ENTRY_HEADER_BYTES
            - crate::compact::REPLACE_HEADER_BYTES;
        let log_end = self.check_follower(&key)?;
        let planned = chunks(&records, log_end, payload_max)?;
        if planned.is_empty() {
            return self.follower_high_watermark(&key, leader_high_watermark);
        }
        let bytes: u64 = planned
            .iter()
            .map(|c| (ENTRY_HEADER_BYTES + c.range.len()) as u64)
            .sum();
        let pool_max = self.budget.max(Pool::ProduceInflight);
        if bytes > pool_max {
            return Err(ShardError::MessageTooLarge {
                bytes,
                max: pool_max,
            });
        }
        let reserve = self.budget.reserve(Pool::ProduceInflight, bytes);
        let Some(Ok(inflight)) = self.until(reserve, Instant::now() + MEMORY_WAIT).await else {
            return Err(ShardError::Busy);
        };
        // Offsets are taken and the appends queued in one synchronous
        // section; the log may have moved while memory was awaited.
        let appends = {
            let mut parts = self.parts.borrow_mut();
            let p = parts
                .get_mut(&key)
                .ok_or(ShardError::UnknownTopicOrPartition)?;
            if p.is_leader || p.repl.is_none() {
                return Err(ShardError::NotLeader);
            }
            let planned = chunks(&records, p.next_offset, payload_max)?;
            if let Some(r) = p.repl.as_deref_mut() {
                r.leader_high_watermark = leader_high_watermark;
            }
            let now = crate::produce::now_ms();
            let txn_bytes_before = p.txn_bytes();
            let mut appends = Vec::with_capacity(planned.len());
            for c in planned {
                let header = EntryHeader {
                    key,
                    base_offset: c.base_offset,
                    last_offset: c.last_offset,
                    max_timestamp: c.max_timestamp,
                };
                let part = &records[c.range];
                let payload = entry::encode(&header, part).freeze();
                p.push_pending(
                    c.base_offset,
                    c.last_offset,
                    c.max_timestamp,
                    payload.slice(ENTRY_HEADER_BYTES..),
                );
                crate::producer_state::record_batches(&mut p.producers, part, now);
                p.note_epochs(part);
                p.replay_txns(part, now);
                self.budget
                    .charge_forced(Pool::PartitionState, INDEX_ENTRY_BYTES);
                let entry_bytes = payload.len() as u64;
                let append = self
                    .wal
                    .append_payload(KIND_REPLICA_BATCHES, entry::wal_payload(payload));
                appends.push((c.base_offset, entry_bytes, append));
            }
            p.settle_txns();
            self.charge_txn_bytes(txn_bytes_before, p.txn_bytes());
            appends
        };
        {
            let mut c = self.counters.borrow_mut();
            c.replica_appends += 1;
            c.replica_append_bytes += bytes;
        }
        let mut failed: Option<(i64, ShardError)> = None;
        let mut durable = Vec::with_capacity(appends.len());
        for (base_offset, entry_bytes, append) in appends {
            match append.await {
                Ok(position) if failed.is_none() => {
                    durable.push((base_offset, position, entry_bytes))
                }
                Ok(_) => {}
                Err(e) => {
                    if failed.is_none() {
                        self.warn_rate_limited("WAL append (replica)", &e);
                        failed = Some((base_offset, ShardError::Storage(e.to_string())));
                    }
                }
            }
        }
        drop(inflight);
        for (base_offset, position, entry_bytes) in durable {
            self.on_durable(key, base_offset, position, entry_bytes);
        }
        if let Some((base_offset, e)) = failed {
            // The log continues where the failed entry began; the cut is
            // logged too so that entries after it, should they be in the
            // WAL, do not come back at recovery.
            self.cut_log(&key, base_offset, Cut::Truncate);
            let append = self.wal.append(
                KIND_TRUNCATE,
                encode_truncate(&key, base_offset, Cut::Truncate),
            );
            glommio::spawn_local(async move {
                let _ = append.await;
            })
            .detach();
            return Err(e);
        }
        let end = self.parts.borrow().get(&key).map(|p| p.next_offset);
        end.ok_or(ShardError::UnknownTopicOrPartition)
    }

    /// Follower log start: see `Shard::advance_replica_log_start`.
    pub async fn advance_replica_log_start(
        &self,
        topic: &Arc<TopicMeta>,
        partition: i32,
        leader_log_start: i64,
    ) -> Result<i64, ShardError> {
        if self.closing.get() {
            return Err(ShardError::ShuttingDown);
        }
        let key = self.local_key(topic, partition)?;
        let target = {
            let parts = self.parts.borrow();
            let p = parts.get(&key).ok_or(ShardError::UnknownTopicOrPartition)?;
            if p.is_leader || p.repl.is_none() {
                return Err(ShardError::NotLeader);
            }
            let target = leader_log_start.min(p.high_watermark);
            if target <= p.log_start_offset {
                return Ok(p.log_start_offset);
            }
            target
        };
        let append = self.wal.append(
            crate::delete_records::KIND_LOG_START,
            crate::delete_records::encode(&key, target),
        );
        append
            .await
            .map_err(|e| ShardError::Storage(e.to_string()))?;
        let start = self.apply_log_start(&key, target);
        trace!(
            shard = self.id(),
            partition,
            log_start = start,
            "replica log start advanced"
        );
        // Index entries and WAL segments below it can go.
        self.retention_wake.fire();
        Ok(start)
    }

    /// `Ok(log end)` if this node follows the partition here.
    fn check_follower(&self, key: &PartitionKey) -> Result<i64, ShardError> {
        let parts = self.parts.borrow();
        let p = parts.get(key).ok_or(ShardError::UnknownTopicOrPartition)?;
        if p.is_leader || p.repl.is_none() {
            return Err(ShardError::NotLeader);
        }
        Ok(p.next_offset)
    }

    /// Records the leader's HW on a follower; returns its log end.
    fn follower_high_watermark(
        &self,
        key: &PartitionKey,
        leader_hw: i64,
    ) -> Result<i64, ShardError> {
        let (moved, end) = {
            let mut parts = self.parts.borrow_mut();
            let p = parts
                .get_mut(key)
                .ok_or(ShardError::UnknownTopicOrPartition)?;
            let Some(r) = p.repl.as_deref_mut() else {
                return Err(ShardError::NotLeader);
            };
            r.leader_high_watermark = leader_hw;
            (p.refresh(), p.next_offset)
        };
        if moved {
            self.hw_moved(key);
        }
        Ok(end)
    }

    /// Follower truncation: see `Shard::truncate_replica`.
    pub async fn cut_replica(
        &self,
        topic: &Arc<TopicMeta>,
        partition: i32,
        offset: i64,
        cut: Cut,
    ) -> Result<i64, ShardError> {
        if self.closing.get() {
            return Err(ShardError::ShuttingDown);
        }
        if offset < 0 {
            return Err(ShardError::OffsetOutOfRange);
        }
        let key = self.local_key(topic, partition)?;
        let log_end = self.check_follower(&key)?;
        if cut == Cut::Truncate && offset >= log_end {
            return Ok(log_end);
        }
        let append = self
            .wal
            .append(KIND_TRUNCATE, encode_truncate(&key, offset, cut));
        let end = self.cut_log(&key, offset, cut);
        self.counters.borrow_mut().replica_truncations += 1;
        debug!(
            shard = self.id(),
            partition,
            offset,
            ?cut,
            end,
            "replica log cut"
        );
        append
            .await
            .map_err(|e| ShardError::Storage(e.to_string()))?;
        Ok(end)
    }

    /// Cuts a partition's log in memory (live, or replaying a `KIND_TRUNCATE`
    /// entry at recovery) and releases what the cut entries held. Returns
    /// the new log end (-1 for an unknown partition).
    pub(crate) fn cut_log(&self, key: &PartitionKey, offset: i64, cut: Cut) -> i64 {
        let (dropped, end) = {
            let mut parts = self.parts.borrow_mut();
            let Some(p) = parts.get_mut(key) else {
                return -1;
            };
            let txn_bytes_before = p.txn_bytes();
            let dropped = match cut {
                Cut::Truncate => p.truncate(offset),
                Cut::RestartAt => p.restart_at(offset),
            };
            self.charge_txn_bytes(txn_bytes_before, p.txn_bytes());
            (dropped, p.next_offset)
        };
        self.budget
            .discharge(Pool::PartitionState, dropped * INDEX_ENTRY_BYTES);
        self.tail.borrow_mut().forget_from(key, end);
        self.cleaner.borrow_mut().cut(key, end);
        self.waiters.notify(key);
        end
    }

    /// The partitions this shard follows: see `Shard::followed`.
    pub fn followed(&self) -> Vec<Followed> {
        let Some(view) = self.applied_view() else {
            return Vec::new();
        };
        let parts = self.parts.borrow();
        let following = self.following.borrow();
        let mut out = Vec::with_capacity(following.len());
        for key in following.iter() {
            let Some(p) = parts.get(key) else { continue };
            let Some(r) = p.repl.as_deref() else { continue };
            if r.leader == NO_LEADER {
                continue;
            }
            let Some(topic) = view.topic_by_id(&key.topic_id) else {
                continue;
            };
            out.push(Followed {
                topic: Arc::clone(topic),
                partition: key.partition as i32,
                leader: r.leader,
                leader_epoch: p.leader_epoch,
                log_end: p.next_offset,
                last_fetched_epoch: r.latest_epoch(),
                needs_truncation: r.needs_truncation,
            });
        }
        out
    }

    /// See `Shard::mark_truncated`.
    pub fn mark_truncated(
        &self,
        topic: &TopicMeta,
        partition: i32,
        leader_epoch: i32,
    ) -> Result<bool, ShardError> {
        let key = self.local_key(topic, partition)?;
        let mut parts = self.parts.borrow_mut();
        let p = parts
            .get_mut(&key)
            .ok_or(ShardError::UnknownTopicOrPartition)?;
        if p.is_leader {
            return Err(ShardError::NotLeader);
        }
        let Some(r) = p.repl.as_deref_mut() else {
            return Err(ShardError::NotLeader);
        };
        if p.leader_epoch != leader_epoch {
            return Ok(false);
        }
        r.needs_truncation = false;
        Ok(true)
    }

    /// Bumps the followed-set version and wakes its waiters.
    pub(crate) fn bump_followed(&self) {
        self.followed_version.set(self.followed_version.get() + 1);
        self.waiters.notify(&FOLLOWED_KEY);
    }

    /// See `Shard::followed_changed`.
    pub async fn followed_changed(&self, since: u64) -> u64 {
        loop {
            let v = self.followed_version.get();
            if v > since || self.closing.get() {
                return v;
            }
            let slot = WaitSlot::new();
            let deadline = Instant::now() + FOLLOWED_WAIT;
            match self.waiters.register(&slot, vec![FOLLOWED_KEY], deadline) {
                Some(_guard) => slot.wait().await,
                None => glommio::timer::sleep(FOLLOWED_RETRY).await,
            }
        }
    }

    /// OffsetForLeaderEpoch, routed to the owning shard like ListOffsets.
    pub async fn end_offset_for_epoch(
        &self,
        topic: &Arc<TopicMeta>,
        partition: i32,
        epoch: i32,
    ) -> Result<(i32, i64), ShardError> {
        let owner = self.owner_of(topic, partition)?;
        if owner == self.id() {
            return self.end_offset_for_epoch_owner(topic, partition, epoch);
        }
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + Duration::from_millis(self.cfg.remote_reply_timeout_ms);
        let msg = ShardMsg::EndOffsetForEpoch {
            topic: Arc::clone(topic),
            partition,
            epoch,
            reply: tx,
        };
        self.call(owner, msg, rx, deadline).await.and_then(|r| r)
    }

    pub fn end_offset_for_epoch_owner(
        &self,
        topic: &TopicMeta,
        partition: i32,
        epoch: i32,
    ) -> Result<(i32, i64), ShardError> {
        let key = Engine::key_of(topic, partition)?;
        let parts = self.parts.borrow();
        let p = parts.get(&key).ok_or(ShardError::UnknownTopicOrPartition)?;
        if !p.is_leader {
            return Err(ShardError::NotLeader);
        }
        Ok(p.end_offset_for_epoch(epoch))
    }

    /// A replica fetch from `node` reached this (owning) shard: records the
    /// follower's progress on each partition it fetches at a valid offset
    /// and epoch, wakes what waits for the HW, proposes ISR additions.
    pub(crate) fn record_replica_fetch(self: &Rc<Self>, node: u64, partitions: &[FetchPartition]) {
        let now = Instant::now();
        let mut moved = Vec::new();
        let mut proposals = Vec::new();
        {
            let mut parts = self.parts.borrow_mut();
            for fp in partitions {
                let Some(p) = Engine::key_of(&fp.topic, fp.partition)
                    .ok()
                    .and_then(|k| parts.get_mut(&k))
                else {
                    continue;
                };
                let epoch_ok =
                    fp.current_leader_epoch < 0 || fp.current_leader_epoch == p.leader_epoch;
                if !epoch_ok || fp.fetch_offset < 0 || fp.fetch_offset > p.next_offset {
                    continue;
                }
                let progress = p.record_fetch(node, fp.fetch_offset, now);
                if progress.hw_moved {
                    moved.push(p.key);
                }
                if let Some(isr) = progress.expand {
                    proposals.push((p.key, p.leader_epoch, isr));
                }
            }
        }
        for key in &moved {
            self.hw_moved(key);
        }
        for (key, epoch, isr) in proposals {
            self.propose_isr(key, epoch, isr);
        }
    }

    /// Proposes `isr` for the partition (already marked in flight in its
    /// replication state) in a short task; the mark is cleared when the
    /// change is refused, times out, or shows in an applied view.
    pub(crate) fn propose_isr(self: &Rc<Self>, key: PartitionKey, epoch: i32, isr: Vec<u64>) {
        let clear = move |engine: &Engine, isr: &Vec<u64>, refused: bool| {
            let mut parts = engine.parts.borrow_mut();
            if let Some(r) = parts.get_mut(&key).and_then(|p| p.repl.as_deref_mut()) {
                if r.proposed_isr.as_ref() == Some(isr) && (refused || r.isr == *isr) {
                    r.proposed_isr = None;
                }
            }
        };
        let topic = self
            .applied_view()
            .and_then(|v| v.topic_by_id(&key.topic_id).cloned());
        let Some(topic) = topic else {
            clear(self, &isr, true);
            return;
        };
        self.counters.borrow_mut().isr_proposals += 1;
        debug!(shard = self.id(), topic = %topic.name, partition = key.partition, ?isr, "proposing an ISR change");
        let engine = self.clone();
        let meta = self.meta.clone();
        let node = self.node_id;
        let deadline = Instant::now() + Duration::from_millis(self.cfg.remote_reply_timeout_ms);
        glommio::spawn_local(async move {
            let change = meta.alter_isr(&topic.name, key.partition, node, epoch, isr.clone());
            let result = engine.until(change, deadline).await;
            let refused = !matches!(result, Some(Ok(())));
            if refused {
                debug!(topic = %topic.name, partition = key.partition, ?result, "ISR change not made");
            }
            clear(&engine, &isr, refused);
        })
        .detach();
    }

    /// Proposes ISR shrinks for the led partitions with lagging followers.
    fn shrink_lagging(self: &Rc<Self>, lag: Duration) {
        let now = Instant::now();
        let mut proposals = Vec::new();
        {
            let leading = self.leading.borrow();
            let mut parts = self.parts.borrow_mut();
            for key in leading.iter() {
                if let Some(p) = parts.get_mut(key) {
                    if let Some(isr) = p.shrink_isr(now, lag) {
                        proposals.push((*key, p.leader_epoch, isr));
                    }
                }
            }
        }
        for (key, epoch, isr) in proposals {
            self.propose_isr(key, epoch, isr);
        }
    }
}

/// The shard's one ISR-shrink task: while the shard leads a partition with
/// followers it checks them every `replica_lag_time_max_ms / 2` (on the
/// shard's deadline structure); otherwise it waits on `isr_wake`, fired by
/// view application, with no timer.
pub(crate) async fn run_isr_shrink(engine: Rc<Engine>) {
    let lag = Duration::from_millis(engine.cfg.replica_lag_time_max_ms.max(2));
    loop {
        if engine.closing.get() {
            return;
        }
        if engine.leading.borrow().is_empty() {
            engine.isr_wake.wait().await;
            continue;
        }
        sleep_until(&engine.waiters, Instant::now() + lag / 2).await;
        if engine.closing.get() {
            return;
        }
        trace!(shard = engine.id(), "ISR lag check");
        engine.shrink_lagging(lag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::testing::batch;

    fn at(mut b: Vec<u8>, base: i64) -> Vec<u8> {
        b[..8].copy_from_slice(&base.to_be_bytes());
        b
    }

    #[test]
    fn truncate_entry_round_trip() {
        let key = PartitionKey {
            topic_id: [4; 16],
            partition: 2,
        };
        let b = encode_truncate(&key, 77, Cut::RestartAt);
        assert_eq!(decode_truncate(&b), Ok((key, 77, Cut::RestartAt)));
        assert!(decode_truncate(&b[..29]).is_err());
        let mut bad = b.to_vec();
        bad[29] = 9;
        assert!(decode_truncate(&bad).is_err());
    }

    #[test]
    fn chunks_skip_below_the_log_end_and_split_by_size() {
        let a = at(batch(2, 1, b"a"), 0); // 0..=1
        let b = at(batch(3, 5, b"b"), 2); // 2..=4
        let c = at(batch(1, 3, b"c"), 8); // 8 (a gap, as after a failed append)
        let all = [a.clone(), b.clone(), c.clone()].concat();
        let got = chunks(&all, 2, 1 << 20).expect("valid");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].base_offset, got[0].last_offset), (2, 8));
        assert_eq!(got[0].range, a.len()..all.len());
        assert_eq!(got[0].max_timestamp, 5);
        let small = chunks(&all, 0, b.len().max(a.len())).expect("valid");
        assert_eq!(
            small.len(),
            3,
            "one entry per batch when they do not fit together"
        );
        assert!(chunks(&all, 7, 1 << 20).expect("valid").len() == 1);
        assert!(matches!(
            chunks(&all, 1, 1 << 20),
            Err(ShardError::InvalidRecord(_))
        ));
        let backwards = [b.clone(), a.clone()].concat();
        assert!(chunks(&backwards, 0, 1 << 20).is_err());
        assert!(chunks(&all, 9, 1 << 20).expect("valid").is_empty());
        assert!(matches!(
            chunks(&all, 0, 10),
            Err(ShardError::MessageTooLarge { .. })
        ));
    }
}
