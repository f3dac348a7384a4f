//! The Matrix surface as a [`ChannelAdapter`]: pushed events in, room messages out.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use ruma::api::Direction;
use ruma::api::client::typing::create_typing_event::v3::{Typing, TypingInfo};
use ruma::api::client::{
    account::whoami, membership::join_room_by_id, membership::joined_members, membership::leave_room,
    message::get_message_events, message::send_message_event, profile::get_profile_field, receipt::create_receipt,
    redact::redact_event, room::get_room_event, typing::create_typing_event,
};
use ruma::events::room::message::{MessageType, Relation, RoomMessageEventContent};
use ruma::events::{AnyMessageLikeEventContent, MessageLikeEventType};
use ruma::profile::{ProfileFieldName, ProfileFieldValue};
use ruma::serde::Raw;
use ruma::{OwnedEventId, OwnedRoomId, OwnedTransactionId, OwnedUserId, UInt, UserId};
use serde_json::{Value, json};
use uuid::Uuid;

use super::client::{HomeserverClient, HsError};
use super::e2ee::{Crypto, Decrypted};
use super::format::{self, Placement};
use super::ghosts::Ghosts;
use super::names::DisplayNames;
use crate::agents::stream;
use crate::config::Config;
use crate::namespace::Namespace;
use crate::permissions::{Level, Permissions};
use crate::protocol::link_token;
use crate::protocol::metadata_keys::AGENT_MESSAGE;
use crate::protocol::room_power::{ROOM_POWER, RoomPower};
use crate::protocol::{
    AdapterHealth, ChannelAdapter, ChannelAttachment, ChannelConnectError, ChannelEvent, ChannelMessage,
    ChannelSendError, ContentType, InboundHandler, Landing, OutboundReaction, SenderType, SurfaceInfo, metadata_keys,
};
use crate::store::conversations::GhostProfile;
use crate::store::group_commit::Write;
use crate::store::{self, AnyConnection, Store, accounts, conversations, messages};

pub const CHANNEL: &str = crate::protocol::MATRIX;

/// What the home surface is to the hub: its rooms hold the conversations (they are not
/// bridged into one), and it shows reactions and redactions.
pub const SURFACE: SurfaceInfo = SurfaceInfo::new(CHANNEL).with_reactions().with_deletions();

/// What an `m.room.member` event changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    room_id: String,
    user_id: String,
    membership: String,
    /// The name the member gave themselves. Only a person's own member event names them:
    /// an invite or a kick carries whatever name its sender chose.
    own_name: Option<String>,
}

impl MemberChange {
    fn membership(&self) -> conversations::Membership<'_> {
        conversations::Membership { room_id: &self.room_id, user_id: &self.user_id, membership: &self.membership }
    }

    fn of(event: &Value, room_id: &str, sender: &str) -> Result<Self, EventError> {
        let target = event["state_key"].as_str().unwrap_or_default();
        let membership = event["content"]["membership"].as_str().unwrap_or_default();
        if target.is_empty() || membership.is_empty() {
            return Err(EventError::Permanent("member event without state_key or membership".into()));
        }
        let own_name = match sender == target {
            true => event["content"]["displayname"].as_str().filter(|n| !n.is_empty()).map(str::to_owned),
            false => None,
        };
        Ok(Self { room_id: room_id.into(), user_id: target.into(), membership: membership.into(), own_name })
    }
}

/// Tries of one send inside the adapter before the outbox schedules a later retry.
const SEND_TRIES: u32 = 4;

/// Content key of every event this service sends: the message's canonical id.
pub const MESSAGE_ID_KEY: &str = "mosaic.id";
/// How long a typing notice lasts on the homeserver, and how often it is renewed: well
/// before it lapses, so that a slow request does not let it flicker.
pub(super) const TYPING_TIMEOUT: Duration = Duration::from_secs(30);
const TYPING_RENEWAL: Duration = Duration::from_secs(20);
/// How long an encrypted message waits for its room key before the room is told it could
/// not be read; the room's later messages wait behind it meanwhile.
const KEY_WAIT: Duration = Duration::from_secs(60);
/// How far back the room is searched for an earlier try: pages of the speaker's events.
const LOOK_BACK_PAGES: usize = 4;
const LOOK_BACK_PAGE: u32 = 50;

/// How one pushed event was handled.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Worth trying again: the homeserver or the database is unavailable.
    #[error("{0}")]
    Transient(String),
    /// The event cannot be handled; it is logged and skipped.
    #[error("{0}")]
    Permanent(String),
}

impl From<HsError> for EventError {
    fn from(error: HsError) -> Self {
        if error.is_transient() { Self::Transient(error.to_string()) } else { Self::Permanent(error.to_string()) }
    }
}

impl From<crate::protocol::HandlerError> for EventError {
    fn from(error: crate::protocol::HandlerError) -> Self {
        if error.permanent { Self::Permanent(error.message) } else { Self::Transient(error.message) }
    }
}

impl From<store::StoreError> for EventError {
    fn from(error: store::StoreError) -> Self {
        if error.is_permanent() { Self::Permanent(error.to_string()) } else { Self::Transient(error.to_string()) }
    }
}

pub struct MatrixAdapter {
    config: Arc<Config>,
    ns: Namespace,
    client: HomeserverClient,
    ghosts: Ghosts,
    store: Store,
    handler: RwLock<Option<Arc<dyn InboundHandler>>>,
    /// Unix ms until which the homeserver asked us to slow down.
    rate_limited_until: AtomicI64,
    /// The homeserver's default room version, asked once.
    pub(super) room_version: tokio::sync::OnceCell<String>,
    /// People's display names, shown with their messages on other surfaces.
    display_names: DisplayNames,
    /// Messages whose send started in this process and whose event id is not recorded yet.
    unconfirmed: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    /// Per room, the event time back to which the next catch-up pass reads.
    pub(super) catch_up_cursors: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// Who may use the service: invites and messages from `none` are ignored here.
    permissions: Permissions,
    /// Devices for encrypted rooms; `None` when turned off.
    crypto: Option<Arc<Crypto>>,
    /// Who was seen typing in which room (see [`super::typing`]).
    pub(super) typing_rooms: super::typing::TypingRooms,
}

impl MatrixAdapter {
    pub fn new(config: Arc<Config>, store: Store) -> Self {
        let client = HomeserverClient::new(&config.homeserver.url, &config.appservice.as_token);
        Self {
            ns: Namespace::from_config(&config),
            ghosts: Ghosts::new(client.clone(), store.clone()),
            crypto: Crypto::new(&config, client.clone()),
            client,
            permissions: Permissions::from_config(&config),
            config,
            store,
            handler: RwLock::new(None),
            rate_limited_until: AtomicI64::new(0),
            room_version: tokio::sync::OnceCell::new(),
            display_names: Default::default(),
            unconfirmed: Default::default(),
            catch_up_cursors: Default::default(),
            typing_rooms: Default::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn crypto(&self) -> Option<&Arc<Crypto>> {
        self.crypto.as_ref()
    }

    pub fn client(&self) -> &HomeserverClient {
        &self.client
    }

    fn bot(&self) -> OwnedUserId {
        user_id(&self.ns.bot_user_id())
    }

    /// Registers the bot or a configured agent's ghost with its display name.
    pub async fn ensure_known_user(&self, user: &UserId) -> Result<bool, HsError> {
        let profile = if self.ns.is_bot(user.as_str()) {
            GhostProfile { display_name: Some(self.config.bot.display_name.clone()), avatar_url: None }
        } else {
            match self.ns.agent_id_of(user.as_str()).and_then(|id| self.config.agent(&id)) {
                Some(agent) => {
                    GhostProfile { display_name: Some(agent.display_name()), avatar_url: agent.avatar_url.clone() }
                }
                None => return Ok(false),
            }
        };
        self.ghosts.ensure(user, &profile).await?;
        Ok(true)
    }

    /// Handles one event pushed by the homeserver.
    pub async fn process_event(&self, raw: &str) -> Result<(), EventError> {
        // Events from the inbox are sealed already; those read back by the catch-up are not.
        let raw = super::server::seal_link_tokens(raw, &self.config.appservice.as_token);
        let event: Value = serde_json::from_str(&raw).map_err(|e| EventError::Permanent(format!("not JSON: {e}")))?;
        let kind = event["type"].as_str().unwrap_or_default();
        let room_id = event["room_id"].as_str().unwrap_or_default();
        let sender = event["sender"].as_str().unwrap_or_default();
        if room_id.is_empty() || sender.is_empty() {
            return Err(EventError::Permanent("event without room_id or sender".into()));
        }
        match kind {
            "m.room.member" => self.on_member(&event, room_id, sender).await,
            "m.room.message" if !self.ns.is_ours(sender) => self.on_message(&event, room_id, sender).await,
            "m.reaction" if !self.ns.is_ours(sender) => self.on_reaction(&event, room_id, sender).await,
            "m.room.redaction" if !self.ns.is_ours(sender) => self.on_redaction(&event, room_id, sender).await,
            "m.room.encrypted" if !self.ns.is_ours(sender) => self.on_encrypted(&event, room_id, sender).await,
            "m.room.encryption" => {
                if let (Some(crypto), Ok(room)) = (&self.crypto, room(room_id)) {
                    crypto.mark_encrypted(&room);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// An encrypted event is decrypted with the device of one of our users in the room,
    /// then handled as if it had come in clear. One whose room key has not arrived waits
    /// (the inbox tries again); one that can never be read is set aside.
    async fn on_encrypted(&self, event: &Value, room_id: &str, sender: &str) -> Result<(), EventError> {
        // Nothing is read for people the service ignores.
        if self.permissions.matrix_level(sender) == Level::None {
            return Ok(());
        }
        let Some(crypto) = &self.crypto else {
            tracing::info!(room_id, "encrypted event left unread: encryption is turned off");
            return Ok(());
        };
        let room = room(room_id)?;
        crypto.mark_encrypted(&room);
        let mut conn = self.store.conn().await?;
        let members = conversations::present_members(&mut conn, room_id).await?;
        drop(conn);
        let readers: Vec<OwnedUserId> = members
            .iter()
            .filter(|(member, membership)| membership == "join" && self.ns.is_ours(member))
            .filter_map(|(member, _)| OwnedUserId::try_from(member.as_str()).ok())
            .collect();
        let mut decrypted = crypto.decrypt(&room, event, &readers).await;
        if matches!(decrypted, Ok(Decrypted::KeyMissing)) {
            // The key may wait at the homeserver without having been pushed: fetch it.
            for reader in &readers {
                if let Err(error) = crypto.fetch_to_device(reader).await {
                    tracing::debug!(room_id, user_id = %reader, %error, "cannot fetch to-device messages");
                }
            }
            decrypted = crypto.decrypt(&room, event, &readers).await;
        }
        let reason = match decrypted {
            Ok(Decrypted::Event(clear)) => return Box::pin(self.process_event(&clear)).await,
            Ok(Decrypted::KeyMissing) => {
                let age_ms = store::now_ms() - event["origin_server_ts"].as_i64().unwrap_or_default();
                if age_ms < KEY_WAIT.as_millis() as i64 {
                    return Err(EventError::Transient("the message's room key has not arrived yet".into()));
                }
                "its room key never arrived".to_string()
            }
            Ok(Decrypted::Undecryptable(reason)) => reason,
            Err(error) if error.is_transient() => return Err(EventError::Transient(error.to_string())),
            Err(error) => error.to_string(),
        };
        self.say_unreadable(&room, event, sender).await?;
        Err(EventError::Permanent(format!("cannot decrypt: {reason}")))
    }

    /// Tells the room that a message could not be read, so that its sender can send it
    /// again: a message is never dropped without a word.
    async fn say_unreadable(&self, room: &OwnedRoomId, event: &Value, sender: &str) -> Result<(), EventError> {
        let speaker = self.notice_speaker(room.as_str()).await.map_err(|e| EventError::Transient(e.to_string()))?;
        let name = self.display_name(sender).await;
        let text = format!(
            "I could not read a message from {name}: it was encrypted with a key that never reached me. Please send it again."
        );
        let event_id = event["event_id"].as_str().unwrap_or_default();
        let mut content = serde_json::to_value(RoomMessageEventContent::notice_plain(text))
            .map_err(|e| EventError::Permanent(e.to_string()))?;
        if !event_id.is_empty() {
            content["m.relates_to"] = json!({"m.in_reply_to": {"event_id": event_id}});
        }
        let content = Raw::new(&content).map_err(|e| EventError::Permanent(e.to_string()))?.cast_unchecked();
        // One notice per message, however often this is tried.
        let txn_id: OwnedTransactionId =
            format!("mosaic-unreadable-{}", &crate::secrets::hash_token(event_id)[..32]).into();
        self.send_room_event(room, &speaker, txn_id, MessageLikeEventType::RoomMessage, content).await?;
        Ok(())
    }

    async fn on_member(&self, event: &Value, room_id: &str, sender: &str) -> Result<(), EventError> {
        let change = MemberChange::of(event, room_id, sender)?;
        self.record_memberships(std::slice::from_ref(&change)).await?;
        let (target, membership) = (change.user_id.as_str(), change.membership.as_str());
        if membership == "invite" && self.ns.is_ours(target) && !self.ns.is_ours(sender) {
            if self.permissions.matrix_level(sender) == Level::None {
                return self.refuse_invite(room_id, target, sender).await;
            }
            self.accept_invite(room_id, target).await?;
        }
        Ok(())
    }

    /// The pushed event's membership change, when recording it is all there is to do:
    /// the inbox records runs of these in one write. An invite of one of our users is
    /// not such a change (it is answered), nor is anything else.
    pub fn membership_record(&self, raw: &str) -> Option<MemberChange> {
        let raw = super::server::seal_link_tokens(raw, &self.config.appservice.as_token);
        let event: Value = serde_json::from_str(&raw).ok()?;
        let sender = event["sender"].as_str()?;
        let change = match event["type"].as_str()? {
            "m.room.member" => {
                MemberChange::of(&event, event["room_id"].as_str().filter(|r| !r.is_empty())?, sender).ok()?
            }
            _ => return None,
        };
        let answered = change.membership == "invite" && self.ns.is_ours(&change.user_id) && !self.ns.is_ours(sender);
        (!answered).then_some(change)
    }

    /// Records membership changes, in one write, and the names people gave themselves.
    pub async fn record_memberships(&self, changes: &[MemberChange]) -> Result<(), EventError> {
        self.store
            .write(async |conn| {
                let changes: Vec<conversations::Membership> = changes.iter().map(MemberChange::membership).collect();
                conversations::set_memberships(conn, &changes).await
            })
            .await?;
        for change in changes {
            if let Some(name) = &change.own_name {
                self.display_names.remember(&change.user_id, name);
            }
        }
        Ok(())
    }

    /// Joins an invited bot or agent ghost, then learns who is already in the room.
    async fn accept_invite(&self, room_id: &str, target: &str) -> Result<(), EventError> {
        let user = user_id(target);
        if !self.ensure_known_user(&user).await? {
            tracing::info!(room_id, target, "invite for an unknown agent ignored");
            return Ok(());
        }
        let room = room(room_id)?;
        // The device exists before the join, so that the first message sent to the room
        // after it is already encrypted for it.
        if let Some(crypto) = &self.crypto
            && let Err(error) = crypto.device(&user).await
        {
            tracing::warn!(room_id, user_id = target, %error, "no device for encrypted rooms; encrypted messages will stay unread");
        }
        self.client.call(join_room_by_id::v3::Request::new(room.clone()), Some(&user)).await?;
        tracing::info!(room_id, user_id = target, "joined room on invite");
        self.sync_members(&room, &user).await
    }

    /// Someone the service ignores invited one of our users: the invite is rejected,
    /// without a word in the room.
    async fn refuse_invite(&self, room_id: &str, target: &str, sender: &str) -> Result<(), EventError> {
        let user = user_id(target);
        if !self.ensure_known_user(&user).await? {
            return Ok(());
        }
        let room = room(room_id)?;
        self.client.call(leave_room::v3::Request::new(room), Some(&user)).await?;
        tracing::info!(room_id, user_id = target, sender, "invite from a sender without access rejected");
        Ok(())
    }

    async fn sync_members(&self, room: &OwnedRoomId, as_user: &UserId) -> Result<(), EventError> {
        let members = self.client.call(joined_members::v3::Request::new(room.clone()), Some(as_user)).await?;
        let mut tx = self.store.begin_write().await?;
        for member in members.joined.keys() {
            conversations::set_membership(&mut tx, room.as_str(), member.as_str(), "join").await?;
        }
        Ok(tx.commit().await?)
    }

    async fn on_message(&self, event: &Value, room_id: &str, sender: &str) -> Result<(), EventError> {
        // Nothing is read or stored for people the service ignores (the hub checks again).
        if self.permissions.matrix_level(sender) == Level::None {
            return Ok(());
        }
        let handler = self.handler()?;
        let content: RoomMessageEventContent = match serde_json::from_value(event["content"].clone()) {
            Ok(content) => content,
            // Redacted or malformed messages carry nothing to act on.
            Err(_) => return Ok(()),
        };
        let event_id = event["event_id"].as_str().unwrap_or_default();
        let mut conn = self.store.conn().await?;
        let members = conversations::present_members(&mut conn, room_id).await?;
        let mut agents = Vec::new();
        let mut people = 0;
        let mut bot_joined = false;
        for (member, membership) in &members {
            if let Some(agent) = self.ns.agent_id_of(member) {
                if membership == "join" && self.config.agent(&agent).is_some() {
                    agents.push(agent);
                }
            } else if self.ns.is_bot(member) {
                bot_joined |= membership == "join";
            } else if !self.ns.is_ours(member) {
                people += 1;
            }
        }
        if agents.is_empty() && !bot_joined {
            return Ok(());
        }
        let mentioned = self.mentioned_agents(&content, &agents);
        let mut msg = ChannelMessage::new(room_id, sender, SenderType::User, "", ContentType::Text);
        fill_from_content(&mut msg, &content);
        if let Some(ts) = event["origin_server_ts"].as_i64().and_then(chrono::DateTime::from_timestamp_millis) {
            msg.timestamp = ts;
        }
        let relation = content.relates_to.as_ref();
        let (reply_native, edit_native) = match relation {
            Some(Relation::Reply(reply)) => (Some(reply.in_reply_to.event_id.as_str()), None),
            Some(Relation::Thread(thread)) => {
                msg.thread_id = Some(thread.event_id.to_string());
                (thread.in_reply_to.as_ref().filter(|_| !thread.is_falling_back).map(|r| r.event_id.as_str()), None)
            }
            Some(Relation::Replacement(replacement)) => (None, Some(replacement.event_id.as_str())),
            _ => (None, None),
        };
        if let Some(original) = edit_native {
            if let Some(Relation::Replacement(replacement)) = relation {
                let new_content = RoomMessageEventContent::new(replacement.new_content.msgtype.clone());
                fill_from_content(&mut msg, &new_content);
            }
            let target = messages::message_for_native(&mut conn, CHANNEL, room_id, original).await?;
            msg.event = ChannelEvent::Edit { target };
        } else if let Some(parent) = reply_native {
            msg.reply_to_id = messages::message_for_native(&mut conn, CHANNEL, room_id, parent).await?;
        }
        drop(conn);
        let metadata = &mut msg.metadata;
        metadata.insert(metadata_keys::CHANNEL_MESSAGE_ID.into(), json!(event_id));
        metadata.insert(metadata_keys::SENDER_NAME.into(), json!(self.display_name(sender).await));
        metadata.insert("roomId".into(), json!(room_id));
        metadata.insert("eventType".into(), json!("m.room.message"));
        metadata.insert("unsigned".into(), event.get("unsigned").cloned().unwrap_or_else(|| json!({})));
        metadata.insert(metadata_keys::AGENTS.into(), json!(agents));
        metadata.insert(metadata_keys::MENTIONS.into(), json!(mentioned));
        metadata.insert(metadata_keys::PARTICIPANTS.into(), json!(people));
        metadata.insert(metadata_keys::COMMANDS.into(), json!(true));
        metadata.insert(metadata_keys::BOT_PRESENT.into(), json!(bot_joined));
        if edit_native.is_none() && looks_like_command(&msg.content) {
            // Read with a member of the room: the bot, else one of its agents.
            let reader = if bot_joined { self.bot() } else { user_id(&self.ns.agent_user_id(&agents[0])) };
            match self.power_of(room_id, &reader, sender).await {
                Ok(power) => {
                    let power = serde_json::to_value(power).map_err(|e| EventError::Permanent(e.to_string()))?;
                    msg.metadata.insert(ROOM_POWER.into(), power);
                }
                Err(error) => tracing::warn!(room_id, event_id, %error, "cannot read the room's power levels"),
            }
        }
        tracing::debug!(room_id, event_id, sender, "message received");
        // A token anywhere in the event (the HTML, an edit's fallback text) makes it a link
        // attempt, also when the text shown does not carry it.
        let carries_token = match text_with_link_token(&event["content"]) {
            Some(text) if !link_token::is_attempt(&msg.content) => {
                msg.content = text.to_string();
                true
            }
            found => found.is_some(),
        };
        handler.handle(msg).await.map_err(EventError::from)?;
        if carries_token && bot_joined {
            self.redact_link_attempt(room_id, event_id).await;
        }
        Ok(())
    }

    /// Takes a link token out of the room's history, where the bot may: the hub has burnt
    /// it already, but nobody needs to read it. Elsewhere it is left quietly.
    async fn redact_link_attempt(&self, room_id: &str, event_id: &str) {
        let (Ok(room), Ok(event)) = (room(room_id), OwnedEventId::try_from(event_id)) else { return };
        let bot = self.bot();
        match self.may_redact_others(&room, &bot).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(room_id, event_id, "no power to redact a link attempt");
                return;
            }
            Err(error) => {
                tracing::debug!(room_id, event_id, %error, "cannot read whether a link attempt may be redacted");
                return;
            }
        }
        let txn_id: OwnedTransactionId =
            format!("mosaic-redact-{}", &crate::secrets::hash_token(event_id)[..32]).into();
        let mut request = redact_event::v3::Request::new(room, event, txn_id);
        request.reason = Some("link tokens are secret".into());
        match self.client.call(request, Some(&bot)).await {
            Ok(_) => tracing::info!(room_id, event_id, "link attempt redacted"),
            Err(error) => tracing::warn!(room_id, event_id, %error, "cannot redact a link attempt"),
        }
    }

    async fn power_of(&self, room_id: &str, reader: &UserId, sender: &str) -> Result<RoomPower, String> {
        let room = room(room_id).map_err(|e| e.to_string())?;
        let sender = OwnedUserId::try_from(sender).map_err(|e| e.to_string())?;
        self.read_room_power(&room, reader, &sender).await
    }

    /// A person's display name: from their member events, else their profile, else the
    /// localpart of their id.
    async fn display_name(&self, user: &str) -> String {
        let fallback = user.trim_start_matches('@').split(':').next().unwrap_or(user).to_string();
        let Ok(id) = OwnedUserId::try_from(user) else { return fallback };
        let client = self.client.clone();
        let lookup = async move {
            let request = get_profile_field::v3::Request::new(id, ProfileFieldName::DisplayName);
            match client.call(request, None).await.ok()?.value {
                Some(ProfileFieldValue::DisplayName(name)) if !name.is_empty() => Some(name),
                _ => None,
            }
        };
        self.display_names.resolve(user, fallback, lookup).await
    }

    /// The installed inbound handler; events wait in the inbox until there is one.
    pub(super) fn handler(&self) -> Result<Arc<dyn InboundHandler>, EventError> {
        self.handler
            .read()
            .expect("handler lock")
            .clone()
            .ok_or_else(|| EventError::Transient("no inbound handler installed yet".into()))
    }

    /// A reaction becomes a message whose event is that reaction to the message reacted
    /// to (people answer an agent's permission question this way).
    async fn on_reaction(&self, event: &Value, room_id: &str, sender: &str) -> Result<(), EventError> {
        if self.permissions.matrix_level(sender) == Level::None {
            return Ok(());
        }
        let handler = self.handler()?;
        let relation = &event["content"]["m.relates_to"];
        let (Some(target), Some(key)) = (relation["event_id"].as_str(), relation["key"].as_str()) else {
            return Ok(());
        };
        let mut conn = self.store.conn().await?;
        let known = messages::message_for_native(&mut conn, CHANNEL, room_id, target).await?;
        drop(conn);
        let Some(reacted_to) = (match known {
            Some(id) => Some(id),
            None => self.sent_message_id(room_id, target).await,
        }) else {
            return Ok(());
        };
        let mut msg = ChannelMessage::reaction(room_id, sender, key, reacted_to, false);
        if let Some(ts) = event["origin_server_ts"].as_i64().and_then(chrono::DateTime::from_timestamp_millis) {
            msg.timestamp = ts;
        }
        let name = self.display_name(sender).await;
        let metadata = &mut msg.metadata;
        metadata.insert(metadata_keys::CHANNEL_MESSAGE_ID.into(), event["event_id"].clone());
        metadata.insert(metadata_keys::SENDER_NAME.into(), json!(name));
        metadata.insert("roomId".into(), json!(room_id));
        metadata.insert("eventType".into(), json!("m.reaction"));
        metadata.insert("reactionEmoji".into(), json!(key));
        handler.handle(msg).await.map_err(EventError::from)
    }

    /// The canonical id of an event this service sent, read from the event itself (every
    /// event we send carries it): a reaction may come before the send recorded where its
    /// message landed. `None` for other events, or when the event cannot be read.
    async fn sent_message_id(&self, room_id: &str, event_id: &str) -> Option<Uuid> {
        let room = OwnedRoomId::try_from(room_id).ok()?;
        let event = OwnedEventId::try_from(event_id).ok()?;
        let reader = self.notice_speaker(room_id).await.ok()?;
        let request = get_room_event::v3::Request::new(room, event);
        let response = self.client.call(request, Some(&reader)).await.ok()?;
        let event: Value = serde_json::from_str(response.event.json().get()).ok()?;
        if !event["sender"].as_str().is_some_and(|sender| self.ns.is_ours(sender)) {
            return None;
        }
        event["content"][MESSAGE_ID_KEY].as_str().and_then(|id| Uuid::parse_str(id).ok())
    }

    /// People take a reaction back by redacting it: the redaction of a reaction the hub
    /// knows becomes that reaction's removal. Other redactions are not bridged.
    async fn on_redaction(&self, event: &Value, room_id: &str, sender: &str) -> Result<(), EventError> {
        if self.permissions.matrix_level(sender) == Level::None {
            return Ok(());
        }
        // Room versions before 11 name the redacted event beside the content, later ones in it.
        let Some(redacted) = event["content"]["redacts"].as_str().or(event["redacts"].as_str()) else {
            return Ok(());
        };
        let mut conn = self.store.conn().await?;
        let Some(id) = messages::message_for_native(&mut conn, CHANNEL, room_id, redacted).await? else {
            return Ok(());
        };
        let Some(added) = messages::get(&mut conn, id).await? else { return Ok(()) };
        drop(conn);
        let ChannelEvent::Reaction { target, key, removed: false, .. } = &added.event else { return Ok(()) };
        let handler = self.handler()?;
        let mut msg = ChannelMessage::reaction(room_id, &added.sender_id, key, *target, true);
        let metadata = &mut msg.metadata;
        metadata.insert(metadata_keys::CHANNEL_MESSAGE_ID.into(), event["event_id"].clone());
        metadata.insert("roomId".into(), json!(room_id));
        metadata.insert("eventType".into(), json!("m.room.redaction"));
        tracing::debug!(room_id, redacted, sender, "reaction taken back");
        handler.handle(msg).await.map_err(EventError::from)
    }

    /// Agents addressed in a message: by `m.mentions`, by user id, or by display name.
    fn mentioned_agents(&self, content: &RoomMessageEventContent, agents: &[String]) -> Vec<String> {
        let body = content.body().to_lowercase();
        let formatted = match &content.msgtype {
            MessageType::Text(text) => text.formatted.as_ref().map(|f| f.body.to_lowercase()).unwrap_or_default(),
            _ => String::new(),
        };
        let explicit: Vec<String> =
            content.mentions.as_ref().map(|m| m.user_ids.iter().map(|u| u.to_string()).collect()).unwrap_or_default();
        agents
            .iter()
            .filter(|agent| {
                let mxid = self.ns.agent_user_id(agent);
                let name = self.config.agent(agent).map(|a| a.display_name().to_lowercase()).unwrap_or_default();
                explicit.contains(&mxid)
                    || body.contains(&mxid.to_lowercase())
                    || formatted.contains(&mxid.to_lowercase())
                    || (!name.is_empty() && crate::protocol::contains_word(&body, &name))
            })
            .cloned()
            .collect()
    }

    fn agent_ghost(&self, agent_id: &str) -> Result<OwnedUserId, ChannelSendError> {
        OwnedUserId::try_from(self.ns.agent_user_id(agent_id))
            .map_err(|e| ChannelSendError::Terminal(format!("no ghost for agent {agent_id:?}: {e}")))
    }

    /// The Matrix user that speaks for `msg` in `room_id`.
    async fn speaker(&self, room_id: &str, msg: &ChannelMessage) -> Result<OwnedUserId, ChannelSendError> {
        if msg.sender_type == SenderType::Agent {
            return Ok(user_id(&self.ns.agent_user_id(&msg.sender_id)));
        }
        if msg.sender_type == SenderType::User && msg.origin_channel() != CHANNEL {
            return self.remote_ghost(room_id, msg).await;
        }
        self.notice_speaker(room_id).await
    }

    /// Who speaks for the service in a room.
    pub(super) async fn notice_speaker(&self, room_id: &str) -> Result<OwnedUserId, ChannelSendError> {
        // System notices come from the bot; in a room the bot is not in, from an agent
        // that is, so that a command typed there still gets its answer.
        let members = {
            let mut conn = self.store.conn().await.map_err(transient)?;
            conversations::present_members(&mut conn, room_id).await.map_err(transient)?
        };
        let joined = |id: &str| members.iter().any(|(m, state)| m == id && state == "join");
        let bot = self.ns.bot_user_id();
        if joined(&bot) {
            return Ok(user_id(&bot));
        }
        let agent = members.iter().find(|(m, state)| state == "join" && self.ns.agent_id_of(m).is_some());
        Ok(user_id(agent.map_or(bot.as_str(), |(m, _)| m.as_str())))
    }

    /// The ghost of a person writing on another surface, with their name and avatar, in
    /// the room.
    async fn remote_ghost(&self, room_id: &str, msg: &ChannelMessage) -> Result<OwnedUserId, ChannelSendError> {
        let origin = msg.origin_channel();
        let ghost = OwnedUserId::try_from(self.ns.remote_user_id(origin, &msg.sender_id))
            .map_err(|e| ChannelSendError::Terminal(format!("no ghost for {origin} user {:?}: {e}", msg.sender_id)))?;
        let profile = GhostProfile {
            display_name: Some(crate::protocol::person_name(msg)),
            avatar_url: msg
                .meta_str(metadata_keys::SENDER_AVATAR_URL)
                .filter(|u| u.starts_with("mxc://"))
                .map(Into::into),
        };
        self.ghosts.ensure(&ghost, &profile).await.map_err(send_error)?;
        let joined = {
            let mut conn = self.store.conn().await.map_err(transient)?;
            conversations::membership(&mut conn, room_id, ghost.as_str()).await.map_err(transient)?
        };
        if joined.as_deref() != Some("join") {
            let room = room(room_id).map_err(|e| ChannelSendError::Terminal(e.to_string()))?;
            // The bot invites where it is a member; elsewhere an agent of the room does.
            let inviter = self.notice_speaker(room_id).await?;
            let inviter = (!self.ns.is_bot(inviter.as_str())).then_some(inviter.as_ref());
            self.invite_person_as(&room, ghost.as_str(), inviter).await.map_err(|e| transient(e.to_string()))?;
            self.client.call(join_room_by_id::v3::Request::new(room), Some(&ghost)).await.map_err(send_error)?;
            let join = async |conn: &mut AnyConnection| {
                conversations::set_membership(conn, room_id, ghost.as_str(), "join").await
            };
            self.store.write(join).await.map_err(transient)?;
        }
        Ok(ghost)
    }

    /// Redacts this room's copy of a message deleted on another surface.
    async fn redact_copy(&self, room_id: &str, msg: &ChannelMessage, target: Uuid) -> Result<(), ChannelSendError> {
        let native = {
            let mut conn = self.store.conn().await.map_err(transient)?;
            messages::native_for_message(&mut conn, CHANNEL, room_id, target).await.map_err(transient)?
        };
        let (Some(event_id), Ok(room)) = (native.and_then(|id| OwnedEventId::try_from(id).ok()), room(room_id)) else {
            return Ok(());
        };
        let txn_id: OwnedTransactionId = format!("mosaic-{}", msg.id.simple()).into();
        let mut request = redact_event::v3::Request::new(room, event_id, txn_id);
        request.reason = Some("deleted on the other side of the bridge".into());
        // The ghost that posted the copy takes it back: it needs no power for its own
        // events, and the bot may not be in the room.
        let author = OwnedUserId::try_from(self.ns.remote_user_id(msg.origin_channel(), &msg.sender_id)).ok();
        self.client.call(request, author.as_deref()).await.map_err(send_error)?;
        Ok(())
    }

    async fn placement(&self, room_id: &str, msg: &ChannelMessage) -> Result<Placement, ChannelSendError> {
        let mut placement = Placement::default();
        if let Some(parent) = msg.reply_to_id {
            let mut conn = self.store.conn().await.map_err(transient)?;
            placement.in_reply_to = messages::native_for_message(&mut conn, CHANNEL, room_id, parent)
                .await
                .map_err(transient)?
                .and_then(|id| OwnedEventId::try_from(id).ok());
        }
        placement.thread_root = msg.thread_id.as_deref().and_then(|id| OwnedEventId::try_from(id).ok());
        if let Some(original) =
            msg.metadata.get(stream::REPLACES).and_then(|v| v.as_str()).and_then(|id| Uuid::parse_str(id).ok())
        {
            let mut conn = self.store.conn().await.map_err(transient)?;
            // Without the original on this room, the edit is sent as a message of its own.
            placement.replaces = messages::native_for_message(&mut conn, CHANNEL, room_id, original)
                .await
                .map_err(transient)?
                .and_then(|id| OwnedEventId::try_from(id).ok());
        }
        Ok(placement)
    }

    /// The event content as sent: carrying the message's canonical id (found again after
    /// an uncertain send), and with the `mosaic.agent_message` payload of messages in
    /// agent rooms, its `reply_to` resolved to the event id in this room.
    async fn outgoing_content(
        &self,
        room_id: &str,
        msg: &ChannelMessage,
        content: RoomMessageEventContent,
    ) -> Result<Raw<AnyMessageLikeEventContent>, ChannelSendError> {
        let mut json = serde_json::to_value(&content).map_err(|e| ChannelSendError::Terminal(e.to_string()))?;
        json[MESSAGE_ID_KEY] = json!(msg.id.to_string());
        if let Some(mut agent_message) = msg.metadata.get(AGENT_MESSAGE).cloned() {
            let reply_to = agent_message["payload"]["reply_to"].as_str().and_then(|id| Uuid::parse_str(id).ok());
            if let Some(canonical) = reply_to {
                let mut conn = self.store.conn().await.map_err(transient)?;
                let native =
                    messages::native_for_message(&mut conn, CHANNEL, room_id, canonical).await.map_err(transient)?;
                if let Some(payload) = agent_message["payload"].as_object_mut() {
                    payload.remove("reply_to");
                    payload.insert("reply_to_event_id".into(), json!(native));
                }
            }
            json["mosaic.agent_message"] = agent_message;
        }
        let raw = serde_json::value::to_raw_value(&json).map_err(|e| ChannelSendError::Terminal(e.to_string()))?;
        Ok(Raw::from_json(raw))
    }

    /// Sends `msg` into the room exactly once. The homeserver drops a repeated
    /// transaction id only while it remembers it (Synapse keeps appservice transaction ids
    /// in memory: a restart forgets them), so after a try that may have landed without us
    /// learning its event id — a network error, a 5xx, a try cut short, a restart of this
    /// service — the room is searched for the event carrying our message id before
    /// anything is sent again.
    /// Returns where the message landed, still to be recorded (none for a deletion).
    async fn deliver(
        &self,
        channel_id: &str,
        msg: &ChannelMessage,
        resend: bool,
    ) -> Result<Option<Landing>, ChannelSendError> {
        let room_id = send_room(channel_id)?;
        if let ChannelEvent::Delete { target } = msg.event {
            return self.redact_copy(channel_id, msg, target).await.map(|()| None);
        }
        let speaker = self.speaker(channel_id, msg).await?;
        let content = format::message_content(msg, self.placement(channel_id, msg).await?);
        let content = self.outgoing_content(channel_id, msg, content).await?;
        self.send_event(&room_id, msg, &speaker, MessageLikeEventType::RoomMessage, content, resend).await
    }

    /// Sends one event of `event_type` for `msg` as `speaker`, exactly once (see
    /// [`MatrixAdapter::deliver`]): messages and reactions take this one path. Returns
    /// where it landed, still to be recorded; none when the homeserver had it already as
    /// a duplicate annotation.
    async fn send_event(
        &self,
        room_id: &OwnedRoomId,
        msg: &ChannelMessage,
        speaker: &UserId,
        event_type: MessageLikeEventType,
        content: Raw<AnyMessageLikeEventContent>,
        resend: bool,
    ) -> Result<Option<Landing>, ChannelSendError> {
        let channel_id = room_id.as_str();
        let txn_id: OwnedTransactionId = format!("mosaic-{}", msg.id.simple()).into();
        // An id already here is one whose earlier try in this process never confirmed.
        let mut look_first = !self.unconfirmed.lock().expect("unconfirmed lock").insert(msg.id) || resend;
        let mut last_error = None;
        for attempt in 0..SEND_TRIES {
            if look_first {
                match self.find_sent(room_id, speaker, &event_type, msg.id).await {
                    Ok(Some(event_id)) => {
                        tracing::info!(room_id = channel_id, %event_id, message_id = %msg.id, "earlier try had landed; not sent again");
                        return Ok(Some(landing(channel_id, msg.id, &event_id)));
                    }
                    Ok(None) => look_first = false,
                    Err(error) if error.is_transient() => {
                        last_error = Some(error);
                        tokio::time::sleep(crate::queue::backoff(attempt as i64)).await;
                        continue;
                    }
                    Err(error) => {
                        // The room cannot be read (the speaker may not be in it yet):
                        // there is nothing to find, so the send goes ahead.
                        tracing::warn!(room_id = channel_id, message_id = %msg.id, %error, "cannot look for an earlier try");
                        look_first = false;
                    }
                }
            }
            let step = async {
                self.ensure_known_user(speaker).await?;
                self.send_room_event(room_id, speaker, txn_id.clone(), event_type.clone(), content.clone()).await
            };
            match step.await {
                Ok(response) => {
                    tracing::debug!(room_id = channel_id, event_id = %response.event_id, txn_id = %txn_id, "sent");
                    return Ok(Some(landing(channel_id, msg.id, &response.event_id)));
                }
                Err(HsError::RateLimited { retry_after }) => {
                    self.note_rate_limit(retry_after);
                    tokio::time::sleep(retry_after.unwrap_or(Duration::from_secs(1))).await;
                    last_error = Some(HsError::RateLimited { retry_after });
                }
                Err(error) if error.is_transient() => {
                    // The request may have been carried out before the failure.
                    look_first = true;
                    tokio::time::sleep(crate::queue::backoff(attempt as i64)).await;
                    last_error = Some(error);
                }
                // The same reaction by the same user is there already.
                Err(error) if error.errcode() == Some("M_DUPLICATE_ANNOTATION") => return Ok(None),
                Err(error) if error.errcode() == Some("M_FORBIDDEN") && attempt == 0 => {
                    // A ghost that was invited but has not joined yet: join, then send.
                    let join =
                        self.client.call(join_room_by_id::v3::Request::new(room_id.clone()), Some(speaker)).await;
                    if join.is_err() {
                        return Err(ChannelSendError::Terminal(error.to_string()));
                    }
                    last_error = Some(error);
                }
                Err(error) => return Err(ChannelSendError::Terminal(error.to_string())),
            }
        }
        let error = last_error.expect("at least one try");
        Err(ChannelSendError::Transient { retry_after: error.retry_after(), message: error.to_string() })
    }

    /// Records where a message landed; from then on it needs no search.
    async fn confirm_sent(&self, landed: Option<Landing>) -> Result<(), ChannelSendError> {
        let Some(landing) = landed else { return Ok(()) };
        let id = landing.message_id;
        self.store.commit_grouped(Write::Landed(landing)).await.map_err(transient)?;
        self.unconfirmed.lock().expect("unconfirmed lock").remove(&id);
        Ok(())
    }

    /// Hands where a message landed to a caller that records it: from here on, a search
    /// for it is the caller's to ask for (with a resend) if its record never commits.
    fn hand_over(&self, landed: Option<Landing>) -> Option<Landing> {
        if let Some(landing) = &landed {
            self.unconfirmed.lock().expect("unconfirmed lock").remove(&landing.message_id);
        }
        landed
    }

    /// The event `speaker` sent for message `id` in the room, if any: recorded already,
    /// or found among the speaker's recent messages there by the `mosaic.id` every sent
    /// event carries.
    async fn find_sent(
        &self,
        room_id: &OwnedRoomId,
        speaker: &UserId,
        event_type: &MessageLikeEventType,
        id: Uuid,
    ) -> Result<Option<OwnedEventId>, HsError> {
        let recorded = match self.store.conn().await {
            Ok(mut conn) => messages::native_for_message(&mut conn, CHANNEL, room_id.as_str(), id).await.ok().flatten(),
            Err(_) => None,
        };
        if let Some(event_id) = recorded.and_then(|e| OwnedEventId::try_from(e).ok()) {
            return Ok(Some(event_id));
        }
        let wanted = id.to_string();
        let mut from = None;
        for _ in 0..LOOK_BACK_PAGES {
            let mut request = get_message_events::v3::Request::new(room_id.clone(), Direction::Backward);
            request.from = from.take();
            request.limit = UInt::from(LOOK_BACK_PAGE);
            request.filter.senders = Some(vec![speaker.to_owned()]);
            // In an encrypted room the event went out as `m.room.encrypted`.
            request.filter.types = Some(vec![event_type.to_string(), MessageLikeEventType::RoomEncrypted.to_string()]);
            let page = self.client.call(request, Some(speaker)).await?;
            for raw in &page.chunk {
                let Ok(event) = serde_json::from_str::<Value>(raw.json().get()) else { continue };
                if event["sender"] == speaker.as_str() && event["content"][MESSAGE_ID_KEY] == wanted.as_str() {
                    return Ok(event["event_id"].as_str().and_then(|e| OwnedEventId::try_from(e).ok()));
                }
            }
            match page.end {
                Some(end) if !page.chunk.is_empty() => from = Some(end),
                _ => break,
            }
        }
        Ok(None)
    }

    /// Sends an event into a room as `sender`, encrypted when the room is. An encrypted
    /// event keeps its `mosaic.id` beside the ciphertext, where [`Self::find_sent`] looks.
    pub(super) async fn send_room_event(
        &self,
        room: &OwnedRoomId,
        sender: &UserId,
        txn_id: OwnedTransactionId,
        event_type: MessageLikeEventType,
        content: Raw<AnyMessageLikeEventContent>,
    ) -> Result<send_message_event::v3::Response, HsError> {
        let Some(crypto) = self.crypto.as_ref() else {
            return self.send_clear(room, sender, txn_id, event_type, content).await;
        };
        if !crypto.is_encrypted(room, sender).await? {
            return self.send_clear(room, sender, txn_id, event_type, content).await;
        }
        let members = self.room_recipients(room).await?;
        let mut content: Value =
            serde_json::from_str(content.json().get()).map_err(|e| HsError::Protocol(e.to_string()))?;
        self.encrypt_attached_file(&mut content).await?;
        let message_id = content.get(MESSAGE_ID_KEY).cloned();
        let content = Raw::new(&content).map_err(|e| HsError::Protocol(e.to_string()))?.cast_unchecked();
        let encrypted = crypto.encrypt(sender, room, &event_type.to_string(), &content, &members).await?;
        let mut outer: Value =
            serde_json::from_str(encrypted.json().get()).map_err(|e| HsError::Protocol(e.to_string()))?;
        if let Some(id) = message_id {
            outer[MESSAGE_ID_KEY] = id;
        }
        let outer = Raw::new(&outer).map_err(|e| HsError::Protocol(e.to_string()))?.cast_unchecked();
        self.send_clear(room, sender, txn_id, MessageLikeEventType::RoomEncrypted, outer).await
    }

    /// Makes a file message fit for an encrypted room: the file is fetched, encrypted and
    /// uploaded again, and the content points at the ciphertext (`file`) instead of the
    /// file in clear (`url`). Other contents are left as they are.
    async fn encrypt_attached_file(&self, value: &mut Value) -> Result<(), HsError> {
        let Some(url) = value.get("url").and_then(Value::as_str).map(str::to_string) else { return Ok(()) };
        let unavailable = |error: crate::protocol::MediaError| match error {
            crate::protocol::MediaError::Unavailable(message) => HsError::Network(message),
            crate::protocol::MediaError::Rejected(message) => HsError::Protocol(message),
        };
        let media = crate::protocol::MediaRepository::download(self, &url).await.map_err(unavailable)?;
        let (ciphertext, mut file) = super::e2ee::encrypt_file(&media.bytes)?;
        let name = value["body"].as_str().unwrap_or_default().to_string();
        let uploaded = crate::protocol::MediaRepository::upload(self, ciphertext, "application/octet-stream", &name)
            .await
            .map_err(unavailable)?;
        file["url"] = json!(uploaded);
        let object = value.as_object_mut().expect("a content is an object");
        object.remove("url");
        object.insert("file".into(), file);
        // A thumbnail in clear would show what the file holds.
        if let Some(info) = object.get_mut("info").and_then(Value::as_object_mut) {
            info.remove("thumbnail_url");
            info.remove("thumbnail_info");
        }
        Ok(())
    }

    async fn send_clear(
        &self,
        room: &OwnedRoomId,
        sender: &UserId,
        txn_id: OwnedTransactionId,
        event_type: MessageLikeEventType,
        content: Raw<AnyMessageLikeEventContent>,
    ) -> Result<send_message_event::v3::Response, HsError> {
        let request = send_message_event::v3::Request::new_raw(room.clone(), txn_id, event_type, content);
        self.client.call(request, Some(sender)).await
    }

    /// Everyone a room key is shared with: the room's joined and invited members.
    async fn room_recipients(&self, room: &OwnedRoomId) -> Result<Vec<OwnedUserId>, HsError> {
        let unavailable = |e: store::StoreError| HsError::Encryption { message: e.to_string(), transient: true };
        let mut conn = self.store.conn().await.map_err(unavailable)?;
        let members = conversations::present_members(&mut conn, room.as_str()).await.map_err(unavailable)?;
        Ok(members.into_iter().filter_map(|(member, _)| OwnedUserId::try_from(member).ok()).collect())
    }

    fn note_rate_limit(&self, retry_after: Option<Duration>) {
        let until = store::now_ms() + retry_after.unwrap_or(Duration::from_secs(1)).as_millis() as i64;
        self.rate_limited_until.store(until, Ordering::Relaxed);
    }
}

pub(super) fn send_error(error: HsError) -> ChannelSendError {
    if error.is_transient() {
        ChannelSendError::Transient { retry_after: error.retry_after(), message: error.to_string() }
    } else {
        ChannelSendError::Terminal(error.to_string())
    }
}

pub(super) fn transient(error: impl std::fmt::Display) -> ChannelSendError {
    ChannelSendError::Transient { message: error.to_string(), retry_after: None }
}

fn user_id(id: &str) -> OwnedUserId {
    OwnedUserId::try_from(id).unwrap_or_else(|_| panic!("{id} is built from a validated config"))
}

fn room(id: &str) -> Result<OwnedRoomId, EventError> {
    OwnedRoomId::try_from(id).map_err(|e| EventError::Permanent(format!("bad room id {id:?}: {e}")))
}

/// [`room`] for the outbound side: a chat id that is no room id fails the send for good.
pub(super) fn send_room(id: &str) -> Result<OwnedRoomId, ChannelSendError> {
    OwnedRoomId::try_from(id).map_err(|e| ChannelSendError::Terminal(format!("bad room id {id:?}: {e}")))
}

/// Whether a message may be a command (commands start with `!` on Matrix): the room's
/// power is read for those only.
fn looks_like_command(text: &str) -> bool {
    text.trim_start().starts_with('!')
}

/// The first string in `value` that carries a link token.
fn text_with_link_token(value: &Value) -> Option<&str> {
    match value {
        Value::String(text) => link_token::is_attempt(text).then_some(text.as_str()),
        Value::Array(items) => items.iter().find_map(text_with_link_token),
        Value::Object(fields) => fields.values().find_map(text_with_link_token),
        _ => None,
    }
}

/// Body, content type and attachments per the seed's Matrix table.
fn fill_from_content(msg: &mut ChannelMessage, content: &RoomMessageEventContent) {
    msg.content = content.body().to_string();
    msg.attachments.clear();
    msg.content_type = match &content.msgtype {
        MessageType::Text(text) if text.formatted.is_some() || format::looks_like_markdown(&text.body) => {
            ContentType::Markdown
        }
        MessageType::Image(image) => {
            msg.attachments.extend(attachment(
                &image.body,
                image.info.as_ref().and_then(|i| i.mimetype.clone()),
                &image.source,
                image.info.as_ref().and_then(|i| i.size),
            ));
            ContentType::Image
        }
        MessageType::File(file) => {
            msg.attachments.extend(attachment(
                &file.body,
                file.info.as_ref().and_then(|i| i.mimetype.clone()),
                &file.source,
                file.info.as_ref().and_then(|i| i.size),
            ));
            ContentType::File
        }
        _ => ContentType::Text,
    };
}

fn attachment(
    name: &str,
    mime_type: Option<String>,
    source: &ruma::events::room::MediaSource,
    size: Option<ruma::UInt>,
) -> Option<ChannelAttachment> {
    // A file sent into an encrypted room travels with its key, to be decrypted where it
    // is fetched.
    let (url, encrypted_file) = match source {
        ruma::events::room::MediaSource::Plain(uri) => (uri.to_string(), None),
        ruma::events::room::MediaSource::Encrypted(file) => (file.url.to_string(), serde_json::to_value(file).ok()),
    };
    Some(ChannelAttachment {
        name: name.to_string(),
        mime_type: mime_type.unwrap_or_else(|| "application/octet-stream".into()),
        url,
        size_bytes: size.map(u64::from),
        encrypted_file,
    })
}

#[async_trait]
impl ChannelAdapter for MatrixAdapter {
    fn name(&self) -> &'static str {
        CHANNEL
    }

    fn surface(&self) -> SurfaceInfo {
        SURFACE
    }

    /// Registers the bot and checks the `as_token` with `whoami`.
    async fn connect(&self) -> Result<(), ChannelConnectError> {
        let error = |message: String| ChannelConnectError { channel: CHANNEL.into(), message };
        let bot = self.bot();
        self.ensure_known_user(&bot).await.map_err(|e| error(e.to_string()))?;
        let me = self.client.call(whoami::v3::Request::new(), None).await.map_err(|e| error(e.to_string()))?;
        if me.user_id != bot {
            return Err(error(format!("the as_token belongs to {}, not to {bot}", me.user_id)));
        }
        Ok(())
    }

    async fn disconnect(&self) {
        // Sends are driven by the outbox worker, which finishes its current job on shutdown.
    }

    async fn health(&self) -> AdapterHealth {
        let call = self.client.call(whoami::v3::Request::new(), None);
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(_)) if self.rate_limited_until.load(Ordering::Relaxed) > store::now_ms() => AdapterHealth::Degraded,
            Ok(Ok(_)) => AdapterHealth::Connected,
            Ok(Err(HsError::RateLimited { .. })) => AdapterHealth::Degraded,
            _ => AdapterHealth::Disconnected,
        }
    }

    fn on_message(&self, handler: Arc<dyn InboundHandler>) {
        *self.handler.write().expect("handler lock") = Some(handler);
    }

    /// Sends as the agent ghost (agents) or the bot (system). The transaction id is the
    /// message's canonical id, fixed before the first try, so a retry the homeserver still
    /// remembers is dropped there; see [`MatrixAdapter::deliver`] for one it forgot.
    async fn send_message(&self, channel_id: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        let landed = self.deliver(channel_id, msg, false).await?;
        self.confirm_sent(landed).await
    }

    async fn resend_message(&self, channel_id: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        let landed = self.deliver(channel_id, msg, true).await?;
        self.confirm_sent(landed).await
    }

    async fn send_leaving_landing(
        &self,
        channel_id: &str,
        msg: &ChannelMessage,
        resend: bool,
    ) -> Result<Option<Landing>, ChannelSendError> {
        let landed = self.deliver(channel_id, msg, resend).await?;
        Ok(self.hand_over(landed))
    }

    fn typing_renewal(&self) -> Option<Duration> {
        Some(TYPING_RENEWAL)
    }

    /// The agent's ghost types, as people's clients do; clearing it takes the notice
    /// away at once instead of after its timeout.
    async fn set_typing(&self, channel_id: &str, agent_id: &str, active: bool) -> Result<(), ChannelSendError> {
        let room = send_room(channel_id)?;
        let ghost = self.agent_ghost(agent_id)?;
        let state = match active {
            true => Typing::Yes(TypingInfo::new(TYPING_TIMEOUT)),
            false => Typing::No,
        };
        let request = create_typing_event::v3::Request::new(ghost.clone(), room, state);
        self.client.call(request, Some(&ghost)).await.map_err(send_error)?;
        Ok(())
    }

    async fn set_person_typing(
        &self,
        channel_id: &str,
        by: &ChannelMessage,
        active: bool,
    ) -> Result<(), ChannelSendError> {
        self.show_person_typing(channel_id, by, active).await
    }

    /// A public `m.read` receipt from the agent's ghost: people see the agent has read up
    /// to their message.
    async fn mark_read(&self, channel_id: &str, native_id: &str, agent_id: &str) -> Result<(), ChannelSendError> {
        let room = send_room(channel_id)?;
        let event = OwnedEventId::try_from(native_id)
            .map_err(|e| ChannelSendError::Terminal(format!("bad event id {native_id:?}: {e}")))?;
        let ghost = self.agent_ghost(agent_id)?;
        let request = create_receipt::v3::Request::new(room, create_receipt::v3::ReceiptType::Read, event);
        self.client.call(request, Some(&ghost)).await.map_err(send_error)?;
        Ok(())
    }

    async fn map_identity(&self, channel_user_id: &str) -> Option<String> {
        let mut conn = self.store.conn().await.ok()?;
        accounts::account_for_identity(&mut conn, CHANNEL, channel_user_id).await.ok().flatten().map(|a| a.id)
    }

    /// An `m.reaction` annotation from the reactor's ghost (an agent's from its ghost), sent
    /// as messages are; taking it back redacts that event as the same ghost.
    async fn send_reaction(
        &self,
        channel_id: &str,
        reaction: &OutboundReaction,
        by: &ChannelMessage,
    ) -> Result<(), ChannelSendError> {
        let room_id = send_room(channel_id)?;
        let speaker = self.speaker(channel_id, by).await?;
        if reaction.removed {
            let Some(copy) = reaction.copy.as_deref().and_then(|id| OwnedEventId::try_from(id).ok()) else {
                return Ok(());
            };
            let txn_id: OwnedTransactionId = format!("mosaic-{}", by.id.simple()).into();
            let request = redact_event::v3::Request::new(room_id, copy, txn_id);
            self.client.call(request, Some(&speaker)).await.map_err(send_error)?;
            return Ok(());
        }
        let content = json!({
            "m.relates_to": {"rel_type": "m.annotation", "event_id": reaction.target, "key": reaction.key},
            MESSAGE_ID_KEY: by.id.to_string(),
        });
        let raw = serde_json::value::to_raw_value(&content).map_err(|e| ChannelSendError::Terminal(e.to_string()))?;
        let event_type = MessageLikeEventType::Reaction;
        let landed = self.send_event(&room_id, by, &speaker, event_type, Raw::from_json(raw), reaction.retry).await?;
        self.confirm_sent(landed).await
    }
}

/// Where `message_id` landed in a room: the event the homeserver gave it.
fn landing(room_id: &str, message_id: Uuid, event_id: &ruma::EventId) -> Landing {
    Landing { channel: CHANNEL.into(), chat_id: room_id.into(), native_id: event_id.to_string(), message_id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_as_whole_words() {
        assert!(crate::protocol::contains_word("hey echo, what's up", "echo"));
        assert!(crate::protocol::contains_word("echo", "echo"));
        assert!(!crate::protocol::contains_word("echoes everywhere", "echo"));
        assert!(!crate::protocol::contains_word("anecho", "echo"));
    }

    #[test]
    fn content_types_follow_the_seed_table() {
        let mut msg = ChannelMessage::new("!r", "@a:x", SenderType::User, "", ContentType::Text);
        let plain: RoomMessageEventContent =
            serde_json::from_value(json!({"msgtype": "m.text", "body": "hello"})).unwrap();
        fill_from_content(&mut msg, &plain);
        assert_eq!((msg.content.as_str(), msg.content_type), ("hello", ContentType::Text));
        let md: RoomMessageEventContent =
            serde_json::from_value(json!({"msgtype": "m.text", "body": "**hi**"})).unwrap();
        fill_from_content(&mut msg, &md);
        assert_eq!(msg.content_type, ContentType::Markdown);
        let image: RoomMessageEventContent = serde_json::from_value(json!({
            "msgtype": "m.image", "body": "cat.png", "url": "mxc://x/abc", "info": {"mimetype": "image/png", "size": 12}
        }))
        .unwrap();
        fill_from_content(&mut msg, &image);
        assert_eq!(msg.content_type, ContentType::Image);
        assert_eq!(msg.attachments[0].url, "mxc://x/abc");
        assert_eq!(msg.attachments[0].size_bytes, Some(12));
        let file: RoomMessageEventContent =
            serde_json::from_value(json!({"msgtype": "m.file", "body": "a.pdf", "url": "mxc://x/pdf"})).unwrap();
        fill_from_content(&mut msg, &file);
        assert_eq!(msg.content_type, ContentType::File);
        assert_eq!(msg.attachments[0].mime_type, "application/octet-stream");
    }
}
