//! The runtimes that run agent programs: `command` (a process per turn) and `acp` (a
//! long-running Agent Client Protocol agent), against the fakes in `tests/fixtures/`,
//! and how those programs are confined.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mosaic_as::agents::acp::AcpRuntime;
use mosaic_as::agents::command::CommandRuntime;
use mosaic_as::agents::confine::{self, path_component, service_uid};
use mosaic_as::agents::runtime::PermissionRequest;
use mosaic_as::agents::{AgentError, AgentEvent, AgentRuntime, ContextMessage, Role, TurnContext};
use mosaic_as::config::AgentConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Longest any test step may take before the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Where the agents of tests that do not look at their folders work.
fn shared_workspace() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("process_runtimes")
}

fn agent(runtime: &str, script: &str, args: &[&str]) -> AgentConfig {
    let mut agent = AgentConfig::new("helper", "Helper", runtime);
    agent.workspace = Some(shared_workspace());
    agent.command = vec!["python3".into(), fixture(script)];
    agent.command.extend(args.iter().map(|a| a.to_string()));
    agent
}

fn user(name: &str, content: &str) -> ContextMessage {
    ContextMessage { role: Role::User, name: Some(name.into()), content: content.into() }
}

fn turn(thread: Option<&str>, persona: Option<&str>, messages: Vec<ContextMessage>) -> TurnContext {
    TurnContext {
        agent_id: "helper".into(),
        conversation_id: "!room:example.org".into(),
        thread_id: thread.map(str::to_string),
        system_prompt: persona.map(str::to_string),
        messages,
    }
}

fn ask(text: &str) -> TurnContext {
    turn(None, None, vec![user("@alice:example.org", text)])
}

/// A turn running in the background and the events it streams.
struct Running {
    task: JoinHandle<Result<(), AgentError>>,
    events: mpsc::Receiver<AgentEvent>,
}

fn start(runtime: Arc<dyn AgentRuntime>, turn: TurnContext) -> Running {
    let (sender, events) = mpsc::channel(64);
    let task = tokio::spawn(async move { runtime.respond(&turn, sender).await });
    Running { task, events }
}

impl Running {
    async fn next(&mut self) -> Option<AgentEvent> {
        tokio::time::timeout(PATIENCE, self.events.recv()).await.expect("the runtime went quiet")
    }

    async fn result(self) -> Result<(), AgentError> {
        tokio::time::timeout(PATIENCE, self.task).await.expect("the turn did not end").unwrap()
    }
}

/// How the test answers permission questions.
#[derive(Clone, Copy)]
enum Answer<'a> {
    Choose(&'a str),
    Refuse,
    /// Keep the question open without answering.
    Hold,
}

/// Everything a finished turn streamed.
#[derive(Default)]
struct Seen {
    text: String,
    pieces: usize,
    tools: Vec<(String, String)>,
    plans: Vec<Vec<String>>,
    questions: Vec<(String, Vec<String>)>,
    held: Vec<PermissionRequest>,
}

impl Seen {
    fn record(&mut self, event: AgentEvent, answer: Answer) {
        match event {
            AgentEvent::Text(piece) => {
                self.text.push_str(&piece);
                self.pieces += 1;
            }
            AgentEvent::ToolCall { title, status } => self.tools.push((title, status)),
            AgentEvent::Plan(entries) => self.plans.push(entries),
            AgentEvent::Permission(request) => {
                let ids = request.options.iter().map(|o| o.id.clone()).collect();
                self.questions.push((request.title.clone(), ids));
                match answer {
                    Answer::Choose(id) => request.answer.send(Some(id.to_string())).unwrap(),
                    Answer::Refuse => request.answer.send(None).unwrap(),
                    Answer::Hold => self.held.push(request),
                }
            }
            AgentEvent::Usage(_) => {}
        }
    }
}

async fn run(runtime: &Arc<dyn AgentRuntime>, turn: TurnContext, answer: Answer<'_>) -> (Seen, Result<(), AgentError>) {
    let mut running = start(runtime.clone(), turn);
    let mut seen = Seen::default();
    while let Some(event) = running.next().await {
        seen.record(event, answer);
    }
    (seen, running.result().await)
}

/// The number after `word ` in `text`.
fn number_after(text: &str, word: &str) -> u32 {
    let rest =
        &text[text.find(&format!("{word} ")).unwrap_or_else(|| panic!("no {word:?} in {text:?}")) + word.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// Whether a process is gone: no longer listed, or dead and waiting to be reaped.
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

async fn wait_until_gone(pid: u32) -> bool {
    for _ in 0..100 {
        if is_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn command_runtime(args: &[&str]) -> Arc<dyn AgentRuntime> {
    Arc::new(CommandRuntime::new(&agent("command", "fake_command_agent.py", args)).unwrap())
}

fn acp_runtime(configure: impl FnOnce(&mut AgentConfig)) -> Arc<dyn AgentRuntime> {
    let mut config = agent("acp", "fake_acp_agent.py", &[]);
    configure(&mut config);
    Arc::new(AcpRuntime::new(&config).unwrap())
}

// --- command ---

#[tokio::test]
async fn command_streams_lines_in_order_while_the_program_runs() {
    let mut running = start(command_runtime(&["echo"]), ask("hello"));
    let Some(AgentEvent::Text(first)) = running.next().await else { panic!("no text") };
    assert_eq!(first, "agent: helper");
    assert!(!running.task.is_finished(), "the first line must arrive before the program exits");
    let mut text = first;
    let mut pieces = 1;
    while let Some(event) = running.next().await {
        let AgentEvent::Text(piece) = event else { panic!("unexpected {event:?}") };
        text.push_str(&piece);
        pieces += 1;
    }
    running.result().await.unwrap();
    assert_eq!(pieces, 5);
    assert_eq!(
        text,
        "agent: helper\nconversation: !room:example.org thread: None\nsystem: None\n\
         messages: 1; last from user @alice:example.org\nyou said: hello"
    );
}

#[tokio::test]
async fn command_gets_the_turn_as_json_on_stdin() {
    let history = vec![
        user("@alice:example.org", "hi"),
        ContextMessage { role: Role::Assistant, name: None, content: "hello".into() },
        user("@bob:example.org", "what is 2 + 2?"),
    ];
    let (seen, result) =
        run(&command_runtime(&["echo"]), turn(Some("$thread"), Some("Be brief."), history), Answer::Refuse).await;
    result.unwrap();
    assert!(seen.text.contains("conversation: !room:example.org thread: $thread"), "{}", seen.text);
    assert!(seen.text.contains("system: Be brief."), "{}", seen.text);
    assert!(seen.text.contains("messages: 3; last from user @bob:example.org"), "{}", seen.text);
    assert!(seen.text.ends_with("you said: what is 2 + 2?"), "{}", seen.text);
}

#[tokio::test]
async fn command_exiting_with_an_error_fails_with_its_stderr() {
    let (seen, result) = run(&command_runtime(&["fail"]), ask("hi"), Answer::Refuse).await;
    assert_eq!(seen.text, "partial answer");
    let Err(AgentError::Failed(message)) = result else { panic!("expected Failed, got {result:?}") };
    assert!(message.contains("something went wrong"), "{message}");
    assert!(message.contains('3'), "the exit code is named: {message}");
}

#[tokio::test]
async fn command_missing_program_is_unavailable() {
    let mut config = AgentConfig::new("helper", "Helper", "command");
    config.workspace = Some(shared_workspace());
    config.command = vec!["mosaic-no-such-program".into()];
    let runtime: Arc<dyn AgentRuntime> = Arc::new(CommandRuntime::new(&config).unwrap());
    let (_, result) = run(&runtime, ask("hi"), Answer::Refuse).await;
    let Err(AgentError::Unavailable(message)) = result else { panic!("expected Unavailable, got {result:?}") };
    assert!(message.contains("mosaic-no-such-program"), "{message}");
}

#[tokio::test]
async fn command_taking_too_long_is_killed() {
    let mut config = agent("command", "fake_command_agent.py", &["sleep"]);
    config.timeout_secs = 1;
    let runtime: Arc<dyn AgentRuntime> = Arc::new(CommandRuntime::new(&config).unwrap());
    let (seen, result) = run(&runtime, ask("hi"), Answer::Refuse).await;
    let Err(AgentError::Failed(message)) = result else { panic!("expected Failed, got {result:?}") };
    assert!(message.contains("took longer than 1 s"), "{message}");
    assert!(wait_until_gone(number_after(&seen.text, "pid")).await, "the program still runs");
}

#[tokio::test]
async fn command_line_past_the_limit_ends_the_turn() {
    let mut config = agent("command", "fake_command_agent.py", &[]);
    // 1 MiB and a bit without a newline, then a program that would never end.
    config.command =
        ["sh", "-c", "cat > /dev/null; head -c 1100000 /dev/zero | tr '\\0' x; sleep 600"].map(String::from).to_vec();
    let runtime: Arc<dyn AgentRuntime> = Arc::new(CommandRuntime::new(&config).unwrap());
    let (seen, result) = run(&runtime, ask("hello"), Answer::Refuse).await;
    assert!(seen.text.len() <= 1024 * 1024, "{} bytes streamed", seen.text.len());
    let Err(AgentError::Failed(message)) = result else { panic!("expected Failed, got {result:?}") };
    assert!(message.contains("longer than 1048576 bytes"), "{message}");
}

#[tokio::test]
async fn dropping_a_command_turn_kills_the_program() {
    let mut running = start(command_runtime(&["sleep"]), ask("hi"));
    let Some(AgentEvent::Text(first)) = running.next().await else { panic!("no text") };
    running.task.abort();
    assert!(wait_until_gone(number_after(&first, "pid")).await, "the program outlived its turn");
}

// --- acp ---

#[tokio::test]
async fn acp_streams_text_tools_and_a_plan_and_relays_permission() {
    let runtime = acp_runtime(|_| {});
    let (seen, result) = run(&runtime, ask("hello agent"), Answer::Choose("allow")).await;
    result.unwrap();
    assert!(seen.pieces > 3, "the answer is streamed in pieces");
    assert!(seen.text.starts_with("You said: hello agent\n"), "{}", seen.text);
    assert!(seen.text.contains("permission: allowed"), "{}", seen.text);
    assert_eq!(seen.questions, [("Run the fake tool".to_string(), vec!["allow".to_string(), "reject".to_string()])]);
    let tool = |status: &str| ("Run the fake tool".to_string(), status.to_string());
    assert_eq!(seen.tools, [tool("pending"), tool("completed")]);
    assert_eq!(seen.plans, [vec!["Read the prompt".to_string(), "Answer it".to_string()]]);
}

#[tokio::test]
async fn acp_unanswered_permission_is_rejected() {
    let runtime = acp_runtime(|_| {});
    let (seen, result) = run(&runtime, ask("hello"), Answer::Refuse).await;
    result.unwrap();
    assert!(seen.text.contains("permission: rejected"), "{}", seen.text);
    assert_eq!(seen.tools.last().unwrap().1, "failed");
}

#[tokio::test]
async fn acp_permission_question_times_out_as_a_rejection() {
    let runtime = acp_runtime(|config| {
        config.permission_timeout_secs = 2;
        // Waiting for a person does not count against the turn.
        config.timeout_secs = 1;
    });
    let (seen, result) = run(&runtime, ask("hello"), Answer::Hold).await;
    result.unwrap();
    assert_eq!(seen.held.len(), 1);
    assert!(seen.text.contains("permission: rejected"), "{}", seen.text);
}

#[tokio::test]
async fn acp_permission_questions_extend_a_turn_by_the_budget_only() {
    let runtime = acp_runtime(|config| {
        // The question alone would wait longer than the test's patience; the budget
        // of the whole turn ends it first.
        config.permission_timeout_secs = 600;
        config.max_permission_wait_secs = 2;
        config.timeout_secs = 1;
    });
    let (seen, result) = run(&runtime, ask("hello"), Answer::Hold).await;
    assert_eq!(seen.held.len(), 1);
    let Err(AgentError::Failed(message)) = result else { panic!("expected Failed, got {result:?}") };
    assert!(message.contains("took longer than 1 s"), "{message}");
}

#[tokio::test]
async fn acp_line_past_the_limit_ends_the_turn_and_the_next_turn_gets_a_new_process() {
    let runtime = acp_runtime(|_| {});
    let (first, result) = run(&runtime, ask("first"), Answer::Choose("allow")).await;
    result.unwrap();
    let (seen, result) = run(&runtime, ask("send a huge-line"), Answer::Refuse).await;
    assert!(seen.text.len() < 1024 * 1024, "no part of the long line arrives: {} bytes", seen.text.len());
    let Err(AgentError::Failed(message)) = result else { panic!("expected Failed, got {result:?}") };
    assert!(message.contains("longer than 1048576 bytes"), "{message}");

    let (seen, result) = run(&runtime, ask("again"), Answer::Choose("allow")).await;
    result.unwrap();
    assert_ne!(number_after(&seen.text, "pid"), number_after(&first.text, "pid"), "{}", seen.text);
}

#[tokio::test]
async fn acp_session_is_kept_per_thread_and_asks_once() {
    let runtime = acp_runtime(|_| {});
    let history = vec![
        user("@alice:example.org", "earlier question"),
        ContextMessage { role: Role::Assistant, name: None, content: "earlier answer".into() },
        user("@alice:example.org", "first"),
    ];
    let (seen, result) = run(&runtime, turn(None, Some("Be brief."), history), Answer::Choose("allow")).await;
    result.unwrap();
    assert!(seen.text.contains("preamble: Be brief."), "{}", seen.text);
    assert!(seen.text.contains("[@alice:example.org] earlier question"), "{}", seen.text);
    assert!(seen.text.contains("[you] earlier answer"), "{}", seen.text);
    assert!(seen.text.contains("prompt 1 in session sess_1; sessions 1"), "{}", seen.text);

    let (seen, result) =
        run(&runtime, turn(None, Some("Be brief."), vec![user("@a:x", "second")]), Answer::Refuse).await;
    result.unwrap();
    assert!(seen.questions.is_empty(), "the agent asked only once per session");
    assert!(!seen.text.contains("preamble"), "{}", seen.text);
    assert!(seen.text.contains("permission: not asked"), "{}", seen.text);
    assert!(seen.text.contains("prompt 2 in session sess_1; sessions 1"), "{}", seen.text);

    let threaded = turn(Some("$thread"), None, vec![user("@a:x", "in a thread")]);
    let (seen, result) = run(&runtime, threaded, Answer::Choose("allow")).await;
    result.unwrap();
    assert_eq!(seen.questions.len(), 1, "a new session asks again");
    assert!(seen.text.contains("prompt 1 in session sess_2; sessions 2"), "{}", seen.text);
}

#[tokio::test]
async fn acp_cancel_stops_a_running_prompt() {
    let runtime = acp_runtime(|_| {});
    let question = ask("be slow");
    let key = question.session_key();
    let mut running = start(runtime.clone(), question);
    let mut seen = Seen::default();
    while !seen.text.contains("tick 1") {
        seen.record(running.next().await.expect("the prompt ended early"), Answer::Refuse);
    }
    runtime.cancel(&key).await;
    while let Some(event) = running.next().await {
        seen.record(event, Answer::Refuse);
    }
    running.result().await.unwrap();
    assert!(!seen.text.contains("tick 150"), "streaming went on after cancel");
    assert!(!seen.text.contains("permission:"), "{}", seen.text);
}

#[tokio::test]
async fn acp_cancel_answers_an_open_permission_question() {
    let runtime = acp_runtime(|_| {});
    let question = ask("hello");
    let key = question.session_key();
    let mut running = start(runtime.clone(), question);
    let mut seen = Seen::default();
    while seen.held.is_empty() {
        seen.record(running.next().await.expect("no permission question"), Answer::Hold);
    }
    runtime.cancel(&key).await;
    while let Some(event) = running.next().await {
        seen.record(event, Answer::Hold);
    }
    running.result().await.unwrap();
    assert!(!seen.text.contains("permission:"), "{}", seen.text);
    assert_eq!(seen.tools.last().unwrap().1, "failed");
}

#[tokio::test]
async fn acp_agent_killed_between_turns_is_restarted() {
    let runtime = acp_runtime(|_| {});
    let (seen, result) = run(&runtime, ask("first"), Answer::Choose("allow")).await;
    result.unwrap();
    let pid = number_after(&seen.text, "pid");
    let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    assert!(wait_until_gone(pid).await);

    let (seen, result) = run(&runtime, ask("second"), Answer::Choose("allow")).await;
    result.unwrap();
    assert_ne!(number_after(&seen.text, "pid"), pid);
    assert!(seen.text.contains("prompt 1 in session sess_1"), "a new process has new sessions: {}", seen.text);
}

#[tokio::test]
async fn acp_agent_dying_mid_turn_is_unavailable_and_restarted() {
    let runtime = acp_runtime(|_| {});
    let (seen, result) = run(&runtime, ask("please crash"), Answer::Refuse).await;
    assert_eq!(seen.text, "about to crash\n");
    let Err(AgentError::Unavailable(message)) = result else { panic!("expected Unavailable, got {result:?}") };
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("crashing on purpose"), "the agent's last stderr is kept: {message}");

    let (seen, result) = run(&runtime, ask("again"), Answer::Choose("allow")).await;
    result.unwrap();
    assert!(seen.text.contains("permission: allowed"), "{}", seen.text);
}

#[tokio::test]
async fn acp_error_response_fails_the_turn() {
    let runtime = acp_runtime(|_| {});
    let (_, result) = run(&runtime, ask("please fail"), Answer::Refuse).await;
    let Err(AgentError::Failed(message)) = result else { panic!("expected Failed, got {result:?}") };
    assert!(message.contains("failed on purpose"), "{message}");
}

#[tokio::test]
async fn acp_file_system_requests_are_refused() {
    let runtime = acp_runtime(|_| {});
    let (seen, result) = run(&runtime, ask("probe-fs"), Answer::Choose("allow")).await;
    result.unwrap();
    assert!(seen.text.contains("fs error: -32601"), "{}", seen.text);
}

#[tokio::test]
async fn acp_missing_program_is_unavailable() {
    let mut config = AgentConfig::new("helper", "Helper", "acp");
    config.workspace = Some(shared_workspace());
    config.command = vec!["mosaic-no-such-agent".into()];
    let runtime: Arc<dyn AgentRuntime> = Arc::new(AcpRuntime::new(&config).unwrap());
    let (_, result) = run(&runtime, ask("hi"), Answer::Refuse).await;
    let Err(AgentError::Unavailable(message)) = result else { panic!("expected Unavailable, got {result:?}") };
    assert!(message.contains("mosaic-no-such-agent"), "{message}");
}

// --- confinement ---

/// A variable of the service's environment that no agent program may see.
const CANARY: &str = "MOSAIC_TEST_CANARY";
/// Set in the copy of this test binary that plays the service for
/// `a_command_agent_is_confined_and_cannot_read_the_service`.
const PLAYING_THE_SERVICE: &str = "MOSAIC_TEST_PLAYING_THE_SERVICE";

/// A `command` agent running `confined_agent.sh`, with its workspace in `root`.
/// Its script is written next to `root`, where the user `nobody` can read it too.
fn confined_agent(root: &Path) -> AgentConfig {
    let script = root.parent().expect("root has a parent").join("confined_agent.sh");
    std::fs::write(&script, include_str!("fixtures/confined_agent.sh")).unwrap();
    let mut agent = AgentConfig::new("helper", "Helper", "command");
    agent.command = vec!["/bin/sh".into(), script.display().to_string()];
    agent.workspace = Some(root.to_path_buf());
    agent
}

/// A folder below /tmp that every user may pass through. The checkout (and its target
/// folder) may sit below a folder only its owner can enter, as `mktemp -d` makes them,
/// where the user `nobody` of these tests could neither run a program nor read a script.
fn open_folder() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("mosaic-confine-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// What `confined_agent.sh` reported.
#[derive(Debug)]
struct Report {
    cwd: PathBuf,
    uid: u32,
    env: BTreeMap<String, String>,
    /// `readable` or `denied`.
    parent_environ: String,
    canary_seen: bool,
}

impl Report {
    fn parse(text: &str) -> Self {
        let mut report = Report {
            cwd: PathBuf::new(),
            uid: u32::MAX,
            env: BTreeMap::new(),
            parent_environ: String::new(),
            canary_seen: false,
        };
        for line in text.lines() {
            if let Some(cwd) = line.strip_prefix("cwd: ") {
                report.cwd = cwd.into();
            } else if let Some(uid) = line.strip_prefix("uid: ") {
                report.uid = uid.parse().unwrap();
            } else if let Some((name, value)) = line.strip_prefix("env: ").and_then(|v| v.split_once('=')) {
                report.env.insert(name.into(), value.into());
            } else if line == "parent environ: canary seen" {
                report.canary_seen = true;
            } else if let Some(state) = line.strip_prefix("parent environ: ") {
                report.parent_environ = state.into();
            }
        }
        report
    }
}

fn mode_and_owner(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    (meta.mode() & 0o7777, meta.uid())
}

/// The service's side of the test below, run in a fresh copy of this test binary as an
/// unprivileged user: nothing else has made it non-dumpable yet.
async fn play_the_service() {
    assert_ne!(service_uid(), 0, "root reads every process: this must run as another user");
    // Without protection, a program of the same user reads the service's environment.
    let unprotected =
        std::process::Command::new("/bin/sh").args(["-c", "tr '\\0' '\\n' < /proc/$PPID/environ"]).output().unwrap();
    let seen = String::from_utf8_lossy(&unprotected.stdout);
    assert!(seen.contains(&format!("{CANARY}=")), "the unprotected read failed: the test proves nothing");

    let open = open_folder();
    let root = tempfile::tempdir_in(open.path()).unwrap();
    let mut config = confined_agent(root.path());
    config.env.insert("AGENT_MODE".into(), "careful".into());
    config.pass_env = vec!["CARGO_PKG_NAME".into(), "MOSAIC_TEST_SURELY_UNSET".into()];
    let runtime: Arc<dyn AgentRuntime> = Arc::new(CommandRuntime::new(&config).unwrap());
    assert!(!confine::is_dumpable(), "an agent runtime makes the service non-dumpable");
    let (seen, result) = run(&runtime, ask("where am I?"), Answer::Refuse).await;
    result.unwrap();
    let report = Report::parse(&seen.text);

    let workspace = root.path().join(path_component("!room:example.org"));
    assert_eq!(report.cwd, workspace.canonicalize().unwrap(), "{}", seen.text);
    assert_ne!(report.cwd, std::env::current_dir().unwrap().canonicalize().unwrap());
    assert_eq!(mode_and_owner(&workspace), (0o700, service_uid()));

    let mut names = vec!["AGENT_MODE", "CARGO_PKG_NAME", "HOME", "PATH"];
    if std::env::var_os("LANG").is_some() {
        names.push("LANG");
    }
    names.sort();
    assert_eq!(report.env.keys().collect::<Vec<_>>(), names, "{}", seen.text);
    assert_eq!(report.env["HOME"], workspace.display().to_string());
    assert_eq!(report.env["PATH"], std::env::var("PATH").unwrap());
    assert_eq!(report.env["CARGO_PKG_NAME"], "mosaic-as");
    assert_eq!(report.env["AGENT_MODE"], "careful");

    assert_eq!(report.parent_environ, "denied", "{}", seen.text);
    assert!(!report.canary_seen);
}

#[test]
fn a_command_agent_is_confined_and_cannot_read_the_service() {
    if std::env::var_os(PLAYING_THE_SERVICE).is_some() {
        return tokio::runtime::Runtime::new().unwrap().block_on(play_the_service());
    }
    // This process may be non-dumpable already (other tests build runtimes), and as root
    // it could read any process anyway: a fresh copy of it plays the service, as an
    // unprivileged user when we are root.
    let name = "a_command_agent_is_confined_and_cannot_read_the_service";
    // A copy of this test binary where `nobody` may run it.
    let open = open_folder();
    let copy = open.path().join("process_runtimes");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let mut service = std::process::Command::new(&copy);
    service
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(PLAYING_THE_SERVICE, "1")
        .env(CANARY, "the service's secret")
        .current_dir("/");
    if service_uid() == 0 {
        use std::os::unix::process::CommandExt;
        let nobody = confine::resolve_run_as("nobody", 0).expect("the user nobody");
        service.uid(nobody.uid).gid(nobody.gid);
    }
    let output = service.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && stdout.contains("1 passed"), "{stdout}\n{stderr}");
}

#[tokio::test]
async fn run_as_drops_to_that_user_in_a_folder_it_owns_and_needs_root() {
    use std::os::unix::fs::PermissionsExt;
    let open = open_folder();
    let root = tempfile::tempdir_in(open.path()).unwrap();
    let mut config = confined_agent(&root.path().join("coder"));
    config.run_as = Some("nobody".into());
    if service_uid() != 0 {
        let refused = CommandRuntime::new(&config).err().expect("run_as without root");
        assert!(refused.contains("needs the service to run as root"), "{refused}");
        return;
    }
    let nobody = confine::resolve_run_as("nobody", 0).unwrap();
    // Behind a folder of mode 0700, nobody could not reach its workspace.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let refused = CommandRuntime::new(&config).err().expect("an unreachable workspace");
    assert!(refused.contains("cannot reach"), "{refused}");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711)).unwrap();

    let runtime: Arc<dyn AgentRuntime> = Arc::new(CommandRuntime::new(&config).unwrap());
    let (seen, result) = run(&runtime, ask("who am I?"), Answer::Refuse).await;
    result.unwrap();
    let report = Report::parse(&seen.text);
    let workspace = root.path().join("coder").join(path_component("!room:example.org"));
    assert_eq!(report.uid, nobody.uid, "{}", seen.text);
    assert_eq!(report.cwd, workspace.canonicalize().unwrap());
    assert_eq!(mode_and_owner(&workspace), (0o700, nobody.uid));
    assert_eq!(mode_and_owner(&root.path().join("coder")), (0o700, nobody.uid));
    assert_eq!(report.parent_environ, "denied", "{}", seen.text);
}

#[test]
fn agents_with_an_unknown_run_as_user_or_no_workspace_are_refused() {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for runtime in ["command", "acp"] {
        let mut config = confined_agent(root.path());
        config.runtime = runtime.into();
        config.run_as = Some("mosaic-no-such-user".into());
        let refused = match runtime {
            "command" => CommandRuntime::new(&config).err(),
            _ => AcpRuntime::new(&config).err(),
        };
        let refused = refused.expect("an unknown user");
        assert!(refused.contains("there is no user \"mosaic-no-such-user\""), "{refused}");

        config.run_as = None;
        config.workspace = None;
        let refused = match runtime {
            "command" => CommandRuntime::new(&config).err(),
            _ => AcpRuntime::new(&config).err(),
        };
        assert!(refused.expect("no workspace").starts_with("agent.workspace"));
    }
}

#[tokio::test]
async fn acp_agent_runs_in_its_folder_and_each_conversation_in_its_own() {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let runtime = acp_runtime(|config| config.workspace = Some(root.path().to_path_buf()));
    let (seen, result) = run(&runtime, ask("probe-confinement"), Answer::Choose("allow")).await;
    result.unwrap();
    let line = |name: &str, path: &Path| format!("{name}: {}\n", path.display());
    assert!(seen.text.contains(&line("process cwd", &root.path().canonicalize().unwrap())), "{}", seen.text);
    assert!(seen.text.contains(&line("HOME", root.path())), "{}", seen.text);
    let first = root.path().join(path_component("!room:example.org"));
    assert!(seen.text.contains(&line("session cwd", &first)), "{}", seen.text);
    assert!(seen.text.contains("CARGO_MANIFEST_DIR seen: False"), "{}", seen.text);
    assert_eq!(mode_and_owner(&first).0, 0o700);

    let mut elsewhere = ask("probe-confinement");
    elsewhere.conversation_id = "../../elsewhere".into();
    let (seen, result) = run(&runtime, elsewhere, Answer::Choose("allow")).await;
    result.unwrap();
    let second = root.path().join(path_component("../../elsewhere"));
    assert_eq!(second.parent(), Some(root.path()));
    assert!(seen.text.contains(&line("session cwd", &second)), "{}", seen.text);
}
