//! Organizations and their session policies.

use async_trait::async_trait;

use super::funnel::{Exec, query};
use super::users::insert_identity_and_member;
use super::{Dialect, Lock, SqlStore};
use crate::store::*;

#[async_trait]
impl<D: Dialect> OrganizationStore for SqlStore<D> {
    async fn bootstrap(
        &self,
        org: NewOrganization,
        owner: NewUser,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        // Two replicas starting on an empty database both see no organization; the lock makes
        // the second wait, and its count (a new snapshot per statement at READ COMMITTED)
        // then sees the first one's commit.
        tx.lock(Lock::Bootstrap).await?;
        let existing: i64 = query("SELECT COUNT(*) FROM organizations")
            .scalar()
            .fetch_one(&mut tx)
            .await?;
        if existing > 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_organization(&mut tx, &org).await?;
        insert_identity_and_member(&mut tx, &owner).await?;
        tx.commit_audited(&audit).await?;
        Ok(true)
    }

    async fn default_organization(&self) -> Result<Option<Organization>, StoreError> {
        Ok(query(
            "SELECT id, name, tenant_id, created_at FROM organizations ORDER BY created_at, id LIMIT 1",
        )
        .fetch_optional(&mut self.read())
        .await?)
    }

    async fn list_organizations(&self) -> Result<Vec<Organization>, StoreError> {
        Ok(query(
            "SELECT id, name, tenant_id, created_at FROM organizations ORDER BY created_at, id",
        )
        .fetch_all(&mut self.read())
        .await?)
    }

    async fn organization_by_tenant(
        &self,
        tenant_id: &str,
    ) -> Result<Option<Organization>, StoreError> {
        Ok(
            query("SELECT id, name, tenant_id, created_at FROM organizations WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_optional(&mut self.read())
                .await?,
        )
    }

    async fn create_organization(
        &self,
        org: NewOrganization,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        insert_organization(&mut tx, &org).await?;
        tx.commit_audited(&audit).await?;
        Ok(())
    }

    async fn session_policy(&self, org_id: &str) -> Result<Option<SessionPolicy>, StoreError> {
        Ok(query(
            "SELECT refresh_idle_expiry_secs AS idle_expiry_secs, \
                    refresh_max_age_secs AS max_age_secs \
             FROM organizations WHERE id = $1",
        )
        .bind(org_id)
        .fetch_optional(&mut self.read())
        .await?)
    }

    async fn set_session_policy(
        &self,
        org_id: &str,
        expected: SessionPolicy,
        policy: SessionPolicy,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = query(
            "UPDATE organizations SET refresh_idle_expiry_secs = $2, refresh_max_age_secs = $3 \
             WHERE id = $1 AND refresh_idle_expiry_secs IS NOT DISTINCT FROM $4 \
               AND refresh_max_age_secs IS NOT DISTINCT FROM $5",
        )
        .bind(org_id)
        .bind(policy.idle_expiry_secs)
        .bind(policy.max_age_secs)
        .bind(expected.idle_expiry_secs)
        .bind(expected.max_age_secs)
        .execute(&mut tx)
        .await?;
        tx.finish_audited(done, &audit).await
    }
}

async fn insert_organization(tx: &mut impl Exec, org: &NewOrganization) -> Result<(), StoreError> {
    query("INSERT INTO organizations (id, name, tenant_id, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&org.id)
        .bind(&org.name)
        .bind(&org.tenant_id)
        .bind(org.created_at)
        .execute(tx)
        .await?;
    Ok(())
}
