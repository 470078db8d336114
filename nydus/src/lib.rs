//! RAFS v6 format, blob format, FUSE runtime and OCI<->Nydus conversion.
//!
//! Filled by the Nydus issues; nothing is implemented yet.
