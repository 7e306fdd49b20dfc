//! The stored corpus of real client traffic (`tests/corpus`), read by the
//! integration tests (through `common`) and by the in-process fuzzer
//! (`src/fuzz.rs`, which includes this file by path: it depends on nothing
//! but std and `bytes`).

use std::path::{Path, PathBuf};

use bytes::Bytes;

/// The stored corpus of real client traffic.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Splits a client-to-broker stream into its request frames (size prefix
/// included). Every frame's size is at least 8 (api key, api version,
/// correlation id) and the stream ends at a frame's end; `Err` says where
/// and why not.
pub fn split_request_frames(stream: &[u8]) -> Result<Vec<Bytes>, String> {
    let mut frames = Vec::new();
    let mut at = 0usize;
    while at < stream.len() {
        let prefix: [u8; 4] = stream
            .get(at..at + 4)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| format!("a size prefix cut short at byte {at}"))?;
        let size = i32::from_be_bytes(prefix);
        if size < 8 {
            return Err(format!("size {size} at byte {at}: below a request header"));
        }
        let end = at + 4 + size as usize;
        let frame = stream
            .get(at..end)
            .ok_or_else(|| format!("a frame of {size} bytes at byte {at} cut short"))?;
        frames.push(Bytes::copy_from_slice(frame));
        at = end;
    }
    Ok(frames)
}

/// Every `tests/corpus/*.bin` as (file name, its frames with their size
/// prefixes), sorted by name. Panics on a file that is not a sequence of
/// whole request frames.
pub fn corpus_frames() -> Vec<(String, Vec<Bytes>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "bin"));
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            let frames = split_request_frames(&bytes)
                .unwrap_or_else(|e| panic!("corpus file {name} is not a frame sequence: {e}"));
            (name, frames)
        })
        .collect()
}
