//! What the upgrade tests from issue 17's schema on share: the part of the manifest every
//! fixture since before-trust-policies holds (organizations, people and service accounts,
//! organization scopes and grants, refresh tokens, counts and migrations), the rows of those
//! tables read back after the upgrade, and the checks that nothing of it was lost or changed,
//! in the database and through the API.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::fixture_db::{DAY_SECS, Deployment, now_ms, public_id, role_name};
use crate::harness::{Server, TestResult, jwt_claims};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// An organization as its Owner sees it: its token policy, service accounts and scopes.
const ORGANIZATION: &str = "{ organization { tenantId tokenPolicy { maxLifetimeDays } } \
                            serviceAccounts { id name description role { name } scopes } \
                            scopes { name description builtIn roles { name } \
                                     serviceAccounts { name } } }";

// ---------------------------------------------------------------------------------------------
// The manifest make.sh wrote next to the fixtures.

/// What every backend's fixture from before-trust-policies on holds (a test's own fixture adds
/// its fields next to these, `#[serde(flatten)]`).
#[derive(Deserialize)]
pub struct Base {
    pub organizations: Vec<Organization>,
    pub users: Vec<User>,
    pub org_scopes: Vec<OrgScope>,
    pub refresh_tokens: Vec<RefreshToken>,
    /// The newest last use of a token (ms): when make.sh was done with this backend.
    made_at: i64,
    row_counts: BTreeMap<String, i64>,
    audit_actions: BTreeMap<String, i64>,
    pub migrations: Vec<i64>,
}

#[derive(Deserialize)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub tenant_id: String,
    pub session_policy: SessionPolicy,
    pub max_token_lifetime_secs: Option<i64>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Debug)]
pub struct SessionPolicy {
    pub idle_expiry_secs: Option<i64>,
    pub max_age_secs: Option<i64>,
}

#[derive(Deserialize)]
pub struct User {
    pub id: String,
    pub org_tenant_id: String,
    /// `person` or `service`.
    pub kind: String,
    pub email: String,
    pub name: String,
    pub description: Option<String>,
    pub role: String,
    pub removed: bool,
    pub token_epoch: i64,
}

#[derive(Deserialize)]
pub struct OrgScope {
    pub org_tenant_id: String,
    pub name: String,
    pub description: Option<String>,
    /// `role:<key>` or `user:<service account id>`.
    pub grantees: Vec<String>,
}

#[derive(Deserialize)]
pub struct RefreshToken {
    pub token: String,
    pub id: String,
    pub user_id: String,
    /// The person's email or the service account's name.
    pub principal: String,
    pub org_tenant_id: String,
    pub name: Option<String>,
    pub named: bool,
    pub scope: Option<String>,
    pub expires_at: Option<i64>,
    pub created_by: Option<String>,
    pub role: String,
    pub last_used_at: Option<i64>,
    pub revoked: bool,
    pub live: bool,
    /// What /auth/refresh answered make.sh the last time.
    pub answer: Answer,
}

/// What an endpoint answered make.sh: the status, and the scope or the refusal.
#[derive(Deserialize)]
pub struct Answer {
    pub status: u16,
    pub scope: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl Base {
    /// How far make.sh's times are moved forward so that they end now: the test's fixup moves
    /// the expiry of every token make.sh used (refreshed) by this much, so that it is as far from
    /// its end as it was then ("owner short" expired before its only use and keeps its expiry:
    /// its refusal names that time).
    pub fn shift_ms(&self) -> Res<i64> {
        Ok((now_ms()? - self.made_at).max(0))
    }

    /// A live, unrestricted and unnamed token of an Owner of `tenant`.
    pub fn owner_token(&self, tenant: &str) -> Res<&RefreshToken> {
        self.refresh_tokens
            .iter()
            .find(|t| t.live && t.org_tenant_id == tenant && t.role == "owner" && !t.named)
            .ok_or_else(|| format!("no live token of an Owner of {tenant} in the manifest").into())
    }
}

impl RefreshToken {
    /// Its expiry once the fixup has moved it `shift` ms ([`Base::shift_ms`]).
    fn expiry_now(&self, shift: i64) -> Option<i64> {
        let moved = self.last_used_at.is_some();
        self.expires_at
            .map(|at| if moved { at + shift } else { at })
    }
}

/// The fixture's own promises about issue 17's data, so that the checks check something:
/// live service accounts of two roles, named tokens with scopes and expiries, dead tokens for
/// several reasons, a token policy, organization scopes.
pub fn promises(base: &Base) {
    let live_accounts: BTreeSet<&str> = base
        .users
        .iter()
        .filter(|u| u.kind == "service" && !u.removed)
        .map(|u| u.role.as_str())
        .collect();
    assert_eq!(live_accounts, BTreeSet::from(["admin", "integrator"]));
    assert!(
        base.refresh_tokens
            .iter()
            .any(|t| t.live && t.named && t.expires_at.is_some() && t.scope.is_some()),
        "named tokens with scopes and expiries"
    );
    let reasons: BTreeSet<&str> = base
        .refresh_tokens
        .iter()
        .filter_map(|t| t.answer.error_description.as_deref())
        .collect();
    assert!(
        reasons.len() >= 3,
        "dead tokens for several reasons: {reasons:?}"
    );
    assert!(
        base.organizations
            .iter()
            .any(|o| o.max_token_lifetime_secs.is_some()),
        "an organization with a token policy"
    );
    assert!(!base.org_scopes.is_empty(), "organization scopes");
}

// ---------------------------------------------------------------------------------------------
// The rows.

/// The row count of every old table but `_sqlx_migrations` (which gains the new migrations: the
/// test checks those) as make.sh counted it, and the audit events by action, exactly.
pub async fn counts_kept(
    deployment: &Deployment,
    row_counts: &BTreeMap<String, i64>,
    audit_actions: &BTreeMap<String, i64>,
) -> TestResult {
    for (table, before) in row_counts.iter().filter(|(t, _)| *t != "_sqlx_migrations") {
        let now = deployment.count(table).await?;
        assert_eq!(now, *before, "{table}: {now} rows, {before} before");
    }
    assert_eq!(
        deployment.audit_actions().await?,
        *audit_actions,
        "audit events by action"
    );
    Ok(())
}

/// The row counts and audit events ([`counts_kept`]), and every organization, person, service
/// account, scope, grant and refresh token as make.sh left it, each refresh token of no trust
/// policy and its expiry moved `shift` ms if make.sh used it. `sessions` more refresh_tokens
/// rows are the sessions of OIDC token exchanges (the test checks those).
pub async fn rows_kept(
    deployment: &Deployment,
    base: &Base,
    shift: i64,
    sessions: usize,
) -> TestResult {
    counts_kept(deployment, &base.row_counts, &base.audit_actions).await?;

    let orgs: Vec<OrgRow> = deployment.rows(ORGANIZATIONS).await?;
    assert_eq!(orgs.len(), base.organizations.len(), "organizations");
    for org in &base.organizations {
        let row = orgs
            .iter()
            .find(|row| row.id == org.id)
            .ok_or_else(|| format!("organization {} is gone", org.name))?;
        let what = format!("organization {}", org.name);
        assert_eq!(row.name, org.name, "{what}: name");
        assert_eq!(row.tenant_id, org.tenant_id, "{what}: tenant");
        assert_eq!(
            row.session_policy(),
            org.session_policy,
            "{what}: session policy"
        );
        assert_eq!(
            row.max_token_lifetime_secs, org.max_token_lifetime_secs,
            "{what}: token policy"
        );
    }

    let users: Vec<UserRow> = deployment.rows(USERS).await?;
    assert_eq!(users.len(), base.users.len(), "users");
    for expected in &base.users {
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
    let expected: BTreeSet<(&str, &str, Option<&str>, Vec<&str>)> = base
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
    let granted: usize = base.org_scopes.iter().map(|s| s.grantees.len()).sum();
    assert_eq!(grants.len(), granted, "scope grants");

    let tokens: Vec<TokenRow> = deployment.rows(TOKENS).await?;
    assert_eq!(
        tokens.len(),
        base.refresh_tokens.len() + sessions,
        "refresh tokens and {sessions} sessions of exchanges"
    );
    for expected in &base.refresh_tokens {
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
        assert_eq!(row.expires_at, expected.expiry_now(shift), "{what}: expiry");
        assert_eq!(row.created_by, expected.created_by, "{what}: minted by");
        assert_eq!(
            row.revoked_at.is_some(),
            expected.revoked,
            "{what}: revoked"
        );
        assert!(row.trust_policy_id.is_none(), "{what}: of no policy");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Refresh tokens.

/// Every token answers /auth/refresh as it answered make.sh: a live one with the same scope,
/// as its principal (and, given `issuer`, with that `iss`); a dead one with the same error and
/// reason (a removed person or service account, a revoked token, a token past its own expiry).
pub async fn tokens_answer_as_before(
    server: &Server,
    base: &Base,
    issuer: Option<&str>,
) -> TestResult {
    for token in &base.refresh_tokens {
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
        if let Some(issuer) = issuer {
            assert_eq!(claims["iss"], issuer, "{what}: {claims}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Organizations, through the API.

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

/// The `name`s of the objects of a JSON array (an empty list for anything else), sorted.
fn names(list: &Value) -> Vec<String> {
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
}

/// Each organization as its Owner sees it with an old token: the token policy, the live
/// service accounts (name, description, role, direct grants) and its own scopes with the
/// roles and service accounts granted them.
pub async fn organizations_kept(server: &Server, base: &Base) -> TestResult {
    for org in &base.organizations {
        let owner = base.owner_token(&org.tenant_id)?;
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

        let mut expected = BTreeSet::new();
        for account in base
            .users
            .iter()
            .filter(|u| u.kind == "service" && u.org_tenant_id == org.tenant_id && !u.removed)
        {
            let mut direct: Vec<String> = base
                .org_scopes
                .iter()
                .filter(|s| s.grantees.contains(&format!("user:{}", account.id)))
                .map(|s| s.name.clone())
                .collect();
            direct.sort_unstable();
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

        let name_of: BTreeMap<String, &str> = base
            .users
            .iter()
            .map(|u| (format!("user:{}", u.id), u.name.as_str()))
            .collect();
        let mut expected = BTreeSet::new();
        for scope in base
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
// The upgraded database's rows.

pub const ORGANIZATIONS: &str = "SELECT id, name, tenant_id, refresh_idle_expiry_secs, \
                                 refresh_max_age_secs, max_token_lifetime_secs \
                                 FROM organizations";

#[derive(sqlx::FromRow)]
pub struct OrgRow {
    pub id: String,
    pub name: String,
    pub tenant_id: String,
    refresh_idle_expiry_secs: Option<i64>,
    refresh_max_age_secs: Option<i64>,
    pub max_token_lifetime_secs: Option<i64>,
}

impl OrgRow {
    pub fn session_policy(&self) -> SessionPolicy {
        SessionPolicy {
            idle_expiry_secs: self.refresh_idle_expiry_secs,
            max_age_secs: self.refresh_max_age_secs,
        }
    }
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

const TOKENS: &str = "SELECT id, user_id, name, named, scope, expires_at, created_by, revoked_at, \
                      trust_policy_id FROM refresh_tokens";

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
    trust_policy_id: Option<String>,
}
