//! Group commit of revoke-alls, shared by both backends: concurrent revokes wait in a queue and
//! one task commits whatever has gathered in a single transaction, so a burst pays for one
//! durable commit (an fsync) instead of one each, and each caller is answered only after the
//! commit that holds its revoke.

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{AuditEvent, StoreError};

/// Most revoke-alls committed in one transaction.
const MAX_REVOKES_PER_COMMIT: usize = 64;

/// A revoke-all waiting for its group commit.
pub(super) struct PendingRevoke {
    pub user_id: String,
    pub expected_epoch: i64,
    pub audit: AuditEvent,
    answer: oneshot::Sender<Result<bool, StoreError>>,
}

/// How a backend writes revoke-alls.
#[async_trait]
pub(super) trait RevokeWriter: Send + Sync + 'static {
    /// Commits the whole group in one transaction; the outcome of each revoke in order, as if
    /// they had been committed one after the other (a user named twice at the same epoch
    /// moves once, and only the first revoke reports the move).
    async fn revoke_group(&self, group: &[PendingRevoke]) -> Result<Vec<bool>, StoreError>;

    /// Commits one revoke in its own transaction.
    async fn revoke_alone(&self, revoke: &PendingRevoke) -> Result<bool, StoreError>;
}

/// The queue's sending side, held by the store.
pub(super) struct RevokeQueue<W: RevokeWriter> {
    pending: mpsc::UnboundedSender<PendingRevoke>,
    writer: std::sync::Arc<W>,
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
        let pending = PendingRevoke {
            user_id: user_id.to_owned(),
            expected_epoch,
            audit,
            answer,
        };
        if let Err(unsent) = self.pending.send(pending) {
            // The committing task is gone (the runtime is shutting down): commit alone.
            return self.writer.revoke_alone(&unsent.0).await;
        }
        // No answer means the task stopped (shutdown) before committing this one.
        answered
            .await
            .map_err(|_| StoreError::Unreachable(sqlx::Error::PoolClosed))?
    }
}

async fn commit_in_groups<W: RevokeWriter>(
    writer: std::sync::Arc<W>,
    mut queue: mpsc::UnboundedReceiver<PendingRevoke>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_REVOKES_PER_COMMIT {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        match writer.revoke_group(&group).await {
            Ok(outcomes) => {
                for (revoke, outcome) in group.into_iter().zip(outcomes) {
                    let _ = revoke.answer.send(Ok(outcome));
                }
            }
            // One bad revoke must not fail the others: each is retried on its own.
            Err(_) => {
                for revoke in group {
                    let outcome = writer.revoke_alone(&revoke).await;
                    let _ = revoke.answer.send(outcome);
                }
            }
        }
    }
}

/// Which revokes of `group` moved their user's epoch, given the `(user, epoch moved from)`
/// pairs the database reports: the first revoke of each such pair, in queue order.
pub(super) fn outcomes_in_order(
    group: &[PendingRevoke],
    moved: impl IntoIterator<Item = (String, i64)>,
) -> Vec<bool> {
    let mut moved: std::collections::HashSet<(String, i64)> = moved.into_iter().collect();
    group
        .iter()
        .map(|revoke| moved.remove(&(revoke.user_id.clone(), revoke.expected_epoch)))
        .collect()
}
