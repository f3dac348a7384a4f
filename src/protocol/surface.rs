//! What a surface says of itself ([`SurfaceInfo`]), so that the hub, the Matrix
//! namespace and the chat commands never name a surface: they ask its description.
//!
//! The model is mautrix bridgev2's optional capability interfaces: a surface declares
//! what it can show, and the hub never sends it what it cannot (a reaction, a deletion).

/// The description a surface gives of itself ([`super::ChannelAdapter::surface`]).
/// Built with `const fn`s, so each surface's folder holds it as a constant
/// (`discord::SURFACE`) that the list of surfaces (`crate::surfaces`) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SurfaceInfo {
    /// Stable lowercase name (`discord`): the adapter's name, the namespace of its
    /// identities, the word of `!bridge <surface>`, the kind of its people's ghosts.
    pub name: &'static str,
    /// What chat commands start with there (`/` on Telegram, where bots take commands so).
    pub command_prefix: char,
    /// What its chats are called, in usage lines (`channel` on Discord, `chat` on Telegram).
    pub chat_noun: &'static str,
    /// Its chats can be bridged into conversations with `!bridge`; its people then
    /// appear in the conversation's Matrix room as ghosts `@<prefix><name>_<id>`.
    pub bridgeable: bool,
    /// It can show reactions (else [`super::ChannelAdapter::send_reaction`] is never called).
    pub reactions: bool,
    /// It can take back a message it showed (else a deletion made elsewhere is not sent).
    pub deletions: bool,
}

impl SurfaceInfo {
    /// A surface named `name` that takes `!` commands and can show nothing but messages.
    pub const fn new(name: &'static str) -> Self {
        Self { name, command_prefix: '!', chat_noun: "chat", bridgeable: false, reactions: false, deletions: false }
    }

    /// Its chats, called `chat_noun` there, can be bridged into conversations.
    pub const fn bridgeable(self, chat_noun: &'static str) -> Self {
        Self { bridgeable: true, chat_noun, ..self }
    }

    pub const fn command_prefix(self, prefix: char) -> Self {
        Self { command_prefix: prefix, ..self }
    }

    pub const fn with_reactions(self) -> Self {
        Self { reactions: true, ..self }
    }

    pub const fn with_deletions(self) -> Self {
        Self { deletions: true, ..self }
    }

    /// How the surface is named to people (`discord` → `Discord`).
    pub fn title(&self) -> String {
        super::surface_title(self.name)
    }
}

/// A set of surfaces, looked up by name: those this build has, and any registered besides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Surfaces(Vec<SurfaceInfo>);

impl Surfaces {
    pub fn new(surfaces: impl IntoIterator<Item = SurfaceInfo>) -> Self {
        let mut all = Self::default();
        surfaces.into_iter().for_each(|surface| all.add(surface));
        all
    }

    /// Adds `surface`, in place of one of the same name.
    pub fn add(&mut self, surface: SurfaceInfo) {
        self.0.retain(|known| known.name != surface.name);
        self.0.push(surface);
    }

    pub fn get(&self, name: &str) -> Option<&SurfaceInfo> {
        self.0.iter().find(|surface| surface.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &SurfaceInfo> {
        self.0.iter()
    }

    /// The prefix of chat commands on `name`; `!` on a surface nobody described.
    pub fn command_prefix(&self, name: &str) -> char {
        self.get(name).map_or('!', |surface| surface.command_prefix)
    }

    /// The surfaces whose chats can be bridged.
    pub fn bridgeable(&self) -> impl Iterator<Item = &SurfaceInfo> {
        self.0.iter().filter(|surface| surface.bridgeable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_surface_is_described_once_and_found_by_name() {
        const SLACK: SurfaceInfo = SurfaceInfo::new("slack").bridgeable("channel").with_reactions();
        let mut surfaces = Surfaces::new([SurfaceInfo::new("matrix"), SLACK]);
        assert_eq!(surfaces.command_prefix("slack"), '!');
        assert_eq!(surfaces.command_prefix("nowhere"), '!');
        assert_eq!(surfaces.bridgeable().map(|s| s.name).collect::<Vec<_>>(), ["slack"]);
        surfaces.add(SLACK.command_prefix('/'));
        assert_eq!(surfaces.iter().count(), 2, "the same name replaces");
        assert_eq!(surfaces.command_prefix("slack"), '/');
        assert_eq!((SLACK.reactions, SLACK.deletions), (true, false));
        assert_eq!(SLACK.title(), "Slack");
    }
}
