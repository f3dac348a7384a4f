use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a [`super::ChannelMessage`] is: something written, or a change to a message
/// written earlier. Adapters say it when they build a message; the hub decides by it.
///
/// The message changed (`target`) is named by its canonical id. `replyToId` stays what
/// the message answers: an edit, a deletion or a reaction answers nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ChannelEvent {
    /// Something written: `content`, `attachments`, perhaps answering `replyToId`.
    #[default]
    Message,
    /// A new version of `target`; `content` is its new full text. `target` is `None`
    /// when the message edited is not known here: the new text is then shown as a
    /// message of its own, and still never read as a command or a prompt.
    Edit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<Uuid>,
    },
    /// `target` was deleted where it was written.
    Delete { target: Uuid },
    /// The sender put `key` (an emoji; a custom emoji as its name, `:name:`) on `target`,
    /// or took it back (`removed`).
    Reaction {
        target: Uuid,
        key: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        removed: bool,
        /// On a removal, set by the hub: the canonical id of the reaction it takes back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        takes_back: Option<Uuid>,
    },
    /// The reactions people of this chat show on `target` were taken away at once (all
    /// of them, or those with `key`), by a moderator or by the surface, not by each
    /// sender: the hub takes back each one that stands. `senderId` names nobody.
    ReactionsCleared {
        target: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// The sender started (`active`) or stopped typing in the chat. Ephemeral: the hub
    /// shows it on the conversation's other surfaces at once and never logs it. A start
    /// lasts `lastsMs` unless it is renewed, on surfaces that never say when typing
    /// stopped (Discord); without it, until a stop comes.
    Typing {
        active: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lasts_ms: Option<u64>,
    },
}

impl ChannelEvent {
    pub fn is_message(&self) -> bool {
        matches!(self, Self::Message)
    }

    /// The message this event changes, when it changes one.
    pub fn target(&self) -> Option<Uuid> {
        match self {
            Self::Message | Self::Typing { .. } => None,
            Self::Edit { target } => *target,
            Self::Delete { target } | Self::Reaction { target, .. } | Self::ReactionsCleared { target, .. } => {
                Some(*target)
            }
        }
    }
}
