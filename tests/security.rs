//! Security properties of the hub that need a store: what people without a linked account
//! can change, and that link tokens never reach the log in clear.

use std::sync::Arc;

use mosaic_as::agents::TurnControl;
use mosaic_as::config::Config;
use mosaic_as::hub::Hub;
use mosaic_as::protocol::{ChannelMessage, ContentType, SenderType};
use mosaic_as::queue::Wakers;
use mosaic_as::store::{Store, accounts, conversations, messages, settings};

const CONFIG: &str = r#"
    [homeserver]
    url = "http://127.0.0.1:8008"
    server_name = "example.org"

    [appservice]
    url = "http://127.0.0.1:29330"
    as_token = "aaaaaaaaaaaaaaaaaaaa"
    hs_token = "bbbbbbbbbbbbbbbbbbbb"
"#;

const ROOM: &str = "!room:example.org";

async fn hub() -> (Hub, Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
    let config = Arc::new(Config::parse(CONFIG).unwrap());
    let hub = Hub::new(config, store.clone(), Arc::new(Wakers::default()), Arc::new(TurnControl::default()));
    (hub, store, dir)
}

/// A message from `sender` in the Matrix room, as the Matrix adapter hands it over.
fn said(sender: &str, text: &str) -> ChannelMessage {
    let mut msg = ChannelMessage::new(ROOM, sender, SenderType::User, text, ContentType::Text);
    msg.metadata.insert("mosaic.commands".into(), true.into());
    msg.metadata.insert("mosaic.participants".into(), 2.into());
    msg.metadata.insert("channelMessageId".into(), format!("${}", msg.id).into());
    msg
}

async fn answer_unlinked(store: &Store) -> bool {
    let mut conn = store.conn().await.unwrap();
    let conversation = conversations::conversation_for_room(&mut conn, ROOM).await.unwrap().unwrap();
    settings::get(&mut conn, &conversation.id).await.unwrap().answer_unlinked
}

#[tokio::test]
async fn unlinked_people_cannot_open_the_room_to_unlinked_people() {
    let (hub, store, _dir) = hub().await;
    hub.handle_inbound("matrix", said("@owner:example.org", "hello")).await.unwrap();
    {
        let mut tx = store.begin_write().await.unwrap();
        let conversation = conversations::conversation_for_room(&mut tx, ROOM).await.unwrap().unwrap();
        settings::default_unlinked_off(&mut tx, &conversation.id).await.unwrap();
        let account = accounts::create_account(&mut tx, "owner", None).await.unwrap();
        accounts::link_identity(&mut tx, "matrix", "@owner:example.org", &account.id).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert!(!answer_unlinked(&store).await);

    hub.handle_inbound("matrix", said("@stranger:example.org", "!unlinked answer")).await.unwrap();
    assert!(!answer_unlinked(&store).await, "an unlinked sender must not switch on answers to unlinked senders");

    hub.handle_inbound("matrix", said("@owner:example.org", "!unlinked answer")).await.unwrap();
    assert!(answer_unlinked(&store).await, "a linked member may");
}

#[tokio::test]
async fn link_tokens_are_masked_in_the_message_log() {
    let (hub, store, _dir) = hub().await;
    let token = "ef".repeat(32);
    for command in [format!("!link {token}"), format!("!LINK {token}")] {
        hub.handle_inbound("matrix", said("@someone:example.org", &command)).await.unwrap();
    }
    let mut conn = store.conn().await.unwrap();
    let conversation = conversations::conversation_for_room(&mut conn, ROOM).await.unwrap().unwrap();
    let logged = messages::history(&mut conn, &conversation.id, 50).await.unwrap();
    assert!(logged.len() >= 2);
    for msg in logged {
        assert!(!msg.content.contains(&token), "{}", msg.content);
    }
}
