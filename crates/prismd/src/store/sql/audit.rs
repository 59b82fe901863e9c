//! The audit trail and the change feed. The statements, written once for both databases.

use async_trait::async_trait;

use super::funnel::{Exec, Query, query};
use super::{Dialect, SqlStore};
use crate::store::*;

#[async_trait]
impl<D: Dialect> AuditStore for SqlStore<D> {
    async fn audit_events_page(
        &self,
        filter: &AuditQuery,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let (sql, binds) = filter.statement(limit);
        let mut statement = query(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            statement = match bind {
                AuditBind::Text(text) => statement.bind(text),
                AuditBind::Int(number) => statement.bind(number),
            };
        }
        Ok(statement.fetch_all(&mut self.read()).await?)
    }

    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.write().await?.commit_audited(&event).await
    }

    /// Every change this process hears of also reaches its own cache first; when the feed
    /// ends, the cache stops answering (it may have missed changes) until the next feed
    /// listens.
    async fn follow_changes(
        &self,
        on_change: &(dyn Fn(Change) + Send + Sync),
    ) -> Result<(), StoreError> {
        let outcome = self
            .db
            .follow_changes(&|change: Change| {
                if let Some(cache) = &self.cache {
                    cache.apply(&change);
                }
                on_change(change);
            })
            .await;
        if let Some(cache) = &self.cache {
            cache.feed_lost();
        }
        outcome
    }
}

/// Writes an audit row: the plain statement, which SQLite's revoke thread also runs.
/// PostgreSQL's own adds its notification to it.
pub(crate) const INSERT_AUDIT_SQL: &str = "INSERT INTO audit_events \
     (at, action, actor, org_id, subject_user_id, address, user_agent, detail) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Writes `event` in the caller's transaction, with [`INSERT_AUDIT_SQL`].
pub(crate) async fn insert_audit(tx: &mut impl Exec, event: &AuditEvent) -> Result<(), StoreError> {
    with_event(query(INSERT_AUDIT_SQL), event)
        .execute(tx)
        .await?;
    Ok(())
}

/// Binds `event`'s columns as `$1` to `$8`, in [`INSERT_AUDIT_SQL`]'s order.
pub(crate) fn with_event<'q>(statement: Query<'q>, event: &'q AuditEvent) -> Query<'q> {
    statement
        .bind(event.at)
        .bind(event.action)
        .bind(&event.actor)
        .bind(&event.org_id)
        .bind(&event.subject_user_id)
        .bind(&event.address)
        .bind(&event.user_agent)
        .bind(&event.detail)
}
