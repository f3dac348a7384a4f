//! A fake OpenAI-compatible endpoint: `POST /v1/chat/completions` answering with a
//! streamed `chat.completion.chunk` SSE body, as the public API documents it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// How the fake answers.
#[derive(Clone)]
pub struct Script {
    /// The answer, streamed as these pieces.
    pub pieces: Vec<String>,
    /// Pause before each piece.
    pub delay: Duration,
    /// The first requests get 503 (a model server that is down).
    pub fail_first: usize,
}

#[derive(Clone)]
struct Shared {
    script: Script,
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

pub struct FakeOpenAi {
    pub base_url: String,
    requests: Arc<AtomicUsize>,
    pub bodies: Arc<Mutex<Vec<Value>>>,
}

impl FakeOpenAi {
    pub async fn start(script: Script) -> FakeOpenAi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, script)
    }

    /// Serves on a listener bound earlier (to start a "down" server later on a known port).
    pub fn serve(listener: tokio::net::TcpListener, script: Script) -> FakeOpenAi {
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let shared = Shared { script, requests: Arc::default(), bodies: Arc::default() };
        let (requests, bodies) = (shared.requests.clone(), shared.bodies.clone());
        let app = Router::new().route("/v1/chat/completions", post(completions)).with_state(shared);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeOpenAi { base_url, requests, bodies }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn completions(State(shared): State<Shared>, body: axum::Json<Value>) -> Response {
    let n = shared.requests.fetch_add(1, Ordering::SeqCst);
    shared.bodies.lock().unwrap().push(body.0.clone());
    if n < shared.script.fail_first {
        let error = json!({"error": {"message": "The server is overloaded", "type": "server_error"}});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(error)).into_response();
    }
    let model = body["model"].as_str().unwrap_or("fake").to_string();
    let script = shared.script.clone();
    let stream = async_stream(script, model);
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    });
    format!("data: {chunk}\n\n")
}

fn async_stream(script: Script, model: String) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        let _ = tx.send(Ok(chunk(&model, json!({"role": "assistant", "content": ""}), None))).await;
        for piece in &script.pieces {
            tokio::time::sleep(script.delay).await;
            if tx.send(Ok(chunk(&model, json!({"content": piece}), None))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(chunk(&model, json!({}), Some("stop")))).await;
        let usage = json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
            "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": script.pieces.len(), "total_tokens": 11 + script.pieces.len()}
        });
        let _ = tx.send(Ok(format!("data: {usage}\n\n"))).await;
        let _ = tx.send(Ok("data: [DONE]\n\n".to_string())).await;
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}
