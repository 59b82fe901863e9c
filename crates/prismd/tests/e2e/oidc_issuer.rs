//! An OpenID Connect issuer inside the test process, as a CI system's token service looks to
//! prismd: discovery and JWKS over plain HTTP on 127.0.0.1, RS256 / ES256 / EdDSA keys made at
//! test time (the RSA one by the `openssl` CLI, never written anywhere), controls to rotate
//! keys, go down and come back and count fetches; CI tokens in GitHub Actions' and GitLab's
//! claim shapes, and the forged forms an attacker would send instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256,
    RsaKeyPair,
};
use serde_json::{Value, json};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The signing algorithms a CI issuer uses, and the only ones prismd accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    pub const ALL: [Alg; 3] = [Alg::Rs256, Alg::Es256, Alg::EdDsa];

    /// The JOSE name, as in a JWT header's `alg`.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// One signing key of the issuer.
pub struct Key {
    pub kid: String,
    pub alg: Alg,
    signer: Signer,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Key {
    fn generate(alg: Alg) -> Res<Self> {
        let rng = SystemRandom::new();
        let signer = match alg {
            Alg::Rs256 => {
                // OpenSSL 3.0 writes a traditional (PKCS#1) RSAPrivateKey for
                // `-outform DER`, later versions PKCS#8: either is taken.
                let der = rsa_private_key_der()?;
                let pair = RsaKeyPair::from_pkcs8(&der)
                    .or_else(|_| RsaKeyPair::from_der(&der))
                    .map_err(rejected)?;
                Signer::Rsa(pair)
            }
            Alg::Es256 => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| "could not make a P-256 key")?;
                Signer::Ec(
                    EcdsaKeyPair::from_pkcs8(
                        &ECDSA_P256_SHA256_FIXED_SIGNING,
                        pkcs8.as_ref(),
                        &rng,
                    )
                    .map_err(rejected)?,
                )
            }
            Alg::EdDsa => {
                let pkcs8 =
                    Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "could not make a key")?;
                Signer::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(rejected)?)
            }
        };
        Ok(Self {
            kid: format!(
                "{}-{}",
                alg.name().to_lowercase(),
                uuid::Uuid::new_v4().simple()
            ),
            alg,
            signer,
        })
    }

    /// The public half as a JWK, as the issuer's JWKS lists it.
    fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Rsa(pair) => {
                let parts = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
                json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                        "n": b64(&parts.n), "e": b64(&parts.e) })
            }
            Signer::Ec(pair) => {
                // Uncompressed point: 0x04 || x || y.
                let point = pair.public_key().as_ref();
                json!({ "kty": "EC", "use": "sig", "alg": "ES256", "kid": self.kid,
                        "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]) })
            }
            Signer::Ed(pair) => {
                json!({ "kty": "OKP", "use": "sig", "alg": "EdDSA", "kid": self.kid,
                        "crv": "Ed25519", "x": b64(pair.public_key().as_ref()) })
            }
        }
    }

    fn sign(&self, message: &[u8]) -> Res<Vec<u8>> {
        let rng = SystemRandom::new();
        Ok(match &self.signer {
            Signer::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(|_| "RSA signing failed")?;
                signature
            }
            Signer::Ec(pair) => pair
                .sign(&rng, message)
                .map_err(|_| "ECDSA signing failed")?
                .as_ref()
                .to_vec(),
            Signer::Ed(pair) => pair.sign(message).as_ref().to_vec(),
        })
    }

    /// The bytes of the public key (for RSA its DER `RSAPublicKey`): what a confused verifier
    /// would take as an HMAC secret.
    fn public_bytes(&self) -> Vec<u8> {
        match &self.signer {
            Signer::Rsa(pair) => pair.public().as_ref().to_vec(),
            Signer::Ec(pair) => pair.public_key().as_ref().to_vec(),
            Signer::Ed(pair) => pair.public_key().as_ref().to_vec(),
        }
    }
}

/// ring's key errors are not `std::error::Error` (its `std` feature is off).
fn rejected(err: ring::error::KeyRejected) -> Box<dyn std::error::Error> {
    format!("key rejected: {err:?}").into()
}

/// A fresh 2048-bit RSA private key as DER (PKCS#8 or PKCS#1, by OpenSSL version), from the `openssl` CLI (ring cannot generate RSA
/// keys). It lives only in this process's memory.
fn rsa_private_key_der() -> Res<Vec<u8>> {
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
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|err| format!("could not run openssl (the keyless tests need it): {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(output.stdout)
}

/// What the HTTP side reads: which keys are published, whether to answer at all, and counters.
struct Shared {
    issuer: String,
    prefix: String,
    published: Mutex<Vec<Arc<Key>>>,
    /// The `issuer` the discovery document claims, when it is not the real one.
    claimed_issuer: Mutex<Option<String>>,
    unavailable: AtomicBool,
    discovery_fetches: AtomicUsize,
    jwks_fetches: AtomicUsize,
}

impl Shared {
    fn published(&self) -> Vec<Arc<Key>> {
        self.published.lock().map(|k| k.clone()).unwrap_or_default()
    }
}

type Serving = (
    axum_server::Handle<SocketAddr>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// An OIDC issuer on 127.0.0.1; it stops serving when dropped.
pub struct Issuer {
    /// The `iss` of its tokens: `http://127.0.0.1:PORT` and the path suffix it was made with.
    pub issuer: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Every key it ever made, published or not, to sign with.
    keys: Mutex<Vec<Arc<Key>>>,
    serving: Mutex<Option<Serving>>,
    /// Serves HTTPS with this certificate when set.
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
}

impl Issuer {
    /// An issuer at `http://127.0.0.1:PORT` with one published key of each algorithm.
    pub async fn start() -> Res<Self> {
        Self::start_at("").await
    }

    /// An issuer at `http://127.0.0.1:PORT<suffix>` (`suffix` empty or starting with `/`),
    /// with one published key of each algorithm.
    pub async fn start_at(suffix: &str) -> Res<Self> {
        Self::start_with(suffix, None).await
    }

    /// An issuer at `https://localhost:PORT`, serving the certificate `cert` (for localhost)
    /// with its `key` (PEM files).
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Res<Self> {
        let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await?;
        Self::start_with("", Some(config)).await
    }

    async fn start_with(
        suffix: &str,
        tls: Option<axum_server::tls_rustls::RustlsConfig>,
    ) -> Res<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let issuer = match tls {
            Some(_) => format!("https://localhost:{}{suffix}", addr.port()),
            None => format!("http://{addr}{suffix}"),
        };
        let keys = Alg::ALL
            .into_iter()
            .map(|alg| Key::generate(alg).map(Arc::new))
            .collect::<Res<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            issuer: issuer.clone(),
            prefix: suffix.to_owned(),
            published: Mutex::new(keys.clone()),
            claimed_issuer: Mutex::new(None),
            unavailable: AtomicBool::new(false),
            discovery_fetches: AtomicUsize::new(0),
            jwks_fetches: AtomicUsize::new(0),
        });
        let this = Self {
            issuer,
            addr,
            shared,
            keys: Mutex::new(keys),
            serving: Mutex::new(None),
            tls,
        };
        this.serve(listener)?;
        Ok(this)
    }

    fn serve(&self, listener: std::net::TcpListener) -> Res<()> {
        let prefix = &self.shared.prefix;
        let app = Router::new()
            .route(
                &format!("{prefix}/.well-known/openid-configuration"),
                get(discovery),
            )
            .route(&format!("{prefix}/jwks"), get(jwks))
            .route(&format!("{prefix}{ACTIONS_TOKEN_PATH}"), get(actions_token))
            .with_state(self.shared.clone());
        let handle = axum_server::Handle::new();
        let task = match &self.tls {
            Some(config) => {
                let server =
                    axum_server::from_tcp_rustls(listener, config.clone())?.handle(handle.clone());
                tokio::spawn(server.serve(app.into_make_service()))
            }
            None => {
                let server = axum_server::from_tcp(listener)?.handle(handle.clone());
                tokio::spawn(server.serve(app.into_make_service()))
            }
        };
        *self.serving.lock().map_err(|_| "poisoned")? = Some((handle, task));
        Ok(())
    }

    /// Stops listening and cuts every open connection: fetches are refused from now on.
    pub async fn go_offline(&self) -> Res<()> {
        let serving = self.serving.lock().map_err(|_| "poisoned")?.take();
        if let Some((handle, task)) = serving {
            handle.shutdown();
            // Once it has returned the listener is closed and the port free for `come_back`.
            task.await??;
        }
        Ok(())
    }

    /// Listens again on the same port (after [`Issuer::go_offline`]) and answers normally
    /// (after [`Issuer::set_unavailable`]).
    pub async fn come_back(&self) -> Res<()> {
        self.set_unavailable(false);
        if self.serving.lock().map_err(|_| "poisoned")?.is_none() {
            self.serve(std::net::TcpListener::bind(self.addr)?)?;
        }
        Ok(())
    }

    /// While set, discovery and JWKS answer 503 (the connection itself is accepted).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Makes the discovery document claim another `issuer` (`None`: the real one again).
    pub fn claim_issuer(&self, issuer: Option<&str>) -> Res<()> {
        *self.shared.claimed_issuer.lock().map_err(|_| "poisoned")? = issuer.map(str::to_owned);
        Ok(())
    }

    /// How many times the discovery document was asked for (503 answers included).
    pub fn discovery_fetches(&self) -> usize {
        self.shared.discovery_fetches.load(Ordering::SeqCst)
    }

    /// How many times the JWKS was asked for (503 answers included).
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// The kids the JWKS lists now.
    pub fn published_kids(&self) -> Vec<String> {
        self.shared
            .published()
            .iter()
            .map(|k| k.kid.clone())
            .collect()
    }

    /// The newest published key of `alg`, else the newest made.
    fn key(&self, alg: Alg) -> Res<Arc<Key>> {
        let published = self.shared.published();
        if let Some(key) = published.iter().rev().find(|k| k.alg == alg) {
            return Ok(key.clone());
        }
        let keys = self.keys.lock().map_err(|_| "poisoned")?;
        Ok(keys
            .iter()
            .rev()
            .find(|k| k.alg == alg)
            .ok_or("no key of that algorithm")?
            .clone())
    }

    fn key_by_kid(&self, kid: &str) -> Res<Arc<Key>> {
        let keys = self.keys.lock().map_err(|_| "poisoned")?;
        Ok(keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| format!("no key {kid}"))?
            .clone())
    }

    /// The kid of the key [`Issuer::mint`] signs `alg` tokens with now.
    pub fn kid(&self, alg: Alg) -> Res<String> {
        Ok(self.key(alg)?.kid.clone())
    }

    /// Makes a new key of `alg`; published in the JWKS when `publish`. Its kid.
    pub fn add_key(&self, alg: Alg, publish: bool) -> Res<String> {
        let key = Arc::new(Key::generate(alg)?);
        let kid = key.kid.clone();
        self.keys.lock().map_err(|_| "poisoned")?.push(key.clone());
        if publish {
            self.shared
                .published
                .lock()
                .map_err(|_| "poisoned")?
                .push(key);
        }
        Ok(kid)
    }

    /// Takes the key `kid` out of the JWKS (it can still sign: a retired key's tokens).
    pub fn unpublish(&self, kid: &str) -> Res<()> {
        self.shared
            .published
            .lock()
            .map_err(|_| "poisoned")?
            .retain(|k| k.kid != kid);
        Ok(())
    }

    /// Rotation as an issuer does it: a new key of `alg` is published and the previous ones
    /// of `alg` leave the JWKS. The new kid; [`Issuer::mint`] signs with it from now on.
    pub fn rotate(&self, alg: Alg) -> Res<String> {
        let old: Vec<String> = self
            .shared
            .published()
            .iter()
            .filter(|k| k.alg == alg)
            .map(|k| k.kid.clone())
            .collect();
        let kid = self.add_key(alg, true)?;
        for old in old {
            self.unpublish(&old)?;
        }
        Ok(kid)
    }

    /// A token signed with the current key of `alg`.
    pub fn mint(&self, alg: Alg, claims: &Value) -> Res<String> {
        let key = self.key(alg)?;
        sign_with(&key, &header(alg.name(), &key.kid), claims)
    }

    /// A token signed with the key `kid` (published or not).
    pub fn mint_with_kid(&self, kid: &str, claims: &Value) -> Res<String> {
        let key = self.key_by_kid(kid)?;
        sign_with(&key, &header(key.alg.name(), &key.kid), claims)
    }

    /// `alg: none` with an empty signature, naming the RSA key's kid.
    pub fn alg_none(&self, claims: &Value) -> Res<String> {
        let kid = self.kid(Alg::Rs256)?;
        Ok(format!(
            "{}.",
            signing_input(&header("none", &kid), claims)?
        ))
    }

    /// HS256 keyed with the RSA public key's bytes: the key-confusion attack on a verifier
    /// that takes the `alg` from the token.
    pub fn hs256_with_rsa_public_key(&self, claims: &Value) -> Res<String> {
        let key = self.key(Alg::Rs256)?;
        let input = signing_input(&header("HS256", &key.kid), claims)?;
        let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.public_bytes());
        let tag = ring::hmac::sign(&hmac, input.as_bytes());
        Ok(format!("{input}.{}", b64(tag.as_ref())))
    }

    /// A header that says RS256 but names the EC key's kid, signed with the RSA key.
    pub fn rs256_with_ec_kid(&self, claims: &Value) -> Res<String> {
        let rsa = self.key(Alg::Rs256)?;
        let ec_kid = self.kid(Alg::Es256)?;
        sign_with(&rsa, &header("RS256", &ec_kid), claims)
    }

    /// A header with any `alg` and `kid`, signed with the current key of `alg_key`.
    pub fn mint_with_header(&self, alg_key: Alg, header: &Value, claims: &Value) -> Res<String> {
        sign_with(self.key(alg_key)?.as_ref(), header, claims)
    }

    /// A genuine token of `alg` whose payload is then changed by `tamper`, signature kept.
    pub fn tampered(
        &self,
        alg: Alg,
        claims: &Value,
        tamper: impl FnOnce(&mut Value),
    ) -> Res<String> {
        let token = self.mint(alg, claims)?;
        let mut parts = token.split('.');
        let (head, _, signature) = (
            parts.next().ok_or("no header")?,
            parts.next().ok_or("no payload")?,
            parts.next().ok_or("no signature")?,
        );
        let mut changed = claims.clone();
        tamper(&mut changed);
        Ok(format!(
            "{head}.{}.{signature}",
            b64(&serde_json::to_vec(&changed)?)
        ))
    }

    /// Claims as GitHub Actions issues them, for `aud`, fresh (`jti` unique, valid 5 minutes).
    pub fn github(&self, aud: &str) -> Value {
        github_claims(&self.issuer, aud)
    }

    /// Claims as GitLab CI issues them, for `aud`, fresh.
    pub fn gitlab(&self, aud: &str) -> Value {
        gitlab_claims(&self.issuer, aud)
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        if let Ok(mut serving) = self.serving.lock()
            && let Some((handle, task)) = serving.take()
        {
            handle.shutdown();
            task.abort();
        }
    }
}

fn header(alg: &str, kid: &str) -> Value {
    json!({ "alg": alg, "typ": "JWT", "kid": kid })
}

fn signing_input(header: &Value, claims: &Value) -> Res<String> {
    Ok(format!(
        "{}.{}",
        b64(&serde_json::to_vec(header)?),
        b64(&serde_json::to_vec(claims)?)
    ))
}

fn sign_with(key: &Key, header: &Value, claims: &Value) -> Res<String> {
    let input = signing_input(header, claims)?;
    let signature = key.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", b64(&signature)))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A GitHub Actions token's claims: a push to `main` of `acme/app` (repository id 123456)
/// deploying to `production`.
pub fn github_claims(iss: &str, aud: &str) -> Value {
    let now = now();
    json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": "repo:acme/app:ref:refs/heads/main",
        "aud": aud,
        "ref": "refs/heads/main",
        "sha": "2c9ba6bde5a6c4a4c0b5b1d0f1e3a1c9d8e7f6a5",
        "repository": "acme/app",
        "repository_owner": "acme",
        "repository_owner_id": "654321",
        "repository_id": "123456",
        "repository_visibility": "private",
        "run_id": "9876543210",
        "run_number": "42",
        "run_attempt": "1",
        "actor": "octocat",
        "actor_id": "583231",
        "workflow": "deploy",
        "workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_type": "branch",
        "environment": "production",
        "runner_environment": "github-hosted",
        "iss": iss,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    })
}

/// A GitLab CI token's claims: a pipeline of `group/app` (project 4242) on branch `main`.
pub fn gitlab_claims(iss: &str, aud: &str) -> Value {
    let now = now();
    json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": "project_path:group/app:ref_type:branch:ref:main",
        "aud": aud,
        "namespace_id": "72",
        "namespace_path": "group",
        "project_id": "4242",
        "project_path": "group/app",
        "user_id": "17",
        "user_login": "dev",
        "user_email": "dev@gitlab.test",
        "pipeline_id": "100200",
        "pipeline_source": "push",
        "job_id": "300400",
        "ref": "main",
        "ref_type": "branch",
        "ref_protected": "true",
        "environment": "production",
        "environment_protected": "true",
        "iss": iss,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    })
}

/// Where the issuer plays GitHub's token service for jobs (`ACTIONS_ID_TOKEN_REQUEST_URL`).
pub const ACTIONS_TOKEN_PATH: &str = "/actions/token";
/// The bearer a job sends it (`ACTIONS_ID_TOKEN_REQUEST_TOKEN`).
pub const ACTIONS_REQUEST_SECRET: &str = "actions-request-secret";

#[derive(serde::Deserialize)]
struct ActionsTokenQuery {
    audience: String,
}

/// GitHub's token service for a job: with the job's bearer, a fresh GitHub-shaped token for
/// the `audience` asked for, signed with the published EdDSA key, as `{"value": ...}`.
async fn actions_token(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(query): axum::extract::Query<ActionsTokenQuery>,
) -> Response {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if bearer != Some(&format!("bearer {ACTIONS_REQUEST_SECRET}")) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let key = shared.published().into_iter().find(|k| k.alg == Alg::EdDsa);
    let token = key.map(|key| {
        sign_with(
            &key,
            &header(key.alg.name(), &key.kid),
            &github_claims(&shared.issuer, &query.audience),
        )
    });
    match token {
        Some(Ok(token)) => axum::Json(json!({ "value": token })).into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    shared.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    if shared.unavailable.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let claimed = shared
        .claimed_issuer
        .lock()
        .ok()
        .and_then(|c| c.clone())
        .unwrap_or_else(|| shared.issuer.clone());
    axum::Json(json!({
        "issuer": claimed,
        "jwks_uri": format!("{}/jwks", shared.issuer),
        "subject_types_supported": ["public", "pairwise"],
        "response_types_supported": ["id_token"],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "repository"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "scopes_supported": ["openid"],
    }))
    .into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if shared.unavailable.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys: Vec<Value> = shared.published().iter().map(|k| k.jwk()).collect();
    axum::Json(json!({ "keys": keys })).into_response()
}
