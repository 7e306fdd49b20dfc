//! The `Wal` handle: queueing, group commit, reads. Lives on one glommio
//! executor; every type here is `!Send`.
//!
//! Write path: `append` frames nothing and copies nothing; it puts the
//! payload (`Payload`: `Bytes` and any runs of known CRC) into the open
//! batch at the back of the queue. One batcher task takes the front batch,
//! lays out a commit marker and the frames in one aligned DMA buffer
//! (starting with the partial last block kept in memory; each payload
//! copied and checksummed in one pass), writes it with one O_DIRECT write
//! and syncs (`fdatasync`, or nothing more under `O_DSYNC`); the next
//! commit's write overlaps that sync, and the commit after it is laid out
//! meanwhile. Only after its own sync are a batch's appends resolved. When
//! the queue is empty the batcher parks on a waker: no timer, no wake-up,
//! no log line.
//!
//! Watermarks: `durable_end <= written_end`. `written_end` is the end of the
//! last commit written; `durable_end` the end of the last one synced. Every
//! position below `durable_end` is durable and immutable; between the two
//! lies at most one commit, whose sync is in flight while the next commit is
//! written. Queued entries have no position yet: positions are assigned when
//! a commit is laid out; a commit laid out ahead starts where the one being
//! written ends, and is laid out again if that write fails.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use glommio::Task;

use crate::format::{
    self, BLOCK_BYTES, COMMIT_FRAME_BYTES, FRAME_ALIGN_BYTES, KIND_COMMIT, KIND_RESERVED_MIN,
};
use crate::recovery;
use crate::segment::{self, Segment, Window};
use crate::{Entry, Payload, Position, Recovery, SyncMode, WalConfig, WalError, WalStats};

/// A handle to one shard's WAL. Cheap to clone; all clones share the log.
#[derive(Clone)]
pub struct Wal {
    inner: Rc<Inner>,
}

pub(crate) struct Inner {
    pub cfg: WalConfig,
    pub segments: RefCell<BTreeMap<u64, Rc<Segment>>>,
    pub st: RefCell<State>,
    batcher: RefCell<Option<Task<()>>>,
}

pub(crate) struct State {
    pub start: u64,
    pub durable_end: u64,
    /// End of what was written; `durable_end <= written_end`, and the gap is
    /// at most the one commit whose sync is in flight.
    pub written_end: u64,
    /// Bytes of the block holding `written_end`, from the block's start up to
    /// `written_end`; rewritten at the head of the next commit.
    pub tail: Vec<u8>,
    queue: VecDeque<Rc<Batch>>,
    queued_bytes: u64,
    queued_entries: u64,
    waiting: VecDeque<Rc<Waiting>>,
    batcher_waker: Option<Waker>,
    closed: bool,
    poisoned: Option<String>,
    /// The last commit's entries, served to readers from memory.
    recent: Option<Rc<Batch>>,
    /// Segments rolled since open, and the task waiting for the next roll.
    rolls: u64,
    roll_waker: Option<Waker>,
    pub stats: WalStats,
}

/// Entries that will be written by one commit, and its outcome.
struct Batch {
    entries: RefCell<Vec<(u8, Payload)>>,
    body_bytes: Cell<u64>,
    positions: RefCell<Vec<u64>>,
    outcome: RefCell<Option<Result<(), WalError>>>,
    wakers: RefCell<Vec<Waker>>,
}

impl Batch {
    fn new() -> Rc<Batch> {
        Rc::new(Batch {
            entries: RefCell::new(Vec::new()),
            body_bytes: Cell::new(0),
            positions: RefCell::new(Vec::new()),
            outcome: RefCell::new(None),
            wakers: RefCell::new(Vec::new()),
        })
    }

    fn finish(&self, outcome: Result<(), WalError>) {
        *self.outcome.borrow_mut() = Some(outcome);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// An append waiting for queue space (backpressure), admitted in FIFO order.
struct Waiting {
    entry: RefCell<Option<(u8, Payload)>>,
    ticket: RefCell<Option<(Rc<Batch>, usize)>>,
    failed: RefCell<Option<WalError>>,
    waker: RefCell<Option<Waker>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The batcher holds only a weak reference: wake it so it can exit.
        if let Some(w) = self.st.get_mut().batcher_waker.take() {
            w.wake();
        }
    }
}

impl Wal {
    /// Opens (or creates) the WAL in `cfg.dir`, recovering a torn tail.
    /// Must be called inside a glommio executor, which then owns the WAL.
    pub async fn open(cfg: WalConfig) -> Result<(Wal, Recovery), WalError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| WalError::io("creating directory", &cfg.dir, e))?;
        segment::warn_if_tmpfs(&cfg.dir);
        let opened = recovery::open_segments(&cfg).await?;
        let report = opened.report;
        let mut stats = WalStats::new();
        stats.segments = opened.segments.len() as u64;
        let state = State {
            start: opened.segments.keys().next().copied().unwrap_or(0),
            durable_end: report.end.0,
            written_end: report.end.0,
            tail: opened.tail,
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued_entries: 0,
            waiting: VecDeque::new(),
            batcher_waker: None,
            closed: false,
            poisoned: None,
            recent: None,
            rolls: 0,
            roll_waker: None,
            stats,
        };
        let inner = Rc::new(Inner {
            cfg,
            segments: RefCell::new(opened.segments),
            st: RefCell::new(state),
            batcher: RefCell::new(None),
        });
        let task = glommio::spawn_local(run_batcher(Rc::downgrade(&inner)));
        *inner.batcher.borrow_mut() = Some(task);
        Ok((Wal { inner }, report))
    }

    /// Appends one entry. The entry is queued when this is called (not when
    /// the future is first polled), so entries are logged in call order;
    /// when the queue is full it waits, still in call order. The future
    /// resolves once the entry is durable. Dropping the future does not
    /// cancel the write.
    pub fn append(&self, kind: u8, payload: Bytes) -> Append {
        self.append_payload(kind, Payload::new(payload))
    }

    /// `append` of a payload that may carry runs of known CRC (`Payload::
    /// with_crc_spans`): the frame's CRC is combined from them.
    pub fn append_payload(&self, kind: u8, payload: Payload) -> Append {
        let state = match self.try_enqueue(kind, payload) {
            Ok(s) => s,
            Err(e) => AppendState::Failed(Some(e)),
        };
        Append {
            state,
            registered: false,
        }
    }

    fn try_enqueue(&self, kind: u8, payload: Payload) -> Result<AppendState, WalError> {
        if kind >= KIND_RESERVED_MIN {
            return Err(WalError::ReservedKind(kind));
        }
        let max = self.inner.cfg.entry_bytes_max;
        if payload.len() as u64 > u64::from(max) {
            return Err(WalError::EntryTooLarge {
                bytes: payload.len() as u64,
                max,
            });
        }
        let mut st = self.inner.st.borrow_mut();
        if st.closed {
            return Err(WalError::Closed);
        }
        if let Some(p) = &st.poisoned {
            return Err(WalError::Poisoned(p.clone()));
        }
        st.stats.appends += 1;
        let fb = format::frame_bytes(payload.len() as u32);
        if st.waiting.is_empty() && has_room(&st, &self.inner.cfg, fb) {
            let ticket = enqueue(&mut st, &self.inner.cfg, kind, payload);
            return Ok(AppendState::Queued(ticket.0, ticket.1));
        }
        st.stats.backpressure_waits += 1;
        let w = Rc::new(Waiting {
            entry: RefCell::new(Some((kind, payload))),
            ticket: RefCell::new(None),
            failed: RefCell::new(None),
            waker: RefCell::new(None),
        });
        st.waiting.push_back(w.clone());
        Ok(AppendState::Waiting(w))
    }

    /// Reads the entry at `position` (a position returned by `append` or an
    /// entry's `next`). Entries of the last commit come from memory; others
    /// are read alone (no read window), checked and copied out once.
    pub async fn read(&self, position: Position) -> Result<Entry, WalError> {
        self.read_sized(position, 0).await
    }

    /// `read` of an entry the caller expects to hold about
    /// `payload_bytes_hint` bytes: the first read is made that large, so
    /// such an entry takes one read (0: `recovery::READ_FIRST_BYTES`).
    pub async fn read_sized(
        &self,
        position: Position,
        payload_bytes_hint: u32,
    ) -> Result<Entry, WalError> {
        let p = position.0;
        let (start, end, recent) = {
            let st = self.inner.st.borrow();
            (st.start, st.durable_end, st.recent.clone())
        };
        let out_of_range = WalError::OutOfRange {
            position: p,
            start,
            end,
        };
        if p < start || p >= end {
            return Err(out_of_range);
        }
        if let Some(e) = recent.and_then(|b| entry_from_batch(&b, p)) {
            return Ok(e);
        }
        let seg = self
            .inner
            .segments
            .borrow()
            .range(..=p)
            .next_back()
            .map(|(_, s)| s.clone());
        let Some(seg) = seg else {
            return Err(out_of_range);
        };
        let limit = end.min(seg.end_max());
        let max = self.inner.cfg.entry_bytes_max;
        let f = recovery::read_alone(&seg, p, limit, max, payload_bytes_hint).await?;
        if f.kind == KIND_COMMIT {
            return Err(WalError::Corrupt {
                position: p,
                reason: "position holds a commit marker, not an entry".into(),
            });
        }
        Ok(Entry {
            position,
            kind: f.kind,
            payload: f.payload,
            next: Position(f.next),
        })
    }

    /// An iterator over entries from `from` up to the durable end as it is
    /// when each step runs.
    pub fn reader(&self, from: Position) -> WalReader {
        WalReader {
            wal: self.clone(),
            position: from.0,
            window: None,
        }
    }

    /// First position still in the log.
    pub fn start(&self) -> Position {
        Position(self.inner.st.borrow().start)
    }

    /// Everything below this position is durable.
    pub fn durable_end(&self) -> Position {
        Position(self.inner.st.borrow().durable_end)
    }

    /// Removes every whole sealed segment that lies entirely below `position`.
    /// Returns the number of segments removed.
    pub async fn remove_below(&self, position: Position) -> Result<u64, WalError> {
        let doomed: Vec<Rc<Segment>> = {
            let segs = self.inner.segments.borrow();
            let bases: Vec<u64> = segs.keys().copied().collect();
            bases
                .windows(2)
                .filter(|w| w[1] <= position.0)
                .map(|w| segs[&w[0]].clone())
                .collect()
        };
        for seg in &doomed {
            std::fs::remove_file(&seg.path).map_err(|e| WalError::io("removing", &seg.path, e))?;
            self.inner.segments.borrow_mut().remove(&seg.base);
            // One directory sync per file: a crash leaves a removed prefix,
            // never a hole.
            segment::sync_dir(&self.inner.cfg.dir)?;
            self.inner.st.borrow_mut().stats.segments_removed += 1;
        }
        if !doomed.is_empty() {
            let first = *self
                .inner
                .segments
                .borrow()
                .keys()
                .next()
                .expect("the active segment is never removed");
            let mut st = self.inner.st.borrow_mut();
            st.start = first;
            st.stats.segments = self.inner.segments.borrow().len() as u64;
        }
        Ok(doomed.len() as u64)
    }

    /// How many segments `remove_below(position)` would remove.
    pub fn removable_below(&self, position: Position) -> u64 {
        let segs = self.inner.segments.borrow();
        let bases: Vec<u64> = segs.keys().copied().collect();
        bases.windows(2).filter(|w| w[1] <= position.0).count() as u64
    }

    /// Base of the active (last) segment: every position below it lies in
    /// a sealed segment.
    pub fn active_base(&self) -> Position {
        Position(active(&self.inner).base)
    }

    /// Base positions of every segment, oldest first; the last one is the
    /// active segment's.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.inner.segments.borrow().keys().copied().collect()
    }

    /// Segments rolled since the WAL was opened.
    pub fn rolls(&self) -> u64 {
        self.inner.st.borrow().rolls
    }

    /// Resolves once more than `seen` segments were rolled (one waiter:
    /// a later call replaces the earlier one's waker).
    pub async fn rolled(&self, seen: u64) {
        std::future::poll_fn(|cx| {
            let mut st = self.inner.st.borrow_mut();
            if st.rolls > seen || st.closed {
                return Poll::Ready(());
            }
            st.roll_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    pub fn stats(&self) -> WalStats {
        let st = self.inner.st.borrow();
        let mut s = st.stats.clone();
        s.queue_bytes = st.queued_bytes;
        s.queue_entries = st.queued_entries;
        s.start = st.start;
        s.durable_end = st.durable_end;
        s.segments = self.inner.segments.borrow().len() as u64;
        s.disk_bytes = s.segments * self.inner.cfg.segment_bytes;
        s
    }

    pub fn config(&self) -> &WalConfig {
        &self.inner.cfg
    }

    /// Writes what is queued, stops the batcher and refuses further appends.
    pub async fn close(self) -> Result<(), WalError> {
        {
            let mut st = self.inner.st.borrow_mut();
            st.closed = true;
            if let Some(w) = st.roll_waker.take() {
                w.wake();
            }
            if let Some(w) = st.batcher_waker.take() {
                w.wake();
            }
        }
        let task = self.inner.batcher.borrow_mut().take();
        if let Some(t) = task {
            t.await;
        }
        let poisoned = self.inner.st.borrow().poisoned.clone();
        match poisoned {
            Some(p) => Err(WalError::Poisoned(p)),
            None => Ok(()),
        }
    }
}

/// Frame bytes one commit gathers from several appends. A commit's buffer
/// also holds the block bytes before its start (less than a block), so a
/// block is left for them: the buffer of a commit of several entries is then
/// at most `commit_bytes_max`, and the two that exist at once (one written,
/// one laid out) each fit a block of the `io_memory` arena, whose allocator
/// rounds every buffer up to a power of two (a 2 MiB + 4 KiB buffer takes
/// 4 MiB). An entry larger than this still gets a commit of its own.
fn body_bytes_max(cfg: &WalConfig) -> u64 {
    cfg.commit_bytes_max
        .saturating_sub(format::align_up(COMMIT_FRAME_BYTES, FRAME_ALIGN_BYTES) + BLOCK_BYTES)
}

fn has_room(st: &State, cfg: &WalConfig, frame_bytes: u64) -> bool {
    st.queued_bytes == 0 || st.queued_bytes + frame_bytes <= cfg.queue_bytes_max
}

fn enqueue(st: &mut State, cfg: &WalConfig, kind: u8, payload: Payload) -> (Rc<Batch>, usize) {
    let fb = format::frame_bytes(payload.len() as u32);
    let fits = st
        .queue
        .back()
        .is_some_and(|b| b.body_bytes.get() + fb <= body_bytes_max(cfg));
    if !fits {
        st.queue.push_back(Batch::new());
    }
    let batch = st.queue.back().expect("pushed above").clone();
    let index = {
        let mut entries = batch.entries.borrow_mut();
        entries.push((kind, payload));
        entries.len() - 1
    };
    batch.body_bytes.set(batch.body_bytes.get() + fb);
    st.queued_bytes += fb;
    st.queued_entries += 1;
    if let Some(w) = st.batcher_waker.take() {
        w.wake();
    }
    (batch, index)
}

/// Moves waiting appends into the queue, in order, while there is room.
fn admit_waiting(st: &mut State, cfg: &WalConfig) {
    while let Some(w) = st.waiting.front().cloned() {
        let fb = {
            let e = w.entry.borrow();
            format::frame_bytes(e.as_ref().map_or(0, |(_, p)| p.len() as u32))
        };
        if let Some(p) = &st.poisoned {
            *w.failed.borrow_mut() = Some(WalError::Poisoned(p.clone()));
        } else if has_room(st, cfg, fb) {
            let (kind, payload) = w
                .entry
                .borrow_mut()
                .take()
                .expect("a waiting append holds its entry");
            *w.ticket.borrow_mut() = Some(enqueue(st, cfg, kind, payload));
        } else {
            return;
        }
        st.waiting.pop_front();
        if let Some(k) = w.waker.borrow_mut().take() {
            k.wake();
        }
    }
}

fn entry_from_batch(batch: &Batch, position: u64) -> Option<Entry> {
    let positions = batch.positions.borrow();
    let i = positions.binary_search(&position).ok()?;
    let entries = batch.entries.borrow();
    let (kind, payload) = &entries[i];
    let next = position + format::frame_bytes(payload.len() as u32);
    Some(Entry {
        position: Position(position),
        kind: *kind,
        payload: payload.bytes().clone(),
        next: Position(next),
    })
}

/// The future returned by `Wal::append`.
pub struct Append {
    state: AppendState,
    registered: bool,
}

enum AppendState {
    Failed(Option<WalError>),
    Waiting(Rc<Waiting>),
    Queued(Rc<Batch>, usize),
}

impl Future for Append {
    type Output = Result<Position, WalError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let AppendState::Waiting(w) = &this.state {
            if let Some(e) = w.failed.borrow_mut().take() {
                return Poll::Ready(Err(e));
            }
            let ticket = w.ticket.borrow_mut().take();
            match ticket {
                Some((batch, i)) => this.state = AppendState::Queued(batch, i),
                None => {
                    *w.waker.borrow_mut() = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        match &mut this.state {
            AppendState::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(WalError::Closed))),
            AppendState::Waiting(_) => unreachable!("handled above"),
            AppendState::Queued(batch, i) => {
                if let Some(outcome) = batch.outcome.borrow().as_ref() {
                    return Poll::Ready(
                        outcome
                            .clone()
                            .map(|()| Position(batch.positions.borrow()[*i])),
                    );
                }
                if !this.registered {
                    batch.wakers.borrow_mut().push(cx.waker().clone());
                    this.registered = true;
                }
                Poll::Pending
            }
        }
    }
}

/// A commit laid out in its DMA buffer, not yet written.
struct Prepared {
    batch: Rc<Batch>,
    seg: Rc<Segment>,
    start: u64,
    total: u64,
    /// File offset of the buffer's first byte (the block holding `start`).
    buf_offset: u64,
    buf: glommio::io::DmaBuffer,
    /// Bytes of the block holding `start + total`, up to it.
    new_tail: Vec<u8>,
}

/// A commit that is written but not yet synced.
struct Written {
    batch: Rc<Batch>,
    seg: Rc<Segment>,
    end: u64,
    total: u64,
    began: Instant,
}

/// The batcher: one task per WAL, parked while the queue is empty.
///
/// Pipelined: while commit N is being synced, commit N+1 (whatever queued
/// meanwhile) is already written, so a cycle costs max(write, sync) rather
/// than their sum. Commit N's appends are resolved as soon as its sync is
/// done, and commit N+2 is laid out (copied and checksummed into its
/// buffer) while N+1's write is still in flight, so the CPU work of a
/// commit is off the disk's path. Writes stay strictly sequential; a commit
/// is resolved only after the sync that follows its own write; at most two
/// commit buffers exist at once (one written, one laid out).
async fn run_batcher(weak: Weak<Inner>) {
    let mut unsynced: Option<Written> = None;
    let mut ahead: Option<Prepared> = None;
    loop {
        let Some(w) = unsynced.take() else {
            // A commit laid out ahead goes first, laid out again at the end
            // of what was really written (a failed write leaves it behind).
            let next = match ahead.take() {
                Some(p) => match weak.upgrade() {
                    Some(inner) => Some((inner, p.batch)),
                    None => {
                        p.batch.finish(Err(WalError::Closed));
                        return;
                    }
                },
                None => next_batch(&weak).await,
            };
            let Some((inner, batch)) = next else {
                return;
            };
            unsynced = write_or_fail(&inner, batch).await;
            continue;
        };
        let Some(inner) = weak.upgrade() else {
            w.batch.finish(Err(WalError::Closed));
            if let Some(p) = ahead.take() {
                p.batch.finish(Err(WalError::Closed));
            }
            return;
        };
        let next = ahead.take().or_else(|| {
            let (end, tail) = {
                let st = inner.st.borrow();
                (st.written_end, st.tail.clone())
            };
            pop_and_lay_out(&inner, end, &tail)
        });
        let Some(next) = next else {
            let synced = sync(&inner, &w.seg).await;
            finish(&inner, w, synced);
            continue;
        };
        let batch = next.batch.clone();
        let (sync_ok, written, prepared) = cycle(&inner, w, next).await;
        match written {
            Ok(n) if sync_ok => {
                unsynced = Some(n);
                ahead = prepared;
            }
            Ok(n) => {
                let p = inner.st.borrow().poisoned.clone().unwrap_or_default();
                finish(&inner, n, Err(WalError::Poisoned(p.clone())));
                if let Some(a) = prepared {
                    a.batch.finish(Err(WalError::Poisoned(p)));
                }
            }
            Err(e) => {
                batch.finish(Err(e));
                ahead = prepared;
            }
        }
    }
}

/// One pipelined cycle: syncs `w` while `next` is written. `w`'s appends
/// are resolved as soon as its sync is done; when the first of the two
/// completes (the write is then surely submitted), the commit after `next`
/// is laid out, after one yield so that appenders just resolved can queue
/// again first. Returns whether the sync succeeded, the write's outcome and
/// the commit laid out ahead, if any.
async fn cycle(
    inner: &Rc<Inner>,
    w: Written,
    next: Prepared,
) -> (bool, Result<Written, WalError>, Option<Prepared>) {
    let (after_end, after_tail, seg) = (
        next.start + next.total,
        next.new_tail.clone(),
        next.seg.clone(),
    );
    let sync_seg = w.seg.clone();
    let mut sync_f = std::pin::pin!(sync(inner, &sync_seg));
    let mut write_f = std::pin::pin!(submit(inner, next));
    let mut w = Some(w);
    let mut synced: Option<bool> = None;
    let mut written: Option<Result<Written, WalError>> = None;
    let mut ahead: Option<Prepared> = None;
    let mut ahead_step = 0u8; // 0: not yet, 1: yielded once, 2: done
    std::future::poll_fn(|cx| {
        if synced.is_none() {
            if let Poll::Ready(r) = sync_f.as_mut().poll(cx) {
                synced = Some(r.is_ok());
                finish(inner, w.take().expect("finished once"), r);
            }
        }
        if written.is_none() {
            if let Poll::Ready(r) = write_f.as_mut().poll(cx) {
                written = Some(r);
            }
        }
        if synced.is_some() && written.is_some() {
            return Poll::Ready(());
        }
        let one_done = synced.is_some() || written.is_some();
        if one_done && synced != Some(false) && ahead_step < 2 {
            if ahead_step == 0 {
                ahead_step = 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ahead_step = 2;
            if active(inner).base == seg.base {
                ahead = pop_and_lay_out(inner, after_end, &after_tail);
            }
        }
        Poll::Pending
    })
    .await;
    let written = written.expect("polled to completion");
    (synced == Some(true), written, ahead)
}

async fn write_or_fail(inner: &Rc<Inner>, batch: Rc<Batch>) -> Option<Written> {
    let poisoned = inner.st.borrow().poisoned.clone();
    let written = match poisoned {
        Some(p) => Err(WalError::Poisoned(p)),
        None => write(inner, &batch).await,
    };
    match written {
        Ok(w) => Some(w),
        Err(e) => {
            batch.finish(Err(e));
            admit_waiting(&mut inner.st.borrow_mut(), &inner.cfg);
            None
        }
    }
}

/// Resolves a written commit with the outcome of its sync.
fn finish(inner: &Rc<Inner>, w: Written, synced: Result<(), WalError>) {
    if synced.is_ok() {
        let mut st = inner.st.borrow_mut();
        assert!(
            w.end > st.durable_end && w.end <= st.written_end,
            "commits become durable in order"
        );
        st.durable_end = w.end;
        st.recent = Some(w.batch.clone());
        let entries = w.batch.entries.borrow().len() as u64;
        st.stats
            .record_commit(entries, w.total, w.began.elapsed().as_micros() as u64);
    }
    w.batch.finish(synced);
    admit_waiting(&mut inner.st.borrow_mut(), &inner.cfg);
}

/// Pops the next queued batch and lays it out at `start` after the block
/// bytes `tail`, unless the WAL is poisoned, nothing is queued, or the batch
/// would start a new segment: a roll waits until everything written before
/// it is synced.
fn pop_and_lay_out(inner: &Rc<Inner>, start: u64, tail: &[u8]) -> Option<Prepared> {
    let seg = active(inner);
    let batch = {
        let mut st = inner.st.borrow_mut();
        if st.poisoned.is_some() {
            return None;
        }
        let total = commit_total(st.queue.front()?);
        if start + total > seg.end_max() {
            return None;
        }
        let batch = st.queue.pop_front()?;
        st.queued_bytes -= batch.body_bytes.get();
        st.queued_entries -= batch.entries.borrow().len() as u64;
        admit_waiting(&mut st, &inner.cfg);
        batch
    };
    Some(lay_out(&seg, batch, start, tail))
}

fn commit_total(batch: &Batch) -> u64 {
    format::align_up(COMMIT_FRAME_BYTES, FRAME_ALIGN_BYTES) + batch.body_bytes.get()
}

/// Waits for the next batch; `None` once the WAL is closed (and drained) or dropped.
async fn next_batch(weak: &Weak<Inner>) -> Option<(Rc<Inner>, Rc<Batch>)> {
    std::future::poll_fn(|cx| {
        let Some(inner) = weak.upgrade() else {
            return Poll::Ready(None);
        };
        let mut st = inner.st.borrow_mut();
        if let Some(batch) = st.queue.pop_front() {
            st.queued_bytes -= batch.body_bytes.get();
            st.queued_entries -= batch.entries.borrow().len() as u64;
            admit_waiting(&mut st, &inner.cfg);
            drop(st);
            return Poll::Ready(Some((inner, batch)));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        st.batcher_waker = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// Lays out and writes one batch after everything written so far (rolling
/// to a new segment when it does not fit).
async fn write(inner: &Rc<Inner>, batch: &Rc<Batch>) -> Result<Written, WalError> {
    let total = commit_total(batch);
    let start = inner.st.borrow().written_end;
    let mut seg = active(inner);
    if start + total > seg.end_max() {
        assert_eq!(
            inner.st.borrow().durable_end,
            start,
            "a roll follows a sync"
        );
        seg = roll(inner, start).await?;
    }
    let tail = inner.st.borrow().tail.clone();
    submit(inner, lay_out(&seg, batch.clone(), start, &tail)).await
}

/// Writes a laid-out commit; advances `written_end`, not `durable_end`.
async fn submit(inner: &Rc<Inner>, p: Prepared) -> Result<Written, WalError> {
    let Prepared {
        batch,
        seg,
        start,
        total,
        buf_offset,
        buf,
        new_tail,
    } = p;
    assert_eq!(
        inner.st.borrow().written_end,
        start,
        "a commit is written where the last one ended"
    );
    let began = Instant::now();
    let len = buf.len();
    let written = seg
        .file
        .write_at(buf, buf_offset)
        .await
        .map_err(|e| WalError::glommio("writing", &seg.path, e))?;
    if written < len {
        return Err(WalError::NoSpace {
            path: seg.path.clone(),
        });
    }
    let mut st = inner.st.borrow_mut();
    assert_eq!(st.written_end, start, "only the batcher writes");
    st.written_end = start + total;
    st.tail = new_tail;
    Ok(Written {
        batch,
        seg,
        end: start + total,
        total,
        began,
    })
}

/// Makes what was written to `seg` durable. A failed sync poisons the WAL:
/// what the kernel dropped cannot be told apart from what it kept.
async fn sync(inner: &Rc<Inner>, seg: &Segment) -> Result<(), WalError> {
    if inner.cfg.sync_mode != SyncMode::Fdatasync {
        return Ok(());
    }
    if let Err(e) = seg.file.fdatasync().await {
        let err = WalError::glommio("syncing", &seg.path, e);
        inner.st.borrow_mut().poisoned = Some(err.to_string());
        tracing::error!(error = %err, "WAL sync failed; refusing further appends");
        return Err(err);
    }
    Ok(())
}

fn active(inner: &Inner) -> Rc<Segment> {
    inner
        .segments
        .borrow()
        .values()
        .next_back()
        .expect("a WAL always has an active segment")
        .clone()
}

/// Starts a new segment at `start`, sealing the current one there.
async fn roll(inner: &Rc<Inner>, start: u64) -> Result<Rc<Segment>, WalError> {
    let cfg = &inner.cfg;
    let seg = Rc::new(segment::create(&cfg.dir, start, cfg.segment_bytes, cfg.sync_mode).await?);
    inner.segments.borrow_mut().insert(start, seg.clone());
    {
        let mut st = inner.st.borrow_mut();
        st.tail.clear();
        st.rolls += 1;
        if let Some(w) = st.roll_waker.take() {
            w.wake();
        }
    }
    tracing::debug!(base = start, "WAL segment rolled");
    Ok(seg)
}

/// Builds the aligned buffer of one commit starting at `start`: the block
/// bytes before it (`tail`), the commit marker, every frame, zero padding to
/// the block. Records entry positions. The one pass over each payload.
fn lay_out(seg: &Rc<Segment>, batch: Rc<Batch>, start: u64, tail: &[u8]) -> Prepared {
    let total = commit_total(&batch);
    let file_start = seg.file_offset(start);
    let aligned = format::align_down(file_start, BLOCK_BYTES);
    let tail_len = (file_start - aligned) as usize;
    assert_eq!(
        tail.len(),
        tail_len,
        "tail block out of step with the log end"
    );
    let file_end = file_start + total;
    let mut buf = seg
        .file
        .alloc_dma_buffer((format::align_up(file_end, BLOCK_BYTES) - aligned) as usize);
    let out = buf.as_bytes_mut();
    out[..tail_len].copy_from_slice(tail);
    let at = {
        let entries = batch.entries.borrow();
        let mut positions = batch.positions.borrow_mut();
        lay_out_frames(
            &mut out[tail_len..],
            start,
            &entries,
            &mut positions,
            batch.body_bytes.get(),
        )
    };
    let at = tail_len + at;
    assert_eq!(at as u64, tail_len as u64 + total);
    out[at..].fill(0);
    let tail_from = (format::align_down(file_end, BLOCK_BYTES) - aligned) as usize;
    let new_tail = out[tail_from..at].to_vec();
    Prepared {
        batch,
        seg: seg.clone(),
        start,
        total,
        buf_offset: aligned,
        buf,
        new_tail,
    }
}

/// Encodes the commit marker and every entry's frame into `out` from
/// position `start`; returns the bytes used.
fn lay_out_frames(
    out: &mut [u8],
    start: u64,
    entries: &[(u8, Payload)],
    positions: &mut Vec<u64>,
    body_bytes: u64,
) -> usize {
    let marker = format::commit_payload(entries.len() as u32, body_bytes as u32);
    let mfb = format::frame_bytes(marker.len() as u32) as usize;
    format::encode_frame(&mut out[..mfb], start, KIND_COMMIT, &marker);
    let mut at = mfb;
    let mut pos = start + mfb as u64;
    positions.clear();
    for (kind, payload) in entries {
        let fb = format::frame_bytes(payload.len() as u32) as usize;
        let frame = &mut out[at..at + fb];
        format::encode_frame_spans(frame, pos, *kind, payload.bytes(), payload.spans());
        positions.push(pos);
        at += fb;
        pos += fb as u64;
    }
    assert_eq!(at as u64, mfb as u64 + body_bytes);
    at
}

/// Iterates entries from a position. Obtained from `Wal::reader`.
pub struct WalReader {
    wal: Wal,
    position: u64,
    window: Option<Window>,
}

impl WalReader {
    /// The next entry, or `None` at the durable end. A frame that fails its
    /// checks is an error naming its position, and ends the iteration.
    pub async fn next(&mut self) -> Option<Result<Entry, WalError>> {
        loop {
            let position = self.position;
            match self.read_frame().await? {
                Ok((KIND_COMMIT, _, _)) => continue,
                Ok((kind, payload, next)) => {
                    return Some(Ok(Entry {
                        position: Position(position),
                        kind,
                        payload,
                        next: Position(next),
                    }))
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Position of the next frame to be read.
    pub fn position(&self) -> Position {
        Position(self.position)
    }

    /// Reads the frame at the current position and steps past it.
    async fn read_frame(&mut self) -> Option<Result<(u8, Bytes, u64), WalError>> {
        let inner = self.wal.inner.clone();
        let end = inner.st.borrow().durable_end;
        let p = self.position;
        if p >= end {
            return None;
        }
        let seg = inner
            .segments
            .borrow()
            .range(..=p)
            .next_back()
            .map(|(_, s)| s.clone());
        let Some(seg) = seg else {
            return Some(Err(WalError::OutOfRange {
                position: p,
                start: inner.st.borrow().start,
                end,
            }));
        };
        let limit = end.min(seg.end_max());
        if self.window.as_ref().is_none_or(|w| w.base != seg.base) {
            self.window = Some(Window::new(seg.base));
        }
        let window = self.window.as_mut().expect("set above");
        let max = inner.cfg.entry_bytes_max;
        let got = recovery::frame_at(window, &seg, p, limit, max, recovery::Copy::Payload).await;
        match got {
            Ok(f) => {
                self.position = f.next;
                Some(Ok((f.kind, f.payload, f.next)))
            }
            Err(e) => {
                self.position = end;
                Some(Err(e))
            }
        }
    }
}

/// Where the WAL's files live; used by tests and tools.
pub fn segment_paths(wal: &Wal) -> Vec<PathBuf> {
    wal.inner
        .segments
        .borrow()
        .values()
        .map(|s| s.path.clone())
        .collect()
}
