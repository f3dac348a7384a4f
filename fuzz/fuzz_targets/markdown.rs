//! The Matrix formatter: markdown → sanitised `org.matrix.custom.html`. Never panics and
//! never lets active content through, whatever an agent or a bridged user writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosaic_as::matrix::format::{Placement, markdown_to_html, message_content};
use mosaic_as::protocol::{ChannelMessage, ContentType, SenderType};

const FORBIDDEN: &[&str] = &["<script", "<iframe", "<object", "<embed", "<style", "<svg", "<math", "<form"];
/// Link schemes the Matrix allow-list keeps.
const SCHEMES: &[&str] = &["http", "https", "ftp", "mailto", "magnet", "matrix", "mxc"];

/// The tags of `html`: text is escaped (`&lt;`), so every literal `<` opens one.
fn tags(html: &str) -> Vec<&str> {
    let mut tags = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        let after = &rest[start..];
        let mut quote = None;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '>') => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        tags.push(&after[..end]);
        rest = &after[end..];
    }
    tags
}

/// The values of the URL attributes of a tag.
fn urls(tag: &str) -> Vec<String> {
    let lower = tag.to_ascii_lowercase();
    let mut found = Vec::new();
    for attr in ["href=", "src="] {
        let mut from = 0;
        while let Some(at) = lower[from..].find(attr) {
            let value_start = from + at + attr.len();
            let value = &lower[value_start..];
            let value = match value.chars().next() {
                Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or_default(),
                _ => value.split([' ', '>']).next().unwrap_or_default(),
            };
            found.push(value.to_string());
            from = value_start;
        }
    }
    found
}

/// The scheme a browser reads in a URL attribute (WHATWG URL parsing): leading and
/// trailing C0 controls and spaces are dropped, tabs and newlines removed anywhere; a
/// scheme is a letter followed by letters, digits, `+`, `-` or `.`, then `:`. Anything
/// else is a relative URL.
fn scheme(url: &str) -> Option<String> {
    let url: String =
        url.trim_matches(|c: char| c <= ' ').chars().filter(|c| !matches!(c, '\t' | '\n' | '\r')).collect();
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| scheme.to_ascii_lowercase())
}

/// A tag with its quoted attribute values left out: what remains are names.
fn unquoted(tag: &str) -> String {
    let mut out = String::new();
    let mut quote = None;
    for c in tag.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) => out.push(c),
            _ => {}
        }
    }
    out
}

fn check_html(html: &str) {
    let lower = html.to_ascii_lowercase();
    for tag in FORBIDDEN {
        assert!(!lower.contains(tag), "{tag} in {html:?}");
    }
    for tag in tags(html) {
        let names = unquoted(tag).to_ascii_lowercase();
        assert!(!names.contains(" on"), "an event handler attribute in {tag:?} of {html:?}");
        for url in urls(tag) {
            if let Some(scheme) = scheme(&url) {
                assert!(SCHEMES.contains(&scheme.as_str()), "scheme {scheme:?} in {tag:?} of {html:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(html) = markdown_to_html(text) {
        check_html(&html);
    }
    for content_type in [ContentType::Markdown, ContentType::Code] {
        let msg = ChannelMessage::new("!r:example.org", "agent", SenderType::Agent, text, content_type);
        let content = serde_json::to_value(message_content(&msg, Placement::default())).unwrap();
        if let Some(html) = content["formatted_body"].as_str() {
            check_html(html);
        }
    }
});
