//! Who may use the service: the `[permissions]` section, in the convention operators of
//! mautrix bridges know. Keys are `"*"`, a server name or a full Matrix user id; the most
//! specific key that matches a person gives their [`Level`].
//!
//! People on Discord and Telegram take the level of their linked account's Matrix
//! identity; people who have not linked one get the surface's `unlinked` level.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// What a person may do, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Ignored entirely: invites refused, messages neither stored nor answered.
    None,
    /// Their messages are bridged between surfaces, but agents do not act on them and
    /// they run no command except `link` and `help`.
    Relay,
    /// Talk to agents and use the commands for themselves and their rooms.
    User,
    /// Also bridge chats, purge history and act in every room.
    Admin,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Relay => "relay",
            Self::User => "user",
            Self::Admin => "admin",
        }
    }
}

/// `[permissions.discord]`, `[permissions.telegram]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurfacePermissions {
    /// The level of people there who have not linked a Mosaic account.
    #[serde(default = "default_unlinked")]
    pub unlinked: Level,
}

impl Default for SurfacePermissions {
    fn default() -> Self {
        Self { unlinked: default_unlinked() }
    }
}

/// People in a chat an admin bridged are relayed: the bridge would be useless otherwise.
fn default_unlinked() -> Level {
    Level::Relay
}

/// The `[permissions]` section as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PermissionsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discord: Option<SurfacePermissions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram: Option<SurfacePermissions>,
    /// `"*"`, a server name or a user id → level.
    #[serde(flatten)]
    pub levels: BTreeMap<String, Level>,
}

/// Whether `key` (`"*"`, a server name or a user id) names `user_id`, and how
/// specifically: 2 for the user id, 1 for its server, 0 for `"*"`.
fn specificity(key: &str, user_id: &str) -> Option<u8> {
    if key == "*" {
        return Some(0);
    }
    if key.starts_with('@') {
        return (key == user_id).then_some(2);
    }
    (server_of(user_id) == Some(key)).then_some(1)
}

/// The server name of a Matrix user id (`@name:server`, the server may carry a port).
pub fn server_of(user_id: &str) -> Option<&str> {
    user_id.strip_prefix('@')?.split_once(':').map(|(_, server)| server)
}

/// Whether `user_id` is one of `entries` (user ids or server names), as in an agent's
/// `allowed` list.
pub fn listed(entries: &[String], user_id: &str) -> bool {
    entries.iter().any(|entry| specificity(entry, user_id).is_some())
}

/// The levels in force: the section as written, or the defaults when it is absent, plus
/// the users of the deprecated `admin.matrix_users`.
#[derive(Debug, Clone)]
pub struct Permissions {
    levels: BTreeMap<String, Level>,
    discord_unlinked: Level,
    telegram_unlinked: Level,
}

impl Permissions {
    pub fn from_config(config: &Config) -> Self {
        let mut levels = match &config.permissions {
            Some(section) => section.levels.clone(),
            None => default_levels(&config.homeserver.server_name),
        };
        // The deprecated list names admins; a key of its own in `[permissions]` wins.
        for admin in &config.admin.matrix_users {
            levels.entry(admin.clone()).or_insert(Level::Admin);
        }
        let unlinked = |surface: Option<&SurfacePermissions>| surface.map_or_else(default_unlinked, |s| s.unlinked);
        let section = config.permissions.as_ref();
        Self {
            levels,
            discord_unlinked: unlinked(section.and_then(|s| s.discord.as_ref())),
            telegram_unlinked: unlinked(section.and_then(|s| s.telegram.as_ref())),
        }
    }

    /// The level of a Matrix user: the most specific matching key; nobody matched is
    /// [`Level::None`].
    pub fn matrix_level(&self, user_id: &str) -> Level {
        self.levels
            .iter()
            .filter_map(|(key, level)| specificity(key, user_id).map(|s| (s, *level)))
            .max_by_key(|(s, _)| *s)
            .map_or(Level::None, |(_, level)| level)
    }

    /// The level of people on `channel` (`discord`, `telegram`) without a linked account.
    pub fn unlinked_level(&self, channel: &str) -> Level {
        match channel {
            crate::discord::CHANNEL => self.discord_unlinked,
            crate::telegram::CHANNEL => self.telegram_unlinked,
            _ => Level::None,
        }
    }
}

/// Without a `[permissions]` section: the homeserver's own users may use the service,
/// nobody else.
fn default_levels(server_name: &str) -> BTreeMap<String, Level> {
    BTreeMap::from([("*".to_string(), Level::None), (server_name.to_string(), Level::User)])
}

#[cfg(test)]
mod tests {
    use super::*;

    // The smallest config that loads (server name `example.org`).
    use crate::config::tests::MINIMAL as BASE;

    fn permissions(extra: &str) -> Permissions {
        Permissions::from_config(&Config::parse(&format!("{BASE}\n{extra}")).unwrap())
    }

    #[test]
    fn the_most_specific_key_wins() {
        let p = permissions(
            "[permissions]\n\"*\" = \"relay\"\n\"example.org\" = \"user\"\n\"@boss:example.org\" = \"admin\"\n\"@troll:example.org\" = \"none\"\n",
        );
        assert_eq!(p.matrix_level("@boss:example.org"), Level::Admin);
        assert_eq!(p.matrix_level("@troll:example.org"), Level::None);
        assert_eq!(p.matrix_level("@alice:example.org"), Level::User);
        assert_eq!(p.matrix_level("@mallory:evil.example"), Level::Relay);
        // A server name is matched whole, not as a suffix.
        assert_eq!(p.matrix_level("@eve:notexample.org"), Level::Relay);
    }

    #[test]
    fn without_a_section_only_the_homeserver_s_users_may_use_the_service() {
        let p = permissions("");
        assert_eq!(p.matrix_level("@alice:example.org"), Level::User);
        assert_eq!(p.matrix_level("@mallory:evil.example"), Level::None);
        assert_eq!(p.unlinked_level("discord"), Level::Relay);
        assert_eq!(p.unlinked_level("telegram"), Level::Relay);
        // A section without "*" lets nobody else in either.
        let p = permissions("[permissions]\n\"@alice:example.org\" = \"user\"\n");
        assert_eq!(p.matrix_level("@bob:example.org"), Level::None);
    }

    #[test]
    fn deprecated_admins_are_admins_unless_the_section_says_otherwise() {
        let p = permissions(
            "[admin]\nmatrix_users = [\"@old:example.org\", \"@demoted:example.org\"]\n[permissions]\n\"example.org\" = \"user\"\n\"@demoted:example.org\" = \"user\"\n",
        );
        assert_eq!(p.matrix_level("@old:example.org"), Level::Admin);
        assert_eq!(p.matrix_level("@demoted:example.org"), Level::User);
        let p = permissions("[admin]\nmatrix_users = [\"@old:example.org\"]\n");
        assert_eq!(p.matrix_level("@old:example.org"), Level::Admin);
        assert_eq!(p.matrix_level("@new:example.org"), Level::User);
    }

    #[test]
    fn surfaces_have_their_own_level_for_unlinked_people() {
        let p = permissions(
            "[permissions]\n\"*\" = \"none\"\n[permissions.discord]\nunlinked = \"user\"\n[permissions.telegram]\nunlinked = \"none\"\n",
        );
        assert_eq!(p.unlinked_level("discord"), Level::User);
        assert_eq!(p.unlinked_level("telegram"), Level::None);
        let bad = Config::parse(&format!("{BASE}\n[permissions]\n\"*\" = \"root\"\n")).unwrap_err();
        assert!(bad.1.contains("none") || bad.1.contains("variant"), "{bad:?}");
    }

    #[test]
    fn allowed_lists_name_users_and_servers() {
        let allowed = vec!["@alice:example.org".to_string(), "friends.example".to_string()];
        assert!(listed(&allowed, "@alice:example.org"));
        assert!(listed(&allowed, "@bob:friends.example"));
        assert!(!listed(&allowed, "@bob:example.org"));
        assert!(listed(&["*".to_string()], "@bob:example.org"));
    }
}
