//! The durable transaction inbox: what the homeserver pushed, kept until processed.

use sqlx::AnyConnection;

use super::{Result, Store, now_ms};

/// One pushed event waiting to be processed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboxEvent {
    pub seq: i64,
    pub txn_id: String,
    pub event: String,
    /// When its transaction arrived (unix ms).
    pub received_at: i64,
}

/// Stores a homeserver transaction and its events in one database transaction. Returns
/// false when this txnId was stored before: the caller acknowledges it again and does
/// nothing else.
pub async fn record_transaction(store: &Store, txn_id: &str, events: &[&str]) -> Result<bool> {
    let mut tx = store.begin_write().await?;
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO txn_inbox (txn_id, received_at, event_count) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(txn_id)
    .bind(now)
    .bind(events.len() as i64)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        tx.rollback().await?;
        return Ok(false);
    }
    // Multi-row inserts keep a 100-event transaction to one or two statements. The
    // placeholders are numbered by hand: sqlx's Any driver writes `?`, which PostgreSQL
    // does not accept.
    for chunk in events.chunks(200) {
        let rows: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
        let sql = format!("INSERT INTO inbox_events (txn_id, event) VALUES {}", rows.join(", "));
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for event in chunk {
            insert = insert.bind(txn_id).bind(*event);
        }
        insert.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The oldest unprocessed events, in the order they arrived.
pub async fn pending(conn: &mut AnyConnection, limit: i64) -> Result<Vec<InboxEvent>> {
    Ok(sqlx::query_as(
        "SELECT e.seq, e.txn_id, e.event, t.received_at FROM inbox_events e JOIN txn_inbox t ON t.txn_id = e.txn_id
         WHERE e.processed_at IS NULL ORDER BY e.seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// Marks an event processed and drops its body: what mattered is in the message log
/// (with secrets such as link tokens masked), and the raw event may hold them in clear.
pub async fn mark_processed(conn: &mut AnyConnection, seq: i64) -> Result<()> {
    sqlx::query("UPDATE inbox_events SET processed_at = $1, event = '' WHERE seq = $2")
        .bind(now_ms())
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn pending_count(conn: &mut AnyConnection) -> Result<i64> {
    let (count,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM inbox_events WHERE processed_at IS NULL").fetch_one(&mut *conn).await?;
    Ok(count)
}
