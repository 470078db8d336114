//! `nydusify`: convert registry images to Nydus and back, check them, copy them.
//!
//! - [`registry`]: one repository of a registry (auth, bounded reads, uploads, retries);
//! - [`manifest`]: media types, annotations and the manifest/config shape of Nydus images;
//! - [`convert`]: OCI → Nydus, streaming each layer through the builder into the target;
//! - [`reverse`]: Nydus → OCI, each blob layer's tar written back from its layer bootstrap;
//! - [`check`]: manifest, bootstrap and filesystem rules of a Nydus image;
//! - [`copy`]: copying a Nydus image between registries;
//! - [`pipe`], [`progress`]: plumbing between async transfers and the blocking builder.

pub mod check;
pub mod convert;
pub mod copy;
pub mod manifest;
pub mod pipe;
pub mod progress;
pub mod registry;
pub mod reverse;
