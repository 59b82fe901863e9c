//! A circuit breaker in front of the database, so an outage costs clients milliseconds rather
//! than a connection timeout each.
//!
//! Without it, every request during a PostgreSQL outage waits out the whole pool acquire
//! timeout (`--db-acquire-timeout`) while sqlx retries connecting, and only then fails. With
//! it:
//!
//! * **Closed** (normal): requests go to the database. A request that fails with a
//!   connection-class error ([`StoreError::Unreachable`]) opens the circuit.
//! * **Open**: every request fails at once with [`StoreError::CircuitOpen`] (HTTP 503 with
//!   `Retry-After`), and one background probe asks the database again and
//!   again, a short pause apart, each try bounded by a timeout.
//! * As soon as the probe gets any answer from the database, the circuit closes and requests
//!   go through again. Nobody has to restart anything.
//!
//! Requests that were already waiting for a connection when the outage began still wait up
//! to the acquire timeout; they are not cancelled, because one of them may be a write whose
//! commit is under way. When they fail after the circuit has closed again, they do not reopen
//! it (each request remembers the breaker's generation it started in).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::store::StoreError;

/// How the probe behaves while the circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Pause between two probes.
    pub probe_pause: Duration,
    /// Longest one probe may take before it counts as "still unreachable".
    pub probe_timeout: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            probe_pause: Duration::from_millis(250),
            probe_timeout: Duration::from_secs(10),
        }
    }
}

type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;
type Probe = Box<dyn Fn() -> ProbeFuture + Send + Sync>;

/// The breaker's state, shared with its probe task.
struct Shared {
    open: AtomicBool,
    /// Moves on every time the circuit closes; a failure of a request that started in an
    /// earlier generation says nothing about the database now.
    generation: AtomicU64,
    /// Requests turned away while open, for metrics: the one sign that the breaker, not a
    /// slow database, answered them.
    rejections: AtomicU64,
    stopped: AtomicBool,
    stop: Notify,
    probe: Probe,
    settings: BreakerSettings,
}

/// Opens on connection-class failures, fails fast while open, closes when a probe gets an
/// answer. Cheap to clone.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl CircuitBreaker {
    /// `probe` asks the database once; it counts as an answer unless it fails with a
    /// connection-class error ([`StoreError::is_unreachable`]).
    pub fn new<F, Fut>(probe: F, settings: BreakerSettings) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        let probe: Probe = Box::new(move || Box::pin(probe()));
        Self {
            shared: Arc::new(Shared {
                open: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                rejections: AtomicU64::new(0),
                stopped: AtomicBool::new(false),
                stop: Notify::new(),
                probe,
                settings,
            }),
        }
    }

    pub fn is_open(&self) -> bool {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Requests refused at once since the start because the circuit was open.
    pub fn rejections(&self) -> u64 {
        self.shared.rejections.load(Ordering::Relaxed)
    }

    /// Lets a request through (returning the generation to hand to [`Self::observe`]), or
    /// refuses it at once while the circuit is open.
    pub fn admit(&self) -> Result<u64, StoreError> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if self.is_open() {
            self.shared.rejections.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::CircuitOpen);
        }
        Ok(generation)
    }

    /// Looks at a request's failure: a connection-class one opens the circuit (unless the
    /// circuit has closed again since the request was admitted) and starts the probe.
    pub fn observe(&self, generation: u64, err: &StoreError) {
        if !matches!(err, StoreError::Unreachable(_)) {
            return;
        }
        if self.shared.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if self.shared.stopped.load(Ordering::Acquire) {
            return;
        }
        if self.shared.open.swap(true, Ordering::AcqRel) {
            return; // already open, and its probe is running
        }
        tracing::warn!(
            error = %err,
            "database unreachable: answering 503 at once until it answers again (circuit open)"
        );
        tokio::spawn(probe_until_answer(self.shared.clone()));
    }

    /// Ends the probe (the store is closing). The circuit stays as it is.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.stop.notify_waiters();
    }
}

/// The one probe of an open circuit: asks the database until it answers, then closes the
/// circuit.
async fn probe_until_answer(shared: Arc<Shared>) {
    let opened = Instant::now();
    let mut attempts: u64 = 0;
    loop {
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        attempts += 1;
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(shared.settings.probe_timeout, (shared.probe)()) => outcome,
            () = shared.stop.notified() => return,
        };
        match outcome {
            // A read-only standby, a permission problem...: the database answers, so requests
            // may go to it again and get their own (non-outage) errors.
            Ok(Ok(())) => break,
            Ok(Err(err)) if !err.is_unreachable() => break,
            Ok(Err(err)) => tracing::debug!(error = %err, attempts, "database still unreachable"),
            Err(_) => tracing::debug!(attempts, "database probe timed out"),
        }
        tokio::select! {
            () = tokio::time::sleep(shared.settings.probe_pause) => {}
            () = shared.stop.notified() => return,
        }
    }
    shared.generation.fetch_add(1, Ordering::AcqRel);
    shared.open.store(false, Ordering::Release);
    let outage_ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        outage_ms,
        attempts,
        "database answers again: circuit closed"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    // Every test runs on tokio's paused clock (`start_paused`): a sleep, the probe's pause and
    // its timeout take no real time, and the clock jumps to the next timer only when every
    // task waits. So the probe loop takes the same steps on every run however loaded the
    // machine is, and the tests can bound how many probes a span of time holds, which real
    // sleeps could only guess at. Nothing here does real I/O.

    /// How long the fake database takes to answer a probe.
    const PROBE_TAKES: Duration = Duration::from_millis(2);
    /// The pause between two probes.
    const PAUSE: Duration = Duration::from_millis(5);

    /// A pretend database: up or down, counting probes (and how many run at once).
    #[derive(Default)]
    struct FakeDb {
        up: AtomicBool,
        probes: AtomicUsize,
        running: AtomicUsize,
        most_running: AtomicUsize,
    }

    fn breaker(db: &Arc<FakeDb>) -> CircuitBreaker {
        let db = db.clone();
        CircuitBreaker::new(
            move || {
                let db = db.clone();
                async move {
                    db.probes.fetch_add(1, Ordering::SeqCst);
                    let now = db.running.fetch_add(1, Ordering::SeqCst) + 1;
                    db.most_running.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(PROBE_TAKES).await;
                    db.running.fetch_sub(1, Ordering::SeqCst);
                    if db.up.load(Ordering::SeqCst) {
                        Ok(())
                    } else {
                        Err(unreachable())
                    }
                }
            },
            BreakerSettings {
                probe_pause: PAUSE,
                probe_timeout: Duration::from_secs(5),
            },
        )
    }

    fn unreachable() -> StoreError {
        StoreError::Unreachable(sqlx::Error::PoolTimedOut)
    }

    /// How long (on the paused clock) the circuit takes to close, looking every millisecond;
    /// `None` if it is still open after `limit`.
    async fn time_to_close(breaker: &CircuitBreaker, limit: Duration) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        while breaker.is_open() {
            if start.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Some(start.elapsed())
    }

    /// How many probes start within `span` of the circuit opening when each takes `each` and
    /// the next starts a pause after it ends: the first, and one per probe and pause that fit
    /// (one fewer allowed, as the clock moves in whole milliseconds). Fewer: the probe waits
    /// longer than its pause, or gives up; more: it does not pause, or does not wait for an
    /// answer or the timeout.
    fn probes_in(span: Duration, each: Duration) -> std::ops::RangeInclusive<usize> {
        let cycles = span.as_millis() / (PAUSE + each).as_millis();
        let cycles = usize::try_from(cycles).unwrap_or(usize::MAX);
        cycles..=cycles.saturating_add(1)
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[tokio::test(start_paused = true)]
    async fn opens_on_unreachable_fails_fast_and_closes_when_the_database_answers() -> TestResult {
        let db = Arc::new(FakeDb::default());
        let breaker = breaker(&db);
        let generation = breaker.admit()?;

        // Errors where the database answered leave it closed.
        breaker.observe(generation, &StoreError::Conflict("x"));
        breaker.observe(generation, &StoreError::Database(sqlx::Error::RowNotFound));
        assert!(!breaker.is_open());

        // Many requests failing at once open it once, with one probe.
        for _ in 0..20 {
            breaker.observe(generation, &unreachable());
        }
        assert!(breaker.is_open());
        assert_eq!(
            breaker.rejections(),
            0,
            "nothing was turned away while closed"
        );
        assert!(matches!(breaker.admit(), Err(StoreError::CircuitOpen)));
        assert_eq!(breaker.rejections(), 1);
        let down_for = Duration::from_millis(60);
        tokio::time::sleep(down_for).await;
        assert!(breaker.is_open(), "still down: stays open");
        let probes = db.probes.load(Ordering::SeqCst);
        assert!(
            probes_in(down_for, PROBE_TAKES).contains(&probes),
            "{probes} probes in {down_for:?}: the probe keeps asking, a pause apart"
        );
        assert_eq!(
            db.most_running.load(Ordering::SeqCst),
            1,
            "one probe at a time"
        );

        db.up.store(true, Ordering::SeqCst);
        let took = time_to_close(&breaker, Duration::from_secs(1))
            .await
            .ok_or("stays open after the database answers")?;
        // The probe under way when the database came back answered "down"; the next one,
        // after a pause, gets the answer, and the circuit closes on it (the clock moves in
        // whole milliseconds: one more for rounding).
        assert!(
            took <= PAUSE + PROBE_TAKES + Duration::from_millis(1),
            "closed {took:?} after the database came back"
        );
        let probes = db.probes.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            db.probes.load(Ordering::SeqCst),
            probes,
            "no probing while closed"
        );

        // A request admitted before the circuit closed, failing late, does not reopen it.
        breaker.observe(generation, &unreachable());
        assert!(!breaker.is_open());
        // A fresh failure does.
        let fresh = breaker.admit()?;
        db.up.store(false, Ordering::SeqCst);
        breaker.observe(fresh, &unreachable());
        assert!(breaker.is_open());
        db.up.store(true, Ordering::SeqCst);
        assert!(
            time_to_close(&breaker, Duration::from_secs(1))
                .await
                .is_some()
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_is_an_error_still_closes_the_circuit() -> TestResult {
        let breaker = CircuitBreaker::new(
            || async { Err(StoreError::ReadOnly) },
            BreakerSettings {
                probe_pause: PAUSE,
                probe_timeout: Duration::from_secs(5),
            },
        );
        let generation = breaker.admit()?;
        breaker.observe(generation, &unreachable());
        let took = time_to_close(&breaker, Duration::from_secs(1))
            .await
            .ok_or("an error from the database kept the circuit open")?;
        assert!(took < PAUSE, "not closed by the first probe: {took:?}");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_times_out_and_stop_ends_the_probing() -> TestResult {
        let probes = Arc::new(AtomicUsize::new(0));
        let counted = probes.clone();
        let timeout = Duration::from_millis(10);
        let breaker = CircuitBreaker::new(
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<Result<(), StoreError>>()
            },
            BreakerSettings {
                probe_pause: PAUSE,
                probe_timeout: timeout,
            },
        );
        let generation = breaker.admit()?;
        breaker.observe(generation, &unreachable());
        let hanging_for = Duration::from_millis(100);
        tokio::time::sleep(hanging_for).await;
        let tried = probes.load(Ordering::SeqCst);
        assert!(
            probes_in(hanging_for, timeout).contains(&tried),
            "{tried} probes in {hanging_for:?}: each times out and is retried a pause later"
        );
        // The probe is parked in its timeout or its pause, both of which wait for the stop
        // too: not one more probe after it.
        breaker.stop();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(probes.load(Ordering::SeqCst), tried, "stopped");
        assert!(
            breaker.is_open(),
            "stopping does not pretend the database is back"
        );
        Ok(())
    }
}
