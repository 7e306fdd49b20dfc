//! Produce: route to the owning shard; there, validate the batches, assign
//! offsets and queue the WAL append in ONE synchronous section (so WAL order
//! is offset order), then wait for durability in a short task that advances
//! the high watermark and moves the batches into the tail cache.
//!
//! Memory: the entry is charged to `ProduceInflight` from validation until
//! durability, then to `TailCache` (evicting older entries) or dropped.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::channel::oneshot;
use sluice_raft::TopicMeta;
use sluice_wal::{Append, Position};
use tracing::trace;

use crate::batch;
use crate::budget::{Pool, Reservation};
use crate::engine::{Engine, INDEX_ENTRY_BYTES};
use crate::entry::{self, EntryHeader, PartitionKey, ENTRY_HEADER_BYTES, KIND_BATCHES};
use crate::mesh::ShardMsg;
use crate::tail::TailItem;
use crate::{ProducePartition, ProducePartitionResult, ShardError};

/// What a topic's configs say about its batches.
struct TopicLimits {
    max_message_bytes: u64,
    log_append_time: bool,
}

impl TopicLimits {
    fn of(topic: &TopicMeta) -> TopicLimits {
        let max_message_bytes = topic
            .configs
            .get("max.message.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(batch::MAX_MESSAGE_BYTES_DEFAULT);
        let log_append_time = topic
            .configs
            .get("message.timestamp.type")
            .is_some_and(|v| v == "LogAppendTime");
        TopicLimits {
            max_message_bytes,
            log_append_time,
        }
    }
}

/// An entry whose offsets are assigned and whose append is queued.
pub(crate) struct PendingProduce {
    key: PartitionKey,
    base_offset: i64,
    append: Append,
    inflight: Reservation,
    log_append_time_ms: i64,
    log_start_offset: i64,
}

impl PendingProduce {
    fn result(&self) -> ProducePartitionResult {
        ProducePartitionResult {
            error: None,
            base_offset: self.base_offset,
            log_append_time_ms: self.log_append_time_ms,
            log_start_offset: self.log_start_offset,
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

impl Engine {
    pub async fn produce(self: &Rc<Self>, req: ProducePartition) -> ProducePartitionResult {
        let started = Instant::now();
        let result = match self.owner_of(&req.topic, req.partition) {
            Err(e) => ProducePartitionResult::failed(e),
            Ok(owner) if owner == self.id() => {
                let (tx, rx) = oneshot::channel();
                self.produce_owner(req, tx);
                rx.await
                    .unwrap_or_else(|_| ProducePartitionResult::failed(ShardError::ShuttingDown))
            }
            Ok(owner) => {
                let (tx, rx) = oneshot::channel();
                let deadline =
                    Instant::now() + Duration::from_millis(self.cfg.remote_reply_timeout_ms);
                let msg = ShardMsg::Produce { req, reply: tx };
                self.call(owner, msg, rx, deadline)
                    .await
                    .unwrap_or_else(ProducePartitionResult::failed)
            }
        };
        let us = started.elapsed().as_micros() as u64;
        self.produce_latency_us
            .borrow_mut()
            .saturating_record(us.max(1));
        result
    }

    /// Produce on the owning shard; the answer goes to `reply` (at once for
    /// acks=0, after durability otherwise).
    pub fn produce_owner(
        self: &Rc<Self>,
        req: ProducePartition,
        reply: oneshot::Sender<ProducePartitionResult>,
    ) {
        let acks = req.acks;
        let pending = match self.begin_produce(&req) {
            Ok(p) => p,
            Err(e) => {
                let mut c = self.counters.borrow_mut();
                c.produce_errors += 1;
                c.produce_busy += u64::from(e == ShardError::Busy);
                trace!(shard = self.id(), error = %e, "produce refused");
                let _ = reply.send(ProducePartitionResult::failed(e));
                return;
            }
        };
        let reply = if acks == 0 {
            let _ = reply.send(pending.result());
            None
        } else {
            Some(reply)
        };
        let engine = self.clone();
        self.produce_tasks.set(self.produce_tasks.get() + 1);
        glommio::spawn_local(async move {
            let result = engine.finish_produce(pending).await;
            engine.produce_tasks.set(engine.produce_tasks.get() - 1);
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        })
        .detach();
    }

    /// Validates, assigns offsets and queues the append: one synchronous
    /// section, no await.
    fn begin_produce(&self, req: &ProducePartition) -> Result<PendingProduce, ShardError> {
        if self.closing.get() {
            return Err(ShardError::ShuttingDown);
        }
        let key = Engine::key_of(&req.topic, req.partition)?;
        let limits = TopicLimits::of(&req.topic);
        let summary = batch::validate(&req.records, limits.max_message_bytes)?;
        let payload_bytes = (ENTRY_HEADER_BYTES + req.records.len()) as u64;
        let entry_max = u64::from(self.wal.config().entry_bytes_max);
        if payload_bytes > entry_max {
            let max = entry_max - ENTRY_HEADER_BYTES as u64;
            return Err(ShardError::MessageTooLarge {
                bytes: req.records.len() as u64,
                max,
            });
        }
        if !self.budget.fits(Pool::PartitionState, INDEX_ENTRY_BYTES) {
            return Err(ShardError::Busy);
        }
        let inflight = self
            .budget
            .try_reserve(Pool::ProduceInflight, payload_bytes)
            .ok_or(ShardError::Busy)?;
        let log_append_time = limits.log_append_time.then(now_ms);
        let (payload, base_offset, log_start_offset) = {
            let mut parts = self.parts.borrow_mut();
            let part = parts
                .get_mut(&key)
                .ok_or(ShardError::UnknownTopicOrPartition)?;
            let base_offset = part.next_offset;
            let header = EntryHeader {
                key,
                base_offset,
                last_offset: base_offset + summary.offsets - 1,
                max_timestamp: log_append_time.unwrap_or(summary.max_timestamp),
            };
            let mut buf = entry::encode(&header, &req.records);
            let last = batch::patch(&mut buf[ENTRY_HEADER_BYTES..], base_offset, log_append_time);
            assert_eq!(
                last, header.last_offset,
                "patched offsets match the validated count"
            );
            let payload = buf.freeze();
            let assigned = part.assign(
                summary.offsets,
                header.max_timestamp,
                payload.slice(ENTRY_HEADER_BYTES..),
            );
            assert_eq!(assigned, base_offset);
            self.budget.charge_forced(Pool::PartitionState, INDEX_ENTRY_BYTES);
            (payload, base_offset, part.log_start_offset)
        };
        let append = self.wal.append(KIND_BATCHES, payload);
        let mut c = self.counters.borrow_mut();
        c.produce_requests += 1;
        c.produce_bytes += req.records.len() as u64;
        c.produce_records_offsets += summary.offsets as u64;
        trace!(
            shard = self.id(),
            partition = key.partition,
            base_offset,
            offsets = summary.offsets,
            "produce queued"
        );
        Ok(PendingProduce {
            key,
            base_offset,
            append,
            inflight,
            log_append_time_ms: log_append_time.unwrap_or(-1),
            log_start_offset,
        })
    }

    /// Waits for durability, then publishes the entry (high watermark, tail
    /// cache, waiting fetches).
    async fn finish_produce(&self, pending: PendingProduce) -> ProducePartitionResult {
        let result = pending.result();
        let PendingProduce {
            key,
            base_offset,
            append,
            inflight,
            ..
        } = pending;
        match append.await {
            Ok(position) => {
                let bytes = inflight.bytes();
                drop(inflight);
                self.on_durable(key, base_offset, position, bytes);
                result
            }
            Err(e) => {
                drop(inflight);
                self.on_failed(key, base_offset);
                self.warn_rate_limited("WAL append", &e);
                self.counters.borrow_mut().produce_errors += 1;
                ProducePartitionResult::failed(ShardError::Storage(e.to_string()))
            }
        }
    }

    fn on_durable(&self, key: PartitionKey, base_offset: i64, position: Position, bytes: u64) {
        let moved = self
            .parts
            .borrow_mut()
            .get_mut(&key)
            .map(|p| p.mark_durable(base_offset, position));
        match moved {
            None => return, // Deleted meanwhile.
            Some(true) => self.waiters.notify(&key),
            Some(false) => {}
        }
        self.cache_tail(key, base_offset, bytes);
    }

    fn on_failed(&self, key: PartitionKey, base_offset: i64) {
        let moved = self.parts.borrow_mut().get_mut(&key).map(|p| {
            let before = p.batches.len();
            let moved = p.mark_failed(base_offset);
            let removed = (before - p.batches.len()) as u64;
            self.budget
                .discharge(Pool::PartitionState, removed * INDEX_ENTRY_BYTES);
            moved
        });
        if moved == Some(true) {
            self.waiters.notify(&key);
        }
    }

    /// Keeps the entry's batches in the tail cache, evicting the oldest
    /// entries while the pool is full.
    fn cache_tail(&self, key: PartitionKey, base_offset: i64, bytes: u64) {
        let pool = Pool::TailCache;
        if bytes > self.budget.max(pool) {
            self.uncache(&key, base_offset);
            return;
        }
        while !self.budget.fits(pool, bytes) {
            let Some(old) = self.tail.borrow_mut().pop_oldest() else {
                break;
            };
            self.uncache(&old.key, old.base_offset);
        }
        match self.budget.try_reserve(pool, bytes) {
            Some(reservation) => self.tail.borrow_mut().push(TailItem {
                key,
                base_offset,
                reservation,
            }),
            None => self.uncache(&key, base_offset),
        }
    }

    fn uncache(&self, key: &PartitionKey, base_offset: i64) {
        if let Some(b) = self
            .parts
            .borrow_mut()
            .get_mut(key)
            .and_then(|p| p.batch_mut(base_offset))
        {
            b.cached = None;
        }
    }
}
