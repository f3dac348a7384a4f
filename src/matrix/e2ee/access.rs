//! How a device's requests reach the homeserver. Homeservers with MSC4190 (Synapse,
//! tuwunel) create a device on `PUT /devices/{id}` with the as_token and take the
//! `device_id` assertion on every request made as it. Conduit 0.10 has no MSC4190: there
//! the device comes from the appservice login (`m.login.application_service`), which
//! hands out an access token for it, and every request as the device carries that token.
//!
//! A login device's token is kept in a file beside the device's crypto store, sealed
//! (AES-256-GCM, [`crate::secrets::seal`]) under a key derived from the as_token, as the
//! crypto store itself is. Beside the store rather than in the main database because a
//! token is good only for the device whose keys the store holds: the two are backed up,
//! lost and moved aside together, and a store set aside (a new as_token) takes its token
//! with it instead of leaving one for a device nobody has keys for. Under the as_token
//! rather than `MOSAIC_AS_SECRET_KEY` because whoever holds the as_token can log in any
//! of these devices anyway, and encrypted rooms then need no key of their own.

use std::io::Write;
use std::path::Path;

use ruma::api::client::session::login;
use ruma::api::client::uiaa::{MatrixUserIdentifier, UserIdentifier};
use ruma::{DeviceId, UserId};

use crate::matrix::client::{HomeserverClient, HsError};
use crate::secrets::{SecretKey, SecretString};

/// How requests made as a device are authenticated.
pub enum Access {
    /// Created with `PUT /devices/{id}` (MSC4190): the as_token and the `device_id`
    /// assertion.
    Asserted,
    /// Created by the appservice login: the device's own access token, replaced by
    /// logging in again when the homeserver no longer takes it.
    Token(std::sync::Mutex<SecretString>),
}

/// The file beside a crypto store that holds its device's sealed access token.
const TOKEN_FILE: &str = "device-token";

/// The key that seals device tokens: derived from the as_token, never written down.
pub fn token_key(as_token: &str) -> SecretKey {
    let derived = crate::secrets::derived_token(as_token, "matrix device tokens");
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(derived.as_bytes(), &mut bytes).expect("an HMAC-SHA256 is 32 bytes");
    SecretKey::from_bytes(bytes)
}

/// What the seal binds the token to: it opens only for this user's device.
fn sealed_for(user: &UserId, device: &DeviceId) -> String {
    format!("matrix device token {user} {device}")
}

/// The token stored for `user`'s `device` in the store folder `dir`, if one is there and
/// opens. A token that does not open (sealed under another as_token, for another device,
/// or damaged) counts as none: the device logs in again.
pub fn read_token(dir: &Path, key: &SecretKey, user: &UserId, device: &DeviceId) -> Option<SecretString> {
    let sealed = std::fs::read_to_string(dir.join(TOKEN_FILE)).ok()?;
    match crate::secrets::open(key, None, &sealed, &sealed_for(user, device)) {
        Ok(bytes) => String::from_utf8(bytes.to_vec()).ok().map(SecretString::new),
        Err(error) => {
            tracing::warn!(user_id = %user, device_id = %device, %error, "the stored device token cannot be opened; the device logs in again");
            None
        }
    }
}

/// Seals `token` into the store folder `dir`, replacing the one there, readable by the
/// service's user only.
pub fn write_token(
    dir: &Path,
    key: &SecretKey,
    user: &UserId,
    device: &DeviceId,
    token: &SecretString,
) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let sealed = crate::secrets::seal(key, token.expose().as_bytes(), &sealed_for(user, device));
    let partial = dir.join(format!("{TOKEN_FILE}.partial"));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&partial)?;
    file.write_all(sealed.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(partial, dir.join(TOKEN_FILE))
}

/// Logs `user` in with the appservice login, as the device `device` (created if the
/// homeserver has no such device, kept with its keys if it has): its new access token.
pub async fn log_in(client: &HomeserverClient, user: &UserId, device: &DeviceId) -> Result<SecretString, HsError> {
    let identifier = UserIdentifier::Matrix(MatrixUserIdentifier::new(user.to_string()));
    let info = login::v3::LoginInfo::ApplicationService(login::v3::ApplicationService::new(identifier));
    let mut request = login::v3::Request::new(info);
    request.device_id = Some(device.to_owned());
    request.initial_device_display_name = Some("Mosaic".into());
    let response = client.call(request, None).await?;
    if response.device_id != device {
        return Err(HsError::Protocol(format!(
            "the homeserver logged {user} in as device {} instead of {device}",
            response.device_id
        )));
    }
    Ok(SecretString::new(response.access_token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_only_for_its_device_and_under_its_as_token() {
        let dir = tempfile::tempdir().unwrap();
        let key = token_key("as-token-one");
        let user = ruma::user_id!("@mosaic_agent_echo:example.org");
        let device = ruma::device_id!("MOSAICAAAA");
        let token = SecretString::new("syt_the_device_token".into());
        write_token(dir.path(), &key, user, device, &token).unwrap();

        let stored = std::fs::read_to_string(dir.path().join(TOKEN_FILE)).unwrap();
        assert!(!stored.contains("syt_the_device_token"), "the token is sealed at rest");
        assert_eq!(read_token(dir.path(), &key, user, device), Some(token));
        assert_eq!(read_token(dir.path(), &key, user, ruma::device_id!("MOSAICBBBB")), None);
        assert_eq!(read_token(dir.path(), &token_key("as-token-two"), user, device), None);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(TOKEN_FILE)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "only the service's user reads it");
    }
}
