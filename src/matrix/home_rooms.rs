//! The hub's room operations ([`RoomOp`]), carried out on the homeserver.

use async_trait::async_trait;

use super::adapter::{EventError, MatrixAdapter};
use crate::hub::room_ops::{HomeRooms, RoomOp, RoomOpError};

#[async_trait]
impl HomeRooms for MatrixAdapter {
    async fn carry_out(&self, op: &RoomOp) -> Result<(), RoomOpError> {
        let done = match op {
            RoomOp::CreateRoom(job) => self.create_conversation_room(job).await.map(drop),
            RoomOp::Invite(job) => self.invite_agent(job).await,
            RoomOp::AgentRoom(job) => self.open_agent_room(job).await.map(drop),
            RoomOp::Rename(job) => self.rename_room(job).await,
            RoomOp::Tombstone(job) => self.tombstone(job).await,
            RoomOp::ReadOnly(job) => self.make_read_only(job).await,
            RoomOp::Welcome(job) => self.welcome(job).await,
            RoomOp::Kick(job) => self.kick(job).await,
            RoomOp::TeamSpace(job) => self.open_team_space(job).await,
            RoomOp::Share(job) => self.share(job).await,
            RoomOp::Unshare(job) => self.unshare(job).await,
            RoomOp::TeamInvite(job) => self.invite_to_team(job).await,
            RoomOp::PersonalSpace(job) => self.personal_space(job).await,
        };
        done.map_err(|error| match error {
            EventError::Transient(error) => RoomOpError::Transient(error),
            EventError::Permanent(error) => RoomOpError::Permanent(error),
        })
    }
}
