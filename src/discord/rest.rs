//! Discord REST calls. Requests are built by serenity (its v10 routes, the bot token, the
//! configured base URL through `HttpBuilder::proxy`) and executed here, because serenity's
//! own rate limiter is off (with it on, requests bypass the proxy URL) and its error type
//! drops the body of a 429, which carries the `retry_after` we must obey.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serenity::http::{Http, HttpBuilder, Request};

/// Attempts of one request (the first plus retries after 429 / 5xx / network errors).
const TRIES: u32 = 4;
/// A 429 asking for a longer pause than this is handed to the caller (the durable
/// outbox retries later) instead of holding the sender.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(10);
/// How long after a 429 the adapter still reports itself degraded.
const DEGRADED_FOR_MS: i64 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("rate limited by Discord; retry after {retry_after:?}")]
    RateLimited { retry_after: Duration, global: bool },
    #[error("Discord answered {status}: {message} (code {code})")]
    Status { status: u16, code: i64, message: String },
    #[error("cannot reach Discord: {0}")]
    Network(String),
    #[error("unexpected answer from Discord: {0}")]
    Decode(String),
}

/// Discord's JSON error codes the adapter reacts to.
pub mod codes {
    pub const UNKNOWN_WEBHOOK: i64 = 10015;
    pub const UNKNOWN_MESSAGE: i64 = 10008;
    pub const UNKNOWN_EMOJI: i64 = 10014;
}

impl RestError {
    /// Worth retrying later: rate limits, Discord's own failures, the network.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Network(_) => true,
            Self::Status { status, .. } => *status >= 500,
            Self::Decode(_) => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The object named in the request does not exist (or is not visible to the bot).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct RateLimitBody {
    retry_after: f64,
    #[serde(default)]
    global: bool,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

pub struct Rest {
    http: Http,
    base_url: String,
    client: reqwest::Client,
    /// Unix ms until which every request waits (a global rate limit).
    global_until_ms: AtomicI64,
    /// Unix ms of the last 429, for `health`.
    last_limited_ms: AtomicI64,
}

impl Rest {
    pub fn new(token: &str, api_url: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            http: http_client(token, api_url, client.clone()),
            base_url: api_url.to_string(),
            client,
            global_until_ms: AtomicI64::new(0),
            last_limited_ms: AtomicI64::new(0),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A plain client for public CDN downloads (attachments, avatars): no bot token.
    pub fn cdn_client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Whether Discord asked us to slow down within the last half minute.
    pub fn recently_limited(&self) -> bool {
        let last = self.last_limited_ms.load(Ordering::Relaxed);
        last > 0 && now_ms() - last < DEGRADED_FOR_MS
    }

    /// Performs a request, retrying inside on 429 (after `retry_after`), 5xx and network
    /// errors; `make` builds the request anew for every attempt.
    pub async fn call<'a, F>(&self, make: F) -> Result<Vec<u8>, RestError>
    where
        F: Fn() -> Request<'a> + Send + Sync,
    {
        let mut attempt = 1;
        loop {
            let error = match self.call_once(make()).await {
                Ok(body) => return Ok(body),
                Err(error) => error,
            };
            let pause = match &error {
                RestError::RateLimited { retry_after, global } => {
                    tracing::warn!(
                        channel = super::CHANNEL,
                        event = "rate_limited",
                        retry_after_ms = retry_after.as_millis() as u64,
                        global,
                        attempt
                    );
                    if *retry_after > MAX_INLINE_WAIT {
                        return Err(error);
                    }
                    *retry_after
                }
                e if e.is_transient() => Duration::from_millis(250 << attempt),
                _ => return Err(error),
            };
            if attempt >= TRIES {
                return Err(error);
            }
            tracing::debug!(channel = super::CHANNEL, event = "rest_retry", attempt, error = %error);
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// One try and no retry, for requests that are stale by the time a retry could go
    /// out (typing). A 429 is still noted, so that other requests obey it.
    pub async fn call_once(&self, request: Request<'_>) -> Result<Vec<u8>, RestError> {
        self.wait_global().await;
        let result = self.once(request).await;
        if let Err(RestError::RateLimited { retry_after, global }) = &result {
            self.note_limit(*retry_after, *global);
        }
        result
    }

    /// [`Rest::call`] decoding a JSON answer.
    pub async fn json<'a, T, F>(&self, make: F) -> Result<T, RestError>
    where
        T: DeserializeOwned,
        F: Fn() -> Request<'a> + Send + Sync,
    {
        let body = self.call(make).await?;
        serde_json::from_slice(&body).map_err(|e| RestError::Decode(e.to_string()))
    }

    async fn once(&self, request: Request<'_>) -> Result<Vec<u8>, RestError> {
        // Errors are rendered without the URL: webhook and interaction URLs hold tokens.
        let builder = request
            .build(&self.client, self.http.token(), self.http.proxy.as_deref())
            .map_err(|_| RestError::Network("cannot build the request".into()))?;
        let response = builder.send().await.map_err(|e| RestError::Network(e.without_url().to_string()))?;
        let status = response.status();
        let header_retry =
            response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<f64>().ok());
        let body = response.bytes().await.map_err(|e| RestError::Network(e.without_url().to_string()))?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        if status.as_u16() == 429 {
            let parsed: Option<RateLimitBody> = serde_json::from_slice(&body).ok();
            let seconds = parsed.as_ref().map(|b| b.retry_after).or(header_retry).unwrap_or(1.0);
            let retry_after = Duration::from_secs_f64(seconds.clamp(0.0, 3600.0));
            return Err(RestError::RateLimited { retry_after, global: parsed.is_some_and(|b| b.global) });
        }
        let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
        let (code, message) = parsed.map_or((0, String::new()), |b| (b.code, b.message));
        Err(RestError::Status { status: status.as_u16(), code, message })
    }

    fn note_limit(&self, retry_after: Duration, global: bool) {
        let now = now_ms();
        self.last_limited_ms.store(now, Ordering::Relaxed);
        if global {
            self.global_until_ms.fetch_max(now + retry_after.as_millis() as i64, Ordering::Relaxed);
        }
    }

    async fn wait_global(&self) {
        let wait = self.global_until_ms.load(Ordering::Relaxed) - now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
    }
}

/// serenity's HTTP client pointed at `api_url`. `ratelimiter_disabled(true)` is what makes
/// serenity honour the proxy base URL at all; rate limits are then handled in [`Rest`].
pub fn http_client(token: &str, api_url: &str, client: reqwest::Client) -> Http {
    HttpBuilder::new(token).client(client).proxy(api_url.trim_end_matches('/')).ratelimiter_disabled(true).build()
}

fn now_ms() -> i64 {
    crate::store::now_ms()
}
