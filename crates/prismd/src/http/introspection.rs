//! `POST /oauth/introspect` (RFC 7662): a registered resource server, authenticated with its
//! client id and secret (HTTP Basic, or `client_id` and `client_secret` in the body), asks
//! whether an access token stands; the answer is `{"active": false}` or who the token speaks
//! for now.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::auth::{AUTH_BODY_LIMIT, no_store};
use super::body::{BodyShape, JsonOrForm};
use super::error::HttpError;
use crate::domain::DomainError;
use crate::domain::introspection::{ActiveToken, Introspection};
use crate::metrics::IntrospectionOutcome;

/// RFC 7662 §2.1 request parameters, with the client's credentials when it sends them in the
/// body (`client_secret_post`).
#[derive(Debug, Deserialize)]
pub struct IntrospectionRequest {
    #[serde(default)]
    token: Option<String>,
    /// Optional; every token is recognised by its form.
    #[serde(default)]
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
}

impl BodyShape for IntrospectionRequest {
    const MAX_BYTES: usize = AUTH_BODY_LIMIT;
    const EXPECTED: &'static str = "string parameters token, optional token_type_hint, and \
         client_id and client_secret unless they come in an HTTP Basic Authorization header";
}

pub async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonOrForm(request): JsonOrForm<IntrospectionRequest>,
) -> Response {
    let outcome = answer(&state, &headers, request).await;
    state.metrics.introspection(match &outcome {
        Ok(Introspection::Active(_)) => IntrospectionOutcome::Active,
        Ok(Introspection::Inactive) => IntrospectionOutcome::Inactive,
        Err(err) if err.status() == StatusCode::UNAUTHORIZED => IntrospectionOutcome::InvalidClient,
        Err(_) => IntrospectionOutcome::Other,
    });
    match outcome {
        Ok(Introspection::Active(token)) => no_store(Json(described(&token)).into_response()),
        Ok(Introspection::Inactive) => no_store(Json(json!({"active": false})).into_response()),
        Err(err) => err.into_response(),
    }
}

async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    request: IntrospectionRequest,
) -> Result<Introspection, HttpError> {
    // The client first: an unauthenticated caller learns nothing, not even that its request
    // lacked a token.
    let (client_id, client_secret) = credentials(headers, &request)?;
    let server = state
        .auth
        .authenticate_resource_server(&client_id, &client_secret)
        .await
        .inspect_err(|err| {
            if matches!(err, DomainError::InvalidClient(_)) {
                // The client id is not a secret; the secret is never logged.
                tracing::info!(client_id = %client_id.chars().take(64).collect::<String>(),
                    "introspection: client authentication failed");
            }
        })?;
    let token = request
        .token
        .as_deref()
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| HttpError::invalid_request("the token parameter is required"))?;
    Ok(state.auth.introspect(&server, token).await?)
}

/// The client's id and secret, from exactly one of HTTP Basic (RFC 6749 §2.3.1: each
/// form-urlencoded, then joined by `:`) and the body.
fn credentials(
    headers: &HeaderMap,
    request: &IntrospectionRequest,
) -> Result<(String, String), HttpError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .map(|value| {
            let value = value.to_str().ok()?;
            let (scheme, encoded) = value.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return None;
            }
            let decoded = STANDARD.decode(encoded.trim()).ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (id, secret) = decoded.split_once(':')?;
            Some((form_decoded(id)?, form_decoded(secret)?))
        })
        .map(|parsed| {
            parsed.ok_or_else(|| {
                invalid_client(
                    "the Authorization header must be 'Basic base64(client_id:client_secret)'",
                )
            })
        })
        .transpose()?;
    let in_body = request.client_id.is_some() || request.client_secret.is_some();
    match (basic, in_body) {
        (Some(_), true) => Err(HttpError::invalid_request(
            "send the client's credentials once: in the Authorization header or in the body, \
             not both",
        )),
        (Some(credentials), false) => Ok(credentials),
        (None, true) => match (&request.client_id, &request.client_secret) {
            (Some(id), Some(secret)) => Ok((id.clone(), secret.clone())),
            _ => Err(invalid_client(
                "client_id and client_secret go together in the body",
            )),
        },
        (None, false) => Err(invalid_client(
            "client authentication is required: HTTP Basic with a resource server's client_id \
             and client_secret",
        )),
    }
}

fn form_decoded(text: &str) -> Option<String> {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

fn invalid_client(description: &str) -> HttpError {
    DomainError::InvalidClient(description.to_owned()).into()
}

/// RFC 7662 §2.2's members, then this server's: `username` (a person's email, a service
/// account's name), `email` (people only), `name`, `organization` (the tenant id), `role`,
/// `kind` (`person` or `service`) and `sid` (the session).
fn described(token: &ActiveToken) -> Value {
    let mut fields = Map::new();
    let mut put = |name: &str, value: Value| {
        fields.insert(name.to_owned(), value);
    };
    put("active", json!(true));
    put("scope", json!(token.scopes.join(" ")));
    put("client_id", json!(token.client_id));
    put(
        "username",
        json!(token.email.as_deref().unwrap_or(&token.name)),
    );
    put("token_type", json!("Bearer"));
    put("exp", json!(token.expires_at));
    put("iat", json!(token.issued_at));
    if let Some(nbf) = token.not_before {
        put("nbf", json!(nbf));
    }
    put("sub", json!(token.user_id));
    put("aud", json!(token.audience));
    put("iss", json!(token.issuer));
    put("jti", json!(token.token_id));
    if let Some(email) = &token.email {
        put("email", json!(email));
    }
    put("name", json!(token.name));
    put("organization", json!(token.tenant_id));
    put("role", json!(token.role.name()));
    put("kind", json!(token.kind));
    put("sid", json!(token.session_id));
    Value::Object(fields)
}
