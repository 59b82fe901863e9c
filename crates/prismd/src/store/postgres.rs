//! The PostgreSQL backend: one connection pool shared by reads and writes (PostgreSQL takes
//! concurrent writers, unlike SQLite), the same statements as the SQLite backend, and explicit
//! locks where SQLite's single writer used to serialize for free (last Owner, first start,
//! the first signing key, device-code polls).
//!
//! Transactions run at READ COMMITTED. Every single-use rule is a conditional `UPDATE` (or
//! `UPDATE ... RETURNING`): a second transaction waits for the first's row lock, then
//! re-checks the condition against the committed row and changes nothing.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, FromRow, Postgres, Row, Transaction};

use super::group_commit::{RevokeQueue, RevokeWriter, UserRevoke};
use super::{
    AUDIT_COLUMNS, AttemptCounter, AttemptPolicy, AuditBind, AuditEvent, AuditQuery, AuditRecord,
    AuthorizationCode, Change, CleanupLock, CodeRedemption, Credentials, DeviceCode, Garbage,
    LIVE_SESSION, MAX_LISTED_SESSIONS, NewAuthorizationCode, NewDeviceCode, NewOrganization,
    NewRefreshToken, NewUser, Organization, PrincipalRecord, PrivateKeyReplacement, ProfileChanges,
    RefreshGrant, Removal, RevokeDecision, RevokedAll, SESSION_COLUMNS, SPENT_CODE, SessionPolicy,
    SessionRecord, SigningKeyRecord, SpentCode, Store, StoreError, TokenUse, User,
    grants_with_hashes,
};

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Advisory lock keys (`pg_advisory_xact_lock`), held to the end of one transaction. Fixed
/// numbers so every replica takes the same lock; any other user of the database must not
/// pick these (ASCII "prismB01" and "prismK01").
const BOOTSTRAP_LOCK: i64 = 0x7072_6973_6d42_3031;
const SIGNING_KEY_LOCK: i64 = 0x7072_6973_6d4b_3031;
/// Session-level (`pg_try_advisory_lock`), held for one cleanup round: ASCII "prismC01".
pub const CLEANUP_LOCK: i64 = 0x7072_6973_6d43_3031;

const USER_COLUMNS: &str = "u.id, u.org_id, u.email, u.name, u.role, u.token_epoch, \
     u.created_at, u.updated_at, u.removed_at, u.phone, u.external_id, u.dark_mode, \
     u.dark_mode_sync_with_os";

/// Connection pool settings for PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgPoolSettings {
    /// Most connections this process opens. Several replicas multiply it, so keep the sum
    /// under the server's `max_connections`.
    pub max_connections: u32,
    /// How long a request waits for a free connection (or a new one) before it fails,
    /// rather than queueing without bound when the database is slow or gone.
    pub acquire_timeout: Duration,
    /// On opening: how long to keep retrying (with backoff) while the database cannot be
    /// reached at all, for example while it is still starting. Zero: one try. Errors where
    /// the database answers (wrong password, no such database) fail at once.
    pub startup_wait: Duration,
}

impl Default for PgPoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            startup_wait: Duration::from_secs(30),
        }
    }
}

/// First pause between two connection attempts on opening; it doubles up to the maximum.
const STARTUP_FIRST_PAUSE: Duration = Duration::from_millis(250);
const STARTUP_MAX_PAUSE: Duration = Duration::from_secs(5);

/// PostgreSQL-backed [`Store`].
pub struct PostgresStore {
    pool: PgPool,
    /// For the change feed's own connection, outside the pool (a `LISTEN` holds its
    /// connection for good, and must not take one of the requests').
    options: PgConnectOptions,
    /// Revoke-alls wait here to be committed together.
    revokes: RevokeQueue,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://...`) and applies migrations. sqlx's migrator holds an
    /// advisory lock while it runs, so replicas starting together apply them once.
    pub async fn open(url: &str, settings: PgPoolSettings) -> Result<Self, StoreError> {
        let store = Self::connect(url, settings).await?;
        MIGRATOR.run(&store.pool).await?;
        Ok(store)
    }

    /// Connects to an existing prism-auth database; fails with [`StoreError::NoSchema`] when
    /// nobody has started the server on it yet, so an admin command pointed at the wrong
    /// database does not quietly create a new install there.
    pub async fn open_existing(url: &str, settings: PgPoolSettings) -> Result<Self, StoreError> {
        let store = Self::connect(url, settings).await?;
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass('organizations')::TEXT")
            .fetch_one(&store.pool)
            .await?;
        if found.is_none() {
            store.pool.close().await;
            return Err(StoreError::NoSchema);
        }
        MIGRATOR.run(&store.pool).await?;
        Ok(store)
    }

    async fn connect(url: &str, settings: PgPoolSettings) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        wait_until_reachable(&options, settings).await?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        let revokes = RevokeQueue::start(PgRevokes(pool.clone()));
        Ok(Self {
            pool,
            options,
            revokes,
        })
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

/// The pool, committing revoke-alls for the [`RevokeQueue`].
struct PgRevokes(PgPool);

#[async_trait]
impl RevokeWriter for PgRevokes {
    /// One round trip for the group's tokens.
    async fn grants_by_hash(
        &self,
        token_hashes: &[[u8; 32]],
    ) -> Result<Vec<([u8; 32], RefreshGrant)>, StoreError> {
        let hashes: Vec<&[u8]> = token_hashes.iter().map(|hash| &hash[..]).collect();
        let rows = sqlx::query(concat!(
            "SELECT t.token_hash AS token_hash, ",
            refresh_grant_columns!(),
            " ",
            refresh_grant_tables!(),
            " WHERE t.token_hash = ANY($1)"
        ))
        .bind(hashes)
        .fetch_all(&self.0)
        .await?;
        grants_with_hashes(&rows)
    }

    /// One statement for the whole group, so one round trip and one commit flush: the epoch
    /// moves, the end of the browser sessions and the audit rows (with their notifications)
    /// happen together. Data-modifying CTEs always run; the later ones act only on the
    /// revokes that moved an epoch, the first of each user in queue order.
    ///
    /// Two replicas committing groups that share users at the same moment may lock those
    /// rows in different orders; PostgreSQL then aborts one group as a deadlock (after
    /// `deadlock_timeout`), and the group commit retries its revokes one by one.
    async fn revoke_group(&self, group: &[UserRevoke]) -> Result<Vec<bool>, StoreError> {
        let mut columns = RevokeColumns::default();
        for (position, revoke) in (0_i32..).zip(group) {
            columns.push(position, revoke);
        }
        let winners: Vec<i32> = sqlx::query_scalar(
            "WITH input AS ( \
                 SELECT * FROM UNNEST($1::int[], $2::text[], $3::bigint[], $4::bigint[], \
                     $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
                     $11::text[]) \
                 AS i(position, user_id, epoch, at, action, actor, org_id, subject_user_id, \
                      address, user_agent, detail)), \
             moved AS ( \
                 UPDATE users u SET token_epoch = u.token_epoch + 1, updated_at = i.at \
                 FROM input i \
                 WHERE u.id = i.user_id AND u.token_epoch = i.epoch AND u.removed_at IS NULL \
                 RETURNING u.id, u.token_epoch - 1 AS from_epoch), \
             winners AS ( \
                 SELECT DISTINCT ON (i.user_id) i.* FROM input i \
                 JOIN moved m ON m.id = i.user_id AND m.from_epoch = i.epoch \
                 ORDER BY i.user_id, i.position), \
             ended AS ( \
                 DELETE FROM browser_sessions WHERE user_id IN (SELECT id FROM moved)), \
             audited AS ( \
                 INSERT INTO audit_events \
                     (at, action, actor, org_id, subject_user_id, address, user_agent, detail) \
                 SELECT w.at, w.action, w.actor, w.org_id, w.subject_user_id, w.address, \
                        w.user_agent, w.detail \
                 FROM winners w, LATERAL pg_notify($12, w.action || ' ' || w.user_id) \
                 ORDER BY w.position) \
             SELECT position FROM winners",
        )
        .bind(&columns.position)
        .bind(&columns.user_id)
        .bind(&columns.epoch)
        .bind(&columns.at)
        .bind(&columns.action)
        .bind(&columns.actor)
        .bind(&columns.org_id)
        .bind(&columns.subject_user_id)
        .bind(&columns.address)
        .bind(&columns.user_agent)
        .bind(&columns.detail)
        .bind(CHANGES_CHANNEL)
        .fetch_all(&self.0)
        .await?;
        let winners: std::collections::HashSet<i32> = winners.into_iter().collect();
        Ok((0_i32..)
            .zip(group)
            .map(|(position, _)| winners.contains(&position))
            .collect())
    }

    async fn revoke_alone(&self, revoke: &UserRevoke) -> Result<bool, StoreError> {
        let audit = &revoke.audit;
        let moved: i64 = sqlx::query_scalar(
            "WITH moved AS ( \
                 UPDATE users SET token_epoch = token_epoch + 1, updated_at = $3 \
                 WHERE id = $1 AND token_epoch = $2 AND removed_at IS NULL RETURNING id), \
             ended AS ( \
                 DELETE FROM browser_sessions WHERE user_id IN (SELECT id FROM moved)), \
             audited AS ( \
                 INSERT INTO audit_events \
                     (at, action, actor, org_id, subject_user_id, address, user_agent, detail) \
                 SELECT $3, $4, $5, $6, $7, $8, $9, $10 \
                 FROM moved, LATERAL pg_notify($11, $4 || ' ' || moved.id)) \
             SELECT COUNT(*) FROM moved",
        )
        .bind(&revoke.user_id)
        .bind(revoke.expected_epoch)
        .bind(audit.at)
        .bind(audit.action)
        .bind(&audit.actor)
        .bind(&audit.org_id)
        .bind(&audit.subject_user_id)
        .bind(&audit.address)
        .bind(&audit.user_agent)
        .bind(&audit.detail)
        .bind(CHANGES_CHANNEL)
        .fetch_one(&self.0)
        .await?;
        Ok(moved == 1)
    }
}

/// A group of revokes as one array per column, for `UNNEST`.
#[derive(Default)]
struct RevokeColumns {
    position: Vec<i32>,
    user_id: Vec<String>,
    epoch: Vec<i64>,
    at: Vec<i64>,
    action: Vec<&'static str>,
    actor: Vec<String>,
    org_id: Vec<Option<String>>,
    subject_user_id: Vec<Option<String>>,
    address: Vec<Option<String>>,
    user_agent: Vec<Option<String>>,
    detail: Vec<Option<String>>,
}

impl RevokeColumns {
    fn push(&mut self, position: i32, revoke: &UserRevoke) {
        let audit = &revoke.audit;
        self.position.push(position);
        self.user_id.push(revoke.user_id.clone());
        self.epoch.push(revoke.expected_epoch);
        self.at.push(audit.at);
        self.action.push(audit.action);
        self.actor.push(audit.actor.clone());
        self.org_id.push(audit.org_id.clone());
        self.subject_user_id.push(audit.subject_user_id.clone());
        self.address.push(audit.address.clone());
        self.user_agent.push(audit.user_agent.clone());
        self.detail.push(audit.detail.clone());
    }
}

/// Connects once, directly (the pool would retry a refused connection until its acquire
/// timeout and then report only "pool timed out"), and retries connection-class failures
/// with backoff until `settings.startup_wait` is spent. Returns the last failure, which names
/// the cause (connection refused, timed out, the database is starting up...).
async fn wait_until_reachable(
    options: &PgConnectOptions,
    settings: PgPoolSettings,
) -> Result<(), StoreError> {
    let deadline = Instant::now() + settings.startup_wait;
    let mut pause = STARTUP_FIRST_PAUSE;
    loop {
        let err = match tokio::time::timeout(
            settings.acquire_timeout,
            PgConnection::connect_with(options),
        )
        .await
        {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Ok(Err(err)) => err,
            Err(_) => sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no connection within {} (--db-acquire-timeout)",
                    humantime::format_duration(settings.acquire_timeout)
                ),
            )),
        };
        let err = StoreError::from(err);
        let now = Instant::now();
        if !err.is_unreachable() || now >= deadline {
            return Err(err);
        }
        let nap = pause.min(deadline - now);
        tracing::warn!(
            error = %err,
            retry_in_ms = u64::try_from(nap.as_millis()).unwrap_or(u64::MAX),
            "PostgreSQL is not reachable yet; retrying (up to --db-startup-wait)"
        );
        tokio::time::sleep(nap).await;
        pause = (pause * 2).min(STARTUP_MAX_PAUSE);
    }
}

/// Serializes one kind of check-then-insert across every process on this database, until
/// the caller's transaction ends.
async fn advisory_lock(
    tx: &mut Transaction<'static, Postgres>,
    key: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Retires every active key (as of `key.created_at`) and makes `key` the active one; returns
/// the kids it retired. The caller holds the signing-key lock.
async fn retire_and_insert_signing_key(
    tx: &mut Transaction<'static, Postgres>,
    key: &SigningKeyRecord,
) -> Result<Vec<String>, sqlx::Error> {
    let retired: Vec<String> = sqlx::query_scalar(
        "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL RETURNING kid",
    )
    .bind(key.created_at)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at, retired_at) \
         VALUES ($1, $2, $3, $4, $5, NULL)",
    )
    .bind(&key.kid)
    .bind(&key.algorithm)
    .bind(&key.private_key)
    .bind(&key.public_key)
    .bind(key.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(retired)
}

async fn insert_audit(
    tx: &mut Transaction<'static, Postgres>,
    event: &AuditEvent,
) -> Result<(), sqlx::Error> {
    // The notification rides in the same statement and, like every NOTIFY, is delivered only
    // if and when the transaction commits: replicas never drop cached state for a change that
    // rolled back, and never miss one that committed while they were listening.
    sqlx::query(
        "INSERT INTO audit_events (at, action, actor, org_id, subject_user_id, address, user_agent, detail) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM pg_notify($9, $10)",
    )
    .bind(event.at)
    .bind(event.action)
    .bind(&event.actor)
    .bind(&event.org_id)
    .bind(&event.subject_user_id)
    .bind(&event.address)
    .bind(&event.user_agent)
    .bind(&event.detail)
    .bind(CHANGES_CHANNEL)
    .bind(change_payload(event.action, event.subject_user_id.as_deref()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// `LISTEN` channel of [`Change`]s.
const CHANGES_CHANNEL: &str = "prism_auth_changes";

/// How often each replica notifies itself on the changes channel.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Silence after which the listening connection counts as dead.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(3);
/// A heartbeat on the changes channel; it changes nothing.
const HEARTBEAT_PAYLOAD: &str = "heartbeat *";

/// Stops the heartbeats when the feed ends.
struct HeartbeatTask(tokio::task::JoinHandle<()>);

impl Drop for HeartbeatTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Notifies the changes channel every [`HEARTBEAT_EVERY`]. A failed send is not reported:
/// the silence it causes on the listener is.
async fn send_heartbeats(pool: PgPool) {
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        ticker.tick().await;
        let send = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(HEARTBEAT_PAYLOAD)
            .execute(&pool);
        let _ = tokio::time::timeout(HEARTBEAT_EVERY, send).await;
    }
}

/// `<action> <user id>`, or `<action> *` for a change that concerns no one user.
fn change_payload(action: &str, user_id: Option<&str>) -> String {
    format!("{action} {}", user_id.unwrap_or("*"))
}

fn parse_change(payload: &str) -> Change {
    match payload.split_once(' ') {
        Some((action, user)) if user != "*" && !user.is_empty() => Change {
            action: action.to_owned(),
            user_id: Some(user.to_owned()),
        },
        Some((action, _)) => Change {
            action: action.to_owned(),
            user_id: None,
        },
        None => Change::everything(),
    }
}

/// Signs a user out of every browser, in the caller's transaction: a revoke-all or a new
/// password must not leave a browser session that can mint new codes.
async fn end_browser_sessions(
    tx: &mut Transaction<'static, Postgres>,
    user_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM browser_sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Ends a conditional write: nothing matched → roll back and report `false`; otherwise write
/// the audit row in the same transaction, commit, and report `true`.
async fn finish_audited(
    mut tx: Transaction<'static, Postgres>,
    rows_affected: u64,
    audit: &AuditEvent,
) -> Result<bool, StoreError> {
    if rows_affected == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    insert_audit(&mut tx, audit).await?;
    tx.commit().await?;
    Ok(true)
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        // A write-capable answer: a standby (read-only replica) would be "ready" for SELECT 1
        // but fail every revoke.
        let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
            .fetch_one(&self.pool)
            .await?;
        if read_only != "off" {
            return Err(StoreError::ReadOnly);
        }
        Ok(())
    }

    async fn bootstrap(
        &self,
        org: NewOrganization,
        owner: NewUser,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // Two replicas starting on an empty database both see no organization; the lock makes
        // the second wait, and its count (a new snapshot per statement at READ COMMITTED)
        // then sees the first one's commit.
        advisory_lock(&mut tx, BOOTSTRAP_LOCK).await?;
        let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM organizations")
            .fetch_one(&mut *tx)
            .await?;
        if existing > 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO organizations (id, name, tenant_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&org.id)
        .bind(&org.name)
        .bind(&org.tenant_id)
        .bind(org.created_at)
        .execute(&mut *tx)
        .await?;
        insert_user(&mut tx, &owner).await?;
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn default_organization(&self) -> Result<Option<Organization>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, name, tenant_id, created_at FROM organizations ORDER BY created_at, id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_organizations(&self) -> Result<Vec<Organization>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, name, tenant_id, created_at FROM organizations ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn organization_by_tenant(
        &self,
        tenant_id: &str,
    ) -> Result<Option<Organization>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, name, tenant_id, created_at FROM organizations WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn create_organization(
        &self,
        org: NewOrganization,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO organizations (id, name, tenant_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&org.id)
        .bind(&org.name)
        .bind(&org.tenant_id)
        .bind(org.created_at)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_user(&self, user: NewUser, audit: AuditEvent) -> Result<User, StoreError> {
        let mut tx = self.begin().await?;
        match insert_user(&mut tx, &user).await {
            Ok(()) => {}
            Err(err) if is_unique_violation(&err) => {
                return Err(StoreError::Conflict(
                    "an active user with this email exists",
                ));
            }
            Err(err) => return Err(err.into()),
        }
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
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
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(org_id)
            .bind(email)
            .fetch_optional(&self.pool)
            .await?)
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
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(org_id)
            .bind(include_removed)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn remove_user(
        &self,
        user_id: &str,
        at: i64,
        audit: AuditEvent,
    ) -> Result<Removal, StoreError> {
        let mut tx = self.begin().await?;
        // Two concurrent removals of two different Owners would each count the other as still
        // active (neither has committed). Locking the organization's row first makes them
        // take turns, and the count in the UPDATE below then sees the earlier removal. NO KEY
        // UPDATE does not block inserts that merely reference the organization.
        sqlx::query(
            "SELECT 1 FROM organizations WHERE id = (SELECT org_id FROM users WHERE id = $1) \
             FOR NO KEY UPDATE",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        // The epoch moves too, so even a future bug that forgot the removed flag would still
        // find every old token stale.
        let done = sqlx::query(
            "UPDATE users SET removed_at = $2, updated_at = $2, token_epoch = token_epoch + 1 \
             WHERE id = $1 AND removed_at IS NULL \
               AND (role <> 'owner' OR (SELECT COUNT(*) FROM users o \
                    WHERE o.org_id = users.org_id AND o.role = 'owner' AND o.removed_at IS NULL) > 1)",
        )
        .bind(user_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            let active: Option<bool> =
                sqlx::query_scalar("SELECT TRUE FROM users WHERE id = $1 AND removed_at IS NULL")
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return Ok(if active.is_some() {
                Removal::LastOwner
            } else {
                Removal::NotFound
            });
        }
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(Removal::Removed)
    }

    async fn set_password_hash(
        &self,
        user_id: &str,
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1 AND removed_at IS NULL",
        )
        .bind(user_id)
        .bind(password_hash)
        .bind(audit.at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        end_browser_sessions(&mut tx, user_id).await?;
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn insert_refresh_token(
        &self,
        token: NewRefreshToken,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "INSERT INTO refresh_tokens (id, token_hash, user_id, user_epoch, client_id, name, scope, created_at) \
             SELECT $1, $2, u.id, u.token_epoch, $4, $5, $6, $7 FROM users u \
             WHERE u.id = $3 AND u.removed_at IS NULL",
        )
        .bind(&token.id)
        .bind(&token.token_hash[..])
        .bind(&token.user_id)
        .bind(&token.client_id)
        .bind(&token.name)
        .bind(&token.scope)
        .bind(token.created_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(code_hash) = &token.from_code {
            sqlx::query(
                "UPDATE authorization_codes SET refresh_token_id = $2 WHERE code_hash = $1",
            )
            .bind(&code_hash[..])
            .bind(&token.id)
            .execute(&mut *tx)
            .await?;
            // A replay that came between redeeming the code and now finds no token to revoke;
            // revoke it here instead.
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $2 WHERE id = $1 AND EXISTS \
                 (SELECT 1 FROM authorization_codes WHERE code_hash = $3 AND replayed_at IS NOT NULL)",
            )
            .bind(&token.id)
            .bind(token.created_at)
            .bind(&code_hash[..])
            .execute(&mut *tx)
            .await?;
        }
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn find_refresh_grant(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<RefreshGrant>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            refresh_grant_columns!(),
            " ",
            refresh_grant_tables!(),
            " WHERE t.token_hash = $1"
        ))
        .bind(&token_hash[..])
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn session_policy(&self, org_id: &str) -> Result<Option<SessionPolicy>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT refresh_idle_expiry_secs AS idle_expiry_secs, \
                    refresh_max_age_secs AS max_age_secs \
             FROM organizations WHERE id = $1",
        )
        .bind(org_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn set_session_policy(
        &self,
        org_id: &str,
        expected: SessionPolicy,
        policy: SessionPolicy,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE organizations SET refresh_idle_expiry_secs = $2, refresh_max_age_secs = $3 \
             WHERE id = $1 AND refresh_idle_expiry_secs IS NOT DISTINCT FROM $4 \
               AND refresh_max_age_secs IS NOT DISTINCT FROM $5",
        )
        .bind(org_id)
        .bind(policy.idle_expiry_secs)
        .bind(policy.max_age_secs)
        .bind(expected.idle_expiry_secs)
        .bind(expected.max_age_secs)
        .execute(&mut *tx)
        .await?;
        finish_audited(tx, done.rows_affected(), &audit).await
    }

    async fn revoke_all_tokens(
        &self,
        user_id: &str,
        expected_epoch: i64,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        self.revokes
            .revoke_all(user_id, expected_epoch, audit)
            .await
    }

    async fn revoke_all_by_token(
        &self,
        token_hash: &[u8; 32],
        decide: RevokeDecision,
    ) -> Result<Option<RevokedAll>, StoreError> {
        self.revokes.revoke_all_by_token(*token_hash, decide).await
    }

    async fn principal(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<Option<PrincipalRecord>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, o.name AS org_name, o.tenant_id, o.created_at AS org_created_at, \
                    t.id AS session_id, t.revoked_at AS session_revoked_at, \
                    t.created_at AS session_created_at, t.last_used_at AS session_last_used_at, \
                    o.refresh_idle_expiry_secs AS idle_expiry_secs, \
                    o.refresh_max_age_secs AS max_age_secs \
             FROM users u \
             JOIN organizations o ON o.id = u.org_id \
             LEFT JOIN refresh_tokens t ON t.id = $2 AND t.user_id = u.id \
             WHERE u.id = $1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let user = User::from_row(&row)?;
        let session_id: Option<String> = row.try_get("session_id")?;
        let session_revoked_at = match session_id {
            Some(_) => Some(row.try_get::<Option<i64>, _>("session_revoked_at")?),
            None => None,
        };
        Ok(Some(PrincipalRecord {
            org: Organization {
                id: user.org_id.clone(),
                name: row.try_get("org_name")?,
                tenant_id: row.try_get("tenant_id")?,
                created_at: row.try_get("org_created_at")?,
            },
            user,
            session_revoked_at,
            session_created_at: row.try_get("session_created_at")?,
            session_last_used_at: row.try_get("session_last_used_at")?,
            policy: SessionPolicy::from_row(&row)?,
        }))
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
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(org_id)
            .bind(after_created)
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn member(&self, org_id: &str, user_id: &str) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1 AND u.org_id = $2 AND u.removed_at IS NULL"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(org_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn update_profile(
        &self,
        user_id: &str,
        changes: ProfileChanges,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        if changes.role.is_some() {
            // As in remove_user: concurrent demotions of two Owners take turns on the
            // organization's row, so the Owner count below sees the earlier one.
            sqlx::query(
                "SELECT 1 FROM organizations WHERE id = (SELECT org_id FROM users WHERE id = $1) \
                 FOR NO KEY UPDATE",
            )
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        }
        let done = sqlx::query(
            "UPDATE users SET name = COALESCE($2, name), phone = COALESCE($3, phone), \
             dark_mode = COALESCE($4, dark_mode), \
             dark_mode_sync_with_os = COALESCE($5, dark_mode_sync_with_os), updated_at = $6, \
             role = COALESCE($7::text, role) \
             WHERE id = $1 AND removed_at IS NULL \
               AND ($7::text IS NULL OR $7::text = 'owner' OR role <> 'owner' \
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
        .execute(&mut *tx)
        .await?;
        finish_audited(tx, done.rows_affected(), &audit).await
    }

    async fn has_password(&self, user_id: &str) -> Result<bool, StoreError> {
        let found: Option<bool> = sqlx::query_scalar(
            "SELECT TRUE FROM users WHERE id = $1 AND removed_at IS NULL AND password_hash IS NOT NULL",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
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
        let mut tx = self.begin().await?;
        // A new link replaces the earlier ones.
        sqlx::query("UPDATE invitations SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL")
            .bind(user_id)
            .bind(audit.at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO invitations (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&token_hash[..])
        .bind(user_id)
        .bind(audit.at)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
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
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&token_hash[..])
            .bind(now)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn accept_invitation(
        &self,
        token_hash: &[u8; 32],
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let user_id: Option<String> = sqlx::query_scalar(
            "UPDATE invitations SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL \
             AND expires_at > $2 RETURNING user_id",
        )
        .bind(&token_hash[..])
        .bind(audit.at)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user_id) = user_id else {
            tx.rollback().await?;
            return Ok(false);
        };
        // An invitation only ever gives a first password: it cannot reset an existing one.
        let done = sqlx::query(
            "UPDATE users SET password_hash = $2, updated_at = $3 \
             WHERE id = $1 AND removed_at IS NULL AND password_hash IS NULL",
        )
        .bind(&user_id)
        .bind(password_hash)
        .bind(audit.at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        end_browser_sessions(&mut tx, &user_id).await?;
        // Every other link of this user dies with the one that was used.
        sqlx::query("UPDATE invitations SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL")
            .bind(&user_id)
            .bind(audit.at)
            .execute(&mut *tx)
            .await?;
        let audit = AuditEvent {
            subject_user_id: Some(user_id),
            ..audit
        };
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn credentials_by_email(&self, email: &str) -> Result<Vec<Credentials>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, u.password_hash FROM users u \
             WHERE u.email = $1 AND u.removed_at IS NULL ORDER BY u.created_at, u.id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(email)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Credentials {
                    user: User::from_row(row)?,
                    password_hash: row.try_get("password_hash")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    async fn active_user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        let sql =
            format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1 AND u.removed_at IS NULL");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn organizations_of_email(&self, email: &str) -> Result<Vec<Organization>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT o.id, o.name, o.tenant_id, o.created_at FROM organizations o \
             JOIN users u ON u.org_id = o.id \
             WHERE u.email = $1 AND u.removed_at IS NULL ORDER BY o.created_at, o.id",
        )
        .bind(email)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn insert_authorization_code(
        &self,
        code: NewAuthorizationCode,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
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
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn redeem_authorization_code(
        &self,
        code_hash: &[u8; 32],
        at: i64,
        replay: AuditEvent,
    ) -> Result<CodeRedemption, StoreError> {
        let mut tx = self.begin().await?;
        let redeemed: Option<AuthorizationCode> = sqlx::query_as(
            "UPDATE authorization_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL \
             RETURNING client_id, redirect_uri, code_challenge, scope, nonce, user_id, expires_at",
        )
        .bind(&code_hash[..])
        .bind(at)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(code) = redeemed {
            tx.commit().await?;
            return Ok(CodeRedemption::Redeemed(code));
        }
        // Locked, so of two replays at once exactly one sees it unreplayed and audits it.
        let spent: Option<SpentCode> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SPENT_CODE} FOR UPDATE OF c")))
                .bind(&code_hash[..])
                .fetch_optional(&mut *tx)
                .await?;
        let Some(spent) = spent else {
            tx.rollback().await?;
            return Ok(CodeRedemption::Unknown);
        };
        sqlx::query(
            "UPDATE authorization_codes SET replayed_at = COALESCE(replayed_at, $2) WHERE code_hash = $1",
        )
        .bind(&code_hash[..])
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let revoked = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE revoked_at IS NULL AND id = \
             (SELECT refresh_token_id FROM authorization_codes WHERE code_hash = $1)",
        )
        .bind(&code_hash[..])
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if spent.replayed_at.is_none() {
            // The audit row's notification tells every replica to drop the user's entries.
            insert_audit(
                &mut tx,
                &spent.replay_event(replay, revoked.rows_affected() > 0),
            )
            .await?;
        } else if revoked.rows_affected() > 0 {
            // A token stored after the first replay, revoked now: still announce it.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(change_payload(replay.action, Some(&spent.user_id)))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(CodeRedemption::Replayed)
    }

    async fn insert_device_code(&self, code: NewDeviceCode) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
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
        .execute(&mut *tx)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                StoreError::Conflict("user code collision")
            } else {
                err.into()
            }
        })?;
        tx.commit().await?;
        Ok(())
    }

    async fn poll_device_code(
        &self,
        device_code_hash: &[u8; 32],
        at: i64,
    ) -> Result<Option<DeviceCode>, StoreError> {
        let mut tx = self.begin().await?;
        // FOR UPDATE: two polls racing must not both read the same "last polled" time, or
        // neither would be told to slow down.
        let code: Option<DeviceCode> = sqlx::query_as(
            "SELECT client_id, scope, expires_at, interval_secs, last_polled_at, status, user_id \
             FROM device_codes WHERE device_code_hash = $1 FOR UPDATE",
        )
        .bind(&device_code_hash[..])
        .fetch_optional(&mut *tx)
        .await?;
        if code.is_some() {
            sqlx::query("UPDATE device_codes SET last_polled_at = $2 WHERE device_code_hash = $1")
                .bind(&device_code_hash[..])
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(code)
    }

    async fn decide_device_code(
        &self,
        user_code_hash: &[u8; 32],
        approve_for: Option<&str>,
        at: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let status = if approve_for.is_some() {
            "approved"
        } else {
            "denied"
        };
        let done = sqlx::query(
            "UPDATE device_codes SET status = $2, user_id = $3 \
             WHERE user_code_hash = $1 AND status = 'pending' AND expires_at > $4",
        )
        .bind(&user_code_hash[..])
        .bind(status)
        .bind(approve_for)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn redeem_device_code(&self, device_code_hash: &[u8; 32]) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE device_codes SET status = 'redeemed' WHERE device_code_hash = $1 AND status = 'approved'",
        )
        .bind(&device_code_hash[..])
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn slow_down_device_code(
        &self,
        device_code_hash: &[u8; 32],
        interval_secs: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE device_codes SET interval_secs = $2 WHERE device_code_hash = $1")
            .bind(&device_code_hash[..])
            .bind(interval_secs)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn attempt_counter(&self, key: &str) -> Result<Option<AttemptCounter>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT failures, window_start, locked_until FROM attempt_counters WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn record_attempt_failure(
        &self,
        key: &str,
        at: i64,
        policy: AttemptPolicy,
        trip: AuditEvent,
    ) -> Result<AttemptCounter, StoreError> {
        let mut tx = self.begin().await?;
        // One statement per failure; a window that has passed (and no lock still running)
        // starts the count again. The right-hand sides see the row as it was.
        let before: Option<i64> =
            sqlx::query_scalar("SELECT locked_until FROM attempt_counters WHERE key = $1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
        let mut counter: AttemptCounter = sqlx::query_as(
            "INSERT INTO attempt_counters (key, failures, window_start, locked_until) \
             VALUES ($1, 1, $2, 0) \
             ON CONFLICT (key) DO UPDATE SET \
             failures = CASE WHEN attempt_counters.window_start <= $3 \
                 AND attempt_counters.locked_until <= $2 THEN 1 \
                 ELSE attempt_counters.failures + 1 END, \
             window_start = CASE WHEN attempt_counters.window_start <= $3 \
                 AND attempt_counters.locked_until <= $2 THEN $2 \
                 ELSE attempt_counters.window_start END \
             RETURNING failures, window_start, locked_until",
        )
        .bind(key)
        .bind(at)
        .bind(at.saturating_sub(policy.window_ms))
        .fetch_one(&mut *tx)
        .await?;
        let lock = policy.lock_for(counter.failures);
        if lock > 0 {
            counter.locked_until = at.saturating_add(lock);
            sqlx::query("UPDATE attempt_counters SET locked_until = $2 WHERE key = $1")
                .bind(key)
                .bind(counter.locked_until)
                .execute(&mut *tx)
                .await?;
            if before.is_none_or(|until| until <= at) {
                insert_audit(&mut tx, &trip).await?;
            }
        }
        tx.commit().await?;
        Ok(counter)
    }

    async fn clear_attempts(&self, key: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM attempt_counters WHERE key = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_session(
        &self,
        token_id: &str,
        user_id: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $3 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(token_id)
        .bind(user_id)
        .bind(audit.at)
        .execute(&mut *tx)
        .await?;
        finish_audited(tx, done.rows_affected(), &audit).await
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
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(limit.clamp(0, MAX_LISTED_SESSIONS))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn live_session(&self, token_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM refresh_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.id = $1 AND {LIVE_SESSION}"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn insert_browser_session(
        &self,
        id_hash: &[u8; 32],
        user_id: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO browser_sessions (id_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id_hash[..])
        .bind(user_id)
        .bind(created_at)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn browser_session_user(
        &self,
        id_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM browser_sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id_hash = $1 AND s.expires_at > $2 AND u.removed_at IS NULL"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&id_hash[..])
            .bind(now)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn delete_browser_session(&self, id_hash: &[u8; 32]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM browser_sessions WHERE id_hash = $1")
            .bind(&id_hash[..])
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_token_uses(&self, uses: &[TokenUse]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        // Replicas flush at the same time and may touch the same tokens; updating rows in one
        // order everywhere means their row locks cannot deadlock.
        let mut ordered: Vec<&TokenUse> = uses.iter().collect();
        ordered.sort_by(|a, b| a.token_id.cmp(&b.token_id));
        let mut tx = self.begin().await?;
        for token_use in ordered {
            sqlx::query(
                "UPDATE refresh_tokens SET last_used_at = $2, last_used_addr = $3 \
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(&token_use.token_id)
            .bind(token_use.at)
            .bind(&token_use.address)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT kid, algorithm, private_key, public_key, created_at, retired_at \
             FROM signing_keys ORDER BY created_at DESC, kid",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn insert_signing_key_if_none_active(
        &self,
        key: SigningKeyRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        // NOT EXISTS alone is not enough here: two replicas starting at once both see no
        // active key and both insert. The lock makes the second one see the first's key.
        advisory_lock(&mut tx, SIGNING_KEY_LOCK).await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at, retired_at) \
             SELECT $1, $2, $3, $4, $5, NULL \
             WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE retired_at IS NULL)",
        )
        .bind(&key.kid)
        .bind(&key.algorithm)
        .bind(&key.private_key)
        .bind(&key.public_key)
        .bind(key.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate_signing_key(
        &self,
        key: SigningKeyRecord,
        audit: AuditEvent,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin().await?;
        // The same lock as the first key: a rotation racing a replica's first start (or
        // another rotation) must leave exactly one active key.
        advisory_lock(&mut tx, SIGNING_KEY_LOCK).await?;
        let retired = retire_and_insert_signing_key(&mut tx, &key).await?;
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(retired)
    }

    async fn rotate_signing_key_if_stale(
        &self,
        key: SigningKeyRecord,
        audit: AuditEvent,
        active_created_before: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut tx = self.begin().await?;
        advisory_lock(&mut tx, SIGNING_KEY_LOCK).await?;
        // Under the lock, this statement sees every rotation committed before it.
        let young: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM signing_keys \
             WHERE retired_at IS NULL AND created_at >= $1)",
        )
        .bind(active_created_before)
        .fetch_one(&mut *tx)
        .await?;
        if young {
            tx.rollback().await?;
            return Ok(None);
        }
        let retired = retire_and_insert_signing_key(&mut tx, &key).await?;
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(Some(retired))
    }

    async fn replace_private_keys(
        &self,
        replacements: &[PrivateKeyReplacement],
        audit: AuditEvent,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin().await?;
        advisory_lock(&mut tx, SIGNING_KEY_LOCK).await?;
        let mut replaced = Vec::new();
        for replacement in replacements {
            // Only if unchanged: another process may have sealed or deleted the key meanwhile.
            let done = sqlx::query(
                "UPDATE signing_keys SET private_key = $1 WHERE kid = $2 AND private_key = $3",
            )
            .bind(&replacement.sealed)
            .bind(&replacement.kid)
            .bind(&replacement.previous)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 {
                replaced.push(replacement.kid.clone());
            }
        }
        if replaced.is_empty() {
            tx.rollback().await?;
            return Ok(replaced);
        }
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(replaced)
    }

    async fn delete_garbage(
        &self,
        kind: Garbage,
        before: i64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(kind.delete_statement())
            .bind(before)
            .bind(limit)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn try_cleanup_lock(&self) -> Result<Option<CleanupLock>, StoreError> {
        CleanupLock::try_postgres(&self.pool, CLEANUP_LOCK).await
    }

    async fn recent_audit_events(&self, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY id DESC LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn audit_events_page(
        &self,
        query: &AuditQuery,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let (sql, binds) = query.statement(limit);
        let mut statement = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            statement = match bind {
                AuditBind::Text(text) => statement.bind(text),
                AuditBind::Int(number) => statement.bind(number),
            };
        }
        Ok(statement.fetch_all(&self.pool).await?)
    }

    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_audit(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn follow_changes(
        &self,
        on_change: &(dyn Fn(Change) + Send + Sync),
    ) -> Result<(), StoreError> {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(self.options.clone())
            .await?;
        let mut listener = sqlx::postgres::PgListener::connect_with(&own).await?;
        // A lost connection must end the feed at once (so the cache stops answering), not
        // after sqlx has tried to reconnect to a database that may be gone.
        listener.eager_reconnect(false);
        listener.listen(CHANGES_CHANNEL).await?;
        // A connection can also die without a reset (a silent network drop), and then no
        // error would ever come. So this process notifies itself every second through the
        // pool; a listener that hears nothing for a few seconds is given up as dead.
        let heartbeat = HeartbeatTask(tokio::spawn(send_heartbeats(self.pool.clone())));
        on_change(Change::listening());
        loop {
            let received = tokio::time::timeout(HEARTBEAT_DEADLINE, listener.try_recv())
                .await
                .map_err(|_| {
                    StoreError::Unreachable(sqlx::Error::Protocol(format!(
                        "the change feed heard nothing, not even its own heartbeat, for {} s",
                        HEARTBEAT_DEADLINE.as_secs()
                    )))
                })??;
            // `None`: the connection dropped, and whatever was notified meanwhile is lost;
            // the caller starts over with a fresh connection.
            let Some(notification) = received else {
                drop(heartbeat);
                return Ok(());
            };
            let payload = notification.payload();
            if payload != HEARTBEAT_PAYLOAD {
                on_change(parse_change(payload));
            }
        }
    }

    async fn close(&self) {
        // Queued revoke-alls are committed and answered before the pool goes.
        self.revokes.close().await;
        self.pool.close().await;
    }

    fn connection_stats(&self) -> super::ConnectionStats {
        super::ConnectionStats {
            pools: vec![super::PoolStats::of("postgres", &self.pool)],
            circuit: None,
        }
    }
}

async fn insert_user(
    tx: &mut Transaction<'static, Postgres>,
    user: &NewUser,
) -> Result<(), sqlx::Error> {
    sqlx::query(
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}
