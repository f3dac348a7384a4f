//! mosaic-as against a real Synapse: people invite agents, talk, link accounts, and the
//! service is crashed and fed repeated transactions without losing or doubling a reply.

#![recursion_limit = "256"]

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod agents;
mod bounds;
mod deletions;
mod discord;
mod encrypted;
mod listeners;
mod permissions;
mod quiet_errors;
mod reactions;
mod room_power;
mod telegram;
mod trust;
mod typing;

use std::time::Duration;

use serde_json::json;
use support::{Person, Service, body, message_event, mosaic, push_transaction, reply_target, slot};

#[tokio::test(flavor = "multi_thread")]
async fn echo_agent_joins_on_invite_and_answers_every_message_as_a_reply() {
    let slot = slot("echo");
    let _service = Service::start(&slot).await;
    let alice = Person::new("echo-alice").await;
    let echo = slot.agent("echo");
    let room = alice.create_room(&[&echo], true).await;
    alice.wait_for_member(&room, &echo).await;

    let first = alice.say(&room, "hello **world** <script>alert(1)</script>").await;
    let reply = alice.wait_for_reply(&room, &echo, &first).await;
    assert_eq!(body(&reply), "hello **world** <script>alert(1)</script>");
    assert_eq!(reply["content"]["msgtype"], "m.text");
    let html = reply["content"]["formatted_body"].as_str().unwrap();
    assert!(html.contains("<strong>world</strong>") && !html.contains("<script"), "{html}");

    let second = alice.say(&room, "and again").await;
    assert_eq!(body(&alice.wait_for_reply(&room, &echo, &second).await), "and again");

    let profile: serde_json::Value =
        reqwest::get(format!("{}/_matrix/client/v3/profile/{echo}", support::homeserver_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(profile["displayname"], "Echo");

    // What happened shows up in the operator's metrics.
    let metrics = reqwest::get(format!("{}/metrics", slot.url())).await.unwrap().text().await.unwrap();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert!(value("mosaic_events_received_total") >= 2.0);
    assert!(value("mosaic_agent_turns_total{agent=\"echo\",result=\"answered\"}") >= 2.0);
    assert!(value("mosaic_sends_total{channel=\"matrix\",result=\"ok\"}") >= 2.0);
    assert!(value("mosaic_inbox_lag_seconds_count") >= 2.0);
    assert_eq!(value("mosaic_adapter_health{channel=\"matrix\"}"), 1.0);
    assert!(metrics.contains("mosaic_outbox_depth{queue=\"matrix\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_group_room_the_agent_answers_only_when_mentioned() {
    let slot = slot("group");
    let _service = Service::start(&slot).await;
    let alice = Person::new("group-alice").await;
    let bob = Person::new("group-bob").await;
    let echo = slot.agent("echo");
    let room = alice.create_room(&[&bob.user_id, &echo], false).await;
    bob.join(&room).await;
    alice.wait_for_member(&room, &echo).await;

    let unaddressed = alice.say(&room, "lunch at noon?").await;
    let by_name = bob.say(&room, "Echo, are you there?").await;
    let by_pill = alice
        .send(&room, json!({"msgtype": "m.text", "body": format!("{echo}: ping"), "m.mentions": {"user_ids": [echo]}}))
        .await;
    alice.wait_for_reply(&room, &echo, &by_name).await;
    alice.wait_for_reply(&room, &echo, &by_pill).await;

    let answered: Vec<String> = alice
        .messages(&room)
        .await
        .iter()
        .filter(|e| e["sender"] == echo.as_str())
        .filter_map(|e| reply_target(e).map(str::to_string))
        .collect();
    assert!(!answered.contains(&unaddressed), "answered an unaddressed message in a group room");
    assert_eq!(answered.len(), 2, "{answered:?}");
}

async fn command(person: &Person, room: &str, bot: &str, text: &str) -> String {
    let asked = person.say(room, text).await;
    let answer = person.wait_for_reply(room, bot, &asked).await;
    assert_eq!(answer["content"]["msgtype"], "m.notice", "command answers are notices");
    body(&answer).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn link_flow_with_reuse_expiry_wrong_tokens_and_rate_limit() {
    let slot = slot("link");
    let _service = Service::start(&slot).await;
    let bot = slot.bot();
    let alice = Person::new("link-alice").await;
    let bob = Person::new("link-bob").await;
    let carol = Person::new("link-carol").await;
    let alice_dm = alice.create_room(&[&bot], true).await;
    let bob_dm = bob.create_room(&[&bot], true).await;
    let carol_dm = carol.create_room(&[&bot], true).await;
    alice.wait_for_member(&alice_dm, &bot).await;
    bob.wait_for_member(&bob_dm, &bot).await;
    carol.wait_for_member(&carol_dm, &bot).await;

    let issued = mosaic(&slot, &["link-token", "team-a", "--create"]).expect_success();
    let token = issued.lines().last().unwrap().trim().to_string();
    assert_eq!(token.len(), 64, "the token is alone on the last line: {issued}");

    assert!(command(&alice, &alice_dm, &bot, "!whoami").await.contains("not linked"));
    let linked = command(&alice, &alice_dm, &bot, &format!("!link {token}")).await;
    assert!(linked.contains("Linked") && linked.contains("team-a"), "{linked}");
    let whoami = command(&alice, &alice_dm, &bot, "!whoami").await;
    assert!(whoami.contains("team-a") && whoami.contains(&alice.user_id), "{whoami}");

    // Single use.
    let reused = command(&bob, &bob_dm, &bot, &format!("!link {token}")).await;
    assert!(reused.contains("already used"), "{reused}");
    // Wrong tokens.
    let wrong = command(&bob, &bob_dm, &bot, &format!("!link {}", "0".repeat(64))).await;
    assert!(wrong.contains("not valid"), "{wrong}");
    // Expiry (this slot's tokens live 4 s).
    let short = mosaic(&slot, &["link-token", "team-a"]).expect_success();
    let short = short.lines().last().unwrap().trim().to_string();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let expired = command(&bob, &bob_dm, &bot, &format!("!link {short}")).await;
    assert!(expired.contains("expired"), "{expired}");
    // Three failures in the window: even a good token is refused now.
    let fresh = mosaic(&slot, &["link-token", "team-a"]).expect_success();
    let fresh = fresh.lines().last().unwrap().trim().to_string();
    let limited = command(&bob, &bob_dm, &bot, &format!("!link {fresh}")).await;
    assert!(limited.contains("Too many failed link attempts"), "{limited}");
    assert!(command(&bob, &bob_dm, &bot, "!whoami").await.contains("not linked"));

    // A linked person gets a token for another channel; another identity uses it.
    let handed = command(&alice, &alice_dm, &bot, "!link").await;
    let second: String = handed.split("!link ").nth(1).unwrap().chars().take_while(char::is_ascii_hexdigit).collect();
    assert_eq!(second.len(), 64, "{handed}");
    let carol_linked = command(&carol, &carol_dm, &bot, &format!("!link {second}")).await;
    assert!(carol_linked.contains("team-a"), "{carol_linked}");
    let both = command(&alice, &alice_dm, &bot, "!whoami").await;
    assert!(both.contains(&carol.user_id) && both.contains(&alice.user_id), "{both}");

    // What the database holds (the SHA-256 of a token) cannot be used as the token.
    let dave = Person::new("link-dave").await;
    let dave_dm = dave.create_room(&[&bot], true).await;
    dave.wait_for_member(&dave_dm, &bot).await;
    let kept = mosaic(&slot, &["link-token", "team-a"]).expect_success();
    let kept = kept.lines().last().unwrap().trim().to_string();
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(kept.as_bytes()));
    for forged in [format!("sha256:{hash}"), format!("sha256:{hash}.{}", "0".repeat(64))] {
        let refused = command(&dave, &dave_dm, &bot, &format!("!link {forged}")).await;
        assert!(refused.contains("not valid"), "{refused}");
    }
    assert!(command(&dave, &dave_dm, &bot, &format!("!link {kept}")).await.contains("team-a"));

    // Usage and unknown commands always answer.
    assert!(command(&alice, &alice_dm, &bot, "!link a b").await.contains("Usage: `!link <token>`"));
    assert!(command(&alice, &alice_dm, &bot, "!dance").await.contains("Unknown command `!dance`"));
    assert!(command(&alice, &alice_dm, &bot, "!agents").await.contains(&slot.agent("echo")));
    assert!(command(&alice, &alice_dm, &bot, "!unlink").await.contains("Unlinked"));
    assert!(command(&alice, &alice_dm, &bot, "!whoami").await.contains("not linked"));

    // Tokens are kept hashed: none of them appears in the database files.
    for file in ["mosaic-as.db", "mosaic-as.db-wal"] {
        let path = slot.dir.join(file);
        for secret in [&token, &short, &fresh, &second, &kept] {
            assert!(!support::file_contains(&path, secret), "token {secret} is stored in clear in {file}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_transaction_is_answered_exactly_once() {
    let slot = slot("replay");
    let _service = Service::start(&slot).await;
    let alice = Person::new("replay-alice").await;
    let echo = slot.agent("echo");
    let room = alice.create_room(&[&echo], true).await;
    alice.wait_for_member(&room, &echo).await;

    let event = message_event(&room, &alice.user_id, "$replayed-event-1", "say this once");
    for txn in ["replay-1", "replay-1", "replay-2"] {
        let answer = push_transaction(&slot, txn, json!([event])).await;
        assert_eq!(answer.status(), 200);
    }
    alice.wait_for(&room, &echo, |e| body(e) == "say this once").await;
    // Everything before the marker has been handled once the marker is answered.
    let marker = alice.say(&room, "marker").await;
    alice.wait_for_reply(&room, &echo, &marker).await;
    let copies = alice
        .messages(&room)
        .await
        .iter()
        .filter(|e| e["sender"] == echo.as_str() && body(e) == "say this once")
        .count();
    assert_eq!(copies, 1);

    // A homeserver that hands out a txnId again for new events (Synapse on SQLite after a
    // restart) is not ignored.
    let reused = message_event(&room, &alice.user_id, "$replayed-event-2", "same id, new event");
    assert_eq!(push_transaction(&slot, "replay-1", json!([reused])).await.status(), 200);
    alice.wait_for(&room, &echo, |e| body(e) == "same id, new event").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_transaction_survives_sigkill() {
    let slot = slot("crash");
    let mut service = Service::start(&slot).await;
    let alice = Person::new("crash-alice").await;
    let echo = slot.agent("echo");
    let room = alice.create_room(&[&echo], true).await;
    alice.wait_for_member(&room, &echo).await;
    service.kill();

    // With the homeserver out of reach, nothing can be answered before the crash.
    let unreachable = [("MOSAIC_AS_HOMESERVER_URL", "http://127.0.0.1:9")];
    let mut service = Service::start_with_env(&slot, &unreachable).await;
    let right_after = message_event(&room, &alice.user_id, "$crash-1", "killed right after the 200");
    assert_eq!(push_transaction(&slot, "crash-1", json!([right_after])).await.status(), 200);
    service.kill();

    let mut service = Service::start_with_env(&slot, &unreachable).await;
    let while_sending = message_event(&room, &alice.user_id, "$crash-2", "killed while sending");
    assert_eq!(push_transaction(&slot, "crash-2", json!([while_sending])).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    service.kill();

    let _service = Service::start(&slot).await;
    alice.wait_for(&room, &echo, |e| body(e) == "killed right after the 200").await;
    alice.wait_for(&room, &echo, |e| body(e) == "killed while sending").await;
    let marker = alice.say(&room, "marker").await;
    alice.wait_for_reply(&room, &echo, &marker).await;
    let messages = alice.messages(&room).await;
    for text in ["killed right after the 200", "killed while sending"] {
        let copies = messages.iter().filter(|e| e["sender"] == echo.as_str() && body(e) == text).count();
        assert_eq!(copies, 1, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn new_creates_a_room_with_the_asker_and_the_default_agent() {
    let slot = slot("rooms");
    let _service = Service::start(&slot).await;
    let bot = slot.bot();
    let echo = slot.agent("echo");
    let alice = Person::new("rooms-alice").await;
    let dm = alice.create_room(&[&bot], true).await;
    alice.wait_for_member(&dm, &bot).await;
    let answer = command(&alice, &dm, &bot, "!new Weekly plan").await;
    assert!(answer.contains("Mosaic: Weekly plan"), "{answer}");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let room = loop {
        let invites = alice.invites().await;
        if let Some(room) = invites.into_iter().find(|r| r != &dm) {
            break room;
        }
        assert!(std::time::Instant::now() < deadline, "no invitation to the new room");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    alice.join(&room).await;
    assert_eq!(alice.state(&room, "m.room.name").await["name"], "Mosaic: Weekly plan");
    assert_eq!(alice.state(&room, "m.room.join_rules").await["join_rule"], "invite");
    let power = alice.state(&room, "m.room.power_levels").await;
    assert_eq!(power["users"][&alice.user_id], 100, "the person who asked owns the room");
    assert!(power["users"].get(&echo).is_none(), "agents stay at the default power 0");
    assert_eq!(power["users_default"], 0);
    assert_eq!(power["state_default"], 50);
    assert!(alice.joined_members(&room).await.contains(&echo));

    let hello = alice.say(&room, "first message").await;
    assert_eq!(body(&alice.wait_for_reply(&room, &echo, &hello).await), "first message");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_push_api_rejects_bad_requests_with_matrix_errors() {
    let slot = slot("http");
    let _service = Service::start(&slot).await;
    let http = reqwest::Client::new();
    let txn_url = |id: &str| format!("{}/_matrix/app/v1/transactions/{id}", slot.url());
    let errcode = |r: serde_json::Value| r["errcode"].as_str().unwrap_or_default().to_string();

    let missing = http.put(txn_url("a")).json(&json!({"events": []})).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(errcode(missing.json().await.unwrap()), "M_MISSING_TOKEN");

    let wrong = http.put(txn_url("a")).bearer_auth("not-the-token").json(&json!({"events": []})).send().await.unwrap();
    assert_eq!(wrong.status(), 403);
    assert_eq!(errcode(wrong.json().await.unwrap()), "M_FORBIDDEN");

    let by_query = http
        .put(format!("{}?access_token={}", txn_url("query-token"), slot.hs_token))
        .json(&json!({"events": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);

    let legacy = http
        .put(format!("{}/transactions/legacy-1", slot.url()))
        .bearer_auth(&slot.hs_token)
        .json(&json!({"events": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status(), 200);

    let bad_json = http.put(txn_url("b")).bearer_auth(&slot.hs_token).body("{not json").send().await.unwrap();
    assert_eq!(bad_json.status(), 400);
    assert_eq!(errcode(bad_json.json().await.unwrap()), "M_BAD_JSON");

    let no_events = http.put(txn_url("c")).bearer_auth(&slot.hs_token).json(&json!({"nope": 1})).send().await.unwrap();
    assert_eq!(no_events.status(), 400);

    let huge = json!({"events": [{"type": "m.room.message", "content": {"body": "x".repeat(300_000)}}]});
    let too_large = http.put(txn_url("d")).bearer_auth(&slot.hs_token).json(&huge).send().await.unwrap();
    assert_eq!(too_large.status(), 413);
    assert_eq!(errcode(too_large.json().await.unwrap()), "M_TOO_LARGE");
    // Refused transactions were not stored: the same id is accepted afterwards.
    let after = http.put(txn_url("d")).bearer_auth(&slot.hs_token).json(&json!({"events": []})).send().await.unwrap();
    assert_eq!(after.status(), 200);

    let user = |id: String| {
        let http = http.clone();
        let url = format!("{}/_matrix/app/v1/users/{id}", slot.url());
        let token = slot.hs_token.clone();
        async move { http.get(url).bearer_auth(token).send().await.unwrap().status() }
    };
    assert_eq!(user(slot.agent("echo")).await, 200);
    assert_eq!(user(slot.agent("nobody")).await, 404);
    let alias = http
        .get(format!("{}/_matrix/app/v1/rooms/%23mosaic-http-x:localhost", slot.url()))
        .bearer_auth(&slot.hs_token)
        .send()
        .await
        .unwrap();
    assert_eq!(alias.status(), 404);
    let ping = http
        .post(format!("{}/_matrix/app/v1/ping", slot.url()))
        .bearer_auth(&slot.hs_token)
        .json(&json!({"transaction_id": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), 200);

    // Without an admin token in the config the admin API is off, and says how to turn it on.
    let admin = http.get(format!("{}/_mosaic/v1/accounts", slot.url())).bearer_auth("anything").send().await.unwrap();
    assert_eq!(admin.status(), 503);
    let error: serde_json::Value = admin.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("MOSAIC_AS_ADMIN_TOKEN"));
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_every_link_and_names_the_fix() {
    let slot = slot("doctor");
    let stopped = mosaic(&slot, &["doctor"]);
    assert!(!stopped.status.success());
    assert!(stopped.stdout.contains("OK    database"), "{}", stopped.stdout);
    assert!(stopped.stdout.contains("OK    homeserver"), "{}", stopped.stdout);
    assert!(
        stopped.stdout.contains("FAIL  ping") && stopped.stdout.contains("start `mosaic-as serve`"),
        "{}",
        stopped.stdout
    );

    let _service = Service::start(&slot).await;
    let running = mosaic(&slot, &["doctor"]);
    assert!(running.status.success(), "{}", running.stdout);
    for check in ["database", "homeserver", "as_token", "ping"] {
        assert!(running.stdout.contains(&format!("OK    {check}")), "{}", running.stdout);
    }
}
