//! Team commands: `!team create|add|remove|list`, `!share <team>`, `!unshare`.
//! Only people with a linked account take part in teams.

use sqlx::AnyConnection;

use super::Hub;
use super::commands::Answer;
use crate::matrix::teams::{
    SHARE_KIND, ShareJob, TEAM_INVITE_KIND, TEAM_SPACE_KIND, TeamInviteJob, TeamSpaceJob, UNSHARE_KIND, UnshareJob,
};
use crate::queue;
use crate::store::{self, accounts, conversations, teams};

/// What `!team …` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamCommand {
    Create(String),
    Add { team: String, member: String },
    Remove { team: String, member: String },
    List,
}

fn matrix_queue() -> String {
    queue::send_queue(crate::matrix::CHANNEL)
}

impl Hub {
    pub(super) async fn team(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        sender: &str,
        command: TeamCommand,
    ) -> store::Result<Answer> {
        let Some(me) = accounts::account_for_identity(conn, channel, sender).await? else {
            return Ok("Teams are for linked accounts: send `!link <token>` first.".to_string().into());
        };
        Ok(match command {
            TeamCommand::Create(name) => self.create_team(conn, &me, sender, &name).await?,
            TeamCommand::Add { team, member } => self.add_member(conn, &me, &team, &member).await?,
            TeamCommand::Remove { team, member } => self.remove_member(conn, &me, &team, &member).await?,
            TeamCommand::List => self.list_teams(conn, &me).await?,
        }
        .into())
    }

    async fn create_team(
        &self,
        conn: &mut AnyConnection,
        me: &accounts::Account,
        sender: &str,
        name: &str,
    ) -> store::Result<String> {
        if teams::by_name(conn, name).await?.is_some() {
            return Ok(format!("A team named **{name}** exists already."));
        }
        let team = teams::create(conn, name).await?;
        teams::add_member(conn, &team.id, &me.id).await?;
        let job =
            TeamSpaceJob { team_id: team.id.clone(), team_name: team.name.clone(), invite: vec![sender.to_string()] };
        queue::enqueue(conn, &matrix_queue(), &format!("team_space:{}", team.id), TEAM_SPACE_KIND, &job).await?;
        Ok(format!("Created team **{name}** with you in it; its Space invitation is on its way."))
    }

    /// A member names an account by name or by a linked Matrix id.
    async fn find_account(&self, conn: &mut AnyConnection, member: &str) -> store::Result<Option<accounts::Account>> {
        if member.starts_with('@') {
            accounts::account_for_identity(conn, crate::matrix::CHANNEL, member).await
        } else {
            accounts::account_by_name(conn, member).await
        }
    }

    /// The team, if `me` belongs to it.
    async fn my_team(
        &self,
        conn: &mut AnyConnection,
        me: &accounts::Account,
        name: &str,
    ) -> store::Result<Result<teams::Team, String>> {
        match teams::by_name(conn, name).await? {
            Some(team) if teams::is_member(conn, &team.id, &me.id).await? => Ok(Ok(team)),
            _ => Ok(Err(format!("You are not in a team named **{name}**. Send `!team list` for yours."))),
        }
    }

    async fn add_member(
        &self,
        conn: &mut AnyConnection,
        me: &accounts::Account,
        team: &str,
        member: &str,
    ) -> store::Result<String> {
        let team = match self.my_team(conn, me, team).await? {
            Ok(team) => team,
            Err(refusal) => return Ok(refusal),
        };
        let Some(account) = self.find_account(conn, member).await? else {
            return Ok(format!("No linked account for {member}: they link with `!link <token>` first."));
        };
        if !teams::add_member(conn, &team.id, &account.id).await? {
            return Ok(format!("**{}** is in **{}** already.", account.name, team.name));
        }
        for identity in accounts::identities_of(conn, &account.id).await? {
            if identity.channel_name != crate::matrix::CHANNEL {
                continue;
            }
            let job = TeamInviteJob {
                team_id: team.id.clone(),
                team_name: team.name.clone(),
                user_id: identity.channel_user_id,
            };
            let key = format!("team_invite:{}:{}:{}", team.id, job.user_id, uuid::Uuid::new_v4());
            queue::enqueue(conn, &matrix_queue(), &key, TEAM_INVITE_KIND, &job).await?;
        }
        Ok(format!("Added **{}** to **{}**; they are invited to its Space and shared rooms.", account.name, team.name))
    }

    async fn remove_member(
        &self,
        conn: &mut AnyConnection,
        me: &accounts::Account,
        team: &str,
        member: &str,
    ) -> store::Result<String> {
        let team = match self.my_team(conn, me, team).await? {
            Ok(team) => team,
            Err(refusal) => return Ok(refusal),
        };
        let Some(account) = self.find_account(conn, member).await? else {
            return Ok(format!("No linked account for {member}."));
        };
        Ok(match teams::remove_member(conn, &team.id, &account.id).await? {
            true => format!("Removed **{}** from **{}**.", account.name, team.name),
            false => format!("**{}** is not in **{}**.", account.name, team.name),
        })
    }

    async fn list_teams(&self, conn: &mut AnyConnection, me: &accounts::Account) -> store::Result<String> {
        let mine = teams::of_account(conn, &me.id).await?;
        if mine.is_empty() {
            return Ok("You are in no team. Create one with `!team create <name>`.".into());
        }
        let mut text = String::from("**Your teams**\n");
        for team in mine {
            let members = teams::member_names(conn, &team.id).await?;
            text.push_str(&format!("- **{}**: {}\n", team.name, members.join(", ")));
        }
        Ok(text)
    }

    /// `!share <team>`: the room joins the team's Space (leaving another team's) and the
    /// team is invited.
    pub(super) async fn share(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        sender: &str,
        conversation_id: &str,
        room_id: &str,
        team: &str,
    ) -> store::Result<Answer> {
        let Some(me) = accounts::account_for_identity(conn, channel, sender).await? else {
            return Ok("Sharing is for linked accounts: send `!link <token>` first.".to_string().into());
        };
        let team = match self.my_team(conn, &me, team).await? {
            Ok(team) => team,
            Err(refusal) => return Ok(refusal.into()),
        };
        let previous_space = match teams::share_of(conn, conversation_id).await? {
            Some(previous) if previous == team.id => {
                return Ok(format!("This conversation is shared with **{}** already.", team.name).into());
            }
            Some(previous) => teams::space(conn, &previous).await?,
            None => None,
        };
        teams::set_share(conn, conversation_id, &team.id).await?;
        let job = ShareJob {
            team_id: team.id.clone(),
            team_name: team.name.clone(),
            room_id: room_id.to_string(),
            previous_space,
        };
        let key = format!("share:{conversation_id}:{}", uuid::Uuid::new_v4());
        queue::enqueue(conn, &matrix_queue(), &key, SHARE_KIND, &job).await?;
        Ok(format!("Shared with **{}**: the room is in the team's Space and its members are invited.", team.name)
            .into())
    }

    /// `!unshare`: out of the team's Space; the people the share brought in are removed.
    pub(super) async fn unshare(
        &self,
        conn: &mut AnyConnection,
        conversation_id: &str,
        room_id: &str,
    ) -> store::Result<Answer> {
        let Some(team_id) = teams::share_of(conn, conversation_id).await? else {
            return Ok("This conversation is not shared with a team.".to_string().into());
        };
        let space_id = teams::space(conn, &team_id).await?;
        teams::remove_share(conn, conversation_id).await?;
        let job = UnshareJob { room_id: room_id.to_string(), space_id };
        let key = format!("unshare:{conversation_id}:{}", uuid::Uuid::new_v4());
        queue::enqueue(conn, &matrix_queue(), &key, UNSHARE_KIND, &job).await?;
        let name = teams::by_id(conn, &team_id).await?.map(|t| t.name).unwrap_or_default();
        Ok(format!("No longer shared with **{name}**; team members invited through the share are removed.").into())
    }

    /// The room of a conversation, for commands that need one.
    pub(super) async fn room_of(
        &self,
        conn: &mut AnyConnection,
        conversation_id: &str,
    ) -> store::Result<Option<String>> {
        conversations::room_for_conversation(conn, conversation_id).await
    }
}
