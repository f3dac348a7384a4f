//! Sealed secrets: values sealed with [`crate::secrets::seal`] under their name. This
//! module stores and returns the sealed text only; it never sees a secret in clear.

use sqlx::AnyConnection;

use super::{Result, now_ms};

/// One stored secret, still sealed.
#[derive(Clone, sqlx::FromRow)]
pub struct SealedSecret {
    pub name: String,
    pub sealed: String,
    /// Unix milliseconds of the last `put`.
    pub updated_at: i64,
}

// The sealed text is ciphertext, but it has no business in logs either.
impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret").field("name", &self.name).field("updated_at", &self.updated_at).finish()
    }
}

/// Stores `sealed` under `name`, replacing what was there.
pub async fn put(conn: &mut AnyConnection, name: &str, sealed: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO sealed_secrets (name, sealed, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(sealed)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The sealed value stored under `name`.
pub async fn get(conn: &mut AnyConnection, name: &str) -> Result<Option<SealedSecret>> {
    Ok(sqlx::query_as("SELECT name, sealed, updated_at FROM sealed_secrets WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?)
}

/// Every stored secret, by name.
pub async fn list(conn: &mut AnyConnection) -> Result<Vec<SealedSecret>> {
    Ok(sqlx::query_as("SELECT name, sealed, updated_at FROM sealed_secrets ORDER BY name")
        .fetch_all(&mut *conn)
        .await?)
}

/// Removes the secret `name`; false when there was none.
pub async fn delete(conn: &mut AnyConnection, name: &str) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM sealed_secrets WHERE name = $1").bind(name).execute(&mut *conn).await?.rows_affected()
        == 1)
}
