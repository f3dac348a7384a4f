//! May an admin bridge a Discord channel? Only when its server is allow-listed
//! (`[discord] bridge_guilds`), or when one of the admin's linked Discord accounts holds
//! Manage Webhooks (or Administrator) in that channel, as Discord computes it from the
//! server's roles, the member's roles and the channel's overwrites. Without this, a
//! linked admin could read and post in any channel the bot can see.

use serenity::http::{LightMethod, Request, Route};
use serenity::model::channel::GuildChannel;
use serenity::model::guild::{Member, PartialGuild};
use serenity::model::id::{ChannelId, GuildId, UserId};
use serenity::model::permissions::Permissions;

use super::Inner;
use super::rest::RestError;
use crate::protocol::BridgeRight;

/// Discord's code for "this user is not a member of the server".
const UNKNOWN_MEMBER: i64 = 10007;

impl Inner {
    pub(super) async fn may_bridge(&self, channel_id: &str, requester: &[String]) -> BridgeRight {
        let Ok(chat) = channel_id.parse::<u64>() else {
            return BridgeRight::Refused(format!("`{channel_id}` is not a Discord channel id."));
        };
        match self.check_bridge_right(chat, requester).await {
            Ok(right) => right,
            Err(error) if matches!(error.status(), Some(403 | 404)) => BridgeRight::Refused(format!(
                "Discord channel {chat} is unknown or the bot cannot see it: invite the bot to its server first."
            )),
            Err(error) => {
                tracing::warn!(channel = super::CHANNEL, chat, %error, "cannot check who may bridge a channel");
                BridgeRight::Refused(format!(
                    "I could not ask Discord whether you manage channel {chat}; try `!bridge` again later."
                ))
            }
        }
    }

    async fn check_bridge_right(&self, chat: u64, requester: &[String]) -> Result<BridgeRight, RestError> {
        let channel: GuildChannel = self
            .rest
            .json(|| Request::new(Route::Channel { channel_id: ChannelId::new(chat) }, LightMethod::Get))
            .await?;
        let guild_id = channel.guild_id;
        // serenity fills in its default id when the answer names no server (a DM).
        if guild_id == GuildId::default() {
            return Ok(BridgeRight::Refused(format!(
                "Discord channel {chat} is not in a server: only server channels can be bridged."
            )));
        }
        if self.bridge_guilds.contains(&guild_id.get()) {
            return Ok(BridgeRight::AllowListed);
        }
        let fix = format!("or ask the operator to add its server {guild_id} to `bridge_guilds` under [discord]");
        let people: Vec<UserId> =
            requester.iter().filter_map(|id| id.parse::<u64>().ok()).filter(|id| *id != 0).map(UserId::new).collect();
        if people.is_empty() {
            return Ok(BridgeRight::Refused(format!(
                "Bridging Discord channel {chat} needs proof that you manage it: link your Discord account (`!link` here, then `/link <token>` on Discord) and hold Manage Webhooks there, {fix}."
            )));
        }
        let guild: PartialGuild = self.rest.json(|| Request::new(Route::Guild { guild_id }, LightMethod::Get)).await?;
        for user_id in people {
            let member = match self
                .rest
                .json::<Member, _>(|| Request::new(Route::GuildMember { guild_id, user_id }, LightMethod::Get))
                .await
            {
                Ok(member) => member,
                Err(error) if error.code() == Some(UNKNOWN_MEMBER) || error.is_not_found() => continue,
                Err(error) => return Err(error),
            };
            let permissions = guild.user_permissions_in(&channel, &member);
            if permissions.intersects(Permissions::MANAGE_WEBHOOKS | Permissions::ADMINISTRATOR) {
                tracing::info!(channel = super::CHANNEL, chat, user = %user_id, "bridge right proven");
                return Ok(BridgeRight::Proven);
            }
        }
        Ok(BridgeRight::Refused(format!(
            "Your linked Discord account lacks Manage Webhooks in channel {chat}: have a server admin grant it, {fix}."
        )))
    }
}
