//! Integration test harness: real docker-registry (distribution 2.8), real containerd 1.6, an
//! in-process HTTP origin with fault knobs, an in-process registry token server, and an OCI image
//! builder that needs no Docker.
//!
//! Everything listens on 127.0.0.1 only, every daemon runs in its own session with its log in the
//! test's [`TestDir`], and everything is torn down on drop (see each type's `Drop`).
//!
//! Tests that use this crate must call [`require_root_and_tools`] first: a missing prerequisite is
//! a test failure, never a skip.

pub mod agent;
pub mod bench;
pub mod browser;
pub mod certs;
pub mod cluster;
pub mod containerd;
pub mod cri;
mod error;
pub mod fstree;
pub mod harbor;
mod http_client;
mod http_server;
pub mod image;
mod mounts;
pub mod nydusd;
pub mod origin;
mod ports;
mod prereq;
pub mod process;
pub mod registry;
pub mod snapshots;
pub mod systemd;
mod testdir;
mod tools;
mod wait;

pub use containerd::{Containerd, ContainerdClient, ContainerdConfig, HostsToml, MirrorHost};
pub use cri::{CriClient, CriImage};
pub use error::{Error, Result};
pub use http_client::{http_client, http_client_builder, install_crypto_provider};
pub use image::{
    build_oci_index, build_oci_layout, extract_tar, feature_image_layers,
    feature_image_layers_with, oci_arch, random_bytes, sha256_digest, unpack_with_umoci,
    BuiltLayer, Compression, EntryMeta, FeatureImageOptions, ImageConfig, ImageInfo, IndexInfo,
    LayerEntry, LayerSpec, OciImage, OciIndex, PlatformImage, RandomReader, SparseReader,
};
pub use origin::{ObjectOptions, OriginRequest, TestOrigin};
pub use ports::free_port;
pub use prereq::require_root_and_tools;
pub use process::{ChildProcess, Signal};
pub use registry::{
    AccessLogEntry, Registry, RegistryClient, TokenAuthOptions, TokenRequest, TokenServer,
};
pub use testdir::TestDir;
pub use tools::{nydusify_convert, Rng};
pub use wait::wait_for;
