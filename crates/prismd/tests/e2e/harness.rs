//! Starts real `prismd` processes on free ports and drives them over HTTP, plus the admin
//! commands against the same data directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const BIN: &str = env!("CARGO_BIN_EXE_prismd");

/// A running server process and everything it wrote to stderr.
pub struct Server {
    child: Child,
    pub base: String,
    /// `/metrics` on the separate listener, when started with `--metrics-listen`.
    pub metrics_url: Option<String>,
    data_dir: std::path::PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    /// The thread that reads stderr into `logs`; it ends when the pipe closes, that is when
    /// the process has exited, so joining it after `wait` yields the complete log.
    reader: Option<JoinHandle<()>>,
    pub http: reqwest::Client,
}

/// Options for starting a server.
#[derive(Default, Clone)]
pub struct Options {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A command that runs `prismd` (its arguments follow), for example `nsenter` into a
    /// mount namespace; empty runs it directly.
    pub launcher: Vec<String>,
}

impl Server {
    pub fn start(data_dir: &Path) -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_with(data_dir, Options::default())
    }

    pub fn start_with(
        data_dir: &Path,
        options: Options,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let mut command = match options.launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&options.args)
            .env_remove("PRISMD_LOG")
            .env("PRISMD_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let mut child = command.spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = mpsc::channel();
        let metrics_url = Arc::new(Mutex::new(None));
        let metrics_url_sink = metrics_url.clone();
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            // Up to white space (text log) or the closing quote (JSON log).
            let url_after = |line: &str, marker: &str| {
                line.split(marker).nth(1).map(|rest| {
                    rest.chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect()
                })
            };
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // The metrics listener is logged before the main one.
                if let Some(url) = url_after(&line, "metrics served at ")
                    && let Ok(mut slot) = metrics_url_sink.lock()
                {
                    *slot = Some(url);
                }
                if let Some(url) = url_after(&line, "listening on ") {
                    let _ = address_tx.send(url);
                }
                if let Ok(mut logs) = sink.lock() {
                    logs.push(line);
                }
            }
        });
        let base = match address_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                // Killed and reaped, so that the reader has every line before they are shown.
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                let logs = logs.lock().map(|l| l.join("\n")).unwrap_or_default();
                return Err(format!("prismd did not start; its log:\n{logs}").into());
            }
        };
        let metrics_url = metrics_url
            .lock()
            .map(|url| url.clone())
            .unwrap_or_default();
        Ok(Self {
            child,
            base,
            metrics_url,
            data_dir: data_dir.to_owned(),
            logs,
            reader: Some(reader),
            http: reqwest::Client::new(),
        })
    }

    /// Everything the server has logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// SIGTERM, then waits; returns the complete log. Fails unless the exit was clean.
    pub fn stop(mut self) -> Result<String, Box<dyn std::error::Error>> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        assert!(status.success(), "kill failed");
        let exit = self.child.wait()?;
        let logs = self.complete_logs()?;
        assert!(exit.success(), "prismd exited with {exit:?}; log:\n{logs}");
        Ok(logs)
    }

    /// SIGKILL: no graceful shutdown, no final writes. Returns the log.
    pub fn kill_hard(mut self) -> Result<String, Box<dyn std::error::Error>> {
        self.child.kill()?;
        self.child.wait()?;
        self.complete_logs()
    }

    /// The whole log of an exited process: waits for the reader to take the last lines.
    fn complete_logs(&mut self) -> Result<String, Box<dyn std::error::Error>> {
        if let Some(reader) = self.reader.take() {
            reader.join().map_err(|_| "the log reader panicked")?;
        }
        Ok(self.logs())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (has not exited for any reason).
    pub fn is_running(&mut self) -> Result<bool, std::io::Error> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Waits for the process to exit by itself, up to `limit`; returns whether it exited
    /// successfully, or `None` if it was still running (then it is killed).
    pub fn wait_exit(
        mut self,
        limit: Duration,
    ) -> Result<Option<bool>, Box<dyn std::error::Error>> {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status.success()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(None)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `POST /auth/refresh` with a JSON body; returns status and JSON body.
    pub async fn refresh(&self, refresh_token: &str) -> Result<(u16, Value), reqwest::Error> {
        let body = serde_json::json!({ "refresh_token": refresh_token });
        self.post_json("/auth/refresh", &body).await
    }

    /// Refreshes and returns the access token, failing the test on anything but 200.
    pub async fn access_token(
        &self,
        refresh_token: &str,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let (status, body) = self.refresh(refresh_token).await?;
        assert_eq!(status, 200, "refresh failed: {body}");
        Ok(body["access_token"]
            .as_str()
            .ok_or("no access_token")?
            .to_owned())
    }

    pub async fn revoke(&self, refresh_token: &str) -> Result<(u16, Value), reqwest::Error> {
        let body = serde_json::json!({ "refresh_token": refresh_token });
        self.post_json("/auth/revoke", &body).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value), reqwest::Error> {
        answer(self.http.post(self.url(path)).json(body)).await
    }

    /// Posts an HTML form (as the OAuth endpoints take it); returns status and JSON body.
    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> Result<(u16, Value), reqwest::Error> {
        answer(self.http.post(self.url(path)).form(form)).await
    }

    /// Sends raw bytes with the given content type; returns status and body text.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(u16, String), reqwest::Error> {
        let mut request = self.http.post(self.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// `POST /api` with a bearer token; returns status, `WWW-Authenticate` and JSON body.
    pub async fn graphql(
        &self,
        bearer: Option<&str>,
        query: &str,
    ) -> Result<(u16, Option<String>, Value), reqwest::Error> {
        let mut request = self
            .http
            .post(self.url("/api"))
            .json(&serde_json::json!({ "query": query }));
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((
            status,
            challenge,
            response.json().await.unwrap_or(Value::Null),
        ))
    }

    /// Refreshes until the answer is no longer 200, for up to [`CHANGE_REACH_BOUND`]: a
    /// change made by an admin command (another process) reaches a running server through
    /// its change feed, not within the command.
    pub async fn refresh_after_change(
        &self,
        refresh_token: &str,
    ) -> Result<(u16, Value), reqwest::Error> {
        let deadline = std::time::Instant::now() + CHANGE_REACH_BOUND;
        loop {
            let (status, body) = self.refresh(refresh_token).await?;
            if status != 200 || std::time::Instant::now() > deadline {
                return Ok((status, body));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Server::whoami`] until the access token no longer works, for up to
    /// [`CHANGE_REACH_BOUND`].
    pub async fn whoami_after_change(
        &self,
        access: &str,
    ) -> Result<Result<String, u16>, reqwest::Error> {
        let deadline = std::time::Instant::now() + CHANGE_REACH_BOUND;
        loop {
            let answer = self.whoami(access).await?;
            if answer.is_err() || std::time::Instant::now() > deadline {
                return Ok(answer);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The email `authenticatedUser` reports for `access`, or the HTTP status on failure.
    pub async fn whoami(&self, access: &str) -> Result<Result<String, u16>, reqwest::Error> {
        let (status, _, body) = self
            .graphql(Some(access), "{ authenticatedUser { email } }")
            .await?;
        Ok(match body["data"]["authenticatedUser"]["email"].as_str() {
            Some(email) if status == 200 => Ok(email.to_owned()),
            _ => Err(status),
        })
    }
}

/// Sends `request`; returns the status and the JSON body (`null` when it is not JSON).
async fn answer(request: reqwest::RequestBuilder) -> Result<(u16, Value), reqwest::Error> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A generous bound for a change committed by another process to reach a running server
/// (SQLite: the 100 ms audit-log poll; PostgreSQL: NOTIFY). Not a speed claim: a correctness
/// deadline, far above the expected delay so a loaded CI machine does not fail the test.
pub const CHANGE_REACH_BOUND: Duration = Duration::from_secs(10);

/// Runs an admin command against `data_dir`.
pub fn prismd(data_dir: &Path, args: &[&str]) -> Result<Output, std::io::Error> {
    prismd_with_stdin(data_dir, args, "")
}

pub fn prismd_with_stdin(
    data_dir: &Path,
    args: &[&str],
    stdin: &str,
) -> Result<Output, std::io::Error> {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("PRISMD_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    child.wait_with_output()
}

/// Runs an admin command that must succeed; returns its trimmed stdout.
pub fn admin_ok(data_dir: &Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let output = prismd(data_dir, args)?;
    if !output.status.success() {
        return Err(format!(
            "prismd {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// Adds a user and mints a refresh token for them.
pub fn user_with_token(data_dir: &Path, email: &str) -> Result<String, Box<dyn std::error::Error>> {
    admin_ok(
        data_dir,
        &["users", "add", "--email", email, "--role", "Integrator"],
    )?;
    admin_ok(data_dir, &["tokens", "create", "--email", email])
}

pub fn temp_dir() -> Result<tempfile::TempDir, std::io::Error> {
    tempfile::Builder::new().prefix("prismd-test-").tempdir()
}

/// `PRAGMA integrity_check` of the SQLite database in `data_dir`, opened read-only.
pub async fn sqlite_integrity(data_dir: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let url = format!("sqlite://{}?mode=ro", data_dir.join("prismd.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await?;
    let (result,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(result)
}

/// A page the browser sign-in form answered with.
pub struct SignInPage {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
    /// The CSRF value the form was posted with, as its cookie and its `csrf` field.
    pub csrf: String,
}

impl SignInPage {
    async fn read(response: reqwest::Response, csrf: String) -> reqwest::Result<Self> {
        Ok(Self {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await?,
            csrf,
        })
    }

    /// The value of the cookie `name` that the page sets.
    pub fn cookie(&self, name: &str) -> Option<String> {
        set_cookie(&self.headers, name)
    }

    /// Query parameter `name` of the `Location` this page redirects to.
    pub fn location_param(&self, name: &str) -> Option<String> {
        let location = self.headers.get("location")?.to_str().ok()?;
        query_param(&url::Url::parse(location).ok()?, name)
    }
}

/// Query parameter `name` of `url`, decoded.
pub fn query_param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find_map(|(key, value)| (key == name).then(|| value.into_owned()))
}

/// An HTTP client as a browser sending `user_agent`, except that it does not follow redirects
/// (the tests look at them).
pub fn browser(user_agent: &str) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(user_agent)
        .build()
}

/// The value of the cookie `name` that a response sets.
pub fn set_cookie(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .and_then(|rest| rest.split(';').next())
        .map(str::to_owned)
}

/// The redirect URI of the CLI's browser sign-in in these tests.
pub const REDIRECT_URI: &str = "http://127.0.0.1:59400/callback";

/// The `/authorize` query of a browser sign-in by the CLI's client (a valid S256 challenge
/// shape; the tests that use it never redeem the code).
pub fn authorize_query() -> Vec<(&'static str, String)> {
    authorize_query_for("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
}

/// The `/authorize` query of a browser sign-in with the PKCE `code_challenge` given.
pub fn authorize_query_for(code_challenge: &str) -> Vec<(&'static str, String)> {
    vec![
        ("response_type", "code".into()),
        ("client_id", "prism-cli".into()),
        ("redirect_uri", REDIRECT_URI.into()),
        ("scope", "openid offline_access".into()),
        ("state", "s1".into()),
        ("code_challenge", code_challenge.into()),
        ("code_challenge_method", "S256".into()),
    ]
}

/// A PKCE pair: a fresh random `code_verifier` and its S256 `code_challenge`.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Result<Self, Box<dyn std::error::Error>> {
        use base64::Engine as _;
        use ring::rand::SecureRandom as _;
        let mut random = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| "no randomness")?;
        let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let verifier = encode(&random);
        let challenge =
            encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
        Ok(Self {
            verifier,
            challenge,
        })
    }
}

/// Redeems an authorization code of the CLI's client at `/oauth/token` (the
/// `authorization_code` grant); returns status and JSON body.
pub async fn redeem_code(
    server: &Server,
    code: &str,
    code_verifier: &str,
    redirect_uri: &str,
) -> Result<(u16, Value), reqwest::Error> {
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", "prism-cli"),
        ("code_verifier", code_verifier),
        ("code", code),
        ("redirect_uri", redirect_uri),
    ];
    server.post_form("/oauth/token", &form).await
}

/// Opens the sign-in form (for its CSRF cookie) and posts `email` / `password` to it, as a
/// browser sending `user_agent` would; redirects are not followed (303 on success).
pub async fn browser_sign_in(
    server: &Server,
    email: &str,
    password: &str,
    user_agent: &str,
) -> Result<SignInPage, Box<dyn std::error::Error>> {
    browser_sign_in_with(server, &authorize_query(), email, password, user_agent).await
}

/// [`browser_sign_in`] with the `/authorize` query given (see [`authorize_query_for`]).
pub async fn browser_sign_in_with(
    server: &Server,
    query: &[(&'static str, String)],
    email: &str,
    password: &str,
    user_agent: &str,
) -> Result<SignInPage, Box<dyn std::error::Error>> {
    browser_sign_in_carrying(server, query, email, password, user_agent, None).await
}

/// [`browser_sign_in_with`] from a browser that also sends the cookie `carried`
/// (`name=value`), for example a device cookie from an earlier sign-in.
pub async fn browser_sign_in_carrying(
    server: &Server,
    query: &[(&'static str, String)],
    email: &str,
    password: &str,
    user_agent: &str,
    carried: Option<&str>,
) -> Result<SignInPage, Box<dyn std::error::Error>> {
    let http = browser(user_agent)?;
    let form_page = http
        .get(server.url("/authorize"))
        .query(query)
        .send()
        .await?;
    let csrf = set_cookie(form_page.headers(), "prism_csrf").ok_or("no prism_csrf cookie")?;
    let mut form = query.to_vec();
    form.extend([
        ("csrf", csrf.clone()),
        ("email", email.to_owned()),
        ("password", password.to_owned()),
    ]);
    let cookies = match carried {
        Some(carried) => format!("prism_csrf={csrf}; {carried}"),
        None => format!("prism_csrf={csrf}"),
    };
    let response = http
        .post(server.url("/authorize"))
        .header("cookie", cookies)
        .form(&form)
        .send()
        .await?;
    Ok(SignInPage::read(response, csrf).await?)
}

/// Opens the device page for `user_code` (for its CSRF cookie) and posts `email` / `password`
/// with "approve", as a browser sending `user_agent` would.
pub async fn device_sign_in(
    server: &Server,
    user_code: &str,
    email: &str,
    password: &str,
    user_agent: &str,
) -> Result<SignInPage, Box<dyn std::error::Error>> {
    let http = browser(user_agent)?;
    let page = http
        .get(server.url("/device"))
        .query(&[("user_code", user_code)])
        .send()
        .await?;
    let csrf =
        set_cookie(page.headers(), "prism_device_csrf").ok_or("no prism_device_csrf cookie")?;
    let response = http
        .post(server.url("/device"))
        .header("cookie", format!("prism_device_csrf={csrf}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("user_code", user_code),
            ("email", email),
            ("password", password),
            ("action", "approve"),
        ])
        .send()
        .await?;
    Ok(SignInPage::read(response, csrf).await?)
}

/// Waits until `answered` reaches `count`: for a load that the test's own tasks put on a
/// server to get going. The deadline is generous (120 s), not a speed claim.
pub async fn until_answered(answered: &AtomicUsize, count: usize) -> TestResult {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let so_far = answered.load(Ordering::SeqCst);
        if so_far >= count {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("the load never got going: {so_far} of {count} answers").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `POST /api` with a bearer token, a query and its variables; the HTTP status and JSON body.
pub async fn api(
    server: &Server,
    access: &str,
    query: &str,
    variables: Value,
) -> Result<(u16, Value), reqwest::Error> {
    let request = server
        .http
        .post(server.url("/api"))
        .header("authorization", format!("Bearer {access}"))
        .json(&serde_json::json!({ "query": query, "variables": variables }));
    answer(request).await
}

/// The claims of a JWT: its payload, base64url-decoded (the signature is not checked).
pub fn jwt_claims(token: &str) -> Result<Value, Box<dyn std::error::Error>> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).ok_or("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// `POST /auth/refresh` with a `scope` when given; status and JSON body.
pub async fn refresh_with_scope(
    server: &Server,
    refresh_token: &str,
    scope: Option<&str>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut body = serde_json::json!({ "refresh_token": refresh_token });
    if let Some(scope) = scope {
        body["scope"] = Value::from(scope);
    }
    server.post_json("/auth/refresh", &body).await
}

/// `POST /oauth/token` with the official client's refresh grant, and a `scope` when given;
/// status and JSON body.
pub async fn oauth_refresh(
    server: &Server,
    refresh_token: &str,
    scope: Option<&str>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", "prism-cli"),
        ("refresh_token", refresh_token),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    server.post_form("/oauth/token", &form).await
}

/// Signs the browser session `session` (`prism_session=...`) out as a person does: `GET
/// /logout` (with `returnTo`, if given) shows the sign-out button, whose form (its CSRF token
/// and `returnTo`) is posted back. The POST's response.
pub async fn sign_out(
    server: &Server,
    http: &reqwest::Client,
    session: &str,
    return_to: Option<&str>,
) -> Result<reqwest::Response, Box<dyn std::error::Error>> {
    let mut request = http.get(server.url("/logout")).header("cookie", session);
    if let Some(target) = return_to {
        request = request.query(&[("returnTo", target)]);
    }
    let page = request.send().await?;
    if page.status().as_u16() != 200 {
        return Err(format!("GET /logout answered {}", page.status()).into());
    }
    let csrf_cookie = set_cookie(page.headers(), "prism_logout_csrf")
        .ok_or("the sign-out page set no CSRF cookie")?;
    let html = page.text().await?;
    let field = |name: &str| {
        html.split(&format!("name=\"{name}\" value=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(|value| value.replace("&amp;", "&"))
    };
    let csrf = field("csrf").ok_or("no csrf field on the sign-out page")?;
    let mut form = vec![("csrf", csrf)];
    if let Some(target) = field("returnTo") {
        form.push(("returnTo", target));
    }
    Ok(http
        .post(server.url("/logout"))
        .header(
            "cookie",
            format!("{session}; prism_logout_csrf={csrf_cookie}"),
        )
        .form(&form)
        .send()
        .await?)
}
