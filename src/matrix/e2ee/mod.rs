//! End-to-end encryption: the bot and every agent ghost that enters an encrypted room
//! gets a device of its own (MSC4190, or the appservice login where the homeserver has no
//! MSC4190), with an Olm account in a crypto store on disk and a cross-signing identity
//! that vouches for the device. Keys and to-device messages arrive
//! in the homeserver's transactions (MSC2409, MSC3202); room events are decrypted before
//! the hub sees them and encrypted on their way out.

mod access;
mod intake;
mod requests;

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use matrix_sdk_crypto::store::CryptoStore;
use matrix_sdk_crypto::store::types::PendingChanges;
use matrix_sdk_crypto::{
    Account, DecryptionSettings, EncryptionSettings, EncryptionSyncChanges, MegolmError, OlmMachine, TrustRequirement,
};
use matrix_sdk_sqlite::SqliteCryptoStore;
use ruma::api::OutgoingRequest;
use ruma::api::auth_scheme::{AuthScheme, SendAccessToken};
use ruma::api::client::device::update_device;
use ruma::api::client::filter::FilterDefinition;
use ruma::api::client::keys::get_keys;
use ruma::api::client::state::get_state_event_for_key;
use ruma::api::client::sync::sync_events;
use ruma::events::room::encrypted::RoomEncryptedEventContent;
use ruma::events::{AnyMessageLikeEventContent, StateEventType};
use ruma::presence::PresenceState;
use ruma::serde::Raw;
use ruma::{DeviceId, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId};
use serde_json::Value;

pub use intake::CryptoInput;

use self::access::Access;
use super::client::{HomeserverClient, HsError, PathInput, ToHsError};
use crate::config::{Config, E2eeDevices, E2eeMode};
use crate::secrets::{SecretKey, SecretString};

/// Why an encryption step failed.
#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    #[error(transparent)]
    Homeserver(#[from] HsError),
    #[error("crypto store: {0}")]
    Store(String),
    /// A crypto store that cannot be opened (another as_token sealed it, or it is damaged):
    /// trying again will not help.
    #[error("crypto store unusable: {0}")]
    Unusable(String),
    #[error("encryption: {0}")]
    Olm(String),
    /// The homeserver refused to create a device (MSC4190 or the appservice login).
    #[error("{0}")]
    NoDevice(String),
}

impl E2eeError {
    /// The homeserver may answer later; the store may be busy. A broken session will not
    /// mend by trying again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Homeserver(error) => error.is_transient(),
            Self::Store(_) => true,
            Self::Olm(_) | Self::Unusable(_) | Self::NoDevice(_) => false,
        }
    }
}

impl From<E2eeError> for HsError {
    fn from(error: E2eeError) -> Self {
        match error {
            E2eeError::Homeserver(error) => error,
            other => HsError::Encryption { transient: other.is_transient(), message: other.to_string() },
        }
    }
}

impl From<matrix_sdk_crypto::CryptoStoreError> for E2eeError {
    fn from(error: matrix_sdk_crypto::CryptoStoreError) -> Self {
        Self::Store(error.to_string())
    }
}

impl From<matrix_sdk_crypto::OlmError> for E2eeError {
    fn from(error: matrix_sdk_crypto::OlmError) -> Self {
        Self::Olm(error.to_string())
    }
}

/// What came of trying to decrypt a room event.
pub enum Decrypted {
    /// The event as if it had been sent in clear: type and content from the ciphertext,
    /// everything else from the envelope.
    Event(String),
    /// None of our devices in the room holds its room key yet: it may still arrive.
    KeyMissing,
    /// It cannot be decrypted, now or later.
    Undecryptable(String),
}

/// One of our users' devices: its Olm machine and the lock that keeps its key exchanges
/// (key queries, claims, room key shares) one at a time.
pub struct Device {
    /// Replaced only when the device's keys are published again (see [`Crypto::republish`]).
    machine: RwLock<OlmMachine>,
    exchange: tokio::sync::Mutex<()>,
    /// How its requests are authenticated.
    access: Access,
    /// Keeps logins again one at a time.
    login: tokio::sync::Mutex<()>,
    /// Its crypto store, to publish its keys again from.
    store: SqliteCryptoStore,
    /// Set when the homeserver had forgotten the device (someone signed it out): its keys
    /// are published again before it is used next.
    keys_lost: AtomicBool,
}

impl Device {
    fn machine(&self) -> OlmMachine {
        self.machine.read().expect("machine lock").clone()
    }
}

pub struct Crypto {
    client: HomeserverClient,
    /// One crypto store per user below this folder.
    dir: PathBuf,
    /// Opens the crypto stores: derived from the as_token, never written down.
    store_key: zeroize::Zeroizing<[u8; 32]>,
    /// Seals the access tokens of devices made by the appservice login.
    token_key: SecretKey,
    /// How new devices are created.
    device_route: E2eeDevices,
    /// Whether the devices fetch their to-device messages themselves.
    fetches: bool,
    /// Set once the homeserver refused an MSC4190 device (`devices = "auto"`): the next
    /// devices are made by the appservice login without asking again.
    no_msc4190: AtomicBool,
    devices: tokio::sync::Mutex<HashMap<OwnedUserId, Arc<Device>>>,
    /// Rooms known to be encrypted (a room never stops being so) or known not to be.
    encrypted_rooms: Mutex<HashMap<OwnedRoomId, bool>>,
    /// When each device last fetched its to-device messages itself.
    last_fetch: Mutex<HashMap<OwnedUserId, std::time::Instant>>,
    /// The one-time and fallback key counts each device last took in.
    last_counts: Mutex<HashMap<OwnedUserId, KeyCounts>>,
    /// Users whose crypto store could not be opened, and why: it is not tried again
    /// before a restart (moving the store aside needs one anyway), and logged once.
    unusable: Mutex<HashMap<OwnedUserId, String>>,
}

type KeyCounts = (BTreeMap<OneTimeKeyAlgorithm, UInt>, Option<Vec<OneTimeKeyAlgorithm>>);

/// Shortest time between two `/sync` fetches of one device.
const FETCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Megolm sessions are shared with every device of the room's members, as Element does;
/// trust decides what people's clients show, not whether the agent can read.
const DECRYPTION: DecryptionSettings =
    DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted };

impl Crypto {
    /// The service's encryption, or `None` when the config turns it off.
    pub fn new(config: &Config, client: HomeserverClient) -> Option<Arc<Self>> {
        if !config.e2ee.enabled {
            return None;
        }
        let dir = config.appservice.data_dir.clone()?.join("crypto");
        let derived = crate::secrets::derived_token(&config.appservice.as_token, "matrix crypto store");
        let mut store_key = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(derived.as_bytes(), store_key.as_mut_slice()).expect("an HMAC-SHA256 is 32 bytes");
        Some(Arc::new(Self {
            client,
            dir,
            store_key,
            token_key: access::token_key(&config.appservice.as_token),
            device_route: config.e2ee.devices,
            fetches: config.e2ee.mode == E2eeMode::Sync,
            no_msc4190: AtomicBool::new(false),
            devices: Default::default(),
            encrypted_rooms: Default::default(),
            last_counts: Default::default(),
            last_fetch: Default::default(),
            unusable: Default::default(),
        }))
    }

    /// `user`'s device, created on the homeserver with its keys and cross-signing the
    /// first time, opened from its store afterwards.
    pub async fn device(&self, user: &UserId) -> Result<Arc<Device>, E2eeError> {
        let mut devices = self.devices.lock().await;
        if let Some(device) = devices.get(user) {
            let device = device.clone();
            drop(devices);
            return self.ready(device).await;
        }
        if let Some(reason) = self.unusable_reason(user) {
            return Err(E2eeError::Unusable(reason));
        }
        let device = match self.open_device(user).await {
            Ok(device) => Arc::new(device),
            Err(E2eeError::Unusable(reason)) => {
                tracing::error!(user_id = %user, %reason, "crypto store unusable; the user's encrypted rooms stay unread until it is moved aside and mosaic-as restarted");
                self.unusable.lock().expect("unusable lock").insert(user.to_owned(), reason.clone());
                return Err(E2eeError::Unusable(reason));
            }
            Err(error) => return Err(error),
        };
        // Keys and cross-signing go up before anyone uses the device; a failure leaves it
        // out, to be set up again by the next caller.
        self.exchange_keys(&device).await?;
        self.ensure_cross_signed(&device).await?;
        devices.insert(user.to_owned(), device.clone());
        Ok(device)
    }

    /// `user`'s device if it has one already (in memory or on disk): to-device messages
    /// for users without a device have no one to read them. A device whose store cannot
    /// be opened counts as none (its failure is logged once, by [`Self::device`]).
    async fn existing_device(&self, user: &UserId) -> Result<Option<Arc<Device>>, E2eeError> {
        let cached = self.devices.lock().await.get(user).cloned();
        if let Some(device) = cached {
            return self.ready(device).await.map(Some);
        }
        if !self.store_dir(user).exists() {
            return Ok(None);
        }
        match self.device(user).await {
            Ok(device) => Ok(Some(device)),
            Err(E2eeError::Unusable(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn open_device(&self, user: &UserId) -> Result<Device, E2eeError> {
        let store = SqliteCryptoStore::open_with_key(self.store_dir(user), Some(&self.store_key))
            .await
            .map_err(|e| E2eeError::Unusable(format!("cannot open the crypto store of {user}: {e}")))?;
        // The device id lives with the account: a restart keeps both.
        let device_id = match store.load_account().await.map_err(|e| E2eeError::Store(e.to_string()))? {
            Some(account) => account.device_id().to_owned(),
            None => new_device_id(),
        };
        let access = self.create_device(user, &device_id).await?;
        let machine = OlmMachine::with_store(user, &device_id, store.clone(), None).await?;
        let how = match access {
            Access::Asserted => "msc4190",
            Access::Token(_) => "login",
        };
        tracing::info!(user_id = %user, device_id = %device_id, created_by = how, "device ready for encrypted rooms");
        Ok(Device {
            machine: RwLock::new(machine),
            exchange: tokio::sync::Mutex::new(()),
            access,
            login: tokio::sync::Mutex::new(()),
            store,
            keys_lost: AtomicBool::new(false),
        })
    }

    /// Makes sure the homeserver has `user`'s device `device_id`, and says how to speak as
    /// it. A device that has a token from the appservice login stays such a device.
    async fn create_device(&self, user: &UserId, device_id: &DeviceId) -> Result<Access, E2eeError> {
        let dir = self.store_dir(user);
        if let Some(token) = access::read_token(&dir, &self.token_key, user, device_id) {
            return Ok(Access::Token(Mutex::new(token)));
        }
        let by_msc4190 = match self.device_route {
            E2eeDevices::Msc4190 => true,
            E2eeDevices::Login => false,
            E2eeDevices::Auto => !self.no_msc4190.load(Ordering::Relaxed),
        };
        if by_msc4190 {
            let mut request = update_device::v3::Request::new(device_id.to_owned());
            request.display_name = Some("Mosaic".into());
            match self.client.call(request, Some(user)).await {
                Ok(_) => return Ok(Access::Asserted),
                // Conduit 0.10 looks for an existing device and finds none.
                Err(error)
                    if self.device_route == E2eeDevices::Auto
                        && matches!(error.errcode(), Some("M_NOT_FOUND" | "M_UNRECOGNIZED")) =>
                {
                    tracing::info!(%error, "the homeserver creates no devices for appservices (MSC4190); devices are created with the appservice login");
                    self.no_msc4190.store(true, Ordering::Relaxed);
                }
                Err(error) if error.is_transient() => return Err(error.into()),
                Err(error) => {
                    return Err(E2eeError::NoDevice(format!(
                        "the homeserver refused to create a device for {user} with MSC4190 ({error}); set `devices = \"login\"` under [e2ee] if it has no MSC4190"
                    )));
                }
            }
        }
        let token = self.log_in(user, device_id).await?;
        Ok(Access::Token(Mutex::new(token)))
    }

    /// Logs `user`'s device in with the appservice login and keeps its new token, sealed.
    async fn log_in(&self, user: &UserId, device_id: &DeviceId) -> Result<SecretString, E2eeError> {
        let token = match access::log_in(&self.client, user, device_id).await {
            Ok(token) => token,
            Err(error) if error.is_transient() => return Err(error.into()),
            Err(error) => {
                return Err(E2eeError::NoDevice(format!(
                    "the homeserver refused the appservice login of {user} ({error}); check that the registration's user namespace covers {user} and that the homeserver offers m.login.application_service"
                )));
            }
        };
        access::write_token(&self.store_dir(user), &self.token_key, user, device_id, &token)
            .map_err(|e| E2eeError::Store(format!("cannot keep the device token of {user} ({e}); check that the data folder's crypto/ is writable by mosaic-as")))?;
        Ok(token)
    }

    /// Sends `request` as `device`: with its own token (logging in again once if the
    /// homeserver no longer takes it), or with the as_token and the `device_id` assertion.
    async fn call<R>(&self, device: &Device, request: R) -> Result<R::IncomingResponse, E2eeError>
    where
        R: OutgoingRequest + Clone,
        R::EndpointError: ToHsError,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let machine = device.machine();
        let (user, device_id) = (machine.user_id(), machine.device_id());
        let Access::Token(current) = &device.access else {
            return Ok(self.client.call_as_device(request, user, device_id).await?);
        };
        let token = current.lock().expect("token lock").clone();
        match self.client.call_with_token(request.clone(), token.expose()).await {
            Err(error) if error.errcode() == Some("M_UNKNOWN_TOKEN") => {
                let token = self.log_in_again(device, &token).await?;
                Ok(self.client.call_with_token(request, token.expose()).await?)
            }
            answer => Ok(answer?),
        }
    }

    /// Replaces the token the homeserver rejected by logging in again as the same device.
    /// Logging in keeps a device the homeserver still has; one it deleted (signed out in
    /// a client, removed by an administrator) comes back without keys, and is marked to
    /// publish its own again.
    async fn log_in_again(&self, device: &Device, rejected: &SecretString) -> Result<SecretString, E2eeError> {
        let Access::Token(current) = &device.access else { unreachable!("only login devices have tokens") };
        let _one_at_a_time = device.login.lock().await;
        let now = current.lock().expect("token lock").clone();
        if &now != rejected {
            // Another request logged in meanwhile.
            return Ok(now);
        }
        let machine = device.machine();
        let (user, device_id) = (machine.user_id(), machine.device_id());
        tracing::warn!(user_id = %user, device_id = %device_id, "the homeserver rejected the device's access token; logging in again as the same device");
        let token = self.log_in(user, device_id).await?;
        *current.lock().expect("token lock") = token.clone();
        let mut query = get_keys::v3::Request::new();
        query.device_keys = [(user.to_owned(), vec![device_id.to_owned()])].into();
        // Keys published twice do no harm: when the homeserver cannot say, they go up again.
        let ours = format!("ed25519:{device_id}");
        let published = match self.client.call_with_token(query, token.expose()).await {
            Ok(answer) => answer
                .device_keys
                .get(user)
                .and_then(|devices| devices.get(device_id))
                .and_then(|keys| keys.get_field::<BTreeMap<String, String>>("keys").ok().flatten())
                .and_then(|keys| keys.get(&ours).cloned()),
            Err(_) => None,
        };
        if published.as_deref() != Some(machine.identity_keys().ed25519.to_base64().as_str()) {
            tracing::warn!(user_id = %user, device_id = %device_id, "the homeserver lacks the device's keys (it deleted the device, or could not say); they are published again");
            device.keys_lost.store(true, Ordering::Relaxed);
        }
        Ok(token)
    }

    /// `device`, its keys published again first if the homeserver had lost them.
    async fn ready(&self, device: Arc<Device>) -> Result<Arc<Device>, E2eeError> {
        if device.keys_lost.load(Ordering::Relaxed) {
            self.republish(&device).await?;
        }
        Ok(device)
    }

    /// Publishes the keys of a device the homeserver deleted and gave back empty: its
    /// identity keys and one-time keys as on its first day (the same keys, so people's
    /// clients still know it), and its owner's signature on it.
    async fn republish(&self, device: &Device) -> Result<(), E2eeError> {
        let _one_at_a_time = device.exchange.lock().await;
        if !device.keys_lost.load(Ordering::Relaxed) {
            return Ok(());
        }
        let old = device.machine();
        let (user, device_id) = (old.user_id().to_owned(), old.device_id().to_owned());
        let account = device
            .store
            .load_account()
            .await
            .map_err(|e| E2eeError::Store(e.to_string()))?
            .ok_or_else(|| E2eeError::Store("the account is gone".into()))?;
        let mut pickle = account.pickle();
        pickle.shared = false;
        pickle.uploaded_signed_key_count = 0;
        let account = Account::from_pickle(pickle).map_err(|e| E2eeError::Olm(e.to_string()))?;
        device
            .store
            .save_pending_changes(PendingChanges { account: Some(account) })
            .await
            .map_err(|e| E2eeError::Store(e.to_string()))?;
        let machine = OlmMachine::with_store(&user, &device_id, device.store.clone(), None).await?;
        *device.machine.write().expect("machine lock") = machine.clone();
        requests::send_queued(self, device).await?;
        if let Some(own) = machine.get_device(&user, &device_id, None).await? {
            let signature = own.verify().await.map_err(|e| E2eeError::Olm(e.to_string()))?;
            self.call(device, signature).await?;
        }
        device.keys_lost.store(false, Ordering::Relaxed);
        tracing::info!(user_id = %user, device_id = %device_id, "device keys published again");
        Ok(())
    }

    /// Why `user`'s crypto store could not be opened, if it could not.
    fn unusable_reason(&self, user: &UserId) -> Option<String> {
        self.unusable.lock().expect("unusable lock").get(user).cloned()
    }

    fn store_dir(&self, user: &UserId) -> PathBuf {
        // A digest keeps any user id a valid, fixed-length folder name.
        self.dir.join(&crate::secrets::hash_token(user.as_str())[..32])
    }

    /// Creates the user's cross-signing identity once and signs the device with it, so
    /// that clients which only trust cross-signed devices still talk to it.
    async fn ensure_cross_signed(&self, device: &Device) -> Result<(), E2eeError> {
        let machine = device.machine();
        if machine.cross_signing_status().await.is_complete() {
            return Ok(());
        }
        let bootstrap = machine.bootstrap_cross_signing(false).await?;
        if let Some(upload) = bootstrap.upload_keys_req {
            requests::send(self, device, upload).await?;
        }
        let mut signing_keys = ruma::api::client::keys::upload_signing_keys::v3::Request::new();
        let keys = bootstrap.upload_signing_keys_req;
        signing_keys.master_key = keys.master_key.map(|key| key.to_raw());
        signing_keys.self_signing_key = keys.self_signing_key.map(|key| key.to_raw());
        signing_keys.user_signing_key = keys.user_signing_key.map(|key| key.to_raw());
        self.call(device, signing_keys).await?;
        self.call(device, bootstrap.upload_signatures_req).await?;
        tracing::info!(user_id = %machine.user_id(), "cross-signing identity created");
        Ok(())
    }

    /// Sends what the device's Olm machine has queued: key uploads, key queries,
    /// to-device messages.
    async fn exchange_keys(&self, device: &Device) -> Result<(), E2eeError> {
        let _one_at_a_time = device.exchange.lock().await;
        requests::send_queued(self, device).await
    }

    /// Takes in what a transaction carried for our devices. Returns once every affected
    /// crypto store has it: a transaction is acknowledged only after that.
    pub async fn receive(self: &Arc<Self>, input: CryptoInput) -> Result<(), E2eeError> {
        let mut input = input;
        input.settle();
        let mut users = input.recipients();
        if !input.device_lists.changed.is_empty() || !input.device_lists.left.is_empty() {
            // Every device tracks other people's devices: each sees the changes.
            users.extend(self.devices.lock().await.keys().cloned());
        }
        let lists_changed = !input.device_lists.changed.is_empty() || !input.device_lists.left.is_empty();
        let mut affected = Vec::new();
        for user in users {
            match self.receive_for(&user, &input, lists_changed).await {
                Ok(Some(device)) => affected.push(device),
                Ok(None) => {}
                // The homeserver sends the transaction again.
                Err(error) if error.is_transient() => return Err(error),
                // One broken device must not hold up every transaction: what was for it
                // is dropped (an agent fetches it again with /sync when it needs a key).
                Err(error) => tracing::error!(user_id = %user, %error, "to-device messages and key counts dropped"),
            }
        }
        // Key uploads and queries the changes call for go out after the answer.
        let crypto = self.clone();
        tokio::spawn(async move {
            for device in affected {
                if let Err(error) = crypto.exchange_keys(&device).await {
                    tracing::warn!(user_id = %device.machine().user_id(), %error, "key exchange failed; it is tried again with the next change");
                }
            }
        });
        Ok(())
    }

    /// Hands `user`'s device what the transaction holds for it; the device when it took
    /// something in, `None` when it has no device or nothing changed for it.
    async fn receive_for(
        &self,
        user: &UserId,
        input: &CryptoInput,
        lists_changed: bool,
    ) -> Result<Option<Arc<Device>>, E2eeError> {
        let Some(device) = self.existing_device(user).await? else { return Ok(None) };
        let changes = input.for_device(user, device.machine().device_id());
        // Homeservers repeat the key counts in every transaction: unchanged counts alone
        // need no trip to the crypto store.
        let counts = (changes.one_time_keys.clone(), changes.fallback_keys.clone());
        let repeated = self.last_counts.lock().expect("counts lock").get(user) == Some(&counts);
        if repeated && changes.to_device.is_empty() && !lists_changed {
            return Ok(None);
        }
        let sync = EncryptionSyncChanges {
            to_device_events: changes.to_device,
            changed_devices: &input.device_lists,
            one_time_keys_counts: &changes.one_time_keys,
            unused_fallback_keys: changes.fallback_keys.as_deref(),
            next_batch_token: None,
        };
        device.machine().receive_sync_changes(sync, &DECRYPTION).await?;
        self.last_counts.lock().expect("counts lock").insert(user.to_owned(), counts);
        Ok(Some(device))
    }

    /// Fetches what is waiting for `user`'s device with `/sync` (to-device messages, key
    /// counts, device list changes): for homeservers that push none, and for a message
    /// whose key a homeserver failed to push. Asked at most once per device every few
    /// seconds, however many messages wait.
    pub async fn fetch_to_device(&self, user: &UserId) -> Result<(), E2eeError> {
        let Some(device) = self.existing_device(user).await? else { return Ok(()) };
        {
            let mut fetched = self.last_fetch.lock().expect("fetch lock");
            let now = std::time::Instant::now();
            if fetched.get(user).is_some_and(|at| now.duration_since(*at) < FETCH_INTERVAL) {
                return Ok(());
            }
            fetched.insert(user.to_owned(), now);
        }
        let machine = device.machine();
        let mut request = sync_events::v3::Request::new();
        request.filter = Some(sync_events::v3::Filter::FilterDefinition(FilterDefinition::ignore_all()));
        request.since = machine.store().next_batch_token().await?;
        request.timeout = Some(std::time::Duration::ZERO);
        request.set_presence = PresenceState::Offline;
        let response = self.call(&device, request).await?;
        let sync = EncryptionSyncChanges {
            to_device_events: response.to_device.events,
            changed_devices: &response.device_lists,
            one_time_keys_counts: &response.device_one_time_keys_count,
            unused_fallback_keys: response.device_unused_fallback_key_types.as_deref(),
            next_batch_token: Some(response.next_batch),
        };
        machine.receive_sync_changes(sync, &DECRYPTION).await?;
        self.exchange_keys(&device).await
    }

    /// Learns from a pushed `m.room.encryption` that `room` is encrypted.
    pub fn mark_encrypted(&self, room: &RoomId) {
        self.encrypted_rooms.lock().expect("rooms lock").insert(room.to_owned(), true);
    }

    /// Whether `room` is encrypted, asked of the homeserver as `reader` once per room.
    pub async fn is_encrypted(&self, room: &RoomId, reader: &UserId) -> Result<bool, HsError> {
        if let Some(known) = self.encrypted_rooms.lock().expect("rooms lock").get(room) {
            return Ok(*known);
        }
        let request =
            get_state_event_for_key::v3::Request::new(room.to_owned(), StateEventType::RoomEncryption, "".into());
        let encrypted = match self.client.call(request, Some(reader)).await {
            Ok(_) => true,
            Err(error) if error.errcode() == Some("M_NOT_FOUND") => false,
            Err(error) => return Err(error),
        };
        self.encrypted_rooms.lock().expect("rooms lock").entry(room.to_owned()).or_insert(encrypted);
        Ok(encrypted)
    }

    /// Decrypts a pushed `m.room.encrypted` event with the first of `readers` (our users
    /// in the room) whose device holds its room key.
    pub async fn decrypt(&self, room: &RoomId, event: &Value, readers: &[OwnedUserId]) -> Result<Decrypted, E2eeError> {
        let raw: Raw<_> = Raw::new(event).map_err(|e| E2eeError::Olm(e.to_string()))?.cast_unchecked();
        let mut holder = false;
        for reader in readers {
            let Some(device) = self.existing_device(reader).await? else { continue };
            holder = true;
            match device.machine().decrypt_room_event(&raw, room, &DECRYPTION).await {
                Ok(decrypted) => return Ok(Decrypted::Event(in_clear(event, decrypted.event.json().get())?)),
                Err(MegolmError::MissingRoomKey(_)) => {}
                Err(MegolmError::Store(error)) => return Err(error.into()),
                Err(error) => return Ok(Decrypted::Undecryptable(error.to_string())),
            }
        }
        if holder {
            Ok(Decrypted::KeyMissing)
        } else if let Some(reason) = readers.iter().find_map(|reader| self.unusable_reason(reader)) {
            Ok(Decrypted::Undecryptable(reason))
        } else {
            // Room keys go to the devices present when a message is sent; ours were not.
            Ok(Decrypted::Undecryptable("none of our users in the room has a device".into()))
        }
    }

    /// Encrypts `content` for `room`'s `members` as `sender`, first sharing the room key
    /// with every device of theirs that lacks it.
    pub async fn encrypt(
        &self,
        sender: &UserId,
        room: &RoomId,
        event_type: &str,
        content: &Raw<AnyMessageLikeEventContent>,
        members: &[OwnedUserId],
    ) -> Result<Raw<RoomEncryptedEventContent>, E2eeError> {
        if self.fetches {
            // Where nothing is pushed, the members' new devices are learnt from /sync: a
            // person who signed in on a new phone reads the answer there too.
            if let Err(error) = self.fetch_to_device(sender).await {
                tracing::debug!(user_id = %sender, %error, "cannot fetch device list changes before encrypting");
            }
        }
        let device = self.device(sender).await?;
        let _one_at_a_time = device.exchange.lock().await;
        let machine = device.machine();
        machine.update_tracked_users(members.iter().map(Deref::deref)).await?;
        requests::send_queued(self, &device).await?;
        if let Some((request_id, claim)) = machine.get_missing_sessions(members.iter().map(Deref::deref)).await? {
            let response = self.call(&device, claim).await?;
            machine.mark_request_as_sent(&request_id, &response).await?;
        }
        let shares =
            machine.share_room_key(room, members.iter().map(Deref::deref), EncryptionSettings::default()).await?;
        for share in shares {
            requests::send_to_device(self, &device, &share).await?;
        }
        let encrypted = machine
            .encrypt_room_event_raw(room, event_type, content)
            .await
            .map_err(|e| E2eeError::Olm(e.to_string()))?;
        Ok(encrypted.content.cast_unchecked())
    }
}

/// Encrypts a file for an encrypted room: the ciphertext to upload, and the `file` object
/// (without its `url`) that lets the room's members decrypt it.
pub fn encrypt_file(plain: &[u8]) -> Result<(Vec<u8>, Value), E2eeError> {
    use std::io::Read;
    let mut reader = plain;
    let mut encryptor = matrix_sdk_crypto::AttachmentEncryptor::new(&mut reader);
    let mut ciphertext = Vec::with_capacity(plain.len());
    encryptor.read_to_end(&mut ciphertext).map_err(|e| E2eeError::Olm(format!("cannot encrypt the file: {e}")))?;
    let info = serde_json::to_value(encryptor.finish()).map_err(|e| E2eeError::Olm(e.to_string()))?;
    Ok((ciphertext, info))
}

/// Decrypts a file people sent into an encrypted room, checking its hash.
pub fn decrypt_file(ciphertext: &[u8], file: ruma::events::room::EncryptedFile) -> Result<Vec<u8>, E2eeError> {
    use std::io::Read;
    let mut reader = ciphertext;
    let mut decryptor = matrix_sdk_crypto::AttachmentDecryptor::new(&mut reader, file.into())
        .map_err(|e| E2eeError::Olm(format!("cannot decrypt the file: {e}")))?;
    let mut plain = Vec::with_capacity(ciphertext.len());
    decryptor.read_to_end(&mut plain).map_err(|e| E2eeError::Olm(format!("cannot decrypt the file: {e}")))?;
    Ok(plain)
}

/// A device id of ours: recognisable in people's device lists, unique per new store.
fn new_device_id() -> OwnedDeviceId {
    format!("MOSAIC{}", crate::secrets::random_hex(5).to_uppercase()).into()
}

/// The pushed event with the decrypted type and content in place of the ciphertext. A
/// relation travels beside the ciphertext (so that servers can aggregate edits) and is
/// put back into the content.
fn in_clear(envelope: &Value, decrypted: &str) -> Result<String, E2eeError> {
    let decrypted: Value = serde_json::from_str(decrypted).map_err(|e| E2eeError::Olm(e.to_string()))?;
    let mut event = envelope.clone();
    event["type"] = decrypted["type"].clone();
    let mut content = decrypted["content"].clone();
    if let (Some(object), Some(relation)) = (content.as_object_mut(), envelope["content"].get("m.relates_to")) {
        object.entry("m.relates_to").or_insert_with(|| relation.clone());
    }
    event["content"] = content;
    Ok(event.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_crypto_store_that_cannot_be_opened_is_not_tried_again() {
        let data = tempfile::tempdir().unwrap();
        let mut config = Config::parse(crate::config::tests::MINIMAL).unwrap();
        config.appservice.data_dir = Some(data.path().to_owned());
        // Nobody listens there: a store that opened would fail on the homeserver instead.
        let client = HomeserverClient::new("http://127.0.0.1:9", &config.appservice.as_token);
        let crypto = Crypto::new(&config, client).unwrap();
        let user = ruma::user_id!("@mosaic_agent_echo:example.org");
        let store = crypto.store_dir(user);
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join("matrix-sdk-crypto.sqlite3"), b"not a database").unwrap();

        // Pushed transactions that name the user find no device, rather than an error.
        assert!(crypto.existing_device(user).await.unwrap().is_none());
        let reason = crypto.unusable_reason(user).expect("the failure is remembered");
        assert!(reason.contains("cannot open the crypto store"), "{reason}");

        // Mended on disk, the store is still not opened again before a restart: an open
        // would reach the homeserver, which is not there.
        std::fs::remove_file(store.join("matrix-sdk-crypto.sqlite3")).unwrap();
        assert!(crypto.existing_device(user).await.unwrap().is_none());
        assert!(matches!(crypto.device(user).await, Err(E2eeError::Unusable(_))));

        // A message for the room says why it cannot be read.
        let event = serde_json::json!({"type": "m.room.encrypted", "content": {}});
        let room = ruma::room_id!("!r:example.org");
        let Decrypted::Undecryptable(why) = crypto.decrypt(room, &event, &[user.to_owned()]).await.unwrap() else {
            panic!("an unusable store cannot decrypt");
        };
        assert!(why.contains("cannot open the crypto store"), "{why}");
    }

    /// A homeserver without MSC4190, as Conduit 0.10: `PUT /devices/{id}` finds no device,
    /// the appservice login creates one. Counts the `PUT`s it was asked.
    async fn homeserver_without_msc4190() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use axum::routing::{post, put};
        let puts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = puts.clone();
        let app = axum::Router::new()
            .route(
                "/_matrix/client/v3/devices/{device}",
                put(move || async move {
                    counted.fetch_add(1, Ordering::Relaxed);
                    let body = serde_json::json!({"errcode": "M_NOT_FOUND", "error": "Device not found."});
                    (axum::http::StatusCode::NOT_FOUND, axum::Json(body))
                }),
            )
            .route(
                "/_matrix/client/v3/login",
                post(|axum::Json(body): axum::Json<Value>| async move {
                    axum::Json(serde_json::json!({
                        "user_id": body["identifier"]["user"],
                        "device_id": body["device_id"],
                        "access_token": format!("token-for-{}", body["device_id"].as_str().unwrap()),
                    }))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, puts)
    }

    #[tokio::test]
    async fn where_the_homeserver_has_no_msc4190_devices_are_made_by_login_and_their_token_kept() {
        let (url, puts) = homeserver_without_msc4190().await;
        let data = tempfile::tempdir().unwrap();
        let mut config = Config::parse(crate::config::tests::MINIMAL).unwrap();
        config.appservice.data_dir = Some(data.path().to_owned());
        assert_eq!(config.e2ee.devices, E2eeDevices::Auto, "auto by default");
        let crypto = Crypto::new(&config, HomeserverClient::new(&url, &config.appservice.as_token)).unwrap();
        let agent = ruma::user_id!("@mosaic_agent_echo:example.org");
        let bot = ruma::user_id!("@mosaic-bot:example.org");
        std::fs::create_dir_all(crypto.store_dir(agent)).unwrap();
        std::fs::create_dir_all(crypto.store_dir(bot)).unwrap();

        let Access::Token(token) = crypto.create_device(agent, ruma::device_id!("MOSAICAAAA")).await.unwrap() else {
            panic!("a refused MSC4190 device falls back to the login");
        };
        assert_eq!(token.lock().unwrap().expose(), "token-for-MOSAICAAAA");
        // The next device does not ask for MSC4190 again.
        assert!(matches!(crypto.create_device(bot, ruma::device_id!("MOSAICBBBB")).await, Ok(Access::Token(_))));
        assert_eq!(puts.load(Ordering::Relaxed), 1);

        // After a restart the kept token is used: no login, no new device.
        let again = Crypto::new(&config, HomeserverClient::new("http://127.0.0.1:9", &config.appservice.as_token));
        let Access::Token(token) = again.unwrap().create_device(agent, ruma::device_id!("MOSAICAAAA")).await.unwrap()
        else {
            panic!("a device made by login stays one");
        };
        assert_eq!(token.lock().unwrap().expose(), "token-for-MOSAICAAAA");

        // With `devices = "msc4190"` the refusal is an error that says what to change.
        config.e2ee.devices = E2eeDevices::Msc4190;
        let strict = Crypto::new(&config, HomeserverClient::new(&url, &config.appservice.as_token)).unwrap();
        let user = ruma::user_id!("@mosaic_agent_other:example.org");
        let Err(error) = strict.create_device(user, ruma::device_id!("MOSAICCCCC")).await else {
            panic!("no fallback with devices = \"msc4190\"");
        };
        assert!(error.to_string().contains("devices = \"login\""), "{error}");
    }

    #[test]
    fn a_decrypted_event_keeps_its_envelope_and_gets_its_relation_back() {
        let envelope = serde_json::json!({
            "type": "m.room.encrypted",
            "event_id": "$e",
            "sender": "@alice:hs",
            "room_id": "!r:hs",
            "origin_server_ts": 5,
            "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "…",
                        "m.relates_to": {"rel_type": "m.replace", "event_id": "$first"}},
        });
        let plaintext = r#"{"type": "m.room.message", "room_id": "!r:hs",
            "content": {"msgtype": "m.text", "body": "* fixed", "m.new_content": {"msgtype": "m.text", "body": "fixed"}}}"#;
        let clear: Value = serde_json::from_str(&in_clear(&envelope, plaintext).unwrap()).unwrap();
        assert_eq!(clear["type"], "m.room.message");
        assert_eq!(clear["event_id"], "$e");
        assert_eq!(clear["sender"], "@alice:hs");
        assert_eq!(clear["content"]["body"], "* fixed");
        assert_eq!(clear["content"]["m.relates_to"]["event_id"], "$first");
        assert!(clear["content"].get("ciphertext").is_none());
    }
}
