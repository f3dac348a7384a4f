//! The sender's power in a room, as a surface's adapter reads it and attaches it to a
//! message that may be a command (under [`ROOM_POWER`]); the hub decides with it who may
//! change the room (see `crate::hub::power`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ChannelMessage;

/// Metadata key of the [`RoomPower`] an adapter attaches to a message.
pub const ROOM_POWER: &str = "mosaic.roomPower";

/// A change of the room a command makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomChange {
    /// `!rename`: the room's name.
    Rename,
    /// `!archive`: the room becomes read-only and gets a tombstone.
    Archive,
    /// `!retention`: how long the room keeps its history.
    Retention,
    /// `!share`: the room joins a team's Space, opens its history and invites the team.
    Share,
    /// `!unshare`: the room leaves the Space and the people the share brought are removed.
    Unshare,
    /// `!agent <id>`: the room's default agent.
    DefaultAgent,
    /// `!mention-only`.
    MentionOnly,
    /// `!unlinked`: whether agents answer people without a linked account.
    AnswerUnlinked,
    /// `!invite <agent>`: an agent is invited into the room.
    InviteAgent,
}

impl RoomChange {
    pub const ALL: [RoomChange; 9] = [
        Self::Rename,
        Self::Archive,
        Self::Retention,
        Self::Share,
        Self::Unshare,
        Self::DefaultAgent,
        Self::MentionOnly,
        Self::AnswerUnlinked,
        Self::InviteAgent,
    ];
}

/// The sender's power in the room a message came from, and what each change needs there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPower {
    /// The sender's power level; `None` when it is unlimited (a creator of the room, from
    /// Matrix room version 12 on).
    pub sender: Option<i64>,
    /// The power level each change needs in this room.
    pub needs: BTreeMap<RoomChange, i64>,
}

impl RoomPower {
    /// The power the adapter attached to `msg`, if any.
    pub fn of_message(msg: &ChannelMessage) -> Option<Self> {
        serde_json::from_value(msg.metadata.get(ROOM_POWER)?.clone()).ok()
    }
}
