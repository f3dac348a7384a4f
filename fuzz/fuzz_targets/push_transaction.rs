//! The push API's transaction parsing: the body the homeserver PUTs, turned into the inbox
//! key and the events stored (`matrix::server::parse_transaction`). Must never panic, must
//! store only JSON objects, and must never store a `!link` token in clear.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosaic_as::hub::commands::{self, Command};
use mosaic_as::matrix::naming::Namespace;
use mosaic_as::matrix::server::parse_transaction;
use mosaic_as::secrets::{SEALED_TOKEN_PREFIX, hash_token, token_lookup_hash};
use serde_json::{Value, json};

fn namespace() -> Namespace {
    Namespace {
        server_name: "example.org".into(),
        bot_localpart: "mosaic-bot".into(),
        ghost_prefix: "mosaic_".into(),
        alias_prefix: "mosaic-".into(),
    }
}

fn link_token(event: &Value) -> Option<String> {
    match commands::parse('!', event["content"]["body"].as_str()?) {
        Some(Ok(Command::Link(Some(token)))) => Some(token),
        _ => None,
    }
}

fn check(body: &[u8]) {
    let Ok(parsed) = parse_transaction("txn1", body, &namespace(), "fuzz-key") else {
        return;
    };
    assert!(parsed.inbox_key.starts_with("txn1:"), "{}", parsed.inbox_key);
    assert_eq!(parsed.inbox_key.len(), "txn1:".len() + 16);
    for pushed in &parsed.events {
        let event = &pushed.event;
        let value: Value = serde_json::from_str(event).expect("a stored event is JSON");
        assert!(value.is_object(), "a stored event is an object: {event}");
        if let Some(token) = link_token(&value) {
            assert!(token.starts_with(SEALED_TOKEN_PREFIX), "link token stored in clear: {event}");
        }
    }
}

/// A `!link <token>` message stays one after sealing, and its token still redeems.
fn check_message(body: &[u8], text: &str) {
    let original = json!({"content": {"body": text}});
    let Some(token) = link_token(&original) else {
        return;
    };
    let parsed = parse_transaction("txn1", body, &namespace(), "fuzz-key").expect("a well-formed transaction");
    let stored: Value = serde_json::from_str(&parsed.events[0].event).unwrap();
    let sealed = link_token(&stored).unwrap_or_else(|| panic!("the link command was lost: {stored}"));
    assert_eq!(token_lookup_hash("fuzz-key", &sealed), hash_token(&token), "{stored}");
}

fuzz_target!(|data: &[u8]| {
    // Raw bodies exercise the JSON parsing; the same bytes as a message body (properly
    // escaped) exercise what is kept of a message and the sealing of link tokens.
    check(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let event = json!({
            "type": "m.room.message",
            "sender": "@alice:example.org",
            "event_id": "$e",
            "room_id": "!r:example.org",
            "content": {"msgtype": "m.text", "body": text, "formatted_body": text},
        });
        let body = json!({ "events": [event] }).to_string();
        check(body.as_bytes());
        check_message(body.as_bytes(), text);
    }
});
