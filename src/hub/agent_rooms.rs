//! Agent-to-agent rooms: two agents talk in a room of their own that people watch.
//! Every message passes through the hub, which logs it and carries the structured
//! `mosaic.agent_message` payload (schema 1.0): requests and responses, broadcasts,
//! delegations, and `[HUMAN]` interrupts from the people watching.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::AnyConnection;
use uuid::Uuid;

use super::room_ops::{AgentRoomJob, agent_room_alias_localpart};
use super::{Hub, TurnJob, commands::Answer, enqueue_send};
use crate::protocol::{self, ChannelMessage, ContentType, SenderType};
use crate::queue;
use crate::store::{self, accounts, agent_rooms, messages};

pub use crate::protocol::metadata_keys::AGENT_MESSAGE;
pub const SCHEMA_VERSION: &str = "1.0";
/// People's messages that start with this interrupt the agents.
pub const HUMAN_PREFIX: &str = "[HUMAN]";

/// What an agent's answer is in an agent room, and what follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// The answer is a request to agent `to`, who then answers it with a response.
    Request { to: String },
    /// The answer responds to the request message `request`.
    Response { request: Uuid },
    /// The answer completes the task delegated in message `delegation`.
    Complete { delegation: Uuid },
}

impl Step {
    pub fn message_type(&self) -> &'static str {
        match self {
            Self::Request { .. } => "request",
            Self::Response { .. } => "response",
            Self::Complete { .. } => "delegate_complete",
        }
    }
}

/// The `mosaic.agent_message` payload of a message from `agent`.
pub fn agent_message(agent: &str, conversation_id: &str, message_type: &str, payload: Value) -> Value {
    json!({
        "schema_version": SCHEMA_VERSION,
        "sender_agent_id": agent,
        "conversation_id": conversation_id,
        "message_type": message_type,
        "payload": payload,
        "timestamp_ms": store::now_ms(),
    })
}

/// The payload of an agent's answer given as `step`.
pub fn answer_payload(step: &Step, text: &str) -> Value {
    match step {
        Step::Request { to } => json!({"action": "ask", "to": to, "parameters": {"text": text}}),
        Step::Response { request } => json!({"text": text, "reply_to": request.to_string()}),
        Step::Complete { delegation } => json!({"result": text, "reply_to": delegation.to_string()}),
    }
}

/// A readable body for people watching, in place of the structured payload.
pub fn readable(agent_name: &str, message_type: &str, text: &str) -> String {
    format!("**{agent_name}** ({message_type}): {text}")
}

pub fn is_interrupt(text: &str) -> bool {
    text.trim_start().starts_with(HUMAN_PREFIX)
}

impl Hub {
    /// `!pair <a> <b>`: the sender's account's room of the two agents, created once per
    /// account and pair; the sender is invited (again) to watch. Others come in only when
    /// the owner invites them.
    pub(super) async fn pair(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        sender: &str,
        a: &str,
        b: &str,
    ) -> store::Result<Answer> {
        for agent in [a, b] {
            if self.config.agent(agent).is_none() {
                return Ok(format!("There is no agent `{agent}`. Send `!agents` for the list.").into());
            }
        }
        if a == b {
            return Ok("An agent room needs two different agents.".to_string().into());
        }
        if channel != protocol::MATRIX {
            return Ok("Agent rooms are opened from Matrix.".to_string().into());
        }
        if let Some(refusal) = self.refusal_for_agents(conn, channel, sender, &[a, b]).await? {
            return Ok(refusal.into());
        }
        let Some(owner) = accounts::account_for_identity(conn, channel, sender).await? else {
            return Ok("Agent rooms belong to a Mosaic account: link yours first with `!link <token>`."
                .to_string()
                .into());
        };
        let (first, second) = agent_rooms::sorted(a, b);
        let job = AgentRoomJob {
            owner_account_id: owner.id.clone(),
            agents: (first.to_string(), second.to_string()),
            observers: vec![sender.to_string()],
        };
        let key = format!("agent_room:{}:{first}:{second}:{sender}:{}", owner.id, Uuid::new_v4());
        queue::enqueue(conn, queue::ROOMS_QUEUE, &key, job).await?;
        let localpart = agent_room_alias_localpart(&self.config.bot.alias_prefix, &owner.id, first, second);
        let alias = format!("#{localpart}:{}", self.config.homeserver.server_name);
        Ok(format!("Opening your room {alias} where `{first}` and `{second}` work together; you are invited to watch, and others join when you invite them. Start them with `!ask <agent> <text>` or `!delegate <agent> <task>` there.").into())
    }

    /// `!ask <agent> <text>`: the agent turns the text into a request to the other agent,
    /// who responds.
    pub(super) async fn ask(
        &self,
        conn: &mut AnyConnection,
        conversation_id: &str,
        msg: &ChannelMessage,
        agent: &str,
        text: &str,
    ) -> store::Result<Answer> {
        let other = match self.working_partner(conn, msg, agent).await? {
            Ok(other) => other,
            Err(refusal) => return Ok(refusal),
        };
        let step = Step::Request { to: other };
        self.queue_turn(conn, conversation_id, agent, msg.id, Some(text.to_string()), Some(step)).await?;
        Ok(Answer::silent())
    }

    /// `!delegate <agent> <task>`: the agent hands the task to the other agent, who
    /// acknowledges it, works on it, and reports completion.
    pub(super) async fn delegate(
        &self,
        conn: &mut AnyConnection,
        conversation_id: &str,
        msg: &ChannelMessage,
        agent: &str,
        task: &str,
    ) -> store::Result<Answer> {
        let other = match self.working_partner(conn, msg, agent).await? {
            Ok(other) => other,
            Err(refusal) => return Ok(refusal),
        };
        let delegation = json!({"task": {"description": task}, "to": other});
        let delegate =
            self.post_agent_message(conn, conversation_id, msg, agent, "delegate", task, delegation, None).await?;
        let ack = json!({"reply_to": delegate.to_string()});
        self.post_agent_message(
            conn,
            conversation_id,
            msg,
            &other,
            "delegate_ack",
            &format!("Accepted: {task}"),
            ack,
            Some(delegate),
        )
        .await?;
        let step = Step::Complete { delegation: delegate };
        self.queue_turn(conn, conversation_id, &other, delegate, Some(task.to_string()), Some(step)).await?;
        Ok(Answer::silent())
    }

    /// `!broadcast <agent> <text>`: a message to every agent in the room, expecting no answer.
    pub(super) async fn broadcast(
        &self,
        conn: &mut AnyConnection,
        conversation_id: &str,
        msg: &ChannelMessage,
        agent: &str,
        text: &str,
    ) -> store::Result<Answer> {
        if let Err(refusal) = self.working_partner(conn, msg, agent).await? {
            return Ok(refusal);
        }
        self.post_agent_message(conn, conversation_id, msg, agent, "broadcast", text, json!({"text": text}), None)
            .await?;
        Ok(Answer::silent())
    }

    /// A `[HUMAN]` message: what the agents are writing stops, and both answer it first.
    pub(super) async fn interrupt(
        &self,
        conn: &mut AnyConnection,
        conversation_id: &str,
        msg: &ChannelMessage,
        pair: (String, String),
    ) -> store::Result<()> {
        self.control.stop(conversation_id);
        let text = msg.content.trim_start().trim_start_matches(HUMAN_PREFIX).trim();
        let prompt = format!(
            "{HUMAN_PREFIX} {} interrupts: {text}\nPause, acknowledge this message, and answer it before you go on.",
            msg.sender_id
        );
        for agent in [pair.0, pair.1] {
            self.queue_turn(conn, conversation_id, &agent, msg.id, Some(prompt.clone()), None).await?;
        }
        Ok(())
    }

    /// The other agent of the room's pair, when `agent` is one of them.
    async fn partner(&self, conn: &mut AnyConnection, room_id: &str, agent: &str) -> store::Result<Option<String>> {
        Ok(agent_rooms::pair_of_room(conn, room_id).await?.and_then(|(a, b)| {
            if a == agent {
                Some(b)
            } else if b == agent {
                Some(a)
            } else {
                None
            }
        }))
    }

    /// The other agent of the room when `agent` is one of its pair and the sender may put
    /// both to work; else what to tell the sender.
    async fn working_partner(
        &self,
        conn: &mut AnyConnection,
        msg: &ChannelMessage,
        agent: &str,
    ) -> store::Result<Result<String, Answer>> {
        let Some(other) = self.partner(conn, &msg.channel_id, agent).await? else {
            return Ok(Err(self.not_in_pair(agent)));
        };
        let channel = msg.origin_channel();
        Ok(match self.refusal_for_agents(conn, channel, &msg.sender_id, &[agent, &other]).await? {
            Some(refusal) => Err(refusal.into()),
            None => Ok(other),
        })
    }

    fn not_in_pair(&self, agent: &str) -> Answer {
        format!("`{agent}` is not one of this room's agents (this works in a room opened with `!pair`).").into()
    }

    async fn queue_turn(
        &self,
        conn: &mut AnyConnection,
        conversation_id: &str,
        agent: &str,
        message_id: Uuid,
        prompt: Option<String>,
        step: Option<Step>,
    ) -> store::Result<()> {
        let key = format!("turn:{agent}:{message_id}");
        let job = TurnJob {
            agent: agent.to_string(),
            conversation_id: conversation_id.to_string(),
            message_id,
            prompt,
            step,
        };
        queue::enqueue(conn, &queue::agent_queue(agent, conversation_id), &key, job).await?;
        Ok(())
    }

    /// Logs and sends a structured message from `agent`; returns its id.
    #[allow(clippy::too_many_arguments)]
    async fn post_agent_message(
        &self,
        conn: &mut AnyConnection,
        conversation_id: &str,
        context: &ChannelMessage,
        agent: &str,
        message_type: &str,
        text: &str,
        payload: Value,
        reply_to: Option<Uuid>,
    ) -> store::Result<Uuid> {
        let name = self.config.agent(agent).map(|a| a.display_name()).unwrap_or_else(|| agent.to_string());
        let mut message = ChannelMessage::new(
            &context.channel_id,
            agent,
            SenderType::Agent,
            readable(&name, message_type, text),
            ContentType::Markdown,
        )
        .with_reply_to(reply_to.unwrap_or(context.id));
        message.metadata.insert(AGENT_MESSAGE.into(), agent_message(agent, conversation_id, message_type, payload));
        messages::append(conn, conversation_id, "agent", &message).await?;
        enqueue_send(conn, protocol::MATRIX, &context.channel_id, &message).await?;
        Ok(message.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_follows_the_seed_schema() {
        let message = agent_message("agent_abc", "conv_xyz", "request", json!({"action": "summarize"}));
        for key in ["schema_version", "sender_agent_id", "conversation_id", "message_type", "payload", "timestamp_ms"] {
            assert!(message.get(key).is_some(), "{key}");
        }
        assert_eq!(message["schema_version"], "1.0");
        let request = Uuid::new_v4();
        let response = answer_payload(&Step::Response { request }, "done");
        assert_eq!(response["reply_to"], request.to_string());
        assert_eq!(Step::Complete { delegation: request }.message_type(), "delegate_complete");
    }

    #[test]
    fn interrupts_are_marked_human() {
        assert!(is_interrupt("[HUMAN] stop that"));
        assert!(is_interrupt("  [HUMAN]wait"));
        assert!(!is_interrupt("human here"));
    }
}
