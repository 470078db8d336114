//! Flag words and algorithm codes shared by RAFS v5, RAFS v6 and the blob formats.
//!
//! The flag types are plain newtypes over the on-disk integer: they keep unknown bits, so a value
//! read from disk is written back unchanged. [`Compressor`] and [`Digester`] are the numeric codes
//! stored in blob tables and blob.meta headers.

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign};

use crate::FormatError;

macro_rules! bit_flags {
    (
        $(#[$meta:meta])*
        $name:ident: $ty:ty {
            $( $(#[$fmeta:meta])* $flag:ident = $val:expr; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name($ty);

        impl $name {
            $( $(#[$fmeta])* pub const $flag: Self = Self($val); )*

            /// Every bit that has a name.
            pub const KNOWN: Self = Self(0 $(| $val)*);

            const NAMES: &'static [(&'static str, $ty)] = &[$((stringify!($flag), $val)),*];

            /// No bit set.
            pub const fn empty() -> Self {
                Self(0)
            }

            /// The flags of an on-disk word, unknown bits included.
            pub const fn from_bits(bits: $ty) -> Self {
                Self(bits)
            }

            /// The on-disk word.
            pub const fn bits(self) -> $ty {
                self.0
            }

            /// Whether every bit of `other` is set.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// Whether any bit of `other` is set.
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            /// Sets the bits of `other`.
            pub fn insert(&mut self, other: Self) {
                self.0 |= other.0;
            }

            /// Clears the bits of `other`.
            pub fn remove(&mut self, other: Self) {
                self.0 &= !other.0;
            }

            /// Bits without a name.
            pub const fn unknown_bits(self) -> $ty {
                self.0 & !Self::KNOWN.0
            }
        }

        impl BitOr for $name {
            type Output = Self;
            fn bitor(self, rhs: Self) -> Self {
                Self(self.0 | rhs.0)
            }
        }

        impl BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: Self) {
                self.0 |= rhs.0;
            }
        }

        impl BitAnd for $name {
            type Output = Self;
            fn bitand(self, rhs: Self) -> Self {
                Self(self.0 & rhs.0)
            }
        }

        impl From<$ty> for $name {
            fn from(bits: $ty) -> Self {
                Self(bits)
            }
        }

        impl From<$name> for $ty {
            fn from(flags: $name) -> $ty {
                flags.0
            }
        }

        /// Lists the named bits, then any unknown bits in hex: `Name(A | B | 0x100)`.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                let mut first = true;
                for (name, bit) in Self::NAMES {
                    if self.0 & bit != 0 {
                        if !first {
                            f.write_str(" | ")?;
                        }
                        f.write_str(name)?;
                        first = false;
                    }
                }
                let unknown = self.unknown_bits();
                if unknown != 0 || first {
                    if !first {
                        f.write_str(" | ")?;
                    }
                    write!(f, "{unknown:#x}")?;
                }
                f.write_str(")")
            }
        }
    };
}

bit_flags! {
    /// Filesystem-wide flags (`s_flags` of the v5 superblock and of the v6 extended superblock).
    RafsSuperFlags: u64 {
        /// Chunks are not compressed.
        COMPRESSION_NONE = 0x0000_0001;
        /// Chunks are compressed with raw LZ4 blocks.
        COMPRESSION_LZ4 = 0x0000_0002;
        /// Chunk digests are BLAKE3.
        HASH_BLAKE3 = 0x0000_0004;
        /// Chunk digests are SHA-256.
        HASH_SHA256 = 0x0000_0008;
        /// Inodes carry their uid/gid (otherwise nydusd reports its own euid/egid).
        EXPLICIT_UID_GID = 0x0000_0010;
        /// Some inode has extended attributes.
        HAS_XATTR = 0x0000_0020;
        /// Chunks are gzip-compressed (stargz data).
        COMPRESSION_GZIP = 0x0000_0040;
        /// Chunks are zstd-compressed.
        COMPRESSION_ZSTD = 0x0000_0080;
        /// Chunk digests are inlined in the data blob (v6).
        INLINED_CHUNK_DIGEST = 0x0000_0100;
        /// Tarfs mode: the data blob is a raw tar file (Nydus spells it `TARTFS_MODE`).
        TARTFS_MODE = 0x0000_0200;
        /// Data is not encrypted.
        ENCRYPTION_NONE = 0x0100_0000;
        /// Data is encrypted with AES-128-XTS (Nydus spells it `ENCRYPTION_ASE_128_XTS`).
        ENCRYPTION_ASE_128_XTS = 0x0200_0000;
        /// Reserved compat bit 5.
        PRESERVED_COMPAT_5 = 0x0400_0000;
        /// Reserved compat bit 4.
        PRESERVED_COMPAT_4 = 0x0800_0000;
        /// Reserved compat bit 3.
        PRESERVED_COMPAT_3 = 0x1000_0000;
        /// Reserved compat bit 2.
        PRESERVED_COMPAT_2 = 0x2000_0000;
        /// Reserved compat bit 1.
        PRESERVED_COMPAT_1 = 0x4000_0000;
        /// Reserved compat bit 0.
        PRESERVED_COMPAT_0 = 0x8000_0000;
    }
}

impl RafsSuperFlags {
    /// All compression bits.
    pub const COMPRESSION_MASK: Self = Self(
        Self::COMPRESSION_NONE.0
            | Self::COMPRESSION_LZ4.0
            | Self::COMPRESSION_GZIP.0
            | Self::COMPRESSION_ZSTD.0,
    );
    /// All digest bits.
    pub const HASH_MASK: Self = Self(Self::HASH_BLAKE3.0 | Self::HASH_SHA256.0);

    /// The compressor, if exactly one compression bit is set.
    pub fn compressor(self) -> Option<Compressor> {
        Compressor::ALL
            .into_iter()
            .find(|c| (self & Self::COMPRESSION_MASK) == c.super_flag())
    }

    /// The digest algorithm, if exactly one hash bit is set.
    pub fn digester(self) -> Option<Digester> {
        Digester::ALL
            .into_iter()
            .find(|d| (self & Self::HASH_MASK) == d.super_flag())
    }

    /// These flags with the compression bits replaced by `c`'s.
    pub fn with_compressor(mut self, c: Compressor) -> Self {
        self.remove(Self::COMPRESSION_MASK);
        self | c.super_flag()
    }

    /// These flags with the hash bits replaced by `d`'s.
    pub fn with_digester(mut self, d: Digester) -> Self {
        self.remove(Self::HASH_MASK);
        self | d.super_flag()
    }
}

bit_flags! {
    /// Features of one data blob (v5 extended blob table, v6 blob table, blob.meta header).
    BlobFeatures: u32 {
        /// Uncompressed chunks are 4 KiB aligned in the uncompressed address space (v6, non-tarfs).
        ALIGNED = 0x0000_0001;
        /// The bootstrap is inlined in the data blob.
        INLINED_FS_META = 0x0000_0002;
        /// blob.meta holds 24-byte v2 chunk infos.
        CHUNK_INFO_V2 = 0x0000_0004;
        /// Chunk infos carry zlib random-access contexts (the data blob is a gzip OCI layer).
        ZRAN = 0x0000_0008;
        /// Data and blob.meta live in different blobs.
        SEPARATE = 0x0000_0010;
        /// The chunk digest array is stored in the blob.
        INLINED_CHUNK_DIGEST = 0x0000_0020;
        /// The data blob is a raw tar file.
        TARFS = 0x0000_0040;
        /// Small chunks are merged into batch chunks.
        BATCH = 0x0000_0080;
        /// Chunks are encrypted.
        ENCRYPTED = 0x0000_0100;
        /// Generated from a chunk dictionary.
        IS_CHUNKDICT_GENERATED = 0x0000_0200;
        /// Separated together with prefetch files.
        IS_SEPARATED_WITH_PREFETCH_FILES = 0x0000_0400;
        /// Data lives in an external (model) backend.
        EXTERNAL = 0x0000_0800;
        /// Sections are followed by tar headers.
        HAS_TAR_HEADER = 0x1000_0000;
        /// The blob ends with a table of contents.
        HAS_TOC = 0x2000_0000;
        /// Built by nydus-image >= 2.2 (tar headers and TOC capable).
        CAP_TAR_TOC = 0x4000_0000;
        /// Internal to the v5 loader; never valid on disk (Nydus: `_V5_NO_EXT_BLOB_TABLE`).
        V5_NO_EXT_BLOB_TABLE = 0x8000_0000;
    }
}

impl BlobFeatures {
    /// Bits of the incompat range (`0x0000_f000`): a reader must reject any of them.
    pub const fn incompat_bits(self) -> u32 {
        self.0 & 0x0000_ffff & !0x0000_0fff
    }
}

bit_flags! {
    /// Per-chunk flags (`flags` of a chunk info entry).
    BlobChunkFlags: u32 {
        /// The stored data is compressed.
        COMPRESSED = 0x0000_0001;
        /// A hole chunk (Nydus: `_HOLECHUNK`, unused).
        HOLE_CHUNK = 0x0000_0002;
        /// The stored data is encrypted.
        ENCRYPTED = 0x0000_0004;
        /// Part of a batch chunk.
        BATCH = 0x0000_0008;
        /// The `crc32` field holds the CRC32C of the uncompressed data.
        HAS_CRC32 = 0x0000_0010;
    }
}

/// Chunk compression algorithm (`compression_algo`, `ci_compressor` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Compressor {
    /// Stored as is.
    None = 0,
    /// Raw LZ4 block format: no frame, no size prefix.
    Lz4Block = 1,
    /// gzip (stargz data only).
    GZip = 2,
    /// A zstd frame.
    Zstd = 3,
}

impl Compressor {
    /// Every compressor, in code order.
    pub const ALL: [Self; 4] = [Self::None, Self::Lz4Block, Self::GZip, Self::Zstd];

    /// The [`RafsSuperFlags`] bit naming this compressor.
    pub const fn super_flag(self) -> RafsSuperFlags {
        match self {
            Self::None => RafsSuperFlags::COMPRESSION_NONE,
            Self::Lz4Block => RafsSuperFlags::COMPRESSION_LZ4,
            Self::GZip => RafsSuperFlags::COMPRESSION_GZIP,
            Self::Zstd => RafsSuperFlags::COMPRESSION_ZSTD,
        }
    }
}

impl TryFrom<u32> for Compressor {
    type Error = FormatError;

    fn try_from(v: u32) -> Result<Self, FormatError> {
        Self::ALL
            .into_iter()
            .find(|c| *c as u32 == v)
            .ok_or(FormatError::Unknown {
                what: "compressor",
                value: v.into(),
            })
    }
}

impl From<Compressor> for u32 {
    fn from(c: Compressor) -> u32 {
        c as u32
    }
}

/// Chunk digest algorithm (`digest_algo` code); digests are 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Digester {
    /// BLAKE3 (the default).
    Blake3 = 0,
    /// SHA-256 (tarfs, TOC entries, blob.meta digests).
    Sha256 = 1,
}

impl Digester {
    /// Every digest algorithm, in code order.
    pub const ALL: [Self; 2] = [Self::Blake3, Self::Sha256];

    /// The [`RafsSuperFlags`] bit naming this algorithm.
    pub const fn super_flag(self) -> RafsSuperFlags {
        match self {
            Self::Blake3 => RafsSuperFlags::HASH_BLAKE3,
            Self::Sha256 => RafsSuperFlags::HASH_SHA256,
        }
    }
}

impl TryFrom<u32> for Digester {
    type Error = FormatError;

    fn try_from(v: u32) -> Result<Self, FormatError> {
        Self::ALL
            .into_iter()
            .find(|d| *d as u32 == v)
            .ok_or(FormatError::Unknown {
                what: "digest algorithm",
                value: v.into(),
            })
    }
}

impl From<Digester> for u32 {
    fn from(d: Digester) -> u32 {
        d as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_match_the_reference() {
        assert_eq!(RafsSuperFlags::COMPRESSION_ZSTD.bits(), 0x80);
        assert_eq!(RafsSuperFlags::TARTFS_MODE.bits(), 0x200);
        assert_eq!(RafsSuperFlags::ENCRYPTION_ASE_128_XTS.bits(), 0x0200_0000);
        assert_eq!(RafsSuperFlags::PRESERVED_COMPAT_0.bits(), 0x8000_0000);
        assert_eq!(BlobFeatures::EXTERNAL.bits(), 0x800);
        assert_eq!(BlobFeatures::CAP_TAR_TOC.bits(), 0x4000_0000);
        assert_eq!(BlobChunkFlags::HAS_CRC32.bits(), 0x10);
    }

    #[test]
    fn unknown_bits_survive_and_are_reported() {
        let f = RafsSuperFlags::from_bits(0x1_0000_0084);
        assert_eq!(f.bits(), 0x1_0000_0084);
        assert_eq!(f.unknown_bits(), 0x1_0000_0000);
        assert_eq!(
            format!("{f:?}"),
            "RafsSuperFlags(HASH_BLAKE3 | COMPRESSION_ZSTD | 0x100000000)"
        );
        assert_eq!(
            format!("{:?}", BlobChunkFlags::empty()),
            "BlobChunkFlags(0x0)"
        );
    }

    #[test]
    fn set_operations() {
        let mut f = BlobFeatures::ALIGNED | BlobFeatures::HAS_TOC;
        assert!(f.contains(BlobFeatures::ALIGNED));
        assert!(!f.contains(BlobFeatures::ALIGNED | BlobFeatures::ZRAN));
        assert!(f.intersects(BlobFeatures::ALIGNED | BlobFeatures::ZRAN));
        f.remove(BlobFeatures::ALIGNED);
        f.insert(BlobFeatures::BATCH);
        assert_eq!(f, BlobFeatures::HAS_TOC | BlobFeatures::BATCH);
    }

    #[test]
    fn blob_feature_incompat_range() {
        assert_eq!(BlobFeatures::KNOWN.incompat_bits(), 0);
        assert_eq!(BlobFeatures::from_bits(0x1000).incompat_bits(), 0x1000);
        assert_eq!(BlobFeatures::from_bits(0x8001).incompat_bits(), 0x8000);
    }

    #[test]
    fn compressor_codes_and_flags() {
        for (code, c) in Compressor::ALL.into_iter().enumerate() {
            let code = code as u32;
            assert_eq!(Compressor::try_from(code), Ok(c));
            assert_eq!(u32::from(c), code);
            let flags = RafsSuperFlags::HASH_BLAKE3.with_compressor(c);
            assert_eq!(flags.compressor(), Some(c));
        }
        assert_eq!(
            Compressor::try_from(4),
            Err(FormatError::Unknown {
                what: "compressor",
                value: 4
            })
        );
        assert_eq!(RafsSuperFlags::empty().compressor(), None);
        let two = RafsSuperFlags::COMPRESSION_ZSTD | RafsSuperFlags::COMPRESSION_LZ4;
        assert_eq!(two.compressor(), None);
        assert_eq!(
            two.with_compressor(Compressor::None),
            RafsSuperFlags::COMPRESSION_NONE
        );
    }

    #[test]
    fn digester_codes_and_flags() {
        assert_eq!(Digester::try_from(0), Ok(Digester::Blake3));
        assert_eq!(Digester::try_from(1), Ok(Digester::Sha256));
        assert!(Digester::try_from(2).is_err());
        assert_eq!(
            RafsSuperFlags::HASH_SHA256.digester(),
            Some(Digester::Sha256)
        );
        assert_eq!(RafsSuperFlags::HASH_MASK.digester(), None);
        assert_eq!(
            RafsSuperFlags::HASH_BLAKE3
                .with_digester(Digester::Sha256)
                .digester(),
            Some(Digester::Sha256)
        );
    }
}
