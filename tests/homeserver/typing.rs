//! Signs that an agent is at work, as people see them: its ghost typing in the Matrix
//! room (and the bot typing in bridged Discord and Telegram chats) while it works on an
//! answer, not after; its read receipt on the message it took up; and a coding agent's
//! progress line while it runs tools. People typing on one surface show on the others.

use std::time::{Duration, Instant};

use crate::support::fake_discord::FakeDiscord;
use crate::support::fake_telegram::FakeTelegram;
use serde_json::Value;

use crate::support::{Person, Service, Slot, body, mosaic, reply_target, slot};

/// An agent that thinks for a while before its answer, which comes all at once.
fn slow_agent(seconds: u32) -> String {
    format!(
        r#"
[[agent]]
id = "slow"
display_name = "Slow"
runtime = "command"
command = ["sh", "-c", "cat > /dev/null; sleep {seconds}; echo 'done thinking'"]
"#
    )
}

/// Waits until `check` holds, asking `probe` again and again; fails after `within`.
async fn eventually<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    within: Duration,
    what: &str,
    mut probe: impl FnMut() -> F,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let value = probe().await;
        if check(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}; last seen: {value:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_types_while_it_works_and_marks_the_message_it_took_up_as_read() {
    let slot = slot("typing");
    slot.write_config_with_agents(&slow_agent(8));
    let _service = Service::start(&slot).await;
    let alice = Person::new("typing-alice").await;
    let slow = slot.agent("slow");
    let room = alice.create_room(&[&slow], true).await;
    alice.wait_for_member(&room, &slow).await;

    let asked = alice.say(&room, "are you there?").await;
    // Within a moment the agent's ghost (not the bot) types, while there is no answer yet.
    let typing = eventually(
        Duration::from_secs(5),
        "the agent's ghost is shown typing",
        || alice.typing(&room),
        |users| users.contains(&slow),
    )
    .await;
    assert_eq!(typing, std::slice::from_ref(&slow), "only the agent types");
    assert!(alice.messages(&room).await.iter().all(|e| e["sender"] != slow.as_str()), "no answer yet");
    // The message it took up shows as read by it.
    eventually(
        Duration::from_secs(5),
        "the question is marked read by the agent's ghost",
        || alice.read_by(&room, &asked),
        |readers| readers.contains(&slow),
    )
    .await;

    let answer = alice.wait_for_reply(&room, &slow, &asked).await;
    assert_eq!(body(&answer), "done thinking");
    // Cleared with the answer, not left to lapse after its 30 s.
    eventually(
        Duration::from_secs(5),
        "typing is cleared after the answer",
        || alice.typing(&room),
        |users| !users.contains(&slow),
    )
    .await;

    // `!stop` clears it too, long before the agent would have answered.
    alice.say(&room, "think again").await;
    eventually(
        Duration::from_secs(5),
        "typing again for the next question",
        || alice.typing(&room),
        |users| users.contains(&slow),
    )
    .await;
    let stop = alice.say(&room, "!stop").await;
    alice.wait_for_reply(&room, &slow, &stop).await;
    eventually(
        Duration::from_secs(4),
        "typing is cleared on !stop",
        || alice.typing(&room),
        |users| !users.contains(&slow),
    )
    .await;
}

const GUILD: u64 = 710_000_000_000_000_001;
const GENERAL: u64 = 710_000_000_000_000_002;
const DAN: u64 = 710_000_000_000_000_100;
const GROUP: i64 = -1_009_876_543_210;

/// Fake Discord (with Dan in #general) and Telegram (a group), and `slot` configured to
/// bridge them, with `agents`, Alice as its admin; the service is not started yet.
async fn bridged(slot: &Slot, alice: &Person, account: &str, agents: &str) -> (FakeDiscord, FakeTelegram) {
    let discord = FakeDiscord::start().await;
    discord.add_channel(GUILD, GENERAL, "general");
    discord.add_user(DAN, "dan", Some("Dan"), false);
    let telegram = FakeTelegram::start().await;
    telegram.add_supergroup(GROUP, "Team chat", false);
    slot.write_config_with(
        &format!(
            "[discord]\ntoken = \"{}\"\napi_url = \"{}\"\nbridge_guilds = [{GUILD}]\n\n\
             [telegram]\ntoken = \"{}\"\napi_url = \"{}\"\npoll_timeout_secs = 1\nbridge_chats = [{GROUP}]\n\n\
             [permissions]\n\"*\" = \"none\"\n\"localhost\" = \"user\"\n\"{}\" = \"admin\"\n\
             [permissions.discord]\nunlinked = \"user\"\n[permissions.telegram]\nunlinked = \"user\"\n",
            discord.token(),
            discord.api_url(),
            telegram.token(),
            telegram.api_url(),
            alice.user_id
        ),
        agents,
    );
    mosaic(slot, &["account", "create", account, "--matrix-id", &alice.user_id]).expect_success();
    (discord, telegram)
}

#[tokio::test(flavor = "multi_thread")]
async fn bridged_discord_and_telegram_chats_see_typing_before_a_slow_answer() {
    let slot = slot("bridgetyping");
    let alice = Person::new("bt-alice").await;
    let (discord, telegram) = bridged(&slot, &alice, "bt-alice", &slow_agent(10)).await;
    let _service = Service::start(&slot).await;
    let slow = slot.agent("slow");
    let room = alice.create_room(&[&slow], true).await;
    alice.wait_for_member(&room, &slow).await;
    alice.say(&room, &format!("!bridge discord {GENERAL}")).await;
    alice.wait_for(&room, &slow, |e| body(e).contains("general")).await;
    alice.say(&room, &format!("!bridge telegram {GROUP}")).await;
    alice.wait_for(&room, &slow, |e| body(e).contains("Team chat")).await;
    alice.say(&room, "!unlinked answer").await;
    alice.wait_for(&room, &slow, |e| body(e).contains("now answer people without")).await;
    assert!(discord.typing(GENERAL).is_empty() && telegram.chat_actions(GROUP).is_empty(), "no typing before a turn");

    discord.user_says(GENERAL, DAN, "Slow, are you there?").send();
    let wait = Duration::from_secs(40);
    let on_discord = discord
        .wait_for_sent(|s| s.username.as_deref() == Some("Slow") && s.content.contains("done thinking"), wait)
        .await
        .expect("the answer reaches Discord");
    let on_telegram = telegram.wait_for_sent(|s| s.chat_id == GROUP && s.text.contains("done thinking"), wait).await;
    // Renewals that kept going after the answer would show up by now.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Discord: typing every ~8 s over a 10 s turn, all of it before the answer.
    let typed = discord.typing(GENERAL);
    assert!(typed.len() >= 2, "typing shown and renewed on Discord: {typed:?}");
    assert!(typed.iter().all(|at| *at < on_discord.at), "typing on Discord after the answer: {typed:?}");
    // Telegram: the `typing` chat action every ~4 s, all of it before the answer.
    let actions = telegram.chat_actions(GROUP);
    assert!(actions.len() >= 2, "typing shown and renewed on Telegram: {actions:?}");
    assert!(actions.iter().all(|a| a.action == "typing"), "{actions:?}");
    assert!(actions.iter().all(|a| a.at < on_telegram.at), "typing on Telegram after the answer: {actions:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn people_typing_on_one_surface_show_typing_on_the_others_without_echo() {
    let slot = slot("peopletyping");
    let alice = Person::new("pt-alice").await;
    let echo = "[[agent]]\nid = \"echo\"\ndisplay_name = \"Echo\"\nruntime = \"echo\"\n";
    let (discord, telegram) = bridged(&slot, &alice, "pt-alice", echo).await;
    let _service = Service::start(&slot).await;
    let echo = slot.agent("echo");
    // A group room: the agent answers only when named, so nobody but people types here.
    let room = alice.create_room(&[&echo], false).await;
    alice.wait_for_member(&room, &echo).await;
    alice.bridge(&room, &echo, "discord", GENERAL, "general").await;
    alice.bridge(&room, &echo, "telegram", GROUP, "Team chat").await;
    assert!(discord.typing(GENERAL).is_empty() && telegram.chat_actions(GROUP).is_empty(), "nobody typed yet");

    // Alice types in Matrix: the bot types on Discord and Telegram, renewed while she goes on.
    alice.set_typing(&room, true).await;
    let within = Duration::from_secs(10);
    eventually(within, "Alice's typing reaches Discord", || async { discord.typing(GENERAL) }, |t| !t.is_empty()).await;
    eventually(within, "and Telegram", || async { telegram.chat_actions(GROUP) }, |a| !a.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    let typed = discord.typing(GENERAL);
    assert!(typed.len() >= 2, "renewed on Discord while Alice types: {typed:?}");
    let actions = telegram.chat_actions(GROUP);
    assert!(actions.len() >= 3, "renewed on Telegram while Alice types: {actions:?}");
    assert!(actions.iter().all(|a| a.action == "typing"), "{actions:?}");

    // She stops: no more renewals (neither from her nor from the bot's own typing on
    // Discord, which Discord reports back and must not be passed on).
    alice.set_typing(&room, false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (typed, actions) = (discord.typing(GENERAL).len(), telegram.chat_actions(GROUP).len());
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(discord.typing(GENERAL).len(), typed, "Discord typing renewed after Alice stopped");
    assert_eq!(telegram.chat_actions(GROUP).len(), actions, "Telegram typing renewed after Alice stopped");

    // Dan writes on Discord first, so that his ghost is in the room.
    discord.user_says(GENERAL, DAN, "hello from Discord").send();
    let said = |events: &Vec<Value>| events.iter().find(|e| body(e).contains("hello from Discord")).cloned();
    let messages =
        eventually(within, "Dan's message in the room", || alice.messages(&room), |m| said(m).is_some()).await;
    let dan = said(&messages).unwrap()["sender"].as_str().unwrap().to_string();
    // Then he types: his ghost types in Matrix, the bot on Telegram; nothing more on
    // Discord, where he types himself (his ghost's typing is not read back).
    let (typed, actions) = (discord.typing(GENERAL).len(), telegram.chat_actions(GROUP).len());
    discord.user_types(GENERAL, DAN);
    let typing = eventually(within, "Dan's ghost types in Matrix", || alice.typing(&room), |t| t.contains(&dan)).await;
    assert_eq!(typing, std::slice::from_ref(&dan), "only Dan types");
    eventually(
        within,
        "Dan's typing reaches Telegram",
        || async { telegram.chat_actions(GROUP).len() },
        |n| *n > actions,
    )
    .await;
    // His client repeats the start while he types; then he stops, and it lapses about ten
    // seconds after the last one (Discord never says that typing stopped).
    tokio::time::sleep(Duration::from_secs(6)).await;
    discord.user_types(GENERAL, DAN);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(alice.typing(&room).await.contains(&dan), "still typing 12 s after his first start");
    eventually(Duration::from_secs(10), "Dan's typing lapses", || alice.typing(&room), |t| !t.contains(&dan)).await;
    assert_eq!(discord.typing(GENERAL).len(), typed, "the ghost's typing echoed back to Discord");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coding_agent_shows_what_it_runs_in_one_line_replaced_by_its_answer() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake_acp_agent.py");
    let slot = slot("progress");
    slot.write_config_with_agents(&format!(
        "[[agent]]\nid = \"coder\"\ndisplay_name = \"Coder\"\nruntime = \"acp\"\ncommand = [\"python3\", \"{script}\"]\n"
    ));
    let _service = Service::start(&slot).await;
    let alice = Person::new("progress-alice").await;
    let coder = slot.agent("coder");
    let room = alice.create_room(&[&coder], true).await;
    alice.wait_for_member(&room, &coder).await;

    // The agent runs the tests (3 s), then reads a file (2 s), before its first words.
    let asked = alice.say(&room, "busy: run the tests").await;
    let line = alice.wait_for_reply(&room, &coder, &asked).await;
    assert_eq!(body(&line), "🔧 Run `cargo test`…", "the first thing shown is what it runs");
    let line_id = line["event_id"].as_str().unwrap().to_string();
    let edits_of_line = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace")
            .filter(|e| e["content"]["m.relates_to"]["event_id"] == line_id.as_str())
            .map(|e| e["content"]["m.new_content"]["body"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let final_text = "You said: busy: run the tests\nall tests passed";
    let edits = eventually(
        Duration::from_secs(30),
        "the line is replaced by the answer",
        || async { edits_of_line(&alice.messages(&room).await) },
        |edits| edits.last().is_some_and(|last| last == final_text),
    )
    .await;
    assert!(edits.iter().any(|e| e == "🔧 Read Cargo.toml…"), "edited in place as the next tool runs: {edits:?}");
    assert!(edits.len() <= 8, "throttled, not one edit per update: {edits:?}");
    // One message for it all: no line per tool, no second answer.
    let from_coder: Vec<Value> = alice
        .messages(&room)
        .await
        .into_iter()
        .filter(|e| e["sender"] == coder.as_str() && e["content"]["m.relates_to"]["rel_type"] != "m.replace")
        .filter(|e| reply_target(e) == Some(asked.as_str()))
        .collect();
    assert_eq!(from_coder.len(), 1, "{from_coder:?}");
}
