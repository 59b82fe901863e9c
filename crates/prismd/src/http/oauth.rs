//! Standard OAuth 2.0 surface: the token endpoint (RFC 6749 §6 refresh grant, form or JSON),
//! the JWKS and the metadata documents (RFC 8414 / OpenID Discovery).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{AUTH_BODY_LIMIT, no_store};
use super::body::{BodyShape, JsonOrForm};
use super::error::HttpError;
use super::{AppState, ClientMeta};
use crate::domain::auth::{CLI_CLIENT_ID, DEFAULT_SCOPE};

/// RFC 6749 token request parameters.
#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    grant_type: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // Accepted and ignored: a refresh keeps the token's original scope.
    scope: Option<String>,
}

impl BodyShape for TokenRequest {
    const MAX_BYTES: usize = AUTH_BODY_LIMIT;
    const EXPECTED: &'static str =
        "string parameters grant_type, refresh_token and optional client_id, tenant_id, scope";
}

pub async fn token(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    JsonOrForm(request): JsonOrForm<TokenRequest>,
) -> Result<Response, HttpError> {
    if let Some(client) = request.client_id.as_deref()
        && client != CLI_CLIENT_ID
    {
        return Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client_id",
        ));
    }
    match request.grant_type.as_str() {
        "refresh_token" => {
            let refresh_token = request.refresh_token.as_deref().ok_or_else(|| {
                HttpError::invalid_request("the refresh_token parameter is required")
            })?;
            let tokens = state
                .auth
                .exchange_refresh_token(refresh_token, request.tenant_id.as_deref(), &meta)
                .await?;
            Ok(no_store(Json(tokens).into_response()))
        }
        _ => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "this server supports grant_type=refresh_token",
        )),
    }
}

pub async fn jwks(State(state): State<AppState>) -> Json<Value> {
    Json(state.auth.keys().jwks().clone())
}

pub async fn metadata(State(state): State<AppState>) -> Json<Value> {
    Json(state.metadata.as_ref().clone())
}

/// The metadata document; it lists only endpoints this server really serves.
pub fn metadata_document(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}/oauth/token"),
        "grant_types_supported": ["refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": [],
        "scopes_supported": DEFAULT_SCOPE.split(' ').collect::<Vec<_>>(),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "access_token_signing_alg_values_supported": ["EdDSA"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope"],
    })
}

pub async fn not_found() -> impl IntoResponse {
    HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub async fn method_not_allowed() -> impl IntoResponse {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "this endpoint does not accept that HTTP method",
    )
}
