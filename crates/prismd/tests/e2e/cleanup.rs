//! Background cleanup end to end: a server with short settings deletes expired codes,
//! sessions, invitations, old audit events and (after their grace period) dead refresh
//! tokens, while live tokens and unexpired rows stay; on PostgreSQL the advisory lock keeps
//! replicas from cleaning while another holds it.

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::harness::{Options, Server, TestResult, admin_ok, temp_dir, user_with_token};
use crate::postgres::FreshDatabase;

fn serve_args(extra: &[&str]) -> Options {
    Options {
        args: extra.iter().map(|s| (*s).to_owned()).collect(),
        ..Options::default()
    }
}

/// Rows of each kind cleanup deletes, inserted behind the server's back: one expired and one
/// live of each, for the member (or, for browser sessions, the sign-in identity) with the
/// email `$1`; `$2` and `$3` are hashes (32 bytes of the
/// given value; statements that take fewer parameters get only the email).
const SEED: &[(&str, u8, u8)] = &[
    (
        "INSERT INTO authorization_codes (code_hash, client_id, redirect_uri, code_challenge, scope, \
      user_id, created_at, expires_at) SELECT $2, 'prism-cli', 'http://127.0.0.1/cb', 'c', 'openid', id, 1, 1000000 FROM users WHERE email = $1",
        1,
        0,
    ),
    (
        "INSERT INTO authorization_codes (code_hash, client_id, redirect_uri, code_challenge, scope, \
      user_id, created_at, expires_at) SELECT $2, 'prism-cli', 'http://127.0.0.1/cb', 'c', 'openid', id, 1, 4000000000000 FROM users WHERE email = $1",
        2,
        0,
    ),
    (
        "INSERT INTO device_codes (device_code_hash, user_code_hash, client_id, scope, created_at, \
      expires_at, interval_secs, status) SELECT $2, $3, 'prism-cli', 'openid', 1, 1000000, 5, 'pending' FROM users WHERE email = $1",
        3,
        4,
    ),
    (
        "INSERT INTO device_codes (device_code_hash, user_code_hash, client_id, scope, created_at, \
      expires_at, interval_secs, status) SELECT $2, $3, 'prism-cli', 'openid', 1, 4000000000000, 5, 'pending' FROM users WHERE email = $1",
        5,
        6,
    ),
    (
        "INSERT INTO browser_sessions (id_hash, identity_id, created_at, expires_at) SELECT $2, id, 1, 1000000 FROM identities WHERE email = $1",
        7,
        0,
    ),
    (
        "INSERT INTO browser_sessions (id_hash, identity_id, created_at, expires_at) SELECT $2, id, 1, 4000000000000 FROM identities WHERE email = $1",
        8,
        0,
    ),
    (
        "INSERT INTO invitations (token_hash, user_id, created_at, expires_at) SELECT $2, id, 1, 1000000 FROM users WHERE email = $1",
        9,
        0,
    ),
    (
        "INSERT INTO invitations (token_hash, user_id, created_at, expires_at) SELECT $2, id, 1, 4000000000000 FROM users WHERE email = $1",
        10,
        0,
    ),
    (
        "INSERT INTO audit_events (at, action, actor) SELECT 1000000, 'test.old', id FROM users WHERE email = $1",
        0,
        0,
    ),
];

/// One seed statement with its parameters, for either backend.
fn seed_query<DB: sqlx::Database>(
    statement: &'static str,
    first: u8,
    second: u8,
) -> sqlx::query::Query<'static, DB, <DB as sqlx::Database>::Arguments>
where
    String: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
    Vec<u8>: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
{
    let params = statement.matches('$').count();
    let mut query = sqlx::query(statement).bind("ada@example.com".to_owned());
    if params >= 2 {
        query = query.bind(vec![first; 32]);
    }
    if params >= 3 {
        query = query.bind(vec![second; 32]);
    }
    query
}

/// How many of the seeded rows are still there: (expired, live).
const COUNT_EXPIRED: &str = "SELECT \
    (SELECT COUNT(*) FROM authorization_codes WHERE expires_at = 1000000) + \
    (SELECT COUNT(*) FROM device_codes WHERE expires_at = 1000000) + \
    (SELECT COUNT(*) FROM browser_sessions WHERE expires_at = 1000000) + \
    (SELECT COUNT(*) FROM invitations WHERE expires_at = 1000000) + \
    (SELECT COUNT(*) FROM audit_events WHERE at = 1000000)";
const COUNT_LIVE: &str = "SELECT \
    (SELECT COUNT(*) FROM authorization_codes WHERE expires_at = 4000000000000) + \
    (SELECT COUNT(*) FROM device_codes WHERE expires_at = 4000000000000) + \
    (SELECT COUNT(*) FROM browser_sessions WHERE expires_at = 4000000000000) + \
    (SELECT COUNT(*) FROM invitations WHERE expires_at = 4000000000000)";
const COUNT_TOKENS: &str = "SELECT COUNT(*) FROM refresh_tokens";

async fn sqlite(dir: &Path) -> Result<sqlx::SqliteConnection, sqlx::Error> {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.join("prismd.db").display())).await
}

async fn count_sqlite(dir: &Path, sql: &'static str) -> Result<i64, Box<dyn std::error::Error>> {
    let mut conn = sqlite(dir).await?;
    let count = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
    conn.close().await?;
    Ok(count)
}

async fn wait_for_sqlite(dir: &Path, sql: &'static str, wanted: i64, what: &str) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = count_sqlite(dir, sql).await?;
        if count == wanted {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: still {count}, wanted {wanted}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn cleanup_deletes_expired_rows_and_keeps_live_tokens() -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let server = Server::start(data)?;
    let live = user_with_token(data, "ada@example.com")?;
    let revoked = user_with_token(data, "bob@example.com")?;
    let removed = user_with_token(data, "carol@example.com")?;
    let (status, _) = server.revoke(&revoked).await?;
    assert_eq!(status, 200);
    admin_ok(data, &["users", "remove", "--email", "carol@example.com"])?;
    server.stop()?;
    let mut conn = sqlite(data).await?;
    for (statement, first, second) in SEED {
        seed_query(statement, *first, *second)
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    assert_eq!(count_sqlite(data, COUNT_EXPIRED).await?, 5);
    assert_eq!(count_sqlite(data, COUNT_TOKENS).await?, 3);

    // Expired rows go at the first round; dead tokens are within their grace period.
    let server = Server::start_with(
        data,
        serve_args(&["--cleanup-interval", "1s", "--dead-token-retention", "1h"]),
    )?;
    wait_for_sqlite(data, COUNT_EXPIRED, 0, "expired rows").await?;
    assert_eq!(count_sqlite(data, COUNT_LIVE).await?, 4, "live rows stay");
    assert_eq!(count_sqlite(data, COUNT_TOKENS).await?, 3);
    let recent = admin_ok(data, &["audit", "--limit", "100"])?;
    assert!(recent.contains("token.minted"), "recent audit events stay");
    let access = server.access_token(&live).await?;
    assert_eq!(server.whoami(&access).await?, Ok("ada@example.com".into()));
    let (status, body) = server.refresh(&revoked).await?;
    assert_eq!(status, 400);
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains("revoked"), "precise answer: {body}");
    assert!(server.logs().contains("cleanup: deleted expired rows"));
    server.stop()?;

    // Past the grace period the dead tokens go too; the live one stays.
    let server = Server::start_with(
        data,
        serve_args(&["--cleanup-interval", "1s", "--dead-token-retention", "1s"]),
    )?;
    wait_for_sqlite(data, COUNT_TOKENS, 1, "refresh tokens").await?;
    let access = server.access_token(&live).await?;
    assert_eq!(server.whoami(&access).await?, Ok("ada@example.com".into()));
    for dead in [&revoked, &removed] {
        let (status, body) = server.refresh(dead).await?;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_grant");
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(description.contains("not known"), "{body}");
    }
    assert_eq!(count_sqlite(data, COUNT_LIVE).await?, 4);

    // Audit events go after their retention (here a second), newest included.
    let server_logs = server.stop()?;
    assert!(!server_logs.contains("ERROR"), "{server_logs}");
    let before = count_sqlite(data, "SELECT COUNT(*) FROM audit_events").await?;
    assert!(before > 0);
    let server = Server::start_with(
        data,
        serve_args(&["--cleanup-interval", "1s", "--audit-retention", "1s"]),
    )?;
    wait_for_sqlite(data, "SELECT COUNT(*) FROM audit_events", 0, "audit events").await?;
    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn cleanup_lock_lets_one_replica_clean_at_a_time_on_postgres() -> TestResult {
    let db = FreshDatabase::create().await?;
    let outcome = replicas_take_turns(&db.url).await;
    db.drop_now().await?;
    outcome
}

async fn count_pg(conn: &mut sqlx::PgConnection, sql: &'static str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sql).fetch_one(conn).await
}

async fn replicas_take_turns(url: &str) -> TestResult {
    let dir = temp_dir()?;
    let data = dir.path();
    let replica = || {
        Server::start_with(
            data,
            Options {
                args: [
                    "--database-url",
                    url,
                    "--issuer",
                    "https://auth.prism.test",
                    "--cleanup-interval",
                    "1s",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
                env: vec![(
                    "PRISMD_LOG".into(),
                    "info,prismd::domain::cleanup=debug".into(),
                )],
                ..Options::default()
            },
        )
    };
    let a = replica()?;
    let b = replica()?;
    let all: Vec<&str> = ["--database-url", url].to_vec();
    let admin = |args: &[&str]| -> Result<String, Box<dyn std::error::Error>> {
        let args: Vec<&str> = all.iter().chain(args).copied().collect();
        admin_ok(data, &args)
    };
    admin(&["users", "add", "--email", "ada@example.com"])?;
    let live = admin(&["tokens", "create", "--email", "ada@example.com"])?;

    // While someone else holds the cleanup lock, no replica deletes anything.
    let mut holder = sqlx::PgConnection::connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // A replica may be in the middle of a round; the lock is free between rounds.
    while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(prismd::store::CLEANUP_LOCK)
        .fetch_one(&mut holder)
        .await?
    {
        if Instant::now() > deadline {
            return Err("the cleanup lock was never free".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut conn = sqlx::PgConnection::connect(url).await?;
    for (statement, first, second) in SEED {
        seed_query(statement, *first, *second)
            .execute(&mut conn)
            .await?;
    }
    let skips = |server: &Server| server.logs().matches("cleanup skipped").count();
    let (a_before, b_before) = (skips(&a), skips(&b));
    let deadline = Instant::now() + Duration::from_secs(60);
    while skips(&a) < a_before + 2 || skips(&b) < b_before + 2 {
        if Instant::now() > deadline {
            return Err(format!("replicas did not skip:\n{}\n{}", a.logs(), b.logs()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        count_pg(&mut conn, COUNT_EXPIRED).await?,
        5,
        "nothing deleted"
    );

    // Released, one of them cleans up at its next round.
    let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(prismd::store::CLEANUP_LOCK)
        .fetch_one(&mut holder)
        .await?;
    assert!(unlocked);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_pg(&mut conn, COUNT_EXPIRED).await? != 0 {
        if Instant::now() > deadline {
            return Err("expired rows were never deleted".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count_pg(&mut conn, COUNT_LIVE).await?, 4);
    let access = a.access_token(&live).await?;
    assert_eq!(b.whoami(&access).await?, Ok("ada@example.com".into()));

    // A round that fails (a table is missing for a while) is logged, and the next one works.
    sqlx::query("ALTER TABLE invitations RENAME TO invitations_away")
        .execute(&mut conn)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(a.logs().contains("cleanup round failed") || b.logs().contains("cleanup round failed"))
    {
        if Instant::now() > deadline {
            return Err("no failed round was logged".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sqlx::query("ALTER TABLE invitations_away RENAME TO invitations")
        .execute(&mut conn)
        .await?;
    let (statement, first, second) = SEED[0];
    seed_query(statement, first, second)
        .execute(&mut conn)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_pg(&mut conn, COUNT_EXPIRED).await? != 0 {
        if Instant::now() > deadline {
            return Err("cleanup did not recover after a failed round".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    conn.close().await?;
    holder.close().await?;
    for server in [a, b] {
        let logs = server.stop()?;
        assert!(!logs.contains("ERROR"), "{logs}");
    }
    Ok(())
}
