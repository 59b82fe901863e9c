//! Choosing the organization (tenant) at login, and which tenant later refreshes ask for.
//!
//! `prismd` gives an identity one organization and refuses a refresh for any other tenant with
//! `access_denied`, which is enough to test `PRISMATIC_TENANT_ID` against the real server. The
//! prompt needs more than one organization: a small plain-HTTP stand-in at `PRISMATIC_URL`
//! answers `ListUserTenants` with the real organization plus two made-up ones and passes every
//! other request to the real server (the auth domain, and so the login and the refreshes, stay
//! the real `prismd`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::harness::{Home, PRISM, Res, Server, TestResult, fails, fake_jwt, ok, run, stderr};
use crate::login::sign_in;

/// A `prism login --url` under way.
struct Login {
    child: Child,
    out: BufReader<ChildStdout>,
    url: String,
}

/// Starts `prism login --url --print-requests` with `envs`, `answer` piped to stdin (then end
/// of input), and reads the authorize URL it prints.
fn start(
    home: &Home,
    prismatic_url: &str,
    ca: &Path,
    envs: &[(&str, &str)],
    answer: &str,
) -> Res<Login> {
    let mut child = Command::new(PRISM)
        .args(["login", "--url", "--print-requests"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.dir.path())
        .env("PRISMATIC_URL", prismatic_url)
        .env("NODE_EXTRA_CA_CERTS", ca)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    stdin.write_all(answer.as_bytes())?;
    drop(stdin);
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut url = String::new();
    out.read_line(&mut url)?;
    Ok(Login {
        child,
        out,
        url: url.trim().to_owned(),
    })
}

/// Signs in as the Owner, follows the redirect to `prism`, waits for it: `(success, stdout
/// after the URL, stderr)`.
fn finish(server: &Server, login: Login) -> Res<(bool, String, String)> {
    let Login {
        child,
        mut out,
        url,
    } = login;
    let location = sign_in(server, &url, "owner@localhost", &server.owner_password()?)?;
    ureq::get(&location).call()?;
    let output = child.wait_with_output()?;
    let mut rest = String::new();
    out.read_to_string(&mut rest)?;
    Ok((
        output.status.success(),
        rest,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `(tenant ID, organization name)` of the Owner, from `prism me`.
fn owner_tenant(server: &Server, home: &Home) -> Res<(String, String)> {
    let me = ok(home
        .prism(server)
        .arg("me")
        .env("PRISM_REFRESH_TOKEN", server.owner_token()?))?;
    let line = |prefix: &str| {
        me.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
            .ok_or_else(|| format!("no '{prefix}' in: {me}"))
    };
    Ok((line("Tenant ID: ")?, line("Organization: ")?))
}

/// The refresh form's field names as `--print-requests` shows them.
const REFRESH_WITH_TENANT: &str = "form fields: grant_type, client_id, refresh_token, tenant_id";

#[test]
fn prismatic_tenant_id_chooses_at_login_and_profiles_keep_their_tenant() -> TestResult {
    let server = Server::start()?;
    let home = Home::new()?;
    let (tenant, _) = owner_tenant(&server, &home)?;
    let ca = server.ca();

    // A tenant the identity is not a member of: the official client's message, nothing saved.
    let login = start(
        &home,
        &server.base,
        &ca,
        &[("PRISMATIC_TENANT_ID", "t-elsewhere")],
        "",
    )?;
    let (success, _, err) = finish(&server, login)?;
    assert!(!success, "{err}");
    assert!(err.contains(REFRESH_WITH_TENANT), "{err}");
    assert!(
        err.contains("Error: Access denied for tenant ID 't-elsewhere'. "),
        "{err}"
    );
    assert!(err.contains("Nothing was saved"), "{err}");
    assert!(!home.config().exists());

    // Its own tenant: refreshed with it, saved, no prompt.
    let login = start(
        &home,
        &server.base,
        &ca,
        &[("PRISMATIC_TENANT_ID", tenant.as_str())],
        "",
    )?;
    let (success, out, err) = finish(&server, login)?;
    assert!(success, "{err}");
    assert_eq!(out.trim(), "Logged in to 'default'.");
    assert!(err.contains(REFRESH_WITH_TENANT), "{err}");
    assert!(!err.contains("organizations"), "no prompt: {err}");
    assert_eq!(
        home.read_config()?["profiles"]["default"]["tenantId"],
        tenant.as_str()
    );

    // Later refreshes of the profile send its tenantId; PRISMATIC_TENANT_ID does not override
    // it (as in the official client), it only warns.
    let mut config = home.read_config()?;
    config["profiles"]["default"]["accessToken"] = fake_jwt(1).into();
    home.write_config(&serde_norway::to_string(&config)?, 0o600)?;
    let output = run(home
        .prism(&server)
        .args(["me", "--print-requests"])
        .env("PRISMATIC_TENANT_ID", "t-elsewhere"));
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(err.contains(REFRESH_WITH_TENANT), "{err}");
    assert!(
        err.contains(
            "Warning: PRISMATIC_TENANT_ID ('t-elsewhere') is not used with profile 'default'"
        ),
        "{err}"
    );
    let me = String::from_utf8_lossy(&output.stdout);
    assert!(me.contains(&format!("Tenant ID: {tenant}")), "{me}");

    // Environment credentials send PRISMATIC_TENANT_ID.
    let err = fails(
        home.prism(&server)
            .arg("me")
            .env("PRISM_REFRESH_TOKEN", server.owner_token()?)
            .env("PRISMATIC_TENANT_ID", "t-elsewhere"),
    )?;
    assert!(
        err.contains("Error: Access denied for tenant ID 't-elsewhere'. "),
        "{err}"
    );
    Ok(())
}

/// The stand-in `PRISMATIC_URL`: `ListUserTenants` answered with `nodes`, anything else passed
/// to the real server.
struct TenantsProxy {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TenantsProxy {
    fn start(server: &Server, nodes: serde_json::Value) -> Res<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let upstream = server.base.clone();
        let agent = server.browser()?;
        let tenants = serde_json::json!({ "data": { "listUserTenants": { "nodes": nodes } } });
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = serve(stream, &agent, &upstream, &tenants);
                }
            }
        });
        Ok(Self {
            url,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for TenantsProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request (and closes the connection).
fn serve(
    mut stream: TcpStream,
    agent: &ureq::Agent,
    upstream: &str,
    tenants: &serde_json::Value,
) -> Res<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (mut length, mut authorization) = (0usize, None);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse()?,
                "authorization" => authorization = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8(body)?;
    let target = format!("{upstream}{path}");
    let (status, answer) = if method == "POST" && body.contains("ListUserTenants") {
        (200, tenants.to_string())
    } else if method == "POST" {
        let mut request = agent
            .post(&target)
            .header("Content-Type", "application/json")
            .header("Prismatic-Client", "prism");
        if let Some(authorization) = &authorization {
            request = request.header("Authorization", authorization);
        }
        let mut response = request.send(body.as_str())?;
        (
            response.status().as_u16(),
            response.body_mut().read_to_string()?,
        )
    } else {
        let mut response = agent.get(&target).call()?;
        (
            response.status().as_u16(),
            response.body_mut().read_to_string()?,
        )
    };
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    stream.flush()?;
    Ok(())
}

#[test]
fn login_prompts_for_an_organization_when_there_are_several() -> TestResult {
    let server = Server::start()?;
    let home = Home::new()?;
    let (tenant, org) = owner_tenant(&server, &home)?;
    let nodes = serde_json::json!([
        { "tenantId": "t-suspended", "url": "https://x", "orgName": "Closed Org", "awsRegion": "r", "systemSuspended": true },
        { "tenantId": &tenant, "url": "https://x", "orgName": &org, "awsRegion": "r", "systemSuspended": false },
        { "tenantId": "t-other", "url": "https://x", "orgName": "Other Org", "awsRegion": "r", "systemSuspended": false },
    ]);
    let proxy = TenantsProxy::start(&server, nodes)?;
    let ca = server.ca();
    let prompt = format!(
        "You are a member of 2 organizations; choose the one profile 'default' uses:\n  \
         1) {org} [{tenant}] (current)\n  2) Other Org [t-other]\n\
         Organization (number or tenant ID) [1]: "
    );

    // End of input: no choice, nothing saved.
    let (success, _, err) = finish(&server, start(&home, &proxy.url, &ca, &[], "")?)?;
    assert!(!success, "{err}");
    assert!(err.contains(&prompt), "{err}");
    assert!(
        err.contains("Error: No organization was chosen (end of input); nothing was saved."),
        "{err}"
    );
    assert!(!home.config().exists());

    // Choosing by number a tenant the server refuses: refreshed with it, access denied.
    let (success, _, err) = finish(&server, start(&home, &proxy.url, &ca, &[], "2\n")?)?;
    assert!(!success, "{err}");
    let after_prompt = err.split(&prompt).nth(1).ok_or("no prompt")?;
    assert!(after_prompt.contains(REFRESH_WITH_TENANT), "{err}");
    assert!(
        after_prompt.contains("Error: Access denied for tenant ID 't-other'. "),
        "{err}"
    );
    assert!(!home.config().exists());

    // Choosing by tenant ID: refreshed with it, checked with whoami, saved.
    let answer = format!("{tenant}\n");
    let (success, out, err) = finish(&server, start(&home, &proxy.url, &ca, &[], &answer)?)?;
    assert!(success, "{err}");
    assert_eq!(out.trim(), "Logged in to 'default'.");
    let after_prompt = err.split(&prompt).nth(1).ok_or("no prompt")?;
    assert!(after_prompt.contains(REFRESH_WITH_TENANT), "{err}");
    assert!(after_prompt.contains("query whoami"), "{err}");
    let profile = &home.read_config()?["profiles"]["default"];
    assert_eq!(profile["tenantId"], tenant.as_str());
    assert_eq!(profile["prismaticUrl"], proxy.url.as_str());
    let me = ok(home
        .bare()
        .arg("me")
        .env("PRISMATIC_URL", &proxy.url)
        .env("SSL_CERT_FILE", &ca))?;
    assert!(me.contains(&format!("Tenant ID: {tenant}")), "{me}");
    Ok(())
}
