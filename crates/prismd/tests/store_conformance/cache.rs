//! Store conformance: the standing cache: what it answers from memory and every write that must drop it.

use super::*;

/// The hot-path cache answers repeated reads from memory, and forgets an entry when this
/// process changes its user or when a change from elsewhere is applied.
pub(super) async fn cache_forgets_what_changes_invalidate(db: Db) -> TestResult {
    let (_, owner) = org_with_owner(db.store.as_ref()).await?;
    let cached = feedless_cache(&db, 1000).await?;
    // Bypassed until its change feed listens ...
    cached
        .insert_refresh_token(refresh_token(&owner, 3, None), audit("t", T0))
        .await?;
    cached.find_refresh_grant(&hash(3)).await?;
    cached.find_refresh_grant(&hash(3)).await?;
    // (A write still drops what its audit row names, as the feed would: counted, but
    // nothing was answered from memory or kept there.)
    let bypassed = cached.stats();
    assert_eq!((bypassed.hits, bypassed.misses), (0, 0));
    // ... which this test stands in for.
    cached.apply(&Change::listening());
    let token = refresh_token(&owner, 1, None);
    let session = token.id.clone();
    cached.insert_refresh_token(token, audit("t", T0)).await?;
    // Unknown hashes are never cached: a token minted elsewhere works at once.
    assert!(cached.find_refresh_grant(&hash(9)).await?.is_none());
    let grant = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.user_epoch, 0);
    // A grant is cached on its token's second read, not its first.
    cached.find_refresh_grant(&hash(1)).await?;
    assert_eq!((cached.stats().hits, cached.stats().misses), (0, 3));
    cached.find_refresh_grant(&hash(1)).await?;
    cached.principal(&owner.id, &session).await?;
    cached.principal(&owner.id, &session).await?;
    assert_eq!((cached.stats().hits, cached.stats().misses), (2, 4));

    // This process revokes: gone at once.
    assert!(
        cached
            .revoke_all_tokens(&owner.id, 0, audit("tokens.revoked_all", T0 + 1))
            .await?
    );
    let grant = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.user_epoch, 1);

    // Another process revokes: the cache holds the old state until the change is applied
    // (the positive control that the cache is in the way at all) ...
    cached.principal(&owner.id, &session).await?;
    let other = db.another().await?;
    assert!(
        other
            .revoke_session(&session, &owner.id, audit("token.revoked", T0 + 2))
            .await?
    );
    let stale = cached.principal(&owner.id, &session).await?.ok_or("none")?;
    assert_eq!(stale.session_revoked_at, Some(None));
    // ... and forgets it when it is.
    cached.apply(&Change {
        action: "token.revoked".into(),
        user_id: Some(owner.id.clone()),
    });
    let fresh = cached.principal(&owner.id, &session).await?.ok_or("none")?;
    assert_eq!(fresh.session_revoked_at, Some(Some(T0 + 2)));

    // "Everything changed" drops every entry.
    other
        .update_profile(
            &owner.id,
            ProfileChanges {
                name: Some("Renamed".into()),
                ..ProfileChanges::default()
            },
            None,
            audit("user.updated", T0 + 3),
        )
        .await?
        .map_err(|refused| format!("{refused:?}"))?;
    assert_ne!(
        cached
            .principal(&owner.id, &session)
            .await?
            .ok_or("none")?
            .user
            .name,
        "Renamed"
    );
    // Sign-in events and limit trips change nobody's standing: they drop nothing, not
    // even when they concern no user (which would otherwise mean "everything").
    let invalidations = cached.stats().invalidations;
    for action in ["login.failed", "login.succeeded", "limit.tripped"] {
        cached.apply(&Change {
            action: action.into(),
            user_id: None,
        });
        cached.apply(&Change {
            action: action.into(),
            user_id: Some(owner.id.clone()),
        });
    }
    assert_eq!(cached.stats().invalidations, invalidations);
    assert_ne!(
        cached
            .principal(&owner.id, &session)
            .await?
            .ok_or("none")?
            .user
            .name,
        "Renamed"
    );
    cached.apply(&Change::everything());
    assert_eq!(
        cached
            .principal(&owner.id, &session)
            .await?
            .ok_or("none")?
            .user
            .name,
        "Renamed"
    );

    // A broken feed means the cache cannot hear of revokes: it is bypassed until the feed
    // listens again.
    let hits = cached.stats().hits;
    cached.feed_lost();
    cached.principal(&owner.id, &session).await?;
    cached.principal(&owner.id, &session).await?;
    assert_eq!(cached.stats().hits, hits);
    other.close().await;
    Ok(())
}

/// A burst of invalidations younger than the lifetime (a wave of revokes) keeps the cache's
/// memory of them within its capacity, and forgetting them never brings back an entry an
/// invalidation had made stale.
pub(super) async fn cache_invalidation_marks_stay_bounded(db: Db) -> TestResult {
    const CAPACITY: usize = 8;
    let (_, owner) = org_with_owner(db.store.as_ref()).await?;
    let cached = live_cache(&db, CAPACITY).await?;
    cached
        .insert_refresh_token(refresh_token(&owner, 1, None), audit("t", T0))
        .await?;
    for _ in 0..3 {
        cached.find_refresh_grant(&hash(1)).await?;
    }
    assert_eq!(cached.stats().hits, 1, "the grant is cached");

    // Another process revokes the owner; the cache holds the old state until it hears.
    let other = db.another().await?;
    assert!(
        other
            .revoke_all_tokens(&owner.id, 0, audit("tokens.revoked_all", T0 + 1))
            .await?
    );
    let stale = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        stale.user_epoch, 0,
        "the cache is in the way (positive control)"
    );
    let revoked = |user_id: &str| Change {
        action: "tokens.revoked_all".into(),
        user_id: Some(user_id.to_owned()),
    };
    cached.apply(&revoked(&owner.id));
    // A wave of other users' revokes, all within the lifetime, several times the capacity.
    for n in 0..(CAPACITY * 5) {
        cached.apply(&revoked(&format!("someone-{n}")));
        assert!(
            cached.stats().invalidation_marks <= CAPACITY,
            "{} marks kept with a capacity of {CAPACITY}",
            cached.stats().invalidation_marks
        );
    }
    let grant = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        grant.user_epoch, 1,
        "a forgotten mark brought back a stale entry"
    );
    other.close().await;
    Ok(())
}

/// A cache in front of `db`'s store with a lifetime far beyond any test, bypassed until told
/// that its change feed listens. No change feed runs behind it in these tests (nothing calls
/// [`Store::follow_changes`] for it): an entry is dropped only by a write made through it or
/// by what the test itself hands to `StandingCache::apply`, never by a poll or a notification
/// racing the test. So a stale read here is the cache's own fault, on either backend, every
/// time.
pub(super) async fn feedless_cache(db: &Db, capacity: usize) -> Result<Cached, StoreError> {
    let options = OpenOptions {
        cache: CacheSettings {
            ttl: std::time::Duration::from_secs(600),
            capacity,
        },
        ..OpenOptions::default()
    };
    Ok(Cached(store::open(&db.backend, options).await?))
}

/// A [`feedless_cache`] in use, as once its change feed listens.
pub(super) async fn live_cache(db: &Db, capacity: usize) -> Result<Cached, StoreError> {
    let cached = feedless_cache(db, capacity).await?;
    cached.apply(&Change::listening());
    Ok(cached)
}

/// A store whose standing cache is on (a second store on the test's database, so writes
/// through `db.store` go past its cache), with its cache's handles at hand.
pub(super) struct Cached(Arc<dyn Store>);

impl std::ops::Deref for Cached {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        self.0.as_ref()
    }
}

impl Cached {
    pub(super) fn stats(&self) -> CacheStats {
        self.0
            .cache()
            .map(|cache| cache.stats())
            .unwrap_or_default()
    }

    pub(super) fn apply(&self, change: &Change) {
        if let Some(cache) = self.0.cache() {
            cache.apply(change);
        }
    }

    pub(super) fn feed_lost(&self) {
        if let Some(cache) = self.0.cache() {
            cache.feed_lost();
        }
    }
}

/// The seed of the token hash of the session [`warm_cache`] caches.
pub(super) const WARM_TOKEN: u8 = 1;

/// A member's session whose grant and principal a [`live_cache`] answers from memory.
pub(super) struct WarmCache {
    cached: Cached,
    member: User,
    session: String,
}

/// Sets up a [`WarmCache`]. The user and the token are written past the cache, so only the
/// reads go through it.
pub(super) async fn warm_cache(db: &Db) -> Result<WarmCache, Box<dyn std::error::Error>> {
    let (org, _) = org_with_owner(db.store.as_ref()).await?;
    // A member rather than the Owner: the last Owner cannot be removed.
    let member = add_user(db.store.as_ref(), &org, "m@example.com", "member", T0).await?;
    warm_cache_of(db, member).await
}

/// A [`WarmCache`] of `member`'s session (its token minted here, past the cache).
pub(super) async fn warm_cache_of(
    db: &Db,
    member: User,
) -> Result<WarmCache, Box<dyn std::error::Error>> {
    let token = refresh_token(&member, WARM_TOKEN, None);
    let session = token.id.clone();
    assert!(db.store.insert_refresh_token(token, audit("t", T0)).await?);
    let cached = live_cache(db, 1000).await?;
    // A grant is cached on its token's second read, a principal on its first.
    cached.find_refresh_grant(&hash(WARM_TOKEN)).await?;
    cached.find_refresh_grant(&hash(WARM_TOKEN)).await?;
    cached.principal(&member.id, &session).await?;
    let warm = WarmCache {
        cached,
        member,
        session,
    };
    let (_, _, hits) = warm.read().await?;
    assert_eq!(hits, 2, "both come from memory (the cache is in the way)");
    Ok(warm)
}

impl WarmCache {
    /// The grant and the principal, read through the cache, and how many of the two it
    /// answered from memory.
    pub(super) async fn read(
        &self,
    ) -> Result<(RefreshGrant, PrincipalRecord, u64), Box<dyn std::error::Error>> {
        let hits = self.cached.stats().hits;
        let grant = self
            .cached
            .find_refresh_grant(&hash(WARM_TOKEN))
            .await?
            .ok_or("no grant")?;
        let principal = self
            .cached
            .principal(&self.member.id, &self.session)
            .await?
            .ok_or("no principal")?;
        Ok((grant, principal, self.cached.stats().hits - hits))
    }

    /// Both reads again, straight after a write through the cache that changed the member:
    /// neither may come from memory (no feed could have told the cache; see
    /// [`feedless_cache`]).
    pub(super) async fn read_after_write(
        &self,
    ) -> Result<(RefreshGrant, PrincipalRecord), Box<dyn std::error::Error>> {
        let (grant, principal, hits) = self.read().await?;
        assert_eq!(hits, 0, "a stale entry answered after the write");
        Ok((grant, principal))
    }

    pub(super) fn audit(&self, action: &'static str) -> AuditEvent {
        audit_about(action, T0 + 1, &self.member)
    }
}

// Each write through the cache that can change a user's standing drops that user's entries
// before it returns, so the next read on this replica sees it without waiting for the change
// feed. One contract per write: each fails when its own invalidation is missing.

pub(super) async fn cache_forgets_at_once_revoke_all_by_token(db: Db) -> TestResult {
    let warm = warm_cache(&db).await?;
    let event = warm.audit("tokens.revoked_all");
    let decide: RevokeDecision = Arc::new(move |_| Some(event.clone()));
    let revoked = warm
        .cached
        .revoke_all_by_token(&hash(WARM_TOKEN), decide)
        .await?;
    assert_eq!(
        revoked,
        Some(RevokedAll {
            user_id: warm.member.id.clone(),
            moved: true,
            siblings: Vec::new(),
        })
    );
    let (grant, principal) = warm.read_after_write().await?;
    assert_eq!((grant.user_epoch, principal.user.token_epoch), (1, 1));
    Ok(())
}

pub(super) async fn cache_forgets_at_once_remove_user(db: Db) -> TestResult {
    let warm = warm_cache(&db).await?;
    let removal = warm
        .cached
        .remove_user(&warm.member.id, T0 + 1, None, warm.audit("user.removed"))
        .await?;
    assert_eq!(removal, Ok(()));
    let (grant, principal) = warm.read_after_write().await?;
    assert_eq!(grant.user_removed_at, Some(T0 + 1));
    assert_eq!(principal.user.removed_at, Some(T0 + 1));
    Ok(())
}

pub(super) async fn cache_forgets_at_once_set_identity_password(db: Db) -> TestResult {
    let warm = warm_cache(&db).await?;
    let identity = identity_of(&warm.member)?;
    let changed = warm.audit("user.password_changed");
    assert!(
        warm.cached
            .set_identity_password(&identity, "h", changed)
            .await?
    );
    // A password change touches the identity, not the member's row: neither the grant nor
    // the principal shows a difference, but neither may come from memory either.
    warm.read_after_write().await?;
    Ok(())
}

pub(super) async fn cache_forgets_at_once_revoke_session(db: Db) -> TestResult {
    let warm = warm_cache(&db).await?;
    let (session, id) = (&warm.session, &warm.member.id);
    let revoked = warm.audit("token.revoked");
    assert!(warm.cached.revoke_session(session, id, revoked).await?);
    let (grant, principal) = warm.read_after_write().await?;
    assert_eq!(grant.token_revoked_at, Some(T0 + 1));
    assert_eq!(principal.session_revoked_at, Some(Some(T0 + 1)));
    Ok(())
}

pub(super) async fn cache_forgets_at_once_update_profile(db: Db) -> TestResult {
    let warm = warm_cache(&db).await?;
    let changes = ProfileChanges {
        role: Some("admin".into()),
        ..ProfileChanges::default()
    };
    let updated = warm.audit("user.updated");
    assert_eq!(
        warm.cached
            .update_profile(&warm.member.id, changes, None, updated)
            .await?,
        Ok(())
    );
    let (_, principal) = warm.read_after_write().await?;
    assert_eq!(principal.user.role, "admin");
    Ok(())
}

/// A person's revoke-all by a token of one member moves the epochs of the identity's other
/// members: their cached grants and principals must not be served after it either.
pub(super) async fn cache_forgets_siblings_at_once_revoke_all_by_token(db: Db) -> TestResult {
    let p = person_in_several_orgs(db.store.as_ref()).await?;
    // The sibling's session is the warm one; the revoke comes through the other member's.
    let warm = warm_cache_of(&db, p.in_b.clone()).await?;
    assert!(
        db.store
            .insert_refresh_token(refresh_token(&p.in_a, 2, None), audit("t", T0))
            .await?
    );
    let event = audit_about("tokens.revoked_all", T0 + 1, &p.in_a);
    let decide: RevokeDecision = Arc::new(move |_| Some(event.clone()));
    let revoked = warm
        .cached
        .revoke_all_by_token(&hash(2), decide)
        .await?
        .ok_or("nothing revoked")?;
    assert_eq!(revoked.user_id, p.in_a.id);
    assert!(revoked.siblings.contains(&p.in_b.id));
    let (grant, principal) = warm.read_after_write().await?;
    assert_eq!((grant.token_epoch, grant.user_epoch), (0, 1));
    assert_eq!(principal.user.token_epoch, 1);
    Ok(())
}

pub(super) async fn cache_forgets_at_once_move_refresh_token(db: Db) -> TestResult {
    let p = person_in_several_orgs(db.store.as_ref()).await?;
    let warm = warm_cache_of(&db, p.in_a.clone()).await?;
    let b = &p.orgs[1];
    let event = AuditEvent {
        org_id: Some(p.in_a.org_id.clone()),
        ..warm.audit("session.moved")
    };
    assert_eq!(
        warm.cached
            .move_refresh_token(&warm.session, &p.in_a.id, &b.tenant_id, event)
            .await?,
        Some(p.in_b.id.clone())
    );
    let (hits, grant) = (
        warm.cached.stats().hits,
        warm.cached
            .find_refresh_grant(&hash(WARM_TOKEN))
            .await?
            .ok_or("no grant")?,
    );
    assert_eq!(warm.cached.stats().hits, hits, "a stale grant answered");
    assert_eq!(
        (grant.user_id.as_str(), grant.org_id.as_str()),
        (p.in_b.id.as_str(), b.id.as_str())
    );
    // The old member's principal no longer has the session.
    let principal = warm
        .cached
        .principal(&p.in_a.id, &warm.session)
        .await?
        .ok_or("no principal")?;
    assert_eq!(warm.cached.stats().hits, hits, "a stale principal answered");
    assert_eq!(principal.session_revoked_at, None);
    Ok(())
}
