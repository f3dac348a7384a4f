//! The channel protocol: the canonical [`ChannelMessage`] every surface speaks, the
//! [`ChannelAdapter`] trait each surface implements, and the [`ChannelRegistry`].
//!
//! The JSON form (camelCase, ISO 8601 timestamps) is the documented wire format,
//! version [`PROTOCOL_VERSION`].

mod adapter;
mod event;
pub mod link_token;
mod media;
mod message;
mod registry;
pub mod room_power;
mod surface;

pub use adapter::{
    AdapterHealth, BridgeError, BridgeRight, ChannelAdapter, ChannelConnectError, ChannelSendError, HandlerError,
    InboundHandler, Landing, LandingRecord, OutboundReaction, send_recording,
};
pub use event::ChannelEvent;
pub use media::{Media, MediaError, MediaRepository, not_bridged_note};
pub use message::{
    ChannelAttachment, ChannelMessage, ChatKind, ContentType, SenderType, metadata_keys, rewrite_strings,
};
pub use registry::{CONNECT_TIMEOUT, ChannelRegistry, DEFAULT_HEALTH_INTERVAL};
pub use surface::{SurfaceInfo, Surfaces};

/// Semantic version of the `ChannelMessage` wire format.
pub const PROTOCOL_VERSION: &str = "1.2.0";

/// The name of the home surface: the Matrix homeserver this service is an appservice
/// of. Conversations live in its rooms, permissions are given to its user ids, and
/// messages without an origin were written there.
pub const MATRIX: &str = "matrix";

/// How a surface is named to people (`discord` → `Discord`).
pub fn surface_title(channel: &str) -> String {
    let mut chars = channel.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// How a person is named on the other surfaces: their name where they wrote, and that
/// surface (`Alice (Matrix)`). Agents and the bot are named without one, so a person
/// can never appear under their names.
pub fn person_name(msg: &ChannelMessage) -> String {
    let name = msg.meta_str(metadata_keys::SENDER_NAME).map(str::trim).filter(|n| !n.is_empty());
    let surface = surface_title(msg.origin_channel());
    format!("{} ({surface})", name.unwrap_or(&msg.sender_id))
}

/// Whether `word` occurs in `haystack` as a whole word.
pub fn contains_word(haystack: &str, word: &str) -> bool {
    haystack.match_indices(word).any(|(start, _)| {
        let before = haystack[..start].chars().next_back();
        let after = haystack[start + word.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}
