//! Conversations, their Matrix rooms, room membership and registered ghosts.

use sqlx::{AnyConnection, FromRow};
use uuid::Uuid;

use super::{Result, now_ms};

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Conversation {
    pub id: String,
    pub title: String,
    pub owner_account_id: Option<String>,
    pub created_at: i64,
    pub archived_at: Option<i64>,
}

const CONVERSATION_COLUMNS: &str = "c.id, c.title, c.owner_account_id, c.created_at, c.archived_at";

pub async fn create_conversation(
    conn: &mut AnyConnection,
    title: &str,
    owner_account_id: Option<&str>,
) -> Result<Conversation> {
    let now = now_ms();
    let conversation = Conversation {
        id: Uuid::new_v4().to_string(),
        title: title.to_string(),
        owner_account_id: owner_account_id.map(str::to_string),
        created_at: now,
        archived_at: None,
    };
    sqlx::query(
        "INSERT INTO conversations (id, title, owner_account_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&conversation.id)
    .bind(&conversation.title)
    .bind(&conversation.owner_account_id)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(conversation)
}

pub async fn conversation(conn: &mut AnyConnection, id: &str) -> Result<Option<Conversation>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?)
}

pub async fn conversation_for_room(conn: &mut AnyConnection, room_id: &str) -> Result<Option<Conversation>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations c
         JOIN conversation_matrix_rooms r ON r.conversation_id = c.id WHERE r.room_id = $1"
    )))
    .bind(room_id)
    .fetch_optional(&mut *conn)
    .await?)
}

pub async fn room_for_conversation(conn: &mut AnyConnection, conversation_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT room_id FROM conversation_matrix_rooms WHERE conversation_id = $1")
            .bind(conversation_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(room,)| room))
}

/// Records the room of a conversation; a second call for the same pair is a no-op.
pub async fn set_conversation_room(conn: &mut AnyConnection, conversation_id: &str, room_id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO conversation_matrix_rooms (conversation_id, room_id, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (conversation_id) DO NOTHING",
    )
    .bind(conversation_id)
    .bind(room_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The conversation of a room, created on first use with `title`.
pub async fn conversation_for_room_or_create(
    conn: &mut AnyConnection,
    room_id: &str,
    title: &str,
) -> Result<Conversation> {
    if let Some(existing) = conversation_for_room(conn, room_id).await? {
        return Ok(existing);
    }
    let conversation = create_conversation(conn, title, None).await?;
    set_conversation_room(conn, &conversation.id, room_id).await?;
    Ok(conversation)
}

pub async fn set_membership(conn: &mut AnyConnection, room_id: &str, user_id: &str, membership: &str) -> Result<()> {
    set_memberships(conn, &[Membership { room_id, user_id, membership }]).await
}

/// One member's membership of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership<'a> {
    pub room_id: &'a str,
    pub user_id: &'a str,
    pub membership: &'a str,
}

/// Records memberships in order, the later of two for one member winning, in one
/// statement per 200.
pub async fn set_memberships(conn: &mut AnyConnection, changes: &[Membership<'_>]) -> Result<()> {
    // One statement may not change a row twice on PostgreSQL: only each member's last
    // change goes in.
    let mut seen = std::collections::HashSet::with_capacity(changes.len());
    let last: Vec<Membership> =
        changes.iter().rev().filter(|change| seen.insert((change.room_id, change.user_id))).copied().collect();
    let now = now_ms();
    for chunk in last.chunks(200) {
        // Numbered by hand: sqlx's Any driver writes `?`, which PostgreSQL does not take.
        let rows: Vec<String> =
            (0..chunk.len()).map(|i| format!("(${}, ${}, ${}, $1)", 3 * i + 2, 3 * i + 3, 3 * i + 4)).collect();
        let sql = format!(
            "INSERT INTO room_members (room_id, user_id, membership, updated_at) VALUES {}
             ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, updated_at = excluded.updated_at",
            rows.join(", ")
        );
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for change in chunk {
            insert = insert.bind(change.room_id).bind(change.user_id).bind(change.membership);
        }
        insert.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Members whose membership is `join` or `invite`.
pub async fn present_members(conn: &mut AnyConnection, room_id: &str) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT user_id, membership FROM room_members WHERE room_id = $1 AND membership IN ('join', 'invite') ORDER BY user_id",
    )
    .bind(room_id)
    .fetch_all(&mut *conn)
    .await?)
}

/// Rooms where any of `users` is joined, with the time the earliest of them was seen
/// joining (unix ms).
pub async fn rooms_joined_by(conn: &mut AnyConnection, users: &[String]) -> Result<Vec<(String, i64)>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=users.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT room_id, MIN(updated_at) FROM room_members WHERE membership = 'join' AND user_id IN ({})
         GROUP BY room_id ORDER BY room_id",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
    for user in users {
        query = query.bind(user);
    }
    Ok(query.fetch_all(&mut *conn).await?)
}

pub async fn membership(conn: &mut AnyConnection, room_id: &str, user_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT membership FROM room_members WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(m,)| m))
}

/// The profile a ghost was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GhostProfile {
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

/// The profile a registered ghost was given; `None` when it is not registered.
pub async fn ghost(conn: &mut AnyConnection, user_id: &str) -> Result<Option<GhostProfile>> {
    let row: Option<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT display_name, avatar_url FROM ghosts WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(display_name, avatar_url)| GhostProfile { display_name, avatar_url }))
}

pub async fn record_ghost(conn: &mut AnyConnection, user_id: &str, profile: &GhostProfile) -> Result<()> {
    sqlx::query(
        "INSERT INTO ghosts (user_id, display_name, avatar_url, registered_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name, avatar_url = excluded.avatar_url",
    )
    .bind(user_id)
    .bind(&profile.display_name)
    .bind(&profile.avatar_url)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A conversation with its room, for listings.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ConversationRow {
    pub id: String,
    pub title: String,
    pub owner_account_id: Option<String>,
    pub created_at: i64,
    pub archived_at: Option<i64>,
    pub room_id: Option<String>,
}

pub async fn list_conversations(conn: &mut AnyConnection) -> Result<Vec<ConversationRow>> {
    Ok(sqlx::query_as(
        "SELECT c.id, c.title, c.owner_account_id, c.created_at, c.archived_at, r.room_id
         FROM conversations c LEFT JOIN conversation_matrix_rooms r ON r.conversation_id = c.id ORDER BY c.created_at",
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// Renames a conversation (the last rename wins). False when there is no such conversation.
pub async fn rename(conn: &mut AnyConnection, id: &str, title: &str) -> Result<bool> {
    let done = sqlx::query("UPDATE conversations SET title = $1, updated_at = $2 WHERE id = $3")
        .bind(title)
        .bind(now_ms())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks a conversation archived; false when it is unknown or archived already.
pub async fn archive(conn: &mut AnyConnection, id: &str) -> Result<bool> {
    let now = now_ms();
    let done =
        sqlx::query("UPDATE conversations SET archived_at = $1, updated_at = $2 WHERE id = $3 AND archived_at IS NULL")
            .bind(now)
            .bind(now)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn personal_space(conn: &mut AnyConnection, account_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT space_id FROM personal_spaces WHERE account_id = $1")
        .bind(account_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|(space,)| space))
}

pub async fn record_personal_space(conn: &mut AnyConnection, account_id: &str, space_id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO personal_spaces (account_id, space_id, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(account_id)
    .bind(space_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Rooms of the conversations an account owns.
pub async fn owned_rooms(conn: &mut AnyConnection, account_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT r.room_id FROM conversations c JOIN conversation_matrix_rooms r ON r.conversation_id = c.id
         WHERE c.owner_account_id = $1 ORDER BY c.created_at",
    )
    .bind(account_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(room,)| room).collect())
}

/// Rooms (and Spaces) where `user_id` is joined or invited, as far as this service saw.
pub async fn rooms_of_member(conn: &mut AnyConnection, user_id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT room_id FROM room_members WHERE user_id = $1 AND membership IN ('join', 'invite') ORDER BY room_id",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(room,)| room).collect())
}
