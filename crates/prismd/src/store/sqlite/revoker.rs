//! The SQLite backend's writer of the hot paths' durable writes: a thread with a read-write
//! connection of its own that takes each group of queued revoke-alls and keyless exchanges,
//! reads and decides the revokes' grants, writes everything and commits, all in one go, and
//! answers each caller.
//!
//! Why it exists: through sqlx, every statement of a group (the grant read, `BEGIN`, the
//! epoch update, the sessions, the audit rows, `COMMIT`) was a hop to the connection's worker
//! thread and back to the committing task, and under load each hop waited for a tokio worker
//! busy with requests: 150–250 µs a hop, about 2.2 ms a group, where the statements and the
//! fsync need under 1 ms. Here the statements run back to back on cached prepared statements.
//!
//! Its rules:
//! - It takes the store's write gate for each group. Every write transaction of the store
//!   takes it first (the sqlx writer in `begin_write`), so the two connections take turns in
//!   the order they asked instead of meeting SQLite's busy handler, which sleeps milliseconds
//!   at a time. Another process (an admin command) still meets the busy timeout, as before.
//! - Every grant of a group is read, inside the group's transaction, before anything is
//!   written, and the epoch moves only by compare-and-set from the epoch its grant was read
//!   at: a revoke decides as if it had been read just before the group, and of several
//!   revokes of one user at one epoch only the first moves it and writes an audit row.
//! - An exchange is written in a savepoint of its own after the group's revokes: one that
//!   finds its token spent (a replay) or its policy gone writes nothing, as if it had run
//!   alone; a token twice in one group is spent by the first.
//! - If the group's transaction fails, each write is retried in a transaction of its own, so
//!   that one bad write does not fail the others and each caller gets its own error.
//! - The connection has the pool's settings that matter for writes: WAL, `synchronous =
//!   FULL` (a revoke is on disk before it is answered), foreign keys, the busy timeout and no
//!   automatic checkpoint (checkpoints run beside the writers).

use std::path::Path;
use std::sync::Arc;

use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, named_params,
};

use super::direct::refresh_grant;
use super::settings::{BUSY_TIMEOUT, MMAP_SIZE};
use crate::store::group_commit::{
    ExchangeRequest, GroupWrite, PendingRevokes, Revoke, RevokeQueue, UserRevoke,
};
use crate::store::sql::audit::INSERT_AUDIT_SQL;
use crate::store::sql::tokens::REFRESH_GRANT_SQL;
use crate::store::sql::trust::{INSERT_SESSION_SQL, NOTE_POLICY_USE_SQL, SPEND_TOKEN_SQL};
use crate::store::sql::users::END_BROWSER_SESSIONS_SQL;
use crate::store::{AuditEvent, ExchangeWrite, PolicyExchange, RevokedAll, StoreError};

/// Moves a user's epoch on from the one the revoke was decided at.
const MOVE_EPOCH_SQL: &str = "UPDATE users SET token_epoch = token_epoch + 1, updated_at = $3 \
     WHERE id = $1 AND token_epoch = $2 AND removed_at IS NULL";

/// The other active members of a member's (`$1`) identity, with their organizations.
const SIBLINGS_SQL: &str = "SELECT s.id, s.org_id FROM users s JOIN users me \
     ON me.identity_id = s.identity_id WHERE me.id = $1 AND s.id <> me.id AND s.removed_at IS NULL";

/// Moves a sibling's epoch, whatever it was.
const MOVE_SIBLING_EPOCH_SQL: &str =
    "UPDATE users SET token_epoch = token_epoch + 1, updated_at = $2 WHERE id = $1";

/// Starts the writer thread on the database at `path` (which must exist, migrated and in WAL
/// mode); `gate` is the store's write gate.
pub(super) fn start(
    path: &Path,
    gate: Arc<tokio::sync::Mutex<()>>,
) -> Result<RevokeQueue<GroupWrite>, StoreError> {
    let conn = open_connection(path)?;
    let (queue, pending) = RevokeQueue::new();
    std::thread::Builder::new()
        .name("prismd-revokes".into())
        .spawn(move || commit_in_groups(conn, pending, &gate))?;
    Ok(queue)
}

/// The thread's connection; `pub(super)` only so that a test can check the settings it opens
/// with (`sqlite::tests`).
pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    // No mutex inside SQLite: only this thread uses the connection.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = 0; PRAGMA mmap_size = {MMAP_SIZE};"
    ))?;
    Ok(conn)
}

/// The thread's loop: until the queue is closed and empty.
fn commit_in_groups(
    mut conn: Connection,
    mut pending: PendingRevokes<GroupWrite>,
    gate: &tokio::sync::Mutex<()>,
) {
    while let Some(requests) = pending.next_group_blocking() {
        let _turn = gate.blocking_lock();
        // A panic (a bug) must cost only its group, and not the thread: with it gone every
        // later revoke would fail. The group's callers get the error of a store that went
        // away (their replies are dropped); the open transaction is rolled back as the panic
        // unwinds through it.
        let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            commit_group(&mut conn, requests);
        }));
        if committed.is_err() {
            tracing::error!("a group of durable writes panicked; none of it was committed");
        }
    }
    if let Err((_, err)) = conn.close() {
        tracing::warn!(error = %err, "closing the revoke writer's SQLite connection failed");
    }
    pending.stopped();
}

/// What one transaction of a group came to: each revoke's and each exchange's outcome, in
/// the order of their requests.
type GroupOutcome = (Vec<Option<RevokedAll>>, Vec<ExchangeWrite>);

fn commit_group(conn: &mut Connection, writes: Vec<GroupWrite>) {
    let mut revokes = Vec::new();
    let mut exchanges = Vec::new();
    for write in writes {
        match write {
            GroupWrite::Revoke(request) => revokes.push(request),
            GroupWrite::Exchange(request) => exchanges.push(request),
        }
    }
    let queued_revokes: Vec<&Revoke> = revokes.iter().map(|request| &request.revoke).collect();
    let queued_exchanges: Vec<&ExchangeRequest> = exchanges.iter().collect();
    let outcome = write_in_one_transaction(conn, &queued_revokes, &queued_exchanges);
    match outcome {
        Ok((revoked, exchanged)) => {
            for (request, outcome) in revokes.into_iter().zip(revoked) {
                request.answer(Ok(outcome));
            }
            for (request, outcome) in exchanges.into_iter().zip(exchanged) {
                request.answer(Ok(outcome));
            }
        }
        Err(err) if revokes.len() + exchanges.len() == 1 => {
            if let Some(request) = revokes.into_iter().next() {
                request.answer(Err(err.into()));
            } else if let Some(request) = exchanges.into_iter().next() {
                request.answer(Err(err.into()));
            }
        }
        // One bad write must not fail the others: each is retried on its own.
        Err(_) => {
            for request in revokes {
                let outcome = write_in_one_transaction(conn, &[&request.revoke], &[])
                    .map(|(mut revoked, _)| revoked.pop().flatten())
                    .map_err(StoreError::from);
                request.answer(outcome);
            }
            for request in exchanges {
                let outcome = write_in_one_transaction(conn, &[], &[&request])
                    .map_err(StoreError::from)
                    .and_then(|(_, mut exchanged)| {
                        exchanged.pop().ok_or(StoreError::Conflict("no outcome"))
                    });
                request.answer(outcome);
            }
        }
    }
}

/// Reads, decides and writes `revokes`, then writes `exchanges`, in one transaction and
/// commits it; what each came to, in order.
fn write_in_one_transaction(
    conn: &mut Connection,
    revokes: &[&Revoke],
    exchanges: &[&ExchangeRequest],
) -> rusqlite::Result<GroupOutcome> {
    // A failed statement or commit leaves the transaction to the destructor, which rolls it
    // back (SQLite may have done so already, on a full disk for one).
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut decided = Vec::with_capacity(revokes.len());
    for revoke in revokes {
        let grant = match revoke.token_hash() {
            Some(token_hash) => tx
                .prepare_cached(REFRESH_GRANT_SQL)?
                .query_row(named_params! { "$1": &token_hash[..] }, refresh_grant)
                .optional()?,
            None => None,
        };
        decided.push(revoke.resolve(grant.as_ref()));
    }
    let mut outcomes = Vec::with_capacity(decided.len());
    for revoke in decided {
        outcomes.push(match revoke {
            Some(revoke) => {
                let moved = move_epoch(&tx, &revoke)?;
                let siblings = if moved && revoke.whole_identity {
                    move_sibling_epochs(&tx, &revoke)?
                } else {
                    Vec::new()
                };
                Some(RevokedAll {
                    moved,
                    user_id: revoke.user_id,
                    siblings,
                })
            }
            None => None,
        });
    }
    let mut exchanged = Vec::with_capacity(exchanges.len());
    for request in exchanges {
        exchanged.push(write_exchange(&mut tx, &request.exchange, &request.audit)?);
    }
    tx.commit()?;
    Ok((outcomes, exchanged))
}

/// Writes one exchange in a savepoint: its token spent, the policy's use noted, its session
/// and audit row; nothing when the token was spent before or the policy is gone.
fn write_exchange(
    tx: &mut Transaction<'_>,
    exchange: &PolicyExchange,
    audit: &AuditEvent,
) -> rusqlite::Result<ExchangeWrite> {
    let savepoint = tx.savepoint()?;
    let spent = savepoint
        .prepare_cached(SPEND_TOKEN_SQL)?
        .execute(named_params! {
            "$1": exchange.token_key,
            "$2": exchange.issuer,
            "$3": exchange.token_expires_at,
        })?;
    if spent == 0 {
        // Dropping the savepoint rolls it back.
        return Ok(ExchangeWrite::Replayed);
    }
    let noted = savepoint
        .prepare_cached(NOTE_POLICY_USE_SQL)?
        .execute(named_params! {
            "$1": exchange.policy_id,
            "$2": exchange.at,
            "$3": exchange.service_account_id,
        })?;
    let started = if noted == 1 {
        savepoint
            .prepare_cached(INSERT_SESSION_SQL)?
            .execute(named_params! {
                "$1": exchange.session_id,
                "$2": &exchange.session_hash[..],
                "$3": exchange.service_account_id,
                "$4": exchange.session_name,
                "$5": exchange.scope,
                "$6": exchange.at,
                "$7": exchange.session_expires_at,
                "$8": exchange.policy_id,
            })?
    } else {
        0
    };
    if started == 0 {
        return Ok(ExchangeWrite::PolicyGone);
    }
    insert_audit(&savepoint, audit)?;
    savepoint.commit()?;
    Ok(ExchangeWrite::Issued)
}

/// Moves the user's epoch on from the expected one, ends their browser sessions and writes
/// the audit row; `false` (and no change) when the epoch had moved already.
fn move_epoch(tx: &Transaction<'_>, revoke: &UserRevoke) -> rusqlite::Result<bool> {
    let moved = tx.prepare_cached(MOVE_EPOCH_SQL)?.execute(named_params! {
        "$1": revoke.user_id,
        "$2": revoke.expected_epoch,
        "$3": revoke.audit.at,
    })?;
    if moved == 0 {
        return Ok(false);
    }
    tx.prepare_cached(END_BROWSER_SESSIONS_SQL)?
        .execute(named_params! { "$1": revoke.user_id })?;
    insert_audit(tx, &revoke.audit)?;
    Ok(true)
}

/// After [`move_epoch`] moved a person's own member: moves the epochs of the identity's other
/// active members too, each audited in its organization. Returns their ids.
fn move_sibling_epochs(tx: &Transaction<'_>, revoke: &UserRevoke) -> rusqlite::Result<Vec<String>> {
    let siblings: Vec<(String, String)> = tx
        .prepare_cached(SIBLINGS_SQL)?
        .query_map(named_params! { "$1": revoke.user_id }, |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (sibling, org_id) in &siblings {
        tx.prepare_cached(MOVE_SIBLING_EPOCH_SQL)?
            .execute(named_params! {
                "$1": sibling,
                "$2": revoke.audit.at,
            })?;
        insert_audit(
            tx,
            &AuditEvent {
                org_id: Some(org_id.clone()),
                subject_user_id: Some(sibling.clone()),
                ..revoke.audit.clone()
            },
        )?;
    }
    Ok(siblings.into_iter().map(|(id, _)| id).collect())
}

fn insert_audit(tx: &Connection, event: &AuditEvent) -> rusqlite::Result<()> {
    tx.prepare_cached(INSERT_AUDIT_SQL)?
        .execute(named_params! {
            "$1": event.at,
            "$2": event.action,
            "$3": event.actor,
            "$4": event.org_id,
            "$5": event.subject_user_id,
            "$6": event.address,
            "$7": event.user_agent,
            "$8": event.detail,
        })?;
    Ok(())
}
