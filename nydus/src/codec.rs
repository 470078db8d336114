//! Per-chunk data codec shared by the blob writer and the runtime: compression, digests, CRC32C
//! and splitting file data into chunks.
//!
//! The formats are Nydus's (`utils/src/compress`, `utils/src/digest.rs`, `utils/src/crc32.rs`):
//!
//! - [`Compressor::Zstd`] stores one ordinary zstd frame at the default level (3);
//!   [`Compressor::Lz4Block`] stores a raw LZ4 block (no frame, no size prefix: the uncompressed
//!   size comes from the chunk info). A chunk that does not shrink is stored raw and marked
//!   uncompressed.
//! - The chunk id is the BLAKE3 or SHA-256 digest of the *uncompressed* data.
//! - The chunk CRC is CRC-32C (Castagnoli, `CRC-32/ISCSI`) of the *uncompressed* data, stored in
//!   [`ChunkInfo::crc32`](crate::ChunkInfo) together with
//!   [`BlobChunkFlags::HAS_CRC32`](crate::BlobChunkFlags).
//!
//! Decompression is bounded: it never writes more than the uncompressed size the caller expects,
//! which itself may not exceed [`RAFS_MAX_CHUNK_SIZE`], so hostile blob data cannot make it
//! allocate more.

use std::io::{self, Read};

use sha2::Digest as _;

use crate::chunk::{is_valid_chunk_size, RAFS_MAX_CHUNK_SIZE};
use crate::{Compressor, Digester};

/// Why chunk data could not be compressed, decompressed or split.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The compressor cannot be used for native chunk data (gzip is stargz-only).
    #[error("{algo:?} is not supported for chunk data")]
    UnsupportedCompressor { algo: Compressor },

    /// A chunk, or the uncompressed size claimed for one, is larger than the format allows.
    #[error("chunk of {size} bytes exceeds the largest chunk size {max:#x}", max = RAFS_MAX_CHUNK_SIZE)]
    ChunkTooLarge { size: usize },

    /// A chunk size that is not a power of two between 4 KiB and 16 MiB.
    #[error("invalid chunk size {size:#x}: must be a power of two in 0x1000..=0x1000000")]
    InvalidChunkSize { size: u32 },

    /// The compressor itself failed.
    #[error("{algo:?} compression failed")]
    Compress {
        algo: Compressor,
        #[source]
        source: io::Error,
    },

    /// The stored data is not valid for its compressor, or inflates to more than expected.
    #[error("{algo:?} chunk data is corrupt (expected {expected} uncompressed bytes)")]
    Corrupt {
        algo: Compressor,
        expected: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The stored data decoded to fewer (or, for raw data, a different number of) bytes than the
    /// chunk info says.
    #[error("{algo:?} chunk data decoded to {actual} bytes, expected {expected}")]
    SizeMismatch {
        algo: Compressor,
        expected: usize,
        actual: usize,
    },
}

/// Compresses one chunk with `algo`.
///
/// Returns the bytes to store and whether they are compressed. As in Nydus, when compression does
/// not make the chunk smaller the data is returned as is with `false`, and the chunk must then be
/// recorded without [`BlobChunkFlags::COMPRESSED`](crate::BlobChunkFlags) and read back with
/// [`Compressor::None`]. [`Compressor::GZip`] is rejected: it is not a chunk compressor for new
/// images.
pub fn compress(algo: Compressor, data: &[u8]) -> Result<(Vec<u8>, bool), CodecError> {
    if data.len() > RAFS_MAX_CHUNK_SIZE as usize {
        return Err(CodecError::ChunkTooLarge { size: data.len() });
    }
    compress_bounded(algo, data)
}

/// Like [`compress`] for data that is not a chunk (a blob.meta array, a bootstrap inlined in a
/// blob), which may be larger than a chunk; the caller bounds its size.
pub fn compress_bounded(algo: Compressor, data: &[u8]) -> Result<(Vec<u8>, bool), CodecError> {
    let compressed = match algo {
        Compressor::None => return Ok((data.to_vec(), false)),
        Compressor::GZip => return Err(CodecError::UnsupportedCompressor { algo }),
        Compressor::Lz4Block => lz4_flex::block::compress(data),
        Compressor::Zstd => zstd::bulk::compress(data, zstd::DEFAULT_COMPRESSION_LEVEL)
            .map_err(|source| CodecError::Compress { algo, source })?,
    };
    if compressed.len() >= data.len() {
        Ok((data.to_vec(), false))
    } else {
        Ok((compressed, true))
    }
}

/// A chunk compressor for many chunks in a row: it keeps zstd's context and its output buffer
/// between chunks instead of setting them up for each one.
pub struct ChunkCompressor {
    algo: Compressor,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    scratch: Vec<u8>,
}

impl ChunkCompressor {
    /// A compressor for `algo` (not [`Compressor::GZip`]).
    pub fn new(algo: Compressor) -> Result<Self, CodecError> {
        let zstd = match algo {
            Compressor::GZip => return Err(CodecError::UnsupportedCompressor { algo }),
            Compressor::Zstd => Some(
                zstd::bulk::Compressor::new(zstd::DEFAULT_COMPRESSION_LEVEL)
                    .map_err(|source| CodecError::Compress { algo, source })?,
            ),
            _ => None,
        };
        Ok(ChunkCompressor {
            algo,
            zstd,
            scratch: Vec::new(),
        })
    }

    /// Compresses one chunk: the bytes to store compressed, or `None` when compression does not
    /// make it smaller (it is then stored as is, without the COMPRESSED flag), the same bytes
    /// and decision as [`compress`].
    pub fn compress(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, CodecError> {
        if data.len() > RAFS_MAX_CHUNK_SIZE as usize {
            return Err(CodecError::ChunkTooLarge { size: data.len() });
        }
        let algo = self.algo;
        let out = match (&mut self.zstd, algo) {
            (_, Compressor::None) => return Ok(None),
            (Some(z), _) => {
                self.scratch.clear();
                self.scratch
                    .reserve(zstd::zstd_safe::compress_bound(data.len()));
                z.compress_to_buffer(data, &mut self.scratch)
                    .map_err(|source| CodecError::Compress { algo, source })?;
                if self.scratch.len() >= data.len() {
                    return Ok(None);
                }
                self.scratch.clone()
            }
            (None, _) => lz4_flex::block::compress(data),
        };
        Ok((out.len() < data.len()).then_some(out))
    }
}

/// Decodes one stored chunk, appending exactly `uncompressed_size` bytes to `out`.
///
/// `algo` is the blob's compressor for a compressed chunk and [`Compressor::None`] for a chunk
/// stored raw. `uncompressed_size` (from the chunk info) is checked against
/// [`RAFS_MAX_CHUNK_SIZE`] before anything is allocated, and the decoder is never allowed to
/// produce more than that. On error `out` is left at its original length.
pub fn decompress(
    algo: Compressor,
    data: &[u8],
    uncompressed_size: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    if uncompressed_size > RAFS_MAX_CHUNK_SIZE as usize {
        return Err(CodecError::ChunkTooLarge {
            size: uncompressed_size,
        });
    }
    decompress_bounded(algo, data, uncompressed_size, out)
}

/// Like [`decompress`] for data that is not a chunk (a bootstrap inlined in a blob, a blob.meta
/// array): the caller bounds `uncompressed_size` itself; exactly that many bytes are produced.
pub fn decompress_bounded(
    algo: Compressor,
    data: &[u8],
    uncompressed_size: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let mismatch = |actual| CodecError::SizeMismatch {
        algo,
        expected: uncompressed_size,
        actual,
    };
    match algo {
        Compressor::None => {
            if data.len() != uncompressed_size {
                return Err(mismatch(data.len()));
            }
            out.extend_from_slice(data);
            Ok(())
        }
        Compressor::GZip => Err(CodecError::UnsupportedCompressor { algo }),
        Compressor::Lz4Block | Compressor::Zstd => {
            let start = out.len();
            out.resize(start + uncompressed_size, 0);
            let dst = &mut out[start..];
            let written = match algo {
                Compressor::Lz4Block => lz4_flex::block::decompress_into(data, dst)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
                _ => zstd::bulk::decompress_to_buffer(data, dst).map_err(|e| Box::new(e) as _),
            };
            let result = match written {
                Ok(n) if n == uncompressed_size => return Ok(()),
                Ok(n) => Err(mismatch(n)),
                Err(source) => Err(CodecError::Corrupt {
                    algo,
                    expected: uncompressed_size,
                    source,
                }),
            };
            out.truncate(start);
            result
        }
    }
}

/// The chunk digest (chunk id) of uncompressed chunk data.
pub fn digest(algo: Digester, data: &[u8]) -> [u8; 32] {
    match algo {
        Digester::Blake3 => blake3::hash(data).into(),
        Digester::Sha256 => sha2::Sha256::digest(data).into(),
    }
}

/// The CRC-32C (Castagnoli, `CRC-32/ISCSI`) of uncompressed chunk data, as Nydus stores it in
/// [`ChunkInfo::crc32`](crate::ChunkInfo) and blob.meta CI v2 entries.
///
/// Nydus treats a stored value of 0 together with `HAS_CRC32` as invalid, so a writer should not
/// set `HAS_CRC32` for the (rare) chunk whose CRC is 0.
pub fn chunk_crc32(data: &[u8]) -> u32 {
    // SSE4.2 / ARMv8 CRC instructions where the CPU has them, slice-by-8 tables elsewhere.
    crc32c::crc32c(data)
}

/// Splits file data into fixed-size chunks; the last chunk of a file is short, and an empty file
/// has no chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunker {
    chunk_size: u32,
}

impl Chunker {
    /// A chunker for `chunk_size`, which must satisfy [`is_valid_chunk_size`].
    pub fn new(chunk_size: u32) -> Result<Self, CodecError> {
        if is_valid_chunk_size(chunk_size) {
            Ok(Self { chunk_size })
        } else {
            Err(CodecError::InvalidChunkSize { size: chunk_size })
        }
    }

    /// The chunk size.
    pub fn chunk_size(self) -> u32 {
        self.chunk_size
    }

    /// The chunks of an in-memory file.
    pub fn split(self, data: &[u8]) -> std::slice::Chunks<'_, u8> {
        data.chunks(self.chunk_size as usize)
    }

    /// Reads the next chunk of `reader` into `buf` (cleared first), reading until the chunk is
    /// full or the reader is exhausted. Returns the chunk length; 0 means the end of the file.
    pub fn read_chunk<R: Read>(self, reader: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
        buf.clear();
        reader.take(u64::from(self.chunk_size)).read_to_end(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{RAFS_DEFAULT_CHUNK_SIZE, RAFS_MIN_CHUNK_SIZE};
    use proptest::prelude::*;

    const CHUNK_COMPRESSORS: [Compressor; 3] =
        [Compressor::None, Compressor::Lz4Block, Compressor::Zstd];

    /// Deterministic incompressible bytes (xorshift64*).
    fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Compresses then decodes the way a reader would (raw chunks with `None`).
    fn round_trip(algo: Compressor, data: &[u8]) -> (bool, Vec<u8>) {
        let (stored, compressed) = compress(algo, data).unwrap();
        if !compressed {
            assert_eq!(stored, data, "{algo:?}: raw fallback must store the input");
        } else {
            assert!(stored.len() < data.len());
        }
        let read_with = if compressed { algo } else { Compressor::None };
        let mut out = b"prefix".to_vec();
        decompress(read_with, &stored, data.len(), &mut out).unwrap();
        assert_eq!(&out[..6], b"prefix", "decompress appends");
        (compressed, out.split_off(6))
    }

    #[test]
    fn every_compressor_round_trips_typical_inputs() {
        let inputs: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("tiny", b"a".to_vec()),
            ("random", random_bytes(65_536, 1)),
            ("zeros", vec![0; 300_000]),
            ("text", b"hello nydus ".repeat(5000)),
            ("min chunk", random_bytes(RAFS_MIN_CHUNK_SIZE as usize, 2)),
            ("default chunk", b"0123456789abcdef".repeat(65_536)),
            ("max chunk", vec![7; RAFS_MAX_CHUNK_SIZE as usize]),
        ];
        for algo in CHUNK_COMPRESSORS {
            for (name, data) in &inputs {
                let (compressed, back) = round_trip(algo, data);
                assert_eq!(&back, data, "{algo:?} {name}");
                let compressible =
                    matches!(*name, "zeros" | "text" | "default chunk" | "max chunk");
                assert_eq!(
                    compressed,
                    algo != Compressor::None && compressible,
                    "{algo:?} {name}"
                );
            }
        }
        assert_eq!(
            RAFS_DEFAULT_CHUNK_SIZE as usize,
            inputs[6].1.len(),
            "the default-chunk input is exactly one default chunk"
        );
    }

    #[test]
    fn metadata_larger_than_a_chunk_compresses_and_chunks_do_not() {
        let big = vec![3u8; RAFS_MAX_CHUNK_SIZE as usize + 4096];
        assert!(compress(Compressor::Zstd, &big).is_err());
        for algo in [Compressor::Zstd, Compressor::Lz4Block] {
            let (z, compressed) = compress_bounded(algo, &big).unwrap();
            assert!(compressed);
            let mut out = Vec::new();
            decompress_bounded(algo, &z, big.len(), &mut out).unwrap();
            assert_eq!(out, big);
        }
    }

    #[test]
    fn incompressible_and_tiny_chunks_are_stored_raw() {
        for algo in [Compressor::Lz4Block, Compressor::Zstd] {
            for data in [Vec::new(), b"x".to_vec(), random_bytes(10_000, 3)] {
                assert_eq!(compress(algo, &data).unwrap(), (data.clone(), false));
            }
        }
    }

    #[test]
    fn zstd_output_is_a_plain_frame_and_lz4_a_bare_block() {
        let data = vec![0u8; 100_000];
        let (z, _) = compress(Compressor::Zstd, &data).unwrap();
        assert_eq!(&z[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd frame magic");
        assert_eq!(zstd::bulk::decompress(&z, data.len()).unwrap(), data);
        let (l, _) = compress(Compressor::Lz4Block, &data).unwrap();
        assert_eq!(
            lz4_flex::block::decompress(&l, data.len()).unwrap(),
            data,
            "no size prefix, no frame"
        );
    }

    #[test]
    fn gzip_is_rejected() {
        assert!(matches!(
            compress(Compressor::GZip, b"abc"),
            Err(CodecError::UnsupportedCompressor { .. })
        ));
        assert!(matches!(
            decompress(Compressor::GZip, b"abc", 3, &mut Vec::new()),
            Err(CodecError::UnsupportedCompressor { .. })
        ));
    }

    #[test]
    fn oversize_chunks_and_claims_are_rejected_before_allocating() {
        let too_big = RAFS_MAX_CHUNK_SIZE as usize + 1;
        for algo in CHUNK_COMPRESSORS {
            let mut out = Vec::new();
            assert!(matches!(
                decompress(algo, b"", too_big, &mut out),
                Err(CodecError::ChunkTooLarge { size }) if size == too_big
            ));
            assert!(matches!(
                decompress(algo, b"", usize::MAX, &mut out),
                Err(CodecError::ChunkTooLarge { .. })
            ));
            assert_eq!(out.capacity(), 0);
        }
        assert!(matches!(
            compress(Compressor::Zstd, &vec![0; too_big]),
            Err(CodecError::ChunkTooLarge { .. })
        ));
    }

    #[test]
    fn decompression_is_bounded_by_the_claimed_size() {
        // 16 MiB of zeros compress to a few bytes; claiming less must fail, not inflate it all.
        let bomb = vec![0u8; RAFS_MAX_CHUNK_SIZE as usize];
        for algo in [Compressor::Lz4Block, Compressor::Zstd] {
            let (stored, compressed) = compress(algo, &bomb).unwrap();
            assert!(compressed && stored.len() < 100_000);
            let mut out = vec![1, 2, 3];
            let err = decompress(algo, &stored, 4096, &mut out).unwrap_err();
            assert!(matches!(err, CodecError::Corrupt { .. }), "{algo:?}: {err}");
            assert_eq!(out, [1, 2, 3], "{algo:?}: output restored on error");
            assert!(
                out.capacity() < 8192,
                "{algo:?}: allocated {}",
                out.capacity()
            );
        }
    }

    #[test]
    fn short_output_is_a_size_mismatch() {
        let data = b"hello nydus ".repeat(100);
        for algo in [Compressor::Lz4Block, Compressor::Zstd] {
            let (stored, _) = compress(algo, &data).unwrap();
            let err = decompress(algo, &stored, data.len() + 1, &mut Vec::new()).unwrap_err();
            assert!(
                matches!(err, CodecError::SizeMismatch { actual, .. } if actual == data.len()),
                "{algo:?}: {err}"
            );
        }
        assert!(matches!(
            decompress(Compressor::None, b"abc", 4, &mut Vec::new()),
            Err(CodecError::SizeMismatch {
                expected: 4,
                actual: 3,
                ..
            })
        ));
    }

    #[test]
    fn truncated_or_corrupt_data_is_an_error() {
        let data = b"hello nydus, hello dragonfly ".repeat(1000);
        for algo in [Compressor::Lz4Block, Compressor::Zstd] {
            let (stored, _) = compress(algo, &data).unwrap();
            for cut in [0, 1, stored.len() / 2, stored.len() - 1] {
                let mut out = Vec::new();
                assert!(
                    decompress(algo, &stored[..cut], data.len(), &mut out).is_err(),
                    "{algo:?} cut at {cut}"
                );
                assert!(out.is_empty());
            }
        }
        let (mut z, _) = compress(Compressor::Zstd, &data).unwrap();
        z[0] ^= 0xff; // bad frame magic
        assert!(matches!(
            decompress(Compressor::Zstd, &z, data.len(), &mut Vec::new()),
            Err(CodecError::Corrupt { .. })
        ));
        // An LZ4 sequence with no literals and a match 1 byte back: before the start of the output.
        let bad_offset = [0x04, 0x01, 0x00];
        assert!(decompress(Compressor::Lz4Block, &bad_offset, 100, &mut Vec::new()).is_err());
    }

    #[test]
    fn digest_known_answers() {
        assert_eq!(
            digest(Digester::Blake3, b"abc"),
            hex32("6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85")
        );
        assert_eq!(
            digest(Digester::Sha256, b"abc"),
            hex32("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn a_reused_compressor_makes_the_same_bytes_as_compress() {
        for algo in [Compressor::Zstd, Compressor::Lz4Block, Compressor::None] {
            let mut c = ChunkCompressor::new(algo).unwrap();
            for (seed, len) in [(1u64, 0usize), (2, 1), (3, 4096), (4, 1 << 20), (5, 70_000)] {
                // Half repetitive, half noise.
                let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let data: Vec<u8> = (0..len)
                    .map(|i| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if i % 2 == 0 {
                            (i % 11) as u8
                        } else {
                            x as u8
                        }
                    })
                    .collect();
                let (want, shrunk) = compress(algo, &data).unwrap();
                match c.compress(&data).unwrap() {
                    Some(got) => assert!(shrunk && got == want, "{algo:?} {len}"),
                    None => assert!(!shrunk && want == data, "{algo:?} {len}"),
                }
            }
        }
        assert!(ChunkCompressor::new(Compressor::GZip).is_err());
    }

    #[test]
    fn crc_is_crc32c() {
        // The CRC-32C (iSCSI) check value; plain CRC-32 would give 0xCBF43926.
        assert_eq!(chunk_crc32(b"123456789"), 0xE306_9283);
        assert_eq!(chunk_crc32(b""), 0);
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(chunk_crc32(&[0; 32]), 0x8A91_36AA);
    }

    #[test]
    fn chunker_validates_the_chunk_size() {
        for bad in [0, 1, 4095, 4097, 0x3000, 0x200_0000] {
            assert!(matches!(
                Chunker::new(bad),
                Err(CodecError::InvalidChunkSize { size }) if size == bad
            ));
        }
        for good in [
            RAFS_MIN_CHUNK_SIZE,
            RAFS_DEFAULT_CHUNK_SIZE,
            RAFS_MAX_CHUNK_SIZE,
        ] {
            assert_eq!(Chunker::new(good).unwrap().chunk_size(), good);
        }
    }

    #[test]
    fn chunker_splits_with_a_short_last_chunk() {
        let c = Chunker::new(4096).unwrap();
        let data = random_bytes(3 * 4096 + 5, 4);
        let lens: Vec<usize> = c.split(&data).map(<[u8]>::len).collect();
        assert_eq!(lens, [4096, 4096, 4096, 5]);
        assert_eq!(c.split(&data[..8192]).count(), 2);
        assert_eq!(c.split(&[]).count(), 0);
    }

    /// A reader that hands out at most 7 bytes per call and is sometimes interrupted.
    struct Dribble<'a>(&'a [u8], u32);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 += 1;
            if self.1.is_multiple_of(5) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn chunker_reads_full_chunks_from_short_reads() {
        let c = Chunker::new(4096).unwrap();
        let data = random_bytes(2 * 4096 + 100, 5);
        let mut reader = Dribble(&data, 0);
        let mut buf = Vec::new();
        let mut chunks = Vec::new();
        while c.read_chunk(&mut reader, &mut buf).unwrap() > 0 {
            chunks.push(buf.clone());
        }
        let expected: Vec<Vec<u8>> = c.split(&data).map(<[u8]>::to_vec).collect();
        assert_eq!(chunks, expected);
        assert_eq!(c.read_chunk(&mut io::empty(), &mut buf).unwrap(), 0);
        assert!(buf.is_empty());
    }

    fn chunk_data() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..20_000),
            // Small alphabets and runs compress, so both paths are exercised.
            proptest::collection::vec(0u8..4, 0..20_000),
            (any::<u8>(), 0usize..70_000).prop_map(|(b, n)| vec![b; n]),
        ]
    }

    proptest! {
        #[test]
        fn decompress_inverts_compress(data in chunk_data()) {
            for algo in CHUNK_COMPRESSORS {
                let (_, back) = round_trip(algo, &data);
                prop_assert_eq!(&back, &data);
            }
        }

        #[test]
        fn decompress_of_arbitrary_bytes_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..2_000),
            size in 0usize..100_000,
        ) {
            for algo in Compressor::ALL {
                let mut out = vec![9];
                if decompress(algo, &data, size, &mut out).is_ok() {
                    prop_assert_eq!(out.len(), size + 1);
                } else {
                    prop_assert_eq!(&out, &[9]);
                }
            }
        }
    }
}
