//! Background cleanup: every interval, delete expired codes, sessions and invitations, dead
//! refresh tokens past their grace period, audit events past their retention and signing keys
//! that verify nothing any more. Small batches on an index, each its own short statement,
//! with a pause between them so the hot path's writes (SQLite has one writer) never wait
//! long; on PostgreSQL one replica at a time (an advisory lock; the others skip the round).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{DomainError, now_ms};
use crate::store::{Garbage, Store};
use crate::tokens::RetiredKeyWindow;

/// Rows per delete statement.
pub const BATCH_SIZE: i64 = 500;
/// Pause between two batches, so waiting writers get the database in between.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// How long what is kept.
#[derive(Debug, Clone, Copy)]
pub struct CleanupPolicy {
    /// Time between rounds.
    pub interval: Duration,
    /// How long a dead refresh token (revoked, of an older epoch, of a removed user) and a
    /// redeemed authorization code are kept, so that a dead token still gets the precise
    /// "revoked" answer and a replayed code still revokes what it issued.
    pub dead_token_retention: Duration,
    /// How long audit events are kept.
    pub audit_retention: Duration,
    /// How long retired signing keys keep verifying.
    pub key_window: RetiredKeyWindow,
    /// How long a failure counter matters after its window started or its lock ended: the
    /// longest limit window (an older row counts the same as no row).
    pub attempt_retention: Duration,
}

impl CleanupPolicy {
    /// Rows of `kind` older than this (milliseconds) are garbage at `now`.
    pub fn cutoff(&self, kind: Garbage, now: i64) -> i64 {
        let before = |retention: Duration| {
            now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX))
        };
        match kind {
            Garbage::UnusedAuthorizationCodes
            | Garbage::DeviceCodes
            | Garbage::BrowserSessions
            | Garbage::ExpiredInvitations
            | Garbage::SpentInvitations
            | Garbage::ExpiredPasswordResets
            | Garbage::SpentPasswordResets => now,
            Garbage::AuthorizationCodes
            | Garbage::RevokedRefreshTokens
            | Garbage::StaleEpochRefreshTokens
            | Garbage::ExpiredRefreshTokens => before(self.dead_token_retention),
            Garbage::AuditEvents => before(self.audit_retention),
            // Past its expiry and the clock skew an OIDC token is refused unread.
            Garbage::SpentOidcTokens => before(Duration::from_secs(120)),
            // Their access tokens expired with them (and are refused by their own `exp`).
            Garbage::ExpiredKeylessSessions => now,
            Garbage::RetiredSigningKeys => self.key_window.expired_before(now),
            Garbage::AttemptCounters => before(self.attempt_retention),
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundOutcome {
    /// Another replica holds the cleanup lock.
    Skipped,
    /// Rows deleted, by kind (kinds with none left out).
    Cleaned(Vec<(Garbage, u64)>),
}

/// Runs a round every `policy.interval` (the first one interval after the start) until
/// `stopped` changes. A failed round (database down) is logged; the next one tries again.
/// The background task's entry: it holds the store for as long as the server runs and does
/// each round through [`Cleanup`].
pub async fn run_periodically(
    store: Arc<dyn Store>,
    policy: CleanupPolicy,
    mut stopped: watch::Receiver<bool>,
) {
    let start = tokio::time::Instant::now() + policy.interval;
    let mut ticker = tokio::time::interval_at(start, policy.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        match Cleanup::new(store.as_ref())
            .run_round(&policy, now_ms(), &stopped)
            .await
        {
            Ok(RoundOutcome::Skipped) => {
                tracing::debug!("cleanup skipped: another replica is cleaning up");
            }
            Ok(RoundOutcome::Cleaned(deleted)) if deleted.is_empty() => {
                tracing::debug!("cleanup: nothing to delete");
            }
            Ok(RoundOutcome::Cleaned(deleted)) => {
                let summary: Vec<String> = deleted
                    .iter()
                    .map(|(kind, count)| format!("{}={count}", kind.name()))
                    .collect();
                tracing::info!(deleted = %summary.join(" "), "cleanup: deleted expired rows");
            }
            Err(err) => {
                tracing::warn!(error = %err, "cleanup round failed; trying again next round");
            }
        }
    }
}

/// Cleanup rounds over the store.
pub struct Cleanup<'s> {
    store: &'s dyn Store,
}

impl<'s> Cleanup<'s> {
    pub fn new(store: &'s dyn Store) -> Self {
        Self { store }
    }

    /// Runs one round at `now`, unless another replica is running one. Stops between batches
    /// when `stopped` turns true.
    pub async fn run_round(
        &self,
        policy: &CleanupPolicy,
        now: i64,
        stopped: &watch::Receiver<bool>,
    ) -> Result<RoundOutcome, DomainError> {
        let Some(lock) = self.store.try_cleanup_lock().await? else {
            return Ok(RoundOutcome::Skipped);
        };
        let deleted = self.delete_all(policy, now, stopped).await;
        lock.release().await;
        Ok(RoundOutcome::Cleaned(deleted?))
    }

    async fn delete_all(
        &self,
        policy: &CleanupPolicy,
        now: i64,
        stopped: &watch::Receiver<bool>,
    ) -> Result<Vec<(Garbage, u64)>, DomainError> {
        let mut deleted = Vec::new();
        for kind in Garbage::ALL {
            let cutoff = policy.cutoff(kind, now);
            let mut total = 0;
            loop {
                let batch = self.store.delete_garbage(kind, cutoff, BATCH_SIZE).await?;
                total += batch;
                if batch < u64::try_from(BATCH_SIZE).unwrap_or(u64::MAX) || *stopped.borrow() {
                    break;
                }
                tokio::time::sleep(BATCH_PAUSE).await;
            }
            if total > 0 {
                deleted.push((kind, total));
            }
            if *stopped.borrow() {
                break;
            }
        }
        Ok(deleted)
    }
}
