//! The Ed25519 key ring: the active signing key (parsed once, not per signature) and every
//! public key that may still verify a token, by `kid`. Keys live in the database so that
//! every replica and every restart signs and verifies with the same keys.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::store::{AuditEvent, SigningKeyRecord, Store, StoreError};

/// The JOSE name of the only algorithm we sign and accept.
pub const ALGORITHM: &str = "EdDSA";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing key {0} in the database cannot be parsed")]
    Corrupt(String),
    #[error("the operating system's random number generator failed")]
    Randomness,
    #[error("no active signing key after creating one")]
    NoActiveKey,
}

pub(crate) struct SigningKey {
    pub kid: String,
    pair: Ed25519KeyPair,
    /// `base64url({"alg":"EdDSA","typ":"at+jwt","kid":...})`, computed once.
    pub header_b64: String,
}

impl SigningKey {
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

pub(crate) struct VerifyingKey {
    public: Vec<u8>,
}

impl VerifyingKey {
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(message, signature)
            .is_ok()
    }
}

/// Active signing key plus every public key still trusted.
pub struct KeyRing {
    pub(crate) active: SigningKey,
    pub(crate) verifying: HashMap<String, VerifyingKey>,
    jwks: serde_json::Value,
}

/// How long a retired key keeps verifying after its `retired_at`: long enough for the last
/// token it signed to expire, on any replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetiredKeyWindow {
    /// Lifetime of access tokens.
    pub access_token_ttl: Duration,
    /// Replicas that have not reloaded their keys yet still sign with the retired key, for up
    /// to one reload interval after the rotation.
    pub reload_interval: Duration,
    /// Clock difference between replicas we tolerate.
    pub margin: Duration,
}

impl RetiredKeyWindow {
    fn millis(&self) -> i64 {
        let total = self.access_token_ttl + self.reload_interval + self.margin;
        i64::try_from(total.as_millis()).unwrap_or(i64::MAX)
    }

    /// Until when (milliseconds) `record` verifies tokens; `None` while it is active.
    pub fn verifies_until(&self, record: &SigningKeyRecord) -> Option<i64> {
        record
            .retired_at
            .map(|retired| retired.saturating_add(self.millis()))
    }

    /// Whether `record` may still verify a token at `now_ms`.
    pub fn still_verifies(&self, record: &SigningKeyRecord, now_ms: i64) -> bool {
        self.verifies_until(record)
            .is_none_or(|until| now_ms < until)
    }

    /// Retired keys whose window ended before this time may be deleted.
    pub fn expired_before(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.millis())
    }
}

impl KeyRing {
    /// Loads the keys from the store, creating the first signing key if there is none.
    pub async fn load_or_create(
        store: &dyn Store,
        now_ms: i64,
        window: &RetiredKeyWindow,
    ) -> Result<Self, KeyError> {
        let records = store.signing_keys().await?;
        if records.iter().any(|k| k.retired_at.is_none()) {
            return Self::trusted_at(&records, now_ms, window);
        }
        store
            .insert_signing_key_if_none_active(generate(now_ms)?)
            .await?;
        Self::trusted_at(&store.signing_keys().await?, now_ms, window)
    }

    /// Loads the keys from the store without creating any: what a running server does when
    /// it picks up a rotation.
    pub async fn load(
        store: &dyn Store,
        now_ms: i64,
        window: &RetiredKeyWindow,
    ) -> Result<Self, KeyError> {
        Self::trusted_at(&store.signing_keys().await?, now_ms, window)
    }

    /// The ring of `records` (newest first) that still verify at `now_ms`: retired keys
    /// whose window has passed are left out of verification and the JWKS.
    pub fn trusted_at(
        records: &[SigningKeyRecord],
        now_ms: i64,
        window: &RetiredKeyWindow,
    ) -> Result<Self, KeyError> {
        let trusted: Vec<SigningKeyRecord> = records
            .iter()
            .filter(|record| window.still_verifies(record, now_ms))
            .cloned()
            .collect();
        Self::from_records(&trusted)
    }

    /// Builds the ring from stored records (newest first): the newest active key signs.
    pub fn from_records(records: &[SigningKeyRecord]) -> Result<Self, KeyError> {
        let mut active = None;
        let mut verifying = HashMap::new();
        let mut jwks_keys = Vec::new();
        for record in records.iter().filter(|k| k.algorithm == ALGORITHM) {
            if active.is_none() && record.retired_at.is_none() {
                let pair = Ed25519KeyPair::from_pkcs8(&record.private_key)
                    .map_err(|_| KeyError::Corrupt(record.kid.clone()))?;
                if pair.public_key().as_ref() != record.public_key.as_slice() {
                    return Err(KeyError::Corrupt(record.kid.clone()));
                }
                let header = json!({"alg": ALGORITHM, "typ": "at+jwt", "kid": record.kid});
                active = Some(SigningKey {
                    kid: record.kid.clone(),
                    pair,
                    header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
                });
            }
            jwks_keys.push(json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(&record.public_key),
                "kid": record.kid,
                "alg": ALGORITHM,
                "use": "sig",
            }));
            verifying.insert(
                record.kid.clone(),
                VerifyingKey {
                    public: record.public_key.clone(),
                },
            );
        }
        let active = active.ok_or(KeyError::NoActiveKey)?;
        Ok(Self {
            active,
            verifying,
            jwks: json!({ "keys": jwks_keys }),
        })
    }

    /// The JSON Web Key Set document.
    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// `kid` of the key that signs new tokens.
    pub fn active_kid(&self) -> &str {
        &self.active.kid
    }

    /// Whether a token signed with `kid` can be verified by this ring.
    pub fn knows(&self, kid: &str) -> bool {
        self.verifying.contains_key(kid)
    }

    /// Every `kid` this ring verifies, in no particular order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.verifying.keys().map(String::as_str)
    }
}

/// A new signing key is active; the keys it replaced keep verifying for their window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub kid: String,
    pub retired: Vec<String>,
}

/// The audit action of a rotation; every server that hears of it reloads its keys.
pub const ROTATED_ACTION: &str = "keys.rotated";

/// Generates a new key, makes it the active one and retires the previous one, in one
/// transaction with a `keys.rotated` audit event. Running servers pick it up when they hear of
/// it through the change feed, at their next periodic reload, or at once when they see a
/// token signed with it.
pub async fn rotate(store: &dyn Store, actor: String, now_ms: i64) -> Result<Rotation, KeyError> {
    let key = generate(now_ms)?;
    let kid = key.kid.clone();
    let audit = AuditEvent {
        at: now_ms,
        action: ROTATED_ACTION,
        actor,
        org_id: None,
        subject_user_id: None,
        address: None,
        user_agent: None,
        detail: Some(json!({ "kid": kid }).to_string()),
    };
    let retired = store.rotate_signing_key(key, audit).await?;
    Ok(Rotation { kid, retired })
}

/// Generates a new Ed25519 key; its `kid` is the RFC 7638 JWK thumbprint.
pub fn generate(now_ms: i64) -> Result<SigningKeyRecord, KeyError> {
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Randomness)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Randomness)?;
    let public_key = pair.public_key().as_ref().to_vec();
    Ok(SigningKeyRecord {
        kid: thumbprint(&public_key),
        algorithm: ALGORITHM.to_owned(),
        private_key: pkcs8.as_ref().to_vec(),
        public_key,
        created_at: now_ms,
        retired_at: None,
    })
}

/// RFC 7638 thumbprint of an Ed25519 public key (members in lexicographic order).
fn thumbprint(public_key: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public_key)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_key_window() -> Result<(), KeyError> {
        let window = RetiredKeyWindow {
            access_token_ttl: Duration::from_secs(100),
            reload_interval: Duration::from_secs(10),
            margin: Duration::from_secs(1),
        };
        let active = generate(1_000)?;
        let retired = SigningKeyRecord {
            retired_at: Some(2_000),
            ..generate(0)?
        };
        assert_eq!(window.verifies_until(&active), None);
        assert_eq!(window.verifies_until(&retired), Some(2_000 + 111_000));
        assert!(window.still_verifies(&retired, 112_999));
        assert!(!window.still_verifies(&retired, 113_000));
        assert!(window.still_verifies(&active, i64::MAX));
        assert_eq!(window.expired_before(113_000), 2_000);
        let records = [active.clone(), retired.clone()];
        let ring = KeyRing::trusted_at(&records, 50_000, &window)?;
        assert!(ring.knows(&retired.kid) && ring.knows(&active.kid));
        assert_eq!(ring.jwks()["keys"].as_array().map(Vec::len), Some(2));
        let ring = KeyRing::trusted_at(&records, 113_000, &window)?;
        assert!(!ring.knows(&retired.kid));
        assert_eq!(ring.active_kid(), active.kid);
        assert_eq!(ring.jwks()["keys"].as_array().map(Vec::len), Some(1));
        Ok(())
    }
}
