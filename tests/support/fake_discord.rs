//! A fake Discord: the REST API v10 (the parts a bridge bot uses) and the gateway
//! WebSocket (`ws://`), with the payload shapes of the public API documentation, so that
//! serenity runs against it unchanged. People act through the test API
//! (`user_says`, `user_edits`, `user_deletes`, `start_thread`, `user_runs_link`); what the
//! bot posts is in `sent()`.
//!
//! Usable from adapter tests, end-to-end tests through a homeserver, and soak tests:
//! everything is in memory, every call is cheap, and waiting is done by polling.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub const GUILD: u64 = 900_000_000_000_000_001;
pub const BOT_USER: u64 = 900_000_000_000_000_100;
pub const APPLICATION: u64 = 900_000_000_000_000_200;
/// Permission bits (Discord's "Bitwise Permission Flags").
pub const VIEW_CHANNEL: u64 = 1 << 10;
pub const SEND_MESSAGES: u64 = 1 << 11;
pub const ADMINISTRATOR: u64 = 1 << 3;
pub const MANAGE_WEBHOOKS: u64 = 1 << 29;
/// What @everyone may do in a new server: see channels and write.
const EVERYONE_PERMISSIONS: u64 = VIEW_CHANNEL | SEND_MESSAGES;
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;
const HEARTBEAT_MS: u64 = 41_250;
/// Dispatches kept for RESUME replays.
const REPLAY_BUFFER: usize = 10_000;

/// A message the bot posted (as itself, through a webhook, or as an interaction answer).
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    pub id: u64,
    /// The channel it was posted to (for a thread: the thread).
    pub channel_id: u64,
    pub thread_id: Option<u64>,
    pub content: String,
    /// Webhook messages: the `username` / `avatar_url` they were executed with.
    pub username: Option<String>,
    pub avatar_url: Option<String>,
    pub webhook_id: Option<u64>,
    pub by_bot: bool,
    /// `message_reference.message_id` of a bot reply.
    pub reply_to: Option<u64>,
    /// `(file name, bytes)` of uploaded files.
    pub files: Vec<(String, Vec<u8>)>,
    pub allowed_mentions: Option<Value>,
    /// Interaction answers: ephemeral (flags 64) answers only the user sees.
    pub ephemeral: bool,
    pub interaction: Option<u64>,
    /// How often it was edited (PATCH).
    pub edits: u32,
    pub deleted: bool,
    pub at: Instant,
}

/// One REST request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub at: Instant,
}

#[derive(Clone)]
struct Channel {
    id: u64,
    guild: Option<u64>,
    name: String,
    kind: u8,
    parent: Option<u64>,
    /// Can the bot manage webhooks here?
    manage_webhooks: bool,
    /// `permission_overwrites` as Discord returns them.
    overwrites: Vec<Value>,
    history: BTreeMap<u64, Value>,
}

/// A server's roles, owner and members: what Discord computes people's permissions from.
#[derive(Clone, Default)]
struct Guild {
    owner: u64,
    /// Role id → (name, permission bits); the @everyone role has the guild's id.
    roles: BTreeMap<u64, (String, u64)>,
    /// Member → their role ids (without @everyone).
    members: HashMap<u64, Vec<u64>>,
}

#[derive(Clone)]
struct Webhook {
    id: u64,
    channel: u64,
    token: String,
    name: String,
    application: Option<u64>,
    creator: u64,
}

struct Interaction {
    id: u64,
    token: String,
    channel: u64,
    user: u64,
    acked_flags: Option<u64>,
    original: Option<u64>,
}

struct Gateway {
    /// The open connection's outbox.
    conn: Option<mpsc::UnboundedSender<WsMessage>>,
    session_id: String,
    seq: u64,
    buffer: Vec<(u64, Value)>,
    identifies: u32,
    resumes: u32,
    /// The gateway intents of the last IDENTIFY: events outside them are not sent.
    intents: u64,
}

struct World {
    token: String,
    last_id: u64,
    users: HashMap<u64, Value>,
    nicks: HashMap<u64, String>,
    channels: BTreeMap<u64, Channel>,
    guilds: HashMap<u64, Guild>,
    webhooks: Vec<Webhook>,
    sent: Vec<Sent>,
    /// `POST /channels/{id}/typing` calls: the channel and when.
    typing: Vec<(u64, Instant)>,
    log: Vec<Logged>,
    /// Failures injected into the next message sends: (status, retry_after seconds).
    failures: Vec<(u16, f64)>,
    files: HashMap<String, (Vec<u8>, String)>,
    commands: Value,
    interactions: Vec<Interaction>,
    dms: HashMap<u64, u64>,
    /// Reactions on messages, by (channel, message): the emoji (`name:id` for a custom
    /// one) and who reacted, in the order they were added.
    reactions: BTreeMap<(u64, u64), Vec<(String, u64)>>,
    /// Messages created with `enforce_nonce`, by nonce: a repeat gets the same message.
    nonces: HashMap<String, Value>,
    gateway: Gateway,
    api_url: String,
    gateway_url: String,
}

#[derive(Clone)]
pub struct FakeDiscord {
    world: Arc<Mutex<World>>,
    /// False while the gateway is "down" (`drop_gateway` .. `restore_gateway`).
    gateway_up: Arc<watch::Sender<bool>>,
    api_url: String,
}

/// A message a person is about to post (see [`FakeDiscord::user_says`]).
pub struct Say<'a> {
    fake: &'a FakeDiscord,
    channel: u64,
    user: u64,
    text: String,
    reply_to: Option<u64>,
    files: Vec<(String, String, Vec<u8>)>,
    mentions: Vec<u64>,
}

impl FakeDiscord {
    pub async fn start() -> FakeDiscord {
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}", api.local_addr().unwrap());
        let gateway_url = format!("ws://{}", ws.local_addr().unwrap());
        let mut users = HashMap::new();
        users.insert(BOT_USER, user_json(BOT_USER, "mosaic-bot", None, None, true));
        let world = World {
            token: "fake-bot-token.secret-part".into(),
            last_id: 0,
            users,
            nicks: HashMap::new(),
            channels: BTreeMap::new(),
            guilds: HashMap::new(),
            webhooks: Vec::new(),
            sent: Vec::new(),
            typing: Vec::new(),
            log: Vec::new(),
            failures: Vec::new(),
            files: HashMap::new(),
            commands: json!([]),
            interactions: Vec::new(),
            dms: HashMap::new(),
            reactions: BTreeMap::new(),
            nonces: HashMap::new(),
            gateway: Gateway {
                conn: None,
                session_id: String::new(),
                seq: 0,
                buffer: Vec::new(),
                identifies: 0,
                resumes: 0,
                intents: 0,
            },
            api_url: api_url.clone(),
            gateway_url,
        };
        let fake =
            FakeDiscord { world: Arc::new(Mutex::new(world)), gateway_up: Arc::new(watch::channel(true).0), api_url };
        let app = Router::new().fallback(rest).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(api, app).await.unwrap() });
        let gateway = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = ws.accept().await {
                tokio::spawn(gateway.clone().serve_socket(stream));
            }
        });
        fake
    }

    /// Base URL for `[discord] api_url` (REST under `/api/v10`, CDN files at the root).
    pub fn api_url(&self) -> String {
        self.api_url.clone()
    }

    pub fn token(&self) -> String {
        self.world().token.clone()
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    /// A text channel in `guild` the bot can see (and manage webhooks in).
    pub fn add_channel(&self, guild: u64, id: u64, name: &str) {
        let channel = Channel {
            id,
            guild: Some(guild),
            name: name.into(),
            kind: 0,
            parent: None,
            manage_webhooks: true,
            overwrites: Vec::new(),
            history: BTreeMap::new(),
        };
        let mut world = self.world();
        world.guilds.entry(guild).or_insert_with(|| Guild {
            // Nobody the tests create owns the server unless they say so.
            owner: 1,
            roles: BTreeMap::from([(guild, ("@everyone".to_string(), EVERYONE_PERMISSIONS))]),
            members: HashMap::new(),
        });
        world.channels.insert(id, channel);
    }

    /// A role of `guild` with these permission bits.
    pub fn add_role(&self, guild: u64, role: u64, name: &str, permissions: u64) {
        self.world()
            .guilds
            .get_mut(&guild)
            .expect("a channel of the guild first")
            .roles
            .insert(role, (name.into(), permissions));
    }

    /// `user` joins `guild` with these roles.
    pub fn add_member(&self, guild: u64, user: u64, roles: &[u64]) {
        self.world().guilds.get_mut(&guild).expect("a channel of the guild first").members.insert(user, roles.to_vec());
    }

    /// A permission overwrite on `channel` for a role (`member` false) or a member.
    pub fn add_overwrite(&self, channel: u64, target: u64, member: bool, allow: u64, deny: u64) {
        let overwrite = json!({"id": target.to_string(), "type": u8::from(member),
                               "allow": allow.to_string(), "deny": deny.to_string()});
        self.world().channels.get_mut(&channel).unwrap().overwrites.push(overwrite);
    }

    /// The bot lacks Manage Webhooks in `channel`.
    pub fn deny_webhooks(&self, channel: u64) {
        self.world().channels.get_mut(&channel).unwrap().manage_webhooks = false;
    }

    /// A person; `avatar` gives them an avatar (served on the fake CDN).
    pub fn add_user(&self, id: u64, username: &str, global_name: Option<&str>, avatar: bool) {
        let mut world = self.world();
        let hash = avatar.then(|| format!("{:032x}", id));
        if let Some(hash) = &hash {
            world.files.insert(format!("/avatars/{id}/{hash}.png"), (png_bytes(id), "image/png".into()));
        }
        world.users.insert(id, user_json(id, username, global_name, hash.as_deref(), false));
    }

    /// The person's nickname on the guild.
    pub fn set_nick(&self, user: u64, nick: &str) {
        self.world().nicks.insert(user, nick.into());
    }

    /// A person posts in `channel` (a channel or a thread); `.send()` posts it.
    pub fn user_says(&self, channel: u64, user: u64, text: &str) -> Say<'_> {
        Say { fake: self, channel, user, text: text.into(), reply_to: None, files: Vec::new(), mentions: Vec::new() }
    }

    /// A person types in `channel`: TYPING_START, as their client sends it every few
    /// seconds while they type.
    pub fn user_types(&self, channel: u64, user: u64) {
        let up = self.up();
        self.world().typing_start(channel, user, up);
    }

    /// A person edits their message.
    pub fn user_edits(&self, channel: u64, message: u64, text: &str) {
        let mut world = self.world();
        let edited = world.timestamp_now();
        let Some(msg) = world.channels.get_mut(&channel).and_then(|c| c.history.get_mut(&message)) else {
            panic!("no message {message} in {channel}")
        };
        msg["content"] = json!(text);
        msg["edited_timestamp"] = json!(edited);
        let mut event = msg.clone();
        world.with_guild_fields(&mut event, channel);
        world.dispatch("MESSAGE_UPDATE", event, self.up());
    }

    /// A person deletes their message.
    pub fn user_deletes(&self, channel: u64, message: u64) {
        let mut world = self.world();
        let guild = world.channels.get(&channel).and_then(|c| c.guild);
        world.channels.get_mut(&channel).unwrap().history.remove(&message);
        let event = json!({"id": message.to_string(), "channel_id": channel.to_string(), "guild_id": guild.map(|g| g.to_string())});
        world.dispatch("MESSAGE_DELETE", event, self.up());
    }

    /// A person reacts to a message of `channel` (a channel or a thread) with `emoji`: a
    /// Unicode emoji, or `name:id` for a custom one. Dispatched as MESSAGE_REACTION_ADD.
    pub fn user_reacts(&self, channel: u64, message: u64, user: u64, emoji: &str) {
        let up = self.up();
        let mut world = self.world();
        let list = world.reactions.entry((channel, message)).or_default();
        if list.iter().any(|(e, u)| e == emoji && *u == user) {
            return;
        }
        list.push((emoji.to_string(), user));
        let event = world.reaction_event(channel, message, user, emoji, true);
        world.dispatch("MESSAGE_REACTION_ADD", event, up);
    }

    /// A person takes their reaction back: MESSAGE_REACTION_REMOVE.
    pub fn user_unreacts(&self, channel: u64, message: u64, user: u64, emoji: &str) {
        let up = self.up();
        let mut world = self.world();
        if let Some(list) = world.reactions.get_mut(&(channel, message)) {
            list.retain(|(e, u)| !(e == emoji && *u == user));
        }
        let event = world.reaction_event(channel, message, user, emoji, false);
        world.dispatch("MESSAGE_REACTION_REMOVE", event, up);
    }

    /// A moderator takes every reaction off a message, the bot's too:
    /// MESSAGE_REACTION_REMOVE_ALL.
    pub fn reactions_cleared(&self, channel: u64, message: u64) {
        let up = self.up();
        let mut world = self.world();
        world.reactions.remove(&(channel, message));
        let mut event = json!({"channel_id": channel.to_string(), "message_id": message.to_string()});
        if let Some(guild) = world.channels.get(&channel).and_then(|c| c.guild) {
            event["guild_id"] = json!(guild.to_string());
        }
        world.dispatch("MESSAGE_REACTION_REMOVE_ALL", event, up);
    }

    /// The emoji the bot shows on a message now, in the order it added them.
    pub fn bot_reactions(&self, channel: u64, message: u64) -> Vec<String> {
        let world = self.world();
        let list = world.reactions.get(&(channel, message)).cloned().unwrap_or_default();
        list.into_iter().filter(|(_, user)| *user == BOT_USER).map(|(emoji, _)| emoji).collect()
    }

    /// Waits until the bot's reactions on a message satisfy `check`; returns them.
    pub async fn wait_for_bot_reactions(
        &self,
        channel: u64,
        message: u64,
        check: impl Fn(&[String]) -> bool,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.bot_reactions(channel, message);
            if check(&now) {
                return now;
            }
            assert!(Instant::now() < deadline, "the bot's reactions on {message} stayed {now:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A person starts a thread from `root` in `channel`; the thread id is the root's id.
    pub fn start_thread(&self, channel: u64, root: u64, name: &str) -> u64 {
        let mut world = self.world();
        let thread = world.create_thread(channel, root, name, 0);
        let payload = world.channel_json(thread);
        world.dispatch("THREAD_CREATE", payload, self.up());
        thread
    }

    /// A person runs `/link [token]` in `channel`; returns the interaction id.
    pub fn user_runs_link(&self, channel: u64, user: u64, token: Option<&str>) -> u64 {
        let mut world = self.world();
        let id = world.next_id();
        let interaction_token = format!("aW50ZXJhY3Rpb246{id}.interaction-secret");
        let guild = world.channels.get(&channel).and_then(|c| c.guild);
        let options: Vec<Value> = token.map(|t| json!({"name": "token", "type": 3, "value": t})).into_iter().collect();
        let user_obj = world.users[&user].clone();
        let nick = world.nicks.get(&user).cloned();
        let joined = world.timestamp_now();
        let mut payload = json!({
            "id": id.to_string(), "application_id": APPLICATION.to_string(), "type": 2,
            "data": {"id": "910000000000000001", "name": "link", "type": 1, "options": options},
            "channel_id": channel.to_string(),
            "channel": {"id": channel.to_string(), "type": 0},
            "token": interaction_token, "version": 1,
            "app_permissions": "2048", "locale": "en-US", "entitlements": [],
            "authorizing_integration_owners": {"0": guild.unwrap_or(0).to_string()},
            "context": if guild.is_some() { 0 } else { 1 },
            "attachment_size_limit": 10_485_760
        });
        match guild {
            Some(guild) => {
                payload["guild_id"] = json!(guild.to_string());
                payload["guild_locale"] = json!("en-US");
                payload["member"] = json!({
                    "user": user_obj, "nick": nick, "roles": [], "joined_at": joined, "deaf": false, "mute": false,
                    "flags": 0, "pending": false, "permissions": "2048"
                });
            }
            None => payload["user"] = user_obj,
        }
        world.interactions.push(Interaction {
            id,
            token: interaction_token,
            channel,
            user,
            acked_flags: None,
            original: None,
        });
        world.dispatch("INTERACTION_CREATE", payload, self.up());
        id
    }

    /// The flags of the interaction's acknowledgement (`None`: not acknowledged).
    pub fn interaction_ack(&self, interaction: u64) -> Option<u64> {
        self.world().interactions.iter().find(|i| i.id == interaction).and_then(|i| i.acked_flags)
    }

    /// Messages posted by the bot, its webhooks and as interaction answers, oldest first.
    pub fn sent(&self) -> Vec<Sent> {
        self.world().sent.clone()
    }

    /// Waits until a posted message matches.
    pub async fn wait_for_sent(&self, pred: impl Fn(&Sent) -> bool, timeout: Duration) -> Option<Sent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.world().sent.iter().find(|s| pred(s)) {
                return Some(found.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The next `n` message sends (bot messages, webhook executions, edits, the bot's
    /// reactions) fail with `status`; 429 answers carry `retry_after` (seconds).
    pub fn fail_next(&self, n: usize, status: u16, retry_after: f64) {
        self.world().failures.extend(std::iter::repeat_n((status, retry_after), n));
    }

    /// When the bot triggered typing in `channel` (`POST /channels/{id}/typing`).
    pub fn typing(&self, channel: u64) -> Vec<Instant> {
        self.world().typing.iter().filter(|(c, _)| *c == channel).map(|(_, at)| *at).collect()
    }

    /// The REST requests so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.world().log.clone()
    }

    /// The webhooks: `(id, channel, name, application id)`.
    pub fn webhooks(&self) -> Vec<(u64, u64, String, Option<u64>)> {
        self.world().webhooks.iter().map(|w| (w.id, w.channel, w.name.clone(), w.application)).collect()
    }

    /// A webhook someone else (not our application) made in `channel`.
    pub fn add_foreign_webhook(&self, channel: u64, name: &str) -> u64 {
        let mut world = self.world();
        let id = world.next_id();
        let webhook =
            Webhook { id, channel, token: format!("foreign-{id}"), name: name.into(), application: None, creator: 1 };
        world.webhooks.push(webhook);
        id
    }

    /// The channel's history as REST returns it, oldest first.
    pub fn history(&self, channel: u64) -> Vec<Value> {
        self.world().channels.get(&channel).map(|c| c.history.values().cloned().collect()).unwrap_or_default()
    }

    /// Global commands registered by the bot.
    pub fn commands(&self) -> Value {
        self.world().commands.clone()
    }

    /// The gateway goes away: the connection closes (code 4000) and new connections wait
    /// until [`FakeDiscord::restore_gateway`]. Messages posted meanwhile are only in the
    /// channels' history (the bot must catch up over REST).
    pub fn drop_gateway(&self) {
        self.gateway_up.send_replace(false);
        let conn = self.world().gateway.conn.take();
        if let Some(conn) = conn {
            let frame = CloseFrame { code: CloseCode::Library(4000), reason: "Unknown error".into() };
            let _ = conn.send(WsMessage::Close(Some(frame)));
        }
    }

    pub fn restore_gateway(&self) {
        self.gateway_up.send_replace(true);
    }

    /// `(IDENTIFY count, RESUME count)`.
    pub fn gateway_sessions(&self) -> (u32, u32) {
        let world = self.world();
        (world.gateway.identifies, world.gateway.resumes)
    }

    /// Whether a bot session is connected (READY or RESUMED sent).
    pub fn gateway_connected(&self) -> bool {
        self.world().gateway.conn.is_some()
    }

    pub async fn wait_gateway_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.gateway_connected() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    fn up(&self) -> bool {
        *self.gateway_up.borrow()
    }

    async fn serve_socket(self, stream: tokio::net::TcpStream) {
        let Ok(socket) = tokio_tungstenite::accept_async(stream).await else { return };
        let (mut sink, mut source) = socket.split();
        let mut up = self.gateway_up.subscribe();
        if up.wait_for(|u| *u).await.is_err() {
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<WsMessage>();
        let writer = tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                let close = matches!(message, WsMessage::Close(_));
                if sink.send(message).await.is_err() || close {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let hello = json!({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_MS}, "s": null, "t": null});
        let _ = tx.send(WsMessage::Text(hello.to_string()));
        while let Some(Ok(frame)) = source.next().await {
            let WsMessage::Text(text) = frame else {
                if matches!(frame, WsMessage::Close(_)) {
                    break;
                }
                continue;
            };
            let Ok(payload) = serde_json::from_str::<Value>(&text) else { break };
            if !self.gateway_op(&payload, &tx) {
                break;
            }
        }
        {
            let mut world = self.world();
            if world.gateway.conn.as_ref().is_some_and(|c| c.same_channel(&tx)) {
                world.gateway.conn = None;
            }
        }
        drop(tx);
        let _ = writer.await;
    }

    /// Handles one client payload; false closes the connection.
    fn gateway_op(&self, payload: &Value, tx: &mpsc::UnboundedSender<WsMessage>) -> bool {
        let mut world = self.world();
        match payload["op"].as_u64() {
            Some(1) => {
                let _ = tx.send(WsMessage::Text(json!({"op": 11, "d": null, "s": null, "t": null}).to_string()));
            }
            Some(2) => {
                let token = payload["d"]["token"].as_str().unwrap_or("");
                if token.trim_start_matches("Bot ") != world.token {
                    let frame = CloseFrame { code: CloseCode::Library(4004), reason: "Authentication failed.".into() };
                    let _ = tx.send(WsMessage::Close(Some(frame)));
                    return false;
                }
                world.gateway.identifies += 1;
                world.gateway.intents = payload["d"]["intents"].as_u64().unwrap_or(0);
                world.gateway.session_id = format!("session{}", world.gateway.identifies);
                world.gateway.seq = 0;
                world.gateway.buffer.clear();
                world.gateway.conn = Some(tx.clone());
                let ready = world.ready_json();
                world.dispatch("READY", ready, true);
            }
            Some(6) => {
                let d = &payload["d"];
                let known = d["session_id"].as_str() == Some(world.gateway.session_id.as_str());
                if !known || d["token"].as_str().map(|t| t.trim_start_matches("Bot ")) != Some(world.token.as_str()) {
                    let _ = tx.send(WsMessage::Text(json!({"op": 9, "d": false, "s": null, "t": null}).to_string()));
                    return true;
                }
                world.gateway.resumes += 1;
                world.gateway.conn = Some(tx.clone());
                let after = d["seq"].as_u64().unwrap_or(0);
                for (seq, event) in world.gateway.buffer.iter().filter(|(s, _)| *s > after) {
                    let mut event = event.clone();
                    event["s"] = json!(seq);
                    let _ = tx.send(WsMessage::Text(event.to_string()));
                }
                world.dispatch("RESUMED", json!({}), true);
            }
            _ => {}
        }
        true
    }
}

impl Say<'_> {
    pub fn reply_to(mut self, message: u64) -> Self {
        self.reply_to = Some(message);
        self
    }

    /// A file (served on the fake CDN as Discord serves attachments).
    pub fn attachment(mut self, name: &str, mime: &str, bytes: &[u8]) -> Self {
        self.files.push((name.into(), mime.into(), bytes.to_vec()));
        self
    }

    pub fn mentioning(mut self, user: u64) -> Self {
        self.mentions.push(user);
        self
    }

    /// Posts: stored in the channel's history and dispatched as MESSAGE_CREATE (unless
    /// the gateway is down). Returns the message id.
    pub fn send(self) -> u64 {
        let up = self.fake.up();
        let mut world = self.fake.world();
        let id = world.next_id();
        let author = world.users.get(&self.user).cloned().unwrap_or_else(|| panic!("unknown user {}", self.user));
        let mut msg = world.message_json(id, self.channel, author, &self.text);
        let attachments: Vec<Value> = self
            .files
            .into_iter()
            .enumerate()
            .map(|(n, (name, mime, bytes))| {
                let path = format!("/attachments/{}/{}/{name}", self.channel, id + n as u64);
                let size = bytes.len();
                world.files.insert(path.clone(), (bytes, mime.clone()));
                let url = format!("{}{path}?ex=65f0&is=65e0&hm=abc", world.api_url);
                json!({"id": (id + n as u64).to_string(), "filename": name, "size": size, "url": url,
                       "proxy_url": url, "content_type": mime})
            })
            .collect();
        msg["attachments"] = json!(attachments);
        msg["mentions"] = json!(self.mentions.iter().map(|u| world.users[u].clone()).collect::<Vec<_>>());
        if let Some(reply) = self.reply_to {
            let referenced = world.channels[&self.channel].history.get(&reply).cloned();
            msg["type"] = json!(19);
            msg["message_reference"] = json!({"type": 0, "message_id": reply.to_string(), "channel_id": self.channel.to_string(),
                "guild_id": world.channels[&self.channel].guild.map(|g| g.to_string())});
            msg["referenced_message"] = referenced.unwrap_or(Value::Null);
        }
        world.post(self.channel, msg, up);
        id
    }
}

impl World {
    fn next_id(&mut self) -> u64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let id = ((now - DISCORD_EPOCH_MS) << 22).max(self.last_id + 1);
        self.last_id = id;
        id
    }

    fn timestamp_now(&self) -> String {
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
    }

    fn message_json(&self, id: u64, channel: u64, author: Value, content: &str) -> Value {
        json!({
            "id": id.to_string(), "channel_id": channel.to_string(), "author": author, "content": content,
            "timestamp": self.timestamp_now(), "edited_timestamp": null, "tts": false, "mention_everyone": false,
            "mentions": [], "mention_roles": [], "attachments": [], "embeds": [], "pinned": false,
            "type": 0, "flags": 0, "components": []
        })
    }

    /// Gateway copies of a guild message carry `guild_id` and the author's `member`.
    fn with_guild_fields(&self, event: &mut Value, channel: u64) {
        let Some(guild) = self.channels.get(&channel).and_then(|c| c.guild) else { return };
        event["guild_id"] = json!(guild.to_string());
        let author: u64 = event["author"]["id"].as_str().and_then(|a| a.parse().ok()).unwrap_or(0);
        if event.get("webhook_id").is_none_or(Value::is_null) {
            event["member"] = json!({"nick": self.nicks.get(&author), "roles": [], "joined_at": "2024-01-01T00:00:00.000000+00:00",
                "deaf": false, "mute": false, "flags": 0});
        }
    }

    /// Stores a message in its channel and dispatches MESSAGE_CREATE.
    fn post(&mut self, channel: u64, msg: Value, up: bool) {
        let id: u64 = msg["id"].as_str().unwrap().parse().unwrap();
        self.channels
            .get_mut(&channel)
            .unwrap_or_else(|| panic!("unknown channel {channel}"))
            .history
            .insert(id, msg.clone());
        let mut event = msg;
        self.with_guild_fields(&mut event, channel);
        self.dispatch("MESSAGE_CREATE", event, up);
    }

    /// Dispatches TYPING_START for `user` in `channel`, to a client that asked for typing
    /// with its intents (GUILD_MESSAGE_TYPING in a server, DIRECT_MESSAGE_TYPING in a DM).
    fn typing_start(&mut self, channel: u64, user: u64, up: bool) {
        const GUILD_MESSAGE_TYPING: u64 = 1 << 11;
        const DIRECT_MESSAGE_TYPING: u64 = 1 << 14;
        let guild = self.channels.get(&channel).and_then(|c| c.guild);
        let intent = if guild.is_some() { GUILD_MESSAGE_TYPING } else { DIRECT_MESSAGE_TYPING };
        if self.gateway.intents & intent == 0 {
            return;
        }
        let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let mut event = json!({"channel_id": channel.to_string(), "user_id": user.to_string(), "timestamp": timestamp});
        if let Some(guild) = guild {
            event["guild_id"] = json!(guild.to_string());
            event["member"] = json!({"user": self.users.get(&user), "nick": self.nicks.get(&user), "roles": [],
                "joined_at": "2024-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0});
        }
        self.dispatch("TYPING_START", event, up);
    }

    /// Marks a message taken away through REST and dispatches MESSAGE_DELETE, as Discord
    /// does for every deletion.
    fn deleted(&mut self, channel: u64, message: u64, up: bool) {
        if let Some(s) = self.sent.iter_mut().find(|s| s.id == message) {
            s.deleted = true;
        }
        let guild = self.channels.get(&channel).and_then(|c| c.guild);
        let event = json!({"id": message.to_string(), "channel_id": channel.to_string(), "guild_id": guild.map(|g| g.to_string())});
        self.dispatch("MESSAGE_DELETE", event, up);
    }

    /// Sends a dispatch on the open connection and keeps it for RESUME replays. While the
    /// gateway is down (`up` false) nothing is dispatched at all.
    fn dispatch(&mut self, name: &str, data: Value, up: bool) {
        if !up {
            return;
        }
        self.gateway.seq += 1;
        let seq = self.gateway.seq;
        let event = json!({"op": 0, "t": name, "s": seq, "d": data});
        if !matches!(name, "READY" | "RESUMED") {
            self.gateway.buffer.push((seq, event.clone()));
            if self.gateway.buffer.len() > REPLAY_BUFFER {
                self.gateway.buffer.remove(0);
            }
        }
        if let Some(conn) = &self.gateway.conn
            && conn.send(WsMessage::Text(event.to_string())).is_err()
        {
            self.gateway.conn = None;
        }
    }

    /// A MESSAGE_REACTION_ADD / _REMOVE payload as the gateway sends it (only an add
    /// carries the member and the message's author).
    fn reaction_event(&self, channel: u64, message: u64, user: u64, emoji: &str, add: bool) -> Value {
        let emoji_json = match emoji.split_once(':') {
            Some((name, id)) => json!({"id": id, "name": name, "animated": false}),
            None => json!({"id": null, "name": emoji}),
        };
        let mut event = json!({
            "user_id": user.to_string(), "channel_id": channel.to_string(), "message_id": message.to_string(),
            "emoji": emoji_json, "burst": false, "type": 0
        });
        let guild = self.channels.get(&channel).and_then(|c| c.guild);
        if let Some(guild) = guild {
            event["guild_id"] = json!(guild.to_string());
        }
        if add {
            let author =
                self.channels.get(&channel).and_then(|c| c.history.get(&message)).map(|m| m["author"]["id"].clone());
            event["message_author_id"] = author.unwrap_or(Value::Null);
            event["burst_colors"] = json!([]);
            if guild.is_some() {
                let user_obj =
                    self.users.get(&user).cloned().unwrap_or_else(|| user_json(user, "someone", None, None, false));
                event["member"] = json!({"user": user_obj, "nick": self.nicks.get(&user), "roles": [],
                    "joined_at": "2024-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0});
            }
        }
        event
    }

    fn ready_json(&self) -> Value {
        let guilds: HashSet<u64> = self.channels.values().filter_map(|c| c.guild).collect();
        json!({
            "v": 10, "user": self.users[&BOT_USER].clone(),
            "guilds": guilds.iter().map(|g| json!({"id": g.to_string(), "unavailable": true})).collect::<Vec<_>>(),
            "session_id": self.gateway.session_id, "resume_gateway_url": self.gateway_url,
            "shard": [0, 1], "application": {"id": APPLICATION.to_string(), "flags": 8_953_856}
        })
    }

    fn channel_json(&self, id: u64) -> Value {
        let c = &self.channels[&id];
        let mut v = json!({
            "id": c.id.to_string(), "type": c.kind, "name": c.name, "position": 0, "permission_overwrites": c.overwrites,
            "nsfw": false, "topic": null, "rate_limit_per_user": 0, "flags": 0,
            "last_message_id": c.history.keys().next_back().map(|m| m.to_string()),
            "parent_id": c.parent.map(|p| p.to_string())
        });
        if let Some(guild) = c.guild {
            v["guild_id"] = json!(guild.to_string());
        }
        if matches!(c.kind, 10..=12) {
            v["thread_metadata"] = json!({"archived": false, "auto_archive_duration": 1440, "locked": false,
                "archive_timestamp": self.timestamp_now()});
            v["owner_id"] = json!(BOT_USER.to_string());
            v["message_count"] = json!(0);
            v["member_count"] = json!(1);
        }
        v
    }

    /// A guild object (`GET /guilds/{id}`) with its roles.
    fn guild_json(&self, id: u64) -> Value {
        let g = &self.guilds[&id];
        let roles: Vec<Value> = g
            .roles
            .iter()
            .enumerate()
            .map(|(position, (role, (name, permissions)))| {
                json!({"id": role.to_string(), "name": name, "color": 0,
                       "colors": {"primary_color": 0, "secondary_color": null, "tertiary_color": null},
                       "hoist": false, "icon": null, "unicode_emoji": null, "position": position,
                       "permissions": permissions.to_string(), "managed": false, "mentionable": false, "flags": 0})
            })
            .collect();
        json!({
            "id": id.to_string(), "name": format!("Server {id}"), "icon": null, "icon_hash": null, "splash": null,
            "discovery_splash": null, "owner_id": g.owner.to_string(), "afk_channel_id": null, "afk_timeout": 300,
            "widget_enabled": false, "widget_channel_id": null, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "roles": roles, "emojis": [],
            "features": [], "mfa_level": 0, "application_id": null, "system_channel_id": null,
            "system_channel_flags": 0, "rules_channel_id": null, "max_presences": null, "max_members": 500000,
            "vanity_url_code": null, "description": null, "banner": null, "premium_tier": 0,
            "premium_subscription_count": 0, "preferred_locale": "en-US", "public_updates_channel_id": null,
            "max_video_channel_users": 25, "max_stage_video_channel_users": 50, "nsfw_level": 0, "stickers": [],
            "premium_progress_bar_enabled": false, "safety_alerts_channel_id": null
        })
    }

    /// A guild member object (`GET /guilds/{id}/members/{user}`).
    fn member_json(&self, guild: u64, user: u64) -> Option<Value> {
        let roles = self.guilds.get(&guild)?.members.get(&user)?;
        Some(json!({
            "user": self.users.get(&user).cloned().unwrap_or_else(|| user_json(user, "someone", None, None, false)),
            "nick": self.nicks.get(&user), "avatar": null, "banner": null,
            "roles": roles.iter().map(u64::to_string).collect::<Vec<_>>(),
            "joined_at": self.timestamp_now(), "premium_since": null, "deaf": false, "mute": false, "flags": 0,
            "pending": false, "communication_disabled_until": null
        }))
    }

    /// A public thread started from `root` (Discord gives it the root message's id).
    fn create_thread(&mut self, channel: u64, root: u64, name: &str, _by: u64) -> u64 {
        let parent = self.channels[&channel].clone();
        let thread = Channel {
            id: root,
            guild: parent.guild,
            name: name.into(),
            kind: 11,
            parent: Some(channel),
            manage_webhooks: parent.manage_webhooks,
            overwrites: Vec::new(),
            history: BTreeMap::new(),
        };
        self.channels.insert(root, thread);
        let thread_json = self.channel_json(root);
        if let Some(msg) = self.channels.get_mut(&channel).and_then(|c| c.history.get_mut(&root)) {
            msg["thread"] = thread_json;
        }
        root
    }

    fn take_failure(&mut self) -> Option<(u16, f64)> {
        if self.failures.is_empty() { None } else { Some(self.failures.remove(0)) }
    }
}

fn user_json(id: u64, username: &str, global_name: Option<&str>, avatar: Option<&str>, bot: bool) -> Value {
    json!({"id": id.to_string(), "username": username, "discriminator": "0", "global_name": global_name,
           "avatar": avatar, "bot": bot, "public_flags": 0})
}

/// Some bytes standing in for a PNG (the adapter does not decode images).
fn png_bytes(seed: u64) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&seed.to_be_bytes());
    bytes
}

fn error(status: u16, code: u64, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (status, axum::Json(json!({"message": message, "code": code}))).into_response()
}

fn ok(value: Value) -> Response {
    axum::Json(value).into_response()
}

fn rate_limited(retry_after: f64) -> Response {
    let body = json!({"message": "You are being rate limited.", "retry_after": retry_after, "global": false});
    Response::builder()
        .status(429)
        .header("content-type", "application/json")
        .header("retry-after", format!("{}", retry_after.ceil() as u64))
        .header("x-ratelimit-scope", "user")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A request body: JSON, or multipart with `payload_json` and `files[n]`.
struct Body2 {
    json: Value,
    files: Vec<(String, Vec<u8>)>,
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> Body2 {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(boundary) = content_type.split("boundary=").nth(1) else {
        return Body2 { json: serde_json::from_slice(body).unwrap_or(Value::Null), files: Vec::new() };
    };
    let delimiter = format!("--{}", boundary.trim_matches('"'));
    let mut json = Value::Null;
    let mut files = Vec::new();
    for part in split_bytes(body, delimiter.as_bytes()) {
        let Some(split) = find(part, b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&part[..split]).to_string();
        let mut data = &part[split + 4..];
        if data.ends_with(b"\r\n") {
            data = &data[..data.len() - 2];
        }
        let field =
            |key: &str| head.split(&format!("{key}=\"")).nth(1).and_then(|r| r.split('"').next()).map(String::from);
        match (field("name"), field("filename")) {
            (Some(name), _) if name == "payload_json" => json = serde_json::from_slice(data).unwrap_or(Value::Null),
            (Some(_), Some(filename)) => files.push((filename, data.to_vec())),
            _ => {}
        }
    }
    Body2 { json, files }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split_bytes<'a>(mut data: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    while let Some(at) = find(data, delimiter) {
        parts.push(&data[..at]);
        data = &data[at + delimiter.len()..];
    }
    parts.into_iter().skip(1).collect()
}

async fn rest(
    axum::extract::State(fake): axum::extract::State<FakeDiscord>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let response = route(&fake, &method, &uri, &headers, &body);
    fake.world().log.push(Logged {
        method: method.to_string(),
        path,
        status: response.status().as_u16(),
        at: Instant::now(),
    });
    response
}

fn route(fake: &FakeDiscord, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Response {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let mut world = fake.world();
    // The CDN: avatars and attachments, no authorization.
    if matches!(segments.first(), Some(&"avatars" | &"attachments")) {
        return match world.files.get(uri.path()) {
            Some((bytes, mime)) => ([("content-type", mime.clone())], bytes.clone()).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let ["api", "v10", rest @ ..] = segments.as_slice() else { return error(404, 0, "404: Not Found") };
    let public = matches!(rest, ["webhooks", ..] | ["interactions", ..]);
    let authorized =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bot {}", world.token));
    if !public && !authorized {
        return error(401, 0, "401: Unauthorized");
    }
    let up = fake.up();
    let is_send = matches!(
        (method, rest),
        (&Method::POST, ["channels", _, "messages"])
            | (&Method::PATCH, ["channels", _, "messages", _])
            | (&Method::POST, ["webhooks", _, _])
            | (&Method::PATCH, ["webhooks", _, _, "messages", _])
            | (&Method::PUT | &Method::DELETE, ["channels", _, "messages", _, "reactions", _, "@me"])
    );
    if is_send && let Some((status, retry_after)) = world.take_failure() {
        return if status == 429 { rate_limited(retry_after) } else { error(status, 0, "injected failure") };
    }
    let q = query(uri);
    match (method.clone(), rest) {
        (Method::GET, ["gateway"]) => ok(json!({"url": world.gateway_url})),
        (Method::GET, ["gateway", "bot"]) => ok(json!({"url": world.gateway_url, "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}})),
        (Method::GET, ["users", "@me"]) => ok(world.users[&BOT_USER].clone()),
        (Method::GET, ["oauth2", "applications", "@me"]) => ok(json!({
            "id": APPLICATION.to_string(), "name": "Mosaic", "icon": null, "description": "", "bot_public": true,
            "bot_require_code_grant": false, "verify_key": "00", "flags": 8_953_856, "team": null,
            "owner": world.users[&BOT_USER].clone(), "bot": world.users[&BOT_USER].clone()})),
        (Method::POST, ["users", "@me", "channels"]) => {
            let b = parse_body(headers, body);
            let user = id(b.json["recipient_id"].as_str().unwrap_or("0"));
            let dm = match world.dms.get(&user) {
                Some(dm) => *dm,
                None => {
                    let dm = world.next_id();
                    let channel = Channel {
                        id: dm,
                        guild: None,
                        name: String::new(),
                        kind: 1,
                        parent: None,
                        manage_webhooks: false,
                        overwrites: Vec::new(),
                        history: BTreeMap::new(),
                    };
                    world.channels.insert(dm, channel);
                    world.dms.insert(user, dm);
                    dm
                }
            };
            ok(json!({"id": dm.to_string(), "type": 1, "last_message_id": null, "flags": 0,
                      "recipients": [world.users.get(&user).cloned().unwrap_or(Value::Null)]}))
        }
        (Method::GET, ["guilds", guild]) => match world.guilds.contains_key(&id(guild)) {
            true => ok(world.guild_json(id(guild))),
            false => error(404, 10004, "Unknown Guild"),
        },
        (Method::GET, ["guilds", guild, "members", user]) => match world.member_json(id(guild), id(user)) {
            Some(member) => ok(member),
            None if world.guilds.contains_key(&id(guild)) => error(404, 10007, "Unknown Member"),
            None => error(404, 10004, "Unknown Guild"),
        },
        (Method::GET, ["channels", channel]) => match world.channels.get(&id(channel)) {
            Some(_) => ok(world.channel_json(id(channel))),
            None => error(404, 10003, "Unknown Channel"),
        },
        (Method::GET, ["channels", channel, "messages"]) => {
            let Some(c) = world.channels.get(&id(channel)) else { return error(404, 10003, "Unknown Channel") };
            let after = q.get("after").map_or(0, |a| id(a));
            let limit = q.get("limit").map_or(50, |l| id(l).clamp(1, 100)) as usize;
            // Discord answers newest first.
            let mut page: Vec<Value> = c.history.range(after + 1..).take(limit).map(|(_, m)| m.clone()).collect();
            page.reverse();
            ok(json!(page))
        }
        (Method::GET, ["channels", channel, "messages", message]) => {
            match world.channels.get(&id(channel)).and_then(|c| c.history.get(&id(message))) {
                Some(m) => ok(m.clone()),
                None => error(404, 10008, "Unknown Message"),
            }
        }
        // Trigger Typing Indicator: no body, 204; the bot shows typing for ~10 s.
        (Method::POST, ["channels", channel, "typing"]) => {
            let channel = id(channel);
            if !world.channels.contains_key(&channel) {
                return error(404, 10003, "Unknown Channel");
            }
            world.typing.push((channel, Instant::now()));
            // Discord tells every client, the bot's own included, that the bot types.
            world.typing_start(channel, BOT_USER, up);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, ["channels", channel, "messages"]) => {
            let channel = id(channel);
            if !world.channels.contains_key(&channel) {
                return error(404, 10003, "Unknown Channel");
            }
            let b = parse_body(headers, body);
            let nonce = b.json["nonce"].as_str().filter(|_| b.json["enforce_nonce"] == true).map(str::to_string);
            if let Some(earlier) = nonce.as_ref().and_then(|n| world.nonces.get(n)) {
                return ok(earlier.clone());
            }
            let message = world.next_id();
            let mut msg = world.message_json(
                message,
                channel,
                world.users[&BOT_USER].clone(),
                b.json["content"].as_str().unwrap_or(""),
            );
            let reply = b.json["message_reference"]["message_id"].as_str().map(id);
            if let Some(reply) = reply {
                msg["type"] = json!(19);
                msg["message_reference"] =
                    json!({"type": 0, "message_id": reply.to_string(), "channel_id": channel.to_string()});
            }
            attach_files(&mut world, &mut msg, channel, message, &b.files);
            let parent = world.channels[&channel].parent;
            world.sent.push(Sent {
                id: message,
                channel_id: channel,
                thread_id: parent.map(|_| channel),
                content: msg["content"].as_str().unwrap().into(),
                username: None,
                avatar_url: None,
                webhook_id: None,
                by_bot: true,
                reply_to: reply,
                files: b.files.clone(),
                allowed_mentions: b.json.get("allowed_mentions").cloned(),
                ephemeral: false,
                interaction: None,
                edits: 0,
                deleted: false,
                at: Instant::now(),
            });
            if let Some(nonce) = nonce {
                world.nonces.insert(nonce, msg.clone());
            }
            world.post(channel, msg.clone(), up);
            ok(msg)
        }
        (Method::PATCH, ["channels", channel, "messages", message]) => {
            let (channel, message) = (id(channel), id(message));
            let b = parse_body(headers, body);
            let edited = world.timestamp_now();
            let Some(msg) = world.channels.get_mut(&channel).and_then(|c| c.history.get_mut(&message)) else {
                return error(404, 10008, "Unknown Message");
            };
            if msg["author"]["id"].as_str() != Some(&BOT_USER.to_string()) {
                return error(403, 50005, "Cannot edit a message authored by another user");
            }
            msg["content"] = b.json["content"].clone();
            msg["edited_timestamp"] = json!(edited);
            let msg = msg.clone();
            edit_sent(&mut world, message, &msg);
            let mut event = msg.clone();
            world.with_guild_fields(&mut event, channel);
            world.dispatch("MESSAGE_UPDATE", event, up);
            ok(msg)
        }
        (Method::DELETE, ["channels", channel, "messages", message]) => {
            let (channel, message) = (id(channel), id(message));
            if world.channels.get_mut(&channel).and_then(|c| c.history.remove(&message)).is_none() {
                return error(404, 10008, "Unknown Message");
            }
            world.deleted(channel, message, up);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, ["channels", channel, "messages", message, "threads"]) => {
            let (channel, root) = (id(channel), id(message));
            if world.channels.get(&channel).and_then(|c| c.history.get(&root)).is_none() {
                return error(404, 10008, "Unknown Message");
            }
            if world.channels.contains_key(&root) {
                return error(400, 160004, "A thread has already been created for this message");
            }
            let b = parse_body(headers, body);
            let thread = world.create_thread(channel, root, b.json["name"].as_str().unwrap_or("thread"), BOT_USER);
            let payload = world.channel_json(thread);
            let mut event = payload.clone();
            event["newly_created"] = json!(true);
            world.dispatch("THREAD_CREATE", event, up);
            (StatusCode::CREATED, axum::Json(payload)).into_response()
        }
        // Create / Delete Own Reaction: the emoji is URL-encoded in the path (`name:id` for
        // a custom emoji); 204 on success.
        (
            method @ (Method::PUT | Method::DELETE),
            ["channels", channel, "messages", message, "reactions", emoji, "@me"],
        ) => {
            let (channel, message) = (id(channel), id(message));
            let emoji: String = url::form_urlencoded::parse(format!("e={emoji}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            if !world.channels.contains_key(&channel) {
                return error(404, 10003, "Unknown Channel");
            }
            if world.channels.get(&channel).and_then(|c| c.history.get(&message)).is_none() {
                return error(404, 10008, "Unknown Message");
            }
            // Custom emoji of another server, and text that is no emoji, are unknown.
            if emoji.is_empty() || emoji.contains(':') || emoji.chars().any(|c| c.is_ascii()) {
                return error(400, 10014, "Unknown Emoji");
            }
            let list = world.reactions.entry((channel, message)).or_default();
            let had = list.iter().any(|(e, u)| *e == emoji && *u == BOT_USER);
            match method {
                Method::PUT if !had => {
                    list.push((emoji.clone(), BOT_USER));
                    let event = world.reaction_event(channel, message, BOT_USER, &emoji, true);
                    world.dispatch("MESSAGE_REACTION_ADD", event, up);
                }
                Method::DELETE if had => {
                    list.retain(|(e, u)| !(*e == emoji && *u == BOT_USER));
                    let event = world.reaction_event(channel, message, BOT_USER, &emoji, false);
                    world.dispatch("MESSAGE_REACTION_REMOVE", event, up);
                }
                _ => {}
            }
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, ["channels", channel, "webhooks"]) => {
            let channel = id(channel);
            match world.channels.get(&channel) {
                None => error(404, 10003, "Unknown Channel"),
                Some(c) if !c.manage_webhooks => error(403, 50013, "Missing Permissions"),
                Some(_) => {
                    let hooks: Vec<Value> = world
                        .webhooks
                        .iter()
                        .filter(|w| w.channel == channel)
                        .map(|w| webhook_json(&world, w))
                        .collect();
                    ok(json!(hooks))
                }
            }
        }
        (Method::POST, ["channels", channel, "webhooks"]) => {
            let channel = id(channel);
            match world.channels.get(&channel) {
                None => error(404, 10003, "Unknown Channel"),
                Some(c) if !c.manage_webhooks => error(403, 50013, "Missing Permissions"),
                Some(_) => {
                    let b = parse_body(headers, body);
                    let hook = world.next_id();
                    let webhook = Webhook {
                        id: hook,
                        channel,
                        token: format!("whtoken-{hook}-secret"),
                        name: b.json["name"].as_str().unwrap_or("webhook").into(),
                        application: Some(APPLICATION),
                        creator: BOT_USER,
                    };
                    let json = webhook_json(&world, &webhook);
                    world.webhooks.push(webhook);
                    ok(json)
                }
            }
        }
        (Method::POST, ["webhooks", hook, token]) => {
            let (hook, token) = (id(hook), token.to_string());
            if hook == APPLICATION {
                return followup(&mut world, &token, headers, body);
            }
            let Some(webhook) = world.webhooks.iter().find(|w| w.id == hook && w.token == token).cloned() else {
                return error(404, 10015, "Unknown Webhook");
            };
            let thread = q.get("thread_id").map(|t| id(t));
            let target = thread.unwrap_or(webhook.channel);
            if world.channels.get(&target).is_none_or(|c| c.id != webhook.channel && c.parent != Some(webhook.channel))
            {
                return error(400, 220001, "Webhooks can only post to threads of their channel");
            }
            let b = parse_body(headers, body);
            let message = world.next_id();
            let username = b.json["username"].as_str().map(String::from);
            let avatar_url = b.json["avatar_url"].as_str().map(String::from);
            let author = json!({"id": hook.to_string(), "username": username.clone().unwrap_or(webhook.name.clone()),
                "discriminator": "0000", "avatar": null, "bot": true, "global_name": null});
            let mut msg = world.message_json(message, target, author, b.json["content"].as_str().unwrap_or(""));
            msg["webhook_id"] = json!(hook.to_string());
            if let Some(app) = webhook.application {
                msg["application_id"] = json!(app.to_string());
            }
            attach_files(&mut world, &mut msg, target, message, &b.files);
            world.sent.push(Sent {
                id: message,
                channel_id: target,
                thread_id: thread,
                content: msg["content"].as_str().unwrap().into(),
                username,
                avatar_url,
                webhook_id: Some(hook),
                by_bot: false,
                reply_to: None,
                files: b.files.clone(),
                allowed_mentions: b.json.get("allowed_mentions").cloned(),
                ephemeral: false,
                interaction: None,
                edits: 0,
                deleted: false,
                at: Instant::now(),
            });
            world.post(target, msg.clone(), up);
            if q.get("wait").map(String::as_str) == Some("true") {
                ok(msg)
            } else {
                StatusCode::NO_CONTENT.into_response()
            }
        }
        // Delete Webhook Message: only the webhook's own messages, in its channel or (with
        // `thread_id`) a thread of it.
        (Method::DELETE, ["webhooks", hook, token, "messages", message]) => {
            let (hook, token, message) = (id(hook), token.to_string(), id(message));
            let Some(webhook) = world.webhooks.iter().find(|w| w.id == hook && w.token == token).cloned() else {
                return error(404, 10015, "Unknown Webhook");
            };
            let target = q.get("thread_id").map(|t| id(t)).unwrap_or(webhook.channel);
            let Some(msg) = world.channels.get(&target).and_then(|c| c.history.get(&message)) else {
                return error(404, 10008, "Unknown Message");
            };
            if msg["webhook_id"].as_str() != Some(&hook.to_string()) {
                return error(404, 10008, "Unknown Message");
            }
            world.channels.get_mut(&target).unwrap().history.remove(&message);
            world.deleted(target, message, up);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::PATCH, ["webhooks", hook, token, "messages", message]) => {
            let (hook, token, message) = (id(hook), token.to_string(), *message);
            if hook == APPLICATION {
                return interaction_original(&mut world, &token, message, headers, body);
            }
            let Some(webhook) = world.webhooks.iter().find(|w| w.id == hook && w.token == token).cloned() else {
                return error(404, 10015, "Unknown Webhook");
            };
            let target = q.get("thread_id").map(|t| id(t)).unwrap_or(webhook.channel);
            let message = id(message);
            let b = parse_body(headers, body);
            let edited = world.timestamp_now();
            let Some(msg) = world.channels.get_mut(&target).and_then(|c| c.history.get_mut(&message)) else {
                return error(404, 10008, "Unknown Message");
            };
            if msg["webhook_id"].as_str() != Some(&hook.to_string()) {
                return error(404, 10008, "Unknown Message");
            }
            msg["content"] = b.json["content"].clone();
            msg["edited_timestamp"] = json!(edited);
            let msg = msg.clone();
            edit_sent(&mut world, message, &msg);
            let mut event = msg.clone();
            world.with_guild_fields(&mut event, target);
            world.dispatch("MESSAGE_UPDATE", event, up);
            ok(msg)
        }
        (Method::PUT, ["applications", app, "commands"]) if id(app) == APPLICATION => {
            let b = parse_body(headers, body);
            let mut commands = b.json.as_array().cloned().unwrap_or_default();
            for (n, command) in commands.iter_mut().enumerate() {
                command["id"] = json!((910_000_000_000_000_001u64 + n as u64).to_string());
                command["application_id"] = json!(APPLICATION.to_string());
                command["version"] = json!("1");
                command["default_member_permissions"] = Value::Null;
            }
            world.commands = json!(commands);
            ok(world.commands.clone())
        }
        (Method::POST, ["interactions", interaction, token, "callback"]) => {
            let b = parse_body(headers, body);
            let Some(i) = world.interactions.iter_mut().find(|i| i.id == id(interaction) && i.token == *token) else {
                return error(404, 10062, "Unknown interaction");
            };
            if i.acked_flags.is_some() {
                return error(400, 40060, "Interaction has already been acknowledged.");
            }
            i.acked_flags = Some(b.json["data"]["flags"].as_u64().unwrap_or(0));
            StatusCode::NO_CONTENT.into_response()
        }
        _ => error(404, 0, "404: Not Found"),
    }
}

fn id(text: &str) -> u64 {
    text.parse().unwrap_or(0)
}

fn webhook_json(world: &World, w: &Webhook) -> Value {
    json!({"id": w.id.to_string(), "type": 1, "channel_id": w.channel.to_string(),
           "guild_id": world.channels.get(&w.channel).and_then(|c| c.guild).map(|g| g.to_string()),
           "name": w.name, "avatar": null, "token": w.token,
           "application_id": w.application.map(|a| a.to_string()),
           "user": world.users.get(&w.creator).cloned().unwrap_or(json!({"id": w.creator.to_string(), "username": "someone"}))})
}

fn attach_files(world: &mut World, msg: &mut Value, channel: u64, message: u64, files: &[(String, Vec<u8>)]) {
    let attachments: Vec<Value> = files
        .iter()
        .enumerate()
        .map(|(n, (name, bytes))| {
            let path = format!("/attachments/{channel}/{}/{name}", message + n as u64);
            world.files.insert(path.clone(), (bytes.clone(), "application/octet-stream".into()));
            json!({"id": (message + n as u64).to_string(), "filename": name, "size": bytes.len(),
                   "url": format!("{}{path}", world.api_url), "proxy_url": format!("{}{path}", world.api_url)})
        })
        .collect();
    msg["attachments"] = json!(attachments);
}

fn edit_sent(world: &mut World, message: u64, msg: &Value) {
    if let Some(s) = world.sent.iter_mut().find(|s| s.id == message) {
        s.content = msg["content"].as_str().unwrap_or("").into();
        s.edits += 1;
    }
}

/// `PATCH /webhooks/{application}/{token}/messages/@original`: the deferred answer.
fn interaction_original(world: &mut World, token: &str, message: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    if message != "@original" {
        return error(404, 10008, "Unknown Message");
    }
    let b = parse_body(headers, body);
    let Some(index) = world.interactions.iter().position(|i| i.token == token && i.acked_flags.is_some()) else {
        return error(404, 10015, "Unknown Webhook");
    };
    let id = world.interactions[index].original.unwrap_or_else(|| world.next_id());
    let i = &mut world.interactions[index];
    i.original = Some(id);
    let (interaction, channel, ephemeral) = (i.id, i.channel, i.acked_flags == Some(64));
    let content = b.json["content"].as_str().unwrap_or("").to_string();
    match world.sent.iter_mut().find(|s| s.id == id) {
        Some(s) => {
            s.content = content.clone();
            s.edits += 1;
        }
        None => world.sent.push(Sent {
            id,
            channel_id: channel,
            thread_id: None,
            content: content.clone(),
            username: None,
            avatar_url: None,
            webhook_id: None,
            by_bot: true,
            reply_to: None,
            files: Vec::new(),
            allowed_mentions: b.json.get("allowed_mentions").cloned(),
            ephemeral,
            interaction: Some(interaction),
            edits: 0,
            deleted: false,
            at: Instant::now(),
        }),
    }
    let msg = world.message_json(id, channel, world.users[&BOT_USER].clone(), &content);
    ok(msg)
}

/// `POST /webhooks/{application}/{token}`: an interaction follow-up.
fn followup(world: &mut World, token: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    let b = parse_body(headers, body);
    let Some(i) = world.interactions.iter().find(|i| i.token == token && i.acked_flags.is_some()) else {
        return error(404, 10015, "Unknown Webhook");
    };
    let (interaction, channel) = (i.id, i.channel);
    let id = world.next_id();
    let content = b.json["content"].as_str().unwrap_or("").to_string();
    world.sent.push(Sent {
        id,
        channel_id: channel,
        thread_id: None,
        content: content.clone(),
        username: None,
        avatar_url: None,
        webhook_id: None,
        by_bot: true,
        reply_to: None,
        files: Vec::new(),
        allowed_mentions: b.json.get("allowed_mentions").cloned(),
        ephemeral: b.json["flags"].as_u64() == Some(64),
        interaction: Some(interaction),
        edits: 0,
        deleted: false,
        at: Instant::now(),
    });
    let msg = world.message_json(id, channel, world.users[&BOT_USER].clone(), &content);
    ok(msg)
}

/// The interaction's user (for asserting who an answer went to).
impl FakeDiscord {
    pub fn interaction_user(&self, interaction: u64) -> Option<u64> {
        self.world().interactions.iter().find(|i| i.id == interaction).map(|i| i.user)
    }

    /// The DM channel the bot opened with `user`, if any.
    pub fn dm_channel(&self, user: u64) -> Option<u64> {
        self.world().dms.get(&user).copied()
    }
}

impl FakeDiscord {
    /// Waits until the bot registered its global commands.
    pub async fn wait_for_commands(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.world().commands.as_array().is_some_and(|c| !c.is_empty()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}
