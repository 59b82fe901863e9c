//! Random secrets made by the domain: URL-safe values for authorization and device codes,
//! browser-session cookies, CSRF tokens and invitations, token ids, and the first Owner's
//! generated password. All come from the operating system's CSPRNG; a failing one is an
//! internal error, never a weaker value.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prism_proto::token_format::{self, SecretKind};
use ring::rand::{SecureRandom, SystemRandom};

use super::DomainError;

/// `N` random bytes, URL-safe base64 without `=`.
fn random_url_safe<const N: usize>() -> Result<String, DomainError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| DomainError::Internal("randomness failed"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A URL-safe random secret without `=` (codes, cookies, CSRF tokens, invitations): 256 bits,
/// 43 characters.
pub fn random_secret() -> Result<String, DomainError> {
    random_url_safe::<32>()
}

/// A unique id that guards nothing (an access token's `jti`): 128 bits are plenty.
pub fn random_id() -> Result<String, DomainError> {
    random_url_safe::<16>()
}

/// A password for the first Owner: 24 base62 characters (about 143 bits) from the OS CSPRNG,
/// taken from the token generator's random part.
pub fn generate_initial_password() -> Result<String, DomainError> {
    let token = token_format::generate(SecretKind::RefreshToken)
        .map_err(|_| DomainError::Internal("randomness failed"))?;
    Ok(token[SecretKind::RefreshToken.prefix().len()..][..24].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_url_safe_and_sized() -> Result<(), DomainError> {
        let url_safe = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let secret = random_secret()?;
        assert_eq!(secret.len(), 43);
        assert!(url_safe(&secret));
        let id = random_id()?;
        assert_eq!(id.len(), 22);
        assert!(url_safe(&id));
        assert_ne!(random_secret()?, secret);
        assert_eq!(generate_initial_password()?.len(), 24);
        Ok(())
    }
}
