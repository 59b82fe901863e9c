//! Prometheus metrics: the counters and histograms the server keeps, the gauges it reads at
//! scrape time (connection pools, circuit breaker, cache), and the registry that
//! `prometheus-client` encodes in the text exposition format 0.0.4 served at `/metrics`.
//!
//! Recording sits on every request's path, so it is atomics only. A request's series (route
//! template, method, status) is found under a read lock with borrowed keys and nothing is
//! allocated; only the first request of a new combination takes the write lock. Labels come
//! from closed sets (route templates of the router, a fixed list of methods, a status code,
//! fixed reasons), never from what a client sent, so no token, id, email or raw path can reach
//! a label, and the number of series stays bounded.
//!
//! The crate writes every line of the exposition (names, `_total` suffixes, escaping, `le`
//! bounds). What stays here is the storage of the request histograms: the crate's `Histogram`
//! takes a mutex per observation and its `Family` needs an owned label set per lookup, so the
//! per-request series are our atomics, handed to the encoder by a [`Collector`] at scrape time.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::domain::auth::RevokeOutcome;
use crate::domain::limits::LimitKind;
use crate::domain::{Denial, DomainError, GrantError};
use crate::store::traits::*;
use crate::store::{CacheStats, ConnectionStats};

/// The `route` label of a request no route matched (a 404), whatever its path was.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The content type of what [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency histogram's buckets, in microseconds: from half a millisecond
/// (an exchange served from the cache) to the default request timeout.
const LATENCY_BOUNDS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A label set of one fixed label (`kind`, `reason`), for the counters of closed sets.
type OneLabel = [(&'static str, &'static str); 1];

/// Per bucket (the last one is `+Inf`), how many requests fell into it and no lower one; the
/// encoder sums them up into the cumulative counts Prometheus wants.
#[derive(Debug, Default)]
struct LatencySeries {
    buckets: [AtomicU64; LATENCY_BOUNDS_MICROS.len() + 1],
    sum_nanos: AtomicU64,
}

/// One series read at scrape time.
struct LatencySnapshot {
    /// The finite buckets' upper bounds in seconds, each with its own (not cumulative) count.
    buckets: [(f64, u64); LATENCY_BOUNDS_MICROS.len()],
    /// Every request, the `+Inf` bucket included: `_count`, `+Inf` and the request counter
    /// come from this one read, so they agree even while requests are being recorded.
    count: u64,
    sum_seconds: f64,
}

impl LatencySeries {
    fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        // `le` is inclusive: the first bucket whose bound is not below the value.
        let bucket = LATENCY_BOUNDS_MICROS.partition_point(|bound| *bound < micros);
        if let Some(counter) = self.buckets.get(bucket) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self) -> LatencySnapshot {
        let mut buckets = LATENCY_BOUNDS_MICROS.map(|bound| (bound as f64 / 1e6, 0));
        let mut count = 0u64;
        for (i, counter) in self.buckets.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            count = count.saturating_add(n);
            if let Some((_, slot)) = buckets.get_mut(i) {
                *slot = n;
            }
        }
        // Precision loss only past 2^53 ns (104 days of summed latency), harmless for a rate.
        let sum_seconds = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        LatencySnapshot {
            buckets,
            count,
            sum_seconds,
        }
    }
}

/// Series of one route, by method label and status code.
type RouteSeries = HashMap<(&'static str, u16), LatencySeries>;

/// The labels of a request's series, in the order they are written.
#[derive(
    Clone, PartialEq, Eq, PartialOrd, Ord, Hash, prometheus_client::encoding::EncodeLabelSet,
)]
struct HttpLabels {
    route: String,
    method: &'static str,
    status: u16,
}

/// Requests answered, by route template, method and status, with their latency.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    routes: RwLock<HashMap<Box<str>, RouteSeries>>,
}

impl HttpMetrics {
    /// Records one answered request. Taking the router's [`MatchedPath`] (not a string) is
    /// what keeps raw paths out of the labels.
    pub fn observe(
        &self,
        route: Option<&MatchedPath>,
        method: &Method,
        status: u16,
        elapsed: Duration,
    ) {
        let route = route.map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
        self.observe_route(route, method_label(method), status, elapsed);
    }

    fn observe_route(&self, route: &str, method: &'static str, status: u16, elapsed: Duration) {
        {
            let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = routes.get(route).and_then(|r| r.get(&(method, status))) {
                series.observe(elapsed);
                return;
            }
        }
        // First request of this combination: the one time this series allocates.
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        routes
            .entry(route.into())
            .or_default()
            .entry((method, status))
            .or_default()
            .observe(elapsed);
    }

    /// Every series, sorted so scrapes are stable and readable; the lock is held only while
    /// copying.
    fn snapshot(&self) -> Vec<(HttpLabels, LatencySnapshot)> {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        let mut series: Vec<_> = routes
            .iter()
            .flat_map(|(route, by_method)| {
                by_method.iter().map(|((method, status), latency)| {
                    let labels = HttpLabels {
                        route: route.to_string(),
                        method,
                        status: *status,
                    };
                    (labels, latency.snapshot())
                })
            })
            .collect();
        drop(routes);
        series.sort_by(|a, b| a.0.cmp(&b.0));
        series
    }
}

impl Collector for HttpMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let series = self.snapshot();
        // Both families are written even before the first request, as they always were.
        let mut requests = encoder.encode_descriptor(
            "prismd_http_requests",
            "Requests answered, by route template, method and status.",
            None,
            MetricType::Counter,
        )?;
        for (labels, latency) in &series {
            ConstCounter::new(latency.count).encode(requests.encode_family(labels)?)?;
        }
        let mut durations = encoder.encode_descriptor(
            "prismd_http_request_duration_seconds",
            "Time from receiving a request to its response, by route template, method and status.",
            None,
            MetricType::Histogram,
        )?;
        for (labels, latency) in &series {
            durations
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(
                    latency.sum_seconds,
                    latency.count,
                    &latency.buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

/// The method label: the standard methods by name, anything else (a client may send any
/// token as a method) as `other`, so clients cannot create series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Why a refresh-token exchange was refused, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshFailure {
    Malformed,
    Unknown,
    Revoked,
    /// The organization's session policy (idle expiry or maximum age) ended the session.
    ExpiredSession,
    /// The token's own expiry passed.
    ExpiredToken,
    /// A `scope` the token does not hold, or a restricted token whose scopes its principal
    /// holds none of any more.
    InvalidScope,
    UserRemoved,
    /// A `tenant_id` the token's user is not a member of.
    WrongTenant,
    /// The database failed or the circuit is open (503).
    Unavailable,
    /// Anything else (signing or randomness failed).
    Other,
}

impl RefreshFailure {
    const ALL: [RefreshFailure; 10] = [
        Self::Malformed,
        Self::Unknown,
        Self::Revoked,
        Self::ExpiredSession,
        Self::ExpiredToken,
        Self::InvalidScope,
        Self::UserRemoved,
        Self::WrongTenant,
        Self::Unavailable,
        Self::Other,
    ];

    pub fn of(err: &DomainError) -> Self {
        match err {
            DomainError::InvalidGrant(GrantError::Malformed(_)) => Self::Malformed,
            DomainError::InvalidGrant(GrantError::Unknown) => Self::Unknown,
            DomainError::InvalidGrant(GrantError::Denied(Denial::Revoked)) => Self::Revoked,
            DomainError::InvalidGrant(GrantError::Denied(Denial::Expired)) => Self::ExpiredSession,
            DomainError::InvalidGrant(GrantError::Denied(Denial::UserRemoved)) => Self::UserRemoved,
            DomainError::InvalidGrant(GrantError::Denied(Denial::TokenExpired(_))) => {
                Self::ExpiredToken
            }
            DomainError::InvalidScope(_) => Self::InvalidScope,
            DomainError::AccessDenied(_) => Self::WrongTenant,
            DomainError::Unavailable(_) => Self::Unavailable,
            _ => Self::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Revoked => "revoked",
            Self::ExpiredSession => "expired_session",
            Self::ExpiredToken => "expired_token",
            Self::InvalidScope => "invalid_scope",
            Self::UserRemoved => "user_removed",
            Self::WrongTenant => "wrong_tenant",
            Self::Unavailable => "unavailable",
            Self::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which revoke endpoint revoked something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationKind {
    /// `/auth/revoke`: every token of the user.
    All,
    /// `/oauth/revoke`: one session.
    One,
}

/// A labelled counter family with every series of its closed set created up front, so each
/// shows 0 from the first scrape; returns the series' handles (they share the family's
/// atomics), so recording is one atomic addition without a lookup.
fn closed_family<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: [&'static str; N],
) -> [Counter; N] {
    let family = Family::<OneLabel, Counter>::default();
    let counters = values.map(|value| family.get_or_create_owned(&[(label, value)]));
    registry.register(name, help, family);
    counters
}

/// A counter without labels, registered.
fn plain_counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

// Names passed to `Registry::register` leave out what the encoder adds (`_total` of a counter,
// `_info` of an info metric), and help texts their final period, which the registry appends.

/// What happened to tokens.
pub struct TokenMetrics {
    minted: Counter,
    refreshed: Counter,
    refresh_failures: [Counter; RefreshFailure::ALL.len()],
    revoked_all: Counter,
    revoked_one: Counter,
    /// OIDC token exchanges (keyless CI), by outcome (in [`EXCHANGE_OUTCOMES`]' order).
    exchanges: [Counter; EXCHANGE_OUTCOMES.len()],
}

/// The outcomes of an OIDC token exchange: issued, or why not.
const EXCHANGE_OUTCOMES: [&str; 6] = [
    "issued",
    "invalid_token",
    "untrusted",
    "replayed",
    "issuer_unavailable",
    "other",
];

impl TokenMetrics {
    fn register(registry: &mut Registry) -> Self {
        let minted = plain_counter(
            registry,
            "prismd_tokens_minted",
            "Refresh tokens minted by this process (browser login, device authorization)",
        );
        let refreshed = plain_counter(
            registry,
            "prismd_tokens_refreshed",
            "Refresh-token exchanges answered with an access token",
        );
        let [revoked_all, revoked_one] = closed_family(
            registry,
            "prismd_tokens_revoked",
            "Revoke requests that revoked something: kind=all (every token of a user) or one (a session)",
            "kind",
            ["all", "one"],
        );
        let refresh_failures = closed_family(
            registry,
            "prismd_refresh_failures",
            "Refresh-token exchanges refused, by reason",
            "reason",
            RefreshFailure::ALL.map(RefreshFailure::label),
        );
        let exchanges = closed_family(
            registry,
            "prismd_oidc_exchanges",
            "OIDC token exchanges (keyless CI), by outcome: issued, or why not",
            "outcome",
            EXCHANGE_OUTCOMES,
        );
        Self {
            minted,
            refreshed,
            refresh_failures,
            revoked_all,
            revoked_one,
            exchanges,
        }
    }

    /// Counts the outcome of an OIDC token exchange.
    pub fn exchange<T>(&self, outcome: &Result<T, DomainError>) {
        use crate::domain::trust::SubjectTokenError;
        let index = match outcome {
            Ok(_) => 0,
            Err(DomainError::SubjectToken(SubjectTokenError::Invalid(_))) => 1,
            Err(DomainError::SubjectToken(SubjectTokenError::Untrusted(_))) => 2,
            Err(DomainError::SubjectToken(SubjectTokenError::Replayed(_))) => 3,
            Err(DomainError::SubjectToken(SubjectTokenError::IssuerUnavailable(_))) => 4,
            Err(_) => 5,
        };
        if let Some(counter) = self.exchanges.get(index) {
            counter.inc();
        }
    }

    /// A refresh token was minted (by a browser login or a device authorization).
    pub fn minted(&self) {
        self.minted.inc();
    }

    /// Counts the outcome of a client's refresh-token exchange.
    pub fn refresh<T>(&self, outcome: &Result<T, DomainError>) {
        let counter = match outcome {
            Ok(_) => Some(&self.refreshed),
            Err(err) => self.refresh_failures.get(RefreshFailure::of(err).index()),
        };
        if let Some(counter) = counter {
            counter.inc();
        }
    }

    /// Counts a revoke request, if it revoked anything.
    pub fn revoke(&self, kind: RevocationKind, outcome: RevokeOutcome) {
        if outcome != RevokeOutcome::Revoked {
            return;
        }
        match kind {
            RevocationKind::All => self.revoked_all.inc(),
            RevocationKind::One => self.revoked_one.inc(),
        };
    }
}

/// The limits in the order of [`Metrics::limit_index`].
const LIMIT_KINDS: [LimitKind; 8] = [
    LimitKind::LoginAccount,
    LimitKind::LoginAddress,
    LimitKind::RefreshAddress,
    LimitKind::DeviceAddress,
    LimitKind::ResetAccount,
    LimitKind::ResetAddress,
    LimitKind::DeviceStartAddress,
    LimitKind::LoginDevice,
];

/// The main listener's connections (`--max-connections`).
#[derive(Clone, Default)]
pub struct ConnectionGauges {
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed at once because the cap was reached.
    pub refused: Counter,
}

/// Everything `/metrics` shows: what the server counts, and where it reads the gauges from.
pub struct Metrics {
    pub http: Arc<HttpMetrics>,
    pub tokens: TokenMetrics,
    /// Requests refused with 429 by an abuse limit, by [`LimitKind`] (in its order).
    limit_refusals: [Counter; LIMIT_KINDS.len()],
    /// `/auth/verify` answers, by [`ForwardAuthOutcome`] (in its order).
    forward_auth: [Counter; ForwardAuthOutcome::ALL.len()],
    /// `/oauth/introspect` answers, by [`IntrospectionOutcome`] (in its order).
    introspection: [Counter; IntrospectionOutcome::ALL.len()],
    /// The main listener's open and refused connections.
    pub connections: ConnectionGauges,
    /// `/api` requests refused by the per-caller rate limit.
    api_rate_limited: Counter,
    registry: Registry,
}

/// What `/oauth/introspect` answered a resource server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionOutcome {
    /// `active: true`.
    Active,
    /// `active: false`.
    Inactive,
    /// 401: the resource server did not authenticate.
    InvalidClient,
    /// Anything else (a malformed request, the database unavailable).
    Other,
}

impl IntrospectionOutcome {
    const ALL: [IntrospectionOutcome; 4] = [
        Self::Active,
        Self::Inactive,
        Self::InvalidClient,
        Self::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::InvalidClient => "invalid_client",
            Self::Other => "other",
        }
    }
}

/// What `/auth/verify` answered a reverse proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardAuthOutcome {
    /// 200: the request goes through.
    Allowed,
    /// 401: no token, or one that does not stand.
    Refused,
    /// 403: the token stands but lacks a required scope.
    InsufficientScope,
    /// Anything else (a malformed required scope, the database unavailable).
    Other,
}

impl ForwardAuthOutcome {
    const ALL: [ForwardAuthOutcome; 4] = [
        Self::Allowed,
        Self::Refused,
        Self::InsufficientScope,
        Self::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused => "refused",
            Self::InsufficientScope => "insufficient_scope",
            Self::Other => "other",
        }
    }
}

/// Counts `outcome` in the counter at its place in `all` (the last, "other", if absent).
fn count_outcome<T: PartialEq>(counters: &[Counter], all: &[T], outcome: T) {
    let index = all
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or(all.len().saturating_sub(1));
    if let Some(counter) = counters.get(index) {
        counter.inc();
    }
}

impl Metrics {
    /// The metrics of a server on `store`, whose connection pools, breaker and cache (when
    /// on) are read at each scrape.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::reading(move || (store.connection_stats(), store.cache().map(|c| c.stats())))
    }

    /// The metrics, with the store's and cache's counters read from `stats` at each scrape.
    fn reading(
        stats: impl Fn() -> (ConnectionStats, Option<CacheStats>) + Send + Sync + 'static,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "prismd_build",
            "Always 1; the version label says which prismd this is",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        let tokens = TokenMetrics::register(&mut registry);
        let limit_refusals = closed_family(
            &mut registry,
            "prismd_limit_refusals",
            "Requests refused with 429 by an abuse limit (failed logins, device codes, refresh tokens)",
            "kind",
            LIMIT_KINDS.map(LimitKind::label),
        );
        let forward_auth = closed_family(
            &mut registry,
            "prismd_forward_auth",
            "Forward-auth answers to reverse proxies (/auth/verify), by outcome",
            "outcome",
            ForwardAuthOutcome::ALL.map(ForwardAuthOutcome::label),
        );
        let introspection = closed_family(
            &mut registry,
            "prismd_introspections",
            "Token introspection answers to resource servers (/oauth/introspect), by outcome",
            "outcome",
            IntrospectionOutcome::ALL.map(IntrospectionOutcome::label),
        );
        let api_rate_limited = plain_counter(
            &mut registry,
            "prismd_api_rate_limited",
            "/api requests answered 429 by the per-caller rate limit (--api-rate-limit)",
        );
        let connections = ConnectionGauges::default();
        registry.register(
            "prismd_http_connections_open",
            "Connections open on the main listener",
            connections.open.clone(),
        );
        registry.register(
            "prismd_http_connections_refused",
            "Connections closed as soon as they were accepted because --max-connections were open",
            connections.refused.clone(),
        );
        let http = Arc::new(HttpMetrics::default());
        registry.register_collector(Box::new(http.clone()));
        registry.register_collector(Box::new(ScrapeTime {
            stats: Box::new(stats),
        }));
        Self {
            http,
            tokens,
            limit_refusals,
            forward_auth,
            introspection,
            connections,
            api_rate_limited,
            registry,
        }
    }

    /// Counts an answer of `/auth/verify`.
    pub fn forward_auth(&self, outcome: ForwardAuthOutcome) {
        count_outcome(&self.forward_auth, &ForwardAuthOutcome::ALL, outcome);
    }

    /// Counts an answer of `/oauth/introspect`.
    pub fn introspection(&self, outcome: IntrospectionOutcome) {
        count_outcome(&self.introspection, &IntrospectionOutcome::ALL, outcome);
    }

    /// Counts an `/api` request the per-caller rate limit refused.
    pub fn api_rate_limited(&self) {
        self.api_rate_limited.inc();
    }

    /// Counts a request an abuse limit refused.
    pub fn limit_trip(&self, kind: LimitKind) {
        self.limit_refusals[Self::limit_index(kind)].inc();
    }

    fn limit_index(kind: LimitKind) -> usize {
        match kind {
            LimitKind::LoginAccount => 0,
            LimitKind::LoginAddress => 1,
            LimitKind::RefreshAddress => 2,
            LimitKind::DeviceAddress => 3,
            LimitKind::ResetAccount => 4,
            LimitKind::ResetAddress => 5,
            LimitKind::DeviceStartAddress => 6,
            LimitKind::LoginDevice => 7,
        }
    }

    /// The text exposition format ([`CONTENT_TYPE`]). Writing to a string fails only if an
    /// encoder does, which would be a bug, not a state of the server.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The families read from the store and the cache at each scrape: they keep their own
/// counts, so nothing is copied between scrapes.
struct ScrapeTime {
    /// The connection stats, and the cache's (`None` when it is off, `--cache-ttl 0s`: its
    /// families are then left out). Read in memory, never from the database, so a scrape
    /// works during an outage.
    stats: Box<StatsSource>,
}

type StatsSource = dyn Fn() -> (ConnectionStats, Option<CacheStats>) + Send + Sync;

impl fmt::Debug for ScrapeTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrapeTime").finish_non_exhaustive()
    }
}

impl Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let (stats, cache) = (self.stats)();
        let mut connections = encoder.encode_descriptor(
            "prismd_db_pool_connections",
            "Open database connections by pool, idle or in use.",
            None,
            MetricType::Gauge,
        )?;
        for pool in &stats.pools {
            let in_use = pool.open.saturating_sub(pool.idle);
            for (state, value) in [("idle", pool.idle), ("in_use", in_use)] {
                let labels = [("pool", pool.pool), ("state", state)];
                ConstGauge::new(value).encode(connections.encode_family(&labels)?)?;
            }
        }
        let mut max = encoder.encode_descriptor(
            "prismd_db_pool_max_connections",
            "Most connections each database pool opens.",
            None,
            MetricType::Gauge,
        )?;
        for pool in &stats.pools {
            ConstGauge::new(pool.max).encode(max.encode_family(&[("pool", pool.pool)])?)?;
        }
        if let Some(circuit) = stats.circuit {
            ConstGauge::new(u32::from(circuit.open)).encode(encoder.encode_descriptor(
                "prismd_db_circuit_open",
                "1 while the database circuit breaker is open (requests fail fast with 503).",
                None,
                MetricType::Gauge,
            )?)?;
            const_counter(
                &mut encoder,
                "prismd_db_circuit_rejections",
                "Requests the open circuit breaker answered with 503 at once, without asking the database.",
                circuit.rejections,
            )?;
        }
        if let Some(cache) = cache {
            const_counter(
                &mut encoder,
                "prismd_cache_hits",
                "Hot-path reads (refresh grant, access-token principal) answered from the cache.",
                cache.hits,
            )?;
            const_counter(
                &mut encoder,
                "prismd_cache_misses",
                "Hot-path reads that went to the database.",
                cache.misses,
            )?;
            const_counter(
                &mut encoder,
                "prismd_cache_invalidations",
                "Cache invalidations (a user's standing changed, or everything was dropped).",
                cache.invalidations,
            )?;
        }
        Ok(())
    }
}

/// An unlabelled counter read at scrape time; the encoder appends `_total` to `name`.
fn const_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> fmt::Result {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    /// The exposition of a registry holding only `http`.
    fn render_http(http: HttpMetrics) -> Result<String, fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(http));
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry)?;
        Ok(out)
    }

    #[test]
    fn label_values_are_escaped() -> Result<(), fmt::Error> {
        let http = HttpMetrics::default();
        http.observe_route("/a\\b\"c\nd", "GET", 200, Duration::from_millis(1));
        let out = render_http(http)?;
        let expected =
            r#"prismd_http_requests_total{route="/a\\b\"c\nd",method="GET",status="200"} 1"#;
        assert!(out.lines().any(|l| l == expected), "{expected} in\n{out}");
        Ok(())
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inclusive_bounds() -> Result<(), fmt::Error> {
        let http = HttpMetrics::default();
        for micros in [100, 500, 501, 3_000, 20_000_000] {
            http.observe_route("/auth/refresh", "POST", 200, Duration::from_micros(micros));
        }
        http.observe_route(UNMATCHED_ROUTE, "GET", 404, Duration::from_millis(1));
        let out = render_http(http)?;

        let labels = r#"route="/auth/refresh",method="POST",status="200""#;
        let bucket = |le: &str| {
            format!("prismd_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} ")
        };
        let value = |prefix: &str| -> Option<String> {
            out.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::to_owned)
        };
        assert_eq!(value(&bucket("0.0005")).as_deref(), Some("2"), "{out}");
        assert_eq!(value(&bucket("0.001")).as_deref(), Some("3"));
        assert_eq!(value(&bucket("0.005")).as_deref(), Some("4"));
        assert_eq!(value(&bucket("10")).as_deref(), Some("4"));
        assert_eq!(value(&bucket("+Inf")).as_deref(), Some("5"));
        assert_eq!(
            value(&format!(
                "prismd_http_request_duration_seconds_count{{{labels}}} "
            ))
            .as_deref(),
            Some("5")
        );
        assert_eq!(
            value(&format!("prismd_http_requests_total{{{labels}}} ")).as_deref(),
            Some("5")
        );
        let sum = value(&format!(
            "prismd_http_request_duration_seconds_sum{{{labels}}} "
        ));
        assert_eq!(sum.as_deref(), Some("20.004101"));
        assert_eq!(
            value(r#"prismd_http_requests_total{route="unmatched",method="GET",status="404"} "#)
                .as_deref(),
            Some("1")
        );

        // One HELP and one TYPE per family, before its samples.
        assert_eq!(
            lines_of(&out, "# TYPE prismd_http_request_duration_seconds "),
            vec!["# TYPE prismd_http_request_duration_seconds histogram"]
        );
        assert_eq!(
            lines_of(&out, "# HELP prismd_http_requests_total ").len(),
            1
        );
        // Buckets rise monotonically per series, in the order of their bounds.
        let le: Vec<&str> = lines_of(
            &out,
            "prismd_http_request_duration_seconds_bucket{route=\"/auth/refresh\"",
        )
        .iter()
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
        .collect();
        let mut expected: Vec<String> = LATENCY_BOUNDS_MICROS
            .iter()
            .map(|b| (*b as f64 / 1e6).to_string())
            .collect();
        expected.push("+Inf".into());
        assert_eq!(le, expected);
        let counts: Vec<u64> = lines_of(
            &out,
            "prismd_http_request_duration_seconds_bucket{route=\"/auth/refresh\"",
        )
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
        assert_eq!(counts.len(), LATENCY_BOUNDS_MICROS.len() + 1);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        Ok(())
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let custom = Method::from_bytes(b"SECRETTOKEN");
        assert!(custom.is_ok());
        if let Ok(method) = custom {
            assert_eq!(method_label(&method), "other");
        }
        assert_eq!(method_label(&Method::POST), "POST");
    }

    #[test]
    fn token_counters_start_at_zero_and_count_only_real_revocations() -> Result<(), fmt::Error> {
        let mut registry = Registry::default();
        let tokens = TokenMetrics::register(&mut registry);
        tokens.refresh::<()>(&Ok(()));
        tokens.refresh::<()>(&Err(DomainError::InvalidGrant(GrantError::Unknown)));
        tokens.refresh::<()>(&Err(DomainError::AccessDenied("x".into())));
        tokens.revoke(RevocationKind::All, RevokeOutcome::NothingToRevoke);
        tokens.revoke(RevocationKind::One, RevokeOutcome::Revoked);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry)?;
        for expected in [
            "prismd_tokens_minted_total 0",
            "prismd_tokens_refreshed_total 1",
            "prismd_tokens_revoked_total{kind=\"all\"} 0",
            "prismd_tokens_revoked_total{kind=\"one\"} 1",
            "prismd_refresh_failures_total{reason=\"unknown\"} 1",
            "prismd_refresh_failures_total{reason=\"wrong_tenant\"} 1",
            "prismd_refresh_failures_total{reason=\"malformed\"} 0",
            "prismd_refresh_failures_total{reason=\"other\"} 0",
        ] {
            assert!(out.lines().any(|l| l == expected), "{expected} in\n{out}");
        }
        Ok(())
    }

    /// What recording costs, printed rather than asserted (the machine decides the numbers):
    /// `cargo test --release -p prismd --lib recording_cost -- --ignored --nocapture`. Next to
    /// our request series it times the crate's own `Family` of `Histogram`s, the design not
    /// taken, and a plain atomic counter against the crate's `Counter`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn recording_cost() {
        use prometheus_client::metrics::histogram::Histogram;
        use std::hint::black_box;
        use std::time::Instant;

        const N: u32 = 10_000_000;
        let per_op = |started: Instant| started.elapsed().as_nanos() as f64 / f64::from(N);
        let elapsed = |i: u32| Duration::from_micros(u64::from(i % 3_000));

        let http = HttpMetrics::default();
        let started = Instant::now();
        for i in 0..N {
            http.observe_route(black_box("/auth/refresh"), "POST", 200, elapsed(i));
        }
        println!("request series (atomics):    {:6.1} ns", per_op(started));

        let bounds = LATENCY_BOUNDS_MICROS.map(|b| b as f64 / 1e6);
        let counters = Family::<HttpLabels, Counter>::default();
        let histograms = Family::<HttpLabels, Histogram, _>::new_with_constructor(move || {
            Histogram::new(bounds)
        });
        let started = Instant::now();
        for i in 0..N {
            // The crate's families look up by an owned label set: one allocation per request.
            let labels = HttpLabels {
                route: black_box("/auth/refresh").to_owned(),
                method: "POST",
                status: 200,
            };
            counters.get_or_create(&labels).inc();
            histograms
                .get_or_create(&labels)
                .observe(elapsed(i).as_secs_f64());
        }
        println!("crate Family<Histogram>:     {:6.1} ns", per_op(started));

        let atomic = AtomicU64::new(0);
        let started = Instant::now();
        for _ in 0..N {
            black_box(&atomic).fetch_add(1, Ordering::Relaxed);
        }
        println!("AtomicU64 (old counters):    {:6.1} ns", per_op(started));
        let counter = Counter::<u64>::default();
        let started = Instant::now();
        for _ in 0..N {
            black_box(&counter).inc();
        }
        println!("crate Counter (new):         {:6.1} ns", per_op(started));
    }

    /// Every family's `# HELP` and `# TYPE` line, byte for byte as the hand-written encoder
    /// of before wrote them: dashboards and alerts depend on the names.
    #[tokio::test]
    async fn every_family_keeps_its_name_type_and_help() -> Result<(), Box<dyn std::error::Error>> {
        use crate::store::{CircuitStats, PoolStats};
        // A pool, a breaker (PostgreSQL's) and a cache, so that every family is there.
        let metrics = Metrics::reading(|| {
            let pool = PoolStats {
                pool: "postgres",
                open: 1,
                idle: 1,
                max: 10,
            };
            let connections = ConnectionStats {
                pools: vec![pool],
                circuit: Some(CircuitStats::default()),
            };
            (connections, Some(CacheStats::default()))
        });
        metrics.limit_trip(LimitKind::DeviceAddress);
        let out = metrics.render()?;

        let families: Vec<&str> = out.lines().filter(|l| l.starts_with("# ")).collect();
        assert_eq!(
            families,
            [
                "# HELP prismd_build_info Always 1; the version label says which prismd this is.",
                "# TYPE prismd_build_info gauge",
                "# HELP prismd_tokens_minted_total Refresh tokens minted by this process (browser login, device authorization).",
                "# TYPE prismd_tokens_minted_total counter",
                "# HELP prismd_tokens_refreshed_total Refresh-token exchanges answered with an access token.",
                "# TYPE prismd_tokens_refreshed_total counter",
                "# HELP prismd_tokens_revoked_total Revoke requests that revoked something: kind=all (every token of a user) or one (a session).",
                "# TYPE prismd_tokens_revoked_total counter",
                "# HELP prismd_refresh_failures_total Refresh-token exchanges refused, by reason.",
                "# TYPE prismd_refresh_failures_total counter",
                "# HELP prismd_oidc_exchanges_total OIDC token exchanges (keyless CI), by outcome: issued, or why not.",
                "# TYPE prismd_oidc_exchanges_total counter",
                "# HELP prismd_limit_refusals_total Requests refused with 429 by an abuse limit (failed logins, device codes, refresh tokens).",
                "# TYPE prismd_limit_refusals_total counter",
                "# HELP prismd_forward_auth_total Forward-auth answers to reverse proxies (/auth/verify), by outcome.",
                "# TYPE prismd_forward_auth_total counter",
                "# HELP prismd_introspections_total Token introspection answers to resource servers (/oauth/introspect), by outcome.",
                "# TYPE prismd_introspections_total counter",
                "# HELP prismd_api_rate_limited_total /api requests answered 429 by the per-caller rate limit (--api-rate-limit).",
                "# TYPE prismd_api_rate_limited_total counter",
                "# HELP prismd_http_connections_open Connections open on the main listener.",
                "# TYPE prismd_http_connections_open gauge",
                "# HELP prismd_http_connections_refused_total Connections closed as soon as they were accepted because --max-connections were open.",
                "# TYPE prismd_http_connections_refused_total counter",
                "# HELP prismd_http_requests_total Requests answered, by route template, method and status.",
                "# TYPE prismd_http_requests_total counter",
                "# HELP prismd_http_request_duration_seconds Time from receiving a request to its response, by route template, method and status.",
                "# TYPE prismd_http_request_duration_seconds histogram",
                "# HELP prismd_db_pool_connections Open database connections by pool, idle or in use.",
                "# TYPE prismd_db_pool_connections gauge",
                "# HELP prismd_db_pool_max_connections Most connections each database pool opens.",
                "# TYPE prismd_db_pool_max_connections gauge",
                "# HELP prismd_db_circuit_open 1 while the database circuit breaker is open (requests fail fast with 503).",
                "# TYPE prismd_db_circuit_open gauge",
                "# HELP prismd_db_circuit_rejections_total Requests the open circuit breaker answered with 503 at once, without asking the database.",
                "# TYPE prismd_db_circuit_rejections_total counter",
                "# HELP prismd_cache_hits_total Hot-path reads (refresh grant, access-token principal) answered from the cache.",
                "# TYPE prismd_cache_hits_total counter",
                "# HELP prismd_cache_misses_total Hot-path reads that went to the database.",
                "# TYPE prismd_cache_misses_total counter",
                "# HELP prismd_cache_invalidations_total Cache invalidations (a user's standing changed, or everything was dropped).",
                "# TYPE prismd_cache_invalidations_total counter",
            ]
        );
        for expected in [
            "prismd_build_info{version=\"0.1.0\"} 1",
            "prismd_limit_refusals_total{kind=\"device_address\"} 1",
            "prismd_limit_refusals_total{kind=\"login_account\"} 0",
            "prismd_limit_refusals_total{kind=\"login_device\"} 0",
            "prismd_api_rate_limited_total 0",
            "prismd_http_connections_open 0",
            "prismd_db_pool_max_connections{pool=\"postgres\"} 10",
            "prismd_db_pool_connections{pool=\"postgres\",state=\"idle\"} 1",
            "prismd_db_pool_connections{pool=\"postgres\",state=\"in_use\"} 0",
            "prismd_db_circuit_open 0",
            "prismd_db_circuit_rejections_total 0",
            "prismd_cache_hits_total 0",
        ] {
            assert!(
                out.lines().any(|l| l.starts_with(expected)),
                "{expected} in\n{out}"
            );
        }
        Ok(())
    }
}
