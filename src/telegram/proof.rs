//! May an admin bridge a Telegram chat? Only when the chat is allow-listed
//! (`[telegram] bridge_chats`), or when one of the admin's linked Telegram accounts is
//! its creator or an administrator (`getChatMember`). Without this, a linked admin could
//! read and post in any group the bot is in.

use teloxide::prelude::Requester;
use teloxide::types::{ChatId, UserId};

use super::Inner;
use super::errors::Failure;
use crate::protocol::BridgeRight;

impl Inner {
    pub(super) async fn may_bridge(&self, channel_id: &str, requester: &[String]) -> BridgeRight {
        let Ok(chat) = channel_id.parse::<i64>() else {
            return BridgeRight::Refused(format!("`{channel_id}` is not a Telegram chat id."));
        };
        if self.config.bridge_chats.contains(&chat) {
            return BridgeRight::AllowListed;
        }
        let fix = format!("or ask the operator to add {chat} to `bridge_chats` under [telegram]");
        let people: Vec<u64> = requester.iter().filter_map(|id| id.parse::<u64>().ok()).collect();
        if people.is_empty() {
            return BridgeRight::Refused(format!(
                "Bridging Telegram chat {chat} needs proof that you administer it: link your Telegram account (`!link` here, then `/link <token>` to the bot) as an administrator of that chat, {fix}."
            ));
        }
        for user in people {
            match self.bot.get_chat_member(ChatId(chat), UserId(user)).await {
                Ok(member) if member.kind.is_privileged() => {
                    tracing::info!(channel = super::CHANNEL, chat, user, "bridge right proven");
                    return BridgeRight::Proven;
                }
                Ok(_) => {}
                Err(error) => match self.classify(error) {
                    // Not in the chat, or the chat is unknown to the bot: no proof here.
                    Failure::Terminal(message) => {
                        tracing::info!(channel = super::CHANNEL, chat, user, error = message, "no chat member");
                    }
                    failure => {
                        tracing::warn!(
                            channel = super::CHANNEL,
                            chat,
                            error = failure.message(),
                            "cannot ask who administers a chat"
                        );
                        return BridgeRight::Refused(format!(
                            "I could not ask Telegram whether you administer chat {chat}; try `!bridge` again later."
                        ));
                    }
                },
            }
        }
        BridgeRight::Refused(format!(
            "Your linked Telegram account is not an administrator of chat {chat}: have its owner make you one, {fix}."
        ))
    }
}
