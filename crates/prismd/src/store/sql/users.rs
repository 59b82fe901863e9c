//! Identities and their members: adding people, profiles and roles (whose rules are
//! conditions of the statements that write), passwords, invitations, password resets,
//! memberships and removal.

use async_trait::async_trait;

use super::funnel::Exec;
use super::funnel::query;
use super::{Dialect, Lock, SqlStore, USER_COLUMNS, Unaudited, Write, is_unique_violation};
use crate::store::*;

/// The columns of an [`Identity`] (`i`: identities).
pub(crate) const IDENTITY_COLUMNS: &str = "i.id, i.email, i.email_verified, \
     (i.password_hash IS NOT NULL) AS has_password, i.invited_by_org, i.created_at";

/// May the member `$actor` (an active, joined member of the target's organization) act on
/// the target row `users` with the new role `$role` (NULL: no role change)? Owners may do
/// anything; Admins may act on non-Owners and never make Owners. `{actor}` and `{role}` are
/// the placeholders' numbers. An operator (a NULL actor) may do anything.
fn actor_may(actor: u8, role: u8) -> String {
    format!(
        "(CAST(${actor} AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM users a \
           WHERE a.id = CAST(${actor} AS TEXT) AND a.org_id = users.org_id \
             AND a.removed_at IS NULL AND a.joined_at IS NOT NULL \
             AND (a.role = 'owner' OR (a.role = 'admin' AND users.role <> 'owner' \
                  AND COALESCE(CAST(${role} AS TEXT), '') <> 'owner'))))"
    )
}

/// The organization keeps an active Owner if the target row `users` stops being one.
const KEEPS_AN_OWNER: &str = "(users.role <> 'owner' OR users.joined_at IS NULL \
     OR (SELECT COUNT(*) FROM users o WHERE o.org_id = users.org_id AND o.role = 'owner' \
         AND o.removed_at IS NULL AND o.joined_at IS NOT NULL) > 1)";

/// A membership row: the member and its organization.
#[derive(sqlx::FromRow)]
struct MembershipRow {
    #[sqlx(flatten)]
    user: User,
    org_name: String,
    tenant_id: String,
    org_created_at: i64,
}

#[async_trait]
impl<D: Dialect> UserStore for SqlStore<D> {
    async fn add_member(
        &self,
        user: NewUser,
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<AddedMember, Refusal>, StoreError> {
        let mut tx = self.write().await?;
        // Role rules are checked in the insert; adds, removals and role changes of one
        // organization take turns on its row, so each sees the others' outcome.
        tx.lock(Lock::Organization(&user.org_id)).await?;
        let created = query(
            "INSERT INTO identities (id, email, password_hash, email_verified, invited_by_org, \
             created_at, updated_at) VALUES ($1, $2, $3, FALSE, $4, $5, $5) \
             ON CONFLICT (email) DO NOTHING",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(&user.invited_by_org)
        .bind(user.created_at)
        .execute(&mut tx)
        .await?
            == 1;
        let identity_id: String = query("SELECT id FROM identities WHERE email = $1")
            .bind(&user.email)
            .scalar()
            .fetch_one(&mut tx)
            .await?;
        let joined_at = match (created, user.join_existing) {
            (true, _) | (false, JoinExisting::AtOnce) => Some(user.created_at),
            (false, JoinExisting::Pending) => None,
            (false, JoinExisting::Refuse) => {
                tx.rollback().await?;
                return Ok(Err(Refusal::IdentityExists));
            }
        };
        if !created && user.password_hash.is_some() {
            // Nobody but the identity (or an operator's set-password) changes its password.
            tx.rollback().await?;
            return Ok(Err(Refusal::IdentityExists));
        }
        let sql = format!(
            "INSERT INTO users (id, org_id, email, name, role, external_id, token_epoch, \
             created_at, updated_at, identity_id, joined_at) \
             SELECT $1, $2, $3, $4, $5, $6, 0, $7, $7, $8, $9 \
             WHERE {}",
            actor_may_insert()
        );
        let inserted = query(sqlx::AssertSqlSafe(sql))
            .bind(&user.id)
            .bind(&user.org_id)
            .bind(&user.email)
            .bind(&user.name)
            .bind(&user.role)
            .bind(&user.external_id)
            .bind(user.created_at)
            .bind(&identity_id)
            .bind(joined_at)
            .bind(actor)
            .execute(&mut tx)
            .await;
        match inserted {
            Ok(1) => {}
            Ok(_) => {
                tx.rollback().await?;
                return Ok(Err(Refusal::Forbidden));
            }
            Err(err) if is_unique_violation(&err) => {
                tx.rollback().await?;
                return Ok(Err(Refusal::AlreadyMember));
            }
            Err(err) => return Err(err),
        }
        tx.commit_audited(&audit).await?;
        Ok(Ok(AddedMember {
            user: User {
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
                identity_id: Some(identity_id),
                joined_at,
                kind: "person".to_owned(),
                description: None,
            },
            new_identity: created,
        }))
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
             AND u.kind = 'person' \
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
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let mut tx = self.write().await?;
        tx.lock(Lock::OrganizationOf(user_id)).await?;
        // Everyone changes their own profile; the role, and other members' profiles, only as
        // `actor_may` allows; the last Owner keeps the role.
        let sql = format!(
            "UPDATE users SET name = COALESCE($2, name), phone = COALESCE($3, phone), \
             dark_mode = COALESCE($4, dark_mode), \
             dark_mode_sync_with_os = COALESCE($5, dark_mode_sync_with_os), updated_at = $6, \
             role = COALESCE(CAST($7 AS TEXT), role) \
             WHERE id = $1 AND removed_at IS NULL \
               AND (CAST($7 AS TEXT) IS NULL OR CAST($7 AS TEXT) = 'owner' OR {KEEPS_AN_OWNER}) \
               AND ((id = CAST($8 AS TEXT) AND CAST($7 AS TEXT) IS NULL) OR {})",
            actor_may(8, 7)
        );
        let done = query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(changes.name)
            .bind(changes.phone)
            .bind(changes.dark_mode)
            .bind(changes.dark_mode_sync_with_os)
            .bind(audit.at)
            .bind(changes.role.clone())
            .bind(actor)
            .execute(&mut tx)
            .await?;
        if done == 0 {
            let why = refusal(
                &mut tx,
                user_id,
                actor,
                Refused::Profile(changes.role.as_deref()),
            )
            .await?;
            tx.rollback().await?;
            return Ok(Err(why));
        }
        tx.commit_audited(&audit).await?;
        Ok(Ok(()))
    }

    async fn insert_invitation(
        &self,
        token_hash: &[u8; 32],
        user_id: &str,
        expires_at: i64,
        delivery: Delivery,
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
            "INSERT INTO invitations (token_hash, user_id, created_at, expires_at, delivery) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token_hash[..])
        .bind(user_id)
        .bind(audit.at)
        .bind(expires_at)
        .bind(delivery.key())
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
            "SELECT {USER_COLUMNS} FROM invitations v JOIN users u ON u.id = v.user_id \
             JOIN identities i ON i.id = u.identity_id \
             WHERE v.token_hash = $1 AND v.used_at IS NULL AND v.expires_at > $2 \
             AND u.removed_at IS NULL AND i.password_hash IS NULL"
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
        let spent: Option<(String, String)> = query(
            "UPDATE invitations SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL \
             AND expires_at > $2 RETURNING user_id, delivery",
        )
        .bind(&token_hash[..])
        .bind(audit.at)
        .fetch_optional(&mut tx)
        .await?;
        let Some((user_id, delivery)) = spent else {
            tx.rollback().await?;
            return Ok(false);
        };
        // An invitation only ever gives a first password: it cannot reset an existing one.
        // A mailed one proves the address. One handed to an Admin works only while the
        // identity belongs to that Admin's organization alone: the password it sets must not
        // open an organization someone else (an operator) added the person to meanwhile.
        let done = query(
            "UPDATE identities SET password_hash = $2, updated_at = $3, invited_by_org = NULL, \
             email_verified = (email_verified OR $4) \
             WHERE password_hash IS NULL AND id = \
               (SELECT identity_id FROM users WHERE id = $1 AND removed_at IS NULL) \
               AND ($5 <> 'handed' OR NOT EXISTS (SELECT 1 FROM users o \
                    WHERE o.identity_id = identities.id AND o.removed_at IS NULL \
                      AND o.org_id <> (SELECT org_id FROM users WHERE id = $1)))",
        )
        .bind(&user_id)
        .bind(password_hash)
        .bind(audit.at)
        .bind(delivery == Delivery::Email.key())
        .bind(&delivery)
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
             AND u.kind = 'person' ORDER BY u.created_at, u.id"
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
        actor: Actor<'_>,
        audit: AuditEvent,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let mut tx = self.write().await?;
        // Two concurrent removals of two different Owners would each count the other as still
        // active (neither has committed). Locking the organization's row first makes them
        // take turns, and the count in the UPDATE below then sees the earlier removal. NO KEY
        // UPDATE does not block inserts that merely reference the organization.
        tx.lock(Lock::OrganizationOf(user_id)).await?;
        // The epoch moves too, so even a future bug that forgot the removed flag would still
        // find every old token stale.
        let sql = format!(
            "UPDATE users SET removed_at = $2, updated_at = $2, token_epoch = token_epoch + 1 \
             WHERE id = $1 AND removed_at IS NULL AND {KEEPS_AN_OWNER} AND {}",
            actor_may(3, 4)
        );
        let done = query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(at)
            .bind(actor)
            .bind(None::<&str>)
            .execute(&mut tx)
            .await?;
        if done == 0 {
            let why = refusal(&mut tx, user_id, actor, Refused::Removal).await?;
            tx.rollback().await?;
            return Ok(Err(why));
        }
        // A removed service account's trust policies go with it (the removal's audit row
        // says so for all of them): they could never issue a token again.
        query("DELETE FROM trust_policies WHERE service_account_id = $1")
            .bind(user_id)
            .execute(&mut tx)
            .await?;
        tx.commit_audited(&audit).await?;
        Ok(Ok(()))
    }

    async fn identity(&self, identity_id: &str) -> Result<Option<Identity>, StoreError> {
        let sql = format!("SELECT {IDENTITY_COLUMNS} FROM identities i WHERE i.id = $1");
        query(sqlx::AssertSqlSafe(sql))
            .bind(identity_id)
            .fetch_optional(&mut self.read())
            .await
    }

    async fn identity_by_email(
        &self,
        email: &str,
    ) -> Result<Option<IdentityCredentials>, StoreError> {
        let sql = format!(
            "SELECT {IDENTITY_COLUMNS}, i.password_hash FROM identities i WHERE i.email = $1"
        );
        query(sqlx::AssertSqlSafe(sql))
            .bind(email)
            .fetch_optional(&mut self.read())
            .await
    }

    async fn memberships(&self, identity_id: &str) -> Result<Vec<Membership>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, o.name AS org_name, o.tenant_id, o.created_at AS org_created_at \
             FROM users u JOIN organizations o ON o.id = u.org_id \
             WHERE u.identity_id = $1 AND u.removed_at IS NULL ORDER BY o.created_at, o.id"
        );
        let rows: Vec<MembershipRow> = query(sqlx::AssertSqlSafe(sql))
            .bind(identity_id)
            .fetch_all(&mut self.read())
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| Membership {
                org: Organization {
                    id: row.user.org_id.clone(),
                    name: row.org_name,
                    tenant_id: row.tenant_id,
                    created_at: row.org_created_at,
                },
                user: row.user,
            })
            .collect())
    }

    async fn accept_membership(
        &self,
        identity_id: &str,
        user_id: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        // Only an identity whose address is proven joins where another organization invited
        // it: otherwise whoever set an unverified identity's password (the Admin it was handed
        // to) would join in its name.
        let done = query(
            "UPDATE users SET joined_at = $3, updated_at = $3 \
             WHERE id = $2 AND identity_id = $1 AND removed_at IS NULL AND joined_at IS NULL \
               AND EXISTS (SELECT 1 FROM identities i WHERE i.id = $1 AND i.email_verified)",
        )
        .bind(identity_id)
        .bind(user_id)
        .bind(audit.at)
        .execute(&mut tx)
        .await?;
        tx.finish_audited(done, &audit).await
    }

    async fn set_identity_password(
        &self,
        identity_id: &str,
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = query(
            "UPDATE identities SET password_hash = $2, updated_at = $3, invited_by_org = NULL \
             WHERE id = $1",
        )
        .bind(identity_id)
        .bind(password_hash)
        .bind(audit.at)
        .execute(&mut tx)
        .await?;
        if done == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        end_identity_browser_sessions(&mut tx, identity_id).await?;
        forget_upgrade_notice(&mut tx, identity_id).await?;
        audit_each_member(&mut tx, identity_id, &audit).await?;
        tx.commit_unaudited(Unaudited::AuditedPerMember).await?;
        Ok(true)
    }

    async fn insert_password_reset(
        &self,
        token_hash: &[u8; 32],
        identity_id: &str,
        expires_at: i64,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        // A new link replaces the earlier ones.
        query("UPDATE password_resets SET used_at = $2 WHERE identity_id = $1 AND used_at IS NULL")
            .bind(identity_id)
            .bind(audit.at)
            .execute(&mut tx)
            .await?;
        query(
            "INSERT INTO password_resets (token_hash, identity_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&token_hash[..])
        .bind(identity_id)
        .bind(audit.at)
        .bind(expires_at)
        .execute(&mut tx)
        .await?;
        audit_each_member(&mut tx, identity_id, &audit).await?;
        tx.commit_unaudited(Unaudited::AuditedPerMember).await?;
        Ok(())
    }

    async fn password_reset_identity(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<Identity>, StoreError> {
        let sql = format!(
            "SELECT {IDENTITY_COLUMNS} FROM password_resets r JOIN identities i ON i.id = r.identity_id \
             WHERE r.token_hash = $1 AND r.used_at IS NULL AND r.expires_at > $2"
        );
        query(sqlx::AssertSqlSafe(sql))
            .bind(&token_hash[..])
            .bind(now)
            .fetch_optional(&mut self.read())
            .await
    }

    async fn accept_password_reset(
        &self,
        token_hash: &[u8; 32],
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let identity_id: Option<String> = query(
            "UPDATE password_resets SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL \
             AND expires_at > $2 RETURNING identity_id",
        )
        .bind(&token_hash[..])
        .bind(audit.at)
        .scalar()
        .fetch_optional(&mut tx)
        .await?;
        let Some(identity_id) = identity_id else {
            tx.rollback().await?;
            return Ok(false);
        };
        // The link reached the mailbox: the address is proven.
        query(
            "UPDATE identities SET password_hash = $2, updated_at = $3, invited_by_org = NULL, \
             email_verified = TRUE WHERE id = $1",
        )
        .bind(&identity_id)
        .bind(password_hash)
        .bind(audit.at)
        .execute(&mut tx)
        .await?;
        query("UPDATE password_resets SET used_at = $2 WHERE identity_id = $1 AND used_at IS NULL")
            .bind(&identity_id)
            .bind(audit.at)
            .execute(&mut tx)
            .await?;
        end_identity_browser_sessions(&mut tx, &identity_id).await?;
        forget_upgrade_notice(&mut tx, &identity_id).await?;
        audit_each_member(&mut tx, &identity_id, &audit).await?;
        tx.commit_unaudited(Unaudited::AuditedPerMember).await?;
        Ok(true)
    }

    async fn active_user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1 AND u.removed_at IS NULL \
             AND u.joined_at IS NOT NULL"
        );
        Ok(query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_optional(&mut self.read())
            .await?)
    }

    async fn identity_upgrade_notices(&self) -> Result<Vec<String>, StoreError> {
        query(
            "SELECT n.email FROM identity_upgrade_notices n \
             JOIN identities i ON i.email = n.email \
             WHERE i.password_hash IS NULL ORDER BY n.email",
        )
        .scalar()
        .fetch_all(&mut self.read())
        .await
    }
}

/// The role rule for adding a member (`$2` organization, `$5` role, `$10` actor), like
/// [`actor_may`] but over the row being inserted.
fn actor_may_insert() -> &'static str {
    "(CAST($10 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM users a \
       WHERE a.id = CAST($10 AS TEXT) AND a.org_id = $2 AND a.removed_at IS NULL \
         AND a.joined_at IS NOT NULL \
         AND (a.role = 'owner' OR (a.role = 'admin' AND $5 <> 'owner'))))"
}

/// The change a refused write was.
enum Refused<'a> {
    /// A profile change, with the new role if any.
    Profile(Option<&'a str>),
    Removal,
}

/// Why a conditional change of `user_id` wrote nothing, read in its transaction for the
/// message only (the decision was the write's).
async fn refusal(
    tx: &mut impl Exec,
    user_id: &str,
    actor: Actor<'_>,
    change: Refused<'_>,
) -> Result<Refusal, StoreError> {
    let new_role = match change {
        Refused::Profile(role) => role,
        Refused::Removal => None,
    };
    let target: Option<(String, String)> =
        query("SELECT org_id, role FROM users WHERE id = $1 AND removed_at IS NULL")
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((org_id, target_role)) = target else {
        return Ok(Refusal::NotFound);
    };
    let Some(actor) = actor else {
        return Ok(Refusal::LastOwner);
    };
    // Everyone may change their own profile (without the role): only the Owner rule refuses.
    if actor == user_id && matches!(change, Refused::Profile(None)) {
        return Ok(Refusal::LastOwner);
    }
    let actor_role: Option<String> = query(
        "SELECT role FROM users WHERE id = $1 AND org_id = $2 AND removed_at IS NULL \
         AND joined_at IS NOT NULL",
    )
    .bind(actor)
    .bind(&org_id)
    .scalar()
    .fetch_optional(&mut *tx)
    .await?;
    let allowed = match actor_role.as_deref() {
        Some("owner") => true,
        Some("admin") => target_role != "owner" && new_role != Some("owner"),
        _ => false,
    };
    Ok(if allowed {
        Refusal::LastOwner
    } else {
        Refusal::Forbidden
    })
}

/// Writes `event` once per active member of the identity (each organization's trail shows it,
/// and each member's cached state is dropped), or once about no one when it has none.
async fn audit_each_member<D: Dialect>(
    tx: &mut Write<'_, D>,
    identity_id: &str,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    let members: Vec<(String, String)> =
        query("SELECT id, org_id FROM users WHERE identity_id = $1 AND removed_at IS NULL")
            .bind(identity_id)
            .fetch_all(&mut *tx)
            .await?;
    if members.is_empty() {
        return tx.audit(event).await;
    }
    for (user_id, org_id) in members {
        tx.audit(&AuditEvent {
            org_id: Some(org_id),
            subject_user_id: Some(user_id),
            ..event.clone()
        })
        .await?;
    }
    Ok(())
}

async fn forget_upgrade_notice(tx: &mut impl Exec, identity_id: &str) -> Result<(), StoreError> {
    query(
        "DELETE FROM identity_upgrade_notices WHERE email = \
         (SELECT email FROM identities WHERE id = $1)",
    )
    .bind(identity_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// Creates an identity and its first member in the caller's transaction (first start).
pub(super) async fn insert_identity_and_member(
    tx: &mut impl Exec,
    user: &NewUser,
) -> Result<(), StoreError> {
    let identity_id = uuid::Uuid::new_v4().to_string();
    query(
        "INSERT INTO identities (id, email, password_hash, email_verified, created_at, updated_at) \
         VALUES ($1, $2, $3, FALSE, $4, $4)",
    )
    .bind(&identity_id)
    .bind(&user.email)
    .bind(&user.password_hash)
    .bind(user.created_at)
    .execute(&mut *tx)
    .await?;
    query(
        "INSERT INTO users (id, org_id, email, name, role, external_id, token_epoch, \
         created_at, updated_at, identity_id, joined_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7, $8, $7)",
    )
    .bind(&user.id)
    .bind(&user.org_id)
    .bind(&user.email)
    .bind(&user.name)
    .bind(&user.role)
    .bind(&user.external_id)
    .bind(user.created_at)
    .bind(&identity_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// The statement that signs the identity of a member (`$1`) out of every browser; shared
/// with SQLite's revoke thread.
pub(crate) const END_BROWSER_SESSIONS_SQL: &str = "DELETE FROM browser_sessions WHERE identity_id IN \
     (SELECT identity_id FROM users WHERE id = $1)";

/// Signs the identity of a member out of every browser, in the caller's transaction: a
/// revoke-all or a new password must not leave a browser session that can mint new codes.
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

/// Signs an identity out of every browser, in the caller's transaction.
async fn end_identity_browser_sessions(
    tx: &mut impl Exec,
    identity_id: &str,
) -> Result<(), StoreError> {
    query("DELETE FROM browser_sessions WHERE identity_id = $1")
        .bind(identity_id)
        .execute(tx)
        .await?;
    Ok(())
}
