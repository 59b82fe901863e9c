//! Failure counters of rate limits and lock-outs.

use async_trait::async_trait;

use super::funnel::query;
use super::{Dialect, SqlStore, Unaudited};
use crate::store::*;

#[async_trait]
impl<D: Dialect> LimitStore for SqlStore<D> {
    async fn attempt_counter(&self, key: &str) -> Result<Option<AttemptCounter>, StoreError> {
        Ok(query(
            "SELECT failures, window_start, locked_until FROM attempt_counters WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&mut self.read())
        .await?)
    }

    async fn record_attempt_failure(
        &self,
        key: &str,
        at: i64,
        policy: AttemptPolicy,
        trip: AuditEvent,
    ) -> Result<AttemptCounter, StoreError> {
        let mut tx = self.write().await?;
        // One statement per failure; a window that has passed (and no lock still running)
        // starts the count again. The right-hand sides see the row as it was.
        let before: Option<i64> = query("SELECT locked_until FROM attempt_counters WHERE key = $1")
            .bind(key)
            .scalar()
            .fetch_optional(&mut tx)
            .await?;
        let mut counter: AttemptCounter = query(
            "INSERT INTO attempt_counters (key, failures, window_start, locked_until) \
             VALUES ($1, 1, $2, 0) \
             ON CONFLICT (key) DO UPDATE SET \
             failures = CASE WHEN attempt_counters.window_start <= $3 \
                 AND attempt_counters.locked_until <= $2 THEN 1 \
                 ELSE attempt_counters.failures + 1 END, \
             window_start = CASE WHEN attempt_counters.window_start <= $3 \
                 AND attempt_counters.locked_until <= $2 THEN $2 \
                 ELSE attempt_counters.window_start END \
             RETURNING failures, window_start, locked_until",
        )
        .bind(key)
        .bind(at)
        .bind(at.saturating_sub(policy.window_ms))
        .fetch_one(&mut tx)
        .await?;
        let lock = policy.lock_for(counter.failures);
        if lock > 0 {
            counter.locked_until = at.saturating_add(lock);
            query("UPDATE attempt_counters SET locked_until = $2 WHERE key = $1")
                .bind(key)
                .bind(counter.locked_until)
                .execute(&mut tx)
                .await?;
            if before.is_none_or(|until| until <= at) {
                tx.commit_audited(&trip).await?;
                return Ok(counter);
            }
        }
        tx.commit_unaudited(Unaudited::AttemptCounter).await?;
        Ok(counter)
    }

    async fn clear_attempts(&self, key: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        query("DELETE FROM attempt_counters WHERE key = $1")
            .bind(key)
            .execute(&mut tx)
            .await?;
        tx.commit_unaudited(Unaudited::AttemptCounter).await
    }
}
