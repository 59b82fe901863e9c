//! One issuer's signing keys, parsed from its JWKS, and signature checks with them.
//!
//! Signatures are checked with `aws-lc-rs` directly (the provider that signs and checks our
//! own tokens) rather than with the `jsonwebtoken` crate: its `JwkSet` refuses a whole set
//! over one key of a type it does not know, where we skip that key; its `decode` takes the
//! algorithm from the header and validates claims its own way; and its `crypto::verify`
//! panics when handed an HMAC algorithm with an RSA key. What would remain is a thin wrapper
//! over these same calls, while the key-confusion rules have to be ours anyway: the
//! algorithm comes from the key's type and curve (and its own `alg`), and the header's must
//! agree.

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::{VerifyError, for_message};

/// Keys of a JWKS beyond this many are ignored.
const MAX_KEYS: usize = 100;
/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// The accepted signature algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    /// The header's `alg`; anything but the three is refused here, before any key is looked at.
    pub(crate) fn from_header(alg: &str) -> Result<Self, VerifyError> {
        match alg {
            "RS256" => Ok(Self::Rs256),
            "ES256" => Ok(Self::Es256),
            "EdDSA" => Ok(Self::EdDsa),
            other => Err(VerifyError::UnsupportedAlgorithm(for_message(other))),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

/// Public key bytes, already checked for shape.
#[derive(Debug)]
enum Material {
    /// Big-endian modulus and exponent without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point: 0x04 || x || y.
    P256 {
        point: Vec<u8>,
    },
    Ed25519 {
        x: Vec<u8>,
    },
}

/// One usable signing key.
#[derive(Debug)]
pub(crate) struct Key {
    kid: Option<String>,
    /// The JWK's own `alg`, when it states one.
    declared_alg: Option<String>,
    material: Material,
}

impl Key {
    /// The one algorithm this key's type and curve allow.
    fn alg(&self) -> Alg {
        match self.material {
            Material::Rsa { .. } => Alg::Rs256,
            Material::P256 { .. } => Alg::Es256,
            Material::Ed25519 { .. } => Alg::EdDsa,
        }
    }

    /// Why this key cannot verify a token of `alg`, if it cannot.
    fn misfit(&self, alg: Alg) -> Option<String> {
        if self.alg() != alg {
            let kind = match self.material {
                Material::Rsa { .. } => "an RSA key",
                Material::P256 { .. } => "a P-256 (EC) key",
                Material::Ed25519 { .. } => "an Ed25519 (OKP) key",
            };
            return Some(format!(
                "it is {kind}, for {}, but the token says {}",
                self.alg().name(),
                alg.name()
            ));
        }
        match &self.declared_alg {
            Some(declared) if declared != alg.name() => Some(format!(
                "the key is declared for {}, but the token says {}",
                for_message(declared),
                alg.name()
            )),
            _ => None,
        }
    }

    /// Checks `signature` over `message` with `alg`, which [`KeySet::select`] made sure fits.
    pub(crate) fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        if self.misfit(alg).is_some() {
            return false;
        }
        match &self.material {
            Material::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            Material::P256 { point } => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .is_ok(),
            Material::Ed25519 { x } => UnparsedPublicKey::new(&ED25519, x)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// The outcome of looking a token's key up.
pub(crate) enum Selection<'a> {
    Found(&'a Key),
    /// Not in this set; a newer set might have it.
    Missing,
    /// Refused for good (the key exists but does not fit, or the choice is ambiguous).
    Refused(VerifyError),
}

/// The usable keys of one JWKS, and the `kid`s of the keys skipped with the reason (so a token
/// naming one gets that reason rather than "unknown key").
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
    skipped: Vec<(String, String)>,
}

impl KeySet {
    /// Parses a JWKS document. Keys that are not for signatures, of unsupported types or
    /// curves, too weak or malformed are skipped; only a document without a `keys` list fails.
    pub(crate) fn from_jwks(document: &Value) -> Result<Self, String> {
        let Some(list) = document.get("keys").and_then(Value::as_array) else {
            return Err("the JWKS document has no \"keys\" list".to_owned());
        };
        let mut set = Self::default();
        for jwk in list.iter().take(MAX_KEYS) {
            match parse_jwk(jwk) {
                Ok(key) => set.keys.push(key),
                Err(reason) => {
                    if let Some(kid) = jwk.get("kid").and_then(Value::as_str) {
                        set.skipped.push((kid.to_owned(), reason));
                    }
                }
            }
        }
        Ok(set)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token of `alg` naming `kid`. Without a `kid`, the one key of the set
    /// that fits `alg`, if exactly one does.
    pub(crate) fn select(&self, alg: Alg, kid: Option<&str>) -> Selection<'_> {
        let Some(kid) = kid else {
            let mut fitting = self.keys.iter().filter(|k| k.misfit(alg).is_none());
            return match (fitting.next(), fitting.next()) {
                (Some(key), None) => Selection::Found(key),
                (None, _) => Selection::Missing,
                (Some(_), Some(_)) => Selection::Refused(VerifyError::UnknownKey { kid: None }),
            };
        };
        let mut named = self
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .peekable();
        let Some(first) = named.peek().copied() else {
            return match self.skipped.iter().find(|(k, _)| k == kid) {
                Some((_, reason)) => Selection::Refused(VerifyError::KeyMismatch {
                    kid: for_message(kid),
                    detail: reason.clone(),
                }),
                None => Selection::Missing,
            };
        };
        // Several keys may share a kid (one per algorithm); any that fits will do.
        match named.find(|k| k.misfit(alg).is_none()) {
            Some(key) => Selection::Found(key),
            None => Selection::Refused(VerifyError::KeyMismatch {
                kid: for_message(kid),
                detail: first.misfit(alg).unwrap_or_default(),
            }),
        }
    }
}

fn parse_jwk(jwk: &Value) -> Result<Key, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match jwk.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(value)) => Ok(Some(value.as_str())),
            Some(_) => Err(format!("its {name} is not a string")),
        }
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let value = text(name)?.ok_or_else(|| format!("it has no {name}"))?;
        // Padding is not JWK's, but harmless; some publishers add it.
        URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .map_err(|_| format!("its {name} is not base64url"))
    };
    if let Some(usage) = text("use")?
        && usage != "sig"
    {
        return Err(format!(
            "the issuer publishes it for {}, not for signatures",
            for_message(usage)
        ));
    }
    let kid = text("kid")?.map(str::to_owned);
    let declared_alg = text("alg")?.map(str::to_owned);
    let kty = text("kty")?.ok_or("it has no kty")?;
    let material = match kty {
        "RSA" => {
            let n = strip_leading_zeros(bytes("n")?);
            let e = strip_leading_zeros(bytes("e")?);
            let bits = bit_length(&n);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "it is an RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"
                ));
            }
            if e.is_empty() {
                return Err("its RSA exponent is zero".to_owned());
            }
            Material::Rsa { n, e }
        }
        "EC" => {
            let crv = text("crv")?.unwrap_or_default();
            if crv != "P-256" {
                return Err(format!(
                    "it is an EC key on the curve {}; only P-256 (ES256) is supported",
                    for_message(crv)
                ));
            }
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("its P-256 coordinates are not 32 bytes each".to_owned());
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Material::P256 { point }
        }
        "OKP" => {
            let crv = text("crv")?.unwrap_or_default();
            if crv != "Ed25519" {
                return Err(format!(
                    "it is an OKP key on the curve {}; only Ed25519 (EdDSA) is supported",
                    for_message(crv)
                ));
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("its Ed25519 public key is not 32 bytes".to_owned());
            }
            Material::Ed25519 { x }
        }
        other => {
            return Err(format!(
                "its key type {} is not supported (RSA, EC P-256 and OKP Ed25519 are)",
                for_message(other)
            ));
        }
    };
    Ok(Key {
        kid,
        declared_alg,
        material,
    })
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

fn bit_length(big_endian: &[u8]) -> usize {
    match big_endian.first() {
        Some(first) => big_endian.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn skips_unusable_keys_and_keeps_the_rest() -> Result<(), String> {
        let point = b64(&[7; 32]);
        let set = KeySet::from_jwks(&json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": point, "y": point},
            {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-256", "x": point, "y": point},
            {"kty": "RSA", "kid": "small", "n": b64(&[0xff; 128]), "e": "AQAB"},
            {"kty": "RSA", "kid": "padded", "n": b64(&[[0u8].as_slice(), &[0xc1; 256]].concat()), "e": "AQAB"},
            {"kty": "AKP", "kid": "future", "alg": "ML-DSA-44", "pub": "AAAA"},
            "not an object",
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": point, "y": point, "alg": "ES256"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": point},
            {"kty": "OKP", "kid": "ed-declared-es", "crv": "Ed25519", "x": point, "alg": "ES256"},
        ]}))?;
        assert_eq!(set.len(), 4);
        let refused = |alg, kid| match set.select(alg, Some(kid)) {
            Selection::Refused(err) => err.to_string(),
            _ => String::new(),
        };
        assert!(refused(Alg::Es256, "p384").contains("P-384"));
        assert!(refused(Alg::Es256, "enc").contains("not for signatures"));
        assert!(refused(Alg::Rs256, "small").contains("1024 bits"));
        assert!(refused(Alg::Rs256, "hmac").contains("not supported"));
        assert!(refused(Alg::Rs256, "ec").contains("P-256"));
        assert!(refused(Alg::EdDsa, "ed-declared-es").contains("declared for \"ES256\""));
        assert!(matches!(
            set.select(Alg::Rs256, Some("padded")),
            Selection::Found(_)
        ));
        assert!(matches!(
            set.select(Alg::EdDsa, Some("ed")),
            Selection::Found(_)
        ));
        assert!(matches!(
            set.select(Alg::Es256, Some("nope")),
            Selection::Missing
        ));
        // No kid: exactly one key must fit.
        assert!(matches!(set.select(Alg::Es256, None), Selection::Found(_)));
        assert!(matches!(set.select(Alg::Rs256, None), Selection::Found(_)));
        assert!(matches!(
            set.select(Alg::EdDsa, None),
            Selection::Found(k) if k.kid.as_deref() == Some("ed")
        ));
        assert!(KeySet::from_jwks(&json!({"nokeys": []})).is_err());
        Ok(())
    }

    #[test]
    fn algorithms() {
        assert_eq!(Alg::from_header("EdDSA"), Ok(Alg::EdDsa));
        for bad in ["none", "HS256", "RS384", "PS256", "ES384", "rs256", ""] {
            assert!(matches!(
                Alg::from_header(bad),
                Err(VerifyError::UnsupportedAlgorithm(_))
            ));
        }
    }
}
