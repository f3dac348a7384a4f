use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::ChannelEvent;

/// Well-known keys of [`ChannelMessage::metadata`].
pub mod metadata_keys {
    /// The channel-native id of the message (Matrix event id, Discord snowflake, …).
    pub const CHANNEL_MESSAGE_ID: &str = "channelMessageId";
    /// Language tag for `contentType = code`.
    pub const LANGUAGE: &str = "language";
    /// The sender's display name. Inbound: the remote sender's name on its surface (the
    /// Matrix ghost takes it). Outbound to a bridge: the name to show (webhook user name,
    /// name prefix); the hub sets it on every message it sends to a bridge.
    pub const SENDER_NAME: &str = "senderName";
    /// The sender's avatar: an `mxc://` URI (inbound: uploaded through the media
    /// repository) or an `https://` URL (outbound: usable as a webhook avatar).
    pub const SENDER_AVATAR_URL: &str = "senderAvatarUrl";
    /// What makes an inbound message unique on its surface when `channelMessageId` alone
    /// does not (Telegram ids are per chat; an edit reuses the id). Stored as the
    /// message's native key, so a redelivery is recognised.
    pub const DEDUPE_KEY: &str = "mosaic.dedupeKey";
    /// Outbound: the canonical id of the message this one edits (stream previews, edits
    /// bridged from another surface). The adapter edits its own copy of that message.
    pub const REPLACES: &str = "mosaic.replaces";
    /// Outbound: the canonical id of the thread's root message, when the hub could not
    /// name the thread in the target's own terms (`threadId` is then empty).
    pub const THREAD_ROOT_ID: &str = "mosaic.threadRootId";
    /// Outbound: deliver privately to this channel-native user (a DM, an ephemeral
    /// answer) instead of to the channel; used for link tokens.
    pub const PRIVATE_TO: &str = "mosaic.privateTo";
    /// Outbound: the surface the message was first written on (`matrix`, `discord`, …).
    pub const ORIGIN_CHANNEL: &str = "mosaic.originChannel";
    /// Inbound routing hint: the agents present in the channel (array of agent ids).
    pub const AGENTS: &str = "mosaic.agents";
    /// Inbound routing hint: the agents the message addresses (array of agent ids).
    pub const MENTIONS: &str = "mosaic.mentions";
    /// Inbound routing hint: the number of people (not agents, not the bot) in the
    /// channel.
    pub const PARTICIPANTS: &str = "mosaic.participants";
    /// Inbound routing hint: whether chat commands are read in this channel.
    pub const COMMANDS: &str = "mosaic.commands";
    /// Inbound routing hint: whether the service's bot is in the channel.
    pub const BOT_PRESENT: &str = "mosaic.botPresent";
    /// A message's `mosaic.agent_message` payload (agent rooms). A `reply_to` in its
    /// `payload` is a canonical message id; the Matrix adapter turns it into
    /// `reply_to_event_id`.
    pub const AGENT_MESSAGE: &str = "mosaic.agentMessage";
}

/// Who sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SenderType {
    User,
    Agent,
    System,
}

/// How `content` is to be read and rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    Text,
    Markdown,
    Code,
    Image,
    File,
}

impl SenderType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Agent => "agent",
            Self::System => "system",
        }
    }
}

impl ContentType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Markdown => "markdown",
            Self::Code => "code",
            Self::Image => "image",
            Self::File => "file",
        }
    }
}

/// Who reads the chat a message was written in, as its surface tells (a typed field,
/// so the hub never reads a surface's own words for it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatKind {
    /// A room, channel or group: others read along.
    #[default]
    Group,
    /// A one-to-one chat of a person with the bot.
    Private,
}

impl ChatKind {
    pub fn is_group(&self) -> bool {
        *self == Self::Group
    }
}

/// A file or image carried by a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelAttachment {
    pub name: String,
    pub mime_type: String,
    /// A URL (for Matrix: an `mxc://` URI) or a `data:` URI.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// When the file at `url` is stored encrypted (sent into an encrypted Matrix room):
    /// its key, as Matrix's `EncryptedFile`. It is decrypted where it is fetched
    /// ([`crate::protocol::MediaRepository::fetch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_file: Option<serde_json::Value>,
}

/// The canonical message that flows between surfaces, the hub and the agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "WireMessage")]
pub struct ChannelMessage {
    /// Canonical id (UUID v4), assigned when the message enters the system.
    pub id: Uuid,
    /// Channel-native room/channel/chat id.
    pub channel_id: String,
    /// Channel-native sender id, or the agent id / account id for messages we originate.
    pub sender_id: String,
    pub sender_type: SenderType,
    pub content: String,
    pub content_type: ContentType,
    /// What the message is; left out of the JSON for a plain message (as in 1.0.0).
    #[serde(skip_serializing_if = "ChannelEvent::is_message")]
    pub event: ChannelEvent,
    /// The kind of chat it was written in; left out of the JSON for a group (1.2.0).
    #[serde(skip_serializing_if = "ChatKind::is_group")]
    pub chat: ChatKind,
    /// Channel-specific fields; channel-native ids live under `channelMessageId`.
    pub metadata: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// Canonical id of the message this one answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<ChannelAttachment>,
    pub timestamp: DateTime<Utc>,
}

/// A [`ChannelMessage`] as read, in the form of any version: 1.1.0 says what a message
/// is in `event`; 1.0.0 said it with metadata flags, lifted into `event` on the way in
/// ([`legacy::lift`]), so the stored rows and queued jobs of 1.0.0 read as before.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMessage {
    id: Uuid,
    channel_id: String,
    sender_id: String,
    sender_type: SenderType,
    content: String,
    content_type: ContentType,
    #[serde(default)]
    event: Option<ChannelEvent>,
    #[serde(default)]
    chat: Option<ChatKind>,
    #[serde(default)]
    metadata: Map<String, Value>,
    #[serde(default)]
    thread_id: Option<String>,
    #[serde(default)]
    reply_to_id: Option<Uuid>,
    #[serde(default)]
    attachments: Vec<ChannelAttachment>,
    timestamp: DateTime<Utc>,
}

impl From<WireMessage> for ChannelMessage {
    fn from(wire: WireMessage) -> Self {
        let mut msg = Self {
            id: wire.id,
            channel_id: wire.channel_id,
            sender_id: wire.sender_id,
            sender_type: wire.sender_type,
            content: wire.content,
            content_type: wire.content_type,
            event: ChannelEvent::Message,
            chat: ChatKind::Group,
            metadata: wire.metadata,
            thread_id: wire.thread_id,
            reply_to_id: wire.reply_to_id,
            attachments: wire.attachments,
            timestamp: wire.timestamp,
        };
        msg.event = match wire.event {
            Some(event) => event,
            None => legacy::lift(&mut msg),
        };
        msg.chat = wire.chat.unwrap_or_else(|| legacy::chat_kind(&msg));
        msg
    }
}

/// How protocol 1.0.0 said what a message is: flags in `metadata`, with the message
/// changed in `replyToId` and a reaction's key in `content`.
mod legacy {
    use std::mem;

    use serde_json::Value;
    use uuid::Uuid;

    use super::{ChannelEvent, ChannelMessage, ChatKind};

    const IS_EDIT: &str = "mosaic.isEdit";
    const IS_DELETION: &str = "mosaic.isDeletion";
    const IS_REACTION: &str = "mosaic.isReaction";
    const REACTION_REMOVED: &str = "mosaic.reactionRemoved";
    const REMOVES_REACTION: &str = "mosaic.removesReaction";
    /// Before 1.2.0 the hub told a private chat by its surface's own metadata:
    /// Telegram's `chatType`, Discord's `channelType` (1 is a DM).
    const TELEGRAM_CHAT_TYPE: &str = "chatType";
    const DISCORD_CHANNEL_TYPE: &str = "channelType";

    /// The kind of chat a message of 1.0.0 or 1.1.0 was written in, read from the
    /// surface metadata stored with it (which stays, as the surface's own extras).
    pub(super) fn chat_kind(msg: &ChannelMessage) -> ChatKind {
        let chat_type = msg.metadata.get(TELEGRAM_CHAT_TYPE).and_then(Value::as_str);
        let channel_type = msg.metadata.get(DISCORD_CHANNEL_TYPE);
        let private = chat_type == Some("private")
            || channel_type.and_then(Value::as_u64) == Some(1)
            || channel_type.and_then(Value::as_str).is_some_and(|t| t == "1" || t.eq_ignore_ascii_case("private"));
        if private { ChatKind::Private } else { ChatKind::Group }
    }

    /// Takes the 1.0.0 flags out of `msg` and returns what they said it is, moving the
    /// target out of `replyToId` and a reaction's key out of `content`. 1.0.0 wrote a
    /// deletion or a reaction only for a message it knew; one without a target is read
    /// as a plain message.
    pub(super) fn lift(msg: &mut ChannelMessage) -> ChannelEvent {
        let mut flag = |key: &str| msg.metadata.remove(key).and_then(|v| v.as_bool()).unwrap_or(false);
        let (edit, deletion, reaction, removed) =
            (flag(IS_EDIT), flag(IS_DELETION), flag(IS_REACTION), flag(REACTION_REMOVED));
        let takes_back = msg.metadata.remove(REMOVES_REACTION);
        let takes_back = takes_back.as_ref().and_then(Value::as_str).and_then(|id| Uuid::parse_str(id).ok());
        match (msg.reply_to_id, reaction, deletion, edit) {
            (Some(target), true, _, _) => {
                msg.reply_to_id = None;
                let key = mem::take(&mut msg.content);
                ChannelEvent::Reaction { target, key, removed, takes_back: takes_back.filter(|_| removed) }
            }
            (Some(target), false, true, _) => {
                msg.reply_to_id = None;
                ChannelEvent::Delete { target }
            }
            (target, false, false, true) => {
                msg.reply_to_id = None;
                ChannelEvent::Edit { target }
            }
            _ => ChannelEvent::Message,
        }
    }
}

impl ChannelMessage {
    /// A new message with a fresh id and the current time.
    pub fn new(
        channel_id: impl Into<String>,
        sender_id: impl Into<String>,
        sender_type: SenderType,
        content: impl Into<String>,
        content_type: ContentType,
    ) -> Self {
        Self {
            // Time-ordered: the store's indexes on message ids then grow at their end, a
            // few pages touched per commit, instead of one page at random per message.
            id: Uuid::now_v7(),
            channel_id: channel_id.into(),
            sender_id: sender_id.into(),
            sender_type,
            content: content.into(),
            content_type,
            event: ChannelEvent::Message,
            chat: ChatKind::Group,
            metadata: Map::new(),
            thread_id: None,
            reply_to_id: None,
            attachments: Vec::new(),
            timestamp: Utc::now(),
        }
    }

    /// The channel-native id stored under `metadata.channelMessageId`, if any.
    pub fn channel_message_id(&self) -> Option<&str> {
        self.metadata.get(metadata_keys::CHANNEL_MESSAGE_ID).and_then(Value::as_str)
    }

    pub fn with_reply_to(mut self, id: Uuid) -> Self {
        self.reply_to_id = Some(id);
        self
    }

    /// Removes the control characters that databases and surfaces refuse (NUL above
    /// all: PostgreSQL cannot store it in text) from what people wrote: the text, the
    /// file names and the sender's name. Line breaks and tabs stay.
    pub fn strip_control_chars(&mut self) {
        if let Cow::Owned(clean) = without_control_chars(&self.content) {
            self.content = clean;
        }
        for attachment in &mut self.attachments {
            if let Cow::Owned(clean) = without_control_chars(&attachment.name) {
                attachment.name = clean;
            }
        }
        if let Some(Value::String(name)) = self.metadata.get_mut(metadata_keys::SENDER_NAME)
            && let Cow::Owned(clean) = without_control_chars(name)
        {
            *name = clean;
        }
    }

    /// Seals the link tokens in what people wrote (the text, file names, the sender's
    /// name and every string in `metadata`), so that none is kept or logged in clear.
    /// Each surface does this where its payload becomes a message.
    pub fn seal_link_tokens(&mut self, key: &str) {
        self.rewrite_texts(|text| super::link_token::seal(text, key));
    }

    /// Hides the link tokens, in clear or sealed, everywhere [`Self::seal_link_tokens`]
    /// looks: what the message log keeps of a link attempt.
    pub fn mask_link_tokens(&mut self) {
        self.rewrite_texts(super::link_token::mask);
    }

    fn rewrite_texts(&mut self, rewrite: impl Fn(&str) -> Cow<'_, str>) {
        if let Cow::Owned(text) = rewrite(&self.content) {
            self.content = text;
        }
        for attachment in &mut self.attachments {
            if let Cow::Owned(name) = rewrite(&attachment.name) {
                attachment.name = name;
            }
        }
        for value in self.metadata.values_mut() {
            rewrite_strings(value, &rewrite);
        }
    }

    /// A reaction of `sender` with `key` to the message `target`, or its removal.
    pub fn reaction(
        channel_id: impl Into<String>,
        sender_id: impl Into<String>,
        key: impl Into<String>,
        target: Uuid,
        removed: bool,
    ) -> Self {
        let event = ChannelEvent::Reaction { target, key: key.into(), removed, takes_back: None };
        Self::new(channel_id, sender_id, SenderType::User, "", ContentType::Text).with_event(event)
    }

    pub fn with_event(mut self, event: ChannelEvent) -> Self {
        self.event = event;
        self
    }

    /// The message this one is about: the one it changes (edits, deletes, reacts to),
    /// else the one it answers.
    pub fn relates_to(&self) -> Option<Uuid> {
        self.event.target().or(self.reply_to_id)
    }

    /// A string field of `metadata`.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }

    /// The key that identifies this message on its surface: the adapter's dedupe key,
    /// else the native message id.
    pub fn native_key(&self) -> Option<&str> {
        self.meta_str(metadata_keys::DEDUPE_KEY).or_else(|| self.channel_message_id())
    }

    /// The surface the message was first written on; messages without the mark are
    /// Matrix's (the first surface, whose ids were never marked).
    pub fn origin_channel(&self) -> &str {
        self.meta_str(metadata_keys::ORIGIN_CHANNEL).unwrap_or(super::MATRIX)
    }

    /// In the same thread as `to`, whose thread id is in the terms of `to`'s surface.
    pub fn in_thread_of(mut self, to: &ChannelMessage) -> Self {
        self.thread_id = to.thread_id.clone();
        if let Some(origin) = to.metadata.get(metadata_keys::ORIGIN_CHANNEL) {
            self.metadata.insert(metadata_keys::ORIGIN_CHANNEL.into(), origin.clone());
        }
        self
    }

    /// Written in a one-to-one chat with the bot.
    pub fn is_private_chat(&self) -> bool {
        self.chat == ChatKind::Private
    }

    pub fn with_thread(mut self, thread_id: Option<String>) -> Self {
        self.thread_id = thread_id;
        self
    }
}

/// Rewrites every string inside `value`.
pub fn rewrite_strings(value: &mut Value, rewrite: &impl Fn(&str) -> Cow<'_, str>) {
    match value {
        Value::String(text) => {
            if let Cow::Owned(new) = rewrite(text) {
                *text = new;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rewrite_strings(item, rewrite)),
        Value::Object(fields) => fields.values_mut().for_each(|field| rewrite_strings(field, rewrite)),
        _ => {}
    }
}

/// `text` without control characters other than line breaks and tabs.
pub fn without_control_chars(text: &str) -> Cow<'_, str> {
    let unwanted = |c: char| c.is_control() && !matches!(c, '\n' | '\r' | '\t');
    match text.contains(unwanted) {
        true => Cow::Owned(text.chars().filter(|c| !unwanted(*c)).collect()),
        false => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_stripped_but_line_breaks_stay() {
        let mut msg = ChannelMessage::new("c", "u", SenderType::User, "a\0b\u{7}c\nd\te", ContentType::Text);
        msg.metadata.insert(metadata_keys::SENDER_NAME.into(), Value::String("Ev\0e".into()));
        msg.strip_control_chars();
        assert_eq!(msg.content, "abc\nd\te");
        assert_eq!(msg.meta_str(metadata_keys::SENDER_NAME), Some("Eve"));
        assert!(matches!(without_control_chars("plain"), Cow::Borrowed("plain")));
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn json_form_uses_the_documented_camel_case_names() {
        let mut msg = ChannelMessage::new(
            "!room:example.org",
            "@alice:example.org",
            SenderType::User,
            "hi",
            ContentType::Markdown,
        );
        msg.metadata.insert("channelMessageId".into(), json!("$event"));
        msg.reply_to_id = Some(Uuid::nil());
        msg.thread_id = Some("$root".into());
        msg.attachments.push(ChannelAttachment {
            name: "a.png".into(),
            mime_type: "image/png".into(),
            url: "mxc://example.org/abc".into(),
            size_bytes: Some(3),
            encrypted_file: None,
        });
        let value = serde_json::to_value(&msg).unwrap();
        for key in [
            "id",
            "channelId",
            "senderId",
            "senderType",
            "content",
            "contentType",
            "metadata",
            "threadId",
            "replyToId",
            "attachments",
            "timestamp",
        ] {
            assert!(value.get(key).is_some(), "missing {key} in {value}");
        }
        assert_eq!(value["senderType"], "user");
        assert_eq!(value["contentType"], "markdown");
        assert_eq!(value["attachments"][0]["mimeType"], "image/png");
        assert_eq!(value["attachments"][0]["sizeBytes"], 3);
        assert_eq!(msg.channel_message_id(), Some("$event"));
        let back: ChannelMessage = serde_json::from_value(value).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn parses_a_message_written_by_another_implementation() {
        let msg: ChannelMessage = serde_json::from_value(json!({
            "id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
            "channelId": "123",
            "senderId": "42",
            "senderType": "agent",
            "content": "",
            "contentType": "image",
            "metadata": {},
            "timestamp": "2026-03-22T10:00:00.000Z"
        }))
        .unwrap();
        assert_eq!(msg.sender_type, SenderType::Agent);
        assert_eq!(msg.content_type, ContentType::Image);
        assert!(msg.attachments.is_empty() && msg.reply_to_id.is_none());
    }

    /// A message as protocol 1.0.0 wrote it (and as the store and the outbox keep it):
    /// what it is in metadata flags.
    fn v1_0_0(content: &str, flags: Value) -> Value {
        json!({
            "id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427",
            "channelId": "!room:example.org",
            "senderId": "@alice:example.org",
            "senderType": "user",
            "content": content,
            "contentType": "text",
            "metadata": flags,
            "replyToId": "6f2a7c1e-8a1f-4c0e-9d43-0b7e3d525b90",
            "timestamp": "2026-03-22T10:00:00.000Z"
        })
    }

    #[test]
    fn messages_of_protocol_1_0_0_read_as_what_their_flags_said() {
        let target = Uuid::parse_str("6f2a7c1e-8a1f-4c0e-9d43-0b7e3d525b90").unwrap();
        let taken_back = "0b7e3d52-8a1f-4c0e-9d43-6f2a7c1e5b90";
        let read =
            |content: &str, flags: Value| -> ChannelMessage { serde_json::from_value(v1_0_0(content, flags)).unwrap() };

        let plain = read("hello", json!({"channelMessageId": "$e"}));
        assert_eq!(plain.event, ChannelEvent::Message);
        assert_eq!((plain.reply_to_id, plain.content.as_str()), (Some(target), "hello"));

        let edit = read("hello again", json!({"channelMessageId": "$e", "mosaic.isEdit": true}));
        assert_eq!(edit.event, ChannelEvent::Edit { target: Some(target) });
        assert_eq!((edit.reply_to_id, edit.content.as_str()), (None, "hello again"));

        let deletion = read("", json!({"mosaic.isDeletion": true}));
        assert_eq!(deletion.event, ChannelEvent::Delete { target });

        let reaction = read("👍", json!({"mosaic.isReaction": true}));
        let added = ChannelEvent::Reaction { target, key: "👍".into(), removed: false, takes_back: None };
        assert_eq!(reaction.event, added);
        assert_eq!((reaction.reply_to_id, reaction.content.as_str()), (None, ""));

        let removal = read(
            "👍",
            json!({"mosaic.isReaction": true, "mosaic.reactionRemoved": true, "mosaic.removesReaction": taken_back}),
        );
        let removed = ChannelEvent::Reaction {
            target,
            key: "👍".into(),
            removed: true,
            takes_back: Some(Uuid::parse_str(taken_back).unwrap()),
        };
        assert_eq!(removal.event, removed);

        for msg in [plain, edit, deletion, reaction, removal] {
            assert!(!msg.metadata.keys().any(|k| k.starts_with("mosaic.is") || k.contains("eaction")), "{msg:?}");
            let again: ChannelMessage = serde_json::from_value(serde_json::to_value(&msg).unwrap()).unwrap();
            assert_eq!(again, msg, "what 1.1.0 writes reads back the same");
        }
    }

    #[test]
    fn a_plain_message_is_written_as_in_1_0_0_and_the_others_name_their_event() {
        let plain = ChannelMessage::new("c", "u", SenderType::User, "hi", ContentType::Text);
        assert!(serde_json::to_value(&plain).unwrap().get("event").is_none());
        let reaction = ChannelMessage::reaction("c", "u", "🎉", Uuid::nil(), true);
        let value = serde_json::to_value(&reaction).unwrap();
        assert_eq!(value["event"], json!({"type": "reaction", "target": Uuid::nil(), "key": "🎉", "removed": true}));
        let edit = plain.clone().with_event(ChannelEvent::Edit { target: None });
        assert_eq!(serde_json::to_value(&edit).unwrap()["event"], json!({"type": "edit"}));
    }

    #[test]
    fn the_kind_of_chat_is_a_field_and_old_messages_read_it_from_their_surface_metadata() {
        let read = |metadata: Value| -> ChannelMessage {
            let mut wire = v1_0_0("hi", metadata);
            wire.as_object_mut().unwrap().remove("replyToId");
            serde_json::from_value(wire).unwrap()
        };
        assert_eq!(read(json!({"chatType": "private"})).chat, ChatKind::Private);
        assert_eq!(read(json!({"chatType": "supergroup"})).chat, ChatKind::Group);
        assert_eq!(read(json!({"channelType": 1})).chat, ChatKind::Private);
        assert_eq!(read(json!({"channelType": "private"})).chat, ChatKind::Private);
        assert_eq!(read(json!({"channelType": 0})).chat, ChatKind::Group);
        assert_eq!(read(json!({})).chat, ChatKind::Group);

        let mut private = ChannelMessage::new("c", "u", SenderType::User, "hi", ContentType::Text);
        assert!(serde_json::to_value(&private).unwrap().get("chat").is_none(), "a group is written as before");
        private.chat = ChatKind::Private;
        let value = serde_json::to_value(&private).unwrap();
        assert_eq!(value["chat"], "private");
        assert_eq!(serde_json::from_value::<ChannelMessage>(value).unwrap(), private);
        // The field wins over metadata a surface keeps for itself.
        let mut value = serde_json::to_value(&private).unwrap();
        value["chat"] = json!("group");
        value["metadata"]["chatType"] = json!("private");
        assert_eq!(serde_json::from_value::<ChannelMessage>(value).unwrap().chat, ChatKind::Group);
    }

    #[test]
    fn unknown_sender_type_is_rejected() {
        let err = serde_json::from_value::<ChannelMessage>(json!({
            "id": "1b4e28ba-2fa1-41d2-883f-0016d3cca427", "channelId": "1", "senderId": "2",
            "senderType": "robot", "content": "", "contentType": "text", "timestamp": "2026-03-22T10:00:00Z"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("robot"));
    }
}
