//! The fixed-place structures of a RAFS v6 bootstrap: the EROFS superblock, the RAFS extended
//! superblock, EROFS device slots, the RAFS blob table and the prefetch table, plus the nid
//! arithmetic that locates inodes.

use crate::chunk::{is_valid_chunk_size, RAFS_MAX_CHUNKS_PER_BLOB};
use crate::le::{array, fixed, put, put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};
use crate::{BlobFeatures, Compressor, Digester, FormatError, RafsSuperFlags};

/// EROFS superblock magic (`EROFS_SUPER_MAGIC_V1`).
pub const EROFS_SUPER_MAGIC_V1: u32 = 0xE0F5_E1E2;
/// File offset of the EROFS superblock.
pub const EROFS_SUPER_OFFSET: u64 = 1024;
/// File offset of the RAFS extended superblock.
pub const RAFS_V6_EXT_SUPER_OFFSET: u64 = 1152;
/// File offset of the first EROFS device slot.
pub const EROFS_DEVTABLE_OFFSET: u64 = 1408;
/// Size of one EROFS device slot.
pub const EROFS_DEVT_SLOT_SIZE: u64 = 128;
/// `s_devt_slotoff` of every RAFS v6 image (`1408 / 128`).
pub const EROFS_DEVT_SLOTOFF: u16 = 11;
/// Size of one RAFS v6 blob table entry.
pub const RAFS_V6_BLOB_ENTRY_SIZE: u64 = 256;
/// Most blobs a v6 image can address: the EROFS device id (`blob_index + 1`) is one byte.
/// (nydus-image itself writes at most 254.)
pub const RAFS_V6_MAX_BLOBS: u64 = 255;

/// EROFS compat feature: superblock checksum (never set by RAFS).
pub const EROFS_FEATURE_COMPAT_SB_CHKSUM: u32 = 0x0000_0001;
/// EROFS compat feature marking a RAFS v6 image.
pub const EROFS_FEATURE_COMPAT_RAFS_V6: u32 = 0x4000_0000;
/// EROFS incompat feature: chunk-based regular files.
pub const EROFS_FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x0000_0004;
/// EROFS incompat feature: device table.
pub const EROFS_FEATURE_INCOMPAT_DEVICE_TABLE: u32 = 0x0000_0008;
/// The exact `s_feature_incompat` of a RAFS v6 image.
pub const RAFS_V6_FEATURE_INCOMPAT: u32 =
    EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | EROFS_FEATURE_INCOMPAT_DEVICE_TABLE;

/// `s_blkszbits` of tarfs images (512-byte blocks).
pub const EROFS_BLOCK_BITS_9: u8 = 9;
/// `s_blkszbits` of ordinary images (4 KiB blocks).
pub const EROFS_BLOCK_BITS_12: u8 = 12;
/// 512-byte block size.
pub const EROFS_BLOCK_SIZE_512: u64 = 512;
/// 4 KiB block size; also the alignment of the blob and chunk tables and the smallest bootstrap.
pub const EROFS_BLOCK_SIZE_4096: u64 = 4096;
/// log2 of the inode slot size: a nid counts 32-byte slots.
pub const EROFS_INODE_SLOT_BITS: u32 = 5;
/// Alignment of each device's start in the flat block-device address space (512 KiB).
pub const V6_BLOCK_SEG_ALIGNMENT: u64 = 0x8_0000;

/// Byte offset of inode `nid`: `(meta_blkaddr << blkszbits) + nid * 32`; `None` on overflow.
pub fn nid_to_offset(meta_blkaddr: u32, blkszbits: u8, nid: u64) -> Option<u64> {
    let block_size = 1u64.checked_shl(u32::from(blkszbits))?;
    let base = u64::from(meta_blkaddr).checked_mul(block_size)?;
    nid.checked_mul(1 << EROFS_INODE_SLOT_BITS)?
        .checked_add(base)
}

/// The nid of the inode at byte `offset`; `None` if `offset` is before the inode area or not on
/// a 32-byte slot.
pub fn offset_to_nid(meta_blkaddr: u32, blkszbits: u8, offset: u64) -> Option<u64> {
    let block_size = 1u64.checked_shl(u32::from(blkszbits))?;
    let base = u64::from(meta_blkaddr).checked_mul(block_size)?;
    let rel = offset.checked_sub(base)?;
    rel.is_multiple_of(1 << EROFS_INODE_SLOT_BITS)
        .then_some(rel >> EROFS_INODE_SLOT_BITS)
}

/// The nids of a prefetch table (`u32` each; a directory means all its descendants).
pub fn prefetch_nids(table: &[u8]) -> Result<impl Iterator<Item = u32> + '_, FormatError> {
    if !table.len().is_multiple_of(4) {
        return Err(FormatError::Invalid {
            what: "prefetch table",
            reason: format!("size {} is not a multiple of 4", table.len()),
        });
    }
    Ok(table.chunks_exact(4).map(|c| u32_at(c, 0)))
}

/// The text of a 64-byte blob id field: the bytes before the first NUL, as UTF-8.
fn id_str<'a>(
    raw: &'a [u8; 64],
    what: &'static str,
    field: &'static str,
) -> Result<&'a str, FormatError> {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    std::str::from_utf8(&raw[..len])
        .map_err(|_| FormatError::field(what, field, 0, 0u8, "blob id is not UTF-8"))
}

/// A 64-byte blob id field holding `id`, NUL-padded.
fn id_bytes(id: &str, what: &'static str) -> Result<[u8; 64], FormatError> {
    if id.len() > 64 || id.as_bytes().contains(&0) {
        return Err(FormatError::Invalid {
            what,
            reason: format!("blob id {id:?} is longer than 64 bytes or contains NUL"),
        });
    }
    let mut raw = [0u8; 64];
    raw[..id.len()].copy_from_slice(id.as_bytes());
    Ok(raw)
}

/// The EROFS superblock (`struct erofs_super_block`, 128 bytes at file offset 1024).
///
/// The reserved bytes from 90 are written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SuperBlock {
    /// @0 `s_magic`: [`EROFS_SUPER_MAGIC_V1`].
    pub magic: u32,
    /// @4 `s_checksum`: must be 0 in RAFS.
    pub checksum: u32,
    /// @8 `s_feature_compat`: must include [`EROFS_FEATURE_COMPAT_RAFS_V6`].
    pub feature_compat: u32,
    /// @12 `s_blkszbits`: log2 of the block size, 12 (4 KiB) or 9 (512 B, tarfs).
    pub blkszbits: u8,
    /// @13 `s_extslots`: must be 0.
    pub extslots: u8,
    /// @14 `s_root_nid`: nid of the root directory.
    pub root_nid: u16,
    /// @16 `s_inos`: number of inodes (non-zero).
    pub inos: u64,
    /// @24 `s_build_time`: seconds; mtime of compact inodes (0 in RAFS).
    pub build_time: u64,
    /// @32 `s_build_time_nsec`.
    pub build_time_nsec: u32,
    /// @36 `s_blocks`: total blocks of all blob devices.
    pub blocks: u32,
    /// @40 `s_meta_blkaddr`: first block of the inode area.
    pub meta_blkaddr: u32,
    /// @44 `s_xattr_blkaddr`: first block of the shared xattr area; 0 in Nydus's images (Nydus
    /// refuses others), set by `mkfs.erofs` and by our writer with [`WriteOptions::share_xattrs`].
    ///
    /// [`WriteOptions::share_xattrs`]: super::writer::WriteOptions::share_xattrs
    pub xattr_blkaddr: u32,
    /// @48 `s_uuid`.
    pub uuid: [u8; 16],
    /// @64 `s_volume_name`.
    pub volume_name: [u8; 16],
    /// @80 `s_feature_incompat`: exactly [`RAFS_V6_FEATURE_INCOMPAT`].
    pub feature_incompat: u32,
    /// @84 `s_u`: compression info in EROFS; must be 0.
    pub u: u16,
    /// @86 `s_extra_devices`: number of device slots (data blobs).
    pub extra_devices: u16,
    /// @88 `s_devt_slotoff`: device table offset in 128-byte units, [`EROFS_DEVT_SLOTOFF`].
    pub devt_slotoff: u16,
}

impl SuperBlock {
    /// Encoded size.
    pub const SIZE: usize = 128;
    const WHAT: &'static str = "SuperBlock";

    /// A superblock with the fixed RAFS v6 values (magic, features, device table offset) and the
    /// given block size bits; everything else zero.
    pub fn new(blkszbits: u8) -> Self {
        Self {
            magic: EROFS_SUPER_MAGIC_V1,
            feature_compat: EROFS_FEATURE_COMPAT_RAFS_V6,
            blkszbits,
            feature_incompat: RAFS_V6_FEATURE_INCOMPAT,
            devt_slotoff: EROFS_DEVT_SLOTOFF,
            ..Self::default()
        }
    }

    /// Reads the first [`Self::SIZE`] bytes of `bytes` (the bytes at file offset 1024).
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, Self::WHAT)?;
        Ok(Self {
            magic: u32_at(b, 0),
            checksum: u32_at(b, 4),
            feature_compat: u32_at(b, 8),
            blkszbits: b[12],
            extslots: b[13],
            root_nid: u16_at(b, 14),
            inos: u64_at(b, 16),
            build_time: u64_at(b, 24),
            build_time_nsec: u32_at(b, 32),
            blocks: u32_at(b, 36),
            meta_blkaddr: u32_at(b, 40),
            xattr_blkaddr: u32_at(b, 44),
            uuid: array(b, 48),
            volume_name: array(b, 64),
            feature_incompat: u32_at(b, 80),
            u: u16_at(b, 84),
            extra_devices: u16_at(b, 86),
            devt_slotoff: u16_at(b, 88),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u32(&mut b, 0, self.magic);
        put_u32(&mut b, 4, self.checksum);
        put_u32(&mut b, 8, self.feature_compat);
        b[12] = self.blkszbits;
        b[13] = self.extslots;
        put_u16(&mut b, 14, self.root_nid);
        put_u64(&mut b, 16, self.inos);
        put_u64(&mut b, 24, self.build_time);
        put_u32(&mut b, 32, self.build_time_nsec);
        put_u32(&mut b, 36, self.blocks);
        put_u32(&mut b, 40, self.meta_blkaddr);
        put_u32(&mut b, 44, self.xattr_blkaddr);
        put(&mut b, 48, &self.uuid);
        put(&mut b, 64, &self.volume_name);
        put_u32(&mut b, 80, self.feature_incompat);
        put_u16(&mut b, 84, self.u);
        put_u16(&mut b, 86, self.extra_devices);
        put_u16(&mut b, 88, self.devt_slotoff);
        b
    }

    /// The block size, if `s_blkszbits` is one RAFS allows (9 or 12).
    pub fn block_size(&self) -> Result<u64, FormatError> {
        match self.blkszbits {
            EROFS_BLOCK_BITS_9 => Ok(EROFS_BLOCK_SIZE_512),
            EROFS_BLOCK_BITS_12 => Ok(EROFS_BLOCK_SIZE_4096),
            v => Err(FormatError::field(
                Self::WHAT,
                "s_blkszbits",
                12,
                v,
                "must be 9 (512 B) or 12 (4 KiB)",
            )),
        }
    }

    /// File offset just past the device table.
    pub fn devtable_end(&self) -> u64 {
        EROFS_DEVTABLE_OFFSET + u64::from(self.extra_devices) * EROFS_DEVT_SLOT_SIZE
    }

    /// Byte offset of inode `nid` in the bootstrap.
    pub fn nid_to_offset(&self, nid: u64) -> Option<u64> {
        nid_to_offset(self.meta_blkaddr, self.blkszbits, nid)
    }

    /// Checks the superblock of a bootstrap of `meta_size` bytes the way Nydus does
    /// (`RafsV6SuperBlock::validate`), and that the inode area starts inside the bootstrap.
    pub fn validate(&self, meta_size: u64) -> Result<(), FormatError> {
        let what = Self::WHAT;
        if self.magic != EROFS_SUPER_MAGIC_V1 {
            return Err(FormatError::BadMagic {
                what,
                offset: 0,
                expected: EROFS_SUPER_MAGIC_V1,
                found: self.magic,
            });
        }
        if self.checksum != 0 {
            return Err(FormatError::field(
                what,
                "s_checksum",
                4,
                self.checksum,
                "must be 0",
            ));
        }
        if self.feature_compat & EROFS_FEATURE_COMPAT_RAFS_V6 == 0 {
            return Err(FormatError::field(
                what,
                "s_feature_compat",
                8,
                self.feature_compat,
                "lacks EROFS_FEATURE_COMPAT_RAFS_V6 (0x40000000)",
            ));
        }
        let block_size = self.block_size()?;
        if self.extslots != 0 {
            return Err(FormatError::field(
                what,
                "s_extslots",
                13,
                self.extslots,
                "must be 0",
            ));
        }
        if self.inos == 0 {
            return Err(FormatError::field(
                what,
                "s_inos",
                16,
                self.inos,
                "must not be 0",
            ));
        }
        if self.feature_incompat != RAFS_V6_FEATURE_INCOMPAT {
            return Err(FormatError::field(
                what,
                "s_feature_incompat",
                80,
                self.feature_incompat,
                "must be exactly CHUNKED_FILE | DEVICE_TABLE (0xc)",
            ));
        }
        if self.u != 0 {
            return Err(FormatError::field(what, "s_u", 84, self.u, "must be 0"));
        }
        if u64::from(self.devt_slotoff) * EROFS_DEVT_SLOT_SIZE != EROFS_DEVTABLE_OFFSET {
            return Err(FormatError::field(
                what,
                "s_devt_slotoff",
                88,
                self.devt_slotoff,
                "must be 11 (device table at 1408)",
            ));
        }
        if meta_size < EROFS_BLOCK_SIZE_4096 || !meta_size.is_multiple_of(block_size) {
            return Err(FormatError::Invalid {
                what: "bootstrap",
                reason: format!(
                    "size {meta_size} must be at least 4096 and a multiple of the block size {block_size}"
                ),
            });
        }
        if u64::from(self.meta_blkaddr) * block_size >= meta_size {
            return Err(FormatError::field(
                what,
                "s_meta_blkaddr",
                40,
                self.meta_blkaddr,
                format!("inode area starts past the end of the {meta_size}-byte bootstrap"),
            ));
        }
        Ok(())
    }
}

/// The RAFS v6 extended superblock (Nydus `RafsV6SuperBlockExt`, 256 bytes at file offset 1152,
/// inside the EROFS superblock's unused area).
///
/// The padding at 52 and the reserved bytes from 56 are written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SuperBlockExt {
    /// @0 `s_flags`: filesystem flags; exactly one compression and one hash bit.
    pub flags: RafsSuperFlags,
    /// @8 `s_blob_table_offset`: file offset of the blob table (4 KiB aligned).
    pub blob_table_offset: u64,
    /// @16 `s_blob_table_size`: blob table size in bytes (a multiple of 256).
    pub blob_table_size: u32,
    /// @20 `s_chunk_size`: chunk size of every blob.
    pub chunk_size: u32,
    /// @24 `s_chunk_table_offset`: file offset of the chunk info table (4 KiB aligned; 0 if none).
    pub chunk_table_offset: u64,
    /// @32 `s_chunk_table_size`: chunk info table size in bytes (a multiple of 80).
    pub chunk_table_size: u64,
    /// @40 `s_prefetch_table_offset`: file offset of the prefetch table.
    pub prefetch_table_offset: u64,
    /// @48 `s_prefetch_table_size`: prefetch table size in bytes (a multiple of 4).
    pub prefetch_table_size: u32,
}

impl SuperBlockExt {
    /// Encoded size.
    pub const SIZE: usize = 256;
    const WHAT: &'static str = "SuperBlockExt";

    /// Reads the first [`Self::SIZE`] bytes of `bytes` (the bytes at file offset 1152).
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, Self::WHAT)?;
        Ok(Self {
            flags: RafsSuperFlags::from_bits(u64_at(b, 0)),
            blob_table_offset: u64_at(b, 8),
            blob_table_size: u32_at(b, 16),
            chunk_size: u32_at(b, 20),
            chunk_table_offset: u64_at(b, 24),
            chunk_table_size: u64_at(b, 32),
            prefetch_table_offset: u64_at(b, 40),
            prefetch_table_size: u32_at(b, 48),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u64(&mut b, 0, self.flags.bits());
        put_u64(&mut b, 8, self.blob_table_offset);
        put_u32(&mut b, 16, self.blob_table_size);
        put_u32(&mut b, 20, self.chunk_size);
        put_u64(&mut b, 24, self.chunk_table_offset);
        put_u64(&mut b, 32, self.chunk_table_size);
        put_u64(&mut b, 40, self.prefetch_table_offset);
        put_u32(&mut b, 48, self.prefetch_table_size);
        b
    }

    /// Number of blob table entries.
    pub fn blob_count(&self) -> u64 {
        u64::from(self.blob_table_size) / RAFS_V6_BLOB_ENTRY_SIZE
    }

    /// Number of chunk info table entries.
    pub fn chunk_count(&self) -> u64 {
        self.chunk_table_size / crate::ChunkInfo::SIZE as u64
    }

    /// Checks the extended superblock of a bootstrap of `meta_size` bytes whose EROFS superblock
    /// is `sb`: flags name one compressor and one digest, the chunk size is allowed, and the blob,
    /// chunk and prefetch tables are whole, aligned and inside the bootstrap.
    pub fn validate(&self, sb: &SuperBlock, meta_size: u64) -> Result<(), FormatError> {
        let what = Self::WHAT;
        let flag_bits = self.flags.bits();
        if self.flags.compressor().is_none() {
            return Err(FormatError::field(
                what,
                "s_flags",
                0,
                flag_bits,
                "must have exactly one compression bit",
            ));
        }
        if self.flags.digester().is_none() {
            return Err(FormatError::field(
                what,
                "s_flags",
                0,
                flag_bits,
                "must have exactly one hash bit",
            ));
        }
        if !is_valid_chunk_size(self.chunk_size) {
            return Err(FormatError::field(
                what,
                "s_chunk_size",
                20,
                self.chunk_size,
                "must be a power of two in 4 KiB..=16 MiB",
            ));
        }

        let table_size = u64::from(self.blob_table_size);
        if !table_size.is_multiple_of(RAFS_V6_BLOB_ENTRY_SIZE) {
            return Err(FormatError::field(
                what,
                "s_blob_table_size",
                16,
                self.blob_table_size,
                "must be a multiple of 256",
            ));
        }
        if self.blob_count() > RAFS_V6_MAX_BLOBS {
            return Err(FormatError::field(
                what,
                "s_blob_table_size",
                16,
                self.blob_table_size,
                "more than 255 blobs",
            ));
        }
        let offset = self.blob_table_offset;
        if !offset.is_multiple_of(EROFS_BLOCK_SIZE_4096) || offset < sb.devtable_end() {
            return Err(FormatError::field(
                what,
                "s_blob_table_offset",
                8,
                offset,
                format!(
                    "must be 4 KiB aligned and at or after the device table end {}",
                    sb.devtable_end()
                ),
            ));
        }
        if !within(offset, table_size, meta_size) {
            return Err(FormatError::field(
                what,
                "s_blob_table_offset",
                8,
                offset,
                format!(
                    "blob table of {table_size} bytes ends past the bootstrap ({meta_size} bytes)"
                ),
            ));
        }

        if !self
            .chunk_table_size
            .is_multiple_of(crate::ChunkInfo::SIZE as u64)
        {
            return Err(FormatError::field(
                what,
                "s_chunk_table_size",
                32,
                self.chunk_table_size,
                "must be a multiple of 80",
            ));
        }
        if self.chunk_table_offset != 0 || self.chunk_table_size != 0 {
            let offset = self.chunk_table_offset;
            if offset == 0 || !offset.is_multiple_of(EROFS_BLOCK_SIZE_4096) {
                return Err(FormatError::field(
                    what,
                    "s_chunk_table_offset",
                    24,
                    offset,
                    "must be non-zero and 4 KiB aligned when there is a chunk table",
                ));
            }
            if !within(offset, self.chunk_table_size, meta_size) {
                return Err(FormatError::field(
                    what,
                    "s_chunk_table_offset",
                    24,
                    offset,
                    format!(
                        "chunk table of {} bytes ends past the bootstrap ({meta_size} bytes)",
                        self.chunk_table_size
                    ),
                ));
            }
        }

        if !self.prefetch_table_size.is_multiple_of(4) {
            return Err(FormatError::field(
                what,
                "s_prefetch_table_size",
                48,
                self.prefetch_table_size,
                "must be a multiple of 4",
            ));
        }
        if self.prefetch_table_size != 0
            && !within(
                self.prefetch_table_offset,
                self.prefetch_table_size.into(),
                meta_size,
            )
        {
            return Err(FormatError::field(
                what,
                "s_prefetch_table_offset",
                40,
                self.prefetch_table_offset,
                format!(
                    "prefetch table of {} bytes ends past the bootstrap ({meta_size} bytes)",
                    self.prefetch_table_size
                ),
            ));
        }
        Ok(())
    }
}

/// Whether `offset..offset + size` lies inside `0..limit`.
fn within(offset: u64, size: u64, limit: u64) -> bool {
    offset.checked_add(size).is_some_and(|end| end <= limit)
}

/// An EROFS device slot (`struct erofs_deviceslot`, 128 bytes at `1408 + i * 128`), one per blob.
///
/// The reserved bytes from 72 are written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceSlot {
    /// @0 `blob_id`: the blob id (64 hex chars of a sha256), NUL-padded; the EROFS device tag.
    pub blob_id: [u8; 64],
    /// @64 `blocks`: blob size in blocks (uncompressed size / block size).
    pub blocks: u32,
    /// @68 `mapped_blkaddr`: first block of this device in the flat block-device address space.
    pub mapped_blkaddr: u32,
}

impl Default for DeviceSlot {
    fn default() -> Self {
        Self {
            blob_id: [0; 64],
            blocks: 0,
            mapped_blkaddr: 0,
        }
    }
}

impl DeviceSlot {
    /// Encoded size.
    pub const SIZE: usize = 128;
    const WHAT: &'static str = "DeviceSlot";

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, Self::WHAT)?;
        Ok(Self {
            blob_id: array(b, 0),
            blocks: u32_at(b, 64),
            mapped_blkaddr: u32_at(b, 68),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, 0, &self.blob_id);
        put_u32(&mut b, 64, self.blocks);
        put_u32(&mut b, 68, self.mapped_blkaddr);
        b
    }

    /// The blob id as text (the bytes before the first NUL).
    pub fn blob_id(&self) -> Result<&str, FormatError> {
        id_str(&self.blob_id, Self::WHAT, "blob_id")
    }

    /// Sets the blob id; fails if it is longer than 64 bytes or contains NUL.
    pub fn set_blob_id(&mut self, id: &str) -> Result<(), FormatError> {
        self.blob_id = id_bytes(id, Self::WHAT)?;
        Ok(())
    }
}

/// A RAFS v6 blob table entry (Nydus `RafsV6Blob`, 256 bytes), one per data blob.
///
/// The reserved bytes from 220 are written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobEntry {
    /// @0 `blob_id`: the blob id, NUL-padded.
    pub blob_id: [u8; 64],
    /// @64 `blob_index`: position of this entry in the table.
    pub blob_index: u32,
    /// @68 `chunk_size`: equals the extended superblock's chunk size.
    pub chunk_size: u32,
    /// @72 `chunk_count`: chunks in the blob (at most 2^24).
    pub chunk_count: u32,
    /// @76 `compression_algo`: [`Compressor`] code of the chunk data.
    pub compression_algo: u32,
    /// @80 `digest_algo`: [`Digester`] code of the chunk digests.
    pub digest_algo: u32,
    /// @84 `features`.
    pub features: BlobFeatures,
    /// @88 `compressed_size`: blob size (at most 2^40).
    pub compressed_size: u64,
    /// @96 `uncompressed_size`: size of the uncompressed address space (at most 2^44).
    pub uncompressed_size: u64,
    /// @104 `blob_toc_size`: TOC entries plus their tar header; 0 if no TOC.
    pub blob_toc_size: u32,
    /// @108 `ci_compressor`: [`Compressor`] code of the blob.meta chunk info array.
    pub ci_compressor: u32,
    /// @112 `ci_offset`: offset of the compressed chunk info array in the blob.
    pub ci_offset: u64,
    /// @120 `ci_compressed_size`.
    pub ci_compressed_size: u64,
    /// @128 `ci_uncompressed_size`: `chunk_count * 16` (CI v1) or `* 24` (CI v2; more with
    /// batch, zran or encryption contexts).
    pub ci_uncompressed_size: u64,
    /// @136 `blob_toc_digest`: sha256 of the TOC entries and their tar header.
    pub blob_toc_digest: [u8; 32],
    /// @168 `blob_meta_digest`: zran: sha256 of the separate RAFS meta blob; encrypted: key.
    pub blob_meta_digest: [u8; 32],
    /// @200 `blob_meta_size`: zran: size of the meta blob; encrypted: IV bytes 0..8.
    pub blob_meta_size: u64,
    /// @208 `cipher_iv`: IV bytes 8..16.
    pub cipher_iv: [u8; 8],
    /// @216 `cipher_algo`: 0 none, 1 AES-128-XTS, 2 AES-256-XTS, 3 AES-256-GCM.
    pub cipher_algo: u32,
}

impl Default for BlobEntry {
    fn default() -> Self {
        Self {
            blob_id: [0; 64],
            blob_index: 0,
            chunk_size: 0,
            chunk_count: 0,
            compression_algo: 0,
            digest_algo: 0,
            features: BlobFeatures::empty(),
            compressed_size: 0,
            uncompressed_size: 0,
            blob_toc_size: 0,
            ci_compressor: 0,
            ci_offset: 0,
            ci_compressed_size: 0,
            ci_uncompressed_size: 0,
            blob_toc_digest: [0; 32],
            blob_meta_digest: [0; 32],
            blob_meta_size: 0,
            cipher_iv: [0; 8],
            cipher_algo: 0,
        }
    }
}

/// Largest blob (compressed) size.
pub const RAFS_MAX_BLOB_COMPRESSED_SIZE: u64 = 1 << 40;
/// Largest blob uncompressed address space.
pub const RAFS_MAX_BLOB_UNCOMPRESSED_SIZE: u64 = 1 << 44;
/// Largest known `cipher_algo` code.
const MAX_CIPHER_ALGO: u32 = 3;

impl BlobEntry {
    /// Encoded size.
    pub const SIZE: usize = 256;
    const WHAT: &'static str = "BlobEntry";

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, Self::WHAT)?;
        Ok(Self {
            blob_id: array(b, 0),
            blob_index: u32_at(b, 64),
            chunk_size: u32_at(b, 68),
            chunk_count: u32_at(b, 72),
            compression_algo: u32_at(b, 76),
            digest_algo: u32_at(b, 80),
            features: BlobFeatures::from_bits(u32_at(b, 84)),
            compressed_size: u64_at(b, 88),
            uncompressed_size: u64_at(b, 96),
            blob_toc_size: u32_at(b, 104),
            ci_compressor: u32_at(b, 108),
            ci_offset: u64_at(b, 112),
            ci_compressed_size: u64_at(b, 120),
            ci_uncompressed_size: u64_at(b, 128),
            blob_toc_digest: array(b, 136),
            blob_meta_digest: array(b, 168),
            blob_meta_size: u64_at(b, 200),
            cipher_iv: array(b, 208),
            cipher_algo: u32_at(b, 216),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, 0, &self.blob_id);
        put_u32(&mut b, 64, self.blob_index);
        put_u32(&mut b, 68, self.chunk_size);
        put_u32(&mut b, 72, self.chunk_count);
        put_u32(&mut b, 76, self.compression_algo);
        put_u32(&mut b, 80, self.digest_algo);
        put_u32(&mut b, 84, self.features.bits());
        put_u64(&mut b, 88, self.compressed_size);
        put_u64(&mut b, 96, self.uncompressed_size);
        put_u32(&mut b, 104, self.blob_toc_size);
        put_u32(&mut b, 108, self.ci_compressor);
        put_u64(&mut b, 112, self.ci_offset);
        put_u64(&mut b, 120, self.ci_compressed_size);
        put_u64(&mut b, 128, self.ci_uncompressed_size);
        put(&mut b, 136, &self.blob_toc_digest);
        put(&mut b, 168, &self.blob_meta_digest);
        put_u64(&mut b, 200, self.blob_meta_size);
        put(&mut b, 208, &self.cipher_iv);
        put_u32(&mut b, 216, self.cipher_algo);
        b
    }

    /// The blob id as text (the bytes before the first NUL).
    pub fn blob_id(&self) -> Result<&str, FormatError> {
        id_str(&self.blob_id, Self::WHAT, "blob_id")
    }

    /// Sets the blob id; fails if it is longer than 64 bytes or contains NUL.
    pub fn set_blob_id(&mut self, id: &str) -> Result<(), FormatError> {
        self.blob_id = id_bytes(id, Self::WHAT)?;
        Ok(())
    }

    /// The chunk data compressor.
    pub fn compressor(&self) -> Result<Compressor, FormatError> {
        Compressor::try_from(self.compression_algo)
    }

    /// The chunk digest algorithm.
    pub fn digester(&self) -> Result<Digester, FormatError> {
        Digester::try_from(self.digest_algo)
    }

    /// The blob.meta chunk info array compressor.
    pub fn ci_compressor(&self) -> Result<Compressor, FormatError> {
        Compressor::try_from(self.ci_compressor)
    }

    /// Checks the entry at `position` in the blob table of an image whose extended superblock
    /// has `chunk_size` and `flags` (Nydus `RafsV6Blob::validate`).
    pub fn validate(
        &self,
        position: u32,
        chunk_size: u32,
        flags: RafsSuperFlags,
    ) -> Result<(), FormatError> {
        let what = Self::WHAT;
        if self.blob_id()?.is_empty() {
            return Err(FormatError::field(what, "blob_id", 0, 0u8, "is empty"));
        }
        if self.blob_index != position {
            return Err(FormatError::field(
                what,
                "blob_index",
                64,
                self.blob_index,
                format!("must equal the entry's position {position}"),
            ));
        }
        if self.chunk_size != chunk_size {
            return Err(FormatError::field(
                what,
                "chunk_size",
                68,
                self.chunk_size,
                format!("must equal the superblock chunk size {chunk_size:#x}"),
            ));
        }
        if self.chunk_count > RAFS_MAX_CHUNKS_PER_BLOB {
            return Err(FormatError::field(
                what,
                "chunk_count",
                72,
                self.chunk_count,
                "more than 2^24 chunks",
            ));
        }
        if self.compressor().is_err() {
            return Err(FormatError::field(
                what,
                "compression_algo",
                76,
                self.compression_algo,
                "unknown compressor",
            ));
        }
        if self.digester().is_err() {
            return Err(FormatError::field(
                what,
                "digest_algo",
                80,
                self.digest_algo,
                "unknown digest algorithm",
            ));
        }
        let features = self.features;
        if features.incompat_bits() != 0 {
            return Err(FormatError::field(
                what,
                "features",
                84,
                features.bits(),
                "has incompatible feature bits (0xf000)",
            ));
        }
        if features.contains(BlobFeatures::V5_NO_EXT_BLOB_TABLE) {
            return Err(FormatError::field(
                what,
                "features",
                84,
                features.bits(),
                "has the internal V5_NO_EXT_BLOB_TABLE bit",
            ));
        }
        let tarfs = flags.contains(RafsSuperFlags::TARTFS_MODE);
        match (features.contains(BlobFeatures::ALIGNED), tarfs) {
            (false, false) => {
                return Err(FormatError::field(
                    what,
                    "features",
                    84,
                    features.bits(),
                    "lacks ALIGNED",
                ))
            }
            (true, true) => {
                return Err(FormatError::field(
                    what,
                    "features",
                    84,
                    features.bits(),
                    "has ALIGNED in tarfs mode",
                ))
            }
            _ => {}
        }
        if self.compressed_size > RAFS_MAX_BLOB_COMPRESSED_SIZE {
            return Err(FormatError::field(
                what,
                "compressed_size",
                88,
                self.compressed_size,
                "larger than 2^40",
            ));
        }
        if self.uncompressed_size > RAFS_MAX_BLOB_UNCOMPRESSED_SIZE {
            return Err(FormatError::field(
                what,
                "uncompressed_size",
                96,
                self.uncompressed_size,
                "larger than 2^44",
            ));
        }
        if self.ci_compressor().is_err() {
            return Err(FormatError::field(
                what,
                "ci_compressor",
                108,
                self.ci_compressor,
                "unknown compressor",
            ));
        }
        if !tarfs && !features.contains(BlobFeatures::TARFS) {
            self.validate_ci_size()?;
        }
        if self.cipher_algo > MAX_CIPHER_ALGO {
            return Err(FormatError::field(
                what,
                "cipher_algo",
                216,
                self.cipher_algo,
                "unknown cipher",
            ));
        }
        Ok(())
    }

    /// `ci_uncompressed_size` against `chunk_count` and the chunk info version.
    fn validate_ci_size(&self) -> Result<(), FormatError> {
        let features = self.features;
        let entry = if features.contains(BlobFeatures::CHUNK_INFO_V2) {
            24
        } else {
            16
        };
        let expected = u64::from(self.chunk_count) * entry;
        let with_contexts =
            features.intersects(BlobFeatures::BATCH | BlobFeatures::ZRAN | BlobFeatures::ENCRYPTED);
        let ok = if with_contexts {
            self.ci_uncompressed_size >= expected
        } else {
            self.ci_uncompressed_size == expected
        };
        if ok {
            return Ok(());
        }
        let relation = if with_contexts { "at least" } else { "exactly" };
        Err(FormatError::field(
            Self::WHAT,
            "ci_uncompressed_size",
            128,
            self.ci_uncompressed_size,
            format!(
                "must be {relation} {expected} ({} chunks of {entry} bytes)",
                self.chunk_count
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u32 = 0x10_0000;

    /// A superblock as nydus-image writes it for a 3-blob image.
    fn good_sb() -> SuperBlock {
        SuperBlock {
            root_nid: 128,
            inos: 42,
            blocks: 1000,
            meta_blkaddr: 2,
            extra_devices: 3,
            ..SuperBlock::new(EROFS_BLOCK_BITS_12)
        }
    }

    fn good_ext() -> SuperBlockExt {
        SuperBlockExt {
            flags: RafsSuperFlags::COMPRESSION_ZSTD
                | RafsSuperFlags::HASH_BLAKE3
                | RafsSuperFlags::EXPLICIT_UID_GID,
            blob_table_offset: 4096,
            blob_table_size: 3 * 256,
            chunk_size: MIB,
            chunk_table_offset: 3 * 4096,
            chunk_table_size: 10 * 80,
            prefetch_table_offset: 4096 + 768,
            prefetch_table_size: 8,
        }
    }

    fn good_blob(position: u32) -> BlobEntry {
        let mut b = BlobEntry {
            blob_index: position,
            chunk_size: MIB,
            chunk_count: 10,
            compression_algo: Compressor::Zstd.into(),
            digest_algo: Digester::Blake3.into(),
            features: BlobFeatures::ALIGNED
                | BlobFeatures::INLINED_FS_META
                | BlobFeatures::HAS_TOC
                | BlobFeatures::CAP_TAR_TOC,
            compressed_size: 12345,
            uncompressed_size: 10 * u64::from(MIB),
            ci_compressor: Compressor::Zstd.into(),
            ci_uncompressed_size: 10 * 16,
            ..BlobEntry::default()
        };
        b.set_blob_id(&"ab".repeat(32)).unwrap();
        b
    }

    fn field_of(r: Result<(), FormatError>) -> &'static str {
        r.expect_err("should be rejected")
            .field_name()
            .expect("error names a field")
    }

    #[test]
    fn superblock_matches_hand_written_bytes() {
        let mut bytes = [0u8; 128];
        bytes[0..4].copy_from_slice(&[0xe2, 0xe1, 0xf5, 0xe0]); // s_magic
        bytes[8..12].copy_from_slice(&[0, 0, 0, 0x40]); // s_feature_compat
        bytes[12] = 12; // s_blkszbits
        bytes[14..16].copy_from_slice(&[0x80, 0]); // s_root_nid 128
        bytes[16..24].copy_from_slice(&[42, 0, 0, 0, 0, 0, 0, 0]); // s_inos
        bytes[36..40].copy_from_slice(&[0xe8, 0x03, 0, 0]); // s_blocks 1000
        bytes[40..44].copy_from_slice(&[2, 0, 0, 0]); // s_meta_blkaddr
        bytes[80..84].copy_from_slice(&[0x0c, 0, 0, 0]); // s_feature_incompat
        bytes[86..88].copy_from_slice(&[3, 0]); // s_extra_devices
        bytes[88..90].copy_from_slice(&[11, 0]); // s_devt_slotoff

        let sb = SuperBlock::decode(&bytes).unwrap();
        assert_eq!(sb, good_sb());
        assert_eq!(sb.to_bytes(), bytes);
        sb.validate(4 * 4096).unwrap();
        assert_eq!(sb.devtable_end(), 1408 + 3 * 128);
        assert_eq!(sb.nid_to_offset(128), Some(2 * 4096 + 128 * 32));
    }

    #[test]
    fn superblock_every_field_has_its_offset() {
        let sb = SuperBlock {
            magic: 0x0403_0201,
            checksum: 0x0807_0605,
            feature_compat: 0x0c0b_0a09,
            blkszbits: 0x0d,
            extslots: 0x0e,
            root_nid: 0x100f,
            inos: 0x1817_1615_1413_1211,
            build_time: 0x201f_1e1d_1c1b_1a19,
            build_time_nsec: 0x2423_2221,
            blocks: 0x2827_2625,
            meta_blkaddr: 0x2c2b_2a29,
            xattr_blkaddr: 0x302f_2e2d,
            uuid: core::array::from_fn(|i| 0x31 + i as u8),
            volume_name: core::array::from_fn(|i| 0x41 + i as u8),
            feature_incompat: 0x5453_5251,
            u: 0x5655,
            extra_devices: 0x5857,
            devt_slotoff: 0x5a59,
        };
        let b = sb.to_bytes();
        let expected: Vec<u8> = (1..=0x5au8).chain(std::iter::repeat_n(0, 38)).collect();
        assert_eq!(b.as_slice(), expected.as_slice());
    }

    #[test]
    fn superblock_validation_names_each_bad_field() {
        let meta = 4 * 4096;
        good_sb().validate(meta).unwrap();
        let with = |f: fn(&mut SuperBlock)| {
            let mut sb = good_sb();
            f(&mut sb);
            sb
        };
        let cases: [(SuperBlock, &str); 11] = [
            (with(|s| s.magic = 0x5241_4653), "magic"),
            (with(|s| s.checksum = 1), "s_checksum"),
            (
                with(|s| s.feature_compat = EROFS_FEATURE_COMPAT_SB_CHKSUM),
                "s_feature_compat",
            ),
            (with(|s| s.blkszbits = 10), "s_blkszbits"),
            (with(|s| s.extslots = 1), "s_extslots"),
            (with(|s| s.inos = 0), "s_inos"),
            (with(|s| s.feature_incompat = 0x4), "s_feature_incompat"),
            (with(|s| s.feature_incompat = 0x1c), "s_feature_incompat"),
            (with(|s| s.u = 1), "s_u"),
            (with(|s| s.devt_slotoff = 12), "s_devt_slotoff"),
            (with(|s| s.meta_blkaddr = 4), "s_meta_blkaddr"),
        ];
        for (sb, field) in cases {
            assert_eq!(field_of(sb.validate(meta)), field, "{sb:?}");
        }
    }
    #[test]
    fn superblock_validation_checks_bootstrap_size() {
        let sb = SuperBlock {
            meta_blkaddr: 0,
            ..good_sb()
        };
        for bad in [0, 2048, 4096 + 512, 4097] {
            assert!(matches!(
                sb.validate(bad),
                Err(FormatError::Invalid {
                    what: "bootstrap",
                    ..
                })
            ));
        }
        sb.validate(4096).unwrap();
        // tarfs: 512-byte blocks, still at least 4 KiB.
        let tarfs = SuperBlock {
            blkszbits: EROFS_BLOCK_BITS_9,
            ..sb
        };
        tarfs.validate(4096 + 512).unwrap();
        assert!(tarfs.validate(2048).is_err());
        assert!(tarfs.validate(4096 + 100).is_err());
    }

    #[test]
    fn ext_superblock_round_trips_at_reference_offsets() {
        let ext = good_ext();
        let b = ext.to_bytes();
        assert_eq!(&b[0..8], &0x94u64.to_le_bytes());
        assert_eq!(&b[8..16], &4096u64.to_le_bytes());
        assert_eq!(&b[16..20], &768u32.to_le_bytes());
        assert_eq!(&b[20..24], &MIB.to_le_bytes());
        assert_eq!(&b[24..32], &(3 * 4096u64).to_le_bytes());
        assert_eq!(&b[32..40], &800u64.to_le_bytes());
        assert_eq!(&b[40..48], &(4096u64 + 768).to_le_bytes());
        assert_eq!(&b[48..52], &8u32.to_le_bytes());
        assert!(b[52..].iter().all(|&x| x == 0));
        assert_eq!(SuperBlockExt::decode(&b), Ok(ext));
        assert_eq!(ext.blob_count(), 3);
        assert_eq!(ext.chunk_count(), 10);
    }

    #[test]
    fn ext_superblock_validation_names_each_bad_field() {
        let sb = good_sb();
        let meta = 4 * 4096;
        good_ext().validate(&sb, meta).unwrap();
        let with = |f: fn(&mut SuperBlockExt)| {
            let mut ext = good_ext();
            f(&mut ext);
            ext
        };
        use RafsSuperFlags as F;
        let cases: [(SuperBlockExt, &str); 19] = [
            (with(|e| e.flags = F::HASH_BLAKE3), "s_flags"),
            (
                with(|e| e.flags = F::HASH_BLAKE3 | F::COMPRESSION_ZSTD | F::COMPRESSION_LZ4),
                "s_flags",
            ),
            (with(|e| e.flags = F::COMPRESSION_NONE), "s_flags"),
            (
                with(|e| e.flags = F::COMPRESSION_NONE | F::HASH_BLAKE3 | F::HASH_SHA256),
                "s_flags",
            ),
            (with(|e| e.chunk_size = 0x800), "s_chunk_size"),
            (with(|e| e.chunk_size = 3 * MIB), "s_chunk_size"),
            (with(|e| e.chunk_size = 32 * MIB), "s_chunk_size"),
            (with(|e| e.blob_table_size = 300), "s_blob_table_size"),
            (with(|e| e.blob_table_size = 256 * 256), "s_blob_table_size"),
            (
                with(|e| e.blob_table_offset = 4096 + 8),
                "s_blob_table_offset",
            ),
            (with(|e| e.blob_table_offset = 0), "s_blob_table_offset"),
            (
                with(|e| e.blob_table_offset = 4 * 4096),
                "s_blob_table_offset",
            ),
            (
                with(|e| e.blob_table_offset = u64::MAX - 4095),
                "s_blob_table_offset",
            ),
            (with(|e| e.chunk_table_size = 81), "s_chunk_table_size"),
            (
                with(|e| e.chunk_table_offset = 3 * 4096 + 80),
                "s_chunk_table_offset",
            ),
            (with(|e| e.chunk_table_offset = 0), "s_chunk_table_offset"),
            (
                with(|e| e.chunk_table_size = 80 * 52),
                "s_chunk_table_offset",
            ),
            (with(|e| e.prefetch_table_size = 6), "s_prefetch_table_size"),
            (
                with(|e| e.prefetch_table_offset = 4 * 4096 - 4),
                "s_prefetch_table_offset",
            ),
        ];
        for (ext, field) in cases {
            assert_eq!(field_of(ext.validate(&sb, meta)), field, "{ext:?}");
        }
        // A 32-device table ends at 1408 + 4096 = 5504: a blob table at 4096 overlaps it.
        let many = SuperBlock {
            extra_devices: 32,
            ..sb
        };
        assert_eq!(
            field_of(good_ext().validate(&many, meta)),
            "s_blob_table_offset"
        );
        // No chunk table and no prefetch table at all is fine (tarfs).
        with(|e| {
            e.chunk_table_offset = 0;
            e.chunk_table_size = 0;
            e.prefetch_table_offset = 0;
            e.prefetch_table_size = 0;
        })
        .validate(&sb, meta)
        .unwrap();
    }
    #[test]
    fn device_slot_layout_and_id() {
        let mut d = DeviceSlot {
            blocks: 0x0102_0304,
            mapped_blkaddr: 0x0506_0708,
            ..DeviceSlot::default()
        };
        let id = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        d.set_blob_id(id).unwrap();
        let b = d.to_bytes();
        assert_eq!(&b[..64], id.as_bytes());
        assert_eq!(&b[64..72], &[4, 3, 2, 1, 8, 7, 6, 5]);
        assert!(b[72..].iter().all(|&x| x == 0));
        let back = DeviceSlot::decode(&b).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.blob_id(), Ok(id));
        d.set_blob_id("short").unwrap();
        assert_eq!(d.blob_id(), Ok("short"));
        assert!(d.set_blob_id(&"x".repeat(65)).is_err());
        assert!(d.set_blob_id("a\0b").is_err());
        d.blob_id[0] = 0xff;
        assert_eq!(d.blob_id().unwrap_err().field_name(), Some("blob_id"));
    }

    #[test]
    fn blob_entry_round_trips_at_reference_offsets() {
        let mut e = good_blob(2);
        e.blob_toc_size = 0x1234;
        e.ci_offset = 0x1111_2222;
        e.ci_compressed_size = 0x3333;
        e.blob_toc_digest = [0x5a; 32];
        e.blob_meta_digest = [0xa5; 32];
        e.blob_meta_size = 0x0102_0304_0506_0708;
        e.cipher_iv = [9; 8];
        e.cipher_algo = 1;
        let b = e.to_bytes();
        assert_eq!(&b[..64], "ab".repeat(32).as_bytes());
        assert_eq!(&b[64..68], &2u32.to_le_bytes());
        assert_eq!(&b[68..72], &MIB.to_le_bytes());
        assert_eq!(&b[72..76], &10u32.to_le_bytes());
        assert_eq!(&b[76..80], &3u32.to_le_bytes());
        assert_eq!(&b[80..84], &0u32.to_le_bytes());
        assert_eq!(&b[84..88], &0x6000_0003u32.to_le_bytes());
        assert_eq!(&b[88..96], &12345u64.to_le_bytes());
        assert_eq!(&b[96..104], &(10 * u64::from(MIB)).to_le_bytes());
        assert_eq!(&b[104..108], &0x1234u32.to_le_bytes());
        assert_eq!(&b[108..112], &3u32.to_le_bytes());
        assert_eq!(&b[112..120], &0x1111_2222u64.to_le_bytes());
        assert_eq!(&b[120..128], &0x3333u64.to_le_bytes());
        assert_eq!(&b[128..136], &160u64.to_le_bytes());
        assert_eq!(&b[136..168], &[0x5a; 32]);
        assert_eq!(&b[168..200], &[0xa5; 32]);
        assert_eq!(&b[200..208], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[208..216], &[9; 8]);
        assert_eq!(&b[216..220], &1u32.to_le_bytes());
        assert!(b[220..].iter().all(|&x| x == 0));
        assert_eq!(BlobEntry::decode(&b), Ok(e));
        assert_eq!(e.compressor(), Ok(Compressor::Zstd));
        assert_eq!(e.digester(), Ok(Digester::Blake3));
    }

    #[test]
    fn blob_entry_validation_names_each_bad_field() {
        let flags = good_ext().flags;
        good_blob(1).validate(1, MIB, flags).unwrap();
        let with = |f: fn(&mut BlobEntry)| {
            let mut b = good_blob(1);
            f(&mut b);
            b
        };
        let cases: Vec<(BlobEntry, &str)> = vec![
            (with(|b| b.blob_id = [0; 64]), "blob_id"),
            (with(|b| b.blob_id[3] = 0xc3), "blob_id"),
            (with(|b| b.blob_index = 0), "blob_index"),
            (with(|b| b.chunk_size = 4 * MIB), "chunk_size"),
            (
                with(|b| {
                    b.chunk_count = (1 << 24) + 1;
                    b.ci_uncompressed_size = u64::from(b.chunk_count) * 16;
                }),
                "chunk_count",
            ),
            (with(|b| b.compression_algo = 4), "compression_algo"),
            (with(|b| b.digest_algo = 2), "digest_algo"),
            (
                with(|b| b.features.insert(BlobFeatures::from_bits(0x1000))),
                "features",
            ),
            (
                with(|b| b.features.insert(BlobFeatures::V5_NO_EXT_BLOB_TABLE)),
                "features",
            ),
            (
                with(|b| b.features.remove(BlobFeatures::ALIGNED)),
                "features",
            ),
            (
                with(|b| b.compressed_size = (1 << 40) + 1),
                "compressed_size",
            ),
            (
                with(|b| b.uncompressed_size = (1 << 44) + 1),
                "uncompressed_size",
            ),
            (with(|b| b.ci_compressor = 9), "ci_compressor"),
            (
                with(|b| b.ci_uncompressed_size = 10 * 24),
                "ci_uncompressed_size",
            ),
            (
                with(|b| b.features.insert(BlobFeatures::CHUNK_INFO_V2)),
                "ci_uncompressed_size",
            ),
            (
                with(|b| {
                    b.features
                        .insert(BlobFeatures::CHUNK_INFO_V2 | BlobFeatures::BATCH);
                    b.ci_uncompressed_size = 10 * 24 - 1;
                }),
                "ci_uncompressed_size",
            ),
            (with(|b| b.cipher_algo = 4), "cipher_algo"),
        ];
        for (blob, field) in cases {
            assert_eq!(field_of(blob.validate(1, MIB, flags)), field, "{blob:?}");
        }

        // Contexts (batch, zran, encryption) may follow the CI v2 array.
        with(|b| {
            b.features
                .insert(BlobFeatures::CHUNK_INFO_V2 | BlobFeatures::ZRAN);
            b.ci_uncompressed_size = 10 * 24 + 4096;
        })
        .validate(1, MIB, flags)
        .unwrap();
        with(|b| {
            b.features.insert(BlobFeatures::CHUNK_INFO_V2);
            b.ci_uncompressed_size = 10 * 24;
        })
        .validate(1, MIB, flags)
        .unwrap();

        // Tarfs: ALIGNED must be clear.
        let tarfs = RafsSuperFlags::COMPRESSION_NONE
            | RafsSuperFlags::HASH_SHA256
            | RafsSuperFlags::TARTFS_MODE;
        let tar_blob = with(|b| {
            b.features = BlobFeatures::TARFS;
            b.compression_algo = Compressor::None.into();
            b.digest_algo = Digester::Sha256.into();
            b.ci_uncompressed_size = 0;
        });
        tar_blob.validate(1, MIB, tarfs).unwrap();
        let aligned_tar = BlobEntry {
            features: BlobFeatures::TARFS | BlobFeatures::ALIGNED,
            ..tar_blob
        };
        assert_eq!(field_of(aligned_tar.validate(1, MIB, tarfs)), "features");
    }

    #[test]
    fn truncated_input_is_an_error() {
        let cases: [(Result<(), FormatError>, &str, usize); 4] = [
            (SuperBlock::decode(&[0; 127]).map(drop), "SuperBlock", 128),
            (
                SuperBlockExt::decode(&[0; 255]).map(drop),
                "SuperBlockExt",
                256,
            ),
            (DeviceSlot::decode(&[0; 100]).map(drop), "DeviceSlot", 128),
            (BlobEntry::decode(&[]).map(drop), "BlobEntry", 256),
        ];
        for (r, what, need) in cases {
            match r {
                Err(FormatError::Truncated {
                    what: w, need: n, ..
                }) => {
                    assert_eq!((w, n), (what, need));
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn nid_arithmetic() {
        assert_eq!(nid_to_offset(1, 12, 0), Some(4096));
        assert_eq!(nid_to_offset(1, 12, 3), Some(4096 + 96));
        assert_eq!(nid_to_offset(8, 9, 1), Some(4096 + 32));
        assert_eq!(nid_to_offset(u32::MAX, 12, u64::MAX), None);
        assert_eq!(nid_to_offset(1, 200, 0), None);
        assert_eq!(offset_to_nid(1, 12, 4096 + 96), Some(3));
        assert_eq!(offset_to_nid(1, 12, 4096 + 97), None);
        assert_eq!(offset_to_nid(1, 12, 4095), None);
        assert_eq!(offset_to_nid(1, 64, 4096), None);
    }

    #[test]
    fn prefetch_table() {
        let t = [1, 0, 0, 0, 0x80, 0, 0, 0];
        assert_eq!(prefetch_nids(&t).unwrap().collect::<Vec<_>>(), [1, 128]);
        assert!(prefetch_nids(&t[..7]).is_err());
        assert_eq!(prefetch_nids(&[]).unwrap().count(), 0);
    }

    fn any_superblock() -> impl Strategy<Value = SuperBlock> {
        (
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u8>(),
                any::<u8>(),
                any::<u16>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
            ),
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                any::<u32>(),
                any::<u16>(),
                any::<u16>(),
                any::<u16>(),
            ),
        )
            .prop_map(|(a, b)| SuperBlock {
                magic: a.0,
                checksum: a.1,
                feature_compat: a.2,
                blkszbits: a.3,
                extslots: a.4,
                root_nid: a.5,
                inos: a.6,
                build_time: a.7,
                build_time_nsec: a.8,
                blocks: b.0,
                meta_blkaddr: b.1,
                xattr_blkaddr: b.2,
                uuid: b.3,
                volume_name: b.4,
                feature_incompat: b.5,
                u: b.6,
                extra_devices: b.7,
                devt_slotoff: b.8,
            })
    }

    fn any_ext() -> impl Strategy<Value = SuperBlockExt> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
        )
            .prop_map(|t| SuperBlockExt {
                flags: RafsSuperFlags::from_bits(t.0),
                blob_table_offset: t.1,
                blob_table_size: t.2,
                chunk_size: t.3,
                chunk_table_offset: t.4,
                chunk_table_size: t.5,
                prefetch_table_offset: t.6,
                prefetch_table_size: t.7,
            })
    }

    fn any_blob() -> impl Strategy<Value = BlobEntry> {
        (
            (
                any::<[u8; 64]>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
            ),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<[u8; 32]>(),
                any::<[u8; 32]>(),
                any::<u64>(),
                any::<[u8; 8]>(),
                any::<u32>(),
            ),
        )
            .prop_map(|(a, b)| BlobEntry {
                blob_id: a.0,
                blob_index: a.1,
                chunk_size: a.2,
                chunk_count: a.3,
                compression_algo: a.4,
                digest_algo: a.5,
                features: BlobFeatures::from_bits(a.6),
                compressed_size: a.7,
                uncompressed_size: a.8,
                blob_toc_size: a.9,
                ci_compressor: b.0,
                ci_offset: b.1,
                ci_compressed_size: b.2,
                ci_uncompressed_size: b.3,
                blob_toc_digest: b.4,
                blob_meta_digest: b.5,
                blob_meta_size: b.6,
                cipher_iv: b.7,
                cipher_algo: b.8,
            })
    }

    proptest! {
        #[test]
        fn superblock_round_trips(sb in any_superblock()) {
            prop_assert_eq!(SuperBlock::decode(&sb.to_bytes()), Ok(sb));
        }

        #[test]
        fn ext_superblock_round_trips(ext in any_ext()) {
            prop_assert_eq!(SuperBlockExt::decode(&ext.to_bytes()), Ok(ext));
        }

        #[test]
        fn device_slot_round_trips(id in any::<[u8; 64]>(), blocks in any::<u32>(), addr in any::<u32>()) {
            let d = DeviceSlot { blob_id: id, blocks, mapped_blkaddr: addr };
            prop_assert_eq!(DeviceSlot::decode(&d.to_bytes()), Ok(d));
        }

        #[test]
        fn blob_entry_round_trips(e in any_blob()) {
            prop_assert_eq!(BlobEntry::decode(&e.to_bytes()), Ok(e));
        }

        #[test]
        fn decoding_and_validating_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            meta_size in any::<u64>(),
            position in any::<u32>(),
        ) {
            if let Ok(sb) = SuperBlock::decode(&bytes) {
                let _ = sb.validate(meta_size);
                prop_assert_eq!(SuperBlock::decode(&sb.to_bytes()), Ok(sb));
                if let Ok(ext) = SuperBlockExt::decode(&bytes) {
                    let _ = ext.validate(&sb, meta_size);
                }
            }
            if let Ok(d) = DeviceSlot::decode(&bytes) {
                let _ = d.blob_id();
            }
            if let Ok(e) = BlobEntry::decode(&bytes) {
                let _ = e.validate(position, e.chunk_size, RafsSuperFlags::from_bits(meta_size));
                prop_assert_eq!(BlobEntry::decode(&e.to_bytes()), Ok(e));
            }
            let _ = prefetch_nids(&bytes).map(|it| it.count());
        }

        #[test]
        fn valid_superblocks_pass_validation(
            meta_blocks in 1u64..1 << 20,
            inos in 1u64..,
            root_nid in any::<u16>(),
            devices in any::<u16>(),
        ) {
            let sb = SuperBlock {
                root_nid,
                inos,
                extra_devices: devices,
                meta_blkaddr: (meta_blocks - 1) as u32,
                ..SuperBlock::new(EROFS_BLOCK_BITS_12)
            };
            prop_assert_eq!(sb.validate(meta_blocks * 4096), Ok(()));
        }

        #[test]
        fn nid_offset_inverse(meta_blkaddr in any::<u32>(), bits in prop_oneof![Just(9u8), Just(12u8)], nid in 0u64..1 << 40) {
            let off = nid_to_offset(meta_blkaddr, bits, nid).unwrap();
            prop_assert_eq!(offset_to_nid(meta_blkaddr, bits, off), Some(nid));
        }
    }
}
