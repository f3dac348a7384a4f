//! Benchmarks through a real homeserver: end-to-end echo latency and resident memory,
//! for mosaic-as and, side by side, for a reference echo appservice written with
//! mautrix-python (`benches/reference/echo_appservice.py`).
//!
//! Each phase starts its own Synapse (`scripts/synapse.sh`, SQLite, a free loopback port,
//! under `<target>/bench/<phase>/`) with two appservice registrations: mosaic-as
//! (`init`, then `serve` on SQLite) and the reference (its own virtualenv under
//! `<target>/bench/reference-venv`, created on first use).
//!
//! **e2e**: two people, alice and bob. Three kinds of sample, interleaved so that noise
//! from other work on the machine falls on all of them alike, one at a time (the next
//! message is sent once the previous one has been seen):
//!
//! - the homeserver's floor: alice sends to bob, bob's `/sync` sees it (one way); bob
//!   sends back at once and alice's `/sync` sees that (two plain client sends);
//! - mosaic-as: alice sends in a direct chat with the echo agent; alice's `/sync` sees the
//!   agent's reply;
//! - the reference: the same, with the reference's bot.
//!
//! Arrival is observed by one `/sync` long-poll loop per person (a `since` token and a
//! 30 s timeout, with a filter that keeps only message timelines), never by polling.
//! Times run from just before the sending `PUT` to the `/sync` response that carries the
//! awaited event. It prints p50/p99, the ratio of the echo's median to each floor's and
//! the added latency (difference of medians), then the resident memory of each process.
//!
//! Each service's CPU time (utime + stime from `/proc/<pid>/stat`) over the measured
//! rounds, divided by its echoes, is printed beside the latency.
//!
//! **burst**: four people, each in a direct chat with the echo agent and another with the
//! reference's bot. 600 messages, 150 from each person, all four sending at once, each
//! as fast as the homeserver accepts (one `PUT` after the other); first at mosaic-as, then
//! at the reference, two rounds in turns. For each burst: replies/s (from the first send
//! to the last reply seen in a sync), the latency p50/p99 of each message (its `PUT` to the
//! sync response carrying its reply) and the service's CPU time per echo; then the ratios
//! of the medians over the rounds.
//!
//! **memory**: resident memory (`VmRSS`) of mosaic-as and of the reference, idle after
//! start and after each has been pushed the same synthetic appservice transactions: 1,000
//! rooms, 10 members joining each (10,000 users: half ghosts in the service's own
//! namespace, half people on a remote server, all with display names) and 5 messages per
//! room, 15,000 events in transactions of 100. mosaic-as has processed them when its
//! `/metrics` shows `mosaic_inbox_pending 0`; the reference when its `/bench/stats` has
//! counted every event.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench homeserver             # all phases
//! cargo bench --bench homeserver -- e2e      # one (or more) of them
//! cargo bench --bench homeserver -- burst
//! cargo bench --bench homeserver -- memory
//! ```
//!
//! The homeserver, both services and the benchmark share the machine's cores with
//! whatever else runs there: the figures are indicative; compare runs on the same box.

#[path = "support/homeserver.rs"]
mod homeserver;
#[path = "support/mod.rs"]
mod support;
#[path = "support/traffic.rs"]
mod traffic;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use homeserver::{
    Arrival, Person, Reference, ReferenceConfig, SERVER_NAME, Synapse, bench_dir, cpu_time, mib, own_rss_bytes,
    reply_target, rss_bytes, wait_for_arrival,
};
use serde_json::Value;
use support::{Server, free_loopback_addr, http_client, millis, percentile};
use tokio::sync::mpsc;
use traffic::{Traffic, push_all, reference_events, wait_for_mosaic_inbox, wait_for_reference};

const WARMUP_ROUNDS: usize = 20;
const MEASURED_ROUNDS: usize = 200;
/// Measuring stops once it has run this long, and reports what it measured.
const MEASURE_BUDGET: Duration = Duration::from_secs(600);

/// Burst: this many messages, shared out over the people, each in their own room.
const BURST_MESSAGES: usize = 600;
const BURST_PEOPLE: [&str; 4] = ["carol", "dave", "erin", "frank"];
/// Bursts per service, taken in turns (mosaic-as, reference, mosaic-as, ...).
const BURST_ROUNDS: usize = 2;
const BURST_TIMEOUT: Duration = Duration::from_secs(300);

const TRAFFIC: Traffic = Traffic { rooms: 1_000, members_per_room: 10, messages_per_room: 5 };
const EVENTS_PER_TXN: usize = 100;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Time left to a process to settle before its memory is read.
const SETTLE: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    support::run_main("homeserver", run())
}

async fn run() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; anything else names a phase.
    let phases: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    for phase in &phases {
        if !matches!(phase.as_str(), "e2e" | "burst" | "memory") {
            bail!("unknown phase {phase:?}: e2e, burst or memory");
        }
    }
    let wanted = |phase: &str| phases.is_empty() || phases.iter().any(|p| p == phase);
    if wanted("e2e") {
        Stack::run("e2e", e2e).await?;
    }
    if wanted("burst") {
        Stack::run("burst", burst).await?;
    }
    if wanted("memory") {
        Stack::run("memory", memory).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The homeserver and both services

/// Synapse with mosaic-as and the reference registered, both running.
struct Stack {
    mosaic: Server,
    mosaic_dir: PathBuf,
    reference: Reference,
    reference_config: ReferenceConfig,
    // Dropped last: the services stop before their homeserver.
    synapse: Synapse,
}

impl Stack {
    async fn start(phase: &str) -> anyhow::Result<Self> {
        let dir = bench_dir(phase)?;
        let port = free_loopback_addr()?.port();
        let homeserver_url = format!("http://127.0.0.1:{port}");
        let prepared = Server::prepare(&["--server-name", SERVER_NAME, "--homeserver-url", &homeserver_url], None)?;
        let mosaic_dir = prepared.dir().to_path_buf();
        let reference_config = ReferenceConfig::write(&dir.join("reference"))?;
        let registrations = [&*mosaic_dir.join("registration.yaml"), &*reference_config.registration_path];
        let synapse = Synapse::start(&dir.join("synapse"), port, &registrations)?;
        let mut mosaic = prepared.serve()?;
        if let Err(error) = mosaic.wait_until_ok(&http_client()?, "/ready").await {
            mosaic.print_log_tail();
            return Err(error);
        }
        let reference = reference_config.start(&synapse.url()).await?;
        Ok(Self { mosaic, mosaic_dir, reference, reference_config, synapse })
    }

    /// Starts a stack, runs `body` on it, stops the services (showing their logs when
    /// something failed).
    async fn run<F>(phase: &str, body: F) -> anyhow::Result<()>
    where
        F: AsyncFnOnce(&Stack) -> anyhow::Result<()>,
    {
        let mut stack = Self::start(phase).await?;
        let result = body(&stack).await;
        stack.reference.stop();
        let stopped = stack.mosaic.stop();
        if result.is_err() || stopped.is_err() {
            stack.mosaic.print_log_tail();
            stack.reference.print_log_tail();
        }
        result.and(stopped)
    }

    fn agent(&self) -> String {
        format!("@mosaic_agent_echo:{SERVER_NAME}")
    }

    /// The CPU time used so far by each process, to be read again after a phase.
    fn cpu_meter(&self) -> anyhow::Result<Cpu> {
        Ok(Cpu {
            mosaic: cpu_time(self.mosaic.pid())?,
            reference: cpu_time(self.reference.pid())?,
            synapse: cpu_time(self.synapse.pid()?)?,
        })
    }

    fn print_rss(&self, when: &str) -> anyhow::Result<()> {
        println!(
            "{:<8} resident memory {when}: mosaic-as {:.1} MiB, reference {:.1} MiB, synapse {:.1} MiB",
            "",
            mib(rss_bytes(self.mosaic.pid())?),
            mib(rss_bytes(self.reference.pid())?),
            mib(rss_bytes(self.synapse.pid()?)?),
        );
        Ok(())
    }
}

/// CPU time (user + system) of each process.
struct Cpu {
    mosaic: Duration,
    reference: Duration,
    synapse: Duration,
}

impl Cpu {
    /// The CPU time used since `self` was taken.
    fn read(&self, stack: &Stack) -> anyhow::Result<Cpu> {
        let now = stack.cpu_meter()?;
        Ok(Cpu {
            mosaic: now.mosaic.saturating_sub(self.mosaic),
            reference: now.reference.saturating_sub(self.reference),
            synapse: now.synapse.saturating_sub(self.synapse),
        })
    }
}

/// Prints the CPU time per echo of both services, their ratio, and Synapse's CPU time
/// per echo of either service for scale.
fn print_cpu(phase: &str, used: &Cpu, echoes: usize, note: &str) {
    let per = |d: Duration| millis(d) / echoes.max(1) as f64;
    println!(
        "{phase:<8} CPU per echo: mosaic-as {:.2} ms, reference {:.2} ms, ratio mosaic-as/reference x{:.2}  \
         (utime+stime / echoes; synapse {:.2} ms; {note})",
        per(used.mosaic),
        per(used.reference),
        per(used.mosaic) / per(used.reference),
        per(used.synapse),
    );
}

// ---------------------------------------------------------------------------------------
// e2e

/// One person with their sync loop.
struct Observer {
    person: Person,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
}

struct Rooms {
    floor: String,
    mosaic: String,
    reference: String,
}

#[derive(Default)]
struct Samples {
    one_way: Vec<Duration>,
    two_sends: Vec<Duration>,
    mosaic: Vec<Duration>,
    reference: Vec<Duration>,
}

async fn e2e(stack: &Stack) -> anyhow::Result<()> {
    println!(
        "e2e: Synapse on loopback, {WARMUP_ROUNDS} warm-up + {MEASURED_ROUNDS} measured rounds, \
         each a floor, a mosaic-as and a reference sample, one message at a time"
    );
    let alice = stack.synapse.person("alice").await?;
    let bob = stack.synapse.person("bob").await?;
    let agent = stack.agent();
    let reference_bot = stack.reference_config.bot.clone();
    let rooms = Rooms {
        floor: alice.create_room(&[&bob.user_id], false).await?,
        mosaic: alice.create_room(&[&agent], true).await?,
        reference: alice.create_room(&[&reference_bot], true).await?,
    };
    bob.join(&rooms.floor).await?;
    alice.wait_for_member(&rooms.mosaic, &agent).await?;
    alice.wait_for_member(&rooms.reference, &reference_bot).await?;
    let mut alice = Observer { arrivals: alice.sync_loop().await?, person: alice };
    let mut bob = Observer { arrivals: bob.sync_loop().await?, person: bob };

    let mut samples = Samples::default();
    for n in 0..WARMUP_ROUNDS {
        round(&format!("warm-up {n}"), &mut alice, &mut bob, &rooms, &agent, &reference_bot, &mut Samples::default())
            .await?;
    }
    let cpu = stack.cpu_meter()?;
    let start = Instant::now();
    for n in 0..MEASURED_ROUNDS {
        if start.elapsed() > MEASURE_BUDGET {
            println!("(stopped at the {MEASURE_BUDGET:?} time budget)");
            break;
        }
        round(&format!("round {n}"), &mut alice, &mut bob, &rooms, &agent, &reference_bot, &mut samples).await?;
    }
    let cpu = cpu.read(stack)?;
    print_e2e(&mut samples);
    // Each service's CPU time over the measured rounds, shared out over its echoes (its
    // idle time between them included); Synapse's over everything it served.
    let echoes = samples.mosaic.len();
    print_cpu("e2e", &cpu, echoes, &format!("{echoes} echoes each; synapse's per round, floor included"));
    stack.print_rss("after the run")
}

/// One sample of each kind.
async fn round(
    tag: &str,
    alice: &mut Observer,
    bob: &mut Observer,
    rooms: &Rooms,
    agent: &str,
    reference_bot: &str,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    // The floor: alice → bob, then bob → alice.
    let text = format!("floor {tag}: are you there?");
    let sent = Instant::now();
    alice.person.say(&rooms.floor, &text).await?;
    let alice_id = alice.person.user_id.clone();
    let seen = wait_for_arrival(&mut bob.arrivals, &format!("{tag} at bob"), |a| {
        a.room_id == rooms.floor && a.event["sender"] == alice_id.as_str() && body(&a.event) == text
    })
    .await?;
    let answer = format!("floor {tag}: yes");
    bob.person.say(&rooms.floor, &answer).await?;
    let bob_id = bob.person.user_id.clone();
    let back = wait_for_arrival(&mut alice.arrivals, &format!("bob's answer to {tag}"), |a| {
        a.room_id == rooms.floor && a.event["sender"] == bob_id.as_str() && body(&a.event) == answer
    })
    .await?;
    samples.one_way.push(seen - sent);
    samples.two_sends.push(back - sent);

    samples.mosaic.push(echo(alice, &rooms.mosaic, agent, &format!("mosaic {tag}: echo this")).await?);
    samples.reference.push(echo(alice, &rooms.reference, reference_bot, &format!("reference {tag}: echo this")).await?);
    Ok(())
}

/// Sends `text` in `room` and waits for `echoer`'s reply with the same body.
async fn echo(alice: &mut Observer, room: &str, echoer: &str, text: &str) -> anyhow::Result<Duration> {
    let sent = Instant::now();
    let event_id = alice.person.say(room, text).await?;
    let mut wrong_body = None;
    let back = wait_for_arrival(&mut alice.arrivals, &format!("{echoer}'s reply to {text:?}"), |a| {
        let matches = a.room_id == room && a.event["sender"] == echoer && reply_target(&a.event) == Some(&event_id);
        if matches && body(&a.event) != text {
            wrong_body = Some(body(&a.event).to_string());
        }
        matches
    })
    .await?;
    if let Some(wrong) = wrong_body {
        bail!("{echoer} answered {text:?} with {wrong:?}");
    }
    Ok(back - sent)
}

fn body(event: &Value) -> &str {
    event["content"]["body"].as_str().unwrap_or_default()
}

fn print_e2e(samples: &mut Samples) {
    for list in [&mut samples.one_way, &mut samples.two_sends, &mut samples.mosaic, &mut samples.reference] {
        list.sort();
    }
    let p50 = |list: &[Duration]| millis(percentile(list, 50.0));
    let line = |label: &str, list: &[Duration]| {
        println!(
            "e2e      {label:<46} p50 {:>7.2} ms  p99 {:>7.2} ms  min {:>7.2}  max {:>7.2}  ({} samples)",
            p50(list),
            millis(percentile(list, 99.0)),
            millis(percentile(list, 0.0)),
            millis(percentile(list, 100.0)),
            list.len(),
        );
    };
    line("floor, one way (alice sends → bob's sync)", &samples.one_way);
    line("floor, two sends (alice → bob → alice)", &samples.two_sends);
    line("mosaic-as echo (send → agent's reply in sync)", &samples.mosaic);
    line("reference echo, mautrix-python (same)", &samples.reference);
    for (label, list) in [("mosaic-as", &samples.mosaic), ("reference", &samples.reference)] {
        println!(
            "e2e      {label:<10} p50 vs one-way floor: x{:.2}, added {:.2} ms; vs two-send floor: x{:.2}, added {:.2} ms",
            p50(list) / p50(&samples.one_way),
            p50(list) - p50(&samples.one_way),
            p50(list) / p50(&samples.two_sends),
            p50(list) - p50(&samples.two_sends),
        );
    }
}

// ---------------------------------------------------------------------------------------
// burst

/// One burst's figures for one service.
struct Burst {
    replies_per_s: f64,
    latency: Vec<Duration>,
    cpu_per_echo: Duration,
    synapse_cpu_per_echo: Duration,
}

async fn burst(stack: &Stack) -> anyhow::Result<()> {
    let people = BURST_PEOPLE.len();
    println!(
        "burst: Synapse on loopback, {BURST_MESSAGES} messages from {people} people in {people} rooms (each \
         person's direct chat with the echoer), each person sending as fast as the homeserver accepts; \
         mosaic-as and the reference in turns, {BURST_ROUNDS} rounds"
    );
    let agent = stack.agent();
    let reference_bot = stack.reference_config.bot.clone();
    let mut observers = Vec::new();
    let mut mosaic_rooms = Vec::new();
    let mut reference_rooms = Vec::new();
    for name in BURST_PEOPLE {
        let person = stack.synapse.person(name).await?;
        mosaic_rooms.push(person.create_room(&[&agent], true).await?);
        reference_rooms.push(person.create_room(&[&reference_bot], true).await?);
        observers.push(person);
    }
    let mut observers: Vec<Observer> = {
        let mut started = Vec::new();
        for (n, person) in observers.into_iter().enumerate() {
            person.wait_for_member(&mosaic_rooms[n], &agent).await?;
            person.wait_for_member(&reference_rooms[n], &reference_bot).await?;
            started.push(Observer { arrivals: person.sync_loop().await?, person });
        }
        started
    };
    // Warm-up: one echo per room, which also shows that both services answer everywhere.
    for (n, observer) in observers.iter_mut().enumerate() {
        echo(observer, &mosaic_rooms[n], &agent, &format!("burst warm-up {n}")).await?;
        echo(observer, &reference_rooms[n], &reference_bot, &format!("burst warm-up {n}")).await?;
    }
    let mut mosaic = Vec::new();
    let mut reference = Vec::new();
    for round in 0..BURST_ROUNDS {
        for (label, rooms, echoer, figures) in [
            ("mosaic-as", &mosaic_rooms, &agent, &mut mosaic),
            ("reference", &reference_rooms, &reference_bot, &mut reference),
        ] {
            let cpu = stack.cpu_meter()?;
            let mut burst = one_burst(&mut observers, rooms, echoer, &format!("{label} round {round}")).await?;
            let used = cpu.read(stack)?;
            let own = if label == "mosaic-as" { used.mosaic } else { used.reference };
            burst.cpu_per_echo = own / burst.latency.len().max(1) as u32;
            burst.synapse_cpu_per_echo = used.synapse / burst.latency.len().max(1) as u32;
            print_burst(label, round, &burst);
            figures.push(burst);
        }
    }
    let median = |figures: &[Burst], f: fn(&Burst) -> f64| {
        let mut values: Vec<f64> = figures.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        let middle = values.len() / 2;
        if values.len().is_multiple_of(2) { (values[middle - 1] + values[middle]) / 2.0 } else { values[middle] }
    };
    let replies = |b: &Burst| b.replies_per_s;
    let cpu = |b: &Burst| millis(b.cpu_per_echo);
    let p50 = |b: &Burst| millis(percentile(&b.latency, 50.0));
    println!(
        "burst    ratios mosaic-as/reference (median of rounds): replies/s x{:.2}, latency p50 x{:.2}, CPU per echo x{:.2}",
        median(&mosaic, replies) / median(&reference, replies),
        median(&mosaic, p50) / median(&reference, p50),
        median(&mosaic, cpu) / median(&reference, cpu),
    );
    stack.print_rss("after the bursts")
}

/// Each person sends their share of `BURST_MESSAGES` in their room of `rooms`, one
/// `PUT` after the other, all people at once; waits for `echoer`'s reply to every one.
/// Latency runs from just before a message's `PUT` to the sync response carrying its
/// reply; replies/s from the first `PUT` to the last reply.
async fn one_burst(observers: &mut [Observer], rooms: &[String], echoer: &str, tag: &str) -> anyhow::Result<Burst> {
    let share = BURST_MESSAGES / observers.len();
    let start = Instant::now();
    let runs = observers.iter_mut().zip(rooms).enumerate().map(|(n, (observer, room))| async move {
        let Observer { person, arrivals } = observer;
        let send = async {
            let mut sent = Vec::with_capacity(share);
            for k in 0..share {
                let at = Instant::now();
                sent.push((person.say(room, &format!("{tag}: message {k} from person {n}")).await?, at));
            }
            anyhow::Ok(sent)
        };
        let collect = async {
            let mut replies = std::collections::HashMap::with_capacity(share);
            let deadline = tokio::time::Instant::now() + BURST_TIMEOUT;
            while replies.len() < share {
                match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                    Ok(Some(a)) if a.room_id == *room && a.event["sender"] == echoer => {
                        if let Some(target) = reply_target(&a.event) {
                            replies.insert(target.to_string(), a.at);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => bail!("the sync loop of {} ended during {tag}", person.user_id),
                    Err(_) => bail!("{tag}: {} of {share} replies in {room} within {BURST_TIMEOUT:?}", replies.len()),
                }
            }
            anyhow::Ok(replies)
        };
        let (sent, replies) = tokio::try_join!(send, collect)?;
        let mut latency = Vec::with_capacity(share);
        for (event_id, at) in sent {
            let reply =
                replies.get(&event_id).with_context(|| format!("{tag}: a reply to another message than {event_id}"))?;
            latency.push(*reply - at);
        }
        let last = replies.values().max().copied().unwrap_or(start);
        anyhow::Ok((latency, last))
    });
    let mut latency = Vec::with_capacity(BURST_MESSAGES);
    let mut last = start;
    for (person_latency, person_last) in futures::future::try_join_all(runs).await? {
        latency.extend(person_latency);
        last = last.max(person_last);
    }
    latency.sort();
    Ok(Burst {
        replies_per_s: latency.len() as f64 / (last - start).as_secs_f64(),
        latency,
        cpu_per_echo: Duration::ZERO,
        synapse_cpu_per_echo: Duration::ZERO,
    })
}

fn print_burst(label: &str, round: usize, burst: &Burst) {
    println!(
        "burst    {label:<10} round {round}: {:>6.1} replies/s  latency p50 {:>8.1} ms  p99 {:>8.1} ms  \
         CPU per echo {:>6.2} ms  (synapse {:.2} ms per echo; {} replies)",
        burst.replies_per_s,
        millis(percentile(&burst.latency, 50.0)),
        millis(percentile(&burst.latency, 99.0)),
        millis(burst.cpu_per_echo),
        millis(burst.synapse_cpu_per_echo),
        burst.latency.len(),
    );
}

// ---------------------------------------------------------------------------------------
// memory

async fn memory(stack: &Stack) -> anyhow::Result<()> {
    println!(
        "memory: {} rooms, {} users joining ({} per room), {} messages per room, pushed as appservice transactions \
         of {EVENTS_PER_TXN} events",
        TRAFFIC.rooms,
        TRAFFIC.users(),
        TRAFFIC.members_per_room,
        TRAFFIC.messages_per_room,
    );
    let client = http_client()?;
    tokio::time::sleep(SETTLE).await;
    let mosaic_idle = rss_bytes(stack.mosaic.pid())?;
    let reference_idle = rss_bytes(stack.reference.pid())?;

    let events = TRAFFIC.synthetic_events(SERVER_NAME, "mosaic_ghost_");
    let total = events.len();
    let pushed = Instant::now();
    push_all(&client, &stack.mosaic.base_url, &stack.mosaic.hs_token, &events, EVENTS_PER_TXN).await?;
    let push_time = pushed.elapsed();
    wait_for_mosaic_inbox(&client, &stack.mosaic.base_url, DRAIN_TIMEOUT).await?;
    let mosaic_time = pushed.elapsed();

    let events = TRAFFIC.synthetic_events(SERVER_NAME, "refecho_ghost_");
    let base_url = &stack.reference_config.base_url;
    let before = reference_events(&client, base_url).await?;
    let pushed = Instant::now();
    push_all(&client, base_url, &stack.reference_config.hs_token, &events, EVENTS_PER_TXN).await?;
    let reference_push_time = pushed.elapsed();
    wait_for_reference(&client, base_url, before, total, DRAIN_TIMEOUT).await?;
    let reference_time = pushed.elapsed();

    tokio::time::sleep(SETTLE).await;
    let mosaic_after = rss_bytes(stack.mosaic.pid())?;
    let reference_after = rss_bytes(stack.reference.pid())?;
    let mosaic_own = own_rss_bytes(stack.mosaic.pid())?;
    let reference_own = own_rss_bytes(stack.reference.pid())?;
    let database = database_bytes(&stack.mosaic_dir);
    for (label, idle, after, own, push, done) in [
        ("mosaic-as", mosaic_idle, mosaic_after, mosaic_own, push_time, mosaic_time),
        ("reference", reference_idle, reference_after, reference_own, reference_push_time, reference_time),
    ] {
        let grown = after.saturating_sub(idle);
        println!(
            "memory   {label:<10} idle {:>6.1} MiB  after {:>6.1} MiB, its own {:.1} MiB, the rest mapped from files  \
             (+{:.1} MiB: {:.0} B per room, {:.0} B per user)  {total} events pushed in {:.1} s, processed in {:.1} s",
            mib(idle),
            mib(after),
            mib(own),
            mib(grown),
            grown as f64 / TRAFFIC.rooms as f64,
            grown as f64 / TRAFFIC.users() as f64,
            push.as_secs_f64(),
            done.as_secs_f64(),
        );
    }
    println!("memory   mosaic-as SQLite database on disk: {:.1} MiB", mib(database));
    stack.print_rss("at the end")
}

/// Size of mosaic-as's SQLite database with its write-ahead log.
fn database_bytes(dir: &Path) -> u64 {
    ["mosaic-as.db", "mosaic-as.db-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(dir.join(name)).ok())
        .map(|m| m.len())
        .sum()
}
