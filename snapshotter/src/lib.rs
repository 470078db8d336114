//! containerd remote snapshotter: overlayfs semantics for OCI layers, Nydus blob layers
//! committed without a download, and (served by dfdaemon) RAFS mounts under Nydus images.
//!
//! - [`core`]: the sans-IO snapshot tree (containerd's rules, mounts, label classification,
//!   what `Cleanup` may delete);
//! - [`store`]: its records in a transactional database (redb);
//! - [`filter`]: containerd's filter syntax for `List`;
//! - [`service`]: the `Snapshotter` trait and the gRPC service
//!   `containerd.services.snapshots.v1.Snapshots` for any implementation;
//! - [`overlay`]: the implementation over a directory.

pub mod core;
pub mod filter;
pub mod overlay;
pub mod service;
pub mod store;

pub use core::{Kind, Mount, SnapshotError};
pub use overlay::{AbortAt, Overlay};
pub use service::{Info, Rafs, SnapshotsServer, Snapshotter};
