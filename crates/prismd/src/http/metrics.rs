//! `GET /metrics`: the Prometheus scrape, on the main listener or on a listener of its own.

use std::sync::Arc;

use axum::extract::FromRef;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::metrics::Metrics;

/// The content type of the text exposition format the body is written in.
const EXPOSITION_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

impl FromRef<AppState> for Arc<Metrics> {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

pub async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    let mut response = metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(EXPOSITION_FORMAT),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
