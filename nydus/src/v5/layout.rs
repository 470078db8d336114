//! The fixed structures of a RAFS v5 bootstrap: the 8 KiB superblock, the inode, prefetch, blob
//! and extended blob tables, the 128-byte inode and the per-inode xattr table.
//!
//! Everything is 8-byte aligned ([`RAFSV5_ALIGNMENT`]); names, symlink targets, xattr tables and
//! the u32 tables are zero-padded to the next multiple of 8.

use std::fmt;
use std::ops::BitOr;

use crate::chunk::{is_valid_chunk_size, RAFS_DEFAULT_CHUNK_SIZE, RAFS_MAX_CHUNKS_PER_BLOB};
use crate::le::{array, fixed, put, put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};
use crate::v6::FileType;
use crate::{BlobFeatures, Compressor, Digester, FormatError, RafsSuperFlags};

/// RAFS v5 superblock magic (`RAFSV5_SUPER_MAGIC`; bytes `53 46 41 52` on disk).
pub const RAFSV5_SUPER_MAGIC: u32 = 0x5241_4653;
/// `s_fs_version` of RAFS v5.
pub const RAFS_SUPER_VERSION_V5: u32 = 0x500;
/// `s_fs_version` of RAFS v4, the same layout; accepted by this reader (Nydus 2.4 itself only
/// loads 0x500).
pub const RAFS_SUPER_VERSION_V4: u32 = 0x400;
/// Size of the superblock, which is also the offset of the first table.
pub const RAFSV5_SUPERBLOCK_SIZE: usize = 8192;
/// Alignment of every structure, table and padded string.
pub const RAFSV5_ALIGNMENT: u64 = 8;
/// Inode number of the root directory.
pub const RAFS_V5_ROOT_INODE: u64 = 1;
/// Longest file name (`RAFS_MAX_NAME`).
pub const RAFS_MAX_NAME: usize = 255;
/// Inode table entries are byte offsets `>> 3` and must be below this (Nydus keeps inode
/// offsets below 4 GiB).
const INODE_TABLE_ENTRY_LIMIT: u32 = 1 << 29;

/// `size` rounded up to [`RAFSV5_ALIGNMENT`]; `None` on overflow.
pub const fn rafsv5_align(size: u64) -> Option<u64> {
    size.checked_next_multiple_of(RAFSV5_ALIGNMENT)
}

/// Whether `offset..offset + size` lies inside `0..limit`.
fn within(offset: u64, size: u64, limit: u64) -> bool {
    offset.checked_add(size).is_some_and(|end| end <= limit)
}

/// `bytes` followed by zeros up to the next multiple of 8.
fn pad8(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.resize(bytes.len().next_multiple_of(RAFSV5_ALIGNMENT as usize), 0);
    bytes
}

/// The RAFS v5 superblock (Nydus `RafsV5SuperBlock`, 8192 bytes at file offset 0).
///
/// The reserved bytes from 80 are written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SuperBlockV5 {
    /// @0 `s_magic`: [`RAFSV5_SUPER_MAGIC`].
    pub magic: u32,
    /// @4 `s_fs_version`: [`RAFS_SUPER_VERSION_V5`] (or [`RAFS_SUPER_VERSION_V4`]).
    pub fs_version: u32,
    /// @8 `s_sb_size`: [`RAFSV5_SUPERBLOCK_SIZE`].
    pub sb_size: u32,
    /// @12 `s_block_size`: the chunk size of every file.
    pub block_size: u32,
    /// @16 `s_flags`: filesystem flags; exactly one compression and one hash bit.
    pub flags: RafsSuperFlags,
    /// @24 `s_inodes_count`: unique inodes (hard links count once); at most the inode table
    /// entries.
    pub inodes_count: u64,
    /// @32 `s_inode_table_offset`: file offset of the inode table (8192 as Nydus writes it).
    pub inode_table_offset: u64,
    /// @40 `s_prefetch_table_offset`: file offset of the prefetch table.
    pub prefetch_table_offset: u64,
    /// @48 `s_blob_table_offset`: file offset of the blob table.
    pub blob_table_offset: u64,
    /// @56 `s_inode_table_entries`: entries (u32 each) of the inode table.
    pub inode_table_entries: u32,
    /// @60 `s_prefetch_table_entries`: entries (u32 each) of the prefetch table.
    pub prefetch_table_entries: u32,
    /// @64 `s_blob_table_size`: blob table size in **bytes** (padding included).
    pub blob_table_size: u32,
    /// @68 `s_extended_blob_table_entries`: entries (64 bytes each) of the extended blob table.
    pub extended_blob_table_entries: u32,
    /// @72 `s_extended_blob_table_offset`: file offset of the extended blob table.
    pub extended_blob_table_offset: u64,
}

impl SuperBlockV5 {
    /// Encoded size.
    pub const SIZE: usize = RAFSV5_SUPERBLOCK_SIZE;
    const WHAT: &'static str = "SuperBlockV5";

    /// A superblock with the fixed v5 values (magic, version, size) and the default chunk size;
    /// everything else zero.
    pub fn new() -> Self {
        Self {
            magic: RAFSV5_SUPER_MAGIC,
            fs_version: RAFS_SUPER_VERSION_V5,
            sb_size: Self::SIZE as u32,
            block_size: RAFS_DEFAULT_CHUNK_SIZE,
            ..Self::default()
        }
    }

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, Self::WHAT)?;
        Ok(Self {
            magic: u32_at(b, 0),
            fs_version: u32_at(b, 4),
            sb_size: u32_at(b, 8),
            block_size: u32_at(b, 12),
            flags: RafsSuperFlags::from_bits(u64_at(b, 16)),
            inodes_count: u64_at(b, 24),
            inode_table_offset: u64_at(b, 32),
            prefetch_table_offset: u64_at(b, 40),
            blob_table_offset: u64_at(b, 48),
            inode_table_entries: u32_at(b, 56),
            prefetch_table_entries: u32_at(b, 60),
            blob_table_size: u32_at(b, 64),
            extended_blob_table_entries: u32_at(b, 68),
            extended_blob_table_offset: u64_at(b, 72),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u32(&mut b, 0, self.magic);
        put_u32(&mut b, 4, self.fs_version);
        put_u32(&mut b, 8, self.sb_size);
        put_u32(&mut b, 12, self.block_size);
        put_u64(&mut b, 16, self.flags.bits());
        put_u64(&mut b, 24, self.inodes_count);
        put_u64(&mut b, 32, self.inode_table_offset);
        put_u64(&mut b, 40, self.prefetch_table_offset);
        put_u64(&mut b, 48, self.blob_table_offset);
        put_u32(&mut b, 56, self.inode_table_entries);
        put_u32(&mut b, 60, self.prefetch_table_entries);
        put_u32(&mut b, 64, self.blob_table_size);
        put_u32(&mut b, 68, self.extended_blob_table_entries);
        put_u64(&mut b, 72, self.extended_blob_table_offset);
        b
    }

    /// The chunk compressor named by the flags.
    pub fn compressor(&self) -> Result<Compressor, FormatError> {
        self.flags.compressor().ok_or_else(|| {
            FormatError::field(
                Self::WHAT,
                "s_flags",
                16,
                self.flags.bits(),
                "must have exactly one compression bit",
            )
        })
    }

    /// The chunk digest algorithm named by the flags.
    pub fn digester(&self) -> Result<Digester, FormatError> {
        self.flags.digester().ok_or_else(|| {
            FormatError::field(
                Self::WHAT,
                "s_flags",
                16,
                self.flags.bits(),
                "must have exactly one hash bit",
            )
        })
    }

    /// Byte size of the inode table (without padding).
    pub fn inode_table_size(&self) -> u64 {
        u64::from(self.inode_table_entries) * 4
    }

    /// Byte size of the prefetch table (without padding).
    pub fn prefetch_table_size(&self) -> u64 {
        u64::from(self.prefetch_table_entries) * 4
    }

    /// Byte size of the extended blob table.
    pub fn extended_blob_table_size(&self) -> u64 {
        u64::from(self.extended_blob_table_entries) * ExtBlobEntryV5::SIZE as u64
    }

    /// Checks the superblock of a bootstrap of `meta_size` bytes the way Nydus does
    /// (`RafsV5SuperBlock::validate`): magic, version, sizes, chunk size, flags (no unknown bit,
    /// exactly one compressor and one digester), and that every table is 8-byte aligned, lies
    /// after the superblock and inside the bootstrap, and overlaps no other table.
    pub fn validate(&self, meta_size: u64) -> Result<(), FormatError> {
        let what = Self::WHAT;
        if self.magic != RAFSV5_SUPER_MAGIC {
            return Err(FormatError::BadMagic {
                what,
                offset: 0,
                expected: RAFSV5_SUPER_MAGIC,
                found: self.magic,
            });
        }
        if self.fs_version != RAFS_SUPER_VERSION_V5 && self.fs_version != RAFS_SUPER_VERSION_V4 {
            return Err(FormatError::field(
                what,
                "s_fs_version",
                4,
                self.fs_version,
                "must be 0x500 (or 0x400)",
            ));
        }
        if self.sb_size as usize != Self::SIZE {
            return Err(FormatError::field(
                what,
                "s_sb_size",
                8,
                self.sb_size,
                "must be 8192",
            ));
        }
        if meta_size <= Self::SIZE as u64 || !meta_size.is_multiple_of(RAFSV5_ALIGNMENT) {
            return Err(FormatError::Invalid {
                what: "bootstrap",
                reason: format!(
                    "size {meta_size} must be larger than the 8192-byte superblock and a multiple of 8"
                ),
            });
        }
        if !is_valid_chunk_size(self.block_size) {
            return Err(FormatError::field(
                what,
                "s_block_size",
                12,
                self.block_size,
                "must be a power of two in 4 KiB..=16 MiB",
            ));
        }
        let unknown = self.flags.unknown_bits();
        if unknown != 0 {
            return Err(FormatError::field(
                what,
                "s_flags",
                16,
                self.flags.bits(),
                format!("has unknown bits {unknown:#x}"),
            ));
        }
        self.compressor()?;
        self.digester()?;

        if self.inode_table_entries == 0 {
            return Err(FormatError::field(
                what,
                "s_inode_table_entries",
                56,
                self.inode_table_entries,
                "must not be 0 (the root is inode 1)",
            ));
        }
        if self.inodes_count > u64::from(self.inode_table_entries) {
            return Err(FormatError::field(
                what,
                "s_inodes_count",
                24,
                self.inodes_count,
                format!(
                    "more unique inodes than the {} inode table entries",
                    self.inode_table_entries
                ),
            ));
        }

        let inode_table = table_range(
            "s_inode_table_offset",
            32,
            self.inode_table_offset,
            self.inode_table_size(),
            meta_size,
            &[],
        )?;
        let blob_table = table_range(
            "s_blob_table_offset",
            48,
            self.blob_table_offset,
            self.blob_table_size.into(),
            meta_size,
            &[("inode table", inode_table)],
        )?;
        let mut tables = vec![("inode table", inode_table), ("blob table", blob_table)];
        if self.extended_blob_table_entries != 0 {
            let ext = table_range(
                "s_extended_blob_table_offset",
                72,
                self.extended_blob_table_offset,
                self.extended_blob_table_size(),
                meta_size,
                &tables,
            )?;
            tables.push(("extended blob table", ext));
        }
        if self.prefetch_table_entries != 0 {
            table_range(
                "s_prefetch_table_offset",
                40,
                self.prefetch_table_offset,
                self.prefetch_table_size(),
                meta_size,
                &tables,
            )?;
        }
        Ok(())
    }
}

/// Checks that the table at `offset` of `size` bytes is 8-byte aligned, lies between the end of
/// the superblock and `meta_size`, and overlaps none of `others`; returns its `(start, end)`.
fn table_range(
    field: &'static str,
    field_offset: usize,
    offset: u64,
    size: u64,
    meta_size: u64,
    others: &[(&str, (u64, u64))],
) -> Result<(u64, u64), FormatError> {
    let bad = |reason: String| {
        FormatError::field(SuperBlockV5::WHAT, field, field_offset, offset, reason)
    };
    if !offset.is_multiple_of(RAFSV5_ALIGNMENT) || offset < SuperBlockV5::SIZE as u64 {
        return Err(bad("must be 8-byte aligned and after the superblock".into()));
    }
    if !within(offset, size, meta_size) {
        return Err(bad(format!(
            "table of {size} bytes ends past the {meta_size}-byte bootstrap"
        )));
    }
    let range = (offset, offset + size);
    if size != 0 {
        for (name, (start, end)) in others {
            if start < end && range.0 < *end && range.1 > *start {
                return Err(bad(format!(
                    "table of {size} bytes overlaps the {name} at {start}..{end}"
                )));
            }
        }
    }
    Ok(range)
}

/// The byte offset stored in one inode table entry (`offset >> 3`), if it is one Nydus
/// accepts: past the superblock and below 4 GiB.
pub fn inode_table_entry_offset(entry: u32) -> Option<u64> {
    let limit = (RAFSV5_SUPERBLOCK_SIZE as u64 / RAFSV5_ALIGNMENT) as u32;
    (entry > limit && entry < INODE_TABLE_ENTRY_LIMIT).then_some(u64::from(entry) << 3)
}

/// The inode table for inode byte offsets `offsets` (entry `i` for inode `i + 1`), padded to 8
/// bytes. Fails on an offset that is not 8-byte aligned, not past the superblock or not below
/// 4 GiB.
pub fn encode_inode_table(offsets: &[u64]) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::with_capacity(offsets.len() * 4 + 4);
    for (i, &offset) in offsets.iter().enumerate() {
        let entry = u32::try_from(offset / RAFSV5_ALIGNMENT)
            .ok()
            .filter(|&e| {
                offset.is_multiple_of(RAFSV5_ALIGNMENT) && inode_table_entry_offset(e).is_some()
            })
            .ok_or_else(|| FormatError::Invalid {
                what: "InodeTableV5",
                reason: format!(
                    "inode {}: offset {offset} must be 8-byte aligned, past 8192 and below 4 GiB",
                    i + 1
                ),
            })?;
        out.extend_from_slice(&entry.to_le_bytes());
    }
    Ok(pad8(out))
}

/// The prefetch table holding inode numbers `inos`, padded to 8 bytes.
pub fn encode_prefetch_table(inos: &[u32]) -> Vec<u8> {
    pad8(inos.iter().flat_map(|i| i.to_le_bytes()).collect())
}

/// One entry of the blob table: where the blob's prefetch range is and the blob id.
///
/// On disk: `u32 readahead_offset | u32 readahead_size | blob id`, entries separated by one
/// NUL (none after the last), the whole table padded to 8 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct BlobEntryV5 {
    /// Start of the blob's prefetch (readahead) range.
    pub readahead_offset: u32,
    /// Length of the blob's prefetch range.
    pub readahead_size: u32,
    /// The blob id (usually 64 hex chars of a sha256; never empty, no NUL).
    pub blob_id: String,
}

const BLOB_ENTRY_HEADER: usize = 8;

/// Decodes a blob table of `s_blob_table_size` bytes the way Nydus does: entries are read
/// while more than 8 bytes remain, so the trailing padding is skipped. A blob id must be
/// non-empty UTF-8.
pub fn parse_blob_table(table: &[u8]) -> Result<Vec<BlobEntryV5>, FormatError> {
    let mut out = Vec::new();
    let mut rest = table;
    while rest.len() > BLOB_ENTRY_HEADER {
        let position = table.len() - rest.len();
        let id_area = rest.get(BLOB_ENTRY_HEADER..).unwrap_or_default();
        let id_len = id_area
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(id_area.len());
        let id = id_area.get(..id_len).unwrap_or_default();
        let bad_id = |reason: &str| {
            FormatError::field(
                "BlobEntryV5",
                "blob_id",
                BLOB_ENTRY_HEADER,
                id_len as u64,
                format!("entry {} at table offset {position}: {reason}", out.len()),
            )
        };
        if id.is_empty() {
            return Err(bad_id("blob id is empty"));
        }
        let blob_id = std::str::from_utf8(id).map_err(|_| bad_id("blob id is not UTF-8"))?;
        out.push(BlobEntryV5 {
            readahead_offset: u32_at(rest, 0),
            readahead_size: u32_at(rest, 4),
            blob_id: blob_id.to_owned(),
        });
        // Skip the id and its NUL separator (absent after the last entry).
        rest = id_area.get(id_len + 1..).unwrap_or_default();
    }
    Ok(out)
}

/// The on-disk blob table for `entries`, padded to 8 bytes (empty for no entries). Fails on an
/// empty blob id or one containing NUL.
pub fn encode_blob_table(entries: &[BlobEntryV5]) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.blob_id.is_empty() || e.blob_id.as_bytes().contains(&0) {
            return Err(FormatError::Invalid {
                what: "BlobEntryV5",
                reason: format!("blob {i}: id {:?} is empty or contains NUL", e.blob_id),
            });
        }
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(&e.readahead_offset.to_le_bytes());
        out.extend_from_slice(&e.readahead_size.to_le_bytes());
        out.extend_from_slice(e.blob_id.as_bytes());
    }
    Ok(pad8(out))
}

/// One extended blob table entry (Nydus `RafsV5ExtBlobEntry`, 64 bytes), one per blob table
/// entry in the same order.
///
/// The reserved bytes from 24 are written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ExtBlobEntryV5 {
    /// @0 `chunk_count`: chunks in the blob (at most 2^24).
    pub chunk_count: u32,
    /// @4 `features`.
    pub features: BlobFeatures,
    /// @8 `uncompressed_size`: size of the blob's uncompressed address space.
    pub uncompressed_size: u64,
    /// @16 `compressed_size`: size of the blob.
    pub compressed_size: u64,
}

impl ExtBlobEntryV5 {
    /// Encoded size.
    pub const SIZE: usize = 64;
    const WHAT: &'static str = "ExtBlobEntryV5";

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, Self::WHAT)?;
        Ok(Self {
            chunk_count: u32_at(b, 0),
            features: BlobFeatures::from_bits(u32_at(b, 4)),
            uncompressed_size: u64_at(b, 8),
            compressed_size: u64_at(b, 16),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u32(&mut b, 0, self.chunk_count);
        put_u32(&mut b, 4, self.features.bits());
        put_u64(&mut b, 8, self.uncompressed_size);
        put_u64(&mut b, 16, self.compressed_size);
        b
    }

    /// Checks the chunk count and that the features hold no incompatible bit and not the
    /// loader-internal [`BlobFeatures::V5_NO_EXT_BLOB_TABLE`].
    pub fn validate(&self) -> Result<(), FormatError> {
        let what = Self::WHAT;
        if self.chunk_count > RAFS_MAX_CHUNKS_PER_BLOB {
            return Err(FormatError::field(
                what,
                "chunk_count",
                0,
                self.chunk_count,
                "more than 2^24 chunks",
            ));
        }
        if self.features.incompat_bits() != 0 {
            return Err(FormatError::field(
                what,
                "features",
                4,
                self.features.bits(),
                "has incompatible feature bits (0xf000)",
            ));
        }
        if self.features.contains(BlobFeatures::V5_NO_EXT_BLOB_TABLE) {
            return Err(FormatError::field(
                what,
                "features",
                4,
                self.features.bits(),
                "has the internal V5_NO_EXT_BLOB_TABLE bit",
            ));
        }
        Ok(())
    }
}

/// Per-inode flags of RAFS v5 (`i_flags`, Nydus `RafsInodeFlags`). Unknown bits are kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct InodeFlagsV5(u64);

impl InodeFlagsV5 {
    /// The inode is a symlink.
    pub const SYMLINK: Self = Self(0x1);
    /// The inode has hard links.
    pub const HARDLINK: Self = Self(0x2);
    /// An xattr table follows the name and symlink target.
    pub const XATTR: Self = Self(0x4);
    /// The file's chunks have holes (their count need not match the size).
    pub const HAS_HOLE: Self = Self(0x8);
    /// Every bit that has a name.
    pub const KNOWN: Self = Self(0xf);

    const NAMES: [(&'static str, u64); 4] = [
        ("SYMLINK", 0x1),
        ("HARDLINK", 0x2),
        ("XATTR", 0x4),
        ("HAS_HOLE", 0x8),
    ];

    /// No bit set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The flags of an on-disk word, unknown bits included.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The on-disk word.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Bits without a name.
    pub const fn unknown_bits(self) -> u64 {
        self.0 & !Self::KNOWN.0
    }
}

impl BitOr for InodeFlagsV5 {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Lists the named bits, then any unknown bits in hex: `InodeFlagsV5(XATTR | 0x100)`.
impl fmt::Debug for InodeFlagsV5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Self::NAMES
            .iter()
            .filter(|(_, bit)| self.0 & bit != 0)
            .map(|(name, _)| (*name).to_owned())
            .collect();
        if self.unknown_bits() != 0 || parts.is_empty() {
            parts.push(format!("{:#x}", self.unknown_bits()));
        }
        write!(f, "InodeFlagsV5({})", parts.join(" | "))
    }
}

/// A RAFS v5 inode (Nydus `RafsV5Inode`, 128 bytes), followed on disk by its name and symlink
/// target (each padded to 8), its xattr table if [`InodeFlagsV5::XATTR`] is set, and for a
/// regular file `i_child_count` 80-byte chunk infos.
///
/// The reserved bytes from 120 are written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct InodeV5 {
    /// @0 `i_digest`: regular file: digest of its chunk digests; symlink: of the target;
    /// directory: of its children's digests.
    pub digest: [u8; 32],
    /// @32 `i_parent`: inode number of the parent directory (0 for the root).
    pub parent: u64,
    /// @40 `i_ino`: the inode number; every name of a hard link carries the first name's.
    pub ino: u64,
    /// @48 `i_uid`.
    pub uid: u32,
    /// @52 `i_gid`.
    pub gid: u32,
    /// @56 `i_projid`.
    pub projid: u32,
    /// @60 `i_mode`: `st_mode`, file type included.
    pub mode: u32,
    /// @64 `i_size`.
    pub size: u64,
    /// @72 `i_blocks`: 512-byte blocks.
    pub blocks: u64,
    /// @80 `i_flags`.
    pub flags: InodeFlagsV5,
    /// @88 `i_nlink`.
    pub nlink: u32,
    /// @92 `i_child_index`: directory: inode number of the first child.
    pub child_index: u32,
    /// @96 `i_child_count`: directory: number of children; regular file: number of chunks.
    pub child_count: u32,
    /// @100 `i_name_size`: length of the name (1..=255).
    pub name_size: u16,
    /// @102 `i_symlink_size`: length of the symlink target (0 unless a symlink).
    pub symlink_size: u16,
    /// @104 `i_rdev`: device number of a device node.
    pub rdev: u32,
    /// @108 `i_mtime_nsec`.
    pub mtime_nsec: u32,
    /// @112 `i_mtime`: seconds.
    pub mtime: u64,
}

impl InodeV5 {
    /// Encoded size.
    pub const SIZE: usize = 128;
    const WHAT: &'static str = "InodeV5";

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, Self::WHAT)?;
        Ok(Self {
            digest: array(b, 0),
            parent: u64_at(b, 32),
            ino: u64_at(b, 40),
            uid: u32_at(b, 48),
            gid: u32_at(b, 52),
            projid: u32_at(b, 56),
            mode: u32_at(b, 60),
            size: u64_at(b, 64),
            blocks: u64_at(b, 72),
            flags: InodeFlagsV5::from_bits(u64_at(b, 80)),
            nlink: u32_at(b, 88),
            child_index: u32_at(b, 92),
            child_count: u32_at(b, 96),
            name_size: u16_at(b, 100),
            symlink_size: u16_at(b, 102),
            rdev: u32_at(b, 104),
            mtime_nsec: u32_at(b, 108),
            mtime: u64_at(b, 112),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, 0, &self.digest);
        put_u64(&mut b, 32, self.parent);
        put_u64(&mut b, 40, self.ino);
        put_u32(&mut b, 48, self.uid);
        put_u32(&mut b, 52, self.gid);
        put_u32(&mut b, 56, self.projid);
        put_u32(&mut b, 60, self.mode);
        put_u64(&mut b, 64, self.size);
        put_u64(&mut b, 72, self.blocks);
        put_u64(&mut b, 80, self.flags.bits());
        put_u32(&mut b, 88, self.nlink);
        put_u32(&mut b, 92, self.child_index);
        put_u32(&mut b, 96, self.child_count);
        put_u16(&mut b, 100, self.name_size);
        put_u16(&mut b, 102, self.symlink_size);
        put_u32(&mut b, 104, self.rdev);
        put_u32(&mut b, 108, self.mtime_nsec);
        put_u64(&mut b, 112, self.mtime);
        b
    }

    /// The file type from `i_mode`, if it is one of the seven.
    pub fn file_type(&self) -> Option<FileType> {
        FileType::from_mode(self.mode)
    }

    /// Whether this is a regular file with more than one name (Nydus `is_hardlink`).
    pub fn is_hardlink(&self) -> bool {
        self.file_type() == Some(FileType::Regular) && self.nlink > 1
    }

    /// Whether an xattr table follows the name and symlink target.
    pub fn has_xattr(&self) -> bool {
        self.flags.contains(InodeFlagsV5::XATTR)
    }

    /// Whether the chunks have holes.
    pub fn has_hole(&self) -> bool {
        self.flags.contains(InodeFlagsV5::HAS_HOLE)
    }

    /// Bytes of the inode plus its padded name and symlink target (where the xattr table, or
    /// else the chunk infos, start).
    pub fn disk_size(&self) -> u64 {
        let padded = |n: u16| u64::from(n).next_multiple_of(RAFSV5_ALIGNMENT);
        Self::SIZE as u64 + padded(self.name_size) + padded(self.symlink_size)
    }

    /// Checks the inode's own fields the way Nydus does (`OndiskInodeWrapper::validate`) in an
    /// image whose inode table has `max_ino` entries: `i_ino` in `1..=max_ino`, a parent unless
    /// it is the root, and one with a smaller number unless the inode has several names, a
    /// non-zero link count, a 1..=255-byte name, a known file type, a directory's children at
    /// numbers after its own and inside the table, and a target for symlinks only.
    pub fn validate(&self, max_ino: u64) -> Result<(), FormatError> {
        let what = Self::WHAT;
        if self.ino == 0 || self.ino > max_ino {
            return Err(FormatError::field(
                what,
                "i_ino",
                40,
                self.ino,
                format!("must be in 1..={max_ino} (the inode table entries)"),
            ));
        }
        if self.ino != RAFS_V5_ROOT_INODE && self.parent == 0 {
            return Err(FormatError::field(
                what,
                "i_parent",
                32,
                self.parent,
                format!("inode {}: only the root has no parent", self.ino),
            ));
        }
        if self.nlink == 0 {
            return Err(FormatError::field(
                what,
                "i_nlink",
                88,
                self.nlink,
                format!("inode {}: must not be 0", self.ino),
            ));
        }
        if self.name_size == 0 || usize::from(self.name_size) > RAFS_MAX_NAME {
            return Err(FormatError::field(
                what,
                "i_name_size",
                100,
                self.name_size,
                format!("inode {}: must be 1..=255", self.ino),
            ));
        }
        let Some(file_type) = self.file_type() else {
            return Err(FormatError::field(
                what,
                "i_mode",
                60,
                self.mode,
                format!("inode {}: no known file type", self.ino),
            ));
        };
        // Nydus exempts regular files with several names; any non-directory can be hard linked,
        // and only the first name's parent is guaranteed to come first.
        let linked = file_type != FileType::Directory && self.nlink > 1;
        if !linked && self.parent >= self.ino {
            return Err(FormatError::field(
                what,
                "i_parent",
                32,
                self.parent,
                format!("inode {}: the parent must have a smaller number", self.ino),
            ));
        }
        if file_type == FileType::Directory && self.child_count > 0 {
            let first = u64::from(self.child_index);
            if first <= self.ino {
                return Err(FormatError::field(
                    what,
                    "i_child_index",
                    92,
                    self.child_index,
                    format!(
                        "directory inode {}: children must come after the directory",
                        self.ino
                    ),
                ));
            }
            if first + u64::from(self.child_count) - 1 > max_ino {
                return Err(FormatError::field(
                    what,
                    "i_child_count",
                    96,
                    self.child_count,
                    format!(
                        "directory inode {}: children {first}.. run past the {max_ino} inode table entries",
                        self.ino
                    ),
                ));
            }
        }
        match (file_type == FileType::Symlink, self.symlink_size) {
            (true, 0) => Err(FormatError::field(
                what,
                "i_symlink_size",
                102,
                self.symlink_size,
                format!("symlink inode {}: target must not be empty", self.ino),
            )),
            (false, n) if n != 0 => Err(FormatError::field(
                what,
                "i_symlink_size",
                102,
                n,
                format!("inode {}: only symlinks have a target", self.ino),
            )),
            _ => Ok(()),
        }
    }
}

/// One xattr: the full name and the value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// Size of the xattr table header (`u64 size`).
pub const XATTR_TABLE_HEADER_SIZE: u64 = 8;

/// Decodes the xattr pairs of an xattr table: `pairs` are the `size` bytes after the `u64 size`
/// header, each pair `u32 pair_size | name | NUL | value` with `pair_size` counting from the
/// name. A pair without a NUL or one running past the table is an error.
pub fn parse_xattrs(pairs: &[u8]) -> Result<Vec<Xattr>, FormatError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < pairs.len() {
        let rest = pairs.get(pos..).unwrap_or_default();
        let header = fixed::<4>(rest, "XattrPairV5")?;
        let pair_size = u32::from_le_bytes(*header);
        let bad = |reason: &str| {
            FormatError::field(
                "XattrPairV5",
                "pair_size",
                0,
                pair_size,
                format!("pair {} at table offset {pos}: {reason}", out.len()),
            )
        };
        let pair = usize::try_from(pair_size)
            .ok()
            .and_then(|n| rest.get(4..4usize.checked_add(n)?))
            .ok_or_else(|| bad("runs past the xattr table"))?;
        let nul = pair
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("has no NUL after the name"))?;
        if nul == 0 {
            return Err(bad("has an empty name"));
        }
        let (name, value) = pair.split_at(nul);
        out.push((name.to_vec(), value.get(1..).unwrap_or_default().to_vec()));
        pos += 4 + pair.len();
    }
    Ok(out)
}

/// The whole on-disk xattr table for `xattrs` (`u64 size`, the pairs, padding to 8), or
/// nothing for no xattrs (then the inode must not have [`InodeFlagsV5::XATTR`]). Fails on an
/// empty name or one containing NUL.
pub fn encode_xattrs(xattrs: &[Xattr]) -> Result<Vec<u8>, FormatError> {
    if xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut pairs = Vec::new();
    for (name, value) in xattrs {
        if name.is_empty() || name.contains(&0) {
            return Err(FormatError::Invalid {
                what: "XattrPairV5",
                reason: format!(
                    "name {:?} is empty or contains NUL",
                    String::from_utf8_lossy(name)
                ),
            });
        }
        let pair_size =
            u32::try_from(name.len() + 1 + value.len()).map_err(|_| FormatError::Invalid {
                what: "XattrPairV5",
                reason: "pair larger than 4 GiB".into(),
            })?;
        pairs.extend_from_slice(&pair_size.to_le_bytes());
        pairs.extend_from_slice(name);
        pairs.push(0);
        pairs.extend_from_slice(value);
    }
    let mut out = (pairs.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&pairs);
    Ok(pad8(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u32 = 0x10_0000;

    /// A superblock as nydus-image writes it: inode table of 5 entries at 8192 (24 bytes
    /// padded), prefetch table of 1 entry, blob table of 80 bytes, ext table of 1 entry.
    fn good_sb() -> SuperBlockV5 {
        SuperBlockV5 {
            flags: RafsSuperFlags::COMPRESSION_ZSTD
                | RafsSuperFlags::HASH_BLAKE3
                | RafsSuperFlags::EXPLICIT_UID_GID,
            inodes_count: 4,
            inode_table_offset: 8192,
            inode_table_entries: 5,
            prefetch_table_offset: 8192 + 24,
            prefetch_table_entries: 1,
            blob_table_offset: 8192 + 32,
            blob_table_size: 80,
            extended_blob_table_offset: 8192 + 112,
            extended_blob_table_entries: 1,
            ..SuperBlockV5::new()
        }
    }

    const META: u64 = 8192 + 176 + 1024;

    #[test]
    fn superblock_fields_sit_at_reference_offsets() {
        let sb = good_sb();
        let b = sb.to_bytes();
        assert_eq!(b.len(), 8192);
        assert_eq!(&b[0..4], &[0x53, 0x46, 0x41, 0x52]);
        assert_eq!(u32_at(&b, 4), 0x500);
        assert_eq!(u32_at(&b, 8), 8192);
        assert_eq!(u32_at(&b, 12), MIB);
        assert_eq!(u64_at(&b, 16), 0x94);
        assert_eq!(u64_at(&b, 24), 4);
        assert_eq!(u64_at(&b, 32), 8192);
        assert_eq!(u64_at(&b, 40), 8216);
        assert_eq!(u64_at(&b, 48), 8224);
        assert_eq!(u32_at(&b, 56), 5);
        assert_eq!(u32_at(&b, 60), 1);
        assert_eq!(u32_at(&b, 64), 80);
        assert_eq!(u32_at(&b, 68), 1);
        assert_eq!(u64_at(&b, 72), 8304);
        assert!(b[80..].iter().all(|&x| x == 0));
        assert_eq!(SuperBlockV5::decode(&b), Ok(sb));
        assert_eq!(sb.validate(META), Ok(()));
        assert_eq!(sb.compressor(), Ok(Compressor::Zstd));
        assert_eq!(sb.digester(), Ok(Digester::Blake3));
    }

    #[test]
    fn superblock_validation_names_the_field() {
        let field = |sb: SuperBlockV5, meta: u64| sb.validate(meta).unwrap_err().field_name();
        let sb = good_sb();
        assert_eq!(field(SuperBlockV5 { magic: 1, ..sb }, META), Some("magic"));
        assert_eq!(
            field(
                SuperBlockV5 {
                    fs_version: 0x600,
                    ..sb
                },
                META
            ),
            Some("s_fs_version")
        );
        assert_eq!(
            SuperBlockV5 {
                fs_version: RAFS_SUPER_VERSION_V4,
                ..sb
            }
            .validate(META),
            Ok(())
        );
        assert_eq!(
            field(
                SuperBlockV5 {
                    sb_size: 4096,
                    ..sb
                },
                META
            ),
            Some("s_sb_size")
        );
        for bs in [0, 0x800, 0x10_1000, 0x200_0000] {
            assert_eq!(
                field(
                    SuperBlockV5 {
                        block_size: bs,
                        ..sb
                    },
                    META
                ),
                Some("s_block_size")
            );
        }
        let flags = |f: RafsSuperFlags| SuperBlockV5 { flags: f, ..sb };
        assert_eq!(
            field(flags(RafsSuperFlags::HASH_BLAKE3), META),
            Some("s_flags")
        );
        assert_eq!(
            field(
                flags(RafsSuperFlags::HASH_MASK | RafsSuperFlags::COMPRESSION_LZ4),
                META
            ),
            Some("s_flags")
        );
        assert_eq!(
            field(flags(sb.flags | RafsSuperFlags::from_bits(1 << 40)), META),
            Some("s_flags")
        );
        assert_eq!(
            field(
                SuperBlockV5 {
                    inodes_count: 6,
                    ..sb
                },
                META
            ),
            Some("s_inodes_count")
        );
        assert_eq!(
            field(
                SuperBlockV5 {
                    inode_table_entries: 0,
                    inodes_count: 0,
                    ..sb
                },
                META
            ),
            Some("s_inode_table_entries")
        );
        for off in [0, 8191, 8196, META, u64::MAX - 3] {
            assert_eq!(
                field(
                    SuperBlockV5 {
                        inode_table_offset: off,
                        ..sb
                    },
                    META
                ),
                Some("s_inode_table_offset"),
                "{off}"
            );
        }
        // Overlaps the inode table.
        assert_eq!(
            field(
                SuperBlockV5 {
                    blob_table_offset: 8200,
                    ..sb
                },
                META
            ),
            Some("s_blob_table_offset")
        );
        assert_eq!(
            field(
                SuperBlockV5 {
                    blob_table_size: u32::MAX,
                    ..sb
                },
                META
            ),
            Some("s_blob_table_offset")
        );
        assert_eq!(
            field(
                SuperBlockV5 {
                    extended_blob_table_offset: 8232,
                    ..sb
                },
                META
            ),
            Some("s_extended_blob_table_offset")
        );
        assert_eq!(
            field(
                SuperBlockV5 {
                    prefetch_table_offset: 8312,
                    ..sb
                },
                META
            ),
            Some("s_prefetch_table_offset")
        );
        // Empty tables may sit anywhere after the superblock.
        assert_eq!(
            SuperBlockV5 {
                prefetch_table_offset: 0,
                prefetch_table_entries: 0,
                extended_blob_table_offset: 0,
                extended_blob_table_entries: 0,
                ..sb
            }
            .validate(META),
            Ok(())
        );
        for meta in [0, 8192, META + 1] {
            assert!(matches!(
                sb.validate(meta),
                Err(FormatError::Invalid {
                    what: "bootstrap",
                    ..
                })
            ));
        }
    }

    #[test]
    fn inode_fields_sit_at_reference_offsets() {
        let ino = InodeV5 {
            digest: [0xdd; 32],
            parent: 0x0102,
            ino: 0x0304,
            uid: 0x11,
            gid: 0x22,
            projid: 0x33,
            mode: 0o100644,
            size: 0x55_0000_0001,
            blocks: 0x66,
            flags: InodeFlagsV5::XATTR | InodeFlagsV5::HAS_HOLE,
            nlink: 0x77,
            child_index: 0x88,
            child_count: 0x99,
            name_size: 0xaa,
            symlink_size: 0xbb,
            rdev: 0xcc,
            mtime_nsec: 0xee,
            mtime: 0xff_0000_0002,
        };
        let b = ino.to_bytes();
        assert_eq!(&b[..32], &[0xdd; 32]);
        assert_eq!(u64_at(&b, 32), 0x0102);
        assert_eq!(u64_at(&b, 40), 0x0304);
        assert_eq!(u32_at(&b, 48), 0x11);
        assert_eq!(u32_at(&b, 52), 0x22);
        assert_eq!(u32_at(&b, 56), 0x33);
        assert_eq!(u32_at(&b, 60), 0o100644);
        assert_eq!(u64_at(&b, 64), 0x55_0000_0001);
        assert_eq!(u64_at(&b, 72), 0x66);
        assert_eq!(u64_at(&b, 80), 0xc);
        assert_eq!(u32_at(&b, 88), 0x77);
        assert_eq!(u32_at(&b, 92), 0x88);
        assert_eq!(u32_at(&b, 96), 0x99);
        assert_eq!(u16_at(&b, 100), 0xaa);
        assert_eq!(u16_at(&b, 102), 0xbb);
        assert_eq!(u32_at(&b, 104), 0xcc);
        assert_eq!(u32_at(&b, 108), 0xee);
        assert_eq!(u64_at(&b, 112), 0xff_0000_0002);
        assert_eq!(&b[120..], &[0; 8]);
        assert_eq!(InodeV5::decode(&b), Ok(ino));
        assert_eq!(ino.disk_size(), 128 + 176 + 192);
        assert!(ino.has_xattr() && ino.has_hole());
        assert!(ino.is_hardlink());
        assert_eq!(format!("{:?}", ino.flags), "InodeFlagsV5(XATTR | HAS_HOLE)");
        assert_eq!(
            format!("{:?}", InodeFlagsV5::from_bits(0x101)),
            "InodeFlagsV5(SYMLINK | 0x100)"
        );
        assert_eq!(format!("{:?}", InodeFlagsV5::empty()), "InodeFlagsV5(0x0)");
        assert_eq!(
            InodeV5::decode(&b[..127]),
            Err(FormatError::Truncated {
                what: "InodeV5",
                need: 128,
                have: 127
            })
        );
    }

    fn dir(ino: u64, parent: u64, child_index: u32, child_count: u32) -> InodeV5 {
        InodeV5 {
            ino,
            parent,
            mode: 0o040755,
            nlink: 2,
            child_index,
            child_count,
            name_size: 1,
            ..InodeV5::default()
        }
    }

    #[test]
    fn inode_validation_names_the_field() {
        let field = |i: InodeV5| i.validate(10).unwrap_err().field_name();
        assert_eq!(dir(1, 0, 2, 9).validate(10), Ok(()));
        assert_eq!(dir(3, 1, 0, 0).validate(10), Ok(()));
        assert_eq!(field(dir(0, 0, 2, 1)), Some("i_ino"));
        assert_eq!(field(dir(11, 1, 0, 0)), Some("i_ino"));
        assert_eq!(field(dir(2, 0, 3, 1)), Some("i_parent"));
        assert_eq!(field(dir(2, 2, 3, 1)), Some("i_parent"));
        assert_eq!(field(dir(2, 1, 2, 1)), Some("i_child_index"));
        assert_eq!(field(dir(2, 1, 1, 1)), Some("i_child_index"));
        assert_eq!(field(dir(2, 1, 3, 9)), Some("i_child_count"));
        assert_eq!(
            field(InodeV5 {
                nlink: 0,
                ..dir(2, 1, 0, 0)
            }),
            Some("i_nlink")
        );
        for n in [0, 256, u16::MAX] {
            assert_eq!(
                field(InodeV5 {
                    name_size: n,
                    ..dir(2, 1, 0, 0)
                }),
                Some("i_name_size")
            );
        }
        assert_eq!(
            field(InodeV5 {
                mode: 0o644,
                ..dir(2, 1, 0, 0)
            }),
            Some("i_mode")
        );
        let link = InodeV5 {
            mode: 0o120777,
            nlink: 1,
            ..dir(4, 2, 0, 0)
        };
        assert_eq!(field(link), Some("i_symlink_size"));
        assert_eq!(
            InodeV5 {
                symlink_size: 3,
                ..link
            }
            .validate(10),
            Ok(())
        );
        assert_eq!(
            field(InodeV5 {
                symlink_size: 3,
                ..dir(2, 1, 0, 0)
            }),
            Some("i_symlink_size")
        );
        // A second name of a hard link may have a parent with a larger number.
        let file = InodeV5 {
            mode: 0o100644,
            nlink: 1,
            ..dir(3, 5, 0, 0)
        };
        assert_eq!(field(file), Some("i_parent"));
        assert_eq!(InodeV5 { nlink: 2, ..file }.validate(10), Ok(()));
        // Not for directories.
        assert_eq!(field(dir(3, 5, 0, 0)), Some("i_parent"));
    }

    #[test]
    fn blob_table_round_trips_like_nydus() {
        // The ids of Nydus' own test_load_blob_table, one of them 128 characters long.
        let ids = [
            "355d403e35d7120cbd6a145874a2705e6842ce9974985013ebdc1fa5199a0184",
            "19ebb6e9bdcbbce3f24d694fe20e0e552ae705ce079e26023ad0ecd61d4b130019ebb6e9bdcbbce3f24d694fe20e0e552ae705ce079e26023ad0ecd61d4",
            "19ebb6e9bdcbbce3f24d694fe20e0e552ae705ce079e",
        ];
        let entries: Vec<BlobEntryV5> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| BlobEntryV5 {
                readahead_offset: 2 * i as u32 + 1,
                readahead_size: 2 * i as u32 + 2,
                blob_id: (*id).to_owned(),
            })
            .collect();
        let table = encode_blob_table(&entries).unwrap();
        let raw = 3 * 8 + ids.iter().map(|i| i.len()).sum::<usize>() + 2;
        assert_eq!(table.len(), raw.next_multiple_of(8));
        assert_eq!(&table[..8], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(table[8 + 64], 0);
        assert_eq!(parse_blob_table(&table), Ok(entries.clone()));
        // Without the padding, the last id runs to the end of the table.
        assert_eq!(parse_blob_table(&table[..raw]), Ok(entries.clone()));
        assert_eq!(encode_blob_table(&[]), Ok(vec![]));
        assert_eq!(parse_blob_table(&[]), Ok(vec![]));
        // Eight bytes or fewer are padding, not an entry.
        assert_eq!(parse_blob_table(&[1; 8]), Ok(vec![]));
    }

    #[test]
    fn bad_blob_tables_name_the_blob_id() {
        let mut t = vec![0u8; 16];
        assert_eq!(
            parse_blob_table(&t).unwrap_err().field_name(),
            Some("blob_id")
        );
        t[8] = 0xff;
        assert_eq!(
            parse_blob_table(&t).unwrap_err().field_name(),
            Some("blob_id")
        );
        let bad = BlobEntryV5 {
            blob_id: "a\0b".into(),
            ..BlobEntryV5::default()
        };
        assert!(encode_blob_table(&[bad]).is_err());
        assert!(encode_blob_table(&[BlobEntryV5::default()]).is_err());
    }

    #[test]
    fn ext_blob_entry_layout_and_validation() {
        let e = ExtBlobEntryV5 {
            chunk_count: 7,
            features: BlobFeatures::CAP_TAR_TOC,
            uncompressed_size: 0x1122_3344_5566,
            compressed_size: 0x77_8899,
        };
        let b = e.to_bytes();
        assert_eq!(u32_at(&b, 0), 7);
        assert_eq!(u32_at(&b, 4), 0x4000_0000);
        assert_eq!(u64_at(&b, 8), 0x1122_3344_5566);
        assert_eq!(u64_at(&b, 16), 0x77_8899);
        assert!(b[24..].iter().all(|&x| x == 0));
        assert_eq!(ExtBlobEntryV5::decode(&b), Ok(e));
        assert_eq!(e.validate(), Ok(()));
        let field = |e: ExtBlobEntryV5| e.validate().unwrap_err().field_name();
        assert_eq!(
            field(ExtBlobEntryV5 {
                chunk_count: (1 << 24) + 1,
                ..e
            }),
            Some("chunk_count")
        );
        assert_eq!(
            field(ExtBlobEntryV5 {
                features: BlobFeatures::from_bits(0x2000),
                ..e
            }),
            Some("features")
        );
        assert_eq!(
            field(ExtBlobEntryV5 {
                features: BlobFeatures::V5_NO_EXT_BLOB_TABLE,
                ..e
            }),
            Some("features")
        );
        assert!(ExtBlobEntryV5::decode(&b[..63]).is_err());
    }

    #[test]
    fn xattr_table_round_trips() {
        let xattrs: Vec<Xattr> = vec![
            (b"user.x".to_vec(), b"hello".to_vec()),
            (b"security.capability".to_vec(), vec![1, 0, 0, 2, 0]),
            (b"trusted.empty".to_vec(), vec![]),
        ];
        let table = encode_xattrs(&xattrs).unwrap();
        let size: usize = (4 + 7 + 5) + (4 + 20 + 5) + (4 + 14);
        assert_eq!(u64_at(&table, 0), size as u64);
        assert_eq!(table.len(), (8 + size).next_multiple_of(8));
        assert_eq!(u32_at(&table, 8), 7 + 5);
        assert_eq!(&table[12..19], b"user.x\0");
        assert_eq!(parse_xattrs(&table[8..8 + size]), Ok(xattrs));
        assert_eq!(encode_xattrs(&[]), Ok(vec![]));
        assert_eq!(parse_xattrs(&[]), Ok(vec![]));
        assert!(encode_xattrs(&[(b"a\0".to_vec(), vec![])]).is_err());
        assert!(encode_xattrs(&[(vec![], vec![])]).is_err());
    }

    #[test]
    fn bad_xattr_pairs_are_errors() {
        let field = |b: &[u8]| parse_xattrs(b).unwrap_err().field_name();
        // Pair size runs past the table.
        assert_eq!(field(&[9, 0, 0, 0, b'a', 0, b'v']), Some("pair_size"));
        assert_eq!(field(&[0xff, 0xff, 0xff, 0xff, b'a']), Some("pair_size"));
        // No NUL, empty name.
        assert_eq!(field(&[2, 0, 0, 0, b'a', b'b']), Some("pair_size"));
        assert_eq!(field(&[2, 0, 0, 0, 0, b'b']), Some("pair_size"));
        // Fewer than 4 bytes for the pair size.
        assert!(matches!(
            parse_xattrs(&[1, 0]),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn u32_tables_are_padded_and_checked() {
        let t = encode_inode_table(&[8200, 8192 + 128 * 3]).unwrap();
        assert_eq!(t.len(), 8);
        assert_eq!(u32_at(&t, 0), 1025);
        assert_eq!(inode_table_entry_offset(1025), Some(8200));
        let t = encode_inode_table(&[8200, 8208, 8216]).unwrap();
        assert_eq!(t.len(), 16);
        assert_eq!(inode_table_entry_offset(1024), None);
        assert_eq!(inode_table_entry_offset(1 << 29), None);
        assert_eq!(inode_table_entry_offset((1 << 29) - 1), Some((1 << 32) - 8));
        for bad in [8192, 8201, 1 << 32] {
            assert!(encode_inode_table(&[bad]).is_err(), "{bad}");
        }
        assert_eq!(encode_prefetch_table(&[3]), vec![3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_prefetch_table(&[]), Vec::<u8>::new());
        assert_eq!(rafsv5_align(9), Some(16));
        assert_eq!(rafsv5_align(u64::MAX), None);
    }

    proptest! {
        #[test]
        fn any_128_bytes_round_trip_as_an_inode(mut bytes in any::<[u8; 128]>()) {
            bytes[120..].fill(0);
            let i = InodeV5::decode(&bytes).unwrap();
            prop_assert_eq!(i.to_bytes(), bytes);
        }

        #[test]
        fn table_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_blob_table(&bytes);
            let _ = parse_xattrs(&bytes);
            let _ = InodeV5::decode(&bytes).map(|i| i.validate(100));
            let _ = ExtBlobEntryV5::decode(&bytes).map(|e| e.validate());
            let _ = SuperBlockV5::decode(&bytes);
        }

        #[test]
        fn blob_tables_round_trip(
            entries in proptest::collection::vec(
                (any::<u32>(), any::<u32>(), "[a-f0-9]{1,80}"),
                0..6,
            )
        ) {
            let entries: Vec<BlobEntryV5> = entries
                .into_iter()
                .map(|(o, s, id)| BlobEntryV5 { readahead_offset: o, readahead_size: s, blob_id: id })
                .collect();
            let table = encode_blob_table(&entries).unwrap();
            prop_assert!(table.len().is_multiple_of(8));
            prop_assert_eq!(parse_blob_table(&table).unwrap(), entries);
        }

        #[test]
        fn xattr_tables_round_trip(
            xattrs in proptest::collection::vec(
                ("user\\.[a-z]{1,20}", proptest::collection::vec(any::<u8>(), 0..40)),
                0..5,
            )
        ) {
            let xattrs: Vec<Xattr> = xattrs.into_iter().map(|(n, v)| (n.into_bytes(), v)).collect();
            let table = encode_xattrs(&xattrs).unwrap();
            prop_assert!(table.len().is_multiple_of(8));
            if !xattrs.is_empty() {
                let size = u64_at(&table, 0) as usize;
                prop_assert_eq!(parse_xattrs(&table[8..8 + size]).unwrap(), xattrs);
            }
        }
    }
}
