//! Prometheus metrics: the counters and histograms the server keeps, the gauges it reads at
//! scrape time (connection pools, circuit breaker, cache), and their rendering in the text
//! exposition format 0.0.4 served at `/metrics`.
//!
//! Recording sits on every request's path, so it is atomics only. A request's series (route
//! template, method, status) is found under a read lock with borrowed keys and nothing is
//! allocated; only the first request of a new combination takes the write lock. Labels come
//! from closed sets (route templates of the router, a fixed list of methods, a status code,
//! fixed reasons), never from what a client sent, so no token, id, email or raw path can reach
//! a label, and the number of series stays bounded.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::Method;

use crate::domain::auth::RevokeOutcome;
use crate::domain::limits::LimitKind;
use crate::domain::{Denial, DomainError, GrantError};
use crate::store::traits::*;

/// The `route` label of a request no route matched (a 404), whatever its path was.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Upper bounds of the latency histogram's buckets, in microseconds: from half a millisecond
/// (an exchange served from the cache) to the default request timeout.
const LATENCY_BOUNDS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Per bucket (the last one is `+Inf`), how many requests fell into it and no lower one; the
/// cumulative counts Prometheus wants are summed up at scrape time.
#[derive(Default)]
struct LatencySeries {
    buckets: [AtomicU64; LATENCY_BOUNDS_MICROS.len() + 1],
    sum_nanos: AtomicU64,
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

    /// Cumulative bucket counts, the last being the total; read once, so `_count` always
    /// equals the `+Inf` bucket even while requests are being recorded.
    fn cumulative(&self) -> [u64; LATENCY_BOUNDS_MICROS.len() + 1] {
        let mut total = 0u64;
        let mut out = [0u64; LATENCY_BOUNDS_MICROS.len() + 1];
        for (slot, counter) in out.iter_mut().zip(&self.buckets) {
            total = total.saturating_add(counter.load(Ordering::Relaxed));
            *slot = total;
        }
        out
    }

    fn sum_seconds(&self) -> f64 {
        // Precision loss only past 2^53 ns (104 days of summed latency), harmless for a rate.
        let nanos = self.sum_nanos.load(Ordering::Relaxed) as f64;
        nanos / 1e9
    }
}

/// Series of one route, by method label and status code.
type RouteSeries = HashMap<(&'static str, u16), LatencySeries>;

/// Requests answered, by route template, method and status, with their latency.
#[derive(Default)]
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

    fn render(&self, out: &mut String) {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        // Sorted, so scrapes are stable and readable; the lock is held only while copying.
        let mut snapshot = BTreeMap::new();
        for (route, series) in routes.iter() {
            for ((method, status), latency) in series {
                let key = (route.to_string(), *method, *status);
                snapshot.insert(key, (latency.cumulative(), latency.sum_seconds()));
            }
        }
        drop(routes);

        family(
            out,
            "prismd_http_requests_total",
            "counter",
            "Requests answered, by route template, method and status.",
        );
        for ((route, method, status), (buckets, _)) in &snapshot {
            let status = status.to_string();
            let count = buckets.last().copied().unwrap_or(0);
            sample(
                out,
                "prismd_http_requests_total",
                &[("route", route), ("method", method), ("status", &status)],
                count,
            );
        }

        family(
            out,
            "prismd_http_request_duration_seconds",
            "histogram",
            "Time from receiving a request to its response, by route template, method and status.",
        );
        for ((route, method, status), (buckets, sum)) in &snapshot {
            let status = status.to_string();
            let labels = [
                ("route", route.as_str()),
                ("method", method),
                ("status", &status),
            ];
            for (bound, count) in LATENCY_BOUNDS_MICROS.iter().zip(buckets) {
                let le = (*bound as f64 / 1e6).to_string();
                sample(
                    out,
                    "prismd_http_request_duration_seconds_bucket",
                    &[labels[0], labels[1], labels[2], ("le", &le)],
                    count,
                );
            }
            let count = buckets.last().copied().unwrap_or(0);
            sample(
                out,
                "prismd_http_request_duration_seconds_bucket",
                &[labels[0], labels[1], labels[2], ("le", "+Inf")],
                count,
            );
            sample(
                out,
                "prismd_http_request_duration_seconds_sum",
                &labels,
                sum,
            );
            sample(
                out,
                "prismd_http_request_duration_seconds_count",
                &labels,
                count,
            );
        }
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
    UserRemoved,
    /// A `tenant_id` the token's user is not a member of.
    WrongTenant,
    /// The database failed or the circuit is open (503).
    Unavailable,
    /// Anything else (signing or randomness failed).
    Other,
}

impl RefreshFailure {
    const ALL: [RefreshFailure; 8] = [
        Self::Malformed,
        Self::Unknown,
        Self::Revoked,
        Self::ExpiredSession,
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

/// What happened to tokens.
#[derive(Default)]
pub struct TokenMetrics {
    minted: AtomicU64,
    refreshed: AtomicU64,
    refresh_failures: [AtomicU64; RefreshFailure::ALL.len()],
    revoked_all: AtomicU64,
    revoked_one: AtomicU64,
}

impl TokenMetrics {
    /// A refresh token was minted (by a browser login or a device authorization).
    pub fn minted(&self) {
        self.minted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the outcome of a client's refresh-token exchange.
    pub fn refresh<T>(&self, outcome: &Result<T, DomainError>) {
        let counter = match outcome {
            Ok(_) => Some(&self.refreshed),
            Err(err) => self.refresh_failures.get(RefreshFailure::of(err).index()),
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a revoke request, if it revoked anything.
    pub fn revoke(&self, kind: RevocationKind, outcome: RevokeOutcome) {
        if outcome != RevokeOutcome::Revoked {
            return;
        }
        let counter = match kind {
            RevocationKind::All => &self.revoked_all,
            RevocationKind::One => &self.revoked_one,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        counter(
            out,
            "prismd_tokens_minted_total",
            "Refresh tokens minted by this process (browser login, device authorization).",
            self.minted.load(Ordering::Relaxed),
        );
        counter(
            out,
            "prismd_tokens_refreshed_total",
            "Refresh-token exchanges answered with an access token.",
            self.refreshed.load(Ordering::Relaxed),
        );
        family(
            out,
            "prismd_tokens_revoked_total",
            "counter",
            "Revoke requests that revoked something: kind=all (every token of a user) or one (a session).",
        );
        for (kind, value) in [("all", &self.revoked_all), ("one", &self.revoked_one)] {
            sample(
                out,
                "prismd_tokens_revoked_total",
                &[("kind", kind)],
                value.load(Ordering::Relaxed),
            );
        }
        family(
            out,
            "prismd_refresh_failures_total",
            "counter",
            "Refresh-token exchanges refused, by reason.",
        );
        for (reason, value) in RefreshFailure::ALL.iter().zip(&self.refresh_failures) {
            sample(
                out,
                "prismd_refresh_failures_total",
                &[("reason", reason.label())],
                value.load(Ordering::Relaxed),
            );
        }
    }
}

/// Everything `/metrics` shows: what the server counts, and where it reads the gauges from.
pub struct Metrics {
    pub http: HttpMetrics,
    pub tokens: TokenMetrics,
    /// Requests refused with 429 by an abuse limit, by [`LimitKind`] (in its order).
    limit_refusals: [AtomicU64; 4],
    /// Its connection pools, breaker and cache (`None` when off, `--cache-ttl 0s`: its metrics
    /// are then left out) are read at scrape time.
    store: Arc<dyn Store>,
}

impl Metrics {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            http: HttpMetrics::default(),
            tokens: TokenMetrics::default(),
            limit_refusals: Default::default(),
            store,
        }
    }

    /// Counts a request an abuse limit refused.
    pub fn limit_trip(&self, kind: LimitKind) {
        self.limit_refusals[Self::limit_index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    fn limit_index(kind: LimitKind) -> usize {
        match kind {
            LimitKind::LoginAccount => 0,
            LimitKind::LoginAddress => 1,
            LimitKind::RefreshAddress => 2,
            LimitKind::DeviceAddress => 3,
        }
    }

    fn render_limits(&self, out: &mut String) {
        family(
            out,
            "prismd_limit_refusals_total",
            "counter",
            "Requests refused with 429 by an abuse limit (failed logins, device codes, refresh tokens).",
        );
        for kind in [
            LimitKind::LoginAccount,
            LimitKind::LoginAddress,
            LimitKind::RefreshAddress,
            LimitKind::DeviceAddress,
        ] {
            let value = self.limit_refusals[Self::limit_index(kind)].load(Ordering::Relaxed);
            sample(
                out,
                "prismd_limit_refusals_total",
                &[("kind", kind.label())],
                value,
            );
        }
    }

    /// The text exposition format (`text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        family(
            &mut out,
            "prismd_build_info",
            "gauge",
            "Always 1; the version label says which prismd this is.",
        );
        sample(
            &mut out,
            "prismd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        self.http.render(&mut out);
        self.tokens.render(&mut out);
        self.render_limits(&mut out);
        self.render_store(&mut out);
        out
    }

    fn render_store(&self, out: &mut String) {
        let stats = self.store.connection_stats();
        family(
            out,
            "prismd_db_pool_connections",
            "gauge",
            "Open database connections by pool, idle or in use.",
        );
        for pool in &stats.pools {
            let in_use = pool.open.saturating_sub(pool.idle);
            for (state, value) in [("idle", pool.idle), ("in_use", in_use)] {
                sample(
                    out,
                    "prismd_db_pool_connections",
                    &[("pool", pool.pool), ("state", state)],
                    value,
                );
            }
        }
        family(
            out,
            "prismd_db_pool_max_connections",
            "gauge",
            "Most connections each database pool opens.",
        );
        for pool in &stats.pools {
            sample(
                out,
                "prismd_db_pool_max_connections",
                &[("pool", pool.pool)],
                pool.max,
            );
        }
        if let Some(circuit) = stats.circuit {
            family(
                out,
                "prismd_db_circuit_open",
                "gauge",
                "1 while the database circuit breaker is open (requests fail fast with 503).",
            );
            sample(out, "prismd_db_circuit_open", &[], u8::from(circuit.open));
            counter(
                out,
                "prismd_db_circuit_rejections_total",
                "Requests the open circuit breaker answered with 503 at once, without asking the database.",
                circuit.rejections,
            );
        }
        if let Some(cache) = self.store.cache() {
            let cache = cache.stats();
            counter(
                out,
                "prismd_cache_hits_total",
                "Hot-path reads (refresh grant, access-token principal) answered from the cache.",
                cache.hits,
            );
            counter(
                out,
                "prismd_cache_misses_total",
                "Hot-path reads that went to the database.",
                cache.misses,
            );
            counter(
                out,
                "prismd_cache_invalidations_total",
                "Cache invalidations (a user's standing changed, or everything was dropped).",
                cache.invalidations,
            );
        }
    }
}

/// `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family with one unlabelled sample.
fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "counter", help);
    sample(out, name, &[], value);
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, label_value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label_value(label_value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and line feed.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Help text escapes backslash and line feed.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_label_value("/auth/{id}"), "/auth/{id}");
        assert_eq!(escape_help("x\\y\nz \"q\""), "x\\\\y\\nz \"q\"");
        let mut out = String::new();
        sample(&mut out, "m", &[("a", "x\"y"), ("b", "1")], 2);
        sample(&mut out, "n", &[], 0.25);
        assert_eq!(out, "m{a=\"x\\\"y\",b=\"1\"} 2\nn 0.25\n");
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inclusive_bounds() {
        let http = HttpMetrics::default();
        for micros in [100, 500, 501, 3_000, 20_000_000] {
            http.observe_route("/auth/refresh", "POST", 200, Duration::from_micros(micros));
        }
        http.observe_route(UNMATCHED_ROUTE, "GET", 404, Duration::from_millis(1));
        let mut out = String::new();
        http.render(&mut out);

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
        // Buckets rise monotonically per series.
        let counts: Vec<u64> = lines_of(
            &out,
            "prismd_http_request_duration_seconds_bucket{route=\"/auth/refresh\"",
        )
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
        assert_eq!(counts.len(), LATENCY_BOUNDS_MICROS.len() + 1);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
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
    fn token_counters_start_at_zero_and_count_only_real_revocations() {
        let tokens = TokenMetrics::default();
        tokens.refresh::<()>(&Ok(()));
        tokens.refresh::<()>(&Err(DomainError::InvalidGrant(GrantError::Unknown)));
        tokens.refresh::<()>(&Err(DomainError::AccessDenied("x".into())));
        tokens.revoke(RevocationKind::All, RevokeOutcome::NothingToRevoke);
        tokens.revoke(RevocationKind::One, RevokeOutcome::Revoked);
        let mut out = String::new();
        tokens.render(&mut out);
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
    }
}
