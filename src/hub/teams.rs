//! Team commands: `!team create|add|remove|list`, `!share <team>`, `!unshare`.
//! Only people with a linked account take part in teams.

use sqlx::AnyConnection;

use super::Hub;
use super::commands::Answer;
use super::lifecycle::{self, ShareOutcome};
use crate::protocol;
use crate::store::{self, accounts, teams};

/// What `!team …` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamCommand {
    Create(String),
    Add { team: String, member: String },
    Remove { team: String, member: String },
    List,
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
        lifecycle::create_team(conn, name, Some((me, sender))).await?;
        Ok(format!("Created team **{name}** with you in it; its Space invitation is on its way."))
    }

    /// A member names an account by name or by a linked Matrix id.
    async fn find_account(&self, conn: &mut AnyConnection, member: &str) -> store::Result<Option<accounts::Account>> {
        if member.starts_with('@') {
            accounts::account_for_identity(conn, protocol::MATRIX, member).await
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

    /// The team (which `me` must belong to) and the account `member` names, or the
    /// answer that explains why not.
    async fn team_and_member(
        &self,
        conn: &mut AnyConnection,
        me: &accounts::Account,
        team: &str,
        member: &str,
    ) -> store::Result<Result<(teams::Team, accounts::Account), String>> {
        let team = match self.my_team(conn, me, team).await? {
            Ok(team) => team,
            Err(refusal) => return Ok(Err(refusal)),
        };
        Ok(match self.find_account(conn, member).await? {
            Some(account) => Ok((team, account)),
            None => Err(format!("No linked account for {member}: they link with `!link <token>` first.")),
        })
    }

    async fn add_member(
        &self,
        conn: &mut AnyConnection,
        me: &accounts::Account,
        team: &str,
        member: &str,
    ) -> store::Result<String> {
        let (team, account) = match self.team_and_member(conn, me, team, member).await? {
            Ok(found) => found,
            Err(refusal) => return Ok(refusal),
        };
        if !lifecycle::add_team_member(conn, &team, &account).await? {
            return Ok(format!("**{}** is in **{}** already.", account.name, team.name));
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
        let (team, account) = match self.team_and_member(conn, me, team, member).await? {
            Ok(found) => found,
            Err(refusal) => return Ok(refusal),
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
        team: &str,
    ) -> store::Result<Answer> {
        let Some(me) = accounts::account_for_identity(conn, channel, sender).await? else {
            return Ok("Sharing is for linked accounts: send `!link <token>` first.".to_string().into());
        };
        let team = match self.my_team(conn, &me, team).await? {
            Ok(team) => team,
            Err(refusal) => return Ok(refusal.into()),
        };
        Ok(match lifecycle::share_conversation(conn, conversation_id, &team).await? {
            ShareOutcome::Shared => {
                format!("Shared with **{}**: the room is in the team's Space and its members are invited.", team.name)
            }
            ShareOutcome::AlreadyShared => format!("This conversation is shared with **{}** already.", team.name),
            ShareOutcome::NoRoom => "Only conversation rooms can be shared.".to_string(),
        }
        .into())
    }

    /// `!unshare`: out of the team's Space; the people the share brought in are removed.
    pub(super) async fn unshare(&self, conn: &mut AnyConnection, conversation_id: &str) -> store::Result<Answer> {
        Ok(match lifecycle::unshare_conversation(conn, conversation_id).await? {
            Some(name) => {
                format!("No longer shared with **{name}**; team members invited through the share are removed.")
            }
            None => "This conversation is not shared with a team.".to_string(),
        }
        .into())
    }
}
