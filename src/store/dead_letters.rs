//! Dead letters: outbox jobs and pushed events that were given up (see
//! `queue::DeadReason`), kept until an operator retries or drops them.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use sqlx::AnyConnection;

use super::{Result, now_ms};

/// Which queue a dead letter comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Outgoing work: a send to a surface, an agent turn, a room change.
    Outbox,
    /// An event the homeserver pushed.
    Inbox,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Self::Outbox => "outbox",
            Self::Inbox => "inbox",
        }
    }

    fn table(self) -> &'static str {
        match self {
            Self::Outbox => "outbox",
            Self::Inbox => "inbox_events",
        }
    }

    /// The rows of this source that are dead letters now (given up, not dropped).
    fn dead(self) -> &'static str {
        match self {
            Self::Outbox => "failed_at IS NOT NULL AND done_at IS NULL",
            Self::Inbox => "failed_at IS NOT NULL AND processed_at IS NULL",
        }
    }
}

/// A dead letter's id as operators write it: `outbox/12`, `inbox/7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterId {
    pub source: Source,
    pub seq: i64,
}

impl fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.source.name(), self.seq)
    }
}

impl FromStr for DeadLetterId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a job id: expected outbox/<number> or inbox/<number>");
        let (source, seq) = text.split_once('/').ok_or_else(bad)?;
        let source = match source {
            "outbox" => Source::Outbox,
            "inbox" => Source::Inbox,
            _ => return Err(bad()),
        };
        Ok(Self { source, seq: seq.parse().map_err(|_| bad())? })
    }
}

/// One dead letter, for `mosaic-as jobs` and the admin API.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// `outbox/<seq>` or `inbox/<seq>`.
    pub id: String,
    pub source: Source,
    /// The queue it waited in (`chat:telegram:-100…`, `agent:echo:…`, `matrix`), or the
    /// room of a pushed event.
    pub queue: String,
    /// The job's kind (`send`, `agent.turn`, …), or the pushed event's type.
    pub kind: String,
    /// Why it was given up: `permanent`, `attempts` or `age`.
    pub reason: String,
    /// The last error, as logged.
    pub error: Option<String>,
    pub attempts: i64,
    pub failed_at: i64,
    /// The job's payload or the pushed event (only in [`get`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

type Row = (i64, String, String, Option<String>, Option<String>, i64, i64, String);

fn from_row(source: Source, row: Row, with_body: bool) -> DeadLetter {
    let (seq, queue, kind, reason, error, attempts, failed_at, body) = row;
    let kind = match source {
        Source::Outbox => kind,
        Source::Inbox => serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|event| event["type"].as_str().map(str::to_string))
            .unwrap_or_else(|| "unparseable event".into()),
    };
    DeadLetter {
        id: DeadLetterId { source, seq }.to_string(),
        source,
        queue,
        kind,
        reason: reason.unwrap_or_else(|| "permanent".into()),
        error,
        attempts,
        failed_at,
        body: with_body.then_some(body),
    }
}

fn select(source: Source) -> String {
    let columns = match source {
        Source::Outbox => "seq, queue, kind, dead_reason, last_error, attempts, failed_at, payload",
        Source::Inbox => "seq, room_id, '', dead_reason, last_error, attempts, failed_at, event",
    };
    format!("SELECT {columns} FROM {} WHERE {}", source.table(), source.dead())
}

/// Schedules another try of failing work after `delay_ms`, remembering when it first
/// failed.
pub(super) async fn retry_later(
    conn: &mut AnyConnection,
    source: Source,
    seq: i64,
    delay_ms: i64,
    error: &str,
) -> Result<()> {
    let now = now_ms();
    let sql = format!(
        "UPDATE {} SET attempts = attempts + 1, not_before = $1, last_error = $2,
         failing_since = COALESCE(failing_since, $3) WHERE seq = $4",
        source.table()
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now + delay_ms)
        .bind(error)
        .bind(now)
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Sets failing work aside as a dead letter, with why (see [`crate::queue::DeadReason`])
/// and its last error.
pub(super) async fn set_aside(
    conn: &mut AnyConnection,
    source: Source,
    seq: i64,
    reason: &str,
    error: &str,
) -> Result<()> {
    let sql = format!(
        "UPDATE {} SET failed_at = $1, dead_reason = $2, last_error = $3, attempts = attempts + 1 WHERE seq = $4",
        source.table()
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now_ms()).bind(reason).bind(error).bind(seq).execute(&mut *conn).await?;
    Ok(())
}

/// Every dead letter, newest first.
pub async fn list(conn: &mut AnyConnection) -> Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    for source in [Source::Outbox, Source::Inbox] {
        let sql = format!("{} ORDER BY failed_at DESC, seq DESC", select(source));
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await?;
        letters.extend(rows.into_iter().map(|row| from_row(source, row, false)));
    }
    letters.sort_by_key(|letter| std::cmp::Reverse(letter.failed_at));
    Ok(letters)
}

/// One dead letter with its payload or event.
pub async fn get(conn: &mut AnyConnection, id: DeadLetterId) -> Result<Option<DeadLetter>> {
    let sql = format!("{} AND seq = $1", select(id.source));
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id.seq).fetch_optional(&mut *conn).await?;
    Ok(row.map(|row| from_row(id.source, row, true)))
}

/// Puts a dead letter back in its queue, as if it had failed once: an outbox job is
/// then sent with a look for an earlier copy first. Returns false when there is no such
/// dead letter.
pub async fn retry(conn: &mut AnyConnection, id: DeadLetterId) -> Result<bool> {
    let sql = format!(
        "UPDATE {} SET failed_at = NULL, dead_reason = NULL, failing_since = NULL, attempts = 1, not_before = $1
         WHERE seq = $2 AND {}",
        id.source.table(),
        id.source.dead()
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now_ms()).bind(id.seq).execute(&mut *conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Drops a dead letter for good. Returns false when there is no such dead letter.
pub async fn drop(conn: &mut AnyConnection, id: DeadLetterId) -> Result<bool> {
    // The row stays as finished work (done / processed) so that dedupe keys keep holding;
    // what it carried is removed.
    let finished = match id.source {
        Source::Outbox => "done_at = $1, payload = '{}'",
        Source::Inbox => "processed_at = $1, event = ''",
    };
    let sql = format!(
        "UPDATE {} SET {finished}, dead_reason = 'dropped' WHERE seq = $2 AND {}",
        id.source.table(),
        id.source.dead()
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now_ms()).bind(id.seq).execute(&mut *conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Dead letters per queue family and reason, for `/metrics`.
pub async fn counts(conn: &mut AnyConnection) -> Result<Vec<(String, String, i64)>> {
    let mut counts: std::collections::BTreeMap<(String, String), i64> = Default::default();
    let outbox: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT queue, dead_reason, COUNT(*) FROM outbox WHERE failed_at IS NOT NULL AND done_at IS NULL
         GROUP BY queue, dead_reason",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (queue, reason, count) in outbox {
        let key = (queue_family(&queue).to_string(), reason.unwrap_or_else(|| "permanent".into()));
        *counts.entry(key).or_default() += count;
    }
    let inbox: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT dead_reason, COUNT(*) FROM inbox_events WHERE failed_at IS NOT NULL AND processed_at IS NULL
         GROUP BY dead_reason",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (reason, count) in inbox {
        *counts.entry(("inbox".into(), reason.unwrap_or_else(|| "permanent".into()))).or_default() += count;
    }
    Ok(counts.into_iter().map(|((queue, reason), count)| (queue, reason, count)).collect())
}

/// The family of a queue, a bounded metrics label: the surface of a chat queue
/// (`chat:telegram:…` → `telegram`), `agents` for agent turns, else the queue itself.
pub fn queue_family(queue: &str) -> &str {
    if let Some(rest) = queue.strip_prefix(crate::queue::CHAT_QUEUE_PREFIX) {
        return rest.split(':').next().unwrap_or(rest);
    }
    if queue.starts_with(crate::queue::AGENT_QUEUE_PREFIX) {
        return "agents";
    }
    queue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_as_written() {
        let id: DeadLetterId = "outbox/12".parse().unwrap();
        assert_eq!(id, DeadLetterId { source: Source::Outbox, seq: 12 });
        assert_eq!(id.to_string(), "outbox/12");
        assert_eq!("inbox/7".parse::<DeadLetterId>().unwrap().source, Source::Inbox);
        for bad in ["12", "outbox/", "outbox/x", "mail/3", ""] {
            assert!(bad.parse::<DeadLetterId>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn queue_families_are_few() {
        assert_eq!(queue_family("chat:telegram:-1001"), "telegram");
        assert_eq!(queue_family("chat:matrix:!room:example.org"), "matrix");
        assert_eq!(queue_family("agent:echo:5f0c"), "agents");
        assert_eq!(queue_family("matrix"), "matrix");
    }
}
