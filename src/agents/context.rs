//! The context of a turn: the conversation from the store, seen from the agent, limited
//! to the thread when the room uses threads and trimmed to the agent's budget.

use std::collections::HashSet;

use crate::config::AgentConfig;
use crate::protocol::{ChannelEvent, ChannelMessage, SenderType, metadata_keys as keys};

use super::runtime::{ContextMessage, Role, TurnContext};

/// Messages read from the store before trimming.
pub const HISTORY_LIMIT: i64 = 200;

/// Builds the context of a turn answering `message`; `history` is oldest first and ends
/// with `message`.
pub fn build(
    agent: &AgentConfig,
    persona: Option<String>,
    conversation_id: &str,
    message: &ChannelMessage,
    history: &[ChannelMessage],
) -> TurnContext {
    let in_thread = |m: &ChannelMessage| match &message.thread_id {
        // The thread root carries the thread's id as its own native id.
        Some(thread) => m.thread_id.as_ref() == Some(thread) || m.channel_message_id() == Some(thread.as_str()),
        None => m.thread_id.is_none(),
    };
    // Reactions reach the agent as short lines: those to its own messages that still
    // stand, where the message reacted to is.
    let own = |m: &ChannelMessage| m.sender_type == SenderType::Agent && m.sender_id == agent.id;
    let taken_back: HashSet<uuid::Uuid> = history
        .iter()
        .filter_map(|m| match m.event {
            ChannelEvent::Reaction { removed: true, takes_back, .. } => takes_back,
            _ => None,
        })
        .collect();
    let message_of = |id: uuid::Uuid| history.iter().find(|t| t.id == id);
    let shown = |m: &ChannelMessage| match m.event {
        ChannelEvent::Message | ChannelEvent::Edit { .. } | ChannelEvent::Delete { .. } => in_thread(m),
        ChannelEvent::ReactionsCleared { .. } | ChannelEvent::Typing { .. } => false,
        ChannelEvent::Reaction { target, removed, .. } => {
            !removed
                && !taken_back.contains(&m.id)
                && message_of(target).is_some_and(|target| own(target) && in_thread(target))
        }
    };
    // A turn may run late: what people wrote after the message is not its context, but
    // what this agent answered meanwhile is (it comes before this answer).
    let until = history.iter().position(|m| m.id == message.id).unwrap_or(history.len());
    let (earlier, later) = history.split_at(until);
    let own_later = later.iter().filter(|m| own(m));
    let mut messages: Vec<ContextMessage> = earlier
        .iter()
        .chain(own_later)
        .filter(|m| m.id != message.id && m.sender_type != SenderType::System && shown(m))
        .map(|m| as_context(agent, m))
        .collect();
    messages.push(as_context(agent, message));
    trim(&mut messages, agent.context_chars);
    TurnContext {
        agent_id: agent.id.clone(),
        conversation_id: conversation_id.to_string(),
        thread_id: message.thread_id.clone(),
        system_prompt: persona,
        messages,
    }
}

fn as_context(agent: &AgentConfig, m: &ChannelMessage) -> ContextMessage {
    let own = m.sender_type == SenderType::Agent && m.sender_id == agent.id;
    if let ChannelEvent::Reaction { key, .. } = &m.event {
        let who = m.meta_str(keys::SENDER_NAME).filter(|n| !n.trim().is_empty()).unwrap_or(&m.sender_id);
        return ContextMessage {
            role: Role::User,
            name: Some(m.sender_id.clone()),
            content: format!("{who} reacted {key}"),
        };
    }
    let mut content = m.content.clone();
    for file in &m.attachments {
        content.push_str(&format!("\n[attachment: {} ({})]", file.name, file.mime_type));
    }
    ContextMessage {
        role: if own { Role::Assistant } else { Role::User },
        name: (!own).then(|| m.sender_id.clone()),
        content,
    }
}

/// Drops the oldest messages until the rest fits in `budget` characters; the message to
/// answer is always kept (cut to the budget if it alone is larger).
fn trim(messages: &mut Vec<ContextMessage>, budget: usize) {
    let mut total: usize = messages.iter().map(|m| m.content.chars().count()).sum();
    while total > budget && messages.len() > 1 {
        total -= messages.remove(0).content.chars().count();
    }
    if let Some(last) = messages.last_mut()
        && last.content.chars().count() > budget
    {
        last.content = last.content.chars().take(budget).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ContentType;

    fn msg(sender: &str, sender_type: SenderType, content: &str, thread: Option<&str>) -> ChannelMessage {
        ChannelMessage::new("!r", sender, sender_type, content, ContentType::Text)
            .with_thread(thread.map(str::to_string))
    }

    fn agent(budget: usize) -> AgentConfig {
        let mut agent = AgentConfig::new("helper", "Helper", "echo");
        agent.context_chars = budget;
        agent
    }

    #[test]
    fn roles_follow_who_spoke_and_notices_are_left_out() {
        let history = vec![
            msg("@a:x", SenderType::User, "hi", None),
            msg("helper", SenderType::Agent, "hello", None),
            msg("mosaic", SenderType::System, "notice", None),
            msg("other", SenderType::Agent, "me too", None),
            msg("@a:x", SenderType::User, "question", None),
        ];
        let ctx = build(&agent(1000), Some("be kind".into()), "c", &history[4], &history);
        let roles: Vec<Role> = ctx.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::User, Role::Assistant, Role::User, Role::User]);
        assert_eq!(ctx.messages.last().unwrap().content, "question");
        assert_eq!(ctx.messages[2].name.as_deref(), Some("other"));
        assert_eq!(ctx.system_prompt.as_deref(), Some("be kind"));
    }

    #[test]
    fn a_threaded_turn_sees_only_its_thread() {
        let mut root = msg("@a:x", SenderType::User, "root", None);
        root.metadata.insert("channelMessageId".into(), "$root".into());
        let history = vec![
            root,
            msg("@a:x", SenderType::User, "elsewhere", None),
            msg("@a:x", SenderType::User, "in thread", Some("$root")),
        ];
        let ctx = build(&agent(1000), None, "c", &history[2], &history);
        let texts: Vec<&str> = ctx.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["root", "in thread"]);
        assert_eq!(ctx.session_key(), "c#$root");
    }

    #[test]
    fn later_messages_are_not_context_but_own_later_answers_are() {
        let history = vec![
            msg("@a:x", SenderType::User, "first", None),
            msg("@a:x", SenderType::User, "this one", None),
            msg("helper", SenderType::Agent, "answer to first", None),
            msg("@a:x", SenderType::User, "after", None),
        ];
        let ctx = build(&agent(1000), None, "c", &history[1], &history);
        let texts: Vec<&str> = ctx.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["first", "answer to first", "this one"]);
    }

    #[test]
    fn reactions_to_the_agents_answers_are_short_lines_and_start_nothing() {
        let question = msg("@a:x", SenderType::User, "how far is the moon?", None);
        let answer = msg("helper", SenderType::Agent, "384,400 km", None);
        let other = msg("other", SenderType::Agent, "about a light second", None);
        let mut liked = ChannelMessage::reaction("!r", "@a:x", "👍", answer.id, false);
        liked.metadata.insert(keys::SENDER_NAME.into(), "Alice".into());
        let on_other = ChannelMessage::reaction("!r", "@a:x", "🎉", other.id, false);
        let mut withdrawn = ChannelMessage::reaction("!r", "@b:x", "👎", answer.id, false);
        withdrawn.metadata.insert(keys::SENDER_NAME.into(), "Bob".into());
        let removal =
            ChannelMessage::reaction("!r", "@b:x", "👎", answer.id, true).with_event(ChannelEvent::Reaction {
                target: answer.id,
                key: "👎".into(),
                removed: true,
                takes_back: Some(withdrawn.id),
            });
        let next = msg("@a:x", SenderType::User, "and the sun?", None);
        let history = vec![question, answer, other, liked, on_other, withdrawn, removal, next];
        let ctx = build(&agent(1000), None, "c", &history[7], &history);
        let texts: Vec<&str> = ctx.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(
            texts,
            ["how far is the moon?", "384,400 km", "about a light second", "Alice reacted 👍", "and the sun?"]
        );
        assert_eq!(ctx.messages[3].role, Role::User);
    }

    #[test]
    fn old_messages_are_trimmed_to_the_budget() {
        let history: Vec<ChannelMessage> =
            (0..10).map(|i| msg("@a:x", SenderType::User, &format!("message {i:02}"), None)).collect();
        let ctx = build(&agent(35), None, "c", &history[9], &history);
        let texts: Vec<&str> = ctx.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["message 07", "message 08", "message 09"]);
        let huge = msg("@a:x", SenderType::User, &"x".repeat(100), None);
        let ctx = build(&agent(10), None, "c", &huge, std::slice::from_ref(&huge));
        assert_eq!(ctx.messages.len(), 1);
        assert_eq!(ctx.messages[0].content.len(), 10);
    }
}
