//! Trust policies (keyless CI), their sessions, and the OIDC tokens exchanged under them.

use async_trait::async_trait;

use super::access::manager;
use super::funnel::query;
use super::{Dialect, Lock, SqlStore, Write, is_unique_violation};
use crate::store::*;

/// The columns of a [`TrustPolicyRecord`] (`p`: trust_policies).
macro_rules! policy_columns {
    () => {
        "p.id, p.org_id, p.name, p.description, p.issuer, p.audience, p.conditions, \
         p.service_account_id, p.scopes, p.access_token_ttl_secs, p.max_token_age_secs, \
         p.enabled, p.created_at, p.updated_at, p.last_used_at"
    };
}

/// [`TrustStore::trust_candidates`]: the enabled policies of an issuer (`$1`), each with its
/// service account and organization.
const CANDIDATES_SQL: &str = concat!(
    "SELECT ",
    policy_columns!(),
    ", o.tenant_id, u.role AS account_role, u.token_epoch AS account_epoch, \
       u.removed_at AS account_removed_at, \
       COALESCE((SELECT string_agg(g.scope, ' ') FROM scope_grants g \
         WHERE g.org_id = u.org_id AND g.grantee IN ('role:' || u.role, 'user:' || u.id)), '') \
         AS held_org_scopes \
     FROM trust_policies p \
     JOIN users u ON u.id = p.service_account_id \
     JOIN organizations o ON o.id = p.org_id \
     WHERE p.issuer = $1 AND p.enabled \
     ORDER BY p.org_id, p.name"
);

/// An exchange's session: a refresh token of the policy's service account (`$3`, which must
/// still be live) whose hash (`$2`) no secret has, tagged with the policy (`$9`).
pub(crate) const INSERT_SESSION_SQL: &str = "INSERT INTO refresh_tokens (id, token_hash, user_id, \
     user_epoch, client_id, name, scope, created_at, named, expires_at, trust_policy_id) \
     SELECT $1, $2, u.id, u.token_epoch, 'keyless', $4, $5, $6, FALSE, $7, $8 FROM users u \
     WHERE u.id = $3 AND u.kind = 'service' AND u.removed_at IS NULL";

/// Spends an OIDC token's replay key (`$1`, of the issuer `$2`, until `$3`): no row when it
/// was spent before, here or on another replica.
pub(crate) const SPEND_TOKEN_SQL: &str = "INSERT INTO oidc_token_uses (token_key, issuer, \
     expires_at) VALUES ($1, $2, $3) ON CONFLICT (token_key) DO NOTHING";

/// Notes a policy's (`$1`) use at `$2`: no row when it was disabled, deleted or moved to
/// another account than `$3` meanwhile (a change in between ended the sessions it started;
/// the new one would be refused at once, so the exchange is refused instead).
pub(crate) const NOTE_POLICY_USE_SQL: &str = "UPDATE trust_policies SET last_used_at = $2 \
     WHERE id = $1 AND enabled AND service_account_id = $3";

/// Whether the policy's service account is a live one of its organization.
async fn account_live<D: Dialect>(
    tx: &mut Write<'_, D>,
    policy: &TrustPolicyRecord,
) -> Result<bool, StoreError> {
    let found: Option<String> = query(
        "SELECT id FROM users WHERE id = $1 AND org_id = $2 AND kind = 'service' \
         AND removed_at IS NULL",
    )
    .bind(&policy.service_account_id)
    .bind(&policy.org_id)
    .scalar()
    .fetch_optional(tx)
    .await?;
    Ok(found.is_some())
}

/// Revokes every live session a policy started: every access token it issued ends.
async fn end_sessions<D: Dialect>(
    tx: &mut Write<'_, D>,
    policy_id: &str,
    at: i64,
) -> Result<(), StoreError> {
    query(
        "UPDATE refresh_tokens SET revoked_at = $2 \
         WHERE trust_policy_id = $1 AND revoked_at IS NULL",
    )
    .bind(policy_id)
    .bind(at)
    .execute(tx)
    .await?;
    Ok(())
}

async fn read_policy(
    on: &mut impl super::funnel::Exec,
    org_id: &str,
    id: &str,
) -> Result<Option<TrustPolicyRecord>, StoreError> {
    query(concat!(
        "SELECT ",
        policy_columns!(),
        " FROM trust_policies p WHERE p.org_id = $1 AND p.id = $2"
    ))
    .bind(org_id)
    .bind(id)
    .fetch_optional(on)
    .await
}

/// Ends a policy write: a row written is read back and committed with `audit`; none written
/// (the actor may not) or a name taken is a refusal.
async fn finish_policy_write<D: Dialect>(
    mut tx: Write<'_, D>,
    written: Result<u64, StoreError>,
    org_id: &str,
    id: &str,
    audit: &AuditEvent,
) -> Result<Result<TrustPolicyRecord, Refusal>, StoreError> {
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
    let Some(policy) = read_policy(&mut tx, org_id, id).await? else {
        tx.rollback().await?;
        return Ok(Err(Refusal::NotFound));
    };
    tx.commit_audited(audit).await?;
    Ok(Ok(policy))
}

#[async_trait]
impl<D: Dialect> TrustStore for SqlStore<D> {
    async fn create_trust_policy(
        &self,
        policy: TrustPolicyRecord,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<TrustPolicyRecord, Refusal>, StoreError> {
        let mut tx = self.write().await?;
        tx.lock(Lock::Organization(&policy.org_id)).await?;
        if !account_live(&mut tx, &policy).await? {
            tx.rollback().await?;
            return Ok(Err(Refusal::NotFound));
        }
        let sql = format!(
            "INSERT INTO trust_policies (id, org_id, name, description, issuer, audience, \
             conditions, service_account_id, scopes, access_token_ttl_secs, \
             max_token_age_secs, enabled, created_at, updated_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13 WHERE {}",
            manager(14, "$2")
        );
        let inserted = query(sqlx::AssertSqlSafe(sql))
            .bind(&policy.id)
            .bind(&policy.org_id)
            .bind(&policy.name)
            .bind(&policy.description)
            .bind(&policy.issuer)
            .bind(&policy.audience)
            .bind(&policy.conditions)
            .bind(&policy.service_account_id)
            .bind(&policy.scopes)
            .bind(policy.access_token_ttl_secs)
            .bind(policy.max_token_age_secs)
            .bind(policy.enabled)
            .bind(policy.created_at)
            .bind(actor)
            .execute(&mut tx)
            .await;
        finish_policy_write(tx, inserted, &policy.org_id, &policy.id, &audit).await
    }

    async fn trust_policies(&self, org_id: &str) -> Result<Vec<TrustPolicyRecord>, StoreError> {
        query(concat!(
            "SELECT ",
            policy_columns!(),
            " FROM trust_policies p WHERE p.org_id = $1 ORDER BY p.name"
        ))
        .bind(org_id)
        .fetch_all(&mut self.read())
        .await
    }

    async fn trust_policy(
        &self,
        org_id: &str,
        id: &str,
    ) -> Result<Option<TrustPolicyRecord>, StoreError> {
        read_policy(&mut self.read(), org_id, id).await
    }

    async fn update_trust_policy(
        &self,
        policy: TrustPolicyRecord,
        end: bool,
        actor: Actor<'_>,
        audit: AuditEvent,
        also: Option<AuditEvent>,
    ) -> Result<Result<TrustPolicyRecord, Refusal>, StoreError> {
        let mut tx = self.write().await?;
        tx.lock(Lock::Organization(&policy.org_id)).await?;
        if !account_live(&mut tx, &policy).await? {
            tx.rollback().await?;
            return Ok(Err(Refusal::NotFound));
        }
        let sql = format!(
            "UPDATE trust_policies SET name = $3, description = $4, issuer = $5, \
             audience = $6, conditions = $7, service_account_id = $8, scopes = $9, \
             access_token_ttl_secs = $10, max_token_age_secs = $11, enabled = $12, \
             updated_at = $13 WHERE org_id = $1 AND id = $2 AND {}",
            manager(14, "$1")
        );
        let updated = query(sqlx::AssertSqlSafe(sql))
            .bind(&policy.org_id)
            .bind(&policy.id)
            .bind(&policy.name)
            .bind(&policy.description)
            .bind(&policy.issuer)
            .bind(&policy.audience)
            .bind(&policy.conditions)
            .bind(&policy.service_account_id)
            .bind(&policy.scopes)
            .bind(policy.access_token_ttl_secs)
            .bind(policy.max_token_age_secs)
            .bind(policy.enabled)
            .bind(policy.updated_at)
            .bind(actor)
            .execute(&mut tx)
            .await;
        if end && matches!(updated, Ok(1)) {
            end_sessions(&mut tx, &policy.id, policy.updated_at).await?;
        }
        if let (Some(also), Ok(1)) = (also.as_ref(), &updated) {
            tx.audit(also).await?;
        }
        finish_policy_write(tx, updated, &policy.org_id, &policy.id, &audit).await
    }

    async fn delete_trust_policy(
        &self,
        org_id: &str,
        id: &str,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let mut tx = self.write().await?;
        tx.lock(Lock::Organization(org_id)).await?;
        if read_policy(&mut tx, org_id, id).await?.is_none() {
            tx.rollback().await?;
            return Ok(Err(Refusal::NotFound));
        }
        let sql = format!(
            "DELETE FROM trust_policies WHERE org_id = $1 AND id = $2 AND {}",
            manager(3, "$1")
        );
        let deleted = query(sqlx::AssertSqlSafe(sql))
            .bind(org_id)
            .bind(id)
            .bind(actor)
            .execute(&mut tx)
            .await?;
        if deleted == 0 {
            tx.rollback().await?;
            return Ok(Err(Refusal::Forbidden));
        }
        end_sessions(&mut tx, id, audit.at).await?;
        tx.commit_audited(&audit).await?;
        Ok(Ok(()))
    }

    async fn trust_candidates(&self, issuer: &str) -> Result<Vec<TrustCandidate>, StoreError> {
        query(CANDIDATES_SQL)
            .bind(issuer)
            .fetch_all(&mut self.read())
            .await
    }

    async fn record_exchange(
        &self,
        exchange: PolicyExchange,
        audit: AuditEvent,
    ) -> Result<ExchangeWrite, StoreError> {
        if let Some(writer) = self.db.exchange_writer() {
            return writer.record_exchange(exchange, audit).await;
        }
        let mut tx = self.write().await?;
        let spent = query(SPEND_TOKEN_SQL)
            .bind(&exchange.token_key)
            .bind(&exchange.issuer)
            .bind(exchange.token_expires_at)
            .execute(&mut tx)
            .await?;
        if spent == 0 {
            tx.rollback().await?;
            return Ok(ExchangeWrite::Replayed);
        }
        let still = query(NOTE_POLICY_USE_SQL)
            .bind(&exchange.policy_id)
            .bind(exchange.at)
            .bind(&exchange.service_account_id)
            .execute(&mut tx)
            .await?;
        let started = if still == 1 {
            query(INSERT_SESSION_SQL)
                .bind(&exchange.session_id)
                .bind(&exchange.session_hash[..])
                .bind(&exchange.service_account_id)
                .bind(&exchange.session_name)
                .bind(&exchange.scope)
                .bind(exchange.at)
                .bind(exchange.session_expires_at)
                .bind(&exchange.policy_id)
                .execute(&mut tx)
                .await?
        } else {
            0
        };
        if started == 0 {
            tx.rollback().await?;
            return Ok(ExchangeWrite::PolicyGone);
        }
        tx.commit_audited(&audit).await?;
        Ok(ExchangeWrite::Issued)
    }
}
