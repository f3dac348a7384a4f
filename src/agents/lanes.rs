//! Running agent turns from their lanes: one lane per agent and conversation runs its
//! queue in order; lanes of one agent share the agent's concurrency slots.

use std::time::Duration;

use async_trait::async_trait;

use super::Agents;
use crate::hub::jobs::Job;
use crate::queue::{DeadReason, JobHandler, JobOutcome};
use crate::store::{self, outbox};

/// Turns run in the outbox's lanes (`queue::run_scheduler`, as the handler of `Queues::Agents`); each
/// waits for one of its agent's concurrency slots and its rate limit.
#[async_trait]
impl JobHandler for Agents {
    async fn run(&self, job: &outbox::Job, work: &Job) -> JobOutcome {
        let Job::Turn(turn) = work else {
            return JobOutcome::Failed(format!("a {} job cannot run in the agent queue {}", work.kind(), job.queue));
        };
        let Some(agent) = self.agent_of_queue(&job.queue) else {
            return JobOutcome::Failed(format!("no configured agent for queue {}", job.queue));
        };
        let _slot = agent.slots.clone().acquire_owned().await;
        agent.rate.wait_turn().await;
        let started = std::time::Instant::now();
        let outcome = self.run_turn(job, turn).await;
        let result = match &outcome {
            JobOutcome::Done | JobOutcome::Recorded => "answered",
            JobOutcome::Failed(_) | JobOutcome::Unconfirmed(_) => "failed",
            JobOutcome::Retry { .. } => "retry",
        };
        let agent = crate::queue::parse_agent_queue(&job.queue).map_or("unknown", |(agent, _)| agent);
        crate::metrics::agent_turn(agent, result, started.elapsed().as_secs_f64());
        outcome
    }

    async fn on_dead_letter(
        &self,
        conn: &mut store::AnyConnection,
        job: &outbox::Job,
        work: &Job,
        reason: DeadReason,
    ) -> store::Result<()> {
        let Job::Turn(turn) = work else { return Ok(()) };
        // A turn that failed for good has told the room itself.
        match reason {
            DeadReason::Permanent | DeadReason::Unconfirmed => Ok(()),
            DeadReason::Attempts | DeadReason::Age => super::turn::report_dead_turn(self, conn, job, turn).await,
        }
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
