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
//! again against the first batch's `baseOffset` when it is read back.
//! Kind 3 (`delete_records::KIND_LOG_START`) records a partition's new log
//! start offset; kind 4 (`replica::KIND_TRUNCATE`) a follower's log
//! truncation; kind 5 (`replica::KIND_REPLICA_BATCHES`) holds batches a
//! follower copied from its leader, in this same format (their offsets and
//! leader epochs are the leader's). Other kinds are reserved for later use and are skipped and
//! counted by recovery. Idempotent producer state needs no entry of its
//! own: recovery reads it from the batch headers (producerId, epoch,
//! baseSequence).

use bytes::{BufMut, Bytes, BytesMut};

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
