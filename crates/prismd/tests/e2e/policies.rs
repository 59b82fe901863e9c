//! Session policies (issue 7) end to end: an organization's idle expiry and maximum age for
//! refresh tokens, set through GraphQL by an Owner, refuse old and idle tokens on
//! `/auth/refresh` and `/oauth/token` exactly like revoked ones, and the access tokens issued
//! from them, at once (also when cached, and on another replica), for that organization only;
//! with no policy nothing changes. Time is moved by writing `created_at` / `last_used_at` into the database behind
//! the server's back, never by sleeping.

use std::path::Path;

use serde_json::{Value, json};
use sqlx::Connection;

use crate::harness::{Server, TestResult, admin_ok, prismd, temp_dir};
use crate::postgres::FreshDatabase;
use crate::replicas::replica;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const DAY_MS: i64 = 86_400_000;
/// The user agent the tests' GraphQL calls send, to find it in the audit row.
const AGENT: &str = "policies-e2e/1.0";

const READ_POLICY: &str = "{ organization { sessionPolicy { idleExpiryDays maxAgeDays } } }";
const UPDATE_POLICY: &str = "mutation($idle: Int, $max: Int) { updateSessionPolicy(input: {idleExpiryDays: $idle, maxAgeDays: $max}) { sessionPolicy { idleExpiryDays maxAgeDays } errors { field messages } } }";
const UPDATE_IDLE_ONLY: &str = "mutation($idle: Int) { updateSessionPolicy(input: {idleExpiryDays: $idle}) { sessionPolicy { idleExpiryDays maxAgeDays } errors { field messages } } }";
const EVERYONES_SESSIONS: &str =
    r#"{ organization { users(after: "") { nodes { email sessions { name expiresAt } } } } }"#;

async fn gql(server: &Server, access: &str, query: &str, variables: Value) -> Res<Value> {
    let response = server
        .http
        .post(server.url("/api"))
        .header("authorization", format!("Bearer {access}"))
        .header("user-agent", AGENT)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    Ok(response.json().await?)
}

/// Sets both limits (null turns one off); returns the mutation's payload.
async fn set_policy(server: &Server, access: &str, idle: Value, max: Value) -> Res<Value> {
    let answer = gql(
        server,
        access,
        UPDATE_POLICY,
        json!({ "idle": idle, "max": max }),
    )
    .await?;
    Ok(answer["data"]["updateSessionPolicy"].clone())
}

/// `POST /oauth/token` with the official client's refresh form; status and JSON body.
async fn oauth_refresh(server: &Server, token: &str) -> Res<(u16, Value)> {
    let body = format!("grant_type=refresh_token&client_id=prism-cli&refresh_token={token}");
    let (status, text) = server
        .post_raw(
            "/oauth/token",
            Some("application/x-www-form-urlencoded"),
            body.into_bytes(),
        )
        .await?;
    Ok((status, serde_json::from_str(&text)?))
}

/// Adds a user (unless it is the first Owner) and mints a named refresh token for them.
fn named_token(
    data: &Path,
    tenant: Option<&str>,
    email: &str,
    role: &str,
    name: &str,
) -> Res<String> {
    let mut prefix = Vec::new();
    if let Some(tenant) = tenant {
        prefix.extend(["--tenant-id", tenant]);
    }
    if email != "owner@localhost" {
        let mut add = prefix.clone();
        add.extend(["users", "add", "--email", email, "--role", role]);
        // A second token for the same user: the user exists already.
        let _ = prismd(data, &add)?;
    }
    let mut create = prefix;
    create.extend(["tokens", "create", "--email", email, "--name", name]);
    admin_ok(data, &create)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Moves the token named `name` into the past: created and last used `days` ago (no last
/// use for `None`), in the running server's SQLite file.
async fn backdate(
    data: &Path,
    name: &str,
    created_days: i64,
    used_days: Option<i64>,
) -> TestResult {
    let url = format!("sqlite://{}", data.join("prismd.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let now = now_ms();
    let done =
        sqlx::query("UPDATE refresh_tokens SET created_at = $1, last_used_at = $2 WHERE name = $3")
            .bind(now - created_days * DAY_MS)
            .bind(used_days.map(|days| now - days * DAY_MS))
            .bind(name)
            .execute(&mut conn)
            .await?;
    conn.close().await?;
    assert_eq!(done.rows_affected(), 1, "no token named {name}");
    Ok(())
}

/// The answer to a revoked refresh token today, to compare an expired one with.
async fn revoked_answers(server: &Server, data: &Path) -> Res<((u16, Value), (u16, Value))> {
    let token = named_token(data, None, "revoked@example.com", "Integrator", "revoked")?;
    let (status, _) = server
        .post_json("/oauth/revoke", &json!({ "token": token }))
        .await?;
    assert_eq!(status, 200);
    Ok((
        server.refresh(&token).await?,
        oauth_refresh(server, &token).await?,
    ))
}

/// `prismd_refresh_failures_total{reason="expired_session"}`.
async fn expired_count(server: &Server) -> Res<i64> {
    let text = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let line = text
        .lines()
        .find(|l| l.starts_with("prismd_refresh_failures_total{reason=\"expired_session\"}"))
        .ok_or("no expired_session series")?;
    Ok(line.rsplit(' ').next().ok_or("no value")?.parse()?)
}

#[tokio::test]
async fn max_age_refuses_old_tokens_like_revoked_ones_until_cleared() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = server
        .access_token(&named_token(
            data,
            None,
            "owner@localhost",
            "Owner",
            "owner-ci",
        )?)
        .await?;
    let old = named_token(data, None, "ci@example.com", "Integrator", "old")?;
    let fresh = named_token(data, None, "ci@example.com", "Integrator", "fresh")?;
    backdate(data, "old", 400, Some(0)).await?;

    // Off by default: a 400-day-old token works, as on Prismatic. Its grant is now cached.
    let policy = gql(&server, &owner, READ_POLICY, json!({})).await?;
    assert_eq!(
        policy["data"]["organization"]["sessionPolicy"],
        json!({ "idleExpiryDays": null, "maxAgeDays": null }),
        "{policy}"
    );
    let old_access = server.access_token(&old).await?;
    assert_eq!(oauth_refresh(&server, &old).await?.0, 200);

    // An Owner sets a maximum age of 90 days: the old token is refused at once, although its
    // grant was cached a moment ago and it was used just now.
    let payload = set_policy(&server, &owner, Value::Null, json!(90)).await?;
    assert_eq!(payload["errors"], json!([]), "{payload}");
    assert_eq!(
        payload["sessionPolicy"],
        json!({ "idleExpiryDays": null, "maxAgeDays": 90 })
    );
    let (revoked_json, revoked_form) = revoked_answers(&server, data).await?;
    let expired_json = server.refresh(&old).await?;
    let expired_form = oauth_refresh(&server, &old).await?;
    assert_eq!(expired_json.0, 400, "{}", expired_json.1);
    assert_eq!(expired_json.1["error"], "invalid_grant");
    // Exactly a revoked token's answer, on both endpoints.
    assert_eq!(expired_json, revoked_json);
    assert_eq!(expired_form, revoked_form);
    assert_eq!(expired_form.1["error"], "invalid_grant");
    assert_eq!(expired_count(&server).await?, 2);
    // A young token of the same user works.
    assert_eq!(server.refresh(&fresh).await?.0, 200);
    assert_eq!(oauth_refresh(&server, &fresh).await?.0, 200);
    // The access token issued from the old session ends with it (like a revoked session's),
    // while one from the young session works.
    assert_eq!(server.whoami(&old_access).await?, Err(401));
    assert_eq!(
        server.whoami(&server.access_token(&fresh).await?).await?,
        Ok("ci@example.com".to_owned())
    );

    // Audited with actor, address, user agent, and old and new values.
    let audit: Value = serde_json::from_str(
        admin_ok(data, &["audit", "--limit", "20"])?
            .lines()
            .find(|line| line.contains("org.policy_changed"))
            .ok_or("no org.policy_changed event")?,
    )?;
    assert!(
        audit["actor"].as_str().unwrap_or("").starts_with("user:"),
        "{audit}"
    );
    assert_eq!(audit["address"], "127.0.0.1");
    assert_eq!(
        audit["detail"],
        json!({
            "old": { "idle_expiry_secs": null, "max_age_secs": null },
            "new": { "idle_expiry_secs": null, "max_age_secs": 90 * 86_400 },
        })
    );
    let url = format!("sqlite://{}", data.join("prismd.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let agent: Option<String> = sqlx::query_scalar(
        "SELECT user_agent FROM audit_events WHERE action = 'org.policy_changed'",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    assert_eq!(agent.as_deref(), Some(AGENT));

    // Clearing the policy restores the old token: expiry is a rule applied on every read,
    // not a write.
    let payload = set_policy(&server, &owner, Value::Null, Value::Null).await?;
    assert_eq!(payload["errors"], json!([]), "{payload}");
    assert_eq!(server.refresh(&old).await?.0, 200);
    assert_eq!(oauth_refresh(&server, &old).await?.0, 200);
    assert_eq!(
        server.whoami(&old_access).await?,
        Ok("ci@example.com".to_owned())
    );

    // An expired token still signs its user out everywhere (`/auth/revoke` revokes all):
    // otherwise a user whose CI token had expired could not end a stolen token that is still
    // in use, and a later, longer policy would bring the "revoked" tokens back.
    let payload = set_policy(&server, &owner, Value::Null, json!(90)).await?;
    assert_eq!(payload["errors"], json!([]), "{payload}");
    assert_eq!(server.refresh(&old).await?.0, 400);
    let (status, _) = server.revoke(&old).await?;
    assert_eq!(status, 200);
    assert_eq!(
        server.refresh(&fresh).await?.0,
        400,
        "the young token survived"
    );
    let payload = set_policy(&server, &owner, Value::Null, Value::Null).await?;
    assert_eq!(payload["errors"], json!([]), "{payload}");
    assert_eq!(
        server.refresh(&old).await?.0,
        400,
        "a revoked token came back"
    );
    assert_eq!(
        server.refresh(&fresh).await?.0,
        400,
        "a revoked token came back"
    );
    // Once revoked, the old token revokes nothing more.
    let replacement = named_token(data, None, "ci@example.com", "Integrator", "replacement")?;
    let (status, _) = server.revoke(&old).await?;
    assert_eq!(status, 200);
    assert_eq!(server.refresh(&replacement).await?.0, 200);
    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn idle_expiry_counts_from_the_last_use() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = server
        .access_token(&named_token(
            data,
            None,
            "owner@localhost",
            "Owner",
            "owner-ci",
        )?)
        .await?;
    let idle = named_token(data, None, "ci@example.com", "Integrator", "idle")?;
    let never_used = named_token(data, None, "ci@example.com", "Integrator", "never-used")?;
    let recent = named_token(data, None, "ci@example.com", "Integrator", "recent")?;
    let used_here = named_token(data, None, "ci@example.com", "Integrator", "used-here")?;
    backdate(data, "idle", 100, Some(40)).await?;
    backdate(data, "never-used", 40, None).await?;
    backdate(data, "recent", 100, Some(10)).await?;
    backdate(data, "used-here", 100, Some(40)).await?;
    // Used on this server just now (the use is noted in memory first): no longer idle.
    assert_eq!(server.refresh(&used_here).await?.0, 200);

    let payload = set_policy(&server, &owner, json!(30), Value::Null).await?;
    assert_eq!(payload["errors"], json!([]), "{payload}");
    for stale in [&idle, &never_used] {
        let (status, body) = server.refresh(stale).await?;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
        let (status, body) = oauth_refresh(&server, stale).await?;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
    }
    for live in [&recent, &used_here] {
        assert_eq!(server.refresh(live).await?.0, 200);
        assert_eq!(oauth_refresh(&server, live).await?.0, 200);
    }

    // The sessions list leaves out what the policy ended and says when the rest ends.
    let everyone = gql(&server, &owner, EVERYONES_SESSIONS, json!({})).await?;
    let ci = everyone["data"]["organization"]["users"]["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["email"] == "ci@example.com"))
        .ok_or("no ci user")?;
    let mut names: Vec<&str> = ci["sessions"]
        .as_array()
        .ok_or("no sessions")?
        .iter()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["recent", "used-here"]);
    for session in ci["sessions"].as_array().ok_or("no sessions")? {
        assert!(session["expiresAt"].is_string(), "{session}");
    }

    // Clearing it restores the idle ones.
    set_policy(&server, &owner, Value::Null, Value::Null).await?;
    assert_eq!(server.refresh(&idle).await?.0, 200);
    assert_eq!(server.refresh(&never_used).await?.0, 200);
    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn only_owners_set_it_it_is_validated_and_stays_in_its_organization() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = server
        .access_token(&named_token(
            data,
            None,
            "owner@localhost",
            "Owner",
            "owner-ci",
        )?)
        .await?;
    let admin = server
        .access_token(&named_token(
            data,
            None,
            "admin@example.com",
            "Admin",
            "admin",
        )?)
        .await?;
    let member = server
        .access_token(&named_token(
            data,
            None,
            "dev@example.com",
            "Integrator",
            "dev",
        )?)
        .await?;
    let old_a = named_token(data, None, "ci@example.com", "Integrator", "old-a")?;
    backdate(data, "old-a", 400, Some(0)).await?;
    let tenant_b = admin_ok(data, &["orgs", "add", "--name", "Beta"])?;
    let owner_b = server
        .access_token(&named_token(
            data,
            Some(&tenant_b),
            "owner-b@example.com",
            "Owner",
            "owner-b",
        )?)
        .await?;
    let old_b = named_token(
        data,
        Some(&tenant_b),
        "ci-b@example.com",
        "Integrator",
        "old-b",
    )?;
    backdate(data, "old-b", 400, Some(0)).await?;

    // Admins read it but cannot change it; members can do neither.
    let read = gql(&server, &admin, READ_POLICY, json!({})).await?;
    assert_eq!(
        read["data"]["organization"]["sessionPolicy"],
        json!({ "idleExpiryDays": null, "maxAgeDays": null }),
        "{read}"
    );
    let read = gql(&server, &member, READ_POLICY, json!({})).await?;
    assert!(
        read["data"]["organization"]["sessionPolicy"].is_null(),
        "{read}"
    );
    assert_eq!(
        read["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{read}"
    );
    for (caller, who) in [(&admin, "Admin"), (&member, "member")] {
        let payload = set_policy(&server, caller, json!(1), json!(1)).await?;
        assert!(payload["sessionPolicy"].is_null(), "{who}: {payload}");
        assert_eq!(
            payload["errors"],
            json!([{ "field": "__all__", "messages": ["only Owners can change the session policy"] }]),
            "{who}"
        );
    }

    // Out-of-range values are refused with the field at fault; nothing changes.
    for (idle, max, field) in [
        (json!(0), Value::Null, "idleExpiryDays"),
        (json!(-1), Value::Null, "idleExpiryDays"),
        (Value::Null, json!(3651), "maxAgeDays"),
    ] {
        let payload = set_policy(&server, &owner, idle, max).await?;
        assert!(payload["sessionPolicy"].is_null(), "{payload}");
        assert_eq!(payload["errors"][0]["field"], field, "{payload}");
        let message = payload["errors"][0]["messages"][0].as_str().unwrap_or("");
        assert!(message.contains("from 1 to 3650"), "{message}");
    }
    let read = gql(&server, &owner, READ_POLICY, json!({})).await?;
    assert_eq!(
        read["data"]["organization"]["sessionPolicy"],
        json!({ "idleExpiryDays": null, "maxAgeDays": null })
    );
    assert_eq!(server.refresh(&old_a).await?.0, 200);

    // Organization B's Owner sets B's policy: B's old token stops, A's does not.
    let payload = set_policy(&server, &owner_b, Value::Null, json!(30)).await?;
    assert_eq!(payload["errors"], json!([]), "{payload}");
    assert_eq!(server.refresh(&old_b).await?.0, 400);
    assert_eq!(server.refresh(&old_a).await?.0, 200);
    let read = gql(&server, &owner, READ_POLICY, json!({})).await?;
    assert_eq!(
        read["data"]["organization"]["sessionPolicy"]["maxAgeDays"],
        Value::Null
    );

    // A limit left out of the input is kept; null clears it.
    let answer = gql(&server, &owner_b, UPDATE_IDLE_ONLY, json!({ "idle": 7 })).await?;
    assert_eq!(
        answer["data"]["updateSessionPolicy"]["sessionPolicy"],
        json!({ "idleExpiryDays": 7, "maxAgeDays": 30 }),
        "{answer}"
    );
    let payload = set_policy(&server, &owner_b, Value::Null, Value::Null).await?;
    assert_eq!(
        payload["sessionPolicy"],
        json!({ "idleExpiryDays": null, "maxAgeDays": null })
    );
    assert_eq!(server.refresh(&old_b).await?.0, 200);
    server.stop()?;
    Ok(())
}

/// On PostgreSQL, a policy set through one replica is enforced by the other at once, although
/// the other had the token's grant cached (with a cache lifetime far beyond the deadline).
#[tokio::test]
async fn a_policy_set_on_one_replica_holds_on_the_other() -> TestResult {
    let db = FreshDatabase::create().await?;
    let outcome = across_replicas(&db.url).await;
    db.drop_now().await?;
    outcome
}

async fn across_replicas(url: &str) -> TestResult {
    let (dir_a, dir_b) = (temp_dir()?, temp_dir()?);
    let a = replica(dir_a.path(), url)?;
    let b = replica(dir_b.path(), url)?;
    let cli = dir_a.path();
    let admin = |args: &[&str]| -> Res<String> {
        let mut full = vec!["--database-url", url];
        full.extend_from_slice(args);
        admin_ok(cli, &full)
    };
    let owner = a
        .access_token(&admin(&["tokens", "create", "--email", "owner@localhost"])?)
        .await?;
    admin(&[
        "users",
        "add",
        "--email",
        "ci@example.com",
        "--role",
        "Integrator",
    ])?;
    let old = admin(&[
        "tokens",
        "create",
        "--email",
        "ci@example.com",
        "--name",
        "old",
    ])?;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query("UPDATE refresh_tokens SET created_at = $1 WHERE name = 'old'")
        .bind(now_ms() - 400 * DAY_MS)
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    // B caches the grant, and the principal behind an access token from it.
    assert_eq!(b.refresh(&old).await?.0, 200);
    let old_access = b.access_token(&old).await?;
    assert_eq!(b.whoami(&old_access).await?, Ok("ci@example.com".into()));
    assert_eq!(b.whoami(&old_access).await?, Ok("ci@example.com".into()));

    let payload = set_policy(&a, &owner, Value::Null, json!(90)).await?;
    assert_eq!(payload["errors"], json!([]), "{payload}");
    let (status, body) = a.refresh(&old).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) = b.refresh_after_change(&old).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert_eq!(b.whoami_after_change(&old_access).await?, Err(401));
    let logs_b = b.stop()?;
    let logs_a = a.stop()?;
    for logs in [logs_a, logs_b] {
        assert!(!logs.contains("ERROR"), "{logs}");
    }
    Ok(())
}
