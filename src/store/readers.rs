//! The read connections, the warmest first.
//!
//! SQLite empties a connection's page cache whenever another connection has committed
//! since its last read, and the writer commits a few times for every message. sqlx's pool
//! hands its idle connections out in turn, so nearly every read found its cache emptied
//! and read its pages from the file again. Here the connection given back last is handed
//! out first: a service answering one message at a time reads on one warm connection, and
//! the others are taken only while reads overlap. PostgreSQL keeps no such cache in the
//! client; its connections come straight from sqlx's pool.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Result;

#[derive(Clone)]
pub struct Readers {
    pool: AnyPool,
    /// SQLite's connections kept out of sqlx's pool between reads, the last given back on top.
    warm: Option<Arc<Warm>>,
}

struct Warm {
    /// One turn per connection of the pool: whoever holds one finds a connection idle
    /// here or in the pool, so nobody waits in sqlx's pool for a connection kept here.
    turns: Arc<Semaphore>,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    connections: Vec<PoolConnection<Any>>,
    /// Once closed, connections given back go to sqlx's pool, which is closing them.
    closed: bool,
}

impl Warm {
    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        // Pushing and popping cannot leave the list half-changed.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Readers {
    /// Hands out `pool`'s connections warmest first; `size` is the pool's own limit.
    pub fn warmest_first(pool: AnyPool, size: usize) -> Self {
        let warm = Warm { turns: Arc::new(Semaphore::new(size)), idle: Mutex::default() };
        Self { pool, warm: Some(Arc::new(warm)) }
    }

    /// Hands out `pool`'s connections as the pool orders them.
    pub fn pooled(pool: AnyPool) -> Self {
        Self { pool, warm: None }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn get(&self) -> Result<ReadConnection> {
        let Some(warm) = &self.warm else {
            return Ok(ReadConnection { connection: Some(self.pool.acquire().await?), turn: None });
        };
        let turn = warm.turns.clone().acquire_owned().await.expect("the turns are never closed");
        let idle = warm.idle().connections.pop();
        let connection = match idle {
            Some(connection) => connection,
            None => self.pool.acquire().await?,
        };
        Ok(ReadConnection { connection: Some(connection), turn: Some((warm.clone(), turn)) })
    }

    /// Gives every connection back to sqlx's pool and closes it.
    pub async fn close(&self) {
        if let Some(warm) = &self.warm {
            let idle = {
                let mut idle = warm.idle();
                idle.closed = true;
                std::mem::take(&mut idle.connections)
            };
            drop(idle);
        }
        self.pool.close().await;
    }
}

/// A read connection from [`Readers::get`]; dropping it gives it back.
pub struct ReadConnection {
    connection: Option<PoolConnection<Any>>,
    turn: Option<(Arc<Warm>, OwnedSemaphorePermit)>,
}

impl Drop for ReadConnection {
    fn drop(&mut self) {
        let (Some(connection), Some((warm, turn))) = (self.connection.take(), self.turn.take()) else {
            return;
        };
        let mut idle = warm.idle();
        if !idle.closed {
            idle.connections.push(connection);
        }
        // The turn is given up only once the connection is back.
        drop(idle);
        drop(turn);
    }
}

impl Deref for ReadConnection {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        self.connection.as_ref().expect("a read connection is held until dropped")
    }
}

impl DerefMut for ReadConnection {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.connection.as_mut().expect("a read connection is held until dropped")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::{AnyConnection, Store};

    async fn store() -> (tempfile::TempDir, Store) {
        Store::open_temporary().await
    }

    /// A setting of the connection itself, to tell connections apart.
    async fn cache_size(conn: &mut AnyConnection) -> i64 {
        sqlx::query_scalar("PRAGMA cache_size").fetch_one(conn).await.unwrap()
    }

    #[tokio::test]
    async fn the_connection_given_back_last_is_handed_out_first() {
        let (_dir, store) = store().await;
        let first = store.conn().await.unwrap();
        let mut second = store.conn().await.unwrap();
        sqlx::raw_sql("PRAGMA cache_size = -1234").execute(&mut *second).await.unwrap();
        drop(first);
        drop(second);
        assert_eq!(cache_size(&mut store.conn().await.unwrap()).await, -1234, "the last one back comes first");
        let mut again = store.conn().await.unwrap();
        assert_eq!(cache_size(&mut again).await, -1234, "and again while nothing else was taken");
        let mut beside = store.conn().await.unwrap();
        assert_ne!(cache_size(&mut beside).await, -1234, "a read beside it gets another connection");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_beyond_the_connections_wait_their_turn_and_closing_ends_them_all() {
        let (_dir, store) = store().await;
        let readers = (0..3 * super::super::SQLITE_READERS).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut conn = store.conn().await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(&mut *conn).await?;
                Ok::<(), crate::store::StoreError>(())
            })
        });
        for read in futures::future::join_all(readers).await {
            read.unwrap().expect("every reader gets a connection in its turn");
        }
        tokio::time::timeout(Duration::from_secs(5), store.close())
            .await
            .expect("closing does not wait for connections kept between reads");
    }
}
