//! Wire types shared by the server, the CLI and the tests: JSON bodies, OAuth error bodies and
//! the scannable secret-token format. Nothing here does I/O.

pub mod token_format;
pub mod wire;

pub use token_format::{SecretKind, TokenFormatError};
