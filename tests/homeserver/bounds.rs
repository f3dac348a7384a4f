//! Bounds a person runs into: an answer that would not end is cut with a note, and the
//! commands that make the service do costly work are limited per person.

use serde_json::Value;

use crate::support::{Person, Service, body, slot};

/// The text a message shows: its edit's new content, or its body.
fn text(event: &Value) -> &str {
    event["content"]["m.new_content"]["body"].as_str().unwrap_or_else(|| body(event))
}

async fn command(person: &Person, room: &str, bot: &str, line: &str) -> String {
    let asked = person.say(room, line).await;
    body(&person.wait_for_reply(room, bot, &asked).await).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_answer_is_cut_with_a_note_and_costly_commands_are_limited_per_person() {
    let slot = slot("bounds");
    slot.write_config_with(
        "[limits]\ncommand_burst = 2\ncommand_refill_secs = 3600\n",
        // Prints far more than its limit, then would run until its timeout: only the cut
        // ends this turn in time.
        r#"
[[agent]]
id = "talker"
display_name = "Talker"
runtime = "command"
command = ["sh", "-c", "cat > /dev/null; i=0; while [ $i -lt 200 ]; do echo 'a line of the answer that goes on'; i=$((i+1)); done; sleep 600"]
max_answer_chars = 1000
"#,
    );
    let _service = Service::start(&slot).await;
    let alice = Person::new("bounds-alice").await;
    let talker = slot.agent("talker");
    let room = alice.create_room(&[&talker], true).await;
    alice.wait_for_member(&room, &talker).await;

    alice.say(&room, "tell me everything").await;
    let cut = alice.wait_for(&room, &talker, |e| text(e).contains("answer cut at 1,000 characters")).await;
    let shown = text(&cut);
    let (answer, note) = shown.rsplit_once("\n\n").expect("the note follows the answer");
    assert_eq!(note, "*(… answer cut at 1,000 characters)*");
    assert!(answer.chars().count() <= 1000, "{} characters", answer.chars().count());
    assert!(answer.starts_with("a line of the answer that goes on\n"), "{answer}");

    // Two rooms in a row are fine; the third is refused with when to try again.
    let bot = slot.bot();
    let dm = alice.create_room(&[&bot], true).await;
    alice.wait_for_member(&dm, &bot).await;
    for title in ["One", "Two"] {
        let created = command(&alice, &dm, &bot, &format!("!new {title}")).await;
        assert!(created.contains(&format!("Mosaic: {title}")), "{created}");
    }
    let refused = command(&alice, &dm, &bot, "!new Three").await;
    assert!(refused.starts_with("You sent `!new` too often: try again in "), "{refused}");
    assert!(refused.ends_with(" minutes."), "about an hour with this slot's limits: {refused}");
    // The limit is Alice's, not everyone's.
    let bob = Person::new("bounds-bob").await;
    let bobs_dm = bob.create_room(&[&bot], true).await;
    bob.wait_for_member(&bobs_dm, &bot).await;
    assert!(command(&bob, &bobs_dm, &bot, "!new Bob's").await.contains("Mosaic: Bob's"));

    // Retention cannot empty a room at the next pass.
    let floor = command(&alice, &dm, &bot, "!retention 0").await;
    assert!(floor.starts_with("Rooms here keep messages at least 1 day(s)"), "{floor}");
}
