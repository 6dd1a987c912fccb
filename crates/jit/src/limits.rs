//! Per-principal limits on what a workload can make the broker do for it:
//! how often it may ask for grants, and how often its requests page the
//! approvers. Pure fixed windows; time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most `max` events per key within `window` of the key's first one.
#[derive(Debug)]
pub(crate) struct PerKey {
    max: u32,
    window: Duration,
    windows: HashMap<String, (Instant, u32)>,
}

/// Beyond this many keys, expired windows are swept.
const SWEEP_AT: usize = 10_000;

impl PerKey {
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            windows: HashMap::new(),
        }
    }

    /// Counts one event for `key`, or says how long until one is allowed.
    pub(crate) fn take(&mut self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.windows.len() >= SWEEP_AT {
            let window = self.window;
            self.windows
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
        }
        let entry = self.windows.entry(key.to_string()).or_insert((now, 0));
        let age = now.saturating_duration_since(entry.0);
        if age >= self.window {
            *entry = (now, 0);
        } else if entry.1 >= self.max {
            return Err(self.window - age);
        }
        entry.1 += 1;
        Ok(())
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "{} within {}",
            self.max,
            crate::duration::describe(self.window)
        )
    }
}

/// Grant requests one principal may make (accepted or refused) per window.
pub const GRANT_REQUESTS: (u32, Duration) = (5, Duration::from_secs(60));
/// Grant requests of one principal announced to approvers by webhook per
/// window; later ones are listed and recorded but page nobody.
pub const ANNOUNCED_REQUESTS: (u32, Duration) = (3, Duration::from_secs(15 * 60));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_refused_past_its_max_until_its_window_ends() {
        let mut limit = PerKey::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(limit.take("bob", t0), Ok(()));
        assert_eq!(limit.take("bob", t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(
            limit.take("bob", t0 + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        assert_eq!(limit.take("carol", t0 + Duration::from_secs(20)), Ok(()));
        assert_eq!(limit.take("bob", t0 + Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn expired_windows_are_swept() {
        let mut limit = PerKey::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..SWEEP_AT {
            let _ = limit.take(&i.to_string(), t0);
        }
        let _ = limit.take("late", t0 + Duration::from_secs(2));
        assert_eq!(limit.windows.len(), 1);
    }
}
