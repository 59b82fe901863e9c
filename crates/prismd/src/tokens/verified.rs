//! A bounded memo of access tokens already verified: the same CI job presents the same token
//! on every API call, and an Ed25519 verification costs far more than a hash and a map look-up.
//!
//! Only what cannot change for a given token is remembered: its signature, `typ`, `iss` and
//! `aud` were checked, and its claims. What can change is checked again on every use: the
//! clock (`exp`, `nbf`), whether the signing key still verifies (a retired key leaves the ring
//! when its window ends), and, outside this module, the user's standing (revocation and
//! removal), which is never memoized here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::jwt::{self, AccessClaims, JwtError};
use super::keyring::KeyRing;

struct Verified {
    claims: Arc<AccessClaims>,
    kid: String,
}

/// Verified tokens by the SHA-256 of the token.
pub struct VerifiedTokens {
    entries: Mutex<HashMap<[u8; 32], Verified>>,
    capacity: usize,
}

impl VerifiedTokens {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Verified>> {
        // Each operation is one insert, remove or clear: a poisoned map is still consistent.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The claims of a token verified before, if its key still verifies and it is still
    /// within its validity period. `Err` when it was verified but has expired since.
    pub fn get(
        &self,
        token_hash: &[u8; 32],
        ring: &KeyRing,
        now_secs: i64,
    ) -> Option<Result<Arc<AccessClaims>, JwtError>> {
        let entries = self.lock();
        let verified = entries.get(token_hash)?;
        if !ring.knows(&verified.kid) {
            return None;
        }
        Some(
            jwt::check_validity_period(&verified.claims, now_secs)
                .map(|()| verified.claims.clone()),
        )
    }

    /// Remembers a token that passed full verification, signed with `kid`.
    pub fn insert(&self, token_hash: [u8; 32], kid: String, claims: Arc<AccessClaims>) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            // Tokens live for days, so age says little about use; starting over is simple
            // and bounded, and the next use of each token verifies it again.
            entries.clear();
        }
        entries.insert(token_hash, Verified { claims, kid });
    }
}
