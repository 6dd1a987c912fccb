//! Per-source limits on failed authentication, so one address cannot try
//! tokens as fast as the network allows. Shared by every protocol
//! front-end, so PostgreSQL and SSH listeners refuse alike. Pure: time is
//! passed in.
//!
//! A window opens with an address's first failure and lasts [`WINDOW`];
//! once it holds [`MAX_FAILURES`] the address is refused until it closes.
//! Nothing but time clears it: a successful login from the address does
//! not, or an attacker holding one valid token could interleave it to keep
//! guessing.

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
        self.retry_after(ip, now).is_none()
    }

    /// How long until `ip` may try to authenticate again; `None` when it may now.
    pub fn retry_after(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let window = map.get(&ip)?;
        let age = now.saturating_duration_since(window.started);
        (age < WINDOW && window.failures >= MAX_FAILURES).then(|| WINDOW - age)
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

/// What a refused address is told, and what its refused attempt records, on
/// every protocol.
pub fn lockout_message(ip: IpAddr, retry_after: Duration) -> String {
    // Whole seconds, rounded up, so "0 s" never tells a client to retry too early.
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    format!(
        "too many failed logins from {ip} ({MAX_FAILURES} within {} s); try again in {secs} s",
        WINDOW.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_message_rounds_the_wait_up() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            lockout_message(ip, Duration::from_millis(1)),
            "too many failed logins from 192.0.2.7 (10 within 60 s); try again in 1 s"
        );
        assert!(lockout_message(ip, Duration::from_secs(59)).ends_with("try again in 59 s"));
    }

    fn addr(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn an_address_is_refused_after_too_many_failures_until_the_window_passes() {
        let limit = AuthRateLimit::default();
        let bad = addr("192.0.2.1");
        let other = addr("192.0.2.2");
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

    #[test]
    fn retry_after_counts_down_from_the_first_failure_of_the_window() {
        let limit = AuthRateLimit::default();
        let bad = addr("2001:db8::1");
        let t0 = Instant::now();
        limit.failed(bad, t0);
        let later = t0 + Duration::from_secs(20);
        for _ in 1..MAX_FAILURES {
            assert_eq!(limit.retry_after(bad, later), None);
            limit.failed(bad, later);
        }
        assert_eq!(limit.retry_after(bad, later), Some(Duration::from_secs(40)));
        assert_eq!(
            limit.retry_after(bad, t0 + Duration::from_secs(59)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(limit.retry_after(bad, t0 + WINDOW), None);
    }

    #[test]
    fn failures_spread_over_windows_never_add_up() {
        let limit = AuthRateLimit::default();
        let slow = addr("192.0.2.3");
        let mut now = Instant::now();
        for _ in 0..3 * MAX_FAILURES {
            assert!(limit.allows(slow, now));
            limit.failed(slow, now);
            now += WINDOW / (MAX_FAILURES - 1);
        }
    }

    #[test]
    fn a_clock_reading_from_before_the_window_does_not_panic() {
        let limit = AuthRateLimit::default();
        let bad = addr("192.0.2.4");
        let t0 = Instant::now() + Duration::from_secs(5);
        for _ in 0..MAX_FAILURES {
            limit.failed(bad, t0);
        }
        // Callers read the clock before taking the lock, so a reading can
        // be a little older than the window's start.
        assert_eq!(
            limit.retry_after(bad, t0 - Duration::from_secs(1)),
            Some(WINDOW)
        );
    }

    #[test]
    fn many_addresses_sweep_expired_windows_and_keep_live_ones() {
        let limit = AuthRateLimit::default();
        let old = Instant::now();
        let recent = old + WINDOW;
        let locked = addr("198.51.100.1");
        for _ in 0..MAX_FAILURES {
            limit.failed(locked, recent);
        }
        for i in 0..SWEEP_AT as u32 {
            limit.failed(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), old);
        }
        let now = recent + Duration::from_secs(1);
        limit.failed(addr("198.51.100.2"), now);
        let tracked = limit.failures.lock().map(|m| m.len()).unwrap_or(0);
        assert_eq!(tracked, 2, "expired windows are dropped");
        assert!(
            !limit.allows(locked, now),
            "a live window survives the sweep"
        );
    }
}
