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
        self.run_turn(job).await
    }
}
