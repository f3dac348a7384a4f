//! Reactions: which stand on a message, and whether a new one changes anything.
//!
//! A reaction is logged as a message whose event is a [`ChannelEvent::Reaction`] to the
//! message it reacts to, and a reaction taken back as another such message marked as a
//! removal.
//! What stands on a message is read from that log, so a repeated or late delivery of an
//! add or a removal changes nothing: each person shows a key on a message at most once.

use sqlx::AnyConnection;
use uuid::Uuid;

use crate::protocol::{ChannelEvent, ChannelMessage, metadata_keys};
use crate::store::{self, messages};

/// The key of a reaction, and whether it takes one back; `None` for other messages.
fn reaction_of(msg: &ChannelMessage) -> Option<(&str, bool)> {
    match &msg.event {
        ChannelEvent::Reaction { key, removed, .. } => Some((key, *removed)),
        ChannelEvent::Message
        | ChannelEvent::Edit { .. }
        | ChannelEvent::Delete { .. }
        | ChannelEvent::ReactionsCleared { .. }
        | ChannelEvent::Typing { .. } => None,
    }
}

/// The key of a reaction (empty for other messages).
pub fn key_of(msg: &ChannelMessage) -> &str {
    reaction_of(msg).map(|(key, _)| key).unwrap_or_default()
}

/// Whether `msg` takes a reaction back.
pub fn is_removal(msg: &ChannelMessage) -> bool {
    reaction_of(msg).is_some_and(|(_, removed)| removed)
}

/// Whether `a` and `b` are the same person's reaction with the same key (made in the
/// same chat of the same surface).
fn same_reaction(a: &ChannelMessage, b: &ChannelMessage) -> bool {
    a.origin_channel() == b.origin_channel()
        && a.channel_id == b.channel_id
        && a.sender_id == b.sender_id
        && key_of(a) == key_of(b)
}

/// The reactions standing on `target` now: added and not taken back, oldest first.
pub async fn standing(conn: &mut AnyConnection, target: Uuid) -> store::Result<Vec<ChannelMessage>> {
    let mut out: Vec<ChannelMessage> = Vec::new();
    for reaction in messages::reactions_to(conn, target).await? {
        if is_removal(&reaction) {
            out.retain(|r| !same_reaction(r, &reaction));
        } else if !out.iter().any(|r| same_reaction(r, &reaction)) {
            out.push(reaction);
        }
    }
    Ok(out)
}

/// Checks an inbound reaction against what stands: false when it changes nothing (an
/// add of a reaction that stands already, a removal of one that does not, a reaction to
/// no known message), so it is neither stored nor passed on. A removal learns which
/// reaction it takes back, and the sender's name as that reaction had it.
pub async fn settle(conn: &mut AnyConnection, msg: &mut ChannelMessage) -> store::Result<bool> {
    let ChannelEvent::Reaction { target, key, removed, .. } = &msg.event else { return Ok(false) };
    if key.trim().is_empty() || messages::get(conn, *target).await?.is_none() {
        return Ok(false);
    }
    let removed = *removed;
    let standing = standing(conn, *target).await?;
    let mine = standing.iter().find(|r| same_reaction(r, msg));
    match (removed, mine) {
        (false, None) => Ok(true),
        (false, Some(_)) | (true, None) => Ok(false),
        (true, Some(added)) => {
            if let ChannelEvent::Reaction { takes_back, .. } = &mut msg.event {
                *takes_back = Some(added.id);
            }
            for key in [metadata_keys::SENDER_NAME, metadata_keys::SENDER_AVATAR_URL] {
                if !msg.metadata.contains_key(key)
                    && let Some(value) = added.metadata.get(key)
                {
                    msg.metadata.insert(key.into(), value.clone());
                }
            }
            Ok(true)
        }
    }
}

/// The keys people outside `chat` of `surface` show on `target`, oldest first: what a
/// surface that reacts only as its bot shows there.
pub async fn shown_outside(
    conn: &mut AnyConnection,
    target: Uuid,
    surface: &str,
    chat: &str,
) -> store::Result<Vec<String>> {
    Ok(standing(conn, target)
        .await?
        .into_iter()
        .filter(|r| !(r.origin_channel() == surface && r.channel_id == chat))
        .map(|r| key_of(&r).to_string())
        .collect())
}

/// The removals a [`ChannelEvent::ReactionsCleared`] stands for: one for each reaction
/// made in its chat that stands on its target (with its key, when it names one), as if
/// its sender had taken it back. Once they are logged nothing of that chat stands there,
/// so a repeated clearing finds nothing more to take back.
pub async fn cleared(conn: &mut AnyConnection, clearing: &ChannelMessage) -> store::Result<Vec<ChannelMessage>> {
    let ChannelEvent::ReactionsCleared { target, key } = &clearing.event else { return Ok(Vec::new()) };
    let here =
        |r: &ChannelMessage| r.origin_channel() == clearing.origin_channel() && r.channel_id == clearing.channel_id;
    Ok(standing(conn, *target)
        .await?
        .into_iter()
        .filter(|r| here(r) && key.as_deref().is_none_or(|key| key_of(r) == key))
        .map(|added| removal_of(&added, *target, clearing))
        .collect())
}

/// `added` taken back by `clearing`; its id is derived from both, so that each
/// clearing takes a reaction back once.
fn removal_of(added: &ChannelMessage, target: Uuid, clearing: &ChannelMessage) -> ChannelMessage {
    let event = ChannelEvent::Reaction { target, key: key_of(added).into(), removed: true, takes_back: Some(added.id) };
    let mut removal = ChannelMessage::reaction(&added.channel_id, &added.sender_id, "", target, true).with_event(event);
    removal.id = Uuid::new_v5(&clearing.id, added.id.as_bytes());
    removal.timestamp = clearing.timestamp;
    for key in [metadata_keys::SENDER_NAME, metadata_keys::SENDER_AVATAR_URL, metadata_keys::ORIGIN_CHANNEL] {
        if let Some(value) = added.metadata.get(key) {
            removal.metadata.insert(key.into(), value.clone());
        }
    }
    removal
}

/// The canonical id of the reaction a removal takes back.
pub fn removed_reaction(msg: &ChannelMessage) -> Option<Uuid> {
    match msg.event {
        ChannelEvent::Reaction { removed: true, takes_back, .. } => takes_back,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ContentType, SenderType};
    use crate::store::Store;

    async fn store() -> (tempfile::TempDir, Store) {
        Store::open_temporary().await
    }

    fn from(surface: &str, chat: &str, sender: &str, key: &str, target: Uuid, removed: bool) -> ChannelMessage {
        let mut msg = ChannelMessage::reaction(chat, sender, key, target, removed);
        msg.metadata.insert(metadata_keys::ORIGIN_CHANNEL.into(), surface.into());
        msg
    }

    #[tokio::test]
    async fn a_reaction_stands_once_until_it_is_taken_back() {
        let (_dir, store) = store().await;
        let mut conn = store.begin_write().await.unwrap();
        let c = crate::store::conversations::create_conversation(&mut conn, "test", None).await.unwrap().id;
        let c = c.as_str();
        let target = ChannelMessage::new("!r", "@a:x", SenderType::User, "hi", ContentType::Text);
        messages::append(&mut conn, c, "matrix", &target).await.unwrap();

        let mut like = from("discord", "42", "7", "👍", target.id, false);
        like.metadata.insert(metadata_keys::SENDER_NAME.into(), "Dan".into());
        assert!(settle(&mut conn, &mut like).await.unwrap(), "a new reaction counts");
        messages::append(&mut conn, c, "discord", &like).await.unwrap();
        let mut again = from("discord", "42", "7", "👍", target.id, false);
        assert!(!settle(&mut conn, &mut again).await.unwrap(), "the same reaction again changes nothing");
        let mut other = from("matrix", "!r", "@b:x", "👍", target.id, false);
        assert!(settle(&mut conn, &mut other).await.unwrap(), "someone else's counts");
        messages::append(&mut conn, c, "matrix", &other).await.unwrap();

        assert_eq!(shown_outside(&mut conn, target.id, "discord", "42").await.unwrap(), ["👍"]);
        assert_eq!(shown_outside(&mut conn, target.id, "telegram", "-1").await.unwrap(), ["👍", "👍"]);

        let mut never = from("discord", "42", "7", "🎉", target.id, true);
        assert!(!settle(&mut conn, &mut never).await.unwrap(), "taking back what was never there changes nothing");
        let mut undo = from("discord", "42", "7", "👍", target.id, true);
        assert!(settle(&mut conn, &mut undo).await.unwrap());
        assert_eq!(removed_reaction(&undo), Some(like.id), "a removal names the reaction it takes back");
        assert_eq!(undo.meta_str(metadata_keys::SENDER_NAME), Some("Dan"), "and keeps its sender's name");
        messages::append(&mut conn, c, "discord", &undo).await.unwrap();
        let standing: Vec<String> =
            standing(&mut conn, target.id).await.unwrap().into_iter().map(|r| r.sender_id).collect();
        assert_eq!(standing, ["@b:x"]);
        let mut unknown = ChannelMessage::reaction("42", "7", "👍", Uuid::new_v4(), false);
        assert!(!settle(&mut conn, &mut unknown).await.unwrap(), "a reaction to no known message");
    }

    #[tokio::test]
    async fn a_clearing_takes_back_what_its_chat_shows_once() {
        let (_dir, store) = store().await;
        let mut conn = store.begin_write().await.unwrap();
        let c = crate::store::conversations::create_conversation(&mut conn, "test", None).await.unwrap().id;
        let target = ChannelMessage::new("!r", "@a:x", SenderType::User, "hi", ContentType::Text);
        messages::append(&mut conn, &c, "matrix", &target).await.unwrap();
        let mut dan = from("discord", "42", "7", "👍", target.id, false);
        dan.metadata.insert(metadata_keys::SENDER_NAME.into(), "Dan".into());
        let eve = from("discord", "42", "8", "🎉", target.id, false);
        let bob = from("matrix", "!r", "@b:x", "👍", target.id, false);
        for reaction in [&dan, &eve, &bob] {
            messages::append(&mut conn, &c, reaction.origin_channel(), reaction).await.unwrap();
        }
        let clearing = |key: Option<&str>| {
            let event = ChannelEvent::ReactionsCleared { target: target.id, key: key.map(str::to_string) };
            let mut msg = ChannelMessage::new("42", "", SenderType::User, "", ContentType::Text).with_event(event);
            msg.metadata.insert(metadata_keys::ORIGIN_CHANNEL.into(), "discord".into());
            msg
        };

        let thumbs = cleared(&mut conn, &clearing(Some("👍"))).await.unwrap();
        assert_eq!(thumbs.len(), 1, "only that key, only this chat's");
        assert_eq!(removed_reaction(&thumbs[0]), Some(dan.id));
        assert_eq!((thumbs[0].sender_id.as_str(), key_of(&thumbs[0])), ("7", "👍"));
        assert_eq!(thumbs[0].meta_str(metadata_keys::SENDER_NAME), Some("Dan"));
        messages::append(&mut conn, &c, "discord", &thumbs[0]).await.unwrap();

        let all = cleared(&mut conn, &clearing(None)).await.unwrap();
        assert_eq!(all.iter().map(removed_reaction).collect::<Vec<_>>(), [Some(eve.id)]);
        messages::append(&mut conn, &c, "discord", &all[0]).await.unwrap();
        assert!(cleared(&mut conn, &clearing(None)).await.unwrap().is_empty(), "nothing of that chat stands");
        let standing: Vec<String> =
            standing(&mut conn, target.id).await.unwrap().into_iter().map(|r| r.sender_id).collect();
        assert_eq!(standing, ["@b:x"], "what people elsewhere show stays");
    }
}
