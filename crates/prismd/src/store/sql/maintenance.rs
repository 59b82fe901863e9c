//! Health, cleanup, shutdown and the counters metrics read.

use async_trait::async_trait;

use super::funnel::query;
use super::{Dialect, SqlStore};
use crate::store::cache::StandingCache;
use crate::store::*;

#[async_trait]
impl<D: Dialect> Maintenance for SqlStore<D> {
    async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await
    }

    /// One statement, its own transaction: other writers get their turn between batches.
    async fn delete_garbage(
        &self,
        kind: Garbage,
        before: i64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let deleted = query(kind.delete_statement())
            .bind(before)
            .bind(limit)
            .execute(&mut tx)
            .await?;
        tx.commit_unaudited(super::Unaudited::Garbage).await?;
        Ok(deleted)
    }

    async fn try_cleanup_lock(&self) -> Result<Option<CleanupLock>, StoreError> {
        self.db.try_cleanup_lock().await
    }

    async fn close(&self) {
        self.db.close().await;
    }

    fn connection_stats(&self) -> ConnectionStats {
        self.db.connection_stats()
    }

    fn cache(&self) -> Option<&StandingCache> {
        self.cache.as_ref()
    }
}
