//! Operator commands on the server machine: manage users, mint refresh tokens without a
//! browser, and read the audit trail. They open the same database as `serve` (SQLite allows
//! this while it runs; PostgreSQL anyway) and go through the same domain services as the API
//! (made over the opened store, see `domain`), on either backend.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use prismd::domain::accounts::{self, Accounts, UserDraft, public_id};
use prismd::domain::audit::{AuditFilter, AuditTrail};
use prismd::domain::introspection::{ResourceServer, ResourceServers, WithSecret};
use prismd::domain::roles::Role;
use prismd::domain::service_accounts::ServiceAccounts;
use prismd::domain::sessions::{Minter, SessionOrigin, Sessions, TokenRequest};
use prismd::domain::trust::{NewTrustPolicy, TrustPolicies, TrustPolicyChanges};
use prismd::domain::usage::UsageRecorder;
use prismd::domain::{RequestMeta, now_ms};
use prismd::oidc::claims::{ClaimCondition, MatchKind};
use prismd::store::{self, Backend, Delivery, OpenOptions, PgPoolSettings, Store, User};
use prismd::tokens::{AtRest, at_rest, keyring};

const OPERATOR: &str = "operator";

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Add a user to the organization; prints the new user's id.
    Add {
        /// The new user's email address (their sign-in name).
        #[arg(long, env = "PRISMD_USER_EMAIL")]
        email: String,
        /// Display name (default: the email address).
        #[arg(long, env = "PRISMD_USER_NAME")]
        name: Option<String>,
        /// The user's role: Owner, Admin, Integrator, Restricted Integrator or Guest.
        #[arg(long, env = "PRISMD_USER_ROLE", default_value = "Guest")]
        role: String,
        /// Read a password for browser login (8 to 1024 characters) from the first line of
        /// stdin. Without it the user has no password until they follow an invitation link.
        #[arg(long, env = "PRISMD_PASSWORD_STDIN")]
        password_stdin: bool,
    },
    /// List the organization's users.
    List {
        /// JSON output, one array.
        #[arg(long, env = "PRISMD_JSON")]
        json: bool,
        /// Include removed users.
        #[arg(long, env = "PRISMD_USERS_ALL")]
        all: bool,
    },
    /// Remove a user: their refresh and access tokens stop working at once. The organization's
    /// last Owner cannot be removed. The address can be added again later as a new account;
    /// none of the old tokens come back.
    Remove {
        /// The email address of the user to remove.
        #[arg(long, env = "PRISMD_USER_EMAIL")]
        email: String,
    },
    /// Print a single-use link (valid 7 days) where the user sets a password. Only users
    /// without a password get one, and a new link replaces older ones. No email is sent.
    InviteLink {
        /// The email address of a user who has no password yet.
        #[arg(long, env = "PRISMD_USER_EMAIL")]
        email: String,
        /// The server's public URL, as `serve --issuer`.
        #[arg(long, env = "PRISMD_ISSUER", default_value = "http://127.0.0.1:8080")]
        issuer: String,
    },
    /// Set a user's password for browser login, read from the first line of stdin (also the
    /// way back in if the first Owner's password is lost). Ends the user's browser sessions.
    SetPassword {
        /// The email address of the user.
        #[arg(long, env = "PRISMD_USER_EMAIL")]
        email: String,
    },
}

#[derive(Subcommand)]
pub enum OrgsCommand {
    /// Create another organization (tenant); prints its tenant id. Its first user is added
    /// with `prismd users add --tenant-id <id> --role Owner`.
    Add {
        /// The new organization's name.
        #[arg(long, env = "PRISMD_ORG_NAME")]
        name: String,
    },
    /// List organizations.
    List,
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Mint a refresh token for a user or a service account and print it (only it) on stdout.
    /// With --scope, --expires-in or --service-account it is a named token: --name is
    /// required and unique among the principal's live tokens.
    Create {
        /// The email address of the token's user.
        #[arg(
            long,
            env = "PRISMD_USER_EMAIL",
            required_unless_present = "service_account",
            conflicts_with = "service_account"
        )]
        email: Option<String>,
        /// The name (or id) of the service account the token is for.
        #[arg(long, env = "PRISMD_SERVICE_ACCOUNT")]
        service_account: Option<String>,
        /// A name for the token, for example the CI pipeline that will use it.
        #[arg(long, env = "PRISMD_TOKEN_NAME")]
        name: Option<String>,
        /// Restrict the token to this API scope (repeat for more); without: the role decides.
        #[arg(long = "scope", env = "PRISMD_TOKEN_SCOPES", value_delimiter = ' ')]
        scopes: Vec<String>,
        /// The token stops working after this long, e.g. 30d or 12h.
        #[arg(long, env = "PRISMD_TOKEN_EXPIRES_IN", value_parser = parse_lifetime)]
        expires_in: Option<std::time::Duration>,
    },
}

#[derive(Subcommand)]
pub enum ServiceAccountsCommand {
    /// Create a service account (a non-human member; never an Owner); prints its id.
    Add {
        #[arg(long, env = "PRISMD_SERVICE_ACCOUNT_NAME")]
        name: String,
        /// Its role: Admin, Integrator, Restricted Integrator or Guest.
        #[arg(long, env = "PRISMD_SERVICE_ACCOUNT_ROLE", default_value = "Guest")]
        role: String,
        #[arg(long, env = "PRISMD_SERVICE_ACCOUNT_DESCRIPTION")]
        description: Option<String>,
    },
    /// List the organization's service accounts: id, role and name per line.
    List {
        /// One JSON object per line instead.
        #[arg(long, env = "PRISMD_JSON")]
        json: bool,
    },
    /// Remove a service account: its tokens stop working at once.
    Remove {
        /// Its name or id.
        #[arg(long, env = "PRISMD_SERVICE_ACCOUNT_NAME")]
        name: String,
    },
}

// `Add` carries every setting of a policy; the command is parsed once per process, so its
// size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum TrustPoliciesCommand {
    /// Trust a CI system's OIDC tokens (keyless CI): tokens of ISSUER for AUDIENCE that meet
    /// every --claim / --claim-glob act as the service account. Prints the policy's id.
    Add {
        /// Its name, unique in the organization (1 to 100 characters).
        #[arg(long, env = "PRISMD_TRUST_POLICY_NAME")]
        name: String,
        /// The exact `iss` of the tokens, e.g. https://token.actions.githubusercontent.com.
        #[arg(long, env = "PRISMD_TRUST_POLICY_ISSUER")]
        issuer: String,
        /// The `aud` value the tokens must carry.
        #[arg(long, env = "PRISMD_TRUST_POLICY_AUDIENCE")]
        audience: String,
        /// The service account (name or id) the pipeline acts as.
        #[arg(long)]
        service_account: String,
        /// A claim that must equal a value: `repository_id=123456` (repeat for more; at
        /// least one condition must pin a stable subject such as sub or repository_id).
        #[arg(long = "claim", value_name = "CLAIM=VALUE")]
        claims: Vec<String>,
        /// A claim that must match a pattern (`*` any run, `?` one character):
        /// `ref=refs/heads/release/*` (repeat for more).
        #[arg(long = "claim-glob", value_name = "CLAIM=PATTERN")]
        claim_globs: Vec<String>,
        /// Restrict the access tokens to this API scope (repeat for more); without: the
        /// service account's role decides.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// How long each access token lives (default 1h, at most 24h; the server issues no
        /// longer ones than its --access-token-ttl).
        #[arg(long, value_parser = parse_seconds)]
        lifetime: Option<i64>,
        /// How old (since its `iat`) an OIDC token may be when exchanged (default 1h).
        #[arg(long, value_parser = parse_seconds)]
        max_token_age: Option<i64>,
        /// What it is for, for the people who read the list (at most 500 characters).
        #[arg(long)]
        description: Option<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// Accept a plain `http://` issuer (tests only; the server needs the same flag).
        #[arg(long, env = "PRISMD_OIDC_ALLOW_HTTP_ISSUERS")]
        oidc_allow_http_issuers: bool,
    },
    /// List the organization's trust policies: id, state, name, issuer and service account.
    List {
        /// One JSON object per line instead.
        #[arg(long, env = "PRISMD_JSON")]
        json: bool,
    },
    /// Stop a policy from issuing tokens, and end every access token it issued, at once.
    Disable {
        /// Its name or id.
        name: String,
    },
    /// Let a disabled policy issue tokens again.
    Enable {
        /// Its name or id.
        name: String,
    },
    /// Delete a policy: every access token it issued stops working at once.
    Remove {
        /// Its name or id.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum ResourceServersCommand {
    /// Register a resource server: a service of your own that asks /oauth/introspect whether
    /// an access token stands (RFC 7662). It learns only about the tokens of the organization
    /// (--tenant-id), or of every organization with --instance-wide. Prints
    /// `{"client_id": ..., "client_secret": ...}` on stdout; the secret is shown this once.
    Add {
        /// Its name, unique in the organization (1 to 100 characters).
        #[arg(long)]
        name: String,
        /// What it is, for the people who read the list (at most 500 characters).
        #[arg(long)]
        description: Option<String>,
        /// May introspect the tokens of every organization (operators only).
        #[arg(long)]
        instance_wide: bool,
    },
    /// List the resource servers: client id, name, when its secret was set.
    List {
        /// The instance-wide ones instead of the organization's.
        #[arg(long)]
        instance_wide: bool,
        /// One JSON object per line instead.
        #[arg(long, env = "PRISMD_JSON")]
        json: bool,
    },
    /// Give a resource server a new client secret; the old one stops working at once. Prints
    /// `{"client_id": ..., "client_secret": ...}` on stdout.
    RotateSecret {
        /// Its name or client id.
        name: String,
        #[arg(long)]
        instance_wide: bool,
    },
    /// Delete a resource server: its secret stops working at once.
    Remove {
        /// Its name or client id.
        name: String,
        #[arg(long)]
        instance_wide: bool,
    },
}

/// A whole number of seconds from a humantime duration (`1h`, `90m`).
fn parse_seconds(input: &str) -> Result<i64, String> {
    let duration = humantime::parse_duration(input.trim())
        .map_err(|err| format!("{err}: give a duration such as 1h or 15m"))?;
    i64::try_from(duration.as_secs()).map_err(|_| "that is too long".to_owned())
}

/// `CLAIM=VALUE` as a condition.
fn condition(text: &str, kind: MatchKind) -> anyhow::Result<ClaimCondition> {
    let (claim, value) = text
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("a condition is CLAIM=VALUE, e.g. repository_id=123456"))?;
    Ok(ClaimCondition {
        claim: claim.trim().to_owned(),
        kind,
        value: value.to_owned(),
    })
}

/// A token lifetime: a humantime duration (`30d`, `12h`) of at least a minute.
fn parse_lifetime(input: &str) -> Result<std::time::Duration, String> {
    let lifetime = humantime::parse_duration(input.trim())
        .map_err(|err| format!("{err}: give a duration such as 30d or 12h"))?;
    if lifetime < std::time::Duration::from_secs(60) {
        return Err("a token lives at least a minute".into());
    }
    Ok(lifetime)
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a new signing key the active one; the previous key keeps verifying until the
    /// last access token it signed has expired. Running servers pick the new key up within
    /// their --key-reload-interval (at once when they see a token signed with it). With
    /// encrypted keys it needs the same PRISMD_KEY_ENCRYPTION_KEY(_FILE) as the server, and
    /// refuses without it. Prints the new kid; audited as `keys.rotated`.
    Rotate,
    /// Revoke a signing key whose private key leaked: it is deleted, and every access token it
    /// signed is refused at once on every replica (they hear of it through the change feed);
    /// the active key is rotated out first. Refresh tokens keep working and get access tokens
    /// signed with the new key. Needs the same PRISMD_KEY_ENCRYPTION_KEY(_FILE) as the server
    /// when it rotates. Audited as `keys.revoked`.
    Revoke {
        /// The key's id (`prismd keys list`).
        kid: String,
    },
    /// Re-seal every private signing key with a new key encryption key, given in
    /// PRISMD_NEW_KEY_ENCRYPTION_KEY or a file (--new-key-encryption-key-file); the current one
    /// comes from PRISMD_KEY_ENCRYPTION_KEY(_FILE) (none if the keys are stored plain). Stop
    /// the servers first and start them again with the new key. Prints the kids it re-sealed;
    /// audited as `keys.rewrapped`.
    Rewrap {
        /// File holding the new key encryption key (32 bytes, base64 or hex); or give the
        /// key itself in PRISMD_NEW_KEY_ENCRYPTION_KEY.
        #[arg(long, env = "PRISMD_NEW_KEY_ENCRYPTION_KEY_FILE")]
        new_key_encryption_key_file: Option<std::path::PathBuf>,
    },
    /// List signing keys: kid, created, retired, stored (`encrypted` or `plain`), and whether
    /// it still verifies (`yes (signs new tokens)`, `yes, until <time>`, `no`).
    /// Takes the server's --access-token-ttl, --key-reload-interval and --key-retire-margin
    /// (or their PRISMD_* variables) to compute that.
    List {
        #[command(flatten)]
        window: crate::KeyWindowArgs,
    },
}

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Most events to print.
    #[arg(long, env = "PRISMD_AUDIT_LIMIT", default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    limit: i64,
    /// Only this action, e.g. `login.failed` (the actions are listed in docs/security.md).
    #[arg(long, env = "PRISMD_AUDIT_ACTION")]
    action: Option<String>,
    /// Only events by or about this user: a user id (as `users add` prints it) or the
    /// `subjectUserId` of an earlier line.
    #[arg(long, env = "PRISMD_AUDIT_USER")]
    user: Option<String>,
    /// Only events at or after this time (inclusive): RFC 3339 (`2026-01-31T12:00:00Z`) or a
    /// duration ago (`24h`).
    #[arg(long, env = "PRISMD_AUDIT_SINCE")]
    since: Option<String>,
    /// Only events before this time (exclusive; same forms as --since).
    #[arg(long, env = "PRISMD_AUDIT_UNTIL")]
    until: Option<String>,
    /// Only this organization's events (its tenant id; the global --tenant-id works too).
    /// Without it: every organization's, and events that belong to none, such as failed
    /// sign-ins of unknown emails.
    #[arg(long, env = "PRISMD_AUDIT_ORG")]
    org: Option<String>,
}

/// `--since`/`--until`: an RFC 3339 time, or a duration before now.
fn audit_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        let since = time.duration_since(std::time::UNIX_EPOCH)?;
        return Ok(i64::try_from(since.as_millis())?);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now_ms().saturating_sub(i64::try_from(ago.as_millis())?));
    }
    anyhow::bail!(
        "{flag} must be an RFC 3339 time (2026-01-31T12:00:00Z) or a duration ago (24h), not '{text}'"
    )
}

/// `--user`: a raw user id, or the public id the JSON lines and the API show. An email is
/// refused rather than matching nothing: the trail names users by id only.
fn audit_user(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    if text.contains('@') {
        anyhow::bail!(
            "--user takes a user id, not an email; 'prismd users list --json' shows the ids"
        );
    }
    Ok(accounts::parse_public_id("User", text).unwrap_or_else(|| text.to_owned()))
}

async fn open(backend: &Backend) -> anyhow::Result<Arc<dyn Store>> {
    // One command, one statement at a time: a couple of connections is plenty, and keeps
    // a script of many commands from crowding the server's PostgreSQL pool.
    let options = OpenOptions {
        sqlite_readers: 1,
        postgres: PgPoolSettings {
            max_connections: 2,
            // An operator at a prompt wants the error now, not after the server's wait.
            startup_wait: std::time::Duration::ZERO,
            ..PgPoolSettings::default()
        },
        ..OpenOptions::default()
    };
    match store::open_existing(backend, options).await {
        Ok(store) => Ok(store),
        Err(err) if err.is_unreachable() => Err(anyhow::anyhow!(
            "cannot reach the database ({}): {err}",
            backend.describe()
        )),
        Err(err) => Err(err.into()),
    }
}

pub async fn users(
    backend: &Backend,
    data_dir: &std::path::Path,
    tenant: Option<&str>,
    command: UsersCommand,
) -> anyhow::Result<()> {
    let store = open(backend).await?;
    let result = run_users(store.as_ref(), data_dir, tenant, command).await;
    store.close().await;
    result
}

pub async fn orgs(backend: &Backend, command: OrgsCommand) -> anyhow::Result<()> {
    let store = open(backend).await?;
    let result = async {
        match command {
            OrgsCommand::Add { name } => {
                let org = Accounts::new(store.as_ref())
                    .create_org(&name, OPERATOR.into())
                    .await?;
                println!("{}", org.tenant_id);
            }
            OrgsCommand::List => {
                let orgs = Accounts::new(store.as_ref()).organizations().await?;
                for (n, org) in orgs.into_iter().enumerate() {
                    let default = if n == 0 { "  (default)" } else { "" };
                    println!("{}  {}{default}", org.tenant_id, org.name);
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    store.close().await;
    result
}

pub async fn tokens(
    backend: &Backend,
    tenant: Option<&str>,
    command: TokensCommand,
) -> anyhow::Result<()> {
    let store = open(backend).await?;
    let result = run_tokens(store.as_ref(), tenant, command).await;
    store.close().await;
    result
}

pub async fn audit(backend: &Backend, tenant: Option<&str>, args: AuditArgs) -> anyhow::Result<()> {
    let filter = AuditFilter {
        action: args.action.clone(),
        user_id: args.user.as_deref().map(audit_user).transpose()?,
        since: args
            .since
            .as_deref()
            .map(|t| audit_time("--since", t))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|t| audit_time("--until", t))
            .transpose()?,
    };
    let store = open(backend).await?;
    let result = print_audit(
        store.as_ref(),
        args.org.as_deref().or(tenant),
        filter,
        args.limit,
    )
    .await;
    store.close().await;
    result
}

/// Prints up to `limit` events, newest first, one JSON object per line, reading them in pages.
async fn print_audit(
    store: &dyn Store,
    tenant: Option<&str>,
    filter: AuditFilter,
    limit: i64,
) -> anyhow::Result<()> {
    let org_id = match tenant {
        Some(tenant) => Some(Accounts::new(store).org_by_tenant(Some(tenant)).await?.id),
        None => None,
    };
    let trail = AuditTrail::new(store);
    let mut out = std::io::stdout().lock();
    let mut left = limit;
    let mut after = None;
    while left > 0 {
        let page = trail
            .operator_events(org_id.clone(), filter.clone(), left, after)
            .await?;
        after = page.events.last().map(|event| event.id);
        left -= page.events.len() as i64;
        for event in page.events {
            write_audit_line(&mut out, event)?;
        }
        if !page.has_next_page {
            break;
        }
    }
    Ok(())
}

/// One event as a JSON line; `detail` is parsed back into JSON.
fn write_audit_line(out: &mut impl Write, event: store::AuditRecord) -> anyhow::Result<()> {
    let detail: Option<serde_json::Value> = event
        .detail
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok());
    let line = serde_json::json!({
        "id": event.id,
        "at": humantime::format_rfc3339_millis(at_ms(event.at)).to_string(),
        "action": event.action,
        "actor": event.actor,
        "orgId": event.org_id.as_deref().map(|id| public_id("Organization", id)),
        "subjectUserId": event.subject_user_id.as_deref().map(|id| public_id("User", id)),
        "address": event.address,
        "userAgent": event.user_agent,
        "detail": detail,
    });
    writeln!(out, "{line}")?;
    Ok(())
}

pub async fn keys(backend: &Backend, at_rest: &AtRest, command: KeysCommand) -> anyhow::Result<()> {
    let store = open(backend).await?;
    let result = run_keys(store.as_ref(), at_rest, command).await;
    store.close().await;
    result
}

async fn run_keys(store: &dyn Store, at_rest: &AtRest, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Rotate => {
            let rotation = keyring::rotate(store, at_rest, OPERATOR.into(), now_ms()).await?;
            println!("{}", rotation.kid);
            for kid in rotation.retired {
                eprintln!("Retired {kid}; it verifies the tokens it signed until they expire.");
            }
        }
        KeysCommand::Revoke { kid } => {
            let revocation =
                keyring::revoke(store, at_rest, OPERATOR.into(), now_ms(), &kid).await?;
            if let Some(new) = &revocation.rotated_to {
                eprintln!("{kid} was the active key: {new} signs new tokens now.");
            }
            eprintln!(
                "Revoked {kid}: every token it signed is refused as soon as each server hears of \
                 it (at once through the change feed); refresh tokens keep working and get new \
                 access tokens."
            );
        }
        KeysCommand::Rewrap {
            new_key_encryption_key_file,
        } => {
            let new =
                crate::key_at_rest(&at_rest::NEW_KEK, new_key_encryption_key_file.as_deref())?;
            if matches!(new, AtRest::Plain) {
                anyhow::bail!(
                    "give the new key encryption key in {} or {}",
                    at_rest::NEW_KEK.value_variable,
                    at_rest::NEW_KEK.file_variable
                );
            }
            let kids = keyring::rewrap(store, at_rest, &new, OPERATOR, now_ms()).await?;
            for kid in &kids {
                println!("{kid}");
            }
            eprintln!(
                "Re-sealed {} signing key(s) with the new key encryption key; start the servers \
                 with it.",
                kids.len()
            );
        }
        KeysCommand::List { window } => {
            let window = window.window();
            let now = now_ms();
            let mut rows = vec![vec![
                "KID".to_owned(),
                "CREATED".to_owned(),
                "RETIRED".to_owned(),
                "STORED".to_owned(),
                "VERIFIES".to_owned(),
            ]];
            for record in store.signing_keys().await? {
                let verifies = match window.verifies_until(&record) {
                    None => "yes (signs new tokens)".to_owned(),
                    Some(until) if now < until => format!("yes, until {}", rfc3339(until)),
                    Some(_) => "no".to_owned(),
                };
                rows.push(vec![
                    record.kid,
                    rfc3339(record.created_at),
                    record
                        .retired_at
                        .map(rfc3339)
                        .unwrap_or_else(|| "-".to_owned()),
                    if at_rest::is_sealed(&record.private_key) {
                        "encrypted".to_owned()
                    } else {
                        "plain".to_owned()
                    },
                    verifies,
                ]);
            }
            print_rows(rows)?;
        }
    }
    Ok(())
}

async fn run_users(
    store: &dyn Store,
    data_dir: &std::path::Path,
    tenant: Option<&str>,
    command: UsersCommand,
) -> anyhow::Result<()> {
    let accounts = Accounts::new(store);
    let org = accounts.org_by_tenant(tenant).await?;
    let meta = RequestMeta::default();
    match command {
        UsersCommand::Add {
            email,
            name,
            role,
            password_stdin,
        } => {
            let role: Role = role.parse()?;
            let password = if password_stdin {
                Some(read_password()?)
            } else {
                None
            };
            let draft = UserDraft {
                email,
                name,
                role,
                password,
                external_id: None,
            };
            let added = accounts.operator_add_user(&org, draft).await?;
            if !added.new_identity {
                eprintln!(
                    "{} already signs in here; they are now a member of {} too (their password is unchanged).",
                    added.user.email, org.name
                );
            }
            println!("{}", public_id("User", &added.user.id));
        }
        UsersCommand::List { json, all } => {
            let users = accounts.users(&org, all).await?;
            if json {
                let rows: Vec<_> = users.iter().map(user_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(&users, all)?;
            }
        }
        UsersCommand::Remove { email } => {
            let user = accounts.find_user(&org, &email).await?;
            accounts
                .remove_user(&user, OPERATOR.into(), None, &meta)
                .await?;
            eprintln!("Removed {}; their tokens no longer work.", user.email);
        }
        UsersCommand::InviteLink { email, issuer } => {
            let user = accounts.find_user(&org, &email).await?;
            let token = accounts
                .create_invitation(&user, OPERATOR.into(), Delivery::Operator, &meta)
                .await?;
            println!("{}/invite?token={token}", issuer.trim_end_matches('/'));
        }
        UsersCommand::SetPassword { email } => {
            let user = accounts.find_user(&org, &email).await?;
            // Whether this is the first Owner, still on the generated password: its file
            // goes once the new one is set.
            let generated =
                prismd::first_start::file_password_matches(store, data_dir, &user.email)
                    .await
                    .unwrap_or(false);
            accounts
                .set_password(&user, read_password()?, OPERATOR.into(), &meta)
                .await?;
            eprintln!("Password set for {}.", user.email);
            if generated {
                prismd::first_start::remove_password_file(data_dir)?;
                eprintln!(
                    "Removed {}: it held the generated password, which no longer works.",
                    data_dir.join(prismd::INITIAL_PASSWORD_FILE).display()
                );
            }
        }
    }
    Ok(())
}

async fn run_tokens(
    store: &dyn Store,
    tenant: Option<&str>,
    command: TokensCommand,
) -> anyhow::Result<()> {
    let accounts = Accounts::new(store);
    let org = accounts.org_by_tenant(tenant).await?;
    match command {
        TokensCommand::Create {
            email,
            service_account,
            name,
            scopes,
            expires_in,
        } if service_account.is_some() || !scopes.is_empty() || expires_in.is_some() => {
            let holder = match (&email, &service_account) {
                (_, Some(account)) => ServiceAccounts::new(store).find(&org.id, account).await?,
                (Some(email), None) => accounts.find_user(&org, email).await?,
                (None, None) => anyhow::bail!("give --email or --service-account"),
            };
            let Some(name) = name else {
                anyhow::bail!(
                    "a token with --scope, --expires-in or --service-account needs --name"
                );
            };
            let expires_at = expires_in.map(|lifetime| {
                now_ms().saturating_add(i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX))
            });
            let request = TokenRequest {
                name,
                scopes: (!scopes.is_empty()).then_some(scopes),
                expires_at,
            };
            let usage = UsageRecorder::default();
            let (token, _) = Sessions::new(store, &usage)
                .create_token(Minter::Operator, &holder, request, &RequestMeta::default())
                .await
                .map_err(|(field, err)| anyhow::anyhow!("{field}: {err}"))?;
            println!("{token}");
        }
        TokensCommand::Create { email, name, .. } => {
            let Some(email) = email else {
                anyhow::bail!("give --email or --service-account");
            };
            let user = accounts.find_user(&org, &email).await?;
            let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
            let origin = SessionOrigin {
                name,
                ..Default::default()
            };
            // An operator command exchanges no tokens, so it has no uses to write.
            let usage = UsageRecorder::default();
            let token = Sessions::new(store, &usage)
                .mint_refresh_token(&user, origin, OPERATOR.into(), &RequestMeta::default())
                .await?;
            println!("{token}");
        }
    }
    Ok(())
}

pub async fn service_accounts(
    backend: &Backend,
    tenant: Option<&str>,
    command: ServiceAccountsCommand,
) -> anyhow::Result<()> {
    let store = open(backend).await?;
    let result = run_service_accounts(store.as_ref(), tenant, command).await;
    store.close().await;
    result
}

async fn run_service_accounts(
    store: &dyn Store,
    tenant: Option<&str>,
    command: ServiceAccountsCommand,
) -> anyhow::Result<()> {
    let org = Accounts::new(store).org_by_tenant(tenant).await?;
    let accounts = ServiceAccounts::new(store);
    let meta = RequestMeta::default();
    match command {
        ServiceAccountsCommand::Add {
            name,
            role,
            description,
        } => {
            let role: Role = role.parse()?;
            let account = accounts
                .create(None, &org, &name, role, description, &meta)
                .await?;
            println!("{}", public_id("ServiceAccount", &account.id));
        }
        ServiceAccountsCommand::List { json } => {
            for account in accounts.list(&org.id).await? {
                let id = public_id("ServiceAccount", &account.id);
                let role = Role::of(&account);
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": id,
                            "name": account.name,
                            "role": role.name(),
                            "description": account.description,
                            "createdAt": rfc3339(account.created_at),
                        })
                    );
                } else {
                    println!("{id}  {role}  {}", account.name);
                }
            }
        }
        ServiceAccountsCommand::Remove { name } => {
            let id = match accounts::parse_public_id("ServiceAccount", name.trim()) {
                Some(id) => id,
                None => name,
            };
            let removed = accounts.delete(None, &org.id, &id, &meta).await?;
            eprintln!(
                "Removed service account {}; its tokens no longer work.",
                removed.name
            );
        }
    }
    Ok(())
}

pub async fn trust_policies(
    backend: &Backend,
    tenant: Option<&str>,
    command: TrustPoliciesCommand,
) -> anyhow::Result<()> {
    let store = open(backend).await?;
    let result = run_trust_policies(store.as_ref(), tenant, command).await;
    store.close().await;
    result
}

async fn run_trust_policies(
    store: &dyn Store,
    tenant: Option<&str>,
    command: TrustPoliciesCommand,
) -> anyhow::Result<()> {
    let org = Accounts::new(store).org_by_tenant(tenant).await?;
    let meta = RequestMeta::default();
    // Operator commands do not know the server's --access-token-ttl: the server caps each
    // policy's lifetime by it when it issues.
    let allow_http = matches!(
        &command,
        TrustPoliciesCommand::Add {
            oidc_allow_http_issuers: true,
            ..
        }
    );
    let policies = TrustPolicies::new(store, allow_http, i64::MAX);
    let id_of =
        |name: String| accounts::parse_public_id("TrustPolicy", name.trim()).unwrap_or(name);
    match command {
        TrustPoliciesCommand::Add {
            name,
            issuer,
            audience,
            service_account,
            claims,
            claim_globs,
            scopes,
            lifetime,
            max_token_age,
            description,
            disabled,
            oidc_allow_http_issuers: _,
        } => {
            let mut conditions = Vec::new();
            for text in &claims {
                conditions.push(condition(text, MatchKind::Exact)?);
            }
            for text in &claim_globs {
                conditions.push(condition(text, MatchKind::Glob)?);
            }
            let service_account =
                accounts::parse_public_id("ServiceAccount", service_account.trim())
                    .unwrap_or(service_account);
            let policy = NewTrustPolicy {
                name,
                description,
                issuer,
                audience,
                conditions,
                service_account,
                scopes,
                access_token_ttl_secs: lifetime,
                max_token_age_secs: max_token_age,
                enabled: Some(!disabled),
            };
            let created = policies
                .create(None, &org, policy, &meta)
                .await
                .map_err(|(_, err)| err)?;
            println!("{}", public_id("TrustPolicy", &created.record.id));
        }
        TrustPoliciesCommand::List { json } => {
            let accounts = ServiceAccounts::new(store).list(&org.id).await?;
            for policy in policies.list(None, &org.id).await? {
                let record = &policy.record;
                let id = public_id("TrustPolicy", &record.id);
                let account = accounts
                    .iter()
                    .find(|account| account.id == record.service_account_id)
                    .map_or("?", |account| account.name.as_str());
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": id,
                            "name": record.name,
                            "issuer": record.issuer,
                            "audience": record.audience,
                            "conditions": policy.conditions,
                            "serviceAccount": account,
                            "serviceAccountId": public_id("ServiceAccount", &record.service_account_id),
                            "scopes": policy.scopes,
                            "accessTokenLifetimeSeconds": record.access_token_ttl_secs,
                            "maxTokenAgeSeconds": record.max_token_age_secs,
                            "enabled": record.enabled,
                            "createdAt": rfc3339(record.created_at),
                            "lastUsedAt": record.last_used_at.map(rfc3339),
                        })
                    );
                } else {
                    let state = if record.enabled {
                        "enabled "
                    } else {
                        "disabled"
                    };
                    println!(
                        "{id}  {state}  {}  {}  as {account}",
                        record.name, record.issuer
                    );
                }
            }
        }
        TrustPoliciesCommand::Disable { name } => {
            let changes = TrustPolicyChanges {
                enabled: Some(false),
                ..TrustPolicyChanges::default()
            };
            let policy = policies
                .update(None, &org, &id_of(name), changes, &meta)
                .await
                .map_err(|(_, err)| err)?;
            eprintln!(
                "Disabled trust policy {}; the access tokens it issued no longer work.",
                policy.record.name
            );
        }
        TrustPoliciesCommand::Enable { name } => {
            let changes = TrustPolicyChanges {
                enabled: Some(true),
                ..TrustPolicyChanges::default()
            };
            let policy = policies
                .update(None, &org, &id_of(name), changes, &meta)
                .await
                .map_err(|(_, err)| err)?;
            eprintln!("Enabled trust policy {}.", policy.record.name);
        }
        TrustPoliciesCommand::Remove { name } => {
            let policy = policies.delete(None, &org, &id_of(name), &meta).await?;
            eprintln!(
                "Removed trust policy {}; the access tokens it issued no longer work.",
                policy.record.name
            );
        }
    }
    Ok(())
}

pub async fn resource_servers(
    backend: &Backend,
    tenant: Option<&str>,
    command: ResourceServersCommand,
) -> anyhow::Result<()> {
    let store = open(backend).await?;
    let result = run_resource_servers(store.as_ref(), tenant, command).await;
    store.close().await;
    result
}

async fn run_resource_servers(
    store: &dyn Store,
    tenant: Option<&str>,
    command: ResourceServersCommand,
) -> anyhow::Result<()> {
    let instance_wide = match &command {
        ResourceServersCommand::Add { instance_wide, .. }
        | ResourceServersCommand::List { instance_wide, .. }
        | ResourceServersCommand::RotateSecret { instance_wide, .. }
        | ResourceServersCommand::Remove { instance_wide, .. } => *instance_wide,
    };
    let org = if instance_wide {
        None
    } else {
        Some(Accounts::new(store).org_by_tenant(tenant).await?)
    };
    let org_id = org.as_ref().map(|org| org.id.as_str());
    let servers = ResourceServers::new(store);
    let meta = RequestMeta::default();
    let credentials = |created: &WithSecret| {
        serde_json::json!({
            "client_id": created.server.client_id,
            "client_secret": created.client_secret,
        })
    };
    match command {
        ResourceServersCommand::Add {
            name, description, ..
        } => {
            let created = servers
                .create(None, org_id, &name, description.as_deref(), &meta)
                .await?;
            println!("{}", credentials(&created));
            eprintln!(
                "Registered resource server {} for {}; keep its client_secret in a secret \
                 store: it is not shown again.",
                created.server.name,
                org.as_ref().map_or_else(
                    || "every organization".to_owned(),
                    |org| org.tenant_id.clone()
                )
            );
        }
        ResourceServersCommand::List { json, .. } => {
            for server in servers.list(None, org_id).await? {
                if json {
                    println!("{}", described_server(&server));
                } else {
                    println!(
                        "{}  {}  secret set {}",
                        server.client_id,
                        server.name,
                        rfc3339(server.secret_set_at)
                    );
                }
            }
        }
        ResourceServersCommand::RotateSecret { name, .. } => {
            let rotated = servers.rotate_secret(None, org_id, &name, &meta).await?;
            println!("{}", credentials(&rotated));
            eprintln!(
                "New client secret for {}; the old one no longer works.",
                rotated.server.name
            );
        }
        ResourceServersCommand::Remove { name, .. } => {
            let removed = servers.delete(None, org_id, &name, &meta).await?;
            eprintln!(
                "Removed resource server {}; its secret no longer works.",
                removed.name
            );
        }
    }
    Ok(())
}

fn described_server(server: &ResourceServer) -> serde_json::Value {
    serde_json::json!({
        "clientId": server.client_id,
        "name": server.name,
        "description": server.description,
        "instanceWide": server.org_id.is_none(),
        "createdAt": rfc3339(server.created_at),
        "secretSetAt": rfc3339(server.secret_set_at),
    })
}

fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn at_ms(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_seconds(at_ms(ms)).to_string()
}

fn role_name(key: &str) -> String {
    key.parse::<Role>()
        .map(|r| r.name().to_owned())
        .unwrap_or_else(|_| key.to_owned())
}

fn user_json(user: &User) -> serde_json::Value {
    serde_json::json!({
        "id": public_id("User", &user.id),
        "email": user.email,
        "name": user.name,
        "role": role_name(&user.role),
        "createdAt": rfc3339(user.created_at),
        "removedAt": user.removed_at.map(rfc3339),
    })
}

fn print_table(users: &[User], with_status: bool) -> anyhow::Result<()> {
    let mut rows = vec![vec![
        "ID".to_owned(),
        "EMAIL".to_owned(),
        "NAME".to_owned(),
        "ROLE".to_owned(),
        "CREATED".to_owned(),
    ]];
    if with_status {
        rows[0].push("STATUS".to_owned());
    }
    for user in users {
        let mut row = vec![
            public_id("User", &user.id),
            user.email.clone(),
            user.name.clone(),
            role_name(&user.role),
            rfc3339(user.created_at),
        ];
        if with_status {
            row.push(
                if user.removed_at.is_some() {
                    "removed"
                } else {
                    "active"
                }
                .to_owned(),
            );
        }
        rows.push(row);
    }
    print_rows(rows)
}

/// Prints rows as left-aligned columns; the first row is the header.
fn print_rows(rows: Vec<Vec<String>>) -> anyhow::Result<()> {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|col| {
            rows.iter()
                .map(|r| r[col].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}
