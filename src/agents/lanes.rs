//! Scheduling agent turns: one lane per agent and conversation runs its queue in order;
//! lanes of one agent share the agent's concurrency slots.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::Agents;
use crate::queue::{self, AGENT_QUEUE_PREFIX, AGENT_SCHEDULER, JobHandler, JobOutcome, Wakers};
use crate::store::{self, Store, outbox};

/// How often the scheduler looks for work it was not woken for.
const POLL: Duration = Duration::from_secs(1);

/// Starts a lane for every agent queue with work, until `shutdown`.
pub async fn run_scheduler(
    store: Store,
    agents: Arc<Agents>,
    wakers: Arc<Wakers>,
    mut shutdown: watch::Receiver<bool>,
) {
    let active: Arc<Mutex<HashSet<String>>> = Arc::default();
    let wake = wakers.for_queue(AGENT_SCHEDULER);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match pending(&store).await {
            Ok(queues) => {
                for queue in queues {
                    if active.lock().expect("lanes lock").insert(queue.clone()) {
                        let lane = Lane { store: store.clone(), agents: agents.clone(), queue, active: active.clone() };
                        tokio::spawn(lane.run(shutdown.clone()));
                    }
                }
            }
            Err(error) => tracing::error!(%error, "cannot read the agent queues"),
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn pending(store: &Store) -> store::Result<Vec<String>> {
    let mut conn = store.conn().await?;
    outbox::pending_queues(&mut conn, AGENT_QUEUE_PREFIX).await
}

struct Lane {
    store: Store,
    agents: Arc<Agents>,
    queue: String,
    active: Arc<Mutex<HashSet<String>>>,
}

impl Lane {
    async fn run(self, shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            match self.next().await {
                Ok(Some(job)) => {
                    let delay = job.not_before - store::now_ms();
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay as u64).min(POLL * 5)).await;
                        continue;
                    }
                    let Some(agent) = self.agents.agent_of_queue(&self.queue) else {
                        queue::run_one(&self.store, &self.queue, &Unknown, &job).await;
                        continue;
                    };
                    let _slot = agent.slots.clone().acquire_owned().await;
                    agent.rate.wait_turn().await;
                    queue::run_one(&self.store, &self.queue, self.agents.as_ref(), &job).await;
                }
                Ok(None) => {
                    // Leave, then look once more: work enqueued in between would
                    // otherwise wait for the scheduler's next poll.
                    self.active.lock().expect("lanes lock").remove(&self.queue);
                    match self.next().await {
                        Ok(Some(_)) if self.active.lock().expect("lanes lock").insert(self.queue.clone()) => continue,
                        _ => return,
                    }
                }
                Err(error) => {
                    tracing::error!(queue = self.queue, %error, "cannot read the agent queue");
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        self.active.lock().expect("lanes lock").remove(&self.queue);
    }

    async fn next(&self) -> store::Result<Option<outbox::Job>> {
        let mut conn = self.store.conn().await?;
        outbox::head(&mut conn, &self.queue).await
    }
}

/// Turns of an agent that is no longer configured.
struct Unknown;

#[async_trait]
impl JobHandler for Unknown {
    async fn run(&self, job: &outbox::Job) -> JobOutcome {
        JobOutcome::Failed(format!("no configured agent for queue {}", job.queue))
    }
}

#[async_trait]
impl JobHandler for Agents {
    async fn run(&self, job: &outbox::Job) -> JobOutcome {
        let started = std::time::Instant::now();
        let outcome = self.run_turn(job).await;
        let result = match &outcome {
            JobOutcome::Done => "answered",
            JobOutcome::Failed(_) => "failed",
            JobOutcome::Retry { .. } => "retry",
        };
        let agent = crate::queue::parse_agent_queue(&job.queue).map_or("unknown", |(agent, _)| agent);
        crate::metrics::agent_turn(agent, result, started.elapsed().as_secs_f64());
        outcome
    }
}

/// At most `per_minute` turns started in any minute.
pub struct RateLimit {
    per_minute: Option<u32>,
    started: tokio::sync::Mutex<std::collections::VecDeque<tokio::time::Instant>>,
}

impl RateLimit {
    pub fn new(per_minute: Option<u32>) -> Self {
        Self { per_minute, started: Default::default() }
    }

    /// Waits until a turn may start, and counts it.
    pub async fn wait_turn(&self) {
        let Some(limit) = self.per_minute.filter(|n| *n > 0) else {
            return;
        };
        let window = Duration::from_secs(60);
        let mut started = self.started.lock().await;
        loop {
            let now = tokio::time::Instant::now();
            while started.front().is_some_and(|t| now.duration_since(*t) >= window) {
                started.pop_front();
            }
            if started.len() < limit as usize {
                started.push_back(now);
                return;
            }
            let free_at = *started.front().expect("the window is full") + window;
            tokio::time::sleep_until(free_at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_holds_turns_back_for_the_rest_of_the_minute() {
        let limit = RateLimit::new(Some(2));
        let start = tokio::time::Instant::now();
        limit.wait_turn().await;
        limit.wait_turn().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        limit.wait_turn().await;
        assert!(start.elapsed() >= Duration::from_secs(60));
        RateLimit::new(None).wait_turn().await;
    }
}
