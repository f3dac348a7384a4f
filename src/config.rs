//! The typed configuration file (`mosaic-as.toml`) and its environment overrides.
//!
//! Secrets may come from the environment instead of the file so that the file can be
//! shared or committed to an operator's own repository without them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "MOSAIC_AS_CONFIG";
/// Default config file path.
pub const DEFAULT_CONFIG_PATH: &str = "mosaic-as.toml";

/// Sets one config value from an environment variable.
type Setter = fn(&mut Config, String);

/// Environment overrides: variable name, config key, setter.
const ENV_OVERRIDES: &[(&str, &str, Setter)] = &[
    ("MOSAIC_AS_AS_TOKEN", "appservice.as_token", |c, v| c.appservice.as_token = v),
    ("MOSAIC_AS_HS_TOKEN", "appservice.hs_token", |c, v| c.appservice.hs_token = v),
    ("MOSAIC_AS_DATABASE_URL", "database.url", |c, v| c.database.url = v),
    ("MOSAIC_AS_HOMESERVER_URL", "homeserver.url", |c, v| c.homeserver.url = v),
    ("MOSAIC_AS_ADMIN_TOKEN", "admin.token", |c, v| c.admin.token = Some(v)),
    ("MOSAIC_AS_METRICS_TOKEN", "metrics.token", |c, v| c.metrics.token = Some(v)),
    ("MOSAIC_AS_HOMESERVER_ADMIN_TOKEN", "retention.homeserver_admin_token", |c, v| {
        c.retention.homeserver_admin_token = Some(v)
    }),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {path} not found; create one with `mosaic-as init --homeserver-url URL --server-name NAME` or pass --config PATH"
    )]
    NotFound { path: PathBuf },
    #[error("config file {path}: cannot read it: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub homeserver: HomeserverConfig,
    pub appservice: AppserviceConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub linking: LinkingConfig,
    #[serde(default)]
    pub bot: BotConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Who may use the service (see `crate::permissions`); when absent, the homeserver's
    /// own users are `user` and everyone else `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<crate::permissions::PermissionsConfig>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub e2ee: E2eeConfig,
    /// The Telegram bridge; off without this section (or `MOSAIC_AS_TELEGRAM_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram: Option<TelegramConfig>,
    /// The Discord bridge; off without this section (or `MOSAIC_AS_DISCORD_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discord: Option<DiscordConfig>,
    /// The agent `!new` puts into new rooms.
    #[serde(default = "default_agent_id")]
    pub default_agent: String,
    #[serde(default = "default_agents", rename = "agent")]
    pub agents: Vec<AgentConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeserverConfig {
    /// Client-server API base URL, e.g. `http://127.0.0.1:8008`.
    pub url: String,
    /// The homeserver's server name: the part after `:` in user ids.
    pub server_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppserviceConfig {
    /// Registration id; used for `POST /_matrix/client/v1/appservice/{id}/ping`.
    #[serde(default = "default_appservice_id")]
    pub id: String,
    /// Address the appservice HTTP server binds to.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// URL at which the homeserver reaches this service (the registration's `url`).
    pub url: String,
    /// Token we present to the homeserver.
    #[serde(default)]
    pub as_token: String,
    /// Token the homeserver presents to us.
    #[serde(default)]
    pub hs_token: String,
    /// Largest transaction body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Folder for the service's own files (the agents' workspaces). Left out: the SQLite
    /// database's folder, or with PostgreSQL the config file's folder. Relative paths are
    /// relative to the config file; `Config::load` fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` (default) or `postgres://user@host/db`.
    #[serde(default = "default_database_url")]
    pub url: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: default_database_url() }
    }
}

/// How long messages are kept, per room type, and how often expired ones are removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(default = "default_personal_days")]
    pub personal_days: i64,
    #[serde(default = "default_team_days")]
    pub team_days: i64,
    #[serde(default = "default_agent_days")]
    pub agent_days: i64,
    /// System and audit rooms (kept longest).
    #[serde(default = "default_system_days")]
    pub system_days: i64,
    /// Seconds between runs of the retention job.
    #[serde(default = "default_retention_interval")]
    pub interval_secs: u64,
    /// Access token of a homeserver admin, to purge expired events there too (Synapse's
    /// purge-history admin API). Without it only mosaic-as's own store is purged.
    #[serde(default)]
    pub homeserver_admin_token: Option<String>,
    /// The fewest days `!retention` may set (0 lets people empty a room's history at the
    /// next pass).
    #[serde(default = "default_min_days")]
    pub min_days: i64,
    /// Days the inbox and the outbox keep work that finished (processed events, done
    /// jobs, dropped dead letters) before the retention job removes it.
    #[serde(default = "default_finished_work_days")]
    pub finished_work_days: i64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            personal_days: default_personal_days(),
            team_days: default_team_days(),
            agent_days: default_agent_days(),
            system_days: default_system_days(),
            interval_secs: default_retention_interval(),
            homeserver_admin_token: None,
            min_days: default_min_days(),
            finished_work_days: default_finished_work_days(),
        }
    }
}

fn default_personal_days() -> i64 {
    365
}
fn default_team_days() -> i64 {
    730
}
fn default_agent_days() -> i64 {
    90
}
fn default_system_days() -> i64 {
    1825
}
fn default_retention_interval() -> u64 {
    3600
}
fn default_min_days() -> i64 {
    1
}
fn default_finished_work_days() -> i64 {
    7
}

/// Per-person limits on the commands that make the service do costly work.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `!new`, `!pair`, `!team create` and `!link` (a token request) one person may send
    /// in a row, on one surface.
    #[serde(default = "default_command_burst")]
    pub command_burst: u32,
    /// Seconds after which one more of them is allowed again.
    #[serde(default = "default_command_refill_secs")]
    pub command_refill_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { command_burst: default_command_burst(), command_refill_secs: default_command_refill_secs() }
    }
}

fn default_command_burst() -> u32 {
    5
}
fn default_command_refill_secs() -> u64 {
    60
}

/// End-to-end encrypted rooms: the bot and each agent get a device of their own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E2eeConfig {
    /// Take part in encrypted rooms (see `docs/encryption.md` for what each homeserver
    /// needs); where a device cannot be set up, encrypted rooms stay unread and the log
    /// says why.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How room keys and other to-device messages reach the devices.
    #[serde(default)]
    pub mode: E2eeMode,
    /// How the devices of the bot and the agents are created.
    #[serde(default)]
    pub devices: E2eeDevices,
    /// Create the rooms that have an agent (`!new`, `!pair`) encrypted. Ignored when
    /// `enabled` is false. Spaces, and rooms where only the bot reads (the welcome chat),
    /// stay plain: on Synapse the bot cannot fetch a room key the homeserver failed to
    /// push, and an agent can.
    #[serde(default = "default_true")]
    pub new_rooms: bool,
}

impl Default for E2eeConfig {
    fn default() -> Self {
        Self { enabled: true, mode: E2eeMode::default(), devices: E2eeDevices::default(), new_rooms: true }
    }
}

/// Where the devices' to-device messages come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum E2eeMode {
    /// Pushed in the homeserver's transactions (MSC2409, MSC3202); a device fetches them
    /// with `/sync` only when a message's key is missing.
    #[default]
    Transactions,
    /// Fetched with `/sync` by each device when a message needs a key: for homeservers
    /// that push none. The registration then does not ask for them.
    Sync,
}

/// How a device is created, and so how its requests are authenticated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum E2eeDevices {
    /// MSC4190 where the homeserver accepts it (`PUT /devices/{id}` with the as_token);
    /// the appservice login where it refuses (Conduit 0.10 answers "Device not found").
    #[default]
    Auto,
    /// MSC4190 only: devices created with `PUT /devices/{id}`, requests made with the
    /// as_token and the `device_id` assertion.
    Msc4190,
    /// The appservice login only (`m.login.application_service`): each device has an
    /// access token of its own, kept sealed beside its crypto store. The registration
    /// then leaves out `io.element.msc4190`.
    Login,
}

/// Files carried between surfaces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Largest file fetched from the media repository to pass on; a larger one is
    /// bridged as a note (`[file not bridged: name]`).
    #[serde(default = "default_media_max_bytes")]
    pub max_bytes: u64,
    /// Seconds a fetch may take before the file counts as unavailable for now.
    #[serde(default = "default_media_timeout_secs")]
    pub timeout_secs: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self { max_bytes: default_media_max_bytes(), timeout_secs: default_media_timeout_secs() }
    }
}

fn default_true() -> bool {
    true
}

fn default_media_max_bytes() -> u64 {
    50 * 1024 * 1024
}
fn default_media_timeout_secs() -> u64 {
    120
}

/// How long failing work is retried before it becomes a dead letter (see
/// `mosaic-as jobs`): sends to a surface, agent turns, and pushed events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Tries of one job or pushed event before it is given up.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: i64,
    /// Seconds after which failing work is given up, however few its tries.
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: u64,
    /// Longest wait between two tries, in seconds (the wait doubles from half a second).
    #[serde(default = "default_max_backoff_secs")]
    pub max_backoff_secs: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            max_age_secs: default_max_age_secs(),
            max_backoff_secs: default_max_backoff_secs(),
        }
    }
}

fn default_max_attempts() -> i64 {
    100
}
fn default_max_age_secs() -> u64 {
    24 * 3600
}
fn default_max_backoff_secs() -> u64 {
    300
}

/// The admin HTTP API (`/_mosaic/v1/…`, on the appservice listener unless `listen` is set).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token of the admin API; the API is off without one.
    #[serde(default)]
    pub token: Option<String>,
    /// A listener of its own for the admin API and `/metrics`, which are then no longer
    /// served on `appservice.listen`: the homeserver's push address can be exposed to the
    /// homeserver alone, and this one to operators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Deprecated: Matrix users who are admins. Read as `"<user>" = "admin"` in
    /// `[permissions]` (a key there wins); `serve` warns and `doctor` names the fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matrix_users: Vec<String>,
}

/// Prometheus metrics at `/metrics` (on `admin.listen` when set).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// When set, `/metrics` asks for `Authorization: Bearer <token>`; open without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkingConfig {
    /// Lifetime of a link token in seconds (default 900 = 15 minutes).
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
    /// Failed `!link` attempts allowed per sender within `attempt_window_secs`.
    #[serde(default = "default_max_failed_attempts")]
    pub max_failed_attempts: u32,
    #[serde(default = "default_attempt_window")]
    pub attempt_window_secs: u64,
    /// Revoking a Matrix identity (admin API) also removes the person from every room
    /// and Space this service manages.
    #[serde(default)]
    pub kick_on_revoke: bool,
}

impl Default for LinkingConfig {
    fn default() -> Self {
        Self {
            token_ttl_secs: default_token_ttl(),
            max_failed_attempts: default_max_failed_attempts(),
            attempt_window_secs: default_attempt_window(),
            kick_on_revoke: false,
        }
    }
}

/// How the Telegram adapter receives updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TelegramMode {
    /// `getUpdates` long polling: works behind NAT, needs no public URL.
    #[default]
    Polling,
    /// Telegram posts updates to `webhook_url`, served on the appservice listener.
    Webhook,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The bot token from BotFather; better given as `MOSAIC_AS_TELEGRAM_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Base URL of the Bot API (a local `telegram-bot-api` server, or a test fake).
    #[serde(default = "default_telegram_api_url")]
    pub api_url: String,
    #[serde(default)]
    pub mode: TelegramMode,
    /// Webhook mode: the public HTTPS URL Telegram posts updates to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Long-poll timeout of `getUpdates` in seconds.
    #[serde(default = "default_telegram_poll_timeout")]
    pub poll_timeout_secs: u32,
    /// Chats an admin may bridge without being an administrator of them on Telegram.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridge_chats: Vec<i64>,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        Self {
            token: None,
            api_url: default_telegram_api_url(),
            mode: TelegramMode::default(),
            webhook_url: None,
            poll_timeout_secs: default_telegram_poll_timeout(),
            bridge_chats: Vec::new(),
        }
    }
}

fn default_telegram_api_url() -> String {
    "https://api.telegram.org".into()
}

fn default_telegram_poll_timeout() -> u32 {
    30
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordConfig {
    /// The bot token of the Discord application; better given as `MOSAIC_AS_DISCORD_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Base URL of Discord's REST API (requests go to `<api_url>/api/v10/…`); the
    /// gateway URL is discovered from it.
    #[serde(default = "default_discord_api_url")]
    pub api_url: String,
    /// Guilds (servers) whose channels an admin may bridge without holding Manage
    /// Webhooks there on Discord.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridge_guilds: Vec<u64>,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self { token: None, api_url: default_discord_api_url(), bridge_guilds: Vec::new() }
    }
}

fn default_discord_api_url() -> String {
    "https://discord.com".into()
}

/// Names of the bot and the ghost namespaces. Changing them after users have talked to
/// the service orphans the old ghosts, so they are set once at `init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    #[serde(default = "default_bot_localpart")]
    pub localpart: String,
    #[serde(default = "default_bot_display_name")]
    pub display_name: String,
    /// Prefix of every ghost localpart: agents are `<prefix>agent_<id>`.
    #[serde(default = "default_ghost_prefix")]
    pub ghost_prefix: String,
    /// Prefix of the room aliases this service owns.
    #[serde(default = "default_alias_prefix")]
    pub alias_prefix: String,
}

impl Default for BotConfig {
    fn default() -> Self {
        Self {
            localpart: default_bot_localpart(),
            display_name: default_bot_display_name(),
            ghost_prefix: default_ghost_prefix(),
            alias_prefix: default_alias_prefix(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Lowercase id; the ghost is `@<ghost_prefix>agent_<id>:<server_name>`.
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// `mxc://` URI of the ghost's avatar.
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// A `SOUL.md`-style file whose text is the agent's system prompt (relative paths are
    /// relative to the config file).
    #[serde(default)]
    pub persona: Option<PathBuf>,
    /// Which runtime answers: `echo` (built in), `openai`, `anthropic`, `command`, `acp`.
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// Model endpoint base URL (`openai`: e.g. `https://api.openai.com/v1`; `anthropic`:
    /// e.g. `https://api.anthropic.com`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Model name (`openai`, `anthropic`).
    #[serde(default)]
    pub model: Option<String>,
    /// Name of the environment variable that holds the API key (`openai`, `anthropic`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Program and its arguments (`command`, `acp`).
    #[serde(default)]
    pub command: Vec<String>,
    /// Longest a turn may take, in seconds.
    #[serde(default = "default_turn_timeout")]
    pub timeout_secs: u64,
    /// How long a permission question waits for a person (`acp`); then it is denied.
    #[serde(default = "default_permission_timeout")]
    pub permission_timeout_secs: u64,
    /// Time permission questions may add to a turn, in seconds, all questions together.
    #[serde(default = "default_max_permission_wait")]
    pub max_permission_wait_secs: u64,
    /// Longest answer, in characters; a longer one is cut there with a note and the
    /// turn ends.
    #[serde(default = "default_max_answer_chars")]
    pub max_answer_chars: usize,
    /// Characters of conversation history given as context.
    #[serde(default = "default_context_chars")]
    pub context_chars: usize,
    /// Most edits of one streamed answer; the final text always arrives.
    #[serde(default = "default_max_edits")]
    pub max_edits: u32,
    /// Turns this agent runs at once across conversations.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most turns this agent starts per minute; more wait their turn (no limit if unset).
    #[serde(default)]
    pub turns_per_minute: Option<u32>,
    /// Folder under which each conversation gets the folder its program works in
    /// (`command`, `acp`). Left out: `<data_dir>/workspaces/<id>`; relative paths are
    /// relative to the config file; `Config::load` fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<PathBuf>,
    /// Environment variables given to the agent's program, beside `PATH`, `LANG` and
    /// `HOME` (`command`, `acp`). They win over those three.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Names of variables of this service's environment passed on to the agent's program
    /// (an API key, say), so that their values need not be in this file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pass_env: Vec<String>,
    /// `user` or `user:group` the agent's program runs as; only when the service runs
    /// as root (`command`, `acp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Who may use this agent: user ids and server names (as keys of `[permissions]`).
    /// Left out: everyone whose level is `user` or more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
}

impl AgentConfig {
    /// An agent with every optional setting at its default.
    pub fn new(id: &str, display_name: &str, runtime: &str) -> Self {
        Self {
            id: id.into(),
            display_name: Some(display_name.into()),
            avatar_url: None,
            persona: None,
            runtime: runtime.into(),
            base_url: None,
            model: None,
            api_key_env: None,
            temperature: None,
            max_tokens: None,
            command: Vec::new(),
            timeout_secs: default_turn_timeout(),
            permission_timeout_secs: default_permission_timeout(),
            max_permission_wait_secs: default_max_permission_wait(),
            max_answer_chars: default_max_answer_chars(),
            context_chars: default_context_chars(),
            max_edits: default_max_edits(),
            concurrency: default_concurrency(),
            turns_per_minute: None,
            workspace: None,
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            run_as: None,
            allowed: None,
        }
    }

    /// Whether this agent's runtime starts programs, which are confined to a workspace.
    pub fn runs_programs(&self) -> bool {
        matches!(self.runtime.as_str(), "command" | "acp")
    }

    pub fn display_name(&self) -> String {
        self.display_name.clone().unwrap_or_else(|| capitalize(&self.id))
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn default_appservice_id() -> String {
    "mosaic".into()
}
pub fn default_listen() -> SocketAddr {
    "127.0.0.1:29330".parse().expect("valid default address")
}
fn default_max_body_bytes() -> usize {
    10 * 1024 * 1024
}
fn default_database_url() -> String {
    "sqlite://mosaic-as.db".into()
}
fn default_token_ttl() -> u64 {
    900
}
fn default_max_failed_attempts() -> u32 {
    5
}
fn default_attempt_window() -> u64 {
    600
}
fn default_bot_localpart() -> String {
    "mosaic-bot".into()
}
fn default_bot_display_name() -> String {
    "Mosaic".into()
}
fn default_ghost_prefix() -> String {
    "mosaic_".into()
}
fn default_alias_prefix() -> String {
    "mosaic-".into()
}
fn default_agent_id() -> String {
    "echo".into()
}
fn default_runtime() -> String {
    "echo".into()
}
fn default_turn_timeout() -> u64 {
    120
}
fn default_permission_timeout() -> u64 {
    300
}
fn default_max_permission_wait() -> u64 {
    600
}
fn default_max_answer_chars() -> usize {
    64_000
}
fn default_context_chars() -> usize {
    24_000
}
fn default_max_edits() -> u32 {
    20
}
fn default_concurrency() -> usize {
    4
}
fn default_agents() -> Vec<AgentConfig> {
    vec![AgentConfig::new("echo", "Echo", "echo")]
}

/// Picks the config path: `--config`, then `MOSAIC_AS_CONFIG`, then `./mosaic-as.toml`.
pub fn resolve_path(cli: Option<PathBuf>) -> PathBuf {
    cli.or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

impl Config {
    /// Reads, applies environment overrides, and validates the config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ConfigError::NotFound { path: path.to_owned() },
            _ => ConfigError::Read { path: path.to_owned(), source },
        })?;
        let mut config = Self::parse(&text).map_err(|(key, message)| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        })?;
        config.apply_env(|name| std::env::var(name).ok());
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_relative_paths(base);
        let invalid =
            |(key, message): (&str, String)| ConfigError::Invalid { path: path.to_owned(), key: key.into(), message };
        let base = std::path::absolute(if base.as_os_str().is_empty() { Path::new(".") } else { base })
            .map_err(|error| invalid(("(file)", format!("cannot tell the config file's folder: {error}"))))?;
        config.resolve_workspaces(&base);
        config.validate().map_err(invalid)?;
        let mut protected = vec![("the config file", base.join(path.file_name().unwrap_or_default()))];
        if let Some(database) = sqlite_file(&config.database.url) {
            protected.push(("the database", base.join(database)));
        }
        if let Ok(cwd) = std::env::current_dir() {
            protected.push(("the service's working directory", cwd));
        }
        config.check_workspaces(&protected).map_err(invalid)?;
        Ok(config)
    }

    /// Parses TOML text, reporting the dotted key path of the first problem.
    pub fn parse(text: &str) -> Result<Self, (String, String)> {
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| ("(syntax)".to_string(), e.to_string().trim().to_string()))?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().message().trim().to_string();
            (if key == "." { "(top level)".into() } else { key }, message)
        })
    }

    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        // The surfaces' bot tokens (`MOSAIC_AS_DISCORD_TOKEN`) are overridden the same way.
        let tokens = crate::surfaces::tokens().map(|token| (token.env, token.set));
        for (name, set) in ENV_OVERRIDES.iter().map(|(name, _key, set)| (*name, *set)).chain(tokens) {
            if let Some(value) = lookup(name).filter(|v| !v.is_empty()) {
                set(self, value);
            }
        }
    }

    /// A relative SQLite path is relative to the config file, not to the working
    /// directory, so that `serve` finds the same database wherever it is started.
    fn resolve_relative_paths(&mut self, base: &Path) {
        for agent in &mut self.agents {
            if let Some(persona) = agent.persona.as_mut().filter(|p| p.is_relative()) {
                *persona = base.join(&*persona);
            }
        }
        if let Some(rest) = self.database.url.strip_prefix("sqlite://") {
            let (file, query) = rest.split_once('?').map_or((rest, None), |(f, q)| (f, Some(q)));
            let file_path = Path::new(file);
            if !file.is_empty() && file_path.is_relative() && !file.starts_with(':') {
                let absolute = base.join(file_path);
                self.database.url = match query {
                    Some(q) => format!("sqlite://{}?{q}", absolute.display()),
                    None => format!("sqlite://{}", absolute.display()),
                };
            }
        }
    }

    /// Fills in `appservice.data_dir` and every agent's `workspace` as absolute paths
    /// (see their docs); `base` is the config file's folder, absolute.
    fn resolve_workspaces(&mut self, base: &Path) {
        let data_dir = match self.appservice.data_dir.take() {
            Some(dir) => base.join(dir),
            None => sqlite_file(&self.database.url)
                .and_then(|file| base.join(file).parent().map(Path::to_path_buf))
                .unwrap_or_else(|| base.to_path_buf()),
        };
        for agent in &mut self.agents {
            agent.workspace = Some(match agent.workspace.take() {
                Some(dir) => base.join(dir),
                None => data_dir.join("workspaces").join(crate::agents::confine::path_component(&agent.id)),
            });
        }
        self.appservice.data_dir = Some(data_dir);
    }

    /// Agent programs get folders of their own: refuses a workspace that is, or holds,
    /// one of the `protected` paths (the config file, the database, the service's
    /// working directory), each named for the message.
    fn check_workspaces(&self, protected: &[(&str, PathBuf)]) -> Result<(), (&'static str, String)> {
        for agent in self.agents.iter().filter(|agent| agent.runs_programs()) {
            let Some(workspace) = agent.workspace.as_deref().map(normalize) else { continue };
            if let Some((what, path)) = protected.iter().find(|(_, path)| normalize(path).starts_with(&workspace)) {
                return Err((
                    "agent.workspace",
                    format!(
                        "agent {:?}: the workspace {} holds {what} ({}); give the agent's programs a folder of their own",
                        agent.id,
                        workspace.display(),
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let env_hint = |var: &str| format!("set it in the file or in the environment variable {var}");
        if self.appservice.as_token.len() < 16 {
            return Err((
                "appservice.as_token",
                format!("expected a random token of at least 16 characters; {}", env_hint("MOSAIC_AS_AS_TOKEN")),
            ));
        }
        if self.appservice.hs_token.len() < 16 {
            return Err((
                "appservice.hs_token",
                format!("expected a random token of at least 16 characters; {}", env_hint("MOSAIC_AS_HS_TOKEN")),
            ));
        }
        if self.admin.token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err((
                "admin.token",
                format!("expected a random token of at least 16 characters; {}", env_hint("MOSAIC_AS_ADMIN_TOKEN")),
            ));
        }
        if self.metrics.token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err((
                "metrics.token",
                format!("expected a random token of at least 16 characters; {}", env_hint("MOSAIC_AS_METRICS_TOKEN")),
            ));
        }
        if self.admin.listen.is_some_and(|admin| admin == self.appservice.listen) {
            return Err((
                "admin.listen",
                "must differ from appservice.listen: leave it out to serve everything on one listener".into(),
            ));
        }
        if self.delivery.max_attempts < 1 {
            return Err(("delivery.max_attempts", "expected at least 1 try".into()));
        }
        // A bridge section without its token is checked when `serve` starts: a token
        // sealed in the database (`mosaic-as secret set`) may stand in for it.
        if url::Url::parse(&self.homeserver.url).is_err() {
            return Err((
                "homeserver.url",
                format!("expected a URL like http://127.0.0.1:8008, got {:?}", self.homeserver.url),
            ));
        }
        if url::Url::parse(&self.appservice.url).is_err() {
            return Err((
                "appservice.url",
                format!("expected a URL like http://127.0.0.1:29330, got {:?}", self.appservice.url),
            ));
        }
        if self.homeserver.server_name.is_empty() || self.homeserver.server_name.contains('/') {
            return Err((
                "homeserver.server_name",
                "expected a server name like example.org (the part after ':' in user ids)".into(),
            ));
        }
        if !(self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return Err(("database.url", "expected sqlite://FILE or postgres://USER@HOST/DB".into()));
        }
        if self.limits.command_burst == 0 {
            return Err(("limits.command_burst", "expected at least 1".into()));
        }
        if self.limits.command_refill_secs == 0 {
            return Err(("limits.command_refill_secs", "expected at least 1 second".into()));
        }
        if let Some(agent) = self.agents.iter().find(|a| a.max_answer_chars == 0) {
            return Err(("agent.max_answer_chars", format!("agent {:?}: expected at least 1 character", agent.id)));
        }
        if self.retention.min_days < 0 {
            return Err(("retention.min_days", "expected a number of days, 0 or more".into()));
        }
        if self.retention.finished_work_days < 1 {
            return Err(("retention.finished_work_days", "expected at least 1 day".into()));
        }
        for localpart in [&self.bot.localpart, &self.bot.ghost_prefix] {
            if !is_localpart(localpart) {
                return Err((
                    "bot",
                    format!("{localpart:?} is not a valid Matrix localpart (lowercase a-z, 0-9, ._=-/)"),
                ));
            }
        }
        for agent in &self.agents {
            if !is_localpart(&agent.id) || agent.id.is_empty() {
                return Err((
                    "agent.id",
                    format!("{:?} is not a valid agent id (lowercase a-z, 0-9, ._=-/)", agent.id),
                ));
            }
            if let Err((key, message)) = crate::agents::check_config(agent) {
                return Err((key, format!("agent {:?}: {message}", agent.id)));
            }
        }
        if let Some(section) = &self.permissions
            && let Some(key) = section.levels.keys().find(|key| !is_permission_key(key))
        {
            return Err((
                "permissions",
                format!("{key:?} is not \"*\", a server name like example.org or a user id like @alice:example.org"),
            ));
        }
        let surfaces = crate::surfaces::built_in();
        if let Some(section) = &self.permissions
            && let Some(key) = section.surfaces.keys().find(|key| !surfaces.bridgeable().any(|s| s.name == *key))
        {
            let names: Vec<&str> = surfaces.bridgeable().map(|s| s.name).collect();
            return Err(("permissions", format!("[permissions.{key}] names no surface ({})", names.join(", "))));
        }
        for agent in &self.agents {
            if let Some(entry) = agent.allowed.iter().flatten().find(|entry| !is_permission_key(entry)) {
                return Err((
                    "agent.allowed",
                    format!(
                        "agent {:?}: {entry:?} is not a server name like example.org or a user id like @alice:example.org",
                        agent.id
                    ),
                ));
            }
        }
        if !self.agents.iter().any(|a| a.id == self.default_agent) {
            return Err((
                "default_agent",
                format!("{:?} is not the id of any [[agent]] in the file", self.default_agent),
            ));
        }
        Ok(())
    }

    pub fn agent(&self, id: &str) -> Option<&AgentConfig> {
        self.agents.iter().find(|a| a.id == id)
    }
}

/// The file of a SQLite database URL; `None` for PostgreSQL and in-memory databases.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let file = rest.split('?').next().unwrap_or_default();
    (!file.is_empty() && !file.starts_with(':')).then(|| PathBuf::from(file))
}

/// `path` with `.` and `..` resolved without looking at the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// `"*"`, a server name or a full user id (`@name:server`).
fn is_permission_key(key: &str) -> bool {
    let server = match key.strip_prefix('@') {
        Some(user) => user.split_once(':').map(|(name, server)| (server, name)).filter(|(_, name)| !name.is_empty()),
        None => Some((key, "")),
    };
    key == "*" || server.is_some_and(|(server, _)| !server.is_empty() && !server.contains(['/', ' ', '@', '*']))
}

fn is_localpart(s: &str) -> bool {
    s.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
        [homeserver]
        url = "http://127.0.0.1:8008"
        server_name = "example.org"

        [appservice]
        url = "http://127.0.0.1:29330"
        as_token = "aaaaaaaaaaaaaaaaaaaa"
        hs_token = "bbbbbbbbbbbbbbbbbbbb"
    "#;

    #[test]
    fn minimal_file_gets_the_documented_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        config.validate().unwrap();
        assert_eq!(config.appservice.listen, default_listen());
        assert_eq!(config.default_agent, "echo");
        assert_eq!(config.agents[0].runtime, "echo");
        assert_eq!(config.linking.token_ttl_secs, 900);
    }

    #[test]
    fn the_admin_listener_is_off_by_default_and_must_be_an_address_of_its_own() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!((config.admin.listen, config.metrics.token), (None, None));
        let apart = Config::parse(&format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9100\"\n")).unwrap();
        apart.validate().unwrap();
        assert_eq!(apart.admin.listen, Some("127.0.0.1:9100".parse().unwrap()));
        let same = Config::parse(&format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:29330\"\n")).unwrap();
        assert_eq!(same.validate().unwrap_err().0, "admin.listen");
    }

    #[test]
    fn a_metrics_token_is_long_and_may_come_from_the_environment() {
        let short = Config::parse(&format!("{MINIMAL}\n[metrics]\ntoken = \"short\"\n")).unwrap();
        let (key, message) = short.validate().unwrap_err();
        assert_eq!(key, "metrics.token");
        assert!(message.contains("MOSAIC_AS_METRICS_TOKEN"), "{message}");
        let mut config = Config::parse(MINIMAL).unwrap();
        config.apply_env(|name| (name == "MOSAIC_AS_METRICS_TOKEN").then(|| "from-the-environment".to_string()));
        assert_eq!(config.metrics.token.as_deref(), Some("from-the-environment"));
    }

    #[test]
    fn a_wrong_value_names_its_key() {
        let text = MINIMAL.replace("url = \"http://127.0.0.1:29330\"", "url = \"x\"\nlisten = \"nonsense\"");
        let (key, message) = Config::parse(&text).unwrap_err();
        assert_eq!(key, "appservice.listen");
        assert!(message.contains("socket address"), "{message}");
    }

    #[test]
    fn environment_overrides_secrets() {
        let mut config = Config::parse(MINIMAL).unwrap();
        config.apply_env(|name| (name == "MOSAIC_AS_HS_TOKEN").then(|| "from-the-environment".to_string()));
        assert_eq!(config.appservice.hs_token, "from-the-environment");
        assert_eq!(config.appservice.as_token, "aaaaaaaaaaaaaaaaaaaa");
    }

    #[test]
    fn missing_token_is_reported_with_its_variable() {
        let text = MINIMAL.replace("as_token = \"aaaaaaaaaaaaaaaaaaaa\"", "");
        let (key, message) = Config::parse(&text).unwrap().validate().unwrap_err();
        assert_eq!(key, "appservice.as_token");
        assert!(message.contains("MOSAIC_AS_AS_TOKEN"));
    }

    /// Loads `text` (after `MINIMAL`) from `mosaic-as.toml` in the folder `conf`.
    fn load_in(conf: &Path, text: &str) -> Result<Config, ConfigError> {
        std::fs::create_dir_all(conf).unwrap();
        let path = conf.join("mosaic-as.toml");
        std::fs::write(&path, format!("{MINIMAL}\n{text}")).unwrap();
        Config::load(&path)
    }

    const CODER: &str =
        "[[agent]]\nid = \"echo\"\n\n[[agent]]\nid = \"coder\"\nruntime = \"command\"\ncommand = [\"true\"]\n";

    #[test]
    fn workspaces_default_to_the_data_dir_beside_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("etc");
        let state = dir.path().join("state");
        let sqlite = format!("[database]\nurl = \"sqlite://{}/mosaic-as.db?mode=rwc\"\n", state.display());
        let config = load_in(&conf, &format!("{CODER}\n{sqlite}")).unwrap();
        assert_eq!(config.appservice.data_dir.as_deref(), Some(state.as_path()));
        assert_eq!(config.agent("coder").unwrap().workspace, Some(state.join("workspaces/coder")));

        // PostgreSQL: beside the config file.
        let postgres = "[database]\nurl = \"postgres://mosaic@localhost/mosaic\"\n";
        let config = load_in(&conf, &format!("{CODER}\n{postgres}")).unwrap();
        assert_eq!(config.agent("coder").unwrap().workspace, Some(conf.join("workspaces/coder")));

        // Relative settings are relative to the config file; odd agent ids are made safe.
        let text = MINIMAL.replace("hs_token", "data_dir = \"data\"\nhs_token");
        std::fs::write(conf.join("mosaic-as.toml"), format!("{text}\n{CODER}\n[[agent]]\nid = \"a/../..\"\nruntime = \"acp\"\ncommand = [\"x\"]\n[[agent]]\nid = \"own\"\nruntime = \"acp\"\ncommand = [\"x\"]\nworkspace = \"agents/own\"\n")).unwrap();
        let config = Config::load(&conf.join("mosaic-as.toml")).unwrap();
        assert_eq!(config.appservice.data_dir.as_deref(), Some(conf.join("data").as_path()));
        assert_eq!(config.agent("coder").unwrap().workspace, Some(conf.join("data/workspaces/coder")));
        let odd = config.agent("a/../..").unwrap().workspace.clone().unwrap();
        assert_eq!(odd.parent(), Some(conf.join("data/workspaces").as_path()));
        assert!(odd.file_name().unwrap().to_str().unwrap().starts_with("_a______-"), "{}", odd.display());
        assert_eq!(config.agent("own").unwrap().workspace, Some(conf.join("agents/own")));
    }

    #[test]
    fn a_workspace_holding_the_service_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("etc");
        for workspace in [".", "..", "/", "sub/../."] {
            let text = format!("{CODER}workspace = \"{workspace}\"\n");
            let Err(ConfigError::Invalid { key, message, .. }) = load_in(&conf, &text) else {
                panic!("workspace = {workspace:?} was accepted")
            };
            assert_eq!(key, "agent.workspace", "{workspace}");
            assert!(message.contains("holds the config file"), "{message}");
        }
        let database = dir.path().join("state/mosaic-as.db");
        let text = format!(
            "{CODER}workspace = \"{}\"\n[database]\nurl = \"sqlite://{}\"\n",
            dir.path().join("state").display(),
            database.display()
        );
        let Err(ConfigError::Invalid { message, .. }) = load_in(&conf, &text) else { panic!("accepted") };
        assert!(message.contains("holds the database"), "{message}");
        // A folder inside the config file's folder holds none of them.
        load_in(&conf, &format!("{CODER}workspace = \"agents\"\n")).unwrap();
    }

    #[test]
    fn permission_keys_and_allowed_lists_are_checked() {
        for key in ["\"*\"", "\"example.org\"", "\"matrix.example.org:8448\"", "\"@alice:example.org\""] {
            let text = format!("{MINIMAL}\n[permissions]\n{key} = \"user\"\n");
            Config::parse(&text).unwrap().validate().unwrap_or_else(|e| panic!("{key}: {e:?}"));
        }
        for key in ["\"@alice\"", "\"@:example.org\"", "\"*.example.org\"", "\"\""] {
            let text = format!("{MINIMAL}\n[permissions]\n{key} = \"user\"\n");
            let (at, message) = Config::parse(&text).unwrap().validate().unwrap_err();
            assert_eq!(at, "permissions", "{key}");
            assert!(message.contains("user id like @alice:example.org"), "{message}");
        }
        let text = format!("{MINIMAL}\n[[agent]]\nid = \"echo\"\nallowed = [\"@bob\"]\n");
        assert_eq!(Config::parse(&text).unwrap().validate().unwrap_err().0, "agent.allowed");
    }

    #[test]
    fn unknown_default_agent_is_rejected() {
        let text = format!("default_agent = \"nobody\"\n{MINIMAL}");
        let (key, _) = Config::parse(&text).unwrap().validate().unwrap_err();
        assert_eq!(key, "default_agent");
    }

    #[test]
    fn finished_work_is_kept_at_least_a_day() {
        assert_eq!(Config::parse(MINIMAL).unwrap().retention.finished_work_days, 7);
        let text = format!("{MINIMAL}\n[retention]\nfinished_work_days = 0\n");
        let (key, message) = Config::parse(&text).unwrap().validate().unwrap_err();
        assert_eq!((key, message.as_str()), ("retention.finished_work_days", "expected at least 1 day"));
    }
}
