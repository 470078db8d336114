//! What two or more services share: task, peer and host IDs, the piece-length rule.

pub mod id;
pub mod piece;
