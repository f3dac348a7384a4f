//! Getting updates: `getUpdates` long polling, or the webhook route.
//!
//! Either way an update is acknowledged (the offset moves past it, or the webhook answers
//! 200) only after the hub's handler accepted it, so a crash or a failing hub never loses
//! one; a redelivered update carries the same dedupe key and the hub drops it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use subtle::ConstantTimeEq;
use teloxide::payloads::GetUpdatesSetters;
use teloxide::prelude::Requester;
use teloxide::types::{Update, UpdateKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::errors::Failure;
use super::{ALLOWED_UPDATES, CHANNEL, Inner, inbound};
use crate::queue::backoff;

/// How long `disconnect` waits for the poller to finish its current update.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The running long-polling task.
pub(super) struct Poller {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The offset the loop reached, to confirm on stop.
    offset: Arc<std::sync::atomic::AtomicI32>,
    inner: Arc<Inner>,
}

impl Poller {
    /// Drops a webhook left from webhook mode (getUpdates refuses to work while one is
    /// set), then starts the loop.
    pub async fn start(inner: Arc<Inner>) -> Poller {
        if let Err(error) = inner.bot.delete_webhook().await {
            tracing::warn!(channel = CHANNEL, event = "delete_webhook_failed", error = %inner.redact(error));
        }
        let (stop, stopped) = watch::channel(false);
        let offset = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let task = tokio::spawn(run(inner.clone(), stopped, offset.clone()));
        Poller { stop, task, offset, inner }
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Lets the current update finish, then confirms what was handled so a restart does
    /// not see it again.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
        }
        let offset = self.offset.load(std::sync::atomic::Ordering::SeqCst);
        if offset > 0 {
            // A zero-timeout getUpdates with the next offset confirms everything before it.
            let confirm = self.inner.poll_bot.get_updates().offset(offset).limit(1).timeout(0);
            let _ = tokio::time::timeout(Duration::from_secs(2), confirm.into_future()).await;
        }
    }
}

async fn run(inner: Arc<Inner>, mut stopped: watch::Receiver<bool>, reached: Arc<std::sync::atomic::AtomicI32>) {
    let mut offset = 0i32;
    let mut failures = 0i64;
    tracing::info!(channel = CHANNEL, event = "polling_started", timeout_secs = inner.config.poll_timeout_secs);
    loop {
        let request = inner
            .poll_bot
            .get_updates()
            .offset(offset)
            .timeout(inner.config.poll_timeout_secs)
            .allowed_updates(ALLOWED_UPDATES.to_vec());
        let result = tokio::select! {
            result = request.into_future() => result,
            _ = stopped.changed() => return,
        };
        let updates = match result {
            Ok(updates) => updates,
            Err(error) => {
                inner.health.poll_failed();
                let failure = inner.classify(error);
                let delay = match &failure {
                    Failure::RateLimited(after) => *after,
                    _ => backoff(failures),
                };
                failures += 1;
                tracing::warn!(channel = CHANNEL, event = "poll_failed", error = %failure.message(), retry_in_ms = delay.as_millis() as u64);
                if sleep_or_stop(delay, &mut stopped).await {
                    return;
                }
                continue;
            }
        };
        inner.health.poll_ok();
        failures = 0;
        for update in updates {
            if !deliver_until_accepted(&inner, &update, &mut stopped).await {
                return;
            }
            offset = update.id.0 as i32 + 1;
            reached.store(offset, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Offers `update` to the hub until it is accepted. False when asked to stop first (the
/// update stays unconfirmed and comes again).
async fn deliver_until_accepted(inner: &Inner, update: &Update, stopped: &mut watch::Receiver<bool>) -> bool {
    let mut attempt = 0i64;
    loop {
        match process_update(inner, update).await {
            Ok(()) => return true,
            Err(InboundError::Handler(error)) if error.permanent => {
                // This update can never be stored: it alone is dropped, the chat goes on.
                tracing::error!(channel = CHANNEL, event = "update_dropped", update_id = update.id.0, %error);
                return true;
            }
            Err(error) => {
                let delay = backoff(attempt);
                tracing::warn!(channel = CHANNEL, event = "update_not_accepted", update_id = update.id.0, attempt, %error, retry_in_ms = delay.as_millis() as u64);
                attempt += 1;
                if sleep_or_stop(delay, stopped).await {
                    return false;
                }
            }
        }
    }
}

/// Sleeps; true when a stop was asked for meanwhile.
async fn sleep_or_stop(delay: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    if *stopped.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stopped.changed() => true,
    }
}

/// Why an update was not accepted (it will be offered again).
#[derive(Debug, thiserror::Error)]
pub(crate) enum InboundError {
    #[error("no inbound handler installed yet")]
    NoHandler,
    #[error("not connected yet (bot identity unknown)")]
    NotConnected,
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Handler(#[from] crate::protocol::HandlerError),
}

/// Turns one update into a message for the hub and waits for the hub to take it.
pub(crate) async fn process_update(inner: &Inner, update: &Update) -> Result<(), InboundError> {
    let (message, edited) = match &update.kind {
        UpdateKind::Message(message) | UpdateKind::ChannelPost(message) => (message, false),
        UpdateKind::EditedMessage(message) | UpdateKind::EditedChannelPost(message) => (message, true),
        UpdateKind::MessageReaction(reaction) => {
            let handler = inner.handler().ok_or(InboundError::NoHandler)?;
            for msg in inbound::reaction_messages(inner, reaction, update.id.0).await? {
                tracing::debug!(channel = CHANNEL, event = "inbound_reaction", update_id = update.id.0, chat_id = %msg.channel_id);
                handler.handle(msg).await?;
            }
            return Ok(());
        }
        UpdateKind::Error(value) => {
            // teloxide could not read it; retrying would not help.
            let keys: Vec<&String> = value.as_object().map(|o| o.keys().collect()).unwrap_or_default();
            tracing::warn!(channel = CHANNEL, event = "update_unreadable", update_id = update.id.0, ?keys);
            return Ok(());
        }
        _ => return Ok(()),
    };
    let handler = inner.handler().ok_or(InboundError::NoHandler)?;
    let Some(msg) = inbound::to_channel_message(inner, message, edited).await? else {
        return Ok(());
    };
    tracing::debug!(channel = CHANNEL, event = "inbound", update_id = update.id.0, chat_id = %msg.channel_id, message_id = ?msg.channel_message_id());
    handler.handle(msg).await?;
    Ok(())
}

pub(super) fn webhook_router(inner: Arc<Inner>, path: &str) -> Router {
    Router::new().route(path, post(webhook)).with_state(inner)
}

const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// One update from Telegram. A non-2xx answer makes Telegram deliver it again later.
async fn webhook(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let given = headers.get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if !bool::from(given.ct_eq(inner.webhook_secret.as_bytes())) {
        tracing::warn!(channel = CHANNEL, event = "webhook_rejected", reason = "bad secret token");
        return StatusCode::UNAUTHORIZED;
    }
    let update: Update = match serde_json::from_slice(&body) {
        Ok(update) => update,
        Err(error) => {
            // Telegram would send the same bytes again forever.
            tracing::warn!(channel = CHANNEL, event = "webhook_unreadable", %error);
            return StatusCode::OK;
        }
    };
    match process_update(&inner, &update).await {
        Ok(()) => StatusCode::OK,
        Err(error) => {
            tracing::warn!(channel = CHANNEL, event = "update_not_accepted", update_id = update.id.0, %error);
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}
