//! PostgreSQL outages end to end. Each test runs its own private PostgreSQL cluster (`initdb`
//! and `pg_ctl` from `/usr/lib/postgresql/<version>/bin`, data and socket in a temporary
//! directory, a port on 127.0.0.1 held for the cluster's whole life), so stopping and starting
//! it disturbs no other test.
//!
//! During an outage clients get 503 with `Retry-After` and the JSON error body, never a 500
//! and never a hang; the circuit breaker turns requests away at once; `/readyz` says not ready
//! while `/healthz` stays 200; afterwards 200s come back by themselves, the process never
//! exited, and no token state is lost or resurrected.
//!
//! They need only the PostgreSQL binaries (the Debian package `postgresql`, which
//! `scripts/test.sh` installs), not `PRISM_TEST_POSTGRES_URL`, and fail loudly without them.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{BIN, Options, Server, TestResult, admin_ok, temp_dir};
use crate::metrics::scraped_value;

type AnyError = Box<dyn std::error::Error>;

/// Longest any response may take, outage or not. The server is run with a 2 s acquire
/// timeout; this only proves that nothing hangs, not how fast a 503 is.
const RESPONSE_BOUND: Duration = Duration::from_secs(10);
/// The URL's password: trust authentication ignores it, and it must never reach a log.
const PASSWORD: &str = "outage-test-not-a-secret";
/// How many fresh ports [`PrivateCluster::create`] tries when the first start finds its port
/// taken (see [`PortHold`]).
const PORT_ATTEMPTS: usize = 5;

/// A port on 127.0.0.1 held by a socket that is bound but never listens, so that neither an
/// ephemeral `bind(0)` nor an outgoing connection of any process on this machine can be given
/// it while the cluster is down: the restart of a stopped cluster then finds its port free,
/// and prismd, which keeps the same URL, reaches the same database again. Meanwhile
/// connections to it are refused, as by a stopped server. PostgreSQL binds beside it because
/// both sockets set `SO_REUSEADDR` and this one is not listening; only a process that binds
/// this very number explicitly can still take it, which [`PrivateCluster::start`] then says.
struct PortHold {
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl PortHold {
    fn new() -> Result<Self, std::io::Error> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let port = socket.local_addr()?.port();
        Ok(Self {
            _socket: socket,
            port,
        })
    }
}

/// A PostgreSQL cluster of one test, stopped (`-m immediate`) and removed when dropped, also
/// when the test fails.
struct PrivateCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    hold: PortHold,
    /// PostgreSQL refuses to run as root: then every command runs as the `postgres` user.
    as_postgres: bool,
}

/// Why [`PrivateCluster::start`] failed.
enum StartFailure {
    /// Another process listens on the cluster's port.
    PortTaken(AnyError),
    Other(AnyError),
}

impl From<StartFailure> for AnyError {
    fn from(failure: StartFailure) -> Self {
        match failure {
            StartFailure::PortTaken(err) | StartFailure::Other(err) => err,
        }
    }
}

impl PrivateCluster {
    /// `initdb`, start, and a database named `prism`.
    fn create() -> Result<Self, AnyError> {
        let bin = postgres_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("prismd-pg-").tempdir()?;
        std::fs::create_dir(dir.path().join("sock"))?;
        let as_postgres = std::fs::metadata("/proc/self")?.uid() == 0;
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                return Err("cannot chown the cluster directory to the postgres user".into());
            }
        }
        let mut cluster = Self {
            bin,
            dir,
            hold: PortHold::new()?,
            as_postgres,
        };
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        // Nothing knows the port before the first start, so a port taken there may be swapped
        // for another (unlike at a restart).
        let mut attempt = 1;
        loop {
            match cluster.start() {
                Ok(()) => break,
                Err(StartFailure::PortTaken(_)) if attempt < PORT_ATTEMPTS => {
                    attempt += 1;
                    cluster.hold = PortHold::new()?;
                }
                Err(failure) => return Err(failure.into()),
            }
        }
        cluster.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.port().to_string(),
                "-U",
                "postgres",
                "prism",
            ],
        )?;
        Ok(cluster)
    }

    fn port(&self) -> u16 {
        self.hold.port
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/prism",
            self.port()
        )
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        // The postgres user may not be allowed into the test's working directory.
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        command
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), AnyError> {
        let output = self.command(tool).args(args).output()?;
        if !output.status.success() {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            return Err(format!(
                "{tool} {args:?} failed: {}{}\nserver log:\n{log}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(())
    }

    /// Starts the cluster on its held port (the same one every time).
    fn start(&self) -> Result<(), StartFailure> {
        let log = self.log_path();
        // `pg_ctl -l` appends: only this start's lines say whether this start lost the port.
        let logged_before = std::fs::metadata(&log).map_or(0, |m| m.len());
        let started = (|| -> Result<(), AnyError> {
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
                self.port(),
                path_str(&self.dir.path().join("sock"))?
            );
            let data = self.data_dir();
            self.run(
                "pg_ctl",
                &[
                    "-D",
                    path_str(&data)?,
                    "-l",
                    path_str(&log)?,
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            )
        })();
        let Err(err) = started else { return Ok(()) };
        let this_start = std::fs::read(&log)
            .ok()
            .and_then(|all| {
                let from = usize::try_from(logged_before).ok()?;
                all.get(from..)
                    .map(|tail| String::from_utf8_lossy(tail).into_owned())
            })
            .unwrap_or_default();
        if this_start.contains("could not bind") || this_start.contains("already in use") {
            return Err(StartFailure::PortTaken(
                format!(
                    "PostgreSQL could not listen on 127.0.0.1:{}: another process bound that \
                     port explicitly although this test held it (not a prismd failure): {err}",
                    self.port()
                )
                .into(),
            ));
        }
        Err(StartFailure::Other(err))
    }

    /// `mode`: `fast` (disconnects everyone, clean shutdown) or `immediate` (like a crash;
    /// the next start recovers from the WAL).
    fn stop(&self, mode: &str) -> Result<(), AnyError> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", mode, "-w", "-t", "60", "stop"],
        )
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // Whatever state the test left it in; an error here means it was not running.
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // The TempDir then removes data, socket and log, and the port is let go.
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` and `pg_ctl`.
fn postgres_bin_dir() -> Result<PathBuf, AnyError> {
    let root = Path::new("/usr/lib/postgresql");
    let missing = |why: String| -> AnyError {
        format!(
            "no PostgreSQL binaries ({why}): the outage tests run a private cluster with \
             initdb and pg_ctl from {}/<version>/bin; install the Debian package `postgresql` \
             (apt-get install postgresql; scripts/test.sh does)",
            root.display()
        )
        .into()
    };
    let entries = std::fs::read_dir(root)
        .map_err(|err| missing(format!("cannot read {}: {err}", root.display())))?;
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| missing("no version with initdb and pg_ctl".to_owned()))
}

fn path_str(path: &Path) -> Result<&str, AnyError> {
    path.to_str()
        .ok_or_else(|| format!("not UTF-8: {}", path.display()).into())
}

/// Runs an admin command on the cluster's database.
fn admin(dir: &Path, url: &str, args: &[&str]) -> Result<String, AnyError> {
    let mut all = vec!["--database-url", url];
    all.extend_from_slice(args);
    admin_ok(dir, &all)
}

fn user_with_token(dir: &Path, url: &str, email: &str) -> Result<String, AnyError> {
    admin(
        dir,
        url,
        &["users", "add", "--email", email, "--role", "Integrator"],
    )?;
    admin(dir, url, &["tokens", "create", "--email", email])
}

/// One answer (or failure to get one) seen by a load client.
#[derive(Debug, Clone)]
struct Seen {
    client: usize,
    /// When the request was sent, since the load began.
    at: Duration,
    took: Duration,
    status: Option<u16>,
    retry_after: Option<String>,
    error: Option<String>,
    /// Set when no HTTP answer came at all (refused, reset, timed out).
    transport: Option<String>,
}

/// The status, `Retry-After` and body of one request, each within [`RESPONSE_BOUND`].
async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(u16, Option<String>, Value), reqwest::Error> {
    let response = request.timeout(RESPONSE_BOUND).send().await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, retry_after, body))
}

/// A client refreshing `token` until told to stop, at most `limit` times.
async fn refresh_client(
    client: usize,
    base: String,
    token: String,
    began: Instant,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    limit: usize,
) {
    let http = reqwest::Client::new();
    for _ in 0..limit {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let at = began.elapsed();
        let sent = Instant::now();
        let request = http
            .post(format!("{base}/auth/refresh"))
            .json(&serde_json::json!({ "refresh_token": token }));
        let outcome = send(request).await;
        let took = sent.elapsed();
        let entry = match outcome {
            Ok((status, retry_after, body)) => Seen {
                client,
                at,
                took,
                status: Some(status),
                retry_after,
                error: body["error"].as_str().map(str::to_owned),
                transport: None,
            },
            Err(err) => Seen {
                client,
                at,
                took,
                status: None,
                retry_after: None,
                error: None,
                transport: Some(err.to_string()),
            },
        };
        if let Ok(mut seen) = seen.lock() {
            seen.push(entry);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, AnyError>>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("gave up after {limit:?} waiting for {what}").into())
}

async fn status_of(http: &reqwest::Client, url: String) -> Result<u16, AnyError> {
    Ok(send(http.get(url)).await?.0)
}

/// Whether every client has seen `status` (after `since`, when given).
fn every_client_saw(
    seen: &Mutex<Vec<Seen>>,
    clients: usize,
    status: u16,
    since: Option<Duration>,
) -> bool {
    let Ok(seen) = seen.lock() else { return false };
    (0..clients).all(|client| {
        seen.iter().any(|s| {
            s.client == client && s.status == Some(status) && since.is_none_or(|t| s.at >= t)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restart_under_load_costs_503s_and_nothing_else() -> TestResult {
    let cluster = PrivateCluster::create()?;
    let url = cluster.url();
    let dir = temp_dir()?;
    let mut server = Server::start_with(
        dir.path(),
        Options {
            args: [
                "--database-url",
                &url,
                "--db-pool-size",
                "4",
                "--db-acquire-timeout",
                "2s",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            ..Options::default()
        },
    )?;
    let pid = server.pid();
    let base = server.base.clone();
    let http = reqwest::Client::new();

    // Three users whose tokens must survive; one revoked before the load; one revoked just
    // before the crash (that commit must survive it too).
    let live_emails = ["ada@example.com", "bea@example.com", "cy@example.com"];
    let mut live = Vec::new();
    for email in live_emails {
        let refresh = user_with_token(dir.path(), &url, email)?;
        let access = server.access_token(&refresh).await?;
        live.push((email, refresh, access));
    }
    let mal = user_with_token(dir.path(), &url, "mal@example.com")?;
    let mal_access = server.access_token(&mal).await?;
    assert_eq!(server.revoke(&mal).await?.0, 200);
    assert_eq!(server.refresh(&mal).await?.0, 400);
    let eve = user_with_token(dir.path(), &url, "eve@example.com")?;
    let eve_access = server.access_token(&eve).await?;

    // The load: four clients (two on the same token), bounded in count and time.
    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let clients = 4;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let token = live[client % live.len()].1.clone();
        tasks.push(tokio::spawn(refresh_client(
            client,
            base.clone(),
            token,
            began,
            stop.clone(),
            seen.clone(),
            3000,
        )));
    }
    let load_result =
        outage_under_load(&cluster, &server, &http, &live, &eve, began, clients, &seen).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await?;
    }
    load_result?;

    // The same process served throughout.
    assert!(
        server.is_running()?,
        "prismd exited; log:\n{}",
        server.logs()
    );
    assert_eq!(server.pid(), pid);

    let seen = seen.lock().map_err(|_| "poisoned")?.clone();
    let mut unavailable = 0;
    for s in &seen {
        assert!(s.transport.is_none(), "no answer at all: {s:?}");
        assert!(s.took <= RESPONSE_BOUND, "took too long: {s:?}");
        match s.status {
            Some(200) => {}
            Some(503) => {
                unavailable += 1;
                assert_eq!(s.error.as_deref(), Some("temporarily_unavailable"), "{s:?}");
                let retry = s.retry_after.as_deref().and_then(|r| r.parse::<u64>().ok());
                assert!(retry.is_some_and(|r| r >= 1), "Retry-After: {s:?}");
            }
            _ => {
                return Err(format!("only 200 and 503 are expected under an outage: {s:?}").into());
            }
        }
    }
    assert!(unavailable > 0, "the load never saw the outage");
    let slowest = seen.iter().map(|s| s.took).max().unwrap_or_default();
    eprintln!(
        "outage under load: {} requests, {unavailable} answered 503, slowest {slowest:?}",
        seen.len()
    );
    for client in 0..clients {
        let last = seen.iter().rev().find(|s| s.client == client);
        assert_eq!(last.and_then(|s| s.status), Some(200), "client {client}");
    }

    // Nothing lost, nothing resurrected.
    let (status, body) = server.refresh(&mal).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(server.whoami(&mal_access).await?, Err(401));
    let (status, body) = server.refresh(&eve).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(server.whoami(&eve_access).await?, Err(401));
    for (email, refresh, access) in &live {
        assert_eq!(server.whoami(access).await?, Ok((*email).to_owned()));
        let fresh = server.access_token(refresh).await?;
        assert_eq!(server.whoami(&fresh).await?, Ok((*email).to_owned()));
    }
    // Admin commands work on the database again, and see every user still there.
    let users = admin(dir.path(), &url, &["users", "list"])?;
    for email in live_emails
        .iter()
        .chain(&["mal@example.com", "eve@example.com"])
    {
        assert!(users.contains(email), "{users}");
    }

    let logs = server.stop()?;
    assert!(logs.contains("circuit open"), "{logs}");
    assert!(logs.contains("circuit closed"), "{logs}");
    assert!(!logs.contains(PASSWORD), "the database password was logged");
    assert!(!logs.contains("panicked"), "{logs}");
    Ok(())
}

/// Revokes `eve`, crashes the database under the running load, checks every endpoint's
/// answer during the outage, starts the database again and waits until the load is served.
#[allow(clippy::too_many_arguments)]
async fn outage_under_load(
    cluster: &PrivateCluster,
    server: &Server,
    http: &reqwest::Client,
    live: &[(&str, String, String)],
    eve: &str,
    began: Instant,
    clients: usize,
    seen: &Mutex<Vec<Seen>>,
) -> TestResult {
    wait_for(
        "every client to be served",
        Duration::from_secs(30),
        || async { Ok(every_client_saw(seen, clients, 200, None)) },
    )
    .await?;
    assert_eq!(server.revoke(eve).await?.0, 200);
    // The circuit has not turned anyone away yet: whatever follows is the outage's doing.
    let rejections = || scraped_value(http, &server.base, "prismd_db_circuit_rejections_total");
    assert_eq!(rejections().await?, 0.0, "{}", server.logs());

    tokio::task::block_in_place(|| cluster.stop("immediate"))?;
    let outage_began = began.elapsed();

    wait_for(
        "/readyz to report not ready",
        Duration::from_secs(30),
        || async { Ok(status_of(http, server.url("/readyz")).await? == 503) },
    )
    .await?;
    let (status, retry_after, body) = send(http.get(server.url("/readyz"))).await?;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
    assert_eq!(status_of(http, server.url("/healthz")).await?, 200);

    // Every kind of request that needs the database gets the same 503.
    let (_, refresh, access) = &live[0];
    let outage_answers = [
        (
            "/api",
            http.post(server.url("/api"))
                .bearer_auth(access)
                .json(&serde_json::json!({ "query": "{ authenticatedUser { email } }" })),
        ),
        (
            "/oauth/token",
            http.post(server.url("/oauth/token")).form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
            ]),
        ),
        // A revoke must not claim success when it could not be written.
        (
            "/auth/revoke",
            http.post(server.url("/auth/revoke"))
                .json(&serde_json::json!({ "refresh_token": refresh })),
        ),
    ];
    for (path, request) in outage_answers {
        let (status, retry_after, body) = send(request).await?;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{path}");
        assert_eq!(body["error"], "temporarily_unavailable", "{path}: {body}");
        let text = body.to_string();
        assert!(
            !text.contains("pool") && !text.contains("database"),
            "{path}: {text}"
        );
    }
    // Keys live in memory: token verification material stays available.
    assert_eq!(
        status_of(http, server.url("/.well-known/jwks.json")).await?,
        200
    );
    // Metrics are read from memory too: a scrape shows the outage instead of failing with it.
    let metric = |series: &'static str| scraped_value(http, &server.base, series);
    assert_eq!(metric("prismd_db_circuit_open").await?, 1.0);
    assert!(metric("prismd_refresh_failures_total{reason=\"unavailable\"}").await? >= 1.0);

    wait_for(
        "every load client to see a 503",
        Duration::from_secs(30),
        || async { Ok(every_client_saw(seen, clients, 503, Some(outage_began))) },
    )
    .await?;
    // The 503s came (also) from the open breaker, not only from requests that waited out the
    // acquire timeout (which a 503 alone cannot tell apart). The load clients keep asking and
    // the circuit stays open until the database is back, so the count must rise meanwhile.
    wait_for(
        "the open circuit breaker to turn a request away",
        Duration::from_secs(30),
        || async { Ok(rejections().await? > 0.0) },
    )
    .await?;

    tokio::task::block_in_place(|| cluster.start().map_err(AnyError::from))?;
    let outage_ended = began.elapsed();

    wait_for(
        "/readyz to report ready again",
        Duration::from_secs(60),
        || async { Ok(status_of(http, server.url("/readyz")).await? == 200) },
    )
    .await?;
    wait_for(
        "every load client to be served again",
        Duration::from_secs(60),
        || async { Ok(every_client_saw(seen, clients, 200, Some(outage_ended))) },
    )
    .await?;
    assert_eq!(metric("prismd_db_circuit_open").await?, 0.0);
    Ok(())
}

#[tokio::test]
async fn a_server_started_before_its_database_waits_for_it_or_says_why_not() -> TestResult {
    let cluster = PrivateCluster::create()?;
    cluster.stop("fast")?;
    let url = cluster.url();
    let dir = temp_dir()?;

    // Gives up after --db-startup-wait, naming the database but not the password. The port is
    // held (see `PortHold`), so every try is refused at once; the short acquire timeout only
    // bounds a try that would hang. A server that never gave up would hang the test: it is
    // killed after a deadline far above the 1 s wait instead, and the test fails.
    let logs = temp_dir()?;
    let gave_up_log = logs.path().join("gave-up");
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--database-url", &url, "serve", "--listen", "127.0.0.1:0"])
        .args(["--db-startup-wait", "1s", "--db-acquire-timeout", "300ms"])
        .env_remove("PRISMD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&gave_up_log)?)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("prismd still waited for the database 60 s into a 1 s startup wait".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = std::fs::read_to_string(&gave_up_log)?;
    assert!(!status.success(), "{stderr}");
    let expected = format!(
        "cannot reach the database (postgres 127.0.0.1:{}/prism",
        cluster.port()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("not reachable yet"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // An admin command says so at once.
    let output = crate::harness::prismd(dir.path(), &["--database-url", &url, "users", "list"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("cannot reach the database"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // Started with time to spare, it waits and comes up once the database does. The database
    // starts only once the server has said that it waits, however slow the machine: a start
    // after a fixed pause could come before the server's first try and prove nothing. The
    // harness hands over a `Server` only once it listens, so its stderr is also copied to a
    // file to watch: bash replaces itself with prismd (the process the harness signals),
    // whose stderr goes through `tee` to that file and on to the harness.
    let early_log = logs.path().join("waiting");
    let options = Options {
        args: vec![
            "--database-url".into(),
            url.clone(),
            "--db-startup-wait".into(),
            "60s".into(),
        ],
        env: vec![(
            "PRISM_TEST_STDERR_COPY".into(),
            path_str(&early_log)?.into(),
        )],
        launcher: [
            "bash",
            "-c",
            r#"exec "$@" 2> >(exec tee -a -- "$PRISM_TEST_STDERR_COPY" >&2)"#,
            "bash",
        ]
        .map(String::from)
        .to_vec(),
    };
    let data_dir = dir.path().to_owned();
    let starting = std::thread::spawn(move || {
        Server::start_with(&data_dir, options).map_err(|err| err.to_string())
    });
    let waited = wait_for(
        "the server to say that the database is not reachable yet",
        Duration::from_secs(60),
        || async {
            Ok(std::fs::read_to_string(&early_log)
                .is_ok_and(|log| log.contains("not reachable yet")))
        },
    )
    .await;
    let restarted = waited.and_then(|()| cluster.start().map_err(AnyError::from));
    // Joined whatever happened: without the database the server gives up after its startup
    // wait, and the harness then kills it.
    let server = starting
        .join()
        .map_err(|_| "the thread starting the server panicked")?;
    restarted?;
    let server = server?;
    assert!(
        server.logs().contains("not reachable yet"),
        "{}",
        server.logs()
    );
    let (status, _) = server
        .post_json("/auth/refresh", &serde_json::json!({}))
        .await?;
    assert_eq!(status, 400, "the server answers");
    assert_eq!(
        status_of(&reqwest::Client::new(), server.url("/readyz")).await?,
        200
    );
    server.stop()?;
    drop(cluster);
    Ok(())
}
