//! Security properties of the hub that need a store: what people without a linked account
//! can change, and that link tokens never reach the log in clear.

#[path = "support/columns.rs"]
mod columns;

use std::sync::Arc;

use mosaic_as::agents::TurnControl;
use mosaic_as::config::Config;
use mosaic_as::hub::Hub;
use mosaic_as::hub::power::{ROOM_POWER, RoomChange};
use mosaic_as::protocol::{ChannelEvent, ChannelMessage, ChatKind, ContentType, SenderType};
use mosaic_as::queue::Wakers;
use mosaic_as::store::{Store, accounts, agent_rooms, bridges, conversations, messages, retention, settings};

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
    hub_with(CONFIG).await
}

async fn hub_with(config: &str) -> (Hub, Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
    let config = Arc::new(Config::parse(config).unwrap());
    let hub = Hub::new(config, store.clone(), Arc::new(Wakers::default()), Arc::new(TurnControl::default()));
    (hub, store, dir)
}

/// A message from `sender` in the Matrix room, as the Matrix adapter hands it over, from
/// someone with power 100 there.
fn said(sender: &str, text: &str) -> ChannelMessage {
    said_with_power(sender, text, Some(100))
}

/// A message from someone with power `level` in a room whose every change needs 50, but
/// retention 100; without a level, the adapter could not read the room's power levels.
fn said_with_power(sender: &str, text: &str, level: Option<i64>) -> ChannelMessage {
    let mut msg = ChannelMessage::new(ROOM, sender, SenderType::User, text, ContentType::Text);
    msg.metadata.insert("mosaic.commands".into(), true.into());
    msg.metadata.insert("mosaic.participants".into(), 2.into());
    msg.metadata.insert("channelMessageId".into(), format!("${}", msg.id).into());
    if let Some(level) = level {
        let needs: serde_json::Map<String, serde_json::Value> = RoomChange::ALL
            .iter()
            .map(|change| {
                let name = serde_json::to_value(change).unwrap().as_str().unwrap().to_string();
                (name, if *change == RoomChange::Retention { 100 } else { 50 }.into())
            })
            .collect();
        msg.metadata.insert(ROOM_POWER.into(), serde_json::json!({"sender": level, "needs": needs}));
    }
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

/// The notices the hub answered in the room, oldest first.
async fn notices(store: &Store) -> Vec<String> {
    let mut conn = store.conn().await.unwrap();
    let conversation = conversations::conversation_for_room(&mut conn, ROOM).await.unwrap().unwrap();
    let logged = messages::history(&mut conn, &conversation.id, 100).await.unwrap();
    logged.into_iter().filter(|m| m.sender_type == SenderType::System).map(|m| m.content).collect()
}

async fn conversation(store: &Store) -> conversations::Conversation {
    let mut conn = store.conn().await.unwrap();
    conversations::conversation_for_room(&mut conn, ROOM).await.unwrap().unwrap()
}

#[tokio::test]
async fn room_commands_need_the_power_the_room_requires() {
    let config = format!("{CONFIG}\n[admin]\nmatrix_users = [\"@operator:example.org\"]\n");
    let (hub, store, _dir) = hub_with(&config).await;
    let mallory = "@mallory:example.org";
    hub.handle_inbound("matrix", said_with_power(mallory, "!rename Mine now", Some(0))).await.unwrap();
    hub.handle_inbound("matrix", said_with_power(mallory, "!archive", Some(0))).await.unwrap();
    hub.handle_inbound("matrix", said_with_power(mallory, "!retention 1", Some(50))).await.unwrap();
    hub.handle_inbound("matrix", said_with_power(mallory, "!mention-only on", None)).await.unwrap();
    let answers = notices(&store).await;
    assert_eq!(
        answers,
        [
            "Renaming this conversation needs power level 50 in this room; you have 0.",
            "Archiving this conversation needs power level 50 in this room; you have 0.",
            "Changing retention needs power level 100 in this room; you have 50.",
            "Changing mention-only needs power in this room, and I could not read this room's power levels; try again later.",
        ]
    );
    let unchanged = conversation(&store).await;
    assert_eq!(unchanged.title, "Matrix room");
    assert!(unchanged.archived_at.is_none());
    let mut conn = store.conn().await.unwrap();
    assert!(!settings::get(&mut conn, &unchanged.id).await.unwrap().mention_only);
    drop(conn);

    // A configured admin needs no power in the room; the power does not matter for
    // commands that change nothing.
    hub.handle_inbound("matrix", said_with_power("@operator:example.org", "!rename Audited", Some(0))).await.unwrap();
    hub.handle_inbound("matrix", said_with_power(mallory, "!agent", None)).await.unwrap();
    assert_eq!(conversation(&store).await.title, "Audited");
    let answers = notices(&store).await;
    assert!(answers[answers.len() - 1].contains("no default agent"), "{answers:?}");
}

#[tokio::test]
async fn retention_has_a_floor() {
    let (hub, store, _dir) = hub().await;
    hub.handle_inbound("matrix", said("@owner:example.org", "!retention 0")).await.unwrap();
    hub.handle_inbound("matrix", said("@owner:example.org", "!retention 1")).await.unwrap();
    let answers = notices(&store).await;
    assert_eq!(
        answers[0],
        "Rooms here keep messages at least 1 day(s): send `!retention 1` or more, or `!retention off`."
    );
    assert!(answers[1].contains("keeps messages for 1 day(s)"), "{answers:?}");
}

#[tokio::test]
async fn bridged_senders_cannot_change_the_room() {
    // Even when the operator lets unlinked Telegram people talk to agents.
    let config =
        format!("{CONFIG}\n[permissions]\n\"example.org\" = \"user\"\n[permissions.telegram]\nunlinked = \"user\"\n");
    let (hub, store, _dir) = hub_with(&config).await;
    let chat = "-1001234";
    hub.handle_inbound("matrix", said("@owner:example.org", "hello")).await.unwrap();
    {
        let mut tx = store.begin_write().await.unwrap();
        let conversation = conversations::conversation_for_room(&mut tx, ROOM).await.unwrap().unwrap();
        bridges::bridge(&mut tx, "telegram", chat, &conversation.id, true, "@owner:example.org").await.unwrap();
        tx.commit().await.unwrap();
    }
    // Even with a room power attached, as no Telegram adapter ever does.
    let mut msg = said("4242", "/retention 1");
    msg.channel_id = chat.into();
    msg.metadata.insert("chatType".into(), "supergroup".into());
    hub.handle_inbound("telegram", msg).await.unwrap();
    let answers = notices(&store).await;
    assert!(answers.last().unwrap().contains("works in the conversation's Matrix room"), "{answers:?}");
    let mut conn = store.conn().await.unwrap();
    assert_eq!(retention::policy(&mut conn, ROOM, "all").await.unwrap(), None);
}

/// Every message the hub stored for the room's conversation, oldest first.
async fn stored(store: &Store) -> Vec<ChannelMessage> {
    let mut conn = store.conn().await.unwrap();
    let Some(conversation) = conversations::conversation_for_room(&mut conn, ROOM).await.unwrap() else {
        return Vec::new();
    };
    messages::history(&mut conn, &conversation.id, 100).await.unwrap()
}

/// Kinds of the jobs waiting in the outbox.
async fn queued_kinds(store: &Store) -> Vec<String> {
    use sqlx::Row;
    let mut conn = store.conn().await.unwrap();
    let rows = sqlx::query("SELECT kind FROM outbox ORDER BY seq").fetch_all(&mut *conn).await.unwrap();
    rows.iter().map(|row| row.get::<String, _>("kind")).collect()
}

#[tokio::test]
async fn a_stranger_from_a_refused_server_is_ignored_entirely() {
    let config = format!(
        "{CONFIG}\n[permissions]\n\"*\" = \"none\"\n\"example.org\" = \"user\"\n\"@troll:example.org\" = \"none\"\n"
    );
    let (refusing, store, _dir) = hub_with(&config).await;
    for (sender, text) in [
        ("@mallory:evil.example", "!help"),
        ("@mallory:evil.example", "hello agents"),
        ("@troll:example.org", "!retention 1"),
    ] {
        refusing.handle_inbound("matrix", said(sender, text)).await.unwrap();
    }
    assert!(stored(&store).await.is_empty(), "nothing from them is stored");
    assert!(queued_kinds(&store).await.is_empty(), "nothing answers them");
    // Without a [permissions] section, the homeserver's own users are served, others not.
    let (hub, store, _dir) = hub().await;
    hub.handle_inbound("matrix", said("@mallory:evil.example", "!help")).await.unwrap();
    assert!(stored(&store).await.is_empty());
    hub.handle_inbound("matrix", said("@alice:example.org", "!help")).await.unwrap();
    assert!(notices(&store).await[0].contains("Mosaic commands"));
}

#[tokio::test]
async fn people_who_are_only_relayed_are_bridged_but_not_served() {
    let (hub, store, _dir) = hub().await;
    let chat = "-1001234";
    hub.handle_inbound("matrix", said("@owner:example.org", "hello")).await.unwrap();
    {
        let mut tx = store.begin_write().await.unwrap();
        let conversation = conversations::conversation_for_room(&mut tx, ROOM).await.unwrap().unwrap();
        bridges::bridge(&mut tx, "telegram", chat, &conversation.id, true, "@owner:example.org").await.unwrap();
        settings::set(&mut tx, &conversation.id, settings::Change::AnswerUnlinked(true)).await.unwrap();
        tx.commit().await.unwrap();
    }
    let from_telegram = |text: &str| {
        let mut msg = ChannelMessage::new(chat, "4242", SenderType::User, text, ContentType::Text);
        msg.metadata.insert("chatType".into(), "supergroup".into());
        msg
    };
    let before = queued_kinds(&store).await.len();
    hub.handle_inbound("telegram", from_telegram("hello echo")).await.unwrap();
    let kinds = queued_kinds(&store).await;
    assert!(stored(&store).await.iter().any(|m| m.content == "hello echo"), "the message is stored");
    assert_eq!(kinds[before..], ["send"], "it goes to the Matrix room, and no agent turn is queued: {kinds:?}");
    hub.handle_inbound("telegram", from_telegram("/whoami")).await.unwrap();
    let answers = notices(&store).await;
    assert!(answers.last().unwrap().starts_with("Only people with access"), "{answers:?}");
    hub.handle_inbound("telegram", from_telegram("/help")).await.unwrap();
    assert!(notices(&store).await.last().unwrap().contains("Mosaic commands"));
}

#[tokio::test]
async fn only_admins_may_bridge_and_only_with_the_surface_s_consent() {
    let config = format!(
        "{CONFIG}\n[permissions]\n\"example.org\" = \"user\"\n\"@boss:example.org\" = \"admin\"\n[telegram]\ntoken = \"123:abc\"\n"
    );
    let (hub, store, _dir) = hub_with(&config).await;
    hub.handle_inbound("matrix", said("@alice:example.org", "!bridge telegram -100555")).await.unwrap();
    // This hub knows no surface to ask: an admin is refused too, and told why.
    hub.handle_inbound("matrix", said("@boss:example.org", "!bridge telegram -100555")).await.unwrap();
    let answers = notices(&store).await;
    assert_eq!(
        answers[0],
        "Only admins can bridge chats: the operator makes you one with `\"@alice:example.org\" = \"admin\"` under [permissions] in the config."
    );
    assert!(answers[1].starts_with("I could not ask Telegram"), "{answers:?}");
    let mut conn = store.conn().await.unwrap();
    assert!(bridges::get(&mut conn, "telegram", "-100555").await.unwrap().is_none(), "nothing was bridged");
}

#[tokio::test]
async fn an_agent_with_an_allowed_list_answers_only_those_people() {
    let config = format!("{CONFIG}\n[[agent]]\nid = \"echo\"\nallowed = [\"@alice:example.org\"]\n");
    let (hub, store, _dir) = hub_with(&config).await;
    let with_agent = |sender: &str, text: &str| {
        let mut msg = said(sender, text);
        msg.metadata.insert("mosaic.participants".into(), 1.into());
        msg.metadata.insert("mosaic.agents".into(), serde_json::json!(["echo"]));
        msg
    };
    hub.handle_inbound("matrix", with_agent("@bob:example.org", "hello")).await.unwrap();
    hub.handle_inbound("matrix", with_agent("@bob:example.org", "hello again")).await.unwrap();
    let kinds = queued_kinds(&store).await;
    assert!(!kinds.iter().any(|k| k == "agent.turn"), "{kinds:?}");
    let answers = notices(&store).await;
    assert_eq!(
        answers,
        ["Echo answers only the people the operator allowed (its `allowed` list); not you."],
        "told once"
    );
    hub.handle_inbound("matrix", with_agent("@alice:example.org", "hello")).await.unwrap();
    assert!(queued_kinds(&store).await.iter().any(|k| k == "agent.turn"), "Alice is answered");
}

#[tokio::test]
async fn agents_kept_for_some_people_do_not_work_for_others_in_agent_rooms() {
    let config = format!(
        "{CONFIG}\n[[agent]]\nid = \"echo\"\nallowed = [\"@alice:example.org\"]\n\n[[agent]]\nid = \"other\"\nruntime = \"echo\"\n"
    );
    let (hub, store, _dir) = hub_with(&config).await;
    let refusal = "Echo works only for the people the operator allowed (its `allowed` list); not for you.";

    // Bob cannot open a room with an agent kept for Alice.
    hub.handle_inbound("matrix", said("@bob:example.org", "!pair echo other")).await.unwrap();
    assert_eq!(notices(&store).await, [refusal]);
    assert!(!queued_kinds(&store).await.iter().any(|k| k == "matrix.agent_room"), "no room is opened");

    // Nor put it to work in one Alice opened, through either agent.
    let mut tx = store.begin_write().await.unwrap();
    let owner = accounts::create_account(&mut tx, "alice", None).await.unwrap();
    agent_rooms::record(&mut tx, ROOM, &owner.id, "echo", "other").await.unwrap();
    tx.commit().await.unwrap();
    for command in ["!ask other hello", "!delegate other a task", "!broadcast echo news", "[HUMAN] stop that"] {
        hub.handle_inbound("matrix", said("@bob:example.org", command)).await.unwrap();
        assert_eq!(notices(&store).await.last().map(String::as_str), Some(refusal), "{command}");
    }
    let kinds = queued_kinds(&store).await;
    assert!(!kinds.iter().any(|k| k == "agent.turn"), "no agent works for Bob: {kinds:?}");

    // Alice can.
    hub.handle_inbound("matrix", said("@alice:example.org", "!ask other hello")).await.unwrap();
    assert!(queued_kinds(&store).await.iter().any(|k| k == "agent.turn"), "Alice's request is taken up");
}

async fn issue_token(store: &Store, account: &str) -> String {
    let mut tx = store.begin_write().await.unwrap();
    let account = accounts::create_account(&mut tx, account, None).await.unwrap();
    let token = accounts::issue_link_token(&mut tx, &account.id, 900).await.unwrap();
    tx.commit().await.unwrap();
    token
}

async fn columns_holding(store: &Store, needle: &str) -> Vec<String> {
    columns::holding(&mut store.conn().await.unwrap(), needle).await
}

fn said_on(channel: &str, chat: &str, sender: &str, text: &str) -> ChannelMessage {
    let mut msg = ChannelMessage::new(chat, sender, SenderType::User, text, ContentType::Text);
    msg.metadata.insert("channelMessageId".into(), msg.id.to_string().into());
    msg.metadata.insert("mosaic.originChannel".into(), channel.into());
    match channel {
        "telegram" => msg.metadata.insert("chatType".into(), "supergroup".into()),
        _ => msg.metadata.insert("channelType".into(), 0.into()),
    };
    msg
}

#[tokio::test]
async fn a_link_token_typed_anywhere_is_burnt_at_once_and_kept_nowhere() {
    let (hub, store, _dir) = hub().await;
    let mallory = "@mallory:example.org";
    let original = said(mallory, "!link 00");
    hub.handle_inbound("matrix", original.clone()).await.unwrap();

    let mut tokens = Vec::new();
    let mut attempts: Vec<(&str, ChannelMessage)> = Vec::new();
    for (i, form) in ["edit", "!link T", "/link T", "!link T and more words", "ok so link T thanks"].iter().enumerate()
    {
        let token = issue_token(&store, &format!("matrix-{i}")).await;
        let mut msg = said(mallory, &form.replace('T', &token).replace("edit", &format!("!link {token}")));
        if *form == "edit" {
            msg.event = ChannelEvent::Edit { target: Some(original.id) };
        }
        attempts.push(("matrix", msg));
        tokens.push(token);
    }
    for (i, (channel, chat, form)) in [
        ("telegram", "-1001234", "!link T"),
        ("telegram", "-1001234", "/link@some_other_bot T"),
        ("discord", "700000000000000002", "/link T please"),
    ]
    .into_iter()
    .enumerate()
    {
        let token = issue_token(&store, &format!("{channel}-{i}")).await;
        attempts.push((channel, said_on(channel, chat, "4242", &form.replace('T', &token))));
        tokens.push(token);
    }
    for (channel, msg) in attempts {
        hub.handle_inbound(channel, msg).await.unwrap();
    }

    // Nobody can redeem any of them afterwards.
    for (i, token) in tokens.iter().enumerate() {
        let bob = format!("@bob{i}:example.org");
        hub.handle_inbound("matrix", said(&bob, &format!("!link {token}"))).await.unwrap();
        let answers = notices(&store).await;
        assert!(answers.last().unwrap().contains("already used"), "token {i}: {answers:?}");
        let mut conn = store.conn().await.unwrap();
        assert!(accounts::account_for_identity(&mut conn, "matrix", &bob).await.unwrap().is_none());
    }
    // No table holds any of them in clear.
    for token in &tokens {
        assert_eq!(columns_holding(&store, token).await, Vec::<String>::new(), "{token} is kept in clear");
    }
}

#[tokio::test]
async fn a_linked_sender_burns_the_token_they_type() {
    let (hub, store, _dir) = hub().await;
    let alice = "@alice:example.org";
    let first = issue_token(&store, "alice-co").await;
    hub.handle_inbound("matrix", said(alice, &format!("!link {first}"))).await.unwrap();
    assert!(notices(&store).await.last().unwrap().contains("Linked"));

    let second = issue_token(&store, "other-co").await;
    hub.handle_inbound("matrix", said(alice, &format!("!link {second}"))).await.unwrap();
    let answer = notices(&store).await.last().unwrap().clone();
    assert!(answer.contains("already linked") && answer.contains("can no longer be used"), "{answer}");

    hub.handle_inbound("matrix", said("@bob:example.org", &format!("!link {second}"))).await.unwrap();
    assert!(notices(&store).await.last().unwrap().contains("already used"));
}

/// Every message stored, in any conversation.
async fn all_stored_texts(store: &Store) -> Vec<String> {
    use sqlx::Row;
    let mut conn = store.conn().await.unwrap();
    let rows = sqlx::query("SELECT body FROM messages ORDER BY created_at").fetch_all(&mut *conn).await.unwrap();
    rows.iter().map(|row| row.get::<String, _>("body")).collect()
}

#[tokio::test]
async fn chats_that_are_not_bridged_are_read_for_commands_only() {
    let (hub, store, _dir) = hub().await;
    let in_chat = |chat: &str, chat_type: &str, text: &str| {
        let mut msg = ChannelMessage::new(chat, "4242", SenderType::User, text, ContentType::Text);
        msg.metadata.insert("chatType".into(), chat_type.into());
        // The surface says which chats are private; the hub reads only that.
        if chat_type == "private" {
            msg.chat = ChatKind::Private;
        }
        msg
    };
    // A group the bot was added to but nobody bridged: its talk is none of our business.
    hub.handle_inbound("telegram", in_chat("-100777", "supergroup", "our private plans")).await.unwrap();
    let mut discord = in_chat("555", "", "plans on discord");
    discord.metadata.insert("channelType".into(), 0.into());
    hub.handle_inbound("discord", discord).await.unwrap();
    assert!(all_stored_texts(&store).await.is_empty(), "nothing stored: {:?}", all_stored_texts(&store).await);
    assert!(queued_kinds(&store).await.is_empty(), "nothing answered");
    let mut conn = store.conn().await.unwrap();
    assert!(bridges::get(&mut conn, "telegram", "-100777").await.unwrap().is_none(), "no conversation made for it");
    drop(conn);

    // Commands there are answered.
    hub.handle_inbound("telegram", in_chat("-100777", "supergroup", "/help")).await.unwrap();
    assert_eq!(queued_kinds(&store).await, ["send"]);
    assert!(all_stored_texts(&store).await.iter().any(|t| t.contains("Mosaic commands")));
    // A private chat with the bot is told how to use it.
    hub.handle_inbound("telegram", in_chat("4242", "private", "hello bot")).await.unwrap();
    assert!(all_stored_texts(&store).await.iter().any(|t| t.contains("This chat is not bridged")));
}
