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

/// `POST /api` with curl over the dev TLS, asking for the user's email.
fn curl_api(
    server: &Server,
    access: &str,
) -> Result<(u16, String, serde_json::Value), Box<dyn std::error::Error>> {
    curl_graphql(server, access, "{ authenticatedUser { email } }")
}

/// `POST /api` with curl over the dev TLS: status, body and the body as JSON.
fn curl_graphql(
    server: &Server,
    access: &str,
    query: &str,
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
            .arg("--data")
            .arg(serde_json::json!({ "query": query }).to_string())
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

/// What the person does at the two places a login with several organizations asks: the login
/// page's chooser and the official client's own tenant prompt. `None`: that question must
/// not come up.
#[derive(Debug, Default, Clone, Copy)]
struct Choices<'a> {
    /// The organization (its name) whose button the browser clicks on the chooser.
    browser: Option<&'a str>,
    /// The organization (its name) picked in the client's "Select a tenant" prompt.
    prompt: Option<&'a str>,
}

/// What a [`browser_login`] saw.
#[derive(Debug, Default)]
struct LoginRun {
    /// The chooser's buttons, in page order: (member id, organization name).
    offered: Vec<(String, String)>,
    /// The client's tenant prompt as first drawn, one entry per choice in its order.
    prompt: Vec<PromptChoice>,
    /// Everything the client printed on stdout, terminal escape sequences removed.
    printed: String,
}

/// One line of the official client's tenant prompt (an `@inquirer/select` list).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PromptChoice {
    /// The organization's name, as `ListUserTenants` gave it (`orgName`).
    org: String,
    /// The prompt's cursor (`❯`) is on it.
    cursor: bool,
    /// Marked current (`✓`): the tenant the client's `whoami` reported after the code exchange.
    current: bool,
}

const PROMPT: &str = "Select a tenant:";

/// `text` without terminal control sequences (CSI: `ESC [` parameters and a final byte).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The choices of the last complete drawing of the tenant prompt in `printed` (plain text),
/// or `None` while none is complete. A drawing is the question line, one line per choice and
/// a blank line before the key help.
fn prompt_choices(printed: &str) -> Option<Vec<PromptChoice>> {
    let (_, drawing) = printed.rsplit_once(&format!("? {PROMPT}\n"))?;
    let (lines, _) = drawing.split_once("\n\n")?;
    lines
        .lines()
        .map(|line| {
            let cursor = line.starts_with('\u{276f}');
            let rest = line.trim_start_matches(['\u{276f}', ' ']);
            let current = rest.starts_with('\u{2713}');
            let rest = rest.trim_start_matches(['\u{2713}', ' ']);
            let (org, _) = rest.split_once(" - ")?;
            Some(PromptChoice {
                org: org.to_owned(),
                cursor,
                current,
            })
        })
        .collect()
}

/// Reads from the client's stdout (chunks, as they come) into `printed` until `done` holds
/// for the plain text, for at most a minute; `what` names the wait in the error.
fn read_until(
    chunks: &std::sync::mpsc::Receiver<Vec<u8>>,
    printed: &mut Vec<u8>,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> Result<String, Box<dyn std::error::Error>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = plain(&String::from_utf8_lossy(printed));
        if done(&text) {
            return Ok(text);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match chunks.recv_timeout(left) {
            Ok(chunk) => printed.extend_from_slice(&chunk),
            Err(_) => return Err(format!("{what}; the client printed: {text:?}").into()),
        }
    }
}

/// `prism login --url`, with headless Chromium (Debian's, driven by playwright-core) filling
/// the login page and, with [`Choices`], answering the login page's organization chooser and
/// the client's own tenant prompt (on its stdin: arrow keys and Enter, as a person would).
fn browser_login(
    bin: &Path,
    server: &Server,
    home: &Path,
    email: &str,
    password: &str,
    choices: Choices<'_>,
) -> Result<LoginRun, Box<dyn std::error::Error>> {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let mut login = official(bin, server, home)
        .args(["login", "--url"])
        .stdin(if choices.prompt.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut keys = login.stdin.take();
    let mut stdout = login.stdout.take().ok_or("no stdout")?;
    let mut stderr = login.stderr.take().ok_or("no stderr")?;
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });
    // Raw chunks, not lines: a prompt's last line has no line end while it waits for keys.
    // The channel ends when the client's stdout closes, that is when it has exited.
    let (chunks_tx, chunks) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buffer) {
            if chunks_tx.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let authorize_line = |text: &str| {
        text.split_inclusive('\n')
            .find(|l| l.ends_with('\n') && l.contains("https://") && l.contains("/authorize?"))
            .map(str::to_owned)
    };
    let so_far = read_until(
        &chunks,
        &mut printed,
        "prism login printed no authorize URL",
        |text| authorize_line(text).is_some(),
    )?;
    let line = authorize_line(&so_far).unwrap_or_default();
    let url = line
        .find("https://")
        .and_then(|start| line[start..].split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
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
        .args(choices.browser)
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
    let mut run = LoginRun::default();
    let browser_said = String::from_utf8(browser.stdout)?;
    for line in browser_said.lines() {
        if let Some(choice) = line.strip_prefix("choice\t") {
            let (member, org) = choice.split_once('\t').ok_or("a choice line")?;
            run.offered.push((member.to_owned(), org.to_owned()));
        }
    }

    if let Some(wanted) = choices.prompt {
        let input = keys.as_mut().ok_or("no stdin")?;
        let drawn = read_until(
            &chunks,
            &mut printed,
            "the official client showed no tenant prompt",
            |text| prompt_choices(text).is_some(),
        )?;
        run.prompt = prompt_choices(&drawn).unwrap_or_default();
        let target = run.prompt.iter().position(|c| c.org == wanted);
        let cursor = run.prompt.iter().position(|c| c.cursor);
        let (Some(target), Some(cursor)) = (target, cursor) else {
            return Err(format!("no '{wanted}' or no cursor in the prompt: {drawn:?}").into());
        };
        // The list wraps around: down-arrows from the cursor to the wanted line. Enter only
        // once the prompt shows the cursor there.
        let downs = (target + run.prompt.len() - cursor) % run.prompt.len();
        input.write_all("\u{1b}[B".repeat(downs).as_bytes())?;
        input.flush()?;
        read_until(
            &chunks,
            &mut printed,
            "the prompt's cursor did not reach the wanted tenant",
            |text| {
                prompt_choices(text)
                    .is_some_and(|drawn| drawn.iter().position(|c| c.cursor) == Some(target))
            },
        )?;
        input.write_all(b"\r")?;
        input.flush()?;
    }
    drop(keys);

    // Everything else it prints, until it exits (its stdout closes).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match chunks.recv_timeout(left) {
            Ok(chunk) => printed.extend_from_slice(&chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                login.kill()?;
                login.wait()?;
                return Err(format!(
                    "prism login did not exit: {:?}",
                    plain(&String::from_utf8_lossy(&printed))
                )
                .into());
            }
        }
    }
    let status = login.wait()?;
    reader.join().map_err(|_| "the stdout reader panicked")?;
    let errors = errors.join().map_err(|_| "the stderr reader panicked")??;
    run.printed = plain(&String::from_utf8_lossy(&printed));
    assert!(
        status.success(),
        "prism login failed: {} {errors}",
        run.printed
    );
    assert!(
        run.printed.contains("Logged in to 'default'."),
        "{}",
        run.printed
    );
    if choices.prompt.is_none() {
        assert!(!run.printed.contains(PROMPT), "{}", run.printed);
    }
    Ok(run)
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
    let run = browser_login(
        &bin,
        &server,
        home.path(),
        "owner@localhost",
        &password,
        Choices::default(),
    )?;
    assert!(run.offered.is_empty() && run.prompt.is_empty(), "{run:?}");

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

/// An identity that is a member of two organizations signs in with the official client: the
/// login page's chooser picks one (in the browser), then the client itself lists the
/// identity's tenants, prompts, and the other one is picked there; it refreshes with that
/// `tenant_id`, and from then on the profile is in that organization.
#[tokio::test]
async fn official_cli_picks_one_of_two_organizations() -> TestResult {
    const EMAIL: &str = "dual@example.com";
    const PASSWORD: &str = "two organizations, one password";
    const ORG_B: &str = "Beta";
    let bin = official_prism()?;
    let dir = temp_dir()?;
    let home = temp_dir()?;
    // Access tokens that live less than the client's five-minute margin: every later command
    // refreshes first, with the profile's tenant_id, as the client does once a token is old.
    let server = Server::start_with(
        dir.path(),
        Options {
            args: ["--dev-tls", "--access-token-ttl", "4m"]
                .map(str::to_owned)
                .to_vec(),
            ..Options::default()
        },
    )?;
    let data = dir.path();
    let added = crate::harness::prismd_with_stdin(
        data,
        &[
            "users",
            "add",
            "--email",
            EMAIL,
            "--role",
            "Admin",
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    )?;
    assert!(added.status.success(), "{}", text(&added));
    let member_a = String::from_utf8(added.stdout)?.trim().to_owned();
    let orgs = admin_ok(data, &["orgs", "list"])?;
    let (tenant_a, org_a) = orgs
        .lines()
        .find_map(|line| {
            let (tenant, rest) = line.split_once("  ")?;
            let name = rest.strip_suffix("(default)")?.trim();
            Some((tenant.to_owned(), name.to_owned()))
        })
        .ok_or_else(|| format!("no default organization in {orgs:?}"))?;
    let tenant_b = admin_ok(data, &["orgs", "add", "--name", ORG_B])?;
    // The operator adds the same email to B: the existing identity, a member there at once.
    let member_b = admin_ok(
        data,
        &[
            "--tenant-id",
            &tenant_b,
            "users",
            "add",
            "--email",
            EMAIL,
            "--role",
            "Admin",
        ],
    )?;

    // The browser picks A on the login page; the client's prompt then picks B.
    let run = browser_login(
        &bin,
        &server,
        home.path(),
        EMAIL,
        PASSWORD,
        Choices {
            browser: Some(&org_a),
            prompt: Some(ORG_B),
        },
    )?;
    let mut offered: Vec<String> = run
        .offered
        .iter()
        .map(|(member, org)| format!("{org}={member}"))
        .collect();
    offered.sort();
    let mut expected = vec![
        format!("{org_a}={}", raw_id(&member_a)?),
        format!("{ORG_B}={}", raw_id(&member_b)?),
    ];
    expected.sort();
    assert_eq!(offered, expected, "the login page's chooser");
    let mut listed: Vec<&str> = run.prompt.iter().map(|c| c.org.as_str()).collect();
    listed.sort_unstable();
    let mut both = vec![org_a.as_str(), ORG_B];
    both.sort_unstable();
    assert_eq!(listed, both, "the client's prompt: {run:?}");
    let current: Vec<&str> = run
        .prompt
        .iter()
        .filter(|c| c.current)
        .map(|c| c.org.as_str())
        .collect();
    assert_eq!(
        current,
        [org_a.as_str()],
        "the client's whoami after the code exchange is the member chosen in the browser: {run:?}"
    );
    assert!(
        run.printed.contains(&format!("{PROMPT} {ORG_B}")),
        "the prompt's answer: {}",
        run.printed
    );

    // The profile is B's, and `prism me` says so.
    let config = std::fs::read_to_string(home.path().join(".config/prism/config.yml"))?;
    let tenant_in_profile = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("tenantId:").map(str::trim))
        .unwrap_or_default();
    assert_eq!(tenant_in_profile, tenant_b, "{config}");
    let me = ok_text(
        &prism_profile(&bin, &server, home.path(), &["me"])?,
        "prism me",
    )?;
    for line in [
        format!("Email: {EMAIL}"),
        format!("Organization: {ORG_B}"),
        format!("Tenant ID: {tenant_b}"),
        "Authentication: Profile".to_owned(),
    ] {
        assert!(me.contains(&line), "missing '{line}' in: {me}");
    }

    // A later command refreshes (the access token is under five minutes from expiry) with the
    // profile's tenant_id and stays in B.
    let access_field = || -> Result<String, Box<dyn std::error::Error>> {
        let config = std::fs::read_to_string(home.path().join(".config/prism/config.yml"))?;
        Ok(config
            .lines()
            .find_map(|l| l.trim().strip_prefix("accessToken:").map(str::trim))
            .unwrap_or_default()
            .to_owned())
    };
    let before = access_field()?;
    let printed = ok_text(
        &prism_profile(&bin, &server, home.path(), &["me:token"])?,
        "prism me:token",
    )?;
    let access = printed.trim();
    assert_eq!(access.split('.').count(), 3, "a JWT: {access}");
    assert_ne!(access, before, "me:token refreshed");
    assert_eq!(access, access_field()?, "the refreshed token was saved");
    let (status, body, answer) = curl_graphql(
        &server,
        access,
        "{ authenticatedUser { id email tenantId org { name } } }",
    )?;
    assert_eq!(status, 200, "{body}");
    let user = &answer["data"]["authenticatedUser"];
    assert_eq!(user["id"], member_b.as_str(), "{body}");
    assert_eq!(user["tenantId"], tenant_b.as_str(), "{body}");
    assert_eq!(user["org"]["name"], ORG_B, "{body}");

    // The client's refresh with tenant_id moved the session from A to B, in both trails.
    for tenant in [&tenant_a, &tenant_b] {
        let moved = admin_ok(
            data,
            &["audit", "--org", tenant, "--action", "session.moved"],
        )?;
        assert_eq!(moved.lines().count(), 1, "{tenant}: {moved}");
        let event: serde_json::Value = serde_json::from_str(&moved)?;
        assert_eq!(event["detail"]["from_tenant"], tenant_a.as_str(), "{moved}");
        assert_eq!(event["detail"]["to_tenant"], tenant_b.as_str(), "{moved}");
    }
    assert_no_update_check(&bin, &server, home.path())?;
    Ok(())
}

/// The inner id of a public id (`base64("User:<id>")`), as the chooser's buttons carry it.
fn raw_id(public: &str) -> Result<String, Box<dyn std::error::Error>> {
    use base64::Engine as _;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(public)?)?;
    Ok(decoded
        .split_once(':')
        .map(|(_, id)| id.to_owned())
        .ok_or_else(|| format!("not a public id: {public}"))?)
}
