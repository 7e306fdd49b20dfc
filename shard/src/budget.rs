//! The shard's memory budget: named pools with byte limits, charged before
//! memory grows. A reservation that does not fit is refused (the caller
//! answers `ShardError::Busy`), or, for request buffers, waited for (the
//! connection stops reading its socket: backpressure); nothing ever goes
//! past a pool's limit, except partition state that metadata already
//! committed (counted in `over_bytes`, and kept rare by the placement limit).
//!
//! Lives on one shard (core); `Rc`/`Cell`/`RefCell` only.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

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
}

const POOLS: [Pool; POOL_COUNT] = [
    Pool::TailCache,
    Pool::ProduceInflight,
    Pool::FetchResponse,
    Pool::RequestBuffers,
    Pool::PartitionState,
    Pool::IoMemory,
];
const POOL_COUNT: usize = 6;

/// Connections waiting for request-buffer memory at once; more wait by
/// polling again when woken by any release (they all re-register).
pub const REQUEST_WAITERS_MAX: usize = 16_384;

impl Pool {
    pub fn name(self) -> &'static str {
        match self {
            Pool::TailCache => "tail_cache",
            Pool::ProduceInflight => "produce_inflight",
            Pool::FetchResponse => "fetch_response",
            Pool::RequestBuffers => "request_buffers",
            Pool::PartitionState => "partition_state",
            Pool::IoMemory => "io_memory",
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
}

impl BudgetLimits {
    /// The executor's `io_memory` arena comes off the top; of the rest: at
    /// most a quarter for the tail cache (and never more than
    /// `tail_cache_bytes_max`), a quarter for in-flight produce data, an
    /// eighth each for fetch responses, request buffers and partition state.
    /// The remaining eighth (at least) is for what is not pooled: executor,
    /// task and connection structs, allocator slack.
    pub fn derive(
        memory_bytes_max: u64,
        tail_cache_bytes_max: u64,
        io_memory_bytes: u64,
    ) -> BudgetLimits {
        let rest = memory_bytes_max.saturating_sub(io_memory_bytes);
        BudgetLimits {
            tail_cache_bytes_max: tail_cache_bytes_max.min(rest / 4),
            produce_inflight_bytes_max: rest / 4,
            fetch_response_bytes_max: rest / 8,
            request_buffers_bytes_max: rest / 8,
            partition_state_bytes_max: rest / 8,
            io_memory_bytes,
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
}

/// One shard's budget.
pub struct Budget {
    limits: BudgetLimits,
    pools: [PoolState; POOL_COUNT],
    /// Connections parked until request-buffer memory frees.
    request_waiters: RefCell<Vec<Waker>>,
    /// Times a connection had to wait for request-buffer memory.
    request_waits: Cell<u64>,
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
    /// Bytes charged past the limit (partition state of committed metadata).
    pub over_bytes: u64,
}

impl Budget {
    pub fn new(limits: BudgetLimits) -> Rc<Budget> {
        let budget = Budget {
            limits,
            pools: Default::default(),
            request_waiters: RefCell::new(Vec::new()),
            request_waits: Cell::new(0),
        };
        budget.charge_forced(Pool::IoMemory, limits.io_memory_bytes);
        Rc::new(budget)
    }

    /// Waits until `bytes` fit the request-buffer pool, then reserves them.
    /// The caller must not ask for more than the pool's limit.
    pub fn reserve_request(self: &Rc<Self>, bytes: u64) -> ReserveRequest {
        assert!(
            bytes <= self.max(Pool::RequestBuffers),
            "a request of {bytes} bytes can never fit its pool"
        );
        ReserveRequest {
            budget: self.clone(),
            bytes,
            waited: false,
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

    /// Returns bytes charged with `charge_forced`.
    pub fn discharge(&self, pool: Pool, bytes: u64) {
        self.release(pool, bytes);
    }

    /// Times a connection waited for request-buffer memory.
    pub fn request_waits(&self) -> u64 {
        self.request_waits.get()
    }

    /// Charges `bytes` to `pool` if they fit under its limit.
    pub fn try_reserve(self: &Rc<Self>, pool: Pool, bytes: u64) -> Option<Reservation> {
        let p = &self.pools[pool as usize];
        let used = p.used_bytes.get();
        if used + bytes > self.limits.max(pool) {
            p.refused.set(p.refused.get() + 1);
            return None;
        }
        p.used_bytes.set(used + bytes);
        p.peak_bytes.set(p.peak_bytes.get().max(used + bytes));
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

    #[cfg(test)]
    pub fn used(&self, pool: Pool) -> u64 {
        self.pools[pool as usize].used_bytes.get()
    }

    pub fn max(&self, pool: Pool) -> u64 {
        self.limits.max(pool)
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
        if pool == Pool::RequestBuffers {
            let waiters = std::mem::take(&mut *self.request_waiters.borrow_mut());
            waiters.into_iter().for_each(Waker::wake);
        }
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
}

/// The future of `Budget::reserve_request`.
pub struct ReserveRequest {
    budget: Rc<Budget>,
    bytes: u64,
    waited: bool,
}

impl Future for ReserveRequest {
    type Output = Reservation;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reservation> {
        let (budget, bytes) = (self.budget.clone(), self.bytes);
        if budget.fits(Pool::RequestBuffers, bytes) {
            if let Some(r) = budget.try_reserve(Pool::RequestBuffers, bytes) {
                return Poll::Ready(r);
            }
        }
        if !self.waited {
            self.waited = true;
            budget.request_waits.set(budget.request_waits.get() + 1);
        }
        let mut waiters = budget.request_waiters.borrow_mut();
        if waiters.len() < REQUEST_WAITERS_MAX {
            waiters.push(cx.waker().clone());
        } else {
            // Full: wake at once and retry (bounded memory over fairness).
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.pool, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_refuse_release() {
        let b = Budget::new(BudgetLimits::derive(1000, 10_000, 0));
        assert_eq!(b.max(Pool::TailCache), 250);
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
            l.total() <= (1 << 30) * 7 / 8 + (9 << 20),
            "an eighth stays for the rest"
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

    #[test]
    fn request_reservation_waits_for_a_release() {
        use futures::FutureExt;
        let b = Budget::new(BudgetLimits::derive(800, 10_000, 0));
        let held = b.reserve_request(100).now_or_never().expect("fits");
        let mut waiting = Box::pin(b.reserve_request(50));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(waiting.as_mut().poll(&mut cx).is_pending(), "pool is full");
        assert_eq!(b.request_waits(), 1);
        drop(held);
        let r = match waiting.as_mut().poll(&mut cx) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("memory was released"),
        };
        assert_eq!(r.bytes(), 50);
    }
}
