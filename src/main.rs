use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use mosaic_as::cli::{self, AccountAction, InitOptions};
use mosaic_as::config::{self, Config};
use mosaic_as::matrix::registration::registration_yaml;
use mosaic_as::namespace::Namespace;
use mosaic_as::store::Store;

/// A Matrix application service that puts AI agents into Matrix rooms, with
/// conversations, teams and linked identities.
#[derive(Parser)]
#[command(name = "mosaic-as", version, propagate_version = true)]
struct Cli {
    /// Config file [default: ./mosaic-as.toml]
    #[arg(long, global = true, env = config::CONFIG_ENV)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new config and registration with fresh random tokens.
    Init(InitOptions),
    /// Print the registration YAML for the homeserver.
    Registration,
    /// Run the appservice.
    Serve,
    /// Bring the database schema up to date.
    Migrate,
    /// Check the database, the homeserver, the as_token and the appservice ping.
    Doctor,
    /// Manage accounts.
    #[command(subcommand)]
    Account(AccountAction),
    /// Issue a single-use link token for an account (printed alone on the last line).
    LinkToken {
        /// Account name
        account: String,
        /// Create the account when it does not exist
        #[arg(long)]
        create: bool,
    },
    /// Register the appservice in the admin room of Conduit, conduwuit or tuwunel.
    RegisterConduit(mosaic_as::conduit::RegisterOptions),
    /// Manage the secrets sealed in the database (bridge tokens, model API keys).
    #[command(subcommand)]
    Secret(mosaic_as::secrets::command::SecretAction),
    /// Dead letters: work that was given up after its retries (list, show, retry, drop).
    #[command(subcommand)]
    Jobs(cli::JobsAction),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOSAIC_AS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("MOSAIC_AS_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(Config::load(&config::resolve_path(path))?)
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init(options) => {
            let (config_path, registration_path) = cli::init(&options)?;
            print!("{}", cli::next_steps(&config_path, &registration_path, &options.server_name));
        }
        Command::Registration => print!("{}", registration_yaml(&load(cli.config)?)),
        Command::Serve => mosaic_as::app::serve(load(cli.config)?).await?,
        Command::Migrate => {
            let config = load(cli.config)?;
            Store::open(&config.database.url).await.context("migration failed")?.close().await;
            println!("database schema is up to date");
        }
        Command::Doctor => {
            let checks = cli::doctor(&load(cli.config)?).await;
            let mut failed = false;
            for check in &checks {
                match &check.result {
                    Ok(detail) if check.warning => println!("WARN  {:<11} {detail}", check.name),
                    Ok(detail) => println!("OK    {:<11} {detail}", check.name),
                    Err(detail) => {
                        failed = true;
                        println!("FAIL  {:<11} {detail}", check.name);
                    }
                }
            }
            return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
        }
        Command::Account(action) => return cli::account(&load(cli.config)?, action).await,
        Command::Jobs(action) => return cli::jobs(&load(cli.config)?, action).await,
        Command::RegisterConduit(options) => return mosaic_as::conduit::register(&load(cli.config)?, &options).await,
        Command::Secret(action) => {
            return mosaic_as::secrets::command::run_with_stdio(action, || load(cli.config)).await;
        }
        Command::LinkToken { account, create } => {
            let config = load(cli.config)?;
            let (token, created) = cli::link_token(&config, &account, create).await?;
            if created {
                println!("Created account {account}.");
            }
            let bot = Namespace::from_config(&config).bot_user_id();
            let minutes = config.linking.token_ttl_secs.div_ceil(60);
            println!("Link token for account {account} (single use, valid {minutes} minutes).");
            println!("Send `!link <token>` to {bot} in a direct chat. Token:");
            println!("{token}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
