//! Random tokens, token hashing and constant-time comparison; secrets sealed at rest with
//! AES-256-GCM under a key from the environment (`MOSAIC_AS_SECRET_KEY`).

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, Generate, KeyInit, Nonce, Payload};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::config::Config;
use crate::store::{Store, StoreError, sealed};

pub mod command;

/// `bytes` random bytes from the operating system, hex encoded.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source is available");
    hex::encode(buf)
}

/// A link token: 32 random bytes in hex (64 characters).
pub fn new_link_token() -> String {
    random_hex(32)
}

/// Tokens are stored as their SHA-256: a token has 256 bits of entropy, so a plain hash
/// is enough to make a stolen database useless for linking.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Prefix of a sealed token: a token replaced by its hash before it was stored.
pub const SEALED_TOKEN_PREFIX: &str = "sha256:";

/// Replaces a token by its hash plus a MAC under `key`, so that the sealed form can be
/// stored and later redeemed, while a hash read from the database cannot be passed off
/// as a token (it lacks the MAC).
pub fn seal_token(key: &str, token: &str) -> String {
    let hash = hash_token(token);
    let mac = derived_token(key, &format!("sealed link token {hash}"));
    format!("{SEALED_TOKEN_PREFIX}{hash}.{mac}")
}

/// The stored hash a given token stands for: the hash inside a genuine seal, or the hash
/// of the text as given (a forged seal is just an unknown token).
pub fn token_lookup_hash(key: &str, given: &str) -> String {
    let given = given.trim();
    if let Some((hash, mac)) = given.strip_prefix(SEALED_TOKEN_PREFIX).and_then(|rest| rest.split_once('.'))
        && constant_time_eq(mac, &derived_token(key, &format!("sealed link token {hash}")))
    {
        return hash.to_string();
    }
    hash_token(given)
}

/// A token derived from `key` and `label`: the same inputs give the same token, so a
/// queued message can carry a placeholder and get its token back when it is sent,
/// without the token ever being written to the database.
pub fn derived_token(key: &str, label: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(label.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Compares two secrets without leaking how many leading bytes matched.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

// ---------------------------------------------------------------------------------------
// Secrets at rest
// ---------------------------------------------------------------------------------------

/// The environment variable holding the key that seals secrets at rest.
pub const SECRET_KEY_ENV: &str = "MOSAIC_AS_SECRET_KEY";
/// The previous key, accepted by [`open`] while secrets are re-sealed (`secret rotate`).
pub const SECRET_KEY_OLD_ENV: &str = "MOSAIC_AS_SECRET_KEY_OLD";
/// Version tag of the sealed format.
const SEALED_VERSION: &str = "v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Errors of sealing and opening. None of them carries a secret or a key.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "{var} is not set: it holds the key that seals secrets stored in the database; generate one with `openssl rand -hex 32` (or `mosaic-as secret generate-key`) and keep it outside the database"
    )]
    MissingKey { var: &'static str },
    #[error(
        "{var} is not a valid key: expected 64 hex characters or the base64 of 32 bytes; generate one with `openssl rand -hex 32`"
    )]
    BadKey { var: &'static str },
    #[error("sealed value {name:?} is malformed: {reason}")]
    Malformed { name: String, reason: &'static str },
    #[error("sealed value {name:?} uses format {version:?}; this version of mosaic-as reads only {SEALED_VERSION:?}")]
    UnknownVersion { name: String, version: String },
    #[error(
        "sealed value {name:?} was sealed with key {sealed_with}, but the key in use is {available}: set {SECRET_KEY_ENV} to the key that sealed it (or give it as {SECRET_KEY_OLD_ENV} and run `mosaic-as secret rotate`)"
    )]
    WrongKey { name: String, sealed_with: String, available: String },
    #[error("sealed value {name:?} failed authentication: it was altered, or it was sealed for another name")]
    Tampered { name: String },
    #[error("{0:?} is not a secret name mosaic-as uses: expected {tokens} or agent.<id>.api_key", tokens = crate::surfaces::token_names())]
    UnknownName(String),
    #[error("sealed value {name:?} is not UTF-8 text")]
    NotText { name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A 256-bit key for sealing secrets at rest. Its bytes never appear in `Debug` output
/// and are wiped when it is dropped.
#[derive(Clone)]
pub struct SecretKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id()).finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A fresh random key from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).expect("the operating system's random source is available");
        Self { bytes }
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self { bytes: Zeroizing::new(bytes) }
    }

    /// Parses 64 hex characters or base64 (standard or URL-safe, padded or not) of 32
    /// bytes. `var` names where the text came from, for the error.
    pub fn parse(text: &str, var: &'static str) -> Result<Self, SecretError> {
        let text = text.trim();
        let mut decoded = Zeroizing::new(Vec::new());
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            *decoded = hex::decode(text).map_err(|_| SecretError::BadKey { var })?;
        } else {
            use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                if let Ok(bytes) = engine.decode(text) {
                    *decoded = bytes;
                    break;
                }
            }
        }
        let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| SecretError::BadKey { var })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key as 64 hex characters, for `secret generate-key`.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.bytes.as_ref()))
    }

    /// Names the key without revealing it: the first 8 hex characters of its SHA-256.
    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(self.bytes.as_ref())[..4])
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.bytes.as_ref()).expect("AES-256 takes a 32-byte key")
    }
}

/// The keys that open sealed values: the current one, which also seals, and optionally
/// the previous one while secrets are re-sealed.
#[derive(Debug, Clone)]
pub struct Keyring {
    pub current: SecretKey,
    pub old: Option<SecretKey>,
}

impl Keyring {
    pub fn new(current: SecretKey) -> Self {
        Self { current, old: None }
    }

    /// Reads `MOSAIC_AS_SECRET_KEY` and `MOSAIC_AS_SECRET_KEY_OLD` through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SecretError> {
        let read = |var: &'static str| -> Result<Option<SecretKey>, SecretError> {
            match lookup(var).map(Zeroizing::new) {
                Some(text) if !text.trim().is_empty() => SecretKey::parse(&text, var).map(Some),
                _ => Ok(None),
            }
        };
        let current = read(SECRET_KEY_ENV)?.ok_or(SecretError::MissingKey { var: SECRET_KEY_ENV })?;
        let old = read(SECRET_KEY_OLD_ENV)?;
        Ok(Self { current, old })
    }

    /// Reads the keys from the process environment.
    pub fn from_env() -> Result<Self, SecretError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    pub fn seal(&self, plaintext: &[u8], associated_data: &str) -> String {
        seal(&self.current, plaintext, associated_data)
    }

    pub fn open(&self, sealed: &str, associated_data: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        open(&self.current, self.old.as_ref(), sealed, associated_data)
    }
}

/// What authenticated data a seal binds: the format, the key id and the caller's
/// associated data (the secret's name).
fn bound_data(key_id: &str, associated_data: &str) -> Vec<u8> {
    format!("mosaic-as sealed secret {SEALED_VERSION}:{key_id}:{associated_data}").into_bytes()
}

/// Seals `plaintext` under `key` with AES-256-GCM and a random 96-bit nonce, binding
/// `associated_data` (the secret's name) so that the result opens only under that name.
/// The result is `v1:<key id>:<base64 of nonce ‖ ciphertext ‖ tag>`.
pub fn seal(key: &SecretKey, plaintext: &[u8], associated_data: &str) -> String {
    let key_id = key.id();
    let nonce = Nonce::<Aes256Gcm>::generate();
    let aad = bound_data(&key_id, associated_data);
    let ciphertext = key
        .cipher()
        .encrypt(&nonce, Payload { msg: plaintext, aad: &aad })
        .expect("AES-GCM encrypts any message shorter than 64 GiB");
    let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ciphertext);
    format!("{SEALED_VERSION}:{key_id}:{}", base64::engine::general_purpose::STANDARD.encode(blob))
}

/// Opens a value made by [`seal`] with `key` or, while rotating, `old`. A value sealed
/// under another key is reported with both key ids; an altered value, or one sealed for
/// another name, fails authentication. `associated_data` names the secret in errors.
pub fn open(
    key: &SecretKey,
    old: Option<&SecretKey>,
    sealed: &str,
    associated_data: &str,
) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let name = || associated_data.to_string();
    let malformed = |reason| SecretError::Malformed { name: name(), reason };
    let mut parts = sealed.trim().splitn(3, ':');
    let (Some(version), Some(key_id), Some(blob)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("expected v1:<key id>:<base64>"));
    };
    if version != SEALED_VERSION {
        return Err(SecretError::UnknownVersion { name: name(), version: version.chars().take(16).collect() });
    }
    if key_id.len() != 8 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("the key id is not 8 hex characters"));
    }
    let Some(key) = [Some(key), old].into_iter().flatten().find(|k| constant_time_eq(&k.id(), key_id)) else {
        let available = [Some(key), old].into_iter().flatten().map(SecretKey::id).collect::<Vec<_>>().join(" or ");
        return Err(SecretError::WrongKey { name: name(), sealed_with: key_id.to_string(), available });
    };
    let blob = base64::engine::general_purpose::STANDARD.decode(blob).map_err(|_| malformed("not base64"))?;
    if blob.len() < NONCE_LEN + TAG_LEN {
        return Err(malformed("too short to hold a nonce and a tag"));
    }
    let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
    let nonce = Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| malformed("bad nonce"))?;
    let aad = bound_data(key_id, associated_data);
    key.cipher()
        .decrypt(&nonce, Payload { msg: ciphertext, aad: &aad })
        .map(Zeroizing::new)
        .map_err(|_| SecretError::Tampered { name: name() })
}

/// Checks a secret name: a surface's bot token (`telegram.token`, `discord.token`, see
/// [`crate::surfaces::BotToken`]) or `agent.<id>.api_key` with an agent id (lowercase
/// a-z, 0-9, `._=-/`).
pub fn check_secret_name(name: &str) -> Result<(), SecretError> {
    if crate::surfaces::token_named(name).is_some() || agent_of_key_name(name).is_some() {
        Ok(())
    } else {
        Err(SecretError::UnknownName(name.chars().take(80).collect()))
    }
}

/// The agent id of an `agent.<id>.api_key` name.
pub fn agent_of_key_name(name: &str) -> Option<&str> {
    let id = name.strip_prefix("agent.")?.strip_suffix(".api_key")?;
    let valid = !id.is_empty() && id.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/'));
    valid.then_some(id)
}

/// The name under which an agent's API key is stored.
pub fn agent_key_name(agent_id: &str) -> String {
    format!("agent.{agent_id}.api_key")
}

/// A secret in clear, held only in memory: `Debug` shows its length, never the text, and
/// the text is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretString(<{} bytes redacted>)", self.0.len())
    }
}

/// Seals `value` under `name` and stores it, replacing what was there.
pub async fn store_secret(store: &Store, keys: &Keyring, name: &str, value: &str) -> Result<(), SecretError> {
    check_secret_name(name)?;
    let sealed_value = keys.seal(value.as_bytes(), name);
    let mut tx = store.begin_write().await?;
    sealed::put(&mut tx, name, &sealed_value).await?;
    tx.commit().await?;
    Ok(())
}

/// Opens the secret stored under `name`.
pub async fn load_secret(store: &Store, keys: &Keyring, name: &str) -> Result<Option<SecretString>, SecretError> {
    let mut conn = store.conn().await?;
    let Some(row) = sealed::get(&mut conn, name).await? else {
        return Ok(None);
    };
    open_text(keys, &row.sealed, name).map(Some)
}

fn open_text(keys: &Keyring, sealed_value: &str, name: &str) -> Result<SecretString, SecretError> {
    let mut bytes = keys.open(sealed_value, name)?;
    let text = String::from_utf8(std::mem::take(&mut *bytes)).map_err(|e| {
        e.into_bytes().zeroize();
        SecretError::NotText { name: name.to_string() }
    })?;
    Ok(SecretString::new(text))
}

/// What `secret rotate` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Secrets that were sealed under the old key.
    pub from_old_key: usize,
    /// Secrets that were already under the current key (re-sealed with a fresh nonce).
    pub already_current: usize,
}

/// Re-seals every stored secret under the current key, in one database transaction:
/// either all of them move or none does (a value no key opens stops the rotation and is
/// named in the error). Afterwards the old key is no longer needed.
pub async fn rotate(store: &Store, keys: &Keyring) -> Result<Rotation, SecretError> {
    let mut tx = store.begin_write().await?;
    let current_id = keys.current.id();
    let mut rotation = Rotation::default();
    for row in sealed::list(&mut tx).await? {
        let plain = keys.open(&row.sealed, &row.name)?;
        let under_current = row.sealed.split(':').nth(1) == Some(current_id.as_str());
        if under_current {
            rotation.already_current += 1;
        } else {
            rotation.from_old_key += 1;
        }
        sealed::put(&mut tx, &row.name, &keys.seal(&plain, &row.name)).await?;
    }
    tx.commit().await?;
    Ok(rotation)
}

/// What [`load_sealed_into_config`] took from the database.
#[derive(Debug, Default)]
pub struct SealedSecrets {
    /// Names of the config values that were filled in (`telegram.token`, …).
    pub filled: Vec<&'static str>,
    /// API keys of agents (by agent id) stored as `agent.<id>.api_key`, for agents in the
    /// config. The runtime decides how they rank against `api_key_env`.
    pub agent_keys: BTreeMap<String, SecretString>,
}

/// Fills the surfaces' bot tokens (`telegram.token`, `discord.token`) from sealed secrets
/// where neither the config file nor the environment gave one (creating the surface's
/// section with its defaults when only the sealed token exists), and opens the API keys of configured
/// agents. The key comes from `MOSAIC_AS_SECRET_KEY` (and `…_OLD`); it is needed only when
/// a sealed secret is actually used.
pub async fn load_sealed_into_config(store: &Store, config: &mut Config) -> Result<SealedSecrets, SecretError> {
    load_sealed_into_config_with(store, config, |var| std::env::var(var).ok()).await
}

/// [`load_sealed_into_config`] with the environment read through `lookup`.
pub async fn load_sealed_into_config_with(
    store: &Store,
    config: &mut Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<SealedSecrets, SecretError> {
    let rows = {
        let mut conn = store.conn().await?;
        sealed::list(&mut conn).await?
    };
    let wanted = |name: &str| match crate::surfaces::token_named(name) {
        Some(token) => (token.get)(config).is_none_or(str::is_empty),
        None => agent_of_key_name(name).is_some_and(|id| config.agent(id).is_some()),
    };
    let used: Vec<_> = rows.into_iter().filter(|row| wanted(&row.name)).collect();
    let mut loaded = SealedSecrets::default();
    if used.is_empty() {
        return Ok(loaded);
    }
    let keys = Keyring::from_lookup(lookup)?;
    for row in used {
        let value = open_text(&keys, &row.sealed, &row.name)?;
        if let Some(token) = crate::surfaces::token_named(&row.name) {
            (token.set)(config, value.expose().to_string());
            loaded.filled.push(token.key);
        } else if let Some(id) = agent_of_key_name(&row.name) {
            loaded.agent_keys.insert(id.to_string(), value);
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes([byte; 32])
    }

    #[test]
    fn sealed_values_round_trip_and_hide_the_plaintext() {
        let k = key(1);
        let sealed = seal(&k, b"bot-token-123", "telegram.token");
        assert!(sealed.starts_with(&format!("v1:{}:", k.id())), "{sealed}");
        assert!(!sealed.contains("bot-token-123"));
        assert_eq!(&*open(&k, None, &sealed, "telegram.token").unwrap(), b"bot-token-123");
        assert_ne!(sealed, seal(&k, b"bot-token-123", "telegram.token"), "every seal has a fresh nonce");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let k = key(2);
        let sealed = seal(&k, b"secret", "discord.token");
        let (head, blob) = sealed.rsplit_once(':').unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(blob).unwrap();
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 0x01;
            let altered = format!("{head}:{}", base64::engine::general_purpose::STANDARD.encode(altered));
            assert!(matches!(open(&k, None, &altered, "discord.token"), Err(SecretError::Tampered { .. })), "byte {i}");
        }
    }

    #[test]
    fn a_wrong_key_is_named_not_decrypted_to_garbage() {
        let sealed = seal(&key(3), b"secret", "telegram.token");
        let error = open(&key(4), None, &sealed, "telegram.token").unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, SecretError::WrongKey { .. }));
        assert!(message.contains(&key(3).id()) && message.contains(&key(4).id()), "{message}");
        assert!(message.contains(SECRET_KEY_ENV), "{message}");
        assert_eq!(&*open(&key(4), Some(&key(3)), &sealed, "telegram.token").unwrap(), b"secret");
    }

    #[test]
    fn a_value_cannot_move_to_another_name() {
        let k = key(5);
        let sealed = seal(&k, b"secret", "agent.a.api_key");
        assert!(matches!(open(&k, None, &sealed, "agent.b.api_key"), Err(SecretError::Tampered { .. })));
    }

    #[test]
    fn malformed_values_are_errors_not_panics() {
        let k = key(6);
        let id = k.id();
        for bad in [
            "",
            "v1",
            "v1:",
            "v2:00000000:AAAA",
            &format!("v1:{id}:not base64!"),
            &format!("v1:{id}:AAAA"),
            "v1:zz:AAAA",
            "v1:ééééé:AAAA",
        ] {
            assert!(open(&k, None, bad, "x").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_parse_from_hex_or_base64_and_never_show() {
        let k = SecretKey::generate();
        let hex_text = k.to_hex();
        assert_eq!(SecretKey::parse(&hex_text, SECRET_KEY_ENV).unwrap().id(), k.id());
        let b64 = base64::engine::general_purpose::STANDARD.encode(k.bytes.as_ref());
        assert_eq!(SecretKey::parse(&format!(" {b64}\n"), SECRET_KEY_ENV).unwrap().id(), k.id());
        let debug = format!("{k:?} {:?}", Keyring::new(k.clone()));
        assert!(!debug.contains(hex_text.as_str()) && !debug.contains(&b64) && debug.contains(&k.id()), "{debug}");
        for bad in ["", "abc", &"g".repeat(64), &"ab".repeat(31), &"ab".repeat(33)] {
            let error = SecretKey::parse(bad, SECRET_KEY_ENV).unwrap_err().to_string();
            assert!(error.contains(SECRET_KEY_ENV) && error.contains("openssl rand -hex 32"), "{error}");
        }
    }

    #[test]
    fn a_missing_key_says_how_to_make_one() {
        let error = Keyring::from_lookup(|_| None).unwrap_err().to_string();
        assert!(error.contains(SECRET_KEY_ENV) && error.contains("openssl rand -hex 32"), "{error}");
        let k = key(7);
        let keys = Keyring::from_lookup(|var| (var == SECRET_KEY_ENV).then(|| k.to_hex().to_string())).unwrap();
        assert_eq!(keys.current.id(), k.id());
        assert!(keys.old.is_none());
    }

    #[test]
    fn secret_names_are_checked() {
        for good in ["telegram.token", "discord.token", "agent.helper.api_key", "agent.a-b.api_key"] {
            check_secret_name(good).unwrap();
        }
        for bad in ["", "telegram", "agent..api_key", "agent.UPPER.api_key", "agent.x.token", "hs_token"] {
            assert!(check_secret_name(bad).is_err(), "{bad}");
        }
        assert_eq!(agent_of_key_name(&agent_key_name("helper")), Some("helper"));
    }

    #[test]
    fn secret_strings_do_not_debug_print() {
        let s = SecretString::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn link_tokens_are_64_hex_characters_and_differ() {
        let a = new_link_token();
        let b = new_link_token();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn hashing_is_stable_and_hides_the_token() {
        let token = new_link_token();
        assert_eq!(hash_token(&token), hash_token(&token));
        assert_ne!(hash_token(&token), token);
    }

    #[test]
    fn a_sealed_token_looks_up_like_the_token() {
        let token = new_link_token();
        let sealed = seal_token("key", &token);
        assert!(!sealed.contains(&token));
        assert_eq!(token_lookup_hash("key", &sealed), hash_token(&token));
        assert_eq!(token_lookup_hash("key", &token), hash_token(&token));
    }

    #[test]
    fn a_bare_or_forged_hash_is_not_a_token() {
        let token = new_link_token();
        let bare = format!("{SEALED_TOKEN_PREFIX}{}", hash_token(&token));
        assert_ne!(token_lookup_hash("key", &bare), hash_token(&token));
        let forged = format!("{bare}.{}", "0".repeat(64));
        assert_ne!(token_lookup_hash("key", &forged), hash_token(&token));
        let other_key = seal_token("other", &token);
        assert_ne!(token_lookup_hash("key", &other_key), hash_token(&token));
    }

    #[test]
    fn derived_tokens_are_stable_per_label_and_key() {
        let a = derived_token("key", "message-1");
        assert_eq!(a, derived_token("key", "message-1"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, derived_token("key", "message-2"));
        assert_ne!(a, derived_token("other", "message-1"));
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq("secret", "secret"));
        assert!(!constant_time_eq("secret", "secreT"));
        assert!(!constant_time_eq("secret", "secret-longer"));
    }
}
