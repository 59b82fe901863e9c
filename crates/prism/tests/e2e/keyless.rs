//! Keyless CI against a real server: `trust-policies:*`, and `me:token` exchanging OIDC tokens
//! (given, from a file, from `PRISM_OIDC_TOKEN`, or fetched from a stand-in for GitHub Actions)
//! on a machine with no prism config, with the server's refusals. The OIDC issuer is a small
//! plain-HTTP server in this process (prismd runs with `--oidc-allow-http-issuers`) serving
//! discovery and a JWKS with one Ed25519 key, and minting the tokens.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use crate::harness::{Home, Res, Server, TestResult, now, ok, run, stderr, stdout};

const AUDIENCE: &str = "https://prism.example/ci";
const SUBJECT: &str = "repo:acme/app:ref:refs/heads/main";
/// What the stand-in for GitHub Actions wants as `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
const REQUEST_TOKEN: &str = "gha-request-secret";
const KID: &str = "test-key-1";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A request the issuer served: path with query, and its Authorization header.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    authorization: Option<String>,
}

struct IssuerState {
    url: String,
    key: Ed25519KeyPair,
    serial: AtomicU64,
    seen: Mutex<Vec<Seen>>,
}

impl IssuerState {
    /// A signed EdDSA JWT with GitHub's usual claims, then `overrides` (null removes one).
    fn mint(&self, overrides: Value) -> String {
        let issued = now();
        let mut claims = json!({
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": SUBJECT,
            "ref": "refs/heads/main",
            "repository": "acme/app",
            "repository_id": "4242",
            "iat": issued,
            "nbf": issued,
            "exp": issued + 300,
            "jti": format!("jti-{}-{}", std::process::id(), self.serial.fetch_add(1, Ordering::SeqCst)),
        });
        if let (Some(claims), Some(overrides)) = (claims.as_object_mut(), overrides.as_object()) {
            for (key, value) in overrides {
                if value.is_null() {
                    claims.remove(key);
                } else {
                    claims.insert(key.clone(), value.clone());
                }
            }
        }
        let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": KID });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64(signature.as_ref()))
    }

    fn answer(&self, target: &str, headers: &BTreeMap<String, String>) -> (u16, Value) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        match path {
            "/.well-known/openid-configuration" => (
                200,
                json!({
                    "issuer": self.url,
                    "jwks_uri": format!("{}/jwks", self.url),
                    "id_token_signing_alg_values_supported": ["EdDSA"],
                }),
            ),
            "/jwks" => (
                200,
                json!({ "keys": [{
                    "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": KID,
                    "x": b64(self.key.public_key().as_ref()),
                }] }),
            ),
            // GitHub's ID token endpoint: bearer request token, audience in the query.
            "/gha/token" => {
                if headers.get("authorization").map(String::as_str)
                    != Some(&format!("bearer {REQUEST_TOKEN}"))
                {
                    return (403, json!({ "message": "Bad request token" }));
                }
                let audience = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("audience="))
                    .map(percent_decode);
                match audience {
                    Some(audience) => (
                        200,
                        json!({ "value": self.mint(json!({ "aud": audience })) }),
                    ),
                    None => (400, json!({ "message": "no audience" })),
                }
            }
            _ => (404, json!({ "message": "not found" })),
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The OIDC issuer and GitHub Actions stand-in, on a free loopback port until dropped.
struct Issuer {
    state: Arc<IssuerState>,
    stop: Arc<AtomicBool>,
    port: u16,
    thread: Option<JoinHandle<()>>,
}

impl Issuer {
    fn start() -> Res<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| "cannot generate an Ed25519 key")?;
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| "bad Ed25519 key")?;
        let state = Arc::new(IssuerState {
            url: format!("http://127.0.0.1:{port}"),
            key,
            serial: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let _ = serve(&state, stream);
                    }
                }
            })
        };
        Ok(Self {
            state,
            stop,
            port,
            thread: Some(thread),
        })
    }

    fn url(&self) -> &str {
        &self.state.url
    }

    fn mint(&self, overrides: Value) -> String {
        self.state.mint(overrides)
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .map(|seen| {
                seen.iter()
                    .filter(|s| s.target.starts_with(path))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One request per connection (`Connection: close`): GETs only, headers up to 16 KiB.
fn serve(state: &IssuerState, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") && buffer.len() < 16 * 1024 {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let head = String::from_utf8_lossy(&buffer).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    let headers: BTreeMap<String, String> = lines
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    if let Ok(mut seen) = state.seen.lock() {
        seen.push(Seen {
            target: target.clone(),
            authorization: headers.get("authorization").cloned(),
        });
    }
    let (status, body) = state.answer(&target, &headers);
    let body = body.to_string();
    let reason = if status == 200 { "OK" } else { "Error" };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// The claims of a JWT, unverified.
fn claims_of(jwt: &str) -> Res<Value> {
    let payload = jwt.split('.').nth(1).ok_or("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn json_rows(output: &str) -> Res<Vec<Value>> {
    let parsed: Value = serde_json::from_str(output)?;
    Ok(parsed.as_array().ok_or("not an array")?.clone())
}

/// The one line of a command that prints only a token or an id.
fn only_line(printed: &str) -> Res<String> {
    let line = printed.strip_suffix('\n').ok_or("no newline")?;
    if line.is_empty() || line.contains(char::is_whitespace) {
        return Err(format!("expected one word on one line, got {printed:?}").into());
    }
    Ok(line.to_owned())
}

/// A `prism` that must be refused: exit code 1, nothing on stdout, no secret on stderr, which
/// is returned.
fn refused(command: &mut assert_cmd::Command, secrets: &[&str]) -> Res<String> {
    let output = run(command);
    let err = stderr(&output);
    if output.status.code() != Some(1) || !output.stdout.is_empty() {
        return Err(format!(
            "prism should have been refused with 1 and no stdout but {:?}:\nstdout: {}\nstderr: {err}",
            output.status,
            stdout(&output),
        )
        .into());
    }
    assert!(err.starts_with("Error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for secret in secrets {
        assert!(!err.contains(secret), "a secret on stderr: {err}");
    }
    Ok(err)
}

/// `prism me:token` with the OIDC flags `args`, on `home` (no config); requires one access
/// token on stdout and nothing on stderr.
fn exchanged(home: &Home, server: &Server, args: &[&str]) -> Res<String> {
    let output = run(home.prism(server).arg("me:token").args(args));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stderr(&output), "");
    only_line(&stdout(&output))
}

/// Nothing in HOME: the exchange neither needs nor writes a config file.
fn untouched(home: &Home) -> Res<()> {
    let entries: Vec<_> = std::fs::read_dir(home.dir.path())?.collect();
    assert!(entries.is_empty(), "HOME was written: {entries:?}");
    Ok(())
}

#[test]
fn a_pipeline_exchanges_its_oidc_token_through_a_trust_policy() -> TestResult {
    let issuer = Issuer::start()?;
    let server = Server::start_with(&["--oidc-allow-http-issuers"])?;
    let owner = server.owner_token()?;
    let admin = Home::new()?;
    let as_owner = || {
        let mut command = admin.prism(&server);
        command.env("PRISM_REFRESH_TOKEN", &owner);
        command
    };

    // The service account the pipeline acts as, and a trust policy that names it by name.
    let roles = json_rows(&ok(as_owner().args([
        "organization:users:roles",
        "--output",
        "json",
    ]))?)?;
    let integrator = roles
        .iter()
        .find(|r| r["name"] == "Integrator")
        .and_then(|r| r["id"].as_str())
        .ok_or("no Integrator role")?
        .to_owned();
    only_line(&ok(as_owner().args([
        "service-accounts:create",
        "--name",
        "deployer",
        "--role",
        &integrator,
    ]))?)?;
    let rules = |name: &str, first: &str| -> Vec<String> {
        [
            "trust-policies:create",
            "--name",
            name,
            "--issuer",
            issuer.url(),
            "--audience",
            AUDIENCE,
            "--service-account",
            "deployer",
            "--claim",
            first,
            "--claim-glob",
            "ref=refs/heads/*",
            "--scope",
            "users:read",
            "--lifetime",
            "10m",
            "--max-token-age",
            "15m",
            "--description",
            "deploys from main",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    // A policy without a stable subject is refused with the field's reason.
    let err = refused(
        as_owner()
            .args(rules("loose", "repository=acme/app"))
            .args(["--claim-glob", "sub=repo:*"]),
        &[],
    )?;
    assert!(err.contains("conditions: "), "{err}");
    let policy = only_line(&ok(
        as_owner().args(rules("app-main", &format!("sub={SUBJECT}")))
    )?)?;

    let listed = json_rows(&ok(as_owner().args([
        "trust-policies:list",
        "-x",
        "--output",
        "json",
    ]))?)?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let row = &listed[0];
    assert_eq!(row["id"], policy.as_str(), "{row}");
    assert_eq!(row["name"], "app-main", "{row}");
    assert_eq!(row["issuer"], issuer.url(), "{row}");
    assert_eq!(row["audience"], AUDIENCE, "{row}");
    assert_eq!(
        row["conditions"],
        format!("sub={SUBJECT}, ref~refs/heads/*"),
        "{row}"
    );
    assert_eq!(row["serviceAccount"], "deployer", "{row}");
    assert_eq!(row["scopes"], "users:read", "{row}");
    assert_eq!(row["lifetime"], "10m", "{row}");
    assert_eq!(row["maxTokenAge"], "15m", "{row}");
    assert_eq!(row["enabled"], "true", "{row}");
    assert_eq!(row["lastUsedAt"], "", "{row}");
    assert_eq!(row["description"], "deploys from main", "{row}");
    let table = ok(as_owner().arg("trust-policies:list"))?;
    assert!(table.contains("app-main"), "{table}");

    // The pipeline: a machine with no prism config, only PRISMATIC_URL and the CA.
    let pipeline = Home::new()?;
    let oidc = issuer.mint(json!({}));
    let access = exchanged(&pipeline, &server, &["--oidc-token", &oidc])?;
    untouched(&pipeline)?;
    let claims = claims_of(&access)?;
    assert_eq!(claims["client_id"], "keyless", "{claims}");
    assert_eq!(claims["scope"], "users:read", "{claims}");
    let lifetime = claims["exp"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(claims["iat"].as_u64().unwrap_or(0));
    assert_eq!(lifetime, 600, "{claims}");
    // It works as the service account, within the policy's scope.
    let with_access = || {
        let mut command = pipeline.prism(&server);
        command.env("PRISM_ACCESS_TOKEN", &access);
        command
    };
    let users = ok(with_access().args(["organization:users:list", "--columns", "email"]))?;
    assert!(users.contains("owner@localhost"), "{users}");
    let err = refused(
        with_access().args(["service-accounts:create", "--name", "x", "--role", "y"]),
        &[&access],
    )?;
    assert!(err.contains("lacks the scope"), "{err}");
    let used = json_rows(&ok(as_owner().args([
        "trust-policies:list",
        "--output",
        "json",
    ]))?)?;
    assert_ne!(used[0]["lastUsedAt"], "", "{used:?}");

    // The same token again is a replay; a token of another branch fails its condition. The
    // refusal is the server's, and never shows the token.
    let err = refused(
        pipeline
            .prism(&server)
            .args(["me:token", "--oidc-token", &oidc]),
        &[&oidc],
    )?;
    assert!(err.contains("already exchanged"), "{err}");
    let tag = issuer.mint(json!({ "ref": "refs/tags/v1" }));
    let err = refused(
        pipeline
            .prism(&server)
            .args(["me:token", "--oidc-token", &tag]),
        &[&tag],
    )?;
    // The spec quotes the claim in backticks; prismd names it bare. Either names `ref`.
    assert!(
        err.contains("the claim ref does not match")
            || err.contains("the claim `ref` does not match"),
        "{err}"
    );
    let other = issuer.mint(json!({ "aud": "https://elsewhere.example" }));
    let err = refused(
        pipeline
            .prism(&server)
            .args(["me:token", "--oidc-token", &other]),
        &[&other],
    )?;
    assert!(err.contains("audience"), "{err}");

    // From PRISM_OIDC_TOKEN (with a trailing newline) and from a file; with the tenant named.
    let tenant = ok(as_owner().arg("me"))?
        .lines()
        .find_map(|l| l.strip_prefix("Tenant ID: "))
        .ok_or("no tenant")?
        .to_owned();
    let from_env = issuer.mint(json!({}));
    let output = run(pipeline
        .prism(&server)
        .args(["me:token", "--print-requests"])
        .env("PRISM_OIDC_TOKEN", format!("{from_env}\n"))
        .env("PRISMATIC_TENANT_ID", &tenant));
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = only_line(&stdout(&output))?;
    // --print-requests names the exchange and its fields, never either token.
    let shown = stderr(&output);
    assert!(shown.contains("/auth/exchange"), "{shown}");
    assert!(
        shown.contains("token, tenant_id") || shown.contains("tenant_id, token"),
        "{shown}"
    );
    assert!(
        !shown.contains(&from_env) && !shown.contains(&printed),
        "{shown}"
    );
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), format!("{}\n", issuer.mint(json!({}))))?;
    let path = file.path().to_string_lossy().into_owned();
    let narrowed = exchanged(
        &pipeline,
        &server,
        &[
            "--oidc-token-file",
            &path,
            "--tenant-id",
            &tenant,
            "--scope",
            "users:read",
        ],
    )?;
    assert_eq!(claims_of(&narrowed)?["tid"], tenant.as_str());
    untouched(&pipeline)?;

    // GitHub Actions: the token is fetched with the bearer request token and the audience.
    let in_actions = || {
        let mut command = pipeline.prism(&server);
        command
            .env(
                "ACTIONS_ID_TOKEN_REQUEST_URL",
                format!("{}/gha/token?api-version=2.0", issuer.url()),
            )
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", REQUEST_TOKEN);
        command
    };
    let output = run(in_actions().args(["me:token", "--oidc-audience", AUDIENCE]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stderr(&output), "");
    let from_actions = only_line(&stdout(&output))?;
    assert_eq!(claims_of(&from_actions)?["client_id"], "keyless");
    let fetched = issuer.seen("/gha/token");
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert_eq!(
        fetched[0].target,
        "/gha/token?api-version=2.0&audience=https%3A%2F%2Fprism.example%2Fci"
    );
    assert_eq!(
        fetched[0].authorization.as_deref(),
        Some(format!("bearer {REQUEST_TOKEN}").as_str())
    );
    // Without the audience there is nothing to ask GitHub for: a clear error.
    let err = refused(in_actions().arg("me:token"), &[REQUEST_TOKEN])?;
    assert!(err.contains("--oidc-audience"), "{err}");
    // A refused request token is GitHub's refusal, not the exchange's.
    let err = refused(
        in_actions()
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "wrong")
            .args(["me:token", "--oidc-audience", AUDIENCE]),
        &["wrong"],
    )?;
    assert!(err.contains("GitHub Actions refused"), "{err}");
    assert!(err.contains("Bad request token"), "{err}");

    // Disabling the policy ends the tokens it issued and accepts no more; enabling it again
    // accepts new ones.
    ok(as_owner().args(["trust-policies:update", &policy, "--disable"]))?;
    refused(with_access().args(["organization:users:list"]), &[&access])?;
    let fresh = issuer.mint(json!({}));
    let err = refused(
        pipeline
            .prism(&server)
            .args(["me:token", "--oidc-token", &fresh]),
        &[&fresh],
    )?;
    assert!(err.contains("no trust policy accepts tokens from"), "{err}");
    let renamed = only_line(&ok(as_owner().args([
        "trust-policies:update",
        &policy,
        "--enable",
        "--name",
        "app-main-2",
    ]))?)?;
    assert_eq!(renamed, policy);
    exchanged(
        &pipeline,
        &server,
        &["--oidc-token", &issuer.mint(json!({}))],
    )?;
    let err = refused(
        as_owner().args([
            "trust-policies:update",
            "00000000-0000-0000-0000-000000000000",
            "--disable",
        ]),
        &[],
    )?;
    assert!(err.contains("id: "), "{err}");

    // Deleted: gone from the list, and tokens of its issuer find no policy.
    let said = ok(as_owner().args(["trust-policies:delete", &policy]))?;
    assert!(said.contains("Deleted trust policy"), "{said}");
    let listed = json_rows(&ok(as_owner().args([
        "trust-policies:list",
        "--output",
        "json",
    ]))?)?;
    assert!(listed.is_empty(), "{listed:?}");
    let late = issuer.mint(json!({}));
    let err = refused(
        pipeline
            .prism(&server)
            .args(["me:token", "--oidc-token", &late]),
        &[&late],
    )?;
    assert!(err.contains("no trust policy accepts tokens from"), "{err}");
    Ok(())
}

#[test]
fn oidc_flags_are_checked_before_anything_is_sent() -> TestResult {
    let home = Home::new()?;
    let refuse = |args: &[&str], envs: &[(&str, &str)], expected: &str| -> TestResult {
        let mut command = home.bare();
        command
            .env("PRISMATIC_URL", "http://127.0.0.1:9")
            .arg("me:token")
            .args(args);
        for (name, value) in envs {
            command.env(name, value);
        }
        let err = refused(&mut command, &["a.b.c"])?;
        assert!(err.contains(expected), "{err}");
        Ok(())
    };
    refuse(
        &["--oidc-token", "a.b.c", "--type", "refresh"],
        &[],
        "no refresh token",
    )?;
    refuse(
        &["--oidc-audience", "x"],
        &[],
        "ACTIONS_ID_TOKEN_REQUEST_URL",
    )?;
    refuse(&["--scope", "users:read"], &[], "--oidc-token")?;
    refuse(&["--oidc-token", " "], &[], "empty")?;
    refuse(
        &["--oidc-token-file", "/nonexistent/token"],
        &[],
        "cannot read the OIDC token file",
    )?;
    // Both ways of giving a token at once is a usage error.
    let output = run(home.bare().args([
        "me:token",
        "--oidc-token",
        "a.b.c",
        "--oidc-token-file",
        "/x",
    ]));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    untouched(&home)?;
    Ok(())
}
