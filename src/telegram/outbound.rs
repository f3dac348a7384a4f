//! The canonical message → Telegram bot messages (the bridge contract's outbound rules).

use std::future::Future;
use std::time::Duration;

use teloxide::RequestError;
use teloxide::payloads::{
    EditMessageTextSetters, SendDocumentSetters, SendMessageSetters, SendPhotoSetters, SetMessageReactionSetters,
};
use teloxide::prelude::Requester;
use teloxide::types::{
    ChatAction, ChatFullInfo, ChatId, InputFile, Message, MessageId, ParseMode, ReactionType, ReplyParameters,
    ThreadId, UserId,
};
use uuid::Uuid;

use super::errors::Failure;
use super::markdown::{self, utf16_len};
use super::{CHANNEL, Inner, topics};
use crate::agents::stream::{derived_id, split_parts};
use crate::protocol::{
    BridgeError, ChannelAttachment, ChannelEvent, ChannelMessage, ChannelSendError, ContentType, OutboundReaction,
    SenderType, metadata_keys as keys,
};
use crate::store::messages;

/// Telegram's limit for a message text, after entity parsing (UTF-16 units).
pub const TEXT_LIMIT: usize = 4096;
/// Telegram's limit for a photo or document caption.
pub const CAPTION_LIMIT: usize = 1024;
/// Tries of one request inside the adapter before the outbox schedules a later retry.
const SEND_TRIES: u32 = 3;
/// A 429 asking for a longer pause than this goes back to the outbox at once rather than
/// holding the send (and the queue behind it) inside the adapter.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(30);

/// Where and how one message goes.
struct Target {
    chat: ChatId,
    /// The chat id as a string: the `channel_id` of the refs.
    chat_key: String,
    reply_to: Option<MessageId>,
    thread: Option<ThreadId>,
}

/// One Telegram message to produce.
enum Piece<'a> {
    Text(String),
    File { attachment: &'a ChannelAttachment, caption: Option<String> },
}

pub(super) async fn send(inner: &Inner, channel_id: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
    if let ChannelEvent::Delete { target } = msg.event {
        return delete(inner, channel_id, target).await;
    }
    let target = target(inner, channel_id, msg).await?;
    let pieces = pieces(msg);
    if let Some(original) = msg.meta_str(keys::REPLACES).and_then(|id| Uuid::parse_str(id).ok())
        && native(inner, &target.chat_key, original).await?.is_some()
    {
        return edit(inner, &target, original, &pieces).await;
    }
    // Without the original here, an edit is sent as a message of its own, under its own id.
    for (index, piece) in pieces.iter().enumerate() {
        let id = part_id(msg.id, index);
        // After a crash the same message comes again: parts already out are not resent.
        if native(inner, &target.chat_key, id).await?.is_some() {
            continue;
        }
        let target = Target { reply_to: target.reply_to.filter(|_| index == 0), ..target.clone() };
        let sent = send_piece(inner, &target, piece).await?;
        remember(inner, &target, &sent, id).await?;
    }
    tracing::debug!(channel = CHANNEL, event = "sent", chat_id = %target.chat_key, message_id = %msg.id, parts = pieces.len());
    Ok(())
}

impl Clone for Target {
    fn clone(&self) -> Self {
        Self { chat: self.chat, chat_key: self.chat_key.clone(), reply_to: self.reply_to, thread: self.thread }
    }
}

/// The first Telegram message of a canonical message maps to its id; the others to ids
/// derived from it.
fn part_id(id: Uuid, index: usize) -> Uuid {
    if index == 0 { id } else { derived_id(id, &format!("part-{index}")) }
}

async fn native(inner: &Inner, chat_key: &str, id: Uuid) -> Result<Option<String>, ChannelSendError> {
    let mut conn = inner.store.conn().await.map_err(transient)?;
    messages::native_for_message(&mut conn, CHANNEL, chat_key, id).await.map_err(transient)
}

async fn remember(inner: &Inner, target: &Target, sent: &Message, id: Uuid) -> Result<(), ChannelSendError> {
    let native_id = sent.id.0.to_string();
    let thread = sent.thread_id.filter(|_| sent.is_topic_message).or(target.thread);
    inner
        .store
        .write(async |conn| {
            messages::add_ref(conn, CHANNEL, &target.chat_key, &native_id, id).await?;
            if let Some(thread) = thread {
                topics::record(conn, &target.chat_key, &native_id, &thread.0.0.to_string()).await?;
            }
            Ok(())
        })
        .await
        .map_err(transient)
}

/// Resolves the chat (`mosaic.privateTo` wins), the reply and the forum topic.
async fn target(inner: &Inner, channel_id: &str, msg: &ChannelMessage) -> Result<Target, ChannelSendError> {
    if let Some(user) = msg.meta_str(keys::PRIVATE_TO) {
        let chat = parse_chat(user)?;
        return Ok(Target { chat, chat_key: chat.0.to_string(), reply_to: None, thread: None });
    }
    let chat = parse_chat(channel_id)?;
    let chat_key = chat.0.to_string();
    let mut conn = inner.store.conn().await.map_err(transient)?;
    let reply_to = match msg.reply_to_id {
        Some(id) => messages::native_for_message(&mut conn, CHANNEL, &chat_key, id).await.map_err(transient)?,
        None => None,
    };
    let mut thread = msg.thread_id.clone().filter(|t| !t.is_empty());
    if thread.is_none()
        && let Some(root) = msg.meta_str(keys::THREAD_ROOT_ID).and_then(|id| Uuid::parse_str(id).ok())
        && let Some(root_native) =
            messages::native_for_message(&mut conn, CHANNEL, &chat_key, root).await.map_err(transient)?
    {
        thread = topics::topic_of(&mut conn, &chat_key, &root_native).await.map_err(transient)?;
    }
    Ok(Target {
        chat,
        chat_key,
        reply_to: reply_to.and_then(|n| n.parse().ok()).map(MessageId),
        thread: thread.and_then(|t| t.parse().ok()).map(|t| ThreadId(MessageId(t))),
    })
}

/// Shows the bot typing in the chat (`sendChatAction`), unless it was just shown there
/// for someone else; Telegram keeps it up for about five seconds, or until the bot's next
/// message there. One try: a late notice is no use. A stop does nothing: it lapses.
pub(super) async fn typing(inner: &Inner, channel_id: &str, active: bool) -> Result<(), ChannelSendError> {
    if !active || !inner.typing.due(channel_id) {
        return Ok(());
    }
    let chat = parse_chat(channel_id)?;
    match inner.bot.send_chat_action(chat, ChatAction::Typing).await {
        Ok(_) => Ok(()),
        Err(error) => Err(send_error(inner.classify(error))),
    }
}

/// The emoji Telegram lets a bot react with (`ReactionTypeEmoji`).
const BOT_REACTIONS: &[&str] = &[
    "👍",
    "👎",
    "❤",
    "🔥",
    "🥰",
    "👏",
    "😁",
    "🤔",
    "🤯",
    "😱",
    "🤬",
    "😢",
    "🎉",
    "🤩",
    "🤮",
    "💩",
    "🙏",
    "👌",
    "🕊",
    "🤡",
    "🥱",
    "🥴",
    "😍",
    "🐳",
    "❤\u{200d}🔥",
    "🌚",
    "🌭",
    "💯",
    "🤣",
    "⚡",
    "🍌",
    "🏆",
    "💔",
    "🤨",
    "😐",
    "🍓",
    "🍾",
    "💋",
    "🖕",
    "😈",
    "😴",
    "😭",
    "🤓",
    "👻",
    "👨\u{200d}💻",
    "👀",
    "🎃",
    "🙈",
    "😇",
    "😨",
    "🤝",
    "✍",
    "🤗",
    "🫡",
    "🎅",
    "🎄",
    "☃",
    "💅",
    "🤪",
    "🗿",
    "🆒",
    "💘",
    "🙉",
    "🦄",
    "😘",
    "💊",
    "🙊",
    "😎",
    "👾",
    "🤷\u{200d}♂",
    "🤷",
    "🤷\u{200d}♀",
    "😡",
];

/// `key` as a reaction a bot may set on Telegram: the emoji without its presentation
/// selector and skin tone (❤️ is ❤ there, 👍🏽 is 👍), if Telegram allows it at all.
pub(super) fn bot_reaction(key: &str) -> Option<String> {
    let plain: String = key.chars().filter(|c| *c != '\u{fe0f}' && !('\u{1f3fb}'..='\u{1f3ff}').contains(c)).collect();
    BOT_REACTIONS.contains(&plain.as_str()).then_some(plain)
}

/// Sets the bot's reaction on a message (`setMessageReaction`) to what people elsewhere
/// show. A bot has one reaction per message and a fixed set of emoji: it shows the
/// newest reaction it may set, and none once nobody elsewhere shows one. An emoji outside
/// that set is not shown on Telegram (the others still are).
pub(super) async fn react(
    inner: &Inner,
    channel_id: &str,
    reaction: &OutboundReaction,
) -> Result<(), ChannelSendError> {
    let chat = parse_chat(channel_id)?;
    let message = reaction
        .target
        .parse::<i32>()
        .map(MessageId)
        .map_err(|_| ChannelSendError::Terminal(format!("{:?} is not a Telegram message id", reaction.target)))?;
    let shown: Vec<ReactionType> = reaction
        .shown
        .iter()
        .rev()
        .find_map(|key| bot_reaction(key))
        .map(|emoji| ReactionType::Emoji { emoji })
        .into_iter()
        .collect();
    let request = || inner.bot.set_message_reaction(chat, message).reaction(shown.clone()).into_future();
    match call(inner, "setMessageReaction", request).await {
        Ok(_) => {
            tracing::debug!(
                channel = CHANNEL,
                event = "reacted",
                chat_id = channel_id,
                message_id = message.0,
                shown = shown.len()
            );
            Ok(())
        }
        // The chat allows fewer reactions, or the message is gone: nothing to show.
        Err(Failure::Terminal(reason))
            if ["REACTION_INVALID", "REACTION_EMPTY", "message to react not found", "MESSAGE_ID_INVALID"]
                .iter()
                .any(|known| reason.contains(known)) =>
        {
            tracing::info!(channel = CHANNEL, event = "reaction_not_shown", chat_id = channel_id, message_id = message.0, %reason);
            Ok(())
        }
        Err(failure) => Err(send_error(failure)),
    }
}

fn parse_chat(id: &str) -> Result<ChatId, ChannelSendError> {
    id.trim().parse::<i64>().map(ChatId).map_err(|_| {
        ChannelSendError::Terminal(format!("{id:?} is not a Telegram chat id (a number such as -1001234567890)"))
    })
}

/// The name shown in front of a message: bold, except for the bot's own notices.
fn name_prefix(msg: &ChannelMessage) -> String {
    if msg.sender_type == SenderType::System {
        return String::new();
    }
    let name = msg.meta_str(keys::SENDER_NAME).filter(|n| !n.trim().is_empty()).unwrap_or(&msg.sender_id);
    format!("*{}*: ", markdown::escape(name))
}

/// The message body as MarkdownV2, given the part of the source to render.
fn render(msg: &ChannelMessage, source: &str) -> String {
    match msg.content_type {
        ContentType::Markdown => markdown::to_markdown_v2(source),
        ContentType::Code => markdown::code_block(source, msg.meta_str(keys::LANGUAGE)),
        _ => markdown::escape(source),
    }
}

/// The Telegram messages `msg` becomes: text parts of at most 4096 units, then the files
/// (the first one captioned with the text when it fits).
fn pieces(msg: &ChannelMessage) -> Vec<Piece<'_>> {
    let prefix = name_prefix(msg);
    let body = msg.content.trim();
    // A caption that only repeats the file name says nothing.
    let body = if msg.attachments.iter().any(|a| a.name == body) { "" } else { body };
    let mut out = Vec::new();
    if msg.attachments.is_empty() {
        let body = if body.is_empty() { "…" } else { body };
        out.extend(prefixed(&prefix, fit(msg, body, TEXT_LIMIT - utf16_len(&prefix) - 1)).map(Piece::Text));
        return out;
    }
    let caption = format!("{prefix}{}", render(msg, body));
    let caption = caption.trim_end_matches([':', ' ']).to_string();
    let caption_fits = utf16_len(&caption) <= CAPTION_LIMIT;
    if !caption_fits {
        out.extend(prefixed(&prefix, fit(msg, body, TEXT_LIMIT - utf16_len(&prefix) - 1)).map(Piece::Text));
    }
    let short = prefix.trim_end_matches([':', ' ']).to_string();
    for (i, attachment) in msg.attachments.iter().enumerate() {
        let caption = match (i, caption_fits) {
            (0, true) => caption.clone(),
            _ => short.clone(),
        };
        out.push(Piece::File { attachment, caption: Some(caption).filter(|c| !c.is_empty()) });
    }
    out
}

/// The name goes in front of the first part; on a line of its own when the part opens
/// with a block (code, quote) that must start a line.
fn prefixed(prefix: &str, parts: Vec<String>) -> impl Iterator<Item = String> {
    parts.into_iter().enumerate().map(move |(i, part)| match i {
        0 if prefix.is_empty() => part,
        0 if part.starts_with("```") || part.starts_with('>') => format!("{}\n{part}", prefix.trim_end()),
        0 => format!("{prefix}{part}"),
        _ => part,
    })
}

/// Splits `source` at paragraph, line, then word boundaries so that every rendered part
/// stays within `limit` (escaping makes the rendered text longer than its source).
fn fit(msg: &ChannelMessage, source: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    fit_into(msg, source, limit, &mut out);
    out
}

fn fit_into(msg: &ChannelMessage, source: &str, limit: usize, out: &mut Vec<String>) {
    let rendered = render(msg, source);
    let length = utf16_len(&rendered);
    let chars = source.chars().count();
    if length <= limit || chars <= 1 {
        out.push(rendered);
        return;
    }
    let budget = ((chars as u128 * limit as u128 * 9 / 10) / length as u128) as usize;
    let parts = split_parts(source, budget.clamp(1, chars - 1));
    for part in close_fences(parts) {
        fit_into(msg, &part, limit, out);
    }
}

/// A code block cut in two is closed at the end of one part and reopened (same language)
/// at the start of the next, so both parts render as code.
fn close_fences(parts: Vec<String>) -> Vec<String> {
    let mut open: Option<String> = None;
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let reopened = open.as_ref().map(|fence| format!("{fence}\n"));
        for line in part.lines() {
            let line = line.trim_start();
            if line.starts_with("```") {
                open = if open.is_some() { None } else { Some(line.to_string()) };
            }
        }
        let mut part = format!("{}{part}", reopened.unwrap_or_default());
        if open.is_some() {
            part.push_str("\n```");
        }
        out.push(part);
    }
    out
}

/// Deletes the chat's copy of `original` (every part of it) with `deleteMessage`. A
/// deletion never posts anything: without a copy here there is nothing to do, and a copy
/// Telegram no longer lets the bot delete (too old, already gone) stays as it is.
async fn delete(inner: &Inner, channel_id: &str, original: Uuid) -> Result<(), ChannelSendError> {
    let chat = parse_chat(channel_id)?;
    let chat_key = chat.0.to_string();
    let mut deleted = 0;
    for index in 0.. {
        let Some(native) = native(inner, &chat_key, part_id(original, index)).await? else { break };
        let Ok(message) = native.parse::<i32>().map(MessageId) else { continue };
        let request = || inner.bot.delete_message(chat, message).into_future();
        match call(inner, "deleteMessage", request).await {
            Ok(_) => deleted += 1,
            Err(Failure::Terminal(reason))
                if ["message can't be deleted", "message to delete not found"]
                    .iter()
                    .any(|known| reason.contains(known)) =>
            {
                tracing::info!(channel = CHANNEL, event = "copy_not_deleted", chat_id = %chat_key, message_id = message.0, %reason);
            }
            Err(failure) => return Err(send_error(failure)),
        }
    }
    tracing::debug!(channel = CHANNEL, event = "deleted", chat_id = %chat_key, original = %original, deleted);
    Ok(())
}

/// Edits the Telegram copies of `original` to the new text; parts the longer text needs
/// beyond the ones already there are sent as new messages.
async fn edit(inner: &Inner, target: &Target, original: Uuid, pieces: &[Piece<'_>]) -> Result<(), ChannelSendError> {
    for (index, piece) in pieces.iter().enumerate() {
        let Piece::Text(text) = piece else {
            // Files cannot be replaced by an edit; they were sent with the original.
            continue;
        };
        let id = part_id(original, index);
        match native(inner, &target.chat_key, id).await?.and_then(|n| n.parse::<i32>().ok()) {
            Some(native) => {
                let request = || {
                    inner
                        .bot
                        .edit_message_text(target.chat, MessageId(native), text.clone())
                        .parse_mode(ParseMode::MarkdownV2)
                        .into_future()
                };
                match call(inner, "editMessageText", request).await {
                    Ok(_) | Err(Failure::NotModified) => {}
                    Err(failure) => return Err(send_error(failure)),
                }
            }
            None => {
                let target = Target { reply_to: None, ..target.clone() };
                let sent = send_piece(inner, &target, piece).await?;
                remember(inner, &target, &sent, id).await?;
            }
        }
    }
    tracing::debug!(channel = CHANNEL, event = "edited", chat_id = %target.chat_key, original = %original);
    Ok(())
}

async fn send_piece(inner: &Inner, target: &Target, piece: &Piece<'_>) -> Result<Message, ChannelSendError> {
    let reply = target.reply_to.map(|id| ReplyParameters::new(id).allow_sending_without_reply());
    match piece {
        Piece::Text(text) => {
            let request = || {
                let mut request = inner.bot.send_message(target.chat, text.clone()).parse_mode(ParseMode::MarkdownV2);
                if let Some(reply) = reply.clone() {
                    request = request.reply_parameters(reply);
                }
                if let Some(thread) = target.thread {
                    request = request.message_thread_id(thread);
                }
                request.into_future()
            };
            call(inner, "sendMessage", request).await.map_err(send_error)
        }
        Piece::File { attachment, caption } => {
            match send_file(inner, target, attachment, caption.as_deref(), reply).await {
                Err(FileSend::NotFetchable(error)) => {
                    tracing::warn!(channel = CHANNEL, event = "attachment_not_bridged", file = attachment.name, %error);
                    let note = markdown::escape(&crate::protocol::not_bridged_note(&attachment.name));
                    let text = caption.as_ref().map_or(note.clone(), |caption| format!("{caption}\n{note}"));
                    Box::pin(send_piece(inner, target, &Piece::Text(text))).await
                }
                Err(FileSend::Failed(error)) => Err(error),
                Ok(sent) => Ok(sent),
            }
        }
    }
}

/// Why a file was not sent.
enum FileSend {
    /// The media repository will never hand it out: the message goes without it.
    NotFetchable(String),
    Failed(ChannelSendError),
}

impl From<ChannelSendError> for FileSend {
    fn from(error: ChannelSendError) -> Self {
        Self::Failed(error)
    }
}

/// Fetches the file from the media repository and uploads it: images as photos, the rest
/// as documents.
async fn send_file(
    inner: &Inner,
    target: &Target,
    attachment: &ChannelAttachment,
    caption: Option<&str>,
    reply: Option<ReplyParameters>,
) -> Result<Message, FileSend> {
    let media = inner.media.fetch(attachment).await.map_err(|error| match error {
        crate::protocol::MediaError::Rejected(e) => FileSend::NotFetchable(e),
        crate::protocol::MediaError::Unavailable(e) => FileSend::Failed(transient(format!("media repository: {e}"))),
    })?;
    let mime = if attachment.mime_type.is_empty() { media.mime_type.clone() } else { attachment.mime_type.clone() };
    let name = attachment.name.clone();
    let file = || InputFile::memory(media.bytes.clone()).file_name(name.clone());
    // Telegram recompresses photos and refuses odd ones (SVG, huge sizes): those go as files.
    let as_photo = mime.starts_with("image/") && mime != "image/svg+xml" && media.bytes.len() <= 10 * 1024 * 1024;
    if as_photo {
        let request = || {
            let mut request = inner.bot.send_photo(target.chat, file());
            if let Some(caption) = caption {
                request = request.caption(caption.to_string()).parse_mode(ParseMode::MarkdownV2);
            }
            if let Some(reply) = reply.clone() {
                request = request.reply_parameters(reply);
            }
            if let Some(thread) = target.thread {
                request = request.message_thread_id(thread);
            }
            request.into_future()
        };
        return Ok(call(inner, "sendPhoto", request).await.map_err(send_error)?);
    }
    let request = || {
        let mut request = inner.bot.send_document(target.chat, file());
        if let Some(caption) = caption {
            request = request.caption(caption.to_string()).parse_mode(ParseMode::MarkdownV2);
        }
        if let Some(reply) = reply.clone() {
            request = request.reply_parameters(reply);
        }
        if let Some(thread) = target.thread {
            request = request.message_thread_id(thread);
        }
        request.into_future()
    };
    Ok(call(inner, "sendDocument", request).await.map_err(send_error)?)
}

/// Runs one Bot API request with the adapter's retries: a 429 waits the `retry_after`
/// Telegram asked for, a server or network failure backs off; a refusal returns at once.
/// A `send*` whose answer was lost is not tried again: the Bot API has no idempotency
/// key, so a second try could post the message twice.
async fn call<T, F, Fut>(inner: &Inner, method: &'static str, request: F) -> Result<T, Failure>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, RequestError>>,
{
    let mut last = None;
    for attempt in 0..SEND_TRIES {
        let failure = match request().await {
            Ok(value) => return Ok(value),
            Err(error) => inner.classify(error),
        };
        match &failure {
            Failure::RateLimited(after) => {
                inner.health.note_rate_limit(*after);
                tracing::info!(
                    channel = CHANNEL,
                    event = "rate_limited",
                    method,
                    retry_after_secs = after.as_secs(),
                    attempt
                );
                if *after > MAX_INLINE_WAIT || attempt + 1 == SEND_TRIES {
                    return Err(failure);
                }
                tokio::time::sleep(*after).await;
            }
            Failure::Unconfirmed(error) | Failure::Unreadable(error) if !is_idempotent(method) => {
                tracing::warn!(channel = CHANNEL, event = "send_unconfirmed", method, %error);
                return Err(failure);
            }
            // The same request gets the same answer.
            Failure::Unreadable(_) => return Err(failure),
            Failure::Transient(error) | Failure::Unconfirmed(error) => {
                tracing::warn!(channel = CHANNEL, event = "send_retry", method, %error, attempt);
                if attempt + 1 < SEND_TRIES {
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                }
            }
            Failure::Terminal(_) | Failure::NotModified => return Err(failure),
        }
        last = Some(failure);
    }
    Err(last.expect("at least one try"))
}

fn send_error(failure: Failure) -> ChannelSendError {
    match failure {
        Failure::RateLimited(after) => {
            ChannelSendError::Transient { message: failure.message(), retry_after: Some(after) }
        }
        Failure::Transient(message) => ChannelSendError::Transient { message, retry_after: None },
        Failure::Terminal(message) => ChannelSendError::Terminal(message),
        Failure::Unconfirmed(message) | Failure::Unreadable(message) => ChannelSendError::Unconfirmed(message),
        Failure::NotModified => ChannelSendError::Terminal("message is not modified".into()),
    }
}

/// A failed read: an answer that cannot be parsed will not parse next time either.
fn read_error(failure: Failure) -> ChannelSendError {
    match failure {
        Failure::Unreadable(reason) => {
            tracing::warn!(channel = CHANNEL, event = "unreadable_answer", error = %reason);
            ChannelSendError::Terminal("Telegram's answer about the chat could not be read".into())
        }
        other => send_error(other),
    }
}

/// Reads and edits can be repeated safely; a second `sendMessage` posts a second message.
fn is_idempotent(method: &str) -> bool {
    !method.starts_with("send")
}

fn transient(error: impl std::fmt::Display) -> ChannelSendError {
    ChannelSendError::Transient { message: error.to_string(), retry_after: None }
}

/// Checks that the chat exists and the bot can post there; says how messages will look.
pub(super) async fn open_bridge(inner: &Inner, channel_id: &str) -> Result<String, BridgeError> {
    let chat = channel_id.trim().parse::<i64>().map(ChatId).map_err(|_| {
        BridgeError::Refused(format!("{channel_id:?} is not a Telegram chat id (a number such as -1001234567890)"))
    })?;
    let me = inner.me().ok_or_else(|| transient("the Telegram bot is not connected yet"))?;
    let info =
        call(inner, "getChat", || inner.bot.get_chat(chat).into_future()).await.map_err(|failure| match failure {
            Failure::Terminal(reason) => {
                // Telegram's own words go to the log; the room learns what to do.
                tracing::info!(channel = CHANNEL, event = "bridge_chat_unreachable", chat = channel_id, %reason);
                BridgeError::Refused(format!(
                    "Telegram chat {channel_id} is not reachable: add the bot to the group, and turn off \
                     privacy mode in BotFather (/setprivacy → Disable) so it sees all messages"
                ))
            }
            other => read_error(other).into(),
        })?;
    let member = call(inner, "getChatMember", || inner.bot.get_chat_member(chat, UserId(me.id)).into_future())
        .await
        .map_err(|failure| BridgeError::from(read_error(failure)))?;
    let (title, kind) = describe(&info);
    if !member.is_present() {
        return Err(BridgeError::Refused(format!(
            "the bot is not a member of Telegram {kind} “{title}”: add @{} to it, then bridge again",
            me.username
        )));
    }
    if info.is_channel() && !member.is_privileged() {
        return Err(BridgeError::Refused(format!(
            "the bot cannot post in Telegram channel “{title}”: make @{} an administrator with “Post messages”",
            me.username
        )));
    }
    let mut line =
        format!("Telegram {kind} “{title}” is bridged; messages appear there as the bot with the sender's name.");
    if info.is_group_chat() && !member.is_privileged() {
        line.push_str(" Reactions made there reach the other surfaces only while the bot is an administrator of it.");
    }
    if info.is_group_chat() && !me.reads_all_group_messages && !member.is_privileged() {
        line.push_str(&format!(
            " Privacy mode is on, so the bot only sees commands and replies to it: turn it off in BotFather \
             (/setprivacy → @{} → Disable, then remove and re-add the bot) or make the bot an admin.",
            me.username
        ));
    }
    Ok(line)
}

fn describe(info: &ChatFullInfo) -> (String, &'static str) {
    let title = info
        .title()
        .map(str::to_string)
        .or_else(|| info.username().map(|u| format!("@{u}")))
        .or_else(|| info.first_name().map(str::to_string))
        .unwrap_or_else(|| info.id.to_string());
    let kind = if info.is_channel() {
        "channel"
    } else if info.is_supergroup() {
        "supergroup"
    } else if info.is_group() {
        "group"
    } else {
        "private chat"
    };
    (title, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(content: &str, content_type: ContentType) -> ChannelMessage {
        let mut msg = ChannelMessage::new("-100", "@alice:x", SenderType::User, content, content_type);
        msg.metadata.insert(keys::SENDER_NAME.into(), "Alice (admin)".into());
        msg
    }

    fn texts(pieces: &[Piece<'_>]) -> Vec<String> {
        pieces.iter().filter_map(|p| if let Piece::Text(t) = p { Some(t.clone()) } else { None }).collect()
    }

    #[test]
    fn the_sender_is_named_in_bold_except_for_notices() {
        assert_eq!(texts(&pieces(&message("hi.", ContentType::Text))), vec![r"*Alice \(admin\)*: hi\."]);
        let mut notice = message("done.", ContentType::Text);
        notice.sender_type = SenderType::System;
        assert_eq!(texts(&pieces(&notice)), vec![r"done\."]);
    }

    #[test]
    fn bots_react_only_with_telegrams_emoji_in_their_plain_form() {
        assert_eq!(bot_reaction("👍").as_deref(), Some("👍"));
        assert_eq!(bot_reaction("👍🏽").as_deref(), Some("👍"), "skin tones are dropped");
        assert_eq!(bot_reaction("❤️").as_deref(), Some("❤"), "the emoji presentation selector is dropped");
        assert_eq!(bot_reaction("❤️\u{200d}🔥").as_deref(), Some("❤\u{200d}🔥"));
        assert_eq!(bot_reaction("🦀"), None);
        assert_eq!(bot_reaction(":party_parrot:"), None);
    }

    #[test]
    fn long_text_is_split_into_parts_that_fit_after_escaping() {
        let text = "a.b ".repeat(3000);
        let parts = texts(&pieces(&message(&text, ContentType::Text)));
        assert!(parts.len() >= 3, "{}", parts.len());
        assert!(parts.iter().all(|p| utf16_len(p) <= TEXT_LIMIT));
        let joined: String = parts.iter().map(|p| p.replace('\\', "")).collect::<Vec<_>>().join(" ");
        assert_eq!(joined.matches("a.b").count(), 3000);
    }

    #[test]
    fn split_code_blocks_stay_code_blocks() {
        let code = format!("```rust\n{}```", "let x = 1;\n".repeat(800));
        let parts = texts(&pieces(&message(&code, ContentType::Markdown)));
        assert!(parts.len() >= 2);
        for part in &parts {
            let body = part.trim_start_matches("*Alice \\(admin\\)*:\n");
            assert!(body.starts_with("```rust\n") && body.ends_with("```"), "{part:.60}");
        }
    }
}
