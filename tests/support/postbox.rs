//! Postbox: the smallest surface there is. People post into numbered boxes (its chats);
//! the surface shows what the hub sends it, and tells its messages' native ids to the
//! store as real surfaces do. It is what `docs/adding-a-surface.md` walks through,
//! registered the way `app.rs` registers every surface.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mosaic_as::protocol::{
    AdapterHealth, BridgeRight, ChannelAdapter, ChannelConnectError, ChannelMessage, ChannelSendError, ChatKind,
    ContentType, InboundHandler, OutboundReaction, SenderType, SurfaceInfo, metadata_keys,
};
use mosaic_as::store::{Store, messages};

/// What Postbox is to the hub: commands start with `.`, boxes can be bridged, and it
/// shows neither reactions nor deletions.
pub const SURFACE: SurfaceInfo = SurfaceInfo::new("postbox").command_prefix('.').bridgeable("box");

pub struct Postbox {
    store: Store,
    handler: Mutex<Option<Arc<dyn InboundHandler>>>,
    /// What the boxes show, in order: (box, message).
    shown: Mutex<Vec<(String, ChannelMessage)>>,
    /// Reactions it was asked to show: it cannot, so any is a mistake of the hub.
    reactions: Mutex<Vec<OutboundReaction>>,
}

impl Postbox {
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(Self { store, handler: Mutex::default(), shown: Mutex::default(), reactions: Mutex::default() })
    }

    /// `sender` posts `text` into box `chat`, a private box (only the bot reads it) or not.
    pub async fn post(&self, chat: &str, sender: &str, text: &str, chat_kind: ChatKind) {
        let mut msg = ChannelMessage::new(chat, sender, SenderType::User, text, ContentType::Text);
        msg.chat = chat_kind;
        msg.metadata.insert(metadata_keys::CHANNEL_MESSAGE_ID.into(), format!("in-{}", msg.id).into());
        msg.metadata.insert(metadata_keys::SENDER_NAME.into(), sender.to_uppercase().into());
        let handler = self.handler.lock().unwrap().clone().expect("registered");
        handler.handle(msg).await.expect("the hub takes it");
    }

    pub fn shown(&self) -> Vec<(String, ChannelMessage)> {
        self.shown.lock().unwrap().clone()
    }

    pub fn reactions(&self) -> Vec<OutboundReaction> {
        self.reactions.lock().unwrap().clone()
    }

    /// The first message box `chat` shows whose text contains `text`.
    pub async fn wait_for(&self, chat: &str, text: &str) -> ChannelMessage {
        let found = || self.shown().into_iter().find(|(c, m)| c == chat && m.content.contains(text));
        wait(found, &format!("box {chat} to show {text:?}: {:?}", self.shown())).await.1
    }
}

/// Polls `found` until it finds something (the outbox delivers in the background).
pub async fn wait<T>(found: impl Fn() -> Option<T>, what: &str) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(Instant::now() < deadline, "waited in vain for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[async_trait]
impl ChannelAdapter for Postbox {
    fn name(&self) -> &'static str {
        SURFACE.name
    }

    fn surface(&self) -> SurfaceInfo {
        SURFACE
    }

    async fn connect(&self) -> Result<(), ChannelConnectError> {
        Ok(())
    }

    async fn disconnect(&self) {}

    async fn health(&self) -> AdapterHealth {
        AdapterHealth::Connected
    }

    fn on_message(&self, handler: Arc<dyn InboundHandler>) {
        *self.handler.lock().unwrap() = Some(handler);
    }

    async fn send_message(&self, channel_id: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        let native = format!("out-{}", msg.id);
        let id = msg.id;
        let chat = channel_id.to_string();
        self.store
            .write(async |conn| messages::add_ref(conn, SURFACE.name, &chat, &native, id).await)
            .await
            .map_err(|e| ChannelSendError::Transient { message: e.to_string(), retry_after: None })?;
        self.shown.lock().unwrap().push((channel_id.to_string(), msg.clone()));
        Ok(())
    }

    async fn map_identity(&self, _channel_user_id: &str) -> Option<String> {
        None
    }

    /// Every box may be bridged, as if the operator allow-listed them all.
    async fn may_bridge(&self, _channel_id: &str, _requester: &[String]) -> BridgeRight {
        BridgeRight::AllowListed
    }

    async fn send_reaction(
        &self,
        _channel_id: &str,
        reaction: &OutboundReaction,
        _by: &ChannelMessage,
    ) -> Result<(), ChannelSendError> {
        self.reactions.lock().unwrap().push(reaction.clone());
        Ok(())
    }
}
