//! Refresh tokens (sessions), the grants and principals behind tokens, and revocation.

use async_trait::async_trait;

use super::funnel::{Exec, query};
use super::{Dialect, SqlStore, is_unique_violation, user_columns};
use crate::store::*;

#[async_trait]
impl<D: Dialect> TokenStore for SqlStore<D> {
    async fn insert_refresh_token(
        &self,
        token: NewRefreshToken,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        if token.named {
            // A dead token (expired, or of an older epoch) keeps no name: retire it, so that
            // the name can be used again.
            query(
                "UPDATE refresh_tokens SET revoked_at = $3 WHERE user_id = $1 AND name = $2 \
                 AND named AND revoked_at IS NULL AND ((expires_at IS NOT NULL AND expires_at <= $3) \
                   OR user_epoch <> (SELECT token_epoch FROM users WHERE id = $1))",
            )
            .bind(&token.user_id)
            .bind(&token.name)
            .bind(token.created_at)
            .execute(&mut tx)
            .await?;
        }
        let inserted = query(
            "INSERT INTO refresh_tokens (id, token_hash, user_id, user_epoch, client_id, name, \
             scope, created_at, named, expires_at, created_by) \
             SELECT $1, $2, u.id, u.token_epoch, $4, $5, $6, $7, $8, $9, $10 FROM users u \
             WHERE u.id = $3 AND u.removed_at IS NULL AND u.joined_at IS NOT NULL",
        )
        .bind(&token.id)
        .bind(&token.token_hash[..])
        .bind(&token.user_id)
        .bind(&token.client_id)
        .bind(&token.name)
        .bind(&token.scope)
        .bind(token.created_at)
        .bind(token.named)
        .bind(token.expires_at)
        .bind(&token.created_by)
        .execute(&mut tx)
        .await;
        let done = match inserted {
            Ok(done) => done,
            Err(err) if token.named && is_unique_violation(&err) => {
                tx.rollback().await?;
                return Err(StoreError::Conflict(
                    "a live token of this principal has that name",
                ));
            }
            Err(err) => return Err(err),
        };
        if done == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(code_hash) = &token.from_code {
            query("UPDATE authorization_codes SET refresh_token_id = $2 WHERE code_hash = $1")
                .bind(&code_hash[..])
                .bind(&token.id)
                .execute(&mut tx)
                .await?;
            // A replay that came between redeeming the code and now finds no token to revoke;
            // revoke it here instead.
            query(
                "UPDATE refresh_tokens SET revoked_at = $2 WHERE id = $1 AND EXISTS \
                 (SELECT 1 FROM authorization_codes WHERE code_hash = $3 AND replayed_at IS NOT NULL)",
            )
            .bind(&token.id)
            .bind(token.created_at)
            .bind(&code_hash[..])
            .execute(&mut tx)
            .await?;
        }
        tx.commit_audited(&audit).await?;
        Ok(true)
    }

    async fn find_refresh_grant(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<RefreshGrant>, StoreError> {
        let read = self.db.find_refresh_grant(token_hash);
        match &self.cache {
            Some(cache) => cache.refresh_grant(token_hash, read).await,
            None => read.await,
        }
    }

    async fn principal(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<Option<PrincipalRecord>, StoreError> {
        let read = self.db.principal(user_id, session_id);
        match &self.cache {
            Some(cache) => cache.principal(user_id, session_id, read).await,
            None => read.await,
        }
    }

    // The two revoke-alls are group-committed by each backend's own writer, not through a
    // `Write`; they drop the user's entries here, whatever the outcome (an error may still
    // have come after the commit).

    async fn revoke_all_tokens(
        &self,
        user_id: &str,
        expected_epoch: i64,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let outcome = self
            .db
            .revoke_all_tokens(user_id, expected_epoch, audit)
            .await;
        if let Some(cache) = &self.cache {
            cache.revoked(user_id);
        }
        outcome
    }

    async fn revoke_all_by_token(
        &self,
        token_hash: &[u8; 32],
        decide: RevokeDecision,
    ) -> Result<Option<RevokedAll>, StoreError> {
        let outcome = self.db.revoke_all_by_token(token_hash, decide).await;
        if let Some(cache) = &self.cache {
            match &outcome {
                Ok(Some(revoked)) => {
                    cache.revoked(&revoked.user_id);
                    for sibling in &revoked.siblings {
                        cache.revoked(sibling);
                    }
                }
                Ok(None) => {}
                Err(_) => cache.revoke_outcome_unknown(token_hash),
            }
        }
        outcome
    }

    async fn move_refresh_token(
        &self,
        token_id: &str,
        from_user_id: &str,
        tenant_id: &str,
        audit: AuditEvent,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.write().await?;
        let target: Option<(String, i64, String)> = query(
            "SELECT m.id, m.token_epoch, m.org_id FROM users f \
             JOIN users m ON m.identity_id = f.identity_id \
             JOIN organizations o ON o.id = m.org_id \
             WHERE f.id = $1 AND o.tenant_id = $2 AND m.removed_at IS NULL \
               AND m.joined_at IS NOT NULL",
        )
        .bind(from_user_id)
        .bind(tenant_id)
        .fetch_optional(&mut tx)
        .await?;
        let Some((to_user_id, to_epoch, to_org_id)) = target else {
            tx.rollback().await?;
            return Ok(None);
        };
        // Only a token live under its member moves. The target's epoch as read: a revoke-all
        // or removal of the target that commits meanwhile leaves the token dead, never alive.
        let moved = query(
            "UPDATE refresh_tokens SET user_id = $3, user_epoch = $4 \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND NOT pinned AND NOT named \
               AND user_epoch = (SELECT token_epoch FROM users WHERE id = $2 \
                                 AND removed_at IS NULL AND joined_at IS NOT NULL)",
        )
        .bind(token_id)
        .bind(from_user_id)
        .bind(&to_user_id)
        .bind(to_epoch)
        .execute(&mut tx)
        .await?;
        if moved == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        // Both organizations' trails show the move.
        tx.audit(&audit).await?;
        let arrived = AuditEvent {
            org_id: Some(to_org_id),
            subject_user_id: Some(to_user_id.clone()),
            ..audit
        };
        tx.commit_audited(&arrived).await?;
        Ok(Some(to_user_id))
    }

    async fn revoke_session(
        &self,
        token_id: &str,
        user_id: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = query(
            "UPDATE refresh_tokens SET revoked_at = $3 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(token_id)
        .bind(user_id)
        .bind(audit.at)
        .execute(&mut tx)
        .await?;
        tx.finish_audited(done, &audit).await
    }

    async fn list_sessions(
        &self,
        user_id: &str,
        limit: i64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM refresh_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.user_id = $1 AND {LIVE_SESSION} \
             ORDER BY t.created_at DESC, t.id DESC LIMIT $2"
        );
        Ok(query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(limit.clamp(0, MAX_LISTED_SESSIONS))
            .fetch_all(&mut self.read())
            .await?)
    }

    async fn list_sessions_of_users(
        &self,
        user_ids: &[&str],
        limit_per_user: i64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        // One placeholder per user ($2...): neither backend's driver binds a list portably.
        let placeholders: Vec<String> = (2..user_ids.len() + 2).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT * FROM ( \
                 SELECT {SESSION_COLUMNS}, ROW_NUMBER() OVER ( \
                     PARTITION BY t.user_id ORDER BY t.created_at DESC, t.id DESC) AS newest \
                 FROM refresh_tokens t JOIN users u ON u.id = t.user_id \
                 WHERE t.user_id IN ({}) AND {LIVE_SESSION}) ranked \
             WHERE newest <= $1 ORDER BY user_id, created_at DESC, id DESC",
            placeholders.join(", ")
        );
        let mut statement =
            query(sqlx::AssertSqlSafe(sql)).bind(limit_per_user.clamp(0, MAX_LISTED_SESSIONS));
        for user_id in user_ids {
            statement = statement.bind(*user_id);
        }
        Ok(statement.fetch_all(&mut self.read()).await?)
    }

    async fn live_session(&self, token_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM refresh_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.id = $1 AND {LIVE_SESSION}"
        );
        Ok(query(sqlx::AssertSqlSafe(sql))
            .bind(token_id)
            .fetch_optional(&mut self.read())
            .await?)
    }

    async fn record_token_uses(&self, uses: &[TokenUse]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        self.db.record_token_uses(uses).await
    }
}

/// The columns of a [`RefreshGrant`] (`t` is the token, `u` its user, `o` their
/// organization, as [`refresh_grant_tables`] names them).
macro_rules! refresh_grant_columns {
    () => {
        "t.id AS token_id, t.user_epoch AS token_epoch, t.revoked_at AS token_revoked_at, \
         t.client_id, t.scope, u.id AS user_id, u.token_epoch AS user_epoch, \
         u.removed_at AS user_removed_at, u.org_id, o.tenant_id, \
         t.created_at AS token_created_at, t.last_used_at AS token_last_used_at, \
         o.refresh_idle_expiry_secs AS idle_expiry_secs, \
         o.refresh_max_age_secs AS max_age_secs, u.role, t.expires_at AS token_expires_at, \
         CASE WHEN t.scope LIKE '%:%' THEN COALESCE((SELECT string_agg(g.scope, ' ') \
           FROM scope_grants g \
           WHERE g.org_id = u.org_id AND g.grantee IN ('role:' || u.role, 'user:' || u.id)), '') \
         END AS held_org_scopes"
    };
}
pub(crate) use refresh_grant_columns;

/// The tables [`refresh_grant_columns`] reads.
macro_rules! refresh_grant_tables {
    () => {
        "FROM refresh_tokens t \
         JOIN users u ON u.id = t.user_id \
         JOIN organizations o ON o.id = u.org_id"
    };
}
pub(crate) use refresh_grant_tables;

/// [`TokenStore::find_refresh_grant`]: token, user and organization by token hash (`$1`).
/// Also read by SQLite's direct path (`sqlite::direct`, by column position; a test there
/// checks the names).
pub(crate) const REFRESH_GRANT_SQL: &str = concat!(
    "SELECT ",
    refresh_grant_columns!(),
    " ",
    refresh_grant_tables!(),
    " WHERE t.token_hash = $1"
);

/// [`TokenStore::principal`]: the user (`$1`), their organization and the session (`$2`, if
/// it is theirs). Shared like [`REFRESH_GRANT_SQL`]. `$2` comes before `$1` in the text: bind
/// by name, not by position.
pub(crate) const PRINCIPAL_SQL: &str = concat!(
    "SELECT ",
    user_columns!(),
    ", o.name AS org_name, o.tenant_id, o.created_at AS org_created_at, \
            t.id AS session_id, t.revoked_at AS session_revoked_at, \
            t.created_at AS session_created_at, t.last_used_at AS session_last_used_at, \
            o.refresh_idle_expiry_secs AS idle_expiry_secs, \
            o.refresh_max_age_secs AS max_age_secs, \
            COALESCE((SELECT string_agg(g.scope, ' ') FROM scope_grants g \
              WHERE g.org_id = u.org_id AND g.grantee IN ('role:' || u.role, 'user:' || u.id)), '') \
              AS held_org_scopes \
     FROM users u \
     JOIN organizations o ON o.id = u.org_id \
     LEFT JOIN refresh_tokens t ON t.id = $2 AND t.user_id = u.id \
     WHERE u.id = $1"
);

/// The row of [`PRINCIPAL_SQL`].
#[derive(sqlx::FromRow)]
struct PrincipalRow {
    #[sqlx(flatten)]
    user: User,
    org_name: String,
    tenant_id: String,
    org_created_at: i64,
    session_id: Option<String>,
    session_revoked_at: Option<i64>,
    session_created_at: Option<i64>,
    session_last_used_at: Option<i64>,
    #[sqlx(flatten)]
    policy: SessionPolicy,
    held_org_scopes: String,
}

/// [`TokenStore::find_refresh_grant`] through a pool.
pub(crate) async fn read_refresh_grant(
    on: &mut impl Exec,
    token_hash: &[u8; 32],
) -> Result<Option<RefreshGrant>, StoreError> {
    query(REFRESH_GRANT_SQL)
        .bind(token_hash)
        .fetch_optional(on)
        .await
}

/// [`TokenStore::principal`] through a pool.
pub(crate) async fn read_principal(
    on: &mut impl Exec,
    user_id: &str,
    session_id: &str,
) -> Result<Option<PrincipalRecord>, StoreError> {
    let row: Option<PrincipalRow> = query(PRINCIPAL_SQL)
        .bind(user_id)
        .bind(session_id)
        .fetch_optional(on)
        .await?;
    Ok(row.map(|row| PrincipalRecord {
        org: Organization {
            id: row.user.org_id.clone(),
            name: row.org_name,
            tenant_id: row.tenant_id,
            created_at: row.org_created_at,
        },
        user: row.user,
        session_revoked_at: row.session_id.map(|_| row.session_revoked_at),
        session_created_at: row.session_created_at,
        session_last_used_at: row.session_last_used_at,
        policy: row.policy,
        held_org_scopes: row.held_org_scopes,
    }))
}
