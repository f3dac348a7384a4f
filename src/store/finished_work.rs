//! Finished work leaves the inbox and the outbox after a while: a processed event, a
//! homeserver transaction whose events are all gone, a job that was done (or a dead letter
//! an operator dropped). Their bodies were emptied when they finished; without this the
//! rows themselves would pile up for ever, one or more per event.
//!
//! Unfinished work and dead letters still waiting for an operator are never removed. What
//! goes is old enough that nothing can ask for it again: a homeserver re-sends a
//! transaction only until it is acknowledged, and a job's dedupe key is only ever met
//! again by work that the message log already refuses as a duplicate.

use sqlx::AnyConnection;

use super::{Result, Store};

/// Rows removed per write: a pass never holds the shared writer for long.
pub const BATCH: i64 = 5_000;

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub inbox_events: u64,
    pub transactions: u64,
    pub jobs: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.inbox_events + self.transactions + self.jobs
    }
}

/// Removes the work that finished before `cutoff_ms`, `BATCH` rows per write, until none
/// is left.
pub async fn prune(store: &Store, cutoff_ms: i64) -> Result<Pruned> {
    let mut pruned = Pruned {
        inbox_events: drain(store, cutoff_ms, Table::InboxEvents).await?,
        transactions: 0,
        jobs: drain(store, cutoff_ms, Table::Outbox).await?,
    };
    loop {
        let removed = store.write(async |conn| prune_transactions(conn, cutoff_ms).await).await?;
        pruned.transactions += removed;
        if removed < BATCH as u64 {
            return Ok(pruned);
        }
    }
}

#[derive(Clone, Copy)]
enum Table {
    InboxEvents,
    Outbox,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Self::InboxEvents => "inbox_events",
            Self::Outbox => "outbox",
        }
    }

    /// The column that says when a row finished; NULL while it has not.
    fn finished_at(self) -> &'static str {
        match self {
            Self::InboxEvents => "processed_at",
            Self::Outbox => "done_at",
        }
    }
}

async fn drain(store: &Store, cutoff_ms: i64, table: Table) -> Result<u64> {
    let mut removed = 0;
    loop {
        // The batch is found on a reading connection, so the writer only deletes a range
        // of its primary key.
        let Some(last) = last_of_batch(&mut *store.conn().await?, cutoff_ms, table).await? else {
            return Ok(removed);
        };
        let deleted = store.write(async |conn| delete_through(conn, cutoff_ms, table, last).await).await?;
        if deleted == 0 {
            return Ok(removed);
        }
        removed += deleted;
    }
}

/// The highest `seq` among the oldest `BATCH` rows that finished before the cutoff.
async fn last_of_batch(conn: &mut AnyConnection, cutoff_ms: i64, table: Table) -> Result<Option<i64>> {
    let (name, finished_at) = (table.name(), table.finished_at());
    let sql = format!(
        "SELECT MAX(seq) FROM (SELECT seq FROM {name} WHERE {finished_at} IS NOT NULL AND {finished_at} < $1
                              ORDER BY seq LIMIT $2) oldest"
    );
    let (last,): (Option<i64>,) =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(cutoff_ms).bind(BATCH).fetch_one(&mut *conn).await?;
    Ok(last)
}

async fn delete_through(conn: &mut AnyConnection, cutoff_ms: i64, table: Table, last: i64) -> Result<u64> {
    let (name, finished_at) = (table.name(), table.finished_at());
    let sql = format!("DELETE FROM {name} WHERE seq <= $1 AND {finished_at} IS NOT NULL AND {finished_at} < $2");
    let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(last).bind(cutoff_ms).execute(&mut *conn).await?;
    Ok(done.rows_affected())
}

/// Transactions received before the cutoff whose events are all gone.
async fn prune_transactions(conn: &mut AnyConnection, cutoff_ms: i64) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM txn_inbox WHERE txn_id IN (
             SELECT txn_id FROM txn_inbox
             WHERE received_at < $1 AND txn_id NOT IN (SELECT txn_id FROM inbox_events)
             LIMIT $2)",
    )
    .bind(cutoff_ms)
    .bind(BATCH)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}
