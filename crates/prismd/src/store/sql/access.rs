//! Service accounts, organization-defined scopes and their grants, the token lifetime maximum,
//! and the expiry notices of named tokens.

use async_trait::async_trait;

use super::funnel::query;
use super::{Dialect, Lock, SqlStore, USER_COLUMNS, Unaudited, Write, is_unique_violation};
use crate::store::*;

/// May `$actor` (an active, joined member of the account's organization `{org}`) manage
/// service accounts there? Owners and Admins may; an operator (NULL) may.
pub(super) fn manager(actor: u8, org: &str) -> String {
    format!(
        "(CAST(${actor} AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM users a \
           WHERE a.id = CAST(${actor} AS TEXT) AND a.org_id = {org} AND a.removed_at IS NULL \
             AND a.joined_at IS NOT NULL AND a.role IN ('owner', 'admin')))"
    )
}

/// Ends the write of a service account: a row written is read back and committed with
/// `audit`; none written (the actor may not) or a name taken is a refusal.
async fn finish_account_write<D: Dialect>(
    mut tx: Write<'_, D>,
    written: Result<u64, StoreError>,
    user_id: &str,
    audit: &AuditEvent,
) -> Result<Result<User, Refusal>, StoreError> {
    let refusal = match written {
        Ok(1) => None,
        Ok(_) => Some(Refusal::Forbidden),
        Err(err) if is_unique_violation(&err) => Some(Refusal::NameTaken),
        Err(err) => return Err(err),
    };
    if let Some(refusal) = refusal {
        tx.rollback().await?;
        return Ok(Err(refusal));
    }
    let sql = format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1");
    let user: User = query(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_one(&mut tx)
        .await?;
    tx.commit_audited(audit).await?;
    Ok(Ok(user))
}

#[derive(sqlx::FromRow)]
struct ScopeRow {
    name: String,
    description: Option<String>,
    created_at: i64,
    grantee: Option<String>,
}

#[async_trait]
impl<D: Dialect> AccessStore for SqlStore<D> {
    async fn add_service_account(
        &self,
        account: NewServiceAccount,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<User, Refusal>, StoreError> {
        let mut tx = self.write().await?;
        tx.lock(Lock::Organization(&account.org_id)).await?;
        let sql = format!(
            "INSERT INTO users (id, org_id, email, name, role, token_epoch, created_at, \
             updated_at, joined_at, kind, description) \
             SELECT $1, $2, '', $3, $4, 0, $5, $5, $5, '{SERVICE_ACCOUNT_KIND}', $6 \
             WHERE $4 <> 'owner' AND {}",
            manager(7, "$2")
        );
        let inserted = query(sqlx::AssertSqlSafe(sql))
            .bind(&account.id)
            .bind(&account.org_id)
            .bind(&account.name)
            .bind(&account.role)
            .bind(account.created_at)
            .bind(&account.description)
            .bind(actor)
            .execute(&mut tx)
            .await;
        finish_account_write(tx, inserted, &account.id, &audit).await
    }

    async fn service_accounts(&self, org_id: &str) -> Result<Vec<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.org_id = $1 AND u.removed_at IS NULL \
             AND u.kind = '{SERVICE_ACCOUNT_KIND}' ORDER BY u.created_at, u.id"
        );
        query(sqlx::AssertSqlSafe(sql))
            .bind(org_id)
            .fetch_all(&mut self.read())
            .await
    }

    async fn update_service_account(
        &self,
        user_id: &str,
        changes: ServiceAccountChanges,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<User, Refusal>, StoreError> {
        let mut tx = self.write().await?;
        tx.lock(Lock::OrganizationOf(user_id)).await?;
        let exists: Option<String> =
            query("SELECT org_id FROM users WHERE id = $1 AND removed_at IS NULL AND kind = $2")
                .bind(user_id)
                .bind(SERVICE_ACCOUNT_KIND)
                .scalar()
                .fetch_optional(&mut tx)
                .await?;
        if exists.is_none() {
            tx.rollback().await?;
            return Ok(Err(Refusal::NotFound));
        }
        let sql = format!(
            "UPDATE users SET name = COALESCE($2, name), \
             role = COALESCE(CAST($3 AS TEXT), role), \
             description = COALESCE($4, description), updated_at = $5 \
             WHERE id = $1 AND removed_at IS NULL AND kind = '{SERVICE_ACCOUNT_KIND}' \
               AND COALESCE(CAST($3 AS TEXT), '') <> 'owner' AND {}",
            manager(6, "users.org_id")
        );
        let updated = query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(&changes.name)
            .bind(&changes.role)
            .bind(&changes.description)
            .bind(audit.at)
            .bind(actor)
            .execute(&mut tx)
            .await;
        finish_account_write(tx, updated, user_id, &audit).await
    }

    async fn org_scopes(&self, org_id: &str) -> Result<Vec<OrgScope>, StoreError> {
        let rows: Vec<ScopeRow> = query(
            "SELECT s.name, s.description, s.created_at, g.grantee FROM org_scopes s \
             LEFT JOIN scope_grants g ON g.org_id = s.org_id AND g.scope = s.name \
             WHERE s.org_id = $1 ORDER BY s.name, g.grantee",
        )
        .bind(org_id)
        .fetch_all(&mut self.read())
        .await?;
        let mut scopes: Vec<OrgScope> = Vec::new();
        for row in rows {
            // Rows come by scope name, one per grant (or one without any).
            if scopes.last().is_none_or(|last| last.name != row.name) {
                scopes.push(OrgScope {
                    name: row.name,
                    description: row.description,
                    created_at: row.created_at,
                    roles: Vec::new(),
                    service_accounts: Vec::new(),
                });
            }
            let Some(scope) = scopes.last_mut() else {
                continue;
            };
            if let Some(grantee) = row.grantee.as_deref() {
                if let Some(role) = grantee.strip_prefix("role:") {
                    scope.roles.push(role.to_owned());
                } else if let Some(user) = grantee.strip_prefix("user:") {
                    scope.service_accounts.push(user.to_owned());
                }
            }
        }
        Ok(scopes)
    }

    async fn create_org_scope(
        &self,
        org_id: &str,
        name: &str,
        description: Option<&str>,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = query(
            "INSERT INTO org_scopes (org_id, name, description, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (org_id, name) DO NOTHING",
        )
        .bind(org_id)
        .bind(name)
        .bind(description)
        .bind(audit.at)
        .execute(&mut tx)
        .await?;
        tx.finish_audited(done, &audit).await
    }

    async fn delete_org_scope(
        &self,
        org_id: &str,
        name: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        query("DELETE FROM scope_grants WHERE org_id = $1 AND scope = $2")
            .bind(org_id)
            .bind(name)
            .execute(&mut tx)
            .await?;
        let done = query("DELETE FROM org_scopes WHERE org_id = $1 AND name = $2")
            .bind(org_id)
            .bind(name)
            .execute(&mut tx)
            .await?;
        tx.finish_audited(done, &audit).await
    }

    async fn set_scope_grant(
        &self,
        org_id: &str,
        scope: &str,
        grantee: &Grantee,
        grant: bool,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = if grant {
            // Granting twice is not an error: the scope is granted either way.
            query(
                "INSERT INTO scope_grants (org_id, scope, grantee, created_at) \
                 SELECT org_id, name, $3, $4 FROM org_scopes WHERE org_id = $1 AND name = $2 \
                 ON CONFLICT (org_id, scope, grantee) DO UPDATE SET created_at = scope_grants.created_at",
            )
            .bind(org_id)
            .bind(scope)
            .bind(grantee.key())
            .bind(audit.at)
            .execute(&mut tx)
            .await?
        } else {
            query("DELETE FROM scope_grants WHERE org_id = $1 AND scope = $2 AND grantee = $3")
                .bind(org_id)
                .bind(scope)
                .bind(grantee.key())
                .execute(&mut tx)
                .await?
        };
        tx.finish_audited(done, &audit).await
    }

    async fn held_org_scopes(
        &self,
        org_id: &str,
        role: &str,
        user_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        query(
            "SELECT DISTINCT scope FROM scope_grants WHERE org_id = $1 AND grantee IN ($2, $3) \
             ORDER BY scope",
        )
        .bind(org_id)
        .bind(Grantee::Role(role.to_owned()).key())
        .bind(Grantee::ServiceAccount(user_id.to_owned()).key())
        .scalar()
        .fetch_all(&mut self.read())
        .await
    }

    async fn token_lifetime_max(&self, org_id: &str) -> Result<Option<Option<i64>>, StoreError> {
        query("SELECT max_token_lifetime_secs FROM organizations WHERE id = $1")
            .bind(org_id)
            .scalar()
            .fetch_optional(&mut self.read())
            .await
    }

    async fn set_token_lifetime_max(
        &self,
        org_id: &str,
        max_secs: Option<i64>,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = query("UPDATE organizations SET max_token_lifetime_secs = $2 WHERE id = $1")
            .bind(org_id)
            .bind(max_secs)
            .execute(&mut tx)
            .await?;
        tx.finish_audited(done, &audit).await
    }

    async fn tokens_expiring(
        &self,
        now: i64,
        until: i64,
        limit: i64,
    ) -> Result<Vec<ExpiringToken>, StoreError> {
        let sql = format!(
            "SELECT t.id AS token_id, t.name, t.expires_at, o.name AS org_name, \
                    u.name AS principal_name, \
                    CASE WHEN u.kind = '{SERVICE_ACCOUNT_KIND}' THEN c.email ELSE u.email END \
                      AS recipient \
             FROM refresh_tokens t \
             JOIN users u ON u.id = t.user_id \
             JOIN organizations o ON o.id = u.org_id \
             LEFT JOIN users c ON c.id = t.created_by AND c.removed_at IS NULL \
               AND c.kind = 'person' \
             WHERE t.named AND t.expires_at IS NOT NULL AND t.expiry_notified_at IS NULL \
               AND t.revoked_at IS NULL AND t.expires_at > $1 AND t.expires_at <= $2 \
               AND t.user_epoch = u.token_epoch AND u.removed_at IS NULL \
             ORDER BY t.expires_at, t.id LIMIT $3"
        );
        query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(until)
            .bind(limit)
            .fetch_all(&mut self.read())
            .await
    }

    async fn claim_expiry_notice(&self, token_id: &str, at: i64) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = query(
            "UPDATE refresh_tokens SET expiry_notified_at = $2 \
             WHERE id = $1 AND expiry_notified_at IS NULL",
        )
        .bind(token_id)
        .bind(at)
        .execute(&mut tx)
        .await?;
        tx.commit_unaudited(Unaudited::ExpiryNotice).await?;
        Ok(done == 1)
    }

    async fn release_expiry_notice(&self, token_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        query("UPDATE refresh_tokens SET expiry_notified_at = NULL WHERE id = $1")
            .bind(token_id)
            .execute(&mut tx)
            .await?;
        tx.commit_unaudited(Unaudited::ExpiryNotice).await
    }
}
