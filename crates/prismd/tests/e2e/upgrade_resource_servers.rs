//! Upgrading to resource servers (token introspection clients, migration 0012): the databases
//! the release before them left on disk (tests/fixtures/before-resource-servers, SQLite and
//! PostgreSQL) are opened by this `prismd`, and nothing is lost or changed: every person,
//! service account, organization scope and grant, token policy and refresh token of issue 17
//! (every live token refreshes with the scope it had, every dead one is refused for the reason
//! it was refused for before), and everything of keyless CI (issue 18): the trust policies with
//! every setting, as the old server listed them, the disabled ones still disabled and the
//! removed one still gone; the sessions the exchanges started (tagged with their policy,
//! revoked where disabling or removing the policy revoked them) and the spent OIDC tokens. The
//! old exchanges' access tokens still verify with the kept signing key and are refused only for
//! their age; an old policy, pointed at a new issuer, exchanges again, ending its old sessions.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::fixture_db::{Deployment, manifest, public_id};
use crate::harness::{Options, Server, TestResult, jwt_claims, prismd};
use crate::keys::{jwks_kids, kid_of};
use crate::oidc_issuer::{Alg, Issuer, now};
use crate::upgrade_common::{self, Answer, Base};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The fixture folder under tests/fixtures.
const FOLDER: &str = "before-resource-servers";
/// What make.sh asked the old server about each trust policy (its POLICY_FIELDS).
const POLICIES: &str = "{ trustPolicies { id name description issuer audience \
                        conditions { claim match value } serviceAccount { id name } scopes \
                        accessTokenLifetimeSeconds maxTokenAgeSeconds enabled createdAt \
                        updatedAt lastUsedAt } }";
/// The refusal of a token whose issuer no enabled policy names (followed by the issuer).
const NO_POLICY: &str = "no trust policy accepts tokens from the issuer";

// ---------------------------------------------------------------------------------------------
// The manifest make.sh wrote next to the fixtures.

/// What one backend's fixture holds.
#[derive(Deserialize)]
struct Fixture {
    /// Issue 17's data, the counts and the migrations.
    #[serde(flatten)]
    base: Base,
    /// The old server's issuer: the `iss` of its access tokens.
    issuer: String,
    trust_policies: Vec<TrustPolicy>,
    removed_trust_policies: Vec<RemovedPolicy>,
    exchanges: Vec<Exchange>,
    oidc_token_uses: Vec<TokenUse>,
    policy_views: PolicyViews,
}

/// A trust policy's row as make.sh read it (the conditions parsed).
#[derive(Deserialize)]
struct TrustPolicy {
    id: String,
    public_id: String,
    org_tenant_id: String,
    name: String,
    description: Option<String>,
    issuer: String,
    audience: String,
    /// `[{claim, match: exact | glob, value}]`.
    conditions: Value,
    service_account_id: String,
    /// Space-separated; empty: the service account's role.
    scopes: String,
    access_token_ttl_secs: i64,
    max_token_age_secs: i64,
    enabled: bool,
    created_at: i64,
    updated_at: i64,
    last_used_at: Option<i64>,
}

#[derive(Deserialize)]
struct RemovedPolicy {
    id: String,
    name: String,
}

/// One exchange of an OIDC token make.sh made.
#[derive(Deserialize)]
struct Exchange {
    /// The policy's name.
    policy: String,
    policy_id: String,
    /// `/auth/exchange` or `/oauth/token`.
    endpoint: String,
    /// The OIDC token's claims.
    oidc_claims: Value,
    /// What the exchange answered, the access token left out.
    answer: Value,
    access_token: String,
    access_claims: Value,
    /// The session it started.
    session: Session,
    /// What /auth/verify answered for the access token once it had expired.
    expired_answer: Answer,
}

/// An exchange's session: its refresh_tokens row.
#[derive(Deserialize, sqlx::FromRow, Debug, Clone, PartialEq, Eq)]
struct Session {
    id: String,
    user_id: String,
    client_id: String,
    name: Option<String>,
    named: bool,
    scope: Option<String>,
    expires_at: Option<i64>,
    created_by: Option<String>,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    trust_policy_id: String,
}

/// A spent OIDC token (oidc_token_uses).
#[derive(Deserialize, sqlx::FromRow, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct TokenUse {
    token_key: String,
    issuer: String,
    expires_at: i64,
}

/// How the old server listed the trust policies of the first organization.
#[derive(Deserialize)]
struct PolicyViews {
    /// `trustPolicies` (the fields of [`POLICIES`]).
    graphql: Value,
    /// `prismd trust-policies list --json`, one object a line.
    cli: Vec<Value>,
}

impl Fixture {
    /// The first organization's tenant: the one `trust-policies` works on by default.
    fn first_tenant(&self) -> Res<&str> {
        self.base
            .organizations
            .first()
            .map(|o| o.tenant_id.as_str())
            .ok_or_else(|| "no organization in the manifest".into())
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn upgrade_keeps_trust_policies_exchanges_and_tokens_sqlite() -> TestResult {
    let fixture: Fixture = manifest(FOLDER)?.backends.sqlite;
    let shift = fixture.base.shift_ms()?;
    let deployment = Deployment::sqlite_copy(FOLDER, &[SHIFT_EXPIRIES], || Ok(shift)).await?;
    upgrade(&deployment, &fixture, shift).await
}

#[tokio::test]
async fn upgrade_keeps_trust_policies_exchanges_and_tokens_postgres() -> TestResult {
    let fixture: Fixture = manifest(FOLDER)?.backends.postgres;
    let shift = fixture.base.shift_ms()?;
    Deployment::on_postgres(
        FOLDER,
        &[SHIFT_EXPIRIES],
        || Ok(shift),
        async |deployment| upgrade(deployment, &fixture, shift).await,
    )
    .await
}

/// Starts this `prismd` on the old data, whose used refresh tokens' expiries moved `shift` ms
/// forward, with the old server's issuer (as a deployment keeps it across an upgrade), and
/// checks everything the upgrade promises.
async fn upgrade(deployment: &Deployment, fixture: &Fixture, shift: i64) -> TestResult {
    fixture_promises(fixture);

    let mut args = vec![
        "--issuer".to_owned(),
        fixture.issuer.clone(),
        // The policies' issuers (make.sh's and the test's own) are plain http on loopback.
        "--oidc-allow-http-issuers".to_owned(),
    ];
    if let Some(url) = deployment.database_url() {
        args.extend(["--database-url".to_owned(), url.to_owned()]);
    }
    let server = Server::start_with(
        deployment.dir(),
        Options {
            args,
            ..Options::default()
        },
    )?;
    // Read before any request, so that only the start itself could have written.
    rows_kept(deployment, fixture, shift).await?;

    upgrade_common::tokens_answer_as_before(&server, &fixture.base, Some(&fixture.issuer)).await?;
    upgrade_common::organizations_kept(&server, &fixture.base).await?;
    policies_listed_as_before(&server, deployment, fixture).await?;
    exchanged_tokens_verify(&server, fixture).await?;
    old_policy_exchanges_again(&server, deployment, fixture).await?;
    disabled_and_removed_stay_so(&server, fixture).await?;
    introspection_works_on_the_old_data(&server, fixture).await?;

    let logs = server.stop()?;
    assert!(!logs.contains("ERROR"), "{logs}");
    Ok(())
}

/// The fixture's own promises, so that the checks below check something.
fn fixture_promises(fixture: &Fixture) {
    upgrade_common::promises(&fixture.base);
    let states: BTreeSet<(bool, bool)> = fixture
        .trust_policies
        .iter()
        .map(|p| (p.enabled, p.last_used_at.is_some()))
        .collect();
    assert_eq!(
        states,
        BTreeSet::from([(true, true), (false, true), (false, false)]),
        "trust policies: a used enabled one, a used disabled one, a never used disabled one"
    );
    assert!(
        !fixture.removed_trust_policies.is_empty(),
        "a removed policy"
    );
    let endpoints: BTreeSet<&str> = fixture
        .exchanges
        .iter()
        .map(|e| e.endpoint.as_str())
        .collect();
    assert_eq!(
        endpoints,
        BTreeSet::from(["/auth/exchange", "/oauth/token"])
    );
    assert!(
        fixture
            .exchanges
            .iter()
            .any(|e| e.session.revoked_at.is_some())
            && fixture
                .exchanges
                .iter()
                .any(|e| e.session.revoked_at.is_none()),
        "sessions of exchanges, revoked and not"
    );
    assert_eq!(
        fixture.oidc_token_uses.len(),
        fixture.exchanges.len(),
        "a spent OIDC token per exchange"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. The rows.

/// Row counts of every old table, the migrations, and every person, service account,
/// organization, scope, grant, token, trust policy, exchange session and spent OIDC token as
/// make.sh left them.
async fn rows_kept(deployment: &Deployment, fixture: &Fixture, shift: i64) -> TestResult {
    // Every old migration stays; 0012 (and any later one) is added, its table empty.
    let applied = deployment.migrations().await?;
    assert_eq!(
        applied.get(..fixture.base.migrations.len()),
        Some(&fixture.base.migrations[..]),
        "_sqlx_migrations keeps the old ones"
    );
    assert!(applied.contains(&12), "0012 was not applied: {applied:?}");
    assert_eq!(deployment.count("resource_servers").await?, 0);
    upgrade_common::rows_kept(deployment, &fixture.base, shift, fixture.exchanges.len()).await?;

    // Keyless CI: the policies, the exchanges' sessions (with their policy, removed or not) and
    // the spent OIDC tokens, exactly.
    let policies: Vec<PolicyRow> = deployment.rows(POLICY_ROWS).await?;
    assert_eq!(
        policies.len(),
        fixture.trust_policies.len(),
        "trust policies"
    );
    for expected in &fixture.trust_policies {
        let what = format!("trust policy {}", expected.name);
        let row = policies
            .iter()
            .find(|row| row.id == expected.id)
            .ok_or_else(|| format!("{what} is gone"))?;
        assert_eq!(row.tenant_id, expected.org_tenant_id, "{what}: org");
        assert_eq!(row.name, expected.name, "{what}: name");
        assert_eq!(row.description, expected.description, "{what}: description");
        assert_eq!(row.issuer, expected.issuer, "{what}: issuer");
        assert_eq!(row.audience, expected.audience, "{what}: audience");
        let conditions: Value = serde_json::from_str(&row.conditions)?;
        assert_eq!(conditions, expected.conditions, "{what}: conditions");
        assert_eq!(
            row.service_account_id, expected.service_account_id,
            "{what}: service account"
        );
        assert_eq!(row.scopes, expected.scopes, "{what}: scopes");
        assert_eq!(
            row.access_token_ttl_secs, expected.access_token_ttl_secs,
            "{what}: lifetime"
        );
        assert_eq!(
            row.max_token_age_secs, expected.max_token_age_secs,
            "{what}: max token age"
        );
        assert_eq!(row.enabled, expected.enabled, "{what}: enabled");
        assert_eq!(row.created_at, expected.created_at, "{what}: created");
        assert_eq!(row.updated_at, expected.updated_at, "{what}: updated");
        assert_eq!(row.last_used_at, expected.last_used_at, "{what}: last used");
    }
    for removed in &fixture.removed_trust_policies {
        assert!(
            policies.iter().all(|row| row.id != removed.id),
            "the removed trust policy {} is back",
            removed.name
        );
    }

    let mut sessions: Vec<Session> = deployment.rows(SESSIONS).await?;
    sessions.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected: Vec<Session> = fixture
        .exchanges
        .iter()
        .map(|e| e.session.clone())
        .collect();
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(sessions, expected, "the sessions of the exchanges");

    let mut uses: Vec<TokenUse> = deployment.rows(TOKEN_USES).await?;
    uses.sort();
    let mut expected = fixture.oidc_token_uses.clone();
    expected.sort();
    assert_eq!(uses, expected, "the spent OIDC tokens");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Keyless CI.

/// The Owner's access token of the first organization (the one with the trust policies).
/// What 0012 adds works on the upgraded data: the first Owner registers a resource server,
/// which finds an access token of an old refresh token active, with its organization.
async fn introspection_works_on_the_old_data(server: &Server, fixture: &Fixture) -> TestResult {
    let owner = first_owner_access(server, fixture).await?;
    let (status, _, created) = server
        .graphql(
            Some(&owner),
            "mutation { createResourceServer(name: \"after the upgrade\") { resourceServer { clientId } clientSecret errors { field messages } } }",
        )
        .await?;
    assert_eq!(status, 200, "{created}");
    let payload = &created["data"]["createResourceServer"];
    let client_id = payload["resourceServer"]["clientId"]
        .as_str()
        .ok_or_else(|| format!("no resource server: {created}"))?;
    let secret = payload["clientSecret"]
        .as_str()
        .ok_or_else(|| format!("no secret: {created}"))?;
    let answer: Value = server
        .http
        .post(server.url("/oauth/introspect"))
        .basic_auth(client_id, Some(secret))
        .form(&[("token", owner.as_str())])
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["organization"], fixture.first_tenant()?, "{answer}");
    Ok(())
}

async fn first_owner_access(server: &Server, fixture: &Fixture) -> Res<String> {
    let owner = fixture.base.owner_token(fixture.first_tenant()?)?;
    server.access_token(&owner.token).await
}

/// The trust policies as the old server listed them: GraphQL `trustPolicies` (every setting,
/// the service account, createdAt, updatedAt, lastUsedAt) and `trust-policies list --json`.
async fn policies_listed_as_before(
    server: &Server,
    deployment: &Deployment,
    fixture: &Fixture,
) -> TestResult {
    let access = first_owner_access(server, fixture).await?;
    let (status, _, body) = server.graphql(Some(&access), POLICIES).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(
        body["data"]["trustPolicies"], fixture.policy_views.graphql,
        "trustPolicies as the old server listed them"
    );

    let mut args: Vec<&str> = Vec::new();
    if let Some(url) = deployment.database_url() {
        args.extend(["--database-url", url]);
    }
    args.extend(["trust-policies", "list", "--json"]);
    let output = prismd(deployment.dir(), &args)?;
    assert!(
        output.status.success(),
        "trust-policies list: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed = String::from_utf8(output.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<Value>, _>>()?;
    assert_eq!(
        listed, fixture.policy_views.cli,
        "trust-policies list --json as the old command listed them"
    );
    Ok(())
}

/// `GET /auth/verify` with `access`: the status and the JSON body (`null` when empty).
async fn verify(server: &Server, access: &str) -> Res<(u16, Value)> {
    let response = server
        .http
        .get(server.url("/auth/verify"))
        .bearer_auth(access)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// Each old exchange's access token: signed by a key the new server still publishes, naming
/// its session, and refused by /auth/verify exactly as the old server refused it once it had
/// expired (so its signature, issuer and audience still pass: only its age fails).
async fn exchanged_tokens_verify(server: &Server, fixture: &Fixture) -> TestResult {
    let kids = jwks_kids(server).await?;
    for exchange in &fixture.exchanges {
        let what = format!(
            "the access token of {}'s exchange at {}",
            exchange.policy, exchange.endpoint
        );
        let access = &exchange.access_token;
        assert!(kids.contains(&kid_of(access)?), "{what}: its key is gone");
        let claims = jwt_claims(access)?;
        assert_eq!(claims, exchange.access_claims, "{what}");
        let session = &exchange.session;
        assert_eq!(claims["sid"], session.id.as_str(), "{what}");
        assert_eq!(claims["sub"], session.user_id.as_str(), "{what}");
        assert_eq!(claims["iss"], fixture.issuer.as_str(), "{what}");
        assert_eq!(claims["scope"], exchange.answer["scope"], "{what}");
        assert_eq!(session.trust_policy_id, exchange.policy_id, "{what}");

        let (status, body) = verify(server, access).await?;
        let answer = &exchange.expired_answer;
        assert_eq!(status, answer.status, "{what}: {body}");
        assert_eq!(body["error"].as_str(), answer.error.as_deref(), "{what}");
        assert_eq!(
            body["error_description"].as_str(),
            answer.error_description.as_deref(),
            "{what}"
        );
    }
    Ok(())
}

/// The enabled old policy, pointed at an issuer of this test (only its issuer changed through
/// GraphQL), exchanges a token with the claims of its old exchange: an access token of its
/// service account with its scopes, a session tagged with it, the token spent once. Changing
/// the issuer ends the sessions it started before the upgrade, and only those.
async fn old_policy_exchanges_again(
    server: &Server,
    deployment: &Deployment,
    fixture: &Fixture,
) -> TestResult {
    let policy = fixture
        .trust_policies
        .iter()
        .find(|p| p.enabled)
        .ok_or("no enabled trust policy in the manifest")?;
    let old = fixture
        .exchanges
        .iter()
        .find(|e| e.policy == policy.name && e.endpoint == "/auth/exchange")
        .ok_or_else(|| format!("no exchange of {} at /auth/exchange", policy.name))?;
    let issuer = Issuer::start().await?;
    let access = first_owner_access(server, fixture).await?;
    let mutation = format!(
        "mutation {{ updateTrustPolicy(input: {{ id: \"{}\", issuer: \"{}\" }}) {{ \
         trustPolicy {{ issuer audience scopes enabled serviceAccount {{ id }} }} \
         errors {{ field messages }} }} }}",
        policy.public_id, issuer.issuer
    );
    let (status, _, body) = server.graphql(Some(&access), &mutation).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body["errors"].is_null(), "{body}");
    let updated = &body["data"]["updateTrustPolicy"];
    assert_eq!(updated["errors"], json!([]), "{body}");
    assert_eq!(
        updated["trustPolicy"],
        json!({
            "issuer": issuer.issuer,
            "audience": policy.audience,
            "scopes": policy.scopes.split_whitespace().collect::<Vec<_>>(),
            "enabled": true,
            "serviceAccount": { "id": public_id("ServiceAccount", &policy.service_account_id) },
        }),
        "{body}"
    );

    // Its old sessions are revoked now; the others are as they were.
    let sessions: Vec<Session> = deployment.rows(SESSIONS).await?;
    for exchange in &fixture.exchanges {
        let row = sessions
            .iter()
            .find(|s| s.id == exchange.session.id)
            .ok_or_else(|| format!("the session of {}'s exchange is gone", exchange.policy))?;
        if exchange.policy_id == policy.id {
            assert!(row.revoked_at.is_some(), "{row:?} outlived the new issuer");
        } else {
            assert_eq!(
                row, &exchange.session,
                "a session of another policy changed"
            );
        }
    }

    let mut claims = old.oidc_claims.clone();
    let now = now();
    for (claim, value) in [
        ("iss", json!(issuer.issuer)),
        ("jti", json!(uuid::Uuid::new_v4().to_string())),
        ("iat", json!(now)),
        ("nbf", json!(now)),
        ("exp", json!(now + 300)),
    ] {
        claims[claim] = value;
    }
    let token = issuer.mint(Alg::Rs256, &claims)?;
    let request = json!({ "token": token });
    let (status, body) = server.post_json("/auth/exchange", &request).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], policy.scopes.as_str(), "{body}");
    assert_eq!(body["expires_in"], policy.access_token_ttl_secs, "{body}");
    let fresh = body["access_token"]
        .as_str()
        .ok_or_else(|| format!("no access_token: {body}"))?;
    let fresh_claims = jwt_claims(fresh)?;
    assert_eq!(
        fresh_claims["sub"],
        policy.service_account_id.as_str(),
        "{fresh_claims}"
    );
    assert_eq!(
        fresh_claims["tid"],
        policy.org_tenant_id.as_str(),
        "{fresh_claims}"
    );
    let (status, body) = verify(server, fresh).await?;
    assert_eq!(status, 200, "the fresh access token: {body}");
    let sessions: Vec<Session> = deployment.rows(SESSIONS).await?;
    let session = sessions
        .iter()
        .find(|s| fresh_claims["sid"] == s.id.as_str())
        .ok_or_else(|| format!("no session for {fresh_claims}"))?;
    assert_eq!(session.trust_policy_id, policy.id, "{session:?}");
    assert_eq!(session.user_id, policy.service_account_id, "{session:?}");
    assert!(session.revoked_at.is_none(), "{session:?}");

    let (status, body) = server.post_json("/auth/exchange", &request).await?;
    assert_eq!(status, 400, "a replay: {body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("this token was already exchanged")),
        "a replay: {body}"
    );
    Ok(())
}

/// A token from the issuer of a disabled policy, or of the removed one, that meets its
/// conditions is refused as a token no enabled policy accepts (once the enabled policy that
/// shared the issuer has moved to another: [`old_policy_exchanges_again`]).
async fn disabled_and_removed_stay_so(server: &Server, fixture: &Fixture) -> TestResult {
    let signer = Issuer::start().await?;
    let now = now();
    let mut tokens: Vec<(String, Value)> = Vec::new();
    for policy in fixture.trust_policies.iter().filter(|p| !p.enabled) {
        // Claims that meet its conditions: the exact values, the globs' wildcards filled in.
        let mut claims = json!({
            "iss": policy.issuer, "aud": policy.audience, "sub": "repo:corp/app",
            "jti": uuid::Uuid::new_v4().to_string(), "iat": now, "nbf": now, "exp": now + 300,
        });
        for condition in policy
            .conditions
            .as_array()
            .ok_or_else(|| format!("{}: conditions are not a list", policy.name))?
        {
            let claim = condition["claim"].as_str().ok_or("a condition's claim")?;
            let value = condition["value"].as_str().ok_or("a condition's value")?;
            claims[claim] = json!(value.replace(['*', '?'], "x"));
        }
        tokens.push((format!("the disabled policy {}", policy.name), claims));
    }
    for removed in &fixture.removed_trust_policies {
        let old = fixture
            .exchanges
            .iter()
            .find(|e| e.policy_id == removed.id)
            .ok_or_else(|| format!("no exchange of the removed policy {}", removed.name))?;
        let mut claims = old.oidc_claims.clone();
        claims["jti"] = json!(uuid::Uuid::new_v4().to_string());
        claims["iat"] = json!(now);
        claims["nbf"] = json!(now);
        claims["exp"] = json!(now + 300);
        tokens.push((format!("the removed policy {}", removed.name), claims));
    }
    assert!(tokens.len() >= 3, "disabled and removed policies to try");
    for (what, claims) in tokens {
        let token = signer.mint(Alg::Rs256, &claims)?;
        let (status, body) = server
            .post_json("/auth/exchange", &json!({ "token": token }))
            .await?;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"], "invalid_grant", "{what}: {body}");
        assert_eq!(
            body["error_description"].as_str(),
            claims["iss"]
                .as_str()
                .map(|iss| format!("{NO_POLICY} {iss}"))
                .as_deref(),
            "{what}: {body}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The copied fixture and its database.

/// The live named tokens expire 14 to 90 days after make.sh ran: every refresh token make.sh
/// used (refreshed) has its expiry moved forward by the fixture's age ([`Base::shift_ms`]),
/// so that it is as far from its end as it was then. "owner short" expired before its only
/// use and keeps its expiry: its refusal names that time. The sessions of exchanges keep
/// theirs: they end with their access tokens, whose `exp` cannot move.
const SHIFT_EXPIRIES: &str = "UPDATE refresh_tokens SET expires_at = expires_at + $1 \
                              WHERE expires_at IS NOT NULL AND last_used_at IS NOT NULL \
                              AND trust_policy_id IS NULL";

const POLICY_ROWS: &str = "SELECT p.id, o.tenant_id, p.name, p.description, p.issuer, \
                           p.audience, p.conditions, p.service_account_id, p.scopes, \
                           p.access_token_ttl_secs, p.max_token_age_secs, p.enabled, \
                           p.created_at, p.updated_at, p.last_used_at \
                           FROM trust_policies p JOIN organizations o ON o.id = p.org_id";

#[derive(sqlx::FromRow)]
struct PolicyRow {
    id: String,
    tenant_id: String,
    name: String,
    description: Option<String>,
    issuer: String,
    audience: String,
    conditions: String,
    service_account_id: String,
    scopes: String,
    access_token_ttl_secs: i64,
    max_token_age_secs: i64,
    enabled: bool,
    created_at: i64,
    updated_at: i64,
    last_used_at: Option<i64>,
}

const SESSIONS: &str = "SELECT id, user_id, client_id, name, named, scope, expires_at, \
                        created_by, created_at, last_used_at, revoked_at, trust_policy_id \
                        FROM refresh_tokens WHERE trust_policy_id IS NOT NULL";

const TOKEN_USES: &str = "SELECT token_key, issuer, expires_at FROM oidc_token_uses";
