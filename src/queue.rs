//! Lanes that drain the durable outbox: one lane per queue runs its jobs in order, and
//! queues run side by side, so a chat whose surface keeps failing holds back only
//! itself.
//!
//! A job is marked done only after its handler succeeded, so a crash mid-job runs it
//! again after restart; handlers make that harmless (they look for an earlier copy
//! before sending again, see [`crate::store::outbox::Job::may_have_run`]). Failing work
//! is retried with backoff and jitter up to [`RetryLimits`], then set aside as a dead
//! letter (`mosaic-as jobs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::config::DeliveryConfig;
use crate::hub::jobs::Job;
use crate::store::group_commit::Write;
use crate::store::{self, AnyConnection, Store, outbox};

/// The queue of sends (and bridge set-up) to one chat of a surface: order matters
/// within a chat, not across chats.
pub fn chat_queue(channel: &str, chat_id: &str) -> String {
    format!("{CHAT_QUEUE_PREFIX}{channel}:{chat_id}")
}

pub const CHAT_QUEUE_PREFIX: &str = "chat:";

/// The queue of Matrix room and Space management (creating rooms, invites, state).
pub const ROOMS_QUEUE: &str = "matrix";

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

/// The two kinds of queue, each run by its own [`JobHandler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queues {
    /// Agent turns (`agent:…`).
    Agents,
    /// Everything else: sends to chats, room management.
    Surfaces,
}

impl Queues {
    /// The kind of the queue named `queue`.
    pub fn of(queue: &str) -> Self {
        match queue.starts_with(AGENT_QUEUE_PREFIX) {
            true => Self::Agents,
            false => Self::Surfaces,
        }
    }
}

/// The handler of each kind of queue. A kind without one is not run by this process.
#[derive(Clone, Default)]
pub struct Handlers {
    pub agents: Option<Arc<dyn JobHandler>>,
    pub surfaces: Option<Arc<dyn JobHandler>>,
}

impl Handlers {
    fn of(&self, queue: &str) -> Option<&Arc<dyn JobHandler>> {
        match Queues::of(queue) {
            Queues::Agents => self.agents.as_ref(),
            Queues::Surfaces => self.surfaces.as_ref(),
        }
    }
}

/// What became of one try of a job.
#[derive(Debug)]
pub enum JobOutcome {
    Done,
    /// Done, and the handler already marked the job done in the transaction that wrote
    /// its results: nothing is left to record.
    Recorded,
    /// Will never succeed: set aside as a dead letter at once.
    Failed(String),
    /// May have been carried out, and trying again could do it twice: set aside as a
    /// dead letter at once, for an admin who can check before retrying it.
    Unconfirmed(String),
    /// Try again after the given delay (or the lane's backoff).
    Retry {
        error: String,
        after: Option<Duration>,
    },
}

/// Why work was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadReason {
    /// It can never succeed (refused, malformed, bad data).
    Permanent,
    /// It failed [`RetryLimits::max_attempts`] times.
    Attempts,
    /// It kept failing for longer than [`RetryLimits::max_age`].
    Age,
    /// Its last try may have been carried out; it is not tried again on its own.
    Unconfirmed,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Attempts => "attempts",
            Self::Age => "age",
            Self::Unconfirmed => "unconfirmed",
        }
    }
}

/// How long failing work is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryLimits {
    pub max_attempts: i64,
    pub max_age: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryLimits {
    fn default() -> Self {
        Self::from(&DeliveryConfig::default())
    }
}

impl From<&DeliveryConfig> for RetryLimits {
    fn from(config: &DeliveryConfig) -> Self {
        Self {
            max_attempts: config.max_attempts,
            max_age: Duration::from_secs(config.max_age_secs),
            max_backoff: Duration::from_secs(config.max_backoff_secs),
        }
    }
}

impl RetryLimits {
    /// Whether work that failed `attempts` times before, failing since `failing_since`
    /// (unix ms, if it failed before), is given up after failing once more now.
    pub fn exhausted(&self, attempts: i64, failing_since: Option<i64>) -> Option<DeadReason> {
        if attempts + 1 >= self.max_attempts {
            return Some(DeadReason::Attempts);
        }
        let failing_for = failing_since.map_or(0, |since| store::now_ms() - since);
        (failing_for > self.max_age.as_millis() as i64).then_some(DeadReason::Age)
    }

    /// The wait before the next try: [`backoff`] capped at `max_backoff`, give or take a
    /// fifth, so that many failing queues do not all come back at once.
    pub fn delay(&self, attempt: i64) -> Duration {
        let base = backoff_capped(attempt, self.max_backoff);
        let spread = base.as_millis() as u64 / 5;
        let offset = if spread == 0 { 0 } else { getrandom::u64().unwrap_or(0) % (2 * spread) };
        Duration::from_millis(base.as_millis() as u64 - spread + offset)
    }
}

/// Runs the jobs of some queues. A row that does not decode into a [`Job`] never
/// reaches a handler: it is a dead letter at once.
#[async_trait]
pub trait JobHandler: Send + Sync {
    /// One try of `job`, read from the outbox row `row`.
    async fn run(&self, row: &outbox::Job, job: &Job) -> JobOutcome;

    /// The job was given up: tell the people concerned, in the same database
    /// transaction that sets it aside. By default nobody is told.
    async fn on_dead_letter(
        &self,
        conn: &mut AnyConnection,
        row: &outbox::Job,
        job: &Job,
        reason: DeadReason,
    ) -> store::Result<()> {
        let _ = (conn, row, job, reason);
        Ok(())
    }
}

/// Wakes the scheduler when work is enqueued; a wake-up sent while it is busy is kept
/// until it next waits. Each wake-up costs it one look at the outbox.
#[derive(Default)]
pub struct Wakers {
    scheduler: Notify,
}

impl Wakers {
    pub fn wake(&self) {
        self.scheduler.notify_one();
    }
}

/// Enqueues a job, stored as its kind and JSON payload (see [`Job`]).
pub async fn enqueue(
    conn: &mut store::AnyConnection,
    queue: &str,
    dedupe_key: &str,
    job: impl Into<Job>,
) -> store::Result<bool> {
    let job = job.into();
    let payload = job.payload().map_err(|e| store::StoreError::Corrupt(e.to_string()))?;
    outbox::enqueue(conn, queue, dedupe_key, job.kind(), &payload).await
}

/// Backoff for the n-th retry: 0.5 s doubling up to 30 s.
pub fn backoff(attempt: i64) -> Duration {
    backoff_capped(attempt, Duration::from_secs(30))
}

fn backoff_capped(attempt: i64, cap: Duration) -> Duration {
    let exponent = attempt.clamp(0, 20) as u32;
    Duration::from_millis(500u64.saturating_mul(2u64.pow(exponent))).min(cap)
}

/// How often a scheduler looks for work it was not woken for.
const POLL: Duration = Duration::from_secs(1);

/// Starts a lane for every queue with work that one of `handlers` runs, until
/// `shutdown`. One scheduler serves both kinds of queue, so a wake-up costs one look.
pub async fn run_scheduler(
    store: Store,
    handlers: Handlers,
    limits: RetryLimits,
    wakers: Arc<Wakers>,
    mut shutdown: watch::Receiver<bool>,
) {
    let lanes: Lanes = Arc::default();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let exits_before = lanes.lock().expect("lanes lock").exits;
        match heads(&store).await {
            Ok(heads) => {
                for head in heads {
                    let queue = head.queue.clone();
                    let Some(handler) = handlers.of(&queue) else { continue };
                    let mut running = lanes.lock().expect("lanes lock");
                    if let Some(look_again) = running.queues.get_mut(&queue) {
                        // Its lane may have looked before this work was committed.
                        *look_again = true;
                        continue;
                    }
                    running.queues.insert(queue.clone(), false);
                    // A head read while a lane of its queue was still running may have
                    // been run and finished since: the new lane would run it again. Only
                    // when no lane left during the read is the head known to be waiting.
                    let first = (running.exits == exits_before).then_some(head);
                    let lane =
                        Lane { store: store.clone(), queue, handler: handler.clone(), limits, lanes: lanes.clone() };
                    tokio::spawn(lane.run(first, shutdown.clone()));
                }
            }
            Err(error) => tracing::error!(%error, "cannot read the outbox"),
        }
        tokio::select! {
            _ = wakers.scheduler.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
}

type Lanes = Arc<Mutex<Running>>;

#[derive(Default)]
struct Running {
    /// The queues with a running lane, each with whether the scheduler has seen work in
    /// it since its lane last looked.
    queues: HashMap<String, bool>,
    /// How many lanes have left so far.
    exits: u64,
}

impl Running {
    fn leave(&mut self, queue: &str) {
        self.queues.remove(queue);
        self.exits += 1;
    }
}

/// The head job of every queue with work: a lane starts with its head in hand.
async fn heads(store: &Store) -> store::Result<Vec<outbox::Job>> {
    let mut conn = store.conn().await?;
    outbox::heads(&mut conn).await
}

/// Runs one queue's jobs in order until it is empty.
struct Lane {
    store: Store,
    queue: String,
    handler: Arc<dyn JobHandler>,
    limits: RetryLimits,
    lanes: Lanes,
}

impl Lane {
    /// Runs `first`, the head the scheduler read, then the queue's next jobs.
    async fn run(self, mut first: Option<outbox::Job>, shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let next = match first.take() {
                Some(head) => Ok(Some(head)),
                None => self.next().await,
            };
            match next {
                Ok(Some(job)) => {
                    let delay = job.not_before - store::now_ms();
                    if delay > 0 {
                        // The queue waits for its head: jobs behind it keep their order.
                        tokio::time::sleep(Duration::from_millis(delay as u64).min(POLL * 5)).await;
                        continue;
                    }
                    run_one(&self.store, &self.queue, self.handler.as_ref(), &job, &self.limits).await;
                }
                Ok(None) => {
                    // Work committed after the look above was seen by the scheduler,
                    // which either finds this lane still here and asks it to look again,
                    // or finds it gone and starts another.
                    let mut running = self.lanes.lock().expect("lanes lock");
                    if running.queues.get(&self.queue) == Some(&true) {
                        continue;
                    }
                    running.leave(&self.queue);
                    return;
                }
                Err(error) => {
                    tracing::error!(queue = self.queue, %error, "cannot read the queue");
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        self.lanes.lock().expect("lanes lock").leave(&self.queue);
    }

    /// The queue's head job; what the scheduler saw before this look is seen by it.
    async fn next(&self) -> store::Result<Option<outbox::Job>> {
        if let Some(look_again) = self.lanes.lock().expect("lanes lock").queues.get_mut(&self.queue) {
            *look_again = false;
        }
        let mut conn = self.store.conn().await?;
        outbox::head(&mut conn, &self.queue).await
    }
}

/// Runs one try of `job` and records what became of it.
pub async fn run_one(store: &Store, queue: &str, handler: &dyn JobHandler, job: &outbox::Job, limits: &RetryLimits) {
    let decoded = Job::decode(&job.kind, &job.payload);
    let outcome = match &decoded {
        Ok(work) => handler.run(job, work).await,
        Err(error) => JobOutcome::Failed(error.to_string()),
    };
    let told = decoded.as_ref().ok().map(|work| (handler, work));
    let result = async {
        match &outcome {
            JobOutcome::Done => store.commit_grouped(Write::JobDone { seq: job.seq }).await,
            JobOutcome::Recorded => Ok(()),
            JobOutcome::Failed(error) => give_up(store, told, job, DeadReason::Permanent, error).await,
            JobOutcome::Unconfirmed(error) => give_up(store, told, job, DeadReason::Unconfirmed, error).await,
            JobOutcome::Retry { error, after } => match limits.exhausted(job.attempts, job.failing_since) {
                Some(reason) => give_up(store, told, job, reason, error).await,
                None => {
                    crate::metrics::job_retried(queue);
                    let delay = after.unwrap_or_else(|| limits.delay(job.attempts));
                    tracing::warn!(queue, job = job.dedupe_key, kind = job.kind, %error, retry_in_ms = delay.as_millis() as u64, "job will be retried");
                    store.write(async |conn| outbox::retry_later(conn, job.seq, delay.as_millis() as i64, error).await).await
                }
            },
        }
    }
    .await;
    if let Err(error) = result {
        // The job stays pending and runs again; its handler looks before it resends.
        tracing::error!(queue, job = job.dedupe_key, %error, "cannot record the job's outcome");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sets `job` aside as a dead letter and lets its handler, given the decoded job, tell
/// the people concerned (a job that does not decode concerns nobody it could name).
async fn give_up(
    store: &Store,
    told: Option<(&dyn JobHandler, &Job)>,
    job: &outbox::Job,
    reason: DeadReason,
    error: &str,
) -> store::Result<()> {
    tracing::error!(queue = job.queue, job = job.dedupe_key, kind = job.kind, reason = reason.as_str(), %error, "job given up: dead letter");
    let mut tx = store.begin_write().await?;
    outbox::mark_dead(&mut tx, job.seq, reason.as_str(), error).await?;
    if let Some((handler, work)) = told {
        handler.on_dead_letter(&mut tx, job, work, reason).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the jobs it is given.
    #[derive(Default)]
    struct Counting {
        runs: std::sync::atomic::AtomicUsize,
        told: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl JobHandler for Counting {
        async fn run(&self, _row: &outbox::Job, _job: &Job) -> JobOutcome {
            self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            JobOutcome::Done
        }

        async fn on_dead_letter(
            &self,
            _conn: &mut AnyConnection,
            _row: &outbox::Job,
            _job: &Job,
            _reason: DeadReason,
        ) -> store::Result<()> {
            self.told.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_job_of_an_unknown_kind_is_a_dead_letter_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("store.db").display())).await.unwrap();
        let mut tx = store.begin_write().await.unwrap();
        outbox::enqueue(&mut tx, ROOMS_QUEUE, "odd:1", "matrix.frobnicate", "{}").await.unwrap();
        outbox::enqueue(&mut tx, ROOMS_QUEUE, "odd:2", "matrix.kick", r#"{"room_id":"!r:x"}"#).await.unwrap();
        tx.commit().await.unwrap();
        let mut conn = store.conn().await.unwrap();
        let handler = Counting::default();
        for _ in 0..2 {
            let row = outbox::head(&mut conn, ROOMS_QUEUE).await.unwrap().expect("a job");
            run_one(&store, ROOMS_QUEUE, &handler, &row, &RetryLimits::default()).await;
        }
        assert!(outbox::head(&mut conn, ROOMS_QUEUE).await.unwrap().is_none(), "both were set aside");
        assert_eq!(handler.runs.load(std::sync::atomic::Ordering::SeqCst), 0, "neither ran");
        assert_eq!(handler.told.load(std::sync::atomic::Ordering::SeqCst), 0);
        let dead = store::dead_letters::list(&mut conn).await.unwrap();
        let errors: Vec<_> = dead.iter().map(|d| (d.kind.as_str(), d.reason.as_str(), d.error.clone())).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.contains(&(
            "matrix.frobnicate",
            "permanent",
            Some(r#"unknown job kind "matrix.frobnicate""#.to_string())
        )));
        assert!(
            errors.iter().any(|(kind, _, error)| *kind == "matrix.kick"
                && error.as_deref().is_some_and(|e| e.starts_with("bad matrix.kick payload"))),
            "{errors:?}"
        );
    }

    #[test]
    fn agent_queues_name_agent_and_conversation() {
        let queue = agent_queue("echo", "5f0c");
        assert_eq!(parse_agent_queue(&queue), Some(("echo", "5f0c")));
        assert_eq!(parse_agent_queue("matrix"), None);
        assert_eq!(parse_agent_queue(&chat_queue("telegram", "-100")), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert!(backoff(3) > backoff(2));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }

    #[test]
    fn retries_end_by_attempts_or_by_age() {
        let limits =
            RetryLimits { max_attempts: 3, max_age: Duration::from_secs(60), max_backoff: Duration::from_secs(10) };
        assert_eq!(limits.exhausted(0, None), None);
        assert_eq!(limits.exhausted(1, Some(store::now_ms())), None);
        assert_eq!(limits.exhausted(2, Some(store::now_ms())), Some(DeadReason::Attempts));
        assert_eq!(limits.exhausted(0, Some(store::now_ms() - 61_000)), Some(DeadReason::Age));
    }

    #[test]
    fn retry_delays_spread_around_the_capped_backoff() {
        let limits =
            RetryLimits { max_attempts: 9, max_age: Duration::from_secs(60), max_backoff: Duration::from_secs(8) };
        for _ in 0..50 {
            let first = limits.delay(0);
            assert!(first >= Duration::from_millis(400) && first <= Duration::from_millis(600), "{first:?}");
            let late = limits.delay(30);
            assert!(late >= Duration::from_millis(6_400) && late <= Duration::from_millis(9_600), "{late:?}");
        }
    }
}
