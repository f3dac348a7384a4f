//! The `/link` slash command. Text commands (`!link <token>`, `!whoami`, …) pass through
//! as ordinary messages and the hub parses them; `/link` is turned into the same
//! `!link <token>` message, acknowledged at once (Discord wants an answer within 3 s) with
//! a deferred ephemeral response, which the hub's answer then fills in.

use std::time::{Duration, Instant};

use serde_json::json;
use serenity::all::{CommandDataOptionValue, CommandInteraction, Interaction};
use serenity::http::{LightMethod, Request, Route};
use serenity::model::id::{ApplicationId, InteractionId};
use uuid::Uuid;

use super::gateway::backoff;
use super::outbound::{LIMIT, neutralise_mentions};
use super::{CHANNEL, INTERACTION_ID, INTERACTION_TOKEN, Inner, PendingInteraction, snowflake};
use crate::agents::stream::split_parts;
use crate::protocol::{ChannelMessage, ChannelSendError, ContentType, SenderType, metadata_keys as keys};
use crate::store::messages;

pub const LINK: &str = "link";
/// Interaction tokens are valid for 15 minutes; answer by DM after that.
const INTERACTION_TTL: Duration = Duration::from_secs(14 * 60);
/// Message flag: only the user who ran the command sees the answer.
const EPHEMERAL: u64 = 64;
/// Interaction response type: "thinking…", the answer follows by editing it.
const DEFERRED_CHANNEL_MESSAGE: u64 = 5;

impl Inner {
    /// Declares `/link [token]` as a global command (a bulk overwrite: idempotent).
    pub(super) async fn register_commands(&self, application: u64) {
        let body = json!([{
            "name": LINK,
            "type": 1,
            "description": "Link your Discord account to your Mosaic account",
            "options": [{
                "type": 3,
                "name": "token",
                "description": "The token Mosaic gave you in Matrix (!link there)",
                "required": false
            }]
        }]);
        let route = Route::Commands { application_id: ApplicationId::new(application) };
        let bytes = body.to_string().into_bytes();
        match self.rest.call(|| Request::new(route, LightMethod::Put).body(Some(bytes.clone()))).await {
            Ok(_) => tracing::info!(channel = CHANNEL, event = "commands_registered"),
            Err(error) => tracing::warn!(channel = CHANNEL, event = "commands_not_registered", %error),
        }
    }

    pub(super) async fn on_interaction(&self, interaction: Interaction) {
        let Interaction::Command(command) = interaction else { return };
        if command.data.name != LINK {
            return;
        }
        self.defer(&command).await;
        let mut attempt = 0;
        let msg = loop {
            match self.link_message(&command).await {
                Ok(msg) => break msg,
                Err(error) => {
                    attempt += 1;
                    tracing::warn!(channel = CHANNEL, event = "inbound_retry", interaction = command.id.get(), %error, attempt);
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        };
        let pending = PendingInteraction {
            token: command.token.clone(),
            user: msg.sender_id.clone(),
            created: Instant::now(),
            answered: false,
        };
        self.caches.lock().unwrap().interactions.insert(msg.id, pending);
        self.deliver(msg).await;
    }

    async fn defer(&self, command: &CommandInteraction) {
        let route =
            Route::InteractionResponse { interaction_id: InteractionId::new(command.id.get()), token: &command.token };
        let body = json!({"type": DEFERRED_CHANNEL_MESSAGE, "data": {"flags": EPHEMERAL}}).to_string().into_bytes();
        if let Err(error) = self.rest.call(|| Request::new(route, LightMethod::Post).body(Some(body.clone()))).await {
            tracing::warn!(channel = CHANNEL, event = "interaction_ack_failed", interaction = command.id.get(), %error);
        }
    }

    /// `/link token:abc` as the message `!link abc` from that user in that channel.
    async fn link_message(&self, command: &CommandInteraction) -> Result<ChannelMessage, super::inbound::Retry> {
        let user = command.member.as_ref().map_or(&command.user, |m| &m.user);
        let token = command.data.options.iter().find(|o| o.name == "token").and_then(|o| match &o.value {
            CommandDataOptionValue::String(text) => Some(text.trim().to_string()),
            _ => None,
        });
        let content = token.filter(|t| !t.is_empty()).map_or_else(|| "!link".to_string(), |t| format!("!link {t}"));
        let place = self.place(command.channel_id.get()).await?;
        // Other bots speak for themselves, as people do: `agent` is for our agents only,
        // whose names are reserved.
        let sender_type = SenderType::User;
        let mut msg =
            ChannelMessage::new(place.chat.to_string(), user.id.to_string(), sender_type, content, ContentType::Text);
        msg.thread_id = place.thread.map(|t| t.to_string());
        let nick = command.member.as_ref().and_then(|m| m.nick.clone());
        self.describe_sender(&mut msg, user, nick).await;
        if let Some(guild) = command.guild_id {
            msg.metadata.insert("guildId".into(), json!(guild.to_string()));
        }
        msg.metadata.insert("channelType".into(), json!(place.info.kind));
        msg.chat = place.info.chat_kind();
        msg.metadata.insert(keys::DEDUPE_KEY.into(), json!(format!("interaction:{}", command.id)));
        msg.metadata.insert(INTERACTION_ID.into(), json!(command.id.to_string()));
        msg.metadata.insert(INTERACTION_TOKEN.into(), json!(command.token));
        Ok(msg)
    }

    /// The pending `/link` an outbound message answers: named by its interaction token,
    /// by `replyToId`, or (for private answers) by the user it goes to.
    pub(super) fn pending_answer_for(
        &self,
        msg: &ChannelMessage,
        private_to: Option<&str>,
    ) -> Option<(Uuid, PendingInteraction)> {
        let mut caches = self.caches.lock().unwrap();
        caches.interactions.retain(|_, p| p.created.elapsed() < INTERACTION_TTL);
        let pending = &caches.interactions;
        let found = msg
            .meta_str(INTERACTION_TOKEN)
            .and_then(|token| pending.iter().find(|(_, p)| p.token == token))
            .or_else(|| msg.reply_to_id.and_then(|id| pending.get_key_value(&id)))
            .or_else(|| {
                let user = private_to?;
                pending.iter().filter(|(_, p)| p.user == user && !p.answered).max_by_key(|(_, p)| p.created)
            });
        found.map(|(id, p)| (*id, p.clone()))
    }

    /// Answers a pending `/link` ephemerally: the deferred response is edited, further
    /// parts are ephemeral follow-ups. False when the interaction is gone (expired).
    pub(super) async fn answer_interaction(
        &self,
        channel_id: &str,
        msg: &ChannelMessage,
        (key, pending): (Uuid, PendingInteraction),
    ) -> Result<bool, ChannelSendError> {
        let application = ApplicationId::new(self.identity().await?.application);
        let mut first = None;
        for (index, text) in split_parts(&neutralise_mentions(&msg.content), LIMIT).into_iter().enumerate() {
            let edit_original = index == 0 && !pending.answered;
            let (route, method, body) = if edit_original {
                let route =
                    Route::WebhookOriginalInteractionResponse { application_id: application, token: &pending.token };
                (route, LightMethod::Patch, json!({"content": text, "allowed_mentions": {"parse": []}}))
            } else {
                let route = Route::WebhookFollowupMessages { application_id: application, token: &pending.token };
                (
                    route,
                    LightMethod::Post,
                    json!({"content": text, "flags": EPHEMERAL, "allowed_mentions": {"parse": []}}),
                )
            };
            let bytes = body.to_string().into_bytes();
            let result: Result<Created, _> =
                self.rest.json(|| Request::new(route, method).body(Some(bytes.clone()))).await;
            match result {
                Ok(created) => {
                    first.get_or_insert(created.id);
                    if let Some(p) = self.caches.lock().unwrap().interactions.get_mut(&key) {
                        p.answered = true;
                    }
                }
                Err(error) if index == 0 && matches!(error.status(), Some(401 | 404)) => {
                    tracing::info!(channel = CHANNEL, event = "interaction_expired", %error);
                    self.caches.lock().unwrap().interactions.remove(&key);
                    return Ok(false);
                }
                Err(error) => return Err(error.into()),
            }
        }
        if let Some(native) = first {
            self.store
                .write(async |conn| messages::add_ref(conn, CHANNEL, channel_id, &native.to_string(), msg.id).await)
                .await
                .map_err(|e| ChannelSendError::Transient { message: e.to_string(), retry_after: None })?;
        }
        tracing::info!(channel = CHANNEL, event = "interaction_answered", id = %msg.id);
        Ok(true)
    }
}

#[derive(serde::Deserialize)]
struct Created {
    #[serde(with = "snowflake")]
    id: u64,
}
