//! Per-source limits on failed authentication, so one address cannot try
//! tokens as fast as the network allows. Pure: time is passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per address within one window before it is refused.
pub const MAX_FAILURES: u32 = 10;
/// How long failures are remembered.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Beyond this many tracked addresses, expired entries are swept.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Default)]
pub struct AuthRateLimit {
    failures: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl AuthRateLimit {
    /// Whether `ip` may try to authenticate now.
    pub fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip) {
            Some(w) if now.duration_since(w.started) < WINDOW => w.failures < MAX_FAILURES,
            _ => true,
        }
    }

    /// Counts one failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT {
            map.retain(|_, w| now.duration_since(w.started) < WINDOW);
        }
        let window = map.entry(ip).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_too_many_failures_until_the_window_passes() {
        let limit = AuthRateLimit::default();
        let bad: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert!(limit.allows(bad, t0), "attempt {i}");
            limit.failed(bad, t0);
        }
        assert!(!limit.allows(bad, t0));
        assert!(!limit.allows(bad, t0 + WINDOW - Duration::from_secs(1)));
        assert!(limit.allows(other, t0), "other addresses are unaffected");
        assert!(limit.allows(bad, t0 + WINDOW));
        limit.failed(bad, t0 + WINDOW);
        assert!(limit.allows(bad, t0 + WINDOW), "a new window starts afresh");
    }
}
