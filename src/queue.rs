//! Workers that drain the durable outbox, one ordered queue each.
//!
//! A job is marked done only after its handler succeeded, so a crash mid-job runs it
//! again after restart; handlers make that harmless (fixed Matrix transaction ids,
//! idempotent inserts).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::store::{self, Store, outbox};

/// Queue of sends to a surface: its adapter name.
pub fn send_queue(channel: &str) -> String {
    channel.to_string()
}

/// Prefix of the agent turn queues: one queue per agent and conversation, so turns of
/// one conversation run in order while conversations run side by side.
pub const AGENT_QUEUE_PREFIX: &str = "agent:";

/// The queue of `agent`'s turns in `conversation_id`.
pub fn agent_queue(agent: &str, conversation_id: &str) -> String {
    format!("{AGENT_QUEUE_PREFIX}{agent}:{conversation_id}")
}

/// The agent and conversation of an agent queue.
pub fn parse_agent_queue(queue: &str) -> Option<(&str, &str)> {
    queue.strip_prefix(AGENT_QUEUE_PREFIX)?.split_once(':')
}

/// Wake-up name of the agent scheduler.
pub const AGENT_SCHEDULER: &str = "agents";

/// What became of one try of a job.
#[derive(Debug)]
pub enum JobOutcome {
    Done,
    /// Will never succeed; recorded and skipped.
    Failed(String),
    /// Try again after the given delay (or the worker's backoff).
    Retry {
        error: String,
        after: Option<Duration>,
    },
}

#[async_trait]
pub trait JobHandler: Send + Sync {
    async fn run(&self, job: &outbox::Job) -> JobOutcome;
}

/// Wakes queue workers when work is enqueued; a wake-up sent while a worker is busy is
/// kept until it next waits.
#[derive(Default)]
pub struct Wakers {
    queues: std::sync::Mutex<std::collections::HashMap<String, Arc<Notify>>>,
}

impl Wakers {
    pub fn wake_all(&self) {
        for notify in self.queues.lock().expect("wakers lock").values() {
            notify.notify_one();
        }
    }

    pub fn for_queue(&self, queue: &str) -> Arc<Notify> {
        self.queues.lock().expect("wakers lock").entry(queue.to_string()).or_default().clone()
    }
}

/// Enqueues a job with a JSON payload.
pub async fn enqueue<T: Serialize>(
    conn: &mut store::AnyConnection,
    queue: &str,
    dedupe_key: &str,
    kind: &str,
    payload: &T,
) -> store::Result<bool> {
    let payload = serde_json::to_string(payload).map_err(|e| store::StoreError::Corrupt(e.to_string()))?;
    outbox::enqueue(conn, queue, dedupe_key, kind, &payload).await
}

/// Backoff for the n-th retry: 0.5 s doubling up to 30 s.
pub fn backoff(attempt: i64) -> Duration {
    let exponent = attempt.clamp(0, 6) as u32;
    Duration::from_millis(500 * 2u64.pow(exponent)).min(Duration::from_secs(30))
}

/// Runs `queue` until `shutdown` turns true.
pub async fn run_worker(
    store: Store,
    queue: String,
    handler: Arc<dyn JobHandler>,
    wakers: Arc<Wakers>,
    mut shutdown: watch::Receiver<bool>,
) {
    let idle = Duration::from_secs(5);
    let wake = wakers.for_queue(&queue);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let wait = match next_job(&store, &queue).await {
            Ok(Some(job)) => {
                let delay = job.not_before - store::now_ms();
                if delay > 0 {
                    Duration::from_millis(delay as u64)
                } else {
                    run_one(&store, &queue, handler.as_ref(), &job).await;
                    continue;
                }
            }
            Ok(None) => idle,
            Err(error) => {
                tracing::error!(queue, %error, "cannot read the outbox");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn next_job(store: &Store, queue: &str) -> store::Result<Option<outbox::Job>> {
    let mut conn = store.conn().await?;
    outbox::head(&mut conn, queue).await
}

pub async fn run_one(store: &Store, queue: &str, handler: &dyn JobHandler, job: &outbox::Job) {
    let outcome = handler.run(job).await;
    let result = async {
        let mut conn = store.conn().await?;
        match &outcome {
            JobOutcome::Done => outbox::mark_done(&mut conn, job.seq).await,
            JobOutcome::Failed(error) => {
                tracing::error!(queue, job = job.dedupe_key, kind = job.kind, %error, "job failed for good");
                outbox::mark_failed(&mut conn, job.seq, error).await
            }
            JobOutcome::Retry { error, after } => {
                crate::metrics::job_retried(queue);
                let delay = after.unwrap_or_else(|| backoff(job.attempts));
                tracing::warn!(queue, job = job.dedupe_key, kind = job.kind, %error, retry_in_ms = delay.as_millis() as u64, "job will be retried");
                outbox::retry_later(&mut conn, job.seq, delay.as_millis() as i64, error).await
            }
        }
    }
    .await;
    if let Err(error) = result {
        // The job stays pending and runs again; its handler is idempotent.
        tracing::error!(queue, job = job.dedupe_key, %error, "cannot record the job's outcome");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_queues_name_agent_and_conversation() {
        let queue = agent_queue("echo", "5f0c");
        assert_eq!(parse_agent_queue(&queue), Some(("echo", "5f0c")));
        assert_eq!(parse_agent_queue("matrix"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert!(backoff(3) > backoff(2));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }
}
