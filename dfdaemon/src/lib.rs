//! Node agent library: config, piece store, back-to-source engine, registry
//! mirror / proxy, download API, GC and telemetry.

pub mod backend;
pub mod config;
pub mod daemon;
pub mod dfget;
pub mod dfinit;
pub mod download;
pub mod dynconfig;
pub mod gc;
pub mod grpc;
pub mod lazy;
pub mod metrics;
pub mod p2p;
pub mod parent;
pub mod proxy;
pub mod rate_limit;
pub mod registry_auth;
pub mod runtime;
pub mod scheduler_client;
pub mod storage;
pub mod transport;
pub mod vortex;
