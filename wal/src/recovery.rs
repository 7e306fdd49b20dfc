//! Opening the WAL: finding segments, scanning the active one, truncating a
//! torn tail and telling it apart from corruption.
//!
//! Checkpoint: a segment is sealed once a later segment exists, and a later
//! segment is only created after every commit before it was synced, so
//! sealed segments are trusted (their frames are still checked whenever
//! they are read). Only the last segment is scanned, commit by commit:
//! - a commit whose marker and frames all validate is kept;
//! - the first one that does not (or a zeroed marker) ends the log, *unless*
//!   a valid commit marker exists anywhere after it in the segment: commits
//!   are written strictly one after another, so a valid later commit proves
//!   the bad one was once whole and has since been damaged. That is
//!   `WalError::Corrupt` naming the bad frame's position.
//!
//! A torn tail is zeroed on disk (and synced) before the WAL accepts writes,
//! so frames of an unacknowledged commit can never reappear after a later
//! crash.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;

use crate::format::{
    self, FrameCheck, BLOCK_BYTES, COMMIT_FRAME_BYTES, FRAME_ALIGN_BYTES, FRAME_HEADER_BYTES,
    KIND_COMMIT,
};
use crate::segment::{self, Segment, Window, WINDOW_BYTES};
use crate::{Position, Recovery, WalConfig, WalError};

pub(crate) struct Opened {
    pub segments: BTreeMap<u64, Rc<Segment>>,
    pub tail: Vec<u8>,
    pub report: Recovery,
}

pub(crate) async fn open_segments(cfg: &WalConfig) -> Result<Opened, WalError> {
    let listed = segment::list(&cfg.dir)?;
    let mut segments = BTreeMap::new();
    if listed.is_empty() {
        let seg = segment::create(&cfg.dir, 0, cfg.segment_bytes, cfg.sync_mode).await?;
        segments.insert(0, Rc::new(seg));
        segment::sync_dir(&cfg.dir)?;
        let report = Recovery {
            entries: 0,
            end: Position(0),
            torn_bytes_dropped: 0,
            segments: 1,
        };
        return Ok(Opened {
            segments,
            tail: Vec::new(),
            report,
        });
    }
    for (base, path) in &listed {
        let seg = segment::open(path, *base, cfg.sync_mode).await?;
        segments.insert(*base, Rc::new(seg));
    }
    check_contiguous(&segments)?;
    let last = segments
        .values()
        .next_back()
        .expect("listed is not empty")
        .clone();
    let scan = scan_last(&last, cfg.entry_bytes_max).await?;
    if scan.torn_bytes > 0 {
        zero_range(&last, scan.end, scan.end + scan.torn_bytes).await?;
        tracing::warn!(
            position = scan.end,
            bytes = scan.torn_bytes,
            "WAL torn tail truncated"
        );
    }
    let tail = read_tail_block(&last, scan.end).await?;
    let report = Recovery {
        entries: scan.entries,
        end: Position(scan.end),
        torn_bytes_dropped: scan.torn_bytes,
        segments: segments.len(),
    };
    Ok(Opened {
        segments,
        tail,
        report,
    })
}

fn check_contiguous(segments: &BTreeMap<u64, Rc<Segment>>) -> Result<(), WalError> {
    let segs: Vec<&Rc<Segment>> = segments.values().collect();
    for pair in segs.windows(2) {
        if pair[1].base > pair[0].end_max() || pair[1].base < pair[0].base {
            return Err(WalError::Corrupt {
                position: pair[0].end_max(),
                reason: format!(
                    "segments {} and {} are not contiguous",
                    pair[0].path.display(),
                    pair[1].path.display()
                ),
            });
        }
    }
    Ok(())
}

struct Scan {
    end: u64,
    entries: u64,
    torn_bytes: u64,
}

enum CommitScan {
    Whole { frames: u64, next: u64 },
    Bad { at: u64 },
}

async fn scan_last(seg: &Segment, entry_bytes_max: u32) -> Result<Scan, WalError> {
    let limit = seg.end_max();
    let mut window = Window::new(seg.base);
    let mut pos = seg.base;
    let mut entries = 0;
    let mut bad_at = None;
    while pos + COMMIT_FRAME_BYTES <= limit {
        match check_commit(&mut window, seg, pos, limit, entry_bytes_max).await? {
            CommitScan::Whole { frames, next } => {
                entries += frames;
                pos = next;
            }
            CommitScan::Bad { at } => {
                bad_at = Some(at);
                break;
            }
        }
    }
    let rest = scan_rest(&mut window, seg, pos, limit).await?;
    if let (Some(marker), Some(bad)) = (rest.first_marker, bad_at) {
        return Err(WalError::Corrupt {
            position: bad,
            reason: format!("frame fails its checks but a whole commit follows at {marker}"),
        });
    }
    Ok(Scan {
        end: pos,
        entries,
        torn_bytes: rest.nonzero_end.saturating_sub(pos),
    })
}

/// Checks the commit starting at `pos`: its marker and every frame it names.
async fn check_commit(
    w: &mut Window,
    seg: &Segment,
    pos: u64,
    limit: u64,
    max: u32,
) -> Result<CommitScan, WalError> {
    let marker = match frame_at(w, seg, pos, limit, max, Copy::Payload).await {
        Ok(f) if f.kind == KIND_COMMIT => f,
        Ok(_) | Err(WalError::Corrupt { .. }) => return Ok(CommitScan::Bad { at: pos }),
        Err(e) => return Err(e),
    };
    let mut full = vec![0u8; FRAME_HEADER_BYTES as usize];
    full.extend_from_slice(&marker.payload);
    let m = format::parse_commit(&full);
    let body_end = marker.next + u64::from(m.body_bytes);
    let mut at = marker.next;
    for _ in 0..m.frames {
        match frame_at(w, seg, at, limit.min(body_end), max, Copy::Nothing).await {
            Ok(f) if f.kind != KIND_COMMIT => at = f.next,
            Ok(_) | Err(WalError::Corrupt { .. }) => return Ok(CommitScan::Bad { at }),
            Err(e) => return Err(e),
        }
    }
    if at != body_end {
        return Ok(CommitScan::Bad { at });
    }
    Ok(CommitScan::Whole {
        frames: u64::from(m.frames),
        next: body_end,
    })
}

/// A frame that passed its checks.
pub(crate) struct Frame {
    pub kind: u8,
    /// Empty unless asked for with `Copy::Payload`.
    pub payload: Bytes,
    /// Position of the frame after it.
    pub next: u64,
}

/// Whether `frame_at` copies the payload out (checking the CRC as it
/// copies) or only checks it in place.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Copy {
    Payload,
    Nothing,
}

fn corrupt(position: u64, reason: &str) -> WalError {
    WalError::Corrupt {
        position,
        reason: reason.to_owned(),
    }
}

/// Reads and checks the frame at `p`, which must end at or before `limit`.
pub(crate) async fn frame_at(
    w: &mut Window,
    seg: &Segment,
    p: u64,
    limit: u64,
    max: u32,
    copy: Copy,
) -> Result<Frame, WalError> {
    let mut want = FRAME_HEADER_BYTES;
    for _ in 0..2 {
        let b = w.bytes_at(seg, p, want, limit).await?;
        if (b.len() as u64) < FRAME_HEADER_BYTES {
            return Err(corrupt(p, "frame extends past the end of the log"));
        }
        let h = format::check_header(b, max)
            .ok_or_else(|| corrupt(p, "bad frame length, kind or CRC"))?;
        let total = h.total_bytes();
        if (b.len() as u64) < total {
            if total > want {
                want = total;
                continue;
            }
            return Err(corrupt(p, "frame extends past the end of the log"));
        }
        let next = p + total;
        let payload = match copy {
            Copy::Nothing => match format::check_frame(b, p, max) {
                FrameCheck::Valid(_) => Bytes::new(),
                _ => return Err(corrupt(p, "bad frame length, kind or CRC")),
            },
            Copy::Payload => {
                let header = &b[..FRAME_HEADER_BYTES as usize];
                let body = &b[FRAME_HEADER_BYTES as usize..][..h.len as usize];
                let copied = format::copy_checked_payload(header, p, &[body]);
                Bytes::from(copied.ok_or_else(|| corrupt(p, "bad frame length, kind or CRC"))?)
            }
        };
        return Ok(Frame {
            kind: h.kind,
            payload,
            next,
        });
    }
    Err(corrupt(p, "frame extends past the end of the log"))
}

/// Bytes `read_alone` reads first: most entries fit; a longer frame takes
/// one more read for its rest.
pub(crate) const READ_FIRST_BYTES: u64 = 128 << 10;

/// Reads the one frame at `p` (ending at or before `limit`) without a read
/// window: `READ_FIRST_BYTES` (or `size_hint` bytes of payload, when given),
/// then the rest of a longer frame. The payload is copied out of the read
/// buffers once, its CRC checked as it is copied.
pub(crate) async fn read_alone(
    seg: &Segment,
    p: u64,
    limit: u64,
    max: u32,
    size_hint: u32,
) -> Result<Frame, WalError> {
    let read = |at: u64, len: u64| {
        let file = seg.file.clone();
        let offset = seg.file_offset(at);
        async move { file.read_at(offset, len as usize).await }
    };
    let hinted = format::frame_bytes(size_hint).max(READ_FIRST_BYTES);
    let first = hinted.min(limit.saturating_sub(p));
    if first < FRAME_HEADER_BYTES {
        return Err(corrupt(p, "frame extends past the end of the log"));
    }
    let head = read(p, first)
        .await
        .map_err(|e| WalError::glommio("reading", &seg.path, e))?;
    if (head.len() as u64) < FRAME_HEADER_BYTES {
        return Err(corrupt(p, "frame extends past the end of the log"));
    }
    let h = format::check_header(&head, max)
        .ok_or_else(|| corrupt(p, "bad frame length, kind or CRC"))?;
    let next = p + h.total_bytes();
    if next > limit {
        return Err(corrupt(p, "frame extends past the end of the log"));
    }
    let header = &head[..FRAME_HEADER_BYTES as usize];
    let len = h.len as usize;
    let in_head = len.min(head.len() - FRAME_HEADER_BYTES as usize);
    let first_part = &head[FRAME_HEADER_BYTES as usize..][..in_head];
    let copied = if in_head == len {
        format::copy_checked_payload(header, p, &[first_part])
    } else {
        let rest_at = p + FRAME_HEADER_BYTES + in_head as u64;
        let rest = read(rest_at, (len - in_head) as u64)
            .await
            .map_err(|e| WalError::glommio("reading", &seg.path, e))?;
        if rest.len() < len - in_head {
            return Err(corrupt(p, "segment shorter than its data"));
        }
        format::copy_checked_payload(header, p, &[first_part, &rest[..len - in_head]])
    };
    let payload = copied.ok_or_else(|| corrupt(p, "bad frame length, kind or CRC"))?;
    Ok(Frame {
        kind: h.kind,
        payload: Bytes::from(payload),
        next,
    })
}

struct Rest {
    first_marker: Option<u64>,
    nonzero_end: u64,
}

/// Looks past the end of the valid log for any valid commit marker and for
/// the end of any non-zero bytes (the torn region).
async fn scan_rest(w: &mut Window, seg: &Segment, from: u64, limit: u64) -> Result<Rest, WalError> {
    let mut rest = Rest {
        first_marker: None,
        nonzero_end: from,
    };
    let marker_bytes = format::align_up(COMMIT_FRAME_BYTES, FRAME_ALIGN_BYTES);
    let mut chunk_start = from;
    while chunk_start < limit {
        let b = w.bytes_at(seg, chunk_start, WINDOW_BYTES, limit).await?;
        if b.is_empty() {
            break;
        }
        if let Some(i) = b.iter().rposition(|&x| x != 0) {
            rest.nonzero_end = rest.nonzero_end.max(chunk_start + i as u64 + 1);
        }
        if rest.first_marker.is_none() {
            rest.first_marker = find_marker(b, chunk_start, from);
        }
        let step = (b.len() as u64)
            .saturating_sub(marker_bytes)
            .max(FRAME_ALIGN_BYTES);
        if chunk_start + b.len() as u64 >= limit {
            break;
        }
        chunk_start += format::align_down(step, FRAME_ALIGN_BYTES);
    }
    Ok(rest)
}

fn find_marker(b: &[u8], chunk_start: u64, after: u64) -> Option<u64> {
    let mut off = 0usize;
    while off + COMMIT_FRAME_BYTES as usize <= b.len() {
        let pos = chunk_start + off as u64;
        let looks_like = b[off + 8] == KIND_COMMIT && b[off + 4..off + 8] == 16u32.to_le_bytes();
        if pos > after
            && looks_like
            && matches!(format::check_frame(&b[off..], pos, 0), FrameCheck::Valid(_))
        {
            return Some(pos);
        }
        off += FRAME_ALIGN_BYTES as usize;
    }
    None
}

/// Zeroes positions `[from, to)` of the segment on disk, keeping the valid
/// bytes that share the first block, then syncs.
async fn zero_range(seg: &Segment, from: u64, to: u64) -> Result<(), WalError> {
    let first_block = format::align_down(seg.file_offset(from), BLOCK_BYTES);
    let end = format::align_up(seg.file_offset(to), BLOCK_BYTES);
    let keep = read_tail_block(seg, from).await?;
    let mut off = first_block;
    while off < end {
        let len = (end - off).min(WINDOW_BYTES);
        let mut buf = seg.file.alloc_dma_buffer(len as usize);
        buf.as_bytes_mut().fill(0);
        if off == first_block {
            buf.as_bytes_mut()[..keep.len()].copy_from_slice(&keep);
        }
        let n = seg
            .file
            .write_at(buf, off)
            .await
            .map_err(|e| WalError::glommio("zeroing torn tail", &seg.path, e))?;
        if (n as u64) < len {
            return Err(WalError::NoSpace {
                path: seg.path.clone(),
            });
        }
        off += len;
    }
    seg.file
        .fdatasync()
        .await
        .map_err(|e| WalError::glommio("syncing", &seg.path, e))
}

/// The bytes of the block holding `end`, from the block's start to `end`.
async fn read_tail_block(seg: &Segment, end: u64) -> Result<Vec<u8>, WalError> {
    let file_end = seg.file_offset(end);
    let block = format::align_down(file_end, BLOCK_BYTES);
    if block == file_end {
        return Ok(Vec::new());
    }
    let r = seg
        .file
        .read_at_aligned(block, BLOCK_BYTES as usize)
        .await
        .map_err(|e| WalError::glommio("reading tail block", &seg.path, e))?;
    let n = (file_end - block) as usize;
    if r.len() < n {
        return Err(WalError::Corrupt {
            position: end,
            reason: "segment shorter than its data".into(),
        });
    }
    Ok(r[..n].to_vec())
}
