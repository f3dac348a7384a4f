//! Where attachments live while they travel between surfaces.
//!
//! Every inbound file is stored once in the homeserver's media repository and carried
//! as an `mxc://` URI, so Matrix clients show it and other surfaces fetch it from there;
//! no surface's private file URL (a Telegram file URL holds the bot token) is ever
//! stored or forwarded.

use async_trait::async_trait;

use super::ChannelAttachment;

/// A file's bytes with its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub bytes: Vec<u8>,
    pub mime_type: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Will not work on a retry (not found, too large, not a media URI).
    #[error("media rejected: {0}")]
    Rejected(String),
    /// The repository is unreachable or busy; try again later.
    #[error("media repository unavailable: {0}")]
    Unavailable(String),
}

/// What a surface shows in place of a file that cannot be fetched (gone, refused or too
/// large): the message still goes, with this note, instead of waiting for the file.
pub fn not_bridged_note(file_name: &str) -> String {
    format!("[file not bridged: {file_name}]")
}

#[async_trait]
pub trait MediaRepository: Send + Sync {
    /// Stores `bytes` and returns their `mxc://` URI.
    async fn upload(&self, bytes: Vec<u8>, mime_type: &str, file_name: &str) -> Result<String, MediaError>;

    /// Fetches a file stored by [`MediaRepository::upload`] (or any `mxc://` URI).
    async fn download(&self, mxc_uri: &str) -> Result<Media, MediaError>;

    /// Fetches an attachment's file in clear. A repository that stores encrypted files
    /// decrypts those that carry their key.
    async fn fetch(&self, attachment: &ChannelAttachment) -> Result<Media, MediaError> {
        if attachment.encrypted_file.is_some() {
            return Err(MediaError::Rejected(format!("{} is encrypted and cannot be read here", attachment.name)));
        }
        self.download(&attachment.url).await
    }
}
