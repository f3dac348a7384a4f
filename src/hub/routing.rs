//! Routing hints an adapter attaches to an inbound message (in `metadata`), and the rule
//! that decides which agents answer.

use crate::protocol::ChannelMessage;

/// Agents present in the channel (array of agent ids).
pub const AGENTS: &str = "mosaic.agents";
/// Agents the message addresses (array of agent ids).
pub const MENTIONS: &str = "mosaic.mentions";
/// Number of people (not agents, not the bot) in the channel.
pub const PARTICIPANTS: &str = "mosaic.participants";
/// Whether chat commands are read in this channel.
pub const COMMANDS: &str = "mosaic.commands";
/// The message edits the one named by `replyToId`.
pub const IS_EDIT: &str = "mosaic.isEdit";

fn string_list(msg: &ChannelMessage, key: &str) -> Vec<String> {
    msg.metadata
        .get(key)
        .and_then(|v| v.as_array())
        .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

pub fn agents_present(msg: &ChannelMessage) -> Vec<String> {
    string_list(msg, AGENTS)
}

pub fn participants(msg: &ChannelMessage) -> u64 {
    msg.metadata.get(PARTICIPANTS).and_then(|v| v.as_u64()).unwrap_or(u64::MAX)
}

pub fn is_edit(msg: &ChannelMessage) -> bool {
    msg.metadata.get(IS_EDIT).and_then(|v| v.as_bool()).unwrap_or(false)
}

pub fn commands_enabled(msg: &ChannelMessage) -> bool {
    msg.metadata.get(COMMANDS).and_then(|v| v.as_bool()).unwrap_or(false)
}

/// With one person in the channel every present agent answers; with several, only the
/// agents the message mentions.
pub fn agents_to_answer(msg: &ChannelMessage) -> Vec<String> {
    let present = agents_present(msg);
    if participants(msg) <= 1 {
        return present;
    }
    let mentioned = string_list(msg, MENTIONS);
    present.into_iter().filter(|agent| mentioned.contains(agent)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ContentType, SenderType};
    use serde_json::json;

    fn msg(participants: u64, agents: &[&str], mentions: &[&str]) -> ChannelMessage {
        let mut msg = ChannelMessage::new("!r", "@a:x", SenderType::User, "hi", ContentType::Text);
        msg.metadata.insert(PARTICIPANTS.into(), json!(participants));
        msg.metadata.insert(AGENTS.into(), json!(agents));
        msg.metadata.insert(MENTIONS.into(), json!(mentions));
        msg
    }

    #[test]
    fn one_person_gets_every_agent() {
        assert_eq!(agents_to_answer(&msg(1, &["echo", "helper"], &[])), vec!["echo", "helper"]);
    }

    #[test]
    fn several_people_get_only_mentioned_agents() {
        assert!(agents_to_answer(&msg(2, &["echo"], &[])).is_empty());
        assert_eq!(agents_to_answer(&msg(3, &["echo", "helper"], &["helper"])), vec!["helper"]);
    }

    #[test]
    fn unknown_participant_count_counts_as_a_group() {
        let mut m = msg(1, &["echo"], &[]);
        m.metadata.remove(PARTICIPANTS);
        assert!(agents_to_answer(&m).is_empty());
    }
}
