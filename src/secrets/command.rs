//! `mosaic-as secret …`: store, list, delete and re-seal the secrets kept in the database.
//! Values are read from standard input, never from the command line (where they would
//! show in `ps` and in shell history), and are never printed.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::{Keyring, SECRET_KEY_OLD_ENV, SecretKey, SecretString, check_secret_name};
use crate::config::Config;
use crate::store::{Store, sealed};

/// Longest value `secret set` accepts.
const MAX_VALUE_BYTES: u64 = 64 * 1024;

/// `mosaic-as secret …`.
#[derive(Debug, clap::Subcommand)]
pub enum SecretAction {
    /// Seal a value read from standard input and store it under NAME: telegram.token,
    /// discord.token or agent.<id>.api_key (kept for later: agents read their key from
    /// api_key_env). Needs MOSAIC_AS_SECRET_KEY.
    Set {
        /// telegram.token, discord.token or agent.<id>.api_key
        name: String,
    },
    /// List the stored secrets: names, key ids and dates, never values.
    List,
    /// Delete a stored secret.
    Delete { name: String },
    /// Re-seal every stored secret under MOSAIC_AS_SECRET_KEY, opening those sealed under
    /// the previous key with MOSAIC_AS_SECRET_KEY_OLD.
    Rotate,
    /// Print a new random key for MOSAIC_AS_SECRET_KEY.
    GenerateKey,
}

/// Runs a `secret` command; `load_config` is called only by the commands that need the
/// database.
pub async fn run(
    action: SecretAction,
    load_config: impl FnOnce() -> anyhow::Result<Config>,
    stdin: &mut dyn Read,
    stdin_is_terminal: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    if let SecretAction::GenerateKey = action {
        writeln!(out, "{}", SecretKey::generate().to_hex().as_str())?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = load_config()?;
    let store = Store::open(&config.database.url).await.context("cannot open the database")?;
    let result = run_on(&store, &config, action, stdin, stdin_is_terminal, out).await;
    store.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

/// The process's own standard input and output.
pub async fn run_with_stdio(
    action: SecretAction,
    load_config: impl FnOnce() -> anyhow::Result<Config>,
) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdin().is_terminal();
    run(action, load_config, &mut std::io::stdin().lock(), terminal, &mut std::io::stdout().lock()).await
}

async fn run_on(
    store: &Store,
    config: &Config,
    action: SecretAction,
    stdin: &mut dyn Read,
    stdin_is_terminal: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match action {
        SecretAction::Set { name } => {
            check_secret_name(&name)?;
            let keys = Keyring::from_env()?;
            if stdin_is_terminal {
                eprintln!("Type or paste the value of {name} and press Enter (it is not shown afterwards):");
            }
            let value = read_value(stdin, stdin_is_terminal)?;
            super::store_secret(store, &keys, &name, value.expose()).await?;
            writeln!(out, "Stored {name}, sealed under key {}.", keys.current.id())?;
            if let Some(note) = shadowed_by_config(config, &name) {
                writeln!(out, "Note: {note}; that value is used instead of the stored one.")?;
            }
        }
        SecretAction::List => {
            let mut conn = store.conn().await?;
            let rows = sealed::list(&mut conn).await?;
            if rows.is_empty() {
                writeln!(out, "No secrets stored.")?;
            }
            for row in rows {
                let key_id = row.sealed.split(':').nth(1).unwrap_or("?");
                let updated = chrono::DateTime::from_timestamp_millis(row.updated_at)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_default();
                writeln!(out, "{}\tkey {key_id}\tupdated {updated}", row.name)?;
            }
        }
        SecretAction::Delete { name } => {
            let mut tx = store.begin_write().await?;
            if !sealed::delete(&mut tx, &name).await? {
                bail!("no secret named {name:?} is stored (see `mosaic-as secret list`)");
            }
            tx.commit().await?;
            writeln!(out, "Deleted {name}.")?;
        }
        SecretAction::Rotate => {
            let keys = Keyring::from_env()?;
            let rotation = super::rotate(store, &keys).await?;
            let total = rotation.from_old_key + rotation.already_current;
            writeln!(
                out,
                "Re-sealed {total} secret(s) under key {} ({} were under the previous key).",
                keys.current.id(),
                rotation.from_old_key
            )?;
            if keys.old.is_some() {
                writeln!(out, "{SECRET_KEY_OLD_ENV} is no longer needed: remove it from the environment.")?;
            }
        }
        SecretAction::GenerateKey => unreachable!("handled before the database is opened"),
    }
    Ok(())
}

/// Reads the value: one line from a terminal, everything up to end of input otherwise.
/// Surrounding whitespace (the final newline) is dropped; a value must be one line.
fn read_value(stdin: &mut dyn Read, terminal: bool) -> anyhow::Result<SecretString> {
    let mut raw = zeroize::Zeroizing::new(String::new());
    let mut limited = stdin.take(MAX_VALUE_BYTES + 1);
    if terminal {
        std::io::BufReader::new(limited).read_line(&mut raw)?;
    } else {
        limited.read_to_string(&mut raw).context("standard input is not UTF-8 text")?;
    }
    if raw.len() as u64 > MAX_VALUE_BYTES {
        bail!("the value is longer than {MAX_VALUE_BYTES} bytes");
    }
    let value = raw.trim();
    if value.is_empty() {
        bail!("no value on standard input; pipe it in, e.g. `mosaic-as secret set NAME < token-file`");
    }
    if value.contains(['\n', '\r']) {
        bail!("the value spans several lines; a secret is one line");
    }
    Ok(SecretString::new(value.to_string()))
}

/// Why a stored value would not be used: the config file or the environment sets it.
fn shadowed_by_config(config: &Config, name: &str) -> Option<String> {
    if let Some(token) = crate::surfaces::token_named(name) {
        let set = (token.get)(config).is_some_and(|t| !t.is_empty());
        return set.then(|| format!("the config file or {} sets {}", token.env, token.key));
    }
    super::agent_of_key_name(name).and_then(|id| match config.agent(id) {
        None => Some(format!("no [[agent]] with id {id:?} is in the config, so the key is not used yet")),
        Some(_) => None,
    })
}
