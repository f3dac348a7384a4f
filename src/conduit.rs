//! `mosaic-as register-conduit`: registers the appservice through the admin room of
//! Conduit, conduwuit or tuwunel, which have no config-file route for registrations.
//!
//! It logs in as a server admin, finds the admin room `#admins:<server_name>`, joins it if
//! needed, sends the server bot's `register` command with the registration YAML in a code
//! block, and waits for the bot's answer. The admin's password and access token come from
//! the environment and are never printed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::{Value, json};

use crate::config::Config;
use crate::matrix::registration::registration_yaml;
use crate::secrets;

/// Default environment variable holding the admin's password.
pub const PASSWORD_ENV: &str = "MOSAIC_AS_CONDUIT_ADMIN_PASSWORD";

/// Which server the admin room belongs to: the command syntax differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// Conduit: `@conduit:<server>: register-appservice`
    Conduit,
    /// conduwuit: `!admin appservices register`
    Conduwuit,
    /// tuwunel: `!admin appservices register`
    Tuwunel,
}

/// `mosaic-as register-conduit`.
#[derive(Debug, clap::Args)]
pub struct RegisterOptions {
    /// The server admin to act as: a user id (@admin:example.org) or a localpart.
    /// Required with a password; with an access token the token names the user.
    #[arg(long, value_name = "USER")]
    pub admin_user: Option<String>,
    /// Environment variable that holds the admin's password
    #[arg(long, value_name = "VAR", default_value = PASSWORD_ENV)]
    pub password_env: String,
    /// Environment variable that holds an access token of the admin (used instead of a
    /// password)
    #[arg(long, value_name = "VAR")]
    pub access_token_env: Option<String>,
    /// The homeserver software, which decides the admin command's syntax
    #[arg(long, value_enum, default_value_t = Flavor::Conduit)]
    pub flavor: Flavor,
    /// Print the message instead of sending it (needs no credentials and no homeserver)
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds to wait for the server bot's answer; 0 does not wait
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub wait: u64,
}

/// The server bot's user id: every flavor keeps Conduit's `@conduit`.
pub fn server_user(config: &Config) -> String {
    format!("@conduit:{}", config.homeserver.server_name)
}

/// The admin room's alias.
pub fn admin_room_alias(config: &Config) -> String {
    format!("#admins:{}", config.homeserver.server_name)
}

/// The admin command's first line.
pub fn command_line(config: &Config, flavor: Flavor) -> String {
    match flavor {
        Flavor::Conduit => format!("{}: register-appservice", server_user(config)),
        Flavor::Conduwuit | Flavor::Tuwunel => "!admin appservices register".into(),
    }
}

/// The admin command that lists registered appservices, for the operator to check.
fn list_command(config: &Config, flavor: Flavor) -> String {
    match flavor {
        Flavor::Conduit => format!("{}: list-appservices", server_user(config)),
        Flavor::Conduwuit | Flavor::Tuwunel => "!admin appservices list".into(),
    }
}

/// The `m.room.message` content: the command line, then the YAML in a code block. Conduit
/// reads the plain `body` and wants the fences on lines of their own, without a language.
pub fn message_content(config: &Config, flavor: Flavor) -> Value {
    let command = command_line(config, flavor);
    let mut yaml = registration_yaml(config);
    if !yaml.ends_with('\n') {
        yaml.push('\n');
    }
    let body = format!("{command}\n```\n{yaml}```");
    let html = format!("<p>{}</p>\n<pre><code>{}</code></pre>\n", escape_html(&command), escape_html(&yaml));
    json!({
        "msgtype": "m.text",
        "body": body,
        "format": "org.matrix.custom.html",
        "formatted_body": html,
    })
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Runs the command; prints what it did and the server bot's answer.
pub async fn register(config: &Config, options: &RegisterOptions) -> anyhow::Result<ExitCode> {
    let alias = admin_room_alias(config);
    let content = message_content(config, options.flavor);
    if options.dry_run {
        println!("Dry run: this message would be sent to {alias}:");
        println!();
        println!("{}", content["body"].as_str().unwrap_or_default());
        println!();
        println!("Nothing was sent. The message contains the appservice's tokens: keep it private.");
        return Ok(ExitCode::SUCCESS);
    }

    let session = Session::open(config, options).await?;
    let outcome = send_and_wait(config, options, &session, &alias, &content).await;
    session.close().await;
    outcome
}

async fn send_and_wait(
    config: &Config,
    options: &RegisterOptions,
    session: &Session,
    alias: &str,
    content: &Value,
) -> anyhow::Result<ExitCode> {
    let room_id = session.resolve_admin_room(alias).await?;
    session.join_if_needed(&room_id, alias).await?;
    let txn = format!("mosaic-register-{}", secrets::random_hex(8));
    let sent = session
        .request(reqwest::Method::PUT, &["rooms", &room_id, "send", "m.room.message", &txn], Some(content))
        .await
        .map_err(|e| anyhow!("cannot send the command to {alias}: {e}"))?;
    let event_id = sent["event_id"].as_str().unwrap_or_default().to_string();

    let bot = server_user(config);
    println!(
        "Sent the registration of appservice {:?} to {alias} ({room_id}) as {}.",
        config.appservice.id, session.user_id
    );
    println!("Check:");
    println!("  - the server bot {bot} answers \"Appservice registered with ID: {}\";", config.appservice.id);
    println!("  - `{}` in {alias} lists {};", list_command(config, options.flavor), config.appservice.id);
    println!("  - then `mosaic-as serve` runs and `mosaic-as doctor` reports as_token and ping OK.");

    if options.wait == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    println!("Waiting up to {} s for the answer of {bot}…", options.wait);
    match session.wait_for_answer(&room_id, &event_id, Duration::from_secs(options.wait)).await? {
        Some((sender, body)) => {
            println!("{sender} answered:");
            for line in body.lines() {
                println!("  {line}");
            }
            match classify(&body) {
                Answer::Registered => {
                    println!("The appservice is registered.");
                    Ok(ExitCode::SUCCESS)
                }
                Answer::Refused => {
                    eprintln!(
                        "error: the server refused the registration; fix what its answer names, then run register-conduit again"
                    );
                    Ok(ExitCode::FAILURE)
                }
                Answer::Other => {
                    println!("The answer does not say whether the registration worked: check it above.");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        None => {
            eprintln!(
                "warning: no answer in {alias} within {} s. If this is not a {} server, or the server bot is not in \
                 the admin room, the command was not run: check the room, or pass --flavor.",
                options.wait,
                match options.flavor {
                    Flavor::Conduit => "Conduit",
                    Flavor::Conduwuit => "conduwuit",
                    Flavor::Tuwunel => "tuwunel",
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Registered,
    Refused,
    Other,
}

/// Reads the server bot's answer: Conduit and its forks say "Appservice registered with
/// ID: …" on success, and "Failed to register …", "Could not parse …" or "Expected code
/// block …" otherwise.
fn classify(body: &str) -> Answer {
    let lower = body.to_lowercase();
    if ["failed", "could not", "expected", "error", "invalid", "unrecognized", "unknown"]
        .iter()
        .any(|word| lower.contains(word))
    {
        Answer::Refused
    } else if lower.contains("registered") {
        Answer::Registered
    } else {
        Answer::Other
    }
}

/// A logged-in admin on the homeserver.
struct Session {
    http: reqwest::Client,
    base: url::Url,
    token: String,
    user_id: String,
    /// Whether we created the device by logging in, and so log out at the end.
    logged_in: bool,
}

/// A failed client-server request: its status and Matrix error, or a network error.
#[derive(Debug)]
enum CallError {
    Matrix { status: reqwest::StatusCode, errcode: String, error: String },
    Network(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Matrix { status, errcode, error } => write!(f, "{status} {errcode}: {error}"),
            CallError::Network(error) => write!(f, "{error}"),
        }
    }
}

impl CallError {
    fn errcode(&self) -> Option<&str> {
        match self {
            CallError::Matrix { errcode, .. } => Some(errcode),
            CallError::Network(_) => None,
        }
    }
}

fn read_env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

impl Session {
    async fn open(config: &Config, options: &RegisterOptions) -> anyhow::Result<Session> {
        let base = url::Url::parse(&config.homeserver.url).context("homeserver.url is not a URL")?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        if let Some(var) = &options.access_token_env {
            let token = read_env(var).ok_or_else(|| {
                anyhow!("the environment variable {var} is empty or not set; put the admin's access token there")
            })?;
            let mut session = Session { http, base, token, user_id: String::new(), logged_in: false };
            let me = session.request(reqwest::Method::GET, &["account", "whoami"], None).await.map_err(|e| match e
                .errcode()
            {
                Some("M_UNKNOWN_TOKEN" | "M_MISSING_TOKEN" | "M_FORBIDDEN") => {
                    anyhow!("the homeserver does not accept the access token in {var} ({e}); check the token")
                }
                _ => homeserver_error(config, e),
            })?;
            session.user_id = me["user_id"].as_str().unwrap_or_default().to_string();
            return Ok(session);
        }

        let user = options.admin_user.clone().ok_or_else(|| {
            anyhow!(
                "--admin-user is required: the server admin to log in as, e.g. @admin:{}",
                config.homeserver.server_name
            )
        })?;
        let password = read_env(&options.password_env).ok_or_else(|| {
            anyhow!(
                "the environment variable {} is empty or not set; put the admin password of {user} there \
                 (or name another variable with --password-env, or use --access-token-env)",
                options.password_env
            )
        })?;
        let mut session = Session { http, base, token: String::new(), user_id: user.clone(), logged_in: false };
        let body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "initial_device_display_name": "mosaic-as register-conduit",
        });
        let login = session.request(reqwest::Method::POST, &["login"], Some(&body)).await.map_err(|e| match e
            .errcode()
        {
            Some("M_FORBIDDEN") => anyhow!(
                "the homeserver refused the login of {user} ({e}); check the admin password in {} and the user name",
                options.password_env
            ),
            Some("M_USER_DEACTIVATED") => anyhow!("{user} is deactivated; log in as another server admin"),
            _ => homeserver_error(config, e),
        })?;
        session.token = login["access_token"].as_str().unwrap_or_default().to_string();
        session.user_id = login["user_id"].as_str().unwrap_or(&user).to_string();
        session.logged_in = true;
        Ok(session)
    }

    /// Logs out the device `open` created, so no session is left behind.
    async fn close(self) {
        if self.logged_in
            && let Err(error) = self.request(reqwest::Method::POST, &["logout"], Some(&json!({}))).await
        {
            eprintln!("warning: could not log out the session of {}: {error}", self.user_id);
        }
    }

    async fn resolve_admin_room(&self, alias: &str) -> anyhow::Result<String> {
        match self.request(reqwest::Method::GET, &["directory", "room", alias], None).await {
            Ok(found) => found["room_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("the homeserver answered the lookup of {alias} without a room id")),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Err(anyhow!(
                "is this a Conduit server? the admin room {alias} was not found. Conduit, conduwuit and tuwunel \
                 create it with the first user; on Synapse, list the registration in app_service_config_files \
                 instead (see registration/README.md)"
            )),
            Err(e) => Err(anyhow!("cannot look up the admin room {alias}: {e}")),
        }
    }

    async fn join_if_needed(&self, room_id: &str, alias: &str) -> anyhow::Result<()> {
        let joined = self
            .request(reqwest::Method::GET, &["joined_rooms"], None)
            .await
            .map_err(|e| anyhow!("cannot list the rooms of {}: {e}", self.user_id))?;
        let member = joined["joined_rooms"].as_array().is_some_and(|rooms| rooms.iter().any(|r| r == room_id));
        if member {
            return Ok(());
        }
        self.request(reqwest::Method::POST, &["join", room_id], Some(&json!({}))).await.map_err(|e| {
            anyhow!(
                "{} is not in the admin room {alias} and cannot join it ({e}); only server admins may: log in as \
                 the first user registered on the server, or have an admin invite this user",
                self.user_id
            )
        })?;
        println!("Joined {alias} as {}.", self.user_id);
        Ok(())
    }

    /// Waits for the first message after `event_id` from someone else; returns its sender
    /// and body.
    async fn wait_for_answer(
        &self,
        room_id: &str,
        event_id: &str,
        wait: Duration,
    ) -> anyhow::Result<Option<(String, String)>> {
        let deadline = Instant::now() + wait;
        loop {
            let page = self
                .request_query(reqwest::Method::GET, &["rooms", room_id, "messages"], &[("dir", "b"), ("limit", "50")])
                .await
                .map_err(|e| anyhow!("cannot read the admin room: {e}"))?;
            // Newest first: the answer comes before our own event in this list.
            let mut answer = None;
            for event in page["chunk"].as_array().into_iter().flatten() {
                if event["event_id"] == event_id {
                    break;
                }
                if event["type"] == "m.room.message" && event["sender"] != self.user_id.as_str() {
                    answer = Some((
                        event["sender"].as_str().unwrap_or_default().to_string(),
                        event["content"]["body"].as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
            if answer.is_some() {
                return Ok(answer);
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
    }

    async fn request(&self, method: reqwest::Method, path: &[&str], body: Option<&Value>) -> Result<Value, CallError> {
        self.send(method, path, &[], body).await
    }

    async fn request_query(
        &self,
        method: reqwest::Method,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Value, CallError> {
        self.send(method, path, query, None).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| CallError::Network("homeserver.url cannot be a base URL".into()))?
            .pop_if_empty()
            .extend(["_matrix", "client", "v3"])
            .extend(path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self.http.request(method, url);
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| CallError::Network(e.without_url().to_string()))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        Err(CallError::Matrix {
            status,
            errcode: value["errcode"].as_str().unwrap_or("(none)").to_string(),
            error: value["error"].as_str().unwrap_or_default().to_string(),
        })
    }
}

fn homeserver_error(config: &Config, error: CallError) -> anyhow::Error {
    match error {
        CallError::Network(detail) => anyhow!(
            "cannot reach the homeserver at {}: {detail}; check homeserver.url (or MOSAIC_AS_HOMESERVER_URL) and that \
             the homeserver runs",
            config.homeserver.url
        ),
        other => anyhow!("the homeserver at {} answered {other}", config.homeserver.url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"
            [homeserver]
            url = "http://conduit:6167"
            server_name = "example.org"
            [appservice]
            url = "http://mosaic-as:29330"
            as_token = "aaaaaaaaaaaaaaaaaaaa"
            hs_token = "bbbbbbbbbbbbbbbbbbbb"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn conduit_message_is_the_command_then_the_yaml_in_a_fenced_block() {
        let config = config();
        let content = message_content(&config, Flavor::Conduit);
        let body = content["body"].as_str().unwrap();
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines[0], "@conduit:example.org: register-appservice");
        assert_eq!(lines[1], "```");
        assert_eq!(*lines.last().unwrap(), "```");
        let yaml = lines[2..lines.len() - 1].join("\n");
        assert_eq!(format!("{yaml}\n"), registration_yaml(&config));
        let html = content["formatted_body"].as_str().unwrap();
        assert!(html.starts_with("<p>@conduit:example.org: register-appservice</p>"), "{html}");
        assert!(html.contains("<pre><code>id: mosaic\n"), "{html}");
        assert_eq!(content["format"], "org.matrix.custom.html");
    }

    #[test]
    fn forks_use_the_admin_prefix() {
        let config = config();
        for flavor in [Flavor::Conduwuit, Flavor::Tuwunel] {
            let content = message_content(&config, flavor);
            assert!(content["body"].as_str().unwrap().starts_with("!admin appservices register\n```\nid: mosaic\n"));
        }
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify("Appservice registered with ID: mosaic."), Answer::Registered);
        assert_eq!(classify("Failed to register appservice: missing url"), Answer::Refused);
        assert_eq!(classify("Could not parse appservice config: bad"), Answer::Refused);
        assert_eq!(classify("Expected code block in command body. Add --help for details."), Answer::Refused);
        assert_eq!(classify("Done."), Answer::Other);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape_html("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    }
}
