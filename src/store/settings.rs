//! Per-conversation settings and agent token usage.

use sqlx::AnyConnection;

use super::{Result, now_ms};

/// How agents behave in one conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomSettings {
    /// The agent that answers messages addressed to no agent in particular.
    pub default_agent: Option<String>,
    /// Agents answer only when mentioned, even with one person in the room.
    pub mention_only: bool,
    /// Whether agents answer people who have not linked a Mosaic account.
    pub answer_unlinked: bool,
}

pub async fn get(conn: &mut AnyConnection, conversation_id: &str) -> Result<RoomSettings> {
    let row: Option<(Option<String>, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT default_agent, mention_only, answer_unlinked FROM room_settings WHERE conversation_id = $1",
    )
    .bind(conversation_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (default_agent, mention_only, answer_unlinked) = row.unwrap_or_default();
    Ok(RoomSettings {
        default_agent,
        mention_only: mention_only.unwrap_or(0) != 0,
        answer_unlinked: answer_unlinked.unwrap_or(1) != 0,
    })
}

/// Agents ignore people without a linked account here, unless someone chose otherwise
/// for this conversation already.
pub async fn default_unlinked_off(conn: &mut AnyConnection, conversation_id: &str) -> Result<()> {
    sqlx::query("INSERT INTO room_settings (conversation_id, updated_at) VALUES ($1, $2) ON CONFLICT (conversation_id) DO NOTHING")
        .bind(conversation_id)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE room_settings SET answer_unlinked = 0 WHERE conversation_id = $1 AND answer_unlinked IS NULL")
        .bind(conversation_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One setting to change; the others keep their values.
pub enum Change<'a> {
    DefaultAgent(&'a str),
    MentionOnly(bool),
    AnswerUnlinked(bool),
}

pub async fn set(conn: &mut AnyConnection, conversation_id: &str, change: Change<'_>) -> Result<()> {
    let (column, text, flag) = match change {
        Change::DefaultAgent(agent) => ("default_agent", Some(agent.to_string()), None),
        Change::MentionOnly(on) => ("mention_only", None, Some(on as i64)),
        Change::AnswerUnlinked(on) => ("answer_unlinked", None, Some(on as i64)),
    };
    sqlx::query("INSERT INTO room_settings (conversation_id, updated_at) VALUES ($1, $2) ON CONFLICT (conversation_id) DO NOTHING")
        .bind(conversation_id)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    // `column` is one of three fixed names above, never input.
    let sql = format!("UPDATE room_settings SET {column} = $1, updated_at = $2 WHERE conversation_id = $3");
    let query = sqlx::query(sqlx::AssertSqlSafe(sql));
    let query = match (text, flag) {
        (Some(text), _) => query.bind(text),
        (None, flag) => query.bind(flag),
    };
    query.bind(now_ms()).bind(conversation_id).execute(&mut *conn).await?;
    Ok(())
}

/// Records the tokens of one turn (once per turn).
pub async fn record_usage(
    conn: &mut AnyConnection,
    turn_key: &str,
    agent_id: &str,
    conversation_id: &str,
    input_tokens: u64,
    output_tokens: u64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO agent_usage (turn_key, agent_id, conversation_id, input_tokens, output_tokens, created_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (turn_key) DO NOTHING",
    )
    .bind(turn_key)
    .bind(agent_id)
    .bind(conversation_id)
    .bind(input_tokens as i64)
    .bind(output_tokens as i64)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Per agent in a conversation: turns, input tokens, output tokens.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageTotal {
    pub agent_id: String,
    pub turns: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

pub async fn usage_totals(conn: &mut AnyConnection, conversation_id: &str) -> Result<Vec<UsageTotal>> {
    Ok(sqlx::query_as(
        "SELECT agent_id, COUNT(*) AS turns, CAST(SUM(input_tokens) AS BIGINT) AS input_tokens,
                CAST(SUM(output_tokens) AS BIGINT) AS output_tokens
         FROM agent_usage WHERE conversation_id = $1 GROUP BY agent_id ORDER BY agent_id",
    )
    .bind(conversation_id)
    .fetch_all(&mut *conn)
    .await?)
}
