//! The storage error type and how driver errors are sorted into it (a database that cannot
//! be reached is told apart from one that answered with an error).

/// Storage failures. Handlers map every variant to a response without internals.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (for example an active user with that email exists).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The database answered with an error (or the driver failed) on a working connection.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The database cannot be reached: no connection could be opened in time, or the one in
    /// use broke (see [`is_connection_failure`]). Trips the circuit breaker.
    #[error("database unreachable: {0}")]
    Unreachable(sqlx::Error),
    /// The circuit breaker is open: a recent request found the database unreachable, so this
    /// one fails at once instead of waiting for a connection, until a probe gets an answer.
    #[error("database unreachable (circuit open; waiting for it to answer again)")]
    CircuitOpen,
    /// Migrations could not be applied.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The data directory or database file could not be prepared.
    #[error("cannot prepare the database file: {0}")]
    Io(#[from] std::io::Error),
    /// The database file or its directory cannot be written (a read-only file system or
    /// missing permissions). prismd writes on every start, so it refuses to start.
    #[error(
        "cannot write the database file {}: {cause}; prismd needs a writable data directory \
         (check the mount and the file's owner)",
        path.display()
    )]
    NotWritable {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    /// The disk holding the database is full: writes fail (and are answered 503) until space
    /// is freed; reads go on.
    #[error("the database's disk is full; writes fail until space is freed: {0}")]
    DiskFull(Box<dyn std::error::Error + Send + Sync>),
    /// SQLite answered with an error on one of the backend's own connections (the revoke
    /// thread's); like [`StoreError::Database`].
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    /// An admin command was pointed at a directory without a database.
    #[error(
        "no database at {0}; check --data-dir, or start the server once ('prismd serve') to create it"
    )]
    Missing(std::path::PathBuf),
    /// An admin command was pointed at a PostgreSQL database nobody has set up.
    #[error(
        "the PostgreSQL database has no prism-auth tables; check --database-url, or start the \
         server once ('prismd serve') to create them"
    )]
    NoSchema,
    /// The database answers but refuses writes (for example a read-only standby).
    #[error("the database is read-only")]
    ReadOnly,
    /// The database URL names no backend we have. Only the scheme is shown: the rest may hold
    /// a password.
    #[error(
        "unsupported database URL (scheme '{0}'); use sqlite:<file> or postgres://user@host/db"
    )]
    UnsupportedUrl(String),
}

impl From<sqlx::Error> for StoreError {
    /// Sorts driver errors: connection-class failures become [`StoreError::Unreachable`],
    /// everything else [`StoreError::Database`].
    fn from(err: sqlx::Error) -> Self {
        if is_connection_failure(&err) {
            Self::Unreachable(err)
        } else if is_disk_full(&err) {
            Self::DiskFull(Box::new(err))
        } else {
            Self::Database(err)
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    /// The SQLite backend's own connections (the revoke thread): a full disk is
    /// [`StoreError::DiskFull`], anything else [`StoreError::Sqlite`].
    fn from(err: rusqlite::Error) -> Self {
        if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            Self::DiskFull(Box::new(err))
        } else {
            Self::Sqlite(err)
        }
    }
}

impl StoreError {
    /// Whether the database could not be reached (rather than refusing this one request):
    /// the caller may retry, and the server is not ready.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::CircuitOpen)
    }
}

/// PostgreSQL SQLSTATEs that mean "no usable connection" rather than "this statement failed":
/// class 08 (connection exception) is matched by prefix; 57P01 admin_shutdown, 57P02
/// crash_shutdown, 57P03 cannot_connect_now (starting up or shutting down) and 53300
/// too_many_connections.
const CONNECTION_SQLSTATES: [&str; 4] = ["57P01", "57P02", "57P03", "53300"];

/// Whether `err` says the database cannot be reached or the connection broke: I/O and TLS
/// errors, a pool that timed out or was closed, a crashed driver worker, and the SQLSTATEs
/// above. Constraint violations, syntax errors, serialization failures and the like are not:
/// the database answered.
pub fn is_connection_failure(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_connection_sqlstate(&code)),
        _ => false,
    }
}

/// SQLite's `SQLITE_FULL` (13) and PostgreSQL's `disk_full` (53100).
fn is_disk_full(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code == "13" || code == "53100"),
        _ => false,
    }
}

fn is_connection_sqlstate(code: &str) -> bool {
    code.starts_with("08") || CONNECTION_SQLSTATES.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_told_apart_from_answers() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_connection_failure(&sqlx::Error::Io(refused)));
        assert!(is_connection_failure(&sqlx::Error::PoolTimedOut));
        assert!(is_connection_failure(&sqlx::Error::PoolClosed));
        assert!(!is_connection_failure(&sqlx::Error::RowNotFound));
        assert!(!is_connection_failure(&sqlx::Error::Protocol("odd".into())));
        for code in [
            "08000", "08006", "08P01", "57P01", "57P02", "57P03", "53300",
        ] {
            assert!(is_connection_sqlstate(code), "{code}");
        }
        // unique_violation, serialization_failure, read_only_sql_transaction, query_canceled,
        // invalid_password, and SQLite's extended codes.
        for code in ["23505", "40001", "25006", "57014", "28P01", "2067", "5"] {
            assert!(!is_connection_sqlstate(code), "{code}");
        }
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unreachable());
        assert!(StoreError::CircuitOpen.is_unreachable());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_unreachable());
    }
}
