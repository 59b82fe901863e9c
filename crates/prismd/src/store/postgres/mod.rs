//! The PostgreSQL backend's own side of the store: one connection pool shared by reads and
//! writes (PostgreSQL takes concurrent writers, unlike SQLite) behind a circuit breaker
//! ([`breaker`]), explicit locks where SQLite's single writer serializes for free (last Owner,
//! first start, the signing keys, code replays, device-code polls), audit rows that notify
//! every replica (`LISTEN/NOTIFY`, the change feed), and group-committed revoke-alls
//! ([`revokes`]). Everything else is the shared SQL of `store::sql`.
//!
//! Transactions run at READ COMMITTED. Every single-use rule is a conditional `UPDATE` (or
//! `UPDATE ... RETURNING`): a second transaction waits for the first's row lock, then
//! re-checks the condition against the committed row and changes nothing.

mod breaker;
mod revokes;

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};

use super::group_commit::{GroupWrite, RevokeQueue};
use super::sql::audit::with_event;
use super::sql::funnel::{Exec, Query, Record, query};
use super::sql::tokens::{read_principal, read_refresh_grant};
use super::sql::{Dialect, Lock};
use super::{
    AuditEvent, Change, CircuitStats, CleanupLock, ConnectionStats, PoolStats, PrincipalRecord,
    RefreshGrant, RevokeDecision, RevokedAll, StoreError, TokenUse,
};
pub use breaker::{BreakerSettings, CircuitBreaker};

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Advisory lock keys (`pg_advisory_xact_lock`), held to the end of one transaction. Fixed
/// numbers so every replica takes the same lock; any other user of the database must not
/// pick these (ASCII "prismB01" and "prismK01").
const BOOTSTRAP_LOCK: i64 = 0x7072_6973_6d42_3031;
const SIGNING_KEY_LOCK: i64 = 0x7072_6973_6d4b_3031;
/// Session-level (`pg_try_advisory_lock`), held for one cleanup round: ASCII "prismC01".
pub const CLEANUP_LOCK: i64 = 0x7072_6973_6d43_3031;

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

/// The PostgreSQL side of the store.
pub(crate) struct PgDialect {
    pool: PgPool,
    /// For the change feed's own connection, outside the pool (a `LISTEN` holds its
    /// connection for good, and must not take one of the requests').
    options: PgConnectOptions,
    /// Revoke-alls wait here to be committed together.
    revokes: RevokeQueue,
    /// Fails requests fast while the database is unreachable: the server's (admin commands
    /// run one statement or two and go without one).
    breaker: Option<CircuitBreaker>,
}

impl PgDialect {
    /// Connects to `url` (`postgres://...`) and applies migrations. sqlx's migrator holds an
    /// advisory lock while it runs, so replicas starting together apply them once. Requests
    /// go through a circuit breaker with `breaker`'s settings.
    pub(crate) async fn open(
        url: &str,
        settings: PgPoolSettings,
        breaker: BreakerSettings,
    ) -> Result<Self, StoreError> {
        let mut dialect = Self::connect(url, settings).await?;
        MIGRATOR.run(&dialect.pool).await?;
        let probed = dialect.pool.clone();
        dialect.breaker = Some(CircuitBreaker::new(
            move || {
                let pool = probed.clone();
                async move { write_capable(&pool).await }
            },
            breaker,
        ));
        Ok(dialect)
    }

    /// Connects to an existing prism-auth database; fails with [`StoreError::NoSchema`] when
    /// nobody has started the server on it yet, so an admin command pointed at the wrong
    /// database does not quietly create a new install there.
    pub(crate) async fn open_existing(
        url: &str,
        settings: PgPoolSettings,
    ) -> Result<Self, StoreError> {
        let dialect = Self::connect(url, settings).await?;
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass('organizations')::TEXT")
            .fetch_one(&dialect.pool)
            .await?;
        if found.is_none() {
            dialect.pool.close().await;
            return Err(StoreError::NoSchema);
        }
        MIGRATOR.run(&dialect.pool).await?;
        Ok(dialect)
    }

    async fn connect(url: &str, settings: PgPoolSettings) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        wait_until_reachable(&options, settings).await?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        let revokes = revokes::start(pool.clone());
        Ok(Self {
            pool,
            options,
            revokes,
            breaker: None,
        })
    }

    /// Runs `call` past the breaker: refused at once while it is open, and its
    /// connection-class failure opens it.
    async fn guarded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        guarded(self.breaker.as_ref(), call).await
    }
}

/// [`PgDialect::guarded`], for the executors that hold the breaker rather than the dialect.
async fn guarded<T>(
    breaker: Option<&CircuitBreaker>,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let Some(breaker) = breaker else {
        return call.await;
    };
    let generation = breaker.admit()?;
    let result = call.await;
    if let Err(err) = &result {
        breaker.observe(generation, err);
    }
    result
}

/// Whether the database answers and takes writes: a standby (read-only replica) would be
/// "ready" for `SELECT 1` but fail every revoke. The breaker's probe.
async fn write_capable(pool: &PgPool) -> Result<(), StoreError> {
    let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
        .fetch_one(pool)
        .await?;
    if read_only != "off" {
        return Err(StoreError::ReadOnly);
    }
    Ok(())
}

/// The pool, as an executor of shared statements, behind the breaker.
pub(crate) struct Pooled<'a> {
    pool: &'a PgPool,
    breaker: Option<&'a CircuitBreaker>,
}

impl Exec for Pooled<'_> {
    async fn execute(&mut self, query: Query<'_>) -> Result<u64, StoreError> {
        let run = async { Ok(query.prepare::<Postgres>().execute(self.pool).await?) };
        Ok(guarded(self.breaker, run).await?.rows_affected())
    }

    async fn fetch_all<T: Record>(&mut self, query: Query<'_>) -> Result<Vec<T>, StoreError> {
        let run = async { Ok(query.prepare::<Postgres>().fetch_all(self.pool).await?) };
        let rows = guarded(self.breaker, run).await?;
        Ok(rows.iter().map(T::from_row).collect::<Result<_, _>>()?)
    }
}

/// A write transaction, each of its statements behind the breaker.
pub(crate) struct PgTx {
    tx: Transaction<'static, Postgres>,
    breaker: Option<CircuitBreaker>,
}

impl Exec for PgTx {
    async fn execute(&mut self, query: Query<'_>) -> Result<u64, StoreError> {
        let run = async { Ok(query.prepare::<Postgres>().execute(&mut *self.tx).await?) };
        Ok(guarded(self.breaker.as_ref(), run).await?.rows_affected())
    }

    async fn fetch_all<T: Record>(&mut self, query: Query<'_>) -> Result<Vec<T>, StoreError> {
        let run = async { Ok(query.prepare::<Postgres>().fetch_all(&mut *self.tx).await?) };
        let rows = guarded(self.breaker.as_ref(), run).await?;
        Ok(rows.iter().map(T::from_row).collect::<Result<_, _>>()?)
    }
}

impl Dialect for PgDialect {
    type Reader<'a> = Pooled<'a>;
    type Tx = PgTx;

    fn reader(&self) -> Pooled<'_> {
        Pooled {
            pool: &self.pool,
            breaker: self.breaker.as_ref(),
        }
    }

    async fn begin(&self) -> Result<PgTx, StoreError> {
        let tx = self.guarded(async { Ok(self.pool.begin().await?) }).await?;
        Ok(PgTx {
            tx,
            breaker: self.breaker.clone(),
        })
    }

    async fn commit(tx: PgTx) -> Result<(), StoreError> {
        let PgTx { tx, breaker } = tx;
        guarded(breaker.as_ref(), async { Ok(tx.commit().await?) }).await
    }

    async fn rollback(tx: PgTx) -> Result<(), StoreError> {
        Ok(tx.tx.rollback().await?)
    }

    async fn lock(tx: &mut PgTx, lock: Lock<'_>) -> Result<(), StoreError> {
        let statement = match lock {
            // Two replicas starting on an empty database both see no organization; the lock
            // makes the second wait, and its count (a new snapshot per statement at READ
            // COMMITTED) then sees the first one's commit.
            Lock::Bootstrap => query("SELECT pg_advisory_xact_lock($1)").bind(BOOTSTRAP_LOCK),
            // NOT EXISTS alone is not enough for the first key: two replicas starting at once
            // both see no active key and both insert. A rotation racing a first start, or
            // another rotation, must likewise leave exactly one active key.
            Lock::SigningKeys => query("SELECT pg_advisory_xact_lock($1)").bind(SIGNING_KEY_LOCK),
            // Two concurrent removals (or demotions) of two different Owners would each count
            // the other as still active (neither has committed). Locking the organization's
            // row first makes them take turns. NO KEY UPDATE does not block inserts that
            // merely reference the organization.
            Lock::OrganizationOf(user_id) => query(
                "SELECT 1 FROM organizations WHERE id = (SELECT org_id FROM users WHERE id = $1) \
                 FOR NO KEY UPDATE",
            )
            .bind(user_id),
            Lock::Organization(org_id) => {
                query("SELECT 1 FROM organizations WHERE id = $1 FOR NO KEY UPDATE").bind(org_id)
            }
            Lock::AuthorizationCode(code_hash) => {
                query("SELECT 1 FROM authorization_codes WHERE code_hash = $1 FOR UPDATE")
                    .bind(code_hash)
            }
            Lock::DeviceCode(device_code_hash) => {
                query("SELECT 1 FROM device_codes WHERE device_code_hash = $1 FOR UPDATE")
                    .bind(device_code_hash)
            }
        };
        statement.execute(tx).await?;
        Ok(())
    }

    /// The notification rides in the same statement and, like every NOTIFY, is delivered
    /// only if and when the transaction commits: replicas never drop cached state for a change
    /// that rolled back, and never miss one that committed while they were listening.
    async fn audit(tx: &mut PgTx, event: &AuditEvent) -> Result<(), StoreError> {
        let statement = query(
            "INSERT INTO audit_events (at, action, actor, org_id, subject_user_id, address, user_agent, detail) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM pg_notify($9, $10)",
        );
        with_event(statement, event)
            .bind(CHANGES_CHANNEL)
            .bind(change_payload(
                event.action,
                event.subject_user_id.as_deref(),
            ))
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn announce(tx: &mut PgTx, change: &Change) -> Result<(), StoreError> {
        query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(change_payload(&change.action, change.user_id.as_deref()))
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn find_refresh_grant(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<RefreshGrant>, StoreError> {
        read_refresh_grant(&mut self.reader(), token_hash).await
    }

    async fn principal(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<Option<PrincipalRecord>, StoreError> {
        read_principal(&mut self.reader(), user_id, session_id).await
    }

    async fn revoke_all_tokens(
        &self,
        user_id: &str,
        expected_epoch: i64,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        self.guarded(self.revokes.revoke_all(user_id, expected_epoch, audit))
            .await
    }

    async fn revoke_all_by_token(
        &self,
        token_hash: &[u8; 32],
        decide: RevokeDecision,
    ) -> Result<Option<RevokedAll>, StoreError> {
        self.guarded(self.revokes.revoke_all_by_token(*token_hash, decide))
            .await
    }

    /// Replicas flush at the same time and may touch the same tokens; updating rows in one
    /// order everywhere means their row locks cannot deadlock.
    async fn record_token_uses(&self, uses: &[TokenUse]) -> Result<(), StoreError> {
        let mut ordered: Vec<&TokenUse> = uses.iter().collect();
        ordered.sort_by(|a, b| a.token_id.cmp(&b.token_id));
        let mut tx = self.begin().await?;
        for token_use in ordered {
            query(
                "UPDATE refresh_tokens SET last_used_at = $2, last_used_addr = $3 \
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(&token_use.token_id)
            .bind(token_use.at)
            .bind(&token_use.address)
            .execute(&mut tx)
            .await?;
        }
        Self::commit(tx).await
    }

    async fn try_cleanup_lock(&self) -> Result<Option<CleanupLock>, StoreError> {
        self.guarded(CleanupLock::try_postgres(&self.pool, CLEANUP_LOCK))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.guarded(write_capable(&self.pool)).await
    }

    /// Not behind the breaker: it runs for the life of the server and reconnects on its own;
    /// its failures say nothing new to requests.
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
        if let Some(breaker) = &self.breaker {
            breaker.stop();
        }
        // Queued revoke-alls are committed and answered before the pool goes.
        self.revokes.close().await;
        self.pool.close().await;
    }

    fn connection_stats(&self) -> ConnectionStats {
        ConnectionStats {
            pools: vec![PoolStats::of("postgres", &self.pool)],
            circuit: self.breaker.as_ref().map(|breaker| CircuitStats {
                open: breaker.is_open(),
                rejections: breaker.rejections(),
            }),
        }
    }

    /// PostgreSQL commits each exchange in a transaction of its own (replicas write side by
    /// side there; the revoke group commit batches with `UNNEST`, which exchanges do not have).
    fn exchange_writer(&self) -> Option<&RevokeQueue<GroupWrite>> {
        None
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

/// `LISTEN` channel of [`Change`]s.
pub(super) const CHANGES_CHANNEL: &str = "prism_auth_changes";

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
