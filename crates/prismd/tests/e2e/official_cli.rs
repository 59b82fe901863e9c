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
    *installed = Some(bin.clone());
    Ok(bin)
}

/// Runs the official client in environment mode with a fresh HOME, trusting the dev CA.
fn prism(
    bin: &Path,
    server: &Server,
    home: &Path,
    refresh_token: &str,
    args: &[&str],
) -> Result<Output, std::io::Error> {
    Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("PRISMATIC_URL", &server.base)
        .env("PRISM_REFRESH_TOKEN", refresh_token)
        .env("NODE_EXTRA_CA_CERTS", server_ca(server))
        .output()
}

fn server_ca(server: &Server) -> PathBuf {
    server.data_dir().join("ca.pem")
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

    // A revoked token: the client fails and says so, with a non-zero exit.
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
    Ok(())
}

/// `POST /api` with curl over the dev TLS.
fn curl_api(
    server: &Server,
    access: &str,
) -> Result<(u16, String, serde_json::Value), Box<dyn std::error::Error>> {
    let output = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(server_ca(server))
        .args(["-H", "Content-Type: application/json", "-H"])
        .arg(format!("Authorization: Bearer {access}"))
        .args(["--data", r#"{"query":"{ authenticatedUser { email } }"}"#])
        .arg(server.url("/api"))
        .output()?;
    let out = String::from_utf8(output.stdout)?;
    let (body, status) = out.rsplit_once('\n').ok_or("no status")?;
    Ok((
        status.trim().parse()?,
        body.to_owned(),
        serde_json::from_str(body)?,
    ))
}
