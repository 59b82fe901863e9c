//! The embedded SQLite backend's own side of the store: one writer connection (SQLite allows
//! one writer at a time, so queueing in the pool beats retrying on `SQLITE_BUSY`) and a pool
//! of readers, WAL journal, and `synchronous = FULL` so that every commit (a revocation above
//! all) is on disk before the reply. The hot-path reads go through direct connections
//! ([`direct`]), and revoke-alls are written by a thread of their own ([`revoker`]); it and
//! the writer take turns through the write gate. Everything else is the shared SQL of
//! `store::sql`.

mod direct;
mod revoker;
mod settings;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::group_commit::{GroupWrite, RevokeQueue};
use super::sql::funnel::{Exec, Query, Record};
use super::sql::tokens::{read_principal, read_refresh_grant};
use super::sql::{Dialect, Lock};
use super::{
    AuditEvent, Change, CleanupLock, ConnectionStats, PoolStats, PrincipalRecord, RefreshGrant,
    RevokeDecision, RevokedAll, StoreError, TokenUse,
};
use direct::{DirectReaders, direct_reader_count};
pub use settings::DATABASE_FILE;
use settings::{BUSY_TIMEOUT, MMAP_SIZE};

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How often the change follower reads the audit log for changes other processes (admin
/// commands) committed: the bound on how stale a cached standing can be after `prismd users
/// remove` run beside the server.
const CHANGE_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Most audit rows read per poll.
const CHANGE_POLL_BATCH: i64 = 500;

/// Last-use records per `UPDATE` (three bound values each, far below SQLite's limit of 32,766).
const TOKEN_USES_PER_STATEMENT: usize = 1000;

/// The SQLite side of the store.
pub(crate) struct SqliteDialect {
    writer: SqlitePool,
    readers: SqlitePool,
    /// Answers the two hot-path reads on the calling thread, without the pool's thread hop.
    direct: DirectReaders,
    /// Revoke-alls wait here to be committed together, by the revoke thread.
    revokes: RevokeQueue<GroupWrite>,
    /// Taken by every write transaction, the writer's and the revoke thread's, so that they
    /// take turns in order instead of meeting SQLite's busy handler.
    write_gate: Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction on the writer connection, holding the write gate until it ends.
pub(crate) struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    _gate: tokio::sync::OwnedMutexGuard<()>,
}

/// The reader pool, as an executor of shared statements.
pub(crate) struct Readers<'a>(&'a SqlitePool);

impl Exec for Readers<'_> {
    async fn execute(&mut self, query: Query<'_>) -> Result<u64, StoreError> {
        Ok(query
            .prepare::<Sqlite>()
            .execute(self.0)
            .await?
            .rows_affected())
    }

    async fn fetch_all<T: Record>(&mut self, query: Query<'_>) -> Result<Vec<T>, StoreError> {
        let rows = query.prepare::<Sqlite>().fetch_all(self.0).await?;
        Ok(rows.iter().map(T::from_row).collect::<Result<_, _>>()?)
    }
}

impl Exec for WriteTx {
    async fn execute(&mut self, query: Query<'_>) -> Result<u64, StoreError> {
        Ok(query
            .prepare::<Sqlite>()
            .execute(&mut *self.tx)
            .await?
            .rows_affected())
    }

    async fn fetch_all<T: Record>(&mut self, query: Query<'_>) -> Result<Vec<T>, StoreError> {
        let rows = query.prepare::<Sqlite>().fetch_all(&mut *self.tx).await?;
        Ok(rows.iter().map(T::from_row).collect::<Result<_, _>>()?)
    }
}

impl SqliteDialect {
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
            // Connections to a local file never go stale, so no idle or lifetime reaping:
            // that would start sqlx's (0.9.0) maintenance task, which was seen spinning on a
            // wrapped idle count while an operator command closed its pool, so the process
            // never exited (and an e2e test hung).
            .idle_timeout(None)
            .max_lifetime(None)
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
        let revokes = revoker::start(&path, write_gate.clone())?;
        tokio::spawn(checkpoint_periodically(readers.clone()));
        Ok(Self {
            writer,
            readers,
            direct,
            revokes,
            write_gate,
        })
    }

    /// Opens an existing database file; fails with [`StoreError::Missing`] rather than
    /// creating one (admin commands use this, so a mistyped `--data-dir` is an error, not a new
    /// install).
    pub async fn open_existing_file(path: &Path, readers: u32) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Missing(path.to_owned()));
        }
        Self::open_file(path, readers).await
    }

    /// The direct read path, for its tests.
    #[cfg(test)]
    fn direct(&self) -> &DirectReaders {
        &self.direct
    }
}

impl Dialect for SqliteDialect {
    type Reader<'a> = Readers<'a>;
    type Tx = WriteTx;

    fn reader(&self) -> Readers<'_> {
        Readers(&self.readers)
    }

    async fn begin(&self) -> Result<WriteTx, StoreError> {
        let gate = self.write_gate.clone().lock_owned().await;
        // IMMEDIATE takes the write lock up front, so a read-then-write transaction never
        // fails half-way when an admin command writes at the same moment.
        let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _gate: gate })
    }

    async fn commit(tx: WriteTx) -> Result<(), StoreError> {
        Ok(tx.tx.commit().await?)
    }

    async fn rollback(tx: WriteTx) -> Result<(), StoreError> {
        Ok(tx.tx.rollback().await?)
    }

    /// Nothing to take: `BEGIN IMMEDIATE` holds the database's one write lock already.
    async fn lock(_tx: &mut WriteTx, _lock: Lock<'_>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn audit(tx: &mut WriteTx, event: &AuditEvent) -> Result<(), StoreError> {
        super::sql::audit::insert_audit(tx, event).await
    }

    /// Other processes follow the audit log, which has no row for this change; they are
    /// admin commands, which cache nothing.
    async fn announce(_tx: &mut WriteTx, _change: &Change) -> Result<(), StoreError> {
        Ok(())
    }

    async fn find_refresh_grant(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<RefreshGrant>, StoreError> {
        if let Some(found) = self.direct.refresh_grant(token_hash) {
            return Ok(found);
        }
        // Every direct reader is busy, or a direct read failed: the pool answers.
        read_refresh_grant(&mut self.reader(), token_hash).await
    }

    async fn principal(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<Option<PrincipalRecord>, StoreError> {
        if let Some(found) = self.direct.principal(user_id, session_id) {
            return Ok(found);
        }
        read_principal(&mut self.reader(), user_id, session_id).await
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

    /// One statement per chunk, not per token: each statement is a hop to the writer's
    /// thread, and with many tokens in use nearly every refresh is some token's first use of
    /// the minute.
    async fn record_token_uses(&self, uses: &[TokenUse]) -> Result<(), StoreError> {
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
        let mut tx = self.begin().await?;
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
            update.build().execute(&mut *tx.tx).await?;
        }
        Self::commit(tx).await
    }

    /// One server per database file: nobody to take turns with.
    async fn try_cleanup_lock(&self) -> Result<Option<CleanupLock>, StoreError> {
        Ok(Some(CleanupLock::uncontended()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        sqlx::query("SELECT 1").execute(&self.writer).await?;
        Ok(())
    }

    /// Polls the audit log, whose ids grow in commit order because SQLite has one writer at a
    /// time.
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

    fn connection_stats(&self) -> ConnectionStats {
        ConnectionStats {
            pools: vec![
                PoolStats::of("sqlite_writer", &self.writer),
                PoolStats::of("sqlite_readers", &self.readers),
            ],
            circuit: None,
        }
    }

    fn exchange_writer(&self) -> Option<&RevokeQueue<GroupWrite>> {
        Some(&self.revokes)
    }
}

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
        let path = dir.path().join(DATABASE_FILE);
        let store = SqliteDialect::open_file(&path, 2).await?;
        let writer: i64 = sqlx::query_scalar(SYNCHRONOUS)
            .fetch_one(&store.writer)
            .await?;
        assert_eq!(writer, FULL, "the sqlx writer's connection");
        // The revoke thread's connection never leaves its thread; this is the function that
        // opens it, and the thread changes no setting afterwards.
        let revoker = revoker::open_connection(&path)?;
        let revoker: i64 = revoker.query_row(SYNCHRONOUS, [], |row| row.get(0))?;
        assert_eq!(revoker, FULL, "the revoke thread's connection");
        // The readers commit nothing, but they checkpoint (`checkpoint_periodically`): they
        // copy the WAL into the database file, and the WAL is then written over from its
        // start. Without syncing around that (`OFF`), a power cut loses commits the WAL no
        // longer holds; `NORMAL` syncs there, which is all a checkpoint needs. (The direct
        // readers are read-only: `sqlite::direct` checks that they cannot write.)
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
