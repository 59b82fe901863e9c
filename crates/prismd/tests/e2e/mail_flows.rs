//! The flows of issue 16 that mail drives, against a real SMTP server (`smtp.rs`): an
//! invitation mailed to a new person sets their password once and confirms the address; a
//! person who signs in already gets a mail about a pending membership and joins it from the
//! chooser; "forgot password" answers the same for known and unknown emails, mails a link that
//! works once and is rate limited; without SMTP there is no reset and links are handed to the
//! inviting Admin only for brand-new people; and a password change checks the current one.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::harness::{
    Options, Pkce, Server, SignInPage, TestResult, admin_ok, authorize_query_for, browser,
    browser_sign_in_with, prismd_with_stdin, set_cookie, temp_dir,
};
use crate::smtp::{ReceivedMail, SmtpSink};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const AGENT: &str = "mail-flows-e2e";
const FROM: &str = "Prism <auth@example.com>";
const OWNER: &str = "owner@example.com";
const OWNER_PASSWORD: &str = "the owner's own password";
const PERSON: &str = "new.person@example.com";
const PASSWORD: &str = "correct horse battery staple";
const OTHER_PASSWORD: &str = "another password entirely";
/// A generous bound for a mail to arrive (not a speed claim).
const DELIVERY: Duration = Duration::from_secs(20);

const ME: &str = "{ authenticatedUser { id email tenantId org { name } } }";
const TENANTS: &str = "{ listUserTenants { nodes { tenantId orgName } } }";
const CREATE: &str = "mutation($email: String!, $name: String, $role: ID!) { createOrganizationUser(input: {email: $email, name: $name, role: $role}) { user { id email } invitationUrl errors { field messages } } }";
const INVITE: &str = "mutation($id: ID!) { createUserInvitation(input: {id: $id}) { url errors { field messages } } }";

// ---------------------------------------------------------------------------------------------
// Servers and operator commands.

/// A server on `dir` (locks that outlast the test), sending mail to `sink` when given.
fn start(dir: &Path, sink: Option<&SmtpSink>) -> Res<Server> {
    let mut args: Vec<String> = ["--limit-lock", "10m", "--limit-max-lock", "10m"]
        .map(str::to_owned)
        .to_vec();
    if let Some(sink) = sink {
        args.extend([
            "--smtp-url".to_owned(),
            format!("smtp://127.0.0.1:{}?tls=none", sink.port),
            "--mail-from".to_owned(),
            FROM.to_owned(),
        ]);
    }
    Server::start_with(
        dir,
        Options {
            args,
            ..Options::default()
        },
    )
}

/// An operator command (in the organization `tenant`, or the default one) that must succeed,
/// with `stdin`; its trimmed stdout.
fn operator(dir: &Path, tenant: Option<&str>, args: &[&str], stdin: &str) -> Res<String> {
    let mut full: Vec<&str> = Vec::new();
    if let Some(tenant) = tenant {
        full.extend(["--tenant-id", tenant]);
    }
    full.extend_from_slice(args);
    let output = prismd_with_stdin(dir, &full, stdin)?;
    if !output.status.success() {
        return Err(format!(
            "prismd {full:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// `users add` (with a password when given); the member's public id.
fn add_user(
    dir: &Path,
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
    operator(dir, tenant, &args, &stdin)
}

/// An Owner made by the operator, whose password is set with `users set-password`.
fn add_owner(dir: &Path, tenant: Option<&str>, email: &str, password: &str) -> TestResult {
    add_user(dir, tenant, email, "Owner", None)?;
    operator(
        dir,
        tenant,
        &["users", "set-password", "--email", email],
        &format!("{password}\n"),
    )?;
    Ok(())
}

/// The default organization's tenant id and name.
fn default_org(dir: &Path) -> Res<(String, String)> {
    let orgs = admin_ok(dir, &["orgs", "list"])?;
    let line = orgs
        .lines()
        .find(|line| line.ends_with("(default)"))
        .ok_or_else(|| format!("no default organization in {orgs:?}"))?;
    let (tenant, rest) = line.split_once("  ").ok_or("an orgs list line")?;
    let name = rest.trim_end_matches("(default)").trim();
    Ok((tenant.to_owned(), name.to_owned()))
}

/// How many audit events of `action` the default organization has.
fn audit_count(dir: &Path, action: &str) -> Res<usize> {
    let lines = admin_ok(dir, &["audit", "--action", action, "--limit", "1000"])?;
    Ok(lines.lines().filter(|l| !l.trim().is_empty()).count())
}

/// `identities.email_verified` of `email`, read from the SQLite file.
async fn email_verified(dir: &Path, email: &str) -> Res<bool> {
    let url = format!("sqlite://{}?mode=ro", dir.join("prismd.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let verified: Option<bool> =
        sqlx::query_scalar("SELECT email_verified FROM identities WHERE email = $1")
            .bind(email)
            .fetch_optional(&mut conn)
            .await?;
    conn.close().await?;
    verified.ok_or_else(|| format!("no identity row for {email}").into())
}

/// The inner id of a public id (`base64("User:<id>")`), as the chooser's buttons carry it.
fn raw_id(public: &str) -> Res<String> {
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(public)?)?;
    Ok(decoded
        .split_once(':')
        .map(|(_, id)| id.to_owned())
        .ok_or_else(|| format!("not a public id: {public}"))?)
}

// ---------------------------------------------------------------------------------------------
// GraphQL.

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

/// The payload of a mutation (the first field of `data`).
async fn mutation(server: &Server, access: &str, query: &str, variables: Value) -> Res<Value> {
    let answer = gql(server, access, query, variables).await?;
    answer["data"]
        .as_object()
        .and_then(|data| data.values().next())
        .cloned()
        .ok_or_else(|| format!("no payload: {answer}").into())
}

/// `createOrganizationUser` of `email` as an Integrator; the payload.
async fn create_user(server: &Server, access: &str, email: &str) -> Res<Value> {
    mutation(
        server,
        access,
        CREATE,
        json!({ "email": email, "name": "Someone", "role": "Integrator" }),
    )
    .await
}

fn assert_accepted(payload: &Value, what: &str) {
    assert_eq!(
        payload["errors"],
        json!([]),
        "{what} must succeed: {payload}"
    );
}

/// A payload that was refused: errors, and no `field`.
fn assert_refused(payload: &Value, field: &str, what: &str) {
    let errors = payload["errors"].as_array().cloned().unwrap_or_default();
    assert!(!errors.is_empty(), "{what} must be refused: {payload}");
    assert!(payload[field].is_null(), "{what}: {payload}");
}

fn user_id(payload: &Value) -> Res<String> {
    Ok(payload["user"]["id"]
        .as_str()
        .ok_or_else(|| format!("no user id: {payload}"))?
        .to_owned())
}

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

// ---------------------------------------------------------------------------------------------
// The browser sign-in.

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

    async fn password(&self, server: &Server, email: &str, password: &str) -> Res<SignInPage> {
        browser_sign_in_with(server, &self.query, email, password, AGENT).await
    }

    /// Posts the chooser's form: `action=choose`, `field=value`, its CSRF value and session.
    async fn choose(
        &self,
        server: &Server,
        chooser: &SignInPage,
        field: &'static str,
        value: &str,
    ) -> Res<SignInPage> {
        let mut form = self.query.clone();
        form.extend([
            ("csrf", chooser.csrf.clone()),
            ("action", "choose".to_owned()),
            (field, value.to_owned()),
        ]);
        let session = chooser
            .cookie("prism_session")
            .ok_or("the chooser set no prism_session cookie")?;
        let response = browser(AGENT)?
            .post(server.url("/authorize"))
            .header(
                "cookie",
                format!("prism_csrf={}; prism_session={session}", chooser.csrf),
            )
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

    /// Redeems a code of this sign-in; the token response (its status must be 200).
    async fn redeem(&self, server: &Server, code: &str) -> Res<Tokens> {
        let form = [
            ("grant_type", "authorization_code"),
            ("client_id", "prism-cli"),
            ("code_verifier", self.pkce.verifier.as_str()),
            ("code", code),
            ("redirect_uri", crate::harness::REDIRECT_URI),
        ];
        let (status, body) = server.post_form("/oauth/token", &form).await?;
        if status != 200 {
            return Err(format!("code exchange: {status} {body}").into());
        }
        Tokens::of(&body)
    }
}

struct Tokens {
    access: String,
    refresh: String,
}

impl Tokens {
    fn of(body: &Value) -> Res<Self> {
        let field = |name: &str| -> Res<String> {
            Ok(body[name]
                .as_str()
                .ok_or_else(|| format!("no {name}: {body}"))?
                .to_owned())
        };
        Ok(Self {
            access: field("access_token")?,
            refresh: field("refresh_token")?,
        })
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

/// Signs in (one joined membership: straight to a code) and redeems the code.
async fn sign_in_tokens(server: &Server, email: &str, password: &str) -> Res<Tokens> {
    let sign_in = SignIn::new()?;
    let page = sign_in.password(server, email, password).await?;
    let code = code_of(&page).ok_or_else(|| format!("no code for {email}: {}", describe(&page)))?;
    sign_in.redeem(server, &code).await
}

/// A sign-in with a password that must not work: the form again, "Wrong email or password."
async fn assert_password_refused(server: &Server, email: &str, password: &str) -> TestResult {
    let page = SignIn::new()?.password(server, email, password).await?;
    assert!(
        page.status == 200 && page.body.contains("Wrong email or password."),
        "{email} / {password:?} must not sign in: {}",
        describe(&page)
    );
    Ok(())
}

/// The chooser's buttons named `name` (`member` or `join`): their values.
fn buttons(body: &str, name: &str) -> Vec<String> {
    let marker = format!("name=\"{name}\" value=\"");
    body.split(marker.as_str())
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(value, _)| value.to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Mail and the pages its links open.

/// The first mail to `to` with `subject`, waiting up to [`DELIVERY`].
fn mail_to(sink: &SmtpSink, to: &str, subject: &str) -> Res<ReceivedMail> {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let messages = sink.messages()?;
        if let Some(found) = messages.iter().find(|m| {
            m.subject == subject && m.envelope_to.iter().any(|r| r.eq_ignore_ascii_case(to))
        }) {
            return Ok(found.clone());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no mail {subject:?} for {to} within {DELIVERY:?}; received: {messages:?}; \
                 server log:\n{}",
                sink.log()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many mails went to `to`.
fn mails_to(sink: &SmtpSink, to: &str) -> Res<usize> {
    Ok(sink
        .messages()?
        .iter()
        .filter(|m| m.envelope_to.iter().any(|r| r.eq_ignore_ascii_case(to)))
        .count())
}

/// The link in a mail's body that starts with `prefix`.
fn link_in(mail: &ReceivedMail, prefix: &str) -> Res<String> {
    mail.body
        .split_whitespace()
        .find(|word| word.starts_with(prefix))
        .map(str::to_owned)
        .ok_or_else(|| format!("no link {prefix}... in the mail: {}", mail.body).into())
}

/// A form page: its status, body, and the CSRF value of `cookie` (cookie and field agree).
struct FormPage {
    status: u16,
    body: String,
    csrf: Option<String>,
}

async fn open_form(url: &str, cookie: &str) -> Res<FormPage> {
    let response = browser(AGENT)?.get(url).send().await?;
    let status = response.status().as_u16();
    let csrf = set_cookie(response.headers(), cookie);
    let body = response.text().await?;
    if let Some(csrf) = &csrf {
        let field = format!("name=\"csrf\" value=\"{csrf}\"");
        assert!(body.contains(&field), "the form's csrf field: {body}");
    }
    Ok(FormPage { status, body, csrf })
}

/// Posts `form` (plus `csrf`) to `path` with the CSRF cookie `cookie`; status and body.
async fn post_form(
    server: &Server,
    path: &str,
    cookie: &str,
    csrf: &str,
    form: &[(&str, &str)],
) -> Res<(u16, String)> {
    let mut fields = vec![("csrf", csrf)];
    fields.extend_from_slice(form);
    let response = browser(AGENT)?
        .post(server.url(path))
        .header("cookie", format!("{cookie}={csrf}"))
        .form(&fields)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// The token of a link (`...?token=...`).
fn token_of(link: &str) -> Res<String> {
    let url = url::Url::parse(link)?;
    crate::harness::query_param(&url, "token").ok_or_else(|| format!("no token in {link}").into())
}

/// Opens a set-password link (`/invite` or `/reset`) and sets `password` through its form;
/// the status and body of the answer to the post, and the CSRF value used.
async fn set_password_through(
    server: &Server,
    link: &str,
    path: &str,
    cookie: &str,
    password: &str,
) -> Res<(u16, String, String)> {
    let page = open_form(link, cookie).await?;
    assert_eq!(page.status, 200, "{link}: {}", page.body);
    let csrf = page
        .csrf
        .ok_or_else(|| format!("no {cookie} cookie: {}", page.body))?;
    let token = token_of(link)?;
    let (status, body) = post_form(
        server,
        path,
        cookie,
        &csrf,
        &[
            ("token", token.as_str()),
            ("password", password),
            ("confirm", password),
        ],
    )
    .await?;
    Ok((status, body, csrf))
}

/// `createOrganizationUser` of a new `email` as `access` on a server with SMTP: no link in the
/// payload, the invitation mail arrives; its link and the new member's public id.
async fn invite_by_mail(
    server: &Server,
    sink: &SmtpSink,
    access: &str,
    email: &str,
    org_name: &str,
) -> Res<(String, String)> {
    let payload = create_user(server, access, email).await?;
    assert_accepted(&payload, "createOrganizationUser of a new email");
    assert!(
        payload["invitationUrl"].is_null(),
        "with SMTP the link goes only to the mailbox: {payload}"
    );
    let mail = mail_to(sink, email, &format!("You are invited to {org_name}"))?;
    assert_eq!(mail.from, FROM);
    let link = link_in(&mail, &format!("{}/invite?token=", server.base))?;
    Ok((link, user_id(&payload)?))
}

// ---------------------------------------------------------------------------------------------
// 1. The invitation mail.

#[tokio::test]
async fn invitation_mail_sets_the_password_once_and_verifies() -> TestResult {
    let sink = SmtpSink::start()?;
    let dir = temp_dir()?;
    let data = dir.path();
    let server = start(data, Some(&sink))?;
    let (_, org_name) = default_org(data)?;
    add_owner(data, None, OWNER, OWNER_PASSWORD)?;
    let owner = sign_in_tokens(&server, OWNER, OWNER_PASSWORD).await?;

    let (link, member) = invite_by_mail(&server, &sink, &owner.access, PERSON, &org_name).await?;
    assert_eq!(mails_to(&sink, PERSON)?, 1);
    assert!(!email_verified(data, PERSON).await?);

    // The link opens the set-password page for that address, and sets the password.
    let page = open_form(&link, "prism_invite_csrf").await?;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(&format!("for {PERSON}")),
        "{}",
        page.body
    );
    let (status, body, csrf) =
        set_password_through(&server, &link, "/invite", "prism_invite_csrf", PASSWORD).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Password set"), "{body}");
    assert!(
        email_verified(data, PERSON).await?,
        "a password set through a mailed invitation confirms the address"
    );
    let tokens = sign_in_tokens(&server, PERSON, PASSWORD).await?;
    assert_eq!(me(&server, &tokens.access).await?["email"], PERSON);

    // A second use: the page and the form refuse it, and the password stays.
    let again = open_form(&link, "prism_invite_csrf").await?;
    assert_eq!(again.status, 404, "{}", again.body);
    assert!(
        again.body.contains("already used or has expired"),
        "{}",
        again.body
    );
    let token = token_of(&link)?;
    let (status, body) = post_form(
        &server,
        "/invite",
        "prism_invite_csrf",
        &csrf,
        &[
            ("token", token.as_str()),
            ("password", OTHER_PASSWORD),
            ("confirm", OTHER_PASSWORD),
        ],
    )
    .await?;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("already used or has expired"), "{body}");
    assert_password_refused(&server, PERSON, OTHER_PASSWORD).await?;
    sign_in_tokens(&server, PERSON, PASSWORD).await?;

    // A new invitation for someone whose sign-in has a password is refused; nothing is sent.
    let payload = mutation(&server, &owner.access, INVITE, json!({ "id": member })).await?;
    assert_refused(
        &payload,
        "url",
        "createUserInvitation for a person with a password",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mails_to(&sink, PERSON)?, 1, "{:?}", sink.messages()?);
    server.stop()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. A pending membership, offered by mail, joined from the chooser.

#[tokio::test]
async fn verified_person_joins_another_org() -> TestResult {
    let sink = SmtpSink::start()?;
    let dir = temp_dir()?;
    let data = dir.path();
    let server = start(data, Some(&sink))?;
    let (tenant_a, name_a) = default_org(data)?;
    add_owner(data, None, OWNER, OWNER_PASSWORD)?;
    let owner_a = sign_in_tokens(&server, OWNER, OWNER_PASSWORD).await?;
    let (link, member_a) = invite_by_mail(&server, &sink, &owner_a.access, PERSON, &name_a).await?;
    let (status, body, _) =
        set_password_through(&server, &link, "/invite", "prism_invite_csrf", PASSWORD).await?;
    assert_eq!(status, 200, "{body}");
    assert!(email_verified(data, PERSON).await?);

    // Organization B's Owner adds the same email: a pending membership, announced by mail.
    let tenant_b = admin_ok(data, &["orgs", "add", "--name", "Beta"])?;
    add_owner(data, Some(&tenant_b), "owner-b@example.com", OWNER_PASSWORD)?;
    let owner_b = sign_in_tokens(&server, "owner-b@example.com", OWNER_PASSWORD).await?;
    assert_eq!(me(&server, &owner_b.access).await?["tenantId"], tenant_b);
    let payload = create_user(&server, &owner_b.access, PERSON).await?;
    assert_accepted(&payload, "createOrganizationUser of an email that signs in");
    assert!(payload["invitationUrl"].is_null(), "{payload}");
    let pending = raw_id(&user_id(&payload)?)?;
    let offer = mail_to(&sink, PERSON, "Beta invited you to join")?;
    assert!(
        !offer.body.contains("token="),
        "the offer carries no link that sets anything: {}",
        offer.body
    );

    // The person signs in: the chooser offers A, and a join button for B.
    let sign_in = SignIn::new()?;
    let chooser = sign_in.password(&server, PERSON, PASSWORD).await?;
    assert_eq!(chooser.status, 200, "{}", describe(&chooser));
    assert!(code_of(&chooser).is_none(), "{}", describe(&chooser));
    assert_eq!(
        buttons(&chooser.body, "member"),
        [raw_id(&member_a)?],
        "{}",
        chooser.body
    );
    assert_eq!(
        buttons(&chooser.body, "join"),
        std::slice::from_ref(&pending),
        "{}",
        chooser.body
    );

    // Joining gives a code for B.
    let joined = sign_in.choose(&server, &chooser, "join", &pending).await?;
    let code = code_of(&joined).ok_or_else(|| describe(&joined))?;
    let tokens = sign_in.redeem(&server, &code).await?;
    let user = me(&server, &tokens.access).await?;
    assert_eq!(
        (
            user["email"].as_str(),
            user["tenantId"].as_str(),
            user["org"]["name"].as_str()
        ),
        (Some(PERSON), Some(tenant_b.as_str()), Some("Beta")),
        "{user}"
    );
    assert_eq!(raw_id(user["id"].as_str().ok_or("no id")?)?, pending);
    let mut both = vec![tenant_a.clone(), tenant_b.clone()];
    both.sort();
    assert_eq!(tenants(&server, &tokens.access).await?, both);

    // The refresh token moves to A as well.
    let (status, body) = server
        .post_json(
            "/auth/refresh",
            &json!({ "refresh_token": tokens.refresh, "tenant_id": tenant_a }),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"].as_str().ok_or("no access_token")?;
    assert_eq!(me(&server, access).await?["tenantId"], tenant_a);
    server.stop()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Forgot password.

#[tokio::test]
async fn reset_mail_works_once_without_enumeration() -> TestResult {
    let sink = SmtpSink::start()?;
    let dir = temp_dir()?;
    let data = dir.path();
    let server = start(data, Some(&sink))?;
    add_user(data, None, PERSON, "Integrator", Some(PASSWORD))?;
    const UNKNOWN: &str = "nobody@example.com";

    let form = open_form(&server.url("/forgot"), "prism_forgot_csrf").await?;
    assert_eq!(form.status, 200, "{}", form.body);
    let csrf = form.csrf.ok_or("no prism_forgot_csrf cookie")?;
    let forgot = |email: &'static str| {
        let csrf = csrf.clone();
        let server = &server;
        async move {
            post_form(
                server,
                "/forgot",
                "prism_forgot_csrf",
                &csrf,
                &[("email", email)],
            )
            .await
        }
    };

    // Known and unknown emails get the same answer; only the known one a mail.
    let unknown = forgot(UNKNOWN).await?;
    let known = forgot(PERSON).await?;
    assert_eq!(unknown.0, 200, "{}", unknown.1);
    assert!(unknown.1.contains("Check your mail"), "{}", unknown.1);
    assert_eq!(known, unknown, "the answers tell known from unknown");
    let mail = mail_to(&sink, PERSON, "Set a new password")?;
    assert_eq!(mail.from, FROM);
    let link = link_in(&mail, &format!("{}/reset?token=", server.base))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mails_to(&sink, UNKNOWN)?, 0, "{:?}", sink.messages()?);

    // The link sets a new password: the old one stops working, the new one signs in.
    let page = open_form(&link, "prism_reset_csrf").await?;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(&format!("for {PERSON}")),
        "{}",
        page.body
    );
    let (status, body, csrf_reset) =
        set_password_through(&server, &link, "/reset", "prism_reset_csrf", OTHER_PASSWORD).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Password set"), "{body}");
    assert!(email_verified(data, PERSON).await?);
    assert_password_refused(&server, PERSON, PASSWORD).await?;
    sign_in_tokens(&server, PERSON, OTHER_PASSWORD).await?;

    // A second use is refused, and changes nothing.
    let again = open_form(&link, "prism_reset_csrf").await?;
    assert_eq!(again.status, 404, "{}", again.body);
    assert!(
        again.body.contains("already used or has expired"),
        "{}",
        again.body
    );
    let token = token_of(&link)?;
    let (status, body) = post_form(
        &server,
        "/reset",
        "prism_reset_csrf",
        &csrf_reset,
        &[
            ("token", token.as_str()),
            ("password", PASSWORD),
            ("confirm", PASSWORD),
        ],
    )
    .await?;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("already used or has expired"), "{body}");
    sign_in_tokens(&server, PERSON, OTHER_PASSWORD).await?;

    // Three requests per email in the window: the 2nd and 3rd are answered, the 4th is 429.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, body) = forgot(PERSON).await?;
        assert!(
            status == 200 || status == 429,
            "unexpected answer {status}: {body}"
        );
        if status == 429 {
            assert!(body.contains("Too many password-reset requests"), "{body}");
        }
        statuses.push(status);
    }
    // Every request answered 200 sends its mail (in the background): three in all.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut mails = reset_mails(&sink)?;
    while mails < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        mails = reset_mails(&sink)?;
    }
    assert_eq!(
        (statuses, mails),
        (vec![200, 200, 429], 3),
        "(answers to requests 2, 3 and 4 for one email in the window, reset mails sent)"
    );
    server.stop()?;
    Ok(())
}

/// How many "Set a new password" mails went to [`PERSON`].
fn reset_mails(sink: &SmtpSink) -> Res<usize> {
    Ok(sink
        .messages()?
        .iter()
        .filter(|m| m.subject == "Set a new password")
        .filter(|m| m.envelope_to.iter().any(|r| r.eq_ignore_ascii_case(PERSON)))
        .count())
}

// ---------------------------------------------------------------------------------------------
// 4. Without SMTP.

#[tokio::test]
async fn without_smtp_no_reset_and_links_are_handed_only_for_new_people() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = start(data, None)?;
    add_owner(data, None, OWNER, OWNER_PASSWORD)?;
    let owner = sign_in_tokens(&server, OWNER, OWNER_PASSWORD).await?;

    // No reset by mail: the page says to ask an operator; so does a post.
    let page = open_form(&server.url("/forgot"), "prism_forgot_csrf").await?;
    assert_eq!(page.status, 404, "{}", page.body);
    assert!(page.body.contains("operator"), "{}", page.body);
    assert!(page.csrf.is_none());
    let (status, body) = post_form(
        &server,
        "/forgot",
        "prism_forgot_csrf",
        "anything",
        &[("email", OWNER)],
    )
    .await?;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("operator"), "{body}");

    // A brand-new person: the link is handed to the Owner, and works.
    let payload = create_user(&server, &owner.access, PERSON).await?;
    assert_accepted(&payload, "createOrganizationUser of a new email");
    let link = payload["invitationUrl"]
        .as_str()
        .ok_or_else(|| format!("without SMTP a new person's link is handed back: {payload}"))?
        .to_owned();
    assert!(
        link.starts_with(&format!("{}/invite?token=", server.base)),
        "{link}"
    );
    let (status, body, _) =
        set_password_through(&server, &link, "/invite", "prism_invite_csrf", PASSWORD).await?;
    assert_eq!(status, 200, "{body}");
    sign_in_tokens(&server, PERSON, PASSWORD).await?;

    // People whose sign-in exists already (made by the operator in another organization,
    // with a password or without one): a pending membership, no link, and no link on asking.
    let tenant_b = admin_ok(data, &["orgs", "add", "--name", "Beta"])?;
    add_user(
        data,
        Some(&tenant_b),
        "elsewhere@example.com",
        "Integrator",
        Some(PASSWORD),
    )?;
    add_user(
        data,
        Some(&tenant_b),
        "no-password@example.com",
        "Integrator",
        None,
    )?;
    for email in ["elsewhere@example.com", "no-password@example.com"] {
        let payload = create_user(&server, &owner.access, email).await?;
        assert_accepted(&payload, email);
        assert!(
            payload["invitationUrl"].is_null(),
            "{email}: no link for someone who exists already: {payload}"
        );
        let member = user_id(&payload)?;
        let payload = mutation(&server, &owner.access, INVITE, json!({ "id": member })).await?;
        assert_refused(
            &payload,
            "url",
            &format!("createUserInvitation for {email}"),
        );
    }
    assert_password_refused(&server, "no-password@example.com", PASSWORD).await?;
    server.stop()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Changing the password.

#[tokio::test]
async fn change_password_checks_the_current_one() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = start(data, None)?;
    add_user(data, None, PERSON, "Integrator", Some(PASSWORD))?;
    let page = open_form(&server.url("/account/password"), "prism_change_csrf").await?;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page.csrf.ok_or("no prism_change_csrf cookie")?;
    let change = |current: &'static str, new: &'static str, confirm: &'static str| {
        let csrf = csrf.clone();
        let server = &server;
        async move {
            post_form(
                server,
                "/account/password",
                "prism_change_csrf",
                &csrf,
                &[
                    ("email", PERSON),
                    ("current", current),
                    ("password", new),
                    ("confirm", confirm),
                ],
            )
            .await
        }
    };

    // A wrong current password: refused, counted and audited like a failed sign-in.
    let failed_before = audit_count(data, "login.failed")?;
    let (status, body) = change("not the password", OTHER_PASSWORD, OTHER_PASSWORD).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Wrong email or password."), "{body}");
    assert!(!body.contains("Password changed"), "{body}");
    assert_eq!(audit_count(data, "login.failed")?, failed_before + 1);
    // Two different new passwords: refused before anything is checked.
    let (status, body) = change(PASSWORD, OTHER_PASSWORD, "something else").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("The two new passwords differ."), "{body}");
    sign_in_tokens(&server, PERSON, PASSWORD).await?;

    // The right one: the new password works, the old one does not.
    let (status, body) = change(PASSWORD, OTHER_PASSWORD, OTHER_PASSWORD).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Password changed"), "{body}");
    sign_in_tokens(&server, PERSON, OTHER_PASSWORD).await?;
    assert_password_refused(&server, PERSON, PASSWORD).await?;
    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn a_password_change_can_sign_out_everywhere() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = start(data, None)?;
    add_user(data, None, PERSON, "Integrator", Some(PASSWORD))?;
    // The same person in a second organization, with a token there too.
    let tenant_b = admin_ok(data, &["orgs", "add", "--name", "B"])?;
    admin_ok(
        data,
        &[
            "--tenant-id",
            &tenant_b,
            "users",
            "add",
            "--email",
            PERSON,
            "--role",
            "Guest",
        ],
    )?;
    let in_a = admin_ok(data, &["tokens", "create", "--email", PERSON])?;
    let in_b = admin_ok(
        data,
        &[
            "--tenant-id",
            &tenant_b,
            "tokens",
            "create",
            "--email",
            PERSON,
        ],
    )?;
    let others = admin_ok(data, &["tokens", "create", "--email", "owner@localhost"])?;
    let change = |new: &'static str, everywhere: bool| {
        let server = &server;
        async move {
            let page = open_form(&server.url("/account/password"), "prism_change_csrf").await?;
            assert!(page.body.contains("name=\"everywhere\""), "{}", page.body);
            let csrf = page.csrf.ok_or("no prism_change_csrf cookie")?;
            let current = if new == OTHER_PASSWORD {
                PASSWORD
            } else {
                OTHER_PASSWORD
            };
            let mut form = vec![
                ("email", PERSON),
                ("current", current),
                ("password", new),
                ("confirm", new),
            ];
            if everywhere {
                form.push(("everywhere", "yes"));
            }
            post_form(
                server,
                "/account/password",
                "prism_change_csrf",
                &csrf,
                &form,
            )
            .await
        }
    };

    // A plain change keeps the tokens.
    let (status, body) = change(OTHER_PASSWORD, false).await?;
    assert!(status == 200 && body.contains("Password changed"), "{body}");
    assert_eq!(server.refresh(&in_a).await?.0, 200);
    assert_eq!(server.refresh(&in_b).await?.0, 200);

    // With the box: every token of the person, in both organizations, stops; nobody else's.
    let (status, body) = change("yet another long passphrase", true).await?;
    assert!(
        status == 200 && body.contains("signed out everywhere"),
        "{body}"
    );
    for token in [&in_a, &in_b] {
        let (status, answer) = server.refresh(token).await?;
        assert_eq!(status, 400, "{answer}");
    }
    assert_eq!(server.refresh(&others).await?.0, 200);
    assert_eq!(
        audit_count(data, "tokens.revoked_all")?,
        2,
        "one per organization"
    );
    server.stop()?;
    Ok(())
}
