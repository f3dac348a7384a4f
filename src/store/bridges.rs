//! Which chats of other surfaces belong to which conversation.

use sqlx::AnyConnection;

use super::{Result, now_ms};

/// A bridged chat: messages flow between it and every other surface of the conversation.
pub const KIND_BRIDGE: &str = "bridge";
/// A chat that only talks to the bot (commands); nothing is bridged.
pub const KIND_DIRECT: &str = "direct";

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Bridge {
    pub channel: String,
    pub channel_id: String,
    pub conversation_id: String,
    pub kind: String,
    pub mirror_deletions: i64,
}

impl Bridge {
    pub fn is_bridged(&self) -> bool {
        self.kind == KIND_BRIDGE
    }
}

const COLUMNS: &str = "channel, channel_id, conversation_id, kind, mirror_deletions";

/// The chat's entry, bridged or direct.
pub async fn get(conn: &mut AnyConnection, channel: &str, channel_id: &str) -> Result<Option<Bridge>> {
    let sql = format!("SELECT {COLUMNS} FROM bridges WHERE channel = $1 AND channel_id = $2");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(channel).bind(channel_id).fetch_optional(&mut *conn).await?)
}

/// Bridges `channel_id` into `conversation_id` (moving it from wherever it was).
pub async fn bridge(
    conn: &mut AnyConnection,
    channel: &str,
    channel_id: &str,
    conversation_id: &str,
    mirror_deletions: bool,
    created_by: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO bridges (channel, channel_id, conversation_id, kind, mirror_deletions, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (channel, channel_id) DO UPDATE SET conversation_id = excluded.conversation_id,
             kind = excluded.kind, mirror_deletions = excluded.mirror_deletions,
             created_by = excluded.created_by, created_at = excluded.created_at",
    )
    .bind(channel)
    .bind(channel_id)
    .bind(conversation_id)
    .bind(KIND_BRIDGE)
    .bind(mirror_deletions as i64)
    .bind(created_by)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records a chat that talks to the bot without being bridged (first contact wins).
pub async fn record_direct(
    conn: &mut AnyConnection,
    channel: &str,
    channel_id: &str,
    conversation_id: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO bridges (channel, channel_id, conversation_id, kind, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (channel, channel_id) DO NOTHING",
    )
    .bind(channel)
    .bind(channel_id)
    .bind(conversation_id)
    .bind(KIND_DIRECT)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes every bridge of a conversation on `channel` (all surfaces when `None`);
/// returns what was removed.
pub async fn unbridge(conn: &mut AnyConnection, conversation_id: &str, channel: Option<&str>) -> Result<Vec<Bridge>> {
    let removed: Vec<Bridge> = bridged_chats(conn, conversation_id)
        .await?
        .into_iter()
        .filter(|b| channel.is_none_or(|c| c == b.channel))
        .collect();
    for bridge in &removed {
        remove(conn, &bridge.channel, &bridge.channel_id).await?;
    }
    Ok(removed)
}

/// Forgets one chat.
pub async fn remove(conn: &mut AnyConnection, channel: &str, channel_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM bridges WHERE channel = $1 AND channel_id = $2")
        .bind(channel)
        .bind(channel_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The chats bridged into a conversation.
pub async fn bridged_chats(conn: &mut AnyConnection, conversation_id: &str) -> Result<Vec<Bridge>> {
    let sql =
        format!("SELECT {COLUMNS} FROM bridges WHERE conversation_id = $1 AND kind = $2 ORDER BY channel, channel_id");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(conversation_id).bind(KIND_BRIDGE).fetch_all(&mut *conn).await?)
}

/// Where a conversation shows, in one read: its Matrix room first, named `matrix` as a
/// surface, then its bridged chats, each as (surface, chat id).
pub async fn chats_of_conversation(
    conn: &mut AnyConnection,
    conversation_id: &str,
    matrix: &str,
) -> Result<Vec<(String, String)>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT CAST($2 AS TEXT) AS channel, room_id AS channel_id, CAST(0 AS BIGINT) AS place
         FROM conversation_matrix_rooms WHERE conversation_id = $1
         UNION ALL
         SELECT channel, channel_id, CAST(1 AS BIGINT) AS place FROM bridges WHERE conversation_id = $1 AND kind = $3
         ORDER BY place, channel, channel_id",
    )
    .bind(conversation_id)
    .bind(matrix)
    .bind(KIND_BRIDGE)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(channel, chat, _)| (channel, chat)).collect())
}

/// Every bridged chat id of one surface (an adapter catching up after a reconnect).
pub async fn channels_of(conn: &mut AnyConnection, channel: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT channel_id FROM bridges WHERE channel = $1 AND kind = $2 ORDER BY channel_id")
            .bind(channel)
            .bind(KIND_BRIDGE)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
