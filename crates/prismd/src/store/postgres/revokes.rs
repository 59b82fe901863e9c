//! PostgreSQL's group commit of revoke-alls: a task takes each group of queued revoke-alls,
//! reads the grants of the token-named ones in one statement, and commits the whole group in
//! one more (`UNNEST` over the group's columns), so a burst pays one round trip and one flush.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::postgres::PgPool;
use sqlx::{FromRow, Row};

use super::CHANGES_CHANNEL;
use crate::store::group_commit::{Request, RevokeQueue, UserRevoke, commit_supervised};
use crate::store::sql::tokens::{refresh_grant_columns, refresh_grant_tables};
use crate::store::{RefreshGrant, RevokedAll, StoreError};

/// Starts the committing task; revoke-alls queued on the returned queue are committed by it.
pub(super) fn start(pool: PgPool) -> RevokeQueue {
    let (queue, pending) = RevokeQueue::new();
    let writer = Arc::new(PgRevokes(pool));
    tokio::spawn(commit_supervised(pending, move |requests| {
        commit_group(writer.clone(), requests)
    }));
    queue
}

/// The pool, committing revoke-alls for the [`RevokeQueue`].
struct PgRevokes(PgPool);

impl PgRevokes {
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
        rows.iter()
            .map(|row| {
                let hash: Vec<u8> = row.try_get("token_hash")?;
                let hash = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| {
                    sqlx::Error::Decode("a stored token hash is not 32 bytes long".into())
                })?;
                Ok((hash, RefreshGrant::from_row(row)?))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// One statement for the whole group, so one round trip and one commit flush: the epoch
    /// moves, the end of the browser sessions and the audit rows (with their notifications)
    /// happen together. Data-modifying CTEs always run; the later ones act only on the
    /// revokes that moved an epoch, the first of each user in queue order.
    ///
    /// Two replicas committing groups that share users at the same moment may lock those
    /// rows in different orders; PostgreSQL then aborts one group as a deadlock (after
    /// `deadlock_timeout`), and the group commit retries its revokes one by one.
    async fn revoke_group(
        &self,
        group: &[UserRevoke],
    ) -> Result<Vec<Option<Vec<String>>>, StoreError> {
        let mut columns = RevokeColumns::default();
        for (position, revoke) in (0_i32..).zip(group) {
            columns.push(position, revoke);
        }
        // Each row: a winner's position, and one of its identity's other members whose epoch
        // moved with it (NULL for the winner's own row).
        let rows: Vec<(i32, Option<String>)> = sqlx::query_as(
            "WITH input AS ( \
                 SELECT * FROM UNNEST($1::int[], $2::text[], $3::bigint[], $4::bigint[], \
                     $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
                     $11::text[], $13::bool[]) \
                 AS i(position, user_id, epoch, at, action, actor, org_id, subject_user_id, \
                      address, user_agent, detail, whole_identity)), \
             moved AS ( \
                 UPDATE users u SET token_epoch = u.token_epoch + 1, updated_at = i.at \
                 FROM input i \
                 WHERE u.id = i.user_id AND u.token_epoch = i.epoch AND u.removed_at IS NULL \
                 RETURNING u.id, u.identity_id, u.token_epoch - 1 AS from_epoch), \
             winners AS ( \
                 SELECT DISTINCT ON (i.user_id) i.*, m.identity_id FROM input i \
                 JOIN moved m ON m.id = i.user_id AND m.from_epoch = i.epoch \
                 ORDER BY i.user_id, i.position), \
             siblings AS ( \
                 UPDATE users s SET token_epoch = s.token_epoch + 1, updated_at = w.at \
                 FROM winners w \
                 WHERE w.whole_identity AND s.identity_id = w.identity_id \
                   AND s.id <> w.user_id AND s.removed_at IS NULL \
                 RETURNING s.id, s.org_id, w.position), \
             ended AS ( \
                 DELETE FROM browser_sessions \
                 WHERE identity_id IN (SELECT identity_id FROM moved)), \
             audited AS ( \
                 INSERT INTO audit_events \
                     (at, action, actor, org_id, subject_user_id, address, user_agent, detail) \
                 SELECT w.at, w.action, w.actor, w.org_id, w.subject_user_id, w.address, \
                        w.user_agent, w.detail \
                 FROM winners w, LATERAL pg_notify($12, w.action || ' ' || w.user_id) \
                 ORDER BY w.position), \
             sibling_audited AS ( \
                 INSERT INTO audit_events \
                     (at, action, actor, org_id, subject_user_id, address, user_agent, detail) \
                 SELECT w.at, w.action, w.actor, s.org_id, s.id, w.address, w.user_agent, \
                        w.detail \
                 FROM siblings s JOIN winners w ON w.position = s.position, \
                      LATERAL pg_notify($12, w.action || ' ' || s.id)) \
             SELECT position, NULL::text FROM winners \
             UNION ALL SELECT position, id FROM siblings",
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
        .bind(&columns.whole_identity)
        .fetch_all(&self.0)
        .await?;
        let mut outcomes: Vec<Option<Vec<String>>> = vec![None; group.len()];
        for (position, sibling) in rows {
            let Some(outcome) = usize::try_from(position)
                .ok()
                .and_then(|position| outcomes.get_mut(position))
            else {
                continue;
            };
            let siblings = outcome.get_or_insert_with(Vec::new);
            siblings.extend(sibling);
        }
        Ok(outcomes)
    }

    async fn revoke_alone(&self, revoke: &UserRevoke) -> Result<Option<Vec<String>>, StoreError> {
        let audit = &revoke.audit;
        let rows: Vec<(String, bool)> = sqlx::query_as(
            "WITH moved AS ( \
                 UPDATE users SET token_epoch = token_epoch + 1, updated_at = $3 \
                 WHERE id = $1 AND token_epoch = $2 AND removed_at IS NULL \
                 RETURNING id, identity_id), \
             siblings AS ( \
                 UPDATE users s SET token_epoch = s.token_epoch + 1, updated_at = $3 \
                 FROM moved m WHERE $12 AND s.identity_id = m.identity_id AND s.id <> m.id \
                   AND s.removed_at IS NULL \
                 RETURNING s.id, s.org_id), \
             ended AS ( \
                 DELETE FROM browser_sessions \
                 WHERE identity_id IN (SELECT identity_id FROM moved)), \
             audited AS ( \
                 INSERT INTO audit_events \
                     (at, action, actor, org_id, subject_user_id, address, user_agent, detail) \
                 SELECT $3, $4, $5, $6, $7, $8, $9, $10 \
                 FROM moved, LATERAL pg_notify($11, $4 || ' ' || moved.id)), \
             sibling_audited AS ( \
                 INSERT INTO audit_events \
                     (at, action, actor, org_id, subject_user_id, address, user_agent, detail) \
                 SELECT $3, $4, $5, s.org_id, s.id, $8, $9, $10 \
                 FROM siblings s, LATERAL pg_notify($11, $4 || ' ' || s.id)) \
             SELECT id, FALSE FROM moved UNION ALL SELECT id, TRUE FROM siblings",
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
        .bind(revoke.whole_identity)
        .fetch_all(&self.0)
        .await?;
        if !rows.iter().any(|(_, sibling)| !sibling) {
            return Ok(None);
        }
        Ok(Some(
            rows.into_iter()
                .filter_map(|(id, sibling)| sibling.then_some(id))
                .collect(),
        ))
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
    whole_identity: Vec<bool>,
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
        self.whole_identity.push(revoke.whole_identity);
    }
}

/// Commits one group: its tokens' grants in one statement, its revokes in another.
async fn commit_group(writer: Arc<PgRevokes>, requests: Vec<Request>) {
    let grants = read_grants(&writer, &requests).await;
    let mut group = Vec::with_capacity(requests.len());
    let mut callers = Vec::with_capacity(requests.len());
    for (request, grant) in requests.into_iter().zip(grants) {
        match grant.map(|grant| request.revoke.resolve(grant.as_ref())) {
            Ok(Some(revoke)) => {
                group.push(revoke);
                callers.push(request);
            }
            Ok(None) => request.answer(Ok(None)),
            Err(err) => request.answer(Err(err)),
        }
    }
    if group.is_empty() {
        return;
    }
    match writer.revoke_group(&group).await {
        Ok(outcomes) => {
            for ((request, revoke), moved) in callers.into_iter().zip(group).zip(outcomes) {
                request.answer(Ok(Some(RevokedAll {
                    user_id: revoke.user_id,
                    moved: moved.is_some(),
                    siblings: moved.unwrap_or_default(),
                })));
            }
        }
        // One bad revoke must not fail the others: each is retried on its own.
        Err(_) => {
            for (request, revoke) in callers.into_iter().zip(group) {
                let outcome = writer.revoke_alone(&revoke).await;
                request.answer(outcome.map(|moved| {
                    Some(RevokedAll {
                        user_id: revoke.user_id,
                        moved: moved.is_some(),
                        siblings: moved.unwrap_or_default(),
                    })
                }));
            }
        }
    }
}

/// The grant of each request's token, in order (`Ok(None)` for a user-named request or an
/// unknown token): the group's in one statement, or, if that fails, each on its own so that
/// each caller gets its own error.
async fn read_grants(
    writer: &PgRevokes,
    requests: &[Request],
) -> Vec<Result<Option<RefreshGrant>, StoreError>> {
    let token_hashes: Vec<[u8; 32]> = requests
        .iter()
        .filter_map(|request| request.revoke.token_hash().copied())
        .collect();
    if token_hashes.is_empty() {
        return requests.iter().map(|_| Ok(None)).collect();
    }
    if let Ok(found) = writer.grants_by_hash(&token_hashes).await {
        let found: HashMap<[u8; 32], RefreshGrant> = found.into_iter().collect();
        return requests
            .iter()
            .map(|request| {
                Ok(request
                    .revoke
                    .token_hash()
                    .and_then(|token_hash| found.get(token_hash).cloned()))
            })
            .collect();
    }
    let mut grants = Vec::with_capacity(requests.len());
    for request in requests {
        grants.push(match request.revoke.token_hash() {
            None => Ok(None),
            Some(token_hash) => writer
                .grants_by_hash(std::slice::from_ref(token_hash))
                .await
                .map(|found| found.into_iter().next().map(|(_, grant)| grant)),
        });
    }
    grants
}
