//! The channel protocol: the canonical [`ChannelMessage`] every surface speaks, the
//! [`ChannelAdapter`] trait each surface implements, and the [`ChannelRegistry`].
//!
//! The JSON form (camelCase, ISO 8601 timestamps) is the documented wire format,
//! version [`PROTOCOL_VERSION`].

mod adapter;
pub mod link_token;
mod media;
mod message;
mod registry;

pub use adapter::{
    AdapterHealth, BridgeError, BridgeRight, ChannelAdapter, ChannelConnectError, ChannelSendError, HandlerError,
    InboundHandler, OutboundReaction,
};
pub use media::{Media, MediaError, MediaRepository, not_bridged_note};
pub use message::{ChannelAttachment, ChannelMessage, ContentType, SenderType, metadata_keys, rewrite_strings};
pub use registry::{CONNECT_TIMEOUT, ChannelRegistry, DEFAULT_HEALTH_INTERVAL};

/// Semantic version of the `ChannelMessage` wire format.
pub const PROTOCOL_VERSION: &str = "1.0.0";
