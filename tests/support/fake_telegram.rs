//! A fake Telegram Bot API server, as the public API documents it: `{api_url}/bot<token>/<method>`
//! (method names case-insensitive, parameters as query string, JSON, form or multipart with
//! `attach://` files), answers `{"ok":true,"result":…}` or `{"ok":false,"error_code":…,
//! "description":…,"parameters":{"retry_after":…}}`, files under `{api_url}/file/bot<token>/<path>`.
//!
//! Tests act as Telegram users with [`FakeTelegram::push_message`] / [`FakeTelegram::push_edit`],
//! and read what the bot posted with [`FakeTelegram::sent`] / [`FakeTelegram::wait_for_sent`].
//! Texts the bot sends are parsed as real Telegram does (MarkdownV2 is strict: an unescaped
//! reserved character is a 400), so `Sent::text` is what a Telegram user would see.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

/// A Telegram user (or bot) as it appears in `from`.
#[derive(Debug, Clone)]
pub struct TgUser {
    pub id: i64,
    pub first_name: String,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub is_bot: bool,
}

impl TgUser {
    pub fn new(id: i64, first_name: &str, last_name: Option<&str>, username: Option<&str>) -> TgUser {
        TgUser {
            id,
            first_name: first_name.into(),
            last_name: last_name.map(Into::into),
            username: username.map(Into::into),
            is_bot: false,
        }
    }

    pub fn json(&self) -> Value {
        let mut user = json!({"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name});
        if let Some(last) = &self.last_name {
            user["last_name"] = json!(last);
        }
        if let Some(username) = &self.username {
            user["username"] = json!(username);
        }
        user
    }

    pub fn full_name(&self) -> String {
        match &self.last_name {
            Some(last) => format!("{} {last}", self.first_name),
            None => self.first_name.clone(),
        }
    }
}

/// What kind of message the bot produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentKind {
    Text,
    Photo,
    Document,
    Edit,
}

/// An entity of a sent text, as Telegram parsed it (UTF-16 offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    pub kind: String,
    pub offset: usize,
    pub length: usize,
    pub language: Option<String>,
    pub url: Option<String>,
}

/// One message the bot sent or edited.
#[derive(Debug, Clone)]
pub struct Sent {
    pub method: String,
    pub kind: SentKind,
    pub chat_id: i64,
    pub message_id: i64,
    /// The text (or caption) exactly as the bot sent it.
    pub raw: String,
    /// What a Telegram user sees: the text after parsing `parse_mode`.
    pub text: String,
    pub entities: Vec<Entity>,
    pub parse_mode: Option<String>,
    pub reply_to: Option<i64>,
    pub thread_id: Option<i64>,
    /// Uploaded file: name and bytes.
    pub file: Option<(String, Vec<u8>)>,
    pub at: Instant,
}

impl Sent {
    /// The text an entity covers.
    pub fn entity_text(&self, entity: &Entity) -> String {
        let units: Vec<u16> = self.text.encode_utf16().collect();
        String::from_utf16_lossy(&units[entity.offset..entity.offset + entity.length])
    }

    pub fn has_entity(&self, kind: &str, text: &str) -> bool {
        self.entities.iter().any(|e| e.kind == kind && self.entity_text(e) == text)
    }
}

struct File {
    unique_id: String,
    path: String,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Store {
    updates: VecDeque<Value>,
    next_update_id: i64,
    confirmed_offset: i64,
    next_message_id: HashMap<i64, i64>,
    /// Every message in every chat, for replies and edits.
    messages: HashMap<(i64, i64), Value>,
    chats: HashMap<i64, Value>,
    forums: HashMap<i64, bool>,
    users: HashMap<i64, Value>,
    member_status: HashMap<i64, String>,
    /// People's membership per (chat, user); someone never added has `left`.
    people_status: HashMap<(i64, i64), String>,
    files: HashMap<String, File>,
    file_paths: HashMap<String, String>,
    next_file: u64,
    sent: Vec<Sent>,
    failures: VecDeque<(u16, Option<u32>)>,
    poll_failures: VecDeque<(u16, Option<u32>)>,
    /// Chats whose sends always fail with this status.
    broken_chats: HashMap<i64, u16>,
    /// Requests carried out whose answers are cut short, as by a dropped connection.
    lost_answers: usize,
    /// Chats whose `getChat` answer lacks the `type` every client needs.
    garbled_chats: HashSet<i64>,
    webhook: Option<(String, Option<String>)>,
    calls: HashMap<String, usize>,
    last_params: HashMap<String, Value>,
    /// `sendChatAction` calls: chat, action, topic and when.
    chat_actions: Vec<ChatAction>,
    /// The `allowed_updates` of the last `getUpdates` / `setWebhook` that named them.
    allowed_updates: Option<Vec<String>>,
    /// The bot's reactions by (chat, message), as `setMessageReaction` set them.
    bot_reactions: HashMap<(i64, i64), Vec<String>>,
    /// Messages `deleteMessage` took away, as (chat, message), in order.
    deleted: Vec<(i64, i64)>,
    /// Messages the bot may no longer delete (older than 48 hours).
    too_old: HashSet<(i64, i64)>,
}

struct Shared {
    token: String,
    bot: TgUser,
    reads_all_group_messages: bool,
    store: Mutex<Store>,
    /// Bumped on every pushed update (wakes long polls) and every sent message.
    updates_tick: watch::Sender<u64>,
    sent_tick: watch::Sender<u64>,
}

/// The fake Bot API; dropped with the test's runtime.
pub struct FakeTelegram {
    shared: Arc<Shared>,
    base_url: String,
}

pub const BOT_ID: i64 = 7_000_000_001;
pub const BOT_USERNAME: &str = "MosaicTestBot";

impl FakeTelegram {
    /// A bot whose privacy mode is off (it sees all group messages).
    pub async fn start() -> FakeTelegram {
        Self::start_with(true).await
    }

    pub async fn start_with(reads_all_group_messages: bool) -> FakeTelegram {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let mut bot = TgUser::new(BOT_ID, "Mosaic", None, Some(BOT_USERNAME));
        bot.is_bot = true;
        let shared = Arc::new(Shared {
            token: format!("{BOT_ID}:{}", random_secret()),
            bot,
            reads_all_group_messages,
            store: Mutex::new(Store { next_update_id: 100_000, ..Default::default() }),
            updates_tick: watch::channel(0).0,
            sent_tick: watch::channel(0).0,
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeTelegram { shared, base_url }
    }

    pub fn api_url(&self) -> String {
        self.base_url.clone()
    }

    pub fn token(&self) -> String {
        self.shared.token.clone()
    }

    pub fn bot(&self) -> TgUser {
        self.shared.bot.clone()
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap()
    }

    /// A basic group the bot is a member of.
    pub fn add_group(&self, id: i64, title: &str) {
        self.add_chat(json!({"id": id, "type": "group", "title": title}), false);
    }

    /// A supergroup (ids start with -100); `forum`: topics are on.
    pub fn add_supergroup(&self, id: i64, title: &str, forum: bool) {
        let mut chat = json!({"id": id, "type": "supergroup", "title": title});
        if forum {
            chat["is_forum"] = json!(true);
        }
        self.add_chat(chat, forum);
    }

    fn add_chat(&self, chat: Value, forum: bool) {
        let id = chat["id"].as_i64().unwrap();
        let mut store = self.store();
        store.chats.insert(id, chat);
        store.forums.insert(id, forum);
    }

    /// The bot's membership in a chat: `member` (default), `administrator`, `left`, `kicked`.
    pub fn set_member_status(&self, chat_id: i64, status: &str) {
        self.store().member_status.insert(chat_id, status.into());
    }

    /// A person's membership in a chat: `creator`, `administrator`, `member`, `left`…
    pub fn set_person_status(&self, chat_id: i64, user: &TgUser, status: &str) {
        let mut store = self.store();
        store.users.insert(user.id, user.json());
        store.people_status.insert((chat_id, user.id), status.into());
    }

    /// A user writes in a chat; returns the new message's id.
    pub fn push_message(&self, message: Incoming) -> i64 {
        let now = unix_now();
        let mut store = self.store();
        store.users.insert(message.from.id, message.from.json());
        if !store.chats.contains_key(&message.chat_id) && message.chat_id > 0 {
            let chat = private_chat(&message.from);
            store.chats.insert(message.chat_id, chat);
        }
        let chat = store.chats.get(&message.chat_id).cloned().expect("add the chat first (add_group/add_supergroup)");
        let id = next_message_id(&mut store, message.chat_id);
        let mut json = json!({"message_id": id, "from": message.from.json(), "chat": chat, "date": now});
        fill_incoming(&mut store, &mut json, &message, now);
        store.messages.insert((message.chat_id, id), json.clone());
        push(&mut store, "message", json);
        drop(store);
        self.shared.updates_tick.send_modify(|n| *n += 1);
        id
    }

    /// The author edits message `message_id` of `chat_id` to `text`.
    pub fn push_edit(&self, chat_id: i64, message_id: i64, text: &str) {
        let mut store = self.store();
        let mut json = store.messages.get(&(chat_id, message_id)).cloned().expect("edit of a known message");
        let edit_date = json["date"].as_i64().unwrap() + 60 + json["edit_date"].as_i64().map_or(0, |d| d % 60 + 1);
        json["text"] = json!(text);
        json.as_object_mut().unwrap().remove("entities");
        json["edit_date"] = json!(edit_date);
        store.messages.insert((chat_id, message_id), json.clone());
        push(&mut store, "edited_message", json);
        drop(store);
        self.shared.updates_tick.send_modify(|n| *n += 1);
    }

    /// Any update (`update_id` is added when missing); returns its id.
    pub fn push_update(&self, mut update: Value) -> i64 {
        let mut store = self.store();
        let id = if let Some(id) = update["update_id"].as_i64() {
            store.next_update_id = store.next_update_id.max(id + 1);
            id
        } else {
            let id = store.next_update_id;
            store.next_update_id += 1;
            update["update_id"] = json!(id);
            id
        };
        store.updates.push_back(update);
        drop(store);
        self.shared.updates_tick.send_modify(|n| *n += 1);
        id
    }

    /// A person changes their reactions on a message from `old` to `new` (emoji).
    /// Telegram tells only bots that administer the chat (`message_reaction` update),
    /// and only when they asked for it in `allowed_updates`.
    pub fn push_reaction(&self, chat_id: i64, message_id: i64, user: &TgUser, old: &[&str], new: &[&str]) {
        let mut store = self.store();
        let admin = matches!(store.member_status.get(&chat_id).map(String::as_str), Some("administrator" | "creator"));
        if !admin {
            return;
        }
        let chat = store.chats.get(&chat_id).cloned().expect("a known chat");
        let list = |emoji: &[&str]| -> Value { emoji.iter().map(|e| json!({"type": "emoji", "emoji": e})).collect() };
        let reaction = json!({"chat": chat, "message_id": message_id, "user": user.json(), "date": unix_now(),
                              "old_reaction": list(old), "new_reaction": list(new)});
        push(&mut store, "message_reaction", reaction);
        drop(store);
        self.shared.updates_tick.send_modify(|n| *n += 1);
    }

    /// The bot's reactions on a message now.
    pub fn bot_reactions(&self, chat_id: i64, message_id: i64) -> Vec<String> {
        self.store().bot_reactions.get(&(chat_id, message_id)).cloned().unwrap_or_default()
    }

    /// Waits until the bot's reactions on a message satisfy `check`; returns them.
    pub async fn wait_for_bot_reactions(
        &self,
        chat_id: i64,
        message_id: i64,
        check: impl Fn(&[String]) -> bool,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.bot_reactions(chat_id, message_id);
            if check(&now) {
                return now;
            }
            assert!(Instant::now() < deadline, "the bot's reactions on {message_id} stayed {now:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The JSON of a message as Telegram holds it now.
    pub fn message(&self, chat_id: i64, message_id: i64) -> Option<Value> {
        self.store().messages.get(&(chat_id, message_id)).cloned()
    }

    /// The messages `deleteMessage` took away, as (chat, message), in order.
    pub fn deleted(&self) -> Vec<(i64, i64)> {
        self.store().deleted.clone()
    }

    /// From now on the bot may no longer delete this message, as after 48 hours.
    pub fn age_message(&self, chat_id: i64, message_id: i64) {
        self.store().too_old.insert((chat_id, message_id));
    }

    /// Every message the bot sent or edited, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.store().sent.clone()
    }

    /// Waits for a sent message matching `check`.
    pub async fn wait_for_sent(&self, check: impl Fn(&Sent) -> bool, timeout: Duration) -> Sent {
        let mut tick = self.shared.sent_tick.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let store = self.store();
                if let Some(found) = store.sent[seen..].iter().find(|s| check(s)) {
                    return found.clone();
                }
                seen = store.sent.len();
            }
            if tokio::time::timeout_at(deadline, tick.changed()).await.is_err() {
                panic!("no matching message sent within {timeout:?}; sent: {:#?}", self.sent());
            }
        }
    }

    /// Waits until at least `n` messages were sent or edited.
    pub async fn wait_for_sent_count(&self, n: usize, timeout: Duration) -> Vec<Sent> {
        let mut tick = self.shared.sent_tick.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.store().sent.len() >= n {
                return self.sent();
            }
            if tokio::time::timeout_at(deadline, tick.changed()).await.is_err() {
                panic!("{n} messages not sent within {timeout:?}; sent: {:#?}", self.sent());
            }
        }
    }

    /// The next `n` requests other than getUpdates/getMe/sendChatAction fail with
    /// `status` (429 carries `retry_after`). Chat actions go out whenever an agent works,
    /// at moments a test does not choose, so they are left alone.
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<u32>) {
        let mut store = self.store();
        store.failures.extend(std::iter::repeat_n((status, retry_after), n));
    }

    /// Every send to `chat` fails with `status` from now on (its updates still arrive).
    pub fn break_chat(&self, chat: i64, status: u16) {
        self.store().broken_chats.insert(chat, status);
    }

    /// Failures asked for with [`FakeTelegram::fail_next`] that have not happened yet
    /// are forgotten: Telegram is well again.
    pub fn heal(&self) {
        self.store().failures.clear();
    }

    /// The next `n` requests other than getUpdates/getMe/sendChatAction are carried out,
    /// but their answers break off after the first bytes.
    pub fn lose_next_answers(&self, n: usize) {
        self.store().lost_answers += n;
    }

    /// `getChat` on `chat` answers without the chat's `type`, which clients cannot parse.
    pub fn garble_chat(&self, chat: i64) {
        self.store().garbled_chats.insert(chat);
    }

    /// The next `n` getUpdates calls fail.
    pub fn fail_polls(&self, n: usize, status: u16, retry_after: Option<u32>) {
        let mut store = self.store();
        store.poll_failures.extend(std::iter::repeat_n((status, retry_after), n));
    }

    /// The highest offset the bot confirmed: every update below it is gone.
    pub fn confirmed_offset(&self) -> i64 {
        self.store().confirmed_offset
    }

    /// Updates not confirmed yet.
    pub fn pending_updates(&self) -> usize {
        self.store().updates.len()
    }

    /// How often a method (lowercase) was called.
    pub fn calls(&self, method: &str) -> usize {
        self.store().calls.get(&method.to_ascii_lowercase()).copied().unwrap_or(0)
    }

    /// The parameters of the last call of a method (lowercase).
    pub fn last_params(&self, method: &str) -> Option<Value> {
        self.store().last_params.get(&method.to_ascii_lowercase()).cloned()
    }

    /// The chat actions (`sendChatAction`) the bot sent to `chat`, oldest first.
    pub fn chat_actions(&self, chat: i64) -> Vec<ChatAction> {
        self.store().chat_actions.iter().filter(|a| a.chat_id == chat).cloned().collect()
    }

    /// The webhook (url, secret token) set by the bot.
    pub fn webhook(&self) -> Option<(String, Option<String>)> {
        self.store().webhook.clone()
    }
}

/// One `sendChatAction` call.
#[derive(Debug, Clone)]
pub struct ChatAction {
    pub chat_id: i64,
    /// `typing`, `upload_photo`, …
    pub action: String,
    pub thread_id: Option<i64>,
    pub at: Instant,
}

/// A message a user writes, built up for [`FakeTelegram::push_message`].
#[derive(Debug, Clone)]
pub struct Incoming {
    pub chat_id: i64,
    pub from: TgUser,
    pub text: Option<String>,
    pub entities: Option<Value>,
    pub reply_to: Option<i64>,
    pub thread: Option<i64>,
    pub photo: Option<Vec<u8>>,
    pub document: Option<(Vec<u8>, String, String)>,
    pub forwarded_from: Option<TgUser>,
}

impl Incoming {
    pub fn text(chat_id: i64, from: &TgUser, text: &str) -> Incoming {
        Incoming {
            chat_id,
            from: from.clone(),
            text: Some(text.into()),
            entities: None,
            reply_to: None,
            thread: None,
            photo: None,
            document: None,
            forwarded_from: None,
        }
    }

    /// A photo (with a small thumbnail of other bytes, as Telegram sends several sizes).
    pub fn photo(chat_id: i64, from: &TgUser, bytes: &[u8], caption: Option<&str>) -> Incoming {
        let mut message = Self::text(chat_id, from, "");
        message.text = caption.map(Into::into);
        message.photo = Some(bytes.to_vec());
        message
    }

    pub fn document(chat_id: i64, from: &TgUser, bytes: &[u8], name: &str, mime: &str) -> Incoming {
        let mut message = Self::text(chat_id, from, "");
        message.text = None;
        message.document = Some((bytes.to_vec(), name.into(), mime.into()));
        message
    }

    /// Entities as the Bot API sends them (`[{"type":"bold","offset":0,"length":4}]`).
    pub fn entities(mut self, entities: Value) -> Incoming {
        self.entities = Some(entities);
        self
    }

    pub fn reply_to(mut self, message_id: i64) -> Incoming {
        self.reply_to = Some(message_id);
        self
    }

    /// In the forum topic whose first message is `thread_id`.
    pub fn in_topic(mut self, thread_id: i64) -> Incoming {
        self.thread = Some(thread_id);
        self
    }

    pub fn forwarded_from(mut self, user: &TgUser) -> Incoming {
        self.forwarded_from = Some(user.clone());
        self
    }
}

fn fill_incoming(store: &mut Store, json: &mut Value, message: &Incoming, now: i64) {
    let text_key = if message.photo.is_some() || message.document.is_some() { "caption" } else { "text" };
    if let Some(text) = &message.text {
        json[text_key] = json!(text);
    }
    if let Some(entities) = &message.entities {
        json[if text_key == "caption" { "caption_entities" } else { "entities" }] = entities.clone();
    }
    if let Some(thread) = message.thread {
        json["message_thread_id"] = json!(thread);
        json["is_topic_message"] = json!(true);
    }
    let replied = match (message.reply_to, message.thread) {
        (Some(id), _) => store.messages.get(&(message.chat_id, id)).cloned(),
        // Telegram makes every topic message a reply to the topic's first message.
        (None, Some(thread)) => Some(topic_root(json, thread)),
        _ => None,
    };
    if let Some(mut replied) = replied {
        replied.as_object_mut().unwrap().remove("reply_to_message");
        json["reply_to_message"] = replied;
    }
    if let Some(user) = &message.forwarded_from {
        json["forward_origin"] = json!({"type": "user", "sender_user": user.json(), "date": now - 3600});
    }
    if let Some(bytes) = &message.photo {
        let thumb = add_file(store, b"thumbnail".to_vec(), "photos", "jpg");
        let full = add_file(store, bytes.clone(), "photos", "jpg");
        json["photo"] = json!([photo_size(store, &thumb, 90, 67), photo_size(store, &full, 1280, 960)]);
    }
    if let Some((bytes, name, mime)) = &message.document {
        let id = add_file(store, bytes.clone(), "documents", name.rsplit('.').next().unwrap_or("bin"));
        json["document"] = document(store, &id, name, mime);
    }
}

fn topic_root(message: &Value, thread: i64) -> Value {
    json!({
        "message_id": thread, "from": message["from"], "chat": message["chat"], "date": message["date"],
        "message_thread_id": thread, "is_topic_message": true,
        "forum_topic_created": {"name": "Topic", "icon_color": 7_322_096}
    })
}

fn photo_size(store: &Store, file_id: &str, width: u32, height: u32) -> Value {
    let file = &store.files[file_id];
    json!({"file_id": file_id, "file_unique_id": file.unique_id, "width": width, "height": height, "file_size": file.bytes.len()})
}

fn document(store: &Store, file_id: &str, name: &str, mime: &str) -> Value {
    let file = &store.files[file_id];
    json!({"file_id": file_id, "file_unique_id": file.unique_id, "file_name": name, "mime_type": mime, "file_size": file.bytes.len()})
}

fn add_file(store: &mut Store, bytes: Vec<u8>, folder: &str, extension: &str) -> String {
    store.next_file += 1;
    let n = store.next_file;
    let id = format!("AgACAgIAAxkBAAI{n:08}");
    let path = format!("{folder}/file_{n}.{extension}");
    store.file_paths.insert(path.clone(), id.clone());
    store.files.insert(id.clone(), File { unique_id: format!("AQAD{n:06}"), path, bytes });
    id
}

fn push(store: &mut Store, kind: &str, message: Value) {
    let id = store.next_update_id;
    store.next_update_id += 1;
    store.updates.push_back(json!({"update_id": id, kind: message}));
}

fn next_message_id(store: &mut Store, chat_id: i64) -> i64 {
    let next = store.next_message_id.entry(chat_id).or_insert(1);
    let id = *next;
    *next += 1;
    id
}

fn private_chat(user: &TgUser) -> Value {
    let mut chat = json!({"id": user.id, "type": "private", "first_name": user.first_name});
    if let Some(last) = &user.last_name {
        chat["last_name"] = json!(last);
    }
    if let Some(username) = &user.username {
        chat["username"] = json!(username);
    }
    chat
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn random_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut bytes = [0u8; 35];
    getrandom::fill(&mut bytes).unwrap();
    bytes.iter().map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char).collect()
}

// ---------------------------------------------------------------------------------------
// HTTP

/// An API error: status code, description, `retry_after`.
type ApiError = (u16, String, Option<u32>);
type Answer = Result<Value, ApiError>;
/// Uploaded files by multipart part name: file name and bytes.
type Uploads = HashMap<String, (String, Vec<u8>)>;

fn reply(answer: Answer) -> Response {
    match answer {
        Ok(result) => axum::Json(json!({"ok": true, "result": result})).into_response(),
        Err((code, description, retry_after)) => {
            let mut body = json!({"ok": false, "error_code": code, "description": description});
            if let Some(after) = retry_after {
                body["parameters"] = json!({"retry_after": after});
            }
            (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
        }
    }
}

fn bad_request(reason: &str) -> ApiError {
    (400, format!("Bad Request: {reason}"), None)
}

fn failure(status: u16, retry_after: Option<u32>) -> ApiError {
    let description = match status {
        429 => format!("Too Many Requests: retry after {}", retry_after.unwrap_or(1)),
        500 => "Internal Server Error".into(),
        502 => "Bad Gateway".into(),
        403 => "Forbidden: bot was kicked from the supergroup chat".into(),
        _ => format!("Error {status}"),
    };
    (status, description, retry_after.filter(|_| status == 429))
}

async fn handle(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().trim_start_matches('/');
    if let Some(rest) = path.strip_prefix("file/") {
        return download(&shared, rest);
    }
    let Some((bot, method)) = path.split_once('/') else {
        return reply(Err((404, "Not Found".into(), None)));
    };
    if bot.strip_prefix("bot") != Some(shared.token.as_str()) {
        return reply(Err((401, "Unauthorized".into(), None)));
    }
    let method = method.to_ascii_lowercase();
    let (params, files) = match parse_params(uri.query(), &headers, &body) {
        Ok(parsed) => parsed,
        Err(reason) => return reply(Err(bad_request(&reason))),
    };
    {
        let mut store = shared.store.lock().unwrap();
        *store.calls.entry(method.clone()).or_default() += 1;
        store.last_params.insert(method.clone(), Value::Object(params.clone()));
        let injected = match method.as_str() {
            "getupdates" => store.poll_failures.pop_front(),
            "getme" | "sendchataction" => None,
            _ => store.failures.pop_front(),
        };
        if let Some((status, retry_after)) = injected {
            return reply(Err(failure(status, retry_after)));
        }
        let is_send = matches!(method.as_str(), "sendmessage" | "editmessagetext" | "sendphoto" | "senddocument");
        let chat = params.get("chat_id").and_then(|c| c.as_i64().or_else(|| c.as_str()?.parse().ok()));
        if let Some(status) = chat.filter(|_| is_send).and_then(|chat| store.broken_chats.get(&chat)) {
            return reply(Err(failure(*status, None)));
        }
    }
    let answer = match method.as_str() {
        "getme" => Ok(get_me(&shared)),
        "getupdates" => get_updates(&shared, &params).await,
        "sendmessage" => send_message(&shared, &params),
        "editmessagetext" => edit_message_text(&shared, &params),
        "sendphoto" => send_file(&shared, &params, &files, SentKind::Photo),
        "senddocument" => send_file(&shared, &params, &files, SentKind::Document),
        "getfile" => get_file(&shared, &params),
        "getchat" => get_chat(&shared, &params),
        "sendchataction" => send_chat_action(&shared, &params),
        "setmessagereaction" => set_message_reaction(&shared, &params),
        "deletemessage" => delete_message(&shared, &params),
        "getchatmember" => get_chat_member(&shared, &params),
        "setwebhook" => set_webhook(&shared, &params),
        "deletewebhook" => {
            shared.store.lock().unwrap().webhook = None;
            Ok(json!(true))
        }
        _ => Err((404, "Not Found".into(), None)),
    };
    let mut store = shared.store.lock().unwrap();
    if !matches!(method.as_str(), "getupdates" | "getme" | "sendchataction") && store.lost_answers > 0 {
        store.lost_answers -= 1;
        // More bytes announced than sent: the client sees the connection close mid-answer.
        let cut = "{\"ok\":true,\"result\":";
        return (StatusCode::OK, [("content-type", "application/json"), ("content-length", "4096")], cut)
            .into_response();
    }
    reply(answer)
}

fn download(shared: &Shared, rest: &str) -> Response {
    let Some((bot, path)) = rest.split_once('/') else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if bot.strip_prefix("bot") != Some(shared.token.as_str()) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // Clients may send the path's slashes percent-encoded.
    let path: String = url::form_urlencoded::parse(format!("p={path}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let store = shared.store.lock().unwrap();
    match store.file_paths.get(&path).and_then(|id| store.files.get(id)) {
        Some(file) => file.bytes.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Parameters from the query string and the body (JSON, form, or multipart); uploaded
/// files by part name.
fn parse_params(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Map<String, Value>, Uploads), String> {
    let mut params = Map::new();
    let mut files = HashMap::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        params.insert(key.into_owned(), loose(&value));
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/json") && !body.is_empty() {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("can't parse JSON: {e}"))?;
        params.extend(value.as_object().cloned().unwrap_or_default());
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        for (key, value) in url::form_urlencoded::parse(body) {
            params.insert(key.into_owned(), loose(&value));
        }
    } else if let Some(boundary) = content_type.split("boundary=").nth(1) {
        for part in multipart(body, boundary.trim_matches('"')) {
            match part.file_name {
                Some(file_name) => {
                    files.insert(part.name, (file_name, part.data));
                }
                None => {
                    params.insert(part.name, loose(&String::from_utf8_lossy(&part.data)));
                }
            }
        }
    }
    Ok((params, files))
}

/// A parameter value: JSON when it parses (numbers, objects), else the string.
fn loose(value: &str) -> Value {
    match serde_json::from_str::<Value>(value) {
        Ok(parsed) if !parsed.is_string() => parsed,
        _ => Value::String(value.to_string()),
    }
}

struct Part {
    name: String,
    file_name: Option<String>,
    data: Vec<u8>,
}

fn multipart(body: &[u8], boundary: &str) -> Vec<Part> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    for chunk in split_bytes(body, delimiter.as_bytes()).into_iter().skip(1) {
        if chunk.starts_with(b"--") {
            break;
        }
        let chunk = chunk.strip_prefix(b"\r\n").unwrap_or(chunk);
        let Some(split) = find(chunk, b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&chunk[..split]).to_string();
        let mut data = chunk[split + 4..].to_vec();
        if data.ends_with(b"\r\n") {
            data.truncate(data.len() - 2);
        }
        let disposition =
            head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition")).unwrap_or("");
        let field = |key: &str| {
            disposition
                .split(';')
                .map(str::trim)
                .find_map(|p| p.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        if let Some(name) = field("name") {
            parts.push(Part { name, file_name: field("filename"), data });
        }
    }
    parts
}

fn split_bytes<'a>(body: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(at) = find(rest, delimiter) {
        out.push(&rest[..at]);
        rest = &rest[at + delimiter.len()..];
    }
    out.push(rest);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// Methods

fn get_me(shared: &Shared) -> Value {
    let mut me = shared.bot.json();
    me["can_join_groups"] = json!(true);
    me["can_read_all_group_messages"] = json!(shared.reads_all_group_messages);
    me["supports_inline_queries"] = json!(false);
    me["can_connect_to_business"] = json!(false);
    me["has_main_web_app"] = json!(false);
    me
}

async fn get_updates(shared: &Shared, params: &Map<String, Value>) -> Answer {
    let offset = int(params, "offset").unwrap_or(0);
    let limit = int(params, "limit").unwrap_or(100).clamp(1, 100) as usize;
    let timeout = Duration::from_secs(int(params, "timeout").unwrap_or(0).clamp(0, 50) as u64);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = shared.updates_tick.subscribe();
    loop {
        {
            let mut store = shared.store.lock().unwrap();
            if store.webhook.is_some() {
                return Err((409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first".into(), None));
            }
            if offset > 0 {
                store.confirmed_offset = store.confirmed_offset.max(offset);
                while store.updates.front().is_some_and(|u| u["update_id"].as_i64().unwrap() < offset) {
                    store.updates.pop_front();
                }
            }
            if let Some(allowed) = string_list(params, "allowed_updates") {
                store.allowed_updates = Some(allowed);
            }
            // Reactions come only to bots that asked for them (they are not in the default).
            let reactions = store.allowed_updates.as_ref().is_some_and(|a| a.iter().any(|u| u == "message_reaction"));
            if !reactions {
                store.updates.retain(|u| u.get("message_reaction").is_none());
            }
            let batch: Vec<Value> = store.updates.iter().take(limit).cloned().collect();
            if !batch.is_empty() {
                return Ok(Value::Array(batch));
            }
        }
        if tokio::time::timeout_at(deadline, tick.changed()).await.is_err() {
            return Ok(json!([]));
        }
    }
}

/// A list parameter, sent as JSON (in a string, for query and form parameters).
fn string_list(params: &Map<String, Value>, key: &str) -> Option<Vec<String>> {
    let value = match params.get(key)? {
        Value::String(text) => serde_json::from_str(text).ok()?,
        value => value.clone(),
    };
    Some(value.as_array()?.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
}

fn int(params: &Map<String, Value>, key: &str) -> Option<i64> {
    match params.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn chat_of(store: &Store, params: &Map<String, Value>) -> Result<(i64, Value), ApiError> {
    let id = int(params, "chat_id").ok_or_else(|| bad_request("chat_id is empty"))?;
    let chat = store.chats.get(&id).cloned().ok_or_else(|| bad_request("chat not found"))?;
    if matches!(store.member_status.get(&id).map(String::as_str), Some("left" | "kicked")) {
        return Err((403, "Forbidden: bot is not a member of the group chat".into(), None));
    }
    Ok((id, chat))
}

/// The text (or caption) as Telegram shows it, with its entities.
fn parse_text(params: &Map<String, Value>, key: &str) -> Result<(String, String, Vec<Entity>), ApiError> {
    let raw = params.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let mode = params.get("parse_mode").and_then(Value::as_str).unwrap_or("");
    let (text, entities) = match mode {
        "MarkdownV2" => parse_markdown_v2(&raw).map_err(|e| bad_request(&format!("can't parse entities: {e}")))?,
        "" => (raw.clone(), Vec::new()),
        other => return Err(bad_request(&format!("unsupported parse_mode {other} in this fake"))),
    };
    // Telegram trims surrounding whitespace of the parsed text.
    let trimmed_start = text.len() - text.trim_start().len();
    let shift = text[..trimmed_start].encode_utf16().count();
    let text_trimmed = text.trim().to_string();
    let total = text_trimmed.encode_utf16().count();
    let entities = entities
        .into_iter()
        .filter_map(|mut e| {
            e.offset = e.offset.checked_sub(shift)?;
            e.length = e.length.min(total.checked_sub(e.offset)?);
            Some(e).filter(|e| e.length > 0)
        })
        .collect();
    Ok((raw, text_trimmed, entities))
}

fn entities_json(entities: &[Entity]) -> Value {
    Value::Array(
        entities
            .iter()
            .map(|e| {
                let mut v = json!({"type": e.kind, "offset": e.offset, "length": e.length});
                if let Some(language) = &e.language {
                    v["language"] = json!(language);
                }
                if let Some(url) = &e.url {
                    v["url"] = json!(url);
                }
                v
            })
            .collect(),
    )
}

fn reply_target(params: &Map<String, Value>) -> (Option<i64>, bool) {
    if let Some(reply) = params.get("reply_parameters") {
        let reply =
            if let Value::String(s) = reply { serde_json::from_str(s).unwrap_or(Value::Null) } else { reply.clone() };
        return (reply["message_id"].as_i64(), reply["allow_sending_without_reply"].as_bool().unwrap_or(false));
    }
    (
        int(params, "reply_to_message_id"),
        params.get("allow_sending_without_reply").and_then(Value::as_bool).unwrap_or(false),
    )
}

/// Builds, stores and records a message from the bot.
fn post(
    shared: &Shared,
    store: &mut Store,
    params: &Map<String, Value>,
    kind: SentKind,
    body: (&str, String, String, Vec<Entity>),
    file: Option<(String, Vec<u8>, Value)>,
) -> Answer {
    let (chat_id, chat) = chat_of(store, params)?;
    let (reply_to, allow_without) = reply_target(params);
    let replied = reply_to.and_then(|id| store.messages.get(&(chat_id, id)).cloned());
    if reply_to.is_some() && replied.is_none() && !allow_without {
        return Err(bad_request("message to be replied not found"));
    }
    let thread_id = int(params, "message_thread_id");
    let id = next_message_id(store, chat_id);
    let (text_key, raw, text, entities) = body;
    let mut message = json!({"message_id": id, "from": shared.bot.json(), "chat": chat, "date": unix_now()});
    if !text.is_empty() {
        message[text_key] = json!(text);
        if !entities.is_empty() {
            message[if text_key == "caption" { "caption_entities" } else { "entities" }] = entities_json(&entities);
        }
    }
    if let Some(thread) = thread_id {
        message["message_thread_id"] = json!(thread);
        message["is_topic_message"] = json!(store.forums.get(&chat_id).copied().unwrap_or(false));
    }
    if let Some(mut replied) = replied {
        replied.as_object_mut().unwrap().remove("reply_to_message");
        message["reply_to_message"] = replied;
    }
    let file = file.map(|(name, bytes, media)| {
        let key = if kind == SentKind::Photo { "photo" } else { "document" };
        message[key] = media;
        (name, bytes)
    });
    store.messages.insert((chat_id, id), message.clone());
    store.sent.push(Sent {
        method: format!("{kind:?}"),
        kind,
        chat_id,
        message_id: id,
        raw,
        text,
        entities,
        parse_mode: params.get("parse_mode").and_then(Value::as_str).map(Into::into),
        reply_to: reply_to.filter(|id| store.messages.contains_key(&(chat_id, *id))),
        thread_id,
        file,
        at: Instant::now(),
    });
    Ok(message)
}

fn send_message(shared: &Shared, params: &Map<String, Value>) -> Answer {
    let (raw, text, entities) = parse_text(params, "text")?;
    if text.is_empty() {
        return Err(bad_request("message text is empty"));
    }
    if text.encode_utf16().count() > 4096 {
        return Err(bad_request("message is too long"));
    }
    let mut store = shared.store.lock().unwrap();
    let answer = post(shared, &mut store, params, SentKind::Text, ("text", raw, text, entities), None);
    drop(store);
    shared.sent_tick.send_modify(|n| *n += 1);
    answer
}

fn send_file(
    shared: &Shared,
    params: &Map<String, Value>,
    files: &HashMap<String, (String, Vec<u8>)>,
    kind: SentKind,
) -> Answer {
    let field = if kind == SentKind::Photo { "photo" } else { "document" };
    let (raw, text, entities) = parse_text(params, "caption")?;
    if text.encode_utf16().count() > 1024 {
        return Err(bad_request("message caption is too long"));
    }
    let reference = params.get(field).and_then(Value::as_str).unwrap_or("").to_string();
    let (name, bytes) = match reference.strip_prefix("attach://") {
        Some(part) => files.get(part).cloned(),
        None => files.get(field).cloned(),
    }
    .ok_or_else(|| bad_request(&format!("there is no {field} in the request")))?;
    let mut store = shared.store.lock().unwrap();
    let extension = name.rsplit('.').next().unwrap_or("bin").to_string();
    let file_id =
        add_file(&mut store, bytes.clone(), if kind == SentKind::Photo { "photos" } else { "documents" }, &extension);
    let media = if kind == SentKind::Photo {
        json!([photo_size(&store, &file_id, 1280, 960)])
    } else {
        document(&store, &file_id, &name, "application/octet-stream")
    };
    let answer = post(shared, &mut store, params, kind, ("caption", raw, text, entities), Some((name, bytes, media)));
    drop(store);
    shared.sent_tick.send_modify(|n| *n += 1);
    answer
}

fn edit_message_text(shared: &Shared, params: &Map<String, Value>) -> Answer {
    let (raw, text, entities) = parse_text(params, "text")?;
    if text.is_empty() {
        return Err(bad_request("message text is empty"));
    }
    if text.encode_utf16().count() > 4096 {
        return Err(bad_request("MESSAGE_TOO_LONG"));
    }
    let mut store = shared.store.lock().unwrap();
    let (chat_id, _) = chat_of(&store, params)?;
    let message_id = int(params, "message_id").ok_or_else(|| bad_request("message identifier is not specified"))?;
    let Some(mut message) = store.messages.get(&(chat_id, message_id)).cloned() else {
        return Err(bad_request("message to edit not found"));
    };
    if message["from"]["id"].as_i64() != Some(shared.bot.id) || message.get("text").is_none() {
        return Err(bad_request("message can't be edited"));
    }
    let new_entities = entities_json(&entities);
    let old_entities = message.get("entities").cloned().unwrap_or(json!([]));
    if message["text"] == json!(text) && old_entities == new_entities {
        return Err(bad_request(
            "message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
        ));
    }
    message["text"] = json!(text);
    message["entities"] = new_entities;
    message["edit_date"] = json!(unix_now());
    store.messages.insert((chat_id, message_id), message.clone());
    store.sent.push(Sent {
        method: "editMessageText".into(),
        kind: SentKind::Edit,
        chat_id,
        message_id,
        raw,
        text,
        entities,
        parse_mode: params.get("parse_mode").and_then(Value::as_str).map(Into::into),
        reply_to: None,
        thread_id: message["message_thread_id"].as_i64(),
        file: None,
        at: Instant::now(),
    });
    drop(store);
    shared.sent_tick.send_modify(|n| *n += 1);
    Ok(message)
}

/// The actions `sendChatAction` accepts.
const CHAT_ACTIONS: [&str; 11] = [
    "typing",
    "upload_photo",
    "record_video",
    "upload_video",
    "record_voice",
    "upload_voice",
    "upload_document",
    "choose_sticker",
    "find_location",
    "record_video_note",
    "upload_video_note",
];

fn send_chat_action(shared: &Shared, params: &Map<String, Value>) -> Answer {
    let mut store = shared.store.lock().unwrap();
    let (chat_id, _) = chat_of(&store, params)?;
    let action = params.get("action").and_then(Value::as_str).unwrap_or("");
    if !CHAT_ACTIONS.contains(&action) {
        return Err(bad_request("wrong parameter action in request"));
    }
    let thread_id = int(params, "message_thread_id");
    store.chat_actions.push(ChatAction { chat_id, action: action.into(), thread_id, at: Instant::now() });
    Ok(json!(true))
}

/// The emoji a bot may react with (`ReactionTypeEmoji`).
const REACTION_EMOJI: &[&str] = &[
    "👍",
    "👎",
    "❤",
    "🔥",
    "🥰",
    "👏",
    "😁",
    "🤔",
    "🤯",
    "😱",
    "🤬",
    "😢",
    "🎉",
    "🤩",
    "🤮",
    "💩",
    "🙏",
    "👌",
    "🕊",
    "🤡",
    "🥱",
    "🥴",
    "😍",
    "🐳",
    "❤\u{200d}🔥",
    "🌚",
    "🌭",
    "💯",
    "🤣",
    "⚡",
    "🍌",
    "🏆",
    "💔",
    "🤨",
    "😐",
    "🍓",
    "🍾",
    "💋",
    "🖕",
    "😈",
    "😴",
    "😭",
    "🤓",
    "👻",
    "👨\u{200d}💻",
    "👀",
    "🎃",
    "🙈",
    "😇",
    "😨",
    "🤝",
    "✍",
    "🤗",
    "🫡",
    "🎅",
    "🎄",
    "☃",
    "💅",
    "🤪",
    "🗿",
    "🆒",
    "💘",
    "🙉",
    "🦄",
    "😘",
    "💊",
    "🙊",
    "😎",
    "👾",
    "🤷\u{200d}♂",
    "🤷",
    "🤷\u{200d}♀",
    "😡",
];

/// `setMessageReaction`: the bot's reactions on a message become `reaction` (a
/// non-premium bot may set one; an empty list takes its reaction away).
fn set_message_reaction(shared: &Shared, params: &Map<String, Value>) -> Answer {
    let mut store = shared.store.lock().unwrap();
    let (chat_id, _) = chat_of(&store, params)?;
    let message_id = int(params, "message_id").ok_or_else(|| bad_request("message_id is empty"))?;
    if !store.messages.contains_key(&(chat_id, message_id)) {
        return Err(bad_request("MESSAGE_ID_INVALID"));
    }
    let reaction = match params.get("reaction") {
        Some(Value::String(text)) => {
            serde_json::from_str(text).map_err(|_| bad_request("can't parse reaction types"))?
        }
        Some(value) => value.clone(),
        None => json!([]),
    };
    let list = reaction.as_array().cloned().unwrap_or_default();
    if list.len() > 1 {
        return Err(bad_request("REACTIONS_TOO_MANY"));
    }
    let mut emoji = Vec::new();
    for item in list {
        match (item["type"].as_str(), item["emoji"].as_str()) {
            (Some("emoji"), Some(e)) if REACTION_EMOJI.contains(&e) => emoji.push(e.to_string()),
            _ => return Err(bad_request("REACTION_INVALID")),
        }
    }
    store.bot_reactions.insert((chat_id, message_id), emoji);
    Ok(json!(true))
}

/// `deleteMessage`: a bot deletes its own messages, and others' where it is an
/// administrator, for 48 hours.
fn delete_message(shared: &Shared, params: &Map<String, Value>) -> Answer {
    let mut store = shared.store.lock().unwrap();
    let (chat_id, _) = chat_of(&store, params)?;
    let message_id = int(params, "message_id").ok_or_else(|| bad_request("message identifier is not specified"))?;
    let Some(message) = store.messages.get(&(chat_id, message_id)) else {
        return Err(bad_request("message to delete not found"));
    };
    let own = message["from"]["id"].as_i64() == Some(shared.bot.id);
    let admin = matches!(store.member_status.get(&chat_id).map(String::as_str), Some("administrator" | "creator"));
    if store.too_old.contains(&(chat_id, message_id)) || !(own || admin) {
        return Err(bad_request("message can't be deleted"));
    }
    store.messages.remove(&(chat_id, message_id));
    store.deleted.push((chat_id, message_id));
    Ok(json!(true))
}

fn get_file(shared: &Shared, params: &Map<String, Value>) -> Answer {
    let id = params.get("file_id").and_then(Value::as_str).unwrap_or("");
    let store = shared.store.lock().unwrap();
    let file = store.files.get(id).ok_or_else(|| bad_request("invalid file_id"))?;
    Ok(json!({"file_id": id, "file_unique_id": file.unique_id, "file_size": file.bytes.len(), "file_path": file.path}))
}

fn get_chat(shared: &Shared, params: &Map<String, Value>) -> Answer {
    let store = shared.store.lock().unwrap();
    let id = int(params, "chat_id").ok_or_else(|| bad_request("chat_id is empty"))?;
    let mut chat = store.chats.get(&id).cloned().ok_or_else(|| bad_request("chat not found"))?;
    if store.garbled_chats.contains(&id) {
        chat.as_object_mut().unwrap().remove("type");
    }
    // ChatFullInfo (Bot API 9): always-present fields.
    chat["accent_color_id"] = json!(0);
    chat["max_reaction_count"] = json!(11);
    chat["accepted_gift_types"] =
        json!({"unlimited_gifts": false, "limited_gifts": false, "unique_gifts": false, "premium_subscription": false});
    Ok(chat)
}

fn get_chat_member(shared: &Shared, params: &Map<String, Value>) -> Answer {
    let store = shared.store.lock().unwrap();
    let chat = int(params, "chat_id").ok_or_else(|| bad_request("chat_id is empty"))?;
    if !store.chats.contains_key(&chat) {
        return Err(bad_request("chat not found"));
    }
    let user = int(params, "user_id").ok_or_else(|| bad_request("user_id is empty"))?;
    let user_json = if user == shared.bot.id {
        shared.bot.json()
    } else {
        store.users.get(&user).cloned().ok_or_else(|| bad_request("user not found"))?
    };
    let status = match user == shared.bot.id {
        true => store.member_status.get(&chat).cloned().unwrap_or_else(|| "member".into()),
        false => store.people_status.get(&(chat, user)).cloned().unwrap_or_else(|| "left".into()),
    };
    let mut member = json!({"status": status, "user": user_json});
    match status.as_str() {
        "creator" => member["is_anonymous"] = json!(false),
        "administrator" => {
            for right in [
                "can_be_edited",
                "is_anonymous",
                "can_manage_chat",
                "can_delete_messages",
                "can_manage_video_chats",
                "can_restrict_members",
                "can_promote_members",
                "can_change_info",
                "can_invite_users",
                "can_post_stories",
                "can_edit_stories",
                "can_delete_stories",
                "can_post_messages",
                "can_edit_messages",
                "can_pin_messages",
                "can_manage_topics",
            ] {
                member[right] = json!(right != "is_anonymous" && right != "can_be_edited");
            }
        }
        "kicked" => member["until_date"] = json!(0),
        _ => {}
    }
    Ok(member)
}

fn set_webhook(shared: &Shared, params: &Map<String, Value>) -> Answer {
    let url = params.get("url").and_then(Value::as_str).unwrap_or("").to_string();
    if url.is_empty() {
        shared.store.lock().unwrap().webhook = None;
        return Ok(json!(true));
    }
    let secret = params.get("secret_token").and_then(Value::as_str).map(Into::into);
    shared.store.lock().unwrap().webhook = Some((url, secret));
    Ok(json!(true))
}

// ---------------------------------------------------------------------------------------
// MarkdownV2, parsed as strictly as Telegram does

const RESERVED: &str = "_*[]()~`>#+-=|{}.!";

fn kind_name(marker: &str) -> &'static str {
    match marker {
        "*" => "bold",
        "_" => "italic",
        "__" => "underline",
        "~" => "strikethrough",
        "||" => "spoiler",
        "[" => "text_link",
        _ => "unknown",
    }
}

/// MarkdownV2 → (plain text, entities), or the reason Telegram would refuse it.
pub fn parse_markdown_v2(source: &str) -> Result<(String, Vec<Entity>), String> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::new();
    let mut units = 0usize;
    let mut open: Vec<(&'static str, usize)> = Vec::new();
    let mut entities = Vec::new();
    let mut quote_start: Option<usize> = None;
    let mut i = 0;
    let push = |out: &mut String, units: &mut usize, c: char| {
        out.push(c);
        *units += c.len_utf16();
    };
    while i < chars.len() {
        let c = chars[i];
        let at_line_start = i == 0 || chars[i - 1] == '\n';
        match c {
            '\\' => {
                let next = *chars.get(i + 1).ok_or("Character '\\' is reserved and must be escaped")?;
                if (next as u32) < 1 || (next as u32) > 126 {
                    return Err(format!("Character '{next}' can't be escaped"));
                }
                push(&mut out, &mut units, next);
                i += 2;
            }
            '\r' => i += 1,
            '`' if chars[i..].starts_with(&['`', '`', '`']) => {
                i += 3;
                let mut language = String::new();
                let line_end = chars[i..].iter().position(|&c| c == '\n');
                let close = find_chars(&chars, i, "```").ok_or("Can't find end of Pre entity")?;
                if let Some(end) = line_end.map(|e| e + i).filter(|&e| e < close) {
                    language = chars[i..end].iter().collect();
                    i = end + 1;
                }
                let start = units;
                while i < close {
                    let c = if chars[i] == '\\' && i + 1 < close {
                        i += 1;
                        chars[i]
                    } else {
                        chars[i]
                    };
                    push(&mut out, &mut units, c);
                    i += 1;
                }
                i = close + 3;
                let language = Some(language).filter(|l| !l.is_empty());
                entities.push(Entity { kind: "pre".into(), offset: start, length: units - start, language, url: None });
            }
            '`' => {
                i += 1;
                let start = units;
                loop {
                    let c = *chars.get(i).ok_or("Can't find end of Code entity")?;
                    if c == '`' {
                        break;
                    }
                    let c = if c == '\\' {
                        i += 1;
                        *chars.get(i).ok_or("Can't find end of Code entity")?
                    } else {
                        c
                    };
                    push(&mut out, &mut units, c);
                    i += 1;
                }
                i += 1;
                if units > start {
                    entities.push(Entity {
                        kind: "code".into(),
                        offset: start,
                        length: units - start,
                        language: None,
                        url: None,
                    });
                }
            }
            '>' if at_line_start => {
                if quote_start.is_none() {
                    quote_start = Some(units);
                }
                i += 1;
            }
            '*' | '_' | '~' | '|' => {
                let marker: &'static str = match c {
                    '_' if chars.get(i + 1) == Some(&'_') => "__",
                    '|' if chars.get(i + 1) == Some(&'|') => "||",
                    '|' => return Err("Character '|' is reserved and must be escaped with the preceding '\\'".into()),
                    '*' => "*",
                    '_' => "_",
                    _ => "~",
                };
                i += marker.len();
                match open.last() {
                    Some(&(m, start)) if m == marker => {
                        open.pop();
                        if units > start {
                            entities.push(Entity {
                                kind: kind_name(marker).into(),
                                offset: start,
                                length: units - start,
                                language: None,
                                url: None,
                            });
                        }
                    }
                    _ if open.iter().any(|(m, _)| *m == marker) => {
                        return Err(format!("Can't find end of {} entity", kind_name(marker)));
                    }
                    _ => open.push((marker, units)),
                }
            }
            '[' => {
                open.push(("[", units));
                i += 1;
            }
            ']' => {
                let Some(&("[", start)) = open.last() else {
                    return Err("Character ']' is reserved and must be escaped with the preceding '\\'".into());
                };
                if chars.get(i + 1) != Some(&'(') {
                    return Err("Can't find end of a URL".into());
                }
                open.pop();
                i += 2;
                let mut url = String::new();
                loop {
                    let c = *chars.get(i).ok_or("Can't find end of a URL")?;
                    i += 1;
                    match c {
                        ')' => break,
                        '\\' => {
                            url.push(*chars.get(i).ok_or("Can't find end of a URL")?);
                            i += 1;
                        }
                        c => url.push(c),
                    }
                }
                if units > start {
                    entities.push(Entity {
                        kind: "text_link".into(),
                        offset: start,
                        length: units - start,
                        language: None,
                        url: Some(url),
                    });
                }
            }
            '\n' => {
                if let Some(start) = quote_start
                    && chars.get(i + 1) != Some(&'>')
                {
                    entities.push(Entity {
                        kind: "blockquote".into(),
                        offset: start,
                        length: units - start,
                        language: None,
                        url: None,
                    });
                    quote_start = None;
                }
                push(&mut out, &mut units, c);
                i += 1;
            }
            c if RESERVED.contains(c) => {
                return Err(format!("Character '{c}' is reserved and must be escaped with the preceding '\\'"));
            }
            c => {
                push(&mut out, &mut units, c);
                i += 1;
            }
        }
    }
    if let Some((marker, _)) = open.last() {
        return Err(format!("Can't find end of {} entity", kind_name(marker)));
    }
    if let Some(start) = quote_start {
        entities.push(Entity {
            kind: "blockquote".into(),
            offset: start,
            length: units - start,
            language: None,
            url: None,
        });
    }
    entities.sort_by_key(|e| (e.offset, std::cmp::Reverse(e.length)));
    Ok((out, entities))
}

fn find_chars(chars: &[char], from: usize, needle: &str) -> Option<usize> {
    let needle: Vec<char> = needle.chars().collect();
    let mut i = from;
    while i + needle.len() <= chars.len() {
        if chars[i] == '\\' {
            i += 2;
            continue;
        }
        if chars[i..].starts_with(&needle) {
            return Some(i);
        }
        i += 1;
    }
    None
}
