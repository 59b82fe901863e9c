//! The key ring a running server signs and verifies with, swappable at runtime so a key
//! rotation made anywhere (`prismd keys rotate`, another replica) reaches this process: a
//! periodic reload, an immediate reload when a token names a `kid` we do not know yet
//! (single-flight and rate-limited, so made-up kids cannot hammer the database), and
//! [`LiveKeys::reload`] for anyone who learns of a rotation first (a LISTEN/NOTIFY listener).
//! With `--key-rotation-period` it also rotates the key itself when it gets old
//! ([`rotate_periodically`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use super::at_rest::AtRest;
use super::key_error::KeyError;
use super::keyring::{self, KeyRing, RetiredKeyWindow};
use crate::domain::now_ms;
use crate::store::Store;

/// At most one reload for unknown kids per this interval.
pub const UNKNOWN_KID_RELOAD_GAP: Duration = Duration::from_secs(1);

/// The current key ring, and how to replace it.
pub struct LiveKeys {
    store: Arc<dyn Store>,
    window: RetiredKeyWindow,
    at_rest: AtRest,
    current: RwLock<Arc<KeyRing>>,
    /// Held for the duration of a reload (single flight); holds when the last reload for an
    /// unknown kid started.
    reloading: Mutex<Option<Instant>>,
    reloads: AtomicU64,
}

impl LiveKeys {
    pub fn new(
        store: Arc<dyn Store>,
        ring: KeyRing,
        window: RetiredKeyWindow,
        at_rest: AtRest,
    ) -> Self {
        Self {
            store,
            window,
            at_rest,
            current: RwLock::new(Arc::new(ring)),
            reloading: Mutex::new(None),
            reloads: AtomicU64::new(0),
        }
    }

    /// The ring to use for this one request.
    pub fn current(&self) -> Arc<KeyRing> {
        // A poisoned lock still holds a complete ring: the swap is a single assignment.
        match self.current.read() {
            Ok(ring) => ring.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How long retired keys keep verifying.
    pub fn window(&self) -> &RetiredKeyWindow {
        &self.window
    }

    /// Reads the keys from the store now and swaps the new ring in. On failure the current
    /// ring stays in use.
    pub async fn reload(&self) -> Result<(), KeyError> {
        let _single_flight = self.reloading.lock().await;
        self.reload_locked().await
    }

    /// How many times the keys have been read from the store since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    async fn reload_locked(&self) -> Result<(), KeyError> {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        let ring =
            KeyRing::load(self.store.as_ref(), now_ms(), &self.window, &self.at_rest).await?;
        let before = self.current();
        if before.active_kid() != ring.active_kid() {
            tracing::info!(
                kid = ring.active_kid(),
                previous = before.active_kid(),
                "signing key rotated"
            );
        }
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(ring),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(ring),
        }
        Ok(())
    }

    /// The ring to verify a token that names `kid`, which the current ring does not know:
    /// reloads once, unless a reload that started after this call already missed it. Reloads
    /// for unknown kids start at most once per [`UNKNOWN_KID_RELOAD_GAP`]; a caller that comes
    /// too early waits for the next one instead of being refused, so a token signed with a
    /// new key always gets its reload.
    pub async fn for_unknown_kid(&self, kid: &str) -> Arc<KeyRing> {
        let arrived = Instant::now();
        loop {
            let next_allowed = {
                let mut last_started = self.reloading.lock().await;
                let ring = self.current();
                if ring.knows(kid) {
                    return ring;
                }
                match *last_started {
                    // A reload that began after we arrived did not find the kid: it is not
                    // in the database.
                    Some(started) if started >= arrived => return ring,
                    Some(started) if started + UNKNOWN_KID_RELOAD_GAP > Instant::now() => {
                        started + UNKNOWN_KID_RELOAD_GAP
                    }
                    _ => {
                        *last_started = Some(Instant::now());
                        if let Err(err) = self.reload_locked().await {
                            tracing::warn!(error = %err, "could not reload the signing keys for an unknown kid");
                        }
                        return self.current();
                    }
                }
            };
            tokio::time::sleep_until(next_allowed).await;
        }
    }
}

/// Reloads `keys` every `every` until `stopped` changes. A failed reload (database down)
/// keeps the current ring and is retried at the next tick.
pub async fn reload_periodically(
    keys: Arc<LiveKeys>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        if let Err(err) = keys.reload().await {
            tracing::warn!(error = %err, "could not reload the signing keys; keeping the current ones");
        }
    }
}

/// Longest time between two checks of the active key's age: an automatic rotation happens
/// at most this long after the key has reached its period.
const MAX_ROTATION_CHECK_GAP: Duration = Duration::from_secs(60);

/// Rotates the signing key whenever the active one is `period` old, until `stopped` changes.
/// Every replica runs this; the database lets one of them rotate per period (see
/// [`keyring::rotate_if_older_than`]), and the others hear of it through the change feed. A
/// failed check (database down) is retried at the next one.
pub async fn rotate_periodically(
    keys: Arc<LiveKeys>,
    period: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let every = (period / 4).clamp(Duration::from_millis(100), MAX_ROTATION_CHECK_GAP);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        match keyring::rotate_if_older_than(keys.store.as_ref(), &keys.at_rest, period, now_ms())
            .await
        {
            Ok(None) => {}
            Ok(Some(rotation)) => {
                tracing::info!(
                    kid = %rotation.kid,
                    retired = ?rotation.retired,
                    "rotated the signing key (--key-rotation-period)"
                );
                if let Err(err) = keys.reload().await {
                    tracing::warn!(error = %err, "could not reload the signing keys after rotating them");
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not check or rotate the signing key; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Backend, OpenOptions};
    use crate::tokens::keyring;

    fn window() -> RetiredKeyWindow {
        RetiredKeyWindow {
            access_token_ttl: Duration::from_secs(60),
            reload_interval: Duration::from_secs(30),
            margin: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn unknown_kids_share_few_reloads_and_a_rotated_kid_is_found()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = crate::store::open(
            &Backend::from_url(None, dir.path())?,
            OpenOptions::default(),
        )
        .await?;
        let ring =
            KeyRing::load_or_create(store.as_ref(), now_ms(), &window(), &AtRest::Plain).await?;
        let keys = Arc::new(LiveKeys::new(store.clone(), ring, window(), AtRest::Plain));

        // A burst of tokens naming made-up kids: at most one reload now and one a second
        // later for those that arrived before the first began, however many there are.
        let mut burst = tokio::task::JoinSet::new();
        for n in 0..50 {
            let keys = keys.clone();
            burst.spawn(async move {
                let kid = format!("{n:0>43}");
                keys.for_unknown_kid(&kid).await.knows(&kid)
            });
        }
        while let Some(known) = burst.join_next().await {
            assert!(!known?);
        }
        assert!(
            (1..=2).contains(&keys.reloads()),
            "reloads: {}",
            keys.reloads()
        );

        // A key rotated elsewhere is found on first sight.
        let before = keys.reloads();
        let rotation =
            keyring::rotate(store.as_ref(), &AtRest::Plain, "test".into(), now_ms()).await?;
        let ring = keys.for_unknown_kid(&rotation.kid).await;
        assert!(ring.knows(&rotation.kid));
        assert_eq!(ring.active_kid(), rotation.kid);
        assert_eq!(keys.reloads(), before + 1);
        // Once known, no more reloads.
        assert!(
            keys.for_unknown_kid(&rotation.kid)
                .await
                .knows(&rotation.kid)
        );
        assert_eq!(keys.reloads(), before + 1);
        store.close().await;
        Ok(())
    }
}
