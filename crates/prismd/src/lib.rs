//! prismd: a self-hosted, Prismatic-compatible API authentication server. This crate is the
//! server as a library (`serve` on any listener, so tests start it on port 0) plus the
//! building blocks the `prismd` binary's admin commands use.

pub mod config;
pub mod domain;
pub mod http;
pub mod store;
pub mod telemetry;
pub mod tokens;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ServeConfig;
use crate::domain::auth::{AuthService, TokenSettings};
use crate::domain::{DomainError, accounts, now_ms};
use crate::store::{SqliteStore, Store, StoreError};
use crate::tokens::{KeyError, KeyRing};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot load the signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error("first-start setup failed: {0}")]
    Bootstrap(#[from] DomainError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Name of the file, in the data directory, that holds the first Owner's generated password.
pub const INITIAL_PASSWORD_FILE: &str = "initial-owner-password";

/// Runs the server on `listener` until `shutdown` completes, then lets in-flight requests
/// finish, writes pending last-use records and closes the database cleanly.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local = listener.local_addr()?;
    let issuer = config.issuer_for(local);
    let audience = config
        .audience
        .clone()
        .unwrap_or_else(|| format!("{issuer}/api"));

    let sqlite = SqliteStore::open(&config.data_dir, config.db_readers).await?;
    tracing::info!(path = %sqlite.path().display(), "database ready");
    let store: Arc<dyn Store> = Arc::new(sqlite);

    if let Some(created) =
        accounts::bootstrap(store.as_ref(), &config.org_name, &config.owner_email).await?
    {
        announce_bootstrap(&config.data_dir, &created)?;
    }
    let keys = Arc::new(KeyRing::load_or_create(store.as_ref(), now_ms()).await?);
    tracing::info!(kid = keys.active_kid(), "signing key loaded");

    let settings = TokenSettings {
        issuer: issuer.clone(),
        audience,
        access_token_ttl: config.access_token_ttl,
    };
    let auth = Arc::new(AuthService::new(store.clone(), keys, settings));
    let app = http::router(http::AppState::new(auth.clone()), config.request_timeout);

    let (stop_flusher, flusher_stopped) = watch::channel(false);
    let flusher = tokio::spawn(flush_token_uses(
        auth.clone(),
        config.usage_flush_interval,
        flusher_stopped,
    ));

    if issuer.starts_with("http://") && !local.ip().is_loopback() {
        tracing::warn!(%issuer, "the issuer is plain HTTP on a non-loopback address; put TLS in front of it");
    }
    tracing::info!(%issuer, "listening on http://{local}");
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;

    tracing::info!("shutting down: requests finished, writing pending records");
    let _ = stop_flusher.send(true);
    let _ = flusher.await;
    if let Err(err) = store.record_token_uses(&auth.usage().drain()).await {
        tracing::warn!(error = %err, "could not write the last token-use records");
    }
    store.close().await;
    tracing::info!("stopped");
    served.map_err(ServeError::Io)
}

/// Writes the generated Owner password to a 0600 file (never to the log) and tells the
/// operator how to get in.
fn announce_bootstrap(
    data_dir: &Path,
    created: &accounts::Bootstrapped,
) -> Result<(), std::io::Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(INITIAL_PASSWORD_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)?;
    writeln!(file, "{}", created.owner_password)?;
    file.sync_all()?;
    tracing::info!(
        org = %created.org.name,
        tenant_id = %created.org.tenant_id,
        owner = %created.owner_email,
        password_file = %path.display(),
        "first start: created the organization and its Owner; the Owner's generated password is in \
         the password file (readable only by this account). Mint a refresh token for CI with: \
         prismd --data-dir {} tokens create --email {}",
        data_dir.display(),
        created.owner_email,
    );
    Ok(())
}

async fn flush_token_uses(
    auth: Arc<AuthService>,
    every: std::time::Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        let uses = auth.usage().drain();
        if let Err(err) = auth.store().record_token_uses(&uses).await {
            tracing::warn!(error = %err, count = uses.len(), "could not record token use; will retry");
            for token_use in uses {
                auth.usage().record(
                    &token_use.token_id,
                    token_use.at,
                    token_use.address.as_deref(),
                );
            }
        }
    }
}
