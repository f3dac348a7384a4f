//! What admins and people change about accounts and conversations: provisioning an
//! account for a Matrix user, renaming and archiving conversations. Each change is
//! written with the Matrix work it needs, queued in the same transaction.

use sqlx::AnyConnection;

use super::room_ops::{
    KickJob, PersonalSpaceJob, ReadOnlyJob, RenameJob, ShareJob, TeamInviteJob, TeamSpaceJob, TombstoneJob, UnshareJob,
    WelcomeJob,
};
use crate::protocol;
use crate::queue;
use crate::store::{self, accounts, conversations, teams};

/// Creates an account; with a Matrix id, links it at once and welcomes the person in a
/// direct chat (no `!link` needed).
pub async fn provision_account(
    conn: &mut AnyConnection,
    name: &str,
    display_name: Option<&str>,
    matrix_id: Option<&str>,
) -> store::Result<accounts::Account> {
    let account = accounts::create_account(conn, name, display_name).await?;
    if let Some(user_id) = matrix_id {
        accounts::link_identity(conn, protocol::MATRIX, user_id, &account.id).await?;
        personal_space(conn, &account, user_id).await?;
        let job =
            WelcomeJob { account_id: account.id.clone(), account_name: account.name.clone(), user_id: user_id.into() };
        queue::enqueue(conn, queue::ROOMS_QUEUE, &format!("welcome:{}", account.id), job).await?;
    }
    Ok(account)
}

/// What an account gets when it gains a Matrix identity: its personal Space, and its
/// teams' Spaces and shared rooms.
pub async fn matrix_identity_linked(
    conn: &mut AnyConnection,
    account: &accounts::Account,
    user_id: &str,
) -> store::Result<()> {
    personal_space(conn, account, user_id).await?;
    for team in teams::of_account(conn, &account.id).await? {
        let job = TeamInviteJob { team_id: team.id.clone(), team_name: team.name.clone(), user_id: user_id.into() };
        let key = format!("team_invite:{}:{user_id}:{}", team.id, uuid::Uuid::new_v4());
        queue::enqueue(conn, queue::ROOMS_QUEUE, &key, job).await?;
    }
    Ok(())
}

/// Queues the account's personal Space (created once) with `user_id` invited; called
/// when an account gets a Matrix identity.
pub async fn personal_space(conn: &mut AnyConnection, account: &accounts::Account, user_id: &str) -> store::Result<()> {
    let job = PersonalSpaceJob {
        account_id: account.id.clone(),
        account_name: account.name.clone(),
        user_id: user_id.into(),
    };
    let key = format!("space:{}:{user_id}", account.id);
    queue::enqueue(conn, queue::ROOMS_QUEUE, &key, job).await?;
    Ok(())
}

/// Renames a conversation and its room (the last rename wins). False when unknown.
pub async fn rename_conversation(conn: &mut AnyConnection, id: &str, title: &str) -> store::Result<bool> {
    if !conversations::rename(conn, id, title).await? {
        return Ok(false);
    }
    if let Some(room_id) = conversations::room_for_conversation(conn, id).await? {
        let job = RenameJob { room_id, name: format!("Mosaic: {title}") };
        let key = format!("rename:{id}:{}", uuid::Uuid::new_v4());
        queue::enqueue(conn, queue::ROOMS_QUEUE, &key, job).await?;
    }
    Ok(true)
}

/// Archives a conversation: its room becomes read-only and gets a tombstone. False when
/// it is unknown or archived already.
pub async fn archive_conversation(conn: &mut AnyConnection, id: &str) -> store::Result<bool> {
    if !conversations::archive(conn, id).await? {
        return Ok(false);
    }
    if let Some(room_id) = conversations::room_for_conversation(conn, id).await? {
        let read_only = ReadOnlyJob { room_id: room_id.clone() };
        queue::enqueue(conn, queue::ROOMS_QUEUE, &format!("archive:read_only:{id}"), read_only).await?;
        // The room ends without a successor.
        let tombstone = TombstoneJob { room_id, body: "This conversation was archived and is read-only.".into() };
        queue::enqueue(conn, queue::ROOMS_QUEUE, &format!("archive:tombstone:{id}"), tombstone).await?;
    }
    Ok(true)
}

/// Creates a team with its Space (people are invited as they join).
pub async fn create_team(
    conn: &mut AnyConnection,
    name: &str,
    first_member: Option<(&accounts::Account, &str)>,
) -> store::Result<teams::Team> {
    let team = teams::create(conn, name).await?;
    let mut invite = Vec::new();
    if let Some((account, matrix_id)) = first_member {
        teams::add_member(conn, &team.id, &account.id).await?;
        invite.push(matrix_id.to_string());
    }
    let job = TeamSpaceJob { team_id: team.id.clone(), team_name: team.name.clone(), invite };
    queue::enqueue(conn, queue::ROOMS_QUEUE, &format!("team_space:{}", team.id), job).await?;
    Ok(team)
}

/// Adds an account to a team and invites its Matrix identities to the team's Space and
/// shared rooms (the team membership hook). False when it was a member already.
pub async fn add_team_member(
    conn: &mut AnyConnection,
    team: &teams::Team,
    account: &accounts::Account,
) -> store::Result<bool> {
    if !teams::add_member(conn, &team.id, &account.id).await? {
        return Ok(false);
    }
    for identity in accounts::identities_of(conn, &account.id).await? {
        if identity.channel_name != protocol::MATRIX {
            continue;
        }
        let job =
            TeamInviteJob { team_id: team.id.clone(), team_name: team.name.clone(), user_id: identity.channel_user_id };
        let key = format!("team_invite:{}:{}:{}", team.id, job.user_id, uuid::Uuid::new_v4());
        queue::enqueue(conn, queue::ROOMS_QUEUE, &key, job).await?;
    }
    Ok(true)
}

/// How a share request ended.
pub enum ShareOutcome {
    Shared,
    AlreadyShared,
    NoRoom,
}

/// Shares a conversation with a team: its room moves into the team's Space (out of
/// another team's) and the team is invited.
pub async fn share_conversation(
    conn: &mut AnyConnection,
    conversation_id: &str,
    team: &teams::Team,
) -> store::Result<ShareOutcome> {
    let Some(room_id) = conversations::room_for_conversation(conn, conversation_id).await? else {
        return Ok(ShareOutcome::NoRoom);
    };
    let previous_space = match teams::share_of(conn, conversation_id).await? {
        Some(previous) if previous == team.id => return Ok(ShareOutcome::AlreadyShared),
        Some(previous) => teams::space(conn, &previous).await?,
        None => None,
    };
    teams::set_share(conn, conversation_id, &team.id).await?;
    let job = ShareJob { team_id: team.id.clone(), team_name: team.name.clone(), room_id, previous_space };
    let key = format!("share:{conversation_id}:{}", uuid::Uuid::new_v4());
    queue::enqueue(conn, queue::ROOMS_QUEUE, &key, job).await?;
    Ok(ShareOutcome::Shared)
}

/// Ends a conversation's share; returns the team's name, or `None` when it was not shared.
pub async fn unshare_conversation(conn: &mut AnyConnection, conversation_id: &str) -> store::Result<Option<String>> {
    let Some(team_id) = teams::share_of(conn, conversation_id).await? else {
        return Ok(None);
    };
    let space_id = teams::space(conn, &team_id).await?;
    teams::remove_share(conn, conversation_id).await?;
    if let Some(room_id) = conversations::room_for_conversation(conn, conversation_id).await? {
        let job = UnshareJob { room_id, space_id };
        let key = format!("unshare:{conversation_id}:{}", uuid::Uuid::new_v4());
        queue::enqueue(conn, queue::ROOMS_QUEUE, &key, job).await?;
    }
    Ok(Some(teams::by_id(conn, &team_id).await?.map(|t| t.name).unwrap_or_default()))
}

/// Revokes a channel identity. With `kick` (the `linking.kick_on_revoke` setting) a Matrix
/// identity is also removed from every room and Space this service manages. False when
/// the identity was not linked.
pub async fn revoke_identity(
    conn: &mut AnyConnection,
    channel: &str,
    channel_user_id: &str,
    kick: bool,
) -> store::Result<bool> {
    if !accounts::unlink_identity(conn, channel, channel_user_id).await? {
        return Ok(false);
    }
    if kick && channel == protocol::MATRIX {
        for room_id in conversations::rooms_of_member(conn, channel_user_id).await? {
            let job = KickJob {
                room_id: room_id.clone(),
                user_id: channel_user_id.to_string(),
                reason: "Your Mosaic account link was revoked".into(),
            };
            let key = format!("revoke:{room_id}:{channel_user_id}:{}", uuid::Uuid::new_v4());
            queue::enqueue(conn, queue::ROOMS_QUEUE, &key, job).await?;
        }
    }
    Ok(true)
}
