//! Secrets sealed at rest: sealing and opening, the `sealed_secrets` table on both
//! backends, key rotation, filling the config, and the `mosaic-as secret` command.

use std::io::Write;
use std::process::{Command, Stdio};

use mosaic_as::config::Config;
use mosaic_as::secrets::{self, Keyring, SECRET_KEY_ENV, SECRET_KEY_OLD_ENV, SecretError, SecretKey};
use mosaic_as::store::{Store, sealed};
use sqlx::Connection;

const CONFIG: &str = r#"
    default_agent = "helper"

    [homeserver]
    url = "http://127.0.0.1:8008"
    server_name = "example.org"

    [appservice]
    url = "http://127.0.0.1:29330"
    as_token = "aaaaaaaaaaaaaaaaaaaa"
    hs_token = "bbbbbbbbbbbbbbbbbbbb"

    [[agent]]
    id = "helper"
    runtime = "echo"
"#;

struct TestStore {
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    TestStore { store: Store::open(&url).await.unwrap(), _dir: Some(dir) }
}

/// A new database on the test PostgreSQL (`MOSAIC_TEST_POSTGRES_URL` or
/// `scripts/postgres.sh ensure`).
async fn postgres() -> TestStore {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let base = URL
        .get_or_init(|| {
            if let Ok(url) = std::env::var("MOSAIC_TEST_POSTGRES_URL") {
                return url;
            }
            let output = Command::new("bash")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh"))
                .arg("ensure")
                .output()
                .expect("bash runs");
            assert!(output.status.success(), "scripts/postgres.sh ensure failed");
            String::from_utf8(output.stdout).unwrap().lines().last().expect("a database URL").to_string()
        })
        .clone();
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    let name = format!("mosaic_store_{}", hex::encode(bytes));
    mosaic_as::store::install_drivers();
    let mut admin = sqlx::AnyConnection::connect(&base).await.unwrap_or_else(|e| panic!("PostgreSQL at {base}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    TestStore { store: Store::open(&format!("{prefix}/{name}")).await.unwrap(), _dir: None }
}

fn key(byte: u8) -> SecretKey {
    SecretKey::from_bytes([byte; 32])
}

#[test]
fn sealing_round_trips() {
    let k = key(1);
    let sealed = secrets::seal(&k, b"123456:telegram-bot-token", "telegram.token");
    assert!(sealed.starts_with(&format!("v1:{}:", k.id())));
    assert!(!sealed.contains("telegram-bot-token"));
    assert_eq!(&*secrets::open(&k, None, &sealed, "telegram.token").unwrap(), b"123456:telegram-bot-token");
}

#[test]
fn tampered_ciphertext_is_rejected() {
    let k = key(1);
    let sealed = secrets::seal(&k, b"token", "discord.token");
    // Change one character of the base64 part (keeping it valid base64).
    let mut chars: Vec<char> = sealed.chars().collect();
    let at = sealed.rfind(':').unwrap() + 5;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    let error = secrets::open(&k, None, &tampered, "discord.token").unwrap_err();
    assert!(matches!(error, SecretError::Tampered { .. }), "{error}");
    assert!(error.to_string().contains("altered"), "{error}");
}

#[test]
fn a_wrong_key_gives_a_clear_error() {
    let sealed = secrets::seal(&key(1), b"plain-bot-token", "telegram.token");
    let error = secrets::open(&key(2), None, &sealed, "telegram.token").unwrap_err().to_string();
    assert!(error.contains(&key(1).id()) && error.contains(&key(2).id()), "{error}");
    assert!(error.contains(SECRET_KEY_ENV) && error.contains(SECRET_KEY_OLD_ENV), "{error}");
    assert!(!error.contains("plain-bot-token"), "no plaintext: {error}");
}

#[test]
fn a_value_sealed_for_one_name_does_not_open_under_another() {
    let k = key(1);
    let sealed = secrets::seal(&k, b"sk-key-of-alpha", "agent.alpha.api_key");
    let error = secrets::open(&k, None, &sealed, "agent.beta.api_key").unwrap_err();
    assert!(matches!(error, SecretError::Tampered { .. }), "{error}");
}

async fn put_get_list_delete(store: Store) {
    let mut conn = store.begin_write().await.unwrap();
    assert!(sealed::list(&mut conn).await.unwrap().is_empty());
    sealed::put(&mut conn, "telegram.token", "v1:00000000:AAAA").await.unwrap();
    sealed::put(&mut conn, "discord.token", "v1:00000000:BBBB").await.unwrap();
    sealed::put(&mut conn, "telegram.token", "v1:00000000:CCCC").await.unwrap();
    let got = sealed::get(&mut conn, "telegram.token").await.unwrap().unwrap();
    assert_eq!(got.sealed, "v1:00000000:CCCC");
    assert!(got.updated_at > 1_600_000_000_000);
    assert!(!format!("{got:?}").contains("CCCC"), "Debug leaves the sealed text out");
    let names: Vec<String> = sealed::list(&mut conn).await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["discord.token", "telegram.token"]);
    assert!(sealed::delete(&mut conn, "discord.token").await.unwrap());
    assert!(!sealed::delete(&mut conn, "discord.token").await.unwrap());
    assert!(sealed::get(&mut conn, "discord.token").await.unwrap().is_none());
    conn.commit().await.unwrap();
}

async fn rotation_reseals_and_the_old_key_is_no_longer_needed(store: Store) {
    let old = Keyring::new(key(1));
    secrets::store_secret(&store, &old, "telegram.token", "tg-token").await.unwrap();
    secrets::store_secret(&store, &old, "agent.helper.api_key", "sk-helper").await.unwrap();

    // The new key alone cannot open what the old one sealed; rotating without the old
    // key fails and changes nothing.
    let new_only = Keyring::new(key(2));
    let error = secrets::load_secret(&store, &new_only, "telegram.token").await.unwrap_err();
    assert!(matches!(error, SecretError::WrongKey { .. }), "{error}");
    assert!(secrets::rotate(&store, &new_only).await.is_err());
    assert_eq!(secrets::load_secret(&store, &old, "telegram.token").await.unwrap().unwrap().expose(), "tg-token");

    let rotating = Keyring { current: key(2), old: Some(key(1)) };
    let rotation = secrets::rotate(&store, &rotating).await.unwrap();
    assert_eq!(rotation, secrets::Rotation { from_old_key: 2, already_current: 0 });

    assert_eq!(secrets::load_secret(&store, &new_only, "telegram.token").await.unwrap().unwrap().expose(), "tg-token");
    assert_eq!(
        secrets::load_secret(&store, &new_only, "agent.helper.api_key").await.unwrap().unwrap().expose(),
        "sk-helper"
    );
    assert!(secrets::load_secret(&store, &old, "telegram.token").await.is_err(), "the old key is out");
    let mut conn = store.conn().await.unwrap();
    for row in sealed::list(&mut conn).await.unwrap() {
        assert!(row.sealed.starts_with(&format!("v1:{}:", key(2).id())), "{}", row.name);
    }
    drop(conn);
    // A second rotation finds everything current.
    let again = secrets::rotate(&store, &new_only).await.unwrap();
    assert_eq!(again, secrets::Rotation { from_old_key: 0, already_current: 2 });
}

async fn sealed_tokens_fill_the_config(store: Store) {
    let k = key(3);
    let lookup = |var: &str| (var == SECRET_KEY_ENV).then(|| k.to_hex().to_string());

    // Nothing stored: no key needed, nothing changes.
    let mut config = Config::parse(CONFIG).unwrap();
    let loaded = secrets::load_sealed_into_config_with(&store, &mut config, |_| None).await.unwrap();
    assert!(loaded.filled.is_empty() && config.telegram.is_none());

    let keys = Keyring::new(k.clone());
    secrets::store_secret(&store, &keys, "telegram.token", "tg-sealed").await.unwrap();
    secrets::store_secret(&store, &keys, "discord.token", "dc-sealed").await.unwrap();
    secrets::store_secret(&store, &keys, "agent.helper.api_key", "sk-helper").await.unwrap();
    secrets::store_secret(&store, &keys, "agent.gone.api_key", "sk-gone").await.unwrap();

    // Sealed tokens are used, but only with the key.
    let mut config = Config::parse(CONFIG).unwrap();
    let error = secrets::load_sealed_into_config_with(&store, &mut config, |_| None).await.unwrap_err();
    assert!(error.to_string().contains("openssl rand -hex 32"), "{error}");

    let loaded = secrets::load_sealed_into_config_with(&store, &mut config, lookup).await.unwrap();
    assert_eq!(loaded.filled, ["discord.token", "telegram.token"]);
    let telegram = config.telegram.as_ref().unwrap();
    assert_eq!(telegram.token.as_deref(), Some("tg-sealed"));
    assert_eq!(telegram.api_url, "https://api.telegram.org", "the section gets its defaults");
    assert_eq!(config.discord.as_ref().unwrap().token.as_deref(), Some("dc-sealed"));
    assert_eq!(loaded.agent_keys.len(), 1, "keys of agents not in the config are not opened");
    assert_eq!(loaded.agent_keys["helper"].expose(), "sk-helper");
    assert!(!format!("{loaded:?}").contains("sk-helper"));
    config.validate().unwrap();

    // The config file and the environment win over the store.
    let mut config = Config::parse(&format!("{CONFIG}\n[discord]\ntoken = \"dc-from-file\"\n")).unwrap();
    config.apply_env(|var| (var == "MOSAIC_AS_TELEGRAM_TOKEN").then(|| "tg-from-env".to_string()));
    let loaded = secrets::load_sealed_into_config_with(&store, &mut config, lookup).await.unwrap();
    assert!(loaded.filled.is_empty());
    assert_eq!(config.telegram.unwrap().token.as_deref(), Some("tg-from-env"));
    assert_eq!(config.discord.unwrap().token.as_deref(), Some("dc-from-file"));
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::sqlite().await.store).await })*
        }
        mod on_postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::postgres().await.store).await })*
        }
    };
}

on_both_backends!(
    put_get_list_delete,
    rotation_reseals_and_the_old_key_is_no_longer_needed,
    sealed_tokens_fill_the_config
);

// ---- the `mosaic-as secret` command ----

/// Runs the binary with `stdin` piped in and only the given environment variables (plus
/// PATH), as an operator would.
fn mosaic(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mosaic-as"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MOSAIC_AS_LOG", "debug")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every byte of the SQLite database, its WAL included.
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for file in ["mosaic-as.db", "mosaic-as.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join(file)) {
            bytes.extend(b);
        }
    }
    assert!(!bytes.is_empty(), "the database exists");
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn secret_set_reads_stdin_and_stores_only_the_sealed_value() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = mosaic(
        &["init", "--homeserver-url", "http://127.0.0.1:8008", "--server-name", "example.org", "--dir"]
            .into_iter()
            .chain([dir.path().to_str().unwrap()])
            .collect::<Vec<_>>(),
        &[],
        "",
    );
    assert!(ok, "{out}{err}");
    let config = dir.path().join("mosaic-as.toml");
    let config = config.to_str().unwrap();
    let key = SecretKey::generate();
    let key_hex = key.to_hex();
    let env = [(SECRET_KEY_ENV, key_hex.as_str())];
    let token = "7654321:AAH-plaintext-telegram-token-value";

    // Without the key: a clear error, nothing stored.
    let (ok, _, err) = mosaic(&["--config", config, "secret", "set", "telegram.token"], &[], &format!("{token}\n"));
    assert!(!ok && err.contains(SECRET_KEY_ENV) && err.contains("openssl rand -hex 32"), "{err}");
    assert!(!err.contains(token));

    // Unknown names and values on the command line are refused.
    let (ok, _, err) = mosaic(&["--config", config, "secret", "set", "hs_token"], &env, "x\n");
    assert!(!ok && err.contains("agent.<id>.api_key"), "{err}");
    let (ok, _, _) = mosaic(&["--config", config, "secret", "set", "telegram.token", token], &env, "");
    assert!(!ok, "the value is never a command-line argument");
    let (ok, _, err) = mosaic(&["--config", config, "secret", "set", "telegram.token"], &env, "\n");
    assert!(!ok && err.contains("standard input"), "{err}");

    let (ok, out, err) = mosaic(&["--config", config, "secret", "set", "telegram.token"], &env, &format!("{token}\n"));
    assert!(ok, "{out}{err}");
    assert!(out.contains("Stored telegram.token") && out.contains(&key.id()), "{out}");
    let (ok, out, err) = mosaic(&["--config", config, "secret", "set", "agent.echo.api_key"], &env, "sk-echo-key-1\n");
    assert!(ok, "{out}{err}");
    for printed in [&out, &err] {
        assert!(!printed.contains(token) && !printed.contains("sk-echo-key-1") && !printed.contains(key_hex.as_str()));
    }

    let bytes = database_bytes(dir.path());
    assert!(!contains(&bytes, token), "the database holds no plaintext token");
    assert!(!contains(&bytes, "sk-echo-key-1"));
    assert!(contains(&bytes, &format!("v1:{}:", key.id())), "the sealed form is stored");

    // `list` shows names and dates, never values; it needs no key.
    let (ok, out, err) = mosaic(&["--config", config, "secret", "list"], &[], "");
    assert!(ok, "{out}{err}");
    assert!(out.contains("telegram.token") && out.contains("agent.echo.api_key") && out.contains("UTC"), "{out}");
    assert!(!out.contains(token) && !out.contains("sk-echo-key-1") && !out.contains("v1:"), "{out}");

    // The sealed token reaches the config `serve` uses.
    let url = format!("sqlite://{}", dir.path().join("mosaic-as.db").display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open(&url).await.unwrap();
        let mut loaded = Config::load(std::path::Path::new(config)).unwrap();
        secrets::load_sealed_into_config_with(&store, &mut loaded, |var| {
            (var == SECRET_KEY_ENV).then(|| key_hex.to_string())
        })
        .await
        .unwrap();
        assert_eq!(loaded.telegram.unwrap().token.as_deref(), Some(token));
        store.close().await;
    });

    // Rotation to a new key, then the old one is no longer needed.
    let new_key = SecretKey::generate();
    let new_hex = new_key.to_hex();
    let (ok, _, err) = mosaic(&["--config", config, "secret", "rotate"], &[(SECRET_KEY_ENV, new_hex.as_str())], "");
    assert!(!ok && err.contains(&key.id()) && err.contains(SECRET_KEY_OLD_ENV), "{err}");
    let (ok, out, err) = mosaic(
        &["--config", config, "secret", "rotate"],
        &[(SECRET_KEY_ENV, new_hex.as_str()), (SECRET_KEY_OLD_ENV, key_hex.as_str())],
        "",
    );
    assert!(ok && out.contains("Re-sealed 2") && out.contains(&new_key.id()), "{out}{err}");
    let (ok, out, _) = mosaic(&["--config", config, "secret", "list"], &[], "");
    assert!(ok && out.matches(&format!("key {}", new_key.id())).count() == 2, "{out}");

    let (ok, out, _) = mosaic(&["--config", config, "secret", "delete", "agent.echo.api_key"], &[], "");
    assert!(ok && out.contains("Deleted"), "{out}");
    let (ok, _, err) = mosaic(&["--config", config, "secret", "delete", "agent.echo.api_key"], &[], "");
    assert!(!ok && err.contains("no secret named"), "{err}");
}

#[test]
fn generate_key_prints_a_usable_key() {
    let (ok, out, err) = mosaic(&["secret", "generate-key"], &[], "");
    assert!(ok, "{err}");
    let key = out.trim();
    assert_eq!(key.len(), 64);
    SecretKey::parse(key, SECRET_KEY_ENV).unwrap();
}
