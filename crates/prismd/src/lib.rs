//! prismd: a self-hosted, Prismatic-compatible API authentication server. This crate is the
//! server as a library (`serve` on any listener, so tests start it on port 0) plus the
//! building blocks the `prismd` binary's admin commands use.

pub mod config;
pub mod domain;
mod files;
pub mod first_start;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod oidc;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum_server::Handle;
use tokio::sync::watch;

use crate::config::ServeConfig;
use crate::domain::auth::{AuthService, TokenSettings};
use crate::domain::{DomainError, now_ms};
use crate::metrics::Metrics;
use crate::store::traits::*;
use crate::store::{Backend, Change, StoreError};
use crate::tokens::{AtRest, KeyError, KeyRing, LiveKeys};

pub use first_start::INITIAL_PASSWORD_FILE;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    /// The database could not be reached on start, even after waiting. `database` names host,
    /// port and database, never the password.
    #[error(
        "cannot reach the database ({database}; retried for {waited}, --db-startup-wait): \
         {cause}; check that it is running and reachable from here, and --database-url"
    )]
    Unreachable {
        database: String,
        waited: String,
        cause: StoreError,
    },
    #[error("cannot load the signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error("first-start setup failed: {0}")]
    Bootstrap(#[from] DomainError),
    #[error("TLS set-up failed: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot load the TLS certificate or key: {0}")]
    TlsLoad(std::io::Error),
    #[error("cannot listen for metrics on {address}: {source}")]
    MetricsListen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("keyless CI set-up failed: {0}")]
    Oidc(#[from] oidc::OidcSetupError),
}

/// Largest request head (request line and headers) a client may send.
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// How often an HTTP/2 peer is pinged, and how long its answer may take before the
/// connection is closed as dead.
const HTTP2_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);
const HTTP2_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs the server on `listener` until `shutdown` completes, then lets in-flight requests
/// finish (up to the configured grace period), writes pending last-use records and closes the
/// database cleanly.
pub async fn serve(
    config: ServeConfig,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    // Operators who keep /metrics off the public port give it a listener of its own; bound
    // first, so a taken address fails the start before the database is touched.
    let metrics_listener = match config.metrics_listen {
        Some(address) => Some(
            std::net::TcpListener::bind(address)
                .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                .map_err(|source| ServeError::MetricsListen { address, source })?,
        ),
        None => None,
    };
    let issuer = config.issuer_for(local);
    let audience = config
        .audience
        .clone()
        .unwrap_or_else(|| format!("{issuer}/api"));

    let backend = Backend::from_url(config.database_url.as_deref(), &config.data_dir)?;
    let store: Arc<dyn Store> = match store::open(&backend, config.open_options()).await {
        Ok(store) => store,
        Err(cause) if cause.is_unreachable() && matches!(backend, Backend::Postgres(_)) => {
            return Err(ServeError::Unreachable {
                database: backend.describe(),
                waited: humantime::format_duration(config.db_pool.startup_wait).to_string(),
                cause,
            });
        }
        Err(err) => return Err(err.into()),
    };
    tracing::info!(database = %backend.describe(), "database ready");
    // With PostgreSQL nothing else creates the data directory, and the first start writes
    // the Owner's password file there.
    files::create_private_dir(&config.data_dir)?;
    first_start::ensure(
        store.as_ref(),
        &config.data_dir,
        &config.org_name,
        &config.owner_email,
    )
    .await?;
    log_identity_upgrade_notices(store.as_ref()).await;
    let key_window = config.retired_key_window();
    let at_rest = &config.key_at_rest;
    // A wrong or missing key encryption key stops the start here, before anything is served.
    let sealed = tokens::keyring::seal_plain_keys(store.as_ref(), at_rest, now_ms()).await?;
    if !sealed.is_empty() {
        tracing::info!(kids = ?sealed, "sealed the stored signing keys with the key encryption key");
    }
    let ring = KeyRing::load_or_create(store.as_ref(), now_ms(), &key_window, at_rest).await?;
    tracing::info!(
        kid = ring.active_kid(),
        encrypted_at_rest = matches!(at_rest, AtRest::Sealed(_)),
        "signing key loaded"
    );
    let keys = Arc::new(LiveKeys::new(
        store.clone(),
        ring,
        key_window,
        at_rest.clone(),
    ));

    let tls = match &config.tls {
        None => None,
        Some(source) => {
            let files = source.files(&config.data_dir, &[issuer_host(&issuer)])?;
            if let Some(ca) = &files.ca {
                tracing::info!(
                    ca = %ca.display(),
                    "development TLS: clients must trust this CA, e.g. NODE_EXTRA_CA_CERTS={0} for \
                     the official prism CLI, or curl --cacert {0}",
                    ca.display()
                );
            }
            let loaded =
                axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
                    .await
                    .map_err(ServeError::TlsLoad)?;
            Some(loaded)
        }
    };

    // Every process hears every committed change: the store's cache drops what a change makes
    // stale, and a key rotation anywhere reloads the key ring here.
    let follower = tokio::spawn(follow_changes(store.clone(), keys.clone()));

    let settings = TokenSettings {
        issuer: issuer.clone(),
        audience,
        access_token_ttl: config.access_token_ttl,
        verified_token_capacity: if config.cache.ttl.is_zero() {
            0
        } else {
            config.cache.capacity
        },
        oidc: config.oidc.clone(),
    };
    let auth = Arc::new(AuthService::new(store.clone(), keys.clone(), settings)?);
    let web = http::WebSettings {
        secure_cookies: issuer.starts_with("https://"),
        logout_return_to: config.logout_return_to.clone(),
        limits: config.limits,
        forward_auth_prefix: config.forward_auth_prefix.clone(),
        trusted_proxies: config.trusted_proxies.clone(),
        api_rate_limit: config.api_rate_limit,
    };
    let metrics = Arc::new(Metrics::new(store.clone()));
    let exposure = match metrics_listener {
        Some(_) => http::MetricsExposure::Elsewhere,
        None => http::MetricsExposure::Here,
    };
    let app = http::router(
        http::AppState {
            mail: config.mail.clone(),
            ..http::AppState::new(auth.clone(), web, metrics.clone())
        },
        config.request_timeout,
        exposure,
    );

    let (stop_background, background_stopped) = watch::channel(false);
    let flusher = tokio::spawn(flush_token_uses(
        auth.clone(),
        config.usage_flush_interval,
        background_stopped.clone(),
    ));
    let key_rotator = config.key_rotation_period.map(|period| {
        tokio::spawn(tokens::live::rotate_periodically(
            keys.clone(),
            period,
            background_stopped.clone(),
        ))
    });
    let key_reloader = tokio::spawn(tokens::live::reload_periodically(
        keys,
        config.key_reload_interval,
        background_stopped.clone(),
    ));
    let notifier = config.mail.clone().map(|mailer| {
        tokio::spawn(domain::expiry_notices::run_periodically(
            store.clone(),
            mailer,
            config.expiry_notice_interval,
            background_stopped.clone(),
        ))
    });
    // The first Owner's generated password stays on disk only until they set their own.
    let password_retirer = tokio::spawn(first_start::retire_periodically(
        store.clone(),
        config.data_dir.clone(),
        config.owner_email.clone(),
        config.cleanup_interval,
        background_stopped.clone(),
    ));
    let cleaner = tokio::spawn(domain::cleanup::run_periodically(
        store.clone(),
        config.cleanup_policy(),
        background_stopped,
    ));

    let handle: Handle<SocketAddr> = Handle::new();
    let grace = config.shutdown_grace;
    let signal_handle = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal_handle.graceful_shutdown(Some(grace));
    });

    if issuer.starts_with("http://") && !local.ip().is_loopback() {
        tracing::warn!(%issuer, "the issuer is plain HTTP on a non-loopback address; put TLS in front of it");
    }
    let metrics_handle: Handle<SocketAddr> = Handle::new();
    let metrics_server = match metrics_listener {
        Some(listener) => {
            // Logged before the main address, and not as "listening on <url>": scripts and
            // tests take that line for the main listener's.
            tracing::info!(
                "metrics served at http://{}/metrics",
                listener.local_addr()?
            );
            let mut server = axum_server::from_tcp(listener)?
                .handle(metrics_handle.clone())
                .first_request_timeout(config.header_read_timeout);
            limit_http1(server.http_builder(), config.header_read_timeout);
            let service = http::metrics_router(metrics.clone()).into_make_service();
            Some(tokio::spawn(server.serve(service)))
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%issuer, "listening on {scheme}://{local}");
    let make_service = http::LimitConnections::new(
        app.into_make_service_with_connect_info::<SocketAddr>(),
        config.connections,
        metrics.connections.clone(),
    );
    let served = match tls {
        Some(tls) => {
            let mut server = axum_server::from_tcp_rustls(listener, tls)?
                .handle(handle)
                .first_request_timeout(config.header_read_timeout);
            limit_http1(server.http_builder(), config.header_read_timeout);
            server.serve(make_service).await
        }
        None => {
            let mut server = axum_server::from_tcp(listener)?
                .handle(handle)
                .first_request_timeout(config.header_read_timeout);
            limit_http1(server.http_builder(), config.header_read_timeout);
            server.serve(make_service).await
        }
    };

    tracing::info!("shutting down: requests finished, writing pending records");
    if let Some(metrics_server) = metrics_server {
        // Scrapes went on during the grace period; a scrape still running now is cut short.
        metrics_handle.shutdown();
        let _ = metrics_server.await;
    }
    let _ = stop_background.send(true);
    let _ = flusher.await;
    // It holds a connection of its own (PostgreSQL LISTEN) that closing the pool would
    // otherwise wait for.
    follower.abort();
    let _ = key_reloader.await;
    if let Some(key_rotator) = key_rotator {
        let _ = key_rotator.await;
    }
    let _ = cleaner.await;
    let _ = password_retirer.await;
    if let Some(notifier) = notifier {
        let _ = notifier.await;
    }
    if let Err(err) = auth.write_all_token_uses().await {
        tracing::warn!(error = %err, "could not write the last token-use records");
    }
    store.close().await;
    tracing::info!("stopped");
    served.map_err(ServeError::Io)
}

/// Slow or oversized request heads are cut off instead of holding a connection (and a
/// graceful shutdown) forever, and HTTP/2 connections whose peer stopped answering are found
/// by pings. (Idle HTTP/2 connections are closed by [`http::LimitConnections`].)
fn limit_http1(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    header_read_timeout: std::time::Duration,
) {
    builder
        .http1()
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    builder
        .http2()
        .keep_alive_interval(HTTP2_PING_INTERVAL)
        .keep_alive_timeout(HTTP2_PING_TIMEOUT)
        .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32);
}

/// The host of the issuer URL, so the development certificate also covers it.
fn issuer_host(issuer: &str) -> String {
    let rest = issuer.split_once("://").map_or(issuer, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    }
    .trim_start_matches('[')
    .trim_end_matches(']')
    .to_owned()
}

/// Follows every committed change (from this process and all others on the database) for as
/// long as the server runs: the store hands each to its own cache, and a key rotation reloads
/// the key ring here. When the feed breaks, changes may have been missed: the store stops
/// answering from its cache, and the keys are re-read, before following again.
async fn follow_changes(store: Arc<dyn Store>, keys: Arc<LiveKeys>) {
    let apply = |change: Change| {
        if change.action == tokens::keyring::ROTATED_ACTION || change.user_id.is_none() {
            let keys = keys.clone();
            tokio::spawn(async move {
                if let Err(err) = keys.reload().await {
                    tracing::warn!(error = %err, "could not reload the signing keys");
                }
            });
        }
    };
    loop {
        match store.follow_changes(&apply).await {
            Err(err) => {
                tracing::warn!(error = %err, "lost the change feed; following it again in 1 s");
            }
            Ok(()) => tracing::warn!("lost the change feed; following it again in 1 s"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Writes the pending last-use records every `every`. A failed write (the database is down)
/// puts the records back, so they are written once it answers again; newer uses of the same
/// token noted meanwhile win. Only the first failure of a streak is a warning. What is still
/// pending when the server stops is written once more at shutdown, and lost if that fails
/// too (last-use times are informational; no token's validity depends on them).
async fn flush_token_uses(
    auth: Arc<AuthService>,
    every: std::time::Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        match auth.write_due_token_uses().await {
            Ok(0) => {}
            Ok(count) => {
                if failures > 0 {
                    tracing::info!(failures, count, "token-use records written again");
                }
                failures = 0;
            }
            Err(err) => {
                let (error, count) = (err.error, err.count);
                if failures == 0 {
                    tracing::warn!(error = %error, count, "could not record token use; will retry");
                } else {
                    tracing::debug!(error = %error, count, failures, "could not record token use; will retry");
                }
                failures += 1;
            }
        }
    }
}

/// Says, on every start until each is resolved, which emails the identity upgrade left
/// without a password (they had passwords in several organizations, and no one of them may
/// open the others).
async fn log_identity_upgrade_notices(store: &dyn Store) {
    match domain::accounts::Accounts::new(store)
        .identity_upgrade_notices()
        .await
    {
        Ok(emails) => {
            for email in emails {
                tracing::warn!(
                    email = %email,
                    "this person had passwords in several organizations before sign-in \
                     identities; none of them carried over, so they cannot sign in with a \
                     password until an operator runs 'prismd users set-password --email \
                     {email}' (or they use a reset link, when SMTP is configured). Their \
                     refresh tokens still work."
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "could not read the identity upgrade notices"),
    }
}
