//! The rules of the service, independent of HTTP: exchanging and revoking tokens, deciding
//! whether a caller still stands, and managing accounts. Handlers, GraphQL resolvers and the
//! admin commands all call this layer, and only it, so each rule lives in one place.
//!
//! # One calling style
//!
//! Every operation that reads or writes storage is a method of an area's service struct;
//! nothing outside this module calls the `Store` itself:
//!
//! - [`auth::AuthService`] owns the store (`Arc<dyn Store>`), the key ring and what the
//!   process keeps in memory (verified access tokens, uses not written yet). It has the token
//!   flows (`auth`), browser login (`login`) and the device grant (`device`), and hands out
//!   the other areas' services: `accounts()`, `sessions()`, `policies()`, `audit()` and
//!   `limits(settings)`.
//! - Those services, [`accounts::Accounts`], [`sessions::Sessions`],
//!   [`policies::Policies`], [`audit::AuditTrail`], [`limits::Limits`] and
//!   [`cleanup::Cleanup`], are views over a borrowed `&dyn Store` (plus what the area needs:
//!   the unwritten uses, the limit settings). A view is a pointer or two, so it is made where
//!   it is used, never stored. Code that has a store but no `AuthService`, the operator
//!   commands, the first start and the cleanup task, makes one with `new`.
//!
//! Rules that touch no storage stay free functions next to their area's service:
//! `accounts::normalize_email`, `accounts::public_id`, `login::check_request`,
//! `policies::expires_at`, `standing::check`, the `roles`, `clients` and `secrets` modules,
//! and the like.

pub mod accounts;
pub mod audit;
pub mod auth;
pub mod cleanup;
pub mod clients;
pub mod device;
pub mod expiry_notices;
pub mod forward_auth;
pub mod introspection;
pub mod limits;
pub mod login;
pub mod passwords;
pub mod policies;
pub mod roles;
pub mod scopes;
pub mod secrets;
pub mod service_accounts;
pub mod sessions;
pub mod standing;
pub mod trust;
pub mod trusted_devices;
pub mod usage;

use std::time::{SystemTime, UNIX_EPOCH};

use prism_proto::TokenFormatError;

use crate::store::StoreError;
use crate::tokens::JwtError;
pub use standing::Denial;

/// The domain layer's one error type.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The caller sent something unusable; the message says what and never echoes a secret.
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A refresh token that cannot be exchanged (OAuth `invalid_grant`).
    #[error("{0}")]
    InvalidGrant(GrantError),
    /// A requested scope the token does not hold (OAuth `invalid_scope`).
    #[error("{0}")]
    InvalidScope(String),
    /// The token is fine but does not give access to what was asked (OAuth `access_denied`).
    #[error("{0}")]
    AccessDenied(String),
    /// A bearer token that stands but lacks a scope the resource requires (RFC 6750
    /// `insufficient_scope`); the scope it lacks.
    #[error("this token lacks the scope {0}")]
    InsufficientScope(String),
    /// A bearer token that does not authenticate (RFC 6750 `invalid_token`).
    #[error("{0}")]
    InvalidToken(BearerError),
    /// A client (a resource server) that did not authenticate (RFC 6749 `invalid_client`).
    #[error("{0}")]
    InvalidClient(String),
    /// The database is unreachable or failing; the caller may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(#[from] StoreError),
    /// A mail could not be delivered (the SMTP server refused it or did not answer); what it
    /// was for was not done, and the caller may retry.
    #[error("{0}")]
    MailNotSent(String),
    /// An OIDC token (keyless CI) that cannot be exchanged, or whose issuer is unreachable.
    #[error("{0}")]
    SubjectToken(trust::SubjectTokenError),
    /// A device-code poll that returns no tokens yet, or never will.
    #[error("{0}")]
    Device(device::DeviceError),
    /// Something that should never happen (randomness or signing failed).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Why a refresh token was refused. Messages are written for someone reading a CI log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error(
        "the refresh token is malformed: {0}; copy it again from 'prism me:token --type refresh'"
    )]
    Malformed(TokenFormatError),
    #[error(
        "the refresh token is not known to this server; check that the right secret is configured"
    )]
    Unknown,
    #[error("{0}")]
    Denied(Denial),
    /// An authorization code that cannot be redeemed; the text says why.
    #[error("{0}")]
    Code(&'static str),
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("{0}")]
    Jwt(JwtError),
    #[error("the access token's user does not exist")]
    UnknownUser,
    #[error("{0}")]
    Denied(Denial),
}

/// Where a request came from, for audit events and last-use records.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub address: Option<String>,
    pub user_agent: Option<String>,
}

/// Milliseconds since the Unix epoch; the storage layer's time unit.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
