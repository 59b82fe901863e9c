//! JSON bodies of the `/auth/*` and OAuth endpoints, as the seed document and RFC 6749 show
//! them.

use serde::{Deserialize, Serialize};

/// `POST /auth/refresh` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RefreshRequest {
    pub refresh_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// A narrower scope for this access token (RFC 6749 section 6): only API scopes (names
    /// with a `:`) narrow anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// `POST /auth/revoke` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RevokeRequest {
    pub refresh_token: String,
}

/// Successful token response (RFC 6749 §5.1).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// Seconds until the refresh token itself expires; only for a token that does (a named
    /// token minted with an expiry), so other answers keep the shape they always had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_in: Option<u64>,
    /// RFC 8693: the type of the token issued by a token exchange (keyless CI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<String>,
}

/// Error response (RFC 6749 §5.2). `error_description` never contains a secret.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct OAuthErrorBody {
    pub error: String,
    pub error_description: String,
}
