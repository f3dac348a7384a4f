//! The Agent Client Protocol messages this client reads and writes (protocol version 1),
//! as JSON-RPC 2.0. Only the fields we use are modelled; the rest is ignored.

use serde::Deserialize;
use serde_json::{Value, json};

/// The ACP major version we speak.
pub const PROTOCOL_VERSION: u64 = 1;
/// JSON-RPC: the method does not exist (or we do not offer it).
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC: the parameters could not be understood.
pub const INVALID_PARAMS: i64 = -32602;

/// Any JSON-RPC message from the agent: a request (`method` and `id`), a notification
/// (`method` only) or a response to one of our requests (`id` with `result` or `error`).
#[derive(Debug, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub params: Value,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<RpcError>,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

/// `session/update` parameters.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionNotification {
    pub session_id: String,
    pub update: SessionUpdate,
}

/// The `update` of a `session/update`, told apart by its `sessionUpdate` field.
#[derive(Debug, Deserialize)]
#[serde(tag = "sessionUpdate", rename_all = "snake_case")]
pub enum SessionUpdate {
    AgentMessageChunk {
        content: ContentBlock,
    },
    ToolCall(ToolCallFields),
    ToolCallUpdate(ToolCallFields),
    Plan {
        entries: Vec<PlanEntry>,
    },
    /// Thoughts, mode changes, command lists…: nothing we show.
    #[serde(other)]
    Other,
}

/// A content block; only text is shown.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
    },
    #[serde(other)]
    Other,
}

/// The fields of a tool call we show. `title` and `status` are optional in updates and
/// in permission requests, which repeat only what changed.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallFields {
    pub tool_call_id: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PlanEntry {
    pub content: String,
}

/// `session/request_permission` parameters.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionParams {
    pub session_id: String,
    pub tool_call: ToolCallFields,
    pub options: Vec<PermissionOption>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionOption {
    pub option_id: String,
    pub name: String,
    pub kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeResult {
    pub protocol_version: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSessionResult {
    pub session_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptResult {
    pub stop_reason: String,
}

pub fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

pub fn response(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub fn error_response(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

pub fn initialize_params() -> Value {
    // We run no tools for the agent: it must not count on our file system or terminals.
    json!({
        "protocolVersion": PROTOCOL_VERSION,
        "clientCapabilities": {"fs": {"readTextFile": false, "writeTextFile": false}, "terminal": false},
        "clientInfo": {"name": "mosaic-as", "version": env!("CARGO_PKG_VERSION")},
    })
}

pub fn new_session_params(cwd: &str) -> Value {
    json!({"cwd": cwd, "mcpServers": []})
}

pub fn prompt_params(session_id: &str, texts: &[String]) -> Value {
    let prompt: Vec<Value> = texts.iter().map(|text| json!({"type": "text", "text": text})).collect();
    json!({"sessionId": session_id, "prompt": prompt})
}

pub fn cancel_params(session_id: &str) -> Value {
    json!({"sessionId": session_id})
}

/// The answer to a permission request: the chosen option, or `None` for "cancelled".
pub fn permission_outcome(option_id: Option<&str>) -> Value {
    match option_id {
        Some(id) => json!({"outcome": {"outcome": "selected", "optionId": id}}),
        None => json!({"outcome": {"outcome": "cancelled"}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_updates_are_told_apart_by_their_tag() {
        let chunk: SessionNotification = serde_json::from_value(json!({
            "sessionId": "s",
            "update": {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "hi"}}
        }))
        .unwrap();
        assert!(
            matches!(chunk.update, SessionUpdate::AgentMessageChunk { content: ContentBlock::Text { text } } if text == "hi")
        );
        let tool: SessionUpdate = serde_json::from_value(
            json!({"sessionUpdate": "tool_call_update", "toolCallId": "c1", "status": "completed"}),
        )
        .unwrap();
        assert!(matches!(tool, SessionUpdate::ToolCallUpdate(ToolCallFields { title: None, .. })));
        let plan: SessionUpdate = serde_json::from_value(json!({
            "sessionUpdate": "plan",
            "entries": [{"content": "step", "priority": "high", "status": "pending"}]
        }))
        .unwrap();
        assert!(matches!(plan, SessionUpdate::Plan { entries } if entries[0].content == "step"));
        let other: SessionUpdate =
            serde_json::from_value(json!({"sessionUpdate": "agent_thought_chunk", "content": {}})).unwrap();
        assert!(matches!(other, SessionUpdate::Other));
        let image: ContentBlock = serde_json::from_value(json!({"type": "image", "data": ""})).unwrap();
        assert!(matches!(image, ContentBlock::Other));
    }

    #[test]
    fn permission_outcomes_follow_the_schema() {
        assert_eq!(permission_outcome(Some("allow")), json!({"outcome": {"outcome": "selected", "optionId": "allow"}}));
        assert_eq!(permission_outcome(None), json!({"outcome": {"outcome": "cancelled"}}));
    }
}
