//! What lives in the inode area of a RAFS v6 bootstrap: EROFS inodes (compact and extended),
//! the chunk-based `i_u` header, inline xattrs, the chunk addresses that follow a regular file's
//! inode, and directory entries.

use crate::le::{fixed, put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};
use crate::FormatError;

/// Where an inode keeps its metadata: a 32-byte or a 64-byte slot (bit 0 of `i_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InodeLayout {
    /// [`InodeCompact`]: 16-bit ids and nlink, 32-bit size, no mtime.
    Compact = 0,
    /// [`InodeExtended`]: 32-bit ids and nlink, 64-bit size, mtime.
    Extended = 1,
}

impl InodeLayout {
    /// Size of the inode structure.
    pub const fn size(self) -> usize {
        match self {
            Self::Compact => InodeCompact::SIZE,
            Self::Extended => InodeExtended::SIZE,
        }
    }
}

/// Where an inode keeps its data (bits 1..3 of `i_format`). RAFS uses only these three of the
/// EROFS data layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataLayout {
    /// `EROFS_INODE_FLAT_PLAIN`: data in whole blocks starting at block `i_u`.
    FlatPlain = 0,
    /// `EROFS_INODE_FLAT_INLINE`: like flat plain, with the last partial block right after the
    /// inode (and its xattrs).
    FlatInline = 2,
    /// `EROFS_INODE_CHUNK_BASED`: a regular file whose chunk addresses follow the inode.
    ChunkBased = 4,
}

/// A decoded `i_format`: `layout | data_layout << 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InodeFormat {
    /// Compact or extended inode.
    pub layout: InodeLayout,
    /// Where the data is.
    pub data_layout: DataLayout,
}

/// Bits of `i_format` EROFS defines (version bit and three data layout bits).
const I_FORMAT_KNOWN_BITS: u16 = 0x000f;

impl InodeFormat {
    /// The format with these layouts.
    pub const fn new(layout: InodeLayout, data_layout: DataLayout) -> Self {
        Self {
            layout,
            data_layout,
        }
    }

    /// The on-disk `i_format`.
    pub const fn to_raw(self) -> u16 {
        self.layout as u16 | (self.data_layout as u16) << 1
    }

    /// Decodes `i_format`; rejects data layouts RAFS does not use and undefined bits.
    pub fn from_raw(raw: u16) -> Result<Self, FormatError> {
        let bad = |reason: &str| FormatError::field("Inode", "i_format", 0, raw, reason);
        if raw & !I_FORMAT_KNOWN_BITS != 0 {
            return Err(bad("has undefined bits above bit 3"));
        }
        let layout = if raw & 1 == 0 {
            InodeLayout::Compact
        } else {
            InodeLayout::Extended
        };
        let data_layout = match (raw >> 1) & 0x7 {
            0 => DataLayout::FlatPlain,
            2 => DataLayout::FlatInline,
            4 => DataLayout::ChunkBased,
            _ => {
                return Err(bad(
                    "data layout must be FLAT_PLAIN (0), FLAT_INLINE (2) or CHUNK_BASED (4)",
                ))
            }
        };
        Ok(Self::new(layout, data_layout))
    }
}

/// `EROFS_CHUNK_FORMAT_INDEXES`: chunks are addressed by 8-byte [`ChunkAddr`] entries.
pub const EROFS_CHUNK_FORMAT_INDEXES: u16 = 0x0020;
/// Bits of the chunk format holding `log2(chunk_size) - blkszbits`.
pub const EROFS_CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x001f;

/// The `i_u` of a chunk-based regular file (EROFS `erofs_inode_chunk_info`): the chunk index
/// format and the file's chunk size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChunkIndexHeader {
    /// `format`: [`EROFS_CHUNK_FORMAT_INDEXES`] `| (log2(chunk_size) - blkszbits)`.
    pub format: u16,
    /// `reserved`: 0.
    pub reserved: u16,
}

impl ChunkIndexHeader {
    const WHAT: &'static str = "ChunkIndexHeader";

    /// The header for files of `chunk_size`-byte chunks in an image of `1 << blkszbits`-byte
    /// blocks. `chunk_size` must be a power of two, at least one block, and at most 2^31 blocks.
    pub fn new(chunk_size: u64, blkszbits: u8) -> Result<Self, FormatError> {
        let bits = chunk_size.trailing_zeros();
        let blkszbits = u32::from(blkszbits);
        if !chunk_size.is_power_of_two()
            || bits < blkszbits
            || bits - blkszbits > u32::from(EROFS_CHUNK_FORMAT_BLKBITS_MASK)
        {
            return Err(FormatError::Invalid {
                what: Self::WHAT,
                reason: format!(
                    "chunk size {chunk_size:#x} is not a power of two between one block and 2^31 blocks of 2^{blkszbits} bytes"
                ),
            });
        }
        Ok(Self {
            format: EROFS_CHUNK_FORMAT_INDEXES | (bits - blkszbits) as u16,
            reserved: 0,
        })
    }

    /// The header stored in an inode's `i_u`.
    pub const fn from_i_u(u: u32) -> Self {
        Self {
            format: u as u16,
            reserved: (u >> 16) as u16,
        }
    }

    /// The value to store in `i_u`.
    pub const fn to_i_u(self) -> u32 {
        self.format as u32 | (self.reserved as u32) << 16
    }

    /// The chunk size for `1 << blkszbits`-byte blocks. Fails unless the format is
    /// [`EROFS_CHUNK_FORMAT_INDEXES`] with no other bits.
    pub fn chunk_size(&self, blkszbits: u8) -> Result<u64, FormatError> {
        let known = EROFS_CHUNK_FORMAT_INDEXES | EROFS_CHUNK_FORMAT_BLKBITS_MASK;
        if self.format & EROFS_CHUNK_FORMAT_INDEXES == 0 || self.format & !known != 0 {
            return Err(FormatError::field(
                Self::WHAT,
                "format",
                0,
                self.format,
                "must be EROFS_CHUNK_FORMAT_INDEXES (0x20) plus chunk bits",
            ));
        }
        let bits = u32::from(self.format & EROFS_CHUNK_FORMAT_BLKBITS_MASK) + u32::from(blkszbits);
        1u64.checked_shl(bits).ok_or_else(|| {
            FormatError::field(
                Self::WHAT,
                "format",
                0,
                self.format,
                format!("chunk size 2^{bits} does not fit 64 bits"),
            )
        })
    }
}

/// A 32-byte EROFS compact inode (`struct erofs_inode_compact`).
///
/// The reserved bytes at 12 and 28 are written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct InodeCompact {
    /// @0 `i_format`: see [`InodeFormat`]; bit 0 is 0.
    pub format: u16,
    /// @2 `i_xattr_icount`: inline xattr size in 4-byte units, see [`xattr_icount`].
    pub xattr_icount: u16,
    /// @4 `i_mode`: file type and permissions.
    pub mode: u16,
    /// @6 `i_nlink`.
    pub nlink: u16,
    /// @8 `i_size`.
    pub size: u32,
    /// @16 `i_u`: dir/symlink: first data block; device: rdev; regular: [`ChunkIndexHeader`].
    pub u: u32,
    /// @20 `i_ino`: inode number reported by stat (hardlinks share it).
    pub ino: u32,
    /// @24 `i_uid`.
    pub uid: u16,
    /// @26 `i_gid`.
    pub gid: u16,
}

impl InodeCompact {
    /// Encoded size.
    pub const SIZE: usize = 32;

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, "InodeCompact")?;
        Ok(Self {
            format: u16_at(b, 0),
            xattr_icount: u16_at(b, 2),
            mode: u16_at(b, 4),
            nlink: u16_at(b, 6),
            size: u32_at(b, 8),
            u: u32_at(b, 16),
            ino: u32_at(b, 20),
            uid: u16_at(b, 24),
            gid: u16_at(b, 26),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u16(&mut b, 0, self.format);
        put_u16(&mut b, 2, self.xattr_icount);
        put_u16(&mut b, 4, self.mode);
        put_u16(&mut b, 6, self.nlink);
        put_u32(&mut b, 8, self.size);
        put_u32(&mut b, 16, self.u);
        put_u32(&mut b, 20, self.ino);
        put_u16(&mut b, 24, self.uid);
        put_u16(&mut b, 26, self.gid);
        b
    }
}

/// A 64-byte EROFS extended inode (`struct erofs_inode_extended`).
///
/// The reserved bytes at 6 and 48 are written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct InodeExtended {
    /// @0 `i_format`: see [`InodeFormat`]; bit 0 is 1.
    pub format: u16,
    /// @2 `i_xattr_icount`: inline xattr size in 4-byte units, see [`xattr_icount`].
    pub xattr_icount: u16,
    /// @4 `i_mode`: file type and permissions.
    pub mode: u16,
    /// @8 `i_size`.
    pub size: u64,
    /// @16 `i_u`: dir/symlink: first data block; device: rdev; regular: [`ChunkIndexHeader`].
    pub u: u32,
    /// @20 `i_ino`: inode number reported by stat (hardlinks share it).
    pub ino: u32,
    /// @24 `i_uid`.
    pub uid: u32,
    /// @28 `i_gid`.
    pub gid: u32,
    /// @32 `i_mtime`: seconds.
    pub mtime: u64,
    /// @40 `i_mtime_nsec`.
    pub mtime_nsec: u32,
    /// @44 `i_nlink`.
    pub nlink: u32,
}

impl InodeExtended {
    /// Encoded size.
    pub const SIZE: usize = 64;

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, "InodeExtended")?;
        Ok(Self {
            format: u16_at(b, 0),
            xattr_icount: u16_at(b, 2),
            mode: u16_at(b, 4),
            size: u64_at(b, 8),
            u: u32_at(b, 16),
            ino: u32_at(b, 20),
            uid: u32_at(b, 24),
            gid: u32_at(b, 28),
            mtime: u64_at(b, 32),
            mtime_nsec: u32_at(b, 40),
            nlink: u32_at(b, 44),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u16(&mut b, 0, self.format);
        put_u16(&mut b, 2, self.xattr_icount);
        put_u16(&mut b, 4, self.mode);
        put_u64(&mut b, 8, self.size);
        put_u32(&mut b, 16, self.u);
        put_u32(&mut b, 20, self.ino);
        put_u32(&mut b, 24, self.uid);
        put_u32(&mut b, 28, self.gid);
        put_u64(&mut b, 32, self.mtime);
        put_u32(&mut b, 40, self.mtime_nsec);
        put_u32(&mut b, 44, self.nlink);
        b
    }
}

/// An inode of either layout, with accessors common to both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Inode {
    /// A 32-byte inode.
    Compact(InodeCompact),
    /// A 64-byte inode.
    Extended(InodeExtended),
}

impl Inode {
    /// Reads the inode at the start of `bytes`: decodes `i_format` (rejecting unknown formats),
    /// then the compact or extended structure it names.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let raw = fixed::<2>(bytes, "Inode")
            .map(|b| u16_at(b, 0))
            .map_err(|_| FormatError::Truncated {
                what: "Inode",
                need: InodeCompact::SIZE,
                have: bytes.len(),
            })?;
        match InodeFormat::from_raw(raw)?.layout {
            InodeLayout::Compact => InodeCompact::decode(bytes).map(Self::Compact),
            InodeLayout::Extended => InodeExtended::decode(bytes).map(Self::Extended),
        }
    }

    /// Appends the on-disk bytes (32 or 64) to `out`.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        match self {
            Self::Compact(i) => out.extend_from_slice(&i.to_bytes()),
            Self::Extended(i) => out.extend_from_slice(&i.to_bytes()),
        }
    }

    /// The decoded `i_format`; fails if it is unknown or its layout bit disagrees with the
    /// variant.
    pub fn format(&self) -> Result<InodeFormat, FormatError> {
        let f = InodeFormat::from_raw(self.format_raw())?;
        if f.layout != self.layout() {
            return Err(FormatError::field(
                "Inode",
                "i_format",
                0,
                self.format_raw(),
                "layout bit disagrees with the inode size",
            ));
        }
        Ok(f)
    }

    /// Compact or extended, by variant.
    pub fn layout(&self) -> InodeLayout {
        match self {
            Self::Compact(_) => InodeLayout::Compact,
            Self::Extended(_) => InodeLayout::Extended,
        }
    }

    /// Size of the inode structure (32 or 64).
    pub fn disk_size(&self) -> usize {
        self.layout().size()
    }

    /// The raw `i_format`.
    pub fn format_raw(&self) -> u16 {
        match self {
            Self::Compact(i) => i.format,
            Self::Extended(i) => i.format,
        }
    }

    /// `i_xattr_icount`.
    pub fn xattr_icount(&self) -> u16 {
        match self {
            Self::Compact(i) => i.xattr_icount,
            Self::Extended(i) => i.xattr_icount,
        }
    }

    /// Size of the inline xattr area that follows the inode.
    pub fn xattr_size(&self) -> usize {
        xattr_ibody_size(self.xattr_icount())
    }

    /// `i_mode`.
    pub fn mode(&self) -> u16 {
        match self {
            Self::Compact(i) => i.mode,
            Self::Extended(i) => i.mode,
        }
    }

    /// `i_nlink`.
    pub fn nlink(&self) -> u32 {
        match self {
            Self::Compact(i) => i.nlink.into(),
            Self::Extended(i) => i.nlink,
        }
    }

    /// `i_size`.
    pub fn size(&self) -> u64 {
        match self {
            Self::Compact(i) => i.size.into(),
            Self::Extended(i) => i.size,
        }
    }

    /// `i_u` (meaning depends on the file type, see [`InodeCompact::u`]).
    pub fn u(&self) -> u32 {
        match self {
            Self::Compact(i) => i.u,
            Self::Extended(i) => i.u,
        }
    }

    /// `i_ino`.
    pub fn ino(&self) -> u32 {
        match self {
            Self::Compact(i) => i.ino,
            Self::Extended(i) => i.ino,
        }
    }

    /// `i_uid`.
    pub fn uid(&self) -> u32 {
        match self {
            Self::Compact(i) => i.uid.into(),
            Self::Extended(i) => i.uid,
        }
    }

    /// `i_gid`.
    pub fn gid(&self) -> u32 {
        match self {
            Self::Compact(i) => i.gid.into(),
            Self::Extended(i) => i.gid,
        }
    }

    /// `(i_mtime, i_mtime_nsec)` of an extended inode; compact inodes have none (readers use the
    /// superblock build time).
    pub fn mtime(&self) -> Option<(u64, u32)> {
        match self {
            Self::Compact(_) => None,
            Self::Extended(i) => Some((i.mtime, i.mtime_nsec)),
        }
    }

    /// `i_u` read as the chunk index header of a chunk-based file.
    pub fn chunk_index_header(&self) -> ChunkIndexHeader {
        ChunkIndexHeader::from_i_u(self.u())
    }

    /// Offset of the first [`ChunkAddr`] of a chunk-based file whose inode starts at
    /// `inode_offset`: after the inode and its xattrs, rounded up to 8.
    pub fn chunk_addrs_offset(&self, inode_offset: u64) -> Option<u64> {
        let end = inode_offset
            .checked_add(self.disk_size() as u64)?
            .checked_add(self.xattr_size() as u64)?;
        end.checked_next_multiple_of(8)
    }
}

/// Where one chunk of a regular file is (Nydus `RafsV6InodeChunkAddr`, 8 bytes; layout-compatible
/// with EROFS `erofs_inode_chunk_index`).
///
/// On disk: `c_blob_addr_lo` (u16 @0) holds bits 0..15 of the chunk index, `c_blob_addr_hi`
/// (u16 @2) holds the EROFS device id (`blob_index + 1`) in its low byte and chunk index bits
/// 16..23 in its high byte, and `c_blk_addr` (u32 @4) the block in the blob's uncompressed space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChunkAddr {
    device_id: u8,
    chunk_index: u32,
    blk_addr: u32,
}

impl ChunkAddr {
    /// Encoded size.
    pub const SIZE: usize = 8;
    const WHAT: &'static str = "ChunkAddr";

    /// The address of chunk `chunk_index` (< 2^24) of blob `blob_index` (< 255) at block
    /// `blk_addr` of that blob's uncompressed space.
    pub fn new(blob_index: u32, chunk_index: u32, blk_addr: u32) -> Result<Self, FormatError> {
        let device_id = blob_index
            .checked_add(1)
            .and_then(|d| u8::try_from(d).ok())
            .ok_or_else(|| {
                FormatError::field(
                    Self::WHAT,
                    "c_blob_addr_hi",
                    2,
                    blob_index,
                    "blob index must be below 255",
                )
            })?;
        if chunk_index >= 1 << 24 {
            return Err(FormatError::field(
                Self::WHAT,
                "c_blob_addr_lo",
                0,
                chunk_index,
                "chunk index must be below 2^24",
            ));
        }
        Ok(Self {
            device_id,
            chunk_index,
            blk_addr,
        })
    }

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, Self::WHAT)?;
        let lo = u16_at(b, 0);
        let hi = u16_at(b, 2);
        Ok(Self {
            device_id: hi as u8,
            chunk_index: u32::from(lo) | u32::from(hi >> 8) << 16,
            blk_addr: u32_at(b, 4),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u16(&mut b, 0, self.chunk_index as u16);
        put_u16(
            &mut b,
            2,
            u16::from(self.device_id) | ((self.chunk_index >> 16) as u16) << 8,
        );
        put_u32(&mut b, 4, self.blk_addr);
        b
    }

    /// The EROFS device id (`blob_index + 1`; 0 means the bootstrap itself).
    pub fn device_id(&self) -> u8 {
        self.device_id
    }

    /// The blob table index, or `None` for device 0 (RAFS never points chunks there).
    pub fn blob_index(&self) -> Option<u32> {
        self.device_id.checked_sub(1).map(u32::from)
    }

    /// Index of the chunk in its blob (24 bits).
    pub fn chunk_index(&self) -> u32 {
        self.chunk_index
    }

    /// Block of the chunk in the blob's uncompressed address space.
    pub fn blk_addr(&self) -> u32 {
        self.blk_addr
    }
}

/// A directory entry's file type (`e_file_type`, EROFS `EROFS_FT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FileType {
    /// Regular file.
    Regular = 1,
    /// Directory.
    Directory = 2,
    /// Character device.
    CharDevice = 3,
    /// Block device.
    BlockDevice = 4,
    /// Named pipe.
    Fifo = 5,
    /// Unix socket.
    Socket = 6,
    /// Symbolic link.
    Symlink = 7,
}

impl FileType {
    /// The file type of an `st_mode` (`S_IFMT` bits), if it is one of the seven.
    pub const fn from_mode(mode: u32) -> Option<Self> {
        match mode & 0o170000 {
            0o100000 => Some(Self::Regular),
            0o040000 => Some(Self::Directory),
            0o020000 => Some(Self::CharDevice),
            0o060000 => Some(Self::BlockDevice),
            0o010000 => Some(Self::Fifo),
            0o140000 => Some(Self::Socket),
            0o120000 => Some(Self::Symlink),
            _ => None,
        }
    }
}

impl TryFrom<u8> for FileType {
    type Error = FormatError;

    fn try_from(v: u8) -> Result<Self, FormatError> {
        Ok(match v {
            1 => Self::Regular,
            2 => Self::Directory,
            3 => Self::CharDevice,
            4 => Self::BlockDevice,
            5 => Self::Fifo,
            6 => Self::Socket,
            7 => Self::Symlink,
            _ => {
                return Err(FormatError::Unknown {
                    what: "file type",
                    value: v.into(),
                })
            }
        })
    }
}

/// A 12-byte EROFS directory entry (`struct erofs_dirent`). A directory block holds an array of
/// these followed by the names; `nameoff` of the first entry / 12 is the entry count, and each
/// name runs to the next entry's `nameoff` (the last to the first NUL or the block end).
///
/// The reserved byte at 11 is written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Dirent {
    /// @0 `e_nid`: nid of the target inode.
    pub nid: u64,
    /// @8 `e_nameoff`: offset of the name inside the directory block.
    pub nameoff: u16,
    /// @10 `e_file_type`: see [`FileType`].
    pub file_type: u8,
}

impl Dirent {
    /// Encoded size.
    pub const SIZE: usize = 12;

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, "Dirent")?;
        Ok(Self {
            nid: u64_at(b, 0),
            nameoff: u16_at(b, 8),
            file_type: b[10],
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u64(&mut b, 0, self.nid);
        put_u16(&mut b, 8, self.nameoff);
        b[10] = self.file_type;
        b
    }

    /// The decoded file type.
    pub fn file_type(&self) -> Result<FileType, FormatError> {
        FileType::try_from(self.file_type)
    }
}

/// Xattr name index of `user.`.
pub const EROFS_XATTR_INDEX_USER: u8 = 1;
/// Xattr name index of `system.posix_acl_access`.
pub const EROFS_XATTR_INDEX_POSIX_ACL_ACCESS: u8 = 2;
/// Xattr name index of `system.posix_acl_default`.
pub const EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT: u8 = 3;
/// Xattr name index of `trusted.`.
pub const EROFS_XATTR_INDEX_TRUSTED: u8 = 4;
/// Xattr name index of `security.`.
pub const EROFS_XATTR_INDEX_SECURITY: u8 = 6;

const XATTR_PREFIXES: [(u8, &[u8]); 5] = [
    (EROFS_XATTR_INDEX_USER, b"user."),
    (
        EROFS_XATTR_INDEX_POSIX_ACL_ACCESS,
        b"system.posix_acl_access",
    ),
    (
        EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT,
        b"system.posix_acl_default",
    ),
    (EROFS_XATTR_INDEX_TRUSTED, b"trusted."),
    (EROFS_XATTR_INDEX_SECURITY, b"security."),
];

/// The name prefix of xattr name index `index`.
pub fn xattr_prefix(index: u8) -> Option<&'static [u8]> {
    XATTR_PREFIXES
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, p)| *p)
}

/// Splits a full xattr name into its name index and the suffix stored on disk; `None` if the
/// name has none of the accepted prefixes.
pub fn split_xattr_name(name: &[u8]) -> Option<(u8, &[u8])> {
    XATTR_PREFIXES
        .iter()
        .find_map(|(i, p)| name.strip_prefix(*p).map(|suffix| (*i, suffix)))
}

/// The 12-byte header of an inode's inline xattr area (`struct erofs_xattr_ibody_header`).
///
/// The reserved bytes from 5 are written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct XattrIbodyHeader {
    /// @0 `h_reserved`: 0 in RAFS.
    pub reserved: u32,
    /// @4 `h_shared_count`: shared xattr ids that follow; 0 in RAFS.
    pub shared_count: u8,
}

impl XattrIbodyHeader {
    /// Encoded size.
    pub const SIZE: usize = 12;

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, "XattrIbodyHeader")?;
        Ok(Self {
            reserved: u32_at(b, 0),
            shared_count: b[4],
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u32(&mut b, 0, self.reserved);
        b[4] = self.shared_count;
        b
    }
}

/// The 4-byte header of one inline xattr (`struct erofs_xattr_entry`), followed by the name
/// suffix, the value, and padding to 4 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct XattrEntryHeader {
    /// @0 `e_name_len`: length of the name suffix.
    pub name_len: u8,
    /// @1 `e_name_index`: prefix index, see [`xattr_prefix`].
    pub name_index: u8,
    /// @2 `e_value_size`.
    pub value_size: u16,
}

impl XattrEntryHeader {
    /// Encoded size.
    pub const SIZE: usize = 4;

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, "XattrEntryHeader")?;
        Ok(Self {
            name_len: b[0],
            name_index: b[1],
            value_size: u16_at(b, 2),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0] = self.name_len;
        b[1] = self.name_index;
        put_u16(&mut b, 2, self.value_size);
        b
    }

    /// Size of the whole entry: header, name suffix and value, padded to 4.
    pub fn entry_size(&self) -> usize {
        xattr_entry_size(self.name_len.into(), self.value_size.into())
    }
}

/// Size of one inline xattr entry with a `suffix_len`-byte name suffix and a `value_len`-byte
/// value, padded to 4.
pub const fn xattr_entry_size(suffix_len: usize, value_len: usize) -> usize {
    (XattrEntryHeader::SIZE + suffix_len + value_len).next_multiple_of(4)
}

/// `i_xattr_icount` for an inline xattr area of `aligned_size` bytes (header plus padded
/// entries): `(aligned_size - 12) / 4 + 1`, or 0 for no xattrs.
pub fn xattr_icount(aligned_size: usize) -> Result<u16, FormatError> {
    if aligned_size == 0 {
        return Ok(0);
    }
    let bad = || {
        FormatError::Invalid {
        what: "inline xattrs",
        reason: format!(
            "area of {aligned_size} bytes is not a 12-byte header plus 4-byte units fitting i_xattr_icount"
        ),
    }
    };
    if aligned_size < XattrIbodyHeader::SIZE || !aligned_size.is_multiple_of(4) {
        return Err(bad());
    }
    u16::try_from((aligned_size - XattrIbodyHeader::SIZE) / 4 + 1).map_err(|_| bad())
}

/// Size of the inline xattr area of an inode with `i_xattr_icount == icount`.
pub const fn xattr_ibody_size(icount: u16) -> usize {
    if icount == 0 {
        0
    } else {
        XattrIbodyHeader::SIZE + (icount as usize - 1) * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn i_format_values() {
        use DataLayout::*;
        use InodeLayout::*;
        let cases = [
            (Compact, FlatPlain, 0x0),
            (Extended, FlatPlain, 0x1),
            (Compact, FlatInline, 0x4),
            (Extended, FlatInline, 0x5),
            (Compact, ChunkBased, 0x8),
            (Extended, ChunkBased, 0x9),
        ];
        for (l, d, raw) in cases {
            let f = InodeFormat::new(l, d);
            assert_eq!(f.to_raw(), raw);
            assert_eq!(InodeFormat::from_raw(raw), Ok(f));
        }
        for raw in [0x2, 0x3, 0x6, 0x7, 0xa, 0xc, 0xe, 0x10, 0x8008] {
            let e = InodeFormat::from_raw(raw).unwrap_err();
            assert_eq!(e.field_name(), Some("i_format"), "{raw:#x}");
        }
    }

    #[test]
    fn compact_inode_layout() {
        let i = InodeCompact {
            format: 0x0201,
            xattr_icount: 0x0403,
            mode: 0x0605,
            nlink: 0x0807,
            size: 0x0c0b_0a09,
            u: 0x1413_1211,
            ino: 0x1817_1615,
            uid: 0x1a19,
            gid: 0x1c1b,
        };
        let b = i.to_bytes();
        assert_eq!(
            b,
            [
                1, 2, 3, 4, 5, 6, 7, 8, 9, 0xa, 0xb, 0xc, 0, 0, 0, 0, 0x11, 0x12, 0x13, 0x14, 0x15,
                0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0, 0, 0, 0
            ]
        );
        assert_eq!(InodeCompact::decode(&b), Ok(i));
    }

    #[test]
    fn extended_inode_layout() {
        let i = InodeExtended {
            format: 0x0201,
            xattr_icount: 0x0403,
            mode: 0x0605,
            size: 0x100f_0e0d_0c0b_0a09,
            u: 0x1413_1211,
            ino: 0x1817_1615,
            uid: 0x1c1b_1a19,
            gid: 0x201f_1e1d,
            mtime: 0x2827_2625_2423_2221,
            mtime_nsec: 0x2c2b_2a29,
            nlink: 0x302f_2e2d,
        };
        let b = i.to_bytes();
        let mut expected: Vec<u8> = (1..=6).collect();
        expected.extend([0, 0]);
        expected.extend(9..=0x30);
        expected.extend([0; 16]);
        assert_eq!(b.as_slice(), expected.as_slice());
        assert_eq!(InodeExtended::decode(&b), Ok(i));
    }

    #[test]
    fn inode_enum_dispatches_on_the_layout_bit() {
        let compact = InodeCompact {
            format: InodeFormat::new(InodeLayout::Compact, DataLayout::ChunkBased).to_raw(),
            xattr_icount: 3,
            mode: 0o100644,
            nlink: 2,
            size: 5 << 20,
            u: ChunkIndexHeader::new(1 << 20, 12).unwrap().to_i_u(),
            ino: 7,
            uid: 1000,
            gid: 100,
        };
        let mut bytes = Vec::new();
        Inode::Compact(compact).append_to(&mut bytes);
        bytes.extend([0xff; 40]); // whatever follows must not matter
        let inode = Inode::decode(&bytes).unwrap();
        assert_eq!(inode, Inode::Compact(compact));
        assert_eq!(inode.disk_size(), 32);
        assert_eq!(inode.format().unwrap().data_layout, DataLayout::ChunkBased);
        assert_eq!(
            (inode.mode(), inode.nlink(), inode.size()),
            (0o100644, 2, 5 << 20)
        );
        assert_eq!((inode.uid(), inode.gid(), inode.ino()), (1000, 100, 7));
        assert_eq!(inode.mtime(), None);
        assert_eq!(inode.xattr_size(), 20);
        assert_eq!(inode.chunk_index_header().chunk_size(12), Ok(1 << 20));
        // inode at 4096 + 32 B + 20 B xattrs = 4148 -> 4152
        assert_eq!(inode.chunk_addrs_offset(4096), Some(4152));

        let ext = InodeExtended {
            format: InodeFormat::new(InodeLayout::Extended, DataLayout::FlatInline).to_raw(),
            mode: 0o040755,
            size: 1 << 33,
            uid: 1 << 20,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            nlink: 70_000,
            ..InodeExtended::default()
        };
        let mut bytes = Vec::new();
        Inode::Extended(ext).append_to(&mut bytes);
        assert_eq!(bytes.len(), 64);
        let inode = Inode::decode(&bytes).unwrap();
        assert_eq!(inode, Inode::Extended(ext));
        assert_eq!(inode.mtime(), Some((1_700_000_000, 5)));
        assert_eq!(
            (inode.nlink(), inode.uid(), inode.size()),
            (70_000, 1 << 20, 1 << 33)
        );
        assert_eq!(inode.xattr_size(), 0);

        // An extended format bit with only 32 bytes is truncated.
        assert!(matches!(
            Inode::decode(&bytes[..32]),
            Err(FormatError::Truncated {
                what: "InodeExtended",
                need: 64,
                have: 32
            })
        ));
        // Unknown data layout.
        assert_eq!(
            Inode::decode(&[0x06, 0, 0, 0]).unwrap_err().field_name(),
            Some("i_format")
        );
        // Layout bit disagreeing with the variant.
        let wrong = Inode::Compact(InodeCompact {
            format: 1,
            ..InodeCompact::default()
        });
        assert_eq!(wrong.format().unwrap_err().field_name(), Some("i_format"));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let truncated =
            |r: Result<(), FormatError>| matches!(r, Err(FormatError::Truncated { .. }));
        assert!(truncated(Inode::decode(&[]).map(drop)));
        assert!(truncated(Inode::decode(&[0]).map(drop)));
        assert!(truncated(Inode::decode(&[0; 31]).map(drop)));
        assert!(truncated(InodeCompact::decode(&[0; 31]).map(drop)));
        assert!(truncated(InodeExtended::decode(&[0; 63]).map(drop)));
        assert!(truncated(ChunkAddr::decode(&[0; 7]).map(drop)));
        assert!(truncated(Dirent::decode(&[0; 11]).map(drop)));
        assert!(truncated(XattrIbodyHeader::decode(&[0; 11]).map(drop)));
        assert!(truncated(XattrEntryHeader::decode(&[0; 3]).map(drop)));
    }

    #[test]
    fn chunk_index_header() {
        // 1 MiB chunks, 4 KiB blocks: 20 - 12 = 8.
        let h = ChunkIndexHeader::new(1 << 20, 12).unwrap();
        assert_eq!(h.format, 0x0028);
        assert_eq!(h.to_i_u(), 0x0000_0028);
        assert_eq!(ChunkIndexHeader::from_i_u(0x0000_0028), h);
        assert_eq!(h.chunk_size(12), Ok(1 << 20));
        // tarfs: 512-byte blocks.
        assert_eq!(ChunkIndexHeader::new(1 << 20, 9).unwrap().format, 0x002b);
        // One block; 2^31 blocks (next_power_of_two of a huge file).
        assert_eq!(ChunkIndexHeader::new(4096, 12).unwrap().format, 0x0020);
        let big = ChunkIndexHeader::new(1 << 43, 12).unwrap();
        assert_eq!(big.format, 0x003f);
        assert_eq!(big.chunk_size(12), Ok(1 << 43));
        for bad in [0, 3 << 20, 2048, 1 << 44] {
            assert!(ChunkIndexHeader::new(bad, 12).is_err(), "{bad:#x}");
        }
        for format in [0x0008, 0x0068] {
            let h = ChunkIndexHeader {
                format,
                reserved: 0,
            };
            assert_eq!(h.chunk_size(12).unwrap_err().field_name(), Some("format"));
        }
        assert!(big.chunk_size(40).is_err());
    }

    #[test]
    fn chunk_addr_matches_hand_written_bytes() {
        // Blob 2 (device 3), chunk index 0x12_3456, block 0x0a0b_0c0d.
        let a = ChunkAddr::new(2, 0x12_3456, 0x0a0b_0c0d).unwrap();
        let bytes = [0x56, 0x34, 0x03, 0x12, 0x0d, 0x0c, 0x0b, 0x0a];
        assert_eq!(a.to_bytes(), bytes);
        let back = ChunkAddr::decode(&bytes).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.device_id(), 3);
        assert_eq!(back.blob_index(), Some(2));
        assert_eq!(back.chunk_index(), 0x12_3456);
        assert_eq!(back.blk_addr(), 0x0a0b_0c0d);

        assert_eq!(ChunkAddr::new(254, 0, 0).unwrap().device_id(), 255);
        assert_eq!(
            ChunkAddr::new(255, 0, 0).unwrap_err().field_name(),
            Some("c_blob_addr_hi")
        );
        assert_eq!(
            ChunkAddr::new(0, 1 << 24, 0).unwrap_err().field_name(),
            Some("c_blob_addr_lo")
        );
        assert_eq!(ChunkAddr::decode(&[0; 8]).unwrap().blob_index(), None);
    }

    #[test]
    fn dirent_matches_hand_written_bytes() {
        let d = Dirent {
            nid: 0x0102_0304_0506_0708,
            nameoff: 0x0a09,
            file_type: FileType::Symlink as u8,
        };
        let bytes = [8, 7, 6, 5, 4, 3, 2, 1, 0x09, 0x0a, 7, 0];
        assert_eq!(d.to_bytes(), bytes);
        assert_eq!(Dirent::decode(&bytes), Ok(d));
        assert_eq!(d.file_type(), Ok(FileType::Symlink));
        let unknown = Dirent { file_type: 0, ..d };
        assert!(unknown.file_type().is_err());
    }

    #[test]
    fn file_types() {
        for v in 1..=7u8 {
            assert_eq!(FileType::try_from(v).unwrap() as u8, v);
        }
        assert!(FileType::try_from(8).is_err());
        assert_eq!(FileType::from_mode(0o100644), Some(FileType::Regular));
        assert_eq!(FileType::from_mode(0o040755), Some(FileType::Directory));
        assert_eq!(FileType::from_mode(0o120777), Some(FileType::Symlink));
        assert_eq!(FileType::from_mode(0o020600), Some(FileType::CharDevice));
        assert_eq!(FileType::from_mode(0o060600), Some(FileType::BlockDevice));
        assert_eq!(FileType::from_mode(0o010600), Some(FileType::Fifo));
        assert_eq!(FileType::from_mode(0o140600), Some(FileType::Socket));
        assert_eq!(FileType::from_mode(0o644), None);
    }

    #[test]
    fn xattr_headers_and_sizes() {
        let h = XattrIbodyHeader {
            reserved: 0,
            shared_count: 0,
        };
        assert_eq!(h.to_bytes(), [0; 12]);
        let h = XattrIbodyHeader {
            reserved: 0x0403_0201,
            shared_count: 5,
        };
        assert_eq!(h.to_bytes(), [1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(XattrIbodyHeader::decode(&h.to_bytes()), Ok(h));

        // "security.capability" with a 20-byte value.
        let (index, suffix) = split_xattr_name(b"security.capability").unwrap();
        assert_eq!((index, suffix), (6, &b"capability"[..]));
        let e = XattrEntryHeader {
            name_len: suffix.len() as u8,
            name_index: index,
            value_size: 20,
        };
        assert_eq!(e.to_bytes(), [10, 6, 20, 0]);
        assert_eq!(XattrEntryHeader::decode(&e.to_bytes()), Ok(e));
        assert_eq!(e.entry_size(), 36); // 4 + 10 + 20 = 34 -> 36
        let area = XattrIbodyHeader::SIZE + e.entry_size();
        assert_eq!(xattr_icount(area), Ok(10)); // (48 - 12) / 4 + 1
        assert_eq!(xattr_ibody_size(10), 48);
        assert_eq!(xattr_icount(0), Ok(0));
        assert_eq!(xattr_ibody_size(0), 0);
        assert_eq!(xattr_icount(12), Ok(1));
        for bad in [4, 13, 14, 12 + 4 * 65535] {
            assert!(xattr_icount(bad).is_err(), "{bad}");
        }
        assert_eq!(xattr_icount(12 + 4 * 65534), Ok(u16::MAX));
    }

    #[test]
    fn xattr_prefixes() {
        assert_eq!(xattr_prefix(1), Some(&b"user."[..]));
        assert_eq!(xattr_prefix(2), Some(&b"system.posix_acl_access"[..]));
        assert_eq!(xattr_prefix(3), Some(&b"system.posix_acl_default"[..]));
        assert_eq!(xattr_prefix(4), Some(&b"trusted."[..]));
        assert_eq!(xattr_prefix(5), None);
        assert_eq!(xattr_prefix(6), Some(&b"security."[..]));
        assert_eq!(split_xattr_name(b"user.foo"), Some((1, &b"foo"[..])));
        assert_eq!(
            split_xattr_name(b"system.posix_acl_access"),
            Some((2, &b""[..]))
        );
        assert_eq!(
            split_xattr_name(b"system.posix_acl_default"),
            Some((3, &b""[..]))
        );
        assert_eq!(
            split_xattr_name(b"trusted.overlay.opaque"),
            Some((4, &b"overlay.opaque"[..]))
        );
        assert_eq!(split_xattr_name(b"system.other"), None);
        assert_eq!(split_xattr_name(b"user"), None);
    }

    fn any_data_layout() -> impl Strategy<Value = DataLayout> {
        prop_oneof![
            Just(DataLayout::FlatPlain),
            Just(DataLayout::FlatInline),
            Just(DataLayout::ChunkBased)
        ]
    }

    fn any_compact() -> impl Strategy<Value = InodeCompact> {
        (
            any_data_layout(),
            any::<(u16, u16, u16, u32, u32, u32, u16, u16)>(),
        )
            .prop_map(|(d, t)| InodeCompact {
                format: InodeFormat::new(InodeLayout::Compact, d).to_raw(),
                xattr_icount: t.0,
                mode: t.1,
                nlink: t.2,
                size: t.3,
                u: t.4,
                ino: t.5,
                uid: t.6,
                gid: t.7,
            })
    }

    fn any_extended() -> impl Strategy<Value = InodeExtended> {
        (
            any_data_layout(),
            any::<(u16, u16, u64, u32, u32, u32, u32, u64, u32, u32)>(),
        )
            .prop_map(|(d, t)| InodeExtended {
                format: InodeFormat::new(InodeLayout::Extended, d).to_raw(),
                xattr_icount: t.0,
                mode: t.1,
                size: t.2,
                u: t.3,
                ino: t.4,
                uid: t.5,
                gid: t.6,
                mtime: t.7,
                mtime_nsec: t.8,
                nlink: t.9,
            })
    }

    proptest! {
        #[test]
        fn inodes_round_trip(c in any_compact(), e in any_extended()) {
            prop_assert_eq!(InodeCompact::decode(&c.to_bytes()), Ok(c));
            prop_assert_eq!(InodeExtended::decode(&e.to_bytes()), Ok(e));
            for inode in [Inode::Compact(c), Inode::Extended(e)] {
                let mut bytes = Vec::new();
                inode.append_to(&mut bytes);
                prop_assert_eq!(bytes.len(), inode.disk_size());
                prop_assert_eq!(Inode::decode(&bytes), Ok(inode));
                prop_assert!(inode.format().is_ok());
            }
        }

        #[test]
        fn chunk_addr_round_trips(blob in 0u32..255, index in 0u32..1 << 24, blk in any::<u32>()) {
            let a = ChunkAddr::new(blob, index, blk).unwrap();
            let back = ChunkAddr::decode(&a.to_bytes()).unwrap();
            prop_assert_eq!(back, a);
            prop_assert_eq!(back.blob_index(), Some(blob));
            prop_assert_eq!(back.chunk_index(), index);
            prop_assert_eq!(back.blk_addr(), blk);
        }

        #[test]
        fn any_8_bytes_are_a_chunk_addr(bytes in any::<[u8; 8]>()) {
            prop_assert_eq!(ChunkAddr::decode(&bytes).unwrap().to_bytes(), bytes);
        }

        #[test]
        fn small_structs_round_trip(
            nid in any::<u64>(), nameoff in any::<u16>(), ft in any::<u8>(),
            reserved in any::<u32>(), shared in any::<u8>(),
            name_len in any::<u8>(), name_index in any::<u8>(), value_size in any::<u16>(),
        ) {
            let d = Dirent { nid, nameoff, file_type: ft };
            prop_assert_eq!(Dirent::decode(&d.to_bytes()), Ok(d));
            let h = XattrIbodyHeader { reserved, shared_count: shared };
            prop_assert_eq!(XattrIbodyHeader::decode(&h.to_bytes()), Ok(h));
            let e = XattrEntryHeader { name_len, name_index, value_size };
            prop_assert_eq!(XattrEntryHeader::decode(&e.to_bytes()), Ok(e));
            let [v0, v1] = value_size.to_le_bytes();
            prop_assert_eq!(e.to_bytes(), [name_len, name_index, v0, v1]);
        }

        #[test]
        fn chunk_index_header_round_trips(bits in 0u32..=31, blkszbits in prop_oneof![Just(9u8), Just(12u8)]) {
            let size = 1u64 << (bits + u32::from(blkszbits));
            let h = ChunkIndexHeader::new(size, blkszbits).unwrap();
            prop_assert_eq!(ChunkIndexHeader::from_i_u(h.to_i_u()), h);
            prop_assert_eq!(h.chunk_size(blkszbits), Ok(size));
        }

        #[test]
        fn xattr_icount_inverse(icount in 1u16..) {
            prop_assert_eq!(xattr_icount(xattr_ibody_size(icount)), Ok(icount));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..100),
            blkszbits in any::<u8>(),
            offset in any::<u64>(),
        ) {
            if let Ok(inode) = Inode::decode(&bytes) {
                let _ = inode.format();
                let _ = inode.chunk_index_header().chunk_size(blkszbits);
                let _ = inode.chunk_addrs_offset(offset);
                let mut out = Vec::new();
                inode.append_to(&mut out);
                prop_assert_eq!(Inode::decode(&out), Ok(inode));
            }
            let _ = InodeCompact::decode(&bytes);
            let _ = InodeExtended::decode(&bytes);
            let _ = ChunkAddr::decode(&bytes);
            if let Ok(d) = Dirent::decode(&bytes) {
                let _ = d.file_type();
            }
            let _ = XattrIbodyHeader::decode(&bytes);
            if let Ok(e) = XattrEntryHeader::decode(&bytes) {
                let _ = e.entry_size();
                let _ = xattr_prefix(e.name_index);
            }
            let _ = split_xattr_name(&bytes);
            let _ = xattr_icount(bytes.len());
        }
    }
}
