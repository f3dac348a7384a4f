//! A room's power, read from the homeserver when someone sends a command: the sender's
//! level and the level each room change needs, from the room's current
//! `m.room.power_levels` and its creators (the `m.room.create` sender and its
//! `additional_creators`, who have unlimited power from room version 12 on).
//!
//! Which Matrix state a room change touches is decided here, so that the hub only
//! compares numbers (see [`crate::protocol::room_power`]).

use ruma::api::client::state::get_state_event_for_key::v3 as get_state;
use ruma::events::StateEventType;
use ruma::events::room::create::RoomCreateEventContent;
use ruma::events::room::power_levels::{
    PowerLevelAction, RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource, UserPowerLevel,
};
use ruma::room_version_rules::AuthorizationRules;
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::Value;

use super::adapter::MatrixAdapter;
use super::rooms::creator_is_privileged;
use crate::protocol::room_power::{RoomChange, RoomPower};

/// What a room change does in Matrix terms: the state events it sends and the membership
/// actions it takes. It needs the highest of their levels.
fn actions(change: RoomChange) -> Vec<PowerLevelAction> {
    let state = |kind: &str| PowerLevelAction::SendState(StateEventType::from(kind));
    match change {
        RoomChange::Rename => vec![state("m.room.name")],
        // Archiving makes the room read-only by rewriting its power levels. The bot also
        // ends the room with a tombstone, but that is not counted: from room version 12
        // on, homeservers reserve tombstones (room upgrades) for creators (Synapse: 150),
        // which would leave archiving to the bot alone.
        RoomChange::Archive => vec![state("m.room.power_levels")],
        // Retention decides who can still read the room's history, as history visibility
        // does; `m.room.retention` is the policy's own state event.
        RoomChange::Retention => vec![state("m.room.retention"), state("m.room.history_visibility")],
        RoomChange::Share => {
            vec![state("m.space.parent"), state("m.room.history_visibility"), PowerLevelAction::Invite]
        }
        RoomChange::Unshare => {
            vec![state("m.space.parent"), state("m.room.history_visibility"), PowerLevelAction::Kick]
        }
        // Room settings kept by mosaic-as rather than in the room's state: the level any
        // state change needs.
        RoomChange::DefaultAgent | RoomChange::MentionOnly | RoomChange::AnswerUnlinked => {
            vec![state("org.mosaic.room_settings")]
        }
        RoomChange::InviteAgent => vec![PowerLevelAction::Invite],
    }
}

/// The sender's power and what each change needs, from the room's `m.room.power_levels`
/// content (`None` when the room has none) and its `m.room.create` event.
pub fn room_power(power_levels: Option<&Value>, create: &Value, sender: &UserId) -> Result<RoomPower, String> {
    let levels = levels(power_levels, create)?;
    let sender_level = match levels.for_user(sender) {
        UserPowerLevel::Int(level) => Some(i64::from(level)),
        _ => None,
    };
    let needs = RoomChange::ALL
        .iter()
        .map(|change| {
            let needed = actions(*change).into_iter().map(|a| i64::from(levels.for_action(a))).max().unwrap_or(0);
            (*change, needed)
        })
        .collect();
    Ok(RoomPower { sender: sender_level, needs })
}

/// Whether `user` may redact other people's events, from the same state as [`room_power`].
pub fn may_redact_others(power_levels: Option<&Value>, create: &Value, user: &UserId) -> Result<bool, String> {
    Ok(levels(power_levels, create)?.user_can_redact_event_of_other(user))
}

/// The room's power levels as the room version's rules read them.
fn levels(power_levels: Option<&Value>, create: &Value) -> Result<RoomPowerLevels, String> {
    // Servers that ignore `format=event` answer with the content alone.
    let (create_content, create_sender) = match create.get("content") {
        Some(content) => (content, create.get("sender").and_then(Value::as_str)),
        None => (create, None),
    };
    let create_content: RoomCreateEventContent =
        serde_json::from_value(create_content.clone()).map_err(|e| format!("bad m.room.create: {e}"))?;
    let version = create_content.room_version.as_str();
    let rules = match create_content.room_version.rules() {
        Some(rules) => rules.authorization,
        None if creator_is_privileged(version) => AuthorizationRules::V12,
        None => AuthorizationRules::V11,
    };
    let mut creators: Vec<OwnedUserId> =
        create_sender.and_then(|s| OwnedUserId::try_from(s).ok()).into_iter().collect();
    if rules.additional_room_creators {
        creators.extend(create_content.additional_creators.iter().cloned());
    }
    let source = match power_levels {
        Some(content) => RoomPowerLevelsSource::Original(
            serde_json::from_value::<RoomPowerLevelsEventContent>(content.clone())
                .map_err(|e| format!("bad m.room.power_levels: {e}"))?,
        ),
        None => RoomPowerLevelsSource::None,
    };
    Ok(RoomPowerLevels::new(source, &rules, creators))
}

impl MatrixAdapter {
    /// Reads the room's power for `sender` as `reader` (a member of the room).
    pub(super) async fn read_room_power(
        &self,
        room: &OwnedRoomId,
        reader: &UserId,
        sender: &UserId,
    ) -> Result<RoomPower, String> {
        let (levels, create) = self.read_power_state(room, reader).await?;
        room_power(levels.as_ref(), &create, sender)
    }

    /// Whether `user` (a member of the room) may redact other people's events there.
    pub(super) async fn may_redact_others(&self, room: &OwnedRoomId, user: &UserId) -> Result<bool, String> {
        let (levels, create) = self.read_power_state(room, user).await?;
        may_redact_others(levels.as_ref(), &create, user)
    }

    /// The room's `m.room.power_levels` content (if any) and `m.room.create` event.
    async fn read_power_state(&self, room: &OwnedRoomId, reader: &UserId) -> Result<(Option<Value>, Value), String> {
        let mut create = get_state::Request::new(room.clone(), StateEventType::RoomCreate, String::new());
        create.format = get_state::StateEventFormat::Event;
        let create = self.client().call(create, Some(reader)).await.map_err(|e| e.to_string())?;
        let create: Value = serde_json::from_str(create.event_or_content.get()).map_err(|e| e.to_string())?;
        let levels = get_state::Request::new(room.clone(), StateEventType::RoomPowerLevels, String::new());
        let levels = match self.client().call(levels, Some(reader)).await {
            Ok(found) => Some(serde_json::from_str::<Value>(found.event_or_content.get()).map_err(|e| e.to_string())?),
            Err(error) if error.errcode() == Some("M_NOT_FOUND") => None,
            Err(error) => return Err(error.to_string()),
        };
        Ok((levels, create))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(id: &str) -> OwnedUserId {
        OwnedUserId::try_from(id).unwrap()
    }

    /// Power levels as this service creates them, with Synapse's default per-event levels.
    fn levels(users: Value) -> Value {
        json!({
            "users": users,
            "users_default": 0,
            "events_default": 0,
            "state_default": 50,
            "invite": 50,
            "kick": 50,
            "ban": 50,
            "redact": 50,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.tombstone": 150,
                "m.room.avatar": 50,
            },
        })
    }

    fn v12_create(sender: &str, additional: &[&str]) -> Value {
        json!({
            "type": "m.room.create",
            "sender": sender,
            "state_key": "",
            "content": {"room_version": "12", "additional_creators": additional},
        })
    }

    #[test]
    fn a_member_at_the_default_level_is_below_every_change() {
        let levels = levels(json!({"@alice:x": 50}));
        let power = room_power(Some(&levels), &v12_create("@bot:x", &[]), &user("@mallory:x")).unwrap();
        assert_eq!(power.sender, Some(0));
        assert_eq!(power.needs[&RoomChange::Retention], 100);
        assert_eq!(power.needs[&RoomChange::Rename], 50);
        assert_eq!(power.needs[&RoomChange::Archive], 100);
        assert_eq!(power.needs[&RoomChange::Share], 100);
        assert_eq!(power.needs[&RoomChange::Unshare], 100);
        assert_eq!(power.needs[&RoomChange::MentionOnly], 50);
        assert_eq!(power.needs[&RoomChange::InviteAgent], 50);
        let alice = room_power(Some(&levels), &v12_create("@bot:x", &[]), &user("@alice:x")).unwrap();
        assert_eq!(alice.sender, Some(50));
    }

    #[test]
    fn room_version_12_creators_have_unlimited_power() {
        let levels = levels(json!({}));
        let create = v12_create("@alice:x", &["@carol:x"]);
        assert_eq!(room_power(Some(&levels), &create, &user("@alice:x")).unwrap().sender, None);
        assert_eq!(room_power(Some(&levels), &create, &user("@carol:x")).unwrap().sender, None);
        assert_eq!(room_power(Some(&levels), &create, &user("@bob:x")).unwrap().sender, Some(0));
    }

    #[test]
    fn before_version_12_the_creator_has_the_level_the_room_gives() {
        let levels = levels(json!({"@alice:x": 100}));
        let create = json!({"sender": "@alice:x", "content": {"room_version": "10", "creator": "@alice:x"}});
        assert_eq!(room_power(Some(&levels), &create, &user("@alice:x")).unwrap().sender, Some(100));
        // `additional_creators` means nothing there.
        let create =
            json!({"sender": "@alice:x", "content": {"room_version": "11", "additional_creators": ["@eve:x"]}});
        assert_eq!(room_power(Some(&levels), &create, &user("@eve:x")).unwrap().sender, Some(0));
    }

    #[test]
    fn the_room_s_own_levels_decide() {
        let mut strict = levels(json!({"@alice:x": 50}));
        strict["events"]["m.room.name"] = json!(75);
        strict["events"]["org.mosaic.room_settings"] = json!(100);
        strict["state_default"] = json!(60);
        let power = room_power(Some(&strict), &v12_create("@bot:x", &[]), &user("@alice:x")).unwrap();
        assert_eq!(power.needs[&RoomChange::Rename], 75);
        assert_eq!(power.needs[&RoomChange::DefaultAgent], 100);
        assert_eq!(power.needs[&RoomChange::Share], 100);
        // A room without power levels: the specification's defaults.
        let none = room_power(None, &v12_create("@bot:x", &[]), &user("@alice:x")).unwrap();
        assert_eq!(
            (none.sender, none.needs[&RoomChange::Rename], none.needs[&RoomChange::InviteAgent]),
            (Some(0), 50, 0)
        );
    }

    #[test]
    fn a_create_content_without_its_event_still_reads() {
        let levels = levels(json!({"@alice:x": 50}));
        let power = room_power(Some(&levels), &json!({"room_version": "12"}), &user("@alice:x")).unwrap();
        assert_eq!(power.sender, Some(50));
    }
}
