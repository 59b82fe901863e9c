//! The ceiling: the least any server can do for a refresh exchange on this machine. It parses
//! the JSON body, hashes the refresh token (SHA-256), signs an EdDSA JWT with a key parsed
//! once, and answers in prismd's response shape, with no database and no checks. Every
//! figure of the benchmark is reported as a ratio to it, measured in the same run.

use std::sync::Arc;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::Ed25519KeyPair;
use axum::extract::State;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prism_proto::wire::{RefreshRequest, TokenResponse};
use sha2::{Digest, Sha256};

struct Signer {
    key: Ed25519KeyPair,
    header_b64: String,
    rng: SystemRandom,
}

/// Serves `POST /auth/refresh` and `GET /readyz` on `listen` until the process is stopped.
pub async fn serve(listen: &str) -> anyhow::Result<()> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("cannot generate a key"))?;
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("cannot parse the key"))?;
    let header = serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "ceiling"});
    let signer = Arc::new(Signer {
        key,
        header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
        rng,
    });
    let app = Router::new()
        .route("/auth/refresh", post(refresh))
        .route("/readyz", get(|| async { "ready" }))
        .with_state(signer);
    // TCP_NODELAY, as prismd's server sets it: without it a response written in two parts
    // waits for the client's delayed ACK (40 ms) whenever a connection is not kept busy,
    // which is what an open-loop run does.
    let listener = tokio::net::TcpListener::bind(listen).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn refresh(
    State(signer): State<Arc<Signer>>,
    Json(request): Json<RefreshRequest>,
) -> Json<TokenResponse> {
    let hash = Sha256::digest(request.refresh_token.as_bytes());
    let mut jti = [0u8; 16];
    // A failed RNG only weakens the ceiling's jti, which nobody checks.
    let _ = signer.rng.fill(&mut jti);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "iss": "http://ceiling",
        "sub": URL_SAFE_NO_PAD.encode(&hash[..12]),
        "aud": "http://ceiling/api",
        "exp": now + 7 * 24 * 3600,
        "iat": now,
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "scope": "openid",
    });
    let signing_input = format!(
        "{}.{}",
        signer.header_b64,
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = signer.key.sign(signing_input.as_bytes());
    Json(TokenResponse {
        access_token: format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ),
        token_type: "Bearer".to_owned(),
        expires_in: 7 * 24 * 3600,
        scope: "openid".to_owned(),
        refresh_token: None,
        id_token: None,
        refresh_token_expires_in: None,
        issued_token_type: None,
    })
}
