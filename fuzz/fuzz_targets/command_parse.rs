//! Chat command parsing with both prefixes (`!` on Matrix and Discord, `/` on Telegram):
//! never panics, and every usage answer says something.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosaic_as::hub::commands;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let surfaces = mosaic_as::surfaces::built_in();
    for prefix in ['!', '/'] {
        if let Some(Err(usage)) = commands::parse(commands::Syntax { prefix, surfaces: &surfaces }, text) {
            assert!(!usage.0.trim().is_empty(), "an empty usage answer for {text:?}");
        }
    }
});
