//! The `sqlite:` driver of the store's `AnyConnection`s: SQLite through rusqlite, on the
//! thread that asks.
//!
//! sqlx's own SQLite driver gives each connection a thread and hands every statement to it
//! and every row back. On the hot path those hand-offs cost more than SQLite's work: most
//! of the process's time went to the kernel waking threads, and an echo runs some thirty
//! statements. SQLite answers the store's statements in microseconds from its page cache,
//! so here they run where they are asked, prepared once per connection. Only what may wait
//! goes to tokio's blocking threads: a `COMMIT`, which syncs the disk, and a `BEGIN
//! IMMEDIATE`, which waits for SQLite's lock while another process writes.
//!
//! The store's SQL is the same as before: this plugs into sqlx's Any layer, beside sqlx's
//! PostgreSQL driver. sqlx's SQLite driver still brings the schema up to date
//! ([`migrate`]); this one runs no migrations.
//!
//! One writer connection and a few read-only ones share the file ([`super::writer`]); in
//! WAL mode readers never wait for the writer.

mod error;
mod run;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use rusqlite::OpenFlags;
use sqlx::Either;
use sqlx_core::any::driver::AnyDriver;
use sqlx_core::any::{
    AnyArguments, AnyConnectOptions, AnyConnectionBackend, AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo,
};
use sqlx_core::connection::{ConnectOptions, Connection};
use sqlx_core::database::Database;
use sqlx_core::sql_str::SqlStr;
use sqlx_core::transaction::{
    Transaction, TransactionManager, begin_ansi_transaction_sql, commit_ansi_transaction_sql,
    rollback_ansi_transaction_sql,
};

pub use error::SqliteError;

/// The driver to install for `sqlite:` URLs (see [`super::install_drivers`]).
pub const DRIVER: AnyDriver = AnyDriver::without_migrate::<InlineSqlite>();

/// Prepared statements kept per connection: more than the store has.
const STATEMENT_CACHE: usize = 256;

/// The database type sqlx's Any layer asks for. Rows, values and statements only ever
/// reach callers as the Any layer's own, so this driver's are never built ([`Never`]).
#[derive(Debug)]
pub struct InlineSqlite;

impl Database for InlineSqlite {
    type Connection = SqliteConnection;
    type TransactionManager = Transactions;
    type Row = Never;
    type QueryResult = AnyQueryResult;
    type Column = Never;
    type TypeInfo = Never;
    type Value = Never;
    type ValueRef<'r> = Never;
    type Arguments = NoArguments;
    type ArgumentBuffer = ();
    type Statement = Never;

    const NAME: &'static str = "SQLite";
    const URL_SCHEMES: &'static [&'static str] = &["sqlite"];
}

/// One SQLite connection. The lock is only ever taken by the task that owns the
/// connection, or by the blocking thread it handed a commit to and waits for.
pub struct SqliteConnection {
    db: Arc<Mutex<rusqlite::Connection>>,
    transaction_depth: usize,
}

impl std::fmt::Debug for SqliteConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteConnection").field("transaction_depth", &self.transaction_depth).finish()
    }
}

impl SqliteConnection {
    fn open(options: &SqliteOptions) -> Result<Self, sqlx::Error> {
        let db = rusqlite::Connection::open_with_flags(&options.path, options.flags).map_err(SqliteError::wrap)?;
        db.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Self { db: Arc::new(Mutex::new(db)), transaction_depth: 0 })
    }

    /// Runs `sql`; what may wait (see [`may_wait`]) waits on a blocking thread, the rest
    /// runs here.
    async fn run(
        &mut self,
        sql: SqlStr,
        arguments: Option<AnyArguments>,
        limit: Option<usize>,
    ) -> Result<Vec<run::Answer>, sqlx::Error> {
        tracing::trace!(target: "mosaic_as::store::sql", sql = sql.as_str());
        if !may_wait(sql.as_str()) {
            return self.run_here(sql.as_str(), arguments, limit);
        }
        if arguments.is_none()
            && takes_write_lock(sql.as_str())
            && let Some(begun) = self.begin_here_if_free(sql.as_str(), limit)
        {
            return begun;
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || run::run(&lock(&db), sql.as_str(), arguments, limit)).await.map_err(
            |error| {
                tracing::error!(%error, "the thread of a commit failed");
                sqlx::Error::WorkerCrashed
            },
        )?
    }

    /// Begins a write transaction here when SQLite's write lock is free, as it is unless
    /// another process (an operator command) writes: only then is a blocking thread worth
    /// its hand-off. `None` when the lock is taken; the caller then waits for it there.
    fn begin_here_if_free(&self, sql: &str, limit: Option<usize>) -> Option<Result<Vec<run::Answer>, sqlx::Error>> {
        let db = lock(&self.db);
        let waits = match db.pragma_query_value(None, "busy_timeout", |row| row.get::<_, u64>(0)) {
            Ok(waits) => Duration::from_millis(waits),
            Err(error) => return Some(Err(SqliteError::wrap(error))),
        };
        if let Err(error) = db.busy_timeout(Duration::ZERO) {
            return Some(Err(SqliteError::wrap(error)));
        }
        let begun = run::run(&db, sql, None, limit);
        if let Err(error) = db.busy_timeout(waits) {
            return Some(Err(SqliteError::wrap(error)));
        }
        match begun {
            Err(error) if error::is_busy(&error) => None,
            begun => Some(begun),
        }
    }

    fn run_here(
        &self,
        sql: &str,
        arguments: Option<AnyArguments>,
        limit: Option<usize>,
    ) -> Result<Vec<run::Answer>, sqlx::Error> {
        run::run(&lock(&self.db), sql, arguments, limit)
    }
}

fn lock(db: &Mutex<rusqlite::Connection>) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
    // A panic while the lock was held cannot leave SQLite's state half-changed.
    db.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `sql` may wait: a commit or a checkpoint syncs the disk, and the start of a
/// write transaction waits for SQLite's lock while another process (an operator command)
/// holds it. Other statements take microseconds from the page cache.
fn may_wait(sql: &str) -> bool {
    starts_with(sql, &["COMMIT"]) || starts_with(sql, &["END"]) || is_checkpoint(sql) || takes_write_lock(sql)
}

/// Whether `sql` checkpoints the WAL, in any of SQLite's modes.
fn is_checkpoint(sql: &str) -> bool {
    let mut words = sql.split_whitespace();
    words.next().is_some_and(|word| word.eq_ignore_ascii_case("PRAGMA"))
        && words.next().is_some_and(|word| word.to_ascii_lowercase().starts_with("wal_checkpoint"))
}

/// Whether `sql` starts a write transaction.
fn takes_write_lock(sql: &str) -> bool {
    starts_with(sql, &["BEGIN", "IMMEDIATE"]) || starts_with(sql, &["BEGIN", "EXCLUSIVE"])
}

/// Whether the first words of `sql` are `words`, in any case.
fn starts_with(sql: &str, words: &[&str]) -> bool {
    let mut found = sql.split_whitespace().map(|word| word.trim_end_matches(';'));
    words.iter().all(|word| found.next().is_some_and(|found| found.eq_ignore_ascii_case(word)))
}

impl Connection for SqliteConnection {
    type Database = InlineSqlite;
    type Options = SqliteOptions;

    async fn close(self) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn close_hard(self) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn ping(&mut self) -> Result<(), sqlx::Error> {
        Ok(())
    }

    fn begin(&mut self) -> impl Future<Output = Result<Transaction<'_, InlineSqlite>, sqlx::Error>> + Send + '_ {
        Transaction::begin(self, None)
    }

    fn shrink_buffers(&mut self) {}

    async fn flush(&mut self) -> Result<(), sqlx::Error> {
        Ok(())
    }

    fn should_flush(&self) -> bool {
        false
    }
}

/// Transactions and savepoints as sqlx's drivers spell them.
pub struct Transactions;

impl Transactions {
    async fn begin(conn: &mut SqliteConnection, statement: Option<SqlStr>) -> Result<(), sqlx::Error> {
        let depth = conn.transaction_depth;
        let sql = match statement {
            Some(_) if depth > 0 => return Err(sqlx::Error::InvalidSavePointStatement),
            Some(statement) => statement,
            None => begin_ansi_transaction_sql(depth),
        };
        conn.run(sql, None, None).await?;
        conn.transaction_depth += 1;
        Ok(())
    }

    async fn end(conn: &mut SqliteConnection, sql: impl Fn(usize) -> SqlStr) -> Result<(), sqlx::Error> {
        let depth = conn.transaction_depth;
        if depth > 0 {
            conn.run(sql(depth), None, None).await?;
            conn.transaction_depth -= 1;
        }
        Ok(())
    }
}

impl TransactionManager for Transactions {
    type Database = InlineSqlite;

    fn begin(
        conn: &mut SqliteConnection,
        statement: Option<SqlStr>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_ {
        Self::begin(conn, statement)
    }

    fn commit(conn: &mut SqliteConnection) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_ {
        Self::end(conn, commit_ansi_transaction_sql)
    }

    fn rollback(conn: &mut SqliteConnection) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_ {
        Self::end(conn, rollback_ansi_transaction_sql)
    }

    /// Called when a transaction is dropped: a rollback needs no disk, so it runs now.
    fn start_rollback(conn: &mut SqliteConnection) {
        let depth = conn.transaction_depth;
        if depth > 0 {
            if let Err(error) = conn.run_here(rollback_ansi_transaction_sql(depth).as_str(), None, None) {
                tracing::warn!(%error, "rolling back a dropped transaction failed");
            }
            conn.transaction_depth -= 1;
        }
    }

    fn get_transaction_depth(conn: &SqliteConnection) -> usize {
        conn.transaction_depth
    }
}

impl AnyConnectionBackend for SqliteConnection {
    fn name(&self) -> &str {
        InlineSqlite::NAME
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, sqlx::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn close_hard(self: Box<Self>) -> BoxFuture<'static, sqlx::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn ping(&mut self) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn begin(&mut self, statement: Option<SqlStr>) -> BoxFuture<'_, sqlx::Result<()>> {
        Transactions::begin(self, statement).boxed()
    }

    fn commit(&mut self) -> BoxFuture<'_, sqlx::Result<()>> {
        Transactions::end(self, commit_ansi_transaction_sql).boxed()
    }

    fn rollback(&mut self) -> BoxFuture<'_, sqlx::Result<()>> {
        Transactions::end(self, rollback_ansi_transaction_sql).boxed()
    }

    fn start_rollback(&mut self) {
        <Transactions as TransactionManager>::start_rollback(self)
    }

    fn get_transaction_depth(&self) -> usize {
        self.transaction_depth
    }

    fn shrink_buffers(&mut self) {}

    fn flush(&mut self) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn should_flush(&self) -> bool {
        false
    }

    fn fetch_many(
        &mut self,
        query: SqlStr,
        _persistent: bool,
        arguments: Option<AnyArguments>,
    ) -> BoxStream<'_, sqlx::Result<Either<AnyQueryResult, AnyRow>>> {
        // Lazily, as sqlx's drivers do: nothing runs until the stream is polled.
        futures::stream::once(self.run(query, arguments, None))
            .flat_map(|answers| {
                let answers: Vec<_> = match answers {
                    Ok(answers) => answers.into_iter().map(Ok).collect(),
                    Err(error) => vec![Err(error)],
                };
                futures::stream::iter(answers)
            })
            .boxed()
    }

    fn fetch_optional(
        &mut self,
        query: SqlStr,
        _persistent: bool,
        arguments: Option<AnyArguments>,
    ) -> BoxFuture<'_, sqlx::Result<Option<AnyRow>>> {
        Box::pin(async move {
            let answers = self.run(query, arguments, Some(1)).await?;
            Ok(answers.into_iter().find_map(Either::right))
        })
    }

    fn prepare_with<'c, 'q: 'c>(
        &'c mut self,
        _sql: SqlStr,
        _parameters: &[AnyTypeInfo],
    ) -> BoxFuture<'c, sqlx::Result<AnyStatement>> {
        Box::pin(async { Err(unsupported("preparing a statement ahead of running it")) })
    }

    fn describe(&mut self, _sql: SqlStr) -> BoxFuture<'_, sqlx::Result<sqlx_core::describe::Describe<sqlx::Any>>> {
        Box::pin(async { Err(unsupported("describing a statement")) })
    }
}

fn unsupported(what: &str) -> sqlx::Error {
    sqlx::Error::AnyDriverError(format!("the store's SQLite driver does not support {what}").into())
}

/// Where the database is and how to open it, from a `sqlite://FILE?mode=…` URL.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    path: PathBuf,
    flags: OpenFlags,
}

impl SqliteOptions {
    fn from_url(url: &sqlx_core::Url) -> Result<Self, sqlx::Error> {
        // sqlx's own parser reads the file name, so both drivers read URLs alike.
        let path = sqlx::sqlite::SqliteConnectOptions::from_url(url)?.get_filename().to_path_buf();
        let access = match url.query_pairs().find(|(key, _)| key == "mode").as_ref().map(|(_, mode)| mode.as_ref()) {
            Some("ro") => OpenFlags::SQLITE_OPEN_READ_ONLY,
            Some("rwc") => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            Some("rw") | None => OpenFlags::SQLITE_OPEN_READ_WRITE,
            Some(other) => return Err(sqlx::Error::Configuration(format!("unknown SQLite mode {other:?}").into())),
        };
        // Each connection is used by one task at a time: SQLite's own mutex is not needed.
        Ok(Self { path, flags: access | OpenFlags::SQLITE_OPEN_NO_MUTEX })
    }
}

impl FromStr for SqliteOptions {
    type Err = sqlx::Error;

    fn from_str(url: &str) -> Result<Self, sqlx::Error> {
        Self::from_url(&url.parse().map_err(|error| sqlx::Error::Configuration(Box::new(error)))?)
    }
}

impl TryFrom<&AnyConnectOptions> for SqliteOptions {
    type Error = sqlx::Error;

    fn try_from(options: &AnyConnectOptions) -> Result<Self, sqlx::Error> {
        Self::from_url(&options.database_url)
    }
}

impl ConnectOptions for SqliteOptions {
    type Connection = SqliteConnection;

    fn from_url(url: &sqlx_core::Url) -> Result<Self, sqlx::Error> {
        Self::from_url(url)
    }

    async fn connect(&self) -> Result<SqliteConnection, sqlx::Error> {
        SqliteConnection::open(self)
    }

    fn log_statements(self, _level: log::LevelFilter) -> Self {
        self
    }

    fn log_slow_statements(self, _level: log::LevelFilter, _duration: std::time::Duration) -> Self {
        self
    }
}

/// Stands for the driver's own rows, columns, values, types and statements, which the
/// Any layer never asks for: it gets [`AnyRow`]s from [`AnyConnectionBackend`].
#[derive(Debug, Clone, PartialEq)]
pub enum Never {}

impl std::fmt::Display for Never {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl sqlx_core::type_info::TypeInfo for Never {
    fn is_null(&self) -> bool {
        match *self {}
    }

    fn name(&self) -> &str {
        match *self {}
    }
}

impl sqlx_core::column::Column for Never {
    type Database = InlineSqlite;

    fn ordinal(&self) -> usize {
        match *self {}
    }

    fn name(&self) -> &str {
        match *self {}
    }

    fn type_info(&self) -> &Never {
        match *self {}
    }
}

impl sqlx_core::row::Row for Never {
    type Database = InlineSqlite;

    fn columns(&self) -> &[Never] {
        match *self {}
    }

    fn try_get_raw<I>(&self, _index: I) -> Result<Never, sqlx::Error>
    where
        I: sqlx_core::column::ColumnIndex<Self>,
    {
        match *self {}
    }
}

impl sqlx_core::value::Value for Never {
    type Database = InlineSqlite;

    fn as_ref(&self) -> Never {
        match *self {}
    }

    fn type_info(&self) -> std::borrow::Cow<'_, Never> {
        match *self {}
    }

    fn is_null(&self) -> bool {
        match *self {}
    }
}

impl sqlx_core::value::ValueRef<'_> for Never {
    type Database = InlineSqlite;

    fn to_owned(&self) -> Never {
        match *self {}
    }

    fn type_info(&self) -> std::borrow::Cow<'_, Never> {
        match *self {}
    }

    fn is_null(&self) -> bool {
        match *self {}
    }
}

impl sqlx_core::statement::Statement for Never {
    type Database = InlineSqlite;

    fn into_sql(self) -> SqlStr {
        match self {}
    }

    fn sql(&self) -> &SqlStr {
        match *self {}
    }

    fn parameters(&self) -> Option<Either<&[Never], usize>> {
        match *self {}
    }

    fn columns(&self) -> &[Never] {
        match *self {}
    }

    sqlx_core::impl_statement_query!(NoArguments);
}

/// Arguments reach this driver as [`AnyArguments`]; its own are never filled.
#[derive(Debug, Default)]
pub struct NoArguments;

impl sqlx_core::arguments::Arguments for NoArguments {
    type Database = InlineSqlite;

    fn reserve(&mut self, _additional: usize, _size: usize) {}

    fn add<'t, T>(&mut self, _value: T) -> Result<(), sqlx_core::error::BoxDynError>
    where
        T: sqlx_core::encode::Encode<'t, InlineSqlite> + sqlx_core::types::Type<InlineSqlite>,
    {
        Err("the store's SQLite driver takes arguments through sqlx's Any layer".into())
    }

    fn len(&self) -> usize {
        0
    }
}

impl sqlx_core::arguments::IntoArguments<InlineSqlite> for NoArguments {
    fn into_arguments(self) -> NoArguments {
        self
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{AnyConnection, Connection, Row};

    use crate::store::StoreError;

    async fn connect() -> (tempfile::TempDir, AnyConnection) {
        crate::store::install_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("driver.db").display());
        let mut conn = AnyConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, score REAL, data BLOB)")
            .execute(&mut conn)
            .await
            .unwrap();
        (dir, conn)
    }

    #[tokio::test]
    async fn values_read_back_as_sqlx_reads_them_with_numbered_and_bare_arguments() {
        let (_dir, mut conn) = connect().await;
        sqlx::query("INSERT INTO t (id, name, score, data) VALUES ($1, $2, $3, $4)")
            .bind(7_i64)
            .bind("seven ✓")
            .bind(7.5_f64)
            .bind(vec![0_u8, 255])
            .execute(&mut conn)
            .await
            .unwrap();
        // A bare `?` takes the next argument; a flag binds as an integer.
        sqlx::query("INSERT INTO t (id, name, score) VALUES (?, ?, ?)")
            .bind(8_i32)
            .bind("eight")
            .bind(true)
            .execute(&mut conn)
            .await
            .unwrap();
        let row = sqlx::query("SELECT id, name, score, data FROM t WHERE id = $1")
            .bind(7_i64)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(row.get::<i64, _>("id"), 7);
        assert_eq!(row.get::<i32, _>(0), 7, "integers decode into narrower types as with sqlx's driver");
        assert_eq!(row.get::<String, _>("name"), "seven ✓");
        assert_eq!(row.get::<f64, _>("score"), 7.5);
        assert_eq!(row.get::<Vec<u8>, _>("data"), vec![0, 255]);
        let (score, data): (f64, Option<Vec<u8>>) = sqlx::query_as("SELECT score, data FROM t WHERE name = $1")
            .bind("eight")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!((score, data), (1.0, None));
        // `$2` used twice and `$1` after it: arguments go by their number.
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM t WHERE id >= $2 AND id <= $2 + $1 ORDER BY id")
            .bind(1_i64)
            .bind(7_i64)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(names, ["seven ✓", "eight"]);
    }

    #[tokio::test]
    async fn results_count_writes_and_one_request_may_hold_several_statements() {
        let (_dir, mut conn) = connect().await;
        let inserted = sqlx::query("INSERT INTO t (name) VALUES ('a'), ('b'), ('c')").execute(&mut conn).await.unwrap();
        assert_eq!(inserted.rows_affected(), 3);
        let read = sqlx::query("SELECT * FROM t").execute(&mut conn).await.unwrap();
        assert_eq!(read.rows_affected(), 0, "a read changes nothing, whatever came before");
        let both = sqlx::query("UPDATE t SET score = $1 WHERE name = 'a'; DELETE FROM t WHERE name = $2")
            .bind(2.0_f64)
            .bind("b")
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(both.rows_affected(), 2, "one row updated and one deleted");
        let first: Option<String> =
            sqlx::query_scalar("SELECT name FROM t ORDER BY name").fetch_optional(&mut conn).await.unwrap();
        assert_eq!(first.as_deref(), Some("a"));
        let none: Option<String> =
            sqlx::query_scalar("SELECT name FROM t WHERE name = 'z'").fetch_optional(&mut conn).await.unwrap();
        assert_eq!(none, None);
    }

    #[tokio::test]
    async fn refusals_keep_their_kind_and_the_connection_goes_on() {
        let (_dir, mut conn) = connect().await;
        sqlx::query("INSERT INTO t (name) VALUES ('a')").execute(&mut conn).await.unwrap();
        let refused =
            StoreError::from(sqlx::query("INSERT INTO t (name) VALUES ('a')").execute(&mut conn).await.unwrap_err());
        assert!(refused.is_permanent(), "a second 'a' is refused for good: {refused}");
        assert!(refused.to_string().contains("UNIQUE constraint failed: t.name"), "{refused}");
        let missing =
            StoreError::from(sqlx::query("INSERT INTO t (id) VALUES (2)").execute(&mut conn).await.unwrap_err());
        assert!(missing.is_permanent(), "{missing}");
        let typo = sqlx::query("SELEC 1").execute(&mut conn).await.unwrap_err();
        assert!(typo.to_string().contains("syntax error"), "{typo}");
        let arguments = sqlx::query("SELECT $2").bind(1_i64).execute(&mut conn).await.unwrap_err();
        assert!(arguments.to_string().contains("argument 2"), "{arguments}");
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t").fetch_one(&mut conn).await.unwrap();
        assert_eq!(count, 1);
    }

    #[tokio::test]
    async fn transactions_nest_commit_and_roll_back_also_when_dropped() {
        let (_dir, mut conn) = connect().await;
        let mut outer = conn.begin().await.unwrap();
        sqlx::query("INSERT INTO t (name) VALUES ('kept')").execute(&mut *outer).await.unwrap();
        let mut inner = outer.begin().await.unwrap();
        sqlx::query("INSERT INTO t (name) VALUES ('undone')").execute(&mut *inner).await.unwrap();
        inner.rollback().await.unwrap();
        let mut dropped = outer.begin().await.unwrap();
        sqlx::query("INSERT INTO t (name) VALUES ('dropped')").execute(&mut *dropped).await.unwrap();
        drop(dropped);
        outer.commit().await.unwrap();
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM t").fetch_all(&mut conn).await.unwrap();
        assert_eq!(names, ["kept"]);
        let dropped = conn.begin().await.unwrap();
        drop(dropped);
        assert!(!conn.is_in_transaction(), "a dropped transaction is rolled back at once");
        let mut again = conn.begin().await.unwrap();
        sqlx::query("INSERT INTO t (name) VALUES ('later')").execute(&mut *again).await.unwrap();
        again.commit().await.unwrap();
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t").fetch_one(&mut conn).await.unwrap();
        assert_eq!(count, 2);
    }

    async fn busy_timeout(conn: &mut AnyConnection) -> i64 {
        sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut *conn).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_lock_held_by_another_process_is_waited_for_and_a_free_one_taken_at_once() {
        let (dir, mut conn) = connect().await;
        sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000").execute(&mut conn).await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await.unwrap();
        sqlx::query("INSERT INTO t (name) VALUES ('free')").execute(&mut conn).await.unwrap();
        sqlx::raw_sql("COMMIT").execute(&mut conn).await.unwrap();
        assert_eq!(busy_timeout(&mut conn).await, 5000, "taking a free lock keeps the busy timeout");

        // Another process's writer holds the lock for a while.
        let other = rusqlite::Connection::open(dir.path().join("driver.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE; INSERT INTO t (name) VALUES ('other')").unwrap();
        let (held, release) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            held.send(()).unwrap();
            other.execute_batch("COMMIT").unwrap();
        });
        let asked = std::time::Instant::now();
        sqlx::raw_sql("BEGIN IMMEDIATE; INSERT INTO t (name) VALUES ('after')").execute(&mut conn).await.unwrap();
        assert!(release.try_recv().is_ok(), "the lock was taken only once the other process let it go");
        assert!(asked.elapsed() >= std::time::Duration::from_millis(300));
        sqlx::raw_sql("COMMIT").execute(&mut conn).await.unwrap();
        holder.join().unwrap();
        assert_eq!(busy_timeout(&mut conn).await, 5000, "waiting for a held lock keeps the busy timeout");
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM t ORDER BY id").fetch_all(&mut conn).await.unwrap();
        assert_eq!(names, ["free", "other", "after"]);
    }

    #[test]
    fn commits_and_write_locks_wait_on_a_blocking_thread_and_nothing_else_does() {
        for waits in [
            "COMMIT",
            " commit; ",
            "END",
            "BEGIN IMMEDIATE; SAVEPOINT write",
            "begin exclusive",
            "PRAGMA wal_checkpoint(PASSIVE)",
            "pragma wal_checkpoint(TRUNCATE)",
        ] {
            assert!(super::may_wait(waits), "{waits}");
        }
        for quick in [
            "RELEASE write",
            "BEGIN",
            "SAVEPOINT write",
            "INSERT INTO commit_log VALUES (1)",
            "COMMITTED",
            "PRAGMA wal_autocheckpoint = 10000",
        ] {
            assert!(!super::may_wait(quick), "{quick}");
        }
    }
}
