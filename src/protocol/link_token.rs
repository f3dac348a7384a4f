//! Link tokens typed into chat, wherever and however: `!link T`, `/link@bot T`, `link T`
//! with more words around it, in an edit, in a caption. Every surface seals them at its
//! edge (before anything is stored or logged) and the hub takes any text that still
//! carries one for a link attempt, so there is one idea of "a message with a token" for
//! all of them.
//!
//! A token is 64 hex characters standing on their own, somewhere after the word `link`
//! (any case, after Unicode lowercasing: phones capitalise, and the Kelvin sign
//! lowercases to `k`). Its sealed form ([`secrets::seal_token`]) counts as one too.

use std::borrow::Cow;
use std::ops::Range;

use super::message::without_control_chars;
use crate::secrets;

/// Hex characters in a link token (32 random bytes).
pub const TOKEN_HEX_LEN: usize = 64;

/// What a masked token reads as in the message log.
pub const HIDDEN: &str = "[token hidden]";

/// `sha256:<hash>.<mac>`: the prefix, two hex digests and the dot between them.
const SEALED_LEN: usize = secrets::SEALED_TOKEN_PREFIX.len() + 2 * TOKEN_HEX_LEN + 1;

/// A link token as it was found in a message: in clear, or sealed at the edge.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkToken(String);

impl LinkToken {
    /// A token given as a command argument (`!link <token>`), whatever it looks like.
    pub fn typed(text: &str) -> Self {
        Self(text.trim().to_string())
    }

    /// The hash under which the token is kept: see [`secrets::token_lookup_hash`].
    pub fn lookup_hash(&self, key: &str) -> String {
        secrets::token_lookup_hash(key, &self.0)
    }
}

/// Never shows the token, so that a stray `{:?}` cannot log it.
impl std::fmt::Debug for LinkToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkToken(..)")
    }
}

/// The first link token in `text`, if the text is a link attempt.
pub fn find(text: &str) -> Option<LinkToken> {
    let text = visible(text);
    let (range, kind) = tokens(&text).next()?;
    let found = &text[range];
    Some(LinkToken(match kind {
        Kind::Clear => found.to_ascii_lowercase(),
        Kind::Sealed => found.to_string(),
    }))
}

/// Whether `text` is a link attempt.
pub fn is_attempt(text: &str) -> bool {
    tokens(&visible(text)).next().is_some()
}

/// `text` with every token in clear replaced by its seal under `key`: what may be kept
/// until the token is redeemed. Sealed tokens stay as they are.
pub fn seal<'a>(text: &'a str, key: &str) -> Cow<'a, str> {
    replace(text, |found, kind| match kind {
        Kind::Clear => Some(secrets::seal_token(key, &found.to_ascii_lowercase())),
        Kind::Sealed => None,
    })
}

/// `text` with every token, in clear or sealed, replaced by [`HIDDEN`]: what the message
/// log keeps of a link attempt.
pub fn mask(text: &str) -> Cow<'_, str> {
    replace(text, |_, _| Some(HIDDEN.to_string()))
}

/// The hub drops control characters from what people write (see
/// [`ChannelMessage::strip_control_chars`](super::ChannelMessage::strip_control_chars)), so
/// a token split by one is a token all the same: tokens are looked for without them.
fn visible(text: &str) -> Cow<'_, str> {
    without_control_chars(text)
}

fn replace(text: &str, with: impl Fn(&str, Kind) -> Option<String>) -> Cow<'_, str> {
    let visible = visible(text);
    match replace_in(&visible, with) {
        Cow::Owned(replaced) => Cow::Owned(replaced),
        Cow::Borrowed(_) => Cow::Borrowed(text),
    }
}

fn replace_in(text: &str, with: impl Fn(&str, Kind) -> Option<String>) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    for (range, kind) in tokens(text) {
        if let Some(replacement) = with(&text[range.clone()], kind) {
            out.push_str(&text[copied..range.start]);
            out.push_str(&replacement);
            copied = range.end;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Clear,
    Sealed,
}

/// The tokens of `text` that follow the word `link`, in order.
fn tokens(text: &str) -> impl Iterator<Item = (Range<usize>, Kind)> + '_ {
    candidates(text).filter(move |(range, _)| follows_link(&text[..range.start]))
}

fn follows_link(before: &str) -> bool {
    // Cheap for the usual case; the Unicode lowercasing only where it may matter.
    before.as_bytes().windows(4).any(|w| w.eq_ignore_ascii_case(b"link"))
        || (!before.is_ascii() && before.to_lowercase().contains("link"))
}

/// Every word of 64 hex characters, and every seal, wherever they are. Words are runs of
/// ASCII letters and digits, so anything else (spaces, punctuation, markup, non-ASCII)
/// separates them.
fn candidates(text: &str) -> impl Iterator<Item = (Range<usize>, Kind)> + '_ {
    let bytes = text.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < bytes.len() {
            if !bytes[at].is_ascii_alphanumeric() {
                at += 1;
                continue;
            }
            let start = at;
            if is_seal_at(bytes, start) {
                at = start + SEALED_LEN;
                return Some((start..at, Kind::Sealed));
            }
            while at < bytes.len() && bytes[at].is_ascii_alphanumeric() {
                at += 1;
            }
            if at - start == TOKEN_HEX_LEN && bytes[start..at].iter().all(u8::is_ascii_hexdigit) {
                return Some((start..at, Kind::Clear));
            }
        }
        None
    })
}

fn is_seal_at(bytes: &[u8], start: usize) -> bool {
    let prefix = secrets::SEALED_TOKEN_PREFIX.as_bytes();
    let Some(seal) = bytes.get(start..start + SEALED_LEN) else { return false };
    let (hash, rest) = seal[prefix.len()..].split_at(TOKEN_HEX_LEN);
    seal.starts_with(prefix)
        && hash.iter().all(u8::is_ascii_hexdigit)
        && rest[0] == b'.'
        && rest[1..].iter().all(u8::is_ascii_hexdigit)
        && !bytes.get(start + SEALED_LEN).is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> String {
        "ab".repeat(32)
    }

    #[test]
    fn a_token_after_link_is_found_however_the_line_is_written() {
        let t = token();
        for text in [
            format!("!link {t}"),
            format!("/link {t}"),
            format!("/link@mosaic_bot {t}"),
            format!("!LINK {t} please"),
            format!("please link me: {t}"),
            format!("`!link {t}`"),
            format!("<code>!link {t}</code>"),
            format!("!lin\u{212A} {t}"),
            format!("!link {}", t.to_uppercase()),
            format!("* !link {t}"),
        ] {
            assert_eq!(find(&text).map(|f| f.lookup_hash("k")), Some(secrets::hash_token(&t)), "{text}");
        }
    }

    #[test]
    fn other_hex_is_no_token() {
        let t = token();
        for text in [
            t.clone(),
            format!("{t} link"),
            format!("!link {}", &t[..63]),
            format!("!link {t}0"),
            format!("!link x{t}"),
            "!link 00".to_string(),
            "a link to somewhere".to_string(),
        ] {
            assert!(find(&text).is_none(), "{text}");
            assert!(matches!(seal(&text, "k"), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn sealing_keeps_the_token_redeemable_and_is_done_once() {
        let t = token();
        let text = format!("!link {t} and again link {t}");
        let sealed = seal(&text, "k").into_owned();
        assert!(!sealed.contains(&t), "{sealed}");
        assert_eq!(sealed.matches(secrets::SEALED_TOKEN_PREFIX).count(), 2);
        assert!(matches!(seal(&sealed, "k"), Cow::Borrowed(_)), "a seal is not sealed again");
        assert_eq!(find(&sealed).unwrap().lookup_hash("k"), secrets::hash_token(&t));
        assert_eq!(mask(&sealed), format!("!link {HIDDEN} and again link {HIDDEN}"));
        assert_eq!(mask(&text), mask(&sealed));
    }

    #[test]
    fn control_characters_do_not_hide_a_token() {
        let t = token();
        let split = format!("!li\u{0}nk {}\u{7}{}", &t[..10], &t[10..]);
        assert_eq!(find(&split).unwrap().lookup_hash("k"), secrets::hash_token(&t));
        let sealed = seal(&split, "k").into_owned();
        assert!(!sealed.contains(&t[10..]), "{sealed:?}");
        assert_eq!(mask(&split), format!("!link {HIDDEN}"));
    }

    #[test]
    fn debug_output_hides_the_token() {
        let found = find(&format!("!link {}", token())).unwrap();
        assert!(!format!("{found:?}").contains(&token()));
    }
}
