//! Token material: refresh-token hashing, the Ed25519 key ring (with its private keys
//! optionally encrypted at rest), and JWT access tokens (RFC 9068) with pinned-algorithm
//! verification.

pub mod at_rest;
pub mod jwt;
pub mod key_error;
pub mod keyring;
pub mod live;
pub mod verified;

use sha2::{Digest, Sha256};

pub use at_rest::{AtRest, KeyEncryptionKey};
pub use jwt::{AccessClaims, JwtError, VerifyExpectations};
pub use key_error::KeyError;
pub use keyring::{KeyRing, RetiredKeyWindow};
pub use live::LiveKeys;
pub use verified::VerifiedTokens;

/// The only form in which a refresh token is stored or looked up. A refresh token carries
/// 256 random bits, so a fast unsalted hash is enough (Argon2 is for low-entropy passwords).
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}
