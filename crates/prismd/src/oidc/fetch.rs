//! Fetching an issuer's keys: OIDC discovery, then its JWKS, over HTTPS with ureq (rustls on
//! ring, the web PKI roots plus `--oidc-ca-file`). Blocking: callers run it on tokio's
//! blocking pool.

use serde_json::Value;
use ureq::Agent;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use super::keys::KeySet;
use super::{OidcSettings, OidcSetupError, VerifyError, check_url};

/// Largest discovery or JWKS document read.
const MAX_DOCUMENT_BYTES: u64 = 1024 * 1024;
/// Redirects followed (same-scheme rules apply to each hop: `https_only` unless http is
/// allowed).
const MAX_REDIRECTS: u32 = 3;

/// The HTTP client for every issuer.
pub(crate) fn agent(settings: &OidcSettings) -> Result<Agent, OidcSetupError> {
    let roots = match &settings.extra_ca_pem {
        None => RootCerts::WebPki,
        Some(pem) => {
            let mut certs: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|der| Certificate::from_der(der.as_ref()))
                .collect();
            let before = certs.len();
            for item in ureq::tls::parse_pem(pem) {
                match item {
                    Ok(PemItem::Certificate(cert)) => certs.push(cert),
                    // Keys or CRLs in the same file are no reason to refuse it.
                    Ok(_) => {}
                    Err(err) => return Err(OidcSetupError::BadCaPem(err.to_string())),
                }
            }
            if certs.len() == before {
                return Err(OidcSetupError::NoCaCertificate);
            }
            RootCerts::from(certs)
        }
    };
    Ok(Agent::config_builder()
        .http_status_as_error(false)
        .https_only(!settings.allow_http_issuers)
        .max_redirects(MAX_REDIRECTS)
        .timeout_global(Some(settings.fetch_timeout))
        .user_agent(concat!("prismd/", env!("CARGO_PKG_VERSION")))
        .tls_config(
            TlsConfig::builder()
                .root_certs(roots)
                .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .build(),
        )
        .build()
        .into())
}

/// Discovery, the issuer check, then the JWKS.
pub(crate) fn fetch_keys(
    agent: &Agent,
    issuer: &str,
    allow_http: bool,
) -> Result<KeySet, VerifyError> {
    let unreachable = |reason: String| VerifyError::IssuerUnreachable {
        issuer: issuer.to_owned(),
        reason,
    };
    let bad = |reason: String| VerifyError::BadIssuerMetadata {
        issuer: issuer.to_owned(),
        reason,
    };
    let base = issuer.strip_suffix('/').unwrap_or(issuer);
    let discovery_url = format!("{base}/.well-known/openid-configuration");
    let discovery = get_json(agent, &discovery_url).map_err(|e| e.into_error(unreachable, bad))?;
    match discovery.get("issuer").and_then(Value::as_str) {
        Some(named) if named == issuer => {}
        Some(named) => {
            return Err(bad(format!(
                "its discovery document names the issuer {}, not {issuer}",
                super::for_message(named)
            )));
        }
        None => return Err(bad("its discovery document has no issuer".to_owned())),
    }
    let Some(jwks_uri) = discovery.get("jwks_uri").and_then(Value::as_str) else {
        return Err(bad("its discovery document has no jwks_uri".to_owned()));
    };
    check_url(jwks_uri, allow_http, true).map_err(|why| bad(format!("its jwks_uri: {why}")))?;
    let jwks = get_json(agent, jwks_uri).map_err(|e| e.into_error(unreachable, bad))?;
    KeySet::from_jwks(&jwks).map_err(|why| bad(format!("{jwks_uri}: {why}")))
}

/// A failed GET: the server could not be reached (or answered an error status), or it
/// answered something that is not a JSON document.
enum GetError {
    Unreachable(String),
    Unusable(String),
}

impl GetError {
    fn into_error(
        self,
        unreachable: impl Fn(String) -> VerifyError,
        bad: impl Fn(String) -> VerifyError,
    ) -> VerifyError {
        match self {
            Self::Unreachable(reason) => unreachable(reason),
            Self::Unusable(reason) => bad(reason),
        }
    }
}

fn get_json(agent: &Agent, url: &str) -> Result<Value, GetError> {
    let mut response = agent
        .get(url)
        .header("Accept", "application/json")
        .call()
        .map_err(|err| GetError::Unreachable(format!("GET {url}: {err}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(GetError::Unreachable(format!(
            "GET {url} answered HTTP {}",
            status.as_u16()
        )));
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_DOCUMENT_BYTES)
        .read_to_vec()
        .map_err(|err| match err {
            ureq::Error::BodyExceedsLimit(_) => GetError::Unusable(format!(
                "GET {url}: the document is larger than {} KiB",
                MAX_DOCUMENT_BYTES / 1024
            )),
            other => GetError::Unreachable(format!("GET {url}: {other}")),
        })?;
    match serde_json::from_slice(&body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(GetError::Unusable(format!(
            "GET {url}: the answer is not a JSON object"
        ))),
    }
}
