//! The `openai` runtime: any OpenAI-compatible `POST {base_url}/chat/completions` endpoint
//! (OpenAI, Ollama, OpenRouter, vLLM, llama.cpp's server), with the answer streamed.

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::AUTHORIZATION;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::runtime::{AgentError, AgentEvent, AgentRuntime, ContextMessage, Role, TokenUsage, TurnContext};
use super::sse;
use crate::config::AgentConfig;

const EXAMPLE_BASE_URL: &str = "https://api.openai.com/v1";
const EXAMPLE_MODEL: &str = "gpt-4o-mini";

/// Checks the settings this runtime needs: the config key at fault and why.
pub fn check_config(agent: &AgentConfig) -> Result<(), (&'static str, String)> {
    sse::check_base_url(agent.base_url.as_deref(), EXAMPLE_BASE_URL)?;
    sse::check_model(agent.model.as_deref(), EXAMPLE_MODEL)?;
    if let Some(t) = agent.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(("agent.temperature", format!("{t} is out of range; expected 0.0 to 2.0, e.g. 0.7")));
    }
    if agent.max_tokens == Some(0) {
        return Err(("agent.max_tokens", "must be at least 1, e.g. 1024 (or left out)".into()));
    }
    if agent.api_key_env.as_deref().is_some_and(|v| v.trim().is_empty()) {
        return Err((
            "agent.api_key_env",
            "empty; name the environment variable holding the key, e.g. \"OPENAI_API_KEY\" (or leave it out for a local server)".into(),
        ));
    }
    Ok(())
}

pub struct OpenAiRuntime {
    http: reqwest::Client,
    url: String,
    model: String,
    /// No variable: the endpoint takes no key (a local server).
    api_key_env: Option<String>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    timeout: Duration,
}

impl OpenAiRuntime {
    pub fn new(agent: &AgentConfig) -> Result<Self, String> {
        check_config(agent).map_err(|(key, message)| format!("{key}: {message}"))?;
        let base = sse::check_base_url(agent.base_url.as_deref(), EXAMPLE_BASE_URL).map_err(|(_, m)| m)?;
        let model = sse::check_model(agent.model.as_deref(), EXAMPLE_MODEL).map_err(|(_, m)| m)?;
        let api_key_env = agent.api_key_env.as_deref().map(|v| v.trim().to_string());
        if let Some(var) = &api_key_env
            && std::env::var_os(var).is_none()
        {
            tracing::warn!(agent = agent.id, variable = var, "API key variable is not set; turns fail until it is");
        }
        Ok(Self {
            http: sse::client()?,
            url: format!("{base}/chat/completions"),
            model,
            api_key_env,
            temperature: agent.temperature,
            max_tokens: agent.max_tokens,
            timeout: Duration::from_secs(agent.timeout_secs),
        })
    }

    async fn turn(&self, turn: &TurnContext, events: &mpsc::Sender<AgentEvent>) -> Result<(), AgentError> {
        let key = self.api_key_env.as_deref().map(sse::api_key).transpose()?;
        let mut request = self.http.post(&self.url).json(&self.body(turn));
        if let Some(key) = &key {
            request = request.header(AUTHORIZATION, sse::secret_header(&format!("Bearer {key}"))?);
        }
        tracing::debug!("asking the model");
        let mut stream = sse::open(request, key.as_deref()).await?;
        let mut answer = Answer::default();
        while let Some(event) = stream.next().await? {
            if event.data.trim() == "[DONE]" {
                return answer.finish(events).await;
            }
            answer.read(&event.data, key.as_deref(), events).await?;
        }
        // Some servers close without `[DONE]`; a finished choice still means a whole answer.
        if answer.finished {
            return answer.finish(events).await;
        }
        Err(AgentError::Unavailable("the model endpoint closed the stream before the answer was complete".into()))
    }

    fn body<'a>(&'a self, turn: &'a TurnContext) -> ChatRequest<'a> {
        let system = turn.system_prompt.as_deref().filter(|s| !s.trim().is_empty());
        let system = system.map(|s| ChatMessage { role: "system", name: None, content: Cow::Borrowed(s) });
        ChatRequest {
            model: &self.model,
            messages: system.into_iter().chain(turn.messages.iter().map(chat_message)).collect(),
            stream: true,
            stream_options: StreamOptions { include_usage: true },
            temperature: self.temperature,
            max_tokens: self.max_tokens,
        }
    }
}

#[async_trait]
impl AgentRuntime for OpenAiRuntime {
    async fn respond(&self, turn: &TurnContext, events: mpsc::Sender<AgentEvent>) -> Result<(), AgentError> {
        let span = tracing::info_span!("model_turn", runtime = "openai", agent = turn.agent_id, model = self.model);
        sse::within(self.timeout, self.turn(turn, &events)).instrument(span).await
    }
}

/// OpenAI only accepts `name` matching `^[a-zA-Z0-9_-]{1,64}$` and rejects the request
/// otherwise; other speakers (e.g. Matrix ids) are named inside the text instead.
fn chat_message(message: &ContextMessage) -> ChatMessage<'_> {
    let content = Cow::Borrowed(message.content.as_str());
    match (message.role, message.name.as_deref()) {
        (Role::Assistant, _) => ChatMessage { role: "assistant", name: None, content },
        (Role::User, Some(name)) if is_valid_name(name) => ChatMessage { role: "user", name: Some(name), content },
        (Role::User, Some(name)) => {
            ChatMessage { role: "user", name: None, content: Cow::Owned(format!("{name}: {}", message.content)) }
        }
        (Role::User, None) => ChatMessage { role: "user", name: None, content },
    }
}

fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    content: Cow<'a, str>,
}

/// One `chat.completion.chunk`. Servers that fail mid-stream (OpenRouter, vLLM) send an
/// `error` object in place of choices.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Delta,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// What the stream has told so far.
#[derive(Default)]
struct Answer {
    usage: Option<TokenUsage>,
    finished: bool,
}

impl Answer {
    async fn read(
        &mut self,
        data: &str,
        key: Option<&str>,
        events: &mpsc::Sender<AgentEvent>,
    ) -> Result<(), AgentError> {
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| AgentError::Failed(format!("the model endpoint sent an unreadable chunk: {e}")))?;
        if let Some(error) = chunk.error {
            return Err(stream_error(&error, key));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(TokenUsage { input_tokens: usage.prompt_tokens, output_tokens: usage.completion_tokens });
        }
        let Some(choice) = chunk.choices.into_iter().next() else { return Ok(()) };
        self.finished |= choice.finish_reason.is_some();
        match choice.delta.content {
            Some(text) if !text.is_empty() => sse::emit(events, AgentEvent::Text(text)).await,
            _ => Ok(()),
        }
    }

    /// Usage is only sent when the endpoint reported it (some servers ignore
    /// `stream_options`); made-up zeros would be worse than nothing.
    async fn finish(self, events: &mpsc::Sender<AgentEvent>) -> Result<(), AgentError> {
        let Some(usage) = self.usage else {
            tracing::debug!("model answered without reporting usage");
            return Ok(());
        };
        tracing::debug!(input_tokens = usage.input_tokens, output_tokens = usage.output_tokens, "model answered");
        sse::emit(events, AgentEvent::Usage(usage)).await
    }
}

/// An error reported inside the stream: busy or failing upstream is transient.
fn stream_error(error: &Value, key: Option<&str>) -> AgentError {
    let message = error.get("message").and_then(Value::as_str).or(error.as_str()).unwrap_or("unknown error");
    let message = format!("the model endpoint failed mid-answer: {}", sse::redact(message, key));
    let code = error.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok());
    let kind = error.get("type").and_then(Value::as_str).unwrap_or_default();
    let transient = code.and_then(|c| reqwest::StatusCode::from_u16(c).ok()).is_some_and(sse::is_transient)
        || ["server_error", "rate_limit", "overloaded", "timeout"].iter().any(|k| kind.contains(k));
    if transient { AgentError::Unavailable(message) } else { AgentError::Failed(message) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_openais_pattern_move_into_the_text() {
        let user = |name: &str| ContextMessage { role: Role::User, name: Some(name.into()), content: "hi".into() };
        let (alice, bob) = (user("alice_01-x"), user("@bob:example.org"));
        let ok = chat_message(&alice);
        assert_eq!((ok.name, ok.content.as_ref()), (Some("alice_01-x"), "hi"));
        let matrix = chat_message(&bob);
        assert_eq!((matrix.name, matrix.content.as_ref()), (None, "@bob:example.org: hi"));
        let long = "a".repeat(65);
        assert_eq!(chat_message(&user(&long)).content, format!("{long}: hi"));
    }

    #[test]
    fn stream_errors_are_transient_only_when_the_server_is_at_fault() {
        let busy = serde_json::json!({"code": 502, "message": "upstream down"});
        assert!(matches!(stream_error(&busy, None), AgentError::Unavailable(_)));
        let bad = serde_json::json!({"type": "invalid_request_error", "message": "context too long"});
        assert!(matches!(stream_error(&bad, None), AgentError::Failed(m) if m.contains("context too long")));
    }
}
