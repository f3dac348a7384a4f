//! The conversation hub: every inbound message is persisted, then answered (commands)
//! or routed to agents, and replies are fanned out — all in one database transaction
//! per message, so a message is handled exactly once even when it is delivered twice.
//! A message carrying a link token is a link attempt first of all, whatever else it is.

pub mod agent_rooms;
pub mod bridging;
pub mod commands;
pub mod lifecycle;
pub mod power;
pub mod retention;
pub mod routing;
pub mod teams;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use crate::agents::TurnControl;
use crate::agents::control::Responder;
use crate::config::Config;
use crate::matrix::naming::Namespace;
use crate::protocol::link_token::{self, LinkToken};
use crate::protocol::{ChannelMessage, ContentType, HandlerError, InboundHandler, SenderType, metadata_keys};
use crate::queue::{self, Wakers};
use crate::secrets;
use crate::store::{self, Store, accounts, bridges, conversations, messages, settings};

/// Outbox job: deliver `message` to `channel_id` on the surface `channel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendJob {
    pub channel: String,
    pub channel_id: String,
    pub message: ChannelMessage,
}

pub const SEND_KIND: &str = "send";

/// Outbox job: one agent answers one message.
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

pub const TURN_KIND: &str = "agent.turn";

/// Id used as `senderId` of the service's own notices.
pub const SYSTEM_SENDER: &str = "mosaic";

pub struct Hub {
    config: Arc<Config>,
    store: Store,
    wakers: Arc<Wakers>,
    namespace: Namespace,
    control: Arc<TurnControl>,
}

impl Hub {
    pub fn new(config: Arc<Config>, store: Store, wakers: Arc<Wakers>, control: Arc<TurnControl>) -> Self {
        Self { namespace: Namespace::from_config(&config), config, store, wakers, control }
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
        let mut tx = self.store.begin_write().await?;
        let (conversation, chat) = resolve_conversation(&mut tx, channel, &msg).await?;
        match chat {
            Chat::Matrix => {}
            Chat::Bridged { .. } => {
                bridging::annotate_routing(&mut tx, &self.config, &self.namespace, &conversation.id, &mut msg).await?
            }
            Chat::Direct => {
                msg.metadata.insert(routing::COMMANDS.into(), true.into());
                let people = if bridging::is_private_chat(&msg) { 1 } else { 2 };
                msg.metadata.insert(routing::PARTICIPANTS.into(), people.into());
            }
        }
        if let Some(token) = link_token::find(&msg.content) {
            if self.link_attempt(&mut tx, channel, &conversation.id, &msg, &token).await? {
                tx.commit().await?;
                self.wakers.wake_all();
            } else {
                tx.rollback().await?;
            }
            return Ok(());
        }
        let command = if routing::commands_enabled(&msg) && !routing::is_edit(&msg) {
            commands::parse(commands::prefix_for(channel), &msg.content)
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
        if chat == Chat::Direct {
            self.answer_direct_chat(&mut tx, channel, &conversation.id, &msg, command).await?;
            tx.commit().await?;
            self.wakers.wake_all();
            return Ok(());
        }
        if let Chat::Bridged { mirror_deletions } = chat {
            bridging::adopt_thread_root(&mut tx, channel, &msg).await?;
            if is_deletion(&msg) {
                if mirror_deletions {
                    bridging::fan_out_except(&mut tx, &conversation.id, &msg, Some((channel, &msg.channel_id))).await?;
                }
                tx.commit().await?;
                self.wakers.wake_all();
                return Ok(());
            }
        }
        // What people write is shown on every other surface of the conversation; commands
        // and their answers stay where they were typed.
        if command.is_none() && !routing::is_reaction(&msg) {
            bridging::fan_out_except(&mut tx, &conversation.id, &msg, Some((channel, &msg.channel_id))).await?;
        }
        // An answer to an agent's permission question is not a prompt, and reactions are
        // only ever such answers. Only the person who started the turn, or an admin,
        // answers; anyone else's message is an ordinary one.
        let answered = self.control.has_question(&conversation.id) && {
            let account = accounts::account_for_identity(&mut tx, channel, &msg.sender_id).await?;
            let who = Responder {
                channel,
                sender_id: &msg.sender_id,
                account_id: account.as_ref().map(|a| a.id.as_str()),
                admin: self.is_admin(&mut tx, channel, &msg.sender_id).await?,
            };
            self.control.answer(&conversation.id, &msg.content, msg.reply_to_id, &who).is_some()
        };
        if answered || routing::is_reaction(&msg) {
            tx.commit().await?;
            self.wakers.wake_all();
            return Ok(());
        }
        let pair = match channel {
            crate::matrix::CHANNEL => store::agent_rooms::pair_of_room(&mut tx, &msg.channel_id).await?,
            _ => None,
        };
        match (command, pair) {
            (None, _) if routing::is_edit(&msg) => {}
            (None, Some(pair)) if agent_rooms::is_interrupt(&msg.content) => {
                self.interrupt(&mut tx, &conversation.id, &msg, pair).await?;
            }
            (None, Some(_)) => {
                let hint = "This room belongs to its agents: start them with `!ask <agent> <text>` or `!delegate <agent> <task>`, and begin a message with [HUMAN] to interrupt them.";
                self.reply(&mut tx, channel, &conversation.id, &msg, hint.to_string().into()).await?;
            }
            (Some(Ok(command)), _) if channel != crate::matrix::CHANNEL && !bridging::allowed_on_bridges(&command) => {
                let answer =
                    format!("That command works in the conversation's Matrix room. Here: {}", bridge_commands(channel));
                self.reply(&mut tx, channel, &conversation.id, &msg, answer.into()).await?;
            }
            (Some(Ok(command)), _) => {
                let answer = self.execute(&mut tx, channel, &conversation.id, &msg, command).await?;
                self.reply(&mut tx, channel, &conversation.id, &msg, answer).await?;
            }
            (Some(Err(commands::Usage(usage))), _) => {
                self.reply(&mut tx, channel, &conversation.id, &msg, usage.into()).await?;
            }
            // Archived conversations are read-only: agents do not answer there.
            (None, None) if conversation.archived_at.is_some() => {}
            (None, None) => self.route_to_agents(&mut tx, channel, &conversation.id, &msg).await?,
        }
        tx.commit().await?;
        self.wakers.wake_all();
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
        let linked = accounts::account_for_identity(conn, channel, &msg.sender_id).await?.is_some();
        let agents = routing::agents_to_answer(msg, &room, linked);
        if routing::agents_present(msg).is_empty() && routing::participants(msg) <= 1 && routing::commands_enabled(msg)
        {
            let p = commands::prefix_for(channel);
            let hint = format!(
                "I answer commands: send `{p}help` for the list, or `{p}new` to start a conversation with an agent."
            );
            return self.reply(conn, channel, conversation_id, msg, hint.into()).await;
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
            queue::enqueue(conn, &lane, &format!("turn:{agent}:{}", msg.id), TURN_KIND, &job).await?;
            tracing::debug!(agent, message_id = %msg.id, "agent turn queued");
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
            Some(Ok(_)) => format!("This chat is not bridged. Here: {}", bridge_commands(channel)).into(),
            Some(Err(commands::Usage(usage))) => usage.into(),
            None if bridging::is_private_chat(msg) => format!(
                "This chat is not bridged to a conversation, so no agent reads it. An admin bridges a chat with `!bridge {channel} <chat id>` in a Matrix room. Here: {}",
                bridge_commands(channel)
            )
            .into(),
            None => return Ok(()),
        };
        self.reply(conn, channel, conversation_id, msg, answer).await
    }

    /// Whether `sender` is an admin of the service: a Matrix user listed in
    /// `admin.matrix_users`, or, on another surface, someone whose linked account has such
    /// a Matrix identity.
    pub(crate) async fn is_admin(&self, conn: &mut AnyConnection, channel: &str, sender: &str) -> store::Result<bool> {
        let admins = &self.config.admin.matrix_users;
        if admins.is_empty() {
            return Ok(false);
        }
        if channel == crate::matrix::CHANNEL {
            return Ok(admins.iter().any(|admin| admin == sender));
        }
        let Some(account) = accounts::account_for_identity(conn, channel, sender).await? else {
            return Ok(false);
        };
        let identities = accounts::identities_of(conn, &account.id).await?;
        Ok(identities.iter().any(|i| i.channel_name == crate::matrix::CHANNEL && admins.contains(&i.channel_user_id)))
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
            if channel != crate::matrix::CHANNEL && !bridging::is_private_chat(to) {
                reply.metadata.insert(metadata_keys::PRIVATE_TO.into(), to.sender_id.clone().into());
            }
        }
        messages::append(conn, conversation_id, "hub", &reply).await?;
        enqueue_send(conn, channel, &to.channel_id, &reply).await
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

fn is_deletion(msg: &ChannelMessage) -> bool {
    msg.metadata.get(metadata_keys::IS_DELETION).and_then(|v| v.as_bool()).unwrap_or(false)
}

/// The commands that work on a surface other than Matrix.
fn bridge_commands(channel: &str) -> String {
    let p = commands::prefix_for(channel);
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
    queue::enqueue(conn, &queue::chat_queue(channel, channel_id), &key, SEND_KIND, &job).await?;
    Ok(())
}

/// The conversation a surface chat belongs to; a Matrix room gets one on first use, and
/// so does a chat of another surface that is not bridged (for its commands).
async fn resolve_conversation(
    conn: &mut AnyConnection,
    channel: &str,
    msg: &ChannelMessage,
) -> store::Result<(conversations::Conversation, Chat)> {
    let chat_id = msg.channel_id.as_str();
    if channel == crate::matrix::CHANNEL {
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
    let title = format!("{} chat {chat_id}", crate::matrix::adapter::surface_title(channel));
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
