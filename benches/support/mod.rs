//! Shared by the benches (`#[path = "support/mod.rs"] mod support;`): the real
//! `mosaic-as serve` in a temporary directory, an HTTP client for it, and small helpers.
//!
//! Every item here must be used by every bench that includes it, or it warns as dead code.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tempfile::TempDir;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
/// Variables that would override the generated config in the child.
const CHILD_ENV_OVERRIDES: &[&str] = &[
    "MOSAIC_AS_CONFIG",
    "MOSAIC_AS_AS_TOKEN",
    "MOSAIC_AS_HS_TOKEN",
    "MOSAIC_AS_DATABASE_URL",
    "MOSAIC_AS_HOMESERVER_URL",
];

// ---------------------------------------------------------------------------------------
// The server under test

/// A running `mosaic-as serve` in its own temporary directory; killed when dropped.
pub struct Server {
    child: Child,
    pub base_url: String,
    pub hs_token: String,
    log_path: PathBuf,
    _dir: TempDir,
}

/// `mosaic-as init` has written its config and `registration.yaml`; not serving yet.
pub struct Prepared {
    dir: TempDir,
    listen: SocketAddr,
    hs_token: String,
}

impl Prepared {
    /// The directory holding `mosaic-as.toml`, `registration.yaml` and the SQLite database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `mosaic-as serve` on the prepared config, logging to `serve.log` beside it.
    pub fn serve(self) -> anyhow::Result<Server> {
        let config_path = self.dir().join("mosaic-as.toml");
        let log_path = self.dir().join("serve.log");
        let child = mosaic_command()
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log_path)?)
            .spawn()
            .context("cannot start mosaic-as serve")?;
        Ok(Server {
            child,
            base_url: format!("http://{}", self.listen),
            hs_token: self.hs_token,
            log_path,
            _dir: self.dir,
        })
    }
}

impl Server {
    /// `mosaic-as init` into a temporary directory with `init_args` (`--server-name`,
    /// `--homeserver-url`, ...) plus `--listen` on a free loopback port and `--dir`;
    /// appends `config_addition` to the generated config when given; then `serve`.
    // The homeserver bench registers the service with Synapse between the two halves.
    #[allow(dead_code)]
    pub fn start(init_args: &[&str], config_addition: Option<&str>) -> anyhow::Result<Self> {
        Self::prepare(init_args, config_addition)?.serve()
    }

    /// The `init` half of [`Server::start`], for callers that need the registration
    /// before the service runs (to hand it to a homeserver first).
    pub fn prepare(init_args: &[&str], config_addition: Option<&str>) -> anyhow::Result<Prepared> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let listen = free_loopback_addr()?;
        let status = mosaic_command()
            .arg("init")
            .args(init_args)
            .args(["--listen", &listen.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .status()
            .context("cannot run mosaic-as init")?;
        if !status.success() {
            bail!("mosaic-as init exited with {status}");
        }
        let config_path = dir.path().join("mosaic-as.toml");
        if let Some(addition) = config_addition {
            let mut config = std::fs::read_to_string(&config_path).context("cannot read the generated config")?;
            config.push_str(addition);
            std::fs::write(&config_path, config).context("cannot add to the generated config")?;
        }
        let hs_token = read_hs_token(&config_path)?;
        Ok(Prepared { dir, listen, hs_token })
    }

    /// The process id of `mosaic-as serve`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `GET {path}` (e.g. `/health`, `/ready`) until it answers 200.
    pub async fn wait_until_ok(&mut self, client: &reqwest::Client, path: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let url = format!("{}{path}", self.base_url);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("mosaic-as serve exited during startup with {status}");
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("mosaic-as serve did not answer {url} with 200 within {STARTUP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits for a clean exit; kills it when that takes too long.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            bail!("mosaic-as serve had already exited");
        }
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("mosaic-as serve exited with {status}"))
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!("mosaic-as serve did not stop within {SHUTDOWN_TIMEOUT:?} of SIGTERM; killed")
    }

    pub fn print_log_tail(&self) {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("--- last lines of the mosaic-as serve log ---");
        for line in &lines[lines.len().saturating_sub(20)..] {
            eprintln!("{line}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The binary under test (`MOSAIC_BENCH_BINARY`, e.g. an earlier build to compare with,
/// else this build's), with config overrides from our environment removed and loopback
/// kept off any proxy.
fn mosaic_command() -> Command {
    let binary = std::env::var_os("MOSAIC_BENCH_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_mosaic-as").into());
    let mut command = Command::new(binary);
    for name in CHILD_ENV_OVERRIDES {
        command.env_remove(name);
    }
    command.env("NO_PROXY", "127.0.0.1,localhost");
    command
}

fn read_hs_token(config_path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let table: toml::Table = text.parse().context("config is not TOML")?;
    table
        .get("appservice")
        .and_then(|a| a.get("hs_token"))
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .context("config has no appservice.hs_token")
}

/// A 127.0.0.1 port that was free a moment ago (bound and released at once).
/// Runs a bench's async body on a multi-threaded runtime; a failure is printed with its
/// causes and ends the process with a failure code.
pub fn run_main<F: std::future::Future<Output = anyhow::Result<()>>>(bench: &str, body: F) -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(body) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{bench} benchmark failed: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?)
}

/// A client for the server under test: no proxy, `REQUEST_TIMEOUT` per request.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build()?)
}

// ---------------------------------------------------------------------------------------
// Events and figures

/// A unique event id shaped like a room v4+ one: `$` and 43 URL-safe characters.
pub fn event_id() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("${a}{}", &b[..11])
}

/// Milliseconds since the Unix epoch, as in `origin_server_ts`.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Nearest-rank percentile of sorted samples.
// Not every bench that includes this module reports latencies.
#[allow(dead_code)]
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
