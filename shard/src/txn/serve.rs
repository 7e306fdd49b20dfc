//! The transaction coordinator inside the shard: routing a request to the
//! shard that owns the id's `__transaction_state` partition, serving it
//! there (state machine in `state`, records in `record`), the markers of a
//! transaction that ends, and the one deadline task per shard.

use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{select, Either};
use sluice_raft::TopicMeta;
use tracing::{debug, info, trace, warn};

use super::state::{self, EndPlan, InitPlan, TxnMeta, TxnState};
use super::{
    record, txn_partition_for, TxnError, TxnListing, TxnRequest, TxnResponse, TXN_TOPIC,
    TXN_WRITE_TIMEOUT_MS,
};
use crate::engine::Engine;
use crate::entry::PartitionKey;
use crate::mesh::ShardMsg;
use crate::produce::now_ms;
use crate::waiters::sleep_until;
use crate::{ShardError, TxnMarker};

/// Where the coordinator sends its answer.
pub type TxnReply = oneshot::Sender<TxnResponse>;

/// Writes markers to partitions that other nodes lead: the broker's
/// WriteTxnMarkers client, installed per shard (`Shard::set_remote_markers`).
/// `Ok` once the leader answered that the in-sync replicas have the
/// marker.
pub trait RemoteMarkers {
    fn write(
        &self,
        node: u64,
        topic: String,
        partition: i32,
        marker: TxnMarker,
    ) -> futures::future::LocalBoxFuture<'static, Result<(), ShardError>>;
}

/// First pause before the markers that failed are written again; it
/// doubles up to `MARKER_RETRY_MAX`.
const MARKER_RETRY: Duration = Duration::from_millis(50);
const MARKER_RETRY_MAX: Duration = Duration::from_secs(2);
/// Pause before a deadline whose state write failed is served again.
const DEADLINE_RETRY_MS: i64 = 1_000;
/// Longest wait of a request for its id's write or markers in flight
/// before it is answered CONCURRENT_TRANSACTIONS.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Kafka's mapping of a failed transaction record write.
fn txn_write_error(e: ShardError) -> TxnError {
    match e {
        ShardError::UnknownTopicOrPartition
        | ShardError::NotEnoughReplicas
        | ShardError::NotEnoughReplicasAfterAppend
        | ShardError::Timeout => TxnError::CoordinatorNotAvailable,
        ShardError::NotLeader
        | ShardError::Storage(_)
        | ShardError::FencedLeaderEpoch { .. }
        | ShardError::UnknownLeaderEpoch { .. } => TxnError::NotCoordinator,
        other => TxnError::Shard(other),
    }
}

impl Engine {
    /// `__transaction_state` as the applied view holds it, with its
    /// partition count.
    fn txn_topic(&self) -> Option<(Arc<TopicMeta>, u32)> {
        let view = self.meta.view();
        let topic = view.topics.get(TXN_TOPIC)?.clone();
        let n = u32::try_from(topic.partitions.len())
            .ok()
            .filter(|n| *n > 0)?;
        Some((topic, n))
    }

    /// The shard that coordinates `transactional_id`.
    pub fn txn_coordinator_of(&self, transactional_id: &str) -> Result<u32, TxnError> {
        let (topic, n) = self.txn_topic().ok_or(TxnError::CoordinatorNotAvailable)?;
        let p = txn_partition_for(transactional_id, n);
        Ok(topic.partitions[p as usize].shard)
    }

    /// Routes a transaction request to its coordinator shard and waits for
    /// the answer.
    pub async fn txn(self: &Rc<Self>, req: TxnRequest) -> TxnResponse {
        let owner = match req.transactional_id() {
            Some(id) => match self.txn_coordinator_of(id) {
                Ok(o) => o,
                Err(e) => return req.failed(e),
            },
            None => self.id(),
        };
        self.txn_on(owner, req).await
    }

    async fn txn_on(self: &Rc<Self>, owner: u32, req: TxnRequest) -> TxnResponse {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + Duration::from_millis(self.cfg.remote_reply_timeout_ms);
        let failed = req.clone();
        if owner == self.id() {
            self.txn_owner(req, reply);
        } else {
            let Some(peers) = &self.peers else {
                return failed.failed(TxnError::CoordinatorNotAvailable);
            };
            if let Err(e) = peers.send(owner, ShardMsg::Txn { req, reply }).await {
                return failed.failed(TxnError::Shard(e));
            }
        }
        match self.until(answer, deadline).await {
            Some(Ok(r)) => r,
            Some(Err(_)) => failed.failed(TxnError::Shard(ShardError::ShuttingDown)),
            None => failed.failed(TxnError::Shard(ShardError::Timeout)),
        }
    }

    /// Every transactional id of every shard that `states` and
    /// `producer_ids` select (empty: all).
    pub async fn list_txns(
        self: &Rc<Self>,
        states: Vec<String>,
        producer_ids: Vec<i64>,
    ) -> Vec<TxnListing> {
        let asks = (0..self.cfg.shards).map(|s| {
            self.txn_on(
                s,
                TxnRequest::List {
                    states: states.clone(),
                    producer_ids: producer_ids.clone(),
                },
            )
        });
        let mut out = Vec::new();
        for r in futures::future::join_all(asks).await {
            if let TxnResponse::List(l) = r {
                out.extend(l);
            }
        }
        out
    }

    /// Serves a transaction request on its coordinator (this shard).
    pub fn txn_owner(self: &Rc<Self>, req: TxnRequest, reply: TxnReply) {
        if self.closing.get() {
            return; // Dropping `reply` answers: shutting down.
        }
        let engine = self.clone();
        glommio::spawn_local(async move {
            let answer = engine.serve_txn(req).await;
            let _ = reply.send(answer);
        })
        .detach();
    }

    /// Waits, at most `IDLE_WAIT`, while `id` has a write or its markers in
    /// flight: the end of a transaction takes a few WAL syncs, and the
    /// producer's next request would otherwise get CONCURRENT_TRANSACTIONS
    /// and come back only after the client's retry backoff (100 ms in
    /// librdkafka and kafka-python).
    async fn await_txn_idle(&self, id: &str) {
        let deadline = Instant::now() + IDLE_WAIT;
        loop {
            let wait = self.txns.borrow_mut().wait_idle(id);
            let Some(rx) = wait else {
                return;
            };
            if !matches!(self.until(rx, deadline).await, Some(Ok(()))) {
                return;
            }
        }
    }

    async fn serve_txn(self: &Rc<Self>, req: TxnRequest) -> TxnResponse {
        if let Some(id) = req.transactional_id() {
            if !matches!(req, TxnRequest::Describe(_)) {
                self.await_txn_idle(id).await;
            }
        }
        let now = now_ms();
        match req {
            TxnRequest::Describe(id) => {
                if let Err(e) = self.txn_gate(&id) {
                    return TxnRequest::Describe(id).failed(e);
                }
                TxnResponse::Describe(self.txns.borrow().describe(&id))
            }
            TxnRequest::List {
                states,
                producer_ids,
            } => TxnResponse::List(
                self.txns
                    .borrow()
                    .list(&states, &producer_ids, |p| self.txn_log.serves(p)),
            ),
            TxnRequest::InitProducerId {
                transactional_id,
                timeout_ms,
                producer_id,
                producer_epoch,
            } => TxnResponse::Producer(
                self.init_txn_producer(
                    &transactional_id,
                    timeout_ms,
                    (producer_id, producer_epoch),
                )
                .await,
            ),
            TxnRequest::AddPartitions {
                transactional_id,
                producer_id,
                producer_epoch,
                partitions,
                verify_only,
            } => TxnResponse::Done(
                self.add_txn_partitions(
                    &transactional_id,
                    (producer_id, producer_epoch),
                    &partitions,
                    verify_only,
                    now,
                )
                .await,
            ),
            TxnRequest::EndTxn {
                transactional_id,
                producer_id,
                producer_epoch,
                commit,
            } => TxnResponse::Done(
                self.end_txn(
                    &transactional_id,
                    (producer_id, producer_epoch),
                    commit,
                    now,
                )
                .await,
            ),
        }
    }

    async fn init_txn_producer(
        self: &Rc<Self>,
        id: &str,
        timeout_ms: i32,
        producer: (i64, i16),
    ) -> Result<(i64, i16), TxnError> {
        if timeout_ms <= 0 || i64::from(timeout_ms) > self.cfg.transaction_max_timeout_ms {
            return Err(TxnError::InvalidTransactionTimeout);
        }
        let partition = self.txn_gate(id)?;
        self.txns.borrow().check_idle(id)?;
        let mut plan = {
            let txns = self.txns.borrow();
            state::plan_init(txns.get(id), timeout_ms, producer, now_ms())?
        };
        if let InitPlan::FenceAndRetry(abort) = plan {
            info!(
                shard = self.id(),
                transactional_id = id,
                epoch = abort.producer_epoch,
                "a new producer instance fences the ongoing transaction: aborting it"
            );
            self.prepare_and_end(id, partition, abort).await?;
            self.counters.borrow_mut().txn_fenced += 1;
            // The abort's markers usually take a few WAL syncs: answer once
            // it completed rather than have the client retry.
            self.await_txn_idle(id).await;
            self.txns.borrow().check_idle(id)?;
            let txns = self.txns.borrow();
            plan = state::plan_init(txns.get(id), timeout_ms, producer, now_ms())?;
        }
        let meta = match plan {
            InitPlan::Write(meta) => meta,
            InitPlan::Current(producer_id, epoch) => return Ok((producer_id, epoch)),
            InitPlan::FenceAndRetry(_) => return Err(TxnError::ConcurrentTransactions),
            InitPlan::NeedProducerId => {
                // A new id, epochs exhausted, or (KIP-360) a producer id the
                // coordinator does not know (an expired id): a fresh one.
                // Requests for the id meet CONCURRENT_TRANSACTIONS until
                // the new producer id is written.
                self.txns.borrow_mut().set_creating(id, true);
                let created = self.create_txn_id(id, partition, timeout_ms).await;
                self.txns.borrow_mut().set_creating(id, false);
                return created;
            }
        };
        let answer = (meta.producer_id, meta.producer_epoch);
        self.write_txn_state(id, partition, Some(meta)).await?;
        Ok(answer)
    }

    /// Gives `id` a fresh producer id with epoch 0.
    async fn create_txn_id(
        self: &Rc<Self>,
        id: &str,
        partition: u32,
        timeout_ms: i32,
    ) -> Result<(i64, i16), TxnError> {
        let producer_id = self.allocate_producer_id().await.map_err(|e| {
            debug!(error = %e, "producer id block not allocated");
            TxnError::CoordinatorNotAvailable
        })?;
        if self.txn_gate(id)? != partition {
            return Err(TxnError::NotCoordinator);
        }
        let meta = state::fresh(producer_id, timeout_ms, now_ms());
        if !self.txns.borrow().admits(id, &meta) {
            // The shard's transactional ids fill its group-state pool.
            return Err(TxnError::Shard(ShardError::Busy));
        }
        self.write_txn_state(id, partition, Some(meta)).await?;
        Ok((producer_id, 0))
    }

    async fn add_txn_partitions(
        self: &Rc<Self>,
        id: &str,
        producer: (i64, i16),
        partitions: &[(String, i32)],
        verify_only: bool,
        now: i64,
    ) -> Result<(), TxnError> {
        let partition = self.txn_gate(id)?;
        let next = {
            let txns = self.txns.borrow();
            let m = txns.get(id).ok_or(TxnError::InvalidProducerIdMapping)?;
            if verify_only {
                // KIP-890: a partition leader asks whether a transactional
                // batch belongs to an ongoing transaction of this producer.
                let ongoing = m.producer_id == producer.0
                    && m.producer_epoch == producer.1
                    && m.state == TxnState::Ongoing
                    && partitions.iter().all(|p| m.partitions.contains(p));
                return if ongoing {
                    Ok(())
                } else {
                    Err(TxnError::InvalidTxnState)
                };
            }
            txns.check_idle(id)?;
            let Some(next) = state::plan_add(m, producer, partitions, now)? else {
                return Ok(());
            };
            if !txns.admits(id, &next) {
                return Err(TxnError::Shard(ShardError::Busy));
            }
            next
        };
        self.write_txn_state(id, partition, Some(next)).await
    }

    async fn end_txn(
        self: &Rc<Self>,
        id: &str,
        producer: (i64, i16),
        commit: bool,
        now: i64,
    ) -> Result<(), TxnError> {
        let partition = self.txn_gate(id)?;
        let plan = {
            let txns = self.txns.borrow();
            txns.check_idle(id)?;
            let m = txns.get(id).ok_or(TxnError::InvalidProducerIdMapping)?;
            state::plan_end(m, producer, commit, now)?
        };
        match plan {
            EndPlan::AlreadyDone => Ok(()),
            EndPlan::Prepare(prepared) => self.prepare_and_end(id, partition, prepared).await,
        }
    }

    /// Writes a PrepareCommit/PrepareAbort state; once durable (the
    /// outcome is decided) starts the task that writes the markers and
    /// completes the transaction, and returns.
    async fn prepare_and_end(
        self: &Rc<Self>,
        id: &str,
        partition: u32,
        prepared: TxnMeta,
    ) -> Result<(), TxnError> {
        self.write_txn_state(id, partition, Some(prepared.clone()))
            .await?;
        self.start_markers(id.to_string(), partition, prepared);
        Ok(())
    }

    /// Starts the markers of a prepared transaction (after its prepare is
    /// durable, or found by a load). The id stays busy until it completes.
    pub(crate) fn start_markers(self: &Rc<Self>, id: String, partition: u32, prepared: TxnMeta) {
        self.txns.borrow_mut().set_busy(&id, true);
        let engine = self.clone();
        glommio::spawn_local(async move {
            engine.write_markers(id, partition, prepared).await;
        })
        .detach();
    }

    /// Writes the markers of `prepared` to all its partitions, retrying
    /// while this shard still coordinates the id, then its Complete state.
    async fn write_markers(self: Rc<Self>, id: String, partition: u32, prepared: TxnMeta) {
        let generation = self.txn_log.generation(partition);
        let commit = prepared.state == TxnState::PrepareCommit;
        let started = Instant::now();
        let mut left: Vec<(String, i32)> = prepared.partitions.iter().cloned().collect();
        let mut pause = MARKER_RETRY;
        let mut warned = false;
        loop {
            if self.closing.get() || !self.still_prepared(&id, partition, &prepared, generation) {
                debug!(shard = self.id(), transactional_id = %id, "markers abandoned: no longer coordinating the transaction");
                return;
            }
            let coordinator_epoch = self.txn_coordinator_epoch(partition);
            let marker = TxnMarker {
                producer_id: prepared.producer_id,
                producer_epoch: prepared.producer_epoch,
                commit,
                coordinator_epoch,
            };
            let writes = left
                .iter()
                .map(|(t, p)| self.write_one_marker(t, *p, marker));
            let results = futures::future::join_all(writes).await;
            let mut failed = Vec::new();
            for ((t, p), r) in left.into_iter().zip(results) {
                if let Err(e) = r {
                    trace!(shard = self.id(), topic = %t, partition = p, error = %e, "marker not written yet");
                    failed.push((t, p, e));
                }
            }
            if failed.is_empty() {
                break;
            }
            if !warned && started.elapsed() > Duration::from_secs(10) {
                warned = true;
                let (t, p, e) = &failed[0];
                warn!(shard = self.id(), transactional_id = %id, partitions = failed.len(), topic = %t, partition = p, error = %e, "transaction markers still not written; retrying");
            }
            left = failed.into_iter().map(|(t, p, _)| (t, p)).collect();
            sleep_until(&self.waiters, Instant::now() + pause).await;
            pause = (pause * 2).min(MARKER_RETRY_MAX);
        }
        let done = prepared.completed(now_ms());
        let mut pause = MARKER_RETRY;
        // Retried while this shard coordinates the id (as Kafka retries
        // its transaction log appends): a stalled ISR must not leave the
        // id busy for good.
        loop {
            if self.closing.get() || !self.still_prepared(&id, partition, &prepared, generation) {
                return;
            }
            match self
                .write_txn_state(&id, partition, Some(done.clone()))
                .await
            {
                Ok(()) => {
                    let mut c = self.counters.borrow_mut();
                    c.txn_markers += prepared.partitions.len() as u64;
                    if commit {
                        c.txn_commits += 1;
                    } else {
                        c.txn_aborts += 1;
                    }
                    drop(c);
                    trace!(shard = self.id(), transactional_id = %id, commit, ms = started.elapsed().as_millis() as u64, "transaction completed");
                    return;
                }
                Err(e) => {
                    debug!(shard = self.id(), transactional_id = %id, error = %e, "complete state not written; retrying");
                    self.txns.borrow_mut().set_busy(&id, true);
                    sleep_until(&self.waiters, Instant::now() + pause).await;
                    pause = (pause * 2).min(MARKER_RETRY_MAX);
                }
            }
        }
    }

    /// `id` is still coordinated here, in the prepared state `prepared`,
    /// by the same tenure (`generation`) of its partition that started
    /// the markers: a task of an earlier tenure stops.
    fn still_prepared(
        &self,
        id: &str,
        partition: u32,
        prepared: &TxnMeta,
        generation: Option<u64>,
    ) -> bool {
        self.txn_gate(id).ok() == Some(partition)
            && self.txn_log.generation(partition) == generation
            && self.txns.borrow().get(id) == Some(prepared)
    }

    /// One marker: through this node's owner shard when this node leads
    /// the partition; a deleted partition needs none.
    async fn write_one_marker(
        self: &Rc<Self>,
        topic: &str,
        partition: i32,
        marker: TxnMarker,
    ) -> Result<(), ShardError> {
        let Some(meta) = self.meta.view().topics.get(topic).cloned() else {
            return Ok(());
        };
        let Some(pm) = usize::try_from(partition)
            .ok()
            .and_then(|i| meta.partitions.get(i))
        else {
            return Ok(());
        };
        if pm.leader == sluice_raft::NO_LEADER {
            return Err(ShardError::NotLeader);
        }
        if pm.leader != self.node_id {
            let remote = self.remote_markers.borrow().clone();
            let Some(remote) = remote else {
                return Err(ShardError::NotLeader);
            };
            return match remote
                .write(pm.leader, topic.to_string(), partition, marker)
                .await
            {
                Ok(()) => Ok(()),
                Err(ShardError::InvalidProducerEpoch { .. }) => Ok(()),
                Err(e) => Err(e),
            };
        }
        // UNKNOWN_TOPIC_OR_PARTITION is retried: the owner's view may lag
        // this one (a deleted topic is caught above, from this view).
        match self.write_txn_marker(meta, partition, marker).await {
            Ok(_) => Ok(()),
            // A newer epoch's marker (or data) is there already: this
            // transaction was ended by a newer instance (Kafka drops it).
            Err(ShardError::InvalidProducerEpoch { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The leader epoch of `__transaction_state` partition `partition`
    /// here: the coordinator epoch stamped into markers.
    fn txn_coordinator_epoch(&self, partition: u32) -> i32 {
        let Some((topic, _)) = self.txn_topic() else {
            return 0;
        };
        let key = PartitionKey {
            topic_id: topic.id,
            partition,
        };
        self.parts
            .borrow()
            .get(&key)
            .map_or(0, |p| p.leader_epoch.max(0))
    }

    /// Writes `meta` (`None`: the id's tombstone) to the id's partition and
    /// applies it once the in-sync replicas have it. The id is busy
    /// meanwhile; on failure it is idle again with its old state.
    async fn write_txn_state(
        self: &Rc<Self>,
        id: &str,
        partition: u32,
        meta: Option<TxnMeta>,
    ) -> Result<(), TxnError> {
        let (topic, _) = self.txn_topic().ok_or(TxnError::CoordinatorNotAvailable)?;
        let key = PartitionKey {
            topic_id: topic.id,
            partition,
        };
        let batch = record::encode_batch(id, meta.as_ref(), now_ms());
        let mut waits = self
            .start_internal_write(topic, key, vec![batch], TXN_WRITE_TIMEOUT_MS)
            .map_err(txn_write_error)?;
        self.txns.borrow_mut().set_busy(id, true);
        let result = match waits.pop() {
            Some(rx) => match rx.await {
                Ok(r) => r.error.map_or(Ok(()), |e| Err(txn_write_error(e))),
                Err(_) => Err(TxnError::Shard(ShardError::ShuttingDown)),
            },
            None => Err(TxnError::Shard(ShardError::ShuttingDown)),
        };
        if let Err(e) = result {
            let mut txns = self.txns.borrow_mut();
            txns.set_busy(id, false);
            // A timeout or expiry the deadline task served is tried again
            // after a pause (not at once: the failure may repeat fast).
            txns.rearm(id, now_ms() + DEADLINE_RETRY_MS);
            drop(txns);
            self.rearm_txn_timer();
            return Err(e);
        }
        if self.txn_gate(id).ok() != Some(partition) {
            // The partition moved while the write was in flight: the new
            // coordinator loads the record from the log.
            return Err(TxnError::NotCoordinator);
        }
        self.txns.borrow_mut().apply(id, partition, meta);
        self.rearm_txn_timer();
        Ok(())
    }

    /// Wakes the deadline task if the earliest deadline moved earlier.
    fn rearm_txn_timer(&self) {
        let next = self.txns.borrow().next_deadline();
        if let Some(d) = next {
            if self.txn_log.armed.get().map_or(true, |armed| d < armed) {
                self.txn_log.timer_wake.fire();
            }
        }
    }

    /// Serves expired deadlines: aborts timed-out transactions (fencing
    /// their producer), forgets expired idle ids.
    fn serve_txn_deadlines(self: &Rc<Self>, now: i64) -> Option<i64> {
        let (due, next) = self.txns.borrow_mut().due(now);
        for (id, meta, partition) in due {
            if self.txn_gate(&id).ok() != Some(partition) {
                continue;
            }
            let engine = self.clone();
            // The state served must still be the id's when the task runs.
            let unchanged = move |engine: &Engine, id: &str, meta: &TxnMeta| {
                let txns = engine.txns.borrow();
                txns.check_idle(id).is_ok() && txns.get(id) == Some(meta)
            };
            match meta.state {
                TxnState::Ongoing => {
                    info!(shard = self.id(), transactional_id = %id, timeout_ms = meta.timeout_ms, "transaction timed out: aborting it");
                    glommio::spawn_local(async move {
                        if !unchanged(&engine, &id, &meta) {
                            return;
                        }
                        let abort = meta.fenced_abort(now_ms());
                        match engine.prepare_and_end(&id, partition, abort).await {
                            Ok(()) => engine.counters.borrow_mut().txn_timeouts += 1,
                            Err(e) => debug!(transactional_id = %id, error = %e, "timed-out transaction not aborted yet"),
                        }
                    })
                    .detach();
                }
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                    debug!(shard = self.id(), transactional_id = %id, "transactional id expired");
                    glommio::spawn_local(async move {
                        if !unchanged(&engine, &id, &meta) {
                            return;
                        }
                        match engine.write_txn_state(&id, partition, None).await {
                            Ok(()) => engine.counters.borrow_mut().txn_ids_expired += 1,
                            Err(e) => debug!(transactional_id = %id, error = %e, "expired id not forgotten yet"),
                        }
                    })
                    .detach();
                }
                TxnState::PrepareCommit | TxnState::PrepareAbort => {}
            }
        }
        next
    }
}

/// The shard's one transaction-deadline task: serves expired deadlines and
/// sleeps until the next one through the shard's deadline structure. With
/// no deadline it is parked without a timer.
pub(crate) async fn run_txn_timers(engine: Rc<Engine>) {
    loop {
        let now = now_ms();
        let next = engine.serve_txn_deadlines(now);
        engine.txn_log.armed.set(next);
        let wake = engine.txn_log.timer_wake.clone();
        match next {
            None => wake.wait().await,
            Some(d) => {
                let wait = Duration::from_millis(u64::try_from(d - now).unwrap_or(0));
                let sleep = pin!(sleep_until(&engine.waiters, Instant::now() + wait));
                let woken = pin!(wake.wait());
                if let Either::Right(_) = select(sleep, woken).await {
                    continue;
                }
            }
        }
    }
}
