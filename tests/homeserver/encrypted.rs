//! Encrypted rooms as people meet them: a real end-to-end encrypting client (matrix-sdk,
//! as in Element X) opens an encrypted direct chat with an agent and with the bot, and
//! gets answers it can read, from devices their owners cross-signed, while the homeserver
//! holds nothing of them in clear.

use std::time::{Duration, Instant};

use matrix_sdk::config::SyncSettings;
use matrix_sdk::room::Room;
use matrix_sdk::ruma::events::room::message::{OriginalSyncRoomMessageEvent, Relation, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedEventId, OwnedUserId, UserId};
use matrix_sdk::{Client, RoomMemberships};
use tokio::sync::mpsc;

use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::MediaSource;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::MessageType;

use matrix_sdk::attachment::AttachmentConfig;

use crate::support::fake_telegram::{FakeTelegram, Incoming, SentKind, TgUser};
use crate::support::{Person, Service, homeserver_url, mosaic, post_json, push_transaction, slot};

const TG_GROUP: i64 = -1_002_424_242_424;

/// A message as the encrypting client shows it: decrypted.
#[derive(Debug, Clone)]
struct Seen {
    sender: OwnedUserId,
    body: String,
    in_reply_to: Option<OwnedEventId>,
    msgtype: String,
    content: RoomMessageEventContent,
}

/// A person on an end-to-end encrypting client, syncing in the background.
struct EncryptingClient {
    client: Client,
    seen: mpsc::UnboundedReceiver<Seen>,
    _store: tempfile::TempDir,
    _sync: tokio::task::JoinHandle<()>,
}

impl EncryptingClient {
    async fn new(name: &str) -> Self {
        // Registers the account on the homeserver.
        Person::new(name).await;
        let store = tempfile::tempdir().unwrap();
        let client = Client::builder()
            .homeserver_url(homeserver_url())
            .sqlite_store(store.path(), None)
            .build()
            .await
            .expect("client builds");
        client.matrix_auth().login_username(name, "secret-password").send().await.expect("login works");
        let (tx, seen) = mpsc::unbounded_channel();
        client.add_event_handler(move |event: OriginalSyncRoomMessageEvent| {
            let tx = tx.clone();
            async move {
                let in_reply_to = match &event.content.relates_to {
                    Some(Relation::Reply(reply)) => Some(reply.in_reply_to.event_id.clone()),
                    Some(Relation::Thread(thread)) => thread.in_reply_to.as_ref().map(|r| r.event_id.clone()),
                    _ => None,
                };
                let _ = tx.send(Seen {
                    sender: event.sender.clone(),
                    body: event.content.body().to_string(),
                    in_reply_to,
                    msgtype: event.content.msgtype().to_string(),
                    content: event.content.clone(),
                });
            }
        });
        client.sync_once(SyncSettings::default()).await.expect("first sync");
        let syncing = client.clone();
        let sync = tokio::spawn(async move {
            let _ = syncing.sync(SyncSettings::default().timeout(Duration::from_secs(1))).await;
        });
        Self { client, seen, _store: store, _sync: sync }
    }

    /// An encrypted direct chat with `user`, once `user` has joined it.
    async fn direct_chat(&self, user: &str) -> Room {
        let user = UserId::parse(user).unwrap();
        let room = self.client.create_dm(&user).await.expect("direct chat created");
        assert!(room.latest_encryption_state().await.unwrap().is_encrypted(), "the direct chat is encrypted");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let joined = room.members_no_sync(RoomMemberships::JOIN).await.unwrap();
            if joined.iter().any(|m| m.user_id() == user) {
                return room;
            }
            assert!(Instant::now() < deadline, "{user} did not join the encrypted direct chat");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `user` has joined `room`.
    async fn wait_for_member(&self, room: &Room, user: &str) {
        let user = UserId::parse(user).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !room.members_no_sync(RoomMemberships::JOIN).await.unwrap().iter().any(|m| m.user_id() == user) {
            assert!(Instant::now() < deadline, "{user} did not join");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `user`'s devices as this client knows them: their ids, and whether their owner
    /// cross-signed them.
    async fn devices_of(&self, user: &str) -> Vec<(String, bool)> {
        let user = UserId::parse(user).unwrap();
        let devices = self.client.encryption().get_user_devices(&user).await.unwrap();
        devices.devices().map(|d| (d.device_id().to_string(), d.is_cross_signed_by_owner())).collect()
    }

    async fn say(&self, room: &Room, text: &str) -> OwnedEventId {
        room.send(RoomMessageEventContent::text_plain(text)).await.expect("sent").response.event_id
    }

    /// The next decrypted message from `sender` that `wanted` accepts.
    async fn message_from(&mut self, sender: &str, wanted: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let seen = tokio::time::timeout_at(deadline, self.seen.recv())
                .await
                .unwrap_or_else(|_| panic!("no such readable message from {sender}"))
                .expect("client syncing");
            if seen.sender == sender && wanted(&seen) {
                return seen;
            }
        }
    }

    /// The next decrypted message from `sender` that answers `asked`.
    async fn answer_from(&mut self, sender: &str, asked: &OwnedEventId) -> Seen {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let seen = tokio::time::timeout_at(deadline, self.seen.recv())
                .await
                .unwrap_or_else(|_| panic!("no readable answer from {sender} to {asked}"))
                .expect("client syncing");
            if seen.sender == sender && seen.in_reply_to.as_ref() == Some(asked) {
                return seen;
            }
        }
    }
}

/// Synapse 1.163 can drop a to-device message pushed to an appservice when another is
/// sent at the same moment (see docs/encryption.md). Agents fetch a dropped one with
/// `/sync`; the bot cannot (Synapse refuses `/sync` to an appservice's sender), so the
/// tests that send room keys run one after another, each step after the last.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_and_the_bot_answer_in_encrypted_direct_chats_from_cross_signed_devices() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let slot = slot("encrypted");
    let mut service = Service::start(&slot).await;
    let echo = slot.agent("echo");
    let bot = slot.bot();
    let mut alice = EncryptingClient::new("encrypted-alice").await;

    // An agent: answers to every message, readable by the person only.
    let room = alice.direct_chat(&echo).await;
    let asked = alice.say(&room, "hello behind the curtain").await;
    let answer = alice.answer_from(&echo, &asked).await;
    assert_eq!(answer.body, "hello behind the curtain");
    // A second message goes through the same room key: still readable.
    let again = alice.say(&room, "and once more").await;
    assert_eq!(alice.answer_from(&echo, &again).await.body, "and once more");

    // The agent's device is vouched for by its owner's cross-signing identity.
    let devices = alice.devices_of(&echo).await;
    assert_eq!(devices.len(), 1, "the agent has one device");
    assert!(devices[0].1, "the agent's device is cross-signed by its owner");

    // What the homeserver holds of the conversation is ciphertext only.
    let reader = Person::new("encrypted-alice").await;
    let stored = reader.timeline(room.room_id().as_str()).await;
    let from_echo: Vec<_> =
        stored.iter().filter(|e| e["sender"] == echo.as_str() && e["type"] != "m.room.member").collect();
    assert_eq!(from_echo.len(), 2, "{stored:?}");
    for event in from_echo
        .iter()
        .chain(stored.iter().filter(|e| e["sender"] == alice_id(&alice).as_str()).collect::<Vec<_>>().iter())
    {
        assert!(!event.to_string().contains("behind the curtain"), "in clear on the homeserver: {event}");
    }
    assert!(from_echo.iter().all(|e| e["type"] == "m.room.encrypted"), "{from_echo:?}");

    // A message whose room key never reached the agent (a homeserver can lose one) is
    // not dropped without a word: the person is asked to send it again.
    let two_minutes_ago =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 120_000;
    let keyless = serde_json::json!({
        "type": "m.room.encrypted",
        "room_id": room.room_id().as_str(),
        "sender": alice_id(&alice),
        "event_id": "$keyless-message",
        "origin_server_ts": two_minutes_ago,
        "content": {
            "algorithm": "m.megolm.v1.aes-sha2",
            "ciphertext": "AwgAEnB0aGUgbWVzc2FnZSBpdHNlbGY",
            "device_id": "ALICEDEVICE",
            "sender_key": "x2J1TpHX8sVY3pKYBqBtbqs5OG4fjZv1eCUT9TnmW1w",
            "session_id": "a-session-nobody-shared"
        },
    });
    assert_eq!(push_transaction(&slot, "keyless-1", serde_json::json!([keyless])).await.status(), 200);
    let keyless_id = OwnedEventId::try_from("$keyless-message").unwrap();
    let told = alice.answer_from(&echo, &keyless_id).await;
    assert_eq!(told.msgtype, "m.notice");
    assert!(told.body.contains("could not read a message") && told.body.contains("send it again"), "{told:?}");

    // The bot: commands work in an encrypted direct chat.
    let room = alice.direct_chat(&bot).await;
    let asked = alice.say(&room, "!whoami").await;
    let answer = alice.answer_from(&bot, &asked).await;
    assert_eq!(answer.msgtype, "m.notice");
    assert!(answer.body.contains("not linked"), "{answer:?}");
    let unknown = alice.say(&room, "!dance").await;
    assert!(alice.answer_from(&bot, &unknown).await.body.contains("Unknown command `!dance`"));
    let stored = reader.timeline(room.room_id().as_str()).await;
    assert!(
        stored
            .iter()
            .filter(|e| e["sender"] == bot.as_str() && e["type"] != "m.room.member")
            .all(|e| e["type"] == "m.room.encrypted"),
        "{stored:?}"
    );

    // A crypto store that can no longer be opened (another as_token, a damaged disk) is
    // logged, and holds up nothing else: plain rooms are still answered.
    service.kill();
    for store in std::fs::read_dir(slot.dir.join("crypto")).unwrap() {
        for file in std::fs::read_dir(store.unwrap().path()).unwrap() {
            std::fs::write(file.unwrap().path(), b"not a database").unwrap();
        }
    }
    let _service = Service::start(&slot).await;
    let plain_room = reader.create_room(&[&echo], true).await;
    reader.wait_for_member(&plain_room, &echo).await;
    let asked = reader.say(&plain_room, "still there?").await;
    assert_eq!(crate::support::body(&reader.wait_for_reply(&plain_room, &echo, &asked).await), "still there?");
    // The pushes that carry the agent's key counts (its answer comes back in one) go
    // through too: the next message is answered as well.
    let next = reader.say(&plain_room, "and now?").await;
    assert_eq!(crate::support::body(&reader.wait_for_reply(&plain_room, &echo, &next).await), "and now?");
    let log = slot.log();
    assert!(log.contains("crypto store unusable"), "the broken store is named in the log");
    // Once: the pushes that name the agent after it do not open the store again.
    let failures = log.lines().filter(|l| l.contains("crypto store unusable;") && l.contains(echo.as_str())).count();
    assert_eq!(failures, 1, "{log}");
    // No push was refused for it (a refused push holds back every later one).
    assert!(!log.contains("cannot take in the transaction"), "{log}");
}

fn alice_id(client: &EncryptingClient) -> String {
    client.client.user_id().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_fetches_room_keys_itself_where_the_homeserver_pushes_none() {
    // This slot's registration asks for no to-device messages in transactions: the agent's
    // device must fetch the room key of each message with /sync, as on a homeserver that
    // pushes none, or after a push the homeserver dropped.
    let _alone = ONE_AT_A_TIME.lock().await;
    let slot = slot("encryptedsync");
    let registration = std::fs::read_to_string(slot.dir.join("registration.yaml")).unwrap();
    assert!(
        !registration.contains("receive_ephemeral") && registration.contains("io.element.msc4190"),
        "{registration}"
    );
    let mut service = Service::start(&slot).await;
    let echo = slot.agent("echo");
    let mut carol = EncryptingClient::new("encryptedsync-carol").await;

    let room = carol.direct_chat(&echo).await;
    let asked = carol.say(&room, "keys come when asked for").await;
    assert_eq!(carol.answer_from(&echo, &asked).await.body, "keys come when asked for");
    let again = carol.say(&room, "and the next one too").await;
    assert_eq!(carol.answer_from(&echo, &again).await.body, "and the next one too");

    // A restart keeps the agent's device: same id, same keys, and it still reads.
    let before = device_keys(&carol, &echo).await;
    assert_eq!(before.as_object().map(|devices| devices.len()), Some(1), "{before}");
    service.kill();
    let _service = Service::start(&slot).await;
    let after_restart = carol.say(&room, "after a restart").await;
    assert_eq!(carol.answer_from(&echo, &after_restart).await.body, "after a restart");
    assert_eq!(device_keys(&carol, &echo).await, before, "the agent's device and keys did not change");
}

/// `user`'s devices and their keys as the homeserver gives them to anyone who asks.
async fn device_keys(asker: &EncryptingClient, user: &str) -> serde_json::Value {
    let query = serde_json::json!({"device_keys": {user: []}});
    let token = asker.client.access_token().expect("the asker is logged in");
    let answer = post_json(&reqwest::Client::new(), "/_matrix/client/v3/keys/query", Some(&token), &query).await;
    answer["device_keys"][user].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_telegram_group_bridged_into_an_encrypted_room_stays_encrypted_files_included() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let fake = FakeTelegram::start().await;
    fake.add_supergroup(TG_GROUP, "Team chat", true);
    let slot = slot("encryptedtg");
    let mut dora = EncryptingClient::new("encryptedtg-dora").await;
    let dora_id = alice_id(&dora);
    slot.write_config_with_sections(&format!(
        "[telegram]\ntoken = \"{}\"\napi_url = \"{}\"\npoll_timeout_secs = 1\nbridge_chats = [{TG_GROUP}]\n\n\
         [permissions]\n\"*\" = \"none\"\n\"localhost\" = \"user\"\n\"{dora_id}\" = \"admin\"\n\
         [permissions.telegram]\nunlinked = \"user\"\n",
        fake.token(),
        fake.api_url()
    ));
    mosaic(&slot, &["account", "create", "encryptedtg-dora", "--matrix-id", &dora_id]).expect_success();
    let _service = Service::start(&slot).await;
    let echo = slot.agent("echo");

    // An encrypted group room with the agent, bridged to a Telegram group.
    let mut request = create_room::v3::Request::new();
    request.invite = vec![UserId::parse(&echo).unwrap()];
    request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any(),
    ];
    let room = dora.client.create_room(request).await.expect("room created");
    dora.wait_for_member(&room, &echo).await;
    dora.say(&room, &format!("!bridge telegram {TG_GROUP}")).await;
    dora.message_from(&echo, |m| m.body.contains("Team chat")).await;

    // Dora's encrypted words reach Telegram in clear there.
    dora.say(&room, "from the locked room").await;
    fake.wait_for_sent(|s| s.chat_id == TG_GROUP && s.text.ends_with("from the locked room"), Duration::from_secs(30))
        .await;

    // Tom's photo arrives encrypted, from his own ghost's device, and decrypts to its bytes.
    let tom = TgUser::new(6161, "Tom", None, Some("tom"));
    let tom_ghost = format!("@mosaic_encryptedtg_telegram_{}:{}", tom.id, crate::support::SERVER_NAME);
    let photo = b"\x89PNG the photo's own bytes".to_vec();
    fake.push_message(Incoming::photo(TG_GROUP, &tom, &photo, Some("a photo")));
    let image = dora.message_from(&tom_ghost, |m| m.msgtype == "m.image").await;
    assert_eq!(image.body, "a photo");
    let MessageType::Image(image) = image.content.msgtype else { unreachable!() };
    assert!(
        matches!(image.source, MediaSource::Encrypted(_)),
        "the photo is an encrypted attachment: {:?}",
        image.source
    );
    let request = MediaRequestParameters { source: image.source.clone(), format: MediaFormat::File };
    let bytes = dora.client.media().get_media_content(&request, false).await.expect("photo downloads and decrypts");
    assert_eq!(bytes, photo);

    // Dora's encrypted file reaches Telegram decrypted, byte for byte.
    let document = b"%PDF-1.4 sealed notes".to_vec();
    room.send_attachment("notes.pdf", &mime::APPLICATION_PDF, document.clone(), AttachmentConfig::new())
        .await
        .expect("encrypted file sent");
    let sent = fake.wait_for_sent(|s| s.kind == SentKind::Document, Duration::from_secs(30)).await;
    assert_eq!(sent.file.as_ref().map(|(_, bytes)| bytes.clone()), Some(document));

    // On the homeserver, Tom's photo is ciphertext, and so is its file.
    let reader = Person::new("encryptedtg-dora").await;
    let stored = reader.timeline(room.room_id().as_str()).await;
    let from_tom: Vec<_> =
        stored.iter().filter(|e| e["sender"] == tom_ghost.as_str() && e["type"] != "m.room.member").collect();
    assert!(!from_tom.is_empty() && from_tom.iter().all(|e| e["type"] == "m.room.encrypted"), "{from_tom:?}");
    let MediaSource::Encrypted(file) = &image.source else { unreachable!() };
    let mxc = file.url.as_str().trim_start_matches("mxc://");
    let stored_file = reader.http_get_bytes(&format!("/_matrix/client/v1/media/download/{mxc}")).await;
    assert!(
        !stored_file.windows(photo.len()).any(|w| w == photo.as_slice()),
        "the photo is in clear in the media repository"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_room_the_service_creates_is_encrypted_and_its_agent_answers_there() {
    // This slot's config leaves `[e2ee] new_rooms` as by default: on.
    let _alone = ONE_AT_A_TIME.lock().await;
    let slot = slot("encryptedrooms");
    let _service = Service::start(&slot).await;
    let bot = slot.bot();
    let echo = slot.agent("echo");
    let mut erin = EncryptingClient::new("encryptedrooms-erin").await;

    // `!new` asked in a plain room (the same person, through a plain client).
    let plain = Person::new("encryptedrooms-erin").await;
    let dm = plain.create_room(&[&bot], true).await;
    plain.wait_for_member(&dm, &bot).await;
    let asked = plain.say(&dm, "!new Sealed plans").await;
    let answer = crate::support::body(&plain.wait_for_reply(&dm, &bot, &asked).await).to_string();
    assert!(answer.contains("Mosaic: Sealed plans"), "{answer}");

    // The new room is created encrypted, with the agent in it before Erin is invited.
    let deadline = Instant::now() + Duration::from_secs(30);
    let room_id = loop {
        if let Some(room) = plain.invites().await.into_iter().find(|r| r != &dm) {
            break room;
        }
        assert!(Instant::now() < deadline, "no invitation to the new room");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let room_id = matrix_sdk::ruma::OwnedRoomId::try_from(room_id.as_str()).unwrap();
    let room = erin.client.join_room_by_id(&room_id).await.expect("joined the new room");
    erin.wait_for_member(&room, &echo).await;
    let encryption = plain.state(room_id.as_str(), "m.room.encryption").await;
    assert_eq!(encryption["algorithm"], "m.megolm.v1.aes-sha2", "{encryption}");
    assert!(room.latest_encryption_state().await.unwrap().is_encrypted(), "the client sees an encrypted room");

    // The agent answers there, encrypted, and Erin's client reads it.
    let asked = erin.say(&room, "only for us").await;
    assert_eq!(erin.answer_from(&echo, &asked).await.body, "only for us");
    let stored = plain.timeline(room_id.as_str()).await;
    let from_echo: Vec<_> =
        stored.iter().filter(|e| e["sender"] == echo.as_str() && e["type"] != "m.room.member").collect();
    assert!(!from_echo.is_empty() && from_echo.iter().all(|e| e["type"] == "m.room.encrypted"), "{stored:?}");
    assert!(!stored.iter().any(|e| e.to_string().contains("only for us")), "in clear on the homeserver: {stored:?}");

    // The bot reads commands there too, and answers encrypted.
    let asked = erin.say(&room, "!whoami").await;
    let answer = erin.answer_from(&bot, &asked).await;
    assert_eq!(answer.msgtype, "m.notice");
    let stored = plain.timeline(room_id.as_str()).await;
    let from_bot: Vec<_> =
        stored.iter().filter(|e| e["sender"] == bot.as_str() && e["type"] != "m.room.member").collect();
    assert!(from_bot.iter().all(|e| e["type"] != "m.room.message"), "{from_bot:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_homeserver_without_msc4190_the_agent_logs_its_device_in_and_keeps_it() {
    // This slot is what Conduit 0.10 offers: a registration without MSC4190 and without
    // anything for encryption in transactions. The agent's device comes from the
    // appservice login, and fetches its room keys with /sync.
    let _alone = ONE_AT_A_TIME.lock().await;
    let slot = slot("encryptedlogin");
    let registration = std::fs::read_to_string(slot.dir.join("registration.yaml")).unwrap();
    for absent in ["io.element.msc4190", "receive_ephemeral", "msc3202"] {
        assert!(!registration.contains(absent), "{absent}: {registration}");
    }
    let mut service = Service::start(&slot).await;
    let echo = slot.agent("echo");
    let mut fay = EncryptingClient::new("encryptedlogin-fay").await;

    let room = fay.direct_chat(&echo).await;
    let asked = fay.say(&room, "a device by login").await;
    assert_eq!(fay.answer_from(&echo, &asked).await.body, "a device by login");
    let devices = fay.devices_of(&echo).await;
    assert_eq!(devices.len(), 1, "the agent has one device: {devices:?}");
    assert!(devices[0].1, "the agent's device is cross-signed by its owner");

    // The device's access token is kept beside its crypto store, sealed.
    let tokens: Vec<_> = std::fs::read_dir(slot.dir.join("crypto"))
        .unwrap()
        .map(|store| store.unwrap().path().join("device-token"))
        .filter(|path| path.exists())
        .collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let sealed = std::fs::read_to_string(&tokens[0]).unwrap();
    assert!(sealed.starts_with("v1:") && !sealed.contains("syt_"), "the token is sealed at rest");

    // A restart keeps the device: same id, same keys, and it still reads.
    let before = device_keys(&fay, &echo).await;
    assert_eq!(before.as_object().map(|devices| devices.len()), Some(1), "{before}");
    service.kill();
    let _service = Service::start(&slot).await;
    let after_restart = fay.say(&room, "after a restart").await;
    assert_eq!(fay.answer_from(&echo, &after_restart).await.body, "after a restart");
    assert_eq!(device_keys(&fay, &echo).await, before, "the agent's device and keys did not change");

    // The device is signed out on the homeserver (an administrator removes it, as a
    // person ends a session in their client): its token no longer works, and its keys
    // are gone. The message sent meanwhile went to no device of the agent; reading it
    // makes the agent log the same device in again and publish the same keys.
    let device_id = before.as_object().unwrap().keys().next().unwrap().clone();
    let admin = Person::new_admin("encryptedlogin-admin").await;
    let removed = reqwest::Client::new()
        .delete(format!("{}/_synapse/admin/v2/users/{echo}/devices/{device_id}", homeserver_url()))
        .bearer_auth(admin.token())
        .send()
        .await
        .unwrap();
    assert!(removed.status().is_success(), "{}", removed.status());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fay.devices_of(&echo).await.is_empty() {
        assert!(Instant::now() < deadline, "the client still shows the removed device");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fay.say(&room, "sent while the agent had no device").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let devices = fay.devices_of(&echo).await;
        if devices.iter().any(|(id, signed)| *id == device_id && *signed) {
            break;
        }
        assert!(Instant::now() < deadline, "the agent's device did not come back: {devices:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(device_keys(&fay, &echo).await, before, "the same device, with the same keys");
    let next = fay.say(&room, "and after the sign-out").await;
    assert_eq!(fay.answer_from(&echo, &next).await.body, "and after the sign-out");

    // Fay signs in on a second device: nothing pushes the change of her devices to the
    // agent, which learns it before answering, and the answer reads there too.
    let mut fay_phone = EncryptingClient::new("encryptedlogin-fay").await;
    // Past the shortest time between two fetches of a device (2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = fay.say(&room, "for both of my devices").await;
    assert_eq!(fay_phone.answer_from(&echo, &asked).await.body, "for both of my devices");
}
