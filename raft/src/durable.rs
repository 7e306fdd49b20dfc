//! Small durable-file helpers shared by the log, the vote and the snapshot.
//!
//! Frame format (all integers little-endian):
//!
//! ```text
//! +--------------+-----------------+---------------------+
//! | len: u32     | crc32c: u32     | payload: len bytes  |
//! +--------------+-----------------+---------------------+
//! ```
//!
//! `crc32c` covers the payload only. A frame whose header or payload is
//! short, whose `len` exceeds `FRAME_BYTES_MAX`, or whose CRC does not match
//! is "torn": the reader stops there.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Largest payload one frame may carry. Metadata entries are small; a length
/// past this is garbage from a torn write, not a real entry.
pub(crate) const FRAME_BYTES_MAX: u32 = 16 * 1024 * 1024;
pub(crate) const FRAME_HEADER_BYTES: usize = 8;

/// Appends one frame holding `payload` to `out`.
pub(crate) fn frame_encode(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame payload fits u32");
    assert!(
        len <= FRAME_BYTES_MAX,
        "frame payload {len} bytes over the maximum"
    );
    let crc = crc32c::crc32c(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decodes the frame at the start of `buf`: `Some((payload, frame_bytes))`,
/// or `None` when the frame is torn (short, oversized or bad CRC).
pub(crate) fn frame_decode(buf: &[u8]) -> Option<(&[u8], usize)> {
    let header = buf.get(..FRAME_HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len > FRAME_BYTES_MAX {
        return None;
    }
    let end = FRAME_HEADER_BYTES + len as usize;
    let payload = buf.get(FRAME_HEADER_BYTES..end)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    Some((payload, end))
}

/// fsyncs a directory so a rename or create inside it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` with `bytes` atomically and durably: write a temp
/// file, fsync it, rename it over the target, fsync the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    fsync_dir(dir)
}

/// Reads `dir/name` whole; `Ok(None)` when it does not exist.
pub(crate) fn read_optional(dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    match fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `value` as one framed JSON record to `dir/name` (atomically).
pub(crate) fn write_record<T: serde::Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
) -> io::Result<()> {
    let payload = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame_encode(&mut buf, &payload);
    write_atomic(dir, name, &buf)
}

/// Reads a record written by `write_record`. A missing file is `None`; a
/// damaged one is an error (these files are only ever replaced by rename,
/// so damage is not a torn append but corruption).
pub(crate) fn read_record<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> io::Result<Option<T>> {
    let Some(bytes) = read_optional(dir, name)? else {
        return Ok(None);
    };
    let corrupt = || io::Error::new(io::ErrorKind::InvalidData, format!("{name}: bad frame"));
    let (payload, used) = frame_decode(&bytes).ok_or_else(corrupt)?;
    if used != bytes.len() {
        return Err(corrupt());
    }
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_torn_detection() {
        let mut buf = Vec::new();
        frame_encode(&mut buf, b"hello");
        frame_encode(&mut buf, b"world!");
        let (p, n) = frame_decode(&buf).expect("first frame");
        assert_eq!(p, b"hello");
        let (p2, n2) = frame_decode(&buf[n..]).expect("second frame");
        assert_eq!(p2, b"world!");
        assert_eq!(n + n2, buf.len());
        // Short payload.
        assert!(frame_decode(&buf[n..buf.len() - 1]).is_none());
        // Short header.
        assert!(frame_decode(&buf[..3]).is_none());
        // Bit flip in the payload.
        let mut bad = buf.clone();
        bad[FRAME_HEADER_BYTES] ^= 1;
        assert!(frame_decode(&bad).is_none());
    }

    #[test]
    fn record_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_record::<u64>(dir.path(), "x").expect("read"), None);
        write_record(dir.path(), "x", &42u64).expect("write");
        assert_eq!(read_record::<u64>(dir.path(), "x").expect("read"), Some(42));
        std::fs::write(dir.path().join("x"), b"garbage!!").expect("overwrite");
        assert!(read_record::<u64>(dir.path(), "x").is_err());
    }
}
