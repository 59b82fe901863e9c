//! Tests only: an OIDC issuer on 127.0.0.1 (discovery and JWKS over plain HTTP, keys that can
//! be rotated, an outage switch, request counters) and signing keys of the three algorithms.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
    RsaKeyPair, RsaPublicKeyComponents,
};
use serde_json::{Value, json};

pub(super) type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Default)]
struct Shared {
    url: OnceLock<String>,
    jwks: Mutex<Vec<Value>>,
    /// Replaces the discovery document's `issuer` when set.
    claimed_issuer: Mutex<Option<String>>,
    down: AtomicBool,
    discovery_hits: AtomicUsize,
    jwks_hits: AtomicUsize,
}

/// A running test issuer; stops when dropped.
pub(super) struct TestIssuer {
    pub url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestIssuer {
    pub(super) async fn start(keys: &[&TestKey]) -> TestResult<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared::default());
        shared.url.set(url.clone()).ok();
        *lock(&shared.jwks) = keys.iter().map(|k| k.jwk()).collect();
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url,
            shared,
            server,
        })
    }

    /// Publishes these keys from now on.
    pub(super) fn set_keys(&self, keys: &[&TestKey]) {
        *lock(&self.shared.jwks) = keys.iter().map(|k| k.jwk()).collect();
    }

    pub(super) fn set_raw_jwks(&self, jwks: Vec<Value>) {
        *lock(&self.shared.jwks) = jwks;
    }

    pub(super) fn claim_issuer(&self, issuer: &str) {
        *lock(&self.shared.claimed_issuer) = Some(issuer.to_owned());
    }

    pub(super) fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// JWKS requests served so far.
    pub(super) fn jwks_hits(&self) -> usize {
        self.shared.jwks_hits.load(Ordering::SeqCst)
    }

    pub(super) fn discovery_hits(&self) -> usize {
        self.shared.discovery_hits.load(Ordering::SeqCst)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    shared.discovery_hits.fetch_add(1, Ordering::SeqCst);
    if shared.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let url = shared.url.get().cloned().unwrap_or_default();
    let issuer = lock(&shared.claimed_issuer)
        .clone()
        .unwrap_or_else(|| url.clone());
    Json(json!({"issuer": issuer, "jwks_uri": format!("{url}/jwks")})).into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if shared.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys = lock(&shared.jwks).clone();
    Json(json!({ "keys": keys })).into_response()
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A signing key and its public JWK.
pub(super) struct TestKey {
    pub kid: String,
    signer: Signer,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One 2048-bit RSA key per test run, made by the openssl CLI (ring cannot generate RSA keys;
/// no private key is committed). OpenSSL 3 writes it as PKCS#1 DER.
fn rsa_der() -> TestResult<&'static [u8]> {
    static DER: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    let der = DER.get_or_init(|| {
        let output = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
            ])
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(format!(
                "openssl genpkey failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    der.as_deref().map_err(|e| e.clone().into())
}

impl TestKey {
    pub(super) fn rsa(kid: &str) -> TestResult<Self> {
        let pair = RsaKeyPair::from_der(rsa_der()?).map_err(|e| e.to_string())?;
        Ok(Self {
            kid: kid.into(),
            signer: Signer::Rsa(pair),
        })
    }

    pub(super) fn ec(kid: &str) -> TestResult<Self> {
        let rng = SystemRandom::new();
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|e| e.to_string())?;
        let pair =
            EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|e| e.to_string())?;
        Ok(Self {
            kid: kid.into(),
            signer: Signer::Ec(pair),
        })
    }

    pub(super) fn ed(kid: &str) -> TestResult<Self> {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|e| e.to_string())?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
        Ok(Self {
            kid: kid.into(),
            signer: Signer::Ed(pair),
        })
    }

    pub(super) fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
            Signer::Ed(_) => "EdDSA",
        }
    }

    pub(super) fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Rsa(pair) => {
                let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                       "n": b64(&public.n), "e": b64(&public.e)})
            }
            Signer::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "crv": "P-256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Signer::Ed(pair) => {
                json!({"kty": "OKP", "kid": self.kid, "crv": "Ed25519",
                       "x": b64(pair.public_key().as_ref())})
            }
        }
    }

    /// The RSA modulus, for the HMAC key-confusion test.
    pub(super) fn public_bytes(&self) -> Vec<u8> {
        match &self.signer {
            Signer::Rsa(pair) => pair.public().as_ref().to_vec(),
            Signer::Ec(pair) => pair.public_key().as_ref().to_vec(),
            Signer::Ed(pair) => pair.public_key().as_ref().to_vec(),
        }
    }

    /// A token with this key's alg and kid over `claims`.
    pub(super) fn token(&self, claims: &Value) -> TestResult<String> {
        self.sign(
            &json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }

    pub(super) fn sign(&self, header: &Value, claims: &Value) -> TestResult<String> {
        let input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(header)?),
            b64(&serde_json::to_vec(claims)?)
        );
        let signature = match &self.signer {
            Signer::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| e.to_string())?;
                sig
            }
            Signer::Ec(pair) => pair
                .sign(&SystemRandom::new(), input.as_bytes())
                .map_err(|e| e.to_string())?
                .as_ref()
                .to_vec(),
            Signer::Ed(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
        };
        Ok(format!("{input}.{}", b64(&signature)))
    }
}

/// A token assembled from parts, signed with `secret` as an HMAC-SHA256 key (or unsigned when
/// `None`): what a key-confusion attack sends.
pub(super) fn forged(header: &Value, claims: &Value, secret: Option<&[u8]>) -> TestResult<String> {
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(header)?),
        b64(&serde_json::to_vec(claims)?)
    );
    let signature = match secret {
        Some(secret) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            b64(ring::hmac::sign(&key, input.as_bytes()).as_ref())
        }
        None => String::new(),
    };
    Ok(format!("{input}.{signature}"))
}
