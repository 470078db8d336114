//! Finishing a blob after its chunk data, in Nydus's order:
//!
//! ```text
//! chunk data | [tar "image.blob"] | CI array (compressed) + 4096-byte header | [tar "blob.meta"]
//!   | [chunk digests | tar "blob.digest"] | [bootstrap | tar "image.boot"] | [TOC | tar "rafs.blob.toc"]
//! ```
//!
//! Tar headers follow their section when inline meta or the TOC is on; the digest table and the
//! TOC only with the TOC; the bootstrap only with inline meta (zstd-compressed when there is a
//! TOC, as Nydus does).

use std::io::Write;

use sha2::{Digest as _, Sha256};

use super::{
    blob_entry, blob_features, bootstrap_for, BlobData, BlobWriter, BuildError, CreateOptions,
};
use crate::blobmeta::{
    encode_ci_v1, encode_ci_v2, BlobMetaChunk, BlobMetaHeader, CiFlags, BLOB_META_HEADER_SIZE,
};
use crate::toc::{self, Toc, TocEntry};
use crate::tree::Tree;
use crate::v6::BlobEntry;
use crate::{codec, BlobFeatures, Compressor};

/// The blob id written into an inline-meta bootstrap, which cannot hold its own blob's hash.
pub const PLACEHOLDER_BLOB_ID: &str =
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

fn section_header(name: &str, size: u64) -> Result<[u8; 512], BuildError> {
    Ok(toc::tar_header(name, size)?)
}

/// What [`finish_blob`] made.
pub(super) struct Finished<W> {
    pub bootstrap: Vec<u8>,
    pub blob_id: String,
    /// blob.meta in the local cache-file form ([`blob_meta_cache_file`]).
    pub blob_meta: Vec<u8>,
    pub out: W,
}

/// blob.meta as Nydus keeps it next to a bootstrap (`<blob-id>.blob.meta`, also the files of a
/// Nydus image's bootstrap layer): the uncompressed CI array padded to 4 KiB, then the 4096-byte
/// header.
pub fn blob_meta_cache_file(
    ci_uncompressed: &[u8],
    header: &[u8; BLOB_META_HEADER_SIZE],
) -> Vec<u8> {
    let padded = ci_uncompressed.len().div_ceil(4096) * 4096;
    let mut out = Vec::with_capacity(padded + BLOB_META_HEADER_SIZE);
    out.extend_from_slice(ci_uncompressed);
    out.resize(padded, 0);
    out.extend_from_slice(header);
    out
}

/// Appends what follows the chunk data and writes the bootstrap (the new blob's entry appended
/// to `blobs`).
pub(super) fn finish_blob<W: Write>(
    mut writer: BlobWriter<W>,
    data: &BlobData,
    opts: &CreateOptions,
    tree: Tree,
    blobs: &mut Vec<BlobEntry>,
) -> Result<Finished<W>, BuildError> {
    let io = |source| BuildError::Io {
        what: "writing the blob".into(),
        source,
    };
    let headers = opts.inline_meta || opts.toc;
    let features = blob_features(opts.inline_meta, opts.toc);
    let mut entries: Vec<TocEntry> = Vec::new();

    if headers {
        writer
            .append(&section_header(
                toc::TOC_ENTRY_BLOB_RAW,
                data.compressed_size,
            )?)
            .map_err(io)?;
    }
    if opts.toc {
        // As Nydus: the digest covers the chunk data and the tar header after it.
        entries.push(TocEntry::new(
            toc::TOC_ENTRY_BLOB_RAW,
            Compressor::None,
            writer.hash_so_far().map_err(io)?,
            0,
            data.compressed_size,
            data.uncompressed_size,
        )?);
    }

    // blob.meta: the CI array compressed with the blob's compressor (raw if that does not
    // shrink it), then its header.
    let cis: Vec<BlobMetaChunk> = data
        .chunks
        .iter()
        .map(BlobMetaChunk::from_chunk_info)
        .collect();
    // CI v2 (with the CRC32C) unless a chunk cannot be described in it: v2 stores sizes below
    // 2^24, so a 16 MiB chunk stored raw needs v1 (which stores size - 1).
    let (ci, features) = match encode_ci_v2(&cis) {
        Ok(ci) => (ci, features),
        Err(_) => {
            let mut f = features;
            f.remove(BlobFeatures::CHUNK_INFO_V2);
            // v1 has room for neither flags nor the CRC (the bootstrap keeps the CRC).
            let v1: Vec<BlobMetaChunk> = cis
                .iter()
                .map(|c| BlobMetaChunk {
                    flags: if c.is_compressed() {
                        CiFlags::COMPRESSED
                    } else {
                        CiFlags::empty()
                    },
                    data: 0,
                    ..*c
                })
                .collect();
            (encode_ci_v1(&v1)?, f)
        }
    };
    let (ci_stored, compressed) = codec::compress_bounded(opts.chunk.compressor, &ci)
        .map_err(|e| BuildError::Invalid(format!("compressing blob.meta: {e}")))?;
    let ci_compressor = if compressed {
        opts.chunk.compressor
    } else {
        Compressor::None
    };
    let ci_offset = writer.position();
    let header = BlobMetaHeader::new(
        features,
        ci_compressor,
        data.chunks.len() as u32,
        ci_offset,
        ci_stored.len() as u64,
        ci.len() as u64,
    )
    .to_bytes();
    writer.append(&ci_stored).map_err(io)?;
    writer.append(&header).map_err(io)?;
    if headers {
        let size = ci_stored.len() as u64 + BLOB_META_HEADER_SIZE as u64;
        writer
            .append(&section_header(toc::TOC_ENTRY_BLOB_META, size)?)
            .map_err(io)?;
    }
    if opts.toc {
        entries.push(TocEntry::new(
            toc::TOC_ENTRY_BLOB_META,
            ci_compressor,
            Sha256::digest(&ci).into(),
            ci_offset,
            ci_stored.len() as u64,
            ci.len() as u64,
        )?);
        entries.push(TocEntry::new(
            toc::TOC_ENTRY_BLOB_META_HEADER,
            Compressor::None,
            Sha256::digest(header).into(),
            ci_offset + ci_stored.len() as u64,
            BLOB_META_HEADER_SIZE as u64,
            BLOB_META_HEADER_SIZE as u64,
        )?);
        let digests: Vec<u8> = data.chunks.iter().flat_map(|c| c.block_id).collect();
        let off = writer.position();
        writer.append(&digests).map_err(io)?;
        writer
            .append(&section_header(
                toc::TOC_ENTRY_BLOB_DIGEST,
                digests.len() as u64,
            )?)
            .map_err(io)?;
        entries.push(TocEntry::new(
            toc::TOC_ENTRY_BLOB_DIGEST,
            Compressor::None,
            Sha256::digest(&digests).into(),
            off,
            digests.len() as u64,
            digests.len() as u64,
        )?);
    }

    let mut entry = blob_entry(PLACEHOLDER_BLOB_ID, data, &opts.chunk, features)?;
    entry.compressed_size = writer.position();
    entry.ci_compressor = ci_compressor.into();
    entry.ci_offset = ci_offset;
    entry.ci_compressed_size = ci_stored.len() as u64;
    entry.ci_uncompressed_size = ci.len() as u64;

    let bootstrap = if opts.inline_meta {
        // The bootstrap is part of the blob, so it carries the placeholder id.
        blobs.push(entry);
        let bootstrap =
            bootstrap_for(&tree, blobs, &opts.chunk, &opts.prefetch, opts.share_xattrs)?;
        let off = writer.position();
        let (stored, compressor) = if opts.toc {
            let (z, shrunk) = codec::compress_bounded(Compressor::Zstd, &bootstrap)
                .map_err(|e| BuildError::Invalid(format!("compressing the bootstrap: {e}")))?;
            let c = if shrunk {
                Compressor::Zstd
            } else {
                Compressor::None
            };
            (z, c)
        } else {
            (bootstrap.clone(), Compressor::None)
        };
        writer.append(&stored).map_err(io)?;
        writer
            .append(&section_header(
                toc::TOC_ENTRY_BOOTSTRAP,
                stored.len() as u64,
            )?)
            .map_err(io)?;
        if opts.toc {
            entries.push(TocEntry::new(
                toc::TOC_ENTRY_BOOTSTRAP,
                compressor,
                Sha256::digest(&bootstrap).into(),
                off,
                stored.len() as u64,
                bootstrap.len() as u64,
            )?);
        }
        Some(bootstrap)
    } else {
        None
    };

    let (toc_digest, toc_size) = if opts.toc {
        let encoded = Toc::encode(&entries)?;
        writer.append(&encoded).map_err(io)?;
        (toc::blob_toc_digest(&encoded), encoded.len() as u32)
    } else {
        ([0u8; 32], 0)
    };

    let (blob_id, out) = writer.finish().map_err(io)?;
    let bootstrap = match bootstrap {
        Some(b) => b,
        None => {
            entry.set_blob_id(&blob_id)?;
            entry.blob_toc_digest = toc_digest;
            entry.blob_toc_size = toc_size;
            blobs.push(entry);
            bootstrap_for(&tree, blobs, &opts.chunk, &opts.prefetch, opts.share_xattrs)?
        }
    };
    Ok(Finished {
        bootstrap,
        blob_id,
        blob_meta: blob_meta_cache_file(&ci, &header),
        out,
    })
}
