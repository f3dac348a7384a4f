//! Hub → Discord: through the channel's webhook under the sender's name and avatar, or as
//! the bot with the name in bold when the bot may not manage webhooks. Replies, threads,
//! edits (agents stream answers as a message plus edits), attachments, long texts, and
//! private answers (DMs, ephemeral `/link` answers).

use serde::Deserialize;
use serde_json::{Value, json};
use serenity::all::ReactionType;
use serenity::builder::CreateAttachment;
use serenity::http::{LightMethod, Multipart, MultipartUpload, Request, Route};
use serenity::model::id::{ChannelId, MessageId, WebhookId};
use uuid::Uuid;

use super::rest::{RestError, codes};
use super::{CHANNEL, Hook, Inner, RawChannel, Sent, cursor, snowflake};
use crate::agents::stream::{derived_id, split_parts};
use crate::protocol::{
    BridgeError, ChannelEvent, ChannelMessage, ChannelSendError, ContentType, Landing, OutboundReaction, SenderType,
    metadata_keys as keys,
};
use crate::store::group_commit::Write;
use crate::store::{StoreError, messages};

/// Discord's limit on a message's content, in characters.
pub(super) const LIMIT: usize = 2000;
/// The name our webhooks get.
const WEBHOOK_NAME: &str = "Mosaic";
/// How many sent messages are remembered for edits (an agent's stream needs the last few).
const SENT_MEMORY: usize = 10_000;

/// Messages read back when looking for an earlier try of a webhook message.
const LOOK_BACK: usize = 50;

/// A message as read back from a channel.
#[derive(Deserialize)]
struct Posted {
    #[serde(with = "snowflake")]
    id: u64,
    #[serde(default)]
    content: String,
    #[serde(default, with = "snowflake::option")]
    webhook_id: Option<u64>,
    author: PostedBy,
}

#[derive(Deserialize)]
struct PostedBy {
    #[serde(default)]
    username: String,
}

#[derive(Deserialize)]
struct Created {
    #[serde(with = "snowflake")]
    id: u64,
}

#[derive(Deserialize)]
struct RawWebhook {
    #[serde(with = "snowflake")]
    id: u64,
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, with = "snowflake::option")]
    application_id: Option<u64>,
    #[serde(default)]
    user: Option<Created>,
}

/// Where one message goes.
struct Target {
    chat: u64,
    thread: Option<u64>,
    hook: Option<Hook>,
}

impl From<RestError> for ChannelSendError {
    fn from(error: RestError) -> Self {
        if error.is_transient() {
            ChannelSendError::Transient { retry_after: error.retry_after(), message: error.to_string() }
        } else {
            ChannelSendError::Terminal(error.to_string())
        }
    }
}

fn store_error(error: StoreError) -> ChannelSendError {
    ChannelSendError::Transient { message: error.to_string(), retry_after: None }
}

/// Where a message goes among a channel's threads.
enum ThreadPlace {
    /// In the channel itself.
    Channel,
    Thread(u64),
    /// In the thread of the message `root`, which has none yet.
    Unstarted {
        root: u64,
    },
}

fn parse_id(text: &str, what: &str) -> Result<u64, ChannelSendError> {
    text.parse().map_err(|_| ChannelSendError::Terminal(format!("{what} {text:?} is not a Discord id")))
}

impl Inner {
    /// Shows the bot typing in the channel (`POST /channels/{id}/typing`), unless it was
    /// just shown there for someone else; Discord keeps it up for about ten seconds, or
    /// until the bot posts there. A stop does nothing: Discord cannot clear typing.
    pub(super) async fn typing(&self, channel_id: &str, active: bool) -> Result<(), ChannelSendError> {
        if !active || !self.typing.due(channel_id) {
            return Ok(());
        }
        let channel_id = ChannelId::new(parse_id(channel_id, "channel")?);
        self.rest.call_once(Request::new(Route::ChannelTyping { channel_id }, LightMethod::Post)).await?;
        Ok(())
    }

    /// Shows or takes back the bot's reaction on a message (`PUT` / `DELETE
    /// /channels/{id}/messages/{id}/reactions/{emoji}/@me`). The bot reacts once per
    /// emoji, for everyone elsewhere: a key somebody there still shows stays. Custom
    /// emoji of other surfaces (`:name:`) and keys Discord does not know as emoji are
    /// not shown.
    pub(super) async fn react(&self, channel_id: &str, reaction: &OutboundReaction) -> Result<(), ChannelSendError> {
        let chat = parse_id(channel_id, "channel")?;
        let message = parse_id(&reaction.target, "message")?;
        let key = reaction.key.as_str();
        if key.len() > 2 && key.starts_with(':') && key.ends_with(':') {
            return Ok(());
        }
        if reaction.removed && reaction.shown.iter().any(|k| k == key) {
            return Ok(());
        }
        let channel = self.message_channel(chat, message).await?;
        let emoji = ReactionType::Unicode(key.to_string()).as_data();
        let route = Route::ChannelMessageReactionMe {
            channel_id: ChannelId::new(channel),
            message_id: MessageId::new(message),
            reaction: &emoji,
        };
        let method = if reaction.removed { LightMethod::Delete } else { LightMethod::Put };
        match self.rest.call(|| Request::new(route, method)).await {
            Ok(_) => {
                tracing::debug!(
                    channel = CHANNEL,
                    event = "reacted",
                    chat,
                    message_id = message,
                    removed = reaction.removed
                );
                Ok(())
            }
            Err(error) if matches!(error.code(), Some(codes::UNKNOWN_EMOJI | codes::UNKNOWN_MESSAGE)) => {
                tracing::info!(channel = CHANNEL, event = "reaction_not_shown", chat, message_id = message, %error);
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The channel a message of `chat` is in: `chat` itself, or the thread of a message
    /// we posted there or a person wrote there.
    async fn message_channel(&self, chat: u64, message: u64) -> Result<u64, ChannelSendError> {
        if let Some(thread) = self.caches.lock().unwrap().sent.get(&message).and_then(|s| s.thread) {
            return Ok(thread);
        }
        let mut conn = self.store.conn().await.map_err(store_error)?;
        let chat_key = chat.to_string();
        let Some(id) = messages::message_for_native(&mut conn, CHANNEL, &chat_key, &message.to_string())
            .await
            .map_err(store_error)?
        else {
            return Ok(chat);
        };
        let written_here = messages::get(&mut conn, id)
            .await
            .map_err(store_error)?
            .filter(|m| m.origin_channel() == CHANNEL && m.channel_id == chat_key);
        Ok(written_here.and_then(|m| m.thread_id).and_then(|t| t.parse().ok()).unwrap_or(chat))
    }

    /// `resend`: an earlier try may have posted the message already (see
    /// [`crate::protocol::ChannelAdapter::resend_message`]).
    pub(super) async fn send(
        &self,
        channel_id: &str,
        msg: &ChannelMessage,
        resend: bool,
    ) -> Result<(), ChannelSendError> {
        let chat = parse_id(channel_id, "channel")?;
        if let ChannelEvent::Delete { target } = msg.event {
            return self.delete_copy(chat, channel_id, msg, target).await;
        }
        if let Some(user) = msg.meta_str(keys::PRIVATE_TO) {
            return self.send_private(channel_id, user, msg).await;
        }
        if let Some(answer) = self.pending_answer_for(msg, None)
            && self.answer_interaction(channel_id, msg, answer).await?
        {
            return Ok(());
        }
        let replaces = msg.meta_str(keys::REPLACES).and_then(|r| Uuid::parse_str(r).ok());
        if replaces.is_none() && self.native_of(channel_id, msg.id).await?.is_some() {
            return Ok(()); // sent before a crash; the outbox is retrying
        }
        let mut target = Target { chat, thread: self.thread_for(chat, msg).await?, hook: None };
        target.hook = self.webhook(chat).await?;
        if let Some(original) = replaces
            && self.edit(&target, channel_id, msg, original).await?
        {
            return Ok(());
        }
        self.send_new(&target, channel_id, msg, resend).await
    }

    async fn send_new(
        &self,
        target: &Target,
        channel_id: &str,
        msg: &ChannelMessage,
        resend: bool,
    ) -> Result<(), ChannelSendError> {
        let quote = if target.hook.is_some() { self.reply_quote(channel_id, msg).await? } else { None };
        let native_reply = match (&target.hook, msg.reply_to_id) {
            (None, Some(reply)) => self.native_of(channel_id, reply).await?,
            _ => None,
        };
        let mut parts = self.render(target, msg, quote.as_deref());
        let (files, not_fetchable) = self.files(msg).await?;
        for name in not_fetchable {
            let note = crate::protocol::not_bridged_note(&name);
            match parts.last_mut() {
                Some(last) if last.chars().count() + note.chars().count() < LIMIT => {
                    last.push('\n');
                    last.push_str(&note);
                }
                _ => parts.push(note),
            }
        }
        if parts.is_empty() && files.is_empty() {
            parts.push(String::new());
        }
        for (index, text) in parts.iter().enumerate() {
            let id = part_id(msg.id, index);
            if self.native_of(channel_id, id).await?.is_some() {
                continue;
            }
            if resend && let Some(native) = self.find_webhook_copy(channel_id, target, msg, text).await? {
                tracing::info!(channel = CHANNEL, event = "earlier_try_found", id = %id, native);
                self.record(channel_id, &native, id, target).await?;
                continue;
            }
            let reply = if index == 0 { native_reply.as_deref() } else { None };
            let native = self.post(target, msg, id, text, reply, None).await?;
            self.record(channel_id, &native, id, target).await?;
        }
        for (offset, (bytes, name)) in files.into_iter().enumerate() {
            let id = part_id(msg.id, parts.len() + offset);
            if self.native_of(channel_id, id).await?.is_some() {
                continue;
            }
            let native = self.post(target, msg, id, "", None, Some((bytes, name))).await?;
            self.record(channel_id, &native, id, target).await?;
        }
        tracing::info!(channel = CHANNEL, event = "sent", id = %msg.id, chat = target.chat, parts = parts.len(), webhook = target.hook.is_some());
        Ok(())
    }

    /// The text as Discord shows it, split into messages of at most 2000 characters.
    fn render(&self, target: &Target, msg: &ChannelMessage, quote: Option<&str>) -> Vec<String> {
        let mut body = match msg.content_type {
            ContentType::Code => {
                let lang = msg.meta_str(keys::LANGUAGE).unwrap_or("");
                format!("```{lang}\n{}\n```", msg.content.trim_end_matches('\n'))
            }
            _ => msg.content.clone(),
        };
        body = neutralise_mentions(&matrix_pills_as_text(&body));
        if target.hook.is_none() && !body.is_empty() {
            body = format!("**{}**: {body}", sender_name(msg));
        }
        if let Some(quote) = quote {
            body = format!("{quote}\n{body}");
        }
        if body.is_empty() { Vec::new() } else { split_parts(&body, LIMIT) }
    }

    /// Webhook messages cannot reply natively: they get a quote line of the original and a
    /// jump link instead. Bot messages reply natively (no quote).
    async fn reply_quote(&self, channel_id: &str, msg: &ChannelMessage) -> Result<Option<String>, ChannelSendError> {
        let Some(reply) = msg.reply_to_id else { return Ok(None) };
        let mut conn = self.store.conn().await.map_err(store_error)?;
        let original = messages::get(&mut conn, reply).await.map_err(store_error)?;
        let native = messages::native_for_message(&mut conn, CHANNEL, channel_id, reply).await.map_err(store_error)?;
        drop(conn);
        let chat = parse_id(channel_id, "channel")?;
        let (content, who) = match (original, &native) {
            (Some(original), _) => {
                // The log keeps people's names as they wrote them; shown, they carry
                // their surface as everywhere else.
                let who = match original.sender_type {
                    SenderType::User => crate::protocol::person_name(&original),
                    _ => original.meta_str(keys::SENDER_NAME).unwrap_or("").to_string(),
                };
                (original.content, who)
            }
            (None, Some(native)) => self.fetch_quoted(chat, native).await,
            (None, None) => return Ok(None),
        };
        let first_line: String = content.lines().next().unwrap_or("").chars().take(100).collect();
        let mut line =
            if who.is_empty() { format!("> ↪ {first_line}") } else { format!("> ↪ **{who}**: {first_line}") };
        let guild = self.caches.lock().unwrap().channels.get(&chat).and_then(|c| c.guild);
        if let (Some(native), Some(guild)) = (native, guild) {
            line.push_str(&format!(" ([jump](https://discord.com/channels/{guild}/{channel_id}/{native}))"));
        }
        Ok(Some(neutralise_mentions(&line)))
    }

    /// Text and author of a message the store does not hold, asked from Discord (best
    /// effort: a quote is decoration).
    async fn fetch_quoted(&self, chat: u64, native: &str) -> (String, String) {
        #[derive(Deserialize)]
        struct Author {
            username: String,
            #[serde(default)]
            global_name: Option<String>,
        }
        #[derive(Deserialize)]
        struct Quoted {
            content: String,
            author: Author,
        }
        let Ok(message_id) = native.parse::<u64>() else { return Default::default() };
        let route = Route::ChannelMessage { channel_id: ChannelId::new(chat), message_id: MessageId::new(message_id) };
        match self.rest.json::<Quoted, _>(|| Request::new(route, LightMethod::Get)).await {
            Ok(q) => (q.content, q.author.global_name.unwrap_or(q.author.username)),
            Err(_) => Default::default(),
        }
    }

    /// One Discord message: through the webhook (`?wait=true` to learn its id) or as the bot.
    async fn post(
        &self,
        target: &Target,
        msg: &ChannelMessage,
        part: Uuid,
        text: &str,
        reply: Option<&str>,
        file: Option<(Vec<u8>, String)>,
    ) -> Result<String, ChannelSendError> {
        let mut payload = json!({"content": text, "allowed_mentions": {"parse": []}});
        if let Some(name) = &file {
            payload["attachments"] = json!([{"id": 0, "filename": name.1}]);
        }
        let result = match &target.hook {
            Some(hook) => {
                payload["username"] = json!(webhook_username(&sender_name(msg)));
                if let Some(avatar) = msg.meta_str(keys::SENDER_AVATAR_URL).filter(|a| a.starts_with("https://")) {
                    payload["avatar_url"] = json!(avatar);
                }
                self.execute_webhook(hook, target.thread, &payload, file.clone()).await
            }
            None => {
                if let Some(reply) = reply {
                    payload["message_reference"] = json!({"message_id": reply, "fail_if_not_exists": false});
                }
                // Discord answers a repeated nonce (within minutes) with the message it
                // created the first time, so a retry after a lost answer posts nothing new.
                payload["nonce"] = json!(part.simple().to_string()[..25]);
                payload["enforce_nonce"] = json!(true);
                let channel = target.thread.unwrap_or(target.chat);
                let route = Route::ChannelMessages { channel_id: ChannelId::new(channel) };
                self.rest
                    .json::<Created, _>(|| with_body(Request::new(route, LightMethod::Post), &payload, &file))
                    .await
            }
        };
        match result {
            Ok(created) => Ok(created.id.to_string()),
            // Someone deleted our webhook: forget it; the outbox's retry makes a new one.
            Err(error) if error.code() == Some(codes::UNKNOWN_WEBHOOK) => {
                self.caches.lock().unwrap().webhooks.remove(&target.chat);
                Err(ChannelSendError::Transient { message: error.to_string(), retry_after: None })
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn execute_webhook(
        &self,
        hook: &Hook,
        thread: Option<u64>,
        payload: &Value,
        file: Option<(Vec<u8>, String)>,
    ) -> Result<Created, RestError> {
        let route = Route::WebhookWithToken { webhook_id: WebhookId::new(hook.id), token: &hook.token };
        let mut params = vec![("wait", "true".to_string())];
        if let Some(thread) = thread {
            params.push(("thread_id", thread.to_string()));
        }
        self.rest
            .json(|| with_body(Request::new(route, LightMethod::Post), payload, &file).params(Some(params.clone())))
            .await
    }

    /// The earlier try of a webhook message whose answer was lost: a message of our
    /// webhook among the channel's latest, with this very name and text, that no message
    /// of ours is recorded for. (Bot messages need no search: their nonce does it.)
    async fn find_webhook_copy(
        &self,
        channel_id: &str,
        target: &Target,
        msg: &ChannelMessage,
        text: &str,
    ) -> Result<Option<String>, ChannelSendError> {
        let Some(hook) = &target.hook else { return Ok(None) };
        let route = Route::ChannelMessages { channel_id: ChannelId::new(target.thread.unwrap_or(target.chat)) };
        let params = vec![("limit", LOOK_BACK.to_string())];
        let recent: Vec<Posted> =
            self.rest.json(|| Request::new(route, LightMethod::Get).params(Some(params.clone()))).await?;
        let username = webhook_username(&sender_name(msg));
        for posted in recent {
            if posted.webhook_id == Some(hook.id) && posted.content == text && posted.author.username == username {
                let native = posted.id.to_string();
                let mut conn = self.store.conn().await.map_err(store_error)?;
                let known = messages::message_for_native(&mut conn, CHANNEL, channel_id, &native).await;
                if known.map_err(store_error)?.is_none() {
                    return Ok(Some(native));
                }
            }
        }
        Ok(None)
    }

    async fn record(&self, channel_id: &str, native: &str, id: Uuid, target: &Target) -> Result<(), ChannelSendError> {
        let landed = Write::Landed(Landing {
            channel: CHANNEL.into(),
            chat_id: channel_id.into(),
            native_id: native.into(),
            message_id: id,
        });
        self.store.commit_grouped(landed).await.map_err(store_error)?;
        if let Ok(native) = native.parse::<u64>() {
            let mut caches = self.caches.lock().unwrap();
            if caches.sent.len() >= SENT_MEMORY {
                caches.sent.clear();
            }
            caches.sent.insert(native, Sent { webhook: target.hook.as_ref().map(|h| h.id), thread: target.thread });
        }
        Ok(())
    }

    async fn native_of(&self, channel_id: &str, id: Uuid) -> Result<Option<String>, ChannelSendError> {
        let mut conn = self.store.conn().await.map_err(store_error)?;
        messages::native_for_message(&mut conn, CHANNEL, channel_id, id).await.map_err(store_error)
    }

    /// Edits our copy of `original` (part by part); false when we never sent it.
    async fn edit(
        &self,
        target: &Target,
        channel_id: &str,
        msg: &ChannelMessage,
        original: Uuid,
    ) -> Result<bool, ChannelSendError> {
        let Some(first) = self.native_of(channel_id, original).await? else { return Ok(false) };
        let sent = first.parse::<u64>().ok().and_then(|n| self.caches.lock().unwrap().sent.get(&n).copied());
        // Render as the original was sent (webhook or bot), so the name prefix matches.
        let as_sent = Target {
            chat: target.chat,
            thread: sent.map_or(target.thread, |s| s.thread),
            hook: if sent.is_some_and(|s| s.webhook.is_none()) { None } else { target.hook.clone() },
        };
        for (index, text) in self.render(&as_sent, msg, None).iter().enumerate() {
            let id = part_id(original, index);
            match self.native_of(channel_id, id).await? {
                Some(native) => self.patch(&as_sent, &native, text).await?,
                None => {
                    let native = self.post(&as_sent, msg, id, text, None, None).await?;
                    self.record(channel_id, &native, id, &as_sent).await?;
                }
            }
        }
        tracing::debug!(channel = CHANNEL, event = "edited", id = %original, chat = target.chat);
        Ok(true)
    }

    /// Deletes our copy of `original` (every part of it). A deletion never posts
    /// anything: without a copy here there is nothing to do, and a copy already gone is
    /// done with.
    async fn delete_copy(
        &self,
        chat: u64,
        channel_id: &str,
        msg: &ChannelMessage,
        original: Uuid,
    ) -> Result<(), ChannelSendError> {
        let mut deleted = 0;
        for index in 0.. {
            let Some(native) = self.native_of(channel_id, part_id(original, index)).await? else { break };
            let Ok(message) = native.parse::<u64>() else { continue };
            let sent = self.caches.lock().unwrap().sent.get(&message).copied();
            let thread = match sent {
                Some(sent) => sent.thread,
                None => self.known_thread(chat, msg).await?,
            };
            // As an edit does: through the webhook unless the bot posted it itself.
            let hook = match sent {
                Some(Sent { webhook: None, .. }) => None,
                _ => self.webhook(chat).await?,
            };
            if self.delete_one(chat, thread, hook.as_ref(), message).await? {
                deleted += 1;
            }
        }
        tracing::debug!(channel = CHANNEL, event = "deleted", id = %original, chat, deleted);
        Ok(())
    }

    /// The thread a copy of `msg`'s target is in, as far as it is known without asking
    /// Discord: the thread named, or the one started from its thread root.
    async fn known_thread(&self, chat: u64, msg: &ChannelMessage) -> Result<Option<u64>, ChannelSendError> {
        Ok(match self.thread_place(chat, msg).await? {
            ThreadPlace::Thread(thread) => Some(thread),
            ThreadPlace::Channel | ThreadPlace::Unstarted { .. } => None,
        })
    }

    /// Where `msg` goes among this channel's threads, as far as it is known without asking
    /// Discord: `threadId` as given, or the thread of `mosaic.threadRootId`'s message here.
    async fn thread_place(&self, chat: u64, msg: &ChannelMessage) -> Result<ThreadPlace, ChannelSendError> {
        if let Some(thread) = msg.thread_id.as_deref().filter(|t| !t.is_empty()) {
            return Ok(ThreadPlace::Thread(parse_id(thread, "thread")?));
        }
        let Some(root) = msg.meta_str(keys::THREAD_ROOT_ID).and_then(|r| Uuid::parse_str(r).ok()) else {
            return Ok(ThreadPlace::Channel);
        };
        let Some(native_root) = self.native_of(&chat.to_string(), root).await? else { return Ok(ThreadPlace::Channel) };
        let root = parse_id(&native_root, "message")?;
        Ok(match self.caches.lock().unwrap().thread_of_root.get(&root) {
            Some(thread) => ThreadPlace::Thread(*thread),
            None => ThreadPlace::Unstarted { root },
        })
    }

    fn note_own_deletion(&self, message: u64) {
        let mut caches = self.caches.lock().unwrap();
        if caches.own_deletions.len() >= SENT_MEMORY {
            caches.own_deletions.clear();
        }
        caches.own_deletions.insert(message);
    }

    /// DELETEs one message: as the webhook's message, else (not the webhook's, or no
    /// webhook) as the bot's. False when Discord no longer has it.
    async fn delete_one(
        &self,
        chat: u64,
        thread: Option<u64>,
        hook: Option<&Hook>,
        message: u64,
    ) -> Result<bool, ChannelSendError> {
        let message_id = MessageId::new(message);
        // Discord tells the gateway about the deletion too: that one is ours, not news.
        self.note_own_deletion(message);
        if let Some(hook) = hook {
            let route = Route::WebhookMessage { webhook_id: WebhookId::new(hook.id), token: &hook.token, message_id };
            let params = thread.map(|t| vec![("thread_id", t.to_string())]);
            match self.rest.call(|| Request::new(route, LightMethod::Delete).params(params.clone())).await {
                Ok(_) => return Ok(true),
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(error.into()),
            }
        }
        let route = Route::ChannelMessage { channel_id: ChannelId::new(thread.unwrap_or(chat)), message_id };
        match self.rest.call(|| Request::new(route, LightMethod::Delete)).await {
            Ok(_) => Ok(true),
            Err(error) if error.code() == Some(codes::UNKNOWN_MESSAGE) => {
                tracing::info!(channel = CHANNEL, event = "copy_already_gone", chat, message_id = message, %error);
                Ok(false)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// PATCHes one message: as the webhook's message, else (not ours through the webhook,
    /// or no webhook) as the bot's.
    async fn patch(&self, target: &Target, native: &str, text: &str) -> Result<(), ChannelSendError> {
        let message_id = MessageId::new(parse_id(native, "message")?);
        let payload = json!({"content": text, "allowed_mentions": {"parse": []}});
        if let Some(hook) = &target.hook {
            let route = Route::WebhookMessage { webhook_id: WebhookId::new(hook.id), token: &hook.token, message_id };
            let params = target.thread.map(|t| vec![("thread_id", t.to_string())]);
            let result = self
                .rest
                .call(|| with_body(Request::new(route, LightMethod::Patch), &payload, &None).params(params.clone()))
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(error.into()),
            }
        }
        let channel = ChannelId::new(target.thread.unwrap_or(target.chat));
        let route = Route::ChannelMessage { channel_id: channel, message_id };
        self.rest.call(|| with_body(Request::new(route, LightMethod::Patch), &payload, &None)).await?;
        Ok(())
    }

    /// Attachments fetched from the media repository, ready to upload, and the names of
    /// those the repository will never hand out (they are bridged as a note instead).
    async fn files(&self, msg: &ChannelMessage) -> Result<(Vec<(Vec<u8>, String)>, Vec<String>), ChannelSendError> {
        let (mut files, mut not_fetchable) = (Vec::new(), Vec::new());
        for attachment in &msg.attachments {
            match self.media.fetch(attachment).await {
                Ok(media) => files.push((media.bytes, attachment.name.clone())),
                Err(crate::protocol::MediaError::Unavailable(e)) => {
                    return Err(ChannelSendError::Transient { message: e, retry_after: None });
                }
                Err(crate::protocol::MediaError::Rejected(e)) => {
                    tracing::warn!(channel = CHANNEL, event = "attachment_not_bridged", id = %msg.id, error = %e);
                    not_fetchable.push(attachment.name.clone());
                }
            }
        }
        Ok((files, not_fetchable))
    }

    /// The thread to post in: the one [`Self::thread_place`] knows, or one started from
    /// the thread root's message here when there is none yet.
    async fn thread_for(&self, chat: u64, msg: &ChannelMessage) -> Result<Option<u64>, ChannelSendError> {
        match self.thread_place(chat, msg).await? {
            ThreadPlace::Channel => Ok(None),
            ThreadPlace::Thread(thread) => Ok(Some(thread)),
            ThreadPlace::Unstarted { root } => {
                let thread = self.start_thread(chat, root, msg).await?;
                self.caches.lock().unwrap().thread_of_root.insert(root, thread);
                Ok(Some(thread))
            }
        }
    }

    async fn start_thread(&self, chat: u64, root: u64, msg: &ChannelMessage) -> Result<u64, ChannelSendError> {
        #[derive(Deserialize)]
        struct Root {
            #[serde(default)]
            content: String,
            #[serde(default)]
            thread: Option<Created>,
        }
        let (channel_id, message_id) = (ChannelId::new(chat), MessageId::new(root));
        let route = Route::ChannelMessage { channel_id, message_id };
        let existing: Root = self.rest.json(|| Request::new(route, LightMethod::Get)).await?;
        if let Some(thread) = existing.thread {
            return Ok(thread.id);
        }
        let name = thread_name(&existing.content, msg);
        let route = Route::ChannelMessageThreads { channel_id, message_id };
        let body = json!({"name": name, "auto_archive_duration": 1440});
        let created: Created =
            match self.rest.json(|| with_body(Request::new(route, LightMethod::Post), &body, &None)).await {
                Ok(created) => created,
                // A thread raced us into existence: Discord gives it the root message's id.
                Err(error) if error.status() == Some(400) => Created { id: root },
                Err(error) => return Err(error.into()),
            };
        tracing::info!(channel = CHANNEL, event = "thread_started", chat, thread = created.id);
        Ok(created.id)
    }

    /// Our webhook in `chat` (found or made once), or `None` for the bold-name fallback.
    pub(super) async fn webhook(&self, chat: u64) -> Result<Option<Hook>, ChannelSendError> {
        if let Some(hook) = self.caches.lock().unwrap().webhooks.get(&chat) {
            return Ok(hook.clone());
        }
        let hook = match self.find_or_create_webhook(chat).await {
            Ok(hook) => Some(hook),
            Err(error) if error.status() == Some(403) => {
                tracing::info!(channel = CHANNEL, event = "webhook_fallback", chat, code = error.code());
                None
            }
            Err(error) => return Err(error.into()),
        };
        let mut caches = self.caches.lock().unwrap();
        if let Some(hook) = &hook {
            caches.own_webhooks.insert(hook.id);
        }
        caches.webhooks.insert(chat, hook.clone());
        Ok(hook)
    }

    /// Reuses a webhook our application made earlier, so restarts do not pile them up.
    async fn find_or_create_webhook(&self, chat: u64) -> Result<Hook, RestError> {
        let identity = self.identity().await?;
        let route = Route::ChannelWebhooks { channel_id: ChannelId::new(chat) };
        let existing: Vec<RawWebhook> = self.rest.json(|| Request::new(route, LightMethod::Get)).await?;
        let ours = existing.into_iter().find(|w| {
            w.kind == 1
                && w.token.is_some()
                && (w.application_id == Some(identity.application)
                    || w.user.as_ref().is_some_and(|u| u.id == identity.bot_user))
        });
        let hook = match ours {
            Some(hook) => hook,
            None => {
                let body = json!({"name": WEBHOOK_NAME});
                let created: RawWebhook =
                    self.rest.json(|| with_body(Request::new(route, LightMethod::Post), &body, &None)).await?;
                tracing::info!(channel = CHANNEL, event = "webhook_created", chat, webhook = created.id);
                created
            }
        };
        let token = hook.token.ok_or_else(|| RestError::Decode("webhook without a token".into()))?;
        Ok(Hook { id: hook.id, token, name: hook.name.unwrap_or_else(|| WEBHOOK_NAME.into()) })
    }

    pub(super) async fn open_bridge(&self, channel_id: &str) -> Result<String, BridgeError> {
        let chat = channel_id
            .parse::<u64>()
            .map_err(|_| BridgeError::Refused(format!("{channel_id:?} is not a Discord channel id")))?;
        let channel = match self.fetch_channel(chat).await {
            Ok(channel) => channel,
            Err(error) if matches!(error.status(), Some(403 | 404)) => {
                return Err(BridgeError::Refused(format!(
                    "Discord channel {chat} is unknown or the bot cannot see it: invite the bot to its server and give it \
                     View Channel there (see docs/discord.md), then bridge again"
                )));
            }
            Err(error) => return Err(ChannelSendError::from(error).into()),
        };
        if !matches!(channel.kind, 0 | 5) {
            return Err(BridgeError::Refused(format!(
                "Discord channel {chat} is not a text channel; bridge a text or announcement channel"
            )));
        }
        self.start_cursor(&channel).await?;
        self.caches.lock().unwrap().webhooks.remove(&chat);
        let name = channel.name.clone().unwrap_or_else(|| chat.to_string());
        Ok(match self.webhook(chat).await? {
            Some(hook) => format!("Messages from Matrix appear in #{name} through the webhook '{}'.", hook.name),
            None => format!(
                "Messages from Matrix appear in #{name} as the bot with the sender's name in bold: the bot lacks \
                 Manage Webhooks there."
            ),
        })
    }

    /// A new bridge starts catching up from the channel's newest message, not from its
    /// beginning.
    async fn start_cursor(&self, channel: &RawChannel) -> Result<(), ChannelSendError> {
        let start = channel.last_message_id.unwrap_or_else(cursor::snowflake_now);
        self.store.write(async |conn| cursor::start(conn, channel.id, start).await).await.map_err(store_error)
    }

    /// A private message: the ephemeral answer of a pending `/link`, else a DM.
    async fn send_private(&self, channel_id: &str, user: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        if self.native_of(channel_id, msg.id).await?.is_some() {
            return Ok(());
        }
        if let Some(answer) = self.pending_answer_for(msg, Some(user))
            && self.answer_interaction(channel_id, msg, answer).await?
        {
            return Ok(());
        }
        let user_id = parse_id(user, "user")?;
        let body = json!({"recipient_id": user_id.to_string()});
        let dm: Created = self
            .rest
            .json(|| with_body(Request::new(Route::UserMeDmChannels, LightMethod::Post), &body, &None))
            .await?;
        let target = Target { chat: dm.id, thread: None, hook: None };
        let mut first = None;
        for (index, text) in split_parts(&neutralise_mentions(&msg.content), LIMIT).iter().enumerate() {
            let native = self.post(&target, msg, part_id(msg.id, index), text, None, None).await?;
            first.get_or_insert(native);
        }
        if let Some(native) = first {
            let remember = async |conn: &mut crate::store::AnyConnection| {
                messages::add_ref(conn, CHANNEL, channel_id, &native, msg.id).await
            };
            self.store.write(remember).await.map_err(store_error)?;
        }
        tracing::info!(channel = CHANNEL, event = "sent_private", id = %msg.id);
        Ok(())
    }
}

/// A JSON body, or `payload_json` plus one file as `files[0]`.
fn with_body<'a>(request: Request<'a>, payload: &Value, file: &Option<(Vec<u8>, String)>) -> Request<'a> {
    match file {
        Some((bytes, name)) => request.multipart(Some(Multipart {
            upload: MultipartUpload::Attachments(vec![CreateAttachment::bytes(bytes.clone(), name.clone())]),
            fields: Vec::new(),
            payload_json: Some(payload.to_string()),
        })),
        None => request.body(Some(payload.to_string().into_bytes())),
    }
}

/// The canonical id of the `index`th Discord message a message became.
fn part_id(id: Uuid, index: usize) -> Uuid {
    if index == 0 { id } else { derived_id(id, &format!("part-{index}")) }
}

fn sender_name(msg: &ChannelMessage) -> String {
    msg.meta_str(keys::SENDER_NAME).filter(|n| !n.trim().is_empty()).unwrap_or(&msg.sender_id).to_string()
}

/// Discord refuses webhook names over 80 characters or containing "discord" / "clyde".
fn webhook_username(name: &str) -> String {
    let mut clean = name.trim().to_string();
    for word in ["discord", "clyde"] {
        while let Some(at) = clean.to_lowercase().find(word) {
            clean.replace_range(at..at + word.len(), &format!("{}\u{200B}{}", &word[..1], &word[1..]));
        }
    }
    let clean: String = clean.chars().take(80).collect();
    if clean.is_empty() { "Matrix".into() } else { clean }
}

fn thread_name(root: &str, msg: &ChannelMessage) -> String {
    let line = root.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let name: String =
        if line.is_empty() { msg.content.lines().next().unwrap_or("") } else { line }.chars().take(80).collect();
    if name.trim().is_empty() { "Thread".into() } else { name }
}

/// `@everyone` and `@here` never ping (a zero-width space breaks them; `allowed_mentions`
/// is empty too).
pub(super) fn neutralise_mentions(text: &str) -> String {
    text.replace("@everyone", "@\u{200B}everyone").replace("@here", "@\u{200B}here")
}

/// Matrix mention pills (`[Alice](https://matrix.to/#/@alice:example.org)`) as plain text.
pub(super) fn matrix_pills_as_text(text: &str) -> String {
    const PILL: &str = "](https://matrix.to/#/";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PILL) {
        let (before, after) = rest.split_at(at);
        let (Some(open), Some(close)) = (before.rfind('['), after.find(')')) else {
            out.push_str(&rest[..at + PILL.len()]);
            rest = &rest[at + PILL.len()..];
            continue;
        };
        out.push_str(&before[..open]);
        out.push_str(&before[open + 1..]);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everyone_and_here_are_broken_up() {
        let text = neutralise_mentions("hey @everyone and @here");
        assert!(!text.contains("@everyone") && !text.contains("@here"));
        assert!(text.contains("everyone") && text.contains("here"));
    }

    #[test]
    fn matrix_pills_become_names() {
        assert_eq!(matrix_pills_as_text("hi [Alice](https://matrix.to/#/@alice:example.org)!"), "hi Alice!");
        assert_eq!(matrix_pills_as_text("no pills [x](https://e.org)"), "no pills [x](https://e.org)");
    }

    #[test]
    fn webhook_names_avoid_forbidden_words() {
        let name = webhook_username("Discord fan");
        assert!(!name.to_lowercase().contains("discord"));
        assert_eq!(webhook_username("  "), "Matrix");
        assert_eq!(webhook_username(&"x".repeat(100)).chars().count(), 80);
    }

    #[test]
    fn parts_after_the_first_get_derived_ids() {
        let id = Uuid::new_v4();
        assert_eq!(part_id(id, 0), id);
        assert_eq!(part_id(id, 1), derived_id(id, "part-1"));
    }
}
