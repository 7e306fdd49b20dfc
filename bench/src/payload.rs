//! Record payloads: a fixed header at the front of each record, then
//! pseudo-random filler so that compression codecs see realistic bytes.
//!
//! Header format (little-endian, `HEADER_BYTES` long):
//!
//! | bytes  | field     | meaning                                        |
//! |--------|-----------|------------------------------------------------|
//! | 0..4   | magic     | `MAGIC`                                        |
//! | 4..8   | run_id    | random per run, tells this run's records apart |
//! | 8..16  | seq       | record sequence number within the run          |
//! | 16..24 | sent_ns   | intended send time, ns since the run's origin  |
//!
//! Records shorter than `HEADER_BYTES` carry a truncated header; scenarios
//! that read the header back require `HEADER_BYTES`.

pub const HEADER_BYTES: usize = 24;
const MAGIC: u32 = 0x534C_4231; // "SLB1"

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub run_id: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

impl Header {
    /// Writes as much of the header as fits in `buf`.
    pub fn write(&self, buf: &mut [u8]) {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.run_id.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.seq.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.sent_ns.to_le_bytes());
        let n = buf.len().min(HEADER_BYTES);
        buf[..n].copy_from_slice(&bytes[..n]);
    }

    /// Reads a header; `None` when the payload is short or not ours.
    pub fn read(buf: &[u8]) -> Option<Header> {
        let bytes = buf.get(..HEADER_BYTES)?;
        let u32_at = |i: usize| bytes.get(i..i + 4)?.try_into().ok().map(u32::from_le_bytes);
        let u64_at = |i: usize| bytes.get(i..i + 8)?.try_into().ok().map(u64::from_le_bytes);
        if u32_at(0)? != MAGIC {
            return None;
        }
        Some(Header {
            run_id: u32_at(4)?,
            seq: u64_at(8)?,
            sent_ns: u64_at(16)?,
        })
    }
}

/// A payload buffer of `record_bytes`, filled with xorshift bytes.
pub fn filler(record_bytes: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut buf = Vec::with_capacity(record_bytes);
    while buf.len() < record_bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let take = (record_bytes - buf.len()).min(8);
        buf.extend_from_slice(&state.to_le_bytes()[..take]);
    }
    assert_eq!(buf.len(), record_bytes);
    buf
}

/// A run id that differs between runs (time and process id mixed).
pub fn new_run_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = nanos ^ (u64::from(std::process::id()) << 32);
    (mixed ^ (mixed >> 29)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let header = Header {
            run_id: 7,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let mut buf = filler(100, 3);
        header.write(&mut buf);
        assert_eq!(Header::read(&buf), Some(header));
    }

    #[test]
    fn short_or_foreign_payloads_are_rejected() {
        let header = Header {
            run_id: 1,
            seq: 2,
            sent_ns: 3,
        };
        let mut short = vec![0u8; HEADER_BYTES - 1];
        header.write(&mut short);
        assert_eq!(Header::read(&short), None);
        assert_eq!(Header::read(&filler(64, 9)), None);
    }

    #[test]
    fn filler_has_exact_length() {
        for n in [1, 7, 8, 9, 1000] {
            assert_eq!(filler(n, 42).len(), n);
        }
    }
}
