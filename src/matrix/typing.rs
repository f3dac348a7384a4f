//! People typing in Matrix rooms, read from the `m.typing` events a homeserver pushes
//! with transactions when the registration asks for ephemeral events (MSC2409: Synapse;
//! Conduit pushes none, so there nobody's typing is seen), and people of other surfaces
//! shown typing as their ghosts.
//!
//! `m.typing` names everybody typing in a room at once; what changed since the last one
//! becomes one typing start or stop per person for the hub. Our own users (the bot, the
//! agents, the ghosts of people elsewhere) are left out: their typing is what we show,
//! and read back it would echo to where it came from.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use ruma::OwnedUserId;
use ruma::api::client::typing::create_typing_event;
use ruma::api::client::typing::create_typing_event::v3::{Typing, TypingInfo};
use serde::Deserialize;
use serde_json::Value;

use super::adapter::{CHANNEL, MatrixAdapter, TYPING_TIMEOUT, send_error, send_room, transient};
use crate::namespace::Namespace;
use crate::protocol::{ChannelEvent, ChannelMessage, ChannelSendError, ContentType, SenderType};
use crate::store::conversations;

/// The ephemeral events of a transaction, under their stable or unstable name.
#[derive(Deserialize, Default)]
struct Ephemeral {
    #[serde(default)]
    ephemeral: Option<Vec<Value>>,
    #[serde(default, rename = "de.sorunome.msc2409.ephemeral")]
    unstable: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct TypingEvent {
    room_id: String,
    content: TypingContent,
}

#[derive(Deserialize)]
struct TypingContent {
    #[serde(default)]
    user_ids: Vec<String>,
}

/// The `m.typing` events of a transaction body: per room, who types there now.
/// Homeservers that send both names send the same events under each: one is read.
fn typing_events(body: &[u8]) -> Vec<TypingEvent> {
    let Ok(ephemeral) = serde_json::from_slice::<Ephemeral>(body) else { return Vec::new() };
    let events = ephemeral.ephemeral.or(ephemeral.unstable).unwrap_or_default();
    events
        .into_iter()
        .filter(|event| event["type"] == "m.typing")
        .filter_map(|event| serde_json::from_value(event).ok())
        .collect()
}

/// Per room, the people last seen typing there.
#[derive(Default)]
pub struct TypingRooms {
    rooms: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl TypingRooms {
    /// Who started (`true`) and who stopped (`false`) typing in `room`, now that `typing`
    /// are; our own users are not people here.
    fn changes(&self, ns: &Namespace, room: &str, typing: &[String]) -> Vec<(String, bool)> {
        let now: BTreeSet<String> = typing.iter().filter(|user| !ns.is_ours(user)).cloned().collect();
        let mut rooms = self.rooms.lock().expect("typing rooms");
        let before = rooms.remove(room).unwrap_or_default();
        let mut changes: Vec<(String, bool)> = before.difference(&now).map(|user| (user.clone(), false)).collect();
        changes.extend(now.difference(&before).map(|user| (user.clone(), true)));
        if !now.is_empty() {
            rooms.insert(room.to_string(), now);
        }
        changes
    }
}

impl MatrixAdapter {
    /// Hands the typing starts and stops a transaction carries to the hub, one try each:
    /// typing is ephemeral, and a failure is only logged.
    pub async fn on_ephemeral(&self, body: &[u8]) {
        for event in typing_events(body) {
            for (user, active) in self.typing_rooms.changes(self.namespace(), &event.room_id, &event.content.user_ids) {
                let Ok(handler) = self.handler() else { return };
                let typing = ChannelEvent::Typing { active, lasts_ms: None };
                let msg = ChannelMessage::new(&event.room_id, &user, SenderType::User, "", ContentType::Text)
                    .with_event(typing);
                if let Err(error) = handler.handle(msg).await {
                    tracing::debug!(channel = CHANNEL, room_id = event.room_id, active, %error, "typing not passed on");
                }
            }
        }
    }

    /// The ghost of a person of another surface types in `room_id`, once that ghost is in
    /// the room (it joins with their first message there): typing alone creates no ghost
    /// and no membership.
    pub(super) async fn show_person_typing(
        &self,
        room_id: &str,
        by: &ChannelMessage,
        active: bool,
    ) -> Result<(), ChannelSendError> {
        let ghost = self.namespace().remote_user_id(by.origin_channel(), &by.sender_id);
        let joined = {
            let mut conn = self.store().conn().await.map_err(transient)?;
            conversations::membership(&mut conn, room_id, &ghost).await.map_err(transient)?
        };
        if joined.as_deref() != Some("join") {
            return Ok(());
        }
        let ghost = OwnedUserId::try_from(ghost).map_err(|e| ChannelSendError::Terminal(e.to_string()))?;
        let room = send_room(room_id)?;
        // Renewed and cleared like an agent's: the timeout only matters when the service
        // stops while the person types.
        let state = match active {
            true => Typing::Yes(TypingInfo::new(TYPING_TIMEOUT)),
            false => Typing::No,
        };
        let request = create_typing_event::v3::Request::new(ghost.clone(), room, state);
        self.client().call(request, Some(&ghost)).await.map_err(send_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_is_read_under_either_name_and_once() {
        let event =
            |users: &[&str]| serde_json::json!({"type": "m.typing", "room_id": "!r:x", "content": {"user_ids": users}});
        let receipt = serde_json::json!({"type": "m.receipt", "room_id": "!r:x", "content": {"$e": {}}});
        let both = serde_json::json!({
            "events": [],
            "ephemeral": [receipt, event(&["@a:x"])],
            "de.sorunome.msc2409.ephemeral": [receipt, event(&["@a:x"])],
        });
        let read = typing_events(serde_json::to_vec(&both).unwrap().as_slice());
        assert_eq!(read.len(), 1, "the receipt is not typing, and the unstable copy is not read again");
        assert_eq!(read[0].content.user_ids, ["@a:x"]);
        let unstable = serde_json::json!({"events": [], "de.sorunome.msc2409.ephemeral": [event(&[])]});
        assert_eq!(typing_events(serde_json::to_vec(&unstable).unwrap().as_slice()).len(), 1);
        assert!(typing_events(br#"{"events": []}"#).is_empty());
    }

    #[test]
    fn only_changes_of_people_count_and_our_own_users_never() {
        let config = crate::config::Config::parse(crate::config::tests::MINIMAL).unwrap();
        let ns = Namespace::from_config(&config);
        let ghost = ns.remote_user_id("discord", "123");
        let agent = ns.agent_user_id("echo");
        let rooms = TypingRooms::default();
        let alice = "@alice:example.org".to_string();
        let bob = "@bob:example.org".to_string();
        assert_eq!(rooms.changes(&ns, "!r", &[alice.clone(), ghost.clone(), agent.clone()]), [(alice.clone(), true)]);
        assert_eq!(rooms.changes(&ns, "!r", &[alice.clone(), bob.clone()]), [(bob.clone(), true)], "Alice goes on");
        assert_eq!(rooms.changes(&ns, "!other", std::slice::from_ref(&bob)), [(bob.clone(), true)], "rooms apart");
        assert_eq!(rooms.changes(&ns, "!r", &[ghost]), [(alice, false), (bob, false)]);
        assert!(rooms.changes(&ns, "!r", &[]).is_empty());
        assert!(rooms.rooms.lock().unwrap().get("!r").is_none(), "a room nobody types in is forgotten");
    }
}
