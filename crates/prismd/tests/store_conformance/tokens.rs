//! Store conformance: refresh tokens, revocation (one, all, by token, racing), removal, sessions and token uses.

use super::*;

pub(super) async fn refresh_token_insert_and_find(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let token = refresh_token(&owner, 1, None);
    assert!(
        store
            .insert_refresh_token(token.clone(), audit("token", T0))
            .await?
    );
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.token_id, token.id);
    assert_eq!(grant.token_epoch, 0);
    assert_eq!(grant.user_epoch, 0);
    assert_eq!(grant.token_revoked_at, None);
    assert_eq!(grant.user_id, owner.id);
    assert_eq!(grant.org_id, org.id);
    assert_eq!(grant.tenant_id, org.tenant_id);
    assert_eq!(grant.client_id, "client");
    assert_eq!(grant.scope, "openid");
    assert!(store.find_refresh_grant(&hash(2)).await?.is_none());

    let principal = store
        .principal(&owner.id, &token.id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.user, owner);
    assert_eq!(principal.org, org);
    assert_eq!(principal.session_revoked_at, Some(None));
    let other_session = store
        .principal(&owner.id, "unknown")
        .await?
        .ok_or("no principal")?;
    assert_eq!(other_session.session_revoked_at, None);
    assert!(store.principal("nobody", &token.id).await?.is_none());

    // One session revoked on its own.
    assert!(
        !store
            .revoke_session(&token.id, "someone-else", audit("rv", T0))
            .await?
    );
    assert!(
        store
            .revoke_session(&token.id, &owner.id, audit("rv", T0 + 20))
            .await?
    );
    assert!(
        !store
            .revoke_session(&token.id, &owner.id, audit("rv", T0 + 21))
            .await?
    );
    let principal = store
        .principal(&owner.id, &token.id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.session_revoked_at, Some(Some(T0 + 20)));
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.token_revoked_at, Some(T0 + 20));

    // No tokens for removed or unknown users.
    let guest = add_user(store, &org, "g@example.com", "guest", T0 + 1).await?;
    assert_eq!(
        store
            .remove_user(&guest.id, T0 + 2, None, audit("rm", T0 + 2))
            .await?,
        Ok(())
    );
    assert!(
        !store
            .insert_refresh_token(refresh_token(&guest, 3, None), audit("token", T0))
            .await?
    );
    assert!(
        !store
            .insert_refresh_token(
                NewRefreshToken {
                    user_id: "nobody".into(),
                    ..refresh_token(&guest, 4, None)
                },
                audit("token", T0)
            )
            .await?
    );
    // Nor for a member still waiting for its identity to accept.
    let other = another_org(store, "Other", T0).await?;
    let pending = added(
        try_add(
            store,
            joining(
                &other.id,
                "owner@example.com",
                "guest",
                T0 + 3,
                JoinExisting::Pending,
            ),
            None,
        )
        .await?,
    )?
    .user;
    assert_eq!(pending.joined_at, None);
    let before = db.count("SELECT COUNT(*) FROM audit_events").await?;
    assert!(
        !store
            .insert_refresh_token(refresh_token(&pending, 5, None), audit("token", T0 + 4))
            .await?
    );
    assert!(store.find_refresh_grant(&hash(5)).await?.is_none());
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await?,
        before,
        "a refused token was audited"
    );
    Ok(())
}

pub(super) async fn revoke_all_one_write(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (_, owner) = org_with_owner(store).await?;
    store
        .insert_refresh_token(refresh_token(&owner, 1, None), audit("t", T0))
        .await?;
    store
        .insert_browser_session(&hash(50), &identity_of(&owner)?, T0, T0 + 1_000_000)
        .await?;
    assert!(
        store
            .revoke_all_tokens(&owner.id, 0, audit("revoke-all", T0 + 5))
            .await?
    );
    // A stale epoch: someone else revoked first.
    assert!(
        !store
            .revoke_all_tokens(&owner.id, 0, audit("revoke-all", T0 + 6))
            .await?
    );
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        (grant.token_epoch, grant.user_epoch),
        (0, 1),
        "the old token is stale"
    );
    assert_eq!(
        grant.token_revoked_at, None,
        "one write: the token row is untouched"
    );
    assert!(
        store.browser_session(&hash(50), T0).await?.is_none(),
        "browser signed out"
    );
    // A token minted afterwards lives under the new epoch.
    store
        .insert_refresh_token(refresh_token(&owner, 2, None), audit("t", T0 + 7))
        .await?;
    let grant = store
        .find_refresh_grant(&hash(2))
        .await?
        .ok_or("no grant")?;
    assert_eq!((grant.token_epoch, grant.user_epoch), (1, 1));
    assert!(
        store
            .revoke_all_tokens(&owner.id, 1, audit("revoke-all", T0 + 8))
            .await?
    );
    assert!(
        !store
            .revoke_all_tokens("nobody", 0, audit("revoke-all", T0))
            .await?
    );
    Ok(())
}

/// Many concurrent reads of one grant and its principal, each checked against the expected
/// epoch and session revocation. Enough of them, at once, that every reader connection (and
/// SQLite's direct readers, and the pool behind them when those are busy) serves some.
pub(super) async fn read_everywhere(
    store: &Arc<dyn Store>,
    user_id: &str,
    session_id: &str,
    epoch: i64,
    revoked_at: Option<i64>,
) -> TestResult {
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (store, user_id, session_id) =
            (store.clone(), user_id.to_owned(), session_id.to_owned());
        reads.spawn(async move {
            let grant = store
                .find_refresh_grant(&hash(1))
                .await?
                .ok_or("no grant")?;
            let principal = store
                .principal(&user_id, &session_id)
                .await?
                .ok_or("no principal")?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
                grant.user_epoch,
                grant.token_revoked_at,
                principal.user.token_epoch,
                principal.session_revoked_at,
            ))
        });
    }
    while let Some(read) = reads.join_next().await {
        let read = read?.map_err(|err| err.to_string())?;
        assert_eq!(read, (epoch, revoked_at, epoch, Some(revoked_at)));
    }
    Ok(())
}

/// The revocation guarantee at the store: once a revoke has returned, the next read of the
/// grant or the principal sees it, whichever connection answers, though every one of them
/// has read the same rows just before (none may answer from an older snapshot).
pub(super) async fn revokes_seen_by_every_next_read(db: Db) -> TestResult {
    let store = db.store.clone();
    let (_, owner) = org_with_owner(store.as_ref()).await?;
    let token = refresh_token(&owner, 1, None);
    assert!(
        store
            .insert_refresh_token(token.clone(), audit("t", T0))
            .await?
    );
    read_everywhere(&store, &owner.id, &token.id, 0, None).await?;
    assert!(
        store
            .revoke_all_tokens(&owner.id, 0, audit("revoke-all", T0 + 1))
            .await?
    );
    read_everywhere(&store, &owner.id, &token.id, 1, None).await?;
    assert!(
        store
            .revoke_session(&token.id, &owner.id, audit("rv", T0 + 2))
            .await?
    );
    read_everywhere(&store, &owner.id, &token.id, 1, Some(T0 + 2)).await?;
    Ok(())
}

pub(super) async fn revoke_all_races(db: Db) -> TestResult {
    let (_, owner) = org_with_owner(db.store.as_ref()).await?;
    let other = db.another().await?;
    let (a, b) = tokio::join!(
        db.store
            .revoke_all_tokens(&owner.id, 0, audit("revoke-all", T0 + 1)),
        other.revoke_all_tokens(&owner.id, 0, audit("revoke-all", T0 + 1)),
    );
    other.close().await;
    assert_eq!(
        u8::from(a?) + u8::from(b?),
        1,
        "exactly one revoke moves the epoch"
    );
    let user = db.store.active_user(&owner.id).await?.ok_or("gone")?;
    assert_eq!(user.token_epoch, 1);
    Ok(())
}

/// Many revoke-alls at once (SQLite commits them in groups): each user's epoch moves exactly
/// once, the second revoke of each user with the same expected epoch changes nothing, and
/// every successful revoke has its audit row and nothing else does.
pub(super) async fn revoke_all_many_at_once(db: Db) -> TestResult {
    let (org, _) = org_with_owner(db.store.as_ref()).await?;
    let mut users = Vec::new();
    for n in 0..20_u8 {
        let email = format!("u{n}@example.com");
        let user = add_user(db.store.as_ref(), &org, &email, "member", T0).await?;
        db.store
            .insert_browser_session(&hash(100 + n), &identity_of(&user)?, T0, T0 + 1_000_000)
            .await?;
        users.push(user);
    }
    let bystander = add_user(db.store.as_ref(), &org, "by@example.com", "member", T0).await?;
    db.store
        .insert_browser_session(&hash(99), &identity_of(&bystander)?, T0, T0 + 1_000_000)
        .await?;
    let before = recent_events(db.store.as_ref(), 1000).await?.len();
    let mut revokes = tokio::task::JoinSet::new();
    for user in users.iter().chain(users.iter()) {
        let (store, user_id) = (db.store.clone(), user.id.clone());
        revokes.spawn(async move {
            let event = AuditEvent {
                subject_user_id: Some(user_id.clone()),
                ..audit("tokens.revoked_all", T0 + 1)
            };
            store.revoke_all_tokens(&user_id, 0, event).await
        });
    }
    let mut moved = 0;
    while let Some(outcome) = revokes.join_next().await {
        moved += usize::from(outcome??);
    }
    assert_eq!(moved, users.len(), "one revoke per user moves its epoch");
    for (n, user) in (100_u8..).zip(&users) {
        let now = db.store.active_user(&user.id).await?.ok_or("gone")?;
        assert_eq!(now.token_epoch, 1, "{}", user.email);
        assert_eq!(
            db.store.browser_session(&hash(n), T0 + 1).await?,
            None,
            "{}'s browser session outlived the revoke",
            user.email
        );
    }
    assert!(
        db.store.browser_session(&hash(99), T0 + 1).await?.is_some(),
        "a bystander's browser session ended"
    );
    let after = recent_events(db.store.as_ref(), 1000).await?;
    assert_eq!(after.len() - before, users.len());
    assert_one_audit_row_each(&after, &users);
    Ok(())
}

/// Each of `users` is the subject of exactly one of `events`.
pub(super) fn assert_one_audit_row_each<'a>(
    events: &[store::AuditRecord],
    users: impl IntoIterator<Item = &'a User>,
) {
    for user in users {
        assert_eq!(
            events
                .iter()
                .filter(|event| event.subject_user_id.as_deref() == Some(user.id.as_str()))
                .count(),
            1,
            "{} has not exactly one audit row",
            user.email
        );
    }
}

/// A [`RevokeDecision`] that admits a grant by the standing rule (as the domain's does),
/// records an audit row about its user, and counts the grants it was shown.
pub(super) fn standing_decision(
    seen: Arc<std::sync::Mutex<Vec<RefreshGrant>>>,
    at: i64,
) -> RevokeDecision {
    Arc::new(move |grant: &RefreshGrant| {
        if let Ok(mut seen) = seen.lock() {
            seen.push(grant.clone());
        }
        let stands = grant.user_removed_at.is_none()
            && grant.token_revoked_at.is_none()
            && grant.token_epoch == grant.user_epoch;
        stands.then(|| AuditEvent {
            actor: format!("session:{}", grant.token_id),
            org_id: Some(grant.org_id.clone()),
            subject_user_id: Some(grant.user_id.clone()),
            ..audit("tokens.revoked_all", at)
        })
    })
}

/// `count` members of `org`, `u<n>@example.com`, each with one refresh token, the n-th
/// under `hash(n + 1)`.
pub(super) async fn members_with_a_token(
    store: &dyn Store,
    org: &Organization,
    count: u8,
) -> Result<Vec<User>, TestError> {
    let mut users = Vec::new();
    for n in 0..count {
        let user = add_user(store, org, &format!("u{n}@example.com"), "member", T0).await?;
        store
            .insert_refresh_token(refresh_token(&user, n + 1, None), audit("t", T0))
            .await?;
        users.push(user);
    }
    Ok(users)
}

/// A revoke-all named by a token: the decision sees the token's grant as stored now, its
/// refusal writes nothing, its consent moves the epoch once (ending browser sessions, with
/// one audit row), and an unknown token revokes nothing without asking.
pub(super) async fn revoke_all_by_token_decides_at_the_write(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let token = refresh_token(&owner, 1, None);
    store
        .insert_refresh_token(token.clone(), audit("t", T0))
        .await?;
    store
        .insert_browser_session(&hash(50), &identity_of(&owner)?, T0, T0 + 1_000_000)
        .await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let before = recent_events(store, 1000).await?.len();

    assert_eq!(
        store
            .revoke_all_by_token(&hash(9), standing_decision(seen.clone(), T0 + 1))
            .await?,
        None,
        "an unknown token revokes nothing"
    );
    assert!(seen.lock().map_err(|_| "poisoned")?.is_empty());

    let refuse: RevokeDecision = Arc::new(|_: &RefreshGrant| None);
    assert_eq!(store.revoke_all_by_token(&hash(1), refuse).await?, None);
    assert_eq!(
        store
            .active_user(&owner.id)
            .await?
            .ok_or("gone")?
            .token_epoch,
        0,
        "a refused revoke moved the epoch"
    );

    assert_eq!(
        store
            .revoke_all_by_token(&hash(1), standing_decision(seen.clone(), T0 + 2))
            .await?,
        Some(RevokedAll {
            user_id: owner.id.clone(),
            moved: true,
            siblings: Vec::new(),
        })
    );
    {
        let seen = seen.lock().map_err(|_| "poisoned")?;
        let grant = seen.first().ok_or("the decision never saw the grant")?;
        assert_eq!(
            (
                grant.token_id.as_str(),
                grant.user_id.as_str(),
                grant.org_id.as_str()
            ),
            (token.id.as_str(), owner.id.as_str(), org.id.as_str())
        );
        assert_eq!((grant.token_epoch, grant.user_epoch), (0, 0));
    }
    assert_eq!(
        store
            .active_user(&owner.id)
            .await?
            .ok_or("gone")?
            .token_epoch,
        1
    );
    assert!(
        store.browser_session(&hash(50), T0).await?.is_none(),
        "browser signed out"
    );
    let events = recent_events(store, 1000).await?;
    assert_eq!(events.len() - before, 1);
    let event = events.first().ok_or("no audit row")?;
    assert_eq!(event.action, "tokens.revoked_all");
    assert_eq!(event.actor, format!("session:{}", token.id));
    assert_eq!(event.subject_user_id.as_deref(), Some(owner.id.as_str()));

    // The same token again: its grant now shows the moved epoch, and the rule refuses.
    assert_eq!(
        store
            .revoke_all_by_token(&hash(1), standing_decision(seen.clone(), T0 + 3))
            .await?,
        None
    );
    let last = seen
        .lock()
        .map_err(|_| "poisoned")?
        .last()
        .cloned()
        .ok_or("not asked")?;
    assert_eq!((last.token_epoch, last.user_epoch), (0, 1));
    assert_eq!(recent_events(store, 1000).await?.len() - before, 1);
    Ok(())
}

/// Many token-named revokes at once, two per user, beside user-named ones (SQLite and
/// PostgreSQL read the group's grants in one statement): each user's epoch moves exactly once,
/// with one audit row, and each answer names its own user.
pub(super) async fn revoke_all_by_token_many_at_once(db: Db) -> TestResult {
    let (org, _) = org_with_owner(db.store.as_ref()).await?;
    let users = members_with_a_token(db.store.as_ref(), &org, 20).await?;
    let named = add_user(db.store.as_ref(), &org, "named@example.com", "member", T0).await?;
    let before = recent_events(db.store.as_ref(), 1000).await?.len();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut revokes = tokio::task::JoinSet::new();
    for (n, user) in (1_u8..).zip(&users).chain((1_u8..).zip(&users)) {
        let (store, decide, user_id) = (
            db.store.clone(),
            standing_decision(seen.clone(), T0 + 1),
            user.id.clone(),
        );
        revokes.spawn(async move {
            let revoked = store.revoke_all_by_token(&hash(n), decide).await?;
            Ok::<_, StoreError>((user_id, revoked))
        });
    }
    let by_user = db.store.revoke_all_tokens(
        &named.id,
        0,
        audit_about("tokens.revoked_all", T0 + 1, &named),
    );
    assert!(by_user.await?);
    let mut moved = std::collections::HashMap::new();
    while let Some(outcome) = revokes.join_next().await {
        let (user_id, revoked) = outcome??;
        if let Some(revoked) = revoked {
            assert_eq!(revoked.user_id, user_id, "an answer named another user");
            *moved.entry(user_id).or_insert(0) += usize::from(revoked.moved);
        }
    }
    for user in &users {
        assert_eq!(moved.get(&user.id), Some(&1), "{}", user.email);
        let now = db.store.active_user(&user.id).await?.ok_or("gone")?;
        assert_eq!(now.token_epoch, 1, "{}", user.email);
    }
    let after = recent_events(db.store.as_ref(), 1000).await?;
    assert_eq!(after.len() - before, users.len() + 1);
    assert_one_audit_row_each(&after, users.iter().chain([&named]));
    Ok(())
}

/// Revoke-alls and other writes at the same moment all land: on SQLite they are written by
/// two connections, which must take turns, not fail or lose one.
pub(super) async fn revokes_and_other_writes_at_once_all_land(db: Db) -> TestResult {
    const USERS: u8 = 30;
    let (org, owner) = org_with_owner(db.store.as_ref()).await?;
    let users = members_with_a_token(db.store.as_ref(), &org, USERS).await?;
    let before = recent_events(db.store.as_ref(), 1000).await?.len();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut revokes = tokio::task::JoinSet::new();
    let mut writes = tokio::task::JoinSet::new();
    for n in 1..=USERS {
        let (store, decide) = (db.store.clone(), standing_decision(seen.clone(), T0 + 1));
        revokes.spawn(async move { store.revoke_all_by_token(&hash(n), decide).await });
        let (store, token) = (db.store.clone(), refresh_token(&owner, 100 + n, None));
        writes.spawn(async move { store.insert_refresh_token(token, audit("t", T0 + 1)).await });
    }
    while let Some(revoked) = revokes.join_next().await {
        assert!(revoked??.ok_or("a revoke revoked nothing")?.moved);
    }
    while let Some(written) = writes.join_next().await {
        written??;
    }
    for user in &users {
        let now = db.store.active_user(&user.id).await?.ok_or("gone")?;
        assert_eq!(now.token_epoch, 1, "{}", user.email);
    }
    for n in 1..=USERS {
        let grant = db.store.find_refresh_grant(&hash(100 + n)).await?;
        assert!(
            grant.is_some_and(|grant| grant.user_id == owner.id),
            "token {n} was lost"
        );
    }
    let after = recent_events(db.store.as_ref(), 1000).await?;
    assert_eq!(after.len() - before, 2 * usize::from(USERS));
    Ok(())
}

/// Closing the store answers every revoke already queued (each committed, or failed, never
/// left waiting) and refuses later ones; an answered revoke holds.
pub(super) async fn close_answers_the_revokes_already_queued(db: Db) -> TestResult {
    const USERS: u8 = 20;
    let (org, _) = org_with_owner(db.store.as_ref()).await?;
    let users = members_with_a_token(db.store.as_ref(), &org, USERS).await?;
    let closing = db.another().await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut revokes = tokio::task::JoinSet::new();
    for (n, user) in (1..=USERS).zip(&users) {
        let (store, decide, user_id) = (
            closing.clone(),
            standing_decision(seen.clone(), T0 + 1),
            user.id.clone(),
        );
        revokes.spawn(async move { (user_id, store.revoke_all_by_token(&hash(n), decide).await) });
    }
    tokio::task::yield_now().await;
    tokio::time::timeout(std::time::Duration::from_secs(30), closing.close())
        .await
        .map_err(|_| "close did not finish")?;
    while let Some(joined) =
        tokio::time::timeout(std::time::Duration::from_secs(30), revokes.join_next())
            .await
            .map_err(|_| "a queued revoke was never answered")?
    {
        match joined? {
            (user_id, Ok(revoked)) => {
                assert!(revoked.ok_or("a revoke revoked nothing")?.moved);
                let now = db.store.active_user(&user_id).await?.ok_or("gone")?;
                assert_eq!(now.token_epoch, 1, "an answered revoke did not hold");
            }
            // Sent after the queue closed: refused as an outage, which the caller may retry.
            (_, Err(err)) => assert!(err.is_unreachable(), "{err}"),
        }
    }
    let late = closing
        .revoke_all_by_token(&hash(1), standing_decision(seen, T0 + 2))
        .await;
    assert!(late.is_err(), "a revoke after close was taken: {late:?}");
    Ok(())
}

pub(super) async fn remove_user_keeps_an_owner(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    assert_eq!(
        store
            .remove_user(&owner.id, T0 + 1, None, audit("rm", T0 + 1))
            .await?,
        Err(Refusal::LastOwner)
    );
    let second = add_user(store, &org, "second@example.com", "owner", T0 + 2).await?;
    assert_eq!(
        store
            .remove_user(&owner.id, T0 + 3, None, audit("rm", T0 + 3))
            .await?,
        Ok(())
    );
    assert_eq!(
        store
            .remove_user(&second.id, T0 + 4, None, audit("rm", T0 + 4))
            .await?,
        Err(Refusal::LastOwner)
    );
    assert_eq!(
        store
            .remove_user(&owner.id, T0 + 5, None, audit("rm", T0 + 5))
            .await?,
        Err(Refusal::NotFound),
        "already removed"
    );
    assert_eq!(
        store
            .remove_user("nobody", T0 + 5, None, audit("rm", T0 + 5))
            .await?,
        Err(Refusal::NotFound)
    );
    // Non-owners go regardless.
    let guest = add_user(store, &org, "guest@example.com", "guest", T0 + 6).await?;
    assert_eq!(
        store
            .remove_user(&guest.id, T0 + 7, None, audit("rm", T0 + 7))
            .await?,
        Ok(())
    );
    assert!(store.active_user(&guest.id).await?.is_none());
    Ok(())
}

/// Two Owners removing each other at the same moment, through two connections: one removal
/// wins and one Owner stays. Several rounds, each with the survivor and a new Owner.
pub(super) async fn remove_user_races_keep_an_owner(db: Db) -> TestResult {
    let (org, owner) = org_with_owner(db.store.as_ref()).await?;
    let other = db.another().await?;
    let mut keep = owner;
    for round in 0..5_i64 {
        let at = T0 + 100 * (round + 1);
        let second = add_user(
            db.store.as_ref(),
            &org,
            &format!("o{round}@example.com"),
            "owner",
            at,
        )
        .await?;
        let (a, b) = tokio::join!(
            db.store
                .remove_user(&keep.id, at + 1, Some(&second.id), audit("rm", at + 1)),
            other.remove_user(&second.id, at + 1, Some(&keep.id), audit("rm", at + 1)),
        );
        let (a, b) = (a?, b?);
        let removed = [a, b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(removed, 1, "round {round}: {a:?} {b:?}");
        // The loser's actor is gone by the time its removal is written.
        for outcome in [a, b] {
            assert!(
                matches!(outcome, Ok(()) | Err(Refusal::Forbidden)),
                "{outcome:?}"
            );
        }
        let owners: Vec<_> = db
            .store
            .list_users(&org.id, false)
            .await?
            .into_iter()
            .filter(|u| u.role == "owner")
            .collect();
        assert_eq!(owners.len(), 1, "round {round}");
        keep = owners.into_iter().next().ok_or("no owner")?;
    }
    // Each removing itself, as an operator would remove both: the last one stays.
    for round in 5..10_i64 {
        let at = T0 + 100 * (round + 1);
        let second = add_user(
            db.store.as_ref(),
            &org,
            &format!("o{round}@example.com"),
            "owner",
            at,
        )
        .await?;
        let (a, b) = tokio::join!(
            db.store
                .remove_user(&keep.id, at + 1, Some(&keep.id), audit("rm", at + 1)),
            other.remove_user(&second.id, at + 1, None, audit("rm", at + 1)),
        );
        let (a, b) = (a?, b?);
        let removed = [a, b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(removed, 1, "round {round}: {a:?} {b:?}");
        for outcome in [a, b] {
            assert!(
                matches!(outcome, Ok(()) | Err(Refusal::LastOwner)),
                "{outcome:?}"
            );
        }
        let owners: Vec<_> = db
            .store
            .list_users(&org.id, false)
            .await?
            .into_iter()
            .filter(|u| u.role == "owner")
            .collect();
        assert_eq!(owners.len(), 1, "round {round}");
        keep = owners.into_iter().next().ok_or("no owner")?;
    }
    other.close().await;
    Ok(())
}

pub(super) async fn token_uses_and_ping(db: Db) -> TestResult {
    let store = db.store.as_ref();
    store.ping().await?;
    let (_, owner) = org_with_owner(store).await?;
    let token = refresh_token(&owner, 1, None);
    store
        .insert_refresh_token(token.clone(), audit("t", T0))
        .await?;
    store.record_token_uses(&[]).await?;
    let uses = [
        TokenUse {
            token_id: token.id.clone(),
            at: T0 + 5,
            address: Some("10.0.0.1".into()),
        },
        TokenUse {
            token_id: token.id.clone(),
            at: T0 + 3,
            address: None,
        },
        TokenUse {
            token_id: "unknown".into(),
            at: T0 + 5,
            address: None,
        },
    ];
    store.record_token_uses(&uses).await?;
    assert!(store.find_refresh_grant(&hash(1)).await?.is_some());
    // The latest use in a batch wins, whatever its place; an older one never overwrites it.
    let session = store.live_session(&token.id).await?.ok_or("no session")?;
    assert_eq!(session.last_used_at, Some(T0 + 5));
    assert_eq!(session.last_used_addr.as_deref(), Some("10.0.0.1"));
    let reversed: Vec<TokenUse> = uses.iter().rev().cloned().collect();
    store.record_token_uses(&reversed).await?;
    store
        .record_token_uses(&[TokenUse {
            token_id: token.id.clone(),
            at: T0 + 4,
            address: Some("10.0.0.2".into()),
        }])
        .await?;
    let session = store.live_session(&token.id).await?.ok_or("no session")?;
    assert_eq!(session.last_used_at, Some(T0 + 5));
    assert_eq!(session.last_used_addr.as_deref(), Some("10.0.0.1"));
    Ok(())
}

/// Sessions are the live refresh tokens of one user (the standing rule in SQL), newest first,
/// bounded, with last use as recorded; one session is found by id whoever's it is.
pub(super) async fn sessions_live_only_newest_first(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let member = add_user(store, &org, "m@example.com", "guest", T0).await?;
    let older = refresh_token(&owner, 1, None);
    let newer = NewRefreshToken {
        name: None,
        client_id: "other".into(),
        created_at: T0 + 30,
        ..refresh_token(&owner, 2, None)
    };
    let revoked = NewRefreshToken {
        created_at: T0 + 20,
        ..refresh_token(&owner, 3, None)
    };
    let members = refresh_token(&member, 4, None);
    for token in [&older, &newer, &revoked, &members] {
        assert!(
            store
                .insert_refresh_token(token.clone(), audit("t", T0))
                .await?
        );
    }
    assert!(
        store
            .revoke_session(&revoked.id, &owner.id, audit("rv", T0 + 40))
            .await?
    );
    store
        .record_token_uses(&[TokenUse {
            token_id: older.id.clone(),
            at: T0 + 50,
            address: Some("10.0.0.9".into()),
        }])
        .await?;

    let sessions = store.list_sessions(&owner.id, 100).await?;
    let ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [newer.id.as_str(), older.id.as_str()]);
    assert_eq!(
        sessions[1],
        SessionRecord {
            id: older.id.clone(),
            user_id: owner.id.clone(),
            client_id: "client".into(),
            name: Some("ci".into()),
            created_at: T0 + 10,
            last_used_at: Some(T0 + 50),
            last_used_addr: Some("10.0.0.9".into()),
            scope: "openid".into(),
            named: false,
            expires_at: None,
        }
    );
    assert_eq!(sessions[0].name, None);
    assert_eq!(sessions[0].client_id, "other");
    assert_eq!(sessions[0].last_used_at, None);
    // Bounded: the limit holds, and a silly one is clamped rather than an error.
    assert_eq!(store.list_sessions(&owner.id, 1).await?.len(), 1);
    assert!(store.list_sessions(&owner.id, -5).await?.is_empty());
    assert_eq!(store.list_sessions(&owner.id, i64::MAX).await?.len(), 2);
    assert!(store.list_sessions("nobody", 100).await?.is_empty());

    // Many users at once: each one's live sessions as list_sessions gives them, the limit per
    // user, and unknown users and an empty list are no error.
    let both = store
        .list_sessions_of_users(&[owner.id.as_str(), member.id.as_str(), "nobody"], 100)
        .await?;
    let of = |user: &str| -> Vec<SessionRecord> {
        both.iter().filter(|s| s.user_id == user).cloned().collect()
    };
    assert_eq!(of(&owner.id), sessions);
    assert_eq!(of(&member.id), store.list_sessions(&member.id, 100).await?);
    assert_eq!(both.len(), 3);
    let newest_each = store
        .list_sessions_of_users(&[owner.id.as_str(), member.id.as_str()], 1)
        .await?;
    let mut newest_ids: Vec<&str> = newest_each.iter().map(|s| s.id.as_str()).collect();
    newest_ids.sort_unstable();
    let mut expected = vec![newer.id.as_str(), members.id.as_str()];
    expected.sort_unstable();
    assert_eq!(newest_ids, expected, "the newest of each, one each");
    assert!(store.list_sessions_of_users(&[], 100).await?.is_empty());
    assert!(
        store
            .list_sessions_of_users(&[owner.id.as_str()], -5)
            .await?
            .is_empty()
    );

    // One by id: anyone's, live only.
    assert_eq!(
        store.live_session(&older.id).await?.as_ref(),
        Some(&sessions[1])
    );
    let theirs = store.live_session(&members.id).await?.ok_or("no session")?;
    assert_eq!(theirs.user_id, member.id);
    assert!(store.live_session(&revoked.id).await?.is_none());
    assert!(store.live_session("not-a-uuid").await?.is_none());
    assert!(store.live_session("").await?.is_none());

    // Revoke-all ends every session (the epoch moved); a token minted afterwards is live.
    assert!(
        store
            .revoke_all_tokens(
                &owner.id,
                0,
                audit_about("tokens.revoked_all", T0 + 60, &owner)
            )
            .await?
    );
    assert!(store.list_sessions(&owner.id, 100).await?.is_empty());
    assert!(store.live_session(&older.id).await?.is_none());
    let fresh = refresh_token(&owner, 5, None);
    assert!(
        store
            .insert_refresh_token(fresh.clone(), audit("t", T0 + 70))
            .await?
    );
    let ids: Vec<String> = store
        .list_sessions(&owner.id, 100)
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [fresh.id]);

    // A removed user has no sessions.
    assert_eq!(store.list_sessions(&member.id, 100).await?.len(), 1);
    assert_eq!(
        store
            .remove_user(
                &member.id,
                T0 + 80,
                None,
                audit_about("user.removed", T0 + 80, &member)
            )
            .await?,
        Ok(())
    );
    assert!(store.list_sessions(&member.id, 100).await?.is_empty());
    assert!(store.live_session(&members.id).await?.is_none());
    Ok(())
}

/// The members of one person, `p@example.com`, in several organizations.
pub(super) struct Person {
    pub(super) identity: String,
    /// Joined, in the bootstrapped organization.
    pub(super) in_a: User,
    /// Joined, in organization B.
    pub(super) in_b: User,
    /// Pending, in organization C.
    pub(super) in_c: User,
    pub(super) orgs: [Organization; 4],
    /// The bootstrapped organization's Owner, another person.
    pub(super) owner: User,
}

/// Four organizations (A bootstrapped, B, C, D) and a [`Person`]: joined in A and B, pending
/// in C, nothing in D.
pub(super) async fn person_in_several_orgs(store: &dyn Store) -> Result<Person, TestError> {
    let (a, owner) = org_with_owner(store).await?;
    let b = another_org(store, "B", T0 + 1).await?;
    let c = another_org(store, "C", T0 + 2).await?;
    let d = another_org(store, "D", T0 + 3).await?;
    let in_a = add_user(store, &a, "p@example.com", "member", T0 + 4).await?;
    let join = |org: &Organization, join: JoinExisting| {
        joining(&org.id, "p@example.com", "member", T0 + 5, join)
    };
    let in_b = added(try_add(store, join(&b, JoinExisting::AtOnce), None).await?)?.user;
    let in_c = added(try_add(store, join(&c, JoinExisting::Pending), None).await?)?.user;
    Ok(Person {
        identity: identity_of(&in_a)?,
        in_a,
        in_b,
        in_c,
        orgs: [a, b, c, d],
        owner,
    })
}

/// A refresh token moves from one member of a person to the joined member of the same
/// identity in another organization: the grant then reads the new member, organization,
/// tenant and epoch, and both organizations' trails show the move. It moves nowhere the
/// identity is not joined, and a token not live under the member it is said to be under
/// (revoked, of an old epoch, someone else's, removed) does not move; a move that does not
/// happen changes and audits nothing.
pub(super) async fn refresh_tokens_move_between_members(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let p = person_in_several_orgs(store).await?;
    let [a, b, c, d] = &p.orgs;
    // Epochs that differ: the moved token takes its new member's.
    assert!(
        store
            .revoke_all_tokens(
                &p.in_b.id,
                0,
                audit_about("tokens.revoked_all", T0 + 6, &p.in_b)
            )
            .await?
    );
    let token = refresh_token(&p.in_a, 1, None);
    assert!(
        store
            .insert_refresh_token(token.clone(), audit("t", T0 + 7))
            .await?
    );
    let moved = |from: &User, tenant: &str, at: i64| {
        let (from_id, tenant, token_id) = (from.id.clone(), tenant.to_owned(), token.id.clone());
        let event = AuditEvent {
            org_id: Some(from.org_id.clone()),
            ..audit_about("session.moved", at, from)
        };
        async move {
            store
                .move_refresh_token(&token_id, &from_id, &tenant, event)
                .await
        }
    };
    let before = db.count("SELECT COUNT(*) FROM audit_events").await?;
    assert_eq!(
        moved(&p.in_a, &b.tenant_id, T0 + 8).await?,
        Some(p.in_b.id.clone())
    );
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.token_id, token.id);
    assert_eq!(
        (
            grant.user_id.as_str(),
            grant.org_id.as_str(),
            grant.tenant_id.as_str()
        ),
        (p.in_b.id.as_str(), b.id.as_str(), b.tenant_id.as_str())
    );
    assert_eq!((grant.token_epoch, grant.user_epoch), (1, 1), "it stands");
    assert_eq!(grant.token_revoked_at, None);
    let principal = store
        .principal(&p.in_b.id, &token.id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.session_revoked_at, Some(None));
    assert_eq!(principal.org, *b);
    assert!(store.list_sessions(&p.in_a.id, 10).await?.is_empty());
    assert_eq!(
        store
            .live_session(&token.id)
            .await?
            .ok_or("not live")?
            .user_id,
        p.in_b.id
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await?,
        before + 2
    );
    let mut rows: Vec<(Option<String>, Option<String>)> = recent_events(store, 2)
        .await?
        .into_iter()
        .map(|row| {
            assert_eq!(row.action, "session.moved");
            (row.org_id, row.subject_user_id)
        })
        .collect();
    rows.sort();
    let mut expected = vec![
        (Some(a.id.clone()), Some(p.in_a.id.clone())),
        (Some(b.id.clone()), Some(p.in_b.id.clone())),
    ];
    expected.sort();
    assert_eq!(rows, expected, "one row in each organization");

    // Nowhere it is not joined, and not from a member it is not under.
    let before = before + 2;
    for (from, tenant, what) in [
        (&p.in_b, c.tenant_id.as_str(), "to a pending membership"),
        (
            &p.in_b,
            d.tenant_id.as_str(),
            "to an organization it is not in",
        ),
        (&p.in_b, "no-such-tenant", "to no organization"),
        (&p.in_a, a.tenant_id.as_str(), "from a member it left"),
        (&p.owner, a.tenant_id.as_str(), "from someone else"),
    ] {
        assert_eq!(moved(from, tenant, T0 + 9).await?, None, "{what}");
    }
    let unchanged = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        (unchanged.user_id.as_str(), unchanged.token_epoch),
        (p.in_b.id.as_str(), 1)
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM audit_events").await?, before);
    // And back, under A's epoch.
    assert_eq!(
        moved(&p.in_b, &a.tenant_id, T0 + 10).await?,
        Some(p.in_a.id.clone())
    );
    let back = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        (
            back.user_id.as_str(),
            back.org_id.as_str(),
            back.token_epoch,
            back.user_epoch
        ),
        (p.in_a.id.as_str(), a.id.as_str(), 0, 0)
    );

    // A revoked token stays.
    assert!(
        store
            .revoke_session(&token.id, &p.in_a.id, audit("rv", T0 + 12))
            .await?
    );
    let before = db.count("SELECT COUNT(*) FROM audit_events").await?;
    assert_eq!(
        moved(&p.in_a, &b.tenant_id, T0 + 13).await?,
        None,
        "revoked"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM audit_events").await?, before);
    // A token of an old epoch stays (it must not come back to life elsewhere).
    let old = refresh_token(&p.in_a, 2, None);
    assert!(
        store
            .insert_refresh_token(old.clone(), audit("t", T0 + 14))
            .await?
    );
    assert!(
        store
            .revoke_all_tokens(
                &p.in_a.id,
                0,
                audit_about("tokens.revoked_all", T0 + 15, &p.in_a)
            )
            .await?
    );
    let before = before + 2;
    let from_old_epoch = store
        .move_refresh_token(
            &old.id,
            &p.in_a.id,
            &b.tenant_id,
            audit_about("session.moved", T0 + 16, &p.in_a),
        )
        .await?;
    assert_eq!(from_old_epoch, None, "an old epoch");
    let stale = store
        .find_refresh_grant(&hash(2))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        (stale.user_id.as_str(), stale.token_epoch, stale.user_epoch),
        (p.in_a.id.as_str(), 0, 1)
    );
    // Nor from, or to, a removed member.
    let live = refresh_token(&p.in_a, 3, None);
    assert!(
        store
            .insert_refresh_token(live.clone(), audit("t", T0 + 17))
            .await?
    );
    assert_eq!(
        store
            .remove_user(&p.in_b.id, T0 + 18, None, audit("user.removed", T0 + 18))
            .await?,
        Ok(())
    );
    let before = before + 2;
    let to_removed = store
        .move_refresh_token(
            &live.id,
            &p.in_a.id,
            &b.tenant_id,
            audit_about("session.moved", T0 + 19, &p.in_a),
        )
        .await?;
    assert_eq!(to_removed, None, "to a removed member");
    assert_eq!(db.count("SELECT COUNT(*) FROM audit_events").await?, before);
    Ok(())
}

/// A person's own revoke-all (named by a token) ends their tokens in every organization: the
/// epoch of each of the identity's active members moves (the others are listed as siblings),
/// each with its audit row in its organization, so a sibling's token fails the standing rule.
/// A removed member and other people are untouched. A revoke-all named by a member (an
/// Admin's) moves that member only.
pub(super) async fn revoke_all_by_token_moves_every_member(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let p = person_in_several_orgs(store).await?;
    let [a, b, c, d] = &p.orgs;
    let gone = added(
        try_add(
            store,
            joining(
                &d.id,
                "p@example.com",
                "member",
                T0 + 6,
                JoinExisting::AtOnce,
            ),
            None,
        )
        .await?,
    )?
    .user;
    assert_eq!(
        store
            .remove_user(&gone.id, T0 + 7, None, audit("user.removed", T0 + 7))
            .await?,
        Ok(())
    );
    for (seed, user) in [(1, &p.in_a), (2, &p.in_b), (3, &p.owner)] {
        assert!(
            store
                .insert_refresh_token(refresh_token(user, seed, None), audit("t", T0 + 8))
                .await?
        );
    }
    store
        .insert_browser_session(&hash(50), &p.identity, T0, T0 + 1_000_000)
        .await?;
    store
        .insert_browser_session(&hash(51), &identity_of(&p.owner)?, T0, T0 + 1_000_000)
        .await?;
    let before = db.count("SELECT COUNT(*) FROM audit_events").await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let revoked = store
        .revoke_all_by_token(&hash(1), standing_decision(seen, T0 + 9))
        .await?
        .ok_or("nothing revoked")?;
    assert_eq!(revoked.user_id, p.in_a.id);
    assert!(revoked.moved);
    let mut siblings = revoked.siblings.clone();
    siblings.sort();
    let mut expected = vec![p.in_b.id.clone(), p.in_c.id.clone()];
    expected.sort();
    assert_eq!(siblings, expected, "every other active member");

    let epoch = |user: &User| {
        let (org_id, id) = (user.org_id.clone(), user.id.clone());
        async move {
            Ok::<_, TestError>(
                store
                    .list_users(&org_id, true)
                    .await?
                    .into_iter()
                    .find(|u| u.id == id)
                    .ok_or("no such user")?
                    .token_epoch,
            )
        }
    };
    assert_eq!(epoch(&p.in_a).await?, 1);
    assert_eq!(epoch(&p.in_b).await?, 1);
    assert_eq!(epoch(&p.in_c).await?, 1, "a pending member too");
    assert_eq!(epoch(&gone).await?, 1, "the removal's move only");
    assert_eq!(epoch(&p.owner).await?, 0, "someone else");
    // The sibling's token is dead by the standing rule.
    let sibling = store
        .find_refresh_grant(&hash(2))
        .await?
        .ok_or("no grant")?;
    assert_eq!((sibling.token_epoch, sibling.user_epoch), (0, 1));
    assert!(store.list_sessions(&p.in_b.id, 10).await?.is_empty());
    let bystander = store
        .find_refresh_grant(&hash(3))
        .await?
        .ok_or("no grant")?;
    assert_eq!((bystander.token_epoch, bystander.user_epoch), (0, 0));
    assert_eq!(store.browser_session(&hash(50), T0 + 10).await?, None);
    assert!(store.browser_session(&hash(51), T0 + 10).await?.is_some());
    // One row per member, in its organization.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await?,
        before + 3
    );
    let mut rows: Vec<(Option<String>, Option<String>)> = recent_events(store, 3)
        .await?
        .into_iter()
        .map(|row| {
            assert_eq!(row.action, "tokens.revoked_all");
            (row.org_id, row.subject_user_id)
        })
        .collect();
    rows.sort();
    let mut expected: Vec<(Option<String>, Option<String>)> =
        [(a, &p.in_a), (b, &p.in_b), (c, &p.in_c)]
            .into_iter()
            .map(|(org, user)| (Some(org.id.clone()), Some(user.id.clone())))
            .collect();
    expected.sort();
    assert_eq!(rows, expected);

    // Named by a member: that member only.
    assert!(
        store
            .revoke_all_tokens(
                &p.in_b.id,
                1,
                audit_about("tokens.revoked_all", T0 + 11, &p.in_b)
            )
            .await?
    );
    assert_eq!(epoch(&p.in_b).await?, 2);
    assert_eq!(epoch(&p.in_a).await?, 1);
    assert_eq!(epoch(&p.in_c).await?, 1);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await?,
        before + 4
    );
    Ok(())
}

/// Two members of one person revoking all by their tokens at the same moment (in one group
/// of the group commit, or in two): each member's epoch moves exactly once, with exactly one
/// audit row, whichever revoke moved it. Several rounds.
pub(super) async fn revoke_all_by_token_siblings_at_once(db: Db) -> TestResult {
    let p = person_in_several_orgs(db.store.as_ref()).await?;
    let other = db.another().await?;
    let members = [&p.in_a, &p.in_b, &p.in_c];
    for round in 0..5_u8 {
        let epoch = i64::from(round);
        for (seed, user) in [(10 + round, &p.in_a), (20 + round, &p.in_b)] {
            assert!(
                db.store
                    .insert_refresh_token(refresh_token(user, seed, None), audit("t", T0 + 8))
                    .await?
            );
        }
        let before = recent_events(db.store.as_ref(), 1000).await?.len();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let at = T0 + 100 + epoch;
        // Through one store (one group, usually) or two (two groups, or on PostgreSQL two
        // replicas).
        let second_store = if round % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        let (of_a, of_b) = (hash(10 + round), hash(20 + round));
        let (first, second) = tokio::join!(
            db.store
                .revoke_all_by_token(&of_a, standing_decision(seen.clone(), at)),
            second_store.revoke_all_by_token(&of_b, standing_decision(seen, at)),
        );
        let (first, second) = (first?, second?);
        assert!(
            [&first, &second]
                .iter()
                .any(|r| r.as_ref().is_some_and(|r| r.moved)),
            "round {round}: neither moved: {first:?} {second:?}"
        );
        for member in members {
            let now = db
                .store
                .member(&member.org_id, &member.id)
                .await?
                .ok_or("gone")?;
            assert_eq!(
                now.token_epoch,
                epoch + 1,
                "round {round}: {}",
                member.org_id
            );
        }
        let after = recent_events(db.store.as_ref(), 1000).await?;
        assert_eq!(after.len() - before, members.len(), "round {round}");
        assert_one_audit_row_each(&after[..members.len()], members);
    }
    other.close().await;
    Ok(())
}
