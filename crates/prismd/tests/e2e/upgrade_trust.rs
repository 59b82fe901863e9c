//! Upgrading to trust policies and the OIDC token exchange (issue 18, migration 0011): the
//! databases the release before them left on disk (tests/fixtures/before-trust-policies, SQLite
//! and PostgreSQL) are opened by this `prismd`, and nothing of issue 17's data is lost or
//! changed: every person, service account, organization scope and grant, token policy and
//! refresh token (its name, scopes and expiry) is still there; every live token refreshes with
//! the scope it had and every dead one is refused with the reason it was refused for before.
//! And the new feature works on the old data: an old service account gets a trust policy, with
//! a scope it holds through an old grant.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::fixture_db::{DAY_SECS, Deployment, manifest, now_ms, public_id, role_name};
use crate::harness::{Server, TestResult, jwt_claims};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The fixture folder under tests/fixtures.
const FOLDER: &str = "before-trust-policies";
/// An organization as its Owner sees it: its token policy, service accounts and scopes.
const ORGANIZATION: &str = "{ organization { tenantId tokenPolicy { maxLifetimeDays } } \
                            serviceAccounts { id name description role { name } scopes } \
                            scopes { name description builtIn roles { name } \
                                     serviceAccounts { name } } }";
/// The trust policy the Owner of Org A gives the old service account `ci-bot`.
const POLICY_NAME: &str = "app main branch";
const ISSUER: &str = "https://token.actions.githubusercontent.com";
const AUDIENCE: &str = "https://prism.corp.example";
const SUBJECT: &str = "repo:corp/app:ref:refs/heads/main";

// ---------------------------------------------------------------------------------------------
// The manifest make.sh wrote next to the fixtures.

/// What one backend's fixture holds.
#[derive(Deserialize)]
struct Fixture {
    organizations: Vec<Organization>,
    users: Vec<User>,
    org_scopes: Vec<OrgScope>,
    refresh_tokens: Vec<RefreshToken>,
    /// The newest last use of a token (ms): when make.sh was done with this backend.
    made_at: i64,
    row_counts: BTreeMap<String, i64>,
    audit_actions: BTreeMap<String, i64>,
    migrations: Vec<i64>,
}

#[derive(Deserialize)]
struct Organization {
    id: String,
    name: String,
    tenant_id: String,
    session_policy: SessionPolicy,
    max_token_lifetime_secs: Option<i64>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Debug)]
struct SessionPolicy {
    idle_expiry_secs: Option<i64>,
    max_age_secs: Option<i64>,
}

#[derive(Deserialize)]
struct User {
    id: String,
    org_tenant_id: String,
    /// `person` or `service`.
    kind: String,
    email: String,
    name: String,
    description: Option<String>,
    role: String,
    removed: bool,
    token_epoch: i64,
}

#[derive(Deserialize)]
struct OrgScope {
    org_tenant_id: String,
    name: String,
    description: Option<String>,
    /// `role:<key>` or `user:<service account id>`.
    grantees: Vec<String>,
}

#[derive(Deserialize)]
struct RefreshToken {
    token: String,
    id: String,
    user_id: String,
    /// The person's email or the service account's name.
    principal: String,
    org_tenant_id: String,
    name: Option<String>,
    named: bool,
    scope: Option<String>,
    expires_at: Option<i64>,
    created_by: Option<String>,
    role: String,
    last_used_at: Option<i64>,
    revoked: bool,
    live: bool,
    /// What /auth/refresh answered make.sh the last time.
    answer: Answer,
}

#[derive(Deserialize)]
struct Answer {
    status: u16,
    scope: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Fixture {
    /// How far make.sh's times are moved forward so that they end now (see [`SHIFT_EXPIRIES`]).
    fn shift_ms(&self) -> Res<i64> {
        Ok((now_ms()? - self.made_at).max(0))
    }

    /// A token's expiry once [`SHIFT_EXPIRIES`] has moved it.
    fn expiry_now(&self, token: &RefreshToken, shift: i64) -> Option<i64> {
        let moved = token.last_used_at.is_some();
        token
            .expires_at
            .map(|at| if moved { at + shift } else { at })
    }

    /// A live, unrestricted and unnamed token of an Owner of `tenant`.
    fn owner_token(&self, tenant: &str) -> Res<&RefreshToken> {
        self.refresh_tokens
            .iter()
            .find(|t| t.live && t.org_tenant_id == tenant && t.role == "owner" && !t.named)
            .ok_or_else(|| format!("no live token of an Owner of {tenant} in the manifest").into())
    }

    fn service_account(&self, name: &str) -> Res<&User> {
        self.users
            .iter()
            .find(|u| u.kind == "service" && u.name == name && !u.removed)
            .ok_or_else(|| format!("no live service account {name} in the manifest").into())
    }
}

/// A service account as the API lists it: id, name, description, role and the organization's
/// scopes granted to it directly.
type AccountView = (String, String, Option<String>, String, Vec<String>);
/// An organization's own scope as the API lists it: name, description, the roles and the
/// service accounts granted it.
type ScopeView = (String, Option<String>, Vec<String>, Vec<String>);

/// The strings of a JSON array (an empty list for anything else), sorted.
fn strings(value: &Value) -> Vec<String> {
    let mut out: Vec<String> = value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn upgrade_keeps_service_accounts_scopes_and_tokens_sqlite() -> TestResult {
    let fixture: Fixture = manifest(FOLDER)?.backends.sqlite;
    let shift = fixture.shift_ms()?;
    let deployment = Deployment::sqlite_copy(FOLDER, &[SHIFT_EXPIRIES], || Ok(shift)).await?;
    upgrade(&deployment, &fixture, shift).await
}

#[tokio::test]
async fn upgrade_keeps_service_accounts_scopes_and_tokens_postgres() -> TestResult {
    let fixture: Fixture = manifest(FOLDER)?.backends.postgres;
    let shift = fixture.shift_ms()?;
    Deployment::on_postgres(
        FOLDER,
        &[SHIFT_EXPIRIES],
        || Ok(shift),
        async |deployment| upgrade(deployment, &fixture, shift).await,
    )
    .await
}

/// Starts this `prismd` on the old data, whose used tokens' expiries moved `shift` ms forward,
/// and checks everything the upgrade promises.
async fn upgrade(deployment: &Deployment, fixture: &Fixture, shift: i64) -> TestResult {
    // The fixture's own promises, so that the checks below check something.
    let live_accounts: BTreeSet<&str> = fixture
        .users
        .iter()
        .filter(|u| u.kind == "service" && !u.removed)
        .map(|u| u.role.as_str())
        .collect();
    assert_eq!(live_accounts, BTreeSet::from(["admin", "integrator"]));
    assert!(
        fixture
            .refresh_tokens
            .iter()
            .any(|t| t.live && t.named && t.expires_at.is_some() && t.scope.is_some()),
        "named tokens with scopes and expiries"
    );
    let reasons: BTreeSet<&str> = fixture
        .refresh_tokens
        .iter()
        .filter_map(|t| t.answer.error_description.as_deref())
        .collect();
    assert!(
        reasons.len() >= 3,
        "dead tokens for several reasons: {reasons:?}"
    );
    assert!(
        fixture
            .organizations
            .iter()
            .any(|o| o.max_token_lifetime_secs.is_some()),
        "an organization with a token policy"
    );
    assert!(!fixture.org_scopes.is_empty(), "organization scopes");

    let server = deployment.start()?;
    // Read before any request, so that only the start itself could have written.
    rows_kept(deployment, fixture, shift).await?;

    tokens_answer_as_before(&server, fixture).await?;
    organizations_kept(&server, fixture).await?;
    trust_policy_for_an_old_account(&server, fixture).await?;

    let logs = server.stop()?;
    assert!(!logs.contains("ERROR"), "{logs}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. The rows.

/// Row counts of every old table, the migrations, the new tables empty, and every person,
/// service account, organization, scope, grant and token as make.sh left it.
async fn rows_kept(deployment: &Deployment, fixture: &Fixture, shift: i64) -> TestResult {
    // `_sqlx_migrations` gains 0011, checked below.
    for (table, before) in fixture
        .row_counts
        .iter()
        .filter(|(t, _)| *t != "_sqlx_migrations")
    {
        let now = deployment.count(table).await?;
        assert_eq!(now, *before, "{table}: {now} rows, {before} before");
    }
    assert_eq!(
        deployment.audit_actions().await?,
        fixture.audit_actions,
        "audit events by action"
    );
    for table in ["trust_policies", "oidc_token_uses"] {
        assert_eq!(deployment.count(table).await?, 0, "{table}");
    }
    // Every old migration stays, 0011 is applied (and any later one).
    let mut expected = fixture.migrations.clone();
    expected.push(11);
    let applied = deployment.migrations().await?;
    assert_eq!(
        applied.get(..expected.len()),
        Some(&expected[..]),
        "_sqlx_migrations keeps the old ones and gains 0011"
    );

    let orgs: Vec<OrgRow> = deployment.rows(ORGANIZATIONS).await?;
    assert_eq!(orgs.len(), fixture.organizations.len(), "organizations");
    for org in &fixture.organizations {
        let row = orgs
            .iter()
            .find(|row| row.id == org.id)
            .ok_or_else(|| format!("organization {} is gone", org.name))?;
        let what = format!("organization {}", org.name);
        assert_eq!(row.name, org.name, "{what}: name");
        assert_eq!(row.tenant_id, org.tenant_id, "{what}: tenant");
        assert_eq!(
            SessionPolicy {
                idle_expiry_secs: row.refresh_idle_expiry_secs,
                max_age_secs: row.refresh_max_age_secs,
            },
            org.session_policy,
            "{what}: session policy"
        );
        assert_eq!(
            row.max_token_lifetime_secs, org.max_token_lifetime_secs,
            "{what}: token policy"
        );
    }

    let users: Vec<UserRow> = deployment.rows(USERS).await?;
    assert_eq!(users.len(), fixture.users.len(), "users");
    for expected in &fixture.users {
        let what = format!("{} {} ({})", expected.kind, expected.id, expected.name);
        let row = users
            .iter()
            .find(|row| row.id == expected.id)
            .ok_or_else(|| format!("{what} is gone"))?;
        assert_eq!(row.tenant_id, expected.org_tenant_id, "{what}: org");
        assert_eq!(row.kind, expected.kind, "{what}: kind");
        assert_eq!(row.email, expected.email, "{what}: email");
        assert_eq!(row.name, expected.name, "{what}: name");
        assert_eq!(row.description, expected.description, "{what}: description");
        assert_eq!(row.role, expected.role, "{what}: role");
        assert_eq!(
            row.removed_at.is_some(),
            expected.removed,
            "{what}: removed"
        );
        assert_eq!(row.token_epoch, expected.token_epoch, "{what}: epoch");
    }

    let tenant_of: BTreeMap<&str, &str> = orgs
        .iter()
        .map(|org| (org.id.as_str(), org.tenant_id.as_str()))
        .collect();
    let scopes: Vec<ScopeRow> = deployment.rows(SCOPES).await?;
    let grants: Vec<GrantRow> = deployment.rows(GRANTS).await?;
    let seen: BTreeSet<(&str, &str, Option<&str>, Vec<&str>)> = scopes
        .iter()
        .map(|scope| {
            let mut grantees: Vec<&str> = grants
                .iter()
                .filter(|g| g.org_id == scope.org_id && g.scope == scope.name)
                .map(|g| g.grantee.as_str())
                .collect();
            grantees.sort_unstable();
            (
                tenant_of.get(scope.org_id.as_str()).copied().unwrap_or(""),
                scope.name.as_str(),
                scope.description.as_deref(),
                grantees,
            )
        })
        .collect();
    let expected: BTreeSet<(&str, &str, Option<&str>, Vec<&str>)> = fixture
        .org_scopes
        .iter()
        .map(|scope| {
            let mut grantees: Vec<&str> = scope.grantees.iter().map(String::as_str).collect();
            grantees.sort_unstable();
            (
                scope.org_tenant_id.as_str(),
                scope.name.as_str(),
                scope.description.as_deref(),
                grantees,
            )
        })
        .collect();
    assert_eq!(seen, expected, "organization scopes and their grants");
    let granted: usize = fixture.org_scopes.iter().map(|s| s.grantees.len()).sum();
    assert_eq!(grants.len(), granted, "scope grants");

    let tokens: Vec<TokenRow> = deployment.rows(TOKENS).await?;
    assert_eq!(tokens.len(), fixture.refresh_tokens.len(), "refresh tokens");
    for expected in &fixture.refresh_tokens {
        let what = format!(
            "{}'s token {} ({:?})",
            expected.principal, expected.id, expected.name
        );
        let row = tokens
            .iter()
            .find(|row| row.id == expected.id)
            .ok_or_else(|| format!("{what} is gone"))?;
        assert_eq!(row.user_id, expected.user_id, "{what}: principal");
        assert_eq!(row.name, expected.name, "{what}: name");
        assert_eq!(row.named, expected.named, "{what}: named");
        assert_eq!(row.scope, expected.scope, "{what}: scope");
        assert_eq!(
            row.expires_at,
            fixture.expiry_now(expected, shift),
            "{what}: expiry"
        );
        assert_eq!(row.created_by, expected.created_by, "{what}: minted by");
        assert_eq!(
            row.revoked_at.is_some(),
            expected.revoked,
            "{what}: revoked"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Refresh tokens.

/// Every token answers /auth/refresh as it answered make.sh: a live one with the same scope,
/// as its principal; a dead one with the same error and reason (a removed person or service
/// account, a revoked token, a token past its own expiry).
async fn tokens_answer_as_before(server: &Server, fixture: &Fixture) -> TestResult {
    for token in &fixture.refresh_tokens {
        let what = format!(
            "{}'s token {} ({:?})",
            token.principal, token.id, token.name
        );
        let (status, body) = server.refresh(&token.token).await?;
        assert_eq!(status, token.answer.status, "{what}: {body}");
        if !token.live {
            assert_eq!(
                body["error"].as_str(),
                token.answer.error.as_deref(),
                "{what}: {body}"
            );
            assert_eq!(
                body["error_description"].as_str(),
                token.answer.error_description.as_deref(),
                "{what}: dead for another reason now: {body}"
            );
            assert!(body["access_token"].is_null(), "{what}: {body}");
            continue;
        }
        assert_eq!(
            body["scope"].as_str(),
            token.answer.scope.as_deref(),
            "{what}: {body}"
        );
        let access = body["access_token"]
            .as_str()
            .ok_or_else(|| format!("{what}: no access_token: {body}"))?;
        let claims = jwt_claims(access)?;
        assert_eq!(claims["sub"], token.user_id.as_str(), "{what}: {claims}");
        assert_eq!(claims["sid"], token.id.as_str(), "{what}: {claims}");
        assert_eq!(
            claims["tid"],
            token.org_tenant_id.as_str(),
            "{what}: {claims}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Organizations, through the API.

/// Each organization as its Owner sees it with an old token: the token policy, the live
/// service accounts (name, description, role, direct grants) and its own scopes with the
/// roles and service accounts granted them.
async fn organizations_kept(server: &Server, fixture: &Fixture) -> TestResult {
    for org in &fixture.organizations {
        let owner = fixture.owner_token(&org.tenant_id)?;
        let access = server.access_token(&owner.token).await?;
        let (status, _, body) = server.graphql(Some(&access), ORGANIZATION).await?;
        assert_eq!(status, 200, "{body}");
        assert!(body["errors"].is_null(), "{}: {body}", org.name);
        let data = &body["data"];
        let what = format!("{} as {}", org.name, owner.principal);
        assert_eq!(
            data["organization"]["tenantId"],
            org.tenant_id.as_str(),
            "{what}"
        );
        assert_eq!(
            data["organization"]["tokenPolicy"],
            json!({ "maxLifetimeDays": org.max_token_lifetime_secs.map(|s| s / DAY_SECS) }),
            "{what}: the token policy"
        );

        let accounts_here: Vec<&User> = fixture
            .users
            .iter()
            .filter(|u| u.kind == "service" && u.org_tenant_id == org.tenant_id && !u.removed)
            .collect();
        let mut expected = BTreeSet::new();
        for account in &accounts_here {
            let direct: Vec<String> = {
                let mut names: Vec<String> = fixture
                    .org_scopes
                    .iter()
                    .filter(|s| s.grantees.contains(&format!("user:{}", account.id)))
                    .map(|s| s.name.clone())
                    .collect();
                names.sort_unstable();
                names
            };
            expected.insert((
                public_id("ServiceAccount", &account.id),
                account.name.clone(),
                account.description.clone(),
                role_name(&account.role)?.to_owned(),
                direct,
            ));
        }
        let listed: BTreeSet<AccountView> = data["serviceAccounts"]
            .as_array()
            .ok_or_else(|| format!("{what}: no service accounts: {body}"))?
            .iter()
            .map(|a| {
                (
                    a["id"].as_str().unwrap_or_default().to_owned(),
                    a["name"].as_str().unwrap_or_default().to_owned(),
                    a["description"].as_str().map(str::to_owned),
                    a["role"]["name"].as_str().unwrap_or_default().to_owned(),
                    strings(&a["scopes"]),
                )
            })
            .collect();
        assert_eq!(listed, expected, "{what}: the service accounts");

        let name_of: BTreeMap<String, &str> = fixture
            .users
            .iter()
            .map(|u| (format!("user:{}", u.id), u.name.as_str()))
            .collect();
        let mut expected = BTreeSet::new();
        for scope in fixture
            .org_scopes
            .iter()
            .filter(|s| s.org_tenant_id == org.tenant_id)
        {
            let mut roles = Vec::new();
            let mut accounts = Vec::new();
            for grantee in &scope.grantees {
                match grantee.strip_prefix("role:") {
                    Some(key) => roles.push(role_name(key)?.to_owned()),
                    None => accounts.push(
                        name_of
                            .get(grantee)
                            .copied()
                            .ok_or_else(|| format!("unknown grantee {grantee}"))?
                            .to_owned(),
                    ),
                }
            }
            roles.sort_unstable();
            accounts.sort_unstable();
            expected.insert((
                scope.name.clone(),
                scope.description.clone(),
                roles,
                accounts,
            ));
        }
        let declared: BTreeSet<ScopeView> = data["scopes"]
            .as_array()
            .ok_or_else(|| format!("{what}: no scopes: {body}"))?
            .iter()
            .filter(|s| s["builtIn"] == false)
            .map(|s| {
                let names = |list: &Value| {
                    let mut names: Vec<String> = list
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .filter_map(|i| i["name"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    names.sort_unstable();
                    names
                };
                (
                    s["name"].as_str().unwrap_or_default().to_owned(),
                    s["description"].as_str().map(str::to_owned),
                    names(&s["roles"]),
                    names(&s["serviceAccounts"]),
                )
            })
            .collect();
        assert_eq!(declared, expected, "{what}: the organization's scopes");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. The new feature on old data.

/// The Owner of Org A, with the token make.sh minted for them, gives the old service account
/// `ci-bot` a trust policy restricted to `deploy:prod`, a scope it holds through a grant made
/// before the upgrade; the policy is listed, and the account's old tokens keep working.
async fn trust_policy_for_an_old_account(server: &Server, fixture: &Fixture) -> TestResult {
    let account = fixture.service_account("ci-bot")?;
    let org = &account.org_tenant_id;
    let granted: Vec<&str> = fixture
        .org_scopes
        .iter()
        .filter(|s| s.grantees.contains(&format!("user:{}", account.id)))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(granted, ["deploy:prod"], "ci-bot's direct grant");
    let owner = fixture.owner_token(org)?;
    let access = server.access_token(&owner.token).await?;

    let mutation = format!(
        "mutation {{ createTrustPolicy(input: {{ name: \"{POLICY_NAME}\", issuer: \"{ISSUER}\", \
         audience: \"{AUDIENCE}\", conditions: [{{claim: \"sub\", match: EXACT, \
         value: \"{SUBJECT}\"}}], serviceAccountId: \"{}\", scopes: [\"deploy:prod\"] }}) {{ \
         trustPolicy {{ id name issuer audience conditions {{ claim match value }} \
         serviceAccount {{ id name }} scopes maxTokenAgeSeconds enabled lastUsedAt }} \
         errors {{ field messages }} }} }}",
        public_id("ServiceAccount", &account.id)
    );
    let (status, _, body) = server.graphql(Some(&access), &mutation).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body["errors"].is_null(), "{body}");
    let created = &body["data"]["createTrustPolicy"];
    assert_eq!(created["errors"], json!([]), "{body}");
    let policy = &created["trustPolicy"];
    assert_eq!(policy["name"], POLICY_NAME, "{body}");
    assert_eq!(policy["issuer"], ISSUER, "{body}");
    assert_eq!(policy["audience"], AUDIENCE, "{body}");
    assert_eq!(
        policy["conditions"],
        json!([{ "claim": "sub", "match": "EXACT", "value": SUBJECT }]),
        "{body}"
    );
    assert_eq!(
        policy["serviceAccount"],
        json!({ "id": public_id("ServiceAccount", &account.id), "name": account.name }),
        "{body}"
    );
    assert_eq!(policy["scopes"], json!(["deploy:prod"]), "{body}");
    assert_eq!(policy["maxTokenAgeSeconds"], 3600, "{body}");
    assert_eq!(policy["enabled"], true, "{body}");
    assert!(policy["lastUsedAt"].is_null(), "{body}");

    let (status, _, listed) = server
        .graphql(
            Some(&access),
            "{ trustPolicies { id name serviceAccount { name } } }",
        )
        .await?;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["data"]["trustPolicies"],
        json!([{ "id": policy["id"], "name": POLICY_NAME,
                 "serviceAccount": { "name": account.name } }]),
        "{listed}"
    );

    for token in fixture
        .refresh_tokens
        .iter()
        .filter(|t| t.live && t.user_id == account.id)
    {
        let (status, body) = server.refresh(&token.token).await?;
        assert_eq!(
            status, 200,
            "{:?} after the trust policy: {body}",
            token.name
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The copied fixture and its database.

/// The live named tokens expire 14 to 90 days after make.sh ran: every token make.sh used
/// (refreshed) has its expiry moved forward by the fixture's age ([`Fixture::shift_ms`]), so
/// that it is as far from its end as it was then. "owner short" expired before its only use
/// and keeps its expiry: its refusal names that time.
const SHIFT_EXPIRIES: &str = "UPDATE refresh_tokens SET expires_at = expires_at + $1 \
                              WHERE expires_at IS NOT NULL AND last_used_at IS NOT NULL";

const ORGANIZATIONS: &str = "SELECT id, name, tenant_id, refresh_idle_expiry_secs, \
                             refresh_max_age_secs, max_token_lifetime_secs FROM organizations";

#[derive(sqlx::FromRow)]
struct OrgRow {
    id: String,
    name: String,
    tenant_id: String,
    refresh_idle_expiry_secs: Option<i64>,
    refresh_max_age_secs: Option<i64>,
    max_token_lifetime_secs: Option<i64>,
}

const USERS: &str = "SELECT u.id, o.tenant_id, u.kind, u.email, u.name, u.description, u.role, \
                     u.removed_at, u.token_epoch \
                     FROM users u JOIN organizations o ON o.id = u.org_id";

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    tenant_id: String,
    kind: String,
    email: String,
    name: String,
    description: Option<String>,
    role: String,
    removed_at: Option<i64>,
    token_epoch: i64,
}

const SCOPES: &str = "SELECT org_id, name, description FROM org_scopes";

#[derive(sqlx::FromRow)]
struct ScopeRow {
    org_id: String,
    name: String,
    description: Option<String>,
}

const GRANTS: &str = "SELECT org_id, scope, grantee FROM scope_grants";

#[derive(sqlx::FromRow)]
struct GrantRow {
    org_id: String,
    scope: String,
    grantee: String,
}

const TOKENS: &str = "SELECT id, user_id, name, named, scope, expires_at, created_by, revoked_at \
                      FROM refresh_tokens";

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    user_id: String,
    name: Option<String>,
    named: bool,
    scope: Option<String>,
    expires_at: Option<i64>,
    created_by: Option<String>,
    revoked_at: Option<i64>,
}
