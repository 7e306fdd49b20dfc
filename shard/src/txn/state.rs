//! The transaction coordinator's state: each transactional id's metadata,
//! Kafka's state machine (`TransactionMetadata` / `TransactionCoordinator`
//! rules) as pure functions that say what to write, and the shard's one
//! ordered set of deadlines. No I/O: `serve` writes and applies.

use std::collections::{BTreeSet, HashMap};
use std::mem::size_of;
use std::rc::Rc;

use futures::channel::oneshot;

use super::{TxnDescription, TxnError, TxnListing, TXN_PARTITIONS_MAX};
use crate::budget::{Budget, Pool};
use crate::ShardError;

/// Map and set overhead per entry, estimated.
const ENTRY_OVERHEAD_BYTES: u64 = 48;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnState {
    /// Has a producer id, no transaction yet.
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// Kafka's name (DescribeTransactions, ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<TxnState> {
        Some(match code {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            _ => return None,
        })
    }

    fn is_prepare(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// One transactional id's durable metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// The partitions of the ongoing (or ending) transaction.
    pub partitions: BTreeSet<(String, i32)>,
    /// When the ongoing transaction started (ms since the epoch), -1.
    pub start_ms: i64,
    /// Last state change (ms since the epoch).
    pub update_ms: i64,
}

impl TxnMeta {
    /// When the coordinator must act on its own: an ongoing transaction's
    /// timeout, an idle id's expiry. `None` while markers are written.
    pub fn deadline_ms(&self, expiration_ms: i64) -> Option<i64> {
        match self.state {
            TxnState::Ongoing => Some(
                self.start_ms
                    .saturating_add(i64::from(self.timeout_ms.max(0))),
            ),
            TxnState::PrepareCommit | TxnState::PrepareAbort => None,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                Some(self.update_ms.saturating_add(expiration_ms))
            }
        }
    }

    /// The metadata after the markers of a prepared transaction are
    /// written.
    pub fn completed(&self, now_ms: i64) -> TxnMeta {
        TxnMeta {
            state: if self.state == TxnState::PrepareCommit {
                TxnState::CompleteCommit
            } else {
                TxnState::CompleteAbort
            },
            partitions: BTreeSet::new(),
            start_ms: -1,
            update_ms: now_ms,
            ..self.clone()
        }
    }

    /// The ongoing transaction aborted with the producer's epoch bumped:
    /// the producer instance that ran it is fenced (timeout, or a new
    /// instance calling InitProducerId).
    pub fn fenced_abort(&self, now_ms: i64) -> TxnMeta {
        TxnMeta {
            producer_epoch: self.producer_epoch.saturating_add(1),
            state: TxnState::PrepareAbort,
            update_ms: now_ms,
            ..self.clone()
        }
    }

    fn bytes(&self, id: &str) -> u64 {
        let parts: u64 = self
            .partitions
            .iter()
            .map(|(t, _)| (size_of::<(String, i32)>() + t.len()) as u64 + ENTRY_OVERHEAD_BYTES)
            .sum();
        // The map key and the deadline set's copy of the id.
        (size_of::<Entry>() + 2 * id.len()) as u64 + 2 * ENTRY_OVERHEAD_BYTES + parts
    }
}

/// What InitProducerId must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitPlan {
    /// A producer id must be allocated first (new id, or epochs exhausted).
    NeedProducerId,
    /// Write this; answer its producer id and epoch.
    Write(TxnMeta),
    /// Write this abort (the previous instance's transaction) and answer
    /// CONCURRENT_TRANSACTIONS: the client retries once it completes.
    FenceAndRetry(TxnMeta),
    /// A KIP-360 retry of the bump that made the current epoch (its answer
    /// was lost): answer the current id and epoch again.
    Current(i64, i16),
}

/// What EndTxn must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndPlan {
    /// Write this prepare, answer, then write the markers.
    Prepare(TxnMeta),
    /// A retry of an EndTxn that already completed: answer success.
    AlreadyDone,
}

/// Kafka's checks of a request's producer id and epoch.
fn check_producer(m: &TxnMeta, producer_id: i64, producer_epoch: i16) -> Result<(), TxnError> {
    if m.producer_id != producer_id {
        return Err(TxnError::InvalidProducerIdMapping);
    }
    if m.producer_epoch != producer_epoch {
        return Err(TxnError::ProducerFenced);
    }
    Ok(())
}

/// InitProducerId on `cur` (`None`: an unknown id).
pub fn plan_init(
    cur: Option<&TxnMeta>,
    timeout_ms: i32,
    producer: (i64, i16),
    now_ms: i64,
) -> Result<InitPlan, TxnError> {
    let Some(m) = cur else {
        return Ok(InitPlan::NeedProducerId);
    };
    // KIP-360: a producer that knows its id and epoch must match them, or
    // be retrying the bump that made the current epoch.
    if producer.0 >= 0 && (producer.0 != m.producer_id || producer.1 != m.producer_epoch) {
        let retried_bump = producer.0 == m.producer_id
            && producer.1.checked_add(1) == Some(m.producer_epoch)
            && m.state == TxnState::Empty;
        if retried_bump {
            return Ok(InitPlan::Current(m.producer_id, m.producer_epoch));
        }
        return Err(TxnError::ProducerFenced);
    }
    match m.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => Err(TxnError::ConcurrentTransactions),
        TxnState::Ongoing => Ok(InitPlan::FenceAndRetry(m.fenced_abort(now_ms))),
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
            // An epoch must stay below i16::MAX: a marker of a fenced
            // instance's transaction may still need epoch + 1.
            if m.producer_epoch >= i16::MAX - 2 {
                return Ok(InitPlan::NeedProducerId);
            }
            Ok(InitPlan::Write(TxnMeta {
                producer_epoch: m.producer_epoch + 1,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                start_ms: -1,
                update_ms: now_ms,
                ..m.clone()
            }))
        }
    }
}

/// The metadata of an id given a fresh producer id.
pub fn fresh(producer_id: i64, timeout_ms: i32, now_ms: i64) -> TxnMeta {
    TxnMeta {
        producer_id,
        producer_epoch: 0,
        timeout_ms,
        state: TxnState::Empty,
        partitions: BTreeSet::new(),
        start_ms: -1,
        update_ms: now_ms,
    }
}

/// AddPartitionsToTxn (and AddOffsetsToTxn): `None` when every partition
/// is already in the ongoing transaction (nothing to write).
pub fn plan_add(
    m: &TxnMeta,
    producer: (i64, i16),
    partitions: &[(String, i32)],
    now_ms: i64,
) -> Result<Option<TxnMeta>, TxnError> {
    check_producer(m, producer.0, producer.1)?;
    if m.state.is_prepare() {
        return Err(TxnError::ConcurrentTransactions);
    }
    let ongoing = m.state == TxnState::Ongoing;
    if ongoing && partitions.iter().all(|p| m.partitions.contains(p)) {
        return Ok(None);
    }
    let mut next = m.clone();
    if !ongoing {
        next.state = TxnState::Ongoing;
        next.partitions.clear();
        next.start_ms = now_ms;
    }
    next.partitions.extend(partitions.iter().cloned());
    if next.partitions.len() > TXN_PARTITIONS_MAX {
        return Err(TxnError::Shard(ShardError::Busy));
    }
    next.update_ms = now_ms;
    Ok(Some(next))
}

/// EndTxn (Kafka's `endTransaction` rules).
pub fn plan_end(
    m: &TxnMeta,
    producer: (i64, i16),
    commit: bool,
    now_ms: i64,
) -> Result<EndPlan, TxnError> {
    check_producer(m, producer.0, producer.1)?;
    match (m.state, commit) {
        (TxnState::Ongoing, _) => Ok(EndPlan::Prepare(TxnMeta {
            state: if commit {
                TxnState::PrepareCommit
            } else {
                TxnState::PrepareAbort
            },
            update_ms: now_ms,
            ..m.clone()
        })),
        (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
            Ok(EndPlan::AlreadyDone)
        }
        (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
            Err(TxnError::ConcurrentTransactions)
        }
        _ => Err(TxnError::InvalidTxnState),
    }
}

/// One id's place in the coordinator.
#[derive(Debug)]
pub(crate) struct Entry {
    pub meta: TxnMeta,
    /// A state write (or the markers) of this id is in flight.
    pub busy: bool,
    /// The `__transaction_state` partition it belongs to.
    pub partition: u32,
    /// Bytes charged to the `group_state` pool.
    charged: u64,
    /// Its entry in the deadline set, if any.
    armed: Option<i64>,
}

/// The transactional ids this shard coordinates.
pub struct TxnCoordinator {
    pub(crate) txns: HashMap<String, Entry>,
    /// (deadline ms, id) of every id with one (`TxnMeta::deadline_ms`).
    deadlines: BTreeSet<(i64, String)>,
    /// Ids being created (a producer id is being allocated).
    creating: BTreeSet<String>,
    /// Requests waiting for a busy id to settle (`wait_idle`), at most one
    /// per request in flight.
    idle_waiters: HashMap<String, Vec<oneshot::Sender<()>>>,
    expiration_ms: i64,
    budget: Rc<Budget>,
}

impl TxnCoordinator {
    pub fn new(expiration_ms: i64, budget: Rc<Budget>) -> TxnCoordinator {
        TxnCoordinator {
            txns: HashMap::new(),
            deadlines: BTreeSet::new(),
            creating: BTreeSet::new(),
            idle_waiters: HashMap::new(),
            expiration_ms,
            budget,
        }
    }

    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&TxnMeta> {
        self.txns.get(id).map(|e| &e.meta)
    }

    /// The id may change now: it is known or being created, and nothing
    /// of it is in flight.
    pub(crate) fn check_idle(&self, id: &str) -> Result<(), TxnError> {
        if self.creating.contains(id) || self.txns.get(id).is_some_and(|e| e.busy) {
            return Err(TxnError::ConcurrentTransactions);
        }
        Ok(())
    }

    pub(crate) fn set_busy(&mut self, id: &str, busy: bool) {
        if let Some(e) = self.txns.get_mut(id) {
            e.busy = busy;
        }
        if !busy {
            self.notify_idle(id);
        }
    }

    pub(crate) fn set_creating(&mut self, id: &str, creating: bool) {
        if creating {
            self.creating.insert(id.to_string());
        } else {
            self.creating.remove(id);
            self.notify_idle(id);
        }
    }

    /// `None` when `id` may change now; else a wait that resolves when it
    /// settles (its write or markers are done, or it is dropped).
    pub(crate) fn wait_idle(&mut self, id: &str) -> Option<oneshot::Receiver<()>> {
        self.check_idle(id).err()?;
        let (tx, rx) = oneshot::channel();
        let waiters = self.idle_waiters.entry(id.to_string()).or_default();
        // Waits that gave up (their request was answered) go first.
        waiters.retain(|w| !w.is_canceled());
        waiters.push(tx);
        Some(rx)
    }

    fn notify_idle(&mut self, id: &str) {
        if let Some(waiters) = self.idle_waiters.remove(id) {
            for w in waiters {
                let _ = w.send(());
            }
        }
    }

    /// Whether `meta` (growing the id by `grow` bytes) fits the pool.
    pub(crate) fn admits(&self, id: &str, meta: &TxnMeta) -> bool {
        let old = self.txns.get(id).map_or(0, |e| e.charged);
        let new = meta.bytes(id);
        new <= old || self.budget.admits(Pool::GroupState, new - old)
    }

    /// Applies a durable state (`None`: the id is forgotten).
    pub(crate) fn apply(&mut self, id: &str, partition: u32, meta: Option<TxnMeta>) {
        if let Some(old) = self.txns.remove(id) {
            self.budget.discharge(Pool::GroupState, old.charged);
            if let Some(d) = old.armed {
                self.deadlines.remove(&(d, id.to_string()));
            }
        }
        let Some(meta) = meta else {
            self.notify_idle(id);
            return;
        };
        let charged = meta.bytes(id);
        self.budget.charge_forced(Pool::GroupState, charged);
        let armed = meta.deadline_ms(self.expiration_ms);
        if let Some(d) = armed {
            self.deadlines.insert((d, id.to_string()));
        }
        self.txns.insert(
            id.to_string(),
            Entry {
                meta,
                busy: false,
                partition,
                charged,
                armed,
            },
        );
        self.notify_idle(id);
    }

    /// Forgets the ids `pick` selects (their partition is no longer led
    /// here, or is being loaded again).
    pub(crate) fn drop_where(&mut self, pick: impl Fn(u32) -> bool) -> usize {
        let ids: Vec<(String, u32)> = self
            .txns
            .iter()
            .filter(|(_, e)| pick(e.partition))
            .map(|(id, e)| (id.clone(), e.partition))
            .collect();
        for (id, p) in &ids {
            self.apply(id, *p, None);
        }
        ids.len()
    }

    /// The ids whose deadline passed and that are idle, with their
    /// metadata, and the next deadline after them. Expired ids leave the
    /// set: the state change that serves them sets the next one.
    pub(crate) fn due(&mut self, now_ms: i64) -> (Vec<(String, TxnMeta, u32)>, Option<i64>) {
        let mut out = Vec::new();
        while let Some((d, id)) = self.deadlines.first().cloned() {
            if d > now_ms {
                return (out, Some(d));
            }
            self.deadlines.pop_first();
            let Some(e) = self.txns.get_mut(&id) else {
                continue;
            };
            e.armed = None;
            if !e.busy {
                out.push((id, e.meta.clone(), e.partition));
            }
        }
        (out, None)
    }

    /// Re-arms `id`'s deadline, not before `not_before_ms` (after a failed
    /// state write; a deadline still in the set stays as it is).
    pub(crate) fn rearm(&mut self, id: &str, not_before_ms: i64) {
        let Some(e) = self.txns.get_mut(id) else {
            return;
        };
        if e.armed.is_some() {
            return;
        }
        if let Some(d) = e.meta.deadline_ms(self.expiration_ms) {
            let d = d.max(not_before_ms);
            e.armed = Some(d);
            self.deadlines.insert((d, id.to_string()));
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<i64> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    pub(crate) fn describe(&self, id: &str) -> TxnDescription {
        let Some(m) = self.get(id) else {
            return TxnDescription {
                error: Some(TxnError::TransactionalIdNotFound),
                transactional_id: id.to_string(),
                ..TxnDescription::default()
            };
        };
        TxnDescription {
            error: None,
            transactional_id: id.to_string(),
            state: m.state.name(),
            timeout_ms: m.timeout_ms,
            start_ms: m.start_ms,
            producer_id: m.producer_id,
            producer_epoch: m.producer_epoch,
            partitions: m.partitions.iter().cloned().collect(),
        }
    }

    pub(crate) fn list(
        &self,
        states: &[String],
        producer_ids: &[i64],
        served: impl Fn(u32) -> bool,
    ) -> Vec<TxnListing> {
        let mut out: Vec<TxnListing> = self
            .txns
            .iter()
            .filter(|(_, e)| served(e.partition))
            .filter(|(_, e)| states.is_empty() || states.iter().any(|s| s == e.meta.state.name()))
            .filter(|(_, e)| producer_ids.is_empty() || producer_ids.contains(&e.meta.producer_id))
            .map(|(id, e)| TxnListing {
                transactional_id: id.clone(),
                producer_id: e.meta.producer_id,
                state: e.meta.state.name(),
                start_ms: e.meta.start_ms,
            })
            .collect();
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        out
    }

    /// Prepared transactions of `partition` (just loaded): their markers
    /// must be written.
    pub(crate) fn prepared_in(&self, partition: u32) -> Vec<(String, TxnMeta)> {
        self.txns
            .iter()
            .filter(|(_, e)| e.partition == partition && e.meta.state.is_prepare())
            .map(|(id, e)| (id.clone(), e.meta.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(state: TxnState) -> TxnMeta {
        TxnMeta {
            state,
            ..fresh(7, 60_000, 1_000)
        }
    }

    fn parts(list: &[(&str, i32)]) -> Vec<(String, i32)> {
        list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn init_bumps_the_epoch_and_fences_an_ongoing_transaction() {
        assert_eq!(
            plan_init(None, 1, (-1, -1), 5),
            Ok(InitPlan::NeedProducerId)
        );
        let m = meta(TxnState::CompleteCommit);
        let Ok(InitPlan::Write(next)) = plan_init(Some(&m), 30_000, (-1, -1), 5) else {
            panic!("an idle id gets the next epoch");
        };
        assert_eq!((next.producer_id, next.producer_epoch), (7, 1));
        assert_eq!((next.state, next.timeout_ms), (TxnState::Empty, 30_000));
        let mut ongoing = meta(TxnState::Ongoing);
        ongoing.partitions.insert(("t".into(), 0));
        let Ok(InitPlan::FenceAndRetry(abort)) = plan_init(Some(&ongoing), 1, (-1, -1), 9) else {
            panic!("an ongoing transaction is aborted first");
        };
        assert_eq!(abort.state, TxnState::PrepareAbort);
        assert_eq!(abort.producer_epoch, 1, "the old instance is fenced");
        assert_eq!(
            abort.partitions.len(),
            1,
            "its markers go to its partitions"
        );
        assert_eq!(
            plan_init(Some(&meta(TxnState::PrepareCommit)), 1, (-1, -1), 9),
            Err(TxnError::ConcurrentTransactions)
        );
        assert_eq!(
            plan_init(Some(&m), 1, (7, 3), 9),
            Err(TxnError::ProducerFenced),
            "KIP-360: a stale epoch is fenced"
        );
        assert_eq!(
            plan_init(Some(&next), 1, (7, 0), 9),
            Ok(InitPlan::Current(7, 1)),
            "KIP-360: the retry of a bump whose answer was lost"
        );
        let mut old = meta(TxnState::Empty);
        old.producer_epoch = i16::MAX - 2;
        assert_eq!(
            plan_init(Some(&old), 1, (-1, -1), 9),
            Ok(InitPlan::NeedProducerId)
        );
    }

    #[test]
    fn add_starts_or_grows_a_transaction() {
        let m = meta(TxnState::Empty);
        let next = plan_add(&m, (7, 0), &parts(&[("a", 0), ("b", 1)]), 50)
            .unwrap()
            .unwrap();
        assert_eq!((next.state, next.start_ms), (TxnState::Ongoing, 50));
        assert_eq!(
            plan_add(&next, (7, 0), &parts(&[("a", 0)]), 60),
            Ok(None),
            "nothing new"
        );
        let grown = plan_add(&next, (7, 0), &parts(&[("c", 0)]), 60)
            .unwrap()
            .unwrap();
        assert_eq!((grown.partitions.len(), grown.start_ms), (3, 50));
        assert_eq!(
            plan_add(&m, (7, 1), &parts(&[("a", 0)]), 60),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(
            plan_add(&m, (8, 0), &parts(&[("a", 0)]), 60),
            Err(TxnError::InvalidProducerIdMapping)
        );
        assert_eq!(
            plan_add(
                &meta(TxnState::PrepareAbort),
                (7, 0),
                &parts(&[("a", 0)]),
                60
            ),
            Err(TxnError::ConcurrentTransactions)
        );
    }

    #[test]
    fn end_follows_kafkas_rules() {
        let ongoing = meta(TxnState::Ongoing);
        let Ok(EndPlan::Prepare(p)) = plan_end(&ongoing, (7, 0), true, 70) else {
            panic!("an ongoing transaction prepares");
        };
        assert_eq!(p.state, TxnState::PrepareCommit);
        let done = p.completed(80);
        assert_eq!(
            (done.state, done.partitions.len()),
            (TxnState::CompleteCommit, 0)
        );
        assert_eq!(plan_end(&done, (7, 0), true, 90), Ok(EndPlan::AlreadyDone));
        assert_eq!(
            plan_end(&done, (7, 0), false, 90),
            Err(TxnError::InvalidTxnState)
        );
        assert_eq!(
            plan_end(&p, (7, 0), true, 90),
            Err(TxnError::ConcurrentTransactions)
        );
        assert_eq!(
            plan_end(&meta(TxnState::Empty), (7, 0), false, 90),
            Err(TxnError::InvalidTxnState)
        );
    }

    #[test]
    fn deadlines_follow_the_state_and_are_charged() {
        let budget = Budget::new(crate::budget::BudgetLimits::derive(64 << 20, 1 << 20, 0));
        let mut c = TxnCoordinator::new(1_000_000, budget.clone());
        let mut m = meta(TxnState::Ongoing);
        m.start_ms = 100;
        c.apply("x", 3, Some(m.clone()));
        assert!(budget.used(Pool::GroupState) > 0);
        assert_eq!(c.next_deadline(), Some(60_100), "start + timeout");
        let (due, next) = c.due(60_100);
        assert_eq!((due.len(), next), (1, None));
        c.rearm("x", 0);
        c.set_busy("x", true);
        assert!(c.due(70_000).0.is_empty(), "a busy id is not served");
        c.apply("x", 3, Some(m.fenced_abort(70_000)));
        assert_eq!(c.next_deadline(), None, "markers in flight: no deadline");
        c.apply("x", 3, Some(m.fenced_abort(70_000).completed(80_000)));
        assert_eq!(c.next_deadline(), Some(1_080_000), "expiry of an idle id");
        assert_eq!(c.drop_where(|p| p == 3), 1);
        assert_eq!(budget.used(Pool::GroupState), 0);
        assert!(c.is_empty());
    }
}
