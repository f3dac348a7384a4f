//! Teams, their members, their Spaces, and the conversations shared with them.

use sqlx::{AnyConnection, FromRow};
use uuid::Uuid;

use super::{Result, now_ms};

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Team {
    pub id: String,
    pub name: String,
}

pub async fn create(conn: &mut AnyConnection, name: &str) -> Result<Team> {
    let team = Team { id: Uuid::new_v4().to_string(), name: name.to_string() };
    sqlx::query("INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&team.id)
        .bind(&team.name)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    Ok(team)
}

pub async fn list(conn: &mut AnyConnection) -> Result<Vec<Team>> {
    Ok(sqlx::query_as("SELECT id, name FROM teams ORDER BY name").fetch_all(&mut *conn).await?)
}

pub async fn by_name(conn: &mut AnyConnection, name: &str) -> Result<Option<Team>> {
    Ok(sqlx::query_as("SELECT id, name FROM teams WHERE name = $1").bind(name).fetch_optional(&mut *conn).await?)
}

pub async fn by_id(conn: &mut AnyConnection, id: &str) -> Result<Option<Team>> {
    Ok(sqlx::query_as("SELECT id, name FROM teams WHERE id = $1").bind(id).fetch_optional(&mut *conn).await?)
}

/// Teams an account belongs to.
pub async fn of_account(conn: &mut AnyConnection, account_id: &str) -> Result<Vec<Team>> {
    Ok(sqlx::query_as(
        "SELECT t.id, t.name FROM teams t JOIN team_members m ON m.team_id = t.id WHERE m.account_id = $1 ORDER BY t.name",
    )
    .bind(account_id)
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn add_member(conn: &mut AnyConnection, team_id: &str, account_id: &str) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO team_members (team_id, account_id, added_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(team_id)
    .bind(account_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn remove_member(conn: &mut AnyConnection, team_id: &str, account_id: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND account_id = $2")
        .bind(team_id)
        .bind(account_id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn is_member(conn: &mut AnyConnection, team_id: &str, account_id: &str) -> Result<bool> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT account_id FROM team_members WHERE team_id = $1 AND account_id = $2")
            .bind(team_id)
            .bind(account_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.is_some())
}

/// Matrix ids of the team's members (their linked Matrix identities).
pub async fn member_matrix_ids(conn: &mut AnyConnection, team_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT i.channel_user_id FROM team_members m JOIN channel_identities i ON i.mosaic_user_id = m.account_id
         WHERE m.team_id = $1 AND i.channel_name = 'matrix' ORDER BY i.channel_user_id",
    )
    .bind(team_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Names of the team's members' accounts.
pub async fn member_names(conn: &mut AnyConnection, team_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT a.name FROM team_members m JOIN accounts a ON a.id = m.account_id WHERE m.team_id = $1 ORDER BY a.name",
    )
    .bind(team_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(name,)| name).collect())
}

pub async fn space(conn: &mut AnyConnection, team_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT space_id FROM team_matrix_spaces WHERE team_id = $1")
        .bind(team_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|(space,)| space))
}

pub async fn record_space(conn: &mut AnyConnection, team_id: &str, space_id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO team_matrix_spaces (team_id, space_id, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(team_id)
    .bind(space_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The team a conversation is shared with.
pub async fn share_of(conn: &mut AnyConnection, conversation_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT team_id FROM conversation_shares WHERE conversation_id = $1")
        .bind(conversation_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|(team,)| team))
}

/// Shares a conversation with a team, replacing an earlier share.
pub async fn set_share(conn: &mut AnyConnection, conversation_id: &str, team_id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO conversation_shares (conversation_id, team_id, shared_at) VALUES ($1, $2, $3)
         ON CONFLICT (conversation_id) DO UPDATE SET team_id = excluded.team_id, shared_at = excluded.shared_at",
    )
    .bind(conversation_id)
    .bind(team_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn remove_share(conn: &mut AnyConnection, conversation_id: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM conversation_shares WHERE conversation_id = $1")
        .bind(conversation_id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Rooms shared with the team.
pub async fn shared_rooms(conn: &mut AnyConnection, team_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT r.room_id FROM conversation_shares s JOIN conversation_matrix_rooms r ON r.conversation_id = s.conversation_id
         WHERE s.team_id = $1 ORDER BY s.shared_at",
    )
    .bind(team_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(room,)| room).collect())
}

pub async fn record_share_invite(conn: &mut AnyConnection, room_id: &str, user_id: &str, team_id: &str) -> Result<()> {
    sqlx::query("INSERT INTO share_invites (room_id, user_id, team_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(room_id)
        .bind(user_id)
        .bind(team_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Takes the people a share brought into the room (to remove them).
pub async fn take_share_invites(conn: &mut AnyConnection, room_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT user_id FROM share_invites WHERE room_id = $1")
        .bind(room_id)
        .fetch_all(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM share_invites WHERE room_id = $1").bind(room_id).execute(&mut *conn).await?;
    Ok(rows.into_iter().map(|(user,)| user).collect())
}
