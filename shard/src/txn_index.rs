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
//! Recovery (`TxnEvents`) gathers the transaction events of every stored
//! entry it meets (kinds 1, 5 and 6, in WAL order, which is not offset
//! order once entries were copied forward) and replays, once per
//! partition at its end, those of the entries its index kept, in offset
//! order (`Partition::replay_recovered_txns`).
//!
//! Pure: no I/O, no clock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::batch;
use crate::entry::PartitionKey;

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

/// What a stored batch does to its partition's transaction state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnEventKind {
    /// A transactional batch: opens its producer's transaction unless one
    /// is open.
    Begin,
    /// A marker (`batch::end_txn`): closes it, committed or aborted.
    End { commit: bool },
}

/// One transaction event of a stored entry, found by recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnEvent {
    /// The batch's base offset.
    pub offset: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub kind: TxnEventKind,
    /// The WAL position of the entry holding the batch: the event counts
    /// only while the partition's index holds that entry there.
    pub position: u64,
}

/// Bytes one gathered event takes.
pub const TXN_EVENT_BYTES: u64 = std::mem::size_of::<TxnEvent>() as u64;

/// The transaction event of one stored batch, if it has one (the batches
/// `Partition::replay_txns` follows): a transactional batch of a producer
/// opens, a marker closes.
pub fn batch_event(b: &[u8], position: u64) -> Option<TxnEvent> {
    if !batch::is_transactional(b) {
        return None;
    }
    let h = batch::producer_fields(b);
    if h.producer_id < 0 {
        return None;
    }
    let kind = if batch::is_control(b) {
        TxnEventKind::End {
            commit: batch::end_txn(b)?.commit,
        }
    } else {
        TxnEventKind::Begin
    };
    Some(TxnEvent {
        offset: batch::base_offset(b),
        producer_id: h.producer_id,
        producer_epoch: h.producer_epoch,
        kind,
        position,
    })
}

/// The transaction events recovery gathers, per partition (module doc).
/// Only transactional batches and markers make events, and only the first
/// transactional batch of a producer in an entry (or the first after its
/// marker there): the others cannot open anything, as nothing of another
/// entry lies between them. A partition without any costs nothing.
#[derive(Debug, Default)]
pub struct TxnEvents {
    parts: HashMap<PartitionKey, Vec<TxnEvent>>,
    /// Producers whose transaction an event of the entry being read
    /// opened (scratch, empty between entries).
    begun: HashSet<i64>,
    /// Events held, and the most held at once.
    len: u64,
    peak: u64,
}

impl TxnEvents {
    /// Gathers the events of the batches of the entry of `key` at WAL
    /// `position`.
    pub fn gather(&mut self, key: PartitionKey, records: &[u8], position: u64) {
        let mut events = batch::batches(records)
            .filter_map(|b| batch_event(b, position))
            .filter(|e| match e.kind {
                TxnEventKind::Begin => self.begun.insert(e.producer_id),
                TxnEventKind::End { .. } => {
                    self.begun.remove(&e.producer_id);
                    true
                }
            })
            .peekable();
        if events.peek().is_some() {
            let held = self.parts.entry(key).or_default();
            let before = held.len();
            held.extend(events);
            self.len += (held.len() - before) as u64;
            self.peak = self.peak.max(self.len);
        }
        self.begun.clear();
    }

    /// The partition's log was truncated at `end`: its entries at or above
    /// it are gone, and their events with them.
    pub fn truncate(&mut self, key: &PartitionKey, end: i64) {
        let Some(events) = self.parts.get_mut(key) else {
            return;
        };
        let before = events.len();
        events.retain(|e| e.offset < end);
        self.len -= (before - events.len()) as u64;
        if events.is_empty() {
            self.parts.remove(key);
        }
    }

    /// The partition's log restarted: none of its events counts.
    pub fn clear(&mut self, key: &PartitionKey) {
        if let Some(events) = self.parts.remove(key) {
            self.len -= events.len() as u64;
        }
    }

    /// The partitions with events.
    pub fn keys(&self) -> Vec<PartitionKey> {
        self.parts.keys().copied().collect()
    }

    /// Takes the events of a partition, in the order they were gathered.
    pub fn take(&mut self, key: &PartitionKey) -> Vec<TxnEvent> {
        let events = self.parts.remove(key).unwrap_or_default();
        self.len -= events.len() as u64;
        events
    }

    /// The bytes the events take.
    pub fn bytes(&self) -> u64 {
        self.len * TXN_EVENT_BYTES
    }

    /// The most bytes the events took at once.
    pub fn peak_bytes(&self) -> u64 {
        self.peak * TXN_EVENT_BYTES
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
    fn recovery_gathers_one_event_per_opening_batch_and_marker() {
        use crate::batch::testing::{batch, transactional, with_producer};
        use crate::batch::{control_batch, EndTxn};
        let key = PartitionKey {
            topic_id: [1; 16],
            partition: 0,
        };
        let txn = |pid: i64| transactional(with_producer(batch(1, 0, b"t"), pid, 0, 0));
        let commit = EndTxn {
            commit: true,
            coordinator_epoch: 0,
        };
        let mut b = [
            txn(1),
            txn(2),
            txn(1),
            batch(1, 0, b"plain"),
            control_batch(1, 0, commit, 0),
            txn(1),
        ]
        .concat();
        crate::batch::patch(&mut b, 10, None, 0);
        let mut events = TxnEvents::default();
        events.gather(key, &batch(3, 0, b"plain"), 1);
        assert!(events.keys().is_empty(), "plain batches cost nothing");
        events.gather(key, &b, 2);
        let got: Vec<(i64, i64, TxnEventKind)> = events.parts[&key]
            .iter()
            .map(|e| (e.offset, e.producer_id, e.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                (10, 1, TxnEventKind::Begin),
                (11, 2, TxnEventKind::Begin),
                (14, 1, TxnEventKind::End { commit: true }),
                (15, 1, TxnEventKind::Begin),
            ]
        );
        assert_eq!(events.bytes(), 4 * TXN_EVENT_BYTES);
        events.truncate(&key, 14);
        assert_eq!(events.bytes(), 2 * TXN_EVENT_BYTES);
        assert_eq!(events.peak_bytes(), 4 * TXN_EVENT_BYTES);
        events.clear(&key);
        assert!(events.keys().is_empty() && events.bytes() == 0);
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
