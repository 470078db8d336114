//! Building RAFS v6 images: one layer (a directory or a layer tar) into a data blob and a
//! bootstrap, optionally on top of a parent image; and merging layer bootstraps into an image.

pub mod blob;
mod finish;
pub mod merge;

pub use finish::{blob_meta_cache_file, PLACEHOLDER_BLOB_ID};
pub use merge::{merge, LayerBlob, MergeLayer, MergeOptions, Merged};
pub mod source;
pub mod tarstream;

use std::collections::HashMap;
use std::io::{self, Write};

use crate::tree::{Kind, Tree, TreeError};
use crate::v6::{write_bootstrap, BlobEntry, Bootstrap, WriteOptions};
use crate::{BlobFeatures, ChunkInfo, Compressor, Digester, FormatError, RafsSuperFlags};

pub use blob::{BlobData, BlobStats, BlobWriter, ChunkOptions};

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Reading the source or writing an output failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A path or hardlink in the source is invalid.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// On-disk metadata is invalid or cannot be written.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Anything else wrong with the input or the options.
    #[error("{0}")]
    Invalid(String),
}

/// The features of a blob this builder writes.
pub fn blob_features(inline_meta: bool, toc: bool) -> BlobFeatures {
    let mut f = BlobFeatures::ALIGNED | BlobFeatures::CHUNK_INFO_V2 | BlobFeatures::CAP_TAR_TOC;
    if inline_meta {
        f |= BlobFeatures::INLINED_FS_META | BlobFeatures::HAS_TAR_HEADER;
    }
    if toc {
        f |= BlobFeatures::HAS_TOC
            | BlobFeatures::HAS_TAR_HEADER
            | BlobFeatures::INLINED_CHUNK_DIGEST;
    }
    f
}

/// A parent image a layer is built on (`--parent-bootstrap`), or a chunk dictionary
/// (`--chunk-dict`: its chunks are reused, its files are not part of the new layer).
#[derive(Debug, Clone)]
pub struct Parent {
    /// The parent's filesystem the layer is stacked on; `None` for a chunk dictionary (the layer
    /// is then its own tree, whiteouts and lower-layer hardlinks kept for a later merge).
    pub tree: Option<Tree>,
    /// The parent's blob table.
    pub blobs: Vec<BlobEntry>,
    /// The chunks a new layer may reuse, by digest.
    pub dict: HashMap<[u8; 32], ChunkInfo>,
}

impl Parent {
    /// Reads a parent bootstrap.
    pub fn from_bootstrap(bytes: &[u8]) -> Result<Self, FormatError> {
        let b = Bootstrap::parse(bytes)?;
        let tree = b.to_tree()?;
        let dict = chunks_by_digest(&tree);
        // As in a merge: the new bootstrap is inlined in none of the parent's blobs.
        let mut blobs = b.blobs().to_vec();
        for e in &mut blobs {
            e.features.remove(BlobFeatures::INLINED_FS_META);
        }
        Ok(Parent {
            tree: Some(tree),
            blobs,
            dict,
        })
    }

    /// Reads a chunk dictionary: another image's bootstrap whose chunks new layers may
    /// reference (its blobs join the new bootstrap's blob table, its files do not).
    pub fn chunk_dict(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut p = Self::from_bootstrap(bytes)?;
        p.tree = None;
        Ok(p)
    }
}

/// Every chunk of a tree's files by digest.
fn chunks_by_digest(tree: &Tree) -> HashMap<[u8; 32], ChunkInfo> {
    let mut dict = HashMap::new();
    for id in tree.bfs().ids() {
        if let Kind::File { chunks, .. } = &tree.node(id).kind {
            for c in chunks {
                dict.entry(c.block_id).or_insert(*c);
            }
        }
    }
    dict
}

/// Super flags for an image of this compressor and digester.
pub fn super_flags(compressor: Compressor, digester: Digester) -> RafsSuperFlags {
    (RafsSuperFlags::EXPLICIT_UID_GID)
        .with_compressor(compressor)
        .with_digester(digester)
}

/// Writes a bootstrap for `tree` and `blobs` with these chunk options.
pub fn bootstrap_for(
    tree: &Tree,
    blobs: &[BlobEntry],
    chunk: &ChunkOptions,
    prefetch: &[Vec<u8>],
    share_xattrs: bool,
) -> Result<Vec<u8>, FormatError> {
    write_bootstrap(
        tree,
        blobs,
        &WriteOptions {
            chunk_size: chunk.chunk_size,
            flags: super_flags(chunk.compressor, chunk.digester),
            prefetch: prefetch.to_vec(),
            share_xattrs,
        },
    )
}

/// The blob table entry for a blob this builder wrote.
pub fn blob_entry(
    blob_id: &str,
    data: &BlobData,
    chunk: &ChunkOptions,
    features: BlobFeatures,
) -> Result<BlobEntry, FormatError> {
    let mut e = BlobEntry {
        chunk_size: chunk.chunk_size,
        chunk_count: data.chunks.len() as u32,
        compression_algo: chunk.compressor.into(),
        digest_algo: chunk.digester.into(),
        features,
        compressed_size: data.compressed_size,
        uncompressed_size: data.uncompressed_size,
        ..BlobEntry::default()
    };
    e.set_blob_id(blob_id)?;
    Ok(e)
}

/// Where a layer comes from.
pub enum Source<'a> {
    /// A directory on disk.
    Dir(&'a std::path::Path),
    /// An OCI layer tar stream (plain, gzip or zstd).
    Tar(Box<dyn io::Read + 'a>),
}

/// How `create` builds.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Chunking, compression, digests, threads.
    pub chunk: ChunkOptions,
    /// Append the bootstrap to the blob (`--blob-inline-meta`).
    pub inline_meta: bool,
    /// End the blob with a TOC and a chunk digest table (`--features blob-toc`).
    pub toc: bool,
    /// Paths to list in the prefetch table.
    pub prefetch: Vec<Vec<u8>>,
    /// Store xattrs several inodes share once, in EROFS's shared xattr area
    /// ([`WriteOptions::share_xattrs`]; Nydus 2.4 cannot read such bootstraps).
    pub share_xattrs: bool,
}

/// What `create` produced.
pub struct Created<W> {
    /// The bootstrap (also inside the blob with inline meta).
    pub bootstrap: Vec<u8>,
    /// The new blob's id, or `None` if the layer stored no chunk (then nothing useful was
    /// written to the blob output).
    pub blob_id: Option<String>,
    /// Chunk counters.
    pub stats: BlobStats,
    /// The new blob's blob.meta in Nydus's cache-file form ([`blob_meta_cache_file`]), when a
    /// blob was written.
    pub blob_meta: Option<Vec<u8>>,
    /// The blob output, flushed.
    pub blob: W,
}

/// Builds one layer from `source` into a blob written to `out` and a bootstrap, on top of
/// `parent` if given (the bootstrap then describes the whole image and the new blob is appended
/// to the parent's blob table; chunks the parent already has are not stored again).
pub fn create<W: Write>(
    source: Source<'_>,
    opts: &CreateOptions,
    parent: Option<Parent>,
    out: W,
) -> Result<Created<W>, BuildError> {
    if !crate::chunk::is_valid_chunk_size(opts.chunk.chunk_size) {
        return Err(BuildError::Invalid(format!(
            "chunk size {:#x} is not a power of two between 0x1000 and 0x1000000",
            opts.chunk.chunk_size
        )));
    }
    let (dict, blob_index, parent_blobs) = match &parent {
        Some(p) => {
            let c = p.blobs.first();
            if let Some(c) = c {
                if c.chunk_size != opts.chunk.chunk_size
                    || c.digest_algo != u32::from(opts.chunk.digester)
                {
                    return Err(BuildError::Invalid(
                        "the parent bootstrap uses another chunk size or digester".into(),
                    ));
                }
            }
            (p.dict.clone(), p.blobs.len() as u32, p.blobs.clone())
        }
        None => (HashMap::new(), 0, Vec::new()),
    };
    let mut layer = Tree::default();
    let mut writer = BlobWriter::new(out, blob_index, opts.chunk, dict);
    match source {
        Source::Dir(path) => source::from_dir(path, &mut layer, &mut writer)?,
        Source::Tar(r) => source::from_tar(r, &mut layer, &mut writer)?,
    }
    let data = writer
        .finish_data(&mut layer)
        .map_err(|source| BuildError::Io {
            what: "writing the blob".into(),
            source,
        })?;
    let (tree, mut blobs) = match parent {
        Some(Parent {
            tree: Some(mut t), ..
        }) => {
            t.apply_layer(&layer)?;
            (t, parent_blobs)
        }
        Some(Parent { tree: None, .. }) => (layer, parent_blobs),
        None => (layer, Vec::new()),
    };
    // A layer without file data still gets a blob when its bootstrap goes inside it (as Nydus
    // does): an image layer must carry its metadata somewhere.
    if data.chunks.is_empty() && !opts.inline_meta {
        let bootstrap = bootstrap_for(
            &tree,
            &blobs,
            &opts.chunk,
            &opts.prefetch,
            opts.share_xattrs,
        )?;
        let (_, blob) = writer.finish().map_err(|source| BuildError::Io {
            what: "writing the blob".into(),
            source,
        })?;
        return Ok(Created {
            bootstrap,
            blob_id: None,
            stats: data.stats,
            blob_meta: None,
            blob,
        });
    }
    let f = finish::finish_blob(writer, &data, opts, tree, &mut blobs)?;
    Ok(Created {
        bootstrap: f.bootstrap,
        blob_id: Some(f.blob_id),
        stats: data.stats,
        blob_meta: Some(f.blob_meta),
        blob: f.out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toc::{self, Toc};
    use sha2::{Digest as _, Sha256};

    fn layer_tar() -> Vec<u8> {
        let mut ar = tar::Builder::new(Vec::new());
        for (name, len) in [("a", 10_000usize), ("b/c", 70_000), ("d", 0)] {
            let mut h = tar::Header::new_gnu();
            h.set_size(len as u64);
            h.set_mode(0o644);
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            ar.append_data(&mut h, name, &data[..]).unwrap();
        }
        ar.into_inner().unwrap()
    }

    fn create_with(inline_meta: bool, toc: bool) -> Created<Vec<u8>> {
        let opts = CreateOptions {
            chunk: ChunkOptions {
                chunk_size: 0x4000,
                compressor: Compressor::Zstd,
                digester: Digester::Blake3,
                threads: 2,
            },
            inline_meta,
            toc,
            prefetch: vec![b"/b".to_vec()],
            share_xattrs: false,
        };
        let tar = layer_tar();
        create(Source::Tar(Box::new(&tar[..])), &opts, None, Vec::new()).unwrap()
    }

    #[test]
    fn every_toc_entry_describes_its_section_and_digest() {
        let c = create_with(true, true);
        let blob = &c.blob;
        let toc = Toc::parse_from_tail(blob).unwrap();
        let names: Vec<&str> = toc.entries().iter().map(|e| e.name().unwrap()).collect();
        assert_eq!(
            names,
            [
                "image.blob",
                "blob.meta",
                "blob.meta.header",
                "blob.digest",
                "image.boot"
            ]
        );
        let sections = toc::locate_sections(blob).unwrap();
        let data = &sections[0];
        assert_eq!(data.name, "image.blob");
        // image.blob: the chunk data and its tar header, as Nydus hashes it.
        let e = toc.find("image.blob").unwrap();
        let end = (data.offset + data.size) as usize + 512;
        assert_eq!(
            e.uncompressed_digest,
            <[u8; 32]>::from(Sha256::digest(&blob[..end]))
        );
        // blob.digest: the chunk digests, stored raw.
        let e = toc.find("blob.digest").unwrap();
        let digests = &blob[e.compressed_offset as usize..][..e.compressed_size as usize];
        assert_eq!(
            e.uncompressed_digest,
            <[u8; 32]>::from(Sha256::digest(digests))
        );
        // image.boot: the bootstrap, zstd-compressed; its digest is of the bootstrap itself.
        let e = toc.find("image.boot").unwrap();
        let stored = &blob[e.compressed_offset as usize..][..e.compressed_size as usize];
        let mut boot = Vec::new();
        crate::codec::decompress_bounded(
            Compressor::Zstd,
            stored,
            e.uncompressed_size as usize,
            &mut boot,
        )
        .unwrap();
        assert_eq!(boot, c.bootstrap);
        assert_eq!(
            e.uncompressed_digest,
            <[u8; 32]>::from(Sha256::digest(&boot))
        );
        // The blob id is the hash of the whole file; the inline bootstrap has the placeholder.
        assert_eq!(
            c.blob_id.as_deref(),
            Some(blob::hex(&Sha256::digest(blob)).as_str())
        );
        let b = Bootstrap::parse(&c.bootstrap).unwrap();
        assert_eq!(b.blobs()[0].blob_id().unwrap(), finish::PLACEHOLDER_BLOB_ID);
        assert_eq!(b.prefetch_nids().count(), 1);
    }

    #[test]
    fn a_separate_bootstrap_names_the_blob_by_its_hash_and_records_the_toc() {
        let c = create_with(false, true);
        let b = Bootstrap::parse(&c.bootstrap).unwrap();
        let e = &b.blobs()[0];
        assert_eq!(Some(e.blob_id().unwrap()), c.blob_id.as_deref());
        let toc = Toc::parse_from_tail(&c.blob).unwrap();
        assert_eq!(e.blob_toc_size, toc.size());
        assert_eq!(e.blob_toc_digest, toc.digest());
        // blob.meta in the blob agrees with the bootstrap's chunks.
        let meta = crate::blobmeta::BlobMeta::parse_from_blob(
            &c.blob,
            e.ci_offset,
            e.ci_compressed_size,
            e.ci_compressor().unwrap(),
        )
        .unwrap();
        assert_eq!(meta.chunks().len() as u32, e.chunk_count);
        let tree = b.to_tree().unwrap();
        for id in tree.bfs().ids() {
            if let Kind::File { chunks, .. } = &tree.node(id).kind {
                for ch in chunks {
                    let m = meta.chunks()[ch.index as usize];
                    assert_eq!(
                        (m.compressed_offset, m.compressed_size, m.crc32()),
                        (ch.compressed_offset, ch.compressed_size, ch.crc32())
                    );
                }
            }
        }
        // Without a TOC or inline meta the blob is chunk data then blob.meta, nothing else.
        let plain = create_with(false, false);
        let b = Bootstrap::parse(&plain.bootstrap).unwrap();
        let e = &b.blobs()[0];
        assert_eq!(e.blob_toc_size, 0);
        assert_eq!(
            plain.blob.len() as u64,
            e.ci_offset + e.ci_compressed_size + 4096
        );
    }
}
