//! Agents: one runtime trait, the runtimes, and the worker that runs queued agent turns.

pub mod context;
mod echo;
pub mod runtime;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

pub use echo::EchoRuntime;
pub use runtime::{AgentError, AgentEvent, AgentRuntime, ContextMessage, Role, TokenUsage, TurnContext};

use crate::config::{AgentConfig, Config};
use crate::hub::{TurnJob, fan_out};
use crate::protocol::{ChannelMessage, ContentType, SenderType};
use crate::queue::{JobOutcome, Wakers};
use crate::store::{self, Store, messages, outbox};

/// Runtime names accepted in the config.
pub const RUNTIMES: &[&str] = &["echo"];

/// Checks the settings an agent's runtime needs: the config key at fault and why.
pub fn check_config(agent: &AgentConfig) -> Result<(), (&'static str, String)> {
    if !RUNTIMES.contains(&agent.runtime.as_str()) {
        return Err((
            "agent.runtime",
            format!("unknown runtime {:?}; expected one of: {}", agent.runtime, RUNTIMES.join(", ")),
        ));
    }
    Ok(())
}

/// Builds the runtime of a (checked) agent.
pub fn build_runtime(agent: &AgentConfig) -> Result<Arc<dyn AgentRuntime>, String> {
    match agent.runtime.as_str() {
        "echo" => Ok(Arc::new(EchoRuntime)),
        other => Err(format!("unknown runtime {other:?}")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentSetupError {
    #[error("agent {agent:?}: persona file {path}: {source}")]
    Persona { agent: String, path: String, source: std::io::Error },
    #[error("agent {agent:?}: {message}")]
    Runtime { agent: String, message: String },
}

/// A configured agent, ready to run turns.
struct Agent {
    config: AgentConfig,
    persona: Option<String>,
    runtime: Arc<dyn AgentRuntime>,
}

/// The configured agents and their runtimes.
pub struct Agents {
    agents: HashMap<String, Agent>,
    store: Store,
    wakers: Arc<Wakers>,
}

impl Agents {
    /// Builds every agent's runtime and reads its persona file.
    pub fn from_config(config: &Config, store: Store, wakers: Arc<Wakers>) -> Result<Self, AgentSetupError> {
        let mut agents = HashMap::new();
        for agent in &config.agents {
            let persona = match &agent.persona {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|source| AgentSetupError::Persona {
                    agent: agent.id.clone(),
                    path: path.display().to_string(),
                    source,
                })?),
                None => None,
            };
            let runtime = build_runtime(agent)
                .map_err(|message| AgentSetupError::Runtime { agent: agent.id.clone(), message })?;
            agents.insert(agent.id.clone(), Agent { config: agent.clone(), persona, runtime });
        }
        Ok(Self { agents, store, wakers })
    }

    /// Runs one queued turn. The reply, its fan-out and the job's completion are written
    /// in one transaction: a crash before it reruns the turn, a crash after it finds the
    /// job done, so an answer is never lost nor sent twice.
    pub async fn run_turn(&self, job: &outbox::Job) -> JobOutcome {
        let turn: TurnJob = match serde_json::from_str(&job.payload) {
            Ok(turn) => turn,
            Err(error) => return JobOutcome::Failed(format!("bad turn payload: {error}")),
        };
        let Some(agent) = self.agents.get(&turn.agent) else {
            return JobOutcome::Failed(format!("agent {:?} is not configured", turn.agent));
        };
        let (message, context) = match self.context(agent, &turn).await {
            Ok(Some(found)) => found,
            Ok(None) => return JobOutcome::Failed(format!("message {} not found", turn.message_id)),
            Err(error) => return JobOutcome::Retry { error: error.to_string(), after: None },
        };
        let answer = match collect(agent, &context).await {
            Ok(answer) => answer,
            Err(AgentError::Unavailable(error)) => return JobOutcome::Retry { error, after: None },
            Err(AgentError::Failed(error)) => return JobOutcome::Failed(error),
        };
        match self.commit_reply(job, &turn, &message, answer).await {
            Ok(()) => {
                self.wakers.wake_all();
                JobOutcome::Done
            }
            Err(error) => JobOutcome::Retry { error: error.to_string(), after: None },
        }
    }

    async fn context(&self, agent: &Agent, turn: &TurnJob) -> store::Result<Option<(ChannelMessage, TurnContext)>> {
        let mut conn = self.store.conn().await?;
        let Some(message) = messages::get(&mut conn, turn.message_id).await? else {
            return Ok(None);
        };
        let history = messages::history(&mut conn, &turn.conversation_id, context::HISTORY_LIMIT).await?;
        let context = context::build(&agent.config, agent.persona.clone(), &turn.conversation_id, &message, &history);
        Ok(Some((message, context)))
    }

    async fn commit_reply(
        &self,
        job: &outbox::Job,
        turn: &TurnJob,
        to: &ChannelMessage,
        answer: String,
    ) -> store::Result<()> {
        let reply = ChannelMessage::new(&to.channel_id, &turn.agent, SenderType::Agent, answer, ContentType::Markdown)
            .with_reply_to(to.id)
            .with_thread(to.thread_id.clone());
        let mut tx = self.store.begin_write().await?;
        messages::append(&mut tx, &turn.conversation_id, "agent", &reply).await?;
        fan_out(&mut tx, &turn.conversation_id, &reply).await?;
        outbox::mark_done(&mut tx, job.seq).await?;
        tx.commit().await?;
        tracing::info!(agent = turn.agent, conversation_id = turn.conversation_id, "agent answered");
        Ok(())
    }
}

/// Runs the runtime and gathers its answer text.
async fn collect(agent: &Agent, context: &TurnContext) -> Result<String, AgentError> {
    let (events, mut received) = mpsc::channel(64);
    let runtime = agent.runtime.clone();
    let turn = context.clone();
    let running = tokio::spawn(async move { runtime.respond(&turn, events).await });
    let mut text = String::new();
    while let Some(event) = received.recv().await {
        match event {
            AgentEvent::Text(piece) => text.push_str(&piece),
            AgentEvent::Permission(request) => {
                let _ = request.answer.send(None);
            }
            AgentEvent::ToolCall { .. } | AgentEvent::Plan(_) | AgentEvent::Usage(_) => {}
        }
    }
    running.await.map_err(|e| AgentError::Failed(format!("runtime task failed: {e}")))??;
    Ok(text)
}
