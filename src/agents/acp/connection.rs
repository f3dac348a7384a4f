//! One running agent process and the JSON-RPC connection over its standard streams:
//! newline-delimited JSON on stdin/stdout, free-form logs on stderr.
//!
//! A reader task dispatches what the agent sends: responses go to the request waiting for
//! them, session updates and permission questions go to the turn running in their
//! session, and requests for things we do not offer are refused at once.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::agents::lines::{self, LineError};

use super::wire::{self, Message, PermissionParams, RpcError, SessionNotification, SessionUpdate};

/// Most bytes of the agent's standard error kept to explain why it died.
const STDERR_TAIL_BYTES: usize = 2048;
/// How long a dead agent's remaining stderr is awaited before its turns are failed.
const STDERR_GRACE: Duration = Duration::from_millis(500);
/// Longest line of the agent's standard error logged; longer ones are left out.
const STDERR_LINE_BYTES: usize = 16 * 1024;

/// What the agent sends to the turn running in a session.
#[derive(Debug)]
pub enum ToTurn {
    Update(SessionUpdate),
    /// A permission question; `id` is the JSON-RPC id to answer.
    Permission {
        id: Value,
        params: PermissionParams,
    },
    /// `!stop` was asked: pending questions must now be answered "cancelled".
    Cancel,
}

/// Why a request got no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The process is gone; the text says what is known about why.
    #[error("{0}")]
    Gone(String),
    /// The agent answered with a JSON-RPC error.
    #[error("{0}")]
    Rpc(RpcError),
    /// The agent broke the protocol (a line past the limit) and its process was let go:
    /// trying again would only repeat it.
    #[error("{0}")]
    Broken(String),
}

type Reply = oneshot::Sender<Result<Value, RpcError>>;

/// State shared with the reader task. The maps are `None` once the process is gone, so
/// that nobody waits for an answer that cannot come.
struct Shared {
    agent: String,
    program: String,
    writer: mpsc::UnboundedSender<String>,
    pending: Mutex<Option<HashMap<u64, Reply>>>,
    routes: Mutex<Option<HashMap<String, mpsc::UnboundedSender<ToTurn>>>>,
    stderr_tail: Mutex<String>,
    /// Why the connection was dropped by us, when the agent broke the protocol.
    broken: Mutex<Option<String>>,
}

/// A running agent process. Dropping it kills the process.
pub struct Connection {
    shared: Arc<Shared>,
    child: Mutex<Child>,
    next_id: AtomicU64,
    /// Session key (conversation and thread) → ACP session id.
    sessions: Mutex<HashMap<String, String>>,
    /// Held while a session is created, so that one key never gets two sessions.
    creating: tokio::sync::Mutex<()>,
}

impl Connection {
    /// Starts the program (`command`, confined by the caller; `program` names it in
    /// messages); the caller then calls `initialize`.
    pub fn spawn(agent: &str, program: &str, mut command: Command) -> std::io::Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The process lives as long as this connection, and no longer than us.
            .kill_on_drop(true)
            .spawn()?;
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (Some(stdin), Some(stdout), Some(stderr)) = (stdin, stdout, stderr) else {
            return Err(std::io::Error::other("the process started without its standard streams"));
        };
        let (writer, lines) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            agent: agent.to_string(),
            program: program.to_string(),
            writer,
            pending: Mutex::new(Some(HashMap::new())),
            routes: Mutex::new(Some(HashMap::new())),
            stderr_tail: Mutex::new(String::new()),
            broken: Mutex::new(None),
        });
        tracing::info!(agent, pid = child.id(), "acp agent started");
        tokio::spawn(write_lines(stdin, lines));
        let stderr_done = tokio::spawn(read_stderr(shared.clone(), stderr));
        tokio::spawn(read_messages(shared.clone(), stdout, stderr_done));
        Ok(Self {
            shared,
            child: Mutex::new(child),
            next_id: AtomicU64::new(0),
            sessions: Mutex::default(),
            creating: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether the process still runs and its output is still read.
    pub fn is_alive(&self) -> bool {
        let exited = lock(&self.child).try_wait().map_or(true, |status| status.is_some());
        !exited && lock(&self.shared.pending).is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        lock(&self.child).id()
    }

    /// Sends a request and waits for its result.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        match lock(&self.shared.pending).as_mut() {
            Some(pending) => pending.insert(id, reply),
            None => return Err(self.shared.gone()),
        };
        self.shared.send(&wire::request(id, method, params));
        match answer.await {
            Ok(result) => result.map_err(CallError::Rpc),
            Err(_) => Err(self.shared.gone()),
        }
    }

    pub fn notify(&self, method: &str, params: Value) {
        self.shared.send(&wire::notification(method, params));
    }

    /// Answers a request of the agent.
    pub fn respond(&self, id: &Value, result: Value) {
        self.shared.send(&wire::response(id, result));
    }

    /// The session of a key, if one was created on this process.
    pub fn session(&self, key: &str) -> Option<String> {
        lock(&self.sessions).get(key).cloned()
    }

    /// Serializes session creation; hold the guard from looking a key up to remembering it.
    pub async fn creating_sessions(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.creating.lock().await
    }

    pub fn remember_session(&self, key: &str, session_id: &str) {
        lock(&self.sessions).insert(key.to_string(), session_id.to_string());
    }

    /// Routes what the agent sends about `session_id` to the returned receiver until
    /// `close_route`. `None` when the process is gone or a turn already runs there.
    pub fn open_route(&self, session_id: &str) -> Result<mpsc::UnboundedReceiver<ToTurn>, RouteError> {
        let mut routes = lock(&self.shared.routes);
        let routes = routes.as_mut().ok_or_else(|| RouteError::Gone(self.shared.exit_reason()))?;
        if routes.get(session_id).is_some_and(|route| !route.is_closed()) {
            return Err(RouteError::Busy);
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        routes.insert(session_id.to_string(), sender);
        Ok(receiver)
    }

    pub fn close_route(&self, session_id: &str) {
        if let Some(routes) = lock(&self.shared.routes).as_mut() {
            routes.remove(session_id);
        }
    }

    /// Asks the agent to stop the turn running for `key`; `false` when none runs.
    pub fn cancel(&self, key: &str) -> bool {
        let Some(session_id) = self.session(key) else { return false };
        let route = lock(&self.shared.routes).as_ref().and_then(|routes| routes.get(&session_id).cloned());
        let Some(route) = route else { return false };
        self.notify("session/cancel", wire::cancel_params(&session_id));
        route.send(ToTurn::Cancel).is_ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    Gone(String),
    #[error("another turn is still running in this session")]
    Busy,
}

impl Shared {
    fn send(&self, message: &Value) {
        // A closed writer means the process is going away; the reader then fails
        // whatever waits, so there is nothing more to do here.
        let _ = self.writer.send(format!("{message}\n"));
    }

    /// Why a request got no answer: the protocol was broken, or the process ended.
    fn gone(&self) -> CallError {
        match lock(&self.broken).clone() {
            Some(why) => CallError::Broken(why),
            None => CallError::Gone(self.exit_reason()),
        }
    }

    fn exit_reason(&self) -> String {
        let tail = lock(&self.stderr_tail);
        let tail = tail.trim();
        if tail.is_empty() {
            format!("the agent process {:?} exited", self.program)
        } else {
            format!("the agent process {:?} exited; its last error output: {tail}", self.program)
        }
    }

    fn dispatch(&self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        let message: Message = match serde_json::from_str(line) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(agent = self.agent, %error, "acp agent sent a line that is not JSON-RPC");
                return;
            }
        };
        match (message.method, message.id) {
            (Some(method), Some(id)) => self.on_request(&method, id, message.params),
            (Some(method), None) => self.on_notification(&method, message.params),
            (None, Some(id)) => self.on_response(&id, message.result, message.error),
            (None, None) => tracing::warn!(agent = self.agent, "acp agent sent a message without method or id"),
        }
    }

    fn on_response(&self, id: &Value, result: Option<Value>, error: Option<RpcError>) {
        let reply = id.as_u64().and_then(|id| lock(&self.pending).as_mut()?.remove(&id));
        let Some(reply) = reply else {
            tracing::debug!(agent = self.agent, %id, "acp response to no pending request");
            return;
        };
        // A waiter that gave up (its turn was dropped) no longer needs the answer.
        let _ = reply.send(match error {
            Some(error) => Err(error),
            None => Ok(result.unwrap_or(Value::Null)),
        });
    }

    fn on_notification(&self, method: &str, params: Value) {
        if method != "session/update" {
            tracing::debug!(agent = self.agent, method, "acp notification ignored");
            return;
        }
        match serde_json::from_value::<SessionNotification>(params) {
            Ok(notification) => {
                if !self.route(&notification.session_id, ToTurn::Update(notification.update)) {
                    tracing::debug!(agent = self.agent, session = notification.session_id, "acp update outside a turn");
                }
            }
            Err(error) => tracing::warn!(agent = self.agent, %error, "acp session/update not understood"),
        }
    }

    fn on_request(&self, method: &str, id: Value, params: Value) {
        if method != "session/request_permission" {
            // We advertised no file system and no terminal: refuse anything else.
            tracing::debug!(agent = self.agent, method, "acp request refused");
            self.send(&wire::error_response(&id, wire::METHOD_NOT_FOUND, &format!("method not found: {method}")));
            return;
        }
        let params: PermissionParams = match serde_json::from_value(params) {
            Ok(params) => params,
            Err(error) => {
                self.send(&wire::error_response(&id, wire::INVALID_PARAMS, &error.to_string()));
                return;
            }
        };
        let session_id = params.session_id.clone();
        if !self.route(&session_id, ToTurn::Permission { id: id.clone(), params }) {
            // Nobody is there to ask: the turn is over.
            self.send(&wire::response(&id, wire::permission_outcome(None)));
        }
    }

    fn route(&self, session_id: &str, message: ToTurn) -> bool {
        let routes = lock(&self.routes);
        let route = routes.as_ref().and_then(|routes| routes.get(session_id));
        route.is_some_and(|route| route.send(message).is_ok())
    }

    /// The process is gone: fail every waiter and close every turn's route.
    fn close(&self) {
        lock(&self.pending).take();
        lock(&self.routes).take();
        tracing::info!(agent = self.agent, "acp agent output ended");
    }
}

async fn write_lines(mut stdin: ChildStdin, mut lines: mpsc::UnboundedReceiver<String>) {
    while let Some(line) = lines.recv().await {
        if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
            break;
        }
    }
}

async fn read_messages(shared: Arc<Shared>, stdout: ChildStdout, stderr_done: JoinHandle<()>) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        match lines::read_line(&mut reader, &mut line, lines::MAX_LINE_BYTES).await {
            Ok(true) => shared.dispatch(&String::from_utf8_lossy(&line)),
            Ok(false) => break,
            Err(error @ LineError::TooLong { .. }) => {
                // No message can be that long; the rest of the stream cannot be trusted
                // either. The process is let go (a new one starts for the next turn).
                tracing::warn!(agent = shared.agent, %error, "acp agent broke the protocol; stopping it");
                *lock(&shared.broken) = Some(error.to_string());
                shared.close();
                return;
            }
            Err(error) => {
                tracing::warn!(agent = shared.agent, %error, "reading the acp agent's output failed");
                break;
            }
        }
    }
    // The agent's last words on stderr explain its exit: give them a moment to arrive.
    let _ = tokio::time::timeout(STDERR_GRACE, stderr_done).await;
    shared.close();
}

/// Logs the agent's diagnostics and keeps their end to explain a crash.
async fn read_stderr(shared: Arc<Shared>, stderr: ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut bytes = Vec::new();
    loop {
        let line = match lines::read_line(&mut reader, &mut bytes, STDERR_LINE_BYTES).await {
            Ok(true) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(false) | Err(LineError::Io(_)) => break,
            Err(LineError::TooLong { .. }) => {
                if lines::skip_line(&mut reader).await.is_err() {
                    break;
                }
                "(an overlong line was left out)".to_string()
            }
        };
        tracing::debug!(agent = shared.agent, line, "acp agent stderr");
        let mut tail = lock(&shared.stderr_tail);
        tail.push_str(&line);
        tail.push('\n');
        if tail.len() > STDERR_TAIL_BYTES {
            let cut = tail.len() - STDERR_TAIL_BYTES;
            let cut = (cut..tail.len()).find(|&i| tail.is_char_boundary(i)).unwrap_or(tail.len());
            tail.drain(..cut);
        }
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its map valid.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
