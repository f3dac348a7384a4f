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

/// Prefix of a token that was already replaced by its hash before being stored.
pub const HASHED_TOKEN_PREFIX: &str = "sha256:";

/// The stored form of a token given by a user: the hash, whether the token arrives in
/// clear or already hashed (see [`HASHED_TOKEN_PREFIX`]).
pub fn token_lookup_hash(given: &str) -> String {
    match given.trim().strip_prefix(HASHED_TOKEN_PREFIX) {
        Some(hash) => hash.to_string(),
        None => hash_token(given),
    }
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
    fn a_hashed_token_looks_up_like_the_token() {
        let token = new_link_token();
        let prehashed = format!("{HASHED_TOKEN_PREFIX}{}", hash_token(&token));
        assert_eq!(token_lookup_hash(&token), token_lookup_hash(&prehashed));
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
