//! Upgrading to service accounts and named, scoped, expiring tokens (issue 17, migration
//! 0010): the databases the release before them left on disk
//! (tests/fixtures/before-service-accounts, SQLite and PostgreSQL) are opened by this `prismd`,
//! and nothing is lost or narrowed: every row, user, organization and session policy is still
//! there, every live refresh token still refreshes as the same user with the access it had
//! (unscoped, unnamed, no expiry of its own), the dead ones stay dead, two old tokens with the
//! same name both work, and an old token's name does not block a new named token.

use std::collections::{BTreeMap, BTreeSet};
use std::time::UNIX_EPOCH;

use serde::Deserialize;
use serde_json::Value;

use crate::fixture_db::{DAY_SECS, Deployment, manifest, now_ms, public_id, role_name};
use crate::harness::{Server, TestResult};
use crate::upgrade_common::{ORGANIZATIONS, OrgRow, SessionPolicy, counts_kept};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The fixture folder under tests/fixtures.
const FOLDER: &str = "before-service-accounts";
/// The `scope` an unrestricted refresh token's access token has always carried.
const OLD_SCOPE: &str = "openid profile email offline_access";
/// Who the caller is, and their sessions as issue 17 shows them.
const ME: &str = "{ authenticatedUser { id email tenantId \
                  sessions { id name scopes expiresAt named current } } }";
/// The caller's organization, as a manager sees it.
const ORGANIZATION: &str = "{ organization { id name tenantId \
                            sessionPolicy { idleExpiryDays maxAgeDays } \
                            tokenPolicy { maxLifetimeDays } \
                            users(first: 100) { nodes { id name email role { name } } \
                                                pageInfo { hasNextPage } } } \
                            serviceAccounts { id name } }";
/// A new named token with the name the CI user's two old tokens share.
const CREATE_CI_TOKEN: &str = "mutation { createToken(input: {name: \"ci pipeline\"}) { \
                               token session { id name scopes expiresAt named } \
                               errors { field messages } } }";

// ---------------------------------------------------------------------------------------------
// The manifest make.sh wrote next to the fixtures.

/// What one backend's fixture holds.
#[derive(Deserialize)]
struct Fixture {
    organizations: Vec<Organization>,
    users: Vec<User>,
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
}

#[derive(Deserialize)]
struct User {
    id: String,
    org_tenant_id: String,
    email: String,
    name: String,
    role: String,
    removed: bool,
}

#[derive(Deserialize)]
struct RefreshToken {
    token: String,
    id: String,
    user_id: String,
    email: String,
    org_tenant_id: String,
    name: Option<String>,
    role: String,
    created_at: i64,
    live: bool,
}

impl Fixture {
    fn org(&self, tenant: &str) -> Res<&Organization> {
        self.organizations
            .iter()
            .find(|org| org.tenant_id == tenant)
            .ok_or_else(|| format!("no organization with tenant {tenant} in the manifest").into())
    }

    /// A live token of an Owner or Admin of `tenant`: who reads the organization.
    fn manager_token(&self, tenant: &str) -> Res<&RefreshToken> {
        self.refresh_tokens
            .iter()
            .find(|t| {
                t.live && t.org_tenant_id == tenant && (t.role == "owner" || t.role == "admin")
            })
            .ok_or_else(|| format!("no live token of a manager of {tenant} in the manifest").into())
    }

    /// The CI user's old tokens that share the name "ci pipeline".
    fn ci_tokens(&self) -> Vec<&RefreshToken> {
        self.refresh_tokens
            .iter()
            .filter(|t| t.email == "ci@corp.com" && t.name.as_deref() == Some("ci pipeline"))
            .collect()
    }

    /// How far make.sh's times are moved forward so that they end now (see [`SHIFT_TIMES`]).
    fn shift_ms(&self) -> Res<i64> {
        Ok((now_ms()? - self.made_at).max(0))
    }
}

/// An RFC 3339 time from the API as ms since the epoch.
fn parse_ms(text: &str) -> Res<i64> {
    let at = humantime::parse_rfc3339(text)?;
    Ok(i64::try_from(at.duration_since(UNIX_EPOCH)?.as_millis())?)
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn upgrade_keeps_tokens_and_policies_sqlite() -> TestResult {
    let fixture: Fixture = manifest(FOLDER)?.backends.sqlite;
    let deployment = Deployment::sqlite_copy(FOLDER, &[SHIFT_TIMES], || fixture.shift_ms()).await?;
    upgrade(&deployment, &fixture).await
}

#[tokio::test]
async fn upgrade_keeps_tokens_and_policies_postgres() -> TestResult {
    let fixture: Fixture = manifest(FOLDER)?.backends.postgres;
    Deployment::on_postgres(
        FOLDER,
        &[SHIFT_TIMES],
        || fixture.shift_ms(),
        async |deployment| upgrade(deployment, &fixture).await,
    )
    .await
}

/// Starts this `prismd` on the old data and checks everything the upgrade promises.
async fn upgrade(deployment: &Deployment, fixture: &Fixture) -> TestResult {
    // The fixture's own promises, so that the checks below check something.
    let ci = fixture.ci_tokens();
    assert_eq!(ci.len(), 2, "two old tokens named \"ci pipeline\"");
    assert!(ci.iter().all(|t| t.live), "both are live");
    assert!(
        fixture.refresh_tokens.iter().any(|t| !t.live),
        "dead tokens"
    );
    assert!(
        fixture
            .organizations
            .iter()
            .any(|o| o.session_policy.idle_expiry_secs.is_some()
                && o.session_policy.max_age_secs.is_some()),
        "an organization with a session policy"
    );

    let server = deployment.start()?;
    // Read before any request, so that only the start itself could have written.
    rows_kept(deployment, fixture).await?;

    organizations_and_users_kept(&server, fixture).await?;
    tokens_unchanged(&server, fixture).await?;
    old_name_free_for_a_named_token(&server, fixture).await?;

    let logs = server.stop()?;
    assert!(!logs.contains("ERROR"), "{logs}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. The rows.

/// Row counts of every old table, the migrations, and the new columns of old rows: every user
/// a person, every token unnamed without an expiry of its own, no maximum token lifetime, the
/// session policies as they were, no organization scopes.
async fn rows_kept(deployment: &Deployment, fixture: &Fixture) -> TestResult {
    // `_sqlx_migrations` gains 0010, checked below.
    counts_kept(deployment, &fixture.row_counts, &fixture.audit_actions).await?;
    for table in ["org_scopes", "scope_grants"] {
        assert_eq!(deployment.count(table).await?, 0, "{table}");
    }

    // Every old migration stays, 0010 is applied (and any later one).
    let applied = deployment.migrations().await?;
    let mut expected = fixture.migrations.clone();
    expected.push(10);
    assert_eq!(
        applied.get(..expected.len()),
        Some(&expected[..]),
        "_sqlx_migrations keeps the old ones and gains 0010"
    );

    let orgs: Vec<OrgRow> = deployment.rows(ORGANIZATIONS).await?;
    assert_eq!(orgs.len(), fixture.organizations.len(), "organizations");
    for org in &fixture.organizations {
        let row = orgs
            .iter()
            .find(|row| row.id == org.id)
            .ok_or_else(|| format!("organization {} is gone", org.name))?;
        assert_eq!(
            (row.name.as_str(), row.tenant_id.as_str()),
            (org.name.as_str(), org.tenant_id.as_str()),
            "organization {}",
            org.id
        );
        assert_eq!(
            row.session_policy(),
            org.session_policy,
            "the session policy of {}",
            org.name
        );
        assert_eq!(
            row.max_token_lifetime_secs, None,
            "{}: a maximum token lifetime from nowhere",
            org.name
        );
    }

    let users: Vec<UserRow> = deployment.rows(USERS).await?;
    assert_eq!(users.len(), fixture.users.len(), "users");
    for expected in &fixture.users {
        let row = users
            .iter()
            .find(|row| row.id == expected.id)
            .ok_or_else(|| format!("user {} ({}) is gone", expected.id, expected.email))?;
        let what = format!("user {} ({})", expected.id, expected.email);
        assert_eq!(
            row.tenant_id, expected.org_tenant_id,
            "{what}: organization"
        );
        assert_eq!(row.email, expected.email, "{what}: email");
        assert_eq!(row.name, expected.name, "{what}: name");
        assert_eq!(row.role, expected.role, "{what}: role");
        assert_eq!(
            row.removed_at.is_some(),
            expected.removed,
            "{what}: removed"
        );
        assert_eq!(row.kind, "person", "{what}: kind");
    }

    let tokens: Vec<TokenRow> = deployment.rows(TOKENS).await?;
    assert_eq!(tokens.len(), fixture.refresh_tokens.len(), "refresh tokens");
    for expected in &fixture.refresh_tokens {
        let row = tokens
            .iter()
            .find(|row| row.id == expected.id)
            .ok_or_else(|| format!("refresh token {} is gone", expected.id))?;
        let what = format!("{}'s token {}", expected.email, expected.id);
        assert_eq!(row.user_id, expected.user_id, "{what}: user");
        assert_eq!(row.name, expected.name, "{what}: name");
        assert!(!row.named, "{what}: an old token became named");
        assert_eq!(row.expires_at, None, "{what}: an expiry from nowhere");
        assert_eq!(row.expiry_notified_at, None, "{what}: notified");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Organizations and users, through the API.

/// Each organization as an Owner or Admin of it sees it with an old token: its name, tenant,
/// session policy, no maximum token lifetime, every active user with their name and role, and
/// no service accounts.
async fn organizations_and_users_kept(server: &Server, fixture: &Fixture) -> TestResult {
    for org in &fixture.organizations {
        let manager = fixture.manager_token(&org.tenant_id)?;
        let access = access_token(server, &manager.token).await?;
        let (status, _, body) = server.graphql(Some(&access), ORGANIZATION).await?;
        assert_eq!(status, 200, "{body}");
        assert!(body["errors"].is_null(), "{}: {body}", org.name);
        let seen = &body["data"]["organization"];
        let what = format!("{} as {}", org.name, manager.email);
        assert_eq!(seen["name"], org.name.as_str(), "{what}: {body}");
        assert_eq!(seen["tenantId"], org.tenant_id.as_str(), "{what}: {body}");
        let days = |secs: Option<i64>| secs.map(|s| s / DAY_SECS);
        assert_eq!(
            seen["sessionPolicy"],
            serde_json::json!({
                "idleExpiryDays": days(org.session_policy.idle_expiry_secs),
                "maxAgeDays": days(org.session_policy.max_age_secs),
            }),
            "{what}: the session policy"
        );
        assert_eq!(
            seen["tokenPolicy"],
            serde_json::json!({ "maxLifetimeDays": null }),
            "{what}: the token policy"
        );
        assert_eq!(
            seen["users"]["pageInfo"]["hasNextPage"], false,
            "{what}: {body}"
        );

        let listed: BTreeSet<(String, String, String, String)> = seen["users"]["nodes"]
            .as_array()
            .ok_or_else(|| format!("{what}: no users: {body}"))?
            .iter()
            .map(|u| {
                (
                    u["id"].as_str().unwrap_or_default().to_owned(),
                    u["email"].as_str().unwrap_or_default().to_owned(),
                    u["name"].as_str().unwrap_or_default().to_owned(),
                    u["role"]["name"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let mut expected = BTreeSet::new();
        for user in fixture
            .users
            .iter()
            .filter(|u| u.org_tenant_id == org.tenant_id && !u.removed)
        {
            expected.insert((
                public_id("User", &user.id),
                user.email.clone(),
                user.name.clone(),
                role_name(&user.role)?.to_owned(),
            ));
        }
        assert!(expected.len() >= 2, "{what}: the manifest's users");
        assert_eq!(listed, expected, "{what}: the active users");

        assert_eq!(
            body["data"]["serviceAccounts"],
            serde_json::json!([]),
            "{what}: service accounts"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Refresh tokens.

/// Every live token refreshes with the scope it always had and no expiry of its own, and its
/// access token is its user's in its organization; the user's sessions show it unnamed and
/// unrestricted, expiring only by the session policy. Every dead token is still refused.
async fn tokens_unchanged(server: &Server, fixture: &Fixture) -> TestResult {
    let shift = fixture.shift_ms()?;
    let mut refreshed = BTreeSet::new();
    for token in &fixture.refresh_tokens {
        let what = format!("{}'s token {} ({:?})", token.email, token.id, token.name);
        let before = now_ms()?;
        let (status, body) = server.refresh(&token.token).await?;
        let after = now_ms()?;
        if !token.live {
            assert_eq!(status, 400, "{what}: dead, yet {body}");
            assert_eq!(body["error"], "invalid_grant", "{what}: {body}");
            assert!(body["access_token"].is_null(), "{what}: {body}");
            continue;
        }
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(body["scope"], OLD_SCOPE, "{what}: {body}");
        assert!(
            body.get("refresh_token_expires_in").is_none(),
            "{what}: an expiry of its own: {body}"
        );
        let access = body["access_token"]
            .as_str()
            .ok_or_else(|| format!("{what}: no access_token: {body}"))?;

        let (status, _, me) = server.graphql(Some(access), ME).await?;
        assert_eq!(status, 200, "{what}: {me}");
        assert!(me["errors"].is_null(), "{what}: {me}");
        let user = &me["data"]["authenticatedUser"];
        assert_eq!(
            user["id"],
            public_id("User", &token.user_id),
            "{what}: {me}"
        );
        assert_eq!(user["email"], token.email.as_str(), "{what}: {me}");
        assert_eq!(
            user["tenantId"],
            token.org_tenant_id.as_str(),
            "{what}: {me}"
        );

        // The user's sessions: exactly their live old tokens.
        let sessions = user["sessions"]
            .as_array()
            .ok_or_else(|| format!("{what}: no sessions: {me}"))?;
        let ids: BTreeSet<&str> = sessions.iter().filter_map(|s| s["id"].as_str()).collect();
        let expected: BTreeSet<&str> = fixture
            .refresh_tokens
            .iter()
            .filter(|t| t.live && t.user_id == token.user_id)
            .map(|t| t.id.as_str())
            .collect();
        assert_eq!(ids, expected, "{what}: the sessions listed: {me}");
        let session = sessions
            .iter()
            .find(|s| s["id"] == token.id.as_str())
            .ok_or_else(|| format!("{what}: not among its user's sessions: {me}"))?;
        assert_eq!(session["current"], true, "{what}: {session}");
        assert_eq!(
            session["name"].as_str(),
            token.name.as_deref(),
            "{what}: {session}"
        );
        assert_eq!(session["named"], false, "{what}: {session}");
        assert!(
            session.get("scopes").is_some_and(Value::is_null),
            "{what}: not unrestricted: {session}"
        );

        // Expiry: the session policy's only, from this use (moved forward by the shift).
        let policy = fixture.org(&token.org_tenant_id)?.session_policy;
        let by_age = policy
            .max_age_secs
            .map(|secs| token.created_at + shift + secs * 1000);
        let bound = |used: i64| {
            let by_idle = policy.idle_expiry_secs.map(|secs| used + secs * 1000);
            match (by_age, by_idle) {
                (Some(age), Some(idle)) => Some(age.min(idle)),
                (age, idle) => age.or(idle),
            }
        };
        match (bound(before), bound(after)) {
            (None, None) => assert!(
                session["expiresAt"].is_null(),
                "{what}: no policy, no expiry of its own, yet {session}"
            ),
            (Some(earliest), Some(latest)) => {
                let at = session["expiresAt"]
                    .as_str()
                    .ok_or_else(|| format!("{what}: the policy's expiry is missing: {session}"))?;
                let at = parse_ms(at)?;
                // expiresAt has millisecond precision; our clock reads bracket the server's.
                assert!(
                    (earliest - 1..=latest + 1).contains(&at),
                    "{what}: expiresAt {at} not in {earliest}..={latest}: {session}"
                );
            }
            other => return Err(format!("{what}: policy bounds {other:?}").into()),
        }
        refreshed.insert(token.id.as_str());
    }

    // Two old tokens with one name: both still work, each its own session.
    let ci: BTreeSet<&str> = fixture.ci_tokens().iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ci.len(), 2);
    assert!(ci.is_subset(&refreshed), "{ci:?} not all refreshed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Names.

/// Old tokens are not "named": the CI user mints a named token called "ci pipeline", the name
/// both its old tokens carry; the new one works and is the only named one, and a second named
/// "ci pipeline" is refused (so the first was not let through by a missing uniqueness check).
/// Both old tokens keep working.
async fn old_name_free_for_a_named_token(server: &Server, fixture: &Fixture) -> TestResult {
    let old = fixture.ci_tokens();
    let first = old.first().ok_or("no CI token")?;
    let access = access_token(server, &first.token).await?;

    let (status, _, body) = server.graphql(Some(&access), CREATE_CI_TOKEN).await?;
    assert_eq!(status, 200, "{body}");
    let created = &body["data"]["createToken"];
    assert_eq!(created["errors"], serde_json::json!([]), "{body}");
    let token = created["token"]
        .as_str()
        .ok_or_else(|| format!("no token: {body}"))?
        .to_owned();
    assert!(token.starts_with("prism_rt_"), "{body}");
    let session = &created["session"];
    assert_eq!(session["name"], "ci pipeline", "{body}");
    assert_eq!(session["named"], true, "{body}");
    assert!(session["scopes"].is_null(), "{body}");
    assert!(session["expiresAt"].is_null(), "{body}");
    let new_id = session["id"]
        .as_str()
        .ok_or_else(|| format!("no session id: {body}"))?
        .to_owned();

    let new_access = access_token(server, &token).await?;
    let (status, _, me) = server.graphql(Some(&new_access), ME).await?;
    assert_eq!(status, 200, "{me}");
    let user = &me["data"]["authenticatedUser"];
    assert_eq!(user["id"], public_id("User", &first.user_id), "{me}");
    let sessions = user["sessions"]
        .as_array()
        .ok_or_else(|| format!("no sessions: {me}"))?;
    let mut ci_named: Vec<(&str, bool)> = sessions
        .iter()
        .filter(|s| s["name"] == "ci pipeline")
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default(),
                s["named"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    let mut expected: Vec<(&str, bool)> = old.iter().map(|t| (t.id.as_str(), false)).collect();
    expected.push((new_id.as_str(), true));
    ci_named.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        ci_named, expected,
        "the sessions named \"ci pipeline\": {me}"
    );

    let (status, _, again) = server.graphql(Some(&access), CREATE_CI_TOKEN).await?;
    assert_eq!(status, 200, "{again}");
    let refused = &again["data"]["createToken"];
    assert!(
        refused["token"].is_null(),
        "a second named \"ci pipeline\": {again}"
    );
    let fields: Vec<&str> = refused["errors"]
        .as_array()
        .ok_or_else(|| format!("no errors: {again}"))?
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["name"], "{again}");

    for token in &old {
        let (status, body) = server.refresh(&token.token).await?;
        assert_eq!(
            status, 200,
            "old CI token {} after the new one: {body}",
            token.id
        );
    }
    Ok(())
}

/// Refreshes `token`, which must work; its access token.
async fn access_token(server: &Server, token: &str) -> Res<String> {
    let (status, body) = server.refresh(token).await?;
    if status != 200 {
        return Err(format!("refresh: {status} {body}").into());
    }
    Ok(body["access_token"]
        .as_str()
        .ok_or_else(|| format!("no access_token: {body}"))?
        .to_owned())
}

// ---------------------------------------------------------------------------------------------
// The copied fixture and its database.

/// Org A's session policy counts from each token's creation and last use, which make.sh left
/// at the time it ran: they move forward by the fixture's age ([`Fixture::shift_ms`]), so that
/// the policy has not ended them by the time this test runs (as it would once the fixture is
/// older than the idle expiry).
const SHIFT_TIMES: &str = "UPDATE refresh_tokens SET created_at = created_at + $1, \
                           last_used_at = last_used_at + $1";

const USERS: &str = "SELECT u.id, o.tenant_id, u.email, u.name, u.role, u.removed_at, u.kind \
                     FROM users u JOIN organizations o ON o.id = u.org_id";

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    tenant_id: String,
    email: String,
    name: String,
    role: String,
    removed_at: Option<i64>,
    kind: String,
}

const TOKENS: &str = "SELECT id, user_id, name, named, expires_at, expiry_notified_at \
                      FROM refresh_tokens";

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    user_id: String,
    name: Option<String>,
    named: bool,
    expires_at: Option<i64>,
    expiry_notified_at: Option<i64>,
}
