//! Writes file data as a Nydus data blob: fixed-size chunks, each compressed on its own (stored
//! raw when that does not shrink it), digested and CRC32C-checked, deduplicated by digest within
//! the blob and against chunks of earlier layers.
//!
//! Chunks are processed in batches on all cores (digest first, so duplicates are never
//! compressed) by a worker thread while the caller reads the next batch and writes finished ones
//! in order. Uncompressed offsets are 4 KiB aligned (blob feature
//! ALIGNED, required by RAFS v6); with no compression the stored data sits at its uncompressed
//! offset too, so the blob itself is a valid EROFS device for the bootstrap.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read as _, Write};
use std::sync::mpsc;

use rayon::prelude::*;

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

/// A chunk the worker has processed.
struct Done {
    node: NodeId,
    file_offset: u64,
    size: u32,
    digest: [u8; 32],
    crc: u32,
    /// The bytes to store (and whether they are compressed), for the first chunk of its digest;
    /// `None` for a duplicate.
    stored: Option<(Vec<u8>, bool)>,
    /// The chunk's read buffer, back for reuse (empty when it became the stored bytes).
    spare: Vec<u8>,
}

/// Batches being processed at once (besides the one being filled): enough to keep the reader,
/// the worker and the writer busy together, few enough to bound memory (`nydusify` builds
/// several layers at once).
const MAX_IN_FLIGHT: usize = 2;
/// Bytes of whole-chunk read buffers kept for reuse (reusing them saves the page faults of fresh
/// allocations).
const POOL_BYTES: usize = 16 << 20;

/// The background worker: digests, dedup decisions and compression of whole batches, in order.
struct Worker {
    tx: Option<mpsc::Sender<Vec<Pending>>>,
    rx: mpsc::Receiver<io::Result<Vec<Done>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Runs the worker: for each batch, digests and CRCs on `opts.threads` threads; then, in order,
/// the first chunk of each digest not seen before is new; new chunks are compressed on
/// `opts.threads` threads. The decision depends only on the order of chunks, so the blob is the
/// same however the threads interleave.
fn work(
    rx: mpsc::Receiver<Vec<Pending>>,
    tx: mpsc::Sender<io::Result<Vec<Done>>>,
    opts: ChunkOptions,
    mut seen: HashSet<[u8; 32]>,
) {
    // Long-lived threads (fresh threads per batch cost more than the work they share out:
    // allocator arenas and page faults), each with its own compressor.
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .thread_name(|i| format!("blob-chunk-{i}"))
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            let _ = tx.send(Err(io::Error::other(format!(
                "starting the chunk threads: {e}"
            ))));
            return;
        }
    };
    for batch in rx {
        let sums: Vec<([u8; 32], u32)> = pool.install(|| {
            batch
                .par_iter()
                .map(|p| {
                    (
                        codec::digest(opts.digester, &p.data),
                        codec::chunk_crc32(&p.data),
                    )
                })
                .collect()
        });
        let new: Vec<bool> = sums.iter().map(|(d, _)| seen.insert(*d)).collect();
        let compressed: Vec<Option<io::Result<Option<Vec<u8>>>>> =
            if opts.compressor == Compressor::None {
                batch.iter().map(|_| None).collect()
            } else {
                let idx: Vec<usize> = (0..batch.len()).filter(|i| new[*i]).collect();
                let mut out: Vec<Option<io::Result<Option<Vec<u8>>>>> =
                    batch.iter().map(|_| None).collect();
                let results: Vec<io::Result<Option<Vec<u8>>>> = pool.install(|| {
                    idx.par_iter()
                        .map(|&i| compress_here(opts.compressor, &batch[i].data))
                        .collect()
                });
                for (i, r) in idx.into_iter().zip(results) {
                    out[i] = Some(r);
                }
                out
            };
        let mut done = Vec::with_capacity(batch.len());
        let mut failed = None;
        for (((p, (digest, crc)), is_new), c) in
            batch.into_iter().zip(sums).zip(new).zip(compressed)
        {
            let size = p.data.len() as u32;
            let (stored, spare) = match (is_new, c) {
                (false, _) => (None, p.data),
                // Uncompressed: the read buffer itself is stored.
                (true, None) => (Some((p.data, false)), Vec::new()),
                (true, Some(Ok(Some(bytes)))) => (Some((bytes, true)), p.data),
                // Compression did not shrink it: stored raw, no copy.
                (true, Some(Ok(None))) => (Some((p.data, false)), Vec::new()),
                (true, Some(Err(e))) => {
                    failed = Some(e);
                    break;
                }
            };
            done.push(Done {
                node: p.node,
                file_offset: p.file_offset,
                size,
                digest,
                crc,
                stored,
                spare,
            });
        }
        let msg = match failed {
            Some(e) => Err(e),
            None => Ok(done),
        };
        let stop = msg.is_err();
        if tx.send(msg).is_err() || stop {
            return;
        }
    }
}

/// What the hashing thread is sent.
enum ToHash {
    Bytes(Vec<u8>),
    /// Reply with the digest of everything so far.
    Snapshot(mpsc::Sender<[u8; 32]>),
}

/// The blob's sha256, computed on its own thread so that hashing overlaps reading and writing.
struct Hasher {
    tx: Option<mpsc::SyncSender<ToHash>>,
    handle: Option<std::thread::JoinHandle<[u8; 32]>>,
}

impl Hasher {
    fn new() -> Self {
        // Bounded: the writer waits rather than queue the blob in memory when hashing is slower.
        let (tx, rx) = mpsc::sync_channel::<ToHash>(16);
        let handle = std::thread::Builder::new()
            .name("blob-sha256".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for m in rx {
                    match m {
                        ToHash::Bytes(b) => h.update(&b),
                        ToHash::Snapshot(reply) => {
                            let _ = reply.send(h.clone().finalize().into());
                        }
                    }
                }
                h.finalize().into()
            })
            .ok();
        Hasher {
            tx: Some(tx),
            handle,
        }
    }

    fn send(&self, m: ToHash) -> io::Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(m).ok())
            .ok_or_else(|| io::Error::other("the blob hashing thread has stopped"))
    }

    fn snapshot(&self) -> io::Result<[u8; 32]> {
        let (tx, rx) = mpsc::channel();
        self.send(ToHash::Snapshot(tx))?;
        rx.recv()
            .map_err(|_| io::Error::other("the blob hashing thread has stopped"))
    }

    fn finish(mut self) -> io::Result<[u8; 32]> {
        self.tx = None;
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .ok_or_else(|| io::Error::other("the blob hashing thread has stopped"))
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Builds the data part of one blob, streaming it to `out`.
///
/// Reading (the caller), digesting and compressing (a worker thread and its helpers) and writing
/// (the caller again, with the blob's sha256) overlap: a full batch goes to the worker, and
/// finished batches are written, in order, while the next is read.
pub struct BlobWriter<W: Write> {
    out: W,
    hasher: Hasher,
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
    worker: Worker,
    in_flight: usize,
    pool: Vec<Vec<u8>>,
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
        let opts = ChunkOptions {
            threads: opts.threads.max(1),
            ..opts
        };
        let (tx, work_rx) = mpsc::channel();
        let (done_tx, rx) = mpsc::channel();
        let seen: HashSet<[u8; 32]> = dict.keys().copied().collect();
        let handle = std::thread::Builder::new()
            .name("blob-worker".into())
            .spawn(move || work(work_rx, done_tx, opts, seen))
            .ok();
        BlobWriter {
            out,
            hasher: Hasher::new(),
            opts,
            blob_index,
            pos: 0,
            uncompressed_end: 0,
            chunks: Vec::new(),
            known: dict,
            pending: Vec::new(),
            pending_bytes: 0,
            stats: BlobStats::default(),
            worker: Worker {
                tx: Some(tx),
                rx,
                handle,
            },
            in_flight: 0,
            pool: Vec::new(),
        }
    }

    /// The options chunks are stored with.
    pub fn options(&self) -> ChunkOptions {
        self.opts
    }

    /// Queues chunk data of file `node` at `file_offset`; the chunk lands in the node's chunk
    /// list (in file order) once it is written. `data` is at most one chunk.
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
            self.submit(tree)?;
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
            // Whole chunks reuse pooled buffers; a file's short tail gets its own.
            let mut buf = if want == cs as usize {
                self.pool.pop().unwrap_or_default()
            } else {
                Vec::new()
            };
            buf.clear();
            buf.reserve_exact(want);
            // read_to_end into spare capacity: no zero-fill of a reused buffer.
            io::Read::take(&mut *reader, want as u64).read_to_end(&mut buf)?;
            if buf.len() != want {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "file ended at {} of its {size} bytes",
                        off + buf.len() as u64
                    ),
                ));
            }
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

    /// Hands the batch being filled to the worker, first writing finished batches so that at
    /// most [`MAX_IN_FLIGHT`] are queued.
    fn submit(&mut self, tree: &mut Tree) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        while self.in_flight >= MAX_IN_FLIGHT {
            self.receive(tree, true)?;
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let tx = self
            .worker
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("the blob worker has stopped"))?;
        if tx.send(batch).is_err() {
            // The worker stopped: its last message says why.
            return self
                .receive(tree, true)
                .and(Err(io::Error::other("the blob worker has stopped")));
        }
        self.in_flight += 1;
        // Write whatever is ready without waiting.
        while self.in_flight > 0 {
            if !self.receive(tree, false)? {
                break;
            }
        }
        Ok(())
    }

    /// Writes one finished batch; waits for it if `block`. Returns whether one was written.
    fn receive(&mut self, tree: &mut Tree, block: bool) -> io::Result<bool> {
        let msg = if block {
            match self.worker.rx.recv() {
                Ok(m) => m,
                Err(_) => return Err(io::Error::other("the blob worker has stopped")),
            }
        } else {
            match self.worker.rx.try_recv() {
                Ok(m) => m,
                Err(mpsc::TryRecvError::Empty) => return Ok(false),
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(io::Error::other("the blob worker has stopped"))
                }
            }
        };
        self.in_flight -= 1;
        for d in msg? {
            self.stats.chunks_referenced += 1;
            let mut info = match d.stored {
                Some(data) => self.store(d.digest, d.crc, d.size, data)?,
                None => {
                    self.stats.chunks_deduplicated += 1;
                    *self.known.get(&d.digest).ok_or_else(|| {
                        io::Error::other("a duplicate chunk came before its first copy")
                    })?
                }
            };
            self.recycle(d.spare);
            info.file_offset = d.file_offset;
            if let Kind::File { chunks, .. } = &mut tree.node_mut(d.node).kind {
                chunks.push(info);
            }
        }
        Ok(true)
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        let cs = self.opts.chunk_size as usize;
        if buf.capacity() == cs && self.pool.len() < (POOL_BYTES / cs.max(1)).max(2) {
            self.pool.push(buf);
        }
    }

    /// Processes every queued chunk and writes it.
    pub fn flush(&mut self, tree: &mut Tree) -> io::Result<()> {
        self.submit(tree)?;
        while self.in_flight > 0 {
            self.receive(tree, true)?;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_owned(bytes.to_vec())
    }

    /// Writes `bytes`, then hands them to the hashing thread.
    fn write_owned(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        self.out.write_all(&bytes)?;
        self.pos += bytes.len() as u64;
        self.hasher.send(ToHash::Bytes(bytes))
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
        let stored = data.len() as u64;
        self.write_owned(data)?;
        self.uncompressed_end += u64::from(size).div_ceil(ALIGN) * ALIGN;
        self.stats.chunks_stored += 1;
        self.stats.bytes_stored += stored;
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
    pub fn hash_so_far(&self) -> io::Result<[u8; 32]> {
        self.hasher.snapshot()
    }

    /// Current size of the blob.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Finishes: the blob id (sha256 of every byte written, hex) and the writer.
    pub fn finish(mut self) -> io::Result<(String, W)> {
        self.out.flush()?;
        let digest = self.hasher.finish()?;
        Ok((hex(&digest), self.out))
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

thread_local! {
    /// This thread's chunk compressors, kept between chunks (zstd's context is costly to set up).
    static COMPRESSORS: std::cell::RefCell<Vec<(Compressor, codec::ChunkCompressor)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Compresses one chunk with this thread's compressor for `algo`.
fn compress_here(algo: Compressor, data: &[u8]) -> io::Result<Option<Vec<u8>>> {
    COMPRESSORS.with(|cell| {
        let mut v = cell.borrow_mut();
        let pos = match v.iter().position(|(a, _)| *a == algo) {
            Some(p) => p,
            None => {
                v.push((
                    algo,
                    codec::ChunkCompressor::new(algo).map_err(io::Error::other)?,
                ));
                v.len() - 1
            }
        };
        v[pos].1.compress(data).map_err(io::Error::other)
    })
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
