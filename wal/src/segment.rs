//! Segment files: the glommio adapter. Creating, opening, reading windows of
//! and removing segment files happens here and nowhere else.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use glommio::io::{DmaFile, OpenOptions};

use crate::format::{self, SEGMENT_HEADER_BYTES};
use crate::{SyncMode, WalError};

/// One segment file. Positions `[base, base + capacity)` map to file
/// offsets `[4096, 4096 + capacity)`.
pub(crate) struct Segment {
    pub base: u64,
    pub capacity: u64,
    pub file: Rc<DmaFile>,
    pub path: PathBuf,
}

impl Segment {
    pub fn file_offset(&self, position: u64) -> u64 {
        debug_assert!(position >= self.base && position <= self.base + self.capacity);
        SEGMENT_HEADER_BYTES + (position - self.base)
    }

    pub fn end_max(&self) -> u64 {
        self.base + self.capacity
    }
}

fn open_options(sync: SyncMode, create: bool) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if create {
        o.create(true).truncate(true);
    }
    if sync == SyncMode::Dsync {
        o.custom_flags(libc::O_DSYNC);
    }
    o
}

/// Creates a segment atomically: preallocated and given its header under a
/// temporary name, synced, then renamed into place and the directory synced.
/// A crash leaves either no segment or a whole one (and perhaps a `.tmp`,
/// removed by `list`). This runs blocking syscalls on the shard's thread,
/// once per segment (64 MiB by default).
///
/// The file is prepared with std and only then opened for DMA: glommio probes
/// io_uring IOPOLL support per device with a read at offset 0, and an empty
/// file answers that probe falsely, so the first file it opens on a device
/// must hold data.
pub(crate) async fn create(dir: &Path, base: u64, segment_bytes: u64, sync: SyncMode) -> Result<Segment, WalError> {
    assert!(segment_bytes > SEGMENT_HEADER_BYTES);
    let path = dir.join(format::segment_file_name(base));
    let tmp = path.with_extension("wal.tmp");
    if let Err(e) = prepare(&tmp, base, segment_bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(|e| WalError::io("renaming", &tmp, e))?;
    sync_dir(dir)?;
    let file = open_options(sync, false).dma_open(&path).await.map_err(|e| WalError::glommio("opening", &path, e))?;
    Ok(Segment { base, capacity: segment_bytes - SEGMENT_HEADER_BYTES, file: Rc::new(file), path })
}

fn prepare(path: &Path, base: u64, segment_bytes: u64) -> Result<(), WalError> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| WalError::io("creating", path, e))?;
    // SAFETY: `f` is an open file descriptor owned by this function.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, segment_bytes as libc::off_t) };
    if rc != 0 {
        return Err(WalError::io("preallocating", path, std::io::Error::last_os_error()));
    }
    f.write_all_at(&format::encode_segment_header(base), 0).map_err(|e| WalError::io("writing header", path, e))?;
    f.sync_all().map_err(|e| WalError::io("syncing", path, e))
}

/// Opens an existing segment and checks its header.
pub(crate) async fn open(path: &Path, base: u64, sync: SyncMode) -> Result<Segment, WalError> {
    let file = open_options(sync, false).dma_open(path).await.map_err(|e| WalError::glommio("opening", path, e))?;
    let size = file.file_size().await.map_err(|e| WalError::glommio("sizing", path, e))?;
    let not_a_wal = |reason: String| WalError::NotAWal { path: path.to_owned(), reason };
    if size < SEGMENT_HEADER_BYTES {
        return Err(not_a_wal(format!("only {size} bytes long")));
    }
    let header = file
        .read_at_aligned(0, SEGMENT_HEADER_BYTES as usize)
        .await
        .map_err(|e| WalError::glommio("reading header", path, e))?;
    format::parse_segment_header(&header, base).map_err(|e| not_a_wal(format!("{e:?}")))?;
    Ok(Segment { base, capacity: size - SEGMENT_HEADER_BYTES, file: Rc::new(file), path: path.to_owned() })
}

/// Lists `(base, path)` of the segments in `dir`, sorted; removes leftover
/// temporary files of interrupted segment creations.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| WalError::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io("listing", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".wal.tmp") {
            std::fs::remove_file(entry.path()).map_err(|e| WalError::io("removing", entry.path(), e))?;
            continue;
        }
        if let Some(base) = format::parse_segment_file_name(&name) {
            found.push((base, entry.path()));
        } else if name.ends_with(".wal") {
            return Err(WalError::NotAWal { path: entry.path(), reason: "file name is not <20 digits>.wal".into() });
        }
    }
    found.sort();
    Ok(found)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    let d = std::fs::File::open(dir).map_err(|e| WalError::io("opening directory", dir, e))?;
    d.sync_all().map_err(|e| WalError::io("syncing directory", dir, e))
}

/// Warns once per process when the WAL lives on tmpfs, where O_DIRECT is
/// unavailable and glommio falls back to buffered writes (still synced).
pub(crate) fn warn_if_tmpfs(dir: &Path) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if is_tmpfs(dir) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(dir = %dir.display(), "WAL directory is on tmpfs: O_DIRECT is unavailable, using buffered writes + fdatasync");
    }
}

fn is_tmpfs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized out-parameter.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == libc::TMPFS_MAGIC as i64
}

/// A read window over one segment: a buffer of file bytes starting at a
/// position, refilled in `WINDOW_BYTES` chunks. Used by recovery and readers.
pub(crate) struct Window {
    pub base: u64,
    start: u64,
    buf: Vec<u8>,
}

pub(crate) const WINDOW_BYTES: u64 = 1 << 20;

impl Window {
    pub fn new(base: u64) -> Window {
        Window { base, start: base, buf: Vec::new() }
    }

    /// Returns the bytes `[position, min(position + want, limit))`, reading
    /// from the file as needed. `limit` bounds what may be read (the durable
    /// end or the segment's end).
    pub async fn bytes_at(&mut self, seg: &Segment, position: u64, want: u64, limit: u64) -> Result<&[u8], WalError> {
        debug_assert_eq!(seg.base, self.base);
        let end = (position + want).min(limit);
        let covered = position >= self.start && end <= self.start + self.buf.len() as u64;
        if !covered {
            let len = (end - position).max(WINDOW_BYTES).min(limit - position);
            let r = seg
                .file
                .read_at(seg.file_offset(position), len as usize)
                .await
                .map_err(|e| WalError::glommio("reading", &seg.path, e))?;
            self.start = position;
            self.buf.clear();
            self.buf.extend_from_slice(&r);
        }
        let from = (position - self.start) as usize;
        let to = ((end - self.start) as usize).min(self.buf.len());
        Ok(&self.buf[from..to])
    }
}
