//! Upgrading to sign-in identities (issue 16): the databases the release before them left on
//! disk (tests/fixtures/before-identities, SQLite and PostgreSQL) are opened by this `prismd`,
//! and nothing is lost: every row, user, refresh token, browser session and invitation is still
//! there and still works, and no password becomes valid anywhere it was not valid before.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::fixture_db::{Deployment, manifest, now_ms};
use crate::harness::{
    Pkce, Server, SignInPage, TestResult, authorize_query_for, browser, browser_sign_in_with,
    prismd_with_stdin, set_cookie,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The fixture folder under tests/fixtures.
const FOLDER: &str = "before-identities";
/// The browser's `User-Agent`.
const AGENT: &str = "upgrade-e2e";
const ME: &str = "{ authenticatedUser { email tenantId } }";
/// The password an operator gives shared@corp.com after the upgrade.
const NEW_SHARED_PASSWORD: &str = "shared's password after the upgrade";
const INVITED_PASSWORD: &str = "invited's first password";
/// What the test sets the fixtures' browser sessions and invitations to expire at: a day
/// from now (make.sh's were real times, 12 h and 7 days after it ran).
const A_DAY_MS: i64 = 24 * 60 * 60 * 1000;

// ---------------------------------------------------------------------------------------------
// The manifest make.sh wrote next to the fixtures.

/// What one backend's fixture holds.
#[derive(Deserialize)]
struct Fixture {
    organizations: Vec<Organization>,
    users: Vec<User>,
    refresh_tokens: Vec<RefreshToken>,
    browser_sessions: Vec<BrowserSession>,
    invitations: Vec<Invitation>,
    row_counts: BTreeMap<String, i64>,
    audit_actions: BTreeMap<String, i64>,
    migrations: Vec<i64>,
}

#[derive(Deserialize)]
struct Organization {
    name: String,
    tenant_id: String,
}

#[derive(Deserialize)]
struct User {
    id: String,
    org_tenant_id: String,
    email: String,
    role: String,
    password: Option<String>,
    removed: bool,
}

#[derive(Deserialize)]
struct RefreshToken {
    token: String,
    id: String,
    email: String,
    org_tenant_id: String,
    live: bool,
}

#[derive(Deserialize)]
struct BrowserSession {
    cookie: String,
    user_id: String,
    email: String,
    org_tenant_id: String,
}

#[derive(Deserialize)]
struct Invitation {
    token: String,
    email: String,
    org_tenant_id: String,
    used: bool,
}

impl Fixture {
    fn org(&self, name: &str) -> Res<&Organization> {
        self.organizations
            .iter()
            .find(|org| org.name == name)
            .ok_or_else(|| format!("no organization {name:?} in the manifest").into())
    }

    fn org_name(&self, tenant: &str) -> Res<&str> {
        self.organizations
            .iter()
            .find(|org| org.tenant_id == tenant)
            .map(|org| org.name.as_str())
            .ok_or_else(|| format!("no organization with tenant {tenant} in the manifest").into())
    }

    /// How many organizations had an active user with `email`.
    fn active_users_of(&self, email: &str) -> usize {
        self.users
            .iter()
            .filter(|u| u.email == email && !u.removed)
            .count()
    }

    /// The emails with an active user: the identities the upgrade makes.
    fn active_emails(&self) -> BTreeSet<&str> {
        self.users
            .iter()
            .filter(|u| !u.removed)
            .map(|u| u.email.as_str())
            .collect()
    }

    /// Whether `email`'s identity may have a password after the upgrade: only when the email
    /// had exactly one active user, and that user a password.
    fn keeps_password(&self, email: &str) -> bool {
        self.active_users_of(email) == 1
            && self
                .users
                .iter()
                .any(|u| u.email == email && !u.removed && u.password.is_some())
    }

    /// Emails whose passwords were all dropped: several active users, at least one password.
    fn needs_password(&self) -> BTreeSet<&str> {
        self.active_emails()
            .into_iter()
            .filter(|email| {
                self.active_users_of(email) > 1
                    && self
                        .users
                        .iter()
                        .any(|u| u.email == *email && !u.removed && u.password.is_some())
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn upgrade_from_before_identities_sqlite() -> TestResult {
    let fixture: Fixture = manifest(FOLDER)?.backends.sqlite;
    let deployment = Deployment::sqlite_copy(FOLDER, EXTEND, a_day_from_now).await?;
    upgrade(&deployment, &fixture).await
}

#[tokio::test]
async fn upgrade_from_before_identities_postgres() -> TestResult {
    let fixture: Fixture = manifest(FOLDER)?.backends.postgres;
    Deployment::on_postgres(FOLDER, EXTEND, a_day_from_now, async |deployment| {
        upgrade(deployment, &fixture).await
    })
    .await
}

/// A refresh token minted before the upgrade, like a browser session made before it, stays
/// with the one member it was minted for: otherwise a token that org A's password (or org B's
/// Admin) obtained for a per-organization account now opens the email's member in the other
/// organization, through `tenant_id`.
#[tokio::test]
async fn old_refresh_tokens_stay_with_their_member_sqlite() -> TestResult {
    let fixture: Fixture = manifest(FOLDER)?.backends.sqlite;
    let deployment = Deployment::sqlite_copy(FOLDER, EXTEND, a_day_from_now).await?;
    old_tokens_stay_with_their_member(&deployment, &fixture).await
}

#[tokio::test]
async fn old_refresh_tokens_stay_with_their_member_postgres() -> TestResult {
    let fixture: Fixture = manifest(FOLDER)?.backends.postgres;
    Deployment::on_postgres(FOLDER, EXTEND, a_day_from_now, async |deployment| {
        old_tokens_stay_with_their_member(deployment, &fixture).await
    })
    .await
}

/// Starts this `prismd` on the old data and checks everything the upgrade promises.
async fn upgrade(deployment: &Deployment, fixture: &Fixture) -> TestResult {
    let server = deployment.start()?;
    // Read before any request, so that only the start itself could have written.
    nothing_lost(deployment, fixture).await?;
    migrations_applied(deployment, fixture).await?;

    refresh_tokens_unchanged(&server, fixture).await?;
    no_password_opens_more(&server, fixture).await?;
    let needs_password = fixture.needs_password();
    assert_eq!(
        needs_password,
        BTreeSet::from(["half@corp.com", "shared@corp.com"]),
        "what the manifest says"
    );
    for email in fixture.active_emails() {
        assert_eq!(
            warned_about(&server.logs(), email),
            needs_password.contains(email),
            "the upgrade warning for {email}; log:\n{}",
            server.logs()
        );
    }
    browser_sessions_still_work(&server, fixture).await?;
    invitation_still_works(&server, fixture).await?;
    let logs = server.stop()?;
    assert!(!logs.contains("ERROR"), "{logs}");

    operator_sets_a_password(deployment, fixture).await
}

// ---------------------------------------------------------------------------------------------
// 1. Nothing is lost.

/// Row counts, users and audit actions against the manifest, and an identity per active email
/// with a password only where the email had one active user.
async fn nothing_lost(deployment: &Deployment, fixture: &Fixture) -> TestResult {
    for (table, before) in &fixture.row_counts {
        let now = deployment.count(table).await?;
        assert!(now >= *before, "{table}: {now} rows, {before} before");
    }
    let actions = deployment.audit_actions().await?;
    for (action, before) in &fixture.audit_actions {
        let now = actions.get(action).copied().unwrap_or(0);
        assert!(
            now >= *before,
            "audit {action}: {now} events, {before} before"
        );
    }

    let users: Vec<UserRow> = deployment.rows(USERS).await?;
    let identities: Vec<IdentityRow> = deployment.rows(IDENTITIES).await?;
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
        assert_eq!(row.role, expected.role, "{what}: role");
        assert_eq!(
            row.removed_at.is_some(),
            expected.removed,
            "{what}: removed"
        );
        assert_eq!(
            row.password_hash, None,
            "{what}: a password left on the member"
        );
        let identity_email = row
            .identity_id
            .as_ref()
            .and_then(|id| identities.iter().find(|i| &i.id == id))
            .map(|i| i.email.as_str());
        if expected.removed {
            assert_eq!(row.identity_id, None, "{what}: removed, yet an identity");
        } else {
            assert_eq!(identity_email, Some(expected.email.as_str()), "{what}");
        }
    }

    let emails: BTreeSet<&str> = identities.iter().map(|i| i.email.as_str()).collect();
    assert_eq!(
        emails,
        fixture.active_emails(),
        "one identity per active email"
    );
    assert_eq!(emails.len(), identities.len(), "one identity per email");
    for identity in &identities {
        assert_eq!(
            identity.password_hash.is_some(),
            fixture.keeps_password(&identity.email),
            "the password of {}",
            identity.email
        );
    }
    let notices: Vec<String> = deployment
        .column("SELECT email FROM identity_upgrade_notices")
        .await?;
    assert_eq!(
        notices.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        fixture.needs_password(),
        "identity_upgrade_notices"
    );

    let only_users: Vec<Option<String>> = deployment
        .column("SELECT only_user_id FROM browser_sessions")
        .await?;
    let expected: BTreeSet<&str> = fixture
        .browser_sessions
        .iter()
        .map(|s| s.user_id.as_str())
        .collect();
    let found: BTreeSet<&str> = only_users.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        only_users.len(),
        fixture.browser_sessions.len(),
        "browser sessions"
    );
    assert_eq!(found, expected, "browser_sessions.only_user_id");
    Ok(())
}

/// 7. `_sqlx_migrations` lists every old migration and 0009.
async fn migrations_applied(deployment: &Deployment, fixture: &Fixture) -> TestResult {
    let versions = deployment.migrations().await?;
    for version in fixture.migrations.iter().chain([&9]) {
        assert!(
            versions.contains(version),
            "migration {version} missing: {versions:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Refresh tokens.

/// Every live token still refreshes, as the same user in the same organization; every dead
/// one is still refused.
async fn refresh_tokens_unchanged(server: &Server, fixture: &Fixture) -> TestResult {
    for token in &fixture.refresh_tokens {
        let (status, body) = server.refresh(&token.token).await?;
        let what = format!("{}'s token in {}", token.email, token.org_tenant_id);
        if token.live {
            assert_eq!(status, 200, "{what}: {body}");
            let access = body["access_token"].as_str().ok_or("no access_token")?;
            assert_eq!(
                whoami(server, access).await?,
                (token.email.clone(), token.org_tenant_id.clone()),
                "{what}"
            );
        } else {
            assert_eq!(status, 400, "{what}: dead, yet {body}");
            assert_eq!(body["error"], "invalid_grant", "{what}");
        }
    }
    Ok(())
}

/// Every live old token of an email with members in several organizations: refreshing with
/// `tenant_id` of another of them is refused, and the token still refreshes where it was.
async fn old_tokens_stay_with_their_member(
    deployment: &Deployment,
    fixture: &Fixture,
) -> TestResult {
    let server = deployment.start()?;
    let mut moved = Vec::new();
    for token in &fixture.refresh_tokens {
        if !token.live || fixture.active_users_of(&token.email) < 2 {
            continue;
        }
        let own = fixture.org_name(&token.org_tenant_id)?;
        let what = format!("token {} ({} in {own})", token.id, token.email);
        let elsewhere = fixture.users.iter().filter(|u| {
            u.email == token.email && !u.removed && u.org_tenant_id != token.org_tenant_id
        });
        let mut stayed = true;
        for other in elsewhere {
            let body = serde_json::json!({
                "refresh_token": token.token,
                "tenant_id": other.org_tenant_id,
            });
            let (status, answer) = server.post_json("/auth/refresh", &body).await?;
            if status == 200 {
                let to = fixture.org_name(&other.org_tenant_id)?;
                moved.push(format!("{what} refreshed into {to}"));
                stayed = false;
            } else {
                assert!(answer["access_token"].is_null(), "{what}: {answer}");
            }
        }
        // A token that moved acts elsewhere now: reported below.
        if stayed {
            let (status, answer) = server.refresh(&token.token).await?;
            assert_eq!(status, 200, "{what}: {answer}");
            let access = answer["access_token"].as_str().ok_or("no access_token")?;
            assert_eq!(
                whoami(&server, access).await?,
                (token.email.clone(), token.org_tenant_id.clone()),
                "{what} no longer acts there"
            );
        }
    }
    server.stop()?;
    if moved.is_empty() {
        return Ok(());
    }
    // An error, not a panic, so that the PostgreSQL test still drops its database.
    Err(format!(
        "refresh tokens from before the upgrade reached another organization:\n{}",
        moved.join("\n")
    )
    .into())
}

/// The email and tenant `authenticatedUser` reports for `access`.
async fn whoami(server: &Server, access: &str) -> Res<(String, String)> {
    let (status, _, body) = server.graphql(Some(access), ME).await?;
    let user = &body["data"]["authenticatedUser"];
    match (status, user["email"].as_str(), user["tenantId"].as_str()) {
        (200, Some(email), Some(tenant)) => Ok((email.to_owned(), tenant.to_owned())),
        _ => Err(format!("authenticatedUser: {status} {body}").into()),
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Passwords.

/// Each old password signs in only where its email had one active user; elsewhere (the email
/// now reaches several organizations) it is refused.
async fn no_password_opens_more(server: &Server, fixture: &Fixture) -> TestResult {
    let mut opened = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for user in fixture.users.iter().filter(|u| !u.removed) {
        let Some(password) = &user.password else {
            continue;
        };
        let sign_in = SignIn::new()?;
        let page = sign_in.password(server, &user.email, password).await?;
        if fixture.keeps_password(&user.email) {
            let access = sign_in.tokens(server, &page).await?;
            assert_eq!(
                whoami(server, &access).await?,
                (user.email.clone(), user.org_tenant_id.clone()),
                "{}'s old password",
                user.email
            );
            opened.insert(user.email.as_str());
        } else {
            assert_ne!(
                page.status,
                303,
                "{} / {password} must be refused: {}",
                user.email,
                describe(&page)
            );
            assert_eq!(code_of(&page), None, "{} / {password}", user.email);
            refused.insert((user.email.as_str(), password.as_str()));
        }
    }
    // The cases of the fixture, named: solo (one organization) and the Owner keep theirs;
    // shared (a password in A and in B) and half (a password in A, a member in B) keep none.
    assert_eq!(opened, BTreeSet::from(["owner@corp.com", "solo@corp.com"]));
    assert_eq!(
        refused,
        BTreeSet::from([
            ("half@corp.com", "pw-half-A-1"),
            ("shared@corp.com", "pw-shared-A-1"),
            ("shared@corp.com", "pw-shared-B-1"),
        ])
    );
    Ok(())
}

/// Whether the log has the start's warning that `email` has no password since the upgrade.
fn warned_about(logs: &str, email: &str) -> bool {
    let field = format!("email={email}");
    logs.lines().any(|line| {
        line.contains("users set-password")
            && line
                .split_whitespace()
                .any(|word| word.trim_matches('"') == field)
    })
}

// ---------------------------------------------------------------------------------------------
// 4. An operator gives shared@corp.com a password.

/// `users set-password` with the server stopped; on the next start the warning for shared is
/// gone (half's stays), and the new password opens the chooser of both organizations.
async fn operator_sets_a_password(deployment: &Deployment, fixture: &Fixture) -> TestResult {
    let org_a = fixture.org("Org A")?;
    let org_b = fixture.org("Org B")?;
    deployment.admin_stdin(
        Some(&org_a.tenant_id),
        &["users", "set-password", "--email", "shared@corp.com"],
        &format!("{NEW_SHARED_PASSWORD}\n"),
    )?;
    let server = deployment.start()?;
    let sign_in = SignIn::new()?;
    let chooser = sign_in
        .password(&server, "shared@corp.com", NEW_SHARED_PASSWORD)
        .await?;
    assert_eq!(chooser.status, 200, "{}", describe(&chooser));
    assert_eq!(code_of(&chooser), None);
    assert!(
        chooser.body.contains("Choose an organization"),
        "{}",
        describe(&chooser)
    );
    for org in [org_a, org_b] {
        assert!(chooser.body.contains(&org.name), "{}", describe(&chooser));
    }
    // Only the new password: the old ones stay refused.
    for old in ["pw-shared-A-1", "pw-shared-B-1"] {
        let page = SignIn::new()?
            .password(&server, "shared@corp.com", old)
            .await?;
        assert_ne!(page.status, 303, "{old}: {}", describe(&page));
        assert!(
            !page.body.contains("Choose an organization"),
            "{old}: {}",
            describe(&page)
        );
    }
    let logs = server.stop()?;
    assert!(!warned_about(&logs, "shared@corp.com"), "{logs}");
    assert!(warned_about(&logs, "half@corp.com"), "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Browser sessions.

/// The old sessions' cookies still sign in, each only as the member it signed in to.
async fn browser_sessions_still_work(server: &Server, fixture: &Fixture) -> TestResult {
    for session in &fixture.browser_sessions {
        let sign_in = SignIn::new()?;
        let page = sign_in
            .continue_as(server, &session.cookie, &session.email)
            .await?;
        let access = sign_in.tokens(server, &page).await?;
        assert_eq!(
            whoami(server, &access).await?,
            (session.email.clone(), session.org_tenant_id.clone()),
            "{}'s old browser session",
            session.email
        );
    }

    // shared@corp.com's session was made with its password in A: it must not reach B.
    let session = fixture
        .browser_sessions
        .iter()
        .find(|s| s.email == "shared@corp.com")
        .ok_or("no browser session of shared@corp.com in the manifest")?;
    let other = fixture
        .users
        .iter()
        .find(|u| u.email == session.email && u.org_tenant_id != session.org_tenant_id)
        .ok_or("no second member of shared@corp.com in the manifest")?;
    let sign_in = SignIn::new()?;
    let page = sign_in.choose(server, &session.cookie, &other.id).await?;
    assert_eq!(
        code_of(&page),
        None,
        "an old session of {} in {} chose its member in {}: {}",
        session.email,
        fixture.org_name(&session.org_tenant_id)?,
        fixture.org_name(&other.org_tenant_id)?,
        describe(&page)
    );
    // The same form for its own member gives a code: the refusal above is the restriction.
    let sign_in = SignIn::new()?;
    let page = sign_in
        .choose(server, &session.cookie, &session.user_id)
        .await?;
    let access = sign_in.tokens(server, &page).await?;
    assert_eq!(
        whoami(server, &access).await?,
        (session.email.clone(), session.org_tenant_id.clone())
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Invitations.

/// invited@corp.com's unused link (its email is in one organization) still sets the first
/// password, which then signs in to that organization.
async fn invitation_still_works(server: &Server, fixture: &Fixture) -> TestResult {
    let invitation = fixture
        .invitations
        .iter()
        .find(|i| i.email == "invited@corp.com" && !i.used)
        .ok_or("no unused invitation of invited@corp.com in the manifest")?;
    let http = browser(AGENT)?;
    let page = http
        .get(server.url("/invite"))
        .query(&[("token", invitation.token.as_str())])
        .send()
        .await?;
    assert_eq!(page.status().as_u16(), 200, "the old invitation link");
    let csrf = set_cookie(page.headers(), "prism_invite_csrf").ok_or("no prism_invite_csrf")?;
    let html = page.text().await?;
    assert!(html.contains(&invitation.email), "{html}");
    let done = http
        .post(server.url("/invite"))
        .header("cookie", format!("prism_invite_csrf={csrf}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("token", invitation.token.as_str()),
            ("password", INVITED_PASSWORD),
            ("confirm", INVITED_PASSWORD),
        ])
        .send()
        .await?;
    assert_eq!(done.status().as_u16(), 200);
    let html = done.text().await?;
    assert!(html.contains("Password set"), "{html}");

    let sign_in = SignIn::new()?;
    let page = sign_in
        .password(server, &invitation.email, INVITED_PASSWORD)
        .await?;
    let access = sign_in.tokens(server, &page).await?;
    assert_eq!(
        whoami(server, &access).await?,
        (invitation.email.clone(), invitation.org_tenant_id.clone())
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Browser sign-ins.

/// A browser sign-in by the CLI's client: its PKCE pair and `/authorize` query.
struct SignIn {
    pkce: Pkce,
    query: Vec<(&'static str, String)>,
}

impl SignIn {
    fn new() -> Res<Self> {
        let pkce = Pkce::new()?;
        let query = authorize_query_for(&pkce.challenge);
        Ok(Self { pkce, query })
    }

    /// Posts `email` / `password` to the sign-in form.
    async fn password(&self, server: &Server, email: &str, password: &str) -> Res<SignInPage> {
        browser_sign_in_with(server, &self.query, email, password, AGENT).await
    }

    /// With the browser session `cookie`: `GET /authorize` must offer "Continue as `email`";
    /// then clicks Continue.
    async fn continue_as(&self, server: &Server, cookie: &str, email: &str) -> Res<SignInPage> {
        let page = browser(AGENT)?
            .get(server.url("/authorize"))
            .query(&self.query)
            .header("cookie", format!("prism_session={cookie}"))
            .send()
            .await?;
        let csrf = set_cookie(page.headers(), "prism_csrf").ok_or("no prism_csrf cookie")?;
        let status = page.status().as_u16();
        let body = page.text().await?;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(&format!("Continue as {email}?")),
            "{email}'s old session: {body}"
        );
        self.post(server, cookie, csrf, [("action", "continue".to_owned())])
            .await
    }

    /// With the browser session `cookie`, posts the chooser's form for the member `user_id`.
    async fn choose(&self, server: &Server, cookie: &str, user_id: &str) -> Res<SignInPage> {
        let page = browser(AGENT)?
            .get(server.url("/authorize"))
            .query(&self.query)
            .header("cookie", format!("prism_session={cookie}"))
            .send()
            .await?;
        let csrf = set_cookie(page.headers(), "prism_csrf").ok_or("no prism_csrf cookie")?;
        self.post(
            server,
            cookie,
            csrf,
            [
                ("action", "choose".to_owned()),
                ("member", user_id.to_owned()),
            ],
        )
        .await
    }

    /// Posts the `/authorize` form with the session and CSRF cookies and `fields`.
    async fn post<const N: usize>(
        &self,
        server: &Server,
        session: &str,
        csrf: String,
        fields: [(&'static str, String); N],
    ) -> Res<SignInPage> {
        let mut form = self.query.clone();
        form.push(("csrf", csrf.clone()));
        form.extend(fields);
        let response = browser(AGENT)?
            .post(server.url("/authorize"))
            .header(
                "cookie",
                format!("prism_session={session}; prism_csrf={csrf}"),
            )
            .form(&form)
            .send()
            .await?;
        Ok(SignInPage {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await?,
            csrf,
        })
    }

    /// Redeems the code `page` redirected with; returns the access token.
    async fn tokens(&self, server: &Server, page: &SignInPage) -> Res<String> {
        let code = code_of(page).ok_or_else(|| format!("no code: {}", describe(page)))?;
        let (status, body) = crate::harness::redeem_code(
            server,
            &code,
            &self.pkce.verifier,
            crate::harness::REDIRECT_URI,
        )
        .await?;
        if status != 200 {
            return Err(format!("code exchange: {status} {body}").into());
        }
        Ok(body["access_token"]
            .as_str()
            .ok_or_else(|| format!("no access_token: {body}"))?
            .to_owned())
    }
}

/// The authorization code a page redirected with, if it is a 303 carrying one.
fn code_of(page: &SignInPage) -> Option<String> {
    (page.status == 303)
        .then(|| page.location_param("code"))
        .flatten()
}

fn describe(page: &SignInPage) -> String {
    format!(
        "status {}, location {:?}, body {}",
        page.status,
        page.headers.get("location"),
        page.body
    )
}

// ---------------------------------------------------------------------------------------------
// The copied fixture and its database.

/// The old sessions and invitations expire a day from now.
const EXTEND_SESSIONS: &str = "UPDATE browser_sessions SET expires_at = $1";
const EXTEND_INVITATIONS: &str = "UPDATE invitations SET expires_at = $1 WHERE used_at IS NULL";
/// What makes the copy current, with [`a_day_from_now`].
const EXTEND: &[&str] = &[EXTEND_SESSIONS, EXTEND_INVITATIONS];

fn a_day_from_now() -> Res<i64> {
    Ok(now_ms()? + A_DAY_MS)
}

impl Deployment {
    /// An admin command (in the organization `tenant`) that must succeed; its trimmed stdout.
    fn admin_stdin(&self, tenant: Option<&str>, args: &[&str], stdin: &str) -> Res<String> {
        let mut full: Vec<&str> = Vec::new();
        if let Some(url) = self.database_url() {
            full.extend(["--database-url", url]);
        }
        if let Some(tenant) = tenant {
            full.extend(["--tenant-id", tenant]);
        }
        full.extend_from_slice(args);
        let output = prismd_with_stdin(self.dir(), &full, stdin)?;
        if !output.status.success() {
            return Err(format!(
                "prismd {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }
}

const USERS: &str = "SELECT u.id, o.tenant_id, u.email, u.role, u.removed_at, u.identity_id, \
                     u.password_hash FROM users u JOIN organizations o ON o.id = u.org_id";

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    tenant_id: String,
    email: String,
    role: String,
    removed_at: Option<i64>,
    identity_id: Option<String>,
    password_hash: Option<String>,
}

const IDENTITIES: &str = "SELECT id, email, password_hash FROM identities";

#[derive(sqlx::FromRow)]
struct IdentityRow {
    id: String,
    email: String,
    password_hash: Option<String>,
}
