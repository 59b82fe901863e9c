//! `POST /auth/refresh` and `POST /auth/revoke`, exactly as Prismatic's CI/CD document uses
//! them (JSON in, JSON out), `POST /auth/exchange` (keyless CI, in the same shape), and
//! `GET /auth/meta`, where the official `prism` CLI discovers
//! this server.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prism_proto::wire::{RefreshRequest, RevokeRequest};

use super::body::{BodyShape, JsonBody};
use super::error::HttpError;
use super::{AppState, ClientMeta};
use crate::domain::clients::CLI_CLIENT_ID;
use crate::domain::limits::{LimitKey, LimitKind, Verdict};
use crate::domain::trust::SubjectTokenError;
use crate::domain::{DomainError, GrantError, RequestMeta};
use crate::metrics::RevocationKind;

/// `/auth/*` bodies are a token and a tenant id; 16 KiB is generous.
pub(super) const AUTH_BODY_LIMIT: usize = 16 * 1024;

impl BodyShape for RefreshRequest {
    const MAX_BYTES: usize = AUTH_BODY_LIMIT;
    const EXPECTED: &'static str = r#"a JSON object with a string field "refresh_token" and optional strings "tenant_id" and "scope""#;
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

/// `POST /auth/exchange`: the JSON twin of RFC 8693 token exchange at `/oauth/token`, in
/// `/auth/refresh`'s shape, so a pipeline's `curl | jq` line stays the seed's.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ExchangeRequest {
    pub token: String,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// OIDC tokens reach a few KiB (the verifier refuses more than 16 KiB).
pub(super) const EXCHANGE_BODY_LIMIT: usize = 24 * 1024;

impl BodyShape for ExchangeRequest {
    const MAX_BYTES: usize = EXCHANGE_BODY_LIMIT;
    const EXPECTED: &'static str = r#"a JSON object with a string field "token" (the pipeline's OIDC token) and optional strings "tenant_id" and "scope""#;
}

pub async fn exchange(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    JsonBody(body): JsonBody<ExchangeRequest>,
) -> Result<Response, HttpError> {
    exchanged(
        &state,
        &meta,
        &body.token,
        body.tenant_id.as_deref(),
        body.scope.as_deref(),
    )
    .await
}

/// Runs an OIDC token exchange for either endpoint: counted, logged with its policy, and
/// refused ones counted against the address like bad refresh tokens.
pub(super) async fn exchanged(
    state: &AppState,
    meta: &RequestMeta,
    token: &str,
    tenant_id: Option<&str>,
    scope: Option<&str>,
) -> Result<Response, HttpError> {
    let outcome = state
        .auth
        .exchange_oidc_token(token, tenant_id, scope, meta)
        .await;
    state.metrics.tokens.exchange(&outcome);
    match outcome {
        Ok(exchanged) => {
            tracing::info!(policy = %exchanged.policy_id, "OIDC token exchanged");
            Ok(no_store(Json(exchanged.response).into_response()))
        }
        Err(err) => {
            tracing::info!(error = %err, "OIDC token exchange refused");
            Err(refresh_failed(state, meta, err).await)
        }
    }
}

pub async fn refresh(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> Result<Response, HttpError> {
    let exchanged = state
        .auth
        .exchange_refresh_token(
            &body.refresh_token,
            body.tenant_id.as_deref(),
            body.scope.as_deref(),
            &meta,
        )
        .await;
    state.metrics.tokens.refresh(&exchanged);
    match exchanged {
        Ok(tokens) => Ok(no_store(Json(tokens).into_response())),
        Err(err) => Err(refresh_failed(&state, &meta, err).await),
    }
}

/// A refused refresh. Unknown and malformed tokens count against the client's address; over
/// the limit they answer 429 with `Retry-After`. Only this failure path reads or writes the
/// counters, so valid tokens from the same address (a CI fleet behind one NAT) are never
/// refused or slowed.
pub(super) async fn refresh_failed(
    state: &AppState,
    meta: &RequestMeta,
    err: DomainError,
) -> HttpError {
    let counted = match &err {
        DomainError::InvalidGrant(GrantError::Malformed(_) | GrantError::Unknown) => true,
        // Keyless CI: a token no policy accepts, or a forged or replayed one. An issuer that
        // cannot be reached is not the client's fault.
        DomainError::SubjectToken(reason) => {
            !matches!(reason, SubjectTokenError::IssuerUnavailable(_))
        }
        _ => false,
    };
    let key = LimitKey::address(LimitKind::RefreshAddress, meta).filter(|_| counted);
    let Some(key) = key else {
        return err.into();
    };
    let keys = [key];
    // A client already locked out is not counted again: one read, no write.
    let verdict = match state.limits().check(&keys).await {
        Ok(Verdict::Allowed) => state.limits().fail(&keys, meta, None).await,
        other => other,
    };
    match verdict {
        Ok(Verdict::Locked { retry_after_secs }) => {
            state.metrics.limit_trip(LimitKind::RefreshAddress);
            HttpError::too_many(
                retry_after_secs,
                format!(
                    "too many invalid tokens from this address; retry after {retry_after_secs} seconds"
                ),
            )
        }
        Ok(Verdict::Allowed) => err.into(),
        Err(limit_err) => {
            // The refresh is refused either way; a counter that cannot be written must not
            // turn a 400 into a 503.
            tracing::warn!(error = %limit_err, "could not count a refresh failure");
            err.into()
        }
    }
}

pub async fn revoke(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    JsonBody(body): JsonBody<RevokeRequest>,
) -> Result<Response, HttpError> {
    let outcome = state.auth.revoke_all(&body.refresh_token, &meta).await?;
    state.metrics.tokens.revoke(RevocationKind::All, outcome);
    tracing::debug!(?outcome, "revoke");
    Ok(no_store(Json(serde_json::json!({})).into_response()))
}

/// `{"domain", "clientId", "audience"}`: the official client builds `https://{domain}/...`
/// from `domain`, a host with an optional port and no scheme.
pub async fn meta(State(state): State<AppState>) -> Json<serde_json::Value> {
    let settings = state.auth.settings();
    Json(serde_json::json!({
        "domain": authority(&settings.issuer),
        "clientId": CLI_CLIENT_ID,
        "audience": settings.audience,
    }))
}

/// `host[:port]` of a URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}
