//! `prism-bench`: starts a real `prismd` (release build; SQLite, or PostgreSQL with
//! `--database-url`) and, beside it, a ceiling server that does only the unavoidable work of
//! an exchange. Seeds users and refresh tokens, then drives each scenario at a fixed
//! concurrency for a fixed time over loopback with a minimal keep-alive HTTP/1.1 client, and
//! reports requests/s, latency percentiles, errors, the server's CPU and memory, and each
//! figure as a ratio to the ceiling measured in the same run. The forward-auth scenario
//! through a real nginx (`verify-nginx`) has its own ceiling, the same nginx answering without
//! asking prismd (`nginx-alone`).

mod ceiling;
mod client;
mod issuer;
mod nginx;
mod peer;
mod propagation;
mod seed;
mod server;
mod wrk;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;

use crate::server::{ServerProcess, free_port, locate_prismd};

/// prismd's allocator, so that the ceiling (this binary in its serving mode) is not slower
/// than prismd at any of the work the two share; the load generator gets it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ALL_SCENARIOS: &str = "ceiling, refresh, refresh-https, peer, oauth-token, api, verify, \
     introspect, revoke, exchange, verify-nginx, nginx-alone; or propagation alone";
/// The scenarios `run` knows.
const SCENARIOS: [&str; 12] = [
    "ceiling",
    "refresh",
    "refresh-https",
    "peer",
    "oauth-token",
    "api",
    "verify",
    "introspect",
    "revoke",
    "exchange",
    "verify-nginx",
    "nginx-alone",
];
/// The scenarios that go through nginx, and the one of them that is their ceiling.
const NGINX_SCENARIOS: [&str; 2] = ["verify-nginx", "nginx-alone"];
const NGINX_CEILING: &str = "nginx-alone";
/// The scenarios `--wrk` repeats with wrk: the refresh exchange and its ceiling and peer.
const WRK_SCENARIOS: [&str; 4] = ["ceiling", "refresh", "refresh-https", "peer"];
/// The ceiling of the rows wrk measured.
const WRK_CEILING: &str = "ceiling/wrk";
/// The `aud` of the exchange scenario's OIDC tokens, which its trust policy expects.
const EXCHANGE_AUDIENCE: &str = "prism-bench";
/// Their `sub`, which its trust policy pins (GitHub Actions' shape).
const EXCHANGE_SUBJECT: &str = "repo:bench/app:ref:refs/heads/main";

#[derive(Parser)]
#[command(about = "Benchmark prismd's hot paths over loopback")]
struct Args {
    /// Refresh tokens to seed for the exchange and API scenarios.
    #[arg(long, default_value_t = 10_000)]
    tokens: usize,
    /// Users those tokens are spread over.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// How many of the seeded tokens the exchange scenarios cycle through, spread evenly over
    /// them (default: all). `--tokens 1000000 --active 10000` is a large table used the way the
    /// default 10,000-token run uses its own.
    #[arg(long)]
    active: Option<usize>,
    /// Further users with one token each, for the revoke scenario (each revoked once).
    #[arg(long, default_value_t = 20_000)]
    revocable: usize,
    /// OIDC tokens the exchange scenario signs before it starts, each exchanged once (a
    /// quarter as many more for its warm-up).
    #[arg(long, default_value_t = 20_000)]
    exchanges: usize,
    /// The exchange scenario's issuer key: eddsa (Ed25519) or es256 (ECDSA P-256).
    #[arg(long, value_enum, default_value = "eddsa")]
    oidc_alg: issuer::Alg,
    /// The `scope` of the seeded refresh tokens, space-separated. API scope names (with a `:`)
    /// make them restricted tokens, e.g. "users:read sessions:read" (built-in scopes, checked
    /// against the role in memory) or "users:read deploy:prod" (an organization-defined scope,
    /// which the benchmark declares and grants to the seeded users' role, Integrator; the
    /// exchange reads its grants once per request).
    #[arg(long, default_value = prismd::domain::clients::DEFAULT_SCOPE)]
    token_scope: String,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured time per scenario.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up per scenario (not for revoke, whose tokens are used once).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Scenarios to run, comma-separated: ceiling, refresh, refresh-https (a second prismd on
    /// the same data, serving HTTPS with --dev-tls), oauth-token, api, verify, introspect,
    /// revoke;
    /// not by default: peer (node-oidc-provider's refresh grant; scripts/bench-peer.sh
    /// installs it), exchange, verify-nginx (through nginx, which must be installed; its
    /// ceiling nginx-alone is added before it when not named); or `propagation` alone (two
    /// replicas on PostgreSQL; needs --database-url).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ceiling,refresh,refresh-https,oauth-token,api,verify,introspect,revoke"
    )]
    scenarios: Vec<String>,
    /// Scopes the verify scenarios' route requires, space-separated API scope names: sent as
    /// `/auth/verify?scope=...` (verify) or set by nginx in `X-Prism-Required-Scope`
    /// (verify-nginx). An organization-defined one (deploy:prod) must also be in
    /// --token-scope, which declares and grants it.
    #[arg(long)]
    verify_scope: Option<String>,
    /// nginx's `worker_processes` for verify-nginx and nginx-alone: `auto` (one per core) or a
    /// number.
    #[arg(long, default_value = "auto")]
    nginx_workers: String,
    /// A PostgreSQL server where the benchmark may create (and afterwards drop) a database,
    /// e.g. postgres://postgres@127.0.0.1:5432/test. Without it, prismd runs on SQLite.
    #[arg(long, env = "PRISM_BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Revokes the propagation scenario measures.
    #[arg(long, default_value_t = 200)]
    revokes: usize,
    /// Path of the prismd binary (default: next to this binary, built if missing).
    #[arg(long)]
    prismd: Option<PathBuf>,
    /// Extra flag for `prismd serve`, repeatable, e.g. `--server-arg=--cache-capacity=2000000`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// After each scenario's closed-loop run, run it again open loop: at this fraction of the
    /// rate it just reached (e.g. 0.5), every connection sending on a fixed schedule whether or
    /// not its last answer was slow, as a row `<scenario>@<fraction>`. Its latency counts from
    /// the time a request was due, so time spent behind schedule counts against the server
    /// (no coordinated omission). Not for single-use workloads (revoke, exchange).
    #[arg(long, value_parser = parse_fraction)]
    open_loop: Option<f64>,
    /// Where scripts/bench-peer.sh installed node-oidc-provider (server.mjs and its
    /// node_modules), for the `peer` scenario.
    #[arg(
        long,
        env = "PRISM_BENCH_PEER_DIR",
        default_value = "/var/tmp/prism-peer-oidc-provider"
    )]
    peer_dir: PathBuf,
    /// Refresh tokens the peer mints for the `peer` scenario.
    #[arg(long, default_value_t = 10_000)]
    peer_tokens: usize,
    /// After prism-bench's own run of ceiling, refresh, refresh-https and peer, send the same
    /// requests with wrk (Debian's package; must be on PATH), the same connections and
    /// duration, as rows `<scenario>/wrk` whose ratios are to `ceiling/wrk`: a cross-check of
    /// this tool's own client.
    #[arg(long)]
    wrk: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Internal: serve the ceiling on this address instead of benchmarking.
    #[arg(long, hide = true)]
    serve_ceiling: Option<String>,
}

#[derive(Serialize)]
struct Report {
    scenario: String,
    backend: &'static str,
    requests: u64,
    errors: u64,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    server_cpu_sec_per_1000: f64,
    server_peak_rss_mib: f64,
    /// Heap and stacks at the end of the scenario (without mapped database pages).
    server_anon_rss_mib: f64,
    /// Mapped file pages at the end of the scenario: the binary and the database pages SQLite
    /// maps, the kernel's page cache.
    server_file_rss_mib: f64,
    /// Requests/s as a share of the ceiling's, measured in the same run.
    ratio_to_ceiling: Option<f64>,
    /// That ceiling: `ceiling`, or `nginx-alone` for the scenarios through nginx.
    ceiling: &'static str,
    /// Through nginx: nginx's share of `server_cpu_sec_per_1000` (the rest is prismd's).
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_cpu_sec_per_1000: Option<f64>,
    /// The load generator's own CPU (this process), which shares the cores with the servers.
    client_cpu_sec_per_1000: f64,
    /// Cores busy on the whole machine during the scenario (every process, the kernel's
    /// interrupt work too), and cores stolen by the hypervisor.
    machine_busy_cores: f64,
    machine_steal_cores: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(listen) = &args.serve_ceiling {
        return ceiling::serve(listen).await;
    }
    let prismd_bin = match &args.prismd {
        Some(path) => path.clone(),
        None => locate_prismd()?,
    };
    let work_dir = std::env::temp_dir().join(format!("prism-bench-{}", std::process::id()));
    let result = if args.scenarios.iter().any(|s| s == "propagation") {
        run_propagation(&args, &prismd_bin, &work_dir).await
    } else {
        match &args.database_url {
            Some(admin_url) => {
                let db = seed::FreshPostgres::create(admin_url).await?;
                let outcome = run(&args, &prismd_bin, &work_dir, Some(&db.url)).await;
                db.drop_now().await?;
                outcome
            }
            None => run(&args, &prismd_bin, &work_dir, None).await,
        }
    };
    let _ = std::fs::remove_dir_all(&work_dir);
    // nginx's directory, when its start failed (a running nginx removes its own).
    let _ = std::fs::remove_dir_all(nginx::dir_beside(&work_dir));
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

/// Requests of one scenario, and whether each may be sent more than once.
struct Workload {
    requests: Vec<Vec<u8>>,
    reuse: bool,
}

/// The exchange scenario's OIDC tokens, signed before anything is measured, and the issuer
/// that signed them (its JWKS must stay reachable while prismd may refetch it).
struct Exchange {
    _issuer: issuer::Issuer,
    warmup: Vec<String>,
    measured: Vec<String>,
}

async fn run(
    args: &Args,
    prismd_bin: &Path,
    work_dir: &Path,
    postgres_url: Option<&str>,
) -> anyhow::Result<()> {
    let (scenarios, nginx_bin) = plan_scenarios(&args.scenarios)?;
    // A scope name prismd would refuse to declare fails here, before anything starts.
    seed::org_scopes(&args.token_scope)?;
    if let Some(scope) = &args.verify_scope {
        prismd::domain::forward_auth::required_scopes(scope)
            .map_err(|err| anyhow::anyhow!("--verify-scope: {err}"))?;
    }
    let backend = if postgres_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let address = format!("127.0.0.1:{}", free_port()?);
    let mut extra: Vec<&str> = postgres_url
        .map(|url| vec!["--database-url", url])
        .unwrap_or_default();
    let wants_exchange = args.scenarios.iter().any(|s| s == "exchange");
    if wants_exchange {
        // The scenario's issuer is in this process, on plain HTTP.
        extra.push("--oidc-allow-http-issuers");
    }
    // The api scenario drives a hundred callers at thousands of requests a second each: the
    // per-caller limit stays in the path (its cost is measured) but high enough not to refuse.
    extra.extend(["--api-rate-limit", "1000000"]);
    extra.extend(args.server_args.iter().map(String::as_str));
    let mut server = ServerProcess::prismd(prismd_bin, work_dir, &address, &extra)?;
    server.wait_ready(&address).await?;

    let wants_revoke = scenarios.iter().any(|s| s == "revoke");
    let revocable = if wants_revoke { args.revocable } else { 0 };
    eprintln!(
        "seeding {} refresh tokens (scope \"{}\") over {} users, and {revocable} revocable users ...",
        args.tokens, args.token_scope, args.users
    );
    let target = match postgres_url {
        Some(url) => seed::Target::Postgres(url.to_owned()),
        None => seed::Target::Sqlite(work_dir.join(prismd::store::DATABASE_FILE)),
    };
    let seeded_at = Instant::now();
    let seeded = seed::seed(
        &target,
        args.users,
        args.tokens,
        revocable,
        &args.token_scope,
    )
    .await?;
    eprintln!("seeded in {:.1} s", seeded_at.elapsed().as_secs_f64());
    let active = active_tokens(&seeded.shared, args.active);
    let access_tokens = fetch_access_tokens(
        &address,
        &seeded.shared[..args.users.min(seeded.shared.len())],
    )
    .await?;
    // The introspect scenario's resource server: its HTTP Basic credentials.
    let introspector = if scenarios.iter().any(|s| s == "introspect") {
        Some(seed::resource_server(prismd_bin, work_dir, postgres_url)?)
    } else {
        None
    };
    let exchange = if wants_exchange {
        Some(prepare_exchange(args, prismd_bin, work_dir, postgres_url, &address).await?)
    } else {
        None
    };

    let mut reports = Vec::new();
    // Started at the first scenario through it, kept for the others (the same nginx).
    let mut proxy: Option<nginx::Nginx> = None;
    let nginx_dir = nginx::dir_beside(work_dir);
    let wrk_bin = if args.wrk {
        Some(wrk::locate().context("--wrk: no wrk on PATH; `apt-get install wrk` adds it")?)
    } else {
        None
    };
    for scenario in &scenarios {
        let through_nginx = NGINX_SCENARIOS.contains(&scenario.as_str());
        if through_nginx && proxy.is_none() {
            let bin = nginx_bin.as_deref().context("nginx was not found")?;
            let started = nginx::Nginx::start(
                bin,
                &nginx_dir,
                &address,
                &args.nginx_workers,
                args.verify_scope.as_deref(),
            )
            .await?;
            started
                .check(access_tokens.first().context("no access token")?)
                .await?;
            eprintln!(
                "{} (worker_processes {}) on {} in front of prismd",
                bin.display(),
                args.nginx_workers,
                started.address()
            );
            proxy = Some(started);
        }
        // A server of the scenario's own, started for it and stopped after it: the ceiling, a
        // second prismd serving HTTPS on the same data, or the peer.
        let own_server =
            start_scenario_server(scenario, args, prismd_bin, work_dir, &extra).await?;
        let nginx = proxy.as_ref().filter(|_| through_nginx);
        // Where the requests go, and whose CPU and memory the scenario is charged: the server
        // it talks to, and prismd behind nginx too.
        let (endpoint, measured): (client::Endpoint, Vec<&ServerProcess>) =
            match (&own_server, nginx) {
                (Some(own), _) => (own.endpoint.clone(), vec![&own.process]),
                (None, Some(nginx)) if scenario == NGINX_CEILING => (
                    client::Endpoint::plain(nginx.address()),
                    vec![nginx.process()],
                ),
                (None, Some(nginx)) => (
                    client::Endpoint::plain(nginx.address()),
                    vec![nginx.process(), &server],
                ),
                (None, None) => (client::Endpoint::plain(&address), vec![&server]),
            };
        let workload = workload(
            scenario,
            &endpoint.address,
            &active,
            &seeded,
            &access_tokens,
            &Prepared {
                exchange: exchange.as_ref(),
                verify_scope: args.verify_scope.as_deref(),
                introspector: introspector.as_deref(),
                peer: own_server.as_ref().and_then(|own| own.peer.as_ref()),
            },
        );
        eprintln!(
            "{scenario}: warm-up {:?}, measuring {:?} at {} connections",
            args.warmup, args.duration, args.concurrency
        );
        if workload.reuse {
            drive(&endpoint, &workload, args.concurrency, args.warmup, None).await?;
        } else if let Some(tokens) = exchange.as_ref().filter(|_| scenario == "exchange") {
            // Single-use tokens: the warm-up spends its own, up to `--warmup` long.
            let warmup = exchange_workload(&endpoint.address, &tokens.warmup);
            if !warmup.requests.is_empty() {
                drive(&endpoint, &warmup, args.concurrency, args.warmup, None).await?;
            }
        }
        let ceiling = if through_nginx {
            NGINX_CEILING
        } else {
            "ceiling"
        };
        let row = |label: String, ceiling: &'static str| Row {
            label,
            backend: if scenario == "ceiling" || scenario == NGINX_CEILING {
                "none"
            } else if scenario == "peer" {
                "peer"
            } else {
                backend
            },
            ceiling,
            proxied: scenario == "verify-nginx",
        };
        // Closed loop first (every connection sends its next request when the last is
        // answered: the most the server does); then, with --open-loop, a fixed rate at that
        // fraction of it, where latency is not mostly queueing.
        let mut passes: Vec<Option<f64>> = vec![None];
        if let Some(fraction) = args.open_loop.filter(|_| workload.reuse) {
            passes.push(Some(fraction));
        }
        let mut closed_loop_rate = 0.0;
        for pass in passes {
            let pace = pass.map(|fraction| fraction * closed_loop_rate);
            let label = match pass {
                None => scenario.clone(),
                Some(fraction) => format!("{scenario}@{fraction}"),
            };
            let meter = Meter::start(&measured)?;
            let outcome =
                drive(&endpoint, &workload, args.concurrency, args.duration, pace).await?;
            if outcome.errors > 0
                && let Some(nginx) = nginx
            {
                eprintln!("nginx's error log ends with:\n{}", nginx.log_tail());
            }
            let mut latencies = outcome.latencies_us;
            latencies.sort_unstable();
            let report = meter.finish(
                row(label, ceiling),
                Counted {
                    requests: latencies.len() as u64,
                    errors: outcome.errors,
                    percentiles_ms: [
                        percentile(&latencies, 0.50),
                        percentile(&latencies, 0.99),
                        percentile(&latencies, 0.999),
                    ],
                },
            )?;
            if pass.is_none() {
                closed_loop_rate = report.requests_per_sec;
            }
            reports.push(report);
        }
        if let Some(bin) = wrk_bin
            .as_deref()
            .filter(|_| WRK_SCENARIOS.contains(&scenario.as_str()))
        {
            eprintln!("{scenario}: the same with wrk");
            let meter = Meter::start(&measured)?;
            let outcome = wrk::run(
                bin,
                work_dir,
                &endpoint,
                &workload.requests,
                args.concurrency,
                args.duration,
            )?;
            let mut report = meter.finish(
                row(format!("{scenario}/wrk"), WRK_CEILING),
                Counted {
                    requests: outcome.requests,
                    errors: outcome.errors,
                    percentiles_ms: [outcome.p50_ms, outcome.p99_ms, outcome.p999_ms],
                },
            )?;
            // wrk's own clock: its requests over its own duration.
            report.requests_per_sec = outcome.requests as f64 / outcome.seconds.max(1e-9);
            reports.push(report);
        }
        if let Some(mut own) = own_server {
            own.process.stop();
        }
    }
    drop(proxy);
    server.stop();
    let ceilings: Vec<(String, f64)> = reports
        .iter()
        .filter(|r| r.scenario == r.ceiling)
        .filter(|r| r.requests_per_sec > 0.0)
        .map(|r| (r.scenario.clone(), r.requests_per_sec))
        .collect();
    for report in &mut reports {
        report.ratio_to_ceiling = ceilings
            .iter()
            .find(|(name, _)| name == report.ceiling)
            .map(|(_, rps)| report.requests_per_sec / rps);
    }
    print_reports(&reports, args.json)?;
    if reports.iter().any(|r| r.errors > 0) {
        bail!("some requests failed; see the errors column");
    }
    Ok(())
}

/// A server started for one scenario and stopped after it.
struct ScenarioServer {
    endpoint: client::Endpoint,
    process: ServerProcess,
    /// For `peer`: what it minted.
    peer: Option<peer::Peer>,
}

/// The server of the scenarios that have their own: the ceiling; for `refresh-https` a second
/// prismd on the same data (database, keys) serving HTTPS with its development CA (`--dev-tls`),
/// trusted by the client as a real one would be; for `peer` node-oidc-provider.
async fn start_scenario_server(
    scenario: &str,
    args: &Args,
    prismd_bin: &Path,
    work_dir: &Path,
    prismd_flags: &[&str],
) -> anyhow::Result<Option<ScenarioServer>> {
    let address = format!("127.0.0.1:{}", free_port()?);
    let (endpoint, process, peer) = match scenario {
        "ceiling" => {
            let mut ceiling = ServerProcess::ceiling(&address)?;
            ceiling.wait_ready(&address).await?;
            (client::Endpoint::plain(&address), ceiling, None)
        }
        "refresh-https" => {
            let mut flags = prismd_flags.to_vec();
            flags.push("--dev-tls");
            let mut tls = ServerProcess::prismd(prismd_bin, work_dir, &address, &flags)?;
            // The CA file is written at start-up: wait for it before trusting it.
            let ca = work_dir.join(prismd::tls::DEV_CA_FILE);
            for _ in 0..100 {
                if ca.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let endpoint = client::Endpoint::tls(&address, &ca)?;
            tls.wait_ready_at(&endpoint).await?;
            (endpoint, tls, None)
        }
        "peer" => {
            let (process, peer) =
                peer::Peer::start(&args.peer_dir, work_dir, &address, args.peer_tokens).await?;
            eprintln!(
                "node-oidc-provider on {address}, {} refresh tokens",
                peer.refresh_tokens.len()
            );
            (client::Endpoint::plain(&address), process, Some(peer))
        }
        _ => return Ok(None),
    };
    Ok(Some(ScenarioServer {
        endpoint,
        process,
        peer,
    }))
}

/// How a scenario's row is labelled and charged.
struct Row {
    label: String,
    backend: &'static str,
    /// The row whose rate its ratio is to.
    ceiling: &'static str,
    /// Through nginx: the first measured process is nginx, whose share is reported apart.
    proxied: bool,
}

/// What a load generator counted.
struct Counted {
    requests: u64,
    errors: u64,
    /// p50, p99 and p99.9.
    percentiles_ms: [f64; 3],
}

/// The servers' and the load generator's CPU, and the machine's, from a scenario's start.
struct Meter<'a> {
    measured: &'a [&'a ServerProcess],
    cpu_before: Vec<f64>,
    client_before: f64,
    machine_before: server::MachineCpu,
    started: Instant,
}

impl<'a> Meter<'a> {
    fn start(measured: &'a [&'a ServerProcess]) -> anyhow::Result<Self> {
        Ok(Self {
            measured,
            cpu_before: measured
                .iter()
                .map(|p| p.cpu_seconds())
                .collect::<anyhow::Result<Vec<f64>>>()?,
            client_before: server::load_generator_cpu_seconds()?,
            machine_before: server::MachineCpu::now()?,
            started: Instant::now(),
        })
    }

    fn finish(self, row: Row, counted: Counted) -> anyhow::Result<Report> {
        let elapsed = self.started.elapsed().as_secs_f64();
        let machine_after = server::MachineCpu::now()?;
        let client_cpu = server::load_generator_cpu_seconds()? - self.client_before;
        let mut cpu = Vec::new();
        for (process, before) in self.measured.iter().zip(&self.cpu_before) {
            cpu.push(process.cpu_seconds()? - before);
        }
        let total = counted.requests;
        let per_1000 = |seconds: f64| {
            if total > 0 {
                seconds * 1000.0 / total as f64
            } else {
                0.0
            }
        };
        let mut peak_rss = 0.0;
        let mut anon_rss = 0.0;
        let mut file_rss = 0.0;
        for process in self.measured {
            peak_rss += process.peak_rss_mib()?;
            anon_rss += process.anon_rss_mib()?;
            file_rss += process.file_rss_mib()?;
        }
        let [p50_ms, p99_ms, p999_ms] = counted.percentiles_ms;
        Ok(Report {
            scenario: row.label,
            backend: row.backend,
            requests: total,
            errors: counted.errors,
            requests_per_sec: total as f64 / elapsed,
            p50_ms,
            p99_ms,
            p999_ms,
            server_cpu_sec_per_1000: per_1000(cpu.iter().sum()),
            server_peak_rss_mib: peak_rss,
            server_anon_rss_mib: anon_rss,
            server_file_rss_mib: file_rss,
            ratio_to_ceiling: None,
            ceiling: row.ceiling,
            proxy_cpu_sec_per_1000: row
                .proxied
                .then(|| per_1000(cpu.first().copied().unwrap_or_default())),
            client_cpu_sec_per_1000: per_1000(client_cpu),
            machine_busy_cores: (machine_after.busy - self.machine_before.busy) / elapsed,
            machine_steal_cores: (machine_after.steal - self.machine_before.steal) / elapsed,
        })
    }
}

/// The scenarios to run, in order, and nginx when one of them goes through it. Unknown names
/// fail; `nginx-alone` is added before `verify-nginx` when not named (a ratio needs its ceiling
/// in the same run); without nginx installed, the scenarios through it are skipped, with a
/// word on stderr.
fn plan_scenarios(requested: &[String]) -> anyhow::Result<(Vec<String>, Option<PathBuf>)> {
    let mut scenarios = Vec::new();
    for scenario in requested {
        if !SCENARIOS.contains(&scenario.as_str()) {
            bail!("unknown scenario {scenario}; use {ALL_SCENARIOS}");
        }
        if scenario == "verify-nginx" && !requested.iter().any(|s| s == NGINX_CEILING) {
            scenarios.push(NGINX_CEILING.to_owned());
        }
        if !scenarios.contains(scenario) {
            scenarios.push(scenario.clone());
        }
    }
    if !scenarios
        .iter()
        .any(|s| NGINX_SCENARIOS.contains(&s.as_str()))
    {
        return Ok((scenarios, None));
    }
    let bin = nginx::locate();
    if bin.is_none() {
        eprintln!(
            "nginx is not installed (no `nginx` on PATH): skipping {}; `apt-get install \
             nginx-light` (or nginx) adds it",
            NGINX_SCENARIOS.join(" and ")
        );
        scenarios.retain(|s| !NGINX_SCENARIOS.contains(&s.as_str()));
    }
    Ok((scenarios, bin))
}

/// `count` of `tokens` (all when `None`), spread evenly over them: in seeding order, tokens
/// next to each other share table pages, and a run that used only the first ones would read
/// fewer pages than one over the whole table.
fn active_tokens(tokens: &[String], count: Option<usize>) -> Vec<String> {
    let count = count.unwrap_or(tokens.len()).clamp(1, tokens.len().max(1));
    let step = (tokens.len() / count).max(1);
    tokens.iter().step_by(step).take(count).cloned().collect()
}

/// What some scenarios prepared before the run: the exchange's OIDC tokens, the verify
/// scenarios' required scopes, the introspect scenario's `Authorization` header.
struct Prepared<'a> {
    exchange: Option<&'a Exchange>,
    verify_scope: Option<&'a str>,
    introspector: Option<&'a str>,
    peer: Option<&'a peer::Peer>,
}

fn workload(
    scenario: &str,
    address: &str,
    active: &[String],
    seeded: &seed::Seeded,
    access_tokens: &[String],
    prepared: &Prepared<'_>,
) -> Workload {
    let Prepared {
        exchange,
        verify_scope,
        introspector,
        peer,
    } = *prepared;
    let bearer_gets = |path: &str| Workload {
        requests: access_tokens
            .iter()
            .map(|a| client::get(path, address, Some(a)))
            .collect(),
        reuse: true,
    };
    let json_refresh = |t: &String| format!(r#"{{"refresh_token":"{t}"}}"#);
    match scenario {
        // node-oidc-provider's refresh grant, as its confidential client sends it.
        "peer" => Workload {
            requests: peer
                .map(|peer| {
                    peer.refresh_tokens
                        .iter()
                        .map(|t| {
                            client::form_post_authorized(
                                &peer.token_path,
                                address,
                                &peer.authorization,
                                &format!("grant_type=refresh_token&refresh_token={t}"),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            reuse: true,
        },
        "ceiling" | "refresh" | "refresh-https" => Workload {
            requests: active
                .iter()
                .map(|t| client::json_post("/auth/refresh", address, None, &json_refresh(t)))
                .collect(),
            reuse: true,
        },
        "oauth-token" => Workload {
            requests: active
                .iter()
                .map(|t| {
                    client::form_post(
                        "/oauth/token",
                        address,
                        &format!("grant_type=refresh_token&client_id=prism-cli&refresh_token={t}"),
                    )
                })
                .collect(),
            reuse: true,
        },
        "api" => Workload {
            requests: access_tokens
                .iter()
                .map(|a| {
                    client::json_post(
                        "/api",
                        address,
                        Some(a),
                        r#"{"query":"{ authenticatedUser { id } }"}"#,
                    )
                })
                .collect(),
            reuse: true,
        },
        // The proxy's question: only the bearer token (and the route's scopes) to decide on.
        "verify" => bearer_gets(&match verify_scope {
            Some(scope) => format!(
                "/auth/verify?scope={}",
                url::form_urlencoded::byte_serialize(scope.as_bytes()).collect::<String>()
            ),
            None => "/auth/verify".to_owned(),
        }),
        // A resource server asks about each access token in turn (HTTP Basic, form body).
        "introspect" => Workload {
            requests: access_tokens
                .iter()
                .map(|a| {
                    client::form_post_authorized(
                        "/oauth/introspect",
                        address,
                        introspector.unwrap_or_default(),
                        &format!("token={a}"),
                    )
                })
                .collect(),
            reuse: true,
        },
        // The same token through nginx, to the protected location or the open one.
        "verify-nginx" => bearer_gets(nginx::PROTECTED),
        "nginx-alone" => bearer_gets(nginx::OPEN),
        // Each token is exchanged once: a second time is a replay, refused.
        "exchange" => exchange_workload(
            address,
            exchange.map(|e| e.measured.as_slice()).unwrap_or_default(),
        ),
        // Each revoke is a durable write only the first time; later ones find the token dead.
        _ => Workload {
            requests: seeded
                .revocable
                .iter()
                .map(|t| client::json_post("/auth/revoke", address, None, &json_refresh(t)))
                .collect(),
            reuse: false,
        },
    }
}

/// `POST /auth/exchange {"token": ...}` once for each of `tokens`.
fn exchange_workload(address: &str, tokens: &[String]) -> Workload {
    Workload {
        requests: tokens
            .iter()
            .map(|t| client::json_post("/auth/exchange", address, None, &exchange_body(t)))
            .collect(),
        reuse: false,
    }
}

fn exchange_body(token: &str) -> String {
    // A JWT is base64url and dots: nothing to escape.
    format!(r#"{{"token":"{token}"}}"#)
}

/// The exchange scenario's setup, before anything is measured: its OIDC issuer on loopback, a
/// service account and a trust policy for the issuer (prismd's operator commands), every
/// token it will send signed, and one exchange to check that the policy accepts them (which
/// also loads the issuer's keys into prismd's cache, as the first job of a pipeline would).
async fn prepare_exchange(
    args: &Args,
    prismd_bin: &Path,
    work_dir: &Path,
    postgres_url: Option<&str>,
    address: &str,
) -> anyhow::Result<Exchange> {
    let issuer = issuer::Issuer::start(args.oidc_alg).await?;
    seed::trust_policy(
        prismd_bin,
        work_dir,
        postgres_url,
        issuer.url(),
        EXCHANGE_AUDIENCE,
        EXCHANGE_SUBJECT,
    )?;
    let signed_at = Instant::now();
    let warmup_count = args.exchanges / 4;
    let mut tokens = issuer.ci_tokens(
        1 + warmup_count + args.exchanges,
        EXCHANGE_AUDIENCE,
        EXCHANGE_SUBJECT,
    )?;
    eprintln!(
        "signed {} {:?} OIDC tokens of {} in {:.1} s",
        tokens.len(),
        args.oidc_alg,
        issuer.url(),
        signed_at.elapsed().as_secs_f64()
    );
    let measured = tokens.split_off(1 + warmup_count);
    let warmup = tokens.split_off(1);
    let mut conn = client::Connection::open(address).await?;
    let first = tokens.first().context("no token to try")?;
    let request = client::json_post("/auth/exchange", address, None, &exchange_body(first));
    let (status, body) = conn.send_and_read(&request).await?;
    if status != 200 {
        bail!(
            "the first exchange answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    eprintln!(
        "an exchange grants {} the scope \"{}\" for {} s",
        seed::SERVICE_ACCOUNT,
        json["scope"].as_str().unwrap_or_default(),
        json["expires_in"]
    );
    Ok(Exchange {
        _issuer: issuer,
        warmup,
        measured,
    })
}

fn print_reports(reports: &[Report], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(reports)?);
        return Ok(());
    }
    println!(
        "{:<17} {:<9} {:>9} {:>6} {:>8} {:>7} {:>7} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9}  of",
        "scenario",
        "backend",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "cpu s/1000",
        "peak MiB",
        "anon MiB",
        "file MiB",
        "x ceiling"
    );
    for r in reports {
        println!(
            "{:<17} {:<9} {:>9} {:>6} {:>8.0} {:>7.2} {:>7.2} {:>8.2} {:>10.3} {:>8.1} {:>8.1} {:>8.1} {:>9}  {}",
            r.scenario,
            r.backend,
            r.requests,
            r.errors,
            r.requests_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.server_cpu_sec_per_1000,
            r.server_peak_rss_mib,
            r.server_anon_rss_mib,
            r.server_file_rss_mib,
            r.ratio_to_ceiling
                .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}")),
            r.ceiling
        );
    }
    // Where the machine's cores went: the servers and the load generator share them.
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    for r in reports {
        println!(
            "{}: load generator {:.3} cpu s/1000; machine busy {:.2} of {cores} cores{}",
            r.scenario,
            r.client_cpu_sec_per_1000,
            r.machine_busy_cores,
            if r.machine_steal_cores >= 0.05 {
                format!(", {:.2} stolen", r.machine_steal_cores)
            } else {
                String::new()
            }
        );
    }
    // The comparisons the issue's targets name, each within this run.
    let rate = |name: &str| {
        reports
            .iter()
            .find(|r| r.scenario == name && r.requests_per_sec > 0.0)
            .map(|r| r.requests_per_sec)
    };
    for (what, of, than) in [
        ("refresh-https", "x plain refresh", "refresh"),
        ("refresh", "x node-oidc-provider's refresh grant", "peer"),
        (
            "refresh/wrk",
            "x node-oidc-provider's (both wrk)",
            "peer/wrk",
        ),
        ("ceiling/wrk", "x prism-bench's own client's", "ceiling"),
        ("refresh/wrk", "x prism-bench's own client's", "refresh"),
    ] {
        if let (Some(a), Some(b)) = (rate(what), rate(than)) {
            println!("{what}: {:.2} {of}", a / b);
        }
    }
    for r in reports {
        if let Some(proxy) = r.proxy_cpu_sec_per_1000 {
            println!(
                "{}: cpu s/1000 is nginx's {proxy:.3} and prismd's {:.3}; memory is both's",
                r.scenario,
                r.server_cpu_sec_per_1000 - proxy
            );
        }
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

/// Runs `concurrency` connections until `duration` has passed. A reusable workload is sent
/// round-robin (each connection from its own offset); a single-use one hands each request
/// to exactly one connection and ends early when all have been sent. With `pace` (requests a
/// second in all) each connection sends on its own fixed schedule, staggered against the
/// others: open loop.
async fn drive(
    endpoint: &client::Endpoint,
    workload: &Workload,
    concurrency: usize,
    duration: Duration,
    pace: Option<f64>,
) -> anyhow::Result<Outcome> {
    if workload.requests.is_empty() {
        bail!("nothing to send; seed more tokens");
    }
    let requests = Arc::new(workload.requests.clone());
    let reuse = workload.reuse;
    let next_single_use = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    // Each connection's time between two requests, and the start all schedules count from.
    let interval = pace
        .filter(|rate| *rate > 0.0)
        .map(|rate| Duration::from_secs_f64(concurrency as f64 / rate));
    let schedule_start = tokio::time::Instant::now();
    for connection in 0..concurrency {
        let (requests, stop, next, endpoint) = (
            requests.clone(),
            stop.clone(),
            next_single_use.clone(),
            endpoint.clone(),
        );
        tasks.spawn(async move {
            let mut conn = client::Connection::connect(&endpoint).await?;
            let mut latencies = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            let mut index = connection * 7919;
            let mut due = interval.map(|interval| {
                schedule_start + interval.mul_f64(connection as f64 / concurrency as f64)
            });
            while !stop.load(Ordering::Relaxed) {
                let request = if reuse {
                    index += 1;
                    &requests[index % requests.len()]
                } else {
                    match requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                        Some(request) => request,
                        None => break,
                    }
                };
                let started = match (due, interval) {
                    (Some(when), Some(interval)) => {
                        due = Some(when + interval);
                        if when > tokio::time::Instant::now() {
                            // On time: measured from the send, so the timer's millisecond
                            // granularity is not charged to the server.
                            tokio::time::sleep_until(when).await;
                            Instant::now()
                        } else {
                            // Behind schedule (the last answer was slow): from when it was
                            // due, so the wait counts.
                            when.into_std()
                        }
                    }
                    _ => Instant::now(),
                };
                let status = conn.send(request).await?;
                latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                if status != 200 {
                    errors += 1;
                }
            }
            Ok::<_, anyhow::Error>((latencies, errors))
        });
    }
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    let mut outcome = Outcome {
        latencies_us: Vec::new(),
        errors: 0,
    };
    loop {
        tokio::select! {
            () = &mut deadline, if !stop.load(Ordering::Relaxed) => {
                stop.store(true, Ordering::Relaxed);
            }
            joined = tasks.join_next() => match joined {
                Some(joined) => {
                    let (latencies, errors) = joined??;
                    outcome.latencies_us.extend(latencies);
                    outcome.errors += errors;
                }
                None => break,
            },
        }
    }
    Ok(outcome)
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
        if out.is_empty() {
            eprintln!(
                "the exchange grants the scope \"{}\"",
                json["scope"].as_str().unwrap_or_default()
            );
        }
        out.push(
            json["access_token"]
                .as_str()
                .context("no access_token")?
                .to_owned(),
        );
    }
    Ok(out)
}

/// A fraction in (0, 1] for --open-loop.
fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(fraction) if fraction > 0.0 && fraction <= 1.0 => Ok(fraction),
        _ => Err(format!("{text:?} is not a fraction in (0, 1], e.g. 0.5")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_fraction;

    #[test]
    fn open_loop_takes_a_fraction_of_the_closed_loop_rate() {
        assert_eq!(parse_fraction("0.5"), Ok(0.5));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        for refused in ["0", "-0.5", "1.5", "half", "NaN", ""] {
            assert!(parse_fraction(refused).is_err(), "{refused}");
        }
    }
}
