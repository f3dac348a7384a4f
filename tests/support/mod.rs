//! Test support: a real Synapse on loopback with one appservice registration per test
//! slot, mosaic-as processes, and people acting through the client-server API.
#![allow(dead_code)]

pub mod columns;
pub mod fake_discord;
pub mod fake_openai;
pub mod fake_telegram;
pub mod memory_media;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const SERVER_NAME: &str = "localhost";

/// Every test that runs its own mosaic-as has a slot: its own registration, namespace,
/// port and database, so tests run in parallel against one homeserver. No name may
/// start with another followed by `-` (`soak`, `soak-pg`): the first one's alias
/// namespace (`#mosaic-soak-…`) would cover the second's rooms, and the homeserver would
/// push their events to a service that is not running, then hold back its pushes.
pub const SLOTS: &[&str] = &[
    "echo",
    "group",
    "link",
    "replay",
    "crash",
    "http",
    "rooms",
    "doctor",
    "stream",
    "quick",
    "acp",
    "queue",
    "stop",
    "pair",
    "admin",
    "teams",
    "retention",
    "telegram",
    "discord",
    "power",
    "asker",
    "soak",
    "pgsoak",
    "restart",
    "backlog",
    "giveup",
    "quiet",
    "listeners",
    "perms",
    "bridgeproof",
    "tokens",
    "names",
    "bounds",
    "typing",
    "bridgetyping",
    "peopletyping",
    "progress",
    "reactions",
    "strangers",
    "agentreact",
    "cleared",
    "deletions",
    "encrypted",
    "encryptedsync",
    "encryptedtg",
    "encryptedrooms",
    "encryptedlogin",
];

/// Config sections every config of a slot starts with: what its registration depends on
/// (written before the homeserver reads the registrations), and whether the rooms the
/// service creates are encrypted.
fn registration_sections(slot: &str) -> String {
    // Keys fetched by the devices with /sync, as for a homeserver that pushes none.
    let mode = if matches!(slot, "encryptedsync" | "encryptedlogin") { "mode = \"sync\"\n" } else { "" };
    // Devices made by the appservice login, as on a homeserver without MSC4190.
    let devices = if slot == "encryptedlogin" { "devices = \"login\"\n" } else { "" };
    // The people of most tests read and write in clear, without a device: the rooms the
    // service creates for them (`!new`, `!pair`) stay plain, so that they can read the
    // answers there. The `encryptedrooms` slot has them encrypted, as by default.
    let new_rooms = slot == "encryptedrooms";
    format!("[e2ee]\n{mode}{devices}new_rooms = {new_rooms}\n")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the homeserver and the slots live. `MOSAIC_TEST_WORK_DIR` moves it, so that two
/// checkouts sharing one target directory can run their suites at the same time.
fn work_dir() -> PathBuf {
    std::env::var_os("MOSAIC_TEST_WORK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("homeserver-tests"))
}

pub fn homeserver_url() -> String {
    format!("http://127.0.0.1:{}", homeserver().port)
}

/// POSTs `body` to the homeserver's client API at `path` (e.g. `/_matrix/client/v3/login`),
/// as `token` when given, and returns the JSON answer.
pub async fn post_json(http: &reqwest::Client, path: &str, token: Option<&str>, body: &Value) -> Value {
    let mut request = http.post(format!("{}{path}", homeserver_url())).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

/// A loopback port nobody listens on now, for a homeserver or service started on it later
/// (and started again on it after a stop). Ports are picked per run so that a homeserver
/// or service left over from another checkout never answers for this one.
///
/// The port lies below the kernel's range of ephemeral ports: a port from that range, free
/// when picked, can be given to any outgoing connection before the service binds it (a
/// service once failed to start with "address already in use" that way). Each port is
/// handed out once per process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let first_ephemeral = ephemeral_ports_start().max(2048);
    let lowest = first_ephemeral.saturating_sub(16_000).max(1024);
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..10_000 {
        let mut bytes = [0u8; 2];
        getrandom::fill(&mut bytes).unwrap();
        let port = lowest + u16::from_le_bytes(bytes) % (first_ephemeral - lowest);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port between {lowest} and {first_ephemeral}");
}

/// The first port the kernel hands to outgoing connections and to binds of port 0.
fn ephemeral_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// One appservice registration and the config that goes with it.
#[derive(Clone, Debug)]
pub struct Slot {
    pub name: &'static str,
    pub dir: PathBuf,
    pub port: u16,
    pub hs_token: String,
    pub as_token: String,
}

impl Slot {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("mosaic-as.toml")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn bot(&self) -> String {
        format!("@mosaic-{}-bot:{SERVER_NAME}", self.name)
    }

    pub fn agent(&self, id: &str) -> String {
        format!("@mosaic_{}_agent_{id}:{SERVER_NAME}", self.name)
    }

    /// The admin API token (the `admin` and `teams` slots turn the API on).
    pub fn admin_token(&self) -> String {
        format!("admin-{}", self.hs_token)
    }

    pub fn database_path(&self) -> PathBuf {
        self.dir.join("mosaic-as.db")
    }

    fn write_config(&self, homeserver_port: u16) {
        self.write_config_at(homeserver_port, "", "");
    }

    /// Rewrites the slot's config with more `[[agent]]` tables (the registration does
    /// not change). Call before starting the service.
    pub fn write_config_with_agents(&self, agents: &str) {
        self.write_config_at(homeserver().port, "", agents);
    }

    /// Rewrites the config with more top-level tables (e.g. `[retention]`).
    pub fn write_config_with_sections(&self, sections: &str) {
        self.write_config_at(homeserver().port, sections, "");
    }

    /// Rewrites the config with more top-level tables and more `[[agent]]` tables.
    pub fn write_config_with(&self, sections: &str, agents: &str) {
        self.write_config_at(homeserver().port, sections, agents);
    }

    /// The service's log (its stderr and stdout), as written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// Points the slot's written config at another database.
    pub fn set_database_url(&self, url: &str) {
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        let text = text.replace(r#"url = "sqlite://mosaic-as.db""#, &format!("url = {url:?}"));
        std::fs::write(self.config_path(), text).unwrap();
    }

    fn write_config_at(&self, homeserver_port: u16, sections: &str, agents: &str) {
        // What the registration depends on stays whatever else a test adds.
        let sections = format!("{}{sections}", registration_sections(self.name));
        let text = format!(
            r#"default_agent = "echo"
[homeserver]
url = "http://127.0.0.1:{homeserver_port}"
server_name = "{SERVER_NAME}"
[appservice]
id = "mosaic-{name}"
listen = "127.0.0.1:{port}"
url = "http://127.0.0.1:{port}"
as_token = "{as_token}"
hs_token = "{hs_token}"
max_body_bytes = 262144
[database]
url = "sqlite://mosaic-as.db"
[linking]
token_ttl_secs = {ttl}
max_failed_attempts = 3
attempt_window_secs = 600
kick_on_revoke = {kick}
[bot]
localpart = "mosaic-{name}-bot"
display_name = "Mosaic"
ghost_prefix = "mosaic_{name}_"
alias_prefix = "mosaic-{name}-"
[[agent]]
id = "echo"
display_name = "Echo"
runtime = "echo"
{agents}
"#,
            name = self.name,
            port = self.port,
            as_token = self.as_token,
            hs_token = self.hs_token,
            ttl = if self.name == "link" { 4 } else { 900 },
            kick = self.name == "teams",
        );
        let admin = if matches!(self.name, "admin" | "teams") {
            format!("\n[admin]\ntoken = \"{}\"\n", self.admin_token())
        } else {
            String::new()
        };
        let text = match text.split_once("[[agent]]") {
            // Top-level tables must come before the agent array.
            Some((head, agents)) => format!("{head}{admin}\n{sections}\n[[agent]]{agents}"),
            None => text,
        };
        std::fs::create_dir_all(&self.dir).unwrap();
        std::fs::write(self.config_path(), text).unwrap();
    }
}

pub struct Homeserver {
    pub port: u16,
    pub slots: Vec<Slot>,
    /// The `scripts/synapse.sh start` arguments, to start it again after a stop.
    start_args: Vec<String>,
}

impl Homeserver {
    /// Stops Synapse (as an outage would); [`Homeserver::start_again`] brings it back on
    /// the same port with the same registrations and data.
    pub fn stop(&self) {
        let dir = work_dir().join("synapse");
        run_script(&["stop", "--dir", dir.to_str().unwrap()]);
    }

    pub fn start_again(&self) {
        run_script(&self.start_args.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

static HOMESERVER: OnceLock<Homeserver> = OnceLock::new();

/// The shared Synapse, installed and started on first use. A missing Synapse is an
/// error, never a skipped test.
pub fn homeserver() -> &'static Homeserver {
    HOMESERVER.get_or_init(start_homeserver)
}

pub fn slot(name: &str) -> Slot {
    homeserver().slots.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no slot {name}")).clone()
}

fn run_script(args: &[&str]) -> String {
    let output = Command::new("bash")
        .arg(repo().join("scripts/synapse.sh"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs");
    assert!(output.status.success(), "scripts/synapse.sh {args:?} failed; see its output above");
    String::from_utf8(output.stdout).unwrap()
}

fn start_homeserver() -> Homeserver {
    let dir = work_dir();
    let synapse_dir = dir.join("synapse");
    if synapse_dir.exists() {
        run_script(&["stop", "--dir", synapse_dir.to_str().unwrap()]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    run_script(&["install"]);
    let port = free_port();
    let mut slots = Vec::new();
    let mut registrations = Vec::new();
    for name in SLOTS {
        let slot = Slot {
            name,
            dir: dir.join(name),
            port: free_port(),
            hs_token: format!("hs-{name}-{}", random_hex()),
            as_token: format!("as-{name}-{}", random_hex()),
        };
        slot.write_config(port);
        let mut yaml = mosaic(&slot, &["registration"]).expect_success();
        if slot.name == "encryptedlogin" {
            // What Conduit 0.10 offers: no device list changes or key counts in
            // transactions either (the config already leaves out MSC4190 and to-device).
            yaml =
                yaml.lines().filter(|line| !line.starts_with("org.matrix.msc3202")).map(|l| format!("{l}\n")).collect();
        }
        let path = slot.dir.join("registration.yaml");
        std::fs::write(&path, yaml).unwrap();
        registrations.push(path);
        slots.push(slot);
    }
    let mut args = vec![
        "start".to_string(),
        "--dir".into(),
        synapse_dir.to_str().unwrap().into(),
        "--port".into(),
        port.to_string(),
        "--server-name".into(),
        SERVER_NAME.into(),
    ];
    for path in &registrations {
        args.push("--registration".into());
        args.push(path.to_str().unwrap().into());
    }
    run_script(&args.iter().map(String::as_str).collect::<Vec<_>>());
    Homeserver { port, slots, start_args: args }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).unwrap();
    hex::encode(bytes)
}

/// Output of a finished `mosaic-as` command.
pub struct Output {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn expect_success(self) -> String {
        assert!(self.status.success(), "mosaic-as failed:\n{}\n{}", self.stdout, self.stderr);
        self.stdout
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_mosaic-as")
}

/// Runs a `mosaic-as` command with the slot's config.
pub fn mosaic(slot: &Slot, args: &[&str]) -> Output {
    let output = Command::new(binary())
        .arg("--config")
        .arg(slot.config_path())
        .args(args)
        .env("MOSAIC_AS_LOG", "warn")
        .output()
        .expect("mosaic-as runs");
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running `mosaic-as serve`; killed when dropped.
pub struct Service {
    pub slot: Slot,
    child: Option<Child>,
}

impl Service {
    /// Starts the service and waits until it is ready (homeserver connected).
    pub async fn start(slot: &Slot) -> Service {
        let service = Self::spawn(slot, &[]);
        service.wait_ready(true).await;
        service
    }

    /// Starts the service with extra environment (e.g. a homeserver URL override) and
    /// waits only for its HTTP server.
    pub async fn start_with_env(slot: &Slot, env: &[(&str, &str)]) -> Service {
        let service = Self::spawn(slot, env);
        service.wait_ready(false).await;
        service
    }

    fn spawn(slot: &Slot, env: &[(&str, &str)]) -> Service {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(slot.dir.join("serve.log")).unwrap();
        let mut command = Command::new(binary());
        command
            .arg("--config")
            .arg(slot.config_path())
            .arg("serve")
            .env("MOSAIC_AS_LOG", "info,mosaic_as=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        Service { slot: slot.clone(), child: Some(command.spawn().expect("mosaic-as starts")) }
    }

    async fn wait_ready(&self, homeserver_connected: bool) {
        let path = if homeserver_connected { "/ready" } else { "/health" };
        let url = format!("{}{path}", self.slot.url());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(response) = reqwest::get(&url).await
                && response.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mosaic-as ({}) not ready in 30 s; see {}", self.slot.name, self.slot.dir.join("serve.log").display());
    }

    /// SIGKILL: no shutdown, no flushing — a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A person on the homeserver, acting through the client-server API.
pub struct Person {
    pub user_id: String,
    token: String,
    http: reqwest::Client,
    txn: std::sync::atomic::AtomicU64,
}

impl Person {
    /// Registers (or reuses) `name` and logs in.
    pub async fn new(name: &str) -> Person {
        Self::register(name, false).await
    }

    /// A homeserver administrator.
    pub async fn new_admin(name: &str) -> Person {
        Self::register(name, true).await
    }

    async fn register(name: &str, admin: bool) -> Person {
        homeserver();
        let synapse_dir = work_dir().join("synapse");
        let port = homeserver().port.to_string();
        let mut args = vec![
            "register-user",
            "--dir",
            synapse_dir.to_str().unwrap(),
            "--port",
            &port,
            "--user",
            name,
            "--password",
            "secret-password",
        ];
        if admin {
            args.push("--admin");
        }
        run_script(&args);
        let http = reqwest::Client::new();
        let credentials = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": "secret-password"});
        let login = post_json(&http, "/_matrix/client/v3/login", None, &credentials).await;
        Person {
            user_id: login["user_id"].as_str().expect("login works").to_string(),
            token: login["access_token"].as_str().unwrap().to_string(),
            http,
            txn: Default::default(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/_matrix/client/v3{path}", homeserver_url());
        // Reads may meet a 500 while the homeserver purges history (retention tests).
        let tries = if method == reqwest::Method::GET { 5 } else { 1 };
        for attempt in 1..=tries {
            let mut request = self.http.request(method.clone(), &url).bearer_auth(&self.token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let value: Value = response.json().await.unwrap_or(Value::Null);
            if status.is_server_error() && attempt < tries {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert!(status.is_success(), "{path}: {status} {value}");
            return value;
        }
        unreachable!("the last try returns or panics")
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub async fn create_room(&self, invite: &[&str], direct: bool) -> String {
        let body = json!({"invite": invite, "is_direct": direct, "preset": "private_chat"});
        let created = self.call(reqwest::Method::POST, "/createRoom", Some(body)).await;
        created["room_id"].as_str().unwrap().to_string()
    }

    pub async fn invite(&self, room: &str, user: &str) {
        self.call(reqwest::Method::POST, &format!("/rooms/{}/invite", enc(room)), Some(json!({"user_id": user}))).await;
    }

    pub async fn join(&self, room: &str) {
        self.call(reqwest::Method::POST, &format!("/join/{}", enc(room)), Some(json!({}))).await;
    }

    /// Sends a message; returns its event id.
    pub async fn send(&self, room: &str, content: Value) -> String {
        let txn = self.txn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!("/rooms/{}/send/m.room.message/t{txn}-{}", enc(room), random_hex());
        self.call(reqwest::Method::PUT, &path, Some(content)).await["event_id"].as_str().unwrap().to_string()
    }

    /// Reacts to an event with `key` (an emoji); returns the reaction's event id.
    pub async fn react(&self, room: &str, event_id: &str, key: &str) -> String {
        let txn = self.txn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!("/rooms/{}/send/m.reaction/t{txn}-{}", enc(room), random_hex());
        let content = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}});
        self.call(reqwest::Method::PUT, &path, Some(content)).await["event_id"].as_str().unwrap().to_string()
    }

    /// Redacts an event (people take a reaction back this way).
    pub async fn redact(&self, room: &str, event_id: &str) {
        let txn = self.txn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!("/rooms/{}/redact/{}/t{txn}-{}", enc(room), enc(event_id), random_hex());
        self.call(reqwest::Method::PUT, &path, Some(json!({}))).await;
    }

    /// The reactions under an event as clients show them: `(sender, key)` of every
    /// `m.annotation` that is not redacted, oldest first.
    pub async fn reactions(&self, room: &str, event_id: &str) -> Vec<(String, String)> {
        let url = format!(
            "{}/_matrix/client/v1/rooms/{}/relations/{}/m.annotation?limit=100&dir=f",
            homeserver_url(),
            enc(room),
            enc(event_id)
        );
        let page: Value = self.http.get(url).bearer_auth(&self.token).send().await.unwrap().json().await.unwrap();
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        chunk
            .iter()
            .filter(|e| e["type"] == "m.reaction")
            .filter_map(|e| {
                let key = e["content"]["m.relates_to"]["key"].as_str()?;
                Some((e["sender"].as_str()?.to_string(), key.to_string()))
            })
            .collect()
    }

    /// Waits until the reactions under an event satisfy `check`; returns them.
    pub async fn wait_for_reactions(
        &self,
        room: &str,
        event_id: &str,
        check: impl Fn(&[(String, String)]) -> bool,
    ) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.reactions(room, event_id).await;
            if check(&now) {
                return now;
            }
            assert!(Instant::now() < deadline, "the reactions under {event_id} stayed {now:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn say(&self, room: &str, body: &str) -> String {
        self.send(room, json!({"msgtype": "m.text", "body": body})).await
    }

    /// Sends a message as a person's client does through an outage: the same
    /// transaction id, again and again, until the homeserver takes it.
    pub async fn say_until_accepted(&self, room: &str, body: &str, give_up: Duration) -> String {
        let txn = self.txn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/r{txn}-{}",
            homeserver_url(),
            enc(room),
            random_hex()
        );
        let deadline = Instant::now() + give_up;
        loop {
            let sent = self
                .http
                .put(&url)
                .bearer_auth(&self.token)
                .json(&json!({"msgtype": "m.text", "body": body}))
                .send()
                .await;
            if let Ok(response) = sent
                && response.status().is_success()
                && let Ok(value) = response.json::<Value>().await
            {
                return value["event_id"].as_str().unwrap_or_default().to_string();
            }
            assert!(Instant::now() < deadline, "the homeserver did not take {body:?} within {give_up:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Raw bytes of a client API path (media downloads).
    pub async fn http_get_bytes(&self, path: &str) -> Vec<u8> {
        let response =
            self.http.get(format!("{}{path}", homeserver_url())).bearer_auth(&self.token).send().await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.bytes().await.unwrap().to_vec()
    }

    /// Uploads a file to the media repository; returns its `mxc://` URI.
    pub async fn upload(&self, bytes: &[u8], mime_type: &str, name: &str) -> String {
        let response: Value = self
            .http
            .post(format!("{}/_matrix/media/v3/upload?filename={name}", homeserver_url()))
            .bearer_auth(&self.token)
            .header("Content-Type", mime_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        response["content_uri"].as_str().expect("an mxc URI").to_string()
    }

    /// The room's latest events of every type, oldest first: what the homeserver holds.
    pub async fn timeline(&self, room: &str) -> Vec<Value> {
        let page =
            self.call(reqwest::Method::GET, &format!("/rooms/{}/messages?dir=b&limit=200", enc(room)), None).await;
        let mut events = page["chunk"].as_array().cloned().unwrap_or_default();
        events.reverse();
        events
    }

    /// Every message event of the room, oldest first, page by page.
    pub async fn all_messages(&self, room: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut path = format!("/rooms/{}/messages?dir=b&limit=500", enc(room));
            if let Some(token) = &from {
                path.push_str(&format!("&from={}", enc(token)));
            }
            let page = self.call(reqwest::Method::GET, &path, None).await;
            let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
            events.extend(chunk.iter().filter(|e| e["type"] == "m.room.message").cloned());
            match page["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = Some(end.to_string()),
                _ => break,
            }
        }
        events.reverse();
        events
    }

    /// The room's message events, oldest first.
    pub async fn messages(&self, room: &str) -> Vec<Value> {
        let page =
            self.call(reqwest::Method::GET, &format!("/rooms/{}/messages?dir=b&limit=200", enc(room)), None).await;
        let mut events: Vec<Value> =
            page["chunk"].as_array().unwrap().iter().filter(|e| e["type"] == "m.room.message").cloned().collect();
        events.reverse();
        events
    }

    pub async fn joined_members(&self, room: &str) -> Vec<String> {
        let members = self.call(reqwest::Method::GET, &format!("/rooms/{}/joined_members", enc(room)), None).await;
        members["joined"].as_object().unwrap().keys().cloned().collect()
    }

    /// A state event's content (`type` or `type/state_key`), or null when there is none.
    pub async fn state_or_null(&self, room: &str, type_and_key: &str) -> Value {
        let (event_type, key) = type_and_key.split_once('/').unwrap_or((type_and_key, ""));
        let url = format!("{}/_matrix/client/v3/rooms/{}/state/{event_type}/{}", homeserver_url(), enc(room), enc(key));
        let response = self.http.get(url).bearer_auth(&self.token).send().await.unwrap();
        if response.status().is_success() { response.json().await.unwrap() } else { Value::Null }
    }

    /// A state event's content (`type` or `type/state_key`), which must exist.
    pub async fn state(&self, room: &str, type_and_key: &str) -> Value {
        let content = self.state_or_null(room, type_and_key).await;
        assert!(!content.is_null(), "no {type_and_key} state in {room}");
        content
    }

    /// Rooms this person is invited to.
    pub async fn invites(&self) -> Vec<String> {
        // Synapse caches an initial sync for a while; a filter of its own per call gets a
        // fresh answer.
        let limit = self.txn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let filter = enc(&format!(r#"{{"room":{{"timeline":{{"limit":{limit}}}}}}}"#));
        let sync = self.call(reqwest::Method::GET, &format!("/sync?timeout=0&filter={filter}"), None).await;
        sync["rooms"]["invite"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// The room's ephemeral events (`m.typing`, `m.receipt`) as this person's client
    /// sees them now, from a fresh `/sync`.
    pub async fn ephemeral(&self, room: &str) -> Vec<Value> {
        // A filter of its own per call, so that Synapse answers afresh (see `invites`).
        let limit = self.txn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let filter = json!({
            "presence": {"types": []},
            "account_data": {"types": []},
            "room": {
                "rooms": [room],
                "timeline": {"limit": limit},
                "state": {"types": []},
                "account_data": {"types": []},
                "ephemeral": {"types": ["m.typing", "m.receipt"]},
            },
        });
        let path = format!("/sync?timeout=0&filter={}", enc(&filter.to_string()));
        let sync = self.call(reqwest::Method::GET, &path, None).await;
        sync["rooms"]["join"][room]["ephemeral"]["events"].as_array().cloned().unwrap_or_default()
    }

    /// Types in the room (`true`, for 30 s unless stopped) or stops, as clients do.
    pub async fn set_typing(&self, room: &str, typing: bool) {
        let path = format!("/rooms/{}/typing/{}", enc(room), enc(&self.user_id));
        let body = match typing {
            true => json!({"typing": true, "timeout": 30_000}),
            false => json!({"typing": false}),
        };
        self.call(reqwest::Method::PUT, &path, Some(body)).await;
    }

    /// Who the room shows typing now.
    pub async fn typing(&self, room: &str) -> Vec<String> {
        let events = self.ephemeral(room).await;
        let typing = events.iter().find(|e| e["type"] == "m.typing");
        let users = typing.and_then(|e| e["content"]["user_ids"].as_array()).cloned().unwrap_or_default();
        users.iter().filter_map(|u| u.as_str().map(str::to_string)).collect()
    }

    /// Who the room shows as having read up to `event_id` (public `m.read` receipts).
    pub async fn read_by(&self, room: &str, event_id: &str) -> Vec<String> {
        let events = self.ephemeral(room).await;
        let receipts = events.iter().filter(|e| e["type"] == "m.receipt");
        receipts
            .filter_map(|e| e["content"][event_id]["m.read"].as_object())
            .flat_map(|readers| readers.keys().cloned())
            .collect()
    }

    /// Waits for an invitation to a room named `name`; returns the room and the invite
    /// state (what an invited person sees of the room).
    pub async fn wait_for_invite_named(&self, name: &str) -> (String, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let limit = self.txn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let filter = enc(&format!(r#"{{"room":{{"timeline":{{"limit":{limit}}}}}}}"#));
            let sync = self.call(reqwest::Method::GET, &format!("/sync?timeout=0&filter={filter}"), None).await;
            for (room, invite) in sync["rooms"]["invite"].as_object().cloned().unwrap_or_default() {
                let state = invite["invite_state"]["events"].as_array().cloned().unwrap_or_default();
                if state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == name) {
                    return (room, state);
                }
            }
            assert!(Instant::now() < deadline, "no invitation to a room named {name:?} within 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until a message from `sender` satisfies `check`; returns it.
    /// Says `!bridge <surface> <chat>` in `room` and waits until `speaker` confirms it,
    /// naming the chat as `shown`.
    pub async fn bridge(&self, room: &str, speaker: &str, surface: &str, chat: impl std::fmt::Display, shown: &str) {
        self.say(room, &format!("!bridge {surface} {chat}")).await;
        self.wait_for(room, speaker, |e| body(e).contains(shown)).await;
    }

    pub async fn wait_for(&self, room: &str, sender: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(room, sender, Duration::from_secs(30), check).await
    }

    /// [`Person::wait_for`] with a deadline of `within`: for answers queued behind many others.
    pub async fn wait_for_within(
        &self,
        room: &str,
        sender: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.messages(room).await.into_iter().find(|e| e["sender"] == sender && check(e)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no matching message from {sender} in {room} within {within:?}: {:#?}",
                self.messages(room).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for a message from `sender` that replies to `event_id`.
    pub async fn wait_for_reply(&self, room: &str, sender: &str, event_id: &str) -> Value {
        self.wait_for(room, sender, |e| reply_target(e) == Some(event_id)).await
    }

    /// Creates a room from a full `createRoom` body; returns its id.
    pub async fn create_room_with(&self, body: Value) -> String {
        let created = self.call(reqwest::Method::POST, "/createRoom", Some(body)).await;
        created["room_id"].as_str().unwrap().to_string()
    }

    /// Sends a state event (`type`, `state_key`) with `content`.
    pub async fn put_state(&self, room: &str, event_type: &str, state_key: &str, content: Value) {
        let path = format!("/rooms/{}/state/{event_type}/{}", enc(room), enc(state_key));
        self.call(reqwest::Method::PUT, &path, Some(content)).await;
    }

    /// Sets this person's display name in their profile (and so in their rooms).
    pub async fn set_display_name(&self, name: &str) {
        let path = format!("/profile/{}/displayname", enc(&self.user_id));
        self.call(reqwest::Method::PUT, &path, Some(json!({"displayname": name}))).await;
    }

    /// Waits until `user` has joined `room`.
    pub async fn wait_for_member(&self, room: &str, user: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.joined_members(room).await.iter().any(|m| m == user) {
            assert!(Instant::now() < deadline, "{user} did not join {room} within 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The event a message replies to.
pub fn reply_target(event: &Value) -> Option<&str> {
    event["content"]["m.relates_to"]["m.in_reply_to"]["event_id"].as_str()
}

/// A fresh, empty PostgreSQL database for one test (`MOSAIC_TEST_POSTGRES_URL`, set by
/// `scripts/test.sh`, names the server); its URL.
pub async fn fresh_postgres_database(prefix: &str) -> String {
    use sqlx::Connection;
    let base = std::env::var("MOSAIC_TEST_POSTGRES_URL")
        .expect("MOSAIC_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh, which starts PostgreSQL");
    let name = format!("{prefix}_{}", &random_hex()[..12]);
    mosaic_as::store::install_drivers();
    let mut admin = sqlx::AnyConnection::connect(&base).await.unwrap_or_else(|e| panic!("PostgreSQL at {base}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

pub fn body(event: &Value) -> &str {
    event["content"]["body"].as_str().unwrap_or_default()
}

fn enc(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

/// Pushes a transaction to mosaic-as the way a homeserver does.
pub async fn push_transaction(slot: &Slot, txn_id: &str, events: Value) -> reqwest::Response {
    reqwest::Client::new()
        .put(format!("{}/_matrix/app/v1/transactions/{txn_id}", slot.url()))
        .bearer_auth(&slot.hs_token)
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap()
}

/// A client-format `m.room.message` event as a homeserver pushes it.
pub fn message_event(room: &str, sender: &str, event_id: &str, body: &str) -> Value {
    json!({
        "type": "m.room.message",
        "room_id": room,
        "sender": sender,
        "event_id": event_id,
        "origin_server_ts": chrono_now_ms(),
        "content": {"msgtype": "m.text", "body": body},
        "unsigned": {"age": 1}
    })
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

pub fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path).map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes())).unwrap_or(false)
}

/// The `table.column`s of a SQLite database where `needle` occurs (case-insensitively),
/// in any table and any column, read as text.
pub async fn database_columns_holding(path: &Path, needle: &str) -> Vec<String> {
    use sqlx::Connection;
    mosaic_as::store::install_drivers();
    let url = format!("sqlite://{}?mode=ro", path.display());
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    columns::holding(&mut conn, needle).await
}
