//! The conversation hub: every inbound message is persisted, then answered (commands)
//! or routed to agents, and replies are fanned out — all in one database transaction
//! per message, so a message is handled exactly once even when it is delivered twice.
//! A message carrying a link token is a link attempt first of all, whatever else it is.

pub mod agent_rooms;
pub mod bridging;
pub mod commands;
pub mod jobs;
pub mod lifecycle;
pub mod limits;
pub mod power;
pub mod reactions;
pub mod retention;
pub mod room_ops;
pub mod routing;
pub mod teams;
pub mod typing;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use crate::agents::TurnControl;
use crate::agents::control::Responder;
use crate::config::Config;
use crate::namespace::Namespace;
use crate::permissions::{Level, Permissions};
use crate::protocol::link_token::{self, LinkToken};
use crate::protocol::{
    self, BridgeRight, ChannelEvent, ChannelMessage, ChannelRegistry, ContentType, HandlerError, InboundHandler,
    SenderType, Surfaces, metadata_keys,
};
use crate::queue::{self, Wakers};
use crate::secrets;
use crate::store::{self, Store, accounts, bridges, conversations, messages, settings};

/// Outbox job ([`jobs::Job::Send`]): deliver `message` to `channel_id` on the surface `channel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendJob {
    pub channel: String,
    pub channel_id: String,
    pub message: ChannelMessage,
}

/// Outbox job ([`jobs::Job::Turn`]): one agent answers one message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TurnJob {
    pub agent: String,
    pub conversation_id: String,
    pub message_id: uuid::Uuid,
    /// What the agent is asked, when it is not the message's own text.
    #[serde(default)]
    pub prompt: Option<String>,
    /// In an agent room: what the answer is and what follows it.
    #[serde(default)]
    pub step: Option<agent_rooms::Step>,
}

/// Id used as `senderId` of the service's own notices.
pub const SYSTEM_SENDER: &str = "mosaic";

pub struct Hub {
    config: Arc<Config>,
    store: Store,
    wakers: Arc<Wakers>,
    namespace: Namespace,
    control: Arc<TurnControl>,
    permissions: Permissions,
    /// The surfaces, asked whether a chat may be bridged; without them nothing is.
    surfaces: Option<Arc<ChannelRegistry>>,
    /// Per-person brakes on costly commands.
    limiter: limits::CommandLimiter,
    /// People shown typing on the surfaces they are not typing on.
    typing: typing::PeopleTyping,
}

impl Hub {
    pub fn new(config: Arc<Config>, store: Store, wakers: Arc<Wakers>, control: Arc<TurnControl>) -> Self {
        Self {
            namespace: Namespace::from_config(&config),
            permissions: Permissions::from_config(&config),
            limiter: limits::CommandLimiter::new(&config.limits),
            config,
            store,
            wakers,
            control,
            surfaces: None,
            typing: typing::PeopleTyping::default(),
        }
    }

    /// The hub asks these surfaces whether the chats admins bridge may be bridged, and
    /// knows them besides those of this build (a surface registered only here, too).
    pub fn with_surfaces(mut self, surfaces: Arc<ChannelRegistry>) -> Self {
        self.surfaces = Some(surfaces);
        self
    }

    /// What chat commands start with on `channel`.
    fn prefix(&self, channel: &str) -> char {
        self.surfaces().command_prefix(channel)
    }

    /// Every surface the hub knows: those of this build, and those registered, as their
    /// adapters describe themselves.
    pub fn surfaces(&self) -> Surfaces {
        let mut all = crate::surfaces::built_in();
        for adapter in self.surfaces.iter().flat_map(|registry| registry.list()) {
            all.add(adapter.surface());
        }
        all
    }

    /// The inbound handler for one adapter.
    pub fn handler_for(self: &Arc<Self>, channel: &'static str) -> Arc<dyn InboundHandler> {
        Arc::new(HubInbound { hub: self.clone(), channel })
    }

    pub async fn handle_inbound(&self, channel: &str, mut msg: ChannelMessage) -> store::Result<()> {
        // Surfaces that keep nothing before the hub hand over tokens in clear; from here
        // on only their seals travel (the Matrix adapter seals before its inbox).
        msg.seal_link_tokens(&self.config.appservice.as_token);
        msg.strip_control_chars();
        msg.metadata.entry(metadata_keys::ORIGIN_CHANNEL).or_insert_with(|| channel.into());
        match msg.event {
            ChannelEvent::ReactionsCleared { .. } => return self.clear_reactions(channel, &msg).await,
            ChannelEvent::Typing { active, lasts_ms } => {
                return self.relay_typing(channel, msg, active, lasts_ms).await;
            }
            // Their words are here: they no longer show typing elsewhere.
            ChannelEvent::Message => self.typing.stop(&typing::Key::of(channel, &msg)),
            _ => {}
        }
        // Asking another surface takes a while: it happens before the write transaction.
        let bridge_right = self.bridge_right(channel, &msg).await?;
        let surfaces = self.surfaces();
        let syntax = commands::Syntax::on(&surfaces, channel);
        let mut tx = self.store.begin_write().await?;
        let level = self.level_of(&mut tx, channel, &msg.sender_id).await?;
        if level == Level::None && !may_link_anyway(syntax, channel, &msg) {
            tracing::debug!(channel, sender = msg.sender_id, "message from a sender without access ignored");
            tx.rollback().await?;
            return Ok(());
        }
        if is_chatter_in_unbridged_chat(&mut tx, syntax, channel, &msg).await? {
            tracing::debug!(channel, chat_id = msg.channel_id, "message in a chat that is not bridged ignored");
            tx.rollback().await?;
            return Ok(());
        }
        let (conversation, chat) = resolve_conversation(&mut tx, channel, &msg).await?;
        // A reaction is kept and passed on only where it changes what people see: in a
        // conversation with other surfaces, on a known message, and not twice.
        if is_reaction(&msg) && (chat == Chat::Direct || !reactions::settle(&mut tx, &mut msg).await?) {
            tracing::debug!(channel, chat_id = msg.channel_id, "reaction that changes nothing ignored");
            tx.rollback().await?;
            return Ok(());
        }
        match chat {
            Chat::Matrix => {}
            Chat::Bridged { .. } => {
                bridging::annotate_routing(&mut tx, &self.config, &self.namespace, &conversation.id, &mut msg).await?
            }
            Chat::Direct => {
                msg.metadata.insert(routing::COMMANDS.into(), true.into());
                let people = if msg.is_private_chat() { 1 } else { 2 };
                msg.metadata.insert(routing::PARTICIPANTS.into(), people.into());
            }
        }
        if let Some(token) = link_token::find(&msg.content) {
            if self.link_attempt(&mut tx, channel, &conversation.id, &msg, &token).await? {
                tx.commit().await?;
                self.wakers.wake();
            } else {
                tx.rollback().await?;
            }
            return Ok(());
        }
        let command = if routing::commands_enabled(&msg) && may_be_command(&msg) {
            commands::parse(syntax, &msg.content)
        } else {
            None
        };
        let mut logged = msg.clone();
        if let Some(Ok(command)) = &command
            && let Some(masked) = commands::loggable_content(command, &msg)
        {
            logged.content = masked;
        }
        if !messages::append(&mut tx, &conversation.id, channel, &logged).await? {
            tracing::info!(channel, message_id = ?msg.channel_message_id(), "message already handled");
            tx.rollback().await?;
            return Ok(());
        }
        if let Some(native) = msg.channel_message_id() {
            messages::add_ref(&mut tx, channel, &msg.channel_id, native, msg.id).await?;
        }
        let command = match command {
            Some(Ok(command)) if level < Level::User && !relay_may_run(&command) => {
                Some(Err(commands::Usage(relay_refusal(syntax.prefix))))
            }
            command => command.map(|c| c.map(|c| with_bridge_right(c, bridge_right))),
        };
        if chat == Chat::Direct {
            self.answer_direct_chat(&mut tx, channel, &conversation.id, &msg, command).await?;
            tx.commit().await?;
            self.wakers.wake();
            return Ok(());
        }
        if let Chat::Bridged { mirror_deletions } = chat {
            bridging::adopt_thread_root(&mut tx, channel, &msg).await?;
            if matches!(msg.event, ChannelEvent::Delete { .. }) {
                if mirror_deletions {
                    bridging::fan_out_except(&mut tx, &conversation.id, &msg, Some((channel, &msg.channel_id))).await?;
                }
                tx.commit().await?;
                self.wakers.wake();
                return Ok(());
            }
        }
        // What people write, and their reactions, are shown on every other surface of the
        // conversation; commands and their answers stay where they were typed.
        if command.is_none() {
            bridging::fan_out_except(&mut tx, &conversation.id, &msg, Some((channel, &msg.channel_id))).await?;
        }
        // An answer to an agent's permission question is not a prompt, and a reaction never
        // is one (an agent reads it with its context at its next turn). Only the person who
        // started the turn, or an admin, answers; anyone else's message is an ordinary one.
        let answered =
            level >= Level::User && !reactions::is_removal(&msg) && self.control.has_question(&conversation.id) && {
                let account = accounts::account_for_identity(&mut tx, channel, &msg.sender_id).await?;
                let who = Responder {
                    channel,
                    sender_id: &msg.sender_id,
                    account_id: account.as_ref().map(|a| a.id.as_str()),
                    admin: self.is_admin(&mut tx, channel, &msg.sender_id).await?,
                };
                let (text, about) = answer_of(&msg);
                self.control.answer(&conversation.id, text, about, &who).is_some()
            };
        if answered || is_reaction(&msg) {
            tx.commit().await?;
            self.wakers.wake();
            return Ok(());
        }
        let pair = match channel {
            protocol::MATRIX => store::agent_rooms::pair_of_room(&mut tx, &msg.channel_id).await?,
            _ => None,
        };
        match (command, pair) {
            (None, _) if is_edit(&msg) => {}
            (None, Some(pair)) if agent_rooms::is_interrupt(&msg.content) => {
                let agents = [pair.0.as_str(), pair.1.as_str()];
                match self.refusal_for_agents(&mut tx, channel, &msg.sender_id, &agents).await? {
                    Some(refusal) => self.reply(&mut tx, channel, &conversation.id, &msg, refusal.into()).await?,
                    None => self.interrupt(&mut tx, &conversation.id, &msg, pair).await?,
                }
            }
            (None, Some(_)) => {
                let hint = "This room belongs to its agents: start them with `!ask <agent> <text>` or `!delegate <agent> <task>`, and begin a message with [HUMAN] to interrupt them.";
                self.reply(&mut tx, channel, &conversation.id, &msg, hint.to_string().into()).await?;
            }
            (Some(Ok(command)), _) if channel != protocol::MATRIX && !bridging::allowed_on_bridges(&command) => {
                let answer = format!(
                    "That command works in the conversation's Matrix room. Here: {}",
                    bridge_commands(self.prefix(channel))
                );
                self.reply(&mut tx, channel, &conversation.id, &msg, answer.into()).await?;
            }
            (Some(Ok(command)), _) => {
                let answer = self.execute(&mut tx, channel, &conversation.id, &msg, command).await?;
                self.reply(&mut tx, channel, &conversation.id, &msg, answer).await?;
            }
            (Some(Err(commands::Usage(usage))), _) => {
                self.reply(&mut tx, channel, &conversation.id, &msg, usage.into()).await?;
            }
            // Archived conversations are read-only: agents do not answer there; nor do
            // they act on people who are only relayed.
            (None, None) if conversation.archived_at.is_some() || level < Level::User => {}
            (None, None) => self.route_to_agents(&mut tx, channel, &conversation.id, &msg).await?,
        }
        tx.commit().await?;
        self.wakers.wake();
        Ok(())
    }

    /// Reactions cleared on a message of a bridged chat are taken back elsewhere, each as
    /// its sender's own removal. Nobody in particular cleared them, so no sender's level
    /// is asked: each reaction cleared was let in when it was made.
    async fn clear_reactions(&self, channel: &str, msg: &ChannelMessage) -> store::Result<()> {
        let mut tx = self.store.begin_write().await?;
        let Some(bridge) = bridges::get(&mut tx, channel, &msg.channel_id).await?.filter(|b| b.is_bridged()) else {
            tx.rollback().await?;
            return Ok(());
        };
        for removal in reactions::cleared(&mut tx, msg).await? {
            if messages::append(&mut tx, &bridge.conversation_id, channel, &removal).await? {
                let origin = Some((channel, msg.channel_id.as_str()));
                bridging::fan_out_except(&mut tx, &bridge.conversation_id, &removal, origin).await?;
            }
        }
        tx.commit().await?;
        self.wakers.wake();
        Ok(())
    }

    /// Shows a person typing on the conversation's other surfaces, or stops it. Only the
    /// first start looks up where: repeated starts just keep the notices going. Nothing
    /// is written; people without access, chats that are not bridged and archived
    /// conversations show nothing.
    async fn relay_typing(
        &self,
        channel: &str,
        msg: ChannelMessage,
        active: bool,
        lasts_ms: Option<u64>,
    ) -> store::Result<()> {
        let key = typing::Key::of(channel, &msg);
        if !active {
            self.typing.stop(&key);
            return Ok(());
        }
        let lasts = lasts_ms.map_or(typing::LONGEST, std::time::Duration::from_millis).min(typing::LONGEST);
        if self.typing.renew(&key, lasts) {
            return Ok(());
        }
        let Some(surfaces) = &self.surfaces else { return Ok(()) };
        let mut conn = self.store.conn().await?;
        if self.level_of(&mut conn, channel, &msg.sender_id).await? == Level::None {
            return Ok(());
        }
        let conversation = match channel {
            protocol::MATRIX => conversations::conversation_for_room(&mut conn, &msg.channel_id).await?,
            _ => match bridges::get(&mut conn, channel, &msg.channel_id).await?.filter(|b| b.is_bridged()) {
                Some(bridge) => conversations::conversation(&mut conn, &bridge.conversation_id).await?,
                None => None,
            },
        };
        let Some(conversation) = conversation.filter(|c| c.archived_at.is_none()) else { return Ok(()) };
        let mut chats = Vec::new();
        for (surface, chat) in bridging::surfaces(&mut conn, &conversation.id).await? {
            if (surface.as_str(), chat.as_str()) == (channel, msg.channel_id.as_str()) {
                continue;
            }
            if let Some(adapter) = surfaces.get(&surface) {
                chats.push((adapter, chat));
            }
        }
        tracing::debug!(channel, chat_id = msg.channel_id, chats = chats.len(), "person typing shown elsewhere");
        self.typing.start(key, msg, chats, lasts);
        Ok(())
    }

    async fn route_to_agents(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        conversation_id: &str,
        msg: &ChannelMessage,
    ) -> store::Result<()> {
        let room = settings::get(conn, conversation_id).await?;
        // Whether the sender has an account matters only where the room refuses people
        // without one: elsewhere it is not asked.
        let linked =
            room.answer_unlinked || accounts::account_for_identity(conn, channel, &msg.sender_id).await?.is_some();
        let agents = routing::agents_to_answer(msg, &room, linked);
        if routing::agents_present(msg).is_empty() && routing::participants(msg) <= 1 && routing::commands_enabled(msg)
        {
            let p = self.prefix(channel);
            let hint = format!(
                "I answer commands: send `{p}help` for the list, or `{p}new` to start a conversation with an agent."
            );
            return self.reply(conn, channel, conversation_id, msg, hint.into()).await;
        }
        let (agents, refused) = self.split_allowed(conn, channel, &msg.sender_id, agents).await?;
        for agent in refused {
            self.tell_not_allowed(conn, channel, conversation_id, msg, &agent).await?;
        }
        for agent in agents {
            let job = TurnJob {
                agent: agent.clone(),
                conversation_id: conversation_id.to_string(),
                message_id: msg.id,
                prompt: None,
                step: None,
            };
            let lane = queue::agent_queue(&agent, conversation_id);
            queue::enqueue(conn, &lane, &format!("turn:{agent}:{}", msg.id), job).await?;
            tracing::debug!(agent, message_id = %msg.id, "agent turn queued");
        }
        Ok(())
    }

    /// Splits `agents` into those the sender may use and those whose `allowed` list does
    /// not name them (by their Matrix identity; people without one are never named).
    async fn split_allowed(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        sender: &str,
        agents: Vec<String>,
    ) -> store::Result<(Vec<String>, Vec<String>)> {
        if agents.iter().all(|agent| self.config.agent(agent).is_none_or(|a| a.allowed.is_none())) {
            return Ok((agents, Vec::new()));
        }
        let identities = self.matrix_identities(conn, channel, sender).await?.unwrap_or_default();
        Ok(agents.into_iter().partition(|agent| {
            let allowed = self.config.agent(agent).and_then(|a| a.allowed.as_deref());
            allowed.is_none_or(|list| identities.iter().any(|id| crate::permissions::listed(list, id)))
        }))
    }

    /// For commands that put agents to work (`!pair`, `!ask`, `!delegate`, `!broadcast`,
    /// `[HUMAN]`): a refusal naming the first agent whose `allowed` list leaves `sender`
    /// out, or `None` when every one of them may work for them.
    pub(crate) async fn refusal_for_agents(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        sender: &str,
        agents: &[&str],
    ) -> store::Result<Option<String>> {
        let agents = agents.iter().map(|agent| agent.to_string()).collect();
        let (_, refused) = self.split_allowed(conn, channel, sender, agents).await?;
        Ok(refused.first().map(|agent| {
            let name = self.config.agent(agent).map(|a| a.display_name()).unwrap_or_else(|| agent.clone());
            format!("{name} works only for the people the operator allowed (its `allowed` list); not for you.")
        }))
    }

    /// Tells someone, once per conversation and agent, that the agent does not answer
    /// them; afterwards their messages to it are ignored without a word.
    async fn tell_not_allowed(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        conversation_id: &str,
        to: &ChannelMessage,
        agent: &str,
    ) -> store::Result<()> {
        tracing::info!(channel, agent, sender = to.sender_id, "agent not allowed for this sender");
        let name = self.config.agent(agent).map(|a| a.display_name()).unwrap_or_else(|| agent.to_string());
        let text = format!("{name} answers only the people the operator allowed (its `allowed` list); not you.");
        let mut notice =
            ChannelMessage::new(&to.channel_id, SYSTEM_SENDER, SenderType::System, text, ContentType::Text)
                .with_reply_to(to.id)
                .in_thread_of(to);
        // The id is the same for every message of this sender to this agent here, so the
        // store keeps (and the room gets) the first notice only.
        let once = format!("not-allowed:{conversation_id}:{agent}:{channel}:{}", to.sender_id);
        notice.id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, once.as_bytes());
        if messages::append(conn, conversation_id, "hub", &notice).await? {
            enqueue_send(conn, channel, &to.channel_id, &notice).await?;
        }
        Ok(())
    }

    /// A message that carries a link token, wherever it was typed (a command, an edit, a
    /// sentence, any surface): the token is redeemed or burnt at once, and the message is
    /// logged with the token hidden and goes nowhere else — not to other surfaces, not to
    /// agents. False when the message was handled before.
    async fn link_attempt(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        conversation_id: &str,
        msg: &ChannelMessage,
        token: &LinkToken,
    ) -> store::Result<bool> {
        let mut logged = msg.clone();
        logged.mask_link_tokens();
        if !messages::append(conn, conversation_id, channel, &logged).await? {
            tracing::info!(channel, message_id = ?msg.channel_message_id(), "link attempt already handled");
            return Ok(false);
        }
        if let Some(native) = msg.channel_message_id() {
            messages::add_ref(conn, channel, &msg.channel_id, native, msg.id).await?;
        }
        let answer = self.link(conn, channel, &msg.sender_id, token).await?;
        self.reply(conn, channel, conversation_id, msg, answer.into()).await?;
        Ok(true)
    }

    /// A chat of another surface that is not bridged talks to the bot only: commands are
    /// answered, and a person writing to the bot directly learns what to do.
    async fn answer_direct_chat(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        conversation_id: &str,
        msg: &ChannelMessage,
        command: Option<Result<commands::Command, commands::Usage>>,
    ) -> store::Result<()> {
        let answer = match command {
            Some(Ok(command)) if bridging::allowed_on_bridges(&command) => {
                self.execute(conn, channel, conversation_id, msg, command).await?
            }
            Some(Ok(_)) => format!("This chat is not bridged. Here: {}", bridge_commands(self.prefix(channel))).into(),
            Some(Err(commands::Usage(usage))) => usage.into(),
            None if msg.is_private_chat() => format!(
                "This chat is not bridged to a conversation, so no agent reads it. An admin bridges a chat with `!bridge {channel} <chat id>` in a Matrix room. Here: {}",
                bridge_commands(self.prefix(channel))
            )
            .into(),
            None => return Ok(()),
        };
        self.reply(conn, channel, conversation_id, msg, answer).await
    }

    /// Whether `sender` is an admin of the service (see [`Hub::level_of`]).
    pub(crate) async fn is_admin(&self, conn: &mut AnyConnection, channel: &str, sender: &str) -> store::Result<bool> {
        Ok(self.level_of(conn, channel, sender).await? == Level::Admin)
    }

    /// What `sender` may do: a Matrix user's level comes from `[permissions]`; someone on
    /// another surface takes the highest level of their account's Matrix identities (an
    /// account with none, which only an operator or a linked person can have made, is
    /// `user`), or, not linked, the surface's `unlinked` level.
    pub(crate) async fn level_of(&self, conn: &mut AnyConnection, channel: &str, sender: &str) -> store::Result<Level> {
        if channel == protocol::MATRIX {
            return Ok(self.permissions.matrix_level(sender));
        }
        Ok(match self.matrix_identities(conn, channel, sender).await? {
            None => self.permissions.unlinked_level(channel),
            Some(ids) if ids.is_empty() => Level::User,
            Some(ids) => ids.iter().map(|id| self.permissions.matrix_level(id)).max().unwrap_or(Level::None),
        })
    }

    /// The Matrix identities of the account `sender` is linked to; `None` when not linked.
    async fn matrix_identities(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        sender: &str,
    ) -> store::Result<Option<Vec<String>>> {
        if channel == protocol::MATRIX {
            return Ok(Some(vec![sender.to_string()]));
        }
        let Some(account) = accounts::account_for_identity(conn, channel, sender).await? else {
            return Ok(None);
        };
        let identities = accounts::identities_of(conn, &account.id).await?;
        Ok(Some(
            identities.into_iter().filter(|i| i.channel_name == protocol::MATRIX).map(|i| i.channel_user_id).collect(),
        ))
    }

    /// For a `!bridge` from an admin: whether the surface lets them bridge that chat,
    /// asked with the requester's linked identities there. `None` for everything else.
    async fn bridge_right(&self, channel: &str, msg: &ChannelMessage) -> store::Result<Option<BridgeRight>> {
        if channel != protocol::MATRIX || is_edit(msg) || self.permissions.matrix_level(&msg.sender_id) != Level::Admin
        {
            return Ok(None);
        }
        let surfaces = self.surfaces();
        let Some(Ok(commands::Command::Bridge { surface, chat_id, .. })) =
            commands::parse(commands::Syntax::on(&surfaces, channel), &msg.content)
        else {
            return Ok(None);
        };
        let Some(adapter) = self.surfaces.as_ref().and_then(|s| s.get(&surface)) else {
            return Ok(None);
        };
        let requester = {
            let mut conn = self.store.conn().await?;
            match accounts::account_for_identity(&mut conn, channel, &msg.sender_id).await? {
                Some(account) => accounts::identities_of(&mut conn, &account.id)
                    .await?
                    .into_iter()
                    .filter(|i| i.channel_name == surface)
                    .map(|i| i.channel_user_id)
                    .collect(),
                None => Vec::new(),
            }
        };
        let right = adapter.may_bridge(&chat_id, &requester).await;
        tracing::info!(channel = surface, chat_id, by = msg.sender_id, ?right, "bridge right asked");
        Ok(Some(right))
    }

    /// Logs a notice answering `to` and sends it back where `to` came from only.
    async fn reply(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        conversation_id: &str,
        to: &ChannelMessage,
        answer: commands::Answer,
    ) -> store::Result<()> {
        if answer.text.is_empty() {
            return Ok(());
        }
        let mut reply =
            ChannelMessage::new(&to.channel_id, SYSTEM_SENDER, SenderType::System, answer.text, ContentType::Markdown)
                .with_reply_to(to.id)
                .in_thread_of(to);
        if let Some(account_id) = answer.link_token_for {
            let token = secrets::derived_token(&self.config.appservice.as_token, &reply.id.to_string());
            accounts::store_link_token(conn, &token, &account_id, self.config.linking.token_ttl_secs).await?;
            reply.metadata.insert(REVEAL_LINK_TOKEN.into(), serde_json::Value::Bool(true));
            // Elsewhere than Matrix a group reads along: the token goes to the person alone.
            if channel != protocol::MATRIX && !to.is_private_chat() {
                reply.metadata.insert(metadata_keys::PRIVATE_TO.into(), to.sender_id.clone().into());
            }
        }
        messages::append(conn, conversation_id, "hub", &reply).await?;
        enqueue_send(conn, channel, &to.channel_id, &reply).await
    }
}

/// Commands someone below `user` may run: getting access, and reading how.
fn relay_may_run(command: &commands::Command) -> bool {
    matches!(command, commands::Command::Help | commands::Command::Link(_))
}

fn relay_refusal(p: char) -> String {
    format!(
        "Only people with access to this service can use that command: link a Mosaic account with `{p}link <token>` (ask an admin for a token)."
    )
}

/// A `link <token>` from someone ignored on another surface is still read: linking is
/// how they get access, and the token an admin gave them is the proof.
fn may_link_anyway(syntax: commands::Syntax<'_>, channel: &str, msg: &ChannelMessage) -> bool {
    channel != protocol::MATRIX
        && matches!(commands::parse(syntax, &msg.content), Some(Ok(commands::Command::Link(Some(_)))))
}

/// Hands the surface's answer on to the `!bridge` command it was asked for.
fn with_bridge_right(command: commands::Command, right: Option<BridgeRight>) -> commands::Command {
    match command {
        commands::Command::Bridge { surface, chat_id, mirror_deletions, .. } => {
            commands::Command::Bridge { surface, chat_id, mirror_deletions, right }
        }
        other => other,
    }
}

/// Metadata flag of a message whose [`commands::LINK_TOKEN_PLACEHOLDER`] is replaced by
/// its link token just before sending.
const REVEAL_LINK_TOKEN: &str = "mosaic.revealLinkToken";

/// The message as it goes out: a handed-out link token is put in place of its
/// placeholder. `key` is the secret the token was derived with.
pub fn reveal_secrets(msg: &ChannelMessage, key: &str) -> ChannelMessage {
    let mut out = msg.clone();
    if out.metadata.remove(REVEAL_LINK_TOKEN).is_some() {
        let token = secrets::derived_token(key, &msg.id.to_string());
        out.content = out.content.replace(commands::LINK_TOKEN_PLACEHOLDER, &token);
    }
    out
}

/// Enqueues `msg` for every surface of the conversation.
pub async fn fan_out(conn: &mut AnyConnection, conversation_id: &str, msg: &ChannelMessage) -> store::Result<()> {
    bridging::fan_out_except(conn, conversation_id, msg, None).await
}

fn is_reaction(msg: &ChannelMessage) -> bool {
    matches!(msg.event, ChannelEvent::Reaction { .. })
}

fn is_edit(msg: &ChannelMessage) -> bool {
    matches!(msg.event, ChannelEvent::Edit { .. })
}

/// Only something written may be a command: an edit, a deletion or a reaction never
/// runs one (an edit of a command would run it twice).
fn may_be_command(msg: &ChannelMessage) -> bool {
    match msg.event {
        ChannelEvent::Message => true,
        ChannelEvent::Edit { .. }
        | ChannelEvent::Delete { .. }
        | ChannelEvent::Reaction { .. }
        | ChannelEvent::ReactionsCleared { .. }
        | ChannelEvent::Typing { .. } => false,
    }
}

/// What answers an agent's permission question, and which message it is about: a
/// reaction answers with its key on the question it reacts to.
fn answer_of(msg: &ChannelMessage) -> (&str, Option<uuid::Uuid>) {
    match &msg.event {
        ChannelEvent::Reaction { key, target, .. } => (key, Some(*target)),
        ChannelEvent::Message
        | ChannelEvent::Edit { .. }
        | ChannelEvent::Delete { .. }
        | ChannelEvent::ReactionsCleared { .. }
        | ChannelEvent::Typing { .. } => (&msg.content, msg.relates_to()),
    }
}

/// The commands that work on a surface other than Matrix.
fn bridge_commands(p: char) -> String {
    format!("`{p}link <token>`, `{p}link`, `{p}unlink`, `{p}whoami`, `{p}agents`, `{p}stop`, `{p}help`.")
}

/// What kind of chat a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chat {
    Matrix,
    Bridged {
        mirror_deletions: bool,
    },
    /// A chat of another surface that is not bridged: it talks to the bot only.
    Direct,
}

pub async fn enqueue_send(
    conn: &mut AnyConnection,
    channel: &str,
    channel_id: &str,
    msg: &ChannelMessage,
) -> store::Result<()> {
    let job = SendJob { channel: channel.to_string(), channel_id: channel_id.to_string(), message: msg.clone() };
    let key = format!("send:{channel}:{channel_id}:{}", msg.id);
    queue::enqueue(conn, &queue::chat_queue(channel, channel_id), &key, job).await?;
    Ok(())
}

/// A message in a group chat of another surface that is not bridged, and neither a
/// command nor a link attempt: nobody there talks to the service, so it is neither
/// stored nor answered.
async fn is_chatter_in_unbridged_chat(
    conn: &mut AnyConnection,
    syntax: commands::Syntax<'_>,
    channel: &str,
    msg: &ChannelMessage,
) -> store::Result<bool> {
    if channel == protocol::MATRIX || msg.is_private_chat() {
        return Ok(false);
    }
    let command = may_be_command(msg) && commands::parse(syntax, &msg.content).is_some();
    // A token typed anywhere is burnt, here too.
    if command || link_token::is_attempt(&msg.content) {
        return Ok(false);
    }
    Ok(!bridges::get(conn, channel, &msg.channel_id).await?.is_some_and(|b| b.is_bridged()))
}

/// The conversation a surface chat belongs to; a Matrix room gets one on first use, and
/// so does a chat of another surface that is not bridged (for its commands).
async fn resolve_conversation(
    conn: &mut AnyConnection,
    channel: &str,
    msg: &ChannelMessage,
) -> store::Result<(conversations::Conversation, Chat)> {
    let chat_id = msg.channel_id.as_str();
    if channel == protocol::MATRIX {
        let conversation = conversations::conversation_for_room_or_create(conn, chat_id, "Matrix room").await?;
        return Ok((conversation, Chat::Matrix));
    }
    if let Some(bridge) = bridges::get(conn, channel, chat_id).await?
        && let Some(conversation) = conversations::conversation(conn, &bridge.conversation_id).await?
    {
        let chat = match bridge.is_bridged() {
            true => Chat::Bridged { mirror_deletions: bridge.mirror_deletions != 0 },
            false => Chat::Direct,
        };
        return Ok((conversation, chat));
    }
    let title = format!("{} chat {chat_id}", protocol::surface_title(channel));
    let conversation = conversations::create_conversation(conn, &title, None).await?;
    bridges::record_direct(conn, channel, chat_id, &conversation.id).await?;
    Ok((conversation, Chat::Direct))
}

struct HubInbound {
    hub: Arc<Hub>,
    channel: &'static str,
}

#[async_trait]
impl InboundHandler for HubInbound {
    async fn handle(&self, msg: ChannelMessage) -> Result<(), HandlerError> {
        self.hub.handle_inbound(self.channel, msg).await.map_err(|e| match e.is_permanent() {
            true => HandlerError::permanent(e.to_string()),
            false => HandlerError::transient(e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    /// The hub speaks to every surface, Matrix included, through `protocol`: a surface
    /// can change (or another be added) without the hub following it.
    #[test]
    fn the_hub_does_not_import_the_matrix_surface() {
        let needle = ["crate", "::matrix"].concat();
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/hub");
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            let source = std::fs::read_to_string(&path).unwrap();
            assert!(!source.contains(&needle), "{} imports the Matrix surface", path.display());
        }
    }

    /// Adding a surface touches its folder and `src/surfaces.rs` only: outside its tests,
    /// the code that serves every surface names none of those that can be bridged.
    #[test]
    fn the_code_common_to_every_surface_names_none() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files: Vec<_> = std::fs::read_dir(root.join("hub")).unwrap().map(|e| e.unwrap().path()).collect();
        files.extend(
            ["namespace.rs", "permissions.rs", "protocol/adapter.rs", "protocol/surface.rs"].map(|f| root.join(f)),
        );
        for surface in crate::surfaces::built_in().bridgeable() {
            let needles = [format!("\"{}\"", surface.name), format!("crate::{}", surface.name)];
            for path in &files {
                let source = std::fs::read_to_string(path).unwrap();
                let code = source.split("#[cfg(test)]").next().unwrap();
                for needle in &needles {
                    assert!(!code.contains(needle.as_str()), "{} names {needle}", path.display());
                }
            }
        }
    }
}
