//! The Matrix adapter's sends against a scripted homeserver that rate-limits and fails:
//! it waits as told, backs off, and reuses one transaction id so nothing is doubled.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use mosaic_as::config::Config;
use mosaic_as::matrix::MatrixAdapter;
use mosaic_as::protocol::{ChannelAdapter, ChannelMessage, ChannelSendError, ContentType, SenderType};
use mosaic_as::store::Store;
use serde_json::json;

#[derive(Default)]
struct Script {
    /// Answers for successive sends: status and body.
    answers: Vec<(u16, serde_json::Value)>,
    /// (txn id, query, when) of each send received.
    sends: Vec<(String, String, Instant)>,
    registered: Vec<String>,
    /// How many of the next sends land (the event is created) but are answered 502, as
    /// when a proxy times out or the homeserver stops before it answers.
    lose_answers: usize,
    /// Events created, oldest first: (event id, sender, content).
    events: Vec<(String, String, serde_json::Value)>,
    /// History reads.
    lookups: usize,
}

type Shared = Arc<Mutex<Script>>;

async fn register(State(script): State<Shared>, body: axum::Json<serde_json::Value>) -> impl IntoResponse {
    let name = body["username"].as_str().unwrap_or_default().to_string();
    script.lock().unwrap().registered.push(name.clone());
    axum::Json(json!({"user_id": format!("@{name}:test")}))
}

async fn profile() -> impl IntoResponse {
    axum::Json(json!({}))
}

async fn send(
    State(script): State<Shared>,
    Path((_room, _kind, txn)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    content: axum::Json<serde_json::Value>,
) -> impl IntoResponse {
    let mut script = script.lock().unwrap();
    let query = query.unwrap_or_default();
    script.sends.push((txn, query.clone(), Instant::now()));
    if !script.answers.is_empty() {
        let (status, body) = script.answers.remove(0);
        return (StatusCode::from_u16(status).unwrap(), axum::Json(body));
    }
    let event_id = format!("$event{}", script.events.len());
    let sender = sender_of(&query);
    script.events.push((event_id.clone(), sender, content.0));
    if script.lose_answers > 0 {
        script.lose_answers -= 1;
        return (StatusCode::BAD_GATEWAY, axum::Json(json!({"errcode": "M_UNKNOWN", "error": "timed out"})));
    }
    (StatusCode::OK, axum::Json(json!({"event_id": event_id})))
}

/// A file of as many bytes as its media id says (`mxc://test/2000` is 2,000 bytes); the
/// first two are also announced in `Content-Length`, the others streamed without it.
async fn download(Path((_server, id)): Path<(String, String)>) -> axum::response::Response {
    let size: usize = id.parse().unwrap_or(0);
    let bytes = vec![b'x'; size];
    if id.ends_with('1') {
        let chunks =
            futures::stream::iter(bytes.chunks(100).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
        return axum::response::Response::builder()
            .header("content-type", "application/octet-stream")
            .body(axum::body::Body::from_stream(chunks))
            .unwrap();
    }
    ([("content-type", "application/octet-stream")], bytes).into_response()
}

/// The asserted user of an appservice request.
fn sender_of(query: &str) -> String {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "user_id")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `/messages`, newest first, filtered by sender as the request's filter asks.
async fn messages(State(script): State<Shared>, RawQuery(query): RawQuery) -> impl IntoResponse {
    let mut script = script.lock().unwrap();
    script.lookups += 1;
    let query = query.unwrap_or_default();
    let filter: serde_json::Value = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "filter")
        .and_then(|(_, v)| serde_json::from_str(&v).ok())
        .unwrap_or_default();
    let senders: Vec<&str> =
        filter["senders"].as_array().map(|s| s.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    let chunk: Vec<serde_json::Value> = script
        .events
        .iter()
        .rev()
        .filter(|(_, sender, _)| senders.is_empty() || senders.contains(&sender.as_str()))
        .map(|(id, sender, content)| {
            json!({"event_id": id, "sender": sender, "type": "m.room.message", "content": content,
                   "origin_server_ts": 0, "room_id": "!room:test"})
        })
        .collect();
    axum::Json(json!({"start": "s0", "chunk": chunk}))
}

async fn fake_homeserver(answers: Vec<(u16, serde_json::Value)>) -> (String, Shared) {
    let script: Shared = Arc::new(Mutex::new(Script { answers, ..Default::default() }));
    let app = Router::new()
        .route("/_matrix/client/v3/register", post(register))
        .route("/_matrix/client/v3/profile/{user}/{field}", put(profile))
        .route("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}", put(send))
        .route("/_matrix/client/v3/rooms/{room}/messages", get(messages))
        .route("/_matrix/client/v1/media/download/{server}/{id}", get(download))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, script)
}

async fn adapter(homeserver: &str) -> (MatrixAdapter, tempfile::TempDir) {
    adapter_with(homeserver, "").await
}

async fn adapter_with(homeserver: &str, sections: &str) -> (MatrixAdapter, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&format!(
        r#"
        {sections}
        [homeserver]
        url = "{homeserver}"
        server_name = "test"
        [appservice]
        url = "http://127.0.0.1:1"
        as_token = "as-token-as-token-as-token"
        hs_token = "hs-token-hs-token-hs-token"
        [database]
        url = "sqlite://{}/db.sqlite"
        "#,
        dir.path().display()
    ))
    .unwrap();
    let store = Store::open(&config.database.url).await.unwrap();
    (MatrixAdapter::new(Arc::new(config), store), dir)
}

fn agent_message() -> ChannelMessage {
    ChannelMessage::new("!room:test", "echo", SenderType::Agent, "hello", ContentType::Text)
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_waited_out_with_one_transaction_id() {
    let (url, script) = fake_homeserver(vec![
        (429, json!({"errcode": "M_LIMIT_EXCEEDED", "error": "slow down", "retry_after_ms": 700})),
        (502, json!({"errcode": "M_UNKNOWN", "error": "bad gateway"})),
    ])
    .await;
    let (adapter, _dir) = adapter(&url).await;
    adapter.send_message("!room:test", &agent_message()).await.unwrap();

    let script = script.lock().unwrap();
    assert_eq!(script.registered, vec!["mosaic_agent_echo"], "the ghost is registered before it speaks");
    assert_eq!(script.sends.len(), 3);
    let txn_ids: Vec<&String> = script.sends.iter().map(|(txn, _, _)| txn).collect();
    assert!(txn_ids.iter().all(|t| *t == txn_ids[0]), "every try reuses the transaction id: {txn_ids:?}");
    assert!(
        script.sends[0].1.contains("user_id=%40mosaic_agent_echo%3Atest"),
        "sent as the agent: {}",
        script.sends[0].1
    );
    let waited = script.sends[1].2 - script.sends[0].2;
    assert!(waited >= Duration::from_millis(700), "retry_after_ms was not obeyed: {waited:?}");
    assert_eq!(script.lookups, 1, "after the 502 the room is searched once before sending again");
    assert_eq!(script.events.len(), 1);
}

#[tokio::test]
async fn a_send_that_landed_but_lost_its_answer_is_found_not_repeated() {
    let (url, script) = fake_homeserver(vec![]).await;
    script.lock().unwrap().lose_answers = 1;
    let (adapter, _dir) = adapter(&url).await;
    let message = agent_message();
    adapter.send_message("!room:test", &message).await.unwrap();

    let script = script.lock().unwrap();
    assert_eq!(script.sends.len(), 1, "the event was found, so it was not sent again");
    assert_eq!(script.events.len(), 1);
    assert_eq!(script.events[0].2["mosaic.id"], message.id.to_string(), "the event carries the message id");
    assert_eq!(script.lookups, 1);
}

#[tokio::test]
async fn a_job_left_over_from_an_earlier_run_looks_before_it_sends() {
    let (url, script) = fake_homeserver(vec![]).await;
    let (adapter, _dir) = adapter(&url).await;
    let message = agent_message();
    adapter.resend_message("!room:test", &message).await.unwrap();
    adapter.resend_message("!room:test", &message).await.unwrap();

    let script = script.lock().unwrap();
    assert_eq!(script.lookups, 1, "the first resend searched the room; the second found the event recorded");
    assert_eq!(script.sends.len(), 1, "the second resend did not send again: {:?}", script.sends);
    assert_eq!(script.events.len(), 1);
}

#[tokio::test]
async fn a_refused_send_is_terminal_and_a_lasting_outage_is_transient() {
    let (url, _script) = fake_homeserver(vec![(400, json!({"errcode": "M_BAD_JSON", "error": "no"}))]).await;
    let (adapter, _dir) = adapter(&url).await;
    let refused = adapter.send_message("!room:test", &agent_message()).await.unwrap_err();
    assert!(matches!(refused, ChannelSendError::Terminal(_)), "{refused:?}");

    let (down, _dir) = adapter_to_closed_port().await;
    let outage = down.send_message("!room:test", &agent_message()).await.unwrap_err();
    assert!(matches!(outage, ChannelSendError::Transient { .. }), "{outage:?}");
}

async fn adapter_to_closed_port() -> (MatrixAdapter, tempfile::TempDir) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    adapter(&url).await
}

#[tokio::test]
async fn files_over_the_size_cap_are_refused_without_being_read_whole() {
    use mosaic_as::protocol::{MediaError, MediaRepository};
    let (url, _script) = fake_homeserver(vec![]).await;
    let (adapter, _dir) = adapter_with(&url, "[media]\nmax_bytes = 1000").await;
    assert_eq!(adapter.download("mxc://test/1000").await.unwrap().bytes.len(), 1000);
    for (uri, how) in [("mxc://test/2000", "announced"), ("mxc://test/2001", "streamed")] {
        match adapter.download(uri).await {
            Err(MediaError::Rejected(reason)) => assert!(reason.contains("larger than 1000"), "{reason}"),
            other => panic!("a {how} file over the cap must be refused for good: {other:?}"),
        }
    }
}
