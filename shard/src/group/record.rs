//! Group records: their encoding, and how they are stored.
//!
//! # In `__consumer_offsets`
//!
//! The coordinator writes each record as its own record batch (magic 2,
//! uncompressed, one record) into the group's `__consumer_offsets`
//! partition (`encode_batch`). The record's key is `GROUP_RECORD_KEY`;
//! its value is the encoding below. Loading (`decode_batch`) ignores
//! compressed and control batches and records with another key, so other
//! data in the partition is skipped.
//!
//! # The value
//!
//! ```text
//! u8  format version (= 1)
//! u8  record type: 1 offsets committed, 2 offsets deleted, 3 group deleted,
//!                  4 partition reset
//! str group id                (str = u16 big-endian length + UTF-8;
//!                              empty for type 4)
//! type 1: u32 count, then per partition:
//!         str topic, i32 partition, i64 offset, i32 leader epoch,
//!         i32 metadata length (-1 = null) + UTF-8, i64 commit time (ms)
//! type 2: u32 count, then per partition: str topic, i32 partition
//! type 3: nothing more
//! type 4: nothing more
//! ```
//!
//! Type 4 opens a snapshot of the partition's groups (written by the
//! carry-forward, `load`): loading forgets every group of the partition
//! when it meets one, and the commit records after it restore them.
//!
//! All integers are big-endian. Decoding checks every length (no panics on
//! disk or network data).
//!
//! # Old data directories
//!
//! Before group records went to `__consumer_offsets`, the same value was
//! a WAL entry of kind `KIND_GROUP` (2) in the coordinator shard's WAL.
//! Recovery still replays such entries (before the partitions' logs are
//! loaded on top); nothing writes them any more.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::types::CommittedOffset;

/// WAL entry kind of group records written before they went to
/// `__consumer_offsets` (still replayed, no longer written).
pub const KIND_GROUP: u8 = 2;
/// The key of every group record in `__consumer_offsets`.
pub const GROUP_RECORD_KEY: &[u8] = b"sluice.group.v1";
const FORMAT_VERSION: u8 = 1;
const TYPE_COMMIT: u8 = 1;
const TYPE_OFFSETS_DELETED: u8 = 2;
const TYPE_GROUP_DELETED: u8 = 3;
const TYPE_PARTITION_RESET: u8 = 4;
/// Bytes of a record batch header (up to its first record).
const BATCH_HEADER_BYTES: usize = crate::batch::BATCH_HEADER_BYTES;
/// Batch attribute bits: compression codec, control batch.
const ATTRIBUTE_CODEC_MASK: i16 = 0x07;
const ATTRIBUTE_CONTROL: i16 = 0x20;

/// One decoded group record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupRecord {
    Commit {
        group_id: String,
        offsets: Vec<(String, i32, CommittedOffset)>,
    },
    OffsetsDeleted {
        group_id: String,
        partitions: Vec<(String, i32)>,
    },
    GroupDeleted {
        group_id: String,
    },
    /// The start of a snapshot of the partition's groups: loading forgets
    /// every group of the partition here.
    PartitionReset,
}

fn put_str(b: &mut BytesMut, s: &str) {
    let len = u16::try_from(s.len()).expect("names are validated below 64 KiB");
    b.put_u16(len);
    b.put_slice(s.as_bytes());
}

pub fn encode(rec: &GroupRecord) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    b.put_u8(FORMAT_VERSION);
    match rec {
        GroupRecord::Commit { group_id, offsets } => {
            b.put_u8(TYPE_COMMIT);
            put_str(&mut b, group_id);
            b.put_u32(offsets.len() as u32);
            for (topic, partition, c) in offsets {
                put_str(&mut b, topic);
                b.put_i32(*partition);
                b.put_i64(c.offset);
                b.put_i32(c.leader_epoch);
                match &c.metadata {
                    None => b.put_i32(-1),
                    Some(m) => {
                        b.put_i32(m.len() as i32);
                        b.put_slice(m.as_bytes());
                    }
                }
                b.put_i64(c.commit_timestamp_ms);
            }
        }
        GroupRecord::OffsetsDeleted {
            group_id,
            partitions,
        } => {
            b.put_u8(TYPE_OFFSETS_DELETED);
            put_str(&mut b, group_id);
            b.put_u32(partitions.len() as u32);
            for (topic, partition) in partitions {
                put_str(&mut b, topic);
                b.put_i32(*partition);
            }
        }
        GroupRecord::GroupDeleted { group_id } => {
            b.put_u8(TYPE_GROUP_DELETED);
            put_str(&mut b, group_id);
        }
        GroupRecord::PartitionReset => {
            b.put_u8(TYPE_PARTITION_RESET);
            put_str(&mut b, "");
        }
    }
    b.freeze()
}

fn put_varint(b: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        b.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    b.put_u8(z as u8);
}

/// One record batch (magic 2, uncompressed, one record keyed
/// `GROUP_RECORD_KEY`, no producer) carrying `rec`, stamped `timestamp_ms`,
/// at base offset 0 (the produce path assigns the real one). CRC valid.
pub fn encode_batch(rec: &GroupRecord, timestamp_ms: i64) -> Bytes {
    keyed_batch(GROUP_RECORD_KEY, Some(&encode(rec)), timestamp_ms, None)
}

/// A group commit record in a transactional batch of `producer` (id,
/// epoch): TxnOffsetCommit. Loading holds it until the transaction's
/// marker says whether it counts.
pub fn encode_txn_batch(rec: &GroupRecord, timestamp_ms: i64, producer: (i64, i16)) -> Bytes {
    keyed_batch(
        GROUP_RECORD_KEY,
        Some(&encode(rec)),
        timestamp_ms,
        Some(producer),
    )
}

/// Batch attribute bit of transactional batches.
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;

/// One uncompressed record batch (magic 2) of one record `key`/`value`
/// (`None`: a tombstone), written by a coordinator. With `producer` it is
/// a transactional batch of that producer id and epoch (base sequence -1:
/// coordinator writes take no part in sequence checks).
pub(crate) fn keyed_batch(
    key: &[u8],
    value: Option<&[u8]>,
    timestamp_ms: i64,
    producer: Option<(i64, i16)>,
) -> Bytes {
    let value_len = value.map_or(0, <[u8]>::len);
    let mut body = BytesMut::with_capacity(value_len + key.len() + 16);
    body.put_u8(0); // attributes
    put_varint(&mut body, 0); // timestampDelta
    put_varint(&mut body, 0); // offsetDelta
    put_varint(&mut body, key.len() as i64);
    body.put_slice(key);
    match value {
        Some(v) => {
            put_varint(&mut body, v.len() as i64);
            body.put_slice(v);
        }
        None => put_varint(&mut body, -1),
    }
    put_varint(&mut body, 0); // headers
    let (producer_id, producer_epoch, attributes) = match producer {
        Some((id, epoch)) => (id, epoch, ATTRIBUTE_TRANSACTIONAL),
        None => (-1, -1, 0),
    };
    let mut b = BytesMut::with_capacity(BATCH_HEADER_BYTES + body.len() + 5);
    b.put_i64(0); // baseOffset
    b.put_i32(0); // batchLength, set below
    b.put_i32(-1); // partitionLeaderEpoch, stamped by the leader
    b.put_i8(2); // magic
    b.put_u32(0); // crc, set below
    b.put_i16(attributes);
    b.put_i32(0); // lastOffsetDelta
    b.put_i64(timestamp_ms); // baseTimestamp
    b.put_i64(timestamp_ms); // maxTimestamp
    b.put_i64(producer_id);
    b.put_i16(producer_epoch);
    b.put_i32(-1); // baseSequence
    b.put_i32(1); // recordCount
    put_varint(&mut b, body.len() as i64);
    b.put_slice(&body);
    let length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

/// What a stored batch is to a coordinator loading its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BatchKind {
    /// Ordinary records.
    Plain,
    /// Records of a transaction of this producer id.
    Transactional(i64),
    /// A transaction marker of this producer id: commit (`true`) or abort.
    Marker(i64, bool),
    /// Compressed or not a v2 batch: nothing a coordinator wrote.
    Other,
}

/// Classifies one stored batch (see `BatchKind`).
pub(crate) fn batch_kind(batch: &[u8]) -> BatchKind {
    if batch.len() < BATCH_HEADER_BYTES || batch[16] != 2 {
        return BatchKind::Other;
    }
    let attributes = i16::from_be_bytes([batch[21], batch[22]]);
    let producer_id = i64::from_be_bytes(batch[43..51].try_into().unwrap_or([0xff; 8]));
    if attributes & ATTRIBUTE_CONTROL != 0 {
        let mut records = Records {
            buf: &batch[BATCH_HEADER_BYTES..],
            at: 0,
        };
        return match records.next_record() {
            // Key: i16 version, i16 type (0 abort, 1 commit).
            Ok((Some(key), _)) if key.len() >= 4 => {
                BatchKind::Marker(producer_id, i16::from_be_bytes([key[2], key[3]]) == 1)
            }
            _ => BatchKind::Other,
        };
    }
    if attributes & ATTRIBUTE_CODEC_MASK != 0 {
        return BatchKind::Other;
    }
    if attributes & ATTRIBUTE_TRANSACTIONAL != 0 {
        return BatchKind::Transactional(producer_id);
    }
    BatchKind::Plain
}

/// The (key, value) of every record of an uncompressed v2 batch; `Err`
/// at the first record that does not fit the batch.
pub(crate) fn batch_records(batch: &[u8]) -> Result<Vec<(Option<&[u8]>, Option<&[u8]>)>, String> {
    if batch.len() < BATCH_HEADER_BYTES || batch[16] != 2 {
        return Err(format!("not a v2 record batch ({} bytes)", batch.len()));
    }
    let count = i32::from_be_bytes([batch[57], batch[58], batch[59], batch[60]]);
    let mut records = Records {
        buf: &batch[BATCH_HEADER_BYTES..],
        at: 0,
    };
    // Every record takes at least one byte: the count cannot outgrow them.
    let n = usize::try_from(count.max(0)).unwrap_or(0).min(batch.len());
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(records.next_record()?);
    }
    Ok(out)
}

struct Records<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Records<'a> {
    fn varint(&mut self) -> Result<i64, String> {
        let mut z: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.at) else {
                return Err("record batch truncated in a varint".into());
            };
            self.at += 1;
            z |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err("record batch holds an overlong varint".into())
    }

    fn bytes(&mut self, len: i64) -> Result<Option<&'a [u8]>, String> {
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| "record length overflows")?;
        let end = self.at.checked_add(len).filter(|e| *e <= self.buf.len());
        let Some(end) = end else {
            return Err("record batch truncated in a record field".into());
        };
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(Some(out))
    }

    /// The key and value of the next record.
    fn next_record(&mut self) -> Result<(Option<&'a [u8]>, Option<&'a [u8]>), String> {
        let len = self.varint()?;
        let Some(body) = self.bytes(len)? else {
            return Err("record with a negative length".into());
        };
        let mut r = Records { buf: body, at: 0 };
        r.bytes(1)?; // attributes
        r.varint()?; // timestampDelta
        r.varint()?; // offsetDelta
        let key_len = r.varint()?;
        let key = r.bytes(key_len)?;
        let value_len = r.varint()?;
        let value = r.bytes(value_len)?;
        Ok((key, value))
    }
}

/// The group records of one stored record batch, in record order: its
/// records keyed `GROUP_RECORD_KEY`, decoded. Compressed and control
/// batches and other records yield nothing; a batch that does not parse,
/// or a group record that does not decode, yields an `Err` (and nothing
/// after it from that batch).
pub fn decode_batch(batch: &[u8]) -> Vec<Result<GroupRecord, String>> {
    let mut out = Vec::new();
    if batch.len() < BATCH_HEADER_BYTES || batch[16] != 2 {
        out.push(Err(format!(
            "not a v2 record batch ({} bytes)",
            batch.len()
        )));
        return out;
    }
    let attributes = i16::from_be_bytes([batch[21], batch[22]]);
    if attributes & (ATTRIBUTE_CODEC_MASK | ATTRIBUTE_CONTROL) != 0 {
        return out;
    }
    let count = i32::from_be_bytes([batch[57], batch[58], batch[59], batch[60]]);
    let mut records = Records {
        buf: &batch[BATCH_HEADER_BYTES..],
        at: 0,
    };
    for _ in 0..count.max(0) {
        match records.next_record() {
            Ok((Some(key), Some(value))) if key == GROUP_RECORD_KEY => {
                out.push(decode(&Bytes::copy_from_slice(value)));
            }
            Ok(_) => {}
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
    }
    out
}

/// A bounds-checked reader over a payload.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), String> {
        if self.0.remaining() < n {
            return Err(format!("group record truncated: {n} bytes needed"));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, String> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn i32(&mut self) -> Result<i32, String> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }
    fn i64(&mut self) -> Result<i64, String> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }
    fn bytes_str(&mut self, len: usize) -> Result<String, String> {
        self.need(len)?;
        let raw = self.0.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| "group record string is not UTF-8".into())
    }
    fn str(&mut self) -> Result<String, String> {
        self.need(2)?;
        let len = usize::from(self.0.get_u16());
        self.bytes_str(len)
    }
    fn count(&mut self, min_item_bytes: usize) -> Result<usize, String> {
        self.need(4)?;
        let n = self.0.get_u32() as usize;
        if n.saturating_mul(min_item_bytes) > self.0.remaining() {
            return Err(format!("group record count {n} exceeds its payload"));
        }
        Ok(n)
    }
}

pub fn decode(payload: &Bytes) -> Result<GroupRecord, String> {
    let mut r = Reader(payload.clone());
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(format!("unknown group record version {version}"));
    }
    let kind = r.u8()?;
    let group_id = r.str()?;
    let rec = match kind {
        TYPE_COMMIT => {
            let n = r.count(30)?;
            let mut offsets = Vec::with_capacity(n);
            for _ in 0..n {
                let topic = r.str()?;
                let partition = r.i32()?;
                let offset = r.i64()?;
                let leader_epoch = r.i32()?;
                let len = r.i32()?;
                let metadata = match usize::try_from(len) {
                    Ok(len) => Some(r.bytes_str(len)?),
                    Err(_) => None,
                };
                let commit_timestamp_ms = r.i64()?;
                let c = CommittedOffset {
                    offset,
                    leader_epoch,
                    metadata,
                    commit_timestamp_ms,
                };
                offsets.push((topic, partition, c));
            }
            GroupRecord::Commit { group_id, offsets }
        }
        TYPE_OFFSETS_DELETED => {
            let n = r.count(6)?;
            let mut partitions = Vec::with_capacity(n);
            for _ in 0..n {
                let topic = r.str()?;
                partitions.push((topic, r.i32()?));
            }
            GroupRecord::OffsetsDeleted {
                group_id,
                partitions,
            }
        }
        TYPE_GROUP_DELETED => GroupRecord::GroupDeleted { group_id },
        TYPE_PARTITION_RESET if group_id.is_empty() => GroupRecord::PartitionReset,
        other => return Err(format!("unknown group record type {other}")),
    };
    if r.0.has_remaining() {
        return Err("trailing bytes after a group record".into());
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit() -> GroupRecord {
        let c = |offset, metadata: Option<&str>| CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: metadata.map(str::to_string),
            commit_timestamp_ms: 1_700_000_000_000,
        };
        GroupRecord::Commit {
            group_id: "g1".into(),
            offsets: vec![
                ("orders".into(), 0, c(42, None)),
                ("orders".into(), 5, c(7, Some("meta"))),
            ],
        }
    }

    #[test]
    fn round_trips() {
        for rec in [
            commit(),
            GroupRecord::OffsetsDeleted {
                group_id: "g".into(),
                partitions: vec![("t".into(), 3)],
            },
            GroupRecord::GroupDeleted {
                group_id: "g".into(),
            },
            GroupRecord::PartitionReset,
        ] {
            assert_eq!(decode(&encode(&rec)).unwrap(), rec);
            let batch = encode_batch(&rec, 1_700_000_000_000);
            crate::batch::validate(&batch, u64::MAX).expect("a valid batch");
            assert_eq!(decode_batch(&batch), vec![Ok(rec)]);
        }
    }

    #[test]
    fn other_records_are_ignored_and_damage_is_an_error() {
        use crate::batch::testing::{batch, framed, raw_batch, record_fields};
        let record = |delta: i32, key: &[u8], value: &[u8]| {
            let mut body = record_fields(delta, Some(key), Some(value));
            body.push(0); // no headers
            framed(&body)
        };
        assert!(decode_batch(&batch(3, 0, b"data")).is_empty());
        let mut two = record(0, b"other", b"v");
        two.extend(record(1, GROUP_RECORD_KEY, &encode(&commit())));
        let mixed = raw_batch(&two, 2, 0);
        crate::batch::validate(&mixed, u64::MAX).expect("a valid batch");
        assert_eq!(decode_batch(&mixed), vec![Ok(commit())]);
        let good = encode_batch(&commit(), 5);
        for len in [0, 20, BATCH_HEADER_BYTES, good.len() - 3] {
            let got = decode_batch(&good[..len]);
            assert!(got.iter().any(Result::is_err), "len {len}: {got:?}");
        }
        let bad_value = raw_batch(&record(0, GROUP_RECORD_KEY, b"\x01"), 1, 0);
        assert!(decode_batch(&bad_value)[0].is_err());
    }

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let bytes = encode(&commit());
        for len in 0..bytes.len() {
            assert!(decode(&bytes.slice(..len)).is_err(), "len {len}");
        }
        let mut extra = BytesMut::from(&bytes[..]);
        extra.put_u8(0);
        assert!(decode(&extra.freeze()).is_err());
    }
}
