//! Running one agent turn: context in, streamed answer out, permission questions asked
//! in the room, `!stop` obeyed, and the final answer committed durably.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::control::{Asker, question_text};
use super::runtime::{AgentError, AgentEvent, PermissionRequest, TokenUsage, TurnContext};
use super::stream::{self, Room, Streamer, Target, answer_message, derived_id, edit_of, split_parts};
use super::typing;
use super::{Agent, Agents, context};
use crate::error_ref::ErrorRef;
use crate::hub::agent_rooms::{self, Step};
use crate::hub::{TurnJob, enqueue_send};
use crate::protocol::{ChannelMessage, ContentType, SenderType};
use crate::queue;
use crate::queue::JobOutcome;
use crate::store::AnyConnection;
use crate::store::{self, messages, outbox, settings};

/// How a turn ended.
enum Ending {
    Complete,
    Stopped,
    /// The answer reached `max_answer_chars`.
    Cut,
}

impl Agents {
    /// Runs one queued turn. The final answer, its delivery jobs, the usage and the job's
    /// completion are written in one transaction: a crash before it reruns the turn (with
    /// the same message ids, so previews are not doubled), a crash after it finds the job
    /// done. The answer is never lost nor sent twice.
    pub async fn run_turn(&self, job: &outbox::Job, turn: &TurnJob) -> JobOutcome {
        let Some(agent) = self.agents.get(&turn.agent) else {
            return JobOutcome::Failed(format!("agent {:?} is not configured", turn.agent));
        };
        let prepared = match self.prepare(agent, turn).await {
            Ok(Some(prepared)) => prepared,
            Ok(None) => return JobOutcome::Failed(format!("message {} not found", turn.message_id)),
            Err(error) => return JobOutcome::Retry { error: error.to_string(), after: None },
        };
        let Prepared { message, context, targets, seen } = prepared;
        typing::mark_read(&turn.agent, seen);
        let reply = answer_message(derived_id(turn.message_id, &job.dedupe_key), &message, &turn.agent);
        // Structured agent-room messages go out whole, not as previews and edits.
        let previews = turn.step.is_none();
        let rerun = job.may_have_run(self.store.opened_at());
        let mut streamer = Streamer::new(reply, targets, agent.config.max_edits, rerun, previews)
            .with_max_chars(agent.config.max_answer_chars)
            .with_typing(&turn.agent)
            .recording_landings_in(self.store.clone());
        let mut usage = TokenUsage::default();
        let asker = AskerOf { store: &self.store, message: &message };
        let streamed = self.stream_answer(agent, &context, &asker, &mut streamer, &mut usage).await;
        streamer.stop_typing();
        let ending = match streamed {
            Ok(ending) => ending,
            Err(AgentError::Unavailable(error)) => {
                streamer.record_landings().await;
                return JobOutcome::Retry { error, after: None };
            }
            Err(AgentError::Failed(error)) => {
                // The error may quote the program's stderr or the provider's answer: the
                // room gets a reference, the log the error.
                let reference = ErrorRef::new();
                tracing::warn!(
                    agent = turn.agent,
                    conversation_id = turn.conversation_id,
                    r#ref = %reference,
                    %error,
                    "agent turn failed"
                );
                let notice = reference.notice(&format!("{} could not answer", agent.config.display_name()));
                return self.end_with_notice(job, turn, &message, notice, &mut streamer).await;
            }
        };
        let mut text = streamer.text().to_string();
        if matches!(ending, Ending::Stopped) {
            text.push_str("\n\n*(stopped)*");
        } else if matches!(ending, Ending::Cut) {
            tracing::info!(agent = turn.agent, conversation_id = turn.conversation_id, "answer cut at its limit");
            text.push_str(&stream::cut_note(agent.config.max_answer_chars));
        } else if text.trim().is_empty() {
            let notice = format!("{} gave no answer.", agent.config.display_name());
            return self.end_with_notice(job, turn, &message, notice, &mut streamer).await;
        }
        match self.commit_answer(job, turn, agent, &streamer, &text, usage).await {
            Ok(sends) => {
                // A step in an agent room queues another turn; an answer may queue sends
                // (none when the streamed message already shows it all).
                if turn.step.is_some() || sends > 0 {
                    self.wakers.wake();
                }
                JobOutcome::Recorded
            }
            Err(error) => {
                streamer.record_landings().await;
                JobOutcome::Retry { error: error.to_string(), after: None }
            }
        }
    }

    async fn prepare(&self, agent: &Agent, turn: &TurnJob) -> store::Result<Option<Prepared>> {
        let mut conn = self.store.conn().await?;
        let Some(message) = messages::get(&mut conn, turn.message_id).await? else {
            return Ok(None);
        };
        let history = match agent.runtime.reads_history() {
            true => messages::history(&mut conn, &turn.conversation_id, context::HISTORY_LIMIT).await?,
            false => vec![message.clone()],
        };
        let mut context =
            context::build(&agent.config, agent.persona.clone(), &turn.conversation_id, &message, &history);
        if let (Some(prompt), Some(last)) = (&turn.prompt, context.messages.last_mut()) {
            last.content = prompt.clone();
        }
        let mut targets = Vec::new();
        let mut seen = Vec::new();
        for (channel, chat) in crate::hub::bridging::surfaces(&mut conn, &turn.conversation_id).await? {
            let Some(adapter) = self.registry.get(&channel) else { continue };
            let origin = message.origin_channel() == channel && message.channel_id == chat;
            // Where it was written, the message carries its own native id (the hub recorded
            // that one); elsewhere only the record of where it was relayed knows.
            let native = match message.channel_message_id() {
                Some(native) if origin => Some(native.to_string()),
                _ => messages::native_for_message(&mut conn, &channel, &chat, message.id).await?,
            };
            let previews = origin || native.is_some();
            if let Some(native) = native {
                seen.push(typing::Seen { adapter: adapter.clone(), channel_id: chat.clone(), native_id: native });
            }
            targets.push(Target { adapter, channel_id: chat, previews });
        }
        Ok(Some(Prepared { message, context, targets, seen }))
    }

    /// Runs the runtime, showing its text as it comes, until it finishes or is stopped.
    async fn stream_answer(
        &self,
        agent: &Agent,
        context: &TurnContext,
        asker: &AskerOf<'_>,
        streamer: &mut Streamer,
        usage: &mut TokenUsage,
    ) -> Result<Ending, AgentError> {
        let guard = self.control.start_turn(&context.conversation_id);
        let mut stopped = guard.stopped.clone();
        let (events, mut received) = mpsc::channel(256);
        let runtime = agent.runtime.clone();
        let turn = context.clone();
        let mut running = tokio::spawn(async move { runtime.respond(&turn, events).await });
        let mut deadline = Instant::now() + Duration::from_secs(agent.config.timeout_secs);
        // Questions extend the turn, but only by so much in all: an agent asking one
        // question after another must not keep the turn open for ever.
        let mut permission_budget = Duration::from_secs(agent.config.max_permission_wait_secs);
        let mut finished = None;
        loop {
            let due = streamer.next_due().map(Instant::from_std);
            tokio::select! {
                event = received.recv() => match event {
                    Some(event) => {
                        // Time spent waiting for a person does not count against the turn.
                        if matches!(event, AgentEvent::Permission(_)) {
                            let extension =
                                Duration::from_secs(agent.config.permission_timeout_secs).min(permission_budget);
                            permission_budget -= extension;
                            deadline += extension;
                        }
                        if self.on_event(agent, context, asker, streamer, usage, event).await == Room::Full {
                            running.abort();
                            agent.runtime.cancel(&context.session_key()).await;
                            return Ok(Ending::Cut);
                        }
                    }
                    None if finished.is_some() => break,
                    None => finished = Some((&mut running).await),
                },
                result = &mut running, if finished.is_none() => finished = Some(result),
                _ = sleep_until(due) => streamer.flush().await,
                _ = stopped.changed() => {
                    running.abort();
                    agent.runtime.cancel(&context.session_key()).await;
                    return Ok(Ending::Stopped);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    running.abort();
                    agent.runtime.cancel(&context.session_key()).await;
                    return Err(AgentError::Failed(format!("no answer within {} s", agent.config.timeout_secs)));
                }
            }
        }
        match finished {
            Some(Ok(result)) => result.map(|()| Ending::Complete),
            Some(Err(join)) => Err(AgentError::Failed(format!("the runtime stopped unexpectedly: {join}"))),
            None => Ok(Ending::Complete),
        }
    }

    async fn on_event(
        &self,
        agent: &Agent,
        context: &TurnContext,
        asker: &AskerOf<'_>,
        streamer: &mut Streamer,
        usage: &mut TokenUsage,
        event: AgentEvent,
    ) -> Room {
        match event {
            AgentEvent::Text(piece) => {
                let room = streamer.push(&piece);
                streamer.flush().await;
                return room;
            }
            AgentEvent::Usage(reported) => {
                usage.input_tokens += reported.input_tokens;
                usage.output_tokens += reported.output_tokens;
            }
            AgentEvent::Permission(request) => self.ask_permission(agent, context, asker, streamer, request).await,
            AgentEvent::ToolCall { title, status } => {
                tracing::debug!(agent = agent.config.id, tool = title, status, "tool call");
                streamer.tool_call(&title, &status);
                streamer.flush().await;
            }
            AgentEvent::Plan(steps) => tracing::debug!(agent = agent.config.id, steps = steps.len(), "plan"),
        }
        Room::Left
    }

    /// Posts the question in the room and hands the answer of the person who started the
    /// turn (or an admin), or after the timeout a refusal, back to the runtime.
    async fn ask_permission(
        &self,
        agent: &Agent,
        context: &TurnContext,
        asker: &AskerOf<'_>,
        streamer: &Streamer,
        request: PermissionRequest,
    ) {
        let PermissionRequest { title, options, answer } = request;
        let asker = match asker.find().await {
            Ok(asker) => asker,
            Err(error) => {
                tracing::warn!(agent = agent.config.id, %error, "cannot tell who started the turn; refusing");
                let _ = answer.send(None);
                return;
            }
        };
        let timeout = agent.config.permission_timeout_secs;
        let text = question_text(&agent.config.display_name(), &title, &options, timeout, asker.as_ref());
        let mut question = streamer.reply.clone();
        question.id = Uuid::new_v4();
        question.content = text;
        if let Err(error) = self.post_now(&context.conversation_id, &question, streamer).await {
            tracing::warn!(agent = agent.config.id, %error, "cannot post the permission question; refusing");
            let _ = answer.send(None);
            return;
        }
        let (forward, answered) = oneshot::channel();
        self.control.ask(&context.conversation_id, question.id, options, asker, forward);
        let control = self.control.clone();
        let conversation_id = context.conversation_id.clone();
        tokio::spawn(async move {
            let choice = match tokio::time::timeout(Duration::from_secs(timeout), answered).await {
                Ok(Ok(choice)) => choice,
                _ => {
                    control.forget(&conversation_id, question.id);
                    None
                }
            };
            let _ = answer.send(choice);
        });
    }

    /// Logs a message and sends it straight away, outside the ordered outbox.
    async fn post_now(
        &self,
        conversation_id: &str,
        message: &ChannelMessage,
        streamer: &Streamer,
    ) -> store::Result<()> {
        self.store.write(async |conn| messages::append(conn, conversation_id, "agent", message).await).await?;
        for target in streamer.targets() {
            if let Err(error) = target.adapter.send_message(&target.channel_id, message).await {
                return Err(store::StoreError::Corrupt(format!("send failed: {error}")));
            }
        }
        Ok(())
    }

    /// Writes the answer and its usage, where its previews landed, queues its sends and
    /// marks the turn done, in one transaction. Returns how many sends were queued.
    async fn commit_answer(
        &self,
        job: &outbox::Job,
        turn: &TurnJob,
        agent: &Agent,
        streamer: &Streamer,
        text: &str,
        usage: TokenUsage,
    ) -> store::Result<usize> {
        let parts = split_parts(text, stream::MAX_PART_CHARS);
        let mut sends = 0;
        let mut tx = self.store.begin_write().await?;
        for (index, part) in parts.iter().enumerate() {
            let mut message = streamer.reply.clone();
            if index > 0 {
                message.id = derived_id(streamer.reply.id, &format!("part-{index}"));
            }
            message.content = part.clone();
            if let (0, Some(step)) = (index, &turn.step) {
                self.as_agent_message(&mut tx, turn, agent, step, &mut message, text).await?;
            }
            messages::append(&mut tx, &turn.conversation_id, "agent", &message).await?;
            for target in streamer.targets() {
                let outgoing = match index == 0 && streamer.previewed.contains(&target.channel_id) {
                    // The streamed message already shows exactly this.
                    true if streamer.shows(&target.channel_id, part) => continue,
                    true => edit_of(&message, part, "final"),
                    false => message.clone(),
                };
                enqueue_send(&mut tx, target.adapter.name(), &target.channel_id, &outgoing).await?;
                sends += 1;
            }
        }
        crate::metrics::agent_tokens(&turn.agent, usage.input_tokens, usage.output_tokens);
        if usage != TokenUsage::default() {
            settings::record_usage(
                &mut tx,
                &job.dedupe_key,
                &turn.agent,
                &turn.conversation_id,
                usage.input_tokens,
                usage.output_tokens,
            )
            .await?;
        }
        messages::record_landings(&mut tx, streamer.landings()).await?;
        outbox::mark_done(&mut tx, job.seq).await?;
        tx.commit().await?;
        tracing::info!(
            agent = turn.agent,
            conversation_id = turn.conversation_id,
            parts = parts.len(),
            "agent answered"
        );
        Ok(sends)
    }

    /// Makes the answer in an agent room a structured message and queues what follows: a
    /// request is answered by the other agent.
    async fn as_agent_message(
        &self,
        conn: &mut AnyConnection,
        turn: &TurnJob,
        agent: &Agent,
        step: &Step,
        message: &mut ChannelMessage,
        text: &str,
    ) -> store::Result<()> {
        let kind = step.message_type();
        let payload = agent_rooms::answer_payload(step, text);
        let structured = agent_rooms::agent_message(&turn.agent, &turn.conversation_id, kind, payload);
        message.metadata.insert(agent_rooms::AGENT_MESSAGE.into(), structured);
        message.content = agent_rooms::readable(&agent.config.display_name(), kind, &message.content);
        if let Some(previous) = match step {
            Step::Response { request } => Some(*request),
            Step::Complete { delegation } => Some(*delegation),
            Step::Request { .. } => None,
        } {
            message.reply_to_id = Some(previous);
        }
        if let Step::Request { to } = step {
            let next = TurnJob {
                agent: to.clone(),
                conversation_id: turn.conversation_id.clone(),
                message_id: message.id,
                prompt: Some(text.to_string()),
                step: Some(Step::Response { request: message.id }),
            };
            let lane = queue::agent_queue(to, &turn.conversation_id);
            queue::enqueue(conn, &lane, &format!("turn:{to}:{}", message.id), next).await?;
        }
        Ok(())
    }

    /// Ends the turn with a notice in place of an answer.
    async fn end_with_notice(
        &self,
        job: &outbox::Job,
        turn: &TurnJob,
        to: &ChannelMessage,
        notice: String,
        streamer: &mut Streamer,
    ) -> JobOutcome {
        match self.commit_notice(job, turn, to, notice, streamer).await {
            Ok(()) => JobOutcome::Recorded,
            Err(error) => {
                streamer.record_landings().await;
                JobOutcome::Retry { error: error.to_string(), after: None }
            }
        }
    }

    /// Tells the room that a turn failed, instead of staying silent. A progress line the
    /// previews show is settled first, so that no tool seems to run on.
    async fn commit_notice(
        &self,
        job: &outbox::Job,
        turn: &TurnJob,
        to: &ChannelMessage,
        text: String,
        streamer: &Streamer,
    ) -> store::Result<()> {
        let mut tx = self.store.begin_write().await?;
        if let Some(settled) = streamer.settled_progress() {
            for target in streamer.targets().iter().filter(|t| streamer.previewed.contains(&t.channel_id)) {
                enqueue_send(&mut tx, target.adapter.name(), &target.channel_id, &settled).await?;
            }
        }
        post_notice(&mut tx, job, turn, to, text).await?;
        messages::record_landings(&mut tx, streamer.landings()).await?;
        outbox::mark_done(&mut tx, job.seq).await?;
        tx.commit().await?;
        self.wakers.wake();
        Ok(())
    }
}

/// A turn that was given up (its agent stayed unavailable past the retry limits): the
/// conversation is told, in the transaction that sets the turn aside.
pub(super) async fn report_dead_turn(
    agents: &Agents,
    conn: &mut AnyConnection,
    job: &outbox::Job,
    turn: &TurnJob,
) -> store::Result<()> {
    let Some(to) = messages::get(conn, turn.message_id).await? else { return Ok(()) };
    let name = agents.agents.get(&turn.agent).map_or(turn.agent.clone(), |agent| agent.config.display_name());
    let text = format!("{name} could not answer: it stayed unavailable. An admin can retry with `mosaic-as jobs`.");
    post_notice(conn, job, turn, &to, text).await
}

/// Logs a notice answering `to` in place of the turn's answer and sends it everywhere.
async fn post_notice(
    conn: &mut AnyConnection,
    job: &outbox::Job,
    turn: &TurnJob,
    to: &ChannelMessage,
    text: String,
) -> store::Result<()> {
    let mut notice =
        ChannelMessage::new(&to.channel_id, crate::hub::SYSTEM_SENDER, SenderType::System, text, ContentType::Text)
            .with_reply_to(to.id)
            .in_thread_of(to);
    notice.id = derived_id(to.id, &format!("{}:failed", job.dedupe_key));
    if messages::append(conn, &turn.conversation_id, "hub", &notice).await? {
        crate::hub::fan_out(conn, &turn.conversation_id, &notice).await?;
    }
    Ok(())
}

/// What a turn needs before it runs.
struct Prepared {
    /// The message the agent answers.
    message: ChannelMessage,
    context: TurnContext,
    targets: Vec<Target>,
    /// Where the message shows natively, to be marked read there.
    seen: Vec<typing::Seen>,
}

/// The person who started the turn, looked up only when the agent asks them something:
/// most turns ask nothing.
struct AskerOf<'a> {
    store: &'a store::Store,
    /// The message the turn answers.
    message: &'a ChannelMessage,
}

impl AskerOf<'_> {
    async fn find(&self) -> store::Result<Option<Asker>> {
        let mut conn = self.store.conn().await?;
        asker_of(&mut conn, self.message).await
    }
}

/// How far back a turn is followed to the person who started it (in agent rooms, an
/// agent's request answers a person's `!ask`, and so on).
const ASKER_HOPS: usize = 8;

/// The person whose message started the turn that answers `message`: its sender, or
/// when an agent or the service wrote it, the sender of the message it replies to.
async fn asker_of(conn: &mut AnyConnection, message: &ChannelMessage) -> store::Result<Option<Asker>> {
    let mut current = message.clone();
    for _ in 0..ASKER_HOPS {
        if current.sender_type == SenderType::User {
            let channel = current.origin_channel().to_string();
            let account =
                crate::store::accounts::account_for_identity(conn, &channel, &current.sender_id).await?.map(|a| a.id);
            let label = if channel == crate::matrix::CHANNEL {
                current.sender_id.clone()
            } else {
                let name = current.meta_str(crate::protocol::metadata_keys::SENDER_NAME).unwrap_or(&current.sender_id);
                format!("{name} ({})", crate::protocol::surface_title(&channel))
            };
            return Ok(Some(Asker { channel, sender_id: current.sender_id, account_id: account, label }));
        }
        let Some(parent) = current.reply_to_id else { return Ok(None) };
        let Some(found) = messages::get(conn, parent).await? else { return Ok(None) };
        current = found;
    }
    Ok(None)
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
