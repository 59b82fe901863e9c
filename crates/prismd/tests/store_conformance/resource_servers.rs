//! Store conformance: resource servers (token introspection clients): who may register,
//! re-key and delete them, names unique per organization and among the instance-wide ones,
//! and lookups by client id across organizations.

use prismd::store::{Grantee, ResourceServerRecord};

use super::*;

fn server(org: Option<&Organization>, name: &str) -> ResourceServerRecord {
    ResourceServerRecord {
        id: format!("prism_rs_{}", uuid::Uuid::new_v4().simple()),
        org_id: org.map(|org| org.id.clone()),
        name: name.into(),
        description: Some("orders API".into()),
        secret_hash: vec![7; 32],
        created_at: T0,
        secret_set_at: T0,
    }
}

async fn try_create(
    store: &dyn Store,
    server: ResourceServerRecord,
    actor: Option<&str>,
) -> Result<Result<ResourceServerRecord, Refusal>, StoreError> {
    let event = AuditEvent {
        org_id: server.org_id.clone(),
        ..audit("resource_server.created", T0)
    };
    store.create_resource_server(server, actor, event).await
}

async fn audit_count(db: &Db, action: &str) -> Result<i64, TestError> {
    db.count_bind(
        "SELECT COUNT(*) FROM audit_events WHERE action = $1",
        action,
    )
    .await
}

pub(super) async fn resource_servers_follow_actor_rules(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let admin = add_user(store, &org, "admin@example.com", "admin", T0).await?;
    let other_org = another_org(store, "Other", T0).await?;

    // Only Owners of the organization, and operators; instance-wide ones only operators.
    assert_eq!(
        try_create(store, server(Some(&org), "by admin"), Some(&admin.id)).await?,
        Err(Refusal::Forbidden),
        "an Admin may not"
    );
    assert_eq!(
        try_create(store, server(Some(&other_org), "foreign"), Some(&owner.id)).await?,
        Err(Refusal::Forbidden),
        "an Owner of another organization may not"
    );
    assert_eq!(
        try_create(store, server(None, "everywhere"), Some(&owner.id)).await?,
        Err(Refusal::Forbidden),
        "an Owner may not register an instance-wide one"
    );
    assert_eq!(audit_count(&db, "resource_server.created").await?, 0);
    let orders = try_create(store, server(Some(&org), "orders"), Some(&owner.id))
        .await?
        .map_err(|r| format!("an Owner may: {r:?}"))?;
    let billing = try_create(store, server(Some(&org), "billing"), None)
        .await?
        .map_err(|r| format!("an operator may: {r:?}"))?;
    let wide = try_create(store, server(None, "gateway"), None)
        .await?
        .map_err(|r| format!("an operator may register an instance-wide one: {r:?}"))?;
    assert_eq!(audit_count(&db, "resource_server.created").await?, 3);

    // Names: unique per organization and among the instance-wide ones, free elsewhere.
    assert_eq!(
        try_create(store, server(Some(&org), "orders"), None).await?,
        Err(Refusal::NameTaken)
    );
    assert_eq!(
        try_create(store, server(None, "gateway"), None).await?,
        Err(Refusal::NameTaken)
    );
    try_create(store, server(Some(&other_org), "orders"), None)
        .await?
        .map_err(|r| format!("another organization's name: {r:?}"))?;
    try_create(store, server(None, "orders"), None)
        .await?
        .map_err(|r| format!("an instance-wide one of an organization's name: {r:?}"))?;

    // Listed by name, per organization or instance-wide; found by client id from anywhere.
    let names = |servers: Vec<ResourceServerRecord>| -> Vec<String> {
        servers.into_iter().map(|s| s.name).collect()
    };
    assert_eq!(
        names(store.resource_servers(Some(&org.id)).await?),
        ["billing", "orders"]
    );
    assert_eq!(
        names(store.resource_servers(None).await?),
        ["gateway", "orders"]
    );
    assert_eq!(
        store.resource_server(&orders.id).await?,
        Some(orders.clone())
    );
    assert_eq!(store.resource_server(&wide.id).await?, Some(wide.clone()));
    assert_eq!(store.resource_server("prism_rs_nothing").await?, None);

    // A new secret: Owners and operators; not of another organization's server.
    let rotate = |org_id: Option<&str>, id: &str, actor: Option<&str>| {
        let event = audit("resource_server.secret_rotated", T0 + 5);
        let (org_id, id, actor) = (
            org_id.map(str::to_owned),
            id.to_owned(),
            actor.map(str::to_owned),
        );
        async move {
            store
                .set_resource_server_secret(
                    org_id.as_deref(),
                    &id,
                    vec![9; 32],
                    T0 + 5,
                    actor.as_deref(),
                    event,
                )
                .await
        }
    };
    assert_eq!(
        rotate(Some(&org.id), &orders.id, Some(&admin.id)).await?,
        Err(Refusal::Forbidden)
    );
    assert_eq!(
        rotate(Some(&other_org.id), &orders.id, None).await?,
        Err(Refusal::NotFound),
        "not a server of that organization"
    );
    assert_eq!(
        rotate(None, &orders.id, None).await?,
        Err(Refusal::NotFound),
        "not an instance-wide one"
    );
    assert_eq!(
        rotate(None, &wide.id, Some(&owner.id)).await?,
        Err(Refusal::Forbidden)
    );
    let rotated = rotate(Some(&org.id), &orders.id, Some(&owner.id))
        .await?
        .map_err(|r| format!("the Owner may rotate: {r:?}"))?;
    assert_eq!(rotated.secret_hash, vec![9; 32]);
    assert_eq!(rotated.secret_set_at, T0 + 5);
    assert_eq!(rotated.created_at, T0);
    assert_eq!(store.resource_server(&orders.id).await?, Some(rotated));
    assert_eq!(audit_count(&db, "resource_server.secret_rotated").await?, 1);

    // Deleting: the same rules; gone for its client authentication at once.
    let delete = |org_id: Option<&str>, id: &str, actor: Option<&str>| {
        let event = audit("resource_server.deleted", T0 + 9);
        let (org_id, id, actor) = (
            org_id.map(str::to_owned),
            id.to_owned(),
            actor.map(str::to_owned),
        );
        async move {
            store
                .delete_resource_server(org_id.as_deref(), &id, actor.as_deref(), event)
                .await
        }
    };
    assert_eq!(
        delete(Some(&org.id), &billing.id, Some(&admin.id)).await?,
        Err(Refusal::Forbidden)
    );
    assert_eq!(
        delete(Some(&other_org.id), &billing.id, None).await?,
        Err(Refusal::NotFound)
    );
    assert_eq!(
        delete(None, &wide.id, Some(&owner.id)).await?,
        Err(Refusal::Forbidden)
    );
    delete(Some(&org.id), &billing.id, Some(&owner.id))
        .await?
        .map_err(|r| format!("the Owner may delete: {r:?}"))?;
    delete(None, &wide.id, None)
        .await?
        .map_err(|r| format!("an operator may delete an instance-wide one: {r:?}"))?;
    assert_eq!(store.resource_server(&billing.id).await?, None);
    assert_eq!(store.resource_server(&wide.id).await?, None);
    assert_eq!(
        delete(Some(&org.id), &billing.id, None).await?,
        Err(Refusal::NotFound),
        "deleted twice"
    );
    assert_eq!(audit_count(&db, "resource_server.deleted").await?, 2);
    assert_eq!(
        names(store.resource_servers(Some(&org.id)).await?),
        ["orders"]
    );
    Ok(())
}

pub(super) async fn cache_forgets_resource_servers_at_once(db: Db) -> TestResult {
    let (org, owner) = org_with_owner(db.store.as_ref()).await?;
    let cached = live_cache(&db, 1000).await?;
    let orders = try_create(&*cached, server(Some(&org), "orders"), Some(&owner.id))
        .await?
        .map_err(|r| format!("refused: {r:?}"))?;
    // Unknown ids are never cached: one registered elsewhere works at once.
    assert_eq!(cached.resource_server("prism_rs_later").await?, None);
    assert_eq!(
        cached.resource_server(&orders.id).await?,
        Some(orders.clone())
    );
    let before = cached.stats();
    assert_eq!(
        cached.resource_server(&orders.id).await?,
        Some(orders.clone())
    );
    assert_eq!(cached.stats().hits, before.hits + 1, "answered from memory");

    // This process re-keys it: the next read has the new secret.
    let rotated = cached
        .set_resource_server_secret(
            Some(&org.id),
            &orders.id,
            vec![9; 32],
            T0 + 5,
            None,
            audit("resource_server.secret_rotated", T0 + 5),
        )
        .await?
        .map_err(|r| format!("refused: {r:?}"))?;
    assert_eq!(cached.resource_server(&orders.id).await?, Some(rotated));

    // Another process deletes it: gone once its change is heard (here: handed over).
    cached.resource_server(&orders.id).await?;
    let event = audit("resource_server.deleted", T0 + 9);
    db.store
        .delete_resource_server(Some(&org.id), &orders.id, None, event.clone())
        .await?
        .map_err(|r| format!("refused: {r:?}"))?;
    cached.apply(&Change::of(&event));
    assert_eq!(cached.resource_server(&orders.id).await?, None);
    Ok(())
}

pub(super) async fn principals_carry_the_grants_of_now(db: Db) -> TestResult {
    let store = db.store.as_ref();
    let (org, owner) = org_with_owner(store).await?;
    let cached = live_cache(&db, 1000).await?;
    let token = refresh_token(&owner, 1, None);
    let session = token.id.clone();
    cached.insert_refresh_token(token, audit("t", T0)).await?;
    let principal = cached
        .principal(&owner.id, &session)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.held_org_scopes, "");

    // A grant to the Owners' role (audited about no one user) reaches the cached principal.
    for name in ["deploy:prod", "deploy:staging"] {
        assert!(
            cached
                .create_org_scope(&org.id, name, None, audit("scope.created", T0))
                .await?
        );
    }
    let grant = |scope: &'static str, to: Grantee, on: bool| {
        let cached = &cached;
        let org_id = org.id.clone();
        async move {
            cached
                .set_scope_grant(&org_id, scope, &to, on, audit("scope.granted", T0 + 1))
                .await
        }
    };
    assert!(grant("deploy:prod", Grantee::Role("owner".into()), true).await?);
    let principal = cached
        .principal(&owner.id, &session)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.held_org_scopes, "deploy:prod");
    assert!(grant("deploy:prod", Grantee::Role("owner".into()), false).await?);
    let principal = cached
        .principal(&owner.id, &session)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.held_org_scopes, "", "a withdrawn grant");
    // Grants of other roles are not the Owner's.
    assert!(grant("deploy:staging", Grantee::Role("admin".into()), true).await?);
    let principal = cached
        .principal(&owner.id, &session)
        .await?
        .ok_or("no principal")?;
    assert_eq!(principal.held_org_scopes, "");
    Ok(())
}
