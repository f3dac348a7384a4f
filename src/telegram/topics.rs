//! Message → forum topic, remembered for every message the bridge sends or receives in a
//! topic (table `telegram_topics`), so a thread started elsewhere from one of them is
//! answered in the same topic.

use sqlx::AnyConnection;

use crate::store::{Result, now_ms};

pub(crate) async fn record(conn: &mut AnyConnection, chat_id: &str, message_id: &str, thread_id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO telegram_topics (chat_id, message_id, thread_id, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(chat_id)
    .bind(message_id)
    .bind(thread_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn topic_of(conn: &mut AnyConnection, chat_id: &str, message_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT thread_id FROM telegram_topics WHERE chat_id = $1 AND message_id = $2")
            .bind(chat_id)
            .bind(message_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(thread,)| thread))
}
