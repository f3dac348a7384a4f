//! The Telegram surface as a [`ChannelAdapter`], over teloxide's Bot API client.
//!
//! Updates arrive by `getUpdates` long polling (default) or by webhook; each is turned
//! into a [`ChannelMessage`] and handed to the hub, and the update is confirmed only after
//! the hub accepted it. Outbound messages are bot messages in MarkdownV2 with the sender's
//! name in bold in front.

mod errors;
mod inbound;
pub mod markdown;
mod outbound;
mod polling;
mod proof;
mod topics;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use teloxide::Bot;
use teloxide::payloads::SetWebhookSetters;
use teloxide::prelude::Requester;
use teloxide::types::AllowedUpdate;

pub use self::errors::TelegramError;
use self::errors::{Failure, classify, redact};
use crate::config::{TelegramConfig, TelegramMode};
use crate::protocol::{
    AdapterHealth, BridgeError, BridgeRight, CONNECT_TIMEOUT, ChannelAdapter, ChannelConnectError, ChannelMessage,
    ChannelSendError, InboundHandler, MediaRepository, OutboundReaction, SurfaceInfo,
};
use crate::store::{self, Store, accounts};

pub const CHANNEL: &str = "telegram";

/// Starts Telegram from its `[telegram]` section, with the webhook route in webhook mode
/// ([`crate::surfaces::Start`]).
pub fn start(
    config: &crate::config::Config,
    store: &Store,
    media: &Arc<dyn MediaRepository>,
) -> Result<Option<crate::surfaces::Started>, String> {
    let Some(section) = &config.telegram else { return Ok(None) };
    let adapter = TelegramAdapter::new(section, store.clone(), media.clone()).map_err(|e| e.to_string())?;
    let routes = (section.mode == TelegramMode::Webhook).then(|| adapter.webhook_router());
    Ok(Some(crate::surfaces::Started { adapter: Arc::new(adapter), routes }))
}

/// The bot token from BotFather: `[telegram] token`.
pub const TOKEN: crate::surfaces::BotToken = crate::surfaces::BotToken {
    key: "telegram.token",
    env: "MOSAIC_AS_TELEGRAM_TOKEN",
    get: |config| config.telegram.as_ref()?.token.as_deref(),
    set: |config, token| config.telegram.get_or_insert_with(Default::default).token = Some(token),
};

/// What Telegram is to the hub: bots take `/` commands there (the client offers them),
/// chats can be bridged, and messages can be reacted to and deleted.
pub const SURFACE: SurfaceInfo =
    SurfaceInfo::new(CHANNEL).command_prefix('/').bridgeable("chat").with_reactions().with_deletions();

/// Where the webhook router listens when `webhook_url` names no path.
pub const DEFAULT_WEBHOOK_PATH: &str = "/_mosaic/telegram/webhook";

/// How often the bot's typing is renewed while an agent works.
const TYPING_RENEWAL: Duration = Duration::from_secs(4);

/// A polling failure that lasts longer than this reads as `Disconnected`.
const POLL_FAILURE_GRACE: Duration = Duration::from_secs(60);

/// Updates the bridge asks for; everything else (joins, polls…) is not bridged. Telegram
/// sends `message_reaction` only when asked for it, and only to bots that administer
/// the chat.
const ALLOWED_UPDATES: [AllowedUpdate; 5] = [
    AllowedUpdate::Message,
    AllowedUpdate::EditedMessage,
    AllowedUpdate::ChannelPost,
    AllowedUpdate::EditedChannelPost,
    AllowedUpdate::MessageReaction,
];

/// Who the bot is, learned from `getMe` on connect.
#[derive(Debug, Clone)]
pub(crate) struct BotIdentity {
    pub id: u64,
    pub username: String,
    /// Privacy mode off: the bot sees every group message, not only commands.
    pub reads_all_group_messages: bool,
}

/// The pieces of state `health()` reads.
#[derive(Default)]
struct HealthState {
    connected: AtomicBool,
    /// Unix ms until which Telegram asked us to slow down.
    rate_limited_until: AtomicI64,
    /// Unix ms of the first of the current run of failed polls (0: polling works).
    poll_failing_since: AtomicI64,
}

impl HealthState {
    fn note_rate_limit(&self, retry_after: Duration) {
        let until = store::now_ms() + retry_after.as_millis() as i64;
        self.rate_limited_until.fetch_max(until, Ordering::Relaxed);
    }

    fn poll_ok(&self) {
        self.poll_failing_since.store(0, Ordering::Relaxed);
    }

    fn poll_failed(&self) {
        let _ = self.poll_failing_since.compare_exchange(0, store::now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }

    fn get(&self) -> AdapterHealth {
        if !self.connected.load(Ordering::Relaxed) {
            return AdapterHealth::Disconnected;
        }
        let now = store::now_ms();
        let failing_since = self.poll_failing_since.load(Ordering::Relaxed);
        if failing_since > 0 && now - failing_since > POLL_FAILURE_GRACE.as_millis() as i64 {
            return AdapterHealth::Disconnected;
        }
        if failing_since > 0 || self.rate_limited_until.load(Ordering::Relaxed) > now {
            return AdapterHealth::Degraded;
        }
        AdapterHealth::Connected
    }
}

/// What `connect` started.
enum Running {
    Polling(polling::Poller),
    Webhook,
}

pub(crate) struct Inner {
    /// Sends, edits, files: requests that answer at once.
    bot: Bot,
    /// `getUpdates` holds the request open for `poll_timeout_secs`; it gets a client
    /// whose timeout is longer than that.
    poll_bot: Bot,
    token: String,
    config: TelegramConfig,
    store: Store,
    media: Arc<dyn MediaRepository>,
    handler: RwLock<Option<Arc<dyn InboundHandler>>>,
    me: RwLock<Option<BotIdentity>>,
    health: HealthState,
    running: tokio::sync::Mutex<Option<Running>>,
    webhook_secret: String,
    /// The bot types for every agent and person elsewhere at once: one notice per chat.
    typing: crate::agents::typing::ChatThrottle,
}

impl Inner {
    fn handler(&self) -> Option<Arc<dyn InboundHandler>> {
        self.handler.read().expect("handler lock").clone()
    }

    fn me(&self) -> Option<BotIdentity> {
        self.me.read().expect("identity lock").clone()
    }

    /// An error's text with the bot token taken out.
    fn redact(&self, text: impl std::fmt::Display) -> String {
        redact(&text.to_string(), &self.token)
    }

    fn classify(&self, error: teloxide::RequestError) -> Failure {
        classify(error, &self.token)
    }
}

/// The Telegram bridge. Cheap to share: clones of its router and poller hold the same
/// state.
pub struct TelegramAdapter {
    inner: Arc<Inner>,
}

impl TelegramAdapter {
    pub fn new(config: &TelegramConfig, store: Store, media: Arc<dyn MediaRepository>) -> Result<Self, TelegramError> {
        let token = config.token.clone().filter(|t| !t.trim().is_empty()).ok_or(TelegramError::MissingToken)?;
        let api_url = url::Url::parse(&config.api_url)
            .map_err(|e| TelegramError::BadApiUrl { url: config.api_url.clone(), reason: e.to_string() })?;
        let client = |timeout: Duration| {
            teloxide::net::default_reqwest_settings()
                .timeout(timeout)
                .build()
                .map_err(|e| TelegramError::Client(redact(&e.to_string(), &token)))
        };
        // Uploads of large files need more than teloxide's default 17 s.
        let bot = Bot::with_client(&token, client(Duration::from_secs(60))?).set_api_url(api_url.clone());
        let poll_timeout = Duration::from_secs(u64::from(config.poll_timeout_secs) + 15);
        let poll_bot = Bot::with_client(&token, client(poll_timeout)?).set_api_url(api_url);
        let webhook_secret = errors::webhook_secret(&token);
        Ok(Self {
            inner: Arc::new(Inner {
                bot,
                poll_bot,
                token,
                config: config.clone(),
                store,
                media,
                handler: RwLock::new(None),
                me: RwLock::new(None),
                health: HealthState::default(),
                running: tokio::sync::Mutex::new(None),
                webhook_secret,
                typing: crate::agents::typing::ChatThrottle::new(TYPING_RENEWAL / 2),
            }),
        })
    }

    /// Webhook mode: the route Telegram posts updates to (the path of `webhook_url`).
    /// The caller mounts it on the public HTTP listener, e.g. `app.merge(router)`.
    pub fn webhook_router(&self) -> axum::Router {
        polling::webhook_router(self.inner.clone(), &self.webhook_path())
    }

    /// The path of `webhook_url`, or [`DEFAULT_WEBHOOK_PATH`].
    pub fn webhook_path(&self) -> String {
        self.inner
            .config
            .webhook_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| u.path().to_string())
            .filter(|p| p != "/")
            .unwrap_or_else(|| DEFAULT_WEBHOOK_PATH.to_string())
    }

    /// The secret Telegram sends in `X-Telegram-Bot-Api-Secret-Token` (derived from the
    /// bot token, so every replica agrees without more configuration).
    pub fn webhook_secret(&self) -> &str {
        &self.inner.webhook_secret
    }

    /// The bot's `@username`, known after `connect`.
    pub fn bot_username(&self) -> Option<String> {
        self.inner.me().map(|me| me.username)
    }

    async fn learn_identity(&self) -> Result<BotIdentity, String> {
        let me = match tokio::time::timeout(CONNECT_TIMEOUT, self.inner.bot.get_me()).await {
            Ok(Ok(me)) => me,
            Ok(Err(error)) => return Err(format!("getMe failed: {}", self.inner.redact(error))),
            Err(_) => return Err(format!("getMe did not answer within {} s", CONNECT_TIMEOUT.as_secs())),
        };
        let identity = BotIdentity {
            id: me.user.id.0,
            username: me.user.username.clone().unwrap_or_default(),
            reads_all_group_messages: me.can_read_all_group_messages,
        };
        *self.inner.me.write().expect("identity lock") = Some(identity.clone());
        Ok(identity)
    }

    async fn start_webhook(&self) -> Result<(), String> {
        let Some(url) = self.inner.config.webhook_url.clone() else {
            return Err("mode = \"webhook\" needs [telegram] webhook_url".into());
        };
        let url = url::Url::parse(&url).map_err(|e| format!("bad webhook_url: {e}"))?;
        let request = self
            .inner
            .bot
            .set_webhook(url)
            .secret_token(self.inner.webhook_secret.clone())
            .allowed_updates(ALLOWED_UPDATES.to_vec())
            // One update at a time keeps a chat's messages in order and lets the hub push back.
            .max_connections(1);
        match tokio::time::timeout(CONNECT_TIMEOUT, request.into_future()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("setWebhook failed: {}", self.inner.redact(error))),
            Err(_) => Err("setWebhook did not answer in time".into()),
        }
    }
}

#[async_trait]
impl ChannelAdapter for TelegramAdapter {
    fn name(&self) -> &'static str {
        CHANNEL
    }

    fn surface(&self) -> SurfaceInfo {
        SURFACE
    }

    /// `getMe`, then starts long polling (or registers the webhook). Idempotent.
    async fn connect(&self) -> Result<(), ChannelConnectError> {
        let error = |message: String| ChannelConnectError { channel: CHANNEL.into(), message };
        let mut running = self.inner.running.lock().await;
        if let Some(Running::Polling(poller)) = running.as_ref()
            && poller.is_finished()
        {
            *running = None;
        }
        if running.is_some() {
            return Ok(());
        }
        let me = self.learn_identity().await.map_err(error)?;
        *running = Some(match self.inner.config.mode {
            TelegramMode::Polling => Running::Polling(polling::Poller::start(self.inner.clone()).await),
            TelegramMode::Webhook => {
                self.start_webhook().await.map_err(error)?;
                Running::Webhook
            }
        });
        self.inner.health.connected.store(true, Ordering::Relaxed);
        tracing::info!(channel = CHANNEL, event = "connected", bot = %me.username, mode = ?self.inner.config.mode);
        Ok(())
    }

    async fn disconnect(&self) {
        let running = self.inner.running.lock().await.take();
        if let Some(Running::Polling(poller)) = running {
            poller.stop().await;
        }
        self.inner.health.connected.store(false, Ordering::Relaxed);
        tracing::info!(channel = CHANNEL, event = "disconnected");
    }

    async fn health(&self) -> AdapterHealth {
        self.inner.health.get()
    }

    fn on_message(&self, handler: Arc<dyn InboundHandler>) {
        *self.inner.handler.write().expect("handler lock") = Some(handler);
    }

    async fn send_message(&self, channel_id: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        outbound::send(&self.inner, channel_id, msg).await
    }

    /// The bot's reaction shows what people elsewhere react with (see
    /// `outbound::react`).
    async fn send_reaction(
        &self,
        channel_id: &str,
        reaction: &OutboundReaction,
        _by: &ChannelMessage,
    ) -> Result<(), ChannelSendError> {
        outbound::react(&self.inner, channel_id, reaction).await
    }

    async fn map_identity(&self, channel_user_id: &str) -> Option<String> {
        let mut conn = self.inner.store.conn().await.ok()?;
        accounts::account_for_identity(&mut conn, CHANNEL, channel_user_id).await.ok().flatten().map(|a| a.id)
    }

    async fn open_bridge(&self, channel_id: &str) -> Result<String, BridgeError> {
        outbound::open_bridge(&self.inner, channel_id).await
    }

    /// A chat action lasts about five seconds.
    fn typing_renewal(&self) -> Option<Duration> {
        Some(TYPING_RENEWAL)
    }

    /// Telegram shows the bot typing (people's names are only in the text), and has no
    /// call that clears it: a stopped notice lapses.
    async fn set_typing(&self, channel_id: &str, _agent_id: &str, active: bool) -> Result<(), ChannelSendError> {
        outbound::typing(&self.inner, channel_id, active).await
    }

    /// People elsewhere type as the bot, like agents. (Telegram tells bots nothing of
    /// people typing there: that way round nothing is shown.)
    async fn set_person_typing(
        &self,
        channel_id: &str,
        _by: &ChannelMessage,
        active: bool,
    ) -> Result<(), ChannelSendError> {
        outbound::typing(&self.inner, channel_id, active).await
    }

    async fn may_bridge(&self, channel_id: &str, requester: &[String]) -> BridgeRight {
        self.inner.may_bridge(channel_id, requester).await
    }
}
