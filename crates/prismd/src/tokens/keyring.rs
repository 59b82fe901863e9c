//! The Ed25519 key ring: the active signing key (parsed once, not per signature) and every
//! public key that may still verify a token, by `kid`. Keys live in the database so that
//! every replica and every restart signs and verifies with the same keys.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
// aws-lc-rs rather than ring: it signs Ed25519 in 40% of ring's time (BENCHMARKS.md), and
// reads the same PKCS#8 documents, so keys stored by earlier releases load unchanged.
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::at_rest::{AtRest, is_sealed};
use super::key_error::KeyError;
use crate::store::{AuditEvent, KeyDeletion, PrivateKeyReplacement, SigningKeyRecord, Store};

/// The JOSE name of the only algorithm we sign and accept.
pub const ALGORITHM: &str = "EdDSA";

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
    /// Refuses keys it cannot use (sealed without a KEK, or with another KEK) before
    /// anything else.
    pub async fn load_or_create(
        store: &dyn Store,
        now_ms: i64,
        window: &RetiredKeyWindow,
        at_rest: &AtRest,
    ) -> Result<Self, KeyError> {
        let records = store.signing_keys().await?;
        at_rest.check(&records)?;
        if records.iter().any(|k| k.retired_at.is_none()) {
            return Self::trusted_at(&records, now_ms, window, at_rest);
        }
        store
            .insert_signing_key_if_none_active(generate(now_ms, at_rest)?)
            .await?;
        Self::trusted_at(&store.signing_keys().await?, now_ms, window, at_rest)
    }

    /// Loads the keys from the store without creating any: what a running server does when
    /// it picks up a rotation.
    pub async fn load(
        store: &dyn Store,
        now_ms: i64,
        window: &RetiredKeyWindow,
        at_rest: &AtRest,
    ) -> Result<Self, KeyError> {
        Self::trusted_at(&store.signing_keys().await?, now_ms, window, at_rest)
    }

    /// The ring of `records` (newest first) that still verify at `now_ms`: retired keys
    /// whose window has passed are left out of verification and the JWKS.
    pub fn trusted_at(
        records: &[SigningKeyRecord],
        now_ms: i64,
        window: &RetiredKeyWindow,
        at_rest: &AtRest,
    ) -> Result<Self, KeyError> {
        let trusted: Vec<SigningKeyRecord> = records
            .iter()
            .filter(|record| window.still_verifies(record, now_ms))
            .cloned()
            .collect();
        Self::from_records(&trusted, at_rest)
    }

    /// Builds the ring from stored records (newest first): the newest active key signs. Only
    /// its private key is decrypted; the others only verify.
    pub fn from_records(records: &[SigningKeyRecord], at_rest: &AtRest) -> Result<Self, KeyError> {
        let mut active = None;
        let mut verifying = HashMap::new();
        let mut jwks_keys = Vec::new();
        for record in records.iter().filter(|k| k.algorithm == ALGORITHM) {
            if active.is_none() && record.retired_at.is_none() {
                let pkcs8 = at_rest.reveal(&record.kid, &record.private_key)?;
                let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
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
///
/// Refuses (changing nothing) when the stored keys are sealed and `at_rest` has no KEK or
/// another one: a plain key beside sealed ones would undo the encryption.
pub async fn rotate(
    store: &dyn Store,
    at_rest: &AtRest,
    actor: String,
    now_ms: i64,
) -> Result<Rotation, KeyError> {
    at_rest.check(&store.signing_keys().await?)?;
    let key = generate(now_ms, at_rest)?;
    let kid = key.kid.clone();
    let retired = store
        .rotate_signing_key(key, rotated_event(actor, &kid, now_ms))
        .await?;
    Ok(Rotation { kid, retired })
}

/// Audit action of a revoked signing key.
pub const REVOKED_ACTION: &str = "keys.revoked";

/// What [`revoke`] did.
#[derive(Debug)]
pub struct Revocation {
    /// The key that signed new tokens instead, when the revoked one was the active key.
    pub rotated_to: Option<String>,
}

/// Revokes the signing key `kid` (after a leak of its private key): it is deleted, so every
/// token it signed is refused as soon as each process reloads its keys, which the change feed
/// makes them do at once (audited as `keys.revoked`, about no one user, which also drops every
/// cached standing). The active key is rotated out first. Refresh tokens are untouched: their
/// holders get new access tokens, signed with the new key.
pub async fn revoke(
    store: &dyn Store,
    at_rest: &AtRest,
    actor: String,
    now_ms: i64,
    kid: &str,
) -> Result<Revocation, KeyError> {
    let records = store.signing_keys().await?;
    let Some(record) = records.iter().find(|record| record.kid == kid) else {
        return Err(KeyError::NoSuchKey(kid.to_owned()));
    };
    let rotated_to = if record.retired_at.is_none() {
        Some(rotate(store, at_rest, actor.clone(), now_ms).await?.kid)
    } else {
        None
    };
    let audit = AuditEvent {
        at: now_ms,
        action: REVOKED_ACTION,
        actor,
        org_id: None,
        subject_user_id: None,
        address: None,
        user_agent: None,
        detail: Some(serde_json::json!({ "kid": kid, "rotated_to": rotated_to }).to_string()),
    };
    match store.delete_retired_signing_key(kid, audit).await? {
        KeyDeletion::Deleted => Ok(Revocation { rotated_to }),
        KeyDeletion::NotFound => Err(KeyError::NoSuchKey(kid.to_owned())),
        // Only new keys become active, so after the rotation above this cannot happen: a guard.
        KeyDeletion::Active => Err(KeyError::StillActive(kid.to_owned())),
    }
}

/// Actor of automatic rotations in the audit log.
pub const AUTOMATIC_ACTOR: &str = "system";

/// Rotates when the active key was created `period` or longer before `now_ms` (the automatic
/// rotation, `--key-rotation-period`). The age is checked again inside the rotation's
/// transaction, so replicas that decide to rotate at the same moment make one new key between
/// them; the others get `None`, as does a call while the key is younger than `period`.
pub async fn rotate_if_older_than(
    store: &dyn Store,
    at_rest: &AtRest,
    period: Duration,
    now_ms: i64,
) -> Result<Option<Rotation>, KeyError> {
    let period_ms = i64::try_from(period.as_millis()).unwrap_or(i64::MAX);
    let stale_before = now_ms.saturating_sub(period_ms);
    let records = store.signing_keys().await?;
    // A replica left with an old KEK (after `keys rewrap`) must not add a key the others
    // cannot open.
    at_rest.check(&records)?;
    let active_is_young = records
        .iter()
        .any(|k| k.retired_at.is_none() && k.created_at >= stale_before);
    if active_is_young {
        return Ok(None);
    }
    let key = generate(now_ms, at_rest)?;
    let kid = key.kid.clone();
    let audit = rotated_event(AUTOMATIC_ACTOR.to_owned(), &kid, now_ms);
    Ok(store
        .rotate_signing_key_if_stale(key, audit, stale_before)
        .await?
        .map(|retired| Rotation { kid, retired }))
}

fn rotated_event(actor: String, kid: &str, now_ms: i64) -> AuditEvent {
    AuditEvent {
        at: now_ms,
        action: ROTATED_ACTION,
        actor,
        org_id: None,
        subject_user_id: None,
        address: None,
        user_agent: None,
        detail: Some(json!({ "kid": kid }).to_string()),
    }
}

/// The audit action of sealing stored plain keys with a newly given KEK.
pub const SEALED_ACTION: &str = "keys.sealed";

/// With a KEK: seals every private key still stored plain, in one transaction audited as
/// `keys.sealed` (a start with a KEK on a database that had none). Returns the kids it sealed;
/// a key another process sealed meanwhile is left alone. Refuses keys sealed with another KEK.
pub async fn seal_plain_keys(
    store: &dyn Store,
    at_rest: &AtRest,
    now_ms: i64,
) -> Result<Vec<String>, KeyError> {
    if matches!(at_rest, AtRest::Plain) {
        return Ok(Vec::new());
    }
    let records = store.signing_keys().await?;
    at_rest.check(&records)?;
    let mut replacements = Vec::new();
    for record in records.iter().filter(|r| !is_sealed(&r.private_key)) {
        replacements.push(PrivateKeyReplacement {
            kid: record.kid.clone(),
            sealed: at_rest.protect(&record.kid, &record.private_key)?,
            previous: record.private_key.clone(),
        });
    }
    if replacements.is_empty() {
        return Ok(Vec::new());
    }
    let kids: Vec<String> = replacements.iter().map(|r| r.kid.clone()).collect();
    let audit = AuditEvent {
        at: now_ms,
        action: SEALED_ACTION,
        actor: AUTOMATIC_ACTOR.to_owned(),
        org_id: None,
        subject_user_id: None,
        address: None,
        user_agent: None,
        detail: Some(json!({ "kids": kids }).to_string()),
    };
    let replaced = store.replace_private_keys(&replacements, audit).await?;
    Ok(replaced)
}

/// The audit action of re-sealing the keys with a new KEK (`prismd keys rewrap`).
pub const REWRAPPED_ACTION: &str = "keys.rewrapped";

/// Most passes [`rewrap`] makes when keys are added while it runs.
const REWRAP_PASSES: usize = 5;

/// Re-seals every private key with `new` (a changed KEK): opened with `current`, sealed with
/// `new`, each pass in one transaction audited as `keys.rewrapped`. Keys already sealed with
/// `new` are left alone, so an interrupted or repeated run finishes the job; a key rotated in
/// meanwhile (by a server still running with `current`) is taken by the next pass. Returns
/// the kids it re-sealed.
pub async fn rewrap(
    store: &dyn Store,
    current: &AtRest,
    new: &AtRest,
    actor: &str,
    now_ms: i64,
) -> Result<Vec<String>, KeyError> {
    let mut rewrapped = Vec::new();
    for _ in 0..REWRAP_PASSES {
        let records = store.signing_keys().await?;
        let pending: Vec<&SigningKeyRecord> = records
            .iter()
            .filter(|record| !new.sealed_here(&record.private_key))
            .collect();
        if pending.is_empty() {
            return Ok(rewrapped);
        }
        let mut replacements = Vec::new();
        for record in pending {
            let pkcs8 = current.reveal(&record.kid, &record.private_key)?;
            replacements.push(PrivateKeyReplacement {
                kid: record.kid.clone(),
                sealed: new.protect(&record.kid, &pkcs8)?,
                previous: record.private_key.clone(),
            });
        }
        let kids: Vec<String> = replacements.iter().map(|r| r.kid.clone()).collect();
        let audit = AuditEvent {
            at: now_ms,
            action: REWRAPPED_ACTION,
            actor: actor.to_owned(),
            org_id: None,
            subject_user_id: None,
            address: None,
            user_agent: None,
            detail: Some(json!({ "kids": kids }).to_string()),
        };
        rewrapped.extend(store.replace_private_keys(&replacements, audit).await?);
    }
    Err(KeyError::StillChanging)
}

/// Generates a new Ed25519 key, its private key stored as `at_rest` says; its `kid` is the
/// RFC 7638 JWK thumbprint.
pub fn generate(now_ms: i64, at_rest: &AtRest) -> Result<SigningKeyRecord, KeyError> {
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Randomness)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Randomness)?;
    let public_key = pair.public_key().as_ref().to_vec();
    let kid = thumbprint(&public_key);
    Ok(SigningKeyRecord {
        private_key: at_rest.protect(&kid, pkcs8.as_ref())?,
        kid,
        algorithm: ALGORITHM.to_owned(),
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
        let active = generate(1_000, &AtRest::Plain)?;
        let retired = SigningKeyRecord {
            retired_at: Some(2_000),
            ..generate(0, &AtRest::Plain)?
        };
        assert_eq!(window.verifies_until(&active), None);
        assert_eq!(window.verifies_until(&retired), Some(2_000 + 111_000));
        assert!(window.still_verifies(&retired, 112_999));
        assert!(!window.still_verifies(&retired, 113_000));
        assert!(window.still_verifies(&active, i64::MAX));
        assert_eq!(window.expired_before(113_000), 2_000);
        let records = [active.clone(), retired.clone()];
        let ring = KeyRing::trusted_at(&records, 50_000, &window, &AtRest::Plain)?;
        assert!(ring.knows(&retired.kid) && ring.knows(&active.kid));
        assert_eq!(ring.jwks()["keys"].as_array().map(Vec::len), Some(2));
        let ring = KeyRing::trusted_at(&records, 113_000, &window, &AtRest::Plain)?;
        assert!(!ring.knows(&retired.kid));
        assert_eq!(ring.active_kid(), active.kid);
        assert_eq!(ring.jwks()["keys"].as_array().map(Vec::len), Some(1));
        Ok(())
    }
}
