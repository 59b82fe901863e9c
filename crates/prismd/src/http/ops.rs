//! Operational endpoints: liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::RETRY_AFTER_SECS;
use crate::store::StoreError;

/// The process is alive and serving HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers (and takes writes); load balancers should route here only when this
/// is 200. While the circuit breaker is open this answers 503 at once, without asking the
/// database; once the breaker's probe gets an answer it is 200 again.
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.auth.storage_ready().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response(),
        Err(err) => {
            if matches!(err, StoreError::CircuitOpen) {
                tracing::debug!(error = %err, "not ready");
            } else {
                tracing::warn!(error = %err, "readiness check failed");
            }
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "database unavailable" })),
            )
                .into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
            response
        }
    }
}
