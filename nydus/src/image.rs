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
    /// Opens the blob of v6 blob table entry `entry` at `path`.
    pub fn open(entry: &BlobEntry, path: &Path) -> Result<Self, ChunkError> {
        Self::open_with(
            entry.blob_id()?,
            entry.compressor()?,
            entry.digester()?,
            path,
        )
    }

    /// Opens blob `id` at `path`, whose chunks use `compressor` and `digester`.
    pub fn open_with(
        id: &str,
        compressor: Compressor,
        digester: Digester,
        path: &Path,
    ) -> Result<Self, ChunkError> {
        let id = id.to_string();
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
            compressor,
            digester,
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
        // Stored data is never larger than the chunk (it would have been stored raw).
        if c.compressed_size > crate::chunk::RAFS_MAX_CHUNK_SIZE {
            return Err(ChunkError::Format(FormatError::field(
                "ChunkInfo",
                "compressed_size",
                40,
                c.compressed_size,
                "larger than 16 MiB",
            )));
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

/// One data blob of an image, whatever the RAFS version.
#[derive(Debug, Clone)]
pub struct ImageBlob {
    /// The blob id (file name in a blob directory).
    pub id: String,
    /// Chunk compressor.
    pub compressor: Compressor,
    /// Chunk digest algorithm.
    pub digester: Digester,
    /// Chunks in the blob.
    pub chunk_count: u32,
    /// Blob size.
    pub compressed_size: u64,
    /// Size of the blob's uncompressed address space.
    pub uncompressed_size: u64,
    /// Blob features.
    pub features: crate::BlobFeatures,
    /// The v6 blob table entry (blob.meta location and the rest), for v6 images.
    pub v6: Option<BlobEntry>,
}

impl ImageBlob {
    /// The name of a blob feature whose data layout this crate cannot read yet, if the blob has
    /// one (their chunk infos do not describe the stored bytes the plain way).
    pub fn unsupported_feature(&self) -> Option<&'static str> {
        use crate::BlobFeatures as F;
        [
            (F::ZRAN, "ZRAN (an OCI gzip layer as data)"),
            (F::BATCH, "batch chunks"),
            (F::ENCRYPTED, "encryption"),
            (F::TARFS, "tarfs"),
            (F::SEPARATE, "separate data and meta blobs"),
            (F::EXTERNAL, "external data"),
        ]
        .into_iter()
        .find(|(f, _)| self.features.contains(*f))
        .map(|(_, name)| name)
    }

    /// Whether the id is the placeholder Nydus writes into a bootstrap inlined in its own blob.
    pub fn has_placeholder_id(&self) -> bool {
        self.id == crate::build::PLACEHOLDER_BLOB_ID
    }
}

/// A bootstrap read into memory: its version, filesystem tree and blobs.
#[derive(Debug, Clone)]
pub struct Image {
    /// RAFS version: 5 or 6.
    pub version: u32,
    /// The bootstrap bytes.
    pub bootstrap: Vec<u8>,
    /// The filesystem.
    pub tree: crate::tree::Tree,
    /// The blob table.
    pub blobs: Vec<ImageBlob>,
    /// The blob file the bootstrap came from, when it was inlined in a blob.
    pub inline_blob: Option<PathBuf>,
}

/// Why an image could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading the file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The bootstrap (or the blob holding it) is invalid.
    #[error("{path}: {source}")]
    Format {
        path: String,
        #[source]
        source: FormatError,
    },
    /// Neither a bootstrap nor a blob with an inlined bootstrap.
    #[error("{0}: not a RAFS v5/v6 bootstrap, nor a blob with an inlined bootstrap")]
    NotAnImage(String),
}

const RAFS_V5_MAGIC: u32 = 0x5241_4653;

fn u32_le(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The bootstrap inlined at the end of blob file `f` (`--blob-inline-meta`): found through the
/// TOC if there is one, else through the trailing `image.boot` tar header. `None` if the blob
/// has neither.
pub fn inlined_bootstrap(f: &File, len: u64) -> Result<Option<Vec<u8>>, FormatError> {
    use crate::toc::{parse_tar_header, Toc, TAR_HEADER_SIZE, TOC_ENTRY_BOOTSTRAP, TOC_MAX_SIZE};
    let read = |off: u64, n: u64| -> Result<Vec<u8>, FormatError> {
        let mut buf = vec![0u8; n as usize];
        f.read_exact_at(&mut buf, off)
            .map_err(|e| FormatError::Invalid {
                what: "blob",
                reason: format!("reading {n} bytes at {off}: {e}"),
            })?;
        Ok(buf)
    };
    let tail_len = len.min(TOC_MAX_SIZE as u64 + TAR_HEADER_SIZE as u64);
    let tail = read(len - tail_len, tail_len)?;
    let boot = if let Ok(toc) = Toc::parse_from_tail(&tail) {
        let Some(e) = toc.find(TOC_ENTRY_BOOTSTRAP) else {
            return Ok(None);
        };
        let end = e.compressed_offset.checked_add(e.compressed_size);
        if end.is_none_or(|end| end > len)
            || e.uncompressed_size > MAX_BOOTSTRAP
            || e.compressed_size > MAX_BOOTSTRAP
        {
            return Err(FormatError::Invalid {
                what: "TOC entry image.boot",
                reason: format!("{e:?} lies outside the {len}-byte blob or is too large"),
            });
        }
        let stored = read(e.compressed_offset, e.compressed_size)?;
        let bad = |reason: String| FormatError::Invalid {
            what: "inlined bootstrap",
            reason,
        };
        match e.compressor()? {
            Compressor::None if stored.len() as u64 != e.uncompressed_size => {
                return Err(bad(format!(
                    "stored as {} bytes uncompressed, the TOC says {}",
                    stored.len(),
                    e.uncompressed_size
                )));
            }
            Compressor::None => stored,
            Compressor::Zstd => {
                // Streamed, so memory follows what the data really inflates to, not the claim.
                use std::io::Read as _;
                let mut out = Vec::new();
                zstd::stream::read::Decoder::new(&stored[..])
                    .map_err(|err| bad(err.to_string()))?
                    .take(e.uncompressed_size + 1)
                    .read_to_end(&mut out)
                    .map_err(|err| bad(err.to_string()))?;
                if out.len() as u64 != e.uncompressed_size {
                    return Err(bad(format!(
                        "inflates to {} bytes, the TOC says {}",
                        out.len(),
                        e.uncompressed_size
                    )));
                }
                out
            }
            algo => {
                // An LZ4 block inflates at most 255:1; refuse larger claims before allocating.
                if e.uncompressed_size > e.compressed_size.saturating_mul(255) {
                    return Err(bad(format!(
                        "{} bytes cannot inflate to the claimed {}",
                        e.compressed_size, e.uncompressed_size
                    )));
                }
                let mut out = Vec::new();
                crate::codec::decompress_bounded(
                    algo,
                    &stored,
                    e.uncompressed_size as usize,
                    &mut out,
                )
                .map_err(|err| bad(err.to_string()))?;
                out
            }
        }
    } else if tail.len() >= TAR_HEADER_SIZE {
        let Ok((name, size)) = parse_tar_header(&tail[tail.len() - TAR_HEADER_SIZE..]) else {
            return Ok(None);
        };
        if name != TOC_ENTRY_BOOTSTRAP {
            return Ok(None);
        }
        let start = (len - TAR_HEADER_SIZE as u64)
            .checked_sub(size)
            .filter(|_| size <= MAX_BOOTSTRAP);
        let Some(start) = start else {
            return Err(FormatError::Invalid {
                what: "image.boot tar header",
                reason: format!("size {size} does not fit the {len}-byte blob"),
            });
        };
        read(start, size)?
    } else {
        return Ok(None);
    };
    Ok(Some(boot))
}

/// Largest bootstrap read into memory (1 GiB).
const MAX_BOOTSTRAP: u64 = 1 << 30;

/// Loads the bootstrap at `path` — a RAFS v6 or v5 bootstrap, or a blob with an inlined
/// bootstrap — and builds its tree.
pub fn load(path: &Path) -> Result<Image, ImageError> {
    let p = path.display().to_string();
    let io = |source| ImageError::Io {
        path: p.clone(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let fmt = |source| ImageError::Format {
        path: p.clone(),
        source,
    };
    let mut head = vec![0u8; len.min(2048) as usize];
    f.read_exact_at(&mut head, 0).map_err(io)?;
    let (bytes, inline_blob) = if u32_le(&head, 1024)
        == Some(crate::v6::layout::EROFS_SUPER_MAGIC_V1)
        || u32_le(&head, 0) == Some(RAFS_V5_MAGIC)
    {
        if len > MAX_BOOTSTRAP {
            return Err(ImageError::NotAnImage(p));
        }
        let mut all = vec![0u8; len as usize];
        f.read_exact_at(&mut all, 0).map_err(io)?;
        (all, None)
    } else {
        match inlined_bootstrap(&f, len).map_err(fmt)? {
            Some(b) => (b, Some(path.to_path_buf())),
            None => return Err(ImageError::NotAnImage(p)),
        }
    };
    from_bytes(bytes, inline_blob, &p)
}

/// The image of bootstrap bytes (RAFS v6 or v5) read from `what` (named in errors);
/// `inline_blob` is the blob file they were inlined in, if any.
pub fn from_bytes(
    bytes: Vec<u8>,
    inline_blob: Option<PathBuf>,
    what: &str,
) -> Result<Image, ImageError> {
    let fmt = |source| ImageError::Format {
        path: what.to_string(),
        source,
    };
    if u32_le(&bytes, 1024) == Some(crate::v6::layout::EROFS_SUPER_MAGIC_V1) {
        let b = crate::v6::Bootstrap::parse(&bytes).map_err(fmt)?;
        let tree = b.to_tree().map_err(fmt)?;
        let mut blobs = Vec::with_capacity(b.blobs().len());
        for e in b.blobs() {
            blobs.push(ImageBlob {
                id: e.blob_id().map_err(fmt)?.to_string(),
                compressor: e.compressor().map_err(fmt)?,
                digester: e.digester().map_err(fmt)?,
                chunk_count: e.chunk_count,
                compressed_size: e.compressed_size,
                uncompressed_size: e.uncompressed_size,
                features: e.features,
                v6: Some(*e),
            });
        }
        Ok(Image {
            version: 6,
            tree,
            blobs,
            bootstrap: bytes,
            inline_blob,
        })
    } else if u32_le(&bytes, 0) == Some(RAFS_V5_MAGIC) {
        let b = crate::v5::BootstrapV5::parse(&bytes).map_err(fmt)?;
        let tree = b.to_tree().map_err(fmt)?;
        let blobs = b
            .blobs()
            .iter()
            .map(|e| ImageBlob {
                id: e.blob_id.clone(),
                compressor: e.compressor,
                digester: e.digester,
                chunk_count: e.chunk_count,
                compressed_size: e.compressed_size,
                uncompressed_size: e.uncompressed_size,
                features: e.features,
                v6: None,
            })
            .collect();
        Ok(Image {
            version: 5,
            tree,
            blobs,
            bootstrap: bytes,
            inline_blob,
        })
    } else {
        Err(ImageError::NotAnImage(what.to_string()))
    }
}
