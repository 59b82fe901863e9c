//! Store conformance: service accounts, organization-defined scopes and their grants, the
//! organization's token lifetime maximum, named (expiring) refresh tokens and their expiry
//! notices.

use prismd::store::{ExpiringToken, Grantee, NewServiceAccount, OrgScope, ServiceAccountChanges};

use super::*;

/// How many audit rows there are.
async fn trail_len(db: &Db) -> Result<i64, TestError> {
    db.count("SELECT COUNT(*) FROM audit_events").await
}

/// The newest audit row with `action`.
async fn newest_row(store: &dyn Store, action: &str) -> Result<AuditRecord, TestError> {
    Ok(recent_events(store, 1000)
        .await?
        .into_iter()
        .find(|event| event.action == action)
        .ok_or_else(|| format!("no {action} audit row"))?)
}

/// A service account to create in `org_id`.
fn service_account(org_id: &str, name: &str, role: &str, at: i64) -> NewServiceAccount {
    NewServiceAccount {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: org_id.into(),
        name: name.into(),
        role: role.into(),
        description: Some(format!("what {name} is for")),
        created_at: at,
    }
}

/// Creates `account` as `actor` would (`None`: an operator), audited as
/// `service_account.created` about the account.
async fn try_add_account(
    store: &dyn Store,
    account: NewServiceAccount,
    actor: Option<&str>,
) -> Result<Result<User, Refusal>, StoreError> {
    let event = AuditEvent {
        subject_user_id: Some(account.id.clone()),
        org_id: Some(account.org_id.clone()),
        ..audit("service_account.created", account.created_at)
    };
    store.add_service_account(account, actor, event).await
}

/// Creates a service account as an operator, which must succeed.
async fn add_account(
    store: &dyn Store,
    org: &Organization,
    name: &str,
    role: &str,
    at: i64,
) -> Result<User, TestError> {
    try_add_account(store, service_account(&org.id, name, role, at), None)
        .await?
        .map_err(|refused| format!("the service account {name} was refused: {refused:?}").into())
}

/// A named token of `user` (minted by `created_by`) with its own expiry.
fn named_token(
    user: &User,
    seed: u8,
    name: &str,
    expires_at: Option<i64>,
    created_by: Option<&User>,
    at: i64,
) -> NewRefreshToken {
    NewRefreshToken {
        name: Some(name.into()),
        scope: "deploy:prod".into(),
        created_at: at,
        named: true,
        expires_at,
        created_by: created_by.map(|u| u.id.clone()),
        ..refresh_token(user, seed, None)
    }
}

/// Stores a token, which must be stored.
async fn mint(store: &dyn Store, token: NewRefreshToken) -> TestResult {
    let at = token.created_at;
    let name = token.name.clone();
    if store
        .insert_refresh_token(token, audit("token.minted", at))
        .await?
    {
        Ok(())
    } else {
        Err(format!("the token {name:?} was not stored").into())
    }
}

/// Whether storing `token` was refused as a name conflict (and stored nothing).
async fn conflicts(store: &dyn Store, token: NewRefreshToken) -> Result<bool, TestError> {
    let (at, hash) = (token.created_at, token.token_hash);
    let outcome = store
        .insert_refresh_token(token, audit("token.minted", at))
        .await;
    let conflict = match outcome {
        Err(StoreError::Conflict(_)) => true,
        Ok(true) => false,
        Ok(false) => return Err("the token's user is gone".into()),
        Err(other) => return Err(other.into()),
    };
    if conflict {
        assert!(
            store.find_refresh_grant(&hash).await?.is_none(),
            "a refused token was stored"
        );
    }
    Ok(conflict)
}

/// Owners and Admins of the organization (and operators) create service accounts; nobody
/// else, and nobody an Owner. A live account's name is its organization's alone until it is
/// removed. Accounts are members of kind `service`, joined, without email or identity, and
/// never among the organization's people. A refusal writes nothing, not even its audit row.
pub(super) async fn service_accounts_follow_actor_rules(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let Cast {
        org,
        owner,
        admin,
        guest,
        integrator,
        pending,
        removed,
        stranger,
    } = actor_rules_fixture(store).await?;
    let people = store.list_users(&org.id, false).await?;
    let everyone = store.list_users(&org.id, true).await?;
    let trail = trail_len(&db).await?;

    let refusals = [
        (Some(&guest), "guest", "a Guest"),
        (Some(&integrator), "guest", "an Integrator"),
        (Some(&pending), "guest", "a pending Admin"),
        (Some(&removed), "guest", "a removed Admin"),
        (Some(&stranger), "guest", "an Owner of another organization"),
        (Some(&owner), "owner", "an Owner making an Owner"),
        (Some(&admin), "owner", "an Admin making an Owner"),
        (None, "owner", "an operator making an Owner"),
    ];
    for (actor, role, why) in refusals {
        let outcome = try_add_account(
            store,
            service_account(&org.id, "ci", role, T0 + 5),
            actor.map(|a| a.id.as_str()),
        )
        .await?;
        assert_eq!(outcome, Err(Refusal::Forbidden), "{why}");
    }
    assert_eq!(trail_len(&db).await?, trail, "a refused add was audited");
    assert!(store.service_accounts(&org.id).await?.is_empty());

    // An Owner, an Admin and an operator each create one.
    let mut created = Vec::new();
    for (n, (actor, name, role)) in [
        (Some(&owner), "deployer", "integrator"),
        (Some(&admin), "ci", "guest"),
        (None, "backup", "admin"),
    ]
    .into_iter()
    .enumerate()
    {
        let at = T0 + 10 + i64::try_from(n)?;
        let account = service_account(&org.id, name, role, at);
        let actor_id = actor.map(|a| a.id.clone());
        let user = try_add_account(store, account.clone(), actor_id.as_deref())
            .await?
            .map_err(|refused| format!("{name}: {refused:?}"))?;
        assert_eq!(user.id, account.id);
        assert_eq!(user.org_id, org.id);
        assert_eq!(user.kind, "service");
        assert!(user.is_service_account());
        assert_eq!(user.email, "");
        assert_eq!(user.name, name);
        assert_eq!(user.role, role);
        assert_eq!(user.description, account.description);
        assert_eq!(user.identity_id, None);
        assert_eq!(user.joined_at, Some(at), "{name} is joined at once");
        assert_eq!((user.created_at, user.updated_at), (at, at));
        assert_eq!(user.removed_at, None);
        assert_eq!(user.token_epoch, 0);
        assert!(user.is_joined());
        let row = newest_row(store, "service_account.created").await?;
        assert_eq!(row.subject_user_id.as_deref(), Some(user.id.as_str()));
        assert_eq!(row.at, at);
        assert_eq!(
            store.member(&org.id, &user.id).await?.as_ref(),
            Some(&user),
            "{name} is a member of its organization"
        );
        created.push(user);
    }
    assert_eq!(
        trail_len(&db).await?,
        trail + 3,
        "one audit row per account"
    );
    assert_eq!(store.service_accounts(&org.id).await?, created);

    // Never among the people, however they are listed.
    assert_eq!(store.list_users(&org.id, false).await?, people);
    assert_eq!(store.list_users(&org.id, true).await?, everyone);
    assert_eq!(store.users_page(&org.id, None, 1000).await?, people);
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.users_page(&org.id, after, 2).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.created_at, last.id.clone()));
        paged.extend(page);
    }
    assert_eq!(paged, people, "paged one by one");
    assert!(people.iter().all(|u| u.kind == "person"));

    // A name is taken while its account lives, whatever the role or who asks; another
    // organization has its own names.
    let trail = trail_len(&db).await?;
    for (actor, role) in [(Some(&owner), "guest"), (None, "admin")] {
        let outcome = try_add_account(
            store,
            service_account(&org.id, "ci", role, T0 + 20),
            actor.map(|a| a.id.as_str()),
        )
        .await?;
        assert_eq!(outcome, Err(Refusal::NameTaken));
    }
    assert_eq!(trail_len(&db).await?, trail, "a refused add was audited");
    assert_eq!(store.service_accounts(&org.id).await?, created);
    let theirs = try_add_account(
        store,
        service_account(&stranger.org_id, "ci", "guest", T0 + 21),
        Some(&stranger.id),
    )
    .await?
    .map_err(|refused| format!("another organization's ci: {refused:?}"))?;
    assert_eq!(
        store.service_accounts(&stranger.org_id).await?,
        vec![theirs]
    );
    assert_eq!(store.service_accounts(&org.id).await?, created);

    // Removed, its name is free again.
    let ci = created.remove(1);
    assert_eq!(
        store
            .remove_user(
                &ci.id,
                T0 + 30,
                Some(&owner.id),
                audit_about("user.removed", T0 + 30, &ci)
            )
            .await?,
        Ok(())
    );
    assert_eq!(store.service_accounts(&org.id).await?, created);
    assert_eq!(store.list_users(&org.id, true).await?, everyone);
    let again = try_add_account(
        store,
        service_account(&org.id, "ci", "guest", T0 + 31),
        Some(&admin.id),
    )
    .await?
    .map_err(|refused| format!("ci after its removal: {refused:?}"))?;
    assert_ne!(again.id, ci.id);
    created.push(again);
    assert_eq!(store.service_accounts(&org.id).await?, created);
    Ok(())
}

/// Owners and Admins (and operators) change a live service account's name, role and
/// description, each kept when not given; never to an Owner, never onto a live account's name,
/// never a person or a removed account. A refusal changes and audits nothing.
pub(super) async fn service_account_updates_follow_actor_rules(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let Cast {
        org,
        owner,
        admin,
        guest,
        integrator,
        pending,
        removed,
        stranger,
    } = actor_rules_fixture(store).await?;
    let ci = add_account(store, &org, "ci", "guest", T0 + 10).await?;
    let deploy = add_account(store, &org, "deploy", "integrator", T0 + 11).await?;
    let gone = add_account(store, &org, "gone", "guest", T0 + 12).await?;
    assert_eq!(
        store
            .remove_user(&gone.id, T0 + 13, None, audit("user.removed", T0 + 13))
            .await?,
        Ok(())
    );
    let update = |id: &str, changes: ServiceAccountChanges, actor: Option<&User>, at: i64| {
        let event = AuditEvent {
            subject_user_id: Some(id.to_owned()),
            ..audit("service_account.updated", at)
        };
        let (id, actor) = (id.to_owned(), actor.map(|a| a.id.clone()));
        async move {
            store
                .update_service_account(&id, changes, actor.as_deref(), event)
                .await
        }
    };
    let rename = |name: &str| ServiceAccountChanges {
        name: Some(name.into()),
        ..ServiceAccountChanges::default()
    };
    let to = |role: &str| ServiceAccountChanges {
        role: Some(role.into()),
        ..ServiceAccountChanges::default()
    };
    let describe = |description: &str| ServiceAccountChanges {
        description: Some(description.into()),
        ..ServiceAccountChanges::default()
    };

    // Each change alone, by each who may; the rest stays.
    let trail = trail_len(&db).await?;
    let renamed = update(ci.id.as_str(), rename("ci-2"), Some(&admin), T0 + 20)
        .await?
        .map_err(|refused| format!("rename: {refused:?}"))?;
    assert_eq!(
        renamed,
        User {
            name: "ci-2".into(),
            updated_at: T0 + 20,
            ..ci.clone()
        }
    );
    let promoted = update(ci.id.as_str(), to("admin"), Some(&owner), T0 + 21)
        .await?
        .map_err(|refused| format!("role: {refused:?}"))?;
    assert_eq!(
        promoted,
        User {
            role: "admin".into(),
            updated_at: T0 + 21,
            ..renamed.clone()
        }
    );
    let described = update(ci.id.as_str(), describe("builds"), None, T0 + 22)
        .await?
        .map_err(|refused| format!("description: {refused:?}"))?;
    assert_eq!(
        described,
        User {
            description: Some("builds".into()),
            updated_at: T0 + 22,
            ..promoted.clone()
        }
    );
    let all = update(
        &ci.id,
        ServiceAccountChanges {
            name: Some("ci-3".into()),
            role: Some("integrator".into()),
            description: Some("tests".into()),
        },
        Some(&admin),
        T0 + 23,
    )
    .await?
    .map_err(|refused| format!("all at once: {refused:?}"))?;
    assert_eq!(
        (
            all.name.as_str(),
            all.role.as_str(),
            all.description.as_deref()
        ),
        ("ci-3", "integrator", Some("tests"))
    );
    assert_eq!(all.kind, "service");
    assert_eq!(trail_len(&db).await?, trail + 4, "one audit row per change");
    let row = newest_row(store, "service_account.updated").await?;
    assert_eq!(
        (row.at, row.subject_user_id.as_deref()),
        (T0 + 23, Some(ci.id.as_str()))
    );
    assert_eq!(
        store.service_accounts(&org.id).await?,
        vec![all.clone(), deploy.clone()],
        "the stored account is the one returned"
    );

    // Refused, and nothing changes.
    let trail = trail_len(&db).await?;
    let refusals: Vec<(&str, ServiceAccountChanges, Option<&User>, Refusal, &str)> = vec![
        (
            ci.id.as_str(),
            to("owner"),
            Some(&owner),
            Refusal::Forbidden,
            "an Owner makes an Owner",
        ),
        (
            ci.id.as_str(),
            to("owner"),
            None,
            Refusal::Forbidden,
            "an operator makes an Owner",
        ),
        (
            ci.id.as_str(),
            rename("x"),
            Some(&guest),
            Refusal::Forbidden,
            "a Guest renames",
        ),
        (
            ci.id.as_str(),
            to("guest"),
            Some(&integrator),
            Refusal::Forbidden,
            "an Integrator",
        ),
        (
            ci.id.as_str(),
            rename("x"),
            Some(&pending),
            Refusal::Forbidden,
            "a pending Admin",
        ),
        (
            ci.id.as_str(),
            rename("x"),
            Some(&removed),
            Refusal::Forbidden,
            "a removed Admin",
        ),
        (
            ci.id.as_str(),
            rename("x"),
            Some(&stranger),
            Refusal::Forbidden,
            "another organization's Owner",
        ),
        (
            ci.id.as_str(),
            rename("deploy"),
            Some(&owner),
            Refusal::NameTaken,
            "onto a live name",
        ),
        (
            ci.id.as_str(),
            rename("deploy"),
            None,
            Refusal::NameTaken,
            "an operator onto a live name",
        ),
        (
            "nobody",
            rename("x"),
            Some(&owner),
            Refusal::NotFound,
            "an unknown id",
        ),
        (
            guest.id.as_str(),
            rename("x"),
            Some(&owner),
            Refusal::NotFound,
            "a person",
        ),
        (
            owner.id.as_str(),
            describe("x"),
            None,
            Refusal::NotFound,
            "a person, by an operator",
        ),
        (
            gone.id.as_str(),
            rename("x"),
            Some(&owner),
            Refusal::NotFound,
            "a removed account",
        ),
    ];
    for (id, changes, actor, refusal, why) in refusals {
        assert_eq!(
            update(id, changes, actor, T0 + 30).await?,
            Err(refusal),
            "{why}"
        );
    }
    assert_eq!(trail_len(&db).await?, trail, "a refused change was audited");
    assert_eq!(
        store.service_accounts(&org.id).await?,
        vec![all.clone(), deploy.clone()]
    );
    assert_eq!(store.member(&org.id, &guest.id).await?, Some(guest.clone()));

    // The removed account's name is free: a live one may take it.
    let taken = update(&deploy.id, rename("gone"), Some(&owner), T0 + 40)
        .await?
        .map_err(|refused| format!("onto a removed account's name: {refused:?}"))?;
    assert_eq!(taken.name, "gone");
    Ok(())
}

/// An organization declares scopes, grants them to roles and service accounts, withdraws
/// them and deletes them with their grants; another organization's scopes and grants are its
/// own. Only a change that happened is audited.
pub(super) async fn org_scopes_and_grants(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let guest = add_user(store, &org, "guest@example.com", "guest", T0 + 1).await?;
    let other = another_org(store, "Other", T0 + 2).await?;
    let sa = add_account(store, &org, "deployer", "guest", T0 + 3).await?;
    let event = |at: i64| AuditEvent {
        org_id: Some(org.id.clone()),
        ..audit("scope.changed", at)
    };
    let mut trail = trail_len(&db).await?;

    assert!(store.org_scopes(&org.id).await?.is_empty());
    assert!(
        store
            .create_org_scope(&org.id, "deploy:prod", Some("Deploy"), event(T0 + 10))
            .await?
    );
    assert!(
        !store
            .create_org_scope(&org.id, "deploy:prod", Some("Again"), event(T0 + 11))
            .await?,
        "a second scope of one name"
    );
    assert!(
        store
            .create_org_scope(&org.id, "read:logs", None, event(T0 + 12))
            .await?
    );
    assert!(
        store
            .create_org_scope(&other.id, "deploy:prod", Some("Theirs"), event(T0 + 13))
            .await?,
        "another organization has its own names"
    );
    trail += 3;
    assert_eq!(trail_len(&db).await?, trail);

    let admins = Grantee::Role("admin".into());
    let integrators = Grantee::Role("integrator".into());
    let deployer = Grantee::ServiceAccount(sa.id.clone());
    for (scope, grantee) in [
        ("deploy:prod", &integrators),
        ("deploy:prod", &admins),
        ("deploy:prod", &deployer),
        ("deploy:prod", &admins),
        ("read:logs", &admins),
    ] {
        assert!(
            store
                .set_scope_grant(&org.id, scope, grantee, true, event(T0 + 20))
                .await?,
            "grant {scope} to {grantee:?}"
        );
        trail += 1;
    }
    // A grant of a scope the organization does not have: nothing.
    assert!(
        !store
            .set_scope_grant(&org.id, "nope", &admins, true, event(T0 + 21))
            .await?
    );
    assert!(
        !store
            .set_scope_grant(&org.id, "Deploy:Prod", &admins, true, event(T0 + 21))
            .await?,
        "scope names are exact"
    );
    assert!(
        store
            .set_scope_grant(
                &other.id,
                "deploy:prod",
                &Grantee::Role("guest".into()),
                true,
                event(T0 + 22)
            )
            .await?
    );
    trail += 1;
    assert_eq!(trail_len(&db).await?, trail);

    assert_eq!(
        store.org_scopes(&org.id).await?,
        vec![
            OrgScope {
                name: "deploy:prod".into(),
                description: Some("Deploy".into()),
                created_at: T0 + 10,
                roles: vec!["admin".into(), "integrator".into()],
                service_accounts: vec![sa.id.clone()],
            },
            OrgScope {
                name: "read:logs".into(),
                description: None,
                created_at: T0 + 12,
                roles: vec!["admin".into()],
                service_accounts: vec![],
            },
        ]
    );
    assert_eq!(
        store.org_scopes(&other.id).await?,
        vec![OrgScope {
            name: "deploy:prod".into(),
            description: Some("Theirs".into()),
            created_at: T0 + 13,
            roles: vec!["guest".into()],
            service_accounts: vec![],
        }]
    );
    assert!(store.org_scopes("nowhere").await?.is_empty());

    // Held by role, and by a service account's own id.
    let held = |org_id: &str, role: &str, user_id: &str| {
        let (org_id, role, user_id) = (org_id.to_owned(), role.to_owned(), user_id.to_owned());
        async move { store.held_org_scopes(&org_id, &role, &user_id).await }
    };
    assert_eq!(
        held(&org.id, "admin", &owner.id).await?,
        vec!["deploy:prod".to_owned(), "read:logs".to_owned()]
    );
    assert_eq!(
        held(&org.id, "integrator", &owner.id).await?,
        vec!["deploy:prod".to_owned()]
    );
    assert!(
        held(&org.id, "guest", &guest.id).await?.is_empty(),
        "another organization's grant to Guests"
    );
    assert_eq!(
        held(&org.id, "guest", &sa.id).await?,
        vec!["deploy:prod".to_owned()]
    );
    assert_eq!(
        held(&org.id, "admin", &sa.id).await?,
        vec!["deploy:prod".to_owned(), "read:logs".to_owned()],
        "each scope once, held by role and by id"
    );
    assert!(held(&org.id, "owner", &owner.id).await?.is_empty());
    assert!(held(&other.id, "admin", &sa.id).await?.is_empty());
    assert_eq!(
        held(&other.id, "guest", &guest.id).await?,
        vec!["deploy:prod".to_owned()]
    );

    // Withdrawn: only what was granted.
    assert!(
        store
            .set_scope_grant(&org.id, "deploy:prod", &integrators, false, event(T0 + 30))
            .await?
    );
    trail += 1;
    for (scope, grantee, why) in [
        ("deploy:prod", &integrators, "withdrawn twice"),
        (
            "deploy:prod",
            &Grantee::Role("owner".into()),
            "never granted",
        ),
        ("read:logs", &deployer, "granted another scope only"),
        ("nope", &admins, "no such scope"),
    ] {
        assert!(
            !store
                .set_scope_grant(&org.id, scope, grantee, false, event(T0 + 31))
                .await?,
            "{why}"
        );
    }
    assert_eq!(
        trail_len(&db).await?,
        trail,
        "a withdrawal of nothing was audited"
    );
    assert!(held(&org.id, "integrator", &owner.id).await?.is_empty());
    assert_eq!(
        held(&org.id, "guest", &sa.id).await?,
        vec!["deploy:prod".to_owned()]
    );

    // Deleted with its grants: declared again, it has none.
    assert!(
        store
            .delete_org_scope(&org.id, "deploy:prod", event(T0 + 40))
            .await?
    );
    assert!(
        !store
            .delete_org_scope(&org.id, "deploy:prod", event(T0 + 41))
            .await?
    );
    assert!(
        !store
            .delete_org_scope(&org.id, "nope", event(T0 + 41))
            .await?
    );
    trail += 1;
    assert_eq!(trail_len(&db).await?, trail);
    assert_eq!(
        store
            .org_scopes(&org.id)
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<_>>(),
        vec!["read:logs".to_owned()]
    );
    assert!(held(&org.id, "guest", &sa.id).await?.is_empty());
    assert_eq!(
        held(&org.id, "admin", &owner.id).await?,
        vec!["read:logs".to_owned()]
    );
    assert!(
        store
            .create_org_scope(&org.id, "deploy:prod", None, event(T0 + 42))
            .await?
    );
    let recreated = store.org_scopes(&org.id).await?;
    assert_eq!(
        recreated.first().map(|s| s.name.as_str()),
        Some("deploy:prod")
    );
    assert!(
        recreated
            .first()
            .is_some_and(|s| s.roles.is_empty() && s.service_accounts.is_empty()),
        "the deleted scope's grants came back: {recreated:?}"
    );
    assert_eq!(
        held(&other.id, "guest", &guest.id).await?,
        vec!["deploy:prod".to_owned()],
        "another organization's scope of that name stays"
    );
    assert_eq!(store.org_scopes(&other.id).await?.len(), 1);
    Ok(())
}

/// The organization's maximum token lifetime: none at first, set, lifted; `None` for an
/// unknown organization, and a change there writes nothing.
pub(super) async fn token_lifetime_max_round_trip(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, _owner) = org_with_owner(store).await?;
    let other = another_org(store, "Other", T0 + 1).await?;
    let trail = trail_len(&db).await?;
    assert_eq!(store.token_lifetime_max(&org.id).await?, Some(None));
    assert!(
        store
            .set_token_lifetime_max(&org.id, Some(86_400), audit("org.token_lifetime", T0 + 2))
            .await?
    );
    assert_eq!(store.token_lifetime_max(&org.id).await?, Some(Some(86_400)));
    assert_eq!(
        store.token_lifetime_max(&other.id).await?,
        Some(None),
        "another organization's maximum"
    );
    assert!(
        store
            .set_token_lifetime_max(&org.id, Some(3_600), audit("org.token_lifetime", T0 + 3))
            .await?
    );
    assert_eq!(store.token_lifetime_max(&org.id).await?, Some(Some(3_600)));
    assert_eq!(trail_len(&db).await?, trail + 2);
    assert!(
        store
            .set_token_lifetime_max(&org.id, None, audit("org.token_lifetime", T0 + 4))
            .await?
    );
    assert_eq!(store.token_lifetime_max(&org.id).await?, Some(None));
    assert_eq!(store.token_lifetime_max("nowhere").await?, None);
    assert!(
        !store
            .set_token_lifetime_max("nowhere", Some(60), audit("org.token_lifetime", T0 + 5))
            .await?
    );
    assert_eq!(store.token_lifetime_max("nowhere").await?, None);
    assert_eq!(trail_len(&db).await?, trail + 3);
    Ok(())
}

/// A named token's name is its principal's alone while the token lives; unnamed tokens share
/// names freely. A dead token (expired, revoked, or of an older epoch) gives its name up. The
/// grant carries the principal's role and the token's expiry; sessions list scope, whether
/// named, and expiry.
pub(super) async fn named_tokens_unique_while_live(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let alice = add_user(store, &org, "alice@example.com", "integrator", T0 + 1).await?;
    let sa = add_account(store, &org, "ci", "guest", T0 + 2).await?;

    let first = named_token(&alice, 1, "deploy", Some(T0 + 1000), Some(&owner), T0 + 10);
    mint(store, first.clone()).await?;
    let trail = trail_len(&db).await?;
    assert!(
        conflicts(
            store,
            named_token(&alice, 2, "deploy", None, Some(&alice), T0 + 11)
        )
        .await?,
        "a second live token named deploy"
    );
    assert!(
        conflicts(
            store,
            named_token(&alice, 3, "deploy", Some(T0 + 1000), None, T0 + 999)
        )
        .await?,
        "named deploy a moment before the first expires"
    );
    assert_eq!(trail_len(&db).await?, trail, "a refused token was audited");
    // Another principal's names, and unnamed tokens, are no conflict.
    mint(
        store,
        named_token(&owner, 4, "deploy", None, Some(&owner), T0 + 12),
    )
    .await?;
    mint(
        store,
        named_token(&sa, 5, "deploy", None, Some(&owner), T0 + 13),
    )
    .await?;
    for seed in [6, 7] {
        mint(
            store,
            NewRefreshToken {
                name: Some("deploy".into()),
                ..refresh_token(&alice, seed, None)
            },
        )
        .await?;
    }
    mint(
        store,
        named_token(&alice, 8, "nightly", None, Some(&alice), T0 + 14),
    )
    .await?;

    // The grant: role and own expiry.
    let grant = store
        .find_refresh_grant(&hash(1))
        .await?
        .ok_or("no grant")?;
    assert_eq!(grant.token_id, first.id);
    assert_eq!(grant.role, "integrator");
    assert_eq!(grant.token_expires_at, Some(T0 + 1000));
    assert_eq!(grant.scope, "deploy:prod");
    let grant = store
        .find_refresh_grant(&hash(6))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        (grant.role.as_str(), grant.token_expires_at),
        ("integrator", None)
    );
    let grant = store
        .find_refresh_grant(&hash(5))
        .await?
        .ok_or("no grant")?;
    assert_eq!(
        (grant.role.as_str(), grant.user_id.as_str()),
        ("guest", sa.id.as_str())
    );
    assert_eq!(
        store.find_refresh_grant(&hash(4)).await?.map(|g| g.role),
        Some("owner".to_owned())
    );

    // The sessions: scope, named, expiry.
    let sessions = store.list_sessions(&alice.id, 100).await?;
    let mine = sessions
        .iter()
        .find(|s| s.id == first.id)
        .cloned()
        .ok_or("the named session is not listed")?;
    assert_eq!(
        mine,
        SessionRecord {
            id: first.id.clone(),
            user_id: alice.id.clone(),
            client_id: "client".into(),
            name: Some("deploy".into()),
            created_at: T0 + 10,
            last_used_at: None,
            last_used_addr: None,
            scope: "deploy:prod".into(),
            named: true,
            expires_at: Some(T0 + 1000),
        }
    );
    assert_eq!(store.live_session(&first.id).await?, Some(mine));
    let unnamed: Vec<&SessionRecord> = sessions.iter().filter(|s| !s.named).collect();
    assert_eq!(unnamed.len(), 2);
    assert!(
        unnamed
            .iter()
            .all(|s| s.expires_at.is_none() && s.scope == "openid")
    );
    assert_eq!(sessions.len(), 4);

    // Expired: its name is free from its expiry on, and the dead token is retired.
    let second = named_token(
        &alice,
        9,
        "deploy",
        Some(T0 + 5000),
        Some(&alice),
        T0 + 1000,
    );
    mint(store, second.clone()).await?;
    assert!(
        store
            .find_refresh_grant(&hash(1))
            .await?
            .ok_or("the expired token went")?
            .token_revoked_at
            .is_some(),
        "the expired token keeps its name"
    );
    let listed: Vec<String> = store
        .list_sessions(&alice.id, 100)
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert!(listed.contains(&second.id));
    assert!(!listed.contains(&first.id), "the retired token is listed");
    assert!(
        conflicts(
            store,
            named_token(&alice, 10, "deploy", None, None, T0 + 1001)
        )
        .await?,
        "the second deploy is live"
    );
    // Others' tokens of that name are untouched.
    for seed in [4, 5] {
        let grant = store.find_refresh_grant(&hash(seed)).await?.ok_or("gone")?;
        assert_eq!(grant.token_revoked_at, None, "token {seed}");
    }
    assert!(
        conflicts(
            store,
            named_token(&owner, 11, "deploy", None, None, T0 + 1002)
        )
        .await?,
        "the owner's deploy is live"
    );

    // Revoked one by one: the name is free.
    assert!(
        store
            .revoke_session(&second.id, &alice.id, audit("token.revoked", T0 + 1100))
            .await?
    );
    mint(
        store,
        named_token(&alice, 12, "deploy", None, None, T0 + 1101),
    )
    .await?;

    // Revoke-all: every name is free under the new epoch.
    assert!(
        store
            .revoke_all_tokens(&alice.id, 0, audit("tokens.revoked_all", T0 + 1200))
            .await?
    );
    mint(
        store,
        named_token(&alice, 13, "deploy", None, None, T0 + 1201),
    )
    .await?;
    mint(
        store,
        named_token(&alice, 14, "nightly", None, None, T0 + 1202),
    )
    .await?;
    let grant = store
        .find_refresh_grant(&hash(14))
        .await?
        .ok_or("no grant")?;
    assert_eq!((grant.token_epoch, grant.user_epoch), (1, 1));
    assert!(
        conflicts(
            store,
            named_token(&alice, 15, "nightly", None, None, T0 + 1203)
        )
        .await?,
        "the new nightly is live"
    );
    let mut names: Vec<Option<String>> = store
        .list_sessions(&alice.id, 100)
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![Some("deploy".to_owned()), Some("nightly".to_owned())]
    );
    Ok(())
}

/// Of several mints of one name at once, one stores its token; the others are conflicts.
pub(super) async fn named_token_names_race(db: Db) -> TestResult {
    let (org, _owner) = org_with_owner(db.store.as_ref()).await?;
    let alice = add_user(db.store.as_ref(), &org, "alice@example.com", "guest", T0).await?;
    // An expired token of the name, which each racer tries to retire.
    mint(
        db.store.as_ref(),
        named_token(&alice, 1, "race", Some(T0 + 50), None, T0 + 10),
    )
    .await?;
    let trail = trail_len(&db).await?;
    let mut mints = tokio::task::JoinSet::new();
    for seed in 2..10 {
        let (store, token) = (
            db.store.clone(),
            named_token(&alice, seed, "race", None, None, T0 + 100),
        );
        mints.spawn(async move {
            store
                .insert_refresh_token(token, audit("token.minted", T0 + 100))
                .await
        });
    }
    let (mut stored, mut conflicts) = (0, 0);
    while let Some(outcome) = mints.join_next().await {
        match outcome? {
            Ok(true) => stored += 1,
            Err(StoreError::Conflict(_)) => conflicts += 1,
            other => return Err(format!("a racing mint: {other:?}").into()),
        }
    }
    assert_eq!((stored, conflicts), (1, 7));
    assert_eq!(trail_len(&db).await?, trail + 1);
    let live: Vec<SessionRecord> = db
        .store
        .list_sessions(&alice.id, 100)
        .await?
        .into_iter()
        .filter(|s| s.named && s.name.as_deref() == Some("race"))
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    Ok(())
}

/// The expiry notices: live named tokens expiring after `now` and by `until`, soonest first,
/// not yet claimed, each told to the person it belongs to or, for a service account's token,
/// to the active person who minted it. A claim is had once; a release makes it claimable again.
pub(super) async fn expiry_notices_claimed_once(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let alice = add_user(store, &org, "alice@example.com", "guest", T0 + 1).await?;
    let bob = add_user(store, &org, "bob@example.com", "admin", T0 + 1).await?;
    let dave = add_user(store, &org, "dave@example.com", "guest", T0 + 1).await?;
    let erin = add_user(store, &org, "erin@example.com", "guest", T0 + 1).await?;
    let sa = add_account(store, &org, "ci", "guest", T0 + 2).await?;
    let other = another_org(store, "Other", T0 + 3).await?;
    let frank = add_user(store, &other, "frank@example.com", "guest", T0 + 4).await?;
    let at = T0 + 10;
    let (now, until) = (T0 + 1_000, T0 + 10_000);

    let soon = named_token(&alice, 1, "a-soon", Some(T0 + 5_000), Some(&alice), at);
    let for_sa = named_token(&sa, 2, "sa-soon", Some(T0 + 6_000), Some(&owner), at);
    let orphan = named_token(&sa, 3, "sa-orphan", Some(T0 + 7_000), Some(&bob), at);
    let by_operator = named_token(&sa, 4, "sa-operator", Some(T0 + 8_000), None, at);
    let elsewhere = named_token(&frank, 5, "f-soon", Some(T0 + 9_000), None, at);
    let at_until = named_token(&alice, 6, "a-edge", Some(until), Some(&owner), at);
    let listed_ones = [soon, for_sa, orphan, by_operator, elsewhere, at_until];
    for token in listed_ones.clone() {
        mint(store, token).await?;
    }
    // Not listed: outside the window, at `now`, never expiring, revoked, of an older
    // epoch, of a removed member.
    let unlisted = [
        named_token(&alice, 10, "a-later", Some(until + 1), None, at),
        named_token(&alice, 11, "a-now", Some(now), None, at),
        named_token(&alice, 12, "a-never", None, None, at),
        named_token(&alice, 14, "a-revoked", Some(T0 + 5_200), None, at),
        named_token(&dave, 15, "d-stale", Some(T0 + 5_300), None, at),
        named_token(&erin, 16, "e-removed", Some(T0 + 5_400), None, at),
    ];
    for token in unlisted.clone() {
        mint(store, token).await?;
    }
    assert!(
        store
            .revoke_session(&unlisted[3].id, &alice.id, audit("token.revoked", at + 1))
            .await?
    );
    assert!(
        store
            .revoke_all_tokens(&dave.id, 0, audit("tokens.revoked_all", at + 1))
            .await?
    );
    for gone in [&erin, &bob] {
        assert_eq!(
            store
                .remove_user(
                    &gone.id,
                    at + 2,
                    None,
                    audit_about("user.removed", at + 2, gone)
                )
                .await?,
            Ok(())
        );
    }

    let notice =
        |token: &NewRefreshToken, org: &Organization, principal: &User, to: Option<&User>| {
            ExpiringToken {
                token_id: token.id.clone(),
                name: token.name.clone(),
                expires_at: token.expires_at.unwrap_or_default(),
                org_name: org.name.clone(),
                principal_name: principal.name.clone(),
                recipient: to.map(|u| u.email.clone()),
            }
        };
    let [soon, for_sa, orphan, by_operator, elsewhere, at_until] = &listed_ones;
    let expected = vec![
        notice(soon, &org, &alice, Some(&alice)),
        notice(for_sa, &org, &sa, Some(&owner)),
        notice(orphan, &org, &sa, None),
        notice(by_operator, &org, &sa, None),
        notice(elsewhere, &other, &frank, Some(&frank)),
        notice(at_until, &org, &alice, Some(&alice)),
    ];
    assert_eq!(store.tokens_expiring(now, until, 100).await?, expected);
    assert_eq!(
        store.tokens_expiring(now, until, 2).await?,
        expected[..2].to_vec(),
        "at most the limit, soonest first"
    );
    assert_eq!(
        store.tokens_expiring(T0 + 5_000, T0 + 6_000, 100).await?,
        expected[1..2].to_vec(),
        "after now, by until"
    );

    // Claimed once; a claimed notice is not listed; released, it is claimable again.
    let trail = trail_len(&db).await?;
    assert!(store.claim_expiry_notice(&soon.id, now + 1).await?);
    assert!(!store.claim_expiry_notice(&soon.id, now + 2).await?);
    let other_store = db.another().await?;
    assert!(
        !other_store.claim_expiry_notice(&soon.id, now + 3).await?,
        "another replica claims it again"
    );
    assert!(!store.claim_expiry_notice("nobody", now + 1).await?);
    assert_eq!(
        store.tokens_expiring(now, until, 100).await?,
        expected[1..].to_vec()
    );
    store.release_expiry_notice(&soon.id).await?;
    assert_eq!(store.tokens_expiring(now, until, 100).await?, expected);
    assert!(other_store.claim_expiry_notice(&soon.id, now + 4).await?);
    assert!(!store.claim_expiry_notice(&soon.id, now + 5).await?);
    other_store.close().await;
    assert!(store.claim_expiry_notice(&at_until.id, now + 6).await?);
    assert_eq!(
        store.tokens_expiring(now, until, 100).await?,
        expected[1..5].to_vec()
    );
    assert_eq!(
        trail_len(&db).await?,
        trail,
        "an expiry notice changes nobody's standing"
    );

    // A token revoked after its notice was claimed is not listed again when released.
    assert!(
        store
            .revoke_session(&for_sa.id, &sa.id, audit("token.revoked", now + 7))
            .await?
    );
    assert!(store.claim_expiry_notice(&for_sa.id, now + 8).await?);
    store.release_expiry_notice(&for_sa.id).await?;
    assert_eq!(
        store.tokens_expiring(now, until, 100).await?,
        expected[2..5].to_vec()
    );

    // Only named tokens are told: an unnamed token with an expiry (the domain mints none
    // today) is not listed.
    let unnamed = NewRefreshToken {
        expires_at: Some(T0 + 5_500),
        ..refresh_token(&alice, 13, None)
    };
    mint(store, unnamed.clone()).await?;
    let listed = store.tokens_expiring(now, until, 100).await?;
    assert!(
        !listed.iter().any(|t| t.token_id == unnamed.id),
        "an unnamed token is listed for an expiry notice: {listed:?}"
    );
    Ok(())
}

/// The organization scopes a grant's user may hold, as the grant carries them (sorted).
async fn held_in_grant(store: &dyn Store, seed: u8) -> Result<Option<Vec<String>>, TestError> {
    let grant = store
        .find_refresh_grant(&hash(seed))
        .await?
        .ok_or("no grant")?;
    Ok(grant.held_org_scopes.map(|held| {
        let mut names: Vec<String> = held.split_whitespace().map(str::to_owned).collect();
        names.sort();
        names
    }))
}

/// A refresh grant of a restricted token carries the organization scopes its user holds now
/// (by role, or a service account's own), read in the same look-up; an unrestricted token's
/// carries none (`None`), and a restricted one whose user holds none an empty list.
pub(super) async fn refresh_grants_carry_held_org_scopes(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let guest = add_user(store, &org, "g@example.com", "guest", T0 + 1).await?;
    let bot = add_account(store, &org, "bot", "guest", T0 + 2).await?;
    let other = another_org(store, "Other", T0 + 3).await?;
    for (org_id, name) in [
        (&org.id, "deploy:prod"),
        (&org.id, "deploy:staging"),
        (&org.id, "bot:only"),
        (&other.id, "deploy:prod"),
    ] {
        assert!(
            store
                .create_org_scope(org_id, name, None, audit("scope.created", T0 + 4))
                .await?
        );
    }
    let grants = [
        (&org.id, "deploy:prod", Grantee::Role("guest".into())),
        (&org.id, "deploy:staging", Grantee::Role("owner".into())),
        (&org.id, "bot:only", Grantee::ServiceAccount(bot.id.clone())),
        // Another organization's grant to the same role never counts here.
        (&other.id, "deploy:prod", Grantee::Role("guest".into())),
    ];
    for (org_id, scope, grantee) in grants {
        assert!(
            store
                .set_scope_grant(
                    org_id,
                    scope,
                    &grantee,
                    true,
                    audit("scope.granted", T0 + 5)
                )
                .await?
        );
    }
    let token = |user: &User, seed: u8, scope: &str| NewRefreshToken {
        scope: scope.into(),
        ..refresh_token(user, seed, None)
    };
    mint(store, token(&guest, 1, "deploy:prod users:read")).await?;
    mint(store, token(&guest, 2, "openid profile")).await?;
    mint(store, token(&bot, 3, "bot:only")).await?;
    mint(store, token(&owner, 4, "users:read")).await?;
    assert_eq!(
        held_in_grant(store, 1).await?,
        Some(vec!["deploy:prod".to_owned()])
    );
    assert_eq!(held_in_grant(store, 2).await?, None, "unrestricted");
    assert_eq!(
        held_in_grant(store, 3).await?,
        Some(vec!["bot:only".to_owned(), "deploy:prod".to_owned()]),
        "a service account's own grant and its role's"
    );
    assert_eq!(
        held_in_grant(store, 4).await?,
        Some(vec!["deploy:staging".to_owned()])
    );
    // A withdrawn grant is gone from the next read; none left is an empty list, not None.
    assert!(
        store
            .set_scope_grant(
                &org.id,
                "deploy:prod",
                &Grantee::Role("guest".into()),
                false,
                audit("scope.grant_revoked", T0 + 6),
            )
            .await?
    );
    assert_eq!(held_in_grant(store, 1).await?, Some(Vec::new()));
    assert_eq!(
        held_in_grant(store, 3).await?,
        Some(vec!["bot:only".to_owned()])
    );
    Ok(())
}
