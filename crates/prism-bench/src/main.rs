//! `prism-bench`: starts a real `prismd` (release build) on a fresh data directory, seeds users
//! and refresh tokens through the server's own store, then drives each scenario at a fixed
//! concurrency for a fixed time over loopback with a minimal keep-alive HTTP/1.1 client, and
//! reports requests/s, latency percentiles, errors and the server's CPU and memory.

mod client;
mod propagation;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use prismd::domain::accounts::{self, Role, UserDraft};
use prismd::domain::{RequestMeta, auth};
use prismd::store::SqliteStore;
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Benchmark prismd's hot paths over loopback")]
struct Args {
    /// Refresh tokens to seed.
    #[arg(long, default_value_t = 10_000)]
    tokens: usize,
    /// Users the tokens are spread over.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured time per scenario.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up per scenario.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Scenarios to run, comma-separated: refresh, oauth-token, api; or `propagation` alone
    /// (two replicas on PostgreSQL; needs --database-url).
    #[arg(long, value_delimiter = ',', default_value = "refresh,oauth-token,api")]
    scenarios: Vec<String>,
    /// A PostgreSQL server where the benchmark may create (and afterwards drop) a database,
    /// e.g. postgres://postgres@127.0.0.1:5432/test.
    #[arg(long, env = "PRISM_BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Revokes the propagation scenario measures.
    #[arg(long, default_value_t = 200)]
    revokes: usize,
    /// Path of the prismd binary (default: next to this binary, built if missing).
    #[arg(long)]
    prismd: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    scenario: String,
    requests: u64,
    errors: u64,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    server_cpu_sec_per_1000: f64,
    server_peak_rss_mib: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let prismd_bin = match &args.prismd {
        Some(path) => path.clone(),
        None => locate_prismd()?,
    };
    let data_dir = std::env::temp_dir().join(format!("prism-bench-{}", std::process::id()));
    let result = if args.scenarios.iter().any(|s| s == "propagation") {
        run_propagation(&args, &prismd_bin, &data_dir).await
    } else {
        run(&args, &prismd_bin, &data_dir).await
    };
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

async fn run_propagation(args: &Args, prismd_bin: &Path, work_dir: &Path) -> anyhow::Result<()> {
    if args.scenarios.len() != 1 {
        bail!("run the propagation scenario on its own");
    }
    let url = args
        .database_url
        .as_deref()
        .context("the propagation scenario needs --database-url postgres://...")?;
    let report = propagation::run(url, prismd_bin, work_dir, args.revokes).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{:<12} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "scenario", "revokes", "missed", "p50 ms", "p99 ms", "max ms"
        );
        println!(
            "{:<12} {:>8} {:>8} {:>8.2} {:>8.2} {:>8.2}",
            "propagation",
            report.revokes,
            report.missed,
            report.p50_ms,
            report.p99_ms,
            report.max_ms
        );
    }
    if report.missed > 0 {
        bail!(
            "{} revokes did not reach the other replica in time",
            report.missed
        );
    }
    Ok(())
}

async fn run(args: &Args, prismd_bin: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let port = free_port()?;
    let address = format!("127.0.0.1:{port}");
    let mut server = ServerProcess::start(prismd_bin, data_dir, &address, &[])?;
    server.wait_ready(&address).await?;

    eprintln!(
        "seeding {} refresh tokens over {} users ...",
        args.tokens, args.users
    );
    let refresh_tokens = seed(data_dir, args.users, args.tokens).await?;
    let access_tokens = fetch_access_tokens(
        &address,
        &refresh_tokens[..args.users.min(refresh_tokens.len())],
    )
    .await?;

    let mut reports = Vec::new();
    for scenario in &args.scenarios {
        let requests: Vec<Vec<u8>> = match scenario.as_str() {
            "refresh" => refresh_tokens
                .iter()
                .map(|t| {
                    client::json_post(
                        "/auth/refresh",
                        &address,
                        None,
                        &format!(r#"{{"refresh_token":"{t}"}}"#),
                    )
                })
                .collect(),
            "oauth-token" => refresh_tokens
                .iter()
                .map(|t| {
                    client::form_post(
                        "/oauth/token",
                        &address,
                        &format!("grant_type=refresh_token&client_id=prism-cli&refresh_token={t}"),
                    )
                })
                .collect(),
            "api" => access_tokens
                .iter()
                .map(|a| {
                    client::json_post(
                        "/api",
                        &address,
                        Some(a),
                        r#"{"query":"{ authenticatedUser { id } }"}"#,
                    )
                })
                .collect(),
            other => bail!("unknown scenario {other}; use refresh, oauth-token or api"),
        };
        eprintln!(
            "{scenario}: warm-up {:?}, measuring {:?} at {} connections",
            args.warmup, args.duration, args.concurrency
        );
        drive(&address, &requests, args.concurrency, args.warmup).await?;
        let cpu_before = server.cpu_seconds()?;
        let started = Instant::now();
        let outcome = drive(&address, &requests, args.concurrency, args.duration).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = server.cpu_seconds()? - cpu_before;
        let mut latencies = outcome.latencies_us;
        latencies.sort_unstable();
        let total = latencies.len() as u64;
        reports.push(Report {
            scenario: scenario.clone(),
            requests: total,
            errors: outcome.errors,
            requests_per_sec: total as f64 / elapsed,
            p50_ms: percentile(&latencies, 0.50),
            p99_ms: percentile(&latencies, 0.99),
            p999_ms: percentile(&latencies, 0.999),
            server_cpu_sec_per_1000: if total > 0 {
                cpu * 1000.0 / total as f64
            } else {
                0.0
            },
            server_peak_rss_mib: server.peak_rss_mib()?,
        });
    }
    server.stop();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        println!(
            "{:<12} {:>10} {:>8} {:>10} {:>8} {:>8} {:>8} {:>12} {:>10}",
            "scenario",
            "requests",
            "errors",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "cpu s/1000",
            "peak MiB"
        );
        for r in &reports {
            println!(
                "{:<12} {:>10} {:>8} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>12.3} {:>10.1}",
                r.scenario,
                r.requests,
                r.errors,
                r.requests_per_sec,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.server_cpu_sec_per_1000,
                r.server_peak_rss_mib
            );
        }
    }
    if reports.iter().any(|r| r.errors > 0) {
        bail!("some requests failed; see the errors column");
    }
    Ok(())
}

fn percentile(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = ((sorted_us.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted_us[index.min(sorted_us.len() - 1)]) / 1000.0
}

struct Outcome {
    latencies_us: Vec<u32>,
    errors: u64,
}

/// Runs `concurrency` connections, each sending requests from `requests` round-robin
/// (each from its own offset) until `duration` has passed.
async fn drive(
    address: &str,
    requests: &[Vec<u8>],
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let requests = Arc::new(requests.to_vec());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..concurrency {
        let (requests, stop, address) = (requests.clone(), stop.clone(), address.to_owned());
        tasks.spawn(async move {
            let mut conn = client::Connection::open(&address).await?;
            let mut latencies = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            let mut index = connection * 7919;
            while !stop.load(Ordering::Relaxed) {
                let request = &requests[index % requests.len()];
                index += 1;
                let started = Instant::now();
                let status = conn.send(request).await?;
                latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                if status != 200 {
                    errors += 1;
                }
            }
            Ok::<_, anyhow::Error>((latencies, errors))
        });
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcome = Outcome {
        latencies_us: Vec::new(),
        errors: 0,
    };
    while let Some(joined) = tasks.join_next().await {
        let (latencies, errors) = joined??;
        outcome.latencies_us.extend(latencies);
        outcome.errors += errors;
    }
    Ok(outcome)
}

async fn seed(data_dir: &Path, users: usize, tokens: usize) -> anyhow::Result<Vec<String>> {
    let store = SqliteStore::open(data_dir, 2).await?;
    let org = accounts::default_org(&store).await?;
    let meta = RequestMeta::default();
    let mut seeded_users = Vec::with_capacity(users);
    for n in 0..users.max(1) {
        let draft = UserDraft {
            email: format!("bench{n}@example.com"),
            name: None,
            role: Role::Integrator,
            password: None,
            external_id: None,
        };
        seeded_users.push(accounts::add_user(&store, &org, draft, "bench".into(), &meta).await?);
    }
    let mut secrets = Vec::with_capacity(tokens);
    for n in 0..tokens.max(1) {
        let user = &seeded_users[n % seeded_users.len()];
        secrets.push(
            auth::mint_refresh_token(
                &store,
                user,
                auth::SessionOrigin::default(),
                "bench".into(),
                &meta,
            )
            .await?,
        );
    }
    prismd::store::Store::close(&store).await;
    Ok(secrets)
}

async fn fetch_access_tokens(
    address: &str,
    refresh_tokens: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut conn = client::Connection::open(address).await?;
    let mut out = Vec::new();
    for token in refresh_tokens {
        let request = client::json_post(
            "/auth/refresh",
            address,
            None,
            &format!(r#"{{"refresh_token":"{token}"}}"#),
        );
        let (status, body) = conn.send_and_read(&request).await?;
        if status != 200 {
            bail!("seeded token did not refresh: {status}");
        }
        let json: serde_json::Value = serde_json::from_slice(&body)?;
        out.push(
            json["access_token"]
                .as_str()
                .context("no access_token")?
                .to_owned(),
        );
    }
    Ok(out)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn locate_prismd() -> anyhow::Result<PathBuf> {
    let here = std::env::current_exe()?;
    let dir = here.parent().context("no directory for this binary")?;
    let candidate = dir.join("prismd");
    if !candidate.exists() {
        eprintln!("building prismd (release) ...");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "prismd"])
            .status()?;
        if !status.success() || !candidate.exists() {
            bail!(
                "cannot find or build {}; pass --prismd",
                candidate.display()
            );
        }
    }
    Ok(candidate)
}

struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    fn start(bin: &Path, data_dir: &Path, address: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", address])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self { child })
    }

    async fn wait_ready(&mut self, address: &str) -> anyhow::Result<()> {
        for _ in 0..300 {
            if let Ok(mut conn) = client::Connection::open(address).await {
                let request =
                    format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\n\r\n").into_bytes();
                if matches!(conn.send(&request).await, Ok(200)) {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("prismd exited during start-up: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("prismd did not become ready")
    }

    /// User + system CPU time of the server so far, from /proc.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let after_name = stat.rsplit_once(')').context("bad /proc stat")?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: f64 = fields.get(11).context("utime")?.parse::<f64>()?
            + fields.get(12).context("stime")?.parse::<f64>()?;
        Ok(ticks / 100.0)
    }

    /// Peak resident memory of the server, from /proc (VmHWM).
    fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .context("no VmHWM")?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("VmHWM value")?
            .parse()?;
        Ok(kib / 1024.0)
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
