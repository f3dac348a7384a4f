//! The push API's transaction parsing: the body the homeserver PUTs, turned into the inbox
//! key and the events stored (`matrix::server::parse_transaction`). Must never panic, must
//! store only JSON objects, and must never store a link token in clear, in any string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosaic_as::namespace::Namespace;
use mosaic_as::matrix::server::parse_transaction;
use mosaic_as::protocol::link_token;
use serde_json::{Value, json};

fn namespace() -> Namespace {
    Namespace {
        server_name: "example.org".into(),
        bot_localpart: "mosaic-bot".into(),
        ghost_prefix: "mosaic_".into(),
        alias_prefix: "mosaic-".into(),
    }
}

/// Every string inside `value`.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| strings(item, out)),
        Value::Object(fields) => fields.values().for_each(|field| strings(field, out)),
        _ => {}
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
        let mut texts = Vec::new();
        strings(&value, &mut texts);
        for text in texts {
            let resealed = link_token::seal(&text, "fuzz-key");
            assert_eq!(resealed, text.as_str(), "link token stored in clear: {event}");
        }
    }
}

/// A link attempt stays one after sealing, and its token still redeems.
fn check_message(body: &[u8], text: &str) {
    let Some(token) = link_token::find(text) else {
        return;
    };
    let parsed = parse_transaction("txn1", body, &namespace(), "fuzz-key").expect("a well-formed transaction");
    let stored: Value = serde_json::from_str(&parsed.events[0].event).unwrap();
    let kept = stored["content"]["body"].as_str().unwrap_or_default();
    let sealed = link_token::find(kept).unwrap_or_else(|| panic!("the link attempt was lost: {stored}"));
    assert_eq!(sealed.lookup_hash("fuzz-key"), token.lookup_hash("fuzz-key"), "{stored}");
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
