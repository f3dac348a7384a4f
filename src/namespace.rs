//! Who is who in this service's Matrix namespace: the bot, agent ghosts, and the
//! regular expressions of the registration.
//!
//! It lives beside the Matrix adapter rather than in it because the hub needs it too:
//! the members of a conversation's room are Matrix users, and the hub tells its agents
//! and people apart by these names (see `crate::permissions` for the same reason).

use crate::config::Config;

/// The namespace of this appservice on one homeserver.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub server_name: String,
    pub bot_localpart: String,
    pub ghost_prefix: String,
    pub alias_prefix: String,
}

/// The ghosts of agents are `<ghost_prefix>agent_<id>`; those of people of a surface
/// that can be bridged, `<ghost_prefix><surface>_<id>`.
pub const AGENT_GHOST_KIND: &str = "agent";

/// Every ghost kind: agents, and the people of each surface of this build that can be
/// bridged (the registration covers them whether or not the config sets them up).
pub fn ghost_kinds() -> Vec<&'static str> {
    let surfaces = crate::surfaces::built_in();
    std::iter::once(AGENT_GHOST_KIND).chain(surfaces.bridgeable().map(|surface| surface.name)).collect()
}

impl Namespace {
    pub fn from_config(config: &Config) -> Self {
        Self {
            server_name: config.homeserver.server_name.clone(),
            bot_localpart: config.bot.localpart.clone(),
            ghost_prefix: config.bot.ghost_prefix.clone(),
            alias_prefix: config.bot.alias_prefix.clone(),
        }
    }

    pub fn bot_user_id(&self) -> String {
        format!("@{}:{}", self.bot_localpart, self.server_name)
    }

    pub fn agent_user_id(&self, agent_id: &str) -> String {
        format!("@{}agent_{}:{}", self.ghost_prefix, agent_id, self.server_name)
    }

    /// The ghost of a person from another surface: `@<prefix><channel>_<id>`.
    pub fn remote_user_id(&self, channel: &str, remote_id: &str) -> String {
        let id: String = remote_id
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-._=/".contains(c) { c } else { '_' })
            .collect();
        format!("@{}{}_{}:{}", self.ghost_prefix, channel, id, self.server_name)
    }

    fn localpart<'a>(&self, user_id: &'a str) -> Option<&'a str> {
        let (local, server) = user_id.strip_prefix('@')?.split_once(':')?;
        (server == self.server_name).then_some(local)
    }

    /// True for the bot and every ghost: their messages are never handled as input.
    pub fn is_ours(&self, user_id: &str) -> bool {
        self.localpart(user_id)
            .is_some_and(|local| local == self.bot_localpart || local.starts_with(&self.ghost_prefix))
    }

    pub fn is_bot(&self, user_id: &str) -> bool {
        self.localpart(user_id) == Some(self.bot_localpart.as_str())
    }

    /// The agent id of an agent ghost.
    pub fn agent_id_of(&self, user_id: &str) -> Option<String> {
        let local = self.localpart(user_id)?;
        let id = local.strip_prefix(&self.ghost_prefix)?.strip_prefix("agent_")?;
        (!id.is_empty()).then(|| id.to_string())
    }

    /// Alias localpart of a conversation's room; makes room creation idempotent.
    pub fn conversation_alias_localpart(&self, conversation_id: &str) -> String {
        format!("{}conversation-{}", self.alias_prefix, conversation_id)
    }

    /// User namespace of the registration: the bot and every ghost kind, anchored.
    pub fn user_regex(&self) -> String {
        let server = escape(&self.server_name);
        let ghosts: Vec<String> =
            ghost_kinds().iter().map(|kind| format!("{}{}_.+", escape(&self.ghost_prefix), kind)).collect();
        format!("^@({}|{}):{}$", escape(&self.bot_localpart), ghosts.join("|"), server)
    }

    pub fn alias_regex(&self) -> String {
        format!("^#{}.+:{}$", escape(&self.alias_prefix), escape(&self.server_name))
    }
}

/// Escapes the characters that are special in both Python's `re` (Synapse) and Rust's
/// `regex` (Conduit and its forks).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> Namespace {
        Namespace {
            server_name: "chat.example.org".into(),
            bot_localpart: "mosaic-bot".into(),
            ghost_prefix: "mosaic_".into(),
            alias_prefix: "mosaic-".into(),
        }
    }

    #[test]
    fn the_user_regex_covers_the_bot_and_every_ghost_and_nothing_else() {
        let re = regex::Regex::new(&ns().user_regex()).unwrap();
        for yes in [
            "@mosaic-bot:chat.example.org",
            "@mosaic_agent_echo:chat.example.org",
            "@mosaic_discord_80351110224678912:chat.example.org",
            "@mosaic_telegram_12345:chat.example.org",
        ] {
            assert!(re.is_match(yes), "{yes}");
        }
        for no in [
            "@alice:chat.example.org",
            "@mosaic-bot:chatXexample.org",
            "@mosaic_agent_echo:chat.example.org.evil",
            "@mosaic-botty:chat.example.org",
            "@xmosaic_agent_echo:chat.example.org",
        ] {
            assert!(!re.is_match(no), "{no}");
        }
    }

    #[test]
    fn alias_regex_is_anchored_and_escaped() {
        let re = regex::Regex::new(&ns().alias_regex()).unwrap();
        assert!(re.is_match("#mosaic-conversation-1:chat.example.org"));
        assert!(!re.is_match("#other:chat.example.org"));
        assert!(!re.is_match("#mosaic-x:chatXexample.org"));
    }

    #[test]
    fn recognises_its_own_users() {
        let ns = ns();
        assert!(ns.is_ours(&ns.bot_user_id()));
        assert!(ns.is_ours(&ns.agent_user_id("echo")));
        assert!(!ns.is_ours("@alice:chat.example.org"));
        assert!(!ns.is_ours("@mosaic_agent_echo:other.org"));
        assert_eq!(ns.agent_id_of("@mosaic_agent_echo:chat.example.org").as_deref(), Some("echo"));
        assert_eq!(ns.agent_id_of("@mosaic-bot:chat.example.org"), None);
    }
}
