//! The coordinator inside the shard: routing a group request to the shard
//! that owns the group's `__consumer_offsets` partition, serving it there
//! (state machine + group records written to that partition, `load`),
//! replay of old `KIND_GROUP` WAL entries, and the one group-deadline task
//! per shard.
//!
//! On the owner shard a request is served only while this node leads the
//! group's offsets partition and its groups are loaded (`group_gate`):
//! otherwise it is answered `NotCoordinator` or
//! `CoordinatorLoadInProgress` (ListGroups lists only served groups).
//! Commits, offset deletions and group deletions are applied to memory when
//! their record batch is queued in the partition (log order is apply
//! order) and answered once the in-sync replicas have it.

use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{select, Either};
use tracing::{trace, warn};

use super::record::{self, GroupRecord};
use super::types::*;
use super::{offsets_partition_for, OFFSETS_TOPIC};
use crate::engine::Engine;
use crate::mesh::ShardMsg;
use crate::waiters::sleep_until;
use crate::ShardError;

/// Where the coordinator sends its answer.
pub enum GroupReply {
    Join(oneshot::Sender<JoinResult>),
    Sync(oneshot::Sender<SyncResult>),
    Other(oneshot::Sender<GroupResponse>),
}

enum GroupAnswer {
    Join(oneshot::Receiver<JoinResult>),
    Sync(oneshot::Receiver<SyncResult>),
    Other(oneshot::Receiver<GroupResponse>),
}

impl GroupAnswer {
    fn pair(req: &GroupRequest) -> (GroupReply, GroupAnswer) {
        match req {
            GroupRequest::Join(_) => {
                let (tx, rx) = oneshot::channel();
                (GroupReply::Join(tx), GroupAnswer::Join(rx))
            }
            GroupRequest::Sync(_) => {
                let (tx, rx) = oneshot::channel();
                (GroupReply::Sync(tx), GroupAnswer::Sync(rx))
            }
            _ => {
                let (tx, rx) = oneshot::channel();
                (GroupReply::Other(tx), GroupAnswer::Other(rx))
            }
        }
    }

    async fn wait(self) -> Result<GroupResponse, oneshot::Canceled> {
        Ok(match self {
            GroupAnswer::Join(rx) => GroupResponse::Join(rx.await?),
            GroupAnswer::Sync(rx) => GroupResponse::Sync(rx.await?),
            GroupAnswer::Other(rx) => rx.await?,
        })
    }
}

/// How long a request may wait for its coordinator: a join waits for the
/// whole rebalance.
fn answer_wait(req: &GroupRequest, engine: &Engine) -> Duration {
    let base = Duration::from_millis(engine.cfg.remote_reply_timeout_ms);
    match req {
        GroupRequest::Join(j) => {
            let ms = j.rebalance_timeout_ms.max(j.session_timeout_ms).max(0) as u64;
            base + Duration::from_millis(ms + engine.cfg.group_initial_rebalance_delay_ms)
        }
        _ => base,
    }
}

impl Engine {
    /// The shard that coordinates `group_id`.
    pub fn coordinator_of(&self, group_id: &str) -> Result<u32, GroupError> {
        let view = self.meta.view();
        let topic = view
            .topics
            .get(OFFSETS_TOPIC)
            .ok_or(GroupError::CoordinatorNotAvailable)?;
        let n = u32::try_from(topic.partitions.len()).unwrap_or(0);
        if n == 0 {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        let p = offsets_partition_for(group_id, n);
        Ok(topic.partitions[p as usize].shard)
    }

    /// Routes a group request to its coordinator shard and waits for the
    /// answer.
    pub async fn group(self: &Rc<Self>, req: GroupRequest) -> GroupResponse {
        let owner = match req.group_id() {
            Some(g) => match self.coordinator_of(g) {
                Ok(o) => o,
                Err(e) => return req.failed(e),
            },
            None => self.id(),
        };
        self.group_on(owner, req).await
    }

    /// Runs a group request on shard `owner`.
    pub async fn group_on(self: &Rc<Self>, owner: u32, req: GroupRequest) -> GroupResponse {
        let (reply, answer) = GroupAnswer::pair(&req);
        let deadline = Instant::now() + answer_wait(&req, self);
        let failed = req.clone_for_failure();
        if owner == self.id() {
            self.group_owner(req, reply);
            return match self.until(answer.wait(), deadline).await {
                Some(Ok(r)) => r,
                Some(Err(_)) => failed.failed(GroupError::Shard(ShardError::ShuttingDown)),
                None => failed.failed(GroupError::Shard(ShardError::Timeout)),
            };
        }
        let Some(peers) = &self.peers else {
            return failed.failed(GroupError::CoordinatorNotAvailable);
        };
        if let Err(e) = peers.send(owner, ShardMsg::Group { req, reply }).await {
            return failed.failed(GroupError::Shard(e));
        }
        match self.until(answer.wait(), deadline).await {
            Some(Ok(r)) => r,
            Some(Err(_)) => failed.failed(GroupError::Shard(ShardError::ShuttingDown)),
            None => failed.failed(GroupError::Shard(ShardError::Timeout)),
        }
    }

    /// Every group of every shard.
    pub async fn list_groups(self: &Rc<Self>) -> Vec<GroupListing> {
        let asks = (0..self.cfg.shards).map(|s| self.group_on(s, GroupRequest::List));
        let mut out = Vec::new();
        for r in futures::future::join_all(asks).await {
            if let GroupResponse::List(l) = r {
                out.extend(l);
            }
        }
        out
    }

    /// Serves a group request on its coordinator (this shard). Local work
    /// only; the answer goes to `reply`.
    pub fn group_owner(self: &Rc<Self>, req: GroupRequest, reply: GroupReply) {
        let now = Instant::now();
        if self.closing.get() {
            return; // Dropping `reply` answers: shutting down.
        }
        if let Some(group_id) = req.group_id() {
            if let Err(e) = self.group_gate(group_id) {
                trace!(shard = self.id(), group = group_id, error = %e, "group not served here");
                match (reply, req.failed(e)) {
                    (GroupReply::Join(tx), GroupResponse::Join(r)) => drop(tx.send(r)),
                    (GroupReply::Sync(tx), GroupResponse::Sync(r)) => drop(tx.send(r)),
                    (GroupReply::Other(tx), r) => drop(tx.send(r)),
                    _ => {}
                }
                return;
            }
        }
        match (req, reply) {
            (GroupRequest::Join(r), GroupReply::Join(tx)) => {
                self.groups.borrow_mut().join(r, now, tx)
            }
            (GroupRequest::Sync(r), GroupReply::Sync(tx)) => {
                self.groups.borrow_mut().sync(r, now, tx)
            }
            (req, GroupReply::Other(tx)) => self.group_other(req, now, tx),
            (req, _) => warn!(?req, "group request with a mismatched reply, dropped"),
        }
        self.rearm_group_timer();
    }

    fn group_other(
        self: &Rc<Self>,
        req: GroupRequest,
        now: Instant,
        tx: oneshot::Sender<GroupResponse>,
    ) {
        let answer = match req {
            GroupRequest::Heartbeat(r) => {
                GroupResponse::Heartbeat(self.groups.borrow_mut().heartbeat(r, now))
            }
            GroupRequest::Leave(r) => GroupResponse::Leave(self.groups.borrow_mut().leave(r, now)),
            GroupRequest::OffsetFetch(r) => {
                GroupResponse::OffsetFetch(self.groups.borrow().offset_fetch(&r))
            }
            GroupRequest::Describe(g) => GroupResponse::Describe(self.groups.borrow().describe(&g)),
            GroupRequest::List => {
                GroupResponse::List(self.groups.borrow().list(|id| self.group_gate(id).is_ok()))
            }
            GroupRequest::Commit(r) => return self.commit_owner(r, tx),
            GroupRequest::TxnCommit(r) => return self.txn_commit_owner(r, tx),
            GroupRequest::Delete(g) => return self.delete_owner(g, tx),
            GroupRequest::OffsetDelete(r) => return self.offset_delete_owner(r, tx),
            GroupRequest::Join(_) | GroupRequest::Sync(_) => return,
        };
        let _ = tx.send(answer);
    }

    fn commit_owner(self: &Rc<Self>, req: CommitRequest, tx: oneshot::Sender<GroupResponse>) {
        let checked = self.groups.borrow_mut().check_commit(&req);
        if let Err(e) = checked {
            let _ = tx.send(GroupResponse::Commit(CommitResult { error: Some(e) }));
            return;
        }
        let rec = GroupRecord::Commit {
            group_id: req.group_id,
            offsets: req.offsets,
        };
        self.write_group_record(rec, tx, |error| {
            GroupResponse::Commit(CommitResult { error })
        });
    }

    /// TxnOffsetCommit: the offsets go to the group's offsets partition
    /// as a transactional batch of the producer, and are held in memory
    /// (`Coordinator::add_txn_offsets`) until its marker lands there
    /// (`on_offsets_txn_marker`).
    fn txn_commit_owner(
        self: &Rc<Self>,
        req: TxnCommitRequest,
        tx: oneshot::Sender<GroupResponse>,
    ) {
        let answer = |error| GroupResponse::Commit(CommitResult { error });
        if let Err(e) = self.groups.borrow_mut().check_txn_commit(&req.commit) {
            let _ = tx.send(answer(Some(e)));
            return;
        }
        let TxnCommitRequest {
            commit,
            producer_id,
            producer_epoch,
            ..
        } = req;
        let rec = GroupRecord::Commit {
            group_id: commit.group_id.clone(),
            offsets: commit.offsets.clone(),
        };
        let started = self.group_gate(&commit.group_id).and_then(|p| {
            let batch = record::encode_txn_batch(
                &rec,
                crate::produce::now_ms(),
                (producer_id, producer_epoch),
            );
            self.start_coordinator_write(p, vec![batch])
        });
        let mut waits = match started {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(answer(Some(e)));
                return;
            }
        };
        self.groups
            .borrow_mut()
            .add_txn_offsets(producer_id, commit.group_id, commit.offsets);
        let Some(wait) = waits.pop() else {
            return;
        };
        glommio::spawn_local(async move {
            let error = Engine::group_write_result(wait).await.err();
            let _ = tx.send(answer(error));
        })
        .detach();
    }

    /// A transaction marker of `producer_id` was queued in offsets
    /// partition `partition` (this shard owns it): the offsets that
    /// producer's transaction committed to groups of that partition count
    /// from now on (`commit`), or are dropped.
    pub(crate) fn on_offsets_txn_marker(&self, partition: u32, producer_id: i64, commit: bool) {
        if !self.offsets_partition_loaded(partition) {
            // Loading reads the marker in its place in the log.
            return;
        }
        let n = self
            .meta
            .view()
            .topics
            .get(OFFSETS_TOPIC)
            .map_or(0, |t| u32::try_from(t.partitions.len()).unwrap_or(0));
        self.groups
            .borrow_mut()
            .complete_txn(producer_id, commit, |g| {
                n > 0 && offsets_partition_for(g, n) == partition
            });
    }

    fn delete_owner(self: &Rc<Self>, group_id: String, tx: oneshot::Sender<GroupResponse>) {
        if let Err(e) = self.groups.borrow().check_delete(&group_id) {
            let _ = tx.send(GroupResponse::Delete(Some(e)));
            return;
        }
        self.write_group_record(
            GroupRecord::GroupDeleted { group_id },
            tx,
            GroupResponse::Delete,
        );
    }

    fn offset_delete_owner(
        self: &Rc<Self>,
        req: OffsetDeleteRequest,
        tx: oneshot::Sender<GroupResponse>,
    ) {
        if let Err(e) = self.groups.borrow().check_offset_delete(&req.group_id) {
            let _ = tx.send(GroupResponse::OffsetDelete(OffsetDeleteResult {
                error: Some(e),
                partitions: Vec::new(),
            }));
            return;
        }
        let partitions = req.partitions.clone();
        let rec = GroupRecord::OffsetsDeleted {
            group_id: req.group_id,
            partitions: req.partitions,
        };
        self.write_group_record(rec, tx, move |error| {
            GroupResponse::OffsetDelete(OffsetDeleteResult {
                error: None,
                partitions: partitions
                    .iter()
                    .map(|(t, p)| (t.clone(), *p, error.clone()))
                    .collect(),
            })
        });
    }

    /// Writes `rec` into the group's offsets partition (acks=-1), applies
    /// it once queued there, answers once the in-sync replicas have it.
    /// A write refused before anything was queued is answered at once and
    /// not applied.
    fn write_group_record(
        self: &Rc<Self>,
        rec: GroupRecord,
        tx: oneshot::Sender<GroupResponse>,
        answer: impl FnOnce(Option<GroupError>) -> GroupResponse + 'static,
    ) {
        let group_id = match &rec {
            GroupRecord::Commit { group_id, .. }
            | GroupRecord::OffsetsDeleted { group_id, .. }
            | GroupRecord::GroupDeleted { group_id } => group_id.as_str(),
            GroupRecord::PartitionReset => return,
        };
        let started = self
            .group_gate(group_id)
            .and_then(|p| self.start_group_write(p, std::slice::from_ref(&rec)));
        let mut waits = match started {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(answer(Some(e)));
                return;
            }
        };
        self.groups.borrow_mut().apply(rec);
        let Some(wait) = waits.pop() else {
            return;
        };
        glommio::spawn_local(async move {
            let error = Engine::group_write_result(wait).await.err();
            let _ = tx.send(answer(error));
        })
        .detach();
    }

    /// Replays one `KIND_GROUP` WAL entry of an old data directory
    /// (recovery); the offsets partitions' logs are loaded on top.
    pub fn recover_group_entry(&self, payload: &Bytes) -> Result<(), String> {
        let rec = record::decode(payload)?;
        self.groups.borrow_mut().apply(rec);
        self.group_log.note_legacy_replayed();
        Ok(())
    }

    /// Wakes the group timer task if the earliest deadline moved earlier.
    fn rearm_group_timer(&self) {
        let next = self.groups.borrow().next_deadline();
        if let Some(d) = next {
            if self.group_armed.get().map_or(true, |armed| d < armed) {
                self.group_wake.fire();
            }
        }
    }
}

impl GroupRequest {
    /// A cheap copy that keeps only what `failed` needs.
    fn clone_for_failure(&self) -> GroupRequest {
        match self {
            GroupRequest::Join(r) => GroupRequest::Join(JoinRequest {
                protocols: Vec::new(),
                ..r.clone()
            }),
            GroupRequest::Sync(r) => GroupRequest::Sync(SyncRequest {
                assignments: Vec::new(),
                ..r.clone()
            }),
            GroupRequest::Commit(r) => GroupRequest::Commit(CommitRequest {
                offsets: Vec::new(),
                ..r.clone()
            }),
            GroupRequest::TxnCommit(r) => GroupRequest::Commit(CommitRequest {
                offsets: Vec::new(),
                ..r.commit.clone()
            }),
            other => other.clone(),
        }
    }
}

/// The shard's one group-deadline task: serves expired group deadlines and
/// sleeps until the next one through the shard's deadline structure. With
/// no deadline (no live members anywhere) it is parked without a timer.
pub(crate) async fn run_group_timers(engine: Rc<Engine>) {
    loop {
        let next = engine.groups.borrow_mut().expire(Instant::now());
        engine.group_armed.set(next);
        trace!(shard = engine.id(), ?next, "group deadlines served");
        let wake = engine.group_wake.clone();
        match next {
            None => wake.wait().await,
            Some(d) => {
                let sleep = pin!(sleep_until(&engine.waiters, d));
                let woken = pin!(wake.wait());
                if let Either::Right(_) = select(sleep, woken).await {
                    continue;
                }
            }
        }
    }
}
