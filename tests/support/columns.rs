//! Where a value is kept in a SQLite database: for tests that prove a secret is not.

/// The `table.column`s where `needle` occurs (case-insensitively), in any table and any
/// column, read as text.
pub async fn holding(conn: &mut sqlx::AnyConnection, needle: &str) -> Vec<String> {
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'").fetch_all(&mut *conn).await.unwrap();
    let mut found = Vec::new();
    for table in tables {
        let columns: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT name FROM pragma_table_info('{table}')")))
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        for column in columns {
            let sql =
                format!("SELECT count(*) FROM \"{table}\" WHERE instr(lower(CAST(\"{column}\" AS TEXT)), $1) > 0");
            let hits: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(needle.to_lowercase())
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            if hits > 0 {
                found.push(format!("{table}.{column}"));
            }
        }
    }
    found
}
