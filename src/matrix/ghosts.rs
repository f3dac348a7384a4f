//! Registering the bot and ghost users on the homeserver before they act.
//!
//! Conduit never calls `/users/{id}` and Synapse refuses `?user_id=` for unknown users,
//! so every user is registered with `m.login.application_service` first
//! (`M_USER_IN_USE` means it already exists).

use std::collections::HashSet;
use std::sync::Mutex;

use ruma::api::client::account::register;
use ruma::api::client::account::register::LoginType;
use ruma::api::client::profile::set_profile_field;
use ruma::profile::ProfileFieldValue;
use ruma::{OwnedMxcUri, OwnedUserId, UserId};

use super::client::{HomeserverClient, HsError};
use crate::store::Store;
use crate::store::conversations::{self, GhostProfile};

pub struct Ghosts {
    client: HomeserverClient,
    store: Store,
    known: Mutex<HashSet<String>>,
}

impl Ghosts {
    pub fn new(client: HomeserverClient, store: Store) -> Self {
        Self { client, store, known: Mutex::new(HashSet::new()) }
    }

    /// Registers `user_id` (once) and sets its profile (again when it changed).
    pub async fn ensure(&self, user_id: &UserId, wanted: &GhostProfile) -> Result<(), HsError> {
        if self.known.lock().expect("ghost cache").contains(user_id.as_str()) {
            return Ok(());
        }
        let recorded = match self.store.conn().await {
            Ok(mut conn) => conversations::ghost(&mut conn, user_id.as_str()).await.unwrap_or(None),
            Err(_) => None,
        };
        let current = match recorded {
            Some(profile) => profile,
            None => {
                self.register(user_id).await?;
                GhostProfile::default()
            }
        };
        if current != *wanted {
            if let Some(name) = wanted.display_name.as_deref().filter(|n| current.display_name.as_deref() != Some(*n)) {
                self.set_field(user_id, ProfileFieldValue::DisplayName(name.to_string())).await?;
            }
            if let Some(avatar) = wanted.avatar_url.as_deref().filter(|a| current.avatar_url.as_deref() != Some(*a)) {
                let uri = OwnedMxcUri::from(avatar);
                self.set_field(user_id, ProfileFieldValue::AvatarUrl(uri)).await?;
            }
            let record = async |conn: &mut crate::store::AnyConnection| {
                conversations::record_ghost(conn, user_id.as_str(), wanted).await
            };
            if let Err(error) = self.store.write(record).await {
                tracing::warn!(user_id = %user_id, %error, "cannot record the registered ghost");
            }
        }
        self.known.lock().expect("ghost cache").insert(user_id.as_str().to_string());
        Ok(())
    }

    async fn register(&self, user_id: &UserId) -> Result<(), HsError> {
        let mut request = register::v3::Request::new();
        request.username = Some(user_id.localpart().to_string());
        request.login_type = Some(LoginType::ApplicationService);
        request.inhibit_login = true;
        match self.client.call(request, None).await {
            Ok(_) => {
                tracing::info!(user_id = %user_id, "registered user on the homeserver");
                Ok(())
            }
            Err(error) if error.errcode() == Some("M_USER_IN_USE") => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn set_field(&self, user_id: &UserId, value: ProfileFieldValue) -> Result<(), HsError> {
        let owned: OwnedUserId = user_id.to_owned();
        let request = set_profile_field::v3::Request::new(owned, value);
        self.client.call(request, Some(user_id)).await.map(|_| ())
    }
}
