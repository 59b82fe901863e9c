//! The CLI's one error type: a message for the user that says what to do next. Messages never
//! contain a secret.

use std::fmt;

/// A failure shown to the user as `Error: <message>` with exit code 1.
#[derive(Debug)]
pub struct Error {
    message: String,
}

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The error when no credentials are available.
    pub fn not_logged_in() -> Self {
        Self::new("Not logged in: run 'prism login' (or set PRISM_REFRESH_TOKEN).")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Returns early with an [`Error`] built from a format string.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::new(format!($($arg)*)))
    };
}
