//! Catching up on messages the homeserver accepted but never pushed.
//!
//! A homeserver may drop pushes: Conduit keeps only 30 queued events per appservice
//! when it restarts, and Synapse may never push a message it accepted just before it
//! stopped. So each room's history is read back, newest first, to where the previous
//! pass left off (the first time: a minute before the newest message handled there),
//! and every message not handled yet goes through the usual path, oldest first. At
//! start every room where the bot or an agent is joined is read back; then, every 30 s,
//! the rooms with recent activity.

use std::collections::HashMap;
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
/// Margin for clock differences between the homeserver and this service, and for events
/// that become visible a little after later ones.
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
        let (joined, newest) = {
            let mut conn = self.store().conn().await.map_err(|e| e.to_string())?;
            let joined = conversations::rooms_joined_by(&mut conn, &ours).await.map_err(|e| e.to_string())?;
            let since = if every_room { 0 } else { store::now_ms() - ACTIVE_FOR_MS };
            let newest: HashMap<String, i64> = messages::recently_active_rooms(&mut conn, CHANNEL, since)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect();
            (joined, newest)
        };
        let mut found = 0;
        for (room, joined_at) in joined {
            let Some(newest_handled) = newest.get(&room).copied().or(every_room.then_some(joined_at)) else {
                continue;
            };
            // Read back to where the last pass left off, or (the first time) to a little
            // before the newest message handled here, never to before our users joined.
            let cursor = self.catch_up_cursors.lock().expect("cursors lock").get(&room).copied();
            let since = cursor.unwrap_or(newest_handled - SLACK_MS).max(joined_at - SLACK_MS);
            let (handed_on, newest_seen) = self.catch_up_room(&room, since).await?;
            found += handed_on;
            if let Some(newest_seen) = newest_seen {
                self.catch_up_cursors.lock().expect("cursors lock").insert(room, newest_seen - SLACK_MS);
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

    /// Reads the room back to `since_ms` and hands on, oldest first, every message not
    /// handled yet. Returns how many were handed on and the newest event time seen.
    async fn catch_up_room(&self, room: &str, since_ms: i64) -> Result<(usize, Option<i64>), String> {
        let Ok(room_id) = OwnedRoomId::try_from(room) else { return Ok((0, None)) };
        let reader = self.notice_speaker(room).await.map_err(|e| e.to_string())?;
        let mut missed = Vec::new();
        let mut newest_seen = None;
        let mut from = None;
        'pages: for _ in 0..MAX_PAGES {
            let mut request = get_message_events::v3::Request::new(room_id.clone(), Direction::Backward);
            request.from = from.take();
            request.limit = UInt::from(PAGE);
            // Reactions and their redactions are missed like messages, and caught up alike.
            request.filter.types = Some(vec![
                MessageLikeEventType::RoomMessage.to_string(),
                MessageLikeEventType::Reaction.to_string(),
                "m.room.redaction".to_string(),
            ]);
            let page = self.client().call(request, Some(&reader)).await.map_err(|e| e.to_string())?;
            for raw in &page.chunk {
                let Ok(mut event) = serde_json::from_str::<Value>(raw.json().get()) else { continue };
                let ts = event["origin_server_ts"].as_i64().unwrap_or_default();
                newest_seen = newest_seen.max(Some(ts));
                if ts < since_ms {
                    break 'pages;
                }
                let sender = event["sender"].as_str().unwrap_or_default();
                let event_id = event["event_id"].as_str().unwrap_or_default();
                if self.namespace().is_ours(sender) || self.handled(room, event_id).await? {
                    continue;
                }
                event["room_id"] = Value::String(room.to_string());
                missed.push(event);
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
        Ok((found, newest_seen))
    }

    /// Whether a message of the room was handled (stored) already.
    async fn handled(&self, room: &str, event_id: &str) -> Result<bool, String> {
        let mut conn = self.store().conn().await.map_err(|e| e.to_string())?;
        let known =
            messages::message_for_native(&mut conn, CHANNEL, room, event_id).await.map_err(|e| e.to_string())?;
        Ok(known.is_some())
    }
}
