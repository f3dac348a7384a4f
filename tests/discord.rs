//! The Discord adapter with the real serenity client against a fake Discord (REST +
//! gateway), a real SQLite store and an in-memory media repository: what people on
//! Discord see, and what the hub is handed.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mosaic_as::config::DiscordConfig;
use mosaic_as::discord::{self, DiscordAdapter};
use mosaic_as::protocol::{
    AdapterHealth, BridgeError, ChannelAdapter, ChannelAttachment, ChannelEvent, ChannelMessage, ChannelSendError,
    ChatKind, ContentType, HandlerError, InboundHandler, MediaRepository, SenderType, metadata_keys as keys,
};
use mosaic_as::store::{Store, bridges, conversations, messages};
use serde_json::json;
use support::fake_discord::{FakeDiscord, GUILD, Sent};
use support::memory_media::MemoryMedia;
use tokio::sync::mpsc;

const GENERAL: u64 = 1_100_000_000_000_000_001;
const ALICE: u64 = 1_200_000_000_000_000_001;
const BOB: u64 = 1_200_000_000_000_000_002;
const WAIT: Duration = Duration::from_secs(10);

/// Stands in for the hub: records what it is handed (and, like the hub, the native id of
/// each new message, so replies, edits and deletions can be resolved).
struct Hub {
    store: Store,
    tx: mpsc::UnboundedSender<ChannelMessage>,
    refuse_first: AtomicUsize,
}

#[async_trait]
impl InboundHandler for Hub {
    async fn handle(&self, msg: ChannelMessage) -> Result<(), HandlerError> {
        if self.refuse_first.load(Ordering::SeqCst) > 0 {
            self.refuse_first.fetch_sub(1, Ordering::SeqCst);
            return Err(HandlerError::transient("database busy"));
        }
        let plain = msg.event == ChannelEvent::Message;
        if let (true, Some(native)) = (plain, msg.channel_message_id()) {
            let mut conn = self.store.begin_write().await.unwrap();
            messages::add_ref(&mut conn, discord::CHANNEL, &msg.channel_id, native, msg.id).await.unwrap();
            conn.commit().await.unwrap();
        }
        self.tx.send(msg).unwrap();
        Ok(())
    }
}

struct Harness {
    fake: FakeDiscord,
    adapter: DiscordAdapter,
    store: Store,
    media: Arc<MemoryMedia>,
    hub: Arc<Hub>,
    rx: mpsc::UnboundedReceiver<ChannelMessage>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

/// A fake Discord with #general and two people, a store where #general is bridged, and
/// a connected adapter.
async fn harness_with(prepare: impl FnOnce(&FakeDiscord)) -> Harness {
    let fake = FakeDiscord::start().await;
    fake.add_channel(GUILD, GENERAL, "general");
    fake.add_user(ALICE, "alice", Some("Alice A."), true);
    fake.add_user(BOB, "bob", None, false);
    prepare(&fake);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("test.db").display())).await.unwrap();
    {
        let mut conn = store.begin_write().await.unwrap();
        let conversation = conversations::create_conversation(&mut conn, "general", None).await.unwrap();
        bridges::bridge(&mut conn, discord::CHANNEL, &GENERAL.to_string(), &conversation.id, true, "@admin:test")
            .await
            .unwrap();
        conn.commit().await.unwrap();
    }
    let media = Arc::new(MemoryMedia::default());
    let config = DiscordConfig { token: Some(fake.token()), api_url: fake.api_url(), ..Default::default() };
    let adapter = DiscordAdapter::new(&config, store.clone(), media.clone()).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let hub = Arc::new(Hub { store: store.clone(), tx, refuse_first: AtomicUsize::new(0) });
    adapter.on_message(hub.clone());
    adapter.open_bridge(&GENERAL.to_string()).await.unwrap();
    adapter.connect().await.unwrap();
    initial_catch_up(&fake).await;
    Harness { fake, adapter, store, media, hub, rx, _dir: dir }
}

/// Waits for the catch-up the adapter runs after READY, so that the tests' messages
/// arrive live (with the gateway's member fields) rather than from the history.
async fn initial_catch_up(fake: &FakeDiscord) {
    let path = format!("/api/v10/channels/{GENERAL}/messages");
    let deadline = Instant::now() + WAIT;
    while !fake.requests().iter().any(|r| r.method == "GET" && r.path == path) {
        assert!(Instant::now() < deadline, "no catch-up after READY");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

impl Harness {
    async fn next(&mut self) -> ChannelMessage {
        tokio::time::timeout(WAIT, self.rx.recv()).await.expect("the hub got a message in time").unwrap()
    }

    /// Nothing more reaches the hub for a while.
    async fn quiet(&mut self, period: Duration) {
        if let Ok(Some(msg)) = tokio::time::timeout(period, self.rx.recv()).await {
            panic!("unexpected message for the hub: {msg:?}");
        }
    }

    async fn send(&self, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        self.adapter.send_message(&GENERAL.to_string(), msg).await
    }

    async fn native_of(&self, msg: &ChannelMessage) -> Option<String> {
        let mut conn = self.store.conn().await.unwrap();
        messages::native_for_message(&mut conn, discord::CHANNEL, &GENERAL.to_string(), msg.id).await.unwrap()
    }
}

/// A message from Matrix as the hub hands it to the adapter.
fn from_matrix(content: &str) -> ChannelMessage {
    let mut msg = ChannelMessage::new("!room:test", "@carol:test", SenderType::User, content, ContentType::Markdown);
    msg.metadata.insert(keys::SENDER_NAME.into(), json!("Carol"));
    msg.metadata.insert(keys::ORIGIN_CHANNEL.into(), json!("matrix"));
    msg
}

fn by_webhook(s: &Sent) -> bool {
    s.webhook_id.is_some()
}

#[tokio::test]
async fn a_message_reaches_the_hub_with_sender_and_metadata() {
    let mut h = harness().await;
    h.fake.set_nick(ALICE, "Ally");
    let id = h.fake.user_says(GENERAL, ALICE, "hello **world**").mentioning(BOB).send();
    let msg = h.next().await;
    assert_eq!(msg.channel_id, GENERAL.to_string());
    assert_eq!(msg.sender_id, ALICE.to_string());
    assert_eq!(msg.sender_type, SenderType::User);
    assert_eq!(msg.content, "hello **world**");
    assert_eq!(msg.content_type, ContentType::Markdown);
    assert_eq!(msg.thread_id, None);
    assert_eq!(msg.channel_message_id(), Some(id.to_string().as_str()));
    assert_eq!(msg.meta_str(keys::DEDUPE_KEY), Some(id.to_string().as_str()));
    assert_eq!(msg.meta_str(keys::SENDER_NAME), Some("Ally"), "the server nickname wins");
    assert_eq!(msg.meta_str("guildId"), Some(GUILD.to_string().as_str()));
    assert_eq!(msg.metadata["channelType"], json!(0));
    assert_eq!(msg.chat, ChatKind::Group);
    assert_eq!(msg.metadata["mentions"], json!([BOB.to_string()]));
    let avatar = msg.meta_str(keys::SENDER_AVATAR_URL).expect("avatar uploaded").to_string();
    assert!(avatar.starts_with("mxc://"));
    assert!(h.media.files.lock().unwrap()[&avatar].bytes.starts_with(b"\x89PNG"));

    // The avatar is uploaded once, not per message; without a nickname the display name shows.
    h.fake.set_nick(ALICE, "");
    h.fake.user_says(GENERAL, BOB, "hi").send();
    let second = h.next().await;
    assert_eq!(second.meta_str(keys::SENDER_NAME), Some("bob"), "username when there is no display name");
    assert_eq!(second.meta_str(keys::SENDER_AVATAR_URL), None);
    h.fake.user_says(GENERAL, ALICE, "again").send();
    let third = h.next().await;
    assert_eq!(third.meta_str(keys::SENDER_AVATAR_URL), Some(avatar.as_str()));
    assert_eq!(h.media.files.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn replies_threads_edits_and_deletions_map_to_the_hub() {
    let mut h = harness().await;
    let root_native = h.fake.user_says(GENERAL, ALICE, "root").send();
    let root = h.next().await;

    h.fake.user_says(GENERAL, BOB, "answer").reply_to(root_native).send();
    let reply = h.next().await;
    assert_eq!(reply.reply_to_id, Some(root.id));

    let thread = h.fake.start_thread(GENERAL, root_native, "root talk");
    h.fake.user_says(thread, BOB, "in the thread").send();
    let in_thread = h.next().await;
    assert_eq!(in_thread.channel_id, GENERAL.to_string(), "a thread message belongs to the parent chat");
    assert_eq!(in_thread.thread_id, Some(thread.to_string()));

    h.fake.user_edits(GENERAL, root_native, "root (edited)");
    let edit = h.next().await;
    assert_eq!(edit.event, ChannelEvent::Edit { target: Some(root.id) });
    assert_eq!(edit.content, "root (edited)");
    assert!(edit.meta_str(keys::DEDUPE_KEY).unwrap().starts_with(&format!("{root_native}:edit:")));

    h.fake.user_deletes(GENERAL, root_native);
    let deletion = h.next().await;
    assert_eq!(deletion.event, ChannelEvent::Delete { target: root.id });
    assert_eq!(deletion.content, "");
    assert_eq!(deletion.meta_str(keys::DEDUPE_KEY), Some(format!("{root_native}:delete").as_str()));
}

#[tokio::test]
async fn attachments_travel_through_the_media_repository() {
    let mut h = harness().await;
    h.fake.user_says(GENERAL, ALICE, "").attachment("cat.png", "image/png", b"meow-bytes").send();
    let msg = h.next().await;
    assert_eq!(msg.content_type, ContentType::Image);
    let [file] = msg.attachments.as_slice() else { panic!("one attachment: {:?}", msg.attachments) };
    assert_eq!(file.name, "cat.png");
    assert_eq!(file.mime_type, "image/png");
    assert_eq!(file.size_bytes, Some(10));
    assert!(file.url.starts_with("mxc://"), "never the Discord CDN URL: {}", file.url);
    assert_eq!(h.media.files.lock().unwrap()[&file.url].bytes, b"meow-bytes");

    h.fake.user_says(GENERAL, BOB, "the notes").attachment("notes.txt", "text/plain", b"n").send();
    let with_caption = h.next().await;
    assert_eq!(with_caption.content_type, ContentType::Markdown);
    assert_eq!(with_caption.attachments.len(), 1);
}

#[tokio::test]
async fn matrix_messages_appear_through_the_webhook_with_name_and_avatar() {
    let mut h = harness().await;
    let mut msg = from_matrix("hi from Matrix");
    msg.metadata.insert(keys::SENDER_AVATAR_URL.into(), json!("https://example.org/carol.png"));
    h.send(&msg).await.unwrap();
    let sent = h.fake.sent();
    let [posted] = sent.as_slice() else { panic!("one message: {sent:?}") };
    assert!(by_webhook(posted));
    assert_eq!(posted.username.as_deref(), Some("Carol"));
    assert_eq!(posted.avatar_url.as_deref(), Some("https://example.org/carol.png"));
    assert_eq!(posted.content, "hi from Matrix");
    assert_eq!(posted.allowed_mentions, Some(json!({"parse": []})));
    assert_eq!(h.native_of(&msg).await, Some(posted.id.to_string()));
    let hooks = h.fake.webhooks();
    assert_eq!(hooks.len(), 1, "one webhook per channel: {hooks:?}");
    assert_eq!(hooks[0].1, GENERAL);

    // An mxc avatar cannot be shown by Discord: left out.
    let mut mxc = from_matrix("second");
    mxc.metadata.insert(keys::SENDER_AVATAR_URL.into(), json!("mxc://test/abc"));
    h.send(&mxc).await.unwrap();
    assert_eq!(h.fake.sent()[1].avatar_url, None);

    // Our own webhook messages (and their edits) never come back to the hub.
    h.quiet(Duration::from_millis(700)).await;
}

#[tokio::test]
async fn a_restart_reuses_the_webhook_and_ignores_foreign_ones() {
    let h = harness_with(|fake| {
        fake.add_foreign_webhook(GENERAL, "Other bot");
    })
    .await;
    h.send(&from_matrix("one")).await.unwrap();
    h.adapter.disconnect().await;
    let config = DiscordConfig { token: Some(h.fake.token()), api_url: h.fake.api_url(), ..Default::default() };
    let again = DiscordAdapter::new(&config, h.store.clone(), h.media.clone()).unwrap();
    let line = again.open_bridge(&GENERAL.to_string()).await.unwrap();
    assert!(line.contains("#general") && line.contains("webhook"), "{line}");
    again.send_message(&GENERAL.to_string(), &from_matrix("two")).await.unwrap();
    let ours: Vec<_> = h.fake.webhooks().into_iter().filter(|w| w.3.is_some()).collect();
    assert_eq!(ours.len(), 1, "restarts do not pile up webhooks");
    let sent = h.fake.sent();
    assert_eq!(sent[0].webhook_id, sent[1].webhook_id);
}

#[tokio::test]
async fn without_manage_webhooks_the_bot_posts_with_the_name_in_bold() {
    let mut h = harness_with(|fake| fake.deny_webhooks(GENERAL)).await;
    let line = h.adapter.open_bridge(&GENERAL.to_string()).await.unwrap();
    assert!(line.contains("Manage Webhooks"), "{line}");
    h.send(&from_matrix("hello there")).await.unwrap();
    let sent = h.fake.sent();
    assert!(sent[0].by_bot && sent[0].webhook_id.is_none());
    assert_eq!(sent[0].content, "**Carol**: hello there");
    h.quiet(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn code_is_fenced_long_text_is_split_and_everyone_does_not_ping() {
    let h = harness().await;
    let mut code = from_matrix("fn main() {}\n");
    code.content_type = ContentType::Code;
    code.metadata.insert(keys::LANGUAGE.into(), json!("rust"));
    h.send(&code).await.unwrap();
    assert_eq!(h.fake.sent()[0].content, "```rust\nfn main() {}\n```");

    let long = from_matrix(&format!("{}\n\n{}", "a".repeat(1500), "b".repeat(1500)));
    h.send(&long).await.unwrap();
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 3, "split in two");
    assert_eq!(sent[1].content, "a".repeat(1500));
    assert_eq!(sent[2].content, "b".repeat(1500));
    assert!(sent.iter().all(|s| s.content.chars().count() <= 2000));

    h.send(&from_matrix("@everyone look @here")).await.unwrap();
    let ping = h.fake.sent().pop().unwrap();
    assert!(!ping.content.contains("@everyone") && !ping.content.contains("@here"), "{}", ping.content);
    assert_eq!(ping.allowed_mentions, Some(json!({"parse": []})));
}

#[tokio::test]
async fn edits_patch_the_same_message() {
    let h = harness().await;
    let first = from_matrix("thinking");
    h.send(&first).await.unwrap();
    for text in ["thinking about it", "the answer is 42"] {
        let mut edit = from_matrix(text);
        edit.metadata.insert(keys::REPLACES.into(), json!(first.id.to_string()));
        h.send(&edit).await.unwrap();
    }
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 1, "edited in place: {sent:?}");
    assert_eq!(sent[0].content, "the answer is 42");
    assert_eq!(sent[0].edits, 2);
    assert!(h.fake.requests().iter().any(|r| r.method == "PATCH" && r.path.contains("/messages/")));

    // The edit of a message never sent here is sent as a new one.
    let mut orphan = from_matrix("late edit");
    orphan.metadata.insert(keys::REPLACES.into(), json!(uuid::Uuid::new_v4().to_string()));
    h.send(&orphan).await.unwrap();
    assert_eq!(h.fake.sent().len(), 2);
}

#[tokio::test]
async fn rate_limits_delay_but_deliver_exactly_once() {
    let h = harness().await;
    h.fake.fail_next(2, 429, 0.4);
    let started = Instant::now();
    let msg = from_matrix("patience");
    h.send(&msg).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(800), "waited retry_after twice: {:?}", started.elapsed());
    assert_eq!(h.fake.sent().len(), 1);
    assert_eq!(h.fake.requests().iter().filter(|r| r.status == 429).count(), 2);

    // A long pause is handed to the durable outbox instead of holding the sender.
    h.fake.fail_next(1, 429, 60.0);
    let later = from_matrix("later");
    match h.send(&later).await {
        Err(ChannelSendError::Transient { retry_after: Some(after), message }) => {
            assert_eq!(after, Duration::from_secs(60));
            assert!(!message.contains(&h.fake.token()));
        }
        other => panic!("expected a transient error, got {other:?}"),
    }
    assert_eq!(h.adapter.health().await, AdapterHealth::Degraded);
    h.send(&later).await.unwrap();
    // A retry after a crash (same message id) does not post twice.
    h.send(&later).await.unwrap();
    h.send(&msg).await.unwrap();
    assert_eq!(h.fake.sent().len(), 2);
}

#[tokio::test]
async fn a_gateway_drop_loses_nothing() {
    let mut h = harness().await;
    assert_eq!(h.adapter.health().await, AdapterHealth::Connected);
    h.fake.user_says(GENERAL, ALICE, "before").send();
    assert_eq!(h.next().await.content, "before");

    h.fake.drop_gateway();
    let posted: Vec<u64> = (1..=3).map(|n| h.fake.user_says(GENERAL, BOB, &format!("during {n}")).send()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.fake.restore_gateway();

    let mut got = Vec::new();
    while got.len() < 3 {
        let msg = h.next().await;
        got.push(msg);
    }
    let natives: Vec<u64> = got.iter().map(|m| m.channel_message_id().unwrap().parse().unwrap()).collect();
    assert_eq!(natives, posted, "caught up in order");
    assert_eq!(h.fake.gateway_sessions(), (1, 1), "one IDENTIFY, one RESUME");

    h.fake.user_says(GENERAL, ALICE, "after").send();
    assert_eq!(h.next().await.content, "after");
    assert_eq!(h.adapter.health().await, AdapterHealth::Connected);
}

#[tokio::test]
async fn a_restart_catches_up_from_the_stored_cursor() {
    let mut h = harness().await;
    h.fake.user_says(GENERAL, ALICE, "seen").send();
    h.next().await;
    h.adapter.disconnect().await;
    assert_eq!(h.adapter.health().await, AdapterHealth::Disconnected);
    let missed = h.fake.user_says(GENERAL, BOB, "while we were away").send();
    h.adapter.connect().await.unwrap();
    let msg = h.next().await;
    assert_eq!(msg.channel_message_id(), Some(missed.to_string().as_str()));
    h.quiet(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn the_hub_refusing_a_message_gets_it_again() {
    let mut h = harness().await;
    h.hub.refuse_first.store(2, Ordering::SeqCst);
    h.fake.user_says(GENERAL, ALICE, "one").send();
    h.fake.user_says(GENERAL, ALICE, "two").send();
    assert_eq!(h.next().await.content, "one");
    assert_eq!(h.next().await.content, "two");
}

#[tokio::test]
async fn the_bots_own_messages_never_reach_the_hub() {
    let mut h = harness_with(|fake| fake.deny_webhooks(GENERAL)).await;
    let msg = from_matrix("from the bot");
    h.send(&msg).await.unwrap();
    let mut edit = from_matrix("from the bot, edited");
    edit.metadata.insert(keys::REPLACES.into(), json!(msg.id.to_string()));
    h.send(&edit).await.unwrap();
    h.quiet(Duration::from_millis(700)).await;
    // Another application's webhook is a person as far as the bridge is concerned.
    h.fake.user_says(GENERAL, BOB, "a human").send();
    assert_eq!(h.next().await.content, "a human");
}

#[tokio::test]
async fn replies_and_threads_go_out_natively() {
    let mut h = harness().await;
    let root_native = h.fake.user_says(GENERAL, ALICE, "what is 6 x 7?\nsecond line").send();
    let root = h.next().await;

    // Through the webhook a reply cannot be native: it quotes the original.
    let mut answer = from_matrix("42");
    answer.reply_to_id = Some(root.id);
    h.send(&answer).await.unwrap();
    let sent = h.fake.sent().pop().unwrap();
    assert!(sent.content.starts_with("> ↪ "), "{}", sent.content);
    assert!(sent.content.contains("what is 6 x 7?") && !sent.content.contains("second line"));
    assert!(sent.content.contains(&format!("/{GENERAL}/{root_native}")), "jump link: {}", sent.content);
    assert!(sent.content.ends_with("\n42"));

    // threadRootId: a thread is started from the root message, and used again.
    let mut in_thread = from_matrix("let's discuss");
    in_thread.metadata.insert(keys::THREAD_ROOT_ID.into(), json!(root.id.to_string()));
    h.send(&in_thread).await.unwrap();
    let first = h.fake.sent().pop().unwrap();
    assert_eq!(first.thread_id, Some(root_native), "a thread from the root message");
    let mut more = from_matrix("more");
    more.metadata.insert(keys::THREAD_ROOT_ID.into(), json!(root.id.to_string()));
    h.send(&more).await.unwrap();
    assert_eq!(h.fake.sent().pop().unwrap().thread_id, Some(root_native));

    // threadId names the thread directly.
    let mut direct = from_matrix("direct");
    direct.thread_id = Some(root_native.to_string());
    h.send(&direct).await.unwrap();
    assert_eq!(h.fake.sent().pop().unwrap().thread_id, Some(root_native));
    h.quiet(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn bot_replies_use_a_message_reference() {
    let mut h = harness_with(|fake| fake.deny_webhooks(GENERAL)).await;
    let root_native = h.fake.user_says(GENERAL, ALICE, "question").send();
    let root = h.next().await;
    let mut answer = from_matrix("answer");
    answer.reply_to_id = Some(root.id);
    h.send(&answer).await.unwrap();
    let sent = h.fake.sent().pop().unwrap();
    assert_eq!(sent.reply_to, Some(root_native));
    assert_eq!(sent.content, "**Carol**: answer");
}

#[tokio::test]
async fn attachments_are_uploaded_to_discord() {
    let h = harness().await;
    let uri = h.media.upload(b"PDFDATA".to_vec(), "application/pdf", "report.pdf").await.unwrap();
    let mut msg = from_matrix("the report");
    msg.attachments.push(ChannelAttachment {
        name: "report.pdf".into(),
        mime_type: "application/pdf".into(),
        url: uri,
        size_bytes: Some(7),
        encrypted_file: None,
    });
    h.send(&msg).await.unwrap();
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 2, "text, then the file");
    assert_eq!(sent[0].content, "the report");
    assert_eq!(sent[1].files, vec![("report.pdf".to_string(), b"PDFDATA".to_vec())]);
}

#[tokio::test]
async fn slash_link_becomes_a_link_command_answered_ephemerally() {
    let mut h = harness().await;
    assert!(h.fake.wait_for_commands(WAIT).await, "the /link command is registered: {}", h.fake.commands());
    let commands = h.fake.commands();
    assert_eq!(commands[0]["name"], "link");
    assert_eq!(commands[0]["options"][0]["name"], "token");

    let interaction = h.fake.user_runs_link(GENERAL, ALICE, Some("tok-123"));
    let msg = h.next().await;
    assert_eq!(msg.content, "!link tok-123");
    assert_eq!(msg.sender_id, ALICE.to_string());
    assert_eq!(msg.channel_id, GENERAL.to_string());
    assert_eq!(msg.meta_str(discord::INTERACTION_ID), Some(interaction.to_string().as_str()));
    assert!(msg.meta_str(discord::INTERACTION_TOKEN).is_some());
    assert_eq!(h.fake.interaction_ack(interaction), Some(64), "deferred, ephemeral");

    let mut answer = from_matrix("Linked to account carol.");
    answer.metadata.insert(keys::PRIVATE_TO.into(), json!(ALICE.to_string()));
    h.send(&answer).await.unwrap();
    let sent = h.fake.sent().pop().unwrap();
    assert_eq!(sent.interaction, Some(interaction));
    assert!(sent.ephemeral);
    assert_eq!(sent.content, "Linked to account carol.");

    // A text `!link` answered privately goes by DM.
    h.fake.user_says(GENERAL, BOB, "!link").send();
    assert_eq!(h.next().await.content, "!link");
    let mut private = from_matrix("Your link token: abc");
    private.metadata.insert(keys::PRIVATE_TO.into(), json!(BOB.to_string()));
    h.send(&private).await.unwrap();
    let dm = h.fake.sent().pop().unwrap();
    assert_eq!(Some(dm.channel_id), h.fake.dm_channel(BOB));
    assert_eq!(dm.content, "Your link token: abc");
    h.quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn errors_say_what_to_fix_without_tokens() {
    let h = harness().await;
    let err = h.adapter.open_bridge("1300000000000000000").await.unwrap_err();
    let BridgeError::Refused(text) = &err else { panic!("refused: {err:?}") };
    assert!(text.contains("cannot see it") && text.contains("invite the bot"), "{text}");

    h.fake.fail_next(4, 503, 0.0);
    let err = h.send(&from_matrix("down")).await.unwrap_err();
    assert!(matches!(err, ChannelSendError::Transient { .. }), "{err:?}");
    h.fake.fail_next(1, 403, 0.0);
    let err2 = h.send(&from_matrix("forbidden")).await.unwrap_err();
    assert!(matches!(err2, ChannelSendError::Terminal(_)), "{err2:?}");
    let err3 = h.adapter.send_message("1300000000000000000", &from_matrix("nowhere")).await.unwrap_err();
    for text in [err.to_string(), err2.to_string(), err3.to_string()] {
        assert!(!text.contains(&h.fake.token()) && !text.contains("whtoken"), "token leaked: {text}");
    }
    assert!(DiscordAdapter::new(&DiscordConfig::default(), h.store.clone(), h.media.clone()).is_err());
}

#[tokio::test]
async fn a_resend_finds_the_webhook_message_whose_answer_was_lost() {
    let h = harness().await;
    let first = from_matrix("said once");
    h.send(&first).await.unwrap();
    let posted = h.fake.sent()[0].id.to_string();
    // The answer was lost (a crash before recording it): the record is gone.
    {
        let mut conn = h.store.begin_write().await.unwrap();
        sqlx::query("DELETE FROM message_refs").execute(&mut *conn).await.unwrap();
        conn.commit().await.unwrap();
    }
    h.adapter.resend_message(&GENERAL.to_string(), &first).await.unwrap();
    assert_eq!(h.fake.sent().len(), 1, "found in the channel, not posted again: {:?}", h.fake.sent());
    assert_eq!(h.native_of(&first).await, Some(posted), "the earlier copy is recorded");

    // The same words sent again as a new message are a new message.
    let again = from_matrix("said once");
    h.adapter.resend_message(&GENERAL.to_string(), &again).await.unwrap();
    assert_eq!(h.fake.sent().len(), 2, "a copy recorded for another message is not taken");
}

#[tokio::test]
async fn bot_messages_carry_an_enforced_nonce_so_a_repeat_posts_nothing() {
    let h = harness_with(|fake| fake.deny_webhooks(GENERAL)).await;
    let msg = from_matrix("by the bot");
    h.send(&msg).await.unwrap();
    {
        let mut conn = h.store.begin_write().await.unwrap();
        sqlx::query("DELETE FROM message_refs").execute(&mut *conn).await.unwrap();
        conn.commit().await.unwrap();
    }
    h.send(&msg).await.unwrap();
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 1, "Discord answered the repeated nonce with the first message: {sent:?}");
    assert!(!by_webhook(&sent[0]));
    assert_eq!(h.native_of(&msg).await, Some(sent[0].id.to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bot_types_in_a_channel_and_invents_no_read_receipts() {
    let h = harness().await;
    let general = GENERAL.to_string();
    assert!(
        h.adapter.typing_renewal().is_some_and(|every| every < Duration::from_secs(10)),
        "renewed before it lapses"
    );
    h.adapter.set_typing(&general, "echo", true).await.unwrap();
    assert_eq!(h.fake.typing(GENERAL).len(), 1, "the bot shows as typing in #general");
    let before = h.fake.requests().len();
    h.adapter.set_typing(&general, "echo", false).await.unwrap();
    h.adapter.mark_read(&general, &h.fake.user_says(GENERAL, ALICE, "seen?").send().to_string(), "echo").await.unwrap();
    assert_eq!(h.fake.requests().len(), before, "Discord can neither clear typing nor take a bot's read receipt");
    let unknown = h.adapter.set_typing("1100000000000000999", "echo", true).await;
    assert!(matches!(unknown, Err(ChannelSendError::Terminal(_))), "{unknown:?}");
}

/// A deletion from elsewhere as the hub hands it to the adapter: no text, only the target.
fn deletion_of(target: &ChannelMessage) -> ChannelMessage {
    let mut msg = ChannelMessage::new("-100", &target.sender_id, SenderType::User, "", ContentType::Text)
        .with_event(ChannelEvent::Delete { target: target.id });
    msg.metadata.insert(keys::SENDER_NAME.into(), json!("Carol"));
    msg.metadata.insert(keys::ORIGIN_CHANNEL.into(), json!("telegram"));
    msg
}

#[tokio::test]
async fn a_deletion_deletes_the_webhook_copy_and_posts_nothing() {
    let mut h = harness().await;
    let short = from_matrix("oops, wrong chat");
    let long = from_matrix(&format!("{}\n\n{}", "a".repeat(1500), "b".repeat(1500)));
    h.send(&short).await.unwrap();
    h.send(&long).await.unwrap();
    assert_eq!(h.fake.sent().len(), 3);

    h.send(&deletion_of(&short)).await.unwrap();
    h.send(&deletion_of(&long)).await.unwrap();
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 3, "nothing posted for a deletion: {sent:?}");
    assert!(sent.iter().all(|s| s.deleted), "every part deleted: {sent:?}");
    let through_webhook = |r: &support::fake_discord::Logged| r.method == "DELETE" && r.path.contains("/webhooks/");
    assert_eq!(h.fake.requests().iter().filter(|r| through_webhook(r)).count(), 3);
    // The same deletion again: the copy is gone already, which is no error.
    h.send(&deletion_of(&short)).await.unwrap();
    assert_eq!(h.fake.sent().len(), 3);
    // Discord announces the deletions; they are ours, not news for the hub.
    h.quiet(Duration::from_millis(700)).await;
}

#[tokio::test]
async fn a_deletion_deletes_the_bots_own_copy() {
    let mut h = harness_with(|fake| fake.deny_webhooks(GENERAL)).await;
    let msg = from_matrix("posted as the bot");
    h.send(&msg).await.unwrap();
    h.send(&deletion_of(&msg)).await.unwrap();
    let sent = h.fake.sent();
    let [copy] = sent.as_slice() else { panic!("one message: {sent:?}") };
    assert!(copy.by_bot && copy.deleted, "{copy:?}");
    h.quiet(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_deletion_without_a_copy_posts_nothing() {
    let mut h = harness().await;
    // Never sent here.
    h.send(&deletion_of(&from_matrix("only on Telegram"))).await.unwrap();
    // Taken away by a moderator already.
    let msg = from_matrix("soon gone");
    h.send(&msg).await.unwrap();
    let copy = h.fake.sent()[0].id;
    h.fake.user_deletes(GENERAL, copy);
    let _moderator = h.next().await;
    h.send(&deletion_of(&msg)).await.unwrap();
    assert_eq!(h.fake.sent().len(), 1, "{:?}", h.fake.sent());
    assert!(!h.fake.requests().iter().any(|r| r.method == "POST" && r.path.contains("/messages")));
    h.quiet(Duration::from_millis(300)).await;
}
