//! Bridged chats: a conversation has one Matrix room plus any number of chats of the
//! surfaces that can be bridged (Discord channels, Telegram chats), and what is written
//! on one surface is posted to all the others.
//!
//! Inbound, a bridged message is routed to agents like a Matrix one (the hub works out
//! which agents are present and addressed from the conversation's room). Outbound, every
//! message is translated into the target surface's terms by [`SurfaceAdapter`] (threads,
//! edits, sender names) just before the target's adapter sends it.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::AnyConnection;

use super::commands::Answer;
use super::{Hub, enqueue_send, reactions, routing};
use crate::config::Config;
use crate::namespace::Namespace;
use crate::protocol::{
    self, AdapterHealth, BridgeError, BridgeRight, ChannelAdapter, ChannelConnectError, ChannelEvent, ChannelMessage,
    ChannelSendError, ContentType, InboundHandler, Landing, LandingRecord, OutboundReaction, SenderType, metadata_keys,
    send_recording,
};
use crate::queue::{self, DeadReason};
use crate::store::{self, Store, bridges, conversations, messages, settings};

/// Outbox job: prepare a newly bridged chat and tell the room how it went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenBridgeJob {
    pub channel: String,
    pub channel_id: String,
    pub conversation_id: String,
}

/// Outbox job: the adapter releases what it prepared for a chat no longer bridged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloseBridgeJob {
    pub channel: String,
    pub channel_id: String,
    pub conversation_id: String,
}

/// Every surface chat of a conversation: its Matrix room, then its bridged chats.
pub async fn surfaces(conn: &mut AnyConnection, conversation_id: &str) -> store::Result<Vec<(String, String)>> {
    bridges::chats_of_conversation(conn, conversation_id, protocol::MATRIX).await
}

/// Enqueues `msg` for every surface of the conversation except the chat it came from.
pub async fn fan_out_except(
    conn: &mut AnyConnection,
    conversation_id: &str,
    msg: &ChannelMessage,
    origin: Option<(&str, &str)>,
) -> store::Result<()> {
    for (channel, chat) in surfaces(conn, conversation_id).await? {
        if origin != Some((channel.as_str(), chat.as_str())) {
            enqueue_send(conn, &channel, &chat, msg).await?;
        }
    }
    Ok(())
}

/// Commands that work in a chat of another surface; the rest belong to the Matrix room.
pub fn allowed_on_bridges(command: &super::commands::Command) -> bool {
    use super::commands::Command::*;
    matches!(command, Help | Link(_) | Unlink | Whoami | Agents | Stop)
}

/// Fills the routing hints of a message from a bridged chat from the conversation's
/// room: the agents there, those the message names, and how many people take part.
pub async fn annotate_routing(
    conn: &mut AnyConnection,
    config: &Config,
    ns: &Namespace,
    conversation_id: &str,
    msg: &mut ChannelMessage,
) -> store::Result<()> {
    let mut agents = Vec::new();
    let mut people = 0u64;
    if let Some(room) = conversations::room_for_conversation(conn, conversation_id).await? {
        for (member, membership) in conversations::present_members(conn, &room).await? {
            match ns.agent_id_of(&member) {
                Some(agent) if membership == "join" && config.agent(&agent).is_some() => agents.push(agent),
                Some(_) => {}
                None if !ns.is_ours(&member) => people += 1,
                None => {}
            }
        }
    }
    // The sender is one more person unless they are in the room under a linked account.
    people += 1;
    let content = msg.content.to_lowercase();
    let mentioned: Vec<&String> = agents
        .iter()
        .filter(|agent| {
            let name = config.agent(agent).map(|a| a.display_name().to_lowercase()).unwrap_or_default();
            routing::contains_word(&content, &agent.to_lowercase())
                || (!name.is_empty() && routing::contains_word(&content, &name))
        })
        .collect();
    let metadata = &mut msg.metadata;
    metadata.insert(routing::AGENTS.into(), json!(agents));
    metadata.insert(routing::MENTIONS.into(), json!(mentioned));
    metadata.insert(routing::PARTICIPANTS.into(), json!(people));
    metadata.insert(routing::COMMANDS.into(), json!(true));
    metadata.insert(routing::BOT_PRESENT.into(), json!(true));
    Ok(())
}

/// A thread of another surface that no known message starts (a Telegram forum topic,
/// a Discord forum post) starts with its first bridged message, so that the other
/// surfaces can thread what follows under that message's copies.
pub async fn adopt_thread_root(conn: &mut AnyConnection, channel: &str, msg: &ChannelMessage) -> store::Result<()> {
    let Some(thread) = msg.thread_id.as_deref() else { return Ok(()) };
    if messages::message_for_native(conn, channel, &msg.channel_id, thread).await?.is_none() {
        messages::add_ref(conn, channel, &msg.channel_id, thread, msg.id).await?;
    }
    Ok(())
}

/// Tells the conversation's room how bridging a chat went; a chat that could not be
/// bridged leaves the conversation again.
pub async fn report_bridge(store: &Store, open: &OpenBridgeJob, text: &str, failed: bool) -> store::Result<()> {
    let mut tx = store.begin_write().await?;
    report_bridge_in(&mut tx, open, text, failed).await?;
    tx.commit().await?;
    Ok(())
}

/// [`report_bridge`] inside the caller's transaction.
async fn report_bridge_in(
    conn: &mut AnyConnection,
    open: &OpenBridgeJob,
    text: &str,
    failed: bool,
) -> store::Result<()> {
    if failed
        && let Some(bridge) = bridges::get(conn, &open.channel, &open.channel_id).await?
        && bridge.conversation_id == open.conversation_id
    {
        bridges::remove(conn, &open.channel, &open.channel_id).await?;
    }
    if let Some(room) = conversations::room_for_conversation(conn, &open.conversation_id).await? {
        let notice = ChannelMessage::new(&room, super::SYSTEM_SENDER, SenderType::System, text, ContentType::Markdown);
        messages::append(conn, &open.conversation_id, "hub", &notice).await?;
        enqueue_send(conn, protocol::MATRIX, &room, &notice).await?;
    }
    Ok(())
}

/// Bridging a chat was given up (its surface kept failing): the chat is unbridged again
/// and the room told, so that `!bridge` does not stay at "Bridging…".
pub async fn report_bridge_given_up(conn: &mut AnyConnection, open: &OpenBridgeJob) -> store::Result<()> {
    let surface = protocol::surface_title(&open.channel);
    let text = format!(
        "Could not bridge {} chat `{}`: {surface} kept failing. Try `!bridge` again later; an admin can see why with `mosaic-as jobs`.",
        open.channel, open.channel_id
    );
    report_bridge_in(conn, open, &text, true).await
}

/// A message could not be delivered to a bridged chat and was given up: the
/// conversation's Matrix room is told, once, in words for people (the error itself is
/// in the log and in `mosaic-as jobs`).
pub async fn report_undelivered(
    conn: &mut AnyConnection,
    send: &super::SendJob,
    seq: i64,
    reason: DeadReason,
) -> store::Result<()> {
    if send.channel == protocol::MATRIX {
        return Ok(());
    }
    let Some(bridge) = bridges::get(conn, &send.channel, &send.channel_id).await? else { return Ok(()) };
    let Some(room) = conversations::room_for_conversation(conn, &bridge.conversation_id).await? else {
        return Ok(());
    };
    let surface = protocol::surface_title(&send.channel);
    let what = match send.message.event {
        ChannelEvent::Reaction { .. } => "reaction",
        ChannelEvent::Message
        | ChannelEvent::Edit { .. }
        | ChannelEvent::Delete { .. }
        | ChannelEvent::ReactionsCleared { .. }
        | ChannelEvent::Typing { .. } => "message",
    };
    let whose = match send.message.meta_str(metadata_keys::SENDER_NAME) {
        Some(name) => format!("{name}'s {what}"),
        None => format!("a {what}"),
    };
    let why = match reason {
        DeadReason::Permanent => format!("{surface} refused it"),
        DeadReason::Attempts | DeadReason::Age => format!("{surface} could not be reached"),
        DeadReason::Unconfirmed => {
            format!("{surface} did not confirm it, so it is not sent again (it may be there already)")
        }
    };
    let text = format!("Could not deliver {whose} to {surface}: {why}. An admin can retry it with `mosaic-as jobs`.");
    let mut notice = ChannelMessage::new(&room, super::SYSTEM_SENDER, SenderType::System, text, ContentType::Text);
    notice.id = crate::agents::stream::derived_id(send.message.id, &format!("undelivered:{seq}"));
    if messages::append(conn, &bridge.conversation_id, "hub", &notice).await? {
        enqueue_send(conn, protocol::MATRIX, &room, &notice).await?;
    }
    Ok(())
}

/// A `!bridge` as the hub runs it.
pub(super) struct BridgeRequest<'a> {
    pub surface: &'a str,
    pub chat_id: &'a str,
    pub mirror_deletions: bool,
    /// The surface's answer to whether the sender may bridge the chat.
    pub right: Option<BridgeRight>,
}

impl Hub {
    /// `!bridge <surface> <chat id>`: the chat joins this conversation, when an admin
    /// asks and the surface agrees (the chat is allow-listed, or the admin administers it).
    pub(super) async fn bridge_chat(
        &self,
        conn: &mut AnyConnection,
        msg: &ChannelMessage,
        conversation_id: &str,
        request: BridgeRequest<'_>,
    ) -> store::Result<Answer> {
        let BridgeRequest { surface, chat_id, mirror_deletions, right } = request;
        if let Some(refusal) = self.refuse_unless_admin(conn, msg).await? {
            return Ok(refusal.into());
        }
        // A surface of this build is set up when its adapter was registered at start. A
        // hub given no surfaces at all cannot ask one, and says that instead (below).
        let configured = self.surfaces.as_ref().is_none_or(|registry| registry.get(surface).is_some());
        if !configured {
            let var = format!("MOSAIC_AS_{}_TOKEN", surface.to_uppercase());
            return Ok(format!(
                "The {surface} bridge is not set up: add a [{surface}] section with the bot token to the config (or set {var}) and restart mosaic-as."
            )
            .into());
        }
        match right {
            Some(BridgeRight::AllowListed | BridgeRight::Proven) => {}
            Some(BridgeRight::Refused(why)) => return Ok(why.into()),
            None => {
                return Ok(format!(
                    "I could not ask {} whether you may bridge that chat; try again later.",
                    protocol::surface_title(surface)
                )
                .into());
            }
        }
        if let Some(existing) = bridges::get(conn, surface, chat_id).await?.filter(|b| b.is_bridged())
            && existing.conversation_id != conversation_id
        {
            return Ok(format!(
                "That {surface} chat is bridged to another conversation. Send `!unbridge {surface}` in that room first."
            )
            .into());
        }
        bridges::bridge(conn, surface, chat_id, conversation_id, mirror_deletions, &msg.sender_id).await?;
        // People on the bridged side have no Mosaic account unless they link one.
        settings::default_unlinked_off(conn, conversation_id).await?;
        let job = OpenBridgeJob {
            channel: surface.to_string(),
            channel_id: chat_id.to_string(),
            conversation_id: conversation_id.to_string(),
        };
        let key = format!("bridge.open:{surface}:{chat_id}:{}", msg.id);
        queue::enqueue(conn, &queue::chat_queue(surface, chat_id), &key, job).await?;
        tracing::info!(channel = surface, chat_id, conversation_id, by = msg.sender_id, "chat bridged");
        Ok(format!("Bridging {surface} chat `{chat_id}` into this conversation…").into())
    }

    /// `!unbridge [surface]`: the conversation's chats on that surface (or all) leave it.
    pub(super) async fn unbridge_chats(
        &self,
        conn: &mut AnyConnection,
        msg: &ChannelMessage,
        conversation_id: &str,
        surface: Option<&str>,
    ) -> store::Result<Answer> {
        if let Some(refusal) = self.refuse_unless_admin(conn, msg).await? {
            return Ok(refusal.into());
        }
        let removed = bridges::unbridge(conn, conversation_id, surface).await?;
        if removed.is_empty() {
            return Ok("This conversation has no bridged chats.".to_string().into());
        }
        for bridge in &removed {
            let job = CloseBridgeJob {
                channel: bridge.channel.clone(),
                channel_id: bridge.channel_id.clone(),
                conversation_id: conversation_id.to_string(),
            };
            let key = format!("bridge.close:{}:{}:{}", bridge.channel, bridge.channel_id, msg.id);
            queue::enqueue(conn, &queue::chat_queue(&bridge.channel, &bridge.channel_id), &key, job).await?;
        }
        let list: Vec<String> = removed.iter().map(|b| format!("{} `{}`", b.channel, b.channel_id)).collect();
        tracing::info!(conversation_id, removed = removed.len(), by = msg.sender_id, "chats unbridged");
        Ok(format!("Unbridged {}. Messages no longer flow between them and this room.", list.join(", ")).into())
    }

    /// Bridging is for admins (`"admin"` in `[permissions]`).
    async fn refuse_unless_admin(
        &self,
        conn: &mut AnyConnection,
        msg: &ChannelMessage,
    ) -> store::Result<Option<String>> {
        let allowed = self.is_admin(conn, protocol::MATRIX, &msg.sender_id).await?;
        Ok((!allowed).then(|| {
            format!(
                "Only admins can bridge chats: the operator makes you one with `\"{}\" = \"admin\"` under [permissions] in the config.",
                msg.sender_id
            )
        }))
    }
}

pub use crate::protocol::person_name;

/// Wraps a surface's adapter so that every message it sends is first put into that
/// surface's terms: the sender's name and avatar, edits bridged from elsewhere, and
/// thread ids of another surface turned into this one's.
pub struct SurfaceAdapter {
    inner: Arc<dyn ChannelAdapter>,
    store: Store,
    config: Arc<Config>,
}

impl SurfaceAdapter {
    pub fn wrap(inner: Arc<dyn ChannelAdapter>, store: Store, config: Arc<Config>) -> Arc<dyn ChannelAdapter> {
        Arc::new(Self { inner, store, config })
    }

    async fn translate(&self, chat: &str, msg: &ChannelMessage) -> store::Result<ChannelMessage> {
        let target = self.inner.name();
        let mut out = msg.clone();
        self.stamp_sender(&mut out, target);
        // Outbound, an edit names the message it replaces by its canonical id, as the
        // previews of a streamed answer do.
        if let ChannelEvent::Edit { target: Some(original) } = msg.event
            && !msg.metadata.contains_key(metadata_keys::REPLACES)
        {
            out.metadata.insert(metadata_keys::REPLACES.into(), json!(original.to_string()));
        }
        let origin = msg.origin_channel();
        if let Some(thread) = msg.thread_id.as_deref()
            && (origin != target || msg.channel_id != chat)
        {
            out.thread_id = None;
            let mut conn = self.store.conn().await?;
            if let Some(root) = messages::message_for_native(&mut conn, origin, &msg.channel_id, thread).await? {
                if target == protocol::MATRIX {
                    out.thread_id = messages::native_for_message(&mut conn, target, chat, root).await?;
                } else {
                    out.metadata.insert(metadata_keys::THREAD_ROOT_ID.into(), json!(root.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// A reaction in this surface's terms: the native id here of the message reacted to,
    /// the copy a removal takes back, and what people elsewhere still show. `None` when
    /// there is nothing to show: the surface cannot show reactions, or the message
    /// reacted to has no copy in this chat.
    async fn reaction_for(
        &self,
        chat: &str,
        msg: &ChannelMessage,
        retry: bool,
    ) -> store::Result<Option<OutboundReaction>> {
        let surface = self.inner.name();
        let ChannelEvent::Reaction { target, key, removed, .. } = &msg.event else { return Ok(None) };
        if !self.inner.supports_reactions() {
            return Ok(None);
        }
        let (target, removed) = (*target, *removed);
        let mut conn = self.store.conn().await?;
        let Some(native) = messages::native_for_message(&mut conn, surface, chat, target).await? else {
            tracing::debug!(channel = surface, chat, reaction = %msg.id, "the message reacted to has no copy here");
            return Ok(None);
        };
        let copy = match reactions::removed_reaction(msg) {
            Some(added) => messages::native_for_message(&mut conn, surface, chat, added).await?,
            None => None,
        };
        let shown = reactions::shown_outside(&mut conn, target, surface, chat).await?;
        Ok(Some(OutboundReaction { target: native, key: key.clone(), removed, copy, shown, retry }))
    }

    /// Returns where the message landed when `record` leaves that to the caller.
    async fn send(
        &self,
        channel_id: &str,
        msg: &ChannelMessage,
        resend: bool,
        record: LandingRecord,
    ) -> Result<Option<Landing>, ChannelSendError> {
        let prepare_failed = |e: store::StoreError| ChannelSendError::Transient {
            message: format!("cannot prepare the message: {e}"),
            retry_after: None,
        };
        let result = match msg.event {
            // The hub turns a clearing into removals before anything is queued, and shows
            // typing without the outbox.
            ChannelEvent::ReactionsCleared { .. } | ChannelEvent::Typing { .. } => return Ok(None),
            ChannelEvent::Reaction { .. } => {
                match self.reaction_for(channel_id, msg, resend).await.map_err(prepare_failed)? {
                    Some(reaction) => self.inner.send_reaction(channel_id, &reaction, msg).await.map(|()| None),
                    None => return Ok(None),
                }
            }
            // A surface that cannot take back what it showed is not asked to.
            ChannelEvent::Delete { .. } if !self.inner.surface().deletions => return Ok(None),
            ChannelEvent::Message | ChannelEvent::Edit { .. } | ChannelEvent::Delete { .. } => {
                let out = self.translate(channel_id, msg).await.map_err(prepare_failed)?;
                send_recording(self.inner.as_ref(), channel_id, &out, resend, record).await
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ChannelSendError::Terminal(_)) => "terminal",
            Err(ChannelSendError::Transient { .. }) => "transient",
            Err(ChannelSendError::Unconfirmed(_)) => "unconfirmed",
        };
        crate::metrics::send_finished(self.inner.name(), outcome);
        result
    }

    /// Names the sender for surfaces that show names next to the text. People's names
    /// carry their surface, so that nobody appears under an agent's or the bot's name
    /// (the Matrix adapter names its ghosts the same way).
    fn stamp_sender(&self, msg: &mut ChannelMessage, target: &str) {
        if msg.sender_type == SenderType::User {
            if target != protocol::MATRIX {
                let name = person_name(msg);
                msg.metadata.insert(metadata_keys::SENDER_NAME.into(), json!(name));
            }
            return;
        }
        if msg.metadata.contains_key(metadata_keys::SENDER_NAME) {
            return;
        }
        let (name, avatar) = match msg.sender_type {
            SenderType::Agent => match self.config.agent(&msg.sender_id) {
                Some(agent) => (agent.display_name(), agent.avatar_url.clone()),
                None => (msg.sender_id.clone(), None),
            },
            SenderType::System | SenderType::User => (self.config.bot.display_name.clone(), None),
        };
        msg.metadata.insert(metadata_keys::SENDER_NAME.into(), json!(name));
        if let Some(avatar) = avatar {
            msg.metadata.insert(metadata_keys::SENDER_AVATAR_URL.into(), json!(avatar));
        }
    }
}

#[async_trait]
impl ChannelAdapter for SurfaceAdapter {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn connect(&self) -> Result<(), ChannelConnectError> {
        self.inner.connect().await
    }

    async fn disconnect(&self) {
        self.inner.disconnect().await
    }

    async fn health(&self) -> AdapterHealth {
        self.inner.health().await
    }

    fn on_message(&self, handler: Arc<dyn InboundHandler>) {
        self.inner.on_message(handler)
    }

    async fn send_message(&self, channel_id: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        self.send(channel_id, msg, false, LandingRecord::ByAdapter).await.map(drop)
    }

    async fn resend_message(&self, channel_id: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        self.send(channel_id, msg, true, LandingRecord::ByAdapter).await.map(drop)
    }

    async fn send_leaving_landing(
        &self,
        channel_id: &str,
        msg: &ChannelMessage,
        resend: bool,
    ) -> Result<Option<Landing>, ChannelSendError> {
        self.send(channel_id, msg, resend, LandingRecord::ByCaller).await
    }

    async fn map_identity(&self, channel_user_id: &str) -> Option<String> {
        self.inner.map_identity(channel_user_id).await
    }

    async fn open_bridge(&self, channel_id: &str) -> Result<String, BridgeError> {
        self.inner.open_bridge(channel_id).await
    }

    async fn close_bridge(&self, channel_id: &str) {
        self.inner.close_bridge(channel_id).await
    }

    async fn may_bridge(&self, channel_id: &str, requester: &[String]) -> BridgeRight {
        self.inner.may_bridge(channel_id, requester).await
    }

    fn typing_renewal(&self) -> Option<std::time::Duration> {
        self.inner.typing_renewal()
    }

    async fn set_typing(&self, channel_id: &str, agent_id: &str, active: bool) -> Result<(), ChannelSendError> {
        self.inner.set_typing(channel_id, agent_id, active).await
    }

    async fn set_person_typing(
        &self,
        channel_id: &str,
        by: &ChannelMessage,
        active: bool,
    ) -> Result<(), ChannelSendError> {
        self.inner.set_person_typing(channel_id, by, active).await
    }

    async fn mark_read(&self, channel_id: &str, native_id: &str, agent_id: &str) -> Result<(), ChannelSendError> {
        self.inner.mark_read(channel_id, native_id, agent_id).await
    }

    fn surface(&self) -> protocol::SurfaceInfo {
        self.inner.surface()
    }

    fn supports_reactions(&self) -> bool {
        self.inner.supports_reactions()
    }

    /// Reactions from the outbox come through [`ChannelAdapter::send_message`], which
    /// puts them into this surface's terms first; this passes one on as it is.
    async fn send_reaction(
        &self,
        channel_id: &str,
        reaction: &OutboundReaction,
        by: &ChannelMessage,
    ) -> Result<(), ChannelSendError> {
        self.inner.send_reaction(channel_id, reaction, by).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// A surface that records every trait method called on it.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<&'static str>>,
    }

    impl Recorder {
        fn note(&self, method: &'static str) {
            self.calls.lock().unwrap().push(method);
        }
    }

    struct Quiet;

    #[async_trait]
    impl InboundHandler for Quiet {
        async fn handle(&self, _msg: ChannelMessage) -> Result<(), crate::protocol::HandlerError> {
            Ok(())
        }
    }

    #[async_trait]
    impl ChannelAdapter for Recorder {
        fn name(&self) -> &'static str {
            self.note("name");
            "discord"
        }
        async fn connect(&self) -> Result<(), ChannelConnectError> {
            self.note("connect");
            Ok(())
        }
        async fn disconnect(&self) {
            self.note("disconnect");
        }
        async fn health(&self) -> AdapterHealth {
            self.note("health");
            AdapterHealth::Connected
        }
        fn on_message(&self, _handler: Arc<dyn InboundHandler>) {
            self.note("on_message");
        }
        async fn send_message(&self, _channel_id: &str, _msg: &ChannelMessage) -> Result<(), ChannelSendError> {
            self.note("send_message");
            Ok(())
        }
        async fn resend_message(&self, _channel_id: &str, _msg: &ChannelMessage) -> Result<(), ChannelSendError> {
            self.note("resend_message");
            Ok(())
        }
        async fn send_leaving_landing(
            &self,
            channel_id: &str,
            msg: &ChannelMessage,
            _resend: bool,
        ) -> Result<Option<Landing>, ChannelSendError> {
            self.note("send_leaving_landing");
            let native_id = format!("landed-{}", msg.id);
            Ok(Some(Landing { channel: "discord".into(), chat_id: channel_id.into(), native_id, message_id: msg.id }))
        }
        async fn map_identity(&self, _channel_user_id: &str) -> Option<String> {
            self.note("map_identity");
            None
        }
        async fn open_bridge(&self, _channel_id: &str) -> Result<String, BridgeError> {
            self.note("open_bridge");
            Ok(String::new())
        }
        async fn may_bridge(&self, _channel_id: &str, _requester: &[String]) -> BridgeRight {
            self.note("may_bridge");
            BridgeRight::AllowListed
        }
        async fn close_bridge(&self, _channel_id: &str) {
            self.note("close_bridge");
        }
        fn typing_renewal(&self) -> Option<Duration> {
            self.note("typing_renewal");
            Some(Duration::from_secs(1))
        }
        async fn set_typing(&self, _channel_id: &str, _agent_id: &str, _active: bool) -> Result<(), ChannelSendError> {
            self.note("set_typing");
            Ok(())
        }
        async fn set_person_typing(&self, _: &str, _: &ChannelMessage, _: bool) -> Result<(), ChannelSendError> {
            self.note("set_person_typing");
            Ok(())
        }
        async fn mark_read(
            &self,
            _channel_id: &str,
            _native_id: &str,
            _agent_id: &str,
        ) -> Result<(), ChannelSendError> {
            self.note("mark_read");
            Ok(())
        }
        fn surface(&self) -> protocol::SurfaceInfo {
            self.note("surface");
            protocol::SurfaceInfo::new("discord").with_reactions().with_deletions()
        }
        fn supports_reactions(&self) -> bool {
            self.note("supports_reactions");
            true
        }
        async fn send_reaction(
            &self,
            _channel_id: &str,
            _reaction: &OutboundReaction,
            _by: &ChannelMessage,
        ) -> Result<(), ChannelSendError> {
            self.note("send_reaction");
            Ok(())
        }
    }

    /// The methods of the `ChannelAdapter` trait, read from its source: a method added
    /// there is missing from what the recorder saw until the wrapper forwards it.
    fn trait_methods() -> Vec<String> {
        let source = include_str!("../protocol/adapter.rs");
        let start = source.find("pub trait ChannelAdapter").expect("the trait");
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").expect("the trait's end")];
        body.split("fn ").skip(1).filter_map(|rest| rest.split(['(', '<']).next()).map(str::to_string).collect()
    }

    #[tokio::test]
    async fn the_surface_wrapper_forwards_every_adapter_method() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = Store::open(&url).await.unwrap();
        let config = Config::parse(&format!(
            "[homeserver]\nurl = \"http://127.0.0.1:8008\"\nserver_name = \"example.org\"\n\
             [appservice]\nurl = \"http://127.0.0.1:29330\"\nas_token = \"{}\"\nhs_token = \"{}\"\n",
            "a".repeat(20),
            "b".repeat(20)
        ))
        .unwrap();
        let recorder = Arc::new(Recorder::default());
        let wrapped = SurfaceAdapter::wrap(recorder.clone(), store.clone(), Arc::new(config));

        // A message of this chat, and a reaction to it from elsewhere.
        let original = ChannelMessage::new("42", "7", SenderType::User, "hi", ContentType::Text);
        let reaction = ChannelMessage::reaction("!room:example.org", "@a:example.org", "👍", original.id, false);
        store.write(async |conn| messages::add_ref(conn, "discord", "42", "1001", original.id).await).await.unwrap();
        let outbound = OutboundReaction {
            target: "1001".into(),
            key: "👍".into(),
            removed: false,
            copy: None,
            shown: Vec::new(),
            retry: false,
        };

        assert_eq!(wrapped.name(), "discord");
        wrapped.connect().await.unwrap();
        wrapped.disconnect().await;
        wrapped.health().await;
        wrapped.on_message(Arc::new(Quiet));
        wrapped.send_message("42", &original).await.unwrap();
        wrapped.resend_message("42", &original).await.unwrap();
        let landed = wrapped.send_leaving_landing("42", &original, false).await.unwrap();
        assert_eq!(landed.map(|l| l.native_id), Some(format!("landed-{}", original.id)), "the landing comes back");
        wrapped.map_identity("7").await;
        wrapped.open_bridge("42").await.unwrap();
        wrapped.may_bridge("42", &[]).await;
        wrapped.close_bridge("42").await;
        assert!(wrapped.typing_renewal().is_some());
        wrapped.set_typing("42", "echo", true).await.unwrap();
        wrapped.set_person_typing("42", &original, true).await.unwrap();
        wrapped.mark_read("42", "1001", "echo").await.unwrap();
        assert!(wrapped.supports_reactions());
        assert_eq!(wrapped.surface().name, "discord");
        wrapped.send_reaction("42", &outbound, &reaction).await.unwrap();

        let calls = recorder.calls.lock().unwrap().clone();
        for method in trait_methods() {
            assert!(calls.contains(&method.as_str()), "SurfaceAdapter does not forward `{method}`: {calls:?}");
        }
        // A reaction from the outbox reaches the surface as one, on this chat's copy.
        recorder.calls.lock().unwrap().clear();
        wrapped.send_message("42", &reaction).await.unwrap();
        assert!(recorder.calls.lock().unwrap().contains(&"send_reaction"), "a queued reaction is sent as one");
    }
}
