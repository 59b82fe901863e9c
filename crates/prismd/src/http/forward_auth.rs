//! `/auth/verify`: forward auth for reverse proxies (nginx `auth_request`, Traefik
//! `ForwardAuth`, Caddy `forward_auth`, Envoy's HTTP `ext_authz`). The proxy sends each
//! request's `Authorization` header here (any method); 200 with identity headers lets the
//! request through, 401 (`invalid_token`, RFC 6750) or 403 (`insufficient_scope`) turns it
//! away. A route's required scopes come in the `scope` query parameter or the
//! `<prefix>Required-Scope` header, which the proxy sets per route. Any path below
//! `/auth/verify/` is the same check: Envoy's `ext_authz` appends the client's path to its
//! `path_prefix`.

use std::collections::BTreeSet;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::api::Authenticated;
use super::error::HttpError;
use crate::domain::DomainError;
use crate::domain::forward_auth::{ProxyIdentity, required_scopes};
use crate::metrics::ForwardAuthOutcome;

/// The query string as pairs: `scope` may repeat, and other parameters are ignored (Envoy's
/// `ext_authz` appends the client's own path and query to the check's path).
type VerifyQuery = Vec<(String, String)>;

pub async fn verify(
    State(state): State<AppState>,
    Query(query): Query<VerifyQuery>,
    headers: HeaderMap,
    caller: Result<Authenticated, HttpError>,
) -> Response {
    let outcome = answer(&state, query, &headers, caller).await;
    state.metrics.forward_auth(match &outcome {
        Ok(_) => ForwardAuthOutcome::Allowed,
        Err(err) if err.status() == StatusCode::FORBIDDEN => ForwardAuthOutcome::InsufficientScope,
        Err(err) if err.status() == StatusCode::UNAUTHORIZED => ForwardAuthOutcome::Refused,
        Err(_) => ForwardAuthOutcome::Other,
    });
    let mut response = match outcome {
        Ok(identity) => {
            let mut response = StatusCode::OK.into_response();
            write_identity(
                response.headers_mut(),
                &state.web.forward_auth_prefix,
                &identity,
            );
            response
        }
        Err(err) => err.into_response(),
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn answer(
    state: &AppState,
    query: VerifyQuery,
    headers: &HeaderMap,
    caller: Result<Authenticated, HttpError>,
) -> Result<ProxyIdentity, HttpError> {
    // The token first: a request without one is a 401 whatever its route requires.
    let Authenticated(principal) = caller?;
    let from_header = format!("{}Required-Scope", state.web.forward_auth_prefix);
    let texts: Vec<&str> = query
        .iter()
        .filter(|(name, _)| name == "scope")
        .map(|(_, value)| value.as_str())
        .chain(
            headers
                .get_all(from_header.as_str())
                .iter()
                .filter_map(|value| value.to_str().ok()),
        )
        .collect();
    let required: BTreeSet<String> = required_scopes(&texts.join(" "))?;
    match state.auth.proxy_identity(&principal, &required) {
        Ok(identity) => Ok(identity),
        Err(DomainError::InsufficientScope(missing)) => Err(HttpError::insufficient_scope(
            &required.into_iter().collect::<Vec<_>>().join(" "),
            &missing,
        )),
        Err(other) => Err(other.into()),
    }
}

/// The identity headers: `<prefix>User-Id`, `-Email` (people only), `-Name`, `-Organization`
/// (the tenant id), `-Role`, `-Kind`, `-Scopes`, `-Session` and `-Client`. A value that is
/// not a valid header value (a name with a control character) is left out, never mangled.
fn write_identity(headers: &mut HeaderMap, prefix: &str, identity: &ProxyIdentity) {
    let scopes = identity.scopes.join(" ");
    let fields: [(&str, Option<&str>); 9] = [
        ("User-Id", Some(&identity.user_id)),
        ("Email", identity.email.as_deref()),
        ("Name", Some(&identity.name)),
        ("Organization", Some(&identity.tenant_id)),
        ("Role", Some(identity.role.name())),
        ("Kind", Some(identity.kind)),
        ("Scopes", Some(&scopes)),
        ("Session", Some(&identity.session_id)),
        ("Client", Some(&identity.client_id)),
    ];
    for (field, value) in fields {
        let (Ok(name), Some(Ok(value))) = (
            HeaderName::try_from(format!("{prefix}{field}")),
            value.map(HeaderValue::from_str),
        ) else {
            continue;
        };
        headers.insert(name, value);
    }
}
