//! Abuse limits end to end: wrong passwords lock an account (429, `Retry-After`, a page that
//! says when) and the right password is refused alike during the lock; the lock passes and a
//! good sign-in resets the count; one address guessing across accounts is locked; invalid
//! refresh tokens from one address get 429 while a valid token from it still works; and on
//! PostgreSQL two replicas share the counters. A test that asserts a lock holds uses one far
//! longer than the test; the one test of a lock passing polls for it to end. No test asserts
//! how fast anything is.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    Options, Server, SignInPage, TestResult, admin_ok, browser_sign_in, device_sign_in,
    prismd_with_stdin, temp_dir,
};
use crate::metrics::scraped_value;
use crate::postgres::FreshDatabase;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const PASSWORD: &str = "correct horse battery staple";
const WRONG: &str = "not the password at all";

fn add_user(dir: &Path, database: &[&str], email: &str) -> TestResult {
    let mut args: Vec<&str> = database.to_vec();
    args.extend([
        "users",
        "add",
        "--email",
        email,
        "--role",
        "Admin",
        "--password-stdin",
    ]);
    let output = prismd_with_stdin(dir, &args, &format!("{PASSWORD}\n"))?;
    if !output.status.success() {
        return Err(format!(
            "users add failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(())
}

fn start(dir: &Path, extra: &[&str]) -> Res<Server> {
    Server::start_with(
        dir,
        Options {
            args: extra.iter().map(|a| (*a).to_owned()).collect(),
            ..Options::default()
        },
    )
}

type Page = SignInPage;

impl SignInPage {
    fn retry_after(&self) -> Option<u64> {
        self.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    fn describe(&self) -> String {
        format!(
            "status {}, retry-after {:?}, body {}",
            self.status,
            self.retry_after(),
            self.body
        )
    }
}

/// Opens the login form (for its CSRF cookie) and posts `email` / `password` to it.
async fn sign_in(server: &Server, email: &str, password: &str) -> Res<Page> {
    browser_sign_in(server, email, password, "limits-e2e").await
}

/// A 429 page that says when to try again, with a matching `Retry-After`.
fn assert_locked(page: &Page, longest_secs: u64) {
    assert_eq!(page.status, 429, "{}", page.describe());
    let wait = page.retry_after().unwrap_or(0);
    assert!((1..=longest_secs).contains(&wait), "{}", page.describe());
    assert!(page.body.contains("Try again in"), "{}", page.describe());
    assert!(!page.body.contains(PASSWORD) && !page.body.contains(WRONG));
}

/// A form that rejected the password, not a lock.
fn assert_wrong_password(page: &Page) {
    assert_eq!(page.status, 200, "{}", page.describe());
    assert!(
        page.body.contains("Wrong email or password."),
        "{}",
        page.describe()
    );
}

/// The `limit.tripped` events in the audit log of `dir`.
fn limit_trips(dir: &Path) -> Res<Vec<Value>> {
    let audit = admin_ok(dir, &["audit", "--limit", "50"])?;
    assert!(!audit.contains(PASSWORD) && !audit.contains(WRONG));
    Ok(audit
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["action"] == "limit.tripped")
        .collect())
}

/// A server that locks an account for `lock` at its third failed sign-in (and no address
/// limit in the way), with a user ann@example.com who has failed twice.
async fn ann_failed_twice(dir: &Path, lock: &str) -> Res<Server> {
    let server = start(
        dir,
        &[
            "--login-account-max-failures",
            "3",
            "--login-address-max-failures",
            "1000",
            "--limit-lock",
            lock,
            "--limit-max-lock",
            lock,
        ],
    )?;
    add_user(dir, &[], "ann@example.com")?;
    for _ in 0..2 {
        assert_wrong_password(&sign_in(&server, "ann@example.com", WRONG).await?);
    }
    Ok(server)
}

#[tokio::test]
async fn wrong_passwords_lock_the_account() -> TestResult {
    let dir = temp_dir()?;
    // A lock far longer than the test: every "is locked" below holds however slow the
    // machine is (the lock passing is `the_lock_passes_and_a_good_sign_in_resets_the_count`).
    let server = ann_failed_twice(dir.path(), "10m").await?;
    // The third failure locks; the email's spelling does not matter.
    let locked = sign_in(&server, "ANN@example.com", WRONG).await?;
    assert_locked(&locked, 600);
    // The right password during the lock gets the very same answer: no oracle.
    let right = sign_in(&server, "ann@example.com", PASSWORD).await?;
    assert_locked(&right, 600);
    // Another account from the same address is not locked.
    assert_wrong_password(&sign_in(&server, "someone@example.com", WRONG).await?);

    let trips = limit_trips(dir.path())?;
    assert_eq!(trips.len(), 1, "{trips:?}");
    assert_eq!(trips[0]["address"], "127.0.0.1", "{trips:?}");
    assert_eq!(trips[0]["detail"]["limit"], "login_account", "{trips:?}");
    assert!(trips[0]["subjectUserId"].is_string(), "{trips:?}");
    // The trip names the user by id, never by the email that was typed.
    assert!(!trips[0].to_string().contains("ann@"), "{trips:?}");
    let logs = server.stop()?;
    assert!(!logs.contains(PASSWORD) && !logs.contains(WRONG), "{logs}");
    Ok(())
}

#[tokio::test]
async fn the_lock_passes_and_a_good_sign_in_resets_the_count() -> TestResult {
    let dir = temp_dir()?;
    // A short lock, waited out by polling for it to end: no assertion here depends on how
    // long anything took. The window stays the default 15 minutes, so a count that was not
    // reset would lock again at the next failure.
    let server = ann_failed_twice(dir.path(), "1s").await?;
    // The answer that sets the lock says so itself, so this cannot miss a short lock.
    assert_locked(&sign_in(&server, "ann@example.com", WRONG).await?, 1);

    // Once the lock has passed, the right password works. The bound is only a deadline for
    // a broken lock that never ends, far above the 1 s lock.
    let deadline = Instant::now() + Duration::from_secs(60);
    let signed_in = loop {
        let page = sign_in(&server, "ann@example.com", PASSWORD).await?;
        if page.status != 429 {
            break page;
        }
        if Instant::now() > deadline {
            return Err(format!("still locked after 60 s: {}", page.describe()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(signed_in.status, 303, "{}", signed_in.describe());
    // ...and reset the count: two more failures are only failures again (without the reset,
    // the first would lock again, for twice as long).
    for _ in 0..2 {
        assert_wrong_password(&sign_in(&server, "ann@example.com", WRONG).await?);
    }
    assert_eq!(limit_trips(dir.path())?.len(), 1);
    let logs = server.stop()?;
    assert!(!logs.contains(PASSWORD) && !logs.contains(WRONG), "{logs}");
    Ok(())
}

#[tokio::test]
async fn one_address_guessing_across_accounts_is_locked() -> TestResult {
    let dir = temp_dir()?;
    let server = start(
        dir.path(),
        &[
            "--login-account-max-failures",
            "1000",
            "--login-address-max-failures",
            "3",
            "--limit-lock",
            "10m",
        ],
    )?;
    add_user(dir.path(), &[], "dan@example.com")?;
    assert_wrong_password(&sign_in(&server, "a@example.com", WRONG).await?);
    assert_wrong_password(&sign_in(&server, "b@example.com", WRONG).await?);
    assert_locked(&sign_in(&server, "c@example.com", WRONG).await?, 600);
    // Every account, even with its right password, waits out the address's lock.
    assert_locked(&sign_in(&server, "dan@example.com", PASSWORD).await?, 600);
    server.stop()?;
    Ok(())
}

async fn refresh_status(server: &Server, token: &str) -> Res<(u16, Option<u64>, Value)> {
    let response = server
        .http
        .post(server.url("/auth/refresh"))
        .json(&serde_json::json!({ "refresh_token": token }))
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok((
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    ))
}

/// A token of the right shape that the server does not know: the valid one, changed at its end.
fn mistyped(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    if let Some(last) = chars.last_mut() {
        *last = if *last == 'x' { 'y' } else { 'x' };
    }
    chars.into_iter().collect()
}

#[tokio::test]
async fn invalid_refresh_tokens_are_limited_but_valid_ones_still_work() -> TestResult {
    let dir = temp_dir()?;
    let server = start(
        dir.path(),
        &["--refresh-address-max-failures", "3", "--limit-lock", "10m"],
    )?;
    let token = crate::harness::user_with_token(dir.path(), "ci@example.com")?;
    let (status, _, _) = refresh_status(&server, "garbage").await?;
    assert_eq!(status, 400);
    let (status, _, _) = refresh_status(&server, &mistyped(&token)).await?;
    assert_eq!(status, 400);
    let (status, retry_after, body) = refresh_status(&server, &mistyped(&token)).await?;
    assert_eq!(status, 429, "{body}");
    assert!(
        retry_after.is_some_and(|s| (1..=600).contains(&s)),
        "{body}"
    );
    assert_eq!(body["error"], "slow_down", "{body}");
    // A valid token from the same address is neither refused nor counted.
    let (status, _, body) = refresh_status(&server, &token).await?;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = refresh_status(&server, "garbage").await?;
    assert_eq!(status, 429, "a success does not lift the address's lock");
    // The OAuth token endpoint shares the limit.
    let response = server
        .http
        .post(server.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "garbage"),
        ])
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().get("retry-after").is_some());
    let response = server
        .http
        .post(server.url("/oauth/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);

    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("prismd_limit_refusals_total{kind=\"refresh_address\"}"))
        .ok_or("no refusal metric")?;
    assert!(!refused.ends_with(" 0"), "{refused}");
    let logs = server.stop()?;
    assert!(!logs.contains(&token), "a token reached the log");
    let audit = admin_ok(dir.path(), &["audit", "--limit", "50"])?;
    assert!(audit.contains("refresh_address"), "{audit}");
    assert!(!audit.contains(&token) && !audit.contains(&mistyped(&token)));
    Ok(())
}

#[tokio::test]
async fn replicas_share_the_counters() -> TestResult {
    let db = FreshDatabase::create().await?;
    let outcome = replicas_share(&db.url).await;
    db.drop_now().await?;
    outcome
}

async fn replicas_share(url: &str) -> TestResult {
    let (dir_a, dir_b) = (temp_dir()?, temp_dir()?);
    let database = ["--database-url", url];
    let args = [
        "--database-url",
        url,
        "--issuer",
        "http://auth.replicas.test",
        "--login-account-max-failures",
        "3",
        "--refresh-address-max-failures",
        "2",
        "--limit-lock",
        "10m",
    ];
    let a = start(dir_a.path(), &args)?;
    let b = start(dir_b.path(), &args)?;
    add_user(dir_a.path(), &database, "eve@example.com")?;
    // Failures on A and B add up; the lock reached on B holds on A.
    assert_wrong_password(&sign_in(&a, "eve@example.com", WRONG).await?);
    assert_wrong_password(&sign_in(&b, "eve@example.com", WRONG).await?);
    assert_locked(&sign_in(&b, "eve@example.com", WRONG).await?, 600);
    assert_locked(&sign_in(&a, "eve@example.com", PASSWORD).await?, 600);

    let (status, _, _) = refresh_status(&a, "garbage").await?;
    assert_eq!(status, 400);
    let (status, retry_after, _) = refresh_status(&b, "garbage").await?;
    assert_eq!(status, 429);
    assert!(retry_after.is_some());
    let (status, _, _) = refresh_status(&a, "garbage").await?;
    assert_eq!(status, 429);
    a.stop()?;
    b.stop()?;
    Ok(())
}

#[tokio::test]
async fn device_page_and_browser_form_share_the_account_limit() -> TestResult {
    let dir = temp_dir()?;
    let server = start(
        dir.path(),
        &[
            "--login-account-max-failures",
            "2",
            "--login-address-max-failures",
            "1000",
            "--limit-lock",
            "10m",
        ],
    )?;
    add_user(dir.path(), &[], "dev@example.com")?;
    let started: Value = server
        .http
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
    assert_wrong_password(
        &device_sign_in(&server, user_code, "dev@example.com", WRONG, "limits-e2e").await?,
    );
    // The second failure, on the browser form, locks the account on both pages.
    assert_locked(&sign_in(&server, "dev@example.com", WRONG).await?, 600);
    let refused = device_sign_in(
        &server,
        user_code,
        "dev@example.com",
        PASSWORD,
        "limits-e2e",
    )
    .await?;
    assert_locked(&refused, 600);
    assert!(
        refused.body.contains("Too many failed sign-ins"),
        "{}",
        refused.describe()
    );
    server.stop()?;
    Ok(())
}

/// `/auth/refresh` with `token` and the request headers `headers`: the status.
async fn refresh_via(server: &Server, token: &str, headers: &[(&str, &str)]) -> Res<u16> {
    let mut request = server
        .http
        .post(server.url("/auth/refresh"))
        .json(&serde_json::json!({ "refresh_token": token }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Ok(request.send().await?.status().as_u16())
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_is_limited_apart_and_ipv6_by_its_64() -> TestResult {
    let dir = temp_dir()?;
    let server = start(
        dir.path(),
        &[
            "--refresh-address-max-failures",
            "3",
            "--limit-lock",
            "10m",
            "--trusted-proxies",
            "127.0.0.1/32,::1",
        ],
    )?;
    let token = crate::harness::user_with_token(dir.path(), "ci@example.com")?;
    let wrong = mistyped(&token);
    let xff = |address: &'static str| [("x-forwarded-for", address)];

    // One client behind the proxy trips its limit (its third failure is refused) ...
    for _ in 0..2 {
        assert_eq!(
            refresh_via(&server, &wrong, &xff("203.0.113.7")).await?,
            400
        );
    }
    assert_eq!(
        refresh_via(&server, &wrong, &xff("203.0.113.7")).await?,
        429
    );
    // ... also when it puts another address further left, which only it wrote ...
    assert_eq!(
        refresh_via(&server, &wrong, &xff("198.51.100.1, 203.0.113.7")).await?,
        429
    );
    // ... while another client behind the same proxy is not limited.
    assert_eq!(
        refresh_via(&server, &wrong, &xff("203.0.113.8")).await?,
        400
    );
    assert_eq!(
        refresh_via(&server, &token, &xff("203.0.113.8")).await?,
        200
    );

    // IPv6 clients count by their /64 (RFC 7239's Forwarded or X-Forwarded-For alike).
    let forwarded = [("forwarded", r#"for="[2001:db8:1:2::a]:4711";proto=https"#)];
    for _ in 0..2 {
        assert_eq!(refresh_via(&server, &wrong, &forwarded).await?, 400);
    }
    assert_eq!(
        refresh_via(&server, &wrong, &xff("2001:db8:1:2:ffff::b")).await?,
        429,
        "another address of the same /64"
    );
    assert_eq!(
        refresh_via(&server, &wrong, &xff("2001:db8:1:3::a")).await?,
        400,
        "another /64"
    );

    // The audit trail names the client the proxy saw, not the proxy: the address whose
    // failure tripped the lock (for the /64, its third failure came from ::b).
    let logs = server.stop()?;
    assert!(!logs.contains(&token));
    let audit = admin_ok(dir.path(), &["audit", "--action", "limit.tripped"])?;
    assert!(audit.contains(r#""address":"203.0.113.7""#), "{audit}");
    assert!(
        audit.contains(r#""address":"2001:db8:1:2:ffff::b""#),
        "{audit}"
    );
    assert!(!audit.contains("127.0.0.1"), "{audit}");
    assert!(!audit.contains("198.51.100.1"), "{audit}");
    Ok(())
}

#[tokio::test]
async fn forwarded_headers_are_ignored_without_trusted_proxies() -> TestResult {
    let dir = temp_dir()?;
    let server = start(
        dir.path(),
        &["--refresh-address-max-failures", "3", "--limit-lock", "10m"],
    )?;
    let token = crate::harness::user_with_token(dir.path(), "ci@example.com")?;
    let wrong = mistyped(&token);
    for address in ["203.0.113.7", "203.0.113.8"] {
        let status = refresh_via(&server, &wrong, &[("x-forwarded-for", address)]).await?;
        assert_eq!(status, 400, "{address}");
    }
    // Whatever address a header claims, it is the same client, the connection's: its third
    // failure trips the limit.
    for headers in [
        [("x-forwarded-for", "203.0.113.9")],
        [("forwarded", "for=203.0.113.10")],
    ] {
        assert_eq!(refresh_via(&server, &wrong, &headers).await?, 429);
    }
    server.stop()?;
    let audit = admin_ok(dir.path(), &["audit", "--action", "limit.tripped"])?;
    assert!(audit.contains("127.0.0.1"), "{audit}");
    assert!(!audit.contains("203.0.113."), "{audit}");
    Ok(())
}

#[tokio::test]
async fn api_callers_are_rate_limited_each_on_their_own() -> TestResult {
    let dir = temp_dir()?;
    // One request a second: a burst of twenty at once cannot all pass, however slow this
    // machine is, unless they took twenty seconds.
    let server = start(dir.path(), &["--api-rate-limit", "1"])?;
    let busy = server
        .access_token(&crate::harness::user_with_token(
            dir.path(),
            "busy@example.com",
        )?)
        .await?;
    let quiet = server
        .access_token(&crate::harness::user_with_token(
            dir.path(),
            "quiet@example.com",
        )?)
        .await?;
    let query = "{ authenticatedUser { email } }";
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request = server
            .http
            .post(server.url("/api"))
            .header("authorization", format!("Bearer {busy}"))
            .json(&serde_json::json!({ "query": query }));
        burst.spawn(async move {
            let answer = request.send().await?;
            let status = answer.status().as_u16();
            Ok::<_, reqwest::Error>((status, answer.json::<Value>().await?))
        });
    }
    let mut refused = 0;
    while let Some(answer) = burst.join_next().await {
        let (status, body) = answer??;
        match status {
            200 => assert_eq!(
                body["data"]["authenticatedUser"]["email"], "busy@example.com",
                "{body}"
            ),
            429 => {
                refused += 1;
                assert_eq!(body["error"], "slow_down", "{body}");
                assert!(
                    body["error_description"]
                        .as_str()
                        .is_some_and(|d| d.contains("--api-rate-limit")),
                    "{body}"
                );
            }
            other => return Err(format!("unexpected {other}: {body}").into()),
        }
    }
    assert!(
        refused > 0,
        "twenty requests at once over a limit of one a second"
    );
    assert_eq!(
        scraped_value(&server.http, &server.base, "prismd_api_rate_limited_total").await?,
        f64::from(refused)
    );

    // Retry-After says when to come back, and is at least a second.
    let refusal = server
        .http
        .post(server.url("/api"))
        .header("authorization", format!("Bearer {busy}"))
        .json(&serde_json::json!({ "query": query }))
        .send()
        .await?;
    let wait = if refusal.status().as_u16() == 429 {
        let seconds: u64 = refusal
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or("429 without Retry-After")?;
        assert!(seconds >= 1);
        seconds
    } else {
        0
    };

    // Another caller has an allowance of its own.
    let (status, body) = crate::harness::api(&server, &quiet, query, Value::Null).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["authenticatedUser"]["email"],
        "quiet@example.com"
    );

    // After the wait, the busy caller is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let mut served = false;
    for _ in 0..50 {
        let (status, _) = crate::harness::api(&server, &busy, query, Value::Null).await?;
        if status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served, "the allowance comes back");
    server.stop()?;
    Ok(())
}

/// Signs in from a browser that carries `device` (a `prism_device` cookie value), if any.
async fn sign_in_on(
    server: &Server,
    device: Option<&str>,
    email: &str,
    password: &str,
) -> Res<Page> {
    let carried = device.map(|value| format!("prism_device={value}"));
    crate::harness::browser_sign_in_carrying(
        server,
        &crate::harness::authorize_query(),
        email,
        password,
        "limits-e2e",
        carried.as_deref(),
    )
    .await
}

#[tokio::test]
async fn a_locked_account_still_signs_in_from_its_own_browser() -> TestResult {
    let dir = temp_dir()?;
    let server = start(
        dir.path(),
        &[
            "--login-account-max-failures",
            "3",
            "--login-address-max-failures",
            "1000",
            "--limit-lock",
            "10m",
            "--limit-max-lock",
            "10m",
        ],
    )?;
    add_user(dir.path(), &[], "ann@example.com")?;
    add_user(dir.path(), &[], "bob@example.com")?;
    // Ann signs in once from her browser: it is trusted from then on.
    let first = sign_in_on(&server, None, "ann@example.com", PASSWORD).await?;
    assert_eq!(first.status, 303, "{}", first.describe());
    let ann_device = first.cookie("prism_device").ok_or("no device cookie")?;
    let bob_device = sign_in_on(&server, None, "bob@example.com", PASSWORD)
        .await?
        .cookie("prism_device")
        .ok_or("no device cookie for Bob")?;
    // A failed sign-in sets none.
    assert!(
        sign_in_on(&server, None, "ann@example.com", WRONG)
            .await?
            .cookie("prism_device")
            .is_none()
    );

    // Someone else locks Ann's account with wrong passwords (the one above was the first).
    for _ in 0..2 {
        let _ = sign_in_on(&server, None, "ann@example.com", WRONG).await?;
    }
    assert_locked(
        &sign_in_on(&server, None, "ann@example.com", PASSWORD).await?,
        600,
    );
    // Another person's cookie, and a tampered or made-up one, trust nothing: still locked.
    let mut tampered = ann_device.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered)?;
    for other in [bob_device.as_str(), tampered.as_str(), "not.a.cookie"] {
        assert_locked(
            &sign_in_on(&server, Some(other), "ann@example.com", PASSWORD).await?,
            600,
        );
    }

    // Ann's own browser signs in despite the lock, and gets a fresh cookie.
    let own = sign_in_on(&server, Some(&ann_device), "ann@example.com", PASSWORD).await?;
    assert_eq!(own.status, 303, "{}", own.describe());
    let renewed = own.cookie("prism_device").ok_or("no renewed cookie")?;
    // The account stays locked for everyone else.
    assert_locked(
        &sign_in_on(&server, None, "ann@example.com", PASSWORD).await?,
        600,
    );

    // A trusted browser has a count of its own: wrong passwords from it lock it, not more.
    for _ in 0..2 {
        assert_wrong_password(
            &sign_in_on(&server, Some(&renewed), "ann@example.com", WRONG).await?,
        );
    }
    assert_locked(
        &sign_in_on(&server, Some(&renewed), "ann@example.com", WRONG).await?,
        600,
    );
    assert_locked(
        &sign_in_on(&server, Some(&renewed), "ann@example.com", PASSWORD).await?,
        600,
    );

    let trips = limit_trips(dir.path())?;
    let limits: Vec<&str> = trips
        .iter()
        .filter_map(|trip| trip["detail"]["limit"].as_str())
        .collect();
    assert!(limits.contains(&"login_account"), "{trips:?}");
    assert!(limits.contains(&"login_device"), "{trips:?}");
    let logs = server.stop()?;
    assert!(
        !logs.contains(&ann_device),
        "the device cookie is never logged"
    );
    Ok(())
}
