//! Email: `prismd mail-test` against a real SMTP server (plain, STARTTLS with a private CA and
//! AUTH, SMTPS), the start-up checks of --smtp-url / --mail-from, and that the SMTP password
//! shows up nowhere: not in errors, logs or `--help`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{BIN, Options, Server, TestResult, temp_dir};
use crate::smtp::{SinkOptions, SmtpSink, test_certificates};

const FROM: &str = "Prism Auth <auth@example.org>";
const PASSWORD: &str = "hunter2-correct-horse";
const DELIVERY: Duration = Duration::from_secs(10);

/// Runs `prismd` with `args` and extra environment variables, killing it after `limit`: a
/// command that should fail at once must not hang the test if it does not. Returns its output
/// and how long it ran.
fn run(
    data_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> Result<(Output, Duration), Box<dyn std::error::Error>> {
    let mut command = Command::new(BIN);
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("PRISMD_LOG")
        .env_remove("PRISMD_SMTP_URL")
        .env_remove("PRISMD_MAIL_FROM")
        .env_remove("PRISMD_SMTP_CA_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let started = Instant::now();
    let mut child = command.spawn()?;
    while child.try_wait()?.is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output()?;
    Ok((output, started.elapsed()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn mail_test_delivers_one_message_with_the_right_headers() -> TestResult {
    let sink = SmtpSink::start()?;
    let dir = temp_dir()?;
    let url = format!("smtp://127.0.0.1:{}?tls=none", sink.port);
    let (output, _) = run(
        dir.path(),
        &[
            "mail-test",
            "--to",
            "a@example.com",
            "--smtp-url",
            &url,
            "--mail-from",
            FROM,
        ],
        &[],
        Duration::from_secs(30),
    )?;
    assert!(
        output.status.success(),
        "mail-test failed: {}",
        text(&output.stderr)
    );
    assert_eq!(text(&output.stdout).trim(), "sent");
    let mail = sink.wait_for("a@example.com", DELIVERY)?;
    assert_eq!(mail.envelope_from, "auth@example.org");
    assert_eq!(mail.envelope_to, ["a@example.com"]);
    assert_eq!(mail.from, FROM);
    assert_eq!(mail.to, "a@example.com");
    assert_eq!(mail.subject, "prism-auth test message");
    assert_eq!(mail.content_type, "text/plain");
    assert!(mail.body.contains("prismd mail-test"), "{}", mail.body);
    assert!(
        mail.message_id.ends_with("@example.org>"),
        "{}",
        mail.message_id
    );
    assert!(
        mail.headers.iter().any(|h| h == "Date"),
        "{:?}",
        mail.headers
    );
    assert!(!mail.tls && mail.auth_user.is_none());
    assert_eq!(sink.messages()?.len(), 1);
    Ok(())
}

/// The default `smtp://` form: STARTTLS required, the server's certificate checked against
/// --smtp-ca-file, then AUTH; the password is %-decoded from the URL given in the variable.
#[test]
fn starttls_with_a_private_ca_and_authentication() -> TestResult {
    let dir = temp_dir()?;
    let (ca, cert, key) = test_certificates(dir.path())?;
    let sink = SmtpSink::start_with(SinkOptions {
        starttls: Some((cert, key)),
        auth: Some(("mailer@example.org".into(), "p@ss:word".into())),
        ..SinkOptions::default()
    })?;
    let url = format!(
        "smtp://mailer%40example.org:p%40ss%3Aword@127.0.0.1:{}",
        sink.port
    );
    let ca = ca.display().to_string();
    let env = [
        ("PRISMD_SMTP_URL", url.as_str()),
        ("PRISMD_MAIL_FROM", "auth@example.org"),
        ("PRISMD_SMTP_CA_FILE", ca.as_str()),
    ];
    let (output, _) = run(
        dir.path(),
        &["mail-test", "--to", "b@example.com"],
        &env,
        Duration::from_secs(30),
    )?;
    assert!(
        output.status.success(),
        "mail-test failed: {}\nserver log:\n{}",
        text(&output.stderr),
        sink.log()
    );
    let mail = sink.wait_for("b@example.com", DELIVERY)?;
    assert!(mail.tls, "the message went unencrypted");
    assert_eq!(mail.auth_user.as_deref(), Some("mailer@example.org"));

    // Without the CA the certificate does not verify, and nothing is sent.
    let (output, _) = run(
        dir.path(),
        &["mail-test", "--to", "c@example.com"],
        &env[..2],
        Duration::from_secs(30),
    )?;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("127.0.0.1:"), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert_eq!(sink.messages()?.len(), 1);
    Ok(())
}

#[test]
fn smtps_speaks_tls_from_the_first_byte() -> TestResult {
    let dir = temp_dir()?;
    let (ca, cert, key) = test_certificates(dir.path())?;
    let sink = SmtpSink::start_with(SinkOptions {
        implicit_tls: Some((cert, key)),
        ..SinkOptions::default()
    })?;
    let url = format!("smtps://localhost:{}", sink.port);
    let ca = ca.display().to_string();
    let (output, _) = run(
        dir.path(),
        &[
            "mail-test",
            "--to",
            "d@example.com",
            "--smtp-url",
            &url,
            "--mail-from",
            FROM,
            "--smtp-ca-file",
            &ca,
        ],
        &[],
        Duration::from_secs(30),
    )?;
    assert!(
        output.status.success(),
        "mail-test failed: {}\nserver log:\n{}",
        text(&output.stderr),
        sink.log()
    );
    assert!(sink.wait_for("d@example.com", DELIVERY)?.tls);
    Ok(())
}

/// `smtp://` means STARTTLS required: a server that does not offer it gets nothing, rather
/// than the message in plain text.
#[test]
fn plain_smtp_url_refuses_a_server_without_starttls() -> TestResult {
    let sink = SmtpSink::start()?;
    let dir = temp_dir()?;
    let url = format!("smtp://127.0.0.1:{}", sink.port);
    let (output, _) = run(
        dir.path(),
        &[
            "mail-test",
            "--to",
            "a@example.com",
            "--smtp-url",
            &url,
            "--mail-from",
            FROM,
        ],
        &[],
        Duration::from_secs(30),
    )?;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("STARTTLS"), "{stderr}");
    assert!(sink.messages()?.is_empty());
    Ok(())
}

#[test]
fn a_refused_password_is_reported_without_echoing_it() -> TestResult {
    let sink = SmtpSink::start_with(SinkOptions {
        auth: Some(("mailer".into(), "the-right-one".into())),
        ..SinkOptions::default()
    })?;
    let dir = temp_dir()?;
    let url = format!("smtp://mailer:{PASSWORD}@127.0.0.1:{}?tls=none", sink.port);
    let (output, _) = run(
        dir.path(),
        &["mail-test", "--to", "a@example.com"],
        &[("PRISMD_SMTP_URL", &url), ("PRISMD_MAIL_FROM", FROM)],
        Duration::from_secs(30),
    )?;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("535"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert!(text(&output.stdout).is_empty());
    assert!(sink.messages()?.is_empty());
    Ok(())
}

/// Nothing listens on the port: `mail-test` says so at once instead of waiting out a timeout.
#[test]
fn mail_test_fails_fast_when_the_smtp_server_is_down() -> TestResult {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = temp_dir()?;
    let url = format!("smtp://mailer:{PASSWORD}@127.0.0.1:{port}?tls=none");
    let (output, took) = run(
        dir.path(),
        &["mail-test", "--to", "a@example.com"],
        &[("PRISMD_SMTP_URL", &url), ("PRISMD_MAIL_FROM", FROM)],
        Duration::from_secs(60),
    )?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("refused"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    // Well under the 15 s send timeout: a refused connection is not waited on.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    Ok(())
}

/// `serve` refuses bad settings before it opens anything, with a message naming the setting
/// and never the password.
#[test]
fn serve_refuses_bad_mail_settings_at_start() -> TestResult {
    let dir = temp_dir()?;
    let url = format!("smtp://mailer:{PASSWORD}@mail.example.com:587");
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[
                (
                    "PRISMD_SMTP_URL",
                    "smtps://mailer:hunter2-correct-horse@mail.example.com?tls=none",
                ),
                ("PRISMD_MAIL_FROM", FROM),
            ],
            "--smtp-url (PRISMD_SMTP_URL) is not usable",
        ),
        (
            &[
                (
                    "PRISMD_SMTP_URL",
                    "imap://mailer:hunter2-correct-horse@mail.example.com",
                ),
                ("PRISMD_MAIL_FROM", FROM),
            ],
            "the scheme is `imap`",
        ),
        (
            &[("PRISMD_SMTP_URL", &url)],
            "--smtp-url (PRISMD_SMTP_URL) is set but --mail-from (PRISMD_MAIL_FROM) is not",
        ),
        (
            &[("PRISMD_MAIL_FROM", FROM)],
            "--mail-from (PRISMD_MAIL_FROM) is set but --smtp-url (PRISMD_SMTP_URL) is not",
        ),
        (
            &[
                ("PRISMD_SMTP_URL", &url),
                ("PRISMD_MAIL_FROM", "not an address"),
            ],
            "--mail-from (PRISMD_MAIL_FROM) \"not an address\" is not an email address",
        ),
    ];
    for (env, expected) in cases {
        let (output, _) = run(
            dir.path(),
            &["serve", "--listen", "127.0.0.1:0"],
            env,
            Duration::from_secs(30),
        )?;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{env:?}: {stderr}");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
        assert!(!stderr.contains(PASSWORD), "{env:?}: {stderr}");
        // Refused before the database was touched.
        assert!(!dir.path().join("prismd.db").exists(), "{env:?}");
    }
    Ok(())
}

/// A server with mail settings starts without reaching the SMTP server, logs where mail goes
/// with the password hidden, and warns when mail would cross the network unencrypted.
#[test]
fn serve_logs_the_smtp_server_without_the_password() -> TestResult {
    let dir = temp_dir()?;
    let url = format!("smtp://mailer:{PASSWORD}@mail.example.com:2525?tls=none");
    let server = Server::start_with(
        dir.path(),
        Options {
            env: vec![
                ("PRISMD_SMTP_URL".into(), url),
                ("PRISMD_MAIL_FROM".into(), FROM.into()),
            ],
            ..Options::default()
        },
    )?;
    let logs = server.stop()?;
    assert!(
        logs.contains("smtp://mailer:***@mail.example.com:2525?tls=none"),
        "{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("unencrypted")),
        "{logs}"
    );
    assert!(!logs.contains(PASSWORD), "{logs}");

    // Without mail settings the log says that no mail is sent.
    let dir = temp_dir()?;
    let logs = Server::start(dir.path())?.stop()?;
    assert!(logs.contains("no email is sent"), "{logs}");
    Ok(())
}

#[test]
fn help_does_not_show_the_smtp_url_from_the_environment() -> TestResult {
    let dir = temp_dir()?;
    let url = format!("smtp://mailer:{PASSWORD}@mail.example.com");
    for command in ["serve", "mail-test"] {
        let (output, _) = run(
            dir.path(),
            &[command, "--help"],
            &[("PRISMD_SMTP_URL", &url)],
            Duration::from_secs(30),
        )?;
        let help = text(&output.stdout);
        assert!(help.contains("PRISMD_SMTP_URL"), "{help}");
        assert!(!help.contains(PASSWORD), "{help}");
    }
    Ok(())
}
