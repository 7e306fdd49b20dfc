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
//!
//! One record (inside an uncompressed batch, or a decompressed one):
//!
//! ```text
//! length varint (of the rest)   keyLength varint (-1: null), key
//! attributes i8                 valueLength varint (-1: null), value
//! timestampDelta varlong        headerCount varint, then per header:
//! offsetDelta varint              keyLength varint (>= 0), key,
//!                                 valueLength varint (-1: null), value
//! ```
//!
//! Varints are zigzag-encoded, at most 5 bytes (varlong: 10). What
//! `validate` checks of the records depends on the codec:
//!
//! - uncompressed: every record is walked in place (`check_records`),
//!   each length and count against the bytes left; the records must be
//!   exactly `recordCount`, with offset deltas 0, 1, ... `lastOffsetDelta`,
//!   and end exactly at the batch end. A batch whose records do not parse
//!   is CORRUPT_MESSAGE; records that parse but disagree with the header
//!   (their number, their offset deltas) are INVALID_RECORD, as in Kafka.
//! - compressed: the batch is stored as sent and is not decompressed on
//!   the produce path, so the records are not walked; only the header is
//!   checked (codec id, `recordCount` against `lastOffsetDelta`). A batch
//!   whose compressed records lie (header counts, or a record count that
//!   agrees with `lastOffsetDelta` but not with the records) is stored and
//!   reaches consumers as sent. librdkafka delivers such records as it
//!   finds them: a batch holding more records than it claims gives the
//!   next batch's first offsets to two records. Kafka decompresses on
//!   produce to refuse these; that costs the codec's time on every
//!   compressed produce and is not done here.

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
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const MAX_TIMESTAMP_AT: usize = 35;
const RECORD_COUNT_AT: usize = 57;
/// Attribute bits of the compression codec (0: none).
const ATTRIBUTE_CODEC_MASK: i16 = 0x07;
/// The last codec id (zstd); 5..=7 name no codec.
const CODEC_ID_MAX: i16 = 4;
/// Bytes of the smallest record body: attributes, then one-byte varints
/// for timestampDelta, offsetDelta, keyLength, valueLength, headerCount.
const RECORD_BODY_BYTES_MIN: usize = 6;
/// Bytes of the smallest header: one-byte varints for its two lengths.
const HEADER_BYTES_MIN: usize = 2;

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
    validate_from(records, max_batch_bytes, Gaps::Refused)
}

/// `validate` for batches a leader already stored (a follower's copy):
/// compaction leaves gaps, so a batch may hold fewer records than its
/// `lastOffsetDelta` says (even none), their offset deltas increasing.
pub fn validate_replicated(
    records: &[u8],
    max_batch_bytes: u64,
) -> Result<RecordsSummary, ShardError> {
    validate_from(records, max_batch_bytes, Gaps::Allowed)
}

/// Whether records may skip offsets within a batch (compacted batches).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gaps {
    Refused,
    Allowed,
}

fn validate_from(
    records: &[u8],
    max_batch_bytes: u64,
    gaps: Gaps,
) -> Result<RecordsSummary, ShardError> {
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
        let bytes = validate_one(&records[at..], max_batch_bytes, gaps)?;
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
fn validate_one(rest: &[u8], max_batch_bytes: u64, gaps: Gaps) -> Result<usize, ShardError> {
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
    check_counts(batch, gaps)?;
    let codec = read_i16(batch, ATTRIBUTES_AT) & ATTRIBUTE_CODEC_MASK;
    if codec > CODEC_ID_MAX {
        return corrupt(format!("record batch with compression codec id {codec}"));
    }
    if codec == 0 {
        check_records(batch, gaps)?;
    }
    Ok(bytes)
}

fn check_counts(batch: &[u8], gaps: Gaps) -> Result<(), ShardError> {
    let last_offset_delta = read_i32(batch, LAST_OFFSET_DELTA_AT);
    let record_count = read_i32(batch, RECORD_COUNT_AT);
    if gaps == Gaps::Allowed {
        if record_count < 0
            || last_offset_delta < 0
            || i64::from(record_count) > i64::from(last_offset_delta) + 1
        {
            return Err(ShardError::InvalidRecord(format!(
                "inconsistent batch: lastOffsetDelta {last_offset_delta} with recordCount {record_count}"
            )));
        }
        return Ok(());
    }
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

/// Walks the records of an uncompressed batch that passed `check_counts`
/// (so `recordCount` = `lastOffsetDelta` + 1 > 0): they must parse within
/// the batch, be exactly `recordCount`, carry offset deltas 0, 1, ... in
/// order (with `Gaps::Allowed`: increasing, at most `lastOffsetDelta`),
/// and end at the batch end. No allocation on success; the loops are
/// bounded by the bytes of the batch (a record takes at least 7).
fn check_records(batch: &[u8], gaps: Gaps) -> Result<(), ShardError> {
    let record_count = read_i32(batch, RECORD_COUNT_AT);
    let last_offset_delta = read_i32(batch, LAST_OFFSET_DELTA_AT);
    let mut previous: i32 = -1;
    let mut c = Cursor::new(&batch[BATCH_HEADER_BYTES..]);
    let mut records: i32 = 0;
    while c.left() > 0 {
        if records == record_count {
            return Err(ShardError::InvalidRecord(format!(
                "record batch has {} bytes past its recordCount {record_count} records",
                c.left()
            )));
        }
        let start = c.at;
        let offset_delta = c.record().map_err(|m| {
            ShardError::CorruptMessage(m.describe(records, BATCH_HEADER_BYTES + start))
        })?;
        let in_order = match gaps {
            Gaps::Refused => offset_delta == records,
            Gaps::Allowed => offset_delta > previous && offset_delta <= last_offset_delta,
        };
        if !in_order {
            return Err(ShardError::InvalidRecord(format!(
                "record {records} has offsetDelta {offset_delta} out of order"
            )));
        }
        previous = offset_delta;
        records += 1;
    }
    if records != record_count {
        return Err(ShardError::InvalidRecord(format!(
            "record batch holds {records} records, its recordCount says {record_count}"
        )));
    }
    Ok(())
}

/// Why a record does not parse. Two bytes, so the walk's results stay
/// small: a 32-byte error (with the bad value and the bytes left) made the
/// walk 20-50% slower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Malformed {
    field: Field,
    problem: Problem,
}

/// The record field a problem was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Length,
    Attributes,
    TimestampDelta,
    OffsetDelta,
    Key,
    Value,
    HeaderCount,
    HeaderKey,
    HeaderValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Problem {
    /// The bytes end inside the field.
    Truncated,
    /// A varint longer than its type allows.
    VarintTooLong,
    /// A length or count below what the field allows.
    Negative,
    /// A length or count larger than the bytes left.
    TooLong,
    /// A record length below the smallest record.
    TooShort,
    /// The record's fields end before its announced length.
    Trailing,
}

impl Malformed {
    fn new(field: Field, problem: Problem) -> Malformed {
        Malformed { field, problem }
    }

    /// The message of a record batch that does not parse (error path).
    fn describe(self, record: i32, at: usize) -> String {
        let problem = match self.problem {
            Problem::Truncated => "ends inside its",
            Problem::VarintTooLong => "has an overlong varint in its",
            Problem::Negative => "has a negative",
            Problem::TooLong => "claims more bytes than are left in its",
            Problem::TooShort => "is shorter than the smallest record, by its",
            Problem::Trailing => "has bytes past its last field, after its",
        };
        format!(
            "record {record} (batch byte {at}) {problem} {:?}",
            self.field
        )
    }
}

/// A read position over a batch's records; every read is checked against
/// the bytes left.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, at: 0 }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.at
    }

    #[inline]
    fn byte(&mut self, field: Field) -> Result<u8, Malformed> {
        let b = *self
            .buf
            .get(self.at)
            .ok_or(Malformed::new(field, Problem::Truncated))?;
        self.at += 1;
        Ok(b)
    }

    /// A zigzag varint of at most 5 bytes. (A separate one-byte fast path
    /// measured no faster.)
    #[inline]
    fn varint(&mut self, field: Field) -> Result<i32, Malformed> {
        let mut raw: u32 = 0;
        for i in 0..5 {
            let b = self.byte(field)?;
            raw |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((raw >> 1) as i32 ^ -((raw & 1) as i32));
            }
        }
        Err(Malformed::new(field, Problem::VarintTooLong))
    }

    /// Steps over a varlong (at most 10 bytes) without decoding it.
    #[inline]
    fn skip_varlong(&mut self, field: Field) -> Result<(), Malformed> {
        for _ in 0..10 {
            if self.byte(field)? < 0x80 {
                return Ok(());
            }
        }
        Err(Malformed::new(field, Problem::VarintTooLong))
    }

    /// A varint length or count, checked against the bytes left, each
    /// element taking at least `unit_bytes`; -1 (null) only where
    /// `nullable`. Returns it (0 for null).
    #[inline]
    fn length(
        &mut self,
        field: Field,
        nullable: bool,
        unit_bytes: usize,
    ) -> Result<usize, Malformed> {
        let n = self.varint(field)?;
        if n == -1 && nullable {
            return Ok(0);
        }
        let n = usize::try_from(n).map_err(|_| Malformed::new(field, Problem::Negative))?;
        if n > self.left() / unit_bytes {
            return Err(Malformed::new(field, Problem::TooLong));
        }
        Ok(n)
    }

    /// A nullable varint length, then that many bytes; `None` when it does
    /// not parse (null reads as empty).
    fn slice(&mut self, field: Field) -> Option<&'a [u8]> {
        let n = self.length(field, true, 1).ok()?;
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Some(s)
    }

    /// A varint length, then that many bytes skipped.
    #[inline]
    fn bytes(&mut self, field: Field, nullable: bool) -> Result<(), Malformed> {
        let n = self.length(field, nullable, 1)?;
        self.at += n;
        Ok(())
    }

    /// One record; returns its offset delta.
    fn record(&mut self) -> Result<i32, Malformed> {
        let length = self.length(Field::Length, false, 1)?;
        if length < RECORD_BODY_BYTES_MIN {
            return Err(Malformed::new(Field::Length, Problem::TooShort));
        }
        let mut body = Cursor::new(&self.buf[self.at..self.at + length]);
        self.at += length;
        body.byte(Field::Attributes)?;
        body.skip_varlong(Field::TimestampDelta)?;
        let offset_delta = body.varint(Field::OffsetDelta)?;
        body.bytes(Field::Key, true)?;
        body.bytes(Field::Value, true)?;
        // Each header takes at least its two lengths.
        let headers = body.length(Field::HeaderCount, false, HEADER_BYTES_MIN)?;
        for _ in 0..headers {
            body.bytes(Field::HeaderKey, false)?;
            body.bytes(Field::HeaderValue, true)?;
        }
        if body.left() > 0 {
            return Err(Malformed::new(Field::HeaderCount, Problem::Trailing));
        }
        Ok(offset_delta)
    }
}

/// Assigns offsets from `base_offset` to the validated batches in `records`,
/// stamps the leader's `leader_epoch` into each `partitionLeaderEpoch`
/// (outside the CRC, like `baseOffset`), and for LogAppendTime topics
/// stamps `log_append_time_ms`. Returns the last offset assigned.
pub fn patch(
    records: &mut [u8],
    base_offset: i64,
    log_append_time_ms: Option<i64>,
    leader_epoch: i32,
) -> i64 {
    assert!(base_offset >= 0, "offsets are never negative");
    let mut next = base_offset;
    let mut at = 0usize;
    while at < records.len() {
        let bytes = LOG_OVERHEAD_BYTES + read_i32(&records[at..], LENGTH_AT) as usize;
        let batch = &mut records[at..at + bytes];
        batch[..8].copy_from_slice(&next.to_be_bytes());
        batch[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&leader_epoch.to_be_bytes());
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

/// Where a batch's CRC32C starts to cover it (`attributes`, to its end).
pub const CRC_COVERS_FROM: usize = ATTRIBUTES_AT;

/// The CRC32C field of a whole batch (at least `BATCH_HEADER_BYTES`, and
/// exactly as long as its `batchLength` says), `None` otherwise. For a batch
/// that passed `validate` (and `patch`, which keeps it valid) it equals the
/// CRC32C of `batch[CRC_COVERS_FROM..]`: verified, so the WAL may reuse it.
pub fn stored_crc(batch: &[u8]) -> Option<u32> {
    let whole = batch.len() >= BATCH_HEADER_BYTES
        && LOG_OVERHEAD_BYTES + read_i32(batch, LENGTH_AT).max(0) as usize == batch.len();
    whole.then(|| read_u32(batch, CRC_AT))
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

/// Attribute bit of a transactional batch (KIP-98).
pub const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
/// Attribute bit of a control batch (transaction markers).
pub const ATTRIBUTE_CONTROL: i16 = 0x20;
/// The control record type of an abort marker (its key's second i16).
const CONTROL_TYPE_ABORT: i16 = 0;
/// The control record type of a commit marker.
const CONTROL_TYPE_COMMIT: i16 = 1;
/// Version of the control record key and of the end-transaction marker
/// value (Kafka's `ControlRecordType` and `EndTransactionMarker`: 0).
const CONTROL_VERSION: i16 = 0;
/// Bytes of a control record key (version i16, type i16).
const CONTROL_KEY_BYTES: usize = 4;
/// Bytes of an end-transaction marker value (version i16, coordinator
/// epoch i32).
const END_TXN_VALUE_BYTES: usize = 6;

/// The attributes of a batch of at least `BATCH_HEADER_BYTES`.
pub fn attributes(batch: &[u8]) -> i16 {
    read_i16(batch, ATTRIBUTES_AT)
}

/// Whether a batch (at least `BATCH_HEADER_BYTES`) is transactional.
pub fn is_transactional(batch: &[u8]) -> bool {
    attributes(batch) & ATTRIBUTE_TRANSACTIONAL != 0
}

/// Whether a batch (at least `BATCH_HEADER_BYTES`) is a control batch.
pub fn is_control(batch: &[u8]) -> bool {
    attributes(batch) & ATTRIBUTE_CONTROL != 0
}

/// What an end-transaction marker says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndTxn {
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// The end-transaction marker a control batch carries: its one record's
/// key is version 0 and type 0 (abort) or 1 (commit), its value version 0
/// and the coordinator epoch. `None` for anything else (another control
/// type, a compressed batch, a record that does not parse): Kafka ignores
/// control records of types it does not know, and so do the callers.
pub fn end_txn(batch: &[u8]) -> Option<EndTxn> {
    if batch.len() < BATCH_HEADER_BYTES
        || !is_control(batch)
        || attributes(batch) & ATTRIBUTE_CODEC_MASK != 0
        || read_i32(batch, RECORD_COUNT_AT) < 1
    {
        return None;
    }
    let mut c = Cursor::new(&batch[BATCH_HEADER_BYTES..]);
    let length = c.length(Field::Length, false, 1).ok()?;
    let mut r = Cursor::new(&c.buf[c.at..c.at + length]);
    r.byte(Field::Attributes).ok()?;
    r.skip_varlong(Field::TimestampDelta).ok()?;
    r.varint(Field::OffsetDelta).ok()?;
    let key = r.slice(Field::Key)?;
    let value = r.slice(Field::Value)?;
    if key.len() < CONTROL_KEY_BYTES || read_i16(key, 0) < CONTROL_VERSION {
        return None;
    }
    let commit = match read_i16(key, 2) {
        CONTROL_TYPE_ABORT => false,
        CONTROL_TYPE_COMMIT => true,
        _ => return None,
    };
    // Later value versions may add fields after the coordinator epoch.
    if value.len() < END_TXN_VALUE_BYTES || read_i16(value, 0) < CONTROL_VERSION {
        return None;
    }
    Some(EndTxn {
        commit,
        coordinator_epoch: read_i32(value, 2),
    })
}

/// A control batch holding one end-transaction marker of producer
/// `producer_id` at `producer_epoch` (Kafka's
/// `MemoryRecords.withEndTransactionMarker`): transactional and control,
/// uncompressed, base sequence -1 (markers take no part in sequence
/// checks), stamped `timestamp_ms`, at base offset 0 (the produce path
/// assigns the real one). CRC valid.
pub fn control_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: EndTxn,
    timestamp_ms: i64,
) -> Vec<u8> {
    let kind = if marker.commit {
        CONTROL_TYPE_COMMIT
    } else {
        CONTROL_TYPE_ABORT
    };
    let mut body = Vec::with_capacity(32);
    body.push(0); // attributes
    body.push(0); // timestampDelta: varint 0
    body.push(0); // offsetDelta: varint 0
    body.push((CONTROL_KEY_BYTES as u8) << 1); // keyLength: zigzag varint
    body.extend_from_slice(&CONTROL_VERSION.to_be_bytes());
    body.extend_from_slice(&kind.to_be_bytes());
    body.push((END_TXN_VALUE_BYTES as u8) << 1); // valueLength
    body.extend_from_slice(&CONTROL_VERSION.to_be_bytes());
    body.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    body.push(0); // headerCount
    let mut b = Vec::with_capacity(BATCH_HEADER_BYTES + body.len() + 1);
    b.extend_from_slice(&0i64.to_be_bytes()); // baseOffset
    b.extend_from_slice(&0i32.to_be_bytes()); // batchLength, set below
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
    b.push(2); // magic
    b.extend_from_slice(&0u32.to_be_bytes()); // crc, set below
    b.extend_from_slice(&(ATTRIBUTE_TRANSACTIONAL | ATTRIBUTE_CONTROL).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // lastOffsetDelta
    b.extend_from_slice(&timestamp_ms.to_be_bytes()); // baseTimestamp
    b.extend_from_slice(&timestamp_ms.to_be_bytes()); // maxTimestamp
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&producer_epoch.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
    b.extend_from_slice(&1i32.to_be_bytes()); // recordCount
    b.push((body.len() as u8) << 1); // length: under 64, a one-byte varint
    b.extend_from_slice(&body);
    let length = (b.len() - LOG_OVERHEAD_BYTES) as i32;
    b[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The `partitionLeaderEpoch` of a batch of at least `BATCH_HEADER_BYTES`.
pub fn leader_epoch(batch: &[u8]) -> i32 {
    read_i32(batch, LEADER_EPOCH_AT)
}

/// The `maxTimestamp` of a batch of at least `BATCH_HEADER_BYTES`.
pub fn max_timestamp(batch: &[u8]) -> i64 {
    read_i64(batch, MAX_TIMESTAMP_AT)
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
        raw_batch(&records, count, timestamp_ms)
    }

    /// A batch around `records` (encoded records, or a compressed blob)
    /// whose header claims `count` records; CRC valid.
    pub fn raw_batch(records: &[u8], count: i32, timestamp_ms: i64) -> Vec<u8> {
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
        b.extend_from_slice(records);
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

    /// Sets the transactional attribute bit; fixes the CRC.
    pub fn transactional(mut b: Vec<u8>) -> Vec<u8> {
        let attributes = i16::from_be_bytes([b[21], b[22]]) | super::ATTRIBUTE_TRANSACTIONAL;
        b[21..23].copy_from_slice(&attributes.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Sets recordCount and lastOffsetDelta, the attributes' codec bits;
    /// fixes the CRC.
    pub fn with_header(mut b: Vec<u8>, count: i32, last_offset_delta: i32, codec: i16) -> Vec<u8> {
        b[57..61].copy_from_slice(&count.to_be_bytes());
        b[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
        let attributes = (i16::from_be_bytes([b[21], b[22]]) & !0x07) | codec;
        b[21..23].copy_from_slice(&attributes.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn record(offset_delta: i32, value: &[u8]) -> Vec<u8> {
        let mut body = record_fields(offset_delta, None, Some(value));
        varint(&mut body, 0); // headers
        framed(&body)
    }

    /// A record's fields up to its header count: attributes,
    /// timestampDelta, offsetDelta, key, value.
    pub fn record_fields(offset_delta: i32, key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0u8]; // attributes
        varint(&mut body, 0); // timestampDelta
        varint(&mut body, i64::from(offset_delta));
        for field in [key, value] {
            match field {
                Some(x) => {
                    varint(&mut body, x.len() as i64);
                    body.extend_from_slice(x);
                }
                None => varint(&mut body, -1),
            }
        }
        body
    }

    /// A record body behind its varint length.
    pub fn framed(body: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        varint(&mut r, body.len() as i64);
        r.extend_from_slice(body);
        r
    }

    pub fn varint(out: &mut Vec<u8>, v: i64) {
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
        let last = patch(&mut b, 100, None, 7);
        assert_eq!(leader_epoch(&b), 7);
        assert_eq!(leader_epoch(&b[batch(2, 10, b"a").len()..]), 7);
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
        let last = patch(&mut b, 1_000_000_007, None, 3);
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
        patch(&mut b, 9, Some(123_456), 0);
        assert_eq!(
            read_i16(&b, ATTRIBUTES_AT) & ATTRIBUTE_LOG_APPEND_TIME,
            ATTRIBUTE_LOG_APPEND_TIME
        );
        assert_eq!(read_i64(&b, MAX_TIMESTAMP_AT), 123_456);
        assert!(crc_ok(&b));
        assert_eq!(validate(&b, MAX).expect("valid").max_timestamp, 123_456);
    }

    #[test]
    fn control_batch_round_trips_through_validation_and_parsing() {
        for commit in [true, false] {
            let marker = EndTxn {
                commit,
                coordinator_epoch: 7,
            };
            let mut b = control_batch(42, 3, marker, 1_700_000_000_000);
            let s = validate(&b, MAX).expect("a marker is a valid batch");
            assert_eq!((s.batches, s.offsets), (1, 1));
            assert_eq!(s.max_timestamp, 1_700_000_000_000);
            assert!(is_control(&b) && is_transactional(&b));
            assert_eq!(end_txn(&b), Some(marker));
            assert_eq!(
                producer_fields(&b),
                ProducerFields {
                    producer_id: 42,
                    producer_epoch: 3,
                    base_sequence: -1,
                    last_offset_delta: 0,
                }
            );
            assert_eq!(patch(&mut b, 100, Some(5), 2), 100);
            validate(&b, MAX).expect("still valid once patched");
            assert_eq!((base_offset(&b), leader_epoch(&b)), (100, 2));
            assert_eq!(end_txn(&b), Some(marker), "patching keeps the marker");
        }
        // Not markers: a plain batch, a transactional data batch, another
        // control type (Kafka's LEADER_CHANGE, 2), a compressed one.
        assert_eq!(end_txn(&batch(1, 0, b"x")), None);
        assert_eq!(
            end_txn(&super::testing::transactional(batch(1, 0, b"x"))),
            None
        );
        let marker = EndTxn {
            commit: true,
            coordinator_epoch: 0,
        };
        let mut other = control_batch(1, 0, marker, 0);
        // Header, record length, attributes, timestampDelta, offsetDelta,
        // keyLength, then the key: version (2 bytes), type (2 bytes).
        let type_low = BATCH_HEADER_BYTES + 5 + 3;
        other[type_low] = 2;
        let crc = crc32c::crc32c(&other[ATTRIBUTES_AT..]);
        other[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        validate(&other, MAX).expect("valid batch");
        assert_eq!(end_txn(&other), None);
        let compressed = with_header(control_batch(1, 0, marker, 0), 1, 0, 1);
        assert_eq!(end_txn(&compressed), None);
        // A torn record never panics.
        let whole = control_batch(1, 0, marker, 0);
        for cut in BATCH_HEADER_BYTES..whole.len() {
            assert_eq!(end_txn(&whole[..cut]), None, "cut at {cut}");
        }
    }

    // ------------------------------------------------------------ record walk

    use super::testing::{framed, raw_batch, record_fields, varint, with_header};

    fn is_corrupt(r: Result<RecordsSummary, ShardError>) -> bool {
        matches!(r, Err(ShardError::CorruptMessage(_)))
    }

    fn is_invalid(r: Result<RecordsSummary, ShardError>) -> bool {
        matches!(r, Err(ShardError::InvalidRecord(_)))
    }

    /// A record with `offset_delta` whose header section is `headers`
    /// (count and headers, encoded by the caller).
    fn record_with_headers(offset_delta: i32, headers: &[u8]) -> Vec<u8> {
        let mut body = record_fields(offset_delta, Some(b"k"), Some(b"v"));
        body.extend_from_slice(headers);
        framed(&body)
    }

    /// An uncompressed batch of the given encoded records, its header
    /// claiming `records.len()` (consistent counts).
    fn batch_of(records: &[Vec<u8>]) -> Vec<u8> {
        raw_batch(&records.concat(), records.len() as i32, 0)
    }

    #[test]
    fn records_with_headers_keys_and_nulls_pass() {
        let mut headers = Vec::new();
        varint(&mut headers, 2);
        varint(&mut headers, 2);
        headers.extend_from_slice(b"h1");
        varint(&mut headers, -1); // null value
        varint(&mut headers, 0); // empty key
        varint(&mut headers, 3);
        headers.extend_from_slice(b"abc");
        let mut null_key = record_fields(1, None, None);
        varint(&mut null_key, 0);
        let big = {
            let mut body = record_fields(2, Some(&[1u8; 300]), Some(&vec![2u8; 70_000]));
            varint(&mut body, 0);
            framed(&body)
        };
        let b = batch_of(&[record_with_headers(0, &headers), framed(&null_key), big]);
        assert_eq!(validate(&b, MAX).expect("valid").offsets, 3);
    }

    #[test]
    fn record_count_above_the_records_is_invalid() {
        let b = batch(3, 0, b"abc");
        assert!(is_invalid(validate(&with_header(b, 5, 4, 0), MAX)));
        let b = batch(1, 0, b"abc");
        let lie = with_header(b, i32::MAX, i32::MAX - 1, 0);
        assert!(is_invalid(validate(&lie, MAX)));
    }

    #[test]
    fn record_count_below_the_records_is_invalid() {
        let b = batch(3, 0, b"abc");
        assert!(is_invalid(validate(&with_header(b.clone(), 2, 1, 0), MAX)));
        assert!(is_invalid(validate(&with_header(b, 1, 0, 0), MAX)));
    }

    #[test]
    fn negative_or_zero_record_count_is_invalid() {
        for (count, delta) in [(-1, -2), (0, -1), (i32::MIN, i32::MAX), (-5, 2)] {
            let b = with_header(batch(3, 0, b"abc"), count, delta, 0);
            assert!(is_invalid(validate(&b, MAX)), "count {count}");
        }
    }

    #[test]
    fn last_offset_delta_against_count_is_invalid() {
        for delta in [0, 1, 3, 100, -1, i32::MAX] {
            let b = with_header(batch(3, 0, b"abc"), 3, delta, 0);
            assert!(is_invalid(validate(&b, MAX)), "lastOffsetDelta {delta}");
        }
        let b = with_header(batch(3, 0, b"abc"), 3, 2, 0);
        validate(&b, MAX).expect("the truth passes");
    }

    #[test]
    fn offset_deltas_out_of_order_are_invalid() {
        let v = b"v".as_slice();
        let shapes: [[i32; 3]; 4] = [[0, 2, 1], [1, 2, 3], [0, 0, 1], [0, 1, -1]];
        for deltas in shapes {
            let records: Vec<Vec<u8>> = deltas
                .iter()
                .map(|&d| {
                    let mut body = record_fields(d, None, Some(v));
                    varint(&mut body, 0);
                    framed(&body)
                })
                .collect();
            assert!(is_invalid(validate(&batch_of(&records), MAX)), "{deltas:?}");
        }
    }

    #[test]
    fn header_count_past_the_bytes_is_corrupt() {
        for count in [1_000_000i64, 3, i64::from(i32::MAX)] {
            let mut headers = Vec::new();
            varint(&mut headers, count);
            varint(&mut headers, 1);
            headers.extend_from_slice(b"h");
            varint(&mut headers, -1);
            let b = batch_of(&[record_with_headers(0, &headers)]);
            assert!(is_corrupt(validate(&b, MAX)), "headerCount {count}");
        }
    }

    #[test]
    fn a_corrupt_record_is_named_in_the_error() {
        let mut headers = Vec::new();
        varint(&mut headers, 1_000_000);
        let b = batch_of(&[
            record_with_headers(0, &[0]),
            record_with_headers(1, &headers),
        ]);
        match validate(&b, MAX) {
            Err(ShardError::CorruptMessage(m)) => {
                assert!(m.contains("record 1") && m.contains("HeaderCount"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn negative_header_count_is_corrupt() {
        for count in [-1i64, -1_000_000, i64::from(i32::MIN)] {
            let mut headers = Vec::new();
            varint(&mut headers, count);
            let b = batch_of(&[record_with_headers(0, &headers)]);
            assert!(is_corrupt(validate(&b, MAX)), "headerCount {count}");
        }
    }

    #[test]
    fn header_lengths_that_lie_are_corrupt() {
        let shapes: [(i64, i64); 4] = [(-1, 0), (-7, 0), (100, 0), (1, 100)];
        for (key, value) in shapes {
            let mut headers = Vec::new();
            varint(&mut headers, 1);
            varint(&mut headers, key);
            headers.push(b'h');
            varint(&mut headers, value);
            let b = batch_of(&[record_with_headers(0, &headers)]);
            assert!(is_corrupt(validate(&b, MAX)), "key {key} value {value}");
        }
    }

    #[test]
    fn key_and_value_lengths_that_lie_are_corrupt() {
        for (key, value) in [
            (-2i64, 1i64),
            (1000, 1),
            (1, 1000),
            (1, -3),
            (i64::from(i32::MAX), 0),
        ] {
            let mut body = vec![0u8];
            varint(&mut body, 0);
            varint(&mut body, 0);
            varint(&mut body, key);
            body.push(b'k');
            varint(&mut body, value);
            body.push(b'v');
            varint(&mut body, 0);
            let b = batch_of(&[framed(&body)]);
            assert!(is_corrupt(validate(&b, MAX)), "key {key} value {value}");
        }
    }

    #[test]
    fn record_lengths_that_lie_are_corrupt() {
        let good = batch(2, 0, b"hello");
        let records = &good[BATCH_HEADER_BYTES..];
        let first = records.len() / 2;
        assert_eq!(
            records[0] as usize,
            (first - 1) * 2,
            "one-byte zigzag length"
        );
        for length in [
            -1i64,
            0,
            5,
            (first as i64) - 2,
            first as i64,
            1000,
            i64::from(i32::MAX),
        ] {
            let mut lie = Vec::new();
            varint(&mut lie, length);
            lie.extend_from_slice(&records[1..]);
            let b = raw_batch(&lie, 2, 0);
            assert!(is_corrupt(validate(&b, MAX)), "length {length}");
        }
    }

    #[test]
    fn overlong_varints_and_torn_records_are_corrupt() {
        let mut body = vec![0u8];
        body.extend_from_slice(&[0xff; 11]); // timestampDelta: 11 bytes
        body.push(0);
        let b = batch_of(&[framed(&body)]);
        assert!(is_corrupt(validate(&b, MAX)));
        let mut body = vec![0u8, 0];
        body.extend_from_slice(&[0x80; 6]); // offsetDelta: 6 bytes
        body.push(0);
        let b = batch_of(&[framed(&body)]);
        assert!(is_corrupt(validate(&b, MAX)));
        // The batch ends in the middle of a record's length varint.
        let mut records = batch(1, 0, b"x")[BATCH_HEADER_BYTES..].to_vec();
        records.push(0x80);
        assert!(is_corrupt(validate(&raw_batch(&records, 2, 0), MAX)));
    }

    #[test]
    fn bytes_past_the_last_record_are_refused() {
        let mut records = batch(2, 0, b"x")[BATCH_HEADER_BYTES..].to_vec();
        records.extend_from_slice(&[0u8; 3]);
        let r = validate(&raw_batch(&records, 2, 0), MAX);
        assert!(is_invalid(r), "more bytes than recordCount records");
    }

    #[test]
    fn compressed_batches_are_checked_by_header_only() {
        // An opaque blob: not walked (stored as sent), whatever it holds.
        let blob = [0xde, 0xad, 0xbe, 0xef, 0x01];
        for codec in 1..=4 {
            let b = with_header(raw_batch(&blob, 7, 0), 7, 6, codec);
            assert_eq!(validate(&b, MAX).expect("header consistent").offsets, 7);
            let lie = with_header(raw_batch(&blob, 7, 0), 7, 3, codec);
            assert!(is_invalid(validate(&lie, MAX)), "codec {codec}");
            let lie = with_header(raw_batch(&blob, 7, 0), -1, -2, codec);
            assert!(is_invalid(validate(&lie, MAX)), "codec {codec}");
        }
        for codec in 5..=7 {
            let b = with_header(raw_batch(&blob, 1, 0), 1, 0, codec);
            assert!(is_corrupt(validate(&b, MAX)), "codec {codec}");
        }
    }

    /// Every single-byte change of a valid batch's records (CRC fixed, so
    /// only the change remains) is accepted or refused, never a panic,
    /// and a truncated record section is always refused.
    #[test]
    fn any_byte_of_the_records_changed_never_panics() {
        let mut headers = Vec::new();
        varint(&mut headers, 1);
        varint(&mut headers, 1);
        headers.push(b'h');
        varint(&mut headers, 2);
        headers.extend_from_slice(b"hv");
        let good = batch_of(&[
            record_with_headers(0, &headers),
            record_with_headers(1, &[0]),
        ]);
        validate(&good, MAX).expect("valid");
        for at in BATCH_HEADER_BYTES..good.len() {
            for x in [0x00u8, 0x01, 0x7f, 0x80, 0xff, good[at] ^ 0x40] {
                let mut b = good.clone();
                b[at] = x;
                let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
                b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
                let _ = validate(&b, MAX);
            }
        }
        let records = &good[BATCH_HEADER_BYTES..];
        for cut in 0..records.len() {
            let b = raw_batch(&records[..cut], 2, 0);
            assert!(validate(&b, MAX).is_err(), "cut at {cut}");
        }
    }
}
