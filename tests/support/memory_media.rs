//! A media repository in memory (`mxc://test/<n>`), for adapter tests without a
//! homeserver.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use mosaic_as::protocol::{Media, MediaError, MediaRepository};

#[derive(Default)]
pub struct MemoryMedia {
    pub files: Mutex<HashMap<String, Media>>,
}

#[async_trait]
impl MediaRepository for MemoryMedia {
    async fn upload(&self, bytes: Vec<u8>, mime_type: &str, _file_name: &str) -> Result<String, MediaError> {
        let mut files = self.files.lock().unwrap();
        let uri = format!("mxc://test/{}", files.len() + 1);
        files.insert(uri.clone(), Media { bytes, mime_type: mime_type.into() });
        Ok(uri)
    }

    async fn download(&self, mxc_uri: &str) -> Result<Media, MediaError> {
        self.files
            .lock()
            .unwrap()
            .get(mxc_uri)
            .cloned()
            .ok_or_else(|| MediaError::Rejected(format!("{mxc_uri} not found")))
    }
}
