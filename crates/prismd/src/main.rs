//! The `prismd` binary: `serve`, and the operator's commands (`users`, `tokens`) that work on
//! the same database as the server, also while it runs.

mod admin;
mod reference;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use prismd::config::ServeConfig;
use prismd::domain::limits::LimitSettings;
use prismd::mail::{Mail, Mailer};
use prismd::oidc::OidcSettings;
use prismd::store::{AttemptPolicy, Backend, CacheSettings, PgPoolSettings};
use prismd::telemetry::{self, LogFormat};
use prismd::tls::TlsSource;
use prismd::tokens::at_rest::{CURRENT_KEK, KekSource, NEW_KEK};
use prismd::tokens::{AtRest, KeyEncryptionKey, RetiredKeyWindow};

/// mimalloc, not glibc's malloc: a refresh exchange makes about a hundred small allocations
/// (the request, its headers, the claims, the JSON, the log line), and glibc's malloc and free
/// were about 9% of its instructions under callgrind; mimalloc's per-thread free lists cost a
/// fraction of that, and a multi-threaded server's heap does not spread over glibc's arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "prismd",
    version,
    about = "Prismatic-compatible API authentication server"
)]
struct Cli {
    /// Directory of the SQLite database (`prismd.db`, created with mode 0600 in a 0700
    /// directory) unless --database-url names another, of the first Owner's password file
    /// (`initial-owner-password`) and of the development CA of --dev-tls (`ca.pem`).
    #[arg(long, env = "PRISMD_DATA_DIR", default_value = "./data", global = true)]
    data_dir: PathBuf,

    /// Database to use: `sqlite:<file>` or `postgres://user[:password]@host:port/database`;
    /// every command takes it. Logs and errors show only its host, port and database, never
    /// the password. Default: SQLite in --data-dir.
    #[arg(
        long,
        env = "PRISMD_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    database_url: Option<String>,

    /// Format of the log lines on stderr. The level is set with PRISMD_LOG (for example `info`
    /// or `debug`), a variable of the environment only.
    #[arg(
        long,
        env = "PRISMD_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,

    /// Organization (tenant id) that `users` and `tokens` work on; default: the first one.
    /// `audit` takes it as its --org.
    #[arg(long, env = "PRISMD_TENANT_ID", global = true)]
    tenant_id: Option<String>,

    /// File holding the key encryption key that seals the private signing keys in the
    /// database: 32 random bytes as base64 or hex (`openssl rand -base64 32`); surrounding
    /// whitespace and the trailing newline are ignored. The key itself can be given in
    /// PRISMD_KEY_ENCRYPTION_KEY instead; setting both is an error. Read by `serve` and `keys`.
    #[arg(long, env = "PRISMD_KEY_ENCRYPTION_KEY_FILE", global = true)]
    key_encryption_key_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Add, list and remove users, set their passwords, make invitation links.
    #[command(subcommand)]
    Users(admin::UsersCommand),
    /// Mint refresh tokens.
    #[command(subcommand)]
    Tokens(admin::TokensCommand),
    /// Add, list and remove service accounts (non-human members with their own tokens).
    #[command(subcommand)]
    ServiceAccounts(admin::ServiceAccountsCommand),
    /// Add, list, disable, enable and remove trust policies (keyless CI: a pipeline's OIDC
    /// token acts as a service account).
    #[command(subcommand)]
    TrustPolicies(admin::TrustPoliciesCommand),
    /// Register, list, re-key and remove resource servers (services of your own that
    /// introspect access tokens at /oauth/introspect).
    #[command(subcommand)]
    ResourceServers(admin::ResourceServersCommand),
    /// Create and list organizations (tenants).
    #[command(subcommand)]
    Orgs(admin::OrgsCommand),
    /// Print security events, newest first, one JSON object per line (`id`, `at`, `action`,
    /// `actor`, `orgId`, `subjectUserId`, `address`, `userAgent`, `detail`).
    Audit(admin::AuditArgs),
    /// Rotate, re-seal and list the signing keys of access tokens.
    #[command(subcommand)]
    Keys(admin::KeysCommand),
    /// Send one test message with the email settings `serve` would use (--smtp-url,
    /// --mail-from); prints `sent`, or the error and exits with 1.
    MailTest(MailTestArgs),
    /// Print generated documentation (hidden: for the repository's docs/).
    #[command(subcommand, hide = true)]
    Reference(ReferenceCommand),
}

#[derive(Subcommand)]
enum ReferenceCommand {
    /// Print docs/configuration.md: every flag of every command, its environment variable,
    /// default and help, and the variables read from the environment only.
    Configuration,
}

/// The log level when PRISMD_LOG is not set: `serve`'s, and every other command's.
const SERVE_LOG_LEVEL: &str = "info";
const COMMAND_LOG_LEVEL: &str = "warn";

/// Settings read from the environment only (never a flag: a command line is visible to every
/// local user); the configuration reference lists them from here.
const ENVIRONMENT_ONLY: &[reference::EnvOnly] = &[
    reference::EnvOnly {
        // Read by telemetry::init.
        name: "PRISMD_LOG",
        read_by: "every command",
        default: "`info` for `serve`, `warn` for the other commands",
        meaning: "Log filter in `tracing` syntax, for example `debug` or `info,prismd=debug`. \
                  `info,prismd::access=off` drops the one-line-per-request access log (a few \
                  per cent of CPU at full load; `/metrics` still counts every request). hyper's \
                  and h2's wire-level logs stay at `info` unless named (`hyper=trace`). No \
                  level logs a secret.",
    },
    reference::EnvOnly {
        name: CURRENT_KEK.value_variable,
        read_by: "`serve`, `keys`",
        default: "none: private signing keys are stored plain",
        meaning: "The key encryption key that seals the private signing keys in the database \
                  with AES-256-GCM: 32 random bytes as base64 (`openssl rand -base64 32`) or 64 \
                  hex digits (`openssl rand -hex 32`); anything else is refused at start. Or \
                  give a file with --key-encryption-key-file \
                  (`PRISMD_KEY_ENCRYPTION_KEY_FILE`); setting both is an error. Every replica \
                  needs the same one, and a start without it on sealed keys is refused.",
    },
    reference::EnvOnly {
        name: NEW_KEK.value_variable,
        read_by: "`keys rewrap`",
        default: "",
        meaning: "The new key encryption key `keys rewrap` re-seals the signing keys with, in \
                  the same format and with the same rules; or a file with \
                  --new-key-encryption-key-file (`PRISMD_NEW_KEY_ENCRYPTION_KEY_FILE`).",
    },
];

#[derive(Args)]
struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "PRISMD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Public base URL of this server: the `iss` of every token, and tokens are bound to it,
    /// so set it in production (the same on every replica). Default: `http(s)://<listen>`.
    #[arg(long, env = "PRISMD_ISSUER")]
    issuer: Option<String>,

    /// PEM certificate chain to serve HTTPS with (needs --tls-key). Without it or --dev-tls
    /// the server speaks plain HTTP, for a TLS-terminating proxy in front of it.
    #[arg(
        long,
        env = "PRISMD_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "dev_tls"
    )]
    tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "PRISMD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Serve HTTPS with a development CA made in the data directory (`ca.pem`, reused on later
    /// starts) and a certificate for `localhost`, `127.0.0.1`, `::1` and the issuer's host.
    /// Clients trust it with `NODE_EXTRA_CA_CERTS=<data-dir>/ca.pem` or
    /// `curl --cacert <data-dir>/ca.pem`.
    #[arg(long, env = "PRISMD_DEV_TLS")]
    dev_tls: bool,

    /// The `aud` of access tokens. Default: `<issuer>/api`.
    #[arg(long, env = "PRISMD_AUDIENCE")]
    audience: Option<String>,

    #[command(flatten)]
    key_window: KeyWindowArgs,

    /// Rotate the signing key automatically once the active key is this old, for example
    /// `30d`. At least `1h`: a shorter period is refused at start, because each rotation keeps
    /// one more public key in the JWKS for an access-token lifetime. `0s` (the default): only
    /// `prismd keys rotate` rotates. Give every replica the same period.
    #[arg(long, env = "PRISMD_KEY_ROTATION_PERIOD", default_value = "0s", value_parser = parse_wait)]
    key_rotation_period: Duration,

    /// The shortest --key-rotation-period accepted. Hidden: only tests lower it.
    #[arg(long, default_value = "1h", value_parser = parse_duration, hide = true)]
    key_rotation_period_floor: Duration,

    /// Time between background cleanup rounds, the first one an interval after start
    /// (expired codes, sessions and invitations, dead refresh tokens, old audit events,
    /// retired signing keys, spent limit counters).
    #[arg(long, env = "PRISMD_CLEANUP_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    cleanup_interval: Duration,

    /// Time between checks for named tokens that expire within 7 days; each one's owner is
    /// mailed once (only with --smtp-url). The first check runs at start.
    #[arg(long, env = "PRISMD_EXPIRY_NOTICE_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    expiry_notice_interval: Duration,

    /// How long dead refresh tokens (revoked, or of a removed user) and redeemed authorization
    /// codes are kept before cleanup deletes them; until then a dead token gets the precise
    /// "revoked" answer, and a replayed code still revokes what it issued.
    #[arg(long, env = "PRISMD_DEAD_TOKEN_RETENTION", default_value = "30d", value_parser = parse_duration)]
    dead_token_retention: Duration,

    /// How long audit events are kept.
    #[arg(long, env = "PRISMD_AUDIT_RETENTION", default_value = "400d", value_parser = parse_duration)]
    audit_retention: Duration,

    /// Read connections to SQLite (writes use one connection of their own).
    #[arg(long, env = "PRISMD_DB_READERS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    db_readers: u32,

    /// Most connections to PostgreSQL this process opens; one more is held for LISTEN. All
    /// replicas together, plus admin commands, must stay under PostgreSQL's max_connections.
    #[arg(long, env = "PRISMD_DB_POOL_SIZE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    db_pool_size: u32,

    /// How long a request waits for a PostgreSQL connection before it fails (with 503). While
    /// the database is unreachable, requests fail at once instead (circuit breaker).
    #[arg(long, env = "PRISMD_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    db_acquire_timeout: Duration,

    /// Longest time a cached token standing (a refresh grant, an access token's principal) is
    /// trusted even while the change feed is healthy: a last-resort bound, since a broken or
    /// silent feed switches the cache off within 3 s. `0s` turns the cache off (every request
    /// reads the database).
    #[arg(long, env = "PRISMD_CACHE_TTL", default_value = "30s", value_parser = parse_wait)]
    cache_ttl: Duration,

    /// Most cached refresh grants (and, separately, access-token principals); about 1 KiB an
    /// entry.
    #[arg(long, env = "PRISMD_CACHE_CAPACITY", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    cache_capacity: u64,

    /// On start: how long to keep retrying while PostgreSQL cannot be reached (for example
    /// still starting) before giving up with an error; `0s` gives up after one try.
    #[arg(long, env = "PRISMD_DB_STARTUP_WAIT", default_value = "30s", value_parser = parse_wait)]
    db_startup_wait: Duration,

    /// Longest time a request may take before it is answered with 408.
    #[arg(long, env = "PRISMD_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,

    /// Longest time a client may take to send a request's headers; a client that has not sent
    /// them by then is disconnected.
    #[arg(long, env = "PRISMD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,

    /// A connection with no request in flight for this long is closed (HTTP/2 with a GOAWAY).
    /// Idle HTTP/1 connections are closed sooner when --header-read-timeout is shorter: that
    /// timer runs from the end of one response to the next request's headers.
    #[arg(long, env = "PRISMD_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Most connections open at once on the main listener; one more is closed as soon as it
    /// is accepted (counted in prismd_http_connections_refused_total). Keep it below the
    /// process's open-file limit (`ulimit -n`).
    #[arg(long, env = "PRISMD_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,

    /// After SIGTERM (or Ctrl-C), how long in-flight requests may take to finish; then pending
    /// last-use records are written and the database is closed.
    #[arg(long, env = "PRISMD_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    shutdown_grace: Duration,

    /// Name of the organization created on the first start.
    #[arg(long, env = "PRISMD_ORG_NAME", default_value = "My Organization")]
    org_name: String,

    /// Email of the Owner account created on the first start.
    #[arg(long, env = "PRISMD_OWNER_EMAIL", default_value = "owner@localhost")]
    owner_email: String,

    /// The `returnTo` URLs /logout may redirect the browser to, comma-separated; loopback URLs
    /// always may, anything else gets a "signed out" page.
    #[arg(
        long,
        env = "PRISMD_LOGOUT_RETURN_TO",
        value_delimiter = ',',
        default_value = "https://prismatic.io"
    )]
    logout_return_to: Vec<String>,

    /// Serve the Prometheus metrics (/metrics) on this address only, over plain HTTP, instead
    /// of on the main listener: keeps them off the public port.
    #[arg(long, env = "PRISMD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,

    #[command(flatten)]
    limits: LimitArgs,

    #[command(flatten)]
    mail: MailArgs,

    #[command(flatten)]
    oidc: OidcArgs,

    /// What the identity headers of forward auth (`/auth/verify`: `User-Id`, `Email`, `Role`,
    /// `Scopes`, ...) and its required-scope header start with. Configure the proxy to strip
    /// headers with this prefix from what clients send.
    #[arg(long, env = "PRISMD_FORWARD_AUTH_HEADER_PREFIX", default_value = "X-Prism-", value_parser = parse_header_prefix)]
    forward_auth_header_prefix: String,

    /// Reverse proxies (CIDR blocks or addresses, comma-separated) whose `Forwarded` or
    /// `X-Forwarded-For` header names the client, for the per-address limits and the audit
    /// trail: the client is the nearest address in the chain that is not one of them. None by
    /// default: without it those headers are ignored, since any client can send them.
    #[arg(long, env = "PRISMD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    trusted_proxies: Vec<ipnet::IpNet>,

    /// `/api` requests a second each member or service account may make, with a burst of one
    /// second's worth; beyond it 429 with `Retry-After`. Counted per process: with several
    /// replicas behind a load balancer a caller may get up to this much from each. 0: no limit.
    #[arg(long, env = "PRISMD_API_RATE_LIMIT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    api_rate_limit: u32,
}

/// A header name prefix: letters, digits and `-`.
/// A trusted proxy: a CIDR block (`10.0.0.0/8`, `fd00::/8`) or one address (`127.0.0.1`).
fn parse_proxy(input: &str) -> Result<ipnet::IpNet, String> {
    let input = input.trim();
    input
        .parse::<ipnet::IpNet>()
        .or_else(|_| input.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            format!("{input:?} is neither an address nor a CIDR block (e.g. 10.0.0.0/8, ::1)")
        })
}

fn parse_header_prefix(input: &str) -> Result<String, String> {
    if input.is_empty() || !input.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("a header name prefix has letters, digits and '-' only, e.g. X-Prism-".into());
    }
    Ok(input.to_owned())
}

/// How the OIDC tokens of keyless CI (trust policies) are verified.
#[derive(Args)]
struct OidcArgs {
    /// Accept trust policies whose issuer (and its JWKS) is plain `http://`. For tests and
    /// local experiments only: an issuer's keys fetched without TLS can be swapped by anyone
    /// on the path.
    #[arg(long, env = "PRISMD_OIDC_ALLOW_HTTP_ISSUERS")]
    oidc_allow_http_issuers: bool,

    /// PEM file of CA certificates to trust for OIDC issuers (a self-hosted GitLab, a
    /// Kubernetes API server), besides the public web CAs.
    #[arg(long, env = "PRISMD_OIDC_CA_FILE")]
    oidc_ca_file: Option<PathBuf>,

    /// Age after which an issuer's cached signing keys are fetched again.
    #[arg(long, env = "PRISMD_OIDC_JWKS_REFRESH", default_value = "5m", value_parser = parse_duration)]
    oidc_jwks_refresh: Duration,

    /// While an issuer cannot be reached, its cached keys keep verifying until they are this
    /// old; after that its tokens get 503.
    #[arg(long, env = "PRISMD_OIDC_JWKS_MAX_AGE", default_value = "1h", value_parser = parse_duration)]
    oidc_jwks_max_age: Duration,

    /// Least time between two fetches of one issuer's keys: a token with an unknown key id
    /// fetches them again at most this often.
    #[arg(long, env = "PRISMD_OIDC_JWKS_REFETCH_INTERVAL", default_value = "5s", value_parser = parse_wait)]
    oidc_jwks_refetch_interval: Duration,
}

impl OidcArgs {
    fn settings(&self) -> anyhow::Result<OidcSettings> {
        let extra_ca_pem = match &self.oidc_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|err| {
                anyhow::anyhow!("cannot read --oidc-ca-file {}: {err}", path.display())
            })?),
            None => None,
        };
        if self.oidc_allow_http_issuers {
            tracing::warn!(
                "--oidc-allow-http-issuers: trust policies may name plain-HTTP issuers, whose \
                 keys anyone on the network path can replace; never use this in production"
            );
        }
        Ok(OidcSettings {
            allow_http_issuers: self.oidc_allow_http_issuers,
            jwks_refresh: self.oidc_jwks_refresh,
            jwks_max_age: self.oidc_jwks_max_age,
            unknown_kid_refetch_interval: self.oidc_jwks_refetch_interval,
            extra_ca_pem,
            ..OidcSettings::default()
        })
    }
}

/// Outgoing email: `serve` and `mail-test` take the same settings.
#[derive(Args)]
struct MailArgs {
    /// SMTP server that sends email (invitations, password resets):
    /// `smtp://[user:password@]host[:port]` (STARTTLS required, port 587),
    /// `?tls=opportunistic` (STARTTLS if offered), `?tls=none` (plain text, port 25; for a
    /// relay on this machine), or `smtps://...` (TLS from the first byte, port 465).
    /// %-encode special characters of the user and password. Needs --mail-from. Logs and
    /// errors show it with the password as `***`; prefer the variable to the flag, which every
    /// local user can see. Without it no email is sent.
    #[arg(long, env = "PRISMD_SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,

    /// Sender of every message: `auth@example.com` or `Prism Auth <auth@example.com>`. Needs
    /// --smtp-url.
    #[arg(long, env = "PRISMD_MAIL_FROM")]
    mail_from: Option<String>,

    /// PEM file of CA certificates to trust for the SMTP server's certificate, besides the
    /// public web CAs (Mozilla's list, built in).
    #[arg(long, env = "PRISMD_SMTP_CA_FILE")]
    smtp_ca_file: Option<PathBuf>,
}

impl MailArgs {
    /// The mailer, `None` when neither --smtp-url nor --mail-from is set; one without the
    /// other is an error, not a server that silently sends nothing.
    fn mailer(&self) -> anyhow::Result<Option<Mailer>> {
        match (&self.smtp_url, &self.mail_from) {
            (None, None) => {
                if self.smtp_ca_file.is_some() {
                    anyhow::bail!(
                        "--smtp-ca-file (PRISMD_SMTP_CA_FILE) is set but --smtp-url \
                         (PRISMD_SMTP_URL) is not"
                    );
                }
                Ok(None)
            }
            (Some(_), None) => anyhow::bail!(
                "--smtp-url (PRISMD_SMTP_URL) is set but --mail-from (PRISMD_MAIL_FROM) is not: \
                 give both to send email, or neither"
            ),
            (None, Some(_)) => anyhow::bail!(
                "--mail-from (PRISMD_MAIL_FROM) is set but --smtp-url (PRISMD_SMTP_URL) is not: \
                 give both to send email, or neither"
            ),
            (Some(url), Some(from)) => Ok(Some(Mailer::with_ca_file(
                url,
                from,
                self.smtp_ca_file.as_deref(),
            )?)),
        }
    }
}

#[derive(Args)]
struct MailTestArgs {
    /// Address to send the test message to.
    #[arg(long)]
    to: String,

    #[command(flatten)]
    mail: MailArgs,
}

/// Abuse limits: failures counted per key (shared by every replica on one database); the
/// failure that reaches a threshold locks its key for `--limit-lock`, each failure after a
/// lock has ended (within the window) locks again for twice as long, up to `--limit-max-lock`.
#[derive(Debug, Args)]
struct LimitArgs {
    /// Failed sign-ins of one account (browser sign-in and device page, from any address)
    /// that lock it.
    #[arg(long, env = "PRISMD_LOGIN_ACCOUNT_MAX_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    login_account_max_failures: u32,

    /// Failed sign-ins from one address, any account, that lock the address.
    #[arg(long, env = "PRISMD_LOGIN_ADDRESS_MAX_FAILURES", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    login_address_max_failures: u32,

    /// Unknown or malformed refresh tokens from one address that make further invalid ones
    /// answer 429 (valid tokens from that address are never refused).
    #[arg(long, env = "PRISMD_REFRESH_ADDRESS_MAX_FAILURES", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    refresh_address_max_failures: u32,

    /// Wrong device user codes from one address that lock the device page for it.
    #[arg(long, env = "PRISMD_DEVICE_ADDRESS_MAX_FAILURES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    device_address_max_failures: u32,

    /// Most device logins (`/oauth/device/code`) pending at once on the whole server; beyond
    /// it new ones get 429 until some are approved, denied or expire (10 minutes).
    #[arg(long, env = "PRISMD_DEVICE_CODES_MAX", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    device_codes_max: u32,

    /// How long failures are counted, from the first one.
    #[arg(long, env = "PRISMD_LIMIT_WINDOW", default_value = "15m", value_parser = parse_duration)]
    limit_window: Duration,

    /// The first lock once a threshold is reached; each failure after a lock has ended (still
    /// within the window) locks again for twice as long, up to --limit-max-lock.
    #[arg(long, env = "PRISMD_LIMIT_LOCK", default_value = "1m", value_parser = parse_duration)]
    limit_lock: Duration,

    /// The longest lock.
    #[arg(long, env = "PRISMD_LIMIT_MAX_LOCK", default_value = "15m", value_parser = parse_duration)]
    limit_max_lock: Duration,
}

impl LimitArgs {
    fn settings(&self) -> LimitSettings {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let policy = |max_failures: u32| AttemptPolicy {
            max_failures: i64::from(max_failures),
            window_ms: ms(self.limit_window),
            lock_ms: ms(self.limit_lock),
            max_lock_ms: ms(self.limit_max_lock).max(ms(self.limit_lock)),
        };
        LimitSettings {
            login_account: policy(self.login_account_max_failures),
            login_address: policy(self.login_address_max_failures),
            refresh_address: policy(self.refresh_address_max_failures),
            device_address: policy(self.device_address_max_failures),
            // Reset mails are few by nature: fixed, not flags (docs/security.md, "Limits").
            reset_account: policy(3),
            reset_address: policy(10),
            device_start_address: AttemptPolicy {
                max_failures: prismd::domain::limits::DEVICE_STARTS_PER_ADDRESS,
                ..policy(1)
            },
            live_device_codes: i64::from(self.device_codes_max),
        }
    }
}

/// The settings that decide how long a retired signing key keeps verifying; `serve` and
/// `keys list` take the same ones.
#[derive(Args, Clone, Copy)]
pub struct KeyWindowArgs {
    /// Lifetime of access tokens, for example `7d`, `12h` or `15m`; the same on every replica.
    #[arg(long, env = "PRISMD_ACCESS_TOKEN_TTL", default_value = "7d", value_parser = parse_duration)]
    pub access_token_ttl: Duration,

    /// How often a running server re-reads the signing keys (picks up a rotation).
    #[arg(long, env = "PRISMD_KEY_RELOAD_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub key_reload_interval: Duration,

    /// Extra time a retired signing key keeps verifying after the access-token lifetime and one
    /// reload interval, for clock differences between replicas.
    #[arg(long, env = "PRISMD_KEY_RETIRE_MARGIN", default_value = "60s", value_parser = parse_duration)]
    pub key_retire_margin: Duration,
}

impl KeyWindowArgs {
    pub fn window(&self) -> RetiredKeyWindow {
        RetiredKeyWindow {
            access_token_ttl: self.access_token_ttl,
            reload_interval: self.key_reload_interval,
            margin: self.key_retire_margin,
        }
    }
}

fn parse_duration(input: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(input).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

/// A duration that may be zero.
fn parse_wait(input: &str) -> Result<Duration, String> {
    humantime::parse_duration(input).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Reference(ReferenceCommand::Configuration) = cli.command {
        print!("{}", configuration_reference());
        return ExitCode::SUCCESS;
    }
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        SERVE_LOG_LEVEL
    } else {
        COMMAND_LOG_LEVEL
    };
    telemetry::init(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if let Command::Serve(args) = cli.command {
            let at_rest = key_at_rest(&CURRENT_KEK, cli.key_encryption_key_file.as_deref())?;
            return run_server(cli.data_dir, cli.database_url, at_rest, *args).await;
        }
        if let Command::MailTest(args) = cli.command {
            return mail_test(args).await;
        }
        let backend = Backend::from_url(cli.database_url.as_deref(), &cli.data_dir)?;
        match cli.command {
            // Handled above.
            Command::Serve(_) | Command::Reference(_) | Command::MailTest(_) => Ok(()),
            Command::Users(command) => {
                admin::users(&backend, &cli.data_dir, cli.tenant_id.as_deref(), command).await
            }
            Command::Tokens(command) => {
                admin::tokens(&backend, cli.tenant_id.as_deref(), command).await
            }
            Command::ServiceAccounts(command) => {
                admin::service_accounts(&backend, cli.tenant_id.as_deref(), command).await
            }
            Command::TrustPolicies(command) => {
                admin::trust_policies(&backend, cli.tenant_id.as_deref(), command).await
            }
            Command::ResourceServers(command) => {
                admin::resource_servers(&backend, cli.tenant_id.as_deref(), command).await
            }
            Command::Orgs(command) => admin::orgs(&backend, command).await,
            Command::Audit(args) => admin::audit(&backend, cli.tenant_id.as_deref(), args).await,
            Command::Keys(command) => {
                let at_rest = key_at_rest(&CURRENT_KEK, cli.key_encryption_key_file.as_deref())?;
                admin::keys(&backend, &at_rest, command).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", render_error(&err));
            ExitCode::FAILURE
        }
    }
}

/// The Markdown of docs/configuration.md.
fn configuration_reference() -> String {
    use clap::CommandFactory;
    reference::configuration(&Cli::command(), ENVIRONMENT_ONLY)
}

/// The error and its causes on one line. Most of our error messages already embed their
/// cause's text, so a cause is appended only when the line does not say it yet; otherwise a
/// read-only disk would be reported three times over.
fn render_error(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// How private signing keys are stored, from `source`'s variable (PRISMD_KEY_ENCRYPTION_KEY;
/// read from the environment only, never a flag: a command line is visible to every local
/// user) or its key file.
pub fn key_at_rest(source: &KekSource, file: Option<&std::path::Path>) -> anyhow::Result<AtRest> {
    let value = match std::env::var(source.value_variable) {
        Ok(value) => Some(value),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(prismd::tokens::KeyError::InvalidKek {
                variable: source.value_variable,
                reason: "it is not valid text".into(),
            }
            .into());
        }
    };
    let kek = KeyEncryptionKey::from_value_or_file(source, value.as_deref(), file)?;
    Ok(AtRest::from_kek(kek))
}

/// The automatic rotation period: `None` when off; refused below `floor` (1 h) because every
/// rotation keeps one more public key in the JWKS for an access-token lifetime.
fn rotation_period(period: Duration, floor: Duration) -> anyhow::Result<Option<Duration>> {
    if period.is_zero() {
        return Ok(None);
    }
    if period < floor {
        anyhow::bail!(
            "--key-rotation-period (PRISMD_KEY_ROTATION_PERIOD) is {}, shorter than {}: each \
             rotation keeps another public key in the JWKS until the tokens it signed expire; \
             use {} or more (for example 30d), or 0s to rotate only with `prismd keys rotate`",
            humantime::format_duration(period),
            humantime::format_duration(floor),
            humantime::format_duration(floor),
        );
    }
    Ok(Some(period))
}

/// `prismd mail-test`: one message through the configured server, so an operator sees at
/// once whether the SMTP settings work (the error names the server, never the password).
async fn mail_test(args: MailTestArgs) -> anyhow::Result<()> {
    let Some(mailer) = args.mail.mailer()? else {
        anyhow::bail!(
            "mail-test needs --smtp-url (PRISMD_SMTP_URL) and --mail-from (PRISMD_MAIL_FROM)"
        );
    };
    // The error is printed below; the server's "mail not sent" warning would repeat it.
    use tracing::instrument::WithSubscriber;
    mailer
        .send(Mail {
            to: args.to,
            subject: "prism-auth test message".into(),
            text: format!(
                "This is a test message from prism-auth (`prismd mail-test`).\n\n\
                 It went through {} from {}: invitations and password resets will be sent \
                 the same way.\n",
                mailer.shown_url(),
                mailer.from()
            ),
        })
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await?;
    println!("sent");
    Ok(())
}

async fn run_server(
    data_dir: PathBuf,
    database_url: Option<String>,
    key_at_rest: AtRest,
    args: ServeArgs,
) -> anyhow::Result<()> {
    let key_rotation_period =
        rotation_period(args.key_rotation_period, args.key_rotation_period_floor)?;
    let mail = args.mail.mailer()?.map(Arc::new);
    match &mail {
        Some(mailer) => tracing::info!(
            smtp = %mailer.shown_url(),
            from = %mailer.from(),
            "email is sent through the SMTP server"
        ),
        None => tracing::info!(
            "no --smtp-url: no email is sent; invitation links are shown to the inviting Admin"
        ),
    }
    let tls = match (args.tls_cert, args.tls_key, args.dev_tls) {
        (Some(cert), Some(key), _) => Some(TlsSource::Files { cert, key }),
        (_, _, true) => Some(TlsSource::Dev),
        _ => None,
    };
    let config = ServeConfig {
        issuer: args.issuer,
        tls,
        header_read_timeout: args.header_read_timeout,
        connections: prismd::config::ConnectionSettings {
            max_connections: args.max_connections,
            idle_timeout: args.idle_timeout,
        },
        shutdown_grace: args.shutdown_grace,
        audience: args.audience,
        access_token_ttl: args.key_window.access_token_ttl,
        key_reload_interval: args.key_window.key_reload_interval,
        key_retire_margin: args.key_window.key_retire_margin,
        key_rotation_period,
        key_at_rest,
        cleanup_interval: args.cleanup_interval,
        expiry_notice_interval: args.expiry_notice_interval,
        dead_token_retention: args.dead_token_retention,
        audit_retention: args.audit_retention,
        db_readers: args.db_readers,
        db_pool: PgPoolSettings {
            max_connections: args.db_pool_size,
            acquire_timeout: args.db_acquire_timeout,
            startup_wait: args.db_startup_wait,
        },
        database_url,
        cache: CacheSettings {
            ttl: args.cache_ttl,
            capacity: usize::try_from(args.cache_capacity).unwrap_or(usize::MAX),
        },
        request_timeout: args.request_timeout,
        org_name: args.org_name,
        owner_email: args.owner_email,
        logout_return_to: args.logout_return_to,
        metrics_listen: args.metrics_listen,
        limits: args.limits.settings(),
        mail,
        oidc: args.oidc.settings()?,
        forward_auth_prefix: args.forward_auth_header_prefix,
        trusted_proxies: args.trusted_proxies,
        api_rate_limit: args.api_rate_limit,
        ..ServeConfig::new(data_dir)
    };
    // Handlers are installed before the listener opens, so a SIGTERM that arrives while the
    // server starts is a graceful stop, not the default kill.
    let shutdown = shutdown_signal()?;
    let listener = std::net::TcpListener::bind(args.listen)
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", args.listen))?;
    prismd::serve(config, listener, shutdown).await?;
    Ok(())
}

/// Installs SIGTERM and SIGINT handlers now; the future completes on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutdown signal received");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The first line where `found` differs from `expected`: (line number, expected, found).
    fn first_difference(expected: &str, found: &str) -> Option<(usize, String, String)> {
        let mut expected_lines = expected.lines();
        let mut found_lines = found.lines();
        for number in 1.. {
            match (expected_lines.next(), found_lines.next()) {
                (None, None) => break,
                (e, f) if e == f => continue,
                (e, f) => {
                    let show = |line: Option<&str>| line.unwrap_or("(end of file)").to_owned();
                    return Some((number, show(e), show(f)));
                }
            }
        }
        (expected != found).then(|| (0, "(line endings differ)".into(), String::new()))
    }

    #[test]
    fn committed_configuration_reference_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| format!("(cannot read {}: {err})", path.display()));
        let stale = first_difference(&configuration_reference(), &committed).map(
            |(line, generated, committed)| {
                format!(
                    "docs/configuration.md is stale; run `{}`\n\
                     first difference, line {line}:\n\
                     generated: {generated}\n\
                     committed: {committed}",
                    reference::REGENERATE
                )
            },
        );
        assert!(stale.is_none(), "{}", stale.unwrap_or_default());
    }

    #[test]
    fn every_variable_the_server_names_is_in_the_reference() -> Result<(), String> {
        let rendered = configuration_reference();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut missing = Vec::new();
        let mut dirs = vec![src];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for entry in entries {
                let path = entry.map_err(|e| e.to_string())?.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|ext| ext != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let mut rest = text.as_str();
                while let Some(start) = rest.find("PRISMD_") {
                    let name: String = rest[start..]
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    rest = &rest[start + name.len()..];
                    // `PRISMD_*` in prose, `PRISMD_KEY_ENCRYPTION_KEY(_FILE)`: not a name.
                    if name.ends_with('_') {
                        continue;
                    }
                    if !rendered.contains(&format!("`{name}`")) {
                        missing.push(format!("{name} ({})", path.display()));
                    }
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "variables named in the code but not in the configuration reference (give them a \
                 clap `env` or add them to ENVIRONMENT_ONLY): {}",
                missing.join(", ")
            ))
        }
    }

    #[test]
    fn documented_log_levels_are_the_ones_used() {
        let log = ENVIRONMENT_ONLY.iter().find(|v| v.name == "PRISMD_LOG");
        assert!(log.is_some_and(|v| v.default
            == format!(
                "`{SERVE_LOG_LEVEL}` for `serve`, `{COMMAND_LOG_LEVEL}` for the other commands"
            )));
    }

    #[test]
    fn the_reference_command_is_hidden() {
        let cli = Cli::command();
        let reference = cli.get_subcommands().find(|s| s.get_name() == "reference");
        assert!(reference.is_some_and(|s| s.is_hide_set()));
        // A section of its own is what a command that is not hidden gets; the header names
        // the command too (`prismd -- reference`, how to regenerate the file), so a search
        // for its name alone would tell nothing.
        let has_section = |rendered: &str| {
            rendered
                .lines()
                .any(|line| line.starts_with("## `prismd reference"))
        };
        assert!(!has_section(&configuration_reference()));
        // Control: the same definition with the command shown does get the section.
        let shown = Cli::command().mut_subcommand("reference", |s| s.hide(false));
        assert!(has_section(&reference::configuration(
            &shown,
            ENVIRONMENT_ONLY
        )));
    }

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
