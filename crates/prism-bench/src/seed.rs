//! Seeding: identities, their users and refresh tokens written straight into the database
//! `prismd` created, in
//! multi-row statements, so that a million tokens take seconds rather than the hour a million
//! single-token transactions would. The rows are the ones `prismd` itself writes (see its
//! migrations); only the SHA-256 of each secret is stored, as prismd does.
//!
//! The tokens carry the `scope` given (`--token-scope`); organization-defined scopes it names
//! (`deploy:prod`) are declared in the organization and granted to the seeded users' role, as
//! `createScope` and `grantScope` would, so that the exchange grants them.
//!
//! The `exchange` scenario's service account and trust policy are made by prismd's own operator
//! commands instead ([`trust_policy`]): they are two rows, and a policy owns a session that
//! prismd creates its own way.

use anyhow::Context;
use prism_proto::token_format::{self, SecretKind};
use prismd::domain::scopes::{self, ApiScope};
use prismd::store::Grantee;
use sha2::{Digest, Sha256};
use sqlx::Connection as _;

/// Rows per INSERT statement (up to 9 columns each stays under both backends' parameter limits).
const ROWS_PER_STATEMENT: usize = 1000;
/// Statements per transaction.
const STATEMENTS_PER_TRANSACTION: usize = 100;

/// Where to seed.
pub enum Target {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

/// What was seeded: refresh-token secrets.
pub struct Seeded {
    /// `tokens` secrets spread over `users` users (the exchange and API scenarios).
    pub shared: Vec<String>,
    /// One secret each of `revocable` further users (the revoke scenario uses each once).
    pub revocable: Vec<String>,
}

enum Value {
    Text(String),
    Int(i64),
    Bytes(Vec<u8>),
}

enum Db {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

/// Binds every value of `rows` to `sql` and runs it, on either backend.
macro_rules! execute_bound {
    ($conn:expr, $sql:expr, $rows:expr) => {{
        let mut query = sqlx::query(sqlx::AssertSqlSafe($sql));
        for value in $rows {
            query = match value {
                Value::Text(text) => query.bind(text),
                Value::Int(int) => query.bind(int),
                Value::Bytes(bytes) => query.bind(bytes),
            };
        }
        query.execute($conn).await?;
    }};
}

impl Db {
    async fn open(target: &Target) -> anyhow::Result<Self> {
        Ok(match target {
            Target::Sqlite(path) => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .busy_timeout(std::time::Duration::from_secs(30))
                    // Random-order inserts into the token-hash index thrash a small cache.
                    .pragma("cache_size", "-524288");
                Self::Sqlite(sqlx::SqliteConnection::connect_with(&options).await?)
            }
            Target::Postgres(url) => Self::Postgres(sqlx::PgConnection::connect(url).await?),
        })
    }

    async fn default_org(&mut self) -> anyhow::Result<String> {
        let sql = "SELECT id FROM organizations ORDER BY created_at LIMIT 1";
        let id: Option<String> = match self {
            Self::Sqlite(conn) => sqlx::query_scalar(sql).fetch_optional(conn).await?,
            Self::Postgres(conn) => sqlx::query_scalar(sql).fetch_optional(conn).await?,
        };
        id.context("prismd has not created its organization yet")
    }

    /// `INSERT INTO <table> (<columns>) VALUES (...), (...)` for each chunk of rows.
    async fn insert(
        &mut self,
        table_and_columns: &str,
        columns: usize,
        rows: Vec<Vec<Value>>,
    ) -> anyhow::Result<()> {
        let mut rows = rows.into_iter().peekable();
        let mut in_transaction = 0;
        while rows.peek().is_some() {
            // Many statements per transaction: one fsync per 100,000 rows, not per 1,000.
            if in_transaction == 0 {
                self.execute("BEGIN").await?;
            }
            let chunk: Vec<Vec<Value>> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
            let placeholders: Vec<String> = (0..chunk.len())
                .map(|row| {
                    let cells: Vec<String> = (1..=columns)
                        .map(|col| format!("${}", row * columns + col))
                        .collect();
                    format!("({})", cells.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO {table_and_columns} VALUES {}",
                placeholders.join(", ")
            );
            let values = chunk.into_iter().flatten();
            match self {
                Self::Sqlite(conn) => execute_bound!(&mut *conn, sql, values),
                Self::Postgres(conn) => execute_bound!(&mut *conn, sql, values),
            }
            in_transaction += 1;
            if in_transaction == STATEMENTS_PER_TRANSACTION || rows.peek().is_none() {
                self.execute("COMMIT").await?;
                in_transaction = 0;
            }
        }
        Ok(())
    }

    async fn execute(&mut self, sql: &'static str) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(conn) => {
                sqlx::raw_sql(sql).execute(conn).await?;
            }
            Self::Postgres(conn) => {
                sqlx::raw_sql(sql).execute(conn).await?;
            }
        }
        Ok(())
    }
}

/// The role of every seeded user.
const ROLE: &str = "integrator";

/// The organization-defined scopes `scope` names (API scope names that are not built-in), each
/// once; an error for a name prismd would refuse to declare.
pub fn org_scopes(scope: &str) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for name in scope.split_whitespace() {
        if !scopes::is_api_scope_name(name) || ApiScope::parse(name).is_some() {
            continue;
        }
        let name = scopes::check_org_scope_name(name)
            .map_err(|err| anyhow::anyhow!("--token-scope: {err}"))?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Seeds `users` users sharing `tokens` tokens, and `revocable` users with one token each;
/// every token has the scope `token_scope`.
pub async fn seed(
    target: &Target,
    users: usize,
    tokens: usize,
    revocable: usize,
    token_scope: &str,
) -> anyhow::Result<Seeded> {
    let own_scopes = org_scopes(token_scope)?;
    let mut db = Db::open(target).await?;
    let org = db.default_org().await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let now = i64::try_from(now)?;
    if !own_scopes.is_empty() {
        let scope_rows = own_scopes
            .iter()
            .map(|name| {
                vec![
                    Value::Text(org.clone()),
                    Value::Text(name.clone()),
                    Value::Text("seeded by prism-bench".into()),
                    Value::Int(now),
                ]
            })
            .collect();
        db.insert(
            "org_scopes (org_id, name, description, created_at)",
            4,
            scope_rows,
        )
        .await?;
        let grantee = Grantee::Role(ROLE.to_owned()).key();
        let grant_rows = own_scopes
            .iter()
            .map(|name| {
                vec![
                    Value::Text(org.clone()),
                    Value::Text(name.clone()),
                    Value::Text(grantee.clone()),
                    Value::Int(now),
                ]
            })
            .collect();
        db.insert(
            "scope_grants (org_id, scope, grantee, created_at)",
            4,
            grant_rows,
        )
        .await?;
    }
    let user_ids: Vec<String> = (0..users.max(1) + revocable)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    // Each user is one person's membership, as prismd makes them: an identity, and its member.
    let identity_ids: Vec<String> = user_ids
        .iter()
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let identity_rows = identity_ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            vec![
                Value::Text(id.clone()),
                Value::Text(format!("bench{n}@example.com")),
                Value::Int(now),
                Value::Int(now),
            ]
        })
        .collect();
    db.insert(
        "identities (id, email, created_at, updated_at)",
        4,
        identity_rows,
    )
    .await?;
    let user_rows = user_ids
        .iter()
        .zip(&identity_ids)
        .enumerate()
        .map(|(n, (id, identity_id))| {
            vec![
                Value::Text(id.clone()),
                Value::Text(org.clone()),
                Value::Text(format!("bench{n}@example.com")),
                Value::Text(format!("Bench {n}")),
                Value::Text(ROLE.into()),
                Value::Int(now),
                Value::Int(now),
                Value::Text(identity_id.clone()),
                Value::Int(now),
            ]
        })
        .collect();
    db.insert(
        "users (id, org_id, email, name, role, created_at, updated_at, identity_id, joined_at)",
        9,
        user_rows,
    )
    .await?;

    let (shared_users, revocable_users) = user_ids.split_at(users.max(1));
    let owners = (0..tokens.max(1))
        .map(|n| &shared_users[n % shared_users.len()])
        .chain(revocable_users.iter());
    let mut secrets = Vec::with_capacity(tokens + revocable);
    let mut token_rows = Vec::with_capacity(tokens + revocable);
    for user_id in owners {
        let secret = token_format::generate(SecretKind::RefreshToken)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        token_rows.push(vec![
            Value::Text(uuid::Uuid::new_v4().to_string()),
            Value::Bytes(Sha256::digest(secret.as_bytes()).to_vec()),
            Value::Text(user_id.clone()),
            Value::Int(0),
            Value::Text("prism-cli".into()),
            Value::Text(token_scope.to_owned()),
            Value::Int(now),
        ]);
        secrets.push(secret);
    }
    db.insert(
        "refresh_tokens (id, token_hash, user_id, user_epoch, client_id, scope, created_at)",
        7,
        token_rows,
    )
    .await?;
    // PostgreSQL: planner statistics for the rows just written, as a database that has served
    // them for a while has from autovacuum. Without them it takes the seeded tables for empty
    // and plans the revoke-all's identity lookup as a scan of a whole index per revoke (a
    // twentieth of the revokes a second, measured). SQLite is left as prismd leaves it.
    if matches!(db, Db::Postgres(_)) {
        db.execute("ANALYZE").await?;
    }
    let revocable = secrets.split_off(tokens.max(1));
    Ok(Seeded {
        shared: secrets,
        revocable,
    })
}

/// Runs one of `prismd`'s operator commands on the running server's database (`data_dir`, or
/// `database_url`); its stdout, or a failure with prismd's message.
fn operator(
    prismd: &std::path::Path,
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    args: &[&str],
) -> anyhow::Result<String> {
    let mut command = std::process::Command::new(prismd);
    command.arg("--data-dir").arg(data_dir);
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let output = command
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", prismd.display()))?;
    if !output.status.success() {
        anyhow::bail!(
            "prismd {} failed ({}): {}",
            args.first().copied().unwrap_or_default(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Registers the `introspect` scenario's resource server with `prismd resource-servers add`;
/// its `Authorization: Basic ...` header value.
pub fn resource_server(
    prismd: &std::path::Path,
    data_dir: &std::path::Path,
    database_url: Option<&str>,
) -> anyhow::Result<String> {
    use base64::Engine as _;
    let printed = operator(
        prismd,
        data_dir,
        database_url,
        &["resource-servers", "add", "--name", "prism-bench"],
    )?;
    let credentials: serde_json::Value = serde_json::from_str(printed.trim())?;
    let (Some(id), Some(secret)) = (
        credentials["client_id"].as_str(),
        credentials["client_secret"].as_str(),
    ) else {
        anyhow::bail!("prismd resource-servers add printed {printed}");
    };
    Ok(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    ))
}

/// The service account the `exchange` scenario's pipeline acts as.
pub const SERVICE_ACCOUNT: &str = "bench-ci";

/// Adds, with `prismd`'s operator commands on the running server's database (`data_dir`, or
/// `database_url`), the service account [`SERVICE_ACCOUNT`] (Integrator) to the first
/// organization and a trust policy mapping `issuer`'s tokens for `audience` whose `sub` is
/// `subject` and whose `ref` is a branch to it; prints nothing, fails with prismd's message.
pub fn trust_policy(
    prismd: &std::path::Path,
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    issuer: &str,
    audience: &str,
    subject: &str,
) -> anyhow::Result<()> {
    let run = |args: &[&str]| operator(prismd, data_dir, database_url, args).map(|_| ());
    run(&[
        "service-accounts",
        "add",
        "--name",
        SERVICE_ACCOUNT,
        "--role",
        "Integrator",
        "--description",
        "the exchange scenario's pipeline",
    ])?;
    run(&[
        "trust-policies",
        "add",
        "--name",
        "prism-bench",
        "--issuer",
        issuer,
        "--audience",
        audience,
        "--service-account",
        SERVICE_ACCOUNT,
        "--claim",
        &format!("sub={subject}"),
        "--claim-glob",
        "ref=refs/heads/*",
        // The issuer is this process's, on plain HTTP over loopback.
        "--oidc-allow-http-issuers",
    ])
}

/// A PostgreSQL database made for one run, dropped by [`FreshPostgres::drop_now`].
pub struct FreshPostgres {
    admin_url: String,
    name: String,
    pub url: String,
}

impl FreshPostgres {
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("prism_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .context("cannot connect to --database-url")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let mut url = url::Url::parse(admin_url)?;
        url.set_path(&name);
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
        })
    }

    pub async fn drop_now(self) -> anyhow::Result<()> {
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
