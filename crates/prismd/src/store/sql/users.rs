//! Users: accounts, profiles, passwords, invitations and removal.

use async_trait::async_trait;

use super::funnel::Exec;
use super::funnel::query;
use super::{Dialect, Lock, SqlStore, USER_COLUMNS, is_unique_violation};
use crate::store::*;

#[async_trait]
impl<D: Dialect> UserStore for SqlStore<D> {
    async fn create_user(&self, user: NewUser, audit: AuditEvent) -> Result<User, StoreError> {
        let mut tx = self.write().await?;
        match insert_user(&mut tx, &user).await {
            Ok(()) => {}
            Err(err) if is_unique_violation(&err) => {
                return Err(StoreError::Conflict(
                    "an active user with this email exists",
                ));
            }
            Err(err) => return Err(err),
        }
        tx.commit_audited(&audit).await?;
        Ok(User {
            id: user.id,
            org_id: user.org_id,
            email: user.email,
            name: user.name,
            role: user.role,
            token_epoch: 0,
            created_at: user.created_at,
            updated_at: user.created_at,
            removed_at: None,
            phone: None,
            external_id: user.external_id,
            dark_mode: false,
            dark_mode_sync_with_os: true,
        })
    }

    async fn find_active_user_by_email(
        &self,
        org_id: &str,
        email: &str,
    ) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.org_id = $1 AND u.email = $2 AND u.removed_at IS NULL"
        );
        Ok(query(sqlx::AssertSqlSafe(sql))
            .bind(org_id)
            .bind(email)
            .fetch_optional(&mut self.read())
            .await?)
    }

    async fn users_page(
        &self,
        org_id: &str,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<User>, StoreError> {
        let (after_created, after_id) = after.unwrap_or((i64::MIN, String::new()));
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.org_id = $1 AND u.removed_at IS NULL \
             AND (u.created_at > $2 OR (u.created_at = $2 AND u.id > $3)) \
             ORDER BY u.created_at, u.id LIMIT $4"
        );
        Ok(query(sqlx::AssertSqlSafe(sql))
            .bind(org_id)
            .bind(after_created)
            .bind(after_id)
            .bind(limit)
            .fetch_all(&mut self.read())
            .await?)
    }

    async fn member(&self, org_id: &str, user_id: &str) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1 AND u.org_id = $2 AND u.removed_at IS NULL"
        );
        Ok(query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(org_id)
            .fetch_optional(&mut self.read())
            .await?)
    }

    async fn update_profile(
        &self,
        user_id: &str,
        changes: ProfileChanges,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        if changes.role.is_some() {
            // As in remove_user: concurrent demotions of two Owners take turns on the
            // organization's row, so the Owner count below sees the earlier one.
            tx.lock(Lock::OrganizationOf(user_id)).await?;
        }
        let done = query(
            "UPDATE users SET name = COALESCE($2, name), phone = COALESCE($3, phone), \
             dark_mode = COALESCE($4, dark_mode), \
             dark_mode_sync_with_os = COALESCE($5, dark_mode_sync_with_os), updated_at = $6, \
             role = COALESCE(CAST($7 AS TEXT), role) \
             WHERE id = $1 AND removed_at IS NULL \
               AND (CAST($7 AS TEXT) IS NULL OR CAST($7 AS TEXT) = 'owner' OR role <> 'owner' \
                    OR (SELECT COUNT(*) FROM users o WHERE o.org_id = users.org_id \
                        AND o.role = 'owner' AND o.removed_at IS NULL) > 1)",
        )
        .bind(user_id)
        .bind(changes.name)
        .bind(changes.phone)
        .bind(changes.dark_mode)
        .bind(changes.dark_mode_sync_with_os)
        .bind(audit.at)
        .bind(changes.role)
        .execute(&mut tx)
        .await?;
        tx.finish_audited(done, &audit).await
    }

    async fn has_password(&self, user_id: &str) -> Result<bool, StoreError> {
        let found: Option<bool> = query(
            "SELECT TRUE FROM users WHERE id = $1 AND removed_at IS NULL AND password_hash IS NOT NULL",
        )
        .bind(user_id)
        .scalar().fetch_optional(&mut self.read())
        .await?;
        Ok(found.is_some())
    }

    async fn insert_invitation(
        &self,
        token_hash: &[u8; 32],
        user_id: &str,
        expires_at: i64,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        // A new link replaces the earlier ones.
        query("UPDATE invitations SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL")
            .bind(user_id)
            .bind(audit.at)
            .execute(&mut tx)
            .await?;
        query(
            "INSERT INTO invitations (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&token_hash[..])
        .bind(user_id)
        .bind(audit.at)
        .bind(expires_at)
        .execute(&mut tx)
        .await?;
        tx.commit_audited(&audit).await?;
        Ok(())
    }

    async fn invitation_user(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM invitations i JOIN users u ON u.id = i.user_id \
             WHERE i.token_hash = $1 AND i.used_at IS NULL AND i.expires_at > $2 \
             AND u.removed_at IS NULL AND u.password_hash IS NULL"
        );
        Ok(query(sqlx::AssertSqlSafe(sql))
            .bind(&token_hash[..])
            .bind(now)
            .fetch_optional(&mut self.read())
            .await?)
    }

    async fn accept_invitation(
        &self,
        token_hash: &[u8; 32],
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let user_id: Option<String> = query(
            "UPDATE invitations SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL \
             AND expires_at > $2 RETURNING user_id",
        )
        .bind(&token_hash[..])
        .bind(audit.at)
        .scalar()
        .fetch_optional(&mut tx)
        .await?;
        let Some(user_id) = user_id else {
            tx.rollback().await?;
            return Ok(false);
        };
        // An invitation only ever gives a first password: it cannot reset an existing one.
        let done = query(
            "UPDATE users SET password_hash = $2, updated_at = $3 \
             WHERE id = $1 AND removed_at IS NULL AND password_hash IS NULL",
        )
        .bind(&user_id)
        .bind(password_hash)
        .bind(audit.at)
        .execute(&mut tx)
        .await?;
        if done == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        end_browser_sessions(&mut tx, &user_id).await?;
        // Every other link of this user dies with the one that was used.
        query("UPDATE invitations SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL")
            .bind(&user_id)
            .bind(audit.at)
            .execute(&mut tx)
            .await?;
        let audit = AuditEvent {
            subject_user_id: Some(user_id),
            ..audit
        };
        tx.commit_audited(&audit).await?;
        Ok(true)
    }

    async fn list_users(
        &self,
        org_id: &str,
        include_removed: bool,
    ) -> Result<Vec<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.org_id = $1 AND ($2 OR u.removed_at IS NULL) \
             ORDER BY u.created_at, u.id"
        );
        Ok(query(sqlx::AssertSqlSafe(sql))
            .bind(org_id)
            .bind(include_removed)
            .fetch_all(&mut self.read())
            .await?)
    }

    async fn remove_user(
        &self,
        user_id: &str,
        at: i64,
        audit: AuditEvent,
    ) -> Result<Removal, StoreError> {
        let mut tx = self.write().await?;
        // Two concurrent removals of two different Owners would each count the other as still
        // active (neither has committed). Locking the organization's row first makes them
        // take turns, and the count in the UPDATE below then sees the earlier removal. NO KEY
        // UPDATE does not block inserts that merely reference the organization.
        tx.lock(Lock::OrganizationOf(user_id)).await?;
        // The epoch moves too, so even a future bug that forgot the removed flag would still
        // find every old token stale.
        let done = query(
            "UPDATE users SET removed_at = $2, updated_at = $2, token_epoch = token_epoch + 1 \
             WHERE id = $1 AND removed_at IS NULL \
               AND (role <> 'owner' OR (SELECT COUNT(*) FROM users o \
                    WHERE o.org_id = users.org_id AND o.role = 'owner' AND o.removed_at IS NULL) > 1)",
        )
        .bind(user_id)
        .bind(at)
        .execute(&mut tx)
        .await?;
        if done == 0 {
            let active: Option<bool> =
                query("SELECT TRUE FROM users WHERE id = $1 AND removed_at IS NULL")
                    .bind(user_id)
                    .scalar()
                    .fetch_optional(&mut tx)
                    .await?;
            tx.rollback().await?;
            return Ok(if active.is_some() {
                Removal::LastOwner
            } else {
                Removal::NotFound
            });
        }
        tx.commit_audited(&audit).await?;
        Ok(Removal::Removed)
    }

    async fn set_password_hash(
        &self,
        user_id: &str,
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = query(
            "UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1 AND removed_at IS NULL",
        )
        .bind(user_id)
        .bind(password_hash)
        .bind(audit.at)
        .execute(&mut tx)
        .await?;
        if done == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        end_browser_sessions(&mut tx, user_id).await?;
        tx.commit_audited(&audit).await?;
        Ok(true)
    }

    async fn credentials_by_email(&self, email: &str) -> Result<Vec<Credentials>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, u.password_hash FROM users u \
             WHERE u.email = $1 AND u.removed_at IS NULL ORDER BY u.created_at, u.id"
        );
        query(sqlx::AssertSqlSafe(sql))
            .bind(email)
            .fetch_all(&mut self.read())
            .await
    }

    async fn active_user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        let sql =
            format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1 AND u.removed_at IS NULL");
        Ok(query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_optional(&mut self.read())
            .await?)
    }

    async fn organizations_of_email(&self, email: &str) -> Result<Vec<Organization>, StoreError> {
        Ok(query(
            "SELECT o.id, o.name, o.tenant_id, o.created_at FROM organizations o \
             JOIN users u ON u.org_id = o.id \
             WHERE u.email = $1 AND u.removed_at IS NULL ORDER BY o.created_at, o.id",
        )
        .bind(email)
        .fetch_all(&mut self.read())
        .await?)
    }
}

/// Inserts a user (epoch 0, no removal), in the caller's transaction.
pub(super) async fn insert_user(tx: &mut impl Exec, user: &NewUser) -> Result<(), StoreError> {
    query(
        "INSERT INTO users (id, org_id, email, name, role, password_hash, external_id, token_epoch, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $8)",
    )
    .bind(&user.id)
    .bind(&user.org_id)
    .bind(&user.email)
    .bind(&user.name)
    .bind(&user.role)
    .bind(&user.password_hash)
    .bind(&user.external_id)
    .bind(user.created_at)
    .execute(tx)
    .await?;
    Ok(())
}

/// The statement that signs a user (`$1`) out of every browser; shared with SQLite's revoke
/// thread.
pub(crate) const END_BROWSER_SESSIONS_SQL: &str = "DELETE FROM browser_sessions WHERE user_id = $1";

/// Signs a user out of every browser, in the caller's transaction: a revoke-all or a new
/// password must not leave a browser session that can mint new codes.
pub(super) async fn end_browser_sessions(
    tx: &mut impl Exec,
    user_id: &str,
) -> Result<(), StoreError> {
    query(END_BROWSER_SESSIONS_SQL)
        .bind(user_id)
        .execute(tx)
        .await?;
    Ok(())
}
