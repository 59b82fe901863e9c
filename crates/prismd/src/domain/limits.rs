//! A small in-process attempt limiter: at most `max` failures per key within a window, then
//! refusals until the window has passed. Used for device user-code entry; the hardening work
//! extends it to logins and shares it across replicas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct AttemptLimiter {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl AttemptLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(seconds to wait)` when `key` has used up its failures.
    pub fn blocked_for(&self, key: &str) -> Option<u64> {
        let failures = self.failures.lock().ok()?;
        let (count, since) = failures.get(key)?;
        let elapsed = since.elapsed();
        (*count >= self.max_failures && elapsed < self.window)
            .then(|| (self.window - elapsed).as_secs().max(1))
    }

    /// Counts a failure for `key`.
    pub fn fail(&self, key: &str) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if failures.len() > 100_000 {
            // Bounded memory under a flood from many addresses: forget expired entries.
            let window = self.window;
            failures.retain(|_, (_, since)| since.elapsed() < window);
        }
        let entry = failures
            .entry(key.to_owned())
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_allowed_failures() {
        let limiter = AttemptLimiter::new(2, Duration::from_secs(60));
        assert_eq!(limiter.blocked_for("a"), None);
        limiter.fail("a");
        assert_eq!(limiter.blocked_for("a"), None);
        limiter.fail("a");
        assert!(limiter.blocked_for("a").is_some());
        assert_eq!(
            limiter.blocked_for("b"),
            None,
            "other keys are not affected"
        );
    }
}
