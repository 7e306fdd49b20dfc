//! Rate-limited warnings: what can repeat per request or per connection is
//! logged at most once per interval, with the count of the repeats that
//! were left out since the last warning (logs grow with events, not load).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The state of one rate-limited warning; core-local.
#[derive(Debug)]
pub struct WarnLimiter {
    interval: Duration,
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl WarnLimiter {
    pub const fn new(interval: Duration) -> WarnLimiter {
        WarnLimiter {
            interval,
            last: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    /// `Some(repeats left out since the last warning)` when a warning is
    /// due now; `None` (and this one counted as left out) otherwise.
    pub fn due(&self) -> Option<u64> {
        let now = Instant::now();
        let quiet = self
            .last
            .get()
            .is_some_and(|t| now.duration_since(t) < self.interval);
        if quiet {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.last.set(Some(now));
        Some(self.suppressed.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_with_the_repeats_counted() {
        let w = WarnLimiter::new(Duration::from_secs(3600));
        assert_eq!(w.due(), Some(0));
        assert_eq!(w.due(), None);
        assert_eq!(w.due(), None);
        w.last.set(Some(Instant::now() - Duration::from_secs(3601)));
        assert_eq!(w.due(), Some(2));
    }
}
