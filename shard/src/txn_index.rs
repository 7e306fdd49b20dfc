//! The transaction state of one partition (KIP-98, the data-plane side):
//! the transactions open in it, those whose marker is written but not yet
//! below the high watermark, and the index of aborted transactions that
//! read_committed fetches answer with.
//!
//! The rules are Kafka's (`ProducerStateManager`, `TransactionIndex`):
//! - a transactional batch of a producer with no open transaction here
//!   opens one at its base offset;
//! - a marker (a control batch, `batch::end_txn`) closes the producer's
//!   open transaction; an abort marker adds `(producer id, first offset,
//!   marker offset)` to the aborted index. A marker of a producer with no
//!   open transaction here closes nothing and adds nothing;
//! - the last stable offset (LSO) is the first offset of the oldest
//!   transaction that is open, or closed by a marker the high watermark
//!   has not passed yet, else the high watermark; never below the log
//!   start. read_committed consumers read below it;
//! - aborted entries whose marker is below the log start are forgotten:
//!   an entry whose transaction straddles the log start stays, so a
//!   consumer starting there still filters the transaction's records.
//!
//! A partition that never saw a transaction holds none of this (`None` in
//! `Partition::txns`). The bytes it holds (`Txns::bytes`) are charged to
//! the `partition_state` pool by the engine around every change, as index
//! entries are; produces wait while that pool is full, which bounds the
//! aborted index with the rest of the partition state.
//!
//! Pure: no I/O, no clock.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Bytes charged for one open transaction: its entry in the map by first
/// offset and in the map by producer (keys, values and the maps' own
/// overhead, estimated).
pub const OPEN_TXN_BYTES: u64 = 64;
/// Bytes charged for one closed transaction whose marker the high
/// watermark has not passed yet.
pub const SETTLING_TXN_BYTES: u64 = std::mem::size_of::<Settling>() as u64;
/// Bytes charged for one aborted-index entry.
pub const ABORTED_TXN_BYTES: u64 = std::mem::size_of::<AbortedTxn>() as u64;
/// Bytes charged for the (boxed) state itself while a partition has one.
pub const TXNS_BYTES: u64 = std::mem::size_of::<Txns>() as u64;

/// One aborted transaction of the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    /// The offset of its first batch here.
    pub first_offset: i64,
    /// The offset of its abort marker.
    pub last_offset: i64,
    /// The LSO once this transaction was closed, had the high watermark
    /// been at the log end (Kafka's `lastStableOffset` of a transaction
    /// index entry): every transaction aborted later starts at or above
    /// it, so a lookup can stop there.
    pub last_stable_offset: i64,
}

/// A closed transaction whose marker is not yet below the high watermark:
/// it still holds the LSO at its first offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Settling {
    producer_id: i64,
    first_offset: i64,
    marker_offset: i64,
}

/// The transaction state of one partition (module doc).
#[derive(Debug, Default)]
pub struct Txns {
    /// Open transactions: first offset -> producer id.
    by_first: BTreeMap<i64, i64>,
    /// Open transactions: producer id -> first offset.
    open: HashMap<i64, i64>,
    /// Closed transactions whose marker the high watermark has not passed,
    /// in marker order (which is offset order).
    settling: VecDeque<Settling>,
    /// Aborted transactions, in marker order.
    aborted: VecDeque<AbortedTxn>,
}

impl Txns {
    /// The bytes this state holds, as charged to `partition_state`.
    pub fn bytes(&self) -> u64 {
        TXNS_BYTES
            + self.open.len() as u64 * OPEN_TXN_BYTES
            + self.settling.len() as u64 * SETTLING_TXN_BYTES
            + self.aborted.len() as u64 * ABORTED_TXN_BYTES
    }

    /// Nothing is tracked: the partition may drop this state.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.settling.is_empty() && self.aborted.is_empty()
    }

    /// The first offset of `producer_id`'s open transaction here.
    pub fn open_first(&self, producer_id: i64) -> Option<i64> {
        self.open.get(&producer_id).copied()
    }

    /// Entries of the aborted index.
    #[cfg(test)]
    pub fn aborted_len(&self) -> usize {
        self.aborted.len()
    }

    /// A transactional batch of `producer_id` at `first_offset`: opens its
    /// transaction unless one is open. Returns true if it opened one.
    pub fn begin(&mut self, producer_id: i64, first_offset: i64) -> bool {
        if self.open.contains_key(&producer_id) {
            return false;
        }
        self.open.insert(producer_id, first_offset);
        self.by_first.insert(first_offset, producer_id);
        true
    }

    /// A marker of `producer_id` at `marker_offset`: closes its open
    /// transaction (abort: into the aborted index). Returns the closed
    /// transaction's first offset, `None` when none was open here.
    pub fn end(&mut self, producer_id: i64, marker_offset: i64, commit: bool) -> Option<i64> {
        let first_offset = self.open.remove(&producer_id)?;
        self.by_first.remove(&first_offset);
        self.settling.push_back(Settling {
            producer_id,
            first_offset,
            marker_offset,
        });
        if !commit {
            let others = self.by_first.keys().next().copied();
            let last_stable_offset = others.map_or(marker_offset + 1, |f| f.min(marker_offset + 1));
            self.aborted.push_back(AbortedTxn {
                producer_id,
                first_offset,
                last_offset: marker_offset,
                last_stable_offset,
            });
        }
        Some(first_offset)
    }

    /// Forgets the closed transactions whose marker is below `high_watermark`:
    /// they no longer hold the LSO.
    pub fn settle(&mut self, high_watermark: i64) {
        while self
            .settling
            .front()
            .is_some_and(|s| s.marker_offset < high_watermark)
        {
            self.settling.pop_front();
        }
    }

    /// The last stable offset (module doc).
    pub fn last_stable_offset(&self, high_watermark: i64, log_start: i64) -> i64 {
        let open = self.by_first.keys().next().copied();
        let settling = self
            .settling
            .iter()
            .filter(|s| s.marker_offset >= high_watermark)
            .map(|s| s.first_offset)
            .min();
        let first = match (open, settling) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        first
            .map_or(high_watermark, |f| f.min(high_watermark))
            .max(log_start)
    }

    /// Forgets aborted entries whose marker is below `log_start`.
    pub fn prune_below(&mut self, log_start: i64) {
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start)
        {
            self.aborted.pop_front();
        }
    }

    /// The log was truncated at `end`: transactions opened at or above it
    /// are forgotten, those closed by a marker at or above it are open
    /// again, and aborted entries whose marker was cut go.
    pub fn truncate(&mut self, end: i64) {
        let cut: Vec<i64> = self.by_first.range(end..).map(|(_, pid)| *pid).collect();
        for pid in cut {
            if let Some(first) = self.open.remove(&pid) {
                self.by_first.remove(&first);
            }
        }
        while self.settling.back().is_some_and(|s| s.marker_offset >= end) {
            let Some(s) = self.settling.pop_back() else {
                break;
            };
            // A producer has one transaction open at a time, and any it
            // opened after this marker lay above the cut.
            if s.first_offset < end && !self.open.contains_key(&s.producer_id) {
                self.open.insert(s.producer_id, s.first_offset);
                self.by_first.insert(s.first_offset, s.producer_id);
            }
        }
        while self.aborted.back().is_some_and(|a| a.last_offset >= end) {
            self.aborted.pop_back();
        }
    }

    /// The aborted transactions a read_committed fetch from `fetch_offset`
    /// whose last returned offset is `last_offset` must filter:
    /// `(producer id, first offset)` of every entry whose marker is at or
    /// above `fetch_offset` and whose first offset is at or below
    /// `last_offset` (Kafka's `collectAbortedTransactions`), in marker
    /// order. Stops at the first entry whose LSO passed `last_offset`:
    /// every later one starts above it.
    pub fn collect_aborted(&self, fetch_offset: i64, last_offset: i64) -> Vec<(i64, i64)> {
        let from = self
            .aborted
            .partition_point(|a| a.last_offset < fetch_offset);
        let mut out = Vec::new();
        for a in self.aborted.range(from..) {
            if a.first_offset <= last_offset {
                out.push((a.producer_id, a.first_offset));
            }
            if a.last_stable_offset > last_offset {
                break;
            }
        }
        out
    }

    /// Whether the batch of `producer_id` at `offset` belongs to an aborted
    /// transaction (the compaction key map must not count its records).
    pub fn is_aborted(&self, producer_id: i64, offset: i64) -> bool {
        let from = self.aborted.partition_point(|a| a.last_offset < offset);
        for a in self.aborted.range(from..) {
            if a.producer_id == producer_id && a.first_offset <= offset {
                return true;
            }
            if a.last_stable_offset > offset {
                return false;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_close_and_the_last_stable_offset() {
        let mut t = Txns::default();
        assert_eq!(t.last_stable_offset(10, 0), 10, "nothing open: the HW");
        assert!(t.begin(7, 3));
        assert!(!t.begin(7, 5), "already open");
        assert!(t.begin(8, 6));
        assert_eq!(t.open_first(7), Some(3));
        assert_eq!(t.last_stable_offset(10, 0), 3);
        assert_eq!(t.last_stable_offset(2, 0), 2, "never above the HW");
        assert_eq!(t.last_stable_offset(10, 4), 4, "never below the log start");
        // Producer 7 commits at 9: its transaction holds the LSO until the
        // HW passes the marker.
        assert_eq!(t.end(7, 9, true), Some(3));
        assert_eq!(t.open_first(7), None);
        assert_eq!(t.last_stable_offset(9, 0), 3);
        t.settle(9);
        assert_eq!(t.last_stable_offset(9, 0), 3, "marker at 9 not below HW 9");
        t.settle(10);
        assert_eq!(t.last_stable_offset(10, 0), 6, "producer 8 still open");
        assert_eq!(t.end(8, 11, true), Some(6));
        t.settle(12);
        assert_eq!(t.last_stable_offset(12, 0), 12);
        assert_eq!(t.end(9, 13, false), None, "no open transaction: nothing");
        assert_eq!(t.aborted_len(), 0);
        assert!(t.is_empty());
    }

    #[test]
    fn aborts_are_indexed_and_collected_like_kafka() {
        let mut t = Txns::default();
        t.begin(1, 0);
        t.begin(2, 2);
        t.end(1, 5, false); // aborted 0..=5, LSO after: 2 (producer 2 open)
        t.begin(3, 6);
        t.end(2, 8, true);
        t.end(3, 9, false); // aborted 6..=9, LSO after: 10
        t.begin(4, 20);
        t.end(4, 25, false); // aborted 20..=25
        assert_eq!(t.aborted_len(), 3);
        assert_eq!(t.collect_aborted(0, 4), vec![(1, 0)]);
        assert_eq!(t.collect_aborted(0, 9), vec![(1, 0), (3, 6)]);
        assert_eq!(t.collect_aborted(6, 30), vec![(3, 6), (4, 20)]);
        assert_eq!(t.collect_aborted(10, 19), Vec::<(i64, i64)>::new());
        assert_eq!(t.collect_aborted(26, 40), Vec::<(i64, i64)>::new());
        assert!(t.is_aborted(1, 3) && t.is_aborted(3, 7) && t.is_aborted(4, 20));
        assert!(!t.is_aborted(2, 3) && !t.is_aborted(1, 6) && !t.is_aborted(3, 12));
    }

    #[test]
    fn pruning_keeps_an_entry_straddling_the_log_start() {
        let mut t = Txns::default();
        t.begin(1, 0);
        t.end(1, 5, false);
        t.begin(2, 6);
        t.end(2, 9, false);
        t.prune_below(5);
        assert_eq!(t.aborted_len(), 2, "marker at 5 is not below 5");
        t.prune_below(7);
        assert_eq!(t.aborted_len(), 1);
        assert_eq!(
            t.collect_aborted(7, 20),
            vec![(2, 6)],
            "starts below the log start"
        );
        t.prune_below(10);
        t.settle(10);
        assert!(t.is_empty());
    }

    #[test]
    fn truncation_forgets_above_and_reopens_what_its_cut_markers_closed() {
        let mut t = Txns::default();
        t.begin(1, 0);
        t.begin(2, 3);
        t.end(1, 6, false);
        t.begin(3, 8);
        t.truncate(5);
        assert_eq!(t.open_first(1), Some(0), "its marker at 6 was cut");
        assert_eq!(t.open_first(2), Some(3));
        assert_eq!(t.open_first(3), None, "opened at 8, cut");
        assert_eq!(t.aborted_len(), 0);
        assert_eq!(t.last_stable_offset(5, 0), 0);
        let bytes = t.bytes();
        assert_eq!(bytes, TXNS_BYTES + 2 * OPEN_TXN_BYTES);
        t.truncate(0);
        assert!(t.is_empty());
    }
}
