//! The runtime contract: what a runtime is given for a turn and what it streams back.

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

/// Who said a context message, from the answering agent's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One message of context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextMessage {
    pub role: Role,
    /// The speaker's display name or id, for user messages in rooms with several people.
    pub name: Option<String>,
    pub content: String,
}

/// Everything a runtime gets for one turn.
#[derive(Debug, Clone)]
pub struct TurnContext {
    pub agent_id: String,
    pub conversation_id: String,
    /// The thread the turn belongs to, when the room uses threads. Runtimes with sessions
    /// keep one per conversation and thread.
    pub thread_id: Option<String>,
    /// The agent's persona.
    pub system_prompt: Option<String>,
    /// The conversation so far, oldest first, ending with the message to answer.
    pub messages: Vec<ContextMessage>,
}

impl TurnContext {
    /// Key of the conversation (and thread) for runtimes that keep sessions.
    pub fn session_key(&self) -> String {
        match &self.thread_id {
            Some(thread) => format!("{}#{thread}", self.conversation_id),
            None => self.conversation_id.clone(),
        }
    }
}

/// Tokens a turn consumed, as the model endpoint reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// One choice offered with a permission question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionOption {
    pub id: String,
    pub name: String,
    /// `allow_once`, `allow_always`, `reject_once`, `reject_always` (ACP's kinds).
    pub kind: String,
}

/// A runtime asks a person before it acts (e.g. before a coding agent runs a tool).
#[derive(Debug)]
pub struct PermissionRequest {
    /// What the agent wants to do, for people.
    pub title: String,
    pub options: Vec<PermissionOption>,
    /// The chosen option id; `None` when nobody answered in time or the turn stopped,
    /// which counts as a refusal.
    pub answer: oneshot::Sender<Option<String>>,
}

/// What a runtime streams while it answers.
#[derive(Debug)]
pub enum AgentEvent {
    /// The next piece of the answer text.
    Text(String),
    /// A tool call started or changed state.
    ToolCall {
        title: String,
        status: String,
    },
    /// The agent's current plan, one entry per step.
    Plan(Vec<String>),
    Permission(PermissionRequest),
    Usage(TokenUsage),
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The runtime is down or busy; the turn is kept and tried again later.
    #[error("agent unavailable: {0}")]
    Unavailable(String),
    /// The turn cannot be answered.
    #[error("agent failed: {0}")]
    Failed(String),
}

/// An agent runtime. `respond` streams the answer through `events` and returns when it is
/// complete; dropping the future abandons the turn.
#[async_trait]
pub trait AgentRuntime: Send + Sync {
    async fn respond(&self, turn: &TurnContext, events: mpsc::Sender<AgentEvent>) -> Result<(), AgentError>;

    /// Whether the runtime reads the conversation before the message it answers. One
    /// that reads only the message spares each turn loading the conversation's history.
    fn reads_history(&self) -> bool {
        true
    }

    /// Stops the turn running for `session_key` (`!stop`). Runtimes that hold nothing
    /// beyond the `respond` future need not do anything: the future is dropped.
    async fn cancel(&self, _session_key: &str) {}
}
