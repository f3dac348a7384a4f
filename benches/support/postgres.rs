//! PostgreSQL for the benches that measure it too (`#[path = "support/postgres.rs"] mod
//! postgres;`): a server from `MOSAIC_BENCH_POSTGRES_URL` or `scripts/postgres.sh ensure`,
//! and a fresh database per run, dropped afterwards.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// `MOSAIC_BENCH_POSTGRES_URL`, or the last stdout line of `scripts/postgres.sh ensure`.
pub fn base_url() -> anyhow::Result<String> {
    if let Some(url) = std::env::var("MOSAIC_BENCH_POSTGRES_URL").ok().filter(|u| !u.is_empty()) {
        return Ok(url);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("ensure")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !output.status.success() {
        bail!("{} ensure exited with {}", script.display(), output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
        .context("scripts/postgres.sh ensure printed no URL")
}

/// A fresh `mosaic_bench_<random>` database on the server at `base_url`.
pub struct FreshDatabase {
    admin: PgConnection,
    name: String,
    /// The database's URL.
    pub url: String,
}

impl FreshDatabase {
    /// Connects to the server at `base_url` and creates the database. The error of a
    /// failed connection starts with "cannot connect".
    pub async fn create(base_url: &str) -> anyhow::Result<Self> {
        let name = format!("mosaic_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(base_url).await.context("cannot connect")?;
        admin_sql(&mut admin, &format!("CREATE DATABASE {name}")).await?;
        let mut url = url::Url::parse(base_url).context("bad PostgreSQL URL")?;
        url.set_path(&format!("/{name}"));
        Ok(Self { admin, name, url: url.to_string() })
    }

    /// The process ids of the server's backends connected to this database now.
    // Only the capacity bench measures the backends.
    #[allow(dead_code)]
    pub async fn backend_pids(&mut self) -> anyhow::Result<Vec<u32>> {
        let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
            .bind(&self.name)
            .fetch_all(&mut self.admin)
            .await
            .context("postgres: pg_stat_activity")?;
        Ok(pids.into_iter().filter_map(|pid| u32::try_from(pid).ok()).collect())
    }

    /// Drops the database; its users must have stopped.
    pub async fn drop(mut self) -> anyhow::Result<()> {
        // FORCE (PostgreSQL 13+) only covers stray connections.
        let name = &self.name;
        let dropped = match admin_sql(&mut self.admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await {
            Ok(()) => Ok(()),
            Err(_) => admin_sql(&mut self.admin, &format!("DROP DATABASE IF EXISTS {name}")).await,
        };
        let _ = self.admin.close().await;
        dropped
    }
}

async fn admin_sql(conn: &mut PgConnection, sql: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(&mut *conn)
        .await
        .with_context(|| format!("postgres: {sql}"))?;
    Ok(())
}
