//! Confinement of the programs that `command` and `acp` agents run. They are other
//! people's code, driven by whoever talks to the agent, so each runs:
//!
//! - in a folder of its own, `<workspace>/<conversation>`, created (mode 0700) when a
//!   turn starts; never in this service's working directory;
//! - with an environment built from an allow-list, not inherited: `PATH` and `LANG` from
//!   this service, `HOME` = that folder, the variables named in the agent's `pass_env`,
//!   and the agent's `env` table;
//! - as another user (`run_as = "user[:group]"`) when the service runs as root.
//!
//! This service also makes itself non-dumpable, so that a program running as the same
//! user can read neither its memory nor its `/proc/<pid>/environ`. What remains open
//! (the user's own files, the network) is listed in docs/security.md.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::config::AgentConfig;

/// Variables of this service's environment that every agent program gets.
const INHERITED: &[&str] = &["PATH", "LANG"];
/// `PATH` of the programs when this service has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Prefix of this service's own settings, which hold its tokens: never passed on.
const SERVICE_ENV_PREFIX: &str = "MOSAIC_AS_";
/// Longest id used as a folder name unchanged.
const MAX_PLAIN_NAME: usize = 64;
/// Characters of an unsafe id kept, readable, in front of its hash.
const READABLE_PREFIX: usize = 40;

/// Checks the confinement settings of an agent that runs programs: the key at fault and
/// why. Whether the `run_as` user exists is checked when the runtime is built.
pub fn check_config(agent: &AgentConfig) -> Result<(), (&'static str, String)> {
    if agent.workspace.as_ref().is_some_and(|dir| dir.as_os_str().is_empty()) {
        return Err(("agent.workspace", "expected a folder, e.g. workspace = \"/srv/mosaic-agents/coder\"".into()));
    }
    for (name, value) in &agent.env {
        if !is_variable_name(name) {
            return Err(("agent.env", format!("{name:?} is not an environment variable name (A-Z, a-z, 0-9, _)")));
        }
        if value.contains('\0') {
            return Err(("agent.env", format!("the value of {name} contains a NUL character")));
        }
    }
    for name in &agent.pass_env {
        if !is_variable_name(name) {
            return Err(("agent.pass_env", format!("{name:?} is not an environment variable name (A-Z, a-z, 0-9, _)")));
        }
        if name.starts_with(SERVICE_ENV_PREFIX) {
            return Err((
                "agent.pass_env",
                format!(
                    "{name} is one of this service's own settings ({SERVICE_ENV_PREFIX}*), which are never passed on"
                ),
            ));
        }
    }
    if let Some(spec) = &agent.run_as {
        parse_run_as(spec).map_err(|message| ("agent.run_as", message))?;
    }
    Ok(())
}

fn is_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A file name for an id (a conversation id, an agent id) that cannot leave its folder:
/// the id itself when it is short and plain (starts with a letter or digit, then only
/// `A-Z a-z 0-9 . _ -`), as conversation ids (UUIDs) are; otherwise `_` + the id's
/// plain characters + `-` + 16 hex digits of its SHA-256. Never empty, `.`, `..`, or
/// with a `/`; two ids get the same name only if their hashes collide (plain names
/// never start with `_`).
pub fn path_component(id: &str) -> String {
    let plain_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let plain =
        id.len() <= MAX_PLAIN_NAME && id.starts_with(|c: char| c.is_ascii_alphanumeric()) && id.chars().all(plain_char);
    if plain {
        return id.to_string();
    }
    let readable: String =
        id.chars().take(READABLE_PREFIX).map(|c| if plain_char(c) && c != '.' { c } else { '_' }).collect();
    let digest = Sha256::digest(id.as_bytes());
    format!("_{readable}-{}", hex::encode(&digest[..8]))
}

/// The user and group an agent's programs run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Splits `user[:group]`.
fn parse_run_as(spec: &str) -> Result<(&str, Option<&str>), String> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let bad = |part: &str| part.is_empty() || part.contains([':', '\0']);
    if bad(user) || group.is_some_and(bad) {
        return Err(format!("expected \"user\" or \"user:group\", e.g. run_as = \"mosaic-agent\"; got {spec:?}"));
    }
    Ok((user, group))
}

/// Looks up `run_as` (`user[:group]`; without a group, the user's own). `service_uid` is
/// the user this service runs as: only root can start programs as another user.
pub fn resolve_run_as(spec: &str, service_uid: u32) -> Result<RunAs, String> {
    let (user, group) = parse_run_as(spec)?;
    let (uid, own_gid) = lookup_user(user)
        .map_err(|error| format!("cannot look up the user {user:?}: {error}"))?
        .ok_or_else(|| format!("there is no user {user:?} on this system"))?;
    let gid = match group {
        Some(group) => lookup_group(group)
            .map_err(|error| format!("cannot look up the group {group:?}: {error}"))?
            .ok_or_else(|| format!("there is no group {group:?} on this system"))?,
        None => own_gid,
    };
    if uid == 0 {
        return Err(format!("{user:?} is root; name an unprivileged user"));
    }
    if service_uid != 0 {
        return Err(format!(
            "{spec:?} needs the service to run as root, but it runs as uid {service_uid}; \
             remove run_as, or start the service as root"
        ));
    }
    Ok(RunAs { uid, gid })
}

/// How an agent's programs are confined; built once per agent at start. (No `Debug`:
/// the `env` table may hold secrets.)
pub struct Confinement {
    /// The agent's folder: one folder per conversation inside.
    root: PathBuf,
    env: BTreeMap<String, String>,
    pass_env: Vec<String>,
    run_as: Option<RunAs>,
}

impl Confinement {
    /// Checks the agent's settings against this system (its `run_as` user, the
    /// workspace's reach) and makes this service non-dumpable before any of its programs
    /// can start. The error is `key: message`.
    pub fn new(agent: &AgentConfig) -> Result<Self, String> {
        check_config(agent).map_err(|(key, message)| format!("{key}: {message}"))?;
        let root = agent.workspace.clone().filter(|dir| dir.is_absolute()).ok_or_else(|| {
            "agent.workspace: expected an absolute folder for the agent's programs to work in".to_string()
        })?;
        let run_as = match &agent.run_as {
            Some(spec) => {
                Some(resolve_run_as(spec, service_uid()).map_err(|message| format!("agent.run_as: {message}"))?)
            }
            None => None,
        };
        if let Some(user) = run_as {
            check_reachable(&root, user)?;
        } else if service_uid() == 0 {
            tracing::warn!(agent = agent.id, "agent programs run as root; set run_as to an unprivileged user");
        }
        make_non_dumpable().map_err(|error| format!("cannot make this service non-dumpable: {error}"))?;
        Ok(Self { root, env: agent.env.clone(), pass_env: agent.pass_env.clone(), run_as })
    }

    /// The folder of a conversation's turns, created (0700, owned by the `run_as` user)
    /// with the agent's folder if missing.
    pub fn workspace(&self, conversation: &str) -> io::Result<PathBuf> {
        self.agent_folder()?;
        let dir = self.root.join(path_component(conversation));
        make_private_dir(&dir, self.run_as)?;
        Ok(dir)
    }

    /// The agent's own folder, which holds the conversations' folders, created (0700,
    /// owned by the `run_as` user) if missing. Folders above it that are missing are
    /// created too: 0700, or 0711 with `run_as` so that its user can pass through.
    pub fn agent_folder(&self) -> io::Result<PathBuf> {
        if let Some(parent) = self.root.parent() {
            create_missing(parent, if self.run_as.is_some() { 0o711 } else { 0o700 })?;
        }
        make_private_dir(&self.root, self.run_as)?;
        Ok(self.root.clone())
    }

    /// `program` with its arguments, to run in `workspace` with the allowed environment
    /// only (and as the `run_as` user).
    pub fn command(&self, program: &str, args: &[String], workspace: &Path) -> Command {
        let mut command = Command::new(absolute_program(program));
        command.args(args).current_dir(workspace).env_clear().envs(self.environment(workspace));
        #[cfg(unix)]
        if let Some(user) = self.run_as {
            // When root drops to another uid, std also clears the supplementary groups.
            command.uid(user.uid).gid(user.gid);
        }
        command
    }

    /// The whole environment of a program working in `home`: the variables of
    /// `INHERITED` (`PATH` always), `HOME`, those named in `pass_env` that are set, and
    /// the agent's `env` table, which wins.
    pub fn environment(&self, home: &Path) -> BTreeMap<OsString, OsString> {
        let mut env = BTreeMap::new();
        for name in INHERITED.iter().copied().chain(self.pass_env.iter().map(String::as_str)) {
            if let Some(value) = std::env::var_os(name) {
                env.insert(OsString::from(name), value);
            }
        }
        env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
        env.insert("HOME".into(), home.into());
        env.extend(self.env.iter().map(|(name, value)| (name.into(), value.into())));
        env
    }
}

/// A relative program path (one with a `/`) is relative to this service's working
/// directory, as documented, not to the workspace the program starts in.
fn absolute_program(program: &str) -> PathBuf {
    let path = Path::new(program);
    match std::env::current_dir() {
        Ok(cwd) if path.is_relative() && program.contains('/') => cwd.join(path),
        _ => path.to_path_buf(),
    }
}

/// Creates the missing folders of `path` (the last included), each with `mode`.
fn create_missing(path: &Path, mode: u32) -> io::Result<()> {
    let missing: Vec<&Path> = path.ancestors().take_while(|dir| std::fs::symlink_metadata(dir).is_err()).collect();
    for dir in missing.into_iter().rev() {
        match std::fs::create_dir(dir) {
            Ok(()) => set_mode(dir, mode)?,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Creates `dir` with mode 0700 if missing and gives it to `owner`. An existing `dir`
/// must be a real folder: the `run_as` user can put a symbolic link where its folders
/// were, and following it would hand another folder to that user.
fn make_private_dir(dir: &Path, owner: Option<RunAs>) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => set_mode(dir, 0o700)?,
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            if !std::fs::symlink_metadata(dir)?.is_dir() {
                return Err(io::Error::other(format!("{} is not a folder", dir.display())));
            }
        }
        Err(error) => return Err(error),
    }
    #[cfg(unix)]
    if let Some(user) = owner {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(dir)?;
        if (meta.uid(), meta.gid()) != (user.uid, user.gid) {
            std::os::unix::fs::lchown(dir, Some(user.uid), Some(user.gid))?;
        }
    }
    #[cfg(not(unix))]
    let _ = owner;
    Ok(())
}

/// Sets the exact mode of a folder just created, whatever the umask.
fn set_mode(dir: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (dir, mode);
        Ok(())
    }
}

/// Whether the `run_as` user can reach `root`: every existing folder above it must let
/// it pass (missing ones are created passable).
fn check_reachable(root: &Path, user: RunAs) -> Result<(), String> {
    #[cfg(unix)]
    for dir in root.ancestors().skip(1) {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(dir) else { continue };
        let mode = meta.mode();
        let passable = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !passable {
            return Err(format!(
                "agent.workspace: the run_as user (uid {}) cannot reach {}: {} (mode {:o}) does not let it pass; \
                 set workspace to a folder it can reach",
                user.uid,
                root.display(),
                dir.display(),
                mode & 0o7777
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (root, user);
    Ok(())
}

/// The effective user id of this service.
pub fn service_uid() -> u32 {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no arguments and cannot fail.
        unsafe { libc::geteuid() }
    }
    #[cfg(not(unix))]
    {
        u32::MAX
    }
}

/// Makes this process non-dumpable (Linux `PR_SET_DUMPABLE` 0): processes of the same
/// user can then no longer attach to it, read its memory or its `/proc/<pid>/environ`,
/// and it leaves no core dump. Elsewhere this does nothing.
pub fn make_non_dumpable() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let off: libc::c_ulong = 0;
        // SAFETY: PR_SET_DUMPABLE reads one integer argument and no memory.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, off, off, off, off) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether this process is dumpable (always `true` off Linux).
pub fn is_dumpable() -> bool {
    #[cfg(target_os = "linux")]
    {
        let off: libc::c_ulong = 0;
        // SAFETY: PR_GET_DUMPABLE takes no argument and reads no memory.
        unsafe { libc::prctl(libc::PR_GET_DUMPABLE, off, off, off, off) != 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        true
    }
}

/// The uid and own gid of a user, `None` when there is no such user.
#[cfg(unix)]
fn lookup_user(name: &str) -> io::Result<Option<(u32, u32)>> {
    let name = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    with_buffer(|buffer| {
        // SAFETY: `passwd` is plain data for getpwnam_r to fill; the strings it points
        // to live in `buffer`, and only the ids are read, before `buffer` goes.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let code = unsafe {
            libc::getpwnam_r(name.as_ptr(), &mut entry, buffer.as_mut_ptr().cast(), buffer.len(), &mut found)
        };
        (code, (!found.is_null()).then_some((entry.pw_uid, entry.pw_gid)))
    })
}

/// The gid of a group, `None` when there is no such group.
#[cfg(unix)]
fn lookup_group(name: &str) -> io::Result<Option<u32>> {
    let name = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    with_buffer(|buffer| {
        // SAFETY: as in `lookup_user`, for `group`.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        let code = unsafe {
            libc::getgrnam_r(name.as_ptr(), &mut entry, buffer.as_mut_ptr().cast(), buffer.len(), &mut found)
        };
        (code, (!found.is_null()).then_some(entry.gr_gid))
    })
}

/// Runs a `get*nam_r` call with a buffer that grows while the call says it is too small.
#[cfg(unix)]
fn with_buffer<T>(mut call: impl FnMut(&mut [u8]) -> (libc::c_int, Option<T>)) -> io::Result<Option<T>> {
    let mut buffer = vec![0u8; 1024];
    loop {
        match call(&mut buffer) {
            (0, found) => return Ok(found),
            (libc::ERANGE, _) if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 2, 0),
            // Some systems say "not found" with an error code instead of a null result.
            (libc::ENOENT | libc::ESRCH, _) => return Ok(None),
            (code, _) => return Err(io::Error::from_raw_os_error(code)),
        }
    }
}

#[cfg(not(unix))]
fn lookup_user(_name: &str) -> io::Result<Option<(u32, u32)>> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "run_as works on Unix only"))
}

#[cfg(not(unix))]
fn lookup_group(_name: &str) -> io::Result<Option<u32>> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "run_as works on Unix only"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_their_own_folder_names() {
        assert_eq!(path_component("5f0c2a8e-1b7d-4f3a-9c61-0d2e8b4a7f15"), "5f0c2a8e-1b7d-4f3a-9c61-0d2e8b4a7f15");
        assert_eq!(path_component("claude-code"), "claude-code");
        assert_eq!(path_component("v1.2_beta"), "v1.2_beta");
    }

    #[test]
    fn other_ids_cannot_leave_their_folder() {
        for id in ["..", ".", "", "../../etc", "a/b", "/etc/passwd", "!room:example.org", ".hidden", "-rf", "a\0b", "é"]
        {
            let name = path_component(id);
            assert!(!name.is_empty() && name != "." && name != "..", "{id:?} → {name:?}");
            assert!(!name.contains(['/', '\\', '\0', ':']), "{id:?} → {name:?}");
            assert!(name.starts_with('_') && !name.contains(".."), "{id:?} → {name:?}");
            let path = Path::new("/base").join(&name);
            assert_eq!(path.parent(), Some(Path::new("/base")), "{id:?} → {name:?}");
        }
        assert!(path_component("!room:example.org").starts_with("__room_example_org-"));
        assert_eq!(path_component(&"a".repeat(MAX_PLAIN_NAME)), "a".repeat(MAX_PLAIN_NAME));
        let long = path_component(&"a".repeat(MAX_PLAIN_NAME + 1));
        assert!(long.len() < MAX_PLAIN_NAME && long.starts_with('_'), "{long}");
    }

    #[test]
    fn different_ids_get_different_names() {
        // Sanitised alike, told apart by their hash; a plain id never looks like a hash name.
        let (a, b) = (path_component("a/b"), path_component("a:b"));
        assert_ne!(a, b);
        assert_ne!(path_component(&a), a);
        assert_ne!(path_component(".."), path_component("../"));
    }

    fn agent() -> AgentConfig {
        let mut agent = AgentConfig::new("coder", "Coder", "command");
        agent.command = vec!["true".into()];
        agent
    }

    #[test]
    fn bad_settings_are_named() {
        let mut bad = agent();
        bad.env.insert("A=B".into(), "x".into());
        assert_eq!(check_config(&bad).unwrap_err().0, "agent.env");
        let mut bad = agent();
        bad.pass_env = vec!["MOSAIC_AS_HS_TOKEN".into()];
        let (key, message) = check_config(&bad).unwrap_err();
        assert_eq!(key, "agent.pass_env");
        assert!(message.contains("never passed on"), "{message}");
        for spec in ["", ":", "user:", ":group", "a:b:c"] {
            let mut bad = agent();
            bad.run_as = Some(spec.into());
            assert_eq!(check_config(&bad).unwrap_err().0, "agent.run_as", "{spec:?}");
        }
        let mut good = agent();
        good.env.insert("RUST_LOG".into(), "debug".into());
        good.pass_env = vec!["ANTHROPIC_API_KEY".into()];
        good.run_as = Some("agent:agents".into());
        check_config(&good).unwrap();
    }

    #[test]
    fn run_as_needs_a_known_user_and_a_root_service() {
        let missing = resolve_run_as("mosaic-no-such-user", 0).unwrap_err();
        assert!(missing.contains("no user \"mosaic-no-such-user\""), "{missing}");
        let missing = resolve_run_as("nobody:mosaic-no-such-group", 0).unwrap_err();
        assert!(missing.contains("no group \"mosaic-no-such-group\""), "{missing}");
        let root = resolve_run_as("root", 0).unwrap_err();
        assert!(root.contains("is root"), "{root}");
        let not_root = resolve_run_as("nobody", 1000).unwrap_err();
        assert!(not_root.contains("needs the service to run as root"), "{not_root}");
        let nobody = resolve_run_as("nobody", 0).unwrap();
        assert_ne!(nobody.uid, 0);
    }

    #[test]
    fn a_relative_workspace_is_refused() {
        let mut relative = agent();
        relative.workspace = Some("workspaces".into());
        assert!(Confinement::new(&relative).err().unwrap().starts_with("agent.workspace"));
        assert!(Confinement::new(&agent()).err().unwrap().starts_with("agent.workspace"));
    }

    #[test]
    fn the_environment_is_the_allow_list_and_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = agent();
        config.workspace = Some(dir.path().to_path_buf());
        config.env.insert("AGENT_MODE".into(), "careful".into());
        config.env.insert("LANG".into(), "C.UTF-8".into());
        config.pass_env = vec!["PATH".into(), "MOSAIC_TEST_SURELY_UNSET".into()];
        let confinement = Confinement::new(&config).unwrap();
        let workspace = confinement.workspace("!room:example.org").unwrap();
        let env = confinement.environment(&workspace);
        let names: Vec<_> = env.keys().map(|name| name.to_str().unwrap()).collect();
        assert_eq!(names, ["AGENT_MODE", "HOME", "LANG", "PATH"]);
        assert_eq!(env[&OsString::from("HOME")], workspace.as_os_str());
        assert_eq!(env[&OsString::from("LANG")], "C.UTF-8", "the table wins");
        assert!(!is_dumpable(), "building a confinement makes the service non-dumpable");
    }

    #[cfg(unix)]
    #[test]
    fn workspaces_are_private_folders_and_links_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut config = agent();
        config.workspace = Some(dir.path().join("data/workspaces/coder"));
        let confinement = Confinement::new(&config).unwrap();
        let workspace = confinement.workspace("../../escape").unwrap();
        assert_eq!(workspace.parent(), Some(dir.path().join("data/workspaces/coder").as_path()));
        for folder in [&workspace, &dir.path().join("data/workspaces/coder"), &dir.path().join("data")] {
            let mode = std::fs::metadata(folder).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", folder.display());
        }
        assert_eq!(confinement.workspace("../../escape").unwrap(), workspace, "the same folder next time");

        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("data/workspaces/coder/linked")).unwrap();
        let error = confinement.workspace("linked").unwrap_err();
        assert!(error.to_string().contains("not a folder"), "{error}");
    }
}
