//! Deletions mirrored across a bridge: a message deleted on Discord is taken away from
//! Matrix, Telegram and another Discord channel, and nothing is posted in its place; a
//! surface without a copy of it is left alone.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::fake_discord::FakeDiscord;
use crate::support::fake_telegram::FakeTelegram;
use crate::support::{Person, Service, body, slot};

const GUILD: u64 = 730_000_000_000_000_001;
const GENERAL: u64 = 730_000_000_000_000_002;
const RANDOM: u64 = 730_000_000_000_000_003;
const DAN: u64 = 730_000_000_000_000_100;
const GROUP: i64 = -1_007_300_000_001;
const WAIT: Duration = Duration::from_secs(30);

fn sections(discord: &FakeDiscord, telegram: &FakeTelegram, admin: &str) -> String {
    format!(
        "[discord]\ntoken = \"{}\"\napi_url = \"{}\"\nbridge_guilds = [{GUILD}]\n\n\
         [telegram]\ntoken = \"{}\"\napi_url = \"{}\"\npoll_timeout_secs = 1\nbridge_chats = [{GROUP}]\n\n\
         [permissions]\n\"*\" = \"none\"\n\"localhost\" = \"user\"\n\"{admin}\" = \"admin\"\n\
         [permissions.discord]\nunlinked = \"relay\"\n[permissions.telegram]\nunlinked = \"relay\"\n",
        discord.token(),
        discord.api_url(),
        telegram.token(),
        telegram.api_url()
    )
}

async fn wait_redacted(person: &Person, room: &str, copy: &Value) {
    let id = copy["event_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let events = person.messages(room).await;
        if events.iter().any(|e| e["event_id"] == id.as_str() && e["content"].get("body").is_none()) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} was not redacted in Matrix");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_deleted_on_discord_disappears_from_every_other_surface_and_nothing_is_posted() {
    let discord = FakeDiscord::start().await;
    discord.add_channel(GUILD, GENERAL, "general");
    discord.add_channel(GUILD, RANDOM, "random");
    discord.add_user(DAN, "dan", Some("Dan"), false);
    let telegram = FakeTelegram::start().await;
    telegram.add_supergroup(GROUP, "Team chat", false);
    let slot = slot("deletions");
    let alice = Person::new("del-alice").await;
    slot.write_config_with_sections(&sections(&discord, &telegram, &alice.user_id));
    let _service = Service::start(&slot).await;
    let echo = slot.agent("echo");
    let room = alice.create_room(&[&echo], true).await;
    alice.wait_for_member(&room, &echo).await;
    alice.bridge(&room, &echo, "discord", GENERAL, "general").await;
    alice.bridge(&room, &echo, "discord", RANDOM, "random").await;
    let dan = format!("@mosaic_deletions_discord_{DAN}:{}", crate::support::SERVER_NAME);

    // Said before Telegram was bridged: Telegram has no copy of it.
    let early = discord.user_says(GENERAL, DAN, "before telegram").send();
    let early_copy = alice.wait_for(&room, &dan, |e| body(e) == "before telegram").await;
    alice.bridge(&room, &echo, "telegram", GROUP, "Team chat").await;

    let typo = discord.user_says(GENERAL, DAN, "wrong chat, sorry").send();
    let typo_copy = alice.wait_for(&room, &dan, |e| body(e) == "wrong chat, sorry").await;
    let on_telegram = telegram
        .wait_for_sent(|s| s.chat_id == GROUP && s.text == "Dan (Discord): wrong chat, sorry", WAIT)
        .await
        .message_id;
    let in_random = discord
        .wait_for_sent(|s| s.channel_id == RANDOM && s.content == "wrong chat, sorry", WAIT)
        .await
        .expect("Dan's message reaches #random");
    let deleted_at = std::time::Instant::now();

    // The one without a Telegram copy goes from Matrix only.
    discord.user_deletes(GENERAL, early);
    wait_redacted(&alice, &room, &early_copy).await;
    // The other goes from both.
    discord.user_deletes(GENERAL, typo);
    wait_redacted(&alice, &room, &typo_copy).await;
    let deadline = Instant::now() + WAIT;
    while !telegram.deleted().contains(&(GROUP, on_telegram)) {
        assert!(Instant::now() < deadline, "the Telegram copy was not deleted: {:#?}", telegram.sent());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(telegram.message(GROUP, on_telegram).is_none());
    let deadline = Instant::now() + WAIT;
    while !discord.sent().iter().any(|s| s.id == in_random.id && s.deleted) {
        assert!(Instant::now() < deadline, "the copy in #random was not deleted: {:#?}", discord.sent());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing stands in for them anywhere, and nothing else was taken away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(telegram.deleted(), [(GROUP, on_telegram)]);
    let posted: Vec<_> = telegram.sent().into_iter().filter(|s| s.at >= deleted_at).collect();
    assert!(posted.is_empty(), "posted on Telegram for a deletion: {posted:#?}");
    assert!(!telegram.sent().iter().any(|s| s.text.contains('…')));
    let posted: Vec<_> = discord.sent().into_iter().filter(|s| s.at >= deleted_at).collect();
    assert!(posted.is_empty(), "posted on Discord for a deletion: {posted:#?}");
    let dans: Vec<_> = alice
        .messages(&room)
        .await
        .into_iter()
        .filter(|e| e["sender"] == dan.as_str() && !body(e).is_empty())
        .collect();
    assert!(dans.is_empty(), "Dan's messages left in Matrix: {dans:#?}");
}
