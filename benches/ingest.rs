//! Ingest benchmark: how fast `mosaic-as serve` acknowledges homeserver transactions.
//!
//! It starts the real binary (`init` into a temporary directory, then `serve` on a free
//! 127.0.0.1 port) with `homeserver.url` pointing at a closed loopback port, so no
//! homeserver is needed: transactions are still stored durably in the inbox and answered,
//! while processing of their events waits for the homeserver. It then pushes
//! `PUT /_matrix/app/v1/transactions/{txnId}` requests of 100 `m.room.message` events each
//! over loopback HTTP:
//!
//! - sequentially, one transaction at a time as a homeserver does (after a warm-up);
//! - with several concurrent pushers, to show the headroom beyond one homeserver.
//!
//! For SQLite and then PostgreSQL it prints acknowledged events/s, transactions/s and the
//! p50/p99 acknowledgement latency. PostgreSQL comes from `MOSAIC_BENCH_POSTGRES_URL`, or
//! else from `scripts/postgres.sh ensure`; each run gets a fresh `mosaic_bench_<random>`
//! database that is dropped afterwards. Without PostgreSQL only SQLite is measured.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench ingest
//! MOSAIC_BENCH_POSTGRES_URL=postgres://user:pass@127.0.0.1:5432/db cargo bench --bench ingest
//! ```
//!
//! Figures depend heavily on the machine and its disk (every transaction is committed
//! with an fsync); compare runs on the same box only.

#[path = "support/postgres.rs"]
mod postgres;
#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use postgres::FreshDatabase;
use serde_json::json;
use support::{Server, event_id, free_loopback_addr, http_client, millis, now_ms, percentile};

const EVENTS_PER_TXN: usize = 100;
const WARMUP_TXNS: usize = 10;
const MEASURED_TXNS: usize = 200;
const CONCURRENT_PUSHERS: usize = 4;
/// A phase stops pushing once it has run this long, and reports what it measured.
const PHASE_BUDGET: Duration = Duration::from_secs(120);
const SERVER_NAME: &str = "bench.localhost";
const ROOMS: usize = 8;
const SENDERS: usize = 25;

fn main() -> ExitCode {
    support::run_main("ingest", run())
}

async fn run() -> anyhow::Result<()> {
    println!(
        "mosaic-as ingest: {EVENTS_PER_TXN} m.room.message events per transaction, \
         {WARMUP_TXNS} warm-up + {MEASURED_TXNS} measured transactions per phase, loopback HTTP"
    );
    bench_database("sqlite", "sqlite://mosaic-as.db").await?;
    match postgres::base_url() {
        Ok(base_url) => bench_postgres(&base_url).await?,
        Err(error) => println!("postgres: unavailable, skipped ({error:#})"),
    }
    Ok(())
}

/// Runs both phases against one database URL and prints their figures.
async fn bench_database(label: &str, database_url: &str) -> anyhow::Result<()> {
    let client = http_client()?;
    // Bound and released at once: nothing listens there, so the homeserver is down.
    let homeserver_url = format!("http://{}", free_loopback_addr()?);
    let mut server = Server::start(
        &["--server-name", SERVER_NAME, "--homeserver-url", &homeserver_url, "--database-url", database_url],
        None,
    )?;
    let result = async {
        server.wait_until_ok(&client, "/health").await?;
        let pusher = Pusher::new(&client, &server);
        pusher.sequential(WARMUP_TXNS, "warmup").await?;
        let sequential = pusher.sequential(MEASURED_TXNS, "seq").await?;
        print_figures(label, "sequential", &sequential);
        let concurrent = pusher.concurrent(MEASURED_TXNS, CONCURRENT_PUSHERS, "conc").await?;
        print_figures(label, &format!("{CONCURRENT_PUSHERS} concurrent"), &concurrent);
        anyhow::Ok(())
    }
    .await;
    let stopped = server.stop();
    if result.is_err() {
        server.print_log_tail();
    }
    result.and(stopped)
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

/// Benchmarks PostgreSQL in a fresh database, dropped afterwards.
async fn bench_postgres(base_url: &str) -> anyhow::Result<()> {
    let database = match FreshDatabase::create(base_url).await {
        Ok(database) => database,
        Err(error) => {
            println!("postgres: unavailable, skipped ({error:#})");
            return Ok(());
        }
    };
    let result = bench_database("postgres", &database.url).await;
    result.and(database.drop().await)
}

// ---------------------------------------------------------------------------------------
// Pushing transactions

/// What one phase measured.
struct Figures {
    transactions: usize,
    elapsed: Duration,
    /// Per-transaction acknowledgement latencies, sorted.
    latencies: Vec<Duration>,
    stopped_early: bool,
}

/// Pushes transactions at one server, as its homeserver would.
#[derive(Clone)]
struct Pusher {
    client: reqwest::Client,
    transactions_url: String,
    authorization: String,
    /// Unique per server, so event and transaction ids never repeat.
    run_id: String,
}

impl Pusher {
    fn new(client: &reqwest::Client, server: &Server) -> Self {
        Self {
            client: client.clone(),
            transactions_url: format!("{}/_matrix/app/v1/transactions", server.base_url),
            authorization: format!("Bearer {}", server.hs_token),
            run_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        }
    }

    /// `count` transactions, one at a time.
    async fn sequential(&self, count: usize, phase: &str) -> anyhow::Result<Figures> {
        self.concurrent(count, 1, phase).await
    }

    /// `count` transactions shared out over `pushers` concurrent senders.
    async fn concurrent(&self, count: usize, pushers: usize, phase: &str) -> anyhow::Result<Figures> {
        let bodies: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
            (0..count)
                .map(|n| {
                    let txn_id = format!("bench-{}-{phase}-{n}", self.run_id);
                    let body = transaction_body(&txn_id);
                    (txn_id, body)
                })
                .collect(),
        );
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let deadline = start + PHASE_BUDGET;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..pushers {
            let (pusher, bodies, next) = (self.clone(), bodies.clone(), next.clone());
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let Some((txn_id, body)) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    latencies.push(pusher.push(txn_id, body.clone()).await?);
                }
                anyhow::Ok(latencies)
            });
        }
        let mut latencies = Vec::with_capacity(count);
        while let Some(joined) = tasks.join_next().await {
            latencies.extend(joined??);
        }
        let elapsed = start.elapsed();
        latencies.sort();
        Ok(Figures { transactions: latencies.len(), elapsed, stopped_early: latencies.len() < count, latencies })
    }

    /// One `PUT`, timed until the 200 answer has been read.
    async fn push(&self, txn_id: &str, body: Vec<u8>) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let response = self
            .client
            .put(format!("{}/{txn_id}", self.transactions_url))
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("transaction {txn_id}"))?;
        let status = response.status();
        let answer = response.bytes().await?;
        let latency = start.elapsed();
        if !status.is_success() {
            bail!("transaction {txn_id} answered {status}: {}", String::from_utf8_lossy(&answer));
        }
        Ok(latency)
    }
}

/// A transaction body of `EVENTS_PER_TXN` client-format `m.room.message` events.
fn transaction_body(txn_id: &str) -> Vec<u8> {
    let now_ms = now_ms();
    let events: Vec<_> = (0..EVENTS_PER_TXN)
        .map(|i| {
            let age = 50 + (i as u64 * 7) % 900;
            json!({
                "type": "m.room.message",
                "room_id": format!("!benchroom{}:{SERVER_NAME}", i % ROOMS),
                "sender": format!("@user{}:{SERVER_NAME}", (i * 7) % SENDERS),
                "event_id": event_id(),
                "origin_server_ts": now_ms - age,
                "content": {
                    "msgtype": "m.text",
                    "body": format!(
                        "Message {i} of {txn_id}: could you summarise the discussion above \
                         and list the open questions for tomorrow's meeting?"
                    ),
                },
                "unsigned": { "age": age },
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "events": events })).expect("JSON")
}

// ---------------------------------------------------------------------------------------
// Reporting

fn print_figures(database: &str, phase: &str, figures: &Figures) {
    let seconds = figures.elapsed.as_secs_f64().max(f64::EPSILON);
    let transactions_per_s = figures.transactions as f64 / seconds;
    println!(
        "{database:<9} {phase:<13} {:>8.0} events/s  {:>7.1} txn/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} txns in {:.2} s{})",
        transactions_per_s * EVENTS_PER_TXN as f64,
        transactions_per_s,
        millis(percentile(&figures.latencies, 50.0)),
        millis(percentile(&figures.latencies, 99.0)),
        figures.transactions,
        seconds,
        if figures.stopped_early { ", stopped at the time budget" } else { "" },
    );
}
