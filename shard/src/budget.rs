//! The shard's memory budget: named pools with byte limits, charged before
//! memory grows. A reservation that does not fit is refused (the caller
//! answers `ShardError::Busy`); nothing ever goes past a pool's limit.
//!
//! Lives on one shard (core); `Rc`/`Cell` only.

use std::cell::Cell;
use std::rc::Rc;

/// The pools of one shard.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pool {
    /// Batches kept in memory after they are durable (the tail cache).
    TailCache = 0,
    /// Produce data between validation and durability.
    ProduceInflight = 1,
    /// Batches read back from the WAL for a fetch response.
    FetchResponse = 2,
}

const POOLS: [Pool; 3] = [Pool::TailCache, Pool::ProduceInflight, Pool::FetchResponse];

impl Pool {
    pub fn name(self) -> &'static str {
        match self {
            Pool::TailCache => "tail_cache",
            Pool::ProduceInflight => "produce_inflight",
            Pool::FetchResponse => "fetch_response",
        }
    }
}

/// Limits of the pools, derived from the shard's `memory_bytes_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetLimits {
    pub tail_cache_bytes_max: u64,
    pub produce_inflight_bytes_max: u64,
    pub fetch_response_bytes_max: u64,
}

impl BudgetLimits {
    /// Half of the memory at most goes to the tail cache (and never more than
    /// `tail_cache_bytes_max`); a quarter each to in-flight produce data
    /// and fetch responses.
    pub fn derive(memory_bytes_max: u64, tail_cache_bytes_max: u64) -> BudgetLimits {
        BudgetLimits {
            tail_cache_bytes_max: tail_cache_bytes_max.min(memory_bytes_max / 2),
            produce_inflight_bytes_max: memory_bytes_max / 4,
            fetch_response_bytes_max: memory_bytes_max / 4,
        }
    }

    fn max(&self, pool: Pool) -> u64 {
        match pool {
            Pool::TailCache => self.tail_cache_bytes_max,
            Pool::ProduceInflight => self.produce_inflight_bytes_max,
            Pool::FetchResponse => self.fetch_response_bytes_max,
        }
    }
}

#[derive(Default)]
struct PoolState {
    used_bytes: Cell<u64>,
    peak_bytes: Cell<u64>,
    refused: Cell<u64>,
}

/// One shard's budget.
pub struct Budget {
    limits: BudgetLimits,
    pools: [PoolState; 3],
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
}

impl Budget {
    pub fn new(limits: BudgetLimits) -> Rc<Budget> {
        Rc::new(Budget {
            limits,
            pools: Default::default(),
        })
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
        let b = Budget::new(BudgetLimits::derive(1000, 10_000));
        assert_eq!(b.max(Pool::TailCache), 500);
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
}
