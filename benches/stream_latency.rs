//! Streaming latency benchmark: how long mosaic-as takes to show the start of an agent's
//! answer in Matrix once the model has started writing it.
//!
//! Everything runs on 127.0.0.1:
//!
//! - a fake homeserver answering the client-server calls mosaic-as makes (registering
//!   ghosts, `whoami`, joins, `joined_members`, sends), which timestamps every
//!   `PUT /_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}` as it arrives;
//! - a fake OpenAI-compatible model streaming `chat.completion.chunk` SSE, which
//!   timestamps the moment right before it writes the first content chunk;
//! - the real binary (`init` into a temporary directory, one `openai` agent appended,
//!   then `serve`).
//!
//! The agent is invited into a room by a pushed appservice transaction, then each turn
//! pushes one message from the only person in the room, so the agent answers every one.
//! Turns run one at a time: the next message is pushed once the previous answer has been
//! shown and finalised (its closing edit arrived). After a warm-up it prints p50/p99/min/
//! max of:
//!
//! - first model chunk → first Matrix send: the latency mosaic-as adds to streaming;
//! - message pushed → model request: ingest, routing and turn scheduling, for context;
//! - message pushed → first Matrix send: end to end, including the fake model's
//!   `FIRST_TOKEN_DELAY` before its first content chunk.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench stream_latency
//! ```
//!
//! The three processes share the machine's cores with whatever else runs there; the
//! figures are indicative, compare runs on the same box only.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::serve::ListenerExt;
use serde_json::{Value, json};
use support::{Server, event_id, http_client, millis, now_ms, percentile};
use tokio::sync::mpsc;

const WARMUP_TURNS: usize = 5;
const MEASURED_TURNS: usize = 100;
/// Measuring stops once it has run this long, and reports what it measured.
const MEASURE_BUDGET: Duration = Duration::from_secs(120);
/// Longest wait for a turn's first message, and then for its final edit.
const TURN_TIMEOUT: Duration = Duration::from_secs(30);

/// The fake model's "thinking" time between opening the stream and its first content.
const FIRST_TOKEN_DELAY: Duration = Duration::from_millis(20);
/// Pause between the answer's later chunks.
const CHUNK_INTERVAL: Duration = Duration::from_millis(20);
const ANSWER: &[&str] = &["Loopback ", "latency ", "is ", "small, ", "mostly."];

const SERVER_NAME: &str = "bench";
const BOT: &str = "@mosaic-bot:bench";
const AGENT_ID: &str = "writer";
const AGENT: &str = "@mosaic_agent_writer:bench";
const PERSON: &str = "@alice:bench";
const ROOM: &str = "!bench:bench";
/// Marks the turn number in a message body, so the fake model knows which turn it serves.
const TURN_TAG: &str = "bench-turn-";

fn main() -> ExitCode {
    support::run_main("stream latency", run())
}

async fn run() -> anyhow::Result<()> {
    println!(
        "mosaic-as streaming latency: openai runtime, fake model and fake homeserver on loopback, \
         {WARMUP_TURNS} warm-up + {MEASURED_TURNS} measured turns, one at a time"
    );
    let (homeserver, mut sends) = FakeHomeserver::start().await?;
    let model = FakeModel::start().await?;
    let client = http_client()?;
    // `init` against the fake homeserver, plus one `openai` agent on the fake model.
    let agent = format!(
        "\n[[agent]]\nid = \"{AGENT_ID}\"\nruntime = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\n",
        model.url
    );
    let mut server = Server::start(&["--server-name", SERVER_NAME, "--homeserver-url", &homeserver.url], Some(&agent))?;
    let result = async {
        // `/ready` answers 200 once connected to the fake homeserver.
        server.wait_until_ok(&client, "/ready").await?;
        let bench = Bench { client: &client, server: &server, model: &model };
        bench.join_room(&mut sends).await?;
        for n in 0..WARMUP_TURNS {
            bench.turn(n, &mut sends).await?;
        }
        let start = Instant::now();
        let mut samples = Vec::with_capacity(MEASURED_TURNS);
        for n in WARMUP_TURNS..WARMUP_TURNS + MEASURED_TURNS {
            if start.elapsed() > MEASURE_BUDGET {
                println!("(stopped at the {MEASURE_BUDGET:?} time budget)");
                break;
            }
            samples.push(bench.turn(n, &mut sends).await?);
        }
        print_figures(&samples);
        anyhow::Ok(())
    }
    .await;
    let stopped = server.stop();
    if result.is_err() {
        server.print_log_tail();
    }
    result.and(stopped)
}

// ---------------------------------------------------------------------------------------
// Turns

/// Timestamps of one measured turn.
struct Sample {
    pushed: Instant,
    model_request: Instant,
    first_chunk: Instant,
    first_send: Instant,
}

struct Bench<'a> {
    client: &'a reqwest::Client,
    server: &'a Server,
    model: &'a FakeModel,
}

impl Bench<'_> {
    /// Invites the agent as the person; mosaic-as joins and lists the members.
    async fn join_room(&self, sends: &mut mpsc::UnboundedReceiver<HsEvent>) -> anyhow::Result<()> {
        let invite = json!({
            "type": "m.room.member",
            "room_id": ROOM,
            "sender": PERSON,
            "state_key": AGENT,
            "event_id": event_id(),
            "origin_server_ts": now_ms(),
            "content": {"membership": "invite"},
            "unsigned": {"age": 1},
        });
        self.push("invite", invite).await?;
        let deadline = Instant::now() + TURN_TIMEOUT;
        next_event(sends, deadline, "joined_members call after the invite", |e| {
            matches!(e, HsEvent::MembersListed).then_some(())
        })
        .await
    }

    /// Pushes message `n` and waits for the agent's first message answering it, then for
    /// that message's final edit, so that the next turn starts on an idle service.
    async fn turn(&self, n: usize, sends: &mut mpsc::UnboundedReceiver<HsEvent>) -> anyhow::Result<Sample> {
        let message_id = event_id();
        let message = json!({
            "type": "m.room.message",
            "room_id": ROOM,
            "sender": PERSON,
            "event_id": message_id,
            "origin_server_ts": now_ms(),
            "content": {"msgtype": "m.text", "body": format!("{TURN_TAG}{n}: how slow is loopback?")},
            "unsigned": {"age": 1},
        });
        let pushed = Instant::now();
        self.push(&format!("turn-{n}"), message).await?;
        let deadline = Instant::now() + TURN_TIMEOUT;
        let (first_send, answer_id) = next_event(sends, deadline, &format!("answer to turn {n}"), |e| match e {
            HsEvent::Reply { at, in_reply_to, event_id, sender, msgtype, body } if in_reply_to == message_id => {
                Some(if sender.as_deref() != Some(AGENT) || msgtype != "m.text" {
                    Err(anyhow::anyhow!("turn {n} was answered by {sender:?} with {msgtype} {body:?}"))
                } else {
                    Ok((at, event_id))
                })
            }
            _ => None,
        })
        .await??;
        let deadline = Instant::now() + TURN_TIMEOUT;
        next_event(sends, deadline, &format!("final edit of the answer to turn {n}"), |e| {
            matches!(e, HsEvent::Edit { of } if of == answer_id).then_some(())
        })
        .await?;
        let Some(ModelTurn { request: model_request, first_chunk: Some(first_chunk) }) = self.model.turn(n) else {
            bail!("turn {n} was answered without the fake model streaming its answer");
        };
        Ok(Sample { pushed, model_request, first_chunk, first_send })
    }

    /// Pushes one event in a transaction, as the homeserver does.
    async fn push(&self, txn_id: &str, event: Value) -> anyhow::Result<()> {
        let response = self
            .client
            .put(format!("{}/_matrix/app/v1/transactions/{txn_id}", self.server.base_url))
            .bearer_auth(&self.server.hs_token)
            .json(&json!({ "events": [event] }))
            .send()
            .await
            .with_context(|| format!("transaction {txn_id}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("transaction {txn_id} answered {status}: {}", response.text().await.unwrap_or_default());
        }
        Ok(())
    }
}

/// Waits for the first homeserver event `pick` accepts, skipping the others.
async fn next_event<T>(
    events: &mut mpsc::UnboundedReceiver<HsEvent>,
    deadline: Instant,
    what: &str,
    mut pick: impl FnMut(HsEvent) -> Option<T>,
) -> anyhow::Result<T> {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, events.recv()).await {
            Ok(Some(event)) => {
                if let Some(found) = pick(event) {
                    return Ok(found);
                }
            }
            Ok(None) => bail!("the fake homeserver stopped"),
            Err(_) => bail!("no {what} reached the fake homeserver within {TURN_TIMEOUT:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The fake homeserver

/// What the fake homeserver saw, in arrival order.
enum HsEvent {
    /// An `m.room.message` replying to `in_reply_to`: an answer's first message.
    Reply { at: Instant, in_reply_to: String, event_id: String, sender: Option<String>, msgtype: String, body: String },
    /// An `m.replace` edit of `of`.
    Edit { of: String },
    /// `joined_members` was called (after joining on an invite).
    MembersListed,
}

#[derive(Clone)]
struct FakeHomeserver {
    url: String,
    events: mpsc::UnboundedSender<HsEvent>,
    next_event: Arc<AtomicU64>,
}

impl FakeHomeserver {
    async fn start() -> anyhow::Result<(Self, mpsc::UnboundedReceiver<HsEvent>)> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let (events, received) = mpsc::unbounded_channel();
        let hs = Self { url: format!("http://{}", listener.local_addr()?), events, next_event: Arc::default() };
        let client = "/_matrix/client/v3";
        let app = Router::new()
            .route(&format!("{client}/register"), post(hs_register))
            .route(&format!("{client}/account/whoami"), get(|| async { ok(json!({ "user_id": BOT })) }))
            .route("/_matrix/client/v1/appservice/{id}/ping", post(|| async { ok(json!({ "duration_ms": 1 })) }))
            .route(&format!("{client}/profile/{{user}}/{{field}}"), put(|| async { ok(json!({})) }))
            .route(&format!("{client}/join/{{room}}"), post(hs_join))
            .route(&format!("{client}/rooms/{{room}}/join"), post(hs_join))
            .route(&format!("{client}/rooms/{{room}}/joined_members"), get(hs_joined_members))
            .route(&format!("{client}/capabilities"), get(hs_capabilities))
            .route(&format!("{client}/rooms/{{room}}/send/{{event_type}}/{{txn}}"), put(hs_send))
            .fallback(hs_unknown)
            .with_state(hs.clone());
        spawn_server(listener, app);
        Ok((hs, received))
    }
}

/// Serves `app` with `TCP_NODELAY`, as real model servers and homeservers do: otherwise
/// Nagle's algorithm holds a small SSE chunk back until the previous one is acknowledged,
/// and the delayed ACK adds tens of milliseconds that are not mosaic-as's.
fn spawn_server(listener: tokio::net::TcpListener, app: Router) {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
}

fn ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn hs_register(body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let localpart = request["username"].as_str().unwrap_or("unnamed");
    ok(json!({ "user_id": format!("@{localpart}:{SERVER_NAME}") }))
}

async fn hs_join(UrlPath(room): UrlPath<String>) -> Response {
    ok(json!({ "room_id": room }))
}

async fn hs_joined_members(State(hs): State<FakeHomeserver>) -> Response {
    let _ = hs.events.send(HsEvent::MembersListed);
    ok(json!({ "joined": { PERSON: {"display_name": "Alice"}, AGENT: {"display_name": "Writer"} } }))
}

async fn hs_capabilities() -> Response {
    ok(json!({ "capabilities": { "m.room_versions": { "default": "11", "available": { "11": "stable" } } } }))
}

async fn hs_send(
    State(hs): State<FakeHomeserver>,
    UrlPath((_room, event_type, _txn)): UrlPath<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let event_id = format!("${}", hs.next_event.fetch_add(1, Ordering::Relaxed));
    let content: Value = serde_json::from_slice(&body).unwrap_or_default();
    let relation = &content["m.relates_to"];
    let event = if event_type != "m.room.message" {
        None
    } else if relation["rel_type"] == "m.replace" {
        relation["event_id"].as_str().map(|of| HsEvent::Edit { of: of.to_string() })
    } else {
        relation["m.in_reply_to"]["event_id"].as_str().map(|in_reply_to| HsEvent::Reply {
            at,
            in_reply_to: in_reply_to.to_string(),
            event_id: event_id.clone(),
            sender: query.get("user_id").cloned(),
            msgtype: content["msgtype"].as_str().unwrap_or_default().to_string(),
            body: content["body"].as_str().unwrap_or_default().to_string(),
        })
    };
    if let Some(event) = event {
        let _ = hs.events.send(event);
    }
    ok(json!({ "event_id": event_id }))
}

async fn hs_unknown(method: Method, uri: Uri) -> Response {
    eprintln!("fake homeserver: unhandled {method} {}", uri.path());
    (StatusCode::NOT_FOUND, axum::Json(json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})))
        .into_response()
}

// ---------------------------------------------------------------------------------------
// The fake model

#[derive(Clone, Copy)]
struct ModelTurn {
    /// When the chat completion request arrived.
    request: Instant,
    /// Right before the first content chunk was written.
    first_chunk: Option<Instant>,
}

/// An OpenAI-compatible endpoint streaming `ANSWER` for every request.
#[derive(Clone)]
struct FakeModel {
    url: String,
    turns: Arc<Mutex<HashMap<usize, ModelTurn>>>,
}

impl FakeModel {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let model = Self { url: format!("http://{}/v1", listener.local_addr()?), turns: Arc::default() };
        let app = Router::new().route("/v1/chat/completions", post(completions)).with_state(model.clone());
        spawn_server(listener, app);
        Ok(model)
    }

    fn turn(&self, n: usize) -> Option<ModelTurn> {
        self.turns.lock().expect("model turns").get(&n).copied()
    }
}

/// The turn number tagged in the last message of a chat completion request.
fn turn_number(request: &Value) -> Option<usize> {
    let content = request["messages"].as_array()?.last()?["content"].as_str()?;
    let tagged = &content[content.find(TURN_TAG)? + TURN_TAG.len()..];
    tagged[..tagged.find(|c: char| !c.is_ascii_digit()).unwrap_or(tagged.len())].parse().ok()
}

async fn completions(State(model): State<FakeModel>, body: Bytes) -> Response {
    let request_at = Instant::now();
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let turn = turn_number(&request);
    match turn {
        Some(n) => {
            model.turns.lock().expect("model turns").insert(n, ModelTurn { request: request_at, first_chunk: None });
        }
        None => eprintln!("fake model: a request without a {TURN_TAG} tag in its last message"),
    }
    let name = request["model"].as_str().unwrap_or("fake").to_string();
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        let _ = tx.send(Ok(chunk(&name, json!({"role": "assistant", "content": ""}), None))).await;
        tokio::time::sleep(FIRST_TOKEN_DELAY).await;
        for (i, piece) in ANSWER.iter().enumerate() {
            if i == 0 {
                if let Some(n) = turn
                    && let Some(t) = model.turns.lock().expect("model turns").get_mut(&n)
                {
                    t.first_chunk = Some(Instant::now());
                }
            } else {
                tokio::time::sleep(CHUNK_INTERVAL).await;
            }
            if tx.send(Ok(chunk(&name, json!({"content": piece}), None))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(chunk(&name, json!({}), Some("stop")))).await;
        let usage = json!({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": name,
            "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": ANSWER.len(), "total_tokens": 12 + ANSWER.len()}
        });
        let _ = tx.send(Ok(format!("data: {usage}\n\n"))).await;
        let _ = tx.send(Ok("data: [DONE]\n\n".to_string())).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("static response parts")
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    });
    format!("data: {chunk}\n\n")
}

// ---------------------------------------------------------------------------------------
// Reporting

fn print_figures(samples: &[Sample]) {
    let series = |f: fn(&Sample) -> Duration| {
        let mut durations: Vec<Duration> = samples.iter().map(f).collect();
        durations.sort();
        durations
    };
    print_line("first model chunk → first Matrix send", &series(|s| s.first_send - s.first_chunk), "");
    print_line("message pushed → model request", &series(|s| s.model_request - s.pushed), "");
    print_line(
        "message pushed → first Matrix send",
        &series(|s| s.first_send - s.pushed),
        &format!(", incl. the model's {} ms to its first chunk", FIRST_TOKEN_DELAY.as_millis()),
    );
}

fn print_line(label: &str, sorted: &[Duration], note: &str) {
    println!(
        "{label:<40} p50 {:>7.2} ms  p99 {:>7.2} ms  min {:>7.2} ms  max {:>7.2} ms  (n={}{note})",
        millis(percentile(sorted, 50.0)),
        millis(percentile(sorted, 99.0)),
        millis(sorted.first().copied().unwrap_or_default()),
        millis(sorted.last().copied().unwrap_or_default()),
        sorted.len(),
    );
}
