//! The admin API and conversation lifecycle against the real homeserver.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::Person;
use crate::support::{Service, Slot, body, slot};

struct Admin {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(slot: &Slot) -> Admin {
        Admin { base: format!("{}/_mosaic/v1", slot.url()), token: slot.admin_token(), http: reqwest::Client::new() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_provision_accounts_and_manage_conversations() {
    let slot = slot("admin");
    let _service = Service::start(&slot).await;
    let admin = Admin::new(&slot);
    let bot = slot.bot();
    let alice = Person::new("admin-alice").await;

    // Wrong or missing token, bad input.
    let anonymous = reqwest::get(format!("{}/accounts", admin.base)).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong =
        reqwest::Client::new().get(format!("{}/accounts", admin.base)).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 403);
    let (status, error) = admin.call(reqwest::Method::POST, "/accounts", Some(json!({"nme": "x"}))).await;
    assert_eq!(status, 400);
    assert!(error["error"]["message"].as_str().unwrap().contains("nme"), "{error}");
    let (status, _) =
        admin.call(reqwest::Method::POST, "/accounts", Some(json!({"name": "x", "matrixId": "alice"}))).await;
    assert_eq!(status, 400);

    // Invite-based provisioning: linked at once, welcomed in a direct chat.
    let (status, account) = admin
        .call(reqwest::Method::POST, "/accounts", Some(json!({"name": "alice-co", "matrixId": alice.user_id})))
        .await;
    assert_eq!(status, 201, "{account}");
    assert_eq!(account["identities"][0]["channelUserId"], alice.user_id.as_str());
    let (status, _) = admin.call(reqwest::Method::POST, "/accounts", Some(json!({"name": "alice-co"}))).await;
    assert_eq!(status, 409);
    let (space, space_state) = alice.wait_for_invite_named("alice-co's Space").await;
    let create = space_state.iter().find(|e| e["type"] == "m.room.create").expect("create event in the invite");
    assert_eq!(create["content"]["type"], "m.space", "the personal Space is a Space");
    let (welcome_room, _) = alice.wait_for_invite_named("Mosaic: Welcome, alice-co").await;
    alice.join(&welcome_room).await;
    let welcome = alice.wait_for(&welcome_room, &bot, |e| body(e).contains("Welcome to Mosaic")).await;
    assert!(body(&welcome).contains("alice-co"));
    let whoami = alice.say(&welcome_room, "!whoami").await;
    assert!(body(&alice.wait_for_reply(&welcome_room, &bot, &whoami).await).contains("alice-co"));

    // Her conversations become children of her Space.
    alice.join(&space).await;
    let asked = alice.say(&welcome_room, "!new Budget").await;
    alice.wait_for_reply(&welcome_room, &bot, &asked).await;
    let (room, _) = alice.wait_for_invite_named("Mosaic: Budget").await;
    alice.join(&room).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while alice.state_or_null(&space, &format!("m.space.child/{room}")).await.is_null() {
        assert!(Instant::now() < deadline, "the conversation did not become a child of the Space");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(alice.state(&room, &format!("m.space.parent/{space}")).await["canonical"], true);

    // Link tokens and revocation.
    let (status, issued) =
        admin.call(reqwest::Method::POST, "/link-tokens", Some(json!({"account": "alice-co"}))).await;
    assert_eq!(status, 201);
    assert_eq!(issued["token"].as_str().unwrap().len(), 64);
    let (status, _) = admin.call(reqwest::Method::POST, "/link-tokens", Some(json!({"account": "nobody"}))).await;
    assert_eq!(status, 404);
    let path = format!("/identities/matrix/{}", alice.user_id);
    assert_eq!(admin.call(reqwest::Method::DELETE, &path, None).await.0, 204);
    assert_eq!(admin.call(reqwest::Method::DELETE, &path, None).await.0, 404);
    let whoami = alice.say(&welcome_room, "!whoami").await;
    assert!(body(&alice.wait_for_reply(&welcome_room, &bot, &whoami).await).contains("not linked"));

    // The conversation: private history, renamed by an admin, archived by its owner.
    assert_eq!(alice.state(&room, "m.room.history_visibility").await["history_visibility"], "invited");
    let (_, listed) = admin.call(reqwest::Method::GET, "/conversations", None).await;
    let conversation =
        listed["conversations"].as_array().unwrap().iter().find(|c| c["roomId"] == room.as_str()).unwrap().clone();
    assert_eq!(conversation["title"], "Budget");
    let id = conversation["id"].as_str().unwrap();
    let (status, _) = admin
        .call(reqwest::Method::PATCH, &format!("/conversations/{id}"), Some(json!({"title": "Budget 2027"})))
        .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while alice.state(&room, "m.room.name").await["name"] != "Mosaic: Budget 2027" {
        assert!(Instant::now() < deadline, "the room was not renamed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let archive = alice.say(&room, "!archive").await;
    let answer = alice.wait_for_reply(&room, &bot, &archive).await;
    assert!(body(&answer).contains("read-only"), "{}", body(&answer));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let power = alice.state(&room, "m.room.power_levels").await;
        // Above everyone but the bot, the room's owner included.
        if power["events_default"].as_i64() > power["users"][&alice.user_id].as_i64() {
            break;
        }
        assert!(Instant::now() < deadline, "the room did not become read-only: {power}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The tombstone is the next job of the room's queue, after the power levels.
    loop {
        let tombstone = alice.state_or_null(&room, "m.room.tombstone").await;
        if tombstone["body"].as_str().is_some_and(|body| body.contains("archived")) {
            break;
        }
        assert!(Instant::now() < deadline, "the room got no tombstone: {tombstone}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = reqwest::Client::new()
        .put(format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/after-archive",
            crate::support::homeserver_url(),
            url::form_urlencoded::byte_serialize(room.as_bytes()).collect::<String>()
        ))
        .bearer_auth(alice.token())
        .json(&json!({"msgtype": "m.text", "body": "still here?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403, "people cannot write in an archived room");
    let (_, listed) = admin.call(reqwest::Method::GET, "/conversations", None).await;
    let archived = listed["conversations"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap().clone();
    assert!(archived["archivedAt"].as_i64().is_some());

    assert_eq!(admin.call(reqwest::Method::DELETE, "/accounts/alice-co", None).await.0, 204);
    let (_, accounts) = admin.call(reqwest::Method::GET, "/accounts", None).await;
    assert!(accounts["accounts"].as_array().unwrap().is_empty());

    // Dead letters: none here; bad ids are refused, unknown ones not found.
    let (status, jobs) = admin.call(reqwest::Method::GET, "/jobs", None).await;
    assert_eq!((status, jobs["deadLetters"].as_array().map(Vec::len)), (200, Some(0)), "{jobs}");
    assert_eq!(admin.call(reqwest::Method::GET, "/jobs/mail/1", None).await.0, 400);
    assert_eq!(admin.call(reqwest::Method::GET, "/jobs/outbox/x", None).await.0, 400);
    assert_eq!(admin.call(reqwest::Method::GET, "/jobs/outbox/999999", None).await.0, 404);
    assert_eq!(admin.call(reqwest::Method::POST, "/jobs/inbox/999999/retry", None).await.0, 404);
    assert_eq!(admin.call(reqwest::Method::POST, "/jobs/outbox/999999/drop", None).await.0, 404);
}

/// The membership of `user` in `room`, as `viewer` sees it.
async fn membership(viewer: &Person, room: &str, user: &str) -> Value {
    viewer.state_or_null(room, &format!("m.room.member/{user}")).await["membership"].clone()
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn teams_share_rooms_through_their_space_and_unsharing_removes_only_who_came_with_it() {
    let slot = slot("teams");
    let _service = Service::start(&slot).await;
    let admin = Admin::new(&slot);
    let bot = slot.bot();
    let (alice, bob, dave) =
        (Person::new("teams-alice").await, Person::new("teams-bob").await, Person::new("teams-dave").await);
    for (name, person) in [("alice-t", &alice), ("bob-t", &bob), ("dave-t", &dave)] {
        let (status, _) = admin
            .call(reqwest::Method::POST, "/accounts", Some(json!({"name": name, "matrixId": person.user_id})))
            .await;
        assert_eq!(status, 201);
    }
    let (dm, _) = alice.wait_for_invite_named("Mosaic: Welcome, alice-t").await;
    alice.join(&dm).await;
    let ask = |text: &'static str| {
        let (alice, dm, bot) = (&alice, dm.clone(), bot.clone());
        async move {
            let asked = alice.say(&dm, text).await;
            body(&alice.wait_for_reply(&dm, &bot, &asked).await).to_string()
        }
    };
    assert!(ask("!team create core").await.contains("Created team **core**"));
    let (team_space, _) = alice.wait_for_invite_named("core").await;
    alice.join(&team_space).await;
    for member in [&bob, &dave] {
        let added = alice.say(&dm, &format!("!team add core {}", member.user_id)).await;
        assert!(body(&alice.wait_for_reply(&dm, &bot, &added).await).contains("Added"));
    }
    bob.wait_for_invite_named("core").await;
    assert!(ask("!team list").await.contains("alice-t, bob-t, dave-t"));

    // Dave is invited to the conversation by hand before it is shared.
    let asked = alice.say(&dm, "!new Roadmap").await;
    alice.wait_for_reply(&dm, &bot, &asked).await;
    let (room, _) = alice.wait_for_invite_named("Mosaic: Roadmap").await;
    alice.join(&room).await;
    alice.invite(&room, &dave.user_id).await;
    dave.join(&room).await;

    let share = alice.say(&room, "!share core").await;
    assert!(body(&alice.wait_for_reply(&room, &bot, &share).await).contains("Shared with **core**"));
    let (shared, _) = bob.wait_for_invite_named("Mosaic: Roadmap").await;
    assert_eq!(shared, room);
    bob.join(&room).await;
    wait_until("the room joining the team Space", async || {
        !alice.state_or_null(&team_space, &format!("m.space.child/{room}")).await.is_null()
    })
    .await;
    assert_eq!(alice.state(&room, "m.room.history_visibility").await["history_visibility"], "shared");

    let unshare = alice.say(&room, "!unshare").await;
    assert!(body(&alice.wait_for_reply(&room, &bot, &unshare).await).contains("No longer shared"));
    wait_until("bob's removal", async || membership(&alice, &room, &bob.user_id).await == "leave").await;
    assert_eq!(membership(&alice, &room, &dave.user_id).await, "join", "people invited by hand stay");
    let child = alice.state_or_null(&team_space, &format!("m.space.child/{room}")).await;
    assert!(child.is_null() || child.as_object().is_some_and(|c| c.is_empty()), "the room left the Space: {child}");
    assert_eq!(alice.state(&room, "m.room.history_visibility").await["history_visibility"], "invited");

    // The same through the admin API.
    let (status, _) = admin.call(reqwest::Method::POST, "/teams", Some(json!({"name": "ops"}))).await;
    assert_eq!(status, 201);
    let (status, _) = admin.call(reqwest::Method::POST, "/teams/ops/members", Some(json!({"account": "bob-t"}))).await;
    assert_eq!(status, 201);
    bob.wait_for_invite_named("ops").await;
    let (_, listed) = admin.call(reqwest::Method::GET, "/conversations", None).await;
    let id = listed["conversations"].as_array().unwrap().iter().find(|c| c["roomId"] == room.as_str()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) =
        admin.call(reqwest::Method::POST, &format!("/conversations/{id}/share"), Some(json!({"team": "ops"}))).await;
    assert_eq!(status, 200);
    wait_until("bob's invitation through the ops share", async || {
        membership(&alice, &room, &bob.user_id).await == "invite"
    })
    .await;
    let (_, teams) = admin.call(reqwest::Method::GET, "/teams", None).await;
    let ops = teams["teams"].as_array().unwrap().iter().find(|t| t["name"] == "ops").unwrap().clone();
    assert_eq!(ops["members"], json!(["bob-t"]));
    assert_eq!(admin.call(reqwest::Method::DELETE, &format!("/conversations/{id}/share"), None).await.0, 200);
    assert_eq!(admin.call(reqwest::Method::DELETE, &format!("/conversations/{id}/share"), None).await.0, 404);
    assert_eq!(admin.call(reqwest::Method::DELETE, "/teams/ops/members/bob-t", None).await.0, 204);
    assert_eq!(
        admin.call(reqwest::Method::POST, "/teams/nope/members", Some(json!({"account": "bob-t"}))).await.0,
        404
    );

    // This deployment removes people whose link is revoked from every managed room.
    let revoke = format!("/identities/matrix/{}", dave.user_id);
    assert_eq!(admin.call(reqwest::Method::DELETE, &revoke, None).await.0, 204);
    wait_until("dave's removal after revocation", async || membership(&alice, &room, &dave.user_id).await == "leave")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_messages_leave_the_store_and_the_homeserver() {
    let slot = slot("retention");
    let operator = Person::new_admin("retention-operator").await;
    let alice = Person::new("retention-alice").await;
    let bob = Person::new("retention-bob").await;
    slot.write_config_with_sections(&format!(
        "[retention]\ninterval_secs = 1\nmin_days = 0\nhomeserver_admin_token = \"{}\"\n\n\
         [permissions]\n\"*\" = \"none\"\n\"localhost\" = \"user\"\n\"{}\" = \"admin\"\n",
        operator.token(),
        alice.user_id
    ));
    let _service = Service::start(&slot).await;
    let echo = slot.agent("echo");

    // Bob, not an admin, may shorten his own room's retention: the service forgets, but
    // the homeserver's copy (everyone's history) stays.
    let bobs_room = bob.create_room(&[&echo], true).await;
    bob.wait_for_member(&bobs_room, &echo).await;
    let bobs_old = bob.say(&bobs_room, "an old message of bob's").await;
    bob.wait_for_reply(&bobs_room, &echo, &bobs_old).await;
    let set = bob.say(&bobs_room, "!retention 0").await;
    let answer = bob.wait_for_reply(&bobs_room, &echo, &set).await;
    assert!(
        body(&answer).contains("The homeserver keeps its copy: purging it there needs an admin."),
        "{}",
        body(&answer)
    );
    let database = slot.database_path();
    wait_until("the store forgetting bob's old message", async || {
        stored_count(&database, "an old message of bob's").await == Some(0)
    })
    .await;

    let room = alice.create_room(&[&echo], true).await;
    alice.wait_for_member(&room, &echo).await;
    let old = alice.say(&room, "an old message").await;
    alice.wait_for_reply(&room, &echo, &old).await;

    let set = alice.say(&room, "!retention 0").await;
    let answer = alice.wait_for_reply(&room, &echo, &set).await;
    assert!(body(&answer).contains("0 day(s)"), "{}", body(&answer));

    wait_until("the store forgetting the old message", async || {
        stored_count(&database, "an old message").await == Some(0)
    })
    .await;
    wait_until("the homeserver purging the old message", async || {
        !alice.messages(&room).await.iter().any(|e| body(e) == "an old message")
    })
    .await;
    // Bob's room was expired passes before Alice's, and was never purged on the homeserver.
    assert!(
        bob.messages(&bobs_room).await.iter().any(|e| body(e) == "an old message of bob's"),
        "the homeserver keeps bob's history"
    );
    let log = slot.log();
    assert!(
        !log.lines().any(|l| l.contains("homeserver purge started") && l.contains(bobs_room.as_str())),
        "no purge was asked for bob's room"
    );

    // Keeping forever stops the purge.
    let keep = alice.say(&room, "!retention off").await;
    assert!(body(&alice.wait_for_reply(&room, &echo, &keep).await).contains("forever"));
    let kept = alice.say(&room, "a message to keep").await;
    alice.wait_for_reply(&room, &echo, &kept).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(alice.messages(&room).await.iter().any(|e| body(e) == "a message to keep"));
}

/// How many stored messages contain `text`; `None` while the database cannot be read.
async fn stored_count(database: &std::path::Path, text: &str) -> Option<i64> {
    let url = format!("sqlite://{}?mode=ro", database.display());
    mosaic_as::store::install_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.ok()?;
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages WHERE body LIKE $1")
        .bind(format!("%{text}%"))
        .fetch_one(&mut conn)
        .await
        .ok()?;
    Some(count)
}
