//! Connection pool, circuit breaker and cache counters, read in memory for metrics.

/// One connection pool's state at a moment, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// A fixed name: `sqlite_writer`, `sqlite_readers` or `postgres`.
    pub pool: &'static str,
    /// Connections open now, idle or in use.
    pub open: u32,
    pub idle: u32,
    /// Most connections the pool opens.
    pub max: u32,
}

impl PoolStats {
    /// Reads a sqlx pool's counters (no I/O).
    pub fn of<DB: sqlx::Database>(pool: &'static str, sqlx_pool: &sqlx::Pool<DB>) -> Self {
        Self {
            pool,
            open: sqlx_pool.size(),
            idle: u32::try_from(sqlx_pool.num_idle()).unwrap_or(u32::MAX),
            max: sqlx_pool.options().get_max_connections(),
        }
    }
}

/// The database connections' state, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub pools: Vec<PoolStats>,
    /// The circuit breaker's state; `None` where there is no breaker (SQLite).
    pub circuit: Option<CircuitStats>,
}

/// The circuit breaker's state, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CircuitStats {
    pub open: bool,
    /// Requests refused at once while the circuit was open, since the start.
    pub rejections: u64,
}
