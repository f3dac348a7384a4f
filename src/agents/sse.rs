//! Streamed model answers over HTTP, shared by the `openai` and `anthropic` runtimes: an
//! incremental Server-Sent Events parser, a reader that yields the events of a response as
//! they arrive, and the mapping of HTTP failures onto [`AgentError`].

use std::collections::VecDeque;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderValue, RETRY_AFTER};
use serde_json::Value;
use tokio::sync::mpsc;

use super::runtime::{AgentError, AgentEvent};

/// Largest event (pending line plus data) accepted; a stream that exceeds it is broken,
/// and without a bound a server that never ends a line would grow memory without limit.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Most of an error response body read to explain a refusal.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Longest server explanation quoted in an error.
const MAX_DETAIL_CHARS: usize = 300;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name; `message` when the server gave none.
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an event is larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
}

/// Incremental parser for `text/event-stream` (the WHATWG algorithm, minus `id`/`retry`,
/// which only matter for reconnecting and a model turn is never resumed). Bytes go in as
/// they arrive; lines and UTF-8 characters split across chunks are buffered until whole.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous line ended with CR: an LF right after it belongs to that line ending.
    after_cr: bool,
    /// The first line was seen, so a byte-order mark is no longer expected.
    started: bool,
    event: String,
    data: String,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes; returns the events they completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        for &byte in bytes {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            if byte == b'\n' || byte == b'\r' {
                self.after_cr = byte == b'\r';
                let line = std::mem::take(&mut self.line);
                events.extend(self.end_line(&line));
            } else {
                self.line.push(byte);
                if self.line.len() + self.data.len() > MAX_EVENT_BYTES {
                    return Err(SseError::TooLarge);
                }
            }
        }
        Ok(events)
    }

    fn end_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        let line = String::from_utf8_lossy(line);
        let mut line = line.as_ref();
        if !std::mem::replace(&mut self.started, true) {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None; // a comment, often sent as a keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the `\n` after the last data line
        Some(SseEvent { event: if event.is_empty() { "message".into() } else { event }, data })
    }
}

/// The events of a streamed response, yielded as their bytes arrive.
pub struct EventStream {
    response: reqwest::Response,
    parser: SseParser,
    ready: VecDeque<SseEvent>,
}

impl EventStream {
    pub fn new(response: reqwest::Response) -> Self {
        Self { response, parser: SseParser::new(), ready: VecDeque::new() }
    }

    /// The next event; `None` when the server closed the stream. A broken connection is
    /// transient: the turn is tried again.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, AgentError> {
        while self.ready.is_empty() {
            let chunk = self.response.chunk().await.map_err(|e| transport_error(&e))?;
            let Some(chunk) = chunk else { return Ok(None) };
            let events = self.parser.push(&chunk).map_err(|e| AgentError::Failed(format!("model endpoint: {e}")))?;
            self.ready.extend(events);
        }
        Ok(self.ready.pop_front())
    }
}

/// Sends a request whose answer is an event stream; a refusal becomes the matching error.
/// `key` is the API key sent with it, blanked out of anything the server says back.
pub async fn open(request: reqwest::RequestBuilder, key: Option<&str>) -> Result<EventStream, AgentError> {
    let response = request.send().await.map_err(|e| transport_error(&e))?;
    let status = response.status();
    if status.is_success() {
        return Ok(EventStream::new(response));
    }
    let retry_after = response.headers().get(RETRY_AFTER).and_then(retry_after);
    let body = error_body(response).await;
    // Not `{status}`: it prints codes without a standard name (529) as "<unknown status code>".
    let mut message = format!("model endpoint answered HTTP {}", status.as_u16());
    if let Some(reason) = status.canonical_reason() {
        message.push_str(&format!(" {reason}"));
    }
    if let Some(detail) = error_detail(&body) {
        message.push_str(&format!(": {}", redact(&detail, key)));
    }
    if let Some(after) = retry_after {
        message.push_str(&format!(" (retry after {after})"));
    }
    tracing::warn!(status = status.as_u16(), "model endpoint refused the turn");
    Err(if is_transient(status) { AgentError::Unavailable(message) } else { AgentError::Failed(message) })
}

/// Busy, rate limited or failing on its side: worth trying again. Everything else (bad
/// key, unknown model, malformed request) will fail the same way next time.
pub fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT || status.is_server_error()
}

fn retry_after(value: &HeaderValue) -> Option<String> {
    let value = value.to_str().ok()?.trim();
    Some(if value.bytes().all(|b| b.is_ascii_digit()) { format!("{value}s") } else { value.chars().take(40).collect() })
}

async fn error_body(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// The server's own explanation: `error.message` (OpenAI, Anthropic), `error` as a string
/// (Ollama), or else the start of the body.
pub fn error_detail(body: &str) -> Option<String> {
    let detail = match serde_json::from_str::<Value>(body) {
        Ok(json) => match json.get("error") {
            Some(Value::String(message)) => message.clone(),
            Some(error) => error.get("message").and_then(Value::as_str).unwrap_or_default().to_string(),
            None => String::new(),
        },
        Err(_) => body.trim().to_string(),
    };
    let detail: String = detail.chars().take(MAX_DETAIL_CHARS).collect();
    (!detail.is_empty()).then_some(detail)
}

/// Blanks the key out of a server message, and any masked form of it: OpenAI quotes a bad
/// key back as `sk-abc*****wxyz`.
pub fn redact(message: &str, key: Option<&str>) -> String {
    let key = key.filter(|k| !k.is_empty());
    let message = match key {
        Some(key) => message.replace(key, "[redacted]"),
        None => message.to_string(),
    };
    let prefix: Option<String> = key.filter(|k| k.chars().count() >= 12).map(|k| k.chars().take(6).collect());
    let masked = |word: &str| word.contains("***") || prefix.as_deref().is_some_and(|p| word.contains(p));
    message.split(' ').map(|word| if masked(word) { "[redacted]" } else { word }).collect::<Vec<_>>().join(" ")
}

/// A connection-level failure, without the URL (which may carry credentials).
pub fn transport_error(error: &reqwest::Error) -> AgentError {
    if error.is_timeout() {
        return AgentError::Unavailable("the model endpoint timed out".into());
    }
    AgentError::Unavailable(format!("cannot reach the model endpoint: {}", error_chain(error)))
}

fn error_chain(error: &reqwest::Error) -> String {
    let mut message = match error.url() {
        Some(url) => error.to_string().replace(url.as_str(), "the endpoint"),
        None => error.to_string(),
    };
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        message.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    message
}

/// Reads the API key from the environment variable named in the config, at each turn so a
/// rotated key is picked up without a restart. The error names the variable, never a value.
pub fn api_key(var: &str) -> Result<String, AgentError> {
    match std::env::var(var) {
        Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_string()),
        _ => Err(AgentError::Failed(format!("the API key variable {var} is not set in the environment"))),
    }
}

/// A header carrying a secret: marked sensitive so it never shows in debug output.
pub fn secret_header(value: &str) -> Result<HeaderValue, AgentError> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| AgentError::Failed("the API key contains characters not allowed in a header".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The HTTP client of a model runtime. Only connecting has its own limit: a streamed answer
/// may rightly take minutes, so the whole turn is bounded by [`within`] instead.
pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))
}

/// Hands one event to the turn; the receiver gone means nobody waits for the answer.
pub async fn emit(events: &mpsc::Sender<AgentEvent>, event: AgentEvent) -> Result<(), AgentError> {
    events.send(event).await.map_err(|_| AgentError::Failed("turn abandoned".into()))
}

/// Runs a whole turn under the agent's time limit; running out is transient.
pub async fn within<T>(limit: Duration, turn: impl Future<Output = Result<T, AgentError>>) -> Result<T, AgentError> {
    match tokio::time::timeout(limit, turn).await {
        Ok(result) => result,
        Err(_) => Err(AgentError::Unavailable(format!("no complete answer within {}s", limit.as_secs()))),
    }
}

/// The base URL without trailing slashes, checked to be HTTP(S).
pub fn check_base_url(base_url: Option<&str>, example: &str) -> Result<String, (&'static str, String)> {
    let base = base_url.map(|b| b.trim().trim_end_matches('/')).unwrap_or_default();
    if base.is_empty() {
        return Err(("agent.base_url", format!("required: the model endpoint's base URL, e.g. {example:?}")));
    }
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(("agent.base_url", format!("{base:?} is not an http:// or https:// URL, e.g. {example:?}")));
    }
    Ok(base.to_string())
}

/// The model name, required.
pub fn check_model(model: Option<&str>, example: &str) -> Result<String, (&'static str, String)> {
    match model.map(str::trim) {
        Some(model) if !model.is_empty() => Ok(model.to_string()),
        _ => Err(("agent.model", format!("required: the model to ask, e.g. {example:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        chunks.iter().flat_map(|chunk| parser.push(chunk).unwrap()).collect()
    }

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent { event: name.into(), data: data.into() }
    }

    const STREAM: &str = "event: message_start\ndata: {\"a\":1}\n\n: keep-alive\n\ndata: {\"text\":\"héllo wörld 🙂\"}\n\ndata: [DONE]\n\n";

    #[test]
    fn parses_events_with_names_and_default_name() {
        assert_eq!(
            parse_all(&[STREAM.as_bytes()]),
            vec![
                event("message_start", "{\"a\":1}"),
                event("message", "{\"text\":\"héllo wörld 🙂\"}"),
                event("message", "[DONE]")
            ]
        );
    }

    #[test]
    fn any_split_point_gives_the_same_events() {
        let whole = parse_all(&[STREAM.as_bytes()]);
        let bytes = STREAM.as_bytes();
        for at in 0..=bytes.len() {
            assert_eq!(parse_all(&[&bytes[..at], &bytes[at..]]), whole, "split at byte {at}");
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_all(&one_by_one), whole);
    }

    #[test]
    fn joins_multi_line_data_with_newlines() {
        assert_eq!(
            parse_all(&[b"data: first\ndata:second\ndata\ndata:  indented\n\n"]),
            vec![event("message", "first\nsecond\n\n indented")]
        );
    }

    #[test]
    fn accepts_crlf_and_lone_cr_even_split_between_chunks() {
        let expected = vec![event("a", "1"), event("message", "2"), event("message", "3")];
        assert_eq!(parse_all(&[b"event: a\r\ndata: 1\r\n\r\ndata: 2\r\rdata: 3\n\n"]), expected);
        assert_eq!(parse_all(&[b"event: a\r", b"\ndata: 1\r", b"\n\r", b"\ndata: 2\r", b"\rdata: 3\n\n"]), expected);
    }

    #[test]
    fn ignores_comments_unknown_fields_and_blank_lines_without_data() {
        assert_eq!(
            parse_all(&[b": hello\nid: 7\nretry: 10\nfoo: bar\n\n\n\ndata: x\n\n"]),
            vec![event("message", "x")]
        );
    }

    #[test]
    fn an_event_name_without_data_does_not_leak_into_the_next_event() {
        assert_eq!(parse_all(&[b"event: ping\n\ndata: x\n\n"]), vec![event("message", "x")]);
    }

    #[test]
    fn empty_data_line_is_still_an_event() {
        assert_eq!(parse_all(&[b"data:\n\n"]), vec![event("message", "")]);
    }

    #[test]
    fn holds_an_event_until_its_blank_line() {
        let mut parser = SseParser::new();
        assert!(parser.push(b"data: partial\n").unwrap().is_empty());
        assert_eq!(parser.push(b"\n").unwrap(), vec![event("message", "partial")]);
    }

    #[test]
    fn strips_a_leading_byte_order_mark_split_across_chunks() {
        let bom = "\u{feff}".as_bytes();
        assert_eq!(parse_all(&[&bom[..1], &bom[1..], b"data: x\n\n"]), vec![event("message", "x")]);
    }

    #[test]
    fn refuses_an_endless_line() {
        let mut parser = SseParser::new();
        let chunk = vec![b'a'; 1024 * 1024];
        let result = (0..5).try_for_each(|_| parser.push(&chunk).map(drop));
        assert_eq!(result, Err(SseError::TooLarge));
    }

    #[test]
    fn error_detail_reads_the_common_shapes() {
        let openai = r#"{"error":{"message":"Invalid model","type":"invalid_request_error","code":null}}"#;
        assert_eq!(error_detail(openai).as_deref(), Some("Invalid model"));
        let anthropic = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(error_detail(anthropic).as_deref(), Some("Overloaded"));
        assert_eq!(error_detail(r#"{"error":"model not found"}"#).as_deref(), Some("model not found"));
        assert_eq!(error_detail("<html>Bad gateway</html>\n").as_deref(), Some("<html>Bad gateway</html>"));
        assert_eq!(error_detail(""), None);
    }

    #[test]
    fn redact_blanks_the_key_and_masked_keys() {
        let key = "sk-proj-abcdef0123456789";
        let said = format!("Incorrect API key provided: sk-proj-****6789. Also {key} here.");
        let clean = redact(&said, Some(key));
        assert!(!clean.contains(key) && !clean.contains("6789"), "{clean}");
        assert!(clean.starts_with("Incorrect API key provided: [redacted]"), "{clean}");
        assert_eq!(redact("no key here", None), "no key here");
    }

    #[test]
    fn transient_statuses() {
        for code in [408, 429, 500, 502, 503, 529] {
            assert!(is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 403, 404, 422] {
            assert!(!is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }
}
