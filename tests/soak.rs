//! The zero-loss soak: people on Matrix, Telegram and Discord talk to the echo agent in
//! one bridged conversation while the homeserver goes down and comes back, mosaic-as is
//! killed with SIGKILL and restarted, and the bridges' networks answer 429 and 500 for a
//! while. At the end every message must have exactly one copy on every other surface and
//! exactly one answer on every surface: nothing lost, nothing doubled.
//!
//! Among the messages are a file nobody can fetch (bridged as a note), a `!new` whose
//! title holds a NUL byte, and a second conversation bridged to a Telegram chat whose
//! sends always fail (they end as dead letters with a notice; nothing else waits for
//! them). The soak runs on SQLite and on PostgreSQL, one after the other.
//!
//! `MOSAIC_SOAK_MESSAGES` sets the messages per person (default 8: the short form that
//! runs in CI; e.g. 300 gives 1,800 messages and 9,000 deliveries).

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::fake_discord::FakeDiscord;
use support::fake_telegram::{FakeTelegram, Incoming, SentKind, TgUser};
use support::{Person, Service, body, fresh_postgres_database, homeserver, mosaic, reply_target, slot};

const TELEGRAM_CHAT: i64 = -1_009_876_543_210;
/// A bridged Telegram chat whose sends always fail.
const BROKEN_CHAT: i64 = -1_009_876_000_001;

/// The two soaks restart the homeserver: they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const DISCORD_GUILD: u64 = 800_000_000_000_000_001;
const DISCORD_CHANNEL: u64 = 800_000_000_000_000_002;

/// Where a message was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Surface {
    Matrix,
    Telegram,
    Discord,
}

const SURFACES: [Surface; 3] = [Surface::Matrix, Surface::Telegram, Surface::Discord];

struct Written {
    text: String,
    surface: Surface,
}

/// How often each expected delivery was seen.
#[derive(Default)]
struct Tally {
    expected: usize,
    lost: Vec<String>,
    doubled: Vec<String>,
}

impl Tally {
    fn check(&mut self, what: String, seen: usize) {
        self.expected += 1;
        match seen {
            0 => self.lost.push(what),
            1 => {}
            _ => self.doubled.push(format!("{what} ×{seen}")),
        }
    }
}

fn messages_per_person() -> usize {
    std::env::var("MOSAIC_SOAK_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(8)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_message_is_answered_exactly_once_on_every_surface_through_faults_on_sqlite() {
    let _turn = ONE_AT_A_TIME.lock().await;
    soak(slot("soak"), None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_message_is_answered_exactly_once_on_every_surface_through_faults_on_postgres() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let database = fresh_postgres_database("mosaic_store_soak").await;
    soak(slot("pgsoak"), Some(database)).await;
}

async fn soak(slot: support::Slot, database: Option<String>) {
    let per_person = messages_per_person();
    let telegram = FakeTelegram::start().await;
    telegram.add_supergroup(TELEGRAM_CHAT, "Soak", false);
    telegram.add_supergroup(BROKEN_CHAT, "Broken", false);
    telegram.break_chat(BROKEN_CHAT, 500);
    let discord = FakeDiscord::start().await;
    discord.add_channel(DISCORD_GUILD, DISCORD_CHANNEL, "soak");
    let alice = Person::new(&format!("{}-alice", slot.name)).await;
    let bob = Person::new(&format!("{}-bob", slot.name)).await;
    slot.write_config_with_sections(&format!(
        "[telegram]\ntoken = \"{}\"\napi_url = \"{}\"\npoll_timeout_secs = 1\nbridge_chats = [{TELEGRAM_CHAT}, {BROKEN_CHAT}]\n\n\
         [discord]\ntoken = \"{}\"\napi_url = \"{}\"\nbridge_guilds = [{DISCORD_GUILD}]\n\n\
         [permissions]\n\"*\" = \"none\"\n\"localhost\" = \"user\"\n\"{}\" = \"admin\"\n\
         [permissions.telegram]\nunlinked = \"user\"\n[permissions.discord]\nunlinked = \"user\"\n\n\
         [delivery]\nmax_attempts = 20\nmax_backoff_secs = 2\nmax_age_secs = 60\n",
        telegram.token(),
        telegram.api_url(),
        discord.token(),
        discord.api_url(),
        alice.user_id
    ));
    if let Some(url) = &database {
        slot.set_database_url(url);
    }
    mosaic(&slot, &["account", "create", "soak-alice", "--matrix-id", &alice.user_id]).expect_success();
    let mut service = Some(Service::start(&slot).await);
    let echo = slot.agent("echo");
    let room = alice.create_room(&[&echo, &bob.user_id], false).await;
    bob.join(&room).await;
    alice.wait_for_member(&room, &echo).await;
    for command in [
        format!("!bridge telegram {TELEGRAM_CHAT}"),
        format!("!bridge discord {DISCORD_CHANNEL}"),
        "!unlinked answer".to_string(),
    ] {
        let asked = alice.say(&room, &command).await;
        alice.wait_for_reply(&room, &echo, &asked).await;
    }

    // A second conversation, bridged to the broken chat.
    let broken_room = alice.create_room(&[&echo], false).await;
    alice.wait_for_member(&broken_room, &echo).await;
    let asked = alice.say(&broken_room, &format!("!bridge telegram {BROKEN_CHAT}")).await;
    alice.wait_for_reply(&broken_room, &echo, &asked).await;

    let tom = TgUser::new(31_001, "Tom", None, None);
    let tina = TgUser::new(31_002, "Tina", None, None);
    let (dan, dora) = (41_001u64, 41_002u64);
    discord.add_user(dan, "dan", Some("Dan"), false);
    discord.add_user(dora, "dora", Some("Dora"), false);

    let started = Instant::now();
    let mut written = Vec::new();
    for round in 0..per_person {
        inject_faults(round, per_person, &telegram, &discord, &slot, &mut service).await;
        if round == per_person / 3 {
            // A file nobody can fetch: the message goes everywhere with a note instead.
            let text = "soak file-alice echo";
            let file = json!({"msgtype": "m.file", "body": text, "url": "mxc://localhost/soak-missing-file"});
            alice.send(&room, file).await;
            written.push(Written { text: text.to_string(), surface: Surface::Matrix });
            // A title the database would refuse as is.
            let asked = alice.say_until_accepted(&room, "!new soak\u{0}title", Duration::from_secs(120)).await;
            // The answer queues behind everything the room is owed so far, in order.
            let backlog = Duration::from_secs(60 + written.len() as u64);
            alice.wait_for_within(&room, &echo, backlog, |e| reply_target(e) == Some(asked.as_str())).await;
            // The broken chat's conversation.
            alice.say_until_accepted(&broken_room, "soak broken-room echo", Duration::from_secs(120)).await;
            telegram.push_message(Incoming::text(BROKEN_CHAT, &tom, "soak broken-chat echo"));
        }
        for (person, name) in [(&alice, "alice"), (&bob, "bob")] {
            let text = format!("soak matrix-{name}-{round} echo");
            person.say_until_accepted(&room, &text, Duration::from_secs(120)).await;
            written.push(Written { text, surface: Surface::Matrix });
        }
        for user in [&tom, &tina] {
            let text = format!("soak telegram-{}-{round} echo", user.first_name);
            telegram.push_message(Incoming::text(TELEGRAM_CHAT, user, &text));
            written.push(Written { text, surface: Surface::Telegram });
        }
        for user in [dan, dora] {
            let text = format!("soak discord-{user}-{round} echo");
            discord.user_says(DISCORD_CHANNEL, user, &text).send();
            written.push(Written { text, surface: Surface::Discord });
        }
    }
    let sent_in = started.elapsed();

    // Wait until everything arrived (or the deadline), then count.
    let deadline = Instant::now() + Duration::from_secs(120 + 2 * written.len() as u64);
    let mut tally;
    loop {
        tally = count(&written, &alice, &room, &echo, &telegram, &discord).await;
        if tally.lost.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Late duplicates would show up after everything arrived.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = count(&written, &alice, &room, &echo, &telegram, &discord).await;
    println!(
        "soak: {} messages ({} per person, 6 people on 3 surfaces) written in {:.1} s, {} deliveries expected, {} lost, {} duplicated, done after {:.1} s",
        written.len(),
        per_person,
        sent_in.as_secs_f64(),
        tally.expected,
        tally.lost.len(),
        tally.doubled.len(),
        started.elapsed().as_secs_f64()
    );
    let lost = &tally.lost[..tally.lost.len().min(20)];
    let doubled = &tally.doubled[..tally.doubled.len().min(20)];
    assert!(lost.is_empty() && doubled.is_empty(), "lost: {lost:?}\nduplicated: {doubled:?}");
    broken_chat_ends_in_dead_letters(&slot, &alice, &broken_room).await;
    drop(service);
}

/// What was sent to the broken chat is set aside as dead letters, visible to the
/// operator, and its conversation's room is told.
async fn broken_chat_ends_in_dead_letters(slot: &support::Slot, alice: &Person, room: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let notice = loop {
        let found = alice.all_messages(room).await.into_iter().find(|e| body(e).starts_with("Could not deliver"));
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no notice of an undelivered message in the broken chat's room");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(body(&notice).contains("to Telegram"), "{}", body(&notice));
    assert!(!body(&notice).contains("500"), "the notice carries no internal error: {}", body(&notice));
    let listed = mosaic(slot, &["jobs", "list"]).expect_success();
    let queue = format!("chat:telegram:{BROKEN_CHAT}");
    assert!(listed.lines().any(|l| l.contains(&queue) && l.contains("\tsend\t")), "{listed}");
    let metrics = reqwest::get(format!("{}/metrics", slot.url())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("mosaic_dead_letters{queue=\"telegram\""), "{metrics}");
}

/// The faults, spread over the run: rate limits and errors from both bridges, a SIGKILL
/// and restart of mosaic-as, and a homeserver outage.
async fn inject_faults(
    round: usize,
    rounds: usize,
    telegram: &FakeTelegram,
    discord: &FakeDiscord,
    slot: &support::Slot,
    service: &mut Option<Service>,
) {
    let at = |fraction: f64| round == ((rounds as f64 * fraction) as usize).min(rounds - 1);
    if at(0.2) {
        telegram.fail_next(4, 429, Some(1));
        discord.fail_next(4, 429, 0.5);
    }
    if at(0.35) {
        telegram.fail_next(3, 500, None);
        discord.fail_next(3, 500, 0.0);
    }
    if at(0.5) {
        // A crash: no shutdown, no flushing; restarted a moment later.
        if let Some(mut running) = service.take() {
            running.kill();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        *service = Some(Service::start(slot).await);
    }
    if at(0.7) {
        homeserver().stop();
        tokio::time::sleep(Duration::from_secs(3)).await;
        homeserver().start_again();
    }
}

async fn count(
    written: &[Written],
    alice: &Person,
    room: &str,
    echo: &str,
    telegram: &FakeTelegram,
    discord: &FakeDiscord,
) -> Tally {
    let mut seen: HashMap<(Surface, bool, String), usize> = HashMap::new();
    for event in alice.all_messages(room).await {
        let by_agent = event["sender"] == echo;
        let is_edit = event["content"]["m.relates_to"]["rel_type"] == "m.replace";
        if !is_edit {
            *seen
                .entry((Surface::Matrix, by_agent, without_attachment_lines(body(&event)).to_string()))
                .or_default() += 1;
        }
    }
    for sent in telegram.sent().iter().filter(|s| s.chat_id == TELEGRAM_CHAT && s.kind != SentKind::Edit) {
        let by_agent = sent.text.starts_with("Echo");
        *seen.entry((Surface::Telegram, by_agent, tail(&sent.text))).or_default() += 1;
    }
    for sent in discord.sent().iter().filter(|s| s.channel_id == DISCORD_CHANNEL && !s.deleted) {
        let by_agent = sent.username.as_deref() == Some("Echo") || sent.content.starts_with("**Echo**");
        *seen.entry((Surface::Discord, by_agent, tail(&sent.content))).or_default() += 1;
    }
    let mut tally = Tally::default();
    for message in written {
        for surface in SURFACES {
            if surface != message.surface {
                let copies = seen.get(&(surface, false, message.text.clone())).copied().unwrap_or(0);
                tally.check(format!("copy of {:?} on {surface:?}", message.text), copies);
            }
            let answers = seen.get(&(surface, true, message.text.clone())).copied().unwrap_or(0);
            tally.check(format!("answer to {:?} on {surface:?}", message.text), answers);
        }
    }
    tally
}

/// The message text without a sender-name prefix (`Name: …`, `**Name**: …`, a first line).
/// A file that was not bridged counts as its note.
fn tail(text: &str) -> String {
    const NOTE: &str = "[file not bridged: ";
    let text = without_attachment_lines(text);
    if let Some(start) = text.find(NOTE) {
        return text[start + NOTE.len()..].trim_end().trim_end_matches(']').to_string();
    }
    // A reply quote may repeat the text it answers first: the message itself comes last.
    match text.rfind("soak ") {
        Some(start) => text[start..].trim().to_string(),
        None => text.to_string(),
    }
}

/// The text without the `[attachment: …]` lines an agent's context gives files (the echo
/// agent repeats them).
fn without_attachment_lines(text: &str) -> &str {
    text.split("\n[attachment: ").next().unwrap_or(text)
}
