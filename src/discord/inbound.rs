//! Discord → hub: messages, edits, deletions and threads become `ChannelMessage`s, handed
//! to the hub one at a time; the hub's `Err` means "offer it again", never "drop it".

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use serenity::all::{Event, Message, MessageType, MessageUpdateEvent, Reaction, ReactionType, TypingStartEvent, User};
use serenity::http::{LightMethod, Request, Route};
use serenity::model::id::ChannelId;
use uuid::Uuid;

use super::gateway::backoff;
use super::rest::RestError;
use super::{CHANNEL, ChannelInfo, Inner, cursor};
use crate::error_ref::ErrorRef;
use crate::protocol::{
    ChannelAttachment, ChannelEvent, ChannelMessage, ContentType, MediaError, SenderType, metadata_keys as keys,
};
use crate::store::{bridges, messages};

/// Messages per page of the catch-up (Discord's maximum).
const PAGE: usize = 100;
/// How long a reaction to our own message waits for that message's send to record
/// where it landed: this many looks, this far apart.
const LANDING_CHECKS: usize = 20;
const LANDING_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Why a message could not be translated yet; it is tried again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Retry(String);

impl From<RestError> for Retry {
    fn from(error: RestError) -> Self {
        Self(error.to_string())
    }
}

impl From<crate::store::StoreError> for Retry {
    fn from(error: crate::store::StoreError) -> Self {
        Self(error.to_string())
    }
}

/// Where a Discord channel sits in the bridge: the bridged chat id and, for a thread,
/// the thread's own id.
pub(super) struct Place {
    pub chat: u64,
    pub thread: Option<u64>,
    pub info: ChannelInfo,
}

impl Inner {
    pub(super) async fn on_event(&self, event: Event) {
        match event {
            Event::MessageCreate(e) => self.on_message(e.message).await,
            Event::MessageUpdate(e) => self.on_update(e).await,
            Event::MessageDelete(e) => self.on_delete(e.channel_id.get(), e.message_id.get()).await,
            Event::MessageDeleteBulk(e) => {
                for id in e.ids {
                    self.on_delete(e.channel_id.get(), id.get()).await;
                }
            }
            Event::ThreadCreate(e) => {
                let info = ChannelInfo {
                    kind: u8::from(e.thread.kind),
                    guild: Some(e.thread.guild_id.get()),
                    parent: e.thread.parent_id.map(|p| p.get()),
                };
                self.caches.lock().unwrap().channels.insert(e.thread.id.get(), info);
            }
            Event::InteractionCreate(e) => self.on_interaction(e.interaction).await,
            Event::TypingStart(e) => self.on_typing(e).await,
            Event::ReactionAdd(e) => self.on_reaction(e.reaction, false).await,
            Event::ReactionRemove(e) => self.on_reaction(e.reaction, true).await,
            Event::ReactionRemoveAll(e) => {
                self.on_reactions_cleared(e.channel_id.get(), e.message_id.get(), None).await
            }
            // serenity 0.12.5 reads this event only with `burst` and `type`, which
            // Discord's documentation does not list for it; without them it never comes.
            Event::ReactionRemoveEmoji(e) => {
                if let Some(key) = reaction_key(&e.reaction.emoji) {
                    self.on_reactions_cleared(e.reaction.channel_id.get(), e.reaction.message_id.get(), Some(key)).await
                }
            }
            _ => {}
        }
    }

    /// A reaction added or taken back (`MESSAGE_REACTION_ADD` / `_REMOVE`) on a message
    /// the hub knows. Our bot's own reactions (those it shows for people elsewhere) are
    /// not read back.
    async fn on_reaction(&self, reaction: Reaction, removed: bool) {
        let Some(user) = reaction.user_id else { return };
        if self.known_identity().is_some_and(|i| user.get() == i.bot_user) {
            return;
        }
        let Some(key) = reaction_key(&reaction.emoji) else { return };
        let msg = until_translated(reaction.message_id.get(), || {
            self.translate_reaction(&reaction, user.get(), &key, removed)
        })
        .await;
        if let Some(msg) = msg {
            self.deliver(msg).await;
        }
    }

    /// Someone started typing (`TYPING_START`): handed to the hub once, never retried, as
    /// typing is ephemeral. The bot's own typing (shown for others) is not read back.
    async fn on_typing(&self, e: TypingStartEvent) {
        if self.known_identity().is_some_and(|i| e.user_id.get() == i.bot_user) {
            return;
        }
        let place = match self.place(e.channel_id.get()).await {
            Ok(place) => place,
            Err(error) => {
                tracing::debug!(channel = CHANNEL, chat = e.channel_id.get(), %error, "typing not passed on");
                return;
            }
        };
        let lasts_ms = u64::try_from(super::TYPING_LASTS.as_millis()).ok();
        let typing = ChannelEvent::Typing { active: true, lasts_ms };
        let mut msg =
            ChannelMessage::new(place.chat.to_string(), e.user_id.to_string(), SenderType::User, "", ContentType::Text)
                .with_event(typing);
        if let Some(member) = &e.member {
            name_sender(&mut msg, &member.user, member.nick.clone());
        }
        let Some(handler) = self.handler.borrow().clone() else { return };
        if let Err(error) = handler.handle(msg).await {
            tracing::debug!(channel = CHANNEL, chat = place.chat, %error, "typing not passed on");
        }
    }

    /// Reactions taken off a message at once, not by their senders
    /// (`MESSAGE_REACTION_REMOVE_ALL`, or `_REMOVE_EMOJI` with the `key` taken off).
    async fn on_reactions_cleared(&self, channel: u64, message: u64, key: Option<String>) {
        let msg = until_translated(message, || self.translate_clearing(channel, message, key.clone())).await;
        if let Some(msg) = msg {
            self.deliver(msg).await;
        }
    }

    /// `None` for a message the hub never saw.
    async fn translate_clearing(
        &self,
        channel: u64,
        message: u64,
        key: Option<String>,
    ) -> Result<Option<ChannelMessage>, Retry> {
        let place = self.place(channel).await?;
        let Some(target) = self.canonical(place.chat, message).await? else { return Ok(None) };
        let event = ChannelEvent::ReactionsCleared { target, key };
        let mut msg =
            ChannelMessage::new(place.chat.to_string(), "", SenderType::User, "", ContentType::Text).with_event(event);
        msg.metadata.insert("channelType".into(), json!(place.info.kind));
        msg.chat = place.info.chat_kind();
        Ok(Some(msg))
    }

    /// `None` for a reaction to a message the hub never saw.
    async fn translate_reaction(
        &self,
        reaction: &Reaction,
        user: u64,
        key: &str,
        removed: bool,
    ) -> Result<Option<ChannelMessage>, Retry> {
        let place = self.place(reaction.channel_id.get()).await?;
        let message = reaction.message_id.get();
        let mut target = self.canonical(place.chat, message).await?;
        // Our own copy may be reacted to before its send recorded where it landed: that
        // takes a moment at most.
        let ours = reaction.message_author_id.is_some_and(|author| self.is_own_author(author.get()));
        for _ in 0..LANDING_CHECKS {
            if target.is_some() || !ours {
                break;
            }
            tokio::time::sleep(LANDING_PAUSE).await;
            target = self.canonical(place.chat, message).await?;
        }
        let Some(target) = target else { return Ok(None) };
        let mut msg = ChannelMessage::reaction(place.chat.to_string(), user.to_string(), key, target, removed);
        // Only an add names the member; a removal takes the name from the reaction it removes.
        if let Some(member) = &reaction.member {
            self.describe_sender(&mut msg, &member.user, member.nick.clone()).await;
        }
        if let Some(guild) = reaction.guild_id.map(|g| g.get()).or(place.info.guild) {
            msg.metadata.insert("guildId".into(), json!(guild.to_string()));
        }
        msg.metadata.insert("channelType".into(), json!(place.info.kind));
        msg.chat = place.info.chat_kind();
        msg.metadata.insert("reactedMessageId".into(), json!(reaction.message_id.to_string()));
        Ok(Some(msg))
    }

    /// A new message (live, or fetched by the catch-up).
    pub(super) async fn on_message(&self, m: Message) {
        let own = self.is_own(&m.author, m.webhook_id.map(|w| w.get()), m.application_id.map(|a| a.get()));
        if own || !matches!(m.kind, MessageType::Regular | MessageType::InlineReply) {
            return;
        }
        // The catch-up after READY may already have handed over what the gateway now
        // delivers live.
        if self.cursor_of(m.channel_id.get()).await.is_some_and(|seen| m.id.get() <= seen) {
            return;
        }
        let msg = until_translated(m.id.get(), || self.translate(&m)).await;
        self.deliver(msg).await;
        self.advance_cursor(m.channel_id.get(), m.id.get()).await;
    }

    async fn translate(&self, m: &Message) -> Result<ChannelMessage, Retry> {
        let place = self.place(m.channel_id.get()).await?;
        // Other bots speak for themselves, as people do: `agent` is for our agents only,
        // whose names are reserved.
        let sender_type = SenderType::User;
        let mut msg = ChannelMessage::new(
            place.chat.to_string(),
            m.author.id.to_string(),
            sender_type,
            &m.content,
            ContentType::Markdown,
        );
        msg.thread_id = place.thread.map(|t| t.to_string());
        msg.timestamp = timestamp(&m.timestamp.to_string());
        let nick = m.member.as_ref().and_then(|member| member.nick.clone());
        // In a chat that is not bridged only commands are read: no file (nor avatar) is
        // fetched for it.
        let bridged = self.is_bridged(place.chat).await?;
        match bridged {
            true => self.describe_sender(&mut msg, &m.author, nick).await,
            false => name_sender(&mut msg, &m.author, nick),
        }
        self.describe_place(&mut msg, m.id.get(), &place, m.guild_id.map(|g| g.get()));
        msg.metadata.insert(keys::DEDUPE_KEY.into(), json!(m.id.to_string()));
        msg.metadata.insert("mentions".into(), json!(m.mentions.iter().map(|u| u.id.to_string()).collect::<Vec<_>>()));
        msg.metadata.insert("embeds".into(), serde_json::to_value(&m.embeds).unwrap_or(Value::Array(vec![])));
        if let Some(reply) = m.message_reference.as_ref().and_then(|r| r.message_id) {
            msg.reply_to_id = self.canonical(place.chat, reply.get()).await?;
        }
        if bridged {
            self.attach(&mut msg, m).await?;
        } else if !m.attachments.is_empty() {
            tracing::debug!(
                channel = CHANNEL,
                event = "files_not_fetched",
                message_id = m.id.get(),
                "chat not bridged"
            );
        }
        Ok(msg)
    }

    /// Whether a Discord channel is bridged into a conversation.
    async fn is_bridged(&self, chat: u64) -> Result<bool, Retry> {
        let mut conn = self.store.conn().await?;
        Ok(bridges::get(&mut conn, CHANNEL, &chat.to_string()).await?.is_some_and(|b| b.is_bridged()))
    }

    /// `senderName` (server nickname, display name, user name) and `senderAvatarUrl`.
    pub(super) async fn describe_sender(&self, msg: &mut ChannelMessage, user: &User, nick: Option<String>) {
        name_sender(msg, user, nick);
        if let Some(mxc) = self.avatar(user).await {
            msg.metadata.insert(keys::SENDER_AVATAR_URL.into(), json!(mxc));
        }
    }

    fn describe_place(&self, msg: &mut ChannelMessage, message_id: u64, place: &Place, guild: Option<u64>) {
        msg.metadata.insert(keys::CHANNEL_MESSAGE_ID.into(), json!(message_id.to_string()));
        if let Some(guild) = guild.or(place.info.guild) {
            msg.metadata.insert("guildId".into(), json!(guild.to_string()));
        }
        msg.metadata.insert("channelType".into(), json!(place.info.kind));
        msg.chat = place.info.chat_kind();
    }

    /// The avatar on Discord's CDN, uploaded to the media repository once per avatar.
    async fn avatar(&self, user: &User) -> Option<String> {
        let hash = user.avatar.as_ref()?.to_string();
        let key = format!("{}/{hash}", user.id);
        if let Some(mxc) = self.caches.lock().unwrap().avatars.get(&key) {
            return Some(mxc.clone());
        }
        let url = format!("{}/avatars/{}/{hash}.png?size=256", self.cdn_url, user.id);
        let bytes = match self.download(&url).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(channel = CHANNEL, event = "avatar_download_failed", user = %user.id, %error);
                return None;
            }
        };
        match self.media.upload(bytes, "image/png", &format!("{hash}.png")).await {
            Ok(mxc) => {
                self.caches.lock().unwrap().avatars.insert(key, mxc.clone());
                Some(mxc)
            }
            Err(error) => {
                tracing::warn!(channel = CHANNEL, event = "avatar_upload_failed", user = %user.id, %error);
                None
            }
        }
    }

    /// Downloads each attachment from Discord and stores it in the media repository;
    /// only the `mxc://` URI travels on.
    async fn attach(&self, msg: &mut ChannelMessage, m: &Message) -> Result<(), Retry> {
        for file in &m.attachments {
            let mime = file.content_type.clone().unwrap_or_else(|| "application/octet-stream".into());
            let bytes = match self.download(&file.url).await {
                Ok(bytes) => bytes,
                Err(error) if error.is_transient() => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(channel = CHANNEL, event = "attachment_gone", message_id = m.id.get(), %error);
                    continue;
                }
            };
            let url = match self.media.upload(bytes, &mime, &file.filename).await {
                Ok(url) => url,
                Err(MediaError::Unavailable(error)) => return Err(Retry(error)),
                Err(MediaError::Rejected(error)) => {
                    // The repository's refusal is for the operator; the chat gets a reference.
                    let reference = ErrorRef::new();
                    tracing::warn!(
                        channel = CHANNEL,
                        event = "attachment_rejected",
                        message_id = m.id.get(),
                        r#ref = %reference,
                        %error
                    );
                    let note = reference.notice(&format!("{} could not be bridged", file.filename));
                    msg.content.push_str(&format!("\n[{note}]"));
                    continue;
                }
            };
            msg.attachments.push(ChannelAttachment {
                name: file.filename.clone(),
                mime_type: mime,
                url,
                size_bytes: Some(u64::from(file.size)),
                encrypted_file: None,
            });
        }
        if msg.content.is_empty()
            && let Some(first) = msg.attachments.first()
        {
            msg.content_type =
                if first.mime_type.starts_with("image/") { ContentType::Image } else { ContentType::File };
        }
        Ok(())
    }

    /// A public CDN download: no bot token goes to the CDN.
    async fn download(&self, url: &str) -> Result<Vec<u8>, RestError> {
        let response = self
            .rest
            .cdn_client()
            .get(url)
            .send()
            .await
            .map_err(|e| RestError::Network(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            return Err(RestError::Status { status, code: 0, message: "download failed".into() });
        }
        let bytes = response.bytes().await.map_err(|e| RestError::Network(e.without_url().to_string()))?;
        Ok(bytes.to_vec())
    }

    async fn on_update(&self, e: MessageUpdateEvent) {
        // Updates without an edit time are Discord filling in embeds, not a user's edit.
        let (Some(content), Some(edited), Some(author)) = (e.content.clone(), e.edited_timestamp, e.author.clone())
        else {
            return;
        };
        let webhook = e.webhook_id.flatten().map(|w| w.get());
        let application = e.application_id.flatten().map(|a| a.get());
        if self.is_own(&author, webhook, application) {
            return;
        }
        let nick = e.member.clone().flatten().and_then(|member| member.nick);
        let edited = edited.to_string();
        let msg =
            until_translated(e.id.get(), || self.translate_edit(&e, &content, &edited, &author, nick.clone())).await;
        self.deliver(msg).await;
    }

    async fn translate_edit(
        &self,
        e: &MessageUpdateEvent,
        content: &str,
        edited: &str,
        author: &User,
        nick: Option<String>,
    ) -> Result<ChannelMessage, Retry> {
        let place = self.place(e.channel_id.get()).await?;
        // Other bots speak for themselves, as people do: `agent` is for our agents only,
        // whose names are reserved.
        let sender_type = SenderType::User;
        let mut msg = ChannelMessage::new(
            place.chat.to_string(),
            author.id.to_string(),
            sender_type,
            content,
            ContentType::Markdown,
        );
        msg.thread_id = place.thread.map(|t| t.to_string());
        msg.timestamp = timestamp(edited);
        self.describe_sender(&mut msg, author, nick).await;
        self.describe_place(&mut msg, e.id.get(), &place, e.guild_id.map(|g| g.get()));
        msg.metadata.insert(keys::DEDUPE_KEY.into(), json!(format!("{}:edit:{edited}", e.id)));
        msg.event = ChannelEvent::Edit { target: self.canonical(place.chat, e.id.get()).await? };
        Ok(msg)
    }

    async fn on_delete(&self, channel: u64, message: u64) {
        if self.caches.lock().unwrap().own_deletions.remove(&message) {
            return;
        }
        let msg = until_translated(message, || self.translate_delete(channel, message)).await;
        if let Some(msg) = msg {
            self.deliver(msg).await;
        }
    }

    /// A deletion of a message the hub knows; `None` for one it never saw (nothing to undo).
    async fn translate_delete(&self, channel: u64, message: u64) -> Result<Option<ChannelMessage>, Retry> {
        let place = self.place(channel).await?;
        let Some(original) = self.canonical(place.chat, message).await? else { return Ok(None) };
        let mut conn = self.store.conn().await?;
        let sender = messages::get(&mut conn, original).await?.map(|m| m.sender_id).unwrap_or_default();
        let mut msg = ChannelMessage::new(place.chat.to_string(), sender, SenderType::User, "", ContentType::Text);
        msg.thread_id = place.thread.map(|t| t.to_string());
        msg.event = ChannelEvent::Delete { target: original };
        msg.metadata.insert(keys::CHANNEL_MESSAGE_ID.into(), json!(message.to_string()));
        msg.metadata.insert(keys::DEDUPE_KEY.into(), json!(format!("{message}:delete")));
        Ok(Some(msg))
    }

    /// Hands one message to the hub and waits until it is accepted.
    pub(super) async fn deliver(&self, msg: ChannelMessage) {
        let mut handler_rx = self.handler.subscribe();
        let mut attempt = 0;
        loop {
            let handler = handler_rx.wait_for(Option::is_some).await.ok().and_then(|h| h.clone());
            let Some(handler) = handler else { return };
            match handler.handle(msg.clone()).await {
                Ok(()) => {
                    tracing::debug!(channel = CHANNEL, event = "inbound", id = %msg.id, chat = %msg.channel_id);
                    return;
                }
                Err(error) if error.permanent => {
                    // This message can never be stored: it alone is dropped.
                    tracing::error!(channel = CHANNEL, event = "inbound_dropped", id = %msg.id, %error);
                    return;
                }
                Err(error) => {
                    attempt += 1;
                    tracing::warn!(channel = CHANNEL, event = "handler_retry", id = %msg.id, %error, attempt);
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }

    /// Whether a message's author is our bot user or one of our webhooks.
    fn is_own_author(&self, author: u64) -> bool {
        self.known_identity().is_some_and(|i| author == i.bot_user)
            || self.caches.lock().unwrap().own_webhooks.contains(&author)
    }

    /// Loop safety: our bot user, our webhooks, and anything our application posted.
    fn is_own(&self, author: &User, webhook: Option<u64>, application: Option<u64>) -> bool {
        let identity = self.known_identity();
        if identity.is_some_and(|i| author.id.get() == i.bot_user || application == Some(i.application)) {
            return true;
        }
        webhook.is_some_and(|w| self.caches.lock().unwrap().own_webhooks.contains(&w))
    }

    /// The bridged chat of a Discord channel: itself, or the parent of a thread.
    pub(super) async fn place(&self, channel: u64) -> Result<Place, Retry> {
        let info = match self.channel_info(channel).await {
            Ok(info) => info,
            // A channel the bot cannot read about (a DM): take it as it is.
            Err(error) if !error.is_transient() => ChannelInfo { kind: 1, guild: None, parent: None },
            Err(error) => return Err(error.into()),
        };
        Ok(match info.parent {
            Some(parent) if info.is_thread() => Place { chat: parent, thread: Some(channel), info },
            _ => Place { chat: channel, thread: None, info },
        })
    }

    async fn canonical(&self, chat: u64, native: u64) -> Result<Option<Uuid>, Retry> {
        let mut conn = self.store.conn().await?;
        Ok(messages::message_for_native(&mut conn, CHANNEL, &chat.to_string(), &native.to_string()).await?)
    }

    async fn advance_cursor(&self, channel: u64, message: u64) {
        {
            let mut caches = self.caches.lock().unwrap();
            let seen = caches.cursors.entry(channel).or_insert(message);
            *seen = (*seen).max(message);
        }
        let result = self.store.write(async |conn| cursor::advance(conn, channel, message).await).await;
        if let Err(error) = result {
            tracing::warn!(channel = CHANNEL, event = "cursor_failed", %error);
        }
    }

    /// The newest message of `channel` handed to the hub (cached after the first read).
    async fn cursor_of(&self, channel: u64) -> Option<u64> {
        if let Some(seen) = self.caches.lock().unwrap().cursors.get(&channel) {
            return Some(*seen);
        }
        let seen = async { cursor::get(&mut *self.store.conn().await?, channel).await }.await.ok().flatten()?;
        Some(*self.caches.lock().unwrap().cursors.entry(channel).or_insert(seen))
    }

    /// Fetches, oldest first, what each bridged channel got since the last message handed
    /// to the hub. Overlap with live events is harmless: the hub dedupes.
    pub(super) async fn catch_up(&self) {
        let channels = match async { bridges::channels_of(&mut *self.store.conn().await?, CHANNEL).await }.await {
            Ok(channels) => channels,
            Err(error) => {
                tracing::warn!(channel = CHANNEL, event = "catch_up_failed", %error);
                return;
            }
        };
        for chat in channels.iter().filter_map(|c| c.parse::<u64>().ok()) {
            if let Err(error) = self.catch_up_channel(chat).await {
                tracing::warn!(channel = CHANNEL, event = "catch_up_failed", chat, %error);
            }
        }
    }

    async fn catch_up_channel(&self, chat: u64) -> Result<(), Retry> {
        let Some(mut after) = cursor::get(&mut *self.store.conn().await?, chat).await? else { return Ok(()) };
        self.caches.lock().unwrap().cursors.insert(chat, after);
        let mut caught = 0;
        loop {
            let route = Route::ChannelMessages { channel_id: ChannelId::new(chat) };
            let params = vec![("after", after.to_string()), ("limit", PAGE.to_string())];
            let mut page: Vec<Message> =
                self.rest.json(|| Request::new(route, LightMethod::Get).params(Some(params.clone()))).await?;
            page.sort_by_key(|m| m.id);
            let full = page.len() >= PAGE;
            for m in page {
                after = after.max(m.id.get());
                caught += 1;
                self.on_message(m).await;
            }
            if !full {
                break;
            }
        }
        if caught > 0 {
            tracing::info!(channel = CHANNEL, event = "caught_up", chat, messages = caught);
        }
        Ok(())
    }
}

/// `senderName`: server nickname, display name, or user name.
fn name_sender(msg: &mut ChannelMessage, user: &User, nick: Option<String>) {
    let name = nick.or_else(|| user.global_name.clone()).unwrap_or_else(|| user.name.clone());
    msg.metadata.insert(keys::SENDER_NAME.into(), json!(name));
}

fn timestamp(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).map(|t| t.with_timezone(&Utc)).unwrap_or_else(|_| Utc::now())
}

/// The key a reaction travels with: the emoji, or a custom emoji's name (`:name:`),
/// which stands for it where it cannot be shown.
fn reaction_key(emoji: &ReactionType) -> Option<String> {
    match emoji {
        ReactionType::Unicode(emoji) => Some(emoji.clone()),
        ReactionType::Custom { name: Some(name), .. } => Some(format!(":{name}:")),
        _ => None,
    }
}

/// Runs `translate` until it succeeds. What fails it is the store or the homeserver
/// being unavailable for a while, and a gateway event is delivered only once: it is
/// tried again with backoff rather than dropped.
async fn until_translated<T, F>(message_id: u64, mut translate: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, Retry>>,
{
    let mut attempt = 0;
    loop {
        match translate().await {
            Ok(translated) => return translated,
            Err(error) => {
                attempt += 1;
                tracing::warn!(channel = CHANNEL, event = "inbound_retry", message_id, %error, attempt);
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
}
