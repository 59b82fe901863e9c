//! Store conformance: identities (one per email, one password) and their members (one per
//! organization): adding people, memberships and accepting them, passwords, invitations and
//! password resets.

use super::*;

/// How many audit rows there are.
async fn audit_rows(db: &Db) -> Result<i64, TestError> {
    db.count("SELECT COUNT(*) FROM audit_events").await
}

/// The identity with this id, which must exist.
async fn identity(store: &dyn Store, id: &str) -> Result<Identity, TestError> {
    Ok(store.identity(id).await?.ok_or("no such identity")?)
}

/// The password hash of the identity with this email.
async fn password_of(store: &dyn Store, email: &str) -> Result<Option<String>, TestError> {
    Ok(store
        .identity_by_email(email)
        .await?
        .ok_or("no such identity")?
        .password_hash)
}

/// The newest `count` audit rows with `action`, newest first.
async fn newest_rows(
    store: &dyn Store,
    action: &str,
    count: usize,
) -> Result<Vec<AuditRecord>, TestError> {
    Ok(recent_events(store, 1000)
        .await?
        .into_iter()
        .filter(|event| event.action == action)
        .take(count)
        .collect())
}

/// The (organization, subject) pairs of audit rows, sorted.
fn orgs_and_subjects(rows: &[AuditRecord]) -> Vec<(Option<String>, Option<String>)> {
    let mut pairs: Vec<_> = rows
        .iter()
        .map(|row| (row.org_id.clone(), row.subject_user_id.clone()))
        .collect();
    pairs.sort();
    pairs
}

/// `(org, member)` of each member, sorted, as [`orgs_and_subjects`] reads them.
fn members_of(users: &[&User]) -> Vec<(Option<String>, Option<String>)> {
    let mut pairs: Vec<_> = users
        .iter()
        .map(|user| (Some(user.org_id.clone()), Some(user.id.clone())))
        .collect();
    pairs.sort();
    pairs
}

/// A new email creates an identity and a joined member; an existing one joins another
/// organization as asked (pending, at once, or not at all), never twice in one organization,
/// and never with a password given by whoever adds it. The member returned is the one stored.
/// A refused add writes nothing (not even the identity it would have created).
pub(super) async fn add_member_joins_existing_identities(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (a, owner) = org_with_owner(store).await?;
    let b = another_org(store, "B", T0 + 1).await?;
    let c = another_org(store, "C", T0 + 2).await?;
    let d = another_org(store, "D", T0 + 3).await?;

    let first = added(
        try_add(
            store,
            new_user(&a.id, "p@example.com", "admin", T0 + 10),
            Some(&owner.id),
        )
        .await?,
    )?;
    assert!(first.new_identity);
    let person = identity_of(&first.user)?;
    assert_eq!(
        first.user.joined_at,
        Some(T0 + 10),
        "a new identity joins at once"
    );
    assert_eq!(
        (first.user.email.as_str(), first.user.role.as_str()),
        ("p@example.com", "admin")
    );
    assert_eq!(first.user.token_epoch, 0);
    assert_eq!(
        store.member(&a.id, &first.user.id).await?,
        Some(first.user.clone())
    );
    assert_eq!(
        store.active_user(&first.user.id).await?,
        Some(first.user.clone())
    );
    assert_eq!(
        identity(store, &person).await?,
        Identity {
            id: person.clone(),
            email: "p@example.com".into(),
            email_verified: false,
            has_password: false,
            invited_by_org: None,
            created_at: T0 + 10,
        }
    );

    // Pending in B: the same identity, not joined, not signing in there.
    let pending = added(
        try_add(
            store,
            joining(
                &b.id,
                "p@example.com",
                "guest",
                T0 + 11,
                JoinExisting::Pending,
            ),
            None,
        )
        .await?,
    )?;
    assert!(!pending.new_identity);
    assert_eq!(pending.user.identity_id.as_deref(), Some(person.as_str()));
    assert_eq!(pending.user.joined_at, None);
    assert!(!pending.user.is_joined());
    assert_eq!(
        store.member(&b.id, &pending.user.id).await?,
        Some(pending.user.clone())
    );
    assert_eq!(store.active_user(&pending.user.id).await?, None);
    // At once in C.
    let at_once = added(
        try_add(
            store,
            joining(
                &c.id,
                "p@example.com",
                "guest",
                T0 + 12,
                JoinExisting::AtOnce,
            ),
            None,
        )
        .await?,
    )?;
    assert!(!at_once.new_identity);
    assert_eq!(at_once.user.identity_id.as_deref(), Some(person.as_str()));
    assert_eq!(at_once.user.joined_at, Some(T0 + 12));
    assert_eq!(
        store.active_user(&at_once.user.id).await?,
        Some(at_once.user.clone())
    );

    // Refusals, none of which writes anything.
    let before = audit_rows(&db).await?;
    assert_eq!(
        refused(
            try_add(
                store,
                new_user(&d.id, "p@example.com", "guest", T0 + 13),
                None
            )
            .await?
        )?,
        Refusal::IdentityExists,
        "an add that only creates identities"
    );
    for join in [JoinExisting::AtOnce, JoinExisting::Pending] {
        let with_password = NewUser {
            password_hash: Some("chosen-by-someone-else".into()),
            ..joining(&d.id, "p@example.com", "guest", T0 + 13, join)
        };
        assert_eq!(
            refused(try_add(store, with_password, None).await?)?,
            Refusal::IdentityExists,
            "a password for an existing identity ({join:?})"
        );
    }
    assert!(store.list_users(&d.id, true).await?.is_empty());
    assert_eq!(password_of(store, "p@example.com").await?, None);
    for (org, join) in [
        (&a, JoinExisting::AtOnce),
        (&a, JoinExisting::Pending),
        (&b, JoinExisting::AtOnce),
        (&b, JoinExisting::Pending),
        (&c, JoinExisting::Pending),
    ] {
        assert_eq!(
            refused(
                try_add(
                    store,
                    joining(&org.id, "p@example.com", "guest", T0 + 13, join),
                    None
                )
                .await?
            )?,
            Refusal::AlreadyMember,
            "{} {join:?}",
            org.name
        );
    }
    assert_eq!(
        refused(
            try_add(
                store,
                new_user(&a.id, "ghost@example.com", "owner", T0 + 13),
                Some(&first.user.id)
            )
            .await?
        )?,
        Refusal::Forbidden
    );
    assert!(
        store
            .identity_by_email("ghost@example.com")
            .await?
            .is_none(),
        "a refused add left its new identity behind"
    );
    assert_eq!(audit_rows(&db).await?, before, "a refused add was audited");
    assert_eq!(store.memberships(&person).await?.len(), 3);

    // A new identity may come with its first password (an operator's), and with the
    // organization that invited it.
    let with_password = added(
        try_add(
            store,
            NewUser {
                password_hash: Some("$argon2id$first".into()),
                invited_by_org: Some(d.id.clone()),
                ..new_user(&d.id, "q@example.com", "owner", T0 + 14)
            },
            None,
        )
        .await?,
    )?;
    assert!(with_password.new_identity);
    let credentials = store
        .identity_by_email("q@example.com")
        .await?
        .ok_or("no identity")?;
    assert_eq!(
        credentials.password_hash.as_deref(),
        Some("$argon2id$first")
    );
    assert!(credentials.identity.has_password);
    assert!(!credentials.identity.email_verified);
    assert_eq!(credentials.identity.invited_by_org, Some(d.id.clone()));
    assert_eq!(audit_rows(&db).await?, before + 1);
    Ok(())
}

/// Who may add whom, decided in the write: Owners anyone, Admins anyone but Owners, nobody
/// else (nor anyone removed, pending or of another organization), an operator anyone.
pub(super) async fn add_member_follows_actor_rules(db: Db) -> TestResult {
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
    let before = audit_rows(&db).await?;
    let refusals = [
        (admin, "owner", "an Admin adds an Owner"),
        (guest, "guest", "a Guest adds"),
        (integrator, "guest", "an Integrator adds"),
        (removed, "guest", "a removed Admin adds"),
        (pending, "guest", "a pending Admin adds"),
        (stranger, "guest", "another organization's Owner adds"),
    ];
    for (n, (actor, role, what)) in refusals.into_iter().enumerate() {
        let email = format!("refused{n}@example.com");
        assert_eq!(
            refused(
                try_add(
                    store,
                    new_user(&org.id, &email, role, T0 + 5),
                    Some(&actor.id)
                )
                .await?
            )?,
            Refusal::Forbidden,
            "{what}"
        );
        assert!(store.identity_by_email(&email).await?.is_none(), "{what}");
    }
    // Joining an existing identity follows the same rules.
    assert_eq!(
        refused(
            try_add(
                store,
                joining(
                    &org.id,
                    "stranger@example.com",
                    "owner",
                    T0 + 5,
                    JoinExisting::Pending
                ),
                Some(&admin.id)
            )
            .await?
        )?,
        Refusal::Forbidden
    );
    assert_eq!(audit_rows(&db).await?, before, "a refusal was audited");
    let allowed = [
        (Some(admin), "admin", "an Admin adds an Admin"),
        (Some(admin), "guest", "an Admin adds a Guest"),
        (Some(owner), "owner", "an Owner adds an Owner"),
        (None, "owner", "an operator adds an Owner"),
    ];
    for (n, (actor, role, what)) in allowed.into_iter().enumerate() {
        let email = format!("allowed{n}@example.com");
        let user = added(
            try_add(
                store,
                new_user(&org.id, &email, role, T0 + 6),
                actor.map(|a| a.id.as_str()),
            )
            .await?,
        )
        .map_err(|err| format!("{what}: {err}"))?
        .user;
        assert_eq!(user.role, role, "{what}");
    }
    let joined = added(
        try_add(
            store,
            joining(
                &org.id,
                "stranger@example.com",
                "guest",
                T0 + 7,
                JoinExisting::Pending,
            ),
            Some(&admin.id),
        )
        .await?,
    )?;
    assert_eq!(joined.user.identity_id, stranger.identity_id);
    assert_eq!(audit_rows(&db).await?, before + 5);
    Ok(())
}

/// An identity read by id or by email: with its password hash or without one, and whether
/// it has one; unknown ones are not found.
pub(super) async fn identities_by_id_and_email(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (_, owner) = org_with_owner(store).await?;
    let id = identity_of(&owner)?;
    assert_eq!(store.identity("no-such-identity").await?, None);
    assert!(
        store
            .identity_by_email("nobody@example.com")
            .await?
            .is_none()
    );
    let without = store
        .identity_by_email("owner@example.com")
        .await?
        .ok_or("no identity")?;
    assert_eq!(without.password_hash, None);
    assert!(!without.identity.has_password);
    assert_eq!(without.identity, identity(store, &id).await?);
    assert_eq!(without.identity.email, "owner@example.com");
    assert_eq!(without.identity.created_at, T0);
    assert!(
        store
            .set_identity_password(&id, "$argon2id$h", audit("pw", T0 + 1))
            .await?
    );
    let with = store
        .identity_by_email("owner@example.com")
        .await?
        .ok_or("no identity")?;
    assert_eq!(with.password_hash.as_deref(), Some("$argon2id$h"));
    assert!(with.identity.has_password);
    assert_eq!(with.identity, identity(store, &id).await?);
    // Emails are stored as given (the domain normalises them first).
    assert!(store.identity_by_email("owner@example.co").await?.is_none());
    Ok(())
}

/// An identity's memberships: joined and pending ones, with their organizations, oldest
/// organization first; removed ones are not among them. Only a joined member is active.
pub(super) async fn memberships_joined_and_pending(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (a, _) = org_with_owner(store).await?;
    // Created in this order: A, B, C, D; joined in another.
    let b = another_org(store, "B", T0 + 5).await?;
    let c = another_org(store, "C", T0 + 6).await?;
    let d = another_org(store, "D", T0 + 2).await?;
    let in_c = add_user(store, &c, "p@example.com", "guest", T0 + 10).await?;
    let person = identity_of(&in_c)?;
    let join = |org: &Organization, join: JoinExisting, at: i64| {
        joining(&org.id, "p@example.com", "guest", at, join)
    };
    let in_b = added(try_add(store, join(&b, JoinExisting::Pending, T0 + 11), None).await?)?.user;
    let in_a = added(try_add(store, join(&a, JoinExisting::AtOnce, T0 + 12), None).await?)?.user;
    let in_d = added(try_add(store, join(&d, JoinExisting::AtOnce, T0 + 13), None).await?)?.user;
    assert_eq!(
        store
            .remove_user(&in_d.id, T0 + 14, None, audit("user.removed", T0 + 14))
            .await?,
        Ok(())
    );
    let memberships = store.memberships(&person).await?;
    let orgs: Vec<&Organization> = memberships.iter().map(|m| &m.org).collect();
    assert_eq!(orgs, vec![&a, &b, &c], "oldest organization first");
    let users: Vec<&User> = memberships.iter().map(|m| &m.user).collect();
    assert_eq!(users, vec![&in_a, &in_b, &in_c]);
    assert_eq!(memberships[1].user.joined_at, None, "pending is listed");
    assert!(memberships.iter().all(|m| m.user.org_id == m.org.id));
    assert!(store.memberships("no-such-identity").await?.is_empty());
    // Only joined members are active users (sign in, hold tokens).
    assert_eq!(store.active_user(&in_a.id).await?, Some(in_a.clone()));
    assert_eq!(store.active_user(&in_b.id).await?, None);
    assert_eq!(store.active_user(&in_d.id).await?, None);
    assert_eq!(store.active_user("nobody").await?, None);
    Ok(())
}

/// A pending membership is accepted by its own identity, once, and only when the identity's
/// email is verified (a password chosen through a mailed link); a joined or removed member,
/// or another identity's, is not accepted. Each acceptance is audited; a refusal is not.
pub(super) async fn accept_membership_needs_a_verified_email(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (a, owner) = org_with_owner(store).await?;
    let b = another_org(store, "B", T0 + 1).await?;
    let in_a = add_user(store, &a, "p@example.com", "guest", T0 + 2).await?;
    let person = identity_of(&in_a)?;
    let pending = |org: &Organization, email: &str, at: i64| {
        joining(&org.id, email, "guest", at, JoinExisting::Pending)
    };
    let in_b = added(try_add(store, pending(&b, "p@example.com", T0 + 3), None).await?)?.user;
    let accept = |identity: &str, user: &User, at: i64| {
        let (identity, user_id) = (identity.to_owned(), user.id.clone());
        let event = audit_about("user.joined", at, user);
        async move { store.accept_membership(&identity, &user_id, event).await }
    };
    let before = audit_rows(&db).await?;
    assert!(
        !accept(&person, &in_b, T0 + 4).await?,
        "an unverified email accepted"
    );
    assert_eq!(audit_rows(&db).await?, before, "a refusal was audited");
    // A password set by an operator proves nothing about the address.
    assert!(
        store
            .set_identity_password(&person, "h", audit("pw", T0 + 5))
            .await?
    );
    assert!(!identity(store, &person).await?.email_verified);
    let before = audit_rows(&db).await?;
    assert!(!accept(&person, &in_b, T0 + 6).await?);
    assert_eq!(audit_rows(&db).await?, before, "a refusal was audited");
    assert_eq!(store.active_user(&in_b.id).await?, None);

    // Verified through a mailed reset link.
    store
        .insert_password_reset(&hash(1), &person, T0 + 10_000, audit("reset", T0 + 7))
        .await?;
    assert!(
        store
            .accept_password_reset(&hash(1), "h2", audit("reset.used", T0 + 8))
            .await?
    );
    assert!(identity(store, &person).await?.email_verified);
    let before = audit_rows(&db).await?;
    assert!(!accept(&person, &in_a, T0 + 9).await?, "already joined");
    assert!(
        !accept(&identity_of(&owner)?, &in_b, T0 + 9).await?,
        "another identity's membership"
    );
    assert!(!accept(&person, &owner, T0 + 9).await?);
    assert!(
        !accept(
            &person,
            &User {
                id: "nobody".into(),
                ..in_b.clone()
            },
            T0 + 9
        )
        .await?
    );
    assert_eq!(audit_rows(&db).await?, before);
    assert!(accept(&person, &in_b, T0 + 10).await?);
    let joined = store.active_user(&in_b.id).await?.ok_or("not joined")?;
    assert_eq!(joined.joined_at, Some(T0 + 10));
    assert_eq!(joined.updated_at, T0 + 10);
    assert!(!accept(&person, &in_b, T0 + 11).await?, "accepted twice");
    assert_eq!(audit_rows(&db).await?, before + 1);
    let row = &newest_rows(store, "user.joined", 1).await?[0];
    assert_eq!(row.subject_user_id.as_deref(), Some(in_b.id.as_str()));

    // A removed pending membership cannot be accepted.
    let c = another_org(store, "C", T0 + 12).await?;
    let in_c = added(try_add(store, pending(&c, "p@example.com", T0 + 12), None).await?)?.user;
    assert_eq!(
        store
            .remove_user(&in_c.id, T0 + 13, None, audit("user.removed", T0 + 13))
            .await?,
        Ok(())
    );
    assert!(!accept(&person, &in_c, T0 + 14).await?);

    // Verified through a mailed invitation (a handed one proves nothing).
    let mailed = add_user(store, &a, "mailed@example.com", "guest", T0 + 20).await?;
    let handed = add_user(store, &a, "handed@example.com", "guest", T0 + 20).await?;
    for (seed, user, delivery) in [
        (2, &mailed, Delivery::Email),
        (3, &handed, Delivery::Handed),
    ] {
        store
            .insert_invitation(
                &hash(seed),
                &user.id,
                T0 + 10_000,
                delivery,
                audit_about("user.invited", T0 + 21, user),
            )
            .await?;
        assert!(
            store
                .accept_invitation(&hash(seed), "h", audit("invite.used", T0 + 22))
                .await?
        );
    }
    let mailed_in_b =
        added(try_add(store, pending(&b, "mailed@example.com", T0 + 23), None).await?)?.user;
    let handed_in_b =
        added(try_add(store, pending(&b, "handed@example.com", T0 + 23), None).await?)?.user;
    assert!(accept(&identity_of(&mailed)?, &mailed_in_b, T0 + 24).await?);
    assert!(!accept(&identity_of(&handed)?, &handed_in_b, T0 + 24).await?);
    Ok(())
}

/// A new password for an identity: its hash replaces the old, every browser session of the
/// identity (and no other) ends, the organization that was handed its first link is
/// forgotten, and each active member (joined or pending, not removed) gets an audit row in
/// its organization (one about no one when it has none). An unknown identity changes nothing.
pub(super) async fn set_identity_password_for_every_member(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (a, owner) = org_with_owner(store).await?;
    let b = another_org(store, "B", T0 + 1).await?;
    let c = another_org(store, "C", T0 + 2).await?;
    let in_a = added(
        try_add(
            store,
            NewUser {
                invited_by_org: Some(a.id.clone()),
                ..new_user(&a.id, "p@example.com", "guest", T0 + 3)
            },
            None,
        )
        .await?,
    )?
    .user;
    let person = identity_of(&in_a)?;
    assert_eq!(
        identity(store, &person).await?.invited_by_org,
        Some(a.id.clone())
    );
    let join = |org: &Organization, join: JoinExisting| {
        joining(&org.id, "p@example.com", "guest", T0 + 4, join)
    };
    let in_b = added(try_add(store, join(&b, JoinExisting::Pending), None).await?)?.user;
    let in_c = added(try_add(store, join(&c, JoinExisting::AtOnce), None).await?)?.user;
    assert_eq!(
        store
            .remove_user(&in_c.id, T0 + 5, None, audit("user.removed", T0 + 5))
            .await?,
        Ok(())
    );
    for seed in [1, 2] {
        store
            .insert_browser_session(&hash(seed), &person, T0, T0 + 10_000)
            .await?;
    }
    store
        .insert_browser_session(&hash(3), &identity_of(&owner)?, T0, T0 + 10_000)
        .await?;

    let before = audit_rows(&db).await?;
    let event = AuditEvent {
        actor: "operator".into(),
        ..audit("user.password_changed", T0 + 6)
    };
    assert!(
        store
            .set_identity_password(&person, "$argon2id$new", event)
            .await?
    );
    assert_eq!(
        audit_rows(&db).await?,
        before + 2,
        "one row per active member"
    );
    let rows = newest_rows(store, "user.password_changed", 2).await?;
    assert_eq!(orgs_and_subjects(&rows), members_of(&[&in_a, &in_b]));
    assert!(
        rows.iter()
            .all(|row| row.actor == "operator" && row.at == T0 + 6)
    );
    let now = identity(store, &person).await?;
    assert!(now.has_password);
    assert_eq!(
        now.invited_by_org, None,
        "the first-link organization stays"
    );
    assert!(
        !now.email_verified,
        "an operator's password verified the email"
    );
    assert_eq!(
        password_of(store, "p@example.com").await?.as_deref(),
        Some("$argon2id$new")
    );
    assert_eq!(store.browser_session(&hash(1), T0 + 7).await?, None);
    assert_eq!(store.browser_session(&hash(2), T0 + 7).await?, None);
    assert!(
        store.browser_session(&hash(3), T0 + 7).await?.is_some(),
        "another identity's session ended"
    );
    // Again: the new hash replaces the old one.
    assert!(
        store
            .set_identity_password(&person, "$argon2id$newer", audit("pw", T0 + 8))
            .await?
    );
    assert_eq!(
        password_of(store, "p@example.com").await?.as_deref(),
        Some("$argon2id$newer")
    );

    // An identity with no member left: one row, about no one.
    for member in [&in_a, &in_b] {
        assert_eq!(
            store
                .remove_user(&member.id, T0 + 9, None, audit("user.removed", T0 + 9))
                .await?,
            Ok(())
        );
    }
    let before = audit_rows(&db).await?;
    assert!(
        store
            .set_identity_password(&person, "h", audit("user.password_changed", T0 + 10))
            .await?
    );
    assert_eq!(audit_rows(&db).await?, before + 1);
    let row = &newest_rows(store, "user.password_changed", 1).await?[0];
    assert_eq!(row.subject_user_id, None);

    // Unknown: nothing at all.
    assert!(
        !store
            .set_identity_password("no-such-identity", "h", audit("pw", T0 + 11))
            .await?
    );
    assert_eq!(audit_rows(&db).await?, before + 1);
    Ok(())
}

/// The first password through an invitation: a mailed one verifies the email, a handed one
/// does not; either forgets the organization that was handed the link, and ends the
/// identity's browser sessions. An identity with a password, a removed member, or a spent
/// or expired link is refused, and a refusal changes nothing.
pub(super) async fn invitations_verify_when_emailed(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, _) = org_with_owner(store).await?;
    let invited = |email: &str| NewUser {
        invited_by_org: Some(org.id.clone()),
        ..new_user(&org.id, email, "guest", T0 + 1)
    };
    let invite = |seed: u8, user: &User, expires_at: i64, delivery: Delivery| {
        let (user_id, event) = (user.id.clone(), audit_about("user.invited", T0 + 2, user));
        async move {
            store
                .insert_invitation(&hash(seed), &user_id, expires_at, delivery, event)
                .await
        }
    };
    let mailed = added(try_add(store, invited("mailed@example.com"), None).await?)?.user;
    let handed = added(try_add(store, invited("handed@example.com"), None).await?)?.user;
    for (seed, user, delivery) in [
        (1, &mailed, Delivery::Email),
        (2, &handed, Delivery::Handed),
    ] {
        let person = identity_of(user)?;
        assert_eq!(
            identity(store, &person).await?.invited_by_org,
            Some(org.id.clone())
        );
        invite(seed, user, T0 + 10_000, delivery).await?;
        assert_eq!(
            store.invitation_user(&hash(seed), T0 + 3).await?.as_ref(),
            Some(user)
        );
        store
            .insert_browser_session(&hash(100 + seed), &person, T0, T0 + 10_000)
            .await?;
        let before = audit_rows(&db).await?;
        assert!(
            store
                .accept_invitation(&hash(seed), "$argon2id$first", audit("invite.used", T0 + 4))
                .await?
        );
        assert_eq!(audit_rows(&db).await?, before + 1);
        let row = &newest_rows(store, "invite.used", 1).await?[0];
        assert_eq!(row.subject_user_id.as_deref(), Some(user.id.as_str()));
        let now = identity(store, &person).await?;
        assert!(now.has_password);
        assert_eq!(
            now.email_verified,
            delivery == Delivery::Email,
            "{delivery:?}"
        );
        assert_eq!(now.invited_by_org, None);
        assert_eq!(
            password_of(store, &user.email).await?.as_deref(),
            Some("$argon2id$first")
        );
        assert_eq!(
            store.browser_session(&hash(100 + seed), T0 + 5).await?,
            None
        );
    }

    // A handed link sets a password only while the identity belongs to that organization
    // alone; a refusal leaves the link unspent. An operator's link sets it regardless, and
    // proves nothing about the address.
    let b = another_org(store, "B", T0 + 1).await?;
    let shared = added(try_add(store, invited("shared@example.com"), None).await?)?.user;
    let operators = added(try_add(store, invited("operators@example.com"), None).await?)?.user;
    invite(6, &shared, T0 + 10_000, Delivery::Handed).await?;
    invite(7, &operators, T0 + 10_000, Delivery::Operator).await?;
    let mut elsewhere = Vec::new();
    for email in ["shared@example.com", "operators@example.com"] {
        let joined = joining(&b.id, email, "guest", T0 + 2, JoinExisting::AtOnce);
        elsewhere.push(added(try_add(store, joined, None).await?)?.user);
    }
    let before = audit_rows(&db).await?;
    assert!(
        !store
            .accept_invitation(&hash(6), "handed", audit("invite.used", T0 + 3))
            .await?,
        "a handed link set the password of an identity another organization has"
    );
    assert_eq!(password_of(store, "shared@example.com").await?, None);
    assert_eq!(audit_rows(&db).await?, before);
    assert!(
        store
            .accept_invitation(&hash(7), "operator", audit("invite.used", T0 + 3))
            .await?
    );
    let now = identity(store, &identity_of(&operators)?).await?;
    assert!(now.has_password && !now.email_verified);
    assert_eq!(
        store
            .remove_user(
                &elsewhere[0].id,
                T0 + 4,
                None,
                audit("user.removed", T0 + 4)
            )
            .await?,
        Ok(())
    );
    assert!(
        store
            .accept_invitation(&hash(6), "handed", audit("invite.used", T0 + 5))
            .await?,
        "alone again, the unspent link works"
    );
    assert_eq!(
        password_of(store, "shared@example.com").await?.as_deref(),
        Some("handed")
    );

    // A link made before the identity got a password is dead once it has one.
    let late = add_user(store, &org, "late@example.com", "guest", T0 + 1).await?;
    invite(3, &late, T0 + 10_000, Delivery::Email).await?;
    assert!(
        store
            .set_identity_password(&identity_of(&late)?, "mine", audit("pw", T0 + 5))
            .await?
    );
    assert_eq!(store.invitation_user(&hash(3), T0 + 6).await?, None);
    let before = audit_rows(&db).await?;
    assert!(
        !store
            .accept_invitation(&hash(3), "theirs", audit("invite.used", T0 + 6))
            .await?
    );
    assert_eq!(
        password_of(store, "late@example.com").await?.as_deref(),
        Some("mine")
    );
    assert!(!identity(store, &identity_of(&late)?).await?.email_verified);
    // A removed member's link is dead.
    let gone = add_user(store, &org, "gone@example.com", "guest", T0 + 1).await?;
    invite(4, &gone, T0 + 10_000, Delivery::Email).await?;
    assert_eq!(
        store
            .remove_user(&gone.id, T0 + 6, None, audit("user.removed", T0 + 6))
            .await?,
        Ok(())
    );
    let before = before + 3;
    assert_eq!(store.invitation_user(&hash(4), T0 + 7).await?, None);
    assert!(
        !store
            .accept_invitation(&hash(4), "h", audit("invite.used", T0 + 7))
            .await?
    );
    assert_eq!(password_of(store, "gone@example.com").await?, None);
    // Spent, expired and unknown links.
    let spent = add_user(store, &org, "spent@example.com", "guest", T0 + 1).await?;
    invite(5, &spent, T0 + 100, Delivery::Email).await?;
    let before = before + 2;
    assert!(
        !store
            .accept_invitation(&hash(1), "again", audit("invite.used", T0 + 7))
            .await?,
        "spent"
    );
    assert!(
        !store
            .accept_invitation(&hash(5), "late", audit("invite.used", T0 + 100))
            .await?,
        "expired"
    );
    assert!(
        !store
            .accept_invitation(&hash(77), "h", audit("invite.used", T0 + 7))
            .await?,
        "unknown"
    );
    assert_eq!(password_of(store, "spent@example.com").await?, None);
    assert_eq!(
        password_of(store, "mailed@example.com").await?.as_deref(),
        Some("$argon2id$first")
    );
    assert_eq!(audit_rows(&db).await?, before, "a refusal was audited");
    Ok(())
}

/// A password-reset link of an identity: a new one replaces the earlier ones; it names its
/// identity until it is used or expires; using it sets the password, verifies the email,
/// ends the identity's browser sessions, and is audited once per member, like making it.
pub(super) async fn password_resets_single_use(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (a, owner) = org_with_owner(store).await?;
    let b = another_org(store, "B", T0 + 1).await?;
    let in_a = added(
        try_add(
            store,
            NewUser {
                invited_by_org: Some(a.id.clone()),
                ..new_user(&a.id, "p@example.com", "guest", T0 + 2)
            },
            None,
        )
        .await?,
    )?
    .user;
    let person = identity_of(&in_a)?;
    let in_b = added(
        try_add(
            store,
            joining(
                &b.id,
                "p@example.com",
                "guest",
                T0 + 3,
                JoinExisting::AtOnce,
            ),
            None,
        )
        .await?,
    )?
    .user;
    let reset = |seed: u8, expires_at: i64, at: i64| {
        let person = person.clone();
        async move {
            store
                .insert_password_reset(&hash(seed), &person, expires_at, audit("reset.sent", at))
                .await
        }
    };

    let before = audit_rows(&db).await?;
    reset(1, T0 + 10_000, T0 + 4).await?;
    assert_eq!(audit_rows(&db).await?, before + 2, "one row per member");
    let rows = newest_rows(store, "reset.sent", 2).await?;
    assert_eq!(orgs_and_subjects(&rows), members_of(&[&in_a, &in_b]));
    assert_eq!(
        store.password_reset_identity(&hash(1), T0 + 5).await?,
        Some(identity(store, &person).await?)
    );
    // A second link replaces the first.
    reset(2, T0 + 10_000, T0 + 5).await?;
    assert_eq!(store.password_reset_identity(&hash(1), T0 + 6).await?, None);
    assert_eq!(
        store
            .password_reset_identity(&hash(2), T0 + 6)
            .await?
            .map(|i| i.id),
        Some(person.clone())
    );
    assert_eq!(
        store.password_reset_identity(&hash(2), T0 + 10_000).await?,
        None,
        "expired"
    );
    assert_eq!(store.password_reset_identity(&hash(9), T0 + 6).await?, None);
    let before = audit_rows(&db).await?;
    assert!(
        !store
            .accept_password_reset(&hash(1), "h1", audit("reset.used", T0 + 7))
            .await?,
        "replaced"
    );
    assert_eq!(audit_rows(&db).await?, before);

    for seed in [10, 11] {
        store
            .insert_browser_session(&hash(seed), &person, T0, T0 + 10_000)
            .await?;
    }
    store
        .insert_browser_session(&hash(12), &identity_of(&owner)?, T0, T0 + 10_000)
        .await?;
    assert!(
        store
            .accept_password_reset(&hash(2), "$argon2id$reset", audit("reset.used", T0 + 8))
            .await?
    );
    assert_eq!(audit_rows(&db).await?, before + 2, "one row per member");
    let rows = newest_rows(store, "reset.used", 2).await?;
    assert_eq!(orgs_and_subjects(&rows), members_of(&[&in_a, &in_b]));
    let now = identity(store, &person).await?;
    assert!(now.has_password && now.email_verified);
    assert_eq!(now.invited_by_org, None);
    assert_eq!(
        password_of(store, "p@example.com").await?.as_deref(),
        Some("$argon2id$reset")
    );
    assert_eq!(store.browser_session(&hash(10), T0 + 9).await?, None);
    assert_eq!(store.browser_session(&hash(11), T0 + 9).await?, None);
    assert!(
        store.browser_session(&hash(12), T0 + 9).await?.is_some(),
        "another identity's session ended"
    );
    // Single use.
    assert!(
        !store
            .accept_password_reset(&hash(2), "again", audit("reset.used", T0 + 9))
            .await?
    );
    assert_eq!(store.password_reset_identity(&hash(2), T0 + 9).await?, None);
    // Expired, and unknown.
    reset(3, T0 + 20, T0 + 10).await?;
    assert!(
        !store
            .accept_password_reset(&hash(3), "late", audit("reset.used", T0 + 20))
            .await?
    );
    assert!(
        !store
            .accept_password_reset(&hash(99), "h", audit("reset.used", T0 + 11))
            .await?
    );
    assert_eq!(
        password_of(store, "p@example.com").await?.as_deref(),
        Some("$argon2id$reset")
    );
    // A reset replaces an existing password too.
    reset(4, T0 + 10_000, T0 + 12).await?;
    assert!(
        store
            .accept_password_reset(&hash(4), "$argon2id$again", audit("reset.used", T0 + 13))
            .await?
    );
    assert_eq!(
        password_of(store, "p@example.com").await?.as_deref(),
        Some("$argon2id$again")
    );
    Ok(())
}

/// The emails the identity upgrade left without a password: none on a fresh database; one
/// is listed while its identity has no password, and forgotten once it has one.
pub(super) async fn identity_upgrade_notices_until_a_password(db: Db) -> TestResult {
    let store = db.store.as_ref();
    assert!(store.identity_upgrade_notices().await?.is_empty());
    let (org, owner) = org_with_owner(store).await?;
    let other = add_user(store, &org, "other@example.com", "guest", T0 + 1).await?;
    assert!(store.identity_upgrade_notices().await?.is_empty());
    // As the upgrade leaves them (the store writes none itself).
    db.execute_raw(
        "INSERT INTO identity_upgrade_notices (email, organizations, passwords) VALUES \
         ('owner@example.com', 2, 1), ('other@example.com', 3, 2), ('gone@example.com', 2, 2)",
    )
    .await?;
    assert_eq!(
        store.identity_upgrade_notices().await?,
        vec![
            "other@example.com".to_owned(),
            "owner@example.com".to_owned()
        ]
    );
    assert!(
        store
            .set_identity_password(&identity_of(&owner)?, "h", audit("pw", T0 + 2))
            .await?
    );
    assert_eq!(
        store.identity_upgrade_notices().await?,
        vec!["other@example.com".to_owned()]
    );
    store
        .insert_password_reset(
            &hash(1),
            &identity_of(&other)?,
            T0 + 10_000,
            audit("reset", T0 + 3),
        )
        .await?;
    assert!(
        store
            .accept_password_reset(&hash(1), "h", audit("reset.used", T0 + 4))
            .await?
    );
    assert!(store.identity_upgrade_notices().await?.is_empty());
    Ok(())
}

/// The same new email added to several organizations at the same moment, through two
/// connections: one add creates the identity and every other joins it (or, when it only
/// creates identities, is refused); the same email added twice to one organization at once
/// gives one member. Several rounds.
pub(super) async fn add_member_races_make_one_identity(db: Db) -> TestResult {
    const ORGS: usize = 4;
    let (first, _) = org_with_owner(db.store.as_ref()).await?;
    let mut orgs = vec![first];
    for n in 1..ORGS {
        orgs.push(another_org(db.store.as_ref(), &format!("O{n}"), T0 + 1).await?);
    }
    let other = db.another().await?;
    let stores = [db.store.clone(), other.clone()];
    for round in 0..6_usize {
        let email = format!("r{round}@example.com");
        let join = if round % 2 == 0 {
            JoinExisting::AtOnce
        } else {
            JoinExisting::Refuse
        };
        let mut adds = tokio::task::JoinSet::new();
        for (n, org) in orgs.iter().enumerate() {
            let store = stores[n % 2].clone();
            let user = joining(&org.id, &email, "guest", T0 + 10, join);
            adds.spawn(async move { try_add(store.as_ref(), user, None).await });
        }
        let mut outcomes = Vec::new();
        while let Some(outcome) = adds.join_next().await {
            outcomes.push(outcome??);
        }
        let created = outcomes
            .iter()
            .filter(|o| o.as_ref().is_ok_and(|a| a.new_identity))
            .count();
        assert_eq!(created, 1, "round {round}: {outcomes:?}");
        let person = store_identity(db.store.as_ref(), &email).await?;
        for outcome in &outcomes {
            match (outcome, join) {
                (Ok(added), _) => {
                    assert_eq!(added.user.identity_id.as_deref(), Some(person.as_str()));
                }
                (Err(Refusal::IdentityExists), JoinExisting::Refuse) => {}
                (Err(refused), _) => {
                    return Err(format!("round {round}: refused as {refused:?}").into());
                }
            }
        }
        let expected = if join == JoinExisting::AtOnce {
            ORGS
        } else {
            1
        };
        assert_eq!(
            db.store.memberships(&person).await?.len(),
            expected,
            "round {round}"
        );
    }
    // Twice into one organization at once: one member.
    for round in 0..4_usize {
        let email = format!("twice{round}@example.com");
        let org = &orgs[round % ORGS];
        let (a, b) = tokio::join!(
            try_add(
                stores[0].as_ref(),
                joining(&org.id, &email, "guest", T0 + 20, JoinExisting::AtOnce),
                None
            ),
            try_add(
                stores[1].as_ref(),
                joining(&org.id, &email, "guest", T0 + 20, JoinExisting::AtOnce),
                None
            ),
        );
        let (a, b) = (a?, b?);
        assert_eq!(
            u8::from(a.is_ok()) + u8::from(b.is_ok()),
            1,
            "round {round}: {a:?} {b:?}"
        );
        for outcome in [&a, &b] {
            assert!(
                matches!(outcome, Ok(_) | Err(Refusal::AlreadyMember)),
                "{outcome:?}"
            );
        }
        let person = store_identity(db.store.as_ref(), &email).await?;
        assert_eq!(db.store.memberships(&person).await?.len(), 1);
    }
    other.close().await;
    Ok(())
}

/// The id of the identity with this email.
async fn store_identity(store: &dyn Store, email: &str) -> Result<String, TestError> {
    Ok(store
        .identity_by_email(email)
        .await?
        .ok_or("no such identity")?
        .identity
        .id)
}
