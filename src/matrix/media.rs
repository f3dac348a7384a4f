//! The homeserver's media repository as the [`MediaRepository`] of every surface: bridged
//! files are uploaded once (as the bot) and carried as `mxc://` URIs.

use async_trait::async_trait;
use ruma::api::client::authenticated_media::get_content;
use ruma::api::client::media::create_content;
use ruma::{MxcUri, OwnedServerName};

use super::MatrixAdapter;
use std::time::Duration;

use super::client::{BodyLimit, HsError};
use crate::protocol::{ChannelAttachment, Media, MediaError, MediaRepository};
use ruma::events::room::EncryptedFile;

impl From<HsError> for MediaError {
    fn from(error: HsError) -> Self {
        if error.is_transient() { Self::Unavailable(error.to_string()) } else { Self::Rejected(error.to_string()) }
    }
}

#[async_trait]
impl MediaRepository for MatrixAdapter {
    async fn upload(&self, bytes: Vec<u8>, mime_type: &str, file_name: &str) -> Result<String, MediaError> {
        let size = bytes.len();
        let mut request = create_content::v3::Request::new(bytes);
        request.content_type = Some(mime_type.to_string());
        request.filename = Some(file_name.to_string()).filter(|name| !name.is_empty());
        let response = self.client().call(request, None).await?;
        tracing::debug!(channel = "matrix", event = "media_uploaded", size, uri = %response.content_uri);
        Ok(response.content_uri.to_string())
    }

    async fn fetch(&self, attachment: &ChannelAttachment) -> Result<Media, MediaError> {
        let stored = self.download(&attachment.url).await?;
        let Some(key) = &attachment.encrypted_file else { return Ok(stored) };
        let file: EncryptedFile = serde_json::from_value(key.clone())
            .map_err(|e| MediaError::Rejected(format!("the key of {} is unreadable: {e}", attachment.name)))?;
        let bytes = super::e2ee::decrypt_file(&stored.bytes, file)
            .map_err(|e| MediaError::Rejected(format!("{} cannot be decrypted: {e}", attachment.name)))?;
        Ok(Media { bytes, mime_type: attachment.mime_type.clone() })
    }

    async fn download(&self, mxc_uri: &str) -> Result<Media, MediaError> {
        let uri = <&MxcUri>::from(mxc_uri);
        let (server, media_id) = uri.parts().map_err(|e| MediaError::Rejected(format!("not an mxc:// URI: {e}")))?;
        let request = get_content::v1::Request::new(media_id.to_string(), OwnedServerName::from(server));
        let media = &self.config().media;
        let limit = BodyLimit { max_bytes: media.max_bytes, timeout: Duration::from_secs(media.timeout_secs) };
        let response = self.client().call_limited(request, None, Some(limit)).await?;
        Ok(Media {
            bytes: response.file,
            mime_type: response.content_type.unwrap_or_else(|| "application/octet-stream".into()),
        })
    }
}
