//! Reading file data of an image: a chunk from its blob file, decompressed and checked.
//!
//! Every chunk read here is checked before its bytes are handed out: against its CRC32C when it
//! carries one (Nydus 2.4 images), otherwise against its digest, so wrong bytes never reach a
//! caller.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::codec;
use crate::v6::BlobEntry;
use crate::{ChunkInfo, Compressor, Digester, FormatError};

/// Why a chunk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The blob file could not be read.
    #[error("blob {blob}: {source}")]
    Io {
        blob: String,
        #[source]
        source: std::io::Error,
    },
    /// The stored bytes lie beyond the blob file's end.
    #[error("blob {blob}: chunk {index} at {offset}+{size} lies beyond the {len}-byte blob")]
    OutOfRange {
        blob: String,
        index: u32,
        offset: u64,
        size: u32,
        len: u64,
    },
    /// Decompression failed.
    #[error("blob {blob}: chunk {index}: {source}")]
    Decompress {
        blob: String,
        index: u32,
        #[source]
        source: codec::CodecError,
    },
    /// The data does not match its CRC32C.
    #[error("blob {blob}: chunk {index}: CRC32C {actual:#010x}, expected {expected:#010x}")]
    Crc {
        blob: String,
        index: u32,
        expected: u32,
        actual: u32,
    },
    /// The data does not match its digest.
    #[error("blob {blob}: chunk {index}: digest mismatch")]
    Digest { blob: String, index: u32 },
    /// The bootstrap names a blob that is not available.
    #[error("blob {0} not found")]
    Missing(String),
    /// Metadata about the blob is invalid.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// A blob file opened for reading chunks.
#[derive(Debug)]
pub struct BlobFile {
    /// The blob id.
    pub id: String,
    /// Where it was found.
    pub path: PathBuf,
    file: File,
    len: u64,
    compressor: Compressor,
    digester: Digester,
}

impl BlobFile {
    /// Opens the blob of `entry`: `path` if given, else `<dir>/<blob id>`.
    pub fn open(entry: &BlobEntry, path: &Path) -> Result<Self, ChunkError> {
        let id = entry.blob_id()?.to_string();
        let file = File::open(path).map_err(|source| ChunkError::Io {
            blob: id.clone(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| ChunkError::Io {
                blob: id.clone(),
                source,
            })?
            .len();
        Ok(BlobFile {
            id,
            path: path.to_path_buf(),
            file,
            len,
            compressor: entry.compressor()?,
            digester: entry.digester()?,
        })
    }

    /// Size of the blob file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads `len` bytes at `offset` (bounded by the file size).
    pub fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, ChunkError> {
        let end = offset.checked_add(len).filter(|e| *e <= self.len);
        if end.is_none() {
            return Err(ChunkError::Io {
                blob: self.id.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "{len} bytes at {offset} lie beyond the {}-byte blob",
                        self.len
                    ),
                ),
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| ChunkError::Io {
                blob: self.id.clone(),
                source,
            })?;
        Ok(buf)
    }

    /// Reads chunk `c`, decompresses it and checks it (CRC32C if it has one, else the digest).
    pub fn read_chunk(&self, c: &ChunkInfo) -> Result<Vec<u8>, ChunkError> {
        let end = c
            .compressed_offset
            .checked_add(u64::from(c.compressed_size));
        if end.is_none_or(|e| e > self.len) {
            return Err(ChunkError::OutOfRange {
                blob: self.id.clone(),
                index: c.index,
                offset: c.compressed_offset,
                size: c.compressed_size,
                len: self.len,
            });
        }
        if c.uncompressed_size > crate::chunk::RAFS_MAX_CHUNK_SIZE {
            return Err(ChunkError::Format(FormatError::field(
                "ChunkInfo",
                "uncompressed_size",
                44,
                c.uncompressed_size,
                "larger than 16 MiB",
            )));
        }
        let stored = self.read_at(c.compressed_offset, u64::from(c.compressed_size))?;
        let algo = if c.is_compressed() {
            self.compressor
        } else {
            Compressor::None
        };
        let mut data = Vec::with_capacity(c.uncompressed_size as usize);
        codec::decompress(algo, &stored, c.uncompressed_size as usize, &mut data).map_err(
            |source| ChunkError::Decompress {
                blob: self.id.clone(),
                index: c.index,
                source,
            },
        )?;
        check_chunk(&self.id, self.digester, c, &data)?;
        Ok(data)
    }
}

/// Checks decompressed chunk data: its size, then its CRC32C if it has one, else its digest.
pub fn check_chunk(
    blob: &str,
    digester: Digester,
    c: &ChunkInfo,
    data: &[u8],
) -> Result<(), ChunkError> {
    if data.len() != c.uncompressed_size as usize {
        return Err(ChunkError::Decompress {
            blob: blob.to_string(),
            index: c.index,
            source: codec::CodecError::SizeMismatch {
                algo: Compressor::None,
                expected: c.uncompressed_size as usize,
                actual: data.len(),
            },
        });
    }
    if let Some(expected) = c.crc32() {
        let actual = codec::chunk_crc32(data);
        if actual != expected {
            return Err(ChunkError::Crc {
                blob: blob.to_string(),
                index: c.index,
                expected,
                actual,
            });
        }
    } else if codec::digest(digester, data) != c.block_id {
        return Err(ChunkError::Digest {
            blob: blob.to_string(),
            index: c.index,
        });
    }
    Ok(())
}
