//! Two `prismd` replicas on one PostgreSQL database, as behind a load balancer: tokens work on
//! either, and a revoke or a removal on one reaches the other, whose cache had the user as
//! active, within the change-feed bound. Needs `PRISM_TEST_POSTGRES_URL`, like the other
//! PostgreSQL tests.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use crate::harness::{Options, Server, TestResult, admin_ok, temp_dir};
use crate::postgres::FreshDatabase;

/// Replicas behind one load balancer share the public URL, so tokens name the same issuer.
const SHARED_ISSUER: &str = "http://auth.replicas.test";

pub fn replica(data_dir: &Path, url: &str) -> Result<Server, Box<dyn std::error::Error>> {
    Server::start_with(
        data_dir,
        Options {
            args: vec![
                "--database-url".into(),
                url.into(),
                "--issuer".into(),
                SHARED_ISSUER.into(),
                // Far beyond the test's deadline: only a notification can make the other
                // replica forget what it cached in time.
                "--cache-ttl".into(),
                "10m".into(),
            ],
            ..Options::default()
        },
    )
}

fn admin(data_dir: &Path, url: &str, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let mut full = vec!["--database-url", url];
    full.extend_from_slice(args);
    admin_ok(data_dir, &full)
}

#[tokio::test]
async fn tokens_revokes_and_removals_cross_replicas() -> TestResult {
    let db = FreshDatabase::create().await?;
    let outcome = cross_replicas(&db.url).await;
    db.drop_now().await?;
    outcome
}

async fn cross_replicas(url: &str) -> TestResult {
    let (dir_a, dir_b) = (temp_dir()?, temp_dir()?);
    let a = replica(dir_a.path(), url)?;
    let b = replica(dir_b.path(), url)?;
    let cli = dir_a.path();
    for email in ["ada@example.com", "bob@example.com", "carol@example.com"] {
        admin(
            cli,
            url,
            &["users", "add", "--email", email, "--role", "Admin"],
        )?;
    }
    let ada = admin(
        cli,
        url,
        &["tokens", "create", "--email", "ada@example.com"],
    )?;
    let bob = admin(
        cli,
        url,
        &["tokens", "create", "--email", "bob@example.com"],
    )?;
    let carol = admin(
        cli,
        url,
        &["tokens", "create", "--email", "carol@example.com"],
    )?;

    // An access token minted on A works on B, and the other way round.
    let ada_from_a = a.access_token(&ada).await?;
    let ada_from_b = b.access_token(&ada).await?;
    for server in [&a, &b] {
        for access in [&ada_from_a, &ada_from_b] {
            assert_eq!(server.whoami(access).await?, Ok("ada@example.com".into()));
        }
    }

    // Revoke on B while A has Ada cached as active (it just answered for her twice).
    let (status, _) = b.revoke(&ada).await?;
    assert_eq!(status, 200);
    let revoked_at = Instant::now();
    assert_eq!(a.whoami_after_change(&ada_from_a).await?, Err(401));
    let (status, body) = a.refresh_after_change(&ada).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    println!("revoke on B reached A after {:?}", revoked_at.elapsed());
    // On B itself, at once.
    assert_eq!(b.whoami(&ada_from_b).await?, Err(401));

    // Remove Bob on A (through the API, by Carol, an Admin) while B has him cached.
    let bob_access = b.access_token(&bob).await?;
    assert_eq!(b.whoami(&bob_access).await?, Ok("bob@example.com".into()));
    let bob_id = user_id(cli, url, "bob@example.com")?;
    let carol_access = a.access_token(&carol).await?;
    let (status, _, body) = a
        .graphql(
            Some(&carol_access),
            &format!(
                r#"mutation {{ deleteUser(input: {{id: "{bob_id}"}}) {{ user {{ id }} errors {{ field messages }} }} }}"#
            ),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["deleteUser"]["errors"],
        Value::Array(vec![]),
        "{body}"
    );
    let (status, body) = b.refresh_after_change(&bob).await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("removed"),
        "{body}"
    );
    assert_eq!(b.whoami_after_change(&bob_access).await?, Err(401));

    // Nobody else was caught up in it: Carol works on both replicas.
    for server in [&a, &b] {
        let access = server.access_token(&carol).await?;
        assert_eq!(
            server.whoami(&access).await?,
            Ok("carol@example.com".into())
        );
    }
    let logs_b = b.stop()?;
    let logs_a = a.stop()?;
    for logs in [logs_a, logs_b] {
        assert!(!logs.contains("ERROR"), "{logs}");
    }
    Ok(())
}

fn user_id(cli: &Path, url: &str, email: &str) -> Result<String, Box<dyn std::error::Error>> {
    let users: Value = serde_json::from_str(&admin(cli, url, &["users", "list", "--json"])?)?;
    Ok(users
        .as_array()
        .and_then(|users| users.iter().find(|u| u["email"] == email))
        .and_then(|u| u["id"].as_str())
        .ok_or("user not listed")?
        .to_owned())
}
