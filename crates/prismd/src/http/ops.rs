//! Operational endpoints: liveness and readiness.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

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

/// How long one database check answers `/readyz`: probes from several load balancers and
/// orchestrators (or a flood of them) cost the database one check per this interval.
const READINESS_FOR: Duration = Duration::from_millis(250);

/// The last readiness check and when it was made.
#[derive(Default)]
pub struct Readiness {
    /// Held while a check runs, so that concurrent probes wait for it rather than each
    /// asking the database.
    last: Mutex<Option<(Instant, bool)>>,
}

impl Readiness {
    /// Whether the database answered, from a check at most [`READINESS_FOR`] old; otherwise
    /// from `check`, which is then remembered.
    async fn ready(&self, check: impl Future<Output = bool>) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, ready)) = *last
            && at.elapsed() < READINESS_FOR
        {
            return ready;
        }
        let ready = check.await;
        *last = Some((Instant::now(), ready));
        ready
    }
}

/// The database answers (and takes writes); load balancers should route here only when this
/// is 200. While the circuit breaker is open this answers 503 at once, without asking the
/// database; once the breaker's probe gets an answer it is 200 again. One check answers every
/// probe for a quarter of a second.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let checked = state.readiness.ready(async {
        match state.auth.storage_ready().await {
            Ok(()) => true,
            Err(err) => {
                if matches!(err, StoreError::CircuitOpen) {
                    tracing::debug!(error = %err, "not ready");
                } else {
                    tracing::warn!(error = %err, "readiness check failed");
                }
                false
            }
        }
    });
    match checked.await {
        true => (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response(),
        false => {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_check_answers_every_probe_for_a_quarter_second() {
        let readiness = Arc::new(Readiness::default());
        let checks = Arc::new(AtomicUsize::new(0));
        let probe = |answer: bool| {
            let readiness = readiness.clone();
            let checks = checks.clone();
            async move {
                readiness
                    .ready(async {
                        checks.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        answer
                    })
                    .await
            }
        };
        // Fifty probes at once: one check, and every probe gets its answer.
        let probes: Vec<_> = (0..50).map(|_| tokio::spawn(probe(true))).collect();
        for answered in probes {
            assert!(answered.await.unwrap_or(false));
        }
        assert_eq!(checks.load(Ordering::SeqCst), 1);
        // Still within the interval: the remembered answer, even if the database changed.
        assert!(probe(false).await);
        assert_eq!(checks.load(Ordering::SeqCst), 1);
        // After it, a new check, and its answer.
        tokio::time::advance(READINESS_FOR).await;
        assert!(!probe(false).await);
        assert_eq!(checks.load(Ordering::SeqCst), 2);
    }
}
