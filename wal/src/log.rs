//! The `Wal` handle: queueing, group commit, reads. Lives on one glommio
//! executor; every type here is `!Send`.
//!
//! Write path: `append` frames nothing and copies nothing; it puts the
//! payload (`Bytes`) into the open batch at the back of the queue. One
//! batcher task takes the front batch as soon as the previous commit
//! completes, lays out a commit marker and the frames in one aligned DMA
//! buffer (starting with the partial last block kept in memory), writes it
//! with one O_DIRECT write and syncs (`fdatasync`, or nothing more under
//! `O_DSYNC`); the next commit's write overlaps that sync. Only after its
//! own sync are a batch's appends resolved. When the queue is
//! empty the batcher parks on a waker: no timer, no wake-up, no log line.
//!
//! Watermarks: `durable_end <= written_end`. `written_end` is the end of the
//! last commit written; `durable_end` the end of the last one synced. Every
//! position below `durable_end` is durable and immutable; between the two
//! lies at most one commit, whose sync is in flight while the next commit is
//! written. Queued entries have no position yet: positions are assigned when
//! a commit is laid out.

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
use crate::{Entry, Position, Recovery, SyncMode, WalConfig, WalError, WalStats};

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
    entries: RefCell<Vec<(u8, Bytes)>>,
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
    entry: RefCell<Option<(u8, Bytes)>>,
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
        let state = match self.try_enqueue(kind, payload) {
            Ok(s) => s,
            Err(e) => AppendState::Failed(Some(e)),
        };
        Append {
            state,
            registered: false,
        }
    }

    fn try_enqueue(&self, kind: u8, payload: Bytes) -> Result<AppendState, WalError> {
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
    /// entry's `next`). Entries of the last commit come from memory.
    pub async fn read(&self, position: Position) -> Result<Entry, WalError> {
        let p = position.0;
        let (start, end, recent) = {
            let st = self.inner.st.borrow();
            (st.start, st.durable_end, st.recent.clone())
        };
        if p < start || p >= end {
            return Err(WalError::OutOfRange {
                position: p,
                start,
                end,
            });
        }
        if let Some(e) = recent.and_then(|b| entry_from_batch(&b, p)) {
            return Ok(e);
        }
        let mut reader = self.reader(position);
        match reader.read_frame().await {
            Some(Ok((kind, payload, next))) if kind != KIND_COMMIT => Ok(Entry {
                position,
                kind,
                payload,
                next: Position(next),
            }),
            Some(Ok(_)) => Err(WalError::Corrupt {
                position: p,
                reason: "position holds a commit marker, not an entry".into(),
            }),
            Some(Err(e)) => Err(e),
            None => Err(WalError::OutOfRange {
                position: p,
                start,
                end,
            }),
        }
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

fn body_bytes_max(cfg: &WalConfig) -> u64 {
    cfg.commit_bytes_max - format::align_up(COMMIT_FRAME_BYTES, FRAME_ALIGN_BYTES)
}

fn has_room(st: &State, cfg: &WalConfig, frame_bytes: u64) -> bool {
    st.queued_bytes == 0 || st.queued_bytes + frame_bytes <= cfg.queue_bytes_max
}

fn enqueue(st: &mut State, cfg: &WalConfig, kind: u8, payload: Bytes) -> (Rc<Batch>, usize) {
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
    let (kind, payload) = batch.entries.borrow()[i].clone();
    let next = position + format::frame_bytes(payload.len() as u32);
    Some(Entry {
        position: Position(position),
        kind,
        payload,
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
/// than their sum. Writes stay strictly sequential; a commit is resolved only
/// after the sync that follows its own write.
async fn run_batcher(weak: Weak<Inner>) {
    let mut unsynced: Option<Written> = None;
    loop {
        let Some(w) = unsynced.take() else {
            let Some((inner, batch)) = next_batch(&weak).await else {
                return;
            };
            unsynced = write_or_fail(&inner, batch).await;
            continue;
        };
        let Some(inner) = weak.upgrade() else {
            w.batch.finish(Err(WalError::Closed));
            return;
        };
        let next = pop_if_no_roll(&inner);
        let Some(batch) = next else {
            let synced = sync(&inner, &w).await;
            finish(&inner, w, synced);
            continue;
        };
        let (synced, written) = futures_join(sync(&inner, &w), write(&inner, &batch)).await;
        let sync_ok = synced.is_ok();
        finish(&inner, w, synced);
        unsynced = match written {
            Ok(next) if sync_ok => Some(next),
            Ok(next) => {
                let p = inner.st.borrow().poisoned.clone().unwrap_or_default();
                finish(&inner, next, Err(WalError::Poisoned(p)));
                None
            }
            Err(e) => {
                batch.finish(Err(e));
                None
            }
        };
    }
}

/// Runs two futures to completion concurrently on this executor.
async fn futures_join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    (
        ra.expect("polled to completion"),
        rb.expect("polled to completion"),
    )
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

/// Pops the next queued batch unless it would start a new segment: a roll
/// waits until everything written before it is synced.
fn pop_if_no_roll(inner: &Rc<Inner>) -> Option<Rc<Batch>> {
    let seg = active(inner);
    let mut st = inner.st.borrow_mut();
    if st.poisoned.is_some() {
        return None;
    }
    let total = commit_total(st.queue.front()?);
    if st.written_end + total > seg.end_max() {
        return None;
    }
    let batch = st.queue.pop_front()?;
    st.queued_bytes -= batch.body_bytes.get();
    st.queued_entries -= batch.entries.borrow().len() as u64;
    admit_waiting(&mut st, &inner.cfg);
    Some(batch)
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

/// Writes one batch after everything written so far (rolling to a new
/// segment when it does not fit); advances `written_end`, not `durable_end`.
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
    let began = Instant::now();
    let (buf_offset, new_tail, buf) = lay_out(inner, &seg, batch, start, total);
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
        batch: batch.clone(),
        seg,
        end: start + total,
        total,
        began,
    })
}

/// Makes a written commit durable. A failed sync poisons the WAL: what the
/// kernel dropped cannot be told apart from what it kept.
async fn sync(inner: &Rc<Inner>, w: &Written) -> Result<(), WalError> {
    if inner.cfg.sync_mode != SyncMode::Fdatasync {
        return Ok(());
    }
    if let Err(e) = w.seg.file.fdatasync().await {
        let err = WalError::glommio("syncing", &w.seg.path, e);
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

/// Builds the aligned buffer of one commit: the kept tail bytes, the commit
/// marker, every frame, zero padding to the block. Records entry positions.
fn lay_out(
    inner: &Inner,
    seg: &Segment,
    batch: &Batch,
    start: u64,
    total: u64,
) -> (u64, Vec<u8>, glommio::io::DmaBuffer) {
    let st = inner.st.borrow();
    let file_start = seg.file_offset(start);
    let aligned = format::align_down(file_start, BLOCK_BYTES);
    let tail_len = (file_start - aligned) as usize;
    assert_eq!(
        st.tail.len(),
        tail_len,
        "tail block out of step with written_end"
    );
    let file_end = file_start + total;
    let mut buf = seg
        .file
        .alloc_dma_buffer((format::align_up(file_end, BLOCK_BYTES) - aligned) as usize);
    let out = buf.as_bytes_mut();
    out[..tail_len].copy_from_slice(&st.tail);
    let entries = batch.entries.borrow();
    let marker = format::commit_payload(entries.len() as u32, batch.body_bytes.get() as u32);
    let mut at = tail_len;
    let mut pos = start;
    let mfb = format::frame_bytes(marker.len() as u32) as usize;
    format::encode_frame(&mut out[at..at + mfb], pos, KIND_COMMIT, &marker);
    at += mfb;
    pos += mfb as u64;
    let mut positions = batch.positions.borrow_mut();
    positions.clear();
    for (kind, payload) in entries.iter() {
        let fb = format::frame_bytes(payload.len() as u32) as usize;
        format::encode_frame(&mut out[at..at + fb], pos, *kind, payload);
        positions.push(pos);
        at += fb;
        pos += fb as u64;
    }
    assert_eq!(pos, start + total);
    out[at..].fill(0);
    let tail_from = (format::align_down(file_end, BLOCK_BYTES) - aligned) as usize;
    let new_tail = out[tail_from..at].to_vec();
    (aligned, new_tail, buf)
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
        let got = recovery::frame_at(window, &seg, p, limit, inner.cfg.entry_bytes_max).await;
        match got {
            Ok((kind, payload, next)) => {
                self.position = next;
                Some(Ok((kind, payload, next)))
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
