//! The `acp` runtime: talks to a coding agent (Claude Code, Gemini CLI, Codex… through
//! their ACP adapters) with the Agent Client Protocol — JSON-RPC 2.0 as newline-delimited
//! JSON over the agent process's standard input and output. We are the client.
//!
//! The process is started on the first turn and kept for the next ones (restarted if it
//! died). Each conversation thread (`TurnContext::session_key`) gets its own ACP session,
//! created with `session/new` and reused, so the agent keeps its own memory of the
//! thread; the first prompt of a session also carries the persona and the earlier
//! messages. The agent's text, tool calls and plans are streamed; its permission
//! questions are put to people, and refused when nobody answers in time. We offer the
//! agent no file system and no terminal: it works in its own environment.
//!
//! The process is confined (see `confine`): it runs in the agent's folder, which is its
//! `HOME`, with only the allowed environment; each session's `cwd` is its conversation's
//! own folder inside it.

mod connection;
mod turn;
mod wire;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::connection::{CallError, Connection, lock};
use self::turn::{Limits, Turn};
use super::confine::Confinement;
use super::runtime::{AgentError, AgentEvent, AgentRuntime, ContextMessage, Role, TurnContext};
use crate::config::AgentConfig;

/// Checks the settings this runtime needs: the config key at fault and why.
pub fn check_config(agent: &AgentConfig) -> Result<(), (&'static str, String)> {
    if agent.command.first().is_none_or(|program| program.trim().is_empty()) {
        return Err((
            "agent.command",
            "the acp runtime needs the agent program and its arguments, e.g. command = [\"my-agent\", \"--acp\"]"
                .into(),
        ));
    }
    Ok(())
}

pub struct AcpRuntime {
    agent: String,
    program: String,
    args: Vec<String>,
    turn_timeout: Duration,
    permission_timeout: Duration,
    permission_budget: Duration,
    confinement: Confinement,
    /// The running process, if started; replaced when it died.
    current: Mutex<Option<Arc<Connection>>>,
    /// Held while a process starts, so that concurrent turns start only one.
    starting: tokio::sync::Mutex<()>,
}

impl AcpRuntime {
    pub fn new(agent: &AgentConfig) -> Result<Self, String> {
        check_config(agent).map_err(|(key, message)| format!("{key}: {message}"))?;
        Ok(Self {
            agent: agent.id.clone(),
            program: agent.command[0].clone(),
            args: agent.command[1..].to_vec(),
            turn_timeout: Duration::from_secs(agent.timeout_secs),
            permission_timeout: Duration::from_secs(agent.permission_timeout_secs),
            permission_budget: Duration::from_secs(agent.max_permission_wait_secs),
            confinement: Confinement::new(agent)?,
            current: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
        })
    }

    /// The running process, started (and initialized) if there is none or it died.
    async fn connection(&self) -> Result<Arc<Connection>, AgentError> {
        let _starting = self.starting.lock().await;
        if let Some(conn) = self.running() {
            return Ok(conn);
        }
        let home = self.confinement.agent_folder().map_err(|error| {
            tracing::error!(agent = self.agent, %error, "cannot prepare the agent's folder");
            AgentError::Failed(format!("cannot prepare the agent's folder: {error}"))
        })?;
        let command = self.confinement.command(&self.program, &self.args, &home);
        let conn = Connection::spawn(&self.agent, &self.program, command)
            .map_err(|error| AgentError::Unavailable(format!("cannot start {:?}: {error}", self.program)))?;
        let result =
            conn.request("initialize", wire::initialize_params()).await.map_err(|e| setup_error("initialize", e))?;
        let version = parse::<wire::InitializeResult>("initialize", result)?.protocol_version;
        if version != wire::PROTOCOL_VERSION {
            return Err(AgentError::Failed(format!(
                "the agent speaks ACP version {version}; mosaic-as speaks version {}",
                wire::PROTOCOL_VERSION
            )));
        }
        let conn = Arc::new(conn);
        *lock(&self.current) = Some(conn.clone());
        Ok(conn)
    }

    fn running(&self) -> Option<Arc<Connection>> {
        lock(&self.current).as_ref().filter(|conn| conn.is_alive()).cloned()
    }

    /// The session of the turn's thread, working in `cwd`; `true` when it was just created.
    async fn session(&self, conn: &Connection, key: &str, cwd: &Path) -> Result<(String, bool), AgentError> {
        let _creating = conn.creating_sessions().await;
        if let Some(session_id) = conn.session(key) {
            return Ok((session_id, false));
        }
        let params = wire::new_session_params(&cwd.display().to_string());
        let result = conn.request("session/new", params).await.map_err(|e| setup_error("session/new", e))?;
        let session_id = parse::<wire::NewSessionResult>("session/new", result)?.session_id;
        conn.remember_session(key, &session_id);
        tracing::info!(agent = self.agent, session = key, "acp session created");
        Ok((session_id, true))
    }

    async fn prepare(&self, turn: &TurnContext) -> Result<(Arc<Connection>, String, bool), AgentError> {
        let workspace = self.confinement.workspace(&turn.conversation_id).map_err(|error| {
            tracing::error!(agent = self.agent, session = turn.session_key(), %error, "cannot prepare the workspace");
            AgentError::Failed(format!("cannot prepare the workspace of this conversation: {error}"))
        })?;
        let conn = self.connection().await?;
        let (session_id, new) = self.session(&conn, &turn.session_key(), &workspace).await?;
        Ok((conn, session_id, new))
    }

    fn too_long(&self) -> AgentError {
        AgentError::Failed(format!("the agent took longer than {} s", self.turn_timeout.as_secs()))
    }
}

#[async_trait]
impl AgentRuntime for AcpRuntime {
    async fn respond(&self, turn: &TurnContext, events: mpsc::Sender<AgentEvent>) -> Result<(), AgentError> {
        let deadline = Instant::now() + self.turn_timeout;
        let key = turn.session_key();
        let prepared = tokio::time::timeout_at(deadline, self.prepare(turn)).await;
        let (conn, session_id, new) = prepared.map_err(|_| self.too_long())??;
        let pid = conn.pid();
        tracing::debug!(agent = self.agent, session = key, pid, new_session = new, "acp prompt starts");
        let running = Turn::open(conn, session_id, &self.agent, &key)?;
        let limits = Limits {
            deadline,
            turn: self.turn_timeout,
            permission: self.permission_timeout,
            permission_budget: self.permission_budget,
        };
        running.run(&prompt_texts(turn, new), &events, limits).await
    }

    async fn cancel(&self, session_key: &str) {
        let Some(conn) = self.running() else { return };
        if conn.cancel(session_key) {
            tracing::info!(agent = self.agent, session = session_key, "acp prompt cancel requested");
        }
    }
}

fn setup_error(method: &str, error: CallError) -> AgentError {
    match error {
        CallError::Gone(why) => AgentError::Unavailable(why),
        CallError::Broken(why) => AgentError::Failed(why),
        CallError::Rpc(error) => AgentError::Failed(format!("the agent refused {method}: {}", error.message)),
    }
}

fn parse<T: serde::de::DeserializeOwned>(method: &str, result: Value) -> Result<T, AgentError> {
    serde_json::from_value(result)
        .map_err(|error| AgentError::Failed(format!("the agent's {method} result is invalid: {error}")))
}

/// The text blocks of a prompt: the message to answer, preceded on a new session by the
/// persona and the conversation so far (the agent has not seen them; later prompts of
/// the session need only the new message).
fn prompt_texts(turn: &TurnContext, new_session: bool) -> Vec<String> {
    let (last, earlier) = match turn.messages.split_last() {
        Some((last, earlier)) => (last.content.clone(), earlier),
        None => (String::new(), &[][..]),
    };
    match preamble(turn.system_prompt.as_deref(), earlier).filter(|_| new_session) {
        Some(preamble) => vec![preamble, last],
        None => vec![last],
    }
}

fn preamble(persona: Option<&str>, earlier: &[ContextMessage]) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(persona) = persona.map(str::trim).filter(|p| !p.is_empty()) {
        parts.push(persona.to_string());
    }
    if !earlier.is_empty() {
        let lines: Vec<String> = earlier.iter().map(context_line).collect();
        parts.push(format!("The conversation so far, oldest first:\n{}", lines.join("\n")));
    }
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

fn context_line(message: &ContextMessage) -> String {
    let speaker = match (message.role, &message.name) {
        (Role::Assistant, _) => "you",
        (Role::User, Some(name)) => name.as_str(),
        (Role::User, None) => "user",
    };
    format!("[{speaker}] {}", message.content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(system_prompt: Option<&str>, texts: &[&str]) -> TurnContext {
        TurnContext {
            agent_id: "a".into(),
            conversation_id: "c".into(),
            thread_id: None,
            system_prompt: system_prompt.map(str::to_string),
            messages: texts
                .iter()
                .enumerate()
                .map(|(i, text)| ContextMessage {
                    role: if i % 2 == 1 { Role::Assistant } else { Role::User },
                    name: (i % 2 == 0).then(|| "@alice:x".to_string()),
                    content: text.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_new_session_gets_the_persona_and_the_context_first() {
        let texts = prompt_texts(&turn(Some("Be brief."), &["hi", "hello", "question"]), true);
        assert_eq!(
            texts,
            ["Be brief.\n\nThe conversation so far, oldest first:\n[@alice:x] hi\n[you] hello", "question"]
        );
        assert_eq!(prompt_texts(&turn(Some("Be brief."), &["hi", "hello", "question"]), false), ["question"]);
        assert_eq!(prompt_texts(&turn(None, &["only"]), true), ["only"]);
    }

    #[test]
    fn the_command_must_be_set() {
        let mut agent = AgentConfig::new("a", "A", "acp");
        assert_eq!(check_config(&agent).unwrap_err().0, "agent.command");
        agent.command = vec!["agent".into()];
        let refused = AcpRuntime::new(&agent).err().expect("a runtime without a workspace");
        assert!(refused.starts_with("agent.workspace"), "{refused}");
        agent.workspace = Some(std::env::temp_dir().join("mosaic-acp-unit-test"));
        assert!(AcpRuntime::new(&agent).is_ok());
    }
}
