//! Encryption of signing keys at rest: the key encryption key (KEK) an operator gives in
//! `PRISMD_KEY_ENCRYPTION_KEY` or `PRISMD_KEY_ENCRYPTION_KEY_FILE`, and the sealed form of a
//! private key in the `signing_keys.private_key` column.
//!
//! Sealed form: `pkek1` ‖ KEK fingerprint (8 bytes) ‖ nonce (12 bytes) ‖ AES-256-GCM
//! ciphertext and tag. A plain key is PKCS#8 DER, which starts with `0x30` (a SEQUENCE), so
//! the two can never be confused and no migration is needed. The associated data binds the
//! prefix, the fingerprint and the key's `kid`: a sealed blob copied to another row does not
//! open. The fingerprint says which KEK sealed a key, so a wrong KEK is refused with a clear
//! message before anything is decrypted.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use super::key_error::{KEK_ENV, KEK_FILE_ENV, KeyError};
use crate::store::SigningKeyRecord;

/// Where a KEK is read from: the variable holding it, or the one naming its file.
#[derive(Debug, Clone, Copy)]
pub struct KekSource {
    pub value_variable: &'static str,
    pub file_variable: &'static str,
}

/// The KEK the keys are sealed with.
pub const CURRENT_KEK: KekSource = KekSource {
    value_variable: KEK_ENV,
    file_variable: KEK_FILE_ENV,
};

/// The KEK `prismd keys rewrap` seals them with instead.
pub const NEW_KEK: KekSource = KekSource {
    value_variable: "PRISMD_NEW_KEY_ENCRYPTION_KEY",
    file_variable: "PRISMD_NEW_KEY_ENCRYPTION_KEY_FILE",
};

/// Version prefix of a sealed private key.
const MAGIC: &[u8] = b"pkek1";
const FINGERPRINT_LEN: usize = 8;
const KEK_LEN: usize = 32;
const HEADER_LEN: usize = MAGIC.len() + FINGERPRINT_LEN + NONCE_LEN;

/// The key that seals signing keys. Deliberately without a derived `Debug`: nothing that
/// prints it can show the key.
pub struct KeyEncryptionKey {
    key: LessSafeKey,
    fingerprint: [u8; FINGERPRINT_LEN],
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyEncryptionKey(..)")
    }
}

impl KeyEncryptionKey {
    /// Parses 32 bytes given as base64 (`openssl rand -base64 32`) or hex
    /// (`openssl rand -hex 32`), surrounding whitespace ignored. Errors never contain the
    /// value.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        Self::parse_from(text, KEK_ENV)
    }

    fn parse_from(text: &str, variable: &'static str) -> Result<Self, KeyError> {
        let invalid = |reason: String| KeyError::InvalidKek { variable, reason };
        let text = text.trim();
        if text.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        // 64 hex digits are never read as base64: that would be 48 bytes anyway.
        let hex = (text.len() == 2 * KEK_LEN)
            .then(|| decode_hex(text))
            .flatten();
        let bytes = hex
            .or_else(|| STANDARD.decode(text).ok())
            .or_else(|| STANDARD_NO_PAD.decode(text).ok())
            .ok_or_else(|| invalid("it is neither base64 nor hex".into()))?;
        if bytes.len() != KEK_LEN {
            return Err(invalid(format!(
                "it decodes to {} bytes, not {KEK_LEN}",
                bytes.len()
            )));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| invalid(format!("it is not {KEK_LEN} bytes")))?;
        let mut hasher = Sha256::new();
        // Domain-separated, so the fingerprint is of no use for anything but telling KEKs
        // apart.
        hasher.update(b"prismd key encryption key fingerprint v1\0");
        hasher.update(&bytes);
        let digest = hasher.finalize();
        let mut fingerprint = [0; FINGERPRINT_LEN];
        fingerprint.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        Ok(Self {
            key: LessSafeKey::new(unbound),
            fingerprint,
        })
    }

    /// The KEK from `source`'s variable (`value`) or the file its other variable names
    /// (`file`); `None` when neither is set.
    pub fn from_value_or_file(
        source: &KekSource,
        value: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<Self>, KeyError> {
        match (value, file) {
            (Some(_), Some(_)) => Err(KeyError::KekTwice {
                value_variable: source.value_variable,
                file_variable: source.file_variable,
            }),
            (Some(value), None) => Self::parse_from(value, source.value_variable).map(Some),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source_error| KeyError::KekFile {
                        path: path.display().to_string(),
                        variable: source.file_variable,
                        source: source_error,
                    })?;
                Self::parse_from(&text, source.file_variable).map(Some)
            }
            (None, None) => Ok(None),
        }
    }
}

/// How private keys are stored: as they are, or sealed with a KEK.
#[derive(Clone, Debug, Default)]
pub enum AtRest {
    /// No KEK given: new keys are stored as PKCS#8; sealed keys cannot be used.
    #[default]
    Plain,
    /// Keys are sealed with this KEK; plain keys found in the database are still usable (and
    /// sealed at the next start).
    Sealed(Arc<KeyEncryptionKey>),
}

impl AtRest {
    pub fn from_kek(kek: Option<KeyEncryptionKey>) -> Self {
        match kek {
            Some(kek) => Self::Sealed(Arc::new(kek)),
            None => Self::Plain,
        }
    }

    /// The form in which the private key `pkcs8` of `kid` is stored.
    pub fn protect(&self, kid: &str, pkcs8: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            Self::Plain => Ok(pkcs8.to_vec()),
            Self::Sealed(kek) => seal(kek, kid, pkcs8),
        }
    }

    /// The PKCS#8 private key of `kid` from its stored form.
    pub fn reveal(&self, kid: &str, stored: &[u8]) -> Result<Vec<u8>, KeyError> {
        if !is_sealed(stored) {
            return Ok(stored.to_vec());
        }
        match self {
            Self::Plain => Err(KeyError::EncryptedWithoutKek),
            Self::Sealed(kek) => open(kek, kid, stored),
        }
    }

    /// Whether `stored` is sealed with this configuration's KEK.
    pub fn sealed_here(&self, stored: &[u8]) -> bool {
        match self {
            Self::Plain => false,
            Self::Sealed(kek) => {
                is_sealed(stored) && fingerprint_of(stored) == Some(&kek.fingerprint[..])
            }
        }
    }

    /// Refuses stored keys this configuration cannot use: sealed keys without a KEK, or keys
    /// sealed with another KEK. Decrypts nothing.
    pub fn check(&self, records: &[SigningKeyRecord]) -> Result<(), KeyError> {
        for record in records.iter().filter(|r| is_sealed(&r.private_key)) {
            match self {
                Self::Plain => return Err(KeyError::EncryptedWithoutKek),
                Self::Sealed(kek) => {
                    if fingerprint_of(&record.private_key) != Some(&kek.fingerprint[..]) {
                        return Err(KeyError::WrongKek);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether a stored private key is in the sealed form.
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC)
}

fn fingerprint_of(stored: &[u8]) -> Option<&[u8]> {
    stored.get(MAGIC.len()..MAGIC.len() + FINGERPRINT_LEN)
}

fn associated_data(fingerprint: &[u8], kid: &str) -> Vec<u8> {
    [MAGIC, fingerprint, kid.as_bytes()].concat()
}

fn seal(kek: &KeyEncryptionKey, kid: &str, pkcs8: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut nonce = [0; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| KeyError::Randomness)?;
    let mut sealed = Vec::with_capacity(HEADER_LEN + pkcs8.len() + AES_256_GCM.tag_len());
    sealed.extend_from_slice(MAGIC);
    sealed.extend_from_slice(&kek.fingerprint);
    sealed.extend_from_slice(&nonce);
    let mut in_out = pkcs8.to_vec();
    kek.key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(&kek.fingerprint, kid)),
            &mut in_out,
        )
        .map_err(|_| KeyError::Randomness)?;
    sealed.extend_from_slice(&in_out);
    Ok(sealed)
}

fn open(kek: &KeyEncryptionKey, kid: &str, stored: &[u8]) -> Result<Vec<u8>, KeyError> {
    if fingerprint_of(stored) != Some(&kek.fingerprint[..]) {
        return Err(KeyError::WrongKek);
    }
    let damaged = || KeyError::Unsealable(kid.to_owned());
    let nonce_bytes: [u8; NONCE_LEN] = stored
        .get(MAGIC.len() + FINGERPRINT_LEN..HEADER_LEN)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(damaged)?;
    let mut in_out = stored.get(HEADER_LEN..).ok_or_else(damaged)?.to_vec();
    let plain = kek
        .key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(associated_data(&kek.fingerprint, kid)),
            &mut in_out,
        )
        .map_err(|_| damaged())?;
    Ok(plain.to_vec())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::keyring::generate;

    const KEK_B64: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    const KEK_HEX: &str = "abcdef1234567890abcdef1234567890abcdef1234567890abcdef1234567890";
    const OTHER_KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn sealed_with(kek: &str) -> Result<AtRest, KeyError> {
        Ok(AtRest::from_kek(Some(KeyEncryptionKey::parse(kek)?)))
    }

    #[test]
    fn seal_and_open_round_trip() -> Result<(), KeyError> {
        let at_rest = sealed_with(KEK_B64)?;
        let record = generate(0, &AtRest::Plain)?;
        let stored = at_rest.protect(&record.kid, &record.private_key)?;
        assert!(is_sealed(&stored));
        assert!(
            !is_sealed(&record.private_key),
            "PKCS#8 is never taken for sealed"
        );
        assert_ne!(stored.first(), Some(&0x30));
        assert!(
            !stored
                .windows(record.private_key.len())
                .any(|w| w == record.private_key.as_slice())
        );
        assert_eq!(at_rest.reveal(&record.kid, &stored)?, record.private_key);
        // The same KEK in hex is the same key.
        assert_eq!(
            sealed_with(KEK_HEX)?.reveal(&record.kid, &stored)?,
            record.private_key
        );
        // A fresh nonce every time.
        assert_ne!(at_rest.protect(&record.kid, &record.private_key)?, stored);
        // Plain keys pass through either way.
        assert_eq!(
            at_rest.reveal(&record.kid, &record.private_key)?,
            record.private_key
        );
        Ok(())
    }

    #[test]
    fn wrong_or_missing_kek_is_refused_before_decrypting() -> Result<(), KeyError> {
        let at_rest = sealed_with(KEK_B64)?;
        let record = generate(0, &at_rest)?;
        let records = [record.clone()];
        assert!(at_rest.check(&records).is_ok());
        let other = sealed_with(OTHER_KEK)?;
        assert!(matches!(other.check(&records), Err(KeyError::WrongKek)));
        assert!(matches!(
            other.reveal(&record.kid, &record.private_key),
            Err(KeyError::WrongKek)
        ));
        assert!(matches!(
            AtRest::Plain.check(&records),
            Err(KeyError::EncryptedWithoutKek)
        ));
        assert!(matches!(
            AtRest::Plain.reveal(&record.kid, &record.private_key),
            Err(KeyError::EncryptedWithoutKek)
        ));
        assert!(AtRest::Plain.check(&[generate(0, &AtRest::Plain)?]).is_ok());
        Ok(())
    }

    #[test]
    fn tampered_or_moved_ciphertext_does_not_open() -> Result<(), KeyError> {
        let at_rest = sealed_with(KEK_B64)?;
        let record = generate(0, &at_rest)?;
        for position in [HEADER_LEN - 1, HEADER_LEN, record.private_key.len() - 1] {
            let mut tampered = record.private_key.clone();
            if let Some(byte) = tampered.get_mut(position) {
                *byte ^= 1;
            }
            assert!(
                matches!(at_rest.reveal(&record.kid, &tampered), Err(KeyError::Unsealable(ref kid)) if *kid == record.kid),
                "byte {position}"
            );
        }
        let truncated = &record.private_key[..HEADER_LEN - 2];
        assert!(matches!(
            at_rest.reveal(&record.kid, truncated),
            Err(KeyError::Unsealable(_))
        ));
        // Another row's kid: the associated data differs.
        let other = generate(0, &at_rest)?;
        assert!(matches!(
            at_rest.reveal(&other.kid, &record.private_key),
            Err(KeyError::Unsealable(_))
        ));
        Ok(())
    }

    #[test]
    fn only_32_bytes_in_base64_or_hex_are_a_kek() -> Result<(), KeyError> {
        assert!(KeyEncryptionKey::parse(&format!("  {KEK_B64}\n")).is_ok());
        assert!(KeyEncryptionKey::parse(KEK_B64.trim_end_matches('=')).is_ok());
        assert!(KeyEncryptionKey::parse(&KEK_HEX.to_uppercase()).is_ok());
        let secret_looking = "correct horse battery staple";
        for bad in [
            "",
            "  \n",
            secret_looking,
            "q83vEjRWeJCrze8SNFZ4kA==",
            &KEK_HEX[..62],
            &format!("{KEK_HEX}00"),
        ] {
            match KeyEncryptionKey::parse(bad) {
                Err(err @ KeyError::InvalidKek { .. }) => {
                    let message = err.to_string();
                    assert!(message.contains("openssl rand -base64 32"), "{message}");
                    assert!(bad.trim().is_empty() || !message.contains(bad), "{message}");
                }
                other => return Err(KeyError::Corrupt(format!("{bad:?} gave {other:?}"))),
            }
        }
        assert_eq!(
            format!("{:?}", KeyEncryptionKey::parse(KEK_B64)?),
            "KeyEncryptionKey(..)"
        );
        Ok(())
    }
}
