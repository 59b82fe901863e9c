//! Verification of third-party OIDC ID tokens (GitHub Actions, GitLab CI, Kubernetes service
//! accounts, ...) against their issuer's published signing keys, for keyless CI. No database
//! and no policy here: `domain::trust` decides which issuers, audiences and claims it trusts.
//!
//! Use:
//! 1. [`peek`] splits and decodes a token and reads its `iss`, trusting nothing (so the caller
//!    can look for trust policies of that issuer first).
//! 2. [`OidcVerifier::verify`] checks the signature with the issuer's key (discovery at
//!    `{iss}/.well-known/openid-configuration`, then its `jwks_uri`; keys cached per issuer,
//!    see [`OidcSettings`]) and the time claims (`exp`, `iat` required; [`CLOCK_SKEW_SECS`] of
//!    skew), and returns a [`VerifiedToken`]. It checks neither the audience nor the maximum
//!    token age nor any claim condition: those are per policy, in the domain.
//! 3. [`claims`] matches a policy's conditions ([`claims::ClaimCondition::matches`],
//!    [`claims::first_failing`]) and validates them ([`claims::validate_conditions`]).
//!
//! Accepted algorithms: RS256 (RSA keys of at least 2048 bits), ES256 (P-256) and EdDSA
//! (Ed25519). The algorithm must agree with the key the issuer published (its type and curve,
//! and its own `alg` when given); the header alone never picks it, so `none`, HMAC (the
//! public key used as a secret) and mixed-up keys are refused before any key is used.
//!
//! [`VerifyError`]'s texts are meant for clients: they say what is wrong and never contain
//! the token. [`VerifyError::is_unavailable`] says which ones mean "try again later" (503).

pub mod claims;
mod fetch;
mod keys;
#[cfg(test)]
mod test_issuer;
mod verify;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

pub use verify::OidcVerifier;

/// Allowed clock difference with the issuer for `exp`, `nbf` and `iat`.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// Longest token accepted; longer ones are refused unread.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How keys are fetched and cached.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    /// Accept `http://` issuers and JWKS URLs (`--oidc-allow-http-issuers`, for tests);
    /// otherwise only `https://`.
    pub allow_http_issuers: bool,
    /// Cached keys older than this are fetched again (`--oidc-jwks-refresh`).
    pub jwks_refresh: Duration,
    /// When fetching fails, cached keys keep serving until they are this old; after that the
    /// issuer is unreachable (`--oidc-jwks-max-age`).
    pub jwks_max_age: Duration,
    /// Least time between two fetches of one issuer's keys, apart from its first
    /// (`--oidc-jwks-refetch-interval`): a token with an unknown `kid` refetches at most once
    /// per interval, and a failing issuer is retried at most once per interval (meanwhile the
    /// cached keys, or the last failure, answer).
    pub unknown_kid_refetch_interval: Duration,
    /// Timeout of each whole request (discovery, JWKS).
    pub fetch_timeout: Duration,
    /// PEM certificates (`--oidc-ca-file`) trusted besides the web PKI roots.
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl Default for OidcSettings {
    fn default() -> Self {
        Self {
            allow_http_issuers: false,
            jwks_refresh: Duration::from_secs(5 * 60),
            jwks_max_age: Duration::from_secs(60 * 60),
            unknown_kid_refetch_interval: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(5),
            extra_ca_pem: None,
        }
    }
}

/// Why [`OidcVerifier::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcSetupError {
    #[error("the OIDC CA file is not valid PEM: {0}")]
    BadCaPem(String),
    #[error("the OIDC CA file contains no PEM certificate")]
    NoCaCertificate,
}

/// Why a token was refused. The texts are shown to clients: they never contain the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is not a valid JWT: {0}")]
    Malformed(String),
    /// `none`, HMAC and anything but RS256, ES256 and EdDSA.
    #[error("the token's algorithm {0} is not accepted; it must be RS256, ES256 or EdDSA")]
    UnsupportedAlgorithm(String),
    /// No key of the issuer has the token's `kid`, even after fetching the keys again (or
    /// refetching was not allowed yet). `None`: the token names no `kid` and the issuer has no
    /// or several keys for its algorithm.
    #[error("{}", unknown_key_text(.kid.as_deref()))]
    UnknownKey { kid: Option<String> },
    /// The key the token names does not fit its algorithm.
    #[error("the issuer's key {kid} cannot verify this token: {detail}")]
    KeyMismatch { kid: String, detail: String },
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token expired (exp {exp}, more than {CLOCK_SKEW_SECS} s ago)")]
    Expired { exp: i64 },
    /// `nbf` or `iat` is more than the skew in the future.
    #[error("the token is not valid yet (its {claim} {at} is more than {CLOCK_SKEW_SECS} s ahead)")]
    NotYetValid { claim: &'static str, at: i64 },
    #[error("the token has no {0} claim")]
    MissingClaim(&'static str),
    /// Discovery or JWKS could not be fetched and no usable cached keys are held (503).
    #[error("the issuer {issuer} could not be reached to fetch its signing keys: {reason}")]
    IssuerUnreachable { issuer: String, reason: String },
    /// The issuer answered, but with unusable metadata (503 too: nothing the client can fix).
    #[error("the issuer {issuer} publishes unusable signing-key metadata: {reason}")]
    BadIssuerMetadata { issuer: String, reason: String },
}

impl VerifyError {
    /// Whether the issuer, not the token, is at fault: answer 503 and let the client retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::IssuerUnreachable { .. } | Self::BadIssuerMetadata { .. }
        )
    }
}

fn unknown_key_text(kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!("the issuer has no signing key with the token's kid {kid}"),
        None => "the token names no kid, and the issuer does not have exactly one key for its \
                 algorithm"
            .to_owned(),
    }
}

/// Header or claim text shown in errors: attacker-chosen, so cut short.
pub(crate) fn for_message(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{:?}…", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// A decoded token whose signature nothing has checked yet. Only `issuer` is exposed: nothing
/// else of it may be trusted before [`OidcVerifier::verify`].
pub struct UnverifiedToken {
    pub issuer: String,
    header: Map<String, Value>,
    payload: Map<String, Value>,
    /// `header.payload` as sent: what the signature covers.
    signing_input: String,
    signature: Vec<u8>,
    /// Hex SHA-256 of the whole token: the replay key when there is no `jti`.
    token_sha256: String,
}

impl std::fmt::Debug for UnverifiedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnverifiedToken")
            .field("issuer", &self.issuer)
            .field("alg", &self.header.get("alg"))
            .field("kid", &self.header.get("kid"))
            .finish_non_exhaustive()
    }
}

/// A token whose signature and time claims are valid.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    pub issuer: String,
    /// The whole payload.
    pub claims: Map<String, Value>,
    /// `aud`, as one string or a list; empty when absent.
    pub audiences: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: Option<i64>,
    pub jti: Option<String>,
    /// What makes the token single-use (with the issuer): its `jti`, or `sha256:<hex>` of the
    /// whole token when it has none.
    pub replay_key: String,
}

/// Splits and decodes a compact JWS and reads `iss`. No signature or claim is checked: the
/// result only says which issuer to ask for keys. Refuses tokens over 16 KiB, anything but
/// three base64url parts, header or payload that are not JSON objects, and a missing or
/// non-string `iss`.
pub fn peek(token: &str) -> Result<UnverifiedToken, VerifyError> {
    let malformed = |why: &str| VerifyError::Malformed(why.to_owned());
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed("it is longer than 16 KiB"));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err(if parts.len() == 5 {
            malformed("encrypted tokens (JWE) are not accepted")
        } else {
            malformed("a JWT is three base64url parts separated by dots")
        });
    };
    let header = decode_object(header, "header")?;
    let payload = decode_object(payload, "payload")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| malformed("its signature is not base64url"))?;
    let issuer = match payload.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        Some(_) => return Err(malformed("its iss claim is not a string")),
        None => return Err(VerifyError::MissingClaim("iss")),
    };
    let signing_input = token.rsplit_once('.').map_or("", |(input, _)| input);
    Ok(UnverifiedToken {
        issuer,
        header,
        payload,
        signing_input: signing_input.to_owned(),
        signature,
        token_sha256: hex(&Sha256::digest(token.as_bytes())),
    })
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, VerifyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| VerifyError::Malformed(format!("its {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(VerifyError::Malformed(format!(
            "its {what} is not a JSON object"
        ))),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an issuer URL as a trust policy names it: `https://` (or `http://` when
/// `allow_http`), with a host, and no user name, password, query or fragment. The error says
/// what is wrong.
pub fn check_issuer_url(url: &str, allow_http: bool) -> Result<(), String> {
    check_url(url, allow_http, false)
}

/// [`check_issuer_url`]'s rules, for any URL fetched; `query_ok` for a JWKS URL.
pub(crate) fn check_url(url: &str, allow_http: bool, query_ok: bool) -> Result<(), String> {
    if url.is_empty() {
        return Err("the URL is empty".to_owned());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL contains whitespace or control characters".to_owned());
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("{url} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(format!(
                "{url} is not https:// (plain http is only allowed with \
                 --oidc-allow-http-issuers, for tests)"
            ));
        }
        other => return Err(format!("{url} is not https:// but {other}:")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url} has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{url} must not contain a user name or password"));
    }
    if parsed.query().is_some() && !query_ok {
        return Err(format!("{url} must not have a query (?...)"));
    }
    if parsed.fragment().is_some() {
        return Err(format!("{url} must not have a fragment (#...)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    fn malformed(token: &str) -> bool {
        matches!(peek(token), Err(VerifyError::Malformed(_)))
    }

    #[test]
    fn peek_reads_the_issuer() -> Result<(), VerifyError> {
        let token = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"ES256","kid":"k"}"#),
            b64(r#"{"iss":"https://issuer.test","sub":"x"}"#),
            b64("sig")
        );
        let peeked = peek(&token)?;
        assert_eq!(peeked.issuer, "https://issuer.test");
        assert_eq!(peeked.signature, b"sig");
        assert_eq!(
            peeked.signing_input,
            token.rsplit_once('.').map(|(a, _)| a).unwrap_or_default()
        );
        assert_eq!(peeked.token_sha256.len(), 64);
        // Debug shows no claims or signature.
        assert!(!format!("{peeked:?}").contains("sub"));
        Ok(())
    }

    #[test]
    fn peek_refuses_malformed_tokens() {
        let header = b64(r#"{"alg":"RS256"}"#);
        let payload = b64(r#"{"iss":"https://issuer.test"}"#);
        assert!(malformed(""));
        assert!(malformed("abc"));
        assert!(malformed(&format!("{header}.{payload}")));
        assert!(malformed(&format!("{header}.{payload}.c2ln.x")));
        assert!(malformed(&format!("{header}.{payload}.a.b.c")));
        assert!(malformed(&format!("{header}.{payload}.!!")));
        assert!(malformed(&format!("{header}=.{payload}.c2ln")));
        assert!(malformed(&format!("{}.{payload}.c2ln", b64("[1]"))));
        assert!(malformed(&format!("{}.{payload}.c2ln", b64("{not json"))));
        assert!(malformed(&format!("{header}.{}.c2ln", b64("\"iss\""))));
        assert!(malformed(&format!("{header}.{}.c2ln", b64(r#"{"iss":5}"#))));
        assert_eq!(
            peek(&format!("{header}.{}.c2ln", b64("{}"))).err(),
            Some(VerifyError::MissingClaim("iss"))
        );
        let long = format!("{header}.{payload}.{}", "A".repeat(MAX_TOKEN_BYTES));
        assert!(malformed(&long));
        // An empty signature is left for verify to refuse with the algorithm's name.
        assert!(peek(&format!("{header}.{payload}.")).is_ok());
        // No error text contains the token.
        for bad in ["a.b.c", &format!("{header}.{payload}.!!")] {
            if let Err(err) = peek(bad) {
                assert!(!err.to_string().contains(bad));
            }
        }
    }

    #[test]
    fn issuer_urls() {
        for good in [
            "https://token.actions.githubusercontent.com",
            "https://gitlab.com",
            "https://gitlab.example.com/",
            "https://kubernetes.default.svc.cluster.local",
            "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC",
            "https://127.0.0.1:8443/path",
        ] {
            assert_eq!(check_issuer_url(good, false), Ok(()), "{good}");
        }
        assert!(check_issuer_url("http://127.0.0.1:1234", true).is_ok());
        for (bad, says) in [
            ("http://127.0.0.1:1234", "--oidc-allow-http-issuers"),
            ("ftp://example.com", "ftp"),
            ("https://", "not a URL"),
            ("https://example.com?x=1", "query"),
            ("https://example.com?", "query"),
            ("https://example.com#x", "fragment"),
            ("https://user:pw@example.com", "password"),
            ("https://example.com/ a", "whitespace"),
            (" https://example.com", "whitespace"),
            ("example.com", "not a URL"),
            ("", "empty"),
        ] {
            match check_issuer_url(bad, false) {
                Err(message) => assert!(message.contains(says), "{bad}: {message}"),
                Ok(()) => unreachable!("{bad} accepted"),
            }
        }
    }
}
