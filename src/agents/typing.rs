//! Signs of life while an agent works on a turn: a typing notice in every chat where it
//! will answer, renewed before it lapses, until its first words show there or the turn
//! ends; and a read receipt on the message it took up. Both are ephemeral: they go
//! straight to the surfaces, never through the outbox, and a failure is only logged.
//!
//! People typing on one surface are shown on the others with the same notices
//! ([`Typist::Person`], started by the hub).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::protocol::{ChannelAdapter, ChannelMessage, ChannelSendError};

/// Longest wait for one notice: a surface that hangs must not pile up notices.
const TRY_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer within this time shows no typing at all: a flash of typing before an
/// instant answer tells nobody anything, and costs two requests.
const TYPING_GRACE: Duration = Duration::from_millis(500);

/// Read receipts are cumulative: after one is sent in a chat, those that follow within
/// this time are folded into one for the latest message, sent when it has passed.
const RECEIPT_WINDOW: Duration = Duration::from_secs(1);

/// Who is shown typing.
#[derive(Debug, Clone)]
pub enum Typist {
    /// An agent, by its id.
    Agent(String),
    /// A person of another surface, by their typing event (see
    /// [`ChannelAdapter::set_person_typing`]).
    Person(Arc<ChannelMessage>),
}

impl Typist {
    /// For the log: the agent's id, or the person's surface and id there.
    fn describe(&self) -> String {
        match self {
            Self::Agent(id) => id.clone(),
            Self::Person(by) => format!("{}:{}", by.origin_channel(), by.sender_id),
        }
    }
}

/// The typing notices of one turn (or of one person). Dropping it stops them all: where
/// the surface can clear a notice (Matrix), it is cleared at once rather than left to
/// lapse.
pub struct TypingGuard {
    /// Per chat, the sender whose drop ends that chat's notices.
    chats: Vec<(String, watch::Sender<()>)>,
}

impl TypingGuard {
    /// Starts showing `agent_id` typing in each chat whose surface can show it.
    pub fn start(agent_id: &str, chats: impl IntoIterator<Item = (Arc<dyn ChannelAdapter>, String)>) -> Self {
        Self::start_for(Typist::Agent(agent_id.to_string()), chats)
    }

    /// Starts showing `typist` typing in each chat whose surface can show it.
    pub fn start_for(typist: Typist, chats: impl IntoIterator<Item = (Arc<dyn ChannelAdapter>, String)>) -> Self {
        let mut running = Vec::new();
        for (adapter, channel_id) in chats {
            let Some(every) = adapter.typing_renewal() else { continue };
            let (stop, stopped) = watch::channel(());
            tokio::spawn(keep_typing(adapter, channel_id.clone(), typist.clone(), every, stopped));
            running.push((channel_id, stop));
        }
        Self { chats: running }
    }

    /// A guard that shows nothing.
    pub fn none() -> Self {
        Self { chats: Vec::new() }
    }

    /// Stops the notices in `channel_id`: the answer itself shows there now.
    pub fn stop_in(&mut self, channel_id: &str) {
        self.chats.retain(|(chat, _)| chat != channel_id);
    }
}

async fn keep_typing(
    adapter: Arc<dyn ChannelAdapter>,
    channel_id: String,
    typist: Typist,
    every: Duration,
    mut stopped: watch::Receiver<()>,
) {
    tokio::select! {
        _ = tokio::time::sleep(TYPING_GRACE) => {}
        _ = stopped.changed() => return,
    }
    loop {
        show(adapter.as_ref(), &channel_id, &typist, true).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            // Nothing is ever sent on the channel: this fires when the guard lets go.
            _ = stopped.changed() => break,
        }
    }
    show(adapter.as_ref(), &channel_id, &typist, false).await;
}

/// One try of an ephemeral request, bounded by [`TRY_TIMEOUT`].
async fn try_once(request: impl Future<Output = Result<(), ChannelSendError>>) -> Result<(), String> {
    match tokio::time::timeout(TRY_TIMEOUT, request).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", TRY_TIMEOUT.as_secs())),
    }
}

async fn show(adapter: &dyn ChannelAdapter, channel_id: &str, typist: &Typist, active: bool) {
    let result = match typist {
        Typist::Agent(agent_id) => try_once(adapter.set_typing(channel_id, agent_id, active)).await,
        Typist::Person(by) => try_once(adapter.set_person_typing(channel_id, by, active)).await,
    };
    if let Err(error) = result {
        let typist = typist.describe();
        tracing::debug!(channel = adapter.name(), channel_id, typist, active, %error, "typing notice not shown");
    }
}

/// For surfaces that show only their bot typing: one notice per chat serves everybody
/// typing there (agents and people), so a notice within `window` of the last one sent
/// to the same chat is left out rather than sent again.
pub struct ChatThrottle {
    window: Duration,
    /// Per chat, when its last notice was sent.
    sent: Mutex<HashMap<String, Instant>>,
}

impl ChatThrottle {
    pub fn new(window: Duration) -> Self {
        Self { window, sent: Mutex::default() }
    }

    /// Whether a notice for `chat` should go out now; if so, it counts as sent.
    pub fn due(&self, chat: &str) -> bool {
        let now = Instant::now();
        let mut sent = self.sent.lock().expect("typing throttle");
        if sent.get(chat).is_some_and(|last| now.duration_since(*last) < self.window) {
            return false;
        }
        // Chats nobody typed in lately are forgotten, so the map stays as small as the
        // set of chats with typing going on.
        sent.retain(|_, last| now.duration_since(*last) < self.window);
        sent.insert(chat.to_string(), now);
        true
    }
}

/// Where the message a turn takes up shows natively.
pub struct Seen {
    pub adapter: Arc<dyn ChannelAdapter>,
    pub channel_id: String,
    /// The message's id there.
    pub native_id: String,
}

/// Marks the message the agent takes up as read wherever it shows natively. Sent in the
/// background; within [`RECEIPT_WINDOW`] of another receipt in the same chat, only the
/// latest is sent.
pub fn mark_read(agent_id: &str, seen: Vec<Seen>) {
    for Seen { adapter, channel_id, native_id } in seen {
        let key = (adapter.name(), channel_id.clone(), agent_id.to_string());
        {
            let mut windows = RECEIPT_WINDOWS.lock().expect("receipt windows");
            if let Some(latest) = windows.get_mut(&key) {
                *latest = Some(native_id);
                continue;
            }
            windows.insert(key.clone(), None);
        }
        tokio::spawn(async move {
            let mut next = Some(native_id);
            while let Some(native_id) = next {
                send_receipt(adapter.as_ref(), &channel_id, &native_id, &key.2).await;
                tokio::time::sleep(RECEIPT_WINDOW).await;
                let mut windows = RECEIPT_WINDOWS.lock().expect("receipt windows");
                next = windows.get_mut(&key).and_then(Option::take);
                if next.is_none() {
                    windows.remove(&key);
                }
            }
        });
    }
}

/// Per surface, chat and agent whose receipt was sent within [`RECEIPT_WINDOW`]: the
/// latest message taken up since, if any.
type ReceiptWindows = HashMap<(&'static str, String, String), Option<String>>;

static RECEIPT_WINDOWS: LazyLock<Mutex<ReceiptWindows>> = LazyLock::new(Mutex::default);

async fn send_receipt(adapter: &dyn ChannelAdapter, channel_id: &str, native_id: &str, agent_id: &str) {
    if let Err(error) = try_once(adapter.mark_read(channel_id, native_id, agent_id)).await {
        tracing::debug!(channel = adapter.name(), channel_id, native_id, agent = agent_id, %error, "read receipt not sent");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::protocol::{AdapterHealth, ChannelConnectError, ChannelMessage, ChannelSendError, InboundHandler};

    /// A surface that records typing notices: `(chat, active)`; renewed every 4 s.
    #[derive(Default)]
    pub(crate) struct Recorder {
        notices: Mutex<Vec<(String, bool)>>,
        /// People's typing notices: `(sender, active)`.
        pub(crate) people: Mutex<Vec<(String, bool)>>,
        /// Read receipts: `(chat, message)`.
        receipts: Mutex<Vec<(String, String)>>,
    }

    impl Recorder {
        fn notices(&self, chat: &str) -> Vec<bool> {
            self.notices.lock().unwrap().iter().filter(|(c, _)| c == chat).map(|(_, a)| *a).collect()
        }
    }

    #[async_trait]
    impl ChannelAdapter for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        async fn connect(&self) -> Result<(), ChannelConnectError> {
            Ok(())
        }
        async fn disconnect(&self) {}
        async fn health(&self) -> AdapterHealth {
            AdapterHealth::Connected
        }
        fn on_message(&self, _: Arc<dyn InboundHandler>) {}
        async fn send_message(&self, _: &str, _: &ChannelMessage) -> Result<(), ChannelSendError> {
            Ok(())
        }
        async fn map_identity(&self, _: &str) -> Option<String> {
            None
        }
        fn typing_renewal(&self) -> Option<Duration> {
            Some(Duration::from_secs(4))
        }
        async fn set_typing(&self, channel_id: &str, agent_id: &str, active: bool) -> Result<(), ChannelSendError> {
            assert_eq!(agent_id, "helper");
            self.notices.lock().unwrap().push((channel_id.to_string(), active));
            Ok(())
        }
        async fn set_person_typing(&self, _: &str, by: &ChannelMessage, active: bool) -> Result<(), ChannelSendError> {
            self.people.lock().unwrap().push((by.sender_id.clone(), active));
            Ok(())
        }
        async fn mark_read(&self, channel_id: &str, native_id: &str, _: &str) -> Result<(), ChannelSendError> {
            self.receipts.lock().unwrap().push((channel_id.to_string(), native_id.to_string()));
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_within_the_grace_shows_no_typing() {
        let surface = Arc::new(Recorder::default());
        let adapter: Arc<dyn ChannelAdapter> = surface.clone();
        let guard = TypingGuard::start("helper", [(adapter.clone(), "a".to_string())]);
        tokio::time::sleep(TYPING_GRACE / 2).await;
        drop(guard);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(surface.notices("a").is_empty(), "neither shown nor cleared: {:?}", surface.notices("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn receipts_in_quick_succession_fold_into_one_for_the_latest() {
        let surface = Arc::new(Recorder::default());
        let adapter: Arc<dyn ChannelAdapter> = surface.clone();
        let seen =
            |chat: &str, id: &str| Seen { adapter: adapter.clone(), channel_id: chat.into(), native_id: id.into() };
        for id in ["$1", "$2", "$3"] {
            mark_read("helper", vec![seen("folded", id)]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        mark_read("helper", vec![seen("elsewhere", "$9")]);
        tokio::time::sleep(RECEIPT_WINDOW * 3).await;
        // A message taken up long after the last receipt is marked at once.
        mark_read("helper", vec![seen("folded", "$4")]);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let receipts = |chat: &str| -> Vec<String> {
            let all = surface.receipts.lock().unwrap();
            all.iter().filter(|(c, _)| c == chat).map(|(_, id)| id.clone()).collect()
        };
        assert_eq!(receipts("folded"), ["$1", "$3", "$4"], "the first at once, the latest after the window, $2 never");
        assert_eq!(receipts("elsewhere"), ["$9"], "another chat has its own window");
    }

    #[tokio::test(start_paused = true)]
    async fn one_notice_per_chat_serves_everybody_typing_there() {
        let throttle = ChatThrottle::new(Duration::from_secs(4));
        assert!(throttle.due("a"), "the first notice goes out");
        assert!(!throttle.due("a"), "a second typist right after it does not send another");
        assert!(throttle.due("b"), "another chat has its own");
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(throttle.due("a"), "once the window has passed");
        assert_eq!(throttle.sent.lock().unwrap().len(), 1, "chats quiet for a window are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn typing_is_renewed_until_the_guard_is_dropped_then_cleared_once() {
        let surface = Arc::new(Recorder::default());
        let adapter: Arc<dyn ChannelAdapter> = surface.clone();
        let guard = TypingGuard::start("helper", [(adapter.clone(), "a".to_string())]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(surface.notices("a"), [true, true, true], "shown at 0.5, 4.5 and 8.5 s");

        drop(guard);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(surface.notices("a"), [true, true, true, false], "cleared once, then never renewed");
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_words_in_one_chat_stop_typing_there_only() {
        let surface = Arc::new(Recorder::default());
        let adapter: Arc<dyn ChannelAdapter> = surface.clone();
        let mut guard = TypingGuard::start("helper", [(adapter.clone(), "a".into()), (adapter.clone(), "b".into())]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        guard.stop_in("a");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(surface.notices("a"), [true, false]);
        assert_eq!(surface.notices("b"), [true, true, true], "still renewed at 4 and 8 s");
        drop(guard);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(surface.notices("b"), [true, true, true, false]);
    }
}
