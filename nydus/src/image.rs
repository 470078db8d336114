//! Reading file data of an image: a chunk from its blob file, decompressed and checked.
//!
//! Every chunk read here is checked before its bytes are handed out: against its CRC32C when it
//! carries one (Nydus 2.4 images), otherwise against its digest, so wrong bytes never reach a
//! caller.
//!
//! An image is loaded with [`load`] (or [`from_bytes`]), its blob files opened with
//! [`open_blobs`], and checked with [`check_blob_meta`] and [`check_chunks`].

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::blobmeta::BlobMeta;
use crate::codec;
use crate::tree::{Kind, Tree};
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

/// Why the blob files of an image could not be opened ([`open_blobs`]).
#[derive(Debug, thiserror::Error)]
pub enum OpenBlobsError {
    /// Blob `index` uses a feature whose data layout this crate cannot read yet
    /// ([`ImageBlob::unsupported_feature`]).
    #[error("blob {index} ({id}) uses {feature}, which cannot be read yet")]
    Unsupported {
        index: usize,
        id: String,
        feature: &'static str,
    },
    /// A single blob file was given for an image of `blobs` blobs.
    #[error("the image has {blobs} blobs; one blob file cannot hold them")]
    NotSingleBlob { blobs: usize },
    /// Blob `index` has an id that is not a plain file name, so it is not looked up in the blob
    /// directory.
    #[error("blob {index} has id {id:?}, which is not a file name")]
    BadId { index: usize, id: String },
    /// No blob file nor blob directory was given, and the bootstrap is not inlined in its blob.
    #[error("no blob file or blob directory given")]
    NoBlobs,
    /// Opening blob `index` at `path` failed.
    #[error("blob {index} ({}): {source}", path.display())]
    Open {
        index: usize,
        path: PathBuf,
        #[source]
        source: ChunkError,
    },
}

/// Opens every blob of `img`, in blob table order: the blob the bootstrap was inlined in, or
/// `blob` for a single-blob image, else `<blob_dir>/<id>`.
pub fn open_blobs(
    img: &Image,
    blob_dir: Option<&Path>,
    blob: Option<&Path>,
) -> Result<Vec<BlobFile>, OpenBlobsError> {
    let blobs = &img.blobs;
    let mut out = Vec::with_capacity(blobs.len());
    for (i, e) in blobs.iter().enumerate() {
        if let Some(feature) = e.unsupported_feature() {
            return Err(OpenBlobsError::Unsupported {
                index: i,
                id: e.id.clone(),
                feature,
            });
        }
        let last = i + 1 == blobs.len();
        let path = match (blob, blob_dir, &img.inline_blob) {
            // A layer's own blob is the last in its table.
            (None, _, Some(b)) if last && (e.has_placeholder_id() || blob_dir.is_none()) => {
                b.clone()
            }
            (Some(b), _, _) if blobs.len() == 1 => b.to_path_buf(),
            (Some(_), _, _) => {
                return Err(OpenBlobsError::NotSingleBlob { blobs: blobs.len() });
            }
            (None, Some(d), _) => {
                // The id comes from the image: only a plain file name may be looked up.
                if e.id.is_empty() || e.id == "." || e.id == ".." || e.id.contains(['/', '\0']) {
                    return Err(OpenBlobsError::BadId {
                        index: i,
                        id: e.id.clone(),
                    });
                }
                d.join(&e.id)
            }
            (None, None, _) => return Err(OpenBlobsError::NoBlobs),
        };
        let f = BlobFile::open_with(&e.id, e.compressor, e.digester, &path).map_err(|source| {
            OpenBlobsError::Open {
                index: i,
                path: path.clone(),
                source,
            }
        })?;
        out.push(f);
    }
    Ok(out)
}

impl Image {
    /// The chunk compressor the superblock names (`None`: a v6 superblock naming none).
    pub fn compressor(&self) -> Result<Option<Compressor>, FormatError> {
        if self.version == 5 {
            let b = crate::v5::BootstrapV5::parse(&self.bootstrap)?;
            return Ok(Some(b.compressor()));
        }
        let b = crate::v6::Bootstrap::parse(&self.bootstrap)?;
        Ok(b.ext_superblock().flags.compressor())
    }
}

/// Checks blob.meta of the v6 blob `blob` (number `index` of the blob table, whose entry is
/// `entry`) against the chunk infos `tree` holds for it: the header against the blob table, the
/// entry count, and every chunk a file uses. Returns one message per problem, each starting
/// with `blob <id> blob.meta: `; none for a blob without blob.meta.
pub fn check_blob_meta(blob: &BlobFile, entry: &BlobEntry, index: u32, tree: &Tree) -> Vec<String> {
    if entry.ci_compressed_size == 0 && entry.ci_uncompressed_size == 0 {
        return Vec::new();
    }
    let what = |m: String| format!("blob {} blob.meta: {m}", blob.id);
    let meta = blob
        .read_at(
            entry.ci_offset,
            entry
                .ci_compressed_size
                .saturating_add(crate::blobmeta::BLOB_META_HEADER_SIZE as u64),
        )
        .map_err(|e| e.to_string())
        .and_then(|section| {
            let meta = BlobMeta::parse_from_section(&section).map_err(|e| e.to_string())?;
            let h = meta.header();
            if h.ci_offset != entry.ci_offset
                || h.ci_compressed_size != entry.ci_compressed_size
                || h.ci_compressor != entry.ci_compressor
            {
                return Err(format!(
                    "header says CI at {:#x} ({} bytes, compressor {}), the blob table says {:#x} ({} bytes, compressor {})",
                    h.ci_offset, h.ci_compressed_size, h.ci_compressor, entry.ci_offset, entry.ci_compressed_size, entry.ci_compressor
                ));
            }
            Ok(meta)
        });
    let meta = match meta {
        Ok(m) => m,
        Err(e) => return vec![what(e)],
    };
    let mut problems = Vec::new();
    let chunks = meta.chunks();
    if chunks.len() != entry.chunk_count as usize {
        problems.push(what(format!(
            "{} entries, the blob table says {}",
            chunks.len(),
            entry.chunk_count
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for id in tree.bfs().ids() {
        let Kind::File { chunks: fc, .. } = &tree.node(id).kind else {
            continue;
        };
        for c in fc.iter().filter(|c| c.blob_index == index) {
            if !seen.insert(c.index) {
                continue;
            }
            let Some(m) = chunks.get(c.index as usize) else {
                problems.push(what(format!("no entry for chunk {}", c.index)));
                continue;
            };
            if m.compressed_offset != c.compressed_offset
                || m.compressed_size != c.compressed_size
                || m.uncompressed_offset != c.uncompressed_offset
                || m.uncompressed_size != c.uncompressed_size
                || (m.crc32().is_some() && m.crc32() != c.crc32())
            {
                problems.push(what(format!(
                    "chunk {} is described differently than in the bootstrap ({m:?} vs {c:?})",
                    c.index
                )));
            }
        }
    }
    problems
}

/// What is wrong with a chunk [`check_chunks`] read.
#[derive(Debug)]
pub enum ChunkFault {
    /// The chunk names a blob the image has not.
    NoSuchBlob,
    /// Reading the chunk from blob `blob` failed, or its data did not check out.
    Read { blob: String, error: ChunkError },
}

/// A chunk of a file that failed [`check_chunks`].
#[derive(Debug)]
pub struct ChunkProblem {
    /// The file (its first path, for a file with hardlinks).
    pub path: Vec<u8>,
    /// The chunk's position among the file's chunks.
    pub chunk: usize,
    /// The chunk.
    pub info: ChunkInfo,
    /// What is wrong.
    pub fault: ChunkFault,
}

/// What [`check_chunks`] found.
#[derive(Debug, Default)]
pub struct ChunkCheck {
    /// Regular files in the tree, each counted once (hardlinks share their chunks).
    pub files: u64,
    /// Chunks read and checked.
    pub chunks_checked: u64,
    /// The chunks that failed, in breadth-first file order.
    pub problems: Vec<ChunkProblem>,
}

/// The blob ranges holding the files the image's prefetch table lists (a listed directory
/// stands for every file below it), per blob index, sorted, ranges less than 64 KiB apart
/// joined. Only RAFS v6 images carry a table read here; others give none.
pub fn prefetch_ranges(image: &Image) -> Result<BTreeMap<u32, Vec<(u64, u64)>>, FormatError> {
    let mut out: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    if image.version != 6 {
        return Ok(out);
    }
    let b = crate::v6::Bootstrap::parse(&image.bootstrap)?;
    let nids: std::collections::HashSet<u64> = b.prefetch_nids().map(u64::from).collect();
    if nids.is_empty() {
        return Ok(out);
    }
    let mut roots = Vec::new();
    b.walk(|e| {
        if nids.contains(&e.inode.nid) {
            roots.push(e.path.to_vec());
        }
        Ok::<(), FormatError>(())
    })?;
    let mut seen = std::collections::HashSet::new();
    for path in roots {
        let Some(id) = image.tree.lookup(&path) else {
            continue;
        };
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            match &image.tree.node(id).kind {
                Kind::Dir(_) => stack.extend(image.tree.children(id).map(|(_, c)| c)),
                Kind::File { chunks, .. } => {
                    for c in chunks {
                        out.entry(c.blob_index).or_default().push((
                            c.compressed_offset,
                            c.compressed_offset + u64::from(c.compressed_size),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    for ranges in out.values_mut() {
        ranges.sort_unstable();
        let mut joined: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for &(s, e) in ranges.iter() {
            match joined.last_mut() {
                Some(last) if s <= last.1 + (64 << 10) => last.1 = last.1.max(e),
                _ => joined.push((s, e)),
            }
        }
        *ranges = joined;
    }
    Ok(out)
}

/// Checks that every chunk of every file of `image` lies where the image's own blob table says
/// its blob is: a blob that exists, stored bytes inside the blob's size, sizes of at most
/// 16 MiB. A hostile bootstrap whose chunks point past their blob is refused before mounting.
pub fn check_chunk_addresses(image: &Image) -> Result<(), String> {
    for (path, id) in image.tree.bfs().iter() {
        let Kind::File { chunks, .. } = &image.tree.node(id).kind else {
            continue;
        };
        let path = String::from_utf8_lossy(&path).into_owned();
        for c in chunks {
            let Some(b) = image.blobs.get(c.blob_index as usize) else {
                return Err(format!(
                    "{path}: chunk {} names blob {}, the image has {}",
                    c.index,
                    c.blob_index,
                    image.blobs.len()
                ));
            };
            if c.compressed_size > crate::chunk::RAFS_MAX_CHUNK_SIZE
                || c.uncompressed_size > crate::chunk::RAFS_MAX_CHUNK_SIZE
            {
                return Err(format!(
                    "{path}: chunk {} of blob {} is larger than 16 MiB",
                    c.index, b.id
                ));
            }
            let end = c
                .compressed_offset
                .checked_add(u64::from(c.compressed_size));
            if end.is_none_or(|e| e > b.compressed_size) {
                return Err(format!(
                    "{path}: chunk {} at {}+{} lies beyond the {}-byte blob {}",
                    c.index, c.compressed_offset, c.compressed_size, b.compressed_size, b.id
                ));
            }
        }
    }
    Ok(())
}

/// Reads and checks ([`BlobFile::read_chunk`]) every chunk of every regular file of `tree`, each
/// file once, from `blobs` (the image's blobs in blob table order, as [`open_blobs`] gives
/// them). With `blobs` `None` the files are only counted.
pub fn check_chunks(tree: &Tree, blobs: Option<&[BlobFile]>) -> ChunkCheck {
    let mut out = ChunkCheck::default();
    for (path, id) in tree.bfs().iter() {
        let Kind::File { chunks, .. } = &tree.node(id).kind else {
            continue;
        };
        out.files += 1;
        let Some(blobs) = blobs else {
            continue;
        };
        for (k, c) in chunks.iter().enumerate() {
            out.chunks_checked += 1;
            let fault = match blobs.get(c.blob_index as usize) {
                None => ChunkFault::NoSuchBlob,
                Some(bf) => match bf.read_chunk(c) {
                    Ok(_) => continue,
                    Err(error) => ChunkFault::Read {
                        blob: bf.id.clone(),
                        error,
                    },
                },
            };
            out.problems.push(ChunkProblem {
                path: path.clone(),
                chunk: k,
                info: *c,
                fault,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{self, ChunkOptions, CreateOptions, Source};

    /// An image of one file `f` (200 KiB, 16 KiB chunks, zstd) and its blob, written as
    /// `<dir>/<blob id>`.
    fn image(dir: &Path) -> Image {
        let content: Vec<u8> = (0..200_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 7000) as u8)
            .collect();
        let mut ar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        ar.append_data(&mut h, "f", &content[..]).unwrap();
        let tar = ar.into_inner().unwrap();
        let opts = CreateOptions {
            chunk: ChunkOptions {
                chunk_size: 0x4000,
                compressor: Compressor::Zstd,
                digester: Digester::Blake3,
                threads: 2,
            },
            inline_meta: false,
            toc: false,
            prefetch: Vec::new(),
            share_xattrs: false,
        };
        let created =
            build::create(Source::Tar(Box::new(&tar[..])), &opts, None, Vec::new()).unwrap();
        let img = from_bytes(created.bootstrap, None, "test").unwrap();
        assert_eq!(img.blobs.len(), 1);
        std::fs::write(dir.join(&img.blobs[0].id), &created.blob).unwrap();
        img
    }

    #[test]
    fn open_blobs_finds_each_blob_by_id_or_as_the_single_blob_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let by_dir = open_blobs(&img, Some(dir.path()), None).unwrap();
        assert_eq!(by_dir.len(), 1);
        assert_eq!(by_dir[0].id, img.blobs[0].id);
        assert_eq!(by_dir[0].path, dir.path().join(&img.blobs[0].id));
        let file = dir.path().join(&img.blobs[0].id);
        let single = open_blobs(&img, None, Some(&file)).unwrap();
        assert_eq!(single[0].path, file);
        assert_eq!(img.compressor().unwrap(), Some(Compressor::Zstd));
    }

    #[test]
    fn open_blobs_says_why_a_blob_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = image(dir.path());
        assert!(matches!(
            open_blobs(&img, None, None),
            Err(OpenBlobsError::NoBlobs)
        ));
        let missing = tempfile::tempdir().unwrap();
        match open_blobs(&img, Some(missing.path()), None) {
            Err(OpenBlobsError::Open { index: 0, path, .. }) => {
                assert_eq!(path, missing.path().join(&img.blobs[0].id))
            }
            other => panic!("{other:?}"),
        }
        let mut second = img.blobs[0].clone();
        second.id = "../escape".to_string();
        img.blobs.push(second);
        let file = dir.path().join(&img.blobs[0].id);
        assert!(matches!(
            open_blobs(&img, None, Some(&file)),
            Err(OpenBlobsError::NotSingleBlob { blobs: 2 })
        ));
        match open_blobs(&img, Some(dir.path()), None) {
            Err(OpenBlobsError::BadId { index: 1, id }) => assert_eq!(id, "../escape"),
            other => panic!("{other:?}"),
        }
        img.blobs[0].features = crate::BlobFeatures::ZRAN;
        match open_blobs(&img, Some(dir.path()), None) {
            Err(e @ OpenBlobsError::Unsupported { index: 0, .. }) => {
                assert!(e.to_string().contains("ZRAN (an OCI gzip layer as data)"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn check_blob_meta_compares_blob_meta_with_the_blob_table_and_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let blobs = open_blobs(&img, Some(dir.path()), None).unwrap();
        let entry = img.blobs[0].v6.unwrap();
        assert!(entry.ci_compressed_size > 0);
        assert_eq!(
            check_blob_meta(&blobs[0], &entry, 0, &img.tree),
            Vec::<String>::new()
        );
        let mut more = entry;
        more.chunk_count += 1;
        let problems = check_blob_meta(&blobs[0], &more, 0, &img.tree);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with(&format!("blob {} blob.meta: ", blobs[0].id))
                && problems[0].ends_with(&format!(
                    "{} entries, the blob table says {}",
                    entry.chunk_count, more.chunk_count
                )),
            "{problems:?}"
        );
        let mut moved = entry;
        moved.ci_offset -= 1;
        let problems = check_blob_meta(&blobs[0], &moved, 0, &img.tree);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn check_chunks_reads_every_chunk_once_and_names_the_damaged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let counted = check_chunks(&img.tree, None);
        assert_eq!((counted.files, counted.chunks_checked), (1, 0));
        assert!(counted.problems.is_empty());
        let blobs = open_blobs(&img, Some(dir.path()), None).unwrap();
        let clean = check_chunks(&img.tree, Some(&blobs));
        assert_eq!((clean.files, clean.chunks_checked), (1, 13));
        assert!(clean.problems.is_empty(), "{:?}", clean.problems);
        assert_eq!(check_chunks(&img.tree, Some(&[])).problems.len(), 13);

        // Flip a byte inside the third chunk's stored data.
        let id = img.tree.lookup(b"f").unwrap();
        let Kind::File { chunks, .. } = &img.tree.node(id).kind else {
            panic!("not a file");
        };
        let third = chunks[2];
        let path = dir.path().join(&img.blobs[0].id);
        let mut data = std::fs::read(&path).unwrap();
        data[third.compressed_offset as usize + 1] ^= 0xff;
        std::fs::write(&path, data).unwrap();
        let blobs = open_blobs(&img, Some(dir.path()), None).unwrap();
        let damaged = check_chunks(&img.tree, Some(&blobs));
        assert_eq!(damaged.chunks_checked, 13);
        assert_eq!(damaged.problems.len(), 1, "{:?}", damaged.problems);
        let p = &damaged.problems[0];
        assert_eq!((p.path.as_slice(), p.chunk), (&b"/f"[..], 2));
        assert_eq!(p.info, third);
        assert!(matches!(&p.fault, ChunkFault::Read { blob, .. } if *blob == img.blobs[0].id));
    }
}
