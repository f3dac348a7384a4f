//! Room and Space work the hub asks of the homeserver: what it is ([`RoomOp`] and its
//! payloads, queued in the `matrix` queue as [`super::jobs::Job::Room`]) and who carries
//! it out ([`HomeRooms`], which the Matrix adapter implements). The hub decides what a
//! room should become; how that is said in Matrix events is the adapter's business.
//!
//! Every operation may run more than once (a crash before its job is marked done runs
//! it again), so each is carried out idempotently: rooms are found again under their
//! alias, invitations and joins of people already there succeed, state is set, not
//! added.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Room and Space work on the homeserver, run in order in the `matrix` queue.
#[derive(Debug, Clone)]
pub enum RoomOp {
    /// Create a conversation's room and bring its members in.
    CreateRoom(CreateRoomJob),
    /// Invite an agent into a room; the agent joins.
    Invite(InviteJob),
    /// An account's room of two agents.
    AgentRoom(AgentRoomJob),
    /// Give a room a new name.
    Rename(RenameJob),
    /// End a room: it has no successor, and clients show it as ended.
    Tombstone(TombstoneJob),
    /// Make a room read-only.
    ReadOnly(ReadOnlyJob),
    /// A direct chat from the bot to a newly provisioned person.
    Welcome(WelcomeJob),
    /// A person removed from a room.
    Kick(KickJob),
    /// A team's Space.
    TeamSpace(TeamSpaceJob),
    /// A conversation room shared with a team.
    Share(ShareJob),
    /// A conversation room no longer shared.
    Unshare(UnshareJob),
    /// A new team member joins the team's Space and shared rooms.
    TeamInvite(TeamInviteJob),
    /// An account's personal Space.
    PersonalSpace(PersonalSpaceJob),
}

/// Carries out [`RoomOp`]s on the homeserver.
#[async_trait]
pub trait HomeRooms: Send + Sync {
    async fn carry_out(&self, op: &RoomOp) -> Result<(), RoomOpError>;
}

/// Why a room operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RoomOpError {
    /// Worth trying again: the homeserver or the database is unavailable.
    #[error("{0}")]
    Transient(String),
    /// Will never succeed (refused, malformed).
    #[error("{0}")]
    Permanent(String),
}

/// Create the room of a conversation and bring its members in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRoomJob {
    pub conversation_id: String,
    pub title: String,
    /// People to invite (Matrix user ids).
    pub invite: Vec<String>,
    /// Agents that join the room.
    pub agents: Vec<String>,
}

/// The bot invites an agent into a room, and the agent joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InviteJob {
    pub room_id: String,
    pub agent: String,
}

/// An account's room of two agents (ids sorted), with the account's person invited to
/// watch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRoomJob {
    /// The account the room belongs to.
    pub owner_account_id: String,
    pub agents: (String, String),
    /// The owner's Matrix identity that asked for the room.
    pub observers: Vec<String>,
}

/// The alias localpart of an account's agent room.
pub fn agent_room_alias_localpart(alias_prefix: &str, owner_account_id: &str, a: &str, b: &str) -> String {
    format!("{alias_prefix}agents-{a}-{b}-{owner_account_id}")
}

/// Give a room a new name (as the bot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenameJob {
    pub room_id: String,
    pub name: String,
}

/// End a room (as the bot), saying why: it has no successor room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TombstoneJob {
    pub room_id: String,
    pub body: String,
}

/// Make a room read-only (only the bot may still post).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadOnlyJob {
    pub room_id: String,
}

/// A direct chat from the bot to a newly provisioned person, with a welcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WelcomeJob {
    pub account_id: String,
    pub account_name: String,
    pub user_id: String,
}

/// An account's personal Space, with the person invited and the account's conversation
/// rooms as children.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersonalSpaceJob {
    pub account_id: String,
    pub account_name: String,
    pub user_id: String,
}

/// The team's Space (created once) with `invite` invited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeamSpaceJob {
    pub team_id: String,
    pub team_name: String,
    pub invite: Vec<String>,
}

/// Put a conversation room in the team's Space and invite the team.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareJob {
    pub team_id: String,
    pub team_name: String,
    pub room_id: String,
    /// The Space of the team the room was shared with before, to leave.
    pub previous_space: Option<String>,
}

/// Take a room out of a team's Space and remove who came through the share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnshareJob {
    pub room_id: String,
    pub space_id: Option<String>,
}

/// A new team member joins the team's Space and shared rooms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeamInviteJob {
    pub team_id: String,
    pub team_name: String,
    pub user_id: String,
}

/// Remove a person from a room (as the bot).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KickJob {
    pub room_id: String,
    pub user_id: String,
    pub reason: String,
}
