//! Routing hints an adapter attaches to an inbound message (in `metadata`), and the rule
//! that decides which agents answer.

use crate::protocol::ChannelMessage;
use crate::store::settings::RoomSettings;

pub use crate::protocol::contains_word;
pub use crate::protocol::metadata_keys::{AGENTS, BOT_PRESENT, COMMANDS, MENTIONS, PARTICIPANTS};

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

fn flag(msg: &ChannelMessage, key: &str) -> bool {
    msg.metadata.get(key).and_then(|v| v.as_bool()).unwrap_or(false)
}

pub fn bot_present(msg: &ChannelMessage) -> bool {
    flag(msg, BOT_PRESENT)
}

pub fn commands_enabled(msg: &ChannelMessage) -> bool {
    msg.metadata.get(COMMANDS).and_then(|v| v.as_bool()).unwrap_or(false)
}

/// Which present agents answer: the mentioned ones; with one person in the channel and
/// no mention, the room's default agent if it is there, else every agent — unless the
/// room is mention-only. People without a linked account get no answer where the room
/// says so.
pub fn agents_to_answer(msg: &ChannelMessage, room: &RoomSettings, sender_linked: bool) -> Vec<String> {
    if !sender_linked && !room.answer_unlinked {
        return Vec::new();
    }
    let present = agents_present(msg);
    let mentioned: Vec<String> = string_list(msg, MENTIONS).into_iter().filter(|a| present.contains(a)).collect();
    if !mentioned.is_empty() || room.mention_only || participants(msg) > 1 {
        return mentioned;
    }
    match &room.default_agent {
        Some(default) if present.contains(default) => vec![default.clone()],
        _ => present,
    }
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

    fn open_room() -> RoomSettings {
        RoomSettings { answer_unlinked: true, ..Default::default() }
    }

    #[test]
    fn one_person_gets_every_agent() {
        assert_eq!(agents_to_answer(&msg(1, &["echo", "helper"], &[]), &open_room(), true), vec!["echo", "helper"]);
    }

    #[test]
    fn several_people_get_only_mentioned_agents() {
        assert!(agents_to_answer(&msg(2, &["echo"], &[]), &open_room(), true).is_empty());
        assert_eq!(agents_to_answer(&msg(3, &["echo", "helper"], &["helper"]), &open_room(), true), vec!["helper"]);
    }

    #[test]
    fn unknown_participant_count_counts_as_a_group() {
        let mut m = msg(1, &["echo"], &[]);
        m.metadata.remove(PARTICIPANTS);
        assert!(agents_to_answer(&m, &open_room(), true).is_empty());
    }

    #[test]
    fn room_settings_pick_the_default_agent_or_require_mentions() {
        let with_default = RoomSettings { default_agent: Some("helper".into()), ..open_room() };
        assert_eq!(agents_to_answer(&msg(1, &["echo", "helper"], &[]), &with_default, true), vec!["helper"]);
        assert_eq!(agents_to_answer(&msg(1, &["echo", "helper"], &["echo"]), &with_default, true), vec!["echo"]);
        let mention_only = RoomSettings { mention_only: true, ..open_room() };
        assert!(agents_to_answer(&msg(1, &["echo"], &[]), &mention_only, true).is_empty());
        assert_eq!(agents_to_answer(&msg(1, &["echo"], &["echo"]), &mention_only, true), vec!["echo"]);
    }

    #[test]
    fn unlinked_people_are_ignored_where_the_room_says_so() {
        let closed = RoomSettings { answer_unlinked: false, ..Default::default() };
        assert!(agents_to_answer(&msg(1, &["echo"], &[]), &closed, false).is_empty());
        assert_eq!(agents_to_answer(&msg(1, &["echo"], &[]), &closed, true), vec!["echo"]);
    }
}
