//! Agents: one runtime trait, the runtimes, and the worker that runs queued agent turns.

pub mod acp;
pub mod anthropic;
pub mod command;
pub mod confine;
pub mod context;
pub mod control;
mod echo;
mod lanes;
mod lines;
pub mod openai;
pub mod runtime;
mod sse;
pub mod stream;
mod turn;
pub mod typing;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Semaphore;

pub use echo::EchoRuntime;
pub use runtime::{AgentError, AgentEvent, AgentRuntime, ContextMessage, Role, TokenUsage, TurnContext};

pub use control::TurnControl;

use crate::config::{AgentConfig, Config};
use crate::protocol::ChannelRegistry;
use crate::queue::Wakers;
use crate::store::Store;

/// Runtime names accepted in the config.
pub const RUNTIMES: &[&str] = &["echo", "openai", "anthropic", "command", "acp"];

/// Checks the settings an agent's runtime needs: the config key at fault and why.
pub fn check_config(agent: &AgentConfig) -> Result<(), (&'static str, String)> {
    match agent.runtime.as_str() {
        "echo" => Ok(()),
        "openai" => openai::check_config(agent),
        "anthropic" => anthropic::check_config(agent),
        "command" => command::check_config(agent).and_then(|()| confine::check_config(agent)),
        "acp" => acp::check_config(agent).and_then(|()| confine::check_config(agent)),
        other => Err(("agent.runtime", format!("unknown runtime {other:?}; expected one of: {}", RUNTIMES.join(", ")))),
    }
}

/// Builds the runtime of a (checked) agent.
pub fn build_runtime(agent: &AgentConfig) -> Result<Arc<dyn AgentRuntime>, String> {
    Ok(match agent.runtime.as_str() {
        "echo" => Arc::new(EchoRuntime),
        "openai" => Arc::new(openai::OpenAiRuntime::new(agent)?),
        "anthropic" => Arc::new(anthropic::AnthropicRuntime::new(agent)?),
        "command" => Arc::new(command::CommandRuntime::new(agent)?),
        "acp" => Arc::new(acp::AcpRuntime::new(agent)?),
        other => return Err(format!("unknown runtime {other:?}")),
    })
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
    /// Turns of this agent running at once, across conversations.
    slots: Arc<Semaphore>,
    rate: lanes::RateLimit,
}

/// The configured agents, their runtimes, and what the turn workers need.
pub struct Agents {
    agents: HashMap<String, Agent>,
    store: Store,
    wakers: Arc<Wakers>,
    registry: Arc<ChannelRegistry>,
    control: Arc<TurnControl>,
}

impl Agents {
    /// Builds every agent's runtime and reads its persona file.
    pub fn from_config(
        config: &Config,
        store: Store,
        wakers: Arc<Wakers>,
        registry: Arc<ChannelRegistry>,
        control: Arc<TurnControl>,
    ) -> Result<Self, AgentSetupError> {
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
            let slots = Arc::new(Semaphore::new(agent.concurrency.max(1)));
            let rate = lanes::RateLimit::new(agent.turns_per_minute);
            agents.insert(agent.id.clone(), Agent { config: agent.clone(), persona, runtime, slots, rate });
        }
        Ok(Self { agents, store, wakers, registry, control })
    }

    pub fn control(&self) -> &Arc<TurnControl> {
        &self.control
    }

    fn agent_of_queue(&self, queue: &str) -> Option<&Agent> {
        let (agent, _conversation) = crate::queue::parse_agent_queue(queue)?;
        self.agents.get(agent)
    }
}
