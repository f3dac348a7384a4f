//! Accounts, their linked channel identities, and link tokens.

use sqlx::{AnyConnection, FromRow};
use uuid::Uuid;

use super::{Result, now_ms};
use crate::secrets;

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub display_name: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Identity {
    pub channel_name: String,
    pub channel_user_id: String,
    pub mosaic_user_id: String,
    pub linked_at: i64,
}

/// Why a link token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// No such token (mistyped, or never issued).
    Unknown,
    /// Issued, but its time ran out.
    Expired,
    /// Issued and already used once.
    AlreadyUsed,
}

pub async fn create_account(conn: &mut AnyConnection, name: &str, display_name: Option<&str>) -> Result<Account> {
    let account = Account {
        id: Uuid::new_v4().to_string(),
        name: name.to_string(),
        display_name: display_name.map(str::to_string),
        created_at: now_ms(),
    };
    sqlx::query("INSERT INTO accounts (id, name, display_name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&account.id)
        .bind(&account.name)
        .bind(&account.display_name)
        .bind(account.created_at)
        .execute(&mut *conn)
        .await?;
    Ok(account)
}

pub async fn account_by_name(conn: &mut AnyConnection, name: &str) -> Result<Option<Account>> {
    Ok(sqlx::query_as("SELECT id, name, display_name, created_at FROM accounts WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?)
}

pub async fn account_by_id(conn: &mut AnyConnection, id: &str) -> Result<Option<Account>> {
    Ok(sqlx::query_as("SELECT id, name, display_name, created_at FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?)
}

/// The account a channel identity is linked to (the adapter's `map_identity`).
pub async fn account_for_identity(
    conn: &mut AnyConnection,
    channel: &str,
    channel_user_id: &str,
) -> Result<Option<Account>> {
    Ok(sqlx::query_as(
        "SELECT a.id, a.name, a.display_name, a.created_at FROM accounts a
         JOIN channel_identities i ON i.mosaic_user_id = a.id
         WHERE i.channel_name = $1 AND i.channel_user_id = $2",
    )
    .bind(channel)
    .bind(channel_user_id)
    .fetch_optional(&mut *conn)
    .await?)
}

pub async fn identities_of(conn: &mut AnyConnection, account_id: &str) -> Result<Vec<Identity>> {
    Ok(sqlx::query_as(
        "SELECT channel_name, channel_user_id, mosaic_user_id, linked_at FROM channel_identities
         WHERE mosaic_user_id = $1 ORDER BY channel_name, channel_user_id",
    )
    .bind(account_id)
    .fetch_all(&mut *conn)
    .await?)
}

/// Links (or re-links) a channel identity to an account.
pub async fn link_identity(
    conn: &mut AnyConnection,
    channel: &str,
    channel_user_id: &str,
    account_id: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO channel_identities (channel_name, channel_user_id, mosaic_user_id, linked_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (channel_name, channel_user_id) DO UPDATE SET mosaic_user_id = excluded.mosaic_user_id, linked_at = excluded.linked_at",
    )
    .bind(channel)
    .bind(channel_user_id)
    .bind(account_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes a link; true when there was one.
pub async fn unlink_identity(conn: &mut AnyConnection, channel: &str, channel_user_id: &str) -> Result<bool> {
    let done = sqlx::query("DELETE FROM channel_identities WHERE channel_name = $1 AND channel_user_id = $2")
        .bind(channel)
        .bind(channel_user_id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Issues a single-use token for `account_id`, valid for `ttl_secs`. Returns the token in
/// clear; only its hash is stored.
pub async fn issue_link_token(conn: &mut AnyConnection, account_id: &str, ttl_secs: u64) -> Result<String> {
    let token = secrets::new_link_token();
    store_link_token(conn, &token, account_id, ttl_secs).await?;
    Ok(token)
}

/// Stores the hash of a token made elsewhere (see [`secrets::derived_token`]).
pub async fn store_link_token(conn: &mut AnyConnection, token: &str, account_id: &str, ttl_secs: u64) -> Result<()> {
    let now = now_ms();
    sqlx::query("INSERT INTO link_tokens (token_hash, account_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(secrets::hash_token(token))
        .bind(account_id)
        .bind(now)
        .bind(now + (ttl_secs as i64) * 1000)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Consumes the token whose hash is `token_hash` (see [`secrets::token_lookup_hash`]): on
/// success returns the account it was issued for and marks it used.
pub async fn redeem_link_token(
    conn: &mut AnyConnection,
    token_hash: &str,
    used_by: &str,
) -> Result<Result<Account, TokenRejection>> {
    let now = now_ms();
    let claimed: Option<(String,)> = sqlx::query_as(
        "UPDATE link_tokens SET used_at = $1, used_by = $2
         WHERE token_hash = $3 AND used_at IS NULL AND expires_at > $4 RETURNING account_id",
    )
    .bind(now)
    .bind(used_by)
    .bind(token_hash)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((account_id,)) = claimed {
        return match account_by_id(conn, &account_id).await? {
            Some(account) => Ok(Ok(account)),
            None => Ok(Err(TokenRejection::Unknown)),
        };
    }
    let known: Option<(Option<i64>, i64)> =
        sqlx::query_as("SELECT used_at, expires_at FROM link_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(Err(match known {
        None => TokenRejection::Unknown,
        Some((Some(_), _)) => TokenRejection::AlreadyUsed,
        Some((None, _)) => TokenRejection::Expired,
    }))
}

/// Marks an unused token used without linking anything: it was seen in a chat and must
/// not work later. True when there was such a token.
pub async fn burn_link_token(conn: &mut AnyConnection, token_hash: &str, used_by: &str) -> Result<bool> {
    let burnt =
        sqlx::query("UPDATE link_tokens SET used_at = $1, used_by = $2 WHERE token_hash = $3 AND used_at IS NULL")
            .bind(now_ms())
            .bind(used_by)
            .bind(token_hash)
            .execute(&mut *conn)
            .await?;
    Ok(burnt.rows_affected() > 0)
}

pub async fn record_link_failure(conn: &mut AnyConnection, sender: &str) -> Result<()> {
    sqlx::query("INSERT INTO link_failures (sender, attempted_at) VALUES ($1, $2)")
        .bind(sender)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Failed attempts by `sender` since `since_ms`, and the oldest of them.
pub async fn link_failures_since(conn: &mut AnyConnection, sender: &str, since_ms: i64) -> Result<(i64, Option<i64>)> {
    let (count, oldest): (i64, Option<i64>) =
        sqlx::query_as("SELECT COUNT(*), MIN(attempted_at) FROM link_failures WHERE sender = $1 AND attempted_at > $2")
            .bind(sender)
            .bind(since_ms)
            .fetch_one(&mut *conn)
            .await?;
    Ok((count, oldest))
}

pub async fn list_accounts(conn: &mut AnyConnection) -> Result<Vec<Account>> {
    Ok(sqlx::query_as("SELECT id, name, display_name, created_at FROM accounts ORDER BY name")
        .fetch_all(&mut *conn)
        .await?)
}

/// Deletes an account with its identities and tokens; false when there is none.
pub async fn delete_account(conn: &mut AnyConnection, name: &str) -> Result<bool> {
    let Some(account) = account_by_name(conn, name).await? else {
        return Ok(false);
    };
    // Explicit deletes: foreign keys may be off on an SQLite database opened elsewhere.
    for sql in [
        "DELETE FROM channel_identities WHERE mosaic_user_id = $1",
        "DELETE FROM link_tokens WHERE account_id = $1",
        "UPDATE conversations SET owner_account_id = NULL WHERE owner_account_id = $1",
        "DELETE FROM accounts WHERE id = $1",
    ] {
        sqlx::query(sql).bind(&account.id).execute(&mut *conn).await?;
    }
    Ok(true)
}
