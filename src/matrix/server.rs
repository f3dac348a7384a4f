//! The appservice HTTP API the homeserver calls: transactions, user and alias queries,
//! ping, on `/_matrix/app/v1/…` and the legacy unprefixed paths; `/health` and `/ready`.

use std::borrow::Cow;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json, value::RawValue};
use tokio::sync::Notify;

use super::adapter::MatrixAdapter;
use super::e2ee::CryptoInput;
use crate::config::Config;
#[cfg(test)]
use crate::hub::commands;
use crate::namespace::Namespace;
use crate::protocol::link_token;
use crate::protocol::{ChannelRegistry, rewrite_strings};
use crate::secrets;
use crate::secrets::constant_time_eq;
use crate::store::{Store, inbox};

#[derive(Clone)]
pub struct ServerState {
    pub config: Arc<Config>,
    pub store: Store,
    pub adapter: Arc<MatrixAdapter>,
    pub registry: Arc<ChannelRegistry>,
    pub inbox_wake: Arc<Notify>,
}

/// A Matrix-style error answer.
fn matrix_error(status: StatusCode, errcode: &str, error: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "errcode": errcode, "error": error.into() }))).into_response()
}

fn ok_empty() -> Response {
    (StatusCode::OK, axum::Json(json!({}))).into_response()
}

pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/_matrix/app/v1/transactions/{txn_id}", put(transaction))
        .route("/transactions/{txn_id}", put(transaction))
        .route("/_matrix/app/v1/users/{user_id}", get(user_query))
        .route("/users/{user_id}", get(user_query))
        .route("/_matrix/app/v1/rooms/{alias}", get(room_query))
        .route("/rooms/{alias}", get(room_query))
        .route("/_matrix/app/v1/ping", post(ping))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(unknown)
        .with_state(state)
}

/// Checks the `hs_token`, given as `Authorization: Bearer` or `?access_token=`.
fn authorize(config: &Config, headers: &HeaderMap, uri: &Uri) -> Result<(), Box<Response>> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let query = uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "access_token").map(|(_, v)| v.into_owned())
    });
    let denied = match bearer.or(query) {
        Some(token) if constant_time_eq(&token, &config.appservice.hs_token) => return Ok(()),
        Some(_) => matrix_error(StatusCode::FORBIDDEN, "M_FORBIDDEN", "invalid hs_token"),
        None => matrix_error(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN", "missing hs_token"),
    };
    Err(Box::new(denied))
}

#[derive(Deserialize)]
struct TransactionBody<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// Stores the transaction durably, answers 200, and leaves processing to the inbox
/// worker. A txnId seen before is answered 200 and not stored again.
async fn transaction(State(state): State<ServerState>, Path(txn_id): Path<String>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if let Err(denied) = authorize(&state.config, &parts.headers, &parts.uri) {
        return *denied;
    }
    let bytes = match read_body(body, state.config.appservice.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let namespace = state.adapter.namespace();
    let parsed = match parse_transaction(&txn_id, &bytes, namespace, &state.config.appservice.as_token) {
        Ok(parsed) => parsed,
        Err(error) => {
            return matrix_error(StatusCode::BAD_REQUEST, "M_BAD_JSON", format!("transaction body: {error}"));
        }
    };
    if let Err(response) = receive_crypto_input(&state, &txn_id, &bytes).await {
        return response;
    }
    let events: Vec<inbox::Pushed> =
        parsed.events.iter().map(|e| inbox::Pushed { room_id: &e.room_id, event: &e.event }).collect();
    match inbox::record_transaction(&state.store, &parsed.inbox_key, &events).await {
        Ok(new) => {
            if new {
                crate::metrics::transaction_received(parsed.events.len());
                tracing::debug!(txn_id, events = events.len(), "transaction stored");
                state.inbox_wake.notify_one();
                // Typing is not kept: it is passed on now, beside the answer, and a
                // repeated transaction's typing is old news.
                let (adapter, body) = (state.adapter.clone(), bytes.clone());
                tokio::spawn(async move { adapter.on_ephemeral(&body).await });
            } else {
                tracing::info!(txn_id, "repeated transaction acknowledged again");
            }
            ok_empty()
        }
        Err(error) => {
            // Not acknowledged: the homeserver keeps the transaction and retries it.
            tracing::error!(txn_id, %error, "cannot store transaction");
            matrix_error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", "storage unavailable, retry later")
        }
    }
}

/// Hands what the transaction carries for encrypted rooms (to-device messages, key
/// counts, device lists) to the devices it is for, before its events reach the inbox: a
/// message's room key arrives with or before the message. Not acknowledged when a crypto
/// store cannot take it, so that the homeserver sends it again.
async fn receive_crypto_input(state: &ServerState, txn_id: &str, body: &[u8]) -> Result<(), Response> {
    let Some(crypto) = state.adapter.crypto() else { return Ok(()) };
    let input: CryptoInput = match serde_json::from_slice(body) {
        Ok(input) => input,
        Err(error) => {
            // The events may still be good: they are kept, and what encryption needed is
            // named in the log.
            tracing::warn!(txn_id, %error, "transaction's encryption fields unreadable; ignored");
            return Ok(());
        }
    };
    if input.is_empty() {
        return Ok(());
    }
    crypto.receive(input).await.map_err(|error| {
        tracing::error!(txn_id, %error, "cannot take in the transaction's keys and to-device messages");
        matrix_error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", "crypto store unavailable, retry later")
    })
}

/// A pushed transaction body as it goes into the inbox.
pub struct ParsedTransaction<'a> {
    /// See [`inbox_key`].
    pub inbox_key: String,
    /// The events to store, after [`prepare_for_inbox`].
    pub events: Vec<PushedEvent<'a>>,
}

/// One pushed event as it goes into the inbox.
pub struct PushedEvent<'a> {
    /// Its room (empty for an event without one): the inbox keeps each room in order.
    pub room_id: Cow<'a, str>,
    pub event: Cow<'a, str>,
}

/// Parses a transaction body (`{"events": [...]}`) into its inbox key and the events to
/// store. `key` seals link tokens (see [`seal_link_tokens`]). Events that are not JSON
/// objects are dropped; a body that is not a transaction is an error.
pub fn parse_transaction<'a>(
    txn_id: &str,
    body: &'a [u8],
    namespace: &Namespace,
    key: &str,
) -> Result<ParsedTransaction<'a>, serde_json::Error> {
    let parsed: TransactionBody = serde_json::from_slice(body)?;
    // Each event's envelope is read once: for the inbox key and for what is kept.
    let envelopes: Vec<Option<Envelope>> = parsed.events.iter().map(|e| serde_json::from_str(e.get()).ok()).collect();
    let inbox_key = inbox_key(txn_id, envelopes.iter().map(|e| e.as_ref().map_or("", |e| e.event_id.as_ref())));
    let events = parsed
        .events
        .iter()
        .zip(&envelopes)
        .filter_map(|(raw, envelope)| {
            let envelope = envelope.as_ref()?;
            let event = prepare_for_inbox(raw.get(), envelope, namespace, key)?;
            Some(PushedEvent { room_id: envelope.room_id.clone(), event })
        })
        .collect();
    Ok(ParsedTransaction { inbox_key, events })
}

/// The inbox key of a transaction: its txnId plus a digest of its event ids. A retry
/// carries the same events and is recognised; a txnId that a homeserver hands out again
/// for new events (Synapse on SQLite restarts its numbering when it has no pending
/// transactions) is stored as the new transaction it is.
pub fn inbox_key<'a>(txn_id: &str, event_ids: impl Iterator<Item = &'a str>) -> String {
    let mut ids = String::new();
    for event_id in event_ids {
        ids.push_str(event_id);
        ids.push('\n');
    }
    format!("{txn_id}:{}", &secrets::hash_token(&ids)[..16])
}

/// The fields of a pushed event that decide how it is stored.
#[derive(Deserialize)]
pub struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    sender: Cow<'a, str>,
    #[serde(borrow, default)]
    event_id: Cow<'a, str>,
    #[serde(borrow, default)]
    room_id: Cow<'a, str>,
}

/// What of a pushed event goes into the inbox: messages our own users sent come back to
/// us and are never acted on, so they are not stored (they may carry a handed-out link
/// token); link tokens in people's messages are stored hashed.
pub fn prepare_for_inbox<'a>(
    raw: &'a str,
    envelope: &Envelope,
    namespace: &Namespace,
    key: &str,
) -> Option<Cow<'a, str>> {
    if matches!(envelope.kind.as_ref(), "m.room.message" | "m.room.encrypted") && namespace.is_ours(&envelope.sender) {
        return None;
    }
    Some(seal_link_tokens(raw, key))
}

/// Replaces every link token in the event (see [`link_token`]) by its seal (hash and MAC,
/// see [`secrets::seal_token`]) before the event is stored or handled, so that link tokens
/// never reach the database in clear. Every string of the event is looked at: the text
/// and its HTML, an edit's `m.new_content`, a file's name, what `unsigned` bundles.
pub fn seal_link_tokens<'a>(raw: &'a str, key: &str) -> Cow<'a, str> {
    if !may_hold_link_token(raw) {
        return Cow::Borrowed(raw);
    }
    let Ok(mut event) = serde_json::from_str::<Value>(raw) else {
        return Cow::Borrowed(raw);
    };
    let before = event.clone();
    rewrite_strings(&mut event, &|text| link_token::seal(text, key));
    if event == before {
        return Cow::Borrowed(raw);
    }
    Cow::Owned(event.to_string())
}

/// A cheap test that lets most events skip the JSON parse of [`seal_link_tokens`]. `link`
/// is matched case-insensitively (`!Link`, as phones capitalise it), after Unicode
/// lowercasing (the Kelvin sign lowercases to `k`) and JSON unescaping (`\u006c`), so
/// anything non-ASCII or escaped is looked at closely.
fn may_hold_link_token(raw: &str) -> bool {
    !raw.is_ascii() || raw.contains("\\u") || raw.as_bytes().windows(4).any(|w| w.eq_ignore_ascii_case(b"link"))
}

async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, Response> {
    to_bytes(body, limit).await.map_err(|error| {
        let message = error.to_string();
        if error.into_inner().downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            matrix_error(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", format!("body larger than {limit} bytes"))
        } else {
            matrix_error(StatusCode::BAD_REQUEST, "M_BAD_JSON", format!("cannot read body: {message}"))
        }
    })
}

/// The homeserver asks whether a user in our namespace exists: the bot and configured
/// agents do (registered on the spot), other ghosts do not.
async fn user_query(
    State(state): State<ServerState>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if let Err(denied) = authorize(&state.config, &headers, &uri) {
        return *denied;
    }
    let Ok(user) = ruma::OwnedUserId::try_from(user_id.as_str()) else {
        return matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "not a user id");
    };
    match state.adapter.ensure_known_user(&user).await {
        Ok(true) => ok_empty(),
        Ok(false) => matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such user here"),
        Err(error) => {
            tracing::warn!(user_id, %error, "cannot provision user");
            matrix_error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", "cannot provision the user now")
        }
    }
}

/// Rooms are created from conversations, never on alias lookups.
async fn room_query(State(state): State<ServerState>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(denied) = authorize(&state.config, &headers, &uri) {
        return *denied;
    }
    matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such room alias here")
}

async fn ping(State(state): State<ServerState>, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    if let Err(denied) = authorize(&state.config, &headers, &uri) {
        return *denied;
    }
    let bytes = match read_body(body, 64 * 1024).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    if !bytes.is_empty() && serde_json::from_slice::<Value>(&bytes).is_err() {
        return matrix_error(StatusCode::BAD_REQUEST, "M_BAD_JSON", "ping body is not JSON");
    }
    ok_empty()
}

pub(crate) async fn health() -> Response {
    (StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response()
}

/// Ready when the database answers and every adapter works, if perhaps slowed down
/// (rate-limited or resuming: `degraded`).
async fn ready(State(state): State<ServerState>) -> Response {
    let database = state.store.ping().await.is_ok();
    let adapters = state.registry.health_all();
    let all_connected = adapters.values().all(|h| *h != crate::protocol::AdapterHealth::Disconnected);
    let status = if database && all_connected && !adapters.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ "database": database, "adapters": adapters }))).into_response()
}

async fn unknown() -> Response {
    matrix_error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "unrecognized request")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn link_tokens_are_hashed_before_storage() {
        let token = "ab".repeat(32);
        let event =
            json!({"type": "m.room.message", "content": {"msgtype": "m.text", "body": format!("!link {token}")}});
        let stored = seal_link_tokens(&event.to_string(), "key").into_owned();
        assert!(!stored.contains(&token));
        let body = serde_json::from_str::<Value>(&stored).unwrap()["content"]["body"].as_str().unwrap().to_string();
        let Some(Ok(commands::Command::Link(Some(given)))) =
            commands::parse(commands::Syntax { prefix: '!', surfaces: &crate::surfaces::built_in() }, &body)
        else {
            panic!("{body}")
        };
        assert_eq!(secrets::token_lookup_hash("key", &given), secrets::hash_token(&token));
    }

    #[test]
    fn link_tokens_are_hashed_however_the_command_is_written() {
        let token = "cd".repeat(32);
        for body in [
            format!("!Link {token}"),
            format!("!LINK {token}"),
            format!("!lin\u{212A} {token}"),
            format!("  !link\t{token}  "),
        ] {
            let event = json!({"type": "m.room.message", "content": {"msgtype": "m.text", "body": body}});
            for raw in [event.to_string(), event.to_string().replace("!L", "!\\u004c")] {
                let stored = seal_link_tokens(&raw, "key").into_owned();
                assert!(!stored.contains(&token), "{body:?} stored in clear: {stored}");
            }
        }
    }

    #[test]
    fn a_short_token_leaves_the_command_intact() {
        for token in ["l", "i", "!", "nk", "in"] {
            let event = json!({"type": "m.room.message", "content": {"body": format!("!link {token}")}});
            let stored = seal_link_tokens(&event.to_string(), "key").into_owned();
            let body = serde_json::from_str::<Value>(&stored).unwrap()["content"]["body"].as_str().unwrap().to_string();
            let Some(Ok(commands::Command::Link(Some(given)))) =
                commands::parse(commands::Syntax { prefix: '!', surfaces: &crate::surfaces::built_in() }, &body)
            else {
                panic!("{body}")
            };
            assert_eq!(secrets::token_lookup_hash("key", &given), secrets::hash_token(token), "{body}");
        }
    }

    #[test]
    fn our_own_messages_are_not_stored() {
        let ns = Namespace {
            server_name: "x".into(),
            bot_localpart: "mosaic-bot".into(),
            ghost_prefix: "mosaic_".into(),
            alias_prefix: "mosaic-".into(),
        };
        let ours =
            json!({"type": "m.room.message", "sender": "@mosaic-bot:x", "content": {"body": "token"}}).to_string();
        assert!(prepare_for_inbox(&ours, &serde_json::from_str(&ours).unwrap(), &ns, "key").is_none());
        let join =
            json!({"type": "m.room.member", "sender": "@mosaic-bot:x", "state_key": "@mosaic-bot:x"}).to_string();
        assert!(prepare_for_inbox(&join, &serde_json::from_str(&join).unwrap(), &ns, "key").is_some());
        let theirs = json!({"type": "m.room.message", "sender": "@alice:x", "content": {"body": "hi"}}).to_string();
        assert!(prepare_for_inbox(&theirs, &serde_json::from_str(&theirs).unwrap(), &ns, "key").is_some());
    }

    #[test]
    fn a_reused_txn_id_with_other_events_is_a_new_transaction() {
        // A retry carries the same events, only their `unsigned.age` differs.
        let first = json!({"event_id": "$a", "unsigned": {"age": 1}}).to_string();
        let retry = json!({"event_id": "$a", "unsigned": {"age": 900}}).to_string();
        let id_of = |raw: &str| serde_json::from_str::<Envelope>(raw).unwrap().event_id.into_owned();
        assert_eq!(
            inbox_key("7", [id_of(&first).as_str()].into_iter()),
            inbox_key("7", [id_of(&retry).as_str()].into_iter()),
            "a retry is the same transaction"
        );
        let key = |txn: &str, ids: &[&'static str]| inbox_key(txn, ids.iter().copied());
        assert_ne!(key("7", &["$a"]), key("7", &["$b"]));
        assert_ne!(key("7", &["$a"]), key("8", &["$a"]));
        assert_ne!(key("7", &["$a", "$b"]), key("7", &["$ab"]), "ids are kept apart");
        assert!(key("7", &["$a"]).starts_with("7:"));
    }

    #[test]
    fn link_tokens_are_sealed_wherever_the_event_carries_them() {
        let token = "0f".repeat(32);
        let edit = json!({"type": "m.room.message", "content": {
            "msgtype": "m.text", "body": "* !link 00",
            "m.new_content": {"msgtype": "m.text", "body": format!("/link {token} thanks"),
                "format": "org.matrix.custom.html", "formatted_body": format!("<code>!link {token}</code>")},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$original"}},
            "unsigned": {"m.relations": {"m.replace": {"content": {"body": format!("please link {token}")}}}}});
        let stored = seal_link_tokens(&edit.to_string(), "key").into_owned();
        assert!(!stored.contains(&token), "{stored}");
        let stored: Value = serde_json::from_str(&stored).unwrap();
        let new_body = stored["content"]["m.new_content"]["body"].as_str().unwrap();
        let found = link_token::find(new_body).unwrap();
        assert_eq!(found.lookup_hash("key"), secrets::hash_token(&token));
    }

    #[test]
    fn other_events_pass_unchanged() {
        let raw = json!({"type": "m.room.message", "content": {"body": "a link to somewhere"}}).to_string();
        assert!(matches!(seal_link_tokens(&raw, "key"), Cow::Borrowed(_)));
    }
}
