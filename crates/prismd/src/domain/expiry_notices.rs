//! Expiry notices (issue 17): when SMTP is configured, a named token about to expire (within
//! [`NOTICE_AHEAD`]) gets one mail to its owner: the person it belongs to, or, for a service
//! account's token, the member who minted it. Each notice is claimed in the database before it
//! is sent, so of several replicas one sends it; a mail that cannot be sent releases the claim
//! and is tried again next round.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{DomainError, now_ms};
use crate::mail::{self, Mailer};
use crate::store::Store;

/// How long before its expiry a token's owner is told.
pub const NOTICE_AHEAD: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most notices one round sends.
const ROUND_LIMIT: i64 = 200;

/// Sends the notices that are due now; returns how many went out.
pub async fn send_due(store: &dyn Store, mailer: &Mailer) -> Result<usize, DomainError> {
    let now = now_ms();
    let ahead = i64::try_from(NOTICE_AHEAD.as_millis()).unwrap_or(i64::MAX);
    let due = store
        .tokens_expiring(now, now.saturating_add(ahead), ROUND_LIMIT)
        .await?;
    let mut sent = 0;
    for token in due {
        let Some(recipient) = token.recipient.as_deref() else {
            continue;
        };
        if !store.claim_expiry_notice(&token.token_id, now).await? {
            continue;
        }
        let notice = mail::token_expiring(
            recipient,
            &token.org_name,
            token.name.as_deref().unwrap_or("(unnamed)"),
            &token.principal_name,
            token.expires_at,
        );
        match mailer.send(notice).await {
            Ok(()) => sent += 1,
            Err(err) => {
                // Never the address or the token in the log: which token, and why.
                tracing::warn!(token_id = %token.token_id, error = %err, "could not send a token expiry notice; it is tried again next round");
                store.release_expiry_notice(&token.token_id).await?;
            }
        }
    }
    Ok(sent)
}

/// Every `interval` (the first one right after start), sends the notices due, until
/// `stopped` turns true.
pub async fn run_periodically(
    store: Arc<dyn Store>,
    mailer: Arc<Mailer>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        match send_due(store.as_ref(), &mailer).await {
            Ok(0) => {}
            Ok(sent) => tracing::info!(sent, "token expiry notices sent"),
            Err(err) => tracing::warn!(error = %err, "token expiry notices failed this round"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
    }
}
