//! What background cleanup may delete, as batch statements that run unchanged on SQLite and
//! PostgreSQL, and the lock that lets one PostgreSQL replica at a time clean up.

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

use super::StoreError;

/// One kind of row background cleanup deletes. Each is deleted by primary key, a batch at a
/// time, from a sub-select that finds old rows through an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Garbage {
    /// Authorization codes never redeemed, expired before the cutoff.
    UnusedAuthorizationCodes,
    /// Any authorization code expired before the cutoff (redeemed ones are kept until then,
    /// so a replay still revokes the tokens issued from them).
    AuthorizationCodes,
    /// Device codes expired before the cutoff.
    DeviceCodes,
    /// Browser sessions expired before the cutoff.
    BrowserSessions,
    /// Invitations expired before the cutoff.
    ExpiredInvitations,
    /// Invitations spent before the cutoff.
    SpentInvitations,
    /// Refresh tokens revoked one by one before the cutoff.
    RevokedRefreshTokens,
    /// Refresh tokens of an older epoch than their user's (revoke-all, removed user), when
    /// the user has not changed since the cutoff.
    StaleEpochRefreshTokens,
    /// Refresh tokens whose own expiry passed before the cutoff.
    ExpiredRefreshTokens,
    /// Audit events older than the cutoff.
    AuditEvents,
    /// Signing keys retired before the cutoff.
    RetiredSigningKeys,
    /// Failure counters whose window started, and whose lock ended, before the cutoff.
    AttemptCounters,
    /// Password-reset links expired before the cutoff.
    ExpiredPasswordResets,
    /// Password-reset links spent or replaced before the cutoff.
    SpentPasswordResets,
    /// Replay keys of OIDC tokens (keyless CI) that expired before the cutoff: an expired
    /// token is refused before its key is looked at.
    SpentOidcTokens,
    /// Sessions of OIDC token exchanges (keyless CI) whose access token expired before the
    /// cutoff: no secret of theirs exists, so nothing can be told "revoked" with them.
    ExpiredKeylessSessions,
}

impl Garbage {
    /// Every kind, in the order a cleanup round deletes them.
    pub const ALL: [Garbage; 16] = [
        Garbage::UnusedAuthorizationCodes,
        Garbage::AuthorizationCodes,
        Garbage::DeviceCodes,
        Garbage::BrowserSessions,
        Garbage::ExpiredInvitations,
        Garbage::SpentInvitations,
        Garbage::RevokedRefreshTokens,
        Garbage::StaleEpochRefreshTokens,
        Garbage::ExpiredRefreshTokens,
        Garbage::AuditEvents,
        Garbage::RetiredSigningKeys,
        Garbage::AttemptCounters,
        Garbage::ExpiredPasswordResets,
        Garbage::SpentPasswordResets,
        Garbage::SpentOidcTokens,
        Garbage::ExpiredKeylessSessions,
    ];

    /// A name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Garbage::UnusedAuthorizationCodes => "unused_authorization_codes",
            Garbage::AuthorizationCodes => "authorization_codes",
            Garbage::DeviceCodes => "device_codes",
            Garbage::BrowserSessions => "browser_sessions",
            Garbage::ExpiredInvitations => "expired_invitations",
            Garbage::SpentInvitations => "spent_invitations",
            Garbage::RevokedRefreshTokens => "revoked_refresh_tokens",
            Garbage::StaleEpochRefreshTokens => "stale_epoch_refresh_tokens",
            Garbage::ExpiredRefreshTokens => "expired_refresh_tokens",
            Garbage::AuditEvents => "audit_events",
            Garbage::RetiredSigningKeys => "retired_signing_keys",
            Garbage::AttemptCounters => "attempt_counters",
            Garbage::ExpiredPasswordResets => "expired_password_resets",
            Garbage::SpentPasswordResets => "spent_password_resets",
            Garbage::SpentOidcTokens => "spent_oidc_tokens",
            Garbage::ExpiredKeylessSessions => "expired_keyless_sessions",
        }
    }

    /// The statement that deletes one batch: `$1` is the cutoff (milliseconds), `$2` the
    /// batch size. Public so a test can check each one's plan on both backends.
    pub fn delete_statement(self) -> &'static str {
        match self {
            Garbage::UnusedAuthorizationCodes => {
                "DELETE FROM authorization_codes WHERE code_hash IN (SELECT code_hash \
                 FROM authorization_codes WHERE used_at IS NULL AND expires_at < $1 LIMIT $2)"
            }
            Garbage::AuthorizationCodes => {
                "DELETE FROM authorization_codes WHERE code_hash IN (SELECT code_hash \
                 FROM authorization_codes WHERE expires_at < $1 LIMIT $2)"
            }
            Garbage::DeviceCodes => {
                "DELETE FROM device_codes WHERE device_code_hash IN (SELECT device_code_hash \
                 FROM device_codes WHERE expires_at < $1 LIMIT $2)"
            }
            Garbage::BrowserSessions => {
                "DELETE FROM browser_sessions WHERE id_hash IN (SELECT id_hash \
                 FROM browser_sessions WHERE expires_at < $1 LIMIT $2)"
            }
            Garbage::ExpiredInvitations => {
                "DELETE FROM invitations WHERE token_hash IN (SELECT token_hash \
                 FROM invitations WHERE expires_at < $1 LIMIT $2)"
            }
            Garbage::SpentInvitations => {
                "DELETE FROM invitations WHERE token_hash IN (SELECT token_hash \
                 FROM invitations WHERE used_at IS NOT NULL AND used_at < $1 LIMIT $2)"
            }
            Garbage::RevokedRefreshTokens => {
                "DELETE FROM refresh_tokens WHERE id IN (SELECT id \
                 FROM refresh_tokens WHERE revoked_at IS NOT NULL AND revoked_at < $1 LIMIT $2)"
            }
            Garbage::StaleEpochRefreshTokens => {
                "DELETE FROM refresh_tokens WHERE id IN (SELECT rt.id \
                 FROM users u JOIN refresh_tokens rt ON rt.user_id = u.id \
                 WHERE u.token_epoch > 0 AND u.updated_at < $1 AND rt.user_epoch < u.token_epoch \
                 LIMIT $2)"
            }
            Garbage::ExpiredRefreshTokens => {
                "DELETE FROM refresh_tokens WHERE id IN (SELECT id FROM refresh_tokens \
                 WHERE expires_at IS NOT NULL AND expires_at < $1 LIMIT $2)"
            }
            Garbage::AuditEvents => {
                "DELETE FROM audit_events WHERE id IN (SELECT id \
                 FROM audit_events WHERE at < $1 LIMIT $2)"
            }
            Garbage::RetiredSigningKeys => {
                "DELETE FROM signing_keys WHERE kid IN (SELECT kid \
                 FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1 LIMIT $2)"
            }
            Garbage::AttemptCounters => {
                "DELETE FROM attempt_counters WHERE key IN (SELECT key \
                 FROM attempt_counters WHERE window_start < $1 AND locked_until < $1 LIMIT $2)"
            }
            Garbage::ExpiredPasswordResets => {
                "DELETE FROM password_resets WHERE token_hash IN (SELECT token_hash \
                 FROM password_resets WHERE expires_at < $1 LIMIT $2)"
            }
            Garbage::SpentPasswordResets => {
                "DELETE FROM password_resets WHERE token_hash IN (SELECT token_hash \
                 FROM password_resets WHERE used_at IS NOT NULL AND used_at < $1 LIMIT $2)"
            }
            Garbage::SpentOidcTokens => {
                "DELETE FROM oidc_token_uses WHERE token_key IN (SELECT token_key \
                 FROM oidc_token_uses WHERE expires_at < $1 LIMIT $2)"
            }
            Garbage::ExpiredKeylessSessions => {
                "DELETE FROM refresh_tokens WHERE id IN (SELECT id FROM refresh_tokens \
                 WHERE expires_at IS NOT NULL AND expires_at < $1 \
                   AND trust_policy_id IS NOT NULL LIMIT $2)"
            }
        }
    }
}

/// Permission to run one cleanup round. On PostgreSQL it holds a session-level advisory lock
/// on one pooled connection, so replicas take turns; on SQLite there is one server per file
/// and nothing to hold.
pub struct CleanupLock {
    held: Option<(PoolConnection<Postgres>, i64)>,
}

impl CleanupLock {
    pub(super) fn uncontended() -> Self {
        Self { held: None }
    }

    /// `pg_try_advisory_lock(key)` on a connection kept for the round: `None` when another
    /// session (replica) holds it.
    pub(super) async fn try_postgres(pool: &PgPool, key: i64) -> Result<Option<Self>, StoreError> {
        let mut conn = pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(locked.then_some(Self {
            held: Some((conn, key)),
        }))
    }

    /// Ends the round. If the unlock fails, the connection is closed instead, which releases
    /// a session lock just as well.
    pub async fn release(mut self) {
        if let Some((mut conn, key)) = self.held.take() {
            let unlocked: Result<bool, sqlx::Error> =
                sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await;
            if !matches!(unlocked, Ok(true)) {
                drop(conn.detach());
            }
        }
    }
}

impl Drop for CleanupLock {
    /// A round that ended without `release` (cancelled) must not hand a locked connection
    /// back to the pool, where the lock would outlive the round: close it instead.
    fn drop(&mut self) {
        if let Some((conn, _)) = self.held.take() {
            drop(conn.detach());
        }
    }
}
