//! The device authorization grant (RFC 8628) end to end over HTTP: the test is both the
//! polling machine and the person approving the code in a browser.

use serde_json::Value;

use crate::harness::{Server, TestResult, prismd_with_stdin, temp_dir};

const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const PASSWORD: &str = "device test password";

fn http() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

async fn start(
    server: &Server,
    http: &reqwest::Client,
) -> Result<Value, Box<dyn std::error::Error>> {
    let response = http
        .post(server.url("/oauth/device/code"))
        .form(&[
            ("client_id", "prism-cli"),
            ("scope", "openid profile email offline_access"),
        ])
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    Ok(response.json().await?)
}

async fn poll(
    server: &Server,
    http: &reqwest::Client,
    device_code: &str,
) -> Result<(u16, Value), Box<dyn std::error::Error>> {
    let response = http
        .post(server.url("/oauth/token"))
        .form(&[
            ("grant_type", GRANT),
            ("device_code", device_code),
            ("client_id", "prism-cli"),
        ])
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

/// The person's side: open the verification page, then submit the code with `action`.
async fn decide(
    server: &Server,
    http: &reqwest::Client,
    user_code: &str,
    email: &str,
    password: &str,
    action: &str,
) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let page = http
        .get(server.url("/device"))
        .query(&[("user_code", user_code)])
        .send()
        .await?;
    assert_eq!(page.status().as_u16(), 200);
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("prism_device_csrf="))
        .and_then(|c| c.split(';').next())
        .ok_or("no CSRF cookie")?
        .to_owned();
    let html = page.text().await?;
    assert!(
        html.contains(&format!("value=\"{user_code}\"")),
        "the code is filled in from the link"
    );
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or("no csrf")?
        .to_owned();
    let response = http
        .post(server.url("/device"))
        .header("cookie", cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("user_code", user_code),
            ("email", email),
            ("password", password),
            ("action", action),
        ])
        .send()
        .await?;
    Ok((response.status().as_u16(), response.text().await?))
}

fn user(dir: &std::path::Path) -> TestResult {
    let output = prismd_with_stdin(
        dir,
        &[
            "users",
            "add",
            "--email",
            "dev@example.com",
            "--role",
            "Integrator",
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    )?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn device_login_end_to_end() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    user(dir.path())?;
    let http = http()?;

    let metadata: Value = http
        .get(server.url("/.well-known/oauth-authorization-server"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        metadata["device_authorization_endpoint"],
        server.url("/oauth/device/code").as_str()
    );
    assert!(
        metadata["grant_types_supported"]
            .as_array()
            .is_some_and(|g| g.iter().any(|x| x == GRANT))
    );

    let started = start(&server, &http).await?;
    let device_code = started["device_code"]
        .as_str()
        .ok_or("device_code")?
        .to_owned();
    let user_code = started["user_code"].as_str().ok_or("user_code")?.to_owned();
    assert_eq!(user_code.len(), 9, "XXXX-XXXX: {user_code}");
    assert_eq!(started["verification_uri"], server.url("/device").as_str());
    assert_eq!(
        started["verification_uri_complete"],
        format!("{}?user_code={user_code}", server.url("/device")).as_str()
    );
    assert_eq!(
        (started["expires_in"].as_i64(), started["interval"].as_i64()),
        (Some(600), Some(5))
    );

    // Before approval: pending; polling again at once: slow down.
    let (status, body) = poll(&server, &http, &device_code).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("authorization_pending")),
        "{body}"
    );
    let (status, body) = poll(&server, &http, &device_code).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("slow_down")),
        "{body}"
    );

    // A wrong password does not approve; the right one does (the code typed in lower case).
    let (_, page) = decide(
        &server,
        &http,
        &user_code,
        "dev@example.com",
        "wrong password",
        "approve",
    )
    .await?;
    assert!(page.contains("Wrong email or password."));
    let (status, page) = decide(
        &server,
        &http,
        &user_code.to_lowercase(),
        "dev@example.com",
        PASSWORD,
        "approve",
    )
    .await?;
    assert_eq!(status, 200);
    assert!(page.contains("Device signed in"), "{page}");

    let (status, tokens) = poll(&server, &http, &device_code).await?;
    assert_eq!(status, 200, "{tokens}");
    let refresh = tokens["refresh_token"].as_str().ok_or("refresh_token")?;
    let access = tokens["access_token"].as_str().ok_or("access_token")?;
    assert_eq!(server.whoami(access).await?, Ok("dev@example.com".into()));
    server.access_token(refresh).await?;
    // The device code works once.
    let (status, body) = poll(&server, &http, &device_code).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    // And the used user code cannot be approved again.
    let (_, page) = decide(
        &server,
        &http,
        &user_code,
        "dev@example.com",
        PASSWORD,
        "approve",
    )
    .await?;
    assert!(page.contains("not valid or has expired"));
    Ok(())
}

#[tokio::test]
async fn device_login_denied_expired_and_unknown() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    user(dir.path())?;
    let http = http()?;

    let denied = start(&server, &http).await?;
    let (status, page) = decide(
        &server,
        &http,
        denied["user_code"].as_str().ok_or("code")?,
        "dev@example.com",
        PASSWORD,
        "deny",
    )
    .await?;
    assert_eq!(status, 200);
    assert!(page.contains("Sign-in denied"));
    let (status, body) = poll(
        &server,
        &http,
        denied["device_code"].as_str().ok_or("code")?,
    )
    .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("access_denied")),
        "{body}"
    );

    let expiring = start(&server, &http).await?;
    let url = format!("sqlite://{}", dir.path().join("prismd.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await?;
    sqlx::query("UPDATE device_codes SET expires_at = 0")
        .execute(&pool)
        .await?;
    pool.close().await;
    let (status, body) = poll(
        &server,
        &http,
        expiring["device_code"].as_str().ok_or("code")?,
    )
    .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("expired_token")),
        "{body}"
    );

    let (status, body) = poll(&server, &http, "not-a-device-code").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let response = http
        .post(server.url("/oauth/device/code"))
        .form(&[("client_id", "evil")])
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await?;
    assert_eq!(body["error"], "invalid_client");
    Ok(())
}

#[tokio::test]
async fn guessing_user_codes_is_rate_limited() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    user(dir.path())?;
    let http = http()?;
    let real = start(&server, &http).await?;
    let mut last = 0;
    for _ in 0..11 {
        let (status, page) = decide(
            &server,
            &http,
            "BCDF-GHJK",
            "dev@example.com",
            PASSWORD,
            "approve",
        )
        .await?;
        last = status;
        if status == 429 {
            assert!(page.contains("Too many wrong codes"));
            break;
        }
        assert!(page.contains("not valid or has expired"), "{page}");
    }
    assert_eq!(
        last, 429,
        "the 11th wrong code from one address must be refused"
    );
    // Even the right code is refused while the address is blocked.
    let (status, _) = decide(
        &server,
        &http,
        real["user_code"].as_str().ok_or("code")?,
        "dev@example.com",
        PASSWORD,
        "approve",
    )
    .await?;
    assert_eq!(status, 429);
    Ok(())
}

/// The person's side with a browser session (`prism_session=...`): no password typed.
async fn decide_signed_in(
    server: &Server,
    http: &reqwest::Client,
    user_code: &str,
    session: &str,
    action: &str,
) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let page = http
        .get(server.url("/device"))
        .query(&[("user_code", user_code)])
        .header("cookie", session)
        .send()
        .await?;
    assert_eq!(page.status().as_u16(), 200);
    let csrf_cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("prism_device_csrf="))
        .and_then(|c| c.split(';').next())
        .ok_or("no CSRF cookie")?
        .to_owned();
    let html = page.text().await?;
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or("no csrf")?
        .to_owned();
    let response = http
        .post(server.url("/device"))
        .header("cookie", format!("{csrf_cookie}; {session}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("user_code", user_code),
            ("email", ""),
            ("password", ""),
            ("action", action),
        ])
        .send()
        .await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// The audit rows of `action`, as `prismd audit` prints them.
fn audited(dir: &std::path::Path, action: &str) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let printed = crate::harness::admin_ok(dir, &["audit", "--action", action])?;
    printed
        .lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

#[tokio::test]
async fn device_decisions_and_logouts_are_audited_also_through_a_browser_session() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    user(dir.path())?;
    let http = http()?;
    let signed_in =
        crate::harness::browser_sign_in(&server, "dev@example.com", PASSWORD, "device-e2e/1")
            .await?;
    let session = format!(
        "prism_session={}",
        signed_in
            .cookie("prism_session")
            .ok_or("no session cookie")?
    );

    // Approved with the browser session (no password typed), then by password, then denied.
    let first = start(&server, &http).await?;
    let code = first["user_code"].as_str().ok_or("user_code")?;
    let (status, page) = decide_signed_in(&server, &http, code, &session, "approve").await?;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Device signed in"), "{page}");
    let second = start(&server, &http).await?;
    let code = second["user_code"].as_str().ok_or("user_code")?;
    let (status, page) =
        decide(&server, &http, code, "dev@example.com", PASSWORD, "approve").await?;
    assert!(status == 200 && page.contains("Device signed in"), "{page}");
    let third = start(&server, &http).await?;
    let code = third["user_code"].as_str().ok_or("user_code")?;
    let (status, page) = decide_signed_in(&server, &http, code, &session, "deny").await?;
    assert!(status == 200 && page.contains("Sign-in denied"), "{page}");
    // An unknown code decides nothing and audits nothing.
    let (_, page) = decide_signed_in(&server, &http, "BCDF-GHJK", &session, "approve").await?;
    assert!(page.contains("not valid"), "{page}");

    let approved = audited(dir.path(), "device.approved")?;
    let ways: Vec<&str> = approved
        .iter()
        .filter_map(|row| row["detail"]["signed_in_by"].as_str())
        .collect();
    assert_eq!(
        ways,
        ["password", "browser_session"],
        "newest first: {approved:?}"
    );
    assert!(
        approved.iter().all(|row| row["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("identity:"))
            && row["subjectUserId"].is_string()
            && row["orgId"].is_string()),
        "{approved:?}"
    );
    let denied = audited(dir.path(), "device.denied")?;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["detail"]["signed_in_by"], "browser_session");

    // Signing out ends the session, audited; a logout without one audits nothing.
    let signed_out = crate::harness::sign_out(&server, &http, &session, None).await?;
    assert_eq!(signed_out.status().as_u16(), 200);
    for cookie in [None, Some(session.as_str())] {
        let mut request = http.get(server.url("/logout"));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        assert_eq!(request.send().await?.status().as_u16(), 200);
    }
    let logouts = audited(dir.path(), "logout")?;
    assert_eq!(logouts.len(), 1, "{logouts:?}");
    assert_eq!(logouts[0]["detail"]["reason"], "logout");
    assert!(
        logouts[0]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("identity:"))
    );
    // The session is gone: deciding with it now asks for a password.
    let fourth = start(&server, &http).await?;
    let code = fourth["user_code"].as_str().ok_or("user_code")?;
    let (_, page) = decide_signed_in(&server, &http, code, &session, "approve").await?;
    assert!(!page.contains("Device signed in"), "{page}");
    server.stop()?;
    Ok(())
}

/// `POST /oauth/device/code` with extra headers: status, `Retry-After`, body.
async fn start_raw(
    server: &Server,
    http: &reqwest::Client,
    headers: &[(&str, &str)],
) -> Result<(u16, Option<String>, Value), Box<dyn std::error::Error>> {
    let mut request = http
        .post(server.url("/oauth/device/code"))
        .form(&[("client_id", "prism-cli")]);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((status, retry_after, response.json().await?))
}

#[tokio::test]
async fn device_logins_are_capped_on_the_server_and_per_address() -> TestResult {
    let dir = temp_dir()?;
    let server = crate::harness::Server::start_with(
        dir.path(),
        crate::harness::Options {
            args: ["--device-codes-max", "2", "--trusted-proxies", "127.0.0.1"]
                .map(str::to_owned)
                .to_vec(),
            ..crate::harness::Options::default()
        },
    )?;
    user(dir.path())?;
    let http = http()?;

    // Two pending at once, then 429 until one is decided.
    let first = start(&server, &http).await?;
    start(&server, &http).await?;
    let (status, retry_after, body) = start_raw(&server, &http, &[]).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("slow_down")),
        "{body}"
    );
    assert_eq!(retry_after.as_deref(), Some("60"));
    let code = first["user_code"].as_str().ok_or("user_code")?;
    let (status, page) = decide(&server, &http, code, "dev@example.com", PASSWORD, "deny").await?;
    assert!(status == 200 && page.contains("Sign-in denied"), "{page}");
    let (status, _, body) = start_raw(&server, &http, &[]).await?;
    assert_eq!(status, 200, "{body}");
    server.stop()?;

    // Per address (every request counted, served up to the limit): 30 from one client behind
    // the proxy, then 429; another client still starts.
    let dir = temp_dir()?;
    let server = crate::harness::Server::start_with(
        dir.path(),
        crate::harness::Options {
            args: ["--trusted-proxies", "127.0.0.1"]
                .map(str::to_owned)
                .to_vec(),
            ..crate::harness::Options::default()
        },
    )?;
    let one = [("x-forwarded-for", "203.0.113.7")];
    for n in 1..=30 {
        let (status, _, body) = start_raw(&server, &http, &one).await?;
        assert_eq!(status, 200, "start {n}: {body}");
    }
    let (status, retry_after, body) = start_raw(&server, &http, &one).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("slow_down")),
        "{body}"
    );
    assert!(retry_after.is_some());
    let (status, _, body) =
        start_raw(&server, &http, &[("x-forwarded-for", "203.0.113.8")]).await?;
    assert_eq!(status, 200, "{body}");
    server.stop()?;
    Ok(())
}
