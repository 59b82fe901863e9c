//! Forward auth (issue 19) end to end: `/auth/verify` asked directly, as a reverse proxy asks
//! it (identity headers for people and service accounts on any method, the RFC 6750
//! challenges, required scopes from the query and the header, built-in and organization
//! scopes, revocations refused on the very next call, the header prefix flag, exact metric
//! counts), and through a real nginx (`auth_request`, configured exactly as
//! docs/forward-auth.md says) in front of an upstream inside this test process that echoes the
//! headers it receives: a valid token passes with prismd's identity, a client's forged
//! identity headers never reach the upstream, a revoked token is refused on the very next
//! request, a missing scope gets 403, and with prismd down the proxy answers an error, never a
//! pass. nginx comes from Debian's package, which `scripts/test.sh` installs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use serde_json::{Value, json};

use crate::harness::{Options, Server, TestResult, jwt_claims, temp_dir};
use crate::metrics::scraped_value;
use crate::scopes::{
    CREATE_SCOPE, CREATE_TOKEN, DELETE_SA, DELETE_USER, GRANT_TO_ROLE, REVOKE_FROM_ROLE, Res,
    UPDATE_NAME, add_member, call, create_sa, exchange, must, named_token, owner_access,
    revoke_current_session, role_ids, role_of, stop_clean, text, tokens_that_do_not_stand,
};

/// The built-in scopes of Owners and Admins.
const ALL_BUILT_IN: &str =
    "users:read users:write profile:write sessions:read sessions:write audit:read org:admin";
/// The built-in scopes of Integrators, Restricted Integrators and Guests.
const MEMBER_BUILT_IN: &str = "users:read profile:write sessions:read sessions:write";
const ME: &str = "{ authenticatedUser { id name email } }";
/// The identity header fields prismd writes, after its prefix.
const FIELDS: [&str; 9] = [
    "User-Id",
    "Email",
    "Name",
    "Organization",
    "Role",
    "Kind",
    "Scopes",
    "Session",
    "Client",
];
const DEFAULT_PREFIX: &str = "X-Prism-";

// ---------------------------------------------------------------------------------------------
// Asking /auth/verify directly.

/// An answer of `/auth/verify` (or of nginx).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
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

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The identity headers (those starting with `prefix`), lower-cased names to values, the
    /// scopes sorted; failing when one is repeated.
    fn identity(&self, prefix: &str) -> Res<BTreeMap<String, String>> {
        identity_headers(
            self.headers
                .iter()
                .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes()))),
            prefix,
        )
    }

    /// Fails unless this is the 401 of a token that does not stand (RFC 6750 `invalid_token`).
    fn expect_invalid_token(&self, what: &str) -> TestResult {
        let challenge = self.header("www-authenticate").unwrap_or_default();
        if self.status != 401
            || !challenge
                .starts_with(r#"Bearer realm="prism", error="invalid_token", error_description=""#)
            || self.json()["error"] != "invalid_token"
            || !self.json()["error_description"].is_string()
            || self.header("cache-control") != Some("no-store")
        {
            return Err(format!(
                "{what}: expected 401 invalid_token, got {} {challenge:?} {:?} {}",
                self.status, self.headers, self.body
            )
            .into());
        }
        Ok(())
    }

    /// Fails unless this is the 403 of a token that lacks `missing` for a route requiring
    /// `required` (its scopes sorted, space-separated).
    fn expect_insufficient(&self, required: &str, missing: &str, what: &str) -> TestResult {
        let challenge = self.header("www-authenticate").unwrap_or_default();
        let wanted =
            format!(r#"Bearer realm="prism", error="insufficient_scope", scope="{required}""#);
        let body = self.json();
        if self.status != 403
            || challenge != wanted
            || body["error"] != "insufficient_scope"
            || body["error_description"] != format!("this token lacks the scope {missing}").as_str()
            || self.header("cache-control") != Some("no-store")
        {
            return Err(format!(
                "{what}: expected 403 insufficient_scope ({wanted}), got {} {challenge:?} {}",
                self.status, self.body
            )
            .into());
        }
        Ok(())
    }

    /// Fails unless this is 200 with an empty body.
    fn expect_allowed(&self, what: &str) -> TestResult {
        if self.status != 200 || !self.body.is_empty() {
            return Err(format!("{what}: expected 200, got {} {}", self.status, self.body).into());
        }
        if self.header("cache-control") != Some("no-store") {
            return Err(format!("{what}: no Cache-Control: no-store: {:?}", self.headers).into());
        }
        Ok(())
    }
}

/// The headers among `headers` whose names start with `prefix` (case-insensitive; `_` counts
/// as `-`, as some frameworks read them), lower-cased, the scopes sorted; failing when one is
/// repeated.
fn identity_headers<'a>(
    headers: impl Iterator<Item = (&'a str, impl AsRef<str>)>,
    prefix: &str,
) -> Res<BTreeMap<String, String>> {
    let prefix = prefix.to_ascii_lowercase();
    let mut identity = BTreeMap::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if !name.replace('_', "-").starts_with(&prefix) {
            continue;
        }
        let value = if name.ends_with("scopes") {
            sorted(value.as_ref())
        } else {
            value.as_ref().to_owned()
        };
        if let Some(before) = identity.insert(name.clone(), value) {
            return Err(format!("{name} twice (first {before:?})").into());
        }
    }
    Ok(identity)
}

/// Space-separated names, sorted.
fn sorted(scopes: &str) -> String {
    scopes
        .split_whitespace()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `/auth/verify` with `method`, the query `query` (e.g. `?scope=users:read`) and `headers`.
async fn verify_with(
    server: &Server,
    method: Method,
    query: &str,
    headers: &[(&str, &str)],
) -> Res<Answer> {
    let mut request = server
        .http
        .request(method, server.url(&format!("/auth/verify{query}")));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Answer::read(request.send().await?).await
}

/// `GET /auth/verify` with `access` as the bearer token.
async fn verify(server: &Server, access: &str) -> Res<Answer> {
    verify_scoped(server, access, "").await
}

/// `GET /auth/verify{query}` with `access` as the bearer token.
async fn verify_scoped(server: &Server, access: &str, query: &str) -> Res<Answer> {
    let bearer = format!("Bearer {access}");
    verify_with(server, Method::GET, query, &[("authorization", &bearer)]).await
}

/// `GET /auth/verify` with `access` and the required-scope header `name: value`.
async fn verify_header(server: &Server, access: &str, name: &str, value: &str) -> Res<Answer> {
    let bearer = format!("Bearer {access}");
    verify_with(
        server,
        Method::GET,
        "",
        &[("authorization", &bearer), (name, value)],
    )
    .await
}

/// The identity headers that must answer for `access` (headers named with `prefix`): read
/// from its claims and from `/api`, independently of the server's forward-auth code; Email
/// only for a person; `scopes` space-separated.
async fn expected_identity(
    server: &Server,
    access: &str,
    prefix: &str,
    role: &str,
    scopes: &str,
) -> Res<BTreeMap<String, String>> {
    let claims = jwt_claims(access)?;
    let me = call(server, access, ME, json!({})).await?;
    let me = &me["data"]["authenticatedUser"];
    let email = me["email"]
        .as_str()
        .ok_or_else(|| format!("no email: {me}"))?;
    let claim = |name: &str| -> Res<String> {
        Ok(claims[name]
            .as_str()
            .ok_or_else(|| format!("no {name} claim: {claims}"))?
            .to_owned())
    };
    let kind = if email.is_empty() {
        "service"
    } else {
        "person"
    };
    let values = [
        ("User-Id", claim("sub")?),
        ("Email", email.to_owned()),
        ("Name", text(&me["name"])?),
        ("Organization", claim("tid")?),
        ("Role", role.to_owned()),
        ("Kind", kind.to_owned()),
        ("Scopes", sorted(scopes)),
        ("Session", claim("sid")?),
        ("Client", claim("client_id")?),
    ];
    Ok(values
        .into_iter()
        .filter(|(field, _)| !(*field == "Email" && email.is_empty()))
        .map(|(field, value)| (format!("{prefix}{field}").to_ascii_lowercase(), value))
        .collect())
}

/// A token `name` that `access` mints for itself (or for the service account `sa`) with
/// `scopes` (`None`: unrestricted), exchanged: the refresh token and an access token.
async fn mint(
    server: &Server,
    access: &str,
    name: &str,
    scopes: Option<&[&str]>,
    sa: Option<&str>,
) -> Res<(String, String)> {
    let payload = must(
        server,
        access,
        CREATE_TOKEN,
        json!({ "name": name, "scopes": scopes, "sa": sa }),
        "createToken",
    )
    .await?;
    let token = text(&payload["token"])?;
    let access = exchange(server, &token, None).await?;
    Ok((token, access))
}

/// A member added by the operator with an unrestricted token: (public id, refresh, access).
async fn member(
    server: &Server,
    data: &Path,
    email: &str,
    role: &str,
) -> Res<(String, String, String)> {
    let id = add_member(data, email, role)?;
    let token = named_token(data, email, "forward-auth")?;
    let access = exchange(server, &token, None).await?;
    Ok((id, token, access))
}

#[tokio::test]
async fn identity_headers_for_people_and_service_accounts_on_any_method() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = owner_access(&server, data).await?;
    let (ian_id, _, ian) = member(&server, data, "ian@fa.test", "Integrator").await?;
    let (_, _, rita) = member(&server, data, "rita@fa.test", "Restricted Integrator").await?;
    // A name beyond ASCII travels as its UTF-8 bytes.
    let name = json!({ "id": ian_id, "name": "Ïan Ørsted-Ñúñez 李" });
    must(&server, &owner, UPDATE_NAME, name, "updateUser").await?;

    // People: every identity header, exactly, and nothing else under the prefix.
    for (access, role, scopes) in [
        (&owner, "Owner", ALL_BUILT_IN),
        (&ian, "Integrator", MEMBER_BUILT_IN),
        (&rita, "Restricted Integrator", MEMBER_BUILT_IN),
    ] {
        let answer = verify(&server, access).await?;
        answer.expect_allowed(role)?;
        let expected = expected_identity(&server, access, DEFAULT_PREFIX, role, scopes).await?;
        assert_eq!(answer.identity(DEFAULT_PREFIX)?, expected, "{role}");
        assert!(expected.contains_key("x-prism-email"), "{expected:?}");
    }
    let ian_identity = verify(&server, &ian).await?.identity(DEFAULT_PREFIX)?;
    assert_eq!(
        ian_identity.get("x-prism-email").map(String::as_str),
        Some("ian@fa.test")
    );
    assert_eq!(
        ian_identity.get("x-prism-kind").map(String::as_str),
        Some("person")
    );
    assert_eq!(
        ian_identity.get("x-prism-name").map(String::as_str),
        Some("Ïan Ørsted-Ñúñez 李")
    );

    // Any method: the proxy forwards the client's.
    for method in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ] {
        let bearer = format!("Bearer {ian}");
        let answer =
            verify_with(&server, method.clone(), "", &[("authorization", &bearer)]).await?;
        answer.expect_allowed(method.as_str())?;
        assert_eq!(answer.identity(DEFAULT_PREFIX)?, ian_identity, "{method}");
        // And without a token, 401 whatever the method.
        let answer = verify_with(&server, method.clone(), "", &[]).await?;
        assert_eq!(answer.status, 401, "{method} without a token");
    }
    // A request body (the proxy may pass one) changes nothing.
    let answer = Answer::read(
        server
            .http
            .post(server.url("/auth/verify"))
            .header("authorization", format!("Bearer {ian}"))
            .header("content-type", "application/json")
            .body(r#"{"anything": true}"#)
            .send()
            .await?,
    )
    .await?;
    answer.expect_allowed("POST with a body")?;
    assert_eq!(answer.identity(DEFAULT_PREFIX)?, ian_identity);

    // A service account: kind service, no Email at all; its role and token scopes.
    let roles = role_ids(&server, &owner).await?;
    let sa = create_sa(&server, &owner, "deployer", &role_of(&roles, "Integrator")?).await?;
    let (_, sa_access) = mint(&server, &owner, "sa-unrestricted", None, Some(&sa)).await?;
    let answer = verify(&server, &sa_access).await?;
    answer.expect_allowed("service account")?;
    let identity = answer.identity(DEFAULT_PREFIX)?;
    assert_eq!(
        identity,
        expected_identity(
            &server,
            &sa_access,
            DEFAULT_PREFIX,
            "Integrator",
            MEMBER_BUILT_IN
        )
        .await?
    );
    assert_eq!(
        identity.get("x-prism-kind").map(String::as_str),
        Some("service")
    );
    assert_eq!(
        identity.get("x-prism-name").map(String::as_str),
        Some("deployer")
    );
    assert!(!identity.contains_key("x-prism-email"), "{identity:?}");
    assert!(answer.header("x-prism-email").is_none());
    // A restricted token of it: only the scopes it names.
    let (_, sa_read) = mint(&server, &owner, "sa-read", Some(&["users:read"]), Some(&sa)).await?;
    let answer = verify(&server, &sa_read).await?;
    answer.expect_allowed("restricted service account token")?;
    assert_eq!(answer.header("x-prism-scopes"), Some("users:read"));
    assert_eq!(
        answer.identity(DEFAULT_PREFIX)?,
        expected_identity(
            &server,
            &sa_read,
            DEFAULT_PREFIX,
            "Integrator",
            "users:read"
        )
        .await?
    );
    // The same for a person's restricted token.
    let (_, ian_read) = mint(&server, &ian, "ian-read", Some(&["users:read"]), None).await?;
    let answer = verify(&server, &ian_read).await?;
    answer.expect_allowed("restricted token")?;
    assert_eq!(
        answer.identity(DEFAULT_PREFIX)?,
        expected_identity(
            &server,
            &ian_read,
            DEFAULT_PREFIX,
            "Integrator",
            "users:read"
        )
        .await?
    );
    stop_clean(server)
}

#[tokio::test]
async fn no_token_and_tokens_that_do_not_stand_get_the_rfc_6750_challenges() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = owner_access(&server, data).await?;
    let owner_refresh = named_token(data, "owner@localhost", "refresh-as-bearer")?;

    // No token (or no bearer one): the plain challenge, no error code (RFC 6750 §3.1).
    for headers in [
        vec![],
        vec![("authorization", "Basic b3duZXI6c2VjcmV0")],
        vec![("authorization", "Bearer")],
        vec![("authorization", "Bearer   ")],
    ] {
        let answer = verify_with(&server, Method::GET, "", &headers).await?;
        assert_eq!(answer.status, 401, "{headers:?}: {}", answer.body);
        assert_eq!(
            answer.header("www-authenticate"),
            Some(r#"Bearer realm="prism""#),
            "{headers:?}"
        );
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert!(answer.identity(DEFAULT_PREFIX)?.is_empty());
    }

    // Tokens that are not a standing access token of this server: invalid_token.
    let mut refused = tokens_that_do_not_stand(&owner).await?;
    refused.push((owner_refresh.clone(), "a refresh token as the bearer"));
    for (token, what) in &refused {
        let answer = verify(&server, token).await?;
        answer.expect_invalid_token(what)?;
        assert!(answer.identity(DEFAULT_PREFIX)?.is_empty(), "{what}");
    }
    // The real one still passes.
    verify(&server, &owner).await?.expect_allowed("the owner")?;
    stop_clean(server)
}

#[tokio::test]
async fn an_expired_access_token_is_refused_as_invalid_token() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let options = Options {
        args: vec!["--access-token-ttl".into(), "3s".into()],
        ..Options::default()
    };
    let server = Server::start_with(data, options)?;
    let access = owner_access(&server, data).await?;
    verify(&server, &access)
        .await?
        .expect_allowed("a fresh token")?;
    // Until its exp has passed (whole seconds: exp <= now is expired).
    let exp = jwt_claims(&access)?["exp"].as_u64().ok_or("no exp")?;
    let expired_at = std::time::UNIX_EPOCH + Duration::from_secs(exp);
    if let Ok(wait) = expired_at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(200)).await;
    }
    let answer = verify(&server, &access).await?;
    answer.expect_invalid_token("an expired token")?;
    assert!(
        answer.json()["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("expired")),
        "{}",
        answer.body
    );
    stop_clean(server)
}

#[tokio::test]
async fn required_scopes_from_the_query_and_the_header() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = owner_access(&server, data).await?;
    let (_, _, gus) = member(&server, data, "gus@fa.test", "Guest").await?;
    let (_, _, ian) = member(&server, data, "ian@fa.test", "Integrator").await?;
    let (_, ian_read) = mint(&server, &ian, "read-only", Some(&["users:read"]), None).await?;
    let header = "X-Prism-Required-Scope";

    // Built-in scopes the token holds: allowed, from the query (space, '+', comma) or the
    // header (repeated too), or both at once.
    for query in [
        "?scope=users:read",
        "?scope=users:read%20sessions:read",
        "?scope=users:read+sessions:read",
        "?scope=users:read,sessions:read",
        "?scope=audit:read&scope=users:read",
    ] {
        verify_scoped(&server, &owner, query)
            .await?
            .expect_allowed(&format!("owner {query}"))?;
    }
    for query in ["?scope=users:read", "?scope=users:read+sessions:read"] {
        verify_scoped(&server, &gus, query)
            .await?
            .expect_allowed(&format!("guest {query}"))?;
    }
    verify_header(&server, &gus, header, "users:read")
        .await?
        .expect_allowed("guest, header")?;
    let bearer = format!("Bearer {gus}");
    verify_with(
        &server,
        Method::GET,
        "?scope=users:read",
        &[
            ("authorization", &bearer),
            (header, "sessions:read"),
            (header, "profile:write, sessions:write"),
        ],
    )
    .await?
    .expect_allowed("guest, query and repeated headers")?;
    // The header is case-insensitive, as every HTTP header.
    verify_header(&server, &gus, "x-prism-required-scope", "users:read")
        .await?
        .expect_allowed("lower-case header")?;

    // Built-in scopes not held: by the role (a Guest), or by the token (restricted).
    verify_scoped(&server, &gus, "?scope=audit:read")
        .await?
        .expect_insufficient("audit:read", "audit:read", "guest audit:read")?;
    verify_header(&server, &gus, header, "users:write")
        .await?
        .expect_insufficient("users:write", "users:write", "guest users:write (header)")?;
    verify_scoped(&server, &gus, "?scope=users:read+org:admin")
        .await?
        .expect_insufficient(
            "org:admin users:read",
            "org:admin",
            "guest users:read org:admin",
        )?;
    verify_scoped(&server, &ian_read, "?scope=users:read")
        .await?
        .expect_allowed("restricted token, its scope")?;
    verify_scoped(&server, &ian_read, "?scope=sessions:read")
        .await?
        .expect_insufficient("sessions:read", "sessions:read", "restricted token")?;
    let bearer = format!("Bearer {ian_read}");
    verify_with(
        &server,
        Method::GET,
        "?scope=users:read",
        &[("authorization", &bearer), (header, "sessions:write")],
    )
    .await?
    .expect_insufficient(
        "sessions:write users:read",
        "sessions:write",
        "restricted token, query and header",
    )?;

    // A required scope that is not an API scope, or more than 16 in all (query and header
    // together): 400 invalid_request (the route is misconfigured). The token is checked
    // first: without one it is the plain 401 whatever the route requires.
    let scopes = |from: usize, to: usize| -> String {
        (from..to)
            .map(|i| format!("s{i}:x"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let seventeen = format!("?scope={}", scopes(0, 17).replace(' ', "+"));
    let ten = format!("?scope={}", scopes(0, 10).replace(' ', "+"));
    let seven = scopes(10, 17);
    for (query, headers) in [
        ("?scope=openid", vec![]),
        ("?scope=users:read+profile", vec![]),
        ("?scope=users:read&scope=profile", vec![]),
        ("", vec![(header, "deploy")]),
        (
            "?scope=users:read",
            vec![(header, "users:read"), (header, "email")],
        ),
        (seventeen.as_str(), vec![]),
        (ten.as_str(), vec![(header, seven.as_str())]),
    ] {
        let bearer = format!("Bearer {owner}");
        let mut with_token = headers.clone();
        with_token.push(("authorization", &bearer));
        let answer = verify_with(&server, Method::GET, query, &with_token).await?;
        assert_eq!(
            (answer.status, answer.json()["error"].as_str()),
            (400, Some("invalid_request")),
            "{query} {headers:?}: {}",
            answer.body
        );
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert!(answer.identity(DEFAULT_PREFIX)?.is_empty());
        let answer = verify_with(&server, Method::GET, query, &headers).await?;
        assert_eq!(answer.status, 401, "{query} {headers:?} without a token");
        assert_eq!(
            answer.header("www-authenticate"),
            Some(r#"Bearer realm="prism""#)
        );
        verify_with(
            &server,
            Method::GET,
            query,
            &[("authorization", "Bearer garbage")],
        )
        .await?
        .expect_invalid_token(&format!("{query} {headers:?} with garbage"))?;
    }
    // Sixteen in all are checked (an organization scope nobody declared is simply not held).
    let answer = verify_with(
        &server,
        Method::GET,
        &ten,
        &[
            ("authorization", &format!("Bearer {owner}")),
            (header, &scopes(10, 16)),
        ],
    )
    .await?;
    answer.expect_insufficient(&sorted(&scopes(0, 16)), "s0:x", "sixteen undeclared scopes")?;

    // Other query parameters are ignored; `scope` may repeat.
    verify_scoped(
        &server,
        &gus,
        "?rd=https%3A%2F%2Fexample.com%2F&scope=users:read&x=1",
    )
    .await?
    .expect_allowed("other parameters")?;
    verify_scoped(&server, &gus, "?scope=users:read&scope=audit:read")
        .await?
        .expect_insufficient("audit:read users:read", "audit:read", "scope twice")?;

    // Every path below /auth/verify/ is the same check (Envoy's ext_authz appends the
    // client's path), with its query.
    let guest_identity = verify(&server, &gus).await?.identity(DEFAULT_PREFIX)?;
    // "/" last: a request for the root of the service, as Envoy asks about it.
    for path in ["/deploy/now", "/a/b/c.json", "/"] {
        let answer = verify_scoped(&server, &gus, path).await?;
        answer.expect_allowed(path)?;
        assert_eq!(answer.identity(DEFAULT_PREFIX)?, guest_identity, "{path}");
        verify_scoped(&server, &gus, &format!("{path}?scope=audit:read"))
            .await?
            .expect_insufficient("audit:read", "audit:read", path)?;
        verify_scoped(&server, "garbage", path)
            .await?
            .expect_invalid_token(path)?;
    }
    stop_clean(server)
}

#[tokio::test]
async fn organization_scopes_need_the_token_and_a_grant_of_now() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = owner_access(&server, data).await?;
    let (_, _, ian) = member(&server, data, "ian@fa.test", "Integrator").await?;
    let (_, _, gus) = member(&server, data, "gus@fa.test", "Guest").await?;
    let integrator = role_of(&role_ids(&server, &owner).await?, "Integrator")?;
    must(
        &server,
        &owner,
        CREATE_SCOPE,
        json!({ "name": "deploy:prod", "description": "Deploy to production" }),
        "createScope",
    )
    .await?;
    let deploy = "?scope=deploy:prod";
    // Declared but granted to nobody: nobody holds it, not even an unrestricted Owner.
    verify_scoped(&server, &owner, deploy)
        .await?
        .expect_insufficient("deploy:prod", "deploy:prod", "owner, no grant")?;

    let grant = json!({ "scope": "deploy:prod", "role": integrator });
    must(&server, &owner, GRANT_TO_ROLE, grant.clone(), "grantScope").await?;
    let (_, ian_deploy) = mint(
        &server,
        &ian,
        "deploy",
        Some(&["deploy:prod", "users:read"]),
        None,
    )
    .await?;
    let (_, ian_read) = mint(&server, &ian, "read", Some(&["users:read"]), None).await?;

    // A restricted token that names it, of a role granted it: allowed, and its Scopes say so.
    let answer = verify_scoped(&server, &ian_deploy, deploy).await?;
    answer.expect_allowed("restricted token naming deploy:prod")?;
    assert_eq!(
        answer.identity(DEFAULT_PREFIX)?,
        expected_identity(
            &server,
            &ian_deploy,
            DEFAULT_PREFIX,
            "Integrator",
            "deploy:prod users:read"
        )
        .await?
    );
    verify_header(
        &server,
        &ian_deploy,
        "X-Prism-Required-Scope",
        "deploy:prod users:read",
    )
    .await?
    .expect_allowed("deploy:prod and users:read by the header")?;
    // An unrestricted token of a role granted it: allowed.
    let answer = verify_scoped(&server, &ian, deploy).await?;
    answer.expect_allowed("unrestricted Integrator")?;
    assert_eq!(
        answer.header("x-prism-scopes").map(sorted),
        Some(sorted(&format!("{MEMBER_BUILT_IN} deploy:prod")))
    );
    // A token that does not name it, or a role not granted it: refused.
    verify_scoped(&server, &ian_read, deploy)
        .await?
        .expect_insufficient("deploy:prod", "deploy:prod", "a token not naming it")?;
    verify_scoped(&server, &gus, deploy)
        .await?
        .expect_insufficient("deploy:prod", "deploy:prod", "a Guest")?;
    verify_scoped(&server, &owner, deploy)
        .await?
        .expect_insufficient("deploy:prod", "deploy:prod", "an Owner, not granted")?;

    // The grant withdrawn: the very next call refuses, for the same access tokens.
    must(
        &server,
        &owner,
        REVOKE_FROM_ROLE,
        grant.clone(),
        "revokeScope",
    )
    .await?;
    verify_scoped(&server, &ian_deploy, deploy)
        .await?
        .expect_insufficient(
            "deploy:prod",
            "deploy:prod",
            "restricted token, grant revoked",
        )?;
    verify_scoped(&server, &ian, deploy)
        .await?
        .expect_insufficient(
            "deploy:prod",
            "deploy:prod",
            "unrestricted token, grant revoked",
        )?;
    // The token itself still stands for what it holds otherwise, and its Scopes header lists
    // only what holds now: not deploy:prod, whose grant was withdrawn (an organization scope
    // is listed only when the route required it and the grants of now allowed it).
    let answer = verify_scoped(&server, &ian_deploy, "?scope=users:read").await?;
    answer.expect_allowed("users:read after the revoke")?;
    assert_eq!(
        answer.header("x-prism-scopes").map(sorted),
        Some(sorted("users:read")),
        "the Scopes header of a token whose deploy:prod grant was withdrawn"
    );
    // Granted again: allowed again (a rule of now, not a write into the token).
    must(&server, &owner, GRANT_TO_ROLE, grant, "grantScope").await?;
    verify_scoped(&server, &ian_deploy, deploy)
        .await?
        .expect_allowed("granted again")?;
    stop_clean(server)
}

#[tokio::test]
async fn revocations_and_removals_are_refused_on_the_very_next_call() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = owner_access(&server, data).await?;

    // Revoke-all with the refresh token (/auth/revoke): the access token, already verified
    // (and cached), is refused on the next call.
    let (_, ada_refresh, ada) = member(&server, data, "ada@fa.test", "Integrator").await?;
    for _ in 0..3 {
        verify(&server, &ada)
            .await?
            .expect_allowed("before the revoke")?;
    }
    let (status, body) = server.revoke(&ada_refresh).await?;
    assert_eq!(status, 200, "{body}");
    verify(&server, &ada)
        .await?
        .expect_invalid_token("after revoke-all")?;
    verify_scoped(&server, &ada, "?scope=users:read")
        .await?
        .expect_invalid_token("after revoke-all, with a scope")?;

    // One session revoked by a manager: the one `current` for the token's own view.
    let (_, _, bob) = member(&server, data, "bob@fa.test", "Integrator").await?;
    verify(&server, &bob).await?.expect_allowed("bob")?;
    revoke_current_session(&server, &owner, &bob).await?;
    verify(&server, &bob)
        .await?
        .expect_invalid_token("after its session was revoked")?;

    // A user removed.
    let (cy_id, _, cy) = member(&server, data, "cy@fa.test", "Integrator").await?;
    verify(&server, &cy).await?.expect_allowed("cy")?;
    must(
        &server,
        &owner,
        DELETE_USER,
        json!({ "id": cy_id }),
        "deleteUser",
    )
    .await?;
    verify(&server, &cy)
        .await?
        .expect_invalid_token("a removed user")?;

    // A service account removed.
    let guest = role_of(&role_ids(&server, &owner).await?, "Guest")?;
    let sa = create_sa(&server, &owner, "bot", &guest).await?;
    let (_, sa_access) = mint(&server, &owner, "bot", None, Some(&sa)).await?;
    verify(&server, &sa_access)
        .await?
        .expect_allowed("the bot")?;
    must(
        &server,
        &owner,
        DELETE_SA,
        json!({ "id": sa }),
        "deleteServiceAccount",
    )
    .await?;
    verify(&server, &sa_access)
        .await?
        .expect_invalid_token("a removed service account")?;

    // Others are untouched.
    verify(&server, &owner).await?.expect_allowed("the owner")?;
    stop_clean(server)
}

#[tokio::test]
async fn the_header_prefix_flag_renames_every_header() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let options = Options {
        args: vec!["--forward-auth-header-prefix".into(), "X-Auth-".into()],
        ..Options::default()
    };
    let server = Server::start_with(data, options)?;
    let owner = owner_access(&server, data).await?;
    let (_, _, gus) = member(&server, data, "gus@fa.test", "Guest").await?;

    let answer = verify(&server, &gus).await?;
    answer.expect_allowed("guest")?;
    assert_eq!(
        answer.identity("X-Auth-")?,
        expected_identity(&server, &gus, "X-Auth-", "Guest", MEMBER_BUILT_IN).await?
    );
    assert_eq!(answer.identity("X-Auth-")?.len(), FIELDS.len());
    assert!(
        answer.identity(DEFAULT_PREFIX)?.is_empty(),
        "{:?}",
        answer.headers
    );
    // The required-scope header is renamed too; the default name means nothing here.
    verify_header(&server, &gus, "X-Auth-Required-Scope", "audit:read")
        .await?
        .expect_insufficient("audit:read", "audit:read", "X-Auth-Required-Scope")?;
    verify_header(&server, &gus, "X-Prism-Required-Scope", "audit:read")
        .await?
        .expect_allowed("X-Prism-Required-Scope under the X-Auth- prefix")?;
    verify_header(&server, &owner, "X-Auth-Required-Scope", "audit:read")
        .await?
        .expect_allowed("the owner holds audit:read")?;
    stop_clean(server)?;

    // A prefix that is not a header name is refused at start.
    let bad = Server::start_with(
        temp_dir()?.path(),
        Options {
            args: vec!["--forward-auth-header-prefix".into(), "X Prism:".into()],
            ..Options::default()
        },
    );
    assert!(bad.is_err(), "prismd started with the prefix \"X Prism:\"");
    Ok(())
}

#[tokio::test]
async fn metrics_count_each_outcome_exactly() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let series = |outcome: &str| format!(r#"prismd_forward_auth_total{{outcome="{outcome}"}}"#);
    let count =
        async |outcome: &str| scraped_value(&server.http, &server.base, &series(outcome)).await;
    for outcome in ["allowed", "refused", "insufficient_scope", "other"] {
        assert_eq!(count(outcome).await?, 0.0, "{outcome} before any call");
    }
    let owner = owner_access(&server, data).await?;
    let (_, _, gus) = member(&server, data, "gus@fa.test", "Guest").await?;
    // 4 allowed, 3 refused (no token, garbage, a revoked one), 2 insufficient, 1 other.
    for access in [&owner, &gus, &owner] {
        verify(&server, access).await?.expect_allowed("allowed")?;
    }
    verify_scoped(&server, &owner, "?scope=audit:read")
        .await?
        .expect_allowed("allowed with a scope")?;
    assert_eq!(
        verify_with(&server, Method::GET, "", &[]).await?.status,
        401
    );
    verify(&server, "garbage")
        .await?
        .expect_invalid_token("garbage")?;
    let (_, cy_refresh, cy) = member(&server, data, "cy@fa.test", "Integrator").await?;
    server.revoke(&cy_refresh).await?;
    verify(&server, &cy)
        .await?
        .expect_invalid_token("revoked")?;
    for scope in ["?scope=audit:read", "?scope=org:admin"] {
        assert_eq!(verify_scoped(&server, &gus, scope).await?.status, 403);
    }
    assert_eq!(
        verify_scoped(&server, &gus, "?scope=nonsense")
            .await?
            .status,
        400
    );
    for (outcome, expected) in [
        ("allowed", 4.0),
        ("refused", 3.0),
        ("insufficient_scope", 2.0),
        ("other", 1.0),
    ] {
        assert_eq!(count(outcome).await?, expected, "{outcome}");
    }
    stop_clean(server)
}

// ---------------------------------------------------------------------------------------------
// Through a real nginx.

/// What the upstream received: one entry per request.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Received>>>);

#[derive(Debug, Clone)]
struct Received {
    method: String,
    uri: String,
    /// Every header, lower-cased names, in order (repeats kept).
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn count(&self) -> Res<usize> {
        Ok(self.0.lock().map_err(|_| "poisoned")?.len())
    }

    fn last(&self) -> Res<Received> {
        Ok(self
            .0
            .lock()
            .map_err(|_| "poisoned")?
            .last()
            .ok_or("the upstream received nothing")?
            .clone())
    }
}

impl Received {
    fn identity(&self) -> Res<BTreeMap<String, String>> {
        identity_headers(
            self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            DEFAULT_PREFIX,
        )
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Answers every request with the headers it received, as JSON, and records it.
async fn echo(
    State(seen): State<Seen>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let answer = json!({
        "method": method.as_str(),
        "uri": uri.to_string(),
        "headers": headers,
    });
    if let Ok(mut seen) = seen.0.lock() {
        seen.push(Received {
            method: method.as_str().to_owned(),
            uri: uri.to_string(),
            headers,
            body: body.to_vec(),
        });
    }
    axum::Json(answer)
}

/// The upstream on a free loopback port: its `host:port` and what it received.
async fn start_upstream() -> Res<(String, Seen)> {
    let seen = Seen::default();
    let app = Router::new().fallback(echo).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((address, seen))
}

/// The nginx binary: on PATH, or Debian's (`/usr/sbin` is not on a non-root PATH).
fn nginx_binary() -> Res<PathBuf> {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("nginx"))
                .collect()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|path| path.is_file())
        .ok_or_else(|| {
            "no nginx binary (on PATH or /usr/sbin/nginx): these tests run a real nginx; \
             scripts/test.sh installs it (Debian's package nginx, or nginx-light), or run \
             `apt-get install nginx`"
                .into()
        })
}

/// A running nginx with the documented configuration ([`DocumentedNginx`]), everything it
/// writes inside its own directory.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    pub base: String,
}

/// The nginx configuration of docs/forward-auth.md, as written there: the first two `nginx`
/// blocks of its nginx section, the identity snippet (`snippets/prism-identity.conf`) and the
/// site. Only what ties it to a real machine is replaced: the addresses of prismd and the
/// service, and the TLS listener (these tests speak plain HTTP on a free port).
struct DocumentedNginx {
    snippet: String,
    site: String,
}

/// Where the documented site includes the snippet from (relative to nginx.conf).
const SNIPPET_INCLUDE: &str = "include snippets/prism-identity.conf;";

impl DocumentedNginx {
    fn read(listen: &str, prismd: &str, api: &str) -> Res<Self> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/forward-auth.md");
        let doc = std::fs::read_to_string(path)?;
        let section = doc
            .split("\n## nginx\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .ok_or("docs/forward-auth.md has no \"## nginx\" section")?;
        let blocks: Vec<&str> = section
            .split("```nginx\n")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .collect();
        let [snippet, site, ..] = blocks.as_slice() else {
            return Err(format!(
                "docs/forward-auth.md's nginx section has {} nginx blocks, not the snippet and \
                 the site",
                blocks.len()
            )
            .into());
        };
        if !site.contains(SNIPPET_INCLUDE) {
            return Err(format!("the documented site does not say {SNIPPET_INCLUDE}").into());
        }
        let site = replace_once(site, "server 127.0.0.1:8080;", &format!("server {prismd};"))?;
        let site = replace_once(&site, "server 127.0.0.1:3000;", &format!("server {api};"))?;
        let site = replace_once(&site, "listen 443 ssl;", &format!("listen {listen};"))?;
        let site: String = site
            .lines()
            .filter(|line| !line.trim_start().starts_with("ssl_certificate"))
            .map(|line| format!("{line}\n"))
            .collect();
        Ok(Self {
            snippet: (*snippet).to_owned(),
            site,
        })
    }
}

/// `text` with `from` replaced by `to`, failing unless `from` occurs exactly once (the
/// documented configuration changed: this test must follow).
fn replace_once(text: &str, from: &str, to: &str) -> Res<String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => Err(format!(
            "the nginx site of docs/forward-auth.md holds {from:?} {n} times, not once: \
             update tests/e2e/forward_auth.rs"
        )
        .into()),
    }
}

impl Nginx {
    /// Starts nginx with the documented configuration in front of prismd at `prismd` and the
    /// service at `api` (`host:port` each), on a free loopback port (another is tried if that
    /// one is taken before nginx binds it).
    fn start(prismd: &str, api: &str) -> Res<Self> {
        let binary = nginx_binary()?;
        let mut last_error = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new().prefix("prism-nginx-").tempdir()?;
            let listen = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .to_string();
            let documented = DocumentedNginx::read(&listen, prismd, api)?;
            std::fs::create_dir(dir.path().join("snippets"))?;
            std::fs::write(
                dir.path().join("snippets/prism-identity.conf"),
                &documented.snippet,
            )?;
            std::fs::write(dir.path().join("site.conf"), &documented.site)?;
            std::fs::write(
                dir.path().join("nginx.conf"),
                Self::main_config(dir.path())?,
            )?;
            let child = Command::new(&binary)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let mut nginx = Self {
                child,
                dir,
                base: format!("http://{listen}"),
            };
            match nginx.until_listening(&listen) {
                Ok(()) => return Ok(nginx),
                Err(err) => last_error = err.to_string(),
            }
            if !last_error.contains("in use") {
                break;
            }
        }
        Err(format!("nginx did not start: {last_error}").into())
    }

    /// nginx.conf: the documented site (`site.conf`) in a main context that keeps every file
    /// nginx writes in `dir` (`user` only as root: workers then run as root, which may enter
    /// the private temporary directory; otherwise they run as this user).
    fn main_config(dir: &Path) -> Res<String> {
        let dir = dir.to_str().ok_or("the temporary directory is not UTF-8")?;
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")?;
        let user = if as_root { "user root;\n" } else { "" };
        Ok(format!(
            "{user}worker_processes 1;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/error.log info;\n\
             events {{ worker_connections 128; }}\n\
             http {{\n\
             access_log {dir}/access.log;\n\
             client_body_temp_path {dir}/client_body;\n\
             proxy_temp_path {dir}/proxy;\n\
             fastcgi_temp_path {dir}/fastcgi;\n\
             uwsgi_temp_path {dir}/uwsgi;\n\
             scgi_temp_path {dir}/scgi;\n\
             include {dir}/site.conf;\n\
             }}\n"
        ))
    }

    /// Waits until nginx accepts connections on `listen`; fails with its error log when it
    /// exits first or takes more than 20 s.
    fn until_listening(&mut self, listen: &str) -> TestResult {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("nginx exited ({status}): {}", self.error_log()).into());
            }
            if TcpStream::connect(listen).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("nginx is not listening: {}", self.error_log()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master stops its workers too (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What nginx passes on of prismd's identity headers: an empty value sends no header.
fn passed_on(identity: BTreeMap<String, String>) -> BTreeMap<String, String> {
    identity
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect()
}

/// A request through nginx with `access` as the bearer (when given) and `headers`.
async fn through(
    http: &reqwest::Client,
    nginx: &Nginx,
    method: Method,
    path: &str,
    access: Option<&str>,
    headers: &[(&str, &str)],
) -> Res<Answer> {
    let mut request = http.request(method, nginx.url(path));
    if let Some(access) = access {
        request = request.header("authorization", format!("Bearer {access}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Answer::read(request.send().await?).await
}

/// Identity headers a client forges: each of prismd's, some under other spellings.
const FORGED: [(&str, &str); 13] = [
    ("X-Prism-User-Id", "00000000-0000-0000-0000-000000000000"),
    ("X-Prism-Email", "mallory@evil.test"),
    ("X-Prism-Name", "Mallory"),
    ("X-Prism-Organization", "another-tenant"),
    ("X-Prism-Role", "Owner"),
    ("X-Prism-Kind", "person"),
    ("X-Prism-Scopes", "org:admin audit:read deploy:prod"),
    ("X-Prism-Session", "forged-session"),
    ("X-Prism-Client", "forged-client"),
    ("x-prism-role", "Owner"),
    ("X_Prism_Role", "Owner"),
    ("X_Prism_User_Id", "00000000-0000-0000-0000-000000000000"),
    // Not an identity header, but the service must not see the client's either.
    ("X-Prism-Required-Scope", "sessions:write"),
];

#[tokio::test]
async fn through_a_real_nginx_only_prismd_identities_reach_the_upstream() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = owner_access(&server, data).await?;
    let (gus_id, gus_refresh, gus) = member(&server, data, "gus@fa.test", "Guest").await?;
    let name = json!({ "id": gus_id, "name": "Güs Ørsted 李" });
    must(&server, &owner, UPDATE_NAME, name, "updateUser").await?;
    let (_, _, ian) = member(&server, data, "ian@fa.test", "Integrator").await?;
    let roles = role_ids(&server, &owner).await?;
    let integrator = role_of(&roles, "Integrator")?;
    let sa = create_sa(&server, &owner, "deployer", &integrator).await?;
    let (_, sa_access) = mint(&server, &owner, "deployer", None, Some(&sa)).await?;
    must(
        &server,
        &owner,
        CREATE_SCOPE,
        json!({ "name": "deploy:prod" }),
        "createScope",
    )
    .await?;
    let grant = json!({ "scope": "deploy:prod", "role": integrator });
    must(&server, &owner, GRANT_TO_ROLE, grant, "grantScope").await?;
    let (_, ian_deploy) = mint(&server, &ian, "deploy", Some(&["deploy:prod"]), None).await?;

    let (api, seen) = start_upstream().await?;
    let prismd_address = server
        .base
        .strip_prefix("http://")
        .ok_or("prismd is not on http://")?
        .to_owned();
    let nginx = Nginx::start(&prismd_address, &api)?;
    // Redirects are answers to look at, not to follow.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let get = Method::GET;

    // A valid token passes; the upstream sees prismd's identity headers exactly (an empty
    // value sends none) and the request as sent.
    for (access, who) in [
        (&gus, "guest"),
        (&ian, "integrator"),
        (&sa_access, "service account"),
    ] {
        let direct = verify(&server, access).await?.identity(DEFAULT_PREFIX)?;
        let answer = through(
            &http,
            &nginx,
            get.clone(),
            "/api/things?x=1",
            Some(access),
            &[],
        )
        .await?;
        assert_eq!(answer.status, 200, "{who}: {}", answer.body);
        let received = seen.last()?;
        assert_eq!(received.uri, "/api/things?x=1");
        let expected = passed_on(direct);
        assert_eq!(received.identity()?, expected, "{who}");
        assert!(expected.contains_key("x-prism-user-id"), "{expected:?}");
        assert_eq!(
            received.header("authorization"),
            Some(format!("Bearer {access}").as_str()),
            "{who}"
        );
    }
    // Any method, with its body, reaches the upstream.
    let answer = Answer::read(
        http.delete(nginx.url("/api/things/7"))
            .header("authorization", format!("Bearer {ian}"))
            .body("payload")
            .send()
            .await?,
    )
    .await?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let received = seen.last()?;
    assert_eq!(
        (received.method.as_str(), received.body.as_slice()),
        ("DELETE", b"payload".as_slice())
    );
    assert_eq!(received.header("x-prism-role"), Some("Integrator"));

    // Forged identity headers with a valid token: the upstream sees prismd's values, each
    // once, and none of the forged ones (a service account's absent Email included).
    for (access, who) in [(&gus, "guest"), (&sa_access, "service account")] {
        let direct = passed_on(verify(&server, access).await?.identity(DEFAULT_PREFIX)?);
        let answer = through(&http, &nginx, get.clone(), "/forged", Some(access), &FORGED).await?;
        assert_eq!(answer.status, 200, "{who}: {}", answer.body);
        let received = seen.last()?;
        assert_eq!(
            received.identity()?,
            direct,
            "{who}: {:?}",
            received.headers
        );
        for (name, value) in FORGED {
            assert!(
                !received
                    .headers
                    .iter()
                    .any(|(_, v)| v == value && !direct.values().any(|d| d == v)),
                "{who}: the forged {name}: {value} reached the upstream: {:?}",
                received.headers
            );
        }
    }
    // Without a token, or with garbage: 401 with the challenge, nothing reaches the upstream.
    let before = seen.count()?;
    for access in [None, Some("garbage")] {
        let answer = through(&http, &nginx, get.clone(), "/forged", access, &FORGED).await?;
        assert_eq!(answer.status, 401, "{access:?}: {}", answer.body);
        assert!(
            answer
                .header("www-authenticate")
                .is_some_and(|c| c.starts_with(r#"Bearer realm="prism""#)),
            "{:?}",
            answer.headers
        );
    }
    assert_eq!(
        seen.count()?,
        before,
        "a refused request reached the upstream"
    );
    // A client asking for a scope on a route that requires none changes nothing.
    let answer = through(
        &http,
        &nginx,
        get.clone(),
        "/anything",
        Some(&gus),
        &[("X-Prism-Required-Scope", "audit:read")],
    )
    .await?;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // /deploy/ requires deploy:prod: 403 without it (nothing reaches the upstream), 200 with.
    let before = seen.count()?;
    for (access, who, expected) in [
        (&gus, "a Guest", 403),
        (&owner, "an Owner (the grant is the Integrators')", 403),
        (&ian, "an unrestricted Integrator", 200),
    ] {
        let answer = through(&http, &nginx, get.clone(), "/deploy/now", Some(access), &[]).await?;
        assert_eq!(
            answer.status, expected,
            "/deploy/ as {who}: {}",
            answer.body
        );
    }
    assert_eq!(
        seen.count()?,
        before + 1,
        "only the Integrator's request passes"
    );
    let answer = through(
        &http,
        &nginx,
        get.clone(),
        "/deploy/now",
        Some(&ian_deploy),
        &FORGED,
    )
    .await?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let received = seen.last()?;
    assert_eq!(received.uri, "/deploy/now");
    // What prismd answers for the same route's requirement (an organization scope is listed
    // only when the route required it).
    let direct = passed_on(
        verify_scoped(&server, &ian_deploy, "?scope=deploy:prod")
            .await?
            .identity(DEFAULT_PREFIX)?,
    );
    assert_eq!(received.identity()?, direct, "{:?}", received.headers);
    assert_eq!(received.header("x-prism-scopes"), Some("deploy:prod"));
    assert_eq!(received.header("x-prism-role"), Some("Integrator"));
    // A client cannot lift the route's requirement with its own header.
    let answer = through(
        &http,
        &nginx,
        get.clone(),
        "/deploy/now",
        Some(&gus),
        &[("X-Prism-Required-Scope", "users:read")],
    )
    .await?;
    assert_eq!(answer.status, 403, "{}", answer.body);
    // nginx relays a 403 without prismd's challenge (docs/forward-auth.md says so).
    assert!(
        answer.header("www-authenticate").is_none(),
        "{:?}",
        answer.headers
    );
    // Other spellings of the guarded path get the same check; `/deploy` is redirected to it.
    let before = seen.count()?;
    for path in ["//deploy/now", "/%64eploy/now", "/deploy//now"] {
        let answer = through(&http, &nginx, get.clone(), path, Some(&gus), &[]).await?;
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
    }
    let answer = through(&http, &nginx, get.clone(), "/deploy", Some(&gus), &[]).await?;
    assert_eq!(answer.status, 301, "/deploy: {}", answer.body);
    assert_eq!(
        seen.count()?,
        before,
        "a path variant of /deploy/ reached the upstream"
    );

    // A revoked token: refused on the very next request (it passed just before).
    let answer = through(
        &http,
        &nginx,
        get.clone(),
        "/before-revoke",
        Some(&gus),
        &[],
    )
    .await?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (status, body) = server.revoke(&gus_refresh).await?;
    assert_eq!(status, 200, "{body}");
    let before = seen.count()?;
    let answer = through(&http, &nginx, get.clone(), "/after-revoke", Some(&gus), &[]).await?;
    assert_eq!(answer.status, 401, "{}", answer.body);
    // nginx relays prismd's challenge with a 401.
    assert!(
        answer
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with(r#"Bearer realm="prism", error="invalid_token""#)),
        "{:?}",
        answer.headers
    );
    assert_eq!(
        seen.count()?,
        before,
        "a revoked token reached the upstream"
    );

    // prismd down: the proxy's error, never a pass, and nothing reaches the upstream.
    let answer = through(&http, &nginx, get.clone(), "/still-up", Some(&ian), &[]).await?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    server.kill_hard()?;
    let before = seen.count()?;
    for path in ["/prismd-down", "/deploy/prismd-down"] {
        for access in [Some(ian.as_str()), Some(ian_deploy.as_str()), None] {
            let answer = through(&http, &nginx, get.clone(), path, access, &FORGED).await?;
            assert!(
                [500, 502, 503].contains(&answer.status),
                "{path} with prismd down answered {}: {}",
                answer.status,
                answer.body
            );
        }
    }
    assert_eq!(
        seen.count()?,
        before,
        "a request reached the upstream while prismd was down"
    );
    Ok(())
}
