//! Store conformance: users: creation, pages, profiles, roles.

use super::*;

pub(super) async fn create_user_conflicts_and_readd(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, _) = org_with_owner(store).await?;
    let user = add_user(store, &org, "a@example.com", "admin", T0 + 1).await?;
    assert!(matches!(
        add_user(store, &org, "a@example.com", "guest", T0 + 2).await,
        Err(StoreError::Conflict(_))
    ));
    // The same address in another organization is another account.
    let other = new_org("Other", T0);
    store
        .create_organization(other.clone(), audit("org.add", T0))
        .await?;
    let elsewhere = store
        .create_user(
            new_user(&other.id, "a@example.com", "owner", T0 + 3),
            audit("user.add", T0 + 3),
        )
        .await?;
    assert_eq!(
        store
            .remove_user(&user.id, T0 + 4, audit("user.remove", T0 + 4))
            .await?,
        Removal::Removed
    );
    let readded = add_user(store, &org, "a@example.com", "guest", T0 + 5).await?;
    assert_ne!(readded.id, user.id);
    let found = store
        .find_active_user_by_email(&org.id, "a@example.com")
        .await?
        .ok_or("not found")?;
    assert_eq!(found, readded);
    let all = store.list_users(&org.id, true).await?;
    assert_eq!(all.len(), 3);
    assert_eq!(all[1].id, user.id);
    assert_eq!(all[1].removed_at, Some(T0 + 4));
    assert_eq!(all[1].token_epoch, 1, "removal moves the epoch");
    assert_eq!(store.list_users(&org.id, false).await?.len(), 2);
    // Organizations and credentials across tenants.
    let orgs = store.organizations_of_email("a@example.com").await?;
    assert_eq!(orgs.len(), 2);
    let credentials = store.credentials_by_email("a@example.com").await?;
    let ids: Vec<_> = credentials.iter().map(|c| c.user.id.clone()).collect();
    assert_eq!(ids, vec![elsewhere.id, readded.id], "oldest first");
    Ok(())
}

pub(super) async fn users_page_order_and_cursor(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    // Ties in created_at are broken by id.
    let mut expected = vec![owner];
    for (n, at) in [T0 + 1, T0 + 1, T0 + 1, T0 + 2, T0 + 3]
        .into_iter()
        .enumerate()
    {
        expected.push(add_user(store, &org, &format!("u{n}@example.com"), "guest", at).await?);
    }
    let gone = add_user(store, &org, "gone@example.com", "guest", T0 + 2).await?;
    store
        .remove_user(&gone.id, T0 + 9, audit("user.remove", T0 + 9))
        .await?;
    expected.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.users_page(&org.id, after.clone(), 2).await?;
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some((last.created_at, last.id.clone()));
        seen.extend(page);
    }
    assert_eq!(seen, expected);
    assert!(store.users_page("other-org", None, 10).await?.is_empty());
    Ok(())
}

pub(super) async fn members_profiles_and_lookups(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    assert_eq!(store.member(&org.id, &owner.id).await?, Some(owner.clone()));
    assert_eq!(store.member("other", &owner.id).await?, None);
    assert_eq!(store.active_user(&owner.id).await?, Some(owner.clone()));
    let changes = ProfileChanges {
        name: Some("New Name".into()),
        dark_mode: Some(true),
        ..Default::default()
    };
    assert!(
        store
            .update_profile(&owner.id, changes, audit("profile", T0 + 7))
            .await?
    );
    let changed = store.active_user(&owner.id).await?.ok_or("gone")?;
    assert_eq!(changed.name, "New Name");
    assert!(changed.dark_mode);
    assert!(changed.dark_mode_sync_with_os, "untouched fields stay");
    assert_eq!(changed.phone, None);
    assert_eq!(changed.updated_at, T0 + 7);
    assert!(
        !store
            .update_profile("nobody", ProfileChanges::default(), audit("profile", T0))
            .await?
    );
    assert!(!store.has_password(&owner.id).await?);
    assert!(
        store
            .set_password_hash(&owner.id, "$argon2id$x", audit("pw", T0 + 8))
            .await?
    );
    assert!(store.has_password(&owner.id).await?);
    assert!(
        !store
            .set_password_hash("nobody", "h", audit("pw", T0))
            .await?
    );
    let credentials = store.credentials_by_email("owner@example.com").await?;
    assert_eq!(credentials.len(), 1);
    assert_eq!(credentials[0].password_hash.as_deref(), Some("$argon2id$x"));
    Ok(())
}

pub(super) async fn role_changes_keep_an_owner(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let admin = add_user(store, &org, "a@example.com", "admin", T0).await?;
    let to = |role: &str| ProfileChanges {
        role: Some(role.into()),
        ..ProfileChanges::default()
    };
    let before = db.count("SELECT COUNT(*) FROM audit_events").await?;
    // The last Owner cannot be demoted; nothing changes and nothing is audited.
    assert!(
        !store
            .update_profile(
                &owner.id,
                to("admin"),
                audit_about("user.role_changed", T0 + 1, &owner)
            )
            .await?
    );
    assert_eq!(
        store.member(&org.id, &owner.id).await?.ok_or("gone")?.role,
        "owner"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM audit_events").await?, before);
    // With a second Owner, the first may step down.
    assert!(
        store
            .update_profile(
                &admin.id,
                to("owner"),
                audit_about("user.role_changed", T0 + 2, &admin)
            )
            .await?
    );
    assert!(
        store
            .update_profile(
                &owner.id,
                to("guest"),
                audit_about("user.role_changed", T0 + 3, &owner)
            )
            .await?
    );
    assert_eq!(
        store.member(&org.id, &owner.id).await?.ok_or("gone")?.role,
        "guest"
    );
    assert_eq!(
        store.member(&org.id, &admin.id).await?.ok_or("gone")?.role,
        "owner"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await?,
        before + 2
    );
    // A profile change without a role leaves the role alone, also for the last Owner.
    let rename = ProfileChanges {
        name: Some("Still Owner".into()),
        ..ProfileChanges::default()
    };
    assert!(
        store
            .update_profile(
                &admin.id,
                rename,
                audit_about("user.updated", T0 + 4, &admin)
            )
            .await?
    );
    assert_eq!(
        store.member(&org.id, &admin.id).await?.ok_or("gone")?.role,
        "owner"
    );
    // Two Owners demoting each other at once: one of them stays Owner. Several rounds, each
    // with the survivor of the last and a new Owner, so a lost race shows up reliably.
    let mut survivor = admin;
    for round in 0..5_i64 {
        let at = T0 + 10 + round;
        let newcomer = add_user(store, &org, &format!("o{round}@example.com"), "owner", at).await?;
        let (first, other) = tokio::join!(
            store.update_profile(
                &survivor.id,
                to("guest"),
                audit_about("user.role_changed", at, &survivor)
            ),
            store.update_profile(
                &newcomer.id,
                to("guest"),
                audit_about("user.role_changed", at, &newcomer)
            ),
        );
        let (first, other) = (first?, other?);
        assert_eq!(
            u8::from(first) + u8::from(other),
            1,
            "exactly one demotion wins"
        );
        let owners: Vec<User> = store
            .list_users(&org.id, false)
            .await?
            .into_iter()
            .filter(|u| u.role == "owner")
            .collect();
        assert_eq!(owners.len(), 1, "round {round}");
        survivor = owners.into_iter().next().ok_or("no Owner")?;
    }
    Ok(())
}
