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
//! Across shards: the origin sends one sub-fetch per owner shard; each owner
//! waits up to `max_wait_ms` for its partitions to reach `min_bytes`. As soon
//! as the answers received reach `min_bytes` (or carry an error) the origin
//! cancels the other owners' waits (`CancelFetch`), merges the answers in
//! request order and trims them to `max_bytes`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::stream::{FuturesUnordered, StreamExt};
use sluice_wal::Position;
use tracing::trace;

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
        let wait_ms = u64::from(sub.max_wait_ms) + self.cfg.remote_reply_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let (tx, rx) = oneshot::channel();
        let results = match self
            .call(
                owner,
                ShardMsg::Fetch {
                    key,
                    req: sub,
                    reply: tx,
                },
                rx,
                deadline,
            )
            .await
        {
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
    async fn cancel_fetch(&self, key: FetchKey, local_slot: &Rc<WaitSlot>, owners: &BTreeSet<u32>) {
        for &owner in owners {
            if owner == self.id() {
                local_slot.cancel();
            } else if let Some(peers) = &self.peers {
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
        for fp in &req.partitions {
            let left = u64::from(req.max_bytes).saturating_sub(bytes);
            let replica = req.replica_id.is_some();
            let plan = plan_partition(&parts, fp, bytes == 0, left, replica);
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
                        result.records.push(b);
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
                    Ok(b) => result.records.push(b),
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

fn source_bytes(s: &Source) -> u64 {
    match s {
        Source::Cached(b) => b.len() as u64,
        Source::Wal { bytes, .. } => u64::from(*bytes),
    }
}

/// Plans one partition: entries from the one holding `fetch_offset`, below
/// the high watermark (a `replica` fetch: below the durable log end), within
/// `partition_max_bytes` and `left`. Only the leader serves fetches, at the
/// requester's leader epoch when it gives one.
fn plan_partition(
    parts: &HashMap<PartitionKey, Partition>,
    fp: &FetchPartition,
    response_empty: bool,
    left: u64,
    replica: bool,
) -> PartPlan {
    let failed = |e| PartPlan {
        key: None,
        result: FetchPartitionResult::failed(e),
        sources: Vec::new(),
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
    let mut result = FetchPartitionResult {
        error: None,
        high_watermark: p.high_watermark,
        last_stable_offset: p.high_watermark,
        log_start_offset: p.log_start_offset,
        records: Vec::new(),
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
        };
    }
    let limit = u64::from(fp.partition_max_bytes).min(left);
    let mut sources = Vec::new();
    let mut bytes = 0u64;
    let durable = if replica {
        p.durable_all()
    } else {
        p.durable()
    };
    let start = p.locate(fp.fetch_offset).min(durable.len());
    for b in &durable[start..] {
        let size = u64::from(b.bytes);
        let first_of_response = response_empty && bytes == 0;
        if bytes + size > limit && !first_of_response {
            break;
        }
        bytes += size;
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
    PartPlan {
        key: Some(key),
        result,
        sources,
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
        plan_partition(parts, &fp, first, u64::MAX, false)
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
