//! Attacks on a room by people without the power to change it: a member at power 0 tries
//! the room commands, and nothing changes.

use serde_json::Value;

use crate::support::{Person, SERVER_NAME, Service, Slot, body, slot};

/// Sends a command and returns the bot's answer (a notice replying to it).
async fn command(person: &Person, room: &str, bot: &str, text: &str) -> String {
    let asked = person.say(room, text).await;
    let answer = person.wait_for_reply(room, bot, &asked).await;
    assert_eq!(answer["content"]["msgtype"], "m.notice", "command answers are notices");
    body(&answer).to_string()
}

/// One row of the slot's database, read while the service runs.
async fn query(slot: &Slot, sql: &str, room: &str) -> Option<(Option<i64>,)> {
    let url = format!("sqlite://{}?mode=ro", slot.database_path().display());
    mosaic_as::store::install_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.unwrap();
    sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string())).bind(room.to_string()).fetch_optional(&mut conn).await.unwrap()
}

async fn retention_of(slot: &Slot, room: &str) -> Option<Option<i64>> {
    query(slot, "SELECT retention_days FROM room_retention_policies WHERE room_id = $1", room).await.map(|(d,)| d)
}

async fn archived_at(slot: &Slot, room: &str) -> Option<i64> {
    query(slot, "SELECT c.archived_at FROM conversations c JOIN conversation_matrix_rooms r ON r.conversation_id = c.id WHERE r.room_id = $1", room)
        .await
        .and_then(|(at,)| at)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_without_power_cannot_change_the_room() {
    let slot = slot("power");
    let carol_id = format!("@power-carol:{SERVER_NAME}");
    slot.write_config_with_sections(&format!("[admin]\nmatrix_users = [\"{carol_id}\"]\n"));
    let _service = Service::start(&slot).await;
    let bot = slot.bot();
    let alice = Person::new("power-alice").await;
    let mallory = Person::new("power-mallory").await;
    let carol = Person::new("power-carol").await;
    assert_eq!(carol.user_id, carol_id);

    // Alice asks for a conversation room: she owns it, at power 100.
    let dm = alice.create_room(&[&bot], true).await;
    alice.wait_for_member(&dm, &bot).await;
    command(&alice, &dm, &bot, "!new Plans").await;
    let (room, _) = alice.wait_for_invite_named("Mosaic: Plans").await;
    alice.join(&room).await;
    let power: Value = alice.state(&room, "m.room.power_levels").await;
    assert_eq!(power["users"][&alice.user_id], 100);
    // She invites Mallory and Carol, who come in at the default power 0.
    for person in [&mallory, &carol] {
        alice.invite(&room, &person.user_id).await;
        person.join(&room).await;
    }
    alice.wait_for_member(&room, &mallory.user_id).await;

    // Mallory tries every room command: each is refused with the level it needs.
    let refusals = [
        ("!retention 1", "Changing retention needs power level 100 in this room; you have 0."),
        ("!rename Mallory's room", "Renaming this conversation needs power level 50 in this room; you have 0."),
        ("!archive", "Archiving this conversation needs power level 100 in this room; you have 0."),
        (
            "!unlinked answer",
            "Changing whether agents answer unlinked people needs power level 50 in this room; you have 0.",
        ),
        ("!mention-only on", "Changing mention-only needs power level 50 in this room; you have 0."),
        ("!agent echo", "Choosing the room's agent needs power level 50 in this room; you have 0."),
        ("!invite echo", "Inviting an agent needs power level 50 in this room; you have 0."),
        ("!unshare", "Ending the share needs power level 100 in this room; you have 0."),
    ];
    for (attack, refusal) in refusals {
        assert_eq!(command(&mallory, &room, &bot, attack).await, refusal, "{attack}");
    }
    // An edit into a command is no way around it.
    let sent = mallory.say(&room, "typo").await;
    mallory
        .send(
            &room,
            serde_json::json!({
                "msgtype": "m.text", "body": "* !retention 1",
                "m.new_content": {"msgtype": "m.text", "body": "!retention 1"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": sent},
            }),
        )
        .await;
    // Nothing changed: Alice's next command is answered after all of Mallory's.
    assert!(command(&alice, &room, &bot, "!whoami").await.contains(&alice.user_id));
    assert_eq!(alice.state(&room, "m.room.name").await["name"], "Mosaic: Plans");
    assert_eq!(retention_of(&slot, &room).await, None, "no retention policy was set");
    assert_eq!(archived_at(&slot, &room).await, None, "the conversation is not archived");
    assert_eq!(alice.state(&room, "m.room.power_levels").await["events_default"], 0, "the room is not read-only");

    // The owner may, but not below the service's minimum.
    assert!(command(&alice, &room, &bot, "!retention 0").await.contains("at least 1 day(s)"));
    assert_eq!(retention_of(&slot, &room).await, None);
    assert!(command(&alice, &room, &bot, "!retention 2").await.contains("2 day(s)"));
    assert_eq!(retention_of(&slot, &room).await, Some(Some(2)));

    // An admin of the service needs no power in the room.
    let renamed = command(&carol, &room, &bot, "!rename Carol's plans").await;
    assert!(renamed.contains("Renamed"), "{renamed}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while alice.state(&room, "m.room.name").await["name"] != "Mosaic: Carol's plans" {
        assert!(std::time::Instant::now() < deadline, "the admin's rename did not reach the room");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
