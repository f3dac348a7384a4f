//! The store on both backends: SQLite (a temp file) and a real PostgreSQL.

use std::process::Command;

use mosaic_as::protocol::{ChannelMessage, ContentType, Landing, SenderType};
use mosaic_as::secrets;
use mosaic_as::store::{
    Store, accounts, agent_rooms, bridges, conversations, finished_work, inbox, messages, outbox, retention, settings,
    teams,
};
use serde_json::json;
use sqlx::Connection;

/// A fresh, migrated store and what keeps it alive.
struct TestStore {
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    TestStore { store: Store::open(&url).await.unwrap(), _dir: Some(dir) }
}

/// PostgreSQL from `MOSAIC_TEST_POSTGRES_URL`, or the one `scripts/postgres.sh ensure`
/// provides (asked once per test run).
fn postgres_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("MOSAIC_TEST_POSTGRES_URL") {
            return url;
        }
        let output = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh"))
            .arg("ensure")
            .output()
            .expect("bash runs");
        assert!(
            output.status.success(),
            "scripts/postgres.sh ensure failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().lines().last().expect("a database URL").to_string()
    })
    .clone()
}

/// A new database on the test PostgreSQL for each test.
async fn postgres() -> TestStore {
    let base = postgres_url();
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    let name = format!("mosaic_store_{}", hex::encode(bytes));
    mosaic_as::store::install_drivers();
    let mut admin = sqlx::AnyConnection::connect(&base).await.unwrap_or_else(|e| panic!("PostgreSQL at {base}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    TestStore { store: Store::open(&format!("{prefix}/{name}")).await.unwrap(), _dir: None }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::sqlite().await.store).await })*
        }
        mod on_postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::postgres().await.store).await })*
        }
    };
}

on_both_backends!(
    a_transaction_is_stored_once_and_survives_reopening,
    link_tokens_are_single_use_and_expire,
    messages_are_appended_once_per_native_id,
    outbox_runs_in_order_and_deduplicates,
    a_room_waiting_for_a_retry_holds_back_only_itself,
    dead_letters_are_listed_retried_and_dropped,
    identities_link_and_unlink,
    settings_usage_teams_and_retention,
    agent_rooms_belong_to_an_account,
    grouped_writes_commit_together_and_fail_alone,
    memberships_are_recorded_together_the_last_change_winning,
    finished_work_is_removed_when_old_and_nothing_else,
    a_conversation_shows_in_its_room_and_its_bridged_chats,
    a_deferred_write_is_seen_once_durable_and_changes_nothing_after_it,
);

/// A write whose loss in a crash is harmless (the inbox's marks) skips the wait for its
/// sync; once durable, everyone sees it, and the writes after it wait for theirs again.
async fn a_deferred_write_is_seen_once_durable_and_changes_nothing_after_it(store: Store) {
    let ((), deferred) = store
        .write_deferred(async |conn| {
            outbox::enqueue(conn, "matrix", "send:deferred", "send", "{}").await?;
            Ok(())
        })
        .await
        .unwrap();
    deferred.durable().await.unwrap();
    let head = outbox::head(&mut store.conn().await.unwrap(), "matrix").await.unwrap();
    assert_eq!(head.map(|job| job.dedupe_key).as_deref(), Some("send:deferred"));

    if store.backend() == mosaic_as::store::Backend::Postgres {
        // Every connection of the pool (ten) at once: one of them is the deferred write's.
        let mut writes = Vec::new();
        for _ in 0..10 {
            let mut tx = store.begin_write().await.unwrap();
            let (setting,): (String,) = sqlx::query_as("SHOW synchronous_commit").fetch_one(&mut *tx).await.unwrap();
            assert_eq!(setting, "on", "the writes after it wait for their flush to disk again");
            writes.push(tx);
        }
    }
}

async fn a_conversation_shows_in_its_room_and_its_bridged_chats(store: Store) {
    let mut tx = store.begin_write().await.unwrap();
    let conversation = conversations::create_conversation(&mut tx, "Shown", None).await.unwrap();
    let other = conversations::create_conversation(&mut tx, "Other", None).await.unwrap();
    let chats = |list: &[(&str, &str)]| list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert!(bridges::chats_of_conversation(&mut tx, &conversation.id, "matrix").await.unwrap().is_empty());

    bridges::bridge(&mut tx, "telegram", "-100", &conversation.id, false, "@a:x").await.unwrap();
    bridges::bridge(&mut tx, "discord", "42", &conversation.id, true, "@a:x").await.unwrap();
    bridges::bridge(&mut tx, "discord", "7", &other.id, false, "@a:x").await.unwrap();
    assert_eq!(
        bridges::chats_of_conversation(&mut tx, &conversation.id, "matrix").await.unwrap(),
        chats(&[("discord", "42"), ("telegram", "-100")]),
        "a conversation without a room yet shows in its bridged chats"
    );

    conversations::set_conversation_room(&mut tx, &conversation.id, "!room:x").await.unwrap();
    bridges::record_direct(&mut tx, "telegram", "555", &conversation.id).await.unwrap();
    assert_eq!(
        bridges::chats_of_conversation(&mut tx, &conversation.id, "matrix").await.unwrap(),
        chats(&[("matrix", "!room:x"), ("discord", "42"), ("telegram", "-100")]),
        "the room first, then the bridged chats; a direct chat is not bridged"
    );
    tx.commit().await.unwrap();
}

async fn a_transaction_is_stored_once_and_survives_reopening(store: Store) {
    let events = [
        inbox::Pushed { room_id: "!a:x", event: r#"{"type":"m.room.message","n":1}"# },
        inbox::Pushed { room_id: "!b:x", event: r#"{"type":"m.room.message","n":2}"# },
    ];
    assert!(inbox::record_transaction(&store, "txn-1", &events).await.unwrap());
    assert!(
        !inbox::record_transaction(&store, "txn-1", &events).await.unwrap(),
        "a repeated txnId is not stored again"
    );
    let mut conn = store.begin_write().await.unwrap();
    let pending = inbox::pending(&mut conn, 10).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert!(pending[0].seq < pending[1].seq && pending[0].event.contains("\"n\":1"));
    inbox::mark_processed(&mut conn, &[pending[0].seq]).await.unwrap();
    assert_eq!(inbox::pending_count(&mut conn).await.unwrap(), 1);
    conn.commit().await.unwrap();
    assert!(inbox::record_transaction(&store, "txn-2", &[]).await.unwrap(), "an empty transaction is fine");
}

async fn a_room_waiting_for_a_retry_holds_back_only_itself(store: Store) {
    let events = [
        inbox::Pushed { room_id: "!slow:x", event: r#"{"n":1}"# },
        inbox::Pushed { room_id: "!fine:x", event: r#"{"n":2}"# },
        inbox::Pushed { room_id: "!slow:x", event: r#"{"n":3}"# },
        inbox::Pushed { room_id: "!fine:x", event: r#"{"n":4}"# },
    ];
    assert!(inbox::record_transaction(&store, "txn-rooms", &events).await.unwrap());
    let mut conn = store.begin_write().await.unwrap();
    let pending = inbox::pending(&mut conn, 10).await.unwrap();
    assert_eq!(pending.len(), 4);
    inbox::retry_later(&mut conn, pending[0].seq, 60_000, "homeserver down").await.unwrap();
    let now: Vec<String> = inbox::pending(&mut conn, 10).await.unwrap().into_iter().map(|e| e.event).collect();
    assert_eq!(now, [r#"{"n":2}"#, r#"{"n":4}"#], "the waiting room's later event stays behind it");
    assert!(inbox::next_retry_at(&mut conn).await.unwrap().is_some_and(|at| at > mosaic_as::store::now_ms()));
    inbox::mark_dead(&mut conn, pending[0].seq, "attempts", "homeserver down").await.unwrap();
    let now: Vec<String> = inbox::pending(&mut conn, 10).await.unwrap().into_iter().map(|e| e.event).collect();
    assert_eq!(now, [r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":4}"#], "past a dead letter its room goes on");
    assert_eq!(inbox::pending_count(&mut conn).await.unwrap(), 3);
    conn.commit().await.unwrap();
}

async fn dead_letters_are_listed_retried_and_dropped(store: Store) {
    use mosaic_as::store::dead_letters::{self, DeadLetterId};
    let mut conn = store.begin_write().await.unwrap();
    let queue = "chat:telegram:-100";
    for key in ["send:a", "send:b"] {
        outbox::enqueue(&mut conn, queue, key, "send", r#"{"secret":"payload"}"#).await.unwrap();
    }
    let first = outbox::head(&mut conn, queue).await.unwrap().unwrap();
    outbox::mark_dead(&mut conn, first.seq, "attempts", "Telegram answered 500").await.unwrap();
    let second = outbox::head(&mut conn, queue).await.unwrap().unwrap();
    assert_eq!(second.dedupe_key, "send:b");
    outbox::mark_dead(&mut conn, second.seq, "permanent", "chat not found").await.unwrap();

    let listed = dead_letters::list(&mut conn).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|d| d.body.is_none()), "the list leaves payloads out");
    let counts = dead_letters::counts(&mut conn).await.unwrap();
    assert_eq!(
        counts,
        [("telegram".to_string(), "attempts".to_string(), 1), ("telegram".into(), "permanent".into(), 1)]
    );

    let id = DeadLetterId { source: dead_letters::Source::Outbox, seq: first.seq };
    let shown = dead_letters::get(&mut conn, id).await.unwrap().unwrap();
    assert_eq!((shown.reason.as_str(), shown.error.as_deref()), ("attempts", Some("Telegram answered 500")));
    assert!(shown.body.unwrap().contains("payload"));

    assert!(dead_letters::retry(&mut conn, id).await.unwrap());
    assert!(!dead_letters::retry(&mut conn, id).await.unwrap(), "a job back in its queue is no dead letter");
    let again = outbox::head(&mut conn, queue).await.unwrap().unwrap();
    assert_eq!(again.seq, first.seq, "a retried job takes its old place in the queue");
    assert!(again.may_have_run(0), "a retried job looks for an earlier copy before sending");

    let dropped = DeadLetterId { source: dead_letters::Source::Outbox, seq: second.seq };
    assert!(dead_letters::drop(&mut conn, dropped).await.unwrap());
    assert!(dead_letters::get(&mut conn, dropped).await.unwrap().is_none());
    assert!(!dead_letters::drop(&mut conn, dropped).await.unwrap());
    assert!(!outbox::enqueue(&mut conn, queue, "send:b", "send", "{}").await.unwrap(), "its dedupe key still holds");
    assert!(dead_letters::list(&mut conn).await.unwrap().is_empty());
    assert!(dead_letters::get(&mut conn, "inbox/999".parse().unwrap()).await.unwrap().is_none());
    conn.commit().await.unwrap();
}

async fn link_tokens_are_single_use_and_expire(store: Store) {
    let mut tx = store.begin_write().await.unwrap();
    let account = accounts::create_account(&mut tx, "team", None).await.unwrap();
    let token = accounts::issue_link_token(&mut tx, &account.id, 900).await.unwrap();
    let expired = accounts::issue_link_token(&mut tx, &account.id, 0).await.unwrap();
    tx.commit().await.unwrap();
    let mut conn = store.begin_write().await.unwrap();
    let stored: Vec<(String,)> =
        sqlx::query_as("SELECT token_hash FROM link_tokens").fetch_all(&mut *conn).await.unwrap();
    assert!(stored.iter().all(|(hash,)| hash != &token), "tokens are stored hashed");

    let hash = |token: &str| secrets::hash_token(token);
    let redeemed = accounts::redeem_link_token(&mut conn, &hash(&token), "matrix:@a:x").await.unwrap();
    assert_eq!(redeemed.unwrap().id, account.id);
    let again = accounts::redeem_link_token(&mut conn, &hash(&token), "matrix:@b:x").await.unwrap();
    assert_eq!(again.unwrap_err(), accounts::TokenRejection::AlreadyUsed);
    let late = accounts::redeem_link_token(&mut conn, &hash(&expired), "matrix:@b:x").await.unwrap();
    assert_eq!(late.unwrap_err(), accounts::TokenRejection::Expired);
    let unknown = accounts::redeem_link_token(&mut conn, &hash(&"f".repeat(64)), "matrix:@b:x").await.unwrap();
    assert_eq!(unknown.unwrap_err(), accounts::TokenRejection::Unknown);

    for _ in 0..3 {
        accounts::record_link_failure(&mut conn, "matrix:@b:x").await.unwrap();
    }
    let (count, oldest) = accounts::link_failures_since(&mut conn, "matrix:@b:x", 0).await.unwrap();
    assert_eq!(count, 3);
    assert!(oldest.is_some());
    assert_eq!(accounts::link_failures_since(&mut conn, "matrix:@c:x", 0).await.unwrap().0, 0);
    conn.commit().await.unwrap();
}

async fn messages_are_appended_once_per_native_id(store: Store) {
    let mut tx = store.begin_write().await.unwrap();
    let conversation = conversations::conversation_for_room_or_create(&mut tx, "!room:x", "Room").await.unwrap();
    let again = conversations::conversation_for_room_or_create(&mut tx, "!room:x", "Room").await.unwrap();
    assert_eq!(conversation.id, again.id);
    let mut msg = ChannelMessage::new("!room:x", "@a:x", SenderType::User, "hello", ContentType::Text);
    msg.metadata.insert("channelMessageId".into(), json!("$event1"));
    assert!(messages::append(&mut tx, &conversation.id, "matrix", &msg).await.unwrap());
    // The same event redelivered gets a new canonical id but the same native id.
    let mut redelivered = msg.clone();
    redelivered.id = uuid::Uuid::new_v4();
    assert!(!messages::append(&mut tx, &conversation.id, "matrix", &redelivered).await.unwrap());
    messages::add_ref(&mut tx, "matrix", "!room:x", "$event1", msg.id).await.unwrap();
    messages::add_ref(&mut tx, "matrix", "!room:x", "$event1", msg.id).await.unwrap();
    tx.commit().await.unwrap();

    let mut conn = store.conn().await.unwrap();
    assert_eq!(messages::count_in_conversation(&mut conn, &conversation.id).await.unwrap(), 1);
    assert_eq!(messages::get(&mut conn, msg.id).await.unwrap().unwrap(), msg);
    assert_eq!(messages::message_for_native(&mut conn, "matrix", "!room:x", "$event1").await.unwrap(), Some(msg.id));
    assert_eq!(
        messages::native_for_message(&mut conn, "matrix", "!room:x", msg.id).await.unwrap().as_deref(),
        Some("$event1")
    );
    let history = messages::history(&mut conn, &conversation.id, 10).await.unwrap();
    assert_eq!(history, vec![msg]);
}

async fn outbox_runs_in_order_and_deduplicates(store: Store) {
    let mut conn = store.begin_write().await.unwrap();
    assert!(outbox::enqueue(&mut conn, "matrix", "send:1", "send", r#"{"n":1}"#).await.unwrap());
    assert!(outbox::enqueue(&mut conn, "matrix", "send:2", "send", r#"{"n":2}"#).await.unwrap());
    assert!(
        !outbox::enqueue(&mut conn, "matrix", "send:1", "send", r#"{"n":1}"#).await.unwrap(),
        "same key, stored once"
    );
    assert!(outbox::enqueue(&mut conn, "agents", "turn:1", "agent.turn", "{}").await.unwrap());
    assert_eq!(outbox::depth(&mut conn, "matrix").await.unwrap(), 2);

    let head = outbox::head(&mut conn, "matrix").await.unwrap().unwrap();
    assert_eq!(head.dedupe_key, "send:1");
    outbox::retry_later(&mut conn, head.seq, 60_000, "homeserver down").await.unwrap();
    let still = outbox::head(&mut conn, "matrix").await.unwrap().unwrap();
    assert_eq!(still.dedupe_key, "send:1", "a job waiting for its retry holds back the ones behind it");
    assert_eq!(still.attempts, 1);
    outbox::mark_done(&mut conn, still.seq).await.unwrap();
    let next = outbox::head(&mut conn, "matrix").await.unwrap().unwrap();
    assert_eq!(next.dedupe_key, "send:2");
    outbox::mark_dead(&mut conn, next.seq, "permanent", "room gone").await.unwrap();
    assert!(outbox::head(&mut conn, "matrix").await.unwrap().is_none(), "a dead letter holds nothing back");
    let (payload,): (String,) =
        sqlx::query_as("SELECT payload FROM outbox WHERE dedupe_key = 'send:1'").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(payload, "{}", "a finished job keeps no payload");
    conn.commit().await.unwrap();
}

async fn grouped_writes_commit_together_and_fail_alone(store: Store) {
    use mosaic_as::store::group_commit::Write;
    let mut conn = store.begin_write().await.unwrap();
    for n in 0..40 {
        outbox::enqueue(&mut conn, &format!("chat:{n}"), &format!("send:{n}"), "send", "{}").await.unwrap();
    }
    let jobs: Vec<i64> = sqlx::query_as::<_, (i64,)>("SELECT seq FROM outbox ORDER BY seq")
        .fetch_all(&mut *conn)
        .await
        .unwrap()
        .into_iter()
        .map(|(seq,)| seq)
        .collect();
    conn.commit().await.unwrap();
    let ids: Vec<uuid::Uuid> = (0..40).map(|_| uuid::Uuid::new_v4()).collect();
    // A write the database refuses, among others: PostgreSQL keeps no NUL in text.
    let refused = (store.backend() == mosaic_as::store::Backend::Postgres).then(|| {
        Write::Landed(Landing {
            channel: "matrix".into(),
            chat_id: "!room:x".into(),
            native_id: "$bad\u{0}id".into(),
            message_id: uuid::Uuid::new_v4(),
        })
    });
    let mut writes: Vec<Write> = jobs.iter().map(|&seq| Write::JobDone { seq }).collect();
    writes.extend(ids.iter().enumerate().map(|(n, id)| {
        Write::Landed(Landing {
            channel: "matrix".into(),
            chat_id: "!room:x".into(),
            native_id: format!("$event{n}"),
            message_id: *id,
        })
    }));
    writes.extend(refused.clone());
    let results = futures::future::join_all(writes.into_iter().map(|write| {
        let store = store.clone();
        async move { store.commit_grouped(write).await }
    }))
    .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(failed, usize::from(refused.is_some()), "only the refused write fails: {results:?}");
    let mut conn = store.conn().await.unwrap();
    for n in 0..40 {
        assert!(outbox::head(&mut conn, &format!("chat:{n}")).await.unwrap().is_none(), "job {n} is done");
    }
    for (n, id) in ids.iter().enumerate() {
        let found = messages::message_for_native(&mut conn, "matrix", "!room:x", &format!("$event{n}")).await.unwrap();
        assert_eq!(found, Some(*id), "where message {n} landed is recorded");
    }
}

async fn memberships_are_recorded_together_the_last_change_winning(store: Store) {
    use mosaic_as::store::conversations::Membership;
    let names: Vec<String> = (0..250).map(|n| format!("@person{n}:x")).collect();
    let mut changes: Vec<Membership> =
        names.iter().map(|user_id| Membership { room_id: "!big:x", user_id, membership: "join" }).collect();
    // Some leave again, and one joins another room, in the same run.
    changes.extend(names[..3].iter().map(|user_id| Membership { room_id: "!big:x", user_id, membership: "leave" }));
    changes.push(Membership { room_id: "!small:x", user_id: &names[0], membership: "invite" });
    store.write(async |conn| conversations::set_memberships(conn, &changes).await).await.unwrap();
    store.write(async |conn| conversations::set_membership(conn, "!big:x", &names[1], "join").await).await.unwrap();

    let mut conn = store.conn().await.unwrap();
    let big = conversations::present_members(&mut conn, "!big:x").await.unwrap();
    assert_eq!(big.len(), 248, "250 joined, 3 left, 1 came back");
    assert!(!big.iter().any(|(user, _)| user == &names[0] || user == &names[2]), "the last change wins");
    let small = conversations::present_members(&mut conn, "!small:x").await.unwrap();
    assert_eq!(small, [(names[0].clone(), "invite".to_string())]);
}

async fn identities_link_and_unlink(store: Store) {
    let mut conn = store.begin_write().await.unwrap();
    let one = accounts::create_account(&mut conn, "one", Some("One")).await.unwrap();
    let two = accounts::create_account(&mut conn, "two", None).await.unwrap();
    conn.commit().await.unwrap();
    // A refused write fails alone (on PostgreSQL it would spoil a transaction around it).
    let mut refused = store.begin_write().await.unwrap();
    assert!(accounts::create_account(&mut refused, "one", None).await.is_err(), "account names are unique");
    refused.rollback().await.unwrap();
    let mut conn = store.begin_write().await.unwrap();
    accounts::link_identity(&mut conn, "matrix", "@a:x", &one.id).await.unwrap();
    accounts::link_identity(&mut conn, "discord", "1234", &one.id).await.unwrap();
    assert_eq!(accounts::account_for_identity(&mut conn, "matrix", "@a:x").await.unwrap().unwrap().id, one.id);
    assert_eq!(accounts::identities_of(&mut conn, &one.id).await.unwrap().len(), 2);
    accounts::link_identity(&mut conn, "matrix", "@a:x", &two.id).await.unwrap();
    assert_eq!(accounts::account_for_identity(&mut conn, "matrix", "@a:x").await.unwrap().unwrap().id, two.id);
    assert!(accounts::unlink_identity(&mut conn, "matrix", "@a:x").await.unwrap());
    assert!(!accounts::unlink_identity(&mut conn, "matrix", "@a:x").await.unwrap());
    assert!(accounts::account_for_identity(&mut conn, "matrix", "@a:x").await.unwrap().is_none());
    conn.commit().await.unwrap();
}

async fn settings_usage_teams_and_retention(store: Store) {
    let mut conn = store.begin_write().await.unwrap();
    let conversation = conversations::conversation_for_room_or_create(&mut conn, "!r:x", "Room").await.unwrap();
    let id = conversation.id.as_str();

    assert!(
        settings::get(&mut conn, id).await.unwrap().answer_unlinked,
        "people without a link are answered by default"
    );
    settings::set(&mut conn, id, settings::Change::DefaultAgent("helper")).await.unwrap();
    settings::set(&mut conn, id, settings::Change::MentionOnly(true)).await.unwrap();
    settings::set(&mut conn, id, settings::Change::AnswerUnlinked(false)).await.unwrap();
    let room = settings::get(&mut conn, id).await.unwrap();
    assert_eq!(room.default_agent.as_deref(), Some("helper"));
    assert!(room.mention_only && !room.answer_unlinked);

    settings::record_usage(&mut conn, "turn:1", "helper", id, 10, 5).await.unwrap();
    settings::record_usage(&mut conn, "turn:1", "helper", id, 10, 5).await.unwrap();
    settings::record_usage(&mut conn, "turn:2", "helper", id, 1, 2).await.unwrap();
    let totals = settings::usage_totals(&mut conn, id).await.unwrap();
    assert_eq!((totals[0].turns, totals[0].input_tokens, totals[0].output_tokens), (2, 11, 7), "a turn counts once");

    let account = accounts::create_account(&mut conn, "owner", None).await.unwrap();
    accounts::link_identity(&mut conn, "matrix", "@o:x", &account.id).await.unwrap();
    let team = teams::create(&mut conn, "core").await.unwrap();
    assert!(teams::add_member(&mut conn, &team.id, &account.id).await.unwrap());
    assert!(!teams::add_member(&mut conn, &team.id, &account.id).await.unwrap());
    assert_eq!(teams::member_matrix_ids(&mut conn, &team.id).await.unwrap(), vec!["@o:x"]);
    teams::set_share(&mut conn, id, &team.id).await.unwrap();
    assert_eq!(teams::share_of(&mut conn, id).await.unwrap().as_deref(), Some(team.id.as_str()));
    assert_eq!(teams::shared_rooms(&mut conn, &team.id).await.unwrap(), vec!["!r:x"]);
    teams::record_share_invite(&mut conn, "!r:x", "@p:x", &team.id).await.unwrap();
    assert_eq!(teams::take_share_invites(&mut conn, "!r:x").await.unwrap(), vec!["@p:x"]);
    assert!(teams::take_share_invites(&mut conn, "!r:x").await.unwrap().is_empty());
    assert!(teams::remove_share(&mut conn, id).await.unwrap());

    retention::set_policy(&mut conn, "!r:x", "all", Some(30), retention::Reach::StoreOnly).await.unwrap();
    assert_eq!(retention::reach_of_room(&mut conn, "!r:x").await.unwrap(), retention::Reach::StoreOnly);
    retention::set_policy(&mut conn, "!r:x", "all", None, retention::Reach::AlsoHomeserver).await.unwrap();
    assert_eq!(retention::reach_of_room(&mut conn, "!r:x").await.unwrap(), retention::Reach::AlsoHomeserver);
    assert_eq!(
        retention::reach_of_room(&mut conn, "!other:x").await.unwrap(),
        retention::Reach::AlsoHomeserver,
        "rooms without a policy of their own follow the operator's"
    );
    assert_eq!(retention::policy(&mut conn, "!r:x", "all").await.unwrap(), Some(None), "keep forever, last write wins");
    assert_eq!(retention::policy(&mut conn, "*", "team").await.unwrap(), None);
    let msg = ChannelMessage::new("!r:x", "@o:x", SenderType::User, "old", ContentType::Text);
    messages::append(&mut conn, id, "matrix", &msg).await.unwrap();
    // A reply to it waits in the outbox: the message stays until the reply is sent.
    let mut reply = ChannelMessage::new("!r:x", "@bot:x", SenderType::System, "answer", ContentType::Text);
    reply.reply_to_id = Some(msg.id);
    let payload = serde_json::to_string(&reply).unwrap();
    outbox::enqueue(&mut conn, "chat:matrix:!r:x", "reply:1", "send", &payload).await.unwrap();
    let job = outbox::head(&mut conn, "chat:matrix:!r:x").await.unwrap().expect("the reply's job");
    assert_eq!(retention::delete_before(&mut conn, id, 0).await.unwrap(), 0, "nothing is older than the epoch");
    let future = mosaic_as::store::now_ms() + 1000;
    assert_eq!(retention::delete_before(&mut conn, id, future).await.unwrap(), 0, "a queued reply still names it");
    outbox::mark_done(&mut conn, job.seq).await.unwrap();
    assert_eq!(retention::delete_before(&mut conn, id, future).await.unwrap(), 1);
    assert_eq!(retention::delete_before(&mut conn, id, future).await.unwrap(), 0, "running twice removes nothing more");
    conn.commit().await.unwrap();
}

async fn agent_rooms_belong_to_an_account(store: Store) {
    let mut conn = store.begin_write().await.unwrap();
    agent_rooms::record(&mut conn, "!alice:x", "alice-account", "beta", "alpha").await.unwrap();
    assert_eq!(
        agent_rooms::room_of_pair(&mut conn, "alice-account", "alpha", "beta").await.unwrap().as_deref(),
        Some("!alice:x")
    );
    // Another account's pair of the same agents is another room.
    assert_eq!(agent_rooms::room_of_pair(&mut conn, "bob-account", "alpha", "beta").await.unwrap(), None);
    agent_rooms::record(&mut conn, "!bob:x", "bob-account", "alpha", "beta").await.unwrap();
    assert_eq!(
        agent_rooms::room_of_pair(&mut conn, "bob-account", "beta", "alpha").await.unwrap().as_deref(),
        Some("!bob:x")
    );
    for room in ["!alice:x", "!bob:x"] {
        let pair = agent_rooms::pair_of_room(&mut conn, room).await.unwrap();
        assert_eq!(pair, Some(("alpha".to_string(), "beta".to_string())));
    }
    // Recording again changes nothing.
    agent_rooms::record(&mut conn, "!other:x", "alice-account", "alpha", "beta").await.unwrap();
    assert_eq!(
        agent_rooms::room_of_pair(&mut conn, "alice-account", "alpha", "beta").await.unwrap().as_deref(),
        Some("!alice:x")
    );
    conn.commit().await.unwrap();
}

async fn finished_work_is_removed_when_old_and_nothing_else(store: Store) {
    use mosaic_as::store::{dead_letters, now_ms};
    const DAY: i64 = 86_400_000;
    let old = now_ms() - 10 * DAY;
    let count = |sql: &'static str| {
        let store = store.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut *store.conn().await.unwrap()).await.unwrap();
            n
        }
    };
    // An old transaction of more events than one batch removes, all processed long ago;
    // an old one with an event still waiting; a recent one, processed today.
    let many: Vec<String> = (0..2 * finished_work::BATCH + 7).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    let pushed: Vec<inbox::Pushed> = many.iter().map(|e| inbox::Pushed { room_id: "!old:x", event: e }).collect();
    assert!(inbox::record_transaction(&store, "txn-old", &pushed).await.unwrap());
    let waiting = [inbox::Pushed { room_id: "!stuck:x", event: r#"{"stuck":1}"# }];
    assert!(inbox::record_transaction(&store, "txn-old-waiting", &waiting).await.unwrap());
    let dead = [inbox::Pushed { room_id: "!dead:x", event: r#"{"dead":1}"# }];
    assert!(inbox::record_transaction(&store, "txn-old-dead", &dead).await.unwrap());
    let mut tx = store.begin_write().await.unwrap();
    let pending = inbox::pending(&mut tx, 3 * finished_work::BATCH).await.unwrap();
    let (finished, left): (Vec<_>, Vec<_>) = pending.iter().partition(|e| e.room_id == "!old:x");
    let seqs: Vec<i64> = finished.iter().map(|e| e.seq).collect();
    inbox::mark_processed(&mut tx, &seqs).await.unwrap();
    let dead_seq = left.iter().find(|e| e.room_id == "!dead:x").unwrap().seq;
    inbox::mark_dead(&mut tx, dead_seq, "permanent", "refused").await.unwrap();
    // Jobs: one done long ago, one dropped dead letter long ago, one dead letter still
    // waiting for an operator, one waiting to run, one done today.
    for key in ["done-old", "dropped-old", "dead", "waiting", "done-today"] {
        outbox::enqueue(&mut tx, "chat:matrix:!r", key, "send", "{}").await.unwrap();
    }
    let job = |key: &'static str| format!("SELECT seq FROM outbox WHERE dedupe_key = '{key}'");
    let seq_of = async |tx: &mut sqlx::AnyConnection, key| -> i64 {
        sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(job(key))).fetch_one(&mut *tx).await.unwrap().0
    };
    let (done_old, dropped_old) = (seq_of(&mut tx, "done-old").await, seq_of(&mut tx, "dropped-old").await);
    let (dead_job, done_today) = (seq_of(&mut tx, "dead").await, seq_of(&mut tx, "done-today").await);
    outbox::mark_done(&mut tx, done_old).await.unwrap();
    outbox::mark_dead(&mut tx, dropped_old, "attempts", "500").await.unwrap();
    let id = dead_letters::DeadLetterId { source: dead_letters::Source::Outbox, seq: dropped_old };
    assert!(dead_letters::drop(&mut tx, id).await.unwrap());
    outbox::mark_dead(&mut tx, dead_job, "attempts", "500").await.unwrap();
    outbox::mark_done(&mut tx, done_today).await.unwrap();
    // Backdate everything except what finished today.
    sqlx::query("UPDATE txn_inbox SET received_at = $1").bind(old).execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE inbox_events SET processed_at = $1 WHERE processed_at IS NOT NULL")
        .bind(old)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE inbox_events SET failed_at = $1 WHERE failed_at IS NOT NULL")
        .bind(old)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE outbox SET done_at = $1, failed_at = $1 WHERE dedupe_key IN ('done-old', 'dropped-old', 'dead')",
    )
    .bind(old)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE outbox SET done_at = NULL WHERE dedupe_key = 'dead'").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();

    let pruned = finished_work::prune(&store, now_ms() - DAY).await.unwrap();
    assert_eq!(
        pruned,
        finished_work::Pruned { inbox_events: 2 * finished_work::BATCH as u64 + 7, transactions: 1, jobs: 2 }
    );
    assert_eq!(count("SELECT COUNT(*) FROM inbox_events").await, 2, "the waiting event and the dead letter stay");
    let kept = count("SELECT COUNT(*) FROM txn_inbox WHERE txn_id IN ('txn-old-waiting', 'txn-old-dead')").await;
    assert_eq!(kept, 2, "a transaction stays while one of its events does");
    let mut conn = store.conn().await.unwrap();
    assert_eq!(inbox::pending_count(&mut conn).await.unwrap(), 1);
    assert_eq!(dead_letters::list(&mut conn).await.unwrap().len(), 2, "dead letters wait for an operator");
    let jobs: Vec<(String,)> =
        sqlx::query_as("SELECT dedupe_key FROM outbox ORDER BY seq").fetch_all(&mut *conn).await.unwrap();
    let jobs: Vec<&str> = jobs.iter().map(|(k,)| k.as_str()).collect();
    assert_eq!(jobs, ["dead", "waiting", "done-today"]);
    drop(conn);
    assert_eq!(finished_work::prune(&store, now_ms() - DAY).await.unwrap(), finished_work::Pruned::default());
    assert_eq!(count("SELECT COUNT(*) FROM outbox").await, 3, "a second pass removes nothing more");
}
