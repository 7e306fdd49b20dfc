//! systemd's service notification protocol (`sd_notify`, `Type=notify`):
//! start-up status, `READY=1` once every listener accepts, `STOPPING=1` on
//! shutdown, and the watchdog (`WatchdogSec=`). Without `NOTIFY_SOCKET`
//! (not started by systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "systemd notification not sent");
    }
}

/// A status line for `systemctl status`.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// The node serves: recovery is done and every listener accepts.
pub fn ready(text: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(text)]);
}

/// The node stops (SIGTERM): draining, then closing the WALs.
pub fn stopping(text: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(text)]);
}

/// How often to tell the watchdog the node is alive (half of
/// `WATCHDOG_USEC`), when systemd watches this process.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// Tells the watchdog the node is alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}
