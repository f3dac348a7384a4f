//! `mosaic-as register-conduit` against a real homeserver. Synapse has no admin room of its
//! own, so the test builds one the way Conduit does: a server bot `@conduit:<server>` owns
//! `#admins:<server>` and invites the admin, and the test answers for the bot.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Person, SERVER_NAME, Slot, body, homeserver_url, post_json, slot};

/// The admin password every `Person` of the harness has.
const PASSWORD: &str = "secret-password";

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn register_conduit(slot: &Slot, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(support::binary());
    command
        .arg("--config")
        .arg(slot.config_path())
        .arg("register-conduit")
        .args(args)
        .env("MOSAIC_AS_LOG", "warn")
        .env_remove("MOSAIC_AS_CONDUIT_ADMIN_PASSWORD");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("mosaic-as runs");
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// What `mosaic-as registration` prints for the slot, parsed.
fn registration(slot: &Slot) -> serde_yaml::Value {
    let yaml = support::mosaic(slot, &["registration"]).expect_success();
    serde_yaml::from_str(&yaml).unwrap()
}

/// The YAML inside the message's code block, and the line before it.
fn command_and_yaml(body: &str) -> (String, serde_yaml::Value) {
    let lines: Vec<&str> = body.lines().collect();
    assert!(lines.len() > 3, "{body}");
    assert_eq!(lines[1], "```", "the code block opens on its own line, without a language: {body}");
    assert_eq!(*lines.last().unwrap(), "```", "the code block closes the message: {body}");
    let yaml = lines[2..lines.len() - 1].join("\n");
    (lines[0].to_string(), serde_yaml::from_str(&yaml).expect("the code block is YAML"))
}

#[tokio::test(flavor = "multi_thread")]
async fn registers_the_appservice_in_the_admin_room_and_shows_the_answer() {
    // Any slot's config works: the command only reads the registration and the homeserver.
    let slot = slot("doctor");
    let admin = Person::new_admin("conduit-admin").await;
    let password_env = [("MOSAIC_AS_CONDUIT_ADMIN_PASSWORD", PASSWORD)];

    // Before the admin room exists, the homeserver is evidently not Conduit.
    let missing = register_conduit(&slot, &["--admin-user", &admin.user_id], &password_env);
    assert!(!missing.ok, "{}", missing.stdout);
    let alias = format!("#admins:{SERVER_NAME}");
    assert!(
        missing.stderr.contains("is this a Conduit server?") && missing.stderr.contains(&alias),
        "{}",
        missing.stderr
    );

    // The server bot owns the admin room and has invited the admin, who has not joined.
    let bot = Person::new("conduit").await;
    assert_eq!(bot.user_id, format!("@conduit:{SERVER_NAME}"));
    let admin_room =
        json!({"room_alias_name": "admins", "name": "Admin Room", "preset": "private_chat", "invite": [admin.user_id]});
    let created =
        post_json(&reqwest::Client::new(), "/_matrix/client/v3/createRoom", Some(bot.token()), &admin_room).await;
    let room = created["room_id"].as_str().expect("the admin room is created").to_string();

    // The bot answers the command as Conduit does.
    let admin_id = admin.user_id.clone();
    let answering = {
        let room = room.clone();
        tokio::spawn(async move {
            let command = bot.wait_for(&room, &admin_id, |e| body(e).contains("register-appservice")).await;
            bot.say(&room, "Appservice registered with ID: mosaic-doctor.").await;
            command
        })
    };
    let args = ["--admin-user", &admin.user_id, "--flavor", "conduit", "--wait", "30"];
    let run = {
        let slot = slot.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            register_conduit(&slot, &args, &[("MOSAIC_AS_CONDUIT_ADMIN_PASSWORD", PASSWORD)])
        })
        .await
        .unwrap()
    };
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let command = tokio::time::timeout(Duration::from_secs(30), answering).await.unwrap().unwrap();

    assert!(run.stdout.contains(&format!("Joined {alias}")), "{}", run.stdout);
    assert!(run.stdout.contains("Appservice registered with ID: mosaic-doctor."), "{}", run.stdout);
    assert!(run.stdout.contains("The appservice is registered."), "{}", run.stdout);
    for secret in [PASSWORD, "syt_"] {
        assert!(!run.stdout.contains(secret) && !run.stderr.contains(secret), "{secret:?} printed");
    }
    assert!(admin.joined_members(&room).await.contains(&admin.user_id));

    // The message: the exact command line, then the registration in a code block.
    assert_eq!(command["sender"], admin.user_id.as_str());
    assert_eq!(command["content"]["msgtype"], "m.text");
    let (line, yaml) = command_and_yaml(body(&command));
    assert_eq!(line, format!("@conduit:{SERVER_NAME}: register-appservice"));
    assert_eq!(yaml, registration(&slot));
    assert_eq!(command["content"]["format"], "org.matrix.custom.html");
    let html = command["content"]["formatted_body"].as_str().unwrap();
    assert!(html.contains("<pre><code>id: mosaic-doctor\n"), "{html}");

    // The command's own session is logged out again: only the harness's login remains.
    let devices: Value = reqwest::Client::new()
        .get(format!("{}/_matrix/client/v3/devices", homeserver_url()))
        .bearer_auth(admin.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> =
        devices["devices"].as_array().unwrap().iter().filter_map(|d| d["display_name"].as_str()).collect();
    assert!(!names.contains(&"mosaic-as register-conduit"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_or_missing_password_is_named_and_never_printed() {
    let slot = slot("doctor");
    let admin = Person::new_admin("conduit-wrong").await;
    let wrong = "not-the-password-4f1c";

    let run =
        register_conduit(&slot, &["--admin-user", &admin.user_id], &[("MOSAIC_AS_CONDUIT_ADMIN_PASSWORD", wrong)]);
    assert!(!run.ok);
    assert!(run.stderr.contains("M_FORBIDDEN") && run.stderr.contains("check the admin password"), "{}", run.stderr);
    assert!(run.stderr.contains("MOSAIC_AS_CONDUIT_ADMIN_PASSWORD"), "{}", run.stderr);
    assert!(!run.stdout.contains(wrong) && !run.stderr.contains(wrong), "the password was printed");

    let run = register_conduit(&slot, &["--admin-user", &admin.user_id, "--password-env", "ADMIN_PW"], &[]);
    assert!(!run.ok);
    assert!(run.stderr.contains("ADMIN_PW") && run.stderr.contains("not set"), "{}", run.stderr);

    let run = register_conduit(&slot, &[], &password_env_of(PASSWORD));
    assert!(!run.ok && run.stderr.contains("--admin-user"), "{}", run.stderr);

    let run = register_conduit(&slot, &["--access-token-env", "ADMIN_TOKEN"], &[("ADMIN_TOKEN", "syt_bogus")]);
    assert!(!run.ok && run.stderr.contains("ADMIN_TOKEN") && run.stderr.contains("check the token"), "{}", run.stderr);
    assert!(!run.stderr.contains("syt_bogus"), "the token was printed");
}

fn password_env_of(password: &str) -> [(&'static str, &str); 1] {
    [("MOSAIC_AS_CONDUIT_ADMIN_PASSWORD", password)]
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_message_and_sends_nothing() {
    let slot = slot("doctor");
    // No credentials, and a homeserver URL nobody answers on: nothing is contacted.
    let unreachable = [("MOSAIC_AS_HOMESERVER_URL", "http://127.0.0.1:9")];
    let run = register_conduit(&slot, &["--dry-run"], &unreachable);
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains(&format!("#admins:{SERVER_NAME}")) && run.stdout.contains("Nothing was sent"));
    let message = run.stdout.split("\n\n").nth(1).expect("the message is set apart by blank lines");
    let (line, yaml) = command_and_yaml(message);
    assert_eq!(line, format!("@conduit:{SERVER_NAME}: register-appservice"));
    assert_eq!(yaml, registration(&slot));

    for flavor in ["conduwuit", "tuwunel"] {
        let run = register_conduit(&slot, &["--dry-run", "--flavor", flavor], &unreachable);
        assert!(run.ok, "{}", run.stderr);
        let message = run.stdout.split("\n\n").nth(1).unwrap();
        let (line, yaml) = command_and_yaml(message);
        assert_eq!(line, "!admin appservices register");
        assert_eq!(yaml, registration(&slot));
    }
}
