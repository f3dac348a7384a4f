//! The homeserver client: client-server API calls made with the `as_token`, as the bot or
//! as a ghost (`?user_id=` identity assertion). One call is one try; callers choose how to
//! retry with [`HsError::is_transient`] and [`HsError::retry_after`].

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::Duration;

use ruma::UserId;
use ruma::api::auth_scheme::{AuthScheme, SendAccessToken};
use ruma::api::error::ErrorKind;
use ruma::api::error::{FromHttpResponseError, RetryAfter};
use ruma::api::path_builder::{PathBuilder, SinglePath, VersionHistory};
use ruma::api::{
    AppserviceUserIdentity, IncomingResponse, MatrixVersion, OutgoingRequest, OutgoingRequestAppserviceExt,
    SupportedVersions,
};

/// Every request we build targets Matrix 1.11 paths, which Conduit, Synapse and their
/// forks all serve.
static SUPPORTED: LazyLock<SupportedVersions> =
    LazyLock::new(|| SupportedVersions { versions: [MatrixVersion::V1_11].into(), features: Default::default() });

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error)]
pub enum HsError {
    #[error("homeserver unreachable: {0}")]
    Network(String),
    #[error("rate limited by the homeserver")]
    RateLimited { retry_after: Option<Duration> },
    #[error("homeserver error {status}: {message}")]
    Server { status: u16, message: String },
    #[error("homeserver refused the request ({status} {errcode}): {message}")]
    Api { status: u16, errcode: String, message: String },
    #[error("unexpected homeserver response: {0}")]
    Protocol(String),
    #[error("the answer is larger than {max_bytes} bytes")]
    TooLarge { max_bytes: u64 },
    /// The request could not be encrypted for its room; `transient` when a later try may
    /// succeed (the homeserver was unreachable while keys were exchanged).
    #[error("cannot encrypt for the room: {message}")]
    Encryption { message: String, transient: bool },
}

/// Bounds for an answer that may be large (a file from the media repository).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub max_bytes: u64,
    pub timeout: Duration,
}

impl HsError {
    /// Network failures, 408, 429 and 5xx may succeed when tried again; other 4xx will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Network(_) | Self::RateLimited { .. } | Self::Server { .. })
            || matches!(self, Self::Encryption { transient: true, .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    pub fn errcode(&self) -> Option<&str> {
        match self {
            Self::Api { errcode, .. } => Some(errcode),
            _ => None,
        }
    }
}

/// Produces the path input of a request's path builder.
pub trait PathInput: PathBuilder {
    fn input() -> Self::Input<'static>;
}

impl PathInput for VersionHistory {
    fn input() -> Cow<'static, SupportedVersions> {
        Cow::Borrowed(&*SUPPORTED)
    }
}

impl PathInput for SinglePath {
    fn input() {}
}

#[derive(Clone)]
pub struct HomeserverClient {
    http: reqwest::Client,
    base_url: String,
    as_token: String,
}

impl HomeserverClient {
    pub fn new(base_url: &str, as_token: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("TLS backend initialises");
        Self { http, base_url: base_url.trim_end_matches('/').to_string(), as_token: as_token.to_string() }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends `request` as the appservice's bot (`as_user = None`) or as a ghost.
    pub async fn call<R>(&self, request: R, as_user: Option<&UserId>) -> Result<R::IncomingResponse, HsError>
    where
        R: OutgoingRequest,
        R::EndpointError: ToHsError,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        self.call_limited(request, as_user, None).await
    }

    /// [`HomeserverClient::call`] whose answer is read only up to `limit`: a larger one
    /// fails with [`HsError::TooLarge`] without being read to its end.
    pub async fn call_limited<R>(
        &self,
        request: R,
        as_user: Option<&UserId>,
        limit: Option<BodyLimit>,
    ) -> Result<R::IncomingResponse, HsError>
    where
        R: OutgoingRequest,
        R::EndpointError: ToHsError,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let identity = as_user.map(AppserviceUserIdentity::new).unwrap_or_default();
        self.call_with_identity(request, identity, limit).await
    }

    /// Sends `request` as one of `user`'s devices (the `device_id` assertion of MSC4190):
    /// what end-to-end encryption asks of the homeserver is done per device.
    pub async fn call_as_device<R>(
        &self,
        request: R,
        user: &UserId,
        device: &ruma::DeviceId,
    ) -> Result<R::IncomingResponse, HsError>
    where
        R: OutgoingRequest,
        R::EndpointError: ToHsError,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let mut identity = AppserviceUserIdentity::new(user);
        identity.device_id = Some(device);
        self.call_with_identity(request, identity, None).await
    }

    /// Sends `request` with a device's own access token (a device made by the appservice
    /// login): no as_token, no identity assertion.
    pub async fn call_with_token<R>(&self, request: R, token: &str) -> Result<R::IncomingResponse, HsError>
    where
        R: OutgoingRequest,
        R::EndpointError: ToHsError,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let built = request.try_into_http_request::<Vec<u8>>(
            &self.base_url,
            SendAccessToken::Always(token),
            R::PathBuilder::input(),
        );
        self.send_built::<R>(built, None).await
    }

    async fn call_with_identity<R>(
        &self,
        request: R,
        identity: AppserviceUserIdentity<'_>,
        limit: Option<BodyLimit>,
    ) -> Result<R::IncomingResponse, HsError>
    where
        R: OutgoingRequest,
        R::EndpointError: ToHsError,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let built = request.try_into_http_request_with_identity::<Vec<u8>>(
            &self.base_url,
            SendAccessToken::Appservice(&self.as_token),
            identity,
            R::PathBuilder::input(),
        );
        self.send_built::<R>(built, limit).await
    }

    /// Sends a request built from `R` and reads its answer as `R`'s response.
    async fn send_built<R>(
        &self,
        built: Result<http::Request<Vec<u8>>, ruma::api::error::IntoHttpError>,
        limit: Option<BodyLimit>,
    ) -> Result<R::IncomingResponse, HsError>
    where
        R: OutgoingRequest,
        R::EndpointError: ToHsError,
    {
        let http_request = built.map_err(|e| HsError::Protocol(format!("cannot build request: {e}")))?;
        let response = self.execute(http_request, limit).await?;
        R::IncomingResponse::try_from_http_response(response).map_err(classify)
    }

    async fn execute(
        &self,
        request: http::Request<Vec<u8>>,
        limit: Option<BodyLimit>,
    ) -> Result<http::Response<Vec<u8>>, HsError> {
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let mut builder = self.http.request(parts.method, &url).body(body);
        for (name, value) in &parts.headers {
            builder = builder.header(name, value);
        }
        if let Some(limit) = limit {
            builder = builder.timeout(limit.timeout);
        }
        let mut response = builder.send().await.map_err(|e| HsError::Network(without_url(e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = match limit {
            None => response.bytes().await.map_err(|e| HsError::Network(without_url(e)))?.to_vec(),
            Some(BodyLimit { max_bytes, .. }) => {
                if response.content_length().is_some_and(|length| length > max_bytes) {
                    return Err(HsError::TooLarge { max_bytes });
                }
                let mut bytes = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(|e| HsError::Network(without_url(e)))? {
                    if (bytes.len() + chunk.len()) as u64 > max_bytes {
                        return Err(HsError::TooLarge { max_bytes });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                bytes
            }
        };
        let mut http_response = http::Response::builder().status(status.as_u16());
        for (name, value) in &headers {
            http_response = http_response.header(name, value);
        }
        http_response.body(bytes).map_err(|e| HsError::Protocol(e.to_string()))
    }
}

/// Describes a transport error without its URL, which may carry the asserted `user_id`
/// (and, with legacy homeservers, a token in the query).
fn without_url(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

fn classify<E: ToHsError>(error: FromHttpResponseError<E>) -> HsError {
    match error {
        FromHttpResponseError::Server(error) => error.to_hs_error(),
        FromHttpResponseError::Deserialization(e) => HsError::Protocol(e.to_string()),
        _ => HsError::Protocol("unrecognised homeserver response".into()),
    }
}

/// Endpoint errors we can classify.
pub trait ToHsError {
    fn to_hs_error(self) -> HsError;
}

impl ToHsError for ruma::api::error::Error {
    fn to_hs_error(self) -> HsError {
        let status = self.status_code.as_u16();
        if let Some(ErrorKind::LimitExceeded(data)) = self.error_kind() {
            let retry_after = data.retry_after.as_ref().map(|r| match r {
                RetryAfter::Delay(d) => *d,
                RetryAfter::DateTime(t) => t.duration_since(std::time::SystemTime::now()).unwrap_or_default(),
            });
            return HsError::RateLimited { retry_after };
        }
        if status == 429 {
            return HsError::RateLimited { retry_after: None };
        }
        let message = self.to_string();
        // A request timeout says nothing about the request itself: worth another try.
        if status >= 500 || status == 408 {
            return HsError::Server { status, message };
        }
        let errcode = self.error_kind().map(|k| k.errcode().to_string()).unwrap_or_else(|| "M_UNKNOWN".into());
        HsError::Api { status, errcode, message }
    }
}

/// `/register` answers with user-interactive auth errors; an appservice never needs a
/// second stage, so one is reported as a refusal.
impl ToHsError for ruma::api::client::uiaa::UiaaResponse {
    fn to_hs_error(self) -> HsError {
        match self {
            Self::MatrixError(error) => error.to_hs_error(),
            other => HsError::Api { status: 401, errcode: "M_FORBIDDEN".into(), message: format!("{other:?}") },
        }
    }
}
