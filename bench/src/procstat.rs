//! Memory and CPU of another process (the broker under test), read from
//! Linux's /proc: `VmRSS` and `VmHWM` (peak RSS) from `/proc/PID/status`,
//! `utime + stime` from `/proc/PID/stat`.
//!
//! One background thread samples RSS at a fixed interval to catch the peak
//! between phase boundaries; it is bounded in samples and stops on request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Interval of the background RSS sampler.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// The sampler stops by itself after this many samples (about 7 hours).
const SAMPLES_MAX: u64 = 100_000;

#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub cpu_ticks: u64,
    pub at: Instant,
}

impl ProcSample {
    /// CPU seconds used between `earlier` and `self`.
    pub fn cpu_seconds_since(&self, earlier: &ProcSample) -> f64 {
        self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / clock_ticks_per_sec() as f64
    }

    /// CPU use between `earlier` and `self`, in percent of one core.
    pub fn cpu_percent_since(&self, earlier: &ProcSample) -> f64 {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64();
        if seconds > 0.0 {
            100.0 * self.cpu_seconds_since(earlier) / seconds
        } else {
            0.0
        }
    }
}

pub fn sample(pid: i32) -> anyhow::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let (rss_kb, hwm_kb) = parse_status(&status).context("no VmRSS/VmHWM in status")?;
    let cpu_ticks = parse_stat_cpu_ticks(&stat).context("malformed stat")?;
    Ok(ProcSample {
        rss_kb,
        hwm_kb,
        cpu_ticks,
        at: Instant::now(),
    })
}

/// `(VmRSS, VmHWM)` in kB.
fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// `utime + stime` (fields 14 and 15). The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): field N is at index N - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Highest RSS seen by the background sampler.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sampled {
    pub samples: u64,
    pub rss_kb_max: u64,
    pub failures: u64,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Sampled>,
}

impl Sampler {
    pub fn start(pid: i32) -> anyhow::Result<Sampler> {
        if sample(pid).is_err() {
            bail!("process {pid} cannot be sampled (no such process, or /proc unreadable)");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // A client-side sampler thread (the bench owns no shard cores); it
        // stops when `stop` is set.
        let handle = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || sample_loop(pid, &flag))
            .context("starting the sampler thread")?;
        Ok(Sampler { stop, handle })
    }

    pub fn finish(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

fn sample_loop(pid: i32, stop: &AtomicBool) -> Sampled {
    let mut sampled = Sampled::default();
    while !stop.load(Ordering::Relaxed) && sampled.samples + sampled.failures < SAMPLES_MAX {
        match sample(pid) {
            Ok(s) => {
                sampled.samples += 1;
                sampled.rss_kb_max = sampled.rss_kb_max.max(s.rss_kb);
            }
            Err(_) => sampled.failures += 1,
        }
        std::thread::sleep(SAMPLE_INTERVAL);
    }
    sampled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let text = "Name:\tsluice\nVmPeak:\t  10 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(parse_status(text), Some((1024, 2048)));
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn parses_stat_with_odd_command_names() {
        let text = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(text), Some(12));
    }

    #[test]
    fn samples_this_process() {
        let me = sample(std::process::id() as i32).expect("own /proc");
        assert!(me.rss_kb > 0 && me.hwm_kb >= me.rss_kb);
        let sampler = Sampler::start(std::process::id() as i32).expect("sampler");
        std::thread::sleep(Duration::from_millis(300));
        let sampled = sampler.finish();
        assert!(sampled.samples >= 1 && sampled.rss_kb_max > 0);
    }
}
