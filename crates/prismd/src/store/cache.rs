//! The standing cache: the hot-path reads (a refresh grant by token hash, the principal
//! behind an access token, the resource server asking `/oauth/introspect`) answered from
//! memory, and the rules that keep it from outliving a revoke.
//!
//! A cached entry is dropped when:
//! - this process commits a change: the store hands the audit rows of every commit (the same
//!   rows other processes hear of) to [`StandingCache::apply`] before the write returns, so a
//!   revoke answered 200 holds on this replica at once. A change about no one user (an
//!   organization's session policy, which grants carry) drops everything;
//! - another process's change is heard through the change feed (PostgreSQL `LISTEN/NOTIFY`,
//!   or SQLite's audit-log poll), which the store also hands to [`StandingCache::apply`];
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
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{
    Change, INFORMATIONAL_ACTIONS, PrincipalRecord, RefreshGrant, ResourceServerRecord, StoreError,
};

/// The user id a resource server's entry is checked against: none is ever invalidated by it,
/// so only "everything changed" drops them, which every change to a resource server is (its
/// audit row names no user).
const NO_USER: &str = "";

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
    /// Resource servers by client id.
    resource_servers: HashMap<String, Entry<ResourceServerRecord>>,
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
        self.resource_servers.clear();
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

/// Answers the grant and principal reads from memory while they are known to be current.
pub struct StandingCache {
    settings: CacheSettings,
    clock: AtomicU64,
    /// Whether the change feed is listening; entries are used only while it is.
    feed_live: AtomicBool,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
}

impl StandingCache {
    pub fn new(settings: CacheSettings) -> Self {
        Self {
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

    /// A refresh grant from memory if current, else from `read` (cached on its token's second
    /// read).
    pub(crate) async fn refresh_grant(
        &self,
        token_hash: &[u8; 32],
        read: impl Future<Output = Result<Option<RefreshGrant>, StoreError>>,
    ) -> Result<Option<RefreshGrant>, StoreError> {
        if !self.in_use() {
            return read.await;
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
        let found = read.await?;
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

    /// A principal from memory if current, else from `read`.
    pub(crate) async fn principal(
        &self,
        user_id: &str,
        session_id: &str,
        read: impl Future<Output = Result<Option<PrincipalRecord>, StoreError>>,
    ) -> Result<Option<PrincipalRecord>, StoreError> {
        if !self.in_use() {
            return read.await;
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
        let found = read.await?;
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

    /// A resource server from memory if current, else from `read`. Only known ones are
    /// cached: a server registered a moment ago on another replica works everywhere at once.
    pub(crate) async fn resource_server(
        &self,
        id: &str,
        read: impl Future<Output = Result<Option<ResourceServerRecord>, StoreError>>,
    ) -> Result<Option<ResourceServerRecord>, StoreError> {
        if !self.in_use() {
            return read.await;
        }
        {
            let entries = self.lock();
            if let Some(entry) = entries.resource_servers.get(id)
                && entries.is_current(entry, NO_USER, self.settings.ttl)
            {
                self.count(true);
                return Ok(Some(entry.value.clone()));
            }
        }
        self.count(false);
        let read_started = self.read_start();
        let found = read.await?;
        if let Some(server) = &found {
            let entry = Entry {
                value: server.clone(),
                read_started,
                filled_at: Instant::now(),
            };
            let mut entries = self.lock();
            if entries.is_current(&entry, NO_USER, self.settings.ttl) {
                insert_bounded(
                    &mut entries.resource_servers,
                    id.to_owned(),
                    entry,
                    self.settings,
                );
            }
        }
        Ok(found)
    }

    /// A revoke-all named by this token failed, and whether it committed is unknown: this
    /// token's entry is the one thing known to be involved, so its user is read again.
    pub(crate) fn revoke_outcome_unknown(&self, token_hash: &[u8; 32]) {
        let user_id = self
            .lock()
            .grants
            .get(token_hash)
            .map(|entry| entry.value.user_id.clone());
        if let Some(user_id) = user_id {
            self.invalidate_user(&user_id);
        }
    }

    /// A revoke-all of `user_id` may have committed (whatever its outcome said).
    pub(crate) fn revoked(&self, user_id: &str) {
        self.invalidate_user(user_id);
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
