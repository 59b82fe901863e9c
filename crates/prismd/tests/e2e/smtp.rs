//! A real SMTP server for the tests: `smtp_sink.py` beside this file, on Python's aiosmtpd
//! (which `scripts/test.sh` installs into a virtual environment), on a free loopback port.
//! It writes every message it accepts, parsed by Python's `email` package, as a JSON file;
//! the tests read them back with [`SmtpSink::messages`] and [`SmtpSink::wait_for`].

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

/// The interpreter with aiosmtpd: `PRISM_TEST_SMTP_PYTHON`, else where `scripts/test.sh`
/// puts it.
fn python() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("PRISM_TEST_SMTP_PYTHON") {
        return Ok(PathBuf::from(path));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .ok_or("neither PRISM_TEST_SMTP_PYTHON nor HOME is set")?;
    let python = cache.join("prism-auth/aiosmtpd-venv/bin/python");
    if python.exists() {
        Ok(python)
    } else {
        Err(format!(
            "no Python with aiosmtpd for the SMTP tests: neither PRISM_TEST_SMTP_PYTHON nor {} \
             exists; run scripts/test.sh (it installs aiosmtpd), or set PRISM_TEST_SMTP_PYTHON \
             to a python that has it",
            python.display()
        )
        .into())
    }
}

/// How the test server behaves; the default is plain SMTP without authentication.
#[derive(Default)]
pub struct SinkOptions {
    /// Offer STARTTLS with this PEM certificate chain and key, and refuse mail without it.
    pub starttls: Option<(PathBuf, PathBuf)>,
    /// Speak TLS from the first byte (SMTPS) with this certificate chain and key.
    pub implicit_tls: Option<(PathBuf, PathBuf)>,
    /// Require AUTH with this user and password.
    pub auth: Option<(String, String)>,
}

/// One message as the server received it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ReceivedMail {
    /// `MAIL FROM` and `RCPT TO`.
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    /// The headers, decoded.
    pub from: String,
    pub to: String,
    pub subject: String,
    pub message_id: String,
    pub content_type: String,
    /// The names of every header, in order.
    pub headers: Vec<String>,
    /// The text/plain body, transfer encoding undone.
    pub body: String,
    /// Whether the connection was encrypted (STARTTLS or SMTPS).
    pub tls: bool,
    /// The user that authenticated, if any.
    pub auth_user: Option<String>,
}

/// A running SMTP server; killed on drop.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start() -> Result<Self, Error> {
        Self::start_with(SinkOptions::default())
    }

    pub fn start_with(options: SinkOptions) -> Result<Self, Error> {
        let python = python()?;
        let dir = tempfile::Builder::new().prefix("prism-smtp-").tempdir()?;
        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox)?;
        let stderr_path = dir.path().join("stderr.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/smtp_sink.py");
        let mut command = Command::new(&python);
        command.arg(&script).arg(&inbox);
        let pair = |flag: &str, (a, b): &(PathBuf, PathBuf), command: &mut Command| {
            command.arg(flag).arg(a).arg(b);
        };
        if let Some(files) = &options.starttls {
            pair("--starttls", files, &mut command);
        }
        if let Some(files) = &options.implicit_tls {
            pair("--implicit-tls", files, &mut command);
        }
        if let Some((user, password)) = &options.auth {
            command.arg("--auth").arg(user).arg(password);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .map_err(|err| {
                format!(
                    "cannot run {} for the SMTP test server ({err}); run scripts/test.sh, which \
                     installs aiosmtpd, or set PRISM_TEST_SMTP_PYTHON",
                    python.display()
                )
            })?;
        // The first line is the port, printed once the server accepts connections; a thread
        // reads it so that a server that hangs cannot hang the test.
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (port_tx, port_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = port_tx.send(line);
        });
        let line = port_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_default();
        match line.trim().parse::<u16>() {
            Ok(port) => Ok(Self { child, port, dir }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                Err(format!(
                    "the SMTP test server ({} {}) did not start; is aiosmtpd installed in that \
                     Python? (scripts/test.sh installs it). Its output:\n{stderr}",
                    python.display(),
                    script.display()
                )
                .into())
            }
        }
    }

    /// Every message received so far, in no particular order.
    pub fn messages(&self) -> Result<Vec<ReceivedMail>, Error> {
        let mut messages = Vec::new();
        for entry in std::fs::read_dir(self.dir.path().join("inbox"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                messages.push(serde_json::from_slice(&std::fs::read(&path)?)?);
            }
        }
        Ok(messages)
    }

    /// The first message for `to` (an envelope recipient), waiting up to `timeout` for it.
    pub fn wait_for(&self, to: &str, timeout: Duration) -> Result<ReceivedMail, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages()?;
            if let Some(found) = messages
                .iter()
                .find(|m| m.envelope_to.iter().any(|r| r.eq_ignore_ascii_case(to)))
            {
                return Ok(found.clone());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no mail for {to} within {timeout:?}; received: {messages:?}; server log:\n{}",
                    self.log()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server wrote to stderr (aiosmtpd's own log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a certificate it signs for 127.0.0.1 and `localhost`, as PEM files in `dir`:
/// (CA certificate, server certificate, server key).
pub fn test_certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), Error> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "prism-auth SMTP test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
        .signed_by(&key, &issuer)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("smtp-cert.pem"),
        dir.join("smtp-key.pem"),
    );
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, leaf.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}
