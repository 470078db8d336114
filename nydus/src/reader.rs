//! Reading file data of a RAFS image on demand: a byte range of a file → the chunks that cover
//! it → as few range reads of the blobs as the chunks' layout allows → decompressed, checked
//! bytes.
//!
//! Where the bytes come from is a [`BlobReader`]: local blob files here ([`LocalBlobs`]), the
//! piece store of dfdaemon or a registry elsewhere. Every chunk is checked before any of its bytes
//! is returned: its CRC32C when it has one (whatever blob.meta version the image has), else its
//! digest. A chunk that fails is read once more with `fresh` set, which tells the source to drop
//! what it kept and fetch the bytes again (from the origin if they came from a peer); if it fails
//! again, the read fails with [`io::ErrorKind::InvalidData`] naming the blob and the chunk, and no
//! byte of it is handed out.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::image::{check_chunk, ImageBlob};
use crate::{codec, ChunkInfo, Compressor};

/// A source of blob bytes.
pub trait BlobReader: Send + Sync {
    /// Reads exactly `len` bytes of blob number `blob` (its index in the image's blob table) at
    /// `offset`. With `fresh`, bytes returned before failed their check: read them from the
    /// source again instead of from any copy kept (and replace that copy).
    fn read_range(&self, blob: u32, offset: u64, len: u64, fresh: bool) -> io::Result<Vec<u8>>;
}

impl<T: BlobReader + ?Sized> BlobReader for Arc<T> {
    fn read_range(&self, blob: u32, offset: u64, len: u64, fresh: bool) -> io::Result<Vec<u8>> {
        (**self).read_range(blob, offset, len, fresh)
    }
}

/// Blob files on local disk, in blob-table order.
pub struct LocalBlobs {
    files: Vec<(File, u64)>,
}

impl LocalBlobs {
    /// Opens `<dir>/<blob id>` for every blob of the table.
    pub fn open_dir(dir: &Path, blobs: &[ImageBlob]) -> io::Result<Self> {
        let mut files = Vec::with_capacity(blobs.len());
        for b in blobs {
            // The id comes from the image: only a plain file name may be looked up.
            if b.id.is_empty() || b.id == "." || b.id == ".." || b.id.contains(['/', '\0']) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("blob id {:?} is not a file name", b.id),
                ));
            }
            let p = dir.join(&b.id);
            let f = File::open(&p)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
            let len = f.metadata()?.len();
            files.push((f, len));
        }
        Ok(LocalBlobs { files })
    }
}

impl LocalBlobs {
    /// Opens the given files as blobs 0, 1, ... of the table.
    pub fn open_files(paths: &[std::path::PathBuf]) -> io::Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        for p in paths {
            let f = File::open(p)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
            let len = f.metadata()?.len();
            files.push((f, len));
        }
        Ok(LocalBlobs { files })
    }
}

impl BlobReader for LocalBlobs {
    fn read_range(&self, blob: u32, offset: u64, len: u64, _fresh: bool) -> io::Result<Vec<u8>> {
        let (f, size) = self
            .files
            .get(blob as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no blob {blob}")))?;
        if offset.checked_add(len).is_none_or(|end| end > *size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{len} bytes at {offset} lie beyond the {size}-byte blob {blob}"),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

/// Blobs in a registry repository (a Nydus image's blob layers), read by HTTP range requests
/// with the repository's authentication (token or basic, as `nydusify` reaches registries).
/// Blocking: for worker threads outside the runtime that `handle` names.
pub struct RegistryBlobs {
    remote: crate::nydusify::registry::Remote,
    /// Where to read when `remote` (through a proxy) fails.
    fallback: Option<crate::nydusify::registry::Remote>,
    handle: tokio::runtime::Handle,
    /// The blob layer of each blob of the table, by index.
    layers: Vec<oci_client::manifest::OciDescriptor>,
}

impl RegistryBlobs {
    /// Blob `i` of the table is the layer whose digest is `sha256:<id of blob i>`; every blob
    /// must be a layer of `manifest`.
    pub fn new(
        remote: crate::nydusify::registry::Remote,
        handle: tokio::runtime::Handle,
        blobs: &[ImageBlob],
        manifest: &oci_client::manifest::OciImageManifest,
    ) -> io::Result<Self> {
        let mut layers = Vec::with_capacity(blobs.len());
        for b in blobs {
            let d = manifest
                .layers
                .iter()
                .find(|l| l.digest.strip_prefix("sha256:") == Some(b.id.as_str()))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("blob {} of the bootstrap is not a layer of the image", b.id),
                    )
                })?;
            layers.push(d.clone());
        }
        Ok(RegistryBlobs {
            remote,
            fallback: None,
            handle,
            layers,
        })
    }
}

impl RegistryBlobs {
    /// Blob `i` of the table is `sha256:<id of blob i>` of the repository, of the size the
    /// table gives (for a reader that has the bootstrap but not the manifest, as nydusd).
    pub fn from_blob_table(
        remote: crate::nydusify::registry::Remote,
        handle: tokio::runtime::Handle,
        blobs: &[ImageBlob],
    ) -> Self {
        let layers = blobs
            .iter()
            .map(|b| {
                crate::nydusify::manifest::descriptor(
                    crate::nydusify::manifest::NYDUS_BLOB,
                    &format!("sha256:{}", b.id),
                    b.compressed_size,
                    Default::default(),
                )
            })
            .collect();
        RegistryBlobs {
            remote,
            fallback: None,
            handle,
            layers,
        }
    }
}

impl RegistryBlobs {
    /// Reads that fail through `self`'s remote (a proxy) are made again through `direct`.
    pub fn with_fallback(mut self, direct: crate::nydusify::registry::Remote) -> Self {
        self.fallback = Some(direct);
        self
    }
}

impl BlobReader for RegistryBlobs {
    fn read_range(&self, blob: u32, offset: u64, len: u64, _fresh: bool) -> io::Result<Vec<u8>> {
        let d = self
            .layers
            .get(blob as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no blob {blob}")))?;
        let size = d.size.max(0) as u64;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{len} bytes at {offset} lie beyond the {size}-byte blob {}",
                    d.digest
                ),
            ));
        }
        // Nothing is kept here, so a fresh read is an ordinary one.
        let read = |r: &crate::nydusify::registry::Remote| {
            self.handle
                .block_on(r.blob_range(d, offset, len, MAX_RANGE))
                .map(|b| b.to_vec())
                .map_err(|e| io::Error::other(e.to_string()))
        };
        match (read(&self.remote), &self.fallback) {
            (Err(e), Some(direct)) => {
                tracing::warn!("{e}; reading from the registry directly");
                read(direct)
            }
            (r, _) => r,
        }
    }
}

/// Largest single range read of a registry blob.
const MAX_RANGE: u64 = 64 << 20;

/// Counters of a [`ChunkReader`].
#[derive(Debug, Default)]
pub struct ReadStats {
    /// Range reads asked of the blob reader.
    pub range_reads: AtomicU64,
    /// Bytes those reads returned.
    pub bytes_fetched: AtomicU64,
    /// Chunks decompressed and checked.
    pub chunks: AtomicU64,
    /// Chunks that failed their check (each then read once more, fresh).
    pub check_failures: AtomicU64,
    /// File bytes returned by reads.
    pub bytes_read: AtomicU64,
}

/// Called with the message of a chunk check failure.
pub type CheckFailureHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Reads file data of one image through a [`BlobReader`].
pub struct ChunkReader<R: BlobReader> {
    blobs: Vec<ImageBlob>,
    source: R,
    /// Largest range read made of several chunks (a single larger chunk is read whole).
    max_merge: u64,
    /// Largest read-ahead window of a file read sequentially (0: none).
    read_ahead: u64,
    streams: Mutex<Streams>,
    cache: ChunkCache,
    /// Counters (shared, so they can be read while a mount owns the reader).
    pub stats: Arc<ReadStats>,
    on_check_failure: Option<CheckFailureHook>,
}

impl<R: BlobReader> ChunkReader<R> {
    /// A reader of the image whose blob table is `blobs`, reading from `source`.
    pub fn new(blobs: Vec<ImageBlob>, source: R) -> Self {
        ChunkReader {
            blobs,
            source,
            max_merge: 4 << 20,
            read_ahead: 4 << 20,
            streams: Mutex::default(),
            cache: ChunkCache::new(32 << 20),
            stats: Arc::default(),
            on_check_failure: None,
        }
    }

    /// Calls `f` with the message of every chunk check failure (for metrics).
    pub fn on_check_failure(mut self, f: CheckFailureHook) -> Self {
        self.on_check_failure = Some(f);
        self
    }

    /// Sets how many bytes of decompressed chunks are kept for the reads that follow (0: none).
    pub fn with_cache_bytes(mut self, bytes: usize) -> Self {
        self.cache = ChunkCache::new(bytes);
        self
    }

    /// Sets the largest range read made of several chunks.
    pub fn with_max_merge(mut self, bytes: u64) -> Self {
        self.max_merge = bytes.max(1);
        self
    }

    /// Sets the largest read-ahead window (0: no read-ahead). A file read sequentially (each
    /// read starting where the one before ended) has the chunks that follow what it reads
    /// fetched with the chunks it reads, in the same range read, the window doubling with each
    /// sequential read up to `bytes`; the first read of a file, and any read elsewhere, fetch
    /// only their own chunks.
    pub fn with_read_ahead(mut self, bytes: u64) -> Self {
        self.read_ahead = bytes;
        self
    }

    /// The blob reader.
    pub fn source(&self) -> &R {
        &self.source
    }

    /// Reads up to `len` bytes at `offset` of a file of `size` bytes whose chunks are `chunks`
    /// (in file order, as the bootstrap lists them); fewer at the end of the file, none past
    /// it. Holes between chunks read as zeros.
    pub fn read(
        &self,
        chunks: &[ChunkInfo],
        size: u64,
        offset: u64,
        len: usize,
    ) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let first = chunks.partition_point(|c| {
            c.file_offset.saturating_add(u64::from(c.uncompressed_size)) <= offset
        });
        let ahead = match chunks.first() {
            Some(c) if self.read_ahead > 0 => {
                self.lock_streams()
                    .next((c.blob_index, c.index), offset, end, self.read_ahead)
            }
            _ => 0,
        };
        let ahead_end = end.saturating_add(ahead).min(size);
        // The chunks the read covers, then those of the read-ahead window.
        let covered = chunks[first..]
            .iter()
            .take_while(|c| c.file_offset < end)
            .count();
        let wanted: Vec<&ChunkInfo> = chunks[first..]
            .iter()
            .take_while(|c| c.file_offset < ahead_end)
            .collect();
        // Chunks already decompressed (a file read in small pieces asks for one chunk many
        // times) come from the cache; the others are fetched in runs.
        let cached: Vec<Option<Arc<Vec<u8>>>> = wanted
            .iter()
            .take(covered)
            .map(|c| self.cache.get(c))
            .collect();
        let mut i = 0;
        while i < covered {
            if let Some(data) = &cached[i] {
                copy_overlap(&mut out, offset, wanted[i].file_offset, data);
                i += 1;
                continue;
            }
            // One range read for uncached chunks stored back to back in the same blob; past
            // the read's own chunks, those of the read-ahead window that are not cached yet.
            let mut j = i + 1;
            let mut run = u64::from(wanted[i].compressed_size);
            while j < wanted.len() {
                let (p, c) = (wanted[j - 1], wanted[j]);
                let next = run + u64::from(c.compressed_size);
                let uncached = match cached.get(j) {
                    Some(hit) => hit.is_none(),
                    None => !self.cache.contains(c),
                };
                let limit = if j < covered {
                    self.max_merge
                } else {
                    self.max_merge.max(self.read_ahead)
                };
                if !uncached
                    || c.blob_index != p.blob_index
                    || Some(c.compressed_offset)
                        != p.compressed_offset
                            .checked_add(u64::from(p.compressed_size))
                    || next > limit
                {
                    break;
                }
                run = next;
                j += 1;
            }
            let datas = match self.fetch_run(&wanted[i..j]) {
                // A chunk of the window failed: the read needs only its own.
                Err(e) if j > covered => {
                    tracing::debug!("read-ahead: {e}");
                    j = covered;
                    self.fetch_run(&wanted[i..j])?
                }
                r => r?,
            };
            for (c, data) in wanted[i..j].iter().zip(datas) {
                copy_overlap(&mut out, offset, c.file_offset, &data);
                self.cache.put(c, data);
            }
            i = j;
        }
        self.stats
            .bytes_read
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads, decompresses and checks a run of chunks stored back to back; reads it fresh once
    /// if a chunk fails.
    fn fetch_run(&self, run: &[&ChunkInfo]) -> io::Result<Vec<Vec<u8>>> {
        let first = run[0];
        let blob = self.blobs.get(first.blob_index as usize).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "chunk {} names blob {}, which the image does not have",
                    first.index, first.blob_index
                ),
            )
        })?;
        let len: u64 = run.iter().map(|c| u64::from(c.compressed_size)).sum();
        let mut last_err = None;
        for fresh in [false, true] {
            let raw = self
                .source
                .read_range(first.blob_index, first.compressed_offset, len, fresh)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "blob {}: {len} bytes at {}: {e}",
                            blob.id, first.compressed_offset
                        ),
                    )
                })?;
            self.stats.range_reads.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_fetched
                .fetch_add(raw.len() as u64, Ordering::Relaxed);
            if raw.len() as u64 != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "blob {}: asked {len} bytes at {}, got {}",
                        blob.id,
                        first.compressed_offset,
                        raw.len()
                    ),
                ));
            }
            match self.decode_run(blob, run, &raw) {
                Ok(datas) => return Ok(datas),
                Err(e) => {
                    self.stats.check_failures.fetch_add(1, Ordering::Relaxed);
                    if let Some(f) = &self.on_check_failure {
                        f(&e.to_string());
                    }
                    tracing::warn!("{e}; reading it again from the source");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("chunk check failed")))
    }

    fn decode_run(
        &self,
        blob: &ImageBlob,
        run: &[&ChunkInfo],
        raw: &[u8],
    ) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(run.len());
        let mut at = 0usize;
        for c in run {
            let n = c.compressed_size as usize;
            let stored = raw.get(at..at + n).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "chunk past the bytes read")
            })?;
            at += n;
            let algo = if c.is_compressed() {
                blob.compressor
            } else {
                Compressor::None
            };
            let mut data = Vec::with_capacity(c.uncompressed_size as usize);
            codec::decompress(algo, stored, c.uncompressed_size as usize, &mut data).map_err(
                |e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("blob {}: chunk {}: {e}", blob.id, c.index),
                    )
                },
            )?;
            check_chunk(&blob.id, blob.digester, c, &data)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            self.stats.chunks.fetch_add(1, Ordering::Relaxed);
            out.push(data);
        }
        Ok(out)
    }
}

/// The files being read sequentially: per file (its first chunk's blob and index) and position,
/// the read-ahead window its next sequential read gets. Bounded: the least recently read out
/// first.
#[derive(Default)]
struct Streams {
    /// (file, where its next sequential read starts, window, use stamp).
    list: Vec<((u32, u32), u64, u64, u64)>,
    stamp: u64,
}

/// Streams followed at once (several readers of one file, or of one EROFS blob view, each
/// have their own).
const MAX_STREAMS: usize = 256;

/// The smallest read-ahead window.
const MIN_READ_AHEAD: u64 = 128 << 10;

impl Streams {
    /// Notes a read of `offset..end` of `file`; the read-ahead window (bytes past `end`) it
    /// gets: none unless it starts where a read of the file ended (give or take four reads of
    /// its size), then twice the last window, at least [`MIN_READ_AHEAD`] and twice the read's
    /// size, at most `max`.
    fn next(&mut self, file: (u32, u32), offset: u64, end: u64, max: u64) -> u64 {
        self.stamp += 1;
        let stamp = self.stamp;
        // Give or take four reads of this size: the kernel's readahead requests of one
        // sequential reader reach the workers slightly out of order.
        let slack = 4 * (end - offset);
        if let Some(e) = self
            .list
            .iter_mut()
            .find(|e| e.0 == file && offset.abs_diff(e.1) <= slack)
        {
            let window = (e.2 * 2)
                .max(2 * (end - offset))
                .max(MIN_READ_AHEAD)
                .min(max);
            *e = (file, end.max(e.1), window, stamp);
            return window;
        }
        if self.list.len() >= MAX_STREAMS {
            if let Some(oldest) = (0..self.list.len()).min_by_key(|&i| self.list[i].3) {
                self.list.swap_remove(oldest);
            }
        }
        self.list.push((file, end, 0, stamp));
        0
    }
}

/// Recently read chunks, decompressed and checked, by (blob, chunk index); least recently used
/// out first, bounded in bytes.
struct ChunkCache {
    limit: usize,
    inner: Mutex<CacheInner>,
}

/// A cached chunk's data and its use stamp, by (blob, chunk index).
type CacheMap = HashMap<(u32, u32), (Arc<Vec<u8>>, u64)>;

#[derive(Default)]
struct CacheInner {
    map: CacheMap,
    /// Use stamp → key, oldest first.
    order: BTreeMap<u64, (u32, u32)>,
    next: u64,
    bytes: usize,
}

impl ChunkCache {
    fn new(limit: usize) -> Self {
        ChunkCache {
            limit,
            inner: Mutex::default(),
        }
    }

    fn get(&self, c: &ChunkInfo) -> Option<Arc<Vec<u8>>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *g;
        let key = (c.blob_index, c.index);
        let (data, stamp) = inner.map.get_mut(&key)?;
        inner.order.remove(stamp);
        *stamp = inner.next;
        inner.order.insert(inner.next, key);
        inner.next += 1;
        Some(Arc::clone(data))
    }

    fn contains(&self, c: &ChunkInfo) -> bool {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.map.contains_key(&(c.blob_index, c.index))
    }

    fn put(&self, c: &ChunkInfo, data: Vec<u8>) {
        if data.len() > self.limit {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *g;
        let key = (c.blob_index, c.index);
        if let Some((old, stamp)) = inner.map.remove(&key) {
            inner.order.remove(&stamp);
            inner.bytes -= old.len();
        }
        while inner.bytes + data.len() > self.limit {
            let Some((_, k)) = inner.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = inner.map.remove(&k) {
                inner.bytes -= old.len();
            }
        }
        inner.bytes += data.len();
        inner.map.insert(key, (Arc::new(data), inner.next));
        inner.order.insert(inner.next, key);
        inner.next += 1;
    }
}

/// Copies the part of chunk data at file offset `at` that falls in `out` (which starts at file
/// offset `start`).
fn copy_overlap(out: &mut [u8], start: u64, at: u64, data: &[u8]) {
    let end = start + out.len() as u64;
    let from = at.max(start);
    let to = at.saturating_add(data.len() as u64).min(end);
    if from >= to {
        return;
    }
    let src = &data[(from - at) as usize..(to - at) as usize];
    out[(from - start) as usize..(to - start) as usize].copy_from_slice(src);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{self, ChunkOptions, CreateOptions, Source};
    use crate::tree::Kind;
    use crate::Digester;

    /// One blob in memory; counts reads; serves flipped bytes until `fresh` (if `heal`) or
    /// forever.
    struct MemBlob {
        data: Vec<u8>,
        corrupt_at: Option<u64>,
        heal: bool,
        reads: Mutex<Vec<(u64, u64, bool)>>,
    }

    impl BlobReader for MemBlob {
        fn read_range(&self, blob: u32, off: u64, len: u64, fresh: bool) -> io::Result<Vec<u8>> {
            assert_eq!(blob, 0);
            self.reads.lock().unwrap().push((off, len, fresh));
            let end = off
                .checked_add(len)
                .filter(|e| *e <= self.data.len() as u64)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            let mut v = self.data[off as usize..end as usize].to_vec();
            if let Some(at) = self.corrupt_at {
                if (off..end).contains(&at) && !(self.heal && fresh) {
                    v[(at - off) as usize] ^= 0xff;
                }
            }
            Ok(v)
        }
    }

    /// An image of one file `f` (200 KiB, 16 KiB chunks, zstd) and its blob.
    fn image() -> (crate::image::Image, Vec<u8>, Vec<u8>) {
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
        let img = crate::image::from_bytes(created.bootstrap, None, "test").unwrap();
        (img, created.blob, content)
    }

    fn file_chunks(img: &crate::image::Image) -> (Vec<ChunkInfo>, u64) {
        let id = img.tree.lookup(b"f").unwrap();
        match &img.tree.node(id).kind {
            Kind::File { size, chunks } => (chunks.clone(), *size),
            _ => panic!("not a file"),
        }
    }

    fn reader(
        corrupt_at: Option<u64>,
        heal: bool,
    ) -> (ChunkReader<MemBlob>, Vec<ChunkInfo>, u64, Vec<u8>) {
        let (img, blob, content) = image();
        let (chunks, size) = file_chunks(&img);
        let r = ChunkReader::new(
            img.blobs.clone(),
            MemBlob {
                data: blob,
                corrupt_at,
                heal,
                reads: Mutex::new(Vec::new()),
            },
        )
        .with_cache_bytes(0);
        (r, chunks, size, content)
    }

    #[test]
    fn any_range_reads_the_file_bytes_with_one_read_per_contiguous_run() {
        let (r, chunks, size, content) = reader(None, false);
        assert_eq!(chunks.len(), 13);
        for (off, len) in [
            (0u64, 10usize),
            (16_383, 2),
            (1000, 50_000),
            (0, 200_000),
            (199_990, 100),
            (250_000, 10),
        ] {
            let got = r.read(&chunks, size, off, len).unwrap();
            let end = (off as usize + len).min(content.len());
            let want = content.get(off as usize..end).unwrap_or(&[]);
            assert_eq!(got, want, "read {off}+{len}");
        }
        // The whole file: 13 chunks back to back, one range read.
        r.source().reads.lock().unwrap().clear();
        r.read(&chunks, size, 0, 200_000).unwrap();
        assert_eq!(r.source().reads.lock().unwrap().len(), 1);
        // Merges stop at the limit.
        let r = r.with_max_merge(1);
        r.source().reads.lock().unwrap().clear();
        r.read(&chunks, size, 0, 200_000).unwrap();
        assert_eq!(r.source().reads.lock().unwrap().len(), 13);
        // With a cache (and no read-ahead), a file read in 4 KiB pieces fetches each chunk once.
        let r = r
            .with_cache_bytes(1 << 20)
            .with_max_merge(4 << 20)
            .with_read_ahead(0);
        r.source().reads.lock().unwrap().clear();
        let mut back = Vec::new();
        for off in (0..size).step_by(4096) {
            back.extend(r.read(&chunks, size, off, 4096).unwrap());
        }
        assert_eq!(back, content);
        assert_eq!(r.source().reads.lock().unwrap().len(), 13);
        // A cache smaller than two chunks keeps one: reading chunk 0 again after chunk 1 fetches.
        let r = r.with_cache_bytes(20_000);
        r.source().reads.lock().unwrap().clear();
        for off in [0u64, 16_384, 0, 0] {
            r.read(&chunks, size, off, 10).unwrap();
        }
        assert_eq!(r.source().reads.lock().unwrap().len(), 3);
    }

    /// (range reads, bytes fetched) by `r` since its reads were last cleared.
    fn fetched(r: &ChunkReader<MemBlob>) -> (usize, u64) {
        let reads = r.source().reads.lock().unwrap();
        (reads.len(), reads.iter().map(|x| x.1).sum())
    }

    #[test]
    fn sequential_reads_fetch_ahead_in_growing_windows_and_others_fetch_only_their_chunks() {
        let (r, chunks, size, content) = reader(None, false);
        let r = r.with_cache_bytes(1 << 20).with_read_ahead(64 << 10);
        let file_bytes: u64 = chunks.iter().map(|c| u64::from(c.compressed_size)).sum();
        // Read sequentially in 4 KiB pieces, as the kernel does: each chunk is fetched once,
        // nothing past the file, and in fewer range reads than chunks (13 without read-ahead).
        let mut back = Vec::new();
        for off in (0..size).step_by(4096) {
            back.extend(r.read(&chunks, size, off, 4096).unwrap());
        }
        assert_eq!(back, content);
        let (reads, bytes) = fetched(&r);
        assert_eq!(bytes, file_bytes, "every chunk once, nothing else");
        assert!(reads < 13 / 2, "{reads} range reads");
        // Read in 4 KiB pieces slightly out of order (as the kernel's readahead requests
        // arrive at several workers): still one stream, still each chunk once.
        let (r, chunks, size, content) = reader(None, false);
        let r = r.with_cache_bytes(1 << 20).with_read_ahead(64 << 10);
        let mut offs: Vec<u64> = (0..size).step_by(4096).collect();
        for pair in offs.chunks_mut(2) {
            pair.reverse();
        }
        for off in offs {
            let got = r.read(&chunks, size, off, 4096).unwrap();
            let end = (off as usize + 4096).min(content.len());
            assert_eq!(got, content[off as usize..end]);
        }
        let (reads, bytes) = fetched(&r);
        assert_eq!(bytes, file_bytes);
        assert!(reads < 13 / 2, "{reads} range reads out of order");
        // The first read of a file, and reads that do not follow one another, fetch only the
        // chunks they cover.
        let (r, chunks, size, content) = reader(None, false);
        let r = r.with_cache_bytes(1 << 20).with_read_ahead(64 << 10);
        let one = u64::from(chunks[0].compressed_size);
        assert_eq!(r.read(&chunks, size, 0, 4096).unwrap(), content[..4096]);
        assert_eq!(fetched(&r), (1, one));
        for (off, i) in [(100_000u64, 6usize), (40_000, 2), (180_000, 10)] {
            r.read(&chunks, size, off, 10).unwrap();
            assert_eq!(
                r.source().reads.lock().unwrap().last().unwrap().1,
                u64::from(chunks[i].compressed_size),
                "read at {off}"
            );
        }
        // A chunk of the window that fails its check does not fail the read that fetched it.
        let (img, _, _) = image();
        let (chunks, _) = file_chunks(&img);
        let at = chunks[2].compressed_offset + 5;
        let (r, chunks, size, content) = reader(Some(at), false);
        let r = r.with_cache_bytes(1 << 20).with_read_ahead(64 << 10);
        r.read(&chunks, size, 0, 16_384).unwrap();
        r.source().reads.lock().unwrap().clear();
        let got = r.read(&chunks, size, 16_384, 4096).unwrap();
        assert_eq!(got, content[16_384..20_480]);
        let reads = r.source().reads.lock().unwrap().clone();
        assert!(
            reads[0].1 > u64::from(chunks[1].compressed_size),
            "{reads:?}"
        );
        let err = r.read(&chunks, size, 2 * 16_384, 10).unwrap_err();
        assert!(err.to_string().contains("chunk 2"), "{err}");
    }

    #[test]
    fn a_corrupt_chunk_is_read_fresh_once_and_never_handed_out() {
        // Healed on the fresh read: the bytes are right, one failure counted.
        let (img, _, _) = image();
        let (chunks, _) = file_chunks(&img);
        let at = chunks[3].compressed_offset + 5;
        let (r, chunks, size, content) = reader(Some(at), true);
        let got = r.read(&chunks, size, 0, 200_000).unwrap();
        assert_eq!(got, content);
        assert_eq!(r.stats.check_failures.load(Ordering::Relaxed), 1);
        let reads = r.source().reads.lock().unwrap().clone();
        assert_eq!(reads.iter().filter(|x| x.2).count(), 1, "{reads:?}");
        // Still bad when read fresh: an error naming the chunk, no bytes.
        let (r, chunks, size, _) = reader(Some(at), false);
        let err = r.read(&chunks, size, 0, 200_000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("chunk 3"), "{err}");
        // A read that does not touch the bad chunk is fine.
        let got = r.read(&chunks, size, 0, 16_384).unwrap();
        assert_eq!(got.len(), 16_384);
    }

    #[test]
    fn holes_read_as_zeros_and_bad_chunk_lists_are_errors() {
        let (r, chunks, _, content) = reader(None, false);
        // A file of 300 KiB whose chunks stop at 200 KB: the rest is a hole.
        let got = r.read(&chunks, 300_000, 199_000, 2000).unwrap();
        assert_eq!(&got[..1000], &content[199_000..]);
        assert!(got[1000..].iter().all(|b| *b == 0));
        // A chunk naming a blob the image lacks.
        let mut bad = chunks.clone();
        bad[0].blob_index = 7;
        let err = r.read(&bad, 200_000, 0, 10).unwrap_err();
        assert!(err.to_string().contains("blob 7"), "{err}");
        // A chunk past the end of the blob.
        let mut bad = chunks.clone();
        bad[0].compressed_offset = u64::MAX - 10;
        assert!(r.read(&bad, 200_000, 0, 10).is_err());
    }
}
