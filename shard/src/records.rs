//! Decoding the records of stored record batches, for the search indexer.
//!
//! Runs off the shard's core, on an indexing helper thread: `decode_batches`
//! is a pure function of its arguments (no shard state, no `Rc`), so it can
//! be called from any thread.
//!
//! # Format
//!
//! The input is whole v2 record batches (magic 2) back to back, as stored
//! (layout of the 61-byte header in `batch`). A batch spans
//! `12 + batchLength` bytes; its records start at byte 61, compressed as a
//! whole when the codec bits of `attributes` (0x07) are not 0:
//!
//! - 1 gzip (one or more gzip members),
//! - 2 snappy: a raw snappy block, or the xerial framing of Java clients
//!   (`"\x82SNAPPY\0"`, version i32, compatible version i32, then chunks of
//!   a big-endian u32 length and a raw snappy block),
//! - 3 lz4 (the LZ4 frame format),
//! - 4 zstd (one or more frames).
//!
//! Records (format in `batch`) get offset `baseOffset + offsetDelta` and
//! timestamp `baseTimestamp + timestampDelta`, or the batch's
//! `maxTimestamp` when its attributes say LogAppendTime (0x08). Control
//! batches (0x20: transaction markers) hold no data and are skipped.
//! Records of aborted transactions are not told apart: they are decoded
//! like the others.
//!
//! # Bounds
//!
//! The batches passed `batch::validate` when produced, but are treated as
//! untrusted all the same: a compressed batch's records were never walked,
//! and bytes may rot. Nothing panics on any input and nothing is allocated
//! from a count read from the input:
//!
//! - Every length and count is checked against the bytes left before use
//!   (a header takes at least 2 bytes, so its count is checked against
//!   half of them); varints are at most 5 bytes, varlongs 10.
//! - A batch's records must be exactly `recordCount`, with offset deltas
//!   within `0..=lastOffsetDelta` (so a lying batch cannot give its records
//!   the offsets of another batch), and end exactly where the records end.
//! - Decompressed records go to the caller's `scratch` buffer, which never
//!   grows past `DecodeLimits::decompressed_bytes_max`: a batch that
//!   decompresses to more is refused as soon as the output reaches that
//!   size (a decompression bomb costs at most the cap). The codecs' own
//!   state is bounded: gzip 32 KiB window, lz4 at most a 4 MiB block, zstd
//!   a window of at most `max(cap, 8 MiB)` (rounded up to a power of two,
//!   never above 128 MiB).
//! - At most `DecodeLimits::headers_max` headers of a record are delivered
//!   (the first ones; the rest are still walked and checked). They are
//!   collected into one `Vec` per batch, reused for its records.
//! - The CRC is not checked again (`validate` did, on produce).
//!
//! # Errors
//!
//! Errors are per batch: a batch that does not decode is reported in
//! `errors` (a `BatchError`: where it is, its base offset, what is wrong)
//! and none of its records are delivered (each batch is walked once to
//! check it, then once to deliver it), and the walk goes on with the next
//! batch. Only when the bytes stop being batches (a truncated header, a
//! `batchLength` too small or past the end) is the rest unreachable:
//! `decode_batches` then returns `Err`, after delivering the batches
//! before that point.

use std::io::{self, Read};

use crate::batch::{ATTRIBUTE_LOG_APPEND_TIME, BATCH_HEADER_BYTES, LOG_OVERHEAD_BYTES};
use sluice_index::RecordRef;

const LENGTH_AT: usize = 8;
const MAGIC_AT: usize = 16;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const RECORD_COUNT_AT: usize = 57;
const ATTRIBUTE_CODEC_MASK: i16 = 0x07;
const ATTRIBUTE_CONTROL: i16 = 0x20;
/// Bytes of the smallest record body: attributes, then one-byte varints
/// for timestampDelta, offsetDelta, keyLength, valueLength, headerCount.
const RECORD_BODY_BYTES_MIN: usize = 6;
/// Bytes of the smallest header: one-byte varints for its two lengths.
const HEADER_BYTES_MIN: usize = 2;
/// The xerial snappy framing: magic, then version and compatible version.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\0";
const XERIAL_HEADER_BYTES: usize = 16;
/// First step of the decompression output (it then doubles, up to the cap).
const OUTPUT_STEP_BYTES: usize = 64 << 10;
/// Bounds of the zstd window log (8 MiB .. 128 MiB, zstd's own default).
const ZSTD_WINDOW_LOG_MIN: u32 = 23;
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Limits of one decode call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Bytes one compressed batch may decompress to.
    pub decompressed_bytes_max: usize,
    /// Headers delivered per record (the first ones; the rest are skipped).
    pub headers_max: usize,
}

impl DecodeLimits {
    pub const DECOMPRESSED_BYTES_MAX_DEFAULT: usize = 16 << 20;
    pub const HEADERS_MAX_DEFAULT: usize = 64;
}

impl Default for DecodeLimits {
    fn default() -> DecodeLimits {
        DecodeLimits {
            decompressed_bytes_max: Self::DECOMPRESSED_BYTES_MAX_DEFAULT,
            headers_max: Self::HEADERS_MAX_DEFAULT,
        }
    }
}

/// A batch that did not decode; none of its records were delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchError {
    /// Where the batch starts in the `batches` bytes.
    pub at: usize,
    /// The batch's `baseOffset` (as stored).
    pub base_offset: i64,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "record batch at byte {} (base offset {}): {}",
            self.at, self.base_offset, self.message
        )
    }
}

/// Calls `each` for every record of the batches in `batches` (whole v2
/// record batches back to back), in order. Compressed batches are
/// decompressed into `scratch` (reuse it across calls; its contents are
/// overwritten). A batch that does not decode is appended to `errors` and
/// skipped whole (none of its records reach `each`); control batches are
/// skipped silently.
///
/// Returns the number of records delivered. `Err` only when the bytes stop
/// being batches (truncated, or a `batchLength` out of range): the batches
/// before that point were delivered (and their errors appended), the rest
/// of the bytes could not be walked.
pub fn decode_batches(
    batches: &[u8],
    limits: &DecodeLimits,
    scratch: &mut Vec<u8>,
    errors: &mut Vec<BatchError>,
    each: &mut dyn FnMut(RecordRef<'_>),
) -> Result<u64, String> {
    let mut records = 0u64;
    let mut at = 0usize;
    while at < batches.len() {
        let rest = &batches[at..];
        let bytes = batch_bytes(rest).map_err(|m| format!("record batch at byte {at}: {m}"))?;
        let batch = &rest[..bytes];
        match decode_batch(batch, limits, scratch, each) {
            Ok(n) => records += n,
            Err(message) => errors.push(BatchError {
                at,
                base_offset: read_i64(batch, 0),
                message,
            }),
        }
        at += bytes;
    }
    Ok(records)
}

/// The size of the batch at the start of `rest`, from its `batchLength`.
fn batch_bytes(rest: &[u8]) -> Result<usize, String> {
    if rest.len() < BATCH_HEADER_BYTES {
        return Err(format!(
            "truncated: {} bytes left, the header takes {BATCH_HEADER_BYTES}",
            rest.len()
        ));
    }
    let length = read_i32(rest, LENGTH_AT);
    let bytes = usize::try_from(length)
        .ok()
        .and_then(|l| l.checked_add(LOG_OVERHEAD_BYTES))
        .filter(|&b| b >= BATCH_HEADER_BYTES)
        .ok_or_else(|| format!("batchLength {length} is below the v2 header size"))?;
    if bytes > rest.len() {
        return Err(format!(
            "truncated: batchLength says {bytes} bytes, {} present",
            rest.len()
        ));
    }
    Ok(bytes)
}

/// The header fields the records need.
struct Header {
    base_offset: i64,
    attributes: i16,
    last_offset_delta: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    record_count: i32,
}

impl Header {
    /// Reads the header of `batch` (at least `BATCH_HEADER_BYTES` long).
    fn parse(batch: &[u8]) -> Result<Header, String> {
        let magic = batch[MAGIC_AT] as i8;
        if magic != 2 {
            return Err(format!("magic {magic}, only 2 is supported"));
        }
        let h = Header {
            base_offset: read_i64(batch, 0),
            attributes: read_i16(batch, ATTRIBUTES_AT),
            last_offset_delta: read_i32(batch, LAST_OFFSET_DELTA_AT),
            base_timestamp: read_i64(batch, BASE_TIMESTAMP_AT),
            max_timestamp: read_i64(batch, MAX_TIMESTAMP_AT),
            record_count: read_i32(batch, RECORD_COUNT_AT),
        };
        if h.record_count < 0 || h.last_offset_delta < 0 {
            return Err(format!(
                "recordCount {} with lastOffsetDelta {}",
                h.record_count, h.last_offset_delta
            ));
        }
        Ok(h)
    }

    fn codec(&self) -> i16 {
        self.attributes & ATTRIBUTE_CODEC_MASK
    }

    /// The timestamp of a record with `delta`.
    fn timestamp(&self, delta: i64) -> Option<i64> {
        if self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0 {
            return Some(self.max_timestamp);
        }
        self.base_timestamp.checked_add(delta)
    }
}

/// Decodes one framed batch; returns the records delivered.
fn decode_batch(
    batch: &[u8],
    limits: &DecodeLimits,
    scratch: &mut Vec<u8>,
    each: &mut dyn FnMut(RecordRef<'_>),
) -> Result<u64, String> {
    let mut delivered = 0u64;
    rewrite_walk(batch, limits, scratch, &mut |r, _| {
        delivered += 1;
        each(r);
    })?;
    Ok(delivered)
}

/// What `rewrite_walk` tells of a batch besides its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchFacts {
    pub base_offset: i64,
    pub attributes: i16,
    pub record_count: i32,
    /// A control batch (transaction markers): its records were not walked.
    pub control: bool,
}

/// Walks one framed v2 batch (`12 + batchLength` bytes, as `decode_batches`
/// takes them) for rewriting it: `each(record, encoded)` gets every record
/// in order with its encoded bytes (length varint and body) as they lie in
/// the batch's records (decompressed into `scratch` when compressed). Every
/// record is checked before the first one is delivered, as in
/// `decode_batches`; control batches deliver nothing.
pub fn rewrite_walk(
    batch: &[u8],
    limits: &DecodeLimits,
    scratch: &mut Vec<u8>,
    each: &mut dyn FnMut(RecordRef<'_>, &[u8]),
) -> Result<BatchFacts, String> {
    let bytes = batch_bytes(batch)?;
    if bytes != batch.len() {
        return Err(format!(
            "batchLength says {bytes} bytes, the batch has {}",
            batch.len()
        ));
    }
    let h = Header::parse(batch)?;
    let facts = BatchFacts {
        base_offset: h.base_offset,
        attributes: h.attributes,
        record_count: h.record_count,
        control: h.attributes & ATTRIBUTE_CONTROL != 0,
    };
    if facts.control {
        return Ok(facts);
    }
    let body = &batch[BATCH_HEADER_BYTES..];
    let records: &[u8] = match h.codec() {
        0 => body,
        codec => {
            decompress(codec, body, scratch, limits.decompressed_bytes_max)?;
            &scratch[..]
        }
    };
    let mut headers = Vec::new();
    walk(&h, records, limits, &mut headers, None)?;
    walk(&h, records, limits, &mut headers, Some(each))?;
    Ok(facts)
}

/// Walks the records of a batch: checks them all, and hands them to
/// `deliver` when there is one (headers are only collected then).
fn walk<'a>(
    h: &Header,
    records: &'a [u8],
    limits: &DecodeLimits,
    headers: &mut Vec<(&'a [u8], Option<&'a [u8]>)>,
    mut deliver: Option<&mut dyn FnMut(RecordRef<'_>, &[u8])>,
) -> Result<u64, String> {
    let mut c = Cursor::new(records);
    let mut n: i32 = 0;
    let headers_max = if deliver.is_some() {
        limits.headers_max
    } else {
        0
    };
    while c.left() > 0 {
        if n == h.record_count {
            return Err(format!(
                "{} bytes past its recordCount {} records",
                c.left(),
                h.record_count
            ));
        }
        let at = c.at;
        let describe = |m: Bad| format!("record {n} (records byte {at}): {}", m.describe());
        let r = c.record(headers, headers_max).map_err(describe)?;
        let record = located(h, &r).map_err(|m| format!("record {n}: {m}"))?;
        if let Some(deliver) = deliver.as_mut() {
            let encoded = &records[at..c.at];
            deliver(
                RecordRef {
                    headers: headers.as_slice(),
                    ..record
                },
                encoded,
            );
        }
        n += 1;
    }
    if n != h.record_count {
        return Err(format!(
            "holds {n} records, its recordCount says {}",
            h.record_count
        ));
    }
    Ok(n as u64)
}

/// The record's offset and timestamp from the batch header (headers
/// left empty).
fn located<'a>(h: &Header, r: &Record<'a>) -> Result<RecordRef<'a>, String> {
    if r.offset_delta < 0 || r.offset_delta > h.last_offset_delta {
        return Err(format!(
            "offsetDelta {} outside the batch's 0..={}",
            r.offset_delta, h.last_offset_delta
        ));
    }
    let offset = h
        .base_offset
        .checked_add(i64::from(r.offset_delta))
        .ok_or("offset overflows")?;
    let timestamp_ms = h.timestamp(r.timestamp_delta).ok_or_else(|| {
        format!(
            "timestampDelta {} overflows the base timestamp",
            r.timestamp_delta
        )
    })?;
    Ok(RecordRef {
        offset,
        timestamp_ms,
        key: r.key,
        value: r.value,
        headers: &[],
    })
}

/// Decompresses `src` (records compressed with `codec`) into `out`, at
/// most `max` bytes of output.
fn decompress(codec: i16, src: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), String> {
    out.clear();
    match codec {
        1 => read_capped(flate2::bufread::MultiGzDecoder::new(src), out, max)
            .map_err(|e| format!("gzip: {e}")),
        2 if src.starts_with(XERIAL_MAGIC) => xerial_snappy(src, out, max),
        2 => snappy_block(src, out, max),
        3 => lz4_frame(src, out, max).map_err(|e| format!("lz4: {e}")),
        4 => zstd_frames(src, out, max).map_err(|e| format!("zstd: {e}")),
        codec => Err(format!("unknown compression codec id {codec}")),
    }
}

fn lz4_frame(src: &[u8], out: &mut Vec<u8>, max: usize) -> io::Result<()> {
    let mut decoder = lz4::Decoder::new(src)?;
    read_capped(&mut decoder, out, max)?;
    // The decoder reads a truncated frame as a short one.
    decoder
        .finish()
        .1
        .map_err(|_| io::Error::other("truncated frame"))
}

fn zstd_frames(src: &[u8], out: &mut Vec<u8>, max: usize) -> io::Result<()> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(src)?;
    let window_log = usize::BITS - max.saturating_sub(1).leading_zeros();
    decoder.window_log_max(window_log.clamp(ZSTD_WINDOW_LOG_MIN, ZSTD_WINDOW_LOG_MAX))?;
    read_capped(decoder, out, max)
}

/// Java clients' snappy: the xerial header, then length-prefixed blocks.
fn xerial_snappy(src: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), String> {
    let mut rest = src
        .get(XERIAL_HEADER_BYTES..)
        .ok_or("snappy: truncated xerial header")?;
    while !rest.is_empty() {
        let (length, after) = rest
            .split_first_chunk::<4>()
            .ok_or("snappy: truncated xerial chunk length")?;
        let length = u32::from_be_bytes(*length) as usize;
        if length > after.len() {
            return Err(format!(
                "snappy: xerial chunk of {length} bytes, {} left",
                after.len()
            ));
        }
        snappy_block(&after[..length], out, max)?;
        rest = &after[length..];
    }
    Ok(())
}

/// Appends one raw snappy block to `out`.
fn snappy_block(block: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), String> {
    let length = snap::raw::decompress_len(block).map_err(|e| format!("snappy: {e}"))?;
    let start = out.len();
    if length > max.saturating_sub(start) {
        return Err(too_large(max));
    }
    grow(out, start + length, max);
    out.resize(start + length, 0);
    let n = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| format!("snappy: {e}"))?;
    out.truncate(start + n);
    Ok(())
}

/// Reads all of `r` into `out` (empty), refusing more than `max` bytes.
/// `out` grows by doubling, never past `max`.
fn read_capped(mut r: impl Read, out: &mut Vec<u8>, max: usize) -> io::Result<()> {
    loop {
        let len = out.len();
        if len == max {
            return match fill(&mut r, &mut [0u8; 1]) {
                (0, result) => result,
                _ => Err(io::Error::other(too_large(max))),
            };
        }
        let want = len.saturating_add(len.max(OUTPUT_STEP_BYTES)).min(max);
        grow(out, want, max);
        out.resize(want, 0);
        let (n, result) = fill(&mut r, &mut out[len..]);
        out.truncate(len + n);
        result?;
        if len + n < want {
            return Ok(());
        }
    }
}

/// Reads until `buf` is full or `r` ends; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> (usize, io::Result<()>) {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k.min(buf.len() - n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, Err(e)),
        }
    }
    (n, Ok(()))
}

/// Makes room for `needed` bytes in `out`, doubling its capacity but
/// never reserving past `max` (`needed <= max`).
fn grow(out: &mut Vec<u8>, needed: usize, max: usize) {
    if out.capacity() < needed {
        let target = out
            .capacity()
            .saturating_mul(2)
            .clamp(needed, max.max(needed));
        out.reserve_exact(target - out.len());
    }
}

fn too_large(max: usize) -> String {
    format!("records decompress to more than {max} bytes")
}

fn read_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn read_i32(b: &[u8], at: usize) -> i32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(x)
}

fn read_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

/// One parsed record, before its batch places it.
struct Record<'a> {
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
}

/// Why a record does not parse: the field, and what is wrong with it.
#[derive(Clone, Copy, Debug)]
struct Bad(&'static str, &'static str);

impl Bad {
    fn describe(self) -> String {
        format!("{} {}", self.0, self.1)
    }
}

const TRUNCATED: &str = "is truncated";
const OVERLONG: &str = "is an overlong varint";
const NEGATIVE: &str = "is negative";
const PAST_END: &str = "claims more bytes than are left";

/// A read position over records; every read is checked against the bytes
/// left.
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

    fn byte(&mut self, field: &'static str) -> Result<u8, Bad> {
        let b = *self.buf.get(self.at).ok_or(Bad(field, TRUNCATED))?;
        self.at += 1;
        Ok(b)
    }

    /// A zigzag varint of at most 5 bytes (bits past 32 dropped, as Kafka
    /// and `batch` do).
    fn varint(&mut self, field: &'static str) -> Result<i32, Bad> {
        let mut raw: u32 = 0;
        for i in 0..5 {
            let b = self.byte(field)?;
            raw |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((raw >> 1) as i32 ^ -((raw & 1) as i32));
            }
        }
        Err(Bad(field, OVERLONG))
    }

    /// A zigzag varlong of at most 10 bytes (bits past 64 dropped).
    fn varlong(&mut self, field: &'static str) -> Result<i64, Bad> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let b = self.byte(field)?;
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(Bad(field, OVERLONG))
    }

    /// A varint count of elements of at least `unit_bytes` each, checked
    /// against the bytes left; `None` for -1 where `nullable`.
    fn count(
        &mut self,
        field: &'static str,
        nullable: bool,
        unit_bytes: usize,
    ) -> Result<Option<usize>, Bad> {
        let n = self.varint(field)?;
        if n == -1 && nullable {
            return Ok(None);
        }
        let n = usize::try_from(n).map_err(|_| Bad(field, NEGATIVE))?;
        if n > self.left() / unit_bytes {
            return Err(Bad(field, PAST_END));
        }
        Ok(Some(n))
    }

    /// `n` bytes (`n <= left()`, checked by `count`).
    fn take(&mut self, n: usize) -> &'a [u8] {
        let bytes = &self.buf[self.at..self.at + n];
        self.at += n;
        bytes
    }

    /// A varint length, then that many bytes (`None`: null).
    fn bytes(&mut self, field: &'static str, nullable: bool) -> Result<Option<&'a [u8]>, Bad> {
        Ok(self.count(field, nullable, 1)?.map(|n| self.take(n)))
    }

    /// One record; its first `headers_max` headers replace `headers`.
    fn record(
        &mut self,
        headers: &mut Vec<(&'a [u8], Option<&'a [u8]>)>,
        headers_max: usize,
    ) -> Result<Record<'a>, Bad> {
        let length = self.count("length", false, 1)?.unwrap_or(0);
        if length < RECORD_BODY_BYTES_MIN {
            return Err(Bad("length", "is below the smallest record"));
        }
        let mut body = Cursor::new(self.take(length));
        body.byte("attributes")?;
        let timestamp_delta = body.varlong("timestampDelta")?;
        let offset_delta = body.varint("offsetDelta")?;
        let key = body.bytes("key", true)?;
        let value = body.bytes("value", true)?;
        let count = body.count("headerCount", false, HEADER_BYTES_MIN)?;
        headers.clear();
        for _ in 0..count.unwrap_or(0) {
            let name = body.bytes("header key", false)?.unwrap_or(&[]);
            let value = body.bytes("header value", true)?;
            if headers.len() < headers_max {
                headers.push((name, value));
            }
        }
        if body.left() > 0 {
            return Err(Bad("length", "covers bytes past the last header"));
        }
        Ok(Record {
            timestamp_delta,
            offset_delta,
            key,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    const BASE: i64 = 1_000_000;
    const T0: i64 = 1_700_000_000_000;

    /// A record as delivered, owned.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Owned {
        offset: i64,
        timestamp_ms: i64,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    }

    fn record(i: i64, value: Option<&[u8]>, headers: &[(&str, Option<&[u8]>)]) -> Record {
        let mut h = IndexMap::new();
        for (name, v) in headers {
            h.insert(
                StrBytes::from_string(name.to_string()),
                v.map(Bytes::copy_from_slice),
            );
        }
        Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            // Records share a batch when offset - sequence agree.
            sequence: i as i32,
            timestamp: T0 + i * 10,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: value.map(Bytes::copy_from_slice),
            headers: h,
        }
    }

    /// Three records (a null value, headers with a null value), encoded
    /// with `codec` and moved to base offset `base`.
    fn sample() -> Vec<Record> {
        vec![
            record(
                0,
                Some(b"{\"a\":1}"),
                &[("trace", Some(b"t1")), ("n", None)],
            ),
            record(1, None, &[]),
            record(2, Some(&[0xff, 0x00, 0xfe]), &[("x", Some(b""))]),
        ]
    }

    fn encode(records: &[Record], codec: Compression, base: i64) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: codec,
        };
        RecordBatchEncoder::encode(&mut buf, records, &options).expect("encodes");
        let mut b = buf.to_vec();
        b[..8].copy_from_slice(&base.to_be_bytes());
        b
    }

    fn expected(records: &[Record], base: i64) -> Vec<Owned> {
        records
            .iter()
            .map(|r| Owned {
                offset: base + r.offset,
                timestamp_ms: r.timestamp,
                key: r.key.as_ref().map(|k| k.to_vec()),
                value: r.value.as_ref().map(|v| v.to_vec()),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_ref().map(|v| v.to_vec())))
                    .collect(),
            })
            .collect()
    }

    fn run(
        batches: &[u8],
        limits: &DecodeLimits,
    ) -> (Result<u64, String>, Vec<Owned>, Vec<BatchError>) {
        let mut scratch = Vec::new();
        let mut errors = Vec::new();
        let mut got = Vec::new();
        let r = decode_batches(batches, limits, &mut scratch, &mut errors, &mut |r| {
            got.push(Owned {
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                    .collect(),
            })
        });
        (r, got, errors)
    }

    /// A batch around `records` bytes (compressed or not), by hand.
    fn raw_batch(records: &[u8], record_count: i32, attributes: i16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&BASE.to_be_bytes());
        b.extend_from_slice(&((BATCH_HEADER_BYTES - 12 + records.len()) as i32).to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
        b.push(2);
        b.extend_from_slice(&0u32.to_be_bytes()); // crc, below
        b.extend_from_slice(&attributes.to_be_bytes());
        b.extend_from_slice(&(record_count - 1).to_be_bytes());
        b.extend_from_slice(&T0.to_be_bytes());
        b.extend_from_slice(&T0.to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&record_count.to_be_bytes());
        assert_eq!(b.len(), BATCH_HEADER_BYTES);
        b.extend_from_slice(records);
        let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn every_codec_round_trips_records() {
        let records = sample();
        for codec in CODECS {
            let b = encode(&records, codec, BASE);
            assert_eq!(read_i16(&b, ATTRIBUTES_AT) & 7, codec as i16);
            crate::batch::validate(&b, u64::MAX).expect("valid batch");
            let (r, got, errors) = run(&b, &DecodeLimits::default());
            assert_eq!(r, Ok(3), "{codec:?}");
            assert!(errors.is_empty(), "{codec:?}: {errors:?}");
            assert_eq!(got, expected(&records, BASE), "{codec:?}");
        }
    }

    #[test]
    fn log_append_time_gives_every_record_the_max_timestamp() {
        for codec in CODECS {
            let mut b = encode(&sample(), codec, BASE);
            let attributes = read_i16(&b, ATTRIBUTES_AT) | ATTRIBUTE_LOG_APPEND_TIME;
            b[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
            b[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&42i64.to_be_bytes());
            let (r, got, _) = run(&b, &DecodeLimits::default());
            assert_eq!(r, Ok(3));
            assert!(got.iter().all(|r| r.timestamp_ms == 42), "{codec:?}");
        }
    }

    #[test]
    fn concatenated_batches_of_all_codecs_decode_in_order() {
        let records = sample();
        let mut all = Vec::new();
        let mut want = Vec::new();
        for (i, codec) in CODECS.into_iter().enumerate() {
            let base = BASE + 10 * i as i64;
            all.extend(encode(&records, codec, base));
            want.extend(expected(&records, base));
        }
        let (r, got, errors) = run(&all, &DecodeLimits::default());
        assert_eq!(r, Ok(15));
        assert!(errors.is_empty());
        assert_eq!(got, want);
    }

    #[test]
    fn control_batches_are_skipped() {
        let mut b = encode(&sample(), Compression::None, BASE);
        let attributes = read_i16(&b, ATTRIBUTES_AT) | ATTRIBUTE_CONTROL;
        b[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        b.extend(encode(&sample(), Compression::Lz4, BASE + 3));
        let (r, got, errors) = run(&b, &DecodeLimits::default());
        assert_eq!((r, got.len(), errors.len()), (Ok(3), 3, 0));
        assert_eq!(got[0].offset, BASE + 3);
    }

    #[test]
    fn headers_past_the_limit_are_dropped() {
        let names: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
        let headers: Vec<(&str, Option<&[u8]>)> = names
            .iter()
            .map(|n| (n.as_str(), Some(&b"v"[..])))
            .collect();
        let b = encode(&[record(0, Some(b"v"), &headers)], Compression::Zstd, 0);
        let limits = DecodeLimits {
            headers_max: 4,
            ..DecodeLimits::default()
        };
        let (r, got, _) = run(&b, &limits);
        assert_eq!(r, Ok(1));
        let kept: Vec<&[u8]> = got[0].headers.iter().map(|(k, _)| &k[..]).collect();
        assert_eq!(kept, [&b"h0"[..], b"h1", b"h2", b"h3"]);
    }

    #[test]
    fn a_truncated_batch_ends_the_walk_with_an_error() {
        let good = encode(&sample(), Compression::Gzip, BASE);
        let mut b = good.clone();
        let cut = encode(&sample(), Compression::None, BASE + 3);
        b.extend_from_slice(&cut[..cut.len() - 5]);
        let (r, got, errors) = run(&b, &DecodeLimits::default());
        let e = r.expect_err("truncated");
        assert!(
            e.contains("truncated") && e.contains(&format!("byte {}", good.len())),
            "{e}"
        );
        assert_eq!(got.len(), 3, "the batch before was delivered");
        assert!(errors.is_empty());
        // A torn header, and a batchLength below the header.
        assert!(run(&good[..30], &DecodeLimits::default()).0.is_err());
        let mut short = good.clone();
        short[8..12].copy_from_slice(&10i32.to_be_bytes());
        assert!(run(&short, &DecodeLimits::default()).0.is_err());
    }

    #[test]
    fn a_batch_whose_compressed_records_are_cut_is_skipped() {
        for codec in CODECS {
            let full = encode(&sample(), codec, BASE);
            // Framed as a whole batch, but its records end early.
            let cut = raw_batch(&full[BATCH_HEADER_BYTES..full.len() - 4], 3, codec as i16);
            let mut b = cut.clone();
            b.extend(encode(&sample(), codec, BASE + 3));
            let (r, got, errors) = run(&b, &DecodeLimits::default());
            assert_eq!(r, Ok(3), "{codec:?}");
            assert_eq!(errors.len(), 1, "{codec:?}");
            assert_eq!((errors[0].at, errors[0].base_offset), (0, BASE));
            assert!(
                got.iter().all(|r| r.offset >= BASE + 3),
                "none of the bad one"
            );
        }
    }

    #[test]
    fn a_record_count_that_lies_fails_that_batch_only() {
        for codec in CODECS {
            for count in [1_000_000i32, 1, 0, -1, i32::MAX] {
                let mut bad = encode(&sample(), codec, BASE);
                bad[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
                let mut b = bad.clone();
                b.extend(encode(&sample(), codec, BASE + 3));
                let (r, got, errors) = run(&b, &DecodeLimits::default());
                assert_eq!(r, Ok(3), "{codec:?} count {count}");
                assert_eq!(errors.len(), 1, "{codec:?} count {count}");
                assert_eq!(got[0].offset, BASE + 3);
            }
        }
    }

    #[test]
    fn offset_deltas_past_the_batch_are_refused() {
        let mut b = encode(&sample(), Compression::Snappy, BASE);
        b[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&1i32.to_be_bytes());
        let (r, got, errors) = run(&b, &DecodeLimits::default());
        assert_eq!((r, got.len()), (Ok(0), 0));
        assert!(errors[0].message.contains("offsetDelta 2"), "{}", errors[0]);
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_cap() {
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            z.write_all(&zeros).expect("gzip");
        }
        let bomb = raw_batch(&z.finish().expect("gzip"), 1, 1);
        assert!(bomb.len() < 1 << 20);
        let limits = DecodeLimits {
            decompressed_bytes_max: 1 << 20,
            ..DecodeLimits::default()
        };
        let mut scratch = Vec::new();
        let mut errors = Vec::new();
        let r = decode_batches(&bomb, &limits, &mut scratch, &mut errors, &mut |_| {
            panic!("no records")
        });
        assert_eq!(r, Ok(0));
        assert!(
            errors[0].message.contains("more than 1048576"),
            "{}",
            errors[0]
        );
        assert!(scratch.capacity() <= 1 << 20, "{}", scratch.capacity());
    }

    #[test]
    fn snappy_bombs_and_zstd_bombs_stop_at_the_cap_too() {
        let big = vec![record(0, Some(&vec![7u8; 3 << 20]), &[])];
        let limits = DecodeLimits {
            decompressed_bytes_max: 1 << 20,
            ..DecodeLimits::default()
        };
        for codec in [Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let mut scratch = Vec::new();
            let mut errors = Vec::new();
            let b = encode(&big, codec, 0);
            let r = decode_batches(&b, &limits, &mut scratch, &mut errors, &mut |_| {});
            assert_eq!((r, errors.len()), (Ok(0), 1), "{codec:?}");
            assert!(scratch.capacity() <= 1 << 20, "{codec:?}");
        }
    }

    /// Java clients frame snappy the xerial way: magic, two versions, then
    /// length-prefixed raw blocks.
    #[test]
    fn java_framed_snappy_decodes() {
        let records = sample();
        let plain = encode(&records, Compression::None, BASE);
        let body = &plain[BATCH_HEADER_BYTES..];
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&1i32.to_be_bytes());
        framed.extend_from_slice(&1i32.to_be_bytes());
        for chunk in body.chunks(7) {
            let block = snap::raw::Encoder::new()
                .compress_vec(chunk)
                .expect("snappy");
            framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
            framed.extend_from_slice(&block);
        }
        let mut b = raw_batch(&framed, 3, Compression::Snappy as i16);
        b[BASE_TIMESTAMP_AT..BASE_TIMESTAMP_AT + 8].copy_from_slice(&plain[27..35]);
        let (r, got, errors) = run(&b, &DecodeLimits::default());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(r, Ok(3));
        assert_eq!(got, expected(&records, BASE));
        // A chunk length past the end.
        let mut lie = framed.clone();
        lie[XERIAL_HEADER_BYTES..XERIAL_HEADER_BYTES + 4].copy_from_slice(&999u32.to_be_bytes());
        let (_, got, errors) = run(&raw_batch(&lie, 3, 2), &DecodeLimits::default());
        assert_eq!((got.len(), errors.len()), (0, 1));
    }

    /// Seeded random changes of valid batches (bytes flipped, set to
    /// varint-ish values, cut, grown): decoded or refused, never a panic.
    #[test]
    fn random_mutations_never_panic() {
        let mut headers: Vec<(&str, Option<&[u8]>)> = vec![("k", Some(b"v")), ("n", None)];
        headers.extend([("a", Some(&b"aaaa"[..])); 3]);
        let records: Vec<Record> = (0..4)
            .map(|i| record(i, Some(b"some value, some value"), &headers))
            .collect();
        let goods: Vec<Vec<u8>> = CODECS.iter().map(|&c| encode(&records, c, BASE)).collect();
        let limits = DecodeLimits {
            decompressed_bytes_max: 64 << 10,
            headers_max: 3,
        };
        let mut rng = fastrand::Rng::with_seed(0x51u64 << 32 | 0xce);
        let mut scratch = Vec::new();
        let mut errors = Vec::new();
        for i in 0..2_000 {
            let mut b = goods[i % goods.len()].clone();
            for _ in 0..rng.usize(1..4) {
                let at = if rng.bool() {
                    rng.usize(BATCH_HEADER_BYTES..b.len())
                } else {
                    rng.usize(..b.len())
                };
                b[at] = match rng.u8(..4) {
                    0 => rng.u8(..),
                    1 => b[at] ^ (1 << rng.u8(..8)),
                    2 => [0x00, 0x01, 0x7f, 0x80, 0xff][rng.usize(..5)],
                    _ => b[at].wrapping_add(1),
                };
            }
            match rng.u8(..8) {
                0 => b.truncate(rng.usize(..b.len())),
                1 => b.extend_from_slice(&goods[rng.usize(..goods.len())]),
                _ => {}
            }
            let mut n = 0u64;
            let r = decode_batches(&b, &limits, &mut scratch, &mut errors, &mut |r| {
                assert!(r.headers.len() <= 3);
                n += 1;
            });
            if let Ok(records) = r {
                assert_eq!(records, n);
            }
            assert!(scratch.capacity() <= 64 << 10);
            errors.clear();
        }
    }
}
