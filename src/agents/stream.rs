//! Delivering an answer while it is written: the first text becomes a message, later
//! text arrives as edits, at most one per second and at most `max_edits` in all. The
//! previews are sent straight to the surfaces; the final text goes through the durable
//! outbox (see `Agents::commit_reply`), so it always arrives, exactly once.
//!
//! While a coding agent runs tools and writes nothing, the same message shows one line
//! saying what it runs (its tool call's title), edited in place with the same throttle
//! and replaced by its next words: one message, never a line per tool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use super::typing::TypingGuard;
use crate::protocol::{
    ChannelAdapter, ChannelMessage, ContentType, Landing, LandingRecord, SenderType, send_recording,
};
use crate::store::{Store, messages};

/// Metadata key of an edit: the canonical id of the message it replaces.
pub use crate::protocol::metadata_keys::REPLACES;
/// Longest message part; longer answers are split at a clean boundary.
pub const MAX_PART_CHARS: usize = 16_000;
const EDIT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a preview's landing waits for the turn's write before it is recorded on its
/// own: meanwhile a reply to the preview cannot be told from a message of its own.
const LANDING_GRACE: Duration = Duration::from_secs(1);

/// A derived id: the same turn always gets the same ids, so a rerun after a crash sends
/// with the same transaction ids and the homeserver drops the repeats.
///
/// The id of a time-ordered message (see [`ChannelMessage::new`]) keeps its time, so an
/// answer sorts beside the message it answers in the store's indexes. Older ids derive
/// as they always did: a turn queued before and rerun after an upgrade finds what it sent.
pub fn derived_id(base: Uuid, label: &str) -> Uuid {
    let hashed = Uuid::new_v5(&base, label.as_bytes());
    match base.get_version() {
        Some(uuid::Version::SortRand | uuid::Version::Custom) => {
            let mut bytes = *hashed.as_bytes();
            bytes[..6].copy_from_slice(&base.as_bytes()[..6]);
            Uuid::new_v8(bytes)
        }
        _ => hashed,
    }
}

/// An edit of `original` carrying `text`.
pub fn edit_of(original: &ChannelMessage, text: &str, label: &str) -> ChannelMessage {
    let mut edit = original.clone();
    edit.id = derived_id(original.id, label);
    edit.content = text.to_string();
    edit.metadata.insert(REPLACES.into(), Value::String(original.id.to_string()));
    edit
}

/// One surface channel the answer goes to.
pub struct Target {
    pub adapter: Arc<dyn ChannelAdapter>,
    pub channel_id: String,
    /// Whether the answer may be streamed here. Not while the message it answers is still
    /// on its way to this chat: the answer then goes through the same ordered queue, after
    /// that message, so that it never shows up above what it answers.
    pub previews: bool,
}

pub struct Streamer {
    /// The answer message as first sent (its id is the answer's id).
    pub reply: ChannelMessage,
    targets: Vec<Target>,
    text: String,
    /// Targets that received the first message.
    pub previewed: Vec<String>,
    edits: u32,
    max_preview_edits: u32,
    last_sent: Option<Instant>,
    /// The text the surfaces show now.
    shown: String,
    /// This turn ran before (and was retried).
    rerun: bool,
    previews: bool,
    /// Longest answer, in characters; `text` never grows past it.
    max_chars: usize,
    /// Characters in `text`, counted as they arrive.
    chars: usize,
    /// The agent's typing notices, stopped in each chat as the first words show there.
    typing: TypingGuard,
    /// The tool call the agent runs since its last words, shown under them.
    progress: Option<Progress>,
    /// Where the turn records where its previews landed, with its answer; without one,
    /// each surface records that on its own as it sends.
    store: Option<Store>,
    /// Previews sent whose landing is not recorded yet.
    pending: PendingLandings,
}

/// Where previews landed, not recorded yet, and when they are to be recorded on their
/// own (see [`LANDING_GRACE`]).
#[derive(Default)]
struct PendingLandings {
    landings: Vec<Landing>,
    due: Option<Instant>,
}

impl PendingLandings {
    fn keep(&mut self, landed: Option<Landing>) {
        if landed.is_some() && self.due.is_none() {
            self.due = Some(Instant::now() + LANDING_GRACE);
        }
        self.landings.extend(landed);
    }
}

/// A tool call as the progress line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Progress {
    title: String,
    running: bool,
}

/// Longest tool title shown, in characters: a title may be a whole command line.
const MAX_TITLE_CHARS: usize = 120;

impl Progress {
    fn new(title: &str, status: &str) -> Self {
        let one_line = title.split_whitespace().collect::<Vec<_>>().join(" ");
        let title = match one_line.char_indices().nth(MAX_TITLE_CHARS) {
            Some((cut, _)) => format!("{}…", &one_line[..cut]),
            None => one_line,
        };
        // ACP's statuses: `pending` and `in_progress` run; `completed` and `failed` ended.
        Self { title, running: !matches!(status, "completed" | "failed") }
    }

    /// `🔧 Run cargo test…` while it runs; without the dots once it ended.
    fn line(&self) -> String {
        match self.running {
            true => format!("🔧 {}…", self.title),
            false => format!("🔧 {}", self.title),
        }
    }
}

/// Whether the answer still has room after a piece of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    Left,
    /// The answer reached its limit: text past it was dropped, and the turn must end.
    Full,
}

impl Streamer {
    /// `reply` is the answer with empty content; `max_edits` counts the final edit too.
    /// `previews: false` holds all text back for the final message.
    pub fn new(reply: ChannelMessage, targets: Vec<Target>, max_edits: u32, rerun: bool, previews: bool) -> Self {
        Self {
            reply,
            targets,
            text: String::new(),
            previewed: Vec::new(),
            edits: 0,
            max_preview_edits: max_edits.saturating_sub(1),
            last_sent: None,
            shown: String::new(),
            rerun,
            previews,
            max_chars: usize::MAX,
            chars: 0,
            typing: TypingGuard::none(),
            progress: None,
            store: None,
            pending: PendingLandings::default(),
        }
    }

    /// Leaves recording where previews landed to the turn, which writes it with its
    /// answer (see [`Streamer::landings`]): an answer that ends soon after its first
    /// words costs one durable write instead of two. A longer turn records them after
    /// [`LANDING_GRACE`], and an edit first records what it edits, since the surface
    /// looks the original up in the store.
    pub fn recording_landings_in(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Where previews landed, not recorded yet: the turn records them with its answer.
    pub fn landings(&self) -> &[Landing] {
        &self.pending.landings
    }

    fn landing_record(&self) -> LandingRecord {
        match self.store {
            Some(_) => LandingRecord::ByCaller,
            None => LandingRecord::ByAdapter,
        }
    }

    /// Records the landings not recorded yet, in one durable write. When that fails they
    /// stay, for the turn's own write or the next try; a surface that cannot find an
    /// original in the store sends an edit as a message of its own, and a rerun looks for
    /// a preview it sent.
    pub async fn record_landings(&mut self) {
        let Some(store) = &self.store else { return };
        let pending = &mut self.pending;
        if pending.landings.is_empty() {
            return;
        }
        let landings = &pending.landings;
        match store.write(async |conn| messages::record_landings(conn, landings).await).await {
            Ok(()) => *pending = PendingLandings::default(),
            Err(error) => {
                tracing::warn!(%error, landings = landings.len(), "cannot record where previews landed");
                pending.due = Some(Instant::now() + LANDING_GRACE);
            }
        }
    }

    /// A tool call of the agent started or changed state: the answer shows a line saying
    /// so under its text, until more text comes. Not where the answer is not streamed.
    pub fn tool_call(&mut self, title: &str, status: &str) {
        if self.previews && !title.trim().is_empty() {
            self.progress = Some(Progress::new(title, status));
        }
    }

    /// What the previews show now: the text so far, and under it the progress line.
    fn display(&self) -> String {
        match &self.progress {
            Some(progress) => self.under_text(progress),
            None => preview(&self.text),
        }
    }

    /// The text so far with `progress`'s line under it.
    fn under_text(&self, progress: &Progress) -> String {
        match preview(&self.text).trim_end() {
            "" => progress.line(),
            text => format!("{text}\n\n{}", progress.line()),
        }
    }

    /// For a turn that ends without an answer while the previews show a progress line:
    /// the edit that leaves the line there as a record of what ran (without its dots),
    /// under the text so far, rather than a tool that seems to run for ever.
    pub fn settled_progress(&self) -> Option<ChannelMessage> {
        let progress = self.progress.as_ref().filter(|_| !self.previewed.is_empty())?;
        let text = self.under_text(&Progress { running: false, ..progress.clone() });
        Some(edit_of(&self.with_text(&text), &text, "final"))
    }

    /// Shows the agent `agent_id` typing in the targets until its words show there or
    /// [`Streamer::stop_typing`].
    pub fn with_typing(mut self, agent_id: &str) -> Self {
        let chats = self.targets.iter().map(|t| (t.adapter.clone(), t.channel_id.clone()));
        self.typing = TypingGuard::start(agent_id, chats);
        self
    }

    /// The turn is over (answered, stopped or failed): no chat shows the agent typing.
    pub fn stop_typing(&mut self) {
        self.typing = TypingGuard::none();
    }

    /// Answers stop at `max_chars` characters (see [`Streamer::push`]).
    pub fn with_max_chars(mut self, max_chars: usize) -> Self {
        self.max_chars = max_chars;
        self
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Whether `target` surely shows `text` (then the final text needs no edit there).
    /// Never on a rerun: its previews reuse the first run's ids, which the homeserver
    /// may have answered with the first run's (different) message.
    pub fn shows(&self, channel_id: &str, text: &str) -> bool {
        !self.rerun && self.previewed.iter().any(|c| c == channel_id) && self.shown == text
    }

    /// Adds text to the answer, up to its limit; what does not fit is dropped.
    pub fn push(&mut self, piece: &str) -> Room {
        let room = self.max_chars.saturating_sub(self.chars);
        let (fits, count) = match piece.char_indices().nth(room) {
            Some((cut, _)) => (&piece[..cut], room),
            None => (piece, piece.chars().count()),
        };
        self.text.push_str(fits);
        self.chars += count;
        // Its words are back: the line about its tools goes.
        if !fits.is_empty() {
            self.progress = None;
        }
        if fits.len() < piece.len() || self.chars >= self.max_chars { Room::Full } else { Room::Left }
    }

    /// When [`Streamer::flush`] has something to do next: a preview of new text, or
    /// landings to record.
    pub fn next_due(&self) -> Option<Instant> {
        match (self.preview_due(), self.pending.due) {
            (Some(preview), Some(landings)) => Some(preview.min(landings)),
            (preview, landings) => preview.or(landings),
        }
    }

    /// When the next preview is due, if there is new text to show.
    fn preview_due(&self) -> Option<Instant> {
        if !self.previews {
            return None;
        }
        let display = self.display();
        if display.trim().is_empty() || display == self.shown {
            return None;
        }
        match self.last_sent {
            None => Some(Instant::now()),
            Some(_) if self.edits >= self.max_preview_edits => None,
            Some(last) => Some(last + EDIT_INTERVAL),
        }
    }

    /// Records landings that waited long enough, and sends the first message or an
    /// edit, if one is due now.
    pub async fn flush(&mut self) {
        if self.pending.due.is_some_and(|due| due <= Instant::now()) {
            self.record_landings().await;
        }
        if self.preview_due().is_none_or(|due| due > Instant::now()) {
            return;
        }
        let shown = self.display();
        self.last_sent = Some(Instant::now());
        if !self.previewed.is_empty() {
            self.record_landings().await;
            self.edits += 1;
            let edit = edit_of(&self.with_text(&shown), &shown, &format!("edit-{}", self.edits));
            for target in self.targets.iter().filter(|t| self.previewed.contains(&t.channel_id)) {
                match send_preview(target, &edit, self.rerun, self.landing_record()).await {
                    Ok(landed) => self.pending.keep(landed),
                    Err(error) => {
                        tracing::debug!(channel = target.adapter.name(), %error, "streaming edit not delivered")
                    }
                }
            }
        } else {
            let first = self.with_text(&shown);
            for target in self.targets.iter().filter(|t| t.previews) {
                match send_preview(target, &first, self.rerun, self.landing_record()).await {
                    Ok(landed) => {
                        self.pending.keep(landed);
                        self.typing.stop_in(&target.channel_id);
                        self.previewed.push(target.channel_id.clone());
                    }
                    Err(error) => {
                        tracing::debug!(channel = target.adapter.name(), %error, "first streamed message not delivered")
                    }
                }
            }
        }
        self.shown = shown;
    }

    fn with_text(&self, text: &str) -> ChannelMessage {
        let mut message = self.reply.clone();
        message.content = text.to_string();
        message
    }
}

/// Previews are a courtesy: a slow surface must not hold up the answer, whose final text
/// goes through the outbox anyway.
const PREVIEW_TIMEOUT: Duration = Duration::from_secs(3);

/// `rerun`: an earlier run of the turn may have sent this message already.
async fn send_preview(
    target: &Target,
    message: &ChannelMessage,
    rerun: bool,
    record: LandingRecord,
) -> Result<Option<Landing>, String> {
    let send = send_recording(target.adapter.as_ref(), &target.channel_id, message, rerun, record);
    match tokio::time::timeout(PREVIEW_TIMEOUT, send).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", PREVIEW_TIMEOUT.as_secs())),
    }
}

/// What a preview shows: the first part of the text.
fn preview(text: &str) -> String {
    split_parts(text, MAX_PART_CHARS).into_iter().next().unwrap_or_default()
}

/// Splits `text` into parts of at most `limit` characters, preferring paragraph breaks,
/// then line breaks, then spaces.
pub fn split_parts(text: &str, limit: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.chars().count() > limit {
        let window_end = rest.char_indices().nth(limit).map_or(rest.len(), |(i, _)| i);
        let window = &rest[..window_end];
        let cut = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| window.rfind(sep).filter(|&i| i > window.len() / 2).map(|i| i + sep.len()))
            .unwrap_or(window_end);
        parts.push(rest[..cut].trim_end().to_string());
        rest = &rest[cut..];
    }
    if !rest.trim().is_empty() || parts.is_empty() {
        parts.push(rest.to_string());
    }
    parts
}

/// The note that ends an answer cut at `max_chars` characters.
pub fn cut_note(max_chars: usize) -> String {
    format!("\n\n*(… answer cut at {} characters)*", with_thousands(max_chars))
}

/// `64000` → `64,000`.
fn with_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The answer message of a turn, before any text.
pub fn answer_message(id: Uuid, to: &ChannelMessage, agent: &str) -> ChannelMessage {
    let mut reply = ChannelMessage::new(&to.channel_id, agent, SenderType::Agent, "", ContentType::Markdown)
        .with_reply_to(to.id)
        .in_thread_of(to);
    reply.id = id;
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_break_at_clean_boundaries() {
        let text = format!("{}\n\n{}", "a".repeat(60), "b".repeat(60));
        let parts = split_parts(&text, 100);
        assert_eq!(parts, vec!["a".repeat(60), "b".repeat(60)]);
        let words = "word ".repeat(50);
        let parts = split_parts(&words, 42);
        assert!(parts.iter().all(|p| p.chars().count() <= 42));
        assert!(parts[..parts.len() - 1].iter().all(|p| !p.ends_with(' ')), "cuts fall between words: {parts:?}");
        assert_eq!(parts.concat().replace(' ', ""), words.replace(' ', ""));
        let solid = "x".repeat(250);
        assert_eq!(split_parts(&solid, 100).len(), 3);
        assert_eq!(split_parts("short", 100), vec!["short"]);
    }

    #[test]
    fn ids_are_stable_per_turn() {
        for base in [Uuid::now_v7(), Uuid::new_v4()] {
            assert_eq!(derived_id(base, "edit-1"), derived_id(base, "edit-1"));
            assert_ne!(derived_id(base, "edit-1"), derived_id(base, "edit-2"));
        }
    }

    #[test]
    fn a_derived_id_sorts_beside_its_time_ordered_base_and_an_older_one_derives_as_before() {
        let earlier = ChannelMessage::new("!r", "@a:x", SenderType::User, "hi", ContentType::Text).id;
        std::thread::sleep(Duration::from_millis(2));
        let base = ChannelMessage::new("!r", "@a:x", SenderType::User, "hi", ContentType::Text).id;
        std::thread::sleep(Duration::from_millis(2));
        let later = ChannelMessage::new("!r", "@a:x", SenderType::User, "hi", ContentType::Text).id;
        // The store keeps ids as text: their text sorts as they do.
        assert!(earlier.to_string() < base.to_string() && base.to_string() < later.to_string());
        for label in ["turn:echo:1", "edit-1", "part-2"] {
            let derived = derived_id(base, label);
            assert!(earlier.to_string() < derived.to_string() && derived.to_string() < later.to_string(), "{label}");
            assert_ne!(derived, base);
            let twice = derived_id(derived, "edit-1");
            assert!(earlier.to_string() < twice.to_string() && twice.to_string() < later.to_string(), "{label}");
        }
        let older = Uuid::new_v4();
        assert_eq!(derived_id(older, "edit-1"), Uuid::new_v5(&older, b"edit-1"));
    }

    #[test]
    fn edits_are_throttled_and_capped() {
        let to = ChannelMessage::new("!r", "@a:x", SenderType::User, "q", ContentType::Text);
        let mut streamer = Streamer::new(answer_message(Uuid::new_v4(), &to, "echo"), Vec::new(), 3, false, true);
        assert!(streamer.next_due().is_none(), "nothing to show yet");
        assert_eq!(streamer.push("hello"), Room::Left);
        assert!(streamer.next_due().unwrap() <= Instant::now(), "the first text goes out at once");
        streamer.last_sent = Some(Instant::now());
        streamer.shown = streamer.text.clone();
        streamer.previewed.push("!r".into());
        assert_eq!(streamer.push(" world"), Room::Left);
        assert!(streamer.next_due().unwrap() > Instant::now(), "edits wait a second");
        streamer.edits = 2;
        assert!(streamer.next_due().is_none(), "the last edit is kept for the final text");
    }

    #[test]
    fn an_answer_stops_at_its_limit() {
        let to = ChannelMessage::new("!r", "@a:x", SenderType::User, "q", ContentType::Text);
        let streamer = Streamer::new(answer_message(Uuid::new_v4(), &to, "echo"), Vec::new(), 3, false, true);
        let mut streamer = streamer.with_max_chars(10);
        assert_eq!(streamer.push("héllo"), Room::Left);
        assert_eq!(streamer.push(" wörld and more"), Room::Full);
        assert_eq!(streamer.text(), "héllo wörl", "cut at 10 characters, not bytes");
        assert_eq!(streamer.push("x"), Room::Full);
        assert_eq!(streamer.text(), "héllo wörl");
        let mut exact =
            Streamer::new(answer_message(Uuid::new_v4(), &to, "echo"), Vec::new(), 3, false, true).with_max_chars(5);
        assert_eq!(exact.push("12345"), Room::Full, "a full answer ends the turn");
        assert_eq!(exact.text(), "12345");
    }

    #[test]
    fn a_tool_call_shows_one_line_under_the_text_until_more_text_comes() {
        let to = ChannelMessage::new("!r", "@a:x", SenderType::User, "q", ContentType::Text);
        let mut streamer = Streamer::new(answer_message(Uuid::new_v4(), &to, "coder"), Vec::new(), 20, false, true);
        streamer.tool_call("Run `cargo test`", "pending");
        assert_eq!(streamer.display(), "🔧 Run `cargo test`…");
        assert!(streamer.next_due().unwrap() <= Instant::now(), "before any words, the line shows at once");
        streamer.tool_call("Run `cargo test`", "completed");
        assert_eq!(streamer.display(), "🔧 Run `cargo test`", "ended: no dots");
        streamer.push("Tests pass.");
        assert_eq!(streamer.display(), "Tests pass.", "its words replace the line");
        streamer.tool_call("Read\n   Cargo.toml", "in_progress");
        assert_eq!(streamer.display(), "Tests pass.\n\n🔧 Read Cargo.toml…", "one line, under the words");
        streamer.tool_call(&"x".repeat(500), "in_progress");
        assert_eq!(streamer.display().chars().count(), "Tests pass.\n\n🔧 ".chars().count() + MAX_TITLE_CHARS + 2);

        let mut whole = Streamer::new(answer_message(Uuid::new_v4(), &to, "coder"), Vec::new(), 20, false, false);
        whole.tool_call("Run `cargo test`", "pending");
        assert!(whole.next_due().is_none(), "an answer sent whole shows no line");
    }

    #[test]
    fn a_line_left_when_the_turn_ends_without_words_is_settled() {
        let to = ChannelMessage::new("!r", "@a:x", SenderType::User, "q", ContentType::Text);
        let mut streamer = Streamer::new(answer_message(Uuid::new_v4(), &to, "coder"), Vec::new(), 20, false, true);
        streamer.tool_call("Run `cargo test`", "in_progress");
        assert!(streamer.settled_progress().is_none(), "nothing shown, nothing to settle");
        streamer.previewed.push("!r".into());
        let settled = streamer.settled_progress().unwrap();
        assert_eq!(settled.content, "🔧 Run `cargo test`");
        assert_eq!(settled.meta_str(REPLACES), Some(streamer.reply.id.to_string().as_str()));
        streamer.push("Partly done.");
        assert!(streamer.settled_progress().is_none(), "its words replaced the line");
    }

    #[test]
    fn the_cut_note_names_the_limit() {
        assert_eq!(cut_note(64_000), "\n\n*(… answer cut at 64,000 characters)*");
        assert_eq!(cut_note(1_234_567), "\n\n*(… answer cut at 1,234,567 characters)*");
        assert_eq!(cut_note(999), "\n\n*(… answer cut at 999 characters)*");
    }
}

#[cfg(test)]
mod landing_tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::protocol::{AdapterHealth, ChannelConnectError, ChannelSendError, InboundHandler};
    use crate::store::messages;

    /// A surface that hands landings back, and that, like Matrix, finds the original of
    /// an edit in the store.
    struct Surface {
        store: Store,
        /// For each edit sent: whether its original was found in the store.
        edits_found_original: Mutex<Vec<bool>>,
    }

    #[async_trait]
    impl ChannelAdapter for Surface {
        fn name(&self) -> &'static str {
            "surface"
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
            panic!("a turn that records landings leaves them to the turn")
        }
        async fn send_leaving_landing(
            &self,
            chat: &str,
            msg: &ChannelMessage,
            _resend: bool,
        ) -> Result<Option<Landing>, ChannelSendError> {
            if let Some(original) = msg.metadata.get(REPLACES).and_then(|v| v.as_str()) {
                let mut conn = self.store.conn().await.unwrap();
                let original = Uuid::parse_str(original).unwrap();
                let found = messages::native_for_message(&mut conn, "surface", chat, original).await.unwrap();
                self.edits_found_original.lock().unwrap().push(found.is_some());
            }
            Ok(Some(Landing {
                channel: "surface".into(),
                chat_id: chat.into(),
                native_id: format!("native-{}", msg.id),
                message_id: msg.id,
            }))
        }
        async fn map_identity(&self, _: &str) -> Option<String> {
            None
        }
    }

    /// A turn's streamer that records landings, with one target on [`Surface`].
    struct Turn {
        _dir: tempfile::TempDir,
        store: Store,
        surface: Arc<Surface>,
        reply: ChannelMessage,
        streamer: Streamer,
    }

    async fn turn(max_edits: u32) -> Turn {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("store.db").display())).await.unwrap();
        let surface = Arc::new(Surface { store: store.clone(), edits_found_original: Mutex::default() });
        let target = Target { adapter: surface.clone(), channel_id: "!r".into(), previews: true };
        let to = ChannelMessage::new("!r", "@a:x", SenderType::User, "q", ContentType::Text);
        let reply = answer_message(Uuid::new_v4(), &to, "writer");
        let streamer =
            Streamer::new(reply.clone(), vec![target], max_edits, false, true).recording_landings_in(store.clone());
        Turn { _dir: dir, store, surface, reply, streamer }
    }

    async fn recorded(store: &Store, id: Uuid) -> Option<String> {
        let mut conn = store.conn().await.unwrap();
        messages::native_for_message(&mut conn, "surface", "!r", id).await.unwrap()
    }

    #[tokio::test]
    async fn a_preview_is_recorded_with_the_turn_or_before_its_first_edit() {
        let Turn { _dir, store, surface, reply, mut streamer } = turn(5).await;

        streamer.push("hello");
        streamer.flush().await;
        assert_eq!(streamer.previewed, ["!r"]);
        let first: Vec<Uuid> = streamer.landings().iter().map(|l| l.message_id).collect();
        assert_eq!(first, [reply.id], "the first preview's landing waits for the turn's write");
        assert_eq!(recorded(&store, reply.id).await, None);

        streamer.push(" world");
        streamer.last_sent = Some(Instant::now() - EDIT_INTERVAL);
        streamer.pending.due = Some(Instant::now() + LANDING_GRACE);
        streamer.flush().await;
        assert_eq!(*surface.edits_found_original.lock().unwrap(), [true], "the edit's original was recorded first");
        assert_eq!(recorded(&store, reply.id).await, Some(format!("native-{}", reply.id)));
        let edit = derived_id(reply.id, "edit-1");
        let pending: Vec<Uuid> = streamer.landings().iter().map(|l| l.message_id).collect();
        assert_eq!(pending, [edit], "only the edit's landing is left for the turn");

        streamer.record_landings().await;
        assert!(streamer.landings().is_empty());
        assert_eq!(recorded(&store, edit).await, Some(format!("native-{edit}")), "a turn that fails keeps them too");
        assert_eq!(streamer.next_due(), None, "nothing left to do");
    }

    #[tokio::test]
    async fn a_preview_of_a_turn_that_runs_on_is_recorded_after_the_grace() {
        // One edit in all, kept for the final text: no preview edit will record it.
        let Turn { _dir, store, surface, reply, mut streamer } = turn(1).await;
        streamer.push("hello");
        streamer.flush().await;
        streamer.push(" and more, while the agent works on");
        let due = streamer.next_due().expect("the landing is due");
        assert!(due > Instant::now() && due <= Instant::now() + LANDING_GRACE, "due after the grace");
        streamer.flush().await;
        assert_eq!(recorded(&store, reply.id).await, None, "not before the grace");

        streamer.pending.due = Some(Instant::now());
        streamer.flush().await;
        assert_eq!(recorded(&store, reply.id).await, Some(format!("native-{}", reply.id)));
        assert!(streamer.landings().is_empty());
        assert_eq!(streamer.next_due(), None, "no edit, nothing more to record");
        assert!(surface.edits_found_original.lock().unwrap().is_empty(), "no edit was sent");
    }
}
