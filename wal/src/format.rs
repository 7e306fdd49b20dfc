//! The on-disk format of the WAL. Pure functions: no I/O happens here.
//!
//! # Positions
//! The log is one stream of bytes addressed by a 64-bit *position*. A
//! position never changes meaning: segment files cover consecutive ranges
//! of it, and removing old segments never renumbers what remains.
//!
//! # Segment file `<base position, 20 digits>.wal`
//! ```text
//! offset 0    : segment header, one 4096-byte block (all little-endian)
//!               magic     [u8; 8]  = b"SLUICEWL"
//!               version   u32      = 1
//!               header    u32      = 4096 (bytes before the first frame)
//!               base      u64      = position of the byte at file offset 4096
//!               crc       u32      = CRC32C of the 24 bytes above
//!               zeros up to 4096
//! offset 4096 : frames; position p lives at file offset 4096 + (p - base)
//! ```
//! Files are preallocated (zeros); a segment is sealed once a later segment
//! exists, and its data ends exactly where the next segment's base begins.
//!
//! # Frames
//! Every frame starts at a position that is a multiple of 8 and occupies
//! `align8(12 + len)` bytes; the padding is zeros.
//! ```text
//!   crc   u32   CRC32C of (len, kind, reserved, payload, position as u64 LE)
//!   len   u32   payload bytes
//!   kind  u8    < 0xF0 for entries; 0xFF for a commit marker
//!   rsvd  [u8; 3] zeros
//!   payload [u8; len]
//! ```
//! Mixing the position into the CRC means a frame read at the wrong place,
//! or left over from an older write at another position, never validates.
//!
//! Writing a frame takes one pass over its payload: bytes are copied and
//! checksummed together, and a run whose CRC32C the caller already holds
//! (a `CrcSpan`, such as a record batch's own CRC that the caller verified)
//! is copied only, its CRC combined into the frame's. Reading checks every
//! frame's CRC over the bytes read.
//!
//! # Commits
//! Each group commit starts with a commit marker frame (kind 0xFF) whose
//! 16-byte payload is `frames u32, body_bytes u32, reserved u64`: the number
//! and total size of the entry frames that follow it. A commit is whole when
//! its marker and every frame of its body validate. Commits are written one
//! after another, each only after the previous one was synced, so a commit
//! that does not validate is either the torn tail (nothing valid follows it)
//! or corruption (a valid commit marker exists further on).

use crate::crc;

/// Bytes before the first frame of a segment; one O_DIRECT block.
pub const SEGMENT_HEADER_BYTES: u64 = 4096;
/// Alignment of every write and of the in-memory tail block.
pub const BLOCK_BYTES: u64 = 4096;
pub const SEGMENT_MAGIC: [u8; 8] = *b"SLUICEWL";
pub const FORMAT_VERSION: u32 = 1;

pub const FRAME_HEADER_BYTES: u64 = 12;
pub const FRAME_ALIGN_BYTES: u64 = 8;
/// Entry kinds at or above this value are reserved for the WAL itself.
pub const KIND_RESERVED_MIN: u8 = 0xF0;
pub const KIND_COMMIT: u8 = 0xFF;
pub const COMMIT_PAYLOAD_BYTES: u32 = 16;
pub const COMMIT_FRAME_BYTES: u64 = FRAME_HEADER_BYTES + COMMIT_PAYLOAD_BYTES as u64; // 28 -> 32

pub fn align_up(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (v + align - 1) & !(align - 1)
}

pub fn align_down(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    v & !(align - 1)
}

/// Bytes a frame with `len` payload bytes occupies, padding included.
pub fn frame_bytes(len: u32) -> u64 {
    align_up(FRAME_HEADER_BYTES + u64::from(len), FRAME_ALIGN_BYTES)
}

fn frame_crc(header_tail: &[u8], payload: &[u8], position: u64) -> u32 {
    debug_assert_eq!(header_tail.len(), 8);
    let crc = crc32c::crc32c(header_tail);
    let crc = crc32c::crc32c_append(crc, payload);
    crc32c::crc32c_append(crc, &position.to_le_bytes())
}

/// A run of a payload whose CRC32C (the `crc32c` crate's convention) the
/// caller already holds: `crc` = CRC32C(`payload[offset..offset + len]`).
/// The frame's CRC is then combined from it instead of read off the bytes
/// again. A wrong `crc` is not caught when writing (debug builds check it);
/// it makes the frame fail its check when read, as corruption does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrcSpan {
    pub offset: u32,
    pub len: u32,
    pub crc: u32,
}

impl CrcSpan {
    /// The span of `payload[offset..offset + len]`, its CRC computed here.
    pub fn compute(payload: &[u8], offset: u32, len: u32) -> CrcSpan {
        let run = &payload[offset as usize..offset as usize + len as usize];
        CrcSpan {
            offset,
            len,
            crc: crc32c::crc32c(run),
        }
    }

    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.len)
    }
}

/// Whether `spans` are in order, apart and within `payload_len` bytes.
pub fn spans_fit(spans: &[CrcSpan], payload_len: usize) -> bool {
    let mut at = 0u64;
    for s in spans {
        if u64::from(s.offset) < at || s.end() > payload_len as u64 {
            return false;
        }
        at = s.end();
    }
    true
}

/// Writes one frame (header, payload, zero padding) into `out`, which must be
/// exactly `frame_bytes(payload.len())` long.
pub fn encode_frame(out: &mut [u8], position: u64, kind: u8, payload: &[u8]) {
    encode_frame_spans(out, position, kind, payload, &[]);
}

/// `encode_frame` for a payload with runs of known CRC (`spans`, which must
/// fit: `spans_fit`). Copies the payload once; the bytes outside the spans
/// are checksummed as they are copied, the spans' CRCs are combined.
pub fn encode_frame_spans(
    out: &mut [u8],
    position: u64,
    kind: u8,
    payload: &[u8],
    spans: &[CrcSpan],
) {
    let len = u32::try_from(payload.len()).expect("payload length checked by the caller");
    assert_eq!(out.len() as u64, frame_bytes(len));
    assert_eq!(position % FRAME_ALIGN_BYTES, 0, "frames start 8-aligned");
    debug_assert!(spans_fit(spans, payload.len()));
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8] = kind;
    out[9..12].fill(0);
    let body_end = FRAME_HEADER_BYTES as usize + payload.len();
    let mut crc = crc32c::crc32c(&out[4..12]);
    let body = &mut out[FRAME_HEADER_BYTES as usize..body_end];
    let mut at = 0usize;
    for s in spans {
        let (from, to) = (s.offset as usize, s.end() as usize);
        crc = crc::copy_and_append(crc, &mut body[at..from], &payload[at..from]);
        body[from..to].copy_from_slice(&payload[from..to]);
        crc = crc::combine(crc, s.crc, u64::from(s.len));
        at = to;
    }
    crc = crc::copy_and_append(crc, &mut body[at..], &payload[at..]);
    crc = crc32c::crc32c_append(crc, &position.to_le_bytes());
    out[body_end..].fill(0);
    out[0..4].copy_from_slice(&crc.to_le_bytes());
}

pub fn commit_payload(frames: u32, body_bytes: u32) -> [u8; COMMIT_PAYLOAD_BYTES as usize] {
    let mut p = [0u8; COMMIT_PAYLOAD_BYTES as usize];
    p[0..4].copy_from_slice(&frames.to_le_bytes());
    p[4..8].copy_from_slice(&body_bytes.to_le_bytes());
    p
}

/// A frame header as read from disk, not yet checked against its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub crc: u32,
    pub len: u32,
    pub kind: u8,
}

impl FrameHeader {
    pub fn parse(b: &[u8]) -> FrameHeader {
        assert!(b.len() >= FRAME_HEADER_BYTES as usize);
        FrameHeader {
            crc: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            kind: b[8],
        }
    }

    pub fn is_zero(b: &[u8]) -> bool {
        b[..FRAME_HEADER_BYTES as usize].iter().all(|&x| x == 0)
    }

    pub fn total_bytes(&self) -> u64 {
        frame_bytes(self.len)
    }
}

/// What `check_frame` found at a position.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameCheck {
    /// A whole, valid frame.
    Valid(FrameHeader),
    /// The buffer ends before the frame does; read more and ask again.
    NeedBytes(u64),
    /// Length, reserved bytes or CRC are wrong.
    Invalid,
}

/// Parses and checks the header at `buf[0]` (at least `FRAME_HEADER_BYTES`):
/// length, kind and reserved bytes; `None` when any is wrong. The CRC is
/// checked with the payload.
pub fn check_header(buf: &[u8], entry_bytes_max: u32) -> Option<FrameHeader> {
    let h = FrameHeader::parse(buf);
    let len_ok = if h.kind == KIND_COMMIT {
        h.len == COMMIT_PAYLOAD_BYTES
    } else {
        h.kind < KIND_RESERVED_MIN && h.len <= entry_bytes_max
    };
    (len_ok && buf[9..12] == [0, 0, 0]).then_some(h)
}

/// Copies the payload of a frame whose header `header` (its first
/// `FRAME_HEADER_BYTES`) passed `check_header`, from `parts` (the payload's
/// bytes in order, split anywhere) into a new buffer, checksumming as it
/// copies; returns the payload if the frame's CRC holds at `position`.
pub fn copy_checked_payload(header: &[u8], position: u64, parts: &[&[u8]]) -> Option<Vec<u8>> {
    let h = FrameHeader::parse(header);
    // The length is read from disk: sized by the bytes really there.
    let present: usize = parts.iter().map(|p| p.len()).sum();
    if present != h.len as usize {
        return None;
    }
    let mut out = Vec::with_capacity(present);
    let mut crc = crc32c::crc32c(&header[4..FRAME_HEADER_BYTES as usize]);
    for part in parts {
        crc = crc::copy_and_extend(crc, &mut out, part);
    }
    crc = crc32c::crc32c_append(crc, &position.to_le_bytes());
    (crc == h.crc).then_some(out)
}

/// Validates the frame that starts at `buf[0]`, which is at `position`.
pub fn check_frame(buf: &[u8], position: u64, entry_bytes_max: u32) -> FrameCheck {
    if (buf.len() as u64) < FRAME_HEADER_BYTES {
        return FrameCheck::NeedBytes(FRAME_HEADER_BYTES);
    }
    let Some(h) = check_header(buf, entry_bytes_max) else {
        return FrameCheck::Invalid;
    };
    let total = h.total_bytes();
    if (buf.len() as u64) < total {
        return FrameCheck::NeedBytes(total);
    }
    let payload = &buf[FRAME_HEADER_BYTES as usize..FRAME_HEADER_BYTES as usize + h.len as usize];
    if frame_crc(&buf[4..12], payload, position) != h.crc {
        return FrameCheck::Invalid;
    }
    FrameCheck::Valid(h)
}

/// The decoded payload of a commit marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitMarker {
    pub frames: u32,
    pub body_bytes: u32,
}

pub fn parse_commit(frame: &[u8]) -> CommitMarker {
    let p = &frame[FRAME_HEADER_BYTES as usize..];
    CommitMarker {
        frames: u32::from_le_bytes([p[0], p[1], p[2], p[3]]),
        body_bytes: u32::from_le_bytes([p[4], p[5], p[6], p[7]]),
    }
}

/// Encodes a segment header block.
pub fn encode_segment_header(base: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    BadMagic,
    BadCrc,
    UnsupportedVersion(u32),
    BaseMismatch { named: u64, stored: u64 },
}

/// Parses a segment header, checking it against the base named by the file.
pub fn parse_segment_header(b: &[u8], named_base: u64) -> Result<u64, HeaderError> {
    if b.len() < 28 || b[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let crc = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
    if crc32c::crc32c(&b[0..24]) != crc {
        return Err(HeaderError::BadCrc);
    }
    let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    let mut base = [0u8; 8];
    base.copy_from_slice(&b[16..24]);
    let stored = u64::from_le_bytes(base);
    if stored != named_base {
        return Err(HeaderError::BaseMismatch {
            named: named_base,
            stored,
        });
    }
    Ok(stored)
}

pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}.wal")
}

pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(position: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; frame_bytes(payload.len() as u32) as usize];
        encode_frame(&mut out, position, kind, payload);
        out
    }

    #[test]
    fn frame_round_trips_and_is_padded() {
        let f = frame(64, 7, b"hello");
        assert_eq!(f.len(), 24);
        assert_eq!(
            check_frame(&f, 64, 1024),
            FrameCheck::Valid(FrameHeader::parse(&f))
        );
        assert_eq!(&f[12..17], b"hello");
        assert!(f[17..].iter().all(|&b| b == 0));
    }

    #[test]
    fn frame_at_another_position_does_not_validate() {
        let f = frame(64, 7, b"hello");
        assert_eq!(check_frame(&f, 72, 1024), FrameCheck::Invalid);
    }

    #[test]
    fn flipped_payload_bit_is_detected() {
        let mut f = frame(0, 1, b"payload bytes");
        f[14] ^= 0x10;
        assert_eq!(check_frame(&f, 0, 1024), FrameCheck::Invalid);
    }

    #[test]
    fn short_buffer_asks_for_more() {
        let f = frame(0, 1, &[9u8; 100]);
        assert_eq!(check_frame(&f[..5], 0, 1024), FrameCheck::NeedBytes(12));
        assert_eq!(
            check_frame(&f[..50], 0, 1024),
            FrameCheck::NeedBytes(f.len() as u64)
        );
    }

    #[test]
    fn oversized_and_reserved_kinds_are_invalid() {
        let f = frame(0, 1, &[0u8; 64]);
        assert_eq!(check_frame(&f, 0, 63), FrameCheck::Invalid);
        let g = frame(0, 0xF1, b"x");
        assert_eq!(check_frame(&g, 0, 63), FrameCheck::Invalid);
        assert_eq!(check_frame(&[0u8; 32], 0, 63), FrameCheck::Invalid);
    }

    #[test]
    fn a_frame_from_given_crcs_equals_one_computed_over_the_bytes() {
        let payload: Vec<u8> = (0..50_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let spans = [
            CrcSpan::compute(&payload, 45, 16_000),
            CrcSpan::compute(&payload, 16_066, 0),
            CrcSpan::compute(&payload, 16_066, 30_000),
            CrcSpan::compute(&payload, 46_066, 3_934),
        ];
        assert!(spans_fit(&spans, payload.len()));
        let computed = frame(4096, 1, &payload);
        let mut given = vec![0xEEu8; computed.len()];
        encode_frame_spans(&mut given, 4096, 1, &payload, &spans);
        assert_eq!(given, computed);
        assert!(matches!(
            check_frame(&given, 4096, 1 << 20),
            FrameCheck::Valid(_)
        ));
    }

    #[test]
    fn bytes_that_differ_from_their_given_crc_never_make_a_valid_frame() {
        let mut payload: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
        let span = CrcSpan::compute(&payload, 21, 4979);
        for at in [21usize, 2500, 4999] {
            let mut bad = payload.clone();
            bad[at] ^= 0x01;
            let mut out = vec![0u8; frame_bytes(bad.len() as u32) as usize];
            encode_frame_spans(&mut out, 64, 1, &bad, &[span]);
            assert_eq!(
                check_frame(&out, 64, 1 << 20),
                FrameCheck::Invalid,
                "byte {at}"
            );
        }
        payload[0] ^= 0x01; // outside the span: checksummed as copied
        let mut out = vec![0u8; frame_bytes(payload.len() as u32) as usize];
        encode_frame_spans(&mut out, 64, 1, &payload, &[span]);
        assert!(matches!(
            check_frame(&out, 64, 1 << 20),
            FrameCheck::Valid(_)
        ));
    }

    #[test]
    fn spans_must_be_ordered_apart_and_inside() {
        let s = |offset, len| CrcSpan {
            offset,
            len,
            crc: 0,
        };
        assert!(spans_fit(&[s(0, 10), s(10, 5)], 15));
        assert!(!spans_fit(&[s(0, 10), s(9, 5)], 20));
        assert!(!spans_fit(&[s(10, 5), s(0, 5)], 20));
        assert!(!spans_fit(&[s(10, 11)], 20));
    }

    #[test]
    fn commit_marker_round_trips() {
        let f = frame(8, KIND_COMMIT, &commit_payload(3, 96));
        assert_eq!(f.len() as u64, align_up(COMMIT_FRAME_BYTES, 8));
        assert!(matches!(check_frame(&f, 8, 0), FrameCheck::Valid(_)));
        assert_eq!(
            parse_commit(&f),
            CommitMarker {
                frames: 3,
                body_bytes: 96
            }
        );
    }

    #[test]
    fn segment_header_round_trips_and_checks() {
        let h = encode_segment_header(1 << 40);
        assert_eq!(parse_segment_header(&h, 1 << 40), Ok(1 << 40));
        assert!(matches!(
            parse_segment_header(&h, 5),
            Err(HeaderError::BaseMismatch { .. })
        ));
        let mut bad = h;
        bad[17] ^= 1;
        assert_eq!(
            parse_segment_header(&bad, 1 << 40),
            Err(HeaderError::BadCrc)
        );
        assert_eq!(
            parse_segment_header(&[0u8; 64], 0),
            Err(HeaderError::BadMagic)
        );
    }

    #[test]
    fn segment_names_parse() {
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("42.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.wal"), None);
    }
}
