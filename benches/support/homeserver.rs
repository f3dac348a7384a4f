//! Support for the benches that need a real homeserver (`#[path = "support/homeserver.rs"]
//! mod homeserver;` beside `support`): a throw-away Synapse from `scripts/synapse.sh`, the
//! mautrix-python reference appservice in its own virtualenv, people acting through the
//! client-server API with one `/sync` long-poll loop each, and resident memory of a
//! process.
//!
//! Everything lives under `<target>/bench/<name>/`, wiped at the start of each run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::{free_loopback_addr, http_client};

pub const SERVER_NAME: &str = "localhost";
const PASSWORD: &str = "bench-password";
/// How long one `/sync` long-poll waits for something to happen.
const SYNC_TIMEOUT_MS: u64 = 30_000;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<target>/bench/<name>`, emptied. `CARGO_TARGET_TMPDIR` is `<target>/tmp`.
pub fn bench_dir(name: &str) -> anyhow::Result<PathBuf> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().context("CARGO_TARGET_TMPDIR has no parent")?;
    let dir = target.join("bench").join(name);
    if dir.join("synapse").exists() {
        // A Synapse left running by an interrupted run.
        let _ = synapse_script(&["stop", "--dir", &dir.join("synapse").to_string_lossy()]);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `scripts/synapse.sh` with `args`; returns its stdout.
fn synapse_script(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("bash")
        .arg(repo().join("scripts/synapse.sh"))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run scripts/synapse.sh")?;
    if !output.status.success() {
        bail!("scripts/synapse.sh {} failed with {}", args.first().unwrap_or(&""), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Resident memory of a process (`VmRSS` from `/proc/<pid>/status`), in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmRSS:")
}

/// The part of a process's resident memory that is its own (`RssAnon`: heap, stacks),
/// not pages of the files it maps (its code above all), which the kernel shares with
/// other processes and can drop and read again.
pub fn own_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "RssAnon:")
}

fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// CPU time a process has used so far, user and system (`utime` + `stime` from
/// `/proc/<pid>/stat`, all its threads, in clock ticks of `sysconf(_SC_CLK_TCK)`).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).with_context(|| format!("bad /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let field = |n: usize| -> anyhow::Result<u64> {
        fields.get(n - 3).and_then(|f| f.parse().ok()).with_context(|| format!("no field {n} in /proc/{pid}/stat"))
    };
    let ticks = field(14)? + field(15)?;
    // SAFETY: sysconf only reads a system setting.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_second <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------------------
// Synapse

/// A Synapse on a free loopback port, stopped when dropped.
pub struct Synapse {
    dir: PathBuf,
    port: u16,
}

impl Synapse {
    /// Installs Synapse if needed (`scripts/synapse.sh install`) and starts it in
    /// `dir` with the given appservice registrations.
    pub fn start(dir: &Path, port: u16, registrations: &[&Path]) -> anyhow::Result<Self> {
        synapse_script(&["install"])?;
        let dir_arg = dir.to_string_lossy().into_owned();
        let port_arg = port.to_string();
        let mut args = vec!["start", "--dir", &dir_arg, "--port", &port_arg, "--server-name", SERVER_NAME];
        let registration_args: Vec<String> = registrations.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        for path in &registration_args {
            args.extend(["--registration", path]);
        }
        synapse_script(&args)?;
        Ok(Self { dir: dir.to_path_buf(), port })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        let text = std::fs::read_to_string(self.dir.join("synapse.pid")).context("no synapse.pid")?;
        text.trim().parse().context("bad synapse.pid")
    }

    /// Registers `name` with the shared-secret admin API and logs in.
    pub async fn person(&self, name: &str) -> anyhow::Result<Person> {
        synapse_script(&[
            "register-user",
            "--dir",
            &self.dir.to_string_lossy(),
            "--port",
            &self.port.to_string(),
            "--user",
            name,
            "--password",
            PASSWORD,
        ])?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(SYNC_TIMEOUT_MS) + Duration::from_secs(30))
            .build()?;
        let login: Value = http
            .post(format!("{}/_matrix/client/v3/login", self.url()))
            .json(&json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": PASSWORD,
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(Person {
            user_id: login["user_id"].as_str().context("login without user_id")?.to_string(),
            token: login["access_token"].as_str().context("login without access_token")?.to_string(),
            base_url: self.url(),
            http,
        })
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = synapse_script(&["stop", "--dir", &self.dir.to_string_lossy()]);
    }
}

// ---------------------------------------------------------------------------------------
// The reference appservice (benches/reference/echo_appservice.py)

/// The reference's registration, written before the homeserver starts.
pub struct ReferenceConfig {
    pub registration_path: PathBuf,
    pub base_url: String,
    pub hs_token: String,
    pub bot: String,
}

impl ReferenceConfig {
    /// Writes `registration.json` (JSON is YAML, so Synapse reads it) into `dir`, with a
    /// free port and fresh tokens, its bot `@refecho` and the user namespace `@refecho.*`.
    pub fn write(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let base_url = format!("http://{}", free_loopback_addr()?);
        let hs_token = format!("hs-refecho-{}", uuid::Uuid::new_v4().simple());
        let registration = json!({
            "id": "refecho",
            "url": base_url,
            "as_token": format!("as-refecho-{}", uuid::Uuid::new_v4().simple()),
            "hs_token": hs_token,
            "sender_localpart": "refecho",
            "rate_limited": false,
            "namespaces": {
                "users": [{"exclusive": true, "regex": format!("@refecho.*:{}", SERVER_NAME.replace('.', "\\."))}],
                "aliases": [],
                "rooms": [],
            },
        });
        let registration_path = dir.join("registration.json");
        std::fs::write(&registration_path, serde_json::to_vec_pretty(&registration)?)?;
        Ok(Self { registration_path, base_url, hs_token, bot: format!("@refecho:{SERVER_NAME}") })
    }

    /// Starts the reference (installing its virtualenv on first use) and waits until it
    /// answers `/_matrix/mau/ready`.
    pub async fn start(&self, homeserver_url: &str) -> anyhow::Result<Reference> {
        let python = reference_python()?;
        let log_path = self.registration_path.with_file_name("reference.log");
        let child = Command::new(python)
            .arg(repo().join("benches/reference/echo_appservice.py"))
            .arg("--registration")
            .arg(&self.registration_path)
            .args(["--homeserver", homeserver_url, "--server-name", SERVER_NAME])
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(File::create(&log_path)?)
            .stderr(File::create(log_path.with_extension("err"))?)
            .spawn()
            .context("cannot start the reference appservice")?;
        let mut reference = Reference { child, log_path };
        let client = http_client()?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = reference.child.try_wait()? {
                reference.print_log_tail();
                bail!("the reference appservice exited during startup with {status}");
            }
            if let Ok(response) = client.get(format!("{}/_matrix/mau/ready", self.base_url)).send().await
                && response.status().is_success()
            {
                return Ok(reference);
            }
            if Instant::now() > deadline {
                reference.print_log_tail();
                bail!("the reference appservice was not ready within {STARTUP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `<target>/bench/reference-venv/bin/python`, with `benches/reference/requirements.txt`
/// installed into the virtualenv when they do not import yet.
fn reference_python() -> anyhow::Result<PathBuf> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().context("CARGO_TARGET_TMPDIR has no parent")?;
    let venv = target.join("bench/reference-venv");
    let python = venv.join("bin/python");
    let imports = |python: &Path| {
        Command::new(python)
            .args(["-c", "import mautrix.appservice, aiohttp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && imports(&python) {
        return Ok(python);
    }
    eprintln!("installing the reference appservice's requirements into {}", venv.display());
    let status = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().context("cannot run python3")?;
    if !status.success() {
        bail!("python3 -m venv {} failed with {status}", venv.display());
    }
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(repo().join("benches/reference/requirements.txt"))
        .status()
        .context("cannot run pip")?;
    if !status.success() || !imports(&python) {
        bail!("cannot install benches/reference/requirements.txt into {}", venv.display());
    }
    Ok(python)
}

/// The running reference appservice; killed when dropped.
pub struct Reference {
    child: Child,
    log_path: PathBuf,
}

impl Reference {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits a little for it to exit; kills it otherwise.
    pub fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn print_log_tail(&self) {
        for path in [self.log_path.clone(), self.log_path.with_extension("err")] {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- last lines of {} ---", path.display());
            for line in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// People

/// A person on the homeserver, acting through the client-server API.
pub struct Person {
    pub user_id: String,
    token: String,
    base_url: String,
    http: reqwest::Client,
}

/// A message event as one person's `/sync` returned it, and when.
pub struct Arrival {
    pub room_id: String,
    pub event: Value,
    pub at: Instant,
}

impl Person {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request =
            self.http.request(method, format!("{}/_matrix/client/v3{path}", self.base_url)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| path.to_string())?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {value}");
        }
        Ok(value)
    }

    /// A private room with `invite` invited; returns its id.
    pub async fn create_room(&self, invite: &[&str], direct: bool) -> anyhow::Result<String> {
        let body = json!({"invite": invite, "is_direct": direct, "preset": "private_chat"});
        let created = self.call(reqwest::Method::POST, "/createRoom", Some(body)).await?;
        Ok(created["room_id"].as_str().context("createRoom without room_id")?.to_string())
    }

    pub async fn join(&self, room: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, &format!("/join/{}", enc(room)), Some(json!({}))).await?;
        Ok(())
    }

    /// Waits until `user` has joined `room`.
    pub async fn wait_for_member(&self, room: &str, user: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let members =
                self.call(reqwest::Method::GET, &format!("/rooms/{}/joined_members", enc(room)), None).await?;
            if members["joined"].get(user).is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{user} did not join {room} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a text message; returns its event id once the homeserver has answered.
    pub async fn say(&self, room: &str, body: &str) -> anyhow::Result<String> {
        let txn = uuid::Uuid::new_v4().simple().to_string();
        let path = format!("/rooms/{}/send/m.room.message/{txn}", enc(room));
        let sent = self.call(reqwest::Method::PUT, &path, Some(json!({"msgtype": "m.text", "body": body}))).await?;
        Ok(sent["event_id"].as_str().context("send without event_id")?.to_string())
    }

    /// Starts this person's `/sync` loop: one long-poll after another from the current
    /// position (taken before this returns), each message event in a joined room sent on
    /// the channel with the time its response arrived.
    pub async fn sync_loop(&self) -> anyhow::Result<mpsc::UnboundedReceiver<Arrival>> {
        // Message timelines only, nothing else. The random room in `not_rooms` makes the
        // filter unique, so Synapse cannot answer the first sync from its cache.
        let filter = json!({
            "presence": {"types": []},
            "account_data": {"types": []},
            "room": {
                "not_rooms": [format!("!bench-{}:{SERVER_NAME}", uuid::Uuid::new_v4().simple())],
                "timeline": {"limit": 50, "types": ["m.room.message"]},
                "state": {"types": []},
                "ephemeral": {"types": []},
                "account_data": {"types": []},
            },
        })
        .to_string();
        let first = self.call(reqwest::Method::GET, &format!("/sync?timeout=0&filter={}", enc(&filter)), None).await?;
        let mut since = first["next_batch"].as_str().context("sync without next_batch")?.to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let person = Person {
            user_id: self.user_id.clone(),
            token: self.token.clone(),
            base_url: self.base_url.clone(),
            http: self.http.clone(),
        };
        tokio::spawn(async move {
            // Ends once the receiver is gone (at the latest when its long-poll returns).
            while !tx.is_closed() {
                let path = format!("/sync?since={}&timeout={SYNC_TIMEOUT_MS}&filter={}", enc(&since), enc(&filter));
                let sync = match person.call(reqwest::Method::GET, &path, None).await {
                    Ok(sync) => sync,
                    Err(_) if tx.is_closed() => return,
                    Err(error) => {
                        let error = format!("{error:#}");
                        eprintln!("sync of {} failed, retrying: {}", person.user_id, error.replace(&path, "/sync"));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let at = Instant::now();
                for (room_id, room) in sync["rooms"]["join"].as_object().into_iter().flatten() {
                    for event in room["timeline"]["events"].as_array().into_iter().flatten() {
                        let arrival = Arrival { room_id: room_id.clone(), event: event.clone(), at };
                        if tx.send(arrival).is_err() {
                            return;
                        }
                    }
                }
                if let Some(next) = sync["next_batch"].as_str() {
                    since = next.to_string();
                }
            }
        });
        Ok(rx)
    }
}

/// Waits on a sync loop's channel for a message satisfying `check`, skipping others.
pub async fn wait_for_arrival(
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
    what: &str,
    mut check: impl FnMut(&Arrival) -> bool,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Some(arrival)) if check(&arrival) => return Ok(arrival.at),
            Ok(Some(_)) => continue,
            Ok(None) => bail!("the sync loop ended while waiting for {what}"),
            Err(_) => bail!("{what} did not arrive within 30 s"),
        }
    }
}

/// The event a message replies to.
pub fn reply_target(event: &Value) -> Option<&str> {
    event["content"]["m.relates_to"]["m.in_reply_to"]["event_id"].as_str()
}

fn enc(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}
