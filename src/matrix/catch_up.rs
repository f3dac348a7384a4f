//! Catching up on messages the homeserver accepted but never pushed.
//!
//! A homeserver that stops between accepting a message and pushing it to the appservice
//! may not push it after its restart (Synapse only retries transactions of appservices it
//! saw as down). So, at start and then periodically, the recent history of each room
//! with recent activity is read back, and messages newer than the last one stored there
//! go through the usual path; the hub recognises what it already handled.

use std::time::Duration;

use ruma::api::Direction;
use ruma::api::client::message::get_message_events;
use ruma::{OwnedRoomId, UInt};
use serde_json::Value;
use tokio::sync::watch;

use super::adapter::{CHANNEL, MatrixAdapter};
use crate::store::{self, messages};

/// How often the history of active rooms is read back.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// Rooms count as active this long after their last stored message.
const ACTIVE_FOR_MS: i64 = 24 * 3600 * 1000;
/// Events read per room and pass.
const PAGE: u32 = 100;
/// Margin for clock differences between the homeserver and this service.
const SLACK_MS: i64 = 60_000;

pub async fn run(adapter: std::sync::Arc<MatrixAdapter>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        match adapter.catch_up().await {
            Ok(examined) => tracing::debug!(channel = CHANNEL, event = "caught_up", examined),
            Err(error) => tracing::debug!(channel = CHANNEL, %error, "catch-up skipped"),
        }
    }
}

impl MatrixAdapter {
    /// One pass over the active rooms; returns how many recent events were handed on
    /// (those handled before are recognised and dropped by the hub).
    pub async fn catch_up(&self) -> Result<usize, String> {
        let rooms = {
            let mut conn = self.store().conn().await.map_err(|e| e.to_string())?;
            messages::recently_active_rooms(&mut conn, CHANNEL, store::now_ms() - ACTIVE_FOR_MS)
                .await
                .map_err(|e| e.to_string())?
        };
        let mut found = 0;
        for (room, newest_ms) in rooms {
            found += self.catch_up_room(&room, newest_ms - SLACK_MS).await?;
        }
        Ok(found)
    }

    async fn catch_up_room(&self, room: &str, after_ms: i64) -> Result<usize, String> {
        let Ok(room_id) = OwnedRoomId::try_from(room) else { return Ok(0) };
        let reader = self.notice_speaker(room).await.map_err(|e| e.to_string())?;
        let mut request = get_message_events::v3::Request::new(room_id, Direction::Backward);
        request.limit = UInt::from(PAGE);
        let page = self.client().call(request, Some(&reader)).await.map_err(|e| e.to_string())?;
        let mut found = 0;
        // Oldest first, as they were written.
        for raw in page.chunk.iter().rev() {
            let Ok(mut event) = serde_json::from_str::<Value>(raw.json().get()) else { continue };
            let sender = event["sender"].as_str().unwrap_or_default().to_string();
            let recent = event["origin_server_ts"].as_i64().is_some_and(|ts| ts >= after_ms);
            if event["type"] != "m.room.message" || !recent || self.namespace().is_ours(&sender) {
                continue;
            }
            event["room_id"] = Value::String(room.to_string());
            if let Err(error) = self.process_event(&event.to_string()).await {
                return Err(error.to_string());
            }
            found += 1;
        }
        Ok(found)
    }
}
