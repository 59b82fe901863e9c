//! Persistence: the storage traits every domain function talks to, the records they return,
//! the storage error type, and the one place that picks a backend (SQLite or PostgreSQL)
//! from the database URL.
//!
//! Layout, dependencies one way only: the interface (`interface`, `records`, `error`,
//! `changes`, `stats`, `audit_query`, `location`) at the bottom; the standing cache
//! (`cache`) and the revoke queue (`group_commit`) above it; the shared SQL by aggregate
//! (`sql`) above those; and each backend's own side (`sqlite`, `postgres`) on top, which the
//! shared SQL never names.

mod audit_query;
mod cache;
mod changes;
mod cleanup;
mod error;
mod group_commit;
mod interface;
mod location;
mod postgres;
mod records;
mod sql;
mod sqlite;
mod stats;

use std::sync::Arc;

pub use audit_query::*;
pub use cache::{CacheSettings, CacheStats, StandingCache};
pub use changes::*;
pub use cleanup::{CleanupLock, Garbage};
pub use error::*;
pub use interface::*;
pub use location::*;
pub use postgres::{BreakerSettings, CLEANUP_LOCK, CircuitBreaker, PgPoolSettings};
pub use records::*;
pub use sqlite::DATABASE_FILE;
pub use stats::*;

use postgres::PgDialect;
use sql::SqlStore;
use sqlite::SqliteDialect;

/// The storage traits, for `use crate::store::traits::*`: a method of `dyn Store` is called
/// through the trait of its aggregate, which must be in scope.
pub mod traits {
    pub use super::interface::{
        AuditStore, KeyStore, LimitStore, Maintenance, OrganizationStore, ResourceServerStore,
        SignInStore, Store, TokenStore, TrustStore, UserStore,
    };
}

/// Opens (creating if needed) the database and applies migrations: what `serve` does. On
/// PostgreSQL, requests go through a circuit breaker, so a server keeps running through
/// database outages and fails fast while the database is gone.
pub async fn open(backend: &Backend, options: OpenOptions) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match backend {
        Backend::Sqlite(path) => Arc::new(SqlStore::new(
            SqliteDialect::open_file(path, options.sqlite_readers).await?,
            options.cache,
        )),
        Backend::Postgres(url) => {
            let breaker = BreakerSettings {
                probe_timeout: options.postgres.acquire_timeout.saturating_mul(2),
                ..BreakerSettings::default()
            };
            Arc::new(SqlStore::new(
                PgDialect::open(url, options.postgres, breaker).await?,
                options.cache,
            ))
        }
    })
}

/// Opens a database that must exist already: what admin commands do, so a mistyped location
/// is an error rather than a new, empty install. No cache (nothing follows the change feed)
/// and no breaker (a command runs a statement or two, and reports the error it gets).
pub async fn open_existing(
    backend: &Backend,
    options: OpenOptions,
) -> Result<Arc<dyn Store>, StoreError> {
    let no_cache = CacheSettings {
        ttl: std::time::Duration::ZERO,
        ..options.cache
    };
    Ok(match backend {
        Backend::Sqlite(path) => Arc::new(SqlStore::new(
            SqliteDialect::open_existing_file(path, options.sqlite_readers).await?,
            no_cache,
        )),
        Backend::Postgres(url) => Arc::new(SqlStore::new(
            PgDialect::open_existing(url, options.postgres).await?,
            no_cache,
        )),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Both backends must run the same schema versions: a migration added to one only would
    /// make the other's records (and `FromRow`) disagree.
    #[test]
    fn migration_versions_match() {
        let versions = |m: &sqlx::migrate::Migrator| -> Vec<(i64, String)> {
            m.iter()
                .filter(|m| !m.migration_type.is_down_migration())
                .map(|m| (m.version, m.description.to_string()))
                .collect()
        };
        let sqlite = versions(&sqlite::MIGRATOR);
        let postgres = versions(&postgres::MIGRATOR);
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, postgres);
    }

    /// The same check on the directories, file name by file name.
    #[test]
    fn migration_file_names_match() -> Result<(), std::io::Error> {
        let names = |dir: &str| -> Result<Vec<String>, std::io::Error> {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let mut names = std::fs::read_dir(path)?
                .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>()?;
            names.sort();
            Ok(names)
        };
        assert_eq!(names("sqlite")?, names("postgres")?);
        Ok(())
    }
}
