//! What a pushed transaction carries for encryption besides its events: to-device
//! messages (MSC2409), device list changes, one-time key counts and unused fallback key
//! types (MSC3202), under their stable or unstable names.

use std::collections::{BTreeMap, BTreeSet};

use ruma::api::client::sync::sync_events::DeviceLists;
use ruma::events::AnyToDeviceEvent;
use ruma::serde::Raw;
use ruma::{DeviceId, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedUserId, UInt, UserId};
use serde::Deserialize;
use serde_json::value::RawValue;

type PerDevice<T> = BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, T>>;

/// The encryption fields of a transaction body. Each field has a stable and an unstable
/// name; homeservers send one or the other (Synapse: the unstable ones).
#[derive(Debug, Default, Deserialize)]
pub struct CryptoInput {
    #[serde(default)]
    to_device: Vec<Box<RawValue>>,
    #[serde(default, rename = "de.sorunome.msc2409.to_device")]
    to_device_unstable: Vec<Box<RawValue>>,
    #[serde(default, rename = "device_lists")]
    device_lists_field: Option<DeviceLists>,
    #[serde(default, rename = "org.matrix.msc3202.device_lists")]
    device_lists_unstable: Option<DeviceLists>,
    #[serde(default)]
    device_one_time_keys_count: PerDevice<BTreeMap<OneTimeKeyAlgorithm, UInt>>,
    #[serde(default, rename = "org.matrix.msc3202.device_one_time_keys_count")]
    device_one_time_keys_count_unstable: PerDevice<BTreeMap<OneTimeKeyAlgorithm, UInt>>,
    #[serde(default)]
    device_unused_fallback_key_types: PerDevice<Vec<OneTimeKeyAlgorithm>>,
    #[serde(default, rename = "org.matrix.msc3202.device_unused_fallback_key_types")]
    device_unused_fallback_key_types_unstable: PerDevice<Vec<OneTimeKeyAlgorithm>>,
    /// Filled in by [`CryptoInput::settle`]: the device lists of whichever name came.
    #[serde(skip)]
    pub device_lists: DeviceLists,
}

/// What one of our devices gets from a transaction.
#[derive(Default)]
pub struct DeviceChanges {
    pub to_device: Vec<Raw<AnyToDeviceEvent>>,
    pub one_time_keys: BTreeMap<OneTimeKeyAlgorithm, UInt>,
    pub fallback_keys: Option<Vec<OneTimeKeyAlgorithm>>,
}

/// Where a pushed to-device message is going (MSC2409 adds these to the event).
#[derive(Deserialize)]
struct Recipient {
    to_user_id: OwnedUserId,
    #[serde(default)]
    to_device_id: Option<OwnedDeviceId>,
}

impl CryptoInput {
    /// Whether the transaction carried nothing for encryption.
    pub fn is_empty(&self) -> bool {
        self.to_device.is_empty()
            && self.to_device_unstable.is_empty()
            && [&self.device_lists_field, &self.device_lists_unstable]
                .iter()
                .all(|lists| lists.as_ref().is_none_or(|l| l.changed.is_empty() && l.left.is_empty()))
            && self.device_one_time_keys_count.is_empty()
            && self.device_one_time_keys_count_unstable.is_empty()
            && self.device_unused_fallback_key_types.is_empty()
            && self.device_unused_fallback_key_types_unstable.is_empty()
    }

    /// Settles each field on whichever of its names came. Call once, before the rest.
    pub fn settle(&mut self) {
        self.device_lists = self.device_lists_field.take().or(self.device_lists_unstable.take()).unwrap_or_default();
        self.to_device.append(&mut self.to_device_unstable);
        if self.device_one_time_keys_count.is_empty() {
            self.device_one_time_keys_count = std::mem::take(&mut self.device_one_time_keys_count_unstable);
        }
        if self.device_unused_fallback_key_types.is_empty() {
            self.device_unused_fallback_key_types = std::mem::take(&mut self.device_unused_fallback_key_types_unstable);
        }
    }

    /// The users something is addressed to (to-device messages, key counts).
    pub fn recipients(&self) -> BTreeSet<OwnedUserId> {
        let mut users: BTreeSet<OwnedUserId> =
            self.to_device.iter().filter_map(|raw| recipient(raw)).map(|r| r.to_user_id).collect();
        users.extend(self.device_one_time_keys_count.keys().cloned());
        users.extend(self.device_unused_fallback_key_types.keys().cloned());
        users
    }

    /// What is addressed to `user`'s device `device`. Homeservers report key counts for
    /// every "device" of a user, cross-signing keys included: only ours is taken.
    pub fn for_device(&self, user: &UserId, device: &DeviceId) -> DeviceChanges {
        let to_device = self
            .to_device
            .iter()
            .filter(|raw| {
                recipient(raw).is_some_and(|r| {
                    r.to_user_id == user && r.to_device_id.as_ref().is_none_or(|d| d == device || d.as_str() == "*")
                })
            })
            .map(|raw| Raw::from_json(raw.clone()))
            .collect();
        let one_time_keys =
            self.device_one_time_keys_count.get(user).and_then(|d| d.get(device)).cloned().unwrap_or_default();
        let fallback_keys = self.device_unused_fallback_key_types.get(user).and_then(|d| d.get(device)).cloned();
        DeviceChanges { to_device, one_time_keys, fallback_keys }
    }
}

fn recipient(raw: &RawValue) -> Option<Recipient> {
    serde_json::from_str(raw.get()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> OwnedUserId {
        OwnedUserId::try_from(id).unwrap()
    }

    /// As Synapse pushes it: unstable names, and key counts for every "device" of a user,
    /// its cross-signing keys included.
    const SYNAPSE_BODY: &str = r#"{
        "events": [],
        "de.sorunome.msc2409.to_device": [
            {"type": "m.room.encrypted", "sender": "@alice:hs", "content": {"n": 1},
             "to_user_id": "@agent:hs", "to_device_id": "MOSAICAAA"},
            {"type": "m.room.encrypted", "sender": "@alice:hs", "content": {"n": 2},
             "to_user_id": "@agent:hs", "to_device_id": "OTHERDEVICE"},
            {"type": "m.room_key_request", "sender": "@alice:hs", "content": {"n": 3},
             "to_user_id": "@agent:hs", "to_device_id": "*"},
            {"type": "m.room.encrypted", "sender": "@alice:hs", "content": {"n": 4},
             "to_user_id": "@bot:hs", "to_device_id": "MOSAICBBB"}
        ],
        "org.matrix.msc3202.device_lists": {"changed": ["@alice:hs"], "left": []},
        "org.matrix.msc3202.device_one_time_keys_count": {
            "@agent:hs": {"MOSAICAAA": {"signed_curve25519": 49}, "crossSigningKeyBase64": {}}
        },
        "org.matrix.msc3202.device_one_time_key_counts": {
            "@agent:hs": {"MOSAICAAA": {"signed_curve25519": 49}}
        },
        "org.matrix.msc3202.device_unused_fallback_key_types": {
            "@agent:hs": {"MOSAICAAA": ["signed_curve25519"], "crossSigningKeyBase64": []}
        }
    }"#;

    #[test]
    fn each_device_gets_only_what_is_addressed_to_it() {
        let mut input: CryptoInput = serde_json::from_str(SYNAPSE_BODY).unwrap();
        assert!(!input.is_empty());
        input.settle();
        assert_eq!(input.recipients(), [user("@agent:hs"), user("@bot:hs")].into());
        assert_eq!(input.device_lists.changed, vec![user("@alice:hs")]);

        let agent = input.for_device(&user("@agent:hs"), "MOSAICAAA".into());
        let numbers: Vec<i64> = agent
            .to_device
            .iter()
            .map(|raw| {
                serde_json::from_str::<serde_json::Value>(raw.json().get()).unwrap()["content"]["n"].as_i64().unwrap()
            })
            .collect();
        // Its own device's message and the one for all devices, not another device's.
        assert_eq!(numbers, vec![1, 3]);
        assert_eq!(agent.one_time_keys.get(&OneTimeKeyAlgorithm::SignedCurve25519), Some(&UInt::from(49u32)));
        assert_eq!(agent.fallback_keys, Some(vec![OneTimeKeyAlgorithm::SignedCurve25519]));

        let bot = input.for_device(&user("@bot:hs"), "MOSAICBBB".into());
        assert_eq!(bot.to_device.len(), 1);
        assert!(bot.one_time_keys.is_empty() && bot.fallback_keys.is_none());
    }

    #[test]
    fn stable_names_are_read_too_and_a_plain_transaction_carries_nothing() {
        let stable = r#"{"events": [], "to_device": [{"type": "m.dummy", "sender": "@a:hs", "content": {},
            "to_user_id": "@agent:hs", "to_device_id": "D"}], "device_lists": {"changed": [], "left": ["@b:hs"]}}"#;
        let mut input: CryptoInput = serde_json::from_str(stable).unwrap();
        input.settle();
        assert_eq!(input.for_device(&user("@agent:hs"), "D".into()).to_device.len(), 1);
        assert_eq!(input.device_lists.left, vec![user("@b:hs")]);

        let plain: CryptoInput = serde_json::from_str(r#"{"events": [{"type": "m.room.message"}]}"#).unwrap();
        assert!(plain.is_empty());
    }
}
