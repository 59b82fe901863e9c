//! Scopes (issue 17) end to end. A table written here, independently of the server, says for
//! every role and every query and mutation of `/api` which role rule and which built-in scopes
//! it needs; one server then runs every operation for every role × token scope set and checks
//! allowed / refused exactly: allowed iff the role's own rule allows it and every scope it needs
//! is in (the role's scopes ∩ the token's scopes). Beside the table: the `scope` parameter of
//! `/auth/refresh` and of the `/oauth/token` refresh grant narrows (the official client's OIDC
//! names narrow nothing), the access token's `scope` claim, organization-defined scopes
//! declared, granted (to roles and service accounts), minted, revoked and deleted, and a demotion
//! that narrows live access tokens at once, also on another PostgreSQL replica.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::harness::{
    CHANGE_REACH_BOUND, Server, TestResult, admin_ok, api, jwt_claims, oauth_refresh, prismd,
    refresh_with_scope, temp_dir,
};
use crate::postgres::FreshDatabase;
use crate::replicas::replica;

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The `scope` of an unrestricted token, as before scopes existed.
pub const OIDC: &str = "openid profile email offline_access";

/// The spec's built-in scopes.
const BUILT_IN: [&str; 7] = [
    "users:read",
    "users:write",
    "profile:write",
    "sessions:read",
    "sessions:write",
    "audit:read",
    "org:admin",
];

/// What Integrators, Restricted Integrators and Guests may hold (the spec's table).
const MEMBER_SCOPES: [&str; 4] = [
    "users:read",
    "profile:write",
    "sessions:read",
    "sessions:write",
];

// ---------------------------------------------------------------------------------------------
// GraphQL documents (shared with service_accounts.rs and token_expiry.rs).

pub const ROLES: &str = "{ organizationRoles { id name } }";
pub const CREATE_USER: &str = "mutation($email: String!, $role: ID!) { createOrganizationUser(input: {email: $email, role: $role}) { user { id email } errors { field messages } } }";
pub const DELETE_USER: &str =
    "mutation($id: ID!) { deleteUser(input: {id: $id}) { user { id } errors { field messages } } }";
pub const UPDATE_NAME: &str = "mutation($id: ID!, $name: String!) { updateUser(input: {id: $id, name: $name}) { user { id } errors { field messages } } }";
pub const SET_ROLE: &str = "mutation($id: ID!, $role: ID!) { updateUser(input: {id: $id, role: $role}) { user { id role { name } } errors { field messages } } }";
pub const INVITE: &str = "mutation($id: ID!) { createUserInvitation(input: {id: $id}) { url errors { field messages } } }";
pub const CREATE_SA: &str = "mutation($name: String!, $role: ID!, $description: String) { createServiceAccount(input: {name: $name, role: $role, description: $description}) { serviceAccount { id name description role { id name } createdAt scopes } errors { field messages } } }";
pub const UPDATE_SA_DESCRIPTION: &str = "mutation($id: ID!, $description: String) { updateServiceAccount(input: {id: $id, description: $description}) { serviceAccount { id description } errors { field messages } } }";
pub const DELETE_SA: &str = "mutation($id: ID!) { deleteServiceAccount(input: {id: $id}) { serviceAccount { id } errors { field messages } } }";
pub const REVOKE_SESSION: &str = "mutation($id: ID!) { revokeSession(input: {id: $id}) { session { id } errors { field messages } } }";
pub const REVOKE_ALL: &str = "mutation($userId: ID) { revokeAllSessions(input: {userId: $userId}) { user { id } errors { field messages } } }";
pub const CREATE_TOKEN: &str = "mutation($name: String!, $scopes: [String!], $sa: ID, $days: Int, $at: String) { createToken(input: {name: $name, scopes: $scopes, serviceAccountId: $sa, expiresInDays: $days, expiresAt: $at}) { token session { id name scopes expiresAt named createdAt } errors { field messages } } }";
/// A trust policy (keyless CI) for the service account `$sa`, of a GitHub-shaped issuer; only
/// its settings are checked at creation, nothing is fetched.
const CREATE_TRUST_POLICY: &str = "mutation($name: String!, $sa: ID!) { createTrustPolicy(input: {name: $name, issuer: \"https://token.actions.githubusercontent.com\", audience: \"https://prism.matrix.test\", conditions: [{claim: \"repository_id\", value: \"1\"}], serviceAccountId: $sa}) { trustPolicy { id name } errors { field messages } } }";
const RENAME_TRUST_POLICY: &str = "mutation($id: ID!, $name: String!) { updateTrustPolicy(input: {id: $id, name: $name}) { trustPolicy { id name } errors { field messages } } }";
const DELETE_TRUST_POLICY: &str =
    "mutation($id: ID!) { deleteTrustPolicy(id: $id) { deleted errors { field messages } } }";

pub const CREATE_SCOPE: &str = "mutation($name: String!, $description: String) { createScope(input: {name: $name, description: $description}) { scope { name description builtIn } errors { field messages } } }";
pub const DELETE_SCOPE: &str = "mutation($name: String!) { deleteScope(input: {name: $name}) { scope { name } errors { field messages } } }";
pub const GRANT_TO_ROLE: &str = "mutation($scope: String!, $role: ID!) { grantScope(input: {scope: $scope, role: $role}) { scope { name } errors { field messages } } }";
pub const GRANT_TO_SA: &str = "mutation($scope: String!, $sa: ID!) { grantScope(input: {scope: $scope, serviceAccountId: $sa}) { scope { name } errors { field messages } } }";
pub const REVOKE_FROM_ROLE: &str = "mutation($scope: String!, $role: ID!) { revokeScope(input: {scope: $scope, role: $role}) { scope { name } errors { field messages } } }";
pub const REVOKE_FROM_SA: &str = "mutation($scope: String!, $sa: ID!) { revokeScope(input: {scope: $scope, serviceAccountId: $sa}) { scope { name } errors { field messages } } }";
const SCOPES: &str =
    "{ scopes { name description builtIn roles { name } serviceAccounts { id name } } }";
const USERS: &str = "{ organization { users(first: 1) { nodes { id } } } }";
const AUDIT: &str = "{ auditEvents(first: 1) { nodes { id } } }";

// ---------------------------------------------------------------------------------------------
// Shared helpers.

/// `/api` as `access`; the JSON body, failing on anything but HTTP 200.
pub async fn call(server: &Server, access: &str, query: &str, variables: Value) -> Res<Value> {
    let (status, body) = api(server, access, query, variables).await?;
    if status != 200 {
        return Err(format!("HTTP {status} from /api: {body}").into());
    }
    Ok(body)
}

/// A mutation that must succeed: no GraphQL error and `errors: []` in its payload, which it
/// returns.
pub async fn must(
    server: &Server,
    access: &str,
    query: &str,
    variables: Value,
    field: &str,
) -> Res<Value> {
    let body = call(server, access, query, variables).await?;
    let payload = &body["data"][field];
    if has_errors(&body) || payload["errors"] != json!([]) {
        return Err(format!("{field} failed: {body}").into());
    }
    Ok(payload.clone())
}

/// A mutation that must be refused: the payload's errors, failing unless there is at least
/// one, no GraphQL error, and the payload's `object` is null.
pub async fn refused(
    server: &Server,
    access: &str,
    query: &str,
    variables: Value,
    field: &str,
    object: &str,
) -> Res<Vec<Value>> {
    let body = call(server, access, query, variables).await?;
    let payload = &body["data"][field];
    let errors = payload["errors"].as_array().cloned().unwrap_or_default();
    if has_errors(&body) || errors.is_empty() || !payload[object].is_null() {
        return Err(format!("{field} was not refused: {body}").into());
    }
    Ok(errors)
}

fn has_errors(body: &Value) -> bool {
    body["errors"].as_array().is_some_and(|e| !e.is_empty())
}

/// The role ids of `organizationRoles`, by display name.
pub async fn role_ids(server: &Server, access: &str) -> Res<BTreeMap<String, String>> {
    let body = call(server, access, ROLES, json!({})).await?;
    let roles = body["data"]["organizationRoles"]
        .as_array()
        .ok_or_else(|| format!("no roles: {body}"))?;
    Ok(roles
        .iter()
        .filter_map(|r| Some((r["name"].as_str()?.to_owned(), r["id"].as_str()?.to_owned())))
        .collect())
}

/// The API scopes of a space-separated `scope`.
pub fn scope_set(scope: &str) -> BTreeSet<String> {
    scope.split_whitespace().map(str::to_owned).collect()
}

/// The `scope` claim of an access token.
pub fn claim_scope(access: &str) -> Res<String> {
    let claims = jwt_claims(access)?;
    Ok(claims["scope"]
        .as_str()
        .ok_or_else(|| format!("no scope claim: {claims}"))?
        .to_owned())
}

/// Exchanges `token` (at `/auth/refresh`, with `scope` when given); the access token, failing
/// unless the answer is 200 and its `scope` is the access token's claim.
pub async fn exchange(server: &Server, token: &str, scope: Option<&str>) -> Res<String> {
    let (status, body) = refresh_with_scope(server, token, scope).await?;
    if status != 200 {
        return Err(format!("refresh (scope {scope:?}) answered {status}: {body}").into());
    }
    let access = body["access_token"]
        .as_str()
        .ok_or("no access_token")?
        .to_owned();
    assert_eq!(
        body["scope"].as_str(),
        Some(claim_scope(&access)?.as_str()),
        "the response's scope is not the claim's: {body}"
    );
    Ok(access)
}

/// The answer to a refused exchange, failing unless it is 400 `error`.
pub fn expect_error(answer: &(u16, Value), error: &str, what: &str) {
    assert_eq!(
        (answer.0, answer.1["error"].as_str()),
        (400, Some(error)),
        "{what}: {}",
        answer.1
    );
}

fn lacks(scope: &str) -> String {
    format!("this token lacks the scope {scope}")
}

/// A query field that must be refused for a missing scope: null, with a `FORBIDDEN` error
/// naming the scope.
async fn query_lacks(server: &Server, access: &str, query: &str, scope: &str) -> TestResult {
    let body = call(server, access, query, json!({})).await?;
    let errors = body["errors"].as_array().cloned().unwrap_or_default();
    assert!(
        errors.iter().any(
            |e| e["message"] == lacks(scope).as_str() && e["extensions"]["code"] == "FORBIDDEN"
        ),
        "expected '{}' for {query}: {body}",
        lacks(scope)
    );
    Ok(())
}

/// Whether `query` answers without any error.
async fn query_works(server: &Server, access: &str, query: &str) -> Res<bool> {
    let body = call(server, access, query, json!({})).await?;
    Ok(!has_errors(&body) && body["data"].is_object())
}

/// Adds a member with the operator command; their id.
pub fn add_member(data: &Path, email: &str, role: &str) -> Res<String> {
    admin_ok(data, &["users", "add", "--email", email, "--role", role])
}

/// A named token of `email`, minted by the operator command.
pub fn named_token(data: &Path, email: &str, name: &str) -> Res<String> {
    admin_ok(
        data,
        &["tokens", "create", "--email", email, "--name", name],
    )
}

/// An access token of the first Owner.
pub async fn owner_access(server: &Server, data: &Path) -> Res<String> {
    exchange(
        server,
        &named_token(data, "owner@localhost", "owner")?,
        None,
    )
    .await
}

/// Access tokens that are not standing tokens of this server, made from `access` (a standing
/// one of the server's first Owner), each with what it is: garbage, a tampered signature, a
/// tampered payload (a later `exp`, another `sub`), an unsigned one (`alg: none`) and a valid
/// token of another prismd (its own key and issuer, started and stopped here). Forward auth
/// and introspection refuse each as `/api` does.
pub async fn tokens_that_do_not_stand(access: &str) -> Res<Vec<(String, &'static str)>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut tampered_signature = access.to_owned();
    let last = tampered_signature.pop().ok_or("empty token")?;
    tampered_signature.push(if last == 'A' { 'B' } else { 'A' });
    let parts: Vec<&str> = access.split('.').collect();
    let (Some(header), Some(signature)) = (parts.first(), parts.get(2)) else {
        return Err(format!("not a JWT: {access}").into());
    };
    let mut claims = jwt_claims(access)?;
    claims["exp"] = json!(claims["exp"].as_i64().ok_or("no exp")? + 86_400);
    claims["sub"] = json!(uuid::Uuid::new_v4().to_string());
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
    let tampered_payload = format!("{header}.{payload}.{signature}");
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"at+jwt"}"#);
    let unsigned = format!("{none_header}.{payload}.");
    let other_dir = temp_dir()?;
    let other = Server::start(other_dir.path())?;
    let foreign = owner_access(&other, other_dir.path()).await?;
    stop_clean(other)?;
    Ok(vec![
        ("garbage".to_owned(), "garbage"),
        ("a.b.c".to_owned(), "three dots of nothing"),
        (tampered_signature, "a tampered signature"),
        (tampered_payload, "a tampered payload"),
        (unsigned, "an unsigned token"),
        (foreign, "another server's token"),
    ])
}

/// `manager` revokes the session of `member`'s access token (the one `current` in the
/// member's own view) with `revokeSession`.
pub async fn revoke_current_session(server: &Server, manager: &str, member: &str) -> TestResult {
    let mine = call(
        server,
        member,
        "{ authenticatedUser { sessions { id current } } }",
        json!({}),
    )
    .await?;
    let session = mine["data"]["authenticatedUser"]["sessions"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["current"] == true))
        .ok_or_else(|| format!("no current session: {mine}"))?;
    must(
        server,
        manager,
        REVOKE_SESSION,
        json!({ "id": text(&session["id"])? }),
        "revokeSession",
    )
    .await?;
    Ok(())
}

/// The id of the role `name` among `roles`.
pub fn role_of(roles: &BTreeMap<String, String>, name: &str) -> Res<String> {
    Ok(roles.get(name).ok_or(format!("no role {name}"))?.clone())
}

/// The id of the role `name`, as `access` reads it.
pub async fn role_id(server: &Server, access: &str, name: &str) -> Res<String> {
    role_of(&role_ids(server, access).await?, name)
}

/// A service account `name` of the role id `role`, created by `access`; its id.
pub async fn create_sa(server: &Server, access: &str, name: &str, role: &str) -> Res<String> {
    let payload = must(
        server,
        access,
        CREATE_SA,
        json!({ "name": name, "role": role }),
        "createServiceAccount",
    )
    .await?;
    text(&payload["serviceAccount"]["id"])
}

/// The first error of a refused payload as (field, message).
pub fn first_error(errors: &[Value]) -> (String, String) {
    (
        errors[0]["field"].as_str().unwrap_or("").to_owned(),
        errors[0]["messages"][0].as_str().unwrap_or("").to_owned(),
    )
}

/// Stops `server`, failing if its logs hold an error.
pub fn stop_clean(server: Server) -> TestResult {
    let logs = server.stop()?;
    assert!(!logs.contains("ERROR"), "{logs}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The table.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Owner,
    Admin,
    Integrator,
    RestrictedIntegrator,
    Guest,
}

impl Role {
    const ALL: [Role; 5] = [
        Role::Owner,
        Role::Admin,
        Role::Integrator,
        Role::RestrictedIntegrator,
        Role::Guest,
    ];

    fn name(self) -> &'static str {
        match self {
            Role::Owner => "Owner",
            Role::Admin => "Admin",
            Role::Integrator => "Integrator",
            Role::RestrictedIntegrator => "Restricted Integrator",
            Role::Guest => "Guest",
        }
    }

    /// The built-in scopes the role may hold.
    fn holds(self, scope: &str) -> bool {
        match self {
            Role::Owner | Role::Admin => BUILT_IN.contains(&scope),
            _ => MEMBER_SCOPES.contains(&scope),
        }
    }
}

/// The role rule of an operation, from before scopes.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// Every member (on themselves, where it acts on someone).
    Anyone,
    /// Owners and Admins (on members who are not Owners).
    Managers,
    /// Owners only.
    Owners,
}

impl Who {
    fn allows(self, role: Role) -> bool {
        match self {
            Who::Anyone => true,
            Who::Managers => matches!(role, Role::Owner | Role::Admin),
            Who::Owners => role == Role::Owner,
        }
    }
}

/// Every operation of the schema the table covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Me,
    Tenants,
    OrgBasics,
    Roles,
    Scopes,
    Users,
    ServiceAccounts,
    SessionPolicy,
    TokenPolicy,
    AuditEvents,
    MySessions,
    MemberSessions,
    ServiceAccountTokens,
    CreateUser,
    DeleteUser,
    UpdateMyProfile,
    UpdateOther,
    UpdateOthersRole,
    Invite,
    CreateServiceAccount,
    UpdateServiceAccount,
    DeleteServiceAccount,
    RevokeMySession,
    RevokeAllOfMember,
    UpdateSessionPolicy,
    UpdateTokenPolicy,
    CreateScope,
    DeleteScope,
    GrantScope,
    RevokeScope,
    CreateMyToken,
    CreateServiceAccountToken,
    TrustPolicies,
    CreateTrustPolicy,
    UpdateTrustPolicy,
    DeleteTrustPolicy,
    /// Ends the caller's own sessions: last, as it ends the token in use.
    RevokeAllMine,
}

impl Op {
    fn is_mutation(self) -> bool {
        !matches!(
            self,
            Op::Me
                | Op::Tenants
                | Op::OrgBasics
                | Op::Roles
                | Op::Scopes
                | Op::Users
                | Op::ServiceAccounts
                | Op::SessionPolicy
                | Op::TokenPolicy
                | Op::AuditEvents
                | Op::MySessions
                | Op::MemberSessions
                | Op::ServiceAccountTokens
                | Op::TrustPolicies
        )
    }
}

/// The spec's table: what each operation needs, written here and not read from the server.
/// `serviceAccounts` has no role rule in the spec (`users:read` unlocks it, as it does
/// `organization { users }`, which every member reads); the tokens of a service account are
/// someone else's sessions, which only managers see.
const TABLE: &[(Op, &[&str], Who)] = &[
    (Op::Me, &[], Who::Anyone),
    (Op::Tenants, &[], Who::Anyone),
    (Op::OrgBasics, &[], Who::Anyone),
    (Op::Roles, &[], Who::Anyone),
    (Op::Scopes, &[], Who::Anyone),
    (Op::Users, &["users:read"], Who::Anyone),
    (Op::ServiceAccounts, &["users:read"], Who::Anyone),
    (Op::SessionPolicy, &["org:admin"], Who::Managers),
    (Op::TokenPolicy, &["org:admin"], Who::Managers),
    (Op::AuditEvents, &["audit:read"], Who::Managers),
    (Op::MySessions, &["sessions:read"], Who::Anyone),
    (
        Op::MemberSessions,
        &["users:read", "sessions:read"],
        Who::Managers,
    ),
    (
        Op::ServiceAccountTokens,
        &["users:read", "sessions:read"],
        Who::Managers,
    ),
    (Op::CreateUser, &["users:write"], Who::Managers),
    (Op::DeleteUser, &["users:write"], Who::Managers),
    (Op::UpdateMyProfile, &["profile:write"], Who::Anyone),
    (Op::UpdateOther, &["users:write"], Who::Managers),
    (Op::UpdateOthersRole, &["users:write"], Who::Managers),
    (Op::Invite, &["users:write"], Who::Managers),
    (Op::CreateServiceAccount, &["users:write"], Who::Managers),
    (Op::UpdateServiceAccount, &["users:write"], Who::Managers),
    (Op::DeleteServiceAccount, &["users:write"], Who::Managers),
    (Op::RevokeMySession, &["sessions:write"], Who::Anyone),
    (Op::RevokeAllOfMember, &["sessions:write"], Who::Managers),
    (Op::UpdateSessionPolicy, &["org:admin"], Who::Owners),
    (Op::UpdateTokenPolicy, &["org:admin"], Who::Owners),
    (Op::CreateScope, &["org:admin"], Who::Managers),
    (Op::DeleteScope, &["org:admin"], Who::Managers),
    (Op::GrantScope, &["org:admin"], Who::Managers),
    (Op::RevokeScope, &["org:admin"], Who::Managers),
    (Op::CreateMyToken, &["sessions:write"], Who::Anyone),
    (
        Op::CreateServiceAccountToken,
        &["sessions:write"],
        Who::Managers,
    ),
    (Op::TrustPolicies, &["org:admin"], Who::Managers),
    (Op::CreateTrustPolicy, &["org:admin"], Who::Managers),
    (Op::UpdateTrustPolicy, &["org:admin"], Who::Managers),
    (Op::DeleteTrustPolicy, &["org:admin"], Who::Managers),
    (Op::RevokeAllMine, &["sessions:write"], Who::Anyone),
];

/// The token scope sets of the table: unrestricted, each built-in alone, and pairs (two of
/// them half outside what members may hold).
const SETS: &[Option<&[&str]>] = &[
    None,
    Some(&["users:read"]),
    Some(&["users:write"]),
    Some(&["profile:write"]),
    Some(&["sessions:read"]),
    Some(&["sessions:write"]),
    Some(&["audit:read"]),
    Some(&["org:admin"]),
    Some(&["users:read", "users:write"]),
    Some(&["sessions:read", "sessions:write"]),
    Some(&["audit:read", "org:admin"]),
    Some(&["profile:write", "org:admin"]),
];

/// One row of the matrix: a principal of `role` and its token of `scopes` (None: unrestricted).
struct Cell {
    index: usize,
    role: Role,
    scopes: Option<&'static [&'static str]>,
}

impl Cell {
    fn token_has(&self, scope: &str) -> bool {
        self.scopes.is_none_or(|s| s.contains(&scope))
    }

    /// The role's scopes ∩ the token's.
    fn effective(&self) -> Vec<&'static str> {
        BUILT_IN
            .into_iter()
            .filter(|s| self.role.holds(s) && self.token_has(s))
            .collect()
    }

    /// Whether the principal may mint this token now.
    fn mintable(&self) -> bool {
        self.scopes
            .is_none_or(|s| s.iter().all(|scope| self.role.holds(scope)))
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scopes {
            None => write!(f, "{} × unrestricted", self.role.name()),
            Some(s) => write!(f, "{} × [{}]", self.role.name(), s.join(" ")),
        }
    }
}

/// What an operation answered.
#[derive(Debug)]
enum Outcome {
    Allowed,
    /// `(field or extensions.code, message)` of each error.
    Refused(Vec<(String, String)>),
    /// Neither a clean answer nor a clean refusal.
    Broken(String),
}

/// A query's outcome: `value` (what the operation reads) non-null without errors, or null
/// with errors.
fn query_outcome(body: &Value, value: &Value) -> Outcome {
    let errors = body["errors"].as_array().cloned().unwrap_or_default();
    match (value.is_null(), errors.is_empty()) {
        (false, true) => Outcome::Allowed,
        (true, false) => Outcome::Refused(
            errors
                .iter()
                .map(|e| {
                    (
                        e["extensions"]["code"].as_str().unwrap_or("").to_owned(),
                        e["message"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect(),
        ),
        _ => Outcome::Broken(body.to_string()),
    }
}

/// A mutation's outcome: `errors: []` with its `object` set, or errors with it null.
fn mutation_outcome(body: &Value, field: &str, object: &str) -> Outcome {
    let payload = &body["data"][field];
    if has_errors(body) {
        return Outcome::Broken(body.to_string());
    }
    let errors = payload["errors"].as_array().cloned().unwrap_or_default();
    match (errors.is_empty(), payload[object].is_null()) {
        (true, false) => Outcome::Allowed,
        (false, true) => Outcome::Refused(
            errors
                .iter()
                .flat_map(|e| {
                    let field = e["field"].as_str().unwrap_or("").to_owned();
                    e["messages"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |m| (field.clone(), m.as_str().unwrap_or("").to_owned()))
                })
                .collect(),
        ),
        _ => Outcome::Broken(body.to_string()),
    }
}

/// The fixed state every cell uses, made once by the first Owner.
struct World<'a> {
    server: &'a Server,
    data: &'a Path,
    owner: String,
    roles: BTreeMap<String, String>,
    /// An Integrator the managers act on (its profile, role and sessions).
    target_id: String,
    /// The cursor of the page before the target (the first Owner's), so that a page of one
    /// user after it holds only the target.
    before_target: String,
    /// A Guest the organization created and nobody used: invitations go to them.
    invitee_id: String,
    /// A service account (role Admin) the cells update and mint tokens for.
    bot_id: String,
}

impl World<'_> {
    fn role(&self, role: Role) -> Res<&str> {
        Ok(self
            .roles
            .get(role.name())
            .map(String::as_str)
            .ok_or_else(|| format!("no role {} in organizationRoles", role.name()))?)
    }

    async fn owner_must(&self, query: &str, variables: Value, field: &str) -> Res<Value> {
        must(self.server, &self.owner, query, variables, field).await
    }

    /// A member `email` of `role`, created by the Owner; their id.
    async fn create_user(&self, email: &str, role: Role) -> Res<String> {
        let payload = self
            .owner_must(
                CREATE_USER,
                json!({ "email": email, "role": self.role(role)? }),
                "createOrganizationUser",
            )
            .await?;
        text(&payload["user"]["id"])
    }

    /// A service account `name` of `role`, created by the Owner; its id.
    async fn create_sa(&self, name: &str, role: Role) -> Res<String> {
        create_sa(self.server, &self.owner, name, self.role(role)?).await
    }
}

async fn build_world<'a>(server: &'a Server, data: &'a Path) -> Res<World<'a>> {
    let owner = owner_access(server, data).await?;
    let roles = role_ids(server, &owner).await?;
    let first_page = call(
        server,
        &owner,
        "{ organization { users(first: 1) { nodes { email } pageInfo { endCursor } } } }",
        json!({}),
    )
    .await?;
    let users = &first_page["data"]["organization"]["users"];
    assert_eq!(
        users["nodes"][0]["email"], "owner@localhost",
        "{first_page}"
    );
    let before_target = users["pageInfo"]["endCursor"]
        .as_str()
        .ok_or("no endCursor")?
        .to_owned();
    let mut world = World {
        server,
        data,
        owner,
        roles,
        target_id: String::new(),
        before_target,
        invitee_id: String::new(),
        bot_id: String::new(),
    };
    world.target_id = world
        .create_user("target@matrix.test", Role::Integrator)
        .await?;
    world.invitee_id = world
        .create_user("invitee@matrix.test", Role::Guest)
        .await?;
    world.bot_id = world.create_sa("matrix-bot", Role::Admin).await?;
    Ok(world)
}

pub fn text(value: &Value) -> Res<String> {
    Ok(value
        .as_str()
        .ok_or_else(|| format!("not a string: {value}"))?
        .to_owned())
}

/// What one cell's operations act on, made for it alone.
struct CellState {
    access: String,
    refresh: String,
    my_id: String,
    spare_session: String,
    victim_id: String,
    doomed_sa: String,
    doomed_scope: String,
    grantable_scope: String,
    granted_scope: String,
    /// Trust policies of the bot the cell renames and deletes.
    renamed_policy: String,
    doomed_policy: String,
    /// What the cell passes as `createToken`'s `scopes`: null when unrestricted, else its
    /// effective scopes (a restricted caller must name scopes within its own).
    mint_scopes: Value,
}

/// `prismd tokens create` for `email` of a token `name` restricted to `scopes` (when given).
fn scoped_token_args<'a>(
    email: &'a str,
    name: &'a str,
    scopes: Option<&[&'a str]>,
) -> Vec<&'a str> {
    let mut args = vec!["tokens", "create", "--email", email, "--name", name];
    for scope in scopes.unwrap_or_default() {
        args.extend(["--scope", scope]);
    }
    args
}

/// Mints the cell's token for `email` (Owners/Admins may, members within their scopes): by
/// `createToken` for even cells, by `prismd tokens create --scope` for odd ones.
async fn mint_cell_token(w: &World<'_>, cell: &Cell, email: &str, base: &str) -> Res<String> {
    if cell.index.is_multiple_of(2) {
        let payload = must(
            w.server,
            base,
            CREATE_TOKEN,
            json!({ "name": "cell", "scopes": cell.scopes }),
            "createToken",
        )
        .await?;
        let shown: Option<BTreeSet<&str>> = payload["session"]["scopes"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_str).collect());
        let asked: Option<BTreeSet<&str>> = cell.scopes.map(|s| s.iter().copied().collect());
        assert_eq!(shown, asked, "{cell}: Session.scopes: {payload}");
        assert_eq!(payload["session"]["named"], true, "{payload}");
        text(&payload["token"])
    } else {
        admin_ok(w.data, &scoped_token_args(email, "cell", cell.scopes))
    }
}

/// Prepares and runs one cell; the mismatches with the table, and whether it came to run the
/// operations (a token none of whose scopes is held cannot be exchanged).
async fn run_cell(w: &World<'_>, cell: &Cell) -> Res<(Vec<String>, bool)> {
    let i = cell.index;
    let mut mismatches = Vec::new();
    let email = format!("cell{i}@matrix.test");
    // A token the role may not hold is minted while the principal is an Admin; the Owner then
    // demotes them, which is how such a token comes to exist.
    let created_as = if cell.mintable() {
        cell.role
    } else {
        Role::Admin
    };
    let my_id = w.create_user(&email, created_as).await?;
    let base = named_token(w.data, &email, "base")?;
    let base_access = exchange(w.server, &base, None).await?;
    let refresh = mint_cell_token(w, cell, &email, &base_access).await?;
    if !cell.mintable() {
        w.owner_must(
            SET_ROLE,
            json!({ "id": my_id, "role": w.role(cell.role)? }),
            "updateUser",
        )
        .await?;
        // As what they are now, they could not mint it.
        let body = call(
            w.server,
            &base_access,
            CREATE_TOKEN,
            json!({ "name": "again", "scopes": cell.scopes }),
        )
        .await?;
        let payload = &body["data"]["createToken"];
        if !(payload["token"].is_null() && payload["errors"][0]["field"] == "scopes") {
            mismatches.push(format!(
                "{cell}: createToken of scopes the role may not hold: {body}"
            ));
        }
        let args = scoped_token_args(&email, "again", cell.scopes);
        if prismd(w.data, &args)?.status.success() {
            mismatches.push(format!(
                "{cell}: prismd tokens create --scope minted scopes the role may not hold"
            ));
        }
    }

    // The exchange: the claim names the granted scopes, or nothing is granted at all.
    let effective = cell.effective();
    let answer = refresh_with_scope(w.server, &refresh, None).await?;
    if cell.scopes.is_some() && effective.is_empty() {
        if (answer.0, answer.1["error"].as_str()) != (400, Some("invalid_scope")) {
            mismatches.push(format!(
                "{cell}: a token none of whose scopes is held: expected 400 invalid_scope, got {} {}",
                answer.0, answer.1
            ));
        }
        return Ok((mismatches, false));
    }
    if answer.0 != 200 {
        mismatches.push(format!(
            "{cell}: refresh answered {}: {}",
            answer.0, answer.1
        ));
        return Ok((mismatches, false));
    }
    let access = text(&answer.1["access_token"])?;
    let claim = claim_scope(&access)?;
    let expected_claim = match cell.scopes {
        None => scope_set(OIDC),
        Some(_) => effective.iter().map(|s| (*s).to_owned()).collect(),
    };
    if scope_set(&claim) != expected_claim {
        mismatches.push(format!(
            "{cell}: scope claim {claim:?}, expected {expected_claim:?}"
        ));
    }
    if answer.1["scope"].as_str() != Some(claim.as_str()) {
        mismatches.push(format!(
            "{cell}: response scope {} is not the claim {claim:?}",
            answer.1["scope"]
        ));
    }

    // What the destructive operations act on, made by the Owner for this cell alone.
    let victim_id = w
        .create_user(&format!("victim{i}@matrix.test"), Role::Guest)
        .await?;
    let doomed_sa = w.create_sa(&format!("doomed-{i}"), Role::Guest).await?;
    let [doomed_scope, grantable_scope, granted_scope] =
        ["doomed", "grantable", "granted"].map(|kind| format!("{kind}{i}:x"));
    for scope in [&doomed_scope, &grantable_scope, &granted_scope] {
        w.owner_must(CREATE_SCOPE, json!({ "name": scope }), "createScope")
            .await?;
    }
    w.owner_must(
        GRANT_TO_ROLE,
        json!({ "scope": granted_scope, "role": w.role(Role::Guest)? }),
        "grantScope",
    )
    .await?;
    let spare = must(
        w.server,
        &base_access,
        CREATE_TOKEN,
        json!({ "name": "spare" }),
        "createToken",
    )
    .await?;
    let [renamed_policy, doomed_policy] = [format!("renamed-{i}"), format!("doomed-{i}")];
    let mut policy_ids = Vec::new();
    for name in [&renamed_policy, &doomed_policy] {
        let made = w
            .owner_must(
                CREATE_TRUST_POLICY,
                json!({ "name": name, "sa": w.bot_id }),
                "createTrustPolicy",
            )
            .await?;
        policy_ids.push(text(&made["trustPolicy"]["id"])?);
    }
    let state = CellState {
        renamed_policy: policy_ids[0].clone(),
        doomed_policy: policy_ids[1].clone(),
        access,
        refresh,
        my_id,
        spare_session: text(&spare["session"]["id"])?,
        victim_id,
        doomed_sa,
        doomed_scope,
        grantable_scope,
        granted_scope,
        mint_scopes: match cell.scopes {
            None => Value::Null,
            Some(_) => json!(effective),
        },
    };

    for &(op, needs, who) in TABLE {
        let expected = who.allows(cell.role) && needs.iter().all(|n| effective.contains(n));
        let outcome = run_op(w, cell, &state, op).await?;
        let line = format!("{cell}: {op:?} (needs {needs:?}, {who:?})");
        match (&outcome, expected) {
            (Outcome::Allowed, true) => {}
            (Outcome::Refused(errors), false) => {
                // The role allows it and holds every scope it needs: only the token is
                // short, and the refusal must say which scope.
                let missing: Vec<&str> = needs
                    .iter()
                    .copied()
                    .filter(|n| !cell.token_has(n))
                    .collect();
                let precise = who.allows(cell.role) && needs.iter().all(|n| cell.role.holds(n));
                if precise {
                    let named = |(place, message): &(String, String)| {
                        missing.iter().any(|m| *message == lacks(m))
                            && (place == "__all__" || place == "FORBIDDEN")
                    };
                    let exact = if op.is_mutation() {
                        errors.len() == 1 && named(&errors[0])
                    } else {
                        errors.iter().any(named)
                    };
                    if !exact {
                        mismatches.push(format!(
                            "{line}: refused, but not as 'this token lacks the scope <one of {missing:?}>': {errors:?}"
                        ));
                    }
                }
            }
            (Outcome::Allowed, false) => {
                mismatches.push(format!("{line}: ALLOWED, expected refused"))
            }
            (Outcome::Refused(errors), true) => {
                mismatches.push(format!("{line}: REFUSED, expected allowed: {errors:?}"));
            }
            (Outcome::Broken(body), _) => {
                mismatches.push(format!("{line}: neither allowed nor refused: {body}"));
            }
        }
        if op == Op::RevokeAllMine && matches!(outcome, Outcome::Allowed) {
            // It really ended the token in use.
            if w.server.whoami(&state.access).await? != Err(401) {
                mismatches.push(format!(
                    "{cell}: revokeAllSessions left the access token working"
                ));
            }
            if w.server.refresh(&state.refresh).await?.0 != 400 {
                mismatches.push(format!(
                    "{cell}: revokeAllSessions left the refresh token working"
                ));
            }
        }
    }
    Ok((mismatches, true))
}

/// Runs `op` as the cell's access token.
async fn run_op(w: &World<'_>, cell: &Cell, s: &CellState, op: Op) -> Res<Outcome> {
    let i = cell.index;
    let q = |query: &'static str, variables: Value| call(w.server, &s.access, query, variables);
    // A query without variables, and what it reads (a JSON pointer into its answer).
    let read = async |query: &'static str, pointer: &str| -> Res<Outcome> {
        let body = q(query, json!({})).await?;
        Ok(query_outcome(
            &body,
            body.pointer(pointer).unwrap_or(&Value::Null),
        ))
    };
    // A mutation, its payload's `field` and the `object` it sets.
    let mutate =
        async |query: &'static str, variables: Value, field: &str, object: &str| -> Res<Outcome> {
            let body = q(query, variables).await?;
            Ok(mutation_outcome(&body, field, object))
        };
    Ok(match op {
        Op::Me => read("{ authenticatedUser { id name email } }", "/data/authenticatedUser/id").await?,
        Op::Tenants => {
            read(
                "{ listUserTenants { nodes { tenantId } } }",
                "/data/listUserTenants/nodes/0/tenantId",
            )
            .await?
        }
        Op::OrgBasics => {
            read(
                "{ organization { id name tenantId } }",
                "/data/organization/tenantId",
            )
            .await?
        }
        Op::Roles => read(ROLES, "/data/organizationRoles/4/id").await?,
        Op::Scopes => {
            let body = q("{ scopes { name builtIn } }", json!({})).await?;
            let outcome = query_outcome(&body, &body["data"]["scopes"]);
            if matches!(outcome, Outcome::Allowed) {
                let names: BTreeSet<&str> = body["data"]["scopes"]
                    .as_array()
                    .map(|all| {
                        all.iter()
                            .filter(|s| s["builtIn"] == true)
                            .filter_map(|s| s["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                if names != BUILT_IN.into_iter().collect() {
                    return Ok(Outcome::Broken(format!("built-in scopes listed: {body}")));
                }
            }
            outcome
        }
        Op::Users => read(USERS, "/data/organization/users/nodes/0/id").await?,
        Op::ServiceAccounts => {
            read("{ serviceAccounts { id name } }", "/data/serviceAccounts/0/id").await?
        }
        Op::SessionPolicy => {
            read(
                "{ organization { sessionPolicy { idleExpiryDays maxAgeDays } } }",
                "/data/organization/sessionPolicy",
            )
            .await?
        }
        Op::TokenPolicy => {
            read(
                "{ organization { tokenPolicy { maxLifetimeDays } } }",
                "/data/organization/tokenPolicy",
            )
            .await?
        }
        Op::AuditEvents => read(AUDIT, "/data/auditEvents/nodes").await?,
        Op::MySessions => {
            read(
                "{ authenticatedUser { sessions { id } } }",
                "/data/authenticatedUser/sessions",
            )
            .await?
        }
        Op::MemberSessions => {
            let body = q(
                "query($after: String) { organization { users(after: $after, first: 1) { nodes { email sessions { id } } } } }",
                json!({ "after": w.before_target }),
            )
            .await?;
            let node = &body["data"]["organization"]["users"]["nodes"][0];
            if !node.is_null() && node["email"] != "target@matrix.test" {
                return Ok(Outcome::Broken(format!("not the target's page: {body}")));
            }
            query_outcome(&body, &node["sessions"])
        }
        Op::ServiceAccountTokens => {
            let body = q("{ serviceAccounts { name tokens { id } } }", json!({})).await?;
            let bot = body["data"]["serviceAccounts"]
                .as_array()
                .and_then(|all| all.iter().find(|sa| sa["name"] == "matrix-bot"))
                .cloned()
                .unwrap_or(Value::Null);
            query_outcome(&body, &bot["tokens"])
        }
        Op::CreateUser => {
            let email = format!("made{i}@matrix.test");
            let variables = json!({ "email": email, "role": w.role(Role::Guest)? });
            mutate(CREATE_USER, variables, "createOrganizationUser", "user").await?
        }
        Op::DeleteUser => {
            let variables = json!({ "id": s.victim_id });
            mutate(DELETE_USER, variables, "deleteUser", "user").await?
        }
        Op::UpdateMyProfile => {
            let variables = json!({ "id": s.my_id, "name": format!("Cell {i}") });
            mutate(UPDATE_NAME, variables, "updateUser", "user").await?
        }
        Op::UpdateOther => {
            let variables = json!({ "id": w.target_id, "name": format!("Target {i}") });
            mutate(UPDATE_NAME, variables, "updateUser", "user").await?
        }
        Op::UpdateOthersRole => {
            let variables = json!({ "id": w.target_id, "role": w.role(Role::Integrator)? });
            mutate(SET_ROLE, variables, "updateUser", "user").await?
        }
        Op::Invite => {
            let variables = json!({ "id": w.invitee_id });
            mutate(INVITE, variables, "createUserInvitation", "url").await?
        }
        Op::CreateServiceAccount => {
            let variables = json!({ "name": format!("made-{i}"), "role": w.role(Role::Guest)? });
            mutate(CREATE_SA, variables, "createServiceAccount", "serviceAccount").await?
        }
        Op::UpdateServiceAccount => {
            let description = format!("touched by cell {i}");
            let variables = json!({ "id": w.bot_id, "description": description });
            mutate(UPDATE_SA_DESCRIPTION, variables, "updateServiceAccount", "serviceAccount").await?
        }
        Op::DeleteServiceAccount => {
            let variables = json!({ "id": s.doomed_sa });
            mutate(DELETE_SA, variables, "deleteServiceAccount", "serviceAccount").await?
        }
        Op::RevokeMySession => {
            let variables = json!({ "id": s.spare_session });
            mutate(REVOKE_SESSION, variables, "revokeSession", "session").await?
        }
        Op::RevokeAllOfMember => {
            let variables = json!({ "userId": w.target_id });
            mutate(REVOKE_ALL, variables, "revokeAllSessions", "user").await?
        }
        Op::UpdateSessionPolicy => {
            mutate(
                "mutation { updateSessionPolicy(input: {idleExpiryDays: null, maxAgeDays: null}) { sessionPolicy { maxAgeDays } errors { field messages } } }",
                json!({}),
                "updateSessionPolicy",
                "sessionPolicy",
            )
            .await?
        }
        Op::UpdateTokenPolicy => {
            mutate(
                "mutation { updateTokenPolicy(input: {maxLifetimeDays: null}) { tokenPolicy { maxLifetimeDays } errors { field messages } } }",
                json!({}),
                "updateTokenPolicy",
                "tokenPolicy",
            )
            .await?
        }
        Op::CreateScope => {
            let variables = json!({ "name": format!("made{i}:x") });
            mutate(CREATE_SCOPE, variables, "createScope", "scope").await?
        }
        Op::DeleteScope => {
            let variables = json!({ "name": s.doomed_scope });
            mutate(DELETE_SCOPE, variables, "deleteScope", "scope").await?
        }
        Op::GrantScope => {
            let variables = json!({ "scope": s.grantable_scope, "role": w.role(Role::Guest)? });
            mutate(GRANT_TO_ROLE, variables, "grantScope", "scope").await?
        }
        Op::RevokeScope => {
            let variables = json!({ "scope": s.granted_scope, "role": w.role(Role::Guest)? });
            mutate(REVOKE_FROM_ROLE, variables, "revokeScope", "scope").await?
        }
        Op::CreateMyToken => {
            let variables = json!({ "name": "made", "scopes": s.mint_scopes });
            mutate(CREATE_TOKEN, variables, "createToken", "token").await?
        }
        Op::CreateServiceAccountToken => {
            let name = format!("cell-{i}");
            let variables = json!({ "name": name, "scopes": s.mint_scopes, "sa": w.bot_id });
            mutate(CREATE_TOKEN, variables, "createToken", "token").await?
        }
        Op::TrustPolicies => {
            let body = q("{ trustPolicies { id name } }", json!({})).await?;
            query_outcome(&body, &body["data"]["trustPolicies"])
        }
        Op::CreateTrustPolicy => {
            let variables = json!({ "name": format!("made-{i}"), "sa": w.bot_id });
            mutate(CREATE_TRUST_POLICY, variables, "createTrustPolicy", "trustPolicy").await?
        }
        Op::UpdateTrustPolicy => {
            let variables = json!({ "id": s.renamed_policy, "name": format!("renamed-{i}-again") });
            mutate(RENAME_TRUST_POLICY, variables, "updateTrustPolicy", "trustPolicy").await?
        }
        Op::DeleteTrustPolicy => {
            let body = q(DELETE_TRUST_POLICY, json!({ "id": s.doomed_policy })).await?;
            // Its payload says `deleted` instead of returning an object.
            let payload = &body["data"]["deleteTrustPolicy"];
            let shaped = json!({ "data": { "deleteTrustPolicy": {
                "errors": payload["errors"],
                "deleted": if payload["deleted"] == true { json!(true) } else { Value::Null },
            } } });
            if has_errors(&body) {
                Outcome::Broken(body.to_string())
            } else {
                mutation_outcome(&shaped, "deleteTrustPolicy", "deleted")
            }
        }
        Op::RevokeAllMine => {
            let variables = json!({ "userId": null });
            mutate(REVOKE_ALL, variables, "revokeAllSessions", "user").await?
        }
    })
}

#[tokio::test]
async fn every_operation_for_every_role_and_token_scope_set() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let world = build_world(&server, data).await?;
    let started = Instant::now();
    let mut mismatches = Vec::new();
    let mut index = 0;
    let (mut ran, mut runnable) = (0, 0);
    for role in Role::ALL {
        for &scopes in SETS {
            index += 1;
            let cell = Cell {
                index,
                role,
                scopes,
            };
            if cell.scopes.is_none() || !cell.effective().is_empty() {
                runnable += 1;
            }
            match run_cell(&world, &cell).await {
                Ok((found, operations_ran)) => {
                    mismatches.extend(found);
                    ran += usize::from(operations_ran);
                }
                Err(err) => mismatches.push(format!("{cell}: could not run: {err}")),
            }
        }
    }
    // 60 cells; the 12 tokens of members (3 roles × 4 sets) that hold none of their scopes
    // end at the exchange.
    assert_eq!((index, runnable), (60, 48));
    println!(
        "{index} cells × {} operations in {:?}",
        TABLE.len(),
        started.elapsed()
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches with the spec's table:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(ran, runnable, "cells that ran every operation");
    stop_clean(server)
}

// ---------------------------------------------------------------------------------------------
// The `scope` parameter of the exchange.

/// A refresh at `endpoint` (`/auth/refresh` or `/oauth/token`) with `scope` when given.
pub async fn swap_at(
    server: &Server,
    endpoint: &str,
    token: &str,
    scope: Option<&str>,
) -> Res<(u16, Value)> {
    Ok(if endpoint == "/auth/refresh" {
        refresh_with_scope(server, token, scope).await?
    } else {
        oauth_refresh(server, token, scope).await?
    })
}

/// `createOrganizationUser` of a fresh Guest as `access`; the body.
async fn create_guest(server: &Server, access: &str, guest: &str) -> Res<Value> {
    call(
        server,
        access,
        CREATE_USER,
        json!({ "email": format!("{}@scopes.test", uuid::Uuid::new_v4().simple()), "role": guest }),
    )
    .await
}

/// Adds a member with the operator command and mints an unrestricted named token for them.
fn member_token(data: &Path, email: &str, role: &str) -> Res<String> {
    add_member(data, email, role)?;
    named_token(data, email, "unrestricted")
}

#[tokio::test]
async fn the_scope_parameter_narrows_the_exchange_and_is_checked() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let admin = member_token(data, "ada@scopes.test", "Admin")?;
    let member = member_token(data, "ian@scopes.test", "Integrator")?;
    let restricted = admin_ok(
        data,
        &scoped_token_args(
            "ada@scopes.test",
            "restricted",
            Some(&["users:read", "users:write"]),
        ),
    )?;
    let guest_role = role_id(&server, &exchange(&server, &admin, None).await?, "Guest").await?;
    let create_user = async |access: &str| create_guest(&server, access, &guest_role).await;

    // Both endpoints narrow the same way.
    for endpoint in ["/auth/refresh", "/oauth/token"] {
        let swap =
            async |token: &str, scope: Option<&str>| swap_at(&server, endpoint, token, scope).await;
        let access_of = |answer: &(u16, Value)| -> Res<String> {
            assert_eq!(answer.0, 200, "{endpoint}: {}", answer.1);
            let access = text(&answer.1["access_token"])?;
            assert_eq!(
                answer.1["scope"].as_str(),
                Some(claim_scope(&access)?.as_str()),
                "{endpoint}: the response's scope is not the claim's"
            );
            Ok(access)
        };

        // An unrestricted token narrowed to users:read reads users and writes nothing.
        let narrowed = access_of(&swap(&admin, Some("users:read")).await?)?;
        assert_eq!(claim_scope(&narrowed)?, "users:read", "{endpoint}");
        assert!(query_works(&server, &narrowed, USERS).await?, "{endpoint}");
        let body = create_user(&narrowed).await?;
        assert_eq!(
            body["data"]["createOrganizationUser"]["errors"],
            json!([{ "field": "__all__", "messages": [lacks("users:write")] }]),
            "{endpoint}: {body}"
        );
        query_lacks(&server, &narrowed, AUDIT, "audit:read").await?;

        // The official client's OIDC names narrow nothing: the claim is today's, and
        // everything the Admin may do works.
        for oidc in [OIDC, "openid offline_access"] {
            let full = access_of(&swap(&admin, Some(oidc)).await?)?;
            assert_eq!(claim_scope(&full)?, OIDC, "{endpoint} {oidc}");
            let body = create_user(&full).await?;
            assert_eq!(
                body["data"]["createOrganizationUser"]["errors"],
                json!([]),
                "{endpoint}: {body}"
            );
            assert!(query_works(&server, &full, AUDIT).await?, "{endpoint}");
        }
        // Without a scope, the same.
        let full = access_of(&swap(&admin, None).await?)?;
        assert_eq!(claim_scope(&full)?, OIDC, "{endpoint}");

        // OIDC names beside API scopes: only the API scopes count.
        let mixed = access_of(&swap(&admin, Some("openid users:read audit:read")).await?)?;
        assert_eq!(
            scope_set(&claim_scope(&mixed)?),
            scope_set("users:read audit:read"),
            "{endpoint}"
        );
        assert!(query_works(&server, &mixed, AUDIT).await?, "{endpoint}");
        let body = create_user(&mixed).await?;
        assert_eq!(
            body["data"]["createOrganizationUser"]["errors"][0]["messages"][0],
            lacks("users:write").as_str(),
            "{endpoint}: {body}"
        );

        // A restricted token narrows within its own scopes, and no further.
        let within = access_of(&swap(&restricted, Some("users:read")).await?)?;
        assert_eq!(claim_scope(&within)?, "users:read", "{endpoint}");
        let body = create_user(&within).await?;
        assert_eq!(
            body["data"]["createOrganizationUser"]["errors"][0]["messages"][0],
            lacks("users:write").as_str(),
            "{endpoint}: {body}"
        );
        for beyond in ["audit:read", "users:read audit:read", "openid org:admin"] {
            expect_error(
                &swap(&restricted, Some(beyond)).await?,
                "invalid_scope",
                &format!("{endpoint}: restricted token asked for {beyond}"),
            );
        }
        // A refused narrowing harms nothing: the token still answers with all its scopes,
        // also for the OIDC names alone.
        for scope in [None, Some(OIDC)] {
            let all = access_of(&swap(&restricted, scope).await?)?;
            assert_eq!(
                scope_set(&claim_scope(&all)?),
                scope_set("users:read users:write"),
                "{endpoint} {scope:?}"
            );
            let body = create_user(&all).await?;
            assert_eq!(
                body["data"]["createOrganizationUser"]["errors"],
                json!([]),
                "{endpoint}: {body}"
            );
        }

        // An unrestricted token reaches only what the principal may hold now.
        expect_error(
            &swap(&member, Some("audit:read")).await?,
            "invalid_scope",
            &format!("{endpoint}: an Integrator asked for audit:read"),
        );
        expect_error(
            &swap(&member, Some("users:read users:write")).await?,
            "invalid_scope",
            &format!("{endpoint}: an Integrator asked for users:write"),
        );
        let member_narrowed = access_of(&swap(&member, Some("users:read")).await?)?;
        assert_eq!(claim_scope(&member_narrowed)?, "users:read");
        query_lacks(
            &server,
            &member_narrowed,
            "{ authenticatedUser { sessions { id } } }",
            "sessions:read",
        )
        .await?;
        // Unknown names are refused too.
        expect_error(
            &swap(&admin, Some("nope:nothing")).await?,
            "invalid_scope",
            &format!("{endpoint}: unknown scope"),
        );
    }
    stop_clean(server)
}

// ---------------------------------------------------------------------------------------------
// Organization-defined scopes.

#[tokio::test]
async fn organization_scopes_are_declared_granted_minted_and_revoked() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = owner_access(&server, data).await?;
    let member_access = async |email: &str, role: &str| -> Res<(String, String)> {
        let token = member_token(data, email, role)?;
        let access = exchange(&server, &token, None).await?;
        Ok((token, access))
    };
    let (_, admin) = member_access("ada@scopes.test", "Admin").await?;
    let (ian_token, ian) = member_access("ian@scopes.test", "Integrator").await?;
    let (gus_token, gus) = member_access("gus@scopes.test", "Guest").await?;
    let roles = role_ids(&server, &owner).await?;
    let integrator = role_of(&roles, "Integrator")?;
    let guest = role_of(&roles, "Guest")?;
    // Scope mutations, all of whose payloads hold a `scope`.
    let scope_must = async |access: &str, query: &str, variables: Value, field: &str| {
        must(&server, access, query, variables, field).await
    };
    let scope_refused = async |access: &str, query: &str, variables: Value, field: &str| {
        refused(&server, access, query, variables, field, "scope").await
    };
    let find = |all: &[Value], name: &str| all.iter().find(|s| s["name"] == name).cloned();
    // The scope `name` as `access` lists it, if listed.
    let listed_scope = async |access: &str, name: &str| -> Res<Option<Value>> {
        let listed = call(&server, access, SCOPES, json!({})).await?;
        Ok(find(
            listed["data"]["scopes"].as_array().ok_or("no scopes")?,
            name,
        ))
    };
    // The `scope` claim of an exchange of `token`.
    let claim_of =
        async |token: &str| -> Res<String> { claim_scope(&exchange(&server, token, None).await?) };
    let refused_as_invalid_scope = async |token: &str, what: &str| -> TestResult {
        let answer = refresh_with_scope(&server, token, None).await?;
        expect_error(&answer, "invalid_scope", what);
        Ok(())
    };

    // Declared by an Admin; listed for anyone (no scope needed) beside the built-ins.
    let payload = scope_must(
        &admin,
        CREATE_SCOPE,
        json!({ "name": "deploy:prod", "description": "Deploy to production" }),
        "createScope",
    )
    .await?;
    assert_eq!(
        payload["scope"],
        json!({ "name": "deploy:prod", "description": "Deploy to production", "builtIn": false })
    );
    let listed = call(&server, &gus, SCOPES, json!({})).await?;
    let all = listed["data"]["scopes"]
        .as_array()
        .ok_or_else(|| format!("no scopes: {listed}"))?
        .clone();
    for name in BUILT_IN {
        let scope = find(&all, name).ok_or_else(|| format!("{name} not listed: {listed}"))?;
        assert_eq!(scope["builtIn"], true, "{scope}");
    }
    let deploy = find(&all, "deploy:prod").ok_or("deploy:prod not listed")?;
    assert_eq!(deploy["builtIn"], false);
    assert_eq!(deploy["roles"], json!([]));

    // Names: <prefix>:<rest>, lower-case ASCII letters, digits, _ - . ; at most 64; not a
    // built-in; not twice. Members cannot declare.
    let longest = format!("a:{}", "b".repeat(62));
    let too_long = format!("a:{}", "b".repeat(63));
    for bad in [
        "Deploy:prod",
        "deploy",
        ":prod",
        "deploy:",
        "deploy prod:x",
        "dé:x",
        "deploy:prod!",
        "users:read",
        "org:admin",
        too_long.as_str(),
        "deploy:prod",
        "",
    ] {
        scope_refused(&admin, CREATE_SCOPE, json!({ "name": bad }), "createScope")
            .await
            .map_err(|err| format!("name {bad:?}: {err}"))?;
    }
    for good in [longest.as_str(), "a-b_c.d:e-f_g.h", "x9:0"] {
        scope_must(&admin, CREATE_SCOPE, json!({ "name": good }), "createScope").await?;
    }
    let errors = scope_refused(
        &ian,
        CREATE_SCOPE,
        json!({ "name": "ian:own" }),
        "createScope",
    )
    .await?;
    assert_eq!(errors[0]["field"], "__all__", "{errors:?}");

    // Granted to the Integrator role: an Integrator mints it and it travels in the claim.
    let to_integrators = json!({ "scope": "deploy:prod", "role": integrator });
    scope_must(&admin, GRANT_TO_ROLE, to_integrators.clone(), "grantScope").await?;
    let deploy = listed_scope(&gus, "deploy:prod")
        .await?
        .ok_or("deploy:prod not listed")?;
    assert_eq!(deploy["roles"], json!([{ "name": "Integrator" }]));
    let mint = async |access: &str, name: &str, scopes: Value, sa: Option<&str>| -> Res<Value> {
        call(
            &server,
            access,
            CREATE_TOKEN,
            json!({ "name": name, "scopes": scopes, "sa": sa }),
        )
        .await
    };
    let minted = |body: &Value| -> Res<String> {
        let payload = &body["data"]["createToken"];
        if payload["errors"] != json!([]) {
            return Err(format!("createToken refused: {body}").into());
        }
        text(&payload["token"])
    };
    let scopes_error = |body: &Value, what: &str| {
        let payload = &body["data"]["createToken"];
        assert!(payload["token"].is_null(), "{what}: {body}");
        assert_eq!(payload["errors"][0]["field"], "scopes", "{what}: {body}");
    };
    let ian_deploy = minted(&mint(&ian, "deploy", json!(["deploy:prod"]), None).await?)?;
    let ian_both = minted(&mint(&ian, "both", json!(["deploy:prod", "users:read"]), None).await?)?;
    let deploy_only = exchange(&server, &ian_deploy, None).await?;
    assert_eq!(claim_scope(&deploy_only)?, "deploy:prod");
    // It means nothing to /api: the token reads no users.
    query_lacks(&server, &deploy_only, USERS, "users:read").await?;
    assert_eq!(
        server.whoami(&deploy_only).await?,
        Ok("ian@scopes.test".to_owned())
    );
    let both = exchange(&server, &ian_both, None).await?;
    assert_eq!(
        scope_set(&claim_scope(&both)?),
        scope_set("deploy:prod users:read")
    );
    assert!(query_works(&server, &both, USERS).await?);
    // Unrestricted tokens keep today's claim; narrowing one to the scope works for those who
    // may hold it, and not for the others.
    assert_eq!(claim_of(&ian_token).await?, OIDC);
    let narrowed = exchange(&server, &ian_token, Some("deploy:prod")).await?;
    assert_eq!(claim_scope(&narrowed)?, "deploy:prod");
    expect_error(
        &refresh_with_scope(&server, &gus_token, Some("deploy:prod")).await?,
        "invalid_scope",
        "a Guest asked for deploy:prod",
    );

    // Without the grant, no minting: GraphQL and the operator command.
    scopes_error(
        &mint(&gus, "deploy", json!(["deploy:prod"]), None).await?,
        "a Guest minting deploy:prod",
    );
    let out = prismd(
        data,
        &scoped_token_args("gus@scopes.test", "deploy", Some(&["deploy:prod"])),
    )?;
    assert!(
        !out.status.success(),
        "the operator minted deploy:prod for a Guest"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deploy:prod"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown scopes, and an empty list, are refused.
    scopes_error(
        &mint(&ian, "staging", json!(["deploy:staging"]), None).await?,
        "an unknown scope",
    );
    scopes_error(&mint(&ian, "empty", json!([]), None).await?, "scopes: []");

    // Granted to a service account (role Guest) directly.
    let deployer_id = create_sa(&server, &owner, "deployer", &guest).await?;
    let other_id = create_sa(&server, &owner, "other", &guest).await?;
    let to_deployer = json!({ "scope": "deploy:prod", "sa": deployer_id });
    scope_must(&admin, GRANT_TO_SA, to_deployer.clone(), "grantScope").await?;
    let deploy = listed_scope(&owner, "deploy:prod")
        .await?
        .ok_or("deploy:prod not listed")?;
    assert_eq!(
        deploy["serviceAccounts"],
        json!([{ "id": deployer_id, "name": "deployer" }])
    );
    let sa_list = call(
        &server,
        &owner,
        "{ serviceAccounts { id scopes } }",
        json!({}),
    )
    .await?;
    let deployer_scopes = sa_list["data"]["serviceAccounts"]
        .as_array()
        .and_then(|all| all.iter().find(|sa| sa["id"] == deployer_id.as_str()))
        .map(|sa| sa["scopes"].clone())
        .ok_or_else(|| format!("deployer not listed: {sa_list}"))?;
    assert!(
        deployer_scopes
            .as_array()
            .is_some_and(|s| s.contains(&json!("deploy:prod"))),
        "{deployer_scopes}"
    );
    let sa_both = minted(
        &mint(
            &owner,
            "sa-both",
            json!(["deploy:prod", "users:read"]),
            Some(&deployer_id),
        )
        .await?,
    )?;
    let sa_only = minted(
        &mint(
            &admin,
            "sa-only",
            json!(["deploy:prod"]),
            Some(&deployer_id),
        )
        .await?,
    )?;
    assert_eq!(
        scope_set(&claim_of(&sa_both).await?),
        scope_set("deploy:prod users:read")
    );
    assert_eq!(claim_of(&sa_only).await?, "deploy:prod");
    // Another service account of the same role, without the grant, may not hold it; nor may a
    // member's grant reach a service account of another role.
    scopes_error(
        &mint(&owner, "nope", json!(["deploy:prod"]), Some(&other_id)).await?,
        "a service account without the grant",
    );

    // Revoking the grant: the next exchange drops the scope, or refuses a token that had
    // only it; minting it stops.
    scope_must(
        &admin,
        REVOKE_FROM_ROLE,
        to_integrators.clone(),
        "revokeScope",
    )
    .await?;
    refused_as_invalid_scope(&ian_deploy, "a token whose only scope was revoked").await?;
    expect_error(
        &oauth_refresh(&server, &ian_deploy, None).await?,
        "invalid_scope",
        "a token whose only scope was revoked (/oauth/token)",
    );
    assert_eq!(claim_of(&ian_both).await?, "users:read");
    scopes_error(
        &mint(&ian, "again", json!(["deploy:prod"]), None).await?,
        "minting a revoked scope",
    );
    // The service account keeps its own grant.
    assert_eq!(
        scope_set(&claim_of(&sa_both).await?),
        scope_set("deploy:prod users:read")
    );
    scope_must(&owner, REVOKE_FROM_SA, to_deployer, "revokeScope").await?;
    assert_eq!(claim_of(&sa_both).await?, "users:read");
    refused_as_invalid_scope(
        &sa_only,
        "a service account token whose only scope was revoked",
    )
    .await?;
    // Granted again, the token that had only it works again: a rule applied on each
    // exchange, not a write.
    scope_must(&admin, GRANT_TO_ROLE, to_integrators.clone(), "grantScope").await?;
    assert_eq!(claim_of(&ian_deploy).await?, "deploy:prod");

    // Members cannot grant or revoke; grants need exactly one grantee.
    let to_guests = |scope: &str| json!({ "scope": scope, "role": guest });
    scope_refused(&ian, GRANT_TO_ROLE, to_guests("deploy:prod"), "grantScope").await?;
    scope_refused(&ian, REVOKE_FROM_ROLE, to_integrators, "revokeScope").await?;
    scope_refused(
        &owner,
        "mutation($scope: String!, $role: ID!, $sa: ID!) { grantScope(input: {scope: $scope, role: $role, serviceAccountId: $sa}) { scope { name } errors { field messages } } }",
        json!({ "scope": "deploy:prod", "role": guest, "sa": other_id }),
        "grantScope",
    )
    .await?;
    scope_refused(
        &owner,
        "mutation($scope: String!) { grantScope(input: {scope: $scope}) { scope { name } errors { field messages } } }",
        json!({ "scope": "deploy:prod" }),
        "grantScope",
    )
    .await?;
    scope_refused(
        &owner,
        GRANT_TO_ROLE,
        to_guests("deploy:nothing"),
        "grantScope",
    )
    .await?;
    // Built-ins are not granted: the roles decide them.
    scope_refused(&owner, GRANT_TO_ROLE, to_guests("audit:read"), "grantScope").await?;

    // Deleted: gone from the list, dropped from tokens, no longer mintable; built-ins cannot
    // be deleted.
    let by_name = |name: &str| json!({ "name": name });
    scope_refused(&ian, DELETE_SCOPE, by_name("deploy:prod"), "deleteScope").await?;
    scope_refused(&owner, DELETE_SCOPE, by_name("users:read"), "deleteScope").await?;
    scope_must(&admin, DELETE_SCOPE, by_name("deploy:prod"), "deleteScope").await?;
    let still = listed_scope(&owner, "deploy:prod").await?;
    assert!(still.is_none(), "{still:?}");
    assert_eq!(claim_of(&ian_both).await?, "users:read");
    refused_as_invalid_scope(&ian_deploy, "a token whose only scope was deleted").await?;
    scopes_error(
        &mint(&ian, "gone", json!(["deploy:prod"]), None).await?,
        "minting a deleted scope",
    );
    scope_refused(&admin, DELETE_SCOPE, by_name("deploy:prod"), "deleteScope").await?;
    stop_clean(server)
}

/// `createToken` as `access`: the field of its first error, or None when it minted.
async fn mint_field(server: &Server, access: &str, variables: Value) -> Res<Option<String>> {
    let body = call(server, access, CREATE_TOKEN, variables).await?;
    let payload = &body["data"]["createToken"];
    if has_errors(&body) {
        return Err(format!("createToken: {body}").into());
    }
    Ok(match payload["errors"].as_array().map(Vec::as_slice) {
        Some([]) if payload["token"].is_string() => None,
        Some([first, ..]) if payload["token"].is_null() => {
            Some(first["field"].as_str().unwrap_or("").to_owned())
        }
        _ => return Err(format!("createToken: {body}").into()),
    })
}

#[tokio::test]
async fn a_restricted_caller_mints_only_within_its_own_scopes() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let owner = owner_access(&server, data).await?;
    add_member(data, "ada@scopes.test", "Admin")?;
    let restricted = admin_ok(
        data,
        &scoped_token_args(
            "ada@scopes.test",
            "minter",
            Some(&["sessions:write", "users:read"]),
        ),
    )?;
    let access = exchange(&server, &restricted, None).await?;
    let guest = role_id(&server, &owner, "Guest").await?;
    let bot_id = create_sa(&server, &owner, "bot", &guest).await?;

    for (scopes, sa, expected, what) in [
        (Value::Null, None, Some("scopes"), "unrestricted"),
        (
            json!(["users:write"]),
            None,
            Some("scopes"),
            "beyond its own",
        ),
        (
            json!(["users:read", "audit:read"]),
            None,
            Some("scopes"),
            "partly beyond",
        ),
        (json!(["users:read"]), None, None, "within"),
        (
            json!(["users:read", "sessions:write"]),
            None,
            None,
            "all of its own",
        ),
        (
            Value::Null,
            Some(&bot_id),
            Some("scopes"),
            "unrestricted, for an account",
        ),
        (
            json!(["users:read"]),
            Some(&bot_id),
            None,
            "within, for an account",
        ),
    ] {
        let got = mint_field(
            &server,
            &access,
            json!({ "name": what, "scopes": scopes, "sa": sa }),
        )
        .await?;
        assert_eq!(got.as_deref(), expected, "{what}");
    }
    // What it minted is no wider than asked.
    let payload = must(
        &server,
        &access,
        CREATE_TOKEN,
        json!({ "name": "narrow", "scopes": ["users:read"] }),
        "createToken",
    )
    .await?;
    let narrow = exchange(&server, &text(&payload["token"])?, None).await?;
    assert_eq!(claim_scope(&narrow)?, "users:read");
    stop_clean(server)
}

// ---------------------------------------------------------------------------------------------
// Demotion.

/// An Admin's unrestricted token and one scoped `users:write users:read`, exchanged on
/// `mint_on`: (member id, unrestricted refresh token, scoped refresh token).
async fn admin_with_two_tokens(
    mint_on: &Server,
    admin_cmd: &dyn Fn(&[&str]) -> Res<String>,
) -> Res<(String, String, String)> {
    const ADA: &str = "ada@demote.test";
    let id = admin_cmd(&["users", "add", "--email", ADA, "--role", "Admin"])?;
    let unrestricted = admin_cmd(&["tokens", "create", "--email", ADA, "--name", "unrestricted"])?;
    let access = exchange(mint_on, &unrestricted, None).await?;
    let payload = must(
        mint_on,
        &access,
        CREATE_TOKEN,
        json!({ "name": "users", "scopes": ["users:write", "users:read"] }),
        "createToken",
    )
    .await?;
    Ok((id, unrestricted, text(&payload["token"])?))
}

/// `createOrganizationUser` of a fresh Guest as `access`; whether it was allowed, failing on
/// anything but a clean answer or a clean refusal.
async fn can_create_user(server: &Server, access: &str, guest: &str) -> Res<bool> {
    let body = create_guest(server, access, guest).await?;
    match mutation_outcome(&body, "createOrganizationUser", "user") {
        Outcome::Allowed => Ok(true),
        Outcome::Refused(_) => Ok(false),
        Outcome::Broken(body) => Err(format!("createOrganizationUser: {body}").into()),
    }
}

#[tokio::test]
async fn a_demotion_narrows_live_access_tokens_at_once() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    // A cache lifetime far beyond the test: only the demotion itself may end the access.
    let server = Server::start_with(
        data,
        crate::harness::Options {
            args: vec!["--cache-ttl".into(), "10m".into()],
            ..Default::default()
        },
    )?;
    let owner = owner_access(&server, data).await?;
    let roles = role_ids(&server, &owner).await?;
    let guest = role_of(&roles, "Guest")?;
    let admin_role = role_of(&roles, "Admin")?;
    let cmd = |args: &[&str]| admin_ok(data, args);
    let (id, unrestricted, scoped) = admin_with_two_tokens(&server, &cmd).await?;
    let set_role = async |role: &str| {
        let variables = json!({ "id": id, "role": role });
        must(&server, &owner, SET_ROLE, variables, "updateUser").await
    };
    let full = exchange(&server, &unrestricted, None).await?;
    let users = exchange(&server, &scoped, None).await?;
    assert_eq!(
        scope_set(&claim_scope(&users)?),
        scope_set("users:read users:write")
    );
    for access in [&full, &users] {
        assert!(can_create_user(&server, access, &guest).await?);
        assert!(query_works(&server, access, USERS).await?);
    }

    set_role(&guest).await?;
    // The very next request with the same access tokens: no users:write, users:read works.
    for (access, which) in [(&full, "unrestricted"), (&users, "scoped")] {
        assert!(
            !can_create_user(&server, access, &guest).await?,
            "the {which} access token still creates users after the demotion"
        );
        assert!(
            query_works(&server, access, USERS).await?,
            "the {which} access token no longer reads users"
        );
    }
    assert!(!query_works(&server, &full, AUDIT).await?);
    // The scoped token's next exchange keeps what a Guest may hold of it.
    assert_eq!(
        claim_scope(&exchange(&server, &scoped, None).await?)?,
        "users:read"
    );
    assert_eq!(
        claim_scope(&exchange(&server, &unrestricted, None).await?)?,
        OIDC
    );

    // Made an Admin again, the same tokens write again: the rule is evaluated per request.
    set_role(&admin_role).await?;
    for access in [&full, &users] {
        assert!(can_create_user(&server, access, &guest).await?);
    }
    stop_clean(server)
}

#[tokio::test]
async fn a_demotion_on_one_replica_narrows_tokens_on_the_other() -> TestResult {
    let db = FreshDatabase::create().await?;
    let outcome = demotion_across_replicas(&db.url).await;
    db.drop_now().await?;
    outcome
}

async fn demotion_across_replicas(url: &str) -> TestResult {
    let (dir_a, dir_b) = (temp_dir()?, temp_dir()?);
    let a = replica(dir_a.path(), url)?;
    let b = replica(dir_b.path(), url)?;
    let cli = dir_a.path();
    let cmd = |args: &[&str]| -> Res<String> {
        let mut full = vec!["--database-url", url];
        full.extend_from_slice(args);
        admin_ok(cli, &full)
    };
    let owner = exchange(
        &a,
        &cmd(&[
            "tokens",
            "create",
            "--email",
            "owner@localhost",
            "--name",
            "o",
        ])?,
        None,
    )
    .await?;
    let guest = role_id(&a, &owner, "Guest").await?;
    let (id, unrestricted, scoped) = admin_with_two_tokens(&b, &cmd).await?;
    // B minted both access tokens and has the Admin cached as an Admin (10 min).
    let full = exchange(&b, &unrestricted, None).await?;
    let users = exchange(&b, &scoped, None).await?;
    for access in [&full, &users] {
        assert!(can_create_user(&b, access, &guest).await?);
        assert!(can_create_user(&b, access, &guest).await?);
    }

    must(
        &a,
        &owner,
        SET_ROLE,
        json!({ "id": id, "role": guest }),
        "updateUser",
    )
    .await?;
    let demoted_at = Instant::now();
    // On A, at once.
    for access in [&full, &users] {
        assert!(!can_create_user(&a, access, &guest).await?);
        assert!(query_works(&a, access, USERS).await?);
    }
    // On B, once the change has reached it: bounded, then the same answers.
    for (access, which) in [(&full, "unrestricted"), (&users, "scoped")] {
        let deadline = Instant::now() + CHANGE_REACH_BOUND;
        while can_create_user(&b, access, &guest).await? {
            assert!(
                Instant::now() < deadline,
                "the {which} access token still creates users on B {CHANGE_REACH_BOUND:?} after the demotion on A"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            query_works(&b, access, USERS).await?,
            "the {which} access token no longer reads users on B"
        );
    }
    println!(
        "the demotion on A reached B after {:?}",
        demoted_at.elapsed()
    );
    assert_eq!(
        claim_scope(&exchange(&b, &scoped, None).await?)?,
        "users:read"
    );
    stop_clean(b)?;
    stop_clean(a)
}
