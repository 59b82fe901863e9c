//! The one implementation of the storage traits, for both databases. Each shared statement
//! and method is written once, by aggregate (one file each), against the funnel
//! ([`funnel`]); a [`Dialect`] supplies what must differ: connections, locks, how an audit row
//! reaches other processes, and the few operations each backend does its own way (SQLite's
//! direct hot-path reads and revoke thread, PostgreSQL's `LISTEN` feed and `UNNEST` revokes).
//!
//! The standing cache lives here too, fed by one signal: the audit rows every write commits.
//! A write can only end by committing with an audit event ([`Write::commit_audited`]) or by
//! naming why it changes nobody's standing ([`Write::commit_unaudited`]); the audit events of a
//! commit are what this process's cache drops, exactly as other processes drop them when the
//! change feed brings the same rows.

pub(crate) mod funnel;

mod access;
pub(crate) mod audit;
mod keys;
mod limits;
mod maintenance;
mod organizations;
mod resource_servers;
mod sign_in;
pub(crate) mod tokens;
pub(crate) mod trust;
pub(crate) mod users;

use std::future::Future;

use super::cache::{CacheSettings, StandingCache};
use super::group_commit::{GroupWrite, RevokeQueue};
use super::{
    AuditEvent, Change, CleanupLock, ConnectionStats, PrincipalRecord, RefreshGrant,
    RevokeDecision, RevokedAll, StoreError, TokenUse,
};
use funnel::{Exec, Query, Record};

/// The columns of a [`super::User`] (`u`: users), as a macro so that statements that need them
/// can be `concat!`ed constants.
macro_rules! user_columns {
    () => {
        "u.id, u.org_id, u.email, u.name, u.role, u.token_epoch, \
         u.created_at, u.updated_at, u.removed_at, u.phone, u.external_id, u.dark_mode, \
         u.dark_mode_sync_with_os, u.identity_id, u.joined_at, u.kind, u.description"
    };
}
pub(crate) use user_columns;

/// [`user_columns`] as a constant.
pub(crate) const USER_COLUMNS: &str = user_columns!();

/// Something a write transaction must hold before it reads what it is about to change: a
/// no-op under SQLite's single writer (`BEGIN IMMEDIATE` holds the whole database), a row or
/// advisory lock on PostgreSQL, where writers run side by side.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lock<'a> {
    /// First start: the organization count that decides whether to bootstrap.
    Bootstrap,
    /// The signing keys: exactly one is active.
    SigningKeys,
    /// The organization of this user, whose active Owners are about to be counted.
    OrganizationOf(&'a str),
    /// This organization, whose members' roles are about to be read (adding a member).
    Organization(&'a str),
    /// One authorization code, by hash: of two replays at once, one audits.
    AuthorizationCode(&'a [u8; 32]),
    /// One device code, by hash: two polls at once must not read the same last poll.
    DeviceCode(&'a [u8; 32]),
}

/// Why a write commits without an audit row: each kind of write that cannot change anyone's
/// standing (nothing any cache holds, nothing the audit trail promises). A new kind of write
/// that changes a user, a token or a policy has no variant here, so it must be audited, and
/// its audit row is what drops the caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unaudited {
    /// A new authorization code (the sign-in that made it is audited by the domain).
    NewAuthorizationCode,
    /// A device code: created, polled, decided, redeemed or slowed down.
    DeviceCode,
    /// A browser session started or ended.
    BrowserSession,
    /// A failure counter (when it locks a key, the lock is audited).
    AttemptCounter,
    /// A signing key stored on a first start: it changes no one's tokens.
    FirstSigningKey,
    /// An authorization code spent: the refresh token it leads to is audited when stored.
    CodeRedeemed,
    /// A spent code presented once more that revoked nothing: its first replay was audited.
    RepeatedReplay,
    /// A change that has no audit row of its own but was announced ([`Write::announce`]).
    Announced,
    /// Rows past their use, deleted by the cleanup (each was already dead to every check).
    Garbage,
    /// A change of an identity, audited once per member with [`Write::audit`].
    AuditedPerMember,
    /// The note that a token's expiry mail went out: nobody's standing changes.
    ExpiryNotice,
}

/// What each database does its own way. Everything else is shared SQL over the funnel.
pub(crate) trait Dialect: Send + Sync + Sized + 'static {
    /// Runs reads (a reader pool).
    type Reader<'a>: Exec
    where
        Self: 'a;
    /// A write transaction.
    type Tx: Exec + 'static;

    fn reader(&self) -> Self::Reader<'_>;

    /// Starts a write transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send;

    fn commit(tx: Self::Tx) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn rollback(tx: Self::Tx) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes `lock` in `tx` (see [`Lock`]).
    fn lock(
        tx: &mut Self::Tx,
        lock: Lock<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes an audit row in `tx`. On PostgreSQL its notification rides in the same
    /// statement, delivered to every replica if and when `tx` commits.
    fn audit(
        tx: &mut Self::Tx,
        event: &AuditEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Tells other processes of a change that has no audit row, when `tx` commits. SQLite's
    /// followers read the audit log, so there it says nothing; this process's cache hears of
    /// it either way (see [`Write::announce`]).
    fn announce(
        tx: &mut Self::Tx,
        change: &Change,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The hot-path look-up of a refresh grant by token hash.
    fn find_refresh_grant(
        &self,
        token_hash: &[u8; 32],
    ) -> impl Future<Output = Result<Option<RefreshGrant>, StoreError>> + Send;

    /// The principal behind an access token.
    fn principal(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> impl Future<Output = Result<Option<PrincipalRecord>, StoreError>> + Send;

    /// A group-committed revoke-all of a user at the epoch the caller read.
    fn revoke_all_tokens(
        &self,
        user_id: &str,
        expected_epoch: i64,
        audit: AuditEvent,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// A group-committed revoke-all of the user behind a refresh token.
    fn revoke_all_by_token(
        &self,
        token_hash: &[u8; 32],
        decide: RevokeDecision,
    ) -> impl Future<Output = Result<Option<RevokedAll>, StoreError>> + Send;

    /// Writes last-use records in as few statements as the database allows.
    fn record_token_uses(
        &self,
        uses: &[TokenUse],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn try_cleanup_lock(
        &self,
    ) -> impl Future<Output = Result<Option<CleanupLock>, StoreError>> + Send;

    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// See [`super::AuditStore::follow_changes`].
    fn follow_changes(
        &self,
        on_change: &(dyn Fn(Change) + Send + Sync),
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn close(&self) -> impl Future<Output = ()> + Send;

    fn connection_stats(&self) -> ConnectionStats;

    /// The group commit that writes keyless exchanges beside the revoke-alls, where the
    /// backend has one (SQLite's writer thread); `None`: each exchange is a transaction of the
    /// shared write path.
    fn exchange_writer(&self) -> Option<&RevokeQueue<GroupWrite>>;
}

/// The storage traits over one database.
pub struct SqlStore<D: Dialect> {
    db: D,
    cache: Option<StandingCache>,
}

impl<D: Dialect> SqlStore<D> {
    /// The store over `db`, with a standing cache unless `cache` turns it off (a zero
    /// lifetime). The cache answers only while a change feed listens.
    pub(crate) fn new(db: D, cache: CacheSettings) -> Self {
        Self {
            db,
            cache: (!cache.ttl.is_zero()).then(|| StandingCache::new(cache)),
        }
    }

    /// The backend's own side, for its tests.
    #[cfg(test)]
    pub(crate) fn dialect(&self) -> &D {
        &self.db
    }

    fn read(&self) -> D::Reader<'_> {
        self.db.reader()
    }

    async fn write(&self) -> Result<Write<'_, D>, StoreError> {
        Ok(Write {
            tx: self.db.begin().await?,
            cache: self.cache.as_ref(),
            changes: Vec::new(),
        })
    }
}

/// A write transaction of the shared code. See the module header for how it ends.
pub(crate) struct Write<'s, D: Dialect> {
    tx: D::Tx,
    cache: Option<&'s StandingCache>,
    /// What this transaction's audit rows and announcements said changed.
    changes: Vec<Change>,
}

impl<D: Dialect> Write<'_, D> {
    pub(crate) async fn lock(&mut self, lock: Lock<'_>) -> Result<(), StoreError> {
        D::lock(&mut self.tx, lock).await
    }

    /// Writes an audit row in this transaction (one of several; the last goes with
    /// [`Self::commit_audited`]).
    pub(crate) async fn audit(&mut self, event: &AuditEvent) -> Result<(), StoreError> {
        D::audit(&mut self.tx, event).await?;
        self.changes.push(Change::of(event));
        Ok(())
    }

    /// Announces a change that has no audit row of its own.
    pub(crate) async fn announce(&mut self, change: Change) -> Result<(), StoreError> {
        D::announce(&mut self.tx, &change).await?;
        self.changes.push(change);
        Ok(())
    }

    /// Writes `event` and commits: how every write that changes something ends.
    pub(crate) async fn commit_audited(mut self, event: &AuditEvent) -> Result<(), StoreError> {
        self.audit(event).await?;
        self.commit().await
    }

    /// Commits a write that changes nobody's standing, for the reason given.
    pub(crate) async fn commit_unaudited(self, _why: Unaudited) -> Result<(), StoreError> {
        self.commit().await
    }

    /// Ends a conditional write: nothing matched → roll back and report `false`; otherwise
    /// write `event`, commit, and report `true`.
    pub(crate) async fn finish_audited(
        self,
        rows_affected: u64,
        event: &AuditEvent,
    ) -> Result<bool, StoreError> {
        if rows_affected == 0 {
            self.rollback().await?;
            return Ok(false);
        }
        self.commit_audited(event).await?;
        Ok(true)
    }

    pub(crate) async fn rollback(self) -> Result<(), StoreError> {
        D::rollback(self.tx).await
    }

    async fn commit(self) -> Result<(), StoreError> {
        let committed = D::commit(self.tx).await;
        // Whatever the outcome: an error may still have come after the commit took effect.
        if let Some(cache) = self.cache {
            for change in &self.changes {
                cache.apply(change);
            }
        }
        committed
    }
}

impl<D: Dialect> Exec for Write<'_, D> {
    async fn execute(&mut self, query: Query<'_>) -> Result<u64, StoreError> {
        self.tx.execute(query).await
    }

    async fn fetch_all<T: Record>(&mut self, query: Query<'_>) -> Result<Vec<T>, StoreError> {
        self.tx.fetch_all(query).await
    }
}

/// Whether a driver error is a unique-constraint violation.
pub(crate) fn is_unique_violation(err: &StoreError) -> bool {
    matches!(err, StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
}
