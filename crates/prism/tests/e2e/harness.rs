//! Starts a real `prismd --dev-tls` on a free port with a temp data dir, and runs our `prism`
//! with a clean environment and a temp HOME.
//!
//! `prismd` is a sibling binary of this workspace, not a dependency of `prism`, so cargo does
//! not build it for these tests. The harness runs the binary named by `PRISMD_BIN`:
//! `scripts/test.sh` builds `prismd` once, before any test runs, and exports it. Only without
//! `PRISMD_BIN` (a direct `cargo test -p prism`) does the harness build it itself, once per
//! test run, with `cargo build -p prismd` (the same cargo, profile and target directory as
//! this test; a no-op when it is up to date), and run it from next to `prism`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;
pub type TestResult = Res<()>;

pub const PRISM: &str = env!("CARGO_BIN_EXE_prism");

fn prismd_bin() -> Res<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        // Set but wrong is an error, not a reason to build another binary than the one meant.
        if let Some(path) = std::env::var_os("PRISMD_BIN").filter(|path| !path.is_empty()) {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(format!("PRISMD_BIN={} is not a file", path.display()))
            };
        }
        let prism = Path::new(PRISM);
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "-p", "prismd"]);
        if prism.components().any(|c| c.as_os_str() == "release") {
            build.arg("--release");
        }
        let output = build
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cargo build -p prismd failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(prism.with_file_name("prismd"))
    })
    .clone()
    .map_err(Into::into)
}

pub fn temp_dir() -> Res<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("prism-cli-test-")
        .tempdir()?)
}

/// A running `prismd serve --dev-tls`.
pub struct Server {
    child: Child,
    pub base: String,
    pub data: tempfile::TempDir,
    logs: Arc<Mutex<Vec<String>>>,
    /// The thread that reads stderr into `logs`; it ends when the process has exited (the
    /// pipe closes), so joining it after `wait` means every line is in.
    reader: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Res<Self> {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Res<Self> {
        // ureq is built without a crypto provider (the CLI hands aws-lc-rs to its agents);
        // the tests' own agents take the process default, installed by the first test.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let data = temp_dir()?;
        let mut child = Command::new(prismd_bin()?)
            .arg("--data-dir")
            .arg(data.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--dev-tls"])
            .args(args)
            .env_remove("PRISMD_LOG")
            .env("PRISMD_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = tx.send(url);
                }
                if let Ok(mut logs) = sink.lock() {
                    logs.push(line);
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                // Killed and reaped, so that the reader has every line before they are shown.
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                let logs = logs.lock().map(|l| l.join("\n")).unwrap_or_default();
                return Err(format!("prismd did not start:\n{logs}").into());
            }
        };
        Ok(Self {
            child,
            base,
            data,
            logs,
            reader: Some(reader),
        })
    }

    pub fn ca(&self) -> PathBuf {
        self.data.path().join("ca.pem")
    }

    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Runs `prismd <args>` against the data dir; returns trimmed stdout.
    pub fn admin(&self, args: &[&str]) -> Res<String> {
        let output = Command::new(prismd_bin()?)
            .arg("--data-dir")
            .arg(self.data.path())
            .args(args)
            .env_remove("PRISMD_LOG")
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(format!(
                "prismd {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }

    /// A refresh token for the first Owner.
    pub fn owner_token(&self) -> Res<String> {
        self.admin(&["tokens", "create", "--email", "owner@localhost"])
    }

    pub fn owner_password(&self) -> Res<String> {
        Ok(
            std::fs::read_to_string(self.data.path().join("initial-owner-password"))?
                .trim()
                .to_owned(),
        )
    }

    /// Adds a user with `role` and returns a refresh token for them.
    pub fn user_token(&self, email: &str, role: &str) -> Res<String> {
        self.admin(&["users", "add", "--email", email, "--role", role])?;
        self.admin(&["tokens", "create", "--email", email])
    }

    /// An HTTP client that trusts the dev CA, follows no redirects and keeps no cookies.
    pub fn browser(&self) -> Res<ureq::Agent> {
        let pem = std::fs::read(self.ca())?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
                _ => None,
            })
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::from(certs))
            .build();
        Ok(ureq::Agent::config_builder()
            .tls_config(tls)
            .max_redirects(0)
            .http_status_as_error(false)
            .build()
            .into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A temp HOME for `prism`, and the commands run in it.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Res<Self> {
        Ok(Self { dir: temp_dir()? })
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join(".config/prism/config.yml")
    }

    /// `prism` with only PATH, HOME, PRISMATIC_URL and the dev CA (as `SSL_CERT_FILE`) set.
    pub fn prism(&self, server: &Server) -> assert_cmd::Command {
        let mut command = self.bare();
        command
            .env("PRISMATIC_URL", &server.base)
            .env("SSL_CERT_FILE", server.ca());
        command
    }

    /// `prism` with only PATH and HOME set.
    pub fn bare(&self) -> assert_cmd::Command {
        let mut command = assert_cmd::Command::new(PRISM);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .timeout(Duration::from_secs(60));
        command
    }

    pub fn write_config(&self, yaml: &str, mode: u32) -> TestResult {
        use std::os::unix::fs::PermissionsExt;
        let path = self.config();
        std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
        std::fs::write(&path, yaml)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    pub fn read_config(&self) -> Res<serde_json::Value> {
        let text = std::fs::read_to_string(self.config())?;
        Ok(serde_norway::from_str(&text)?)
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs and returns the output, whatever the exit status.
pub fn run(command: &mut assert_cmd::Command) -> Output {
    command.output().unwrap_or_else(|e| Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
        stdout: Vec::new(),
        stderr: format!("could not run prism: {e}").into_bytes(),
    })
}

/// Runs, requires success, returns stdout.
pub fn ok(command: &mut assert_cmd::Command) -> Res<String> {
    let output = run(command);
    if !output.status.success() {
        return Err(format!(
            "prism failed ({:?}):\nstdout: {}\nstderr: {}",
            output.status,
            stdout(&output),
            stderr(&output)
        )
        .into());
    }
    Ok(stdout(&output))
}

/// Runs, requires failure with exit code 1, returns stderr.
pub fn fails(command: &mut assert_cmd::Command) -> Res<String> {
    let output = run(command);
    if output.status.code() != Some(1) {
        return Err(format!(
            "prism should have failed with 1 but {:?}:\nstdout: {}\nstderr: {}",
            output.status,
            stdout(&output),
            stderr(&output)
        )
        .into());
    }
    let err = stderr(&output);
    if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
        return Err(format!("prism panicked: {err}").into());
    }
    Ok(err)
}

/// A JWT-shaped token with this `exp` (unsigned: for tests that never reach a server).
pub fn fake_jwt(exp: u64) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"none"}"#),
        b64(&format!(r#"{{"exp":{exp}}}"#)),
        b64("sig")
    )
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A config file in the official client's layout with one profile.
pub fn official_config(profile: &str, access: &str, refresh: &str, url: &str) -> String {
    format!(
        "version: 1\ndefaultProfile: {profile}\nprofiles:\n  {profile}:\n    accessToken: {access}\n    expiresIn: 604800\n    refreshToken: {refresh}\n    scope: openid profile email offline_access\n    tokenType: Bearer\n    prismaticUrl: {url}\n"
    )
}
