//! Capacity benchmark: how many echoes per second a service sustains when the homeserver
//! is never the limit, and the CPU time each one costs; mosaic-as beside the
//! mautrix-python reference (`benches/reference/echo_appservice.py`).
//!
//! A fake homeserver runs in this process on loopback, one per service under test. It
//! answers what a service calls at start and when it joins (`whoami`, `register`, the
//! appservice ping, profiles, `join`, `joined_members`, room state, `/messages`,
//! capabilities, versions) and accepts every send at once. It pushes appservice
//! transactions (`PUT /_matrix/app/v1/transactions/{txnId}`, up to `EVENTS_PER_TXN`
//! events each, with the service's `hs_token`) as a homeserver does, one at a time, the
//! next as soon as the previous one is acknowledged, and pushes the membership of
//! whoever joins a room back to the service, as a homeserver would.
//!
//! Each service gets `ROOMS` rooms, each with one person (on the homeserver's own
//! server, so mosaic-as's default permissions let them talk) who invites the echoer
//! (`@mosaic_agent_echo`, or the reference's bot) into a direct chat. After one warm-up
//! echo per room, `MESSAGES` `m.room.message` events, spread over the rooms, are queued
//! for pushing at once. An echo counts when the fake has received the service's send
//! answering a pushed message (an `m.in_reply_to` of it). The bench prints:
//!
//! - echoes/s: messages ÷ the time from the first push to the last echo;
//! - CPU per echo: the service's utime + stime (`/proc/<pid>/stat`) over that time ÷
//!   echoes (this process's own CPU time, the fake's, is printed for scale; on
//!   PostgreSQL so is the CPU time of the server's backends serving mosaic-as, which
//!   CPU per echo does not include);
//! - the ratios of mosaic-as (SQLite, and PostgreSQL when there is one) to the reference.
//!
//! Then a paced phase: `PACED_MESSAGES` messages pushed at `PACED_RATE` per second, one per
//! transaction, as a homeserver pushes a conversation at a steady rate. It prints the
//! latency from the start of the push to the fake's receipt of the echo, p50 and p99:
//! the time spent inside the service plus two loopback requests. Last, the traffic that
//! needs no answer (below), and the service's resident memory (`VmRSS`) idle after the
//! warm-up and after that traffic has brought it `TRAFFIC`'s rooms and users.
//!
//! mosaic-as runs its real `serve` binary with a config from `init` (the `echo` agent, a
//! SQLite database in a temporary directory; PostgreSQL from `MOSAIC_BENCH_POSTGRES_URL`
//! or `scripts/postgres.sh ensure`, a fresh database dropped afterwards). The reference
//! runs in its virtualenv under `<target>/bench/reference-venv`, as in the homeserver
//! bench.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench capacity
//! cargo bench --bench capacity -- sqlite reference   # some of sqlite, postgres, reference
//! MOSAIC_BENCH_CAPACITY_MESSAGES=20000 cargo bench --bench capacity
//! MOSAIC_BENCH_BINARY=/tmp/mosaic-as-before cargo bench --bench capacity   # another build
//! ```
//!
//! The fake, the service and the benchmark share the machine's cores with whatever else
//! runs there: the figures are indicative; compare runs on the same box only.

#[allow(dead_code)] // Only the reference and /proc readers are used here.
#[path = "support/homeserver.rs"]
mod homeserver;
#[path = "support/postgres.rs"]
mod postgres;
#[path = "support/mod.rs"]
mod support;
#[path = "support/traffic.rs"]
mod traffic;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::serve::ListenerExt;
use homeserver::{ReferenceConfig, SERVER_NAME, bench_dir, cpu_time, own_rss_bytes, rss_bytes};
use postgres::FreshDatabase;
use serde_json::{Value, json};
use support::{Server, event_id, http_client, millis, now_ms, percentile};
use tokio::sync::Notify;
use traffic::{Traffic, push_all, reference_events, wait_for_mosaic_inbox, wait_for_reference};

/// Rooms per service, each with one person and the echoer.
const ROOMS: usize = 16;
/// Measured messages per service, unless `MOSAIC_BENCH_CAPACITY_MESSAGES` says otherwise.
const MESSAGES: usize = 5_000;
/// Synapse's largest appservice transaction.
const EVENTS_PER_TXN: usize = 100;
/// Longest wait for the service to join every room, and for each warm-up echo.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the service is left idle after the warm-up, to measure its idle CPU time.
const IDLE: Duration = Duration::from_secs(5);
/// Measuring stops once it has run this long, and reports what was echoed by then.
const MEASURE_BUDGET: Duration = Duration::from_secs(300);

const MOSAIC_ECHOER: &str = "mosaic_agent_echo";

/// Traffic that needs no answer, pushed after the echoes: 15,000 events.
const TRAFFIC: Traffic = Traffic { rooms: 1_000, members_per_room: 10, messages_per_room: 5 };
/// Longest wait for a service to process the traffic.
const TRAFFIC_BUDGET: Duration = Duration::from_secs(300);

/// Messages per second of the paced phase.
const PACED_RATE: u32 = 200;
/// Messages of the paced phase.
const PACED_MESSAGES: usize = 2_000;

fn main() -> ExitCode {
    support::run_main("capacity", run())
}

/// One service's figures.
struct Figures {
    echoes: usize,
    elapsed: Duration,
    cpu: Duration,
    bench_cpu: Duration,
    processing: Processing,
    paced: Paced,
    memory: Memory,
}

/// Latency of echoes at a steady rate.
#[derive(Default)]
struct Paced {
    p50: Duration,
    p99: Duration,
}

/// Resident memory in bytes.
#[derive(Default)]
struct Memory {
    idle: u64,
    after_traffic: u64,
    /// The part of `idle` that is the service's own, not mapped from files.
    idle_own: u64,
}

/// How a service took the traffic that needs no answer.
struct Processing {
    events: usize,
    elapsed: Duration,
    cpu: Duration,
}

impl Processing {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_event_us(&self) -> f64 {
        millis(self.cpu) * 1000.0 / self.events.max(1) as f64
    }
}

impl Figures {
    fn echoes_per_s(&self) -> f64 {
        self.echoes as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_echo_ms(&self) -> f64 {
        millis(self.cpu) / self.echoes.max(1) as f64
    }
}

async fn run() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; anything else names a service.
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    for name in &wanted {
        if !matches!(name.as_str(), "sqlite" | "postgres" | "reference") {
            bail!("unknown service {name:?}: sqlite, postgres or reference");
        }
    }
    let wanted = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let messages = match std::env::var("MOSAIC_BENCH_CAPACITY_MESSAGES") {
        Ok(n) => n.parse().context("MOSAIC_BENCH_CAPACITY_MESSAGES is not a number")?,
        Err(_) => MESSAGES,
    };
    println!(
        "capacity: fake homeserver on loopback, {ROOMS} rooms, {messages} m.room.message pushed in transactions of \
         up to {EVENTS_PER_TXN}, each as soon as the previous one is acknowledged; every send accepted at once"
    );
    let mut results: Vec<(&str, Figures)> = Vec::new();
    if wanted("sqlite") {
        results.push(("mosaic-as sqlite", bench_mosaic(None, messages).await?));
    }
    if wanted("reference") {
        results.push(("reference", bench_reference(messages).await?));
    }
    if wanted("postgres") {
        match postgres::base_url() {
            Ok(base_url) => match FreshDatabase::create(&base_url).await {
                Ok(mut database) => {
                    let figures = bench_mosaic(Some(&mut database), messages).await;
                    let dropped = database.drop().await;
                    results.push(("mosaic-as postgres", figures?));
                    dropped?;
                }
                Err(error) => println!("capacity postgres: unavailable, skipped ({error:#})"),
            },
            Err(error) => println!("capacity postgres: unavailable, skipped ({error:#})"),
        }
    }
    if let Some((_, reference)) = results.iter().find(|(label, _)| *label == "reference") {
        for (label, figures) in results.iter().filter(|(label, _)| label.starts_with("mosaic-as")) {
            println!(
                "capacity ratio {label} / reference: echoes/s x{:.2}, CPU per echo x{:.2}",
                figures.echoes_per_s() / reference.echoes_per_s(),
                figures.cpu_per_echo_ms() / reference.cpu_per_echo_ms(),
            );
            println!(
                "capacity ratio {label} / reference, traffic that needs no answer: events/s x{:.2}, CPU per event \
                 x{:.2}",
                figures.processing.events_per_s() / reference.processing.events_per_s(),
                figures.processing.cpu_per_event_us() / reference.processing.cpu_per_event_us(),
            );
            println!(
                "capacity ratio {label} / reference, at {PACED_RATE} echoes/s: latency p50 x{:.2}, p99 x{:.2}; memory \
                 idle x{:.2}, after the traffic x{:.2}",
                millis(figures.paced.p50) / millis(reference.paced.p50),
                millis(figures.paced.p99) / millis(reference.paced.p99),
                figures.memory.idle as f64 / reference.memory.idle as f64,
                figures.memory.after_traffic as f64 / reference.memory.after_traffic as f64,
            );
        }
    }
    Ok(())
}

/// mosaic-as `serve` with the `echo` agent, on SQLite or on the PostgreSQL `database`.
async fn bench_mosaic(mut database: Option<&mut FreshDatabase>, messages: usize) -> anyhow::Result<Figures> {
    let label = if database.is_some() { "mosaic-as postgres" } else { "mosaic-as sqlite" };
    let bot = format!("@mosaic-bot:{SERVER_NAME}");
    let echoer = format!("@{MOSAIC_ECHOER}:{SERVER_NAME}");
    let fake = FakeHomeserver::start(&bot, &echoer).await?;
    let mut init = vec!["--server-name", SERVER_NAME, "--homeserver-url", &fake.url];
    let database_url = database.as_ref().map(|d| d.url.clone());
    if let Some(url) = &database_url {
        init.extend(["--database-url", url]);
    }
    let mut server = Server::prepare(&init, None)?.serve()?;
    let result = async {
        server.wait_until_ok(&http_client()?, "/ready").await?;
        fake.push_to(&server.base_url, &server.hs_token);
        let mut figures = measure(label, &fake, server.pid(), database.as_deref_mut(), messages).await?;
        figures.paced = measure_paced(label, &fake).await?;
        figures.processing = process_traffic(label, &server.base_url, &server.hs_token, server.pid(), Drained::Mosaic)
            .await
            .with_context(|| format!("{label}: traffic that needs no answer"))?;
        figures.memory.after_traffic = report_memory(label, server.pid(), &figures.memory)?;
        anyhow::Ok(figures)
    }
    .await;
    let stopped = server.stop();
    if result.is_err() {
        server.print_log_tail();
    }
    fake.print_requests(label);
    let figures = result?;
    stopped?;
    Ok(figures)
}

/// The mautrix-python reference.
async fn bench_reference(messages: usize) -> anyhow::Result<Figures> {
    let dir = bench_dir("capacity")?;
    let config = ReferenceConfig::write(&dir.join("reference"))?;
    let fake = FakeHomeserver::start(&config.bot, &config.bot).await?;
    let mut reference = config.start(&fake.url).await?;
    fake.push_to(&config.base_url, &config.hs_token);
    let result = async {
        let mut figures = measure("reference", &fake, reference.pid(), None, messages).await?;
        figures.paced = measure_paced("reference", &fake).await?;
        figures.processing =
            process_traffic("reference", &config.base_url, &config.hs_token, reference.pid(), Drained::Reference)
                .await
                .context("reference: traffic that needs no answer")?;
        figures.memory.after_traffic = report_memory("reference", reference.pid(), &figures.memory)?;
        anyhow::Ok(figures)
    }
    .await;
    reference.stop();
    if result.is_err() {
        reference.print_log_tail();
    }
    fake.print_requests("reference");
    result
}

/// Sets up the rooms, warms up, then pushes `messages` messages and waits for their echoes.
/// With a `database`, the CPU time of its PostgreSQL backends is measured too.
async fn measure(
    label: &str,
    fake: &FakeHomeserver,
    pid: u32,
    database: Option<&mut FreshDatabase>,
    messages: usize,
) -> anyhow::Result<Figures> {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let rooms: Vec<(String, String)> = (0..ROOMS)
        .map(|r| (format!("!capacity{r}-{run}:{SERVER_NAME}"), format!("@person{r}:{SERVER_NAME}")))
        .collect();
    for (room, person) in &rooms {
        fake.open_room(room, person);
    }
    fake.wait_for_joins(ROOMS, SETUP_TIMEOUT).await.with_context(|| format!("{label}: joining the rooms"))?;
    // Warm-up: one echo in each room, which also shows that the service answers everywhere.
    let warm_up: Vec<Value> =
        rooms.iter().enumerate().map(|(n, (room, person))| message(room, person, &format!("warm-up {n}"))).collect();
    fake.push_messages(warm_up);
    fake.wait_for_echoes(SETUP_TIMEOUT).await.with_context(|| format!("{label}: warm-up echoes"))?;
    // Idle: what the service spends when nothing happens (timers, polling).
    let idle_before = cpu_time(pid)?;
    tokio::time::sleep(IDLE).await;
    let idle = cpu_time(pid)?.saturating_sub(idle_before);
    let idle_memory = rss_bytes(pid)?;
    let idle_own_memory = own_rss_bytes(pid)?;

    let batch: Vec<Value> = (0..messages)
        .map(|n| {
            let (room, person) = &rooms[n % ROOMS];
            message(room, person, &format!("message {n}: how many of these can you answer in a second?"))
        })
        .collect();
    // The service's connections are open after the warm-up; one opened later is missed.
    let backends = match database {
        Some(database) => database.backend_pids().await?,
        None => Vec::new(),
    };
    let backends_cpu = || backends.iter().filter_map(|&pid| cpu_time(pid).ok()).sum::<Duration>();
    let backends_before = backends_cpu();
    let cpu_before = cpu_time(pid)?;
    let bench_cpu_before = cpu_time(std::process::id())?;
    let start = Instant::now();
    fake.push_messages(batch);
    let complete = fake.wait_for_echoes(MEASURE_BUDGET).await;
    let elapsed = start.elapsed();
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    let bench_cpu = cpu_time(std::process::id())?.saturating_sub(bench_cpu_before);
    let backends_used = backends_cpu().saturating_sub(backends_before);
    let counts = fake.counts();
    let echoes = messages - counts.awaited;
    if complete.is_err() {
        println!("({label}: stopped at the {MEASURE_BUDGET:?} time budget with {echoes} of {messages} echoed)");
    }
    let processing = Processing { events: 0, elapsed: Duration::ZERO, cpu: Duration::ZERO };
    let memory = Memory { idle: idle_memory, after_traffic: 0, idle_own: idle_own_memory };
    let figures = Figures { echoes, elapsed, cpu, bench_cpu, processing, paced: Paced::default(), memory };
    println!(
        "capacity {label:<19} {:>8.1} echoes/s  CPU per echo {:>6.3} ms  ({echoes} echoes in {:.2} s, pushed in {} \
         transactions; CPU {:.2} s; the bench with its fake homeserver {:.3} ms per echo{}{}; idle before: \
         {:.1} ms CPU per s)",
        figures.echoes_per_s(),
        figures.cpu_per_echo_ms(),
        elapsed.as_secs_f64(),
        counts.transactions,
        cpu.as_secs_f64(),
        millis(figures.bench_cpu) / echoes.max(1) as f64,
        if backends.is_empty() {
            String::new()
        } else {
            format!(
                "; PostgreSQL's {} backends {:.3} ms per echo, not counted above",
                backends.len(),
                millis(backends_used) / echoes.max(1) as f64
            )
        },
        if counts.doubles > 0 { format!("; {} echoed twice", counts.doubles) } else { String::new() },
        millis(idle) / IDLE.as_secs_f64(),
    );
    Ok(figures)
}

/// Pushes [`PACED_MESSAGES`] messages at [`PACED_RATE`] per second over the rooms, one
/// per transaction, and prints the latency of their echoes.
async fn measure_paced(label: &str, fake: &FakeHomeserver) -> anyhow::Result<Paced> {
    let rooms = fake.rooms_with_person();
    anyhow::ensure!(!rooms.is_empty(), "{label}: no rooms to pace messages in");
    fake.shared.rooms.lock().expect("rooms").latencies.clear();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / PACED_RATE);
    for n in 0..PACED_MESSAGES {
        ticks.tick().await;
        let (room, person) = &rooms[n % rooms.len()];
        fake.push_messages(vec![message(room, person, &format!("paced {n}: still there?"))]);
    }
    fake.wait_for_echoes(SETUP_TIMEOUT).await.with_context(|| format!("{label}: paced echoes"))?;
    let mut latencies = std::mem::take(&mut fake.shared.rooms.lock().expect("rooms").latencies);
    latencies.sort();
    let paced = Paced { p50: percentile(&latencies, 50.0), p99: percentile(&latencies, 99.0) };
    println!(
        "capacity paced {label:<23} p50 {:>6.2} ms  p99 {:>6.2} ms  ({} echoes at {PACED_RATE}/s, from the push of \
         each message to the fake's receipt of its echo)",
        millis(paced.p50),
        millis(paced.p99),
        latencies.len(),
    );
    Ok(paced)
}

/// Prints the service's resident memory idle and now, and returns it now. Beside each
/// is the part that is the service's own: the rest is pages of files it maps, its code
/// above all.
fn report_memory(label: &str, pid: u32, measured: &Memory) -> anyhow::Result<u64> {
    let now = rss_bytes(pid)?;
    let own = own_rss_bytes(pid)?;
    let mb = |bytes: u64| bytes as f64 / 1_048_576.0;
    println!(
        "capacity memory {label:<22} idle {:>6.1} MB  after the traffic {:>6.1} MB  (resident; its own, not mapped \
         from files: {:.1} and {:.1} MB; the traffic brought {} rooms and {} users)",
        mb(measured.idle),
        mb(now),
        mb(measured.idle_own),
        mb(own),
        TRAFFIC.rooms,
        TRAFFIC.users(),
    );
    Ok(now)
}

/// How to tell that a service has processed everything pushed to it.
#[derive(Clone, Copy)]
enum Drained {
    /// mosaic-as's `/metrics` shows an empty inbox.
    Mosaic,
    /// The reference's `/bench/stats` counted every event.
    Reference,
}

impl Drained {
    /// Half the people who join are ghosts of the service's own namespace.
    fn ghost_prefix(self) -> &'static str {
        match self {
            Self::Mosaic => "mosaic_ghost_",
            Self::Reference => "refecho_ghost_",
        }
    }
}

/// Pushes [`TRAFFIC`] straight to the service, then waits until it has processed all of
/// it: people joining rooms and talking where no agent listens, which a service must
/// keep up with without answering.
async fn process_traffic(
    label: &str,
    base_url: &str,
    hs_token: &str,
    pid: u32,
    drained: Drained,
) -> anyhow::Result<Processing> {
    let client = http_client()?;
    let events = TRAFFIC.synthetic_events(SERVER_NAME, drained.ghost_prefix());
    let before = match drained {
        Drained::Mosaic => 0,
        Drained::Reference => reference_events(&client, base_url).await?,
    };
    let cpu_before = cpu_time(pid)?;
    let start = Instant::now();
    push_all(&client, base_url, hs_token, &events, EVENTS_PER_TXN).await?;
    let pushed = start.elapsed();
    match drained {
        Drained::Mosaic => wait_for_mosaic_inbox(&client, base_url, TRAFFIC_BUDGET).await?,
        Drained::Reference => wait_for_reference(&client, base_url, before, events.len(), TRAFFIC_BUDGET).await?,
    }
    let processing = Processing { events: events.len(), elapsed: start.elapsed(), cpu: cpu_time(pid)? - cpu_before };
    println!(
        "capacity processing {label:<19} {:>8.0} events/s  CPU per event {:>6.1} us  ({} events of {} rooms and \
         {} users that need no answer: pushed in {:.2} s, processed in {:.2} s)",
        processing.events_per_s(),
        processing.cpu_per_event_us(),
        processing.events,
        TRAFFIC.rooms,
        TRAFFIC.users(),
        pushed.as_secs_f64(),
        processing.elapsed.as_secs_f64(),
    );
    Ok(processing)
}

fn message(room: &str, sender: &str, body: &str) -> Value {
    json!({
        "type": "m.room.message",
        "room_id": room,
        "sender": sender,
        "event_id": event_id(),
        "origin_server_ts": now_ms(),
        "content": {"msgtype": "m.text", "body": body},
        "unsigned": {"age": 1},
    })
}

fn state_event(room: &str, sender: &str, event_type: &str, state_key: &str, content: Value) -> Value {
    json!({
        "type": event_type,
        "room_id": room,
        "sender": sender,
        "state_key": state_key,
        "event_id": event_id(),
        "origin_server_ts": now_ms(),
        "content": content,
        "unsigned": {"age": 1},
    })
}

fn power_levels(person: &str) -> Value {
    json!({
        "users": {person: 100},
        "users_default": 0,
        "events_default": 0,
        "state_default": 50,
        "ban": 50, "kick": 50, "redact": 50, "invite": 0,
        "events": {},
    })
}

// ---------------------------------------------------------------------------------------
// The fake homeserver

/// Where transactions go.
struct Target {
    base_url: String,
    hs_token: String,
}

/// What the fake knows and counts.
#[derive(Default)]
struct Rooms {
    /// Per room: its person, and who has joined (the person first).
    members: HashMap<String, Vec<String>>,
    /// Events waiting to be pushed, in order.
    queue: VecDeque<Value>,
    /// Pushed messages whose echo has not arrived yet.
    awaited: HashSet<String>,
    /// Messages echoed, to notice an echo sent twice.
    echoed: HashSet<String>,
    /// When the push of each awaited message started.
    pushed_at: HashMap<String, Instant>,
    /// From push to echo, for each message echoed since they were last taken.
    latencies: Vec<Duration>,
    joins: usize,
    doubles: usize,
    transactions: usize,
    /// Requests served, by method and route.
    served: BTreeMap<String, usize>,
    /// Requests the fake does not serve, by method and path shape.
    unknown: BTreeMap<String, usize>,
}

struct Counts {
    awaited: usize,
    doubles: usize,
    transactions: usize,
}

struct Shared {
    /// `whoami` answers this (the registration's `sender_localpart`).
    bot: String,
    /// The user whose replies count as echoes.
    echoer: String,
    target: OnceLock<Target>,
    rooms: Mutex<Rooms>,
    /// Something was queued for pushing.
    queued: Notify,
    /// An echo or a join arrived.
    progress: Notify,
    next_event: AtomicU64,
}

#[derive(Clone)]
struct FakeHomeserver {
    url: String,
    shared: Arc<Shared>,
}

impl FakeHomeserver {
    async fn start(bot: &str, echoer: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let shared = Arc::new(Shared {
            bot: bot.to_string(),
            echoer: echoer.to_string(),
            target: OnceLock::new(),
            rooms: Mutex::default(),
            queued: Notify::new(),
            progress: Notify::new(),
            next_event: AtomicU64::new(1),
        });
        let c = "/_matrix/client/v3";
        let app = Router::new()
            .route("/_matrix/client/versions", get(hs_versions))
            .route(&format!("{c}/register"), post(hs_register))
            .route(&format!("{c}/account/whoami"), get(hs_whoami))
            .route("/_matrix/client/v1/appservice/{id}/ping", post(|| async { ok(json!({ "duration_ms": 1 })) }))
            .route(&format!("{c}/profile/{{user}}"), get(hs_profile))
            .route(&format!("{c}/profile/{{user}}/{{field}}"), get(hs_profile_field).put(|| async { ok(json!({})) }))
            .route(&format!("{c}/join/{{room}}"), post(hs_join))
            .route(&format!("{c}/rooms/{{room}}/join"), post(hs_join))
            .route(&format!("{c}/rooms/{{room}}/joined_members"), get(hs_joined_members))
            .route(&format!("{c}/rooms/{{room}}/state/{{event_type}}"), get(hs_state))
            .route(&format!("{c}/rooms/{{room}}/state/{{event_type}}/"), get(hs_state))
            .route(&format!("{c}/rooms/{{room}}/state/{{event_type}}/{{key}}"), get(hs_state_key))
            .route(&format!("{c}/rooms/{{room}}/messages"), get(|| async { ok(json!({ "chunk": [], "start": "s0" })) }))
            .route(&format!("{c}/capabilities"), get(hs_capabilities))
            .route(&format!("{c}/rooms/{{room}}/send/{{event_type}}/{{txn}}"), put(hs_send))
            .route_layer(axum::middleware::from_fn_with_state(shared.clone(), count_request))
            .fallback(hs_unknown)
            .with_state(shared.clone());
        let url = format!("http://{}", listener.local_addr()?);
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url, shared })
    }

    /// Starts pushing queued events to the service at `base_url`.
    fn push_to(&self, base_url: &str, hs_token: &str) {
        let target = Target { base_url: base_url.to_string(), hs_token: hs_token.to_string() };
        if self.shared.target.set(target).is_err() {
            return;
        }
        tokio::spawn(push_loop(self.shared.clone()));
    }

    /// A room with `person` in it, who invites the echoer.
    fn open_room(&self, room: &str, person: &str) {
        let echoer = &self.shared.echoer;
        let create = json!({"room_version": "10", "creator": person});
        let events = vec![
            state_event(room, person, "m.room.create", "", create),
            state_event(
                room,
                person,
                "m.room.member",
                person,
                json!({"membership": "join", "displayname": "A person"}),
            ),
            state_event(room, person, "m.room.power_levels", "", power_levels(person)),
            state_event(room, person, "m.room.member", echoer, json!({"membership": "invite", "is_direct": true})),
        ];
        let mut rooms = self.shared.rooms.lock().expect("rooms");
        rooms.members.insert(room.to_string(), vec![person.to_string()]);
        rooms.queue.extend(events);
        drop(rooms);
        self.shared.queued.notify_one();
    }

    /// Queues `messages` for pushing and awaits an echo of each.
    fn push_messages(&self, messages: Vec<Value>) {
        let mut rooms = self.shared.rooms.lock().expect("rooms");
        for message in &messages {
            rooms.awaited.insert(message["event_id"].as_str().unwrap_or_default().to_string());
        }
        rooms.queue.extend(messages);
        drop(rooms);
        self.shared.queued.notify_one();
    }

    async fn wait_for_joins(&self, joins: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until(timeout, |rooms| rooms.joins >= joins, |rooms| format!("{} of {joins} joins", rooms.joins))
            .await
    }

    async fn wait_for_echoes(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until(
            timeout,
            |rooms| rooms.awaited.is_empty(),
            |rooms| format!("{} not echoed", rooms.awaited.len()),
        )
        .await
    }

    async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&Rooms) -> bool,
        describe: impl Fn(&Rooms) -> String,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let progress = self.shared.progress.notified();
            {
                let rooms = self.shared.rooms.lock().expect("rooms");
                if done(&rooms) {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!("{} after {timeout:?}", describe(&rooms));
                }
            }
            // Woken by progress, or every 100 ms to check the deadline.
            let _ = tokio::time::timeout(Duration::from_millis(100), progress).await;
        }
    }

    /// Each room that has a person in it, with that person.
    fn rooms_with_person(&self) -> Vec<(String, String)> {
        let rooms = self.shared.rooms.lock().expect("rooms");
        let mut all: Vec<(String, String)> =
            rooms.members.iter().filter_map(|(room, people)| Some((room.clone(), people.first()?.clone()))).collect();
        all.sort();
        all
    }

    fn counts(&self) -> Counts {
        let rooms = self.shared.rooms.lock().expect("rooms");
        Counts { awaited: rooms.awaited.len(), doubles: rooms.doubles, transactions: rooms.transactions }
    }

    /// Prints what the service asked of the fake (besides sends), and what the fake
    /// did not serve.
    fn print_requests(&self, label: &str) {
        let rooms = self.shared.rooms.lock().expect("rooms");
        let served: Vec<String> = rooms.served.iter().map(|(route, count)| format!("{route} {count}")).collect();
        println!("capacity {label}: requests served by the fake homeserver: {}", served.join(", "));
        for (request, count) in &rooms.unknown {
            println!("capacity {label}: the fake homeserver did not serve {request} ({count} times)");
        }
    }
}

/// Pushes queued events, up to `EVENTS_PER_TXN` per transaction, the next one as soon as
/// the previous one is acknowledged; a failed transaction is tried again.
async fn push_loop(shared: Arc<Shared>) {
    let Some(target) = shared.target.get() else { return };
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().expect("client");
    let mut txn = 0u64;
    loop {
        let queued = shared.queued.notified();
        let events: Vec<Value> = {
            let mut rooms = shared.rooms.lock().expect("rooms");
            let take = rooms.queue.len().min(EVENTS_PER_TXN);
            let events: Vec<Value> = rooms.queue.drain(..take).collect();
            let now = Instant::now();
            for event in &events {
                if let Some(id) = event["event_id"].as_str().filter(|id| rooms.awaited.contains(*id)) {
                    rooms.pushed_at.entry(id.to_string()).or_insert(now);
                }
            }
            events
        };
        if events.is_empty() {
            queued.await;
            continue;
        }
        txn += 1;
        let body = serde_json::to_vec(&json!({ "events": events })).expect("JSON");
        let url = format!("{}/_matrix/app/v1/transactions/capacity-{txn}", target.base_url);
        loop {
            let sent = client
                .put(&url)
                .bearer_auth(&target.hs_token)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => break,
                Ok(response) => eprintln!("fake homeserver: transaction {txn} answered {}", response.status()),
                Err(error) => eprintln!("fake homeserver: transaction {txn} failed: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        shared.rooms.lock().expect("rooms").transactions += 1;
    }
}

/// Counts the request by its route, `/_matrix/client/v3` left out.
async fn count_request(
    State(shared): State<Arc<Shared>>,
    route: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = route.as_str().trim_start_matches("/_matrix/client/v3");
    let key = format!("{} {route}", request.method());
    *shared.rooms.lock().expect("rooms").served.entry(key).or_default() += 1;
    next.run(request).await
}

fn ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({"errcode": "M_NOT_FOUND", "error": what}))).into_response()
}

/// The user a request acts as: the asserted `user_id`, or the bot.
fn acting_user(shared: &Shared, query: &HashMap<String, String>) -> String {
    query.get("user_id").cloned().unwrap_or_else(|| shared.bot.clone())
}

async fn hs_versions() -> Response {
    ok(json!({ "versions": ["v1.1", "v1.5", "v1.11"], "unstable_features": {} }))
}

async fn hs_register(body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let localpart = request["username"].as_str().unwrap_or("unnamed");
    ok(json!({ "user_id": format!("@{localpart}:{SERVER_NAME}") }))
}

async fn hs_whoami(State(shared): State<Arc<Shared>>, Query(query): Query<HashMap<String, String>>) -> Response {
    ok(json!({ "user_id": acting_user(&shared, &query) }))
}

async fn hs_profile(UrlPath(user): UrlPath<String>) -> Response {
    ok(json!({ "displayname": display_name(&user) }))
}

async fn hs_profile_field(UrlPath((user, field)): UrlPath<(String, String)>) -> Response {
    match field.as_str() {
        "displayname" => ok(json!({ "displayname": display_name(&user) })),
        _ => not_found("no such profile field"),
    }
}

fn display_name(user: &str) -> String {
    user.trim_start_matches('@').split(':').next().unwrap_or(user).to_string()
}

/// Joins the acting user, and pushes their membership back as a homeserver would.
async fn hs_join(
    State(shared): State<Arc<Shared>>,
    UrlPath(room): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let user = acting_user(&shared, &query);
    let mut rooms = shared.rooms.lock().expect("rooms");
    let Some(members) = rooms.members.get_mut(&room) else {
        return not_found("no such room");
    };
    if !members.contains(&user) {
        members.push(user.clone());
        let content = json!({"membership": "join", "displayname": display_name(&user)});
        rooms.queue.push_back(state_event(&room, &user, "m.room.member", &user, content));
        if user == shared.echoer {
            rooms.joins += 1;
        }
    }
    drop(rooms);
    shared.queued.notify_one();
    shared.progress.notify_waiters();
    ok(json!({ "room_id": room }))
}

async fn hs_joined_members(State(shared): State<Arc<Shared>>, UrlPath(room): UrlPath<String>) -> Response {
    let rooms = shared.rooms.lock().expect("rooms");
    let Some(members) = rooms.members.get(&room) else {
        return not_found("no such room");
    };
    let joined: serde_json::Map<String, Value> =
        members.iter().map(|m| (m.clone(), json!({ "display_name": display_name(m) }))).collect();
    ok(json!({ "joined": joined }))
}

async fn hs_state(
    State(shared): State<Arc<Shared>>,
    UrlPath((room, event_type)): UrlPath<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    state(&shared, &room, &event_type, "", &query)
}

async fn hs_state_key(
    State(shared): State<Arc<Shared>>,
    UrlPath((room, event_type, key)): UrlPath<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    state(&shared, &room, &event_type, &key, &query)
}

/// A room's create, power levels and memberships, as content or (`?format=event`) as
/// an event.
fn state(shared: &Shared, room: &str, event_type: &str, key: &str, query: &HashMap<String, String>) -> Response {
    let rooms = shared.rooms.lock().expect("rooms");
    let Some(members) = rooms.members.get(room) else {
        return not_found("no such room");
    };
    let person = members[0].clone();
    let joined = members.iter().any(|m| m == key);
    drop(rooms);
    let content = match (event_type, key) {
        ("m.room.create", "") => json!({"room_version": "10", "creator": person}),
        ("m.room.power_levels", "") => power_levels(&person),
        ("m.room.member", _) if joined => json!({"membership": "join", "displayname": display_name(key)}),
        _ => return not_found("no such state"),
    };
    if query.get("format").map(String::as_str) == Some("event") {
        ok(state_event(room, &person, event_type, key, content))
    } else {
        ok(content)
    }
}

async fn hs_capabilities() -> Response {
    ok(json!({ "capabilities": { "m.room_versions": { "default": "10", "available": { "10": "stable" } } } }))
}

/// Accepts a send; one answering an awaited message (`m.in_reply_to`) is an echo.
async fn hs_send(
    State(shared): State<Arc<Shared>>,
    UrlPath((_room, _event_type, _txn)): UrlPath<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let event_id = format!("$sent{}", shared.next_event.fetch_add(1, Ordering::Relaxed));
    let content: Value = serde_json::from_slice(&body).unwrap_or_default();
    if let Some(target) = content["m.relates_to"]["m.in_reply_to"]["event_id"].as_str()
        && acting_user(&shared, &query) == shared.echoer
    {
        let mut rooms = shared.rooms.lock().expect("rooms");
        if rooms.awaited.remove(target) {
            rooms.echoed.insert(target.to_string());
            if let Some(pushed) = rooms.pushed_at.remove(target) {
                rooms.latencies.push(pushed.elapsed());
            }
            if rooms.awaited.is_empty() {
                shared.progress.notify_waiters();
            }
        } else if rooms.echoed.contains(target) {
            rooms.doubles += 1;
        }
    }
    ok(json!({ "event_id": event_id }))
}

async fn hs_unknown(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    // Room ids, users and transaction ids make paths unique; keep their shape.
    let shape: Vec<&str> = uri
        .path()
        .split('/')
        .map(|segment| if segment.contains(['!', '@', '$', '%']) || segment.len() > 24 { "…" } else { segment })
        .collect();
    *shared.rooms.lock().expect("rooms").unknown.entry(format!("{method} {}", shape.join("/"))).or_default() += 1;
    (StatusCode::NOT_FOUND, axum::Json(json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})))
        .into_response()
}
