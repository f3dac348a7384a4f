//! The Discord surface as a [`ChannelAdapter`], over serenity 0.12: the gateway brings
//! messages, edits, deletions, threads and the `/link` command in; webhooks (or the bot
//! itself) carry messages out under the sender's name and avatar.
//!
//! The contract with the hub is `notes/bridge-contract.md`; the operator's side is
//! `docs/discord.md`.

mod commands;
mod cursor;
mod gateway;
mod inbound;
mod outbound;
mod proof;
mod rest;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::DiscordConfig;
use crate::protocol::{
    AdapterHealth, BridgeError, BridgeRight, ChannelAdapter, ChannelConnectError, ChannelMessage, ChannelSendError,
    InboundHandler, MediaRepository, OutboundReaction, SurfaceInfo,
};
use crate::store::{Store, accounts};
use rest::{Rest, RestError};

pub const CHANNEL: &str = "discord";

/// Starts Discord from its `[discord]` section ([`crate::surfaces::Start`]).
pub fn start(
    config: &crate::config::Config,
    store: &Store,
    media: &Arc<dyn MediaRepository>,
) -> Result<Option<crate::surfaces::Started>, String> {
    let Some(section) = &config.discord else { return Ok(None) };
    let adapter = DiscordAdapter::new(section, store.clone(), media.clone()).map_err(|e| e.to_string())?;
    Ok(Some(crate::surfaces::Started { adapter: Arc::new(adapter), routes: None }))
}

/// The bot token of the Discord application: `[discord] token`.
pub const TOKEN: crate::surfaces::BotToken = crate::surfaces::BotToken {
    key: "discord.token",
    env: "MOSAIC_AS_DISCORD_TOKEN",
    get: |config| config.discord.as_ref()?.token.as_deref(),
    set: |config, token| config.discord.get_or_insert_with(Default::default).token = Some(token),
};

/// What Discord is to the hub: channels can be bridged, and bridged messages can be
/// reacted to and deleted.
pub const SURFACE: SurfaceInfo = SurfaceInfo::new(CHANNEL).bridgeable("channel").with_reactions().with_deletions();

/// How often the bot's typing is renewed while an agent works.
const TYPING_RENEWAL: std::time::Duration = std::time::Duration::from_secs(8);

/// How long Discord shows someone typing after a `TYPING_START` (it says no more when
/// they stop; their client starts again while they go on).
const TYPING_LASTS: std::time::Duration = std::time::Duration::from_secs(10);

/// Inbound metadata of a `/link` command: the interaction it came from, so that the
/// answer can be an ephemeral interaction response (outbound, copied back by the hub or
/// matched by `replyToId` / `mosaic.privateTo`).
pub const INTERACTION_ID: &str = "discord.interactionId";
pub const INTERACTION_TOKEN: &str = "discord.interactionToken";

#[derive(Debug, thiserror::Error)]
pub enum DiscordError {
    #[error(
        "the Discord bridge needs a bot token: set MOSAIC_AS_DISCORD_TOKEN, [discord] token, or seal one with `mosaic-as secret set discord.token`"
    )]
    MissingToken,
}

/// Where the gateway connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GatewayStatus {
    Down,
    Resuming,
    Connected,
}

/// Who we are on Discord (from READY, or asked over REST before the gateway is up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    bot_user: u64,
    application: u64,
}

/// A webhook of ours. Its token is a credential: kept in memory only, never logged.
#[derive(Clone)]
struct Hook {
    id: u64,
    token: String,
    name: String,
}

/// What the adapter knows about a Discord channel.
#[derive(Debug, Clone, Copy)]
struct ChannelInfo {
    kind: u8,
    guild: Option<u64>,
    /// For a thread: the channel it belongs to.
    parent: Option<u64>,
}

impl ChannelInfo {
    fn is_thread(&self) -> bool {
        matches!(self.kind, 10..=12)
    }

    /// A DM (channel type 1) is a person's one-to-one chat with the bot.
    fn chat_kind(&self) -> crate::protocol::ChatKind {
        match self.kind {
            1 => crate::protocol::ChatKind::Private,
            _ => crate::protocol::ChatKind::Group,
        }
    }
}

/// How a message we sent can be edited again.
#[derive(Debug, Clone, Copy)]
struct Sent {
    webhook: Option<u64>,
    thread: Option<u64>,
}

/// A `/link` interaction waiting for the hub's answer.
#[derive(Clone)]
struct PendingInteraction {
    token: String,
    user: String,
    created: Instant,
    answered: bool,
}

#[derive(Default)]
struct Caches {
    /// Per bridged channel: our webhook, or `None` when the bot may not manage webhooks.
    webhooks: HashMap<u64, Option<Hook>>,
    /// Ids of webhooks we post through (loop safety).
    own_webhooks: HashSet<u64>,
    channels: HashMap<u64, ChannelInfo>,
    /// `<user id>/<avatar hash>` → `mxc://` URI.
    avatars: HashMap<String, String>,
    /// Messages we sent, by native id (bounded; edits after a restart probe instead).
    sent: HashMap<u64, Sent>,
    /// Messages we deleted (copies of messages deleted elsewhere), whose MESSAGE_DELETE
    /// is no news (bounded like `sent`).
    own_deletions: HashSet<u64>,
    /// Thread started from a root message, by root message id.
    thread_of_root: HashMap<u64, u64>,
    /// Newest message id handed to the hub per channel (mirror of `discord_cursors`).
    cursors: HashMap<u64, u64>,
    /// `/link` interactions by the canonical id of the inbound message made from them.
    interactions: HashMap<Uuid, PendingInteraction>,
}

/// Channel object fields the adapter reads (REST answers).
#[derive(Debug, Clone, Deserialize)]
struct RawChannel {
    #[serde(with = "snowflake")]
    id: u64,
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default, with = "snowflake::option")]
    guild_id: Option<u64>,
    #[serde(default, with = "snowflake::option")]
    parent_id: Option<u64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, with = "snowflake::option")]
    last_message_id: Option<u64>,
}

impl RawChannel {
    fn info(&self) -> ChannelInfo {
        ChannelInfo { kind: self.kind, guild: self.guild_id, parent: self.parent_id }
    }
}

pub struct DiscordAdapter {
    inner: Arc<Inner>,
}

struct Inner {
    /// Handed to serenity for the gateway only; never logged.
    token: String,
    cdn_url: String,
    rest: Rest,
    store: Store,
    media: Arc<dyn MediaRepository>,
    handler: watch::Sender<Option<Arc<dyn InboundHandler>>>,
    status: watch::Sender<GatewayStatus>,
    identity: RwLock<Option<Identity>>,
    caches: Mutex<Caches>,
    gateway: tokio::sync::Mutex<Option<gateway::Running>>,
    /// Servers whose channels admins may bridge without proof (`[discord] bridge_guilds`).
    bridge_guilds: Vec<u64>,
    /// The bot types for every agent and person elsewhere at once: one notice per chat.
    typing: crate::agents::typing::ChatThrottle,
}

impl DiscordAdapter {
    pub fn new(config: &DiscordConfig, store: Store, media: Arc<dyn MediaRepository>) -> Result<Self, DiscordError> {
        let token = config.token.clone().filter(|t| !t.trim().is_empty()).ok_or(DiscordError::MissingToken)?;
        let api_url = config.api_url.trim_end_matches('/').to_string();
        let inner = Inner {
            rest: Rest::new(&token, &api_url),
            cdn_url: cdn_url(&api_url),
            token,
            store,
            media,
            handler: watch::channel(None).0,
            status: watch::channel(GatewayStatus::Down).0,
            identity: RwLock::new(None),
            caches: Mutex::new(Caches::default()),
            gateway: tokio::sync::Mutex::new(None),
            typing: crate::agents::typing::ChatThrottle::new(TYPING_RENEWAL / 2),
            bridge_guilds: config.bridge_guilds.clone(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }
}

/// Avatars and attachments come from Discord's CDN; a test fake or an API proxy serves
/// them under its own base URL.
fn cdn_url(api_url: &str) -> String {
    if api_url == "https://discord.com" { "https://cdn.discordapp.com".into() } else { api_url.into() }
}

#[async_trait]
impl ChannelAdapter for DiscordAdapter {
    fn name(&self) -> &'static str {
        CHANNEL
    }

    fn surface(&self) -> SurfaceInfo {
        SURFACE
    }

    async fn connect(&self) -> Result<(), ChannelConnectError> {
        gateway::connect(&self.inner).await
    }

    async fn disconnect(&self) {
        gateway::disconnect(&self.inner).await;
    }

    async fn health(&self) -> AdapterHealth {
        match *self.inner.status.borrow() {
            GatewayStatus::Down => AdapterHealth::Disconnected,
            GatewayStatus::Resuming => AdapterHealth::Degraded,
            GatewayStatus::Connected if self.inner.rest.recently_limited() => AdapterHealth::Degraded,
            GatewayStatus::Connected => AdapterHealth::Connected,
        }
    }

    fn on_message(&self, handler: Arc<dyn InboundHandler>) {
        self.inner.handler.send_replace(Some(handler));
    }

    async fn send_message(&self, channel_id: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        self.inner.send(channel_id, msg, false).await
    }

    /// Bot messages carry an enforced nonce, so Discord itself drops a repeat; webhook
    /// messages take none, so the channel is searched for the earlier copy first.
    async fn resend_message(&self, channel_id: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        self.inner.send(channel_id, msg, true).await
    }

    async fn map_identity(&self, channel_user_id: &str) -> Option<String> {
        let mut conn = self.inner.store.conn().await.ok()?;
        match accounts::account_for_identity(&mut conn, CHANNEL, channel_user_id).await {
            Ok(account) => account.map(|a| a.id),
            Err(error) => {
                tracing::warn!(channel = CHANNEL, event = "map_identity_failed", %error);
                None
            }
        }
    }

    async fn open_bridge(&self, channel_id: &str) -> Result<String, BridgeError> {
        self.inner.open_bridge(channel_id).await
    }

    async fn may_bridge(&self, channel_id: &str, requester: &[String]) -> BridgeRight {
        self.inner.may_bridge(channel_id, requester).await
    }

    async fn close_bridge(&self, channel_id: &str) {
        if let Ok(id) = channel_id.parse::<u64>() {
            self.inner.caches.lock().unwrap().webhooks.remove(&id);
        }
    }

    /// Discord's typing lasts about ten seconds.
    fn typing_renewal(&self) -> Option<std::time::Duration> {
        Some(TYPING_RENEWAL)
    }

    /// The bot reacts for people elsewhere (webhooks cannot react).
    async fn send_reaction(
        &self,
        channel_id: &str,
        reaction: &OutboundReaction,
        _by: &ChannelMessage,
    ) -> Result<(), ChannelSendError> {
        self.inner.react(channel_id, reaction).await
    }

    /// Discord shows typing for the bot only (webhooks cannot type), and has no call
    /// that clears it: a stopped notice lapses.
    async fn set_typing(&self, channel_id: &str, _agent_id: &str, active: bool) -> Result<(), ChannelSendError> {
        self.inner.typing(channel_id, active).await
    }

    /// People elsewhere type as the bot, like agents.
    async fn set_person_typing(
        &self,
        channel_id: &str,
        _by: &ChannelMessage,
        active: bool,
    ) -> Result<(), ChannelSendError> {
        self.inner.typing(channel_id, active).await
    }
}

impl Inner {
    /// Who we are: from READY, else asked over REST (an `open_bridge` before `connect`).
    async fn identity(&self) -> Result<Identity, RestError> {
        if let Some(identity) = *self.identity.read().unwrap() {
            return Ok(identity);
        }
        #[derive(Deserialize)]
        struct Id {
            #[serde(with = "snowflake")]
            id: u64,
        }
        use serenity::http::{LightMethod, Request, Route};
        let user: Id = self.rest.json(|| Request::new(Route::UserMe, LightMethod::Get)).await?;
        let app: Id = self.rest.json(|| Request::new(Route::Oauth2ApplicationCurrent, LightMethod::Get)).await?;
        let identity = Identity { bot_user: user.id, application: app.id };
        *self.identity.write().unwrap() = Some(identity);
        Ok(identity)
    }

    fn known_identity(&self) -> Option<Identity> {
        *self.identity.read().unwrap()
    }

    /// The channel's kind, guild and parent, asked once per channel.
    async fn channel_info(&self, channel: u64) -> Result<ChannelInfo, RestError> {
        if let Some(info) = self.caches.lock().unwrap().channels.get(&channel) {
            return Ok(*info);
        }
        let raw = self.fetch_channel(channel).await?;
        Ok(raw.info())
    }

    async fn fetch_channel(&self, channel: u64) -> Result<RawChannel, RestError> {
        use serenity::http::{LightMethod, Request, Route};
        use serenity::model::id::ChannelId;
        let route = Route::Channel { channel_id: ChannelId::new(channel) };
        let raw: RawChannel = self.rest.json(|| Request::new(route, LightMethod::Get)).await?;
        self.caches.lock().unwrap().channels.insert(channel, raw.info());
        Ok(raw)
    }
}

/// Snowflakes travel as strings in Discord's JSON.
mod snowflake {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            let text: Option<String> = Option::deserialize(d)?;
            text.map(|t| t.parse().map_err(serde::de::Error::custom)).transpose()
        }
    }
}
