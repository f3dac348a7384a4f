//! What went wrong talking to Telegram, and what to do about it.

use std::time::Duration;

use sha2::{Digest, Sha256};
use teloxide::{ApiError, RequestError};

/// Building the adapter failed (configuration).
#[derive(Debug, thiserror::Error)]
pub enum TelegramError {
    #[error(
        "telegram: no bot token; set MOSAIC_AS_TELEGRAM_TOKEN, [telegram] token, or seal one with `mosaic-as secret set telegram.token`"
    )]
    MissingToken,
    #[error("telegram: bad api_url {url:?}: {reason}")]
    BadApiUrl { url: String, reason: String },
    #[error("telegram: cannot build the HTTP client: {0}")]
    Client(String),
}

/// A failed Bot API call, sorted by what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// 429: wait this long, then try again.
    RateLimited(Duration),
    /// Network, 5xx, unparsable answer: worth trying again.
    Transient(String),
    /// Telegram refused the request (4xx): it will fail the same way again.
    Terminal(String),
    /// The request left but its answer was lost (timeout, reset): Telegram may have
    /// carried it out.
    Unconfirmed(String),
    /// Telegram answered with something teloxide cannot parse (a field it needs is
    /// missing): it may have carried the request out, and will answer the same again.
    Unreadable(String),
    /// `editMessageText` with the text the message already has: nothing to do.
    NotModified,
}

impl Failure {
    pub fn message(&self) -> String {
        match self {
            Self::RateLimited(after) => format!("rate limited by Telegram for {} s", after.as_secs()),
            Self::Transient(message)
            | Self::Terminal(message)
            | Self::Unconfirmed(message)
            | Self::Unreadable(message) => message.clone(),
            Self::NotModified => "message is not modified".into(),
        }
    }
}

pub(crate) fn classify(error: RequestError, token: &str) -> Failure {
    match error {
        RequestError::RetryAfter(seconds) => Failure::RateLimited(seconds.duration().max(Duration::from_secs(1))),
        RequestError::Api(ApiError::MessageNotModified) => Failure::NotModified,
        RequestError::Api(ApiError::Unknown(description)) if description.contains("message is not modified") => {
            Failure::NotModified
        }
        RequestError::Api(ApiError::Unknown(description)) if !is_client_error(&description) => {
            // teloxide keeps only the description; a 4xx always starts with its reason
            // phrase, so anything else is a server-side failure (5xx).
            Failure::Transient(redact(&format!("Telegram server error: {description}"), token))
        }
        RequestError::Api(api) => Failure::Terminal(redact(&api.to_string(), token)),
        RequestError::MigrateToChatId(to) => {
            Failure::Terminal(format!("the group was upgraded to a supergroup with id {to}; bridge the new id instead"))
        }
        // A connection that was never made carried nothing.
        RequestError::Network(ref network) if network.is_connect() => {
            Failure::Transient(redact(&error.to_string(), token))
        }
        error @ RequestError::Network(_) => Failure::Unconfirmed(redact(&error.to_string(), token)),
        error @ RequestError::InvalidJson { .. } => Failure::Unreadable(redact(&error.to_string(), token)),
        error @ RequestError::Io(_) => Failure::Transient(redact(&error.to_string(), token)),
    }
}

/// Bot API error descriptions of 4xx answers start with their reason phrase.
fn is_client_error(description: &str) -> bool {
    ["Bad Request", "Unauthorized", "Forbidden", "Not Found", "Conflict", "Request Entity Too Large"]
        .iter()
        .any(|prefix| description.starts_with(prefix))
}

/// `text` with every occurrence of the bot token (and of its secret half) replaced.
/// teloxide already hides tokens in URLs of network errors, but only when they look
/// like BotFather's; this catches the rest.
pub(crate) fn redact(text: &str, token: &str) -> String {
    if token.is_empty() {
        return text.to_string();
    }
    let mut out = text.replace(token, "<token>");
    if let Some((_, secret)) = token.split_once(':')
        && secret.len() >= 8
    {
        out = out.replace(secret, "<secret>");
    }
    out
}

/// The webhook secret: derived from the token so it needs no configuration, and
/// different from it so the header never carries the token itself.
pub(crate) fn webhook_secret(token: &str) -> String {
    let digest = Sha256::digest(format!("mosaic-as telegram webhook\n{token}").as_bytes());
    hex::encode(&digest[..24])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted() {
        let token = "123456:ABCDEFGHIJ";
        let text = "error for url (http://x/bot123456:ABCDEFGHIJ/GetMe) and ABCDEFGHIJ";
        let redacted = redact(text, token);
        assert!(!redacted.contains("ABCDEFGHIJ"), "{redacted}");
        assert!(redacted.contains("bot<token>/GetMe"));
    }

    #[test]
    fn server_errors_are_transient_and_client_errors_terminal() {
        let unknown = |d: &str| RequestError::Api(ApiError::Unknown(d.into()));
        assert!(matches!(classify(unknown("Internal Server Error"), "t"), Failure::Transient(_)));
        assert!(matches!(classify(unknown("Bad Gateway"), "t"), Failure::Transient(_)));
        assert!(matches!(classify(unknown("Bad Request: what"), "t"), Failure::Terminal(_)));
        assert!(matches!(classify(RequestError::Api(ApiError::ChatNotFound), "t"), Failure::Terminal(_)));
        let retry = RequestError::RetryAfter(teloxide::types::Seconds::from_seconds(3));
        assert_eq!(classify(retry, "t"), Failure::RateLimited(Duration::from_secs(3)));
    }

    #[test]
    fn an_unparsable_answer_is_unreadable() {
        let source = serde_json::from_str::<u8>("{").unwrap_err();
        let unreadable = RequestError::InvalidJson { source: source.into(), raw: "{\"ok\":true".into() };
        assert!(matches!(classify(unreadable, "t"), Failure::Unreadable(_)));
    }

    #[test]
    fn webhook_secret_is_stable_and_not_the_token() {
        let secret = webhook_secret("1:abc");
        assert_eq!(secret, webhook_secret("1:abc"));
        assert!(!secret.contains("abc") && secret.len() == 48);
    }
}
