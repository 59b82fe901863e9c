//! Sessions people can see and end through GraphQL: `User.sessions`, `revokeSession` and
//! `revokeAllSessions`, with their permission rules (own; Owners and Admins for members;
//! Admins not Owners'; other users' and other organizations' ids look unknown).

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Server, TestResult, admin_ok, temp_dir};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

async fn gql(server: &Server, access: &str, query: &str, variables: Value) -> Res<Value> {
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

const MINE: &str = "{ authenticatedUser { id sessions { id name clientId createdAt lastUsedAt lastUsedAddress current } } }";
const REVOKE: &str = "mutation($id: ID!) { revokeSession(input: {id: $id}) { session { id name } errors { field messages } } }";
const REVOKE_ALL: &str = "mutation($userId: ID) { revokeAllSessions(input: {userId: $userId}) { user { email } errors { field messages } } }";
const EVERYONE: &str =
    r#"{ organization { users(after: "") { nodes { id email sessions { id name } } } } }"#;

/// A refresh token for `email` (added with `role` first, unless it is the Owner), named.
fn token(data: &std::path::Path, email: &str, name: Option<&str>) -> Res<String> {
    let mut args = vec!["tokens", "create", "--email", email];
    if let Some(name) = name {
        args.extend(["--name", name]);
    }
    admin_ok(data, &args)
}

fn add(data: &std::path::Path, tenant: Option<&str>, email: &str, role: &str) -> Res<()> {
    let mut args = Vec::new();
    if let Some(tenant) = tenant {
        args.extend(["--tenant-id", tenant]);
    }
    args.extend(["users", "add", "--email", email, "--role", role]);
    admin_ok(data, &args)?;
    Ok(())
}

async fn my_sessions(server: &Server, access: &str) -> Res<Vec<Value>> {
    let me = gql(server, access, MINE, json!({})).await?;
    Ok(me["data"]["authenticatedUser"]["sessions"]
        .as_array()
        .ok_or_else(|| format!("no sessions: {me}"))?
        .clone())
}

async fn my_id(server: &Server, access: &str) -> Res<String> {
    let me = gql(server, access, "{ authenticatedUser { id } }", json!({})).await?;
    Ok(me["data"]["authenticatedUser"]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned())
}

/// The id of the session `access` was issued from.
async fn current_session(server: &Server, access: &str) -> Res<String> {
    let sessions = my_sessions(server, access).await?;
    Ok(sessions
        .iter()
        .find(|s| s["current"] == true)
        .and_then(|s| s["id"].as_str())
        .ok_or("no current session")?
        .to_owned())
}

/// The uuid inside a public user id (`base64("User:<uuid>")`), as audit actors name users.
fn user_uuid(public: &str) -> Res<String> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD.decode(public)?;
    Ok(String::from_utf8(decoded)?
        .strip_prefix("User:")
        .ok_or("not a user id")?
        .to_owned())
}

fn payload_error(payload: &Value, mutation: &str) -> (String, String) {
    let error = &payload["data"][mutation]["errors"][0];
    (
        error["field"].as_str().unwrap_or_default().to_owned(),
        error["messages"][0].as_str().unwrap_or_default().to_owned(),
    )
}

fn unknown_session() -> (String, String) {
    ("id".to_owned(), "no such session".to_owned())
}

#[tokio::test]
async fn list_shows_my_live_sessions_only() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let ci = token(data, "owner@localhost", Some("nightly-ci"))?;
    let unnamed = token(data, "owner@localhost", None)?;
    let revoked = token(data, "owner@localhost", Some("old laptop"))?;
    add(data, None, "dev@example.com", "Integrator")?;
    let theirs = token(data, "dev@example.com", Some("theirs"))?;
    let access = server.access_token(&ci).await?;
    let revoked_access = server.access_token(&revoked).await?;
    let revoked_id = current_session(&server, &revoked_access).await?;
    let done = gql(&server, &access, REVOKE, json!({ "id": revoked_id })).await?;
    assert_eq!(
        done["data"]["revokeSession"]["session"]["name"],
        "old laptop"
    );
    server.access_token(&theirs).await?;

    let sessions = my_sessions(&server, &access).await?;
    let names: Vec<&Value> = sessions.iter().map(|s| &s["name"]).collect();
    assert_eq!(names, [&Value::Null, &json!("nightly-ci")], "newest first");
    for session in &sessions {
        assert_eq!(session["clientId"], "prism-cli");
        let created = session["createdAt"].as_str().ok_or("no createdAt")?;
        humantime::parse_rfc3339(created)?;
        assert_eq!(session["current"], session["name"] == "nightly-ci");
    }
    assert!(sessions.iter().all(|s| s["id"] != revoked_id.as_str()));

    // Last use is written in batches (the first use within the flush interval): wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let used = loop {
        let sessions = my_sessions(&server, &access).await?;
        let ci_session = sessions
            .into_iter()
            .find(|s| s["name"] == "nightly-ci")
            .ok_or("ci session gone")?;
        if !ci_session["lastUsedAt"].is_null() || std::time::Instant::now() > deadline {
            break ci_session;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    humantime::parse_rfc3339(used["lastUsedAt"].as_str().ok_or("never used")?)?;
    assert_eq!(used["lastUsedAddress"], "127.0.0.1");

    // No secret or hash anywhere in the answer.
    let text = gql(&server, &access, MINE, json!({})).await?.to_string();
    for secret in [&ci, &unnamed, &revoked, &theirs] {
        assert!(!text.contains(secret.as_str()));
    }
    assert!(!text.contains("hash"));
    Ok(())
}

#[tokio::test]
async fn revoking_one_session_spares_the_others() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let keep = token(data, "owner@localhost", Some("keep"))?;
    let lose = token(data, "owner@localhost", Some("lose"))?;
    let keep_access = server.access_token(&keep).await?;
    let lose_access = server.access_token(&lose).await?;
    let lose_id = current_session(&server, &lose_access).await?;

    let done = gql(&server, &keep_access, REVOKE, json!({ "id": lose_id })).await?;
    assert_eq!(
        done["data"]["revokeSession"]["session"]["id"],
        lose_id.as_str()
    );
    assert_eq!(done["data"]["revokeSession"]["errors"], json!([]));
    // At once: the refresh token and the access tokens issued from it.
    assert_eq!(server.refresh(&lose).await?.0, 400);
    assert_eq!(server.whoami(&lose_access).await?, Err(401));
    // The other session lives on.
    assert_eq!(
        server.whoami(&keep_access).await?,
        Ok("owner@localhost".to_owned())
    );
    assert_eq!(server.refresh(&keep).await?.0, 200);
    let names: Vec<Value> = my_sessions(&server, &keep_access)
        .await?
        .into_iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, [json!("keep")]);

    // Again, or a bad id: unknown, and nothing else is touched.
    for id in [
        lose_id.as_str(),
        "not-a-uuid",
        "",
        "00000000-0000-0000-0000-000000000000",
    ] {
        let again = gql(&server, &keep_access, REVOKE, json!({ "id": id })).await?;
        assert!(again["data"]["revokeSession"]["session"].is_null());
        assert_eq!(payload_error(&again, "revokeSession"), unknown_session());
    }
    assert_eq!(server.refresh(&keep).await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn revoke_all_my_sessions() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let first = token(data, "owner@localhost", Some("one"))?;
    let second = token(data, "owner@localhost", Some("two"))?;
    let access = server.access_token(&first).await?;
    let other_access = server.access_token(&second).await?;
    let done = gql(&server, &access, REVOKE_ALL, json!({})).await?;
    assert_eq!(
        done["data"]["revokeAllSessions"],
        json!({ "user": { "email": "owner@localhost" }, "errors": [] })
    );
    assert_eq!(server.refresh(&first).await?.0, 400);
    assert_eq!(server.refresh(&second).await?.0, 400);
    assert_eq!(server.whoami(&access).await?, Err(401));
    assert_eq!(server.whoami(&other_access).await?, Err(401));
    // A session started afterwards works, and is the only one listed.
    let fresh = token(data, "owner@localhost", Some("fresh"))?;
    let fresh_access = server.access_token(&fresh).await?;
    let names: Vec<Value> = my_sessions(&server, &fresh_access)
        .await?
        .into_iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, [json!("fresh")]);
    Ok(())
}

#[tokio::test]
async fn admins_manage_members_sessions_but_not_owners() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = token(data, "owner@localhost", Some("owner-ci"))?;
    let owner_access = server.access_token(&owner).await?;
    let owner_session = current_session(&server, &owner_access).await?;
    let owner_id = my_id(&server, &owner_access).await?;
    add(data, None, "admin@example.com", "Admin")?;
    let admin = server
        .access_token(&token(data, "admin@example.com", None)?)
        .await?;
    add(data, None, "dev@example.com", "Integrator")?;
    let dev_one = token(data, "dev@example.com", Some("dev-one"))?;
    let dev_two = token(data, "dev@example.com", Some("dev-two"))?;
    let dev_access = server.access_token(&dev_one).await?;
    let dev_id = my_id(&server, &dev_access).await?;

    // The Admin sees the member's sessions; the Owner's come back null with an error.
    let everyone = gql(&server, &admin, EVERYONE, json!({})).await?;
    let nodes = everyone["data"]["organization"]["users"]["nodes"]
        .as_array()
        .ok_or("no users")?;
    let by_email = |email: &str| nodes.iter().find(|n| n["email"] == email).cloned();
    let dev = by_email("dev@example.com").ok_or("no dev")?;
    let dev_sessions = dev["sessions"].as_array().ok_or("no dev sessions")?;
    let dev_names: Vec<&Value> = dev_sessions.iter().map(|s| &s["name"]).collect();
    assert_eq!(dev_names, [&json!("dev-two"), &json!("dev-one")]);
    assert!(by_email("owner@localhost").ok_or("no owner")?["sessions"].is_null());
    let errors = everyone["errors"].as_array().ok_or("no errors")?;
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0]["message"],
        "Admins cannot manage Owners' sessions"
    );
    assert_eq!(errors[0]["extensions"]["code"], "FORBIDDEN");

    // The Admin ends one of the member's sessions, then all of them.
    let dev_one_id = dev_sessions
        .iter()
        .find(|s| s["name"] == "dev-one")
        .and_then(|s| s["id"].as_str())
        .ok_or("no dev-one")?;
    let done = gql(&server, &admin, REVOKE, json!({ "id": dev_one_id })).await?;
    assert_eq!(done["data"]["revokeSession"]["errors"], json!([]));
    assert_eq!(server.refresh(&dev_one).await?.0, 400);
    assert_eq!(server.whoami(&dev_access).await?, Err(401));
    assert_eq!(server.refresh(&dev_two).await?.0, 200);
    let done = gql(&server, &admin, REVOKE_ALL, json!({ "userId": dev_id })).await?;
    assert_eq!(
        done["data"]["revokeAllSessions"],
        json!({ "user": { "email": "dev@example.com" }, "errors": [] })
    );
    assert_eq!(server.refresh(&dev_two).await?.0, 400);

    // Both are audited as the Admin's doing, about the member; no secret in the trail.
    let admin_id = my_id(&server, &admin).await?;
    let trail = admin_ok(data, &["audit", "--limit", "5"])?;
    assert!(!trail.contains(&dev_one) && !trail.contains(&dev_two));
    let events: Vec<Value> = trail
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let actor = format!("user:{}", user_uuid(&admin_id)?);
    let revokes: Vec<(&Value, &Value, &Value)> = events
        .iter()
        .filter(|e| e["actor"] == actor.as_str())
        .map(|e| (&e["action"], &e["subjectUserId"], &e["detail"]["token_id"]))
        .collect();
    assert_eq!(
        revokes,
        [
            (&json!("tokens.revoked_all"), &json!(dev_id), &Value::Null),
            (&json!("token.revoked"), &json!(dev_id), &json!(dev_one_id)),
        ]
    );

    // Not the Owner's: refused, and the Owner's session still works.
    let denied = gql(&server, &admin, REVOKE, json!({ "id": owner_session })).await?;
    assert_eq!(
        payload_error(&denied, "revokeSession"),
        (
            "__all__".to_owned(),
            "Admins cannot manage Owners' sessions".to_owned()
        )
    );
    let denied = gql(&server, &admin, REVOKE_ALL, json!({ "userId": owner_id })).await?;
    assert_eq!(
        payload_error(&denied, "revokeAllSessions").1,
        "Admins cannot manage Owners' sessions"
    );
    assert_eq!(server.refresh(&owner).await?.0, 200);
    assert_eq!(
        server.whoami(&owner_access).await?,
        Ok("owner@localhost".to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn others_sessions_look_unknown() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = token(data, "owner@localhost", Some("owner-ci"))?;
    let owner_access = server.access_token(&owner).await?;
    let owner_session = current_session(&server, &owner_access).await?;
    let owner_id = my_id(&server, &owner_access).await?;
    add(data, None, "dev@example.com", "Integrator")?;
    let dev = server
        .access_token(&token(data, "dev@example.com", Some("mine"))?)
        .await?;
    let tenant_b = admin_ok(data, &["orgs", "add", "--name", "Beta"])?;
    add(data, Some(&tenant_b), "admin-b@example.com", "Admin")?;
    let admin_b = server
        .access_token(&admin_ok(
            data,
            &[
                "--tenant-id",
                &tenant_b,
                "tokens",
                "create",
                "--email",
                "admin-b@example.com",
            ],
        )?)
        .await?;

    // A member sees their own sessions, and nobody else's (as if the user were unknown).
    let everyone = gql(&server, &dev, EVERYONE, json!({})).await?;
    let nodes = everyone["data"]["organization"]["users"]["nodes"]
        .as_array()
        .ok_or("no users")?;
    for node in nodes {
        if node["email"] == "dev@example.com" {
            assert_eq!(node["sessions"][0]["name"], "mine");
        } else {
            assert!(node["sessions"].is_null());
        }
    }
    let errors = everyone["errors"].as_array().ok_or("no errors")?;
    assert!(!errors.is_empty());
    for error in errors {
        assert_eq!(error["message"], "no such user in your organization");
        assert_eq!(error["extensions"]["code"], "NOT_FOUND");
    }

    // A member, and an Admin of another organization: someone else's session id, or user id,
    // is answered exactly like one that does not exist.
    for (caller, who) in [(&dev, "member"), (&admin_b, "other organization")] {
        let real = gql(&server, caller, REVOKE, json!({ "id": owner_session })).await?;
        assert_eq!(
            payload_error(&real, "revokeSession"),
            unknown_session(),
            "{who}"
        );
        let all = gql(&server, caller, REVOKE_ALL, json!({ "userId": owner_id })).await?;
        let bogus = gql(
            &server,
            caller,
            REVOKE_ALL,
            json!({ "userId": "VXNlcjpub3BlCg==" }),
        )
        .await?;
        assert_eq!(
            payload_error(&all, "revokeAllSessions"),
            payload_error(&bogus, "revokeAllSessions"),
            "{who}"
        );
        assert_eq!(
            payload_error(&all, "revokeAllSessions").1,
            "no such user in your organization"
        );
    }
    assert_eq!(server.refresh(&owner).await?.0, 200);
    assert_eq!(
        server.whoami(&owner_access).await?,
        Ok("owner@localhost".to_owned())
    );
    Ok(())
}
