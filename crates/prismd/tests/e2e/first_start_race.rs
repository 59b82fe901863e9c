//! Several replicas starting at the same moment on one empty PostgreSQL database: one schema
//! (each migration applied once), one organization, one signing key, and every replica
//! verifies the tokens the others sign.
//!
//! Starting processes together is not enough to make them collide: each first hashes a
//! generated Owner password, which spreads them out. So the test holds them at the racy
//! step itself: once the schema exists it locks `signing_keys` in SHARE mode (reads pass,
//! inserts wait), waits until every replica is queued (on that lock to insert the first key,
//! or on the signing-key advisory lock behind the one replica that holds it), and releases
//! them all at once. Without the advisory lock all of them then insert "if none is active"
//! with snapshots taken at the same moment, and each adds a key.

use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::harness::{Options, Server, TestResult, admin_ok, temp_dir};
use crate::keys::kid_of;
use crate::postgres::FreshDatabase;

const REPLICAS: usize = 3;
const ROUNDS: usize = 5;

#[tokio::test]
async fn replicas_starting_together_make_one_schema_and_one_key() -> TestResult {
    let migrations =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))?.count();
    let mut held_together = 0;
    for round in 0..ROUNDS {
        let db = FreshDatabase::create().await?;
        let outcome = start_together(&db.url, i64::try_from(migrations)?).await;
        db.drop_now().await?;
        match outcome {
            Ok(waited) => held_together += usize::from(waited == REPLICAS),
            Err(err) => return Err(format!("round {round}: {err}").into()),
        }
    }
    eprintln!("{held_together} of {ROUNDS} rounds released all {REPLICAS} replicas at once");
    Ok(())
}

/// One round; returns how many replicas were queued at the barrier when it opened.
async fn start_together(url: &str, migrations: i64) -> Result<usize, Box<dyn std::error::Error>> {
    let dirs = (0..REPLICAS)
        .map(|_| temp_dir())
        .collect::<Result<Vec<_>, _>>()?;
    let starting: Vec<_> = dirs
        .iter()
        .map(|dir| {
            let dir = dir.path().to_owned();
            let args = vec![
                "--database-url".to_owned(),
                url.to_owned(),
                "--issuer".to_owned(),
                "https://auth.prism.test".to_owned(),
            ];
            std::thread::spawn(move || {
                Server::start_with(
                    &dir,
                    Options {
                        args,
                        ..Options::default()
                    },
                )
                .map_err(|err| err.to_string())
            })
        })
        .collect();

    let waited = hold_at_the_key_insert(url, migrations).await;
    let mut servers = Vec::new();
    for start in starting {
        servers.push(start.join().map_err(|_| "start thread failed")??);
    }
    let waited = waited?;

    let mut conn = sqlx::PgConnection::connect(url).await?;
    let keys: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT kid, retired_at FROM signing_keys")
            .fetch_all(&mut conn)
            .await?;
    assert_eq!(keys.len(), 1, "exactly one signing key: {keys:?}");
    assert_eq!(keys[0].1, None, "and it is active");
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await?;
    assert_eq!(
        i64::try_from(applied.len())?,
        migrations,
        "each migration once: {applied:?}"
    );
    assert!(applied.iter().all(|(_, success)| *success), "{applied:?}");
    let orgs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM organizations")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(orgs, 1);
    conn.close().await?;

    // Every replica signs with that key, and every other replica verifies what it signed.
    let data = dirs[0].path();
    let admin = |args: &[&str]| -> Result<String, Box<dyn std::error::Error>> {
        let all: Vec<&str> = ["--database-url", url]
            .iter()
            .chain(args)
            .copied()
            .collect();
        admin_ok(data, &all)
    };
    admin(&[
        "users",
        "add",
        "--email",
        "ada@example.com",
        "--role",
        "Integrator",
    ])?;
    let refresh = admin(&["tokens", "create", "--email", "ada@example.com"])?;
    for signer in &servers {
        let token = signer.access_token(&refresh).await?;
        assert_eq!(kid_of(&token)?, keys[0].0);
        for verifier in &servers {
            assert_eq!(verifier.whoami(&token).await?, Ok("ada@example.com".into()));
        }
    }
    for server in servers {
        let logs = server.stop()?;
        assert!(!logs.contains("ERROR"), "{logs}");
    }
    Ok(waited)
}

/// Waits for the schema, locks `signing_keys` against inserts before any replica inserts,
/// waits (up to a generous deadline) until every replica is queued, and releases them
/// together. Returns how many were queued.
async fn hold_at_the_key_insert(
    url: &str,
    migrations: i64,
) -> Result<usize, Box<dyn std::error::Error>> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Every migration must have committed: a migration that touches signing_keys must
        // not be the one that queues on our lock.
        let exists: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::TEXT")
                .fetch_one(&mut conn)
                .await?;
        if exists.is_some() {
            let applied: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                    .fetch_one(&mut conn)
                    .await?;
            if applied == migrations {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err("the schema was never created".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut barrier = conn.begin().await?;
    sqlx::query("LOCK TABLE signing_keys IN SHARE MODE")
        .execute(&mut *barrier)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_locks WHERE NOT granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND (relation = 'signing_keys'::regclass OR locktype = 'advisory')",
        )
        .fetch_one(&mut *barrier)
        .await?;
        if usize::try_from(waiting)? >= REPLICAS || Instant::now() > deadline {
            break usize::try_from(waiting)?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    barrier.commit().await?;
    conn.close().await?;
    Ok(waiting)
}
