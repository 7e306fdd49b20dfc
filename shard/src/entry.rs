//! The shard's WAL entry format: how a partition's record batches are
//! stored in the shard's WAL ("the WAL is the log").
//!
//! One produce request for one partition is one WAL entry of kind
//! `KIND_BATCHES` (1). Its payload is a fixed header followed by the
//! request's record batches, offsets already assigned, stored as they are
//! served to consumers:
//!
//! ```text
//! offset size field
//!      0    1 format version u8 (= 1)
//!      1   16 topic id [u8; 16] (the topic's UUID; survives renames, not deletion)
//!     17    4 partition u32, big-endian
//!     21    8 base offset i64, big-endian (baseOffset of the first batch)
//!     29    8 last offset i64, big-endian (last offset of the last batch)
//!     37    8 max timestamp i64, big-endian (largest batch maxTimestamp)
//!     45    . record batches (Kafka v2, big-endian, CRC32C inside each)
//! ```
//!
//! The WAL frames and checksums the whole payload; the header is checked
//! again against the first batch's `baseOffset` when it is read back. The
//! WAL does not read the batches again to checksum them: `wal_payload` hands
//! it each batch's own CRC32C (which covers the batch from `attributes` on,
//! and which `batch::validate` checked against these very bytes), and the
//! frame's CRC is combined from them; only the entry header and each batch's
//! first 21 bytes are read for it.
//! Kind 3 (`delete_records::KIND_LOG_START`) records a partition's new log
//! start offset; kind 4 (`replica::KIND_TRUNCATE`) a follower's log
//! truncation; kind 5 (`replica::KIND_REPLICA_BATCHES`) holds batches a
//! follower copied from its leader, in this same format (their offsets and
//! leader epochs are the leader's). Other kinds are reserved for later use and are skipped and
//! counted by recovery. Idempotent producer state needs no entry of its
//! own: recovery reads it from the batch headers (producerId, epoch,
//! baseSequence).

use bytes::{BufMut, Bytes, BytesMut};
use sluice_wal::{CrcSpan, Payload};

use crate::batch;

/// WAL entry kind of a partition's record batches.
pub const KIND_BATCHES: u8 = 1;
// The other kinds in a shard's WAL, each defined beside its codec and kept
// distinct by the test below: `group::KIND_GROUP` (2, group records),
// `delete_records::KIND_LOG_START` (3, log start offsets),
// `replica::KIND_TRUNCATE` (4) and `replica::KIND_REPLICA_BATCHES` (5).
/// Bytes of the entry header before the record batches.
pub const ENTRY_HEADER_BYTES: usize = 45;
const FORMAT_VERSION: u8 = 1;

/// Key of a partition within a shard: topic id and partition index.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PartitionKey {
    pub topic_id: [u8; 16],
    pub partition: u32,
}

/// The decoded header of one entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EntryHeader {
    pub key: PartitionKey,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
}

/// Copies the header and `records` into one buffer, ready to be patched.
/// The batches start at `ENTRY_HEADER_BYTES`.
pub fn encode(header: &EntryHeader, records: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(ENTRY_HEADER_BYTES + records.len());
    b.put_u8(FORMAT_VERSION);
    b.put_slice(&header.key.topic_id);
    b.put_u32(header.key.partition);
    b.put_i64(header.base_offset);
    b.put_i64(header.last_offset);
    b.put_i64(header.max_timestamp);
    assert_eq!(b.len(), ENTRY_HEADER_BYTES);
    b.put_slice(records);
    b
}

/// The CRC spans of an encoded entry whose record batches passed
/// `batch::validate` (and `batch::patch`): one per batch, from its
/// `attributes` to its end, with the CRC32C the batch carries. `None` when
/// the batches do not fill the entry exactly (never for validated ones).
pub fn crc_spans(entry: &[u8]) -> Option<Vec<CrcSpan>> {
    let records = entry.get(ENTRY_HEADER_BYTES..)?;
    let mut spans = Vec::with_capacity(1);
    let mut at = ENTRY_HEADER_BYTES;
    for b in batch::batches(records) {
        let crc = batch::stored_crc(b)?;
        spans.push(CrcSpan {
            offset: u32::try_from(at + batch::CRC_COVERS_FROM).ok()?,
            len: u32::try_from(b.len() - batch::CRC_COVERS_FROM).ok()?,
            crc,
        });
        at += b.len();
    }
    (at == entry.len()).then_some(spans)
}

/// What the WAL writes for an encoded entry of validated batches: the bytes,
/// with every batch's verified CRC so that the WAL combines the frame's CRC
/// instead of reading the batches again (see the module doc).
pub fn wal_payload(entry: Bytes) -> Payload {
    match crc_spans(&entry) {
        Some(spans) => Payload::with_crc_spans(entry, spans),
        None => {
            debug_assert!(false, "an entry of validated batches has CRC spans");
            Payload::new(entry)
        }
    }
}

/// Decodes and checks an entry read back from the WAL; returns the header
/// and the record batches (a slice of `payload`, no copy).
pub fn decode(payload: &Bytes) -> Result<(EntryHeader, Bytes), String> {
    if payload.len() < ENTRY_HEADER_BYTES + batch::LOG_OVERHEAD_BYTES {
        return Err(format!(
            "entry of {} bytes is shorter than its header",
            payload.len()
        ));
    }
    if payload[0] != FORMAT_VERSION {
        return Err(format!("unknown entry format version {}", payload[0]));
    }
    let mut topic_id = [0u8; 16];
    topic_id.copy_from_slice(&payload[1..17]);
    let partition = u32::from_be_bytes([payload[17], payload[18], payload[19], payload[20]]);
    let header = EntryHeader {
        key: PartitionKey {
            topic_id,
            partition,
        },
        base_offset: read_i64(payload, 21),
        last_offset: read_i64(payload, 29),
        max_timestamp: read_i64(payload, 37),
    };
    let records = payload.slice(ENTRY_HEADER_BYTES..);
    if batch::base_offset(&records) != header.base_offset || header.last_offset < header.base_offset
    {
        return Err(format!(
            "entry header offsets {}..={} disagree with its first batch at {}",
            header.base_offset,
            header.last_offset,
            batch::base_offset(&records)
        ));
    }
    Ok((header, records))
}

fn read_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

#[cfg(test)]
mod kind_tests {
    #[test]
    fn wal_entry_kinds_are_distinct() {
        let kinds = [
            super::KIND_BATCHES,
            crate::group::KIND_GROUP,
            crate::delete_records::KIND_LOG_START,
            crate::replica::KIND_TRUNCATE,
            crate::replica::KIND_REPLICA_BATCHES,
        ];
        for (i, a) in kinds.iter().enumerate() {
            for b in &kinds[i + 1..] {
                assert_ne!(a, b, "two record types share a WAL entry kind");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::testing;

    #[test]
    fn round_trip() {
        let key = PartitionKey {
            topic_id: [9; 16],
            partition: 7,
        };
        let mut records = testing::batch(3, 42, b"v");
        batch::patch(&mut records, 10, None, 0);
        let header = EntryHeader {
            key,
            base_offset: 10,
            last_offset: 12,
            max_timestamp: 42,
        };
        let payload = encode(&header, &records).freeze();
        let (h, r) = decode(&payload).expect("decodes");
        assert_eq!(h, header);
        assert_eq!(&r[..], &records[..]);
    }

    /// An encoded entry of three validated batches, patched as a produce
    /// patches them (LogAppendTime recomputes each batch's CRC).
    fn produced_entry(log_append_time_ms: Option<i64>) -> Bytes {
        let mut records = testing::batch(3, 42, b"value");
        records.extend_from_slice(&testing::batch(1, 43, &[7u8; 5000]));
        records.extend_from_slice(&testing::batch(20, 44, b"v"));
        let summary = batch::validate(&records, u64::MAX).expect("valid batches");
        let header = EntryHeader {
            key: PartitionKey {
                topic_id: [3; 16],
                partition: 1,
            },
            base_offset: 100,
            last_offset: 100 + summary.offsets - 1,
            max_timestamp: 44,
        };
        let mut buf = encode(&header, &records);
        batch::patch(&mut buf[ENTRY_HEADER_BYTES..], 100, log_append_time_ms, 5);
        buf.freeze()
    }

    fn frame_of(payload: &[u8], spans: &[CrcSpan]) -> Vec<u8> {
        let len = sluice_wal::format::frame_bytes(payload.len() as u32) as usize;
        let mut out = vec![0u8; len];
        sluice_wal::format::encode_frame_spans(&mut out, 8192, KIND_BATCHES, payload, spans);
        out
    }

    #[test]
    fn a_frame_from_the_batches_crcs_equals_one_computed_over_the_bytes() {
        use sluice_wal::format::{check_frame, encode_frame, FrameCheck};
        for log_append_time in [None, Some(1_700_000_000_000)] {
            let entry = produced_entry(log_append_time);
            let spans = crc_spans(&entry).expect("validated batches fill the entry");
            assert_eq!(spans.len(), 3);
            assert_eq!(spans[0].offset as usize, ENTRY_HEADER_BYTES + 21);
            let given = frame_of(&entry, &spans);
            let mut computed = vec![0u8; given.len()];
            encode_frame(&mut computed, 8192, KIND_BATCHES, &entry);
            assert_eq!(given, computed);
            assert!(matches!(
                check_frame(&given, 8192, 1 << 20),
                FrameCheck::Valid(_)
            ));
            let payload = wal_payload(entry.clone());
            assert_eq!(payload.spans(), &spans[..]);
            assert_eq!(payload.bytes(), &entry);
        }
    }

    #[test]
    fn a_batch_whose_bytes_differ_from_its_crc_never_gets_a_valid_frame() {
        use sluice_wal::format::{check_frame, FrameCheck};
        let entry = produced_entry(None);
        let spans = crc_spans(&entry).expect("spans");
        // A byte inside each batch's CRC run changed after validation: the
        // batch's claimed CRC no longer matches, and neither does the frame.
        for s in &spans {
            let mut bad = entry.to_vec();
            bad[s.offset as usize + s.len as usize / 2] ^= 0x20;
            let spans = crc_spans(&bad).expect("the framing is intact");
            let frame = frame_of(&bad, &spans);
            assert_eq!(check_frame(&frame, 8192, 1 << 20), FrameCheck::Invalid);
            // And such batches never get this far: validation refuses them.
            assert!(batch::validate(&bad[ENTRY_HEADER_BYTES..], u64::MAX).is_err());
        }
    }

    #[test]
    fn entries_that_are_not_whole_batches_have_no_spans() {
        let entry = produced_entry(None);
        assert!(crc_spans(&entry[..entry.len() - 1]).is_none());
        assert!(crc_spans(&entry[..ENTRY_HEADER_BYTES + 30]).is_none());
        assert!(crc_spans(&entry[..10]).is_none());
    }

    #[test]
    fn mismatch_and_short_are_errors() {
        let key = PartitionKey {
            topic_id: [1; 16],
            partition: 0,
        };
        let records = testing::batch(1, 0, b"v"); // baseOffset 0
        let header = EntryHeader {
            key,
            base_offset: 5,
            last_offset: 5,
            max_timestamp: 0,
        };
        let payload = encode(&header, &records).freeze();
        assert!(decode(&payload).is_err());
        assert!(decode(&payload.slice(..30)).is_err());
    }
}
