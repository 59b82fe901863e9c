//! Server settings as the library takes them (the binary fills them from flags and
//! environment variables).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::cleanup::CleanupPolicy;
use crate::domain::limits::LimitSettings;
use crate::mail::Mailer;
use crate::oidc::OidcSettings;
use crate::store::{CacheSettings, OpenOptions, PgPoolSettings};
use crate::tls::TlsSource;
use crate::tokens::{AtRest, RetiredKeyWindow};

/// Everything `serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Holds the SQLite database (unless `database_url` names another place), the first
    /// Owner's password file and development TLS files.
    pub data_dir: PathBuf,
    /// `sqlite:<file>` or `postgres://...`; `None` means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Public base URL, the `iss` of every token. Defaults to `<scheme>://<listen address>`.
    pub issuer: Option<String>,
    /// `aud` of access tokens. Defaults to `<issuer>/api`.
    pub audience: Option<String>,
    /// Serve HTTPS from these certificates; plain HTTP when `None`.
    pub tls: Option<TlsSource>,
    pub access_token_ttl: Duration,
    pub db_readers: u32,
    /// PostgreSQL pool size and how long a request waits for a connection.
    pub db_pool: PgPoolSettings,
    pub request_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// The connection cap and idle timeout of the main listener.
    pub connections: ConnectionSettings,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    pub usage_flush_interval: Duration,
    /// The hot-path cache of token standing; a zero lifetime turns it off.
    pub cache: CacheSettings,
    /// How often the signing keys are re-read from the database, so a rotation reaches this
    /// process even if nothing else tells it.
    pub key_reload_interval: Duration,
    /// Extra time a retired key keeps verifying, beyond the access-token lifetime and one
    /// reload interval, for clock differences between replicas.
    pub key_retire_margin: Duration,
    /// Rotate the signing key automatically once the active one is this old; `None`: only
    /// `prismd keys rotate` rotates.
    pub key_rotation_period: Option<Duration>,
    /// Whether private signing keys are sealed with a key encryption key in the database.
    pub key_at_rest: AtRest,
    /// Time between background cleanup rounds.
    pub cleanup_interval: Duration,
    /// Time between checks for named tokens about to expire (mailed when SMTP is set).
    pub expiry_notice_interval: Duration,
    /// How long dead refresh tokens and redeemed authorization codes are kept.
    pub dead_token_retention: Duration,
    /// How long audit events are kept.
    pub audit_retention: Duration,
    /// Name of the organization created on first start.
    pub org_name: String,
    /// Email of the Owner created on first start.
    pub owner_email: String,
    /// Where `/logout` may send the browser (`returnTo`), besides loopback addresses.
    pub logout_return_to: Vec<String>,
    /// Serve `/metrics` on this address only (plain HTTP), instead of on the main listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Abuse limits on failed logins, device codes and refresh tokens.
    pub limits: LimitSettings,
    /// Outgoing email (`--smtp-url`, `--mail-from`); `None`: no mail is sent.
    pub mail: Option<Arc<Mailer>>,
    /// How keyless CI's OIDC tokens are verified (`--oidc-*`).
    pub oidc: OidcSettings,
    /// What the identity headers of `/auth/verify` start with (`--forward-auth-header-prefix`).
    pub forward_auth_prefix: String,
    /// Reverse proxies whose forwarded client addresses are believed (`--trusted-proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `/api` requests a second per caller (`--api-rate-limit`); 0: no limit.
    pub api_rate_limit: u32,
}

impl ServeConfig {
    /// Defaults for everything but the data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            database_url: None,
            issuer: None,
            audience: None,
            tls: None,
            access_token_ttl: Duration::from_secs(7 * 24 * 3600),
            db_readers: 8,
            db_pool: PgPoolSettings::default(),
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            connections: ConnectionSettings {
                max_connections: 10_000,
                idle_timeout: Duration::from_secs(60),
            },
            shutdown_grace: Duration::from_secs(20),
            usage_flush_interval: Duration::from_secs(5),
            cache: CacheSettings::default(),
            key_reload_interval: Duration::from_secs(30),
            key_retire_margin: Duration::from_secs(60),
            key_rotation_period: None,
            key_at_rest: AtRest::Plain,
            cleanup_interval: Duration::from_secs(10 * 60),
            expiry_notice_interval: Duration::from_secs(3600),
            dead_token_retention: Duration::from_secs(30 * 24 * 3600),
            audit_retention: Duration::from_secs(400 * 24 * 3600),
            org_name: "My Organization".to_owned(),
            owner_email: "owner@localhost".to_owned(),
            logout_return_to: vec!["https://prismatic.io".to_owned()],
            metrics_listen: None,
            limits: LimitSettings::default(),
            mail: None,
            oidc: OidcSettings::default(),
            forward_auth_prefix: "X-Prism-".to_owned(),
            trusted_proxies: Vec::new(),
            api_rate_limit: 100,
        }
    }

    /// Connection settings for whichever backend the URL picks.
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions {
            sqlite_readers: self.db_readers,
            postgres: self.db_pool,
            cache: self.cache,
        }
    }

    /// How long a retired signing key keeps verifying on this server.
    pub fn retired_key_window(&self) -> RetiredKeyWindow {
        RetiredKeyWindow {
            access_token_ttl: self.access_token_ttl,
            reload_interval: self.key_reload_interval,
            margin: self.key_retire_margin,
        }
    }

    /// What background cleanup deletes, and when.
    pub fn cleanup_policy(&self) -> CleanupPolicy {
        CleanupPolicy {
            interval: self.cleanup_interval,
            dead_token_retention: self.dead_token_retention,
            audit_retention: self.audit_retention,
            key_window: self.retired_key_window(),
            attempt_retention: self.limits.longest_window(),
        }
    }

    /// The issuer URL without a trailing slash.
    pub fn issuer_for(&self, local: SocketAddr) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.issuer
            .as_deref()
            .map(|i| i.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("{scheme}://{local}"))
    }
}

/// The main listener's connection limits (`--max-connections`, `--idle-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// Connections beyond this many open ones are closed as soon as they are accepted.
    pub max_connections: u32,
    /// A connection with no request in flight for this long is shut down gracefully.
    pub idle_timeout: Duration,
}
