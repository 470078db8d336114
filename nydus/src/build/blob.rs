//! Writes file data as a Nydus data blob: fixed-size chunks, each compressed on its own (stored
//! raw when that does not shrink it), digested and CRC32C-checked, deduplicated by digest within
//! the blob and against chunks of earlier layers.
//!
//! Chunks are processed in batches on all cores (digest first, so duplicates are never
//! compressed), then written in order. Uncompressed offsets are 4 KiB aligned (blob feature
//! ALIGNED, required by RAFS v6); with no compression the stored data sits at its uncompressed
//! offset too, so the blob itself is a valid EROFS device for the bootstrap.

use std::collections::HashMap;
use std::io::{self, Write};

use sha2::{Digest as _, Sha256};

use crate::codec;
use crate::tree::{Kind, NodeId, Tree};
use crate::{BlobChunkFlags, ChunkInfo, Compressor, Digester};

/// Alignment of chunks in the uncompressed address space.
const ALIGN: u64 = 4096;
const ZEROS: [u8; ALIGN as usize] = [0; ALIGN as usize];

/// How chunks are cut and stored.
#[derive(Debug, Clone, Copy)]
pub struct ChunkOptions {
    /// Chunk size (a power of two, 4 KiB..16 MiB).
    pub chunk_size: u32,
    /// Per-chunk compressor.
    pub compressor: Compressor,
    /// Chunk digest algorithm.
    pub digester: Digester,
    /// Worker threads for digest and compression.
    pub threads: usize,
}

/// Counters for `stat` and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobStats {
    /// Chunks referenced by files (duplicates included).
    pub chunks_referenced: u64,
    /// Chunks stored in this blob.
    pub chunks_stored: u64,
    /// Chunks found in this blob or an earlier layer instead of being stored again.
    pub chunks_deduplicated: u64,
    /// File bytes seen.
    pub bytes_in: u64,
    /// Chunk bytes written (after compression).
    pub bytes_stored: u64,
}

struct Pending {
    node: NodeId,
    file_offset: u64,
    data: Vec<u8>,
}

/// Builds the data part of one blob, streaming it to `out`.
pub struct BlobWriter<W: Write> {
    out: W,
    hasher: Sha256,
    opts: ChunkOptions,
    blob_index: u32,
    /// Bytes written so far (the compressed offset of the next chunk).
    pos: u64,
    /// End of the uncompressed address space so far.
    uncompressed_end: u64,
    chunks: Vec<ChunkInfo>,
    known: HashMap<[u8; 32], ChunkInfo>,
    pending: Vec<Pending>,
    pending_bytes: usize,
    stats: BlobStats,
}

impl<W: Write> BlobWriter<W> {
    /// A writer for blob number `blob_index` of the image; `dict` holds chunks of earlier layers
    /// (by digest) that files may point to instead of storing the data again.
    pub fn new(
        out: W,
        blob_index: u32,
        opts: ChunkOptions,
        dict: HashMap<[u8; 32], ChunkInfo>,
    ) -> Self {
        BlobWriter {
            out,
            hasher: Sha256::new(),
            opts: ChunkOptions {
                threads: opts.threads.max(1),
                ..opts
            },
            blob_index,
            pos: 0,
            uncompressed_end: 0,
            chunks: Vec::new(),
            known: dict,
            pending: Vec::new(),
            pending_bytes: 0,
            stats: BlobStats::default(),
        }
    }

    /// The options chunks are stored with.
    pub fn options(&self) -> ChunkOptions {
        self.opts
    }

    /// Queues chunk data of file `node` at `file_offset`; the chunk lands in the node's chunk
    /// list (in file order) when the batch is flushed. `data` is at most one chunk.
    pub fn add_chunk(
        &mut self,
        tree: &mut Tree,
        node: NodeId,
        file_offset: u64,
        data: Vec<u8>,
    ) -> io::Result<()> {
        self.pending_bytes += data.len();
        self.stats.bytes_in += data.len() as u64;
        self.pending.push(Pending {
            node,
            file_offset,
            data,
        });
        // Enough work for every thread, bounded memory (a few chunks per thread).
        let limit = (self.opts.chunk_size as usize).max(1 << 20) * self.opts.threads * 4;
        if self.pending_bytes >= limit || self.pending.len() >= 4096 {
            self.flush(tree)?;
        }
        Ok(())
    }

    /// Reads all of `reader` (a file of `size` bytes) as chunks of file `node`. Fails if the
    /// reader ends early or has more than `size` bytes.
    pub fn add_file(
        &mut self,
        tree: &mut Tree,
        node: NodeId,
        size: u64,
        reader: &mut dyn io::Read,
    ) -> io::Result<()> {
        let cs = u64::from(self.opts.chunk_size);
        let mut off = 0u64;
        while off < size {
            let want = (size - off).min(cs) as usize;
            let mut buf = vec![0u8; want];
            reader.read_exact(&mut buf)?;
            self.add_chunk(tree, node, off, buf)?;
            off += want as u64;
        }
        let mut probe = [0u8; 1];
        if reader.read(&mut probe)? != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file grew beyond its {size} bytes while being read"),
            ));
        }
        Ok(())
    }

    /// Processes queued chunks: digests and CRCs in parallel, dedup, compression of new chunks in
    /// parallel, then writes in order.
    pub fn flush(&mut self, tree: &mut Tree) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let digester = self.opts.digester;
        let sums: Vec<([u8; 32], u32)> = par_map(&pending, self.opts.threads, |p| {
            (
                codec::digest(digester, &p.data),
                codec::chunk_crc32(&p.data),
            )
        });
        // Which chunks are new (first of their digest in this batch and not known before).
        let mut first_in_batch: HashMap<[u8; 32], usize> = HashMap::new();
        let mut new: Vec<usize> = Vec::new();
        for (i, (digest, _)) in sums.iter().enumerate() {
            if self.known.contains_key(digest) || first_in_batch.contains_key(digest) {
                continue;
            }
            first_in_batch.insert(*digest, i);
            new.push(i);
        }
        let compressor = self.opts.compressor;
        let compressed: Vec<io::Result<(Vec<u8>, bool)>> = par_map(&new, self.opts.threads, |&i| {
            codec::compress(compressor, &pending[i].data).map_err(io::Error::other)
        });
        let mut stored: HashMap<usize, (Vec<u8>, bool)> = HashMap::with_capacity(new.len());
        for (i, r) in new.iter().zip(compressed) {
            stored.insert(*i, r?);
        }
        for (i, p) in pending.into_iter().enumerate() {
            let (digest, crc) = sums[i];
            self.stats.chunks_referenced += 1;
            let info = if let Some(data) = stored.remove(&i) {
                self.store(digest, crc, p.data.len() as u32, data)?
            } else {
                self.stats.chunks_deduplicated += 1;
                self.known[&digest]
            };
            let mut info = info;
            info.file_offset = p.file_offset;
            if let Kind::File { chunks, .. } = &mut tree.node_mut(p.node).kind {
                chunks.push(info);
            }
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn store(
        &mut self,
        digest: [u8; 32],
        crc: u32,
        size: u32,
        (data, is_compressed): (Vec<u8>, bool),
    ) -> io::Result<ChunkInfo> {
        let index = u32::try_from(self.chunks.len())
            .ok()
            .filter(|i| *i < crate::chunk::RAFS_MAX_CHUNKS_PER_BLOB)
            .ok_or_else(|| io::Error::other("more than 2^24 chunks in one blob"))?;
        if self.opts.compressor == Compressor::None {
            // Stored data at its uncompressed offset: the blob doubles as an EROFS device.
            self.pad_to_uncompressed_end()?;
        }
        let mut flags = BlobChunkFlags::empty();
        if is_compressed {
            flags |= BlobChunkFlags::COMPRESSED;
        }
        // Nydus treats HAS_CRC32 with a zero CRC as invalid; such a chunk goes without it.
        if crc != 0 {
            flags |= BlobChunkFlags::HAS_CRC32;
        }
        let info = ChunkInfo {
            block_id: digest,
            blob_index: self.blob_index,
            flags,
            compressed_size: data.len() as u32,
            uncompressed_size: size,
            compressed_offset: self.pos,
            uncompressed_offset: self.uncompressed_end,
            file_offset: 0,
            index,
            crc32: if crc != 0 { crc } else { 0 },
        };
        self.write(&data)?;
        self.uncompressed_end += u64::from(size).div_ceil(ALIGN) * ALIGN;
        self.stats.chunks_stored += 1;
        self.stats.bytes_stored += data.len() as u64;
        self.chunks.push(info);
        self.known.insert(digest, info);
        Ok(info)
    }

    fn pad_to_uncompressed_end(&mut self) -> io::Result<()> {
        while self.pos < self.uncompressed_end {
            let n = (self.uncompressed_end - self.pos).min(ALIGN) as usize;
            self.write(&ZEROS[..n])?;
        }
        Ok(())
    }

    /// Flushes queued chunks and returns what the data part holds; the writer can then append
    /// blob.meta and the rest with [`Self::append`].
    pub fn finish_data(&mut self, tree: &mut Tree) -> io::Result<BlobData> {
        self.flush(tree)?;
        if self.opts.compressor == Compressor::None {
            // Whole blocks, so the blob is readable as a device up to its last block.
            self.pad_to_uncompressed_end()?;
        }
        Ok(BlobData {
            chunks: self.chunks.clone(),
            compressed_size: self.pos,
            uncompressed_size: self.uncompressed_end,
            stats: self.stats,
        })
    }

    /// Appends bytes after the chunk data (blob.meta, tar headers, TOC, ...), hashed into the
    /// blob id.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write(bytes)
    }

    /// sha256 of the bytes written so far.
    pub fn hash_so_far(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    /// Current size of the blob.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Finishes: the blob id (sha256 of every byte written, hex) and the writer.
    pub fn finish(mut self) -> io::Result<(String, W)> {
        self.out.flush()?;
        Ok((hex(&self.hasher.finalize()), self.out))
    }
}

/// The data part of a finished blob.
#[derive(Debug, Clone)]
pub struct BlobData {
    /// Stored chunks in index order.
    pub chunks: Vec<ChunkInfo>,
    /// Bytes of chunk data (offset where blob.meta starts).
    pub compressed_size: u64,
    /// Size of the uncompressed address space (4 KiB aligned).
    pub uncompressed_size: u64,
    /// Counters.
    pub stats: BlobStats,
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `f` over `items` on up to `threads` threads, results in input order.
fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if threads <= 1 || items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let threads = threads.min(items.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(item)));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut all: Vec<(usize, R)> = parts.drain(..).flatten().collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Meta, Node};

    fn opts(c: Compressor) -> ChunkOptions {
        ChunkOptions {
            chunk_size: 0x1000,
            compressor: c,
            digester: Digester::Blake3,
            threads: 2,
        }
    }

    fn file_node(tree: &mut Tree, name: &str, size: u64) -> NodeId {
        tree.insert(
            name.as_bytes(),
            Node {
                meta: Meta::default(),
                kind: Kind::File {
                    size,
                    chunks: vec![],
                },
            },
        )
        .unwrap()
    }

    #[test]
    fn chunks_are_aligned_deduplicated_and_checked() {
        let mut tree = Tree::default();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8).collect();
        let a = file_node(&mut tree, "a", data.len() as u64);
        let b = file_node(&mut tree, "b", data.len() as u64);
        let mut w = BlobWriter::new(Vec::new(), 0, opts(Compressor::Zstd), HashMap::new());
        w.add_file(&mut tree, a, data.len() as u64, &mut &data[..])
            .unwrap();
        w.add_file(&mut tree, b, data.len() as u64, &mut &data[..])
            .unwrap();
        let d = w.finish_data(&mut tree).unwrap();
        // 3 chunks per file; chunk 0 and 1 are identical (period 7 does not divide 4096, so no).
        assert_eq!(d.stats.chunks_referenced, 6);
        assert_eq!(d.stats.chunks_deduplicated, 3, "file b is all duplicates");
        for c in &d.chunks {
            assert_eq!(c.uncompressed_offset % 4096, 0);
            assert!(c.crc32().is_some());
        }
        let (id, blob) = w.finish().unwrap();
        assert_eq!(id, hex(&Sha256::digest(&blob)));
        let Kind::File { chunks, .. } = &tree.node(b).kind else {
            panic!()
        };
        let mut back = Vec::new();
        for c in chunks {
            let stored = &blob[c.compressed_offset as usize..][..c.compressed_size as usize];
            let algo = if c.is_compressed() {
                Compressor::Zstd
            } else {
                Compressor::None
            };
            let mut plain = Vec::new();
            codec::decompress(algo, stored, c.uncompressed_size as usize, &mut plain).unwrap();
            assert_eq!(codec::chunk_crc32(&plain), c.crc32);
            back.extend_from_slice(&plain);
        }
        assert_eq!(back, data);
    }

    #[test]
    fn uncompressed_blobs_keep_data_at_its_uncompressed_offset() {
        let mut tree = Tree::default();
        let a = file_node(&mut tree, "a", 5000);
        let b = file_node(&mut tree, "b", 10);
        let mut w = BlobWriter::new(Vec::new(), 0, opts(Compressor::None), HashMap::new());
        w.add_file(&mut tree, a, 5000, &mut &[1u8; 5000][..])
            .unwrap();
        w.add_file(&mut tree, b, 10, &mut &[2u8; 10][..]).unwrap();
        let d = w.finish_data(&mut tree).unwrap();
        for c in &d.chunks {
            assert_eq!(c.compressed_offset, c.uncompressed_offset);
            assert!(!c.is_compressed());
        }
        assert_eq!(d.uncompressed_size, 3 * 4096);
        let (_, blob) = w.finish().unwrap();
        assert_eq!(blob[2 * 4096], 2);
    }

    #[test]
    fn a_short_or_long_reader_is_an_error() {
        let mut tree = Tree::default();
        let a = file_node(&mut tree, "a", 100);
        let mut w = BlobWriter::new(Vec::new(), 0, opts(Compressor::Lz4Block), HashMap::new());
        assert!(w.add_file(&mut tree, a, 100, &mut &[0u8; 50][..]).is_err());
        assert!(w.add_file(&mut tree, a, 100, &mut &[0u8; 150][..]).is_err());
    }
}
