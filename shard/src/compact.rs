//! Log compaction, the pure part: the replacement entry, a topic's
//! compaction settings, the key map, and rewriting a record batch without
//! the records a pass drops. The task that runs passes is `cleaner.rs`.
//!
//! # Replacement entries
//!
//! Compaction and the segment collector never change an entry in place:
//! they append a WAL entry of kind `KIND_REPLACE` (6) that stands for a
//! range of the partition's offsets. Recovery replays it in WAL order: it
//! removes every entry of the partition that lies wholly inside its range
//! and takes their place. Its payload:
//!
//! ```text
//! offset size field
//!      0    1 format version u8 (= 1)
//!      1    1 flags u8 (bit 0: written by compaction, so the range is clean)
//!      2   16 topic id
//!     18    4 partition u32
//!     22    8 range base offset i64 (the first replaced entry's base)
//!     30    8 range last offset i64 (the last replaced entry's last; the
//!             index entry ends at the last batch kept, so that a fetch in
//!             the gap after it goes on to the next entry)
//!     38    8 tombstone horizon i64 (wall-clock ms after which the
//!             tombstones kept here may go; -1: none kept)
//!     46    . an entry in `entry.rs`'s format (its header, then the
//!             batches), absent when nothing of the range is kept
//! ```
//!
//! A range covers whole entries only, so a replacement never splits an
//! entry; offsets never change (the batches keep their base offsets and
//! `lastOffsetDelta`, as Kafka's cleaner keeps them), so consumers see gaps.
//! The segment collector copies an entry forward as a replacement of its
//! own range (flags 0, or the flags of the replacement it copies).
//!
//! # What a pass keeps (Kafka's semantics)
//!
//! The key map holds, for each key of the pass's dirty range, the offset
//! of its latest record. A record is dropped when it has no key, when a
//! later record of its key is in the map, or when it is a tombstone (null
//! value) in a clean entry whose tombstone horizon has passed. A tombstone
//! seen in the dirty range is kept, with the horizon now +
//! `delete.retention.ms`. Control batches are kept whole. A batch that
//! loses every record is dropped.
//!
//! Keys are hashed to 128 bits (two SipHash-1-3 passes with distinct
//! prefixes); a map entry is charged `KEY_MAP_ENTRY_BYTES`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};
use sluice_index::RecordRef;

use crate::batch;
use crate::entry::{self, EntryHeader, PartitionKey};
use crate::records::{rewrite_walk, DecodeLimits};
use crate::ShardError;

/// WAL entry kind of a replacement (see the module doc).
pub const KIND_REPLACE: u8 = 6;
/// Bytes of a replacement's own header, before the entry it carries.
pub const REPLACE_HEADER_BYTES: usize = 46;
const REPLACE_VERSION: u8 = 1;
const FLAG_COMPACTED: u8 = 1;
/// Bytes charged per key of the key map (key hash, offset and the hash
/// table's own overhead).
pub const KEY_MAP_ENTRY_BYTES: u64 = 48;

const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LENGTH_AT: usize = 8;
const RECORD_COUNT_AT: usize = 57;
const ATTRIBUTE_CODEC_MASK: i16 = 0x07;

/// A topic's compaction settings, from its configs (Kafka's names and
/// defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompactConfig {
    /// `min.cleanable.dirty.ratio`.
    pub min_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: younger records are not compacted.
    pub min_lag_ms: i64,
    /// `max.compaction.lag.ms`: a dirty record older than this makes the
    /// partition eligible whatever its dirty ratio.
    pub max_lag_ms: i64,
    /// `delete.retention.ms`: how long a compacted tombstone stays.
    pub delete_retention_ms: i64,
}

impl CompactConfig {
    pub const MIN_DIRTY_RATIO_DEFAULT: f64 = 0.5;
    pub const DELETE_RETENTION_MS_DEFAULT: i64 = 24 * 3600 * 1000;

    /// `None` unless `cleanup.policy` includes `compact`.
    pub fn of(configs: &BTreeMap<String, String>) -> Option<CompactConfig> {
        let compact = configs
            .get("cleanup.policy")
            .is_some_and(|v| v.split(',').any(|p| p.trim() == "compact"));
        if !compact {
            return None;
        }
        let num = |k: &str, d: i64| {
            configs
                .get(k)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|v| *v >= 0)
                .unwrap_or(d)
        };
        let ratio = configs
            .get("min.cleanable.dirty.ratio")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or(Self::MIN_DIRTY_RATIO_DEFAULT);
        Some(CompactConfig {
            min_dirty_ratio: ratio,
            min_lag_ms: num("min.compaction.lag.ms", 0),
            max_lag_ms: num("max.compaction.lag.ms", i64::MAX),
            delete_retention_ms: num("delete.retention.ms", Self::DELETE_RETENTION_MS_DEFAULT),
        })
    }
}

/// The header of a replacement entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replacement {
    pub key: PartitionKey,
    pub base_offset: i64,
    pub last_offset: i64,
    /// Written by compaction: the range is clean.
    pub compacted: bool,
    /// Wall-clock ms after which its tombstones may go; -1: none.
    pub tombstone_horizon_ms: i64,
}

/// Encodes a replacement carrying `inner`, an entry payload in
/// `entry.rs`'s format (empty: nothing of the range is kept).
pub fn encode_replace(r: &Replacement, inner: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(REPLACE_HEADER_BYTES + inner.len());
    b.put_u8(REPLACE_VERSION);
    b.put_u8(if r.compacted { FLAG_COMPACTED } else { 0 });
    b.put_slice(&r.key.topic_id);
    b.put_u32(r.key.partition);
    b.put_i64(r.base_offset);
    b.put_i64(r.last_offset);
    b.put_i64(r.tombstone_horizon_ms);
    debug_assert_eq!(b.len(), REPLACE_HEADER_BYTES);
    b.put_slice(inner);
    b.freeze()
}

/// An entry of the partition log read back from the WAL, of any kind that
/// holds batches.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Base and last offsets are the range the entry stands for.
    pub header: EntryHeader,
    /// The batches (empty for a replacement that kept nothing).
    pub records: Bytes,
    /// Set for a replacement entry.
    pub replace: Option<Replacement>,
}

/// Decodes an entry of kind `KIND_BATCHES`, `KIND_REPLICA_BATCHES` or
/// `KIND_REPLACE`.
pub fn decode_stored(kind: u8, payload: &Bytes) -> Result<Stored, String> {
    if kind != KIND_REPLACE {
        let (header, records) = entry::decode(payload)?;
        return Ok(Stored {
            header,
            records,
            replace: None,
        });
    }
    if payload.len() < REPLACE_HEADER_BYTES {
        return Err(format!(
            "replacement entry of {} bytes is shorter than its header",
            payload.len()
        ));
    }
    if payload[0] != REPLACE_VERSION {
        return Err(format!("unknown replacement entry version {}", payload[0]));
    }
    let mut topic_id = [0u8; 16];
    topic_id.copy_from_slice(&payload[2..18]);
    let key = PartitionKey {
        topic_id,
        partition: u32::from_be_bytes([payload[18], payload[19], payload[20], payload[21]]),
    };
    let r = Replacement {
        key,
        base_offset: read_i64(payload, 22),
        last_offset: read_i64(payload, 30),
        compacted: payload[1] & FLAG_COMPACTED != 0,
        tombstone_horizon_ms: read_i64(payload, 38),
    };
    if r.last_offset < r.base_offset || r.base_offset < 0 {
        return Err(format!(
            "replacement range {}..={} is empty",
            r.base_offset, r.last_offset
        ));
    }
    let (max_timestamp, records) = if payload.len() == REPLACE_HEADER_BYTES {
        (-1, Bytes::new())
    } else {
        let (inner, records) = entry::decode(&payload.slice(REPLACE_HEADER_BYTES..))?;
        if inner.key != key
            || inner.base_offset < r.base_offset
            || inner.last_offset > r.last_offset
        {
            return Err(format!(
                "replacement of {}..={} carries offsets {}..={}",
                r.base_offset, r.last_offset, inner.base_offset, inner.last_offset
            ));
        }
        (inner.max_timestamp, records)
    };
    let last_offset = if records.is_empty() {
        r.last_offset
    } else {
        last_batch_offset(&records).unwrap_or(r.last_offset)
    };
    Ok(Stored {
        header: EntryHeader {
            key,
            base_offset: r.base_offset,
            last_offset,
            max_timestamp,
        },
        records,
        replace: Some(r),
    })
}

/// The last offset of the last of `batches` (its base offset plus its
/// `lastOffsetDelta`).
pub fn last_batch_offset(batches: &[u8]) -> Option<i64> {
    let last = batch::batches(batches).last()?;
    let delta = i64::from(batch::producer_fields(last).last_offset_delta);
    batch::base_offset(last).checked_add(delta)
}

/// The payload of a replacement that copies `stored` forward unchanged
/// (the segment collector): a replacement is copied as it is, any other
/// entry is wrapped.
pub fn relocation_payload(kind: u8, payload: &Bytes, stored: &Stored) -> Bytes {
    if kind == KIND_REPLACE {
        return payload.clone();
    }
    let r = Replacement {
        key: stored.header.key,
        base_offset: stored.header.base_offset,
        last_offset: stored.header.last_offset,
        compacted: false,
        tombstone_horizon_ms: -1,
    };
    encode_replace(&r, payload)
}

/// Refuses records without a key (a compacted topic): Kafka's
/// INVALID_RECORD, naming the index in its batch of the first keyless
/// record. Compressed batches are decompressed to look.
pub fn check_keys(records: &[u8]) -> Result<(), ShardError> {
    let limits = DecodeLimits::default();
    let mut scratch = Vec::new();
    for b in batch::batches(records) {
        let mut index: i32 = 0;
        let mut keyless: Option<i32> = None;
        rewrite_walk(b, &limits, &mut scratch, &mut |r, _| {
            if r.key.is_none() && keyless.is_none() {
                keyless = Some(index);
            }
            index += 1;
        })
        .map_err(ShardError::CorruptMessage)?;
        if let Some(batch_index) = keyless {
            return Err(ShardError::KeylessRecord { batch_index });
        }
    }
    Ok(())
}

/// 128-bit hash of a record key.
pub fn key_hash(key: &[u8]) -> u128 {
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        key.hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// The key map of one pass: key hash -> offset of its latest record in
/// the dirty range, at most `capacity` keys.
#[derive(Debug)]
pub struct KeyMap {
    latest: HashMap<u128, i64>,
    capacity: usize,
}

impl KeyMap {
    /// `capacity` comes from the bytes the pass reserved.
    pub fn new(capacity: usize) -> KeyMap {
        KeyMap {
            latest: HashMap::new(),
            capacity,
        }
    }

    /// Records `offset` as `key`'s latest; false when the map is full and
    /// the key is new.
    pub fn put(&mut self, key: &[u8], offset: i64) -> bool {
        let h = key_hash(key);
        if self.latest.len() >= self.capacity && !self.latest.contains_key(&h) {
            return false;
        }
        let e = self.latest.entry(h).or_insert(offset);
        *e = (*e).max(offset);
        true
    }

    pub fn latest(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(&key_hash(key)).copied()
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// What a pass does with the records of one entry.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    pub map: &'a KeyMap,
    /// The entry is clean (compacted before) and its tombstones may go.
    pub tombstones_expired: bool,
}

/// Counts of one rewrite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub records: u64,
    pub tombstones: u64,
    /// Tombstones kept.
    pub tombstones_kept: u64,
}

impl Dropped {
    pub fn add(&mut self, o: Dropped) {
        self.records += o.records;
        self.tombstones += o.tombstones;
        self.tombstones_kept += o.tombstones_kept;
    }
}

/// Whether a pass keeps `r`.
fn keeps(r: &RecordRef<'_>, rules: &Rules<'_>, dropped: &mut Dropped) -> bool {
    let Some(key) = r.key else {
        dropped.records += 1;
        return false;
    };
    if rules
        .map
        .latest(key)
        .is_some_and(|latest| r.offset < latest)
    {
        dropped.records += 1;
        return false;
    }
    if r.value.is_none() {
        if rules.tombstones_expired {
            dropped.records += 1;
            dropped.tombstones += 1;
            return false;
        }
        dropped.tombstones_kept += 1;
    }
    true
}

/// Rewrites the batches of one entry by `rules` into `out` (appended).
/// Returns what was dropped and whether the entry's last batch kept a
/// record (so `out` then ends at the entry's last offset). A batch that
/// does not decode is kept whole.
pub fn rewrite_entry(
    records: &[u8],
    rules: &Rules<'_>,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(Dropped, bool), String> {
    let limits = DecodeLimits::default();
    let mut dropped = Dropped::default();
    let mut last_kept = false;
    let mut kept_raw: Vec<u8> = Vec::new();
    for b in batch::batches(records) {
        kept_raw.clear();
        let mut kept: i32 = 0;
        let mut total: i32 = 0;
        let walked = rewrite_walk(b, &limits, scratch, &mut |r, raw| {
            total += 1;
            if keeps(&r, rules, &mut dropped) {
                kept += 1;
                kept_raw.extend_from_slice(raw);
            }
        });
        // A batch that does not decode (no record was delivered) is kept
        // whole, as stored.
        let Ok(facts) = walked else {
            out.extend_from_slice(b);
            last_kept = true;
            continue;
        };
        if facts.control || kept == total {
            out.extend_from_slice(b);
            last_kept = true;
            continue;
        }
        if kept == 0 {
            last_kept = false;
            continue;
        }
        let codec = facts.attributes & ATTRIBUTE_CODEC_MASK;
        let body = compress(codec, &kept_raw)?;
        let at = out.len();
        out.extend_from_slice(&b[..batch::BATCH_HEADER_BYTES]);
        out.extend_from_slice(&body);
        let length = (out.len() - at - batch::LOG_OVERHEAD_BYTES) as i32;
        out[at + LENGTH_AT..at + LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
        out[at + RECORD_COUNT_AT..at + RECORD_COUNT_AT + 4].copy_from_slice(&kept.to_be_bytes());
        let crc = crc32c::crc32c(&out[at + ATTRIBUTES_AT..]);
        out[at + CRC_AT..at + CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        last_kept = true;
    }
    Ok((dropped, last_kept))
}

/// Compresses records with a batch's codec (the codec it had).
fn compress(codec: i16, raw: &[u8]) -> Result<Vec<u8>, String> {
    let failed = |e: std::io::Error| format!("compressing with codec {codec}: {e}");
    match codec {
        0 => Ok(raw.to_vec()),
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(raw).map_err(failed)?;
            e.finish().map_err(failed)
        }
        2 => snap::raw::Encoder::new()
            .compress_vec(raw)
            .map_err(|e| format!("compressing with snappy: {e}")),
        3 => {
            let mut e = lz4::EncoderBuilder::new()
                .block_mode(lz4::BlockMode::Independent)
                .build(Vec::new())
                .map_err(failed)?;
            e.write_all(raw).map_err(failed)?;
            let (out, r) = e.finish();
            r.map_err(failed)?;
            Ok(out)
        }
        4 => zstd::bulk::compress(raw, 3).map_err(failed),
        other => Err(format!("unknown codec {other}")),
    }
}

fn read_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn record(offset: i64, key: Option<&str>, value: Option<&str>) -> Record {
        Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            // The encoder starts a new batch where offset - sequence changes.
            sequence: offset as i32,
            timestamp: 1_700_000_000_000 + offset,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: Default::default(),
        }
    }

    fn encode(records: &[Record], codec: Compression) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: codec,
        };
        RecordBatchEncoder::encode(&mut buf, records, &options).expect("encodes");
        buf.to_vec()
    }

    fn decode(bytes: &[u8]) -> Vec<(i64, Option<Bytes>, Option<Bytes>)> {
        let mut b = Bytes::copy_from_slice(bytes);
        let mut out = Vec::new();
        while !b.is_empty() {
            let set = RecordBatchDecoder::decode(&mut b).expect("decodes");
            out.extend(set.records.into_iter().map(|r| (r.offset, r.key, r.value)));
        }
        out
    }

    #[test]
    fn rewrite_keeps_latest_per_key_for_every_codec() {
        for codec in CODECS {
            let batch = encode(
                &[
                    record(100, Some("a"), Some("a1")),
                    record(101, Some("b"), Some("b1")),
                    record(102, None, Some("keyless")),
                    record(103, Some("a"), Some("a2")),
                    record(104, Some("c"), None),
                ],
                codec,
            );
            let mut map = KeyMap::new(16);
            assert!(map.put(b"a", 103));
            assert!(map.put(b"b", 101));
            assert!(map.put(b"c", 104));
            let rules = Rules {
                map: &map,
                tombstones_expired: false,
            };
            let mut out = Vec::new();
            let (dropped, last_kept) =
                rewrite_entry(&batch, &rules, &mut Vec::new(), &mut out).expect("rewrites");
            assert!(last_kept, "{codec:?}");
            assert_eq!(dropped.records, 2, "{codec:?}");
            assert_eq!(dropped.tombstones_kept, 1);
            let got = decode(&out);
            let offsets: Vec<i64> = got.iter().map(|r| r.0).collect();
            assert_eq!(offsets, vec![101, 103, 104], "{codec:?}");
            assert_eq!(got[1].2.as_deref(), Some(&b"a2"[..]));
            assert_eq!(got[2].2, None);
            // The batch still ends at its last offset, and its CRC holds.
            let summary = batch::validate_replicated(&out, 1 << 20).expect("valid batch");
            assert_eq!(summary.batches, 1);
            assert_eq!(batch::base_offset(&out), 100);

            let rules = Rules {
                map: &map,
                tombstones_expired: true,
            };
            let mut out2 = Vec::new();
            let (dropped, last_kept) =
                rewrite_entry(&out, &rules, &mut Vec::new(), &mut out2).expect("rewrites");
            assert!(last_kept, "lastOffsetDelta is kept although 104 went");
            assert_eq!(dropped.tombstones, 1);
            let offsets: Vec<i64> = decode(&out2).iter().map(|r| r.0).collect();
            assert_eq!(offsets, vec![101, 103]);
        }
    }

    #[test]
    fn a_batch_losing_every_record_goes_and_unchanged_ones_stay_byte_for_byte() {
        let old = encode(&[record(0, Some("k"), Some("v1"))], Compression::None);
        let new = encode(&[record(1, Some("k"), Some("v2"))], Compression::Lz4);
        let both = [old.clone(), new.clone()].concat();
        let mut map = KeyMap::new(4);
        map.put(b"k", 1);
        let rules = Rules {
            map: &map,
            tombstones_expired: false,
        };
        let mut out = Vec::new();
        let (dropped, last_kept) =
            rewrite_entry(&both, &rules, &mut Vec::new(), &mut out).expect("rewrites");
        assert_eq!(dropped.records, 1);
        assert!(last_kept);
        assert_eq!(out, new);
        let mut out = Vec::new();
        let (_, last_kept) =
            rewrite_entry(&old, &rules, &mut Vec::new(), &mut out).expect("rewrites");
        assert!(!last_kept);
        assert!(out.is_empty());
    }

    #[test]
    fn key_map_is_bounded() {
        let mut m = KeyMap::new(2);
        assert!(m.put(b"a", 1));
        assert!(m.put(b"b", 2));
        assert!(!m.put(b"c", 3));
        assert!(m.put(b"a", 7), "a known key still updates");
        assert_eq!(m.latest(b"a"), Some(7));
        assert_eq!(m.latest(b"c"), None);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn keyless_records_are_refused_with_their_index() {
        for codec in CODECS {
            let ok = encode(&[record(0, Some("a"), Some("x"))], codec);
            assert!(check_keys(&ok).is_ok());
            let bad = encode(
                &[
                    record(0, Some("a"), Some("x")),
                    record(1, Some("b"), None),
                    record(2, None, Some("y")),
                ],
                codec,
            );
            match check_keys(&[ok.clone(), bad].concat()) {
                Err(ShardError::KeylessRecord { batch_index }) => assert_eq!(batch_index, 2),
                other => panic!("{codec:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn replacement_round_trip_and_relocation() {
        let key = PartitionKey {
            topic_id: [7; 16],
            partition: 3,
        };
        let batches = encode(&[record(12, Some("a"), Some("x"))], Compression::None);
        let inner = entry::encode(
            &EntryHeader {
                key,
                base_offset: 12,
                last_offset: 12,
                max_timestamp: 5,
            },
            &batches,
        )
        .freeze();
        let r = Replacement {
            key,
            base_offset: 10,
            last_offset: 19,
            compacted: true,
            tombstone_horizon_ms: 99,
        };
        let payload = encode_replace(&r, &inner);
        let s = decode_stored(KIND_REPLACE, &payload).expect("decodes");
        assert_eq!(s.replace, Some(r));
        // The index entry ends at the last batch kept; the range replaced
        // is the header's.
        assert_eq!((s.header.base_offset, s.header.last_offset), (10, 12));
        assert_eq!(s.replace.map(|r| r.last_offset), Some(19));
        assert_eq!(s.header.max_timestamp, 5);
        assert_eq!(&s.records[..], &batches[..]);
        assert_eq!(relocation_payload(KIND_REPLACE, &payload, &s), payload);

        let empty = encode_replace(&r, &[]);
        let s = decode_stored(KIND_REPLACE, &empty).expect("decodes");
        assert!(s.records.is_empty());

        let plain = decode_stored(entry::KIND_BATCHES, &inner).expect("decodes");
        let moved = relocation_payload(entry::KIND_BATCHES, &inner, &plain);
        let s = decode_stored(KIND_REPLACE, &moved).expect("decodes");
        let r = s.replace.expect("a replacement");
        assert!(!r.compacted);
        assert_eq!((r.base_offset, r.last_offset), (12, 12));
        assert_eq!(&s.records[..], &batches[..]);

        // Offsets outside the range, or a short header, are refused.
        let wide = Replacement {
            base_offset: 13,
            ..r
        };
        assert!(decode_stored(KIND_REPLACE, &encode_replace(&wide, &inner)).is_err());
        assert!(decode_stored(KIND_REPLACE, &payload.slice(..20)).is_err());
    }

    #[test]
    fn configs() {
        let mut c = BTreeMap::new();
        assert_eq!(CompactConfig::of(&c), None);
        c.insert("cleanup.policy".to_string(), "compact,delete".to_string());
        let k = CompactConfig::of(&c).expect("compacted");
        assert_eq!(k.min_dirty_ratio, 0.5);
        assert_eq!(k.max_lag_ms, i64::MAX);
        c.insert("min.cleanable.dirty.ratio".to_string(), "0.01".to_string());
        c.insert("delete.retention.ms".to_string(), "100".to_string());
        let k = CompactConfig::of(&c).expect("compacted");
        assert_eq!(k.min_dirty_ratio, 0.01);
        assert_eq!(k.delete_retention_ms, 100);
    }
}
