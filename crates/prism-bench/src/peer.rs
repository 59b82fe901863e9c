//! The peer: node-oidc-provider 8.8.1 (`bench/oidc-provider/server.mjs`, installed outside the
//! clone by `scripts/bench-peer.sh`), whose refresh grant the `peer` scenario drives with the
//! same client, connections and duration as prismd's own scenarios, in the same run.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::server::ServerProcess;

/// What the peer minted for the run.
pub struct Peer {
    /// `POST` here: `/token`.
    pub token_path: String,
    /// The client's HTTP Basic credentials (`client_secret_basic`).
    pub authorization: String,
    pub refresh_tokens: Vec<String>,
}

/// What server.mjs writes once it listens.
#[derive(Deserialize)]
struct Minted {
    token_path: String,
    authorization: String,
    refresh_tokens: Vec<String>,
}

impl Peer {
    /// Starts `node <dir>/server.mjs` on `address` with `tokens` refresh tokens and waits until
    /// it has written what it minted to a file in `work_dir` and answers `/readyz`.
    pub async fn start(
        dir: &Path,
        work_dir: &Path,
        address: &str,
        tokens: usize,
    ) -> anyhow::Result<(ServerProcess, Self)> {
        let script = dir.join("server.mjs");
        if !dir.join("node_modules").join("oidc-provider").exists() {
            bail!(
                "node-oidc-provider is not installed in {}; scripts/bench-peer.sh installs it",
                dir.display()
            );
        }
        let port = address
            .rsplit_once(':')
            .map(|(_, port)| port)
            .context("an address needs a port")?;
        let out = work_dir.join("peer.json");
        let mut process = ServerProcess::node(&script, port, tokens, &out)?;
        process.wait_ready(address).await?;
        let mut minted = None;
        for _ in 0..100 {
            if let Ok(text) = std::fs::read_to_string(&out) {
                minted = Some(serde_json::from_str::<Minted>(&text)?);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let minted = minted.with_context(|| format!("the peer wrote no {}", out.display()))?;
        if minted.refresh_tokens.is_empty() {
            bail!("the peer minted no refresh token");
        }
        Ok((
            process,
            Self {
                token_path: minted.token_path,
                authorization: minted.authorization,
                refresh_tokens: minted.refresh_tokens,
            },
        ))
    }
}
