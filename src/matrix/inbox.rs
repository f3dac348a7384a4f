//! Processes the durable transaction inbox in arrival order.
//!
//! An event is marked processed only after it was handled (or found unusable), so a crash
//! at any point leads to it being handled again after restart; the hub ignores a message
//! it has already stored, so nothing is answered twice.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::adapter::{EventError, MatrixAdapter};
use crate::queue::backoff;
use crate::store::{self, Store, inbox};

const BATCH: i64 = 100;

pub async fn run(store: Store, adapter: Arc<MatrixAdapter>, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    let mut failures = 0i64;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let wait = match process_batch(&store, &adapter, &mut failures).await {
            Ok(0) => Duration::from_secs(5),
            Ok(_) => continue,
            Err(error) => {
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

/// Handles up to one batch; stops at the first transient failure so that events stay in
/// order. Returns how many events were finished.
async fn process_batch(store: &Store, adapter: &MatrixAdapter, failures: &mut i64) -> Result<usize, String> {
    let pending = {
        let mut conn = store.conn().await.map_err(|e| e.to_string())?;
        inbox::pending(&mut conn, BATCH).await.map_err(|e| e.to_string())?
    };
    let mut finished = 0;
    for item in pending {
        match adapter.process_event(&item.event).await {
            Ok(()) => {}
            Err(EventError::Permanent(error)) => {
                tracing::warn!(txn_id = item.txn_id, seq = item.seq, %error, "event skipped");
            }
            Err(EventError::Transient(error)) => {
                *failures += 1;
                return Err(format!("event {} of transaction {}: {error}", item.seq, item.txn_id));
            }
        }
        mark_processed(store, item.seq).await.map_err(|e| e.to_string())?;
        crate::metrics::event_processed(item.received_at);
        *failures = 0;
        finished += 1;
    }
    Ok(finished)
}

async fn mark_processed(store: &Store, seq: i64) -> store::Result<()> {
    let mut conn = store.conn().await?;
    inbox::mark_processed(&mut conn, seq).await
}
