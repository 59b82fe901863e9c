//! Store conformance: organizations, first start and session policies.

use super::*;

pub(super) async fn bootstrap_once(db: Db) -> TestResult {
    let store = db.store.as_ref();
    assert_eq!(store.default_organization().await?, None);
    let (org, owner) = org_with_owner(store).await?;
    assert_eq!(owner.role, "owner");
    assert_eq!(owner.token_epoch, 0);
    assert!(owner.dark_mode_sync_with_os);
    assert!(!owner.dark_mode);
    let again = new_org("Second", T0 + 1);
    let owner2 = new_user(&again.id, "other@example.com", "owner", T0 + 1);
    assert!(
        !store
            .bootstrap(again, owner2, audit("bootstrap", T0 + 1))
            .await?
    );
    assert_eq!(store.list_organizations().await?, vec![org]);
    Ok(())
}

pub(super) async fn bootstrap_races(db: Db) -> TestResult {
    // Two replicas start on an empty database at the same moment.
    let other = db.another().await?;
    let (a_org, b_org) = (new_org("A", T0), new_org("B", T0));
    let a_owner = new_user(&a_org.id, "a@example.com", "owner", T0);
    let b_owner = new_user(&b_org.id, "b@example.com", "owner", T0);
    let (a, b) = tokio::join!(
        db.store.bootstrap(a_org, a_owner, audit("bootstrap", T0)),
        other.bootstrap(b_org, b_owner, audit("bootstrap", T0)),
    );
    other.close().await;
    assert_eq!(u8::from(a?) + u8::from(b?), 1, "exactly one bootstrap wins");
    assert_eq!(db.store.list_organizations().await?.len(), 1);
    let org = db.store.default_organization().await?.ok_or("no org")?;
    assert_eq!(db.store.list_users(&org.id, true).await?.len(), 1);
    Ok(())
}

pub(super) async fn organizations(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (first, _) = org_with_owner(store).await?;
    let second = new_org("Second", T0 + 5);
    store
        .create_organization(second.clone(), audit("org.add", T0 + 5))
        .await?;
    let all = store.list_organizations().await?;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], first, "oldest first");
    assert_eq!(all[1].tenant_id, second.tenant_id);
    assert_eq!(store.default_organization().await?, Some(first.clone()));
    let found = store.organization_by_tenant(&second.tenant_id).await?;
    assert_eq!(found.map(|o| o.id), Some(second.id));
    assert_eq!(store.organization_by_tenant("nope").await?, None);
    Ok(())
}

/// An organization's session policy: off by default, changed only from the expected value
/// (with its audit row, or not at all), per organization, and read with every refresh grant
/// together with the token's creation and last use. A cache forgets grants when this process
/// changes a policy, and when an organization-wide change from elsewhere is applied.
pub(super) async fn session_policies(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let other_org = another_org(store, "Other", T0).await?;
    let other_org_id = other_org.id.clone();
    let other_user = add_user(store, &other_org, "o@example.com", "owner", T0).await?;
    store
        .insert_refresh_token(refresh_token(&owner, 1, None), audit("t", T0))
        .await?;
    store
        .insert_refresh_token(refresh_token(&other_user, 2, None), audit("t", T0))
        .await?;

    // Off by default; an unknown organization has none.
    let off = SessionPolicy::default();
    assert_eq!(store.session_policy(&org.id).await?, Some(off));
    assert_eq!(store.session_policy("no-such-org").await?, None);
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.policy, off);
    assert_eq!(grant.token_created_at, T0 + 10);
    assert_eq!(grant.token_last_used_at, None);
    store
        .record_token_uses(&[TokenUse {
            token_id: grant.token_id.clone(),
            at: T0 + 50,
            address: None,
        }])
        .await?;
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.token_last_used_at, Some(T0 + 50));
    // The access-token path reads the same facts about the session it came from.
    let principal = store
        .principal(&owner.id, &grant.token_id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.session_created_at, Some(T0 + 10));
    assert_eq!(principal.session_last_used_at, Some(T0 + 50));
    assert_eq!(principal.policy, off);
    let sessionless = store
        .principal(&owner.id, "no-such-session")
        .await?
        .ok_or("no principal")?;
    assert_eq!(
        (
            sessionless.session_created_at,
            sessionless.session_last_used_at
        ),
        (None, None)
    );

    // Set: the grant carries it at once; the other organization keeps its own.
    let strict = SessionPolicy {
        idle_expiry_secs: Some(86_400),
        max_age_secs: Some(2 * 86_400),
    };
    let changed = |at| AuditEvent {
        org_id: Some(org.id.clone()),
        ..audit("org.policy_changed", at)
    };
    assert!(
        store
            .set_session_policy(&org.id, off, strict, changed(T0 + 60))
            .await?
    );
    assert_eq!(store.session_policy(&org.id).await?, Some(strict));
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.policy, strict);
    assert_eq!(store.session_policy(&other_org_id).await?, Some(off));
    let other_grant = store
        .find_refresh_grant(&hash(2))
        .await?
        .ok_or("no grant")?;
    assert_eq!(other_grant.policy, off);
    let principal = store
        .principal(&owner.id, &grant.token_id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.policy, strict);
    let other_principal = store
        .principal(&other_user.id, &other_grant.token_id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(other_principal.policy, off);

    // A stale expectation, or an unknown organization, changes nothing and audits nothing.
    let half = SessionPolicy {
        idle_expiry_secs: None,
        max_age_secs: Some(86_400),
    };
    assert!(
        !store
            .set_session_policy(&org.id, off, half, changed(T0 + 61))
            .await?
    );
    assert!(
        !store
            .set_session_policy("no-such-org", off, half, changed(T0 + 62))
            .await?
    );
    assert_eq!(store.session_policy(&org.id).await?, Some(strict));
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events WHERE action = 'org.policy_changed'")
            .await?,
        1
    );
    let newest = recent_events(store, 1).await?;
    assert_eq!(newest[0].action, "org.policy_changed");
    assert_eq!(newest[0].org_id.as_deref(), Some(org.id.as_str()));
    assert_eq!(newest[0].subject_user_id, None);

    // Each limit on its own, and off again.
    assert!(
        store
            .set_session_policy(&org.id, strict, half, changed(T0 + 63))
            .await?
    );
    assert_eq!(store.session_policy(&org.id).await?, Some(half));
    assert!(
        store
            .set_session_policy(&org.id, half, off, changed(T0 + 64))
            .await?
    );
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.policy, off);

    // The cache: this process's change is seen at once ...
    let cached = live_cache(&db, 1000).await?;
    cached.find_refresh_grant(&hash(1)).await?;
    cached.principal(&owner.id, &grant.token_id).await?;
    assert!(
        cached
            .set_session_policy(&org.id, off, strict, changed(T0 + 65))
            .await?
    );
    let grant = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.policy, strict);
    let principal = cached
        .principal(&owner.id, &grant.token_id)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.policy, strict);
    // ... another process's change only once the feed hands it on (the positive control that
    // the cache is in the way) ...
    let other = db.another().await?;
    assert!(
        other
            .set_session_policy(&org.id, strict, half, changed(T0 + 66))
            .await?
    );
    let stale = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(stale.policy, strict);
    // ... as an organization-wide change (the audit row names no user).
    cached.apply(&Change {
        action: "org.policy_changed".into(),
        user_id: None,
    });
    let fresh = cached
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(fresh.policy, half);
    other.close().await;
    Ok(())
}
