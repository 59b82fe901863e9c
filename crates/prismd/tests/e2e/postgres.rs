//! `prismd` on PostgreSQL end to end: `serve --database-url postgres://...` on a fresh
//! database, admin commands with the same URL, refresh, the API and revocation. Like the store
//! conformance suite, it needs `PRISM_TEST_POSTGRES_URL` and fails without it.

use sqlx::Connection;

use crate::harness::{Options, Server, TestResult, admin_ok, prismd, temp_dir};

/// A database created for one test, dropped by [`FreshDatabase::drop_now`].
pub struct FreshDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl FreshDatabase {
    pub async fn create() -> Result<Self, Box<dyn std::error::Error>> {
        let admin_url = std::env::var("PRISM_TEST_POSTGRES_URL").map_err(|_| {
            "PRISM_TEST_POSTGRES_URL is not set; the PostgreSQL end-to-end test needs a server \
             where it may CREATE DATABASE, e.g. postgres://postgres@127.0.0.1:5432/test"
        })?;
        let name = format!("prism_e2e_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let mut url = url::Url::parse(&admin_url)?;
        url.set_path(&name);
        Ok(Self {
            admin_url,
            name,
            url: url.to_string(),
        })
    }

    pub async fn drop_now(self) -> Result<(), Box<dyn std::error::Error>> {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await?;
        admin.close().await?;
        Ok(())
    }
}

#[tokio::test]
async fn serve_and_admin_commands_on_postgres() -> TestResult {
    let db = FreshDatabase::create().await?;
    let outcome = lifecycle(&db.url).await;
    db.drop_now().await?;
    outcome
}

async fn lifecycle(url: &str) -> TestResult {
    let dir = temp_dir()?;
    // Before any server ran, admin commands refuse the empty database instead of setting it up.
    let refused = prismd(dir.path(), &["--database-url", url, "orgs", "list"])?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no prism-auth tables"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let server = Server::start_with(
        dir.path(),
        Options {
            args: vec!["--database-url".into(), url.into()],
            ..Options::default()
        },
    )?;
    assert!(
        !dir.path().join("prismd.db").exists(),
        "no SQLite file beside a PostgreSQL server"
    );
    assert!(dir.path().join(prismd::INITIAL_PASSWORD_FILE).exists());
    // The log names host and database, never the URL (which may carry a password).
    assert!(server.logs().contains("database ready"));
    assert!(!server.logs().contains(url), "{}", server.logs());

    let with_url = |args: &[&str]| -> Vec<String> {
        ["--database-url", url]
            .iter()
            .chain(args)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let run = |args: &[&str]| -> Result<String, Box<dyn std::error::Error>> {
        let args = with_url(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        admin_ok(dir.path(), &args)
    };
    run(&[
        "users",
        "add",
        "--email",
        "ada@example.com",
        "--role",
        "Integrator",
    ])?;
    let refresh = run(&["tokens", "create", "--email", "ada@example.com"])?;
    let (status, body) = server.refresh(&refresh).await?;
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"]
        .as_str()
        .ok_or("no access_token")?
        .to_owned();
    assert_eq!(server.whoami(&access).await?, Ok("ada@example.com".into()));

    let (status, _) = server.revoke(&refresh).await?;
    assert_eq!(status, 200);
    let (status, body) = server.refresh(&refresh).await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(server.whoami(&access).await?, Err(401));

    // The audit trail of the same database, read by an admin command.
    let audit = run(&["audit", "--limit", "50"])?;
    assert!(audit.lines().count() >= 3, "{audit}");

    // A second start on the same database finds the organization and the key it made.
    let logs = server.stop()?;
    assert!(!logs.contains("ERROR"), "{logs}");
    let again = Server::start_with(
        dir.path(),
        Options {
            args: vec![],
            env: vec![("PRISMD_DATABASE_URL".into(), url.into())],
            ..Options::default()
        },
    )?;
    let refresh = run(&["tokens", "create", "--email", "ada@example.com"])?;
    let access = again.access_token(&refresh).await?;
    assert_eq!(again.whoami(&access).await?, Ok("ada@example.com".into()));
    let orgs = run(&["orgs", "list"])?;
    assert_eq!(orgs.lines().count(), 1, "{orgs}");
    again.stop()?;
    Ok(())
}
