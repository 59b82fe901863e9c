//! Group commit of the durable writes of the hot paths, shared by both backends: concurrent
//! revoke-alls (and, on SQLite, exchanges of keyless CI) wait in a queue and whoever commits
//! takes whatever has gathered into a single transaction, so a burst pays for one durable
//! commit (an fsync) instead of one each, and each caller is answered only after the commit
//! that holds its write.
//!
//! A revoke-all named by a refresh token (`POST /auth/revoke`) has its grant read by whoever
//! commits, where the revoke is written, and decided there. On PostgreSQL a task reads the
//! whole group's grants in one statement and commits it in another (`postgres::revokes`); on
//! SQLite a thread with a connection of its own does the reads and the writes of a group in
//! one go (`sqlite::revoker`).

use tokio::sync::{mpsc, oneshot};

use super::{
    AuditEvent, ExchangeWrite, PolicyExchange, RefreshGrant, RevokeDecision, RevokedAll, StoreError,
};

/// Most writes committed in one transaction.
const MAX_WRITES_PER_COMMIT: usize = 64;

/// A revoke-all of a user whose epoch the caller read: the epoch moves only from there.
#[derive(Clone)]
pub(super) struct UserRevoke {
    pub user_id: String,
    pub expected_epoch: i64,
    pub audit: AuditEvent,
    /// Also every other active member of the user's identity (a person revoking their own
    /// tokens ends them in every organization); an Admin's revoke ends one member's only.
    pub whole_identity: bool,
}

/// What one queued request asks for.
pub(super) enum Revoke {
    /// A user named by the caller, at the epoch the caller read.
    User(UserRevoke),
    /// The user behind a refresh token, if `decide` consents once its grant is read.
    Token {
        token_hash: [u8; 32],
        decide: RevokeDecision,
    },
}

impl Revoke {
    /// The token whose grant must be read before this request can be decided.
    pub(super) fn token_hash(&self) -> Option<&[u8; 32]> {
        match self {
            Revoke::User(_) => None,
            Revoke::Token { token_hash, .. } => Some(token_hash),
        }
    }

    /// The revoke-all this request comes to, given the grant read for its token (for a
    /// token-named one): `None` when there is no such token or `decide` refuses its grant.
    /// The epoch moves only from the one the grant was read at.
    pub(super) fn resolve(&self, grant: Option<&RefreshGrant>) -> Option<UserRevoke> {
        match self {
            Revoke::User(revoke) => Some(revoke.clone()),
            Revoke::Token { decide, .. } => {
                let grant = grant?;
                decide(grant).map(|audit| UserRevoke {
                    user_id: grant.user_id.clone(),
                    expected_epoch: grant.user_epoch,
                    audit,
                    whole_identity: true,
                })
            }
        }
    }
}

/// Where a request's outcome goes.
enum Reply {
    User(oneshot::Sender<Result<bool, StoreError>>),
    Token(oneshot::Sender<Result<Option<RevokedAll>, StoreError>>),
}

/// A queued revoke-all and its caller.
pub(super) struct Request {
    pub revoke: Revoke,
    reply: Reply,
}

impl Request {
    /// Answers the caller with the revoke-all its request came to (`None`: none).
    pub(super) fn answer(self, outcome: Result<Option<RevokedAll>, StoreError>) {
        // A caller that went away (its request was cancelled) needs no answer.
        match self.reply {
            Reply::User(reply) => {
                let _ = reply.send(outcome.map(|done| done.is_some_and(|done| done.moved)));
            }
            Reply::Token(reply) => {
                let _ = reply.send(outcome);
            }
        }
    }
}

/// An exchange of an OIDC token under a trust policy (keyless CI), queued with its caller: on
/// SQLite it is committed with whatever revoke-alls and exchanges have gathered.
pub(super) struct ExchangeRequest {
    pub exchange: PolicyExchange,
    pub audit: AuditEvent,
    reply: oneshot::Sender<Result<ExchangeWrite, StoreError>>,
}

impl ExchangeRequest {
    pub(super) fn answer(self, outcome: Result<ExchangeWrite, StoreError>) {
        // A caller that went away (its request was cancelled) needs no answer.
        let _ = self.reply.send(outcome);
    }
}

/// What SQLite's writer thread takes from its queue: a revoke-all or an exchange.
pub(super) enum GroupWrite {
    Revoke(Request),
    Exchange(ExchangeRequest),
}

impl From<Request> for GroupWrite {
    fn from(request: Request) -> Self {
        GroupWrite::Revoke(request)
    }
}

impl From<ExchangeRequest> for GroupWrite {
    fn from(request: ExchangeRequest) -> Self {
        GroupWrite::Exchange(request)
    }
}

/// The queue's sending side, held by the store; `T` is what its consumer takes ([`Request`]
/// on PostgreSQL, [`GroupWrite`] on SQLite).
pub(super) struct RevokeQueue<T = Request> {
    /// Taken by [`RevokeQueue::close`]; the consumer stops once every request before is done.
    pending: std::sync::Mutex<Option<mpsc::UnboundedSender<T>>>,
    /// Signalled by the consumer when it has stopped.
    stopped: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

/// The queue's receiving side, for a consumer on a thread of its own.
pub(super) struct PendingRevokes<T = Request> {
    queue: mpsc::UnboundedReceiver<T>,
    stopped: Option<oneshot::Sender<()>>,
}

impl<T> PendingRevokes<T> {
    /// Waits for the next request and takes those queued behind it, up to a group's size;
    /// `None` once the queue is closed and empty. Blocks: not for an async context.
    pub(super) fn next_group_blocking(&mut self) -> Option<Vec<T>> {
        let first = self.queue.blocking_recv()?;
        Some(gather(first, &mut self.queue))
    }

    /// Waits for the next request and takes those queued behind it, up to a group's size;
    /// `None` once the queue is closed and empty.
    pub(super) async fn next_group(&mut self) -> Option<Vec<T>> {
        let first = self.queue.recv().await?;
        Some(gather(first, &mut self.queue))
    }

    /// Tells [`RevokeQueue::close`] that the consumer is done.
    pub(super) fn stopped(mut self) {
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.send(());
        }
    }
}

/// No answer means the consumer stopped first (the store is closing, or the runtime is
/// shutting down).
fn stopped() -> StoreError {
    StoreError::Unreachable(sqlx::Error::PoolClosed)
}

impl<T> RevokeQueue<T> {
    /// A queue whose requests a consumer on a thread of its own takes.
    pub fn new() -> (Self, PendingRevokes<T>) {
        let (pending, queue) = mpsc::unbounded_channel();
        let (stopped_tx, stopped_rx) = oneshot::channel();
        (
            Self {
                pending: std::sync::Mutex::new(Some(pending)),
                stopped: tokio::sync::Mutex::new(Some(stopped_rx)),
            },
            PendingRevokes {
                queue,
                stopped: Some(stopped_tx),
            },
        )
    }

    fn send(&self, item: T) -> Result<(), StoreError> {
        // Sent outside the lock: sending may wake the consumer, a system call that callers
        // on other threads must not queue behind.
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(stopped)?;
        pending.send(item).map_err(|_| stopped())
    }

    /// Stops taking requests, and waits until those already queued are answered and the
    /// consumer has stopped (on SQLite, closed its connection).
    pub async fn close(&self) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(stopped) = self.stopped.lock().await.take() {
            let _ = stopped.await;
        }
    }
}

impl<T: From<Request>> RevokeQueue<T> {
    fn send_revoke(&self, revoke: Revoke, reply: Reply) -> Result<(), StoreError> {
        self.send(Request { revoke, reply }.into())
    }

    /// Queues a revoke-all and waits for the commit that holds it.
    pub async fn revoke_all(
        &self,
        user_id: &str,
        expected_epoch: i64,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let (reply, answered) = oneshot::channel();
        let revoke = Revoke::User(UserRevoke {
            user_id: user_id.to_owned(),
            expected_epoch,
            audit,
            whole_identity: false,
        });
        self.send_revoke(revoke, Reply::User(reply))?;
        answered.await.map_err(|_| stopped())?
    }

    /// Queues a revoke-all named by a refresh token and waits for the commit that holds it:
    /// `None` when no token has this hash or `decide` refused its grant.
    pub async fn revoke_all_by_token(
        &self,
        token_hash: [u8; 32],
        decide: RevokeDecision,
    ) -> Result<Option<RevokedAll>, StoreError> {
        let (reply, answered) = oneshot::channel();
        let revoke = Revoke::Token { token_hash, decide };
        self.send_revoke(revoke, Reply::Token(reply))?;
        answered.await.map_err(|_| stopped())?
    }
}

impl<T: From<ExchangeRequest>> RevokeQueue<T> {
    /// Queues an exchange and waits for the commit that holds it.
    pub async fn record_exchange(
        &self,
        exchange: PolicyExchange,
        audit: AuditEvent,
    ) -> Result<ExchangeWrite, StoreError> {
        let (reply, answered) = oneshot::channel();
        self.send(
            ExchangeRequest {
                exchange,
                audit,
                reply,
            }
            .into(),
        )?;
        answered.await.map_err(|_| stopped())?
    }
}

/// `first` and the requests queued behind it, up to a group's size.
/// The consumer's loop on an async runtime (PostgreSQL's): each group is committed by
/// `commit` in a task of its own, so that a panic (a bug) costs only its group, whose callers
/// get the error of a store that went away (their replies are dropped), and not every later
/// revoke. SQLite's thread does the same with `catch_unwind`.
pub(super) async fn commit_supervised<F, Committing>(mut pending: PendingRevokes, commit: F)
where
    F: Fn(Vec<Request>) -> Committing,
    Committing: std::future::Future<Output = ()> + Send + 'static,
{
    while let Some(requests) = pending.next_group().await {
        if let Err(err) = tokio::spawn(commit(requests)).await
            && err.is_panic()
        {
            tracing::error!("a group of revoke-alls panicked; none of it was committed");
        }
    }
    pending.stopped();
}

fn gather<T>(first: T, queue: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut requests = vec![first];
    while requests.len() < MAX_WRITES_PER_COMMIT {
        match queue.try_recv() {
            Ok(next) => requests.push(next),
            Err(_) => break,
        }
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit() -> AuditEvent {
        AuditEvent {
            at: 0,
            action: "tokens.revoked_all",
            actor: "test".to_owned(),
            org_id: None,
            subject_user_id: None,
            address: None,
            user_agent: None,
            detail: None,
        }
    }

    #[tokio::test]
    async fn a_panicking_group_fails_only_its_own_callers() {
        let (queue, pending) = RevokeQueue::new();
        let consumer = tokio::spawn(commit_supervised(
            pending,
            |requests: Vec<Request>| async move {
                for request in requests {
                    let user = match &request.revoke {
                        Revoke::User(revoke) => revoke.user_id.clone(),
                        Revoke::Token { .. } => String::new(),
                    };
                    assert_ne!(user, "buggy", "an injected bug");
                    request.answer(Ok(Some(RevokedAll {
                        user_id: user,
                        moved: true,
                        siblings: Vec::new(),
                    })));
                }
            },
        ));
        let failed = queue.revoke_all("buggy", 1, audit()).await;
        assert!(
            matches!(failed, Err(StoreError::Unreachable(_))),
            "the panicking group's caller gets an error, not a hang: {failed:?}"
        );
        for _ in 0..3 {
            let served = queue.revoke_all("alice", 1, audit()).await;
            assert!(
                matches!(served, Ok(true)),
                "later revokes are still committed: {served:?}"
            );
        }
        queue.close().await;
        assert!(consumer.await.is_ok(), "the consumer stopped cleanly");
    }
}
