//! The `openai` and `anthropic` runtimes against fake servers that speak the public
//! streaming formats: answers arrive piece by piece as the server sends them, usage and
//! the request are right, and failures are sorted into "try again later" and "give up".

use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use mosaic_as::agents::{
    AgentError, AgentEvent, AgentRuntime, ContextMessage, Role, TokenUsage, TurnContext, anthropic, openai,
};
use mosaic_as::config::AgentConfig;

// ---------------------------------------------------------------------------------------
// Keys. Every test has its own variable, all set once before any test reads the
// environment (setting variables while other threads read them is not sound).

const KEYS: &[(&str, &str)] = &[
    ("MOSAIC_TEST_OPENAI_STREAM_KEY", "sk-test-stream-0a1b2c3d4e5f6a7b"),
    ("MOSAIC_TEST_OPENAI_REQUEST_KEY", "sk-test-request-9f8e7d6c5b4a3f2e"),
    ("MOSAIC_TEST_OPENAI_DENIED_KEY", "sk-test-denied-1q2w3e4r5t6y7u8i"),
    ("MOSAIC_TEST_OPENAI_ERRORS_KEY", "sk-test-errors-a9s8d7f6g5h4j3k2"),
    ("MOSAIC_TEST_ANTHROPIC_STREAM_KEY", "sk-ant-test-stream-z1x2c3v4b5n6m7"),
    ("MOSAIC_TEST_ANTHROPIC_REQUEST_KEY", "sk-ant-test-request-p0o9i8u7y6t5"),
    ("MOSAIC_TEST_ANTHROPIC_DENIED_KEY", "sk-ant-test-denied-l1k2j3h4g5f6d7"),
    ("MOSAIC_TEST_ANTHROPIC_ERRORS_KEY", "sk-ant-test-errors-m9n8b7v6c5x4z3"),
];

/// Never set by anything.
const UNSET_VAR: &str = "MOSAIC_TEST_MODEL_KEY_THAT_IS_NEVER_SET";

/// Sets every test key once. Each test reaches this (through its agent config) before it
/// builds an HTTP client or a runtime, the only readers of the environment here.
fn set_keys() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        for (name, value) in KEYS {
            // SAFETY: other tests wait on the `Once` before reading the environment, and
            // nothing else in this binary writes it.
            unsafe { std::env::set_var(name, value) };
        }
    });
}

fn key(var: &str) -> &'static str {
    set_keys();
    KEYS.iter().find(|(name, _)| *name == var).map(|(_, value)| *value).expect("a listed variable")
}

// ---------------------------------------------------------------------------------------
// Fake servers.

/// One step of a streamed response body.
enum Step {
    Send(Vec<u8>),
    Sleep(u64),
    /// Holds the rest of the body until the test opens the gate.
    Wait(Arc<Notify>),
    /// Never sends anything more.
    Stall,
}

fn send(text: impl AsRef<[u8]>) -> Step {
    Step::Send(text.as_ref().to_vec())
}

/// Sends `text` as two TCP writes, split at byte `at` (which may fall inside a line or a
/// UTF-8 character), with a pause between.
fn split(text: &str, at: usize) -> [Step; 3] {
    let bytes = text.as_bytes();
    [Step::Send(bytes[..at].to_vec()), Step::Sleep(15), Step::Send(bytes[at..].to_vec())]
}

fn event_stream(steps: Vec<Step>) -> Response {
    let body = futures::stream::unfold(steps.into_iter(), |mut steps| async move {
        loop {
            match steps.next()? {
                Step::Send(bytes) => return Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), steps)),
                Step::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Step::Wait(gate) => gate.notified().await,
                Step::Stall => std::future::pending::<()>().await,
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .unwrap()
}

fn refusal(status: u16, headers: &[(&str, &str)], body: Value) -> Response {
    let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response.header("content-type", "application/json").body(Body::from(body.to_string())).unwrap()
}

/// Requests a fake server received: headers and JSON body.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(HeaderMap, Value)>>>);

impl Seen {
    fn only(&self) -> (HeaderMap, Value) {
        let seen = self.0.lock().unwrap();
        assert_eq!(seen.len(), 1, "exactly one request");
        seen[0].clone()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Serves `reply()` to every POST on `path`; returns the server's root URL.
async fn fake(path: &'static str, reply: impl Fn() -> Response + Clone + Send + Sync + 'static) -> (String, Seen) {
    let seen = Seen::default();
    let recorder = seen.clone();
    let app = Router::new().route(
        path,
        post(move |headers: HeaderMap, body: Bytes| {
            let (reply, recorder) = (reply.clone(), recorder.clone());
            async move {
                recorder.0.lock().unwrap().push((headers, serde_json::from_slice(&body).expect("a JSON request")));
                reply()
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// A URL where nothing listens.
async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// A server that accepts connections and never answers.
async fn silent_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

// ---------------------------------------------------------------------------------------
// Turns.

fn said(role: Role, name: Option<&str>, content: &str) -> ContextMessage {
    ContextMessage { role, name: name.map(str::to_string), content: content.into() }
}

fn turn(messages: Vec<ContextMessage>) -> TurnContext {
    TurnContext {
        agent_id: "helper".into(),
        conversation_id: "!room:example.org".into(),
        thread_id: None,
        system_prompt: Some("You are Helper, terse and kind.".into()),
        messages,
    }
}

fn greeting() -> TurnContext {
    turn(vec![said(Role::User, Some("alice"), "Say hello to me.")])
}

/// Runs a turn to its end: the result and everything streamed.
async fn run(runtime: &dyn AgentRuntime, turn: &TurnContext) -> (Result<(), AgentError>, Vec<AgentEvent>) {
    let (events, mut received) = mpsc::channel(64);
    let gather = async {
        let mut all = Vec::new();
        while let Some(event) = received.recv().await {
            all.push(event);
        }
        all
    };
    tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(runtime.respond(turn, events), gather) })
        .await
        .expect("the turn ends")
}

fn text_of(events: &[AgentEvent]) -> String {
    events.iter().filter_map(|e| if let AgentEvent::Text(t) = e { Some(t.as_str()) } else { None }).collect()
}

fn usages(events: &[AgentEvent]) -> Vec<TokenUsage> {
    events.iter().filter_map(|e| if let AgentEvent::Usage(u) = e { Some(*u) } else { None }).collect()
}

fn unavailable(result: Result<(), AgentError>) -> String {
    match result {
        Err(AgentError::Unavailable(message)) => message,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

fn failed(result: Result<(), AgentError>) -> String {
    match result {
        Err(AgentError::Failed(message)) => message,
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// Starts a turn and checks its first piece of text arrives while the server still holds
/// the rest behind `gate`; then opens the gate and runs the turn to its end.
async fn streams_before_the_end(
    runtime: Arc<dyn AgentRuntime>,
    turn: TurnContext,
    gate: Arc<Notify>,
    first: &str,
) -> (Result<(), AgentError>, Vec<AgentEvent>) {
    let (events, mut received) = mpsc::channel(64);
    let running = tokio::spawn(async move { runtime.respond(&turn, events).await });
    let piece = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await
        .expect("the first piece arrives while the server still holds the rest");
    assert!(matches!(&piece, Some(AgentEvent::Text(t)) if t == first), "first piece {piece:?}");
    assert!(!running.is_finished(), "the turn is still streaming");
    gate.notify_one();
    let mut all = vec![piece.unwrap()];
    while let Some(event) = received.recv().await {
        all.push(event);
    }
    (running.await.unwrap(), all)
}

// ---------------------------------------------------------------------------------------
// OpenAI-compatible chat completions.

fn openai_agent(base_url: &str, key_var: Option<&str>) -> AgentConfig {
    set_keys();
    let mut agent = AgentConfig::new("helper", "Helper", "openai");
    agent.base_url = Some(format!("{base_url}/v1"));
    agent.model = Some("gpt-4o-mini".into());
    agent.api_key_env = key_var.map(str::to_string);
    agent
}

fn openai_runtime(agent: &AgentConfig) -> Arc<dyn AgentRuntime> {
    Arc::new(openai::OpenAiRuntime::new(agent).expect("a valid openai agent"))
}

const OPENAI_PATH: &str = "/v1/chat/completions";

/// One `chat.completion.chunk` as OpenAI streams it.
fn chunk(delta: Value, finish_reason: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        "usage": null
    });
    format!("data: {chunk}\n\n")
}

fn content(text: &str) -> String {
    chunk(json!({"content": text}), None)
}

/// The last chunk with `stream_options.include_usage`: no choices, only usage.
fn usage_chunk(prompt: u64, completion: u64) -> String {
    let chunk = json!({
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_06737a9306",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}
        }
    });
    format!("data: {chunk}\n\n")
}

fn openai_answer(gate: Option<Arc<Notify>>) -> Vec<Step> {
    let mut steps = vec![send(chunk(json!({"role": "assistant", "content": "", "refusal": null}), None))];
    steps.push(send(content("Hel")));
    steps.extend(gate.map(Step::Wait));
    steps.extend(split(&content("lo, Ali"), 30)); // inside the JSON of a data line
    let emoji = content("ce! 👋");
    let inside_emoji = emoji.find('👋').unwrap() + 2;
    steps.extend(split(&emoji, inside_emoji));
    steps.push(send(chunk(json!({}), Some("stop"))));
    steps.extend(split(&usage_chunk(31, 9), 3)); // inside the `data:` field name
    steps.extend(split("data: [DONE]\n\n", 13)); // between the two newlines
    steps
}

#[tokio::test]
async fn openai_streams_the_answer_piece_by_piece_with_usage() {
    let key_var = "MOSAIC_TEST_OPENAI_STREAM_KEY";
    key(key_var);
    let gate = Arc::new(Notify::new());
    let held = gate.clone();
    let (url, _) = fake(OPENAI_PATH, move || event_stream(openai_answer(Some(held.clone())))).await;
    let runtime = openai_runtime(&openai_agent(&url, Some(key_var)));

    let (result, events) = streams_before_the_end(runtime, greeting(), gate, "Hel").await;

    result.expect("the turn succeeds");
    assert_eq!(text_of(&events), "Hello, Alice! 👋");
    assert!(events.iter().filter(|e| matches!(e, AgentEvent::Text(_))).count() >= 3, "several pieces: {events:?}");
    assert_eq!(usages(&events), vec![TokenUsage { input_tokens: 31, output_tokens: 9 }]);
    assert!(matches!(events.last(), Some(AgentEvent::Usage(_))), "usage comes last");
}

#[tokio::test]
async fn openai_request_carries_persona_roles_names_and_settings() {
    let key_var = "MOSAIC_TEST_OPENAI_REQUEST_KEY";
    let secret = key(key_var);
    let (url, seen) = fake(OPENAI_PATH, || event_stream(openai_answer(None))).await;
    let mut agent = openai_agent(&url, Some(key_var));
    agent.temperature = Some(0.25);
    agent.max_tokens = Some(200);
    let context = turn(vec![
        said(Role::User, Some("alice"), "Hi there"),
        said(Role::Assistant, None, "Hello!"),
        said(Role::User, Some("@bob:example.org"), "What's 2+2?"),
    ]);

    let (result, _) = run(openai_runtime(&agent).as_ref(), &context).await;

    result.expect("the turn succeeds");
    let (headers, body) = seen.only();
    assert_eq!(headers["authorization"], format!("Bearer {secret}").as_str());
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["max_tokens"], 200);
    assert!((body["temperature"].as_f64().unwrap() - 0.25).abs() < 1e-6);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You are Helper, terse and kind."},
            {"role": "user", "name": "alice", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "@bob:example.org: What's 2+2?"},
        ])
    );
}

#[tokio::test]
async fn openai_local_server_without_a_key_gets_no_authorization_and_default_settings() {
    let (url, seen) = fake(OPENAI_PATH, || event_stream(openai_answer(None))).await;
    let mut context = greeting();
    context.system_prompt = None;

    let (result, events) = run(openai_runtime(&openai_agent(&url, None)).as_ref(), &context).await;

    result.expect("the turn succeeds");
    assert_eq!(text_of(&events), "Hello, Alice! 👋");
    let (headers, body) = seen.only();
    assert!(headers.get("authorization").is_none());
    assert!(body.get("temperature").is_none() && body.get("max_tokens").is_none(), "{body}");
    assert_eq!(body["messages"], json!([{"role": "user", "name": "alice", "content": "Say hello to me."}]));
}

#[tokio::test]
async fn openai_missing_key_variable_fails_naming_it_without_calling() {
    let (url, seen) = fake(OPENAI_PATH, || event_stream(openai_answer(None))).await;

    let (result, events) = run(openai_runtime(&openai_agent(&url, Some(UNSET_VAR))).as_ref(), &greeting()).await;

    assert!(failed(result).contains(UNSET_VAR));
    assert!(events.is_empty());
    assert_eq!(seen.count(), 0, "nothing is sent without the key");
}

#[tokio::test]
async fn openai_bad_key_fails_without_revealing_it() {
    let key_var = "MOSAIC_TEST_OPENAI_DENIED_KEY";
    let secret = key(key_var);
    // OpenAI quotes a bad key back, masked.
    let masked = format!("{}************{}", &secret[..8], &secret[secret.len() - 4..]);
    let said = format!(
        "Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."
    );
    let body =
        json!({"error": {"message": said, "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
    let (url, _) = fake(OPENAI_PATH, move || refusal(401, &[], body.clone())).await;

    let (result, _) = run(openai_runtime(&openai_agent(&url, Some(key_var))).as_ref(), &greeting()).await;

    let message = failed(result);
    assert!(message.contains("401") && message.contains("Incorrect API key provided"), "{message}");
    assert!(!message.contains(secret) && !message.contains(&masked), "{message}");
    assert!(!message.contains(&secret[secret.len() - 4..]), "not even the masked tail: {message}");
}

#[tokio::test]
async fn openai_unknown_model_fails_with_the_servers_explanation() {
    let body = json!({"error": {
        "message": "The model `gpt-nope` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": null, "code": "model_not_found"}});
    let (url, _) = fake(OPENAI_PATH, move || refusal(404, &[], body.clone())).await;

    let (result, _) = run(openai_runtime(&openai_agent(&url, None)).as_ref(), &greeting()).await;

    assert!(failed(result).contains("The model `gpt-nope` does not exist"));
}

#[tokio::test]
async fn openai_rate_limits_and_server_errors_are_retried_later() {
    let key_var = "MOSAIC_TEST_OPENAI_ERRORS_KEY";
    key(key_var);
    let limited = json!({"error": {"message": "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1.",
        "type": "requests", "param": null, "code": "rate_limit_exceeded"}});
    let (url, _) = fake(OPENAI_PATH, move || refusal(429, &[("retry-after", "7")], limited.clone())).await;
    let message = unavailable(run(openai_runtime(&openai_agent(&url, Some(key_var))).as_ref(), &greeting()).await.0);
    assert!(message.contains("429") && message.contains("Rate limit reached"), "{message}");
    assert!(message.contains("retry after 7s"), "{message}");

    let broken = json!({"error": {"message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error", "param": null, "code": null}});
    let (url, _) = fake(OPENAI_PATH, move || refusal(500, &[], broken.clone())).await;
    let message = unavailable(run(openai_runtime(&openai_agent(&url, Some(key_var))).as_ref(), &greeting()).await.0);
    assert!(message.contains("500"), "{message}");
}

#[tokio::test]
async fn openai_refused_connection_is_retried_later() {
    let url = refused_url().await;
    unavailable(run(openai_runtime(&openai_agent(&url, None)).as_ref(), &greeting()).await.0);
}

#[tokio::test]
async fn openai_stalled_stream_times_out_and_is_retried_later() {
    let (url, _) = fake(OPENAI_PATH, || event_stream(vec![send(content("Thinking")), Step::Stall])).await;
    let mut agent = openai_agent(&url, None);
    agent.timeout_secs = 1;
    let started = Instant::now();

    let (result, events) = run(openai_runtime(&agent).as_ref(), &greeting()).await;

    let message = unavailable(result);
    assert!(message.contains("1s"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(text_of(&events), "Thinking", "what came before the stall was streamed");
}

#[tokio::test]
async fn openai_stream_cut_short_is_retried_later() {
    let (url, _) = fake(OPENAI_PATH, || event_stream(vec![send(content("Half an ans"))])).await;
    unavailable(run(openai_runtime(&openai_agent(&url, None)).as_ref(), &greeting()).await.0);
}

#[tokio::test]
async fn openai_error_inside_the_stream_is_sorted_by_cause() {
    // OpenRouter's shape for an upstream failure after the stream started.
    let upstream = json!({"id": "gen-1", "object": "chat.completion.chunk", "created": 1741569952, "model": "x",
        "error": {"code": 502, "message": "Provider returned error"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]});
    let steps = move || event_stream(vec![send(content("Par")), send(format!("data: {upstream}\n\n"))]);
    let (url, _) = fake(OPENAI_PATH, steps).await;
    let message = unavailable(run(openai_runtime(&openai_agent(&url, None)).as_ref(), &greeting()).await.0);
    assert!(message.contains("Provider returned error"), "{message}");
}

#[test]
fn openai_config_needs_a_model_and_a_base_url() {
    let mut agent = AgentConfig::new("helper", "Helper", "openai");
    let (key, message) = openai::check_config(&agent).unwrap_err();
    assert_eq!(key, "agent.base_url");
    assert!(message.contains("https://api.openai.com/v1"), "{message}");
    agent.base_url = Some("http://127.0.0.1:11434/v1".into());
    let (key, message) = openai::check_config(&agent).unwrap_err();
    assert_eq!(key, "agent.model");
    assert!(message.contains("e.g."), "{message}");
    agent.model = Some("llama3.2".into());
    assert_eq!(openai::check_config(&agent), Ok(()));
    agent.base_url = Some("api.openai.com/v1".into());
    assert_eq!(openai::check_config(&agent).unwrap_err().0, "agent.base_url");
}

// ---------------------------------------------------------------------------------------
// Anthropic Messages API.

const ANTHROPIC_PATH: &str = "/v1/messages";

fn anthropic_agent(base_url: &str, key_var: &str) -> AgentConfig {
    set_keys();
    let mut agent = AgentConfig::new("helper", "Helper", "anthropic");
    agent.base_url = Some(base_url.into());
    agent.model = Some("claude-sonnet-4-5".into());
    agent.api_key_env = Some(key_var.into());
    agent
}

fn anthropic_runtime(agent: &AgentConfig) -> Arc<dyn AgentRuntime> {
    Arc::new(anthropic::AnthropicRuntime::new(agent).expect("a valid anthropic agent"))
}

fn sse(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn text_delta(text: &str) -> String {
    sse(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
    )
}

fn message_start(input_tokens: u64) -> String {
    sse(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "content": [],
            "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}}}),
    )
}

fn anthropic_answer(gate: Option<Arc<Notify>>) -> Vec<Step> {
    let mut steps = vec![
        send(message_start(25)),
        send(sse(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        )),
        send(sse("ping", json!({"type": "ping"}))),
        send(text_delta("Hello")),
    ];
    steps.extend(gate.map(Step::Wait));
    steps.extend(split(&text_delta(", Ali"), 26)); // just before the `event:` line's newline
    let emoji = text_delta("ce! 👋");
    let inside_emoji = emoji.find('👋').unwrap() + 1;
    steps.extend(split(&emoji, inside_emoji));
    steps.push(send(sse("content_block_stop", json!({"type": "content_block_stop", "index": 0}))));
    steps.extend(split(
        &sse("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 15}})),
        40,
    ));
    steps.push(send(sse("message_stop", json!({"type": "message_stop"}))));
    steps
}

#[tokio::test]
async fn anthropic_streams_the_answer_piece_by_piece_with_usage() {
    let key_var = "MOSAIC_TEST_ANTHROPIC_STREAM_KEY";
    key(key_var);
    let gate = Arc::new(Notify::new());
    let held = gate.clone();
    let (url, _) = fake(ANTHROPIC_PATH, move || event_stream(anthropic_answer(Some(held.clone())))).await;
    let runtime = anthropic_runtime(&anthropic_agent(&url, key_var));

    let (result, events) = streams_before_the_end(runtime, greeting(), gate, "Hello").await;

    result.expect("the turn succeeds");
    assert_eq!(text_of(&events), "Hello, Alice! 👋");
    assert_eq!(usages(&events), vec![TokenUsage { input_tokens: 25, output_tokens: 15 }]);
    assert!(matches!(events.last(), Some(AgentEvent::Usage(_))), "usage comes last");
}

#[tokio::test]
async fn anthropic_request_has_headers_system_and_alternating_messages() {
    let key_var = "MOSAIC_TEST_ANTHROPIC_REQUEST_KEY";
    let secret = key(key_var);
    let (url, seen) = fake(ANTHROPIC_PATH, || event_stream(anthropic_answer(None))).await;
    let mut agent = anthropic_agent(&url, key_var);
    agent.temperature = Some(0.5);
    let context = turn(vec![
        said(Role::Assistant, None, "Welcome to the room."),
        said(Role::User, Some("@alice:example.org"), "Hi"),
        said(Role::User, Some("@bob:example.org"), "Hello too"),
        said(Role::Assistant, None, "Hello both!"),
        said(Role::User, Some("@alice:example.org"), "What's 2+2?"),
    ]);

    let (result, _) = run(anthropic_runtime(&agent).as_ref(), &context).await;

    result.expect("the turn succeeds");
    let (headers, body) = seen.only();
    assert_eq!(headers["x-api-key"], secret);
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert!(headers.get("authorization").is_none());
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(body["max_tokens"], 1024, "the API requires max_tokens; the default fills in");
    assert_eq!(body["stream"], true);
    assert_eq!(body["system"], "You are Helper, terse and kind.");
    assert!((body["temperature"].as_f64().unwrap() - 0.5).abs() < 1e-6);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": "@alice:example.org: Hi\n\n@bob:example.org: Hello too"},
            {"role": "assistant", "content": "Hello both!"},
            {"role": "user", "content": "@alice:example.org: What's 2+2?"},
        ])
    );
}

#[tokio::test]
async fn anthropic_missing_key_variable_fails_naming_it_without_calling() {
    let (url, seen) = fake(ANTHROPIC_PATH, || event_stream(anthropic_answer(None))).await;

    let (result, _) = run(anthropic_runtime(&anthropic_agent(&url, UNSET_VAR)).as_ref(), &greeting()).await;

    assert!(failed(result).contains(UNSET_VAR));
    assert_eq!(seen.count(), 0, "nothing is sent without the key");
}

#[tokio::test]
async fn anthropic_bad_key_fails_without_revealing_it() {
    let key_var = "MOSAIC_TEST_ANTHROPIC_DENIED_KEY";
    let secret = key(key_var);
    let body = json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"});
    let (url, _) = fake(ANTHROPIC_PATH, move || refusal(401, &[], body.clone())).await;

    let (result, _) = run(anthropic_runtime(&anthropic_agent(&url, key_var)).as_ref(), &greeting()).await;

    let message = failed(result);
    assert!(message.contains("401") && message.contains("invalid x-api-key"), "{message}");
    assert!(!message.contains(secret), "{message}");
}

#[tokio::test]
async fn anthropic_rate_limits_overload_and_server_errors_are_retried_later() {
    let key_var = "MOSAIC_TEST_ANTHROPIC_ERRORS_KEY";
    key(key_var);
    for (status, kind, said) in [
        (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
        (500, "api_error", "Internal server error"),
        (529, "overloaded_error", "Overloaded"),
    ] {
        let body = json!({"type": "error", "error": {"type": kind, "message": said}});
        let (url, _) = fake(ANTHROPIC_PATH, move || refusal(status, &[("retry-after", "30")], body.clone())).await;
        let runtime = anthropic_runtime(&anthropic_agent(&url, key_var));
        let message = unavailable(run(runtime.as_ref(), &greeting()).await.0);
        assert!(message.contains(&status.to_string()) && message.contains(said), "{message}");
    }

    let body =
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}});
    let (url, _) = fake(ANTHROPIC_PATH, move || refusal(400, &[], body.clone())).await;
    let message = failed(run(anthropic_runtime(&anthropic_agent(&url, key_var)).as_ref(), &greeting()).await.0);
    assert!(message.contains("max_tokens: Field required"), "{message}");
}

#[tokio::test]
async fn anthropic_error_event_mid_stream_is_sorted_by_kind() {
    let key_var = "MOSAIC_TEST_ANTHROPIC_ERRORS_KEY";
    key(key_var);
    let error =
        |kind: &str, said: &str| sse("error", json!({"type": "error", "error": {"type": kind, "message": said}}));
    let overloaded = error("overloaded_error", "Overloaded");
    let steps = move || event_stream(vec![send(message_start(10)), send(text_delta("Par")), send(overloaded.clone())]);
    let (url, _) = fake(ANTHROPIC_PATH, steps).await;
    let message = unavailable(run(anthropic_runtime(&anthropic_agent(&url, key_var)).as_ref(), &greeting()).await.0);
    assert!(message.contains("Overloaded"), "{message}");

    let invalid = error("invalid_request_error", "prompt is too long");
    let (url, _) =
        fake(ANTHROPIC_PATH, move || event_stream(vec![send(message_start(10)), send(invalid.clone())])).await;
    let message = failed(run(anthropic_runtime(&anthropic_agent(&url, key_var)).as_ref(), &greeting()).await.0);
    assert!(message.contains("prompt is too long"), "{message}");
}

#[tokio::test]
async fn anthropic_refused_connection_is_retried_later() {
    let key_var = "MOSAIC_TEST_ANTHROPIC_ERRORS_KEY";
    key(key_var);
    let url = refused_url().await;
    unavailable(run(anthropic_runtime(&anthropic_agent(&url, key_var)).as_ref(), &greeting()).await.0);
}

#[tokio::test]
async fn anthropic_server_that_never_answers_times_out_and_is_retried_later() {
    let key_var = "MOSAIC_TEST_ANTHROPIC_ERRORS_KEY";
    key(key_var);
    let mut agent = anthropic_agent(&silent_url().await, key_var);
    agent.timeout_secs = 1;
    let started = Instant::now();

    let message = unavailable(run(anthropic_runtime(&agent).as_ref(), &greeting()).await.0);

    assert!(message.contains("1s"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn anthropic_stream_cut_before_message_stop_is_retried_later() {
    let key_var = "MOSAIC_TEST_ANTHROPIC_ERRORS_KEY";
    key(key_var);
    let (url, _) = fake(ANTHROPIC_PATH, || event_stream(vec![send(message_start(10)), send(text_delta("Half"))])).await;
    unavailable(run(anthropic_runtime(&anthropic_agent(&url, key_var)).as_ref(), &greeting()).await.0);
}

#[test]
fn anthropic_config_needs_a_base_url_model_and_key_variable() {
    let mut agent = AgentConfig::new("helper", "Helper", "anthropic");
    assert_eq!(anthropic::check_config(&agent).unwrap_err().0, "agent.base_url");
    agent.base_url = Some("https://api.anthropic.com".into());
    assert_eq!(anthropic::check_config(&agent).unwrap_err().0, "agent.model");
    agent.model = Some("claude-sonnet-4-5".into());
    let (key, message) = anthropic::check_config(&agent).unwrap_err();
    assert_eq!(key, "agent.api_key_env");
    assert!(message.contains("ANTHROPIC_API_KEY"), "{message}");
    agent.api_key_env = Some("ANTHROPIC_API_KEY".into());
    assert_eq!(anthropic::check_config(&agent), Ok(()));
}
