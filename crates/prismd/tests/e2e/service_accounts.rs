//! Service accounts (issue 17) end to end: Owners and Admins create, list, change and remove
//! them through GraphQL and nobody else does; they are never Owners, never listed among the
//! organization's users and unknown to the user mutations; a token an Admin mints for one
//! outlives that Admin, names the account as its subject, and dies with the account at once;
//! the audit trail names who did it; and the operator commands `prismd service-accounts
//! add|list|remove` and `prismd tokens create --service-account` work and refuse bad input
//! clearly.

use std::path::Path;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::harness::{
    Server, TestResult, admin_ok, browser_sign_in, jwt_claims, oauth_refresh, prismd, temp_dir,
};
use crate::scopes::{
    CREATE_SA, CREATE_TOKEN, CREATE_USER, DELETE_SA, DELETE_USER, INVITE, REVOKE_SESSION, Res,
    UPDATE_NAME, UPDATE_SA_DESCRIPTION, add_member, call, claim_scope, create_sa, exchange,
    expect_error, first_error, must, named_token, owner_access, refused, role_ids, role_of,
    stop_clean,
};

const LIST: &str = "{ serviceAccounts { id name description role { name } createdAt scopes tokens { id name named scopes expiresAt } } }";
const RENAME: &str = "mutation($id: ID!, $name: String!) { updateServiceAccount(input: {id: $id, name: $name}) { serviceAccount { id name description role { name } } errors { field messages } } }";
const SET_SA_ROLE: &str = "mutation($id: ID!, $role: ID!) { updateServiceAccount(input: {id: $id, role: $role}) { serviceAccount { id name role { name } } errors { field messages } } }";
const ME: &str = "{ authenticatedUser { id name email } }";
const NO_SUCH_USER: &str = "no such user in your organization";

/// A member added by the operator, and an access token of theirs: (public id, access).
async fn member(server: &Server, data: &Path, email: &str, role: &str) -> Res<(String, String)> {
    let id = add_member(data, email, role)?;
    let token = named_token(data, email, "t")?;
    Ok((id, exchange(server, &token, None).await?))
}

/// The uuid inside a service account's public id, failing unless it is
/// `base64("ServiceAccount:<uuid>")`.
fn sa_uuid(public: &str) -> Res<String> {
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(public)?)?;
    let uuid = decoded
        .strip_prefix("ServiceAccount:")
        .ok_or_else(|| format!("not a ServiceAccount id: {decoded}"))?;
    uuid::Uuid::parse_str(uuid)?;
    Ok(uuid.to_owned())
}

/// The service accounts `access` lists, failing on an error.
async fn listed(server: &Server, access: &str) -> Res<Vec<Value>> {
    let body = call(server, access, LIST, json!({})).await?;
    if body["errors"].as_array().is_some_and(|e| !e.is_empty()) {
        return Err(format!("serviceAccounts: {body}").into());
    }
    Ok(body["data"]["serviceAccounts"]
        .as_array()
        .ok_or_else(|| format!("no serviceAccounts: {body}"))?
        .clone())
}

fn named<'a>(all: &'a [Value], name: &str) -> Option<&'a Value> {
    all.iter().find(|sa| sa["name"] == name)
}

/// The field of a service account mutation's payload.
const CREATED: &str = "createServiceAccount";
const UPDATED: &str = "updateServiceAccount";
const DELETED: &str = "deleteServiceAccount";

#[tokio::test]
async fn owners_and_admins_manage_service_accounts_nobody_else_does() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = owner_access(&server, data).await?;
    let (_, admin) = member(&server, data, "ada@sa.test", "Admin").await?;
    let (_, ian) = member(&server, data, "ian@sa.test", "Integrator").await?;
    let (_, rita) = member(&server, data, "rita@sa.test", "Restricted Integrator").await?;
    let (_, gus) = member(&server, data, "gus@sa.test", "Guest").await?;
    let roles = role_ids(&server, &owner).await?;
    let role = |name: &str| role_of(&roles, name);
    // Service account mutations (`field`) as `caller` that must succeed or be refused.
    let sa_must = async |caller: &str, query: &str, variables: Value, field: &str| {
        must(&server, caller, query, variables, field).await
    };
    let sa_refused = async |caller: &str, query: &str, variables: Value, field: &str| {
        refused(&server, caller, query, variables, field, "serviceAccount").await
    };

    // Created by an Owner: its id, name, description, role and creation time.
    let created = sa_must(
        &owner,
        CREATE_SA,
        json!({ "name": "ci-bot", "role": role("Integrator")?, "description": "builds" }),
        CREATED,
    )
    .await?;
    let bot = &created["serviceAccount"];
    let bot_id = bot["id"].as_str().ok_or("no id")?.to_owned();
    sa_uuid(&bot_id)?;
    assert_eq!(bot["name"], "ci-bot");
    assert_eq!(bot["description"], "builds");
    assert_eq!(bot["role"]["name"], "Integrator");
    assert!(bot["scopes"].is_array(), "{bot}");
    let created_at = bot["createdAt"].as_str().ok_or("no createdAt")?;
    humantime::parse_rfc3339_weak(created_at)?;
    // By an Admin, with the name trimmed; an Admin may make an Admin account.
    let padded = sa_must(
        &admin,
        CREATE_SA,
        json!({ "name": "  padded bot  ", "role": role("Admin")? }),
        CREATED,
    )
    .await?;
    assert_eq!(padded["serviceAccount"]["name"], "padded bot");
    assert_eq!(padded["serviceAccount"]["role"]["name"], "Admin");
    let padded_id = padded["serviceAccount"]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    let longest = "n".repeat(100);
    create_sa(&server, &admin, &longest, &role("Guest")?).await?;

    // Refused: bad names, a taken name, the Owner role, an unknown role.
    let too_long = "n".repeat(101);
    for (name, role_id, field, who) in [
        ("", role("Guest")?, "name", "an empty name"),
        ("   ", role("Guest")?, "name", "a blank name"),
        (too_long.as_str(), role("Guest")?, "name", "101 characters"),
        ("ci-bot", role("Guest")?, "name", "a taken name"),
        (" ci-bot ", role("Guest")?, "name", "a taken name, padded"),
        ("boss", role("Owner")?, "role", "the Owner role"),
        ("boss", "Root".to_owned(), "role", "an unknown role"),
    ] {
        for (caller, as_whom) in [(&owner, "Owner"), (&admin, "Admin")] {
            let errors = sa_refused(
                caller,
                CREATE_SA,
                json!({ "name": name, "role": role_id }),
                CREATED,
            )
            .await
            .map_err(|err| format!("{who} as {as_whom}: {err}"))?;
            assert_eq!(
                first_error(&errors).0,
                field,
                "{who} as {as_whom}: {errors:?}"
            );
        }
    }
    // Members create, change and remove none.
    for (caller, who) in [
        (&ian, "Integrator"),
        (&rita, "Restricted Integrator"),
        (&gus, "Guest"),
    ] {
        let create = json!({ "name": format!("{who} bot"), "role": role("Guest")? });
        let describe = json!({ "id": bot_id, "description": "mine now" });
        let in_who = |err| format!("{who}: {err}");
        let errors = sa_refused(caller, CREATE_SA, create, CREATED)
            .await
            .map_err(in_who)?;
        assert_eq!(first_error(&errors).0, "__all__", "{who}: {errors:?}");
        sa_refused(caller, UPDATE_SA_DESCRIPTION, describe, UPDATED)
            .await
            .map_err(in_who)?;
        sa_refused(caller, DELETE_SA, json!({ "id": bot_id }), DELETED)
            .await
            .map_err(in_who)?;
    }

    // Listed for Owners and Admins; never among the organization's users.
    for caller in [&owner, &admin] {
        let all = listed(&server, caller).await?;
        let mut names: Vec<&str> = all.iter().filter_map(|sa| sa["name"].as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["ci-bot", longest.as_str(), "padded bot"]);
    }
    let users = call(
        &server,
        &owner,
        "{ organization { users(first: 100) { nodes { id name email } } } }",
        json!({}),
    )
    .await?;
    let nodes = users["data"]["organization"]["users"]["nodes"]
        .as_array()
        .ok_or_else(|| format!("no users: {users}"))?;
    assert_eq!(nodes.len(), 5, "{users}");
    for node in nodes {
        assert_ne!(node["email"], "", "{node}");
        assert_ne!(node["id"], bot_id.as_str());
        assert_ne!(node["name"], "ci-bot");
    }

    // Changed by an Admin: name, description, role; never Owner, never a taken name.
    let renamed = sa_must(
        &admin,
        RENAME,
        json!({ "id": bot_id, "name": "  ci-robot " }),
        UPDATED,
    )
    .await?;
    assert_eq!(renamed["serviceAccount"]["name"], "ci-robot");
    assert_eq!(renamed["serviceAccount"]["description"], "builds");
    let describe = json!({ "id": bot_id, "description": "builds and tests" });
    sa_must(&admin, UPDATE_SA_DESCRIPTION, describe, UPDATED).await?;
    let to_guest = json!({ "id": bot_id, "role": role("Guest")? });
    let changed = sa_must(&admin, SET_SA_ROLE, to_guest, UPDATED).await?;
    assert_eq!(changed["serviceAccount"]["role"]["name"], "Guest");
    let all = listed(&server, &owner).await?;
    let bot = named(&all, "ci-robot").ok_or("ci-robot not listed")?;
    assert_eq!(bot["id"], bot_id.as_str());
    assert_eq!(bot["description"], "builds and tests");
    assert_eq!(bot["role"]["name"], "Guest");
    assert!(named(&all, "ci-bot").is_none());
    for caller in [&owner, &admin] {
        let to_owner = json!({ "id": bot_id, "role": role("Owner")? });
        let errors = sa_refused(caller, SET_SA_ROLE, to_owner, UPDATED).await?;
        assert_eq!(first_error(&errors).0, "role", "{errors:?}");
        let rename = |name: &str| json!({ "id": bot_id, "name": name });
        let errors = sa_refused(caller, RENAME, rename("padded bot"), UPDATED).await?;
        assert_eq!(first_error(&errors).0, "name", "{errors:?}");
        sa_refused(caller, RENAME, rename("  "), UPDATED).await?;
    }
    let all = listed(&server, &owner).await?;
    assert_eq!(
        named(&all, "ci-robot").ok_or("ci-robot gone")?["role"]["name"],
        "Guest"
    );

    // The user mutations do not know service accounts.
    let (field, message) = first_error(
        &refused(
            &server,
            &owner,
            DELETE_USER,
            json!({ "id": bot_id }),
            "deleteUser",
            "user",
        )
        .await?,
    );
    assert_eq!((field.as_str(), message.as_str()), ("id", NO_SUCH_USER));
    let errors = refused(
        &server,
        &owner,
        UPDATE_NAME,
        json!({ "id": bot_id, "name": "person now" }),
        "updateUser",
        "user",
    )
    .await?;
    assert_eq!(first_error(&errors).1, NO_SUCH_USER, "{errors:?}");
    let errors = refused(
        &server,
        &owner,
        INVITE,
        json!({ "id": bot_id }),
        "createUserInvitation",
        "url",
    )
    .await?;
    assert_eq!(first_error(&errors).1, NO_SUCH_USER, "{errors:?}");
    // Nor does the service account mutations know people.
    let person = must(
        &server,
        &owner,
        CREATE_USER,
        json!({ "email": "person@sa.test", "role": role("Guest")? }),
        "createOrganizationUser",
    )
    .await?;
    let person_id = &person["user"]["id"];
    sa_refused(&owner, DELETE_SA, json!({ "id": person_id }), DELETED).await?;

    // Removed by an Admin: gone from the list, and its name is free again.
    let deleted = sa_must(&admin, DELETE_SA, json!({ "id": padded_id }), DELETED).await?;
    assert_eq!(deleted["serviceAccount"]["id"], padded_id.as_str());
    let all = listed(&server, &admin).await?;
    assert!(named(&all, "padded bot").is_none(), "{all:?}");
    sa_refused(&admin, DELETE_SA, json!({ "id": padded_id }), DELETED).await?;
    let again = create_sa(&server, &admin, "padded bot", &role("Guest")?).await?;
    assert_ne!(again, padded_id);
    stop_clean(server)
}

#[tokio::test]
async fn a_service_account_token_outlives_its_minter_and_dies_with_the_account() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = owner_access(&server, data).await?;
    let (ada_id, ada) = member(&server, data, "ada@sa.test", "Admin").await?;
    let (_, ian) = member(&server, data, "ian@sa.test", "Integrator").await?;
    let (_, gus) = member(&server, data, "gus@sa.test", "Guest").await?;
    let roles = role_ids(&server, &owner).await?;
    let integrator = role_of(&roles, "Integrator")?;
    let guest = role_of(&roles, "Guest")?;

    let sa_id = create_sa(&server, &ada, "deployer", &integrator).await?;
    let sa_uuid = sa_uuid(&sa_id)?;
    // It has no sign-in: neither its name nor its empty email signs in, whatever the password.
    for email in ["deployer", ""] {
        let page = browser_sign_in(&server, email, "any password at all", "sa-e2e").await?;
        assert_ne!(page.status, 303, "signed in as {email:?}: {}", page.body);
        assert!(page.location_param("code").is_none());
    }

    // The Admin mints two tokens for it (no users:write needed: it is sessions:write).
    let mint = async |access: &str, name: &str, scopes: Value| -> Res<Value> {
        call(
            &server,
            access,
            CREATE_TOKEN,
            json!({ "name": name, "scopes": scopes, "sa": sa_id }),
        )
        .await
    };
    let deploy = mint(&ada, "deploy", Value::Null).await?;
    let payload = &deploy["data"]["createToken"];
    assert_eq!(payload["errors"], json!([]), "{deploy}");
    let deploy_token = payload["token"].as_str().ok_or("no token")?.to_owned();
    assert!(deploy_token.starts_with("prism_rt_"), "{deploy_token}");
    assert_eq!(payload["session"]["name"], "deploy");
    assert_eq!(payload["session"]["named"], true);
    assert!(payload["session"]["scopes"].is_null(), "{payload}");
    let readonly = mint(&ada, "readonly", json!(["users:read"])).await?;
    let payload = &readonly["data"]["createToken"];
    assert_eq!(payload["errors"], json!([]), "{readonly}");
    let readonly_token = payload["token"].as_str().ok_or("no token")?.to_owned();
    let readonly_session = payload["session"]["id"]
        .as_str()
        .ok_or("no session id")?
        .to_owned();
    assert_eq!(payload["session"]["scopes"], json!(["users:read"]));
    // The name is the account's: taken for it, free for the Admin herself.
    let duplicate = mint(&owner, "deploy", Value::Null).await?;
    assert_eq!(
        duplicate["data"]["createToken"]["errors"][0]["field"], "name",
        "{duplicate}"
    );
    assert!(duplicate["data"]["createToken"]["token"].is_null());
    must(
        &server,
        &ada,
        CREATE_TOKEN,
        json!({ "name": "deploy" }),
        "createToken",
    )
    .await?;
    // Members mint none for it.
    for (caller, who) in [(&ian, "Integrator"), (&gus, "Guest")] {
        let body = mint(caller, &format!("{who}'s"), Value::Null).await?;
        let payload = &body["data"]["createToken"];
        assert!(payload["token"].is_null(), "{who}: {body}");
        assert_ne!(payload["errors"], json!([]), "{who}: {body}");
    }
    // A scope the account's role may not hold is refused.
    let body = mint(&ada, "audit", json!(["audit:read"])).await?;
    assert_eq!(
        body["data"]["createToken"]["errors"][0]["field"], "scopes",
        "{body}"
    );

    // Listed with the account, for managers.
    let all = listed(&server, &owner).await?;
    let tokens = named(&all, "deployer").ok_or("deployer not listed")?["tokens"]
        .as_array()
        .ok_or("no tokens")?
        .clone();
    let mut names: Vec<&str> = tokens.iter().filter_map(|t| t["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["deploy", "readonly"]);

    // The Owner removes the Admin who minted them: they keep working.
    must(
        &server,
        &owner,
        DELETE_USER,
        json!({ "id": ada_id }),
        "deleteUser",
    )
    .await?;
    assert_eq!(server.whoami(&ada).await?, Err(401));
    let access = exchange(&server, &deploy_token, None).await?;
    let (status, body) = oauth_refresh(&server, &deploy_token, None).await?;
    assert_eq!(status, 200, "{body}");
    // Its subject is the account; it reads as the account, with the account's role.
    let claims = jwt_claims(&access)?;
    assert_eq!(claims["sub"], sa_uuid.as_str(), "{claims}");
    let me = call(&server, &access, ME, json!({})).await?;
    assert_eq!(me["data"]["authenticatedUser"]["name"], "deployer", "{me}");
    assert_eq!(me["data"]["authenticatedUser"]["email"], "", "{me}");
    // The id it reads as is the one serviceAccounts shows.
    assert_eq!(
        me["data"]["authenticatedUser"]["id"],
        sa_id.as_str(),
        "{me}"
    );
    let users = call(
        &server,
        &access,
        "{ organization { users(first: 1) { nodes { id } } } }",
        json!({}),
    )
    .await?;
    assert!(users["errors"].is_null(), "{users}");
    let person = json!({ "email": "sa-made@sa.test", "role": guest });
    let field = "createOrganizationUser";
    let errors = refused(&server, &access, CREATE_USER, person, field, "user").await?;
    assert_eq!(errors[0]["field"], "__all__");
    assert_eq!(
        claim_scope(&exchange(&server, &readonly_token, None).await?)?,
        "users:read"
    );

    // A manager revokes one of its tokens.
    let session = json!({ "id": readonly_session });
    must(&server, &owner, REVOKE_SESSION, session, "revokeSession").await?;
    expect_error(
        &server.refresh(&readonly_token).await?,
        "invalid_grant",
        "a revoked token of the account",
    );

    // The audit trail names the Admin for what she did, though she is gone.
    for action in ["service_account.created", "token.minted"] {
        let body = call(
            &server,
            &owner,
            "query($action: String) { auditEvents(filter: {action: $action}, first: 50) { nodes { action actor actorUserId } } }",
            json!({ "action": action }),
        )
        .await?;
        let nodes = body["data"]["auditEvents"]["nodes"]
            .as_array()
            .ok_or_else(|| format!("no auditEvents: {body}"))?;
        assert!(
            nodes.iter().any(|n| n["actorUserId"] == ada_id.as_str()),
            "no {action} by the Admin: {body}"
        );
    }

    // Removing the account ends its tokens at once: refresh and access token.
    must(&server, &owner, DELETE_SA, json!({ "id": sa_id }), DELETED).await?;
    expect_error(
        &server.refresh(&deploy_token).await?,
        "invalid_grant",
        "a token of a removed account",
    );
    let (status, _, body) = server.graphql(Some(&access), ME).await?;
    assert_eq!(status, 401, "{body}");
    assert!(listed(&server, &owner).await?.is_empty());
    stop_clean(server)
}

/// Whether `stderr` says that the service account `name` is unknown.
fn unknown_account(stderr: &str, name: &str) -> bool {
    stderr.contains("no such service account") || stderr.contains(&format!("{name:?}"))
}

/// `prismd service-accounts add` of `name` with `role`.
fn sa_add<'a>(name: &'a str, role: &'a str) -> Vec<&'a str> {
    vec!["service-accounts", "add", "--name", name, "--role", role]
}

/// `prismd tokens create` of a token `name` for the service account `sa`, then `extra`.
fn sa_token<'a>(sa: &'a str, name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["tokens", "create", "--service-account", sa, "--name", name];
    args.extend_from_slice(extra);
    args
}

/// An operator command in the organization `tenant` that must fail; its stderr.
fn operator_fails(data: &Path, tenant: &str, args: &[&str]) -> Res<String> {
    let mut full = vec!["--tenant-id", tenant];
    full.extend_from_slice(args);
    let output = prismd(data, &full)?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        return Err(format!(
            "prismd {args:?} succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        )
        .into());
    }
    Ok(stderr)
}

#[tokio::test]
async fn operator_commands_manage_service_accounts_and_mint_their_tokens() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = owner_access(&server, data).await?;
    let orgs = admin_ok(data, &["orgs", "list"])?;
    let tenant = orgs
        .lines()
        .find(|line| line.ends_with("(default)"))
        .and_then(|line| line.split_whitespace().next())
        .ok_or_else(|| format!("no default organization in {orgs:?}"))?
        .to_owned();
    let beta = admin_ok(data, &["orgs", "add", "--name", "Beta"])?;
    let run = |tenant: &str, args: &[&str]| -> Res<String> {
        let mut full = vec!["--tenant-id", tenant];
        full.extend_from_slice(args);
        admin_ok(data, &full)
    };

    let mut add_builder = sa_add("builder", "Integrator");
    add_builder.extend(["--description", "CI builds"]);
    let id = run(&tenant, &add_builder)?;
    let uuid = sa_uuid(&id)?;
    let list = run(&tenant, &["service-accounts", "list"])?;
    assert!(list.contains("builder"), "{list}");
    assert!(list.contains("Integrator"), "{list}");
    // Another organization's list does not show it.
    let other = run(&beta, &["service-accounts", "list"])?;
    assert!(!other.contains("builder"), "{other}");

    // A named, scoped, expiring token for it.
    let token = run(
        &tenant,
        &sa_token(
            "builder",
            "ci",
            &["--scope", "users:read", "--expires-in", "30d"],
        ),
    )?;
    assert!(token.starts_with("prism_rt_"), "{token}");
    assert_eq!(
        token.lines().count(),
        1,
        "only the token is printed: {token}"
    );
    let (status, body) = crate::harness::refresh_with_scope(&server, &token, None).await?;
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"].as_str().ok_or("no access token")?;
    assert_eq!(jwt_claims(access)?["sub"], uuid.as_str());
    assert_eq!(claim_scope(access)?, "users:read");
    let expires_in = body["refresh_token_expires_in"]
        .as_u64()
        .ok_or_else(|| format!("no refresh_token_expires_in: {body}"))?;
    assert!(
        expires_in <= 30 * 86_400 && expires_in > 29 * 86_400,
        "{expires_in}"
    );
    // Seen through GraphQL as the Owner.
    let all = listed(&server, &owner).await?;
    let builder = named(&all, "builder").ok_or("builder not listed")?;
    assert_eq!(builder["id"], id.as_str());
    assert_eq!(builder["description"], "CI builds");
    assert_eq!(builder["role"]["name"], "Integrator");
    let ci = &builder["tokens"][0];
    assert_eq!(ci["name"], "ci", "{builder}");
    assert_eq!(ci["scopes"], json!(["users:read"]));
    assert!(ci["expiresAt"].is_string(), "{ci}");

    // Bad input: a clear message and a non-zero exit.
    let fails = |args: &[&str]| operator_fails(data, &tenant, args);
    let stderr = fails(&sa_add("x", "Root"))?;
    assert!(stderr.contains("role"), "{stderr}");
    let stderr = fails(&sa_add("x", "Owner"))?;
    assert!(stderr.contains("Owner"), "{stderr}");
    let stderr = fails(&sa_add("builder", "Guest"))?;
    assert!(stderr.contains("exists"), "a taken name: {stderr}");
    let stderr = fails(&sa_add(" ", "Guest"))?;
    assert!(stderr.contains("name"), "{stderr}");
    let stderr = fails(&sa_token("ghost", "x", &[]))?;
    assert!(unknown_account(&stderr, "ghost"), "{stderr}");
    // The account is in the default organization, not in Beta.
    let stderr = operator_fails(data, &beta, &sa_token("builder", "x", &[]))?;
    assert!(unknown_account(&stderr, "builder"), "{stderr}");
    let stderr = fails(&sa_token("builder", "ci", &[]))?;
    assert!(stderr.contains("exists"), "a taken name: {stderr}");
    let stderr = fails(&sa_token("builder", "audit", &["--scope", "audit:read"]))?;
    assert!(stderr.contains("audit:read"), "{stderr}");
    let stderr = fails(&sa_token("builder", "odd", &["--expires-in", "30x"]))?;
    assert!(!stderr.is_empty());
    fails(&sa_token(
        "builder",
        "both",
        &["--email", "owner@localhost"],
    ))?;
    let stderr = fails(&["service-accounts", "remove", "--name", "ghost"])?;
    assert!(unknown_account(&stderr, "ghost"), "{stderr}");

    // The operator is the actor of what it did.
    let audit = admin_ok(
        data,
        &[
            "audit",
            "--action",
            "service_account.created",
            "--limit",
            "10",
        ],
    )?;
    let event: Value = serde_json::from_str(audit.lines().next().ok_or("no event")?)?;
    assert_eq!(event["actor"], "operator", "{event}");

    // Removed: no longer listed, and its token stops (the change reaches the server through
    // its change feed).
    run(
        &tenant,
        &["service-accounts", "remove", "--name", "builder"],
    )?;
    let list = run(&tenant, &["service-accounts", "list"])?;
    assert!(!list.contains("builder"), "{list}");
    expect_error(
        &server.refresh_after_change(&token).await?,
        "invalid_grant",
        "a token of an account the operator removed",
    );
    stop_clean(server)
}
