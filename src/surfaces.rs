//! The surfaces this build speaks, in one list. Adding one (Slack, WhatsApp…) is its
//! folder, one line here, and its migration: see `docs/adding-a-surface.md`.
//!
//! The hub, the chat commands and the Matrix namespace never name a surface; they read
//! these descriptions (and those of adapters registered besides, see
//! [`crate::hub::Hub::with_surfaces`]).

use std::sync::Arc;

use crate::config::Config;
use crate::protocol::{ChannelAdapter, MediaRepository, SurfaceInfo, Surfaces};
use crate::store::Store;
use crate::{discord, matrix, telegram};

/// A surface started from the config: its adapter, and the HTTP routes it serves on the
/// push address (Telegram's webhook), if any.
pub struct Started {
    pub adapter: Arc<dyn ChannelAdapter>,
    pub routes: Option<axum::Router>,
}

/// Starts a surface from its section of the config; `None` when the config has none.
/// Files it receives go to `media` (the homeserver's media repository).
pub type Start = fn(&Config, &Store, &Arc<dyn MediaRepository>) -> Result<Option<Started>, String>;

/// A surface's bot token: where the config keeps it, the environment variable that
/// overrides it, and the name it is sealed under in the database (`mosaic-as secret`).
pub struct BotToken {
    /// `discord.token`: the config key, and the name of the sealed secret.
    pub key: &'static str,
    /// `MOSAIC_AS_DISCORD_TOKEN`.
    pub env: &'static str,
    /// The token the config holds, if any.
    pub get: fn(&Config) -> Option<&str>,
    /// Puts a token into the config, creating the surface's section with its defaults.
    pub set: fn(&mut Config, String),
}

/// One surface of this build: what it is, how it starts, and its bot token.
pub struct BuiltIn {
    pub info: SurfaceInfo,
    /// `None` for the home surface (Matrix), which the service itself starts.
    pub start: Option<Start>,
    pub token: Option<BotToken>,
}

/// Every surface of this build.
pub static BUILT_IN: [BuiltIn; 3] = [
    BuiltIn { info: matrix::adapter::SURFACE, start: None, token: None },
    BuiltIn { info: discord::SURFACE, start: Some(discord::start), token: Some(discord::TOKEN) },
    BuiltIn { info: telegram::SURFACE, start: Some(telegram::start), token: Some(telegram::TOKEN) },
];

/// The bot tokens of the surfaces of this build.
pub fn tokens() -> impl Iterator<Item = &'static BotToken> {
    BUILT_IN.iter().filter_map(|surface| surface.token.as_ref())
}

/// The bot token sealed under `name` (`discord.token`), if a surface has one.
pub fn token_named(name: &str) -> Option<&'static BotToken> {
    tokens().find(|token| token.key == name)
}

/// `discord.token, telegram.token`, for messages that list them.
pub fn token_names() -> String {
    tokens().map(|token| token.key).collect::<Vec<_>>().join(", ")
}

/// The descriptions of every surface of this build.
pub fn built_in() -> Surfaces {
    Surfaces::new(BUILT_IN.iter().map(|surface| surface.info))
}
