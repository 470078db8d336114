//! A RAFS tree back to a tar: `nydus-image unpack` and `nydusify convert --reverse`.
//!
//! The tar is a function of the tree alone: entries in the tree's depth-first order (children
//! sorted by name), the root as `./`, headers carrying exactly the metadata the bootstrap holds,
//! so the same tree always gives the same bytes. Hardlinked names after the first become tar
//! hardlinks; xattrs and sub-second mtimes travel as PAX records; file data is read chunk by
//! chunk (each checked by the reader) with holes between chunks written as zeros. Whiteout files
//! (`.wh.*`) kept raw by `--whiteout-spec none` come out as they went in.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::build::source::decode_dev;
use crate::image::BlobFile;
use crate::tree::{display, Kind, NodeId, Tree};
use crate::ChunkInfo;

/// Reads one chunk's data, decompressed and checked.
pub trait ChunkSource {
    fn read_chunk(&self, c: &ChunkInfo) -> Result<Vec<u8>, String>;
}

/// Blob files in the order of the bootstrap's blob table.
impl ChunkSource for [BlobFile] {
    fn read_chunk(&self, c: &ChunkInfo) -> Result<Vec<u8>, String> {
        let blob = self
            .get(c.blob_index as usize)
            .ok_or_else(|| format!("chunk names blob {} which is missing", c.blob_index))?;
        blob.read_chunk(c).map_err(|e| e.to_string())
    }
}

/// Reads a file's data chunk by chunk.
struct ChunkReader<'a, S: ChunkSource + ?Sized> {
    chunks: &'a [ChunkInfo],
    source: &'a S,
    path: &'a [u8],
    /// The file's size: exactly this many bytes come out, holes between chunks as zeros.
    size: u64,
    /// File offset of `buf[pos]`.
    at: u64,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl<S: ChunkSource + ?Sized> ChunkReader<'_, S> {
    fn refill(&mut self) -> io::Result<()> {
        const ZEROS: u64 = 1 << 20;
        let fail = |m: String| io::Error::other(format!("{}: {m}", display(self.path)));
        self.pos = 0;
        match self.chunks.get(self.next) {
            Some(c) if c.file_offset == self.at => {
                self.buf = self
                    .source
                    .read_chunk(c)
                    .map_err(|e| fail(format!("chunk {}: {e}", self.next)))?;
                if self.buf.is_empty() {
                    return Err(fail(format!("chunk {} is empty", self.next)));
                }
                self.next += 1;
            }
            Some(c) if c.file_offset < self.at => {
                return Err(fail(format!(
                    "chunk {} at file offset {} overlaps the data before it (up to {})",
                    self.next, c.file_offset, self.at
                )));
            }
            // A hole before the next chunk, or after the last one.
            Some(c) => self.buf = vec![0; (c.file_offset - self.at).min(ZEROS) as usize],
            None => self.buf = vec![0; (self.size - self.at).min(ZEROS) as usize],
        }
        Ok(())
    }
}

impl<S: ChunkSource + ?Sized> Read for ChunkReader<'_, S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at >= self.size || out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.buf.len() {
            self.refill()?;
        }
        let left = usize::try_from(self.size - self.at).unwrap_or(usize::MAX);
        let n = out.len().min(self.buf.len() - self.pos).min(left);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.at += n as u64;
        Ok(n)
    }
}

/// What [`write_tar`] wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TarSummary {
    /// Entries written (hardlinks included).
    pub entries: u64,
    /// File data bytes written.
    pub file_bytes: u64,
    /// Sockets, which a tar cannot hold (GNU tar skips them too), by path.
    pub skipped_sockets: Vec<Vec<u8>>,
}

/// Writes `tree` as a tar to `out`, file data from `source`; returns what it wrote. The writer
/// is flushed, not finished beyond the tar's end-of-archive blocks.
pub fn write_tar<S: ChunkSource + ?Sized>(
    tree: &Tree,
    source: &S,
    out: impl Write,
) -> io::Result<TarSummary> {
    let mut ar = tar::Builder::new(out);
    ar.mode(tar::HeaderMode::Complete);
    let mut summary = TarSummary::default();
    let mut first_name: HashMap<NodeId, Vec<u8>> = HashMap::new();
    let err = |path: &[u8], e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("writing {} to the tar: {e}", display(path)),
        )
    };
    for (path, id) in tree.walk() {
        let n = tree.node(id);
        let rel: Vec<u8> = if path == b"/" {
            b"./".to_vec()
        } else {
            path[1..].to_vec()
        };
        let mut h = tar::Header::new_gnu();
        h.set_mode(n.meta.perm);
        h.set_uid(u64::from(n.meta.uid));
        h.set_gid(u64::from(n.meta.gid));
        h.set_mtime(n.meta.mtime);
        h.set_size(0);
        if matches!(n.kind, Kind::Socket) {
            summary.skipped_sockets.push(path);
            continue;
        }
        if let (Some(target), None) = (tree.lower_hardlink(id), first_name.get(&id)) {
            // A layer's hardlink to a file of a lower layer, back as the tar hardlink it was.
            first_name.insert(id, rel.clone());
            h.set_entry_type(tar::EntryType::Link);
            ar.append_link(&mut h, bytes_path(&rel), bytes_path(target))
                .map_err(|e| err(&path, e))?;
            summary.entries += 1;
            continue;
        }
        if !n.kind.is_dir() {
            if let Some(first) = first_name.get(&id) {
                h.set_entry_type(tar::EntryType::Link);
                ar.append_link(&mut h, bytes_path(&rel), bytes_path(first))
                    .map_err(|e| err(&path, e))?;
                summary.entries += 1;
                continue;
            }
            first_name.insert(id, rel.clone());
        }
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if n.meta.mtime_nsec != 0 {
            pax.push((
                "mtime".into(),
                format!("{}.{:09}", n.meta.mtime, n.meta.mtime_nsec).into_bytes(),
            ));
        }
        for (k, v) in &n.meta.xattrs {
            pax.push((format!("SCHILY.xattr.{}", display(k)), v.clone()));
        }
        if !pax.is_empty() {
            ar.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(|e| err(&path, e))?;
        }
        match &n.kind {
            Kind::Dir(_) => {
                h.set_entry_type(tar::EntryType::Directory);
                ar.append_data(&mut h, bytes_path(&rel), io::empty())
                    .map_err(|e| err(&path, e))?;
            }
            Kind::File { size, chunks } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*size);
                let r = ChunkReader {
                    chunks,
                    source,
                    path: &path,
                    size: *size,
                    at: 0,
                    next: 0,
                    buf: Vec::new(),
                    pos: 0,
                };
                ar.append_data(&mut h, bytes_path(&rel), r)
                    .map_err(|e| err(&path, e))?;
                summary.file_bytes += size;
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                ar.append_link(&mut h, bytes_path(&rel), bytes_path(t))
                    .map_err(|e| err(&path, e))?;
            }
            Kind::CharDev(d) | Kind::BlockDev(d) => {
                h.set_entry_type(if matches!(n.kind, Kind::CharDev(_)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                let (major, minor) = decode_dev(*d);
                h.set_device_major(major).map_err(|e| err(&path, e))?;
                h.set_device_minor(minor).map_err(|e| err(&path, e))?;
                ar.append_data(&mut h, bytes_path(&rel), io::empty())
                    .map_err(|e| err(&path, e))?;
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                ar.append_data(&mut h, bytes_path(&rel), io::empty())
                    .map_err(|e| err(&path, e))?;
            }
            Kind::Socket => {}
        }
        summary.entries += 1;
    }
    ar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| io::Error::new(e.kind(), format!("writing the tar: {e}")))?;
    Ok(summary)
}

fn bytes_path(b: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(b))
}
