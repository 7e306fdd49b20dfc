//! The WAL's errors. Each is a value the caller can act on; none is a panic.

use std::path::PathBuf;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    /// The file system is full. Nothing of the failed commit was acknowledged;
    /// appends work again once space is freed.
    #[error("no space left on the WAL's file system ({path})")]
    NoSpace { path: PathBuf },
    /// An I/O error other than a full disk. When it happened while syncing,
    /// the WAL is poisoned: further appends fail, reads keep working.
    #[error("WAL I/O error while {op} {path}: {message}")]
    Io { op: &'static str, path: PathBuf, message: String, errno: Option<i32> },
    /// A file in the WAL directory is not a segment this version can read.
    #[error("{path} is not a Sluice WAL segment: {reason}")]
    NotAWal { path: PathBuf, reason: String },
    /// A frame that is not at the torn tail fails its checks.
    #[error("WAL corrupt at position {position}: {reason}")]
    Corrupt { position: u64, reason: String },
    #[error("WAL entry of {bytes} bytes exceeds entry_bytes_max {max}")]
    EntryTooLarge { bytes: u64, max: u32 },
    #[error("WAL entry kind {0} is reserved (kinds must be below 0xF0)")]
    ReservedKind(u8),
    /// The position is below the log start or at/after its durable end.
    #[error("position {position} is outside the WAL [{start}, {end})")]
    OutOfRange { position: u64, start: u64, end: u64 },
    #[error("invalid WAL configuration: {0}")]
    Config(String),
    #[error("the WAL is closed")]
    Closed,
    /// An earlier sync failed; durability of later writes cannot be promised.
    #[error("the WAL is failed after an earlier error: {0}")]
    Poisoned(String),
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, e: impl Into<std::io::Error>) -> WalError {
        let e: std::io::Error = e.into();
        let path = path.into();
        if e.raw_os_error() == Some(libc::ENOSPC) {
            return WalError::NoSpace { path };
        }
        WalError::Io { op, path, message: e.to_string(), errno: e.raw_os_error() }
    }

    pub(crate) fn glommio(op: &'static str, path: impl Into<PathBuf>, e: glommio::GlommioError<()>) -> WalError {
        WalError::io(op, path, std::io::Error::from(e))
    }
}
