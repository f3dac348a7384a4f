//! The `command` runtime: runs a program once per turn and streams what it prints.
//!
//! The program (`command = ["python3", "agent.py"]`, run directly, without a shell) gets
//! the turn as one JSON object on its standard input, which is then closed:
//!
//! ```json
//! {
//!   "agent": "helper",
//!   "conversationId": "!room:example.org",
//!   "threadId": null,
//!   "systemPrompt": "You are helpful.",
//!   "messages": [
//!     {"role": "user", "name": "@alice:example.org", "content": "hi"},
//!     {"role": "assistant", "name": null, "content": "hello"},
//!     {"role": "user", "name": "@alice:example.org", "content": "what is 2 + 2?"}
//!   ]
//! }
//! ```
//!
//! `threadId`, `systemPrompt` and `name` are `null` when absent; `messages` is oldest first
//! and ends with the message to answer.
//!
//! Everything the program prints on standard output is the answer, streamed line by line
//! as it arrives (a final newline is dropped). Exit status 0 ends the turn; any other
//! status fails it, with the end of standard error as the reason. A program that runs
//! longer than `timeout_secs` is killed.
//!
//! The program runs confined (see `confine`): in the conversation's own folder, which is
//! also its `HOME`, with only the allowed environment.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use super::confine::Confinement;
use super::lines::{LineError, MAX_LINE_BYTES};
use super::runtime::{AgentError, AgentEvent, AgentRuntime, ContextMessage, Role, TurnContext};
use crate::config::AgentConfig;

/// Most bytes of standard error kept for the failure message.
const STDERR_TAIL_BYTES: usize = 2048;
/// Longest piece of output sent at once; a longer line is streamed in pieces so that a
/// program printing without newlines cannot make us buffer without bound.
const MAX_PIECE_BYTES: u64 = 16 * 1024;

/// Checks the settings this runtime needs: the config key at fault and why.
pub fn check_config(agent: &AgentConfig) -> Result<(), (&'static str, String)> {
    if agent.command.first().is_none_or(|program| program.trim().is_empty()) {
        return Err((
            "agent.command",
            "the command runtime needs the program to run and its arguments, e.g. command = [\"python3\", \"agent.py\"]"
                .into(),
        ));
    }
    Ok(())
}

pub struct CommandRuntime {
    program: String,
    args: Vec<String>,
    timeout: Duration,
    confinement: Confinement,
}

impl CommandRuntime {
    pub fn new(agent: &AgentConfig) -> Result<Self, String> {
        check_config(agent).map_err(|(key, message)| format!("{key}: {message}"))?;
        Ok(Self {
            program: agent.command[0].clone(),
            args: agent.command[1..].to_vec(),
            timeout: Duration::from_secs(agent.timeout_secs),
            confinement: Confinement::new(agent)?,
        })
    }

    /// Starts the program in the conversation's workspace, created if missing.
    fn spawn(&self, turn: &TurnContext) -> Result<Child, AgentError> {
        let workspace = self.confinement.workspace(&turn.conversation_id).map_err(|error| {
            tracing::error!(agent = turn.agent_id, session = turn.session_key(), %error, "cannot prepare the workspace");
            AgentError::Failed(format!("cannot prepare the workspace of this conversation: {error}"))
        })?;
        self.confinement
            .command(&self.program, &self.args, &workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The child must not outlive the turn, also when the turn's future is dropped.
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| AgentError::Unavailable(format!("cannot start {:?}: {error}", self.program)))
    }

    /// Feeds the turn, streams the output and waits for the exit, in one future so that
    /// a timeout around it covers all of them.
    async fn drive(
        &self,
        child: &mut Child,
        input: Vec<u8>,
        events: &mpsc::Sender<AgentEvent>,
    ) -> Result<(ExitStatus, String), AgentError> {
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(AgentError::Failed(format!("{:?} started without its standard streams", self.program)));
        };
        // `try_join` so that an abandoned turn stops at once instead of waiting for the exit.
        let ((), (), tail) = tokio::try_join!(
            write_input(stdin, input),
            stream_output(BufReader::new(stdout), events, MAX_LINE_BYTES),
            tail(stderr)
        )?;
        let status = child
            .wait()
            .await
            .map_err(|error| AgentError::Failed(format!("waiting for {:?}: {error}", self.program)))?;
        Ok((status, tail))
    }
}

#[async_trait]
impl AgentRuntime for CommandRuntime {
    async fn respond(&self, turn: &TurnContext, events: mpsc::Sender<AgentEvent>) -> Result<(), AgentError> {
        let input = serde_json::to_vec(&TurnInput::from(turn))
            .map_err(|error| AgentError::Failed(format!("cannot encode the turn: {error}")))?;
        let mut child = self.spawn(turn)?;
        tracing::debug!(agent = turn.agent_id, session = turn.session_key(), pid = child.id(), "command started");
        let outcome = tokio::time::timeout(self.timeout, self.drive(&mut child, input, &events)).await;
        let Ok(result) = outcome else {
            // Reap it too, so that no zombie is left behind.
            let _ = child.start_kill();
            let _ = child.wait().await;
            tracing::warn!(agent = turn.agent_id, session = turn.session_key(), "command timed out and was killed");
            return Err(AgentError::Failed(format!(
                "{:?} took longer than {} s and was stopped",
                self.program,
                self.timeout.as_secs()
            )));
        };
        let (status, stderr) = result?;
        tracing::debug!(agent = turn.agent_id, session = turn.session_key(), %status, "command exited");
        if status.success() {
            return Ok(());
        }
        let reason = if stderr.trim().is_empty() { "(no output on stderr)".into() } else { stderr };
        Err(AgentError::Failed(format!("{:?} failed ({status}): {}", self.program, reason.trim_end())))
    }
}

/// What the program reads on its standard input.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TurnInput<'a> {
    agent: &'a str,
    conversation_id: &'a str,
    thread_id: Option<&'a str>,
    system_prompt: Option<&'a str>,
    messages: Vec<MessageInput<'a>>,
}

#[derive(Serialize)]
struct MessageInput<'a> {
    role: &'static str,
    name: Option<&'a str>,
    content: &'a str,
}

impl<'a> From<&'a TurnContext> for TurnInput<'a> {
    fn from(turn: &'a TurnContext) -> Self {
        Self {
            agent: &turn.agent_id,
            conversation_id: &turn.conversation_id,
            thread_id: turn.thread_id.as_deref(),
            system_prompt: turn.system_prompt.as_deref(),
            messages: turn.messages.iter().map(MessageInput::from).collect(),
        }
    }
}

impl<'a> From<&'a ContextMessage> for MessageInput<'a> {
    fn from(message: &'a ContextMessage) -> Self {
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        Self { role, name: message.name.as_deref(), content: &message.content }
    }
}

/// Writes the turn and closes standard input. A program that exits without reading it
/// is not an error: its exit status tells.
async fn write_input(mut stdin: ChildStdin, input: Vec<u8>) -> Result<(), AgentError> {
    if let Err(error) = stdin.write_all(&input).await {
        tracing::debug!(%error, "command did not read its whole input");
    }
    drop(stdin);
    Ok(())
}

/// Streams standard output as `Text` pieces. The newline ending a line is sent at the
/// start of the next piece, so that every line goes out as soon as it is complete and
/// the answer does not end with a stray newline.
async fn stream_output(
    mut stdout: impl AsyncBufRead + Unpin,
    events: &mpsc::Sender<AgentEvent>,
    max_line: usize,
) -> Result<(), AgentError> {
    let mut decoder = Utf8Pieces::default();
    let mut newline_owed = false;
    let mut bytes = Vec::new();
    // Bytes of the line being read so far: lines are bounded as ACP's are.
    let mut line_bytes = 0;
    loop {
        bytes.clear();
        let read = (&mut stdout).take(MAX_PIECE_BYTES).read_until(b'\n', &mut bytes).await;
        let read = read.map_err(|error| AgentError::Failed(format!("reading the program's output: {error}")))?;
        if read == 0 {
            return send_piece(events, &decoder.finish(), &mut newline_owed, false).await;
        }
        let ends_line = bytes.last() == Some(&b'\n');
        if ends_line {
            bytes.pop();
        }
        line_bytes += bytes.len();
        if line_bytes > max_line {
            return Err(AgentError::Failed(LineError::TooLong { limit: max_line }.to_string()));
        }
        if ends_line {
            line_bytes = 0;
        }
        let text = decoder.push(&bytes);
        send_piece(events, &text, &mut newline_owed, ends_line).await?;
    }
}

async fn send_piece(
    events: &mpsc::Sender<AgentEvent>,
    text: &str,
    newline_owed: &mut bool,
    ends_line: bool,
) -> Result<(), AgentError> {
    let mut piece = String::with_capacity(text.len() + 1);
    if *newline_owed && (ends_line || !text.is_empty()) {
        piece.push('\n');
        *newline_owed = false;
    }
    piece.push_str(text);
    *newline_owed |= ends_line;
    if piece.is_empty() {
        return Ok(());
    }
    events.send(AgentEvent::Text(piece)).await.map_err(|_| AgentError::Failed("turn abandoned".into()))
}

/// Decodes UTF-8 that arrives in pieces, holding back a character cut in two.
#[derive(Default)]
struct Utf8Pieces {
    held: Vec<u8>,
}

impl Utf8Pieces {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.held.extend_from_slice(bytes);
        let complete = match std::str::from_utf8(&self.held) {
            Ok(_) => self.held.len(),
            // Only an incomplete character at the very end is worth waiting for.
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            Err(_) => self.held.len(),
        };
        let rest = self.held.split_off(complete);
        let text = String::from_utf8_lossy(&self.held).into_owned();
        self.held = rest;
        text
    }

    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.held).into_owned();
        self.held.clear();
        text
    }
}

/// Reads a stream to its end, keeping only its last `STDERR_TAIL_BYTES`.
async fn tail(mut stream: impl AsyncRead + Unpin) -> Result<String, AgentError> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(read @ 1..) = stream.read(&mut chunk).await {
        kept.extend_from_slice(&chunk[..read]);
        if kept.len() > STDERR_TAIL_BYTES {
            kept.drain(..kept.len() - STDERR_TAIL_BYTES);
        }
    }
    Ok(String::from_utf8_lossy(&kept).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pieces_of(output: &'static [u8]) -> Vec<String> {
        let (tx, mut rx) = mpsc::channel(64);
        stream_output(output, &tx, 1024).await.unwrap();
        drop(tx);
        let mut pieces = Vec::new();
        while let Some(AgentEvent::Text(piece)) = rx.recv().await {
            pieces.push(piece);
        }
        pieces
    }

    #[tokio::test]
    async fn lines_stream_with_newlines_carried_to_the_next_piece() {
        assert_eq!(pieces_of(b"one\ntwo\n\nthree\n").await, ["one", "\ntwo", "\n", "\nthree"]);
        assert_eq!(pieces_of(b"\nlast without newline").await, ["\nlast without newline"]);
        assert!(pieces_of(b"").await.is_empty());
    }

    #[tokio::test]
    async fn a_line_past_the_limit_ends_the_turn() {
        let (tx, mut rx) = mpsc::channel(64);
        let output = format!("short\n{}\n", "x".repeat(100));
        let error = stream_output(output.as_bytes(), &tx, 64).await.unwrap_err();
        assert!(error.to_string().contains("longer than 64 bytes"), "{error}");
        let Some(AgentEvent::Text(first)) = rx.recv().await else { panic!("the first line was streamed") };
        assert_eq!(first, "short");
        let fits = format!("{}\n{}", "y".repeat(64), "z".repeat(64));
        assert!(stream_output(fits.as_bytes(), &tx, 64).await.is_ok(), "lines at the limit pass");
    }

    #[test]
    fn a_character_cut_in_two_waits_for_its_rest() {
        let mut decoder = Utf8Pieces::default();
        let bytes = "é".as_bytes();
        assert_eq!(decoder.push(&bytes[..1]), "");
        assert_eq!(decoder.push(&bytes[1..]), "é");
        assert_eq!(decoder.push(b"\xff"), "\u{fffd}");
    }

    #[test]
    fn the_command_must_be_set() {
        let mut agent = AgentConfig::new("c", "C", "command");
        assert_eq!(check_config(&agent).unwrap_err().0, "agent.command");
        agent.command = vec!["python3".into(), "agent.py".into()];
        assert!(check_config(&agent).is_ok());
    }
}
