use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::{ChannelMessage, SurfaceInfo};

/// Where a sent message landed: its id on the surface, in the chat it was sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landing {
    pub channel: String,
    pub chat_id: String,
    pub native_id: String,
    /// The canonical id of the message sent.
    pub message_id: uuid::Uuid,
}

/// Who records where a sent message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandingRecord {
    /// The adapter, durably, before its send returns.
    ByAdapter,
    /// The caller, in a transaction of its own (see [`ChannelAdapter::send_leaving_landing`]).
    ByCaller,
}

/// Sends `msg` (again, after an unknown outcome, when `resend`), the landing recorded as
/// `record` says. Returns the landing still to be recorded, if the caller is to.
pub async fn send_recording<A: ChannelAdapter + ?Sized>(
    adapter: &A,
    channel_id: &str,
    msg: &ChannelMessage,
    resend: bool,
    record: LandingRecord,
) -> Result<Option<Landing>, ChannelSendError> {
    match (record, resend) {
        (LandingRecord::ByCaller, _) => adapter.send_leaving_landing(channel_id, msg, resend).await,
        (LandingRecord::ByAdapter, true) => adapter.resend_message(channel_id, msg).await.map(|()| None),
        (LandingRecord::ByAdapter, false) => adapter.send_message(channel_id, msg).await.map(|()| None),
    }
}

/// Connection state reported by [`ChannelAdapter::health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterHealth {
    /// Fully operational.
    Connected,
    /// Partly working: rate-limited, resuming, or read-only.
    Degraded,
    /// No connection to the channel backend.
    Disconnected,
}

/// `connect` could not establish the connection (within its 10 s limit).
#[derive(Debug, thiserror::Error)]
#[error("{channel}: cannot connect: {message}")]
pub struct ChannelConnectError {
    pub channel: String,
    pub message: String,
}

/// `send_message` failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelSendError {
    /// Will never succeed as is (channel gone, permission revoked, bad request).
    #[error("terminal send failure: {0}")]
    Terminal(String),
    /// Retried inside the adapter and still failing; worth trying again later.
    #[error("transient send failure: {message}")]
    Transient { message: String, retry_after: Option<Duration> },
    /// The request went out but its answer was lost, and the surface offers no way to
    /// look whether it was carried out: sending again could show the message twice.
    #[error("unconfirmed send: {0}")]
    Unconfirmed(String),
}

/// `open_bridge` failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The chat cannot be bridged as it is. The text is for the people in the room: it
    /// says what to change (invite the bot, give it a permission), never an error.
    #[error("{0}")]
    Refused(String),
    /// Talking to the surface failed; the detail is for the log only.
    #[error(transparent)]
    Send(#[from] ChannelSendError),
}

/// Error from an inbound handler. A transient one: the adapter keeps the message and
/// offers it again later. A permanent one (the message itself cannot be stored, e.g.
/// data the database refuses): the adapter logs it and goes on with the next message.
#[derive(Debug, thiserror::Error)]
#[error("inbound handler failed: {message}")]
pub struct HandlerError {
    pub message: String,
    pub permanent: bool,
}

impl HandlerError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: false }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: true }
    }
}

/// Whether a chat of a surface may be bridged, as that surface tells
/// ([`ChannelAdapter::may_bridge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeRight {
    /// The operator allow-listed the chat (or the server it belongs to) in the config.
    AllowListed,
    /// One of the requester's linked identities there administers the chat.
    Proven,
    /// Not allowed: one line that says what is missing and how to fix it.
    Refused(String),
}

/// A reaction to show in one chat of a surface, in that surface's terms
/// ([`ChannelAdapter::send_reaction`]). Who reacts is the reaction's message: its sender,
/// the surface it was made on and the sender's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundReaction {
    /// The channel-native id of the message reacted to, in this chat.
    pub target: String,
    /// The emoji; a custom emoji of another surface travels as its name (`:name:`).
    pub key: String,
    /// The reaction is taken back.
    pub removed: bool,
    /// For a removal: the channel-native id of this chat's copy of the reaction taken
    /// back, on surfaces where a reaction is an event of its own (Matrix).
    pub copy: Option<String>,
    /// What people elsewhere still show on the message after this change, oldest first
    /// (their reactions made outside this chat). A surface where only its bot can react
    /// shows these: it removes a key only when nobody shows it any more, and one that
    /// allows the bot a single reaction shows the newest it can.
    pub shown: Vec<String>,
    /// An earlier try may have landed (the outbox tries again after a failure without an
    /// answer, or after a restart): a surface that can look before it sends does so.
    pub retry: bool,
}

/// Receives every inbound message of an adapter. The adapter awaits each call before it
/// delivers the next message (back-pressure).
#[async_trait]
pub trait InboundHandler: Send + Sync {
    async fn handle(&self, msg: ChannelMessage) -> Result<(), HandlerError>;
}

/// One surface (Matrix, Discord, Telegram, …). Everything channel-specific stays behind
/// this trait; the hub sees only `ChannelMessage`s.
#[async_trait]
pub trait ChannelAdapter: Send + Sync {
    /// Stable lowercase name, e.g. `matrix`; the namespace for identities and logs.
    fn name(&self) -> &'static str;

    /// What this surface is and can show: its command prefix, whether its chats can be
    /// bridged, its capabilities. The hub reads surfaces only through this. The
    /// default describes a surface named [`ChannelAdapter::name`] that shows messages
    /// only; a surface returns its own constant (named by `name`, too).
    fn surface(&self) -> SurfaceInfo {
        SurfaceInfo::new(self.name())
    }

    /// Establishes the connection; idempotent; fails with [`ChannelConnectError`] when
    /// the backend cannot be reached within 10 s.
    async fn connect(&self) -> Result<(), ChannelConnectError>;

    /// Flushes in-flight sends and releases resources.
    async fn disconnect(&self);

    /// Current connection state. Never fails: problems read as `Disconnected`.
    async fn health(&self) -> AdapterHealth;

    /// Installs the inbound handler (the last one installed wins).
    fn on_message(&self, handler: Arc<dyn InboundHandler>);

    /// Sends `msg` to the channel-native `channel_id`. Transient failures are retried
    /// with backoff inside the adapter before an error is returned.
    async fn send_message(&self, channel_id: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError>;

    /// Sends `msg` again after a try whose outcome is unknown (it failed without an
    /// answer, or the service stopped while it ran): an adapter that can find out whether
    /// the first try landed looks before it sends, so the message does not appear twice.
    /// The default sends again, for surfaces whose sends are idempotent by themselves.
    async fn resend_message(&self, channel_id: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        self.send_message(channel_id, msg).await
    }

    /// Sends `msg` as [`ChannelAdapter::send_message`] does (or as
    /// [`ChannelAdapter::resend_message`] when `resend`), but hands back where it landed
    /// instead of recording it: the caller records the landing in a transaction of its
    /// own, which saves a durable write when it writes one anyway. An adapter that
    /// records its landings itself returns `None`, as the default does; an adapter that
    /// wraps another passes this on.
    async fn send_leaving_landing(
        &self,
        channel_id: &str,
        msg: &ChannelMessage,
        resend: bool,
    ) -> Result<Option<Landing>, ChannelSendError> {
        send_recording(self, channel_id, msg, resend, LandingRecord::ByAdapter).await
    }

    /// The account id linked to a channel-native user id, or `None` for anonymous senders.
    async fn map_identity(&self, channel_user_id: &str) -> Option<String>;

    /// An admin bridged `channel_id` into a conversation: checks that the channel is
    /// reachable, prepares what sending there needs (a Discord webhook), and says in one
    /// line how messages will appear there. Runs again on every `!bridge`, so it must
    /// be idempotent.
    async fn open_bridge(&self, channel_id: &str) -> Result<String, BridgeError> {
        let _ = channel_id;
        Ok(String::new())
    }

    /// An admin asks to bridge `channel_id`: may they? `requester` holds their linked user
    /// ids on this surface (none when they linked none). A surface allows a chat the
    /// operator allow-listed, or one that one of those identities administers there.
    /// Never fails: a surface that cannot be asked refuses, saying so.
    async fn may_bridge(&self, channel_id: &str, requester: &[String]) -> BridgeRight {
        let _ = (channel_id, requester);
        BridgeRight::Refused(format!("Chats of {} cannot be bridged.", self.name()))
    }

    /// The bridge of `channel_id` was removed; release what `open_bridge` prepared.
    async fn close_bridge(&self, channel_id: &str) {
        let _ = channel_id;
    }

    /// How often a typing notice must be sent again to stay visible here (a little less
    /// than it lasts), or `None` (the default) when this surface cannot show that
    /// someone is typing: then [`ChannelAdapter::set_typing`] is never called.
    fn typing_renewal(&self) -> Option<Duration> {
        None
    }

    /// Shows (`active`) or clears that the agent `agent_id` is typing in `channel_id`.
    /// A surface that shows typing only for its bot shows the bot typing; one whose
    /// notices cannot be cleared lets them lapse. Typing is ephemeral: one try, no
    /// retry inside the adapter, and the caller only logs a failure.
    async fn set_typing(&self, channel_id: &str, agent_id: &str, active: bool) -> Result<(), ChannelSendError> {
        let _ = (channel_id, agent_id, active);
        Ok(())
    }

    /// Shows (`active`) or clears that a person of another surface is typing in
    /// `channel_id`: `by` is their typing event (its sender, the surface it came from and
    /// the sender's name). Same contract as [`ChannelAdapter::set_typing`], and called
    /// only where [`ChannelAdapter::typing_renewal`] is `Some`. The default shows
    /// nothing.
    async fn set_person_typing(
        &self,
        channel_id: &str,
        by: &ChannelMessage,
        active: bool,
    ) -> Result<(), ChannelSendError> {
        let _ = (channel_id, by, active);
        Ok(())
    }

    /// The agent `agent_id` took up the message `native_id` (a channel-native id) of
    /// `channel_id`: a surface with read receipts shows that the agent has seen it. The
    /// default does nothing, so surfaces without receipts never get invented ones. One
    /// try, like [`ChannelAdapter::set_typing`].
    async fn mark_read(&self, channel_id: &str, native_id: &str, agent_id: &str) -> Result<(), ChannelSendError> {
        let _ = (channel_id, native_id, agent_id);
        Ok(())
    }

    /// Whether this surface can show reactions, as [`SurfaceInfo::reactions`] says
    /// (when not, [`ChannelAdapter::send_reaction`] is never called).
    fn supports_reactions(&self) -> bool {
        self.surface().reactions
    }

    /// Shows (or takes back) `reaction` in `channel_id`, made by `by`: the reaction as the
    /// hub logged it, whose id is fixed before the first try. Sent through the outbox
    /// like messages: transient failures are retried with backoff inside the adapter, and
    /// a reaction the surface cannot show (an emoji it does not know) is `Ok`, not an error.
    async fn send_reaction(
        &self,
        channel_id: &str,
        reaction: &OutboundReaction,
        by: &ChannelMessage,
    ) -> Result<(), ChannelSendError> {
        let _ = (channel_id, reaction, by);
        Ok(())
    }
}
