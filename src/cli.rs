//! The operator commands behind the CLI: `init`, `doctor`, `link-token`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ruma::api::client::account::whoami;
use ruma::api::client::appservice::request_ping;

use crate::config::Config;
use crate::matrix::client::HomeserverClient;
use crate::matrix::registration::registration_yaml;
use crate::namespace::Namespace;
use crate::secrets;
use crate::store::dead_letters::{self, DeadLetterId};
use crate::store::{Store, accounts};

/// `mosaic-as init`: where the homeserver is and where to write the files.
#[derive(Debug, clap::Args)]
pub struct InitOptions {
    /// Client-server API URL of the homeserver, e.g. http://127.0.0.1:8008
    #[arg(long)]
    pub homeserver_url: String,
    /// The homeserver's server name (the part after ':' in user ids)
    #[arg(long)]
    pub server_name: String,
    /// Address mosaic-as listens on
    #[arg(long, default_value_t = crate::config::default_listen())]
    pub listen: SocketAddr,
    /// URL at which the homeserver reaches mosaic-as [default: http://<listen>]
    #[arg(long)]
    pub appservice_url: Option<String>,
    /// Database URL [default: sqlite://mosaic-as.db beside the config]
    #[arg(long)]
    pub database_url: Option<String>,
    /// Directory to write mosaic-as.toml and registration.yaml into
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite existing files (and their tokens)
    #[arg(long)]
    pub force: bool,
    /// A Matrix user id made an admin of the service (bridging, admin commands)
    #[arg(long, value_name = "@USER:SERVER")]
    pub admin: Option<String>,
}

/// Writes a fresh config and registration with new random tokens.
pub fn init(options: &InitOptions) -> anyhow::Result<(PathBuf, PathBuf)> {
    let config_path = options.dir.join("mosaic-as.toml");
    let registration_path = options.dir.join("registration.yaml");
    for path in [&config_path, &registration_path] {
        if path.exists() && !options.force {
            bail!("{} already exists; pass --force to overwrite it (this replaces its tokens)", path.display());
        }
    }
    std::fs::create_dir_all(&options.dir).with_context(|| format!("cannot create {}", options.dir.display()))?;
    let appservice_url = options.appservice_url.clone().unwrap_or_else(|| format!("http://{}", options.listen));
    let database_url = options.database_url.clone().unwrap_or_else(|| "sqlite://mosaic-as.db".into());
    if let Some(admin) = &options.admin {
        ruma::UserId::parse(admin.as_str())
            .map_err(|_| anyhow::anyhow!("--admin {admin:?} is not a Matrix user id like @alice:example.org"))?;
    }
    let text = config_template(options, &appservice_url, &database_url);
    let config = Config::parse(&text)
        .map_err(|(key, message)| anyhow::anyhow!("generated config is invalid at {key}: {message}"))?;
    config.validate().map_err(|(key, message)| anyhow::anyhow!("{key}: {message}"))?;
    write_private(&config_path, &text)?;
    write_private(&registration_path, &registration_yaml(&config))?;
    Ok((config_path, registration_path))
}

fn config_template(options: &InitOptions, appservice_url: &str, database_url: &str) -> String {
    let as_token = secrets::random_hex(32);
    let hs_token = secrets::random_hex(32);
    format!(
        r#"# mosaic-as configuration. Secrets can be left out here and given as
# MOSAIC_AS_AS_TOKEN, MOSAIC_AS_HS_TOKEN and MOSAIC_AS_DATABASE_URL instead.

# The agent `!new` puts into new rooms: the id of one [[agent]] below.
default_agent = "echo"

[homeserver]
# Client-server API of the homeserver, as mosaic-as reaches it.
url = "{homeserver_url}"
# The part after ':' in user ids.
server_name = "{server_name}"

[appservice]
id = "mosaic"
# Where mosaic-as listens, and the URL at which the homeserver reaches it.
listen = "{listen}"
url = "{appservice_url}"
as_token = "{as_token}"
hs_token = "{hs_token}"

[database]
# sqlite://FILE (relative to this file) or postgres://USER:PASSWORD@HOST/DB
url = "{database_url}"

[admin]
# The admin API (/_mosaic/v1/…) is off until it has a token (or MOSAIC_AS_ADMIN_TOKEN);
# make one with `openssl rand -hex 32`.
# token = "…"
# Recommended: the admin API and /metrics on an address of their own, no longer on
# `listen` above, so that `listen` need only be reachable from the homeserver.
# listen = "127.0.0.1:9100"

[metrics]
# When set, /metrics asks for `Authorization: Bearer <token>` (or MOSAIC_AS_METRICS_TOKEN).
# token = "…"

[linking]
token_ttl_secs = 900
max_failed_attempts = 5
attempt_window_secs = 600

[bot]
localpart = "mosaic-bot"
display_name = "Mosaic"
ghost_prefix = "mosaic_"
alias_prefix = "mosaic-"

# Who may use the service: "*", a server name or a user id, the most specific key wins.
# none: ignored (invites refused, messages dropped); relay: bridged but not answered;
# user: talks to agents and uses commands; admin: also bridges chats and acts in every room.
[permissions]
"*" = "none"
"{server_name}" = "user"
{admin_line}
# People on Discord and Telegram who have not linked an account: "relay" (their messages
# are bridged, agents do not answer them), "none" or "user".
[permissions.discord]
unlinked = "relay"

[permissions.telegram]
unlinked = "relay"

# Agents appear as @<ghost_prefix>agent_<id>:<server_name>.
[[agent]]
id = "echo"
display_name = "Echo"
runtime = "echo"
"#,
        homeserver_url = options.homeserver_url,
        server_name = options.server_name,
        listen = options.listen,
        admin_line = options.admin.as_ref().map(|admin| format!("\"{admin}\" = \"admin\"\n")).unwrap_or_default(),
    )
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let mut file = open.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The next steps printed by `init`.
pub fn next_steps(config_path: &Path, registration_path: &Path, server_name: &str) -> String {
    let registration = registration_path.display();
    let config = config_path.display();
    format!(
        "Wrote {config} and {registration}.\n\n\
         Register the appservice with your homeserver:\n\
         - Conduit (and conduwuit, tuwunel): in the admin room, send to @conduit:{server_name}\n\
           \x20 register-appservice\n\
           \x20 ```\n\
           \x20 <contents of {registration}>\n\
           \x20 ```\n\
         - Synapse: add {registration} to app_service_config_files in homeserver.yaml and restart Synapse.\n\n\
         Then start the service and check it:\n\
         \x20 mosaic-as --config {config} serve\n\
         \x20 mosaic-as --config {config} doctor\n"
    )
}

/// One line of `doctor`.
pub struct Check {
    pub name: &'static str,
    pub result: Result<String, String>,
    /// Works, but should be changed (shown as `WARN`; `doctor` still succeeds).
    pub warning: bool,
}

impl Check {
    fn new(name: &'static str, result: Result<String, String>) -> Self {
        Self { name, result, warning: false }
    }
}

/// Who the config makes an admin, and whether it still uses `admin.matrix_users`.
pub fn permissions_check(config: &Config) -> Check {
    let deprecated = &config.admin.matrix_users;
    if !deprecated.is_empty() {
        let keys: Vec<String> = deprecated.iter().map(|user| format!("\"{user}\" = \"admin\"")).collect();
        let detail = format!(
            "admin.matrix_users is deprecated (still read as admins) — fix: remove it and add {} under [permissions]",
            keys.join(", ")
        );
        return Check { name: "permissions", result: Ok(detail), warning: true };
    }
    let detail = match &config.permissions {
        Some(section) => {
            let admins: Vec<&str> = section
                .levels
                .iter()
                .filter(|(_, level)| **level == crate::permissions::Level::Admin)
                .map(|(key, _)| key.as_str())
                .collect();
            match admins.is_empty() {
                true => "[permissions] names no admin: nobody can bridge chats".to_string(),
                false => format!("admins: {}", admins.join(", ")),
            }
        }
        None => format!(
            "no [permissions]: users of {} may use the service, nobody else, and nobody is an admin",
            config.homeserver.server_name
        ),
    };
    Check::new("permissions", Ok(detail))
}

/// Checks the permissions, the database, the homeserver, the `as_token` and the ping
/// round trip.
pub async fn doctor(config: &Config) -> Vec<Check> {
    let mut checks = vec![permissions_check(config)];
    let database = match Store::connect(&config.database.url).await {
        Ok(store) => store.ping().await.map(|_| "database reachable".to_string()).map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    checks.push(Check::new(
        "database",
        database.map_err(|e| {
            format!("{e} — fix: check database.url (or MOSAIC_AS_DATABASE_URL) and that the database server runs")
        }),
    ));
    checks.push(Check::new("listeners", Ok(listeners(config))));

    let versions_url = format!("{}/_matrix/client/versions", config.homeserver.url.trim_end_matches('/'));
    let reachable =
        match reqwest::Client::new().get(&versions_url).timeout(std::time::Duration::from_secs(5)).send().await {
            Ok(response) if response.status().is_success() => {
                Ok(format!("homeserver reachable at {}", config.homeserver.url))
            }
            Ok(response) => Err(format!("{} answered {}", config.homeserver.url, response.status())),
            Err(error) => Err(format!("cannot reach {}: {}", config.homeserver.url, error.without_url())),
        };
    let homeserver_up = reachable.is_ok();
    checks.push(Check::new(
        "homeserver",
        reachable.map_err(|e| format!("{e} — fix: start the homeserver or correct homeserver.url")),
    ));
    if !homeserver_up {
        return checks;
    }

    let client = HomeserverClient::new(&config.homeserver.url, &config.appservice.as_token);
    let bot = Namespace::from_config(config).bot_user_id();
    let token = match client.call(whoami::v3::Request::new(), None).await {
        Ok(me) if me.user_id.as_str() == bot => Ok(format!("as_token accepted, acting as {bot}")),
        Ok(me) => Err(format!(
            "as_token belongs to {}, expected {bot} — fix: register this config's registration.yaml",
            me.user_id
        )),
        Err(error) => Err(format!(
            "{error} — fix: register the output of `mosaic-as registration` with the homeserver (see registration/README.md)"
        )),
    };
    let token_ok = token.is_ok();
    checks.push(Check::new("as_token", token));
    if !token_ok {
        return checks;
    }

    let mut ping = request_ping::v1::Request::new(config.appservice.id.clone());
    ping.transaction_id = Some(format!("mosaic-doctor-{}", secrets::random_hex(8)).into());
    let ping_result = match client.call(ping, None).await {
        Ok(answer) => Ok(format!(
            "homeserver reached mosaic-as at {} in {} ms",
            config.appservice.url,
            answer.duration.as_millis()
        )),
        Err(error) => Err(format!(
            "{error} — fix: start `mosaic-as serve` and make sure the homeserver can reach appservice.url ({})",
            config.appservice.url
        )),
    };
    checks.push(Check::new("ping", ping_result));
    checks
}

/// Where the homeserver pushes and where operators connect; a shared address is allowed
/// (the default) but worth a hint.
fn listeners(config: &Config) -> String {
    let push = config.appservice.listen;
    let metrics = if config.metrics.token.is_some() { "/metrics (token required)" } else { "/metrics" };
    match config.admin.listen {
        Some(admin) => format!("homeserver pushes to {push}; the admin API and {metrics} are on {admin}"),
        None => format!(
            "the admin API and {metrics} share {push} with the homeserver's pushes — hint: set [admin] listen \
             (e.g. \"127.0.0.1:9100\") so that {push} need only be reachable from the homeserver"
        ),
    }
}

/// Issues a link token for the account named `name`, creating it with `create`.
pub async fn link_token(config: &Config, name: &str, create: bool) -> anyhow::Result<(String, bool)> {
    let store = Store::open(&config.database.url).await.context("cannot open the database")?;
    let mut tx = store.begin_write().await?;
    let (account, created) = match accounts::account_by_name(&mut tx, name).await? {
        Some(account) => (account, false),
        None if create => (accounts::create_account(&mut tx, name, None).await?, true),
        None => bail!("no account named {name:?}; pass --create to create it"),
    };
    let token = accounts::issue_link_token(&mut tx, &account.id, config.linking.token_ttl_secs).await?;
    tx.commit().await?;
    store.close().await;
    Ok((token, created))
}

/// `mosaic-as account …`.
#[derive(Debug, clap::Subcommand)]
pub enum AccountAction {
    /// Create an account; with --matrix-id it is linked at once, and the person gets a
    /// personal Space and a welcome message (once `serve` runs).
    Create {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        matrix_id: Option<String>,
    },
    /// List accounts and their linked identities.
    List,
    /// Delete an account (its identities and tokens go with it).
    Delete { name: String },
}

/// Runs an account command against the database; Matrix work it needs is queued for
/// `serve`.
pub async fn account(config: &Config, action: AccountAction) -> anyhow::Result<std::process::ExitCode> {
    let store = Store::open(&config.database.url).await.context("cannot open the database")?;
    let mut tx = store.begin_write().await?;
    match action {
        AccountAction::Create { name, display_name, matrix_id } => {
            if let Some(id) = &matrix_id {
                ruma::UserId::parse(id.as_str()).map_err(|_| {
                    anyhow::anyhow!("--matrix-id {id:?} is not a Matrix user id like @alice:example.org")
                })?;
                if let Some(owner) = accounts::account_for_identity(&mut tx, crate::matrix::CHANNEL, id).await? {
                    bail!("{id} is linked to account {:?} already", owner.name);
                }
            }
            if accounts::account_by_name(&mut tx, &name).await?.is_some() {
                bail!("an account named {name:?} exists already");
            }
            let account =
                crate::hub::lifecycle::provision_account(&mut tx, &name, display_name.as_deref(), matrix_id.as_deref())
                    .await?;
            println!("Created account {} ({}).", account.name, account.id);
            if let Some(id) = matrix_id {
                println!("Linked {id}; the personal Space and a welcome message follow once `mosaic-as serve` runs.");
            }
        }
        AccountAction::List => {
            for account in accounts::list_accounts(&mut tx).await? {
                let identities = accounts::identities_of(&mut tx, &account.id).await?;
                let linked: Vec<String> =
                    identities.iter().map(|i| format!("{} {}", i.channel_name, i.channel_user_id)).collect();
                println!("{}\t{}\t{}", account.name, account.id, linked.join(", "));
            }
        }
        AccountAction::Delete { name } => {
            if !accounts::delete_account(&mut tx, &name).await? {
                bail!("no account named {name:?}");
            }
            println!("Deleted account {name}.");
        }
    }
    tx.commit().await?;
    store.close().await;
    Ok(std::process::ExitCode::SUCCESS)
}

/// `mosaic-as jobs …`: the dead letters.
#[derive(Debug, clap::Subcommand)]
pub enum JobsAction {
    /// List the dead letters, newest first: id, queue, kind, reason, tries, last error.
    List,
    /// Show one dead letter with its payload (`outbox/12`, `inbox/7`).
    Show { id: DeadLetterId },
    /// Put a dead letter back in its queue; a running `serve` picks it up within a second.
    Retry { id: DeadLetterId },
    /// Drop a dead letter for good.
    Drop { id: DeadLetterId },
}

pub async fn jobs(config: &Config, action: JobsAction) -> anyhow::Result<std::process::ExitCode> {
    let store = Store::open(&config.database.url).await.context("cannot open the database")?;
    // One write transaction: a retry or drop is committed before the answer is printed.
    let mut conn = store.begin_write().await?;
    let missing = |id: &DeadLetterId| anyhow::anyhow!("no dead letter {id}: see `mosaic-as jobs list`");
    match action {
        JobsAction::List => {
            let letters = dead_letters::list(&mut conn).await?;
            if letters.is_empty() {
                println!("No dead letters.");
            }
            for letter in letters {
                let when = chrono::DateTime::from_timestamp_millis(letter.failed_at).unwrap_or_default();
                println!(
                    "{}\t{}\t{}\t{}\t{} tries\t{}\t{}",
                    letter.id,
                    when.format("%Y-%m-%d %H:%M:%S"),
                    letter.queue,
                    letter.kind,
                    letter.attempts,
                    letter.reason,
                    letter.error.unwrap_or_default()
                );
            }
        }
        JobsAction::Show { id } => {
            let letter = dead_letters::get(&mut conn, id).await?.ok_or_else(|| missing(&id))?;
            println!("{}", serde_json::to_string_pretty(&letter)?);
        }
        JobsAction::Retry { id } => {
            if !dead_letters::retry(&mut conn, id).await? {
                return Err(missing(&id));
            }
            println!("{id} is back in its queue.");
        }
        JobsAction::Drop { id } => {
            if !dead_letters::drop(&mut conn, id).await? {
                return Err(missing(&id));
            }
            println!("Dropped {id}.");
        }
    }
    conn.commit().await?;
    store.close().await;
    Ok(std::process::ExitCode::SUCCESS)
}
