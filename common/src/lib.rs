//! What two or more services share: task, peer and host IDs, the piece-length rule.

pub mod id;
#[cfg(feature = "manager-client")]
pub mod manager_client;
pub mod net;
pub mod piece;
pub mod registry_challenge;
pub mod swarm;
#[cfg(feature = "tls")]
pub mod tls;
pub mod upstream_keys;
/// The scheduler's job service (`dragonfly_rs.jobs.v1.Jobs`, `proto/jobs.proto`).
#[cfg(feature = "jobs-api")]
pub mod jobs_api {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("dragonfly_rs.jobs.v1");
}
