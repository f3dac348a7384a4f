//! Who may use the service: the `[permissions]` section, in the convention operators of
//! mautrix bridges know. Keys are `"*"`, a server name or a full Matrix user id; the most
//! specific key that matches a person gives their [`Level`].
//!
//! People on other surfaces (Discord, Telegram) take the level of their linked account's
//! Matrix identity; people who have not linked one get the surface's `unlinked` level
//! (`[permissions.<surface>]`, relayed by default).

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

/// `[permissions.<surface>]`: `[permissions.discord]`, `[permissions.telegram]`.
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
#[serde(from = "BTreeMap<String, PermissionEntry>", into = "BTreeMap<String, PermissionEntry>")]
pub struct PermissionsConfig {
    /// `"*"`, a server name or a user id → level.
    pub levels: BTreeMap<String, Level>,
    /// A surface's name → its section (`[permissions.discord]`).
    pub surfaces: BTreeMap<String, SurfacePermissions>,
}

/// One key of `[permissions]`: a level, or a surface's own section. Keys of both kinds
/// share the table, so that the section reads as operators of mautrix bridges know it.
#[derive(Debug, Clone)]
pub enum PermissionEntry {
    Level(Level),
    Surface(SurfacePermissions),
}

impl From<BTreeMap<String, PermissionEntry>> for PermissionsConfig {
    fn from(entries: BTreeMap<String, PermissionEntry>) -> Self {
        let mut section = Self::default();
        for (key, entry) in entries {
            match entry {
                PermissionEntry::Level(level) => {
                    section.levels.insert(key, level);
                }
                PermissionEntry::Surface(surface) => {
                    section.surfaces.insert(key, surface);
                }
            }
        }
        section
    }
}

impl From<PermissionsConfig> for BTreeMap<String, PermissionEntry> {
    fn from(section: PermissionsConfig) -> Self {
        let levels = section.levels.into_iter().map(|(key, level)| (key, PermissionEntry::Level(level)));
        let surfaces = section.surfaces.into_iter().map(|(key, surface)| (key, PermissionEntry::Surface(surface)));
        levels.chain(surfaces).collect()
    }
}

impl Serialize for PermissionEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Level(level) => level.serialize(serializer),
            Self::Surface(surface) => surface.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for PermissionEntry {
    /// A string is a level, a table a surface's section; each read by its own type, so
    /// that a mistake is named as precisely as before (`unknown variant "root"`).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = PermissionEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a level (\"none\", \"relay\", \"user\", \"admin\") or a surface's section")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
                let level = Level::deserialize(serde::de::value::StrDeserializer::<E>::new(value))?;
                Ok(PermissionEntry::Level(level))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let surface = SurfacePermissions::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(PermissionEntry::Surface(surface))
            }
        }
        deserializer.deserialize_any(Entry)
    }
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
    /// A surface's name → the level of its people without a linked account, where the
    /// section says one.
    unlinked: BTreeMap<String, Level>,
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
        let surfaces = config.permissions.iter().flat_map(|section| &section.surfaces);
        let unlinked = surfaces.map(|(surface, section)| (surface.clone(), section.unlinked)).collect();
        Self { levels, unlinked }
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

    /// The level of people on `channel` (`discord`, `telegram`, any surface but Matrix)
    /// without a linked account.
    pub fn unlinked_level(&self, channel: &str) -> Level {
        match channel {
            crate::protocol::MATRIX => Level::None,
            _ => self.unlinked.get(channel).copied().unwrap_or_else(default_unlinked),
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
        assert_eq!(p.unlinked_level("slack"), Level::Relay, "a surface without a section is relayed");
        let typo = Config::parse(&format!("{BASE}\n[permissions.dicsord]\nunlinked = \"user\"\n"));
        let typo = typo.unwrap().validate().unwrap_err();
        assert!(typo.1.contains("[permissions.dicsord] names no surface (discord, telegram)"), "{typo:?}");
        assert_eq!(p.matrix_level("@a:example.org"), Level::None, "surface sections are no levels");
        let bad = Config::parse(&format!("{BASE}\n[permissions.telegram]\nunlinked = \"root\"\n")).unwrap_err();
        assert!(bad.1.contains("root"), "{bad:?}");
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
