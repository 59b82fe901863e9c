//! The attack battery: one table of hostile requests against every endpoint, each with the
//! status and `error` code it must get, checked by one shared checker (never a 5xx, a JSON
//! `error` from API endpoints, no secret echoed), and a healthy server afterwards. The deep
//! flows live beside it: every JWT forgery in `jwt_attacks.rs`, code replay and CSRF with
//! real logins in `login.rs`, organization boundaries for every query in `graphql.rs`.

use reqwest::Method;
use reqwest::redirect::Policy;
use serde_json::{Value, json};

use crate::graphql::{DELETE, UPDATE, member};
use crate::harness::{Server, TestResult, admin_ok, temp_dir, user_with_token};
use crate::jwt_attacks::{Forger, claims_of, hs256, with};

/// What a case's answer must look like besides its status.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// A JSON body whose `error` is this OAuth-style code, with a description.
    Error(&'static str),
    /// A JSON body that is a GraphQL response with `errors` and no `data` values.
    GraphqlErrors,
    /// An HTML page (the browser endpoints) that redirects nowhere.
    Page,
    /// A JSON body without `error`: RFC 7009 revocation answers 200 to anything
    /// well-shaped, and the positive control at the end proves nothing was revoked.
    Json,
    /// Plain text (`/metrics`).
    Text,
    /// A 303 back to the loopback client whose Location starts with this.
    RedirectTo(&'static str),
    /// A GraphQL answer that refuses a mutation: top-level `errors`, or a payload whose
    /// `errors` list is not empty and that carries no `user`.
    Refused,
    /// Refused by the HTTP layer before any route runs (oversized headers): no body promised.
    Bare,
}

struct Case {
    name: String,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    expect: Expect,
    /// A secret this case sends that must not come back.
    secret: Option<String>,
}

fn case(name: &str, method: Method, path: &str, status: u16, expect: Expect) -> Case {
    Case {
        name: name.to_owned(),
        method,
        path: path.to_owned(),
        headers: Vec::new(),
        body: Vec::new(),
        status,
        expect,
        secret: None,
    }
}

impl Case {
    fn body(mut self, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Self {
        if let Some(content_type) = content_type {
            self.headers.push(("content-type", content_type.to_owned()));
        }
        self.body = body.into();
        self
    }

    fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    fn secret(mut self, secret: &str) -> Self {
        self.secret = Some(secret.to_owned());
        self
    }
}

const JSON: Option<&str> = Some("application/json");
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

/// Sends one case and checks everything the battery promises about its answer.
async fn check(
    http: &reqwest::Client,
    server: &Server,
    case: &Case,
    secrets: &[&str],
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut problems = Vec::new();
    // Collects every broken promise of a case rather than stopping at the first, so one run
    // shows all of them.
    macro_rules! ensure {
        ($cond:expr, $($arg:tt)+) => {
            if !$cond {
                problems.push(format!($($arg)+));
            }
        };
    }
    let mut request = http
        .request(case.method.clone(), server.url(&case.path))
        .body(case.body.clone());
    for (name, value) in &case.headers {
        request = request.header(*name, value);
    }
    let response = match request.send().await {
        Ok(response) => response,
        // Oversized headers are refused with a 431 and the connection is closed; when that
        // happens while the client is still writing, the client sees a reset instead. Either
        // is a refusal, and the health check after the battery shows the server survived.
        Err(_) if matches!(case.expect, Expect::Bare) => return Ok(Vec::new()),
        Err(err) => return Ok(vec![format!("{}: no answer: {err}", case.name)]),
    };
    let status = response.status().as_u16();
    let headers = format!("{:?}", response.headers());
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = response.text().await?;
    let name = &case.name;
    let shown: String = text.chars().take(160).collect();
    ensure!(status < 500, "{name}: a {status}: {shown}");
    ensure!(
        status == case.status,
        "{name}: got {status}, want {}: {shown}",
        case.status
    );
    for secret in secrets.iter().copied().chain(case.secret.as_deref()) {
        ensure!(!text.contains(secret), "{name}: the body echoes a secret");
        ensure!(
            !headers.contains(secret),
            "{name}: a header echoes a secret"
        );
    }
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match case.expect {
        Expect::Error(code) => {
            ensure!(json["error"] == code, "{name}: {shown}");
            ensure!(
                json["error_description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{name}: {shown}"
            );
            ensure!(json.get("access_token").is_none(), "{name}: {shown}");
        }
        Expect::GraphqlErrors => {
            let errors = json["errors"].as_array().map_or(0, Vec::len);
            ensure!(errors > 0, "{name}: no GraphQL errors: {shown}");
            ensure!(
                json["data"].is_null() || json["data"].as_object().is_some_and(|d| d.is_empty()),
                "{name}: data despite the error: {shown}"
            );
        }
        Expect::Page => {
            ensure!(
                content_type.starts_with("text/html"),
                "{name}: {content_type}"
            );
            ensure!(location.is_none(), "{name}: redirected");
        }
        Expect::Json => {
            ensure!(json.is_object(), "{name}: {shown}");
            ensure!(json.get("error").is_none(), "{name}: {shown}");
        }
        Expect::Bare => {}
        Expect::Refused => {
            let payload = json["data"]
                .as_object()
                .and_then(|d| d.values().next())
                .cloned()
                .unwrap_or(Value::Null);
            let top = json["errors"].as_array().is_some_and(|e| !e.is_empty());
            let in_payload = payload["errors"].as_array().is_some_and(|e| !e.is_empty())
                && payload["user"].is_null();
            ensure!(top || in_payload, "{name}: not refused: {shown}");
        }
        Expect::RedirectTo(prefix) => {
            let location = location.unwrap_or_default();
            ensure!(
                location.starts_with(prefix),
                "{name}: redirected to {location}"
            );
        }
        Expect::Text => {
            ensure!(
                content_type.starts_with("text/plain"),
                "{name}: {content_type}"
            );
        }
    }
    Ok(problems)
}

/// Hostile refresh-token values, each with its name. Every one is checked for not being echoed.
fn hostile_tokens(refresh: &str, access: &str) -> Vec<(&'static str, String)> {
    let mut bad_checksum = refresh.to_owned();
    let last = if bad_checksum.ends_with('A') {
        "B"
    } else {
        "A"
    };
    bad_checksum.pop();
    bad_checksum.push_str(last);
    vec![
        ("bad checksum", bad_checksum),
        ("truncated token", refresh[..refresh.len() - 5].to_owned()),
        (
            "SQL metacharacters",
            "prism_rt_' OR '1'='1' --; DROP TABLE users".into(),
        ),
        (
            "NUL byte",
            format!("{}\u{0}{}", &refresh[..20], &refresh[20..]),
        ),
        (
            "very long token",
            format!("prism_rt_{}", "a".repeat(12_000)),
        ),
        ("access token as refresh token", access.to_owned()),
        (
            "another prefix",
            refresh.replacen("prism_rt_", "prism_iv_", 1),
        ),
    ]
}

/// Bodies that are broken before any field is read.
fn broken_bodies() -> Vec<(&'static str, Option<&'static str>, Vec<u8>, u16)> {
    vec![
        ("malformed JSON", JSON, b"{\"refresh_token\":".to_vec(), 400),
        (
            "truncated JSON",
            JSON,
            b"{\"refresh_token\":\"prism_rt_abc".to_vec(),
            400,
        ),
        ("JSON array", JSON, b"[1,2]".to_vec(), 400),
        (
            "deep JSON nesting",
            JSON,
            format!("{{\"a\":{}{}}}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
            400,
        ),
        (
            "invalid UTF-8",
            JSON,
            b"{\"refresh_token\":\"\xff\xfe\xc0\"}".to_vec(),
            400,
        ),
        (
            "NUL bytes in JSON",
            JSON,
            b"{\"refresh_token\"\0:\0}".to_vec(),
            400,
        ),
        ("huge body", JSON, vec![b' '; 200_000], 413),
        // Read (and thrown away) before the 413, so the client gets it whole.
        ("2 MB body", JSON, vec![b'{'; 2_000_000], 413),
        (
            "wrong content type",
            Some("text/plain"),
            b"{}".to_vec(),
            415,
        ),
        (
            "multipart content type",
            Some("multipart/form-data; boundary=x"),
            b"--x--".to_vec(),
            415,
        ),
        ("missing content type", None, b"{}".to_vec(), 415),
    ]
}

#[tokio::test]
async fn every_endpoint_survives_the_attack_battery() -> TestResult {
    let dir = temp_dir()?;
    // The battery sends its hostile /api requests as one caller, as fast as it can: the
    // per-caller rate limit (tested in limits.rs) is raised so that it never answers first.
    let server = Server::start_with(
        dir.path(),
        crate::harness::Options {
            args: vec!["--api-rate-limit".into(), "100000".into()],
            ..Default::default()
        },
    )?;
    let refresh = user_with_token(dir.path(), "battery@example.com")?;
    let access = server.access_token(&refresh).await?;
    // No redirects followed (the checker looks at them), and no pooled connections: the
    // server closes a connection after refusing oversized headers, and a reused one would
    // make the next case fail for the wrong reason.
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .pool_max_idle_per_host(0)
        .build()?;
    let bearer = format!("Bearer {access}");
    let mut cases: Vec<Case> = Vec::new();

    // The token endpoints, JSON-only ones first, then the OAuth ones that also take forms.
    for path in [
        "/auth/refresh",
        "/auth/revoke",
        "/oauth/token",
        "/oauth/revoke",
        "/oauth/device/code",
    ] {
        for (name, content_type, body, status) in broken_bodies() {
            cases.push(
                case(
                    &format!("{path}: {name}"),
                    Method::POST,
                    path,
                    status,
                    Expect::Error("invalid_request"),
                )
                .body(content_type, body),
            );
        }
        // Form decoding is lenient (a bad escape stays literal, invalid UTF-8 becomes U+FFFD),
        // so these reach the parameter checks: the grant type or client is then unknown.
        let (form_status, bad_escape, bad_utf8) = match path {
            "/oauth/token" => (400, "unsupported_grant_type", "invalid_client"),
            "/oauth/device/code" => (400, "invalid_request", "invalid_client"),
            "/oauth/revoke" => (400, "invalid_request", "invalid_request"),
            _ => (415, "invalid_request", "invalid_request"),
        };
        cases.push(
            case(
                &format!("{path}: form with a bad escape"),
                Method::POST,
                path,
                form_status,
                Expect::Error(bad_escape),
            )
            .body(FORM, b"grant_type=%zz&refresh_token=%".to_vec()),
        );
        cases.push(
            case(
                &format!("{path}: form with invalid UTF-8"),
                Method::POST,
                path,
                form_status,
                Expect::Error(bad_utf8),
            )
            .body(FORM, b"grant_type=\xff\xfe&client_id=\xc0".to_vec()),
        );
        cases.push(case(
            &format!("{path}: GET"),
            Method::GET,
            path,
            405,
            Expect::Error("invalid_request"),
        ));
        cases.push(
            case(
                &format!("{path}: huge header"),
                Method::POST,
                path,
                431,
                Expect::Bare,
            )
            .header("x-filler", "a".repeat(500_000))
            .body(JSON, b"{}".to_vec()),
        );
        let mut many = case(
            &format!("{path}: too many headers"),
            Method::POST,
            path,
            431,
            Expect::Bare,
        )
        .body(JSON, b"{}".to_vec());
        for _ in 0..200 {
            many = many.header("x-many", "v".into());
        }
        cases.push(many);
    }

    // Hostile token values in well-formed bodies, all of them malformed: `/auth/revoke` says
    // so (400) and `/oauth/revoke` answers 200 to any token (RFC 7009); both must revoke
    // nothing, which the positive control at the end proves.
    for (name, token) in hostile_tokens(&refresh, &access) {
        let json_body = json!({ "refresh_token": token }).to_string();
        cases.push(
            case(
                &format!("/auth/refresh: {name}"),
                Method::POST,
                "/auth/refresh",
                400,
                Expect::Error("invalid_grant"),
            )
            .body(JSON, json_body.clone())
            .secret(&token),
        );
        cases.push(
            case(
                &format!("/auth/revoke: {name}"),
                Method::POST,
                "/auth/revoke",
                400,
                Expect::Error("invalid_request"),
            )
            .body(JSON, json_body)
            .secret(&token),
        );
        let form = serde_urlencoded_pairs(&[
            ("grant_type", "refresh_token"),
            ("client_id", "prism-cli"),
            ("refresh_token", &token),
        ]);
        cases.push(
            case(
                &format!("/oauth/token: {name}"),
                Method::POST,
                "/oauth/token",
                400,
                Expect::Error("invalid_grant"),
            )
            .body(FORM, form)
            .secret(&token),
        );
        // RFC 7009 lets the holder revoke an access token at /oauth/revoke, so sending the
        // real one there is a legitimate revocation, not an attack.
        if token == access {
            continue;
        }
        cases.push(
            case(
                &format!("/oauth/revoke: {name}"),
                Method::POST,
                "/oauth/revoke",
                200,
                Expect::Json,
            )
            .body(FORM, serde_urlencoded_pairs(&[("token", &token)]))
            .secret(&token),
        );
        // A NUL byte cannot travel in a header at all.
        if token.contains('\0') {
            continue;
        }
        cases.push(
            case(
                &format!("/api: {name} as bearer"),
                Method::POST,
                "/api",
                401,
                Expect::Error("invalid_token"),
            )
            .header("authorization", format!("Bearer {token}"))
            .body(
                JSON,
                json!({"query": "{ authenticatedUser { id } }"}).to_string(),
            )
            .secret(&token),
        );
    }

    // Forged access tokens at /api, built with jwt_attacks.rs's forger from the server's own
    // key; its positive control (same claims re-signed are accepted) runs first.
    let forger = Forger::steal(dir.path()).await?;
    let claims = claims_of(&access)?;
    let now = claims["iat"].as_i64().ok_or("no iat")?;
    let control = forger.sign(&forger.header(), &claims);
    assert_eq!(
        server.whoami(&control).await?,
        Ok("battery@example.com".into())
    );
    let (signed, signature) = access.rsplit_once('.').ok_or("no signature")?;
    let mut flipped =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, signature)?;
    let last = flipped.len() - 1;
    flipped[last] ^= 0x80;
    let hs_header = json!({ "alg": "HS256", "typ": "at+jwt", "kid": forger.kid });
    let encode = |value: &Value| {
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            value.to_string(),
        )
    };
    let forged: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                encode(&json!({"alg": "none", "typ": "at+jwt", "kid": forger.kid})),
                encode(&claims)
            ),
        ),
        (
            "HS256 keyed with the public key",
            hs256(&forger.public, &hs_header, &claims),
        ),
        (
            "unknown kid",
            forger.sign(
                &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "nope"}),
                &claims,
            ),
        ),
        (
            "typ JWT",
            forger.sign(
                &json!({"alg": "EdDSA", "typ": "JWT", "kid": forger.kid}),
                &claims,
            ),
        ),
        (
            "wrong iss",
            forger.sign(
                &forger.header(),
                &with(&claims, "iss", json!("https://evil.example")),
            ),
        ),
        (
            "wrong aud",
            forger.sign(
                &forger.header(),
                &with(&claims, "aud", json!("https://evil.example/api")),
            ),
        ),
        (
            "expired",
            forger.sign(&forger.header(), &with(&claims, "exp", json!(now - 10))),
        ),
        (
            "not yet valid",
            forger.sign(
                &forger.header(),
                &with(
                    &with(&claims, "iat", json!(now + 3600)),
                    "exp",
                    json!(now + 7200),
                ),
            ),
        ),
        (
            "signature bit flip",
            format!(
                "{signed}.{}",
                base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &flipped)
            ),
        ),
        (
            "SQL in the kid",
            forger.sign(
                &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "' OR 1=1 --"}),
                &claims,
            ),
        ),
    ];
    for (name, token) in forged {
        cases.push(
            case(
                &format!("/api: JWT {name}"),
                Method::POST,
                "/api",
                401,
                Expect::Error("invalid_token"),
            )
            .header("authorization", format!("Bearer {token}"))
            .body(
                JSON,
                json!({"query": "{ authenticatedUser { id } }"}).to_string(),
            )
            .secret(&token),
        );
    }

    // /oauth/token grants: codes and device codes that do not exist, a PKCE downgrade, the
    // wrong client.
    for (name, form, error) in [
        (
            "unknown grant",
            "grant_type=password&username=a&password=b",
            "unsupported_grant_type",
        ),
        (
            "unknown client",
            "grant_type=refresh_token&client_id=evil&refresh_token=x",
            "invalid_client",
        ),
        (
            "unknown code",
            "grant_type=authorization_code&client_id=prism-cli&code=abc&code_verifier=x&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcb",
            "invalid_grant",
        ),
        (
            "code without a verifier (PKCE downgrade)",
            "grant_type=authorization_code&client_id=prism-cli&code=abc&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcb",
            "invalid_request",
        ),
        (
            "unknown device code",
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&client_id=prism-cli&device_code=abc",
            "invalid_grant",
        ),
        (
            "SQL in the device code",
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&client_id=prism-cli&device_code=%27%20OR%201%3D1--",
            "invalid_grant",
        ),
    ] {
        cases.push(
            case(
                &format!("/oauth/token: {name}"),
                Method::POST,
                "/oauth/token",
                400,
                Expect::Error(error),
            )
            .body(FORM, form.as_bytes().to_vec()),
        );
    }
    cases.push(
        case(
            "/oauth/device/code: unknown client",
            Method::POST,
            "/oauth/device/code",
            400,
            Expect::Error("invalid_client"),
        )
        .body(FORM, b"client_id=evil".to_vec()),
    );

    // /api with a valid token: GraphQL bombs, private fields, broken requests.
    let depth_bomb = format!(
        "{{ __schema {{ types {{ fields {{ type {}name{} }} }} }} }}",
        "{ ofType ".repeat(20),
        " }".repeat(20)
    );
    let aliases: String = (0..600)
        .map(|i| format!("a{i}: authenticatedUser {{ id email name }} "))
        .collect();
    let complexity_bomb = format!("{{ {aliases} }}");
    let graphql_cases: Vec<(&str, Vec<u8>, u16, Expect)> = vec![
        (
            "depth bomb",
            json!({"query": depth_bomb}).to_string().into_bytes(),
            200,
            Expect::GraphqlErrors,
        ),
        (
            "complexity bomb",
            json!({"query": complexity_bomb}).to_string().into_bytes(),
            200,
            Expect::GraphqlErrors,
        ),
        (
            "private field passwordHash",
            json!({"query": "{ authenticatedUser { passwordHash } }"})
                .to_string()
                .into_bytes(),
            200,
            Expect::GraphqlErrors,
        ),
        (
            "private field tokens",
            json!({"query": "{ authenticatedUser { refreshTokens { hash } } }"})
                .to_string()
                .into_bytes(),
            200,
            Expect::GraphqlErrors,
        ),
        (
            "unparsable query",
            json!({"query": "{ authenticatedUser { "})
                .to_string()
                .into_bytes(),
            200,
            Expect::GraphqlErrors,
        ),
        (
            "SQL in an id",
            json!({"query": DELETE, "variables": {"id": "' OR 1=1 --"}})
                .to_string()
                .into_bytes(),
            200,
            Expect::Refused,
        ),
        (
            "no query",
            b"{}".to_vec(),
            400,
            Expect::Error("invalid_request"),
        ),
        (
            "malformed JSON",
            b"{\"query\":".to_vec(),
            400,
            Expect::Error("invalid_request"),
        ),
        (
            "invalid UTF-8",
            b"{\"query\":\"\xff\"}".to_vec(),
            400,
            Expect::Error("invalid_request"),
        ),
        (
            "deep JSON nesting in variables",
            format!(
                "{{\"query\":\"{{ __typename }}\",\"variables\":{{\"a\":{}{}}}}}",
                "[".repeat(5_000),
                "]".repeat(5_000)
            )
            .into_bytes(),
            400,
            Expect::Error("invalid_request"),
        ),
        (
            "huge body",
            vec![b' '; 300_000],
            413,
            Expect::Error("invalid_request"),
        ),
    ];
    for (name, body, status, expect) in graphql_cases {
        cases.push(
            case(
                &format!("/api: {name}"),
                Method::POST,
                "/api",
                status,
                expect,
            )
            .header("authorization", bearer.clone())
            .body(JSON, body),
        );
    }
    cases.push(
        case(
            "/api: wrong content type",
            Method::POST,
            "/api",
            415,
            Expect::Error("invalid_request"),
        )
        .header("authorization", bearer.clone())
        .body(
            Some("text/plain"),
            b"{\"query\":\"{ __typename }\"}".to_vec(),
        ),
    );
    cases.push(
        case(
            "/api: no token",
            Method::POST,
            "/api",
            401,
            Expect::Error("invalid_request"),
        )
        .body(JSON, b"{\"query\":\"{ __typename }\"}".to_vec()),
    );
    // Cross-organization ids: another organization's admin names this user's id.
    let tenant_b = admin_ok(dir.path(), &["orgs", "add", "--name", "Beta"])?;
    let admin_b = member(
        &server,
        dir.path(),
        Some(&tenant_b),
        "admin-b@example.com",
        "Admin",
    )
    .await?;
    let (_, _, me) = server
        .graphql(Some(&access), "{ authenticatedUser { id } }")
        .await?;
    let my_id = me["data"]["authenticatedUser"]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    for (name, body) in [
        (
            "delete",
            json!({"query": DELETE, "variables": {"id": my_id}}),
        ),
        (
            "update",
            json!({"query": UPDATE, "variables": {"id": my_id, "name": "Hijacked"}}),
        ),
    ] {
        cases.push(
            case(
                &format!("/api: cross-organization {name}"),
                Method::POST,
                "/api",
                200,
                Expect::Refused,
            )
            .header("authorization", format!("Bearer {admin_b}"))
            .body(JSON, body.to_string())
            .secret(&admin_b),
        );
    }
    cases.push(case(
        "/api: GET",
        Method::GET,
        "/api",
        405,
        Expect::Error("invalid_request"),
    ));

    // The browser endpoints: bad clients and redirect URI tricks get an error page that sends
    // the browser nowhere; posts without the CSRF cookie are refused.
    let authorize = |redirect_uri: &str, method: &str, challenge: &str| {
        format!(
            "/authorize?response_type=code&client_id=prism-cli&state=s&scope=openid&redirect_uri={}&code_challenge={challenge}&code_challenge_method={method}",
            urlencode(redirect_uri)
        )
    };
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    for (name, redirect_uri) in [
        ("redirect to another host", "https://evil.example/cb"),
        ("redirect with userinfo", "http://127.0.0.1@evil.example/cb"),
        (
            "redirect with encoded characters",
            "http://127.0.0.1%2Fevil.example/cb",
        ),
        ("redirect with a fragment", "http://127.0.0.1:8765/cb#frag"),
        ("redirect to javascript:", "javascript:alert(1)"),
    ] {
        cases.push(case(
            &format!("/authorize: {name}"),
            Method::GET,
            &authorize(redirect_uri, "S256", challenge),
            400,
            Expect::Page,
        ));
    }
    // A backslash is a slash to WHATWG parsers (the server's and browsers'), so this URI's
    // host is 127.0.0.1, and the code redirect is re-serialized from the parsed URL: the
    // sign-in page is shown, and it can only ever send the browser to loopback.
    cases.push(case(
        "/authorize: redirect with a backslash",
        Method::GET,
        &authorize("http://127.0.0.1:8765\\@evil.example/cb", "S256", challenge),
        200,
        Expect::Page,
    ));
    // PKCE downgrades: with a good redirect URI the error goes back to the client.
    for (name, method, challenge) in [
        ("plain PKCE", "plain", challenge),
        ("no PKCE method", "", challenge),
        ("no code challenge", "S256", ""),
        ("short code challenge", "S256", "abc"),
    ] {
        cases.push(case(
            &format!("/authorize: {name}"),
            Method::GET,
            &authorize("http://127.0.0.1:8765/cb", method, challenge),
            303,
            Expect::RedirectTo("http://127.0.0.1:8765/cb?error=invalid_request"),
        ));
    }
    cases.push(case(
        "/authorize: unknown client",
        Method::GET,
        "/authorize?client_id=evil&response_type=code",
        400,
        Expect::Page,
    ));
    cases.push(case(
        "/authorize: no parameters",
        Method::GET,
        "/authorize",
        400,
        Expect::Page,
    ));
    cases.push(case(
        "/authorize: invalid UTF-8 in the query",
        Method::GET,
        "/authorize?client_id=%FF%FE&redirect_uri=%C0",
        400,
        Expect::Page,
    ));
    cases.push(
        case("/authorize: POST without the CSRF cookie", Method::POST, "/authorize", 403, Expect::Page)
            .body(FORM, format!("csrf=x&email=battery%40example.com&password=x&response_type=code&client_id=prism-cli&redirect_uri=http%3A%2F%2F127.0.0.1%3A8765%2Fcb&code_challenge={challenge}&code_challenge_method=S256&state=s").into_bytes()),
    );
    cases.push(
        case(
            "/authorize: POST with a mismatched CSRF cookie",
            Method::POST,
            "/authorize",
            403,
            Expect::Page,
        )
        .header("cookie", "prism_csrf=aaaa".into())
        .body(FORM, b"csrf=bbbb&email=a%40example.com&password=x".to_vec()),
    );
    cases.push(
        case(
            "/device: POST without the CSRF cookie",
            Method::POST,
            "/device",
            403,
            Expect::Page,
        )
        .body(FORM, b"user_code=ABCD-EFGH&decision=approve".to_vec()),
    );
    cases.push(case(
        "/device: NUL and quote in the user code",
        Method::GET,
        "/device?user_code=%00%27%22%3Cscript%3E",
        200,
        Expect::Page,
    ));
    cases.push(case(
        "/invite: unknown token",
        Method::GET,
        "/invite?token=prism_iv_x",
        404,
        Expect::Page,
    ));
    cases.push(case(
        "/invite: very long token",
        Method::GET,
        &format!("/invite?token={}", "a".repeat(6_000)),
        404,
        Expect::Page,
    ));
    cases.push(
        case(
            "/invite: POST without the CSRF cookie",
            Method::POST,
            "/invite",
            403,
            Expect::Page,
        )
        .body(FORM, b"token=x&csrf=x&password=aaaaaaaaaaaaaaaa".to_vec()),
    );
    cases.push(case(
        "/logout: redirect to another host",
        Method::GET,
        "/logout?post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F",
        200,
        Expect::Page,
    ));

    // Operational and discovery endpoints.
    cases.push(case(
        "/metrics: hostile query",
        Method::GET,
        "/metrics?name[]=%00%27",
        200,
        Expect::Text,
    ));
    cases.push(case(
        "/metrics: POST",
        Method::POST,
        "/metrics",
        405,
        Expect::Error("invalid_request"),
    ));
    cases.push(case(
        "/.well-known/jwks.json: POST",
        Method::POST,
        "/.well-known/jwks.json",
        405,
        Expect::Error("invalid_request"),
    ));
    cases.push(case(
        "/.well-known/openid-configuration: hostile query",
        Method::GET,
        "/.well-known/openid-configuration?%00=%FF",
        200,
        Expect::Json,
    ));
    cases.push(case(
        "/.well-known/: path traversal",
        Method::GET,
        "/.well-known/..%2fmetrics",
        404,
        Expect::Error("not_found"),
    ));
    cases.push(case(
        "/.well-known/: unknown document",
        Method::GET,
        "/.well-known/security.txt%00",
        404,
        Expect::Error("not_found"),
    ));
    cases.push(case(
        "/healthz: POST",
        Method::POST,
        "/healthz",
        405,
        Expect::Error("invalid_request"),
    ));
    cases.push(
        case(
            "/healthz: large header under the limit",
            Method::GET,
            "/healthz",
            200,
            Expect::Json,
        )
        .header("x-filler", "a".repeat(30_000)),
    );

    let secrets = [refresh.as_str(), access.as_str()];
    let mut problems = Vec::new();
    for case in &cases {
        problems.extend(check(&http, &server, case, &secrets).await?);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!("attack battery: {} cases", cases.len());

    // Introspection is allowed (the schema is public documentation), so it must not name
    // anything private.
    let (status, _, schema) = server
        .graphql(
            Some(&access),
            "{ __schema { types { name fields { name } } } }",
        )
        .await?;
    assert_eq!(status, 200, "{schema}");
    // Every type and field name. The only ones allowed to say "secret" are those of a
    // resource server's client secret, which its mutations hand out once (as `createToken`
    // hands out its token) and no query ever returns; never a hash.
    let once_shown = [
        "clientSecret",
        "rotateResourceServerSecret",
        "secretSetAt",
        "ResourceServerSecretPayload",
    ];
    let mut names = Vec::new();
    for schema_type in schema["data"]["__schema"]["types"]
        .as_array()
        .ok_or("no types")?
    {
        names.extend(schema_type["name"].as_str());
        for field in schema_type["fields"].as_array().into_iter().flatten() {
            names.extend(field["name"].as_str());
        }
    }
    assert!(names.len() > 50, "{schema}");
    for name in names {
        let lower = name.to_lowercase();
        for private in ["password", "hash", "secret", "private_key", "privatekey"] {
            assert!(
                !lower.contains(private) || (private == "secret" && once_shown.contains(&name)),
                "introspection names {name}"
            );
        }
    }
    // The one-time secret is no field of any query's type.
    let resource_server = schema["data"]["__schema"]["types"]
        .as_array()
        .and_then(|types| types.iter().find(|t| t["name"] == "ResourceServer"))
        .ok_or("no ResourceServer type")?;
    assert!(
        !resource_server.to_string().contains("clientSecret"),
        "{resource_server}"
    );

    // Still healthy, and nothing above revoked the real token.
    let health = server.http.get(server.url("/healthz")).send().await?;
    assert_eq!(health.status(), 200);
    let again = server.access_token(&refresh).await?;
    assert_eq!(
        server.whoami(&again).await?,
        Ok("battery@example.com".into())
    );
    assert_eq!(
        server.whoami(&access).await?,
        Ok("battery@example.com".into())
    );
    let (_, _, me) = server
        .graphql(Some(&again), "{ authenticatedUser { name } }")
        .await?;
    assert_ne!(me["data"]["authenticatedUser"]["name"], "Hijacked", "{me}");
    assert!(
        !server.logs().contains("panicked"),
        "the server panicked:\n{}",
        server.logs()
    );
    Ok(())
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn serde_urlencoded_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}
