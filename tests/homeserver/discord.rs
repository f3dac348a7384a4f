//! A Discord channel bridged into a conversation, through the real homeserver and the real
//! serenity client talking to a fake Discord (REST and gateway).

use std::time::Duration;

use serde_json::Value;

use crate::support::fake_discord::FakeDiscord;
use crate::support::{Person, Service, body, homeserver_url, mosaic, reply_target, slot};

const GUILD: u64 = 700_000_000_000_000_001;
const GENERAL: u64 = 700_000_000_000_000_002;
const DAN: u64 = 700_000_000_000_000_100;
const WAIT: Duration = Duration::from_secs(30);

fn relation<'a>(event: &'a Value, rel_type: &str) -> Option<&'a str> {
    let relation = &event["content"]["m.relates_to"];
    (relation["rel_type"] == rel_type).then(|| relation["event_id"].as_str()).flatten()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_discord_channel_and_a_matrix_room_share_one_conversation() {
    let fake = FakeDiscord::start().await;
    fake.add_channel(GUILD, GENERAL, "general");
    fake.add_user(DAN, "dan", Some("Dan"), false);
    let slot = slot("discord");
    let alice = Person::new("dc-alice").await;
    slot.write_config_with_sections(&format!(
        "[discord]\ntoken = \"{}\"\napi_url = \"{}\"\nbridge_guilds = [{GUILD}]\n\n\
         [permissions]\n\"*\" = \"none\"\n\"localhost\" = \"user\"\n\"{}\" = \"admin\"\n\
         [permissions.discord]\nunlinked = \"user\"\n",
        fake.token(),
        fake.api_url(),
        alice.user_id
    ));
    mosaic(&slot, &["account", "create", "dc-alice", "--matrix-id", &alice.user_id]).expect_success();
    let _service = Service::start(&slot).await;
    let echo = slot.agent("echo");
    let room = alice.create_room(&[&echo], true).await;
    alice.wait_for_member(&room, &echo).await;
    alice.bridge(&room, &echo, "discord", GENERAL, "general").await;
    alice.say(&room, "!unlinked answer").await;
    alice.wait_for(&room, &echo, |e| body(e).contains("now answer people without")).await;

    // Discord → Matrix under a ghost with Dan's name; the agent answers on both sides.
    let hello = fake.user_says(GENERAL, DAN, "hello echo from discord").send();
    let dan = format!("@mosaic_discord_discord_{DAN}:{}", crate::support::SERVER_NAME);
    let copy = alice.wait_for(&room, &dan, |e| body(e) == "hello echo from discord").await;
    let profile: Value = reqwest::get(format!("{}/_matrix/client/v3/profile/{dan}", homeserver_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(profile["displayname"], "Dan (Discord)");
    let answer = alice.wait_for(&room, &echo, |e| body(e) == "hello echo from discord").await;
    assert_eq!(reply_target(&answer), copy["event_id"].as_str());
    let on_discord = fake
        .wait_for_sent(
            |s| s.username.as_deref() == Some("Echo") && s.content.ends_with("hello echo from discord"),
            WAIT,
        )
        .await
        .expect("the agent's answer reaches Discord through the webhook");
    assert!(on_discord.webhook_id.is_some());

    // Matrix → Discord through the webhook, under Alice's name.
    alice.say(&room, "hi from matrix @everyone").await;
    let from_alice = fake
        .wait_for_sent(|s| s.content.contains("hi from matrix"), WAIT)
        .await
        .expect("Alice's message reaches Discord");
    assert_eq!(from_alice.username.as_deref(), Some("dc-alice (Matrix)"), "people carry their surface");
    assert!(!from_alice.content.contains("@everyone"), "@everyone is neutralised: {:?}", from_alice.content);

    // A reply to the agent's Discord message replies to its Matrix event.
    fake.user_says(GENERAL, DAN, "thanks").reply_to(on_discord.id).send();
    let thanks = alice.wait_for(&room, &dan, |e| body(e) == "thanks").await;
    assert_eq!(reply_target(&thanks), answer["event_id"].as_str());

    // A Discord thread started on Dan's message is a Matrix thread on its copy, and a
    // Matrix reply in that thread lands in the Discord thread.
    let thread = fake.start_thread(GENERAL, hello, "hello talk");
    fake.user_says(thread, DAN, "in the thread").send();
    let threaded = alice.wait_for(&room, &dan, |e| body(e) == "in the thread").await;
    assert_eq!(relation(&threaded, "m.thread"), copy["event_id"].as_str());
    let copy_id = copy["event_id"].as_str().unwrap();
    alice
        .send(
            &room,
            serde_json::json!({"msgtype": "m.text", "body": "matrix in thread",
                "m.relates_to": {"rel_type": "m.thread", "event_id": copy_id, "is_falling_back": true,
                                 "m.in_reply_to": {"event_id": copy_id}}}),
        )
        .await;
    let in_thread =
        fake.wait_for_sent(|s| s.content.contains("matrix in thread"), WAIT).await.expect("reaches the thread");
    assert_eq!(in_thread.thread_id.or(Some(in_thread.channel_id)), Some(thread));

    // Edits and deletions follow.
    let typo = fake.user_says(GENERAL, DAN, "teh typo").send();
    let typo_copy = alice.wait_for(&room, &dan, |e| body(e) == "teh typo").await;
    fake.user_edits(GENERAL, typo, "the typo");
    let edit = alice.wait_for(&room, &dan, |e| e["content"]["m.new_content"]["body"] == "the typo").await;
    assert_eq!(relation(&edit, "m.replace"), typo_copy["event_id"].as_str());
    fake.user_deletes(GENERAL, typo);
    let typo_id = typo_copy["event_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let events = alice.messages(&room).await;
        let redacted = |e: &&Value| e["event_id"] == typo_id.as_str() && e["content"].get("body").is_none();
        if events.iter().any(|e| redacted(&e)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the deleted message was not redacted in Matrix");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A gateway drop loses nothing: what was said meanwhile arrives after the resume.
    fake.drop_gateway();
    fake.user_says(GENERAL, DAN, "said while the gateway was down").send();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fake.restore_gateway();
    alice.wait_for(&room, &dan, |e| body(e) == "said while the gateway was down").await;

    // A 429 delays a message but delivers it once.
    fake.fail_next(1, 429, 0.5);
    alice.say(&room, "after the rate limit").await;
    fake.wait_for_sent(|s| s.content.contains("after the rate limit"), WAIT).await.expect("delivered after a 429");

    // Dan links his account with /link; Matrix sees it.
    let token = mosaic(&slot, &["link-token", "dc-alice"]).expect_success();
    let token = token.split_whitespace().find(|w| w.len() == 64).expect("a 64-hex token").to_string();
    fake.user_runs_link(GENERAL, DAN, Some(&token));
    let linked = fake.wait_for_sent(|s| s.content.contains("Linked"), WAIT).await.expect("the /link answer");
    assert!(linked.ephemeral || linked.channel_id != GENERAL, "the answer is private: {linked:?}");
    alice.say(&room, "!whoami").await;
    alice.wait_for(&room, &echo, |e| body(e).contains(&format!("discord {DAN}"))).await;

    // Dan, linked now, sends more tokens: as text with the other prefix and more words,
    // and with /link. Both die at once; Bob cannot use them afterwards.
    let bob = Person::new("dc-bob").await;
    let bob_dm = bob.create_room(&[&slot.bot()], true).await;
    bob.wait_for_member(&bob_dm, &slot.bot()).await;
    for (i, slash) in [false, true].into_iter().enumerate() {
        let spare = mosaic(&slot, &["link-token", "dc-alice"]).expect_success();
        let spare = spare.split_whitespace().find(|w| w.len() == 64).expect("a 64-hex token").to_string();
        match slash {
            false => {
                fake.user_says(GENERAL, DAN, &format!("/link {spare} is mine too")).send();
            }
            true => {
                fake.user_runs_link(GENERAL, DAN, Some(&spare));
            }
        }
        let deadline = std::time::Instant::now() + WAIT;
        while fake.sent().iter().filter(|s| s.content.contains("can no longer be used")).count() <= i {
            assert!(std::time::Instant::now() < deadline, "no answer to Dan's token {i}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let asked = bob.say(&bob_dm, &format!("!link {spare}")).await;
        let refused = body(&bob.wait_for_reply(&bob_dm, &slot.bot(), &asked).await).to_string();
        assert!(refused.contains("already used"), "{refused}");
    }

    // Nothing came back: Discord never got Dan's messages back, Matrix has one copy each.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = fake.sent();
    for text in ["hello echo from discord", "thanks", "in the thread", "said while the gateway was down"] {
        let echoed = sent.iter().filter(|s| s.username.as_deref() != Some("Echo") && s.content.ends_with(text)).count();
        assert_eq!(echoed, 0, "{text:?} was sent back to Discord");
    }
    let limited = sent.iter().filter(|s| s.content.contains("after the rate limit")).count();
    assert_eq!(limited, 2, "Alice's message and the agent's answer, once each");
    let events = alice.messages(&room).await;
    let bridged_links: Vec<&str> =
        events.iter().filter(|e| e["sender"] == dan.as_str() && body(e).contains("link")).map(body).collect();
    assert!(bridged_links.is_empty(), "link attempts were bridged: {bridged_links:?}");
    for text in ["hello echo from discord", "thanks", "in the thread", "said while the gateway was down"] {
        let copies = events.iter().filter(|e| body(e) == text && e["sender"] == dan.as_str()).count();
        assert_eq!(copies, 1, "{text:?} appears {copies} times in Matrix");
    }
}
