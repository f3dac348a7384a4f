//! The Matrix surface: the appservice HTTP API, the homeserver client, ghosts, rooms and
//! message formatting.

pub mod adapter;
pub mod catch_up;
pub mod client;
pub mod e2ee;
pub mod format;
pub mod ghosts;
pub mod home_rooms;
pub mod inbox;
pub mod media;
pub mod names;
pub mod power;
pub mod registration;
pub mod rooms;
pub mod server;
pub mod teams;
pub mod typing;

pub use adapter::{CHANNEL, MatrixAdapter};
