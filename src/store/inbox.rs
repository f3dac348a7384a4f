//! The durable transaction inbox: what the homeserver pushed, kept until processed.

use sqlx::AnyConnection;

use super::{Result, Store, now_ms};

/// One pushed event waiting to be processed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboxEvent {
    pub seq: i64,
    pub txn_id: String,
    /// Events of one room are handled in order; rooms do not wait for each other.
    pub room_id: String,
    pub event: String,
    /// Failed tries so far.
    pub attempts: i64,
    /// When the first try failed (unix ms).
    pub failing_since: Option<i64>,
    /// When its transaction arrived (unix ms).
    pub received_at: i64,
}

/// A pushed event as it is stored: the room it belongs to and its JSON.
#[derive(Debug, Clone, Copy)]
pub struct Pushed<'a> {
    pub room_id: &'a str,
    pub event: &'a str,
}

/// Stores a homeserver transaction and its events in one database transaction. Returns
/// false when this txnId was stored before: the caller acknowledges it again and does
/// nothing else.
pub async fn record_transaction(store: &Store, txn_id: &str, events: &[Pushed<'_>]) -> Result<bool> {
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
        let rows: Vec<String> =
            (0..chunk.len()).map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3)).collect();
        let sql = format!("INSERT INTO inbox_events (txn_id, room_id, event) VALUES {}", rows.join(", "));
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for pushed in chunk {
            insert = insert.bind(txn_id).bind(pushed.room_id).bind(pushed.event);
        }
        insert.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The oldest unprocessed events, in the order they arrived, leaving out every room
/// with an event that waits for a later try: that room's events stay in order behind it.
pub async fn pending(conn: &mut AnyConnection, limit: i64) -> Result<Vec<InboxEvent>> {
    Ok(sqlx::query_as(
        "SELECT e.seq, e.txn_id, e.room_id, e.event, e.attempts, e.failing_since, t.received_at
         FROM inbox_events e JOIN txn_inbox t ON t.txn_id = e.txn_id
         WHERE e.processed_at IS NULL AND e.failed_at IS NULL
           AND e.room_id NOT IN (SELECT w.room_id FROM inbox_events w
                                 WHERE w.processed_at IS NULL AND w.failed_at IS NULL AND w.not_before > $1)
         ORDER BY e.seq LIMIT $2",
    )
    .bind(now_ms())
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// When the next event that waits for a later try is due (unix ms), if one waits.
pub async fn next_retry_at(conn: &mut AnyConnection) -> Result<Option<i64>> {
    let (at,): (Option<i64>,) = sqlx::query_as(
        "SELECT MIN(not_before) FROM inbox_events WHERE processed_at IS NULL AND failed_at IS NULL AND not_before > 0",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(at)
}

/// Schedules another try of an event after `delay_ms`; its room waits until then.
pub async fn retry_later(conn: &mut AnyConnection, seq: i64, delay_ms: i64, error: &str) -> Result<()> {
    super::dead_letters::retry_later(conn, super::dead_letters::Source::Inbox, seq, delay_ms, error).await
}

/// Sets an event aside as a dead letter; its room goes on with the next one.
pub async fn mark_dead(conn: &mut AnyConnection, seq: i64, reason: &str, error: &str) -> Result<()> {
    super::dead_letters::set_aside(conn, super::dead_letters::Source::Inbox, seq, reason, error).await
}

/// Marks events processed, in one statement per 200, and drops their bodies: what
/// mattered is in the message log (with secrets such as link tokens masked), and the raw
/// event may hold them in clear.
pub async fn mark_processed(conn: &mut AnyConnection, seqs: &[i64]) -> Result<()> {
    let now = now_ms();
    for chunk in seqs.chunks(200) {
        let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql =
            format!("UPDATE inbox_events SET processed_at = $1, event = '' WHERE seq IN ({})", placeholders.join(", "));
        let mut update = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for seq in chunk {
            update = update.bind(*seq);
        }
        update.execute(&mut *conn).await?;
    }
    Ok(())
}

pub async fn pending_count(conn: &mut AnyConnection) -> Result<i64> {
    let (count,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM inbox_events WHERE processed_at IS NULL AND failed_at IS NULL")
            .fetch_one(&mut *conn)
            .await?;
    Ok(count)
}
