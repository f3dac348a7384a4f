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
use ruma::{OwnedUserId, UserId};

use super::client::{HomeserverClient, HsError};
use crate::store::{Store, conversations};

pub struct Ghosts {
    client: HomeserverClient,
    store: Store,
    known: Mutex<HashSet<String>>,
}

impl Ghosts {
    pub fn new(client: HomeserverClient, store: Store) -> Self {
        Self { client, store, known: Mutex::new(HashSet::new()) }
    }

    /// Registers `user_id` (once) and sets its display name (again when it changed).
    pub async fn ensure(&self, user_id: &UserId, display_name: Option<&str>) -> Result<(), HsError> {
        if self.known.lock().expect("ghost cache").contains(user_id.as_str()) {
            return Ok(());
        }
        let recorded = match self.store.conn().await {
            Ok(mut conn) => conversations::ghost(&mut conn, user_id.as_str()).await.unwrap_or(None),
            Err(_) => None,
        };
        let stale_name = match &recorded {
            None => {
                self.register(user_id).await?;
                true
            }
            Some(name) => display_name.is_some() && name.as_deref() != display_name,
        };
        if stale_name {
            if let Some(name) = display_name {
                self.set_display_name(user_id, name).await?;
            }
            if let Ok(mut conn) = self.store.conn().await
                && let Err(error) = conversations::record_ghost(&mut conn, user_id.as_str(), display_name).await
            {
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

    pub async fn set_display_name(&self, user_id: &UserId, name: &str) -> Result<(), HsError> {
        let owned: OwnedUserId = user_id.to_owned();
        let request = set_profile_field::v3::Request::new(owned, ProfileFieldValue::DisplayName(name.to_string()));
        self.client.call(request, Some(user_id)).await.map(|_| ())
    }
}
