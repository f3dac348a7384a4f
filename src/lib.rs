//! mosaic-as: a Matrix application service that hosts AI agents as Matrix users and
//! bridges other chat networks into the same conversations through one `ChannelMessage`
//! protocol.
//!
//! Data flows in one direction: surfaces (adapters) → hub (persist, route, fan out) →
//! agents, and back. Durable queues in the store sit between every step so that nothing
//! acknowledged is lost and nothing is sent twice.

pub mod admin;
pub mod agents;
pub mod app;
pub mod cli;
pub mod conduit;
pub mod config;
pub mod discord;
pub mod error_ref;
pub mod hub;
pub mod matrix;
pub mod metrics;
pub mod namespace;
pub mod permissions;
pub mod protocol;
pub mod queue;
pub mod secrets;
pub mod store;
pub mod surfaces;
pub mod telegram;
