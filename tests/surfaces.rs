//! A surface added in one line: Postbox (`support/postbox.rs`), which the service's code
//! never names, is registered as `app.rs` registers every surface, bridged into a
//! conversation with `!bridge`, and carries messages both ways through the real hub,
//! outbox and dispatcher, with a real SQLite store. The Matrix room is a recording
//! adapter: the hub speaks to Matrix through the same trait.

#[path = "support/postbox.rs"]
mod postbox;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mosaic_as::agents::TurnControl;
use mosaic_as::app;
use mosaic_as::config::Config;
use mosaic_as::hub::Hub;
use mosaic_as::hub::room_ops::{HomeRooms, RoomOp, RoomOpError};
use mosaic_as::protocol::{
    AdapterHealth, ChannelAdapter, ChannelConnectError, ChannelEvent, ChannelMessage, ChannelRegistry,
    ChannelSendError, ChatKind, ContentType, InboundHandler, SenderType, metadata_keys,
};
use mosaic_as::queue::{self, RetryLimits, Wakers};
use mosaic_as::store::Store;
use postbox::{Postbox, wait};
use tokio::sync::watch;

const CONFIG: &str = r#"
    [homeserver]
    url = "http://127.0.0.1:8008"
    server_name = "example.org"

    [appservice]
    url = "http://127.0.0.1:29330"
    as_token = "aaaaaaaaaaaaaaaaaaaa"
    hs_token = "bbbbbbbbbbbbbbbbbbbb"

    [permissions]
    "example.org" = "user"
    "@admin:example.org" = "admin"
"#;

const ROOM: &str = "!room:example.org";
const ADMIN: &str = "@admin:example.org";
const ALICE: &str = "@alice:example.org";

/// The conversation's Matrix room, as the hub sends to it.
#[derive(Default)]
struct Room {
    shown: Mutex<Vec<ChannelMessage>>,
}

impl Room {
    async fn wait_for(&self, text: &str) -> ChannelMessage {
        let shown = || self.shown.lock().unwrap().clone();
        let found = || shown().into_iter().find(|m| m.content.contains(text));
        wait(found, &format!("the room to show {text:?}: {:?}", shown())).await
    }
}

#[async_trait]
impl ChannelAdapter for Room {
    fn name(&self) -> &'static str {
        "matrix"
    }
    async fn connect(&self) -> Result<(), ChannelConnectError> {
        Ok(())
    }
    async fn disconnect(&self) {}
    async fn health(&self) -> AdapterHealth {
        AdapterHealth::Connected
    }
    fn on_message(&self, _handler: Arc<dyn InboundHandler>) {}
    async fn send_message(&self, _channel_id: &str, msg: &ChannelMessage) -> Result<(), ChannelSendError> {
        self.shown.lock().unwrap().push(msg.clone());
        Ok(())
    }
    async fn map_identity(&self, _channel_user_id: &str) -> Option<String> {
        None
    }
}

/// Room work (creating rooms, invites) has nothing to do here.
struct NoRoomWork;

#[async_trait]
impl HomeRooms for NoRoomWork {
    async fn carry_out(&self, _op: &RoomOp) -> Result<(), RoomOpError> {
        Ok(())
    }
}

struct Service {
    hub: Arc<Hub>,
    room: Arc<Room>,
    postbox: Arc<Postbox>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// The hub, the surfaces' outbox and its dispatcher, as `app::serve` wires them.
async fn service() -> Service {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
    let config = Arc::new(Config::parse(CONFIG).unwrap());
    let wakers = Arc::new(Wakers::default());
    let registry = Arc::new(ChannelRegistry::new());
    let hub = Hub::new(config.clone(), store.clone(), wakers.clone(), Arc::new(TurnControl::default()));
    let hub = Arc::new(hub.with_surfaces(registry.clone()));
    let (room, postbox) = (Arc::new(Room::default()), Postbox::new(store.clone()));
    app::register_surface(&registry, &hub, room.clone(), &store, &config);
    // The one line that adds a surface.
    app::register_surface(&registry, &hub, postbox.clone(), &store, &config);
    let dispatcher = app::surface_dispatcher(&config, registry, Arc::new(NoRoomWork), store.clone());
    let (stop, stopped) = watch::channel(false);
    let limits = RetryLimits::default();
    let handlers = queue::Handlers { agents: None, surfaces: Some(dispatcher) };
    tokio::spawn(queue::run_scheduler(store, handlers, limits, wakers, stopped));
    Service { hub, room, postbox, _stop: stop, _dir: dir }
}

impl Service {
    /// `sender` writes in the Matrix room, as the Matrix adapter hands it over.
    async fn said(&self, sender: &str, text: &str) -> ChannelMessage {
        let mut msg = ChannelMessage::new(ROOM, sender, SenderType::User, text, ContentType::Text);
        msg.metadata.insert("mosaic.commands".into(), true.into());
        msg.metadata.insert("mosaic.participants".into(), 2.into());
        msg.metadata.insert(metadata_keys::CHANNEL_MESSAGE_ID.into(), format!("${}", msg.id).into());
        self.matrix(msg.clone()).await;
        msg
    }

    async fn matrix(&self, msg: ChannelMessage) {
        self.hub.handle_inbound("matrix", msg).await.unwrap();
    }

    /// An admin bridges box `chat` into the room's conversation.
    async fn bridge(&self, chat: &str) {
        self.said(ADMIN, &format!("!bridge postbox {chat}")).await;
        self.room.wait_for(&format!("Bridged postbox chat `{chat}`")).await;
    }
}

#[tokio::test]
async fn a_surface_registered_in_one_line_is_bridged_both_ways() {
    let service = service().await;
    service.bridge("42").await;

    service.said(ALICE, "hello, postbox").await;
    let shown = service.postbox.wait_for("42", "hello, postbox").await;
    assert_eq!(shown.meta_str(metadata_keys::SENDER_NAME), Some("@alice:example.org (Matrix)"));

    service.postbox.post("42", "bob", "hello, Matrix", ChatKind::Group).await;
    let shown = service.room.wait_for("hello, Matrix").await;
    assert_eq!((shown.sender_id.as_str(), shown.origin_channel()), ("bob", "postbox"));
    assert_eq!(shown.meta_str(metadata_keys::SENDER_NAME), Some("BOB"));
}

#[tokio::test]
async fn the_hub_sends_a_surface_nothing_it_cannot_show() {
    let service = service().await;
    service.bridge("42").await;
    let hello = service.said(ALICE, "hello").await;
    service.postbox.wait_for("42", "hello").await;

    let mut like = ChannelMessage::reaction(ROOM, ALICE, "👍", hello.id, false);
    like.metadata.insert(metadata_keys::CHANNEL_MESSAGE_ID.into(), "$like".into());
    service.matrix(like).await;
    let mut deletion = ChannelMessage::new(ROOM, ALICE, SenderType::User, "", ContentType::Text)
        .with_event(ChannelEvent::Delete { target: hello.id });
    deletion.metadata.insert(metadata_keys::CHANNEL_MESSAGE_ID.into(), "$redaction".into());
    service.matrix(deletion).await;
    // A box's sends are queued in order: once this shows, the two before were handled.
    service.said(ALICE, "after").await;
    service.postbox.wait_for("42", "after").await;

    assert_eq!(service.postbox.reactions(), [], "Postbox shows no reactions");
    let events: Vec<ChannelEvent> = service.postbox.shown().into_iter().map(|(_, m)| m.event).collect();
    assert_eq!(events, [ChannelEvent::Message, ChannelEvent::Message], "Postbox takes back nothing it showed");
}

#[tokio::test]
async fn the_surface_says_which_chats_are_private_and_how_commands_start() {
    let service = service().await;
    service.postbox.post("7", "carol", ".help", ChatKind::Private).await;
    let help = service.postbox.wait_for("7", "Mosaic commands").await;
    assert!(help.content.contains("`.link <token>`") && help.content.contains("`.bridge "), "{}", help.content);

    // Writing to the bot alone in a box that is not bridged, she learns what to do …
    service.postbox.post("7", "carol", "hello?", ChatKind::Private).await;
    service.postbox.wait_for("7", "This chat is not bridged to a conversation").await;
    // … while chatter in a box others read is none of the bot's business.
    service.postbox.post("8", "carol", "hello?", ChatKind::Group).await;
    service.postbox.post("8", "carol", ".link", ChatKind::Group).await;
    service.postbox.wait_for("8", "Usage: `.link <token>`").await;
    let box_8: Vec<String> =
        service.postbox.shown().into_iter().filter(|(c, _)| c == "8").map(|(_, m)| m.content).collect();
    assert_eq!(box_8.len(), 1, "{box_8:?}");
}
