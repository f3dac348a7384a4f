//! What a room sees when an agent fails: a one-line notice with a reference, never the
//! program's stderr or the model provider's answer. The operator finds the detail in the
//! log under the same reference.

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};

use crate::support::{Person, Service, body, slot};

/// What only the log may hold: looks like a key, a path, a provider's internals.
const STDERR_SECRET: &str = "OPENAI_API_KEY=sk-quiet-4242 in /srv/agent/run.py";
const BODY_SECRET: &str = "upstream worker /srv/model/shard-7 crashed: token sk-body-9191";

/// A model endpoint that refuses every request: `bad-request` with 400, any other
/// model with 500, each with an error body.
async fn refusing_model() -> String {
    async fn refuse(body: axum::Json<Value>) -> axum::response::Response {
        let status = match body["model"].as_str() {
            Some("bad-request") => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, axum::Json(json!({"error": {"message": BODY_SECRET, "type": "server_error"}}))).into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let app = Router::new().route("/v1/chat/completions", post(refuse));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base_url
}

/// The reference in a notice "… (ref 1a2b3c)…".
fn reference(notice: &str) -> String {
    let start = notice.find("(ref ").unwrap_or_else(|| panic!("no reference in {notice:?}")) + 5;
    notice[start..].chars().take_while(char::is_ascii_hexdigit).collect()
}

/// The log line that carries `reference`.
fn logged(log: &str, reference: &str) -> String {
    let field = format!("ref={reference}");
    log.lines()
        .find(|line| line.contains(&field))
        .unwrap_or_else(|| panic!("no {field} in the log:\n{log}"))
        .to_string()
}

async fn notice_for(person: &Person, agent: &str, text: &str) -> String {
    let room = person.create_room(&[agent], true).await;
    person.wait_for_member(&room, agent).await;
    let asked = person.say(&room, text).await;
    let notice = person.wait_for_reply(&room, agent, &asked).await;
    assert_eq!(notice["content"]["msgtype"], "m.notice", "{notice:#?}");
    body(&notice).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_agent_is_reported_with_a_reference_and_its_detail_stays_in_the_log() {
    let model = refusing_model().await;
    let slot = slot("quiet");
    slot.write_config_with(
        // A model that is down is given up after two tries.
        "[delivery]\nmax_attempts = 2\n",
        &format!(
            r#"
[[agent]]
id = "broken"
display_name = "Broken"
runtime = "command"
command = ["sh", "-c", "cat > /dev/null; echo '{STDERR_SECRET}' >&2; exit 1"]

[[agent]]
id = "picky"
display_name = "Picky"
runtime = "openai"
base_url = "{model}"
model = "bad-request"

[[agent]]
id = "down"
display_name = "Down"
runtime = "openai"
base_url = "{model}"
model = "crashing"
"#
        ),
    );
    let _service = Service::start(&slot).await;
    let alice = Person::new("quiet-alice").await;

    // A command agent that writes to stderr and exits 1.
    let notice = notice_for(&alice, &slot.agent("broken"), "hello").await;
    assert!(notice.starts_with("Broken could not answer (ref "), "{notice}");
    assert!(!notice.contains("sk-quiet") && !notice.contains("/srv") && !notice.contains("exit"), "{notice}");
    let line = logged(&slot.log(), &reference(&notice));
    assert!(line.contains(STDERR_SECRET) && line.contains("agent turn failed"), "{line}");

    // A model provider that refuses the request with an explanation.
    let notice = notice_for(&alice, &slot.agent("picky"), "hello").await;
    assert!(notice.starts_with("Picky could not answer (ref "), "{notice}");
    assert!(!notice.contains("sk-body") && !notice.contains("400") && !notice.contains("shard"), "{notice}");
    let line = logged(&slot.log(), &reference(&notice));
    assert!(line.contains(BODY_SECRET) && line.contains("400"), "{line}");

    // A model provider that keeps failing with 500: the turn is given up.
    let notice = notice_for(&alice, &slot.agent("down"), "hello").await;
    assert!(notice.starts_with("Down could not answer"), "{notice}");
    assert!(!notice.contains("sk-body") && !notice.contains("500") && !notice.contains("shard"), "{notice}");
}
