//! Chunk limits and the 80-byte chunk info entry shared by RAFS v5 (after each regular-file
//! inode) and RAFS v6 (the chunk info table at the end of the bootstrap).

use crate::le::{array, fixed, put, put_u32, put_u64, u32_at, u64_at};
use crate::{BlobChunkFlags, FormatError};

/// Default chunk size (1 MiB).
pub const RAFS_DEFAULT_CHUNK_SIZE: u32 = 0x10_0000;
/// Smallest allowed chunk size (4 KiB).
pub const RAFS_MIN_CHUNK_SIZE: u32 = 0x1000;
/// Largest allowed chunk size (16 MiB).
pub const RAFS_MAX_CHUNK_SIZE: u32 = 0x100_0000;
/// Most chunks one blob may hold (chunk indexes are 24 bits).
pub const RAFS_MAX_CHUNKS_PER_BLOB: u32 = 1 << 24;

/// Whether `size` is an allowed chunk size: a power of two in
/// [`RAFS_MIN_CHUNK_SIZE`]..=[`RAFS_MAX_CHUNK_SIZE`].
pub const fn is_valid_chunk_size(size: u32) -> bool {
    size.is_power_of_two() && size >= RAFS_MIN_CHUNK_SIZE && size <= RAFS_MAX_CHUNK_SIZE
}

/// One chunk of file data (Nydus `RafsV5ChunkInfo`, 80 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChunkInfo {
    /// @0: digest of the uncompressed chunk data.
    pub block_id: [u8; 32],
    /// @32: index of the blob holding the chunk in the blob table.
    pub blob_index: u32,
    /// @36: per-chunk flags.
    pub flags: BlobChunkFlags,
    /// @40: size of the stored (compressed) data.
    pub compressed_size: u32,
    /// @44: size of the uncompressed data.
    pub uncompressed_size: u32,
    /// @48: offset of the stored data in the blob.
    pub compressed_offset: u64,
    /// @56: offset in the blob's uncompressed address space.
    pub uncompressed_offset: u64,
    /// @64: offset of the chunk inside its file.
    pub file_offset: u64,
    /// @72: index of the chunk inside its blob (its blob.meta entry), from 0.
    pub index: u32,
    /// @76: CRC32C of the uncompressed data when [`BlobChunkFlags::HAS_CRC32`] is set
    /// (reserved, zero, in images built before Nydus 2.4).
    pub crc32: u32,
}

impl ChunkInfo {
    /// Encoded size.
    pub const SIZE: usize = 80;

    /// Reads the first [`Self::SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = fixed::<{ Self::SIZE }>(bytes, "ChunkInfo")?;
        Ok(Self {
            block_id: array(b, 0),
            blob_index: u32_at(b, 32),
            flags: BlobChunkFlags::from_bits(u32_at(b, 36)),
            compressed_size: u32_at(b, 40),
            uncompressed_size: u32_at(b, 44),
            compressed_offset: u64_at(b, 48),
            uncompressed_offset: u64_at(b, 56),
            file_offset: u64_at(b, 64),
            index: u32_at(b, 72),
            crc32: u32_at(b, 76),
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, 0, &self.block_id);
        put_u32(&mut b, 32, self.blob_index);
        put_u32(&mut b, 36, self.flags.bits());
        put_u32(&mut b, 40, self.compressed_size);
        put_u32(&mut b, 44, self.uncompressed_size);
        put_u64(&mut b, 48, self.compressed_offset);
        put_u64(&mut b, 56, self.uncompressed_offset);
        put_u64(&mut b, 64, self.file_offset);
        put_u32(&mut b, 72, self.index);
        put_u32(&mut b, 76, self.crc32);
        b
    }

    /// Whether the stored data is compressed.
    pub fn is_compressed(&self) -> bool {
        self.flags.contains(BlobChunkFlags::COMPRESSED)
    }

    /// The CRC32C of the uncompressed data, if the chunk carries one.
    pub fn crc32(&self) -> Option<u32> {
        self.flags
            .contains(BlobChunkFlags::HAS_CRC32)
            .then_some(self.crc32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunk_size_rule() {
        assert!(is_valid_chunk_size(RAFS_DEFAULT_CHUNK_SIZE));
        assert!(is_valid_chunk_size(0x1000));
        assert!(is_valid_chunk_size(0x100_0000));
        assert!(!is_valid_chunk_size(0x800));
        assert!(!is_valid_chunk_size(0x200_0000));
        assert!(!is_valid_chunk_size(0x10_1000));
        assert!(!is_valid_chunk_size(0));
    }

    #[test]
    fn fields_sit_at_reference_offsets() {
        let c = ChunkInfo {
            block_id: [0xaa; 32],
            blob_index: 0x0102_0304,
            flags: BlobChunkFlags::COMPRESSED | BlobChunkFlags::HAS_CRC32,
            compressed_size: 0x1111,
            uncompressed_size: 0x2222,
            compressed_offset: 0x3333_0000_0001,
            uncompressed_offset: 0x4444_0000_0002,
            file_offset: 0x5555_0000_0003,
            index: 0x66,
            crc32: 0xdead_beef,
        };
        let b = c.to_bytes();
        assert_eq!(&b[..32], &[0xaa; 32]);
        assert_eq!(&b[32..36], &[4, 3, 2, 1]);
        assert_eq!(&b[36..40], &[0x11, 0, 0, 0]);
        assert_eq!(&b[40..44], &[0x11, 0x11, 0, 0]);
        assert_eq!(&b[44..48], &[0x22, 0x22, 0, 0]);
        assert_eq!(&b[48..56], &[1, 0, 0, 0, 0x33, 0x33, 0, 0]);
        assert_eq!(&b[56..64], &[2, 0, 0, 0, 0x44, 0x44, 0, 0]);
        assert_eq!(&b[64..72], &[3, 0, 0, 0, 0x55, 0x55, 0, 0]);
        assert_eq!(&b[72..76], &[0x66, 0, 0, 0]);
        assert_eq!(&b[76..80], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(ChunkInfo::decode(&b), Ok(c));
        assert!(c.is_compressed());
        assert_eq!(c.crc32(), Some(0xdead_beef));
        let plain = ChunkInfo {
            flags: BlobChunkFlags::empty(),
            ..c
        };
        assert_eq!(plain.crc32(), None);
    }

    #[test]
    fn truncated_input_is_an_error() {
        assert_eq!(
            ChunkInfo::decode(&[0u8; 79]),
            Err(FormatError::Truncated {
                what: "ChunkInfo",
                need: 80,
                have: 79
            })
        );
    }

    proptest! {
        #[test]
        fn any_80_bytes_round_trip_exactly(bytes in any::<[u8; 80]>()) {
            let c = ChunkInfo::decode(&bytes).unwrap();
            prop_assert_eq!(c.to_bytes(), bytes);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ChunkInfo::decode(&bytes);
        }
    }
}
