//! Teams in Matrix: a Space per team, shared conversation rooms as its children, team
//! members invited to them, and unsharing that removes only who came through the share.

use ruma::api::client::membership::kick_user;
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::json;

use super::adapter::{EventError, MatrixAdapter};
use super::rooms::{HistoryVisibility, RoomShape, StateEvent};
use crate::hub::room_ops::{CreateRoomJob, KickJob, ShareJob, TeamInviteJob, TeamSpaceJob, UnshareJob};
use crate::store::{AnyConnection, conversations, teams};

fn permanent(error: impl std::fmt::Display) -> EventError {
    EventError::Permanent(error.to_string())
}

impl MatrixAdapter {
    /// The team's Space, created on first use.
    async fn team_space(&self, team_id: &str, team_name: &str) -> Result<OwnedRoomId, EventError> {
        let existing = {
            let mut conn = self.store().conn().await?;
            teams::space(&mut conn, team_id).await?
        };
        if let Some(space) = existing.and_then(|s| OwnedRoomId::try_from(s).ok()) {
            return Ok(space);
        }
        let shape = RoomShape {
            alias_localpart: format!("{}team-{team_id}", self.namespace().alias_prefix),
            name: team_name.to_string(),
            topic: format!("Mosaic team {team_name}"),
            history: HistoryVisibility::Shared,
            space: true,
        };
        let create = CreateRoomJob {
            conversation_id: String::new(),
            title: team_name.into(),
            invite: Vec::new(),
            agents: Vec::new(),
        };
        let space = self.create_with_alias(&create, &shape).await?;
        self.store().write(async |conn| teams::record_space(conn, team_id, space.as_str()).await).await?;
        Ok(space)
    }

    pub async fn open_team_space(&self, job: &TeamSpaceJob) -> Result<(), EventError> {
        let space = self.team_space(&job.team_id, &job.team_name).await?;
        for person in &job.invite {
            self.invite_person(&space, person).await?;
        }
        Ok(())
    }

    pub async fn share(&self, job: &ShareJob) -> Result<(), EventError> {
        let space = self.team_space(&job.team_id, &job.team_name).await?;
        if let Some(previous) = job.previous_space.as_deref().filter(|p| *p != space.as_str()) {
            self.unlink_child(previous, &job.room_id).await?;
        }
        self.link_child(space.as_str(), &job.room_id).await?;
        self.set_history(&job.room_id, HistoryVisibility::Shared).await?;
        let room = OwnedRoomId::try_from(job.room_id.as_str()).map_err(permanent)?;
        let members = {
            let mut conn = self.store().conn().await?;
            teams::member_matrix_ids(&mut conn, &job.team_id).await?
        };
        for person in members {
            self.invite_through_share(&room, &person, &job.team_id).await?;
        }
        Ok(())
    }

    pub async fn unshare(&self, job: &UnshareJob) -> Result<(), EventError> {
        if let Some(space) = &job.space_id {
            self.unlink_child(space, &job.room_id).await?;
        }
        self.set_history(&job.room_id, HistoryVisibility::Invited).await?;
        let room = OwnedRoomId::try_from(job.room_id.as_str()).map_err(permanent)?;
        let invited = { self.store().write(async |conn| teams::take_share_invites(conn, &job.room_id).await).await? };
        for person in invited {
            let kick = KickJob {
                room_id: room.to_string(),
                user_id: person,
                reason: "The conversation is no longer shared with your team".into(),
            };
            self.kick(&kick).await?;
        }
        Ok(())
    }

    /// Removes a person from a room; someone already gone is fine.
    pub async fn kick(&self, job: &KickJob) -> Result<(), EventError> {
        let room = OwnedRoomId::try_from(job.room_id.as_str()).map_err(permanent)?;
        let user = OwnedUserId::try_from(job.user_id.as_str()).map_err(permanent)?;
        let mut kick = kick_user::v3::Request::new(room, user);
        kick.reason = Some(job.reason.clone());
        if let Err(error) = self.client().call(kick, None).await {
            if error.is_transient() {
                return Err(error.into());
            }
            tracing::info!(room_id = job.room_id, user_id = job.user_id, %error, "not removed");
        }
        let leave = async |conn: &mut AnyConnection| {
            conversations::set_membership(conn, &job.room_id, &job.user_id, "leave").await
        };
        self.store().write(leave).await?;
        Ok(())
    }

    pub async fn invite_to_team(&self, job: &TeamInviteJob) -> Result<(), EventError> {
        let space = self.team_space(&job.team_id, &job.team_name).await?;
        self.invite_person(&space, &job.user_id).await?;
        let rooms = {
            let mut conn = self.store().conn().await?;
            teams::shared_rooms(&mut conn, &job.team_id).await?
        };
        for room in rooms {
            let room = OwnedRoomId::try_from(room).map_err(permanent)?;
            self.invite_through_share(&room, &job.user_id, &job.team_id).await?;
        }
        Ok(())
    }

    /// Invites a team member unless they are in the room already (then the share did not
    /// bring them, and unsharing leaves them be).
    async fn invite_through_share(&self, room: &OwnedRoomId, person: &str, team_id: &str) -> Result<(), EventError> {
        let mut conn = self.store().conn().await?;
        let present = conversations::membership(&mut conn, room.as_str(), person).await?;
        if matches!(present.as_deref(), Some("join" | "invite")) {
            return Ok(());
        }
        drop(conn);
        self.invite_person(room, person).await?;
        let mut tx = self.store().begin_write().await?;
        teams::record_share_invite(&mut tx, room.as_str(), person, team_id).await?;
        conversations::set_membership(&mut tx, room.as_str(), person, "invite").await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the Space ↔ room links (an empty content ends a link).
    async fn unlink_child(&self, space: &str, room: &str) -> Result<(), EventError> {
        let child = StateEvent {
            room_id: space.into(),
            event_type: "m.space.child".into(),
            state_key: room.into(),
            content: json!({}),
        };
        self.send_state(&child).await?;
        let parent = StateEvent {
            room_id: room.into(),
            event_type: "m.space.parent".into(),
            state_key: space.into(),
            content: json!({}),
        };
        self.send_state(&parent).await
    }

    async fn set_history(&self, room: &str, history: HistoryVisibility) -> Result<(), EventError> {
        let state = StateEvent {
            room_id: room.into(),
            event_type: "m.room.history_visibility".into(),
            state_key: String::new(),
            content: json!({ "history_visibility": history.as_str() }),
        };
        self.send_state(&state).await
    }
}
