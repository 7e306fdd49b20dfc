//! Produce: route to the owning shard; there, validate the batches, assign
//! offsets and queue the WAL append in ONE synchronous section (so WAL order
//! is offset order), then wait for durability in a short task that advances
//! the high watermark and moves the batches into the tail cache.
//!
//! Memory: the entry is charged to `ProduceInflight` from admission until
//! durability, then to `TailCache` (evicting older entries) or dropped.
//!
//! Admission: a produce that does not fit `ProduceInflight` (or finds
//! `PartitionState` full) waits in the shard's admissions queue, and once
//! one waits every later produce of the shard queues behind it, so produces
//! are admitted (offsets assigned) in the order `produce_owner` was called.
//! One task per shard (`run_admissions`) admits the head when memory frees.
//! A wait is bounded by `MEMORY_WAIT`; a head that runs out is answered
//! `ShardError::Busy` and so is every produce queued behind it for the same
//! partition (admitting one would put it ahead of its predecessor's retry).
//!
//! Transactions (Kafka's `LogValidator` and `ProducerAppendInfo` rules):
//! a request's batches are all transactional or all not; a transactional
//! batch needs a producer id, and a client's needs the request's
//! transactional id (else TRANSACTIONAL_ID_AUTHORIZATION_FAILED); a client
//! never writes control batches; a non-transactional batch of a producer
//! whose transaction is open here is INVALID_TXN_STATE. Once offsets are
//! assigned, in the same synchronous section, a transactional batch opens
//! its producer's transaction (unless open) and a marker
//! (`write_txn_marker`, a coordinator's control batch) closes it
//! (`partition::Partition::end_txn`); the partition's transaction state is
//! charged to `partition_state` as it changes. A marker queued in a
//! `__consumer_offsets` partition tells the group coordinator at once
//! (`on_offsets_txn_marker`), in the partition's order.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::channel::oneshot;
use sluice_raft::TopicMeta;
use sluice_wal::{Append, Position};
use tracing::{debug, trace};

use crate::batch;
use crate::budget::{Pool, Reservation, MEMORY_WAIT};
use crate::engine::{Engine, INDEX_ENTRY_BYTES};
use crate::entry::{self, EntryHeader, PartitionKey, ENTRY_HEADER_BYTES, KIND_BATCHES};
use crate::mesh::ShardMsg;
use crate::producer_state::{self, ProducerBatch, Verdict};
use crate::tail::TailItem;
use crate::waiters::WaitSlot;
use crate::{Origin, ProducePartition, ProducePartitionResult, ShardError, TxnMarker};

/// Produces waiting for memory on one shard at once; more are answered
/// `ShardError::Busy` at once.
pub const ADMISSIONS_MAX: usize = 4096;

/// A produce waiting for memory.
struct Admission {
    req: ProducePartition,
    reply: oneshot::Sender<ProducePartitionResult>,
    /// `ENTRY_HEADER_BYTES` + its records: its `ProduceInflight` charge.
    bytes: u64,
    deadline: Instant,
}

/// The shard's admissions queue: produces in `produce_owner` call order,
/// drained by `run_admissions`.
#[derive(Default)]
pub(crate) struct Admissions {
    queue: RefCell<VecDeque<Admission>>,
    /// Fired when the queue goes from empty to non-empty.
    wake: Rc<WaitSlot>,
    /// Produces that had to queue.
    pub waits: Cell<u64>,
    /// Produces answered Busy because their wait (or their predecessor's)
    /// ran out, or the queue was full.
    pub timeouts: Cell<u64>,
}

impl Admissions {
    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Drops every waiting produce (shutdown): their requesters see the
    /// reply channel closed.
    pub fn clear(&self) {
        let queued = std::mem::take(&mut *self.queue.borrow_mut());
        drop(queued);
    }
}

/// What a topic's configs say about its batches.
struct TopicLimits {
    max_message_bytes: u64,
    log_append_time: bool,
    /// `min.insync.replicas`, else the shard's default.
    min_insync: usize,
    /// `cleanup.policy` includes `compact`: every record needs a key.
    compacted: bool,
}

impl TopicLimits {
    fn of(topic: &TopicMeta, min_insync_default: u32) -> TopicLimits {
        let max_message_bytes = topic
            .configs
            .get("max.message.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(batch::MAX_MESSAGE_BYTES_DEFAULT);
        let log_append_time = topic
            .configs
            .get("message.timestamp.type")
            .is_some_and(|v| v == "LogAppendTime");
        let min_insync = topic
            .configs
            .get("min.insync.replicas")
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(min_insync_default)
            .max(1) as usize;
        TopicLimits {
            max_message_bytes,
            log_append_time,
            min_insync,
            compacted: crate::compact::CompactConfig::of(&topic.configs).is_some(),
        }
    }
}

/// What a request's batches are to the partition's transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxnWrite {
    /// No transactional batch.
    Plain,
    /// Transactional records of the request's producer.
    Data,
    /// One end-transaction marker (a coordinator's control batch).
    Marker {
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    },
}

/// Classifies validated `records` (module doc: the rules of Kafka's
/// `LogValidator`): every batch transactional or none; a transactional
/// batch has a producer id; a client's batch with a producer id has a
/// sequence; only a coordinator writes control batches, one marker alone.
fn txn_write(records: &[u8], origin: Origin) -> Result<TxnWrite, ShardError> {
    let invalid = |m: &str| Err(ShardError::InvalidRecord(m.into()));
    let mut kind: Option<TxnWrite> = None;
    let mut batches = 0usize;
    for b in batch::batches(records) {
        batches += 1;
        let h = batch::producer_fields(b);
        if batch::is_control(b) {
            if origin == Origin::Client {
                return invalid("clients may not write control batches");
            }
            let Some(m) = batch::end_txn(b) else {
                return invalid("a control batch that is no transaction marker");
            };
            if h.producer_id < 0 || batches > 1 || kind.is_some() {
                return invalid("a transaction marker goes alone, with a producer id");
            }
            kind = Some(TxnWrite::Marker {
                producer_id: h.producer_id,
                producer_epoch: h.producer_epoch,
                commit: m.commit,
            });
            continue;
        }
        if origin == Origin::Client && h.producer_id >= 0 && h.base_sequence < 0 {
            return invalid("a batch with a producer id needs a base sequence");
        }
        let this = if batch::is_transactional(b) {
            if h.producer_id < 0 {
                return invalid("a transactional batch needs a producer id");
            }
            TxnWrite::Data
        } else {
            TxnWrite::Plain
        };
        match kind {
            None => kind = Some(this),
            Some(k) if k == this => {}
            Some(_) => return invalid("batches of one request mix transactional and other ones"),
        }
    }
    Ok(kind.unwrap_or(TxnWrite::Plain))
}

/// An entry whose offsets are assigned and whose append is queued.
pub(crate) struct PendingProduce {
    key: PartitionKey,
    base_offset: i64,
    last_offset: i64,
    /// acks=-1 on a replicated partition: wait for the HW after durability,
    /// with this many in-sync replicas, until this deadline.
    isr_wait: Option<(usize, Instant)>,
    append: Append,
    inflight: Reservation,
    log_append_time_ms: i64,
    log_start_offset: i64,
    /// The idempotent producer that wrote it, if any.
    producer_id: Option<i64>,
}

/// What `begin_produce` did with a request.
pub(crate) enum Begun {
    Queued(PendingProduce),
    /// A retry of an entry already written (or being written) at these
    /// offsets: nothing is appended; the answer is the original's.
    Duplicate {
        key: PartitionKey,
        base_offset: i64,
        last_offset: i64,
    },
}

/// What `on_durable` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durable {
    Kept,
    /// The partition was deleted meanwhile.
    Gone,
    /// The partition's log was cut below the entry meanwhile.
    Truncated,
}

/// A started produce (`Engine::produce_start`): its order is fixed, its
/// answer is awaited with `wait`. Dropping it does not undo the produce.
pub struct ProduceTicket {
    engine: Rc<Engine>,
    started: Instant,
    wait: TicketWait,
}

enum TicketWait {
    Done(ProducePartitionResult),
    /// From `produce_owner`, here or on another shard (then by `deadline`).
    Reply {
        rx: oneshot::Receiver<ProducePartitionResult>,
        deadline: Option<Instant>,
    },
}

impl ProduceTicket {
    /// The partition's answer: after durability for acks=1/-1.
    pub async fn wait(self) -> ProducePartitionResult {
        let engine = self.engine;
        let result = match self.wait {
            TicketWait::Done(result) => result,
            TicketWait::Reply { rx, deadline: None } => rx
                .await
                .unwrap_or_else(|_| ProducePartitionResult::failed(ShardError::ShuttingDown)),
            TicketWait::Reply {
                rx,
                deadline: Some(deadline),
            } => match engine.until(rx, deadline).await {
                Some(Ok(result)) => result,
                Some(Err(_)) => ProducePartitionResult::failed(ShardError::ShuttingDown),
                None => {
                    engine.counters.borrow_mut().remote_timeouts += 1;
                    ProducePartitionResult::failed(ShardError::Timeout)
                }
            },
        };
        let us = self.started.elapsed().as_micros() as u64;
        engine
            .produce_latency_us
            .borrow_mut()
            .saturating_record(us.max(1));
        result
    }
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
        self.produce_start(req).await.wait().await
    }

    /// Writes transaction marker `m` to `partition` of `topic` (which this
    /// node must lead, else `NotLeader`): one control batch, stamped now,
    /// through the ordinary produce path (routed to the owner shard, acks=-1,
    /// origin `Coordinator`). Resolves with the marker's offset once the
    /// in-sync replicas have it. A marker whose producer epoch is older
    /// than the partition knows is `InvalidProducerEpoch`.
    pub async fn write_txn_marker(
        self: &Rc<Self>,
        topic: Arc<TopicMeta>,
        partition: i32,
        m: TxnMarker,
    ) -> Result<i64, ShardError> {
        let end = batch::EndTxn {
            commit: m.commit,
            coordinator_epoch: m.coordinator_epoch,
        };
        let records = batch::control_batch(m.producer_id, m.producer_epoch, end, now_ms());
        let result = self
            .produce(ProducePartition {
                topic,
                partition,
                records: records.into(),
                acks: -1,
                timeout_ms: crate::txn::TXN_WRITE_TIMEOUT_MS,
                origin: Origin::Coordinator,
                transactional_id: None,
            })
            .await;
        match result.error {
            None => Ok(result.base_offset),
            Some(e) => Err(e),
        }
    }

    /// Fixes the produce's place in its partition's order and returns the
    /// wait for its answer. On this shard, `produce_owner` is called before
    /// returning; for another shard, the message is in the owner's inbox
    /// (FIFO, served in order by `produce_owner`) before returning, waiting
    /// while that inbox is full. So produces started one after another
    /// reach each partition in that order.
    pub async fn produce_start(self: &Rc<Self>, req: ProducePartition) -> ProduceTicket {
        let started = Instant::now();
        let wait = match self.owner_of(&req.topic, req.partition) {
            Err(e) => TicketWait::Done(ProducePartitionResult::failed(e)),
            Ok(owner) if owner == self.id() => {
                let (tx, rx) = oneshot::channel();
                self.produce_owner(req, tx);
                TicketWait::Reply { rx, deadline: None }
            }
            Ok(owner) => self.produce_send(owner, req).await,
        };
        ProduceTicket {
            engine: self.clone(),
            started,
            wait,
        }
    }

    /// Puts a produce into `owner`'s inbox; the answer is due by the
    /// remote reply deadline, which also bounds the wait for inbox room.
    async fn produce_send(&self, owner: u32, req: ProducePartition) -> TicketWait {
        let Some(peers) = &self.peers else {
            return TicketWait::Done(ProducePartitionResult::failed(ShardError::NotLeader));
        };
        let mut wait_ms = self.cfg.remote_reply_timeout_ms;
        if req.acks == -1 {
            wait_ms += u64::from(req.timeout_ms);
        }
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let (tx, rx) = oneshot::channel();
        self.counters.borrow_mut().remote_sent += 1;
        let msg = ShardMsg::Produce { req, reply: tx };
        match self.until(peers.send(owner, msg), deadline).await {
            Some(Ok(())) => TicketWait::Reply {
                rx,
                deadline: Some(deadline),
            },
            Some(Err(e)) => TicketWait::Done(ProducePartitionResult::failed(e)),
            None => {
                self.counters.borrow_mut().remote_timeouts += 1;
                TicketWait::Done(ProducePartitionResult::failed(ShardError::Timeout))
            }
        }
    }

    /// Produce on the owning shard; the answer goes to `reply` (at once for
    /// acks=0, after durability otherwise). The order of calls is the order
    /// of admission: a produce that must wait for memory is queued, and later
    /// calls queue behind it.
    pub fn produce_owner(
        self: &Rc<Self>,
        req: ProducePartition,
        reply: oneshot::Sender<ProducePartitionResult>,
    ) {
        if self.closing.get() {
            let _ = reply.send(ProducePartitionResult::failed(ShardError::ShuttingDown));
            return;
        }
        let bytes = (ENTRY_HEADER_BYTES + req.records.len()) as u64;
        let pool_max = self.budget.max(Pool::ProduceInflight);
        if bytes > pool_max {
            let e = ShardError::MessageTooLarge {
                bytes: req.records.len() as u64,
                max: pool_max.saturating_sub(ENTRY_HEADER_BYTES as u64),
            };
            return self.refuse_produce(reply, e);
        }
        if self.admissions.len() == 0 {
            if let Some(inflight) = self.admit_now(bytes) {
                return self.start_produce(req, reply, inflight);
            }
        }
        let mut queue = self.admissions.queue.borrow_mut();
        if queue.len() >= ADMISSIONS_MAX {
            drop(queue);
            self.admissions
                .timeouts
                .set(self.admissions.timeouts.get() + 1);
            return self.refuse_produce(reply, ShardError::Busy);
        }
        trace!(shard = self.id(), bytes, "produce waits for memory");
        self.admissions.waits.set(self.admissions.waits.get() + 1);
        queue.push_back(Admission {
            req,
            reply,
            bytes,
            deadline: Instant::now() + MEMORY_WAIT,
        });
        if queue.len() == 1 {
            self.admissions.wake.fire();
        }
    }

    /// The produce's memory, if it fits now: its `ProduceInflight` bytes and
    /// room for one index entry in `PartitionState`.
    fn admit_now(self: &Rc<Self>, bytes: u64) -> Option<Reservation> {
        // Checked first so that a produce about to wait is not also counted
        // as refused by `try_reserve`.
        let fits = self.budget.fits(Pool::PartitionState, INDEX_ENTRY_BYTES)
            && self.budget.fits(Pool::ProduceInflight, bytes);
        fits.then(|| self.budget.try_reserve(Pool::ProduceInflight, bytes))
            .flatten()
    }

    fn refuse_produce(&self, reply: oneshot::Sender<ProducePartitionResult>, e: ShardError) {
        let mut c = self.counters.borrow_mut();
        c.produce_errors += 1;
        c.produce_busy += u64::from(e == ShardError::Busy);
        trace!(shard = self.id(), error = %e, "produce refused");
        let _ = reply.send(ProducePartitionResult::failed(e));
    }

    /// The shard's one admission task: admits the head of the admissions
    /// queue once its memory is reserved, or fails it (and the produces
    /// queued behind it for the same partition) when its wait runs out.
    pub(crate) async fn run_admissions(self: Rc<Self>) {
        loop {
            let head = self
                .admissions
                .queue
                .borrow()
                .front()
                .map(|a| (a.bytes, a.deadline));
            let Some((bytes, deadline)) = head else {
                self.admissions.wake.wait().await;
                continue;
            };
            let budget = self.budget.clone();
            let admit = async move {
                let inflight = budget.reserve(Pool::ProduceInflight, bytes).await;
                // Room for the index entry; charged (forced) when admitted.
                let state = budget
                    .reserve(Pool::PartitionState, INDEX_ENTRY_BYTES)
                    .await;
                inflight.ok().filter(|_| state.is_ok())
            };
            let admitted = if Instant::now() < deadline {
                self.until(admit, deadline).await.flatten()
            } else {
                None
            };
            let Some(a) = self.admissions.queue.borrow_mut().pop_front() else {
                continue; // Cleared by shutdown.
            };
            match admitted {
                Some(inflight) => self.start_produce(a.req, a.reply, inflight),
                None => self.expire_admission(a),
            }
        }
    }

    /// Answers `a` Busy, and every queued produce to the same partition.
    fn expire_admission(&self, a: Admission) {
        let key = Engine::key_of(&a.req.topic, a.req.partition).ok();
        let same = |b: &Admission| Engine::key_of(&b.req.topic, b.req.partition).ok() == key;
        let mut failed = vec![a];
        {
            let mut queue = self.admissions.queue.borrow_mut();
            let mut kept = VecDeque::with_capacity(queue.len());
            for b in queue.drain(..) {
                if same(&b) {
                    failed.push(b);
                } else {
                    kept.push_back(b);
                }
            }
            *queue = kept;
        }
        debug!(
            shard = self.id(),
            produces = failed.len(),
            "produce memory wait ran out"
        );
        self.admissions
            .timeouts
            .set(self.admissions.timeouts.get() + failed.len() as u64);
        for b in failed {
            self.refuse_produce(b.reply, ShardError::Busy);
        }
    }

    /// Runs an admitted produce: offsets assigned and the append queued now.
    fn start_produce(
        self: &Rc<Self>,
        req: ProducePartition,
        reply: oneshot::Sender<ProducePartitionResult>,
        inflight: Reservation,
    ) {
        let acks = req.acks;
        let started = Instant::now();
        let pending = match self.begin_produce(&req, inflight, started) {
            Ok(Begun::Queued(p)) => p,
            Ok(Begun::Duplicate {
                key,
                base_offset,
                last_offset,
            }) => {
                self.counters.borrow_mut().produce_duplicates += 1;
                self.answer_duplicate(key, base_offset, last_offset, reply);
                return;
            }
            Err(e) => return self.refuse_produce(reply, e),
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
            let isr_wait = pending.isr_wait;
            let (key, base_offset, last_offset) =
                (pending.key, pending.base_offset, pending.last_offset);
            let mut result = engine.finish_produce(pending).await;
            if let (Some((min_insync, deadline)), None) = (isr_wait, &result.error) {
                engine.counters.borrow_mut().produce_isr_waits += 1;
                let replicated = engine
                    .await_replicated(key, base_offset, last_offset, min_insync, deadline)
                    .await;
                if let Err(e) = replicated {
                    engine.counters.borrow_mut().produce_errors += 1;
                    result = ProducePartitionResult::failed(e);
                }
            }
            engine.produce_tasks.set(engine.produce_tasks.get() - 1);
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        })
        .detach();
    }

    /// Validates, assigns offsets and queues the append: one synchronous
    /// section, no await.
    fn begin_produce(
        &self,
        req: &ProducePartition,
        inflight: Reservation,
        started: Instant,
    ) -> Result<Begun, ShardError> {
        if self.closing.get() {
            return Err(ShardError::ShuttingDown);
        }
        let key = Engine::key_of(&req.topic, req.partition)?;
        let limits = TopicLimits::of(&req.topic, self.cfg.min_insync_replicas);
        let summary = batch::validate(&req.records, limits.max_message_bytes)?;
        if limits.compacted {
            // Kafka refuses keyless records on a compacted topic; compressed
            // batches are decompressed to look (only for such topics).
            crate::compact::check_keys(&req.records)?;
        }
        let txn = txn_write(&req.records, req.origin)?;
        if txn == TxnWrite::Data && req.origin == Origin::Client && req.transactional_id.is_none() {
            // Kafka authorizes transactional records by the request's id.
            return Err(ShardError::TransactionalIdAuthorizationFailed);
        }
        let producer = match txn {
            TxnWrite::Marker { .. } => None,
            _ => producer_state::producer_batch(&req.records)?,
        };
        let payload_bytes = (ENTRY_HEADER_BYTES + req.records.len()) as u64;
        // Room is left for the header of a copy (`compact::REPLACE_HEADER_BYTES`).
        let entry_max = u64::from(self.wal.config().entry_bytes_max)
            - crate::compact::REPLACE_HEADER_BYTES as u64;
        if payload_bytes > entry_max {
            let max = entry_max - ENTRY_HEADER_BYTES as u64;
            return Err(ShardError::MessageTooLarge {
                bytes: req.records.len() as u64,
                max,
            });
        }
        let log_append_time = limits.log_append_time.then(now_ms);
        let (payload, base_offset, log_start_offset, isr_wait) = {
            let mut parts = self.parts.borrow_mut();
            let part = parts
                .get_mut(&key)
                .ok_or(ShardError::UnknownTopicOrPartition)?;
            if !part.is_leader {
                return Err(ShardError::NotLeader);
            }
            if req.acks == -1 && part.isr_len() < limits.min_insync {
                return Err(ShardError::NotEnoughReplicas);
            }
            let isr_wait = (req.acks == -1 && part.repl.is_some()).then(|| {
                let timeout = Duration::from_millis(u64::from(req.timeout_ms));
                (limits.min_insync, started + timeout)
            });
            if let TxnWrite::Marker {
                producer_id,
                producer_epoch,
                ..
            } = txn
            {
                let expiration_ms = self.cfg.producer_id_expiration_ms;
                part.producers
                    .check_epoch(producer_id, producer_epoch, now_ms(), expiration_ms)?;
            }
            if let Some(d) = self.check_producer(part, producer.as_ref(), req.origin)? {
                return Ok(d);
            }
            if let (TxnWrite::Plain, Some(pb)) = (txn, &producer) {
                if let Some(first) = part.open_txn(pb.producer_id) {
                    return Err(ShardError::InvalidTxnState(format!(
                        "a non-transactional batch of producer {} whose transaction is open here since offset {first}",
                        pb.producer_id
                    )));
                }
            }
            let txn_bytes_before = part.txn_bytes();
            let base_offset = part.next_offset;
            let header = EntryHeader {
                key,
                base_offset,
                last_offset: base_offset + summary.offsets - 1,
                max_timestamp: log_append_time.unwrap_or(summary.max_timestamp),
            };
            let mut buf = entry::encode(&header, &req.records);
            let last = batch::patch(
                &mut buf[ENTRY_HEADER_BYTES..],
                base_offset,
                log_append_time,
                part.leader_epoch,
            );
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
            if let Some(pb) = &producer {
                self.record_producer(part, pb, base_offset, header.last_offset);
            }
            match txn {
                TxnWrite::Plain => {}
                TxnWrite::Data => {
                    if let Some(pb) = &producer {
                        part.settle_txns();
                        part.begin_txn(pb.producer_id, base_offset);
                    }
                }
                TxnWrite::Marker {
                    producer_id,
                    producer_epoch,
                    commit,
                } => {
                    part.settle_txns();
                    part.end_txn(producer_id, producer_epoch, base_offset, commit, now_ms());
                }
            }
            self.charge_txn_bytes(txn_bytes_before, part.txn_bytes());
            self.budget
                .charge_forced(Pool::PartitionState, INDEX_ENTRY_BYTES);
            (payload, base_offset, part.log_start_offset, isr_wait)
        };
        if let TxnWrite::Marker {
            producer_id,
            commit,
            ..
        } = txn
        {
            if req.topic.name == crate::group::OFFSETS_TOPIC {
                // The group coordinator applies (or drops) the offsets the
                // transaction committed, in the partition's order.
                self.on_offsets_txn_marker(key.partition, producer_id, commit);
            }
        }
        let append = self
            .wal
            .append_payload(KIND_BATCHES, entry::wal_payload(payload));
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
        Ok(Begun::Queued(PendingProduce {
            key,
            base_offset,
            last_offset: base_offset + summary.offsets - 1,
            isr_wait,
            append,
            inflight,
            log_append_time_ms: log_append_time.unwrap_or(-1),
            log_start_offset,
            producer_id: producer.map(|p| p.producer_id),
        }))
    }

    /// Sequence and epoch checks of an idempotent producer's entry:
    /// `Some` when it is a duplicate of an entry already written. A
    /// coordinator's entry only has its epoch checked. A producer whose
    /// transaction is open here does not expire.
    fn check_producer(
        &self,
        part: &crate::partition::Partition,
        producer: Option<&ProducerBatch>,
        origin: Origin,
    ) -> Result<Option<Begun>, ShardError> {
        let Some(pb) = producer else {
            return Ok(None);
        };
        let expiration_ms = if part.open_txn(pb.producer_id).is_some() {
            i64::MAX
        } else {
            self.cfg.producer_id_expiration_ms
        };
        if origin == Origin::Coordinator {
            part.producers
                .check_epoch(pb.producer_id, pb.epoch, now_ms(), expiration_ms)?;
            return Ok(None);
        }
        match part.producers.check(pb, now_ms(), expiration_ms)? {
            Verdict::Append => Ok(None),
            Verdict::Duplicate {
                base_offset,
                last_offset,
            } => Ok(Some(Begun::Duplicate {
                key: part.key,
                base_offset,
                last_offset,
            })),
        }
    }

    fn record_producer(
        &self,
        part: &mut crate::partition::Partition,
        pb: &ProducerBatch,
        base_offset: i64,
        last_offset: i64,
    ) {
        let now = now_ms();
        part.producers.record(pb, base_offset, last_offset, now);
        let txns = part.txns.as_deref();
        let expired =
            part.producers
                .sweep_if_grown(now, self.cfg.producer_id_expiration_ms, |id| {
                    txns.is_some_and(|t| t.open_first(id).is_some())
                });
        self.counters.borrow_mut().producers_expired += expired as u64;
    }

    /// Answers a duplicate with the original offsets once the original is
    /// durable (at once if it already is).
    fn answer_duplicate(
        self: &Rc<Self>,
        key: PartitionKey,
        base_offset: i64,
        last_offset: i64,
        reply: oneshot::Sender<ProducePartitionResult>,
    ) {
        debug!(shard = self.id(), base_offset, "duplicate produce answered");
        if let Some(done) = self.duplicate_state(&key, base_offset, last_offset) {
            let _ = reply.send(done);
            return;
        }
        let engine = self.clone();
        glommio::spawn_local(async move {
            let result = engine.await_duplicate(key, base_offset, last_offset).await;
            let _ = reply.send(result);
        })
        .detach();
    }

    async fn await_duplicate(
        self: &Rc<Self>,
        key: PartitionKey,
        base_offset: i64,
        last_offset: i64,
    ) -> ProducePartitionResult {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.remote_reply_timeout_ms);
        let slot = WaitSlot::new();
        let Some(_guard) = self.waiters.register(&slot, vec![key], deadline) else {
            return ProducePartitionResult::failed(ShardError::Busy);
        };
        loop {
            if let Some(done) = self.duplicate_state(&key, base_offset, last_offset) {
                return done;
            }
            if Instant::now() >= deadline || self.closing.get() {
                return ProducePartitionResult::failed(ShardError::Timeout);
            }
            slot.wait().await;
        }
    }

    /// The answer to a duplicate of the entry at `base_offset`, or `None`
    /// while that entry is not durable yet.
    fn duplicate_state(
        &self,
        key: &PartitionKey,
        base_offset: i64,
        last_offset: i64,
    ) -> Option<ProducePartitionResult> {
        let parts = self.parts.borrow();
        let Some(p) = parts.get(key) else {
            return Some(ProducePartitionResult::failed(
                ShardError::UnknownTopicOrPartition,
            ));
        };
        if p.high_watermark > last_offset {
            return Some(ProducePartitionResult {
                error: None,
                base_offset,
                log_append_time_ms: -1,
                log_start_offset: p.log_start_offset,
            });
        }
        if p.batches
            .binary_search_by_key(&base_offset, |b| b.base_offset)
            .is_err()
        {
            let e = ShardError::Storage("the original append of this batch failed".into());
            return Some(ProducePartitionResult::failed(e));
        }
        None
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
            producer_id,
            ..
        } = pending;
        match append.await {
            Ok(position) => {
                let bytes = inflight.bytes();
                drop(inflight);
                if self.on_durable(key, base_offset, position, bytes) == Durable::Truncated {
                    // This node stopped leading and its log was truncated
                    // below the entry meanwhile.
                    return ProducePartitionResult::failed(ShardError::NotLeader);
                }
                result
            }
            Err(e) => {
                drop(inflight);
                self.on_failed(key, base_offset, producer_id);
                self.warn_rate_limited("WAL append", &e);
                self.counters.borrow_mut().produce_errors += 1;
                ProducePartitionResult::failed(ShardError::Storage(e.to_string()))
            }
        }
    }

    /// An entry is durable: moves the durable end and the HW (waking
    /// fetches, replica fetches and acks=-1 produces) and keeps its batches
    /// in the tail cache.
    pub(crate) fn on_durable(
        &self,
        key: PartitionKey,
        base_offset: i64,
        position: Position,
        bytes: u64,
    ) -> Durable {
        let moved = self.parts.borrow_mut().get_mut(&key).map(|p| {
            let held = p.batch_mut(base_offset).is_some();
            (held, p.mark_durable(base_offset, position))
        });
        match moved {
            None => return Durable::Gone, // Deleted meanwhile.
            Some((false, _)) => return Durable::Truncated,
            Some((true, true)) => self.hw_moved(&key),
            Some((true, false)) => {}
        }
        self.cache_tail(key, base_offset, bytes);
        Durable::Kept
    }

    /// Partition `key`'s durable end or high watermark moved: wakes the
    /// fetches and produces waiting on it, and the retention task when
    /// retention is not timing the partition (its entries below the HW are
    /// what retention expires). Called with no borrow of `parts` held.
    pub(crate) fn hw_moved(&self, key: &PartitionKey) {
        self.waiters.notify(key);
        let untimed = self
            .parts
            .borrow_mut()
            .get_mut(key)
            .is_some_and(|p| std::mem::take(&mut p.retention_untimed));
        if untimed {
            self.retention_wake.fire();
        }
    }

    /// acks=-1 on a replicated partition, after local durability: waits
    /// until the HW passes `last_offset` (the ISR has the entry), failing
    /// with `NotLeader` once this node stops leading (or the entry was
    /// truncated), `NotEnoughReplicasAfterAppend` once the ISR is smaller
    /// than `min_insync`, `Timeout` at `deadline`.
    async fn await_replicated(
        &self,
        key: PartitionKey,
        base_offset: i64,
        last_offset: i64,
        min_insync: usize,
        deadline: Instant,
    ) -> Result<(), ShardError> {
        let check = || -> Option<Result<(), ShardError>> {
            let parts = self.parts.borrow();
            let Some(p) = parts.get(&key) else {
                return Some(Err(ShardError::UnknownTopicOrPartition));
            };
            if !p.is_leader || p.next_offset <= last_offset {
                return Some(Err(ShardError::NotLeader));
            }
            if p.isr_len() < min_insync {
                return Some(Err(ShardError::NotEnoughReplicasAfterAppend));
            }
            (p.high_watermark > last_offset).then_some(Ok(()))
        };
        if let Some(r) = check() {
            return r;
        }
        let slot = WaitSlot::new();
        let Some(_guard) = self.waiters.register(&slot, vec![key], deadline) else {
            return Err(ShardError::Busy);
        };
        loop {
            if let Some(r) = check() {
                return r;
            }
            if self.closing.get() {
                return Err(ShardError::ShuttingDown);
            }
            if Instant::now() >= deadline {
                trace!(shard = self.id(), base_offset, "acks=-1 wait ran out");
                return Err(ShardError::Timeout);
            }
            slot.wait().await;
        }
    }

    /// Always notifies: duplicates waiting for this entry must learn it failed.
    fn on_failed(&self, key: PartitionKey, base_offset: i64, producer_id: Option<i64>) {
        if let Some(p) = self.parts.borrow_mut().get_mut(&key) {
            let before = p.batches.len();
            p.mark_failed(base_offset);
            let removed = (before - p.batches.len()) as u64;
            self.budget
                .discharge(Pool::PartitionState, removed * INDEX_ENTRY_BYTES);
            if let Some(id) = producer_id {
                p.producers.forget(id, base_offset);
            }
        }
        self.waiters.notify(&key);
    }

    /// Keeps the entry's batches in the tail cache, evicting the oldest
    /// entries while the pool is full.
    pub(crate) fn cache_tail(&self, key: PartitionKey, base_offset: i64, bytes: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::testing::{batch, transactional, with_producer};
    use crate::batch::{control_batch, EndTxn};

    fn invalid(r: Result<TxnWrite, ShardError>) -> bool {
        matches!(r, Err(ShardError::InvalidRecord(_)))
    }

    #[test]
    fn requests_are_classified_by_kafkas_rules() {
        let plain = batch(1, 0, b"v");
        assert_eq!(txn_write(&plain, Origin::Client), Ok(TxnWrite::Plain));
        let idempotent = with_producer(batch(2, 0, b"v"), 7, 0, 0);
        assert_eq!(txn_write(&idempotent, Origin::Client), Ok(TxnWrite::Plain));
        let txn = transactional(idempotent.clone());
        assert_eq!(txn_write(&txn, Origin::Client), Ok(TxnWrite::Data));
        let mut two = txn.clone();
        two.extend(transactional(with_producer(batch(1, 0, b"v"), 7, 0, 2)));
        assert_eq!(txn_write(&two, Origin::Client), Ok(TxnWrite::Data));
        // A transactional batch needs a producer id; a client's batch with
        // a producer id needs a sequence (a coordinator's does not).
        assert!(invalid(txn_write(
            &transactional(batch(1, 0, b"v")),
            Origin::Coordinator
        )));
        let no_seq = transactional(with_producer(batch(1, 0, b"v"), 7, 0, -1));
        assert!(invalid(txn_write(&no_seq, Origin::Client)));
        assert_eq!(txn_write(&no_seq, Origin::Coordinator), Ok(TxnWrite::Data));
        let mut mixed = idempotent.clone();
        mixed.extend(transactional(with_producer(batch(1, 0, b"v"), 7, 0, 2)));
        assert!(invalid(txn_write(&mixed, Origin::Client)));
        // Markers: a coordinator's, alone.
        let end = EndTxn {
            commit: true,
            coordinator_epoch: 3,
        };
        let marker = control_batch(7, 1, end, 0);
        assert!(invalid(txn_write(&marker, Origin::Client)));
        assert_eq!(
            txn_write(&marker, Origin::Coordinator),
            Ok(TxnWrite::Marker {
                producer_id: 7,
                producer_epoch: 1,
                commit: true
            })
        );
        let mut after_data = txn.clone();
        after_data.extend_from_slice(&marker);
        assert!(invalid(txn_write(&after_data, Origin::Coordinator)));
        let mut two_markers = marker.clone();
        two_markers.extend_from_slice(&marker);
        assert!(invalid(txn_write(&two_markers, Origin::Coordinator)));
        assert!(invalid(txn_write(
            &control_batch(-1, 0, end, 0),
            Origin::Coordinator
        )));
    }
}
