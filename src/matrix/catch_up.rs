//! Catching up on messages the homeserver accepted but never pushed.
//!
//! A homeserver may drop pushes: Conduit keeps only 30 queued events per appservice
//! when it restarts, and Synapse may never push a message it accepted just before it
//! stopped. So each room's history is read back, newest first, until the last event
//! this service already handled (or sent); what lies after it goes through the usual
//! path, oldest first. At start every room where the bot or an agent is joined is read
//! back; then, every 30 s, the rooms with recent activity.

use std::collections::HashSet;
use std::time::Duration;

use ruma::api::Direction;
use ruma::api::client::message::get_message_events;
use ruma::events::MessageLikeEventType;
use ruma::{OwnedRoomId, UInt};
use serde_json::Value;
use tokio::sync::watch;

use super::adapter::{CHANNEL, MatrixAdapter};
use crate::store::{self, conversations, messages};

/// How often the history of active rooms is read back.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// Rooms count as active this long after their last stored message.
const ACTIVE_FOR_MS: i64 = 24 * 3600 * 1000;
/// Events read per page.
const PAGE: u32 = 100;
/// At most this many pages per room and pass; a longer gap is caught up on the next.
const MAX_PAGES: usize = 50;
/// Margin for clock differences between the homeserver and this service.
const SLACK_MS: i64 = 60_000;

pub async fn run(adapter: std::sync::Arc<MatrixAdapter>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(INTERVAL);
    let mut every_room = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        match adapter.catch_up(every_room).await {
            Ok(handed_on) => {
                tracing::debug!(channel = CHANNEL, event = "caught_up", every_room, handed_on);
                every_room = false;
            }
            Err(error) => tracing::debug!(channel = CHANNEL, %error, "catch-up skipped"),
        }
    }
}

impl MatrixAdapter {
    /// One pass over the rooms where our users are joined (`every_room`) or over those
    /// with recent activity; returns how many missed events were handed on.
    pub async fn catch_up(&self, every_room: bool) -> Result<usize, String> {
        let ours = self.own_users();
        let (joined, active) = {
            let mut conn = self.store().conn().await.map_err(|e| e.to_string())?;
            let joined = conversations::rooms_joined_by(&mut conn, &ours).await.map_err(|e| e.to_string())?;
            let active: HashSet<String> =
                messages::recently_active_rooms(&mut conn, CHANNEL, store::now_ms() - ACTIVE_FOR_MS)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|(room, _)| room)
                    .collect();
            (joined, active)
        };
        let mut found = 0;
        for (room, joined_at) in joined {
            if every_room || active.contains(&room) {
                found += self.catch_up_room(&room, joined_at - SLACK_MS).await?;
            }
        }
        Ok(found)
    }

    /// The bot and every configured agent.
    fn own_users(&self) -> Vec<String> {
        let ns = self.namespace();
        let agents = self.config().agents.iter().map(|agent| ns.agent_user_id(&agent.id));
        std::iter::once(ns.bot_user_id()).chain(agents).collect()
    }

    /// Reads the room back to the last event already handled, or to when our users
    /// joined it (`since_ms`), and hands on what is newer, oldest first.
    async fn catch_up_room(&self, room: &str, since_ms: i64) -> Result<usize, String> {
        let Ok(room_id) = OwnedRoomId::try_from(room) else { return Ok(0) };
        let reader = self.notice_speaker(room).await.map_err(|e| e.to_string())?;
        let mut missed = Vec::new();
        let mut from = None;
        'pages: for _ in 0..MAX_PAGES {
            let mut request = get_message_events::v3::Request::new(room_id.clone(), Direction::Backward);
            request.from = from.take();
            request.limit = UInt::from(PAGE);
            request.filter.types = Some(vec![MessageLikeEventType::RoomMessage.to_string()]);
            let page = self.client().call(request, Some(&reader)).await.map_err(|e| e.to_string())?;
            for raw in &page.chunk {
                let Ok(mut event) = serde_json::from_str::<Value>(raw.json().get()) else { continue };
                let event_id = event["event_id"].as_str().unwrap_or_default().to_string();
                let before_us = event["origin_server_ts"].as_i64().is_some_and(|ts| ts < since_ms);
                if before_us || self.handled(room, &event_id).await? {
                    break 'pages;
                }
                let sender = event["sender"].as_str().unwrap_or_default();
                if event["type"] == "m.room.message" && !self.namespace().is_ours(sender) {
                    event["room_id"] = Value::String(room.to_string());
                    missed.push(event);
                }
            }
            match page.end {
                Some(end) if !page.chunk.is_empty() => from = Some(end),
                _ => break,
            }
        }
        let found = missed.len();
        for event in missed.into_iter().rev() {
            self.process_event(&event.to_string()).await.map_err(|e| e.to_string())?;
        }
        Ok(found)
    }

    /// Whether an event of the room was handled (a message stored) or sent by us.
    async fn handled(&self, room: &str, event_id: &str) -> Result<bool, String> {
        let mut conn = self.store().conn().await.map_err(|e| e.to_string())?;
        let known =
            messages::message_for_native(&mut conn, CHANNEL, room, event_id).await.map_err(|e| e.to_string())?;
        Ok(known.is_some())
    }
}
