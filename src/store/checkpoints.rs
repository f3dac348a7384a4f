//! SQLite's WAL checkpoints, off the writer's path.
//!
//! A checkpoint copies the pages committed to the WAL back into the database file and
//! syncs it. SQLite runs one inside the commit that takes the WAL past
//! `wal_autocheckpoint` pages: that commit, and every writer waiting on the writer
//! connection, then also waits for hundreds of pages to be copied and a second sync. At a
//! steady rate that was about one answer in a hundred, the slowest of them. Here a task
//! checkpoints on a connection of its own, every [`INTERVAL`] in which something was
//! committed. Its checkpoints are passive: they never wait for the writer nor hold it up.
//! The writer's own threshold is raised to [`WRITER_BACKSTOP_PAGES`], which is reached
//! only if this task falls behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, Connection, Executor};

/// How often the WAL is copied back into the database while writes come in.
const INTERVAL: Duration = Duration::from_millis(500);

/// `wal_autocheckpoint` of the writer connection, in pages: the WAL's size (about 40 MB)
/// at which its commits checkpoint after all.
pub const WRITER_BACKSTOP_PAGES: u32 = 10_000;

/// The writer's commits, counted for the checkpointer: it works only after some.
#[derive(Default)]
pub struct Commits(AtomicU64);

impl Commits {
    pub fn committed(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Checkpoints the database at `options` while the writer that counts `commits` lives.
pub fn start(options: AnyConnectOptions, pragmas: &'static str, commits: Arc<Commits>) {
    tokio::spawn(async move {
        let mut conn: Option<AnyConnection> = None;
        let mut checkpointed = commits.count();
        loop {
            tokio::time::sleep(INTERVAL).await;
            if Arc::strong_count(&commits) == 1 {
                // The store is gone.
                return;
            }
            let count = commits.count();
            if count == checkpointed {
                continue;
            }
            match checkpoint(&mut conn, &options, pragmas).await {
                Ok(()) => checkpointed = count,
                Err(error) => {
                    // The writer's backstop keeps the WAL bounded meanwhile.
                    tracing::warn!(%error, "WAL checkpoint failed; it is tried again");
                    conn = None;
                }
            }
        }
    });
}

async fn checkpoint(
    conn: &mut Option<AnyConnection>,
    options: &AnyConnectOptions,
    pragmas: &'static str,
) -> Result<(), sqlx::Error> {
    if conn.is_none() {
        let mut opened = AnyConnection::connect_with(options).await?;
        opened.execute(pragmas).await?;
        *conn = Some(opened);
    }
    let conn = conn.as_mut().expect("opened above");
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::store::Store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_pages_reach_the_database_file_without_the_writer_checkpointing() {
        let (dir, store) = Store::open_temporary().await;
        let file = dir.path().join("store.db");
        store
            .write(async |conn| Ok(sqlx::raw_sql("CREATE TABLE blobs (data BLOB)").execute(conn).await.map(drop)?))
            .await
            .unwrap();
        let before = std::fs::metadata(&file).unwrap().len();
        for _ in 0..50 {
            store
                .write(async |conn| {
                    let data = vec![7_u8; 8_000];
                    Ok(sqlx::query("INSERT INTO blobs (data) VALUES ($1)").bind(data).execute(conn).await.map(drop)?)
                })
                .await
                .unwrap();
        }
        // 400 KB in the WAL, far below the writer's own threshold.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&file).unwrap().len() < before + 400_000 {
            assert!(Instant::now() < deadline, "the committed pages never reached the database file");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
