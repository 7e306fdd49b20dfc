//! Kafka record batch v2 (magic 2): validation and patching, without
//! decompressing the records.
//!
//! Layout of one batch (all integers big-endian, offsets in bytes):
//!
//! ```text
//!  0 baseOffset i64          21 attributes i16        43 producerId i64
//!  8 batchLength i32         23 lastOffsetDelta i32   51 producerEpoch i16
//! 12 partitionLeaderEpoch i32 27 baseTimestamp i64    53 baseSequence i32
//! 16 magic i8               35 maxTimestamp i64      57 recordCount i32
//! 17 crc u32 (CRC32C of bytes 21..end)                61 records ...
//! ```
//!
//! A batch spans `12 + batchLength` bytes. The produce path checks every
//! batch of a request (`validate`), then assigns offsets by rewriting
//! `baseOffset`, which the CRC does not cover (`patch`). For topics with
//! `message.timestamp.type=LogAppendTime` it also sets the timestamp-type
//! attribute bit and `maxTimestamp`, and recomputes the CRC, as Kafka does.
//!
//! Invariant: `patch` runs only on bytes that passed `validate`, and leaves
//! every CRC valid.

use crate::ShardError;

/// Bytes of the fixed batch header, up to the first record.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batchLength` counts (baseOffset + batchLength).
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// Kafka's default `max.message.bytes` (1 MiB + record batch overhead).
pub const MAX_MESSAGE_BYTES_DEFAULT: u64 = 1_048_588;
/// Attribute bit of the timestamp type (set: LogAppendTime).
pub const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;

const LENGTH_AT: usize = 8;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const MAX_TIMESTAMP_AT: usize = 35;
const RECORD_COUNT_AT: usize = 57;

/// What `validate` learned about the batches of one produce request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordsSummary {
    pub batches: u32,
    /// Offsets the request takes: the sum of `lastOffsetDelta + 1`.
    pub offsets: i64,
    /// The largest `maxTimestamp` of its batches.
    pub max_timestamp: i64,
}

/// Checks every batch in `records`: framing, magic, size, CRC32C, offsets.
pub fn validate(records: &[u8], max_batch_bytes: u64) -> Result<RecordsSummary, ShardError> {
    if records.is_empty() {
        return Err(ShardError::InvalidRecord(
            "produce request without record batches".into(),
        ));
    }
    let mut summary = RecordsSummary {
        batches: 0,
        offsets: 0,
        max_timestamp: i64::MIN,
    };
    let mut at = 0usize;
    while at < records.len() {
        let bytes = validate_one(&records[at..], max_batch_bytes)?;
        let batch = &records[at..at + bytes];
        summary.batches += 1;
        summary.offsets += i64::from(read_i32(batch, LAST_OFFSET_DELTA_AT)) + 1;
        summary.max_timestamp = summary.max_timestamp.max(read_i64(batch, MAX_TIMESTAMP_AT));
        at += bytes;
    }
    assert_eq!(at, records.len());
    assert!(summary.offsets >= i64::from(summary.batches));
    Ok(summary)
}

/// Validates the batch at the start of `rest`; returns its size in bytes.
fn validate_one(rest: &[u8], max_batch_bytes: u64) -> Result<usize, ShardError> {
    let corrupt = |m: String| Err(ShardError::CorruptMessage(m));
    if rest.len() < LOG_OVERHEAD_BYTES {
        return corrupt(format!(
            "truncated batch: {} bytes left, header needs {LOG_OVERHEAD_BYTES}",
            rest.len()
        ));
    }
    let batch_length = read_i32(rest, LENGTH_AT);
    let min_length = (BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;
    if batch_length < min_length {
        return corrupt(format!(
            "batchLength {batch_length} is below the v2 header size {min_length}"
        ));
    }
    let bytes = LOG_OVERHEAD_BYTES + batch_length as usize;
    if bytes > rest.len() {
        return corrupt(format!(
            "truncated batch: batchLength says {bytes} bytes, {} present",
            rest.len()
        ));
    }
    let batch = &rest[..bytes];
    let magic = batch[MAGIC_AT] as i8;
    if magic != 2 {
        return corrupt(format!("record batch magic {magic}, only 2 is supported"));
    }
    if bytes as u64 > max_batch_bytes {
        return Err(ShardError::MessageTooLarge {
            bytes: bytes as u64,
            max: max_batch_bytes,
        });
    }
    let stored = read_u32(batch, CRC_AT);
    let computed = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    if stored != computed {
        return corrupt(format!(
            "record batch CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    check_counts(batch)?;
    Ok(bytes)
}

fn check_counts(batch: &[u8]) -> Result<(), ShardError> {
    let last_offset_delta = read_i32(batch, LAST_OFFSET_DELTA_AT);
    let record_count = read_i32(batch, RECORD_COUNT_AT);
    if record_count <= 0 {
        return Err(ShardError::InvalidRecord(format!(
            "record batch with recordCount {record_count}"
        )));
    }
    if i64::from(last_offset_delta) + 1 != i64::from(record_count) {
        return Err(ShardError::InvalidRecord(format!(
            "inconsistent batch: lastOffsetDelta {last_offset_delta} with recordCount {record_count}"
        )));
    }
    Ok(())
}

/// Assigns offsets from `base_offset` to the validated batches in `records`,
/// and for LogAppendTime topics stamps `log_append_time_ms`. Returns the
/// last offset assigned.
pub fn patch(records: &mut [u8], base_offset: i64, log_append_time_ms: Option<i64>) -> i64 {
    assert!(base_offset >= 0, "offsets are never negative");
    let mut next = base_offset;
    let mut at = 0usize;
    while at < records.len() {
        let bytes = LOG_OVERHEAD_BYTES + read_i32(&records[at..], LENGTH_AT) as usize;
        let batch = &mut records[at..at + bytes];
        batch[..8].copy_from_slice(&next.to_be_bytes());
        if let Some(now_ms) = log_append_time_ms {
            stamp_log_append_time(batch, now_ms);
        }
        next += i64::from(read_i32(batch, LAST_OFFSET_DELTA_AT)) + 1;
        at += bytes;
    }
    assert_eq!(at, records.len(), "patch runs on validated records only");
    next - 1
}

fn stamp_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = read_i16(batch, ATTRIBUTES_AT) | ATTRIBUTE_LOG_APPEND_TIME;
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;

/// The idempotence fields of one batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerFields {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub last_offset_delta: i32,
}

/// The batches of validated `records`, one slice each.
pub fn batches(records: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = records;
    std::iter::from_fn(move || {
        if rest.len() < BATCH_HEADER_BYTES {
            return None;
        }
        let bytes =
            (LOG_OVERHEAD_BYTES + read_i32(rest, LENGTH_AT).max(0) as usize).min(rest.len());
        let (batch, tail) = rest.split_at(bytes);
        rest = tail;
        Some(batch)
    })
}

/// Producer id, epoch, base sequence and last offset delta of a batch of at
/// least `BATCH_HEADER_BYTES`.
pub fn producer_fields(batch: &[u8]) -> ProducerFields {
    assert!(batch.len() >= BATCH_HEADER_BYTES);
    ProducerFields {
        producer_id: read_i64(batch, PRODUCER_ID_AT),
        producer_epoch: read_i16(batch, PRODUCER_EPOCH_AT),
        base_sequence: read_i32(batch, BASE_SEQUENCE_AT),
        last_offset_delta: read_i32(batch, LAST_OFFSET_DELTA_AT),
    }
}

/// The `baseOffset` of the batch at the start of `batch` (>= 8 bytes).
pub fn base_offset(batch: &[u8]) -> i64 {
    read_i64(batch, 0)
}

fn read_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn read_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    read_i32(b, at) as u32
}

fn read_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

/// Builds valid v2 batches by hand, for tests in this crate.
#[cfg(test)]
pub(crate) mod testing {
    /// One uncompressed batch of `count` records, each carrying `value`.
    pub fn batch(count: i32, timestamp_ms: i64, value: &[u8]) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..count {
            records.extend_from_slice(&record(i, value));
        }
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes()); // baseOffset
        b.extend_from_slice(&0i32.to_be_bytes()); // batchLength, set below
        b.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
        b.push(2); // magic
        b.extend_from_slice(&0u32.to_be_bytes()); // crc, set below
        b.extend_from_slice(&0i16.to_be_bytes()); // attributes
        b.extend_from_slice(&(count - 1).to_be_bytes()); // lastOffsetDelta
        b.extend_from_slice(&timestamp_ms.to_be_bytes()); // baseTimestamp
        b.extend_from_slice(&timestamp_ms.to_be_bytes()); // maxTimestamp
        b.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
        b.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
        b.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
        b.extend_from_slice(&count.to_be_bytes()); // recordCount
        b.extend_from_slice(&records);
        let length = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Sets a batch's producer id, epoch and base sequence; fixes the CRC.
    pub fn with_producer(mut b: Vec<u8>, producer_id: i64, epoch: i16, base_seq: i32) -> Vec<u8> {
        b[43..51].copy_from_slice(&producer_id.to_be_bytes());
        b[51..53].copy_from_slice(&epoch.to_be_bytes());
        b[53..57].copy_from_slice(&base_seq.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn record(offset_delta: i32, value: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8]; // attributes
        varint(&mut body, 0); // timestampDelta
        varint(&mut body, i64::from(offset_delta));
        varint(&mut body, -1); // key: null
        varint(&mut body, value.len() as i64);
        body.extend_from_slice(value);
        varint(&mut body, 0); // headers
        let mut r = Vec::new();
        varint(&mut r, body.len() as i64);
        r.extend_from_slice(&body);
        r
    }

    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::testing::batch;
    use super::*;

    const MAX: u64 = MAX_MESSAGE_BYTES_DEFAULT;

    fn crc_ok(b: &[u8]) -> bool {
        read_u32(b, CRC_AT) == crc32c::crc32c(&b[ATTRIBUTES_AT..])
    }

    #[test]
    fn valid_batch_passes() {
        let b = batch(3, 1_700_000_000_000, b"hello");
        let s = validate(&b, MAX).expect("valid");
        assert_eq!(
            s,
            RecordsSummary {
                batches: 1,
                offsets: 3,
                max_timestamp: 1_700_000_000_000
            }
        );
    }

    #[test]
    fn several_batches_in_one_request() {
        let mut b = batch(2, 10, b"a");
        b.extend_from_slice(&batch(5, 20, b"bb"));
        let s = validate(&b, MAX).expect("valid");
        assert_eq!(
            s,
            RecordsSummary {
                batches: 2,
                offsets: 7,
                max_timestamp: 20
            }
        );
        let last = patch(&mut b, 100, None);
        assert_eq!(last, 106);
        let first_len = batch(2, 10, b"a").len();
        assert_eq!(base_offset(&b), 100);
        assert_eq!(base_offset(&b[first_len..]), 102);
        validate(&b, MAX).expect("still valid after patching");
    }

    #[test]
    fn bad_crc_is_corrupt() {
        let mut b = batch(1, 0, b"x");
        let last = b.len() - 1;
        b[last] ^= 0xFF;
        assert!(
            matches!(validate(&b, MAX), Err(ShardError::CorruptMessage(m)) if m.contains("CRC"))
        );
    }

    #[test]
    fn bad_magic_is_corrupt() {
        let mut b = batch(1, 0, b"x");
        b[MAGIC_AT] = 1;
        assert!(
            matches!(validate(&b, MAX), Err(ShardError::CorruptMessage(m)) if m.contains("magic"))
        );
    }

    #[test]
    fn truncated_is_corrupt() {
        let b = batch(2, 0, b"xyz");
        for cut in [1, 11, 12, 40, b.len() - 1] {
            assert!(
                matches!(validate(&b[..cut], MAX), Err(ShardError::CorruptMessage(_))),
                "cut at {cut}"
            );
        }
        let mut two = b.clone();
        two.extend_from_slice(&b[..20]);
        assert!(matches!(
            validate(&two, MAX),
            Err(ShardError::CorruptMessage(_))
        ));
        let mut short_length = b.clone();
        short_length[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&10i32.to_be_bytes());
        assert!(matches!(
            validate(&short_length, MAX),
            Err(ShardError::CorruptMessage(_))
        ));
    }

    #[test]
    fn too_large_is_refused() {
        let b = batch(1, 0, &vec![7u8; 2000]);
        let got = validate(&b, 1000);
        assert_eq!(
            got,
            Err(ShardError::MessageTooLarge {
                bytes: b.len() as u64,
                max: 1000
            })
        );
        validate(&b, b.len() as u64).expect("exactly at the limit");
    }

    #[test]
    fn empty_and_inconsistent_are_invalid() {
        assert!(matches!(
            validate(&[], MAX),
            Err(ShardError::InvalidRecord(_))
        ));
        let mut b = batch(2, 0, b"x");
        b[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate(&b, MAX),
            Err(ShardError::InvalidRecord(_))
        ));
    }

    #[test]
    fn offset_patch_keeps_crc_valid() {
        let mut b = batch(4, 55, b"payload");
        let crc_before = read_u32(&b, CRC_AT);
        let last = patch(&mut b, 1_000_000_007, None);
        assert_eq!(last, 1_000_000_010);
        assert_eq!(base_offset(&b), 1_000_000_007);
        assert_eq!(
            read_u32(&b, CRC_AT),
            crc_before,
            "baseOffset is outside the CRC"
        );
        assert!(crc_ok(&b));
    }

    #[test]
    fn log_append_time_sets_bit_timestamp_and_crc() {
        let mut b = batch(2, 55, b"payload");
        patch(&mut b, 9, Some(123_456));
        assert_eq!(
            read_i16(&b, ATTRIBUTES_AT) & ATTRIBUTE_LOG_APPEND_TIME,
            ATTRIBUTE_LOG_APPEND_TIME
        );
        assert_eq!(read_i64(&b, MAX_TIMESTAMP_AT), 123_456);
        assert!(crc_ok(&b));
        assert_eq!(validate(&b, MAX).expect("valid").max_timestamp, 123_456);
    }
}
