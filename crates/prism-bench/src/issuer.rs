//! The exchange scenario's OIDC issuer, in this process: a discovery document and a JWKS with
//! one signing key (Ed25519, or ECDSA P-256), served over plain HTTP on loopback (prismd takes
//! it with `--oidc-allow-http-issuers`), and the CI tokens it signs, shaped like GitHub
//! Actions' and each with its own `jti`, since prismd exchanges a token once.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

/// The `kid` of the issuer's one key.
const KID: &str = "prism-bench-1";
/// How long a token is valid (`exp` - `iat`): longer than any run, and within prismd's
/// default maximum token age of a trust policy (1 h).
const TOKEN_LIFETIME_SECS: u64 = 3600;

/// The algorithm of the issuer's key.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Alg {
    /// Ed25519 (`EdDSA`), as the access tokens prismd signs.
    Eddsa,
    /// ECDSA P-256 with SHA-256 (`ES256`), as GitLab's and many Kubernetes issuers' keys.
    Es256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Eddsa => "EdDSA",
            Alg::Es256 => "ES256",
        }
    }
}

enum Key {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

/// The running issuer; its server stops when this is dropped.
pub struct Issuer {
    url: String,
    key: Key,
    rng: SystemRandom,
    header_b64: String,
    server: tokio::task::JoinHandle<()>,
}

struct Documents {
    discovery: Value,
    jwks: Value,
}

impl Issuer {
    /// Generates a key of `alg` and serves the issuer's documents on a free loopback port.
    pub async fn start(alg: Alg) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let rng = SystemRandom::new();
        let unavailable = || anyhow::anyhow!("cannot generate a {} key", alg.name());
        let (key, mut jwk) = match alg {
            Alg::Eddsa => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| unavailable())?;
                let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| unavailable())?;
                let x = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
                (
                    Key::Ed25519(key),
                    json!({ "kty": "OKP", "crv": "Ed25519", "x": x }),
                )
            }
            Alg::Es256 => {
                let algorithm = &ECDSA_P256_SHA256_FIXED_SIGNING;
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(algorithm, &rng).map_err(|_| unavailable())?;
                let key = EcdsaKeyPair::from_pkcs8(algorithm, pkcs8.as_ref(), &rng)
                    .map_err(|_| unavailable())?;
                // An uncompressed point: 0x04, then x and y (32 bytes each).
                let point = key.public_key().as_ref();
                let (x, y) = point
                    .get(1..33)
                    .zip(point.get(33..65))
                    .context("an unexpected P-256 public key")?;
                let jwk = json!({ "kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(x),
                                  "y": URL_SAFE_NO_PAD.encode(y) });
                (Key::P256(key), jwk)
            }
        };
        jwk["kid"] = json!(KID);
        jwk["alg"] = json!(alg.name());
        jwk["use"] = json!("sig");
        let documents = Arc::new(Documents {
            discovery: json!({
                "issuer": url,
                "jwks_uri": format!("{url}/.well-known/jwks"),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public", "pairwise"],
                "id_token_signing_alg_values_supported": [alg.name()],
                "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref",
                                     "repository", "repository_id", "run_id"],
            }),
            jwks: json!({ "keys": [jwk] }),
        });
        let app =
            Router::new()
                .route(
                    "/.well-known/openid-configuration",
                    get(|State(docs): State<Arc<Documents>>| async move {
                        Json(docs.discovery.clone())
                    }),
                )
                .route(
                    "/.well-known/jwks",
                    get(
                        |State(docs): State<Arc<Documents>>| async move { Json(docs.jwks.clone()) },
                    ),
                )
                .with_state(documents);
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("the OIDC issuer stopped: {err}");
            }
        });
        let header = json!({ "alg": alg.name(), "typ": "JWT", "kid": KID });
        Ok(Self {
            url,
            key,
            rng,
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            server,
        })
    }

    /// The issuer (`iss`), e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A signed JWT of `claims`.
    fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let input = format!(
            "{}.{}",
            self.header_b64,
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = match &self.key {
            Key::Ed25519(key) => key.sign(input.as_bytes()).as_ref().to_vec(),
            Key::P256(key) => key
                .sign(&self.rng, input.as_bytes())
                .map_err(|_| anyhow::anyhow!("ES256 signing failed"))?
                .as_ref()
                .to_vec(),
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// `count` CI job tokens for `audience`, issued now, with `sub` = `subject` and the
    /// claims a GitHub Actions job's token carries; `jti` and `run_id` differ in each.
    pub fn ci_tokens(
        &self,
        count: usize,
        audience: &str,
        subject: &str,
    ) -> anyhow::Result<Vec<String>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        (0..count)
            .map(|n| {
                self.sign(&json!({
                    "iss": self.url,
                    "aud": audience,
                    "sub": subject,
                    "jti": uuid::Uuid::new_v4().to_string(),
                    "iat": now,
                    "nbf": now,
                    "exp": now + TOKEN_LIFETIME_SECS,
                    "ref": "refs/heads/main",
                    "ref_type": "branch",
                    "repository": "bench/app",
                    "repository_id": "100001",
                    "repository_owner": "bench",
                    "repository_owner_id": "200002",
                    "workflow": "ci",
                    "workflow_ref": "bench/app/.github/workflows/ci.yml@refs/heads/main",
                    "event_name": "push",
                    "actor": "bench-bot",
                    "run_id": (1_000_000 + n).to_string(),
                    "run_attempt": "1",
                    "runner_environment": "github-hosted",
                }))
            })
            .collect()
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}
