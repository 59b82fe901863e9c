//! The narrow funnel every shared statement goes through: SQL text with `$n` placeholders
//! (both SQLite and PostgreSQL read them), neutral bind values, and an executor that either
//! backend provides. Rows come back as records that both drivers decode.
//!
//! Written here rather than with `sqlx::Any`: `Any` would need a second PostgreSQL pool beside
//! the one the `LISTEN` feed, the group-committed revokes and the breaker share, and would
//! lose SQLite's pragmas and writer hooks.

use std::borrow::Cow;
use std::future::Future;

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Database, Encode, FromRow, SqlSafeStr, SqlStr, Type};

use crate::store::StoreError;

/// A value bound to a `$n` placeholder. Each variant keeps its SQL type even when it is NULL,
/// because PostgreSQL types its parameters.
pub(crate) enum Bind<'q> {
    Text(Option<Cow<'q, str>>),
    Int(Option<i64>),
    Bool(Option<bool>),
    Bytes(Option<&'q [u8]>),
}

impl<'q> From<&'q str> for Bind<'q> {
    fn from(value: &'q str) -> Self {
        Self::Text(Some(Cow::Borrowed(value)))
    }
}

impl<'q> From<&'q String> for Bind<'q> {
    fn from(value: &'q String) -> Self {
        Self::Text(Some(Cow::Borrowed(value)))
    }
}

impl From<String> for Bind<'_> {
    fn from(value: String) -> Self {
        Self::Text(Some(Cow::Owned(value)))
    }
}

impl<'q> From<Option<&'q str>> for Bind<'q> {
    fn from(value: Option<&'q str>) -> Self {
        Self::Text(value.map(Cow::Borrowed))
    }
}

impl<'q> From<&'q Option<String>> for Bind<'q> {
    fn from(value: &'q Option<String>) -> Self {
        Self::Text(value.as_deref().map(Cow::Borrowed))
    }
}

impl From<Option<String>> for Bind<'_> {
    fn from(value: Option<String>) -> Self {
        Self::Text(value.map(Cow::Owned))
    }
}

impl From<i64> for Bind<'_> {
    fn from(value: i64) -> Self {
        Self::Int(Some(value))
    }
}

impl From<Option<i64>> for Bind<'_> {
    fn from(value: Option<i64>) -> Self {
        Self::Int(value)
    }
}

impl From<bool> for Bind<'_> {
    fn from(value: bool) -> Self {
        Self::Bool(Some(value))
    }
}

impl From<Option<bool>> for Bind<'_> {
    fn from(value: Option<bool>) -> Self {
        Self::Bool(value)
    }
}

impl<'q> From<&'q [u8]> for Bind<'q> {
    fn from(value: &'q [u8]) -> Self {
        Self::Bytes(Some(value))
    }
}

impl<'q> From<&'q [u8; 32]> for Bind<'q> {
    fn from(value: &'q [u8; 32]) -> Self {
        Self::Bytes(Some(value))
    }
}

impl<'q> From<&'q Vec<u8>> for Bind<'q> {
    fn from(value: &'q Vec<u8>) -> Self {
        Self::Bytes(Some(value))
    }
}

impl<'q> From<Option<&'q [u8]>> for Bind<'q> {
    fn from(value: Option<&'q [u8]>) -> Self {
        Self::Bytes(value)
    }
}

/// A record both drivers decode (every `sqlx::FromRow` record of this crate, and one-column
/// tuples for scalars).
pub(crate) trait Record:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static
{
}

impl<T> Record for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static
{
}

/// Runs statements: a reader pool, or a write transaction. Each backend implements it for its
/// connections, and is the one place that turns a [`Query`] into a driver call.
pub(crate) trait Exec: Send {
    /// Runs a statement; returns how many rows it changed.
    fn execute(&mut self, query: Query<'_>)
    -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Every row the statement returns.
    fn fetch_all<T: Record>(
        &mut self,
        query: Query<'_>,
    ) -> impl Future<Output = Result<Vec<T>, StoreError>> + Send;
}

/// One statement and its bound values, run through an [`Exec`].
pub(crate) struct Query<'q> {
    sql: SqlStr,
    binds: Vec<Bind<'q>>,
}

/// A statement whose rows are read as records (or, through [`Query::scalar`], single values).
pub(crate) fn query<'q>(sql: impl SqlSafeStr) -> Query<'q> {
    Query {
        sql: sql.into_sql_str(),
        binds: Vec::new(),
    }
}

impl<'q> Query<'q> {
    pub(crate) fn bind(mut self, value: impl Into<Bind<'q>>) -> Self {
        self.binds.push(value.into());
        self
    }

    pub(crate) async fn execute(self, on: &mut impl Exec) -> Result<u64, StoreError> {
        on.execute(self).await
    }

    pub(crate) async fn fetch_all<T: Record>(
        self,
        on: &mut impl Exec,
    ) -> Result<Vec<T>, StoreError> {
        on.fetch_all(self).await
    }

    pub(crate) async fn fetch_optional<T: Record>(
        self,
        on: &mut impl Exec,
    ) -> Result<Option<T>, StoreError> {
        Ok(on.fetch_all(self).await?.into_iter().next())
    }

    pub(crate) async fn fetch_one<T: Record>(self, on: &mut impl Exec) -> Result<T, StoreError> {
        self.fetch_optional(on)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }

    /// The first column of each row.
    pub(crate) fn scalar(self) -> Scalar<'q> {
        Scalar(self)
    }

    /// The driver's statement, with every value bound (sqlx encodes each as it is bound, so
    /// nothing borrowed outlives this call).
    pub(crate) fn prepare<DB>(self) -> sqlx::query::Query<'static, DB, DB::Arguments>
    where
        DB: Database,
        for<'a> Option<&'a str>: Encode<'a, DB> + Type<DB>,
        for<'a> Option<&'a [u8]>: Encode<'a, DB> + Type<DB>,
        for<'a> Option<i64>: Encode<'a, DB> + Type<DB>,
        for<'a> Option<bool>: Encode<'a, DB> + Type<DB>,
    {
        let mut prepared = sqlx::query(self.sql);
        for bind in self.binds {
            prepared = match bind {
                Bind::Text(value) => prepared.bind(value.as_deref()),
                Bind::Int(value) => prepared.bind(value),
                Bind::Bool(value) => prepared.bind(value),
                Bind::Bytes(value) => prepared.bind(value),
            };
        }
        prepared
    }
}

/// A [`Query`] read one column at a time.
pub(crate) struct Scalar<'q>(Query<'q>);

impl Scalar<'_> {
    pub(crate) async fn fetch_all<T>(self, on: &mut impl Exec) -> Result<Vec<T>, StoreError>
    where
        (T,): Record,
    {
        let rows: Vec<(T,)> = on.fetch_all(self.0).await?;
        Ok(rows.into_iter().map(|(value,)| value).collect())
    }

    pub(crate) async fn fetch_optional<T>(self, on: &mut impl Exec) -> Result<Option<T>, StoreError>
    where
        (T,): Record,
    {
        Ok(self.fetch_all(on).await?.into_iter().next())
    }

    pub(crate) async fn fetch_one<T>(self, on: &mut impl Exec) -> Result<T, StoreError>
    where
        (T,): Record,
    {
        self.fetch_optional(on)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }
}
