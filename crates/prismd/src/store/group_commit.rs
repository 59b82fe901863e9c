//! Group commit of revoke-alls, shared by both backends: concurrent revokes wait in a queue and
//! one task commits whatever has gathered in a single transaction, so a burst pays for one
//! durable commit (an fsync) instead of one each, and each caller is answered only after the
//! commit that holds its revoke.
//!
//! A revoke-all named by a refresh token (`POST /auth/revoke`) has its grant read by the same
//! task, for the whole group in one statement, on the writer: on SQLite a reader's page cache
//! and memory map are dropped after every commit, so reading there after each group cost more
//! than the revoke's own writes.

use std::collections::HashMap;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{AuditEvent, RefreshGrant, RevokeDecision, RevokedAll, StoreError};

/// Most revoke-alls committed in one transaction.
const MAX_REVOKES_PER_COMMIT: usize = 64;

/// A revoke-all of a user whose epoch the caller read: the epoch moves only from there.
pub(super) struct UserRevoke {
    pub user_id: String,
    pub expected_epoch: i64,
    pub audit: AuditEvent,
}

/// How a backend reads grants and writes revoke-alls.
#[async_trait]
pub(super) trait RevokeWriter: Send + Sync + 'static {
    /// The grants of these token hashes that exist, each with its hash, read where the
    /// revokes are written.
    async fn grants_by_hash(
        &self,
        token_hashes: &[[u8; 32]],
    ) -> Result<Vec<([u8; 32], RefreshGrant)>, StoreError>;

    /// Commits the whole group in one transaction; the outcome of each revoke in order, as if
    /// they had been committed one after the other (a user named twice at the same epoch
    /// moves once, and only the first revoke reports the move).
    async fn revoke_group(&self, group: &[UserRevoke]) -> Result<Vec<bool>, StoreError>;

    /// Commits one revoke in its own transaction.
    async fn revoke_alone(&self, revoke: &UserRevoke) -> Result<bool, StoreError>;
}

/// What a caller waits on.
enum Request {
    User {
        revoke: UserRevoke,
        answer: oneshot::Sender<Result<bool, StoreError>>,
    },
    Token {
        token_hash: [u8; 32],
        decide: RevokeDecision,
        answer: oneshot::Sender<Result<Option<RevokedAll>, StoreError>>,
    },
}

/// Where a revoke's outcome goes once its commit is done.
enum Answer {
    User(oneshot::Sender<Result<bool, StoreError>>),
    Token {
        user_id: String,
        answer: oneshot::Sender<Result<Option<RevokedAll>, StoreError>>,
    },
}

impl Answer {
    fn send(self, outcome: Result<bool, StoreError>) {
        // A caller that went away (its request was cancelled) needs no answer.
        match self {
            Answer::User(answer) => {
                let _ = answer.send(outcome);
            }
            Answer::Token { user_id, answer } => {
                let _ = answer.send(outcome.map(|moved| Some(RevokedAll { user_id, moved })));
            }
        }
    }
}

/// The queue's sending side, held by the store.
pub(super) struct RevokeQueue<W: RevokeWriter> {
    pending: mpsc::UnboundedSender<Request>,
    writer: std::sync::Arc<W>,
}

/// No answer means the committing task stopped (the runtime is shutting down) first.
fn stopped() -> StoreError {
    StoreError::Unreachable(sqlx::Error::PoolClosed)
}

impl<W: RevokeWriter> RevokeQueue<W> {
    /// Starts the committing task on the current runtime.
    pub fn start(writer: W) -> Self {
        let writer = std::sync::Arc::new(writer);
        let (pending, queue) = mpsc::unbounded_channel();
        tokio::spawn(commit_in_groups(writer.clone(), queue));
        Self { pending, writer }
    }

    /// Queues a revoke-all and waits for the commit that holds it.
    pub async fn revoke_all(
        &self,
        user_id: &str,
        expected_epoch: i64,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let (answer, answered) = oneshot::channel();
        let revoke = UserRevoke {
            user_id: user_id.to_owned(),
            expected_epoch,
            audit,
        };
        // If the committing task is gone (the runtime is shutting down), commit alone.
        if let Err(unsent) = self.pending.send(Request::User { revoke, answer })
            && let Request::User { revoke, .. } = unsent.0
        {
            return self.writer.revoke_alone(&revoke).await;
        }
        answered.await.map_err(|_| stopped())?
    }

    /// Queues a revoke-all named by a refresh token and waits for the commit that holds it:
    /// `None` when no token has this hash or `decide` refused its grant.
    pub async fn revoke_all_by_token(
        &self,
        token_hash: [u8; 32],
        decide: RevokeDecision,
    ) -> Result<Option<RevokedAll>, StoreError> {
        let (answer, answered) = oneshot::channel();
        let request = Request::Token {
            token_hash,
            decide,
            answer,
        };
        if let Err(unsent) = self.pending.send(request)
            && let Request::Token {
                token_hash, decide, ..
            } = unsent.0
        {
            return revoke_token_alone(&*self.writer, token_hash, &decide).await;
        }
        answered.await.map_err(|_| stopped())?
    }
}

/// A token-named revoke on its own: read, decide, commit.
async fn revoke_token_alone<W: RevokeWriter>(
    writer: &W,
    token_hash: [u8; 32],
    decide: &RevokeDecision,
) -> Result<Option<RevokedAll>, StoreError> {
    let grants = writer.grants_by_hash(&[token_hash]).await?;
    let Some(revoke) = grants.first().and_then(|(_, grant)| decided(grant, decide)) else {
        return Ok(None);
    };
    let moved = writer.revoke_alone(&revoke).await?;
    Ok(Some(RevokedAll {
        user_id: revoke.user_id,
        moved,
    }))
}

/// The revoke `decide` makes of `grant`, if any: from the epoch the grant was read at.
fn decided(grant: &RefreshGrant, decide: &RevokeDecision) -> Option<UserRevoke> {
    decide(grant).map(|audit| UserRevoke {
        user_id: grant.user_id.clone(),
        expected_epoch: grant.user_epoch,
        audit,
    })
}

async fn commit_in_groups<W: RevokeWriter>(
    writer: std::sync::Arc<W>,
    mut queue: mpsc::UnboundedReceiver<Request>,
) {
    while let Some(first) = queue.recv().await {
        let mut requests = vec![first];
        while requests.len() < MAX_REVOKES_PER_COMMIT {
            match queue.try_recv() {
                Ok(next) => requests.push(next),
                Err(_) => break,
            }
        }
        let (group, answers) = resolve(&*writer, requests).await;
        if group.is_empty() {
            continue;
        }
        match writer.revoke_group(&group).await {
            Ok(outcomes) => {
                for (answer, moved) in answers.into_iter().zip(outcomes) {
                    answer.send(Ok(moved));
                }
            }
            // One bad revoke must not fail the others: each is retried on its own.
            Err(_) => {
                for (revoke, answer) in group.iter().zip(answers) {
                    answer.send(writer.revoke_alone(revoke).await);
                }
            }
        }
    }
}

/// Turns a batch of requests into the revokes to commit, reading the grants of the
/// token-named ones in one statement. Token-named revokes that revoke nothing (no such token,
/// or refused) are answered here; so are those whose grant could not be read.
async fn resolve<W: RevokeWriter>(
    writer: &W,
    requests: Vec<Request>,
) -> (Vec<UserRevoke>, Vec<Answer>) {
    let token_hashes: Vec<[u8; 32]> = requests
        .iter()
        .filter_map(|request| match request {
            Request::Token { token_hash, .. } => Some(*token_hash),
            Request::User { .. } => None,
        })
        .collect();
    let grants: Option<HashMap<[u8; 32], RefreshGrant>> = if token_hashes.is_empty() {
        Some(HashMap::new())
    } else {
        // If the group's read fails, each token is read on its own below, so that each
        // caller gets its own error.
        writer
            .grants_by_hash(&token_hashes)
            .await
            .ok()
            .map(|found| found.into_iter().collect())
    };
    let mut group = Vec::with_capacity(requests.len());
    let mut answers = Vec::with_capacity(requests.len());
    for request in requests {
        match request {
            Request::User { revoke, answer } => {
                group.push(revoke);
                answers.push(Answer::User(answer));
            }
            Request::Token {
                token_hash,
                decide,
                answer,
            } => {
                let grant = match &grants {
                    Some(grants) => grants.get(&token_hash).cloned(),
                    None => match writer.grants_by_hash(&[token_hash]).await {
                        Ok(found) => found.into_iter().next().map(|(_, grant)| grant),
                        Err(err) => {
                            let _ = answer.send(Err(err));
                            continue;
                        }
                    },
                };
                match grant.and_then(|grant| decided(&grant, &decide)) {
                    Some(revoke) => {
                        answers.push(Answer::Token {
                            user_id: revoke.user_id.clone(),
                            answer,
                        });
                        group.push(revoke);
                    }
                    None => {
                        let _ = answer.send(Ok(None));
                    }
                }
            }
        }
    }
    (group, answers)
}

/// Which revokes of `group` moved their user's epoch, given the `(user, epoch moved from)`
/// pairs the database reports: the first revoke of each such pair, in queue order.
pub(super) fn outcomes_in_order(
    group: &[UserRevoke],
    moved: impl IntoIterator<Item = (String, i64)>,
) -> Vec<bool> {
    let mut moved: std::collections::HashSet<(String, i64)> = moved.into_iter().collect();
    group
        .iter()
        .map(|revoke| moved.remove(&(revoke.user_id.clone(), revoke.expected_epoch)))
        .collect()
}
