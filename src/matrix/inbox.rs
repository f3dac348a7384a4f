//! Processes the durable transaction inbox: in arrival order within each room, rooms
//! independently.
//!
//! An event is marked processed only after it was handled, so a crash at any point
//! leads to it being handled again after restart; the hub ignores a message it has
//! already stored, so nothing is answered twice. An event that cannot be handled now
//! waits with backoff and holds back only the later events of its room; one that can
//! never be handled, or keeps failing past the retry limits, becomes a dead letter
//! (`mosaic-as jobs`) and its room goes on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::adapter::{EventError, MatrixAdapter};
use crate::queue::{DeadReason, RetryLimits, backoff};
use crate::store::{self, Store, inbox};

const BATCH: i64 = 100;
const IDLE: Duration = Duration::from_secs(5);

pub async fn run(
    store: Store,
    adapter: Arc<MatrixAdapter>,
    limits: RetryLimits,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures = 0i64;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let wait = match process_batch(&store, &adapter, &limits).await {
            Ok(0) => {
                failures = 0;
                next_retry_in(&store).await.unwrap_or(IDLE)
            }
            Ok(_) => {
                failures = 0;
                continue;
            }
            Err(error) => {
                // The store itself is unavailable: nothing can be recorded.
                failures += 1;
                let delay = backoff(failures);
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "inbox processing paused");
                delay
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// How long until an event waiting for a later try is due, if one waits.
async fn next_retry_in(store: &Store) -> Option<Duration> {
    let mut conn = store.conn().await.ok()?;
    let at = inbox::next_retry_at(&mut conn).await.ok()??;
    Some(Duration::from_millis((at - store::now_ms()).clamp(10, IDLE.as_millis() as i64) as u64))
}

/// Handles up to one batch. Returns how many events were finished (handled or set
/// aside); an error means the store could not be read or written.
async fn process_batch(store: &Store, adapter: &MatrixAdapter, limits: &RetryLimits) -> store::Result<usize> {
    let pending = {
        let mut conn = store.conn().await?;
        inbox::pending(&mut conn, BATCH).await?
    };
    // Rooms with an event that failed in this pass: their later events wait for it.
    let mut waiting: HashSet<String> = HashSet::new();
    let mut finished = 0;
    for item in pending {
        if waiting.contains(&item.room_id) {
            continue;
        }
        let mut conn = store.conn().await?;
        match adapter.process_event(&item.event).await {
            Ok(()) => inbox::mark_processed(&mut conn, item.seq).await?,
            Err(EventError::Permanent(error)) => {
                give_up(&mut conn, &item, DeadReason::Permanent, &error).await?;
            }
            Err(EventError::Transient(error)) => match limits.exhausted(item.attempts, item.failing_since) {
                Some(reason) => give_up(&mut conn, &item, reason, &error).await?,
                None => {
                    let delay = limits.delay(item.attempts);
                    tracing::warn!(seq = item.seq, room_id = item.room_id, %error, retry_in_ms = delay.as_millis() as u64, "event will be retried; its room waits");
                    inbox::retry_later(&mut conn, item.seq, delay.as_millis() as i64, &error).await?;
                    waiting.insert(item.room_id.clone());
                    continue;
                }
            },
        }
        crate::metrics::event_processed(item.received_at);
        finished += 1;
    }
    Ok(finished)
}

async fn give_up(
    conn: &mut store::AnyConnection,
    item: &inbox::InboxEvent,
    reason: DeadReason,
    error: &str,
) -> store::Result<()> {
    tracing::warn!(txn_id = item.txn_id, seq = item.seq, room_id = item.room_id, reason = reason.as_str(), %error, "event set aside: dead letter");
    inbox::mark_dead(conn, item.seq, reason.as_str(), error).await
}
