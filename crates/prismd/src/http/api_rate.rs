//! The per-caller rate limit of `/api` (`--api-rate-limit`): each member or service account
//! may make so many requests a second, with a burst of one second's worth, counted in this
//! process's memory (each replica counts its own).
//!
//! GraphQL's cost limit bounds one request; this bounds how many a caller makes, so that one
//! runaway pipeline cannot take the database from everyone else.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Callers remembered before idle ones are forgotten (a full bucket holds no information).
const PRUNE_ABOVE_CALLERS: usize = 10_000;
/// Least time between two prunings.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// The limiter, or nothing when the limit is off (`--api-rate-limit 0`).
pub struct ApiRate {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Milliseconds after `epoch` of the last pruning.
    pruned_ms: AtomicU64,
    epoch: Instant,
}

impl ApiRate {
    /// `per_second` requests a second per caller; 0 turns the limit off.
    pub fn new(per_second: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(per_second)
                .map(|rate| RateLimiter::keyed(Quota::per_second(rate))),
            pruned_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// `Err(wait)` when `caller` has used up its requests; `wait` is how long until the next
    /// one is let through.
    pub fn check(&self, caller: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let outcome = limiter
            .check_key(&caller.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()));
        self.prune(limiter);
        outcome
    }

    /// Forgets callers whose allowance is full again, at most once per [`PRUNE_EVERY`] and
    /// only when many are remembered, so memory stays bounded by the callers of the last
    /// seconds.
    fn prune(&self, limiter: &DefaultKeyedRateLimiter<String>) {
        if limiter.len() <= PRUNE_ABOVE_CALLERS {
            return;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.pruned_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= PRUNE_EVERY.as_millis() as u64;
        if due
            && self
                .pruned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_has_its_own_allowance() {
        let rate = ApiRate::new(5);
        for _ in 0..5 {
            assert!(rate.check("alice").is_ok());
        }
        let wait = rate.check("alice").err();
        assert!(
            wait.is_some_and(|wait| wait > Duration::ZERO && wait <= Duration::from_millis(200)),
            "the sixth request within a second waits about a fifth of a second: {wait:?}"
        );
        assert!(rate.check("bob").is_ok(), "another caller is not affected");
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let rate = ApiRate::new(0);
        for _ in 0..10_000 {
            assert!(rate.check("alice").is_ok());
        }
    }
}
