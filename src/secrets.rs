//! Random tokens, token hashing and constant-time comparison.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `bytes` random bytes from the operating system, hex encoded.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source is available");
    hex::encode(buf)
}

/// A link token: 32 random bytes in hex (64 characters).
pub fn new_link_token() -> String {
    random_hex(32)
}

/// Tokens are stored as their SHA-256: a token has 256 bits of entropy, so a plain hash
/// is enough to make a stolen database useless for linking.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Prefix of a sealed token: a token replaced by its hash before it was stored.
pub const SEALED_TOKEN_PREFIX: &str = "sha256:";

/// Replaces a token by its hash plus a MAC under `key`, so that the sealed form can be
/// stored and later redeemed, while a hash read from the database cannot be passed off
/// as a token (it lacks the MAC).
pub fn seal_token(key: &str, token: &str) -> String {
    let hash = hash_token(token);
    let mac = derived_token(key, &format!("sealed link token {hash}"));
    format!("{SEALED_TOKEN_PREFIX}{hash}.{mac}")
}

/// The stored hash a given token stands for: the hash inside a genuine seal, or the hash
/// of the text as given (a forged seal is just an unknown token).
pub fn token_lookup_hash(key: &str, given: &str) -> String {
    let given = given.trim();
    if let Some((hash, mac)) = given.strip_prefix(SEALED_TOKEN_PREFIX).and_then(|rest| rest.split_once('.'))
        && constant_time_eq(mac, &derived_token(key, &format!("sealed link token {hash}")))
    {
        return hash.to_string();
    }
    hash_token(given)
}

/// A token derived from `key` and `label`: the same inputs give the same token, so a
/// queued message can carry a placeholder and get its token back when it is sent,
/// without the token ever being written to the database.
pub fn derived_token(key: &str, label: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(label.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Compares two secrets without leaking how many leading bytes matched.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_tokens_are_64_hex_characters_and_differ() {
        let a = new_link_token();
        let b = new_link_token();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn hashing_is_stable_and_hides_the_token() {
        let token = new_link_token();
        assert_eq!(hash_token(&token), hash_token(&token));
        assert_ne!(hash_token(&token), token);
    }

    #[test]
    fn a_sealed_token_looks_up_like_the_token() {
        let token = new_link_token();
        let sealed = seal_token("key", &token);
        assert!(!sealed.contains(&token));
        assert_eq!(token_lookup_hash("key", &sealed), hash_token(&token));
        assert_eq!(token_lookup_hash("key", &token), hash_token(&token));
    }

    #[test]
    fn a_bare_or_forged_hash_is_not_a_token() {
        let token = new_link_token();
        let bare = format!("{SEALED_TOKEN_PREFIX}{}", hash_token(&token));
        assert_ne!(token_lookup_hash("key", &bare), hash_token(&token));
        let forged = format!("{bare}.{}", "0".repeat(64));
        assert_ne!(token_lookup_hash("key", &forged), hash_token(&token));
        let other_key = seal_token("other", &token);
        assert_ne!(token_lookup_hash("key", &other_key), hash_token(&token));
    }

    #[test]
    fn derived_tokens_are_stable_per_label_and_key() {
        let a = derived_token("key", "message-1");
        assert_eq!(a, derived_token("key", "message-1"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, derived_token("key", "message-2"));
        assert_ne!(a, derived_token("other", "message-1"));
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq("secret", "secret"));
        assert!(!constant_time_eq("secret", "secreT"));
        assert!(!constant_time_eq("secret", "secret-longer"));
    }
}
