//! One partition's state: a small struct with no task, timer, file or
//! pre-sized buffer. Its batches live in the shard's WAL; the partition
//! keeps a sparse index with one `StoredBatch` per WAL entry.
//!
//! Invariants (checked by `check`): `log_start_offset <= high_watermark <=
//! next_offset`; batches are sorted by offset and do not overlap; every
//! batch below the high watermark has a WAL position (is durable).

use bytes::Bytes;
use sluice_wal::Position;

use crate::entry::{EntryHeader, PartitionKey};
use crate::producer_state::ProducerStates;

/// One stored WAL entry of the partition (one produce request's batches).
#[derive(Clone, Debug)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    /// Bytes of the record batches (without the WAL entry header).
    pub bytes: u32,
    /// Where the entry is in the WAL; `None` until the append is durable.
    pub position: Option<Position>,
    /// The batches, while they are in the tail cache or being appended.
    pub cached: Option<Bytes>,
}

#[derive(Debug)]
pub struct Partition {
    pub key: PartitionKey,
    pub next_offset: i64,
    pub log_start_offset: i64,
    /// Last durable offset + 1: consumers see offsets below it.
    pub high_watermark: i64,
    pub batches: Vec<StoredBatch>,
    /// Idempotent producers' sequence windows (empty map when none).
    pub producers: ProducerStates,
}

impl Partition {
    pub fn new(key: PartitionKey) -> Partition {
        Partition {
            key,
            next_offset: 0,
            log_start_offset: 0,
            high_watermark: 0,
            batches: Vec::new(),
            producers: ProducerStates::default(),
        }
    }

    /// Takes `offsets` offsets for a new entry and records it as pending.
    /// Returns its base offset.
    pub fn assign(&mut self, offsets: i64, max_timestamp: i64, records: Bytes) -> i64 {
        assert!(offsets > 0);
        let base_offset = self.next_offset;
        self.next_offset += offsets;
        self.batches.push(StoredBatch {
            base_offset,
            last_offset: self.next_offset - 1,
            max_timestamp,
            bytes: records.len() as u32,
            position: None,
            cached: Some(records),
        });
        base_offset
    }

    /// The entry at `base_offset` is durable at `position`. Returns true if
    /// the high watermark moved.
    pub fn mark_durable(&mut self, base_offset: i64, position: Position) -> bool {
        if let Some(i) = self.find(base_offset) {
            self.batches[i].position = Some(position);
        }
        self.advance_high_watermark()
    }

    /// The append of the entry at `base_offset` failed: its offsets are
    /// skipped (a gap, never reused: the WAL may still hold the entry).
    pub fn mark_failed(&mut self, base_offset: i64) -> bool {
        if let Some(i) = self.find(base_offset) {
            assert!(
                self.batches[i].position.is_none(),
                "a durable entry cannot fail"
            );
            self.batches.remove(i);
        }
        self.advance_high_watermark()
    }

    /// Moves the high watermark over every durable entry that follows it.
    fn advance_high_watermark(&mut self) -> bool {
        let before = self.high_watermark;
        let mut i = self.locate(self.high_watermark);
        while let Some(b) = self.batches.get(i) {
            if b.position.is_none() {
                break;
            }
            self.high_watermark = b.last_offset + 1;
            i += 1;
        }
        assert!(
            self.log_start_offset <= self.high_watermark && self.high_watermark <= self.next_offset
        );
        self.high_watermark != before
    }

    /// Adds an entry found by recovery. Entries must come in offset order.
    pub fn push_recovered(
        &mut self,
        header: &EntryHeader,
        bytes: u32,
        position: Position,
    ) -> Result<(), String> {
        if header.base_offset < self.next_offset {
            return Err(format!(
                "entry at offset {} below next offset {}",
                header.base_offset, self.next_offset
            ));
        }
        if self.batches.is_empty() {
            self.log_start_offset = header.base_offset;
        }
        self.batches.push(StoredBatch {
            base_offset: header.base_offset,
            last_offset: header.last_offset,
            max_timestamp: header.max_timestamp,
            bytes,
            position: Some(position),
            cached: None,
        });
        self.next_offset = header.last_offset + 1;
        self.high_watermark = self.next_offset;
        Ok(())
    }

    /// Index of the first entry whose last offset is >= `offset`.
    pub fn locate(&self, offset: i64) -> usize {
        self.batches.partition_point(|b| b.last_offset < offset)
    }

    fn find(&self, base_offset: i64) -> Option<usize> {
        self.batches
            .binary_search_by_key(&base_offset, |b| b.base_offset)
            .ok()
    }

    pub fn batch_mut(&mut self, base_offset: i64) -> Option<&mut StoredBatch> {
        let i = self.find(base_offset)?;
        Some(&mut self.batches[i])
    }

    /// The durable entries, in offset order.
    pub fn durable(&self) -> &[StoredBatch] {
        let end = self.locate(self.high_watermark);
        &self.batches[..end]
    }

    /// ListOffsets by timestamp: the first durable entry whose largest
    /// timestamp is at or after `timestamp_ms`.
    pub fn by_timestamp(&self, timestamp_ms: i64) -> Option<&StoredBatch> {
        self.durable()
            .iter()
            .find(|b| b.max_timestamp >= timestamp_ms)
    }

    /// ListOffsets -3 (max timestamp): the durable entry with the largest
    /// timestamp (the first one on ties).
    pub fn max_timestamp(&self) -> Option<&StoredBatch> {
        self.durable()
            .iter()
            .fold(None, |best: Option<&StoredBatch>, b| match best {
                Some(x) if x.max_timestamp >= b.max_timestamp => Some(x),
                _ => Some(b),
            })
    }

    pub fn check(&self) -> Result<(), String> {
        if !(self.log_start_offset <= self.high_watermark
            && self.high_watermark <= self.next_offset)
        {
            return Err(format!(
                "offsets out of order: log start {} hw {} next {}",
                self.log_start_offset, self.high_watermark, self.next_offset
            ));
        }
        for w in self.batches.windows(2) {
            if w[0].last_offset >= w[1].base_offset {
                return Err(format!("entries overlap at {}", w[1].base_offset));
            }
        }
        if self.durable().iter().any(|b| b.position.is_none()) {
            return Err("an entry below the high watermark has no WAL position".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part() -> Partition {
        Partition::new(PartitionKey {
            topic_id: [0; 16],
            partition: 0,
        })
    }

    #[test]
    fn high_watermark_follows_durability_in_order() {
        let mut p = part();
        let a = p.assign(3, 10, Bytes::from_static(b"a"));
        let b = p.assign(2, 20, Bytes::from_static(b"b"));
        assert_eq!((a, b, p.next_offset, p.high_watermark), (0, 3, 5, 0));
        assert!(
            !p.mark_durable(b, Position(100)),
            "b is durable but a is not yet"
        );
        assert_eq!(p.high_watermark, 0);
        assert!(p.mark_durable(a, Position(50)));
        assert_eq!(p.high_watermark, 5);
        assert_eq!(p.locate(4), 1);
        assert_eq!(p.by_timestamp(15).map(|x| x.base_offset), Some(3));
        assert_eq!(p.max_timestamp().map(|x| x.base_offset), Some(3));
        p.check().expect("invariants");
    }

    #[test]
    fn failed_append_leaves_a_gap() {
        let mut p = part();
        let a = p.assign(1, 0, Bytes::from_static(b"a"));
        let b = p.assign(1, 0, Bytes::from_static(b"b"));
        p.mark_durable(b, Position(9));
        assert!(p.mark_failed(a));
        assert_eq!(
            (p.high_watermark, p.next_offset, p.batches.len()),
            (2, 2, 1)
        );
        p.check().expect("invariants");
    }
}
