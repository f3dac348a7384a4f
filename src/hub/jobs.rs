//! The outbox's work, typed. Every job the hub and the agents queue is a [`Job`]; the
//! outbox stores it as a kind (its `kind` column) and the JSON of the variant's payload
//! (its `payload` column). Those kind names and payload shapes are the stored format:
//! rows written by earlier versions decode unchanged, and a row of a kind this version
//! does not know is an error (its job becomes a dead letter), never a panic.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::bridging::{CloseBridgeJob, OpenBridgeJob};
use super::room_ops::{
    AgentRoomJob, CreateRoomJob, InviteJob, KickJob, PersonalSpaceJob, ReadOnlyJob, RenameJob, RoomOp, ShareJob,
    TeamInviteJob, TeamSpaceJob, TombstoneJob, UnshareJob, WelcomeJob,
};
use super::{SendJob, TurnJob};

/// One piece of outgoing work.
#[derive(Debug, Clone)]
pub enum Job {
    /// Deliver a message to one chat of a surface.
    Send(SendJob),
    /// One agent answers one message.
    Turn(TurnJob),
    /// Prepare a newly bridged chat and tell the conversation's room how it went.
    OpenBridge(OpenBridgeJob),
    /// The surface releases what it prepared for a chat that is no longer bridged.
    CloseBridge(CloseBridgeJob),
    /// Room and Space work on the homeserver ([`super::room_ops`]).
    Room(RoomOp),
}

/// Why a stored job cannot be read. Such a job can never run: it is a dead letter.
#[derive(Debug, thiserror::Error)]
pub enum JobDecodeError {
    #[error("unknown job kind {0:?}")]
    UnknownKind(String),
    #[error("bad {kind} payload: {reason}")]
    Payload { kind: &'static str, reason: String },
}

// The stored kinds. They name rows in databases: never change one.
const SEND: &str = "send";
const TURN: &str = "agent.turn";
const OPEN_BRIDGE: &str = "bridge.open";
const CLOSE_BRIDGE: &str = "bridge.close";
const CREATE_ROOM: &str = "matrix.create_room";
const INVITE: &str = "matrix.invite";
const AGENT_ROOM: &str = "matrix.agent_room";
const STATE: &str = "matrix.state";
const READ_ONLY: &str = "matrix.read_only";
const WELCOME: &str = "matrix.welcome";
const KICK: &str = "matrix.kick";
const TEAM_SPACE: &str = "matrix.team_space";
const SHARE: &str = "matrix.share";
const UNSHARE: &str = "matrix.unshare";
const TEAM_INVITE: &str = "matrix.team_invite";
const PERSONAL_SPACE: &str = "matrix.personal_space";

impl Job {
    /// The stored kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Send(_) => SEND,
            Self::Turn(_) => TURN,
            Self::OpenBridge(_) => OPEN_BRIDGE,
            Self::CloseBridge(_) => CLOSE_BRIDGE,
            Self::Room(op) => op.kind(),
        }
    }

    /// The stored payload: the JSON of the variant's payload.
    pub fn payload(&self) -> serde_json::Result<String> {
        match self {
            Self::Send(job) => serde_json::to_string(job),
            Self::Turn(job) => serde_json::to_string(job),
            Self::OpenBridge(job) => serde_json::to_string(job),
            Self::CloseBridge(job) => serde_json::to_string(job),
            Self::Room(op) => op.payload(),
        }
    }

    /// Reads a stored job back.
    pub fn decode(kind: &str, payload: &str) -> Result<Self, JobDecodeError> {
        Ok(match kind {
            SEND => Self::Send(parse(SEND, payload)?),
            TURN => Self::Turn(parse(TURN, payload)?),
            OPEN_BRIDGE => Self::OpenBridge(parse(OPEN_BRIDGE, payload)?),
            CLOSE_BRIDGE => Self::CloseBridge(parse(CLOSE_BRIDGE, payload)?),
            other => Self::Room(RoomOp::decode(other, payload)?),
        })
    }
}

impl RoomOp {
    /// The stored kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CreateRoom(_) => CREATE_ROOM,
            Self::Invite(_) => INVITE,
            Self::AgentRoom(_) => AGENT_ROOM,
            Self::Rename(_) | Self::Tombstone(_) => STATE,
            Self::ReadOnly(_) => READ_ONLY,
            Self::Welcome(_) => WELCOME,
            Self::Kick(_) => KICK,
            Self::TeamSpace(_) => TEAM_SPACE,
            Self::Share(_) => SHARE,
            Self::Unshare(_) => UNSHARE,
            Self::TeamInvite(_) => TEAM_INVITE,
            Self::PersonalSpace(_) => PERSONAL_SPACE,
        }
    }

    fn payload(&self) -> serde_json::Result<String> {
        match self {
            Self::CreateRoom(job) => serde_json::to_string(job),
            Self::Invite(job) => serde_json::to_string(job),
            Self::AgentRoom(job) => serde_json::to_string(job),
            Self::Rename(job) => serde_json::to_string(&StoredState::name(job)),
            Self::Tombstone(job) => serde_json::to_string(&StoredState::tombstone(job)),
            Self::ReadOnly(job) => serde_json::to_string(job),
            Self::Welcome(job) => serde_json::to_string(job),
            Self::Kick(job) => serde_json::to_string(job),
            Self::TeamSpace(job) => serde_json::to_string(job),
            Self::Share(job) => serde_json::to_string(job),
            Self::Unshare(job) => serde_json::to_string(job),
            Self::TeamInvite(job) => serde_json::to_string(job),
            Self::PersonalSpace(job) => serde_json::to_string(job),
        }
    }

    fn decode(kind: &str, payload: &str) -> Result<Self, JobDecodeError> {
        Ok(match kind {
            CREATE_ROOM => Self::CreateRoom(parse(CREATE_ROOM, payload)?),
            INVITE => Self::Invite(parse(INVITE, payload)?),
            AGENT_ROOM => Self::AgentRoom(parse(AGENT_ROOM, payload)?),
            STATE => parse::<StoredState>(STATE, payload)?.into_op()?,
            READ_ONLY => Self::ReadOnly(parse(READ_ONLY, payload)?),
            WELCOME => Self::Welcome(parse(WELCOME, payload)?),
            KICK => Self::Kick(parse(KICK, payload)?),
            TEAM_SPACE => Self::TeamSpace(parse(TEAM_SPACE, payload)?),
            SHARE => Self::Share(parse(SHARE, payload)?),
            UNSHARE => Self::Unshare(parse(UNSHARE, payload)?),
            TEAM_INVITE => Self::TeamInvite(parse(TEAM_INVITE, payload)?),
            PERSONAL_SPACE => Self::PersonalSpace(parse(PERSONAL_SPACE, payload)?),
            other => return Err(JobDecodeError::UnknownKind(other.to_string())),
        })
    }
}

fn parse<T: DeserializeOwned>(kind: &'static str, payload: &str) -> Result<T, JobDecodeError> {
    serde_json::from_str(payload).map_err(|error| JobDecodeError::Payload { kind, reason: error.to_string() })
}

/// How renames and tombstones are stored: as the state event they set (kind
/// `matrix.state`), which is how versions before [`RoomOp::Rename`] and
/// [`RoomOp::Tombstone`] queued them. Other state events are not queued.
#[derive(Serialize, Deserialize)]
struct StoredState {
    room_id: String,
    event_type: String,
    state_key: String,
    content: serde_json::Value,
}

const ROOM_NAME: &str = "m.room.name";
const ROOM_TOMBSTONE: &str = "m.room.tombstone";

impl StoredState {
    fn name(job: &RenameJob) -> Self {
        Self {
            room_id: job.room_id.clone(),
            event_type: ROOM_NAME.into(),
            state_key: String::new(),
            content: json!({ "name": job.name }),
        }
    }

    fn tombstone(job: &TombstoneJob) -> Self {
        Self {
            room_id: job.room_id.clone(),
            event_type: ROOM_TOMBSTONE.into(),
            state_key: String::new(),
            content: json!({ "body": job.body, "replacement_room": "" }),
        }
    }

    fn into_op(self) -> Result<RoomOp, JobDecodeError> {
        let text = |field: &str| match self.content.get(field).and_then(serde_json::Value::as_str) {
            Some(text) => Ok(text.to_string()),
            None => Err(JobDecodeError::Payload {
                kind: STATE,
                reason: format!("{} without a text {field:?}", self.event_type),
            }),
        };
        let op = match self.event_type.as_str() {
            ROOM_NAME => RoomOp::Rename(RenameJob { name: text("name")?, room_id: self.room_id.clone() }),
            ROOM_TOMBSTONE => RoomOp::Tombstone(TombstoneJob { body: text("body")?, room_id: self.room_id.clone() }),
            other => {
                return Err(JobDecodeError::Payload {
                    kind: STATE,
                    reason: format!("no state event {other:?} is queued"),
                });
            }
        };
        Ok(op)
    }
}

macro_rules! job_from {
    ($($payload:ty => $variant:ident),* $(,)?) => {
        $(impl From<$payload> for Job {
            fn from(job: $payload) -> Self {
                Self::$variant(job)
            }
        })*
    };
}

macro_rules! room_op_from {
    ($($payload:ty => $variant:ident),* $(,)?) => {
        $(impl From<$payload> for Job {
            fn from(job: $payload) -> Self {
                Self::Room(RoomOp::$variant(job))
            }
        })*
    };
}

job_from! {
    SendJob => Send,
    TurnJob => Turn,
    OpenBridgeJob => OpenBridge,
    CloseBridgeJob => CloseBridge,
    RoomOp => Room,
}

room_op_from! {
    CreateRoomJob => CreateRoom,
    InviteJob => Invite,
    AgentRoomJob => AgentRoom,
    RenameJob => Rename,
    TombstoneJob => Tombstone,
    ReadOnlyJob => ReadOnly,
    WelcomeJob => Welcome,
    KickJob => Kick,
    TeamSpaceJob => TeamSpace,
    ShareJob => Share,
    UnshareJob => Unshare,
    TeamInviteJob => TeamInvite,
    PersonalSpaceJob => PersonalSpace,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// One row of every kind, as versions before the typed jobs wrote them.
    fn stored_rows() -> Vec<(&'static str, Value)> {
        vec![
            (
                "send",
                json!({"channel": "telegram", "channel_id": "-100", "message": {
                    "id": "6f1c8f0e-4a52-4a5e-9c1c-0b4c3f2d9a11", "channelId": "-100", "senderId": "mosaic",
                    "senderType": "system", "content": "Hello", "contentType": "text", "metadata": {},
                    "timestamp": "2026-12-01T10:00:00Z"}}),
            ),
            (
                "agent.turn",
                json!({"agent": "echo", "conversation_id": "c1", "message_id": "6f1c8f0e-4a52-4a5e-9c1c-0b4c3f2d9a11",
                    "prompt": "Ask b", "step": {"kind": "request", "to": "b"}}),
            ),
            ("bridge.open", json!({"channel": "discord", "channel_id": "42", "conversation_id": "c1"})),
            ("bridge.close", json!({"channel": "discord", "channel_id": "42", "conversation_id": "c1"})),
            (
                "matrix.create_room",
                json!({"conversation_id": "c1", "title": "Plans", "invite": ["@alice:x"], "agents": ["echo"]}),
            ),
            ("matrix.invite", json!({"room_id": "!r:x", "agent": "echo"})),
            ("matrix.agent_room", json!({"owner_account_id": "a1", "agents": ["a", "b"], "observers": ["@alice:x"]})),
            (
                "matrix.state",
                json!({"room_id": "!r:x", "event_type": "m.room.name", "state_key": "",
                    "content": {"name": "Mosaic: Plans"}}),
            ),
            (
                "matrix.state",
                json!({"room_id": "!r:x", "event_type": "m.room.tombstone", "state_key": "",
                    "content": {"body": "This conversation was archived and is read-only.", "replacement_room": ""}}),
            ),
            ("matrix.read_only", json!({"room_id": "!r:x"})),
            ("matrix.welcome", json!({"account_id": "a1", "account_name": "alice", "user_id": "@alice:x"})),
            (
                "matrix.kick",
                json!({"room_id": "!r:x", "user_id": "@alice:x", "reason": "Your Mosaic account link was revoked"}),
            ),
            ("matrix.team_space", json!({"team_id": "t1", "team_name": "Ops", "invite": ["@alice:x"]})),
            ("matrix.share", json!({"team_id": "t1", "team_name": "Ops", "room_id": "!r:x", "previous_space": "!s:x"})),
            ("matrix.unshare", json!({"room_id": "!r:x", "space_id": null})),
            ("matrix.team_invite", json!({"team_id": "t1", "team_name": "Ops", "user_id": "@alice:x"})),
            ("matrix.personal_space", json!({"account_id": "a1", "account_name": "alice", "user_id": "@alice:x"})),
        ]
    }

    #[test]
    fn stored_rows_of_every_kind_decode_and_are_written_back_the_same() {
        let rows = stored_rows();
        assert_eq!(rows.len(), 17, "one row per kind, two for the state events");
        for (kind, payload) in rows {
            let job = Job::decode(kind, &payload.to_string()).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(job.kind(), kind);
            let written: Value = serde_json::from_str(&job.payload().unwrap()).unwrap();
            assert_eq!(written, payload, "{kind}");
        }
    }

    #[test]
    fn stored_rows_decode_to_their_variants() {
        let decode = |kind: &str| {
            let (_, payload) = stored_rows().into_iter().find(|(k, _)| *k == kind).unwrap();
            Job::decode(kind, &payload.to_string()).unwrap()
        };
        assert!(matches!(decode("send"), Job::Send(SendJob { channel, .. }) if channel == "telegram"));
        assert!(matches!(decode("agent.turn"), Job::Turn(TurnJob { step: Some(_), .. })));
        assert!(matches!(decode("bridge.open"), Job::OpenBridge(_)));
        assert!(
            matches!(decode("bridge.close"), Job::CloseBridge(CloseBridgeJob { channel_id, .. }) if channel_id == "42")
        );
        assert!(matches!(decode("matrix.create_room"), Job::Room(RoomOp::CreateRoom(_))));
        assert!(matches!(decode("matrix.invite"), Job::Room(RoomOp::Invite(_))));
        assert!(matches!(decode("matrix.agent_room"), Job::Room(RoomOp::AgentRoom(_))));
        assert!(
            matches!(decode("matrix.state"), Job::Room(RoomOp::Rename(RenameJob { name, .. })) if name == "Mosaic: Plans")
        );
        assert!(matches!(decode("matrix.read_only"), Job::Room(RoomOp::ReadOnly(_))));
        assert!(matches!(decode("matrix.welcome"), Job::Room(RoomOp::Welcome(_))));
        assert!(matches!(decode("matrix.kick"), Job::Room(RoomOp::Kick(_))));
        assert!(matches!(decode("matrix.team_space"), Job::Room(RoomOp::TeamSpace(_))));
        assert!(matches!(decode("matrix.share"), Job::Room(RoomOp::Share(_))));
        assert!(matches!(decode("matrix.unshare"), Job::Room(RoomOp::Unshare(_))));
        assert!(matches!(decode("matrix.team_invite"), Job::Room(RoomOp::TeamInvite(_))));
        assert!(matches!(decode("matrix.personal_space"), Job::Room(RoomOp::PersonalSpace(_))));
    }

    #[test]
    fn renames_and_tombstones_are_stored_as_the_state_events_they_set() {
        let rename = Job::from(RenameJob { room_id: "!r:x".into(), name: "Mosaic: Plans".into() });
        let tombstone = Job::from(TombstoneJob { room_id: "!r:x".into(), body: "Archived.".into() });
        assert_eq!((rename.kind(), tombstone.kind()), ("matrix.state", "matrix.state"));
        let stored: Value = serde_json::from_str(&tombstone.payload().unwrap()).unwrap();
        let expected = json!({"room_id": "!r:x", "event_type": "m.room.tombstone", "state_key": "",
            "content": {"body": "Archived.", "replacement_room": ""}});
        assert_eq!(stored, expected);
        let Job::Room(RoomOp::Tombstone(back)) = Job::decode("matrix.state", &stored.to_string()).unwrap() else {
            panic!("not a tombstone")
        };
        assert_eq!(back, TombstoneJob { room_id: "!r:x".into(), body: "Archived.".into() });
        let Job::Room(RoomOp::Rename(back)) = Job::decode("matrix.state", &rename.payload().unwrap()).unwrap() else {
            panic!("not a rename")
        };
        assert_eq!(back, RenameJob { room_id: "!r:x".into(), name: "Mosaic: Plans".into() });
    }

    #[test]
    fn state_events_other_than_names_and_tombstones_are_not_queued() {
        let topic = r#"{"room_id":"!r:x","event_type":"m.room.topic","state_key":"","content":{"topic":"t"}}"#;
        let error = Job::decode("matrix.state", topic).unwrap_err();
        assert_eq!(error.to_string(), r#"bad matrix.state payload: no state event "m.room.topic" is queued"#);
        let nameless = r#"{"room_id":"!r:x","event_type":"m.room.name","state_key":"","content":{}}"#;
        assert!(Job::decode("matrix.state", nameless).is_err());
    }

    #[test]
    fn turns_stored_before_prompts_and_steps_still_decode() {
        let payload = r#"{"agent":"echo","conversation_id":"c1","message_id":"6f1c8f0e-4a52-4a5e-9c1c-0b4c3f2d9a11"}"#;
        let Job::Turn(turn) = Job::decode("agent.turn", payload).unwrap() else { panic!("not a turn") };
        assert_eq!((turn.prompt, turn.step), (None, None));
    }

    #[test]
    fn an_unknown_kind_or_a_bad_payload_is_an_error() {
        let unknown = Job::decode("matrix.frobnicate", "{}").unwrap_err();
        assert!(matches!(unknown, JobDecodeError::UnknownKind(_)));
        assert_eq!(unknown.to_string(), r#"unknown job kind "matrix.frobnicate""#);
        let bad = Job::decode("matrix.kick", r#"{"room_id":"!r:x"}"#).unwrap_err();
        assert!(bad.to_string().starts_with("bad matrix.kick payload: missing field"), "{bad}");
        assert!(Job::decode("send", "not json").is_err());
    }
}
