//! The scannable format of the opaque secrets prism-auth hands out: refresh tokens and the
//! client secrets of resource servers (token introspection).
//!
//! A token is `<prefix><43 random base62 characters><6 base62 characters of CRC32>`, for
//! example `prism_rt_` followed by 49 characters. 43 base62 characters carry 256.03 bits drawn
//! from the OS CSPRNG. The CRC32 of the random part lets secret scanners recognise a real token
//! offline and lets the server reject typos and garbage without touching the database; it is
//! not a security feature (the randomness is). Scanner regexes: refresh tokens
//! `\bprism_rt_[0-9A-Za-z]{49}\b`, client secrets `\bprism_cs_[0-9A-Za-z]{49}\b`.
//!
//! The alphabet has no characters that a shell, a URL or a JSON string would treat specially,
//! so the seed document's unquoted `'${PRISMATIC_REFRESH_TOKEN}'` expansion is always safe.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random characters per token: 62^43 > 2^256.
pub const RANDOM_LEN: usize = 43;
/// Checksum characters per token: 62^6 > 2^32.
pub const CHECKSUM_LEN: usize = 6;

/// The kinds of secret this service issues; each has its own prefix so a leaked secret says
/// what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    RefreshToken,
    /// A resource server's client secret, for `/oauth/introspect`.
    ClientSecret,
}

impl SecretKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            SecretKind::RefreshToken => "prism_rt_",
            SecretKind::ClientSecret => "prism_cs_",
        }
    }

    /// Total length of a well-formed secret of this kind.
    pub const fn token_len(self) -> usize {
        self.prefix().len() + RANDOM_LEN + CHECKSUM_LEN
    }

    /// The regular expression a secret scanner can use to find this kind of secret.
    pub fn scanner_regex(self) -> String {
        format!(
            r"\b{}[0-9A-Za-z]{{{}}}\b",
            self.prefix(),
            RANDOM_LEN + CHECKSUM_LEN
        )
    }
}

/// Why a string is not a well-formed secret. Deliberately carries no part of the input, so it
/// can be shown and logged without leaking anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormatError {
    Empty,
    WrongPrefix,
    WrongLength,
    BadCharacter,
    BadChecksum,
}

impl fmt::Display for TokenFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenFormatError::Empty => "the token is empty",
            TokenFormatError::WrongPrefix => "the token does not have the expected prefix",
            TokenFormatError::WrongLength => "the token has the wrong length",
            TokenFormatError::BadCharacter => {
                "the token contains characters that never occur in a token"
            }
            TokenFormatError::BadChecksum => {
                "the token's checksum does not match (it was mistyped or truncated)"
            }
        })
    }
}

impl std::error::Error for TokenFormatError {}

/// The OS random source failed; there is nothing safe to do but report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomnessUnavailable;

impl fmt::Display for RandomnessUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the operating system's random number generator failed")
    }
}

impl std::error::Error for RandomnessUnavailable {}

/// Generates a new secret of `kind` from the OS CSPRNG.
pub fn generate(kind: SecretKind) -> Result<String, RandomnessUnavailable> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(kind.token_len());
    out.push_str(kind.prefix());
    let mut random = String::with_capacity(RANDOM_LEN);
    let mut buf = [0u8; 64];
    while random.len() < RANDOM_LEN {
        rng.fill(&mut buf).map_err(|_| RandomnessUnavailable)?;
        for byte in buf {
            // Rejection sampling keeps every character uniform: 248 = 4 * 62.
            if byte < 248 && random.len() < RANDOM_LEN {
                random.push(char::from(ALPHABET[usize::from(byte % 62)]));
            }
        }
    }
    out.push_str(&random);
    out.push_str(&checksum(random.as_bytes()));
    Ok(out)
}

/// Checks that `token` is a well-formed secret of `kind`: prefix, length, alphabet, checksum.
/// This is the cheap gate that runs before any hashing or database access.
pub fn validate(kind: SecretKind, token: &str) -> Result<(), TokenFormatError> {
    if token.is_empty() {
        return Err(TokenFormatError::Empty);
    }
    let Some(body) = token.strip_prefix(kind.prefix()) else {
        return Err(TokenFormatError::WrongPrefix);
    };
    if body.len() != RANDOM_LEN + CHECKSUM_LEN {
        return Err(TokenFormatError::WrongLength);
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(TokenFormatError::BadCharacter);
    }
    let (random, sum) = body.split_at(RANDOM_LEN);
    if checksum(random.as_bytes()) != sum {
        return Err(TokenFormatError::BadChecksum);
    }
    Ok(())
}

fn checksum(random: &[u8]) -> String {
    let mut value = crc32fast::hash(random);
    let mut digits = [b'0'; CHECKSUM_LEN];
    for slot in digits.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_validate_and_differ() -> Result<(), Box<dyn std::error::Error>> {
        let a = generate(SecretKind::RefreshToken)?;
        let b = generate(SecretKind::RefreshToken)?;
        assert_ne!(a, b);
        assert_eq!(a.len(), SecretKind::RefreshToken.token_len());
        assert!(a.starts_with("prism_rt_"));
        validate(SecretKind::RefreshToken, &a)?;
        let secret = generate(SecretKind::ClientSecret)?;
        assert!(secret.starts_with("prism_cs_"));
        assert_eq!(secret.len(), SecretKind::ClientSecret.token_len());
        validate(SecretKind::ClientSecret, &secret)?;
        // One kind is never taken for the other.
        assert_eq!(
            validate(SecretKind::RefreshToken, &secret),
            Err(TokenFormatError::WrongPrefix)
        );
        assert_eq!(
            SecretKind::ClientSecret.scanner_regex(),
            r"\bprism_cs_[0-9A-Za-z]{49}\b"
        );
        Ok(())
    }

    #[test]
    fn rejects_every_kind_of_damage() -> Result<(), Box<dyn std::error::Error>> {
        let token = generate(SecretKind::RefreshToken)?;
        let kind = SecretKind::RefreshToken;
        assert_eq!(validate(kind, ""), Err(TokenFormatError::Empty));
        assert_eq!(
            validate(kind, &token[1..]),
            Err(TokenFormatError::WrongPrefix)
        );
        assert_eq!(
            validate(kind, &token[..token.len() - 1]),
            Err(TokenFormatError::WrongLength)
        );
        let mut bad_char = token.clone();
        bad_char.replace_range(20..21, "-");
        assert_eq!(
            validate(kind, &bad_char),
            Err(TokenFormatError::BadCharacter)
        );
        // Change one random character: the checksum must notice.
        let mut flipped = token.into_bytes();
        flipped[15] = if flipped[15] == b'a' { b'b' } else { b'a' };
        let flipped = String::from_utf8(flipped)?;
        assert_eq!(validate(kind, &flipped), Err(TokenFormatError::BadChecksum));
        Ok(())
    }

    #[test]
    fn errors_never_contain_the_input() -> Result<(), Box<dyn std::error::Error>> {
        let token = generate(SecretKind::RefreshToken)?;
        for err in [
            TokenFormatError::Empty,
            TokenFormatError::WrongPrefix,
            TokenFormatError::WrongLength,
            TokenFormatError::BadCharacter,
            TokenFormatError::BadChecksum,
        ] {
            assert!(!err.to_string().contains(&token[9..20]));
        }
        Ok(())
    }

    #[test]
    fn scanner_regex_is_documented_form() {
        assert_eq!(
            SecretKind::RefreshToken.scanner_regex(),
            r"\bprism_rt_[0-9A-Za-z]{49}\b"
        );
    }
}
