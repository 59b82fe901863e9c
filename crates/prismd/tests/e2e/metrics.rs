//! `/metrics`: exact counts after a known sequence of requests, histograms that add up, labels
//! that are route templates and never a secret, id or raw path; the separate listener; and
//! PostgreSQL's pool and circuit gauges.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::harness::{Options, Server, TestResult, prismd, temp_dir, user_with_token};
use crate::postgres::FreshDatabase;

/// Every route template of the router, and the label of requests no route matched.
const ROUTE_LABELS: &[&str] = &[
    "/auth/refresh",
    "/auth/revoke",
    "/auth/meta",
    "/oauth/token",
    "/oauth/revoke",
    "/oauth/device/code",
    "/device",
    "/authorize",
    "/logout",
    "/invite",
    "/.well-known/jwks.json",
    "/.well-known/openid-configuration",
    "/.well-known/oauth-authorization-server",
    "/api",
    "/healthz",
    "/readyz",
    "/metrics",
    "unmatched",
];

/// A scrape, parsed: every sample line as `name{labels}` (exactly as written) to its value.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn parse(text: String) -> Result<Self, Box<dyn std::error::Error>> {
        let mut samples = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| format!("not a sample line: {line}"))?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                other => other.parse()?,
            };
            if samples.insert(series.to_owned(), value).is_some() {
                return Err(format!("series twice: {series}").into());
            }
        }
        Ok(Self { text, samples })
    }

    /// Every metric family as `(name, type)`, from the `# TYPE` lines.
    fn families(&self) -> BTreeSet<(String, String)> {
        self.text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
            .collect()
    }

    /// The value of one series; a missing series is an error, not zero.
    fn value(&self, series: &str) -> Result<f64, String> {
        self.samples
            .get(series)
            .copied()
            .ok_or_else(|| format!("no series {series} in\n{}", self.text))
    }

    /// Samples of a metric name (without labels) with their label sets.
    fn of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (Labels, f64)> + 'a {
        self.samples.iter().filter_map(move |(series, value)| {
            let labels = match series.strip_prefix(name)? {
                "" => "",
                rest => rest.strip_prefix('{')?.strip_suffix('}')?,
            };
            Some((Labels::parse(labels), *value))
        })
    }
}

/// `a="x",b="y"` as pairs, in order. Our label values contain no quotes or commas.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Labels(Vec<(String, String)>);

impl Labels {
    fn parse(text: &str) -> Self {
        Labels(
            text.split(',')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (name, value) = pair.split_once('=')?;
                    Some((name.to_owned(), value.trim_matches('"').to_owned()))
                })
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn without(&self, name: &str) -> Labels {
        Labels(self.0.iter().filter(|(n, _)| n != name).cloned().collect())
    }
}

/// The `(name, type)` pairs of the metric table in docs/operating.md: rows start with one or
/// more backquoted names (comma-separated), then the type.
fn documented_families() -> Result<BTreeSet<(String, String)>, Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operating.md");
    let doc = std::fs::read_to_string(path)?;
    let table = doc
        .split("| metric | type | labels | what |")
        .nth(1)
        .ok_or("docs/operating.md has no metric table")?;
    let mut families = BTreeSet::new();
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (names, kind) = (cells.get(1).ok_or(row)?, cells.get(2).ok_or(row)?);
        for name in names.split(',') {
            families.insert((name.trim().trim_matches('`').to_owned(), (*kind).to_owned()));
        }
    }
    Ok(families)
}

async fn scrape(server: &Server, url: &str) -> Result<Scrape, Box<dyn std::error::Error>> {
    let response = server.http.get(url).send().await?;
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    Scrape::parse(response.text().await?)
}

/// One series of a scrape of `base`'s `/metrics`, for tests about something else.
pub async fn scraped_value(
    http: &reqwest::Client,
    base: &str,
    series: &str,
) -> Result<f64, Box<dyn std::error::Error>> {
    let response = http.get(format!("{base}/metrics")).send().await?;
    if response.status().as_u16() != 200 {
        return Err(format!("/metrics answered {}", response.status()).into());
    }
    Ok(Scrape::parse(response.text().await?)?.value(series)?)
}

fn requests(route: &str, method: &str, status: u16) -> String {
    format!(r#"prismd_http_requests_total{{route="{route}",method="{method}",status="{status}"}}"#)
}

/// The claims of a JWT, unverified: only to know which ids must not show up.
fn claims(jwt: &str) -> Result<Value, Box<dyn std::error::Error>> {
    let payload = jwt.split('.').nth(1).ok_or("not a JWT")?;
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?)
}

#[tokio::test]
async fn counts_are_exact_after_a_known_sequence_and_leak_nothing() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    // Minted by the admin command, another process: not this server's mints.
    let ada = user_with_token(dir.path(), "ada@example.com")?;
    let bob = user_with_token(dir.path(), "bob@example.com")?;
    let unknown = prism_proto::token_format::generate(prism_proto::SecretKind::RefreshToken)?;
    let mut sent = 0u32;

    let mut access = String::new();
    for _ in 0..3 {
        access = server.access_token(&ada).await?;
        sent += 1;
    }
    for (token, expected) in [("not-a-token", 400), (unknown.as_str(), 400)] {
        let (status, _) = server.refresh(token).await?;
        assert_eq!(status, expected);
        sent += 1;
    }
    let (status, _) = server
        .post_json(
            "/auth/refresh",
            &json!({ "refresh_token": ada, "tenant_id": "another-tenant" }),
        )
        .await?;
    assert_eq!(status, 403);
    sent += 1;
    for _ in 0..2 {
        assert_eq!(server.whoami(&access).await?, Ok("ada@example.com".into()));
        sent += 1;
    }
    // Revoke-all revokes once; the same dead token again revokes nothing and is not counted.
    for _ in 0..2 {
        let (status, _) = server.revoke(&bob).await?;
        assert_eq!(status, 200);
        sent += 1;
    }
    let (status, _) = server.refresh(&bob).await?;
    assert_eq!(status, 400);
    sent += 1;
    // One session revoked through the OAuth endpoint.
    let response = server
        .http
        .post(server.url("/oauth/revoke"))
        .form(&[("token", ada.as_str())])
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    sent += 1;
    // No route: the raw path, holding a token, must not become a label.
    let status = server
        .http
        .get(server.url(&format!("/auth/refresh/{unknown}?email=ada@example.com")))
        .send()
        .await?
        .status()
        .as_u16();
    assert_eq!(status, 404);
    let status = server
        .http
        .delete(server.url("/no/such/endpoint"))
        .send()
        .await?
        .status()
        .as_u16();
    assert_eq!(status, 404);
    sent += 2;

    let metrics = scrape(&server, &server.url("/metrics")).await?;

    for (series, expected) in [
        ("prismd_build_info{version=\"0.1.0\"}", 1.0),
        ("prismd_tokens_minted_total", 0.0),
        ("prismd_tokens_refreshed_total", 3.0),
        ("prismd_tokens_revoked_total{kind=\"all\"}", 1.0),
        ("prismd_tokens_revoked_total{kind=\"one\"}", 1.0),
        ("prismd_refresh_failures_total{reason=\"malformed\"}", 1.0),
        ("prismd_refresh_failures_total{reason=\"unknown\"}", 1.0),
        ("prismd_refresh_failures_total{reason=\"revoked\"}", 1.0),
        (
            "prismd_refresh_failures_total{reason=\"wrong_tenant\"}",
            1.0,
        ),
        (
            "prismd_refresh_failures_total{reason=\"user_removed\"}",
            0.0,
        ),
        ("prismd_refresh_failures_total{reason=\"unavailable\"}", 0.0),
        ("prismd_refresh_failures_total{reason=\"other\"}", 0.0),
        (&requests("/auth/refresh", "POST", 200), 3.0),
        (&requests("/auth/refresh", "POST", 400), 3.0),
        (&requests("/auth/refresh", "POST", 403), 1.0),
        (&requests("/api", "POST", 200), 2.0),
        (&requests("/auth/revoke", "POST", 200), 2.0),
        (&requests("/oauth/revoke", "POST", 200), 1.0),
        (&requests("unmatched", "GET", 404), 1.0),
        (&requests("unmatched", "DELETE", 404), 1.0),
        // SQLite: one writer connection, and --db-readers (8) readers at most.
        (
            "prismd_db_pool_max_connections{pool=\"sqlite_writer\"}",
            1.0,
        ),
        (
            "prismd_db_pool_max_connections{pool=\"sqlite_readers\"}",
            8.0,
        ),
    ] {
        assert_eq!(metrics.value(series)?, expected, "{series}");
    }
    // The scrape does not count itself: it is recorded once answered.
    assert!(!metrics.text.contains("route=\"/metrics\""));

    // Every request counted once; each histogram adds up to its counter.
    let total: f64 = metrics
        .of("prismd_http_requests_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, f64::from(sent));
    let mut histograms = 0;
    for (labels, count) in metrics.of("prismd_http_request_duration_seconds_count") {
        histograms += 1;
        let route = labels.get("route").ok_or("no route label")?;
        assert!(
            ROUTE_LABELS.contains(&route),
            "not a route template: {route}"
        );
        let counter = metrics
            .of("prismd_http_requests_total")
            .find(|(l, _)| *l == labels);
        assert_eq!(counter.map(|(_, v)| v), Some(count), "{labels:?}");
        let mut buckets: Vec<(f64, f64)> = metrics
            .of("prismd_http_request_duration_seconds_bucket")
            .filter(|(l, _)| l.without("le") == labels)
            .map(|(l, v)| Ok((l.get("le").ok_or("no le")?.parse::<f64>()?, v)))
            .collect::<Result<_, Box<dyn std::error::Error>>>()?;
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(buckets.len(), 15, "{labels:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "cumulative: {buckets:?}"
        );
        assert_eq!(
            buckets.last().map(|b| (b.0, b.1)),
            Some((f64::INFINITY, count))
        );
        let sum = metrics
            .of("prismd_http_request_duration_seconds_sum")
            .find(|(l, _)| *l == labels);
        assert!(sum.is_some_and(|(_, s)| s > 0.0), "{labels:?}");
    }
    assert_eq!(histograms, metrics.of("prismd_http_requests_total").count());

    // Gauges of the pools; the cache (on by default) was used.
    let writer_open: f64 = metrics
        .of("prismd_db_pool_connections")
        .filter(|(l, _)| l.get("pool") == Some("sqlite_writer"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(writer_open, 1.0);
    for state in ["idle", "in_use"] {
        metrics.value(&format!(
            "prismd_db_pool_connections{{pool=\"sqlite_readers\",state=\"{state}\"}}"
        ))?;
    }
    assert!(
        metrics.value("prismd_cache_hits_total")? + metrics.value("prismd_cache_misses_total")?
            > 0.0
    );
    metrics.value("prismd_cache_invalidations_total")?;
    // No breaker in front of SQLite.
    assert!(!metrics.text.contains("prismd_db_circuit"));

    // No secret, id, email or raw path.
    let claims = claims(&access)?;
    let mut forbidden = vec![
        ada.clone(),
        bob.clone(),
        unknown.clone(),
        access.clone(),
        "ada@example.com".to_owned(),
        "bob@example.com".to_owned(),
        "another-tenant".to_owned(),
        "/no/such/endpoint".to_owned(),
    ];
    for claim in ["sub", "sid", "tid", "jti"] {
        forbidden.push(claims[claim].as_str().ok_or("missing claim")?.to_owned());
    }
    for secret in &forbidden {
        assert!(
            !metrics.text.contains(secret.as_str()),
            "{secret} in /metrics"
        );
    }

    // Format: one HELP and one TYPE line per family, before its samples.
    for family in [
        "prismd_http_requests_total",
        "prismd_http_request_duration_seconds",
        "prismd_refresh_failures_total",
    ] {
        assert_eq!(
            metrics
                .text
                .lines()
                .filter(|l| l.starts_with(&format!("# TYPE {family} ")))
                .count(),
            1
        );
    }
    assert!(
        metrics
            .text
            .contains("# TYPE prismd_http_request_duration_seconds histogram\n")
    );

    // The next scrape shows the first one, under its route template.
    let again = scrape(&server, &server.url("/metrics")).await?;
    assert_eq!(again.value(&requests("/metrics", "GET", 200))?, 1.0);
    Ok(())
}

#[tokio::test]
async fn a_separate_listener_serves_metrics_and_the_main_one_does_not() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start_with(
        dir.path(),
        Options {
            args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
            ..Options::default()
        },
    )?;
    let metrics_url = server
        .metrics_url
        .clone()
        .ok_or("no metrics listener logged")?;
    assert_ne!(metrics_url, server.url("/metrics"));
    assert!(
        server
            .logs()
            .contains("metrics served at http://127.0.0.1:")
    );

    let response = server.http.get(server.url("/metrics")).send().await?;
    assert_eq!(response.status().as_u16(), 404);
    let other = server
        .http
        .get(metrics_url.replace("/metrics", "/healthz"))
        .send()
        .await?;
    assert_eq!(
        other.status().as_u16(),
        404,
        "the metrics listener serves only /metrics"
    );

    let first = scrape(&server, &metrics_url).await?;
    // The main listener's 404 for /metrics is an unmatched request there.
    assert_eq!(first.value(&requests("unmatched", "GET", 404))?, 1.0);
    let second = scrape(&server, &metrics_url).await?;
    // Scrapes on their own listener are not requests of the service.
    assert!(!second.text.contains("route=\"/metrics\""));
    assert_eq!(second.value(&requests("unmatched", "GET", 404))?, 1.0);
    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn an_unusable_metrics_address_stops_the_start() -> TestResult {
    let dir = temp_dir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = taken.local_addr()?.to_string();
    let output = prismd(
        dir.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &address,
        ],
    )?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen for metrics on {address}")),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
    assert!(
        !dir.path().join("prismd.db").exists(),
        "refused before the database was created"
    );
    Ok(())
}

#[tokio::test]
async fn postgres_pool_and_circuit_gauges() -> TestResult {
    let db = FreshDatabase::create().await?;
    let outcome = postgres_gauges(&db.url).await;
    db.drop_now().await?;
    outcome
}

async fn postgres_gauges(url: &str) -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start_with(
        dir.path(),
        Options {
            args: vec![
                "--database-url".into(),
                url.into(),
                "--db-pool-size".into(),
                "4".into(),
            ],
            ..Options::default()
        },
    )?;
    let token = crate::harness::admin_ok(
        dir.path(),
        &[
            "--database-url",
            url,
            "users",
            "add",
            "--email",
            "pg@example.com",
        ],
    )
    .and_then(|_| {
        crate::harness::admin_ok(
            dir.path(),
            &[
                "--database-url",
                url,
                "tokens",
                "create",
                "--email",
                "pg@example.com",
            ],
        )
    })?;
    server.access_token(&token).await?;

    let metrics = scrape(&server, &server.url("/metrics")).await?;
    assert_eq!(
        metrics.value("prismd_db_pool_max_connections{pool=\"postgres\"}")?,
        4.0
    );
    let open: f64 = metrics
        .of("prismd_db_pool_connections")
        .filter(|(l, _)| l.get("pool") == Some("postgres"))
        .map(|(_, v)| v)
        .sum();
    assert!((1.0..=4.0).contains(&open), "{open} connections");
    assert_eq!(metrics.value("prismd_db_circuit_open")?, 0.0);
    assert_eq!(metrics.value("prismd_db_circuit_rejections_total")?, 0.0);
    // With PostgreSQL every optional family is present (breaker, cache), so this scrape is
    // the whole list the operator's reference must match.
    assert_eq!(
        documented_families()?,
        metrics.families(),
        "docs/operating.md's metric table (left) differs from what prismd exposes (right)"
    );
    assert_eq!(metrics.value("prismd_tokens_refreshed_total")?, 1.0);
    assert!(!metrics.text.contains("sqlite"));
    assert!(!metrics.text.contains(&token));
    server.stop()?;
    Ok(())
}
