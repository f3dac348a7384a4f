//! People typing on one surface, shown on the conversation's other surfaces. Typing is
//! ephemeral: it is never logged nor queued in the outbox, and a notice that fails is
//! only logged (see [`crate::agents::typing`], whose notices this reuses).
//!
//! Each person typing in a chat holds one set of notices, renewed by the surfaces'
//! own rhythm however often their surface repeats the start; it ends when they stop,
//! when their message arrives, or when their start lapses unrenewed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::agents::typing::{TypingGuard, Typist};
use crate::protocol::{ChannelAdapter, ChannelMessage};

/// Longest a start is shown without news. Matrix says when typing stops, but a stop lost
/// on the way (the service was down) must not leave someone typing for ever elsewhere.
pub const LONGEST: Duration = Duration::from_secs(120);

/// At most this many people are shown typing at once, all conversations together: a
/// flood of starts must not become a flood of notices.
const MAX_TYPISTS: usize = 500;

/// Who types where: the surface, the chat and the sender there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    channel: String,
    chat: String,
    sender: String,
}

impl Key {
    pub fn of(channel: &str, msg: &ChannelMessage) -> Self {
        Self { channel: channel.into(), chat: msg.channel_id.clone(), sender: msg.sender_id.clone() }
    }
}

struct Shown {
    /// Dropped, it clears the notices.
    _notices: TypingGuard,
    /// When the notices end unless the start is renewed.
    until: Instant,
}

/// The people shown typing now.
#[derive(Default)]
pub struct PeopleTyping {
    shown: Arc<Mutex<HashMap<Key, Shown>>>,
}

impl PeopleTyping {
    /// Keeps showing `key` for `lasts` more; false when it is not shown (then the hub
    /// looks up where to show it and calls [`PeopleTyping::start`]).
    pub fn renew(&self, key: &Key, lasts: Duration) -> bool {
        let mut shown = self.shown.lock().expect("people typing");
        match shown.get_mut(key) {
            Some(entry) => {
                entry.until = entry.until.max(Instant::now() + lasts);
                true
            }
            None => false,
        }
    }

    /// Shows `by` typing in `chats` for `lasts`, unless renewed.
    pub fn start(&self, key: Key, by: ChannelMessage, chats: Vec<(Arc<dyn ChannelAdapter>, String)>, lasts: Duration) {
        let until = Instant::now() + lasts;
        {
            let mut shown = self.shown.lock().expect("people typing");
            if shown.len() >= MAX_TYPISTS && !shown.contains_key(&key) {
                tracing::debug!(channel = key.channel, chat = key.chat, "too many people typing; not shown");
                return;
            }
            let notices = TypingGuard::start_for(Typist::Person(Arc::new(by)), chats);
            shown.insert(key.clone(), Shown { _notices: notices, until });
        }
        let shown = self.shown.clone();
        tokio::spawn(async move {
            let mut until = until;
            loop {
                tokio::time::sleep_until(until).await;
                let mut all = shown.lock().expect("people typing");
                match all.get(&key) {
                    // Stopped meanwhile (and perhaps started again: that one has its own
                    // watch).
                    None => return,
                    Some(entry) if entry.until > until => until = entry.until,
                    Some(_) => {
                        all.remove(&key);
                        return;
                    }
                }
            }
        });
    }

    /// `key` stopped typing: their notices end now.
    pub fn stop(&self, key: &Key) {
        self.shown.lock().expect("people typing").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::typing::tests::Recorder;
    use crate::protocol::{ChannelEvent, ContentType, SenderType};

    fn typing(sender: &str) -> ChannelMessage {
        let event = ChannelEvent::Typing { active: true, lasts_ms: Some(10_000) };
        ChannelMessage::new("42", sender, SenderType::User, "", ContentType::Text).with_event(event)
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_lapses_unless_renewed_and_renewals_send_nothing_more() {
        let surface = Arc::new(Recorder::default());
        let people = PeopleTyping::default();
        let dan = typing("dan");
        let key = Key::of("discord", &dan);
        let lasts = Duration::from_secs(10);
        assert!(!people.renew(&key, lasts), "nobody shown yet");
        people.start(key.clone(), dan, vec![(surface.clone() as Arc<dyn ChannelAdapter>, "!room".into())], lasts);
        // Discord repeats the start every few seconds while Dan types.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert!(people.renew(&key, lasts));
        }
        let shown = surface.people.lock().unwrap().clone();
        assert_eq!(shown.len(), 5, "renewed at the surface's pace, 0.5 s then every 4 s: {shown:?}");
        assert!(shown.iter().all(|(who, active)| who == "dan" && *active));
        // He stops typing: nothing renews it, and it lapses ten seconds after the last start.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!people.renew(&key, lasts), "lapsed");
        assert_eq!(surface.people.lock().unwrap().last(), Some(&("dan".to_string(), false)), "cleared once lapsed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_clears_at_once() {
        let surface = Arc::new(Recorder::default());
        let people = PeopleTyping::default();
        let erin = typing("erin");
        let key = Key::of("matrix", &erin);
        people.start(key.clone(), erin, vec![(surface.clone() as Arc<dyn ChannelAdapter>, "42".into())], LONGEST);
        tokio::time::sleep(Duration::from_secs(1)).await;
        people.stop(&key);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(*surface.people.lock().unwrap(), [("erin".to_string(), true), ("erin".to_string(), false)]);
    }
}
