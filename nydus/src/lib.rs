//! RAFS (Nydus image metadata) on-disk formats.
//!
//! This crate starts with the byte-exact structures of the RAFS v6 bootstrap, which is an EROFS
//! image plus RAFS-only tables:
//!
//! - [`flags`]: flag words and algorithm codes shared by every format ([`RafsSuperFlags`],
//!   [`BlobFeatures`], [`BlobChunkFlags`], [`Compressor`], [`Digester`]);
//! - [`chunk`]: chunk limits and the 80-byte [`ChunkInfo`] entry shared by v5 and v6;
//! - [`codec`]: per-chunk data compression, digests, CRC32C and chunking, shared by the blob
//!   writer and the runtime;
//! - [`v5`]: a reader for the older FUSE-only RAFS v5 bootstrap (superblock, tables, inodes);
//! - [`v6`]: the EROFS superblock, the RAFS extended superblock, device slots, blob table
//!   entries, inodes, dirents, inline xattrs and chunk addresses.
//!
//! Every structure decodes from a byte slice (checking its length first, never panicking and never
//! allocating from sizes it read) and encodes to a fixed-size array. Decoding only checks that
//! enough bytes are present; the `validate` methods check the values the way Nydus does when it
//! loads a bootstrap. All integers are little-endian.

pub mod blobfs;
pub mod blobmeta;
pub mod build;
pub mod chunk;
pub mod codec;
mod error;
pub mod flags;
pub mod fusefs;
pub mod image;
mod le;
pub mod nydusify;
pub mod reader;
pub mod takeover;
pub mod toc;
pub mod tree;
pub mod unpack;
pub mod v5;
pub mod v6;

pub use chunk::ChunkInfo;
pub use codec::CodecError;
pub use error::FormatError;
pub use flags::{BlobChunkFlags, BlobFeatures, Compressor, Digester, RafsSuperFlags};
