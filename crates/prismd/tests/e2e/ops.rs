//! First start, health, metadata, JWKS, and the guarantee that no secret reaches the log.

use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::harness::{
    Options, Server, TestResult, admin_ok, prismd_with_stdin, temp_dir, user_with_token,
};

#[tokio::test]
async fn first_start_creates_an_owner_once_with_a_private_password() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start_with(
        dir.path(),
        Options {
            args: vec![
                "--owner-email".into(),
                "boss@example.com".into(),
                "--org-name".into(),
                "Acme".into(),
            ],
            ..Options::default()
        },
    )?;
    let password_file = dir.path().join(prismd::INITIAL_PASSWORD_FILE);
    let password = std::fs::read_to_string(&password_file)?.trim().to_owned();
    assert!(password.len() >= 20, "generated password is too short");
    assert_eq!(
        std::fs::metadata(&password_file)?.permissions().mode() & 0o777,
        0o600
    );
    let logs = server.stop()?;
    assert!(logs.contains("first start"), "{logs}");
    assert!(logs.contains("boss@example.com"));
    assert!(!logs.contains(&password), "the password must not be logged");

    let listed: Value = serde_json::from_str(&admin_ok(dir.path(), &["users", "list", "--json"])?)?;
    assert_eq!(listed[0]["email"], "boss@example.com");
    assert_eq!(listed[0]["role"], "Owner");

    // A second start neither re-creates the owner nor touches the password.
    let server = Server::start(dir.path())?;
    let logs = server.stop()?;
    assert!(!logs.contains("first start"));
    assert_eq!(std::fs::read_to_string(&password_file)?.trim(), password);

    // Another install gets another password.
    let other = temp_dir()?;
    Server::start(other.path())?.stop()?;
    assert_ne!(
        std::fs::read_to_string(other.path().join(prismd::INITIAL_PASSWORD_FILE))?.trim(),
        password
    );
    Ok(())
}

#[tokio::test]
async fn health_metadata_and_jwks() -> TestResult {
    let dir = temp_dir()?;
    let server = Server::start(dir.path())?;
    for path in ["/healthz", "/readyz"] {
        let response = server.http.get(server.url(path)).send().await?;
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let meta: Value = server
            .http
            .get(server.url(path))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(meta["issuer"], server.base.as_str());
        assert_eq!(meta["token_endpoint"], server.url("/oauth/token").as_str());
        assert_eq!(
            meta["jwks_uri"],
            server.url("/.well-known/jwks.json").as_str()
        );
    }
    let jwks: Value = server
        .http
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await?
        .json()
        .await?;
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    assert!(
        key.get("d").is_none(),
        "the JWKS must not carry the private key"
    );

    // A token verifies with the published key alone, as a third-party resource server would.
    let refresh = user_with_token(dir.path(), "ci@example.com")?;
    let access = server.access_token(&refresh).await?;
    let mut parts = access.split('.');
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().ok_or("h")?)?)?;
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["kid"], key["kid"]);
    let (signed, signature) = access.rsplit_once('.').ok_or("sig")?;
    let public = URL_SAFE_NO_PAD.decode(key["x"].as_str().ok_or("x")?)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(signature)?)
        .map_err(|_| "signature does not verify with the JWKS key")?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().ok_or("p")?)?)?;
    assert_eq!(claims["iss"], server.base.as_str());
    assert_eq!(claims["aud"], format!("{}/api", server.base).as_str());
    assert_eq!(claims["client_id"], "prism-cli");
    Ok(())
}

#[tokio::test]
async fn no_token_or_password_reaches_the_log_at_trace_level() -> TestResult {
    let dir = temp_dir()?;
    // With the signing keys encrypted at rest, so that the key encryption key is checked too.
    let key_encryption_key = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    let server = Server::start_with(
        dir.path(),
        Options {
            env: vec![
                ("PRISMD_LOG".into(), "trace".into()),
                (
                    "PRISMD_KEY_ENCRYPTION_KEY".into(),
                    key_encryption_key.into(),
                ),
            ],
            ..Options::default()
        },
    )?;
    let password = "correct horse battery staple";
    let output = prismd_with_stdin(
        dir.path(),
        &[
            "users",
            "add",
            "--email",
            "ci@example.com",
            "--password-stdin",
        ],
        &format!("{password}\n"),
    )?;
    assert!(output.status.success());
    let refresh = admin_ok(
        dir.path(),
        &["tokens", "create", "--email", "ci@example.com"],
    )?;
    let access = server.access_token(&refresh).await?;
    assert!(server.whoami(&access).await?.is_ok());
    let unknown = prism_proto::token_format::generate(prism_proto::SecretKind::RefreshToken)?;
    let _ = server.refresh(&unknown).await?;
    let _ = server
        .graphql(
            Some("eyJhbGciOiJub25lIn0.e30.c2VjcmV0LXNpZ25hdHVyZQ"),
            "{ authenticatedUser { id } }",
        )
        .await?;
    let _ = server.revoke(&refresh).await?;
    let logs = server.stop()?;

    assert!(
        logs.lines().count() > 10,
        "trace logging should be verbose: {logs}"
    );
    assert!(
        logs.contains("route=\"/auth/refresh\""),
        "access log lines expected"
    );
    let signature = access.rsplit('.').next().unwrap_or_default();
    for (what, secret) in [
        ("refresh token", refresh.as_str()),
        ("refresh token body", &refresh[9..]),
        ("unknown token", &unknown[9..]),
        ("access token", access.as_str()),
        ("access token signature", signature),
        ("forged signature", "c2VjcmV0LXNpZ25hdHVyZQ"),
        ("password", password),
        ("key encryption key", key_encryption_key),
        ("key encryption key in hex", "abcdef1234567890abcdef"),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the log");
    }
    assert!(
        !logs.to_lowercase().contains("authorization: bearer"),
        "an Authorization header was logged"
    );
    Ok(())
}
