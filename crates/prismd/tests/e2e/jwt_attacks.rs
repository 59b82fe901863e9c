//! Forged and tampered access tokens at `/api`. Each case is built from a real token, and a
//! re-signed copy with unchanged claims is accepted first, so a 401 below proves the check
//! that was meant, not a broken forgery.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::Ed25519KeyPair;
use serde_json::{Value, json};

use crate::harness::{Server, TestResult, temp_dir, user_with_token};

pub(crate) struct Forger {
    pub(crate) kid: String,
    key: Ed25519KeyPair,
    pub(crate) public: Vec<u8>,
}

impl Forger {
    /// Reads the server's own signing key from its database, as an attacker with a stolen
    /// database backup (or a test) could.
    pub(crate) async fn steal(
        data_dir: &std::path::Path,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let url = format!("sqlite://{}?mode=ro", data_dir.join("prismd.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await?;
        let (kid, private, public): (String, Vec<u8>, Vec<u8>) = sqlx::query_as(
            "SELECT kid, private_key, public_key FROM signing_keys WHERE retired_at IS NULL",
        )
        .fetch_one(&pool)
        .await?;
        pool.close().await;
        let key = Ed25519KeyPair::from_pkcs8(&private).map_err(|e| format!("{e:?}"))?;
        Ok(Self { kid, key, public })
    }

    pub(crate) fn sign(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }

    pub(crate) fn header(&self) -> Value {
        json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": self.kid })
    }
}

pub(crate) fn claims_of(token: &str) -> Result<Value, Box<dyn std::error::Error>> {
    let payload = token.split('.').nth(1).ok_or("not a JWT")?;
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?)
}

pub(crate) fn with(claims: &Value, field: &str, value: Value) -> Value {
    let mut changed = claims.clone();
    changed[field] = value;
    changed
}

pub(crate) fn hs256(key: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        input.as_bytes(),
    );
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

#[tokio::test]
async fn forged_and_tampered_access_tokens_get_401() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    let refresh = user_with_token(dir.path(), "ci@example.com")?;
    let real = server.access_token(&refresh).await?;
    let forger = Forger::steal(dir.path()).await?;
    let claims = claims_of(&real)?;
    let now = claims["iat"].as_i64().ok_or("no iat")?;

    // Positive control: the same claims re-signed with the real key are accepted.
    let control = forger.sign(&forger.header(), &claims);
    assert_eq!(server.whoami(&control).await?, Ok("ci@example.com".into()));

    // The claims the RFC 9068 profile requires are all there.
    for field in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "scope",
    ] {
        assert!(
            claims.get(field).is_some(),
            "missing claim {field}: {claims}"
        );
    }
    assert_eq!(claims["exp"].as_i64(), Some(now + 604_800));

    let stranger = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|e| format!("{e:?}"))?
            .as_ref(),
    )
    .map_err(|e| format!("{e:?}"))?;
    let stranger_forger = Forger {
        kid: forger.kid.clone(),
        key: stranger,
        public: Vec::new(),
    };

    let (body, signature) = real.rsplit_once('.').ok_or("no signature")?;
    let mut flipped = URL_SAFE_NO_PAD.decode(signature)?;
    flipped[0] ^= 0x01;
    let bit_flip = format!("{body}.{}", URL_SAFE_NO_PAD.encode(&flipped));
    let jwks_x = URL_SAFE_NO_PAD.encode(&forger.public);
    let hs_header = json!({ "alg": "HS256", "typ": "at+jwt", "kid": forger.kid });

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD
                    .encode(json!({"alg":"none","typ":"at+jwt","kid":forger.kid}).to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            ),
            "algorithm",
        ),
        (
            "HS256 keyed with the raw public key",
            hs256(&forger.public, &hs_header, &claims),
            "algorithm",
        ),
        (
            "HS256 keyed with the JWK x value",
            hs256(jwks_x.as_bytes(), &hs_header, &claims),
            "algorithm",
        ),
        (
            "unknown kid",
            forger.sign(
                &json!({"alg":"EdDSA","typ":"at+jwt","kid":"not-a-key"}),
                &claims,
            ),
            "key",
        ),
        (
            "no kid",
            forger.sign(&json!({"alg":"EdDSA","typ":"at+jwt"}), &claims),
            "key",
        ),
        (
            "signed by another key under our kid",
            stranger_forger.sign(&forger.header(), &claims),
            "signature",
        ),
        ("signature bit flip", bit_flip, "signature"),
        (
            "typ JWT (not an access token)",
            forger.sign(
                &json!({"alg":"EdDSA","typ":"JWT","kid":forger.kid}),
                &claims,
            ),
            "typ",
        ),
        (
            "wrong iss",
            forger.sign(
                &forger.header(),
                &with(&claims, "iss", json!("https://evil.example")),
            ),
            "issuer",
        ),
        (
            "wrong aud",
            forger.sign(
                &forger.header(),
                &with(&claims, "aud", json!("https://evil.example/api")),
            ),
            "audience",
        ),
        (
            "expired",
            forger.sign(&forger.header(), &with(&claims, "exp", json!(now - 10))),
            "expired",
        ),
        (
            "not yet valid",
            forger.sign(
                &forger.header(),
                &with(
                    &with(&claims, "iat", json!(now + 3600)),
                    "exp",
                    json!(now + 7200),
                ),
            ),
            "not valid yet",
        ),
        (
            "future epoch",
            forger.sign(
                &forger.header(),
                &with(&claims, "ep", json!(claims["ep"].as_i64().unwrap_or(0) + 1)),
            ),
            "revoked",
        ),
        (
            "unknown session",
            forger.sign(
                &forger.header(),
                &with(
                    &claims,
                    "sid",
                    json!("00000000-0000-0000-0000-000000000000"),
                ),
            ),
            "revoked",
        ),
        (
            "unknown user",
            forger.sign(
                &forger.header(),
                &with(
                    &claims,
                    "sub",
                    json!("00000000-0000-0000-0000-000000000000"),
                ),
            ),
            "user",
        ),
        (
            "missing claims",
            forger.sign(
                &forger.header(),
                &json!({"iss": claims["iss"], "exp": now + 100}),
            ),
            "well-formed",
        ),
        ("two segments", body.to_owned(), "well-formed"),
        ("garbage", "not a token".into(), "well-formed"),
        ("a refresh token", refresh.clone(), "well-formed"),
        (
            "huge token",
            format!("{body}.{}", "A".repeat(10_000)),
            "well-formed",
        ),
    ];
    for (case, token, reason) in cases {
        let (status, challenge, body) = server
            .graphql(Some(&token), "{ authenticatedUser { id } }")
            .await?;
        assert_eq!(status, 401, "{case}: {body}");
        let challenge = challenge.unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{case}: {challenge}");
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{case}: {challenge}"
        );
        let description = body["error_description"].as_str().unwrap_or("");
        assert!(
            description.contains(reason),
            "{case}: expected '{reason}' in '{description}'"
        );
        assert!(body.get("data").is_none(), "{case}: {body}");
    }

    // No token at all, or another scheme: 401 with a bare challenge.
    for header in [None, Some("Basic dXNlcjpwYXNz"), Some("Bearer ")] {
        let mut request = server
            .http
            .post(server.url("/api"))
            .json(&json!({"query": "{ authenticatedUser { id } }"}));
        if let Some(value) = header {
            request = request.header("authorization", value);
        }
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), 401, "{header:?}");
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(challenge.starts_with("Bearer"), "{header:?}: {challenge}");
    }
    Ok(())
}
