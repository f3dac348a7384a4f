//! A Telegram message → the canonical [`ChannelMessage`] (the seed's Telegram table and
//! the bridge contract).

use serde_json::json;
use teloxide::DownloadError;
use teloxide::net::Download;
use teloxide::prelude::Requester;
use teloxide::types::{
    Chat, ChatKind, FileId, Message, MessageEntity, MessageOrigin, MessageReactionUpdated, PublicChatKind, ReactionType,
};

use super::polling::InboundError;
use super::{CHANNEL, Inner, markdown, topics};
use crate::error_ref::ErrorRef;
use crate::protocol::{
    self, ChannelAttachment, ChannelEvent, ChannelMessage, ContentType, MediaError, SenderType, metadata_keys as keys,
};
use crate::store::{AnyConnection, bridges, messages};

/// A file of the message, before it is fetched.
struct Incoming {
    file_id: FileId,
    name: String,
    mime_type: String,
    size: Option<u64>,
    content_type: ContentType,
}

/// `None`: nothing to bridge (the bot's own message, a service message, a sticker…).
pub(super) async fn to_channel_message(
    inner: &Inner,
    message: &Message,
    edited: bool,
) -> Result<Option<ChannelMessage>, InboundError> {
    let me = inner.me().ok_or(InboundError::NotConnected)?;
    if message.from.as_ref().is_some_and(|from| from.id.0 == me.id) {
        return Ok(None);
    }
    let incoming = incoming_file(message);
    let Some(raw_text) = message.text().or(message.caption()) else {
        if incoming.is_none() {
            return Ok(None);
        }
        return build(inner, message, edited, String::new(), ContentType::Text, incoming).await.map(Some);
    };
    let entities = message.entities().or(message.caption_entities()).unwrap_or_default();
    let (text, entities) = normalise_command(raw_text, entities, &me.username);
    let (content, content_type) = match markdown::entities_to_markdown(&text, &entities) {
        // A caption stays plain: the message's type is its file's.
        Some(md) if incoming.is_none() => (md, ContentType::Markdown),
        _ => (text, ContentType::Text),
    };
    build(inner, message, edited, content, content_type, incoming).await.map(Some)
}

async fn build(
    inner: &Inner,
    message: &Message,
    edited: bool,
    content: String,
    content_type: ContentType,
    incoming: Option<Incoming>,
) -> Result<ChannelMessage, InboundError> {
    let chat_id = message.chat.id.0.to_string();
    let (sender_id, sender_name, username) = sender(message);
    // Other bots speak for themselves, as people do: `agent` is for our agents only,
    // whose names are reserved.
    let sender_type = SenderType::User;
    let mut msg = ChannelMessage::new(&chat_id, sender_id, sender_type, content, content_type);
    msg.timestamp = if edited { message.edit_date().copied().unwrap_or(message.date) } else { message.date };
    let native_id = message.id.0.to_string();
    msg.chat = chat_kind(&message.chat);
    let meta = &mut msg.metadata;
    meta.insert(keys::CHANNEL_MESSAGE_ID.into(), json!(native_id));
    meta.insert("chatType".into(), json!(chat_type(&message.chat)));
    meta.insert(keys::SENDER_NAME.into(), json!(sender_name));
    if let Some(username) = username {
        meta.insert("fromUsername".into(), json!(username));
    }
    if let Some(origin) = message.forward_origin() {
        meta.insert("forwardFrom".into(), json!(origin_name(origin)));
    }
    let dedupe = match (edited, message.edit_date()) {
        (true, Some(at)) => format!("{chat_id}:{native_id}:edit:{}", at.timestamp()),
        (true, None) => format!("{chat_id}:{native_id}:edit"),
        (false, _) => format!("{chat_id}:{native_id}"),
    };
    meta.insert(keys::DEDUPE_KEY.into(), json!(dedupe));
    if message.is_topic_message
        && let Some(thread) = message.thread_id
    {
        msg.thread_id = Some(thread.0.0.to_string());
    }
    let mut conn = inner.store.conn().await.map_err(transient)?;
    if edited {
        let target = messages::message_for_native(&mut conn, CHANNEL, &chat_id, &native_id).await.map_err(transient)?;
        msg.event = ChannelEvent::Edit { target };
    } else if let Some(reply) = message.reply_to_message()
        // In a topic every message "replies" to the topic's first message; that is not a reply.
        && message.thread_id.is_none_or(|t| t.0 != reply.id)
    {
        let reply_native = reply.id.0.to_string();
        msg.reply_to_id =
            messages::message_for_native(&mut conn, CHANNEL, &chat_id, &reply_native).await.map_err(transient)?;
    }
    if let Some(thread) = &msg.thread_id {
        // The hub may adopt a topic's first bridged message as the thread root under the
        // topic's id, so the topic id itself leads to the topic too.
        let record = async |conn: &mut AnyConnection| {
            topics::record(conn, &chat_id, &native_id, thread).await?;
            topics::record(conn, &chat_id, thread, thread).await
        };
        inner.store.write(record).await.map_err(transient)?;
    }
    // In a chat that is not bridged only commands are read: its files are not fetched.
    let bridged = bridges::get(&mut conn, CHANNEL, &chat_id).await.map_err(transient)?.is_some_and(|b| b.is_bridged());
    drop(conn);
    match incoming {
        Some(file) if bridged => attach(inner, &mut msg, file).await?,
        Some(_) => tracing::debug!(channel = CHANNEL, event = "file_not_fetched", chat_id, "chat not bridged"),
        None => {}
    }
    Ok(msg)
}

/// A change of a person's reactions on a message (`message_reaction`): one reaction
/// message per emoji added or taken back. Custom and paid reactions, reactions of
/// anonymous admins, and reactions to messages the hub never saw are not bridged.
pub(super) async fn reaction_messages(
    inner: &Inner,
    update: &MessageReactionUpdated,
    update_id: u32,
) -> Result<Vec<ChannelMessage>, InboundError> {
    let Some(user) = update.user().filter(|_| update.actor.is_user()) else { return Ok(Vec::new()) };
    if inner.me().is_some_and(|me| me.id == user.id.0) {
        return Ok(Vec::new());
    }
    let chat_id = update.chat.id.0.to_string();
    let native_id = update.message_id.0.to_string();
    let mut conn = inner.store.conn().await.map_err(transient)?;
    let Some(target) =
        messages::message_for_native(&mut conn, CHANNEL, &chat_id, &native_id).await.map_err(transient)?
    else {
        return Ok(Vec::new());
    };
    drop(conn);
    let emoji = |list: &[ReactionType]| -> Vec<String> { list.iter().filter_map(|r| r.emoji().cloned()).collect() };
    let (old, new) = (emoji(&update.old_reaction), emoji(&update.new_reaction));
    let removed = old.iter().filter(|k| !new.contains(k)).map(|k| (k, true));
    let added = new.iter().filter(|k| !old.contains(k)).map(|k| (k, false));
    let name = user.full_name();
    let name = if name.trim().is_empty() { user.username.clone().unwrap_or_else(|| user.id.to_string()) } else { name };
    Ok(removed
        .chain(added)
        .map(|(key, removed)| {
            let mut msg = ChannelMessage::reaction(&chat_id, user.id.0.to_string(), key, target, removed);
            msg.timestamp = update.date;
            msg.chat = chat_kind(&update.chat);
            let change = if removed { "removed" } else { "added" };
            let meta = &mut msg.metadata;
            meta.insert(keys::SENDER_NAME.into(), json!(name));
            meta.insert("chatType".into(), json!(chat_type(&update.chat)));
            meta.insert(
                keys::DEDUPE_KEY.into(),
                json!(format!("{chat_id}:{native_id}:reaction:{update_id}:{change}:{key}")),
            );
            msg
        })
        .collect())
}

/// Sender id, display name, username. Channel posts and anonymous admins speak as a chat.
fn sender(message: &Message) -> (String, String, Option<String>) {
    if let Some(from) = &message.from
        && message.sender_chat.is_none()
    {
        let name = from.full_name();
        let name =
            if name.trim().is_empty() { from.username.clone().unwrap_or_else(|| from.id.to_string()) } else { name };
        return (from.id.0.to_string(), name, from.username.clone());
    }
    let chat = message.sender_chat.as_ref().unwrap_or(&message.chat);
    let name = chat.title().or(chat.username()).map(str::to_string).unwrap_or_else(|| chat.id.to_string());
    (chat.id.0.to_string(), name, chat.username().map(str::to_string))
}

fn chat_type(chat: &Chat) -> &'static str {
    match &chat.kind {
        ChatKind::Private(_) => "private",
        ChatKind::Public(public) => match public.kind {
            PublicChatKind::Group => "group",
            PublicChatKind::Supergroup(_) => "supergroup",
            PublicChatKind::Channel(_) => "channel",
        },
    }
}

/// A private chat is a person's one-to-one chat with the bot.
fn chat_kind(chat: &Chat) -> protocol::ChatKind {
    match chat.kind {
        ChatKind::Private(_) => protocol::ChatKind::Private,
        ChatKind::Public(_) => protocol::ChatKind::Group,
    }
}

fn origin_name(origin: &MessageOrigin) -> String {
    match origin {
        MessageOrigin::User { sender_user, .. } => sender_user.full_name(),
        MessageOrigin::HiddenUser { sender_user_name, .. } => sender_user_name.clone(),
        MessageOrigin::Chat { sender_chat, .. } => sender_chat.title().unwrap_or("a chat").to_string(),
        MessageOrigin::Channel { chat, .. } => chat.title().unwrap_or("a channel").to_string(),
    }
}

/// `/cmd@ThisBot args` → `/cmd args`, entities shifted to match. A command addressed to
/// another bot is left alone (the hub will not take it for one of ours).
fn normalise_command(text: &str, entities: &[MessageEntity], bot_username: &str) -> (String, Vec<MessageEntity>) {
    let unchanged = || (text.to_string(), entities.to_vec());
    if !text.starts_with('/') || bot_username.is_empty() {
        return unchanged();
    }
    let command_end = text.find(char::is_whitespace).unwrap_or(text.len());
    let Some(at) = text[..command_end].find('@') else {
        return unchanged();
    };
    if !text[at + 1..command_end].eq_ignore_ascii_case(bot_username) {
        return unchanged();
    }
    // The removed `@name` is ASCII: as many UTF-16 units as bytes.
    let (cut_start, cut_len) = (markdown::utf16_len(&text[..at]), command_end - at);
    let shifted = entities
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if e.offset >= cut_start + cut_len {
                e.offset -= cut_len;
            } else if e.offset <= cut_start && e.offset + e.length >= cut_start + cut_len {
                e.length -= cut_len;
            }
            e
        })
        .collect();
    (format!("{}{}", &text[..at], &text[command_end..]), shifted)
}

fn incoming_file(message: &Message) -> Option<Incoming> {
    if let Some(sizes) = message.photo() {
        // The largest size is the original picture.
        let photo = sizes.iter().max_by_key(|p| u64::from(p.width) * u64::from(p.height))?;
        return Some(Incoming {
            file_id: photo.file.id.clone(),
            name: format!("photo_{}.jpg", photo.file.unique_id),
            mime_type: "image/jpeg".into(),
            size: Some(u64::from(photo.file.size)),
            content_type: ContentType::Image,
        });
    }
    let (file, name, mime, fallback) = if let Some(d) = message.document() {
        (&d.file, d.file_name.clone(), d.mime_type.as_ref().map(|m| m.to_string()), "document")
    } else if let Some(v) = message.video() {
        (&v.file, v.file_name.clone(), v.mime_type.as_ref().map(|m| m.to_string()), "video.mp4")
    } else if let Some(a) = message.audio() {
        (&a.file, a.file_name.clone(), a.mime_type.as_ref().map(|m| m.to_string()), "audio.mp3")
    } else if let Some(v) = message.voice() {
        (&v.file, None, v.mime_type.as_ref().map(|m| m.to_string()), "voice.ogg")
    } else if let Some(a) = message.animation() {
        (&a.file, a.file_name.clone(), a.mime_type.as_ref().map(|m| m.to_string()), "animation.mp4")
    } else {
        return None;
    };
    Some(Incoming {
        file_id: file.id.clone(),
        name: name.unwrap_or_else(|| fallback.to_string()),
        mime_type: mime.unwrap_or_else(|| "application/octet-stream".into()),
        size: Some(u64::from(file.size)),
        content_type: ContentType::File,
    })
}

/// Fetches the file from Telegram and stores it in the media repository. A file Telegram
/// will not hand out (over 20 MB) or the repository refuses is named in the text
/// instead; an outage of either is retried with the whole update.
async fn attach(inner: &Inner, msg: &mut ChannelMessage, file: Incoming) -> Result<(), InboundError> {
    msg.content_type = file.content_type;
    let bytes = match fetch(inner, &file.file_id).await {
        Ok(bytes) => bytes,
        Err(Fetch::Transient(error)) => return Err(InboundError::Transient(error)),
        Err(Fetch::Refused(error)) => {
            not_bridged(msg, &file.name, &error);
            return Ok(());
        }
    };
    let size = bytes.len() as u64;
    match inner.media.upload(bytes, &file.mime_type, &file.name).await {
        Ok(url) => {
            msg.attachments.push(ChannelAttachment {
                name: file.name,
                mime_type: file.mime_type,
                url,
                size_bytes: Some(size).or(file.size),
                encrypted_file: None,
            });
            Ok(())
        }
        Err(MediaError::Unavailable(error)) => Err(InboundError::Transient(format!("media repository: {error}"))),
        Err(MediaError::Rejected(error)) => {
            not_bridged(msg, &file.name, &error);
            Ok(())
        }
    }
}

/// Names the file in the text in its place, with a reference to the reason in the log.
fn not_bridged(msg: &mut ChannelMessage, name: &str, error: &str) {
    let reference = ErrorRef::new();
    tracing::warn!(channel = CHANNEL, event = "file_not_bridged", name, r#ref = %reference, error);
    let note = format!("[{}]", reference.notice(&format!("file {name} could not be bridged")));
    msg.content = if msg.content.is_empty() { note } else { format!("{}\n{note}", msg.content) };
    msg.content_type = ContentType::Text;
}

enum Fetch {
    Transient(String),
    Refused(String),
}

async fn fetch(inner: &Inner, file_id: &FileId) -> Result<Vec<u8>, Fetch> {
    let file = inner.bot.get_file(file_id.clone()).await.map_err(|error| match inner.classify(error) {
        super::errors::Failure::Terminal(message) | super::errors::Failure::Unreadable(message) => {
            Fetch::Refused(message)
        }
        other => Fetch::Transient(other.message()),
    })?;
    let mut bytes = Vec::with_capacity(file.meta.size as usize);
    inner.bot.download_file(&file.path, &mut bytes).await.map_err(|error| {
        // A file Telegram no longer has will not come back; an outage will.
        let gone = matches!(&error, DownloadError::Network(e) if e.status().is_some_and(|s| s.is_client_error()));
        if gone { Fetch::Refused(inner.redact(error)) } else { Fetch::Transient(inner.redact(error)) }
    })?;
    Ok(bytes)
}

fn transient(error: impl std::fmt::Display) -> InboundError {
    InboundError::Transient(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use teloxide::types::MessageEntityKind;

    #[test]
    fn commands_addressed_to_this_bot_lose_the_address() {
        let entities = vec![MessageEntity::new(MessageEntityKind::BotCommand, 0, 15)];
        let (text, shifted) = normalise_command("/link@MosaicBot abc", &entities, "mosaicbot");
        assert_eq!(text, "/link abc");
        assert_eq!((shifted[0].offset, shifted[0].length), (0, 5));
        let (text, _) = normalise_command("/link@OtherBot abc", &entities, "MosaicBot");
        assert_eq!(text, "/link@OtherBot abc");
        let (text, _) = normalise_command("/help", &[], "MosaicBot");
        assert_eq!(text, "/help");
        let bold = vec![MessageEntity::bold(16, 3)];
        let (text, shifted) = normalise_command("/ask@MosaicBot  why", &bold, "MosaicBot");
        assert_eq!((text.as_str(), shifted[0].offset), ("/ask  why", 6));
    }
}
