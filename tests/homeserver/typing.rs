//! Signs that an agent is at work, as people see them: its ghost typing in the Matrix
//! room while it works on an answer, not after; and its read receipt on the message it
//! took up.

use std::time::{Duration, Instant};

use crate::support::{Person, Service, body, slot};

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
