//! What the hub and the agent workers share about running turns: how to stop them
//! (`!stop`) and the permission questions waiting for a person's answer.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::runtime::PermissionOption;

/// A permission question posted in a conversation.
struct PendingPermission {
    /// The canonical id of the question message (answers may reply or react to it).
    question_id: Uuid,
    options: Vec<PermissionOption>,
    /// Who may answer besides admins; `None` when no person started the turn.
    asker: Option<Asker>,
    answer: oneshot::Sender<Option<String>>,
}

/// The person whose message started a turn: they (under any identity of their account)
/// answer the agent's permission questions, or an admin does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asker {
    pub channel: String,
    pub sender_id: String,
    /// Their Mosaic account, when the identity is linked.
    pub account_id: Option<String>,
    /// How people see them: their Matrix id, or their name and surface elsewhere.
    pub label: String,
}

/// Who sent a message that may answer a question.
#[derive(Debug, Clone, Copy)]
pub struct Responder<'a> {
    pub channel: &'a str,
    pub sender_id: &'a str,
    pub account_id: Option<&'a str>,
    /// An admin of the service.
    pub admin: bool,
}

impl Asker {
    /// Whether `who` is this person: the same identity, or another identity of the same
    /// account.
    pub fn is(&self, who: &Responder) -> bool {
        (self.channel == who.channel && self.sender_id == who.sender_id)
            || self.account_id.as_deref().is_some_and(|account| who.account_id == Some(account))
    }
}

/// Whether `who` may answer a question asked for `asker`.
pub fn may_answer(asker: Option<&Asker>, who: &Responder) -> bool {
    who.admin || asker.is_some_and(|asker| asker.is(who))
}

/// A running turn: its registration number and the switch that stops it.
type RunningTurn = (u64, watch::Sender<bool>);

#[derive(Default)]
pub struct TurnControl {
    running: Mutex<HashMap<String, Vec<RunningTurn>>>,
    permissions: Mutex<HashMap<String, PendingPermission>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// Registration of a running turn; unregisters when dropped.
pub struct TurnGuard<'a> {
    control: &'a TurnControl,
    conversation_id: String,
    id: u64,
    pub stopped: watch::Receiver<bool>,
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        let mut running = self.control.running.lock().expect("turn control lock");
        if let Some(turns) = running.get_mut(&self.conversation_id) {
            turns.retain(|(id, _)| *id != self.id);
            if turns.is_empty() {
                running.remove(&self.conversation_id);
            }
        }
    }
}

impl TurnControl {
    pub fn start_turn(&self, conversation_id: &str) -> TurnGuard<'_> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (stop, stopped) = watch::channel(false);
        self.running
            .lock()
            .expect("turn control lock")
            .entry(conversation_id.to_string())
            .or_default()
            .push((id, stop));
        TurnGuard { control: self, conversation_id: conversation_id.to_string(), id, stopped }
    }

    /// Stops every turn running in the conversation; returns how many.
    pub fn stop(&self, conversation_id: &str) -> usize {
        let running = self.running.lock().expect("turn control lock");
        let turns = running.get(conversation_id).map(Vec::as_slice).unwrap_or_default();
        for (_, stop) in turns {
            let _ = stop.send(true);
        }
        turns.len()
    }

    /// Registers a question that `asker` (or an admin) answers; an earlier unanswered one
    /// in the conversation is refused.
    pub fn ask(
        &self,
        conversation_id: &str,
        question_id: Uuid,
        options: Vec<PermissionOption>,
        asker: Option<Asker>,
        answer: oneshot::Sender<Option<String>>,
    ) {
        let pending = PendingPermission { question_id, options, asker, answer };
        if let Some(previous) =
            self.permissions.lock().expect("turn control lock").insert(conversation_id.to_string(), pending)
        {
            let _ = previous.answer.send(None);
        }
    }

    /// Forgets a question (answered elsewhere or timed out).
    pub fn forget(&self, conversation_id: &str, question_id: Uuid) {
        let mut permissions = self.permissions.lock().expect("turn control lock");
        if permissions.get(conversation_id).is_some_and(|p| p.question_id == question_id) {
            permissions.remove(conversation_id);
        }
    }

    /// Whether a question waits for an answer in the conversation.
    pub fn has_question(&self, conversation_id: &str) -> bool {
        self.permissions.lock().expect("turn control lock").contains_key(conversation_id)
    }

    /// Takes `text` (a message or a reaction, possibly replying to `reply_to`) from `who`
    /// as the answer to the conversation's open question when it is one and `who` may
    /// answer it. Returns the name of the chosen option. Anyone else's message is not an
    /// answer.
    pub fn answer(&self, conversation_id: &str, text: &str, reply_to: Option<Uuid>, who: &Responder) -> Option<String> {
        let mut permissions = self.permissions.lock().expect("turn control lock");
        let pending = permissions.get(conversation_id)?;
        if reply_to.is_some_and(|id| id != pending.question_id) || !may_answer(pending.asker.as_ref(), who) {
            return None;
        }
        let chosen = choose(&pending.options, text)?.clone();
        let pending = permissions.remove(conversation_id)?;
        let _ = pending.answer.send(Some(chosen.id));
        Some(chosen.name)
    }
}

/// The option a person's answer picks: a number, an option's name, or a word or emoji.
pub fn choose<'a>(options: &'a [PermissionOption], text: &str) -> Option<&'a PermissionOption> {
    let text = text.trim().trim_end_matches(['.', '!']).to_lowercase();
    if let Ok(number) = text.parse::<usize>() {
        return options.get(number.checked_sub(1)?);
    }
    if let Some(named) = options.iter().find(|o| o.name.to_lowercase() == text || o.id.to_lowercase() == text) {
        return Some(named);
    }
    let kinds: &[&str] = match text.as_str() {
        "allow" | "yes" | "y" | "ok" | "approve" | "👍" | "👍️" | "✅" => &["allow_once", "allow_always"],
        "always" | "allow always" => &["allow_always"],
        "deny" | "no" | "n" | "reject" | "👎" | "👎️" | "❌" => &["reject_once", "reject_always"],
        _ => return None,
    };
    kinds.iter().find_map(|kind| options.iter().find(|o| o.kind == *kind))
}

/// The question as people read it, saying who may answer it.
pub fn question_text(
    agent_name: &str,
    title: &str,
    options: &[PermissionOption],
    timeout_secs: u64,
    asker: Option<&Asker>,
) -> String {
    let mut text = format!("**{agent_name}** asks for permission: {title}\n\nReply with");
    for (i, option) in options.iter().enumerate() {
        text.push_str(&format!("{} `{}` ({})", if i == 0 { "" } else { "," }, i + 1, option.name));
    }
    text.push_str(&format!(
        " — or `yes` / `no`, or react 👍 / 👎. Without an answer within {} min the answer is no.",
        timeout_secs.div_ceil(60)
    ));
    match asker {
        Some(asker) => text.push_str(&format!(" Only {} (who asked) or an admin can answer.", asker.label)),
        None => text.push_str(" Only an admin can answer."),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Vec<PermissionOption> {
        [("a1", "Allow once", "allow_once"), ("a2", "Always allow", "allow_always"), ("r1", "Reject", "reject_once")]
            .iter()
            .map(|(id, name, kind)| PermissionOption { id: (*id).into(), name: (*name).into(), kind: (*kind).into() })
            .collect()
    }

    #[test]
    fn answers_by_number_name_word_or_emoji() {
        let options = options();
        assert_eq!(choose(&options, "2").unwrap().id, "a2");
        assert_eq!(choose(&options, "Reject").unwrap().id, "r1");
        assert_eq!(choose(&options, "yes").unwrap().id, "a1");
        assert_eq!(choose(&options, " No. ").unwrap().id, "r1");
        assert_eq!(choose(&options, "👍").unwrap().id, "a1");
        assert_eq!(choose(&options, "always").unwrap().id, "a2");
        assert!(choose(&options, "what is this?").is_none());
        assert!(choose(&options, "0").is_none() && choose(&options, "4").is_none());
    }

    fn alice() -> Asker {
        Asker {
            channel: "matrix".into(),
            sender_id: "@alice:x".into(),
            account_id: Some("acc-alice".into()),
            label: "@alice:x".into(),
        }
    }

    fn responder<'a>(channel: &'a str, sender_id: &'a str, account_id: Option<&'a str>) -> Responder<'a> {
        Responder { channel, sender_id, account_id, admin: false }
    }

    #[tokio::test]
    async fn an_answer_reaches_the_waiting_turn_once() {
        let control = TurnControl::default();
        let question = Uuid::new_v4();
        let (tx, rx) = oneshot::channel();
        control.ask("c", question, options(), Some(alice()), tx);
        let her = responder("matrix", "@alice:x", Some("acc-alice"));
        assert!(control.has_question("c"));
        assert_eq!(control.answer("c", "maybe later", None, &her), None, "not an answer: left for the agents");
        assert_eq!(control.answer("c", "yes", Some(Uuid::new_v4()), &her), None, "a reply to another message");
        assert_eq!(control.answer("c", "yes", Some(question), &her).as_deref(), Some("Allow once"));
        assert_eq!(rx.await.unwrap().as_deref(), Some("a1"));
        assert_eq!(control.answer("c", "yes", None, &her), None, "answered already");
        assert!(!control.has_question("c"));
    }

    #[tokio::test]
    async fn only_the_asker_or_an_admin_answers() {
        let control = TurnControl::default();
        let question = Uuid::new_v4();
        let (tx, rx) = oneshot::channel();
        control.ask("c", question, options(), Some(alice()), tx);
        let mallory = responder("matrix", "@mallory:x", Some("acc-mallory"));
        assert_eq!(control.answer("c", "always", Some(question), &mallory), None, "someone else's answer");
        assert_eq!(control.answer("c", "👍", Some(question), &responder("telegram", "@alice:x", None)), None);
        assert!(control.has_question("c"), "the question stays open for the asker");
        // Her Telegram identity, linked to the same account, is her.
        let her_elsewhere = responder("telegram", "4242", Some("acc-alice"));
        assert_eq!(control.answer("c", "no", None, &her_elsewhere).as_deref(), Some("Reject"));
        assert_eq!(rx.await.unwrap().as_deref(), Some("r1"));

        // With no person behind the turn, only an admin answers.
        let (tx, rx) = oneshot::channel();
        control.ask("d", question, options(), None, tx);
        assert_eq!(control.answer("d", "yes", None, &mallory), None);
        let admin = Responder { admin: true, ..mallory };
        assert_eq!(control.answer("d", "yes", None, &admin).as_deref(), Some("Allow once"));
        assert_eq!(rx.await.unwrap().as_deref(), Some("a1"));
    }

    #[test]
    fn the_question_says_who_may_answer() {
        let text = question_text("Coder", "Run the tests", &options(), 300, Some(&alice()));
        assert!(text.ends_with("Only @alice:x (who asked) or an admin can answer."), "{text}");
        assert!(question_text("Coder", "Run", &options(), 300, None).ends_with("Only an admin can answer."));
    }

    #[tokio::test]
    async fn stop_reaches_every_turn_of_the_conversation() {
        let control = TurnControl::default();
        let mut first = control.start_turn("c");
        let other = control.start_turn("d");
        assert_eq!(control.stop("c"), 1);
        assert!(*first.stopped.borrow_and_update());
        assert!(!*other.stopped.borrow());
        drop(first);
        assert_eq!(control.stop("c"), 0);
    }
}
