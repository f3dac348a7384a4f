//! The operator CLI: `init`, `registration`, config errors and `link-token`.

use std::process::Command;

fn mosaic(args: &[&str]) -> (bool, String, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_mosaic-as")).args(args).env("MOSAIC_AS_LOG", "warn").output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn init(dir: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["init", "--homeserver-url", "http://127.0.0.1:8008", "--server-name", "example.org", "--dir"];
    args.push(dir.to_str().unwrap());
    args.extend_from_slice(extra);
    mosaic(&args)
}

#[test]
fn init_writes_config_and_registration_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = init(dir.path(), &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("register-appservice") && out.contains("app_service_config_files"), "{out}");
    let config = std::fs::read_to_string(dir.path().join("mosaic-as.toml")).unwrap();
    assert!(config.contains("listen = \"127.0.0.1:29330\"") && config.contains("runtime = \"echo\""));
    let registration = std::fs::read_to_string(dir.path().join("registration.yaml")).unwrap();
    assert!(registration.contains("url: http://127.0.0.1:29330"), "{registration}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("mosaic-as.toml")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the config holds secrets and is private");
    }

    let (ok, _, err) = init(dir.path(), &[]);
    assert!(!ok && err.contains("already exists") && err.contains("--force"), "{err}");
    let (ok, _, _) = init(dir.path(), &["--force"]);
    assert!(ok);
    let replaced = std::fs::read_to_string(dir.path().join("mosaic-as.toml")).unwrap();
    assert_ne!(config, replaced, "--force writes fresh tokens");

    let config_path = dir.path().join("mosaic-as.toml");
    let (ok, printed, _) = mosaic(&["--config", config_path.to_str().unwrap(), "registration"]);
    assert!(ok);
    assert_eq!(printed, std::fs::read_to_string(dir.path().join("registration.yaml")).unwrap());
}

#[test]
fn init_shows_how_to_give_operators_a_listener_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = init(dir.path(), &[]);
    assert!(ok, "{out}{err}");
    let path = dir.path().join("mosaic-as.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    for example in ["# listen = \"127.0.0.1:9100\"", "# token = \"…\""] {
        assert!(config.contains(example), "no {example:?} in\n{config}");
    }
    // Uncommented, the examples are a working config.
    let uncommented = config
        .replace("# listen = \"127.0.0.1:9100\"", "listen = \"127.0.0.1:9100\"")
        .replace("# token = \"…\"", &format!("token = \"{}\"", "0123456789abcdef".repeat(2)));
    std::fs::write(&path, uncommented).unwrap();
    let (ok, printed, err) = mosaic(&["--config", path.to_str().unwrap(), "registration"]);
    assert!(ok && printed.contains("url: http://127.0.0.1:29330"), "{printed}{err}");
}

#[test]
fn init_writes_who_may_use_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = init(dir.path(), &["--admin", "@you:example.org"]);
    assert!(ok, "{out}{err}");
    let path = dir.path().join("mosaic-as.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = mosaic_as::config::Config::load(&path).unwrap();
    let section = config.permissions.expect("a [permissions] section");
    let level = |key: &str| section.levels.get(key).map(|l| l.as_str());
    assert_eq!(level("*"), Some("none"), "{text}");
    assert_eq!(level("example.org"), Some("user"), "{text}");
    assert_eq!(level("@you:example.org"), Some("admin"), "{text}");
    assert_eq!(section.surfaces.get("discord").map(|d| d.unlinked.as_str()), Some("relay"));
    assert_eq!(section.surfaces.get("telegram").map(|t| t.unlinked.as_str()), Some("relay"));
    let (ok, _, _) = mosaic(&["--config", path.to_str().unwrap(), "registration"]);
    assert!(ok, "the written config loads");

    // Without --admin nobody is an admin; a malformed id is refused.
    let plain = tempfile::tempdir().unwrap();
    init(plain.path(), &[]);
    let text = std::fs::read_to_string(plain.path().join("mosaic-as.toml")).unwrap();
    assert!(!text.contains("\"admin\""), "{text}");
    let (ok, _, err) = init(tempfile::tempdir().unwrap().path(), &["--admin", "you"]);
    assert!(!ok && err.contains("not a Matrix user id"), "{err}");
}

#[test]
fn config_errors_name_the_file_the_key_and_what_is_expected() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &[]);
    let path = dir.path().join("mosaic-as.toml");
    let text =
        std::fs::read_to_string(&path).unwrap().replace("listen = \"127.0.0.1:29330\"", "listen = \"everywhere\"");
    std::fs::write(&path, text).unwrap();
    let (ok, _, err) = mosaic(&["--config", path.to_str().unwrap(), "registration"]);
    assert!(!ok);
    assert!(
        err.contains(path.to_str().unwrap()) && err.contains("appservice.listen") && err.contains("socket address"),
        "{err}"
    );

    let (ok, _, err) = mosaic(&["--config", "/nonexistent/mosaic-as.toml", "serve"]);
    assert!(!ok && err.contains("not found") && err.contains("mosaic-as init"), "{err}");
}

#[test]
fn secrets_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &[]);
    let path = dir.path().join("mosaic-as.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_mosaic-as"))
        .args(["--config", path.to_str().unwrap(), "registration"])
        .env("MOSAIC_AS_HS_TOKEN", "hs-token-from-the-environment")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("hs_token: hs-token-from-the-environment"));
}

#[test]
fn link_token_prints_the_token_alone_on_the_last_line() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &[]);
    let path = dir.path().join("mosaic-as.toml");
    let config = path.to_str().unwrap();
    let (ok, _, err) = mosaic(&["--config", config, "link-token", "nobody"]);
    assert!(!ok && err.contains("--create"), "{err}");
    let (ok, out, err) = mosaic(&["--config", config, "link-token", "alice", "--create"]);
    assert!(ok, "{err}");
    let last = out.lines().last().unwrap();
    assert_eq!(last.len(), 64);
    assert!(last.chars().all(|c| c.is_ascii_hexdigit()));
    let (ok, again, _) = mosaic(&["--config", config, "link-token", "alice"]);
    assert!(ok);
    assert_ne!(again.lines().last().unwrap(), last, "every token is new");
}

#[test]
fn accounts_are_created_listed_and_deleted_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), &[]);
    let path = dir.path().join("mosaic-as.toml");
    let config = path.to_str().unwrap();
    let (ok, out, err) =
        mosaic(&["--config", config, "account", "create", "alice", "--matrix-id", "@alice:example.org"]);
    assert!(ok, "{err}");
    assert!(out.contains("Created account alice") && out.contains("personal Space"), "{out}");
    let (ok, _, err) = mosaic(&["--config", config, "account", "create", "again", "--matrix-id", "@alice:example.org"]);
    assert!(!ok && err.contains("linked to account \"alice\""), "{err}");
    let (ok, _, err) = mosaic(&["--config", config, "account", "create", "bad", "--matrix-id", "alice"]);
    assert!(!ok && err.contains("not a Matrix user id"), "{err}");
    let (ok, listed, _) = mosaic(&["--config", config, "account", "list"]);
    assert!(ok && listed.contains("alice") && listed.contains("matrix @alice:example.org"), "{listed}");
    let (ok, _, _) = mosaic(&["--config", config, "account", "delete", "alice"]);
    assert!(ok);
    let (ok, _, err) = mosaic(&["--config", config, "account", "delete", "alice"]);
    assert!(!ok && err.contains("no account"), "{err}");
}
