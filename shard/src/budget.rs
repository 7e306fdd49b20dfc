//! The shard's memory budget: named pools with byte limits, charged before
//! memory grows. Work that does not fit waits (`Budget::reserve`): each
//! pool keeps its waiters in arrival order (at most `POOL_WAITERS_MAX`), a
//! release grants them from the head while they fit, and a waiter that does
//! not fit yet is never overtaken by a later one (nor by `try_reserve`). The
//! callers bound every wait in time (`MEMORY_WAIT`): connections stop
//! reading their socket until request memory frees; produces queue in the shard's admissions
//! queue (`produce`); a fetch waits once for its first batch (`fetch`).
//! Only a wait that runs out is answered with an error (`ShardError::Busy`).
//! Waits are counted per pool. Nothing ever goes past a pool's limit,
//! except partition state that metadata already committed (kept rare by
//! the placement limit) and the first batch of a fetch response larger than
//! its pool (needed for progress); both are counted in `over_bytes`.
//!
//! Lives on one shard (core); `Rc`/`Cell`/`RefCell` only.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The pools of one shard.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pool {
    /// Batches kept in memory after they are durable (the tail cache).
    TailCache = 0,
    /// Produce data between validation and durability.
    ProduceInflight = 1,
    /// Batches read back from the WAL for a fetch response.
    FetchResponse = 2,
    /// Request frames read from connections, until their request is answered.
    RequestBuffers = 3,
    /// Partition structs and their index entries.
    PartitionState = 4,
    /// glommio's `io_memory` arena (WAL commit buffers): fixed, charged whole
    /// at start.
    IoMemory = 5,
    /// Consumer groups of the coordinator: groups, members (with their
    /// protocol metadata and assignments) and committed offsets, estimated.
    GroupState = 6,
    /// The search index: its builders' heaps while it is open, and the
    /// record bytes queued for its helper thread.
    SearchIndex = 7,
    /// Log compaction: the key map of a pass and the entries it holds
    /// while it rewrites them.
    Compaction = 8,
}

const POOLS: [Pool; POOL_COUNT] = [
    Pool::TailCache,
    Pool::ProduceInflight,
    Pool::FetchResponse,
    Pool::RequestBuffers,
    Pool::PartitionState,
    Pool::IoMemory,
    Pool::GroupState,
    Pool::SearchIndex,
    Pool::Compaction,
];
const POOL_COUNT: usize = 9;

/// Longest wait for memory of a produce (admission) or a fetch (its first
/// batch); a wait that runs out is answered `ShardError::Busy` (produce) or
/// empty and throttled (fetch).
pub const MEMORY_WAIT: Duration = Duration::from_secs(15);

/// Reservations waiting for one pool at once (`Budget::reserve`); more are
/// refused (`NoWait::QueueFull`).
pub const POOL_WAITERS_MAX: usize = 16_384;

impl Pool {
    pub fn name(self) -> &'static str {
        match self {
            Pool::TailCache => "tail_cache",
            Pool::ProduceInflight => "produce_inflight",
            Pool::FetchResponse => "fetch_response",
            Pool::RequestBuffers => "request_buffers",
            Pool::PartitionState => "partition_state",
            Pool::IoMemory => "io_memory",
            Pool::GroupState => "group_state",
            Pool::SearchIndex => "search_index",
            Pool::Compaction => "compaction",
        }
    }
}

/// Limits of the pools, derived from the shard's `memory_bytes_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetLimits {
    pub tail_cache_bytes_max: u64,
    pub produce_inflight_bytes_max: u64,
    pub fetch_response_bytes_max: u64,
    pub request_buffers_bytes_max: u64,
    pub partition_state_bytes_max: u64,
    pub io_memory_bytes: u64,
    pub group_state_bytes_max: u64,
    pub search_index_bytes_max: u64,
    pub compaction_bytes_max: u64,
}

impl BudgetLimits {
    /// The executor's `io_memory` arena comes off the top; of the rest: at
    /// most a quarter for the tail cache (and never more than
    /// `tail_cache_bytes_max`), a quarter for in-flight produce data, an
    /// eighth each for fetch responses, request buffers and partition state,
    /// a sixteenth for group state, a sixteenth for the search index and a
    /// thirty-second for compaction (both taken from the tail cache's
    /// quarter). The remaining sixteenth (at
    /// least) is for what is not pooled: executor, task and connection
    /// structs, allocator slack.
    pub fn derive(
        memory_bytes_max: u64,
        tail_cache_bytes_max: u64,
        io_memory_bytes: u64,
    ) -> BudgetLimits {
        let rest = memory_bytes_max.saturating_sub(io_memory_bytes);
        BudgetLimits {
            // A sixteenth of the tail cache's quarter goes to the search
            // index (the tail cache is capped lower by default anyway).
            tail_cache_bytes_max: tail_cache_bytes_max.min(rest / 4 - rest / 16 - rest / 32),
            produce_inflight_bytes_max: rest / 4,
            fetch_response_bytes_max: rest / 8,
            request_buffers_bytes_max: rest / 8,
            partition_state_bytes_max: rest / 8,
            io_memory_bytes,
            group_state_bytes_max: rest / 16,
            search_index_bytes_max: rest / 16,
            compaction_bytes_max: rest / 32,
        }
    }

    /// The sum of every pool's limit.
    #[cfg(test)]
    pub fn total(&self) -> u64 {
        POOLS.iter().map(|&p| self.max(p)).sum()
    }

    fn max(&self, pool: Pool) -> u64 {
        match pool {
            Pool::TailCache => self.tail_cache_bytes_max,
            Pool::ProduceInflight => self.produce_inflight_bytes_max,
            Pool::FetchResponse => self.fetch_response_bytes_max,
            Pool::RequestBuffers => self.request_buffers_bytes_max,
            Pool::PartitionState => self.partition_state_bytes_max,
            Pool::IoMemory => self.io_memory_bytes,
            Pool::GroupState => self.group_state_bytes_max,
            Pool::SearchIndex => self.search_index_bytes_max,
            Pool::Compaction => self.compaction_bytes_max,
        }
    }
}

#[derive(Default)]
struct PoolState {
    used_bytes: Cell<u64>,
    peak_bytes: Cell<u64>,
    refused: Cell<u64>,
    /// Bytes charged past the limit (`charge_forced`).
    over_bytes: Cell<u64>,
    /// Reservations that had to wait (`reserve`).
    waits: Cell<u64>,
    /// Reservations waiting for memory, in arrival order.
    queue: RefCell<VecDeque<Rc<Waiter>>>,
}

/// One waiting reservation: granted (its bytes charged) by `Budget::grant`
/// when it reaches the head of its pool's queue and fits.
struct Waiter {
    bytes: u64,
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// One shard's budget.
pub struct Budget {
    limits: BudgetLimits,
    pools: [PoolState; POOL_COUNT],
}

/// Why `Budget::reserve` gave up without waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoWait {
    /// More than the pool's limit: it could never fit.
    NeverFits,
    /// `POOL_WAITERS_MAX` reservations already wait for the pool.
    QueueFull,
}

/// A plain-data view of one pool, for `Shard::stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStats {
    pub name: &'static str,
    pub used_bytes: u64,
    pub peak_bytes: u64,
    pub max_bytes: u64,
    /// Reservations refused because they did not fit.
    pub refused: u64,
    /// Bytes charged past the limit (partition state of committed metadata,
    /// the first batch of a fetch response larger than its pool).
    pub over_bytes: u64,
    /// Reservations that waited for memory.
    pub waits: u64,
    /// Reservations waiting now.
    pub waiting: u64,
}

impl Budget {
    pub fn new(limits: BudgetLimits) -> Rc<Budget> {
        let budget = Budget {
            limits,
            pools: Default::default(),
        };
        budget.charge_forced(Pool::IoMemory, limits.io_memory_bytes);
        Rc::new(budget)
    }

    /// Resolves with a reservation of `bytes` once they fit `pool`. Waiters
    /// are served in arrival order: a later one never overtakes an earlier
    /// one, even if it would fit. Dropping the future gives up its place (or
    /// its granted bytes). No deadline of its own: callers bound the wait.
    pub fn reserve(self: &Rc<Self>, pool: Pool, bytes: u64) -> Reserve {
        Reserve {
            budget: self.clone(),
            pool,
            bytes,
            waiter: None,
        }
    }

    /// Charges `bytes` that must be kept (state of committed metadata), even
    /// past the pool's limit; the excess is counted.
    pub fn charge_forced(&self, pool: Pool, bytes: u64) {
        let p = &self.pools[pool as usize];
        let used = p.used_bytes.get() + bytes;
        let max = self.limits.max(pool);
        if used > max {
            let before = p.used_bytes.get().max(max);
            p.over_bytes.set(p.over_bytes.get() + (used - before));
        }
        p.used_bytes.set(used);
        p.peak_bytes.set(p.peak_bytes.get().max(used));
    }

    /// `charge_forced` as a reservation (released on drop).
    pub fn reserve_forced(self: &Rc<Self>, pool: Pool, bytes: u64) -> Reservation {
        self.charge_forced(pool, bytes);
        Reservation {
            budget: self.clone(),
            pool,
            bytes,
        }
    }

    /// Returns bytes charged with `charge_forced`.
    pub fn discharge(&self, pool: Pool, bytes: u64) {
        self.release(pool, bytes);
    }

    /// Times a reservation of `pool` waited for memory.
    pub fn waits(&self, pool: Pool) -> u64 {
        self.pools[pool as usize].waits.get()
    }

    /// Charges `bytes` to `pool` if they fit under its limit and nobody waits
    /// for the pool (no overtaking).
    pub fn try_reserve(self: &Rc<Self>, pool: Pool, bytes: u64) -> Option<Reservation> {
        let p = &self.pools[pool as usize];
        if !p.queue.borrow().is_empty() || !self.fits(pool, bytes) {
            p.refused.set(p.refused.get() + 1);
            return None;
        }
        self.charge(pool, bytes);
        Some(Reservation {
            budget: self.clone(),
            pool,
            bytes,
        })
    }

    /// Whether `bytes` more would fit now (does not count a refusal).
    pub fn fits(&self, pool: Pool, bytes: u64) -> bool {
        self.pools[pool as usize].used_bytes.get() + bytes <= self.limits.max(pool)
    }

    /// `fits`, counting a refusal when not: for state admitted against the
    /// pool and then charged with `charge_forced` once it is kept.
    pub fn admits(&self, pool: Pool, bytes: u64) -> bool {
        let fits = self.fits(pool, bytes);
        if !fits {
            let p = &self.pools[pool as usize];
            p.refused.set(p.refused.get() + 1);
        }
        fits
    }

    #[cfg(test)]
    pub fn used(&self, pool: Pool) -> u64 {
        self.pools[pool as usize].used_bytes.get()
    }

    pub fn max(&self, pool: Pool) -> u64 {
        self.limits.max(pool)
    }

    fn charge(&self, pool: Pool, bytes: u64) {
        let p = &self.pools[pool as usize];
        let used = p.used_bytes.get() + bytes;
        p.used_bytes.set(used);
        p.peak_bytes.set(p.peak_bytes.get().max(used));
    }

    fn release(&self, pool: Pool, bytes: u64) {
        let p = &self.pools[pool as usize];
        let used = p.used_bytes.get();
        assert!(
            used >= bytes,
            "pool {} releases {bytes} bytes, holds {used}",
            pool.name()
        );
        p.used_bytes.set(used - bytes);
        self.grant(pool);
    }

    /// Grants waiters from the head of `pool`'s queue while they fit.
    fn grant(&self, pool: Pool) {
        let mut woken = Vec::new();
        {
            let mut queue = self.pools[pool as usize].queue.borrow_mut();
            while let Some(w) = queue.front() {
                if !self.fits(pool, w.bytes) {
                    break;
                }
                self.charge(pool, w.bytes);
                w.granted.set(true);
                if let Some(waker) = w.waker.borrow_mut().take() {
                    woken.push(waker);
                }
                queue.pop_front();
            }
        }
        woken.into_iter().for_each(Waker::wake);
    }

    pub fn stats(&self) -> Vec<PoolStats> {
        POOLS
            .iter()
            .map(|&pool| {
                let p = &self.pools[pool as usize];
                PoolStats {
                    name: pool.name(),
                    used_bytes: p.used_bytes.get(),
                    peak_bytes: p.peak_bytes.get(),
                    max_bytes: self.limits.max(pool),
                    refused: p.refused.get(),
                    over_bytes: p.over_bytes.get(),
                    waits: p.waits.get(),
                    waiting: p.queue.borrow().len() as u64,
                }
            })
            .collect()
    }
}

/// Bytes charged to a pool; released when dropped.
pub struct Reservation {
    budget: Rc<Budget>,
    pool: Pool,
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes over `other`'s bytes (same budget and pool): one reservation
    /// for a whole response.
    pub fn absorb(&mut self, other: Reservation) {
        assert!(
            Rc::ptr_eq(&self.budget, &other.budget) && self.pool == other.pool,
            "reservations of one pool"
        );
        self.bytes += other.bytes;
        std::mem::forget(other);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.pool, self.bytes);
    }
}

/// The future of `Budget::reserve`.
pub struct Reserve {
    budget: Rc<Budget>,
    pool: Pool,
    bytes: u64,
    /// Our place in the pool's queue once we wait.
    waiter: Option<Rc<Waiter>>,
}

impl Future for Reserve {
    type Output = Result<Reservation, NoWait>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (budget, pool, bytes) = (self.budget.clone(), self.pool, self.bytes);
        let granted = |budget: Rc<Budget>| Reservation {
            budget,
            pool,
            bytes,
        };
        if let Some(w) = &self.waiter {
            if w.granted.get() {
                self.waiter = None;
                return Poll::Ready(Ok(granted(budget)));
            }
            *w.waker.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if bytes > budget.max(pool) {
            return Poll::Ready(Err(NoWait::NeverFits));
        }
        let p = &budget.pools[pool as usize];
        let mut queue = p.queue.borrow_mut();
        if queue.is_empty() && budget.fits(pool, bytes) {
            drop(queue);
            budget.charge(pool, bytes);
            return Poll::Ready(Ok(granted(budget.clone())));
        }
        if queue.len() >= POOL_WAITERS_MAX {
            p.refused.set(p.refused.get() + 1);
            return Poll::Ready(Err(NoWait::QueueFull));
        }
        p.waits.set(p.waits.get() + 1);
        let w = Rc::new(Waiter {
            bytes,
            granted: Cell::new(false),
            waker: RefCell::new(Some(cx.waker().clone())),
        });
        queue.push_back(w.clone());
        drop(queue);
        self.waiter = Some(w);
        Poll::Pending
    }
}

impl Drop for Reserve {
    fn drop(&mut self) {
        let Some(w) = self.waiter.take() else {
            return;
        };
        if w.granted.get() {
            // Granted but never taken: give the bytes back.
            self.budget.release(self.pool, w.bytes);
            return;
        }
        let p = &self.budget.pools[self.pool as usize];
        p.queue.borrow_mut().retain(|x| !Rc::ptr_eq(x, &w));
        // Leaving the head may let the next waiter fit.
        self.budget.grant(self.pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_refuse_release() {
        let b = Budget::new(BudgetLimits::derive(1000, 10_000, 0));
        assert_eq!(b.max(Pool::TailCache), 250 - 62 - 31);
        assert_eq!(b.max(Pool::SearchIndex), 62);
        assert_eq!(b.max(Pool::Compaction), 31);
        let r1 = b.try_reserve(Pool::ProduceInflight, 200).expect("fits");
        assert!(b.try_reserve(Pool::ProduceInflight, 51).is_none());
        let r2 = b
            .try_reserve(Pool::ProduceInflight, 50)
            .expect("fits exactly");
        assert_eq!(b.used(Pool::ProduceInflight), 250);
        drop(r1);
        drop(r2);
        assert_eq!(b.used(Pool::ProduceInflight), 0);
        let s = b.stats();
        assert_eq!(s[1].peak_bytes, 250);
        assert_eq!(s[1].refused, 1);
    }

    #[test]
    fn pools_fit_the_memory() {
        let l = BudgetLimits::derive(1 << 30, u64::MAX, 9 << 20);
        assert!(
            l.total() <= (1 << 30) * 15 / 16 + (9 << 20),
            "a sixteenth stays for the rest"
        );
        assert_eq!(l.request_buffers_bytes_max, ((1 << 30) - (9 << 20)) / 8);
        let b = Budget::new(l);
        assert_eq!(b.stats()[Pool::IoMemory as usize].used_bytes, 9 << 20);
    }

    #[test]
    fn forced_charges_count_the_excess() {
        let b = Budget::new(BudgetLimits::derive(800, 10_000, 0));
        b.charge_forced(Pool::PartitionState, 90);
        b.charge_forced(Pool::PartitionState, 20);
        let s = &b.stats()[Pool::PartitionState as usize];
        assert_eq!((s.used_bytes, s.over_bytes), (110, 10));
        b.discharge(Pool::PartitionState, 110);
        assert_eq!(b.used(Pool::PartitionState), 0);
    }

    fn ready(f: Pin<&mut Reserve>) -> Option<Result<Reservation, NoWait>> {
        let waker = futures::task::noop_waker();
        match f.poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    #[test]
    fn reservation_waits_for_a_release() {
        let b = Budget::new(BudgetLimits::derive(800, 10_000, 0));
        let mut held = Box::pin(b.reserve(Pool::RequestBuffers, 100));
        let held = ready(held.as_mut()).expect("fits").expect("fits");
        let mut waiting = Box::pin(b.reserve(Pool::RequestBuffers, 50));
        assert!(ready(waiting.as_mut()).is_none(), "pool is full");
        assert_eq!(b.waits(Pool::RequestBuffers), 1);
        drop(held);
        let r = ready(waiting.as_mut()).expect("memory was released");
        assert_eq!(r.expect("granted").bytes(), 50);
        assert_eq!(b.stats()[Pool::RequestBuffers as usize].waiting, 0);
    }

    #[test]
    fn waiters_are_served_in_order_and_never_overtaken() {
        // Produce pool: 200 bytes.
        let b = Budget::new(BudgetLimits::derive(800, 10_000, 0));
        let first = b.try_reserve(Pool::ProduceInflight, 150).expect("fits");
        let mut big = Box::pin(b.reserve(Pool::ProduceInflight, 120));
        assert!(ready(big.as_mut()).is_none());
        let mut small = Box::pin(b.reserve(Pool::ProduceInflight, 10));
        assert!(ready(small.as_mut()).is_none(), "fits, but queues behind");
        assert!(
            b.try_reserve(Pool::ProduceInflight, 10).is_none(),
            "no overtaking"
        );
        drop(first);
        let big = ready(big.as_mut()).expect("head granted").expect("ok");
        let small = ready(small.as_mut()).expect("then the next").expect("ok");
        assert_eq!(b.used(Pool::ProduceInflight), 130);
        drop((big, small));
        assert_eq!(b.waits(Pool::ProduceInflight), 2);
    }

    #[test]
    fn dropped_waiters_leave_nothing_and_unblock_the_next() {
        let b = Budget::new(BudgetLimits::derive(800, 10_000, 0));
        let first = b.try_reserve(Pool::ProduceInflight, 150).expect("fits");
        let mut big = Box::pin(b.reserve(Pool::ProduceInflight, 120));
        assert!(ready(big.as_mut()).is_none());
        let mut small = Box::pin(b.reserve(Pool::ProduceInflight, 40));
        assert!(ready(small.as_mut()).is_none());
        drop(big);
        let small = ready(small.as_mut()).expect("head left").expect("ok");
        let mut queued = Box::pin(b.reserve(Pool::ProduceInflight, 100));
        assert!(ready(queued.as_mut()).is_none());
        drop(first);
        assert_eq!(b.used(Pool::ProduceInflight), 140, "granted on release");
        // Granted but dropped before being taken: the bytes come back.
        drop(queued);
        drop(small);
        assert_eq!(b.used(Pool::ProduceInflight), 0);
        assert_eq!(b.stats()[Pool::ProduceInflight as usize].waiting, 0);
        let mut never = Box::pin(b.reserve(Pool::ProduceInflight, 201));
        assert!(matches!(
            ready(never.as_mut()),
            Some(Err(NoWait::NeverFits))
        ));
    }

    #[test]
    fn absorb_and_forced_reservations_release_once() {
        let b = Budget::new(BudgetLimits::derive(800, 10_000, 0));
        let mut r = b.try_reserve(Pool::FetchResponse, 60).expect("fits");
        r.absorb(b.reserve_forced(Pool::FetchResponse, 70));
        assert_eq!(r.bytes(), 130);
        assert_eq!(b.stats()[Pool::FetchResponse as usize].over_bytes, 30);
        drop(r);
        assert_eq!(b.used(Pool::FetchResponse), 0);
    }
}
