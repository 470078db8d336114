//! gRPC services of dfdaemon (Dragonfly v2 API).

pub mod download;
pub mod upload;
