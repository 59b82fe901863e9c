//! Resource servers: the clients that may introspect access tokens, with their secret hashes.

use async_trait::async_trait;

use super::funnel::query;
use super::{Dialect, Lock, SqlStore, Write, is_unique_violation};
use crate::store::*;

const COLUMNS: &str = "id, org_id, name, description, secret_hash, created_at, secret_set_at";

/// May `$actor` register or change the resource servers of the organization `{org}`? One of
/// its active Owners may; an operator (NULL) may, and alone for instance-wide ones (a NULL
/// `{org}` matches no member).
fn owner(actor: u8, org: &str) -> String {
    format!(
        "(CAST(${actor} AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM users a \
           WHERE a.id = CAST(${actor} AS TEXT) AND a.org_id = {org} AND a.removed_at IS NULL \
             AND a.joined_at IS NOT NULL AND a.role = 'owner'))"
    )
}

/// The resource server `$1` of the organization `$2` (NULL: an instance-wide one).
const ONE_OF_ORG: &str = "id = $1 AND COALESCE(org_id, '') = COALESCE(CAST($2 AS TEXT), '')";

async fn read_server(
    on: &mut impl super::funnel::Exec,
    id: &str,
) -> Result<Option<ResourceServerRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM resource_servers WHERE id = $1");
    query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(on)
        .await
}

/// Locks the organization whose Owners are about to be read (none for an instance-wide one,
/// which only an operator writes).
async fn lock_owners<D: Dialect>(
    tx: &mut Write<'_, D>,
    org_id: Option<&str>,
) -> Result<(), StoreError> {
    match org_id {
        Some(org_id) => tx.lock(Lock::Organization(org_id)).await,
        None => Ok(()),
    }
}

/// Whether the organization `org_id` has the resource server `id`.
async fn exists<D: Dialect>(
    tx: &mut Write<'_, D>,
    org_id: Option<&str>,
    id: &str,
) -> Result<bool, StoreError> {
    let sql = format!("SELECT id FROM resource_servers WHERE {ONE_OF_ORG}");
    let found: Option<String> = query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(org_id)
        .scalar()
        .fetch_optional(tx)
        .await?;
    Ok(found.is_some())
}

#[async_trait]
impl<D: Dialect> ResourceServerStore for SqlStore<D> {
    async fn create_resource_server(
        &self,
        server: ResourceServerRecord,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<ResourceServerRecord, Refusal>, StoreError> {
        let mut tx = self.write().await?;
        lock_owners(&mut tx, server.org_id.as_deref()).await?;
        let sql = format!(
            "INSERT INTO resource_servers ({COLUMNS}) \
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE {}",
            owner(8, "$2")
        );
        let inserted = query(sqlx::AssertSqlSafe(sql))
            .bind(&server.id)
            .bind(&server.org_id)
            .bind(&server.name)
            .bind(&server.description)
            .bind(&server.secret_hash)
            .bind(server.created_at)
            .bind(server.secret_set_at)
            .bind(actor)
            .execute(&mut tx)
            .await;
        let refusal = match inserted {
            Ok(1) => None,
            Ok(_) => Some(Refusal::Forbidden),
            Err(err) if is_unique_violation(&err) => Some(Refusal::NameTaken),
            Err(err) => return Err(err),
        };
        if let Some(refusal) = refusal {
            tx.rollback().await?;
            return Ok(Err(refusal));
        }
        tx.commit_audited(&audit).await?;
        Ok(Ok(server))
    }

    async fn resource_servers(
        &self,
        org_id: Option<&str>,
    ) -> Result<Vec<ResourceServerRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM resource_servers \
             WHERE COALESCE(org_id, '') = COALESCE(CAST($1 AS TEXT), '') ORDER BY name"
        );
        query(sqlx::AssertSqlSafe(sql))
            .bind(org_id)
            .fetch_all(&mut self.read())
            .await
    }

    async fn resource_server(&self, id: &str) -> Result<Option<ResourceServerRecord>, StoreError> {
        let mut reader = self.read();
        let read = read_server(&mut reader, id);
        match &self.cache {
            Some(cache) => cache.resource_server(id, read).await,
            None => read.await,
        }
    }

    async fn set_resource_server_secret(
        &self,
        org_id: Option<&str>,
        id: &str,
        secret_hash: Vec<u8>,
        at: i64,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<ResourceServerRecord, Refusal>, StoreError> {
        let mut tx = self.write().await?;
        lock_owners(&mut tx, org_id).await?;
        if !exists(&mut tx, org_id, id).await? {
            tx.rollback().await?;
            return Ok(Err(Refusal::NotFound));
        }
        let sql = format!(
            "UPDATE resource_servers SET secret_hash = $3, secret_set_at = $4 \
             WHERE {ONE_OF_ORG} AND {}",
            owner(5, "resource_servers.org_id")
        );
        let updated = query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(org_id)
            .bind(&secret_hash)
            .bind(at)
            .bind(actor)
            .execute(&mut tx)
            .await?;
        let server = match (updated, read_server(&mut tx, id).await?) {
            (1, Some(server)) => server,
            _ => {
                tx.rollback().await?;
                return Ok(Err(Refusal::Forbidden));
            }
        };
        tx.commit_audited(&audit).await?;
        Ok(Ok(server))
    }

    async fn delete_resource_server(
        &self,
        org_id: Option<&str>,
        id: &str,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let mut tx = self.write().await?;
        lock_owners(&mut tx, org_id).await?;
        if !exists(&mut tx, org_id, id).await? {
            tx.rollback().await?;
            return Ok(Err(Refusal::NotFound));
        }
        let sql = format!(
            "DELETE FROM resource_servers WHERE {ONE_OF_ORG} AND {}",
            owner(3, "resource_servers.org_id")
        );
        let deleted = query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(org_id)
            .bind(actor)
            .execute(&mut tx)
            .await?;
        if deleted != 1 {
            tx.rollback().await?;
            return Ok(Err(Refusal::Forbidden));
        }
        tx.commit_audited(&audit).await?;
        Ok(Ok(()))
    }
}
