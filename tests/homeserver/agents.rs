//! Agents with real runtimes behind them (a fake OpenAI-compatible server, a fake ACP
//! coding agent) answering people on the real homeserver.

use std::time::Duration;

use serde_json::Value;

use crate::support::fake_openai::{FakeOpenAi, Script};
use crate::support::{Person, Service, body, mosaic, reply_target, slot};

fn openai_agent(id: &str, base_url: &str, max_edits: u32) -> String {
    format!(
        r#"
[[agent]]
id = "{id}"
display_name = "Writer"
runtime = "openai"
base_url = "{base_url}"
model = "fake-model"
max_edits = {max_edits}
avatar_url = "mxc://localhost/writer-avatar"
"#
    )
}

/// The event id a message edits, if it is an edit.
fn edit_target(event: &Value) -> Option<&str> {
    let relation = &event["content"]["m.relates_to"];
    (relation["rel_type"] == "m.replace").then(|| relation["event_id"].as_str()).flatten()
}

/// The text a person sees for `message`: its latest edit's new content, or its body.
fn shown_text(events: &[Value], message: &Value) -> String {
    let id = message["event_id"].as_str().unwrap();
    events
        .iter()
        .rfind(|e| edit_target(e) == Some(id))
        .map(|e| e["content"]["m.new_content"]["body"].as_str().unwrap().to_string())
        .unwrap_or_else(|| body(message).to_string())
}

async fn room_with_agent(person: &Person, agent: &str) -> String {
    let room = person.create_room(&[agent], true).await;
    person.wait_for_member(&room, agent).await;
    room
}

/// A `writer` agent on a fake model, allowed `max_edits`, in a room with a new person.
struct WriterRoom {
    _service: Service,
    person: Person,
    writer: String,
    room: String,
}

async fn writer_room(slot_name: &str, person: &str, fake: &FakeOpenAi, max_edits: u32) -> WriterRoom {
    let slot = slot(slot_name);
    slot.write_config_with_agents(&openai_agent("writer", &fake.base_url, max_edits));
    let service = Service::start(&slot).await;
    let person = Person::new(person).await;
    let writer = slot.agent("writer");
    let room = room_with_agent(&person, &writer).await;
    WriterRoom { _service: service, person, writer, room }
}

impl WriterRoom {
    /// Waits until the answer `first` shows `text` by an edit of it.
    async fn wait_for_edit_to(&self, first: &Value, text: &str) {
        let first_id = first["event_id"].as_str().unwrap();
        let edited = |e: &Value| edit_target(e) == Some(first_id) && e["content"]["m.new_content"]["body"] == text;
        self.person.wait_for(&self.room, &self.writer, edited).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_answer_is_one_message_with_few_edits_ending_in_the_full_text() {
    let pieces: Vec<String> = (0..24).map(|i| format!("word{i} ")).collect();
    let full = pieces.concat();
    let fake = FakeOpenAi::start(Script { pieces, delay: Duration::from_millis(120), fail_first: 0 }).await;
    let setup = writer_room("stream", "stream-alice", &fake, 4).await;
    let WriterRoom { person: alice, writer, room, .. } = &setup;

    let asked = alice.say(room, "write something").await;
    let first = alice.wait_for_reply(room, writer, &asked).await;
    assert_ne!(body(&first), full, "the first text is shown before the model finished");
    assert!(full.starts_with(body(&first)), "{}", body(&first));
    let first_id = first["event_id"].as_str().unwrap().to_string();
    setup.wait_for_edit_to(&first, &full).await;

    let events = alice.messages(room).await;
    let edits = events.iter().filter(|e| edit_target(e) == Some(&first_id)).count();
    assert!((1..=4).contains(&edits), "{edits} edits; at most 4 are allowed");
    assert_eq!(shown_text(&events, &first), full);
    let answers = events.iter().filter(|e| e["sender"] == writer.as_str() && edit_target(e).is_none()).count();
    assert_eq!(answers, 1, "one answer message");

    let request = fake.bodies.lock().unwrap()[0].clone();
    assert_eq!(request["stream"], true);
    let last = request["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string();
    assert!(last.ends_with("write something"), "{last}");

    let profile: Value =
        reqwest::get(format!("{}/_matrix/client/v3/profile/{writer}", crate::support::homeserver_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(profile["displayname"], "Writer");
    assert_eq!(profile["avatar_url"], "mxc://localhost/writer-avatar");

    let usage = alice.say(room, "!usage").await;
    let report = alice.wait_for_reply(room, writer, &usage).await;
    assert!(body(&report).contains("`writer`: 1 turn(s), 11 input + 24 output tokens"), "{}", body(&report));
}

/// With one edit allowed, the answer shows its first words and then, once complete, its
/// final text as an edit of them, sent through the outbox after the turn is recorded: the
/// service must know by then where the first words landed.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_allowed_one_edit_ends_as_an_edit_of_its_first_words() {
    let pieces: Vec<String> = (0..4).map(|i| format!("quick{i} ")).collect();
    let full = pieces.concat();
    let fake = FakeOpenAi::start(Script { pieces, delay: Duration::from_millis(50), fail_first: 0 }).await;
    let setup = writer_room("quick", "quick-alice", &fake, 1).await;
    let WriterRoom { person: alice, writer, room, .. } = &setup;

    let asked = alice.say(room, "be quick").await;
    let first = alice.wait_for_reply(room, writer, &asked).await;
    assert_eq!(body(&first), "quick0 ", "the first words show at once");
    setup.wait_for_edit_to(&first, &full).await;
    let events = alice.messages(room).await;
    let answers: Vec<&str> =
        events.iter().filter(|e| e["sender"] == writer.as_str() && edit_target(e).is_none()).map(body).collect();
    assert_eq!(answers, ["quick0 "], "one answer message, its final text an edit of it");
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_for_a_model_that_is_down_are_answered_in_order_when_it_is_back() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let slot = slot("queue");
    slot.write_config_with_agents(&openai_agent("writer", &format!("http://{address}/v1"), 20));
    let _service = Service::start(&slot).await;
    let alice = Person::new("queue-alice").await;
    let writer = slot.agent("writer");
    let room = room_with_agent(&alice, &writer).await;

    let first = alice.say(&room, "first question").await;
    let second = alice.say(&room, "second question").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(alice.messages(&room).await.iter().all(|e| e["sender"] != writer.as_str()), "answered while down");

    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let fake =
        FakeOpenAi::serve(listener, Script { pieces: vec!["an answer".into()], delay: Duration::ZERO, fail_first: 1 });
    let to_first = alice.wait_for_reply(&room, &writer, &first).await;
    let to_second = alice.wait_for_reply(&room, &writer, &second).await;
    let events = alice.messages(&room).await;
    let position = |id: &Value| events.iter().position(|e| e["event_id"] == *id).unwrap();
    assert!(
        position(&to_first["event_id"]) < position(&to_second["event_id"]),
        "answers keep the order of the questions"
    );
    assert!(fake.requests() >= 3, "one refused request, then one per question");
    let second_context = fake.bodies.lock().unwrap().last().unwrap()["messages"].clone();
    let texts: Vec<&str> = second_context.as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect();
    let said = |text: &str| texts.iter().any(|t| t.ends_with(text));
    assert!(said("first question") && said("an answer"), "context carries the conversation: {texts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_ends_the_answer_being_written() {
    let pieces: Vec<String> = (0..60).map(|i| format!("w{i} ")).collect();
    let fake = FakeOpenAi::start(Script { pieces, delay: Duration::from_millis(250), fail_first: 0 }).await;
    let slot = slot("stop");
    slot.write_config_with_agents(&openai_agent("writer", &fake.base_url, 20));
    let _service = Service::start(&slot).await;
    let alice = Person::new("stop-alice").await;
    let writer = slot.agent("writer");
    let room = room_with_agent(&alice, &writer).await;

    let asked = alice.say(&room, "write at length").await;
    let first = alice.wait_for_reply(&room, &writer, &asked).await;
    let stop = alice.say(&room, "!stop").await;
    let notice = alice.wait_for_reply(&room, &writer, &stop).await;
    assert!(body(&notice).contains("Stopped 1 answer"), "{}", body(&notice));
    let first_id = first["event_id"].as_str().unwrap().to_string();
    let last = alice
        .wait_for(&room, &writer, |e| {
            edit_target(e) == Some(&first_id)
                && e["content"]["m.new_content"]["body"].as_str().unwrap_or("").ends_with("*(stopped)*")
        })
        .await;
    let text = last["content"]["m.new_content"]["body"].as_str().unwrap();
    assert!(!text.contains("w59"), "the stream went on after !stop: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coding_agent_asks_permission_in_the_room_and_gets_the_answer() {
    let slot = slot_with_coder("acp");
    let _service = Service::start(&slot).await;
    let alice = Person::new("acp-alice").await;
    let coder = slot.agent("coder");
    let room = room_with_agent(&alice, &coder).await;

    let asked = alice.say(&room, "please run the tests").await;
    let question = alice.wait_for(&room, &coder, |e| body(e).contains("asks for permission")).await;
    assert_eq!(reply_target(&question), Some(asked.as_str()));
    alice.say(&room, "yes").await;
    let answered = alice
        .wait_for(&room, &coder, |e| {
            let text = e["content"]["m.new_content"]["body"].as_str().unwrap_or_else(|| body(e));
            text.contains("permission: allowed")
        })
        .await;
    let text = answered["content"]["m.new_content"]["body"].as_str().unwrap_or_else(|| body(&answered));
    assert!(text.contains("You said: please run the tests"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permission_question_answered_by_someone_else_does_not_count() {
    let slot = slot_with_coder("asker");
    let _service = Service::start(&slot).await;
    let alice = Person::new("asker-alice").await;
    let mallory = Person::new("asker-mallory").await;
    let coder = slot.agent("coder");
    let room = alice.create_room(&[&coder, &mallory.user_id], false).await;
    mallory.join(&room).await;
    alice.wait_for_member(&room, &coder).await;

    // Alice starts the turn; the question says who may answer it.
    let asked = alice.say(&room, "Coder, please run the tests").await;
    let question = alice.wait_for(&room, &coder, |e| body(e).contains("asks for permission")).await;
    assert_eq!(reply_target(&question), Some(asked.as_str()));
    let text = body(&question);
    assert!(text.contains(&format!("Only {} (who asked) or an admin can answer.", alice.user_id)), "{text}");

    // Mallory answers first, in every way an answer can be given: none of them counts.
    let question_id = question["event_id"].as_str().unwrap();
    mallory
        .send(
            &room,
            serde_json::json!({
                "msgtype": "m.text", "body": "always",
                "m.relates_to": {"m.in_reply_to": {"event_id": question_id}},
            }),
        )
        .await;
    mallory.say(&room, "yes").await;
    mallory.react(&room, question_id, "👍").await;
    // Alice refuses: had Mallory's answer counted, the tool would have run and Alice's
    // "no" would be an ordinary message.
    alice.say(&room, "no").await;
    let answered = alice
        .wait_for(&room, &coder, |e| {
            let text = e["content"]["m.new_content"]["body"].as_str().unwrap_or_else(|| body(e));
            ["allowed", "rejected", "cancelled"].iter().any(|outcome| text.contains(&format!("permission: {outcome}")))
        })
        .await;
    let text = answered["content"]["m.new_content"]["body"].as_str().unwrap_or_else(|| body(&answered));
    assert!(text.contains("permission: rejected"), "{text}");
}

/// The `mosaic.agent_message` of an event.
fn agent_message(event: &Value) -> &Value {
    &event["content"]["mosaic.agent_message"]
}

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_request_respond_delegate_and_hear_a_human_interrupt() {
    let slot = slot("pair");
    slot.write_config_with_agents(
        r#"
[[agent]]
id = "alpha"
display_name = "Alpha"
runtime = "echo"

[[agent]]
id = "beta"
display_name = "Beta"
runtime = "echo"
"#,
    );
    let alice = Person::new("pair-alice").await;
    mosaic(&slot, &["account", "create", "pair-alice", "--matrix-id", &alice.user_id]).expect_success();
    let _service = Service::start(&slot).await;
    let bot = slot.bot();
    let (alpha, beta) = (slot.agent("alpha"), slot.agent("beta"));
    let dm = alice.create_room(&[&bot], true).await;
    alice.wait_for_member(&dm, &bot).await;
    let asked = alice.say(&dm, "!pair beta alpha").await;
    let answer = body(&alice.wait_for_reply(&dm, &bot, &asked).await).to_string();
    let alias = answer.split_whitespace().find(|w| w.starts_with('#')).unwrap_or_default().to_string();
    assert!(alias.starts_with("#mosaic-pair-agents-alpha-beta-") && alias.ends_with(":localhost"), "{answer}");

    let (room, _) = alice.wait_for_invite_named("Mosaic agents: alpha & beta").await;
    alice.join(&room).await;
    let resolved: Value = reqwest::get(format!(
        "{}/_matrix/client/v3/directory/room/{}",
        crate::support::homeserver_url(),
        alias.replace('#', "%23")
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(resolved["room_id"], room.as_str(), "the alias names the pair, ids sorted, and its owner");
    let power = alice.state(&room, "m.room.power_levels").await;
    assert_eq!(power["users"][&alice.user_id], 100, "the person who asked owns the room");
    assert!(power["users"].get(&alpha).is_none() && power["users"].get(&beta).is_none(), "agents stay at 0");
    alice.wait_for_member(&room, &alpha).await;
    alice.wait_for_member(&room, &beta).await;

    // Request and response, correlated by event id.
    alice.say(&room, "!ask alpha what is the plan?").await;
    let request = alice.wait_for(&room, &alpha, |e| agent_message(e)["message_type"] == "request").await;
    assert_eq!(agent_message(&request)["schema_version"], "1.0");
    assert_eq!(agent_message(&request)["sender_agent_id"], "alpha");
    assert!(agent_message(&request)["timestamp_ms"].as_i64().is_some());
    let request_id = request["event_id"].as_str().unwrap().to_string();
    let response = alice.wait_for(&room, &beta, |e| agent_message(e)["message_type"] == "response").await;
    assert_eq!(agent_message(&response)["payload"]["reply_to_event_id"], request_id.as_str());
    assert_eq!(reply_target(&response), Some(request_id.as_str()));
    assert!(body(&response).contains("Beta"), "a readable body: {}", body(&response));

    // Delegation: handed over, acknowledged, completed.
    alice.say(&room, "!delegate alpha write the release notes").await;
    let delegate = alice.wait_for(&room, &alpha, |e| agent_message(e)["message_type"] == "delegate").await;
    assert_eq!(agent_message(&delegate)["payload"]["task"]["description"], "write the release notes");
    let delegate_id = delegate["event_id"].as_str().unwrap().to_string();
    for kind in ["delegate_ack", "delegate_complete"] {
        let step = alice.wait_for(&room, &beta, |e| agent_message(e)["message_type"] == kind).await;
        assert_eq!(agent_message(&step)["payload"]["reply_to_event_id"], delegate_id.as_str(), "{kind}");
    }

    // Someone else asks for the same pair. Without an account they get no room at all;
    // with one, a room of their own: never Alice's, whose history stays hers.
    let bob = Person::new("pair-bob").await;
    let bob_dm = bob.create_room(&[&bot], true).await;
    bob.wait_for_member(&bob_dm, &bot).await;
    let unlinked = bob.say(&bob_dm, "!pair alpha beta").await;
    let refused = body(&bob.wait_for_reply(&bob_dm, &bot, &unlinked).await).to_string();
    assert!(refused.contains("link yours first"), "{refused}");
    mosaic(&slot, &["account", "create", "pair-bob", "--matrix-id", &bob.user_id]).expect_success();
    let again = bob.say(&bob_dm, "!pair alpha beta").await;
    let answer = body(&bob.wait_for_reply(&bob_dm, &bot, &again).await).to_string();
    assert!(!answer.contains(&alias), "bob is sent to alice's room: {answer}");
    let (bobs_room, _) = bob.wait_for_invite_named("Mosaic agents: alpha & beta").await;
    assert_ne!(bobs_room, room, "bob was invited into alice's agent room");
    // Alice asks again: her own room is reopened, not a new one, and not Bob's.
    let reopen = alice.say(&dm, "!pair alpha beta").await;
    assert!(body(&alice.wait_for_reply(&dm, &bot, &reopen).await).contains(&alias));
    assert!(!alice.invites().await.contains(&bobs_room));
    assert!(alice.state_or_null(&room, &format!("m.room.member/{}", bob.user_id)).await.is_null());
    assert!(alice.state(&room, "m.room.power_levels").await["users"].get(&bob.user_id).is_none());

    // A person interrupts: both agents answer the interruption.
    let interrupt = alice.say(&room, "[HUMAN] please pause and summarise").await;
    for agent in [&alpha, &beta] {
        let answer = alice.wait_for_reply(&room, agent, &interrupt).await;
        assert!(body(&answer).contains("please pause and summarise"), "{}", body(&answer));
    }
}

/// The slot, configured with one `acp` coding agent `coder` (the fake ACP agent, which
/// asks permission before it runs anything).
fn slot_with_coder(name: &str) -> crate::support::Slot {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake_acp_agent.py");
    let slot = slot(name);
    slot.write_config_with_agents(&format!(
        r#"
[[agent]]
id = "coder"
display_name = "Coder"
runtime = "acp"
command = ["python3", "{script}"]
permission_timeout_secs = 60
"#
    ));
    slot
}
