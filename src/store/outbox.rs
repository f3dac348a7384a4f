//! The outbox: an ordered, durable queue of outgoing work (sends to a surface, agent
//! turns). Each job has a dedupe key, so enqueuing the same work twice stores it once.

use sqlx::AnyConnection;

use super::{Result, now_ms};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub seq: i64,
    pub queue: String,
    pub dedupe_key: String,
    pub kind: String,
    pub payload: String,
    pub attempts: i64,
    pub not_before: i64,
    pub created_at: i64,
    /// When the first try failed (unix ms).
    pub failing_since: Option<i64>,
}

impl Job {
    /// Whether an earlier try of this job may have got as far as the surface: it was
    /// tried before, or it was queued before `since` (this process opened the store), so
    /// a run that a crash cut short may have sent it already.
    pub fn may_have_run(&self, since: i64) -> bool {
        self.attempts > 0 || self.created_at < since
    }
}

/// Adds a job unless one with the same `dedupe_key` exists. Returns true when added.
pub async fn enqueue(
    conn: &mut AnyConnection,
    queue: &str,
    dedupe_key: &str,
    kind: &str,
    payload: &str,
) -> Result<bool> {
    let now = now_ms();
    let done = sqlx::query(
        "INSERT INTO outbox (queue, dedupe_key, kind, payload, not_before, created_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(queue)
    .bind(dedupe_key)
    .bind(kind)
    .bind(payload)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The oldest unfinished job of `queue`. Jobs run strictly in order, so a job that waits
/// for a retry holds back the ones behind it: messages are never reordered.
pub async fn head(conn: &mut AnyConnection, queue: &str) -> Result<Option<Job>> {
    Ok(sqlx::query_as(HEAD).bind(queue).fetch_optional(&mut *conn).await?)
}

const HEAD: &str = "SELECT seq, queue, dedupe_key, kind, payload, attempts, not_before, created_at, failing_since
    FROM outbox WHERE queue = $1 AND done_at IS NULL AND failed_at IS NULL ORDER BY seq LIMIT 1";

/// Marks a job done. Its payload is dropped: the message it carried is in the message
/// log, and a payload may hold a secret (a link token handed to its owner).
pub async fn mark_done(conn: &mut AnyConnection, seq: i64) -> Result<()> {
    sqlx::query("UPDATE outbox SET done_at = $1, payload = '{}' WHERE seq = $2")
        .bind(now_ms())
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Sets a job aside as a dead letter (see [`crate::queue::DeadReason`]); its queue goes
/// on with the next job. The error stays for the operator.
pub async fn mark_dead(conn: &mut AnyConnection, seq: i64, reason: &str, error: &str) -> Result<()> {
    super::dead_letters::set_aside(conn, super::dead_letters::Source::Outbox, seq, reason, error).await
}

/// Schedules another try of a job after `delay_ms`.
pub async fn retry_later(conn: &mut AnyConnection, seq: i64, delay_ms: i64, error: &str) -> Result<()> {
    super::dead_letters::retry_later(conn, super::dead_letters::Source::Outbox, seq, delay_ms, error).await
}

/// Unfinished jobs per queue.
pub async fn depth(conn: &mut AnyConnection, queue: &str) -> Result<i64> {
    let (count,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE queue = $1 AND done_at IS NULL AND failed_at IS NULL")
            .bind(queue)
            .fetch_one(&mut *conn)
            .await?;
    Ok(count)
}

/// Unfinished jobs of every queue that has some.
pub async fn depth_by_queue(conn: &mut AnyConnection) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT queue, COUNT(*) FROM outbox WHERE done_at IS NULL AND failed_at IS NULL GROUP BY queue ORDER BY queue",
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// The head job of every queue that has unfinished jobs.
pub async fn heads(conn: &mut AnyConnection) -> Result<Vec<Job>> {
    Ok(sqlx::query_as(HEADS).fetch_all(&mut *conn).await?)
}

/// Asked by the scheduler at every wake-up: it must stay cheap however many finished
/// jobs are kept.
const HEADS: &str = "SELECT seq, queue, dedupe_key, kind, payload, attempts, not_before, created_at, failing_since
    FROM outbox WHERE seq IN (SELECT MIN(seq) FROM outbox WHERE done_at IS NULL AND failed_at IS NULL GROUP BY queue)
    ORDER BY seq";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// How SQLite's planner reads the outbox for `sql`, one step per line.
    async fn plan(conn: &mut AnyConnection, sql: &str) -> String {
        let mut explain = sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
        if sql.contains("$1") {
            explain = explain.bind("agent:echo:1");
        }
        let steps: Vec<(i64, i64, i64, String)> = explain.fetch_all(&mut *conn).await.unwrap();
        steps.into_iter().map(|(.., detail)| detail).collect::<Vec<_>>().join("\n")
    }

    #[tokio::test]
    async fn the_schedulers_questions_read_only_unfinished_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("store.db").display())).await.unwrap();
        let mut conn = store.conn().await.unwrap();
        for sql in [HEADS, HEAD] {
            let plan = plan(&mut conn, sql).await;
            // Finished jobs stay for days (retention); an index that holds them would be
            // walked at every wake-up.
            assert!(plan.contains("INDEX outbox_unfinished"), "{sql}\n{plan}");
        }
    }
}
