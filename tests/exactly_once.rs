//! Exactly once through the two faults a fixed transaction id does not cover: the
//! homeserver restarting (and forgetting its transaction ids) while an answer's send is
//! in flight, and a backlog that piled up while mosaic-as was stopped.
//!
//! Both tests stop things the other relies on, so they take turns.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use support::{Person, Service, body, homeserver, homeserver_url, slot};
use tokio::sync::Mutex;

static TURNS: Mutex<()> = Mutex::const_new(());

/// A proxy between mosaic-as and the homeserver that, once, lets an agent's message
/// through to the homeserver, then restarts the homeserver before answering 504: the
/// event exists, mosaic-as does not know it, and the homeserver no longer remembers the
/// transaction id.
#[derive(Clone)]
struct CuttingProxy {
    upstream: String,
    agent: String,
    http: reqwest::Client,
    /// Set once the homeserver is back after the cut.
    cut: Arc<AtomicBool>,
    cutting: Arc<AtomicBool>,
    /// Set if the homeserver did not come back after the cut.
    restart_failed: Arc<AtomicBool>,
}

async fn forward(State(proxy): State<CuttingProxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let bytes = axum::body::to_bytes(body, 16 * 1024 * 1024).await.unwrap_or_default();
    let agent_message = parts.method == "PUT"
        && path_and_query.contains("/send/m.room.message/")
        && path_and_query.contains(&url::form_urlencoded::byte_serialize(proxy.agent.as_bytes()).collect::<String>());
    let mut outgoing = proxy.http.request(parts.method.clone(), format!("{}{path_and_query}", proxy.upstream));
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = match outgoing.body(bytes.to_vec()).send().await {
        Ok(answer) => answer,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    if agent_message && status.is_success() && !proxy.cutting.swap(true, Ordering::SeqCst) {
        // mosaic-as may give up on this request meanwhile, which drops this handler: the
        // restart runs on its own.
        let restart_failed = proxy.restart_failed.clone();
        let restart = tokio::task::spawn_blocking(move || {
            homeserver().stop();
            homeserver().start_again();
            proxy.cut.store(true, Ordering::SeqCst);
        });
        if restart.await.is_err() {
            restart_failed.store(true, Ordering::SeqCst);
        }
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    let mut response = Response::builder().status(status.as_u16());
    for (name, value) in &headers {
        if name != "transfer-encoding" && name != "content-length" {
            response = response.header(name, value);
        }
    }
    response.body(Body::from(bytes)).unwrap()
}

async fn start_proxy(agent: &str) -> (String, Arc<AtomicBool>, Arc<AtomicBool>) {
    let cut = Arc::new(AtomicBool::new(false));
    let restart_failed = Arc::new(AtomicBool::new(false));
    let proxy = CuttingProxy {
        upstream: homeserver_url(),
        agent: agent.to_string(),
        http: reqwest::Client::new(),
        cut: cut.clone(),
        cutting: Arc::default(),
        restart_failed: restart_failed.clone(),
    };
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, cut, restart_failed)
}

/// The agent's messages in the room (edits left out), by body.
async fn answers(person: &Person, room: &str, agent: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for event in person.all_messages(room).await {
        let is_edit = event["content"]["m.relates_to"]["rel_type"] == "m.replace";
        if event["sender"] == agent && !is_edit {
            *seen.entry(body(&event).to_string()).or_default() += 1;
        }
    }
    seen
}

async fn wait_ready(slot: &support::Slot) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{}/ready", slot.url())).await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "mosaic-as not ready within 60 s; see {}", slot.dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_whose_send_outlived_a_homeserver_restart_appears_once() {
    let _turn = TURNS.lock().await;
    let slot = slot("restart");
    let echo = slot.agent("echo");
    let (proxy_url, cut, restart_failed) = start_proxy(&echo).await;
    let alice = Person::new("restart-alice").await;
    let service = Service::start_with_env(&slot, &[("MOSAIC_AS_HOMESERVER_URL", &proxy_url)]).await;
    wait_ready(&slot).await;
    let room = alice.create_room(&[&echo], true).await;
    alice.wait_for_member(&room, &echo).await;

    let text = "restart mid-send echo";
    alice.say_until_accepted(&room, text, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cut.load(Ordering::SeqCst) {
        assert!(
            !restart_failed.load(Ordering::SeqCst),
            "the homeserver did not come back after its restart; see scripts/synapse.sh's output above"
        );
        assert!(Instant::now() < deadline, "the answer's send never went through the proxy within 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let seen = answers(&alice, &room, &echo).await;
        if seen.contains_key(text) {
            break;
        }
        assert!(Instant::now() < deadline, "no answer within 120 s: {seen:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A second copy would be sent by a retry after the restart: give it time to show.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let seen = answers(&alice, &room, &echo).await;
    assert_eq!(seen.get(text), Some(&1), "the answer must appear exactly once: {seen:?}");
    drop(service);
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_sent_while_the_service_was_stopped_are_all_answered_once() {
    let _turn = TURNS.lock().await;
    const COUNT: usize = 250;
    let slot = slot("backlog");
    let echo = slot.agent("echo");
    let alice = Person::new("backlog-alice").await;
    let mut service = Service::start(&slot).await;
    let room = alice.create_room(&[&echo], true).await;
    alice.wait_for_member(&room, &echo).await;
    let first = alice.say(&room, "backlog warm-up echo").await;
    alice.wait_for_reply(&room, &echo, &first).await;

    service.kill();
    let texts: Vec<String> = (0..COUNT).map(|n| format!("backlog {n} echo")).collect();
    for text in &texts {
        alice.say(&room, text).await;
    }
    let service = Service::start(&slot).await;

    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen;
    loop {
        seen = answers(&alice, &room, &echo).await;
        let answered = texts.iter().filter(|t| seen.contains_key(*t)).count();
        if answered == COUNT {
            break;
        }
        assert!(Instant::now() < deadline, "{answered} of {COUNT} answered within 300 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    seen = answers(&alice, &room, &echo).await;
    let doubled: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "answered more than once: {doubled:?}");
    drop(service);
}

#[test]
fn no_slot_namespace_covers_another() {
    for a in support::SLOTS {
        for b in support::SLOTS {
            assert!(!b.starts_with(&format!("{a}-")), "slot {b:?} falls inside the alias namespace of slot {a:?}");
        }
    }
}
