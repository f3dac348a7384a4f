//! The newest message id handed to the hub per Discord channel (table `discord_cursors`),
//! where the catch-up after a reconnect or a restart starts.

use sqlx::AnyConnection;

use crate::store::{Result, now_ms};

pub async fn get(conn: &mut AnyConnection, channel_id: u64) -> Result<Option<u64>> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT last_message_id FROM discord_cursors WHERE channel_id = $1")
        .bind(channel_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|(id,)| id as u64))
}

/// Moves the cursor forward to `message_id` (never back: catch-up may replay older ones).
pub async fn advance(conn: &mut AnyConnection, channel_id: u64, message_id: u64) -> Result<()> {
    sqlx::query(
        "INSERT INTO discord_cursors (channel_id, last_message_id, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (channel_id) DO UPDATE SET last_message_id = excluded.last_message_id, updated_at = excluded.updated_at
         WHERE discord_cursors.last_message_id < excluded.last_message_id",
    )
    .bind(channel_id.to_string())
    .bind(message_id as i64)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Starts the cursor of a newly bridged channel at its newest message, so that older
/// history is not imported (no-op when the channel has a cursor).
pub async fn start(conn: &mut AnyConnection, channel_id: u64, message_id: u64) -> Result<()> {
    sqlx::query(
        "INSERT INTO discord_cursors (channel_id, last_message_id, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (channel_id) DO NOTHING",
    )
    .bind(channel_id.to_string())
    .bind(message_id as i64)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Milliseconds of Discord's epoch (2015-01-01) since the unix epoch.
const DISCORD_EPOCH_MS: i64 = 1_420_070_400_000;

/// A snowflake for "now": every message posted later has a greater id.
pub fn snowflake_now() -> u64 {
    ((now_ms() - DISCORD_EPOCH_MS).max(0) as u64) << 22
}
