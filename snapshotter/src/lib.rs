//! containerd remote snapshotter (overlayfs semantics for OCI layers, RAFS mounts for Nydus layers).
//!
//! Filled by the snapshotter issue; nothing is implemented yet.
