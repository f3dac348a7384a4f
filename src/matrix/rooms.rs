//! Creating a conversation's room: named `Mosaic: <title>`, invite-only, the bot as
//! room admin, people at 50 and agents at 0.

use ruma::api::client::alias::get_alias;
use ruma::api::client::discovery::get_capabilities;
use ruma::api::client::membership::{invite_user, join_room_by_id};
use ruma::api::client::room::{Visibility, create_room};
use ruma::api::client::state::{get_state_event_for_key, send_state_event};
use ruma::events::room::message::RoomMessageEventContent;
use ruma::events::room::name::RoomNameEventContent;
use ruma::events::{EmptyStateKey, MessageLikeEventType, StateEventType};
use ruma::serde::Raw;
use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, UserId};
use serde_json::json;

use super::adapter::{EventError, MatrixAdapter};
use crate::config::E2eeConfig;
use crate::hub::room_ops::{
    AgentRoomJob, CreateRoomJob, InviteJob, PersonalSpaceJob, ReadOnlyJob, RenameJob, TombstoneJob, WelcomeJob,
    agent_room_alias_localpart,
};
use crate::store::{self, AnyConnection, conversations};

/// How a room is created.
pub struct RoomShape {
    /// Makes creation idempotent: a retry finds the room under its alias.
    pub alias_localpart: String,
    pub name: String,
    pub topic: String,
    pub history: HistoryVisibility,
    /// A Space rather than a room.
    pub space: bool,
}

/// Who may read a room's history: `invited` for personal rooms (members see what was
/// said since they were invited), `shared` for rooms people are brought into later.
#[derive(Debug, Clone, Copy)]
pub enum HistoryVisibility {
    Invited,
    Shared,
}

impl HistoryVisibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invited => "invited",
            Self::Shared => "shared",
        }
    }
}

/// Power needed for each action: people at 50 may moderate, agents (0) may only talk.
pub const PEOPLE_POWER: i64 = 50;

/// The person a room is created for (`!new`, `!pair`, their welcome chat and Space) owns
/// it, as if they had created it themselves: they may also archive it, set its retention
/// and share it, which need 100 in rooms with Synapse's default levels. The bot, which
/// creates the room, has unlimited power from room version 12 on and keeps 100 before.
pub const OWNER_POWER: i64 = 100;

/// Whether rooms this homeserver creates by default give their creator unlimited power
/// (room version 12 and its "hydra" predecessors). Then the creator must not be listed
/// in `m.room.power_levels.users`.
pub fn creator_is_privileged(room_version: &str) -> bool {
    room_version.parse::<u32>().is_ok_and(|v| v >= 12) || room_version.starts_with("org.matrix.hydra")
}

/// The `power_level_content_override` of a new room, owned by `owners`.
pub fn power_levels(bot: &str, owners: &[String], room_version: &str) -> serde_json::Value {
    let mut users = serde_json::Map::new();
    if !creator_is_privileged(room_version) {
        users.insert(bot.to_string(), json!(100));
    }
    for person in owners {
        users.insert(person.clone(), json!(OWNER_POWER));
    }
    json!({
        "users": users,
        "users_default": 0,
        "events_default": 0,
        "state_default": PEOPLE_POWER,
        "invite": PEOPLE_POWER,
        "kick": PEOPLE_POWER,
        "ban": PEOPLE_POWER,
        "redact": PEOPLE_POWER,
    })
}

impl MatrixAdapter {
    async fn default_room_version(&self) -> Result<String, EventError> {
        let version = self
            .room_version
            .get_or_try_init(|| async {
                let caps = self.client().call(get_capabilities::v3::Request::new(), None).await?;
                Ok::<_, EventError>(caps.capabilities.room_versions.default.to_string())
            })
            .await?;
        Ok(version.clone())
    }

    /// Creates the room (idempotently, through the conversation's alias) and records it.
    pub async fn create_conversation_room(&self, job: &CreateRoomJob) -> Result<OwnedRoomId, EventError> {
        let ns = self.namespace().clone();
        let bot = ns.bot_user_id();
        let bot_id = OwnedUserId::try_from(bot.as_str()).map_err(|e| EventError::Permanent(e.to_string()))?;
        self.ensure_known_user(&bot_id).await?;
        let agent_ids: Vec<OwnedUserId> =
            job.agents.iter().filter_map(|agent| OwnedUserId::try_from(ns.agent_user_id(agent)).ok()).collect();
        for agent in &agent_ids {
            self.ensure_known_user(agent).await?;
        }
        let room_id = match self.existing_room(&job.conversation_id).await? {
            Some(room) => room,
            None => {
                let shape = RoomShape {
                    alias_localpart: ns.conversation_alias_localpart(&job.conversation_id),
                    name: format!("Mosaic: {}", job.title),
                    topic: format!("Mosaic conversation {}", job.conversation_id),
                    history: HistoryVisibility::Invited,
                    space: false,
                };
                self.create_with_alias(job, &shape).await?
            }
        };
        for agent in &agent_ids {
            self.client().call(join_room_by_id::v3::Request::new(room_id.clone()), Some(agent)).await?;
        }
        let store = self.store();
        let mut tx = store.begin_write().await?;
        conversations::set_conversation_room(&mut tx, &job.conversation_id, room_id.as_str()).await?;
        conversations::set_membership(&mut tx, room_id.as_str(), &bot, "join").await?;
        for agent in &agent_ids {
            conversations::set_membership(&mut tx, room_id.as_str(), agent.as_str(), "join").await?;
        }
        for person in &job.invite {
            if conversations::membership(&mut tx, room_id.as_str(), person).await?.is_none() {
                conversations::set_membership(&mut tx, room_id.as_str(), person, "invite").await?;
            }
        }
        let space =
            match conversations::conversation(&mut tx, &job.conversation_id).await?.and_then(|c| c.owner_account_id) {
                Some(owner) => conversations::personal_space(&mut tx, &owner).await?,
                None => None,
            };
        tx.commit().await?;
        if let Some(space) = space {
            self.link_child(&space, room_id.as_str()).await?;
        }
        // The room is complete (agents in, Space linked) before its people are invited.
        if !agent_ids.is_empty() {
            for person in &job.invite {
                self.invite_person(&room_id, person).await?;
            }
        }
        tracing::info!(conversation_id = job.conversation_id, room_id = %room_id, "conversation room ready");
        Ok(room_id)
    }

    /// Invites an agent as the bot and joins it (an agent already there is fine).
    pub async fn invite_agent(&self, job: &InviteJob) -> Result<(), EventError> {
        let ns = self.namespace();
        let agent =
            OwnedUserId::try_from(ns.agent_user_id(&job.agent)).map_err(|e| EventError::Permanent(e.to_string()))?;
        let room = OwnedRoomId::try_from(job.room_id.as_str()).map_err(|e| EventError::Permanent(e.to_string()))?;
        self.ensure_known_user(&agent).await?;
        // As for an invite from a person: the device exists before the join, so that the
        // room's next encrypted message is encrypted for it too.
        if let Some(crypto) = self.crypto()
            && let Err(error) = crypto.device(&agent).await
        {
            tracing::warn!(room_id = job.room_id, user_id = %agent, %error, "no device for encrypted rooms; encrypted messages will stay unread");
        }
        // An agent invited or in the room already is fine: joining settles it.
        self.invite_person(&room, agent.as_str()).await?;
        self.client().call(join_room_by_id::v3::Request::new(room.clone()), Some(&agent)).await?;
        self.store()
            .write(async |conn| conversations::set_membership(conn, room.as_str(), agent.as_str(), "join").await)
            .await?;
        Ok(())
    }

    /// Creates the account's room of the two agents once (alias
    /// `#<alias_prefix>agents-<a>-<b>-<account id>`), joins both agents and invites the
    /// owner's identity that asked, who owns the room (power 100). Nobody else is invited:
    /// others come in when the owner invites them.
    pub async fn open_agent_room(&self, job: &AgentRoomJob) -> Result<OwnedRoomId, EventError> {
        let (a, b) = (&job.agents.0, &job.agents.1);
        let owner = job.owner_account_id.as_str();
        if owner.is_empty() {
            return Err(EventError::Permanent("an agent room needs an owning account".into()));
        }
        let existing = {
            let mut conn = self.store().conn().await?;
            store::agent_rooms::room_of_pair(&mut conn, owner, a, b).await?
        };
        let room_id = match existing.and_then(|r| OwnedRoomId::try_from(r).ok()) {
            Some(room) => {
                self.grant_power(&room, &job.observers, OWNER_POWER).await?;
                room
            }
            None => {
                let title = format!("{a} & {b}");
                let create = CreateRoomJob {
                    conversation_id: String::new(),
                    title,
                    invite: job.observers.clone(),
                    agents: vec![a.clone(), b.clone()],
                };
                let shape = RoomShape {
                    alias_localpart: agent_room_alias_localpart(&self.namespace().alias_prefix, owner, a, b),
                    name: format!("Mosaic agents: {a} & {b}"),
                    topic: format!("Where the agents {a} and {b} work together; people watch"),
                    history: HistoryVisibility::Shared,
                    space: false,
                };
                let room = self.create_with_alias(&create, &shape).await?;
                let mut tx = self.store().begin_write().await?;
                store::agent_rooms::record(&mut tx, room.as_str(), owner, a, b).await?;
                conversations::set_membership(&mut tx, room.as_str(), &self.namespace().bot_user_id(), "join").await?;
                conversations::conversation_for_room_or_create(&mut tx, room.as_str(), &format!("Agents {a} & {b}"))
                    .await?;
                tx.commit().await?;
                room
            }
        };
        for agent in [a, b] {
            let user = OwnedUserId::try_from(self.namespace().agent_user_id(agent))
                .map_err(|e| EventError::Permanent(e.to_string()))?;
            self.ensure_known_user(&user).await?;
            self.client().call(join_room_by_id::v3::Request::new(room_id.clone()), Some(&user)).await?;
            let join = async |conn: &mut AnyConnection| {
                conversations::set_membership(conn, room_id.as_str(), user.as_str(), "join").await
            };
            self.store().write(join).await?;
        }
        for person in &job.observers {
            self.invite_person(&room_id, person).await?;
        }
        Ok(room_id)
    }

    /// Raises `people` to `level` in the room's power levels (as the bot); people who
    /// have a level already keep it.
    async fn grant_power(&self, room: &OwnedRoomId, people: &[String], level: i64) -> Result<(), EventError> {
        let current =
            get_state_event_for_key::v3::Request::new(room.clone(), StateEventType::RoomPowerLevels, String::new());
        let current = self.client().call(current, None).await?;
        let mut content: serde_json::Value =
            serde_json::from_str(current.event_or_content.get()).map_err(|e| EventError::Permanent(e.to_string()))?;
        let mut users = content["users"].as_object().cloned().unwrap_or_default();
        let missing: Vec<&String> = people.iter().filter(|p| !users.contains_key(p.as_str())).collect();
        if missing.is_empty() {
            return Ok(());
        }
        for person in missing {
            users.insert(person.clone(), json!(level));
        }
        content["users"] = serde_json::Value::Object(users);
        let raw = serde_json::value::to_raw_value(&content).map_err(|e| EventError::Permanent(e.to_string()))?;
        let update = send_state_event::v3::Request::new_raw(
            room.clone(),
            StateEventType::RoomPowerLevels,
            String::new(),
            Raw::from_json(raw),
        );
        self.client().call(update, None).await?;
        Ok(())
    }

    async fn existing_room(&self, conversation_id: &str) -> Result<Option<OwnedRoomId>, EventError> {
        let mut conn = self.store().conn().await?;
        let room = conversations::room_for_conversation(&mut conn, conversation_id).await?;
        Ok(room.and_then(|r| OwnedRoomId::try_from(r).ok()))
    }

    /// Creates a room under `alias_localpart`, or finds it there after a crash.
    pub(super) async fn create_with_alias(
        &self,
        job: &CreateRoomJob,
        shape: &RoomShape,
    ) -> Result<OwnedRoomId, EventError> {
        let alias_localpart = shape.alias_localpart.as_str();
        let ns = self.namespace();
        let bot = ns.bot_user_id();
        let agents: Vec<OwnedUserId> =
            job.agents.iter().filter_map(|agent| OwnedUserId::try_from(ns.agent_user_id(agent)).ok()).collect();
        for agent in &agents {
            self.ensure_known_user(agent).await?;
        }
        let room_version = self.default_room_version().await?;
        let encrypted = encrypted_at_creation(&self.config().e2ee, shape, agents.len())
            && self.devices_for_encrypted_room(&bot, &agents).await?;
        let request = create_request(job, shape, &bot, &agents, &room_version, encrypted)?;
        match self.client().call(request, None).await {
            Ok(created) => {
                if let Some(crypto) = self.crypto().filter(|_| encrypted) {
                    crypto.mark_encrypted(&created.room_id);
                }
                Ok(created.room_id)
            }
            // A retry after a crash: the room exists under the conversation's alias.
            Err(error) if error.errcode() == Some("M_ROOM_IN_USE") => {
                let alias = OwnedRoomAliasId::try_from(format!("#{alias_localpart}:{}", ns.server_name))
                    .map_err(|e| EventError::Permanent(e.to_string()))?;
                Ok(self.client().call(get_alias::v3::Request::new(alias), None).await?.room_id)
            }
            Err(error) => Err(error.into()),
        }
    }
}

impl MatrixAdapter {
    /// Sets up the devices of the bot and the room's agents before an encrypted room is
    /// created, so that the first message people send there is encrypted for them too.
    /// Whether they are ready: without them (no data folder, or a homeserver that refuses
    /// both MSC4190 devices and the appservice login) the room is created plain, since an
    /// encrypted room none of our users can read would leave its agent mute.
    async fn devices_for_encrypted_room(&self, bot: &str, agents: &[OwnedUserId]) -> Result<bool, EventError> {
        let Some(crypto) = self.crypto() else { return Ok(false) };
        let bot = OwnedUserId::try_from(bot).map_err(|e| EventError::Permanent(e.to_string()))?;
        for user in std::iter::once(&bot).chain(agents) {
            match crypto.device(user).await {
                Ok(_) => {}
                Err(error) if error.is_transient() => return Err(EventError::Transient(error.to_string())),
                Err(error) => {
                    tracing::warn!(user_id = %user, %error, "new room created unencrypted: no device for encrypted rooms");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// Whether a room the service creates starts encrypted: only with encryption on and
/// asked for new rooms, never a Space (it holds no messages), and only with an agent in
/// it. Any of our users in a room can decrypt for all of them, and an agent fetches a
/// room key the homeserver failed to push with `/sync`; the bot cannot on Synapse, so
/// a room where it alone reads (the welcome chat) could stop reading a person's messages.
fn encrypted_at_creation(e2ee: &E2eeConfig, shape: &RoomShape, agents: usize) -> bool {
    e2ee.enabled && e2ee.new_rooms && !shape.space && agents > 0
}

/// The request that creates the room `shape` describes for `job`, as the bot.
fn create_request(
    job: &CreateRoomJob,
    shape: &RoomShape,
    bot: &str,
    agents: &[OwnedUserId],
    room_version: &str,
    encrypted: bool,
) -> Result<create_room::v3::Request, EventError> {
    fn raw<T>(value: serde_json::Value) -> Result<Raw<T>, EventError> {
        serde_json::value::to_raw_value(&value).map(Raw::from_json).map_err(|e| EventError::Permanent(e.to_string()))
    }
    let mut request = create_room::v3::Request::new();
    request.name = Some(shape.name.clone());
    request.topic = Some(shape.topic.clone());
    if shape.space {
        request.creation_content = Some(raw(json!({ "type": "m.space" }))?);
    }
    request.room_alias_name = Some(shape.alias_localpart.clone());
    request.preset = Some(create_room::v3::RoomPreset::PrivateChat);
    request.visibility = Visibility::Private;
    // People come in once the room's agents are there (the caller invites them after
    // the joins), so nobody arrives in a room whose agent has not joined yet.
    let people_now = agents.is_empty().then_some(&job.invite).into_iter().flatten();
    request.invite =
        people_now.filter_map(|u| OwnedUserId::try_from(u.as_str()).ok()).chain(agents.iter().cloned()).collect();
    request.initial_state = vec![raw(json!({
        "type": "m.room.history_visibility",
        "state_key": "",
        "content": { "history_visibility": shape.history.as_str() },
    }))?];
    if encrypted {
        request.initial_state.push(raw(json!({
            "type": "m.room.encryption",
            "state_key": "",
            "content": { "algorithm": "m.megolm.v1.aes-sha2" },
        }))?);
    }
    request.power_level_content_override = Some(raw(power_levels(bot, &job.invite, room_version))?);
    Ok(request)
}

/// A state event sent as the bot, its content as JSON.
pub struct StateEvent {
    pub room_id: String,
    pub event_type: String,
    pub state_key: String,
    pub content: serde_json::Value,
}

/// Power needed to post in an archived room, at least: only the bot has it.
const ARCHIVED_POWER: i64 = 100;

/// The level an archived room requires for everything, given its power levels: above
/// every person listed when the bot has unlimited power (it created the room in version
/// 12 and is not listed), else the bot's own level, the most it may require.
pub fn archived_level(power_levels: &serde_json::Value, bot: &str) -> i64 {
    let users = power_levels["users"].as_object();
    match users.and_then(|u| u.get(bot)).and_then(serde_json::Value::as_i64) {
        Some(bot_level) => bot_level,
        None => {
            let highest = users.into_iter().flat_map(|u| u.values()).filter_map(serde_json::Value::as_i64).max();
            highest.unwrap_or(0).max(ARCHIVED_POWER - 1) + 1
        }
    }
}

impl MatrixAdapter {
    pub async fn send_state(&self, job: &StateEvent) -> Result<(), EventError> {
        let room = OwnedRoomId::try_from(job.room_id.as_str()).map_err(|e| EventError::Permanent(e.to_string()))?;
        let raw = serde_json::value::to_raw_value(&job.content).map_err(|e| EventError::Permanent(e.to_string()))?;
        let request = send_state_event::v3::Request::new_raw(
            room,
            StateEventType::from(job.event_type.as_str()),
            job.state_key.clone(),
            Raw::from_json(raw),
        );
        self.client().call(request, None).await?;
        Ok(())
    }

    /// Sets the room's `m.room.name`.
    pub async fn rename_room(&self, job: &RenameJob) -> Result<(), EventError> {
        let room = OwnedRoomId::try_from(job.room_id.as_str()).map_err(|e| EventError::Permanent(e.to_string()))?;
        let content = RoomNameEventContent::new(job.name.clone());
        let request = send_state_event::v3::Request::new(room, &EmptyStateKey, &content)
            .map_err(|e| EventError::Permanent(e.to_string()))?;
        self.client().call(request, None).await?;
        Ok(())
    }

    /// Ends the room with an `m.room.tombstone` whose `replacement_room` is empty. Matrix
    /// requires that field (so ruma's typed content does too), and an empty one says there
    /// is no successor: clients show the room as ended.
    pub async fn tombstone(&self, job: &TombstoneJob) -> Result<(), EventError> {
        let state = StateEvent {
            room_id: job.room_id.clone(),
            event_type: "m.room.tombstone".into(),
            state_key: String::new(),
            content: json!({ "body": job.body, "replacement_room": "" }),
        };
        self.send_state(&state).await
    }

    /// Raises the power needed for messages and state above everyone but the bot.
    pub async fn make_read_only(&self, job: &ReadOnlyJob) -> Result<(), EventError> {
        let room = OwnedRoomId::try_from(job.room_id.as_str()).map_err(|e| EventError::Permanent(e.to_string()))?;
        let current =
            get_state_event_for_key::v3::Request::new(room.clone(), StateEventType::RoomPowerLevels, String::new());
        let current = self.client().call(current, None).await?;
        let mut content: serde_json::Value =
            serde_json::from_str(current.event_or_content.get()).map_err(|e| EventError::Permanent(e.to_string()))?;
        let level = archived_level(&content, &self.namespace().bot_user_id());
        for key in ["events_default", "state_default", "invite"] {
            content[key] = json!(level);
        }
        content["events"] = json!({});
        let state = StateEvent {
            room_id: job.room_id.clone(),
            event_type: "m.room.power_levels".into(),
            state_key: String::new(),
            content,
        };
        self.send_state(&state).await
    }

    /// Opens (once) a direct chat with the person and welcomes them.
    pub async fn welcome(&self, job: &WelcomeJob) -> Result<(), EventError> {
        let shape = RoomShape {
            alias_localpart: format!("{}welcome-{}", self.namespace().alias_prefix, job.account_id),
            name: format!("Mosaic: Welcome, {}", job.account_name),
            topic: "Your direct chat with Mosaic".into(),
            history: HistoryVisibility::Invited,
            space: false,
        };
        let create = CreateRoomJob {
            conversation_id: String::new(),
            title: format!("Welcome, {}", job.account_name),
            invite: vec![job.user_id.clone()],
            agents: Vec::new(),
        };
        let room = self.create_with_alias(&create, &shape).await?;
        let text = format!(
            "Welcome to Mosaic, {}! Your Matrix account is linked to the Mosaic account **{}**. \
             Send `!help` here for the commands, `!agents` for the agents you can talk to, or `!new` to start a conversation.",
            job.user_id, job.account_name
        );
        let content = RoomMessageEventContent::notice_markdown(text);
        let txn: ruma::OwnedTransactionId = format!("mosaic-welcome-{}", job.account_id).into();
        let content = Raw::new(&content).map_err(|e| EventError::Permanent(e.to_string()))?.cast_unchecked();
        let bot = self.namespace().bot_user_id();
        let bot = OwnedUserId::try_from(bot.as_str()).map_err(|e| EventError::Permanent(e.to_string()))?;
        self.send_room_event(&room, &bot, txn, MessageLikeEventType::RoomMessage, content).await?;
        let mut tx = self.store().begin_write().await?;
        conversations::set_membership(&mut tx, room.as_str(), &self.namespace().bot_user_id(), "join").await?;
        conversations::set_membership(&mut tx, room.as_str(), &job.user_id, "invite").await?;
        tx.commit().await?;
        Ok(())
    }
}

impl MatrixAdapter {
    /// Creates the Space once, invites the person, and makes every room the account owns
    /// a child of it.
    pub async fn personal_space(&self, job: &PersonalSpaceJob) -> Result<(), EventError> {
        let existing = {
            let mut conn = self.store().conn().await?;
            conversations::personal_space(&mut conn, &job.account_id).await?
        };
        let space = match existing.and_then(|s| OwnedRoomId::try_from(s).ok()) {
            Some(space) => {
                self.invite_person(&space, &job.user_id).await?;
                space
            }
            None => {
                let shape = RoomShape {
                    alias_localpart: format!("{}space-{}", self.namespace().alias_prefix, job.account_id),
                    name: format!("{}'s Space", job.account_name),
                    topic: format!("Mosaic conversations of {}", job.account_name),
                    history: HistoryVisibility::Invited,
                    space: true,
                };
                let create = CreateRoomJob {
                    conversation_id: String::new(),
                    title: job.account_name.clone(),
                    invite: vec![job.user_id.clone()],
                    agents: Vec::new(),
                };
                let space = self.create_with_alias(&create, &shape).await?;
                let record = async |conn: &mut AnyConnection| {
                    conversations::record_personal_space(conn, &job.account_id, space.as_str()).await
                };
                self.store().write(record).await?;
                space
            }
        };
        let rooms = {
            let mut conn = self.store().conn().await?;
            conversations::owned_rooms(&mut conn, &job.account_id).await?
        };
        for room in rooms {
            self.link_child(space.as_str(), &room).await?;
        }
        Ok(())
    }

    /// `m.space.parent` in the room, then `m.space.child` in the Space (both idempotent):
    /// once the Space lists the room, the room names its Space too.
    pub async fn link_child(&self, space: &str, room: &str) -> Result<(), EventError> {
        let via = json!({ "via": [self.namespace().server_name] });
        let mut parent_content = via.clone();
        parent_content["canonical"] = json!(true);
        let parent = StateEvent {
            room_id: room.into(),
            event_type: "m.space.parent".into(),
            state_key: space.into(),
            content: parent_content,
        };
        self.send_state(&parent).await?;
        let child = StateEvent {
            room_id: space.into(),
            event_type: "m.space.child".into(),
            state_key: room.into(),
            content: via,
        };
        self.send_state(&child).await
    }

    pub(super) async fn invite_person(&self, room: &OwnedRoomId, person: &str) -> Result<(), EventError> {
        self.invite_person_as(room, person, None).await
    }

    /// Invites `person` as `inviter` (the bot when `None`).
    pub(super) async fn invite_person_as(
        &self,
        room: &OwnedRoomId,
        person: &str,
        inviter: Option<&UserId>,
    ) -> Result<(), EventError> {
        let user = OwnedUserId::try_from(person).map_err(|e| EventError::Permanent(e.to_string()))?;
        let recipient = invite_user::v3::InvitationRecipient::UserId(invite_user::v3::InviteUserId::new(user));
        match self.client().call(invite_user::v3::Request::new(room.clone(), recipient), inviter).await {
            Ok(_) => Ok(()),
            // Already a member, or invited: nothing to do.
            Err(error) if error.errcode() == Some("M_FORBIDDEN") => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initial_state_types(request: &create_room::v3::Request) -> Vec<String> {
        request
            .initial_state
            .iter()
            .map(|event| serde_json::from_str::<serde_json::Value>(event.json().get()).unwrap()["type"].to_string())
            .collect()
    }

    #[test]
    fn new_rooms_with_an_agent_are_encrypted_only_with_encryption_on() {
        let job = CreateRoomJob {
            conversation_id: "c1".into(),
            title: "Plans".into(),
            invite: vec!["@alice:x".into()],
            agents: vec!["echo".into()],
        };
        let room = |space| RoomShape {
            alias_localpart: "mosaic-conversation-c1".into(),
            name: "Mosaic: Plans".into(),
            topic: String::new(),
            history: HistoryVisibility::Invited,
            space,
        };
        let agents = vec![OwnedUserId::try_from("@mosaic_agent_echo:x").unwrap()];
        let request = |e2ee: &E2eeConfig, shape: &RoomShape, agents: &[OwnedUserId]| {
            let encrypted = encrypted_at_creation(e2ee, shape, agents.len());
            initial_state_types(&create_request(&job, shape, "@mosaic-bot:x", agents, "12", encrypted).unwrap())
        };
        let on = E2eeConfig::default();
        assert!(on.new_rooms, "new rooms are encrypted by default");
        let encryption = "\"m.room.encryption\"".to_string();
        let created = create_request(&job, &room(false), "@mosaic-bot:x", &agents, "12", true).unwrap();
        let event = created.initial_state.iter().find(|e| e.json().get().contains("m.room.encryption")).unwrap();
        let event: serde_json::Value = serde_json::from_str(event.json().get()).unwrap();
        assert_eq!(event["content"]["algorithm"], "m.megolm.v1.aes-sha2");
        assert_eq!(event["state_key"], "");
        assert!(request(&on, &room(false), &agents).contains(&encryption));

        // Turned off, encryption leaves new rooms plain whatever new_rooms says.
        let off = E2eeConfig { enabled: false, new_rooms: true, ..E2eeConfig::default() };
        assert!(!request(&off, &room(false), &agents).contains(&encryption));
        let not_new = E2eeConfig { new_rooms: false, ..E2eeConfig::default() };
        assert!(!request(&not_new, &room(false), &agents).contains(&encryption));
        // Spaces hold no messages; a room where only the bot reads (the welcome chat)
        // could stop reading when Synapse drops a room key the bot cannot fetch.
        assert!(!request(&on, &room(true), &[]).contains(&encryption));
        assert!(!request(&on, &room(false), &[]).contains(&encryption));
        assert!(request(&on, &room(false), &agents).contains(&"\"m.room.history_visibility\"".to_string()));
    }

    #[test]
    fn version_12_rooms_do_not_list_the_creator() {
        let people = vec!["@alice:x".to_string()];
        let v12 = power_levels("@mosaic-bot:x", &people, "12");
        assert!(v12["users"].get("@mosaic-bot:x").is_none());
        assert_eq!(v12["users"]["@alice:x"], 100, "the person the room is for owns it");
        let v10 = power_levels("@mosaic-bot:x", &people, "10");
        assert_eq!(v10["users"]["@mosaic-bot:x"], 100);
        assert_eq!(v10["users_default"], 0);
        assert_eq!(v10["events_default"], 0);
        for action in ["state_default", "invite", "kick", "ban", "redact"] {
            assert_eq!(v10[action], 50, "{action}");
        }
    }

    #[test]
    fn archived_rooms_are_closed_to_their_owners_where_the_bot_outranks_them() {
        let bot = "@mosaic-bot:x";
        // Room version 12: the bot created the room and is above everyone listed.
        assert_eq!(archived_level(&power_levels(bot, &["@alice:x".into()], "12"), bot), 101);
        assert_eq!(archived_level(&json!({"users": {"@bob:x": 50}}), bot), 100);
        assert_eq!(archived_level(&json!({}), bot), 100);
        // Before: the bot has 100 and cannot require more.
        assert_eq!(archived_level(&power_levels(bot, &["@alice:x".into()], "10"), bot), 100);
    }

    #[test]
    fn knows_which_versions_privilege_creators() {
        assert!(creator_is_privileged("12"));
        assert!(creator_is_privileged("org.matrix.hydra.11"));
        assert!(!creator_is_privileged("11"));
        assert!(!creator_is_privileged("1"));
    }
}
