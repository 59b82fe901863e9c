//! First start, health, metadata, JWKS, the guarantee that no secret reaches the log, and that
//! the harness hands back the complete log.

use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::harness::{
    Options, Pkce, REDIRECT_URI, Server, TestResult, admin_ok, authorize_query_for, browser,
    browser_sign_in_with, device_sign_in, prismd_with_stdin, query_param, redeem_code, set_cookie,
    temp_dir, user_with_token,
};

#[tokio::test]
async fn first_start_creates_an_owner_once_with_a_private_password() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start_with(
        dir.path(),
        Options {
            args: vec![
                "--owner-email".into(),
                "boss@example.com".into(),
                "--org-name".into(),
                "Acme".into(),
            ],
            ..Options::default()
        },
    )?;
    let password_file = dir.path().join(prismd::INITIAL_PASSWORD_FILE);
    let password = std::fs::read_to_string(&password_file)?.trim().to_owned();
    assert!(password.len() >= 20, "generated password is too short");
    assert_eq!(
        std::fs::metadata(&password_file)?.permissions().mode() & 0o777,
        0o600
    );
    let logs = server.stop()?;
    assert!(logs.contains("first start"), "{logs}");
    assert!(logs.contains("boss@example.com"));
    assert!(!logs.contains(&password), "the password must not be logged");

    let listed: Value = serde_json::from_str(&admin_ok(dir.path(), &["users", "list", "--json"])?)?;
    assert_eq!(listed[0]["email"], "boss@example.com");
    assert_eq!(listed[0]["role"], "Owner");

    // A second start neither re-creates the owner nor touches the password.
    let server = Server::start(dir.path())?;
    let logs = server.stop()?;
    assert!(!logs.contains("first start"));
    assert_eq!(std::fs::read_to_string(&password_file)?.trim(), password);

    // Another install gets another password.
    let other = temp_dir()?;
    Server::start(other.path())?.stop()?;
    assert_ne!(
        std::fs::read_to_string(other.path().join(prismd::INITIAL_PASSWORD_FILE))?.trim(),
        password
    );
    Ok(())
}

/// `prismd users set-password` for `email`, the password on stdin; its stderr.
fn set_password(data: &std::path::Path, email: &str, password: &str) -> Res<String> {
    let output = prismd_with_stdin(
        data,
        &["users", "set-password", "--email", email],
        &format!("{password}\n"),
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(format!("set-password failed: {stderr}").into());
    }
    Ok(stderr)
}

#[tokio::test]
async fn the_generated_password_file_goes_once_the_owner_has_their_own() -> TestResult {
    // The operator sets the Owner's password: the file goes at once, and it says so. Another
    // member's new password leaves it alone.
    let dir = temp_dir()?;
    let data = dir.path();
    Server::start(data)?.stop()?;
    let file = data.join(prismd::INITIAL_PASSWORD_FILE);
    assert!(file.exists());
    user_with_token(data, "bob@example.com")?;
    let said = set_password(data, "bob@example.com", "bob's own passphrase")?;
    assert!(!said.contains("Removed"), "{said}");
    assert!(
        file.exists(),
        "another member's password took the Owner's file"
    );
    let said = set_password(data, "owner@localhost", "the owner's own passphrase")?;
    assert!(
        said.contains("Removed") && said.contains("no longer works"),
        "{said}"
    );
    assert!(!file.exists());

    // Set some other way (here: while the file was elsewhere, as when another replica's
    // browser page set it): the server finds out at its start, and says so in its log.
    let dir = temp_dir()?;
    let data = dir.path();
    Server::start(data)?.stop()?;
    let file = data.join(prismd::INITIAL_PASSWORD_FILE);
    let aside = data.join("aside");
    std::fs::rename(&file, &aside)?;
    set_password(data, "owner@localhost", "set elsewhere, long enough")?;
    std::fs::rename(&aside, &file)?;
    let server = Server::start_with(
        data,
        Options {
            args: vec!["--cleanup-interval".into(), "1s".into()],
            ..Options::default()
        },
    )?;
    let deadline = std::time::Instant::now() + crate::harness::CHANGE_REACH_BOUND;
    while file.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let logs = server.stop()?;
    assert!(
        !file.exists(),
        "the server kept a password file that no longer works"
    );
    assert!(
        logs.contains("the first Owner has set a password of their own"),
        "{logs}"
    );
    assert!(
        !logs.contains("set elsewhere"),
        "a password reached the log"
    );
    Ok(())
}

#[tokio::test]
async fn health_metadata_and_jwks() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    for path in ["/healthz", "/readyz"] {
        let response = server.http.get(server.url(path)).send().await?;
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let meta: Value = server
            .http
            .get(server.url(path))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(meta["issuer"], server.base.as_str());
        assert_eq!(meta["token_endpoint"], server.url("/oauth/token").as_str());
        assert_eq!(
            meta["jwks_uri"],
            server.url("/.well-known/jwks.json").as_str()
        );
    }
    let jwks: Value = server
        .http
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await?
        .json()
        .await?;
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    assert!(
        key.get("d").is_none(),
        "the JWKS must not carry the private key"
    );

    // A token verifies with the published key alone, as a third-party resource server would.
    let refresh = user_with_token(dir.path(), "ci@example.com")?;
    let access = server.access_token(&refresh).await?;
    let mut parts = access.split('.');
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().ok_or("h")?)?)?;
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["kid"], key["kid"]);
    let (signed, signature) = access.rsplit_once('.').ok_or("sig")?;
    let public = URL_SAFE_NO_PAD.decode(key["x"].as_str().ok_or("x")?)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(signature)?)
        .map_err(|_| "signature does not verify with the JWKS key")?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().ok_or("p")?)?)?;
    assert_eq!(claims["iss"], server.base.as_str());
    assert_eq!(claims["aud"], format!("{}/api", server.base).as_str());
    assert_eq!(claims["client_id"], "prism-cli");
    Ok(())
}

/// `Server::stop` hands back the whole log, through the server's last line ("stopped", written
/// after everything else has shut down), not what its reader thread happened to have taken.
#[tokio::test]
async fn stop_returns_the_log_through_its_last_line() -> TestResult {
    let dir = temp_dir()?;
    let logs = Server::start(dir.path())?.stop()?;
    let last = logs.lines().last().unwrap_or_default();
    assert!(last.ends_with("stopped"), "the log ends early:\n{logs}");
    Ok(())
}

#[tokio::test]
async fn no_secret_reaches_the_text_log_at_trace_level() -> TestResult {
    no_secret_reaches_the_log_at_trace_level("text").await
}

#[tokio::test]
async fn no_secret_reaches_the_json_log_at_trace_level() -> TestResult {
    no_secret_reaches_the_log_at_trace_level("json").await
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// A secret the test sent the server or was given by it, named for the failure message.
type Secret = (&'static str, String);

/// The string field `name` of a JSON answer.
fn field(body: &Value, name: &str) -> Res<String> {
    Ok(body[name]
        .as_str()
        .ok_or_else(|| format!("no {name} in {body}"))?
        .to_owned())
}

/// Every secret the server handles goes through it for real, at `PRISMD_LOG=trace` in the
/// given log format: a browser login (password, the sign-in form's and the consent page's
/// CSRF values, authorization code, `code_verifier`, session cookie), the device flow (device
/// and user codes, the device page's CSRF value), an invitation (its token, CSRF value and the
/// password set through it), refresh and access tokens on every endpoint that takes them;
/// then the complete log must contain none of them.
async fn no_secret_reaches_the_log_at_trace_level(format: &str) -> TestResult {
    let dir = temp_dir()?;
    // With the signing keys encrypted at rest, so that the key encryption key is checked too.
    let key_encryption_key = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    let server = Server::start_with(
        dir.path(),
        Options {
            env: vec![
                ("PRISMD_LOG".into(), "trace".into()),
                ("PRISMD_LOG_FORMAT".into(), format.into()),
                (
                    "PRISMD_KEY_ENCRYPTION_KEY".into(),
                    key_encryption_key.into(),
                ),
            ],
            ..Options::default()
        },
    )?;
    let mut secrets: Vec<Secret> = vec![
        ("key encryption key", key_encryption_key.into()),
        // Its bytes in hex (the key above is base64 of ab cd ef 12 34 56 78 90 ...).
        ("key encryption key in hex", "abcdef1234567890abcdef".into()),
    ];
    let password = "correct horse battery staple";
    let output = prismd_with_stdin(
        dir.path(),
        &[
            "users",
            "add",
            "--email",
            "admin@example.com",
            "--role",
            "Admin",
            "--password-stdin",
        ],
        &format!("{password}\n"),
    )?;
    assert!(output.status.success());
    secrets.push(("password", password.into()));

    let access = browser_login(&server, password, &mut secrets).await?;
    let invited_password = invitation(&server, &access, &mut secrets).await?;
    device_login(&server, &invited_password, &mut secrets).await?;
    let minted = admin_ok(
        dir.path(),
        &["tokens", "create", "--email", "admin@example.com"],
    )?;
    secrets.push(("minted refresh token", minted.clone()));
    use_and_revoke_tokens(&server, &mut secrets).await?;
    let logs = server.stop()?;

    check_log_format(&logs, format);
    // Each as sent, and as a form body carries it (a password's spaces become `+`).
    let found: std::collections::BTreeSet<&str> = secrets
        .iter()
        .filter(|(_, secret)| {
            let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
            logs.contains(secret.as_str()) || logs.contains(&encoded)
        })
        .map(|(what, _)| *what)
        .collect();
    assert!(
        found.is_empty(),
        "in the {format} log at trace level: {found:?}"
    );
    assert!(
        !logs.to_lowercase().contains("authorization: bearer"),
        "an Authorization header was logged"
    );
    Ok(())
}

/// The log really is in `format`, below the info level (the workspace logs nothing at
/// trace level itself; its dependencies' debug lines show the filter took) and has its
/// access log: otherwise a clean log would prove nothing.
fn check_log_format(logs: &str, format: &str) {
    let (verbose, access) = match format {
        "json" => {
            for line in logs.lines() {
                let parsed: Result<Value, _> = serde_json::from_str(line);
                assert!(
                    parsed.is_ok_and(|l| l.is_object()),
                    "not a JSON line: {line}"
                );
            }
            (
                ["\"level\":\"DEBUG\"", "\"level\":\"TRACE\""],
                "\"route\":\"/auth/refresh\"",
            )
        }
        _ => {
            assert!(!logs.starts_with('{'), "a JSON log: {logs}");
            ([" DEBUG ", " TRACE "], "route=\"/auth/refresh\"")
        }
    };
    assert!(
        verbose.iter().any(|level| logs.contains(level)),
        "no line below the info level in: {logs}"
    );
    assert!(logs.contains(access), "no access log line in: {logs}");
}

/// Signs in through the browser form with PKCE, redeems the code, shows the browser session
/// cookie to `/authorize` and `/logout`; returns the access token.
async fn browser_login(server: &Server, password: &str, secrets: &mut Vec<Secret>) -> Res<String> {
    let pkce = Pkce::new()?;
    let query = authorize_query_for(&pkce.challenge);
    let page =
        browser_sign_in_with(server, &query, "admin@example.com", password, "log-e2e").await?;
    assert_eq!(page.status, 303, "sign-in failed: {}", page.body);
    let code = page.location_param("code").ok_or("no code")?;
    let session = page.cookie("prism_session").ok_or("no session cookie")?;
    let (status, tokens) = redeem_code(server, &code, &pkce.verifier, REDIRECT_URI).await?;
    assert_eq!(status, 200, "{tokens}");
    let http = browser("log-e2e")?;
    let cookie = format!("prism_session={session}");
    let consent = http
        .get(server.url("/authorize"))
        .query(&query)
        .header("cookie", &cookie)
        .send()
        .await?;
    let consent_csrf = set_cookie(consent.headers(), "prism_csrf").ok_or("no CSRF cookie")?;
    assert!(consent.text().await?.contains("Continue as"));
    let logout = http
        .get(server.url("/logout"))
        .header("cookie", &cookie)
        .send()
        .await?;
    assert_eq!(logout.status().as_u16(), 200);
    let access = field(&tokens, "access_token")?;
    // Real secrets, each its own: an empty or repeated value would make the search weaker.
    assert_eq!(page.csrf.len(), 43, "{}", page.csrf);
    assert_eq!(consent_csrf.len(), 43, "{consent_csrf}");
    assert_ne!(page.csrf, consent_csrf);
    secrets.extend([
        ("authorization code", code),
        ("code_verifier", pkce.verifier),
        ("browser session cookie", session),
        ("sign-in form's CSRF cookie and field", page.csrf),
        ("consent page's CSRF cookie", consent_csrf),
        (
            "browser login refresh token",
            field(&tokens, "refresh_token")?,
        ),
        ("browser login access token", access.clone()),
        ("ID token", field(&tokens, "id_token")?),
    ]);
    Ok(access)
}

/// The Admin behind `access` invites a user through GraphQL, who sets a password through
/// the invitation page; returns that password.
async fn invitation(server: &Server, access: &str, secrets: &mut Vec<Secret>) -> Res<String> {
    let (_, _, roles) = server
        .graphql(Some(access), "{ organizationRoles { id name } }")
        .await?;
    let integrator = roles["data"]["organizationRoles"]
        .as_array()
        .and_then(|roles| roles.iter().find(|role| role["name"] == "Integrator"))
        .and_then(|role| role["id"].as_str())
        .ok_or_else(|| format!("no Integrator role: {roles}"))?;
    let mutation = format!(
        "mutation {{ createOrganizationUser(input: {{email: \"invited@example.com\", role: \"{integrator}\"}}) {{ invitationUrl }} }}"
    );
    let (_, _, created) = server.graphql(Some(access), &mutation).await?;
    let link = created["data"]["createOrganizationUser"]["invitationUrl"]
        .as_str()
        .ok_or_else(|| format!("no invitation: {created}"))?;
    let token =
        query_param(&url::Url::parse(link)?, "token").ok_or("no token in the invitation")?;

    let http = browser("log-e2e")?;
    let page = http.get(link).send().await?;
    let csrf = set_cookie(page.headers(), "prism_invite_csrf").ok_or("no CSRF cookie")?;
    let password = "invited person's own password";
    let done = http
        .post(server.url("/invite"))
        .header("cookie", format!("prism_invite_csrf={csrf}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("token", token.as_str()),
            ("password", password),
            ("confirm", password),
        ])
        .send()
        .await?;
    assert!(done.text().await?.contains("Password set"));
    secrets.extend([
        ("invitation token", token),
        ("invitation CSRF cookie", csrf),
        ("password set through the invitation", password.into()),
    ]);
    Ok(password.into())
}

/// The device flow, approved by the invited user with `password`.
async fn device_login(server: &Server, password: &str, secrets: &mut Vec<Secret>) -> TestResult {
    let (status, started) = server
        .post_form(
            "/oauth/device/code",
            &[
                ("client_id", "prism-cli"),
                ("scope", "openid profile email offline_access"),
            ],
        )
        .await?;
    assert_eq!(status, 200, "{started}");
    let device_code = field(&started, "device_code")?;
    let user_code = field(&started, "user_code")?;
    let approved = device_sign_in(
        server,
        &user_code,
        "invited@example.com",
        password,
        "log-e2e",
    )
    .await?;
    assert!(
        approved.body.contains("Device signed in"),
        "{}",
        approved.body
    );
    let (status, tokens) = server
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &device_code),
                ("client_id", "prism-cli"),
            ],
        )
        .await?;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(approved.csrf.len(), 43, "{}", approved.csrf);
    secrets.extend([
        ("device page's CSRF cookie and field", approved.csrf),
        ("device code", device_code),
        ("user code without its dash", user_code.replace('-', "")),
        ("user code", user_code),
        ("device refresh token", field(&tokens, "refresh_token")?),
        ("device access token", field(&tokens, "access_token")?),
    ]);
    Ok(())
}

/// Each refresh token collected so far is exchanged at both refresh endpoints, each access
/// token is used at `/api`, then everything is revoked and used again (the refusals log
/// too); plus an unknown refresh token and a forged access token.
async fn use_and_revoke_tokens(server: &Server, secrets: &mut Vec<Secret>) -> TestResult {
    let refresh_tokens: Vec<String> = secrets
        .iter()
        .filter(|(what, _)| what.ends_with("refresh token"))
        .map(|(_, token)| token.clone())
        .collect();
    let mut access_tokens = Vec::new();
    for refresh in &refresh_tokens {
        access_tokens.push(server.access_token(refresh).await?);
        let (status, body) = server
            .post_form(
                "/oauth/token",
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", "prism-cli"),
                    ("refresh_token", refresh),
                ],
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        access_tokens.push(field(&body, "access_token")?);
    }
    for access in &access_tokens {
        assert!(server.whoami(access).await?.is_ok());
    }
    // One through each revocation endpoint; then every token is refused.
    let (status, _) = server.revoke(&refresh_tokens[0]).await?;
    assert_eq!(status, 200);
    for refresh in &refresh_tokens[1..] {
        let (status, _) = server
            .post_form("/oauth/revoke", &[("token", refresh)])
            .await?;
        assert_eq!(status, 200);
    }
    for refresh in &refresh_tokens {
        assert_eq!(server.refresh(refresh).await?.0, 400);
    }
    for access in &access_tokens {
        assert_eq!(server.whoami(access).await?, Err(401));
    }
    let unknown = prism_proto::token_format::generate(prism_proto::SecretKind::RefreshToken)?;
    assert_eq!(server.refresh(&unknown).await?.0, 400);
    let forged = "eyJhbGciOiJub25lIn0.e30.c2VjcmV0LXNpZ25hdHVyZQ";
    assert_eq!(server.whoami(forged).await?, Err(401));

    secrets.extend(
        access_tokens
            .into_iter()
            .map(|token| ("access token", token)),
    );
    secrets.extend([
        ("unknown refresh token", unknown),
        (
            "forged access token's signature",
            "c2VjcmV0LXNpZ25hdHVyZQ".into(),
        ),
    ]);
    // Opaque tokens are also looked for without their public prefix, JWTs by their
    // signature alone: a log that cut or reshaped a token would still give it away.
    let mut parts: Vec<Secret> = Vec::new();
    for (what, secret) in secrets.iter() {
        if let Some((_, body)) = secret.split_once("_rt_") {
            parts.push((what, body.to_owned()));
        }
        if secret.starts_with("eyJ") {
            parts.push((
                what,
                secret.rsplit('.').next().unwrap_or_default().to_owned(),
            ));
        }
    }
    secrets.extend(parts);
    Ok(())
}
