//! Every deadline and every long-poll waiter of one shard, in ONE structure:
//! waiters by id, a deadline-ordered set, and per-partition lists of waiter
//! ids. One task (`run_deadlines`) sleeps on one glommio timer until the
//! earliest deadline; when nothing waits it is parked with no timer at all.
//!
//! A waiter is a `WaitSlot` (fired flag + waker). It is fired by growth of a
//! partition it watches (`notify`), by its deadline, or by cancellation.
//! `WaitGuard` unregisters it on drop, so a dropped request leaves nothing.
//!
//! Lives on one shard; `Rc`/`RefCell`, never borrowed across an await.
//! Bound: `waiters_max` registered waiters; more are refused and counted.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::entry::PartitionKey;

/// A wake-up cell shared by a waiting request and the structure.
#[derive(Default)]
pub struct WaitSlot {
    fired: Cell<bool>,
    cancelled: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl WaitSlot {
    pub fn new() -> Rc<WaitSlot> {
        Rc::new(WaitSlot::default())
    }

    pub fn fire(&self) {
        self.fired.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Fires and remembers that the request should stop waiting.
    pub fn cancel(&self) {
        self.cancelled.set(true);
        self.fire();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.get()
    }

    /// Resolves once fired; clears the flag so the slot can wait again.
    pub fn wait(self: &Rc<Self>) -> SlotWait {
        SlotWait { slot: self.clone() }
    }
}

pub struct SlotWait {
    slot: Rc<WaitSlot>,
}

impl Future for SlotWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot.fired.replace(false) {
            return Poll::Ready(());
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

struct Registered {
    slot: Rc<WaitSlot>,
    keys: Vec<PartitionKey>,
    deadline: Instant,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    by_id: HashMap<u64, Registered>,
    by_deadline: BTreeSet<(Instant, u64)>,
    by_partition: HashMap<PartitionKey, Vec<u64>>,
    /// The deadline the timer task sleeps until, if any.
    armed: Option<Instant>,
    rearm: bool,
    timer_waker: Option<Waker>,
    refused: u64,
    expired: u64,
    /// Registered sleeps (`sleep_until`: no partition watched), which are
    /// not long-poll waiters.
    sleeps: u64,
}

pub struct Waiters {
    inner: RefCell<Inner>,
    waiters_max: usize,
    /// Told of every growth too (the search indexer's queue).
    growth_hook: RefCell<Option<Rc<dyn Fn(&PartitionKey)>>>,
}

/// Counters of the structure, for `Shard::stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitersStats {
    /// Long-poll waiters (watching partitions).
    pub waiting: u64,
    /// Task sleeps (`sleep_until`: group and retention deadlines).
    pub sleeps: u64,
    pub refused: u64,
    pub expired: u64,
}

impl Waiters {
    pub fn new(waiters_max: usize) -> Rc<Waiters> {
        Rc::new(Waiters {
            inner: RefCell::new(Inner::default()),
            waiters_max,
            growth_hook: RefCell::new(None),
        })
    }

    /// Calls `hook` on every `notify`, before the waiters.
    pub fn on_growth(&self, hook: Rc<dyn Fn(&PartitionKey)>) {
        *self.growth_hook.borrow_mut() = Some(hook);
    }

    /// Registers `slot` to be fired by growth of any of `keys` or at
    /// `deadline`. `None` when `waiters_max` waiters are already registered.
    pub fn register(
        self: &Rc<Self>,
        slot: &Rc<WaitSlot>,
        keys: Vec<PartitionKey>,
        deadline: Instant,
    ) -> Option<WaitGuard> {
        let mut st = self.inner.borrow_mut();
        if st.by_id.len() >= self.waiters_max {
            st.refused += 1;
            return None;
        }
        let id = st.next_id;
        st.next_id += 1;
        for k in &keys {
            st.by_partition.entry(*k).or_default().push(id);
        }
        if keys.is_empty() {
            st.sleeps += 1;
        }
        st.by_deadline.insert((deadline, id));
        st.by_id.insert(
            id,
            Registered {
                slot: slot.clone(),
                keys,
                deadline,
            },
        );
        if st.armed.map_or(true, |armed| deadline < armed) {
            st.rearm = true;
            if let Some(w) = st.timer_waker.take() {
                w.wake();
            }
        }
        Some(WaitGuard {
            waiters: self.clone(),
            id,
        })
    }

    /// A partition grew (or went away): fire everything that watches it.
    pub fn notify(&self, key: &PartitionKey) {
        if let Some(hook) = self.growth_hook.borrow().as_ref() {
            hook(key);
        }
        let st = self.inner.borrow();
        let Some(ids) = st.by_partition.get(key) else {
            return;
        };
        for id in ids {
            if let Some(r) = st.by_id.get(id) {
                r.slot.fire();
            }
        }
    }

    fn unregister(&self, id: u64) {
        let mut st = self.inner.borrow_mut();
        let Some(r) = st.by_id.remove(&id) else {
            return;
        };
        st.by_deadline.remove(&(r.deadline, id));
        if r.keys.is_empty() {
            st.sleeps -= 1;
        }
        for k in &r.keys {
            if let Some(ids) = st.by_partition.get_mut(k) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    st.by_partition.remove(k);
                }
            }
        }
    }

    /// Fires every waiter whose deadline passed; returns the next deadline.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut st = self.inner.borrow_mut();
        while let Some(&(deadline, id)) = st.by_deadline.first() {
            if deadline > now {
                st.armed = Some(deadline);
                return Some(deadline);
            }
            st.by_deadline.pop_first();
            st.expired += 1;
            if let Some(r) = st.by_id.get(&id) {
                r.slot.fire();
            }
        }
        st.armed = None;
        None
    }

    pub fn stats(&self) -> WaitersStats {
        let st = self.inner.borrow();
        WaitersStats {
            waiting: st.by_id.len() as u64 - st.sleeps,
            sleeps: st.sleeps,
            refused: st.refused,
            expired: st.expired,
        }
    }
}

/// Unregisters its waiter when dropped.
pub struct WaitGuard {
    waiters: Rc<Waiters>,
    id: u64,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.waiters.unregister(self.id);
    }
}

/// Resolves when a waiter registers a deadline earlier than the armed one.
struct Rearm<'a> {
    waiters: &'a Waiters,
}

impl Future for Rearm<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.waiters.inner.borrow_mut();
        if std::mem::take(&mut st.rearm) {
            return Poll::Ready(());
        }
        st.timer_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The shard's one deadline task: sleeps until the earliest deadline (one
/// timer), fires what expired, and parks when nothing waits.
pub async fn run_deadlines(waiters: Rc<Waiters>) {
    loop {
        let next = waiters.expire(Instant::now());
        waiters.inner.borrow_mut().rearm = false;
        match next {
            None => Rearm { waiters: &waiters }.await,
            Some(deadline) => {
                let dur = deadline.saturating_duration_since(Instant::now());
                let timer = glommio::timer::Timer::new(dur);
                let rearm = Rearm { waiters: &waiters };
                futures::future::select(timer, std::pin::pin!(rearm)).await;
            }
        }
    }
}

/// Sleeps until `deadline` using the shard's deadline structure (no timer
/// of its own). When the structure is full (counted in `refused`) it falls
/// back to a timer of its own; returns false then.
pub async fn sleep_until(waiters: &Rc<Waiters>, deadline: Instant) -> bool {
    let slot = WaitSlot::new();
    let Some(_guard) = waiters.register(&slot, Vec::new(), deadline) else {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        return false;
    };
    while Instant::now() < deadline {
        slot.wait().await;
    }
    true
}

impl Waiters {
    /// Fires every registered waiter (shutdown).
    pub fn fire_all(&self) {
        for r in self.inner.borrow().by_id.values() {
            r.slot.fire();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(p: u32) -> PartitionKey {
        PartitionKey {
            topic_id: [1; 16],
            partition: p,
        }
    }

    #[test]
    fn notify_fires_only_watchers_and_guard_unregisters() {
        let w = Waiters::new(2);
        let far = Instant::now() + Duration::from_secs(60);
        let a = WaitSlot::new();
        let b = WaitSlot::new();
        let ga = w.register(&a, vec![key(0), key(1)], far).expect("room");
        let gb = w.register(&b, vec![key(2)], far).expect("room");
        assert!(
            w.register(&WaitSlot::new(), vec![], far).is_none(),
            "waiters_max"
        );
        w.notify(&key(1));
        assert!(a.fired.get() && !b.fired.get());
        drop(ga);
        drop(gb);
        assert_eq!(
            w.stats(),
            WaitersStats {
                waiting: 0,
                sleeps: 0,
                refused: 1,
                expired: 0
            }
        );
        assert!(w.inner.borrow().by_partition.is_empty());
        assert!(w.inner.borrow().by_deadline.is_empty());
    }

    #[test]
    fn expire_fires_in_deadline_order() {
        let w = Waiters::new(10);
        let now = Instant::now();
        let a = WaitSlot::new();
        let b = WaitSlot::new();
        let _ga = w
            .register(&a, vec![], now + Duration::from_millis(5))
            .expect("room");
        let _gb = w
            .register(&b, vec![], now + Duration::from_millis(50))
            .expect("room");
        assert_eq!(
            w.expire(now + Duration::from_millis(10)),
            Some(now + Duration::from_millis(50))
        );
        assert!(a.fired.get() && !b.fired.get());
        assert_eq!(w.expire(now + Duration::from_millis(60)), None);
        assert!(b.fired.get());
    }

    #[test]
    fn deadline_task_wakes_sleepers_with_one_timer() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let w = Waiters::new(10);
                let task = glommio::spawn_local(run_deadlines(w.clone()));
                let t0 = Instant::now();
                let far = sleep_until(&w, t0 + Duration::from_millis(200));
                let near = sleep_until(&w, t0 + Duration::from_millis(20));
                let (_, ok) = futures::future::join(far, near).await;
                assert!(ok);
                assert!(t0.elapsed() >= Duration::from_millis(200));
                assert_eq!(w.stats().waiting, 0);
                task.cancel().await;
            })
            .expect("executor")
            .join()
            .expect("join");
    }
}
