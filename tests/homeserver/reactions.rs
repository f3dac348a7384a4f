//! Reactions as people see them: a reaction on one surface shows under the same message
//! on the others, by the person's ghost in Matrix and by the bot on Discord and Telegram,
//! and goes away again when it is taken back. People the service ignores react unseen.

use std::time::Duration;

use crate::support::fake_discord::FakeDiscord;
use crate::support::fake_telegram::{FakeTelegram, TgUser};
use crate::support::{Person, Service, body, database_columns_holding, mosaic, slot};

const GUILD: u64 = 720_000_000_000_000_001;
const GENERAL: u64 = 720_000_000_000_000_002;
const DAN: u64 = 720_000_000_000_000_100;
const GROUP: i64 = -1_007_200_000_001;
const WAIT: Duration = Duration::from_secs(30);

fn bridges(discord: &FakeDiscord, telegram: Option<&FakeTelegram>, admin: &str, unlinked: &str) -> String {
    let mut sections = format!(
        "[discord]\ntoken = \"{}\"\napi_url = \"{}\"\nbridge_guilds = [{GUILD}]\n\n",
        discord.token(),
        discord.api_url()
    );
    if let Some(telegram) = telegram {
        sections.push_str(&format!(
            "[telegram]\ntoken = \"{}\"\napi_url = \"{}\"\npoll_timeout_secs = 1\nbridge_chats = [{GROUP}]\n\n",
            telegram.token(),
            telegram.api_url()
        ));
    }
    sections.push_str(&format!(
        "[permissions]\n\"*\" = \"none\"\n\"localhost\" = \"user\"\n\"{admin}\" = \"admin\"\n\
         [permissions.discord]\nunlinked = \"{unlinked}\"\n[permissions.telegram]\nunlinked = \"{unlinked}\"\n"
    ));
    sections
}

#[tokio::test(flavor = "multi_thread")]
async fn reactions_cross_between_matrix_discord_and_telegram_and_are_taken_back() {
    let discord = FakeDiscord::start().await;
    discord.add_channel(GUILD, GENERAL, "general");
    discord.add_user(DAN, "dan", Some("Dan"), false);
    let telegram = FakeTelegram::start().await;
    telegram.add_supergroup(GROUP, "Team chat", false);
    // Telegram tells a bot about reactions only where it is an administrator.
    telegram.set_member_status(GROUP, "administrator");
    let slot = slot("reactions");
    let alice = Person::new("rx-alice").await;
    let delivery = "\n[delivery]\nmax_attempts = 2\nmax_backoff_secs = 1\n";
    slot.write_config_with_sections(&format!(
        "{}{delivery}",
        bridges(&discord, Some(&telegram), &alice.user_id, "relay")
    ));
    mosaic(&slot, &["account", "create", "rx-alice", "--matrix-id", &alice.user_id]).expect_success();
    let _service = Service::start(&slot).await;
    let echo = slot.agent("echo");
    let room = alice.create_room(&[&echo], true).await;
    alice.wait_for_member(&room, &echo).await;
    alice.bridge(&room, &echo, "discord", GENERAL, "general").await;
    alice.bridge(&room, &echo, "telegram", GROUP, "Team chat").await;
    let dan_ghost = format!("@mosaic_reactions_discord_{DAN}:{}", crate::support::SERVER_NAME);
    let tom = TgUser::new(5151, "Tom", None, Some("tom"));
    let tom_ghost = format!("@mosaic_reactions_telegram_{}:{}", tom.id, crate::support::SERVER_NAME);

    // Alice's message, on all three surfaces.
    let hello = alice.say(&room, "hello all").await;
    let on_discord = discord
        .wait_for_sent(|s| s.username.as_deref() == Some("rx-alice (Matrix)") && s.content == "hello all", WAIT)
        .await
        .expect("Alice's message reaches Discord")
        .id;
    let on_telegram = telegram
        .wait_for_sent(|s| s.chat_id == GROUP && s.text == "rx-alice (Matrix): hello all", WAIT)
        .await
        .message_id;

    // Dan reacts on Discord: his ghost reacts in Matrix, the bot on Telegram.
    discord.user_reacts(GENERAL, on_discord, DAN, "👍");
    alice.wait_for_reactions(&room, &hello, |r| r.contains(&(dan_ghost.clone(), "👍".into()))).await;
    telegram.wait_for_bot_reactions(GROUP, on_telegram, |r| r == ["👍"], WAIT).await;

    // Tom reacts on Telegram: his ghost in Matrix, the bot on Discord. Telegram keeps
    // showing Dan's: Tom's own reaction is there already.
    telegram.push_reaction(GROUP, on_telegram, &tom, &[], &["❤"]);
    alice.wait_for_reactions(&room, &hello, |r| r.contains(&(tom_ghost.clone(), "❤".into()))).await;
    discord.wait_for_bot_reactions(GENERAL, on_discord, |r| r == ["❤"], WAIT).await;
    assert_eq!(telegram.bot_reactions(GROUP, on_telegram), ["👍"]);

    // A custom Discord emoji shows by its name in Matrix; Telegram's bot cannot show it
    // and keeps the newest reaction it can.
    discord.user_reacts(GENERAL, on_discord, DAN, "party_parrot:720000000000000900");
    alice.wait_for_reactions(&room, &hello, |r| r.contains(&(dan_ghost.clone(), ":party_parrot:".into()))).await;

    // Alice reacts in Matrix to Dan's message: the bot reacts on Discord and on Telegram.
    let from_dan = discord.user_says(GENERAL, DAN, "said on discord").send();
    let dan_copy = alice.wait_for(&room, &dan_ghost, |e| body(e) == "said on discord").await;
    let dan_copy = dan_copy["event_id"].as_str().unwrap().to_string();
    let dan_on_telegram = telegram
        .wait_for_sent(|s| s.chat_id == GROUP && s.text == "Dan (Discord): said on discord", WAIT)
        .await
        .message_id;
    // Discord asks to slow down: the reaction comes a little later, once.
    discord.fail_next(1, 429, 0.5);
    let party = alice.react(&room, &dan_copy, "🎉").await;
    discord.wait_for_bot_reactions(GENERAL, from_dan, |r| r == ["🎉"], WAIT).await;
    let puts = discord.requests().into_iter().filter(|r| r.method == "PUT" && r.path.contains(&from_dan.to_string()));
    assert_eq!(puts.map(|r| r.status).collect::<Vec<_>>(), [429, 204]);
    telegram.wait_for_bot_reactions(GROUP, dan_on_telegram, |r| r == ["🎉"], WAIT).await;

    // Taken back, each goes away where it was shown.
    discord.user_unreacts(GENERAL, on_discord, DAN, "👍");
    alice.wait_for_reactions(&room, &hello, |r| !r.contains(&(dan_ghost.clone(), "👍".into()))).await;
    telegram.wait_for_bot_reactions(GROUP, on_telegram, |r| r.is_empty(), WAIT).await;
    telegram.push_reaction(GROUP, on_telegram, &tom, &["❤"], &[]);
    alice.wait_for_reactions(&room, &hello, |r| !r.contains(&(tom_ghost.clone(), "❤".into()))).await;
    discord.wait_for_bot_reactions(GENERAL, on_discord, |r| r.is_empty(), WAIT).await;
    alice.redact(&room, &party).await;
    discord.wait_for_bot_reactions(GENERAL, from_dan, |r| r.is_empty(), WAIT).await;
    telegram.wait_for_bot_reactions(GROUP, dan_on_telegram, |r| r.is_empty(), WAIT).await;

    // Nothing came back: the bot's own reactions on Discord were not taken for people's,
    // and each reaction showed once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(alice.reactions(&room, &hello).await, [(dan_ghost.clone(), ":party_parrot:".to_string())]);
    assert!(alice.reactions(&room, &dan_copy).await.is_empty());
    assert_eq!(discord.bot_reactions(GENERAL, on_discord), Vec::<String>::new());

    // A reaction Discord keeps failing is given up like a message: the room is told once,
    // an admin sees the dead letter, and the other surfaces show it all the same.
    discord.fail_next(8, 500, 0.0);
    alice.react(&room, &hello, "👀").await;
    telegram.wait_for_bot_reactions(GROUP, on_telegram, |r| r == ["👀"], WAIT).await;
    let notice = alice.wait_for(&room, &echo, |e| body(e).starts_with("Could not deliver")).await;
    assert_eq!(
        body(&notice),
        "Could not deliver rx-alice's reaction to Discord: Discord could not be reached. An admin can retry it with `mosaic-as jobs`."
    );
    let listed = mosaic(&slot, &["jobs", "list"]).expect_success();
    assert!(listed.lines().any(|l| l.contains(&format!("chat:discord:{GENERAL}"))), "{listed}");
    assert!(discord.bot_reactions(GENERAL, on_discord).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn reactions_a_discord_moderator_clears_are_taken_back_in_matrix() {
    let discord = FakeDiscord::start().await;
    discord.add_channel(GUILD, GENERAL, "general");
    discord.add_user(DAN, "dan", Some("Dan"), false);
    let slot = slot("cleared");
    let alice = Person::new("cl-alice").await;
    slot.write_config_with_sections(&bridges(&discord, None, &alice.user_id, "relay"));
    mosaic(&slot, &["account", "create", "cl-alice", "--matrix-id", &alice.user_id]).expect_success();
    let _service = Service::start(&slot).await;
    let echo = slot.agent("echo");
    let room = alice.create_room(&[&echo], true).await;
    alice.wait_for_member(&room, &echo).await;
    alice.bridge(&room, &echo, "discord", GENERAL, "general").await;
    let dan_ghost = format!("@mosaic_cleared_discord_{DAN}:{}", crate::support::SERVER_NAME);
    let hello = alice.say(&room, "hello dan").await;
    let on_discord =
        discord.wait_for_sent(|s| s.content == "hello dan", WAIT).await.expect("Alice's message reaches Discord").id;
    discord.user_reacts(GENERAL, on_discord, DAN, "👍");
    discord.user_reacts(GENERAL, on_discord, DAN, "🎉");
    alice.react(&room, &hello, "👀").await;
    let dans = |key: &str| (dan_ghost.clone(), key.to_string());
    alice.wait_for_reactions(&room, &hello, |r| r.contains(&dans("👍")) && r.contains(&dans("🎉"))).await;
    discord.wait_for_bot_reactions(GENERAL, on_discord, |r| r == ["👀"], WAIT).await;

    // A moderator clears the message's reactions on Discord: Dan's go away in Matrix;
    // Alice's own stays there.
    discord.reactions_cleared(GENERAL, on_discord);
    alice.wait_for_reactions(&room, &hello, |r| !r.contains(&dans("👍")) && !r.contains(&dans("🎉"))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(alice.reactions(&room, &hello).await, [(alice.user_id.clone(), "👀".to_string())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn reactions_of_people_the_service_ignores_are_neither_bridged_nor_kept() {
    let discord = FakeDiscord::start().await;
    discord.add_channel(GUILD, GENERAL, "general");
    discord.add_user(DAN, "dan", Some("Dan"), false);
    let slot = slot("strangers");
    let alice = Person::new("st-alice").await;
    let troll = Person::new("st-troll").await;
    let mut sections = bridges(&discord, None, &alice.user_id, "none");
    sections = sections.replace(
        "\"localhost\" = \"user\"\n",
        &format!("\"localhost\" = \"user\"\n\"{}\" = \"none\"\n", troll.user_id),
    );
    slot.write_config_with_sections(&sections);
    mosaic(&slot, &["account", "create", "st-alice", "--matrix-id", &alice.user_id]).expect_success();
    let _service = Service::start(&slot).await;
    let echo = slot.agent("echo");
    let room = alice.create_room(&[&echo, &troll.user_id], false).await;
    troll.join(&room).await;
    alice.wait_for_member(&room, &echo).await;
    alice.bridge(&room, &echo, "discord", GENERAL, "general").await;
    let hello = alice.say(&room, "hello strangers").await;
    let on_discord = discord
        .wait_for_sent(|s| s.content == "hello strangers", WAIT)
        .await
        .expect("Alice's message reaches Discord")
        .id;

    // Dan has not linked an account, and unlinked Discord people are `none` here; the
    // troll is `none` in Matrix.
    discord.user_reacts(GENERAL, on_discord, DAN, "🦀");
    troll.react(&room, &hello, "🐙").await;
    // Alice's own reaction, after theirs, crosses: by then theirs were handled.
    alice.react(&room, &hello, "🎉").await;
    discord.wait_for_bot_reactions(GENERAL, on_discord, |r| r == ["🎉"], WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(discord.bot_reactions(GENERAL, on_discord), ["🎉"], "the troll's reaction reached Discord");
    let dan_ghost = format!("@mosaic_strangers_discord_{DAN}:{}", crate::support::SERVER_NAME);
    let in_matrix = alice.reactions(&room, &hello).await;
    assert!(in_matrix.iter().all(|(sender, _)| sender != &dan_ghost), "Dan's reaction reached Matrix: {in_matrix:?}");
    // Only the homeserver's transaction journal holds the troll's event as it came in;
    // the message log keeps neither reaction.
    for key in ["🦀", "🐙"] {
        let columns = database_columns_holding(&slot.database_path(), key).await;
        assert!(columns.iter().all(|c| c.starts_with("inbox_events.")), "{key} is kept in {columns:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reaction_to_an_agents_answer_reaches_it_at_its_next_turn_without_starting_one() {
    let slot = slot("agentreact");
    // An agent that answers with the reactions it was told about (in other words, so that
    // its own answers do not read as reactions).
    slot.write_config_with_agents(
        r#"
[[agent]]
id = "listener"
display_name = "Listener"
runtime = "command"
command = ["sh", "-c", "grep -o '[^\"]* reacted [^\"]*' | sed 's/ reacted / gave /' | grep . || echo 'no reactions'"]
"#,
    );
    let _service = Service::start(&slot).await;
    let alice = Person::new("ar-alice").await;
    let listener = slot.agent("listener");
    let room = alice.create_room(&[&listener], true).await;
    alice.wait_for_member(&room, &listener).await;

    let first = alice.say(&room, "first").await;
    let answer = alice.wait_for_reply(&room, &listener, &first).await;
    assert_eq!(body(&answer), "no reactions");
    let liked = alice.react(&room, answer["event_id"].as_str().unwrap(), "👍").await;
    let second = alice.say(&room, "second").await;
    assert_eq!(body(&alice.wait_for_reply(&room, &listener, &second).await), "ar-alice gave 👍");
    // Taken back, the reaction is no longer in what the agent reads.
    alice.redact(&room, &liked).await;
    let third = alice.say(&room, "third").await;
    assert_eq!(body(&alice.wait_for_reply(&room, &listener, &third).await), "no reactions");
    // The reaction started no turn of its own.
    let answers = alice.messages(&room).await.into_iter().filter(|e| e["sender"] == listener.as_str()).count();
    assert_eq!(answers, 3);
}
