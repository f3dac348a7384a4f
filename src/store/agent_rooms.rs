//! Rooms where two agents talk: one per owning account and pair (ids sorted). Rooms from
//! before owners existed have the owner `''` and are never handed out again.

use sqlx::AnyConnection;

use super::{Result, now_ms};

/// The pair in the order the table keeps it.
pub fn sorted<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b { (a, b) } else { (b, a) }
}

/// The room of `owner`'s pair of agents.
pub async fn room_of_pair(conn: &mut AnyConnection, owner: &str, a: &str, b: &str) -> Result<Option<String>> {
    let (a, b) = sorted(a, b);
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT room_id FROM agent_rooms WHERE owner_account_id = $1 AND agent_a_id = $2 AND agent_b_id = $3",
    )
    .bind(owner)
    .bind(a)
    .bind(b)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(room,)| room))
}

pub async fn pair_of_room(conn: &mut AnyConnection, room_id: &str) -> Result<Option<(String, String)>> {
    Ok(sqlx::query_as("SELECT agent_a_id, agent_b_id FROM agent_rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(&mut *conn)
        .await?)
}

pub async fn record(conn: &mut AnyConnection, room_id: &str, owner: &str, a: &str, b: &str) -> Result<()> {
    let (a, b) = sorted(a, b);
    sqlx::query(
        "INSERT INTO agent_rooms (room_id, owner_account_id, agent_a_id, agent_b_id, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(room_id)
    .bind(owner)
    .bind(a)
    .bind(b)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
