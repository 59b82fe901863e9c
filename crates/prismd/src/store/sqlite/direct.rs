//! The SQLite backend's direct read path: the two hot-path reads (a refresh grant by token
//! hash, the principal behind an access token) answered on the calling thread through a few
//! read-only `rusqlite` connections, instead of through sqlx's reader pool.
//!
//! Why it exists: sqlx's SQLite driver runs every connection on its own worker thread; a
//! query is sent there over a channel and its answer comes back over another, after a pool
//! acquire. That is two cross-thread wake-ups and context switches per query, and on a small
//! machine they cost more than the read itself: a point read on a memory-mapped WAL database
//! of a million tokens takes a few microseconds, and with every refresh going to the database
//! the hops, not SQLite, bounded throughput. A WAL reader never waits for the writer, so the
//! read can run right here, on the tokio worker, as briefly as a mutex hand-off would.
//!
//! Its rules:
//! - It never holds a read transaction between calls. Each read is one `query_row` on a
//!   cached statement, and the statement is reset (ending SQLite's implicit read transaction)
//!   before the call returns; no `Statement` or `Rows` outlives it. So every read starts a
//!   new WAL snapshot and sees every commit made before it began, a revoke above all.
//! - It never blocks a worker thread on a lock: a caller takes the first free connection with
//!   `try_lock`, starting at a rotating index, and when all are busy it goes to the sqlx pool
//!   as before. SQLite's busy handler is off on these connections for the same reason: in
//!   the rare moments a WAL reader would wait (recovery after a crash), the pool, on its own
//!   threads, does the waiting.
//! - Any error here (which SQLite raises only in such odd moments, or a value the row mapping
//!   refuses) is not an answer: the caller asks the pool once more, whose errors are already
//!   sorted into [`super::StoreError`] (unreachable, disk full, ...). This path needs no error
//!   type of its own, and the pool, the reference, decides what the caller is told.
//!
//! The SQL is the pool's ([`REFRESH_GRANT_SQL`], [`PRINCIPAL_SQL`]), and the rows map to the
//! same records; by position here, with the positions' names checked by a test.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, TryLockError};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, named_params};

use super::settings::MMAP_SIZE;
use crate::store::sql::tokens::{PRINCIPAL_SQL, REFRESH_GRANT_SQL};
use crate::store::{Organization, PrincipalRecord, RefreshGrant, SessionPolicy, User};

/// Most direct connections: one per thread that can read at the same moment is all that can
/// ever be in use, since a read holds its connection only while it runs, without yielding.
const MAX_DIRECT_READERS: usize = 8;

/// How many direct connections to open beside a reader pool of `pool_max`: one per core (the
/// runtime's default worker count), at most the pool's size and [`MAX_DIRECT_READERS`].
pub(super) fn direct_reader_count(pool_max: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let pool = usize::try_from(pool_max).unwrap_or(MAX_DIRECT_READERS);
    cores.min(pool).clamp(1, MAX_DIRECT_READERS)
}

/// The direct connections. `None` in a slot: closed (or never opened); such a slot is skipped
/// and the pool answers.
pub(super) struct DirectReaders {
    slots: Vec<Mutex<Option<Connection>>>,
    /// Where the next caller starts looking, so that reads spread over the connections.
    next: AtomicUsize,
    /// Reads that failed here and went to the pool; logged at 1, 2, 4, 8, ... so a lasting
    /// problem shows without a line per request.
    failures: AtomicU64,
}

impl DirectReaders {
    /// Opens `count` read-only connections on the database at `path`, which must exist in WAL
    /// mode already. A connection that cannot be opened is logged and left out: the pool
    /// still answers everything, only without the shortcut.
    pub(super) fn open(path: &Path, count: usize) -> Self {
        let mut slots = Vec::with_capacity(count);
        for _ in 0..count {
            match open_connection(path) {
                Ok(conn) => slots.push(Mutex::new(Some(conn))),
                Err(err) => {
                    tracing::warn!(
                        error = %err,
                        "cannot open a direct SQLite reader; those reads go through the pool"
                    );
                }
            }
        }
        Self {
            slots,
            next: AtomicUsize::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// [`super::Store::find_refresh_grant`] here; `None` when not answered here (all
    /// connections busy or closed, or the read failed): ask the pool.
    pub(super) fn refresh_grant(&self, token_hash: &[u8; 32]) -> Option<Option<RefreshGrant>> {
        self.read(|conn| {
            conn.prepare_cached(REFRESH_GRANT_SQL)?
                .query_row(named_params! { "$1": &token_hash[..] }, refresh_grant)
                .optional()
        })
    }

    /// [`super::Store::principal`] here; `None` as for [`Self::refresh_grant`].
    pub(super) fn principal(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Option<Option<PrincipalRecord>> {
        self.read(|conn| {
            // By name: `$2` comes first in the text, so positions would swap the two.
            conn.prepare_cached(PRINCIPAL_SQL)?
                .query_row(
                    named_params! { "$1": user_id, "$2": session_id },
                    principal_record,
                )
                .optional()
        })
    }

    /// Runs `read` on the first free connection. The statement handles `read` creates are
    /// dropped (and so reset) before it returns, which is what ends the read transaction.
    fn read<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        let count = self.slots.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..count {
            let Some(slot) = self.slots.get(start.wrapping_add(offset) % count) else {
                continue;
            };
            let guard = match slot.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::WouldBlock) => continue,
                // A panic while reading left nothing half-done that matters: statements are
                // reset by their destructors during unwinding, and the connection holds no
                // state of ours.
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            };
            let Some(conn) = guard.as_ref() else {
                continue;
            };
            return match read(conn) {
                Ok(answer) => Some(answer),
                Err(err) => {
                    self.note_failure(&err);
                    None
                }
            };
        }
        None
    }

    fn note_failure(&self, err: &rusqlite::Error) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures.is_power_of_two() {
            // The error names the statement's failure or a column, never a bound value.
            tracing::warn!(
                error = %err,
                failures,
                "a direct SQLite read failed; answered through the pool instead"
            );
        }
    }

    /// Closes every direct connection; later reads go to the pool. Waits for a read in
    /// progress, which takes microseconds.
    pub(super) fn close(&self) {
        for slot in &self.slots {
            let connection = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(connection) = connection
                && let Err((_, err)) = connection.close()
            {
                tracing::warn!(error = %err, "closing a direct SQLite reader failed");
            }
        }
    }

    /// How many connections are open.
    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| {
                slot.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some()
            })
            .count()
    }
}

/// One read-only connection with the settings of the pool's that matter for reads.
fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    // No mutex inside SQLite: ours serializes the use of each connection.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The pool's memory map, so that a read touches pages without a syscall; `query_only` in
    // case a statement that writes ever reaches this path. No busy timeout (see the module
    // comment): a read that would wait fails at once and the pool waits instead.
    conn.execute_batch(&format!(
        "PRAGMA mmap_size = {MMAP_SIZE}; PRAGMA query_only = ON; PRAGMA busy_timeout = 0;"
    ))?;
    Ok(conn)
}

// The rows are read by position: by name, every field would be a scan of the statement's
// column names, which for the principal's 22 columns costs as much as a good part of the read.
// The tests' GRANT_COLUMNS and PRINCIPAL_COLUMNS name the positions, checked against the
// statements.

/// A [`REFRESH_GRANT_SQL`] row, as the pool's `FromRow` maps it.
pub(super) fn refresh_grant(row: &Row<'_>) -> rusqlite::Result<RefreshGrant> {
    Ok(RefreshGrant {
        token_id: row.get(0)?,
        token_epoch: row.get(1)?,
        token_revoked_at: row.get(2)?,
        client_id: row.get(3)?,
        scope: row.get(4)?,
        user_id: row.get(5)?,
        user_epoch: row.get(6)?,
        user_removed_at: row.get(7)?,
        org_id: row.get(8)?,
        tenant_id: row.get(9)?,
        token_created_at: row.get(10)?,
        token_last_used_at: row.get(11)?,
        policy: SessionPolicy {
            idle_expiry_secs: row.get(12)?,
            max_age_secs: row.get(13)?,
        },
        role: row.get(14)?,
        token_expires_at: row.get(15)?,
        held_org_scopes: row.get(16)?,
    })
}

/// A [`PRINCIPAL_SQL`] row, as the pool's path maps it.
fn principal_record(row: &Row<'_>) -> rusqlite::Result<PrincipalRecord> {
    let user = User {
        id: row.get(0)?,
        org_id: row.get(1)?,
        email: row.get(2)?,
        name: row.get(3)?,
        role: row.get(4)?,
        token_epoch: row.get(5)?,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
        removed_at: row.get(8)?,
        phone: row.get(9)?,
        external_id: row.get(10)?,
        dark_mode: row.get(11)?,
        dark_mode_sync_with_os: row.get(12)?,
        identity_id: row.get(13)?,
        joined_at: row.get(14)?,
        kind: row.get(15)?,
        description: row.get(16)?,
    };
    // No session row (unknown, or someone else's): the LEFT JOIN gave NULLs.
    let session_id: Option<String> = row.get(20)?;
    let session_revoked_at = match session_id {
        Some(_) => Some(row.get::<_, Option<i64>>(21)?),
        None => None,
    };
    Ok(PrincipalRecord {
        org: Organization {
            id: user.org_id.clone(),
            name: row.get(17)?,
            tenant_id: row.get(18)?,
            created_at: row.get(19)?,
        },
        user,
        session_revoked_at,
        session_created_at: row.get(22)?,
        session_last_used_at: row.get(23)?,
        policy: SessionPolicy {
            idle_expiry_secs: row.get(24)?,
            max_age_secs: row.get(25)?,
        },
        held_org_scopes: row.get(26)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cache::CacheSettings;
    use crate::store::sql::tokens::{read_principal, read_refresh_grant};
    use crate::store::sql::{Dialect, SqlStore};
    use crate::store::sqlite::{DATABASE_FILE, SqliteDialect};
    use crate::store::traits::*;
    use crate::store::{
        AuditEvent, JoinExisting, NewOrganization, NewRefreshToken, NewUser, ProfileChanges,
        TokenUse,
    };

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// [`REFRESH_GRANT_SQL`]'s columns, in order.
    const GRANT_COLUMNS: [&str; 17] = [
        "token_id",
        "token_epoch",
        "token_revoked_at",
        "client_id",
        "scope",
        "user_id",
        "user_epoch",
        "user_removed_at",
        "org_id",
        "tenant_id",
        "token_created_at",
        "token_last_used_at",
        "idle_expiry_secs",
        "max_age_secs",
        "role",
        "token_expires_at",
        "held_org_scopes",
    ];

    /// [`PRINCIPAL_SQL`]'s columns, in order.
    const PRINCIPAL_COLUMNS: [&str; 27] = [
        "id",
        "org_id",
        "email",
        "name",
        "role",
        "token_epoch",
        "created_at",
        "updated_at",
        "removed_at",
        "phone",
        "external_id",
        "dark_mode",
        "dark_mode_sync_with_os",
        "identity_id",
        "joined_at",
        "kind",
        "description",
        "org_name",
        "tenant_id",
        "org_created_at",
        "session_id",
        "session_revoked_at",
        "session_created_at",
        "session_last_used_at",
        "idle_expiry_secs",
        "max_age_secs",
        "held_org_scopes",
    ];

    const T0: i64 = 1_700_000_000_000;

    fn audit(action: &'static str, at: i64) -> AuditEvent {
        AuditEvent {
            at,
            action,
            actor: "test".into(),
            org_id: None,
            subject_user_id: None,
            address: None,
            user_agent: None,
            detail: None,
        }
    }

    fn hash(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn new_user(org_id: &str, email: &str, role: &str, at: i64) -> NewUser {
        NewUser {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: org_id.into(),
            email: email.into(),
            name: email.into(),
            role: role.into(),
            password_hash: None,
            external_id: None,
            created_at: at,
            join_existing: JoinExisting::Refuse,
            invited_by_org: None,
        }
    }

    fn token(user: &User, n: u8, at: i64) -> NewRefreshToken {
        NewRefreshToken {
            id: uuid::Uuid::new_v4().to_string(),
            token_hash: hash(n),
            user_id: user.id.clone(),
            client_id: "client".into(),
            name: Some(format!("token {n}")),
            scope: "openid".into(),
            created_at: at,
            from_code: None,
            named: false,
            expires_at: None,
            created_by: None,
        }
    }

    /// A store with an organization (with a session policy), an owner with a used token and
    /// a profile, and a member with external id whose one token was revoked on its own.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: SqlStore<SqliteDialect>,
        path: std::path::PathBuf,
        owner: User,
        member: User,
        owner_token: String,
        member_token: String,
    }

    async fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SqlStore::new(
            SqliteDialect::open_file(&dir.path().join(DATABASE_FILE), 8).await?,
            CacheSettings {
                ttl: std::time::Duration::ZERO,
                capacity: 0,
            },
        );
        let org = NewOrganization {
            id: uuid::Uuid::new_v4().to_string(),
            name: "Org".into(),
            tenant_id: "tenant".into(),
            created_at: T0,
        };
        let owner = new_user(&org.id, "owner@example.com", "owner", T0);
        let org_id = org.id.clone();
        assert!(store.bootstrap(org, owner, audit("bootstrap", T0)).await?);
        let mut member = new_user(&org_id, "member@example.com", "member", T0 + 1);
        member.external_id = Some("ext-1".into());
        let member = store
            .add_member(member, None, audit("add", T0 + 1))
            .await?
            .map_err(|refused| format!("{refused:?}"))?
            .user;
        let owner = store
            .find_active_user_by_email(&org_id, "owner@example.com")
            .await?
            .ok_or("no owner")?;
        let profile = ProfileChanges {
            phone: Some("+1 555".into()),
            dark_mode: Some(true),
            dark_mode_sync_with_os: Some(false),
            ..ProfileChanges::default()
        };
        assert_eq!(
            store
                .update_profile(
                    &owner.id,
                    profile,
                    Some(&owner.id),
                    audit("profile", T0 + 2)
                )
                .await?,
            Ok(())
        );
        let policy = SessionPolicy {
            idle_expiry_secs: Some(3_600),
            max_age_secs: None,
        };
        assert!(
            store
                .set_session_policy(
                    &org_id,
                    SessionPolicy::default(),
                    policy,
                    audit("policy", T0 + 3)
                )
                .await?
        );
        let owner_token = token(&owner, 1, T0 + 4);
        let member_token = token(&member, 2, T0 + 5);
        for new in [&owner_token, &member_token] {
            assert!(
                store
                    .insert_refresh_token(new.clone(), audit("token", new.created_at))
                    .await?
            );
        }
        store
            .record_token_uses(&[TokenUse {
                token_id: owner_token.id.clone(),
                at: T0 + 6,
                address: Some("127.0.0.1".into()),
            }])
            .await?;
        assert!(
            store
                .revoke_session(&member_token.id, &member.id, audit("rv", T0 + 7))
                .await?
        );
        let owner = store.active_user(&owner.id).await?.ok_or("no owner")?;
        Ok(Fixture {
            path: dir.path().join(DATABASE_FILE),
            _dir: dir,
            store,
            owner,
            member,
            owner_token: owner_token.id,
            member_token: member_token.id,
        })
    }

    /// Every field, every NULL and non-NULL, as the pool reads it (records compare by their
    /// `Debug` form: not every record is `PartialEq`).
    #[tokio::test]
    async fn answers_what_the_pool_answers() -> TestResult {
        let f = fixture().await?;
        let direct = f.store.dialect().direct();
        assert_eq!(direct.open_count(), direct_reader_count(8));
        for n in [1, 2, 3] {
            let here = direct.refresh_grant(&hash(n)).ok_or("not answered here")?;
            let pooled = read_refresh_grant(&mut f.store.dialect().reader(), &hash(n)).await?;
            assert_eq!(format!("{here:?}"), format!("{pooled:?}"), "token {n}");
            assert_eq!(here.is_some(), n != 3);
        }
        let grant = direct.refresh_grant(&hash(1)).ok_or("not answered here")?;
        let grant = grant.ok_or("no grant")?;
        assert_eq!(grant.token_last_used_at, Some(T0 + 6));
        assert_eq!(grant.policy.idle_expiry_secs, Some(3_600));
        let cases = [
            (f.owner.id.as_str(), f.owner_token.as_str()),
            (f.owner.id.as_str(), f.member_token.as_str()),
            (f.member.id.as_str(), f.member_token.as_str()),
            (f.owner.id.as_str(), "unknown"),
            ("nobody", f.owner_token.as_str()),
        ];
        for (user_id, session_id) in cases {
            let here = direct
                .principal(user_id, session_id)
                .ok_or("not answered here")?;
            let pooled =
                read_principal(&mut f.store.dialect().reader(), user_id, session_id).await?;
            assert_eq!(
                format!("{here:?}"),
                format!("{pooled:?}"),
                "{user_id} / {session_id}"
            );
        }
        let owner = direct
            .principal(&f.owner.id, &f.owner_token)
            .ok_or("not answered here")?
            .ok_or("no principal")?;
        assert_eq!(owner.user, f.owner);
        assert_eq!(owner.session_revoked_at, Some(None));
        let member = direct
            .principal(&f.member.id, &f.member_token)
            .ok_or("not answered here")?
            .ok_or("no principal")?;
        assert_eq!(member.session_revoked_at, Some(Some(T0 + 7)));
        assert_eq!(member.user.external_id.as_deref(), Some("ext-1"));
        f.store.close().await;
        Ok(())
    }

    /// Each connection has read the grant before; a revoke committed through the writer is
    /// seen by the very next read on every one of them.
    #[tokio::test]
    async fn a_commit_is_seen_by_the_next_read_on_every_connection() -> TestResult {
        let f = fixture().await?;
        let direct = f.store.dialect().direct();
        let count = direct.open_count();
        // Round-robin from a rotating start: `count` calls in a row visit every connection.
        for _ in 0..count {
            let grant = direct.refresh_grant(&hash(1)).ok_or("not answered here")?;
            assert_eq!(grant.ok_or("no grant")?.user_epoch, 0);
            let principal = direct
                .principal(&f.owner.id, &f.owner_token)
                .ok_or("not answered here")?;
            assert_eq!(principal.ok_or("no principal")?.user.token_epoch, 0);
        }
        assert!(
            f.store
                .revoke_all_tokens(&f.owner.id, 0, audit("revoke-all", T0 + 10))
                .await?
        );
        assert!(
            f.store
                .revoke_session(&f.owner_token, &f.owner.id, audit("rv", T0 + 11))
                .await?
        );
        for _ in 0..count {
            let grant = direct
                .refresh_grant(&hash(1))
                .ok_or("not answered here")?
                .ok_or("no grant")?;
            assert_eq!((grant.token_epoch, grant.user_epoch), (0, 1));
            assert_eq!(grant.token_revoked_at, Some(T0 + 11));
            let principal = direct
                .principal(&f.owner.id, &f.owner_token)
                .ok_or("not answered here")?
                .ok_or("no principal")?;
            assert_eq!(principal.user.token_epoch, 1);
            assert_eq!(principal.session_revoked_at, Some(Some(T0 + 11)));
        }
        f.store.close().await;
        Ok(())
    }

    /// Whether a TRUNCATE checkpoint is held up by a reader: it cannot reset the WAL while any
    /// connection still has a read transaction (a snapshot) open. It also reports busy, at
    /// once and without waiting, while the store's own periodic checkpoint runs; so it is
    /// blocked only if several attempts a little apart all are, which a held snapshot does.
    fn checkpoint_blocked(path: &Path) -> rusqlite::Result<bool> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_millis(200))?;
        for _ in 0..5 {
            let busy: i64 =
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
            if busy == 0 {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(true)
    }

    /// No read transaction is left open between calls (the probe is shown to catch one).
    #[tokio::test]
    async fn no_read_transaction_outlives_a_call() -> TestResult {
        let f = fixture().await?;
        let path = f.path.to_owned();
        assert_eq!(path.file_name(), Some(std::ffi::OsStr::new(DATABASE_FILE)));
        {
            // A statement stepped but not reset: an open read transaction.
            let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let mut held = reader.prepare("SELECT id FROM users")?;
            let mut rows = held.query([])?;
            assert!(rows.next()?.is_some());
            f.store
                .record_token_uses(&[TokenUse {
                    token_id: f.owner_token.clone(),
                    at: T0 + 20,
                    address: None,
                }])
                .await?;
            assert!(checkpoint_blocked(&path)?, "the probe sees a held snapshot");
        }
        // Something in the WAL again, then reads on every direct connection.
        f.store
            .record_token_uses(&[TokenUse {
                token_id: f.owner_token.clone(),
                at: T0 + 21,
                address: None,
            }])
            .await?;
        let direct = f.store.dialect().direct();
        for _ in 0..direct.open_count() {
            assert!(
                direct
                    .refresh_grant(&hash(1))
                    .ok_or("not answered")?
                    .is_some()
            );
            assert!(
                direct
                    .refresh_grant(&hash(9))
                    .ok_or("not answered")?
                    .is_none()
            );
            assert!(
                direct
                    .principal(&f.owner.id, &f.owner_token)
                    .ok_or("not answered")?
                    .is_some()
            );
        }
        assert!(
            !checkpoint_blocked(&path)?,
            "a direct reader kept a read transaction open"
        );
        f.store.close().await;
        Ok(())
    }

    /// With every connection taken, the pool answers: a burst never waits on a lock.
    #[tokio::test]
    async fn busy_connections_pass_to_the_pool() -> TestResult {
        let f = fixture().await?;
        let direct = f.store.dialect().direct();
        let held: Vec<_> = direct
            .slots
            .iter()
            .map(|slot| slot.lock().unwrap_or_else(PoisonError::into_inner))
            .collect();
        assert!(direct.refresh_grant(&hash(1)).is_none(), "all are busy");
        let grant = f
            .store
            .find_refresh_grant(&hash(1))
            .await?
            .ok_or("no grant")?;
        assert_eq!(grant.user_id, f.owner.id);
        let principal = f
            .store
            .principal(&f.owner.id, &f.owner_token)
            .await?
            .ok_or("no principal")?;
        assert_eq!(principal.user, f.owner);
        drop(held);
        assert!(direct.refresh_grant(&hash(1)).is_some(), "free again");
        f.store.close().await;
        Ok(())
    }

    /// The positions the rows are read by name the columns the statements return.
    #[tokio::test]
    async fn columns_are_where_the_mapping_reads_them() -> TestResult {
        let f = fixture().await?;
        let names = |sql: &str| {
            f.store
                .dialect()
                .direct()
                .read(|conn| Ok(conn.prepare(sql)?.column_names().join(",")))
        };
        assert_eq!(
            names(REFRESH_GRANT_SQL).ok_or("not answered")?,
            GRANT_COLUMNS.join(",")
        );
        assert_eq!(
            names(PRINCIPAL_SQL).ok_or("not answered")?,
            PRINCIPAL_COLUMNS.join(",")
        );
        f.store.close().await;
        Ok(())
    }

    /// The settings that matter for reads; an error here is no answer (the pool is asked).
    #[tokio::test]
    async fn read_only_mapped_and_errors_pass_to_the_pool() -> TestResult {
        let f = fixture().await?;
        let direct = f.store.dialect().direct();
        let mapped = direct
            .read(|conn| conn.query_row("PRAGMA mmap_size", [], |row| row.get::<_, i64>(0)))
            .ok_or("not answered")?;
        assert_eq!(mapped.to_string(), MMAP_SIZE);
        let query_only = direct
            .read(|conn| conn.query_row("PRAGMA query_only", [], |row| row.get::<_, i64>(0)))
            .ok_or("not answered")?;
        assert_eq!(query_only, 1);
        assert!(
            direct
                .read(|conn| conn.execute("DELETE FROM users", []))
                .is_none(),
            "a write is refused, and the refusal is no answer"
        );
        assert_eq!(direct.failures.load(Ordering::Relaxed), 1);
        assert!(f.store.active_user(&f.owner.id).await?.is_some());
        f.store.close().await;
        Ok(())
    }

    /// Closing closes the direct connections first, so the pool's last connection can
    /// checkpoint and remove the WAL; reads after that are not answered here.
    #[tokio::test]
    async fn close_leaves_no_wal_behind() -> TestResult {
        let f = fixture().await?;
        let wal = f.path.with_extension("db-wal");
        assert!(wal.exists());
        f.store.close().await;
        assert!(!wal.exists(), "the WAL outlived the close");
        assert_eq!(f.store.dialect().direct().open_count(), 0);
        assert!(f.store.dialect().direct().refresh_grant(&hash(1)).is_none());
        Ok(())
    }
}
