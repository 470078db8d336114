//! What two or more services share: task, peer and host IDs, the piece-length rule.

pub mod id;
#[cfg(feature = "manager-client")]
pub mod manager_client;
pub mod net;
pub mod piece;
pub mod upstream_keys;
