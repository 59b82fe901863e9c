//! Password hashing with Argon2id (OWASP parameters: 19 MiB, 2 passes, 1 lane), always on the
//! blocking thread pool so a login never stalls the async runtime.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ring::rand::{SecureRandom, SystemRandom};

use super::DomainError;

/// Argon2 checks running at once. Each takes 19 MiB and a core for ~16 ms; without a bound, a
/// flood of login attempts would fill the blocking pool and memory.
static SLOTS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    tokio::sync::Semaphore::new(cores * 2)
});

async fn slot() -> Result<tokio::sync::SemaphorePermit<'static>, DomainError> {
    SLOTS
        .acquire()
        .await
        .map_err(|_| DomainError::Internal("password slots closed"))
}

pub const MIN_LENGTH: usize = 8;
pub const MAX_LENGTH: usize = 1024;

fn hasher() -> Result<Argon2<'static>, DomainError> {
    let params = Params::new(19 * 1024, 2, 1, None)
        .map_err(|_| DomainError::Internal("invalid Argon2 parameters"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Checks length rules and returns the PHC-format Argon2id hash.
pub async fn hash(password: String) -> Result<String, DomainError> {
    let chars = password.chars().count();
    if chars < MIN_LENGTH {
        return Err(DomainError::InvalidInput(format!(
            "the password must have at least {MIN_LENGTH} characters"
        )));
    }
    if chars > MAX_LENGTH {
        return Err(DomainError::InvalidInput(format!(
            "the password must have at most {MAX_LENGTH} characters"
        )));
    }
    let _slot = slot().await?;
    tokio::task::spawn_blocking(move || {
        let mut salt_bytes = [0u8; 16];
        SystemRandom::new()
            .fill(&mut salt_bytes)
            .map_err(|_| DomainError::Internal("randomness failed"))?;
        let salt = SaltString::encode_b64(&salt_bytes)
            .map_err(|_| DomainError::Internal("salt encoding failed"))?;
        hasher()?
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|_| DomainError::Internal("password hashing failed"))
    })
    .await
    .map_err(|_| DomainError::Internal("password hashing task failed"))?
}

/// Verifies `password` against a stored PHC hash.
pub async fn verify(password: String, stored: String) -> Result<bool, DomainError> {
    let _slot = slot().await?;
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&stored) else {
            return Ok(false);
        };
        Ok(hasher()?
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|_| DomainError::Internal("password verification task failed"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_reject() -> Result<(), DomainError> {
        let stored = hash("correct horse".into()).await?;
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify("correct horse".into(), stored.clone()).await?);
        assert!(!verify("wrong horse".into(), stored).await?);
        assert!(matches!(
            hash("short".into()).await,
            Err(DomainError::InvalidInput(_))
        ));
        Ok(())
    }
}
