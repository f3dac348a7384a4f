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

use sqlx::{AnyConnection, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{Result, StoreError};

const SAVEPOINT: &str = "SAVEPOINT write";
const RELEASE: &str = "RELEASE write";
const UNDO: &str = "ROLLBACK TO write; RELEASE write";

/// Failed groups remembered, so that each of their writers learns of the failure.
const FAILURES_KEPT: usize = 64;

#[derive(Clone)]
pub struct Writer {
    state: Arc<Mutex<State>>,
}

struct State {
    conn: AnyConnection,
    /// Whether the shared transaction is open.
    open: bool,
    /// Whether a writer released its savepoint into the open transaction.
    dirty: bool,
    /// The number of the shared transaction being written; all before it have ended.
    group: u64,
    /// Groups whose commit failed, with the error, the latest last.
    failures: VecDeque<(u64, String)>,
}

impl Writer {
    pub fn new(conn: AnyConnection) -> Self {
        let state = State { conn, open: false, dirty: false, group: 0, failures: VecDeque::new() };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    /// Brings the schema up to date, outside any shared transaction: whatever was
    /// written and not yet committed is committed first.
    pub async fn migrate(&self, migrator: &sqlx::migrate::Migrator) -> Result<()> {
        let mut state = self.state.lock().await;
        state.commit_group().await?;
        migrator.run(&mut state.conn).await?;
        Ok(())
    }

    /// Starts a write: the savepoint of this writer, in the shared transaction.
    pub async fn begin(&self) -> Result<SqliteWrite> {
        let mut state = self.state.clone().lock_owned().await;
        if !state.open {
            state.conn.execute("BEGIN IMMEDIATE").await?;
            state.open = true;
        }
        if let Err(error) = state.conn.execute(SAVEPOINT).await {
            state.end_if_clean().await;
            return Err(error.into());
        }
        Ok(SqliteWrite { writer: self.clone(), state: Some(state) })
    }

    /// Returns once `group` has been committed (committing it if nobody has yet).
    async fn durable(&self, group: u64) -> Result<()> {
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
        let Err(error) = self.conn.execute("COMMIT").await else {
            return Ok(());
        };
        // Whatever the failure left behind is undone, so the next group starts clean.
        let _ = self.conn.execute("ROLLBACK").await;
        tracing::warn!(%error, group, "group commit failed: its writers are told to try again");
        if self.failures.len() == FAILURES_KEPT {
            self.failures.pop_front();
        }
        self.failures.push_back((group, error.to_string()));
        Err(error.into())
    }

    /// Ends the shared transaction when no writer has anything in it, so that the
    /// database's write lock is not held for nothing.
    async fn end_if_clean(&mut self) {
        if self.open && !self.dirty {
            let _ = self.conn.execute("ROLLBACK").await;
            self.open = false;
        }
    }

    /// Undoes an unfinished savepoint. When that fails, SQLite has already rolled back
    /// the whole shared transaction, and the writers waiting on it must learn so.
    async fn undo(&mut self) {
        if let Err(error) = self.conn.execute(UNDO).await {
            tracing::warn!(%error, "cannot undo a write; its whole group is rolled back");
            let _ = self.conn.execute("ROLLBACK").await;
            self.failures.push_back((self.group, format!("the group was rolled back: {error}")));
            self.open = false;
            self.dirty = false;
            self.group += 1;
            return;
        }
        self.end_if_clean().await;
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
    pub async fn commit(mut self) -> Result<()> {
        let mut state = self.state.take().expect("an unfinished write holds its turn");
        if let Err(error) = state.conn.execute(RELEASE).await {
            state.undo().await;
            return Err(error.into());
        }
        state.dirty = true;
        let group = state.group;
        drop(state);
        self.writer.durable(group).await
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
