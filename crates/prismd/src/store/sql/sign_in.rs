//! Authorization codes, device codes and browser sessions.

use async_trait::async_trait;

use super::funnel::query;
use super::users::IDENTITY_COLUMNS;
use super::{Dialect, Lock, SqlStore, Unaudited, is_unique_violation};
use crate::store::*;

#[async_trait]
impl<D: Dialect> SignInStore for SqlStore<D> {
    async fn insert_authorization_code(
        &self,
        code: NewAuthorizationCode,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        query(
            "INSERT INTO authorization_codes (code_hash, client_id, redirect_uri, code_challenge, \
             scope, nonce, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&code.code_hash[..])
        .bind(&code.client_id)
        .bind(&code.redirect_uri)
        .bind(&code.code_challenge)
        .bind(&code.scope)
        .bind(&code.nonce)
        .bind(&code.user_id)
        .bind(code.created_at)
        .bind(code.expires_at)
        .execute(&mut tx)
        .await?;
        tx.commit_unaudited(Unaudited::NewAuthorizationCode).await?;
        Ok(())
    }

    async fn redeem_authorization_code(
        &self,
        code_hash: &[u8; 32],
        at: i64,
        replay: AuditEvent,
    ) -> Result<CodeRedemption, StoreError> {
        let mut tx = self.write().await?;
        let redeemed: Option<AuthorizationCode> = query(
            "UPDATE authorization_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL \
             RETURNING client_id, redirect_uri, code_challenge, scope, nonce, user_id, expires_at",
        )
        .bind(&code_hash[..])
        .bind(at)
        .fetch_optional(&mut tx)
        .await?;
        if let Some(code) = redeemed {
            tx.commit_unaudited(Unaudited::CodeRedeemed).await?;
            return Ok(CodeRedemption::Redeemed(code));
        }
        // Locked, so of two replays at once exactly one sees it unreplayed and audits it.
        tx.lock(Lock::AuthorizationCode(code_hash)).await?;
        let spent: Option<SpentCode> = query(SPENT_CODE)
            .bind(&code_hash[..])
            .fetch_optional(&mut tx)
            .await?;
        let Some(spent) = spent else {
            tx.rollback().await?;
            return Ok(CodeRedemption::Unknown);
        };
        query(
            "UPDATE authorization_codes SET replayed_at = COALESCE(replayed_at, $2) WHERE code_hash = $1",
        )
        .bind(&code_hash[..])
        .bind(at)
        .execute(&mut tx)
        .await?;
        let revoked = query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE revoked_at IS NULL AND id = \
             (SELECT refresh_token_id FROM authorization_codes WHERE code_hash = $1)",
        )
        .bind(&code_hash[..])
        .bind(at)
        .execute(&mut tx)
        .await?;
        if spent.replayed_at.is_none() {
            // The audit row is what tells every cache to drop the user's entries.
            tx.commit_audited(&spent.replay_event(replay, revoked > 0))
                .await?;
        } else if revoked > 0 {
            // A token stored after the first replay, revoked now: still announce it.
            tx.announce(Change {
                action: replay.action.to_owned(),
                user_id: Some(spent.user_id),
            })
            .await?;
            tx.commit_unaudited(Unaudited::Announced).await?;
        } else {
            // A later replay that revoked nothing: the first one was audited.
            tx.commit_unaudited(Unaudited::RepeatedReplay).await?;
        }
        Ok(CodeRedemption::Replayed)
    }

    async fn insert_device_code(&self, code: NewDeviceCode) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        query(
            "INSERT INTO device_codes (device_code_hash, user_code_hash, client_id, scope, created_at, \
             expires_at, interval_secs, status) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')",
        )
        .bind(&code.device_code_hash[..])
        .bind(&code.user_code_hash[..])
        .bind(&code.client_id)
        .bind(&code.scope)
        .bind(code.created_at)
        .bind(code.expires_at)
        .bind(code.interval_secs)
        .execute(&mut tx)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                StoreError::Conflict("user code collision")
            } else {
                err
            }
        })?;
        tx.commit_unaudited(Unaudited::DeviceCode).await?;
        Ok(())
    }

    async fn live_device_codes(&self, now: i64) -> Result<i64, StoreError> {
        query("SELECT COUNT(*) FROM device_codes WHERE status = 'pending' AND expires_at > $1")
            .bind(now)
            .scalar()
            .fetch_one(&mut self.read())
            .await
    }

    async fn poll_device_code(
        &self,
        device_code_hash: &[u8; 32],
        at: i64,
    ) -> Result<Option<DeviceCode>, StoreError> {
        // Read first, on a reader: a poll with an unknown code (anyone can send one) must not
        // take the write lock.
        let known: Option<String> =
            query("SELECT status FROM device_codes WHERE device_code_hash = $1")
                .bind(&device_code_hash[..])
                .scalar()
                .fetch_optional(&mut self.read())
                .await?;
        if known.is_none() {
            return Ok(None);
        }
        let mut tx = self.write().await?;
        // Two polls racing must not both read the same "last polled" time, or neither would
        // be told to slow down.
        tx.lock(Lock::DeviceCode(device_code_hash)).await?;
        let code: Option<DeviceCode> = query(
            "SELECT client_id, scope, expires_at, interval_secs, last_polled_at, status, user_id \
             FROM device_codes WHERE device_code_hash = $1",
        )
        .bind(&device_code_hash[..])
        .fetch_optional(&mut tx)
        .await?;
        if code.is_some() {
            query("UPDATE device_codes SET last_polled_at = $2 WHERE device_code_hash = $1")
                .bind(&device_code_hash[..])
                .bind(at)
                .execute(&mut tx)
                .await?;
        }
        tx.commit_unaudited(Unaudited::DeviceCode).await?;
        Ok(code)
    }

    async fn decide_device_code(
        &self,
        user_code_hash: &[u8; 32],
        approve_for: Option<&str>,
        at: i64,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let status = if approve_for.is_some() {
            "approved"
        } else {
            "denied"
        };
        let done = query(
            "UPDATE device_codes SET status = $2, user_id = $3 \
             WHERE user_code_hash = $1 AND status = 'pending' AND expires_at > $4",
        )
        .bind(&user_code_hash[..])
        .bind(status)
        .bind(approve_for)
        .bind(at)
        .execute(&mut tx)
        .await?;
        if done == 1 {
            tx.commit_audited(&audit).await?;
        } else {
            tx.commit_unaudited(Unaudited::DeviceCode).await?;
        }
        Ok(done == 1)
    }

    async fn redeem_device_code(&self, device_code_hash: &[u8; 32]) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = query(
            "UPDATE device_codes SET status = 'redeemed' WHERE device_code_hash = $1 AND status = 'approved'",
        )
        .bind(&device_code_hash[..])
        .execute(&mut tx)
        .await?;
        tx.commit_unaudited(Unaudited::DeviceCode).await?;
        Ok(done == 1)
    }

    async fn slow_down_device_code(
        &self,
        device_code_hash: &[u8; 32],
        interval_secs: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        query("UPDATE device_codes SET interval_secs = $2 WHERE device_code_hash = $1")
            .bind(&device_code_hash[..])
            .bind(interval_secs)
            .execute(&mut tx)
            .await?;
        tx.commit_unaudited(Unaudited::DeviceCode).await?;
        Ok(())
    }

    async fn insert_browser_session(
        &self,
        id_hash: &[u8; 32],
        identity_id: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        query(
            "INSERT INTO browser_sessions (id_hash, identity_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id_hash[..])
        .bind(identity_id)
        .bind(created_at)
        .bind(expires_at)
        .execute(&mut tx)
        .await?;
        tx.commit_unaudited(Unaudited::BrowserSession).await?;
        Ok(())
    }

    async fn browser_session(
        &self,
        id_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<BrowserSession>, StoreError> {
        let sql = format!(
            "SELECT {IDENTITY_COLUMNS}, s.only_user_id FROM browser_sessions s \
             JOIN identities i ON i.id = s.identity_id WHERE s.id_hash = $1 AND s.expires_at > $2"
        );
        let row: Option<SessionRow> = query(sqlx::AssertSqlSafe(sql))
            .bind(&id_hash[..])
            .bind(now)
            .fetch_optional(&mut self.read())
            .await?;
        Ok(row.map(|row| BrowserSession {
            identity: row.identity,
            only_user_id: row.only_user_id,
        }))
    }

    async fn delete_browser_session(
        &self,
        id_hash: &[u8; 32],
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let deleted = query("DELETE FROM browser_sessions WHERE id_hash = $1")
            .bind(&id_hash[..])
            .execute(&mut tx)
            .await?;
        if deleted == 1 {
            tx.commit_audited(&audit).await?;
        } else {
            tx.commit_unaudited(Unaudited::BrowserSession).await?;
        }
        Ok(deleted == 1)
    }
}

/// A browser session row: its identity, and the one member it may act as, if limited.
#[derive(sqlx::FromRow)]
struct SessionRow {
    #[sqlx(flatten)]
    identity: Identity,
    only_user_id: Option<String>,
}
