//! Persistence: the `Store` trait every handler and domain function talks to, the records it
//! returns, the storage error type, and the one place that picks a backend (SQLite or
//! PostgreSQL) from the database URL.

/// The columns of a [`RefreshGrant`], for both backends' SQL (`t` is the token, `u` its user,
/// `o` their organization, as [`refresh_grant_tables`] names them).
macro_rules! refresh_grant_columns {
    () => {
        "t.id AS token_id, t.user_epoch AS token_epoch, t.revoked_at AS token_revoked_at, \
         t.client_id, t.scope, u.id AS user_id, u.token_epoch AS user_epoch, \
         u.removed_at AS user_removed_at, u.org_id, o.tenant_id, \
         t.created_at AS token_created_at, t.last_used_at AS token_last_used_at, \
         o.refresh_idle_expiry_secs AS idle_expiry_secs, \
         o.refresh_max_age_secs AS max_age_secs"
    };
}

/// The tables [`refresh_grant_columns`] reads.
macro_rules! refresh_grant_tables {
    () => {
        "FROM refresh_tokens t \
         JOIN users u ON u.id = t.user_id \
         JOIN organizations o ON o.id = u.org_id"
    };
}

mod breaker;
mod cached;
mod cleanup;
mod group_commit;
mod postgres;
mod sqlite;
mod sqlite_direct;
mod sqlite_revoker;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

pub use breaker::{BreakerSettings, CircuitBreaker, GuardedStore};
pub use cached::{CacheSettings, CacheStats, CachedStore};
pub use cleanup::{CleanupLock, Garbage};
pub use postgres::{CLEANUP_LOCK, PgPoolSettings, PostgresStore};
pub use sqlite::{DATABASE_FILE, SqliteStore};

/// Storage failures. Handlers map every variant to a response without internals.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (for example an active user with that email exists).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The database answered with an error (or the driver failed) on a working connection.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The database cannot be reached: no connection could be opened in time, or the one in
    /// use broke (see [`is_connection_failure`]). Trips the circuit breaker.
    #[error("database unreachable: {0}")]
    Unreachable(sqlx::Error),
    /// The circuit breaker is open: a recent request found the database unreachable, so this
    /// one fails at once instead of waiting for a connection, until a probe gets an answer.
    #[error("database unreachable (circuit open; waiting for it to answer again)")]
    CircuitOpen,
    /// Migrations could not be applied.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The data directory or database file could not be prepared.
    #[error("cannot prepare the database file: {0}")]
    Io(#[from] std::io::Error),
    /// The database file or its directory cannot be written (a read-only file system or
    /// missing permissions). prismd writes on every start, so it refuses to start.
    #[error(
        "cannot write the database file {}: {cause}; prismd needs a writable data directory \
         (check the mount and the file's owner)",
        path.display()
    )]
    NotWritable {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    /// The disk holding the database is full: writes fail (and are answered 503) until space
    /// is freed; reads go on.
    #[error("the database's disk is full; writes fail until space is freed: {0}")]
    DiskFull(Box<dyn std::error::Error + Send + Sync>),
    /// SQLite answered with an error on one of the backend's own connections (the revoke
    /// thread's); like [`StoreError::Database`].
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    /// An admin command was pointed at a directory without a database.
    #[error(
        "no database at {0}; check --data-dir, or start the server once ('prismd serve') to create it"
    )]
    Missing(std::path::PathBuf),
    /// An admin command was pointed at a PostgreSQL database nobody has set up.
    #[error(
        "the PostgreSQL database has no prism-auth tables; check --database-url, or start the \
         server once ('prismd serve') to create them"
    )]
    NoSchema,
    /// The database answers but refuses writes (for example a read-only standby).
    #[error("the database is read-only")]
    ReadOnly,
    /// The database URL names no backend we have. Only the scheme is shown: the rest may hold
    /// a password.
    #[error(
        "unsupported database URL (scheme '{0}'); use sqlite:<file> or postgres://user@host/db"
    )]
    UnsupportedUrl(String),
}

impl From<sqlx::Error> for StoreError {
    /// Sorts driver errors: connection-class failures become [`StoreError::Unreachable`],
    /// everything else [`StoreError::Database`].
    fn from(err: sqlx::Error) -> Self {
        if is_connection_failure(&err) {
            Self::Unreachable(err)
        } else if is_disk_full(&err) {
            Self::DiskFull(Box::new(err))
        } else {
            Self::Database(err)
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    /// The SQLite backend's own connections (the revoke thread): a full disk is
    /// [`StoreError::DiskFull`], anything else [`StoreError::Sqlite`].
    fn from(err: rusqlite::Error) -> Self {
        if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            Self::DiskFull(Box::new(err))
        } else {
            Self::Sqlite(err)
        }
    }
}

impl StoreError {
    /// Whether the database could not be reached (rather than refusing this one request):
    /// the caller may retry, and the server is not ready.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::CircuitOpen)
    }
}

/// PostgreSQL SQLSTATEs that mean "no usable connection" rather than "this statement failed":
/// class 08 (connection exception) is matched by prefix; 57P01 admin_shutdown, 57P02
/// crash_shutdown, 57P03 cannot_connect_now (starting up or shutting down) and 53300
/// too_many_connections.
const CONNECTION_SQLSTATES: [&str; 4] = ["57P01", "57P02", "57P03", "53300"];

/// Whether `err` says the database cannot be reached or the connection broke: I/O and TLS
/// errors, a pool that timed out or was closed, a crashed driver worker, and the SQLSTATEs
/// above. Constraint violations, syntax errors, serialization failures and the like are not:
/// the database answered.
pub fn is_connection_failure(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_connection_sqlstate(&code)),
        _ => false,
    }
}

/// SQLite's `SQLITE_FULL` (13) and PostgreSQL's `disk_full` (53100).
fn is_disk_full(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code == "13" || code == "53100"),
        _ => false,
    }
}

fn is_connection_sqlstate(code: &str) -> bool {
    code.starts_with("08") || CONNECTION_SQLSTATES.contains(&code)
}

/// Where the data lives, decided from `--database-url` (or its absence).
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded database: this file.
    Sqlite(PathBuf),
    /// A PostgreSQL server, by connection URL.
    Postgres(String),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Backend {
    /// `sqlite:<file>` (also `sqlite://<file>`) or no URL: SQLite, by default
    /// `<data_dir>/prismd.db`. `postgres://` or `postgresql://`: PostgreSQL.
    pub fn from_url(url: Option<&str>, data_dir: &Path) -> Result<Self, StoreError> {
        let url = url.map(str::trim).filter(|u| !u.is_empty());
        let Some(url) = url else {
            return Ok(Self::Sqlite(data_dir.join(DATABASE_FILE)));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            // sqlx-style options (`?mode=rwc`) would silently become part of the file name.
            if path.contains('?') {
                return Err(StoreError::UnsupportedUrl(
                    "sqlite with ?options (not supported)".into(),
                ));
            }
            return Ok(Self::Sqlite(if path.is_empty() {
                data_dir.join(DATABASE_FILE)
            } else {
                PathBuf::from(path)
            }));
        }
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        Err(StoreError::UnsupportedUrl(
            scheme.chars().take(20).collect(),
        ))
    }

    /// For logs: the SQLite file, or PostgreSQL host, port and database, never the password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite {}", path.display()),
            Self::Postgres(url) => match url::Url::parse(url) {
                Ok(parsed) => format!(
                    "postgres {}:{}{}",
                    parsed.host_str().unwrap_or("(socket)"),
                    parsed.port().unwrap_or(5432),
                    parsed.path()
                ),
                Err(_) => "postgres".to_owned(),
            },
        }
    }
}

/// Connection settings for either backend.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// SQLite read connections.
    pub sqlite_readers: u32,
    /// PostgreSQL pool.
    pub postgres: PgPoolSettings,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            sqlite_readers: 8,
            postgres: PgPoolSettings::default(),
        }
    }
}

/// Opens (creating if needed) the database and applies migrations: what `serve` does.
pub async fn open(backend: &Backend, options: OpenOptions) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match backend {
        Backend::Sqlite(path) => {
            Arc::new(SqliteStore::open_file(path, options.sqlite_readers).await?)
        }
        Backend::Postgres(url) => {
            let store = Arc::new(PostgresStore::open(url, options.postgres).await?);
            // A server keeps running through database outages: fail fast while it is gone.
            Arc::new(GuardedStore::new(
                store,
                BreakerSettings {
                    probe_timeout: options.postgres.acquire_timeout.saturating_mul(2),
                    ..BreakerSettings::default()
                },
            ))
        }
    })
}

/// Opens a database that must exist already: what admin commands do, so a mistyped location
/// is an error rather than a new, empty install.
pub async fn open_existing(
    backend: &Backend,
    options: OpenOptions,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match backend {
        Backend::Sqlite(path) => {
            Arc::new(SqliteStore::open_existing_file(path, options.sqlite_readers).await?)
        }
        Backend::Postgres(url) => {
            Arc::new(PostgresStore::open_existing(url, options.postgres).await?)
        }
    })
}

/// What a removal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// No active user with that id.
    NotFound,
    /// Refused: the organization would be left without an Owner.
    LastOwner,
}

/// An organization (a Prismatic tenant).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub tenant_id: String,
    pub created_at: i64,
}

/// A user account as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub token_epoch: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub removed_at: Option<i64>,
    pub phone: Option<String>,
    pub external_id: Option<String>,
    pub dark_mode: bool,
    pub dark_mode_sync_with_os: bool,
}

/// Profile fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProfileChanges {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub dark_mode: Option<bool>,
    pub dark_mode_sync_with_os: Option<bool>,
    /// A new role (its key, e.g. `admin`). Refused, like the whole change, when it would
    /// leave the organization without an active Owner.
    pub role: Option<String>,
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub password_hash: Option<String>,
    pub external_id: Option<String>,
    pub created_at: i64,
}

/// An organization to create.
#[derive(Debug, Clone)]
pub struct NewOrganization {
    pub id: String,
    pub name: String,
    pub tenant_id: String,
    pub created_at: i64,
}

/// A refresh token to store. Only the SHA-256 of the secret is kept.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    pub id: String,
    pub token_hash: [u8; 32],
    pub user_id: String,
    pub client_id: String,
    pub name: Option<String>,
    pub scope: String,
    pub created_at: i64,
    /// The authorization code this token was issued for, if any: a replay of that code
    /// revokes this token.
    pub from_code: Option<[u8; 32]>,
}

/// A live session (refresh token) as its user sees it: never its hash.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRecord {
    /// The refresh token's id (a UUID); access tokens carry it as `sid`.
    pub id: String,
    pub user_id: String,
    pub client_id: String,
    /// "CLI login", "Device login", or the name given when it was minted.
    pub name: Option<String>,
    pub created_at: i64,
    /// Written in batches, so up to a minute (plus a few seconds) behind.
    pub last_used_at: Option<i64>,
    pub last_used_addr: Option<String>,
}

/// The columns of a [`SessionRecord`] (`t`: refresh_tokens), the same on both backends.
pub(crate) const SESSION_COLUMNS: &str =
    "t.id, t.user_id, t.client_id, t.name, t.created_at, t.last_used_at, t.last_used_addr";

/// The standing rule (`domain::standing`) as SQL over `t` (refresh_tokens) and `u` (its user):
/// a session listed as live must be one the token endpoint would honour.
pub(crate) const LIVE_SESSION: &str =
    "t.revoked_at IS NULL AND t.user_epoch = u.token_epoch AND u.removed_at IS NULL";

/// Most sessions [`Store::list_sessions`] returns: a list for people to read, not an export.
pub const MAX_LISTED_SESSIONS: i64 = 500;

/// An authorization code to store (its hash), bound to client, redirect URI and challenge.
#[derive(Debug, Clone)]
pub struct NewAuthorizationCode {
    pub code_hash: [u8; 32],
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub user_id: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// An authorization code as redeemed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuthorizationCode {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub user_id: String,
    pub expires_at: i64,
}

/// An authorization code presented again after it was spent: whose it was, and whether it
/// was replayed before.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct SpentCode {
    pub user_id: String,
    pub org_id: String,
    pub replayed_at: Option<i64>,
    pub refresh_token_id: Option<String>,
}

/// Reads a [`SpentCode`] by code hash (`$1`), the same on both backends.
pub(crate) const SPENT_CODE: &str = "SELECT c.user_id, u.org_id, c.replayed_at, c.refresh_token_id \
     FROM authorization_codes c JOIN users u ON u.id = c.user_id WHERE c.code_hash = $1";

impl SpentCode {
    /// The audit row of its first replay: `replay` about the code's user, with the session it
    /// issued (if any) and whether the replay revoked it.
    pub(crate) fn replay_event(&self, replay: AuditEvent, revoked: bool) -> AuditEvent {
        AuditEvent {
            org_id: Some(self.org_id.clone()),
            subject_user_id: Some(self.user_id.clone()),
            detail: Some(
                serde_json::json!({ "token_id": self.refresh_token_id, "revoked": revoked })
                    .to_string(),
            ),
            ..replay
        }
    }
}

/// What presenting an authorization code did.
#[derive(Debug, Clone)]
pub enum CodeRedemption {
    /// First use: the code is now spent.
    Redeemed(AuthorizationCode),
    /// Used before: the refresh token issued from it (if any) has been revoked.
    Replayed,
    Unknown,
}

/// A device authorization to store (RFC 8628).
#[derive(Debug, Clone)]
pub struct NewDeviceCode {
    pub device_code_hash: [u8; 32],
    pub user_code_hash: [u8; 32],
    pub client_id: String,
    pub scope: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub interval_secs: i64,
}

/// A device authorization as polled.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceCode {
    pub client_id: String,
    pub scope: String,
    pub expires_at: i64,
    pub interval_secs: i64,
    pub last_polled_at: Option<i64>,
    pub status: String,
    pub user_id: Option<String>,
}

/// A user with their password hash, for login.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: Option<String>,
}

/// Everything the refresh exchange needs, read in one indexed look-up by token hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshGrant {
    pub token_id: String,
    pub token_epoch: i64,
    /// Set when this one session was revoked on its own (RFC 7009 revocation of one token,
    /// session management); revoke-all moves the user's epoch instead.
    pub token_revoked_at: Option<i64>,
    pub client_id: String,
    pub scope: String,
    pub user_id: String,
    pub user_epoch: i64,
    pub user_removed_at: Option<i64>,
    pub org_id: String,
    pub tenant_id: String,
    /// When the token was minted: what a maximum age is measured from.
    pub token_created_at: i64,
    /// Its last use as written so far (batched, so up to a minute behind; the process's own
    /// pending uses are in `domain::usage`).
    pub token_last_used_at: Option<i64>,
    /// The organization's session policy, read in the same look-up.
    #[sqlx(flatten)]
    pub policy: SessionPolicy,
}

/// Decides whether presenting a refresh token with this grant revokes all of its user's
/// tokens, and returns the audit event to record if so. Called where the revoke is written,
/// so it must be quick and must not wait on anything.
pub type RevokeDecision = Arc<dyn Fn(&RefreshGrant) -> Option<AuditEvent> + Send + Sync>;

/// A revoke-all made through [`Store::revoke_all_by_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedAll {
    pub user_id: String,
    /// False when a concurrent revoke moved the user's epoch first: the tokens are dead
    /// either way, and only that one wrote an audit row.
    pub moved: bool,
}

/// Grants read with their token's hash in a `token_hash` column, as both backends' group
/// reads for [`Store::revoke_all_by_token`] return them.
fn grants_with_hashes<'r, R>(rows: &'r [R]) -> Result<Vec<([u8; 32], RefreshGrant)>, StoreError>
where
    R: sqlx::Row,
    RefreshGrant: sqlx::FromRow<'r, R>,
    Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    rows.iter()
        .map(|row| {
            let hash: Vec<u8> = row.try_get("token_hash")?;
            let hash = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| {
                sqlx::Error::Decode("a stored token hash is not 32 bytes long".into())
            })?;
            Ok((hash, <RefreshGrant as sqlx::FromRow<R>>::from_row(row)?))
        })
        .collect()
}

/// An organization's session policy (issue 7). `None` turns a limit off, the default, for
/// parity with Prismatic, where refresh tokens live until revoked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionPolicy {
    /// A refresh token not used for longer than this (seconds) is refused.
    pub idle_expiry_secs: Option<i64>,
    /// A refresh token older than this (seconds) is refused.
    pub max_age_secs: Option<i64>,
}

/// The caller behind an access token: the user, their organization and the state of the
/// session the token was issued from, read in one look-up.
#[derive(Debug, Clone)]
pub struct PrincipalRecord {
    pub user: User,
    pub org: Organization,
    /// `None` when the session row does not exist (or belongs to someone else).
    pub session_revoked_at: Option<Option<i64>>,
    /// The session's creation and last use as written so far (`None` without a session row),
    /// which the organization's session policy counts from.
    pub session_created_at: Option<i64>,
    pub session_last_used_at: Option<i64>,
    /// The organization's session policy, read in the same look-up.
    pub policy: SessionPolicy,
}

/// The last use of a refresh token, recorded in batches off the hot path.
#[derive(Debug, Clone)]
pub struct TokenUse {
    pub token_id: String,
    pub at: i64,
    pub address: Option<String>,
}

/// A signing key as stored. `private_key` is PKCS#8, or sealed with the key encryption key
/// (`tokens::at_rest`).
#[derive(Clone, sqlx::FromRow)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub algorithm: String,
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

// By hand, so that no log line or error that prints a record can show its private key.
impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("private_key", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// A new stored form of one signing key's private key (sealing it with a key encryption
/// key), applied only if the row still holds `previous`.
#[derive(Clone)]
pub struct PrivateKeyReplacement {
    pub kid: String,
    pub previous: Vec<u8>,
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for PrivateKeyReplacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKeyReplacement")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A security event, written in the same transaction as the change it describes.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub at: i64,
    pub action: &'static str,
    pub actor: String,
    pub org_id: Option<String>,
    pub subject_user_id: Option<String>,
    pub address: Option<String>,
    pub user_agent: Option<String>,
    /// Free-form JSON; never a secret.
    pub detail: Option<String>,
}

/// How many failures a key may have and how it is locked after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptPolicy {
    /// Failures within [`AttemptPolicy::window_ms`] that lock the key (this many, in a row).
    pub max_failures: i64,
    /// How long failures are counted from the first one, in ms.
    pub window_ms: i64,
    /// The first lock, in ms; each further failure doubles it.
    pub lock_ms: i64,
    /// The longest lock, in ms.
    pub max_lock_ms: i64,
}

impl AttemptPolicy {
    /// The lock after `failures` failures, in ms: none below the threshold, then doubling.
    pub fn lock_for(&self, failures: i64) -> i64 {
        if failures < self.max_failures.max(1) {
            return 0;
        }
        let doublings = u32::try_from((failures - self.max_failures).clamp(0, 32)).unwrap_or(32);
        self.lock_ms
            .saturating_mul(1_i64 << doublings)
            .min(self.max_lock_ms)
            .max(0)
    }
}

/// The failures counted for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct AttemptCounter {
    pub failures: i64,
    pub window_start: i64,
    /// Refused until then (ms); 0 or in the past when not locked.
    pub locked_until: i64,
}

/// An audit event as read back.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: i64,
    pub at: i64,
    pub action: String,
    pub actor: String,
    pub org_id: Option<String>,
    pub subject_user_id: Option<String>,
    pub address: Option<String>,
    pub user_agent: Option<String>,
    pub detail: Option<String>,
}

/// The columns of an [`AuditRecord`], the same on both backends.
pub(crate) const AUDIT_COLUMNS: &str =
    "id, at, action, actor, org_id, subject_user_id, address, user_agent, detail";

/// Most events a page of the audit trail holds: pages are for reading, and a bounded page
/// keeps one request's work bounded. [`Store::audit_events_page`] returns one more at most,
/// so a reader can tell whether another page follows.
pub const MAX_AUDIT_PAGE: i64 = 200;

/// Which audit events [`Store::audit_events_page`] reads; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this organization's events. `None` (operators only) reads every organization's
    /// and the events that belong to none (for example a failed sign-in of an unknown email).
    pub org_id: Option<String>,
    pub action: Option<String>,
    /// Events this user did (actor `user:<id>`) or that are about them (subject).
    pub user_id: Option<String>,
    /// At or after this time (ms).
    pub since: Option<i64>,
    /// Before this time (ms).
    pub until: Option<i64>,
    /// Keyset cursor: only events with a smaller id (older) than this one.
    pub before_id: Option<i64>,
}

/// A value bound to the statement [`AuditQuery::statement`] builds.
pub enum AuditBind {
    Text(String),
    Int(i64),
}

impl AuditQuery {
    /// The `SELECT` of one page, newest first, with only the conditions this query has (so
    /// each backend plans it with the `(org_id, id)` index of migration 0008, not around
    /// `$n IS NULL` branches), and what to bind, in order. `$n` placeholders work on both
    /// backends. Public so the conformance suite can check the plan of exactly this SQL.
    pub fn statement(&self, limit: i64) -> (String, Vec<AuditBind>) {
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        fn next(bind: AuditBind, binds: &mut Vec<AuditBind>) -> String {
            binds.push(bind);
            format!("${}", binds.len())
        }
        if let Some(org) = &self.org_id {
            conditions.push(format!(
                "org_id = {}",
                next(AuditBind::Text(org.clone()), &mut binds)
            ));
        }
        if let Some(action) = &self.action {
            conditions.push(format!(
                "action = {}",
                next(AuditBind::Text(action.clone()), &mut binds)
            ));
        }
        if let Some(user) = &self.user_id {
            let subject = next(AuditBind::Text(user.clone()), &mut binds);
            let actor = next(AuditBind::Text(format!("user:{user}")), &mut binds);
            conditions.push(format!("(subject_user_id = {subject} OR actor = {actor})"));
        }
        if let Some(since) = self.since {
            conditions.push(format!("at >= {}", next(AuditBind::Int(since), &mut binds)));
        }
        if let Some(until) = self.until {
            conditions.push(format!("at < {}", next(AuditBind::Int(until), &mut binds)));
        }
        if let Some(before) = self.before_id {
            conditions.push(format!("id < {}", next(AuditBind::Int(before), &mut binds)));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let limit = next(
            AuditBind::Int(limit.clamp(1, MAX_AUDIT_PAGE + 1)),
            &mut binds,
        );
        (
            format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events{filter} ORDER BY id DESC LIMIT {limit}"
            ),
            binds,
        )
    }
}

/// Audit actions that change nothing another process may have cached (they record what
/// happened, not a change of anyone's standing). The change feed still carries them, but
/// the cache ignores them, so a flood of failed sign-ins (for unknown emails they concern no
/// user, which would otherwise mean "drop everything") cannot empty the caches of every
/// replica.
pub const INFORMATIONAL_ACTIONS: [&str; 3] = ["login.succeeded", "login.failed", "limit.tripped"];

/// A committed change that may make state cached by some process stale: the audited action
/// and the user it concerns. Every process follows the changes of every other process (and
/// its own) through [`Store::follow_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The audit action, for example `tokens.revoked_all` or `user.removed`.
    pub action: String,
    /// `None` means "anyone": drop everything cached.
    pub user_id: Option<String>,
}

impl Change {
    /// The action of [`Change::listening`].
    pub const LISTENING: &'static str = "listening";

    /// What a follower assumes when it may have missed changes (for example after a
    /// reconnect): everything changed.
    pub fn everything() -> Self {
        Self {
            action: "*".to_owned(),
            user_id: None,
        }
    }

    /// The first thing a feed delivers, once every change committed from then on will reach
    /// it. Whatever was committed before may have been missed, so it also means "everything
    /// changed".
    pub fn listening() -> Self {
        Self {
            action: Self::LISTENING.to_owned(),
            user_id: None,
        }
    }
}

/// One connection pool's state at a moment, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// A fixed name: `sqlite_writer`, `sqlite_readers` or `postgres`.
    pub pool: &'static str,
    /// Connections open now, idle or in use.
    pub open: u32,
    pub idle: u32,
    /// Most connections the pool opens.
    pub max: u32,
}

impl PoolStats {
    /// Reads a sqlx pool's counters (no I/O).
    pub fn of<DB: sqlx::Database>(pool: &'static str, sqlx_pool: &sqlx::Pool<DB>) -> Self {
        Self {
            pool,
            open: sqlx_pool.size(),
            idle: u32::try_from(sqlx_pool.num_idle()).unwrap_or(u32::MAX),
            max: sqlx_pool.options().get_max_connections(),
        }
    }
}

/// The database connections' state, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub pools: Vec<PoolStats>,
    /// The circuit breaker's state; `None` where there is no breaker (SQLite).
    pub circuit: Option<CircuitStats>,
}

/// The circuit breaker's state, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CircuitStats {
    pub open: bool,
    /// Requests refused at once while the circuit was open, since the start.
    pub rejections: u64,
}

/// The one storage interface. Every method is a single short transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks that the database answers, for reads and for writes.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates `org` and `owner` if no organization exists yet. Returns whether it did.
    async fn bootstrap(
        &self,
        org: NewOrganization,
        owner: NewUser,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// The organization created first (the install's default).
    async fn default_organization(&self) -> Result<Option<Organization>, StoreError>;

    /// Every organization, oldest first.
    async fn list_organizations(&self) -> Result<Vec<Organization>, StoreError>;

    /// The organization with this tenant id.
    async fn organization_by_tenant(
        &self,
        tenant_id: &str,
    ) -> Result<Option<Organization>, StoreError>;

    /// Creates another organization.
    async fn create_organization(
        &self,
        org: NewOrganization,
        audit: AuditEvent,
    ) -> Result<(), StoreError>;

    /// Creates a user; `Conflict` when an active user of the organization has that email.
    async fn create_user(&self, user: NewUser, audit: AuditEvent) -> Result<User, StoreError>;

    /// The active (not removed) user of `org_id` with this (normalised) email.
    async fn find_active_user_by_email(
        &self,
        org_id: &str,
        email: &str,
    ) -> Result<Option<User>, StoreError>;

    /// One page of an organization's active users, oldest first, after the `(created_at, id)`
    /// position `after`.
    async fn users_page(
        &self,
        org_id: &str,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<User>, StoreError>;

    /// An active user of `org_id`.
    async fn member(&self, org_id: &str, user_id: &str) -> Result<Option<User>, StoreError>;

    /// Changes profile fields (and the role) of an active user. Returns false when there is
    /// no such user, or when the change would demote the organization's last active Owner
    /// (the Owner count is read in the same statement, as in [`Store::remove_user`]).
    async fn update_profile(
        &self,
        user_id: &str,
        changes: ProfileChanges,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Whether an active user has a password.
    async fn has_password(&self, user_id: &str) -> Result<bool, StoreError>;

    /// Stores an invitation for a user (the hash of its token), replacing earlier ones.
    async fn insert_invitation(
        &self,
        token_hash: &[u8; 32],
        user_id: &str,
        expires_at: i64,
        audit: AuditEvent,
    ) -> Result<(), StoreError>;

    /// The active user of an unused, unexpired invitation.
    async fn invitation_user(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<User>, StoreError>;

    /// Spends an invitation and sets the user's password in one transaction. Returns false
    /// when the invitation is used, expired or unknown.
    async fn accept_invitation(
        &self,
        token_hash: &[u8; 32],
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Users of an organization, oldest first.
    async fn list_users(
        &self,
        org_id: &str,
        include_removed: bool,
    ) -> Result<Vec<User>, StoreError>;

    /// Marks a user removed, unless they are the organization's last active Owner.
    async fn remove_user(
        &self,
        user_id: &str,
        at: i64,
        audit: AuditEvent,
    ) -> Result<Removal, StoreError>;

    /// Replaces an active user's password hash and ends their browser sessions. Returns false
    /// when there is no such user.
    async fn set_password_hash(
        &self,
        user_id: &str,
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Stores a new refresh token (its hash) under the user's current epoch, read in the same
    /// statement so a concurrent revoke-all cannot leave it half-dead. Returns false when the
    /// user does not exist or has been removed.
    async fn insert_refresh_token(
        &self,
        token: NewRefreshToken,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// The hot-path look-up: the token with this hash, its user and tenant.
    async fn find_refresh_grant(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<RefreshGrant>, StoreError>;

    /// The session policy of an organization; `None` when there is no such organization.
    async fn session_policy(&self, org_id: &str) -> Result<Option<SessionPolicy>, StoreError>;

    /// Replaces an organization's session policy, if it is still `expected`, and writes
    /// `audit` in the same transaction. The audit row is what tells every replica's cache to
    /// drop the organization's refresh grants (they carry the policy). Returns false when the
    /// organization does not exist or its policy is no longer `expected` (changed meanwhile),
    /// and then writes nothing.
    async fn set_session_policy(
        &self,
        org_id: &str,
        expected: SessionPolicy,
        policy: SessionPolicy,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Revokes every refresh token and access token of a user in one durable write, by
    /// moving the user's epoch on from `expected_epoch`, and ends their browser sessions. Returns false when the epoch had
    /// already moved (someone else revoked first).
    async fn revoke_all_tokens(
        &self,
        user_id: &str,
        expected_epoch: i64,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Revokes every token of the user behind a refresh token, as [`Store::revoke_all_tokens`]
    /// does, when `decide` (given the token's grant as read where the revoke is written)
    /// returns the audit event to record; `None` when no token has this hash or `decide`
    /// refused. The grant is read next to the write because on SQLite a read on a reader
    /// after each commit costs more than the revoke (see `group_commit`).
    async fn revoke_all_by_token(
        &self,
        token_hash: &[u8; 32],
        decide: RevokeDecision,
    ) -> Result<Option<RevokedAll>, StoreError>;

    /// The user, organization (with its session policy) and session state behind an access
    /// token.
    async fn principal(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<Option<PrincipalRecord>, StoreError>;

    /// Active users with this email in any organization, oldest first, with password hashes.
    async fn credentials_by_email(&self, email: &str) -> Result<Vec<Credentials>, StoreError>;

    /// The user behind an active session, by id.
    async fn active_user(&self, user_id: &str) -> Result<Option<User>, StoreError>;

    /// Organizations where an active user with this email is a member.
    async fn organizations_of_email(&self, email: &str) -> Result<Vec<Organization>, StoreError>;

    /// Stores a new authorization code.
    async fn insert_authorization_code(&self, code: NewAuthorizationCode)
    -> Result<(), StoreError>;

    /// Spends an authorization code. A second presentation marks it replayed and revokes the
    /// refresh token issued from it, in the same transaction; the first replay also writes
    /// `replay` there, about the code's user (the store sets subject and organization, and a
    /// detail with the session id and whether it was revoked). Later replays write no more
    /// rows, so replaying one code cannot grow the audit log.
    async fn redeem_authorization_code(
        &self,
        code_hash: &[u8; 32],
        at: i64,
        replay: AuditEvent,
    ) -> Result<CodeRedemption, StoreError>;

    /// Stores a new device authorization.
    async fn insert_device_code(&self, code: NewDeviceCode) -> Result<(), StoreError>;

    /// Notes a poll of a device code and returns its state before this poll.
    async fn poll_device_code(
        &self,
        device_code_hash: &[u8; 32],
        at: i64,
    ) -> Result<Option<DeviceCode>, StoreError>;

    /// Moves a pending, unexpired device code (found by its user code) to `approved` (with
    /// the user) or `denied`. Returns false when there is no such pending code.
    async fn decide_device_code(
        &self,
        user_code_hash: &[u8; 32],
        approve_for: Option<&str>,
        at: i64,
    ) -> Result<bool, StoreError>;

    /// Moves an approved device code to `redeemed`; false if it was not approved (any more).
    async fn redeem_device_code(&self, device_code_hash: &[u8; 32]) -> Result<bool, StoreError>;

    /// Slows a client down: a longer polling interval from now on.
    async fn slow_down_device_code(
        &self,
        device_code_hash: &[u8; 32],
        interval_secs: i64,
    ) -> Result<(), StoreError>;

    /// The failures counted for `key`, if any.
    async fn attempt_counter(&self, key: &str) -> Result<Option<AttemptCounter>, StoreError>;

    /// Counts one failure for `key` at `at` under `policy` (a failure after the window
    /// restarts the count) and returns the counter after it. When this failure locks the key,
    /// `trip` is audited in the same transaction.
    async fn record_attempt_failure(
        &self,
        key: &str,
        at: i64,
        policy: AttemptPolicy,
        trip: AuditEvent,
    ) -> Result<AttemptCounter, StoreError>;

    /// Forgets the failures of `key` (after a success).
    async fn clear_attempts(&self, key: &str) -> Result<(), StoreError>;

    /// Revokes one session (refresh token) of `user_id`. Returns false if it was not live.
    async fn revoke_session(
        &self,
        token_id: &str,
        user_id: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError>;

    /// A user's live sessions (not revoked, issued under the user's current epoch, user not
    /// removed), newest first, at most `limit` (capped at [`MAX_LISTED_SESSIONS`]).
    async fn list_sessions(
        &self,
        user_id: &str,
        limit: i64,
    ) -> Result<Vec<SessionRecord>, StoreError>;

    /// One live session by id (same rule as [`Store::list_sessions`]), whoever's it is.
    async fn live_session(&self, token_id: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Stores a browser session (the hash of its cookie).
    async fn insert_browser_session(
        &self,
        id_hash: &[u8; 32],
        user_id: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// The active user of an unexpired browser session.
    async fn browser_session_user(
        &self,
        id_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<User>, StoreError>;

    /// Ends a browser session.
    async fn delete_browser_session(&self, id_hash: &[u8; 32]) -> Result<(), StoreError>;

    /// Records last-use times and addresses of refresh tokens (batched).
    async fn record_token_uses(&self, uses: &[TokenUse]) -> Result<(), StoreError>;

    /// Every signing key, newest first.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;

    /// Stores `key` unless an active (not retired) key exists already.
    async fn insert_signing_key_if_none_active(
        &self,
        key: SigningKeyRecord,
    ) -> Result<(), StoreError>;

    /// Makes `key` the active signing key and retires every key active until now (its
    /// `retired_at` becomes `key.created_at`), with `audit`, in one transaction that also
    /// excludes a concurrent first-key creation. Returns the kids it retired.
    async fn rotate_signing_key(
        &self,
        key: SigningKeyRecord,
        audit: AuditEvent,
    ) -> Result<Vec<String>, StoreError>;

    /// [`Store::rotate_signing_key`], but only if no active key was created at or after
    /// `active_created_before` (milliseconds), checked inside the rotation's transaction and
    /// lock: of several processes racing to rotate an old key, one does. `None` when the
    /// active key is that new, with nothing written.
    async fn rotate_signing_key_if_stale(
        &self,
        key: SigningKeyRecord,
        audit: AuditEvent,
        active_created_before: i64,
    ) -> Result<Option<Vec<String>>, StoreError>;

    /// Replaces the stored private key of each named signing key whose row still holds
    /// `previous`, with `audit`, in one transaction (under the signing-key lock). Returns the
    /// kids it replaced; when none, nothing is written, not even the audit event.
    async fn replace_private_keys(
        &self,
        replacements: &[PrivateKeyReplacement],
        audit: AuditEvent,
    ) -> Result<Vec<String>, StoreError>;

    /// Deletes at most `limit` rows of one kind of garbage older than `before` (milliseconds;
    /// what "older" means is the kind's), in one short statement. Returns how many it deleted:
    /// fewer than `limit` means there are no more.
    async fn delete_garbage(
        &self,
        kind: Garbage,
        before: i64,
        limit: i64,
    ) -> Result<u64, StoreError>;

    /// The right to run a cleanup round now, or `None` when another replica is running one.
    async fn try_cleanup_lock(&self) -> Result<Option<CleanupLock>, StoreError>;

    /// Audit events, newest first, at most `limit`.
    async fn recent_audit_events(&self, limit: i64) -> Result<Vec<AuditRecord>, StoreError>;

    /// One page of audit events matching `query`, newest first (descending id), at most
    /// `limit` (capped at [`MAX_AUDIT_PAGE`] + 1). The next page starts before the last id seen.
    async fn audit_events_page(
        &self,
        query: &AuditQuery,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    /// Writes one audit event on its own, for events that change nothing else in the store
    /// (a sign-in that succeeded or failed).
    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError>;

    /// Hands every change committed from now on, by any process on this database, to
    /// `on_change`, in commit order per process, starting with [`Change::listening`] once
    /// nothing can be missed any more. Runs until the feed breaks and then returns (with the
    /// error, if there was one); the caller must then assume it missed changes and call again. PostgreSQL uses `LISTEN`; SQLite polls the audit log, whose ids grow in
    /// commit order because SQLite has one writer at a time.
    async fn follow_changes(
        &self,
        on_change: &(dyn Fn(Change) + Send + Sync),
    ) -> Result<(), StoreError>;

    /// Closes connections cleanly (SQLite checkpoints its WAL).
    async fn close(&self);

    /// Connection pools and circuit breaker as of now, for metrics: reads counters in memory,
    /// never the database, so a scrape works (and is cheap) during an outage.
    fn connection_stats(&self) -> ConnectionStats;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both backends must run the same schema versions: a migration added to one only would
    /// make the other's records (and `FromRow`) disagree.
    #[test]
    fn migration_versions_match() {
        let versions = |m: &sqlx::migrate::Migrator| -> Vec<(i64, String)> {
            m.iter()
                .filter(|m| !m.migration_type.is_down_migration())
                .map(|m| (m.version, m.description.to_string()))
                .collect()
        };
        let sqlite = versions(&sqlite::MIGRATOR);
        let postgres = versions(&postgres::MIGRATOR);
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, postgres);
    }

    /// The same check on the directories, file name by file name.
    #[test]
    fn migration_file_names_match() -> Result<(), std::io::Error> {
        let names = |dir: &str| -> Result<Vec<String>, std::io::Error> {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let mut names = std::fs::read_dir(path)?
                .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>()?;
            names.sort();
            Ok(names)
        };
        assert_eq!(names("sqlite")?, names("postgres")?);
        Ok(())
    }

    #[test]
    fn audit_statements_bind_only_the_filters_given() {
        let (sql, binds) = AuditQuery::default().statement(50);
        assert_eq!(
            sql,
            format!("SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY id DESC LIMIT $1")
        );
        assert!(matches!(binds.as_slice(), [AuditBind::Int(50)]));
        let full = AuditQuery {
            org_id: Some("o".into()),
            action: Some("login.failed".into()),
            user_id: Some("u".into()),
            since: Some(10),
            until: Some(20),
            before_id: Some(99),
        };
        let (sql, binds) = full.statement(1_000_000);
        assert!(sql.ends_with(
            "WHERE org_id = $1 AND action = $2 AND (subject_user_id = $3 OR actor = $4) \
             AND at >= $5 AND at < $6 AND id < $7 ORDER BY id DESC LIMIT $8"
        ));
        let texts: Vec<&str> = binds
            .iter()
            .filter_map(|b| match b {
                AuditBind::Text(t) => Some(t.as_str()),
                AuditBind::Int(_) => None,
            })
            .collect();
        assert_eq!(texts, ["o", "login.failed", "u", "user:u"]);
        assert!(
            matches!(binds.last(), Some(AuditBind::Int(limit)) if *limit == MAX_AUDIT_PAGE + 1),
            "the page is capped"
        );
    }

    #[test]
    fn connection_failures_are_told_apart_from_answers() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_connection_failure(&sqlx::Error::Io(refused)));
        assert!(is_connection_failure(&sqlx::Error::PoolTimedOut));
        assert!(is_connection_failure(&sqlx::Error::PoolClosed));
        assert!(!is_connection_failure(&sqlx::Error::RowNotFound));
        assert!(!is_connection_failure(&sqlx::Error::Protocol("odd".into())));
        for code in [
            "08000", "08006", "08P01", "57P01", "57P02", "57P03", "53300",
        ] {
            assert!(is_connection_sqlstate(code), "{code}");
        }
        // unique_violation, serialization_failure, read_only_sql_transaction, query_canceled,
        // invalid_password, and SQLite's extended codes.
        for code in ["23505", "40001", "25006", "57014", "28P01", "2067", "5"] {
            assert!(!is_connection_sqlstate(code), "{code}");
        }
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unreachable());
        assert!(StoreError::CircuitOpen.is_unreachable());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_unreachable());
    }

    #[test]
    fn backend_from_url() -> Result<(), StoreError> {
        let dir = Path::new("/srv/prism");
        assert_eq!(
            Backend::from_url(None, dir)?,
            Backend::Sqlite(dir.join(DATABASE_FILE))
        );
        assert_eq!(
            Backend::from_url(Some("sqlite:"), dir)?,
            Backend::Sqlite(dir.join(DATABASE_FILE))
        );
        assert_eq!(
            Backend::from_url(Some("sqlite:///var/lib/p.db"), dir)?,
            Backend::Sqlite(PathBuf::from("/var/lib/p.db"))
        );
        assert_eq!(
            Backend::from_url(Some("sqlite:rel.db"), dir)?,
            Backend::Sqlite(PathBuf::from("rel.db"))
        );
        let pg = Backend::from_url(Some("postgres://u:secret@db:6543/prism"), dir)?;
        assert_eq!(pg.describe(), "postgres db:6543/prism");
        assert!(!format!("{pg:?}").contains("secret"));
        assert!(matches!(
            Backend::from_url(Some("mysql://u:secret@h/db"), dir),
            Err(StoreError::UnsupportedUrl(s)) if s == "mysql"
        ));
        Ok(())
    }
}
