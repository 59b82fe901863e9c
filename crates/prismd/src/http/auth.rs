//! `POST /auth/refresh` and `POST /auth/revoke`, exactly as Prismatic's CI/CD document uses
//! them: JSON in, JSON out.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prism_proto::wire::{RefreshRequest, RevokeRequest};

use super::body::{BodyShape, JsonBody};
use super::error::HttpError;
use super::{AppState, ClientMeta};

/// `/auth/*` bodies are a token and a tenant id; 16 KiB is generous.
const AUTH_BODY_LIMIT: usize = 16 * 1024;

impl BodyShape for RefreshRequest {
    const MAX_BYTES: usize = AUTH_BODY_LIMIT;
    const EXPECTED: &'static str =
        r#"a JSON object with a string field "refresh_token" and an optional string "tenant_id""#;
}

impl BodyShape for RevokeRequest {
    const MAX_BYTES: usize = AUTH_BODY_LIMIT;
    const EXPECTED: &'static str = r#"a JSON object with a string field "refresh_token""#;
}

/// Token responses must not be cached (RFC 6749 §5.1).
pub(super) fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

pub async fn refresh(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> Result<Response, HttpError> {
    let tokens = state
        .auth
        .exchange_refresh_token(&body.refresh_token, body.tenant_id.as_deref(), None, &meta)
        .await?;
    Ok(no_store(Json(tokens).into_response()))
}

pub async fn revoke(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    JsonBody(body): JsonBody<RevokeRequest>,
) -> Result<Response, HttpError> {
    state.auth.revoke_all(&body.refresh_token, &meta).await?;
    Ok(no_store(Json(serde_json::json!({})).into_response()))
}
