//! The GraphQL API beyond `authenticatedUser`: pagination, roles, user mutations with their
//! permission rules, organization boundaries, and invitations.

use serde_json::{Value, json};

use crate::harness::{Server, TestResult, admin_ok, prismd_with_stdin, temp_dir};

async fn gql(
    server: &Server,
    access: &str,
    query: &str,
    variables: Value,
) -> Result<Value, Box<dyn std::error::Error>> {
    let response = server
        .http
        .post(server.url("/api"))
        .header("authorization", format!("Bearer {access}"))
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    Ok(response.json().await?)
}

/// Adds a user with `role` (in `tenant`, if given) and returns an access token for them.
pub(crate) async fn member(
    server: &Server,
    data: &std::path::Path,
    tenant: Option<&str>,
    email: &str,
    role: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut prefix = Vec::new();
    if let Some(tenant) = tenant {
        prefix = vec!["--tenant-id", tenant];
    }
    admin_ok(
        data,
        &[
            prefix.as_slice(),
            &["users", "add", "--email", email, "--role", role],
        ]
        .concat(),
    )?;
    let refresh = admin_ok(
        data,
        &[prefix.as_slice(), &["tokens", "create", "--email", email]].concat(),
    )?;
    server.access_token(&refresh).await
}

const CREATE: &str = "mutation($name: String, $email: String!, $role: ID!) { createOrganizationUser(input: {name: $name, email: $email, role: $role}) { user { id email role { name } } invitationUrl errors { field messages } } }";
pub(crate) const DELETE: &str =
    "mutation($id: ID!) { deleteUser(input: {id: $id}) { user { id } errors { field messages } } }";
pub(crate) const UPDATE: &str = "mutation($id: ID!, $name: String, $phone: String) { updateUser(input: {id: $id, name: $name, phone: $phone}) { user { id name phone } errors { field messages } } }";

fn role_id(roles: &Value, name: &str) -> String {
    roles["data"]["organizationRoles"]
        .as_array()
        .and_then(|r| r.iter().find(|role| role["name"] == name))
        .and_then(|role| role["id"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn first_error(payload: &Value) -> (String, String) {
    let error = &payload["errors"][0];
    (
        error["field"].as_str().unwrap_or_default().to_owned(),
        error["messages"][0].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn roles_and_permissions_of_user_mutations() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner_refresh = admin_ok(data, &["tokens", "create", "--email", "owner@localhost"])?;
    let owner = server.access_token(&owner_refresh).await?;
    let admin = member(&server, data, None, "admin@example.com", "Admin").await?;
    let integrator = member(&server, data, None, "dev@example.com", "Integrator").await?;

    let roles = gql(
        &server,
        &owner,
        "{ organizationRoles { id name description } }",
        json!({}),
    )
    .await?;
    let names: Vec<&str> = roles["data"]["organizationRoles"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        [
            "Owner",
            "Admin",
            "Integrator",
            "Restricted Integrator",
            "Guest"
        ]
    );
    let (owner_role, integrator_role) = (role_id(&roles, "Owner"), role_id(&roles, "Integrator"));

    let me = gql(&server, &integrator, "{ authenticatedUser { id name email tenantId externalId phone role { id name description } darkMode darkModeSyncWithOs org { id name } customer { id } } }", json!({})).await?;
    let user = &me["data"]["authenticatedUser"];
    assert_eq!(
        (user["email"].as_str(), user["role"]["name"].as_str()),
        (Some("dev@example.com"), Some("Integrator"))
    );
    assert!(user["customer"].is_null() && user["phone"].is_null() && user["darkMode"] == false);
    let integrator_id = user["id"].as_str().ok_or("id")?.to_owned();

    // An Integrator cannot create users; the message is the client's to show.
    let denied = gql(
        &server,
        &integrator,
        CREATE,
        json!({"email": "x@example.com", "role": integrator_role}),
    )
    .await?;
    assert_eq!(
        first_error(&denied["data"]["createOrganizationUser"]),
        (
            "__all__".into(),
            "only Owners and Admins can add users".into()
        )
    );

    // An Admin can, with a role id or a role name; not an Owner.
    let created = gql(
        &server,
        &admin,
        CREATE,
        json!({"name": "New", "email": "New@Example.com", "role": integrator_role}),
    )
    .await?;
    let payload = &created["data"]["createOrganizationUser"];
    assert_eq!(payload["errors"], json!([]), "{created}");
    assert_eq!(payload["user"]["email"], "new@example.com");
    assert!(
        payload["invitationUrl"]
            .as_str()
            .is_some_and(|u| u.starts_with(&format!("{}/invite?token=", server.base)))
    );
    let new_id = payload["user"]["id"].as_str().ok_or("id")?.to_owned();
    let by_name = gql(
        &server,
        &admin,
        CREATE,
        json!({"email": "guest@example.com", "role": "Guest"}),
    )
    .await?;
    assert_eq!(
        by_name["data"]["createOrganizationUser"]["user"]["role"]["name"],
        "Guest"
    );
    let owner_by_admin = gql(
        &server,
        &admin,
        CREATE,
        json!({"email": "boss@example.com", "role": owner_role}),
    )
    .await?;
    assert_eq!(
        first_error(&owner_by_admin["data"]["createOrganizationUser"]).1,
        "only Owners can add Owners"
    );

    // Validation problems name their field.
    let duplicate = gql(
        &server,
        &admin,
        CREATE,
        json!({"email": "new@example.com", "role": integrator_role}),
    )
    .await?;
    assert_eq!(
        first_error(&duplicate["data"]["createOrganizationUser"]).0,
        "email"
    );
    let bad_role = gql(
        &server,
        &admin,
        CREATE,
        json!({"email": "r@example.com", "role": "Um9sZTpyb290"}),
    )
    .await?;
    assert_eq!(
        first_error(&bad_role["data"]["createOrganizationUser"]).0,
        "role"
    );
    let bad_email = gql(
        &server,
        &admin,
        CREATE,
        json!({"email": "nope", "role": integrator_role}),
    )
    .await?;
    assert_eq!(
        first_error(&bad_email["data"]["createOrganizationUser"]).0,
        "email"
    );

    // Everyone updates their own profile; only managers update others'.
    let own = gql(
        &server,
        &integrator,
        UPDATE,
        json!({"id": integrator_id, "name": "Dev", "phone": "+1 555 0100"}),
    )
    .await?;
    assert_eq!(own["data"]["updateUser"]["user"]["name"], "Dev");
    assert_eq!(own["data"]["updateUser"]["user"]["phone"], "+1 555 0100");
    let other = gql(
        &server,
        &integrator,
        UPDATE,
        json!({"id": new_id, "name": "Hacked"}),
    )
    .await?;
    assert_eq!(first_error(&other["data"]["updateUser"]).0, "__all__");
    let empty_name = gql(&server, &admin, UPDATE, json!({"id": new_id, "name": "  "})).await?;
    assert_eq!(first_error(&empty_name["data"]["updateUser"]).0, "name");

    // Deletion: not by an Integrator; an Admin not of an Owner; the last Owner stays.
    let owner_id = gql(&server, &owner, "{ authenticatedUser { id } }", json!({})).await?["data"]["authenticatedUser"]["id"].as_str().ok_or("id")?.to_owned();
    let by_integrator = gql(&server, &integrator, DELETE, json!({"id": new_id})).await?;
    assert_eq!(
        first_error(&by_integrator["data"]["deleteUser"]).0,
        "__all__"
    );
    let owner_by_admin = gql(&server, &admin, DELETE, json!({"id": owner_id})).await?;
    assert_eq!(
        first_error(&owner_by_admin["data"]["deleteUser"]).1,
        "Admins cannot remove Owners"
    );
    let last_owner = gql(&server, &owner, DELETE, json!({"id": owner_id})).await?;
    assert!(
        first_error(&last_owner["data"]["deleteUser"])
            .1
            .contains("last Owner"),
        "{last_owner}"
    );
    let garbage = gql(&server, &owner, DELETE, json!({"id": "not-an-id"})).await?;
    assert_eq!(first_error(&garbage["data"]["deleteUser"]).0, "id");

    // Deleting a user kills their tokens at once.
    let integrator_refresh = admin_ok(data, &["tokens", "create", "--email", "dev@example.com"])?;
    let deleted = gql(&server, &admin, DELETE, json!({"id": integrator_id})).await?;
    assert_eq!(
        deleted["data"]["deleteUser"]["errors"],
        json!([]),
        "{deleted}"
    );
    assert_eq!(server.whoami(&integrator).await?, Err(401));
    assert_eq!(server.refresh(&integrator_refresh).await?.0, 400);

    let audit = admin_ok(data, &["audit", "--limit", "20"])?;
    for action in [
        "user.created",
        "user.updated",
        "user.removed",
        "user.invited",
    ] {
        assert!(
            audit.contains(action),
            "missing {action} in the audit trail"
        );
    }
    Ok(())
}

#[tokio::test]
async fn users_are_paged_with_cursors() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    for n in 0..7 {
        admin_ok(
            dir.path(),
            &["users", "add", "--email", &format!("u{n}@example.com")],
        )?;
    }
    let owner = server
        .access_token(&admin_ok(
            dir.path(),
            &["tokens", "create", "--email", "owner@localhost"],
        )?)
        .await?;
    let query = "query($after: String) { organization { users(after: $after, first: 3) { nodes { id email role { name } } pageInfo { hasNextPage endCursor } } } }";
    let mut after = json!("");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = gql(&server, &owner, query, json!({ "after": after })).await?;
        let users = &page["data"]["organization"]["users"];
        for node in users["nodes"].as_array().ok_or("nodes")? {
            seen.push(node["email"].as_str().unwrap_or_default().to_owned());
        }
        pages += 1;
        if users["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = users["pageInfo"]["endCursor"].clone();
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert_eq!(seen[0], "owner@localhost");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8, "no user twice: {seen:?}");
    let bad = gql(&server, &owner, query, json!({ "after": "!!" })).await?;
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cursor")),
        "{bad}"
    );
    Ok(())
}

#[tokio::test]
async fn organizations_do_not_see_each_other() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let tenant_b = admin_ok(data, &["orgs", "add", "--name", "Beta"])?;
    let admin_a = member(&server, data, None, "admin-a@example.com", "Admin").await?;
    let admin_b = member(
        &server,
        data,
        Some(&tenant_b),
        "admin-b@example.com",
        "Admin",
    )
    .await?;
    let user_a = member(&server, data, None, "user-a@example.com", "Integrator").await?;
    let user_a_id = gql(&server, &user_a, "{ authenticatedUser { id } }", json!({})).await?["data"]
        ["authenticatedUser"]["id"]
        .as_str()
        .ok_or("id")?
        .to_owned();

    let listed = gql(
        &server,
        &admin_b,
        r#"{ organization { name users(after: "") { nodes { email } } } }"#,
        json!({}),
    )
    .await?;
    assert_eq!(listed["data"]["organization"]["name"], "Beta");
    assert_eq!(
        listed["data"]["organization"]["users"]["nodes"],
        json!([{ "email": "admin-b@example.com" }])
    );

    for (mutation, variables) in [
        (DELETE, json!({"id": user_a_id})),
        (UPDATE, json!({"id": user_a_id, "name": "Hijacked"})),
    ] {
        let answer = gql(&server, &admin_b, mutation, variables).await?;
        let payload = answer["data"]
            .as_object()
            .and_then(|d| d.values().next())
            .ok_or("payload")?;
        assert_eq!(
            first_error(payload),
            ("id".into(), "no such user in your organization".into()),
            "{answer}"
        );
    }
    assert_eq!(
        server.whoami(&user_a).await?,
        Ok("user-a@example.com".into())
    );
    let listed_a = gql(
        &server,
        &admin_a,
        r#"{ organization { users(after: "") { nodes { email } } } }"#,
        json!({}),
    )
    .await?;
    assert!(!listed_a.to_string().contains("admin-b@example.com"));

    // A user created by B's admin lands in B.
    let roles = gql(
        &server,
        &admin_b,
        "{ organizationRoles { id name } }",
        json!({}),
    )
    .await?;
    let created = gql(
        &server,
        &admin_b,
        CREATE,
        json!({"email": "b2@example.com", "role": role_id(&roles, "Guest")}),
    )
    .await?;
    assert_eq!(
        created["data"]["createOrganizationUser"]["errors"],
        json!([])
    );
    let tenants = gql(
        &server,
        &admin_b,
        "{ listUserTenants { nodes { tenantId orgName } } }",
        json!({}),
    )
    .await?;
    assert_eq!(
        tenants["data"]["listUserTenants"]["nodes"],
        json!([{ "tenantId": tenant_b, "orgName": "Beta" }])
    );
    Ok(())
}

#[tokio::test]
async fn an_invitation_sets_a_password_once() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    admin_ok(
        dir.path(),
        &["users", "add", "--email", "invited@example.com"],
    )?;
    let link = admin_ok(
        dir.path(),
        &[
            "users",
            "invite-link",
            "--email",
            "invited@example.com",
            "--issuer",
            &server.base,
        ],
    )?;
    assert!(
        link.starts_with(&format!("{}/invite?token=", server.base)),
        "{link}"
    );

    let page = http.get(&link).send().await?;
    assert_eq!(page.status().as_u16(), 200);
    let cookie = page
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .ok_or("no csrf cookie")?
        .to_owned();
    let html = page.text().await?;
    assert!(html.contains("invited@example.com"));
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or("no csrf field")?
        .to_owned();
    let token = link.split("token=").nth(1).ok_or("token")?.to_owned();
    let submit = |password: &str, confirm: &str, with_cookie: bool| {
        let mut request = http.post(server.url("/invite")).form(&[
            ("csrf", csrf.as_str()),
            ("token", token.as_str()),
            ("password", password),
            ("confirm", confirm),
        ]);
        if with_cookie {
            request = request.header("cookie", cookie.clone());
        }
        request.send()
    };
    assert_eq!(
        submit("a good password", "a good password", false)
            .await?
            .status()
            .as_u16(),
        403,
        "CSRF cookie required"
    );
    let mismatch = submit("a good password", "another one", true)
        .await?
        .text()
        .await?;
    assert!(mismatch.contains("The two passwords differ."));
    let short = submit("short", "short", true).await?.text().await?;
    assert!(short.contains("at least 8"));
    let done = submit("a good password", "a good password", true).await?;
    assert_eq!(done.status().as_u16(), 200);
    assert!(done.text().await?.contains("Password set"));
    // Single use.
    assert_eq!(
        submit("another password", "another password", true)
            .await?
            .status()
            .as_u16(),
        404
    );
    assert_eq!(http.get(&link).send().await?.status().as_u16(), 404);

    let hash_set = prismd_with_stdin(dir.path(), &["audit", "--limit", "1"], "")?;
    assert!(String::from_utf8_lossy(&hash_set.stdout).contains("user.password_set"));
    Ok(())
}

#[tokio::test]
async fn invitations_cannot_reset_existing_passwords() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let admin = member(&server, data, None, "admin@example.com", "Admin").await?;
    let owner_id = {
        let owner = server
            .access_token(&admin_ok(
                data,
                &["tokens", "create", "--email", "owner@localhost"],
            )?)
            .await?;
        gql(&server, &owner, "{ authenticatedUser { id } }", json!({})).await?["data"]["authenticatedUser"]["id"].as_str().ok_or("id")?.to_owned()
    };
    let invite = "mutation($id: ID!) { createUserInvitation(input: {id: $id}) { url errors { field messages } } }";

    // An Admin cannot get a link for an Owner (that would be a password reset of the Owner).
    let denied = gql(&server, &admin, invite, json!({"id": owner_id})).await?;
    assert_eq!(
        first_error(&denied["data"]["createUserInvitation"]).1,
        "Admins cannot invite Owners"
    );
    // Nor for anyone who has a password already (the Owner has one); not even an operator.
    let output = crate::harness::prismd(
        data,
        &["users", "invite-link", "--email", "owner@localhost"],
    )?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("set a password already"));

    // A new link replaces the old one.
    admin_ok(data, &["users", "add", "--email", "new@example.com"])?;
    let first = admin_ok(
        data,
        &[
            "users",
            "invite-link",
            "--email",
            "new@example.com",
            "--issuer",
            &server.base,
        ],
    )?;
    assert_eq!(
        http.get(&first).send().await?.status().as_u16(),
        200,
        "control: a fresh link works"
    );
    let second = admin_ok(
        data,
        &[
            "users",
            "invite-link",
            "--email",
            "new@example.com",
            "--issuer",
            &server.base,
        ],
    )?;
    assert_eq!(
        http.get(&first).send().await?.status().as_u16(),
        404,
        "the older link must die"
    );
    assert_eq!(http.get(&second).send().await?.status().as_u16(), 200);

    // Once the user has a password (set by an operator here), the link is dead.
    let output = prismd_with_stdin(
        data,
        &["users", "set-password", "--email", "new@example.com"],
        "operator chosen password\n",
    )?;
    assert!(output.status.success());
    assert_eq!(http.get(&second).send().await?.status().as_u16(), 404);
    Ok(())
}

const SET_ROLE: &str = "mutation($id: ID!, $role: ID) { updateUser(input: {id: $id, role: $role}) { user { id role { name } } errors { field messages } } }";

/// The public id and role name of the user `email`, as the organization's list shows them.
async fn id_and_role(
    server: &Server,
    access: &str,
    email: &str,
) -> Result<(String, String), Box<dyn std::error::Error>> {
    let list = gql(
        server,
        access,
        r#"{ organization { users(after: "") { nodes { id email role { name } } } } }"#,
        json!({}),
    )
    .await?;
    let user = list["data"]["organization"]["users"]["nodes"]
        .as_array()
        .and_then(|users| users.iter().find(|u| u["email"] == email))
        .ok_or_else(|| format!("no {email}: {list}"))?;
    Ok((
        user["id"].as_str().ok_or("no id")?.to_owned(),
        user["role"]["name"].as_str().ok_or("no role")?.to_owned(),
    ))
}

#[tokio::test]
async fn role_changes_follow_the_rules() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let data = dir.path();
    let owner_refresh = admin_ok(data, &["tokens", "create", "--email", "owner@localhost"])?;
    let owner = server.access_token(&owner_refresh).await?;
    let admin = member(&server, data, None, "admin@example.com", "Admin").await?;
    let integrator = member(&server, data, None, "int@example.com", "Integrator").await?;
    let (owner_id, _) = id_and_role(&server, &owner, "owner@localhost").await?;
    let (admin_id, _) = id_and_role(&server, &owner, "admin@example.com").await?;
    let (int_id, _) = id_and_role(&server, &owner, "int@example.com").await?;
    let set_role = |access: String, id: String, role: &'static str| {
        let server = &server;
        async move {
            let answer = gql(server, &access, SET_ROLE, json!({ "id": id, "role": role })).await?;
            Ok::<_, Box<dyn std::error::Error>>(answer["data"]["updateUser"].clone())
        }
    };

    // Refusals change nothing.
    let refusals = [
        (
            integrator.clone(),
            int_id.clone(),
            "Admin",
            "__all__",
            "only Owners and Admins can change users",
        ),
        (
            admin.clone(),
            int_id.clone(),
            "Owner",
            "__all__",
            "only Owners can make Owners",
        ),
        (
            admin.clone(),
            owner_id.clone(),
            "Guest",
            "__all__",
            "Admins cannot change Owners",
        ),
        (
            owner.clone(),
            owner_id.clone(),
            "Admin",
            "role",
            "last Owner",
        ),
        (owner.clone(), int_id.clone(), "Wizard", "role", "role"),
    ];
    for (access, id, role, field, message) in refusals {
        let payload = set_role(access, id.clone(), role).await?;
        assert!(payload["user"].is_null(), "{role}: {payload}");
        let (got_field, got_message) = first_error(&payload);
        assert_eq!(got_field, field, "{payload}");
        assert!(got_message.contains(message), "{got_message}");
    }
    assert_eq!(
        id_and_role(&server, &owner, "owner@localhost").await?.1,
        "Owner"
    );
    assert_eq!(
        id_and_role(&server, &owner, "int@example.com").await?.1,
        "Integrator"
    );

    // An Admin changes a member's role; the member's next request already has it.
    let refused = gql(
        &server,
        &integrator,
        "{ auditEvents { nodes { id } } }",
        json!({}),
    )
    .await?;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
    let payload = set_role(admin.clone(), int_id.clone(), "Admin").await?;
    assert_eq!(payload["user"]["role"]["name"], "Admin", "{payload}");
    let allowed = gql(
        &server,
        &integrator,
        "{ auditEvents { nodes { id } } }",
        json!({}),
    )
    .await?;
    assert!(allowed["errors"].is_null(), "{allowed}");

    // With a second Owner, the first may step down.
    let payload = set_role(owner.clone(), admin_id.clone(), "Owner").await?;
    assert_eq!(payload["user"]["role"]["name"], "Owner", "{payload}");
    let payload = set_role(owner.clone(), owner_id.clone(), "Admin").await?;
    assert_eq!(payload["user"]["role"]["name"], "Admin", "{payload}");
    Ok(())
}

#[tokio::test]
async fn list_fields_cost_their_page_size() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = server
        .access_token(&admin_ok(
            data,
            &["tokens", "create", "--email", "owner@localhost"],
        )?)
        .await?;
    admin_ok(
        data,
        &[
            "users",
            "add",
            "--email",
            "guest@example.com",
            "--role",
            "Guest",
        ],
    )?;
    let guest = server
        .access_token(&admin_ok(
            data,
            &["tokens", "create", "--email", "guest@example.com"],
        )?)
        .await?;
    let one = "organization { users(first: 100) { nodes { sessions { id } } } }";
    // One full page of users with every session each is allowed ...
    let (status, _, body) = server
        .graphql(Some(&owner), &format!("{{ {one} }}"))
        .await?;
    assert_eq!(status, 200);
    assert!(body["errors"].is_null(), "{body}");
    assert!(
        body["data"]["organization"]["users"]["nodes"].is_array(),
        "{body}"
    );
    // ... the issue's 200 aliases of it are refused before anything runs, for anyone, with a
    // short answer (a Guest got 3.4 MB of errors from this before).
    let aliased: String = (0..200).map(|n| format!("a{n}: {one} ")).collect();
    let query = format!("{{ {aliased} }}");
    for (who, access) in [("the Owner", &owner), ("a Guest", &guest)] {
        let (status, _, body) = server.graphql(Some(access), &query).await?;
        assert_eq!(status, 200, "{who}");
        assert!(body["data"].is_null(), "{who}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("at most 50"), "{who}: {body}");
        let size = body.to_string().len();
        assert!(size < 4_096, "{who}: a long answer ({size} bytes)");
    }
    // Under the alias cap, six full pages (each up to 100 users × 500 sessions) cost too much;
    // the official client's user list is fine.
    let six: String = (0..6).map(|n| format!("p{n}: {one} ")).collect();
    let (_, _, body) = server
        .graphql(Some(&owner), &format!("{{ {six} }}"))
        .await?;
    assert!(body["data"].is_null(), "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("complex"), "{body}");
    let list_users = "query listUsers($after: String) { organization { users(after: $after) { nodes { id name email externalId phone role { name } } pageInfo { hasNextPage endCursor } } } }";
    let (_, _, body) = server.graphql(Some(&owner), list_users).await?;
    assert!(body["errors"].is_null(), "{body}");
    server.stop()?;
    Ok(())
}

/// A statement that reads sessions (`list_sessions`, `list_sessions_of_users`).
const SESSION_READ: &str = "FROM refresh_tokens t JOIN users u";
/// The statement that reads an organization's service accounts.
const SERVICE_ACCOUNTS_READ: &str = "AND u.kind = 'service' ORDER BY u.created_at";

/// How many statements containing `marker` the server has logged (sqlx's statement log),
/// once every line before now has reached the log: a marker request is made, and its
/// access-log line waited for.
async fn statements_logged(
    server: &Server,
    marker: &str,
) -> Result<usize, Box<dyn std::error::Error>> {
    let markers = server.logs().matches("route=\"/healthz\"").count();
    server.http.get(server.url("/healthz")).send().await?;
    for _ in 0..200 {
        let logs = server.logs();
        if logs.matches("route=\"/healthz\"").count() > markers {
            return Ok(logs.matches(marker).count());
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    Err("the marker request never reached the log".into())
}

/// The answer to `query`, and how many statements containing `marker` it took.
async fn with_statements(
    server: &Server,
    access: &str,
    query: &str,
    marker: &str,
) -> Result<(Value, usize), Box<dyn std::error::Error>> {
    let before = statements_logged(server, marker).await?;
    let answer = gql(server, access, query, Value::Null).await?;
    let after = statements_logged(server, marker).await?;
    Ok((answer, after - before))
}

#[tokio::test]
async fn a_page_of_users_reads_all_their_sessions_at_once() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start_with(
        dir.path(),
        crate::harness::Options {
            env: vec![("PRISMD_LOG".into(), "info,sqlx::query=debug".into())],
            ..Default::default()
        },
    )?;
    let owner = server
        .access_token(&admin_ok(
            dir.path(),
            &["tokens", "create", "--email", "owner@localhost"],
        )?)
        .await?;
    let admin = member(&server, dir.path(), None, "admin@example.com", "Admin").await?;
    for n in 0..6 {
        let email = format!("m{n}@example.com");
        admin_ok(dir.path(), &["users", "add", "--email", &email])?;
        // Member n has n tokens.
        for _ in 0..n {
            admin_ok(dir.path(), &["tokens", "create", "--email", &email])?;
        }
    }
    let query = "{ organization { users(first: 100) { nodes { email sessions { id } } } } }";

    // The Owner: every member's sessions, in one read.
    let (page, reads) = with_statements(&server, &owner, query, SESSION_READ).await?;
    assert!(page.get("errors").is_none(), "{page}");
    let nodes = page["data"]["organization"]["users"]["nodes"]
        .as_array()
        .ok_or("nodes")?;
    assert_eq!(nodes.len(), 8, "{page}");
    for node in nodes {
        let email = node["email"].as_str().unwrap_or_default();
        let sessions = node["sessions"].as_array().ok_or("sessions")?.len();
        let expected = match email
            .strip_prefix('m')
            .and_then(|rest| rest.split('@').next())
        {
            Some(n) => n.parse::<usize>()?,
            // The Owner's own token (this request's) and the Admin's.
            None => 1,
        };
        assert_eq!(sessions, expected, "{email}: {node}");
    }
    assert_eq!(
        reads, 1,
        "eight users' sessions in one statement, not eight"
    );

    // An Admin: the Owner's are refused at the Owner's node, the rest listed, still one read.
    let (page, reads) = with_statements(&server, &admin, query, SESSION_READ).await?;
    let errors = page["errors"]
        .as_array()
        .ok_or("an error for the Owner's sessions")?;
    assert_eq!(errors.len(), 1, "{page}");
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Owners' sessions")),
        "{page}"
    );
    let nodes = page["data"]["organization"]["users"]["nodes"]
        .as_array()
        .ok_or("nodes")?;
    let listed = nodes
        .iter()
        .filter(|node| node["sessions"].is_array())
        .count();
    assert_eq!(listed, 7, "everyone's but the Owner's: {page}");
    assert_eq!(reads, 1);

    // Service accounts with their tokens: one read too.
    for n in 0..3 {
        let name = format!("sa{n}");
        admin_ok(
            dir.path(),
            &[
                "service-accounts",
                "add",
                "--name",
                &name,
                "--role",
                "Integrator",
            ],
        )?;
        for t in 0..n {
            admin_ok(
                dir.path(),
                &[
                    "tokens",
                    "create",
                    "--service-account",
                    &name,
                    "--name",
                    &format!("t{t}"),
                ],
            )?;
        }
    }
    let (page, reads) = with_statements(
        &server,
        &owner,
        "{ serviceAccounts { id name scopes tokens { id } } }",
        SESSION_READ,
    )
    .await?;
    assert!(page.get("errors").is_none(), "{page}");
    let accounts = page["data"]["serviceAccounts"]
        .as_array()
        .ok_or("serviceAccounts")?;
    assert_eq!(accounts.len(), 3, "{page}");
    for account in accounts {
        let n: usize = account["name"]
            .as_str()
            .and_then(|name| name.strip_prefix("sa"))
            .ok_or("name")?
            .parse()?;
        assert_eq!(
            account["tokens"].as_array().map(Vec::len),
            Some(n),
            "{account}"
        );
    }
    assert_eq!(reads, 1, "three accounts' tokens in one statement");

    // Scopes granted to service accounts: the accounts are read once for all the scopes.
    let ids: Vec<String> = page["data"]["serviceAccounts"]
        .as_array()
        .ok_or("serviceAccounts")?
        .iter()
        .filter_map(|account| account["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 3, "{page}");
    for (n, id) in ids.iter().enumerate() {
        let scope = format!("deploy:env{n}");
        let made = gql(
            &server,
            &owner,
            crate::scopes::CREATE_SCOPE,
            json!({ "name": scope }),
        )
        .await?;
        assert!(made.get("errors").is_none(), "{made}");
        let granted = gql(
            &server,
            &owner,
            crate::scopes::GRANT_TO_SA,
            json!({ "scope": scope, "sa": id }),
        )
        .await?;
        assert!(granted.get("errors").is_none(), "{granted}");
    }
    let (page, reads) = with_statements(
        &server,
        &owner,
        "{ scopes { name serviceAccounts { name } } }",
        SERVICE_ACCOUNTS_READ,
    )
    .await?;
    assert!(page.get("errors").is_none(), "{page}");
    let granted: usize = page["data"]["scopes"]
        .as_array()
        .ok_or("scopes")?
        .iter()
        .map(|scope| scope["serviceAccounts"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(granted, 3, "{page}");
    assert_eq!(reads, 1, "three scopes' service accounts in one read");
    server.stop()?;
    Ok(())
}
