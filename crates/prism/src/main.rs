//! `prism`: the command-line client of prism-auth. Command names, flags, environment variables,
//! config file and output follow Prismatic's official `prism` CLI; this file owns the command
//! line (clap) and the exit codes.

mod commands;
mod config;
mod env;
mod error;
mod expiry;
mod http;
mod keyless;
mod login;
mod resource_servers;
mod session;
mod table;
mod tenants;
mod trust_policies;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::table::TableFlags;

const AFTER_HELP: &str = "\
Environment:
  PRISMATIC_URL          API URL (default https://app.prismatic.io)
  PRISM_ACCESS_TOKEN     use this access token (environment mode: the config file is not used)
  PRISM_REFRESH_TOKEN    use this refresh token (environment mode)
  PRISM_OIDC_TOKEN       an OIDC token for 'prism me:token' to exchange (keyless CI)
  PRISMATIC_TENANT_ID    tenant (organization) for environment credentials, and the one
                         'prism login' chooses without asking
  PRISM_PROFILE          profile to use (like --profile)
  PRISM_CONFIG_FILE      config file (default ~/.config/prism/config.yml)
  SSL_CERT_FILE, NODE_EXTRA_CA_CERTS   extra CA certificate (like --ca-cert)
Empty values count as unset.";

#[derive(Debug, Parser)]
#[command(
    name = "prism",
    version,
    about = "Command-line client for prism-auth and Prismatic-compatible servers",
    long_about = "Command-line client for prism-auth and Prismatic-compatible servers.\n\n\
                  Works like Prismatic's official `prism` CLI (same commands, environment \
                  variables and config file), starts in milliseconds, and keeps the config \
                  file private (mode 0600).",
    after_help = AFTER_HELP,
    propagate_version = true
)]
struct Cli {
    /// Use this profile from the config file [env: PRISM_PROFILE]
    #[arg(long, global = true, value_name = "NAME")]
    profile: Option<String>,
    /// Print less: no confirmations or notices [env: PRISM_QUIET]
    #[arg(long, global = true)]
    quiet: bool,
    /// Print each HTTP request (method, URL, GraphQL document; never tokens) on stderr
    /// [env: PRISMATIC_PRINT_REQUESTS]
    #[arg(long, global = true)]
    print_requests: bool,
    /// Also trust this CA certificate (PEM) [env: SSL_CERT_FILE, NODE_EXTRA_CA_CERTS]
    #[arg(long, global = true, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenType {
    Access,
    Refresh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Log in through the browser and save the session in a profile
    #[command(
        long_about = "Log in through the browser and save the session in a profile.\n\n\
        When you belong to more than one organization, prism lists them on stderr and reads \
        your choice from stdin (a number from the list or a tenant ID; an empty line keeps the \
        current one; it can be piped). With PRISMATIC_TENANT_ID set, that tenant is used \
        without asking."
    )]
    Login {
        /// Log in again even when the profile has a working session
        #[arg(short, long)]
        force: bool,
        /// Print the login URL instead of opening a browser
        #[arg(short, long)]
        url: bool,
        /// Log in without a browser on this machine (OAuth device authorization grant)
        #[arg(long, conflicts_with = "url")]
        device: bool,
    },
    /// Delete the local profile (tokens stay valid; see me:token:revoke)
    Logout {
        /// Also end the login session in the browser
        #[arg(short, long)]
        browser: bool,
    },
    /// Show the current user, organization and how you are authenticated
    Me,
    /// Print an access token (refreshed when needed) or the refresh token; or exchange a CI
    /// pipeline's OIDC token for an access token (keyless CI)
    #[command(
        name = "me:token",
        long_about = "Print an access token (refreshed when needed) or the refresh token; or \
        exchange a CI pipeline's OIDC token for an access token (keyless CI).\n\n\
        With --oidc-token, --oidc-token-file or PRISM_OIDC_TOKEN, the OIDC token is exchanged \
        at PRISMATIC_URL's /auth/exchange through one of your organization's trust policies \
        (see trust-policies:create) and only the access token is printed, so \
        TOKEN=$(prism me:token --oidc-token \"$JWT\") works; no login or config file is used. \
        In GitHub Actions (a job with 'permissions: id-token: write'), --oidc-audience AUD \
        fetches the job's OIDC token for AUD and exchanges it."
    )]
    MeToken {
        /// Which token to print
        #[arg(short = 't', long = "type", value_enum, default_value = "access")]
        kind: TokenType,
        #[command(flatten)]
        oidc: keyless::OidcFlags,
    },
    /// Revoke all of your refresh tokens (access tokens stop working too) and delete the profile
    #[command(name = "me:token:revoke")]
    MeTokenRevoke {
        /// Do not ask for confirmation
        #[arg(long)]
        no_confirm: bool,
    },
    /// List your sessions (refresh tokens): name, client, created, last used (up to a
    /// minute behind), expiry and scopes [prism-auth addition]
    #[command(
        name = "me:tokens:list",
        long_about = "List your sessions (refresh tokens): name, client, created, last used \
        (up to a minute behind), expiry and scopes [prism-auth addition].\n\n\
        Expires is the earlier of the token's own expiry and the organization's session policy \
        (empty: never). Scopes is empty for a token that may do all your role allows."
    )]
    MeTokensList {
        #[command(flatten)]
        table: TableFlags,
    },
    /// Mint a named refresh token (for CI or a service account); prints only the token
    /// [prism-auth addition]
    #[command(
        name = "me:tokens:create",
        long_about = "Mint a named refresh token, for CI or a service account; prints only the \
        token, so TOKEN=$(prism me:tokens:create --name ci) works [prism-auth addition].\n\n\
        The token is shown once: store it as a secret. Use it as PRISM_REFRESH_TOKEN, or \
        exchange it at POST /auth/refresh. List and revoke tokens with me:tokens:list and \
        me:tokens:revoke. When a token in use expires within 7 days, prism warns on stderr."
    )]
    MeTokensCreate {
        /// Name of the token, unique among your live named tokens (e.g. where it is used)
        #[arg(short, long)]
        name: String,
        /// Restrict the token to this scope (repeat for more); without any, it may do all the
        /// role allows. Built-in: users:read users:write profile:write sessions:read
        /// sessions:write audit:read org:admin
        #[arg(short, long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// The token expires after this long, e.g. 30d, 12h, 1w
        #[arg(long, value_name = "DURATION", value_parser = expiry::parse_lifetime)]
        expires_in: Option<std::time::Duration>,
        /// The token expires at this time (RFC 3339, e.g. 2030-01-31T00:00:00Z)
        #[arg(long, value_name = "RFC3339", conflicts_with = "expires_in")]
        expires_at: Option<String>,
        /// Mint the token for this service account (its id, see service-accounts:list)
        /// instead of yourself; Owners and Admins only
        #[arg(long, value_name = "ID")]
        service_account: Option<String>,
    },
    /// Revoke one of your sessions (refresh token) by id; the others keep working
    /// [prism-auth addition]
    #[command(name = "me:tokens:revoke")]
    MeTokensRevoke {
        /// Id of the session (see me:tokens:list)
        id: String,
    },
    /// List the users of your organization
    #[command(name = "organization:users:list")]
    UsersList {
        #[command(flatten)]
        table: TableFlags,
    },
    /// List the roles users of your organization can have
    #[command(name = "organization:users:roles")]
    UsersRoles {
        #[command(flatten)]
        table: TableFlags,
    },
    /// Add a user to your organization; prints the id (and the invitation link on stderr)
    #[command(name = "organization:users:create")]
    UsersCreate {
        /// Email address of the new user
        #[arg(short, long)]
        email: String,
        /// Role id (see organization:users:roles -x)
        #[arg(short, long)]
        role: String,
        /// Name of the new user
        #[arg(short, long)]
        name: Option<String>,
    },
    /// Remove a user from your organization
    #[command(name = "organization:users:delete")]
    UsersDelete {
        /// Id of the user (see organization:users:list -x)
        user: String,
    },
    /// Change a user's name, phone or display settings; prints the id
    #[command(name = "organization:users:update")]
    UsersUpdate {
        /// Id of the user (see organization:users:list -x)
        user: String,
        /// New name
        #[arg(short, long)]
        name: Option<String>,
        /// New phone number
        #[arg(short, long)]
        phone: Option<String>,
        /// Turn dark mode on
        #[arg(short = 'd', long = "darkMode", alias = "dark-mode")]
        dark_mode: bool,
        /// Make dark mode follow the operating system
        #[arg(short = 'o', long = "darkModeOsSync", alias = "dark-mode-os-sync")]
        dark_mode_os_sync: bool,
    },
    /// List your organization's service accounts [prism-auth addition]
    #[command(name = "service-accounts:list")]
    ServiceAccountsList {
        #[command(flatten)]
        table: TableFlags,
    },
    /// Add a service account (a member for machines: no email, no password, never signs
    /// in); prints its id [prism-auth addition]
    #[command(
        name = "service-accounts:create",
        long_about = "Add a service account: a member for machines, with no email and no \
        password, that never signs in; prints its id [prism-auth addition].\n\n\
        Mint tokens for it with 'prism me:tokens:create --service-account ID --name N'."
    )]
    ServiceAccountsCreate {
        /// Name, unique among your organization's service accounts
        #[arg(short, long)]
        name: String,
        /// Role id (see organization:users:roles -x); not Owner
        #[arg(short, long)]
        role: String,
        /// What it is for
        #[arg(short, long)]
        description: Option<String>,
    },
    /// Delete a service account; its tokens stop working [prism-auth addition]
    #[command(name = "service-accounts:delete")]
    ServiceAccountsDelete {
        /// Id of the service account (see service-accounts:list)
        id: String,
    },
    /// List your organization's trust policies (keyless CI) [prism-auth addition]
    #[command(name = "trust-policies:list")]
    TrustPoliciesList {
        #[command(flatten)]
        table: TableFlags,
    },
    /// Add a trust policy: OIDC tokens of an issuer that meet its conditions are exchanged for
    /// a service account's access tokens; prints its id [prism-auth addition]
    #[command(
        name = "trust-policies:create",
        long_about = "Add a trust policy: OIDC tokens of an issuer (a CI system) whose audience \
        and claims meet its conditions are exchanged for access tokens of one service account, \
        with 'prism me:token --oidc-token ...' in the pipeline; prints its id [prism-auth \
        addition].\n\n\
        At least one condition must pin a stable subject: an exact --claim on sub, \
        repository_id, repository_owner_id, project_id or namespace_id, or a --claim-glob on \
        one of them with a '/' before its first wildcard (repo:acme/* is fine, repo:* is not).\n\n\
        Example (GitHub Actions, main branch of acme/app):\n  \
        prism trust-policies:create --name app-main \\\n    \
        --issuer https://token.actions.githubusercontent.com --audience https://auth.example.com \\\n    \
        --service-account deployer --claim sub=repo:acme/app:ref:refs/heads/main"
    )]
    TrustPoliciesCreate {
        #[command(flatten)]
        flags: trust_policies::CreateFlags,
    },
    /// Change a trust policy; prints its id. Changing its issuer, audience, conditions,
    /// service account or scopes, or disabling it, ends the access tokens it issued
    /// [prism-auth addition]
    #[command(name = "trust-policies:update")]
    TrustPoliciesUpdate {
        #[command(flatten)]
        flags: trust_policies::UpdateFlags,
    },
    /// Delete a trust policy; the access tokens it issued stop working [prism-auth addition]
    #[command(name = "trust-policies:delete")]
    TrustPoliciesDelete {
        /// Id of the trust policy (see trust-policies:list)
        id: String,
    },
    /// List your organization's resource servers (services that introspect access tokens)
    /// [prism-auth addition]
    #[command(name = "resource-servers:list")]
    ResourceServersList {
        #[command(flatten)]
        table: TableFlags,
    },
    /// Register a resource server that may ask /oauth/introspect about your organization's
    /// access tokens; prints {"client_id": ..., "client_secret": ...}, the secret once
    /// [prism-auth addition]
    #[command(name = "resource-servers:create")]
    ResourceServersCreate {
        /// Its name, unique in the organization
        #[arg(short, long)]
        name: String,
        /// What it is
        #[arg(short, long)]
        description: Option<String>,
    },
    /// Give a resource server a new client secret (the old one stops working); prints its
    /// credentials [prism-auth addition]
    #[command(name = "resource-servers:rotate-secret")]
    ResourceServersRotateSecret {
        /// Its client id or name (see resource-servers:list)
        id: String,
    },
    /// Delete a resource server; its client secret stops working [prism-auth addition]
    #[command(name = "resource-servers:delete")]
    ResourceServersDelete {
        /// Its client id or name (see resource-servers:list)
        id: String,
    },
    /// List the profiles in the config file
    #[command(name = "profiles:list")]
    ProfilesList {
        #[command(flatten)]
        table: TableFlags,
    },
    /// Make a profile the default
    #[command(name = "profiles:use")]
    ProfilesUse {
        /// Profile name
        name: String,
    },
    /// Delete a profile from the config file
    #[command(name = "profiles:delete")]
    ProfilesDelete {
        /// Profile name
        name: String,
    },
    /// Print a shell completion script
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
}

fn run(cli: Cli) -> error::Result<()> {
    let ctx = session::Ctx {
        http: http::Http::new(
            http::ExtraCa::find(cli.ca_cert),
            cli.print_requests || env::flag(env::PRISMATIC_PRINT_REQUESTS),
        ),
        profile: cli.profile.or_else(|| env::var(env::PRISM_PROFILE)),
        quiet: cli.quiet || env::flag(env::PRISM_QUIET),
    };
    match cli.command {
        Command::Login { force, url, device } => commands::login(&ctx, force, url, device),
        Command::Logout { browser } => commands::logout(&ctx, browser),
        Command::Me => commands::me(&ctx),
        Command::MeToken { kind, oidc } => commands::me_token(&ctx, kind, &oidc),
        Command::MeTokenRevoke { no_confirm } => commands::me_token_revoke(&ctx, no_confirm),
        Command::MeTokensList { table } => commands::me_tokens_list(&ctx, &table),
        Command::MeTokensRevoke { id } => commands::me_tokens_revoke(&ctx, &id),
        Command::MeTokensCreate {
            name,
            scopes,
            expires_in,
            expires_at,
            service_account,
        } => {
            let expires_at = match expires_in {
                Some(lifetime) => Some(expiry::expires_at_after(lifetime)?),
                None => expires_at,
            };
            commands::me_tokens_create(
                &ctx,
                &commands::NewToken {
                    name: &name,
                    scopes: &scopes,
                    expires_at: expires_at.as_deref(),
                    service_account: service_account.as_deref(),
                },
            )
        }
        Command::ServiceAccountsList { table } => commands::service_accounts_list(&ctx, &table),
        Command::ServiceAccountsCreate {
            name,
            role,
            description,
        } => commands::service_accounts_create(&ctx, &name, &role, description.as_deref()),
        Command::ServiceAccountsDelete { id } => commands::service_accounts_delete(&ctx, &id),
        Command::UsersList { table } => commands::users_list(&ctx, &table),
        Command::UsersRoles { table } => commands::users_roles(&ctx, &table),
        Command::UsersCreate { email, role, name } => {
            commands::users_create(&ctx, &email, &role, name.as_deref())
        }
        Command::UsersDelete { user } => commands::users_delete(&ctx, &user),
        Command::UsersUpdate {
            user,
            name,
            phone,
            dark_mode,
            dark_mode_os_sync,
        } => commands::users_update(
            &ctx,
            &user,
            name.as_deref(),
            phone.as_deref(),
            dark_mode.then_some(true),
            dark_mode_os_sync.then_some(true),
        ),
        Command::TrustPoliciesList { table } => trust_policies::list(&ctx, &table),
        Command::TrustPoliciesCreate { flags } => trust_policies::create(&ctx, &flags),
        Command::TrustPoliciesUpdate { flags } => trust_policies::update(&ctx, &flags),
        Command::TrustPoliciesDelete { id } => trust_policies::delete(&ctx, &id),
        Command::ResourceServersList { table } => resource_servers::list(&ctx, &table),
        Command::ResourceServersCreate { name, description } => {
            resource_servers::create(&ctx, &name, description.as_deref())
        }
        Command::ResourceServersRotateSecret { id } => resource_servers::rotate_secret(&ctx, &id),
        Command::ResourceServersDelete { id } => resource_servers::delete(&ctx, &id),
        Command::ProfilesList { table } => commands::profiles_list(&table),
        Command::ProfilesUse { name } => commands::profiles_use(&ctx, &name),
        Command::ProfilesDelete { name } => commands::profiles_delete(&ctx, &name),
        Command::Completion { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "prism", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
