//! blob.meta: the chunk compression information ("CI") array of a data blob and its 4096-byte
//! header (Nydus `storage/src/meta`).
//!
//! In a data blob the CI array is stored compressed (with the header's `s_ci_compressor`) and is
//! immediately followed by the plaintext header:
//!
//! ```text
//! ... chunk data | CI array (compressed) | BlobMetaHeader (4096 B) | ...
//!                ^ s_ci_offset           ^ s_ci_offset + s_ci_compressed_size
//! ```
//!
//! The uncompressed CI data is `s_ci_entries` entries ([`ChunkInfoV1`], 16 bytes, or with
//! [`BlobFeatures::CHUNK_INFO_V2`] [`ChunkInfoV2`], 24 bytes), followed for ZRAN and batch blobs
//! by their inflate contexts (40 bytes each) and, for ZRAN, the zlib dictionaries. A reader's
//! local cache file `<blob_id>.blob.meta` holds the uncompressed CI data padded to 4 KiB and then
//! the header ([`BlobMeta::parse_cache_file`]).
//!
//! Encrypted blobs store the CI array *and* the header encrypted; only the cache file holds them
//! in plaintext, so [`BlobMeta::parse_from_blob`] cannot read such blobs.
//!
//! [`BlobMetaChunk`] is the version-independent view of one entry. Decoding an entry only needs
//! its bytes; the checks that need the header (feature bits, context indexes) run in
//! [`BlobMeta::parse`], and the ones that need the blob's sizes in [`BlobMeta::validate_against`].

use std::fmt;
use std::io::Read;

use crate::chunk::{RAFS_MAX_CHUNKS_PER_BLOB, RAFS_MAX_CHUNK_SIZE};
use crate::codec::{self, CodecError};
use crate::le::{fixed, put, put_u32, put_u64, u32_at, u64_at};
use crate::{BlobChunkFlags, BlobFeatures, ChunkInfo, Compressor, FormatError};

/// `s_magic` and `s_magic2` of a blob.meta header.
pub const BLOB_META_MAGIC: u32 = 0xB10B_B10B;
/// Size of the blob.meta header.
pub const BLOB_META_HEADER_SIZE: usize = 4096;
/// Largest uncompressed CI data this crate accepts (1 GiB). Nydus itself bounds plain arrays by
/// the chunk count (at most 384 MiB for 2^24 v2 entries) but not ZRAN/batch context tables.
pub const BLOB_META_MAX_CI_SIZE: u64 = 1 << 30;
/// Size of one ZRAN inflate context (`ZranInflateContext`).
pub const ZRAN_CONTEXT_SIZE: usize = 40;
/// Size of one batch inflate context (`BatchInflateContext`).
pub const BATCH_CONTEXT_SIZE: usize = 40;

/// Largest compressed offset a CI entry can hold (40 bits).
const COMP_OFFSET_MASK: u64 = 0xff_ffff_ffff;
/// Largest `size - 1` a CI entry can hold (24 bits), and the largest v2 compressed size.
const SIZE_MASK: u64 = 0xff_ffff;
/// v1 uncompressed offset bits (12..44; 4 KiB aligned).
const V1_UNCOMP_OFFSET_MASK: u64 = 0xfff_ffff_f000;

/// `value` rounded up to a multiple of 4 KiB, `None` on overflow.
fn round_up_4k(value: u64) -> Option<u64> {
    value.checked_add(0xfff).map(|v| v & !0xfff)
}

/// The blob.meta header (Nydus `BlobCompressionContextHeader`, 4096 bytes).
///
/// The reserved bytes from 60 to 4092 are written as zero and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobMetaHeader {
    /// @0 `s_magic`: [`BLOB_META_MAGIC`].
    pub magic: u32,
    /// @4 `s_features`: the blob's features.
    pub features: BlobFeatures,
    /// @8 `s_ci_compressor`: [`Compressor`] code of the stored CI array.
    pub ci_compressor: u32,
    /// @12 `s_ci_entries`: number of CI entries (the blob's chunk count).
    pub ci_entries: u32,
    /// @16 `s_ci_offset`: offset of the compressed CI array in the blob.
    pub ci_offset: u64,
    /// @24 `s_ci_compressed_size`: size of the stored CI array.
    pub ci_compressed_size: u64,
    /// @32 `s_ci_uncompressed_size`: size of the uncompressed CI data, contexts included.
    pub ci_uncompressed_size: u64,
    /// @40 `s_ci_zran_offset`: offset of the ZRAN or batch context table inside the
    /// uncompressed CI data.
    pub ci_zran_offset: u64,
    /// @48 `s_ci_zran_size`: size of the context table plus (ZRAN) the dictionaries.
    pub ci_zran_size: u64,
    /// @56 `s_ci_zran_count`: number of ZRAN or batch contexts.
    pub ci_zran_count: u32,
    /// @4092 `s_magic2`: [`BLOB_META_MAGIC`].
    pub magic2: u32,
}

impl BlobMetaHeader {
    /// Encoded size.
    pub const SIZE: usize = BLOB_META_HEADER_SIZE;
    const WHAT: &'static str = "BlobMetaHeader";

    /// A header for a writer: both magics set, no ZRAN or batch contexts.
    pub fn new(
        features: BlobFeatures,
        ci_compressor: Compressor,
        ci_entries: u32,
        ci_offset: u64,
        ci_compressed_size: u64,
        ci_uncompressed_size: u64,
    ) -> Self {
        Self {
            magic: BLOB_META_MAGIC,
            features,
            ci_compressor: ci_compressor.into(),
            ci_entries,
            ci_offset,
            ci_compressed_size,
            ci_uncompressed_size,
            ci_zran_offset: 0,
            ci_zran_size: 0,
            ci_zran_count: 0,
            magic2: BLOB_META_MAGIC,
        }
    }

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, Self::WHAT)?;
        Ok(Self {
            magic: u32_at(b, 0),
            features: BlobFeatures::from_bits(u32_at(b, 4)),
            ci_compressor: u32_at(b, 8),
            ci_entries: u32_at(b, 12),
            ci_offset: u64_at(b, 16),
            ci_compressed_size: u64_at(b, 24),
            ci_uncompressed_size: u64_at(b, 32),
            ci_zran_offset: u64_at(b, 40),
            ci_zran_size: u64_at(b, 48),
            ci_zran_count: u32_at(b, 56),
            magic2: u32_at(b, 4092),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u32(&mut b, 0, self.magic);
        put_u32(&mut b, 4, self.features.bits());
        put_u32(&mut b, 8, self.ci_compressor);
        put_u32(&mut b, 12, self.ci_entries);
        put_u64(&mut b, 16, self.ci_offset);
        put_u64(&mut b, 24, self.ci_compressed_size);
        put_u64(&mut b, 32, self.ci_uncompressed_size);
        put_u64(&mut b, 40, self.ci_zran_offset);
        put_u64(&mut b, 48, self.ci_zran_size);
        put_u32(&mut b, 56, self.ci_zran_count);
        put_u32(&mut b, 4092, self.magic2);
        b
    }

    /// The CI array compressor.
    pub fn compressor(&self) -> Result<Compressor, FormatError> {
        Compressor::try_from(self.ci_compressor)
    }

    /// Whether the entries are 24-byte [`ChunkInfoV2`] (else 16-byte [`ChunkInfoV1`]).
    pub fn is_v2(&self) -> bool {
        self.features.contains(BlobFeatures::CHUNK_INFO_V2)
    }

    /// Size of one CI entry: 16 or 24.
    pub fn entry_size(&self) -> usize {
        if self.is_v2() {
            ChunkInfoV2::SIZE
        } else {
            ChunkInfoV1::SIZE
        }
    }

    /// Whether the CI data carries a ZRAN or batch context table after the entries.
    pub fn has_contexts(&self) -> bool {
        self.features
            .intersects(BlobFeatures::ZRAN | BlobFeatures::BATCH)
    }

    /// Checks the header the way Nydus does when it loads blob.meta
    /// (`BlobCompressionContextInfo::validate_header`), plus bounds of this crate: the CI data is
    /// at most [`BLOB_META_MAX_CI_SIZE`] and its offsets do not overflow.
    pub fn validate(&self) -> Result<(), FormatError> {
        let what = Self::WHAT;
        for (offset, found) in [(0, self.magic), (4092, self.magic2)] {
            if found != BLOB_META_MAGIC {
                return Err(FormatError::BadMagic {
                    what,
                    offset,
                    expected: BLOB_META_MAGIC,
                    found,
                });
            }
        }
        let features = self.features;
        let bad_features =
            |reason: &str| FormatError::field(what, "s_features", 4, features.bits(), reason);
        if features.incompat_bits() != 0 {
            return Err(bad_features("has incompatible feature bits (0xf000)"));
        }
        if features.contains(BlobFeatures::V5_NO_EXT_BLOB_TABLE) {
            return Err(bad_features("has the internal V5_NO_EXT_BLOB_TABLE bit"));
        }
        if features.contains(BlobFeatures::ZRAN | BlobFeatures::BATCH) {
            return Err(bad_features("has both ZRAN and BATCH"));
        }
        if self.has_contexts() && !self.is_v2() {
            return Err(bad_features("has ZRAN or BATCH without CHUNK_INFO_V2"));
        }
        if self.compressor().is_err() {
            return Err(FormatError::field(
                what,
                "s_ci_compressor",
                8,
                self.ci_compressor,
                "unknown compressor",
            ));
        }
        if self.ci_entries == 0 || self.ci_entries > RAFS_MAX_CHUNKS_PER_BLOB {
            return Err(FormatError::field(
                what,
                "s_ci_entries",
                12,
                self.ci_entries,
                "must be 1..=2^24",
            ));
        }
        self.validate_ci_size()?;
        let usize_ = self.ci_uncompressed_size;
        let csize = self.ci_compressed_size;
        if csize > usize_ {
            return Err(FormatError::field(
                what,
                "s_ci_compressed_size",
                24,
                csize,
                format!("larger than s_ci_uncompressed_size {usize_:#x}"),
            ));
        }
        if self.ci_compressor == u32::from(Compressor::None)
            && !features.contains(BlobFeatures::ENCRYPTED)
            && csize != usize_
        {
            return Err(FormatError::field(
                what,
                "s_ci_compressed_size",
                24,
                csize,
                format!("must equal s_ci_uncompressed_size {usize_:#x} when not compressed"),
            ));
        }
        let end = self
            .ci_offset
            .checked_add(csize)
            .and_then(|v| v.checked_add(Self::SIZE as u64));
        if end.is_none() {
            return Err(FormatError::field(
                what,
                "s_ci_offset",
                16,
                self.ci_offset,
                "the CI array and header end beyond 2^64",
            ));
        }
        if self.has_contexts() {
            self.validate_contexts()?;
        }
        Ok(())
    }

    /// `s_ci_uncompressed_size` against the entry count and version.
    fn validate_ci_size(&self) -> Result<(), FormatError> {
        let size = self.ci_uncompressed_size;
        let entry = self.entry_size() as u64;
        let expected = u64::from(self.ci_entries) * entry;
        let at_least = self.has_contexts()
            || (!self.is_v2() && self.features.contains(BlobFeatures::IS_CHUNKDICT_GENERATED));
        let ok = if at_least {
            size >= expected
        } else {
            size == expected
        };
        let reason = if size > BLOB_META_MAX_CI_SIZE {
            format!("larger than {BLOB_META_MAX_CI_SIZE:#x}")
        } else if !ok {
            let relation = if at_least { "at least" } else { "exactly" };
            format!(
                "must be {relation} {expected} ({} entries of {entry} bytes)",
                self.ci_entries
            )
        } else {
            return Ok(());
        };
        Err(FormatError::field(
            Self::WHAT,
            "s_ci_uncompressed_size",
            32,
            size,
            reason,
        ))
    }

    /// The ZRAN/batch context table fields.
    fn validate_contexts(&self) -> Result<(), FormatError> {
        let what = Self::WHAT;
        let entries_end = u64::from(self.ci_entries) * ChunkInfoV2::SIZE as u64;
        if self.ci_zran_offset != entries_end {
            return Err(FormatError::field(
                what,
                "s_ci_zran_offset",
                40,
                self.ci_zran_offset,
                format!("must be {entries_end:#x}, right after the entries"),
            ));
        }
        let end = self.ci_zran_offset.checked_add(self.ci_zran_size);
        if end.is_none_or(|end| end > self.ci_uncompressed_size) {
            return Err(FormatError::field(
                what,
                "s_ci_zran_size",
                48,
                self.ci_zran_size,
                format!(
                    "the context table ends beyond s_ci_uncompressed_size {:#x}",
                    self.ci_uncompressed_size
                ),
            ));
        }
        if self.ci_zran_count > self.ci_entries {
            return Err(FormatError::field(
                what,
                "s_ci_zran_count",
                56,
                self.ci_zran_count,
                format!("more contexts than entries ({})", self.ci_entries),
            ));
        }
        let table = u64::from(self.ci_zran_count) * ZRAN_CONTEXT_SIZE as u64;
        if table > self.ci_zran_size {
            return Err(FormatError::field(
                what,
                "s_ci_zran_count",
                56,
                self.ci_zran_count,
                format!(
                    "{table} bytes of contexts do not fit in s_ci_zran_size {}",
                    self.ci_zran_size
                ),
            ));
        }
        Ok(())
    }
}

/// Flags of a CI entry (the top byte of a [`ChunkInfoV2`]'s `uncomp_info`).
///
/// A [`ChunkInfoV1`] has no flags; its view carries [`CiFlags::COMPRESSED`] when the compressed
/// and uncompressed sizes differ.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CiFlags(u8);

impl CiFlags {
    /// The stored data is compressed.
    pub const COMPRESSED: Self = Self(0x01);
    /// `data` holds a ZRAN context index and offset.
    pub const ZRAN: Self = Self(0x02);
    /// `data` holds a batch context index and offset; the chunk is part of a batch chunk.
    pub const BATCH: Self = Self(0x04);
    /// The stored data is encrypted.
    pub const ENCRYPTED: Self = Self(0x08);
    /// The low 32 bits of `data` hold the CRC32C of the uncompressed data.
    pub const HAS_CRC32: Self = Self(0x10);
    /// Every bit that has a name.
    pub const KNOWN: Self = Self(0x1f);

    const NAMES: [(&'static str, u8); 5] = [
        ("COMPRESSED", 0x01),
        ("ZRAN", 0x02),
        ("BATCH", 0x04),
        ("ENCRYPTED", 0x08),
        ("HAS_CRC32", 0x10),
    ];

    /// No bit set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The flags of an on-disk byte, unknown bits included.
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// The on-disk byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Bits without a name.
    pub const fn unknown_bits(self) -> u8 {
        self.0 & !Self::KNOWN.0
    }
}

impl std::ops::BitOr for CiFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Lists the named bits, then any unknown bits in hex: `CiFlags(COMPRESSED | HAS_CRC32)`.
impl fmt::Debug for CiFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Self::NAMES
            .iter()
            .filter(|(_, bit)| self.0 & bit != 0)
            .map(|(name, _)| (*name).to_string())
            .collect();
        if self.unknown_bits() != 0 || parts.is_empty() {
            parts.push(format!("{:#x}", self.unknown_bits()));
        }
        write!(f, "CiFlags({})", parts.join(" | "))
    }
}

/// One CI entry, independent of its on-disk version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BlobMetaChunk {
    /// Offset of the stored data in the blob (below 2^40). For a batch chunk: of its batch.
    pub compressed_offset: u64,
    /// Size of the stored data (0 for a batch chunk, whose batch context has the size).
    pub compressed_size: u32,
    /// Offset in the blob's uncompressed address space (4 KiB aligned).
    pub uncompressed_offset: u64,
    /// Size of the uncompressed data, 1..=16 MiB.
    pub uncompressed_size: u32,
    /// Entry flags.
    pub flags: CiFlags,
    /// The v2 `data` word: CRC32C in the low 32 bits with [`CiFlags::HAS_CRC32`], or
    /// `index << 32 | offset` of a ZRAN or batch context; 0 for v1.
    pub data: u64,
}

impl BlobMetaChunk {
    /// The blob.meta view of an 80-byte chunk table entry, as Nydus's builder makes it: the
    /// compressed, encrypted, batch and CRC32 flags carry over and `data` is the CRC32C (if
    /// any). A batch chunk's `data` (its batch index and offset) is not in a [`ChunkInfo`] and
    /// must be set by the caller.
    pub fn from_chunk_info(c: &ChunkInfo) -> Self {
        let mut flags = CiFlags::empty();
        for (from, to) in [
            (BlobChunkFlags::COMPRESSED, CiFlags::COMPRESSED),
            (BlobChunkFlags::ENCRYPTED, CiFlags::ENCRYPTED),
            (BlobChunkFlags::BATCH, CiFlags::BATCH),
            (BlobChunkFlags::HAS_CRC32, CiFlags::HAS_CRC32),
        ] {
            if c.flags.contains(from) {
                flags = flags | to;
            }
        }
        Self {
            compressed_offset: c.compressed_offset,
            compressed_size: c.compressed_size,
            uncompressed_offset: c.uncompressed_offset,
            uncompressed_size: c.uncompressed_size,
            flags,
            data: c.crc32().map_or(0, u64::from),
        }
    }

    /// Whether the stored data is compressed.
    pub fn is_compressed(&self) -> bool {
        self.flags.contains(CiFlags::COMPRESSED)
    }

    /// Whether the stored data is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.flags.contains(CiFlags::ENCRYPTED)
    }

    /// Whether the chunk is part of a batch chunk.
    pub fn is_batch(&self) -> bool {
        self.flags.contains(CiFlags::BATCH)
    }

    /// Whether the chunk is inflated from a ZRAN context.
    pub fn is_zran(&self) -> bool {
        self.flags.contains(CiFlags::ZRAN)
    }

    /// The CRC32C of the uncompressed data, if the entry carries one.
    pub fn crc32(&self) -> Option<u32> {
        self.flags
            .contains(CiFlags::HAS_CRC32)
            .then_some(self.data as u32)
    }

    /// ZRAN chunks: (context index, offset of the chunk in the context's inflated output).
    pub fn zran(&self) -> Option<(u32, u32)> {
        self.is_zran()
            .then_some(((self.data >> 32) as u32, self.data as u32))
    }

    /// Batch chunks: (batch index, offset of the chunk in the uncompressed batch).
    pub fn batch(&self) -> Option<(u32, u32)> {
        self.is_batch()
            .then_some(((self.data >> 32) as u32, self.data as u32))
    }

    /// End of the stored data (`compressed_offset + compressed_size`).
    pub fn compressed_end(&self) -> u64 {
        self.compressed_offset + u64::from(self.compressed_size)
    }

    /// End of the uncompressed data (`uncompressed_offset + uncompressed_size`).
    pub fn uncompressed_end(&self) -> u64 {
        self.uncompressed_offset + u64::from(self.uncompressed_size)
    }
}

/// Checks common to both encoders; `what` names the entry type.
fn check_encodable(c: &BlobMetaChunk, what: &'static str) -> Result<(), FormatError> {
    if c.compressed_offset > COMP_OFFSET_MASK {
        return Err(FormatError::field(
            what,
            "comp_info",
            8,
            c.compressed_offset,
            "compressed offset does not fit in 40 bits",
        ));
    }
    if c.uncompressed_size == 0 || u64::from(c.uncompressed_size) > SIZE_MASK + 1 {
        return Err(FormatError::field(
            what,
            "uncomp_info",
            0,
            c.uncompressed_size,
            "uncompressed size must be 1..=16 MiB",
        ));
    }
    if c.uncompressed_offset & !V1_UNCOMP_OFFSET_MASK != 0 {
        return Err(FormatError::field(
            what,
            "uncomp_info",
            0,
            c.uncompressed_offset,
            "uncompressed offset must be 4 KiB aligned and below 2^44",
        ));
    }
    Ok(())
}

/// A 16-byte CI v1 entry (Nydus `BlobChunkInfoV1Ondisk`), kept as its two on-disk words.
///
/// - `uncomp_info`: bits 12..44 the uncompressed offset (4 KiB aligned), bits 44..64 the low
///   20 bits of `uncompressed_size - 1`, bits 8..12 its high 4 bits; bits 0..8 reserved (kept,
///   ignored as Nydus does).
/// - `comp_info`: bits 0..40 the compressed offset, bits 44..64 the low 20 bits of
///   `compressed_size - 1`, bits 40..44 its high 4 bits.
///
/// Every 16-byte value is a well-formed entry; a v1 chunk is compressed iff its two sizes
/// differ, and it has no CRC32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChunkInfoV1 {
    /// @0 `uncomp_info`.
    pub uncomp_info: u64,
    /// @8 `comp_info`.
    pub comp_info: u64,
}

impl ChunkInfoV1 {
    /// Encoded size.
    pub const SIZE: usize = 16;
    const WHAT: &'static str = "ChunkInfoV1";

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, Self::WHAT)?;
        Ok(Self {
            uncomp_info: u64_at(b, 0),
            comp_info: u64_at(b, 8),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u64(&mut b, 0, self.uncomp_info);
        put_u64(&mut b, 8, self.comp_info);
        b
    }

    /// The entry for `c`. Fails if a field does not fit, the uncompressed offset is not 4 KiB
    /// aligned, `c` has flags other than [`CiFlags::COMPRESSED`] or a `data` word (v1 has no
    /// room for them: a v1 blob keeps CRCs only in the bootstrap's chunk table), or
    /// [`CiFlags::COMPRESSED`] disagrees with whether the sizes differ.
    pub fn encode(c: &BlobMetaChunk) -> Result<Self, FormatError> {
        let what = Self::WHAT;
        check_encodable(c, what)?;
        if c.compressed_size == 0 || u64::from(c.compressed_size) > SIZE_MASK + 1 {
            return Err(FormatError::field(
                what,
                "comp_info",
                8,
                c.compressed_size,
                "compressed size must be 1..=16 MiB",
            ));
        }
        if c.flags.bits() & !CiFlags::COMPRESSED.bits() != 0 || c.data != 0 {
            return Err(FormatError::field(
                what,
                "uncomp_info",
                0,
                c.flags.bits(),
                "v1 entries cannot hold flags other than COMPRESSED, a CRC or context data",
            ));
        }
        if c.is_compressed() != (c.compressed_size != c.uncompressed_size) {
            return Err(FormatError::field(
                what,
                "comp_info",
                8,
                c.compressed_size,
                "v1 marks a chunk compressed exactly when its sizes differ",
            ));
        }
        let split = |size: u32| {
            let s = u64::from(size - 1);
            (s & 0xf_ffff, s >> 20)
        };
        let (ulow, uhigh) = split(c.uncompressed_size);
        let (clow, chigh) = split(c.compressed_size);
        Ok(Self {
            uncomp_info: c.uncompressed_offset | ulow << 44 | uhigh << 8,
            comp_info: c.compressed_offset | clow << 44 | chigh << 40,
        })
    }

    /// The version-independent view.
    pub fn chunk(&self) -> BlobMetaChunk {
        let (u, c) = (self.uncomp_info, self.comp_info);
        let uncompressed_size = ((u >> 44) | ((u >> 8) & 0xf) << 20) as u32 + 1;
        let compressed_size = ((c >> 44) | ((c >> 40) & 0xf) << 20) as u32 + 1;
        let flags = if compressed_size != uncompressed_size {
            CiFlags::COMPRESSED
        } else {
            CiFlags::empty()
        };
        BlobMetaChunk {
            compressed_offset: c & COMP_OFFSET_MASK,
            compressed_size,
            uncompressed_offset: u & V1_UNCOMP_OFFSET_MASK,
            uncompressed_size,
            flags,
            data: 0,
        }
    }
}

/// A 24-byte CI v2 entry (Nydus `BlobChunkInfoV2Ondisk`), kept as its three on-disk words.
///
/// - `uncomp_info`: bits 0..32 `uncompressed_offset >> 12`, bits 32..56
///   `uncompressed_size - 1`, bits 56..64 [`CiFlags`].
/// - `comp_info`: bits 0..40 the compressed offset, bits 40..64 the compressed size stored as
///   is (so at most `0xff_ffff`: a 16 MiB chunk must be stored compressed).
/// - `data`: see [`BlobMetaChunk::data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChunkInfoV2 {
    /// @0 `uncomp_info`.
    pub uncomp_info: u64,
    /// @8 `comp_info`.
    pub comp_info: u64,
    /// @16 `data`.
    pub data: u64,
}

impl ChunkInfoV2 {
    /// Encoded size.
    pub const SIZE: usize = 24;
    const WHAT: &'static str = "ChunkInfoV2";

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, Self::WHAT)?;
        Ok(Self {
            uncomp_info: u64_at(b, 0),
            comp_info: u64_at(b, 8),
            data: u64_at(b, 16),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u64(&mut b, 0, self.uncomp_info);
        put_u64(&mut b, 8, self.comp_info);
        put_u64(&mut b, 16, self.data);
        b
    }

    /// The entry for `c`. Fails if a field does not fit (the compressed size must be below
    /// 16 MiB), the uncompressed offset is not 4 KiB aligned (it is stored `>> 12`), or the
    /// result would not pass [`Self::validate`].
    pub fn encode(c: &BlobMetaChunk) -> Result<Self, FormatError> {
        let what = Self::WHAT;
        check_encodable(c, what)?;
        if u64::from(c.compressed_size) > SIZE_MASK {
            return Err(FormatError::field(
                what,
                "comp_info",
                8,
                c.compressed_size,
                "compressed size does not fit in 24 bits",
            ));
        }
        let entry = Self {
            uncomp_info: c.uncompressed_offset >> 12
                | u64::from(c.uncompressed_size - 1) << 32
                | u64::from(c.flags.bits()) << 56,
            comp_info: c.compressed_offset | u64::from(c.compressed_size) << 40,
            data: c.data,
        };
        entry.validate()?;
        Ok(entry)
    }

    /// The entry's flags.
    pub fn flags(&self) -> CiFlags {
        CiFlags::from_bits((self.uncomp_info >> 56) as u8)
    }

    /// The version-independent view.
    pub fn chunk(&self) -> BlobMetaChunk {
        let (u, c) = (self.uncomp_info, self.comp_info);
        BlobMetaChunk {
            compressed_offset: c & COMP_OFFSET_MASK,
            compressed_size: (c >> 40) as u32,
            uncompressed_offset: (u & 0xffff_ffff) << 12,
            uncompressed_size: ((u >> 32) & SIZE_MASK) as u32 + 1,
            flags: self.flags(),
            data: self.data,
        }
    }

    /// Checks what one entry can get wrong on its own (Nydus `BlobChunkInfoV2Ondisk::validate`,
    /// whose checks against the blob are in [`BlobMeta`]): no unknown flag bits (Nydus only
    /// warns), no zero CRC with [`CiFlags::HAS_CRC32`], no CRC together with ZRAN or BATCH
    /// (they share `data`), and equal sizes for data stored neither compressed nor encrypted.
    pub fn validate(&self) -> Result<(), FormatError> {
        let what = Self::WHAT;
        let c = self.chunk();
        if c.flags.unknown_bits() != 0 {
            return Err(FormatError::field(
                what,
                "uncomp_info",
                0,
                c.flags.bits(),
                "unknown flag bits (valid mask 0x1f)",
            ));
        }
        if c.crc32() == Some(0) {
            return Err(FormatError::field(
                what,
                "data",
                16,
                self.data,
                "HAS_CRC32 with a zero CRC",
            ));
        }
        if c.crc32().is_some() && (c.is_batch() || c.is_zran()) {
            return Err(FormatError::field(
                what,
                "uncomp_info",
                0,
                c.flags.bits(),
                "HAS_CRC32 together with ZRAN or BATCH",
            ));
        }
        if !c.is_compressed() && !c.is_encrypted() && c.compressed_size != c.uncompressed_size {
            return Err(FormatError::field(
                what,
                "comp_info",
                8,
                c.compressed_size,
                format!(
                    "chunk stored raw but compressed size differs from uncompressed size {:#x}",
                    c.uncompressed_size
                ),
            ));
        }
        Ok(())
    }
}

/// Encodes chunks as CI v2 entries (what a writer compresses and stores before the header).
/// The error names the chunk index.
pub fn encode_ci_v2(chunks: &[BlobMetaChunk]) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::with_capacity(chunks.len() * ChunkInfoV2::SIZE);
    for (i, c) in chunks.iter().enumerate() {
        let entry = ChunkInfoV2::encode(c).map_err(|e| at_chunk(e, i, ChunkInfoV2::SIZE))?;
        out.extend_from_slice(&entry.to_bytes());
    }
    Ok(out)
}

/// Encodes chunks as CI v1 entries. The error names the chunk index.
pub fn encode_ci_v1(chunks: &[BlobMetaChunk]) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::with_capacity(chunks.len() * ChunkInfoV1::SIZE);
    for (i, c) in chunks.iter().enumerate() {
        let entry = ChunkInfoV1::encode(c).map_err(|e| at_chunk(e, i, ChunkInfoV1::SIZE))?;
        out.extend_from_slice(&entry.to_bytes());
    }
    Ok(out)
}

/// An entry's field error moved to the entry's place in the CI array, naming the chunk.
fn at_chunk(e: FormatError, index: usize, entry_size: usize) -> FormatError {
    match e {
        FormatError::BadField {
            what,
            field,
            offset,
            value,
            reason,
        } => FormatError::BadField {
            what,
            field,
            offset: index * entry_size + offset,
            value,
            reason: format!("chunk {index}: {reason}"),
        },
        other => other,
    }
}

/// One batch inflate context (Nydus `BatchInflateContext`, 40 bytes; the last 32 are reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BatchContext {
    /// @0: size of the compressed batch.
    pub compressed_size: u32,
    /// @4: size of the uncompressed batch (the chunks concatenated, not aligned).
    pub uncompressed_batch_size: u32,
}

/// Why blob.meta could not be read out of a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobMetaError {
    /// The header, the entries or their placement are wrong.
    #[error(transparent)]
    Format(#[from] FormatError),

    /// The stored CI array does not decompress to `s_ci_uncompressed_size` bytes.
    #[error("blob.meta CI array does not decompress")]
    Decompress {
        #[source]
        source: CodecError,
    },
}

/// A parsed blob.meta: its header, its entries and (ZRAN/batch) its context table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    header: BlobMetaHeader,
    chunks: Vec<BlobMetaChunk>,
    contexts: Vec<u8>,
}

impl BlobMeta {
    const WHAT: &'static str = "BlobMeta";

    /// Parses a header and the uncompressed CI data it describes.
    ///
    /// Validates the header, requires `ci_uncompressed` to be exactly `s_ci_uncompressed_size`
    /// bytes (so entries are never read beyond it and the entry list is bounded by its length),
    /// validates every v2 entry, and checks each entry against the header the way Nydus does
    /// when it uses one: a non-batch chunk of a non-SEPARATE blob has stored data, ZRAN and
    /// BATCH entries only occur in ZRAN and batch blobs and point at an existing context, and
    /// their range lies inside that context.
    pub fn parse(header_bytes: &[u8], ci_uncompressed: &[u8]) -> Result<Self, FormatError> {
        let header = BlobMetaHeader::decode(header_bytes)?;
        header.validate()?;
        if ci_uncompressed.len() as u64 != header.ci_uncompressed_size {
            return Err(FormatError::field(
                BlobMetaHeader::WHAT,
                "s_ci_uncompressed_size",
                32,
                header.ci_uncompressed_size,
                format!("the CI data given is {} bytes long", ci_uncompressed.len()),
            ));
        }
        let contexts = if header.has_contexts() {
            // validate() bounded offset + size by the CI data length.
            let start = header.ci_zran_offset as usize;
            ci_uncompressed[start..start + header.ci_zran_size as usize].to_vec()
        } else {
            Vec::new()
        };
        let entry_size = header.entry_size();
        let count = header.ci_entries as usize;
        let mut meta = Self {
            header,
            chunks: Vec::with_capacity(count),
            contexts,
        };
        for (i, raw) in ci_uncompressed
            .chunks_exact(entry_size)
            .take(count)
            .enumerate()
        {
            let chunk = if header.is_v2() {
                let entry = ChunkInfoV2::decode(raw)?;
                entry.validate().map_err(|e| at_chunk(e, i, entry_size))?;
                entry.chunk()
            } else {
                ChunkInfoV1::decode(raw)?.chunk()
            };
            meta.check_in_header(&chunk)
                .map_err(|e| at_chunk(e, i, entry_size))?;
            meta.chunks.push(chunk);
        }
        Ok(meta)
    }

    /// Checks one entry against the header and the context table.
    fn check_in_header(&self, c: &BlobMetaChunk) -> Result<(), FormatError> {
        let what = ChunkInfoV2::WHAT;
        let features = self.header.features;
        if c.compressed_size == 0 && !c.is_batch() && !features.contains(BlobFeatures::SEPARATE) {
            return Err(FormatError::field(
                what,
                "comp_info",
                8,
                c.compressed_size,
                "compressed size 0 in a chunk that is neither batch nor in a SEPARATE blob",
            ));
        }
        let flag_bits = c.flags.bits();
        if let Some((index, offset)) = c.zran() {
            if !features.contains(BlobFeatures::ZRAN) {
                return Err(FormatError::field(
                    what,
                    "uncomp_info",
                    0,
                    flag_bits,
                    "ZRAN chunk in a blob without the ZRAN feature",
                ));
            }
            let out_len = self.context_u32(index, 28).ok_or_else(|| {
                FormatError::field(what, "data", 16, c.data, "ZRAN context index out of range")
            })?;
            if offset >= out_len
                || u64::from(offset) + u64::from(c.uncompressed_size) > out_len.into()
            {
                return Err(FormatError::field(
                    what,
                    "data",
                    16,
                    c.data,
                    format!("chunk range is outside its ZRAN context's {out_len} inflated bytes"),
                ));
            }
        }
        if let Some((index, offset)) = c.batch() {
            if !features.contains(BlobFeatures::BATCH) {
                return Err(FormatError::field(
                    what,
                    "uncomp_info",
                    0,
                    flag_bits,
                    "BATCH chunk in a blob without the BATCH feature",
                ));
            }
            let ctx = self.batch_context(index).ok_or_else(|| {
                FormatError::field(what, "data", 16, c.data, "batch index out of range")
            })?;
            if ctx.compressed_size > ctx.uncompressed_batch_size
                || u64::from(offset) + u64::from(c.uncompressed_size)
                    > u64::from(ctx.uncompressed_batch_size)
            {
                return Err(FormatError::field(
                    what,
                    "data",
                    16,
                    c.data,
                    format!("chunk range is outside its batch context {ctx:?}"),
                ));
            }
        }
        Ok(())
    }

    /// The `u32` at `field` of context `index`, if the context exists.
    fn context_u32(&self, index: u32, field: usize) -> Option<u32> {
        if index >= self.header.ci_zran_count {
            return None;
        }
        let start = (index as usize).checked_mul(ZRAN_CONTEXT_SIZE)?;
        let b = self
            .contexts
            .get(start..start.checked_add(ZRAN_CONTEXT_SIZE)?)?;
        Some(u32_at(b, field))
    }

    /// Batch blobs: the batch context at `index`.
    pub fn batch_context(&self, index: u32) -> Option<BatchContext> {
        if !self.header.features.contains(BlobFeatures::BATCH) {
            return None;
        }
        Some(BatchContext {
            compressed_size: self.context_u32(index, 0)?,
            uncompressed_batch_size: self.context_u32(index, 4)?,
        })
    }

    /// Reads blob.meta out of a whole blob: the stored CI array of `ci_compressed_size` bytes at
    /// `ci_offset` and the header after it. The header must agree with the three values (which
    /// a reader takes from the bootstrap's blob table); the CI array is decompressed with
    /// `ci_compressor` into exactly `s_ci_uncompressed_size` bytes, bounded by
    /// [`BLOB_META_MAX_CI_SIZE`], and parsed with [`Self::parse`].
    pub fn parse_from_blob(
        blob: &[u8],
        ci_offset: u64,
        ci_compressed_size: u64,
        ci_compressor: Compressor,
    ) -> Result<Self, BlobMetaError> {
        let out_of_blob = || FormatError::Invalid {
            what: Self::WHAT,
            reason: format!(
                "CI array at {ci_offset:#x} ({ci_compressed_size:#x} bytes) and its header \
                     end beyond the blob's {:#x} bytes",
                blob.len()
            ),
        };
        let start = usize::try_from(ci_offset).map_err(|_| out_of_blob())?;
        let len = usize::try_from(ci_compressed_size)
            .ok()
            .and_then(|n| n.checked_add(BLOB_META_HEADER_SIZE))
            .ok_or_else(out_of_blob)?;
        let section = start
            .checked_add(len)
            .and_then(|end| blob.get(start..end))
            .ok_or_else(out_of_blob)?;
        let meta = Self::parse_from_section(section)?;
        let h = &meta.header;
        let mismatch = |field, offset, value: u64, expected: u64| {
            FormatError::field(
                BlobMetaHeader::WHAT,
                field,
                offset,
                value,
                format!("does not match the blob table's {expected:#x}"),
            )
        };
        if h.ci_offset != ci_offset {
            return Err(mismatch("s_ci_offset", 16, h.ci_offset, ci_offset).into());
        }
        if h.ci_compressor != u32::from(ci_compressor) {
            return Err(mismatch(
                "s_ci_compressor",
                8,
                h.ci_compressor.into(),
                u32::from(ci_compressor).into(),
            )
            .into());
        }
        Ok(meta)
    }

    /// Reads blob.meta from its section of a blob: the stored CI array followed by the header
    /// (what a `blob.meta` tar header describes). The header says how the CI array is stored.
    pub fn parse_from_section(section: &[u8]) -> Result<Self, BlobMetaError> {
        let split =
            section
                .len()
                .checked_sub(BLOB_META_HEADER_SIZE)
                .ok_or(FormatError::Truncated {
                    what: BlobMetaHeader::WHAT,
                    need: BLOB_META_HEADER_SIZE,
                    have: section.len(),
                })?;
        let (stored, header_bytes) = section.split_at(split);
        let header = BlobMetaHeader::decode(header_bytes)?;
        header.validate()?;
        if header.ci_compressed_size != stored.len() as u64 {
            return Err(FormatError::field(
                BlobMetaHeader::WHAT,
                "s_ci_compressed_size",
                24,
                header.ci_compressed_size,
                format!("the stored CI array is {} bytes", stored.len()),
            )
            .into());
        }
        // validate() checked the compressor and bounded the size by BLOB_META_MAX_CI_SIZE.
        let compressor = header.compressor()?;
        let ci = decompress_ci(compressor, stored, header.ci_uncompressed_size as usize)
            .map_err(|source| BlobMetaError::Decompress { source })?;
        Ok(Self::parse(header_bytes, &ci)?)
    }

    /// Parses a local cache file `<blob_id>.blob.meta`: the uncompressed CI data padded to a
    /// multiple of 4 KiB, then the header. The file size must be exactly that.
    pub fn parse_cache_file(bytes: &[u8]) -> Result<Self, FormatError> {
        let split =
            bytes
                .len()
                .checked_sub(BLOB_META_HEADER_SIZE)
                .ok_or(FormatError::Truncated {
                    what: Self::WHAT,
                    need: BLOB_META_HEADER_SIZE,
                    have: bytes.len(),
                })?;
        let (data, header_bytes) = bytes.split_at(split);
        let header = BlobMetaHeader::decode(header_bytes)?;
        header.validate()?;
        let usize_ = header.ci_uncompressed_size;
        // validate() bounded the size, so neither can overflow.
        if round_up_4k(usize_) != Some(data.len() as u64) {
            return Err(FormatError::Invalid {
                what: Self::WHAT,
                reason: format!(
                    "cache file is {} bytes, expected {} (CI data of {usize_} bytes rounded up \
                     to 4 KiB, plus the header)",
                    bytes.len(),
                    round_up_4k(usize_).unwrap_or(0) + BLOB_META_HEADER_SIZE as u64
                ),
            });
        }
        Self::parse(header_bytes, &data[..usize_ as usize])
    }

    /// The local cache file for a header and the uncompressed CI data it describes: the data,
    /// zero padding to 4 KiB, the header.
    pub fn encode_cache_file(
        header: &BlobMetaHeader,
        ci_uncompressed: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        header.validate()?;
        if ci_uncompressed.len() as u64 != header.ci_uncompressed_size {
            return Err(FormatError::field(
                BlobMetaHeader::WHAT,
                "s_ci_uncompressed_size",
                32,
                header.ci_uncompressed_size,
                format!("the CI data given is {} bytes long", ci_uncompressed.len()),
            ));
        }
        let padded = ci_uncompressed.len().next_multiple_of(4096);
        let mut out = vec![0u8; padded + BLOB_META_HEADER_SIZE];
        put(&mut out, 0, ci_uncompressed);
        put(&mut out, padded, &header.to_bytes());
        Ok(out)
    }

    /// The header.
    pub fn header(&self) -> &BlobMetaHeader {
        &self.header
    }

    /// The entries, in chunk index order.
    pub fn chunks(&self) -> &[BlobMetaChunk] {
        &self.chunks
    }

    /// The entries, in chunk index order.
    pub fn into_chunks(self) -> Vec<BlobMetaChunk> {
        self.chunks
    }

    /// ZRAN/batch blobs: the context table (and ZRAN dictionaries) that follows the entries;
    /// empty otherwise.
    pub fn contexts(&self) -> &[u8] {
        &self.contexts
    }

    /// Checks that every chunk lies inside a blob of `compressed_size` stored bytes and
    /// `uncompressed_size` bytes of uncompressed address space (rounded up to 4 KiB, as Nydus
    /// does). A batch chunk's stored range is its batch's. The error names the chunk index.
    pub fn validate_against(
        &self,
        compressed_size: u64,
        uncompressed_size: u64,
    ) -> Result<(), FormatError> {
        let what = if self.header.is_v2() {
            ChunkInfoV2::WHAT
        } else {
            ChunkInfoV1::WHAT
        };
        let entry_size = self.header.entry_size();
        let uncompressed_limit = round_up_4k(uncompressed_size).unwrap_or(u64::MAX);
        for (i, c) in self.chunks.iter().enumerate() {
            let stored = match c.batch() {
                // parse() checked that the context exists.
                Some((index, _)) => self
                    .batch_context(index)
                    .map_or(0, |ctx| ctx.compressed_size),
                None => c.compressed_size,
            };
            let c_end = c.compressed_offset + u64::from(stored);
            if c_end > compressed_size {
                return Err(at_chunk(
                    FormatError::field(
                        what,
                        "comp_info",
                        8,
                        c_end,
                        format!(
                            "stored data ends beyond the blob's compressed size \
                             {compressed_size:#x}"
                        ),
                    ),
                    i,
                    entry_size,
                ));
            }
            let u_end = c.uncompressed_end();
            if u_end > uncompressed_limit {
                return Err(at_chunk(
                    FormatError::field(
                        what,
                        "uncomp_info",
                        0,
                        u_end,
                        format!(
                            "uncompressed data ends beyond the blob's uncompressed size \
                             {uncompressed_size:#x}"
                        ),
                    ),
                    i,
                    entry_size,
                ));
            }
        }
        Ok(())
    }
}

/// Decompresses a stored CI array into exactly `size` bytes.
///
/// Arrays up to [`RAFS_MAX_CHUNK_SIZE`] go through [`codec::decompress`]. Larger ones (more than
/// about 700,000 v2 entries) are decoded so that memory follows the data actually produced: zstd
/// through its streaming decoder, LZ4 only if `size` is within LZ4's 255:1 expansion limit.
/// The caller bounds `size` by [`BLOB_META_MAX_CI_SIZE`].
fn decompress_ci(algo: Compressor, data: &[u8], size: usize) -> Result<Vec<u8>, CodecError> {
    if size <= RAFS_MAX_CHUNK_SIZE as usize {
        let mut out = Vec::new();
        codec::decompress(algo, data, size, &mut out)?;
        return Ok(out);
    }
    let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| CodecError::Corrupt {
        algo,
        expected: size,
        source,
    };
    let mismatch = |actual| CodecError::SizeMismatch {
        algo,
        expected: size,
        actual,
    };
    match algo {
        Compressor::None if data.len() == size => Ok(data.to_vec()),
        Compressor::None => Err(mismatch(data.len())),
        Compressor::GZip => Err(CodecError::UnsupportedCompressor { algo }),
        Compressor::Lz4Block => {
            if size / 255 > data.len() {
                return Err(corrupt(
                    format!("{} LZ4 bytes cannot inflate to {size}", data.len()).into(),
                ));
            }
            let mut out = vec![0u8; size];
            match lz4_flex::block::decompress_into(data, &mut out) {
                Ok(n) if n == size => Ok(out),
                Ok(n) => Err(mismatch(n)),
                Err(e) => Err(corrupt(Box::new(e))),
            }
        }
        Compressor::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(data).map_err(|e| corrupt(Box::new(e)))?;
            let mut out = Vec::with_capacity(RAFS_MAX_CHUNK_SIZE as usize);
            decoder
                .take(size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| corrupt(Box::new(e)))?;
            if out.len() == size {
                Ok(out)
            } else {
                Err(mismatch(out.len()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toc::{locate_sections, Toc, TOC_ENTRY_BLOB_META, TOC_ENTRY_BOOTSTRAP};
    use proptest::prelude::*;

    const V2: BlobFeatures = BlobFeatures::CHUNK_INFO_V2;

    /// Three v2 chunks as Nydus writes them for a 4 KiB-aligned blob: a compressed chunk with a
    /// CRC, a raw one with a CRC, a compressed one without.
    fn chunks() -> Vec<BlobMetaChunk> {
        vec![
            BlobMetaChunk {
                compressed_offset: 0,
                compressed_size: 0x1234,
                uncompressed_offset: 0,
                uncompressed_size: 0x1_0000,
                flags: CiFlags::COMPRESSED | CiFlags::HAS_CRC32,
                data: 0xdead_beef,
            },
            BlobMetaChunk {
                compressed_offset: 0x1234,
                compressed_size: 0x800,
                uncompressed_offset: 0x1_0000,
                uncompressed_size: 0x800,
                flags: CiFlags::HAS_CRC32,
                data: 0x1,
            },
            BlobMetaChunk {
                compressed_offset: 0x1a34,
                compressed_size: 0x100,
                uncompressed_offset: 0x1_1000,
                uncompressed_size: 0x4_0000,
                flags: CiFlags::COMPRESSED,
                data: 0,
            },
        ]
    }

    /// The v1 form of [`chunks`]: no CRCs.
    fn chunks_v1() -> Vec<BlobMetaChunk> {
        chunks()
            .into_iter()
            .map(|c| BlobMetaChunk {
                flags: if c.is_compressed() {
                    CiFlags::COMPRESSED
                } else {
                    CiFlags::empty()
                },
                data: 0,
                ..c
            })
            .collect()
    }

    /// A header describing `ci` stored raw.
    fn header_for(features: BlobFeatures, entries: usize, ci: &[u8]) -> BlobMetaHeader {
        BlobMetaHeader::new(
            features,
            Compressor::None,
            entries as u32,
            0x1_0000,
            ci.len() as u64,
            ci.len() as u64,
        )
    }

    /// A blob: `data_len` bytes of chunk data, then the CI array stored with `algo` (raw if it
    /// does not shrink) and the header. Returns the blob and the compressor used.
    fn blob_with_meta(
        features: BlobFeatures,
        algo: Compressor,
        data_len: usize,
        ci: &[u8],
        entries: usize,
    ) -> (Vec<u8>, BlobMetaHeader) {
        let (stored, compressed) = codec::compress(algo, ci).unwrap();
        let used = if compressed { algo } else { Compressor::None };
        let header = BlobMetaHeader::new(
            features,
            used,
            entries as u32,
            data_len as u64,
            stored.len() as u64,
            ci.len() as u64,
        );
        let mut blob = vec![0x5a; data_len];
        blob.extend_from_slice(&stored);
        blob.extend_from_slice(&header.to_bytes());
        (blob, header)
    }

    fn field_of<T: fmt::Debug>(r: Result<T, FormatError>) -> &'static str {
        r.unwrap_err().field_name().expect("a field error")
    }

    #[test]
    fn header_fields_sit_at_reference_offsets() {
        let h = BlobMetaHeader {
            magic: BLOB_META_MAGIC,
            features: BlobFeatures::from_bits(0x4000_0085),
            ci_compressor: 3,
            ci_entries: 0x0102_0304,
            ci_offset: 0x1111_2222_3333_4444,
            ci_compressed_size: 0x5555,
            ci_uncompressed_size: 0x6666,
            ci_zran_offset: 0x7777,
            ci_zran_size: 0x8888,
            ci_zran_count: 0x99,
            magic2: BLOB_META_MAGIC,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..4], &[0x0b, 0xb1, 0x0b, 0xb1]);
        assert_eq!(&b[4..8], &[0x85, 0, 0, 0x40]);
        assert_eq!(&b[8..12], &[3, 0, 0, 0]);
        assert_eq!(&b[12..16], &[4, 3, 2, 1]);
        assert_eq!(
            &b[16..24],
            &[0x44, 0x44, 0x33, 0x33, 0x22, 0x22, 0x11, 0x11]
        );
        assert_eq!(&b[24..32], &[0x55, 0x55, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[32..40], &[0x66, 0x66, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[40..48], &[0x77, 0x77, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[48..56], &[0x88, 0x88, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[56..60], &[0x99, 0, 0, 0]);
        assert!(b[60..4092].iter().all(|&x| x == 0));
        assert_eq!(&b[4092..], &[0x0b, 0xb1, 0x0b, 0xb1]);
        assert_eq!(BlobMetaHeader::decode(&b), Ok(h));
        assert_eq!(h.compressor(), Ok(Compressor::Zstd));
        assert!(h.is_v2() && h.has_contexts());
        assert_eq!(h.entry_size(), 24);
    }

    #[test]
    fn header_decodes_hand_built_bytes_and_ignores_reserved() {
        let mut b = vec![0xeeu8; 4096 + 7];
        b[0..4].copy_from_slice(&0xB10B_B10Bu32.to_le_bytes());
        b[4..8].copy_from_slice(&[0x01, 0, 0, 0]);
        b[8..12].copy_from_slice(&[1, 0, 0, 0]);
        b[12..16].copy_from_slice(&[8, 0, 0, 0]);
        b[16..24].copy_from_slice(&81258u64.to_le_bytes());
        b[24..32].copy_from_slice(&118u64.to_le_bytes());
        b[32..40].copy_from_slice(&128u64.to_le_bytes());
        b[40..56].fill(0);
        b[56..60].fill(0);
        b[4092..4096].copy_from_slice(&0xB10B_B10Bu32.to_le_bytes());
        let h = BlobMetaHeader::decode(&b).unwrap();
        assert_eq!(h.magic, BLOB_META_MAGIC);
        assert_eq!(h.features, BlobFeatures::ALIGNED);
        assert_eq!(h.compressor(), Ok(Compressor::Lz4Block));
        assert_eq!(h.ci_entries, 8);
        assert_eq!(h.ci_offset, 81258);
        assert_eq!(h.ci_compressed_size, 118);
        assert_eq!(h.ci_uncompressed_size, 128);
        assert_eq!(
            (h.ci_zran_offset, h.ci_zran_size, h.ci_zran_count),
            (0, 0, 0)
        );
        assert_eq!(h.magic2, BLOB_META_MAGIC);
        assert!(!h.is_v2());
        h.validate().unwrap();
        let out = h.to_bytes();
        assert!(
            out[60..4092].iter().all(|&x| x == 0),
            "reserved written as zero"
        );
        assert_eq!(
            BlobMetaHeader::decode(&b[..4095]),
            Err(FormatError::Truncated {
                what: "BlobMetaHeader",
                need: 4096,
                have: 4095
            })
        );
    }

    #[test]
    fn header_validation_names_the_field() {
        // A valid v2 batch header: 4 entries, one context.
        let good = BlobMetaHeader {
            ci_zran_offset: 96,
            ci_zran_size: 40,
            ci_zran_count: 1,
            ..BlobMetaHeader::new(
                V2 | BlobFeatures::BATCH | BlobFeatures::ALIGNED,
                Compressor::Zstd,
                4,
                0x1000,
                100,
                136,
            )
        };
        good.validate().unwrap();
        type Case = (&'static str, fn(&mut BlobMetaHeader));
        let cases: [Case; 22] = [
            ("s_features", |h| {
                h.features = BlobFeatures::from_bits(0x1000)
            }),
            ("s_features", |h| {
                h.features.insert(BlobFeatures::V5_NO_EXT_BLOB_TABLE)
            }),
            ("s_features", |h| h.features.insert(BlobFeatures::ZRAN)),
            ("s_features", |h| h.features.remove(V2)),
            ("s_ci_compressor", |h| h.ci_compressor = 4),
            ("s_ci_entries", |h| h.ci_entries = 0),
            ("s_ci_entries", |h| h.ci_entries = (1 << 24) + 1),
            ("s_ci_uncompressed_size", |h| h.ci_uncompressed_size = 95),
            ("s_ci_uncompressed_size", |h| {
                h.ci_uncompressed_size = BLOB_META_MAX_CI_SIZE + 1
            }),
            ("s_ci_uncompressed_size", |h| {
                h.features.remove(BlobFeatures::BATCH);
                h.ci_uncompressed_size = 97;
            }),
            ("s_ci_uncompressed_size", |h| {
                h.features = BlobFeatures::ALIGNED;
                h.ci_uncompressed_size = 24 * 4;
            }),
            ("s_ci_compressed_size", |h| h.ci_compressed_size = 137),
            ("s_ci_compressed_size", |h| {
                h.ci_compressor = 0;
                h.ci_compressed_size = 135;
            }),
            ("s_ci_offset", |h| h.ci_offset = u64::MAX - 4096),
            ("s_ci_zran_offset", |h| h.ci_zran_offset = 100),
            ("s_ci_zran_size", |h| h.ci_zran_size = 41),
            ("s_ci_zran_size", |h| h.ci_zran_size = u64::MAX),
            ("s_ci_zran_count", |h| h.ci_zran_count = 2),
            ("s_ci_zran_count", |h| {
                h.ci_zran_count = 5;
                h.ci_uncompressed_size = 96 + 200;
                h.ci_zran_size = 200;
            }),
            ("magic", |h| h.magic = 0),
            ("magic", |h| h.magic2 = 0xB10B_B10C),
            ("s_features", |h| {
                h.features = BlobFeatures::ALIGNED | BlobFeatures::ZRAN
            }),
        ];
        for (i, (field, mutate)) in cases.into_iter().enumerate() {
            let mut h = good;
            mutate(&mut h);
            assert_eq!(field_of(h.validate()), field, "case {i}: {h:?}");
        }
        let mut h = good;
        h.magic2 = 1;
        assert!(matches!(
            h.validate(),
            Err(FormatError::BadMagic {
                offset: 4092,
                found: 1,
                ..
            })
        ));
        // Relaxed rules: v1 chunk-dict blobs and encrypted raw arrays.
        let mut h = BlobMetaHeader::new(
            BlobFeatures::IS_CHUNKDICT_GENERATED,
            Compressor::None,
            2,
            0,
            48,
            48,
        );
        h.validate().unwrap();
        h.features = BlobFeatures::ENCRYPTED | V2;
        h.ci_uncompressed_size = 48;
        h.ci_compressed_size = 32;
        h.validate().unwrap();
    }

    #[test]
    fn v1_bit_layout_splits_the_size_fields() {
        let c = BlobMetaChunk {
            compressed_offset: 0x01_2345_6789,
            compressed_size: 0x12_3457,
            uncompressed_offset: 0xabc_def0_1000,
            uncompressed_size: 0xf0_0001,
            flags: CiFlags::COMPRESSED,
            data: 0,
        };
        let e = ChunkInfoV1::encode(&c).unwrap();
        // size - 1 = 0xf0_0000: low 20 bits (0) at 44..64, high 4 bits (0xf) at 8..12.
        assert_eq!(e.uncomp_info, 0x0000_0abc_def0_1f00);
        // size - 1 = 0x12_3456: low 20 bits at 44..64, high 4 bits (0x1) at 40..44.
        assert_eq!(e.comp_info, 0x2345_6101_2345_6789);
        let b = e.to_bytes();
        assert_eq!(&b[..8], &[0x00, 0x1f, 0xf0, 0xde, 0xbc, 0x0a, 0x00, 0x00]);
        assert_eq!(&b[8..], &[0x89, 0x67, 0x45, 0x23, 0x01, 0x61, 0x45, 0x23]);
        assert_eq!(ChunkInfoV1::decode(&b), Ok(e));
        assert_eq!(e.chunk(), c);

        // Extremes: every size bit set means 16 MiB; reserved bits 0..8 are ignored.
        let e = ChunkInfoV1 {
            uncomp_info: 0xffff_ffff_ffff_ffff,
            comp_info: 0xffff_ffff_ffff_ffff,
        };
        let v = e.chunk();
        assert_eq!(v.uncompressed_size, 0x100_0000);
        assert_eq!(v.compressed_size, 0x100_0000);
        assert_eq!(v.uncompressed_offset, 0xfff_ffff_f000);
        assert_eq!(v.compressed_offset, 0xff_ffff_ffff);
        assert!(!v.is_compressed(), "equal sizes: stored raw");
        assert_eq!(v.crc32(), None);
        // The all-zero entry is one byte at offset 0.
        let v = ChunkInfoV1::default().chunk();
        assert_eq!((v.compressed_size, v.uncompressed_size), (1, 1));
    }

    #[test]
    fn v1_encoding_refuses_what_v1_cannot_hold() {
        let good = chunks_v1()[0];
        ChunkInfoV1::encode(&good).unwrap();
        let cases: [(&str, BlobMetaChunk); 8] = [
            (
                "uncomp_info",
                BlobMetaChunk {
                    uncompressed_offset: 0x1800,
                    ..good
                },
            ),
            (
                "uncomp_info",
                BlobMetaChunk {
                    uncompressed_offset: 1 << 44,
                    ..good
                },
            ),
            (
                "uncomp_info",
                BlobMetaChunk {
                    uncompressed_size: 0,
                    ..good
                },
            ),
            (
                "uncomp_info",
                BlobMetaChunk {
                    uncompressed_size: (1 << 24) + 1,
                    ..good
                },
            ),
            (
                "comp_info",
                BlobMetaChunk {
                    compressed_offset: 1 << 40,
                    ..good
                },
            ),
            (
                "comp_info",
                BlobMetaChunk {
                    compressed_size: 0,
                    ..good
                },
            ),
            ("uncomp_info", chunks()[0]),
            (
                "comp_info",
                BlobMetaChunk {
                    flags: CiFlags::empty(),
                    ..good
                },
            ),
        ];
        for (i, (field, c)) in cases.into_iter().enumerate() {
            assert_eq!(field_of(ChunkInfoV1::encode(&c)), field, "case {i}");
        }
        let raw_marked_compressed = BlobMetaChunk {
            compressed_size: good.uncompressed_size,
            ..good
        };
        assert_eq!(
            field_of(ChunkInfoV1::encode(&raw_marked_compressed)),
            "comp_info"
        );
    }

    #[test]
    fn v2_bit_layout_stores_compressed_size_as_is() {
        let c = BlobMetaChunk {
            compressed_offset: 0x12_3456_789a,
            compressed_size: 0xab_cdef,
            uncompressed_offset: 0x234_5678_9000,
            uncompressed_size: 0x10_0000,
            flags: CiFlags::COMPRESSED | CiFlags::HAS_CRC32,
            data: 0xdead_beef,
        };
        let e = ChunkInfoV2::encode(&c).unwrap();
        assert_eq!(e.uncomp_info, 0x110f_ffff_2345_6789);
        assert_eq!(e.comp_info, 0xabcd_ef12_3456_789a);
        assert_eq!(e.data, 0xdead_beef);
        let b = e.to_bytes();
        assert_eq!(&b[..8], &[0x89, 0x67, 0x45, 0x23, 0xff, 0xff, 0x0f, 0x11]);
        assert_eq!(&b[8..16], &[0x9a, 0x78, 0x56, 0x34, 0x12, 0xef, 0xcd, 0xab]);
        assert_eq!(&b[16..], &[0xef, 0xbe, 0xad, 0xde, 0, 0, 0, 0]);
        assert_eq!(ChunkInfoV2::decode(&b), Ok(e));
        assert_eq!(e.chunk(), c);
        assert_eq!(e.flags(), CiFlags::COMPRESSED | CiFlags::HAS_CRC32);
        assert_eq!(c.crc32(), Some(0xdead_beef));
        assert!(c.is_compressed() && !c.is_batch() && !c.is_zran() && !c.is_encrypted());
        assert_eq!((c.zran(), c.batch()), (None, None));
        assert_eq!(c.compressed_end(), 0x12_3456_789a + 0xab_cdef);
        assert_eq!(c.uncompressed_end(), 0x234_5688_9000);

        let batch = BlobMetaChunk {
            flags: CiFlags::COMPRESSED | CiFlags::BATCH,
            compressed_size: 0,
            data: 7 << 32 | 0x300,
            ..c
        };
        let e = ChunkInfoV2::encode(&batch).unwrap();
        assert_eq!(e.uncomp_info >> 56, 0x05);
        assert_eq!(e.chunk().batch(), Some((7, 0x300)));
        assert_eq!(e.chunk().crc32(), None);
        let zran = BlobMetaChunk {
            flags: CiFlags::COMPRESSED | CiFlags::ZRAN,
            ..batch
        };
        assert_eq!(
            ChunkInfoV2::encode(&zran).unwrap().chunk().zran(),
            Some((7, 0x300))
        );
    }

    #[test]
    fn v2_encoding_refuses_unaligned_offsets_instead_of_truncating() {
        let good = chunks()[0];
        let unaligned = BlobMetaChunk {
            uncompressed_offset: 0x1_0800,
            ..good
        };
        let err = ChunkInfoV2::encode(&unaligned).unwrap_err();
        assert_eq!(err.field_name(), Some("uncomp_info"));
        assert!(err.to_string().contains("4 KiB aligned"), "{err}");
        assert!(matches!(
            err,
            FormatError::BadField {
                value: 0x1_0800,
                ..
            }
        ));
        // The encoded form would otherwise describe offset 0x1_0000.
        assert!(encode_ci_v2(&[good, unaligned]).is_err());

        let cases: [(&str, BlobMetaChunk); 8] = [
            (
                "uncomp_info",
                BlobMetaChunk {
                    uncompressed_offset: 1 << 44,
                    ..good
                },
            ),
            (
                "uncomp_info",
                BlobMetaChunk {
                    uncompressed_size: 0,
                    ..good
                },
            ),
            (
                "uncomp_info",
                BlobMetaChunk {
                    uncompressed_size: (1 << 24) + 1,
                    ..good
                },
            ),
            (
                "comp_info",
                BlobMetaChunk {
                    compressed_offset: 1 << 40,
                    ..good
                },
            ),
            (
                "comp_info",
                BlobMetaChunk {
                    compressed_size: 1 << 24,
                    ..good
                },
            ),
            (
                "uncomp_info",
                BlobMetaChunk {
                    flags: CiFlags::from_bits(0x21),
                    ..good
                },
            ),
            (
                "data",
                BlobMetaChunk {
                    data: 0xffff_ffff_0000_0000,
                    ..good
                },
            ),
            (
                "comp_info",
                BlobMetaChunk {
                    flags: CiFlags::empty(),
                    ..good
                },
            ),
        ];
        for (i, (field, c)) in cases.into_iter().enumerate() {
            assert_eq!(field_of(ChunkInfoV2::encode(&c)), field, "case {i}");
        }
        // A 16 MiB chunk stored raw needs a 24-bit compressed size of 2^24: not representable.
        let raw16 = BlobMetaChunk {
            compressed_size: 1 << 24,
            uncompressed_size: 1 << 24,
            flags: CiFlags::empty(),
            data: 0,
            ..good
        };
        assert_eq!(field_of(ChunkInfoV2::encode(&raw16)), "comp_info");
        assert!(ChunkInfoV1::encode(&raw16).is_ok(), "v1 stores size - 1");
        // Encrypted raw data may differ in size.
        let encrypted = BlobMetaChunk {
            flags: CiFlags::ENCRYPTED,
            data: 0,
            ..good
        };
        ChunkInfoV2::encode(&encrypted).unwrap();
    }

    #[test]
    fn v2_validate_rules() {
        let ok = ChunkInfoV2::encode(&chunks()[0]).unwrap();
        ok.validate().unwrap();
        let unknown = ChunkInfoV2 {
            uncomp_info: ok.uncomp_info | 0x80 << 56,
            ..ok
        };
        assert_eq!(field_of(unknown.validate()), "uncomp_info");
        let zero_crc = ChunkInfoV2 { data: 0, ..ok };
        assert_eq!(field_of(zero_crc.validate()), "data");
        let crc_and_batch = ChunkInfoV2 {
            uncomp_info: ok.uncomp_info | 0x04 << 56,
            ..ok
        };
        assert_eq!(field_of(crc_and_batch.validate()), "uncomp_info");
        let raw_size_mismatch = ChunkInfoV2 {
            uncomp_info: ok.uncomp_info & !(0x01 << 56),
            ..ok
        };
        assert_eq!(field_of(raw_size_mismatch.validate()), "comp_info");
    }

    #[test]
    fn ci_arrays_round_trip_through_parse() {
        let v2 = encode_ci_v2(&chunks()).unwrap();
        assert_eq!(v2.len(), 72);
        assert_eq!(
            &v2[24..48],
            &ChunkInfoV2::encode(&chunks()[1]).unwrap().to_bytes()
        );
        let h = header_for(V2 | BlobFeatures::ALIGNED, 3, &v2);
        let meta = BlobMeta::parse(&h.to_bytes(), &v2).unwrap();
        assert_eq!(meta.chunks(), chunks().as_slice());
        assert_eq!(meta.header(), &h);
        assert!(meta.contexts().is_empty());
        assert_eq!(meta.clone().into_chunks(), chunks());

        let v1 = encode_ci_v1(&chunks_v1()).unwrap();
        assert_eq!(v1.len(), 48);
        let h = header_for(BlobFeatures::ALIGNED, 3, &v1);
        let meta = BlobMeta::parse(&h.to_bytes(), &v1).unwrap();
        assert_eq!(meta.chunks(), chunks_v1().as_slice());

        // v1 cannot hold the CRCs; the error names the chunk.
        let err = encode_ci_v1(&chunks()).unwrap_err();
        assert!(err.to_string().contains("chunk 0:"), "{err}");
        let bad = BlobMetaChunk {
            uncompressed_offset: 0x1_1800,
            ..chunks()[2]
        };
        let err = encode_ci_v2(&[chunks()[0], chunks()[1], bad]).unwrap_err();
        assert!(
            matches!(err, FormatError::BadField { offset: 48, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("chunk 2:"), "{err}");
    }

    #[test]
    fn parse_requires_the_described_length() {
        let ci = encode_ci_v2(&chunks()).unwrap();
        let h = header_for(V2, 3, &ci);
        for len in [0, 71, 48] {
            assert_eq!(
                field_of(BlobMeta::parse(&h.to_bytes(), &ci[..len])),
                "s_ci_uncompressed_size"
            );
        }
        let mut longer = ci.clone();
        longer.push(0);
        assert_eq!(
            field_of(BlobMeta::parse(&h.to_bytes(), &longer)),
            "s_ci_uncompressed_size"
        );
        assert!(matches!(
            BlobMeta::parse(&h.to_bytes()[..100], &ci),
            Err(FormatError::Truncated { .. })
        ));
        let mut bad = h;
        bad.ci_entries = 4;
        assert_eq!(
            field_of(BlobMeta::parse(&bad.to_bytes(), &ci)),
            "s_ci_uncompressed_size"
        );
    }

    #[test]
    fn parse_checks_entries_against_the_header_and_names_the_chunk() {
        let parse = |features: BlobFeatures, cs: &[BlobMetaChunk]| {
            let raw: Vec<u8> = cs
                .iter()
                .flat_map(|c| {
                    let e = ChunkInfoV2::encode(c).unwrap_or(ChunkInfoV2 {
                        uncomp_info: c.uncompressed_offset >> 12
                            | u64::from(c.uncompressed_size - 1) << 32
                            | u64::from(c.flags.bits()) << 56,
                        comp_info: c.compressed_offset | u64::from(c.compressed_size) << 40,
                        data: c.data,
                    });
                    e.to_bytes()
                })
                .collect();
            BlobMeta::parse(&header_for(features, cs.len(), &raw).to_bytes(), &raw)
        };
        let mut cs = chunks();
        // An entry-level rule, reported at chunk 1's `data` (offset 24 + 16).
        cs[1].data = 0;
        let err = parse(V2, &cs).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::BadField {
                    field: "data",
                    offset: 40,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("chunk 1:"), "{err}");

        // No stored data: only for batch chunks or SEPARATE blobs.
        let mut cs = chunks();
        cs[2].compressed_size = 0;
        let err = parse(V2, &cs).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::BadField {
                    field: "comp_info",
                    offset: 56,
                    ..
                }
            ),
            "{err:?}"
        );
        parse(V2 | BlobFeatures::SEPARATE, &cs).unwrap();

        // ZRAN and BATCH entries need their feature.
        let mut cs = chunks();
        cs[2].flags = CiFlags::COMPRESSED | CiFlags::ZRAN;
        assert_eq!(field_of(parse(V2, &cs)), "uncomp_info");
        cs[2].flags = CiFlags::COMPRESSED | CiFlags::BATCH;
        assert_eq!(field_of(parse(V2, &cs)), "uncomp_info");
    }

    /// A batch blob: chunk 1 and 2 share batch 0 (0x900 bytes uncompressed, 0x200 stored).
    fn batch_meta(batch_usize: u32, index: u32) -> Result<BlobMeta, FormatError> {
        let mut cs = chunks();
        cs[1] = BlobMetaChunk {
            compressed_size: 0,
            uncompressed_size: 0x800,
            flags: CiFlags::COMPRESSED | CiFlags::BATCH,
            data: u64::from(index) << 32,
            ..cs[1]
        };
        cs[2] = BlobMetaChunk {
            compressed_offset: 0x1234,
            compressed_size: 0,
            uncompressed_size: 0x100,
            flags: CiFlags::COMPRESSED | CiFlags::BATCH,
            data: 0x800,
            ..cs[2]
        };
        let mut ci = encode_ci_v2(&cs).unwrap();
        ci.extend_from_slice(&0x200u32.to_le_bytes());
        ci.extend_from_slice(&batch_usize.to_le_bytes());
        ci.extend_from_slice(&[0; 32]);
        let h = BlobMetaHeader {
            ci_zran_offset: 72,
            ci_zran_size: 40,
            ci_zran_count: 1,
            ..header_for(V2 | BlobFeatures::BATCH, 3, &ci)
        };
        BlobMeta::parse(&h.to_bytes(), &ci)
    }

    #[test]
    fn batch_entries_point_into_their_batch() {
        let meta = batch_meta(0x900, 0).unwrap();
        assert_eq!(meta.contexts().len(), 40);
        assert_eq!(
            meta.batch_context(0),
            Some(BatchContext {
                compressed_size: 0x200,
                uncompressed_batch_size: 0x900
            })
        );
        assert_eq!(meta.batch_context(1), None);
        assert_eq!(meta.chunks()[2].batch(), Some((0, 0x800)));
        // The batch's stored size counts: 0x1234 + 0x200 must fit.
        meta.validate_against(0x1434, 0x5_1000).unwrap();
        let err = meta.validate_against(0x1433, 0x5_1000).unwrap_err();
        assert!(err.to_string().contains("chunk 1:"), "{err}");

        let err = batch_meta(0x8ff, 0).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::BadField {
                    field: "data",
                    offset: 64,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = batch_meta(0x900, 1).unwrap_err();
        assert!(
            err.to_string()
                .contains("chunk 1: batch index out of range"),
            "{err}"
        );
        let err = batch_meta(0x100, 0).unwrap_err();
        assert!(
            err.to_string().contains("chunk 1:"),
            "stored 0x200 > batch 0x100: {err}"
        );
    }

    #[test]
    fn zran_entries_stay_inside_their_context() {
        let zran = |offset: u32| {
            let c = BlobMetaChunk {
                compressed_offset: 0x10,
                compressed_size: 0x30,
                uncompressed_offset: 0,
                uncompressed_size: 0x1000,
                flags: CiFlags::COMPRESSED | CiFlags::ZRAN,
                data: u64::from(offset),
            };
            let mut ci = encode_ci_v2(&[c]).unwrap();
            let mut ctx = [0u8; 40];
            ctx[28..32].copy_from_slice(&0x2000u32.to_le_bytes());
            ci.extend_from_slice(&ctx);
            ci.extend_from_slice(&[7; 16]); // a dictionary
            let h = BlobMetaHeader {
                ci_zran_offset: 24,
                ci_zran_size: 56,
                ci_zran_count: 1,
                ..header_for(V2 | BlobFeatures::ZRAN | BlobFeatures::SEPARATE, 1, &ci)
            };
            BlobMeta::parse(&h.to_bytes(), &ci)
        };
        let meta = zran(0x1000).unwrap();
        assert_eq!(meta.contexts().len(), 56);
        assert_eq!(meta.batch_context(0), None, "not a batch blob");
        assert_eq!(field_of(zran(0x1001)), "data");
        assert_eq!(field_of(zran(0x2000)), "data");
    }

    #[test]
    fn parse_from_blob_reads_every_ci_compressor() {
        let ci = encode_ci_v2(&chunks()).unwrap();
        // A highly compressible array, so lz4 and zstd really compress it.
        let many: Vec<BlobMetaChunk> = (0..100u64)
            .map(|i| BlobMetaChunk {
                compressed_offset: i * 0x100,
                compressed_size: 0x100,
                uncompressed_offset: i << 12,
                uncompressed_size: 0x1000,
                flags: CiFlags::COMPRESSED,
                data: 0,
            })
            .collect();
        let many_ci = encode_ci_v2(&many).unwrap();
        for (cs, raw) in [(chunks(), &ci), (many.clone(), &many_ci)] {
            for algo in [Compressor::None, Compressor::Lz4Block, Compressor::Zstd] {
                let (blob, h) = blob_with_meta(V2, algo, 0x6400, raw, cs.len());
                if cs.len() == 100 && algo != Compressor::None {
                    assert!(h.ci_compressed_size < h.ci_uncompressed_size);
                }
                let meta = BlobMeta::parse_from_blob(
                    &blob,
                    h.ci_offset,
                    h.ci_compressed_size,
                    h.compressor().unwrap(),
                )
                .unwrap();
                assert_eq!(meta.chunks(), cs.as_slice(), "{algo:?}");
                meta.validate_against(0x6400, 100 << 12).unwrap();
                let section = &blob[h.ci_offset as usize..];
                assert_eq!(BlobMeta::parse_from_section(section).unwrap(), meta);
            }
        }
    }

    #[test]
    fn parse_from_blob_rejects_disagreement_truncation_and_corruption() {
        let many: Vec<BlobMetaChunk> = (0..64u64)
            .map(|i| BlobMetaChunk {
                compressed_offset: i * 0x100,
                compressed_size: 0x100,
                uncompressed_offset: i << 12,
                uncompressed_size: 0x1000,
                flags: CiFlags::COMPRESSED,
                data: 0,
            })
            .collect();
        let ci = encode_ci_v2(&many).unwrap();
        let (blob, h) = blob_with_meta(V2, Compressor::Zstd, 0x4000, &ci, 64);
        let (off, csize) = (h.ci_offset, h.ci_compressed_size);
        let format_field = |r: Result<BlobMeta, BlobMetaError>| match r {
            Err(BlobMetaError::Format(e)) => e.field_name(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            format_field(BlobMeta::parse_from_blob(
                &blob,
                off,
                csize,
                Compressor::Lz4Block
            )),
            Some("s_ci_compressor")
        );
        assert_eq!(
            format_field(BlobMeta::parse_from_blob(
                &blob,
                off - 1,
                csize + 1,
                Compressor::Zstd
            )),
            Some("s_ci_compressed_size"),
            "the stored array is claimed to start 1 byte early"
        );
        assert_eq!(
            format_field(BlobMeta::parse_from_blob(
                &blob,
                off,
                csize - 1,
                Compressor::Zstd
            )),
            Some("magic")
        );
        for (o, s) in [
            (off, csize + 1),
            (u64::MAX, csize),
            (off, u64::MAX),
            (blob.len() as u64, 0),
        ] {
            assert!(matches!(
                BlobMeta::parse_from_blob(&blob, o, s, Compressor::Zstd),
                Err(BlobMetaError::Format(FormatError::Invalid { .. }))
            ));
        }
        // The header points elsewhere than the blob table.
        let mut moved = blob[..off as usize].to_vec();
        moved.push(0);
        moved.extend_from_slice(&blob[off as usize..]);
        assert_eq!(
            format_field(BlobMeta::parse_from_blob(
                &moved,
                off + 1,
                csize,
                Compressor::Zstd
            )),
            Some("s_ci_offset")
        );
        // Corrupt compressed bytes.
        let mut bad = blob.clone();
        bad[off as usize] ^= 0xff;
        let err = BlobMeta::parse_from_blob(&bad, off, csize, Compressor::Zstd).unwrap_err();
        assert!(matches!(err, BlobMetaError::Decompress { .. }), "{err:?}");
        assert!(std::error::Error::source(&err).is_some());
        // A gzip CI array is a known code but cannot be read here.
        let mut gz = h;
        gz.ci_compressor = Compressor::GZip.into();
        let mut section = blob[off as usize..off as usize + csize as usize].to_vec();
        section.extend_from_slice(&gz.to_bytes());
        assert!(matches!(
            BlobMeta::parse_from_section(&section),
            Err(BlobMetaError::Decompress {
                source: CodecError::UnsupportedCompressor { .. }
            })
        ));
        assert!(matches!(
            BlobMeta::parse_from_section(&[0; 4095]),
            Err(BlobMetaError::Format(FormatError::Truncated { .. }))
        ));
    }

    #[test]
    fn ci_arrays_larger_than_a_chunk_decompress() {
        // 700,000 v2 entries: 16.8 MB, more than codec::decompress's 16 MiB chunk limit.
        let n = 700_000u64;
        let cs: Vec<BlobMetaChunk> = (0..n)
            .map(|i| BlobMetaChunk {
                compressed_offset: i * 0x1000,
                compressed_size: 0x1000,
                uncompressed_offset: i << 12,
                uncompressed_size: 0x1000,
                flags: CiFlags::empty(),
                data: 0,
            })
            .collect();
        let ci = encode_ci_v2(&cs).unwrap();
        assert!(ci.len() > RAFS_MAX_CHUNK_SIZE as usize);
        for algo in [Compressor::Lz4Block, Compressor::Zstd, Compressor::None] {
            let stored = match algo {
                Compressor::Lz4Block => lz4_flex::block::compress(&ci),
                Compressor::Zstd => zstd::bulk::compress(&ci, 3).unwrap(),
                _ => ci.clone(),
            };
            let h =
                BlobMetaHeader::new(V2, algo, n as u32, 0, stored.len() as u64, ci.len() as u64);
            let mut section = stored;
            section.extend_from_slice(&h.to_bytes());
            let meta = BlobMeta::parse_from_section(&section).unwrap();
            assert_eq!(meta.chunks().len(), n as usize, "{algo:?}");
            assert_eq!(meta.chunks()[123_456], cs[123_456]);
        }
    }

    #[test]
    fn large_decompression_is_bounded_by_the_data() {
        let size = BLOB_META_MAX_CI_SIZE as usize;
        // LZ4 cannot expand 10 bytes to 1 GiB: rejected before allocating.
        assert!(matches!(
            decompress_ci(Compressor::Lz4Block, &[0; 10], size),
            Err(CodecError::Corrupt { .. })
        ));
        assert!(matches!(
            decompress_ci(Compressor::Zstd, &[0x28, 0xb5, 0x2f, 0xfd, 0, 0], size),
            Err(CodecError::Corrupt { .. } | CodecError::SizeMismatch { .. })
        ));
        // A real frame that inflates to more than claimed stops one byte past the claim.
        let bomb = zstd::bulk::compress(&vec![0u8; 20 << 20], 3).unwrap();
        assert!(matches!(
            decompress_ci(Compressor::Zstd, &bomb, 17 << 20),
            Err(CodecError::SizeMismatch { actual, .. }) if actual == (17 << 20) + 1
        ));
        assert!(matches!(
            decompress_ci(Compressor::None, &[0; 10], 17 << 20),
            Err(CodecError::SizeMismatch { actual: 10, .. })
        ));
        assert!(matches!(
            decompress_ci(Compressor::GZip, &[0; 10], 17 << 20),
            Err(CodecError::UnsupportedCompressor { .. })
        ));
    }

    #[test]
    fn cache_file_is_padded_data_then_header() {
        let ci = encode_ci_v2(&chunks()).unwrap();
        let h = header_for(V2, 3, &ci);
        let file = BlobMeta::encode_cache_file(&h, &ci).unwrap();
        assert_eq!(file.len(), 4096 + 4096);
        assert_eq!(&file[..72], ci.as_slice());
        assert!(file[72..4096].iter().all(|&b| b == 0));
        assert_eq!(&file[4096..], &h.to_bytes());
        let meta = BlobMeta::parse_cache_file(&file).unwrap();
        assert_eq!(meta.chunks(), chunks().as_slice());

        for bad in [&file[..file.len() - 1], &file[4096..], &file[1..]] {
            assert!(BlobMeta::parse_cache_file(bad).is_err());
        }
        let mut longer = vec![0u8; 4096];
        longer.extend_from_slice(&file);
        assert!(matches!(
            BlobMeta::parse_cache_file(&longer),
            Err(FormatError::Invalid {
                what: "BlobMeta",
                ..
            })
        ));
        assert!(matches!(
            BlobMeta::parse_cache_file(&[0; 100]),
            Err(FormatError::Truncated { .. })
        ));
        assert_eq!(
            field_of(BlobMeta::encode_cache_file(&h, &ci[..48])),
            "s_ci_uncompressed_size"
        );
        // An exact multiple of 4 KiB gets no padding.
        let cs: Vec<BlobMetaChunk> = (0..256u64)
            .map(|i| BlobMetaChunk {
                compressed_offset: i,
                compressed_size: 1,
                uncompressed_offset: i << 12,
                uncompressed_size: 1,
                flags: CiFlags::empty(),
                data: 0,
            })
            .collect();
        let v1 = encode_ci_v1(&cs).unwrap();
        let h = header_for(BlobFeatures::empty(), 256, &v1);
        let file = BlobMeta::encode_cache_file(&h, &v1).unwrap();
        assert_eq!(file.len(), 4096 + 4096);
        assert_eq!(
            BlobMeta::parse_cache_file(&file).unwrap().chunks(),
            cs.as_slice()
        );
    }

    #[test]
    fn validate_against_names_the_chunk_outside_the_blob() {
        let ci = encode_ci_v2(&chunks()).unwrap();
        let meta = BlobMeta::parse(&header_for(V2, 3, &ci).to_bytes(), &ci).unwrap();
        // Chunk 2 ends at 0x1b34 stored and 0x5_1000 uncompressed.
        meta.validate_against(0x1b34, 0x5_1000).unwrap();
        meta.validate_against(0x1b34, 0x5_0001).unwrap(); // rounded up to 4 KiB
        let err = meta.validate_against(0x1b33, 0x5_1000).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::BadField {
                    field: "comp_info",
                    offset: 56,
                    value: 0x1b34,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("chunk 2:"), "{err}");
        let err = meta.validate_against(0x1b34, 0x5_0000).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::BadField {
                    field: "uncomp_info",
                    offset: 48,
                    value: 0x5_1000,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = meta.validate_against(0x1000, 0).unwrap_err();
        assert!(err.to_string().contains("chunk 0:"), "{err}");
        meta.validate_against(u64::MAX, u64::MAX).unwrap();

        let v1 = encode_ci_v1(&chunks_v1()).unwrap();
        let meta =
            BlobMeta::parse(&header_for(BlobFeatures::empty(), 3, &v1).to_bytes(), &v1).unwrap();
        let err = meta.validate_against(0x1b33, 0x5_1000).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::BadField {
                    what: "ChunkInfoV1",
                    offset: 40,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn chunk_table_entries_map_to_ci_entries() {
        let c = ChunkInfo {
            flags: BlobChunkFlags::COMPRESSED | BlobChunkFlags::HAS_CRC32,
            compressed_size: 0x1234,
            uncompressed_size: 0x1_0000,
            compressed_offset: 0,
            uncompressed_offset: 0,
            crc32: 0xdead_beef,
            ..ChunkInfo::default()
        };
        assert_eq!(BlobMetaChunk::from_chunk_info(&c), chunks()[0]);
        let plain = ChunkInfo {
            flags: BlobChunkFlags::ENCRYPTED | BlobChunkFlags::BATCH,
            crc32: 5,
            ..c
        };
        let m = BlobMetaChunk::from_chunk_info(&plain);
        assert_eq!(m.flags, CiFlags::ENCRYPTED | CiFlags::BATCH);
        assert_eq!(m.data, 0, "no HAS_CRC32: the crc field is not carried");
    }

    #[test]
    fn ci_flags_debug_lists_names() {
        assert_eq!(
            format!("{:?}", CiFlags::COMPRESSED | CiFlags::HAS_CRC32),
            "CiFlags(COMPRESSED | HAS_CRC32)"
        );
        assert_eq!(
            format!("{:?}", CiFlags::from_bits(0xa2)),
            "CiFlags(ZRAN | 0xa0)"
        );
        assert_eq!(format!("{:?}", CiFlags::empty()), "CiFlags(0x0)");
        assert_eq!(CiFlags::KNOWN.bits(), 0x1f);
    }

    /// Reads the blobs Nydus 2.4.4 made (tests/fixtures) and checks blob.meta against the
    /// bootstrap's blob table and chunk table.
    #[test]
    fn reads_blob_meta_written_by_nydus_2_4_4() {
        use crate::v6::Bootstrap;
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nydus-2.4.4");
        let check = |blob: &[u8], bootstrap: &[u8]| {
            let b = Bootstrap::parse(bootstrap).unwrap();
            let entry = &b.blobs()[0];
            let meta = BlobMeta::parse_from_blob(
                blob,
                entry.ci_offset,
                entry.ci_compressed_size,
                entry.ci_compressor().unwrap(),
            )
            .unwrap();
            let h = meta.header();
            assert_eq!(h.ci_entries, entry.chunk_count);
            assert_eq!(h.ci_uncompressed_size, entry.ci_uncompressed_size);
            assert!(!h.is_v2(), "Nydus 2.4.4 writes CI v1 for plain blobs");
            assert!(h.features.contains(BlobFeatures::ALIGNED));
            meta.validate_against(entry.compressed_size, entry.uncompressed_size)
                .unwrap();
            assert_eq!(meta.chunks().len() as u64, b.chunk_info_count());
            for i in 0..b.chunk_info_count() {
                let c = b.chunk_info(i).unwrap();
                let m = meta.chunks()[c.index as usize];
                assert_eq!(m.compressed_offset, c.compressed_offset);
                assert_eq!(m.compressed_size, c.compressed_size);
                assert_eq!(m.uncompressed_offset, c.uncompressed_offset);
                assert_eq!(m.uncompressed_size, c.uncompressed_size);
                assert_eq!(m.is_compressed(), c.is_compressed());
            }
            meta
        };
        let mut seen = 0;
        for dir in std::fs::read_dir(root).unwrap() {
            let dir = dir.unwrap().path();
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("v6-") && name.ends_with("-inline") {
                let blob = std::fs::read(dir.join("blob")).unwrap();
                let sections = locate_sections(&blob).unwrap();
                let toc = Toc::parse_from_tail(&blob[blob.len() - 4096..]).unwrap();
                let boot = toc.find(TOC_ENTRY_BOOTSTRAP).unwrap();
                let stored =
                    &blob[boot.compressed_offset as usize..][..boot.compressed_size as usize];
                let mut bootstrap = Vec::new();
                codec::decompress(
                    boot.compressor().unwrap(),
                    stored,
                    boot.uncompressed_size as usize,
                    &mut bootstrap,
                )
                .unwrap();
                let meta = check(&blob, &bootstrap);
                // The TOC's blob.meta entry: stored CI array, digest of the uncompressed one.
                let e = toc.find(TOC_ENTRY_BLOB_META).unwrap();
                assert_eq!(e.compressed_offset, meta.header().ci_offset);
                assert_eq!(e.compressed_size, meta.header().ci_compressed_size);
                assert_eq!(e.uncompressed_size, meta.header().ci_uncompressed_size);
                let ci = encode_ci_v1(meta.chunks()).unwrap();
                assert_eq!(
                    codec::digest(crate::Digester::Sha256, &ci),
                    e.uncompressed_digest
                );
                // The blob.meta tar section is the stored array plus the header.
                let s = sections
                    .iter()
                    .find(|s| s.name == TOC_ENTRY_BLOB_META)
                    .unwrap();
                let section = &blob[s.offset as usize..(s.offset + s.size) as usize];
                assert_eq!(BlobMeta::parse_from_section(section).unwrap(), meta);
                seen += 1;
            } else if name.starts_with("v6-") {
                let bootstrap = std::fs::read(dir.join("bootstrap")).unwrap();
                let blob_dir = dir.join("blobs");
                let blob_path = std::fs::read_dir(&blob_dir)
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap();
                let blob = std::fs::read(blob_path.path()).unwrap();
                check(&blob, &bootstrap);
                assert!(
                    locate_sections(&blob).is_err(),
                    "no tar headers without inline meta or TOC"
                );
                seen += 1;
            }
        }
        assert_eq!(seen, 8);
    }

    fn v2_chunk() -> impl Strategy<Value = BlobMetaChunk> {
        (
            0u64..1 << 40,
            0u32..=0xff_ffff,
            0u64..1 << 32,
            1u32..=1 << 24,
            0u8..0x20,
            any::<u64>(),
        )
            .prop_map(|(co, cs, uo, us, flags, data)| {
                let mut flags = CiFlags::from_bits(flags);
                if flags.contains(CiFlags::HAS_CRC32)
                    && (flags.contains(CiFlags::BATCH) || flags.contains(CiFlags::ZRAN))
                {
                    flags = CiFlags::from_bits(flags.bits() & !CiFlags::HAS_CRC32.bits());
                }
                let data = if flags.contains(CiFlags::HAS_CRC32) {
                    data | 1
                } else {
                    data
                };
                let raw =
                    !flags.contains(CiFlags::COMPRESSED) && !flags.contains(CiFlags::ENCRYPTED);
                let us = if raw { us.min(0xff_ffff) } else { us };
                BlobMetaChunk {
                    compressed_offset: co,
                    compressed_size: if raw { us } else { cs },
                    uncompressed_offset: uo << 12,
                    uncompressed_size: us,
                    flags,
                    data,
                }
            })
    }

    fn v1_chunk() -> impl Strategy<Value = BlobMetaChunk> {
        (0u64..1 << 40, 1u32..=1 << 24, 0u64..1 << 32, 1u32..=1 << 24).prop_map(
            |(co, cs, uo, us)| BlobMetaChunk {
                compressed_offset: co,
                compressed_size: cs,
                uncompressed_offset: uo << 12,
                uncompressed_size: us,
                flags: if cs == us {
                    CiFlags::empty()
                } else {
                    CiFlags::COMPRESSED
                },
                data: 0,
            },
        )
    }

    fn any_header() -> impl Strategy<Value = BlobMetaHeader> {
        (any::<[u32; 5]>(), any::<[u64; 5]>(), any::<u32>()).prop_map(|(w, d, magic2)| {
            BlobMetaHeader {
                magic: w[0],
                features: BlobFeatures::from_bits(w[1]),
                ci_compressor: w[2],
                ci_entries: w[3],
                ci_offset: d[0],
                ci_compressed_size: d[1],
                ci_uncompressed_size: d[2],
                ci_zran_offset: d[3],
                ci_zran_size: d[4],
                ci_zran_count: w[4],
                magic2,
            }
        })
    }

    proptest! {
        #[test]
        fn header_round_trips(h in any_header()) {
            prop_assert_eq!(BlobMetaHeader::decode(&h.to_bytes()), Ok(h));
        }

        #[test]
        fn header_decode_and_validate_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..4200),
            h in any_header(),
        ) {
            if let Ok(h) = BlobMetaHeader::decode(&bytes) {
                let _ = h.validate();
            }
            let _ = h.validate();
        }

        #[test]
        fn any_entry_bytes_round_trip_exactly(b16 in any::<[u8; 16]>(), b24 in any::<[u8; 24]>()) {
            prop_assert_eq!(ChunkInfoV1::decode(&b16).unwrap().to_bytes(), b16);
            prop_assert_eq!(ChunkInfoV2::decode(&b24).unwrap().to_bytes(), b24);
            let _ = ChunkInfoV2::decode(&b24).unwrap().validate();
        }

        #[test]
        fn v2_encode_then_decode_is_identity(c in v2_chunk()) {
            let e = ChunkInfoV2::encode(&c).unwrap();
            prop_assert_eq!(ChunkInfoV2::decode(&e.to_bytes()).unwrap().chunk(), c);
        }

        #[test]
        fn v1_encode_then_decode_is_identity(c in v1_chunk()) {
            let e = ChunkInfoV1::encode(&c).unwrap();
            prop_assert_eq!(ChunkInfoV1::decode(&e.to_bytes()).unwrap().chunk(), c);
        }

        #[test]
        fn unaligned_offsets_never_encode(c in v2_chunk(), low in 1u64..0x1000) {
            let c = BlobMetaChunk { uncompressed_offset: c.uncompressed_offset | low, ..c };
            prop_assert!(ChunkInfoV2::encode(&c).is_err());
            prop_assert!(ChunkInfoV1::encode(&c).is_err());
        }

        #[test]
        fn meta_round_trips_through_cache_file_and_blob(
            cs in proptest::collection::vec(v2_chunk(), 1..20),
            algo in prop_oneof![Just(Compressor::None), Just(Compressor::Lz4Block), Just(Compressor::Zstd)],
        ) {
            // Context-dependent flags are not valid in a plain blob.
            let cs: Vec<BlobMetaChunk> = cs
                .into_iter()
                .map(|c| {
                    let flags = CiFlags::from_bits(
                        c.flags.bits() & !(CiFlags::ZRAN.bits() | CiFlags::BATCH.bits()),
                    );
                    BlobMetaChunk { flags, ..c }
                })
                .collect();
            let ci = encode_ci_v2(&cs).unwrap();
            let features = V2 | BlobFeatures::SEPARATE;
            let (blob, h) = blob_with_meta(features, algo, 10, &ci, cs.len());
            let meta = BlobMeta::parse_from_blob(&blob, 10, h.ci_compressed_size, h.compressor().unwrap()).unwrap();
            prop_assert_eq!(meta.chunks(), cs.as_slice());
            let file = BlobMeta::encode_cache_file(&h, &ci).unwrap();
            prop_assert_eq!(BlobMeta::parse_cache_file(&file).unwrap(), meta);
        }

        #[test]
        fn parsers_never_panic_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            entries in 1u32..40,
            features in any::<u32>(),
            zran in (0u64..1000, 0u64..1000, 0u32..40),
            algo in 0u32..5,
        ) {
            // Arbitrary CI data under a header that matches it in size.
            let h = BlobMetaHeader {
                ci_zran_offset: zran.0,
                ci_zran_size: zran.1,
                ci_zran_count: zran.2,
                ci_compressor: algo,
                ..BlobMetaHeader::new(
                    BlobFeatures::from_bits(features & 0x0fff),
                    Compressor::None,
                    entries,
                    0,
                    bytes.len() as u64,
                    bytes.len() as u64,
                )
            };
            if let Ok(m) = BlobMeta::parse(&h.to_bytes(), &bytes) {
                let _ = m.validate_against(1000, 1000);
                for i in 0..3 {
                    let _ = m.batch_context(i);
                }
            }
            let _ = BlobMeta::parse(&bytes, &bytes);
            let _ = BlobMeta::parse_cache_file(&bytes);
            let mut section = bytes.clone();
            section.extend_from_slice(&h.to_bytes());
            let _ = BlobMeta::parse_from_section(&section);
            let _ = BlobMeta::parse_from_blob(&section, 0, bytes.len() as u64, Compressor::Zstd);
            let _ = BlobMeta::parse_cache_file(&section);
        }
    }
}
