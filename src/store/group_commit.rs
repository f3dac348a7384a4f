//! Group commit for the small writes that finish work: a job done, where a sent message
//! landed. Many lanes finish at once; each waits until its write is durable, as with a
//! commit of its own, but they share one transaction and one sync to disk.

use tokio::sync::{mpsc, oneshot};

use crate::protocol::Landing;

use super::{AnyConnection, Result, Store, StoreError, messages, outbox};

/// Writes in one group at most.
const MAX_GROUP: usize = 256;

/// A write that may share its commit with others.
#[derive(Debug, Clone)]
pub enum Write {
    /// An outbox job is done (see [`outbox::mark_done`]).
    JobDone { seq: i64 },
    /// A message landed on a surface (see [`messages::record_landing`]).
    Landed(Landing),
}

impl Write {
    async fn apply(&self, conn: &mut AnyConnection) -> Result<()> {
        match self {
            Self::JobDone { seq } => outbox::mark_done(conn, *seq).await,
            Self::Landed(landing) => messages::record_landing(conn, landing).await,
        }
    }
}

type Request = (Write, oneshot::Sender<Result<(), String>>);

/// Hands writes to the task that commits them.
pub struct GroupCommit {
    requests: mpsc::UnboundedSender<Request>,
}

impl GroupCommit {
    pub fn start(store: Store) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(store, receiver));
        Self { requests }
    }

    pub async fn write(&self, write: Write) -> Result<()> {
        let (done, answer) = oneshot::channel();
        let stopped = || StoreError::Grouped("the group commit task has stopped".into());
        self.requests.send((write, done)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(StoreError::Grouped)
    }
}

/// Takes what has queued up while the last group committed, and commits it as one.
async fn run(store: Store, mut receiver: mpsc::UnboundedReceiver<Request>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while receiver.recv_many(&mut group, MAX_GROUP).await > 0 {
        let writes: Vec<&Write> = group.iter().map(|(write, _)| write).collect();
        match commit(&store, &writes).await {
            Ok(()) => group.drain(..).for_each(|(_, done)| drop(done.send(Ok(())))),
            // One write the database refuses must not fail the others: each goes alone.
            Err(error) => {
                tracing::debug!(%error, writes = group.len(), "group commit failed; committing its writes one by one");
                for (write, done) in group.drain(..) {
                    let result = commit(&store, &[&write]).await.map_err(|e| e.to_string());
                    let _ = done.send(result);
                }
            }
        }
    }
}

async fn commit(store: &Store, writes: &[&Write]) -> Result<()> {
    let mut tx = store.begin_write().await?;
    for write in writes {
        write.apply(&mut tx).await?;
    }
    tx.commit().await
}
