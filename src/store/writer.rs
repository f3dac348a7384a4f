//! SQLite's one writer, with group commit.
//!
//! SQLite syncs to disk once per commit, and with `synchronous = FULL` that sync is what
//! a write costs. Here every write transaction of the process runs on one connection, as
//! a savepoint inside a transaction they share. A writer that commits releases its
//! savepoint, lets the next writer in, and then waits until the shared transaction is
//! committed: whoever comes first commits it, for all who wrote in it meanwhile. Each
//! writer still returns only once its writes are on disk, as with a commit of its own,
//! but a busy process syncs once for many writers instead of once for each.
//!
//! The pool's connections only read (`PRAGMA query_only`), so that no write can slip
//! past the writer and wait behind its open transaction.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AnyConnection, Connection, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::checkpoints::Commits;
use super::{Result, StoreError};

// The steps between two writers, one statement each, so that each is prepared once: the
// last writer's savepoint is released as the next one begins. The first writer of a
// group needs none: undoing it is rolling back the transaction, which holds nothing else,
// and SQLite then keeps no copy of the pages it changes.
const BEGIN_FIRST: &[&str] = &["BEGIN IMMEDIATE"];
const BEGIN_NEXT: &[&str] = &["SAVEPOINT write"];
const BEGIN_AFTER_RELEASE: &[&str] = &["RELEASE write", "SAVEPOINT write"];
const UNDO: &[&str] = &["ROLLBACK TO write", "RELEASE write"];

/// Failed groups remembered, so that each of their writers learns of the failure.
const FAILURES_KEPT: usize = 64;

#[derive(Clone)]
pub struct Writer {
    state: Arc<Mutex<State>>,
}

struct State {
    conn: AnyConnection,
    /// Where sqlx's own SQLite driver, which runs the migrations, finds the database.
    migrations: SqliteConnectOptions,
    /// Whether the shared transaction is open.
    open: bool,
    /// Whether a writer committed into the open transaction.
    dirty: bool,
    /// Whether the last writer's savepoint, committed, is still to be released.
    unreleased: bool,
    /// Whether the writer now writing has a savepoint (all but a group's first do).
    in_savepoint: bool,
    /// The number of the shared transaction being written; all before it have ended.
    group: u64,
    /// Groups whose commit failed, with the error, the latest last.
    failures: VecDeque<(u64, String)>,
    /// Counted for the checkpoints, which follow the commits (see [`super::checkpoints`]).
    commits: Arc<Commits>,
}

impl Writer {
    pub fn new(conn: AnyConnection, migrations: SqliteConnectOptions, commits: Arc<Commits>) -> Self {
        let state = State {
            conn,
            migrations,
            open: false,
            dirty: false,
            unreleased: false,
            in_savepoint: false,
            group: 0,
            failures: VecDeque::new(),
            commits,
        };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    /// Brings the schema up to date, outside any shared transaction: whatever was
    /// written and not yet committed is committed first, and nobody writes meanwhile.
    pub async fn migrate(&self, migrator: &sqlx::migrate::Migrator) -> Result<()> {
        let mut state = self.state.lock().await;
        state.commit_group().await?;
        let mut conn = SqliteConnection::connect_with(&state.migrations).await?;
        migrator.run(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    /// Starts a write: the savepoint of this writer, in the shared transaction.
    pub async fn begin(&self) -> Result<SqliteWrite> {
        let mut state = self.state.clone().lock_owned().await;
        let steps = match (state.open, state.unreleased) {
            (false, _) => BEGIN_FIRST,
            (true, false) => BEGIN_NEXT,
            (true, true) => BEGIN_AFTER_RELEASE,
        };
        if let Err(error) = state.run_steps(steps).await {
            // Which of the steps failed is unknown: the group is given up as a whole.
            state.abandon_group(&error).await;
            return Err(error.into());
        }
        state.in_savepoint = state.open;
        state.open = true;
        state.unreleased = false;
        Ok(SqliteWrite { writer: self.clone(), state: Some(state) })
    }

    /// Returns once `group` has been committed (committing it if nobody has yet).
    pub async fn durable(&self, group: u64) -> Result<()> {
        let mut state = self.state.lock().await;
        if state.group == group {
            // Everyone who wrote in this group while this writer waited for its turn is
            // in it too: one sync for all of them.
            return state.commit_group().await;
        }
        match state.failures.iter().find(|(failed, _)| *failed == group) {
            Some((_, error)) => Err(StoreError::Grouped(error.clone())),
            None => Ok(()),
        }
    }
}

impl State {
    /// Commits the shared transaction, if one is open, and starts the next group.
    async fn commit_group(&mut self) -> Result<()> {
        let group = self.group;
        self.group += 1;
        if !self.open {
            return Ok(());
        }
        self.open = false;
        self.dirty = false;
        self.unreleased = false;
        let Err(error) = self.conn.execute("COMMIT").await else {
            self.commits.committed();
            return Ok(());
        };
        // Whatever the failure left behind is undone, so the next group starts clean.
        let _ = self.conn.execute("ROLLBACK").await;
        tracing::warn!(%error, group, "group commit failed: its writers are told to try again");
        self.remember_failure(group, error.to_string());
        Err(error.into())
    }

    /// Keeps why `group` failed, for its writers still to ask (the latest few groups).
    fn remember_failure(&mut self, group: u64, error: String) {
        if self.failures.len() == FAILURES_KEPT {
            self.failures.pop_front();
        }
        self.failures.push_back((group, error));
    }

    async fn run_steps(&mut self, steps: &[&'static str]) -> std::result::Result<(), sqlx::Error> {
        for step in steps {
            self.conn.execute(*step).await?;
        }
        Ok(())
    }

    /// Ends the shared transaction when no writer has anything in it, so that the
    /// database's write lock is not held for nothing.
    async fn end_if_clean(&mut self) {
        if self.open && !self.dirty {
            let _ = self.conn.execute("ROLLBACK").await;
            self.open = false;
        }
    }

    /// Undoes the unfinished write: its savepoint, or the whole transaction when it was
    /// the group's first. When that fails, SQLite has already rolled back the whole
    /// shared transaction, and the writers waiting on it must learn so.
    async fn undo(&mut self) {
        if !self.in_savepoint {
            match self.conn.execute("ROLLBACK").await {
                Ok(_) => self.open = false,
                Err(error) => self.abandon_group(&error).await,
            }
            return;
        }
        match self.run_steps(UNDO).await {
            Ok(_) => self.end_if_clean().await,
            Err(error) => self.abandon_group(&error).await,
        }
    }

    /// Rolls back the shared transaction after a failure that leaves its state unknown;
    /// the writers waiting for it are told to try again.
    async fn abandon_group(&mut self, error: &sqlx::Error) {
        tracing::warn!(%error, group = self.group, "the shared write transaction is rolled back");
        // Also when not marked open: a failed begin may have opened it.
        let _ = self.conn.execute("ROLLBACK").await;
        self.remember_failure(self.group, format!("the group was rolled back: {error}"));
        self.open = false;
        self.dirty = false;
        self.unreleased = false;
        self.group += 1;
    }
}

impl Deref for State {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl DerefMut for State {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}

/// One writer's transaction (a savepoint in the shared one). Dropping it undoes it.
pub struct SqliteWrite {
    writer: Writer,
    /// Held until the write ends: other writers wait for their turn meanwhile.
    state: Option<OwnedMutexGuard<State>>,
}

impl SqliteWrite {
    pub async fn commit(self) -> Result<()> {
        let (writer, group) = self.commit_later();
        writer.durable(group).await
    }

    /// Ends the write and lets the next writer in without waiting for the sync to disk:
    /// the write is durable once its group is (see [`Writer::durable`]), which the next
    /// writer's commit makes it. Until then other connections do not see it.
    pub fn commit_later(mut self) -> (Writer, u64) {
        let mut state = self.state.take().expect("an unfinished write holds its turn");
        // Released as the next writer begins, or by the commit of the group.
        state.unreleased = state.in_savepoint;
        state.dirty = true;
        (self.writer.clone(), state.group)
    }

    pub async fn rollback(mut self) -> Result<()> {
        let mut state = self.state.take().expect("an unfinished write holds its turn");
        state.undo().await;
        Ok(())
    }
}

impl Drop for SqliteWrite {
    fn drop(&mut self) {
        // Undone by a task that keeps the turn until then, so nobody writes on top of it.
        if let Some(mut state) = self.state.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(async move { state.undo().await })),
                Err(_) => tracing::error!("a write was dropped outside the runtime; the connection stays busy"),
            }
        }
    }
}

impl Deref for SqliteWrite {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.state.as_ref().expect("an unfinished write holds its turn").conn
    }
}

impl DerefMut for SqliteWrite {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.state.as_mut().expect("an unfinished write holds its turn").conn
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Result, Store};

    async fn store() -> (tempfile::TempDir, Store) {
        let (dir, store) = Store::open_temporary().await;
        exec(&store, "CREATE TABLE kv (k INTEGER PRIMARY KEY)").await.unwrap();
        (dir, store)
    }

    /// One statement in a write transaction of its own.
    async fn exec(store: &Store, sql: &'static str) -> Result<()> {
        store.write(async |conn| Ok(sqlx::query(sql).execute(conn).await.map(drop)?)).await
    }

    /// A write of key `k`, for `Store::write` and its kin.
    fn insert(k: i64) -> impl AsyncFnOnce(&mut crate::store::AnyConnection) -> Result<()> {
        async move |conn: &mut crate::store::AnyConnection| {
            Ok(sqlx::query("INSERT INTO kv (k) VALUES ($1)").bind(k).execute(conn).await.map(drop)?)
        }
    }

    async fn key_count(store: &Store) -> i64 {
        let mut conn = store.conn().await.unwrap();
        sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM kv").fetch_one(&mut *conn).await.unwrap().0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_share_commits_and_each_sees_only_its_own_fate() {
        let (_dir, store) = store().await;
        let writers = (0..60).map(|n: i64| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin_write().await.unwrap();
                sqlx::query("INSERT INTO kv (k) VALUES ($1)").bind(n).execute(&mut *tx).await.unwrap();
                match n % 3 {
                    0 => tx.commit().await.map(|()| true),
                    1 => tx.rollback().await.map(|()| false),
                    // Dropped without a word, as when a task fails half-way.
                    _ => Ok(false),
                }
            })
        });
        let outcomes = futures::future::join_all(writers).await;
        let kept = outcomes.into_iter().filter(|outcome| *outcome.as_ref().unwrap().as_ref().unwrap()).count();
        assert_eq!(kept, 20);
        // Once commit returned, the row is committed: a reader on another connection sees it.
        assert_eq!(key_count(&store).await, 20, "exactly the committed writes are there");
        let mut tx = store.begin_write().await.unwrap();
        sqlx::query("INSERT INTO kv (k) VALUES (1000)").execute(&mut *tx).await.unwrap();
        assert_eq!(key_count(&store).await, 20, "nothing is seen before its commit");
        tx.commit().await.unwrap();
        assert_eq!(key_count(&store).await, 21);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deferred_write_is_carried_by_the_next_commit_or_commits_alone() {
        let (_dir, store) = store().await;
        let ((), carried) = store.write_deferred(insert(1)).await.unwrap();
        assert_eq!(key_count(&store).await, 0, "a deferred write is not seen before it is durable");
        store.write(insert(2)).await.unwrap();
        assert_eq!(key_count(&store).await, 2, "the next writer's commit carries it");
        carried.durable().await.unwrap();

        let ((), asked) = store.write_deferred(insert(3)).await.unwrap();
        asked.durable().await.unwrap();
        assert_eq!(key_count(&store).await, 3, "asked for, it is committed at once");

        let ((), _alone) = store.write_deferred(insert(4)).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while key_count(&store).await < 4 {
            assert!(std::time::Instant::now() < deadline, "a deferred write left alone is never committed");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    async fn keys(store: &Store) -> Vec<i64> {
        let mut conn = store.conn().await.unwrap();
        sqlx::query_scalar("SELECT k FROM kv ORDER BY k").fetch_all(&mut *conn).await.unwrap()
    }

    #[tokio::test]
    async fn undoing_a_groups_first_writer_or_a_later_one_undoes_only_that_write() {
        let (_dir, store) = store().await;
        let mut first = store.begin_write().await.unwrap();
        insert(1)(&mut first).await.unwrap();
        first.rollback().await.unwrap();
        store.write(insert(2)).await.unwrap();
        assert_eq!(keys(&store).await, [2], "the first writer undone, the next one commits");

        // A group's first write kept, the second undone, the third kept: one commit for both.
        let ((), kept) = store.write_deferred(insert(3)).await.unwrap();
        let mut undone = store.begin_write().await.unwrap();
        insert(4)(&mut undone).await.unwrap();
        undone.rollback().await.unwrap();
        store.write(insert(5)).await.unwrap();
        kept.durable().await.unwrap();
        assert_eq!(keys(&store).await, [2, 3, 5]);

        let mut dropped = store.begin_write().await.unwrap();
        insert(6)(&mut dropped).await.unwrap();
        drop(dropped);
        store.write(insert(7)).await.unwrap();
        assert_eq!(keys(&store).await, [2, 3, 5, 7], "a first writer dropped half-way is undone");
    }

    #[tokio::test]
    async fn a_refused_write_fails_alone_and_the_pool_cannot_write() {
        let (_dir, store) = store().await;
        exec(&store, "INSERT INTO kv (k) VALUES (1)").await.unwrap();
        assert!(exec(&store, "INSERT INTO kv (k) VALUES (1)").await.is_err(), "the key refuses a second 1");
        exec(&store, "INSERT INTO kv (k) VALUES (2)").await.unwrap();
        assert_eq!(key_count(&store).await, 2);
        let mut conn = store.conn().await.unwrap();
        let error = sqlx::query("INSERT INTO kv (k) VALUES (3)").execute(&mut *conn).await.unwrap_err();
        assert!(error.to_string().contains("readonly"), "a write past the writer is refused: {error}");
    }
}
