//! The shard's tail cache: which durable entries still hold their batches in
//! memory (`StoredBatch::cached`), oldest first. Every cached byte is charged
//! to the budget's `TailCache` pool; when a new entry does not fit, the
//! oldest entries are evicted (their batches are then read from the WAL).
//!
//! Bound: the pool's `tail_cache_bytes_max`. An entry larger than the whole
//! pool is not cached. Lives on one shard.

use std::collections::VecDeque;

use crate::budget::Reservation;
use crate::entry::PartitionKey;

pub struct TailItem {
    pub key: PartitionKey,
    pub base_offset: i64,
    /// Held for its `Drop`: releases the entry's bytes from the pool.
    #[allow(dead_code)]
    pub reservation: Reservation,
}

#[derive(Default)]
pub struct TailCache {
    items: VecDeque<TailItem>,
    pub evictions: u64,
}

impl TailCache {
    pub fn push(&mut self, item: TailItem) {
        self.items.push_back(item);
    }

    /// Removes the oldest entry; the caller drops its batches from the
    /// partition index (the reservation is released when `TailItem` drops).
    pub fn pop_oldest(&mut self) -> Option<TailItem> {
        let item = self.items.pop_front()?;
        self.evictions += 1;
        Some(item)
    }

    /// Forgets every entry of a deleted partition.
    pub fn forget(&mut self, key: &PartitionKey) {
        self.items.retain(|i| i.key != *key);
    }

    /// Forgets a partition's entries at or above `offset` (truncation).
    pub fn forget_from(&mut self, key: &PartitionKey, offset: i64) {
        self.items
            .retain(|i| i.key != *key || i.base_offset < offset);
    }

    /// Forgets a partition's entries whose base offset lies in
    /// `base..=last` (entries a replacement took the place of).
    pub fn forget_range(&mut self, key: &PartitionKey, base: i64, last: i64) {
        self.items
            .retain(|i| i.key != *key || i.base_offset < base || i.base_offset > last);
    }

    /// Forgets the entries below each given partition's log start.
    pub fn forget_below(&mut self, log_starts: &std::collections::HashMap<PartitionKey, i64>) {
        self.items
            .retain(|i| log_starts.get(&i.key).map_or(true, |s| i.base_offset >= *s));
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
}
