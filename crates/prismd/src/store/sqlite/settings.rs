//! The settings every kind of SQLite connection opens with (the pools', the direct readers',
//! the revoke thread's): one place, so that the three cannot drift apart.

use std::time::Duration;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "prismd.db";

/// How long a statement waits for another process's write lock (admin commands run beside
/// the server) before giving up.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of the database file each connection maps (`PRAGMA mmap_size`).
pub(super) const MMAP_SIZE: &str = "1073741824";
