//! Agents: one runtime trait, the built-in `echo` runtime, and the worker that runs
//! queued agent turns.

mod echo;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

pub use echo::EchoRuntime;

use crate::config::Config;
use crate::hub::{TurnJob, fan_out};
use crate::protocol::{ChannelMessage, ContentType, SenderType};
use crate::queue::{JobOutcome, Wakers};
use crate::store::{Store, messages, outbox};

/// Messages of context given to a runtime.
const HISTORY_LIMIT: i64 = 50;

/// One turn: the message to answer and the conversation so far (oldest first, ending
/// with the message itself).
pub struct Turn<'a> {
    pub agent_id: &'a str,
    pub message: &'a ChannelMessage,
    pub history: &'a [ChannelMessage],
}

/// An agent's answer.
pub struct Reply {
    pub content: String,
    pub content_type: ContentType,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The runtime is down or busy; the turn is kept and tried again.
    #[error("agent unavailable: {0}")]
    Unavailable(String),
    /// The turn cannot be answered.
    #[error("agent failed: {0}")]
    Failed(String),
}

#[async_trait]
pub trait AgentRuntime: Send + Sync {
    async fn respond(&self, turn: Turn<'_>) -> Result<Reply, AgentError>;
}

/// The runtime named in an agent's `runtime` setting.
pub fn runtime_for(name: &str) -> Option<Arc<dyn AgentRuntime>> {
    match name {
        "echo" => Some(Arc::new(EchoRuntime)),
        _ => None,
    }
}

/// Runtime names accepted in the config.
pub const RUNTIMES: &[&str] = &["echo"];

/// The configured agents and their runtimes.
pub struct Agents {
    runtimes: HashMap<String, Arc<dyn AgentRuntime>>,
    store: Store,
    wakers: Arc<Wakers>,
}

impl Agents {
    pub fn from_config(config: &Config, store: Store, wakers: Arc<Wakers>) -> Self {
        // Config validation admits only known runtimes, so none is skipped here.
        let runtimes =
            config.agents.iter().filter_map(|agent| Some((agent.id.clone(), runtime_for(&agent.runtime)?))).collect();
        Self { runtimes, store, wakers }
    }

    /// Runs one queued turn. The reply, its fan-out and the job's completion are written
    /// in one transaction: a crash before it reruns the turn, a crash after it finds the
    /// job done, so an answer is never lost nor sent twice.
    pub async fn run_turn(&self, job: &outbox::Job) -> JobOutcome {
        let turn: TurnJob = match serde_json::from_str(&job.payload) {
            Ok(turn) => turn,
            Err(error) => return JobOutcome::Failed(format!("bad turn payload: {error}")),
        };
        let Some(runtime) = self.runtimes.get(&turn.agent) else {
            return JobOutcome::Failed(format!("agent {:?} is not configured", turn.agent));
        };
        let (message, history) = match self.context(&turn).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                return JobOutcome::Failed(format!("message {} not found", turn.message_id));
            }
            Err(error) => return JobOutcome::Retry { error, after: None },
        };
        let reply = match runtime.respond(Turn { agent_id: &turn.agent, message: &message, history: &history }).await {
            Ok(reply) => reply,
            Err(AgentError::Unavailable(error)) => return JobOutcome::Retry { error, after: None },
            Err(AgentError::Failed(error)) => return JobOutcome::Failed(error),
        };
        match self.commit_reply(job, &turn, &message, reply).await {
            Ok(()) => {
                self.wakers.wake_all();
                JobOutcome::Done
            }
            Err(error) => JobOutcome::Retry { error: error.to_string(), after: None },
        }
    }

    async fn context(&self, turn: &TurnJob) -> Result<Option<(ChannelMessage, Vec<ChannelMessage>)>, String> {
        let mut conn = self.store.conn().await.map_err(|e| e.to_string())?;
        let Some(message) = messages::get(&mut conn, turn.message_id).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let history =
            messages::history(&mut conn, &turn.conversation_id, HISTORY_LIMIT).await.map_err(|e| e.to_string())?;
        Ok(Some((message, history)))
    }

    async fn commit_reply(
        &self,
        job: &outbox::Job,
        turn: &TurnJob,
        to: &ChannelMessage,
        reply: Reply,
    ) -> crate::store::Result<()> {
        let answer =
            ChannelMessage::new(&to.channel_id, &turn.agent, SenderType::Agent, reply.content, reply.content_type)
                .with_reply_to(to.id)
                .with_thread(to.thread_id.clone());
        let mut tx = self.store.begin_write().await?;
        messages::append(&mut tx, &turn.conversation_id, "agent", &answer).await?;
        fan_out(&mut tx, &turn.conversation_id, &answer).await?;
        outbox::mark_done(&mut tx, job.seq).await?;
        tx.commit().await?;
        tracing::info!(agent = turn.agent, conversation_id = turn.conversation_id, "agent answered");
        Ok(())
    }
}
