//! RAFS v5: the FUSE-only bootstrap format nydusd maps directly (or loads into memory) and serves
//! through its own FUSE filesystem.
//!
//! ```text
//! 0          8192                                                          (8-byte aligned)
//! | superblock | inode table u32[] | prefetch table u32[] | blob table | ext blob table n*64 |
//! | inode 128 | name | symlink | xattr table | chunk infos n*80 | inode ... (DFS pre-order)
//! ```
//!
//! [`layout`] holds the fixed structures and tables (with encoders, so tests and tools can build
//! images); [`reader`] reads a whole bootstrap held in memory. This crate only reads v5: Nydus
//! itself builds v6 by default.

pub mod layout;
pub mod reader;

#[cfg(test)]
mod testimage;

pub use crate::chunk::ChunkInfo;
pub use crate::v6::FileType;
pub use layout::{
    encode_blob_table, encode_inode_table, encode_prefetch_table, encode_xattrs,
    inode_table_entry_offset, parse_blob_table, parse_xattrs, rafsv5_align, BlobEntryV5,
    ExtBlobEntryV5, InodeFlagsV5, InodeV5, SuperBlockV5, Xattr, RAFSV5_ALIGNMENT,
    RAFSV5_SUPERBLOCK_SIZE, RAFSV5_SUPER_MAGIC, RAFS_MAX_NAME, RAFS_SUPER_VERSION_V4,
    RAFS_SUPER_VERSION_V5, RAFS_V5_ROOT_INODE,
};
pub use reader::{BlobInfoV5, BootstrapV5, InodeRefV5, WalkEntryV5, DEFAULT_MAX_DEPTH};
