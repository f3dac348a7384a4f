//! The requests an Olm machine asks for, sent as its device and answered back to it.

use matrix_sdk_crypto::types::requests::{AnyOutgoingRequest, OutgoingRequest, ToDeviceRequest};
use ruma::api::client::keys::get_keys;
use ruma::api::client::message::send_message_event;
use ruma::api::client::to_device::send_event_to_device;
use ruma::events::MessageLikeEventContent;
use ruma::serde::Raw;

use super::{Crypto, Device, E2eeError};

/// Sends every request the machine has queued, in order, until none is left.
pub async fn send_queued(crypto: &Crypto, device: &Device) -> Result<(), E2eeError> {
    let machine = device.machine();
    // Each answer may queue more (an upload answered with low counts asks for more keys),
    // but never without end: a few rounds settle it.
    for _ in 0..4 {
        let queued = machine.outgoing_requests().await?;
        if queued.is_empty() {
            break;
        }
        for request in queued {
            send(crypto, device, request).await?;
        }
    }
    Ok(())
}

/// Sends one request as the machine's device and hands the answer back to it.
pub async fn send(crypto: &Crypto, device: &Device, request: OutgoingRequest) -> Result<(), E2eeError> {
    let machine = device.machine();
    let id = request.request_id();
    match request.request() {
        AnyOutgoingRequest::KeysUpload(upload) => {
            let response = crypto.call(device, upload.clone()).await?;
            machine.mark_request_as_sent(id, &response).await?;
        }
        AnyOutgoingRequest::KeysQuery(query) => {
            let mut request = get_keys::v3::Request::new();
            request.device_keys = query.device_keys.clone();
            request.timeout = query.timeout;
            let response = crypto.call(device, request).await?;
            machine.mark_request_as_sent(id, &response).await?;
        }
        AnyOutgoingRequest::KeysClaim(claim) => {
            let response = crypto.call(device, claim.clone()).await?;
            machine.mark_request_as_sent(id, &response).await?;
        }
        AnyOutgoingRequest::ToDeviceRequest(to_device) => send_to_device(crypto, device, to_device).await?,
        AnyOutgoingRequest::SignatureUpload(signatures) => {
            let response = crypto.call(device, signatures.clone()).await?;
            machine.mark_request_as_sent(id, &response).await?;
        }
        AnyOutgoingRequest::RoomMessage(message) => {
            // Verification in a room: our devices start none, but answer as asked.
            let content = Raw::new(&*message.content).map_err(|e| E2eeError::Olm(e.to_string()))?.cast_unchecked();
            let request = send_message_event::v3::Request::new_raw(
                message.room_id.clone(),
                message.txn_id.clone(),
                message.content.event_type(),
                content,
            );
            let response = crypto.call(device, request).await?;
            machine.mark_request_as_sent(id, &response).await?;
        }
    }
    Ok(())
}

/// Sends a to-device message (a room key share, a key request) and tells the machine.
pub async fn send_to_device(crypto: &Crypto, device: &Device, to_device: &ToDeviceRequest) -> Result<(), E2eeError> {
    let request = send_event_to_device::v3::Request::new_raw(
        to_device.event_type.clone(),
        to_device.txn_id.clone(),
        to_device.messages.clone(),
    );
    let response = crypto.call(device, request).await?;
    device.machine().mark_request_as_sent(&to_device.txn_id, &response).await?;
    Ok(())
}
