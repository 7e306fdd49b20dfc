//! Idempotent producer state of one partition: per producer id, its epoch
//! and the sequence ranges of its last `BATCHES_KEPT` entries, with the
//! offsets they were written at.
//!
//! The rules are Kafka's (`ProducerStateManager`/`ProducerAppendInfo`):
//! - a batch whose epoch is older than the known one is fenced
//!   (`ProducerError::FencedEpoch`, INVALID_PRODUCER_EPOCH);
//! - a batch whose sequence range equals one of the last five of the same
//!   epoch is a duplicate: it is answered with the original offsets and not
//!   written again;
//! - otherwise its first sequence must follow the last one (with
//!   wraparound from `i32::MAX` to 0), or be 0 for a new epoch
//!   (`ProducerError::OutOfOrder`, OUT_OF_ORDER_SEQUENCE_NUMBER);
//! - an unknown (or expired) producer may start at any sequence;
//! - a transaction marker (`check_epoch`, `record_marker`) takes no part
//!   in sequence checks: its epoch must not be older than the known one,
//!   and a newer one becomes the producer's epoch (its sequence window is
//!   cleared), so the older epoch is fenced from then on.
//!
//! Expiry needs no timer: a producer idle for `expiration_ms` counts as
//! unknown when it is looked up, and `record` sweeps the whole map once it
//! has doubled since the last sweep (amortized O(1) per produce). A
//! producer with a transaction open in the partition never expires (the
//! caller passes `i64::MAX` then, and a `keep` rule to the sweep), as in
//! Kafka.
//!
//! State is rebuilt by recovery from the batch headers stored in the WAL
//! (`producerId`, `producerEpoch`, `baseSequence`, `lastOffsetDelta`).

use std::collections::{HashMap, VecDeque};

use crate::batch;
use crate::ShardError;

/// Entries remembered per producer for duplicate detection (Kafka: 5, the
/// most in-flight requests an idempotent producer may have).
pub const BATCHES_KEPT: usize = 5;
/// Smallest map size that triggers a sweep of expired producers.
const SWEEP_LEN_MIN: usize = 64;

/// The producer fields of one produce request's batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

/// Why a batch of a known producer is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerError {
    OutOfOrder { expected: i32, got: i32 },
    FencedEpoch { current: i16, got: i16 },
}

impl From<ProducerError> for ShardError {
    fn from(e: ProducerError) -> ShardError {
        match e {
            ProducerError::OutOfOrder { expected, got } => {
                ShardError::OutOfOrderSequence { expected, got }
            }
            ProducerError::FencedEpoch { current, got } => {
                ShardError::InvalidProducerEpoch { current, got }
            }
        }
    }
}

/// What to do with a batch that passed the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Append,
    /// Already written at these offsets: answer with them, write nothing.
    Duplicate {
        base_offset: i64,
        last_offset: i64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Written {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
    last_offset: i64,
}

#[derive(Debug)]
struct Producer {
    epoch: i16,
    /// Oldest first, at most `BATCHES_KEPT`.
    written: VecDeque<Written>,
    last_ms: i64,
    /// Offset of the last transaction marker recorded, -1 for none: what
    /// keeps a producer without written entries known across a truncation
    /// below it.
    marker_offset: i64,
}

/// Producer state of one partition. Empty (one empty map) for partitions
/// that only see non-idempotent producers.
#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
    sweep_at_len: usize,
}

/// The sequence after `seq`, wrapping from `i32::MAX` to 0 as Kafka does.
pub fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// `base_seq + delta` with Kafka's wraparound.
pub fn seq_plus(base_seq: i32, delta: i32) -> i32 {
    if base_seq > i32::MAX - delta {
        delta - (i32::MAX - base_seq) - 1
    } else {
        base_seq + delta
    }
}

/// Reads the producer fields of validated `records`: `None` for batches
/// without a producer id. Every batch of one request must carry the same
/// producer id and epoch and continue the previous batch's sequence.
pub fn producer_batch(records: &[u8]) -> Result<Option<ProducerBatch>, ShardError> {
    let mut found: Option<ProducerBatch> = None;
    for b in batch::batches(records) {
        let h = batch::producer_fields(b);
        let last_seq = seq_plus(h.base_sequence, h.last_offset_delta.max(0));
        match (&mut found, h.producer_id >= 0) {
            (None, false) => return Ok(None),
            (None, true) => {
                found = Some(ProducerBatch {
                    producer_id: h.producer_id,
                    epoch: h.producer_epoch,
                    first_seq: h.base_sequence,
                    last_seq,
                })
            }
            (Some(f), _)
                if f.producer_id == h.producer_id
                    && f.epoch == h.producer_epoch
                    && next_seq(f.last_seq) == h.base_sequence =>
            {
                f.last_seq = last_seq
            }
            (Some(_), _) => {
                return Err(ShardError::InvalidRecord(
                    "batches of one request mix producers or skip sequences".into(),
                ))
            }
        }
    }
    Ok(found)
}

/// Records the producer fields of every batch of validated `records`, one
/// window entry per batch (batches a follower copied from its leader, or
/// recovered from such an entry): the leader records one entry per produce
/// request, which is one batch per producer and partition for Kafka clients.
/// Control batches are left out: markers are recorded by `record_marker`.
pub fn record_batches(states: &mut ProducerStates, records: &[u8], now_ms: i64) {
    for b in batch::batches(records) {
        let h = batch::producer_fields(b);
        if h.producer_id < 0 || batch::is_control(b) {
            continue;
        }
        let pb = ProducerBatch {
            producer_id: h.producer_id,
            epoch: h.producer_epoch,
            first_seq: h.base_sequence,
            last_seq: seq_plus(h.base_sequence, h.last_offset_delta.max(0)),
        };
        let base = batch::base_offset(b);
        states.record(
            &pb,
            base,
            base + i64::from(h.last_offset_delta.max(0)),
            now_ms,
        );
    }
}

impl ProducerStates {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Decides what to do with `b`; changes nothing.
    pub fn check(
        &self,
        b: &ProducerBatch,
        now_ms: i64,
        expiration_ms: i64,
    ) -> Result<Verdict, ProducerError> {
        let Some(p) = self
            .producers
            .get(&b.producer_id)
            .filter(|p| now_ms.saturating_sub(p.last_ms) < expiration_ms)
        else {
            return Ok(Verdict::Append);
        };
        if b.epoch < p.epoch {
            return Err(ProducerError::FencedEpoch {
                current: p.epoch,
                got: b.epoch,
            });
        }
        if b.epoch > p.epoch {
            return match b.first_seq {
                0 => Ok(Verdict::Append),
                got => Err(ProducerError::OutOfOrder { expected: 0, got }),
            };
        }
        if let Some(w) = p
            .written
            .iter()
            .find(|w| w.first_seq == b.first_seq && w.last_seq == b.last_seq)
        {
            return Ok(Verdict::Duplicate {
                base_offset: w.base_offset,
                last_offset: w.last_offset,
            });
        }
        match p.written.back() {
            None => Ok(Verdict::Append),
            Some(last) if next_seq(last.last_seq) == b.first_seq => Ok(Verdict::Append),
            Some(last) => Err(ProducerError::OutOfOrder {
                expected: next_seq(last.last_seq),
                got: b.first_seq,
            }),
        }
    }

    /// Remembers `b` written at `base_offset..=last_offset` (after `check`
    /// said `Append`, or by recovery).
    pub fn record(&mut self, b: &ProducerBatch, base_offset: i64, last_offset: i64, now_ms: i64) {
        assert!(base_offset <= last_offset);
        let p = self.producers.entry(b.producer_id).or_insert(Producer {
            epoch: b.epoch,
            written: VecDeque::with_capacity(BATCHES_KEPT),
            last_ms: now_ms,
            marker_offset: -1,
        });
        if b.epoch != p.epoch {
            p.epoch = b.epoch;
            p.written.clear();
        }
        if p.written.len() == BATCHES_KEPT {
            p.written.pop_front();
        }
        p.written.push_back(Written {
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            base_offset,
            last_offset,
        });
        p.last_ms = p.last_ms.max(now_ms);
        assert!(p.written.len() <= BATCHES_KEPT);
    }

    /// Whether a write of `producer_id` at `epoch` that takes no part in
    /// sequence checks (a transaction marker, a coordinator's batch) may
    /// go: not when the producer is known (not expired) at a newer epoch.
    /// Changes nothing.
    pub fn check_epoch(
        &self,
        producer_id: i64,
        epoch: i16,
        now_ms: i64,
        expiration_ms: i64,
    ) -> Result<(), ProducerError> {
        match self
            .producers
            .get(&producer_id)
            .filter(|p| now_ms.saturating_sub(p.last_ms) < expiration_ms)
        {
            Some(p) if epoch < p.epoch => Err(ProducerError::FencedEpoch {
                current: p.epoch,
                got: epoch,
            }),
            _ => Ok(()),
        }
    }

    /// Remembers a transaction marker of `producer_id` at `epoch` written
    /// at `offset`: a newer epoch becomes the producer's (its window is
    /// cleared: the new epoch starts at sequence 0), an unknown producer
    /// becomes known at it. Never lowers the epoch (a follower or recovery
    /// meeting an older one keeps what it knows).
    pub fn record_marker(&mut self, producer_id: i64, epoch: i16, offset: i64, now_ms: i64) {
        let p = self.producers.entry(producer_id).or_insert(Producer {
            epoch,
            written: VecDeque::new(),
            last_ms: now_ms,
            marker_offset: offset,
        });
        if epoch > p.epoch {
            p.epoch = epoch;
            p.written.clear();
        }
        p.marker_offset = offset;
        p.last_ms = p.last_ms.max(now_ms);
    }

    /// The append of the entry at `base_offset` failed: forget it, so a
    /// retry is written again rather than answered as a duplicate.
    pub fn forget(&mut self, producer_id: i64, base_offset: i64) {
        if let Some(p) = self.producers.get_mut(&producer_id) {
            p.written.retain(|w| w.base_offset != base_offset);
        }
    }

    /// The log was truncated at `end`: forgets every entry (and marker)
    /// written at or above it, and the producers left with none (they
    /// count as unknown).
    pub fn forget_from(&mut self, end: i64) {
        self.producers.retain(|_, p| {
            p.written.retain(|w| w.base_offset < end);
            if p.marker_offset >= end {
                p.marker_offset = -1;
            }
            !p.written.is_empty() || p.marker_offset >= 0
        });
    }

    /// Drops expired producers once the map doubled since the last sweep,
    /// but those `keep` names (a transaction open in the partition).
    pub fn sweep_if_grown(
        &mut self,
        now_ms: i64,
        expiration_ms: i64,
        keep: impl Fn(i64) -> bool,
    ) -> usize {
        if self.producers.len() < self.sweep_at_len.max(SWEEP_LEN_MIN) {
            return 0;
        }
        let before = self.producers.len();
        self.producers
            .retain(|id, p| now_ms.saturating_sub(p.last_ms) < expiration_ms || keep(*id));
        self.sweep_at_len = self.producers.len() * 2;
        before - self.producers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    fn pb(epoch: i16, first_seq: i32, last_seq: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: 7,
            epoch,
            first_seq,
            last_seq,
        }
    }

    fn check(s: &ProducerStates, b: ProducerBatch) -> Result<Verdict, ProducerError> {
        s.check(&b, 1_000, DAY_MS)
    }

    #[test]
    fn in_sequence_then_duplicate_answers_the_original_offsets() {
        let mut s = ProducerStates::default();
        assert_eq!(check(&s, pb(0, 0, 2)), Ok(Verdict::Append));
        s.record(&pb(0, 0, 2), 10, 12, 1_000);
        assert_eq!(check(&s, pb(0, 3, 3)), Ok(Verdict::Append));
        s.record(&pb(0, 3, 3), 13, 13, 1_000);
        assert_eq!(
            check(&s, pb(0, 0, 2)),
            Ok(Verdict::Duplicate {
                base_offset: 10,
                last_offset: 12
            })
        );
    }

    #[test]
    fn only_the_last_five_are_duplicates_older_are_out_of_order() {
        let mut s = ProducerStates::default();
        for i in 0..6 {
            s.record(&pb(0, i, i), i64::from(i), i64::from(i), 1_000);
        }
        assert!(matches!(
            check(&s, pb(0, 1, 1)),
            Ok(Verdict::Duplicate { .. })
        ));
        assert_eq!(
            check(&s, pb(0, 0, 0)),
            Err(ProducerError::OutOfOrder {
                expected: 6,
                got: 0
            })
        );
    }

    #[test]
    fn gap_is_out_of_order() {
        let mut s = ProducerStates::default();
        s.record(&pb(0, 0, 4), 0, 4, 1_000);
        assert_eq!(
            check(&s, pb(0, 6, 6)),
            Err(ProducerError::OutOfOrder {
                expected: 5,
                got: 6
            })
        );
    }

    #[test]
    fn older_epoch_is_fenced_newer_epoch_starts_at_zero() {
        let mut s = ProducerStates::default();
        s.record(&pb(3, 0, 0), 0, 0, 1_000);
        assert_eq!(
            check(&s, pb(2, 1, 1)),
            Err(ProducerError::FencedEpoch { current: 3, got: 2 })
        );
        assert_eq!(check(&s, pb(4, 0, 0)), Ok(Verdict::Append));
        assert_eq!(
            check(&s, pb(4, 5, 5)),
            Err(ProducerError::OutOfOrder {
                expected: 0,
                got: 5
            })
        );
        s.record(&pb(4, 0, 0), 1, 1, 1_000);
        assert_eq!(
            check(&s, pb(3, 1, 1)),
            Err(ProducerError::FencedEpoch { current: 4, got: 3 })
        );
    }

    #[test]
    fn sequence_wraps_around() {
        assert_eq!(seq_plus(i32::MAX - 1, 3), 1);
        assert_eq!(seq_plus(5, 3), 8);
        let mut s = ProducerStates::default();
        let b = pb(0, i32::MAX - 1, seq_plus(i32::MAX - 1, 1));
        assert_eq!(b.last_seq, i32::MAX);
        s.record(&b, 0, 1, 1_000);
        assert_eq!(check(&s, pb(0, 0, 4)), Ok(Verdict::Append));
        assert!(check(&s, pb(0, 1, 4)).is_err());
    }

    #[test]
    fn unknown_or_expired_producer_starts_anywhere_and_sweep_drops_it() {
        let mut s = ProducerStates::default();
        assert_eq!(check(&s, pb(0, 42, 42)), Ok(Verdict::Append));
        s.record(&pb(0, 42, 42), 0, 0, 0);
        assert!(s.check(&pb(0, 99, 99), 10, DAY_MS).is_err());
        assert_eq!(s.check(&pb(0, 99, 99), DAY_MS, DAY_MS), Ok(Verdict::Append));
        for id in 100..100 + SWEEP_LEN_MIN as i64 {
            let b = ProducerBatch {
                producer_id: id,
                ..pb(0, 0, 0)
            };
            s.record(&b, 1, 1, DAY_MS);
        }
        assert_eq!(s.sweep_if_grown(DAY_MS + 1, DAY_MS, |_| false), 1);
        assert_eq!(s.len(), SWEEP_LEN_MIN);
        assert_eq!(
            s.sweep_if_grown(DAY_MS + 2, DAY_MS, |_| false),
            0,
            "not grown since"
        );
    }

    #[test]
    fn producer_fields_are_read_from_the_batch_headers() {
        use crate::batch::testing::{batch, with_producer};
        let plain = batch(3, 0, b"v");
        assert_eq!(producer_batch(&plain), Ok(None));
        let mut two = with_producer(batch(3, 0, b"v"), 42, 1, i32::MAX - 1);
        two.extend(with_producer(batch(2, 0, b"v"), 42, 1, 1));
        assert_eq!(
            producer_batch(&two),
            Ok(Some(ProducerBatch {
                producer_id: 42,
                epoch: 1,
                first_seq: i32::MAX - 1,
                last_seq: 2,
            }))
        );
        let mut mixed = with_producer(batch(1, 0, b"v"), 42, 1, 0);
        mixed.extend(with_producer(batch(1, 0, b"v"), 43, 1, 1));
        assert!(producer_batch(&mixed).is_err());
    }

    #[test]
    fn truncation_forgets_entries_at_or_above_the_end() {
        let mut s = ProducerStates::default();
        s.record(&pb(0, 0, 0), 0, 0, 1_000);
        s.record(&pb(0, 1, 1), 1, 1, 1_000);
        let other = ProducerBatch {
            producer_id: 8,
            ..pb(0, 0, 0)
        };
        s.record(&other, 2, 2, 1_000);
        s.forget_from(1);
        assert_eq!(s.len(), 1, "producer 8 had only truncated entries");
        assert_eq!(check(&s, pb(0, 1, 1)), Ok(Verdict::Append));
        assert!(s.check(&other, 1_000, DAY_MS).is_ok());
    }

    #[test]
    fn markers_fence_older_epochs_and_survive_truncation_below_them() {
        let mut s = ProducerStates::default();
        s.record(&pb(1, 0, 3), 0, 3, 1_000);
        assert_eq!(
            s.check_epoch(7, 0, 1_000, DAY_MS),
            Err(ProducerError::FencedEpoch { current: 1, got: 0 })
        );
        assert_eq!(s.check_epoch(7, 1, 1_000, DAY_MS), Ok(()));
        assert_eq!(s.check_epoch(99, 0, 1_000, DAY_MS), Ok(()), "unknown");
        // A marker at epoch 2 (the coordinator bumped it): epoch 1 fenced,
        // epoch 2 starts at sequence 0.
        s.record_marker(7, 2, 4, 1_000);
        assert_eq!(
            check(&s, pb(1, 4, 4)),
            Err(ProducerError::FencedEpoch { current: 2, got: 1 })
        );
        assert_eq!(check(&s, pb(2, 0, 0)), Ok(Verdict::Append));
        s.record_marker(7, 1, 5, 1_000);
        assert!(check(&s, pb(1, 0, 0)).is_err(), "never lowered");
        // A producer known only by a marker stays known below it.
        s.record_marker(8, 3, 10, 1_000);
        s.forget_from(11);
        assert_eq!(s.len(), 2);
        s.forget_from(10);
        assert_eq!(s.len(), 1, "producer 8's marker was cut");
        // Expiry spares a producer `keep` names.
        let mut e = ProducerStates::default();
        for id in 0..SWEEP_LEN_MIN as i64 {
            e.record_marker(id, 0, id, 0);
        }
        assert_eq!(
            e.sweep_if_grown(DAY_MS, DAY_MS, |id| id == 3),
            SWEEP_LEN_MIN - 1
        );
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn forgotten_failed_entry_is_written_again() {
        let mut s = ProducerStates::default();
        s.record(&pb(0, 0, 0), 0, 0, 1_000);
        s.record(&pb(0, 1, 1), 1, 1, 1_000);
        s.forget(7, 1);
        assert_eq!(check(&s, pb(0, 1, 1)), Ok(Verdict::Append));
    }
}
