//! Processes the durable transaction inbox: in arrival order within each room, rooms
//! independently.
//!
//! An event is marked processed only after it was handled, so a crash at any point
//! leads to it being handled again after restart; the hub ignores a message it has
//! already stored, so nothing is answered twice. An event that cannot be handled now
//! waits with backoff and holds back only the later events of its room; one that can
//! never be handled, or keeps failing past the retry limits, becomes a dead letter
//! (`mosaic-as jobs`) and its room goes on.
//!
//! Marking events handled is a deferred write (see [`Store::write_deferred`]): it reaches
//! the disk with the next commit of the service, usually the turn that answers the event
//! or the next push, instead of a sync of its own. The next pass waits for it first, so
//! that it does not read the events again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, watch};

use super::adapter::{EventError, MatrixAdapter, MemberChange};
use crate::queue::{DeadReason, RetryLimits, backoff};
use crate::store::{self, Deferred, Store, inbox};

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
    // When the next event that waits for a later try is due: asked of the store at start
    // and when it comes due, and otherwise learnt from the passes that defer events, so
    // that an idle inbox is not asked again after every pass.
    let mut retry_at = next_retry_at(&store).await;
    let mut marks = Deferred::default();
    loop {
        if *shutdown.borrow() {
            // Marks lost here would only have their events handled again at the next start.
            let _ = marks.durable().await;
            return;
        }
        let wait = match process_batch(&store, &adapter, &limits, std::mem::take(&mut marks)).await {
            Ok(pass) => {
                failures = 0;
                marks = pass.marks;
                // More may wait behind a full batch; the rooms it held back are left out
                // of the next read, so the next batch gets further.
                if pass.read == BATCH as usize {
                    continue;
                }
                retry_at = earliest(retry_at, pass.retry_at);
                if retry_at.is_some_and(|at| at <= store::now_ms()) {
                    retry_at = next_retry_at(&store).await;
                }
                // Events pushed meanwhile have woken this loop already (`wake` keeps one
                // wake-up while the loop is busy), so nothing else is waited for.
                retry_at.map_or(IDLE, until)
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

/// When the next event waiting for a later try is due (unix ms), if one waits; none
/// when the store cannot tell now (the loop looks again within [`IDLE`]).
async fn next_retry_at(store: &Store) -> Option<i64> {
    let mut conn = store.conn().await.ok()?;
    inbox::next_retry_at(&mut conn).await.ok()?
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The wait until `at` (unix ms), at least 10 ms and at most [`IDLE`].
fn until(at: i64) -> Duration {
    Duration::from_millis((at - store::now_ms()).clamp(10, IDLE.as_millis() as i64) as u64)
}

/// What one pass over the inbox did.
#[derive(Default)]
struct Pass {
    /// Events read.
    read: usize,
    /// When the earliest event this pass deferred is due (unix ms).
    retry_at: Option<i64>,
    /// The handled events marked so, durable with the service's next commit.
    marks: Deferred,
}

/// Handles up to one batch, its rooms side by side and each room's events in order,
/// once the marks of the pass before are durable and so seen by the read. An error means
/// the store could not be read or written.
async fn process_batch(
    store: &Store,
    adapter: &MatrixAdapter,
    limits: &RetryLimits,
    marks_before: Deferred,
) -> store::Result<Pass> {
    marks_before.durable().await?;
    let pending = {
        let mut conn = store.conn().await?;
        inbox::pending(&mut conn, BATCH).await?
    };
    let read = pending.len();
    let passes: Vec<RoomPass> = futures::stream::iter(by_room(pending))
        .map(|events| process_room(store, adapter, limits, events))
        .buffer_unordered(ROOMS_AT_ONCE)
        .collect()
        .await;
    // Every handled event is marked in one statement: a crash before it is durable only
    // hands them to the hub again, which knows them already.
    let handled: Vec<&inbox::InboxEvent> = passes.iter().flat_map(|pass| &pass.handled).collect();
    let mut marks = Deferred::default();
    if !handled.is_empty() {
        let seqs: Vec<i64> = handled.iter().map(|item| item.seq).collect();
        ((), marks) = store.write_deferred(async |conn| inbox::mark_processed(conn, &seqs).await).await?;
        for item in &handled {
            crate::metrics::event_processed(item.received_at);
        }
    }
    let mut batch = Pass { read, retry_at: None, marks };
    for pass in passes {
        batch.retry_at = earliest(batch.retry_at, pass.retry_at);
        if let Some(error) = pass.error {
            return Err(error);
        }
    }
    Ok(batch)
}

/// Rooms handled at once. Events of one room never run side by side.
const ROOMS_AT_ONCE: usize = 16;

/// The batch's events grouped by room, each group in arrival order.
fn by_room(events: Vec<inbox::InboxEvent>) -> Vec<Vec<inbox::InboxEvent>> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut rooms: Vec<Vec<inbox::InboxEvent>> = Vec::new();
    for event in events {
        let slot = *index.entry(event.room_id.clone()).or_insert_with(|| {
            rooms.push(Vec::new());
            rooms.len() - 1
        });
        rooms[slot].push(event);
    }
    rooms
}

/// What became of one room's events in a batch.
#[derive(Default)]
struct RoomPass {
    /// Handled, to be marked processed.
    handled: Vec<inbox::InboxEvent>,
    /// When the event that holds the room back is due again (unix ms).
    retry_at: Option<i64>,
    /// The store failed; the room's later events wait for the next pass.
    error: Option<store::StoreError>,
}

/// Handles one room's events in order until one has to wait for a later try: the room's
/// later events wait behind it. A run of events that only change memberships (most of
/// what a busy room pushes) is recorded in one write.
async fn process_room(
    store: &Store,
    adapter: &MatrixAdapter,
    limits: &RetryLimits,
    events: Vec<inbox::InboxEvent>,
) -> RoomPass {
    let mut pass = RoomPass::default();
    let mut run: Vec<(inbox::InboxEvent, MemberChange)> = Vec::new();
    for item in events {
        if let Some(change) = adapter.membership_record(&item.event) {
            run.push((item, change));
            continue;
        }
        if record_run(store, adapter, limits, std::mem::take(&mut run), &mut pass).await == Flow::Wait
            || process_one(store, adapter, limits, item, &mut pass).await == Flow::Wait
        {
            return pass;
        }
    }
    record_run(store, adapter, limits, run, &mut pass).await;
    pass
}

/// Whether a room's next event may be handled, or the room waits for a later pass.
#[derive(PartialEq, Eq)]
enum Flow {
    Next,
    Wait,
}

/// Records a run of membership changes in one write; if that fails, each event of the
/// run is handled on its own, so that a bad one fails alone.
async fn record_run(
    store: &Store,
    adapter: &MatrixAdapter,
    limits: &RetryLimits,
    run: Vec<(inbox::InboxEvent, MemberChange)>,
    pass: &mut RoomPass,
) -> Flow {
    if run.is_empty() {
        return Flow::Next;
    }
    let changes: Vec<MemberChange> = run.iter().map(|(_, change)| change.clone()).collect();
    if adapter.record_memberships(&changes).await.is_ok() {
        pass.handled.extend(run.into_iter().map(|(item, _)| item));
        return Flow::Next;
    }
    for (item, _) in run {
        if process_one(store, adapter, limits, item, pass).await == Flow::Wait {
            return Flow::Wait;
        }
    }
    Flow::Next
}

/// Handles one event, or records why it waits or is set aside.
async fn process_one(
    store: &Store,
    adapter: &MatrixAdapter,
    limits: &RetryLimits,
    item: inbox::InboxEvent,
    pass: &mut RoomPass,
) -> Flow {
    // The connection is taken after the event is handled: handling takes its own.
    let recorded = match adapter.process_event(&item.event).await {
        Ok(()) => {
            pass.handled.push(item);
            return Flow::Next;
        }
        Err(EventError::Permanent(error)) => give_up(store, &item, DeadReason::Permanent, &error).await,
        Err(EventError::Transient(error)) => match limits.exhausted(item.attempts, item.failing_since) {
            Some(reason) => give_up(store, &item, reason, &error).await,
            None => {
                let delay = limits.delay(item.attempts);
                tracing::warn!(seq = item.seq, room_id = item.room_id, %error, retry_in_ms = delay.as_millis() as u64, "event will be retried; its room waits");
                match retry_later(store, &item, delay, &error).await {
                    Ok(()) => pass.retry_at = Some(store::now_ms() + delay.as_millis() as i64),
                    Err(error) => pass.error = Some(error),
                }
                return Flow::Wait;
            }
        },
    };
    match recorded {
        Ok(()) => {
            crate::metrics::event_processed(item.received_at);
            Flow::Next
        }
        Err(error) => {
            pass.error = Some(error);
            Flow::Wait
        }
    }
}

async fn retry_later(store: &Store, item: &inbox::InboxEvent, delay: Duration, error: &str) -> store::Result<()> {
    store.write(async |conn| inbox::retry_later(conn, item.seq, delay.as_millis() as i64, error).await).await
}

async fn give_up(store: &Store, item: &inbox::InboxEvent, reason: DeadReason, error: &str) -> store::Result<()> {
    tracing::warn!(txn_id = item.txn_id, seq = item.seq, room_id = item.room_id, reason = reason.as_str(), %error, "event set aside: dead letter");
    store.write(async |conn| inbox::mark_dead(conn, item.seq, reason.as_str(), error).await).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::store::conversations;

    fn joined(room_id: &str, user_id: &str) -> String {
        json!({
            "type": "m.room.member", "room_id": room_id, "sender": user_id, "state_key": user_id,
            "event_id": format!("$join-{user_id}"), "origin_server_ts": 1, "content": {"membership": "join"},
        })
        .to_string()
    }

    async fn members(store: &Store, room_id: &str) -> Vec<String> {
        let mut conn = store.conn().await.unwrap();
        conversations::present_members(&mut conn, room_id).await.unwrap().into_iter().map(|(user, _)| user).collect()
    }

    async fn open_store(dir: &tempfile::TempDir) -> (Store, MatrixAdapter) {
        let store = Store::open(&format!("sqlite://{}", dir.path().join("store.db").display())).await.unwrap();
        let adapter =
            MatrixAdapter::new(Arc::new(Config::parse(crate::config::tests::MINIMAL).unwrap()), store.clone());
        (store, adapter)
    }

    #[tokio::test]
    async fn a_pass_does_not_read_again_what_the_pass_before_handled() {
        let dir = tempfile::tempdir().unwrap();
        let (store, adapter) = open_store(&dir).await;
        let (first, second) = (joined("!a:x", "@a1:x"), joined("!b:x", "@b1:x"));
        let pushed =
            [inbox::Pushed { room_id: "!a:x", event: &first }, inbox::Pushed { room_id: "!b:x", event: &second }];
        assert!(inbox::record_transaction(&store, "txn-1", &pushed).await.unwrap());

        let pass = process_batch(&store, &adapter, &RetryLimits::default(), Deferred::default()).await.unwrap();
        assert_eq!(pass.read, 2);
        let next = process_batch(&store, &adapter, &RetryLimits::default(), pass.marks).await.unwrap();
        assert_eq!(next.read, 0, "the handled events are marked before the next pass reads");
    }

    #[tokio::test]
    async fn a_refused_membership_holds_back_only_itself_and_what_follows_it_in_its_room() {
        let dir = tempfile::tempdir().unwrap();
        let (store, adapter) = open_store(&dir).await;
        // The database refuses one membership, as PostgreSQL refuses text with a NUL byte.
        store
            .write(async |conn| {
                let refuse = "CREATE TRIGGER refuse BEFORE INSERT ON room_members WHEN NEW.user_id = '@bad:x'
                              BEGIN SELECT RAISE(ABORT, 'refused'); END";
                Ok(sqlx::query(refuse).execute(conn).await.map(drop)?)
            })
            .await
            .unwrap();
        let events = [
            ("!a:x", joined("!a:x", "@a1:x")),
            ("!b:x", joined("!b:x", "@b1:x")),
            ("!a:x", joined("!a:x", "@a2:x")),
            ("!a:x", joined("!a:x", "@bad:x")),
            ("!b:x", joined("!b:x", "@b2:x")),
            ("!a:x", joined("!a:x", "@a3:x")),
        ];
        let pushed: Vec<inbox::Pushed> =
            events.iter().map(|(room_id, event)| inbox::Pushed { room_id, event }).collect();
        assert!(inbox::record_transaction(&store, "txn-1", &pushed).await.unwrap());

        let pass = process_batch(&store, &adapter, &RetryLimits::default(), Deferred::default()).await.unwrap();
        pass.marks.durable().await.unwrap();

        assert_eq!(pass.read, 6);
        assert!(pass.retry_at.is_some(), "the loop learns when the refused event is due again");
        assert_eq!(members(&store, "!a:x").await, ["@a1:x", "@a2:x"], "the run before the refused one is kept");
        assert_eq!(members(&store, "!b:x").await, ["@b1:x", "@b2:x"], "another room goes on");
        let mut conn = store.conn().await.unwrap();
        assert_eq!(inbox::pending_count(&mut conn).await.unwrap(), 2, "the refused event and the one after it wait");
        assert!(inbox::pending(&mut conn, 10).await.unwrap().is_empty(), "their room waits for a later try");
    }
}
