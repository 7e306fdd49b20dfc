//! The WAL entry format of group state (kind `KIND_GROUP` = 2), written by
//! the coordinator shard and replayed by its recovery in WAL order.
//!
//! ```text
//! u8  format version (= 1)
//! u8  record type: 1 offsets committed, 2 offsets deleted, 3 group deleted
//! str group id                (str = u16 big-endian length + UTF-8)
//! type 1: u32 count, then per partition:
//!         str topic, i32 partition, i64 offset, i32 leader epoch,
//!         i32 metadata length (-1 = null) + UTF-8, i64 commit time (ms)
//! type 2: u32 count, then per partition: str topic, i32 partition
//! type 3: nothing more
//! ```
//!
//! All integers are big-endian. The WAL frames and checksums the payload;
//! decoding still checks every length (no panics on disk data).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::types::CommittedOffset;

/// WAL entry kind of group records.
pub const KIND_GROUP: u8 = 2;
const FORMAT_VERSION: u8 = 1;
const TYPE_COMMIT: u8 = 1;
const TYPE_OFFSETS_DELETED: u8 = 2;
const TYPE_GROUP_DELETED: u8 = 3;

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
    }
    b.freeze()
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
        ] {
            assert_eq!(decode(&encode(&rec)).unwrap(), rec);
        }
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
