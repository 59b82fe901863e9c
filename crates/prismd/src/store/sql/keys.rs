//! Signing keys.

use async_trait::async_trait;

use super::funnel::{Exec, query};
use super::{Dialect, Lock, SqlStore, Unaudited};
use crate::store::*;

#[async_trait]
impl<D: Dialect> KeyStore for SqlStore<D> {
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        Ok(query(
            "SELECT kid, algorithm, private_key, public_key, created_at, retired_at \
             FROM signing_keys ORDER BY created_at DESC, kid",
        )
        .fetch_all(&mut self.read())
        .await?)
    }

    async fn insert_signing_key_if_none_active(
        &self,
        key: SigningKeyRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        // NOT EXISTS alone is not enough here: two replicas starting at once both see no
        // active key and both insert. The lock makes the second one see the first's key.
        tx.lock(Lock::SigningKeys).await?;
        query(
            "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at, retired_at) \
             SELECT $1, $2, $3, $4, $5, NULL \
             WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE retired_at IS NULL)",
        )
        .bind(&key.kid)
        .bind(&key.algorithm)
        .bind(&key.private_key)
        .bind(&key.public_key)
        .bind(key.created_at)
        .execute(&mut tx)
        .await?;
        tx.commit_unaudited(Unaudited::FirstSigningKey).await
    }

    async fn rotate_signing_key(
        &self,
        key: SigningKeyRecord,
        audit: AuditEvent,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.write().await?;
        // The same lock as the first key: a rotation racing a replica's first start (or
        // another rotation) must leave exactly one active key.
        tx.lock(Lock::SigningKeys).await?;
        let retired = retire_and_insert_signing_key(&mut tx, &key).await?;
        tx.commit_audited(&audit).await?;
        Ok(retired)
    }

    async fn rotate_signing_key_if_stale(
        &self,
        key: SigningKeyRecord,
        audit: AuditEvent,
        active_created_before: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut tx = self.write().await?;
        tx.lock(Lock::SigningKeys).await?;
        // Under the lock, this statement sees every rotation committed before it.
        let young: bool = query(
            "SELECT EXISTS (SELECT 1 FROM signing_keys \
             WHERE retired_at IS NULL AND created_at >= $1)",
        )
        .bind(active_created_before)
        .scalar()
        .fetch_one(&mut tx)
        .await?;
        if young {
            tx.rollback().await?;
            return Ok(None);
        }
        let retired = retire_and_insert_signing_key(&mut tx, &key).await?;
        tx.commit_audited(&audit).await?;
        Ok(Some(retired))
    }

    async fn delete_retired_signing_key(
        &self,
        kid: &str,
        audit: AuditEvent,
    ) -> Result<KeyDeletion, StoreError> {
        let mut tx = self.write().await?;
        tx.lock(Lock::SigningKeys).await?;
        let retired: Option<Option<i64>> =
            query("SELECT retired_at FROM signing_keys WHERE kid = $1")
                .bind(kid)
                .scalar()
                .fetch_optional(&mut tx)
                .await?;
        let outcome = match retired {
            None => KeyDeletion::NotFound,
            Some(None) => KeyDeletion::Active,
            Some(Some(_)) => {
                query("DELETE FROM signing_keys WHERE kid = $1")
                    .bind(kid)
                    .execute(&mut tx)
                    .await?;
                KeyDeletion::Deleted
            }
        };
        if outcome == KeyDeletion::Deleted {
            tx.commit_audited(&audit).await?;
        } else {
            tx.rollback().await?;
        }
        Ok(outcome)
    }

    async fn replace_private_keys(
        &self,
        replacements: &[PrivateKeyReplacement],
        audit: AuditEvent,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.write().await?;
        tx.lock(Lock::SigningKeys).await?;
        let mut replaced = Vec::new();
        for replacement in replacements {
            // Only if unchanged: another process may have sealed or deleted the key meanwhile.
            let done = query(
                "UPDATE signing_keys SET private_key = $1 WHERE kid = $2 AND private_key = $3",
            )
            .bind(&replacement.sealed)
            .bind(&replacement.kid)
            .bind(&replacement.previous)
            .execute(&mut tx)
            .await?;
            if done > 0 {
                replaced.push(replacement.kid.clone());
            }
        }
        if replaced.is_empty() {
            tx.rollback().await?;
            return Ok(replaced);
        }
        tx.commit_audited(&audit).await?;
        Ok(replaced)
    }
}

/// Retires every active key (as of `key.created_at`) and makes `key` the active one; returns
/// the kids it retired. The caller holds [`Lock::SigningKeys`].
async fn retire_and_insert_signing_key(
    tx: &mut impl Exec,
    key: &SigningKeyRecord,
) -> Result<Vec<String>, StoreError> {
    let retired: Vec<String> =
        query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL RETURNING kid")
            .bind(key.created_at)
            .scalar()
            .fetch_all(tx)
            .await?;
    query(
        "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at, retired_at) \
         VALUES ($1, $2, $3, $4, $5, NULL)",
    )
    .bind(&key.kid)
    .bind(&key.algorithm)
    .bind(&key.private_key)
    .bind(&key.public_key)
    .bind(key.created_at)
    .execute(tx)
    .await?;
    Ok(retired)
}
