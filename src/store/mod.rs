//! Persistence through sqlx's Any driver: SQLite (default, one file, WAL) or PostgreSQL,
//! chosen by the database URL. Both dialects live in `migrations/` and run at start.
//!
//! Repository functions take `&mut AnyConnection`, so callers can run several of them in
//! one transaction (see [`Store::begin_write`]).

pub mod accounts;
pub mod agent_rooms;
pub mod bridges;
mod checkpoints;
pub mod conversations;
pub mod dead_letters;
pub mod finished_work;
pub mod group_commit;
pub mod inbox;
pub mod messages;
pub mod outbox;
mod readers;
pub mod retention;
pub mod sealed;
pub mod settings;
mod sqlite_driver;
pub mod teams;
mod writer;

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Connection, Executor, Transaction};

pub use sqlx::AnyConnection;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: expected sqlite://FILE or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A write handed to [`Store::commit_grouped`] did not commit; worth trying again.
    #[error("grouped write failed: {0}")]
    Grouped(String),
}

impl StoreError {
    /// Whether the database refused the data itself, so that trying again cannot help:
    /// a data exception (SQLSTATE class 22, e.g. a NUL byte in text on PostgreSQL) or an
    /// integrity constraint (class 23, and SQLite's constraint errors).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(error)) => {
                // A SQLSTATE has five characters; SQLite's codes are numbers, whose first
                // digits say nothing of the kind.
                let sqlstate_class =
                    error.code().filter(|code| code.len() == 5).and_then(|code| code.get(..2).map(str::to_string));
                // Unique, foreign-key, not-null and check violations on either backend.
                !matches!(error.kind(), sqlx::error::ErrorKind::Other)
                    || matches!(sqlstate_class.as_deref(), Some("22" | "23"))
            }
            Self::Corrupt(_) | Self::UnsupportedUrl(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    readers: readers::Readers,
    backend: Backend,
    /// When this process connected (unix ms): work queued before then is left over from
    /// an earlier run.
    opened_at: i64,
    /// SQLite's one writer, shared by every write of this process (see [`writer`]).
    writer: Option<writer::Writer>,
    /// Started on first use (see [`Store::commit_grouped`]).
    group_commit: Arc<OnceLock<group_commit::GroupCommit>>,
}

#[cfg(test)]
impl Store {
    /// A store in a new SQLite file (`store.db`), removed with the directory returned.
    pub async fn open_temporary() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("store.db").display())).await.unwrap();
        (dir, store)
    }
}

/// A write transaction ([`Store::begin_write`]): use it as a connection, then commit or
/// roll back. Dropping it rolls back.
pub struct WriteTx(Write);

enum Write {
    Sqlite(writer::SqliteWrite),
    Postgres(Transaction<'static, sqlx::Any>),
}

impl WriteTx {
    /// Returns once the writes are durable.
    pub async fn commit(self) -> Result<()> {
        match self.0 {
            Write::Sqlite(write) => write.commit().await,
            Write::Postgres(tx) => Ok(tx.commit().await?),
        }
    }

    /// Commits without waiting for the sync to disk (see [`Store::write_deferred`]).
    pub async fn commit_deferred(self) -> Result<Deferred> {
        match self.0 {
            Write::Sqlite(write) => {
                let (writer, group) = write.commit_later();
                let bound = Deferred(Some((writer.clone(), group)));
                tokio::spawn(async move {
                    tokio::time::sleep(DEFERRED_SYNC).await;
                    // A failure is logged by the writer; the deferred write is then lost,
                    // which its kind allows.
                    let _ = bound.durable().await;
                });
                Ok(Deferred(Some((writer, group))))
            }
            Write::Postgres(mut tx) => {
                // PostgreSQL shows the write to everyone at once and flushes it within
                // its WAL writer's delay: only a crash of the database server can lose it.
                tx.execute("SET LOCAL synchronous_commit = off").await?;
                tx.commit().await?;
                Ok(Deferred(None))
            }
        }
    }

    pub async fn rollback(self) -> Result<()> {
        match self.0 {
            Write::Sqlite(write) => write.rollback().await,
            Write::Postgres(tx) => Ok(tx.rollback().await?),
        }
    }
}

impl Deref for WriteTx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.0 {
            Write::Sqlite(write) => write,
            Write::Postgres(tx) => tx,
        }
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.0 {
            Write::Sqlite(write) => write,
            Write::Postgres(tx) => tx,
        }
    }
}

/// How long a deferred write waits at most for another writer's commit to carry it to
/// disk before it commits on its own: longer than the homeserver round trip that usually
/// comes between a handled event and the turn's commit that answers it, short enough
/// that another process waiting for SQLite's write lock hardly notices.
const DEFERRED_SYNC: Duration = Duration::from_millis(50);

/// A write committed without waiting for its sync to disk ([`Store::write_deferred`]).
#[must_use = "a deferred write is seen by other connections only once it is durable"]
#[derive(Default)]
pub struct Deferred(Option<(writer::Writer, u64)>);

impl Deferred {
    /// Returns once the write is durable, committing it now if no other writer has.
    pub async fn durable(self) -> Result<()> {
        match self.0 {
            Some((writer, group)) => writer.durable(group).await,
            None => Ok(()),
        }
    }
}

/// WAL lets readers run beside the writer; FULL makes every acknowledged transaction
/// survive a power cut, not only a crash. SQLite's temporary files (statement journals of
/// the writer's savepoints, sorts) stay in memory: on disk each was a file created and
/// deleted again for a few pages.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
     PRAGMA busy_timeout = 10000; PRAGMA temp_store = MEMORY;";

/// SQLite's read connections (see [`readers`]): reads take microseconds, so a few serve
/// many tasks.
const SQLITE_READERS: usize = 4;

/// Installs the drivers behind [`AnyConnection`]: the store's own for SQLite (see
/// [`sqlite_driver`]), sqlx's for PostgreSQL. Anything that connects through sqlx's Any
/// layer in this process calls this first.
pub fn install_drivers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        sqlx::any::install_drivers(&[sqlite_driver::DRIVER, sqlx::postgres::any::DRIVER])
            .expect("nothing installs sqlx's Any drivers but the store");
    });
}

/// Milliseconds since the unix epoch, the time format of every table.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Connects (creating a SQLite file if needed) without running migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        install_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let mut url = format!("sqlite:{rest}");
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') { "&mode=rwc" } else { "?mode=rwc" });
            }
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let options = AnyConnectOptions::from_str(&url)?;
        // No ping before each acquire: it is a round trip per query on the hot path, and
        // a connection that broke meanwhile fails its statement with an I/O error, which
        // every caller treats as "retry later".
        let pool_options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10)).test_before_acquire(false);
        let (readers, writer) = match backend {
            Backend::Sqlite => {
                let pool = pool_options
                    .max_connections(SQLITE_READERS as u32)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // The pool only reads: every write goes through the writer.
                            conn.execute(sqlx::AssertSqlSafe(format!("{SQLITE_PRAGMAS} PRAGMA query_only = ON;")))
                                .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options.clone())
                    .await?;
                let mut conn = AnyConnection::connect_with(&options).await?;
                conn.execute(SQLITE_PRAGMAS).await?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "PRAGMA wal_autocheckpoint = {}",
                    checkpoints::WRITER_BACKSTOP_PAGES
                )))
                .await?;
                let commits = Arc::new(checkpoints::Commits::default());
                checkpoints::start(options.clone(), SQLITE_PRAGMAS, commits.clone());
                let migrations = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?;
                let readers = readers::Readers::warmest_first(pool, SQLITE_READERS);
                (readers, Some(writer::Writer::new(conn, migrations, commits)))
            }
            Backend::Postgres => {
                (readers::Readers::pooled(pool_options.max_connections(10).connect_with(options).await?), None)
            }
        };
        Ok(Self { readers, backend, opened_at: now_ms(), writer, group_commit: Arc::default() })
    }

    /// Connects and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self> {
        let store = Self::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        match &self.writer {
            Some(writer) => writer.migrate(migrator).await,
            None => Ok(migrator.run(self.readers.pool()).await?),
        }
    }

    pub fn opened_at(&self) -> i64 {
        self.opened_at
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A connection for reading (on SQLite it cannot write: see [`writer`]).
    pub async fn conn(&self) -> Result<readers::ReadConnection> {
        self.readers.get().await
    }

    /// Starts a transaction that will write. On SQLite, writers take turns on the one
    /// writer connection, and their commits are grouped (see [`writer`]).
    pub async fn begin_write(&self) -> Result<WriteTx> {
        Ok(WriteTx(match &self.writer {
            Some(writer) => Write::Sqlite(writer.begin().await?),
            None => Write::Postgres(self.readers.pool().begin().await?),
        }))
    }

    /// Runs `work` in a write transaction and commits it; an error rolls it back.
    pub async fn write<T>(&self, work: impl AsyncFnOnce(&mut AnyConnection) -> Result<T>) -> Result<T> {
        let mut tx = self.begin_write().await?;
        let value = work(&mut tx).await?;
        tx.commit().await?;
        Ok(value)
    }

    /// Runs `work` in a write transaction for a record whose loss in a crash is harmless,
    /// because the work it records is done again (the inbox marking events handled, whose
    /// handling the hub recognises). On SQLite it returns without waiting for the sync to
    /// disk, which the next writer's commit does for it, or it commits alone within
    /// [`DEFERRED_SYNC`]: one sync fewer for each such write on a busy service. Other
    /// connections see it once it is durable; [`Deferred::durable`] waits for that.
    /// PostgreSQL commits it at once without waiting for its flush to disk
    /// (`synchronous_commit = off` for that transaction).
    pub async fn write_deferred<T>(
        &self,
        work: impl AsyncFnOnce(&mut AnyConnection) -> Result<T>,
    ) -> Result<(T, Deferred)> {
        let mut tx = self.begin_write().await?;
        let value = work(&mut tx).await?;
        let deferred = tx.commit_deferred().await?;
        Ok((value, deferred))
    }

    /// Makes `write` durable together with the writes other tasks hand in meanwhile: one
    /// transaction, one sync to disk for all. Returns once it is committed.
    pub async fn commit_grouped(&self, write: group_commit::Write) -> Result<()> {
        self.group_commit.get_or_init(|| group_commit::GroupCommit::start(self.clone())).write(write).await
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&mut *self.conn().await?).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.readers.close().await;
    }
}
