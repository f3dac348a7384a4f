//! The append-only message log and the per-surface references of each message.

use sqlx::AnyConnection;
use uuid::Uuid;

use super::{Result, StoreError, now_ms};
use crate::protocol::{ChannelEvent, ChannelMessage, Landing};

/// Appends a message of `conversation_id` that entered through `channel`. Returns false
/// (and writes nothing) when the same message — same canonical id, or the same native id
/// on the same channel — is already stored, so that a redelivered event is handled once.
pub async fn append(
    conn: &mut AnyConnection,
    conversation_id: &str,
    channel: &str,
    msg: &ChannelMessage,
) -> Result<bool> {
    let body = serde_json::to_string(msg).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let done = sqlx::query(
        "INSERT INTO messages (id, conversation_id, channel, channel_id, channel_message_id, sender_id, sender_type,
                               content_type, thread_id, reply_to_id, body, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
    )
    .bind(msg.id.to_string())
    .bind(conversation_id)
    .bind(channel)
    .bind(&msg.channel_id)
    .bind(msg.native_key())
    .bind(&msg.sender_id)
    .bind(msg.sender_type.as_str())
    .bind(msg.content_type.as_str())
    .bind(&msg.thread_id)
    // The column keeps what the message is about: what it answers, or what it changes.
    .bind(msg.relates_to().map(|id| id.to_string()))
    .bind(body)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(conn: &mut AnyConnection, id: Uuid) -> Result<Option<ChannelMessage>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT body FROM messages WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|(body,)| decode(&body)).transpose()
}

/// The last `limit` messages of a conversation, oldest first.
pub async fn history(conn: &mut AnyConnection, conversation_id: &str, limit: i64) -> Result<Vec<ChannelMessage>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT body FROM messages WHERE conversation_id = $1 ORDER BY seq DESC LIMIT $2")
            .bind(conversation_id)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
    rows.iter().rev().map(|(body,)| decode(body)).collect()
}

/// The reactions to `target` (added and taken back), in the order they were made.
pub async fn reactions_to(conn: &mut AnyConnection, target: Uuid) -> Result<Vec<ChannelMessage>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT body FROM messages WHERE reply_to_id = $1 ORDER BY seq")
        .bind(target.to_string())
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::new();
    for (body,) in rows {
        let msg = decode(&body)?;
        if matches!(msg.event, ChannelEvent::Reaction { .. }) {
            out.push(msg);
        }
    }
    Ok(out)
}

pub async fn count_in_conversation(conn: &mut AnyConnection, conversation_id: &str) -> Result<i64> {
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages WHERE conversation_id = $1")
        .bind(conversation_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(count)
}

fn decode(body: &str) -> Result<ChannelMessage> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("message body: {e}")))
}

/// Remembers that `message_id` exists on `channel` as `native_id` (idempotent).
pub async fn add_ref(
    conn: &mut AnyConnection,
    channel: &str,
    channel_id: &str,
    native_id: &str,
    message_id: Uuid,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO message_refs (channel, channel_id, native_id, message_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(channel)
    .bind(channel_id)
    .bind(native_id)
    .bind(message_id.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Remembers where a sent message landed (idempotent).
pub async fn record_landing(conn: &mut AnyConnection, landing: &Landing) -> Result<()> {
    add_ref(conn, &landing.channel, &landing.chat_id, &landing.native_id, landing.message_id).await
}

/// Remembers where each of several sent messages landed (idempotent).
pub async fn record_landings(conn: &mut AnyConnection, landings: &[Landing]) -> Result<()> {
    for landing in landings {
        record_landing(conn, landing).await?;
    }
    Ok(())
}

/// The canonical id of a native message.
pub async fn message_for_native(
    conn: &mut AnyConnection,
    channel: &str,
    channel_id: &str,
    native_id: &str,
) -> Result<Option<Uuid>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT message_id FROM message_refs WHERE channel = $1 AND channel_id = $2 AND native_id = $3")
            .bind(channel)
            .bind(channel_id)
            .bind(native_id)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|(id,)| Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
}

/// The native id of a canonical message in one channel of a surface.
pub async fn native_for_message(
    conn: &mut AnyConnection,
    channel: &str,
    channel_id: &str,
    message_id: Uuid,
) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT native_id FROM message_refs WHERE message_id = $1 AND channel = $2 AND channel_id = $3")
            .bind(message_id.to_string())
            .bind(channel)
            .bind(channel_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(native,)| native))
}

/// Matrix rooms with messages stored since `since_ms`, each with the time of its newest
/// stored message (unix ms): where a catch-up looks for events the homeserver never
/// pushed.
pub async fn recently_active_rooms(
    conn: &mut AnyConnection,
    channel: &str,
    since_ms: i64,
) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT channel_id, MAX(created_at) FROM messages WHERE channel = $1 AND created_at >= $2 GROUP BY channel_id",
    )
    .bind(channel)
    .bind(since_ms)
    .fetch_all(&mut *conn)
    .await?)
}
