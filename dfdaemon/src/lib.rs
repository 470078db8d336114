//! Node agent library: config, piece store, back-to-source engine, registry
//! mirror / proxy, download API, GC and telemetry.

pub mod backend;
pub mod config;
pub mod storage;
pub mod metrics;
pub mod download;
pub mod dfinit;
pub mod proxy;
pub mod grpc;
pub mod gc;
pub mod daemon;
pub mod dfget;
