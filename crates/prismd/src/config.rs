//! Server settings as the library takes them (the binary fills them from flags and
//! environment variables).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    /// Public base URL, the `iss` of every token. Defaults to `http://<listen address>`.
    pub issuer: Option<String>,
    /// `aud` of access tokens. Defaults to `<issuer>/api`.
    pub audience: Option<String>,
    pub access_token_ttl: Duration,
    pub db_readers: u32,
    pub request_timeout: Duration,
    pub usage_flush_interval: Duration,
    /// Name of the organization created on first start.
    pub org_name: String,
    /// Email of the Owner created on first start.
    pub owner_email: String,
}

impl ServeConfig {
    /// Defaults for everything but the data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            issuer: None,
            audience: None,
            access_token_ttl: Duration::from_secs(7 * 24 * 3600),
            db_readers: 8,
            request_timeout: Duration::from_secs(30),
            usage_flush_interval: Duration::from_secs(5),
            org_name: "My Organization".to_owned(),
            owner_email: "owner@localhost".to_owned(),
        }
    }

    /// The issuer URL without a trailing slash.
    pub fn issuer_for(&self, local: SocketAddr) -> String {
        self.issuer
            .as_deref()
            .map(|i| i.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{local}"))
    }
}
