//! The HTTP surface: the router, shared state, request ids and the one-line access log.
//! One module per flow; handlers parse, call domain operations (through `AppState::auth`,
//! never the store) and map the result.

mod account_pages;
mod api;
mod api_rate;
mod auth;
mod body;
mod client_address;
mod connections;
mod error;
mod forward_auth;
mod graphql;
mod graphql_access;
mod graphql_resource_servers;
mod graphql_trust;
mod introspection;
mod metrics;
mod oauth;
mod ops;
mod password_links;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tracing::Instrument;

use crate::domain::RequestMeta;
use crate::domain::auth::AuthService;
use crate::domain::limits::{LimitSettings, Limits};
use crate::metrics::Metrics;

pub use api::ApiSchema;
pub use connections::LimitConnections;
pub use error::HttpError;

/// How many request-body types [`parse_request_body`] knows.
#[doc(hidden)]
pub const REQUEST_BODY_KINDS: u8 = 13;

/// Parses `bytes` sent with `content_type` exactly as the extractor of one endpoint would
/// (`kind` picks which, modulo [`REQUEST_BODY_KINDS`]), without a server. The entry point of
/// the `request_body` fuzz target in `fuzz/`; nothing else calls it.
#[doc(hidden)]
pub fn parse_request_body(kind: u8, content_type: &str, bytes: &[u8]) -> Result<(), HttpError> {
    use body::{parse_json_body as json, parse_json_or_form as either};
    match kind % REQUEST_BODY_KINDS {
        0 => json::<prism_proto::wire::RefreshRequest>(content_type, bytes).map(drop),
        1 => json::<prism_proto::wire::RevokeRequest>(content_type, bytes).map(drop),
        2 => json::<api::GraphqlRequest>(content_type, bytes).map(drop),
        3 => either::<oauth::TokenRequest>(content_type, bytes).map(drop),
        4 => either::<oauth::DeviceCodeRequest>(content_type, bytes).map(drop),
        5 => either::<oauth::RevocationRequest>(content_type, bytes).map(drop),
        6 => either::<web::LoginForm>(content_type, bytes).map(drop),
        7 => either::<password_links::PasswordLinkForm>(content_type, bytes).map(drop),
        8 => either::<account_pages::ChangeForm>(content_type, bytes).map(drop),
        9 => either::<account_pages::ForgotForm>(content_type, bytes).map(drop),
        10 => either::<web::DeviceForm>(content_type, bytes).map(drop),
        11 => either::<web::LogoutForm>(content_type, bytes).map(drop),
        _ => either::<introspection::IntrospectionRequest>(content_type, bytes).map(drop),
    }
}

/// Settings of the browser pages.
#[derive(Debug, Clone, Default)]
pub struct WebSettings {
    /// Mark cookies `Secure` (the issuer is https).
    pub secure_cookies: bool,
    /// `returnTo` targets `/logout` may redirect to, besides loopback addresses.
    pub logout_return_to: Vec<String>,
    /// Abuse limits on logins, device code entry and refresh tokens.
    pub limits: LimitSettings,
    /// What `/auth/verify`'s identity headers (and the required-scope header) start with.
    pub forward_auth_prefix: String,
    /// Peers whose `Forwarded` / `X-Forwarded-For` name the client (`--trusted-proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `/api` requests a second per caller (`--api-rate-limit`); 0: no limit.
    pub api_rate_limit: u32,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<AuthService>,
    pub schema: ApiSchema,
    pub metadata: Arc<serde_json::Value>,
    pub web: Arc<WebSettings>,
    pub metrics: Arc<Metrics>,
    /// Outgoing email; `None` without `--smtp-url` (then links are shown, not mailed).
    pub mail: Option<Arc<crate::mail::Mailer>>,
    /// `/readyz`'s last answer, shared by the probes of a fraction of a second.
    pub readiness: Arc<ops::Readiness>,
    /// How many `/api` requests each caller has left.
    pub api_rate: Arc<api_rate::ApiRate>,
}

impl AppState {
    pub fn new(auth: Arc<AuthService>, web: WebSettings, metrics: Arc<Metrics>) -> Self {
        let metadata = Arc::new(oauth::metadata_document(&auth.settings().issuer));
        let api_rate_limit = web.api_rate_limit;
        Self {
            schema: api::schema(auth.clone()),
            auth,
            metadata,
            web: Arc::new(web),
            metrics,
            mail: None,
            readiness: Arc::new(ops::Readiness::default()),
            api_rate: Arc::new(api_rate::ApiRate::new(api_rate_limit)),
        }
    }

    /// Failure counters of logins, device codes and refresh tokens, shared through the store.
    pub fn limits(&self) -> Limits<'_> {
        self.auth.limits(self.web.limits)
    }
}

/// Where `GET /metrics` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsExposure {
    /// On the main listener, beside the API.
    Here,
    /// Only on a listener of its own ([`metrics_router`]); the main listener answers 404.
    Elsewhere,
}

/// Builds the router with its middleware.
pub fn router(state: AppState, request_timeout: Duration, metrics: MetricsExposure) -> Router {
    let recorder = state.metrics.clone();
    let proxies = client_address::TrustedProxies(state.web.trusted_proxies.clone());
    let routes = match metrics {
        MetricsExposure::Here => Router::new().route("/metrics", get(metrics::scrape)),
        MetricsExposure::Elsewhere => Router::new(),
    };
    routes
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/exchange", post(auth::exchange))
        .route("/auth/verify", any(forward_auth::verify))
        .route("/auth/verify/", any(forward_auth::verify))
        .route("/auth/verify/{*rest}", any(forward_auth::verify))
        .route("/auth/revoke", post(auth::revoke))
        .route("/auth/meta", get(auth::meta))
        .route("/oauth/token", post(oauth::token))
        .route("/oauth/revoke", post(oauth::revoke))
        .route("/oauth/introspect", post(introspection::introspect))
        .route("/oauth/device/code", post(oauth::device_code))
        .route("/device", get(web::device).post(web::decide_device))
        .route("/authorize", get(web::authorize).post(web::login))
        .route("/logout", get(web::logout).post(web::end_session))
        .route(
            "/invite",
            get(password_links::invite).post(password_links::accept_invite),
        )
        .route(
            "/account/password",
            get(account_pages::change_password_form).post(account_pages::change_password),
        )
        .route(
            "/forgot",
            get(account_pages::forgot_form).post(account_pages::forgot),
        )
        .route(
            "/reset",
            get(password_links::reset_form).post(password_links::reset),
        )
        .route("/.well-known/jwks.json", get(oauth::jwks))
        .route("/.well-known/openid-configuration", get(oauth::metadata))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::metadata),
        )
        .route("/api", post(api::graphql))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(oauth::not_found)
        .method_not_allowed_fallback(oauth::method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn_with_state(
            Arc::new(Envelope {
                metrics: recorder,
                proxies,
                request_timeout,
            }),
            envelope,
        ))
}

/// The router of the separate metrics listener: `GET /metrics` and nothing else. Its requests
/// are neither logged nor counted, so scrapes do not drown the access log.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::scrape))
        .fallback(oauth::not_found)
        .method_not_allowed_fallback(oauth::method_not_allowed)
        .with_state(metrics)
}

/// The 408 (in the OAuth error shape) of a request that took longer than `--request-timeout`.
fn timed_out() -> Response {
    HttpError::new(
        StatusCode::REQUEST_TIMEOUT,
        "temporarily_unavailable",
        "the request took too long; retry",
    )
    .into_response()
}

/// The caller's address and user agent, for audit events and last-use records.
pub struct ClientMeta(pub RequestMeta);

impl<S: Send + Sync> FromRequestParts<S> for ClientMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // As the middleware resolved it (a trusted proxy's forwarded client), else the peer.
        let address = parts
            .extensions
            .get::<client_address::ClientAddress>()
            .map(|client_address::ClientAddress(ip)| ip.to_string())
            .or_else(|| {
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(addr)| addr.ip().to_canonical().to_string())
            });
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect());
        Ok(ClientMeta(RequestMeta {
            address,
            user_agent,
        }))
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A client-supplied request id is kept when it is short and plain; otherwise we make one.
fn request_id(req: &Request) -> HeaderValue {
    let supplied = req.headers().get(&X_REQUEST_ID).filter(|v| {
        let bytes = v.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 64
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    match supplied {
        Some(value) => value.clone(),
        None => {
            // The process id once, not a `getpid` system call per request.
            static PROCESS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
            let process = *PROCESS.get_or_init(std::process::id);
            let n = REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed);
            HeaderValue::from_str(&format!("{process:08x}-{n:x}"))
                .unwrap_or_else(|_| HeaderValue::from_static("-"))
        }
    }
}

/// One line per request: method, route, status, latency, request id; and the same request in
/// the metrics. The route is the matched pattern, never the raw path or query, and no header
/// is logged, so no token can reach the log. Everything logged while the request runs carries
/// its request id.
/// What the per-request envelope needs.
struct Envelope {
    metrics: Arc<Metrics>,
    proxies: client_address::TrustedProxies,
    request_timeout: Duration,
}

/// Every request's envelope, outermost first: its id and span, the access log line and the
/// HTTP metrics; the client's address (`--trusted-proxies`); the `--request-timeout` deadline;
/// and the draining of a body the handler left unread ([`body::drain_unread`]). One
/// middleware rather than one each, because each `from_fn` layer clones and boxes the inner
/// service and boxes a future per request, a measurable share of a refresh exchange's cost.
async fn envelope(
    axum::extract::State(envelope): axum::extract::State<Arc<Envelope>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request_id(&req);
    req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
    client_address::resolve(&envelope.proxies, &mut req);
    let method = req.method().clone();
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let request_id = id.to_str().unwrap_or("-");
    let span = tracing::info_span!("request", request_id);
    let answered = tokio::time::timeout(envelope.request_timeout, body::drain_unread(req, next))
        .instrument(span)
        .await;
    let mut response = answered.unwrap_or_else(|_| timed_out());
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    envelope
        .metrics
        .http
        .observe(matched.as_ref(), &method, status, elapsed);
    let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    tracing::info!(
        target: "prismd::access",
        request_id,
        %method,
        route = matched.as_ref().map_or("<unmatched>", MatchedPath::as_str),
        status,
        latency_us,
        "request"
    );
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
}
