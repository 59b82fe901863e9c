//! The upgrade fixtures' deployments (`tests/fixtures/<folder>`, written by its make.sh): the
//! manifest, the SQLite database copied into a temp data dir or the PostgreSQL dump loaded into a
//! fresh database, `prismd` started on it, and read-only queries of it that run on both backends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use sqlx::Connection as _;
use sqlx::FromRow;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use crate::harness::{Options, Server, TestResult, temp_dir};
use crate::postgres::FreshDatabase;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The fixture folder `folder` (e.g. `before-identities`) under tests/fixtures.
fn folder_path(folder: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(folder)
}

// ---------------------------------------------------------------------------------------------
// The manifest make.sh wrote next to the fixtures.

/// manifest.json: what each backend's fixture holds, as the test's own `F` reads it.
#[derive(Deserialize)]
pub struct Manifest<F> {
    pub backends: Backends<F>,
}

#[derive(Deserialize)]
pub struct Backends<F> {
    pub sqlite: F,
    pub postgres: F,
}

/// The manifest of the fixture folder `folder`.
pub fn manifest<F: DeserializeOwned>(folder: &str) -> Res<Manifest<F>> {
    let text = std::fs::read_to_string(folder_path(folder).join("manifest.json"))?;
    Ok(serde_json::from_str(&text)?)
}

/// Seconds in a day, for the policies and expiries of the manifests.
pub const DAY_SECS: i64 = 86_400;

/// The id the API shows for the record `id` of `kind` (`User`, `ServiceAccount`).
pub fn public_id(kind: &str, id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{kind}:{id}"))
}

/// A role key as stored (`owner`) as the API names it (`Owner`).
pub fn role_name(key: &str) -> Res<&'static str> {
    Ok(match key {
        "owner" => "Owner",
        "admin" => "Admin",
        "integrator" => "Integrator",
        "restricted_integrator" => "Restricted Integrator",
        "guest" => "Guest",
        other => return Err(format!("unknown role key {other:?}").into()),
    })
}

/// Now, in ms since the epoch.
pub fn now_ms() -> Res<i64> {
    Ok(i64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis(),
    )?)
}

// ---------------------------------------------------------------------------------------------
// The copied fixture, its server and its database.

/// A data directory with the fixture's data (the SQLite file in it, or a PostgreSQL database).
pub struct Deployment {
    dir: tempfile::TempDir,
    database_url: Option<String>,
}

/// A row both backends decode the same way (what [`Deployment::rows`] returns).
pub trait FixtureRow:
    for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin
{
}

impl<T> FixtureRow for T where
    T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin
{
}

/// Runs `$body` with `$conn`, a fresh read-only connection to the deployment's database (the
/// same SQL on both backends), and closes it.
macro_rules! read_only {
    ($deployment:expr, |$conn:ident| $body:expr) => {
        match &$deployment.database_url {
            Some(url) => {
                let mut $conn = sqlx::PgConnection::connect(url).await?;
                sqlx::query("SET default_transaction_read_only = on")
                    .execute(&mut $conn)
                    .await?;
                let value = $body;
                $conn.close().await?;
                value
            }
            None => {
                let mut $conn = $deployment.sqlite_read_only().await?;
                let value = $body;
                $conn.close().await?;
                value
            }
        }
    };
}

/// Runs each of `fixups` on the freshly copied or loaded fixture with `$1` bound to `value`.
async fn make_current<DB: sqlx::Database>(
    conn: &mut DB::Connection,
    fixups: &[&'static str],
    value: i64,
) -> Res<()>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    i64: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    for statement in fixups {
        sqlx::query(*statement)
            .bind(value)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

impl Deployment {
    /// A copy of the SQLite fixture of `folder`, made current: each of `fixups` run on it with
    /// `$1` bound to what `value` gives once the copy is open.
    pub async fn sqlite_copy(
        folder: &str,
        fixups: &[&'static str],
        value: impl FnOnce() -> Res<i64>,
    ) -> Res<Self> {
        let dir = temp_dir()?;
        let file = dir.path().join("prismd.db");
        std::fs::copy(folder_path(folder).join("sqlite/prismd.db"), &file)?;
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display())).await?;
        make_current::<sqlx::Sqlite>(&mut conn, fixups, value()?).await?;
        conn.close().await?;
        Ok(Self {
            dir,
            database_url: None,
        })
    }

    /// Runs `test` on the PostgreSQL dump of `folder` loaded into a fresh database and made
    /// current as [`Deployment::sqlite_copy`] makes the SQLite copy; drops the database after,
    /// whatever the outcome.
    pub async fn on_postgres(
        folder: &str,
        fixups: &[&'static str],
        value: impl FnOnce() -> Res<i64>,
        test: impl AsyncFnOnce(&Self) -> TestResult,
    ) -> TestResult {
        let db = FreshDatabase::create().await?;
        let outcome = match Self::postgres_load(&db.url, folder, fixups, value).await {
            Ok(deployment) => test(&deployment).await,
            Err(err) => Err(err),
        };
        db.drop_now().await?;
        outcome
    }

    /// The PostgreSQL dump of `folder` loaded into the empty database `url`, made current.
    async fn postgres_load(
        url: &str,
        folder: &str,
        fixups: &[&'static str],
        value: impl FnOnce() -> Res<i64>,
    ) -> Res<Self> {
        let dump = std::fs::read_to_string(folder_path(folder).join("postgres.sql"))?;
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(dump))
            .execute(&mut conn)
            .await?;
        make_current::<sqlx::Postgres>(&mut conn, fixups, value()?).await?;
        conn.close().await?;
        Ok(Self {
            dir: temp_dir()?,
            database_url: Some(url.to_owned()),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PostgreSQL database, if the deployment is on PostgreSQL.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    pub fn start(&self) -> Res<Server> {
        let args = match &self.database_url {
            Some(url) => vec!["--database-url".to_owned(), url.clone()],
            None => Vec::new(),
        };
        Server::start_with(
            self.dir.path(),
            Options {
                args,
                ..Options::default()
            },
        )
    }

    async fn sqlite_read_only(&self) -> Res<sqlx::SqliteConnection> {
        let url = format!(
            "sqlite://{}?mode=ro",
            self.dir.path().join("prismd.db").display()
        );
        Ok(sqlx::SqliteConnection::connect(&url).await?)
    }

    /// Every row `sql` selects, read-only.
    pub async fn rows<T: FixtureRow>(&self, sql: &'static str) -> Res<Vec<T>> {
        Ok(read_only!(self, |conn| sqlx::query_as(sql)
            .fetch_all(&mut conn)
            .await?))
    }

    /// The one column `sql` selects, every row, read-only.
    pub async fn column<T>(&self, sql: &'static str) -> Res<Vec<T>>
    where
        (T,): FixtureRow,
        T: Send + Unpin,
    {
        Ok(read_only!(self, |conn| sqlx::query_scalar(sql)
            .fetch_all(&mut conn)
            .await?))
    }

    pub async fn count(&self, table: &str) -> Res<i64> {
        if !table.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(format!("not a table name: {table:?}").into());
        }
        let sql = format!("SELECT COUNT(*) FROM {table}");
        Ok(read_only!(self, |conn| sqlx::query_scalar(
            sqlx::AssertSqlSafe(sql)
        )
        .fetch_one(&mut conn)
        .await?))
    }

    pub async fn audit_actions(&self) -> Res<BTreeMap<String, i64>> {
        let sql = "SELECT action, COUNT(*) FROM audit_events GROUP BY action";
        let rows: Vec<(String, i64)> = self.rows(sql).await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn migrations(&self) -> Res<Vec<i64>> {
        self.column("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .await
    }
}
