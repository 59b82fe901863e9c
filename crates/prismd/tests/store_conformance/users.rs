//! Store conformance: users: creation, pages, profiles, roles.

use super::*;

/// One person in one organization once: the same email again there is refused (as an
/// existing identity, or as a member already); in another organization it is the same
/// identity; after a removal it may be added again, as a new member of the same identity.
pub(super) async fn add_member_conflicts_and_readd(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, _) = org_with_owner(store).await?;
    let user = add_user(store, &org, "a@example.com", "admin", T0 + 1).await?;
    let identity = identity_of(&user)?;
    assert_eq!(
        refused(
            try_add(
                store,
                new_user(&org.id, "a@example.com", "guest", T0 + 2),
                None
            )
            .await?
        )?,
        Refusal::IdentityExists
    );
    for join in [JoinExisting::AtOnce, JoinExisting::Pending] {
        let again = joining(&org.id, "a@example.com", "guest", T0 + 2, join);
        assert_eq!(
            refused(try_add(store, again, None).await?)?,
            Refusal::AlreadyMember,
            "{join:?}"
        );
    }
    assert_eq!(store.list_users(&org.id, true).await?.len(), 2);
    // The same address in another organization is the same identity.
    let other = another_org(store, "Other", T0 + 1).await?;
    let elsewhere = added(
        try_add(
            store,
            joining(
                &other.id,
                "a@example.com",
                "owner",
                T0 + 3,
                JoinExisting::AtOnce,
            ),
            None,
        )
        .await?,
    )?;
    assert!(!elsewhere.new_identity);
    assert_eq!(
        elsewhere.user.identity_id.as_deref(),
        Some(identity.as_str())
    );
    assert_eq!(
        store
            .remove_user(&user.id, T0 + 4, None, audit("user.remove", T0 + 4))
            .await?,
        Ok(())
    );
    let readded = added(
        try_add(
            store,
            joining(
                &org.id,
                "a@example.com",
                "guest",
                T0 + 5,
                JoinExisting::AtOnce,
            ),
            None,
        )
        .await?,
    )?;
    assert!(!readded.new_identity, "the identity outlives its members");
    let readded = readded.user;
    assert_ne!(readded.id, user.id);
    assert_eq!(readded.identity_id.as_deref(), Some(identity.as_str()));
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
    // The identity's organizations: the removed member is not one of them.
    let orgs: Vec<(String, String)> = store
        .memberships(&identity)
        .await?
        .into_iter()
        .map(|m| (m.org.id, m.user.id))
        .collect();
    assert_eq!(
        orgs,
        vec![
            (org.id.clone(), readded.id.clone()),
            (other.id.clone(), elsewhere.user.id.clone())
        ],
        "oldest organization first"
    );
    let credentials = store
        .identity_by_email("a@example.com")
        .await?
        .ok_or("no identity")?;
    assert_eq!(credentials.identity.id, identity);
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
    assert_eq!(
        store
            .remove_user(&gone.id, T0 + 9, None, audit("user.remove", T0 + 9))
            .await?,
        Ok(())
    );
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
    assert_eq!(
        store
            .update_profile(
                &owner.id,
                changes,
                Some(&owner.id),
                audit("profile", T0 + 7)
            )
            .await?,
        Ok(())
    );
    let changed = store.active_user(&owner.id).await?.ok_or("gone")?;
    assert_eq!(changed.name, "New Name");
    assert!(changed.dark_mode);
    assert!(changed.dark_mode_sync_with_os, "untouched fields stay");
    assert_eq!(changed.phone, None);
    assert_eq!(changed.updated_at, T0 + 7);
    assert_eq!(
        store
            .update_profile(
                "nobody",
                ProfileChanges::default(),
                None,
                audit("profile", T0)
            )
            .await?,
        Err(Refusal::NotFound)
    );
    let identity = identity_of(&owner)?;
    assert!(
        !store
            .identity(&identity)
            .await?
            .ok_or("no identity")?
            .has_password
    );
    assert!(
        store
            .set_identity_password(&identity, "$argon2id$x", audit("pw", T0 + 8))
            .await?
    );
    assert!(
        store
            .identity(&identity)
            .await?
            .ok_or("no identity")?
            .has_password
    );
    assert!(
        !store
            .set_identity_password("nobody", "h", audit("pw", T0))
            .await?
    );
    let credentials = store
        .identity_by_email("owner@example.com")
        .await?
        .ok_or("no identity")?;
    assert_eq!(credentials.identity.id, identity);
    assert_eq!(credentials.password_hash.as_deref(), Some("$argon2id$x"));
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
    // The last Owner cannot be demoted, not by itself nor by an operator; nothing changes and
    // nothing is audited.
    for actor in [Some(owner.id.as_str()), None] {
        assert_eq!(
            store
                .update_profile(
                    &owner.id,
                    to("admin"),
                    actor,
                    audit_about("user.role_changed", T0 + 1, &owner)
                )
                .await?,
            Err(Refusal::LastOwner)
        );
    }
    assert_eq!(
        store.member(&org.id, &owner.id).await?.ok_or("gone")?.role,
        "owner"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM audit_events").await?, before);
    // With a second Owner, the first may step down.
    assert_eq!(
        store
            .update_profile(
                &admin.id,
                to("owner"),
                Some(&owner.id),
                audit_about("user.role_changed", T0 + 2, &admin)
            )
            .await?,
        Ok(())
    );
    assert_eq!(
        store
            .update_profile(
                &owner.id,
                to("guest"),
                Some(&owner.id),
                audit_about("user.role_changed", T0 + 3, &owner)
            )
            .await?,
        Ok(())
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
    assert_eq!(
        store
            .update_profile(
                &admin.id,
                rename,
                Some(&admin.id),
                audit_about("user.updated", T0 + 4, &admin)
            )
            .await?,
        Ok(())
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
                Some(&newcomer.id),
                audit_about("user.role_changed", at, &survivor)
            ),
            store.update_profile(
                &newcomer.id,
                to("guest"),
                Some(&survivor.id),
                audit_about("user.role_changed", at, &newcomer)
            ),
        );
        let (first, other) = (first?, other?);
        assert_eq!(
            u8::from(first.is_ok()) + u8::from(other.is_ok()),
            1,
            "exactly one demotion wins: {first:?} {other:?}"
        );
        // The loser is refused either as no longer an Owner (Forbidden) or as the last one.
        for outcome in [first, other] {
            assert!(
                matches!(
                    outcome,
                    Ok(()) | Err(Refusal::Forbidden | Refusal::LastOwner)
                ),
                "{outcome:?}"
            );
        }
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

/// The members [`actor_rules_fixture`] sets up in one organization (and one elsewhere).
pub(super) struct Cast {
    pub(super) org: Organization,
    pub(super) owner: User,
    pub(super) admin: User,
    pub(super) guest: User,
    pub(super) integrator: User,
    /// An Admin whose membership waits for its identity to accept it.
    pub(super) pending: User,
    /// An Admin who was removed.
    pub(super) removed: User,
    /// An Owner of another organization.
    pub(super) stranger: User,
}

/// One Owner, an Admin, a Guest, an Integrator, a pending Admin and a removed Admin, and an
/// Owner of another organization.
pub(super) async fn actor_rules_fixture(store: &dyn Store) -> Result<Cast, TestError> {
    let (org, owner) = org_with_owner(store).await?;
    let admin = add_user(store, &org, "admin@example.com", "admin", T0 + 1).await?;
    let guest = add_user(store, &org, "guest@example.com", "guest", T0 + 1).await?;
    let integrator = add_user(store, &org, "int@example.com", "integrator", T0 + 1).await?;
    let elsewhere = another_org(store, "Elsewhere", T0).await?;
    let stranger = add_user(store, &elsewhere, "stranger@example.com", "owner", T0 + 1).await?;
    add_user(store, &elsewhere, "pending@example.com", "guest", T0 + 1).await?;
    let pending = added(
        try_add(
            store,
            joining(
                &org.id,
                "pending@example.com",
                "admin",
                T0 + 1,
                JoinExisting::Pending,
            ),
            Some(&owner.id),
        )
        .await?,
    )?
    .user;
    assert_eq!(pending.joined_at, None);
    let removed = add_user(store, &org, "removed@example.com", "admin", T0 + 1).await?;
    assert_eq!(
        store
            .remove_user(&removed.id, T0 + 2, None, audit("user.removed", T0 + 2))
            .await?,
        Ok(())
    );
    Ok(Cast {
        org,
        owner,
        admin,
        guest,
        integrator,
        pending,
        removed,
        stranger,
    })
}

/// Who may change whom, decided in the write: everyone their own profile (without the role);
/// Owners anyone; Admins non-Owners, never making Owners; nobody else, nor anyone removed,
/// pending or of another organization; the last joined Owner keeps the role; an operator
/// (no actor) anything but that. A refusal writes nothing, not even its audit row.
pub(super) async fn profile_changes_follow_actor_rules(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let cast = actor_rules_fixture(store).await?;
    let Cast {
        org,
        owner,
        admin,
        guest,
        integrator,
        pending,
        removed,
        stranger,
    } = &cast;
    let rename = |name: &str| ProfileChanges {
        name: Some(name.into()),
        ..ProfileChanges::default()
    };
    let to = |role: &str| ProfileChanges {
        role: Some(role.into()),
        ..ProfileChanges::default()
    };
    let change = |target: &User, changes: ProfileChanges, actor: &User| {
        let event = audit_about("user.updated", T0 + 5, target);
        let (target, actor) = (target.id.clone(), actor.id.clone());
        async move {
            store
                .update_profile(&target, changes, Some(&actor), event)
                .await
        }
    };
    let audited = db.count("SELECT COUNT(*) FROM audit_events").await?;
    // Refused, whatever the change.
    let refusals = [
        (
            owner,
            rename("by admin"),
            admin,
            "an Admin renames an Owner",
        ),
        (owner, to("guest"), admin, "an Admin demotes an Owner"),
        (guest, to("owner"), admin, "an Admin makes an Owner"),
        (admin, to("owner"), admin, "an Admin makes itself Owner"),
        (
            integrator,
            rename("by guest"),
            guest,
            "a Guest renames another",
        ),
        (guest, to("admin"), guest, "a Guest changes its own role"),
        (
            guest,
            rename("by integrator"),
            integrator,
            "an Integrator renames another",
        ),
        (
            guest,
            rename("by removed"),
            removed,
            "a removed Admin renames",
        ),
        (
            guest,
            rename("by pending"),
            pending,
            "a pending Admin renames",
        ),
        (
            guest,
            to("integrator"),
            pending,
            "a pending Admin changes a role",
        ),
        (
            guest,
            rename("by stranger"),
            stranger,
            "another organization's Owner",
        ),
    ];
    for (target, changes, actor, what) in refusals {
        assert_eq!(
            change(target, changes, actor).await?,
            Err(Refusal::Forbidden),
            "{what}"
        );
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await?,
        audited,
        "a refusal was audited"
    );
    let name_of = |user: &User| {
        let id = user.id.clone();
        async move {
            Ok::<_, TestError>(
                store
                    .member(&org.id, &id)
                    .await?
                    .ok_or("no such member")?
                    .name,
            )
        }
    };
    assert_eq!(name_of(owner).await?, owner.name, "a refused rename landed");
    assert_eq!(name_of(integrator).await?, integrator.name);

    // Allowed.
    let allowed = [
        (guest, rename("by admin"), admin, "an Admin renames a Guest"),
        (
            guest,
            to("integrator"),
            admin,
            "an Admin changes a Guest's role",
        ),
        (guest, to("guest"), admin, "... and back"),
        (admin, to("admin"), admin, "an Admin keeps its own role"),
        (guest, rename("own"), guest, "a Guest renames itself"),
        (
            integrator,
            rename("own"),
            integrator,
            "an Integrator renames itself",
        ),
        (
            pending,
            rename("own"),
            pending,
            "a pending member renames itself",
        ),
        (
            admin,
            rename("by owner"),
            owner,
            "an Owner renames an Admin",
        ),
        (admin, to("owner"), owner, "an Owner makes an Owner"),
    ];
    for (target, changes, actor, what) in allowed {
        assert_eq!(change(target, changes, actor).await?, Ok(()), "{what}");
    }
    assert_eq!(name_of(guest).await?, "own");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await?,
        audited + 9,
        "one audit row per change"
    );
    // Now two Owners: an operator demotes one; the other is the last joined Owner (a pending
    // Owner does not count), whom neither an operator nor itself demotes.
    assert_eq!(
        store
            .update_profile(&admin.id, to("admin"), None, audit("user.updated", T0 + 6))
            .await?,
        Ok(())
    );
    let elsewhere = store
        .memberships(&identity_of(stranger)?)
        .await?
        .into_iter()
        .next()
        .ok_or("no membership")?
        .org;
    add_user(
        store,
        &elsewhere,
        "future-owner@example.com",
        "guest",
        T0 + 6,
    )
    .await?;
    added(
        try_add(
            store,
            joining(
                &org.id,
                "future-owner@example.com",
                "owner",
                T0 + 6,
                JoinExisting::Pending,
            ),
            Some(&owner.id),
        )
        .await?,
    )?;
    for actor in [Some(owner.id.as_str()), None] {
        assert_eq!(
            store
                .update_profile(&owner.id, to("admin"), actor, audit("user.updated", T0 + 7))
                .await?,
            Err(Refusal::LastOwner),
            "{actor:?}"
        );
    }
    assert_eq!(
        change(owner, rename("still the Owner"), owner).await?,
        Ok(()),
        "the last Owner renames itself"
    );
    // Unknown and removed targets.
    for target in ["nobody", removed.id.as_str()] {
        assert_eq!(
            store
                .update_profile(target, rename("x"), None, audit("user.updated", T0 + 8))
                .await?,
            Err(Refusal::NotFound)
        );
        assert_eq!(
            store
                .update_profile(
                    target,
                    rename("x"),
                    Some(target),
                    audit("user.updated", T0 + 8)
                )
                .await?,
            Err(Refusal::NotFound)
        );
    }
    Ok(())
}

/// Who may remove whom, decided in the write: Owners anyone, Admins non-Owners, nobody else
/// (nor anyone removed, pending or of another organization), an operator anyone; never the
/// last joined Owner. A refusal writes nothing.
pub(super) async fn removals_follow_actor_rules(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let cast = actor_rules_fixture(store).await?;
    let Cast {
        org,
        owner,
        admin,
        guest,
        integrator,
        pending,
        removed,
        stranger,
    } = &cast;
    let remove = |target: &User, actor: &User| {
        let event = audit_about("user.removed", T0 + 5, target);
        let (target, actor) = (target.id.clone(), actor.id.clone());
        async move {
            store
                .remove_user(&target, T0 + 5, Some(&actor), event)
                .await
        }
    };
    let audited = db.count("SELECT COUNT(*) FROM audit_events").await?;
    let refusals = [
        (owner, admin, "an Admin removes an Owner"),
        (integrator, guest, "a Guest removes another"),
        (guest, integrator, "an Integrator removes another"),
        (guest, removed, "a removed Admin removes"),
        (guest, pending, "a pending Admin removes"),
        (guest, stranger, "another organization's Owner removes"),
    ];
    for (target, actor, what) in refusals {
        assert_eq!(
            remove(target, actor).await?,
            Err(Refusal::Forbidden),
            "{what}"
        );
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await?,
        audited,
        "a refusal was audited"
    );
    assert_eq!(store.list_users(&org.id, false).await?.len(), 5);
    // The last joined Owner stays, for itself and for an operator, though a pending Owner
    // waits (it does not count) ...
    let elsewhere = store
        .memberships(&identity_of(stranger)?)
        .await?
        .into_iter()
        .next()
        .ok_or("no membership")?
        .org;
    add_user(
        store,
        &elsewhere,
        "future-owner@example.com",
        "guest",
        T0 + 3,
    )
    .await?;
    let pending_owner = added(
        try_add(
            store,
            joining(
                &org.id,
                "future-owner@example.com",
                "owner",
                T0 + 3,
                JoinExisting::Pending,
            ),
            Some(&owner.id),
        )
        .await?,
    )?
    .user;
    assert_eq!(remove(owner, owner).await?, Err(Refusal::LastOwner));
    assert_eq!(
        store
            .remove_user(&owner.id, T0 + 5, None, audit("user.removed", T0 + 5))
            .await?,
        Err(Refusal::LastOwner)
    );
    // ... and removing a pending Owner leaves the joined one.
    assert_eq!(remove(&pending_owner, owner).await?, Ok(()));
    // Allowed.
    assert_eq!(
        remove(guest, admin).await?,
        Ok(()),
        "an Admin removes a Guest"
    );
    assert_eq!(
        remove(admin, owner).await?,
        Ok(()),
        "an Owner removes an Admin"
    );
    assert_eq!(
        store
            .remove_user(&integrator.id, T0 + 5, None, audit("user.removed", T0 + 5))
            .await?,
        Ok(()),
        "an operator removes anyone"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await?,
        audited + 2 + 4,
        "one audit row per removal (and per add)"
    );
    let left: Vec<String> = store
        .list_users(&org.id, false)
        .await?
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(left, vec![owner.id.clone(), pending.id.clone()]);
    // Unknown and removed targets.
    for target in ["nobody", guest.id.as_str()] {
        assert_eq!(
            store
                .remove_user(target, T0 + 6, None, audit("user.removed", T0 + 6))
                .await?,
            Err(Refusal::NotFound)
        );
        assert_eq!(
            store
                .remove_user(
                    target,
                    T0 + 6,
                    Some(&owner.id),
                    audit("user.removed", T0 + 6)
                )
                .await?,
            Err(Refusal::NotFound)
        );
    }
    Ok(())
}

/// A member who may not remove others may not remove itself either: the refusal says so
/// (Forbidden), not that the organization would lose its last Owner (it has one).
pub(super) async fn removing_oneself_without_the_role_is_forbidden(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let cast = actor_rules_fixture(store).await?;
    for member in [&cast.guest, &cast.integrator, &cast.pending] {
        assert_eq!(
            store
                .remove_user(
                    &member.id,
                    T0 + 5,
                    Some(&member.id),
                    audit_about("user.removed", T0 + 5, member)
                )
                .await?,
            Err(Refusal::Forbidden),
            "{} ({}) removing itself",
            member.email,
            member.role
        );
    }
    assert_eq!(
        store.list_users(&cast.org.id, false).await?.len(),
        5,
        "a self-removal went through"
    );
    Ok(())
}
