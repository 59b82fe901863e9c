//! Trusted devices: a browser where a person signed in with their password carries a signed
//! cookie naming their identity, and its sign-ins count against that cookie's own failure
//! limit instead of the account's. The account-wide lock, which anyone who knows an email can
//! trip, then locks out only browsers that never signed in as that person (OWASP's "device
//! cookies"); the owner's own browser keeps working, and a stolen cookie buys its holder no
//! more guesses than the account limit would.
//!
//! The cookie is a JWT of its own type (`device+jwt`, so it can never pass as an access
//! token), signed with the server's signing keys: no table, and every replica can check it. A
//! cookie signed by a key that has since left the ring is no longer trusted, and the browser
//! is trusted again at its next good sign-in.

use serde_json::json;

use super::now_ms;
use crate::store::Identity;
use crate::tokens::KeyRing;

/// The JWT type of a device cookie.
const DEVICE_TYPE: &str = "device+jwt";
/// How long a browser stays trusted after its last good password sign-in.
pub const TRUSTED_FOR_SECS: i64 = 180 * 24 * 3600;

/// A new device cookie for `identity`, signed by the active key; `None` if signing failed
/// (the sign-in goes on; the browser is simply not trusted).
pub fn remember(keys: &KeyRing, issuer: &str, identity: &Identity) -> Option<String> {
    let now = now_ms() / 1000;
    let claims = json!({
        "iss": issuer,
        "sub": identity.id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now,
        "exp": now + TRUSTED_FOR_SECS,
    });
    match keys.sign_typed(DEVICE_TYPE, &claims) {
        Ok(cookie) => Some(cookie),
        Err(err) => {
            tracing::warn!(error = %err, "could not sign a device cookie");
            None
        }
    }
}

/// The device id (`jti`) of `cookie` when it is ours, current, and names `identity`.
pub fn recognize(
    keys: &KeyRing,
    issuer: &str,
    cookie: &str,
    identity: &Identity,
) -> Option<String> {
    let claims = keys.verify_typed(DEVICE_TYPE, cookie)?;
    let now = now_ms() / 1000;
    let current = claims["exp"].as_i64().is_some_and(|exp| exp > now);
    let ours = claims["iss"] == issuer && claims["sub"] == identity.id.as_str();
    let id = claims["jti"]
        .as_str()
        .filter(|jti| uuid::Uuid::parse_str(jti).is_ok())?;
    (current && ours).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::AtRest;
    use crate::tokens::keyring::generate;

    const ISSUER: &str = "https://auth.test";

    fn ring() -> Result<KeyRing, Box<dyn std::error::Error>> {
        Ok(KeyRing::from_records(
            &[generate(0, &AtRest::Plain)?],
            &AtRest::Plain,
        )?)
    }

    fn identity(id: &str) -> Identity {
        Identity {
            id: id.to_owned(),
            email: format!("{id}@example.com"),
            email_verified: true,
            has_password: true,
            invited_by_org: None,
            created_at: 0,
        }
    }

    #[test]
    fn a_cookie_is_recognized_only_for_its_identity_issuer_and_keys()
    -> Result<(), Box<dyn std::error::Error>> {
        let keys = ring()?;
        let ann = identity("ann");
        let cookie = remember(&keys, ISSUER, &ann).ok_or("not signed")?;
        let device = recognize(&keys, ISSUER, &cookie, &ann).ok_or("not recognized")?;
        assert!(uuid::Uuid::parse_str(&device).is_ok());
        // Each cookie is a device of its own.
        let again = remember(&keys, ISSUER, &ann).ok_or("not signed")?;
        assert_ne!(recognize(&keys, ISSUER, &again, &ann), Some(device));

        assert_eq!(recognize(&keys, ISSUER, &cookie, &identity("bob")), None);
        assert_eq!(recognize(&keys, "https://other.test", &cookie, &ann), None);
        // Another server's keys (or a key revoked since) do not verify it.
        assert_eq!(recognize(&ring()?, ISSUER, &cookie, &ann), None);
        // Never an access token, and an access token is never a device cookie.
        assert!(keys.verify_typed("at+jwt", &cookie).is_none());
        let id_token = keys.sign_id_token(&json!({ "sub": "ann" }))?;
        assert_eq!(recognize(&keys, ISSUER, &id_token, &ann), None);
        // Expired.
        let old = keys.sign_typed(
            DEVICE_TYPE,
            &json!({ "iss": ISSUER, "sub": "ann", "jti": uuid::Uuid::new_v4().to_string(),
                     "iat": 0, "exp": 1 }),
        )?;
        assert_eq!(recognize(&keys, ISSUER, &old, &ann), None);
        Ok(())
    }
}
