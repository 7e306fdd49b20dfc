//! Fetch: whole stored entries from the one containing `fetch_offset`, up to
//! `partition_max_bytes` and the request's `max_bytes` (the first batch of
//! the response is returned even when larger, as Kafka does).
//!
//! Long poll: an owner shard plans its partitions from the in-memory index
//! (no I/O); when the plan is below `min_bytes` it registers ONE waiter in
//! the shard's `Waiters` (woken by growth of any of its partitions or by its
//! deadline) and plans again. Only the final plan is materialized: tail
//! cache hits are cloned `Bytes`, older entries are read from the WAL.
//!
//! Memory: every batch of the response is charged to `FetchResponse` before
//! it is cloned or read, and the charge travels with the answer
//! (`Shard::fetch_held`) until the front end has written it. The first
//! batch waits for memory, once, at most `MEMORY_WAIT` (a response larger
//! than the pool charges the excess past the limit: progress needs it);
//! when that runs out the answer has no records and is marked `throttled`.
//! Later batches are taken only while they fit. An owner shard serving
//! another shard releases its charge when it answers; the origin charges
//! the bytes it receives to its own pool.
//!
//! read_committed (isolation level 1): only entries whose base offset is
//! below the partition's last stable offset (LSO) are planned, and an
//! entry straddling it (a follower's entry, which may bundle several
//! producers' batches, on a replica that became leader) is cut to its
//! batches below it when materialized. The answer lists the aborted
//! transactions the returned records may hold (`Txns::collect_aborted`),
//! trimmed by the origin to the records that survive `max_bytes`. Every
//! answer carries the LSO. Replica fetches read as before.
//!
//! Across shards: the origin sends one sub-fetch per owner shard; each owner
//! waits up to `max_wait_ms` for its partitions to reach `min_bytes`. As soon
//! as the answers received reach `min_bytes` (or carry an error) the origin
//! cancels the other owners' waits (`CancelFetch`), merges the answers in
//! request order and trims them to `max_bytes`. A sub-fetch not yet sent
//! when that happens (the local owner answers without yielding, before the
//! others are first polled) goes out with no wait, and one whose send waited
//! for room meanwhile is cancelled again after it: a cancel that reaches an
//! owner before its request finds nothing to cancel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::stream::{FuturesUnordered, StreamExt};
use sluice_wal::Position;
use tracing::trace;

use crate::batch;
use crate::budget::{Pool, Reservation, MEMORY_WAIT};
use crate::engine::Engine;
use crate::entry::PartitionKey;
use crate::mesh::{FetchKey, OwnerFetch, ShardMsg};
use crate::partition::Partition;
use crate::waiters::WaitSlot;
use crate::{FetchPartition, FetchPartitionResult, FetchRequest, ShardError};

/// Where the bytes of one planned entry come from.
enum Source {
    Cached(Bytes),
    Wal {
        position: Position,
        base_offset: i64,
        bytes: u32,
    },
}

/// One partition's planned answer.
struct PartPlan {
    key: Option<PartitionKey>,
    result: FetchPartitionResult,
    sources: Vec<Source>,
    /// read_committed, when the last planned entry holds the LSO: batches
    /// at or above this offset are cut from what is read.
    cut: Option<i64>,
}

impl Engine {
    /// The results, and the `FetchResponse` memory that holds their batches
    /// (to be dropped once the response is written).
    pub async fn fetch(
        self: &Rc<Self>,
        req: FetchRequest,
    ) -> (Vec<FetchPartitionResult>, Option<Reservation>) {
        let started = Instant::now();
        {
            let mut c = self.counters.borrow_mut();
            c.fetch_requests += 1;
            c.fetch_partitions += req.partitions.len() as u64;
        }
        let (results, held) = self.fetch_routed(req).await;
        let bytes: u64 = results
            .iter()
            .map(FetchPartitionResult::records_bytes)
            .sum();
        self.counters.borrow_mut().fetch_bytes += bytes;
        let us = started.elapsed().as_micros() as u64;
        self.fetch_latency_us
            .borrow_mut()
            .saturating_record(us.max(1));
        (results, held)
    }

    async fn fetch_routed(
        self: &Rc<Self>,
        req: FetchRequest,
    ) -> (Vec<FetchPartitionResult>, Option<Reservation>) {
        let mut out: Vec<Option<FetchPartitionResult>> =
            (0..req.partitions.len()).map(|_| None).collect();
        let mut groups: BTreeMap<u32, (Vec<usize>, Vec<FetchPartition>)> = BTreeMap::new();
        for (i, fp) in req.partitions.into_iter().enumerate() {
            match self.owner_of(&fp.topic, fp.partition) {
                Ok(owner) => {
                    let g = groups.entry(owner).or_default();
                    g.0.push(i);
                    g.1.push(fp);
                }
                Err(e) => out[i] = Some(FetchPartitionResult::failed(e)),
            }
        }
        let seq = self.fetch_seq.get();
        self.fetch_seq.set(seq + 1);
        let key = FetchKey {
            origin: self.id(),
            seq,
        };
        let local_slot = WaitSlot::new();
        let mut remaining = CancelOnDrop {
            engine: self,
            key,
            owners: groups.keys().copied().collect(),
        };
        let mut pending = FuturesUnordered::new();
        for (owner, (idx, partitions)) in groups {
            let sub = OwnerFetch {
                partitions,
                max_wait_ms: req.max_wait_ms,
                min_bytes: req.min_bytes,
                max_bytes: req.max_bytes,
                isolation_level: req.isolation_level,
                replica_id: req.replica_id,
            };
            let slot = local_slot.clone();
            pending.push(async move { (owner, idx, self.sub_fetch(owner, key, sub, &slot).await) });
        }
        let (mut bytes, mut cancelled) = (0u64, false);
        let mut held: Option<Reservation> = None;
        while let Some((owner, idx, (results, memory))) = pending.next().await {
            remaining.owners.remove(&owner);
            let got = results
                .iter()
                .map(FetchPartitionResult::records_bytes)
                .sum::<u64>();
            bytes += got;
            // Batches from another shard arrive already read: charged as
            // they are.
            let memory = memory.or_else(|| {
                (got > 0).then(|| self.budget.reserve_forced(Pool::FetchResponse, got))
            });
            hold(&mut held, memory);
            let error = results.iter().any(|r| r.error.is_some());
            for (i, r) in idx.into_iter().zip(results) {
                out[i] = Some(r);
            }
            if !cancelled
                && !remaining.owners.is_empty()
                && (bytes >= u64::from(req.min_bytes) || error)
            {
                cancelled = true;
                let owners = std::mem::take(&mut remaining.owners);
                self.cancel_fetch(key, &local_slot, &owners).await;
            }
        }
        let missing = || {
            FetchPartitionResult::failed(ShardError::Storage(
                "no answer from the owning shard".into(),
            ))
        };
        let mut results: Vec<FetchPartitionResult> =
            out.into_iter().map(|r| r.unwrap_or_else(missing)).collect();
        trim_to_max_bytes(&mut results, req.max_bytes);
        results.iter_mut().for_each(trim_aborted);
        (results, held)
    }

    /// Fetches one owner's partitions, locally or over the mesh.
    async fn sub_fetch(
        self: &Rc<Self>,
        owner: u32,
        key: FetchKey,
        sub: OwnerFetch,
        slot: &Rc<WaitSlot>,
    ) -> (Vec<FetchPartitionResult>, Option<Reservation>) {
        let n = sub.partitions.len();
        if owner == self.id() {
            return self.fetch_owner(&sub, slot).await;
        }
        let mut sub = sub;
        let cancelled_before = slot.is_cancelled();
        if cancelled_before {
            // The fetch has enough already: another owner answered before
            // this sub-fetch was first polled (a local owner with records
            // answers without yielding), so its cancel went out before this
            // request and found nothing to cancel. Take what is there now.
            sub.max_wait_ms = 0;
        }
        let wait_ms = u64::from(sub.max_wait_ms) + self.cfg.remote_reply_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let (tx, rx) = oneshot::channel();
        let sent = async {
            let Some(peers) = &self.peers else {
                return Err(ShardError::NotLeader);
            };
            self.counters.borrow_mut().remote_sent += 1;
            let msg = ShardMsg::Fetch {
                key,
                req: sub,
                reply: tx,
            };
            peers.send(owner, msg).await?;
            if !cancelled_before && slot.is_cancelled() {
                // Cancelled while the send waited for room in a full
                // channel: the cancel may have overtaken the request.
                let _ = peers.send(owner, ShardMsg::CancelFetch { key }).await;
            }
            rx.await.map_err(|_| ShardError::ShuttingDown)
        };
        let called = match self.until(sent, deadline).await {
            Some(r) => r,
            None => {
                self.counters.borrow_mut().remote_timeouts += 1;
                Err(ShardError::Timeout)
            }
        };
        let results = match called {
            Ok(v) if v.len() == n => v,
            Ok(v) => vec![
                FetchPartitionResult::failed(ShardError::Storage(format!(
                    "{} answers for {n} partitions",
                    v.len()
                )));
                n
            ],
            Err(e) => vec![FetchPartitionResult::failed(e); n],
        };
        (results, None)
    }
}

/// The owners of a fetch that have not answered yet. A fetch dropped
/// before they did (its client went away) cancels their waits: a remote
/// long poll must not outlive its request. The cancel is sent only if the
/// owner's inbox has room; otherwise the wait ends at its deadline.
struct CancelOnDrop<'a> {
    engine: &'a Engine,
    key: FetchKey,
    owners: BTreeSet<u32>,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        let Some(peers) = &self.engine.peers else {
            return;
        };
        for &owner in self.owners.iter().filter(|&&o| o != self.engine.id()) {
            peers.try_send(owner, ShardMsg::CancelFetch { key: self.key });
        }
    }
}

impl Engine {
    /// Ends the waits of `owners`. The local slot is cancelled whether or
    /// not this shard is among them: it also tells the sub-fetches not sent
    /// yet (`sub_fetch`) that the fetch has enough.
    async fn cancel_fetch(&self, key: FetchKey, local_slot: &Rc<WaitSlot>, owners: &BTreeSet<u32>) {
        local_slot.cancel();
        for &owner in owners.iter().filter(|&&o| o != self.id()) {
            if let Some(peers) = &self.peers {
                let _ = peers.send(owner, ShardMsg::CancelFetch { key }).await;
            }
        }
    }

    /// A fetch sent by another shard: registers its cancel slot at once (in
    /// the inbox, before any later `CancelFetch` is read), serves it in a task.
    pub fn serve_fetch(
        self: &Rc<Self>,
        key: FetchKey,
        mut req: OwnerFetch,
        reply: oneshot::Sender<Vec<FetchPartitionResult>>,
    ) {
        let slot = WaitSlot::new();
        {
            let mut cancels = self.fetch_cancels.borrow_mut();
            if cancels.len() >= self.cfg.fetch_waiters_max {
                req.max_wait_ms = 0; // Bounded: answer without waiting.
            } else {
                cancels.insert(key, slot.clone());
            }
        }
        let engine = self.clone();
        glommio::spawn_local(async move {
            let (results, held) = engine.fetch_owner(&req, &slot).await;
            engine.fetch_cancels.borrow_mut().remove(&key);
            let _ = reply.send(results);
            // The origin shard charges the bytes to its own pool.
            drop(held);
        })
        .detach();
    }

    /// The long-poll loop of an owner shard. A replica fetch first records
    /// the follower's progress (`replica`).
    pub async fn fetch_owner(
        self: &Rc<Self>,
        req: &OwnerFetch,
        slot: &Rc<WaitSlot>,
    ) -> (Vec<FetchPartitionResult>, Option<Reservation>) {
        if let Some(node) = req.replica_id {
            self.record_replica_fetch(node, &req.partitions);
        }
        let deadline = Instant::now() + Duration::from_millis(u64::from(req.max_wait_ms));
        let mut waited = false;
        loop {
            let (plans, bytes, error) = self.plan_fetch(req);
            let enough = bytes >= u64::from(req.min_bytes) || error;
            let stop = slot.is_cancelled() || self.closing.get() || Instant::now() >= deadline;
            if enough || stop {
                return self.materialize(plans).await;
            }
            let keys: Vec<PartitionKey> = plans.iter().filter_map(|p| p.key).collect();
            let Some(_guard) = self.waiters.register(slot, keys, deadline) else {
                return self.materialize(plans).await;
            };
            if !waited {
                waited = true;
                self.counters.borrow_mut().fetch_long_polls += 1;
            }
            slot.wait().await;
        }
    }

    /// Plans every partition from the index: no I/O, no await.
    fn plan_fetch(&self, req: &OwnerFetch) -> (Vec<PartPlan>, u64, bool) {
        let parts = self.parts.borrow();
        let mut plans = Vec::with_capacity(req.partitions.len());
        let (mut bytes, mut error) = (0u64, false);
        let read = match (req.replica_id, req.isolation_level) {
            (Some(_), _) => Read::Replica,
            (None, 1) => Read::Committed,
            (None, _) => Read::Uncommitted,
        };
        for fp in &req.partitions {
            let left = u64::from(req.max_bytes).saturating_sub(bytes);
            let plan = plan_partition(&parts, fp, bytes == 0, left, read);
            bytes += plan.sources.iter().map(source_bytes).sum::<u64>();
            error |= plan.result.error.is_some();
            plans.push(plan);
        }
        (plans, bytes, error)
    }

    /// Turns plans into results: cached batches are cloned, the others read
    /// from the WAL, each charged to the `FetchResponse` pool first.
    async fn materialize(
        &self,
        plans: Vec<PartPlan>,
    ) -> (Vec<FetchPartitionResult>, Option<Reservation>) {
        let mut held: Option<Reservation> = None;
        // Memory ran short: the remaining partitions get no records.
        let (mut stopped, mut throttled) = (false, false);
        let mut out: Vec<FetchPartitionResult> = Vec::with_capacity(plans.len());
        for plan in plans {
            let mut result = plan.result;
            let cut = |b: Bytes| match plan.cut {
                Some(end) => below(b, end),
                None => b,
            };
            for source in plan.sources {
                if stopped {
                    break;
                }
                match self
                    .fetch_memory(held.is_none(), source_bytes(&source))
                    .await
                {
                    FetchMemory::Got(r) => hold(&mut held, Some(r)),
                    FetchMemory::Short => {
                        self.counters.borrow_mut().fetch_busy += 1;
                        stopped = true;
                        break;
                    }
                    FetchMemory::TimedOut => {
                        self.counters.borrow_mut().fetch_throttled += 1;
                        (stopped, throttled) = (true, true);
                        break;
                    }
                }
                let (position, base_offset, bytes) = match source {
                    Source::Cached(b) => {
                        self.counters.borrow_mut().fetch_tail_hits += 1;
                        result.records.push(cut(b));
                        continue;
                    }
                    Source::Wal {
                        position,
                        base_offset,
                        bytes,
                    } => (position, base_offset, bytes),
                };
                let key = plan.key.expect("only known partitions have sources");
                match self
                    .read_stored(key, position, base_offset, Some(bytes))
                    .await
                {
                    Ok(b) => result.records.push(cut(b)),
                    Err(ShardError::OffsetOutOfRange) if self.in_log(&key, base_offset) => {
                        // Replaced by compaction after the plan: the answer
                        // stops here and the client fetches again.
                        break;
                    }
                    Err(e) => {
                        self.warn_rate_limited("WAL read", &e);
                        if result.records.is_empty() {
                            result.error = Some(e);
                        }
                        break;
                    }
                }
            }
            // A cut entry may keep nothing (not planned so, but harmless).
            result.records.retain(|b| !b.is_empty());
            out.push(result);
        }
        if throttled {
            out.iter_mut().for_each(|r| r.throttled = true);
        }
        (out, held)
    }

    /// Memory for one batch of a response. The response's first batch waits
    /// for it (once, at most `MEMORY_WAIT`); a first batch larger than the
    /// pool takes the whole pool and charges the rest past the limit. Later
    /// batches only take memory that is free now.
    async fn fetch_memory(&self, first: bool, bytes: u64) -> FetchMemory {
        let pool = Pool::FetchResponse;
        if !first {
            return match self.budget.try_reserve(pool, bytes) {
                Some(r) => FetchMemory::Got(r),
                None => FetchMemory::Short,
            };
        }
        let need = bytes.min(self.budget.max(pool));
        let wait = self.budget.reserve(pool, need);
        match self.until(wait, Instant::now() + MEMORY_WAIT).await {
            Some(Ok(mut r)) => {
                if bytes > need {
                    r.absorb(self.budget.reserve_forced(pool, bytes - need));
                }
                FetchMemory::Got(r)
            }
            Some(Err(_)) | None => FetchMemory::TimedOut,
        }
    }

    /// Whether `offset` is at or above the partition's log start.
    fn in_log(&self, key: &PartitionKey, offset: i64) -> bool {
        self.parts
            .borrow()
            .get(key)
            .is_some_and(|p| offset >= p.log_start_offset)
    }

    /// Reads one entry back from the WAL and checks it is the one indexed.
    /// An entry the segment collector copied forward after the read was
    /// planned is read where it is now, if it still holds `bytes` (when
    /// given) of batches; otherwise `OffsetOutOfRange`.
    pub(crate) async fn read_stored(
        &self,
        key: PartitionKey,
        position: Position,
        base_offset: i64,
        bytes: Option<u32>,
    ) -> Result<Bytes, ShardError> {
        self.counters.borrow_mut().fetch_wal_reads += 1;
        let e = match self.wal.read(position).await {
            Ok(e) => e,
            Err(sluice_wal::WalError::OutOfRange { .. }) => {
                // The segment was removed after the read was planned: the
                // entry expired, or the segment collector copied it forward
                // (then it is read where it is now).
                let moved = self
                    .parts
                    .borrow()
                    .get(&key)
                    .and_then(|p| {
                        let i = p.locate(base_offset);
                        let b = p.batches.get(i).filter(|b| {
                            b.base_offset == base_offset && bytes.map_or(true, |n| n == b.bytes)
                        })?;
                        b.position
                    })
                    .filter(|now| *now != position);
                let Some(now) = moved else {
                    return Err(ShardError::OffsetOutOfRange);
                };
                self.wal.read(now).await.map_err(|e| match e {
                    sluice_wal::WalError::OutOfRange { .. } => ShardError::OffsetOutOfRange,
                    e => ShardError::Storage(e.to_string()),
                })?
            }
            Err(e) => return Err(ShardError::Storage(e.to_string())),
        };
        let crate::compact::Stored {
            header, records, ..
        } = crate::compact::decode_stored(e.kind, &e.payload).map_err(ShardError::Storage)?;
        if header.key != key || header.base_offset != base_offset {
            return Err(ShardError::Storage(format!(
                "WAL position {} holds offset {} of another partition, expected {base_offset}",
                position.0, header.base_offset
            )));
        }
        trace!(
            shard = self.id(),
            partition = key.partition,
            base_offset,
            "fetch read from the WAL"
        );
        Ok(records)
    }
}

/// What `fetch_memory` found.
enum FetchMemory {
    Got(Reservation),
    /// Not free now (a later batch): the response stops here.
    Short,
    /// The first batch's wait ran out: the response is empty, throttled.
    TimedOut,
}

/// Adds `r` to the response's reservation.
fn hold(held: &mut Option<Reservation>, r: Option<Reservation>) {
    match (held.as_mut(), r) {
        (Some(h), Some(r)) => h.absorb(r),
        (None, r) => *held = r,
        (Some(_), None) => {}
    }
}

/// How a fetch reads a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    /// A consumer, read_uncommitted: below the HW.
    Uncommitted,
    /// A consumer, read_committed: below the LSO, with the aborted
    /// transactions.
    Committed,
    /// A follower: below the durable log end.
    Replica,
}

/// The whole batches of stored `records` whose base offset is below `end`.
fn below(records: Bytes, end: i64) -> Bytes {
    let mut len = 0usize;
    for b in batch::batches(&records) {
        if batch::base_offset(b) >= end {
            break;
        }
        len += b.len();
    }
    if len == records.len() {
        records
    } else {
        records.slice(..len)
    }
}

/// Keeps the aborted transactions that start at or below the last offset
/// the answer returns (none without records): `max_bytes` may have trimmed
/// the records planned, or memory stopped them.
fn trim_aborted(r: &mut FetchPartitionResult) {
    if r.aborted.is_empty() {
        return;
    }
    match r
        .records
        .last()
        .and_then(|b| crate::compact::last_batch_offset(b))
    {
        Some(last) => r.aborted.retain(|(_, first)| *first <= last),
        None => r.aborted.clear(),
    }
}

fn source_bytes(s: &Source) -> u64 {
    match s {
        Source::Cached(b) => b.len() as u64,
        Source::Wal { bytes, .. } => u64::from(*bytes),
    }
}

/// Plans one partition: entries from the one holding `fetch_offset`, below
/// the high watermark (a replica fetch: below the durable log end;
/// read_committed: whose base offset is below the LSO), within
/// `partition_max_bytes` and `left`. Only the leader serves fetches, at the
/// requester's leader epoch when it gives one.
fn plan_partition(
    parts: &HashMap<PartitionKey, Partition>,
    fp: &FetchPartition,
    response_empty: bool,
    left: u64,
    read: Read,
) -> PartPlan {
    let failed = |e| PartPlan {
        key: None,
        result: FetchPartitionResult::failed(e),
        sources: Vec::new(),
        cut: None,
    };
    let Some((key, p)) = Engine::key_of(&fp.topic, fp.partition)
        .ok()
        .and_then(|k| parts.get(&k).map(|p| (k, p)))
    else {
        return failed(ShardError::UnknownTopicOrPartition);
    };
    if !p.is_leader {
        return failed(ShardError::NotLeader);
    }
    match fp.current_leader_epoch {
        e if e < 0 || e == p.leader_epoch => {}
        e if e < p.leader_epoch => {
            return failed(ShardError::FencedLeaderEpoch {
                current: p.leader_epoch,
                got: e,
            })
        }
        e => {
            return failed(ShardError::UnknownLeaderEpoch {
                current: p.leader_epoch,
                got: e,
            })
        }
    }
    let lso = p.last_stable_offset();
    let mut result = FetchPartitionResult {
        error: None,
        high_watermark: p.high_watermark,
        last_stable_offset: lso,
        log_start_offset: p.log_start_offset,
        records: Vec::new(),
        aborted: Vec::new(),
        throttled: false,
    };
    // Kafka's rule: out of range below the log start or beyond the log end;
    // offsets between the high watermark and the log end just see nothing yet.
    if fp.fetch_offset < p.log_start_offset || fp.fetch_offset > p.next_offset {
        result.error = Some(ShardError::OffsetOutOfRange);
        return PartPlan {
            key: None,
            result,
            sources: Vec::new(),
            cut: None,
        };
    }
    let limit = u64::from(fp.partition_max_bytes).min(left);
    let mut sources = Vec::new();
    let mut bytes = 0u64;
    let readable = match read {
        Read::Replica => p.durable_all(),
        Read::Uncommitted => p.durable(),
        Read::Committed => {
            let durable = p.durable();
            let below_lso = durable.partition_point(|b| b.base_offset < lso);
            &durable[..below_lso]
        }
    };
    let start = if read == Read::Committed && fp.fetch_offset >= lso {
        // Nothing stable there yet (the entry holding it may start below
        // the LSO, but what it holds from the fetch offset on is not).
        readable.len()
    } else {
        p.locate(fp.fetch_offset).min(readable.len())
    };
    let mut last_offset = None;
    for b in &readable[start..] {
        let size = u64::from(b.bytes);
        let first_of_response = response_empty && bytes == 0;
        if bytes + size > limit && !first_of_response {
            break;
        }
        bytes += size;
        last_offset = Some(b.last_offset);
        sources.push(match (&b.cached, b.position) {
            (Some(c), _) => Source::Cached(c.clone()),
            (None, Some(position)) => Source::Wal {
                position,
                base_offset: b.base_offset,
                bytes: b.bytes,
            },
            (None, None) => unreachable!("durable entries have a position (Partition::check)"),
        });
    }
    let mut cut = None;
    if let (Read::Committed, Some(last)) = (read, last_offset) {
        if last >= lso {
            cut = Some(lso);
        }
        if let Some(t) = p.txns.as_deref() {
            result.aborted = t.collect_aborted(fp.fetch_offset, last.min(lso - 1));
        }
    }
    PartPlan {
        key: Some(key),
        result,
        sources,
        cut,
    }
}

/// Keeps whole batches in request order while the response stays within
/// `max_bytes`; the first batch is always kept.
fn trim_to_max_bytes(results: &mut [FetchPartitionResult], max_bytes: u32) {
    let (mut total, mut full) = (0u64, false);
    for r in results.iter_mut() {
        let mut keep = 0;
        for b in &r.records {
            let size = b.len() as u64;
            if full || (total > 0 && total + size > u64::from(max_bytes)) {
                full = true;
                break;
            }
            total += size;
            keep += 1;
        }
        r.records.truncate(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(sizes: &[usize]) -> FetchPartitionResult {
        let mut r = FetchPartitionResult::failed(ShardError::Timeout);
        r.error = None;
        r.records = sizes.iter().map(|&n| Bytes::from(vec![0u8; n])).collect();
        r
    }

    fn topic() -> std::sync::Arc<sluice_raft::TopicMeta> {
        std::sync::Arc::new(sluice_raft::TopicMeta {
            name: "t".into(),
            id: [3; 16],
            partitions: vec![sluice_raft::PartitionMeta {
                shard: 0,
                leader: 1,
                leader_epoch: 0,
                replicas: vec![1],
                isr: vec![1],
            }],
            configs: Default::default(),
            created_ms: 0,
        })
    }

    fn plan(
        parts: &HashMap<PartitionKey, Partition>,
        offset: i64,
        max: u32,
        first: bool,
    ) -> PartPlan {
        let fp = FetchPartition {
            topic: topic(),
            partition: 0,
            fetch_offset: offset,
            partition_max_bytes: max,
            current_leader_epoch: -1,
        };
        plan_partition(parts, &fp, first, u64::MAX, Read::Uncommitted)
    }

    #[test]
    fn plan_serves_durable_entries_only_and_checks_range() {
        let key = PartitionKey {
            topic_id: [3; 16],
            partition: 0,
        };
        let mut p = Partition::new(key);
        let a = p.assign(2, 0, Bytes::from(vec![1u8; 100]));
        p.assign(3, 0, Bytes::from(vec![2u8; 100]));
        p.assign(1, 0, Bytes::from(vec![3u8; 100]));
        p.mark_durable(a, Position(0));
        let mut parts = HashMap::new();
        parts.insert(key, p);
        let r = plan(&parts, 0, 1000, true);
        assert_eq!((r.result.high_watermark, r.sources.len()), (2, 1));
        let r = plan(&parts, 4, 1000, true);
        assert!(
            r.result.error.is_none() && r.sources.is_empty(),
            "between hw and log end: nothing yet"
        );
        assert_eq!(
            plan(&parts, 7, 1000, true).result.error,
            Some(ShardError::OffsetOutOfRange)
        );
        parts
            .get_mut(&key)
            .expect("p")
            .mark_durable(2, Position(10));
        parts
            .get_mut(&key)
            .expect("p")
            .mark_durable(5, Position(20));
        assert_eq!(
            plan(&parts, 3, 250, true).sources.len(),
            2,
            "entry holding offset 3 onwards, within 250 bytes"
        );
        assert_eq!(
            plan(&parts, 0, 50, true).sources.len(),
            1,
            "first batch of the response even if larger"
        );
        assert_eq!(plan(&parts, 0, 50, false).sources.len(), 0);
    }

    fn plan_read(parts: &HashMap<PartitionKey, Partition>, offset: i64, read: Read) -> PartPlan {
        let fp = FetchPartition {
            topic: topic(),
            partition: 0,
            fetch_offset: offset,
            partition_max_bytes: 1 << 20,
            current_leader_epoch: -1,
        };
        plan_partition(parts, &fp, true, u64::MAX, read)
    }

    /// One stored entry: batches of `(base offset, producer id or -1,
    /// transactional)`, one record each.
    fn entry(batches: &[(i64, i64, bool)]) -> Bytes {
        use crate::batch::testing::{batch, transactional, with_producer};
        let mut out = Vec::new();
        for &(base, pid, txn) in batches {
            let mut b = batch(1, 0, b"v");
            if pid >= 0 {
                b = with_producer(b, pid, 0, 0);
            }
            if txn {
                b = transactional(b);
            }
            crate::batch::patch(&mut b, base, None, 0);
            out.extend(b);
        }
        Bytes::from(out)
    }

    #[test]
    fn read_committed_plans_below_the_last_stable_offset_with_the_aborted() {
        let key = PartitionKey {
            topic_id: [3; 16],
            partition: 0,
        };
        let mut p = Partition::new(key);
        // 0..=1 plain; 2..=3 producer 7's transaction; 4 producer 8's; 5
        // producer 7's abort marker; 6 plain.
        for (n, b) in [
            (2, entry(&[(0, -1, false), (1, -1, false)])),
            (2, entry(&[(2, 7, true), (3, 7, true)])),
            (1, entry(&[(4, 8, true)])),
            (1, entry(&[(5, 7, true)])),
            (1, entry(&[(6, -1, false)])),
        ] {
            let base = p.assign(n, 0, b);
            p.mark_durable(base, Position(base as u64));
        }
        p.begin_txn(7, 2);
        p.begin_txn(8, 4);
        assert_eq!(p.end_txn(7, 0, 5, false, 0), Some(2));
        assert_eq!((p.high_watermark, p.last_stable_offset()), (7, 4));
        let mut parts = HashMap::new();
        parts.insert(key, p);

        let r = plan_read(&parts, 0, Read::Committed);
        assert_eq!((r.sources.len(), r.cut), (2, None), "entries below 4");
        assert_eq!(r.result.last_stable_offset, 4);
        assert_eq!(r.result.aborted, vec![(7, 2)]);
        let r = plan_read(&parts, 0, Read::Uncommitted);
        assert_eq!(r.sources.len(), 5);
        assert_eq!(r.result.last_stable_offset, 4, "the real LSO");
        assert!(r.result.aborted.is_empty());
        let r = plan_read(&parts, 4, Read::Committed);
        assert!(r.sources.is_empty() && r.result.aborted.is_empty());
        let r = plan_read(&parts, 5, Read::Committed);
        assert!(r.sources.is_empty(), "above the LSO: nothing yet");
        assert_eq!(r.result.error, None);

        // Producer 8 commits at 7: the LSO moves once the marker is durable.
        let p = parts.get_mut(&key).expect("p");
        let base = p.assign(1, 0, entry(&[(7, 8, true)]));
        p.end_txn(8, 0, base, true, 0);
        assert_eq!(p.last_stable_offset(), 4, "marker not below the HW");
        p.mark_durable(base, Position(7));
        assert_eq!(p.last_stable_offset(), 8);
        p.settle_txns();
        p.check().expect("invariants");
        let r = plan_read(&parts, 0, Read::Committed);
        assert_eq!(r.sources.len(), 6);
        assert_eq!(r.result.aborted, vec![(7, 2)]);
        let r = plan_read(&parts, 6, Read::Committed);
        assert!(r.result.aborted.is_empty(), "the abort marker lies below 6");

        // A follower's entry bundling batches across the LSO is cut there.
        let p = parts.get_mut(&key).expect("p");
        let both = entry(&[(8, -1, false), (9, 9, true)]);
        p.push_pending(8, 9, 0, both.clone());
        p.begin_txn(9, 9);
        p.mark_durable(8, Position(8));
        assert_eq!((p.high_watermark, p.last_stable_offset()), (10, 9));
        let r = plan_read(&parts, 8, Read::Committed);
        assert_eq!((r.sources.len(), r.cut), (1, Some(9)));
        let r = plan_read(&parts, 9, Read::Committed);
        assert!(
            r.sources.is_empty(),
            "the entry holds 9, but 9 is not stable"
        );
        let kept = below(both.clone(), 9);
        assert_eq!(kept.len() * 2, both.len(), "the first of two equal batches");
        assert_eq!(crate::compact::last_batch_offset(&kept), Some(8));
        assert_eq!(below(both.clone(), 10).len(), both.len());
    }

    #[test]
    fn aborted_transactions_follow_the_records_returned() {
        let mut r = result(&[]);
        r.records = vec![entry(&[(10, 7, true)]), entry(&[(11, 8, true)])];
        r.aborted = vec![(7, 10), (8, 11), (9, 12)];
        trim_aborted(&mut r);
        assert_eq!(r.aborted, vec![(7, 10), (8, 11)]);
        r.records.truncate(1);
        trim_aborted(&mut r);
        assert_eq!(r.aborted, vec![(7, 10)]);
        r.records.clear();
        trim_aborted(&mut r);
        assert!(r.aborted.is_empty(), "no records, no aborted transactions");
    }

    #[test]
    fn trim_keeps_first_batch_and_order() {
        let mut rs = vec![result(&[]), result(&[500, 10]), result(&[5])];
        trim_to_max_bytes(&mut rs, 100);
        assert_eq!(rs[1].records.len(), 1, "first batch kept even when larger");
        assert!(
            rs[2].records.is_empty(),
            "nothing after the response is full"
        );
        let mut rs = vec![result(&[40, 40]), result(&[20, 1])];
        trim_to_max_bytes(&mut rs, 100);
        assert_eq!((rs[0].records.len(), rs[1].records.len()), (2, 1));
    }
}
