//! Named tokens that expire (issue 17) end to end: `createToken` with `expiresInDays` or
//! `expiresAt` shows the expiry on the session, the exchange answers
//! `refresh_token_expires_in` and never issues an access token that outlives the refresh
//! token, and once the expiry has passed both token endpoints refuse it as `invalid_grant`
//! naming the time, the session list leaves it out and its name is free again. The expiry
//! input is checked, the session policy's limit still applies, and an organization's maximum
//! token lifetime (`updateTokenPolicy`, Owners only) makes an expiry within it required; with
//! SMTP, the owner of a named token that expires within 7 days is mailed once (a service
//! account's token: the member who minted it, while still a member). Time
//! is moved by writing `refresh_tokens.expires_at` into the database behind the server's back,
//! never by sleeping; the server runs with its standing cache off so the next exchange reads
//! it.

use std::path::Path;

use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::harness::{Options, Server, TestResult, jwt_claims, refresh_with_scope, temp_dir};
use crate::scopes::{
    CREATE_TOKEN, Res, add_member, call, create_sa, exchange, first_error, must, named_token,
    refused, role_id, stop_clean, swap_at,
};
use crate::smtp::{ReceivedMail, SmtpSink};

const DAY_MS: i64 = 86_400_000;
const MY_SESSIONS: &str = "{ authenticatedUser { sessions { id name expiresAt named scopes } } }";
const TOKEN_POLICY: &str = "{ organization { tokenPolicy { maxLifetimeDays } } }";
const SET_TOKEN_POLICY: &str = "mutation($days: Int) { updateTokenPolicy(input: {maxLifetimeDays: $days}) { tokenPolicy { maxLifetimeDays } errors { field messages } } }";
const SET_MAX_AGE: &str = "mutation($max: Int) { updateSessionPolicy(input: {maxAgeDays: $max}) { sessionPolicy { maxAgeDays } errors { field messages } } }";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An RFC 3339 time as milliseconds since the epoch.
fn parse_ms(text: &str) -> Res<i64> {
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|err| format!("not an RFC 3339 time: {text:?}: {err}"))?;
    Ok(i64::try_from(
        time.duration_since(std::time::UNIX_EPOCH)?.as_millis(),
    )?)
}

/// The `expiresAt` of a session, in milliseconds since the epoch.
fn expiry_ms(session: &Value) -> Res<i64> {
    parse_ms(session["expiresAt"].as_str().ok_or("no expiresAt")?)
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
fn rfc3339(ms: i64) -> String {
    let since = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + since).to_string()
}

/// A server whose standing cache is off: every exchange reads the token's expiry.
fn start(data: &Path) -> Res<Server> {
    Server::start_with(
        data,
        Options {
            args: vec!["--cache-ttl".into(), "0s".into()],
            ..Options::default()
        },
    )
}

/// A member added by the operator, and an access token of theirs.
async fn member(server: &Server, data: &Path, email: &str, role: &str) -> Res<String> {
    if email != "owner@localhost" {
        add_member(data, email, role)?;
    }
    let token = named_token(data, email, "t")?;
    exchange(server, &token, None).await
}

/// A `createToken` that must succeed: (token, session).
async fn minted(server: &Server, access: &str, input: Value) -> Res<(String, Value)> {
    let payload = must(server, access, CREATE_TOKEN, input, "createToken").await?;
    Ok((
        payload["token"].as_str().ok_or("no token")?.to_owned(),
        payload["session"].clone(),
    ))
}

/// A `createToken` that must be refused: its (field, message).
async fn mint_refused(server: &Server, access: &str, input: Value) -> Res<(String, String)> {
    let errors = refused(server, access, CREATE_TOKEN, input, "createToken", "token").await?;
    Ok(first_error(&errors))
}

/// Writes the expiry of the refresh token `session_id` into the running server's SQLite file.
async fn set_expiry(data: &Path, session_id: &str, expires_at: i64) -> TestResult {
    let url = format!("sqlite://{}", data.join("prismd.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let done = sqlx::query("UPDATE refresh_tokens SET expires_at = $1 WHERE id = $2")
        .bind(expires_at)
        .bind(session_id)
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    assert_eq!(done.rows_affected(), 1, "no refresh token {session_id}");
    Ok(())
}

/// The names of the caller's live sessions, and each one's `expiresAt`.
async fn my_sessions(server: &Server, access: &str) -> Res<Vec<Value>> {
    let body = call(server, access, MY_SESSIONS, json!({})).await?;
    Ok(body["data"]["authenticatedUser"]["sessions"]
        .as_array()
        .ok_or_else(|| format!("no sessions: {body}"))?
        .clone())
}

/// The names of the caller's live sessions.
async fn my_session_names(server: &Server, access: &str) -> Res<Vec<Value>> {
    let sessions = my_sessions(server, access).await?;
    Ok(sessions.iter().map(|s| s["name"].clone()).collect())
}

/// Checks a successful exchange of a token expiring at `expires_at` (ms), answered between
/// `before` and `after` (ms): `refresh_token_expires_in` is the time left, and the access
/// token ends no later than the refresh token.
fn check_expiring_answer(
    answer: &(u16, Value),
    expires_at: i64,
    before: i64,
    after: i64,
) -> TestResult {
    let (status, body) = answer;
    assert_eq!(*status, 200, "{body}");
    let left = body["refresh_token_expires_in"]
        .as_i64()
        .ok_or_else(|| format!("no integer refresh_token_expires_in: {body}"))?;
    // The server's clock read between `before` and `after`; whole seconds, either rounding.
    assert!(
        left * 1000 <= expires_at - before + 1000 && left * 1000 >= expires_at - after - 1000,
        "refresh_token_expires_in {left} for an expiry at {} read between {} and {}",
        rfc3339(expires_at),
        rfc3339(before),
        rfc3339(after)
    );
    let access = body["access_token"].as_str().ok_or("no access_token")?;
    let exp = jwt_claims(access)?["exp"].as_i64().ok_or("no exp claim")?;
    assert!(
        exp <= expires_at.div_euclid(1000) + i64::from(expires_at % 1000 != 0),
        "the access token's exp {exp} passes the refresh token's expiry {}",
        rfc3339(expires_at)
    );
    let expires_in = body["expires_in"].as_i64().ok_or("no expires_in")?;
    assert!(expires_in <= left + 1, "expires_in {expires_in} > {left}");
    Ok(())
}

#[tokio::test]
async fn a_token_with_an_expiry_works_until_it_then_is_refused_naming_the_time() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = start(data)?;
    let ian = member(&server, data, "ian@expiry.test", "Integrator").await?;

    // One day: the session shows when it ends.
    let before = now_ms();
    let (daily, session) = minted(&server, &ian, json!({ "name": "daily", "days": 1 })).await?;
    let after = now_ms();
    let daily_id = session["id"].as_str().ok_or("no id")?.to_owned();
    assert_eq!(session["named"], true);
    assert!(session["scopes"].is_null(), "{session}");
    let expires_at = expiry_ms(&session)?;
    assert!(
        expires_at >= before + DAY_MS - 1000 && expires_at <= after + DAY_MS + 1000,
        "expiresAt {} for a token minted between {} and {}",
        rfc3339(expires_at),
        rfc3339(before),
        rfc3339(after)
    );
    let listed = my_sessions(&server, &ian).await?;
    let shown = listed
        .iter()
        .find(|s| s["id"] == daily_id.as_str())
        .ok_or("daily not listed")?;
    assert_eq!(expiry_ms(shown)?, expires_at);

    // Both token endpoints say how long it has left; the access token (7 days by default)
    // ends with it.
    for endpoint in ["/auth/refresh", "/oauth/token"] {
        let before = now_ms();
        let answer = swap_at(&server, endpoint, &daily, None).await?;
        let after = now_ms();
        check_expiring_answer(&answer, expires_at, before, after)
            .map_err(|err| format!("{endpoint}: {err}"))?;
        assert!(answer.1["refresh_token_expires_in"].as_i64() <= Some(86_400));
    }
    // A token without an expiry answers as it always did.
    let (forever, forever_session) = minted(&server, &ian, json!({ "name": "forever" })).await?;
    assert!(forever_session["expiresAt"].is_null(), "{forever_session}");
    let (status, body) = server.refresh(&forever).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("refresh_token_expires_in").is_none(), "{body}");

    // Two minutes left: the access token is cut to them.
    let soon = now_ms() + 120_000;
    set_expiry(data, &daily_id, soon).await?;
    let before = now_ms();
    let answer = refresh_with_scope(&server, &daily, None).await?;
    let after = now_ms();
    check_expiring_answer(&answer, soon, before, after)?;
    assert!(answer.1["refresh_token_expires_in"].as_i64() <= Some(120));

    // The name is taken while it lives.
    let (field, _) = mint_refused(&server, &ian, json!({ "name": "daily", "days": 1 })).await?;
    assert_eq!(field, "name");
    let (field, _) = mint_refused(&server, &ian, json!({ "name": "  daily " })).await?;
    assert_eq!(field, "name");

    // An hour ago: refused on both endpoints, naming the time, like a revoked token.
    let expired_at = now_ms() - 3_600_000;
    set_expiry(data, &daily_id, expired_at).await?;
    for endpoint in ["/auth/refresh", "/oauth/token"] {
        let (status, body) = swap_at(&server, endpoint, &daily, None).await?;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{endpoint}: {body}"
        );
        let description = body["error_description"].as_str().unwrap_or("");
        // The spec's words, which the server may follow with a hint.
        let (time, _) = description
            .strip_prefix("the refresh token expired at ")
            .and_then(|rest| rest.split_once("; mint a new one"))
            .ok_or_else(|| format!("{endpoint}: description {description:?}"))?;
        let said = parse_ms(time)?;
        assert!(
            (said - expired_at).abs() < 1000,
            "{endpoint}: said {time}, the token expired at {}",
            rfc3339(expired_at)
        );
    }
    // Gone from the live sessions; the others stay.
    let names = my_session_names(&server, &ian).await?;
    assert!(!names.contains(&json!("daily")), "{names:?}");
    assert!(names.contains(&json!("forever")), "{names:?}");
    // Its name is free again, and the new token works.
    let (again, _) = minted(&server, &ian, json!({ "name": "daily", "days": 1 })).await?;
    assert_eq!(server.refresh(&again).await?.0, 200);
    assert_eq!(server.refresh(&forever).await?.0, 200);
    let (status, _) = server.refresh(&daily).await?;
    assert_eq!(status, 400, "the expired token came back");
    stop_clean(server)
}

#[tokio::test]
async fn expiry_input_is_checked_and_the_session_policy_still_applies() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = start(data)?;
    let owner = member(&server, data, "owner@localhost", "Owner").await?;
    let ian = member(&server, data, "ian@expiry.test", "Integrator").await?;

    let in_an_hour = rfc3339(now_ms() + 3_600_000);
    let an_hour_ago = rfc3339(now_ms() - 3_600_000);
    for (input, field, what) in [
        (
            json!({ "name": "past", "at": an_hour_ago }),
            Some("expiresAt"),
            "a past expiresAt",
        ),
        (
            json!({ "name": "garbage", "at": "tomorrow" }),
            Some("expiresAt"),
            "not RFC 3339",
        ),
        (
            json!({ "name": "both", "at": in_an_hour, "days": 1 }),
            None,
            "both expiries",
        ),
        (json!({ "name": "zero", "days": 0 }), None, "0 days"),
        (json!({ "name": "negative", "days": -1 }), None, "-1 days"),
        (
            json!({ "name": "too-long", "days": 3651 }),
            None,
            "3651 days",
        ),
        (json!({ "name": "" }), Some("name"), "an empty name"),
        (json!({ "name": "   " }), Some("name"), "a blank name"),
        (
            json!({ "name": "n".repeat(101) }),
            Some("name"),
            "101 characters",
        ),
        (
            json!({ "name": "empty-scopes", "scopes": [] }),
            Some("scopes"),
            "scopes: []",
        ),
        (
            json!({ "name": "unknown-scope", "scopes": ["nope:x"] }),
            Some("scopes"),
            "an unknown scope",
        ),
    ] {
        let (got, message) = mint_refused(&server, &ian, input)
            .await
            .map_err(|err| format!("{what}: {err}"))?;
        if let Some(field) = field {
            assert_eq!(got, field, "{what}: {message}");
        }
        assert!(!message.is_empty(), "{what}");
    }
    // Nothing of those was minted.
    let names = my_session_names(&server, &ian).await?;
    assert_eq!(names, [json!("t")], "{names:?}");

    // The limits, and exact times, are accepted.
    let (_, longest) = minted(&server, &ian, json!({ "name": "ten-years", "days": 3650 })).await?;
    let end = expiry_ms(&longest)?;
    assert!(end > now_ms() + 3649 * DAY_MS, "{longest}");
    let at = now_ms() + 10 * DAY_MS;
    let (_, exact) = minted(&server, &ian, json!({ "name": "exact", "at": rfc3339(at) })).await?;
    let shown = expiry_ms(&exact)?;
    assert!(
        (shown - at).abs() < 1000,
        "asked {}, shown {shown}",
        rfc3339(at)
    );
    let (_, trimmed) = minted(&server, &ian, json!({ "name": "  trimmed  ", "days": 1 })).await?;
    assert_eq!(trimmed["name"], "trimmed");
    let hundred = "n".repeat(100);
    minted(&server, &ian, json!({ "name": hundred, "days": 1 })).await?;

    // The session policy's end is shown when it comes first.
    let set_max_age = async |max: Value| {
        must(
            &server,
            &owner,
            SET_MAX_AGE,
            json!({ "max": max }),
            "updateSessionPolicy",
        )
        .await
    };
    let payload = set_max_age(json!(2)).await?;
    assert_eq!(payload["sessionPolicy"]["maxAgeDays"], 2);
    let before = now_ms();
    let (_, capped) = minted(&server, &ian, json!({ "name": "capped", "days": 30 })).await?;
    let after = now_ms();
    let listed = my_sessions(&server, &ian).await?;
    let capped_listed = listed
        .iter()
        .find(|s| s["name"] == "capped")
        .ok_or("capped not listed")?;
    let mut wrong = Vec::new();
    for (shown, place) in [(&capped, "createToken"), (capped_listed, "User.sessions")] {
        let end = expiry_ms(shown)?;
        if end < before + 2 * DAY_MS - 1000 || end > after + 2 * DAY_MS + 1000 {
            wrong.push(format!("{place}: {shown}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "a 30-day token under a 2-day maximum age does not show the policy's end:\n{}",
        wrong.join("\n")
    );
    let (_, own_first) = minted(&server, &ian, json!({ "name": "own-first", "days": 1 })).await?;
    let end = expiry_ms(&own_first)?;
    assert!(end <= now_ms() + DAY_MS + 1000, "{own_first}");
    set_max_age(Value::Null).await?;
    stop_clean(server)
}

#[tokio::test]
async fn a_maximum_token_lifetime_makes_an_expiry_within_it_required() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = start(data)?;
    let owner = member(&server, data, "owner@localhost", "Owner").await?;
    let admin = member(&server, data, "ada@expiry.test", "Admin").await?;
    let ian = member(&server, data, "ian@expiry.test", "Integrator").await?;

    let token_policy = async |caller: &str| call(&server, caller, TOKEN_POLICY, json!({})).await;
    let set_policy = async |caller: &str, days: Value| {
        let days = json!({ "days": days });
        refused(
            &server,
            caller,
            SET_TOKEN_POLICY,
            days,
            "updateTokenPolicy",
            "tokenPolicy",
        )
        .await
    };
    let set_policy_ok = async |days: Value| {
        let days = json!({ "days": days });
        must(&server, &owner, SET_TOKEN_POLICY, days, "updateTokenPolicy").await
    };

    // Off by default; Owners and Admins read it.
    for caller in [&owner, &admin] {
        let body = token_policy(caller).await?;
        assert_eq!(
            body["data"]["organization"]["tokenPolicy"],
            json!({ "maxLifetimeDays": null }),
            "{body}"
        );
    }
    // Only Owners set it.
    for (caller, who) in [(&admin, "Admin"), (&ian, "Integrator")] {
        let errors = set_policy(caller, json!(30))
            .await
            .map_err(|err| format!("{who}: {err}"))?;
        assert_eq!(errors[0]["field"], "__all__", "{who}: {errors:?}");
    }
    for days in [0, -1, 3651] {
        let errors = set_policy(&owner, json!(days))
            .await
            .map_err(|err| format!("{days} days: {err}"))?;
        assert_eq!(errors[0]["field"], "maxLifetimeDays", "{days}: {errors:?}");
    }
    let body = token_policy(&owner).await?;
    assert_eq!(
        body["data"]["organization"]["tokenPolicy"]["maxLifetimeDays"],
        Value::Null
    );
    // Still unlimited: no expiry is fine.
    minted(&server, &ian, json!({ "name": "before-policy" })).await?;

    let payload = set_policy_ok(json!(30)).await?;
    assert_eq!(payload["tokenPolicy"], json!({ "maxLifetimeDays": 30 }));
    let body = token_policy(&admin).await?;
    assert_eq!(
        body["data"]["organization"]["tokenPolicy"]["maxLifetimeDays"],
        30
    );

    // Now an expiry is required, within 30 days; the message names the maximum.
    let beyond = rfc3339(now_ms() + 31 * DAY_MS);
    for (input, what) in [
        (json!({ "name": "no-expiry" }), "no expiry"),
        (json!({ "name": "31-days", "days": 31 }), "31 days"),
        (
            json!({ "name": "31-days-at", "at": beyond }),
            "expiresAt in 31 days",
        ),
    ] {
        for (caller, who) in [(&ian, "Integrator"), (&owner, "Owner")] {
            let (field, message) = mint_refused(&server, caller, input.clone())
                .await
                .map_err(|err| format!("{what} as {who}: {err}"))?;
            assert_eq!(field, "expiresAt", "{what} as {who}: {message}");
            assert!(message.contains("30 days"), "{what} as {who}: {message}");
        }
    }
    // Also for a service account's token.
    let guest = role_id(&server, &owner, "Guest").await?;
    let sa_id = create_sa(&server, &owner, "bot", &guest).await?;
    let (field, message) =
        mint_refused(&server, &admin, json!({ "name": "bot", "sa": sa_id })).await?;
    assert_eq!(field, "expiresAt", "{message}");
    assert!(message.contains("30 days"), "{message}");
    minted(
        &server,
        &admin,
        json!({ "name": "bot", "sa": sa_id, "days": 30 }),
    )
    .await?;

    // Within it: accepted.
    let (token, _) = minted(&server, &ian, json!({ "name": "30-days", "days": 30 })).await?;
    assert_eq!(server.refresh(&token).await?.0, 200);
    let (token, _) = minted(
        &server,
        &ian,
        json!({ "name": "29-days-at", "at": rfc3339(now_ms() + 29 * DAY_MS) }),
    )
    .await?;
    assert_eq!(server.refresh(&token).await?.0, 200);

    // Cleared: no expiry is fine again.
    let payload = set_policy_ok(Value::Null).await?;
    assert_eq!(payload["tokenPolicy"], json!({ "maxLifetimeDays": null }));
    minted(&server, &ian, json!({ "name": "no-expiry" })).await?;
    stop_clean(server)
}

// ---------------------------------------------------------------------------------------------
// The expiry notice.

/// The mails `sink` has received for `to`.
fn mails_to(sink: &SmtpSink, to: &str) -> Res<Vec<ReceivedMail>> {
    Ok(sink
        .messages()?
        .into_iter()
        .filter(|m| m.envelope_to.iter().any(|r| r.eq_ignore_ascii_case(to)))
        .collect())
}

/// A generous bound for a check round to find a token and its mail to arrive (not a speed
/// claim: the rounds run every 200 ms).
const DELIVERY: std::time::Duration = std::time::Duration::from_secs(20);

#[tokio::test]
async fn a_named_token_expiring_within_a_week_mails_its_owner_once() -> TestResult {
    let sink = SmtpSink::start()?;
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start_with(
        data,
        Options {
            args: [
                "--smtp-url",
                &format!("smtp://127.0.0.1:{}?tls=none", sink.port),
                "--mail-from",
                "Prism <auth@example.com>",
                "--expiry-notice-interval",
                "200ms",
            ]
            .map(str::to_owned)
            .to_vec(),
            ..Options::default()
        },
    )?;
    let owner = member(&server, data, "owner@localhost", "Owner").await?;
    let ian = member(&server, data, "ian@expiry.test", "Integrator").await?;
    let ada = member(&server, data, "ada@expiry.test", "Admin").await?;
    let gone = member(&server, data, "gone@expiry.test", "Admin").await?;
    let guest = role_id(&server, &owner, "Guest").await?;

    // Tokens that must not be mailed are made safe first (expiring in 30 days), then moved
    // to expire soon behind the server's back, so that no round ever sees them live and soon.
    let (_, revoked) = minted(&server, &ian, json!({ "name": "revoked", "days": 30 })).await?;
    let revoked_id = revoked["id"].as_str().ok_or("no id")?.to_owned();
    must(
        &server,
        &ian,
        crate::scopes::REVOKE_SESSION,
        json!({ "id": revoked_id }),
        "revokeSession",
    )
    .await?;
    let bot_id = create_sa(&server, &owner, "bot", &guest).await?;
    let (_, orphan) = minted(
        &server,
        &gone,
        json!({ "name": "orphan", "sa": bot_id, "days": 30 }),
    )
    .await?;
    let gone_id = call(&server, &gone, "{ authenticatedUser { id } }", json!({})).await?["data"]
        ["authenticatedUser"]["id"]
        .clone();
    must(
        &server,
        &owner,
        crate::scopes::DELETE_USER,
        json!({ "id": gone_id }),
        "deleteUser",
    )
    .await?;
    let soon = now_ms() + 2 * DAY_MS;
    set_expiry(data, &revoked_id, soon).await?;
    set_expiry(data, orphan["id"].as_str().ok_or("no id")?, soon).await?;

    // Mailed: a member's own token within 7 days, and a service account's token to the member
    // who minted it. Not mailed: a token with weeks left, one without expiry.
    minted(&server, &ian, json!({ "name": "three-days", "days": 3 })).await?;
    minted(&server, &ian, json!({ "name": "month", "days": 30 })).await?;
    minted(&server, &ian, json!({ "name": "forever" })).await?;
    minted(
        &server,
        &ada,
        json!({ "name": "deploy", "sa": bot_id, "days": 6 }),
    )
    .await?;
    let to_ian = sink.wait_for("ian@expiry.test", DELIVERY)?;
    assert!(
        to_ian.subject.contains("three-days") || to_ian.body.contains("three-days"),
        "{to_ian:?}"
    );
    let to_ada = sink.wait_for("ada@expiry.test", DELIVERY)?;
    assert!(
        to_ada.subject.contains("deploy") || to_ada.body.contains("deploy"),
        "{to_ada:?}"
    );

    // Two more rounds, each proven by a new member's mail: nothing was sent twice, and
    // nothing for the revoked token, the removed minter or the later tokens.
    for marker in ["mark1@expiry.test", "mark2@expiry.test"] {
        let access = member(&server, data, marker, "Guest").await?;
        minted(&server, &access, json!({ "name": "marker", "days": 1 })).await?;
        sink.wait_for(marker, DELIVERY)?;
    }
    let to_ian = mails_to(&sink, "ian@expiry.test")?;
    assert_eq!(to_ian.len(), 1, "{to_ian:?}");
    assert_eq!(mails_to(&sink, "ada@expiry.test")?.len(), 1);
    assert_eq!(mails_to(&sink, "gone@expiry.test")?.len(), 0);
    assert_eq!(mails_to(&sink, "owner@localhost")?.len(), 0);
    let all = sink.messages()?;
    assert_eq!(all.len(), 4, "{all:?}");
    stop_clean(server)
}
