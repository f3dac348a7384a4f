//! The retention job: removes messages older than their room's policy from the store
//! and, with a homeserver admin token, asks the homeserver to purge its copy — unless the
//! room's policy was set by someone who is not an admin.
//!
//! A room's policy is its own (`!retention`, admin API), else its type's (admin API),
//! else the config's default for the type. Running twice deletes nothing more: only
//! what is past its cutoff is ever removed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::AnyConnection;
use tokio::sync::watch;

use crate::config::Config;
use crate::store::{self, Store, agent_rooms, conversations, finished_work, retention, teams};

/// Room types of the seed's retention table.
pub const TYPES: [&str; 4] = ["personal", "team", "agent", "system"];

/// The type of a conversation's room: an agent room, a room shared with a team, or a
/// personal room.
pub async fn room_type(conn: &mut AnyConnection, conversation_id: &str, room_id: &str) -> store::Result<&'static str> {
    if agent_rooms::pair_of_room(conn, room_id).await?.is_some() {
        return Ok("agent");
    }
    if teams::share_of(conn, conversation_id).await?.is_some() {
        return Ok("team");
    }
    Ok("personal")
}

/// Days a room keeps messages; `None` keeps them forever.
pub async fn effective_days(
    conn: &mut AnyConnection,
    config: &Config,
    room_id: &str,
    kind: &str,
) -> store::Result<Option<i64>> {
    if let Some(days) = retention::policy(conn, room_id, "all").await? {
        return Ok(days);
    }
    if let Some(days) = retention::policy(conn, "*", kind).await? {
        return Ok(days);
    }
    let defaults = &config.retention;
    Ok(Some(match kind {
        "team" => defaults.team_days,
        "agent" => defaults.agent_days,
        "system" => defaults.system_days,
        _ => defaults.personal_days,
    }))
}

/// One pass over every conversation with a room; returns the messages removed.
pub async fn run_once(store: &Store, config: &Config, http: &reqwest::Client) -> store::Result<u64> {
    let rooms = {
        let mut conn = store.conn().await?;
        conversations::list_conversations(&mut conn).await?
    };
    let mut removed = 0;
    for conversation in rooms {
        let Some(room_id) = conversation.room_id else { continue };
        let mut tx = store.begin_write().await?;
        let kind = room_type(&mut tx, &conversation.id, &room_id).await?;
        let Some(days) = effective_days(&mut tx, config, &room_id, kind).await? else { continue };
        let cutoff = store::now_ms() - days * 86_400_000;
        let deleted = retention::delete_before(&mut tx, &conversation.id, cutoff).await?;
        let reach = retention::reach_of_room(&mut tx, &room_id).await?;
        tx.commit().await?;
        if deleted > 0 {
            tracing::info!(room_id, kind, days, deleted, ?reach, "expired messages removed");
            removed += deleted;
            if reach == retention::Reach::AlsoHomeserver {
                purge_homeserver(http, config, &room_id, cutoff).await;
            }
        }
    }
    Ok(removed)
}

/// Synapse's purge-history admin API; other homeservers (Conduit has no such API) keep
/// their copy, and a failure is logged and tried again at the next expiry.
async fn purge_homeserver(http: &reqwest::Client, config: &Config, room_id: &str, cutoff_ms: i64) {
    let Some(token) = config.retention.homeserver_admin_token.as_deref() else { return };
    let room: String = url::form_urlencoded::byte_serialize(room_id.as_bytes()).collect();
    let url = format!("{}/_synapse/admin/v1/purge_history/{room}", config.homeserver.url.trim_end_matches('/'));
    let body = json!({ "purge_up_to_ts": cutoff_ms, "delete_local_events": true });
    match http.post(url).bearer_auth(token).json(&body).send().await {
        Ok(response) if response.status().is_success() => tracing::info!(room_id, "homeserver purge started"),
        Ok(response) => tracing::warn!(room_id, status = response.status().as_u16(), "homeserver refused the purge"),
        Err(error) => tracing::warn!(room_id, error = %error.without_url(), "homeserver purge failed"),
    }
}

/// Removes the inbox's and the outbox's rows of work that finished more than
/// `retention.finished_work_days` ago.
pub async fn prune_finished_work(store: &Store, config: &Config) -> store::Result<finished_work::Pruned> {
    let cutoff = store::now_ms() - config.retention.finished_work_days * 86_400_000;
    let pruned = finished_work::prune(store, cutoff).await?;
    if pruned.total() > 0 {
        tracing::info!(
            inbox_events = pruned.inbox_events,
            transactions = pruned.transactions,
            jobs = pruned.jobs,
            "finished work removed"
        );
    }
    Ok(pruned)
}

/// Runs the job every `retention.interval_secs` until shutdown.
pub async fn run(store: Store, config: Arc<Config>, mut shutdown: watch::Receiver<bool>) {
    let http = reqwest::Client::new();
    let interval = Duration::from_secs(config.retention.interval_secs.max(1));
    loop {
        if let Err(error) = run_once(&store, &config, &http).await {
            tracing::warn!(%error, "retention pass failed; trying again next time");
        }
        if let Err(error) = prune_finished_work(&store, &config).await {
            tracing::warn!(%error, "removing finished work failed; trying again next time");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
