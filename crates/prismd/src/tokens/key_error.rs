//! What can go wrong with the signing keys: loading, creating, rotating and re-sealing them,
//! and reading or using the key encryption key that seals them at rest. One type for the
//! key ring and the sealing alike, in a module of its own so that neither has to reach into
//! the other for it. The names of the KEK's environment variables live here too, because the
//! error that asks for them names them; `at_rest` reads them from here.

use crate::store::StoreError;

/// Environment variable that holds the KEK itself.
pub const KEK_ENV: &str = "PRISMD_KEY_ENCRYPTION_KEY";
/// Environment variable (and `--key-encryption-key-file`) naming a file that holds the KEK.
pub const KEK_FILE_ENV: &str = "PRISMD_KEY_ENCRYPTION_KEY_FILE";

/// Why signing keys could not be loaded, created, rotated, sealed or opened.
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
    #[error("there is no signing key {0}; `prismd keys list` shows them")]
    NoSuchKey(String),
    #[error("signing key {0} signs new tokens; rotate it out first (`prismd keys rotate`)")]
    StillActive(String),
    /// The KEK's text is unusable; the message never contains it. `variable` names where it
    /// came from.
    #[error(
        "the key encryption key in {variable} must be 32 random bytes in base64 or hex, for \
         example from `openssl rand -base64 32`; {reason}"
    )]
    InvalidKek {
        variable: &'static str,
        reason: String,
    },
    #[error("set {value_variable} or {file_variable}, not both")]
    KekTwice {
        value_variable: &'static str,
        file_variable: &'static str,
    },
    #[error("cannot read the key encryption key file {path} ({variable}): {source}")]
    KekFile {
        path: String,
        variable: &'static str,
        source: std::io::Error,
    },
    #[error("signing keys are encrypted; set {KEK_ENV} or {KEK_FILE_ENV}")]
    EncryptedWithoutKek,
    #[error("the key encryption key does not match the one the signing keys were sealed with")]
    WrongKek,
    #[error(
        "signing key {0} cannot be decrypted although the key encryption key matches: its \
         stored form is damaged or was altered; restore the database from a backup, or rotate \
         the signing keys (`prismd keys rotate`)"
    )]
    Unsealable(String),
    #[error(
        "signing keys kept changing while they were re-sealed; stop the servers that still use \
         the old key encryption key and run `prismd keys rewrap` again"
    )]
    StillChanging,
}
