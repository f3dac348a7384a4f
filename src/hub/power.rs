//! Who may change a room. Commands that change the room people share (its name, its
//! retention, who is in it, how its agents answer) need the sender's power in that room
//! to reach what the room requires for the matching change, or the sender to be an
//! admin of the service.
//!
//! The hub does not read rooms itself: the surface's adapter attaches what it read from
//! its room (on Matrix, the current `m.room.power_levels` and the room's creators) to a
//! message that may be a command, as a [`RoomPower`] under [`ROOM_POWER`]. A message
//! without it (another surface, or a room whose power levels could not be read) changes
//! nothing.

use super::commands::Command;

pub use crate::protocol::room_power::{ROOM_POWER, RoomChange, RoomPower};

impl RoomChange {
    /// The change a command makes to its room, if any.
    pub fn of(command: &Command) -> Option<Self> {
        Some(match command {
            Command::Rename(_) => Self::Rename,
            Command::Archive => Self::Archive,
            Command::Retention(_) => Self::Retention,
            Command::Share(_) => Self::Share,
            Command::Unshare => Self::Unshare,
            Command::Agent(Some(_)) => Self::DefaultAgent,
            Command::MentionOnly(_) => Self::MentionOnly,
            Command::AnswerUnlinked(_) => Self::AnswerUnlinked,
            Command::Invite(_) => Self::InviteAgent,
            _ => return None,
        })
    }

    /// The change as the start of a sentence.
    fn doing(self) -> &'static str {
        match self {
            Self::Rename => "Renaming this conversation",
            Self::Archive => "Archiving this conversation",
            Self::Retention => "Changing retention",
            Self::Share => "Sharing this conversation",
            Self::Unshare => "Ending the share",
            Self::DefaultAgent => "Choosing the room's agent",
            Self::MentionOnly => "Changing mention-only",
            Self::AnswerUnlinked => "Changing whether agents answer unlinked people",
            Self::InviteAgent => "Inviting an agent",
        }
    }
}

/// Why the sender may not make `change`, as the one-line notice they get; `None` when
/// they may. Without a [`RoomPower`] the change is refused: nobody knows the sender's
/// power.
pub fn refusal(change: RoomChange, power: Option<&RoomPower>) -> Option<String> {
    let Some(power) = power else {
        return Some(format!(
            "{} needs power in this room, and I could not read this room's power levels; try again later.",
            change.doing()
        ));
    };
    let Some(&needed) = power.needs.get(&change) else {
        return Some(format!("{} needs power in this room, and I could not tell how much.", change.doing()));
    };
    match power.sender {
        None => None,
        Some(level) if level >= needed => None,
        Some(level) => Some(format!("{} needs power level {needed} in this room; you have {level}.", change.doing())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::protocol::ChannelMessage;
    use crate::protocol::{ContentType, SenderType};

    fn power(sender: Option<i64>, needed: i64) -> RoomPower {
        RoomPower { sender, needs: RoomChange::ALL.iter().map(|c| (*c, needed)).collect() }
    }

    #[test]
    fn commands_that_change_the_room_are_known() {
        assert_eq!(RoomChange::of(&Command::Retention(Some(1))), Some(RoomChange::Retention));
        assert_eq!(RoomChange::of(&Command::Rename("x".into())), Some(RoomChange::Rename));
        assert_eq!(RoomChange::of(&Command::Invite("echo".into())), Some(RoomChange::InviteAgent));
        assert_eq!(RoomChange::of(&Command::Agent(Some("echo".into()))), Some(RoomChange::DefaultAgent));
        // Reading the room's agent, or commands about the sender, change nothing.
        assert_eq!(RoomChange::of(&Command::Agent(None)), None);
        assert_eq!(RoomChange::of(&Command::Whoami), None);
        assert_eq!(RoomChange::of(&Command::Stop), None);
    }

    #[test]
    fn a_sender_below_the_level_is_told_what_is_needed() {
        assert_eq!(
            refusal(RoomChange::Retention, Some(&power(Some(0), 100))).as_deref(),
            Some("Changing retention needs power level 100 in this room; you have 0.")
        );
        assert_eq!(refusal(RoomChange::Rename, Some(&power(Some(50), 50))), None);
        assert_eq!(refusal(RoomChange::Archive, Some(&power(Some(100), 50))), None);
    }

    #[test]
    fn creators_are_never_refused() {
        assert_eq!(refusal(RoomChange::Archive, Some(&power(None, 100))), None);
    }

    #[test]
    fn without_the_room_s_power_levels_nothing_changes() {
        let refused = refusal(RoomChange::Rename, None).unwrap();
        assert!(refused.starts_with("Renaming this conversation needs power"), "{refused}");
        assert!(!refused.contains('\n'));
        let partial = RoomPower { sender: Some(100), needs: BTreeMap::new() };
        assert!(refusal(RoomChange::Share, Some(&partial)).is_some());
    }

    #[test]
    fn the_power_travels_in_the_message_metadata() {
        let mut msg = ChannelMessage::new("!r", "@a:x", SenderType::User, "!rename x", ContentType::Text);
        assert_eq!(RoomPower::of_message(&msg), None);
        let attached = power(Some(50), 100);
        msg.metadata.insert(ROOM_POWER.into(), serde_json::to_value(&attached).unwrap());
        let json = serde_json::to_string(&msg).unwrap();
        assert!(json.contains("\"retention\":100"), "{json}");
        let back: ChannelMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(RoomPower::of_message(&back), Some(attached));
    }
}
