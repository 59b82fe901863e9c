//! What each command does: the GraphQL documents the official client sends, and the lines it
//! prints.

use std::io::{BufRead, Write};

use serde_json::{Value, json};

use prism_proto::wire::TokenResponse;

use crate::config::{self, Config};
use crate::env;
use crate::error::{Error, Result};
use crate::keyless;
use crate::login;
use crate::session::{self, Ctx, Meta, Session};
use crate::table::{self, Column, TableFlags};
use crate::tenants::{self, Selection};
use crate::{TokenType, fail};

pub const AM_I_LOGGED_IN: &str = "query { authenticatedUser { id } }";
pub const WHOAMI: &str = "query whoami { authenticatedUser { name email tenantId org { id name } customer { id name } } }";
pub const LIST_USER_TENANTS: &str = "query ListUserTenants { listUserTenants { nodes { tenantId url orgName awsRegion systemSuspended } } }";
pub const LIST_USERS: &str = "query listUsers($after: String) { organization { users(after: $after) { nodes { id name email externalId phone role { name } } pageInfo { hasNextPage endCursor } } } }";
pub const LIST_ROLES: &str =
    "query listOrganizationRoles { organizationRoles { id name description } }";
pub const CREATE_USER: &str = "mutation createOrganizationUser($name: String, $email: String!, $role: ID!) { createOrganizationUser(input: { name: $name, email: $email, role: $role }) { user { id } invitationUrl errors { field messages } } }";
pub const DELETE_USER: &str = "mutation deleteUser($id: ID!) { deleteUser(input: { id: $id }) { user { id } errors { field messages } } }";
pub const UPDATE_USER: &str = "mutation updateUser($user: ID!, $name: String, $phone: String, $darkMode: Boolean, $darkModeOsSync: Boolean) { updateUser(input: { id: $user, name: $name, phone: $phone, darkMode: $darkMode, darkModeSyncWithOs: $darkModeOsSync }) { user { id } errors { field messages } } }";
/// prism-auth additions (the official client has no such commands): sessions of the caller.
pub const LIST_SESSIONS: &str = "query listSessions { authenticatedUser { sessions { id name clientId createdAt lastUsedAt lastUsedAddress expiresAt scopes current } } }";
pub const REVOKE_SESSION: &str = "mutation revokeSession($id: ID!) { revokeSession(input: { id: $id }) { session { id name current } errors { field messages } } }";
pub const CREATE_TOKEN: &str = "mutation createToken($name: String!, $scopes: [String!], $expiresAt: String, $serviceAccountId: ID) { createToken(input: { name: $name, scopes: $scopes, expiresAt: $expiresAt, serviceAccountId: $serviceAccountId }) { token errors { field messages } } }";
pub const LIST_SERVICE_ACCOUNTS: &str =
    "query listServiceAccounts { serviceAccounts { id name description role { name } createdAt } }";
pub const CREATE_SERVICE_ACCOUNT: &str = "mutation createServiceAccount($name: String!, $role: ID!, $description: String) { createServiceAccount(input: { name: $name, role: $role, description: $description }) { serviceAccount { id } errors { field messages } } }";
pub const DELETE_SERVICE_ACCOUNT: &str = "mutation deleteServiceAccount($id: ID!) { deleteServiceAccount(input: { id: $id }) { serviceAccount { id name } errors { field messages } } }";

/// A JSON value as a table cell: strings as is, null as empty.
pub(crate) fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A list of strings as one cell, space-separated (as OAuth writes scopes); null as empty.
pub(crate) fn words(value: &Value) -> String {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(cell)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fails with the payload's `errors` as `field: message` lines.
/// [`payload_errors`] of a mutation on one record by id, saying where to see the records
/// (`what`, listed by `prism <list_command>`) when the id is what was wrong; the list would
/// not help with anything else, e.g. a token's missing scope.
pub(crate) fn payload_errors_pointing_to(
    payload: &Value,
    what: &str,
    list_command: &str,
) -> Result<()> {
    let about_the_id = payload["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|error| error["field"] == "id");
    payload_errors(payload).map_err(|e| {
        if about_the_id {
            Error::new(format!("{e}\nSee {what} with 'prism {list_command}'."))
        } else {
            e
        }
    })
}

pub(crate) fn payload_errors(payload: &Value) -> Result<()> {
    let Some(errors) = payload["errors"].as_array().filter(|e| !e.is_empty()) else {
        return Ok(());
    };
    let mut lines = Vec::new();
    for error in errors {
        let field = error["field"].as_str().unwrap_or("__all__");
        for message in error["messages"].as_array().into_iter().flatten() {
            let message = message.as_str().unwrap_or_default();
            lines.push(if field == "__all__" {
                message.to_owned()
            } else {
                format!("{field}: {message}")
            });
        }
    }
    Err(Error::new(lines.join("\n")))
}

pub fn login(ctx: &Ctx, force: bool, print_url: bool, device: bool) -> Result<()> {
    let path = config::path()?;
    let mut config = config::load(&path)?.unwrap_or_default();
    let name = config.selected_name(ctx.profile.as_deref());
    let url = session::env_url();
    // A prism-auth addition: PRISMATIC_TENANT_ID chooses the organization without a prompt.
    let wanted = env::var(env::PRISMATIC_TENANT_ID);
    if !force && let Some(existing) = config.profiles.get(&name) {
        let same_url = existing
            .prismatic_url
            .as_deref()
            .is_none_or(|u| session::normalize_url(u) == url);
        let same_tenant = wanted
            .as_deref()
            .is_none_or(|w| existing.tenant_id.as_deref() == Some(w));
        if same_url && same_tenant {
            let mut existing = Session::from_profile(name.clone(), path.clone(), config.clone())?;
            if existing.graphql(ctx, AM_I_LOGGED_IN, json!({})).is_ok() {
                ctx.say(&format!("Already logged in to '{name}'."));
                return Ok(());
            }
            // The stored session is dead; reload in case the check refreshed it.
            config = config::load(&path)?.unwrap_or_default();
        }
    }
    let meta = Meta::fetch(&ctx.http, &url)?;
    let mut tokens = if device {
        login::device(ctx, &meta)?
    } else {
        login::browser(ctx, &meta, print_url)?
    };
    if tokens.refresh_token.as_deref().is_none_or(str::is_empty) {
        fail!(
            "The server issued no refresh token (scope offline_access was refused); cannot save a session."
        );
    }
    let tenant_id = choose_tenant(ctx, &url, &meta, &name, &mut tokens, wanted.as_deref())?;
    config
        .profiles
        .insert(name.clone(), session::profile_from(tokens, &url, tenant_id));
    if config.default_profile.is_none() {
        config.default_profile = Some(name.clone());
    }
    config::save(&path, &config)?;
    ctx.say(&format!("Logged in to '{name}'."));
    Ok(())
}

/// After the code exchange, as the official client does: `ListUserTenants` and `whoami`; with
/// more than one active tenant, a prompt (see [`tenants`]) and a refresh with the chosen
/// `tenant_id`. `wanted` (PRISMATIC_TENANT_ID) skips the list and the prompt. Returns the
/// profile's `tenantId`; `tokens` become those of the chosen tenant.
fn choose_tenant(
    ctx: &Ctx,
    url: &str,
    meta: &Meta,
    profile: &str,
    tokens: &mut TokenResponse,
    wanted: Option<&str>,
) -> Result<Option<String>> {
    let chosen = match wanted {
        Some(wanted) => wanted.to_owned(),
        None => {
            let mut fresh = Session::transient(url, tokens, meta.clone(), None);
            let list = tenants::from_data(&fresh.graphql(ctx, LIST_USER_TENANTS, json!({}))?);
            let whoami = fresh.graphql(ctx, WHOAMI, json!({}))?;
            let current = whoami["authenticatedUser"]["tenantId"].as_str();
            match tenants::select(&list, current) {
                Selection::Keep => return Ok(current.map(str::to_owned)),
                Selection::NoneActive => fail!(
                    "Your organization (tenant '{}') is suspended and you belong to no other active one; nothing was saved. Ask the server's operator.",
                    current.unwrap_or_default()
                ),
                Selection::Only(tenant) => {
                    if !ctx.quiet {
                        eprintln!(
                            "Tenant '{}' is suspended; using {} [{}].",
                            current.unwrap_or_default(),
                            tenant.org_name,
                            tenant.tenant_id
                        );
                    }
                    tenant.tenant_id.clone()
                }
                Selection::Choose(choices) => tenants::prompt(&choices, current, profile)?,
            }
        }
    };
    let hint = if wanted.is_some() {
        "PRISMATIC_TENANT_ID must be the tenant ID of one of your organizations (unset it to choose from a list)"
    } else {
        "run 'prism login' again"
    };
    let refresh = tokens.refresh_token.clone().unwrap_or_default();
    let switched = match meta.refresh(&ctx.http, &refresh, Some(&chosen)) {
        Ok(Ok(switched)) => switched,
        Ok(Err(body)) => fail!(
            "Could not switch to tenant '{chosen}' ({}: {}); nothing was saved. {hint}.",
            body.error,
            body.error_description
        ),
        Err(e) => fail!("{e}\nNothing was saved; {hint}."),
    };
    // The refresh token stays the same unless the server rotated it.
    let refresh_token = switched
        .refresh_token
        .clone()
        .filter(|r| !r.is_empty())
        .or_else(|| tokens.refresh_token.take());
    *tokens = TokenResponse {
        refresh_token,
        ..switched
    };
    let mut fresh = Session::transient(url, tokens, meta.clone(), Some(&chosen));
    let whoami = fresh.graphql(ctx, WHOAMI, json!({}))?;
    let reported = whoami["authenticatedUser"]["tenantId"].as_str();
    if reported != Some(chosen.as_str()) {
        fail!(
            "The server was asked for tenant '{chosen}' but its session is in tenant '{}'; nothing was saved.",
            reported.unwrap_or_default()
        );
    }
    Ok(Some(chosen))
}

pub fn logout(ctx: &Ctx, browser: bool) -> Result<()> {
    let path = config::path()?;
    let mut config = config::load(&path)?.unwrap_or_default();
    let name = config.selected_name(ctx.profile.as_deref());
    let Some(profile) = config.profiles.remove(&name) else {
        fail!("Not logged in to '{name}': there is no such profile (see 'prism profiles:list').");
    };
    if config.default_profile.as_deref() == Some(name.as_str()) {
        config.default_profile = None;
    }
    if browser {
        let url = session::normalize_url(
            profile
                .prismatic_url
                .as_deref()
                .unwrap_or(crate::env::DEFAULT_URL),
        );
        let meta = Meta::fetch(&ctx.http, &url)?;
        let logout_url = format!(
            "{}?client_id={}&returnTo={}",
            meta.auth_url("/logout"),
            login::encode(&meta.client_id),
            login::encode("https://prismatic.io")
        );
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        let opened = std::process::Command::new(opener)
            .arg(&logout_url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .is_ok();
        if !opened {
            eprintln!("Open this URL to end the browser session:\n{logout_url}");
        }
    }
    config::save(&path, &config)?;
    ctx.say(&format!("Logged out of '{name}'."));
    Ok(())
}

pub fn me(ctx: &Ctx) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let data = session.graphql(ctx, WHOAMI, json!({}))?;
    let user = &data["authenticatedUser"];
    let mut lines = vec![
        format!("Name: {}", cell(&user["name"])),
        format!("Email: {}", cell(&user["email"])),
    ];
    if user["org"].is_object() {
        lines.push(format!("Organization: {}", cell(&user["org"]["name"])));
        lines.push(format!("Organization ID: {}", cell(&user["org"]["id"])));
    } else if user["customer"].is_object() {
        lines.push(format!("Customer: {}", cell(&user["customer"]["name"])));
        lines.push(format!("Customer ID: {}", cell(&user["customer"]["id"])));
    }
    lines.push(format!("Tenant ID: {}", cell(&user["tenantId"])));
    lines.push(format!("Endpoint URL: {}", session.url));
    match session.profile_name() {
        Some(name) => {
            lines.push("Authentication: Profile".to_owned());
            lines.push(format!("Profile: {name}"));
        }
        None => lines.push("Authentication: Environment".to_owned()),
    }
    println!("{}", lines.join("\n"));
    Ok(())
}

/// Prints only the token. With an OIDC token (keyless CI) it is exchanged for an access token
/// and no stored login is read or needed.
pub fn me_token(ctx: &Ctx, kind: TokenType, oidc: &keyless::OidcFlags) -> Result<()> {
    if let Some(subject) = keyless::subject(oidc)? {
        if kind == TokenType::Refresh {
            fail!(
                "An OIDC token exchange issues an access token only, no refresh token: drop --type refresh."
            );
        }
        let token = keyless::exchange(ctx, subject, oidc)?;
        println!("{token}");
        return Ok(());
    }
    let mut session = match Session::resolve(ctx) {
        Ok(session) => session,
        // A job that may ask GitHub for an OIDC token but has no credentials most likely
        // meant the exchange; only the audience is missing.
        Err(e) if kind == TokenType::Access && keyless::in_github_actions() => {
            return Err(keyless::github_actions_hint(e));
        }
        Err(e) => return Err(e),
    };
    let token = match kind {
        TokenType::Access => session.access_token(ctx)?,
        TokenType::Refresh => session.refresh.clone().ok_or_else(|| {
            Error::new(
                "There is no refresh token (only PRISM_ACCESS_TOKEN is set): set PRISM_REFRESH_TOKEN or run 'prism login'.",
            )
        })?,
    };
    println!("{token}");
    Ok(())
}

fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} (yes/no) ");
    std::io::stderr()
        .flush()
        .map_err(|e| Error::new(format!("cannot write to stderr: {e}")))?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::new(format!("cannot read the answer: {e}")))?;
    let answer = answer.trim().to_ascii_lowercase();
    Ok(answer == "yes" || answer == "y")
}

pub fn me_token_revoke(ctx: &Ctx, no_confirm: bool) -> Result<()> {
    let mut session = Session::resolve(ctx)
        .map_err(|e| Error::new(format!("You are not currently logged in. {e}")))?;
    session
        .graphql(ctx, AM_I_LOGGED_IN, json!({}))
        .map_err(|e| Error::new(format!("You are not currently logged in. {e}")))?;
    if !no_confirm
        && !confirm("This will revoke all refresh tokens for the current user. Continue?")?
    {
        fail!("Nothing was revoked.");
    }
    session.revoke_all(ctx)?;
    session.delete_profile()?;
    ctx.say("All refresh tokens for your user have been revoked.");
    Ok(())
}

const SESSION_COLUMNS: &[Column] = &[
    Column {
        key: "id",
        header: "Id",
        extended: false,
    },
    Column {
        key: "name",
        header: "Name",
        extended: false,
    },
    Column {
        key: "clientId",
        header: "Client",
        extended: true,
    },
    Column {
        key: "createdAt",
        header: "Created",
        extended: false,
    },
    Column {
        key: "lastUsedAt",
        header: "Last Used",
        extended: false,
    },
    Column {
        key: "lastUsedAddress",
        header: "Last Used From",
        extended: true,
    },
    Column {
        key: "expiresAt",
        header: "Expires",
        extended: false,
    },
    Column {
        key: "scopes",
        header: "Scopes",
        extended: false,
    },
    Column {
        key: "current",
        header: "Current",
        extended: false,
    },
];

pub fn me_tokens_list(ctx: &Ctx, flags: &TableFlags) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let answer = session.graphql_answer(ctx, LIST_SESSIONS, json!({}))?;
    let Some(sessions) = answer
        .required(
            &["authenticatedUser", "sessions"],
            "This server does not list sessions (it is not prism-auth, or too old).",
        )?
        .as_array()
    else {
        fail!("This server does not list sessions (it is not prism-auth, or too old).");
    };
    let rows = sessions
        .iter()
        .map(|s| {
            vec![
                cell(&s["id"]),
                cell(&s["name"]),
                cell(&s["clientId"]),
                cell(&s["createdAt"]),
                cell(&s["lastUsedAt"]),
                cell(&s["lastUsedAddress"]),
                cell(&s["expiresAt"]),
                words(&s["scopes"]),
                if s["current"] == Value::Bool(true) {
                    "*".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    table::print(SESSION_COLUMNS, rows, flags)
}

pub fn me_tokens_revoke(ctx: &Ctx, id: &str) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let data = session.graphql(ctx, REVOKE_SESSION, json!({ "id": id }))?;
    let payload = &data["revokeSession"];
    payload_errors(payload).map_err(|e| {
        Error::new(format!(
            "{e}\nSee your sessions with 'prism me:tokens:list'."
        ))
    })?;
    let revoked = &payload["session"];
    let name = revoked["name"].as_str().unwrap_or("unnamed");
    ctx.say(&format!("Revoked session '{name}' ({id})."));
    if revoked["current"] == Value::Bool(true) {
        ctx.say("That was the session you are using; run 'prism login' to start a new one.");
    }
    Ok(())
}

/// What `me:tokens:create` asks the server for.
pub struct NewToken<'a> {
    pub name: &'a str,
    /// Empty: the token may do all the principal's role allows (sent as null, since the
    /// server refuses an empty list).
    pub scopes: &'a [String],
    /// RFC 3339; `None`: no expiry of its own.
    pub expires_at: Option<&'a str>,
    /// A service account's id; `None`: the caller's own token.
    pub service_account: Option<&'a str>,
}

/// Prints only the token, so that `TOKEN=$(prism me:tokens:create ...)` captures it.
pub fn me_tokens_create(ctx: &Ctx, new: &NewToken) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let scopes = (!new.scopes.is_empty()).then_some(new.scopes);
    let data = session.graphql(
        ctx,
        CREATE_TOKEN,
        json!({
            "name": new.name,
            "scopes": scopes,
            "expiresAt": new.expires_at,
            "serviceAccountId": new.service_account,
        }),
    )?;
    let payload = &data["createToken"];
    payload_errors(payload)?;
    let token = payload["token"]
        .as_str()
        .filter(|token| !token.is_empty())
        .ok_or_else(|| Error::new("The server minted no token and gave no reason."))?;
    println!("{token}");
    Ok(())
}

const USER_COLUMNS: &[Column] = &[
    Column {
        key: "id",
        header: "Id",
        extended: true,
    },
    Column {
        key: "name",
        header: "Name",
        extended: false,
    },
    Column {
        key: "email",
        header: "Email",
        extended: false,
    },
    Column {
        key: "phone",
        header: "Phone",
        extended: false,
    },
    Column {
        key: "role",
        header: "Role",
        extended: false,
    },
    Column {
        key: "externalId",
        header: "External ID",
        extended: false,
    },
];

pub fn users_list(ctx: &Ctx, flags: &TableFlags) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let mut rows = Vec::new();
    let mut after = String::new();
    loop {
        let data = session.graphql(ctx, LIST_USERS, json!({ "after": after }))?;
        let users = &data["organization"]["users"];
        for node in users["nodes"].as_array().into_iter().flatten() {
            rows.push(vec![
                cell(&node["id"]),
                cell(&node["name"]),
                cell(&node["email"]),
                cell(&node["phone"]),
                cell(&node["role"]["name"]),
                cell(&node["externalId"]),
            ]);
        }
        let next = users["pageInfo"]["endCursor"].as_str().unwrap_or_default();
        if users["pageInfo"]["hasNextPage"] != Value::Bool(true) || next.is_empty() || next == after
        {
            break;
        }
        after = next.to_owned();
    }
    table::print(USER_COLUMNS, rows, flags)
}

const ROLE_COLUMNS: &[Column] = &[
    Column {
        key: "id",
        header: "Id",
        extended: false,
    },
    Column {
        key: "name",
        header: "Name",
        extended: false,
    },
    Column {
        key: "description",
        header: "Description",
        extended: false,
    },
];

pub fn users_roles(ctx: &Ctx, flags: &TableFlags) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let data = session.graphql(ctx, LIST_ROLES, json!({}))?;
    let rows = data["organizationRoles"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| vec![cell(&r["id"]), cell(&r["name"]), cell(&r["description"])])
        .collect();
    table::print(ROLE_COLUMNS, rows, flags)
}

pub fn users_create(ctx: &Ctx, email: &str, role: &str, name: Option<&str>) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let data = session.graphql(
        ctx,
        CREATE_USER,
        json!({ "email": email, "role": role, "name": name }),
    )?;
    let payload = &data["createOrganizationUser"];
    payload_errors(payload)?;
    let id = payload["user"]["id"]
        .as_str()
        .ok_or_else(|| Error::new("The server created no user and gave no reason."))?;
    println!("{id}");
    if let Some(link) = payload["invitationUrl"].as_str() {
        eprintln!("Invitation link (send it to {email}; it works once, for 7 days): {link}");
    }
    Ok(())
}

pub fn users_delete(ctx: &Ctx, user: &str) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let data = session.graphql(ctx, DELETE_USER, json!({ "id": user }))?;
    payload_errors(&data["deleteUser"])
}

pub fn users_update(
    ctx: &Ctx,
    user: &str,
    name: Option<&str>,
    phone: Option<&str>,
    dark_mode: Option<bool>,
    dark_mode_os_sync: Option<bool>,
) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let data = session.graphql(
        ctx,
        UPDATE_USER,
        json!({
            "user": user,
            "name": name,
            "phone": phone,
            "darkMode": dark_mode,
            "darkModeOsSync": dark_mode_os_sync,
        }),
    )?;
    let payload = &data["updateUser"];
    payload_errors(payload)?;
    println!("{}", cell(&payload["user"]["id"]));
    Ok(())
}

const SERVICE_ACCOUNT_COLUMNS: &[Column] = &[
    Column {
        key: "id",
        header: "Id",
        extended: false,
    },
    Column {
        key: "name",
        header: "Name",
        extended: false,
    },
    Column {
        key: "role",
        header: "Role",
        extended: false,
    },
    Column {
        key: "description",
        header: "Description",
        extended: false,
    },
    Column {
        key: "createdAt",
        header: "Created",
        extended: false,
    },
];

pub fn service_accounts_list(ctx: &Ctx, flags: &TableFlags) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let answer = session.graphql_answer(ctx, LIST_SERVICE_ACCOUNTS, json!({}))?;
    let accounts = answer.required(
        &["serviceAccounts"],
        "This server has no service accounts (it is not prism-auth, or too old).",
    )?;
    let rows = accounts
        .as_array()
        .into_iter()
        .flatten()
        .map(|account| {
            vec![
                cell(&account["id"]),
                cell(&account["name"]),
                cell(&account["role"]["name"]),
                cell(&account["description"]),
                cell(&account["createdAt"]),
            ]
        })
        .collect();
    table::print(SERVICE_ACCOUNT_COLUMNS, rows, flags)
}

/// Prints the new service account's id, for `--service-account` of `me:tokens:create`.
pub fn service_accounts_create(
    ctx: &Ctx,
    name: &str,
    role: &str,
    description: Option<&str>,
) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let data = session.graphql(
        ctx,
        CREATE_SERVICE_ACCOUNT,
        json!({ "name": name, "role": role, "description": description }),
    )?;
    let payload = &data["createServiceAccount"];
    payload_errors(payload)?;
    let id = payload["serviceAccount"]["id"]
        .as_str()
        .ok_or_else(|| Error::new("The server created no service account and gave no reason."))?;
    println!("{id}");
    Ok(())
}

pub fn service_accounts_delete(ctx: &Ctx, id: &str) -> Result<()> {
    let mut session = Session::resolve(ctx)?;
    let data = session.graphql(ctx, DELETE_SERVICE_ACCOUNT, json!({ "id": id }))?;
    let payload = &data["deleteServiceAccount"];
    payload_errors_pointing_to(payload, "the service accounts", "service-accounts:list")?;
    let name = payload["serviceAccount"]["name"].as_str().unwrap_or(id);
    ctx.say(&format!("Deleted service account '{name}'."));
    Ok(())
}

const PROFILE_COLUMNS: &[Column] = &[
    Column {
        key: "name",
        header: "Name",
        extended: false,
    },
    Column {
        key: "url",
        header: "URL",
        extended: false,
    },
    Column {
        key: "tenantId",
        header: "Tenant ID",
        extended: true,
    },
    Column {
        key: "default",
        header: "Default",
        extended: false,
    },
];

fn load_existing() -> Result<(std::path::PathBuf, Config)> {
    let path = config::path()?;
    let config = config::load(&path)?.unwrap_or_default();
    Ok((path, config))
}

pub fn profiles_list(flags: &TableFlags) -> Result<()> {
    let (_, config) = load_existing()?;
    let default = config.selected_name(crate::env::var(crate::env::PRISM_PROFILE).as_deref());
    let rows = config
        .profiles
        .iter()
        .map(|(name, p)| {
            vec![
                name.clone(),
                p.prismatic_url
                    .clone()
                    .unwrap_or_else(|| crate::env::DEFAULT_URL.to_owned()),
                p.tenant_id.clone().unwrap_or_default(),
                if *name == default {
                    "*".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    table::print(PROFILE_COLUMNS, rows, flags)
}

fn no_such_profile(name: &str, config: &Config) -> Error {
    let known: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
    if known.is_empty() {
        Error::new(format!(
            "There is no profile '{name}' (there are none): run 'prism login --profile {name}'."
        ))
    } else {
        Error::new(format!(
            "There is no profile '{name}'; the profiles are: {}.",
            known.join(", ")
        ))
    }
}

pub fn profiles_use(ctx: &Ctx, name: &str) -> Result<()> {
    let (path, mut config) = load_existing()?;
    if !config.profiles.contains_key(name) {
        return Err(no_such_profile(name, &config));
    }
    config.default_profile = Some(name.to_owned());
    config::save(&path, &config)?;
    ctx.say(&format!("Now using profile '{name}'."));
    Ok(())
}

pub fn profiles_delete(ctx: &Ctx, name: &str) -> Result<()> {
    let (path, mut config) = load_existing()?;
    if config.profiles.remove(name).is_none() {
        return Err(no_such_profile(name, &config));
    }
    if config.default_profile.as_deref() == Some(name) {
        config.default_profile = None;
    }
    config::save(&path, &config)?;
    ctx.say(&format!("Deleted profile '{name}'."));
    Ok(())
}
