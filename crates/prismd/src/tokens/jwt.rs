//! JWT access tokens in the RFC 9068 shape, signed with Ed25519. Verification pins the
//! algorithm and type from our own key ring and never trusts the header to choose either, so
//! `alg: none`, HMAC-with-the-public-key and unknown-`kid` tokens fail before any claim is read.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::keyring::{ALGORITHM, KeyRing};

/// Tokens longer than this are rejected unread.
const MAX_TOKEN_LEN: usize = 4096;
/// Allowed clock difference between replicas for `iat`/`nbf`.
pub const CLOCK_SKEW_SECS: i64 = 60;

/// Claims of an access token. `ep` (the user's token epoch when issued) and `sid` (the refresh
/// token it came from) let the API refuse tokens of revoked sessions and removed users at once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    /// Tenant id of the user's organization.
    pub tid: String,
    /// Session: id of the refresh token this access token was exchanged from.
    pub sid: String,
    /// The user's token epoch at issue time.
    pub ep: i64,
}

/// `aud` may be one string or a list (RFC 7519 §4.1.3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(aud) => aud == wanted,
            Audience::Many(auds) => auds.iter().any(|aud| aud == wanted),
        }
    }
}

/// What a valid token must say.
#[derive(Debug, Clone)]
pub struct VerifyExpectations<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub now_secs: i64,
}

/// Why a bearer token was refused. The text is safe to show: it never contains the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the access token is not a well-formed JWT")]
    Malformed,
    #[error("the access token uses an algorithm this server does not accept")]
    UnsupportedAlgorithm,
    #[error("the token is not an access token (typ must be at+jwt)")]
    WrongType,
    #[error("the access token was signed by a key this server does not know")]
    UnknownKey,
    #[error("the access token's signature is invalid")]
    BadSignature,
    #[error("the access token was issued by another issuer")]
    WrongIssuer,
    #[error("the access token is for another audience")]
    WrongAudience,
    #[error("the access token has expired; exchange the refresh token for a new one")]
    Expired,
    #[error("the access token is not valid yet")]
    NotYetValid,
    #[error("the access token could not be signed")]
    Encoding,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

impl KeyRing {
    /// Signs `claims` with the active key.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, JwtError> {
        let payload = serde_json::to_vec(claims).map_err(|_| JwtError::Encoding)?;
        let key = &self.active;
        let mut token = String::with_capacity(key.header_b64.len() + payload.len() * 4 / 3 + 100);
        token.push_str(&key.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    /// Signs an OpenID Connect ID token (`typ: JWT`, so it can never pass as an access token).
    pub fn sign_id_token(&self, claims: &serde_json::Value) -> Result<String, JwtError> {
        self.sign_typed("JWT", claims)
    }

    /// Signs `claims` as a JWT of type `typ` with the active key. Any `typ` but `at+jwt` can
    /// never pass as an access token.
    pub fn sign_typed(&self, typ: &str, claims: &serde_json::Value) -> Result<String, JwtError> {
        let key = &self.active;
        let header = serde_json::json!({ "alg": ALGORITHM, "typ": typ, "kid": key.kid });
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut token);
        let signature = key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    /// The claims of a JWT this server signed with type `typ` (exactly), when its signature
    /// holds under a key of the ring; nothing else is checked.
    pub fn verify_typed(&self, typ: &str, token: &str) -> Option<serde_json::Value> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let header: Header = decode_json(header_b64).ok()?;
        if header.alg != ALGORITHM || header.typ.as_deref() != Some(typ) {
            return None;
        }
        let key = self.verifying.get(header.kid.as_deref()?)?;
        let signature = URL_SAFE_NO_PAD.decode(signature_b64).ok()?;
        let signed_len = header_b64.len() + 1 + payload_b64.len();
        key.verify(&token.as_bytes()[..signed_len], &signature)
            .then(|| decode_json(payload_b64).ok())
            .flatten()
    }

    /// Verifies signature, type, issuer, audience and time of `token`.
    pub fn verify(
        &self,
        token: &str,
        expect: &VerifyExpectations<'_>,
    ) -> Result<AccessClaims, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Header = decode_json(header_b64)?;
        if header.alg != ALGORITHM {
            return Err(JwtError::UnsupportedAlgorithm);
        }
        let typ_ok = header.typ.as_deref().is_some_and(|typ| {
            typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(JwtError::WrongType);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(JwtError::UnknownKey)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| JwtError::Malformed)?;
        let signed_len = header_b64.len() + 1 + payload_b64.len();
        if !key.verify(&token.as_bytes()[..signed_len], &signature) {
            return Err(JwtError::BadSignature);
        }
        let claims: AccessClaims = decode_json(payload_b64)?;
        if claims.iss != expect.issuer {
            return Err(JwtError::WrongIssuer);
        }
        if !claims.aud.contains(expect.audience) {
            return Err(JwtError::WrongAudience);
        }
        check_validity_period(&claims, expect.now_secs)?;
        Ok(claims)
    }
}

/// `exp` has not passed and `nbf` (or `iat`) has come, allowing for clock skew.
pub fn check_validity_period(claims: &AccessClaims, now_secs: i64) -> Result<(), JwtError> {
    if claims.exp <= now_secs {
        return Err(JwtError::Expired);
    }
    let not_before = claims.nbf.unwrap_or(claims.iat).max(claims.iat);
    if not_before > now_secs + CLOCK_SKEW_SECS {
        return Err(JwtError::NotYetValid);
    }
    Ok(())
}

/// The `kid` an access token claims to be signed with, read without verifying anything, when
/// it could name one of our keys (an RFC 7638 thumbprint: 43 base64url characters). Used only
/// to decide whether reloading the key ring might help.
pub fn claimed_kid(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let header: Header = decode_json(token.split('.').next()?).ok()?;
    let kid = header.kid.filter(|kid| {
        kid.len() == 43
            && kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })?;
    (header.alg == ALGORITHM).then_some(kid)
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::AtRest;
    use crate::tokens::keyring::generate;

    fn ring() -> Result<KeyRing, Box<dyn std::error::Error>> {
        Ok(KeyRing::from_records(
            &[generate(0, &AtRest::Plain)?],
            &AtRest::Plain,
        )?)
    }

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            iss: "https://auth.test".into(),
            sub: "user-1".into(),
            aud: Audience::One("https://auth.test/api".into()),
            exp: now + 600,
            iat: now,
            nbf: None,
            jti: "j".into(),
            client_id: "prism-cli".into(),
            scope: "openid".into(),
            tid: "t".into(),
            sid: "s".into(),
            ep: 0,
        }
    }

    fn expect(now: i64) -> VerifyExpectations<'static> {
        VerifyExpectations {
            issuer: "https://auth.test",
            audience: "https://auth.test/api",
            now_secs: now,
        }
    }

    #[test]
    fn round_trip_and_claim_checks() -> Result<(), Box<dyn std::error::Error>> {
        let ring = ring()?;
        let now = 1_000_000;
        let token = ring.sign(&claims(now))?;
        assert_eq!(ring.verify(&token, &expect(now))?, claims(now));
        assert_eq!(
            ring.verify(&token, &expect(now + 600)),
            Err(JwtError::Expired)
        );
        let wrong_iss = VerifyExpectations {
            issuer: "https://other",
            ..expect(now)
        };
        assert_eq!(ring.verify(&token, &wrong_iss), Err(JwtError::WrongIssuer));
        let wrong_aud = VerifyExpectations {
            audience: "other",
            ..expect(now)
        };
        assert_eq!(
            ring.verify(&token, &wrong_aud),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            ring.verify(&token, &expect(now - 120)),
            Err(JwtError::NotYetValid)
        );
        Ok(())
    }

    #[test]
    fn claimed_kid_only_for_plausible_kids() -> Result<(), Box<dyn std::error::Error>> {
        let ring = ring()?;
        let token = ring.sign(&claims(10))?;
        assert_eq!(claimed_kid(&token).as_deref(), Some(ring.active_kid()));
        let header = |value: serde_json::Value| URL_SAFE_NO_PAD.encode(value.to_string());
        for refused in [
            serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "short"}),
            serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "/".repeat(43)}),
            serde_json::json!({"alg": "HS256", "typ": "at+jwt", "kid": "a".repeat(43)}),
            serde_json::json!({"alg": "EdDSA", "typ": "at+jwt"}),
        ] {
            assert_eq!(claimed_kid(&format!("{}.e30.sig", header(refused))), None);
        }
        assert_eq!(claimed_kid("not a token"), None);
        Ok(())
    }

    #[test]
    fn another_ring_cannot_verify() -> Result<(), Box<dyn std::error::Error>> {
        let token = ring()?.sign(&claims(10))?;
        assert_eq!(
            ring()?.verify(&token, &expect(10)),
            Err(JwtError::UnknownKey)
        );
        Ok(())
    }

    #[test]
    fn signature_bit_flips_fail() -> Result<(), Box<dyn std::error::Error>> {
        let ring = ring()?;
        let token = ring.sign(&claims(10))?;
        let (body, signature) = token.rsplit_once('.').ok_or("no signature")?;
        let mut raw = URL_SAFE_NO_PAD.decode(signature)?;
        raw[7] ^= 0x10;
        let tampered = format!("{body}.{}", URL_SAFE_NO_PAD.encode(raw));
        assert_eq!(
            ring.verify(&tampered, &expect(10)),
            Err(JwtError::BadSignature)
        );
        Ok(())
    }
}
