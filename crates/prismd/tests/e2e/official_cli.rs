//! The official `prism` CLI (npm `@prismatic-io/prism`, pinned in tests/official-cli), unmodified,
//! against a real prismd over development TLS: the compatibility check nobody here wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use crate::harness::{Options, Server, TestResult, admin_ok, temp_dir, user_with_token};

static INSTALL: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Installs the pinned client once per test run (`npm ci` from the committed lock file) and
/// returns the path of its `prism` executable.
fn official_prism() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let mut installed = INSTALL.lock().map_err(|_| "install lock poisoned")?;
    if let Some(path) = installed.as_ref() {
        return Ok(path.clone());
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/official-cli");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("official-cli");
    let bin = dir.join("node_modules/.bin/prism");
    let lock = std::fs::read(source.join("package-lock.json"))?;
    let current = std::fs::read(dir.join("package-lock.json")).ok();
    if !bin.exists() || current.as_deref() != Some(lock.as_slice()) {
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(source.join("package.json"), dir.join("package.json"))?;
        std::fs::write(dir.join("package-lock.json"), &lock)?;
        let output = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("cannot run npm (scripts/test.sh installs Node.js): {e}"))?;
        if !output.status.success() {
            return Err(
                format!("npm ci failed: {}", String::from_utf8_lossy(&output.stderr)).into(),
            );
        }
    }
    // ES modules resolve `playwright-core` next to the script, so the driver runs from here.
    std::fs::copy(source.join("login.mjs"), dir.join("login.mjs"))?;
    *installed = Some(bin.clone());
    Ok(bin)
}

/// The official client with a clean environment: PATH, HOME, the server's URL and trust in
/// its dev CA, and no update check. The client is oclif's, whose update check
/// (`@oclif/plugin-warn-if-update-available`) would otherwise start a detached process that
/// asks the npm registry for newer versions: a request to the outside world from a test,
/// and a process that outlives it. That plugin skips the check when
/// `<BIN>_SKIP_NEW_VERSION_CHECK` is `1` or `true` (the bin is `prism`);
/// [`assert_no_update_check`] shows it held.
fn official(bin: &Path, server: &Server, home: &Path) -> Command {
    let mut command = Command::new(bin);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("PRISMATIC_URL", &server.base)
        .env("NODE_EXTRA_CA_CERTS", server_ca(server))
        .env("PRISM_SKIP_NEW_VERSION_CHECK", "1");
    command
}

/// The update check is oclif's init hook `@oclif/plugin-warn-if-update-available`, which logs
/// through the `debug` package: the hook's start and end under
/// `oclif:@oclif/plugin-warn-if-update-available:hooks:init` (by `@oclif/core`), and, under
/// `update-check`, why it refreshes and "spawning version refresh" right before it starts the
/// detached process; nothing under `update-check` when the check is skipped. One more run of
/// the client, with those namespaces on and everything else as in the test's runs but a HOME
/// of its own (no cached `version` there, so a check that is not skipped is certain to spawn),
/// must show on its stderr that the hook ran to its end and spawned nothing. Then the file
/// that the detached process writes first (`version` in the client's cache directory,
/// `$HOME/.cache/prism`) must not be in the test's HOME either.
fn assert_no_update_check(bin: &Path, server: &Server, home: &Path) -> TestResult {
    const HOOK: &str = "oclif:@oclif/plugin-warn-if-update-available:hooks:init";
    let fresh_home = temp_dir()?;
    let run = official(bin, server, fresh_home.path())
        .arg("--version")
        .env("DEBUG", format!("{HOOK},update-check"))
        .output()?;
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "prism --version failed: {}",
        text(&run)
    );
    // Without these the hook did not run (or logs elsewhere): the check below would be empty.
    assert!(log.contains(&format!("{HOOK} start")), "{log}");
    assert!(log.contains(&format!("{HOOK} done")), "{log}");
    assert!(
        !log.contains("update-check"),
        "the official client checked for updates: {log}"
    );
    let version_file = home.join(".cache/prism/version");
    assert!(
        !version_file.exists(),
        "the official client checked for updates: {} exists",
        version_file.display()
    );
    Ok(())
}

/// Runs the official client in environment mode with a fresh HOME, trusting the dev CA.
fn prism(
    bin: &Path,
    server: &Server,
    home: &Path,
    refresh_token: &str,
    args: &[&str],
) -> Result<Output, std::io::Error> {
    official(bin, server, home)
        .args(args)
        .env("PRISM_REFRESH_TOKEN", refresh_token)
        .output()
}

fn server_ca(server: &Server) -> PathBuf {
    server.data_dir().join("ca.pem")
}

/// `text` with every run of white space made one space.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn official_cli_environment_mode() -> TestResult {
    let bin = official_prism()?;
    let dir = temp_dir()?;
    let home = temp_dir()?;
    let server = Server::start_with(
        dir.path(),
        Options {
            args: vec!["--dev-tls".into()],
            ..Options::default()
        },
    )?;
    admin_ok(
        dir.path(),
        &[
            "users",
            "add",
            "--email",
            "ci@example.com",
            "--name",
            "CI Bot",
            "--role",
            "Admin",
        ],
    )?;
    let token = admin_ok(
        dir.path(),
        &["tokens", "create", "--email", "ci@example.com"],
    )?;

    let me = prism(&bin, &server, home.path(), &token, &["me"])?;
    let shown = text(&me);
    assert!(me.status.success(), "prism me failed: {shown}");
    for line in [
        "Name: CI Bot",
        "Email: ci@example.com",
        "Organization: My Organization",
        "Authentication: Environment",
    ] {
        assert!(shown.contains(line), "missing '{line}' in: {shown}");
    }
    assert!(
        shown.contains(&format!("Endpoint URL: {}", server.base)),
        "{shown}"
    );

    let access = prism(&bin, &server, home.path(), &token, &["me:token"])?;
    assert!(access.status.success(), "{}", text(&access));
    let access = String::from_utf8(access.stdout)?.trim().to_owned();
    assert_eq!(
        access.split('.').count(),
        3,
        "me:token must print a JWT: {access}"
    );
    let (status, _, body) = curl_api(&server, &access)?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["authenticatedUser"]["email"], "ci@example.com");

    let refresh = prism(
        &bin,
        &server,
        home.path(),
        &token,
        &["me:token", "--type", "refresh"],
    )?;
    assert!(refresh.status.success(), "{}", text(&refresh));
    assert_eq!(String::from_utf8(refresh.stdout)?.trim(), token);

    // Environment credentials are never written to disk.
    assert!(!home.path().join(".config/prism/config.yml").exists());

    // A revoked token: the client fails with a non-zero exit and says why.
    let revoked = user_with_token(dir.path(), "revoked@example.com")?;
    let status = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--cacert"])
        .arg(server_ca(&server))
        .args(["-H", "Content-Type: application/json", "--data"])
        .arg(format!(r#"{{"refresh_token":"{revoked}"}}"#))
        .arg(server.url("/auth/revoke"))
        .status()?;
    assert!(status.success());
    let denied = prism(&bin, &server, home.path(), &revoked, &["me"])?;
    assert!(
        !denied.status.success(),
        "a revoked token must not work: {}",
        text(&denied)
    );
    // The contract's words for an HTTP 401 (the refresh was refused, so the client has no
    // access token to send); the client wraps them to the terminal's width.
    let said = words(&text(&denied));
    assert!(
        said.contains("Not authenticated. Run 'prism login' or select another profile."),
        "a revoked token must be refused as not authenticated: {said}"
    );
    assert_no_update_check(&bin, &server, home.path())?;
    Ok(())
}

/// `POST /api` with curl over the dev TLS.
fn curl_api(
    server: &Server,
    access: &str,
) -> Result<(u16, String, serde_json::Value), Box<dyn std::error::Error>> {
    // A transport failure (curl's exit status, no HTTP status) is retried: under the whole
    // suite's load a TLS handshake was seen to fail now and then, and that is not what the
    // callers check. Any answer the server gives is taken as it is.
    let mut attempts = 0;
    let output = loop {
        attempts += 1;
        let output = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
            .arg(server_ca(server))
            .args(["-H", "Content-Type: application/json", "-H"])
            .arg(format!("Authorization: Bearer {access}"))
            .args(["--data", r#"{"query":"{ authenticatedUser { email } }"}"#])
            .arg(server.url("/api"))
            .output()?;
        if output.status.success() || attempts == 3 {
            break output;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let out = String::from_utf8(output.stdout)?;
    let (body, status) = out.rsplit_once('\n').ok_or("no status")?;
    let json = serde_json::from_str(body).map_err(|err| {
        format!(
            "POST /api answered {status} with a body that is not JSON ({err}): {body:?}; curl: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok((status.trim().parse()?, body.to_owned(), json))
}

/// The official client in profile mode (its config file under `home`).
fn prism_profile(
    bin: &Path,
    server: &Server,
    home: &Path,
    args: &[&str],
) -> Result<Output, std::io::Error> {
    official(bin, server, home).args(args).output()
}

fn ok_text(output: &Output, what: &str) -> Result<String, Box<dyn std::error::Error>> {
    if !output.status.success() {
        return Err(format!("{what} failed: {}", text(output)).into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `prism login --url`, with headless Chromium (Debian's, driven by playwright-core) filling
/// the login page.
fn browser_login(
    bin: &Path,
    server: &Server,
    home: &Path,
    email: &str,
    password: &str,
) -> TestResult {
    use std::io::{BufRead, BufReader, Read};
    let mut login = official(bin, server, home)
        .args(["login", "--url"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdout = login.stdout.take().ok_or("no stdout")?;
    let mut stderr = login.stderr.take().ok_or("no stderr")?;
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    // Ends when the client's stdout closes, that is when it has exited.
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let url = loop {
        let line = lines_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .map_err(|_| format!("prism login printed no authorize URL: {printed:?}"))?;
        if let Some(start) = line.find("https://")
            && line.contains("/authorize?")
        {
            break line[start..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        printed.push(line);
    };
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("client_id=prism-cli"),
        "{url}"
    );

    let install_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("official-cli");
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("official-cli-login-page.png");
    let browser = Command::new("node")
        .arg(install_dir.join("login.mjs"))
        .args([url.as_str(), email, password])
        .arg(&screenshot)
        .output()?;
    assert!(
        browser.status.success(),
        "browser login failed: {}",
        text(&browser)
    );
    assert!(
        std::fs::metadata(&screenshot)?.len() > 0,
        "no screenshot of the login page"
    );

    let status = login.wait()?;
    reader.join().map_err(|_| "the stdout reader panicked")?;
    let rest: Vec<String> = lines_rx.try_iter().collect();
    let errors = errors.join().map_err(|_| "the stderr reader panicked")??;
    assert!(status.success(), "prism login failed: {rest:?} {errors}");
    assert!(
        rest.iter().any(|l| l.contains("Logged in to 'default'.")),
        "{rest:?}"
    );
    Ok(())
}

#[tokio::test]
async fn official_cli_browser_login_and_user_management() -> TestResult {
    let bin = official_prism()?;
    let dir = temp_dir()?;
    let home = temp_dir()?;
    let server = Server::start_with(
        dir.path(),
        Options {
            args: vec!["--dev-tls".into()],
            ..Options::default()
        },
    )?;
    let password = std::fs::read_to_string(dir.path().join(prismd::INITIAL_PASSWORD_FILE))?
        .trim()
        .to_owned();
    browser_login(&bin, &server, home.path(), "owner@localhost", &password)?;

    let me = ok_text(
        &prism_profile(&bin, &server, home.path(), &["me"])?,
        "prism me",
    )?;
    assert!(
        me.contains("Email: owner@localhost") && me.contains("Authentication: Profile"),
        "{me}"
    );
    let config = std::fs::read_to_string(home.path().join(".config/prism/config.yml"))?;
    let field = |name: &str| {
        config
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    let (old_access, old_refresh) = (field("accessToken:"), field("refreshToken:"));
    assert!(old_refresh.starts_with("prism_rt_"), "{config}");

    let roles_run = prism_profile(
        &bin,
        &server,
        home.path(),
        &["organization:users:roles", "--output", "json", "-x"],
    )?;
    let roles = ok_text(&roles_run, "roles")?;
    let roles: serde_json::Value = serde_json::from_str(&roles)
        .map_err(|err| format!("roles output is not JSON ({err}): {}", text(&roles_run)))?;
    let integrator = roles
        .as_array()
        .and_then(|r| r.iter().find(|role| role["name"] == "Integrator"))
        .and_then(|role| role["id"].as_str())
        .ok_or_else(|| format!("no Integrator role in {roles}"))?
        .to_owned();

    let created = ok_text(
        &prism_profile(
            &bin,
            &server,
            home.path(),
            &[
                "organization:users:create",
                "-e",
                "new@example.com",
                "-r",
                &integrator,
                "-n",
                "New Person",
            ],
        )?,
        "users:create",
    )?;
    let new_id = created.trim().to_owned();
    assert!(!new_id.is_empty());
    let listed = ok_text(
        &prism_profile(
            &bin,
            &server,
            home.path(),
            &["organization:users:list", "--output", "json", "-x"],
        )?,
        "users:list",
    )?;
    assert!(
        listed.contains("new@example.com") && listed.contains("New Person"),
        "{listed}"
    );
    ok_text(
        &prism_profile(
            &bin,
            &server,
            home.path(),
            &["organization:users:delete", &new_id],
        )?,
        "users:delete",
    )?;
    let listed = ok_text(
        &prism_profile(
            &bin,
            &server,
            home.path(),
            &["organization:users:list", "--output", "json"],
        )?,
        "users:list",
    )?;
    assert!(!listed.contains("new@example.com"), "{listed}");

    let revoked = ok_text(
        &prism_profile(
            &bin,
            &server,
            home.path(),
            &["me:token:revoke", "--no-confirm"],
        )?,
        "me:token:revoke",
    )?;
    assert!(
        revoked.contains("All refresh tokens for your user have been revoked."),
        "{revoked}"
    );
    let (status, body) = curl_refresh(&server, &old_refresh)?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(curl_api(&server, &old_access)?.0, 401);

    // A non-admin cannot create users, and the client says why.
    admin_ok(
        dir.path(),
        &[
            "users",
            "add",
            "--email",
            "dev@example.com",
            "--role",
            "Integrator",
        ],
    )?;
    let dev_token = admin_ok(
        dir.path(),
        &["tokens", "create", "--email", "dev@example.com"],
    )?;
    let denied = prism(
        &bin,
        &server,
        home.path(),
        &dev_token,
        &[
            "organization:users:create",
            "-e",
            "x@example.com",
            "-r",
            &integrator,
        ],
    )?;
    assert!(!denied.status.success());
    assert!(
        text(&denied).contains("only Owners and Admins can add users"),
        "{}",
        text(&denied)
    );
    assert_no_update_check(&bin, &server, home.path())?;
    Ok(())
}

fn curl_refresh(
    server: &Server,
    refresh: &str,
) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let output = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(server_ca(server))
        .args(["-H", "Content-Type: application/json", "--data"])
        .arg(format!(r#"{{"refresh_token":"{refresh}"}}"#))
        .arg(server.url("/auth/refresh"))
        .output()?;
    let out = String::from_utf8(output.stdout)?;
    let (body, status) = out.rsplit_once('\n').ok_or("no status")?;
    Ok((status.trim().parse()?, body.to_owned()))
}
