//! Standard OAuth 2.0 surface: the token endpoint (RFC 6749 §6 refresh grant, form or JSON,
//! and RFC 8693 token exchange for keyless CI), revocation, the JWKS and the metadata
//! documents (RFC 8414 / OpenID Discovery). Introspection has its own module.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prism_proto::wire::TokenResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{AUTH_BODY_LIMIT, EXCHANGE_BODY_LIMIT, no_store};
use super::body::{BodyShape, JsonOrForm};
use super::error::HttpError;
use super::{AppState, ClientMeta};
use crate::domain::clients::{CLI_CLIENT_ID, DEFAULT_SCOPE};
use crate::domain::limits::{LimitKey, LimitKind, Verdict};
use crate::domain::login::CodeGrant;
use crate::domain::trust::{ACCESS_TOKEN_TYPE, SUBJECT_TOKEN_TYPES};
use crate::metrics::RevocationKind;

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
    /// On the refresh grant, a narrower scope (RFC 6749 section 6).
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    code_verifier: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
    #[serde(default)]
    device_code: Option<String>,
    /// Token exchange (RFC 8693): the pipeline's OIDC token and its type.
    #[serde(default)]
    subject_token: Option<String>,
    #[serde(default)]
    subject_token_type: Option<String>,
    #[serde(default)]
    requested_token_type: Option<String>,
}

/// RFC 8628 grant type.
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// RFC 8693 grant type.
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

impl BodyShape for TokenRequest {
    const MAX_BYTES: usize = EXCHANGE_BODY_LIMIT;
    const EXPECTED: &'static str = "string parameters: grant_type, and refresh_token (refresh_token grant) or code, \
         code_verifier, redirect_uri, client_id (authorization_code grant) or subject_token, \
         subject_token_type (token-exchange grant)";
}

pub async fn token(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    JsonOrForm(request): JsonOrForm<TokenRequest>,
) -> Result<Response, HttpError> {
    if let Some(client) = request.client_id.as_deref()
        && client != CLI_CLIENT_ID
    {
        // 400, not 401: a public client has no credentials to send again (RFC 6749 §5.2).
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "unknown client_id",
        ));
    }
    match request.grant_type.as_str() {
        "refresh_token" => {
            let refresh_token = request.refresh_token.as_deref().ok_or_else(|| {
                HttpError::invalid_request("the refresh_token parameter is required")
            })?;
            let exchanged = state
                .auth
                .exchange_refresh_token(
                    refresh_token,
                    request.tenant_id.as_deref(),
                    request.scope.as_deref(),
                    &meta,
                )
                .await;
            state.metrics.tokens.refresh(&exchanged);
            match exchanged {
                Ok(tokens) => Ok(no_store(Json(tokens).into_response())),
                Err(err) => Err(super::auth::refresh_failed(&state, &meta, err).await),
            }
        }
        "authorization_code" => {
            let required = |value: &Option<String>, name: &str| {
                value.clone().filter(|v| !v.is_empty()).ok_or_else(|| {
                    HttpError::invalid_request(format!("the {name} parameter is required"))
                })
            };
            let code = required(&request.code, "code")?;
            let code_verifier = required(&request.code_verifier, "code_verifier")?;
            let redirect_uri = required(&request.redirect_uri, "redirect_uri")?;
            let client_id = required(&request.client_id, "client_id")?;
            let grant = CodeGrant {
                code: &code,
                code_verifier: &code_verifier,
                redirect_uri: &redirect_uri,
                client_id: &client_id,
                tenant_id: request.tenant_id.as_deref(),
            };
            let tokens = state.auth.exchange_code(grant, &meta).await?;
            count_minted(&state, &tokens);
            Ok(no_store(Json(tokens).into_response()))
        }
        DEVICE_CODE_GRANT => {
            let device_code = request
                .device_code
                .as_deref()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    HttpError::invalid_request("the device_code parameter is required")
                })?;
            let client_id = request.client_id.as_deref().unwrap_or(CLI_CLIENT_ID);
            let tokens = state
                .auth
                .poll_device_code(device_code, client_id, &meta)
                .await?;
            count_minted(&state, &tokens);
            Ok(no_store(Json(tokens).into_response()))
        }
        TOKEN_EXCHANGE_GRANT => {
            let subject_token = request
                .subject_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    HttpError::invalid_request("the subject_token parameter is required")
                })?;
            match request.subject_token_type.as_deref() {
                Some(kind) if SUBJECT_TOKEN_TYPES.contains(&kind) => {}
                _ => {
                    return Err(HttpError::invalid_request(format!(
                        "subject_token_type must be {}",
                        SUBJECT_TOKEN_TYPES.join(" or ")
                    )));
                }
            }
            if request
                .requested_token_type
                .as_deref()
                .is_some_and(|kind| kind != ACCESS_TOKEN_TYPE)
            {
                return Err(HttpError::invalid_request(format!(
                    "this server issues only requested_token_type={ACCESS_TOKEN_TYPE}"
                )));
            }
            super::auth::exchanged(
                &state,
                &meta,
                subject_token,
                request.tenant_id.as_deref(),
                request.scope.as_deref(),
            )
            .await
        }
        _ => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "this server supports grant_type=authorization_code, refresh_token, \
             urn:ietf:params:oauth:grant-type:device_code and \
             urn:ietf:params:oauth:grant-type:token-exchange",
        )),
    }
}

/// A code or device grant that hands out a refresh token has just minted it.
fn count_minted(state: &AppState, tokens: &TokenResponse) {
    if tokens.refresh_token.is_some() {
        state.metrics.tokens.minted();
    }
}

/// RFC 8628 device authorization request.
#[derive(Debug, Deserialize)]
pub struct DeviceCodeRequest {
    client_id: String,
    #[serde(default)]
    scope: Option<String>,
}

impl BodyShape for DeviceCodeRequest {
    const MAX_BYTES: usize = AUTH_BODY_LIMIT;
    const EXPECTED: &'static str = "a string parameter client_id and an optional scope";
}

/// `POST /oauth/device/code`: a device code to poll with and a user code for a person. Each
/// stores a row anyone can ask for: counted per address (429 once an address has started
/// its share within the window), and refused while too many are pending on the server.
pub async fn device_code(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    JsonOrForm(request): JsonOrForm<DeviceCodeRequest>,
) -> Result<Response, HttpError> {
    if request.client_id != CLI_CLIENT_ID {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "unknown client_id",
        ));
    }
    let keys: Vec<LimitKey> = LimitKey::address(LimitKind::DeviceStartAddress, &meta)
        .into_iter()
        .collect();
    if let Verdict::Locked { retry_after_secs } = state.limits().check(&keys).await? {
        state.metrics.limit_trip(LimitKind::DeviceStartAddress);
        return Err(HttpError::too_many(
            retry_after_secs,
            "too many device logins started from this address; try again later",
        ));
    }
    // Each request counts, whatever it finds. The one that reaches the limit is still served:
    // the lock it sets refuses the next one (checked above), as for password resets.
    state.limits().fail(&keys, &meta, None).await?;
    let started = state
        .auth
        .start_device_authorization(
            &request.client_id,
            request.scope.as_deref(),
            state.web.limits.live_device_codes,
        )
        .await?;
    let issuer = &state.auth.settings().issuer;
    let body = json!({
        "device_code": started.device_code,
        "user_code": started.user_code,
        "verification_uri": format!("{issuer}/device"),
        "verification_uri_complete": format!("{issuer}/device?user_code={}", started.user_code),
        "expires_in": started.expires_in,
        "interval": started.interval,
    });
    Ok(no_store(Json(body).into_response()))
}

/// RFC 7009 revocation request.
#[derive(Debug, Deserialize)]
pub struct RevocationRequest {
    token: String,
    #[serde(default)]
    #[allow(dead_code)] // Optional hint; both token types are recognised by their form.
    token_type_hint: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // Public client: nothing to authenticate.
    client_id: Option<String>,
}

impl BodyShape for RevocationRequest {
    const MAX_BYTES: usize = AUTH_BODY_LIMIT;
    const EXPECTED: &'static str = "a string parameter token and optional token_type_hint";
}

/// `POST /oauth/revoke`: revokes the one session the token belongs to; 200 whatever the token.
pub async fn revoke(
    State(state): State<AppState>,
    ClientMeta(meta): ClientMeta,
    JsonOrForm(request): JsonOrForm<RevocationRequest>,
) -> Result<Response, HttpError> {
    let outcome = state.auth.revoke_one(&request.token, &meta).await?;
    state.metrics.tokens.revoke(RevocationKind::One, outcome);
    tracing::debug!(?outcome, "revoke one");
    Ok(no_store(Json(json!({})).into_response()))
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
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/oauth/token"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "introspection_endpoint": format!("{issuer}/oauth/introspect"),
        "device_authorization_endpoint": format!("{issuer}/oauth/device/code"),
        "end_session_endpoint": format!("{issuer}/logout"),
        "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_CODE_GRANT, TOKEN_EXCHANGE_GRANT],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        // Resource servers only (RFC 7662 §2.1).
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        // The OpenID names a login asks for, then the API scopes a refresh may narrow to
        // (organization-defined ones are each organization's own and not listed).
        "scopes_supported": DEFAULT_SCOPE
            .split(' ')
            .chain(crate::domain::scopes::ApiScope::ALL.iter().map(|scope| scope.name()))
            .collect::<Vec<_>>(),
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
