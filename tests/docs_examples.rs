//! The agent configs shown in docs/agents.md are valid configs.

use mosaic_as::config::Config;

const HEADER: &str = r#"
[homeserver]
url = "http://127.0.0.1:8008"
server_name = "example.org"

[appservice]
url = "http://127.0.0.1:29330"
as_token = "aaaaaaaaaaaaaaaaaaaa"
hs_token = "bbbbbbbbbbbbbbbbbbbb"
"#;

/// The ```toml blocks of a markdown file.
fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, fence) if fence.starts_with("```toml") => current = Some(String::new()),
            (Some(_), fence) if fence.starts_with("```") => blocks.push(current.take().expect("open block")),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_agent_example_in_the_docs_is_a_valid_config() {
    let markdown = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/agents.md")).unwrap();
    let examples: Vec<String> = toml_blocks(&markdown).into_iter().filter(|b| b.contains("[[agent]]")).collect();
    assert!(examples.len() >= 5, "one example per runtime at least, found {}", examples.len());
    for runtime in ["echo", "openai", "anthropic", "command", "acp"] {
        assert!(
            examples.iter().any(|e| e.contains(&format!("runtime = \"{runtime}\""))),
            "docs/agents.md has no example for the {runtime} runtime"
        );
    }
    for example in examples {
        // Keep the built-in echo agent (the default agent) beside the example's agents.
        let text = format!(
            "{HEADER}\n[[agent]]\nid = \"echo\"\nruntime = \"echo\"\n\n{}",
            example.replace("[[agent]]\nid = \"echo\"", "[[agent]]\nid = \"echo-example\"",)
        );
        let config = Config::parse(&text).unwrap_or_else(|(key, message)| panic!("{key}: {message}\n{example}"));
        config.validate().unwrap_or_else(|(key, message)| panic!("{key}: {message}\n{example}"));
    }
}
