//! The HTTP layer's one error type: every failure becomes a JSON body in the OAuth shape
//! (`error`, `error_description`) with a fitting status, and never carries internals or
//! secrets. Storage trouble is a 503 with `Retry-After`, so clients retry instead of failing.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prism_proto::wire::OAuthErrorBody;

use crate::domain::DomainError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// Set for 401s: the RFC 6750 challenge.
    challenge: Option<HeaderValue>,
    /// Set for 429s: seconds until the client may try again.
    retry_after: Option<u64>,
}

impl HttpError {
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            challenge: None,
            retry_after: None,
        }
    }

    /// 429 with `Retry-After`: an abuse limit refuses this client for `seconds`.
    pub fn too_many(seconds: u64, description: impl Into<String>) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "slow_down", description)
        }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 401 for a request that carried no bearer token at all (RFC 6750 §3.1: no error code).
    pub fn missing_bearer() -> Self {
        Self {
            challenge: Some(HeaderValue::from_static(r#"Bearer realm="prism""#)),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request",
                "an 'Authorization: Bearer <access token>' header is required",
            )
        }
    }

    fn invalid_token(description: String) -> Self {
        Self {
            challenge: Some(bearer_challenge(
                "invalid_token",
                "error_description",
                &description,
            )),
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_token", description)
        }
    }

    /// 403 for a token that stands but lacks a scope the resource requires (RFC 6750 §3.1),
    /// with the scopes `required` in the challenge.
    pub fn insufficient_scope(required: &str, missing: &str) -> Self {
        Self {
            challenge: Some(bearer_challenge("insufficient_scope", "scope", required)),
            ..Self::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("this token lacks the scope {missing}"),
            )
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `error_description` the client reads.
    pub fn description(&self) -> &str {
        &self.description
    }
}

/// An RFC 6750 challenge: `Bearer realm="prism", error="<error>", <param>="<value>"`. The
/// values are our own texts; quotes, backslashes and control characters are dropped anyway,
/// so the header stays valid whatever they hold.
fn bearer_challenge(error: &'static str, param: &str, value: &str) -> HeaderValue {
    let safe: String = value
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect();
    HeaderValue::from_str(&format!(
        r#"Bearer realm="prism", error="{error}", {param}="{safe}""#
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(r#"Bearer realm="prism""#))
}

impl From<DomainError> for HttpError {
    fn from(err: DomainError) -> Self {
        match err {
            DomainError::InvalidInput(msg) => Self::invalid_request(msg),
            DomainError::NotFound(msg) => Self::new(StatusCode::NOT_FOUND, "not_found", msg),
            DomainError::Conflict(msg) => Self::new(StatusCode::CONFLICT, "conflict", msg),
            DomainError::InvalidGrant(reason) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_grant", reason.to_string())
            }
            DomainError::AccessDenied(msg) => {
                Self::new(StatusCode::FORBIDDEN, "access_denied", msg)
            }
            DomainError::InvalidScope(msg) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_scope", msg)
            }
            DomainError::InvalidToken(reason) => Self::invalid_token(reason.to_string()),
            // RFC 6749 §5.2: 401 with the scheme the client may authenticate with.
            DomainError::InvalidClient(msg) => Self {
                challenge: Some(HeaderValue::from_static(r#"Basic realm="prism""#)),
                ..Self::new(StatusCode::UNAUTHORIZED, "invalid_client", msg)
            },
            DomainError::InsufficientScope(missing) => Self::insufficient_scope(&missing, &missing),
            DomainError::SubjectToken(reason) => {
                use crate::domain::trust::SubjectTokenError;
                match reason {
                    SubjectTokenError::IssuerUnavailable(msg) => Self {
                        // An issuer outage lasts longer than a database failover.
                        retry_after: Some(ISSUER_RETRY_AFTER_SECS),
                        ..Self::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "temporarily_unavailable",
                            msg,
                        )
                    },
                    other => Self::new(StatusCode::BAD_REQUEST, "invalid_grant", other.to_string()),
                }
            }
            DomainError::Device(crate::domain::device::DeviceError::TooManyPending) => {
                Self::too_many(
                    60,
                    crate::domain::device::DeviceError::TooManyPending.to_string(),
                )
            }
            DomainError::Device(reason) => {
                use crate::domain::device::DeviceError;
                let error = match reason {
                    DeviceError::AuthorizationPending => "authorization_pending",
                    DeviceError::SlowDown => "slow_down",
                    DeviceError::ExpiredToken => "expired_token",
                    DeviceError::AccessDenied => "access_denied",
                    DeviceError::TooManyPending => "slow_down",
                };
                Self::new(StatusCode::BAD_REQUEST, error, reason.to_string())
            }
            DomainError::Unavailable(cause) => {
                log_unavailable(&cause);
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the service is temporarily unavailable; retry shortly",
                )
            }
            DomainError::MailNotSent(msg) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                msg,
            ),
            DomainError::Internal(what) => {
                tracing::error!(error = what, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal server error",
                )
            }
        }
    }
}

/// Logs why storage failed a request. During an outage the breaker logs the outage once
/// (when it opens and when it closes), so requests it turns away are only debug lines; a
/// request that found the database gone is a warning; anything else an error.
pub(super) fn log_unavailable(cause: &StoreError) {
    match cause {
        StoreError::CircuitOpen => tracing::debug!(error = %cause, "storage unavailable"),
        StoreError::Unreachable(_) => tracing::warn!(error = %cause, "storage unavailable"),
        _ => tracing::error!(error = %cause, "storage unavailable"),
    }
}

/// `Retry-After` of every 503: the breaker notices a returning database within a second.
pub(super) const RETRY_AFTER_SECS: &str = "1";
/// `Retry-After` of a 503 for an OIDC issuer that cannot be reached.
const ISSUER_RETRY_AFTER_SECS: u64 = 5;

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = OAuthErrorBody {
            error: self.error.to_owned(),
            error_description: self.description,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(challenge) = self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE && self.retry_after.is_none() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}
