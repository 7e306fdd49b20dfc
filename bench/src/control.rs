//! Run control: the Ctrl-C stop flag, deadlines and the once-a-second
//! progress line on stderr.
//!
//! Invariant: every scenario loop checks `stop_requested()` and a deadline,
//! so a run ends by itself even when the broker never answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler: the first press asks every loop to stop and
/// report what it measured; the second exits at once.
pub fn install_ctrlc() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("stopping: finishing up and reporting what was measured (Ctrl-C again to quit)");
    })?;
    Ok(())
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Sleeps up to `total`, waking early when a stop is requested; returns the
/// time actually slept.
pub fn sleep_interruptible(total: Duration) -> Duration {
    const SLICE: Duration = Duration::from_millis(50);
    let start = Instant::now();
    while !stop_requested() {
        let left = total.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(SLICE));
    }
    start.elapsed()
}

/// Prints one progress line per second on stderr with the rate of a counter.
pub struct Progress {
    label: &'static str,
    origin: Instant,
    next_at: Instant,
    count_last: u64,
    at_last: Instant,
}

impl Progress {
    pub fn new(label: &'static str, origin: Instant) -> Progress {
        let now = Instant::now();
        Progress {
            label,
            origin,
            next_at: now + Duration::from_secs(1),
            count_last: 0,
            at_last: now,
        }
    }

    /// Cheap when not due: one clock read. `detail` runs only when a line is
    /// printed.
    pub fn tick(&mut self, count: u64, detail: impl FnOnce() -> String) {
        let now = Instant::now();
        if now < self.next_at {
            return;
        }
        let elapsed = now.duration_since(self.at_last).as_secs_f64().max(1e-9);
        let rate = count.saturating_sub(self.count_last) as f64 / elapsed;
        eprintln!(
            "[{:>7.1}s] {} {:>10.0}/s, {} {}",
            now.duration_since(self.origin).as_secs_f64(),
            self.label,
            rate,
            count,
            detail()
        );
        self.count_last = count;
        self.at_last = now;
        self.next_at = now + Duration::from_secs(1);
    }
}
