//! The SQLite backend's revoke-all writer: a thread with a read-write connection of its own
//! that takes each group of queued revoke-alls, reads and decides their grants, writes them
//! and commits, all in one go, and answers each caller.
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
//! - If the group's transaction fails, each revoke is retried in a transaction of its own, so
//!   that one bad revoke does not fail the others and each caller gets its own error.
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
use crate::store::group_commit::{PendingRevokes, Request, Revoke, RevokeQueue, UserRevoke};
use crate::store::sql::audit::INSERT_AUDIT_SQL;
use crate::store::sql::tokens::REFRESH_GRANT_SQL;
use crate::store::sql::users::END_BROWSER_SESSIONS_SQL;
use crate::store::{AuditEvent, RevokedAll, StoreError};

/// Moves a user's epoch on from the one the revoke was decided at.
const MOVE_EPOCH_SQL: &str = "UPDATE users SET token_epoch = token_epoch + 1, updated_at = $3 \
     WHERE id = $1 AND token_epoch = $2 AND removed_at IS NULL";

/// The other active members of a member's (`$1`) identity, with their organizations.
const SIBLINGS_SQL: &str = "SELECT s.id, s.org_id FROM users s JOIN users me \
     ON me.identity_id = s.identity_id WHERE me.id = $1 AND s.id <> me.id AND s.removed_at IS NULL";

/// Moves a sibling's epoch, whatever it was.
const MOVE_SIBLING_EPOCH_SQL: &str =
    "UPDATE users SET token_epoch = token_epoch + 1, updated_at = $2 WHERE id = $1";

/// Starts the revoke thread on the database at `path` (which must exist, migrated and in WAL
/// mode); `gate` is the store's write gate.
pub(super) fn start(
    path: &Path,
    gate: Arc<tokio::sync::Mutex<()>>,
) -> Result<RevokeQueue, StoreError> {
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
    mut pending: PendingRevokes,
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
            tracing::error!("a group of revoke-alls panicked; none of it was committed");
        }
    }
    if let Err((_, err)) = conn.close() {
        tracing::warn!(error = %err, "closing the revoke writer's SQLite connection failed");
    }
    pending.stopped();
}

fn commit_group(conn: &mut Connection, requests: Vec<Request>) {
    let revokes: Vec<&Revoke> = requests.iter().map(|request| &request.revoke).collect();
    match revoke_in_one_transaction(conn, &revokes) {
        Ok(outcomes) => {
            for (request, outcome) in requests.into_iter().zip(outcomes) {
                request.answer(Ok(outcome));
            }
        }
        Err(err) if requests.len() == 1 => {
            if let Some(request) = requests.into_iter().next() {
                request.answer(Err(err.into()));
            }
        }
        // One bad revoke must not fail the others: each is retried on its own.
        Err(_) => {
            for request in requests {
                let outcome = revoke_in_one_transaction(conn, &[&request.revoke])
                    .map(|mut outcomes| outcomes.pop().flatten())
                    .map_err(StoreError::from);
                request.answer(outcome);
            }
        }
    }
}

/// Reads, decides and writes `revokes` in one transaction and commits it; what each came to,
/// in order.
fn revoke_in_one_transaction(
    conn: &mut Connection,
    revokes: &[&Revoke],
) -> rusqlite::Result<Vec<Option<RevokedAll>>> {
    // A failed statement or commit leaves the transaction to the destructor, which rolls it
    // back (SQLite may have done so already, on a full disk for one).
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
    tx.commit()?;
    Ok(outcomes)
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

fn insert_audit(tx: &Transaction<'_>, event: &AuditEvent) -> rusqlite::Result<()> {
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
