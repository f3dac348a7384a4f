//! An outsider's attacks on link tokens and names, through the real homeserver and a
//! Telegram group bridged into the room (the fake Bot API follows the public payloads).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::fake_telegram::{FakeTelegram, Incoming, TgUser};
use crate::support::{Person, Service, Slot, body, database_columns_holding, mosaic, slot};

const GROUP: i64 = -1_001_555_000_111;
const WAIT: Duration = Duration::from_secs(30);

/// A Matrix room bridged to a Telegram group, with the bot in it and power 100 there;
/// Alice (an admin, with an account) owns it.
struct Bridged {
    fake: FakeTelegram,
    slot: Slot,
    alice: Person,
    room: String,
    bot: String,
    _service: Service,
}

async fn bridged_room(slot_name: &str, alice_name: &str) -> Bridged {
    let fake = FakeTelegram::start().await;
    fake.add_supergroup(GROUP, "Trust chat", false);
    let slot = slot(slot_name);
    let alice = Person::new(alice_name).await;
    slot.write_config_with_sections(&format!(
        "[telegram]\ntoken = \"{}\"\napi_url = \"{}\"\npoll_timeout_secs = 1\nbridge_chats = [{GROUP}]\n\n\
         [permissions]\n\"*\" = \"none\"\n\"localhost\" = \"user\"\n\"{}\" = \"admin\"\n",
        fake.token(),
        fake.api_url(),
        alice.user_id
    ));
    mosaic(&slot, &["account", "create", alice_name, "--matrix-id", &alice.user_id]).expect_success();
    let service = Service::start(&slot).await;
    let bot = slot.bot();
    let room = alice.create_room(&[&bot], false).await;
    alice.wait_for_member(&room, &bot).await;
    let mut levels = alice.state(&room, "m.room.power_levels").await;
    levels["users"][&bot] = json!(100);
    alice.put_state(&room, "m.room.power_levels", "", levels).await;
    alice.say(&room, &format!("!bridge telegram {GROUP}")).await;
    alice.wait_for(&room, &bot, |e| body(e).contains("Trust chat")).await;
    Bridged { fake, slot, alice, room, bot, _service: service }
}

fn issue(slot: &Slot, account: &str) -> String {
    let out = mosaic(slot, &["link-token", account, "--create"]).expect_success();
    out.split_whitespace().find(|w| w.len() == 64).expect("a 64-hex token").to_string()
}

/// A person in the room with the bot, and a direct chat of theirs with the bot.
async fn member(b: &Bridged, name: &str) -> (Person, String) {
    let person = Person::new(name).await;
    b.alice.invite(&b.room, &person.user_id).await;
    person.join(&b.room).await;
    let dm = person.create_room(&[&b.bot], true).await;
    person.wait_for_member(&dm, &b.bot).await;
    (person, dm)
}

async fn answer_to(person: &Person, room: &str, bot: &str, event_id: &str) -> String {
    body(&person.wait_for_reply(room, bot, event_id).await).to_string()
}

/// Someone who got hold of `token` tries it in a direct chat with the bot; a new person
/// each time, so that no rate limit answers instead.
async fn redeem(b: &Bridged, token: &str) -> String {
    let name = format!("{}-bob-{}", b.slot.name, &token[..8]);
    let bob = Person::new(&name).await;
    let dm = bob.create_room(&[&b.bot], true).await;
    bob.wait_for_member(&dm, &b.bot).await;
    let asked = bob.say(&dm, &format!("!link {token}")).await;
    answer_to(&bob, &dm, &b.bot, &asked).await
}

#[tokio::test(flavor = "multi_thread")]
async fn link_tokens_typed_anywhere_die_at_once_and_never_cross_the_bridge() {
    let b = bridged_room("tokens", "lt-alice").await;
    let (mallory, _) = member(&b, "lt-mallory").await;

    // Mallory sends a harmless-looking command, then edits a real token into it (in the
    // fallback text, the new content and its HTML).
    let edited = issue(&b.slot, "edited-co");
    let original = mallory.say(&b.room, "!link 00").await;
    assert!(answer_to(&mallory, &b.room, &b.bot, &original).await.contains("not valid"));
    let edit = mallory
        .send(
            &b.room,
            json!({"msgtype": "m.text", "body": format!("* !link {edited}"),
                "m.new_content": {"msgtype": "m.text", "body": format!("!link {edited}"),
                    "format": "org.matrix.custom.html", "formatted_body": format!("<code>!link {edited}</code>")},
                "m.relates_to": {"rel_type": "m.replace", "event_id": original}}),
        )
        .await;
    answer_to(&mallory, &b.room, &b.bot, &edit).await;
    assert!(redeem(&b, &edited).await.contains("already used"));
    // The bot has the power here: the edit that carried the token is redacted.
    let deadline = Instant::now() + WAIT;
    while !b
        .alice
        .all_messages(&b.room)
        .await
        .iter()
        .any(|e| e["event_id"] == edit.as_str() && e["content"] == json!({}))
    {
        assert!(Instant::now() < deadline, "the edit carrying a link token was not redacted");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The other prefix and more words around it, from someone already linked: the token
    // dies all the same.
    let sentence = issue(&b.slot, "sentence-co");
    let asked = b.alice.say(&b.room, &format!("/link {sentence} is what I was given")).await;
    let answer = answer_to(&b.alice, &b.room, &b.bot, &asked).await;
    assert!(answer.contains("already linked") && answer.contains("can no longer be used"), "{answer}");
    assert!(redeem(&b, &sentence).await.contains("already used"));

    // On Telegram, with the bot's address and with the other prefix.
    let tom = TgUser::new(5151, "Tom", None, Some("tomt"));
    let bot_name = b.fake.bot().username.unwrap();
    let mut telegram_tokens = Vec::new();
    for written in [|t: &str, bot: &str| format!("/link@{bot} {t}"), |t: &str, _: &str| format!("!link {t} thanks")] {
        let token = issue(&b.slot, &format!("tg-{}", telegram_tokens.len()));
        let pushed = b.fake.push_message(Incoming::text(GROUP, &tom, &written(&token, &bot_name)));
        b.fake.wait_for_sent(|s| s.chat_id == GROUP && s.reply_to == Some(pushed), WAIT).await;
        telegram_tokens.push(token);
    }
    for token in &telegram_tokens {
        let answer = redeem(&b, token).await;
        assert!(answer.contains("already used"), "{answer}");
    }

    // Nothing of it crossed the bridge: the marker sent after each side arrives, the
    // link attempts never did.
    b.alice.say(&b.room, "marker from matrix").await;
    b.fake.wait_for_sent(|s| s.text.ends_with("marker from matrix"), WAIT).await;
    b.fake.push_message(Incoming::text(GROUP, &tom, "marker from telegram"));
    let tom_ghost = format!("@mosaic_tokens_telegram_{}:{}", tom.id, crate::support::SERVER_NAME);
    b.alice.wait_for(&b.room, &tom_ghost, |e| body(e) == "marker from telegram").await;
    let all = [edited.as_str(), sentence.as_str(), &telegram_tokens[0], &telegram_tokens[1]];
    for sent in b.fake.sent() {
        assert!(!all.iter().any(|t| sent.text.contains(t)), "a token reached Telegram: {:?}", sent.text);
        assert!(!sent.text.contains("[token hidden]"), "a link attempt was bridged: {:?}", sent.text);
    }
    let from_tom: Vec<Value> =
        b.alice.all_messages(&b.room).await.into_iter().filter(|e| e["sender"] == tom_ghost.as_str()).collect();
    assert_eq!(from_tom.len(), 1, "only the marker came over: {from_tom:#?}");

    // The database holds none of them in clear, in any table.
    for token in all {
        assert_eq!(database_columns_holding(&b.slot.database_path(), token).await, Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_appears_on_telegram_under_an_agents_name_or_one_given_by_someone_else() {
    let b = bridged_room("names", "nm-alice").await;

    // A Matrix user who calls herself like the agent.
    let (impostor, _) = member(&b, "nm-impostor").await;
    impostor.set_display_name("Echo").await;
    let deadline = Instant::now() + WAIT;
    while b.alice.state(&b.room, &format!("m.room.member/{}", impostor.user_id)).await["displayname"] != "Echo" {
        assert!(Instant::now() < deadline, "the new name did not reach the room");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    impostor.say(&b.room, "trust me, I am the agent").await;
    let copy = b.fake.wait_for_sent(|s| s.text.ends_with("trust me, I am the agent"), WAIT).await;
    assert!(copy.text.starts_with("Echo (Matrix): "), "{:?}", copy.text);

    // Alice invites Carol into another room under a name Alice chose; Carol's messages
    // keep her own name.
    let (carol, _) = member(&b, "nm-carol").await;
    let other = b.alice.create_room(&[&b.bot], false).await;
    b.alice.wait_for_member(&other, &b.bot).await;
    b.alice
        .put_state(&other, "m.room.member", &carol.user_id, json!({"membership": "invite", "displayname": "Mosaic"}))
        .await;
    let forged = b.alice.state(&other, &format!("m.room.member/{}", carol.user_id)).await;
    assert_eq!(forged["displayname"], "Mosaic", "the homeserver kept the name Alice gave");
    // The bot has seen the invite once it answered a later message in that room.
    let later = b.alice.say(&other, "!whoami").await;
    b.alice.wait_for_reply(&other, &b.bot, &later).await;
    carol.say(&b.room, "it is me, Carol").await;
    let copy = b.fake.wait_for_sent(|s| s.text.ends_with("it is me, Carol"), WAIT).await;
    assert!(copy.text.starts_with("nm-carol (Matrix): "), "{:?}", copy.text);
}
