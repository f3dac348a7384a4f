//! Who may use the service, played from outside through the real homeserver: people the
//! operator refused, ordinary users trying admin commands, an agent kept for a few, and
//! admins bridging chats they do not administer.

use std::time::{Duration, Instant};

use crate::support::fake_discord::{FakeDiscord, MANAGE_WEBHOOKS};
use crate::support::fake_telegram::{FakeTelegram, Incoming, TgUser};
use crate::support::{Person, Service, body, file_contains, mosaic, slot};

const WAIT: Duration = Duration::from_secs(30);

/// Sends `text` and waits for `from`'s answer to it.
async fn ask(person: &Person, room: &str, from: &str, text: &str) -> String {
    let asked = person.say(room, text).await;
    body(&person.wait_for_reply(room, from, &asked).await).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn people_the_operator_did_not_let_in_get_nothing() {
    let slot = slot("perms");
    let troll = Person::new("perms-troll").await;
    let alice = Person::new("perms-alice").await;
    let bob = Person::new("perms-bob").await;
    let old_admin = Person::new("perms-old").await;
    slot.write_config_with_sections(&format!(
        "[admin]\nmatrix_users = [\"{old}\"]\n\n[permissions]\n\"*\" = \"none\"\n\"localhost\" = \"user\"\n\"{troll}\" = \"none\"\n",
        old = old_admin.user_id,
        troll = troll.user_id,
    ));
    let config = std::fs::read_to_string(slot.config_path()).unwrap();
    let coder = format!("[[agent]]\nid = \"coder\"\nruntime = \"echo\"\nallowed = [\"{}\"]\n", alice.user_id);
    std::fs::write(slot.config_path(), format!("{config}\n{coder}")).unwrap();
    let _service = Service::start(&slot).await;
    let (bot, echo, coder) = (slot.bot(), slot.agent("echo"), slot.agent("coder"));

    // Someone set to `none` invites an agent and the bot: both invites are rejected, and
    // nothing is said in those rooms.
    let troll_room = troll.create_room(&[&echo], true).await;
    let troll_dm = troll.create_room(&[&bot], true).await;
    troll.say(&troll_room, "hello echo").await;
    troll.say(&troll_dm, "!help").await;
    for (room, ghost) in [(&troll_room, &echo), (&troll_dm, &bot)] {
        let deadline = Instant::now() + WAIT;
        loop {
            let member = troll.state_or_null(room, &format!("m.room.member/{ghost}")).await;
            if member["membership"] == "leave" {
                break;
            }
            assert!(Instant::now() < deadline, "{ghost} did not reject the invite: {member}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(!troll.joined_members(room).await.contains(ghost));
        let ours = troll.messages(room).await.into_iter().filter(|e| e["sender"] == ghost.as_str()).count();
        assert_eq!(ours, 0, "{ghost} answered someone set to none");
    }

    // An ordinary user cannot bridge a chat, and is told who can.
    let alice_dm = alice.create_room(&[&bot], true).await;
    alice.wait_for_member(&alice_dm, &bot).await;
    let refused = ask(&alice, &alice_dm, &bot, "!bridge telegram -1001234567").await;
    assert!(refused.starts_with("Only admins can bridge chats"), "{refused}");
    assert!(refused.contains(&format!("\"{}\" = \"admin\"", alice.user_id)), "{refused}");

    // An agent kept for Alice answers her; Bob hears once that it does not answer him.
    let bob_room = bob.create_room(&[&coder], true).await;
    bob.wait_for_member(&bob_room, &coder).await;
    let first = bob.say(&bob_room, "hello coder").await;
    let notice = bob.wait_for_reply(&bob_room, &coder, &first).await;
    assert!(body(&notice).contains("answers only the people the operator allowed"), "{notice}");
    bob.say(&bob_room, "hello again").await;
    let marker = ask(&bob, &bob_room, &coder, "!agents").await;
    assert!(marker.contains("Agents"), "{marker}");
    let from_coder: Vec<String> = bob
        .messages(&bob_room)
        .await
        .iter()
        .filter(|e| e["sender"] == coder.as_str())
        .map(|e| body(e).to_string())
        .collect();
    assert_eq!(from_coder.iter().filter(|b| b.contains("answers only")).count(), 1, "{from_coder:?}");
    assert!(!from_coder.iter().any(|b| b.starts_with("hello")), "the agent answered Bob: {from_coder:?}");
    let alice_room = alice.create_room(&[&coder], true).await;
    alice.wait_for_member(&alice_room, &coder).await;
    assert_eq!(ask(&alice, &alice_room, &coder, "hello coder").await, "hello coder");

    // The deprecated admin list still makes admins (this one gets past the admin check
    // to the missing bridge), and the operator is told to move it.
    let old_dm = old_admin.create_room(&[&bot], true).await;
    old_admin.wait_for_member(&old_dm, &bot).await;
    let past_admin_check = ask(&old_admin, &old_dm, &bot, "!bridge telegram -1001234567").await;
    assert!(past_admin_check.starts_with("The telegram bridge is not set up"), "{past_admin_check}");
    assert!(file_contains(&slot.dir.join("serve.log"), "admin.matrix_users is deprecated"));
    let doctor = mosaic(&slot, &["doctor"]);
    assert!(
        doctor.stdout.contains("WARN  permissions") && doctor.stdout.contains(&old_admin.user_id),
        "{}",
        doctor.stdout
    );
}

const GUILD: u64 = 710_000_000_000_000_001;
const OPEN_GUILD: u64 = 710_000_000_000_000_002;
const MEMBERS: u64 = 710_000_000_000_000_010;
const CHANNEL: u64 = 710_000_000_000_000_020;
const OPEN_CHANNEL: u64 = 710_000_000_000_000_021;
const DAN: u64 = 710_000_000_000_000_100;
const GROUP: i64 = -1_007_000_000_001;
const OPEN_GROUP: i64 = -1_007_000_000_002;

#[tokio::test(flavor = "multi_thread")]
async fn admins_bridge_only_chats_they_administer_or_the_operator_allowed() {
    let discord = FakeDiscord::start().await;
    discord.add_channel(GUILD, CHANNEL, "ops");
    discord.add_channel(OPEN_GUILD, OPEN_CHANNEL, "lobby");
    discord.add_user(DAN, "dan", Some("Dan"), false);
    discord.add_role(GUILD, MEMBERS, "members", 0);
    discord.add_member(GUILD, DAN, &[MEMBERS]);
    let telegram = FakeTelegram::start().await;
    telegram.add_supergroup(GROUP, "Ops", false);
    telegram.add_supergroup(OPEN_GROUP, "Lobby", false);
    let tom = TgUser::new(7070, "Tom", None, Some("tomt"));

    let slot = slot("bridgeproof");
    let boss = Person::new("bp-boss").await;
    slot.write_config_with_sections(&format!(
        "[discord]\ntoken = \"{}\"\napi_url = \"{}\"\nbridge_guilds = [{OPEN_GUILD}]\n\n\
         [telegram]\ntoken = \"{}\"\napi_url = \"{}\"\npoll_timeout_secs = 1\nbridge_chats = [{OPEN_GROUP}]\n\n\
         [permissions]\n\"*\" = \"none\"\n\"localhost\" = \"user\"\n\"{}\" = \"admin\"\n",
        discord.token(),
        discord.api_url(),
        telegram.token(),
        telegram.api_url(),
        boss.user_id
    ));
    mosaic(&slot, &["account", "create", "bp-boss", "--matrix-id", &boss.user_id]).expect_success();
    let _service = Service::start(&slot).await;
    let echo = slot.agent("echo");
    let room = boss.create_room(&[&echo], true).await;
    boss.wait_for_member(&room, &echo).await;

    // Without a linked account on the other side, an admin has no proof.
    let no_proof = ask(&boss, &room, &echo, &format!("!bridge discord {CHANNEL}")).await;
    assert!(no_proof.contains("needs proof that you manage it") && no_proof.contains("bridge_guilds"), "{no_proof}");
    let no_proof = ask(&boss, &room, &echo, &format!("!bridge telegram {GROUP}")).await;
    assert!(no_proof.contains("needs proof that you administer it") && no_proof.contains("bridge_chats"), "{no_proof}");

    // Linked, but only a member there: still refused, saying what is missing.
    let token = || {
        let issued = mosaic(&slot, &["link-token", "bp-boss"]).expect_success();
        issued.split_whitespace().find(|w| w.len() == 64).expect("a 64-hex token").to_string()
    };
    discord.user_runs_link(CHANNEL, DAN, Some(&token()));
    discord.wait_for_sent(|s| s.content.contains("Linked"), WAIT).await.expect("the /link answer");
    telegram.push_message(Incoming::text(tom.id, &tom, &format!("/link {}", token())));
    telegram.wait_for_sent(|s| s.chat_id == tom.id && s.text.contains("Linked"), WAIT).await;
    telegram.set_person_status(GROUP, &tom, "member");
    let lacking = ask(&boss, &room, &echo, &format!("!bridge discord {CHANNEL}")).await;
    assert!(lacking.contains("lacks Manage Webhooks"), "{lacking}");
    let lacking = ask(&boss, &room, &echo, &format!("!bridge telegram {GROUP}")).await;
    assert!(lacking.contains("is not an administrator"), "{lacking}");
    let asked = discord.requests();
    assert!(asked.iter().any(|r| r.path.ends_with(&format!("/guilds/{GUILD}/members/{DAN}"))), "Discord was asked");

    // With the right on the other side, the same request bridges the chat.
    discord.add_overwrite(CHANNEL, DAN, true, MANAGE_WEBHOOKS, 0);
    let bridging = ask(&boss, &room, &echo, &format!("!bridge discord {CHANNEL}")).await;
    assert!(bridging.starts_with("Bridging discord chat"), "{bridging}");
    boss.wait_for(&room, &echo, |e| body(e).contains("#ops")).await;
    telegram.set_person_status(GROUP, &tom, "administrator");
    let bridging = ask(&boss, &room, &echo, &format!("!bridge telegram {GROUP}")).await;
    assert!(bridging.starts_with("Bridging telegram chat"), "{bridging}");
    boss.wait_for(&room, &echo, |e| body(e).contains("Ops")).await;

    // Chats the operator allow-listed need no proof.
    let open_room = boss.create_room(&[&echo], true).await;
    boss.wait_for_member(&open_room, &echo).await;
    let bridging = ask(&boss, &open_room, &echo, &format!("!bridge discord {OPEN_CHANNEL}")).await;
    assert!(bridging.starts_with("Bridging discord chat"), "{bridging}");
    let bridging = ask(&boss, &open_room, &echo, &format!("!bridge telegram {OPEN_GROUP}")).await;
    assert!(bridging.starts_with("Bridging telegram chat"), "{bridging}");
    assert!(
        !discord.requests().iter().any(|r| r.path.contains(&format!("/guilds/{OPEN_GUILD}/members"))),
        "an allow-listed server is not asked about its members"
    );
}
