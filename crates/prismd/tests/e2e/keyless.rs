//! Keyless CI (issue 18) end to end: a CI pipeline's OIDC token, minted by an issuer inside the
//! test process (oidc_issuer.rs), is exchanged at `/auth/exchange` and at `/oauth/token` (RFC
//! 8693) for an access token of a service account, through a trust policy of its organization.
//! Covered: every accepted algorithm; claim conditions (exact, glob, stable subject); wrong
//! issuer, audience and times; algorithm confusion and forgeries; key rotation and an issuer
//! that is down; one use per token, also across PostgreSQL replicas; disabling, changing and
//! deleting a policy, and removing its service account, end its tokens at once; scopes; who may
//! manage policies and what input they refuse; the audit trail.

use std::path::Path;
use std::time::Instant;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::harness::{
    CHANGE_REACH_BOUND, Options, Server, TestResult, admin_ok, jwt_claims, temp_dir,
};
use crate::oidc_issuer::{Alg, Issuer, now};
use crate::postgres::FreshDatabase;
use crate::scopes::{
    CREATE_TOKEN, CREATE_USER, DELETE_SA, REVOKE_ALL, Res, add_member, call, claim_scope,
    create_sa, exchange, first_error, must, named_token, owner_access, refused, role_id, role_ids,
    role_of, stop_clean, text,
};

/// The audience the CI tokens are minted for (what a workflow passes to its token request).
const AUD: &str = "https://prism.keyless.test";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The spec's refusal of a token whose issuer no enabled policy names (followed by the issuer).
const NO_POLICY: &str = "no trust policy accepts tokens from the issuer";
/// The spec's refusal of a token whose `aud` no policy of its issuer expects.
const WRONG_AUDIENCE: &str = "the token's audience is not one a trust policy of the issuer";

macro_rules! policy_fields {
    () => {
        "id name description issuer audience conditions { claim match value } \
         serviceAccount { id name } scopes accessTokenLifetimeSeconds maxTokenAgeSeconds \
         enabled createdAt updatedAt lastUsedAt"
    };
}
const CREATE_POLICY: &str = concat!(
    "mutation($input: CreateTrustPolicyInput!) { createTrustPolicy(input: $input) { trustPolicy { ",
    policy_fields!(),
    " } errors { field messages } } }"
);
const UPDATE_POLICY: &str = concat!(
    "mutation($input: UpdateTrustPolicyInput!) { updateTrustPolicy(input: $input) { trustPolicy { ",
    policy_fields!(),
    " } errors { field messages } } }"
);
const DELETE_POLICY: &str =
    "mutation($id: ID!) { deleteTrustPolicy(id: $id) { deleted errors { field messages } } }";
const POLICIES: &str = concat!("{ trustPolicies { ", policy_fields!(), " } }");
const ME: &str = "{ authenticatedUser { id tenantId } }";
const EVENTS: &str = "query($action: String) { auditEvents(filter: {action: $action}, first: 50) { nodes { action actor actorUserId subjectUserId detail } } }";

// ---------------------------------------------------------------------------------------------
// Servers and the world of one test.

/// The flags every keyless test server runs with: plain-HTTP issuers (the test issuer is
/// `http://127.0.0.1`), an unknown kid refetched at once (rotation without waiting), and a
/// refused-exchange limit that the refusal tables never reach (one test lowers it on purpose).
fn keyless_flags() -> Vec<String> {
    [
        "--oidc-allow-http-issuers",
        "--oidc-jwks-refetch-interval",
        "0s",
        "--refresh-address-max-failures",
        "1000000",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn start(data: &Path, extra: &[&str]) -> Res<Server> {
    let mut args = keyless_flags();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Server::start_with(
        data,
        Options {
            args,
            ..Options::default()
        },
    )
}

/// A server, an issuer, the Owner's access token and a service account to exchange into.
struct World {
    server: Server,
    issuer: Issuer,
    owner: String,
    /// The service account's public id (`serviceAccounts { id }`).
    sa_id: String,
    /// The uuid inside it: the `sub` of its access tokens.
    sa_uuid: String,
    dir: tempfile::TempDir,
}

impl World {
    /// With a service account `deployer` of `role`.
    async fn new(role: &str) -> Res<Self> {
        Self::with_flags(role, &[]).await
    }

    async fn with_flags(role: &str, extra: &[&str]) -> Res<Self> {
        Self::with_issuer(role, extra, temp_dir()?, Issuer::start().await?).await
    }

    /// With `issuer`, and a server on `dir` started with `extra` flags.
    async fn with_issuer(
        role: &str,
        extra: &[&str],
        dir: tempfile::TempDir,
        issuer: Issuer,
    ) -> Res<Self> {
        let server = start(dir.path(), extra)?;
        let owner = owner_access(&server, dir.path()).await?;
        let role = role_id(&server, &owner, role).await?;
        let sa_id = create_sa(&server, &owner, "deployer", &role).await?;
        let sa_uuid = sa_uuid(&sa_id)?;
        Ok(Self {
            server,
            issuer,
            owner,
            sa_id,
            sa_uuid,
            dir,
        })
    }

    fn data(&self) -> &Path {
        self.dir.path()
    }

    /// The input of a policy `name` for GitHub tokens of `acme/app` (repository 123456) on
    /// `main`, from this world's issuer, into its service account.
    fn github_policy(&self, name: &str) -> Value {
        github_policy(name, &self.issuer.issuer, &self.sa_id)
    }

    /// Creates a policy as the Owner; the policy.
    async fn create(&self, input: Value) -> Res<Value> {
        create_policy(&self.server, &self.owner, input).await
    }

    async fn update(&self, input: Value) -> Res<Value> {
        let payload = must(
            &self.server,
            &self.owner,
            UPDATE_POLICY,
            json!({ "input": input }),
            "updateTrustPolicy",
        )
        .await?;
        Ok(payload["trustPolicy"].clone())
    }

    async fn delete(&self, id: &str) -> TestResult {
        let payload = must(
            &self.server,
            &self.owner,
            DELETE_POLICY,
            json!({ "id": id }),
            "deleteTrustPolicy",
        )
        .await?;
        assert_eq!(payload["deleted"], true, "{payload}");
        Ok(())
    }

    /// A fresh GitHub-shaped RS256 token of this world's issuer, changed by `change`.
    fn github_token(&self, change: impl FnOnce(&mut Value)) -> Res<String> {
        let mut claims = self.issuer.github(AUD);
        change(&mut claims);
        self.issuer.mint(Alg::Rs256, &claims)
    }

    async fn exchange(&self, endpoint: Endpoint, token: &str) -> Res<Answer> {
        exchange_at(&self.server, endpoint, token, &[]).await
    }

    /// Exchanges a fresh GitHub token at `/auth/exchange`; the access token, failing unless
    /// granted.
    async fn access(&self) -> Res<String> {
        let token = self.github_token(|_| {})?;
        granted(
            &self.exchange(Endpoint::Exchange, &token).await?,
            "a fresh token",
        )
    }

    fn stop(self) -> TestResult {
        stop_clean(self.server)
    }
}

fn github_policy(name: &str, issuer: &str, sa_id: &str) -> Value {
    json!({
        "name": name,
        "issuer": issuer,
        "audience": AUD,
        "serviceAccountId": sa_id,
        "conditions": [
            { "claim": "repository_id", "match": "EXACT", "value": "123456" },
            { "claim": "ref", "match": "EXACT", "value": "refs/heads/main" },
        ],
    })
}

async fn create_policy(server: &Server, access: &str, input: Value) -> Res<Value> {
    let payload = must(
        server,
        access,
        CREATE_POLICY,
        json!({ "input": input }),
        "createTrustPolicy",
    )
    .await?;
    Ok(payload["trustPolicy"].clone())
}

/// A `createTrustPolicy` that must be refused; its field errors.
async fn create_refused(server: &Server, access: &str, input: Value) -> Res<Vec<Value>> {
    refused(
        server,
        access,
        CREATE_POLICY,
        json!({ "input": input }),
        "createTrustPolicy",
        "trustPolicy",
    )
    .await
}

/// The uuid inside a service account's public id `base64("ServiceAccount:<uuid>")`.
fn sa_uuid(public: &str) -> Res<String> {
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(public)?)?;
    Ok(decoded
        .strip_prefix("ServiceAccount:")
        .ok_or_else(|| format!("not a ServiceAccount id: {decoded}"))?
        .to_owned())
}

/// The uuid of a public id: the id itself when it is one (the spec's trust policy ids), else
/// the uuid inside `base64("<Type>:<uuid>")` (users and service accounts). The audit trail
/// names policies by uuid; the first test checks the id's form itself.
fn inner_uuid(id: &str) -> Res<String> {
    if uuid::Uuid::parse_str(id).is_ok() {
        return Ok(id.to_owned());
    }
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(id)?)?;
    let uuid = decoded
        .rsplit(':')
        .next()
        .ok_or_else(|| format!("no uuid in {decoded}"))?;
    uuid::Uuid::parse_str(uuid)?;
    Ok(uuid.to_owned())
}

fn remove(claims: &mut Value, name: &str) {
    if let Some(object) = claims.as_object_mut() {
        object.remove(name);
    }
}

// ---------------------------------------------------------------------------------------------
// The exchange and its answers.

/// The two endpoints that exchange a CI token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    /// `POST /auth/exchange`, JSON: `/auth/refresh`'s twin.
    Exchange,
    /// `POST /oauth/token`, the RFC 8693 token-exchange grant.
    OAuth,
}

impl Endpoint {
    const BOTH: [Endpoint; 2] = [Endpoint::Exchange, Endpoint::OAuth];
}

/// An exchange's answer, with the token sent (to check that no error echoes it).
struct Answer {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
    token: String,
    endpoint: Endpoint,
}

impl Answer {
    fn description(&self) -> &str {
        self.body["error_description"].as_str().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Exchanges `token` at `endpoint`, with `extra` parameters (`scope`, `tenant_id`).
async fn exchange_at(
    server: &Server,
    endpoint: Endpoint,
    token: &str,
    extra: &[(&str, &str)],
) -> Res<Answer> {
    let request = match endpoint {
        Endpoint::Exchange => {
            let mut body = json!({ "token": token });
            for (name, value) in extra {
                body[*name] = json!(value);
            }
            server.http.post(server.url("/auth/exchange")).json(&body)
        }
        Endpoint::OAuth => {
            let mut form = vec![
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", token),
                ("subject_token_type", ID_TOKEN_TYPE),
            ];
            form.extend_from_slice(extra);
            server.http.post(server.url("/oauth/token")).form(&form)
        }
    };
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok(Answer {
        status,
        body,
        headers,
        token: token.to_owned(),
        endpoint,
    })
}

/// A granted exchange: its access token, after checking the answer's shape.
fn granted(answer: &Answer, what: &str) -> Res<String> {
    let what = format!("{what} at {:?}", answer.endpoint);
    assert_eq!(answer.status, 200, "{what}: {}", answer.body);
    assert_eq!(answer.header("cache-control"), Some("no-store"), "{what}");
    let body = &answer.body;
    assert_eq!(body["token_type"], "Bearer", "{what}: {body}");
    assert_eq!(
        body["issued_token_type"], ACCESS_TOKEN_TYPE,
        "{what}: {body}"
    );
    assert!(
        body["expires_in"].as_i64().is_some_and(|s| s > 0),
        "{what}: {body}"
    );
    assert!(body.get("refresh_token").is_none(), "{what}: {body}");
    let access = text(&body["access_token"])?;
    assert_eq!(
        body["scope"].as_str(),
        Some(claim_scope(&access)?.as_str()),
        "{what}: the answer's scope is not the token's: {body}"
    );
    Ok(access)
}

/// A refused exchange: `status`, `error`, a description that contains one of `parts` and
/// never the token, `Cache-Control: no-store`, and nothing that looks like an access token.
fn refused_with(answer: &Answer, status: u16, error: &str, parts: &[&str], what: &str) {
    let what = format!("{what} at {:?}", answer.endpoint);
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (status, Some(error)),
        "{what}: {}",
        answer.body
    );
    let description = answer.description();
    assert!(
        parts.iter().any(|part| description.contains(part)),
        "{what}: the description {description:?} says none of {parts:?}"
    );
    assert_eq!(answer.header("cache-control"), Some("no-store"), "{what}");
    assert!(answer.body.get("access_token").is_none(), "{what}");
    if answer.token.len() > 20 {
        assert!(
            !answer.body.to_string().contains(&answer.token),
            "{what}: the error echoes the token"
        );
        // Nor its signature alone.
        if let Some(signature) = answer.token.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(
                !description.contains(signature),
                "{what}: echoes the signature"
            );
        }
    }
}

/// `400 invalid_grant` whose description contains one of `parts`.
fn invalid_grant(answer: &Answer, parts: &[&str], what: &str) {
    refused_with(answer, 400, "invalid_grant", parts, what);
}

/// The access token reads as the service account `sa_id` on `server`.
async fn acts_as(server: &Server, access: &str, sa_id: &str) -> TestResult {
    let body = call(server, access, ME, json!({})).await?;
    assert_eq!(
        body["data"]["authenticatedUser"]["id"], sa_id,
        "the exchanged token is not the service account's: {body}"
    );
    Ok(())
}

/// The access token is refused on `server` (401 on `/api`).
async fn dead(server: &Server, access: &str, what: &str) -> TestResult {
    assert_eq!(server.whoami(access).await?, Err(401), "{what}");
    Ok(())
}

/// A resource server the Owner (`owner`'s token) registers: its client id and secret.
async fn resource_server(server: &Server, owner: &str) -> Res<(String, String)> {
    let body = call(
        server,
        owner,
        "mutation { createResourceServer(name: \"deploys\") { resourceServer { clientId } clientSecret } }",
        json!({}),
    )
    .await?;
    let payload = &body["data"]["createResourceServer"];
    Ok((
        text(&payload["resourceServer"]["clientId"])?,
        text(&payload["clientSecret"])?,
    ))
}

/// What the other two doors say of `access`: introspection's `active` (asked as `client`),
/// and `/auth/verify`'s status.
async fn elsewhere(server: &Server, client: &(String, String), access: &str) -> Res<(bool, u16)> {
    let introspected: Value = server
        .http
        .post(server.url("/oauth/introspect"))
        .basic_auth(&client.0, Some(&client.1))
        .form(&[("token", access)])
        .send()
        .await?
        .json()
        .await?;
    let verified = server
        .http
        .get(server.url("/auth/verify"))
        .bearer_auth(access)
        .send()
        .await?
        .status()
        .as_u16();
    Ok((introspected["active"] == true, verified))
}

/// The policies `access` lists.
async fn policies(server: &Server, access: &str) -> Res<Vec<Value>> {
    let body = call(server, access, POLICIES, json!({})).await?;
    Ok(body["data"]["trustPolicies"]
        .as_array()
        .ok_or_else(|| format!("no trustPolicies: {body}"))?
        .clone())
}

/// The audit events of `action`, newest first.
async fn events(server: &Server, access: &str, action: &str) -> Res<Vec<Value>> {
    let body = call(server, access, EVENTS, json!({ "action": action })).await?;
    Ok(body["data"]["auditEvents"]["nodes"]
        .as_array()
        .ok_or_else(|| format!("no auditEvents: {body}"))?
        .clone())
}

/// What a token of a refusal table must get.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Granted,
    /// 400 `invalid_grant`, the description containing one of these.
    Refused(&'static [&'static str]),
    /// 400 `invalid_grant` for a failed condition on one of these claims, named in the
    /// description ("the claim `ref` does not match the trust policy's condition"; the spec's
    /// backticks may be Markdown, so the bare name counts too).
    Claim(&'static [&'static str]),
}

/// Checks `answer` against `expect`.
fn judge(answer: &Answer, expect: Expect, what: &str) -> TestResult {
    match expect {
        Expect::Granted => {
            granted(answer, what)?;
        }
        Expect::Refused(parts) => invalid_grant(answer, parts, what),
        Expect::Claim(claims) => {
            invalid_grant(
                answer,
                &["does not match the trust policy's condition"],
                what,
            );
            let description = answer.description();
            assert!(
                claims.iter().any(|claim| {
                    description.contains(&format!("claim `{claim}` "))
                        || description.contains(&format!("claim {claim} "))
                }),
                "{what}: {description:?} names none of the claims {claims:?}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The exchange.

#[tokio::test]
async fn github_tokens_of_every_algorithm_exchange_at_both_endpoints() -> TestResult {
    let w = World::new("Integrator").await?;
    let policy = w.create(w.github_policy("deploy")).await?;
    // What was created, with the spec's defaults.
    // A public id, `base64("TrustPolicy:<uuid>")`, like every other id of the API.
    let id = text(&policy["id"])?;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(&id)?)?;
    assert!(
        decoded
            .strip_prefix("TrustPolicy:")
            .is_some_and(|uuid| uuid::Uuid::parse_str(uuid).is_ok()),
        "a trust policy id is base64(\"TrustPolicy:<uuid>\"): {id} = {decoded}"
    );
    assert_eq!(policy["name"], "deploy");
    assert_eq!(policy["issuer"], w.issuer.issuer.as_str());
    assert_eq!(policy["audience"], AUD);
    assert_eq!(
        policy["conditions"],
        json!([
            { "claim": "repository_id", "match": "EXACT", "value": "123456" },
            { "claim": "ref", "match": "EXACT", "value": "refs/heads/main" },
        ])
    );
    assert_eq!(policy["serviceAccount"]["id"], w.sa_id.as_str());
    assert_eq!(policy["serviceAccount"]["name"], "deployer");
    assert_eq!(policy["scopes"], json!([]));
    assert_eq!(policy["accessTokenLifetimeSeconds"], 3600);
    assert_eq!(policy["maxTokenAgeSeconds"], 3600);
    assert_eq!(policy["enabled"], true);
    assert!(policy["lastUsedAt"].is_null(), "{policy}");
    humantime::parse_rfc3339_weak(policy["createdAt"].as_str().ok_or("no createdAt")?)?;

    let mut sessions = Vec::new();
    for alg in Alg::ALL {
        for endpoint in Endpoint::BOTH {
            let what = format!("{alg:?}");
            let token = w.issuer.mint(alg, &w.issuer.github(AUD))?;
            let answer = w.exchange(endpoint, &token).await?;
            let access = granted(&answer, &what)?;
            let expires_in = answer.body["expires_in"].as_i64().unwrap_or(0);
            assert!((3590..=3600).contains(&expires_in), "{what}: {expires_in}");
            // No policy scopes and none asked: the account's whole role, as "".
            assert_eq!(answer.body["scope"], "", "{what}");
            let claims = jwt_claims(&access)?;
            assert_eq!(claims["sub"], w.sa_uuid.as_str(), "{what}: {claims}");
            assert_eq!(claims["client_id"], "keyless", "{what}: {claims}");
            let lifetime = claims["exp"].as_i64().unwrap_or(0) - now();
            assert!((3590..=3600).contains(&lifetime), "{what}: {claims}");
            sessions.push((text(&claims["sid"])?, access.clone()));
            acts_as(&w.server, &access, &w.sa_id).await?;
        }
    }
    // Every exchange is a session of its own (one job's token)...
    let mut sids: Vec<&String> = sessions.iter().map(|(sid, _)| sid).collect();
    sids.sort();
    sids.dedup();
    assert_eq!(sids.len(), sessions.len(), "{sids:?}");
    // ...so revoking one job's access token (RFC 7009) ends that job only.
    let (status, body) = w
        .server
        .post_form("/oauth/revoke", &[("token", &sessions[0].1)])
        .await?;
    assert_eq!(status, 200, "{body}");
    dead(&w.server, &sessions[0].1, "a revoked job's token").await?;
    for (_, access) in &sessions[1..] {
        acts_as(&w.server, access, &w.sa_id).await?;
    }

    // `/oauth/token` also takes the `jwt` token type and asks for an access token explicitly.
    let token = w.github_token(|_| {})?;
    let (status, body) = w
        .server
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &token),
                ("subject_token_type", JWT_TYPE),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
            ],
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE, "{body}");
    acts_as(&w.server, &text(&body["access_token"])?, &w.sa_id).await?;

    // The policy says when it was last used.
    let listed = policies(&w.server, &w.owner).await?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let last_used = listed[0]["lastUsedAt"].as_str().ok_or("no lastUsedAt")?;
    humantime::parse_rfc3339_weak(last_used)?;
    w.stop()
}

#[tokio::test]
async fn malformed_exchange_requests_are_refused_as_such() -> TestResult {
    let w = World::new("Integrator").await?;
    w.create(w.github_policy("deploy")).await?;
    let token = w.github_token(|_| {})?;
    let form = |pairs: &[(&'static str, &'static str)]| pairs.to_vec();
    // `/oauth/token`: the token type is required and must be an id_token or a jwt; only an
    // access token may be asked for.
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no subject_token_type", form(&[])),
        (
            "an access token as subject_token_type",
            form(&[("subject_token_type", ACCESS_TOKEN_TYPE)]),
        ),
        (
            "an unknown subject_token_type",
            form(&[("subject_token_type", "urn:example:ci")]),
        ),
        (
            "a refresh token requested",
            form(&[
                ("subject_token_type", ID_TOKEN_TYPE),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:refresh_token",
                ),
            ]),
        ),
    ];
    for (what, extra) in cases {
        let mut pairs = vec![("grant_type", TOKEN_EXCHANGE), ("subject_token", &token)];
        pairs.extend(extra);
        let (status, body) = w.server.post_form("/oauth/token", &pairs).await?;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{what}: {body}"
        );
        assert!(
            !body.to_string().contains(&token),
            "{what}: echoes the token"
        );
    }
    let (status, body) = w
        .server
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token_type", ID_TOKEN_TYPE),
            ],
        )
        .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "no subject_token: {body}"
    );

    // `/auth/exchange`: the usual body errors.
    let json_ct = Some("application/json");
    for (what, content_type, body, want) in [
        (
            "no content type",
            None,
            json!({ "token": token }).to_string(),
            415,
        ),
        (
            "a form",
            Some("application/x-www-form-urlencoded"),
            format!("token={token}"),
            415,
        ),
        ("truncated JSON", json_ct, r#"{"token":"ey"#.to_owned(), 400),
        ("no token", json_ct, "{}".to_owned(), 400),
        ("a number", json_ct, r#"{"token":5}"#.to_owned(), 400),
        ("an array", json_ct, "[]".to_owned(), 400),
        (
            "a number tenant",
            json_ct,
            json!({ "token": token, "tenant_id": 5 }).to_string(),
            400,
        ),
        (
            "an oversized body",
            json_ct,
            json!({ "token": "a".repeat(26_000) }).to_string(),
            413,
        ),
    ] {
        // A client of its own per case: a server that answers before reading a whole body
        // closes that connection, which a pooled client could otherwise reuse.
        let mut request = reqwest::Client::new()
            .post(w.server.url("/auth/exchange"))
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request
            .send()
            .await
            .map_err(|err| format!("{what}: {err:?}"))?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(
            (status, body["error"].as_str()),
            (want, Some("invalid_request")),
            "{what}: {text}"
        );
        assert!(!text.contains(&token), "{what}: echoes the token");
    }

    // Not a JWT at all, at both endpoints: invalid_grant, never an echo.
    let oversized = format!("{}.{}.sig", "e".repeat(100), "e".repeat(17 * 1024));
    for endpoint in Endpoint::BOTH {
        for (what, garbage) in [
            (
                "a refresh token",
                "prism_rt_not_an_oidc_token_at_all_000000",
            ),
            ("two parts", "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0"),
            ("not base64", "e!!!.e!!!.s!!!"),
            (
                "a header that is not JSON",
                "bm90IGpzb24.eyJpc3MiOiJ4In0.c2ln",
            ),
        ] {
            let answer = exchange_at(&w.server, endpoint, garbage, &[]).await?;
            refused_with(&answer, 400, "invalid_grant", &[""], what);
        }
        // Over 16 KiB (the body may be up to 24 KiB): refused before any decoding.
        let answer = exchange_at(&w.server, endpoint, &oversized, &[]).await?;
        refused_with(&answer, 400, "invalid_grant", &[""], "a token over 16 KiB");
    }
    // The genuine token still works after all that.
    granted(&w.exchange(Endpoint::Exchange, &token).await?, "the token")?;
    w.stop()
}

#[tokio::test]
async fn a_gitlab_policy_with_globs_takes_release_branches_only() -> TestResult {
    let w = World::new("Integrator").await?;
    w.create(json!({
        "name": "gitlab releases",
        "description": "release pipelines of group/app",
        "issuer": w.issuer.issuer,
        "audience": AUD,
        "serviceAccountId": w.sa_id,
        "conditions": [
            { "claim": "project_id", "value": "4242" },
            { "claim": "namespace_id", "match": "EXACT", "value": "72" },
            { "claim": "ref_type", "match": "EXACT", "value": "branch" },
            { "claim": "ref", "match": "GLOB", "value": "release/*" },
            { "claim": "pipeline_source", "match": "GLOB", "value": "?ush" },
        ],
    }))
    .await?;
    type Case = (&'static str, fn(&mut Value), Expect);
    let cases: [Case; 16] = [
        (
            "a release branch",
            |c| c["ref"] = json!("release/1.2"),
            Expect::Granted,
        ),
        (
            "`*` matches an empty run",
            |c| c["ref"] = json!("release/"),
            Expect::Granted,
        ),
        (
            "`*` matches across `/`",
            |c| c["ref"] = json!("release/1.x/hotfix"),
            Expect::Granted,
        ),
        (
            "`?` matches one character",
            |c| {
                c["ref"] = json!("release/2");
                c["pipeline_source"] = json!("rush");
            },
            Expect::Granted,
        ),
        (
            "numbers compare by their JSON text",
            |c| {
                c["ref"] = json!("release/3");
                c["project_id"] = json!(4242);
                c["namespace_id"] = json!(72);
            },
            Expect::Granted,
        ),
        ("the main branch", |_| {}, Expect::Claim(&["ref"])),
        (
            "the pattern is case-sensitive",
            |c| c["ref"] = json!("Release/1.2"),
            Expect::Claim(&["ref"]),
        ),
        (
            "the pattern is anchored",
            |c| c["ref"] = json!("hotfix/release/1"),
            Expect::Claim(&["ref"]),
        ),
        (
            "`?` is not zero characters",
            |c| {
                c["ref"] = json!("release/4");
                c["pipeline_source"] = json!("ush");
            },
            Expect::Claim(&["pipeline_source"]),
        ),
        (
            "`?` is not two characters",
            |c| {
                c["ref"] = json!("release/4");
                c["pipeline_source"] = json!("ppush");
            },
            Expect::Claim(&["pipeline_source"]),
        ),
        (
            "a tag named like a release",
            |c| {
                c["ref"] = json!("release/5");
                c["ref_type"] = json!("tag");
            },
            Expect::Claim(&["ref_type"]),
        ),
        (
            "another project",
            |c| {
                c["ref"] = json!("release/6");
                c["project_id"] = json!("42420");
            },
            Expect::Claim(&["project_id"]),
        ),
        (
            "an array never matches",
            |c| {
                c["ref"] = json!("release/7");
                c["project_id"] = json!(["4242"]);
            },
            Expect::Claim(&["project_id"]),
        ),
        (
            "an object never matches",
            |c| c["ref"] = json!({ "name": "release/8" }),
            Expect::Claim(&["ref"]),
        ),
        (
            "a missing claim never matches",
            |c| remove(c, "ref"),
            Expect::Claim(&["ref"]),
        ),
        (
            "a boolean is neither string nor number",
            |c| {
                c["ref"] = json!("release/9");
                c["ref_type"] = json!(true);
            },
            Expect::Claim(&["ref_type"]),
        ),
    ];
    for (index, (what, change, expect)) in cases.into_iter().enumerate() {
        let mut claims = w.issuer.gitlab(AUD);
        change(&mut claims);
        let token = w.issuer.mint(Alg::Es256, &claims)?;
        let endpoint = Endpoint::BOTH[index % 2];
        let answer = w.exchange(endpoint, &token).await?;
        judge(&answer, expect, what)?;
        if let Expect::Claim(_) = expect {
            // The condition's expected value is not disclosed.
            for secret in ["release/*", "?ush", "4242", "branch"] {
                assert!(
                    !answer.description().contains(secret),
                    "{what}: discloses {secret:?}: {}",
                    answer.description()
                );
            }
        }
    }
    w.stop()
}

#[tokio::test]
async fn each_failing_claim_condition_is_refused_by_name() -> TestResult {
    let w = World::new("Integrator").await?;
    let mut input = w.github_policy("deploy from main");
    input["conditions"] = json!([
        { "claim": "repository_id", "match": "EXACT", "value": "123456" },
        { "claim": "repository", "match": "EXACT", "value": "acme/app" },
        { "claim": "ref", "match": "EXACT", "value": "refs/heads/main" },
        { "claim": "event_name", "match": "EXACT", "value": "push" },
        { "claim": "sub", "match": "GLOB", "value": "repo:acme/app:*" },
    ]);
    w.create(input).await?;
    type Case = (&'static str, fn(&mut Value), Expect);
    let cases: [Case; 11] = [
        ("the genuine push", |_| {}, Expect::Granted),
        (
            "repository_id as a JSON number",
            |c| c["repository_id"] = json!(123456),
            Expect::Granted,
        ),
        (
            "a pull request from a fork",
            |c| {
                c["event_name"] = json!("pull_request");
                c["ref"] = json!("refs/pull/7/merge");
                c["sub"] = json!("repo:acme/app:pull_request");
                c["head_ref"] = json!("mallory-patch-1");
            },
            Expect::Claim(&["event_name", "ref"]),
        ),
        (
            "a pull_request_target run on main",
            |c| c["event_name"] = json!("pull_request_target"),
            Expect::Claim(&["event_name"]),
        ),
        (
            "another repository",
            |c| {
                c["repository"] = json!("mallory/app");
                c["repository_id"] = json!("999999");
                c["repository_owner"] = json!("mallory");
                c["sub"] = json!("repo:mallory/app:ref:refs/heads/main");
            },
            Expect::Claim(&["repository_id", "repository", "sub"]),
        ),
        (
            "another branch",
            |c| {
                c["ref"] = json!("refs/heads/dev");
                c["sub"] = json!("repo:acme/app:ref:refs/heads/dev");
            },
            Expect::Claim(&["ref"]),
        ),
        (
            "a renamed repository's successor: the same name, another id",
            |c| c["repository_id"] = json!("777777"),
            Expect::Claim(&["repository_id"]),
        ),
        (
            "a ref differing in case",
            |c| c["ref"] = json!("refs/heads/Main"),
            Expect::Claim(&["ref"]),
        ),
        (
            "a missing claim",
            |c| remove(c, "event_name"),
            Expect::Claim(&["event_name"]),
        ),
        (
            "an array claim",
            |c| c["event_name"] = json!(["push"]),
            Expect::Claim(&["event_name"]),
        ),
        (
            "a sub outside the glob",
            |c| c["sub"] = json!("repo:acme/application:ref:refs/heads/main"),
            Expect::Claim(&["sub"]),
        ),
    ];
    for (index, (what, change, expect)) in cases.into_iter().enumerate() {
        let token = w.github_token(change)?;
        let answer = w.exchange(Endpoint::BOTH[index % 2], &token).await?;
        judge(&answer, expect, what)?;
        if let Expect::Claim(_) = expect {
            let description = answer.description();
            for secret in ["123456", "acme/app", "refs/heads/main"] {
                assert!(
                    !description.contains(secret),
                    "{what}: discloses {secret:?}: {description}"
                );
            }
            assert!(description.contains("condition"), "{what}: {description}");
        }
    }
    w.stop()
}

#[tokio::test]
async fn tokens_of_the_wrong_issuer_audience_or_time_are_refused() -> TestResult {
    let w = World::new("Integrator").await?;
    let mut input = w.github_policy("deploy");
    input["maxTokenAgeSeconds"] = json!(600);
    let policy = w.create(input).await?;
    assert_eq!(policy["maxTokenAgeSeconds"], 600);

    type Case = (&'static str, fn(&mut Value), Expect);
    let cases: [Case; 16] = [
        (
            "expired",
            |c| {
                let now = now();
                c["iat"] = json!(now - 400);
                c["nbf"] = json!(now - 400);
                c["exp"] = json!(now - 120);
            },
            Expect::Refused(&["expired"]),
        ),
        (
            "expired, but within the 60 s skew",
            |c| {
                let now = now();
                c["iat"] = json!(now - 330);
                c["nbf"] = json!(now - 330);
                c["exp"] = json!(now - 30);
            },
            Expect::Granted,
        ),
        (
            "nbf in the future",
            |c| c["nbf"] = json!(now() + 120),
            Expect::Refused(&["not yet valid", "not valid yet"]),
        ),
        (
            "nbf in the future within the skew",
            |c| c["nbf"] = json!(now() + 30),
            Expect::Granted,
        ),
        (
            "iat in the future",
            |c| {
                c["iat"] = json!(now() + 120);
                remove(c, "nbf");
            },
            Expect::Refused(&["not yet valid", "not valid yet"]),
        ),
        (
            "older than the policy's maxTokenAgeSeconds",
            |c| {
                let now = now();
                c["iat"] = json!(now - 700);
                c["nbf"] = json!(now - 700);
            },
            Expect::Refused(&["too old", "seconds ago"]),
        ),
        (
            "old, but within maxTokenAgeSeconds",
            |c| {
                let now = now();
                c["iat"] = json!(now - 500);
                c["nbf"] = json!(now - 500);
            },
            Expect::Granted,
        ),
        (
            "no exp",
            |c| remove(c, "exp"),
            Expect::Refused(&["`exp`", "exp"]),
        ),
        (
            "no iat",
            |c| remove(c, "iat"),
            Expect::Refused(&["`iat`", "iat"]),
        ),
        (
            "exp as a string",
            |c| c["exp"] = json!((now() + 300).to_string()),
            Expect::Refused(&["exp"]),
        ),
        ("no nbf is fine", |c| remove(c, "nbf"), Expect::Granted),
        (
            "another audience",
            |c| c["aud"] = json!("https://elsewhere.test"),
            Expect::Refused(&[WRONG_AUDIENCE]),
        ),
        (
            "an audience list with ours",
            |c| c["aud"] = json!(["https://elsewhere.test", AUD]),
            Expect::Granted,
        ),
        (
            "an audience list without ours",
            |c| c["aud"] = json!(["https://elsewhere.test", "sts.amazonaws.com"]),
            Expect::Refused(&["audience"]),
        ),
        (
            "no audience",
            |c| remove(c, "aud"),
            Expect::Refused(&["audience"]),
        ),
        (
            "our audience with another case",
            |c| c["aud"] = json!(AUD.to_uppercase()),
            Expect::Refused(&["audience"]),
        ),
    ];
    for (index, (what, change, expect)) in cases.into_iter().enumerate() {
        let token = w.github_token(change)?;
        let answer = w.exchange(Endpoint::BOTH[index % 2], &token).await?;
        judge(&answer, expect, what)?;
    }

    // Another issuer, which no policy names: refused by name, and never contacted (prismd
    // fetches keys only from issuers its policies name).
    let other = Issuer::start_at("/second").await?;
    let claims = other.github(AUD);
    for endpoint in Endpoint::BOTH {
        let token = other.mint(Alg::Rs256, &other.github(AUD))?;
        let answer = w.exchange(endpoint, &token).await?;
        invalid_grant(
            &answer,
            &[&format!(
                "no trust policy accepts tokens from the issuer {}",
                other.issuer
            )],
            "another issuer",
        );
    }
    assert_eq!(other.discovery_fetches() + other.jwks_fetches(), 0);
    // The same issuer URL but a trailing slash, a path, or a scheme change is another issuer.
    for iss in [
        format!("{}/", w.issuer.issuer),
        format!("{}/x", w.issuer.issuer),
        w.issuer.issuer.replace("http://", "https://"),
    ] {
        let token = w.github_token(|c| c["iss"] = json!(iss))?;
        invalid_grant(
            &w.exchange(Endpoint::Exchange, &token).await?,
            &[NO_POLICY],
            &format!("iss {iss}"),
        );
    }
    // Our issuer's name on a token signed by the other issuer's key: the kid is unknown.
    let mut forged = claims;
    forged["iss"] = json!(w.issuer.issuer);
    let token = other.mint(Alg::Rs256, &forged)?;
    invalid_grant(
        &w.exchange(Endpoint::Exchange, &token).await?,
        &["kid", "key"],
        "a token of our issuer signed by another issuer's key",
    );
    w.stop()
}

#[tokio::test]
async fn algorithm_confusion_and_forged_tokens_are_refused() -> TestResult {
    let w = World::new("Integrator").await?;
    w.create(w.github_policy("deploy")).await?;
    let issuer = &w.issuer;
    let claims = || issuer.github(AUD);
    let rsa_kid = issuer.kid(Alg::Rs256)?;
    let ec_kid = issuer.kid(Alg::Es256)?;
    let ed_kid = issuer.kid(Alg::EdDsa)?;
    let unpublished = issuer.add_key(Alg::Rs256, false)?;
    let on_dev = |c: &mut Value| {
        c["ref"] = json!("refs/heads/dev");
        c["sub"] = json!("repo:acme/app:ref:refs/heads/dev");
    };
    let to_main = |c: &mut Value| {
        c["ref"] = json!("refs/heads/main");
        c["sub"] = json!("repo:acme/app:ref:refs/heads/main");
    };
    let mut dev = claims();
    on_dev(&mut dev);
    let genuine = issuer.mint(Alg::Rs256, &claims())?;
    let other_genuine = issuer.mint(Alg::Rs256, &claims())?;
    let cut = |token: &str, keep: usize| -> String {
        token.split('.').take(keep).collect::<Vec<_>>().join(".")
    };
    let header = |alg: &str, kid: &str| json!({ "alg": alg, "typ": "JWT", "kid": kid });

    let cases: Vec<(&str, String, &[&str])> = vec![
        ("alg none", issuer.alg_none(&claims())?, &["none"]),
        (
            "alg none with an RS256 signature",
            issuer.mint_with_header(Alg::Rs256, &header("none", &rsa_kid), &claims())?,
            &["none"],
        ),
        (
            "HS256 keyed with the RSA public key",
            issuer.hs256_with_rsa_public_key(&claims())?,
            &["HS256"],
        ),
        (
            "RS384",
            issuer.mint_with_header(Alg::Rs256, &header("RS384", &rsa_kid), &claims())?,
            &["RS384"],
        ),
        (
            "PS256",
            issuer.mint_with_header(Alg::Rs256, &header("PS256", &rsa_kid), &claims())?,
            &["PS256"],
        ),
        (
            "an RS256 header naming the EC key",
            issuer.rs256_with_ec_kid(&claims())?,
            &["key", "alg"],
        ),
        (
            "an ES256 header naming the Ed25519 key",
            issuer.mint_with_header(Alg::Es256, &header("ES256", &ed_kid), &claims())?,
            &["key", "alg"],
        ),
        (
            "an EdDSA header naming the RSA key",
            issuer.mint_with_header(Alg::EdDsa, &header("EdDSA", &rsa_kid), &claims())?,
            &["key", "alg"],
        ),
        (
            "an ES256 header naming the RSA key",
            issuer.mint_with_header(Alg::Es256, &header("ES256", &rsa_kid), &claims())?,
            &["key", "alg"],
        ),
        (
            "RS256 tampered from dev to main",
            issuer.tampered(Alg::Rs256, &dev, to_main)?,
            &["signature"],
        ),
        (
            "ES256 tampered from dev to main",
            issuer.tampered(Alg::Es256, &dev, to_main)?,
            &["signature"],
        ),
        (
            "EdDSA tampered from dev to main",
            issuer.tampered(Alg::EdDsa, &dev, to_main)?,
            &["signature"],
        ),
        (
            "a later expiry written in",
            issuer.tampered(Alg::Rs256, &claims(), |c| c["exp"] = json!(now() + 86_400))?,
            &["signature"],
        ),
        (
            "the signature stripped",
            format!("{}.", cut(&genuine, 2)),
            &["signature"],
        ),
        (
            "another token's signature",
            format!(
                "{}.{}",
                cut(&genuine, 2),
                other_genuine.rsplit('.').next().unwrap_or("")
            ),
            &["signature"],
        ),
        (
            "a key the issuer never published",
            issuer.mint_with_kid(&unpublished, &claims())?,
            &["kid", "key"],
        ),
        (
            "an empty kid",
            issuer.mint_with_header(Alg::Es256, &header("ES256", ""), &claims())?,
            &["kid", "key"],
        ),
    ];
    for (index, (what, token, parts)) in cases.iter().enumerate() {
        let answer = w.exchange(Endpoint::BOTH[index % 2], token).await?;
        invalid_grant(&answer, parts, what);
    }
    // The EC kid itself with its own algorithm works: the refusals were the mismatch.
    let ec_token = issuer.mint_with_kid(&ec_kid, &claims())?;
    granted(&w.exchange(Endpoint::Exchange, &ec_token).await?, "ES256")?;
    granted(
        &w.exchange(Endpoint::OAuth, &genuine).await?,
        "the genuine one",
    )?;
    w.stop()
}

// ---------------------------------------------------------------------------------------------
// The issuer's keys.

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it() -> TestResult {
    let w = World::new("Integrator").await?;
    w.create(w.github_policy("deploy")).await?;
    for alg in Alg::ALL {
        let before = w.issuer.kid(alg)?;
        granted(
            &w.exchange(
                Endpoint::Exchange,
                &w.issuer.mint(alg, &w.issuer.github(AUD))?,
            )
            .await?,
            &format!("{alg:?} before the rotation"),
        )?;
        let fetched = w.issuer.jwks_fetches();
        let after = w.issuer.rotate(alg)?;
        assert!(!w.issuer.published_kids().contains(&before));
        // The new kid is not cached: one refetch, then accepted.
        let token = w.issuer.mint(alg, &w.issuer.github(AUD))?;
        granted(
            &w.exchange(Endpoint::OAuth, &token).await?,
            &format!("{alg:?} signed with the new key {after}"),
        )?;
        assert!(w.issuer.jwks_fetches() > fetched, "{alg:?}: no refetch");
        // The retired key left the JWKS and, after that refetch, the cache too.
        let old = w.issuer.mint_with_kid(&before, &w.issuer.github(AUD))?;
        invalid_grant(
            &w.exchange(Endpoint::Exchange, &old).await?,
            &["kid", "key"],
            &format!("{alg:?} signed with the retired key"),
        );
    }
    let logs = w.server.logs();
    w.stop()?;
    assert!(!logs.contains("BEGIN PRIVATE KEY"));

    // With the default refetch interval (5 s), unknown kids fetch at most once per window.
    let dir = temp_dir()?;
    let server = Server::start_with(
        dir.path(),
        Options {
            args: vec!["--oidc-allow-http-issuers".into()],
            ..Options::default()
        },
    )?;
    let issuer = Issuer::start().await?;
    let owner = owner_access(&server, dir.path()).await?;
    let sa = create_sa(
        &server,
        &owner,
        "deployer",
        &role_id(&server, &owner, "Integrator").await?,
    )
    .await?;
    create_policy(
        &server,
        &owner,
        github_policy("deploy", &issuer.issuer, &sa),
    )
    .await?;
    let first = issuer.mint(Alg::Rs256, &issuer.github(AUD))?;
    granted(
        &exchange_at(&server, Endpoint::Exchange, &first, &[]).await?,
        "first",
    )?;
    let fetched = issuer.jwks_fetches();
    for attempt in 0..3 {
        let kid = issuer.add_key(Alg::Es256, false)?;
        let token = issuer.mint_with_kid(&kid, &issuer.github(AUD))?;
        invalid_grant(
            &exchange_at(&server, Endpoint::Exchange, &token, &[]).await?,
            &["kid", "key"],
            &format!("unknown kid, attempt {attempt}"),
        );
    }
    assert!(
        issuer.jwks_fetches() <= fetched + 1,
        "unknown kids fetched the JWKS {} times in one window",
        issuer.jwks_fetches() - fetched
    );
    // A rotation is picked up once the window has passed (the same token again: a refused
    // exchange does not use it up).
    issuer.rotate(Alg::Rs256)?;
    let rotated = issuer.mint(Alg::Rs256, &issuer.github(AUD))?;
    let deadline = Instant::now() + CHANGE_REACH_BOUND;
    loop {
        let answer = exchange_at(&server, Endpoint::Exchange, &rotated, &[]).await?;
        if answer.status == 200 || Instant::now() > deadline {
            granted(&answer, "the rotated key after the refetch window")?;
            break;
        }
        invalid_grant(
            &answer,
            &["kid", "key"],
            "the rotated key within the window",
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    stop_clean(server)
}

#[tokio::test]
async fn an_unreachable_issuer_is_503_never_200_and_cached_keys_keep_serving() -> TestResult {
    let w = World::new("Integrator").await?;
    let with = |name: &str, issuer: &Issuer| github_policy(name, &issuer.issuer, &w.sa_id);

    // Never fetched, and refusing connections.
    let gone = Issuer::start().await?;
    gone.go_offline().await?;
    w.create(with("gone", &gone)).await?;
    let token = gone.mint(Alg::Rs256, &gone.github(AUD))?;
    for endpoint in Endpoint::BOTH {
        for _ in 0..2 {
            let answer = w.exchange(endpoint, &token).await?;
            refused_with(
                &answer,
                503,
                "temporarily_unavailable",
                &[&format!("the issuer {} could not be reached", gone.issuer)],
                "an issuer that refuses connections",
            );
            assert_eq!(answer.header("retry-after"), Some("5"), "{endpoint:?}");
        }
    }
    // It comes back: the same token (a 503 did not use it up) is accepted.
    gone.come_back().await?;
    granted(
        &w.exchange(Endpoint::OAuth, &token).await?,
        "after coming back",
    )?;

    // Never fetched, answering 503.
    let sick = Issuer::start().await?;
    sick.set_unavailable(true);
    w.create(with("sick", &sick)).await?;
    let token = sick.mint(Alg::Es256, &sick.github(AUD))?;
    for endpoint in Endpoint::BOTH {
        let answer = w.exchange(endpoint, &token).await?;
        refused_with(
            &answer,
            503,
            "temporarily_unavailable",
            &["could not be reached"],
            "an issuer answering 503",
        );
    }
    assert!(sick.discovery_fetches() > 0);
    sick.set_unavailable(false);
    granted(&w.exchange(Endpoint::Exchange, &token).await?, "recovered")?;

    // Fetched once: its cached keys keep serving while it is down, either way.
    let steady = Issuer::start().await?;
    w.create(with("steady", &steady)).await?;
    let fresh = || steady.mint(Alg::EdDsa, &steady.github(AUD));
    granted(&w.exchange(Endpoint::Exchange, &fresh()?).await?, "up")?;
    steady.set_unavailable(true);
    granted(
        &w.exchange(Endpoint::OAuth, &fresh()?).await?,
        "503 with cached keys",
    )?;
    steady.go_offline().await?;
    granted(
        &w.exchange(Endpoint::Exchange, &fresh()?).await?,
        "offline with cached keys",
    )?;
    steady.come_back().await?;
    granted(&w.exchange(Endpoint::OAuth, &fresh()?).await?, "back")?;

    // A discovery document that names another issuer is never trusted.
    let liar = Issuer::start().await?;
    liar.claim_issuer(Some("https://token.actions.githubusercontent.com"))?;
    w.create(with("liar", &liar)).await?;
    let token = liar.mint(Alg::Rs256, &liar.github(AUD))?;
    let answer = w.exchange(Endpoint::Exchange, &token).await?;
    assert!(
        matches!(answer.status, 400 | 503)
            && matches!(
                answer.body["error"].as_str(),
                Some("temporarily_unavailable" | "invalid_grant")
            ),
        "a discovery document naming another issuer: {} {}",
        answer.status,
        answer.body
    );
    assert_eq!(liar.jwks_fetches(), 0, "fetched the keys of a lying issuer");
    w.stop()
}

#[tokio::test]
async fn cached_keys_stop_serving_at_their_max_age_while_the_issuer_is_down() -> TestResult {
    let w = World::with_flags(
        "Integrator",
        &["--oidc-jwks-refresh", "1s", "--oidc-jwks-max-age", "3s"],
    )
    .await?;
    w.create(w.github_policy("deploy")).await?;
    // The server fetches the keys while it answers this first exchange, so they were fetched
    // no earlier than this instant: a refusal must come at least 3 s after it. (An instant
    // taken after the answer would be later than the fetch, and too strict by the round trip.)
    let fetched_no_earlier_than = Instant::now();
    granted(
        &w.exchange(Endpoint::Exchange, &w.github_token(|_| {})?)
            .await?,
        "up",
    )?;
    w.issuer.set_unavailable(true);
    // Until the keys are 3 s old they serve; then 503, never a grant. Each try is a fresh
    // token: a granted one is spent.
    let deadline = Instant::now() + CHANGE_REACH_BOUND;
    let answer = loop {
        let answer = w
            .exchange(Endpoint::OAuth, &w.github_token(|_| {})?)
            .await?;
        if answer.status != 200 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    refused_with(
        &answer,
        503,
        "temporarily_unavailable",
        &["could not be reached"],
        "keys past their max age",
    );
    assert!(
        fetched_no_earlier_than.elapsed() >= std::time::Duration::from_secs(3),
        "the cached keys stopped serving after {:?}, before their 3 s max age",
        fetched_no_earlier_than.elapsed()
    );
    assert_eq!(answer.header("retry-after"), Some("5"));
    // Back up: fetched again and accepted.
    w.issuer.set_unavailable(false);
    granted(
        &w.exchange(Endpoint::Exchange, &w.github_token(|_| {})?)
            .await?,
        "back up",
    )?;
    w.stop()
}

// ---------------------------------------------------------------------------------------------
// One use per token.

#[tokio::test]
async fn a_token_is_exchanged_once() -> TestResult {
    let w = World::new("Integrator").await?;
    w.create(w.github_policy("deploy")).await?;
    let token = w.github_token(|_| {})?;
    let jti = text(&jwt_claims(&token)?["jti"])?;
    granted(
        &w.exchange(Endpoint::Exchange, &token).await?,
        "the first use",
    )?;
    for endpoint in Endpoint::BOTH {
        let answer = w.exchange(endpoint, &token).await?;
        invalid_grant(&answer, &["already"], "a replay");
        assert!(
            answer.description().contains(&jti),
            "{}",
            answer.description()
        );
    }
    // Another token with the same jti from the same issuer is the same use.
    let same_jti = w.github_token(|c| {
        c["jti"] = json!(jti);
        c["run_attempt"] = json!("2");
    })?;
    invalid_grant(
        &w.exchange(Endpoint::OAuth, &same_jti).await?,
        &["already"],
        "the same jti in another token",
    );
    // Without a jti the token itself is the key.
    let no_jti = w.github_token(|c| remove(c, "jti"))?;
    granted(&w.exchange(Endpoint::OAuth, &no_jti).await?, "no jti")?;
    invalid_grant(
        &w.exchange(Endpoint::Exchange, &no_jti).await?,
        &["already"],
        "a replay without jti",
    );
    // A refused token does not use its jti up.
    let mut claims = w.issuer.github(AUD);
    claims["aud"] = json!("https://elsewhere.test");
    let wrong = w.issuer.mint(Alg::Rs256, &claims)?;
    invalid_grant(
        &w.exchange(Endpoint::Exchange, &wrong).await?,
        &["audience"],
        "aud",
    );
    claims["aud"] = json!(AUD);
    let right = w.issuer.mint(Alg::Rs256, &claims)?;
    granted(
        &w.exchange(Endpoint::Exchange, &right).await?,
        "the same jti, right aud",
    )?;
    // The same jti from another issuer is another token.
    let other = Issuer::start_at("/other").await?;
    w.create(github_policy("other", &other.issuer, &w.sa_id))
        .await?;
    let mut claims = other.github(AUD);
    claims["jti"] = json!(jti);
    granted(
        &w.exchange(Endpoint::Exchange, &other.mint(Alg::EdDsa, &claims)?)
            .await?,
        "the same jti from another issuer",
    )?;
    w.stop()
}

// ---------------------------------------------------------------------------------------------
// Policy changes and the tokens they granted.

#[tokio::test]
async fn disabling_changing_or_deleting_a_policy_ends_its_tokens_at_once() -> TestResult {
    let w = World::new("Integrator").await?;
    let policy = w.create(w.github_policy("deploy")).await?;
    let id = text(&policy["id"])?;
    let first = w.access().await?;
    acts_as(&w.server, &first, &w.sa_id).await?;
    let sid = |access: &str| -> Res<String> { text(&jwt_claims(access)?["sid"]) };
    // A resource server and a reverse proxy asking about the same tokens.
    let introspector = resource_server(&w.server, &w.owner).await?;
    assert_eq!(
        elsewhere(&w.server, &introspector, &first).await?,
        (true, 200),
        "introspected and verified while the policy stands"
    );

    // Name, description and lifetimes: the tokens stay.
    let renamed = w
        .update(json!({
            "id": id,
            "name": "deploy main",
            "description": "pushes to main",
            "accessTokenLifetimeSeconds": 900,
            "maxTokenAgeSeconds": 1200,
        }))
        .await?;
    assert_eq!(renamed["name"], "deploy main");
    assert_eq!(renamed["description"], "pushes to main");
    assert_eq!(renamed["accessTokenLifetimeSeconds"], 900);
    assert_eq!(renamed["maxTokenAgeSeconds"], 1200);
    assert_eq!(renamed["conditions"], policy["conditions"]);
    acts_as(&w.server, &first, &w.sa_id).await?;
    let short = w.access().await?;
    let lifetime = jwt_claims(&short)?["exp"].as_i64().unwrap_or(0) - now();
    assert!((890..=900).contains(&lifetime), "{lifetime}");
    assert_ne!(sid(&short)?, sid(&first)?, "one session per exchange");

    // Disabled: its tokens die at once, and it accepts nothing.
    let disabled = w.update(json!({ "id": id, "enabled": false })).await?;
    assert_eq!(disabled["enabled"], false);
    dead(&w.server, &first, "a token of a disabled policy").await?;
    dead(&w.server, &short, "a token of a disabled policy").await?;
    assert_eq!(
        elsewhere(&w.server, &introspector, &short).await?,
        (false, 401),
        "introspected and verified after the disabling"
    );
    let token = w.github_token(|_| {})?;
    invalid_grant(
        &w.exchange(Endpoint::Exchange, &token).await?,
        &[NO_POLICY],
        "a disabled policy",
    );
    // Enabled again: new tokens in a new session; the old ones stay dead.
    w.update(json!({ "id": id, "enabled": true })).await?;
    let second = granted(&w.exchange(Endpoint::OAuth, &token).await?, "re-enabled")?;
    assert_ne!(sid(&second)?, sid(&first)?);
    acts_as(&w.server, &second, &w.sa_id).await?;
    dead(&w.server, &first, "a token of before the disabling").await?;

    // Changing what the policy accepts ends the tokens granted under the old rules.
    let changes = [
        json!({ "conditions": [
            { "claim": "repository_id", "match": "EXACT", "value": "123456" },
            { "claim": "ref", "match": "GLOB", "value": "refs/heads/*" },
        ] }),
        json!({ "audience": AUD }),
        json!({ "scopes": ["users:read"] }),
    ];
    let mut live = second;
    for change in changes {
        let mut input = change.clone();
        input["id"] = json!(id);
        w.update(input).await?;
        if change.get("audience").is_some() {
            // The same audience is no change: the tokens stay.
            acts_as(&w.server, &live, &w.sa_id).await?;
            continue;
        }
        dead(&w.server, &live, &format!("after changing {change}")).await?;
        live = w.access().await?;
        acts_as(&w.server, &live, &w.sa_id).await?;
    }
    assert_eq!(claim_scope(&live)?, "users:read");

    // Deleted: its tokens die at once, it is gone, and nothing is accepted.
    assert_eq!(
        elsewhere(&w.server, &introspector, &live).await?,
        (true, 200)
    );
    w.delete(&id).await?;
    dead(&w.server, &live, "a token of a deleted policy").await?;
    assert_eq!(
        elsewhere(&w.server, &introspector, &live).await?,
        (false, 401),
        "introspected and verified after the deletion"
    );
    assert!(policies(&w.server, &w.owner).await?.is_empty());
    invalid_grant(
        &w.exchange(Endpoint::Exchange, &w.github_token(|_| {})?)
            .await?,
        &[NO_POLICY],
        "a deleted policy",
    );
    let body = call(&w.server, &w.owner, DELETE_POLICY, json!({ "id": id })).await?;
    let payload = &body["data"]["deleteTrustPolicy"];
    assert_eq!(payload["deleted"], false, "{body}");
    assert_eq!(payload["errors"][0]["field"], "id", "{body}");

    // The audit trail has every write.
    for action in [
        "trust_policy.created",
        "trust_policy.updated",
        "trust_policy.deleted",
    ] {
        assert!(
            !events(&w.server, &w.owner, action).await?.is_empty(),
            "no {action}"
        );
    }
    let updates = events(&w.server, &w.owner, "trust_policy.updated").await?;
    assert!(updates.len() >= 5, "{updates:?}");
    w.stop()
}

#[tokio::test]
async fn removing_the_service_account_ends_its_exchanged_tokens() -> TestResult {
    let w = World::new("Integrator").await?;
    w.create(w.github_policy("deploy")).await?;
    let access = w.access().await?;
    acts_as(&w.server, &access, &w.sa_id).await?;

    // The account's revoke-all (by itself: `revokeAllSessions` takes people's ids) ends them;
    // the next exchange starts afresh.
    must(
        &w.server,
        &access,
        REVOKE_ALL,
        json!({}),
        "revokeAllSessions",
    )
    .await?;
    dead(&w.server, &access, "after revokeAllSessions of the account").await?;
    let again = w.access().await?;
    acts_as(&w.server, &again, &w.sa_id).await?;

    // Removing it ends them at once, and nothing more is exchanged into it.
    must(
        &w.server,
        &w.owner,
        DELETE_SA,
        json!({ "id": w.sa_id }),
        "deleteServiceAccount",
    )
    .await?;
    dead(&w.server, &again, "a token of a removed account").await?;
    // Its policies went with it.
    assert!(policies(&w.server, &w.owner).await?.is_empty());
    for endpoint in Endpoint::BOTH {
        let token = w.github_token(|_| {})?;
        invalid_grant(
            &w.exchange(endpoint, &token).await?,
            &["removed", NO_POLICY],
            "into a removed account",
        );
    }
    w.stop()
}

// ---------------------------------------------------------------------------------------------
// Scopes.

#[tokio::test]
async fn policy_scopes_bound_the_exchanged_token() -> TestResult {
    let w = World::new("Admin").await?;
    let guest = role_id(&w.server, &w.owner, "Guest").await?;
    let mut read_only = w.github_policy("read only");
    read_only["scopes"] = json!(["users:read"]);
    let created = w.create(read_only).await?;
    assert_eq!(created["scopes"], json!(["users:read"]));
    // A second policy of the same account, without scopes, for another audience.
    let mut full = w.github_policy("full");
    full["audience"] = json!("https://full.keyless.test");
    w.create(full).await?;
    let full_token = || {
        let mut claims = w.issuer.github("https://full.keyless.test");
        claims["aud"] = json!("https://full.keyless.test");
        w.issuer.mint(Alg::Es256, &claims)
    };
    let create_user = async |access: &str| -> Res<Value> {
        let email = format!("{}@keyless.test", uuid::Uuid::new_v4().simple());
        let body = call(
            &w.server,
            access,
            CREATE_USER,
            json!({ "email": email, "role": guest }),
        )
        .await?;
        Ok(body["data"]["createOrganizationUser"]["errors"].clone())
    };
    let lacks = |scope: &str| json!([{ "field": "__all__", "messages": [format!("this token lacks the scope {scope}")] }]);
    let users = "{ organization { users(first: 1) { nodes { id } } } }";

    for endpoint in Endpoint::BOTH {
        // The policy's scopes are the token's.
        let answer = w.exchange(endpoint, &w.github_token(|_| {})?).await?;
        let access = granted(&answer, "read only")?;
        assert_eq!(answer.body["scope"], "users:read");
        assert_eq!(claim_scope(&access)?, "users:read");
        let body = call(&w.server, &access, users, json!({})).await?;
        assert!(body["errors"].is_null(), "{body}");
        assert_eq!(create_user(&access).await?, lacks("users:write"));
        // Asking for them is fine; for more is invalid_scope.
        let token = w.github_token(|_| {})?;
        let answer = exchange_at(&w.server, endpoint, &token, &[("scope", "users:read")]).await?;
        assert_eq!(
            claim_scope(&granted(&answer, "users:read asked")?)?,
            "users:read"
        );
        for beyond in [
            "users:write",
            "users:read audit:read",
            "org:admin",
            "nope:nothing",
        ] {
            let token = w.github_token(|_| {})?;
            let answer = exchange_at(&w.server, endpoint, &token, &[("scope", beyond)]).await?;
            refused_with(&answer, 400, "invalid_scope", &[""], beyond);
        }

        // Without policy scopes the account's whole role (an Admin's), narrowed on request.
        let access = granted(&w.exchange(endpoint, &full_token()?).await?, "full")?;
        assert_eq!(claim_scope(&access)?, "");
        assert_eq!(create_user(&access).await?, json!([]));
        let answer = exchange_at(
            &w.server,
            endpoint,
            &full_token()?,
            &[("scope", "users:read")],
        )
        .await?;
        let narrowed = granted(&answer, "narrowed")?;
        assert_eq!(claim_scope(&narrowed)?, "users:read");
        assert_eq!(create_user(&narrowed).await?, lacks("users:write"));
    }

    // An Integrator account holds no audit:read: neither a policy nor a request gets it.
    let integrator = role_id(&w.server, &w.owner, "Integrator").await?;
    let member_sa = create_sa(&w.server, &w.owner, "builder", &integrator).await?;
    let mut input = github_policy("builder", &w.issuer.issuer, &member_sa);
    input["audience"] = json!("https://builder.keyless.test");
    input["scopes"] = json!(["audit:read"]);
    let errors = create_refused(&w.server, &w.owner, input.clone()).await?;
    assert_eq!(first_error(&errors).0, "scopes", "{errors:?}");
    input["scopes"] = json!(["nope:nothing"]);
    let errors = create_refused(&w.server, &w.owner, input.clone()).await?;
    assert_eq!(first_error(&errors).0, "scopes", "{errors:?}");
    remove(&mut input, "scopes");
    w.create(input).await?;
    let mut claims = w.issuer.github("https://builder.keyless.test");
    claims["aud"] = json!("https://builder.keyless.test");
    let token = w.issuer.mint(Alg::Rs256, &claims)?;
    let answer = exchange_at(
        &w.server,
        Endpoint::OAuth,
        &token,
        &[("scope", "audit:read")],
    )
    .await?;
    refused_with(
        &answer,
        400,
        "invalid_scope",
        &[""],
        "audit:read for an Integrator",
    );
    // The refusal did not use the token up.
    let answer = exchange_at(
        &w.server,
        Endpoint::OAuth,
        &token,
        &[("scope", "users:read")],
    )
    .await?;
    granted(&answer, "users:read for an Integrator")?;
    w.stop()
}

// ---------------------------------------------------------------------------------------------
// Management.

#[tokio::test]
async fn only_owners_and_admins_with_org_admin_manage_trust_policies() -> TestResult {
    let w = World::new("Integrator").await?;
    let data = w.data();
    add_member(data, "ada@keyless.test", "Admin")?;
    let ada = exchange(
        &w.server,
        &named_token(data, "ada@keyless.test", "t")?,
        None,
    )
    .await?;
    add_member(data, "ian@keyless.test", "Integrator")?;
    let ian = exchange(
        &w.server,
        &named_token(data, "ian@keyless.test", "t")?,
        None,
    )
    .await?;
    // The Owner's token narrowed to everything but org:admin.
    let narrowed = exchange(
        &w.server,
        &named_token(data, "owner@localhost", "narrow")?,
        Some("users:read users:write audit:read sessions:read"),
    )
    .await?;

    // An Admin creates, lists, updates and deletes.
    let created = create_policy(&w.server, &ada, w.github_policy("by ada")).await?;
    let id = text(&created["id"])?;
    assert_eq!(policies(&w.server, &ada).await?.len(), 1);

    // An Integrator: the domain's refusal, for the query and every mutation.
    let only = "only Owners and Admins can manage trust policies";
    let lacks = "this token lacks the scope org:admin";
    for (caller, message) in [(&ian, only), (&narrowed, lacks)] {
        let body = call(&w.server, caller, POLICIES, json!({})).await?;
        assert!(body["data"]["trustPolicies"].is_null(), "{body}");
        assert!(
            body["errors"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["message"] == message)),
            "{message}: {body}"
        );
        let errors = create_refused(&w.server, caller, w.github_policy("theirs")).await?;
        assert_eq!(first_error(&errors).1, message, "{errors:?}");
        let body = call(
            &w.server,
            caller,
            UPDATE_POLICY,
            json!({ "input": { "id": id, "enabled": false } }),
        )
        .await?;
        assert_eq!(
            body["data"]["updateTrustPolicy"]["errors"][0]["messages"][0], message,
            "{body}"
        );
        let body = call(&w.server, caller, DELETE_POLICY, json!({ "id": id })).await?;
        let payload = &body["data"]["deleteTrustPolicy"];
        assert_eq!(payload["deleted"], false, "{body}");
        assert_eq!(payload["errors"][0]["messages"][0], message, "{body}");
    }
    let still = policies(&w.server, &w.owner).await?;
    assert_eq!(still.len(), 1);
    assert_eq!(still[0]["enabled"], true);

    // A service account with the Admin role may, like an Admin.
    let roles = role_ids(&w.server, &w.owner).await?;
    let admin_sa = create_sa(&w.server, &w.owner, "ops-bot", &role_of(&roles, "Admin")?).await?;
    let minted = must(
        &w.server,
        &w.owner,
        CREATE_TOKEN,
        json!({ "name": "ops", "sa": admin_sa }),
        "createToken",
    )
    .await?;
    let bot = exchange(&w.server, &text(&minted["token"])?, None).await?;
    create_policy(&w.server, &bot, w.github_policy("by the bot")).await?;
    assert_eq!(policies(&w.server, &bot).await?.len(), 2);
    w.stop()
}

#[tokio::test]
async fn trust_policy_input_is_validated_field_by_field() -> TestResult {
    let w = World::new("Integrator").await?;
    w.create(w.github_policy("taken")).await?;
    let me = call(&w.server, &w.owner, ME, json!({})).await?;
    let owner_id = text(&me["data"]["authenticatedUser"]["id"])?;
    let ghost = base64::engine::general_purpose::STANDARD
        .encode(format!("ServiceAccount:{}", uuid::Uuid::new_v4()));
    let cond = |claim: &str, kind: &str, value: &str| json!({ "claim": claim, "match": kind, "value": value });
    let many: Vec<Value> = (0..33)
        .map(|i| {
            cond(
                "sub",
                "EXACT",
                &format!("repo:acme/app{i}:ref:refs/heads/main"),
            )
        })
        .collect();
    let cases: Vec<(&str, Value, &str, &[&str])> = vec![
        (
            "no condition on a stable claim",
            json!({ "conditions": [cond("ref", "EXACT", "refs/heads/main"), cond("repository", "EXACT", "acme/app")] }),
            "conditions",
            &["stable"],
        ),
        (
            "a glob on sub without an owner",
            json!({ "conditions": [cond("sub", "GLOB", "repo:*")] }),
            "conditions",
            &["stable"],
        ),
        (
            "a glob on sub with the wildcard first",
            json!({ "conditions": [cond("sub", "GLOB", "*/app:*")] }),
            "conditions",
            &["stable"],
        ),
        (
            "a glob on repository_id",
            json!({ "conditions": [cond("repository_id", "GLOB", "12345?")] }),
            "conditions",
            &["stable"],
        ),
        (
            "no conditions",
            json!({ "conditions": [] }),
            "conditions",
            &[""],
        ),
        (
            "33 conditions",
            json!({ "conditions": many }),
            "conditions",
            &["32"],
        ),
        (
            "an empty claim name",
            json!({ "conditions": [cond("", "EXACT", "x"), cond("sub", "EXACT", "repo:acme/app:ref:refs/heads/main")] }),
            "conditions",
            &[""],
        ),
        (
            "an http issuer is allowed here (the flag), but a query is not",
            json!({ "issuer": "https://ci.example.test/?tenant=1" }),
            "issuer",
            &[""],
        ),
        (
            "a fragment",
            json!({ "issuer": "https://ci.example.test/#top" }),
            "issuer",
            &[""],
        ),
        (
            "no scheme",
            json!({ "issuer": "ci.example.test" }),
            "issuer",
            &[""],
        ),
        (
            "ftp",
            json!({ "issuer": "ftp://ci.example.test" }),
            "issuer",
            &[""],
        ),
        ("no host", json!({ "issuer": "https://" }), "issuer", &[""]),
        (
            "a user name and password",
            json!({ "issuer": "https://ci:secret@ci.example.test" }),
            "issuer",
            &[""],
        ),
        (
            "an empty audience",
            json!({ "audience": "" }),
            "audience",
            &[""],
        ),
        (
            "a 59 s lifetime",
            json!({ "accessTokenLifetimeSeconds": 59 }),
            "accessTokenLifetimeSeconds",
            &[""],
        ),
        (
            "a lifetime over a day",
            json!({ "accessTokenLifetimeSeconds": 86_401 }),
            "accessTokenLifetimeSeconds",
            &[""],
        ),
        (
            "a 59 s token age",
            json!({ "maxTokenAgeSeconds": 59 }),
            "maxTokenAgeSeconds",
            &[""],
        ),
        (
            "a token age over a day",
            json!({ "maxTokenAgeSeconds": 86_401 }),
            "maxTokenAgeSeconds",
            &[""],
        ),
        (
            "an unknown service account",
            json!({ "serviceAccountId": ghost }),
            "serviceAccountId",
            &[""],
        ),
        (
            "a person, not a service account",
            json!({ "serviceAccountId": owner_id }),
            "serviceAccountId",
            &[""],
        ),
        (
            "not an id at all",
            json!({ "serviceAccountId": "nobody-by-that-name" }),
            "serviceAccountId",
            &[""],
        ),
        ("a taken name", json!({ "name": "taken" }), "name", &[""]),
        ("an empty name", json!({ "name": "" }), "name", &[""]),
        ("a blank name", json!({ "name": "   " }), "name", &[""]),
        (
            "101 characters",
            json!({ "name": "n".repeat(101) }),
            "name",
            &[""],
        ),
        (
            "an unknown scope",
            json!({ "scopes": ["nope:nothing"] }),
            "scopes",
            &[""],
        ),
    ];
    for (what, change, field, parts) in cases {
        let mut input = w.github_policy("fresh");
        for (key, value) in change.as_object().ok_or("not an object")? {
            input[key] = value.clone();
        }
        let errors = create_refused(&w.server, &w.owner, input)
            .await
            .map_err(|err| format!("{what}: {err}"))?;
        let (got_field, message) = first_error(&errors);
        assert_eq!(got_field, field, "{what}: {errors:?}");
        assert!(!message.is_empty(), "{what}: {errors:?}");
        assert!(
            parts.iter().any(|part| message.contains(part)),
            "{what}: {message:?} says none of {parts:?}"
        );
    }
    // What the rules allow.
    for (name, conditions) in [
        ("owner glob", json!([cond("sub", "GLOB", "repo:acme/*")])),
        (
            "owner id",
            json!([cond("repository_owner_id", "EXACT", "654321")]),
        ),
        (
            "gitlab project",
            json!([cond("project_id", "EXACT", "4242")]),
        ),
        (
            "gitlab namespace",
            json!([cond("namespace_id", "EXACT", "72")]),
        ),
        (
            "32 conditions",
            json!(
                (0..32)
                    .map(|i| if i == 0 {
                        cond("repository_id", "EXACT", "123456")
                    } else {
                        cond(&format!("claim{i}"), "GLOB", "*")
                    })
                    .collect::<Vec<_>>()
            ),
        ),
    ] {
        let mut input = w.github_policy(name);
        input["conditions"] = conditions;
        w.create(input)
            .await
            .map_err(|err| format!("{name}: {err}"))?;
    }
    let mut edges = w.github_policy(&"n".repeat(100));
    edges["accessTokenLifetimeSeconds"] = json!(60);
    edges["maxTokenAgeSeconds"] = json!(86_400);
    edges["issuer"] = json!("https://token.actions.githubusercontent.com");
    let created = w.create(edges).await?;
    assert_eq!(created["accessTokenLifetimeSeconds"], 60);
    let mut edges = w.github_policy("a day");
    edges["accessTokenLifetimeSeconds"] = json!(86_400);
    edges["enabled"] = json!(false);
    let created = w.create(edges).await?;
    assert_eq!(created["enabled"], false);

    // Updates: an unknown policy, and the same rules.
    let ghost_policy = uuid::Uuid::new_v4().to_string();
    let body = call(
        &w.server,
        &w.owner,
        UPDATE_POLICY,
        json!({ "input": { "id": ghost_policy, "name": "x" } }),
    )
    .await?;
    assert_eq!(
        body["data"]["updateTrustPolicy"]["errors"][0]["field"], "id",
        "{body}"
    );
    let taken = &policies(&w.server, &w.owner).await?[0];
    let body = call(
        &w.server,
        &w.owner,
        UPDATE_POLICY,
        json!({ "input": { "id": taken["id"], "conditions": [cond("ref", "EXACT", "refs/heads/main")] } }),
    )
    .await?;
    assert_eq!(
        body["data"]["updateTrustPolicy"]["errors"][0]["field"], "conditions",
        "{body}"
    );
    let body = call(
        &w.server,
        &w.owner,
        DELETE_POLICY,
        json!({ "id": ghost_policy }),
    )
    .await?;
    assert_eq!(
        body["data"]["deleteTrustPolicy"]["deleted"], false,
        "{body}"
    );
    assert_eq!(
        body["data"]["deleteTrustPolicy"]["errors"][0]["field"], "id",
        "{body}"
    );
    w.stop()?;

    // Without --oidc-allow-http-issuers an http issuer is refused; https is fine.
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let owner = owner_access(&server, dir.path()).await?;
    let role = role_id(&server, &owner, "Integrator").await?;
    let sa = create_sa(&server, &owner, "deployer", &role).await?;
    let errors = create_refused(
        &server,
        &owner,
        github_policy("local", "http://127.0.0.1:9", &sa),
    )
    .await?;
    let (field, message) = first_error(&errors);
    assert_eq!(field, "issuer", "{errors:?}");
    assert!(message.contains("https"), "{message}");
    create_policy(
        &server,
        &owner,
        github_policy("github", "https://token.actions.githubusercontent.com", &sa),
    )
    .await?;
    stop_clean(server)
}

#[tokio::test]
async fn the_audit_trail_names_the_policy_and_the_pipeline() -> TestResult {
    let w = World::new("Integrator").await?;
    let policy = w.create(w.github_policy("deploy")).await?;
    let id = text(&policy["id"])?;
    let uuid = inner_uuid(&id)?;
    let claims = w.issuer.github(AUD);
    let jti = text(&claims["jti"])?;
    granted(
        &w.exchange(Endpoint::OAuth, &w.issuer.mint(Alg::Rs256, &claims)?)
            .await?,
        "deploy",
    )?;

    let exchanged = events(&w.server, &w.owner, "oidc.exchanged").await?;
    assert_eq!(exchanged.len(), 1, "{exchanged:?}");
    let event = &exchanged[0];
    assert_eq!(event["actor"], format!("trust_policy:{uuid}"), "{event}");
    assert_eq!(
        inner_uuid(text(&event["subjectUserId"])?.as_str())?,
        w.sa_uuid,
        "{event}"
    );
    let detail: Value = serde_json::from_str(event["detail"].as_str().ok_or("no detail")?)?;
    assert_eq!(detail["policy_id"], uuid.as_str(), "{detail}");
    assert_eq!(detail["policy_name"], "deploy", "{detail}");
    assert_eq!(detail["issuer"], w.issuer.issuer.as_str(), "{detail}");
    assert_eq!(
        detail["sub"], "repo:acme/app:ref:refs/heads/main",
        "{detail}"
    );
    assert_eq!(detail["jti"], jti.as_str(), "{detail}");
    for (claim, value) in [
        ("repository", "acme/app"),
        ("repository_id", "123456"),
        ("ref", "refs/heads/main"),
        ("run_id", "9876543210"),
        ("run_attempt", "1"),
        ("workflow", "deploy"),
        ("actor", "octocat"),
        ("event_name", "push"),
        ("environment", "production"),
    ] {
        assert_eq!(detail["claims"][claim], value, "{claim}: {detail}");
    }
    // Only the claims that say which pipeline it was, never the token.
    for unlisted in [
        "repository_visibility",
        "runner_environment",
        "actor_id",
        "head_ref",
    ] {
        assert!(
            detail["claims"].get(unlisted).is_none(),
            "{unlisted}: {detail}"
        );
    }
    assert!(!event.to_string().contains("eyJ"), "{event}");

    w.delete(&id).await?;
    let created = events(&w.server, &w.owner, "trust_policy.created").await?;
    assert_eq!(created.len(), 1, "{created:?}");
    let deleted = events(&w.server, &w.owner, "trust_policy.deleted").await?;
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    let me = call(&w.server, &w.owner, ME, json!({})).await?;
    for event in [&created[0], &deleted[0]] {
        assert_eq!(
            event["actorUserId"], me["data"]["authenticatedUser"]["id"],
            "{event}"
        );
        assert!(
            event["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&id) || d.contains("deploy"))
        );
    }
    w.stop()
}

// ---------------------------------------------------------------------------------------------
// Several organizations, and the limiter.

#[tokio::test]
async fn several_organizations_trusting_one_token_need_a_tenant_id() -> TestResult {
    let w = World::new("Integrator").await?;
    let data = w.data();
    w.create(w.github_policy("acme in default")).await?;
    let me = call(&w.server, &w.owner, ME, json!({})).await?;
    let default_tenant = text(&me["data"]["authenticatedUser"]["tenantId"])?;
    // The same repository trusted by Beta, through Beta's own Admin and service account.
    let beta = admin_ok(data, &["orgs", "add", "--name", "Beta"])?;
    admin_ok(
        data,
        &[
            "--tenant-id",
            &beta,
            "users",
            "add",
            "--email",
            "bea@beta.test",
            "--role",
            "Admin",
        ],
    )?;
    let bea_token = admin_ok(
        data,
        &[
            "--tenant-id",
            &beta,
            "tokens",
            "create",
            "--email",
            "bea@beta.test",
        ],
    )?;
    let bea = exchange(&w.server, &bea_token, None).await?;
    let beta_tenant = text(
        &call(&w.server, &bea, ME, json!({})).await?["data"]["authenticatedUser"]["tenantId"],
    )?;
    let beta_sa = create_sa(
        &w.server,
        &bea,
        "beta deployer",
        &role_id(&w.server, &bea, "Integrator").await?,
    )
    .await?;
    create_policy(
        &w.server,
        &bea,
        github_policy("acme in beta", &w.issuer.issuer, &beta_sa),
    )
    .await?;
    // Each organization sees its own.
    assert_eq!(policies(&w.server, &w.owner).await?.len(), 1);
    assert_eq!(policies(&w.server, &bea).await?.len(), 1);

    for endpoint in Endpoint::BOTH {
        let token = w.github_token(|_| {})?;
        invalid_grant(
            &w.exchange(endpoint, &token).await?,
            &["several organizations trust this token; name one with tenant_id"],
            "two organizations",
        );
        for (tenant, sa) in [(&beta_tenant, &beta_sa), (&default_tenant, &w.sa_id)] {
            let token = w.github_token(|_| {})?;
            let answer = exchange_at(
                &w.server,
                endpoint,
                &token,
                &[("tenant_id", tenant.as_str())],
            )
            .await?;
            let access = granted(&answer, &format!("tenant {tenant}"))?;
            acts_as(&w.server, &access, sa).await?;
            let me = call(&w.server, &access, ME, json!({})).await?;
            assert_eq!(me["data"]["authenticatedUser"]["tenantId"], tenant.as_str());
        }
        // An organization that does not trust it.
        let token = w.github_token(|_| {})?;
        let answer = exchange_at(
            &w.server,
            endpoint,
            &token,
            &[("tenant_id", "no-such-tenant")],
        )
        .await?;
        assert_ne!(answer.status, 200, "{}", answer.body);
        assert!(answer.body.get("access_token").is_none());
    }
    w.stop()
}

#[tokio::test]
async fn refused_exchanges_from_one_address_are_limited() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start_with(
        dir.path(),
        Options {
            args: vec![
                "--oidc-allow-http-issuers".into(),
                "--refresh-address-max-failures".into(),
                "3".into(),
            ],
            ..Options::default()
        },
    )?;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let answer = exchange_at(&server, Endpoint::Exchange, "not.a.jwt", &[]).await?;
        statuses.push(answer.status);
        if answer.status == 429 {
            assert!(answer.header("retry-after").is_some(), "{}", answer.body);
            break;
        }
        assert_eq!(answer.status, 400, "{}", answer.body);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // The other endpoint shares the counters.
    let answer = exchange_at(&server, Endpoint::OAuth, "not.a.jwt", &[]).await?;
    assert_eq!(answer.status, 429, "{}", answer.body);
    stop_clean(server)
}

// ---------------------------------------------------------------------------------------------
// Two replicas on one PostgreSQL database.

/// Replicas behind one load balancer share the public URL, so tokens name the same issuer.
const SHARED_ISSUER: &str = "http://auth.keyless-replicas.test";

/// A replica as replicas.rs starts one (a cache TTL far beyond the test's deadline: only the
/// change feed can make it forget in time), plus the keyless flags.
fn keyless_replica(data: &Path, url: &str) -> Res<Server> {
    let mut args: Vec<String> = [
        "--database-url",
        url,
        "--issuer",
        SHARED_ISSUER,
        "--cache-ttl",
        "10m",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(keyless_flags());
    Server::start_with(
        data,
        Options {
            args,
            ..Options::default()
        },
    )
}

#[tokio::test]
async fn replicas_share_token_uses_and_policy_changes() -> TestResult {
    let db = FreshDatabase::create().await?;
    let outcome = across_replicas(&db.url).await;
    db.drop_now().await?;
    outcome
}

async fn across_replicas(url: &str) -> TestResult {
    let (dir_a, dir_b) = (temp_dir()?, temp_dir()?);
    let a = keyless_replica(dir_a.path(), url)?;
    let b = keyless_replica(dir_b.path(), url)?;
    let issuer = Issuer::start().await?;
    let owner_token = admin_ok(
        dir_a.path(),
        &[
            "--database-url",
            url,
            "tokens",
            "create",
            "--email",
            "owner@localhost",
            "--name",
            "owner",
        ],
    )?;
    let owner = exchange(&a, &owner_token, None).await?;
    let sa = create_sa(
        &a,
        &owner,
        "deployer",
        &role_id(&a, &owner, "Integrator").await?,
    )
    .await?;
    let policy = create_policy(&a, &owner, github_policy("deploy", &issuer.issuer, &sa)).await?;
    let id = text(&policy["id"])?;
    let fresh = || issuer.mint(Alg::Rs256, &issuer.github(AUD));

    // Exchanged on A, replayed on B: refused.
    let token = fresh()?;
    let from_a = granted(
        &exchange_at(&a, Endpoint::Exchange, &token, &[]).await?,
        "on A",
    )?;
    for endpoint in Endpoint::BOTH {
        invalid_grant(
            &exchange_at(&b, endpoint, &token, &[]).await?,
            &["already"],
            "replayed on B",
        );
    }
    // The policy made on A accepts on B (a refused try does not use the token up).
    let from_b = exchange_when_granted(&b, &fresh()?).await?;
    for server in [&a, &b] {
        for access in [&from_a, &from_b] {
            acts_as(server, access, &sa).await?;
        }
    }

    // Disabled on A: A refuses its tokens at once, B within the change-feed bound.
    let update = json!({ "input": { "id": id, "enabled": false } });
    must(&a, &owner, UPDATE_POLICY, update, "updateTrustPolicy").await?;
    let disabled_at = Instant::now();
    dead(&a, &from_b, "on A after disabling").await?;
    assert_eq!(b.whoami_after_change(&from_a).await?, Err(401));
    assert_eq!(b.whoami(&from_b).await?, Err(401));
    println!("disabling on A reached B after {:?}", disabled_at.elapsed());

    // Enabled again on A: B accepts new tokens, which work on A.
    let update = json!({ "input": { "id": id, "enabled": true } });
    must(&a, &owner, UPDATE_POLICY, update, "updateTrustPolicy").await?;
    let again = exchange_when_granted(&b, &fresh()?).await?;
    acts_as(&a, &again, &sa).await?;
    acts_as(&b, &again, &sa).await?;

    // Deleted on A: B refuses its token within the bound, and soon accepts no new ones.
    must(
        &a,
        &owner,
        DELETE_POLICY,
        json!({ "id": id }),
        "deleteTrustPolicy",
    )
    .await?;
    dead(&a, &again, "on A after deleting").await?;
    assert_eq!(b.whoami_after_change(&again).await?, Err(401));
    let deadline = Instant::now() + CHANGE_REACH_BOUND;
    loop {
        let answer = exchange_at(&b, Endpoint::OAuth, &fresh()?, &[]).await?;
        if answer.status != 200 || Instant::now() > deadline {
            invalid_grant(&answer, &[NO_POLICY], "on B after deleting on A");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop_clean(b)?;
    stop_clean(a)
}

/// Exchanges `token` on `server` until it is granted, for up to [`CHANGE_REACH_BOUND`]: a
/// policy written on another replica reaches this one's policy reads, if it caches them,
/// through the change feed. Refused tries do not use the token up.
async fn exchange_when_granted(server: &Server, token: &str) -> Res<String> {
    let deadline = Instant::now() + CHANGE_REACH_BOUND;
    loop {
        let answer = exchange_at(server, Endpoint::Exchange, token, &[]).await?;
        if answer.status == 200 || Instant::now() > deadline {
            return granted(&answer, "on the other replica");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

// The manual's snippet.

/// The part of docs/ci.md under `heading` (to the next heading of its level).
fn ci_section(heading: &str) -> Res<&'static str> {
    const CI_MD: &str = include_str!("../../../../docs/ci.md");
    let section = CI_MD
        .split_once(heading)
        .ok_or_else(|| format!("docs/ci.md has no {heading:?}"))?
        .1;
    Ok(section.split("\n### ").next().unwrap_or(section))
}

/// The first fenced block of `lang` in `section`.
fn fenced(section: &str, lang: &str) -> Res<String> {
    Ok(section
        .split_once(&format!("```{lang}\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .ok_or_else(|| format!("no {lang} block in the section"))?
        .0
        .to_owned())
}

/// The block scalars (`run: |`, `- |`) of a CI job's YAML: the scripts its steps run, in
/// order, without their indentation.
fn yaml_scripts(yaml: &str) -> Vec<String> {
    let mut scripts = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(start) = line.strip_suffix("|") else {
            continue;
        };
        let key_indent = start.len() - start.trim_start().len();
        let mut script = String::new();
        while let Some(next) = lines.peek() {
            let indent = next.len() - next.trim_start().len();
            if !next.trim().is_empty() && indent <= key_indent {
                break;
            }
            script.push_str(next.trim_start());
            script.push('\n');
            lines.next();
        }
        scripts.push(script);
    }
    scripts
}

/// The `run:` steps of the GitHub Actions job of docs/ci.md.
fn documented_steps(heading: &str) -> Res<Vec<String>> {
    Ok(yaml_scripts(&fenced(ci_section(heading)?, "yaml")?))
}

/// The GitHub Actions job of docs/ci.md, its `run:` steps verbatim, as a runner runs them:
/// bash with curl and jq, GitHub's token service played by the test issuer, `$GITHUB_ENV`
/// carried to the next step. Only `AUTH_URL` (the job's `env:`) names this server.
#[tokio::test]
async fn the_documented_github_actions_job_runs_verbatim() -> TestResult {
    use crate::oidc_issuer::{ACTIONS_REQUEST_SECRET, ACTIONS_TOKEN_PATH};
    let steps = documented_steps("### GitHub Actions, keyless")?;
    assert_eq!(steps.len(), 2, "the exchange and the API call: {steps:?}");
    let w = World::new("Integrator").await?;
    let auth_url = w.server.url("").trim_end_matches('/').to_owned();
    let mut policy = w.github_policy("documented");
    // The job asks for the server's URL as its audience, as the manual says.
    policy["audience"] = json!(auth_url);
    w.create(policy).await?;
    let github_env = w.dir.path().join("github_env");
    std::fs::write(&github_env, "")?;
    let request_url = format!("{}{ACTIONS_TOKEN_PATH}?api-version=2.0", w.issuer.issuer);
    // tokio's process: the issuer answering the step's curl runs on this test's runtime.
    let run = async |script: &str, extra: &[(String, String)]| -> Res<std::process::Output> {
        let mut command = tokio::process::Command::new("bash");
        command
            .args(["-e", "-c", script])
            .env("AUTH_URL", &auth_url)
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", &request_url)
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", ACTIONS_REQUEST_SECRET)
            .env("GITHUB_ENV", &github_env);
        for (name, value) in extra {
            command.env(name, value);
        }
        Ok(command.output().await?)
    };
    let first = run(&steps[0], &[]).await?;
    assert!(
        first.status.success(),
        "the exchange step failed: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    let exported: Vec<(String, String)> = std::fs::read_to_string(&github_env)?
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let access = exported
        .iter()
        .find(|(name, _)| name == "PRISMATIC_ACCESS_TOKEN")
        .map(|(_, value)| value.clone())
        .ok_or("the step exported no PRISMATIC_ACCESS_TOKEN")?;
    assert_eq!(
        jwt_claims(&access)?["sub"],
        w.sa_uuid.as_str(),
        "the access token is the service account's"
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains(&format!("::add-mask::{access}")),
        "the token is masked in the job's log: {stdout}"
    );
    let second = run(&steps[1], &exported).await?;
    let body: Value = serde_json::from_slice(&second.stdout)?;
    assert!(second.status.success(), "the API step failed: {body}");
    assert_eq!(
        body["data"]["authenticatedUser"]["name"], "deployer",
        "{body}"
    );

    // A job that asks for another audience runs the same step and fails it, with the
    // server's reason in its log.
    let refused = run(
        &steps[0].replace(
            "${ACTIONS_ID_TOKEN_REQUEST_URL}&audience=${AUTH_URL}",
            "${ACTIONS_ID_TOKEN_REQUEST_URL}&audience=${AUTH_URL}/wrong",
        ),
        &[],
    )
    .await?;
    assert!(
        !refused.status.success(),
        "a wrong audience must fail the step"
    );
    let log = String::from_utf8_lossy(&refused.stderr);
    assert!(log.contains("invalid_grant"), "{log}");
    w.stop()
}

/// The production path: an HTTPS issuer whose certificate a private CA signed (a self-hosted
/// GitLab, a cluster's API server). Without `--oidc-ca-file` its keys cannot be fetched (503);
/// with it, the exchange works.
#[tokio::test]
async fn an_https_issuer_of_a_private_ca_is_trusted_through_oidc_ca_file() -> TestResult {
    let certs = temp_dir()?;
    let (ca, cert, key) = crate::smtp::test_certificates(certs.path())?;
    let ca = ca.to_str().ok_or("a path that is not UTF-8")?.to_owned();
    for trusted in [false, true] {
        let flags: Vec<&str> = if trusted {
            vec!["--oidc-ca-file", &ca]
        } else {
            Vec::new()
        };
        let issuer = Issuer::start_tls(&cert, &key).await?;
        let w = World::with_issuer("Integrator", &flags, temp_dir()?, issuer).await?;
        w.create(w.github_policy("self-hosted")).await?;
        let token = w.github_token(|_| {})?;
        let answer = w.exchange(Endpoint::Exchange, &token).await?;
        if trusted {
            granted(&answer, "an issuer the CA file vouches for")?;
            assert!(w.issuer.jwks_fetches() > 0, "its keys came over HTTPS");
        } else {
            assert_eq!(answer.status, 503, "{}", answer.body);
            assert_eq!(
                answer.body["error"], "temporarily_unavailable",
                "{}",
                answer.body
            );
            assert_eq!(w.issuer.jwks_fetches(), 0, "nothing was trusted");
        }
        w.stop()?;
    }
    Ok(())
}

/// The GitLab job of docs/ci.md and the operator command of its policy, verbatim: the command
/// (`prismd` naming this server's data directory, the issuer and audience this test's) makes
/// the policy, and the job's script, given its `id_tokens:` variable, exchanges and calls the
/// API as the service account.
#[tokio::test]
async fn the_documented_gitlab_job_and_policy_run_verbatim() -> TestResult {
    let section = ci_section("### GitLab CI, keyless")?;
    let scripts = yaml_scripts(&fenced(section, "yaml")?);
    assert_eq!(scripts.len(), 1, "the job's one script: {scripts:?}");
    let command = fenced(section, "sh")?;
    let w = World::new("Integrator").await?;
    let auth_url = w.server.url("").trim_end_matches('/').to_owned();
    let role = role_id(&w.server, &w.owner, "Integrator").await?;
    create_sa(&w.server, &w.owner, "deploy-bot", &role).await?;
    // `prismd` on the PATH is this server's, on its data directory.
    let bin = w.dir.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    let wrapper = bin.join("prismd");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' --data-dir '{}' \"$@\"\n",
            crate::harness::BIN,
            w.data().display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let command = command
        .replace("https://gitlab.com", &w.issuer.issuer)
        .replace("https://auth.example.com", &auth_url);
    let made = tokio::process::Command::new("bash")
        .args(["-e", "-c", &command])
        .env("PATH", &path)
        // The test issuer is plain HTTP.
        .env("PRISMD_OIDC_ALLOW_HTTP_ISSUERS", "true")
        .output()
        .await?;
    assert!(
        made.status.success(),
        "the documented command failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );

    let run = async |claims: Value| -> Res<std::process::Output> {
        let token = w.issuer.mint(Alg::Rs256, &claims)?;
        Ok(tokio::process::Command::new("bash")
            .args(["-e", "-c", &scripts[0]])
            .env("AUTH_URL", &auth_url)
            .env("PRISM_ID_TOKEN", token)
            .output()
            .await?)
    };
    let job = run(w.issuer.gitlab(&auth_url)).await?;
    let body: Value = serde_json::from_slice(&job.stdout)
        .map_err(|err| format!("{err}: {}", String::from_utf8_lossy(&job.stderr)))?;
    assert!(job.status.success(), "the job failed: {body}");
    assert_eq!(
        body["data"]["authenticatedUser"]["name"], "deploy-bot",
        "{body}"
    );
    // An unprotected branch's pipeline fails the job, and its log says why.
    let mut unprotected = w.issuer.gitlab(&auth_url);
    unprotected["ref"] = json!("feature");
    unprotected["ref_protected"] = json!("false");
    let refused = run(unprotected).await?;
    assert!(!refused.status.success());
    let log = String::from_utf8_lossy(&refused.stderr);
    assert!(log.contains("does not match"), "{log}");
    w.stop()
}
