//! The Telegram adapter with the real teloxide client against a fake Bot API: what
//! Telegram users write reaches the hub as the right `ChannelMessage`s, and what the hub
//! sends shows up in Telegram as a user would see it.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mosaic_as::config::{TelegramConfig, TelegramMode};
use mosaic_as::protocol::{
    AdapterHealth, BridgeError, ChannelAdapter, ChannelAttachment, ChannelEvent, ChannelMessage, ChannelSendError,
    ChatKind, ContentType, HandlerError, InboundHandler, MediaRepository, SenderType, metadata_keys as keys,
};
use mosaic_as::store::{Store, bridges, conversations, messages};
use mosaic_as::telegram::{CHANNEL, TelegramAdapter};
use serde_json::json;
use support::fake_telegram::{BOT_USERNAME, FakeTelegram, Incoming, SentKind, TgUser};
use support::memory_media::MemoryMedia;
use tokio::sync::watch;

const GROUP: i64 = -4_000_000_001;
const FORUM: i64 = -1_001_234_567_890;
const WAIT: Duration = Duration::from_secs(10);

/// Stands in for the hub: records what arrives and, like the hub, remembers each
/// message's native id. Can refuse the first messages.
struct Inbox {
    store: Store,
    offered: Mutex<Vec<ChannelMessage>>,
    accepted: Mutex<Vec<ChannelMessage>>,
    refuse: AtomicUsize,
    tick: watch::Sender<usize>,
}

#[async_trait]
impl InboundHandler for Inbox {
    async fn handle(&self, msg: ChannelMessage) -> Result<(), HandlerError> {
        self.offered.lock().unwrap().push(msg.clone());
        if self.refuse.load(Ordering::SeqCst) > 0 {
            self.refuse.fetch_sub(1, Ordering::SeqCst);
            return Err(HandlerError::transient("database is busy"));
        }
        let mut conn = self.store.begin_write().await.unwrap();
        let native = msg.channel_message_id().unwrap().to_string();
        if messages::message_for_native(&mut conn, CHANNEL, &msg.channel_id, &native).await.unwrap().is_none() {
            messages::add_ref(&mut conn, CHANNEL, &msg.channel_id, &native, msg.id).await.unwrap();
        }
        conn.commit().await.unwrap();
        self.accepted.lock().unwrap().push(msg);
        self.tick.send_modify(|n| *n += 1);
        Ok(())
    }
}

impl Inbox {
    async fn wait_for(&self, n: usize) -> Vec<ChannelMessage> {
        let mut tick = self.tick.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let accepted = self.accepted.lock().unwrap().clone();
            if accepted.len() >= n {
                return accepted;
            }
            if tokio::time::timeout_at(deadline, tick.changed()).await.is_err() {
                panic!("{n} messages not handed to the hub in time; got {accepted:#?}");
            }
        }
    }
}

struct Harness {
    fake: FakeTelegram,
    adapter: Arc<TelegramAdapter>,
    store: Store,
    media: Arc<MemoryMedia>,
    inbox: Arc<Inbox>,
    _dir: tempfile::TempDir,
}

fn config(fake: &FakeTelegram) -> TelegramConfig {
    TelegramConfig {
        token: Some(fake.token()),
        api_url: fake.api_url(),
        mode: TelegramMode::Polling,
        webhook_url: None,
        poll_timeout_secs: 2,
        bridge_chats: Vec::new(),
    }
}

async fn harness() -> Harness {
    harness_with(FakeTelegram::start().await, |_| {}).await
}

async fn harness_with(fake: FakeTelegram, adjust: impl FnOnce(&mut TelegramConfig)) -> Harness {
    // The adapter's log, shown for failing tests.
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("mosaic_as=debug").try_init();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("test.db").display())).await.unwrap();
    let media = Arc::new(MemoryMedia::default());
    let mut config = config(&fake);
    adjust(&mut config);
    let adapter = Arc::new(TelegramAdapter::new(&config, store.clone(), media.clone()).unwrap());
    let inbox = Arc::new(Inbox {
        store: store.clone(),
        offered: Mutex::default(),
        accepted: Mutex::default(),
        refuse: AtomicUsize::new(0),
        tick: watch::channel(0).0,
    });
    adapter.on_message(inbox.clone());
    fake.add_group(GROUP, "Team chat");
    fake.add_supergroup(FORUM, "Forum", true);
    if config.mode == TelegramMode::Polling {
        adapter.connect().await.unwrap();
    }
    Harness { fake, adapter, store, media, inbox, _dir: dir }
}

fn ada() -> TgUser {
    TgUser::new(1001, "Ada", Some("Lovelace"), Some("ada"))
}

/// A message from Matrix as the hub hands it to the adapter.
fn from_matrix(content: &str, content_type: ContentType) -> ChannelMessage {
    let mut msg = ChannelMessage::new("!room:localhost", "@alice:localhost", SenderType::User, content, content_type);
    msg.metadata.insert(keys::SENDER_NAME.into(), json!("Alice"));
    msg.metadata.insert(keys::ORIGIN_CHANNEL.into(), json!("matrix"));
    msg
}

impl Harness {
    async fn native_of(&self, chat: i64, id: uuid::Uuid) -> Option<String> {
        let mut conn = self.store.conn().await.unwrap();
        messages::native_for_message(&mut conn, CHANNEL, &chat.to_string(), id).await.unwrap()
    }

    async fn send(&self, chat: i64, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        self.adapter.send_message(&chat.to_string(), msg).await
    }
}

// ---------------------------------------------------------------------------------------
// Inbound

#[tokio::test]
async fn a_group_message_reaches_the_hub_with_sender_and_ids() {
    let h = harness().await;
    let id = h.fake.push_message(Incoming::text(GROUP, &ada(), "hello from Telegram"));
    let msg = h.inbox.wait_for(1).await.remove(0);
    assert_eq!(msg.channel_id, GROUP.to_string());
    assert_eq!(msg.sender_id, "1001");
    assert_eq!(msg.sender_type, SenderType::User);
    assert_eq!((msg.content.as_str(), msg.content_type), ("hello from Telegram", ContentType::Text));
    assert_eq!(msg.meta_str(keys::SENDER_NAME), Some("Ada Lovelace"));
    assert_eq!(msg.meta_str("fromUsername"), Some("ada"));
    assert_eq!(msg.meta_str("chatType"), Some("group"));
    assert_eq!(msg.chat, ChatKind::Group);
    assert_eq!(msg.channel_message_id(), Some(id.to_string().as_str()));
    assert_eq!(msg.meta_str(keys::DEDUPE_KEY), Some(format!("{GROUP}:{id}").as_str()));
    assert!(msg.thread_id.is_none() && msg.reply_to_id.is_none() && msg.attachments.is_empty());
    assert!((chrono::Utc::now() - msg.timestamp).num_seconds().abs() < 5);
    for key in ["mosaic.agents", "mosaic.mentions", "mosaic.participants", "mosaic.commands"] {
        assert!(!msg.metadata.contains_key(key), "the hub computes {key}");
    }
    let params = h.fake.last_params("getUpdates").unwrap();
    assert_eq!(params["timeout"], 2);
    assert_eq!(
        params["allowed_updates"],
        json!(["message", "edited_message", "channel_post", "edited_channel_post", "message_reaction"])
    );
}

#[tokio::test]
async fn replies_and_forum_topics_keep_their_place() {
    let h = harness().await;
    let first = h.fake.push_message(Incoming::text(FORUM, &ada(), "topic start").in_topic(77));
    let grace = TgUser::new(1002, "Grace", None, None);
    h.fake.push_message(Incoming::text(FORUM, &grace, "an answer").in_topic(77).reply_to(first));
    let got = h.inbox.wait_for(2).await;
    assert_eq!(got[0].thread_id.as_deref(), Some("77"));
    assert_eq!(got[0].reply_to_id, None, "the topic's own first message is not a reply");
    assert_eq!(got[1].thread_id.as_deref(), Some("77"));
    assert_eq!(got[1].reply_to_id, Some(got[0].id));
    assert_eq!(got[1].meta_str(keys::SENDER_NAME), Some("Grace"));
    assert_eq!(got[1].meta_str("chatType"), Some("supergroup"));
    assert!(got[1].meta_str("fromUsername").is_none());
}

#[tokio::test]
async fn photos_and_documents_are_uploaded_to_the_media_repository() {
    let h = harness().await;
    bridge(&h.store, GROUP).await;
    let picture = b"\x89PNG full size picture".to_vec();
    h.fake.push_message(Incoming::photo(GROUP, &ada(), &picture, Some("our cat")));
    h.fake.push_message(Incoming::document(GROUP, &ada(), b"%PDF-1.7 report", "report.pdf", "application/pdf"));
    let got = h.inbox.wait_for(2).await;
    let photo = &got[0];
    assert_eq!((photo.content.as_str(), photo.content_type), ("our cat", ContentType::Image));
    let attachment = &photo.attachments[0];
    assert!(attachment.url.starts_with("mxc://"), "never a Telegram file URL: {}", attachment.url);
    assert_eq!(attachment.mime_type, "image/jpeg");
    let stored = h.media.download(&attachment.url).await.unwrap();
    assert_eq!(stored.bytes, picture, "the largest size, not the thumbnail");
    let doc = &got[1];
    assert_eq!((doc.content.as_str(), doc.content_type), ("", ContentType::File));
    assert_eq!(
        (doc.attachments[0].name.as_str(), doc.attachments[0].mime_type.as_str()),
        ("report.pdf", "application/pdf")
    );
    assert_eq!(h.media.download(&doc.attachments[0].url).await.unwrap().bytes, b"%PDF-1.7 report");
    assert_eq!(doc.attachments[0].size_bytes, Some(15));

    // In a chat nobody bridged, only commands are read: files are not fetched.
    h.fake.push_message(Incoming::photo(FORUM, &ada(), b"\x89PNG elsewhere", Some("/help")));
    let unbridged = h.inbox.wait_for(3).await.remove(2);
    assert_eq!(unbridged.content, "/help");
    assert!(unbridged.attachments.is_empty(), "{:?}", unbridged.attachments);
}

/// Bridges a Telegram chat into a new conversation.
async fn bridge(store: &Store, chat: i64) {
    let mut conn = store.begin_write().await.unwrap();
    let conversation = conversations::create_conversation(&mut conn, "Bridged", None).await.unwrap();
    bridges::bridge(&mut conn, CHANNEL, &chat.to_string(), &conversation.id, true, "@admin:example.org").await.unwrap();
    conn.commit().await.unwrap();
}

#[tokio::test]
async fn an_edit_names_the_original() {
    let h = harness().await;
    let id = h.fake.push_message(Incoming::text(GROUP, &ada(), "teh plan"));
    let original = h.inbox.wait_for(1).await.remove(0);
    h.fake.push_edit(GROUP, id, "the plan");
    let edit = h.inbox.wait_for(2).await.remove(1);
    assert_eq!(edit.content, "the plan");
    assert_eq!(edit.event, ChannelEvent::Edit { target: Some(original.id) });
    assert_ne!(edit.id, original.id);
    let key = edit.meta_str(keys::DEDUPE_KEY).unwrap();
    assert!(key.starts_with(&format!("{GROUP}:{id}:edit:")), "{key}");
}

#[tokio::test]
async fn commands_addressed_to_this_bot_are_normalised() {
    let h = harness().await;
    let command = |text: &str| {
        let length = text.split_whitespace().next().unwrap().len();
        Incoming::text(GROUP, &ada(), text).entities(json!([{"type": "bot_command", "offset": 0, "length": length}]))
    };
    h.fake.push_message(command(&format!("/link@{BOT_USERNAME} abc-123")));
    h.fake.push_message(command(&format!("/help@{}", BOT_USERNAME.to_lowercase())));
    h.fake.push_message(command("/link@SomeOtherBot abc"));
    let got = h.inbox.wait_for(3).await;
    assert_eq!((got[0].content.as_str(), got[0].content_type), ("/link abc-123", ContentType::Text));
    assert_eq!(got[1].content, "/help");
    assert_eq!(got[2].content, "/link@SomeOtherBot abc");
}

#[tokio::test]
async fn formatting_entities_become_markdown_and_forwards_are_named() {
    let h = harness().await;
    let entities = json!([
        {"type": "bold", "offset": 0, "length": 4},
        {"type": "code", "offset": 8, "length": 3},
        {"type": "text_link", "offset": 16, "length": 4, "url": "https://example.org/"},
        {"type": "pre", "offset": 21, "length": 9, "language": "rust"}
    ]);
    let text = "Note: a x.y see docs\nfn main()";
    let from = TgUser::new(1003, "Linus", None, None);
    h.fake.push_message(Incoming::text(GROUP, &ada(), text).entities(entities).forwarded_from(&from));
    let msg = h.inbox.wait_for(1).await.remove(0);
    assert_eq!(msg.content_type, ContentType::Markdown);
    assert_eq!(msg.content, "**Note**: a `x.y` see [docs](https://example.org/)\n```rust\nfn main()\n```");
    assert_eq!(msg.meta_str("forwardFrom"), Some("Linus"));
}

#[tokio::test]
async fn the_bots_own_messages_are_not_handed_to_the_hub() {
    let h = harness().await;
    h.fake.push_message(Incoming::text(GROUP, &h.fake.bot(), "*Alice*: from Matrix"));
    h.fake.push_message(Incoming::text(GROUP, &ada(), "from a person"));
    h.inbox.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let offered = h.inbox.offered.lock().unwrap().clone();
    assert_eq!(offered.len(), 1);
    assert_eq!(offered[0].content, "from a person");
}

#[tokio::test]
async fn an_update_is_offered_again_until_the_hub_accepts_it() {
    let h = harness().await;
    h.inbox.refuse.store(2, Ordering::SeqCst);
    h.fake.push_message(Incoming::text(GROUP, &ada(), "must not be lost"));
    let update_id = {
        // The update stays unconfirmed while the hub refuses it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(h.fake.pending_updates(), 1);
        h.fake.confirmed_offset()
    };
    let accepted = h.inbox.wait_for(1).await;
    assert_eq!(accepted[0].content, "must not be lost");
    let offered = h.inbox.offered.lock().unwrap().clone();
    assert_eq!(offered.len(), 3, "offered until accepted");
    assert!(offered.iter().all(|m| m.meta_str(keys::DEDUPE_KEY) == accepted[0].meta_str(keys::DEDUPE_KEY)));
    // The next poll confirms it.
    h.fake.push_message(Incoming::text(GROUP, &ada(), "next"));
    h.inbox.wait_for(2).await;
    assert!(h.fake.confirmed_offset() > update_id);
}

#[tokio::test]
async fn updates_wait_for_a_handler_and_survive_a_reconnect() {
    let h = harness().await;
    h.adapter.disconnect().await;
    assert_eq!(h.adapter.health().await, AdapterHealth::Disconnected);
    h.fake.push_message(Incoming::text(GROUP, &ada(), "while away"));
    h.adapter.connect().await.unwrap();
    h.adapter.connect().await.unwrap();
    assert_eq!(h.adapter.health().await, AdapterHealth::Connected);
    assert_eq!(h.inbox.wait_for(1).await[0].content, "while away");
    assert_eq!(h.fake.calls("getMe"), 2, "a second connect while connected does nothing");
}

// ---------------------------------------------------------------------------------------
// Outbound

/// What a Telegram user reads: the name in bold, then the text.
fn shown(name: &str, text: &str) -> String {
    format!("{name}: {text}")
}

#[tokio::test]
async fn every_reserved_character_arrives_as_written() {
    let h = harness().await;
    let text = r"1_2*3[4]5(6)7~8`9>10#11+12-13=14|15{16}17.18!19\20 done.";
    h.send(GROUP, &from_matrix(text, ContentType::Text)).await.unwrap();
    let sent = h.fake.wait_for_sent(|_| true, WAIT).await;
    assert_eq!(sent.parse_mode.as_deref(), Some("MarkdownV2"));
    assert_eq!(sent.text, shown("Alice", text));
    assert!(sent.has_entity("bold", "Alice"));
    assert_eq!(sent.entities.len(), 1, "no stray formatting: {:?}", sent.entities);
}

#[tokio::test]
async fn markdown_keeps_its_formatting() {
    let h = harness().await;
    let markdown = "**Plan** for _today_: run `cargo test`, see [the guide](https://example.org/a_(b)).\n\n```rust\nlet x = a * b;\n```";
    h.send(GROUP, &from_matrix(markdown, ContentType::Markdown)).await.unwrap();
    let sent = h.fake.wait_for_sent(|_| true, WAIT).await;
    assert_eq!(sent.text, shown("Alice", "Plan for today: run cargo test, see the guide.\n\nlet x = a * b;"));
    assert!(sent.has_entity("bold", "Plan"));
    assert!(sent.has_entity("italic", "today"));
    assert!(sent.has_entity("code", "cargo test"));
    assert!(sent.has_entity("text_link", "the guide"));
    assert_eq!(
        sent.entities.iter().find(|e| e.kind == "text_link").unwrap().url.as_deref(),
        Some("https://example.org/a_(b)")
    );
    let pre = sent.entities.iter().find(|e| e.kind == "pre").unwrap();
    assert_eq!(pre.language.as_deref(), Some("rust"));
}

#[tokio::test]
async fn system_notices_carry_no_name() {
    let h = harness().await;
    let mut notice =
        ChannelMessage::new(GROUP.to_string(), "mosaic", SenderType::System, "Bridged.", ContentType::Text);
    notice.metadata.insert(keys::SENDER_NAME.into(), json!("Mosaic"));
    h.send(GROUP, &notice).await.unwrap();
    let sent = h.fake.wait_for_sent(|_| true, WAIT).await;
    assert_eq!(sent.text, "Bridged.");
    assert!(sent.entities.is_empty());
}

#[tokio::test]
async fn replies_and_topics_map_to_telegram() {
    let h = harness().await;
    let native = h.fake.push_message(Incoming::text(FORUM, &ada(), "question?").in_topic(77));
    let question = h.inbox.wait_for(1).await.remove(0);
    // A reply with the topic named.
    let answer = from_matrix("answer", ContentType::Text).with_reply_to(question.id).with_thread(Some("77".into()));
    h.send(FORUM, &answer).await.unwrap();
    let sent = h.fake.wait_for_sent(|s| s.text.ends_with("answer"), WAIT).await;
    assert_eq!((sent.reply_to, sent.thread_id), (Some(native), Some(77)));
    // The topic found from the thread's root message alone.
    let mut follow_up = from_matrix("more", ContentType::Text);
    follow_up.metadata.insert(keys::THREAD_ROOT_ID.into(), json!(question.id.to_string()));
    h.send(FORUM, &follow_up).await.unwrap();
    let sent = h.fake.wait_for_sent(|s| s.text.ends_with("more"), WAIT).await;
    assert_eq!((sent.reply_to, sent.thread_id), (None, Some(77)));
    // A reply to a message this chat never saw is sent as a plain message.
    let orphan = from_matrix("orphan", ContentType::Text).with_reply_to(uuid::Uuid::new_v4());
    h.send(GROUP, &orphan).await.unwrap();
    let sent = h.fake.wait_for_sent(|s| s.text.ends_with("orphan"), WAIT).await;
    assert_eq!(sent.reply_to, None);
}

#[tokio::test]
async fn edits_change_the_telegram_message() {
    let h = harness().await;
    let first = from_matrix("draft", ContentType::Markdown);
    h.send(GROUP, &first).await.unwrap();
    let original = h.fake.wait_for_sent(|_| true, WAIT).await;
    assert_eq!(h.native_of(GROUP, first.id).await, Some(original.message_id.to_string()));
    let edit = mosaic_as::agents::stream::edit_of(&first, "final **answer**", "edit-1");
    h.send(GROUP, &edit).await.unwrap();
    let edited = h.fake.wait_for_sent(|s| s.kind == SentKind::Edit, WAIT).await;
    assert_eq!(edited.message_id, original.message_id);
    assert_eq!(edited.text, shown("Alice", "final answer"));
    assert!(edited.has_entity("bold", "answer"));
    // The same text again is not an error.
    h.send(GROUP, &edit).await.unwrap();
    // An edit of a message this chat does not have is sent as a new message.
    let mut stray = from_matrix("late edit", ContentType::Text);
    stray.metadata.insert(keys::REPLACES.into(), json!(uuid::Uuid::new_v4().to_string()));
    h.send(GROUP, &stray).await.unwrap();
    let sent = h.fake.wait_for_sent(|s| s.text.ends_with("late edit"), WAIT).await;
    assert_eq!(sent.kind, SentKind::Text);
}

/// A deletion from elsewhere as the hub hands it to the adapter: no text, only the target.
fn deletion_of(target: &ChannelMessage) -> ChannelMessage {
    let mut msg = ChannelMessage::new("123", &target.sender_id, SenderType::User, "", ContentType::Text)
        .with_event(ChannelEvent::Delete { target: target.id });
    msg.metadata.insert(keys::SENDER_NAME.into(), json!("Alice"));
    msg.metadata.insert(keys::ORIGIN_CHANNEL.into(), json!("discord"));
    msg
}

#[tokio::test]
async fn a_deletion_deletes_the_copy_and_posts_nothing() {
    let h = harness().await;
    let paragraph = format!("{}\n\n", vec!["Lorem ipsum dolor sit amet."; 20].join(" "));
    let long = from_matrix(&paragraph.repeat(20), ContentType::Text);
    let short = from_matrix("oops, wrong chat", ContentType::Text);
    h.send(GROUP, &long).await.unwrap();
    h.send(GROUP, &short).await.unwrap();
    let sent = h.fake.sent();
    assert!(sent.len() >= 3, "{} parts", sent.len());
    let short_copy = sent.last().unwrap().message_id;

    h.send(GROUP, &deletion_of(&short)).await.unwrap();
    assert_eq!(h.fake.deleted(), vec![(GROUP, short_copy)]);
    assert!(h.fake.message(GROUP, short_copy).is_none());
    // Every part of a long message goes.
    h.send(GROUP, &deletion_of(&long)).await.unwrap();
    let parts: Vec<(i64, i64)> = sent[..sent.len() - 1].iter().map(|s| (GROUP, s.message_id)).collect();
    assert_eq!(h.fake.deleted()[1..], parts[..]);
    // Nothing was posted for the deletions, and the same deletion again is no error.
    h.send(GROUP, &deletion_of(&short)).await.unwrap();
    assert_eq!(h.fake.sent().len(), sent.len(), "{:#?}", &h.fake.sent()[sent.len()..]);
    assert_eq!(h.fake.deleted().len(), parts.len() + 1);
}

#[tokio::test]
async fn a_deletion_without_a_deletable_copy_posts_nothing() {
    let h = harness().await;
    // Never sent here: nothing to delete, nothing to post.
    let elsewhere = from_matrix("only on Discord", ContentType::Text);
    h.send(GROUP, &deletion_of(&elsewhere)).await.unwrap();
    // Too old for the bot to delete: the copy stays, and the deletion is done.
    let old = from_matrix("from last week", ContentType::Text);
    h.send(GROUP, &old).await.unwrap();
    let copy = h.fake.wait_for_sent(|_| true, WAIT).await.message_id;
    h.fake.age_message(GROUP, copy);
    h.send(GROUP, &deletion_of(&old)).await.unwrap();
    assert!(h.fake.message(GROUP, copy).is_some());
    assert!(h.fake.deleted().is_empty());
    assert_eq!(h.fake.sent().len(), 1, "{:#?}", h.fake.sent());
    assert_eq!(h.fake.calls("deleteMessage"), 1);
}

#[tokio::test]
async fn long_text_is_split_and_edits_grow_into_new_parts() {
    let h = harness().await;
    let paragraph = format!("{}\n\n", vec!["Lorem ipsum dolor sit amet."; 20].join(" "));
    let text = paragraph.repeat(20);
    let msg = from_matrix(&text, ContentType::Text);
    h.send(GROUP, &msg).await.unwrap();
    let sent = h.fake.sent();
    assert!(sent.len() >= 3, "{} parts", sent.len());
    assert!(sent.iter().all(|s| s.text.encode_utf16().count() <= 4096));
    let joined: String = sent.iter().map(|s| s.text.clone()).collect::<Vec<_>>().join("\n\n");
    assert_eq!(joined.trim_start_matches("Alice: "), text.trim_end());
    assert_eq!(h.native_of(GROUP, msg.id).await, Some(sent[0].message_id.to_string()));
    // Sent again (a retry after a crash): nothing new.
    h.send(GROUP, &msg).await.unwrap();
    assert_eq!(h.fake.sent().len(), sent.len());
    // A streamed answer that outgrows one message: the first is edited, the rest is new.
    let short = from_matrix("thinking", ContentType::Text);
    h.send(GROUP, &short).await.unwrap();
    let before = h.fake.sent().len();
    let edit = mosaic_as::agents::stream::edit_of(&short, &text, "edit-1");
    h.send(GROUP, &edit).await.unwrap();
    let after = h.fake.sent();
    assert_eq!(after[before].kind, SentKind::Edit);
    assert!(after[before + 1..].iter().all(|s| s.kind == SentKind::Text));
    assert_eq!(after.len() - before, sent.len());
}

#[tokio::test]
async fn files_are_uploaded_as_photos_and_documents() {
    let h = harness().await;
    let png = h.media.upload(b"PNG bytes".to_vec(), "image/png", "chart.png").await.unwrap();
    let pdf = h.media.upload(b"PDF bytes".to_vec(), "application/pdf", "notes.pdf").await.unwrap();
    let mut msg = from_matrix("today's chart.", ContentType::Image);
    msg.attachments.push(ChannelAttachment {
        name: "chart.png".into(),
        mime_type: "image/png".into(),
        url: png,
        size_bytes: None,
        encrypted_file: None,
    });
    msg.attachments.push(ChannelAttachment {
        name: "notes.pdf".into(),
        mime_type: "application/pdf".into(),
        url: pdf,
        size_bytes: None,
        encrypted_file: None,
    });
    h.send(GROUP, &msg).await.unwrap();
    let sent = h.fake.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].kind, SentKind::Photo);
    assert_eq!(sent[0].file, Some(("chart.png".to_string(), b"PNG bytes".to_vec())));
    assert_eq!(sent[0].text, shown("Alice", "today's chart."));
    assert_eq!(sent[1].kind, SentKind::Document);
    assert_eq!(sent[1].file, Some(("notes.pdf".to_string(), b"PDF bytes".to_vec())));
    assert_eq!(sent[1].text, "Alice");
}

#[tokio::test]
async fn a_rate_limit_delays_but_delivers_exactly_once() {
    let h = harness().await;
    h.fake.fail_next(1, 429, Some(1));
    let started = Instant::now();
    h.send(GROUP, &from_matrix("patience", ContentType::Text)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "retry_after was obeyed");
    assert_eq!(h.fake.sent().len(), 1);
    assert_eq!(h.fake.calls("sendMessage"), 2);
    // A long pause goes back to the outbox with Telegram's retry_after; nothing is dropped.
    h.fake.fail_next(1, 429, Some(120));
    let msg = from_matrix("later", ContentType::Text);
    match h.send(GROUP, &msg).await {
        Err(ChannelSendError::Transient { retry_after, .. }) => assert_eq!(retry_after, Some(Duration::from_secs(120))),
        other => panic!("expected a transient error, got {other:?}"),
    }
    assert_eq!(h.adapter.health().await, AdapterHealth::Degraded);
    h.send(GROUP, &msg).await.unwrap();
    assert_eq!(h.fake.sent().iter().filter(|s| s.text.ends_with("later")).count(), 1);
}

#[tokio::test]
async fn a_server_error_is_retried() {
    let h = harness().await;
    h.fake.fail_next(1, 500, None);
    h.send(GROUP, &from_matrix("after a hiccup", ContentType::Text)).await.unwrap();
    assert_eq!(h.fake.sent().len(), 1);
}

#[tokio::test]
async fn a_send_whose_answer_is_lost_is_not_sent_again() {
    let h = harness().await;
    h.fake.lose_next_answers(1);
    let msg = from_matrix("did it arrive?", ContentType::Text);
    match h.send(GROUP, &msg).await {
        Err(ChannelSendError::Unconfirmed(error)) => assert!(!error.contains(&h.fake.token()), "{error}"),
        other => panic!("expected an unconfirmed send, got {other:?}"),
    }
    // Telegram carried it out once; the adapter did not try a second time.
    assert_eq!(h.fake.calls("sendMessage"), 1);
    assert_eq!(h.fake.sent().iter().filter(|s| s.text.ends_with("did it arrive?")).count(), 1);
}

#[tokio::test]
async fn a_lost_answer_to_a_read_is_asked_again() {
    let h = harness().await;
    h.fake.lose_next_answers(1);
    let line = h.adapter.open_bridge(&GROUP.to_string()).await.unwrap();
    assert!(line.contains("Team chat"), "{line}");
}

#[tokio::test]
async fn a_chat_answer_that_cannot_be_read_refuses_the_bridge_at_once() {
    let h = harness().await;
    h.fake.garble_chat(GROUP);
    match h.adapter.open_bridge(&GROUP.to_string()).await {
        Err(BridgeError::Send(ChannelSendError::Terminal(reason))) => {
            assert!(reason.contains("could not be read"), "{reason}");
            assert!(!reason.contains(&h.fake.token()), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(h.fake.calls("getChat"), 1, "an answer that cannot be read is not asked for again");
}

#[tokio::test]
async fn refusals_are_terminal_and_name_no_token() {
    let h = harness().await;
    let error = h.send(-999, &from_matrix("nobody home", ContentType::Text)).await.unwrap_err();
    assert!(matches!(&error, ChannelSendError::Terminal(m) if m.contains("chat not found")), "{error:?}");
    assert!(!error.to_string().contains(&h.fake.token()));
    let mut bad = from_matrix("x", ContentType::Text);
    bad.metadata.insert(keys::PRIVATE_TO.into(), json!("not-a-number"));
    let error = h.send(GROUP, &bad);
    assert!(matches!(error.await, Err(ChannelSendError::Terminal(_))));
}

#[tokio::test]
async fn private_answers_go_to_the_user() {
    let h = harness().await;
    h.fake.push_message(Incoming::text(1001, &ada(), "/link"));
    assert_eq!(h.inbox.wait_for(1).await[0].chat, ChatKind::Private, "the hub is told the chat is private");
    let mut token =
        ChannelMessage::new(GROUP.to_string(), "mosaic", SenderType::System, "Your token: ab-12.", ContentType::Text);
    token.metadata.insert(keys::PRIVATE_TO.into(), json!("1001"));
    h.send(GROUP, &token).await.unwrap();
    let sent = h.fake.wait_for_sent(|_| true, WAIT).await;
    assert_eq!((sent.chat_id, sent.text.as_str()), (1001, "Your token: ab-12."));
}

#[tokio::test]
async fn open_bridge_checks_the_chat() {
    let h = harness().await;
    let line = h.adapter.open_bridge(&GROUP.to_string()).await.unwrap();
    assert!(line.contains("“Team chat” (group)") || line.contains("group “Team chat”"), "{line}");
    let line = h.adapter.open_bridge(&FORUM.to_string()).await.unwrap();
    assert!(line.contains("supergroup"), "{line}");
    match h.adapter.open_bridge("-123").await {
        Err(BridgeError::Refused(fix)) => {
            assert!(fix.contains("add the bot to the group") && fix.contains("privacy"), "{fix}");
            assert!(!fix.contains("chat not found"), "Telegram's own words stay in the log: {fix}");
        }
        other => panic!("{other:?}"),
    }
    h.fake.set_member_status(GROUP, "left");
    assert!(matches!(h.adapter.open_bridge(&GROUP.to_string()).await, Err(BridgeError::Refused(_))));
}

#[tokio::test]
async fn privacy_mode_is_pointed_out() {
    let h = harness_with(FakeTelegram::start_with(false).await, |_| {}).await;
    let line = h.adapter.open_bridge(&GROUP.to_string()).await.unwrap();
    assert!(line.contains("/setprivacy"), "{line}");
}

#[tokio::test]
async fn connection_failures_do_not_reveal_the_token() {
    let fake = FakeTelegram::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = config(&fake);
    config.api_url = format!("http://{closed}");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
    let adapter = TelegramAdapter::new(&config, store, Arc::new(MemoryMedia::default())).unwrap();
    let error = adapter.connect().await.unwrap_err().to_string();
    let secret = fake.token().split_once(':').unwrap().1.to_string();
    assert!(!error.contains(&secret), "{error}");
    assert_eq!(adapter.health().await, AdapterHealth::Disconnected);
    let error = adapter.send_message("-1", &from_matrix("x", ContentType::Text)).await.unwrap_err().to_string();
    assert!(!error.contains(&secret), "{error}");
}

#[tokio::test]
async fn webhook_mode_registers_and_checks_the_secret() {
    let fake = FakeTelegram::start().await;
    let h = harness_with(fake, |c| {
        c.mode = TelegramMode::Webhook;
        c.webhook_url = Some("https://bridge.example.org/hooks/telegram".into());
    })
    .await;
    h.adapter.connect().await.unwrap();
    let (url, secret) = h.fake.webhook().unwrap();
    assert_eq!(url, "https://bridge.example.org/hooks/telegram");
    assert_eq!(secret.as_deref(), Some(h.adapter.webhook_secret()));
    assert_eq!(h.adapter.webhook_path(), "/hooks/telegram");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = h.adapter.webhook_router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let update = json!({"update_id": 5, "message": {
        "message_id": 9, "date": 1_700_000_000, "chat": {"id": GROUP, "type": "group", "title": "Team chat"},
        "from": ada().json(), "text": "via webhook"
    }});
    let client = reqwest::Client::new();
    let post = |secret: &str| {
        client
            .post(format!("{base}/hooks/telegram"))
            .header("X-Telegram-Bot-Api-Secret-Token", secret)
            .json(&update)
            .send()
    };
    assert_eq!(post("wrong").await.unwrap().status(), 401);
    h.inbox.refuse.store(1, Ordering::SeqCst);
    assert_eq!(post(h.adapter.webhook_secret()).await.unwrap().status(), 503, "refused: Telegram retries");
    assert_eq!(post(h.adapter.webhook_secret()).await.unwrap().status(), 200);
    assert_eq!(h.inbox.wait_for(1).await[0].content, "via webhook");
    assert_eq!(h.fake.calls("getUpdates"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bot_types_in_a_chat_and_invents_no_read_receipts() {
    let h = harness().await;
    let group = GROUP.to_string();
    assert!(h.adapter.typing_renewal().is_some_and(|every| every < Duration::from_secs(5)), "renewed before it lapses");
    h.adapter.set_typing(&group, "echo", true).await.unwrap();
    let actions = h.fake.chat_actions(GROUP);
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0].action, "typing");
    h.adapter.set_typing(&group, "echo", false).await.unwrap();
    h.adapter.mark_read(&group, "1", "echo").await.unwrap();
    assert_eq!(h.fake.chat_actions(GROUP).len(), 1, "Telegram cannot clear a chat action");
    assert!(h.fake.sent().is_empty(), "a read receipt posts nothing: {:?}", h.fake.sent());
    // Someone else typing there right after is served by the same notice.
    h.adapter.set_typing(&group, "other", true).await.unwrap();
    assert_eq!(h.fake.chat_actions(GROUP).len(), 1, "one notice per chat serves everybody typing there");
    // Half a renewal later, a notice is sent again (and fails where the bot is gone).
    tokio::time::sleep(h.adapter.typing_renewal().unwrap() / 2).await;
    h.fake.set_member_status(GROUP, "kicked");
    let gone = h.adapter.set_typing(&group, "echo", true).await;
    assert!(matches!(gone, Err(ChannelSendError::Terminal(_))), "{gone:?}");
}
