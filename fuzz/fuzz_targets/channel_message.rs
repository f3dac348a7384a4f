//! `ChannelMessage`, the documented wire format: whatever parses must serialise, parse
//! back to the same message, and serialise to the same text again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosaic_as::protocol::ChannelMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = serde_json::from_slice::<ChannelMessage>(data) else {
        return;
    };
    let json = serde_json::to_string(&msg).expect("a parsed message serialises");
    let back: ChannelMessage =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("own output must parse: {e}: {json}"));
    assert_eq!(back, msg, "round trip changed the message: {json}");
    assert_eq!(serde_json::to_string(&back).unwrap(), json, "serialisation is stable");
});
