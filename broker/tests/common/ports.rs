//! Free loopback ports for brokers that tests start.
//!
//! A port the kernel picks with `bind(:0)` comes from the ephemeral range,
//! the same range it picks the local ports of outgoing connections from. Once
//! released, such a port can be taken by any client connection of a parallel
//! test before the broker binds it, and the broker fails with "Address
//! already in use". So ports are taken below the ephemeral range, where the
//! kernel never picks one by itself, walking from an offset that depends on
//! the process so that test binaries run side by side start apart.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const FIRST: u32 = 20_000;

/// The low end of the kernel's ephemeral range (Linux's default when the
/// setting cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A loopback port that nothing holds now and that the kernel does not hand
/// to outgoing connections; each call in a process gives another one.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low();
    assert!(
        low > FIRST + 1_000,
        "the ephemeral port range starts at {low}: too low to keep test ports out of it"
    );
    let span = low - FIRST;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (start + step) % span;
        let port = u16::try_from(port).expect("ports are below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{low}");
}
