//! The audit trail end to end: browser sign-ins (failed and successful, with address and user
//! agent), role changes, minted and revoked tokens appear in `auditEvents`; its filters and
//! cursor pages; who may read it (Owners and Admins, only their own organization's); and
//! `prismd audit` with its filters, as JSON lines.

use std::collections::HashSet;
use std::path::Path;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::harness::{
    Server, TestResult, admin_ok, browser_sign_in, device_sign_in, prismd, prismd_with_stdin,
    temp_dir,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const PASSWORD: &str = "correct horse battery staple";
const WRONG: &str = "Tr0ub4dor&3-not-it";
const AGENT: &str = "audit-e2e-browser/1.0";
const API_AGENT: &str = "audit-e2e-api/2.0";

const EVENTS: &str = "query($filter: AuditEventFilter, $first: Int, $after: String) {
  auditEvents(filter: $filter, first: $first, after: $after) {
    nodes { id at action actor actorUserId subjectUserId address userAgent detail }
    pageInfo { hasNextPage endCursor }
  }
}";

/// Adds a user with a password; returns their public id (`base64("User:<uuid>")`, what
/// `users add` prints).
fn add_user(dir: &Path, tenant: Option<&str>, email: &str, role: &str) -> Res<String> {
    let mut args = Vec::new();
    if let Some(tenant) = tenant {
        args.extend(["--tenant-id", tenant]);
    }
    args.extend([
        "users",
        "add",
        "--email",
        email,
        "--role",
        role,
        "--password-stdin",
    ]);
    let output = prismd_with_stdin(dir, &args, &format!("{PASSWORD}\n"))?;
    if !output.status.success() {
        return Err(format!("users add: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// The id of the sign-in identity of `email`, read from the SQLite database (read only).
async fn identity_id(dir: &Path, email: &str) -> Res<String> {
    use sqlx::Connection as _;
    let url = format!("sqlite://{}?mode=ro", dir.join("prismd.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let id: Option<String> = sqlx::query_scalar("SELECT id FROM identities WHERE email = $1")
        .bind(email)
        .fetch_optional(&mut conn)
        .await?;
    conn.close().await?;
    id.ok_or_else(|| format!("no identity for {email}").into())
}

/// An access token for `email` (a refresh token minted by the operator, exchanged).
async fn access_for(server: &Server, tenant: Option<&str>, email: &str) -> Res<String> {
    let mut args = Vec::new();
    if let Some(tenant) = tenant {
        args.extend(["--tenant-id", tenant]);
    }
    args.extend(["tokens", "create", "--email", email]);
    let refresh = admin_ok(server.data_dir(), &args)?;
    server.access_token(&refresh).await
}

/// Signs in on the browser form with `AGENT` as the user agent; returns the status (303 on
/// success, 200 with the form again on a wrong password).
async fn sign_in(server: &Server, email: &str, password: &str) -> Res<u16> {
    Ok(browser_sign_in(server, email, password, AGENT)
        .await?
        .status)
}

async fn gql(server: &Server, access: &str, query: &str, variables: Value) -> Res<Value> {
    let response = server
        .http
        .post(server.url("/api"))
        .header("authorization", format!("Bearer {access}"))
        .header("user-agent", API_AGENT)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    Ok(response.json().await?)
}

/// One page of `auditEvents`: its nodes and page info, failing on a GraphQL error.
async fn events_page(
    server: &Server,
    access: &str,
    filter: Value,
    first: Option<i64>,
    after: Option<&str>,
) -> Res<(Vec<Value>, Value)> {
    let answer = gql(
        server,
        access,
        EVENTS,
        json!({ "filter": filter, "first": first, "after": after }),
    )
    .await?;
    let connection = &answer["data"]["auditEvents"];
    let nodes = connection["nodes"]
        .as_array()
        .ok_or_else(|| format!("no events: {answer}"))?
        .clone();
    Ok((nodes, connection["pageInfo"].clone()))
}

/// Every event matching `filter`, one page of `first` at a time; also the number of pages.
async fn all_events(
    server: &Server,
    access: &str,
    filter: Value,
    first: i64,
) -> Res<(Vec<Value>, usize)> {
    let mut events = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let (nodes, page_info) = events_page(
            server,
            access,
            filter.clone(),
            Some(first),
            after.as_deref(),
        )
        .await?;
        pages += 1;
        assert!(nodes.len() as i64 <= first);
        events.extend(nodes);
        if page_info["hasNextPage"] != true {
            return Ok((events, pages));
        }
        after = Some(
            page_info["endCursor"]
                .as_str()
                .ok_or("a next page without a cursor")?
                .to_owned(),
        );
    }
}

fn detail(event: &Value) -> Res<Value> {
    Ok(serde_json::from_str(
        event["detail"].as_str().ok_or("no detail")?,
    )?)
}

/// The error code of a field that answered null with an error.
fn refusal(answer: &Value, field: &str) -> Option<String> {
    if !answer["data"][field].is_null() {
        return None;
    }
    answer["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_role_changes_and_tokens_are_audited() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let data = server.data_dir();
    let admin_id = add_user(data, None, "admin@example.com", "Admin")?;
    let member_id = add_user(data, None, "member@example.com", "Integrator")?;

    assert_eq!(sign_in(&server, "admin@example.com", WRONG).await?, 200);
    assert_eq!(sign_in(&server, "nobody@example.com", WRONG).await?, 200);
    assert_eq!(sign_in(&server, "admin@example.com", PASSWORD).await?, 303);

    let admin_identity = identity_id(data, "admin@example.com").await?;
    let admin = access_for(&server, None, "admin@example.com").await?;
    // A role change, made by the Admin through the API.
    let change = gql(
        &server,
        &admin,
        "mutation($id: ID!) { updateUser(input: {id: $id, role: \"Guest\"}) { user { role { name } } errors { field messages } } }",
        json!({ "id": member_id }),
    )
    .await?;
    assert_eq!(
        change["data"]["updateUser"]["user"]["role"]["name"], "Guest",
        "{change}"
    );
    // The member's token: minted by the operator, revoked one session at a time by the
    // Admin, and all at once over /auth/revoke.
    let member_refresh = admin_ok(data, &["tokens", "create", "--email", "member@example.com"])?;
    let sessions = gql(
        &server,
        &admin,
        "{ organization { users(after: \"\") { nodes { email sessions { id } } } } }",
        json!({}),
    )
    .await?;
    let session_id = sessions["data"]["organization"]["users"]["nodes"]
        .as_array()
        .ok_or("no users")?
        .iter()
        .find(|u| u["email"] == "member@example.com")
        .and_then(|u| u["sessions"][0]["id"].as_str())
        .ok_or_else(|| format!("no member session: {sessions}"))?
        .to_owned();
    let revoked = gql(
        &server,
        &admin,
        "mutation($id: ID!) { revokeSession(input: {id: $id}) { errors { messages } } }",
        json!({ "id": session_id }),
    )
    .await?;
    assert_eq!(
        revoked["data"]["revokeSession"]["errors"],
        json!([]),
        "{revoked}"
    );
    let another = admin_ok(data, &["tokens", "create", "--email", "member@example.com"])?;
    let response = server
        .http
        .post(server.url("/auth/revoke"))
        .header("user-agent", "ci-runner/3")
        .json(&json!({ "refresh_token": another }))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);

    let (events, _) = all_events(&server, &admin, json!({}), 200).await?;
    let find =
        |action: &str| -> Vec<&Value> { events.iter().filter(|e| e["action"] == action).collect() };

    let failed = find("login.failed");
    assert_eq!(
        failed.len(),
        1,
        "only the known account's failure is the org's: {failed:?}"
    );
    assert_eq!(failed[0]["subjectUserId"], admin_id.as_str());
    assert_eq!(failed[0]["actor"], "address:127.0.0.1");
    assert_eq!(failed[0]["address"], "127.0.0.1");
    assert_eq!(failed[0]["userAgent"], AGENT);
    // Sign-ins are the identity's: the detail names it (the subject is its member here).
    let signed_in = json!({"method": "password", "page": "authorize", "identity": admin_identity});
    assert_eq!(detail(failed[0])?, signed_in);

    let succeeded = find("login.succeeded");
    assert_eq!(succeeded.len(), 1, "{succeeded:?}");
    assert_eq!(succeeded[0]["subjectUserId"], admin_id.as_str());
    assert_eq!(
        succeeded[0]["actor"],
        format!("identity:{admin_identity}").as_str()
    );
    assert!(succeeded[0]["actorUserId"].is_null());
    assert_eq!(succeeded[0]["address"], "127.0.0.1");
    assert_eq!(succeeded[0]["userAgent"], AGENT);
    assert_eq!(detail(succeeded[0])?, signed_in);
    let at = succeeded[0]["at"].as_str().ok_or("no time")?;
    assert!(humantime::parse_rfc3339(at).is_ok(), "RFC 3339: {at}");

    let role = find("user.role_changed");
    assert_eq!(role.len(), 1, "{role:?}");
    assert_eq!(role[0]["subjectUserId"], member_id.as_str());
    assert_eq!(role[0]["userAgent"], API_AGENT);
    assert_eq!(role[0]["address"], "127.0.0.1");
    let role_detail = detail(role[0])?;
    assert_eq!(role_detail["from"], "integrator");
    assert_eq!(role_detail["to"], "guest");
    let admin_uuid =
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(&admin_id)?)?
            .replacen("User:", "user:", 1);
    assert_eq!(role[0]["actor"], admin_uuid.as_str());
    assert_eq!(role[0]["actorUserId"], admin_id.as_str());
    assert!(failed[0]["actorUserId"].is_null());

    let minted = find("token.minted");
    assert!(
        minted
            .iter()
            .any(|e| e["subjectUserId"] == member_id.as_str() && e["actor"] == "operator"),
        "{minted:?}"
    );
    let one = find("token.revoked");
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["subjectUserId"], member_id.as_str());
    assert_eq!(one[0]["actor"], admin_uuid.as_str());
    assert_eq!(one[0]["userAgent"], API_AGENT);
    let all = find("tokens.revoked_all");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["subjectUserId"], member_id.as_str());
    assert_eq!(all[0]["address"], "127.0.0.1");
    assert_eq!(all[0]["userAgent"], "ci-runner/3");

    // The operator sees the unknown email's failure too, without any trace of the email or
    // a password; never a token anywhere.
    let output = prismd(data, &["audit", "--action", "login.failed"])?;
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout)?;
    let lines: Vec<Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines.iter().all(|l| l["action"] == "login.failed"));
    let unknown = lines
        .iter()
        .find(|l| l["subjectUserId"].is_null())
        .ok_or("no failure without a subject")?;
    assert_eq!(unknown["userAgent"], AGENT);
    assert_eq!(unknown["address"], "127.0.0.1");
    assert_eq!(unknown["actor"], "address:127.0.0.1");
    assert!(unknown["orgId"].is_null());
    assert_eq!(
        unknown["detail"],
        json!({"method": "password", "page": "authorize", "identity": null}),
        "an unknown email names no identity: {unknown}"
    );
    let everything = admin_ok(data, &["audit", "--limit", "1000"])?;
    for secret in [
        "nobody@example.com",
        WRONG,
        PASSWORD,
        member_refresh.as_str(),
        another.as_str(),
    ] {
        assert!(
            !everything.contains(secret),
            "the audit trail holds a secret: {secret}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_filters_and_who_may_read() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let data = server.data_dir();
    add_user(data, None, "admin@example.com", "Admin")?;
    let member_id = add_user(data, None, "member@example.com", "Integrator")?;
    let tenant_b = admin_ok(data, &["orgs", "add", "--name", "B"])?;
    let admin_b_id = add_user(data, Some(&tenant_b), "admin-b@example.com", "Admin")?;
    let admin = access_for(&server, None, "admin@example.com").await?;
    let member = access_for(&server, None, "member@example.com").await?;
    let admin_b = access_for(&server, Some(&tenant_b), "admin-b@example.com").await?;

    // Twelve profile changes of the member: enough for three pages of five.
    for n in 0..12 {
        let renamed = gql(
            &server,
            &admin,
            "mutation($id: ID!, $name: String) { updateUser(input: {id: $id, name: $name}) { errors { messages } } }",
            json!({ "id": member_id, "name": format!("Member {n}") }),
        )
        .await?;
        assert_eq!(
            renamed["data"]["updateUser"]["errors"],
            json!([]),
            "{renamed}"
        );
    }
    let updates = json!({ "action": "user.updated" });
    let (one_page, pages) = all_events(&server, &admin, updates.clone(), 200).await?;
    assert_eq!((one_page.len(), pages), (12, 1));
    let (paged, pages) = all_events(&server, &admin, updates.clone(), 5).await?;
    assert_eq!(pages, 3);
    let ids: Vec<&Value> = paged.iter().map(|e| &e["id"]).collect();
    let unique: HashSet<String> = ids.iter().map(|id| id.to_string()).collect();
    assert_eq!(unique.len(), 12, "no duplicates");
    assert_eq!(
        ids,
        one_page.iter().map(|e| &e["id"]).collect::<Vec<_>>(),
        "the pages together are the whole list, newest first, no gaps"
    );
    assert!(paged.iter().all(|e| e["action"] == "user.updated"));
    assert_eq!(
        detail(&paged[0])?,
        json!({"fields": ["name"]}),
        "names, not values"
    );

    // By or about a user.
    let (about_member, _) =
        all_events(&server, &admin, json!({ "userId": member_id }), 200).await?;
    assert!(
        about_member.len() >= 13,
        "12 updates, creation, token: {about_member:?}"
    );
    assert!(
        about_member
            .iter()
            .all(|e| e["subjectUserId"] == member_id.as_str())
    );
    // A time window: nothing in the future; everything since long ago; until excludes.
    let (future, _) = all_events(
        &server,
        &admin,
        json!({ "since": "2999-01-01T00:00:00Z" }),
        50,
    )
    .await?;
    assert!(future.is_empty());
    let newest_at = one_page[0]["at"].as_str().ok_or("no at")?.to_owned();
    let (until_newest, _) = all_events(
        &server,
        &admin,
        json!({ "action": "user.updated", "until": newest_at }),
        50,
    )
    .await?;
    let (since_newest, _) = all_events(
        &server,
        &admin,
        json!({ "action": "user.updated", "since": newest_at }),
        50,
    )
    .await?;
    assert_eq!(until_newest.len() + since_newest.len(), 12);
    assert!(since_newest.iter().any(|e| e["id"] == one_page[0]["id"]));
    assert!(until_newest.iter().all(|e| e["id"] != one_page[0]["id"]));

    // Bad input is refused with a message, not ignored.
    for (variables, what) in [
        (json!({ "filter": { "since": "yesterday" } }), "since"),
        (json!({ "first": 0 }), "first"),
        (json!({ "first": 201 }), "first"),
        (json!({ "after": "not-a-cursor" }), "cursor"),
        (json!({ "filter": { "userId": "not an id" } }), "userId"),
    ] {
        let answer = gql(&server, &admin, EVENTS, variables.clone()).await?;
        assert_eq!(
            refusal(&answer, "auditEvents").as_deref(),
            Some("BAD_REQUEST"),
            "{variables}: {answer}"
        );
        let message = answer["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(what), "{variables}: {message}");
    }

    // A member is refused the way other admin-only fields refuse, filters or not.
    for variables in [json!({}), json!({ "filter": { "since": "yesterday" } })] {
        let answer = gql(&server, &member, EVENTS, variables).await?;
        assert_eq!(
            refusal(&answer, "auditEvents").as_deref(),
            Some("FORBIDDEN"),
            "{answer}"
        );
    }

    // Organization B's Admin sees B's events only: never A's, even when asking by A's ids.
    let (b_events, _) = all_events(&server, &admin_b, json!({}), 200).await?;
    assert!(!b_events.is_empty());
    let b_own =
        |e: &Value| e["subjectUserId"].is_null() || e["subjectUserId"] == admin_b_id.as_str();
    assert!(b_events.iter().all(b_own), "{b_events:?}");
    assert!(b_events.iter().any(|e| e["action"] == "user.created"));
    let (b_asking_for_a, _) =
        all_events(&server, &admin_b, json!({ "userId": member_id }), 200).await?;
    assert!(b_asking_for_a.is_empty());
    let (b_updates, _) = all_events(&server, &admin_b, updates, 200).await?;
    assert!(b_updates.is_empty());
    // A's cursor in B's hands reads B's events, not A's.
    let a_cursor = one_page[0]["id"].as_str().ok_or("no id")?;
    let (after_a_cursor, _) =
        events_page(&server, &admin_b, json!({}), Some(200), Some(a_cursor)).await?;
    assert!(after_a_cursor.iter().all(b_own));

    // The operator's command: filters and JSON lines.
    let output = admin_ok(data, &["audit", "--action", "user.updated", "--limit", "3"])?;
    let lines: Vec<Value> = output
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 3, "{output}");
    assert!(lines.iter().all(|l| l["action"] == "user.updated"));
    assert_eq!(lines[0]["userAgent"], API_AGENT);
    assert_eq!(
        lines[0]["id"].to_string(),
        one_page[0]["id"].as_str().ok_or("no id")?
    );
    let all_updates = admin_ok(
        data,
        &["audit", "--action", "user.updated", "--limit", "500"],
    )?;
    assert_eq!(all_updates.lines().count(), 12);
    let only_b = admin_ok(data, &["audit", "--org", &tenant_b])?;
    assert!(!only_b.is_empty());
    for line in only_b.lines() {
        let event: Value = serde_json::from_str(line)?;
        assert_ne!(event["subjectUserId"], member_id.as_str(), "{line}");
    }
    let by_user = admin_ok(data, &["audit", "--user", &member_id, "--since", "1h"])?;
    assert!(by_user.lines().count() >= 13, "{by_user}");
    let future = admin_ok(data, &["audit", "--since", "2999-01-01T00:00:00Z"])?;
    assert!(future.is_empty());
    let bad = prismd(data, &["audit", "--since", "yesterday"])?;
    assert!(!bad.status.success());
    assert!(String::from_utf8(bad.stderr)?.contains("--since must be an RFC 3339 time"));
    let unknown_org = prismd(data, &["audit", "--org", "no-such-tenant"])?;
    assert!(!unknown_org.status.success());
    assert!(String::from_utf8(unknown_org.stderr)?.contains("no organization with tenant id"));
    let by_email = prismd(data, &["audit", "--user", "member@example.com"])?;
    assert!(!by_email.status.success());
    assert!(String::from_utf8(by_email.stderr)?.contains("--user takes a user id"));
    Ok(())
}

/// The device page: starts a device login, opens `/device` for its CSRF cookie and posts
/// `email` / `password` with "approve", as `AGENT`. Returns the status and page.
async fn approve_device(server: &Server, email: &str, password: &str) -> Res<(u16, String)> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(AGENT)
        .build()?;
    let started: Value = http
        .post(server.url("/oauth/device/code"))
        .form(&[
            ("client_id", "prism-cli"),
            ("scope", "openid offline_access"),
        ])
        .send()
        .await?
        .json()
        .await?;
    let user_code = started["user_code"].as_str().ok_or("no user_code")?;
    let page = device_sign_in(server, user_code, email, password, AGENT).await?;
    Ok((page.status, page.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_page_sign_ins_are_audited() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let data = server.data_dir();
    let admin_id = add_user(data, None, "admin@example.com", "Admin")?;
    let (status, page) = approve_device(&server, "admin@example.com", WRONG).await?;
    assert_eq!(status, 200);
    assert!(page.contains("Wrong email or password."), "{page}");
    let (status, page) = approve_device(&server, "admin@example.com", PASSWORD).await?;
    assert_eq!(status, 200);
    assert!(page.contains("Device signed in"), "{page}");

    let admin_identity = identity_id(data, "admin@example.com").await?;
    let admin = access_for(&server, None, "admin@example.com").await?;
    let (events, _) = all_events(&server, &admin, json!({ "userId": admin_id }), 200).await?;
    for (action, actor) in [
        ("login.failed", "address:127.0.0.1".to_owned()),
        ("login.succeeded", format!("identity:{admin_identity}")),
    ] {
        let found: Vec<&Value> = events.iter().filter(|e| e["action"] == action).collect();
        assert_eq!(found.len(), 1, "{action}: {events:?}");
        assert_eq!(found[0]["subjectUserId"], admin_id.as_str());
        assert_eq!(found[0]["actor"], actor.as_str());
        assert_eq!(found[0]["address"], "127.0.0.1");
        assert_eq!(found[0]["userAgent"], AGENT);
        assert_eq!(
            detail(found[0])?,
            json!({"method": "password", "page": "device", "identity": admin_identity})
        );
    }
    // The failure is older than the success: newest first.
    let position = |action: &str| events.iter().position(|e| e["action"] == action);
    assert!(position("login.succeeded") < position("login.failed"));
    Ok(())
}

/// A sign-in is the identity's, and each organization where it is a joined member sees it in
/// its own trail, about its own member: one event per member, the same detail everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_are_audited_in_every_organization_of_the_identity() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let data = server.data_dir();
    let member_a = add_user(data, None, "admin@example.com", "Admin")?;
    let tenant_b = admin_ok(data, &["orgs", "add", "--name", "B"])?;
    // The operator adds the existing identity to B: a joined member at once.
    let member_b = admin_ok(
        data,
        &[
            "--tenant-id",
            &tenant_b,
            "users",
            "add",
            "--email",
            "admin@example.com",
            "--role",
            "Admin",
        ],
    )?;
    assert_ne!(member_a, member_b);
    let identity = identity_id(data, "admin@example.com").await?;

    assert_eq!(sign_in(&server, "admin@example.com", WRONG).await?, 200);
    let chooser = browser_sign_in(&server, "admin@example.com", PASSWORD, AGENT).await?;
    assert_eq!(chooser.status, 200, "two organizations: the chooser");
    assert!(chooser.body.contains("name=\"member\""), "{}", chooser.body);

    let signed_in = json!({"method": "password", "page": "authorize", "identity": identity});
    for (tenant, member) in [(None, &member_a), (Some(tenant_b.as_str()), &member_b)] {
        let access = access_for(&server, tenant, "admin@example.com").await?;
        let (events, _) = all_events(&server, &access, json!({}), 200).await?;
        for (action, actor) in [
            ("login.failed", "address:127.0.0.1".to_owned()),
            ("login.succeeded", format!("identity:{identity}")),
        ] {
            let found: Vec<&Value> = events.iter().filter(|e| e["action"] == action).collect();
            assert_eq!(found.len(), 1, "{tenant:?} {action}: {events:?}");
            assert_eq!(found[0]["subjectUserId"], member.as_str(), "{tenant:?}");
            assert_eq!(found[0]["actor"], actor.as_str(), "{tenant:?}");
            assert_eq!(found[0]["address"], "127.0.0.1");
            assert_eq!(found[0]["userAgent"], AGENT);
            assert_eq!(detail(found[0])?, signed_in, "{tenant:?}");
        }
    }

    // The operator sees both organizations' rows: one per member, nothing without a subject.
    for action in ["login.failed", "login.succeeded"] {
        let output = admin_ok(data, &["audit", "--action", action])?;
        let lines: Vec<Value> = output
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let mut subjects: Vec<&str> = lines
            .iter()
            .filter_map(|l| l["subjectUserId"].as_str())
            .collect();
        subjects.sort_unstable();
        let mut expected = vec![member_a.as_str(), member_b.as_str()];
        expected.sort_unstable();
        assert_eq!(subjects, expected, "{action}: {output}");
        assert_eq!(lines.len(), 2, "{action}: {output}");
    }
    server.stop()?;
    Ok(())
}
