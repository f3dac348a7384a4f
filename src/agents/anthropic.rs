//! The `anthropic` runtime: the Messages API (`POST {base_url}/v1/messages`), streamed.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderName;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::runtime::{AgentError, AgentEvent, AgentRuntime, ContextMessage, Role, TokenUsage, TurnContext};
use super::sse;
use crate::config::AgentConfig;

const EXAMPLE_BASE_URL: &str = "https://api.anthropic.com";
const EXAMPLE_MODEL: &str = "claude-sonnet-4-5";
const API_VERSION: &str = "2023-06-01";
/// The API requires `max_tokens`; used when the config leaves it out.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// Checks the settings this runtime needs: the config key at fault and why.
pub fn check_config(agent: &AgentConfig) -> Result<(), (&'static str, String)> {
    sse::check_base_url(agent.base_url.as_deref(), EXAMPLE_BASE_URL)?;
    sse::check_model(agent.model.as_deref(), EXAMPLE_MODEL)?;
    if agent.api_key_env.as_deref().is_none_or(|v| v.trim().is_empty()) {
        return Err((
            "agent.api_key_env",
            "required: the environment variable holding the API key, e.g. \"ANTHROPIC_API_KEY\"".into(),
        ));
    }
    if let Some(t) = agent.temperature.filter(|t| !(0.0..=1.0).contains(t)) {
        return Err(("agent.temperature", format!("{t} is out of range; expected 0.0 to 1.0, e.g. 0.7")));
    }
    if agent.max_tokens == Some(0) {
        return Err(("agent.max_tokens", format!("must be at least 1, e.g. {DEFAULT_MAX_TOKENS} (the default)")));
    }
    Ok(())
}

pub struct AnthropicRuntime {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key_env: String,
    temperature: Option<f32>,
    max_tokens: u32,
    timeout: Duration,
}

impl AnthropicRuntime {
    pub fn new(agent: &AgentConfig) -> Result<Self, String> {
        check_config(agent).map_err(|(key, message)| format!("{key}: {message}"))?;
        let base = sse::check_base_url(agent.base_url.as_deref(), EXAMPLE_BASE_URL).map_err(|(_, m)| m)?;
        let model = sse::check_model(agent.model.as_deref(), EXAMPLE_MODEL).map_err(|(_, m)| m)?;
        let api_key_env = agent.api_key_env.as_deref().unwrap_or_default().trim().to_string();
        if std::env::var_os(&api_key_env).is_none() {
            tracing::warn!(
                agent = agent.id,
                variable = api_key_env,
                "API key variable is not set; turns fail until it is"
            );
        }
        // Accept a base URL given with the version path too (`https://api.anthropic.com/v1`).
        let url = match base.strip_suffix("/v1") {
            Some(root) => format!("{root}/v1/messages"),
            None => format!("{base}/v1/messages"),
        };
        Ok(Self {
            http: sse::client()?,
            url,
            model,
            api_key_env,
            temperature: agent.temperature,
            max_tokens: agent.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            timeout: Duration::from_secs(agent.timeout_secs),
        })
    }

    async fn turn(&self, turn: &TurnContext, events: &mpsc::Sender<AgentEvent>) -> Result<(), AgentError> {
        let key = sse::api_key(&self.api_key_env)?;
        let body = self.body(turn)?;
        let request = self
            .http
            .post(&self.url)
            .header(HeaderName::from_static("x-api-key"), sse::secret_header(&key)?)
            .header(HeaderName::from_static("anthropic-version"), API_VERSION)
            .json(&body);
        tracing::debug!("asking the model");
        let mut stream = sse::open(request, Some(&key)).await?;
        let mut usage = TokenUsage::default();
        while let Some(event) = stream.next().await? {
            let event: StreamEvent = serde_json::from_str(&event.data).map_err(|e| {
                AgentError::Failed(format!("the model endpoint sent an unreadable {:?} event: {e}", event.event))
            })?;
            if handle(event, &mut usage, &key, events).await? == Flow::Stop {
                tracing::debug!(
                    input_tokens = usage.input_tokens,
                    output_tokens = usage.output_tokens,
                    "model answered"
                );
                return sse::emit(events, AgentEvent::Usage(usage)).await;
            }
        }
        Err(AgentError::Unavailable("the model endpoint closed the stream before the answer was complete".into()))
    }

    fn body<'a>(&'a self, turn: &'a TurnContext) -> Result<MessagesRequest<'a>, AgentError> {
        let messages = messages(&turn.messages);
        if messages.is_empty() {
            return Err(AgentError::Failed("nothing to answer: the context has no user message".into()));
        }
        Ok(MessagesRequest {
            model: &self.model,
            max_tokens: self.max_tokens,
            system: turn.system_prompt.as_deref().filter(|s| !s.trim().is_empty()),
            messages,
            stream: true,
            temperature: self.temperature,
        })
    }
}

#[async_trait]
impl AgentRuntime for AnthropicRuntime {
    async fn respond(&self, turn: &TurnContext, events: mpsc::Sender<AgentEvent>) -> Result<(), AgentError> {
        let span = tracing::info_span!("model_turn", runtime = "anthropic", agent = turn.agent_id, model = self.model);
        sse::within(self.timeout, self.turn(turn, &events)).instrument(span).await
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

async fn handle(
    event: StreamEvent,
    usage: &mut TokenUsage,
    key: &str,
    events: &mpsc::Sender<AgentEvent>,
) -> Result<Flow, AgentError> {
    match event {
        StreamEvent::MessageStart { message } => usage.input_tokens = message.usage.input_total(),
        StreamEvent::ContentBlockDelta { delta: Delta::TextDelta { text } } if !text.is_empty() => {
            sse::emit(events, AgentEvent::Text(text)).await?;
        }
        StreamEvent::MessageDelta { usage: Some(delta) } => usage.output_tokens = delta.output_tokens,
        StreamEvent::MessageStop => return Ok(Flow::Stop),
        StreamEvent::Error { error } => return Err(error.into_agent_error(key)),
        _ => {} // ping, content block start/stop, thinking and tool deltas
    }
    Ok(Flow::Continue)
}

/// The API wants alternating turns that start with the user and no empty text, while the
/// room may have several people speaking in a row and the agent speaking first: speakers
/// are named in the text, runs of one role merged, leading agent messages dropped.
fn messages(context: &[ContextMessage]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    for message in context.iter().filter(|m| !m.content.trim().is_empty()) {
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        if out.is_empty() && role == "assistant" {
            continue;
        }
        let text = match (message.role, &message.name) {
            (Role::User, Some(name)) => format!("{name}: {}", message.content),
            _ => message.content.clone(),
        };
        match out.last_mut() {
            Some(last) if last.role == role => {
                last.content.push_str("\n\n");
                last.content.push_str(&text);
            }
            _ => out.push(Message { role, content: text }),
        }
    }
    // A final assistant message is a prefill, which the API refuses with trailing whitespace.
    if let Some(last) = out.last_mut().filter(|m| m.role == "assistant") {
        last.content.truncate(last.content.trim_end().len());
    }
    out
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    messages: Vec<Message>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
struct Message {
    role: &'static str,
    content: String,
}

/// The `data` of a stream event; its `type` repeats the `event:` name.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockDelta {
        delta: Delta,
    },
    MessageDelta {
        usage: Option<DeltaUsage>,
    },
    MessageStop,
    Error {
        error: ApiError,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    usage: StartUsage,
}

/// Cached prompt tokens are counted apart from `input_tokens`; the turn consumed them all.
#[derive(Deserialize)]
struct StartUsage {
    #[serde(default)]
    input_tokens: u64,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl StartUsage {
    fn input_total(&self) -> u64 {
        self.input_tokens + self.cache_creation_input_tokens.unwrap_or(0) + self.cache_read_input_tokens.unwrap_or(0)
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta {
    TextDelta {
        text: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct DeltaUsage {
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

impl ApiError {
    /// Overloaded, rate limited or failing on Anthropic's side is worth another try.
    fn into_agent_error(self, key: &str) -> AgentError {
        let message =
            format!("the model endpoint failed mid-answer: {}: {}", self.kind, sse::redact(&self.message, Some(key)));
        match self.kind.as_str() {
            "overloaded_error" | "api_error" | "rate_limit_error" | "timeout_error" => AgentError::Unavailable(message),
            _ => AgentError::Failed(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(role: Role, name: Option<&str>, content: &str) -> ContextMessage {
        ContextMessage { role, name: name.map(str::to_string), content: content.into() }
    }

    #[test]
    fn messages_start_with_the_user_alternate_and_name_speakers() {
        let context = [
            said(Role::Assistant, None, "welcome"),
            said(Role::User, Some("@alice:hs"), "hi"),
            said(Role::User, None, "   "),
            said(Role::User, Some("@bob:hs"), "there"),
            said(Role::Assistant, None, "hello"),
            said(Role::Assistant, None, "both "),
        ];
        assert_eq!(
            messages(&context),
            vec![
                Message { role: "user", content: "@alice:hs: hi\n\n@bob:hs: there".into() },
                Message { role: "assistant", content: "hello\n\nboth".into() },
            ]
        );
    }

    #[test]
    fn only_agent_messages_leave_nothing_to_send() {
        assert!(messages(&[said(Role::Assistant, None, "alone")]).is_empty());
    }

    #[test]
    fn error_kinds_map_to_retry_or_fail() {
        let error = |kind: &str| ApiError { kind: kind.into(), message: "m".into() }.into_agent_error("k");
        assert!(matches!(error("overloaded_error"), AgentError::Unavailable(_)));
        assert!(matches!(error("invalid_request_error"), AgentError::Failed(_)));
    }
}
