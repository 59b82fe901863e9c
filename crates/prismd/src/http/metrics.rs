//! `GET /metrics`: the Prometheus scrape, on the main listener or on a listener of its own.

use std::sync::Arc;

use axum::extract::FromRef;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::metrics::{CONTENT_TYPE, Metrics};

impl FromRef<AppState> for Arc<Metrics> {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

pub async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    let mut response = match metrics.render() {
        Ok(body) => body.into_response(),
        Err(err) => {
            // Only an encoder bug gets here: a partial scrape must not pass for a whole one.
            tracing::error!(error = %err, "cannot encode the metrics");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
