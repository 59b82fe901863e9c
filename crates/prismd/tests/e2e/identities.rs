//! One sign-in identity, many organizations (issue 16): the cross-organization takeover loop
//! fails at every step and is counted and audited (SQLite and PostgreSQL), `listUserTenants`
//! shows only the caller's own joined organizations, the organization chooser and `tenant_id`
//! on the code and refresh grants, `/auth/revoke` across organizations against removing one
//! membership, pending memberships that need a verified email, and the role rules that keep
//! Admins away from Owners (also under a race).

use std::path::Path;
use std::process::Output;

use base64::Engine as _;
use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::harness::{
    Options, Pkce, Server, SignInPage, TestResult, authorize_query_for, browser,
    browser_sign_in_with, prismd_with_stdin, temp_dir,
};
use crate::postgres::FreshDatabase;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The browser's `User-Agent`.
const AGENT: &str = "identities-e2e";
const VICTIM: &str = "victim@corp.com";
const VICTIM_PASSWORD: &str = "the victim's real password";
const MALLORY: &str = "mallory@b.example";
const MALLORY_PASSWORD: &str = "mallory's own password";
const PASSWORD: &str = "correct horse battery staple";
/// The default `--login-account-max-failures`: the failure that reaches it locks.
const ACCOUNT_MAX_FAILURES: usize = 5;

const ME: &str = "{ authenticatedUser { id email tenantId org { name } } }";
const TENANTS: &str = "{ listUserTenants { nodes { tenantId orgName } } }";
const CREATE: &str = "mutation($email: String!, $name: String, $role: ID!) { createOrganizationUser(input: {email: $email, name: $name, role: $role}) { user { id email role { name } } invitationUrl errors { field messages } } }";
const DELETE: &str =
    "mutation($id: ID!) { deleteUser(input: {id: $id}) { user { id } errors { field messages } } }";
const INVITE: &str = "mutation($id: ID!) { createUserInvitation(input: {id: $id}) { url errors { field messages } } }";
const SET_ROLE: &str = "mutation($id: ID!, $role: ID) { updateUser(input: {id: $id, role: $role}) { user { id role { name } } errors { field messages } } }";
const USERS: &str = r#"{ organization { users(after: "") { nodes { id email role { name } } } } }"#;

/// Where a test's servers keep their data: a data directory, and a PostgreSQL database or
/// the SQLite file in that directory. Admin commands run against the same.
struct Deployment {
    dir: tempfile::TempDir,
    database_url: Option<String>,
}

impl Deployment {
    fn sqlite() -> Res<Self> {
        Ok(Self {
            dir: temp_dir()?,
            database_url: None,
        })
    }

    fn postgres(url: &str) -> Res<Self> {
        Ok(Self {
            dir: temp_dir()?,
            database_url: Some(url.to_owned()),
        })
    }

    fn data(&self) -> &Path {
        self.dir.path()
    }

    /// A server whose locks outlast the test (10 min), so that every "is locked" below holds
    /// however slow the machine; the failure counts are the defaults.
    fn start(&self) -> Res<Server> {
        let mut args: Vec<String> = ["--limit-lock", "10m", "--limit-max-lock", "10m"]
            .map(str::to_owned)
            .to_vec();
        if let Some(url) = &self.database_url {
            args.extend(["--database-url".to_owned(), url.clone()]);
        }
        Server::start_with(
            self.data(),
            Options {
                args,
                ..Options::default()
            },
        )
    }

    /// Runs an admin command (in the organization `tenant`, or the default one).
    fn run(&self, tenant: Option<&str>, args: &[&str], stdin: &str) -> Res<Output> {
        let mut full: Vec<&str> = Vec::new();
        if let Some(url) = &self.database_url {
            full.extend(["--database-url", url.as_str()]);
        }
        if let Some(tenant) = tenant {
            full.extend(["--tenant-id", tenant]);
        }
        full.extend_from_slice(args);
        Ok(prismd_with_stdin(self.data(), &full, stdin)?)
    }

    /// An admin command that must succeed; its trimmed stdout.
    fn admin(&self, tenant: Option<&str>, args: &[&str]) -> Res<String> {
        self.admin_stdin(tenant, args, "")
    }

    fn admin_stdin(&self, tenant: Option<&str>, args: &[&str], stdin: &str) -> Res<String> {
        let output = self.run(tenant, args, stdin)?;
        if !output.status.success() {
            return Err(format!(
                "prismd {args:?} (tenant {tenant:?}) failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }

    /// `users add` with `role` (and a password when given); returns the member's public id.
    fn add_user(
        &self,
        tenant: Option<&str>,
        email: &str,
        role: &str,
        password: Option<&str>,
    ) -> Res<String> {
        let mut args = vec!["users", "add", "--email", email, "--role", role];
        if password.is_some() {
            args.push("--password-stdin");
        }
        let stdin = password.map(|p| format!("{p}\n")).unwrap_or_default();
        self.admin_stdin(tenant, &args, &stdin)
    }

    fn set_password(&self, tenant: Option<&str>, email: &str, password: &str) -> TestResult {
        self.admin_stdin(
            tenant,
            &["users", "set-password", "--email", email],
            &format!("{password}\n"),
        )?;
        Ok(())
    }

    /// A refresh token for `email`'s member in `tenant`.
    fn token(&self, tenant: Option<&str>, email: &str) -> Res<String> {
        self.admin(tenant, &["tokens", "create", "--email", email])
    }

    /// Creates an organization; returns its tenant id.
    fn add_org(&self, name: &str) -> Res<String> {
        self.admin(None, &["orgs", "add", "--name", name])
    }

    /// The default organization's tenant id and name.
    fn default_org(&self) -> Res<(String, String)> {
        let orgs = self.admin(None, &["orgs", "list"])?;
        let line = orgs
            .lines()
            .find(|line| line.ends_with("(default)"))
            .ok_or_else(|| format!("no default organization in {orgs:?}"))?;
        let (tenant, rest) = line.split_once("  ").ok_or("an orgs list line")?;
        let name = rest.trim_end_matches("(default)").trim();
        Ok((tenant.to_owned(), name.to_owned()))
    }

    /// The audit events of `action` in the organization `tenant`, newest first.
    fn audit(&self, tenant: &str, action: &str) -> Res<Vec<Value>> {
        let lines = self.admin(
            Some(tenant),
            &["audit", "--action", action, "--limit", "1000"],
        )?;
        Ok(lines
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?)
    }

    /// The first column of the first row of a read-only query with one text parameter.
    async fn text(&self, sql: &'static str, param: &str) -> Res<Option<String>> {
        Ok(match &self.database_url {
            Some(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                let value = sqlx::query_scalar(sql)
                    .bind(param.to_owned())
                    .fetch_optional(&mut conn)
                    .await?;
                conn.close().await?;
                value
            }
            None => {
                let mut conn = self.sqlite_read_only().await?;
                let value = sqlx::query_scalar(sql)
                    .bind(param.to_owned())
                    .fetch_optional(&mut conn)
                    .await?;
                conn.close().await?;
                value
            }
        })
    }

    /// Like [`Deployment::text`], for a nullable integer column: `None` when there is no row,
    /// `Some(None)` for a NULL.
    async fn int(&self, sql: &'static str, param: &str) -> Res<Option<Option<i64>>> {
        Ok(match &self.database_url {
            Some(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                let value = sqlx::query_scalar(sql)
                    .bind(param.to_owned())
                    .fetch_optional(&mut conn)
                    .await?;
                conn.close().await?;
                value
            }
            None => {
                let mut conn = self.sqlite_read_only().await?;
                let value = sqlx::query_scalar(sql)
                    .bind(param.to_owned())
                    .fetch_optional(&mut conn)
                    .await?;
                conn.close().await?;
                value
            }
        })
    }

    async fn sqlite_read_only(&self) -> Res<sqlx::SqliteConnection> {
        let url = format!(
            "sqlite://{}?mode=ro",
            self.data().join("prismd.db").display()
        );
        Ok(sqlx::SqliteConnection::connect(&url).await?)
    }

    async fn identity_id(&self, email: &str) -> Res<String> {
        self.text("SELECT id FROM identities WHERE email = $1", email)
            .await?
            .ok_or_else(|| format!("no identity row for {email}").into())
    }

    /// `users.joined_at` of a member (raw id): `None` while the membership is pending.
    async fn joined_at(&self, user_id: &str) -> Res<Option<i64>> {
        self.int("SELECT joined_at FROM users WHERE id = $1", user_id)
            .await?
            .ok_or_else(|| format!("no users row {user_id}").into())
    }

    async fn identity_of_member(&self, user_id: &str) -> Res<Option<String>> {
        self.text("SELECT identity_id FROM users WHERE id = $1", user_id)
            .await
    }

    /// `attempt_counters.failures` of `key`, if the row exists.
    async fn failures(&self, key: &str) -> Res<Option<i64>> {
        Ok(self
            .int("SELECT failures FROM attempt_counters WHERE key = $1", key)
            .await?
            .flatten())
    }
}

/// The inner id of a GraphQL / CLI public id (`base64("User:<id>")`).
fn raw_id(public: &str) -> Res<String> {
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(public)?)?;
    Ok(decoded
        .split_once(':')
        .map(|(_, id)| id.to_owned())
        .ok_or_else(|| format!("not a public id: {public}"))?)
}

/// A GraphQL request as `access`; the whole JSON answer (the status must be 200).
async fn gql(server: &Server, access: &str, query: &str, variables: Value) -> Res<Value> {
    let response = server
        .http
        .post(server.url("/api"))
        .header("authorization", format!("Bearer {access}"))
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status != 200 {
        return Err(format!("GraphQL answered {status}: {body}").into());
    }
    Ok(body)
}

/// `authenticatedUser` of `access`.
async fn me(server: &Server, access: &str) -> Res<Value> {
    let answer = gql(server, access, ME, json!({})).await?;
    let user = answer["data"]["authenticatedUser"].clone();
    if user.is_null() {
        return Err(format!("no authenticatedUser: {answer}").into());
    }
    Ok(user)
}

/// The tenant ids `listUserTenants` lists for `access`, sorted.
async fn tenants(server: &Server, access: &str) -> Res<Vec<String>> {
    let answer = gql(server, access, TENANTS, json!({})).await?;
    let nodes = answer["data"]["listUserTenants"]["nodes"]
        .as_array()
        .ok_or_else(|| format!("no listUserTenants: {answer}"))?;
    let mut ids: Vec<String> = nodes
        .iter()
        .filter_map(|n| n["tenantId"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    Ok(ids)
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    ids.sort();
    ids
}

/// The `errors` of a mutation payload (an empty list when there were none).
fn payload_errors(payload: &Value) -> Vec<Value> {
    payload["errors"].as_array().cloned().unwrap_or_default()
}

/// A mutation payload that was refused: errors, and no `field` (the user, url...).
fn assert_refused(payload: &Value, field: &str, what: &str) {
    assert!(
        !payload_errors(payload).is_empty(),
        "{what} must be refused: {payload}"
    );
    assert!(payload[field].is_null(), "{what}: {payload}");
}

fn assert_accepted(payload: &Value, what: &str) {
    assert_eq!(
        payload["errors"],
        json!([]),
        "{what} must succeed: {payload}"
    );
}

/// The tokens of a sign-in.
struct Tokens {
    access: String,
    refresh: String,
}

impl Tokens {
    fn of(body: &Value) -> Res<Self> {
        Ok(Self {
            access: body["access_token"]
                .as_str()
                .ok_or_else(|| format!("no access_token: {body}"))?
                .to_owned(),
            refresh: body["refresh_token"]
                .as_str()
                .ok_or_else(|| format!("no refresh_token: {body}"))?
                .to_owned(),
        })
    }
}

/// A browser sign-in in progress: its PKCE pair and `/authorize` query.
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

    /// Posts the chooser's form (`action=choose`, and `field=value`) with the page's CSRF
    /// value and, when `with_session`, its browser session cookie.
    async fn choose(
        &self,
        server: &Server,
        chooser: &SignInPage,
        field: &'static str,
        value: &str,
        with_session: bool,
    ) -> Res<SignInPage> {
        let mut form = self.query.clone();
        form.extend([
            ("csrf", chooser.csrf.clone()),
            ("action", "choose".to_owned()),
            (field, value.to_owned()),
        ]);
        let mut cookie = format!("prism_csrf={}", chooser.csrf);
        if with_session {
            let session = chooser
                .cookie("prism_session")
                .ok_or("the chooser set no prism_session cookie")?;
            cookie.push_str(&format!("; prism_session={session}"));
        }
        let response = browser(AGENT)?
            .post(server.url("/authorize"))
            .header("cookie", cookie)
            .form(&form)
            .send()
            .await?;
        Ok(SignInPage {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await?,
            csrf: chooser.csrf.clone(),
        })
    }

    /// Redeems a code of this sign-in (with `tenant_id` when given).
    async fn redeem(
        &self,
        server: &Server,
        code: &str,
        tenant: Option<&str>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", "prism-cli"),
            ("code_verifier", self.pkce.verifier.as_str()),
            ("code", code),
            ("redirect_uri", crate::harness::REDIRECT_URI),
        ];
        if let Some(tenant) = tenant {
            form.push(("tenant_id", tenant));
        }
        server.post_form("/oauth/token", &form).await
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

/// Signs in (an identity with one joined membership: straight to a code) and redeems it.
async fn sign_in_tokens(server: &Server, email: &str, password: &str) -> Res<Tokens> {
    let sign_in = SignIn::new()?;
    let page = sign_in.password(server, email, password).await?;
    let code = code_of(&page).ok_or_else(|| format!("no code for {email}: {}", describe(&page)))?;
    let (status, body) = sign_in.redeem(server, &code, None).await?;
    if status != 200 {
        return Err(format!("code exchange for {email}: {status} {body}").into());
    }
    Tokens::of(&body)
}

/// The chooser's buttons named `name` (`member` or `join`): (value, label) pairs.
fn buttons(body: &str, name: &str) -> Vec<(String, String)> {
    let marker = format!("name=\"{name}\" value=\"");
    body.split(marker.as_str())
        .skip(1)
        .filter_map(|rest| {
            let (value, rest) = rest.split_once('"')?;
            let label = rest.strip_prefix('>')?.split("</button>").next()?;
            Some((value.to_owned(), label.to_owned()))
        })
        .collect()
}

/// `POST /auth/refresh` with `tenant_id`.
async fn refresh_to(server: &Server, refresh: &str, tenant: &str) -> Res<(u16, Value)> {
    Ok(server
        .post_json(
            "/auth/refresh",
            &json!({ "refresh_token": refresh, "tenant_id": tenant }),
        )
        .await?)
}

/// The tenant an access token is for, from `authenticatedUser`.
async fn tenant_of(server: &Server, access: &str) -> Res<String> {
    Ok(me(server, access).await?["tenantId"]
        .as_str()
        .ok_or("no tenantId")?
        .to_owned())
}

/// Creates `email` in the caller's organization through GraphQL; returns the payload.
async fn create_user(server: &Server, access: &str, email: &str, role: &str) -> Res<Value> {
    let answer = gql(
        server,
        access,
        CREATE,
        json!({ "email": email, "name": "Someone", "role": role }),
    )
    .await?;
    Ok(answer["data"]["createOrganizationUser"].clone())
}

async fn mutation(server: &Server, access: &str, query: &str, variables: Value) -> Res<Value> {
    let answer = gql(server, access, query, variables).await?;
    answer["data"]
        .as_object()
        .and_then(|data| data.values().next())
        .cloned()
        .ok_or_else(|| format!("no payload: {answer}").into())
}

// ---------------------------------------------------------------------------------------------
// 1. The takeover loop of issue 16.

#[tokio::test]
async fn takeover_loop_fails_at_every_step_sqlite() -> TestResult {
    takeover_loop(&Deployment::sqlite()?).await
}

#[tokio::test]
async fn takeover_loop_fails_at_every_step_postgres() -> TestResult {
    let db = FreshDatabase::create().await?;
    let outcome = match Deployment::postgres(&db.url) {
        Ok(deployment) => takeover_loop(&deployment).await,
        Err(err) => Err(err),
    };
    db.drop_now().await?;
    outcome
}

/// An Admin of organization B guesses the password of organization A's user by re-creating
/// the victim's email in B over and over: each step is refused, the victim's failures are
/// counted against the victim's identity and audited in A, and the last (right) guess meets
/// the lock.
async fn takeover_loop(deployment: &Deployment) -> TestResult {
    let server = deployment.start()?;
    let (tenant_a, _) = deployment.default_org()?;
    let tenant_b = deployment.add_org("Beta")?;
    let victim_member = deployment.add_user(None, VICTIM, "Integrator", None)?;
    deployment.set_password(None, VICTIM, VICTIM_PASSWORD)?;
    let victim_refresh = deployment.token(None, VICTIM)?;
    deployment.add_user(Some(&tenant_b), MALLORY, "Admin", Some(MALLORY_PASSWORD))?;
    let victim_identity = deployment.identity_id(VICTIM).await?;

    // Mallory signs in for real, in B.
    let mallory = sign_in_tokens(&server, MALLORY, MALLORY_PASSWORD).await?;
    assert_eq!(tenant_of(&server, &mallory.access).await?, tenant_b);
    // Her refresh token cannot be moved into A: she is no member there.
    let (status, body) = refresh_to(&server, &mallory.refresh, &tenant_a).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied")),
        "{body}"
    );

    let guesses = [
        "Password1!",
        "Summer2025!",
        "letmein-letmein",
        "corp-wide-secret",
        "qwertyuiop123",
        "correct horse",
        "hunter2hunter2",
        VICTIM_PASSWORD,
    ];
    let mut planted: Option<String> = None;
    for (n, guess) in guesses.iter().enumerate() {
        // (a) Remove the previous round's B user with the victim's email.
        if let Some(id) = planted.take() {
            let payload = mutation(&server, &mallory.access, DELETE, json!({ "id": id })).await?;
            assert_accepted(
                &payload,
                &format!("round {n}: deleteUser of the planted user"),
            );
        }
        // (b) Add the victim's email to B: a pending membership, and no link to set a password.
        let payload = create_user(&server, &mallory.access, VICTIM, "Integrator").await?;
        assert_accepted(&payload, &format!("round {n}: createOrganizationUser"));
        assert_eq!(payload["user"]["email"], VICTIM, "{payload}");
        assert!(
            payload["invitationUrl"].is_null(),
            "round {n}: an existing identity must get no invitation link: {payload}"
        );
        let planted_id = payload["user"]["id"]
            .as_str()
            .ok_or_else(|| format!("no user id: {payload}"))?
            .to_owned();
        let planted_raw = raw_id(&planted_id)?;
        assert_eq!(
            deployment.joined_at(&planted_raw).await?,
            None,
            "round {n}: the B membership must be pending"
        );
        assert_eq!(
            deployment
                .identity_of_member(&planted_raw)
                .await?
                .as_deref(),
            Some(victim_identity.as_str()),
            "round {n}: the B member is the victim's identity, not a new one"
        );
        // (c) Nor a link on request.
        let payload = mutation(
            &server,
            &mallory.access,
            INVITE,
            json!({ "id": planted_id }),
        )
        .await?;
        assert_refused(&payload, "url", &format!("round {n}: createUserInvitation"));
        planted = Some(planted_id);

        // (d) Sign in as the victim with this guess.
        let page = SignIn::new()?.password(&server, VICTIM, guess).await?;
        assert_ne!(page.status, 303, "round {n}: {}", describe(&page));
        assert!(
            page.headers.get("location").is_none(),
            "round {n}: {}",
            describe(&page)
        );
        if n + 1 < ACCOUNT_MAX_FAILURES {
            assert_eq!(page.status, 200, "round {n}: {}", describe(&page));
            assert!(
                page.body.contains("Wrong email or password."),
                "round {n}: {}",
                describe(&page)
            );
        } else {
            // The fifth failure locks the victim's identity; later guesses, the right one
            // too, get the same 429 without a password check.
            assert_eq!(page.status, 429, "round {n}: {}", describe(&page));
        }
    }

    // Mallory's own list never showed A.
    assert_eq!(
        tenants(&server, &mallory.access).await?,
        [tenant_b.as_str()]
    );

    // The victim's failures were counted on the identity, not on a spelling of the email.
    let key = format!("login:ident:{victim_identity}");
    let failures = deployment.failures(&key).await?;
    assert!(
        failures.is_some_and(|f| f >= ACCOUNT_MAX_FAILURES as i64),
        "attempt_counters[{key}] = {failures:?}"
    );
    // ...and audited in A, about the victim's member there.
    let failed_in_a = deployment.audit(&tenant_a, "login.failed")?;
    let about_victim = failed_in_a
        .iter()
        .filter(|event| event["subjectUserId"] == victim_member.as_str())
        .count();
    assert!(
        about_victim >= ACCOUNT_MAX_FAILURES,
        "{about_victim} login.failed events about the victim in A: {failed_in_a:?}"
    );
    // B's trail gets none: the victim's B membership was never joined.
    let failed_in_b = deployment.audit(&tenant_b, "login.failed")?;
    assert!(failed_in_b.is_empty(), "{failed_in_b:?}");

    // The victim was never disturbed: their token in A works, for A.
    let access = server.access_token(&victim_refresh).await?;
    let user = me(&server, &access).await?;
    assert_eq!(
        (user["email"].as_str(), user["tenantId"].as_str()),
        (Some(VICTIM), Some(tenant_a.as_str()))
    );
    let logs = server.stop()?;
    assert!(!logs.contains(VICTIM_PASSWORD), "a password in the log");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. listUserTenants.

#[tokio::test]
async fn list_user_tenants_shows_only_own_orgs() -> TestResult {
    let deployment = Deployment::sqlite()?;
    let server = deployment.start()?;
    let (tenant_a, _) = deployment.default_org()?;
    let tenant_b = deployment.add_org("Beta")?;
    deployment.add_user(None, VICTIM, "Admin", Some(VICTIM_PASSWORD))?;
    deployment.add_user(Some(&tenant_b), MALLORY, "Admin", Some(MALLORY_PASSWORD))?;

    // A fresh account in B, signed in through the browser: B only.
    let mallory = sign_in_tokens(&server, MALLORY, MALLORY_PASSWORD).await?;
    assert_eq!(
        tenants(&server, &mallory.access).await?,
        [tenant_b.as_str()]
    );

    // Mallory offers the victim's email a membership of B: it stays pending, so neither her
    // list nor the victim's changes.
    let payload = create_user(&server, &mallory.access, VICTIM, "Guest").await?;
    assert_accepted(&payload, "createOrganizationUser of an existing identity");
    assert!(payload["invitationUrl"].is_null(), "{payload}");
    let victim_access = server
        .access_token(&deployment.token(None, VICTIM)?)
        .await?;
    assert_eq!(tenants(&server, &victim_access).await?, [tenant_a.as_str()]);
    assert_eq!(
        tenants(&server, &mallory.access).await?,
        [tenant_b.as_str()]
    );

    // A brand-new person Mallory adds gets a link, sets a password, signs in: B only.
    let payload = create_user(&server, &mallory.access, "fresh@b.example", "Integrator").await?;
    assert_accepted(&payload, "createOrganizationUser of a new identity");
    let link = payload["invitationUrl"]
        .as_str()
        .ok_or_else(|| format!("a new identity gets an invitation link: {payload}"))?
        .to_owned();
    set_password_through(&server, &link, PASSWORD).await?;
    let fresh = sign_in_tokens(&server, "fresh@b.example", PASSWORD).await?;
    assert_eq!(tenants(&server, &fresh.access).await?, [tenant_b.as_str()]);

    // Someone an operator put in both organizations sees both, from either token.
    let output = deployment.run(
        None,
        &[
            "users",
            "add",
            "--email",
            "dual@example.com",
            "--role",
            "Integrator",
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    )?;
    assert!(output.status.success(), "{output:?}");
    let output = deployment.run(
        Some(&tenant_b),
        &[
            "users",
            "add",
            "--email",
            "dual@example.com",
            "--role",
            "Integrator",
        ],
        "",
    )?;
    assert!(output.status.success(), "{output:?}");
    assert!(
        !String::from_utf8_lossy(&output.stderr).trim().is_empty(),
        "joining an existing identity says so on stderr"
    );
    for tenant in [None, Some(tenant_b.as_str())] {
        let access = server
            .access_token(&deployment.token(tenant, "dual@example.com")?)
            .await?;
        assert_eq!(
            tenants(&server, &access).await?,
            sorted(&[&tenant_a, &tenant_b]),
            "from the token of {tenant:?}"
        );
    }
    // An operator cannot give an existing identity a password through `users add`.
    let tenant_c = deployment.add_org("Gamma")?;
    let output = deployment.run(
        Some(&tenant_c),
        &[
            "users",
            "add",
            "--email",
            "dual@example.com",
            "--role",
            "Integrator",
            "--password-stdin",
        ],
        "another password entirely\n",
    )?;
    assert!(
        !output.status.success(),
        "a password for an existing identity must be refused: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let page = SignIn::new()?
        .password(&server, "dual@example.com", "another password entirely")
        .await?;
    assert_eq!(page.status, 200, "{}", describe(&page));
    assert!(page.body.contains("Wrong email or password."));
    server.stop()?;
    Ok(())
}

/// Opens an invitation link and sets `password` through its form.
async fn set_password_through(server: &Server, link: &str, password: &str) -> TestResult {
    let http = browser(AGENT)?;
    let page = http.get(link).send().await?;
    assert_eq!(page.status().as_u16(), 200, "{link}");
    let cookie = page
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .ok_or("no csrf cookie")?
        .to_owned();
    let html = page.text().await?;
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or("no csrf field")?
        .to_owned();
    let token = link.split("token=").nth(1).ok_or("no token")?.to_owned();
    let done = http
        .post(server.url("/invite"))
        .header("cookie", cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("token", token.as_str()),
            ("password", password),
            ("confirm", password),
        ])
        .send()
        .await?;
    assert_eq!(done.status().as_u16(), 200);
    assert!(done.text().await?.contains("Password set"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. The chooser and tenant_id.

#[tokio::test]
async fn two_orgs_chooser_and_tenant_switch() -> TestResult {
    let deployment = Deployment::sqlite()?;
    let server = deployment.start()?;
    let (tenant_a, name_a) = deployment.default_org()?;
    let tenant_b = deployment.add_org("Beta")?;
    let tenant_c = deployment.add_org("Gamma")?;
    const DUAL: &str = "dual@example.com";
    let member_a = deployment.add_user(None, DUAL, "Integrator", Some(PASSWORD))?;
    let member_b = deployment.add_user(Some(&tenant_b), DUAL, "Admin", None)?;
    deployment.add_user(Some(&tenant_c), "gamma@example.com", "Owner", None)?;

    // Two memberships: the sign-in shows the chooser, a button per organization.
    let sign_in = SignIn::new()?;
    let chooser = sign_in.password(&server, DUAL, PASSWORD).await?;
    assert_eq!(chooser.status, 200, "{}", describe(&chooser));
    assert!(code_of(&chooser).is_none());
    assert!(
        chooser.cookie("prism_session").is_some(),
        "no session cookie"
    );
    let mut choices = buttons(&chooser.body, "member");
    choices.sort();
    let mut expected = vec![
        (raw_id(&member_a)?, name_a.clone()),
        (raw_id(&member_b)?, "Beta".to_owned()),
    ];
    expected.sort();
    assert_eq!(choices, expected, "{}", chooser.body);
    assert!(buttons(&chooser.body, "join").is_empty());

    // Controls that must not give a code: no session cookie; a member of someone else.
    let no_session = sign_in
        .choose(&server, &chooser, "member", &raw_id(&member_b)?, false)
        .await?;
    assert!(code_of(&no_session).is_none(), "{}", describe(&no_session));
    let gamma_owner = deployment.admin(Some(&tenant_c), &["users", "list", "--json"])?;
    let gamma_owner: Value = serde_json::from_str(&gamma_owner)?;
    let gamma_owner = raw_id(gamma_owner[0]["id"].as_str().ok_or("no id")?)?;
    let foreign = sign_in
        .choose(&server, &chooser, "member", &gamma_owner, true)
        .await?;
    assert!(code_of(&foreign).is_none(), "{}", describe(&foreign));

    // Choosing B: a code for the member in B.
    let chosen = sign_in
        .choose(&server, &chooser, "member", &raw_id(&member_b)?, true)
        .await?;
    let code = code_of(&chosen).ok_or_else(|| describe(&chosen))?;
    assert_eq!(chosen.location_param("state").as_deref(), Some("s1"));
    let (status, body) = sign_in.redeem(&server, &code, None).await?;
    assert_eq!(status, 200, "{body}");
    let tokens = Tokens::of(&body)?;
    let user = me(&server, &tokens.access).await?;
    assert_eq!(
        (
            user["email"].as_str(),
            user["tenantId"].as_str(),
            user["org"]["name"].as_str()
        ),
        (Some(DUAL), Some(tenant_b.as_str()), Some("Beta"))
    );
    assert_eq!(user["id"], member_b.as_str());

    // The refresh token moves to A with tenant_id.
    let (status, body) = refresh_to(&server, &tokens.refresh, &tenant_a).await?;
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"].as_str().ok_or("no access_token")?;
    let user = me(&server, access).await?;
    assert_eq!(user["tenantId"], tenant_a.as_str());
    assert_eq!(user["id"], member_a.as_str());
    // A tenant the identity has no membership in is refused, and the token keeps working.
    let (status, body) = refresh_to(&server, &tokens.refresh, &tenant_c).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied")),
        "{body}"
    );
    let access = server.access_token(&tokens.refresh).await?;
    assert_eq!(tenant_of(&server, &access).await?, tenant_a);
    // And back to B through /oauth/token.
    let (status, body) = server
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "prism-cli"),
                ("refresh_token", tokens.refresh.as_str()),
                ("tenant_id", tenant_b.as_str()),
            ],
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"].as_str().ok_or("no access_token")?;
    assert_eq!(tenant_of(&server, access).await?, tenant_b);
    for tenant in [&tenant_a, &tenant_b] {
        let moved = deployment.audit(tenant, "session.moved")?;
        assert!(!moved.is_empty(), "no session.moved in {tenant}");
    }

    // tenant_id on the code grant picks the identity's member there; a foreign one is refused.
    for (tenant, expected) in [(&tenant_b, Some(&tenant_b)), (&tenant_c, None)] {
        let sign_in = SignIn::new()?;
        let chooser = sign_in.password(&server, DUAL, PASSWORD).await?;
        assert_eq!(chooser.status, 200, "{}", describe(&chooser));
        let chosen = sign_in
            .choose(&server, &chooser, "member", &raw_id(&member_a)?, true)
            .await?;
        let code = code_of(&chosen).ok_or_else(|| describe(&chosen))?;
        let (status, body) = sign_in.redeem(&server, &code, Some(tenant)).await?;
        match expected {
            Some(expected) => {
                assert_eq!(status, 200, "{body}");
                let access = body["access_token"].as_str().ok_or("no access_token")?;
                assert_eq!(&tenant_of(&server, access).await?, expected);
            }
            None => assert_eq!(
                (status, body["error"].as_str()),
                (403, Some("access_denied")),
                "{body}"
            ),
        }
    }
    server.stop()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Revocation and removal.

#[tokio::test]
async fn revoke_covers_every_org_removal_only_one() -> TestResult {
    let deployment = Deployment::sqlite()?;
    let server = deployment.start()?;
    let (tenant_a, _) = deployment.default_org()?;
    let tenant_b = deployment.add_org("Beta")?;
    deployment.add_user(Some(&tenant_b), "owner-b@example.com", "Owner", None)?;
    let in_both = |email: &str| -> Res<(String, String)> {
        deployment.add_user(None, email, "Integrator", None)?;
        deployment.add_user(Some(&tenant_b), email, "Integrator", None)?;
        Ok((
            deployment.token(None, email)?,
            deployment.token(Some(&tenant_b), email)?,
        ))
    };

    // /auth/revoke with A's token ends the identity's tokens in B as well.
    let (a_refresh, b_refresh) = in_both("both@example.com")?;
    let a_access = server.access_token(&a_refresh).await?;
    let b_access = server.access_token(&b_refresh).await?;
    assert_eq!(tenant_of(&server, &b_access).await?, tenant_b);
    let (status, body) = server.revoke(&a_refresh).await?;
    assert_eq!(status, 200, "{body}");
    for (refresh, access, org) in [(&a_refresh, &a_access, "A"), (&b_refresh, &b_access, "B")] {
        let (status, body) = server.refresh(refresh).await?;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{org}'s refresh token after /auth/revoke: {body}"
        );
        assert_eq!(
            server.whoami(access).await?,
            Err(401),
            "{org}'s access token"
        );
    }
    for tenant in [&tenant_a, &tenant_b] {
        let revoked = deployment.audit(tenant, "tokens.revoked_all")?;
        assert!(!revoked.is_empty(), "no tokens.revoked_all in {tenant}");
    }

    // An operator removing the B member ends only B's tokens.
    let (a_refresh, b_refresh) = in_both("two@example.com")?;
    let a_access = server.access_token(&a_refresh).await?;
    let b_access = server.access_token(&b_refresh).await?;
    deployment.admin(
        Some(&tenant_b),
        &["users", "remove", "--email", "two@example.com"],
    )?;
    let (status, body) = server.refresh_after_change(&b_refresh).await?;
    assert_eq!(status, 400, "B's token after the removal: {body}");
    assert_eq!(server.whoami_after_change(&b_access).await?, Err(401));
    assert_eq!(
        server.whoami(&a_access).await?,
        Ok("two@example.com".into())
    );
    let access = server.access_token(&a_refresh).await?;
    assert_eq!(tenants(&server, &access).await?, [tenant_a.as_str()]);

    // B's Owner removing the B member through the API: the same, at once.
    let (a_refresh, b_refresh) = in_both("three@example.com")?;
    let a_access = server.access_token(&a_refresh).await?;
    let b_access = server.access_token(&b_refresh).await?;
    let owner = server
        .access_token(&deployment.token(Some(&tenant_b), "owner-b@example.com")?)
        .await?;
    let three_in_b = me(&server, &b_access).await?["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    let payload = mutation(&server, &owner, DELETE, json!({ "id": three_in_b })).await?;
    assert_accepted(&payload, "deleteUser by B's Owner");
    let (status, body) = server.refresh(&b_refresh).await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(server.whoami(&b_access).await?, Err(401));
    assert_eq!(
        server.whoami(&a_access).await?,
        Ok("three@example.com".into())
    );
    let (status, body) = server.refresh(&a_refresh).await?;
    assert_eq!(status, 200, "{body}");
    server.stop()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Pending memberships.

#[tokio::test]
async fn pending_membership_needs_verified_email() -> TestResult {
    let deployment = Deployment::sqlite()?;
    let server = deployment.start()?;
    let (tenant_a, name_a) = deployment.default_org()?;
    let tenant_b = deployment.add_org("Beta")?;
    const PERSON: &str = "pending@example.com";
    let member_a = deployment.add_user(None, PERSON, "Integrator", None)?;
    deployment.set_password(None, PERSON, PASSWORD)?;
    deployment.add_user(Some(&tenant_b), MALLORY, "Admin", None)?;
    let mallory = server
        .access_token(&deployment.token(Some(&tenant_b), MALLORY)?)
        .await?;

    let payload = create_user(&server, &mallory, PERSON, "Integrator").await?;
    assert_accepted(&payload, "createOrganizationUser of an existing identity");
    assert!(payload["invitationUrl"].is_null(), "{payload}");
    let pending = raw_id(payload["user"]["id"].as_str().ok_or("no user id")?)?;
    assert_eq!(deployment.joined_at(&pending).await?, None);

    // The chooser offers A, mentions B, and has no join button (the email is not verified).
    let sign_in = SignIn::new()?;
    let chooser = sign_in.password(&server, PERSON, PASSWORD).await?;
    assert_eq!(chooser.status, 200, "{}", describe(&chooser));
    assert!(code_of(&chooser).is_none());
    assert_eq!(
        buttons(&chooser.body, "member"),
        [(raw_id(&member_a)?, name_a)],
        "{}",
        chooser.body
    );
    assert!(chooser.body.contains("Beta"), "{}", chooser.body);
    assert!(!chooser.body.contains("name=\"join\""), "{}", chooser.body);

    // Joining anyway, or choosing the pending member, gives no code.
    let joined = sign_in
        .choose(&server, &chooser, "join", &pending, true)
        .await?;
    assert!(code_of(&joined).is_none(), "{}", describe(&joined));
    assert_eq!(joined.status, 200, "{}", describe(&joined));
    assert!(
        joined.body.contains("class=\"error\""),
        "an error is shown: {}",
        joined.body
    );
    let as_member = sign_in
        .choose(&server, &chooser, "member", &pending, true)
        .await?;
    assert!(code_of(&as_member).is_none(), "{}", describe(&as_member));
    assert_eq!(deployment.joined_at(&pending).await?, None);

    // Nor does tenant_id reach the pending membership: on the code grant or the refresh.
    let chosen = sign_in
        .choose(&server, &chooser, "member", &raw_id(&member_a)?, true)
        .await?;
    let code = code_of(&chosen).ok_or_else(|| describe(&chosen))?;
    let (status, body) = sign_in.redeem(&server, &code, Some(&tenant_b)).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied")),
        "{body}"
    );
    let refresh = deployment.token(None, PERSON)?;
    let (status, body) = refresh_to(&server, &refresh, &tenant_b).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied")),
        "{body}"
    );
    let access = server.access_token(&refresh).await?;
    assert_eq!(tenants(&server, &access).await?, [tenant_a.as_str()]);
    assert_eq!(tenant_of(&server, &access).await?, tenant_a);
    server.stop()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Role rules.

#[tokio::test]
async fn admins_cannot_touch_owners() -> TestResult {
    let deployment = Deployment::sqlite()?;
    let server = deployment.start()?;
    let owner_refresh = deployment.token(None, "owner@localhost")?;
    let owner = server.access_token(&owner_refresh).await?;
    let owner_id = me(&server, &owner).await?["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    let admin_id = deployment.add_user(None, "admin@example.com", "Admin", None)?;
    let admin = server
        .access_token(&deployment.token(None, "admin@example.com")?)
        .await?;
    let int_id = deployment.add_user(None, "int@example.com", "Integrator", None)?;
    let role_of = |id: String| {
        let server = &server;
        let owner = owner.clone();
        async move {
            let list = gql(server, &owner, USERS, json!({})).await?;
            let role = list["data"]["organization"]["users"]["nodes"]
                .as_array()
                .and_then(|users| users.iter().find(|u| u["id"] == id.as_str()))
                .map(|u| u["role"]["name"].as_str().unwrap_or_default().to_owned());
            Ok::<_, Box<dyn std::error::Error>>(role)
        }
    };

    // An Admin removes no Owner; the Owner still works.
    let payload = mutation(&server, &admin, DELETE, json!({ "id": owner_id })).await?;
    assert_refused(&payload, "user", "an Admin removing an Owner");
    assert_eq!(server.whoami(&owner).await?, Ok("owner@localhost".into()));
    assert_eq!(server.refresh(&owner_refresh).await?.0, 200);
    // ...changes no Owner's role...
    let payload = mutation(
        &server,
        &admin,
        SET_ROLE,
        json!({ "id": owner_id, "role": "Guest" }),
    )
    .await?;
    assert_refused(&payload, "user", "an Admin demoting an Owner");
    assert_eq!(role_of(owner_id.clone()).await?.as_deref(), Some("Owner"));
    // ...makes no Owner, by role change or by creation.
    let payload = mutation(
        &server,
        &admin,
        SET_ROLE,
        json!({ "id": int_id, "role": "Owner" }),
    )
    .await?;
    assert_refused(&payload, "user", "an Admin promoting to Owner");
    assert_eq!(
        role_of(int_id.clone()).await?.as_deref(),
        Some("Integrator")
    );
    let payload = mutation(
        &server,
        &admin,
        SET_ROLE,
        json!({ "id": admin_id, "role": "Owner" }),
    )
    .await?;
    assert_refused(&payload, "user", "an Admin promoting themselves");
    let payload = create_user(&server, &admin, "boss@example.com", "Owner").await?;
    assert_refused(&payload, "user", "an Admin creating an Owner");
    // Control: the Admin may change a non-Owner.
    let payload = mutation(
        &server,
        &admin,
        SET_ROLE,
        json!({ "id": int_id, "role": "Guest" }),
    )
    .await?;
    assert_accepted(&payload, "an Admin changing an Integrator");

    // The last Owner stays: not removed, not demoted, even by themselves.
    let payload = mutation(&server, &owner, DELETE, json!({ "id": owner_id })).await?;
    assert_refused(&payload, "user", "the last Owner removing themselves");
    let payload = mutation(
        &server,
        &owner,
        SET_ROLE,
        json!({ "id": owner_id, "role": "Admin" }),
    )
    .await?;
    assert_refused(&payload, "user", "the last Owner stepping down");
    assert_eq!(role_of(owner_id.clone()).await?.as_deref(), Some("Owner"));
    assert_eq!(server.refresh(&owner_refresh).await?.0, 200);

    // A promotion racing a removal: never both. If the Owner's promotion went through, the
    // member was an Owner, whom the Admin must not remove; if the removal went first, there
    // was nobody left to promote.
    let (mut promotions, mut removals) = (0, 0);
    for round in 0..12 {
        let email = format!("racer{round}@example.com");
        let racer = deployment.add_user(None, &email, "Admin", None)?;
        let promote = mutation(
            &server,
            &owner,
            SET_ROLE,
            json!({ "id": racer, "role": "Owner" }),
        );
        let remove = mutation(&server, &admin, DELETE, json!({ "id": racer }));
        let (promoted, removed) = tokio::join!(promote, remove);
        let (promoted, removed) = (promoted?, removed?);
        let promoted_ok = payload_errors(&promoted).is_empty();
        let removed_ok = payload_errors(&removed).is_empty();
        assert!(
            !(promoted_ok && removed_ok),
            "round {round}: an Admin removed a member who was made an Owner: {promoted} / {removed}"
        );
        promotions += usize::from(promoted_ok);
        removals += usize::from(removed_ok);
        let role = role_of(racer.clone()).await?;
        if removed_ok {
            assert_eq!(role, None, "round {round}: removed but still listed");
        } else if promoted_ok {
            assert_eq!(role.as_deref(), Some("Owner"), "round {round}");
        }
    }
    println!("12 races: {promotions} promotions won, {removals} removals won");
    server.stop()?;
    Ok(())
}
