//! Retention policies and the deletion of expired messages.

use sqlx::AnyConnection;

use super::{Result, now_ms};

/// How far expiry reaches: the service's store only, or the homeserver's copy of the
/// room too (which deletes history for everyone; only admins and operators decide that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    StoreOnly,
    AlsoHomeserver,
}

/// Sets (or with `None` days, "keep forever") the policy of a room or, with room `*`, of
/// every room of a type.
pub async fn set_policy(
    conn: &mut AnyConnection,
    room_id: &str,
    applies_to: &str,
    days: Option<i64>,
    reach: Reach,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO room_retention_policies (room_id, retention_days, applies_to, created_at, purge_homeserver)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (room_id, applies_to) DO UPDATE SET retention_days = excluded.retention_days,
             created_at = excluded.created_at, purge_homeserver = excluded.purge_homeserver",
    )
    .bind(room_id)
    .bind(days)
    .bind(applies_to)
    .bind(now_ms())
    .bind(i64::from(reach == Reach::AlsoHomeserver))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// How far the expiry of a room's own policy reaches; a room without one follows its
/// type's policy or the config, which operators set: those reach the homeserver.
pub async fn reach_of_room(conn: &mut AnyConnection, room_id: &str) -> Result<Reach> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT purge_homeserver FROM room_retention_policies WHERE room_id = $1 AND applies_to = 'all'",
    )
    .bind(room_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some((0,)) => Reach::StoreOnly,
        _ => Reach::AlsoHomeserver,
    })
}

/// The stored policy for a room (`applies_to = all`) or a type (`room_id = *`):
/// `None` when there is none, `Some(None)` for "keep forever".
pub async fn policy(conn: &mut AnyConnection, room_id: &str, applies_to: &str) -> Result<Option<Option<i64>>> {
    let row: Option<(Option<i64>,)> =
        sqlx::query_as("SELECT retention_days FROM room_retention_policies WHERE room_id = $1 AND applies_to = $2")
            .bind(room_id)
            .bind(applies_to)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(days,)| days))
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Policy {
    pub room_id: String,
    pub retention_days: Option<i64>,
    pub applies_to: String,
}

pub async fn policies(conn: &mut AnyConnection) -> Result<Vec<Policy>> {
    Ok(sqlx::query_as(
        "SELECT room_id, retention_days, applies_to FROM room_retention_policies ORDER BY room_id, applies_to",
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// Deletes a conversation's messages created before `cutoff_ms`; returns how many. A
/// message that unfinished work still names (a reply to it, an edit of it, its own send
/// or turn waiting in the outbox) stays until that work is done: removing it first would
/// send the reply without its reference, or lose the turn's prompt.
pub async fn delete_before(conn: &mut AnyConnection, conversation_id: &str, cutoff_ms: i64) -> Result<u64> {
    let refs = format!("DELETE FROM message_refs WHERE message_id IN ({EXPIRED})");
    sqlx::query(sqlx::AssertSqlSafe(refs)).bind(conversation_id).bind(cutoff_ms).execute(&mut *conn).await?;
    let messages = format!("DELETE FROM messages WHERE id IN ({EXPIRED})");
    let done =
        sqlx::query(sqlx::AssertSqlSafe(messages)).bind(conversation_id).bind(cutoff_ms).execute(&mut *conn).await?;
    Ok(done.rows_affected())
}

/// The ids of a conversation's messages past the cutoff that no unfinished outbox job
/// names. Message ids are UUIDs, so finding one in a job's payload cannot be a mistake;
/// only unfinished jobs are read (a partial index), and a done job's payload is emptied.
const EXPIRED: &str = "SELECT m.id FROM messages m WHERE m.conversation_id = $1 AND m.created_at < $2
    AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.done_at IS NULL AND o.failed_at IS NULL
                    AND o.payload LIKE '%' || m.id || '%')";
