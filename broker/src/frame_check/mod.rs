//! The trust boundary for Kafka request frames: every length and count in
//! a frame is checked against the bytes really there before the codec
//! (`kafka-protocol`) decodes it.
//!
//! The codec allocates from counts read off the wire before it decodes
//! any element (`Vec::with_capacity(count)` in its array decoders): one
//! frame with a count of 2^31 aborts the process on the failed
//! allocation. Upstream has no fix released, so a frame is walked here
//! first, over the request schemas in `schema.rs` (the shape the codec
//! decodes, per API and version), without allocating:
//!
//! - an array count, string or bytes length larger than the bytes left is
//!   refused (every array element takes at least one byte on the wire);
//! - a known tagged field must fill exactly the size it announces, and an
//!   unknown one is skipped by that size;
//! - bytes after the request are ignored, as the codec and Kafka do
//!   (librdkafka 2.12 sends three after an all-topics Metadata v12).
//!
//! A frame that passes decodes with the codec into at most
//! `Checked::decoded_bytes` of vectors (each array's count times the size
//! of the codec's element type), which the connection reserves from the
//! shard's request-buffer pool beside the frame. The walk is linear in the
//! frame's bytes; every loop is bounded by the bytes left.

#[cfg(test)]
pub mod samples;
mod schema;

use std::fmt;

use kafka_protocol::messages::ApiKey;

use schema::{Field, Struct, Tagged, Ty};

/// Bytes a decoded unknown tagged field costs: its map entry, and for the
/// first of a struct the map's first node (a `BTreeMap` leaf of 11
/// entries, 408 bytes for `<i32, Bytes>`).
const TAGGED_FIELD_DECODED_BYTES: u64 = 64;
const TAGGED_MAP_DECODED_BYTES: u64 = 512;

/// Why a frame was refused: what was wrong and where (bytes from the
/// start of the frame, after its size prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub at: usize,
    pub what: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The frame ends inside a field.
    Truncated,
    /// An array count, string or bytes length larger than the bytes left.
    TooLong { length: u64, left: usize },
    /// A negative length other than -1 (null).
    NegativeLength(i64),
    /// A known tag at a version that does not carry it.
    TagNotValid(u32),
    /// A known tagged field whose value does not fill its announced size.
    TagSize { tag: u32, size: u32 },
    /// No schema for this API.
    NotServed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at byte {}", self.what, self.at)
    }
}

/// A frame that passed: where its body starts, and what decoding it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Bytes of the request header (the body follows).
    pub header_bytes: usize,
    /// Bytes of the request body; any after it are ignored.
    pub body_bytes: usize,
    /// Upper bound of the bytes the codec allocates for its arrays and
    /// tagged fields (strings and bytes share the frame's buffer).
    pub decoded_bytes: u64,
}

/// Checks a whole request frame (header and body, without the size
/// prefix) of `key` at `version`, a version the broker serves.
pub fn check(key: ApiKey, version: i16, frame: &[u8]) -> Result<Checked, Refusal> {
    let mut c = Cursor::new(frame);
    let header_bytes = c.frame(key, version)?;
    assert!(c.at <= frame.len());
    Ok(Checked {
        header_bytes,
        body_bytes: c.at - header_bytes,
        decoded_bytes: c.decoded_bytes,
    })
}

/// How a count or length is encoded.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthKind {
    I16,
    I32,
    Varint,
}

/// Offsets and encodings of every count and length field of a frame that
/// passes `check`: what a fuzzer aims its mutations at.
#[cfg(test)]
pub fn length_fields(key: ApiKey, version: i16, frame: &[u8]) -> Vec<(usize, LengthKind)> {
    let mut c = Cursor::new(frame);
    c.lengths = Some(Vec::new());
    match c.frame(key, version) {
        Ok(_) => c.lengths.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// What stays the same during one walk.
struct Walk {
    version: i16,
    /// Compact lengths and tagged-field sections.
    flexible: bool,
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
    decoded_bytes: u64,
    /// Where counts and lengths were read (for fuzzing).
    #[cfg(test)]
    lengths: Option<Vec<(usize, LengthKind)>>,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor {
            buf,
            at: 0,
            decoded_bytes: 0,
            #[cfg(test)]
            lengths: None,
        }
    }

    /// Walks the header and the body; returns the header's bytes.
    fn frame(&mut self, key: ApiKey, version: i16) -> Result<usize, Refusal> {
        let schema = schema::of(key).ok_or(Refusal {
            at: 0,
            what: Problem::NotServed,
        })?;
        self.header(key.request_header_version(version))?;
        let header_bytes = self.at;
        let flexible = version >= schema.flexible_min;
        self.walk(&Walk { version, flexible }, schema.root)?;
        Ok(header_bytes)
    }

    fn left(&self) -> usize {
        self.buf.len() - self.at
    }

    fn refuse(&self, what: Problem) -> Refusal {
        Refusal { at: self.at, what }
    }

    /// Notes a length at the cursor: `wide` i32 or i16, unless `varint`.
    #[allow(unused_variables)]
    fn mark_length(&mut self, varint: bool, wide: bool) {
        #[cfg(test)]
        if let Some(l) = self.lengths.as_mut() {
            let kind = match (varint, wide) {
                (true, _) => LengthKind::Varint,
                (false, true) => LengthKind::I32,
                (false, false) => LengthKind::I16,
            };
            l.push((self.at, kind));
        }
    }

    fn skip(&mut self, bytes: usize) -> Result<(), Refusal> {
        if bytes > self.left() {
            return Err(self.refuse(Problem::Truncated));
        }
        self.at += bytes;
        Ok(())
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Refusal> {
        let start = self.at;
        self.skip(N)?;
        Ok(self.buf[start..self.at].try_into().expect("N bytes"))
    }

    /// An unsigned varint exactly as the codec reads it: at most 5 bytes,
    /// bits past 32 dropped.
    fn uvarint(&mut self) -> Result<u32, Refusal> {
        let mut value = 0u32;
        for i in 0..5 {
            let [b] = self.take::<1>()?;
            value |= (u32::from(b) & 0x7F) << (i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }

    /// A length or count: `None` for null. Refuses one larger than the
    /// bytes left after it (times `unit_bytes`, the least an element takes).
    fn length(
        &mut self,
        w: &Walk,
        wide: bool,
        unit_bytes: usize,
    ) -> Result<Option<usize>, Refusal> {
        self.mark_length(w.flexible, wide);
        let length: i64 = if w.flexible {
            i64::from(self.uvarint()?) - 1
        } else if wide {
            i64::from(i32::from_be_bytes(self.take()?))
        } else {
            i64::from(i16::from_be_bytes(self.take()?))
        };
        match length {
            -1 => Ok(None),
            n if n < -1 => Err(self.refuse(Problem::NegativeLength(n))),
            n => {
                let n = n as u64;
                if n.saturating_mul(unit_bytes as u64) > self.left() as u64 {
                    return Err(self.refuse(Problem::TooLong {
                        length: n,
                        left: self.left(),
                    }));
                }
                Ok(Some(n as usize))
            }
        }
    }

    /// The request header: api key, version, correlation id (v0+), client
    /// id (v1+, a non-compact nullable string even in v2), tagged fields
    /// (v2+, none known).
    fn header(&mut self, header_version: i16) -> Result<(), Refusal> {
        self.skip(8)?;
        if header_version >= 1 {
            let w = Walk {
                version: 0,
                flexible: false,
            };
            if let Some(len) = self.length(&w, false, 1)? {
                self.skip(len)?;
            }
        }
        if header_version >= 2 {
            self.tagged(&[], 0)?;
        }
        Ok(())
    }

    fn walk(&mut self, w: &Walk, s: &Struct) -> Result<(), Refusal> {
        for field in s.fields.iter().filter(|f| carried(f, w.version)) {
            self.field(w, &field.ty)?;
        }
        if w.flexible {
            self.tagged(s.tagged, w.version)?;
        }
        Ok(())
    }

    fn field(&mut self, w: &Walk, ty: &Ty) -> Result<(), Refusal> {
        match ty {
            Ty::I8 | Ty::Bool => self.skip(1),
            Ty::I16 => self.skip(2),
            Ty::I32 => self.skip(4),
            Ty::I64 => self.skip(8),
            Ty::Uuid => self.skip(16),
            Ty::Str => self.string(w),
            Ty::Bytes => match self.length(w, true, 1)? {
                Some(len) => self.skip(len),
                None => Ok(()),
            },
            Ty::Struct(s) => self.walk(w, s),
            Ty::Array(s) => {
                let Some(count) = self.length(w, true, 1)? else {
                    return Ok(());
                };
                self.decoded(count, s.elem_bytes);
                (0..count).try_for_each(|_| self.walk(w, s))
            }
            Ty::ArrayI32 => {
                let Some(count) = self.length(w, true, 4)? else {
                    return Ok(());
                };
                self.decoded(count, 4);
                self.skip(count * 4)
            }
            Ty::ArrayI64 => {
                let Some(count) = self.length(w, true, 8)? else {
                    return Ok(());
                };
                self.decoded(count, 8);
                self.skip(count * 8)
            }
            Ty::ArrayStr => {
                let Some(count) = self.length(w, true, 1)? else {
                    return Ok(());
                };
                self.decoded(count, schema::STR_ELEM_BYTES);
                (0..count).try_for_each(|_| self.string(w))
            }
        }
    }

    fn string(&mut self, w: &Walk) -> Result<(), Refusal> {
        match self.length(w, false, 1)? {
            Some(len) => self.skip(len),
            None => Ok(()),
        }
    }

    fn decoded(&mut self, count: usize, elem_bytes: usize) {
        self.decoded_bytes += (count as u64) * (elem_bytes as u64);
    }

    /// A tagged-field section: count, then (tag, size, value) each.
    fn tagged(&mut self, known: &[Tagged], version: i16) -> Result<(), Refusal> {
        self.mark_length(true, false);
        let count = self.uvarint()?;
        // Each tagged field takes at least two bytes (tag and size).
        if u64::from(count) * 2 > self.left() as u64 {
            return Err(self.refuse(Problem::TooLong {
                length: u64::from(count),
                left: self.left(),
            }));
        }
        let mut map_bytes = TAGGED_MAP_DECODED_BYTES;
        for _ in 0..count {
            let tag = self.uvarint()?;
            self.mark_length(true, false);
            let size = self.uvarint()?;
            match known.iter().find(|t| t.tag == tag) {
                None => {
                    self.skip(size as usize)?;
                    self.decoded_bytes +=
                        TAGGED_FIELD_DECODED_BYTES + std::mem::take(&mut map_bytes);
                }
                Some(t) if !carried(&t.field, version) => {
                    return Err(self.refuse(Problem::TagNotValid(tag)));
                }
                Some(t) => self.known_tag(t, size, version)?,
            }
        }
        Ok(())
    }

    /// A known tagged field: the codec decodes its value from the frame
    /// without regard to `size`, so the value must fill exactly `size`.
    fn known_tag(&mut self, t: &Tagged, size: u32, version: i16) -> Result<(), Refusal> {
        let start = self.at;
        let Some(end) = start
            .checked_add(size as usize)
            .filter(|&e| e <= self.buf.len())
        else {
            return Err(self.refuse(Problem::Truncated));
        };
        // Tagged fields are always in the compact encoding.
        let w = Walk {
            version,
            flexible: true,
        };
        let whole = self.buf;
        self.buf = &whole[..end];
        let walked = self.field(&w, &t.field.ty);
        self.buf = whole;
        walked?;
        if self.at != end {
            return Err(Refusal {
                at: start,
                what: Problem::TagSize { tag: t.tag, size },
            });
        }
        Ok(())
    }
}

fn carried(field: &Field, version: i16) -> bool {
    field.min <= version && version <= field.max
}

#[cfg(test)]
mod tests;
