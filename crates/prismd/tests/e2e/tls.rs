//! HTTPS: the development CA (made once, reused), operator-provided certificates, and
//! `/auth/meta` pointing the official client at this server.

use std::process::Command;

use serde_json::Value;

use crate::harness::{Options, Server, TestResult, temp_dir};

fn dev_tls() -> Options {
    Options {
        args: vec!["--dev-tls".into()],
        ..Options::default()
    }
}

/// `curl --cacert`: the way a user trusts the development CA.
fn curl_json(url: &str, ca: &std::path::Path) -> Result<Value, Box<dyn std::error::Error>> {
    let output = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()?;
    if !output.status.success() {
        return Err(format!("curl {url}: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test]
async fn dev_tls_serves_https_with_a_ca_that_survives_restarts() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start_with(dir.path(), dev_tls())?;
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    let ca = dir.path().join("ca.pem");
    assert!(
        server.logs().contains("NODE_EXTRA_CA_CERTS="),
        "the log must say how to trust the CA"
    );

    let meta = curl_json(&server.url("/auth/meta"), &ca)?;
    let authority = server.base.trim_start_matches("https://");
    assert_eq!(meta["domain"], authority);
    assert_eq!(meta["clientId"], "prism-cli");
    assert_eq!(meta["audience"], format!("{}/api", server.base).as_str());
    let discovery = curl_json(&server.url("/.well-known/openid-configuration"), &ca)?;
    assert_eq!(discovery["issuer"], server.base.as_str());

    // Without the CA, a client refuses the certificate.
    let untrusted = Command::new("curl")
        .args(["-sS", "-o", "/dev/null"])
        .arg(server.url("/healthz"))
        .stderr(std::process::Stdio::null())
        .status()?;
    assert!(
        !untrusted.success(),
        "a client that does not trust the dev CA must fail"
    );

    let ca_before = std::fs::read(&ca)?;
    server.stop()?;
    let server = Server::start_with(dir.path(), dev_tls())?;
    assert_eq!(
        std::fs::read(&ca)?,
        ca_before,
        "the CA must be reused across restarts"
    );
    curl_json(&server.url("/healthz"), &ca)?;
    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn operator_certificates_are_served() -> TestResult {
    // Any PEM certificate and key will do; take the ones a development install made.
    let issuing = temp_dir()?;
    Server::start_with(issuing.path(), dev_tls())?.stop()?;
    let dir = temp_dir()?;
    let options = Options {
        args: vec![
            "--tls-cert".into(),
            issuing.path().join("tls-cert.pem").display().to_string(),
            "--tls-key".into(),
            issuing.path().join("tls-key.pem").display().to_string(),
        ],
        ..Options::default()
    };
    let server = Server::start_with(dir.path(), options)?;
    assert!(server.base.starts_with("https://"));
    let health = curl_json(&server.url("/healthz"), &issuing.path().join("ca.pem"))?;
    assert_eq!(health["status"], "ok");
    assert!(
        !dir.path().join("ca.pem").exists(),
        "no development CA when certificates are given"
    );
    server.stop()?;

    // A missing key file is a clear start-up error, not a panic.
    let output = Command::new(crate::harness::BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TLS certificate or key"), "{stderr}");
    Ok(())
}
