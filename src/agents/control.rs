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
    answer: oneshot::Sender<Option<String>>,
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

    /// Registers a question; an earlier unanswered one in the conversation is refused.
    pub fn ask(
        &self,
        conversation_id: &str,
        question_id: Uuid,
        options: Vec<PermissionOption>,
        answer: oneshot::Sender<Option<String>>,
    ) {
        let pending = PendingPermission { question_id, options, answer };
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

    /// Takes `text` (a message or a reaction, possibly replying to `reply_to`) as the
    /// answer to the conversation's open question when it is one. Returns the name of the
    /// chosen option.
    pub fn answer(&self, conversation_id: &str, text: &str, reply_to: Option<Uuid>) -> Option<String> {
        let mut permissions = self.permissions.lock().expect("turn control lock");
        let pending = permissions.get(conversation_id)?;
        if reply_to.is_some_and(|id| id != pending.question_id) {
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

/// The question as people read it.
pub fn question_text(agent_name: &str, title: &str, options: &[PermissionOption], timeout_secs: u64) -> String {
    let mut text = format!("**{agent_name}** asks for permission: {title}\n\nReply with");
    for (i, option) in options.iter().enumerate() {
        text.push_str(&format!("{} `{}` ({})", if i == 0 { "" } else { "," }, i + 1, option.name));
    }
    text.push_str(&format!(
        " — or `yes` / `no`, or react 👍 / 👎. Without an answer within {} min the answer is no.",
        timeout_secs.div_ceil(60)
    ));
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

    #[tokio::test]
    async fn an_answer_reaches_the_waiting_turn_once() {
        let control = TurnControl::default();
        let question = Uuid::new_v4();
        let (tx, rx) = oneshot::channel();
        control.ask("c", question, options(), tx);
        assert_eq!(control.answer("c", "maybe later", None), None, "not an answer: left for the agents");
        assert_eq!(control.answer("c", "yes", Some(Uuid::new_v4())), None, "a reply to another message");
        assert_eq!(control.answer("c", "yes", Some(question)).as_deref(), Some("Allow once"));
        assert_eq!(rx.await.unwrap().as_deref(), Some("a1"));
        assert_eq!(control.answer("c", "yes", None), None, "answered already");
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
