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
use crate::tree::Tree;
use crate::v6::BlobEntry;
use crate::{codec, BlobChunkFlags, ChunkInfo, Compressor};

/// blob.meta header magic (both ends of the 4096-byte header).
const META_MAGIC: u32 = 0xB10B_B10B;
/// Size of the blob.meta header.
pub const META_HEADER_SIZE: usize = 4096;
/// The blob id written into an inline-meta bootstrap, which cannot hold its own blob's hash.
pub const PLACEHOLDER_BLOB_ID: &str =
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// Encodes chunk infos as blob.meta v2 entries (24 bytes each).
pub fn encode_ci_v2(chunks: &[ChunkInfo]) -> Result<Vec<u8>, BuildError> {
    let mut out = Vec::with_capacity(chunks.len() * 24);
    for c in chunks {
        if c.uncompressed_offset % 4096 != 0
            || c.uncompressed_offset >> 12 > u64::from(u32::MAX)
            || c.uncompressed_size == 0
            || c.uncompressed_size > 1 << 24
            || c.compressed_offset >= 1 << 40
            || u64::from(c.compressed_size) >= 1 << 24
        {
            return Err(BuildError::Invalid(format!(
                "chunk {} cannot be described in blob.meta v2: {c:?}",
                c.index
            )));
        }
        let mut flags = 0u64;
        if c.flags.contains(BlobChunkFlags::COMPRESSED) {
            flags |= 0x01;
        }
        if c.flags.contains(BlobChunkFlags::HAS_CRC32) {
            flags |= 0x10;
        }
        let uncomp = (c.uncompressed_offset >> 12)
            | (u64::from(c.uncompressed_size - 1) << 32)
            | (flags << 56);
        let comp = c.compressed_offset | (u64::from(c.compressed_size) << 40);
        let data = if flags & 0x10 != 0 {
            u64::from(c.crc32)
        } else {
            0
        };
        out.extend_from_slice(&uncomp.to_le_bytes());
        out.extend_from_slice(&comp.to_le_bytes());
        out.extend_from_slice(&data.to_le_bytes());
    }
    Ok(out)
}

/// The 4096-byte blob.meta header.
fn meta_header(
    features: u32,
    ci_compressor: Compressor,
    entries: u32,
    ci_offset: u64,
    csize: u64,
    usize_: u64,
) -> Vec<u8> {
    let mut h = vec![0u8; META_HEADER_SIZE];
    h[0..4].copy_from_slice(&META_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&features.to_le_bytes());
    h[8..12].copy_from_slice(&u32::from(ci_compressor).to_le_bytes());
    h[12..16].copy_from_slice(&entries.to_le_bytes());
    h[16..24].copy_from_slice(&ci_offset.to_le_bytes());
    h[24..32].copy_from_slice(&csize.to_le_bytes());
    h[32..40].copy_from_slice(&usize_.to_le_bytes());
    h[4092..4096].copy_from_slice(&META_MAGIC.to_le_bytes());
    h
}

/// The 512-byte GNU tar header Nydus writes after a section (`tar` crate, as Nydus uses).
pub fn section_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = tar::Header::new_gnu();
    // Names are short constants; set_path cannot fail for them.
    let _ = h.set_path(name);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_cksum();
    let mut out = [0u8; 512];
    out.copy_from_slice(h.as_bytes());
    out
}

/// One 128-byte TOC entry.
fn toc_entry(
    name: &str,
    compressor: Compressor,
    digest: [u8; 32],
    offset: u64,
    csize: u64,
    usize_: u64,
) -> [u8; 128] {
    let mut e = [0u8; 128];
    let flags: u32 = match compressor {
        Compressor::None => 0x1,
        Compressor::Zstd => 0x2,
        Compressor::Lz4Block => 0x4,
        Compressor::GZip => 0x1,
    };
    e[0..4].copy_from_slice(&flags.to_le_bytes());
    e[8..8 + name.len()].copy_from_slice(name.as_bytes());
    e[24..56].copy_from_slice(&digest);
    e[56..64].copy_from_slice(&offset.to_le_bytes());
    e[64..72].copy_from_slice(&csize.to_le_bytes());
    e[72..80].copy_from_slice(&usize_.to_le_bytes());
    e
}

/// Appends what follows the chunk data, writes the bootstrap (the new blob's entry appended to
/// `blobs`), and returns the bootstrap, the blob id and the blob output.
pub(super) fn finish_blob<W: Write>(
    mut writer: BlobWriter<W>,
    data: &BlobData,
    opts: &CreateOptions,
    tree: Tree,
    blobs: &mut Vec<BlobEntry>,
) -> Result<(Vec<u8>, String, W), BuildError> {
    let io = |source| BuildError::Io {
        what: "writing the blob".into(),
        source,
    };
    let headers = opts.inline_meta || opts.toc;
    let features = blob_features(opts.inline_meta, opts.toc);
    let mut toc: Vec<u8> = Vec::new();

    let data_digest = writer.hash_so_far();
    if headers {
        writer
            .append(&section_header("image.blob", data.compressed_size))
            .map_err(io)?;
    }
    if opts.toc {
        toc.extend_from_slice(&toc_entry(
            "image.blob",
            Compressor::None,
            data_digest,
            0,
            data.compressed_size,
            data.uncompressed_size,
        ));
    }

    // blob.meta: CI array compressed with the blob's compressor (raw if that does not shrink
    // it), then the header.
    let ci = encode_ci_v2(&data.chunks)?;
    let (ci_stored, compressed) = codec::compress(opts.chunk.compressor, &ci)
        .map_err(|e| BuildError::Invalid(format!("compressing blob.meta: {e}")))?;
    let ci_compressor = if compressed {
        opts.chunk.compressor
    } else {
        Compressor::None
    };
    let ci_offset = writer.position();
    let header = meta_header(
        features.bits(),
        ci_compressor,
        data.chunks.len() as u32,
        ci_offset,
        ci_stored.len() as u64,
        ci.len() as u64,
    );
    writer.append(&ci_stored).map_err(io)?;
    writer.append(&header).map_err(io)?;
    if headers {
        writer
            .append(&section_header(
                "blob.meta",
                ci_stored.len() as u64 + META_HEADER_SIZE as u64,
            ))
            .map_err(io)?;
    }
    if opts.toc {
        toc.extend_from_slice(&toc_entry(
            "blob.meta",
            ci_compressor,
            Sha256::digest(&ci).into(),
            ci_offset,
            ci_stored.len() as u64,
            ci.len() as u64,
        ));
        toc.extend_from_slice(&toc_entry(
            "blob.meta.header",
            Compressor::None,
            Sha256::digest(&header).into(),
            ci_offset + ci_stored.len() as u64,
            META_HEADER_SIZE as u64,
            META_HEADER_SIZE as u64,
        ));
        let digests: Vec<u8> = data.chunks.iter().flat_map(|c| c.block_id).collect();
        let off = writer.position();
        writer.append(&digests).map_err(io)?;
        writer
            .append(&section_header("blob.digest", digests.len() as u64))
            .map_err(io)?;
        toc.extend_from_slice(&toc_entry(
            "blob.digest",
            Compressor::None,
            Sha256::digest(&digests).into(),
            off,
            digests.len() as u64,
            digests.len() as u64,
        ));
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
        let bootstrap = bootstrap_for(&tree, blobs, &opts.chunk, &opts.prefetch)?;
        let off = writer.position();
        let (stored, compressor) = if opts.toc {
            let (z, shrunk) = codec::compress(Compressor::Zstd, &bootstrap)
                .map_err(|e| BuildError::Invalid(format!("compressing the bootstrap: {e}")))?;
            (
                z,
                if shrunk {
                    Compressor::Zstd
                } else {
                    Compressor::None
                },
            )
        } else {
            (bootstrap.clone(), Compressor::None)
        };
        writer.append(&stored).map_err(io)?;
        writer
            .append(&section_header("image.boot", stored.len() as u64))
            .map_err(io)?;
        if opts.toc {
            toc.extend_from_slice(&toc_entry(
                "image.boot",
                compressor,
                Sha256::digest(&bootstrap).into(),
                off,
                stored.len() as u64,
                bootstrap.len() as u64,
            ));
        }
        Some(bootstrap)
    } else {
        None
    };

    let (toc_digest, toc_size) = if opts.toc {
        let hdr = section_header("rafs.blob.toc", toc.len() as u64);
        writer.append(&toc).map_err(io)?;
        writer.append(&hdr).map_err(io)?;
        let mut h = Sha256::new();
        h.update(&toc);
        h.update(hdr);
        (h.finalize().into(), (toc.len() + 512) as u32)
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
            bootstrap_for(&tree, blobs, &opts.chunk, &opts.prefetch)?
        }
    };
    Ok((bootstrap, blob_id, out))
}
