//! The embedded SQLite backend: one writer connection (SQLite allows one writer at a time, so
//! queueing in the pool beats retrying on `SQLITE_BUSY`) and a pool of readers, WAL journal,
//! and `synchronous = FULL` so that every commit (a revocation above all) is on disk before
//! the reply. Revoke-alls are written by a thread of their own (`sqlite_revoker`); it and the
//! writer take turns through the write gate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{FromRow, Row, Sqlite, SqliteConnection, Transaction};

use super::group_commit::RevokeQueue;
use super::sqlite_direct::{DirectReaders, direct_reader_count};
use super::{
    AUDIT_COLUMNS, AttemptCounter, AttemptPolicy, AuditBind, AuditEvent, AuditQuery, AuditRecord,
    AuthorizationCode, Change, CleanupLock, CodeRedemption, Credentials, DeviceCode, Garbage,
    LIVE_SESSION, MAX_LISTED_SESSIONS, NewAuthorizationCode, NewDeviceCode, NewOrganization,
    NewRefreshToken, NewUser, Organization, PrincipalRecord, PrivateKeyReplacement, ProfileChanges,
    RefreshGrant, Removal, RevokeDecision, RevokedAll, SESSION_COLUMNS, SPENT_CODE, SessionPolicy,
    SessionRecord, SigningKeyRecord, SpentCode, Store, StoreError, TokenUse, User,
};

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "prismd.db";

/// How long a statement waits for another process's write lock (admin commands run beside
/// the server) before giving up.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of the database file each connection maps (`PRAGMA mmap_size`).
pub(super) const MMAP_SIZE: &str = "1073741824";

/// How often the change follower reads the audit log for changes other processes (admin
/// commands) committed: the bound on how stale a cached standing can be after `prismd users
/// remove` run beside the server.
const CHANGE_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Most audit rows read per poll.
const CHANGE_POLL_BATCH: i64 = 500;

/// The columns of a [`User`] (`u`: users), as a macro so that [`PRINCIPAL_SQL`] can be one
/// `concat!`ed constant.
macro_rules! user_columns {
    () => {
        "u.id, u.org_id, u.email, u.name, u.role, u.token_epoch, \
         u.created_at, u.updated_at, u.removed_at, u.phone, u.external_id, u.dark_mode, \
         u.dark_mode_sync_with_os"
    };
}
const USER_COLUMNS: &str = user_columns!();

/// [`Store::find_refresh_grant`]: token, user and organization by token hash (`$1`). Shared by
/// the pooled path and the direct one (`sqlite_direct`, which reads the columns by position;
/// a test there checks their names).
pub(super) const REFRESH_GRANT_SQL: &str = concat!(
    "SELECT ",
    refresh_grant_columns!(),
    " ",
    refresh_grant_tables!(),
    " WHERE t.token_hash = $1"
);

/// [`Store::principal`]: the user (`$1`), their organization and the session (`$2`, if it is
/// theirs). Shared like [`REFRESH_GRANT_SQL`]. `$2` comes before `$1` in the text: bind by
/// name, not by position.
pub(super) const PRINCIPAL_SQL: &str = concat!(
    "SELECT ",
    user_columns!(),
    ", o.name AS org_name, o.tenant_id, o.created_at AS org_created_at, \
            t.id AS session_id, t.revoked_at AS session_revoked_at, \
            t.created_at AS session_created_at, t.last_used_at AS session_last_used_at, \
            o.refresh_idle_expiry_secs AS idle_expiry_secs, \
            o.refresh_max_age_secs AS max_age_secs \
     FROM users u \
     JOIN organizations o ON o.id = u.org_id \
     LEFT JOIN refresh_tokens t ON t.id = $2 AND t.user_id = u.id \
     WHERE u.id = $1"
);

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    /// Answers the two hot-path reads on the calling thread, without the pool's thread hop.
    direct: DirectReaders,
    path: PathBuf,
    /// Revoke-alls wait here to be committed together, by the revoke thread.
    revokes: RevokeQueue,
    /// Taken by every write transaction, the writer's and the revoke thread's, so that they
    /// take turns in order instead of meeting SQLite's busy handler.
    write_gate: Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction on the writer connection, holding the write gate until it ends.
struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    _gate: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTx {
    async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/prismd.db` and applies migrations.
    pub async fn open(data_dir: &Path, readers: u32) -> Result<Self, StoreError> {
        Self::open_file(&data_dir.join(DATABASE_FILE), readers).await
    }

    /// Opens (creating if needed) the database file at `path` (from a `sqlite:` URL) and
    /// applies migrations.
    pub async fn open_file(path: &Path, readers: u32) -> Result<Self, StoreError> {
        let path = prepare_database_file(path)?;
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Reads through a memory map instead of a read() per page: with a million tokens
            // the index no longer fits a connection's page cache, and the syscalls showed.
            // Address space only; the kernel's page cache is what holds the pages.
            .pragma("mmap_size", MMAP_SIZE);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(10))
            .after_release(|conn, _| Box::pin(discard_if_stuck_in_transaction(conn)))
            // Checkpoints run beside the writer (see `checkpoint_periodically`), not inside
            // whichever commit crosses the WAL's size threshold: that commit, and every
            // revoke queued behind it, used to wait for the whole checkpoint and its fsync.
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        MIGRATOR.run(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        // After the writer: the file exists, is in WAL mode and migrated, which a read-only
        // connection can neither do nor wait for.
        let direct = DirectReaders::open(
            &path,
            direct_reader_count(readers.options().get_max_connections()),
        );
        let write_gate = Arc::new(tokio::sync::Mutex::new(()));
        let revokes = super::sqlite_revoker::start(&path, write_gate.clone())?;
        tokio::spawn(checkpoint_periodically(readers.clone()));
        Ok(Self {
            writer,
            readers,
            direct,
            path,
            revokes,
            write_gate,
        })
    }

    /// Opens an existing database; fails with [`StoreError::Missing`] rather than creating one
    /// (admin commands use this, so a mistyped `--data-dir` is an error, not a new install).
    pub async fn open_existing(data_dir: &Path, readers: u32) -> Result<Self, StoreError> {
        Self::open_existing_file(&data_dir.join(DATABASE_FILE), readers).await
    }

    /// [`SqliteStore::open_existing`] for a database file named by a `sqlite:` URL.
    pub async fn open_existing_file(path: &Path, readers: u32) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Missing(path.to_owned()));
        }
        Self::open_file(path, readers).await
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The direct read path, for its tests.
    #[cfg(test)]
    pub(super) fn direct(&self) -> &DirectReaders {
        &self.direct
    }

    /// [`Store::find_refresh_grant`] through the sqlx reader pool: when every direct reader
    /// is busy, or a direct read failed.
    pub(super) async fn pooled_refresh_grant(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<RefreshGrant>, StoreError> {
        Ok(sqlx::query_as(REFRESH_GRANT_SQL)
            .bind(&token_hash[..])
            .fetch_optional(&self.readers)
            .await?)
    }

    /// [`Store::principal`] through the sqlx reader pool (see [`Self::pooled_refresh_grant`]).
    pub(super) async fn pooled_principal(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<Option<PrincipalRecord>, StoreError> {
        let row = sqlx::query(PRINCIPAL_SQL)
            .bind(user_id)
            .bind(session_id)
            .fetch_optional(&self.readers)
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

    async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let gate = self.write_gate.clone().lock_owned().await;
        // IMMEDIATE takes the write lock up front, so a read-then-write transaction never
        // fails half-way when an admin command writes at the same moment.
        let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _gate: gate })
    }
}

/// Last-use records per `UPDATE` (three bound values each, far below SQLite's limit of 32,766).
const TOKEN_USES_PER_STATEMENT: usize = 1000;

/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Copies committed WAL frames into the database file, on a reader connection, until the
/// pool closes. PASSIVE never waits for (or blocks) the writer or readers; frames still in
/// use by a reader are copied next time. SQLite starts the WAL over from its beginning once
/// everything in it has been copied, so it stays about as large as a quarter second of
/// writes. Durability does not depend on this: every commit is fsynced to the WAL first.
async fn checkpoint_periodically(readers: SqlitePool) {
    let mut ticks = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !readers.is_closed() {
        ticks.tick().await;
        if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&readers)
            .await
            && !readers.is_closed()
        {
            tracing::debug!(error = %err, "WAL checkpoint failed; retrying");
        }
    }
}

/// Whether the writer connection may go back to the pool: not when it is stuck in a
/// transaction. When the disk is full or an I/O error strikes, SQLite rolls the failed
/// transaction back on its own; sqlx's own ROLLBACK then fails, so sqlx still counts the
/// connection as inside a transaction and refuses every later `BEGIN` on it ("non-zero
/// transaction depth") long after space is freed. Closing it lets the pool open a fresh one.
async fn discard_if_stuck_in_transaction(
    conn: &mut sqlx::SqliteConnection,
) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    // A transaction dropped without commit queues its ROLLBACK on the connection's worker;
    // one round trip behind it tells whether that rollback worked.
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!("closing a database connection left inside a failed transaction");
        return Ok(false);
    }
    Ok(true)
}

/// Creates the database's directory (0700) and file (0600) before SQLite does, so neither is
/// ever readable by other local users.
fn prepare_database_file(path: &Path) -> Result<PathBuf, StoreError> {
    create_database_file(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
            StoreError::NotWritable {
                path: path.to_owned(),
                cause: err,
            }
        }
        _ => StoreError::Io(err),
    })
}

fn create_database_file(path: &Path) -> Result<PathBuf, std::io::Error> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let path = path.to_owned();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)?;
    Ok(path)
}

/// Writes an audit row; shared with the revoke thread.
pub(super) const INSERT_AUDIT_SQL: &str = "INSERT INTO audit_events \
     (at, action, actor, org_id, subject_user_id, address, user_agent, detail) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Signs a user (`$1`) out of every browser; shared with the revoke thread.
pub(super) const END_BROWSER_SESSIONS_SQL: &str = "DELETE FROM browser_sessions WHERE user_id = $1";

async fn insert_audit(tx: &mut SqliteConnection, event: &AuditEvent) -> Result<(), sqlx::Error> {
    sqlx::query(INSERT_AUDIT_SQL)
        .bind(event.at)
        .bind(event.action)
        .bind(&event.actor)
        .bind(&event.org_id)
        .bind(&event.subject_user_id)
        .bind(&event.address)
        .bind(&event.user_agent)
        .bind(&event.detail)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A spent authorization code, read when it is presented again.
async fn spent_code(
    tx: &mut SqliteConnection,
    code_hash: &[u8; 32],
) -> Result<Option<SpentCode>, sqlx::Error> {
    sqlx::query_as(SPENT_CODE)
        .bind(&code_hash[..])
        .fetch_optional(&mut *tx)
        .await
}

/// Signs a user out of every browser, in the caller's transaction: a revoke-all or a new
/// password must not leave a browser session that can mint new codes.
async fn end_browser_sessions(tx: &mut SqliteConnection, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(END_BROWSER_SESSIONS_SQL)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Ends a conditional write: nothing matched → roll back and report `false`; otherwise write
/// the audit row in the same transaction, commit, and report `true`.
async fn finish_audited(
    mut tx: WriteTx,
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
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        sqlx::query("SELECT 1").execute(&self.writer).await?;
        Ok(())
    }

    async fn bootstrap(
        &self,
        org: NewOrganization,
        owner: NewUser,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
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
        .fetch_optional(&self.readers)
        .await?)
    }

    async fn list_organizations(&self) -> Result<Vec<Organization>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, name, tenant_id, created_at FROM organizations ORDER BY created_at, id",
        )
        .fetch_all(&self.readers)
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
        .fetch_optional(&self.readers)
        .await?)
    }

    async fn create_organization(
        &self,
        org: NewOrganization,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
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
        let mut tx = self.begin_write().await?;
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
            .fetch_optional(&self.readers)
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
            .fetch_all(&self.readers)
            .await?)
    }

    async fn remove_user(
        &self,
        user_id: &str,
        at: i64,
        audit: AuditEvent,
    ) -> Result<Removal, StoreError> {
        let mut tx = self.begin_write().await?;
        // The epoch moves too, so even a future bug that forgot the removed flag would still
        // find every old token stale. The Owner count is read in the same statement, so two
        // concurrent removals cannot leave the organization without one.
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
            let active: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM users WHERE id = $1 AND removed_at IS NULL")
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
        let mut tx = self.begin_write().await?;
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
        let mut tx = self.begin_write().await?;
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
        if let Some(found) = self.direct.refresh_grant(token_hash) {
            return Ok(found);
        }
        self.pooled_refresh_grant(token_hash).await
    }

    async fn session_policy(&self, org_id: &str) -> Result<Option<SessionPolicy>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT refresh_idle_expiry_secs AS idle_expiry_secs, \
                    refresh_max_age_secs AS max_age_secs \
             FROM organizations WHERE id = $1",
        )
        .bind(org_id)
        .fetch_optional(&self.readers)
        .await?)
    }

    async fn set_session_policy(
        &self,
        org_id: &str,
        expected: SessionPolicy,
        policy: SessionPolicy,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE organizations SET refresh_idle_expiry_secs = $2, refresh_max_age_secs = $3 \
             WHERE id = $1 AND refresh_idle_expiry_secs IS $4 \
               AND refresh_max_age_secs IS $5",
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
        if let Some(found) = self.direct.principal(user_id, session_id) {
            return Ok(found);
        }
        self.pooled_principal(user_id, session_id).await
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
            .fetch_all(&self.readers)
            .await?)
    }

    async fn member(&self, org_id: &str, user_id: &str) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1 AND u.org_id = $2 AND u.removed_at IS NULL"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(org_id)
            .fetch_optional(&self.readers)
            .await?)
    }

    async fn update_profile(
        &self,
        user_id: &str,
        changes: ProfileChanges,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE users SET name = COALESCE($2, name), phone = COALESCE($3, phone), \
             dark_mode = COALESCE($4, dark_mode), \
             dark_mode_sync_with_os = COALESCE($5, dark_mode_sync_with_os), updated_at = $6, \
             role = COALESCE($7, role) \
             WHERE id = $1 AND removed_at IS NULL \
               AND ($7 IS NULL OR $7 = 'owner' OR role <> 'owner' \
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
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM users WHERE id = $1 AND removed_at IS NULL AND password_hash IS NOT NULL",
        )
        .bind(user_id)
        .fetch_optional(&self.readers)
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
        let mut tx = self.begin_write().await?;
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
            .fetch_optional(&self.readers)
            .await?)
    }

    async fn accept_invitation(
        &self,
        token_hash: &[u8; 32],
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
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
            .fetch_all(&self.readers)
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
            .fetch_optional(&self.readers)
            .await?)
    }

    async fn organizations_of_email(&self, email: &str) -> Result<Vec<Organization>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT o.id, o.name, o.tenant_id, o.created_at FROM organizations o \
             JOIN users u ON u.org_id = o.id \
             WHERE u.email = $1 AND u.removed_at IS NULL ORDER BY o.created_at, o.id",
        )
        .bind(email)
        .fetch_all(&self.readers)
        .await?)
    }

    async fn insert_authorization_code(
        &self,
        code: NewAuthorizationCode,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
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
        let mut tx = self.begin_write().await?;
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
        let Some(spent) = spent_code(&mut tx, code_hash).await? else {
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
            insert_audit(
                &mut tx,
                &spent.replay_event(replay, revoked.rows_affected() > 0),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(CodeRedemption::Replayed)
    }

    async fn insert_device_code(&self, code: NewDeviceCode) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
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
        let mut tx = self.begin_write().await?;
        let code: Option<DeviceCode> = sqlx::query_as(
            "SELECT client_id, scope, expires_at, interval_secs, last_polled_at, status, user_id \
             FROM device_codes WHERE device_code_hash = $1",
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
        let mut tx = self.begin_write().await?;
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
        let mut tx = self.begin_write().await?;
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
        let mut tx = self.begin_write().await?;
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
        .fetch_optional(&self.readers)
        .await?)
    }

    async fn record_attempt_failure(
        &self,
        key: &str,
        at: i64,
        policy: AttemptPolicy,
        trip: AuditEvent,
    ) -> Result<AttemptCounter, StoreError> {
        let mut tx = self.begin_write().await?;
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
        let mut tx = self.begin_write().await?;
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
        let mut tx = self.begin_write().await?;
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
            .fetch_all(&self.readers)
            .await?)
    }

    async fn live_session(&self, token_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM refresh_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.id = $1 AND {LIVE_SESSION}"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(token_id)
            .fetch_optional(&self.readers)
            .await?)
    }

    async fn insert_browser_session(
        &self,
        id_hash: &[u8; 32],
        user_id: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
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
            .fetch_optional(&self.readers)
            .await?)
    }

    async fn delete_browser_session(&self, id_hash: &[u8; 32]) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
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
        // One statement per chunk, not per token: each statement is a hop to the writer's
        // thread, and with many tokens in use nearly every refresh is some token's first use
        // of the minute.
        // A token named twice gets its latest use: one statement would apply either row.
        let mut latest: std::collections::HashMap<&str, &TokenUse> =
            std::collections::HashMap::with_capacity(uses.len());
        for token_use in uses {
            let entry = latest
                .entry(token_use.token_id.as_str())
                .or_insert(token_use);
            if token_use.at > entry.at {
                *entry = token_use;
            }
        }
        let uses: Vec<&TokenUse> = latest.into_values().collect();
        let mut tx = self.begin_write().await?;
        for chunk in uses.chunks(TOKEN_USES_PER_STATEMENT) {
            let mut update = sqlx::QueryBuilder::<Sqlite>::new(
                "UPDATE refresh_tokens SET last_used_at = used.column2, \
                 last_used_addr = used.column3 FROM (",
            );
            update.push_values(chunk, |mut row, token_use| {
                row.push_bind(&token_use.token_id)
                    .push_bind(token_use.at)
                    .push_bind(&token_use.address);
            });
            update.push(
                ") AS used WHERE refresh_tokens.id = used.column1 \
                 AND (refresh_tokens.last_used_at IS NULL \
                      OR refresh_tokens.last_used_at < used.column2)",
            );
            update.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT kid, algorithm, private_key, public_key, created_at, retired_at \
             FROM signing_keys ORDER BY created_at DESC, kid",
        )
        .fetch_all(&self.readers)
        .await?)
    }

    async fn insert_signing_key_if_none_active(
        &self,
        key: SigningKeyRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
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
        let mut tx = self.begin_write().await?;
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
        let mut tx = self.begin_write().await?;
        // BEGIN IMMEDIATE: no other writer between this check and the rotation.
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
        let mut tx = self.begin_write().await?;
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
        // One statement, its own transaction: the single writer is free again between batches.
        let _turn = self.write_gate.lock().await;
        let done = sqlx::query(kind.delete_statement())
            .bind(before)
            .bind(limit)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn try_cleanup_lock(&self) -> Result<Option<CleanupLock>, StoreError> {
        // One server per database file: nobody to take turns with.
        Ok(Some(CleanupLock::uncontended()))
    }

    async fn recent_audit_events(&self, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY id DESC LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.readers)
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
        Ok(statement.fetch_all(&self.readers).await?)
    }

    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        insert_audit(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn follow_changes(
        &self,
        on_change: &(dyn Fn(Change) + Send + Sync),
    ) -> Result<(), StoreError> {
        let mut seen: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM audit_events")
            .fetch_one(&self.readers)
            .await?;
        on_change(Change::listening());
        let mut ticker = tokio::time::interval(CHANGE_POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as(
                "SELECT id, action, subject_user_id FROM audit_events WHERE id > $1 \
                 ORDER BY id LIMIT $2",
            )
            .bind(seen)
            .bind(CHANGE_POLL_BATCH)
            .fetch_all(&self.readers)
            .await?;
            for (id, action, user_id) in rows {
                seen = id;
                on_change(Change { action, user_id });
            }
        }
    }

    async fn close(&self) {
        // First: the last connection to close checkpoints the WAL and removes it, and a
        // read-only one cannot. The revoke thread answers what is queued, then closes its own.
        self.revokes.close().await;
        self.direct.close();
        self.readers.close().await;
        self.writer.close().await;
    }

    fn connection_stats(&self) -> super::ConnectionStats {
        super::ConnectionStats {
            pools: vec![
                super::PoolStats::of("sqlite_writer", &self.writer),
                super::PoolStats::of("sqlite_readers", &self.readers),
            ],
            circuit: None,
        }
    }
}

/// Retires every active key (as of `key.created_at`) and makes `key` the active one; returns
/// the kids it retired.
async fn retire_and_insert_signing_key(
    tx: &mut SqliteConnection,
    key: &SigningKeyRecord,
) -> Result<Vec<String>, sqlx::Error> {
    let retired: Vec<String> = sqlx::query_scalar(
        "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL RETURNING kid",
    )
    .bind(key.created_at)
    .fetch_all(&mut *tx)
    .await?;
    insert_signing_key(tx, key).await?;
    Ok(retired)
}

async fn insert_signing_key(
    tx: &mut SqliteConnection,
    key: &SigningKeyRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at, retired_at) \
         VALUES ($1, $2, $3, $4, $5, NULL)",
    )
    .bind(&key.kid)
    .bind(&key.algorithm)
    .bind(&key.private_key)
    .bind(&key.public_key)
    .bind(key.created_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_user(tx: &mut SqliteConnection, user: &NewUser) -> Result<(), sqlx::Error> {
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
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Values of `PRAGMA synchronous`.
    const NORMAL: i64 = 1;
    const FULL: i64 = 2;

    const SYNCHRONOUS: &str = "PRAGMA synchronous";

    /// A commit is on disk before it is answered (a revoke answered 200 survives a power cut)
    /// only if the connection that commits it syncs the WAL at every commit: in WAL mode
    /// `NORMAL` syncs only at checkpoints, so a power cut takes the last commits with it, and
    /// no other test would notice. The setting is per connection and shows nowhere else, so it
    /// is read from each connection that writes.
    #[tokio::test]
    async fn every_connection_that_writes_syncs_its_commits() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(dir.path(), 2).await?;
        let writer: i64 = sqlx::query_scalar(SYNCHRONOUS)
            .fetch_one(&store.writer)
            .await?;
        assert_eq!(writer, FULL, "the sqlx writer's connection");
        // The revoke thread's connection never leaves its thread; this is the function that
        // opens it, and the thread changes no setting afterwards.
        let revoker = super::super::sqlite_revoker::open_connection(store.path())?;
        let revoker: i64 = revoker.query_row(SYNCHRONOUS, [], |row| row.get(0))?;
        assert_eq!(revoker, FULL, "the revoke thread's connection");
        // The readers commit nothing, but they checkpoint (`checkpoint_periodically`): they
        // copy the WAL into the database file, and the WAL is then written over from its
        // start. Without syncing around that (`OFF`), a power cut loses commits the WAL no
        // longer holds; `NORMAL` syncs there, which is all a checkpoint needs. (The direct
        // readers are read-only: `sqlite_direct` checks that they cannot write.)
        let reader: i64 = sqlx::query_scalar(SYNCHRONOUS)
            .fetch_one(&store.readers)
            .await?;
        assert!(
            reader >= NORMAL,
            "the checkpointing readers do not sync: {reader}"
        );
        store.close().await;
        Ok(())
    }
}
