//! RAFS v6: an EROFS image whose regular files are chunk-based and point into data blobs (EROFS
//! extra devices), plus RAFS-only tables the kernel never looks at.
//!
//! ```text
//! 0      1024        1152             1408                  4K-aligned          4K-aligned = meta_blkaddr << blkszbits
//! | zero | EROFS sb  | RAFS ext sb    | device slots n*128  | blob table n*256 | prefetch u32[] | inodes, dirents, ...
//! ... | chunk info table (n * 80 B, 4K-aligned) |
//! ```
//!
//! [`layout`] holds the superblocks and tables at fixed places; [`inode`] holds what lives in the
//! inode area (inodes, inline xattrs, chunk addresses, dirents); [`reader`] reads a whole
//! bootstrap held in memory.

pub mod inode;
pub mod layout;
pub mod reader;
pub mod writer;

pub use crate::chunk::ChunkInfo;
pub use inode::{
    split_xattr_name, xattr_entry_size, xattr_ibody_size, xattr_icount, xattr_prefix, ChunkAddr,
    ChunkIndexHeader, DataLayout, Dirent, FileType, Inode, InodeCompact, InodeExtended,
    InodeFormat, InodeLayout, XattrEntryHeader, XattrIbodyHeader,
};
pub use layout::{
    nid_to_offset, offset_to_nid, prefetch_nids, BlobEntry, DeviceSlot, SuperBlock, SuperBlockExt,
};
pub use reader::{Bootstrap, DirEntry, InodeRef, WalkEntry, Xattr};
pub use writer::{write_bootstrap, WriteOptions};
