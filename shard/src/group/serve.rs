//! The coordinator inside the shard: routing a group request to the shard
//! that coordinates the group, serving it there (state machine + WAL),
//! recovery of group records, and the one group-deadline task per shard.
//!
//! Commits are applied to memory when their WAL entry is queued and
//! answered when it is durable (WAL order is apply order).

use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{select, Either};
use tracing::{trace, warn};

use super::record::{self, GroupRecord, KIND_GROUP};
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
            GroupRequest::List => GroupResponse::List(self.groups.borrow().list()),
            GroupRequest::Commit(r) => return self.commit_owner(r, tx),
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

    /// Queues `rec` in the WAL, applies it, answers once durable.
    fn write_group_record(
        self: &Rc<Self>,
        rec: GroupRecord,
        tx: oneshot::Sender<GroupResponse>,
        answer: impl FnOnce(Option<GroupError>) -> GroupResponse + 'static,
    ) {
        let payload = record::encode(&rec);
        if payload.len() as u64 > u64::from(self.wal.config().entry_bytes_max) {
            let _ = tx.send(answer(Some(GroupError::OffsetMetadataTooLarge)));
            return;
        }
        let append = self.wal.append(KIND_GROUP, payload);
        self.groups.borrow_mut().apply(rec);
        let engine = self.clone();
        glommio::spawn_local(async move {
            let error = match append.await {
                Ok(_) => None,
                Err(e) => {
                    engine.warn_rate_limited("group record append", &e);
                    Some(GroupError::Shard(ShardError::Storage(e.to_string())))
                }
            };
            let _ = tx.send(answer(error));
        })
        .detach();
    }

    /// Re-appends every committed offset of this shard's groups (as commit
    /// records, in the WAL's call order), so that WAL segments holding older
    /// group records can be removed. Returns the appends; the caller waits
    /// for them to be durable before removing anything.
    pub(crate) fn carry_group_records(&self) -> Vec<sluice_wal::Append> {
        const OFFSETS_PER_RECORD: usize = 512;
        let max = self.wal.config().entry_bytes_max as usize;
        let mut records = Vec::new();
        {
            let coord = self.groups.borrow();
            let mut ids: Vec<&String> = coord.groups.keys().collect();
            ids.sort_unstable();
            for id in ids {
                let g = &coord.groups[id];
                let all: Vec<_> = g
                    .offsets
                    .iter()
                    .map(|((t, p), c)| (t.clone(), *p, c.clone()))
                    .collect();
                for chunk in all.chunks(OFFSETS_PER_RECORD) {
                    let rec = GroupRecord::Commit {
                        group_id: id.clone(),
                        offsets: chunk.to_vec(),
                    };
                    let payload = record::encode(&rec);
                    if payload.len() > max {
                        // Only metadata near the entry limit gets here:
                        // one offset per record then.
                        for one in chunk {
                            records.push(record::encode(&GroupRecord::Commit {
                                group_id: id.clone(),
                                offsets: vec![one.clone()],
                            }));
                        }
                    } else {
                        records.push(payload);
                    }
                }
            }
        }
        records
            .into_iter()
            .map(|payload| self.wal.append(KIND_GROUP, payload))
            .collect()
    }

    /// Replays one `KIND_GROUP` WAL entry (recovery).
    pub fn recover_group_entry(&self, payload: &Bytes) -> Result<(), String> {
        let rec = record::decode(payload)?;
        self.groups.borrow_mut().apply(rec);
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
