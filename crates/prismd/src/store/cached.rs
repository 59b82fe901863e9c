//! The read-through cache in front of the two hot-path reads (a refresh grant by token hash,
//! the principal behind an access token) and the rules that keep it from outliving a revoke.
//!
//! A cached entry is dropped when:
//! - this process changes the user (every write below that can change someone's standing
//!   invalidates that user before it returns, so a revoke answered 200 holds on this replica
//!   at once), or an organization's session policy (grants carry it; everything is dropped);
//! - another process's change is heard through [`Store::follow_changes`] (PostgreSQL
//!   `LISTEN/NOTIFY`, or SQLite's audit-log poll), which calls [`CachedStore::apply`];
//! - it is older than the configured lifetime: a last-resort bound (a silently dead
//!   PostgreSQL listener is caught sooner, by its missing heartbeat).
//!
//! While the change feed is down (before it first listens, and from the moment it breaks
//! until it listens again) the cache is bypassed: a process that cannot hear of revokes must
//! not answer from memory. So during a database outage requests fail with 503 rather than
//! being served from a cache nobody can invalidate.
//!
//! Only positive answers are cached: an unknown token hash always goes to the database, so
//! a token minted a moment ago on another replica works everywhere at once. A refresh grant
//! is cached on its token's second read, not its first (see [`Entries::admit_grant`]).
//!
//! Fills race with invalidations: a read that started before an invalidation may return
//! after it with the old state. Every invalidation takes a tick of a logical clock, every fill
//! records the tick at which its read started, and an entry counts only if its read started
//! after the last invalidation of its user.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    AttemptCounter, AttemptPolicy, AuditEvent, AuditQuery, AuditRecord, Change, CleanupLock,
    CodeRedemption, Credentials, DeviceCode, Garbage, INFORMATIONAL_ACTIONS, NewAuthorizationCode,
    NewDeviceCode, NewOrganization, NewRefreshToken, NewUser, Organization, PrincipalRecord,
    PrivateKeyReplacement, ProfileChanges, RefreshGrant, Removal, RevokeDecision, RevokedAll,
    SessionPolicy, SessionRecord, SigningKeyRecord, Store, StoreError, TokenUse, User,
};

/// How long and how much the cache keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Longest an entry is trusted without a notification; zero turns the cache off.
    pub ttl: Duration,
    /// Most entries of each kind; when full, expired entries go first, then all.
    pub capacity: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            capacity: 100_000,
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub invalidations: u64,
    /// Users whose last invalidation is remembered (bounded by the capacity).
    pub invalidation_marks: usize,
}

struct Entry<T> {
    value: T,
    /// Logical time at which the read that produced `value` started.
    read_started: u64,
    filled_at: Instant,
}

#[derive(Default)]
struct Entries {
    grants: HashMap<[u8; 32], Entry<RefreshGrant>>,
    /// The admission filter of `grants`: a fingerprint of each token hash read from the
    /// database once and not cached yet, one slot per fingerprint (a newer token in the same
    /// slot takes it over).
    seen_once: Vec<u64>,
    principals: HashMap<(String, String), Entry<PrincipalRecord>>,
    /// Per user, the logical time of the last invalidation and when it happened (entries
    /// older than the lifetime expire anyway, so older marks can be forgotten).
    invalidated: HashMap<String, (u64, Instant)>,
    /// Logical time of the last "everything changed".
    cleared: u64,
}

impl Entries {
    /// Whether a grant just read from the database should be cached: only on its token's
    /// second read. Most tokens of a large deployment are used once in a while (a pipeline
    /// exchanges its token once per job); cached on first use, they would push out the tokens
    /// in use, and fill the cache to its capacity, where it is emptied.
    fn admit_grant(&mut self, token_hash: &[u8; 32], capacity: usize) -> bool {
        if self.seen_once.is_empty() {
            self.seen_once = vec![0; capacity.max(1)];
        }
        let mut fingerprint = [0_u8; 8];
        fingerprint.copy_from_slice(&token_hash[..8]);
        // A token hash is SHA-256 of a random secret: its first bytes are uniform already.
        let fingerprint = u64::from_le_bytes(fingerprint);
        let slots = self.seen_once.len() as u64;
        let Some(slot) = usize::try_from(fingerprint % slots)
            .ok()
            .and_then(|slot| self.seen_once.get_mut(slot))
        else {
            return true;
        };
        if *slot == fingerprint {
            *slot = 0;
            true
        } else {
            *slot = fingerprint;
            false
        }
    }

    /// Everything read before logical time `at` is stale: forgets every entry and mark.
    fn clear(&mut self, at: u64) {
        self.cleared = at;
        self.grants.clear();
        self.principals.clear();
        self.invalidated.clear();
    }

    fn is_current<T>(&self, entry: &Entry<T>, user_id: &str, ttl: Duration) -> bool {
        entry.filled_at.elapsed() < ttl
            && entry.read_started >= self.cleared
            && self
                .invalidated
                .get(user_id)
                .is_none_or(|(at, _)| entry.read_started >= *at)
    }
}

/// A [`Store`] that answers [`Store::find_refresh_grant`] and [`Store::principal`] from
/// memory while they are known to be current, and passes everything else through.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    settings: CacheSettings,
    clock: AtomicU64,
    /// Whether the change feed is listening; entries are used only while it is.
    feed_live: AtomicBool,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn Store>, settings: CacheSettings) -> Self {
        Self {
            inner,
            settings,
            clock: AtomicU64::new(1),
            feed_live: AtomicBool::new(false),
            entries: Mutex::new(Entries::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            invalidation_marks: self.lock().invalidated.len(),
        }
    }

    /// Drops what `change` may have made stale; [`Change::listening`] also starts using the
    /// cache.
    pub fn apply(&self, change: &Change) {
        if INFORMATIONAL_ACTIONS.contains(&change.action.as_str()) {
            return;
        }
        match &change.user_id {
            Some(user_id) => self.invalidate_user(user_id),
            None => self.invalidate_all(),
        }
        if change.action == Change::LISTENING {
            self.feed_live.store(true, Ordering::SeqCst);
        }
    }

    /// The change feed broke: stop answering from memory until it listens again.
    pub fn feed_lost(&self) {
        self.feed_live.store(false, Ordering::SeqCst);
        self.invalidate_all();
    }

    fn in_use(&self) -> bool {
        self.feed_live.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters (each operation is one insert or remove), so a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn invalidate_user(&self, user_id: &str) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.lock();
        let at = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        let now = Instant::now();
        let ttl = self.settings.ttl;
        // A mark younger than the lifetime cannot be forgotten on its own: an entry filled
        // before it would count again. When too many are that young (a burst of revokes),
        // every mark is forgotten at once by making everything read before now stale, as
        // "everything changed" does; the burst costs the cache its contents, not a scan of
        // every mark on every revoke.
        if make_room(
            &mut entries.invalidated,
            self.settings.capacity,
            |(_, when)| now.duration_since(*when) < ttl,
        ) {
            entries.clear(at);
        }
        entries.invalidated.insert(user_id.to_owned(), (at, now));
    }

    fn invalidate_all(&self) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.lock();
        entries.clear(self.clock.fetch_add(1, Ordering::SeqCst) + 1);
    }

    /// The logical time a read starts at.
    fn read_start(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Inserts unless the read is already stale; makes room first when the map is full.
fn insert_bounded<K: std::hash::Hash + Eq, T>(
    map: &mut HashMap<K, Entry<T>>,
    key: K,
    entry: Entry<T>,
    settings: CacheSettings,
) {
    if make_room(map, settings.capacity, |e| {
        e.filled_at.elapsed() < settings.ttl
    }) {
        map.clear();
    }
    map.insert(key, entry);
}

/// When `map` is full, drops what `live` refuses; `true` when more than half of it is still
/// live, and the caller must empty it. Freeing less and going on would make the next insert
/// scan the whole map again, and a burst of inserts cost the map's size each.
fn make_room<K, V>(map: &mut HashMap<K, V>, capacity: usize, live: impl Fn(&V) -> bool) -> bool {
    if map.len() < capacity {
        return false;
    }
    map.retain(|_, value| live(value));
    map.len() > capacity / 2
}

#[async_trait]
impl Store for CachedStore {
    async fn find_refresh_grant(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<RefreshGrant>, StoreError> {
        if !self.in_use() {
            return self.inner.find_refresh_grant(token_hash).await;
        }
        {
            let entries = self.lock();
            if let Some(entry) = entries.grants.get(token_hash)
                && entries.is_current(entry, &entry.value.user_id, self.settings.ttl)
            {
                self.count(true);
                return Ok(Some(entry.value.clone()));
            }
        }
        self.count(false);
        let read_started = self.read_start();
        let found = self.inner.find_refresh_grant(token_hash).await?;
        if let Some(grant) = &found {
            let entry = Entry {
                value: grant.clone(),
                read_started,
                filled_at: Instant::now(),
            };
            let mut entries = self.lock();
            if entries.is_current(&entry, &grant.user_id, self.settings.ttl)
                && entries.admit_grant(token_hash, self.settings.capacity)
            {
                insert_bounded(&mut entries.grants, *token_hash, entry, self.settings);
            }
        }
        Ok(found)
    }

    async fn principal(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<Option<PrincipalRecord>, StoreError> {
        if !self.in_use() {
            return self.inner.principal(user_id, session_id).await;
        }
        let key = (user_id.to_owned(), session_id.to_owned());
        {
            let entries = self.lock();
            if let Some(entry) = entries.principals.get(&key)
                && entries.is_current(entry, user_id, self.settings.ttl)
            {
                self.count(true);
                return Ok(Some(entry.value.clone()));
            }
        }
        self.count(false);
        let read_started = self.read_start();
        let found = self.inner.principal(user_id, session_id).await?;
        if let Some(record) = &found {
            let entry = Entry {
                value: record.clone(),
                read_started,
                filled_at: Instant::now(),
            };
            let mut entries = self.lock();
            if entries.is_current(&entry, user_id, self.settings.ttl) {
                insert_bounded(&mut entries.principals, key, entry, self.settings);
            }
        }
        Ok(found)
    }

    // Writes that can change someone's standing: invalidate whatever the outcome, because an
    // error may still have come after the commit.

    async fn update_profile(
        &self,
        user_id: &str,
        changes: ProfileChanges,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let outcome = self.inner.update_profile(user_id, changes, audit).await;
        self.invalidate_user(user_id);
        outcome
    }

    async fn remove_user(
        &self,
        user_id: &str,
        at: i64,
        audit: AuditEvent,
    ) -> Result<Removal, StoreError> {
        let outcome = self.inner.remove_user(user_id, at, audit).await;
        self.invalidate_user(user_id);
        outcome
    }

    async fn set_password_hash(
        &self,
        user_id: &str,
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let outcome = self
            .inner
            .set_password_hash(user_id, password_hash, audit)
            .await;
        self.invalidate_user(user_id);
        outcome
    }

    async fn revoke_all_tokens(
        &self,
        user_id: &str,
        expected_epoch: i64,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let outcome = self
            .inner
            .revoke_all_tokens(user_id, expected_epoch, audit)
            .await;
        self.invalidate_user(user_id);
        outcome
    }

    async fn revoke_all_by_token(
        &self,
        token_hash: &[u8; 32],
        decide: RevokeDecision,
    ) -> Result<Option<RevokedAll>, StoreError> {
        let outcome = self.inner.revoke_all_by_token(token_hash, decide).await;
        match &outcome {
            Ok(Some(revoked)) => self.invalidate_user(&revoked.user_id),
            Ok(None) => {}
            // Whether the revoke committed is unknown; this token's entry is the one thing
            // known to be involved, and its user is read again with it.
            Err(_) => {
                let user_id = self
                    .lock()
                    .grants
                    .get(token_hash)
                    .map(|entry| entry.value.user_id.clone());
                if let Some(user_id) = user_id {
                    self.invalidate_user(&user_id);
                }
            }
        }
        outcome
    }

    async fn set_session_policy(
        &self,
        org_id: &str,
        expected: SessionPolicy,
        policy: SessionPolicy,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let outcome = self
            .inner
            .set_session_policy(org_id, expected, policy, audit)
            .await;
        // Every cached grant of the organization carries its old policy. Which grants those
        // are is not indexed, and policy changes are rare: drop everything.
        self.invalidate_all();
        outcome
    }

    async fn attempt_counter(&self, key: &str) -> Result<Option<AttemptCounter>, StoreError> {
        self.inner.attempt_counter(key).await
    }

    async fn record_attempt_failure(
        &self,
        key: &str,
        at: i64,
        policy: AttemptPolicy,
        trip: AuditEvent,
    ) -> Result<AttemptCounter, StoreError> {
        self.inner
            .record_attempt_failure(key, at, policy, trip)
            .await
    }

    async fn clear_attempts(&self, key: &str) -> Result<(), StoreError> {
        self.inner.clear_attempts(key).await
    }

    async fn revoke_session(
        &self,
        token_id: &str,
        user_id: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        let outcome = self.inner.revoke_session(token_id, user_id, audit).await;
        self.invalidate_user(user_id);
        outcome
    }

    async fn redeem_authorization_code(
        &self,
        code_hash: &[u8; 32],
        at: i64,
        replay: AuditEvent,
    ) -> Result<CodeRedemption, StoreError> {
        let outcome = self
            .inner
            .redeem_authorization_code(code_hash, at, replay)
            .await;
        // A replay revokes the session issued from the code; whose it is, only the database
        // knows, and replays are rare.
        if !matches!(
            outcome,
            Ok(CodeRedemption::Redeemed(_) | CodeRedemption::Unknown)
        ) {
            self.invalidate_all();
        }
        outcome
    }

    // Everything else passes through: it is not cached, or cannot make a cached entry wrong
    // (a new user or token has no entry yet; only positive answers are cached).

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn bootstrap(
        &self,
        org: NewOrganization,
        owner: NewUser,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        self.inner.bootstrap(org, owner, audit).await
    }

    async fn session_policy(&self, org_id: &str) -> Result<Option<SessionPolicy>, StoreError> {
        self.inner.session_policy(org_id).await
    }

    async fn default_organization(&self) -> Result<Option<Organization>, StoreError> {
        self.inner.default_organization().await
    }

    async fn list_organizations(&self) -> Result<Vec<Organization>, StoreError> {
        self.inner.list_organizations().await
    }

    async fn organization_by_tenant(
        &self,
        tenant_id: &str,
    ) -> Result<Option<Organization>, StoreError> {
        self.inner.organization_by_tenant(tenant_id).await
    }

    async fn create_organization(
        &self,
        org: NewOrganization,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        self.inner.create_organization(org, audit).await
    }

    async fn create_user(&self, user: NewUser, audit: AuditEvent) -> Result<User, StoreError> {
        self.inner.create_user(user, audit).await
    }

    async fn find_active_user_by_email(
        &self,
        org_id: &str,
        email: &str,
    ) -> Result<Option<User>, StoreError> {
        self.inner.find_active_user_by_email(org_id, email).await
    }

    async fn users_page(
        &self,
        org_id: &str,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<User>, StoreError> {
        self.inner.users_page(org_id, after, limit).await
    }

    async fn member(&self, org_id: &str, user_id: &str) -> Result<Option<User>, StoreError> {
        self.inner.member(org_id, user_id).await
    }

    async fn has_password(&self, user_id: &str) -> Result<bool, StoreError> {
        self.inner.has_password(user_id).await
    }

    async fn insert_invitation(
        &self,
        token_hash: &[u8; 32],
        user_id: &str,
        expires_at: i64,
        audit: AuditEvent,
    ) -> Result<(), StoreError> {
        self.inner
            .insert_invitation(token_hash, user_id, expires_at, audit)
            .await
    }

    async fn invitation_user(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<User>, StoreError> {
        self.inner.invitation_user(token_hash, now).await
    }

    async fn accept_invitation(
        &self,
        token_hash: &[u8; 32],
        password_hash: &str,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        self.inner
            .accept_invitation(token_hash, password_hash, audit)
            .await
    }

    async fn list_users(
        &self,
        org_id: &str,
        include_removed: bool,
    ) -> Result<Vec<User>, StoreError> {
        self.inner.list_users(org_id, include_removed).await
    }

    async fn insert_refresh_token(
        &self,
        token: NewRefreshToken,
        audit: AuditEvent,
    ) -> Result<bool, StoreError> {
        self.inner.insert_refresh_token(token, audit).await
    }

    async fn credentials_by_email(&self, email: &str) -> Result<Vec<Credentials>, StoreError> {
        self.inner.credentials_by_email(email).await
    }

    async fn active_user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        self.inner.active_user(user_id).await
    }

    async fn organizations_of_email(&self, email: &str) -> Result<Vec<Organization>, StoreError> {
        self.inner.organizations_of_email(email).await
    }

    async fn insert_authorization_code(
        &self,
        code: NewAuthorizationCode,
    ) -> Result<(), StoreError> {
        self.inner.insert_authorization_code(code).await
    }

    async fn insert_device_code(&self, code: NewDeviceCode) -> Result<(), StoreError> {
        self.inner.insert_device_code(code).await
    }

    async fn poll_device_code(
        &self,
        device_code_hash: &[u8; 32],
        at: i64,
    ) -> Result<Option<DeviceCode>, StoreError> {
        self.inner.poll_device_code(device_code_hash, at).await
    }

    async fn decide_device_code(
        &self,
        user_code_hash: &[u8; 32],
        approve_for: Option<&str>,
        at: i64,
    ) -> Result<bool, StoreError> {
        self.inner
            .decide_device_code(user_code_hash, approve_for, at)
            .await
    }

    async fn redeem_device_code(&self, device_code_hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.inner.redeem_device_code(device_code_hash).await
    }

    async fn slow_down_device_code(
        &self,
        device_code_hash: &[u8; 32],
        interval_secs: i64,
    ) -> Result<(), StoreError> {
        self.inner
            .slow_down_device_code(device_code_hash, interval_secs)
            .await
    }

    async fn list_sessions(
        &self,
        user_id: &str,
        limit: i64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.list_sessions(user_id, limit).await
    }

    async fn live_session(&self, token_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.live_session(token_id).await
    }

    async fn insert_browser_session(
        &self,
        id_hash: &[u8; 32],
        user_id: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.inner
            .insert_browser_session(id_hash, user_id, created_at, expires_at)
            .await
    }

    async fn browser_session_user(
        &self,
        id_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<User>, StoreError> {
        self.inner.browser_session_user(id_hash, now).await
    }

    async fn delete_browser_session(&self, id_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.inner.delete_browser_session(id_hash).await
    }

    async fn record_token_uses(&self, uses: &[TokenUse]) -> Result<(), StoreError> {
        self.inner.record_token_uses(uses).await
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.inner.signing_keys().await
    }

    async fn insert_signing_key_if_none_active(
        &self,
        key: SigningKeyRecord,
    ) -> Result<(), StoreError> {
        self.inner.insert_signing_key_if_none_active(key).await
    }

    async fn rotate_signing_key(
        &self,
        key: SigningKeyRecord,
        audit: AuditEvent,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.rotate_signing_key(key, audit).await
    }

    async fn rotate_signing_key_if_stale(
        &self,
        key: SigningKeyRecord,
        audit: AuditEvent,
        active_created_before: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        // Signing keys are not cached; LiveKeys reloads on the change feed's keys.* events.
        self.inner
            .rotate_signing_key_if_stale(key, audit, active_created_before)
            .await
    }

    async fn replace_private_keys(
        &self,
        replacements: &[PrivateKeyReplacement],
        audit: AuditEvent,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.replace_private_keys(replacements, audit).await
    }

    async fn delete_garbage(
        &self,
        kind: Garbage,
        before: i64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        self.inner.delete_garbage(kind, before, limit).await
    }

    async fn try_cleanup_lock(&self) -> Result<Option<CleanupLock>, StoreError> {
        self.inner.try_cleanup_lock().await
    }

    async fn recent_audit_events(&self, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        self.inner.recent_audit_events(limit).await
    }

    async fn audit_events_page(
        &self,
        query: &AuditQuery,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.inner.audit_events_page(query, limit).await
    }

    /// Nothing to invalidate: these events change no one's standing.
    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.inner.record_audit(event).await
    }

    async fn follow_changes(
        &self,
        on_change: &(dyn Fn(Change) + Send + Sync),
    ) -> Result<(), StoreError> {
        self.inner.follow_changes(on_change).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    fn connection_stats(&self) -> super::ConnectionStats {
        self.inner.connection_stats()
    }
}
