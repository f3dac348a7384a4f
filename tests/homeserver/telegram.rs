//! A Telegram group bridged into a conversation, through the real homeserver and the real
//! teloxide client talking to a fake Bot API.

use std::time::Duration;

use serde_json::Value;

use crate::support::fake_telegram::{FakeTelegram, Incoming, SentKind, TgUser};
use crate::support::{Person, Service, body, mosaic, reply_target, slot};

const GROUP: i64 = -1_001_234_567_890;
const WAIT: Duration = Duration::from_secs(30);

fn telegram_section(fake: &FakeTelegram, admin: &str) -> String {
    format!(
        "[telegram]\ntoken = \"{}\"\napi_url = \"{}\"\npoll_timeout_secs = 1\nbridge_chats = [{GROUP}]\n\n\
         [permissions]\n\"*\" = \"none\"\n\"localhost\" = \"user\"\n\"{admin}\" = \"admin\"\n\
         [permissions.telegram]\nunlinked = \"user\"\n",
        fake.token(),
        fake.api_url()
    )
}

/// The ghost a Telegram user appears as in this slot's namespace.
fn ghost(slot: &crate::support::Slot, telegram_id: i64) -> String {
    format!("@mosaic_{}_telegram_{telegram_id}:{}", slot.name, crate::support::SERVER_NAME)
}

fn thread_root(event: &Value) -> Option<&str> {
    let relation = &event["content"]["m.relates_to"];
    (relation["rel_type"] == "m.thread").then(|| relation["event_id"].as_str()).flatten()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_telegram_group_and_a_matrix_room_share_one_conversation() {
    let fake = FakeTelegram::start().await;
    fake.add_supergroup(GROUP, "Team chat", true);
    let slot = slot("telegram");
    let alice = Person::new("tg-alice").await;
    slot.write_config_with_sections(&telegram_section(&fake, &alice.user_id));
    mosaic(&slot, &["account", "create", "tg-alice", "--matrix-id", &alice.user_id]).expect_success();
    let _service = Service::start(&slot).await;
    let echo = slot.agent("echo");
    let room = alice.create_room(&[&echo], true).await;
    alice.wait_for_member(&room, &echo).await;

    // An admin bridges the group; the room hears how it went.
    alice.bridge(&room, &echo, "telegram", GROUP, "Team chat").await;
    // People on Telegram have no Mosaic account yet: let the agent answer them anyway.
    alice.say(&room, "!unlinked answer").await;
    alice.wait_for(&room, &echo, |e| body(e).contains("now answer people without")).await;

    // A Telegram user's message appears under a ghost with their name, and the agent,
    // addressed by name, answers on both sides.
    let tom = TgUser::new(4242, "Tom", Some("Tester"), Some("tomt"));
    let hello = fake.push_message(Incoming::text(GROUP, &tom, "hello echo from telegram"));
    let tom_ghost = ghost(&slot, tom.id);
    let bridged = alice.wait_for(&room, &tom_ghost, |e| body(e) == "hello echo from telegram").await;
    let profile: Value =
        reqwest::get(format!("{}/_matrix/client/v3/profile/{tom_ghost}", crate::support::homeserver_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(profile["displayname"], "Tom Tester (Telegram)");
    let answer = alice.wait_for(&room, &echo, |e| body(e) == "hello echo from telegram").await;
    assert_eq!(reply_target(&answer), bridged["event_id"].as_str(), "the agent answers the bridged message");
    let on_telegram =
        fake.wait_for_sent(|s| s.chat_id == GROUP && s.text.ends_with("hello echo from telegram"), WAIT).await;
    assert_eq!(on_telegram.reply_to, Some(hello), "the agent's answer replies to Tom's message in Telegram");
    assert!(on_telegram.text.starts_with("Echo"), "the agent's name leads: {:?}", on_telegram.text);

    // Tom replies to the agent's Telegram message: the Matrix copy replies to its event.
    fake.push_message(Incoming::text(GROUP, &tom, "thanks").reply_to(on_telegram.message_id));
    let reply_copy = alice.wait_for(&room, &tom_ghost, |e| body(e) == "thanks").await;
    assert_eq!(reply_target(&reply_copy), answer["event_id"].as_str());

    // A forum topic becomes a Matrix thread rooted at the topic's first bridged message.
    fake.push_message(Incoming::text(GROUP, &tom, "topic starts").in_topic(77));
    let root = alice.wait_for(&room, &tom_ghost, |e| body(e) == "topic starts").await;
    fake.push_message(Incoming::text(GROUP, &tom, "inside the topic").in_topic(77));
    let threaded = alice.wait_for(&room, &tom_ghost, |e| body(e) == "inside the topic").await;
    assert_eq!(thread_root(&threaded), root["event_id"].as_str());

    // Matrix → Telegram: the sender's name, MarkdownV2 that shows exactly what was written.
    let text = "Plan: **ship** v1.2 (today) - ok? #1 [x] a_b!";
    alice.say(&room, text).await;
    let copy = fake.wait_for_sent(|s| s.chat_id == GROUP && s.raw.contains("ship"), WAIT).await;
    assert_eq!(copy.parse_mode.as_deref(), Some("MarkdownV2"));
    assert!(copy.text.starts_with("tg-alice (Matrix): "), "the sender's name and surface lead: {:?}", copy.text);
    assert!(copy.text.ends_with("Plan: ship v1.2 (today) - ok? #1 [x] a_b!"), "{:?}", copy.text);
    assert!(copy.has_entity("bold", "ship"), "{copy:?}");

    // Files cross in both directions through the homeserver's media repository.
    let photo = b"\x89PNG fake photo bytes".to_vec();
    fake.push_message(Incoming::photo(GROUP, &tom, &photo, Some("a photo")));
    let image = alice.wait_for(&room, &tom_ghost, |e| e["content"]["msgtype"] == "m.image").await;
    assert_eq!(body(&image), "a photo");
    let mxc = image["content"]["url"].as_str().expect("an mxc URL").trim_start_matches("mxc://").to_string();
    let downloaded = alice.http_get_bytes(&format!("/_matrix/client/v1/media/download/{mxc}")).await;
    assert_eq!(downloaded, photo, "the Matrix copy has the photo's bytes");
    let document = b"%PDF-1.4 a small document".to_vec();
    let uploaded = alice.upload(&document, "application/pdf", "notes.pdf").await;
    alice
        .send(
            &room,
            serde_json::json!({"msgtype": "m.file", "body": "notes.pdf", "url": uploaded,
            "info": {"mimetype": "application/pdf", "size": document.len()}}),
        )
        .await;
    let sent_file = fake.wait_for_sent(|s| s.kind == SentKind::Document, WAIT).await;
    assert_eq!(sent_file.file.as_ref().map(|(_, bytes)| bytes.clone()), Some(document));

    // A 429 delays the next message but delivers it once.
    fake.fail_next(1, 429, Some(1));
    alice.say(&room, "after the rate limit").await;
    fake.wait_for_sent(|s| s.text.ends_with("after the rate limit"), WAIT).await;

    // Tom links his account in a private chat with the bot; Matrix sees the link.
    let token = mosaic(&slot, &["link-token", "tg-alice"]).expect_success();
    let token = token.split_whitespace().find(|w| w.len() == 64).expect("a 64-hex token").to_string();
    fake.push_message(Incoming::text(tom.id, &tom, &format!("/link@{} {token}", fake.bot().username.unwrap())));
    let linked = fake.wait_for_sent(|s| s.chat_id == tom.id && s.text.contains("Linked"), WAIT).await;
    assert!(linked.text.contains("tg-alice"), "{:?}", linked.text);
    alice.say(&room, "!whoami").await;
    alice.wait_for(&room, &echo, |e| body(e).contains("telegram 4242")).await;

    // Nothing came back: each message exists once in Matrix, and Telegram never got
    // its own messages back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = alice.messages(&room).await;
    for text in ["hello echo from telegram", "thanks", "topic starts", "inside the topic"] {
        let copies = events.iter().filter(|e| body(e) == text && e["sender"] == tom_ghost.as_str()).count();
        assert_eq!(copies, 1, "{text:?} appears {copies} times in Matrix");
    }
    let sent = fake.sent();
    for text in ["hello echo from telegram", "thanks", "topic starts", "inside the topic"] {
        let echoed = sent.iter().filter(|s| s.kind != SentKind::Edit && s.text == text).count();
        assert_eq!(echoed, 0, "{text:?} was sent back to Telegram");
    }
    let copies: Vec<&str> = sent
        .iter()
        .filter(|s| s.kind != SentKind::Edit && s.text.ends_with("after the rate limit"))
        .map(|s| s.text.as_str())
        .collect();
    assert_eq!(copies.len(), 2, "Alice's message and the agent's answer, each once: {copies:?}");

    // After `!unbridge`, the group's messages stay in Telegram.
    alice.say(&room, "!unbridge telegram").await;
    alice.wait_for(&room, &echo, |e| body(e).starts_with("Unbridged telegram")).await;
    fake.push_message(Incoming::text(GROUP, &tom, "after the unbridge echo"));
    let deadline = std::time::Instant::now() + WAIT;
    while fake.pending_updates() > 0 {
        assert!(std::time::Instant::now() < deadline, "the update was never taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = alice.messages(&room).await;
    assert!(!events.iter().any(|e| body(e) == "after the unbridge echo"), "an unbridged chat still reaches Matrix");
}

/// `!bridge` to a Telegram whose API keeps failing does not stay at "Bridging…": after
/// `[delivery]`'s retries the room is told, the chat is not bridged, and an admin sees
/// the dead letter. Once Telegram is well again, bridging works.
#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_whose_surface_keeps_failing_is_given_up_with_a_notice() {
    let fake = FakeTelegram::start().await;
    fake.add_supergroup(GROUP, "Team chat", true);
    let slot = slot("giveup");
    let alice = Person::new("gu-alice").await;
    let delivery = "\n[delivery]\nmax_attempts = 2\nmax_backoff_secs = 1\n";
    slot.write_config_with_sections(&format!("{}{delivery}", telegram_section(&fake, &alice.user_id)));
    mosaic(&slot, &["account", "create", "gu-alice", "--matrix-id", &alice.user_id]).expect_success();
    let _service = Service::start(&slot).await;
    let echo = slot.agent("echo");
    let room = alice.create_room(&[&echo], true).await;
    alice.wait_for_member(&room, &echo).await;

    fake.fail_next(1_000, 500, None);
    alice.say(&room, &format!("!bridge telegram {GROUP}")).await;
    // teloxide waits 10 s after every 5xx: two tries of three requests take a minute.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let given_up = loop {
        let found = alice.messages(&room).await.into_iter().find(|e| body(e).starts_with("Could not bridge"));
        if let Some(found) = found {
            break found;
        }
        assert!(std::time::Instant::now() < deadline, "the room was not told that bridging was given up");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(given_up["sender"], echo.as_str());
    assert!(
        body(&given_up).contains(&GROUP.to_string()) && body(&given_up).contains("kept failing"),
        "{}",
        body(&given_up)
    );
    assert!(!body(&given_up).contains("Internal Server Error"), "no internal error in chat: {}", body(&given_up));
    let listed = mosaic(&slot, &["jobs", "list"]).expect_success();
    assert!(listed.lines().any(|l| l.contains(&format!("chat:telegram:{GROUP}"))), "{listed}");

    // Not bridged: Telegram hears nothing from the room.
    alice.say(&room, "only for matrix").await;
    alice.wait_for(&room, &echo, |e| body(e) == "only for matrix").await;
    assert!(fake.sent().iter().all(|s| !s.text.contains("only for matrix")), "{:?}", fake.sent());

    fake.heal();
    alice.bridge(&room, &echo, "telegram", GROUP, "Team chat").await;
    alice.say(&room, "now for both").await;
    fake.wait_for_sent(|s| s.chat_id == GROUP && s.text.ends_with("now for both"), WAIT).await;
}
