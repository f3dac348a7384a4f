//! One prompt turn: sends `session/prompt`, turns the agent's session updates into
//! `AgentEvent`s and relays its permission questions until the prompt's response.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::connection::{CallError, Connection, RouteError, ToTurn};
use super::wire::{
    self, ContentBlock, PermissionOption, PermissionParams, PromptResult, SessionUpdate, ToolCallFields,
};
use crate::agents::runtime::{self, AgentError, AgentEvent, PermissionRequest};

/// How long the turn may take and how long a person may take to answer a question.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub deadline: Instant,
    pub turn: Duration,
    pub permission: Duration,
    /// Time waiting for people may add to the turn, all questions together.
    pub permission_budget: Duration,
}

/// A question answered (or not): its request id and the chosen option.
type Answered = (String, Option<String>);

/// A running prompt. Dropping it before the agent answered cancels the prompt, so an
/// abandoned turn does not keep the agent busy.
pub struct Turn {
    conn: Arc<Connection>,
    session_id: String,
    agent: String,
    session_key: String,
    incoming: mpsc::UnboundedReceiver<ToTurn>,
    /// Questions the agent waits on: request id (as text) → the id and offered options.
    asked: HashMap<String, (Value, Vec<PermissionOption>)>,
    answering: FuturesUnordered<BoxFuture<'static, Answered>>,
    /// Tool calls seen so far: id → (title, status); updates only carry what changed.
    tools: HashMap<String, (String, String)>,
    finished: bool,
}

impl Turn {
    pub fn open(conn: Arc<Connection>, session_id: String, agent: &str, session_key: &str) -> Result<Self, AgentError> {
        let incoming = conn.open_route(&session_id).map_err(|error| match error {
            RouteError::Gone(why) => AgentError::Unavailable(why),
            RouteError::Busy => AgentError::Unavailable(error.to_string()),
        })?;
        Ok(Self {
            conn,
            session_id,
            agent: agent.to_string(),
            session_key: session_key.to_string(),
            incoming,
            asked: HashMap::new(),
            answering: FuturesUnordered::new(),
            tools: HashMap::new(),
            finished: false,
        })
    }

    /// Runs the prompt to its end, streaming into `events`.
    pub async fn run(
        mut self,
        texts: &[String],
        events: &mpsc::Sender<AgentEvent>,
        limits: Limits,
    ) -> Result<(), AgentError> {
        let conn = self.conn.clone();
        let response = conn.request("session/prompt", wire::prompt_params(&self.session_id, texts));
        tokio::pin!(response);
        let mut deadline = limits.deadline;
        // Time spent waiting for a person does not count against the agent, up to the
        // budget of the whole turn.
        let mut budget = limits.permission_budget;
        let mut paused_since: Option<Instant> = None;
        loop {
            let waiting_for_person = !self.answering.is_empty();
            match (waiting_for_person, paused_since) {
                (true, None) => paused_since = Some(Instant::now()),
                (false, Some(since)) => {
                    let paused = since.elapsed().min(budget);
                    deadline += paused;
                    budget -= paused;
                    paused_since = None;
                }
                _ => {}
            }
            let ends_at = if waiting_for_person { deadline + budget } else { deadline };
            tokio::select! {
                biased;
                Some(message) = self.incoming.recv() => self.on_message(message, events, limits.permission).await?,
                Some((key, answer)) = self.answering.next(), if waiting_for_person => self.answer(&key, answer),
                result = &mut response => {
                    self.finished = true;
                    self.drain(events).await?;
                    return self.finish(result);
                }
                () = tokio::time::sleep_until(ends_at) => {
                    tracing::warn!(agent = self.agent, session = self.session_key, waiting_for_person, "acp prompt timed out");
                    return Err(AgentError::Failed(format!("the agent took longer than {} s", limits.turn.as_secs())));
                }
            }
        }
    }

    async fn on_message(
        &mut self,
        message: ToTurn,
        events: &mpsc::Sender<AgentEvent>,
        permission_timeout: Duration,
    ) -> Result<(), AgentError> {
        match message {
            ToTurn::Update(update) => self.on_update(update, events).await,
            ToTurn::Permission { id, params } => self.ask(id, params, events, permission_timeout).await,
            ToTurn::Cancel => {
                self.cancel_questions();
                Ok(())
            }
        }
    }

    async fn on_update(&mut self, update: SessionUpdate, events: &mpsc::Sender<AgentEvent>) -> Result<(), AgentError> {
        let event = match update {
            SessionUpdate::AgentMessageChunk { content: ContentBlock::Text { text } } if !text.is_empty() => {
                AgentEvent::Text(text)
            }
            SessionUpdate::ToolCall(fields) | SessionUpdate::ToolCallUpdate(fields) => {
                let (title, status) = self.track_tool(&fields);
                AgentEvent::ToolCall { title, status }
            }
            SessionUpdate::Plan { entries } => AgentEvent::Plan(entries.into_iter().map(|e| e.content).collect()),
            _ => return Ok(()),
        };
        send(events, event).await
    }

    /// Merges a tool call report into what is known of it.
    fn track_tool(&mut self, fields: &ToolCallFields) -> (String, String) {
        let known =
            self.tools.entry(fields.tool_call_id.clone()).or_insert_with(|| ("tool call".into(), "pending".into()));
        if let Some(title) = &fields.title {
            known.0 = title.clone();
        }
        if let Some(status) = &fields.status {
            known.1 = status.clone();
        }
        known.clone()
    }

    /// Relays a permission question to people and waits (without blocking the turn) for
    /// their answer or the permission timeout.
    async fn ask(
        &mut self,
        id: Value,
        params: PermissionParams,
        events: &mpsc::Sender<AgentEvent>,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        let title = match &params.tool_call.title {
            Some(title) => title.clone(),
            None => {
                self.tools.get(&params.tool_call.tool_call_id).map_or_else(|| "a tool call".into(), |t| t.0.clone())
            }
        };
        let options = params
            .options
            .iter()
            .map(|o| runtime::PermissionOption { id: o.option_id.clone(), name: o.name.clone(), kind: o.kind.clone() })
            .collect();
        let (answer, answered) = oneshot::channel();
        let key = id.to_string();
        self.asked.insert(key.clone(), (id, params.options));
        tracing::info!(agent = self.agent, session = self.session_key, "acp agent asks for permission");
        send(events, AgentEvent::Permission(PermissionRequest { title, options, answer })).await?;
        self.answering.push(Box::pin(async move {
            let choice = tokio::time::timeout(timeout, answered).await.ok().and_then(Result::ok).flatten();
            (key, choice)
        }));
        Ok(())
    }

    /// Answers a question: the chosen option, or when nobody chose one, a refusal.
    fn answer(&mut self, key: &str, choice: Option<String>) {
        let Some((id, options)) = self.asked.remove(key) else { return };
        let chosen = choice.filter(|choice| options.iter().any(|o| &o.option_id == choice));
        let refusal = || options.iter().find(|o| o.kind == "reject_once").map(|o| o.option_id.clone());
        let option = chosen.or_else(refusal);
        tracing::info!(
            agent = self.agent,
            session = self.session_key,
            answered = option.is_some(),
            "acp permission answered"
        );
        self.conn.respond(&id, wire::permission_outcome(option.as_deref()));
    }

    /// The prompt is being cancelled: ACP wants every open question answered "cancelled".
    fn cancel_questions(&mut self) {
        self.answering = FuturesUnordered::new();
        for (id, _) in std::mem::take(&mut self.asked).into_values() {
            self.conn.respond(&id, wire::permission_outcome(None));
        }
    }

    /// Passes on the updates that arrived before the prompt's response.
    async fn drain(&mut self, events: &mpsc::Sender<AgentEvent>) -> Result<(), AgentError> {
        while let Ok(message) = self.incoming.try_recv() {
            match message {
                ToTurn::Update(update) => self.on_update(update, events).await?,
                ToTurn::Permission { id, .. } => self.conn.respond(&id, wire::permission_outcome(None)),
                ToTurn::Cancel => {}
            }
        }
        self.cancel_questions();
        Ok(())
    }

    fn finish(&self, result: Result<Value, CallError>) -> Result<(), AgentError> {
        let result = match result {
            Ok(result) => result,
            Err(CallError::Gone(why)) => return Err(AgentError::Unavailable(why)),
            Err(CallError::Broken(why)) => return Err(AgentError::Failed(why)),
            Err(CallError::Rpc(error)) => {
                return Err(AgentError::Failed(format!("the agent failed: {}", error.message)));
            }
        };
        let stop_reason = serde_json::from_value::<PromptResult>(result)
            .map_err(|error| AgentError::Failed(format!("the agent's session/prompt result is invalid: {error}")))?
            .stop_reason;
        tracing::debug!(agent = self.agent, session = self.session_key, stop_reason, "acp prompt ended");
        match stop_reason.as_str() {
            "refusal" => Err(AgentError::Failed("the agent refused to continue".into())),
            // `end_turn`, `cancelled` (after `!stop`, keep what was said), `max_tokens`…
            _ => Ok(()),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.finished {
            tracing::info!(agent = self.agent, session = self.session_key, "acp prompt abandoned; cancelling it");
            self.conn.notify("session/cancel", wire::cancel_params(&self.session_id));
            self.cancel_questions();
        }
        self.conn.close_route(&self.session_id);
    }
}

async fn send(events: &mpsc::Sender<AgentEvent>, event: AgentEvent) -> Result<(), AgentError> {
    events.send(event).await.map_err(|_| AgentError::Failed("turn abandoned".into()))
}
