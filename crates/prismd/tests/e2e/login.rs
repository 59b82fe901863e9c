//! Browser login end to end: `GET/POST /authorize` (CSRF, password, PKCE S256), the
//! `authorization_code` grant at `/oauth/token`, code replay, redirect URI attacks, browser
//! sessions and `/logout`, `/oauth/revoke` and the metadata document. Cookies are handled by
//! hand and redirects are never followed, so every `Location` is seen as the server sent it.
//! Every refusal below sits next to a request that differs only in the part under test and
//! succeeds, so a refusal proves the check that was meant.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::harness::REDIRECT_URI as REDIRECT;
use crate::harness::{
    Pkce, Server, TestResult, admin_ok, browser, prismd_with_stdin, query_param, redeem_code,
    temp_dir,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const CLIENT_ID: &str = "prism-cli";
const PASSWORD: &str = "correct horse battery staple";
const SCOPE: &str = "openid profile email offline_access";
const ME: &str = "{ authenticatedUser { email } }";
/// The browser's `User-Agent`.
const AGENT: &str = "login-e2e";

/// Adds a user who can log in with [`PASSWORD`].
fn add_user(dir: &std::path::Path, email: &str) -> TestResult {
    let output = prismd_with_stdin(
        dir,
        &[
            "users",
            "add",
            "--email",
            email,
            "--role",
            "Admin",
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    )?;
    if !output.status.success() {
        return Err(format!(
            "users add failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(())
}

type Params = Vec<(&'static str, String)>;

/// The authorization parameters of a well-formed request.
fn params(redirect_uri: &str, state: &str, challenge: &str) -> Params {
    vec![
        ("response_type", "code".into()),
        ("client_id", CLIENT_ID.into()),
        ("redirect_uri", redirect_uri.into()),
        ("scope", SCOPE.into()),
        ("state", state.into()),
        ("code_challenge", challenge.into()),
        ("code_challenge_method", "S256".into()),
    ]
}

/// `params` with `name` set to `value`, or removed when `value` is `None`.
fn with(params: &Params, name: &'static str, value: Option<&str>) -> Params {
    let mut changed: Params = params.iter().filter(|(k, _)| *k != name).cloned().collect();
    if let Some(value) = value {
        changed.push((name, value.to_owned()));
    }
    changed
}

/// A response as a browser would see it.
struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Page {
    async fn read(response: reqwest::Response) -> Res<Self> {
        Ok(Self {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await?,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn location(&self) -> Option<&str> {
        self.header("location")
    }

    /// The whole `Set-Cookie` line for cookie `name`, if one was sent.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|line| line.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    /// The value a `Set-Cookie` for `name` sets.
    fn cookie(&self, name: &str) -> Option<String> {
        let line = self.set_cookie(name)?;
        let pair = line.split(';').next()?;
        Some(pair.split_once('=')?.1.to_owned())
    }

    /// The login form's hidden `csrf` field.
    fn csrf_field(&self) -> Option<String> {
        let rest = self.body.split("name=\"csrf\" value=\"").nth(1)?;
        Some(rest.split('"').next()?.to_owned())
    }

    fn describe(&self) -> String {
        format!(
            "status {}, location {:?}, body {}",
            self.status,
            self.location(),
            self.body
        )
    }
}

async fn get_authorize(
    server: &Server,
    http: &reqwest::Client,
    query: &Params,
    cookie: Option<&str>,
) -> Res<Page> {
    let mut request = http.get(server.url("/authorize")).query(query);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    Page::read(request.send().await?).await
}

async fn post_authorize(
    server: &Server,
    http: &reqwest::Client,
    form: &Params,
    cookie: Option<&str>,
) -> Res<Page> {
    let mut request = http.post(server.url("/authorize")).form(form);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    Page::read(request.send().await?).await
}

/// With a live browser session: `GET /authorize` shows "Continue as <email>" (never a silent
/// redirect), and clicking Continue posts the form. Returns the page after the click.
async fn continue_as(
    server: &Server,
    http: &reqwest::Client,
    query: &Params,
    session_cookie: &str,
    email: &str,
) -> Res<Page> {
    let page = get_authorize(server, http, query, Some(session_cookie)).await?;
    assert_eq!(page.status, 200, "{}", page.describe());
    assert_eq!(
        page.location(),
        None,
        "a browser session must not redirect without a click"
    );
    assert!(
        page.body.contains(&format!("Continue as {email}?")),
        "{}",
        page.describe()
    );
    assert!(
        !page.body.contains("name=\"password\""),
        "the consent page asks for no password"
    );
    let csrf = page.cookie("prism_csrf").ok_or("no prism_csrf cookie")?;
    let mut form: Params = vec![("csrf", csrf.clone()), ("action", "continue".into())];
    form.extend(query.iter().cloned());
    post_authorize(
        server,
        http,
        &form,
        Some(&format!("{session_cookie}; prism_csrf={csrf}")),
    )
    .await
}

/// Is this the password form (not the consent page)?
fn is_password_form(page: &Page) -> bool {
    page.status == 200
        && page.body.contains("name=\"password\"")
        && !page.body.contains("Continue as")
}

/// The login form's POST body: CSRF field, credentials and the authorization parameters.
fn login_form(csrf: &str, email: &str, password: &str, query: &Params) -> Params {
    let mut form: Params = vec![
        ("csrf", csrf.into()),
        ("email", email.into()),
        ("password", password.into()),
    ];
    form.extend(query.iter().cloned());
    form
}

/// The form page of `GET /authorize`: its CSRF cookie value and field, checked to be equal.
async fn open_form(server: &Server, http: &reqwest::Client, query: &Params) -> Res<String> {
    let page = get_authorize(server, http, query, None).await?;
    assert_eq!(page.status, 200, "{}", page.describe());
    let cookie = page.cookie("prism_csrf").ok_or("no prism_csrf cookie")?;
    let field = page.csrf_field().ok_or("no csrf field")?;
    assert_eq!(cookie, field, "the CSRF cookie and field differ");
    assert_eq!(cookie.len(), 43, "{cookie}");
    Ok(cookie)
}

/// The outcome of a successful login.
struct LoggedIn {
    location: url::Url,
    code: String,
    session: String,
}

/// Opens the form, posts the right password and returns the code from the redirect.
async fn login(
    server: &Server,
    http: &reqwest::Client,
    email: &str,
    query: &Params,
) -> Res<LoggedIn> {
    let csrf = open_form(server, http, query).await?;
    let page = post_authorize(
        server,
        http,
        &login_form(&csrf, email, PASSWORD, query),
        Some(&format!("prism_csrf={csrf}")),
    )
    .await?;
    assert_eq!(page.status, 303, "{}", page.describe());
    let location = url::Url::parse(page.location().ok_or("no Location")?)?;
    let code = query_param(&location, "code").ok_or("no code in the redirect")?;
    let session = page.cookie("prism_session").ok_or("no prism_session")?;
    Ok(LoggedIn {
        location,
        code,
        session,
    })
}

/// Redeems and requires success; returns the token response.
async fn redeem_ok(server: &Server, code: &str, verifier: &str, redirect_uri: &str) -> Res<Value> {
    let (status, body) = redeem_code(server, code, verifier, redirect_uri).await?;
    assert_eq!(status, 200, "{body}");
    Ok(body)
}

fn str_field<'a>(body: &'a Value, field: &str) -> Res<&'a str> {
    body[field]
        .as_str()
        .ok_or_else(|| format!("no {field} in {body}").into())
}

fn assert_invalid_grant(case: &str, status: u16, body: &Value) {
    assert_eq!(status, 400, "{case}: {body}");
    assert_eq!(body["error"], "invalid_grant", "{case}: {body}");
    assert!(body.get("access_token").is_none(), "{case}: {body}");
    assert!(body.get("refresh_token").is_none(), "{case}: {body}");
}

fn jwt_part(token: &str, index: usize) -> Res<Value> {
    let part = token.split('.').nth(index).ok_or("not a JWT")?;
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part)?)?)
}

/// The refusal of a request whose client or redirect URI is not acceptable: an HTML error
/// page with 400 and nothing that sends the browser anywhere.
fn assert_error_page(case: &str, page: &Page) {
    assert_eq!(page.status, 400, "{case}: {}", page.describe());
    assert_eq!(page.location(), None, "{case}: redirected");
    assert!(
        page.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/html")),
        "{case}: {:?}",
        page.headers
    );
    assert!(
        page.body.contains("Sign-in problem"),
        "{case}: {}",
        page.body
    );
    assert!(!page.body.contains("<form"), "{case}: shows the login form");
    assert!(page.set_cookie("prism_csrf").is_none(), "{case}");
}

#[tokio::test]
async fn login_happy_path_issues_working_tokens_and_a_harmless_id_token() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let http = browser(AGENT)?;
    let pkce = Pkce::new()?;
    let state = "st-4f9a 'x'/?&=+";
    let query = with(
        &params(REDIRECT, state, &pkce.challenge),
        "nonce",
        Some("n-0S6_WzA2Mj"),
    );

    // The form page.
    let page = get_authorize(&server, &http, &query, None).await?;
    assert_eq!(page.status, 200, "{}", page.describe());
    assert!(
        page.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    let csp = page
        .header("content-security-policy")
        .ok_or("no Content-Security-Policy")?;
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(
        page.body
            .contains("<form method=\"post\" action=\"/authorize\"")
    );
    assert!(!page.body.contains("<script"), "the page has script");
    let csrf_line = page
        .set_cookie("prism_csrf")
        .ok_or("no prism_csrf cookie")?;
    for attribute in ["Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(csrf_line.contains(attribute), "{csrf_line}");
    }
    assert!(
        !csrf_line.contains("Secure"),
        "plain HTTP, yet Secure: {csrf_line}"
    );
    let csrf = page.cookie("prism_csrf").ok_or("no prism_csrf value")?;
    assert_eq!(page.csrf_field().as_deref(), Some(csrf.as_str()));

    // The POST: a 303 back to the client with a code and the unchanged state.
    let page = post_authorize(
        &server,
        &http,
        &login_form(&csrf, "admin@example.com", PASSWORD, &query),
        Some(&format!("prism_csrf={csrf}")),
    )
    .await?;
    assert_eq!(page.status, 303, "{}", page.describe());
    let raw_location = page.location().ok_or("no Location")?.to_owned();
    let location = url::Url::parse(&raw_location)?;
    assert_eq!(
        format!(
            "{}://{}{}",
            location.scheme(),
            location.host_str().unwrap_or(""),
            location.path()
        ),
        "http://127.0.0.1/callback"
    );
    assert_eq!(location.port(), Some(59400));
    assert_eq!(query_param(&location, "state").as_deref(), Some(state));
    assert_eq!(query_param(&location, "error"), None);
    let code = query_param(&location, "code").ok_or("no code")?;
    assert!(code.len() >= 43, "{code}");
    assert!(!code.contains('='), "{code}");
    let raw_code = location
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("code="))
        .ok_or("no raw code")?;
    assert!(!raw_code.contains('='), "{raw_location}");
    let session_line = page
        .set_cookie("prism_session")
        .ok_or("no prism_session cookie")?;
    for attribute in ["Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(session_line.contains(attribute), "{session_line}");
    }
    // The CSRF cookie is spent.
    let cleared = page
        .set_cookie("prism_csrf")
        .ok_or("CSRF cookie not cleared")?;
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    // The token endpoint.
    let response = http
        .post(server.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("code_verifier", pkce.verifier.as_str()),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
        ])
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let tokens: Value = response.json().await?;
    let access = str_field(&tokens, "access_token")?;
    let refresh = str_field(&tokens, "refresh_token")?;
    let id_token = str_field(&tokens, "id_token")?;
    assert!(refresh.starts_with("prism_rt_"), "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer", "{tokens}");
    assert!(
        tokens["expires_in"].as_u64().is_some_and(|s| s > 0),
        "{tokens}"
    );
    assert_eq!(tokens["scope"], SCOPE, "{tokens}");

    // The ID token: typ JWT, about this user, for this client, with the nonce.
    let header = jwt_part(id_token, 0)?;
    assert_eq!(header["typ"], "JWT", "{header}");
    assert_eq!(header["alg"], "EdDSA", "{header}");
    let claims = jwt_part(id_token, 1)?;
    assert_eq!(claims["email"], "admin@example.com", "{claims}");
    assert_eq!(claims["aud"], CLIENT_ID, "{claims}");
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj", "{claims}");
    assert_eq!(jwt_part(access, 0)?["typ"], "at+jwt");

    // The access token works at /api; the ID token, signed by the same key, does not.
    assert_eq!(server.whoami(access).await?, Ok("admin@example.com".into()));
    let (status, challenge, body) = server.graphql(Some(id_token), ME).await?;
    assert_eq!(status, 401, "the ID token was accepted as a bearer: {body}");
    assert!(
        challenge.is_some_and(|c| c.contains("invalid_token")),
        "{body}"
    );
    assert!(body["data"]["authenticatedUser"].is_null(), "{body}");

    // The refresh token works at /auth/refresh and yields a working access token.
    let (status, body) = server.refresh(refresh).await?;
    assert_eq!(status, 200, "{body}");
    let fresh = str_field(&body, "access_token")?;
    assert_eq!(server.whoami(fresh).await?, Ok("admin@example.com".into()));

    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn login_requires_pkce_s256_and_the_matching_verifier() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let http = browser(AGENT)?;
    let pkce = Pkce::new()?;
    let good = params(REDIRECT, "pkce-state", &pkce.challenge);

    // Positive control: the complete request shows the form.
    let page = get_authorize(&server, &http, &good, None).await?;
    assert_eq!(page.status, 200, "{}", page.describe());

    let cases = [
        (
            "missing code_challenge",
            with(&good, "code_challenge", None),
        ),
        (
            "code_challenge_method=plain",
            with(&good, "code_challenge_method", Some("plain")),
        ),
        (
            "plain with the verifier as challenge",
            with(
                &with(&good, "code_challenge_method", Some("plain")),
                "code_challenge",
                Some(pkce.verifier.as_str()),
            ),
        ),
        (
            "missing code_challenge_method",
            with(&good, "code_challenge_method", None),
        ),
        (
            "short code_challenge",
            with(&good, "code_challenge", Some("abc")),
        ),
    ];
    for (case, query) in &cases {
        let page = get_authorize(&server, &http, query, None).await?;
        assert_eq!(page.status, 303, "{case}: {}", page.describe());
        let location = url::Url::parse(page.location().ok_or("no Location")?)?;
        assert!(
            location.as_str().starts_with(REDIRECT),
            "{case}: {location}"
        );
        assert_eq!(
            query_param(&location, "error").as_deref(),
            Some("invalid_request"),
            "{case}: {location}"
        );
        assert!(
            query_param(&location, "error_description").is_some(),
            "{case}"
        );
        assert_eq!(
            query_param(&location, "state").as_deref(),
            Some("pkce-state"),
            "{case}"
        );
        assert_eq!(query_param(&location, "code"), None, "{case}: {location}");
        assert!(page.set_cookie("prism_csrf").is_none(), "{case}");
    }

    // The same refusal at POST /authorize, even with a valid CSRF pair and password.
    let csrf = open_form(&server, &http, &good).await?;
    let page = post_authorize(
        &server,
        &http,
        &login_form(
            &csrf,
            "admin@example.com",
            PASSWORD,
            &with(&good, "code_challenge_method", Some("plain")),
        ),
        Some(&format!("prism_csrf={csrf}")),
    )
    .await?;
    assert_eq!(page.status, 303, "{}", page.describe());
    let location = url::Url::parse(page.location().ok_or("no Location")?)?;
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("invalid_request")
    );
    assert_eq!(query_param(&location, "code"), None);
    assert!(page.set_cookie("prism_session").is_none());

    // Wrong verifiers at the token endpoint.
    let other = Pkce::new()?;
    let wrong_verifiers = [
        ("another verifier", other.verifier.clone()),
        ("the challenge itself (plain)", pkce.challenge.clone()),
        ("too short", "abc".to_owned()),
        (
            "verifier with a bad character",
            format!("{}!", pkce.verifier),
        ),
    ];
    for (case, verifier) in &wrong_verifiers {
        let logged_in = login(&server, &http, "admin@example.com", &good).await?;
        let (status, body) = redeem_code(&server, &logged_in.code, verifier, REDIRECT).await?;
        assert_invalid_grant(case, status, &body);
    }

    // Positive control: the right verifier redeems a fresh code.
    let logged_in = login(&server, &http, "admin@example.com", &good).await?;
    let body = redeem_ok(&server, &logged_in.code, &pkce.verifier, REDIRECT).await?;
    assert!(str_field(&body, "refresh_token")?.starts_with("prism_rt_"));

    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn login_code_replay_fails_and_revokes_what_the_code_issued() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let http = browser(AGENT)?;
    let pkce = Pkce::new()?;
    let query = params(REDIRECT, "replay", &pkce.challenge);
    let logged_in = login(&server, &http, "admin@example.com", &query).await?;

    let tokens = redeem_ok(&server, &logged_in.code, &pkce.verifier, REDIRECT).await?;
    let access = str_field(&tokens, "access_token")?;
    let refresh = str_field(&tokens, "refresh_token")?;
    // Positive control: both work before the replay.
    assert_eq!(server.whoami(access).await?, Ok("admin@example.com".into()));
    assert_eq!(server.refresh(refresh).await?.0, 200);

    let (status, body) = redeem_code(&server, &logged_in.code, &pkce.verifier, REDIRECT).await?;
    assert_invalid_grant("replayed code", status, &body);

    let (status, body) = server.refresh(refresh).await?;
    assert_eq!(status, 400, "refresh token survived the replay: {body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert_eq!(server.whoami(access).await?, Err(401));

    // A third try is refused as well, and a new login still works.
    let (status, body) = redeem_code(&server, &logged_in.code, &pkce.verifier, REDIRECT).await?;
    assert_invalid_grant("third use", status, &body);
    // The replay is audited once, about the user, with the session it revoked; never the code.
    let audit = admin_ok(dir.path(), &["audit", "--action", "code.replayed"])?;
    let replays: Vec<Value> = audit
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(replays.len(), 1, "{audit}");
    assert_eq!(replays[0]["address"], "127.0.0.1", "{audit}");
    assert_eq!(replays[0]["detail"]["revoked"], true, "{audit}");
    assert!(replays[0]["subjectUserId"].is_string(), "{audit}");
    assert!(!audit.contains(&logged_in.code));
    let again = login(&server, &http, "admin@example.com", &query).await?;
    let tokens = redeem_ok(&server, &again.code, &pkce.verifier, REDIRECT).await?;
    assert_eq!(
        server.whoami(str_field(&tokens, "access_token")?).await?,
        Ok("admin@example.com".into())
    );

    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn login_refuses_foreign_redirect_uris_and_clients_without_redirecting() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let http = browser(AGENT)?;
    let pkce = Pkce::new()?;
    let good = params(REDIRECT, "redirect-state", &pkce.challenge);

    // Positive controls: every loopback spelling shows the form.
    for redirect in [REDIRECT, "http://localhost:59400/", "http://[::1]:59400/cb"] {
        let query = with(&good, "redirect_uri", Some(redirect));
        let page = get_authorize(&server, &http, &query, None).await?;
        assert_eq!(page.status, 200, "{redirect}: {}", page.describe());
        assert!(page.csrf_field().is_some(), "{redirect}");
    }

    let cases = [
        (
            "https",
            with(&good, "redirect_uri", Some("https://evil.example/")),
        ),
        (
            "localhost prefix",
            with(
                &good,
                "redirect_uri",
                Some("http://localhost.evil.example/"),
            ),
        ),
        (
            "user info",
            with(
                &good,
                "redirect_uri",
                Some("http://localhost@evil.example/"),
            ),
        ),
        (
            "http",
            with(&good, "redirect_uri", Some("http://evil.example/")),
        ),
        ("no redirect_uri", with(&good, "redirect_uri", None)),
        (
            "unknown client_id",
            with(&good, "client_id", Some("evil-cli")),
        ),
        ("no client_id", with(&good, "client_id", None)),
        (
            "unknown client_id without PKCE",
            with(
                &with(&good, "client_id", Some("evil-cli")),
                "code_challenge",
                None,
            ),
        ),
    ];
    for (case, query) in &cases {
        let page = get_authorize(&server, &http, query, None).await?;
        assert_error_page(case, &page);
        assert!(!page.body.contains("evil.example"), "{case}: {}", page.body);
    }

    // The same at POST /authorize with a valid CSRF pair and the right password.
    let csrf = open_form(&server, &http, &good).await?;
    for (case, query) in &cases {
        let page = post_authorize(
            &server,
            &http,
            &login_form(&csrf, "admin@example.com", PASSWORD, query),
            Some(&format!("prism_csrf={csrf}")),
        )
        .await?;
        assert_error_page(case, &page);
        assert!(page.set_cookie("prism_session").is_none(), "{case}");
    }

    // The token endpoint binds the code to its redirect URI.
    let logged_in = login(&server, &http, "admin@example.com", &good).await?;
    let (status, body) = redeem_code(
        &server,
        &logged_in.code,
        &pkce.verifier,
        "http://127.0.0.1:59401/callback",
    )
    .await?;
    assert_invalid_grant("other redirect_uri at the token endpoint", status, &body);
    // Positive control: a fresh code with its own redirect URI redeems.
    let logged_in = login(&server, &http, "admin@example.com", &good).await?;
    redeem_ok(&server, &logged_in.code, &pkce.verifier, REDIRECT).await?;

    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn login_post_requires_the_csrf_cookie_to_match_the_field() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let http = browser(AGENT)?;
    let pkce = Pkce::new()?;
    let query = params(REDIRECT, "csrf-state", &pkce.challenge);
    let csrf = open_form(&server, &http, &query).await?;
    let other = open_form(&server, &http, &query).await?;
    assert_ne!(csrf, other, "CSRF tokens repeat");
    let form = login_form(&csrf, "admin@example.com", PASSWORD, &query);

    let cases: [(&str, Params, Option<String>); 5] = [
        ("no cookie", form.clone(), None),
        (
            "another form's cookie",
            form.clone(),
            Some(format!("prism_csrf={other}")),
        ),
        (
            "empty cookie and empty field",
            with(&form, "csrf", Some("")),
            Some("prism_csrf=".to_owned()),
        ),
        (
            "no field",
            with(&form, "csrf", None),
            Some(format!("prism_csrf={csrf}")),
        ),
        (
            "the token under another cookie name",
            form.clone(),
            Some(format!("prism_session={csrf}")),
        ),
    ];
    for (case, body, cookie) in &cases {
        let page = post_authorize(&server, &http, body, cookie.as_deref()).await?;
        assert_eq!(page.status, 403, "{case}: {}", page.describe());
        assert_eq!(page.location(), None, "{case}");
        assert!(page.body.contains("Start the login again"), "{case}");
        assert!(page.set_cookie("prism_session").is_none(), "{case}");
    }

    // Positive control: the matching pair logs in.
    let page = post_authorize(&server, &http, &form, Some(&format!("prism_csrf={csrf}"))).await?;
    assert_eq!(page.status, 303, "{}", page.describe());
    assert!(page.location().is_some_and(|l| l.contains("code=")));

    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn login_wrong_password_and_unknown_email_look_the_same() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let http = browser(AGENT)?;
    let pkce = Pkce::new()?;
    let query = params(REDIRECT, "pw-state", &pkce.challenge);
    let csrf = open_form(&server, &http, &query).await?;
    let cookie = format!("prism_csrf={csrf}");

    let mut pages = Vec::new();
    for (case, email, password) in [
        ("wrong password", "admin@example.com", "not the password"),
        ("unknown email", "nobody@example.com", PASSWORD),
        ("empty password", "admin@example.com", ""),
    ] {
        let page = post_authorize(
            &server,
            &http,
            &login_form(&csrf, email, password, &query),
            Some(&cookie),
        )
        .await?;
        assert_eq!(page.status, 200, "{case}: {}", page.describe());
        assert_eq!(page.location(), None, "{case}");
        assert!(
            page.body.contains("Wrong email or password."),
            "{case}: {}",
            page.body
        );
        assert!(page.set_cookie("prism_session").is_none(), "{case}");
        // The form is shown again, with the email kept and the password not.
        assert_eq!(page.csrf_field().as_deref(), Some(csrf.as_str()), "{case}");
        assert!(page.body.contains(&format!("value=\"{email}\"")), "{case}");
        assert!(
            password.is_empty() || !page.body.contains(password),
            "{case}: echoes the password"
        );
        pages.push((email, page));
    }
    // Apart from the echoed email, the two failures are byte for byte the same page.
    let [(email_a, a), (email_b, b), _] = &pages[..] else {
        return Err("expected three pages".into());
    };
    assert_eq!(a.status, b.status);
    assert_eq!(
        a.body.replace(email_a, "EMAIL"),
        b.body.replace(email_b, "EMAIL")
    );

    // Positive control: the right password with the same CSRF pair logs in.
    let page = post_authorize(
        &server,
        &http,
        &login_form(&csrf, "admin@example.com", PASSWORD, &query),
        Some(&cookie),
    )
    .await?;
    assert_eq!(page.status, 303, "{}", page.describe());
    assert!(page.set_cookie("prism_session").is_some());

    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn login_browser_session_skips_the_form_until_logout() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let http = browser(AGENT)?;
    let pkce = Pkce::new()?;
    let query = params(REDIRECT, "first", &pkce.challenge);
    let logged_in = login(&server, &http, "admin@example.com", &query).await?;
    let session_cookie = format!("prism_session={}", logged_in.session);

    // Positive control for "shows the form": without the cookie the form is shown.
    let second_pkce = Pkce::new()?;
    let second = params("http://localhost:59500/", "second", &second_pkce.challenge);
    let page = get_authorize(&server, &http, &second, None).await?;
    assert_eq!(page.status, 200, "{}", page.describe());

    // With the cookie: one click (no password) and back with a new code for the new request.
    let page = continue_as(
        &server,
        &http,
        &second,
        &session_cookie,
        "admin@example.com",
    )
    .await?;
    assert_eq!(page.status, 303, "{}", page.describe());
    let location = url::Url::parse(page.location().ok_or("no Location")?)?;
    assert!(location.as_str().starts_with("http://localhost:59500/"));
    assert_eq!(query_param(&location, "state").as_deref(), Some("second"));
    let code = query_param(&location, "code").ok_or("no code")?;
    assert_ne!(code, logged_in.code);
    let tokens = redeem_ok(
        &server,
        &code,
        &second_pkce.verifier,
        "http://localhost:59500/",
    )
    .await?;
    assert_eq!(
        server.whoami(str_field(&tokens, "access_token")?).await?,
        Ok("admin@example.com".into())
    );
    // The session still checks the request: a foreign redirect URI is not honoured.
    let evil = with(&second, "redirect_uri", Some("https://evil.example/"));
    assert_error_page(
        "session with evil redirect",
        &get_authorize(&server, &http, &evil, Some(&session_cookie)).await?,
    );

    // A GET of /logout changes nothing (another site could link or embed it): it shows the
    // sign-out button, and the session still skips the password.
    let response = http
        .get(server.url("/logout"))
        .query(&[("returnTo", "https://prismatic.io")])
        .header("cookie", &session_cookie)
        .send()
        .await?;
    let page = Page::read(response).await?;
    assert_eq!(page.status, 200, "{}", page.describe());
    assert!(page.body.contains("method=\"post\""), "{}", page.body);
    assert!(
        page.set_cookie("prism_session").is_none(),
        "a GET cleared the session"
    );
    let still = get_authorize(&server, &http, &second, Some(&session_cookie)).await?;
    assert!(!is_password_form(&still), "{}", still.describe());
    // Its form posted without the CSRF token (a forged cross-site POST) is refused.
    let forged = http
        .post(server.url("/logout"))
        .header("cookie", &session_cookie)
        .form(&[("csrf", "forged"), ("returnTo", "https://prismatic.io")])
        .send()
        .await?;
    assert_eq!(forged.status().as_u16(), 403);
    let still = get_authorize(&server, &http, &second, Some(&session_cookie)).await?;
    assert!(!is_password_form(&still), "{}", still.describe());

    // The button: signed out, to an allowed address.
    let response = crate::harness::sign_out(
        &server,
        &http,
        &session_cookie,
        Some("https://prismatic.io"),
    )
    .await?;
    let page = Page::read(response).await?;
    assert_eq!(page.status, 303, "{}", page.describe());
    assert_eq!(page.location(), Some("https://prismatic.io"));
    let cleared = page
        .set_cookie("prism_session")
        .ok_or("cookie not cleared")?;
    assert!(cleared.starts_with("prism_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert!(cleared.contains("Path=/"), "{cleared}");

    // The old cookie no longer skips the password.
    let page = get_authorize(&server, &http, &second, Some(&session_cookie)).await?;
    assert!(is_password_form(&page), "{}", page.describe());
    assert_eq!(page.location(), None);

    // A foreign returnTo is not followed.
    let response = http
        .get(server.url("/logout"))
        .query(&[("returnTo", "https://evil.example/")])
        .send()
        .await?;
    let page = Page::read(response).await?;
    assert_eq!(page.status, 200, "{}", page.describe());
    assert_eq!(page.location(), None);
    assert!(page.body.contains("Signed out"), "{}", page.body);
    assert!(!page.body.contains("evil.example"), "{}", page.body);
    for target in [
        "https://prismatic.io.evil.example",
        "https://prismatic.io@evil.example",
        "//evil.example",
    ] {
        let response = http
            .get(server.url("/logout"))
            .query(&[("returnTo", target)])
            .send()
            .await?;
        let page = Page::read(response).await?;
        assert_eq!(page.status, 200, "{target}: {}", page.describe());
        assert_eq!(page.location(), None, "{target}");
    }

    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn login_page_escapes_reflected_parameters() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let http = browser(AGENT)?;
    let pkce = Pkce::new()?;
    let state = "\"><script>alert(1)</script>";
    let query = with(
        &params(REDIRECT, state, &pkce.challenge),
        "nonce",
        Some("'><img src=x onerror=alert(2)>"),
    );
    let page = get_authorize(&server, &http, &query, None).await?;
    assert_eq!(page.status, 200, "{}", page.describe());
    assert!(!page.body.contains("<script"), "{}", page.body);
    assert!(!page.body.contains("<img"), "{}", page.body);
    // Positive control: the values are in the page, escaped.
    assert!(
        page.body
            .contains("name=\"state\" value=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("value=\"&#39;&gt;&lt;img src=x onerror=alert(2)&gt;\""),
        "{}",
        page.body
    );

    // The wrong-password page reflects the email too, escaped.
    let csrf = page.cookie("prism_csrf").ok_or("no prism_csrf")?;
    let email = "\"><script>alert(3)</script>@example.com";
    let failed = post_authorize(
        &server,
        &http,
        &login_form(&csrf, email, "whatever-password", &query),
        Some(&format!("prism_csrf={csrf}")),
    )
    .await?;
    assert_eq!(failed.status, 200, "{}", failed.describe());
    assert!(failed.body.contains("Wrong email or password."));
    assert!(!failed.body.contains("<script"), "{}", failed.body);
    assert!(
        failed.body.contains("&lt;script&gt;alert(3)"),
        "{}",
        failed.body
    );

    // And the state comes back to the client unchanged.
    let logged_in = login(&server, &http, "admin@example.com", &query).await?;
    assert_eq!(
        query_param(&logged_in.location, "state").as_deref(),
        Some(state)
    );

    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn login_expired_code_is_refused() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let http = browser(AGENT)?;
    let pkce = Pkce::new()?;
    let query = params(REDIRECT, "expiry", &pkce.challenge);

    // Positive control: a code redeemed in time works.
    let fresh = login(&server, &http, "admin@example.com", &query).await?;
    redeem_ok(&server, &fresh.code, &pkce.verifier, REDIRECT).await?;

    let stale = login(&server, &http, "admin@example.com", &query).await?;
    let url = format!("sqlite://{}", dir.path().join("prismd.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await?;
    let expired =
        sqlx::query("UPDATE authorization_codes SET expires_at = 0 WHERE used_at IS NULL")
            .execute(&pool)
            .await?
            .rows_affected();
    pool.close().await;
    assert_eq!(expired, 1);

    let (status, body) = redeem_code(&server, &stale.code, &pkce.verifier, REDIRECT).await?;
    assert_invalid_grant("expired code", status, &body);
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("expired")),
        "{body}"
    );

    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn login_oauth_revoke_ends_one_session_only() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let other_session = admin_ok(
        dir.path(),
        &["tokens", "create", "--email", "admin@example.com"],
    )?;
    let http = browser(AGENT)?;
    let pkce = Pkce::new()?;
    let query = params(REDIRECT, "revoke", &pkce.challenge);
    let logged_in = login(&server, &http, "admin@example.com", &query).await?;
    let tokens = redeem_ok(&server, &logged_in.code, &pkce.verifier, REDIRECT).await?;
    let access = str_field(&tokens, "access_token")?;
    let refresh = str_field(&tokens, "refresh_token")?;
    let other_access = server.access_token(&other_session).await?;

    // Positive control: everything works before.
    assert_eq!(server.whoami(access).await?, Ok("admin@example.com".into()));
    assert_eq!(server.refresh(refresh).await?.0, 200);
    assert_eq!(
        server.whoami(&other_access).await?,
        Ok("admin@example.com".into())
    );

    let response = http
        .post(server.url("/oauth/revoke"))
        .form(&[("token", refresh)])
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await?;
    assert_eq!(body, serde_json::json!({}));

    let (status, body) = server.refresh(refresh).await?;
    assert_eq!(status, 400, "revoked refresh token still works: {body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert_eq!(server.whoami(access).await?, Err(401));

    // The other session of the same user is untouched.
    assert_eq!(
        server.whoami(&other_access).await?,
        Ok("admin@example.com".into())
    );
    let renewed = server.access_token(&other_session).await?;
    assert_eq!(
        server.whoami(&renewed).await?,
        Ok("admin@example.com".into())
    );

    // Revoking again, or a token that means nothing, is still 200.
    for token in [refresh, "nonsense"] {
        let response = http
            .post(server.url("/oauth/revoke"))
            .form(&[("token", token)])
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 200, "{token}");
    }
    assert_eq!(server.refresh(&other_session).await?.0, 200);

    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn login_metadata_lists_the_browser_endpoints() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let http = browser(AGENT)?;
    let response = http
        .get(server.url("/.well-known/openid-configuration"))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let meta: Value = response.json().await?;
    let issuer = str_field(&meta, "issuer")?;
    for (field, path) in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/oauth/token"),
        ("revocation_endpoint", "/oauth/revoke"),
        ("end_session_endpoint", "/logout"),
    ] {
        assert_eq!(
            meta[field].as_str(),
            Some(format!("{issuer}{path}").as_str()),
            "{field}: {meta}"
        );
    }
    assert_eq!(
        meta["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        meta["response_types_supported"],
        serde_json::json!(["code"])
    );
    let grants = meta["grant_types_supported"]
        .as_array()
        .ok_or("no grant_types_supported")?;
    assert!(grants.iter().any(|g| g == "authorization_code"), "{meta}");

    // The endpoints it names are served: the authorization endpoint shows the form.
    let pkce = Pkce::new()?;
    let page = get_authorize(
        &server,
        &http,
        &params(REDIRECT, "m", &pkce.challenge),
        None,
    )
    .await?;
    assert_eq!(page.status, 200, "{}", page.describe());

    server.stop()?;
    Ok(())
}

/// Logs in, returns the browser session cookie and the refresh token of the login, and checks
/// that the cookie alone yields a working code (the control for the session tests below).
async fn session_and_refresh(
    server: &Server,
    http: &reqwest::Client,
    query: &Params,
    verifier: &str,
) -> Res<(String, String)> {
    let logged_in = login(server, http, "admin@example.com", query).await?;
    let tokens = redeem_ok(server, &logged_in.code, verifier, REDIRECT).await?;
    let refresh = str_field(&tokens, "refresh_token")?.to_owned();
    let cookie = format!("prism_session={}", logged_in.session);
    let page = continue_as(server, http, query, &cookie, "admin@example.com").await?;
    assert_eq!(page.status, 303, "control: {}", page.describe());
    let location = url::Url::parse(page.location().ok_or("no Location")?)?;
    let code = query_param(&location, "code").ok_or("no code")?;
    redeem_ok(server, &code, verifier, REDIRECT).await?;
    Ok((cookie, refresh))
}

/// After "log out everywhere" the browser session must not hand out new tokens.
#[tokio::test]
async fn login_browser_session_ends_with_revoke_all() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let http = browser(AGENT)?;
    let pkce = Pkce::new()?;
    let query = params(REDIRECT, "revoke-all", &pkce.challenge);
    let (cookie, refresh) = session_and_refresh(&server, &http, &query, &pkce.verifier).await?;

    let (status, body) = server.revoke(&refresh).await?;
    assert_eq!(status, 200, "{body}");
    // Control: revoke-all did take effect on the tokens.
    assert_eq!(server.refresh(&refresh).await?.0, 400);

    // The old session gets the password form, not "Continue as", and a forced "continue"
    // click is refused too.
    let page = get_authorize(&server, &http, &query, Some(&cookie)).await?;
    assert!(is_password_form(&page), "{}", page.describe());
    let csrf = page.cookie("prism_csrf").ok_or("no csrf cookie")?;
    let mut form: Params = vec![("csrf", csrf.clone()), ("action", "continue".into())];
    form.extend(query.iter().cloned());
    let forced = post_authorize(
        &server,
        &http,
        &form,
        Some(&format!("{cookie}; prism_csrf={csrf}")),
    )
    .await?;
    assert_eq!(
        forced.location(),
        None,
        "the ended session must not get a code: {}",
        forced.describe()
    );
    assert!(is_password_form(&forced), "{}", forced.describe());

    server.stop()?;
    Ok(())
}

/// After an operator sets a new password the old browser session must not hand out tokens.
#[tokio::test]
async fn login_browser_session_ends_with_password_change() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let http = browser(AGENT)?;
    let pkce = Pkce::new()?;
    let query = params(REDIRECT, "password-change", &pkce.challenge);
    let (cookie, _) = session_and_refresh(&server, &http, &query, &pkce.verifier).await?;

    let output = prismd_with_stdin(
        dir.path(),
        &["users", "set-password", "--email", "admin@example.com"],
        "a brand new password\n",
    )?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Control: the change took effect; the old password is refused.
    let csrf = open_form(&server, &http, &query).await?;
    let page = post_authorize(
        &server,
        &http,
        &login_form(&csrf, "admin@example.com", PASSWORD, &query),
        Some(&format!("prism_csrf={csrf}")),
    )
    .await?;
    assert!(
        page.body.contains("Wrong email or password."),
        "{}",
        page.describe()
    );

    // The old session gets the password form, not "Continue as", and a forced "continue"
    // click is refused too.
    let page = get_authorize(&server, &http, &query, Some(&cookie)).await?;
    assert!(is_password_form(&page), "{}", page.describe());
    let csrf = page.cookie("prism_csrf").ok_or("no csrf cookie")?;
    let mut form: Params = vec![("csrf", csrf.clone()), ("action", "continue".into())];
    form.extend(query.iter().cloned());
    let forced = post_authorize(
        &server,
        &http,
        &form,
        Some(&format!("{cookie}; prism_csrf={csrf}")),
    )
    .await?;
    assert_eq!(
        forced.location(),
        None,
        "the ended session must not get a code: {}",
        forced.describe()
    );
    assert!(is_password_form(&forced), "{}", forced.describe());

    server.stop()?;
    Ok(())
}

/// `tenant_id` on the code grant: a foreign tenant gets `access_denied` before any session is
/// minted; the user's own tenant works.
#[tokio::test]
async fn login_code_grant_checks_tenant_id() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    add_user(dir.path(), "admin@example.com")?;
    let other_tenant = admin_ok(dir.path(), &["orgs", "add", "--name", "Other"])?;
    let http = browser(AGENT)?;
    let sessions = || async {
        let url = format!(
            "sqlite://{}?mode=ro",
            dir.path().join("prismd.db").display()
        );
        let pool = sqlx::SqlitePool::connect(&url).await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM refresh_tokens")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        Ok::<_, Box<dyn std::error::Error>>(count)
    };

    let pkce = Pkce::new()?;
    let code = login(
        &server,
        &http,
        "admin@example.com",
        &params(REDIRECT, "t1", &pkce.challenge),
    )
    .await?
    .code;
    let before = sessions().await?;
    let response = http
        .post(server.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("code_verifier", pkce.verifier.as_str()),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("tenant_id", other_tenant.as_str()),
        ])
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await?;
    assert_eq!(body["error"], "access_denied", "{body}");
    assert_eq!(
        sessions().await?,
        before,
        "no session may be minted for a refused tenant"
    );

    // Control: the user's own tenant is accepted.
    let orgs = admin_ok(dir.path(), &["orgs", "list"])?;
    let own_tenant = orgs
        .lines()
        .find(|l| l.contains("(default)"))
        .and_then(|l| l.split_whitespace().next())
        .ok_or("no default org")?
        .to_owned();
    let pkce = Pkce::new()?;
    let code = login(
        &server,
        &http,
        "admin@example.com",
        &params(REDIRECT, "t2", &pkce.challenge),
    )
    .await?
    .code;
    let response = http
        .post(server.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("code_verifier", pkce.verifier.as_str()),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("tenant_id", own_tenant.as_str()),
        ])
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    Ok(())
}
