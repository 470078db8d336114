//! Kernel EROFS mode: the kernel mounts a RAFS v6 bootstrap itself (it is an EROFS image) and
//! reads file data from one extra device per blob, at the chunks' *uncompressed* offsets. This
//! module presents each blob that way: a small read-only FUSE filesystem with one file per blob,
//! its uncompressed view, whose reads are served through a [`ChunkReader`] (fetched on demand,
//! decompressed, every chunk checked before the kernel sees it). Then [`mount_erofs`] mounts the
//! bootstrap with those files as its devices (file-backed EROFS, Linux ≥ 6.12).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};

use crate::fusefs::{Observer, Timer};
use crate::image::Image;
use crate::reader::{BlobReader, ChunkReader};
use crate::tree::Kind;
use crate::ChunkInfo;

const TTL: Duration = Duration::from_secs(24 * 3600);
const BLOCK: u64 = 4096;

/// The uncompressed view of one blob: its chunks by uncompressed offset.
struct View {
    name: String,
    /// Chunks sorted by uncompressed offset, `file_offset` set to it.
    chunks: Vec<ChunkInfo>,
    size: u64,
    /// Whether the blob's own bytes are this view: uncompressed, every chunk stored at its
    /// uncompressed offset.
    is_blob: bool,
}

/// Why an image cannot be mounted in kernel EROFS mode.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("kernel EROFS mode needs a RAFS v6 image; this one is v{0}")]
    NotV6(u32),
    #[error("blob {blob}: chunks {a} and {b} overlap in the uncompressed address space")]
    Overlap { blob: String, a: u32, b: u32 },
    #[error("blob {blob}: chunk {chunk} is not at a 4 KiB-aligned uncompressed offset")]
    Unaligned { blob: String, chunk: u32 },
}

/// One file per blob (named by its index in the blob table, `0`, `1`, ...), each the blob's
/// uncompressed view.
pub struct BlobFs<R: BlobReader> {
    views: Vec<View>,
    reader: ChunkReader<R>,
    observer: Option<std::sync::Arc<dyn Observer>>,
}

impl<R: BlobReader + 'static> BlobFs<R> {
    /// The views of every blob of `image` (v6), read through `reader` (without read-ahead).
    pub fn new(image: &Image, reader: ChunkReader<R>) -> Result<Self, ErofsError> {
        if image.version != 6 {
            return Err(ErofsError::NotV6(image.version));
        }
        let mut by_blob: Vec<BTreeMap<u64, ChunkInfo>> = vec![BTreeMap::new(); image.blobs.len()];
        for id in image.tree.bfs().ids() {
            if let Kind::File { chunks, .. } = &image.tree.node(id).kind {
                for c in chunks {
                    if let Some(m) = by_blob.get_mut(c.blob_index as usize) {
                        let mut c = *c;
                        c.file_offset = c.uncompressed_offset;
                        m.entry(c.uncompressed_offset).or_insert(c);
                    }
                }
            }
        }
        let mut views = Vec::with_capacity(by_blob.len());
        for (i, m) in by_blob.into_iter().enumerate() {
            let blob = &image.blobs[i];
            let chunks: Vec<ChunkInfo> = m.into_values().collect();
            for w in chunks.windows(2) {
                let end = w[0].uncompressed_offset + u64::from(w[0].uncompressed_size);
                if end > w[1].uncompressed_offset {
                    return Err(ErofsError::Overlap {
                        blob: blob.id.clone(),
                        a: w[0].index,
                        b: w[1].index,
                    });
                }
            }
            if let Some(c) = chunks.iter().find(|c| c.uncompressed_offset % BLOCK != 0) {
                return Err(ErofsError::Unaligned {
                    blob: blob.id.clone(),
                    chunk: c.index,
                });
            }
            let end = chunks
                .last()
                .map(|c| c.uncompressed_offset + u64::from(c.uncompressed_size))
                .unwrap_or(0);
            let size = end.max(blob.uncompressed_size).div_ceil(BLOCK) * BLOCK;
            let is_blob = blob.compressor == crate::Compressor::None
                && chunks.iter().all(|c| {
                    c.compressed_offset == c.uncompressed_offset
                        && c.compressed_size == c.uncompressed_size
                });
            views.push(View {
                name: i.to_string(),
                chunks,
                size,
                is_blob,
            });
        }
        Ok(BlobFs {
            views,
            // A view holds the chunks of many files: reading it sequentially is not reading a
            // file sequentially (the kernel's readahead of each file already shows as larger
            // view reads), so read-ahead would fetch neighbours' chunks.
            reader: reader.with_read_ahead(0),
            observer: None,
        })
    }

    /// Reports every request to `observer`.
    pub fn with_observer(mut self, observer: std::sync::Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn timer(&self, op: &'static str) -> Timer<'_> {
        Timer::new(self.observer.as_deref(), op)
    }

    /// The chunk reader (for its counters).
    pub fn reader(&self) -> &ChunkReader<R> {
        &self.reader
    }

    /// Paths of the blob views under the mountpoint `at`, in blob-table order.
    pub fn device_paths(&self, at: &Path) -> Vec<PathBuf> {
        self.views.iter().map(|v| at.join(&v.name)).collect()
    }

    /// Whether blob `blob`'s own bytes are its uncompressed view (an uncompressed blob whose
    /// chunks our builder laid at their uncompressed offsets): then the kernel can read the blob
    /// file itself as the device.
    pub fn blob_is_its_view(&self, blob: usize) -> bool {
        self.views.get(blob).is_some_and(|v| v.is_blob)
    }

    fn view(&self, ino: INodeNo) -> Option<&View> {
        self.views.get(usize::try_from(ino.0.checked_sub(2)?).ok()?)
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, size, perm) = if ino.0 == 1 {
            (FileType::Directory, 4096, 0o555)
        } else {
            (FileType::RegularFile, self.view(ino)?.size, 0o444)
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: if ino.0 == 1 { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: BLOCK as u32,
            flags: 0,
        })
    }
}

impl<R: BlobReader + 'static> Filesystem for BlobFs<R> {
    /// No kernel readahead on the blob views: EROFS reads a file's blocks (with its own
    /// readahead, within the file), and readahead of the view around them would fetch the
    /// neighbouring files' chunks too (for small files, several times the bytes read).
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // The smallest value fuser takes; the kernel rounds it down to no page.
        let _ = config.set_max_readahead(1);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = self.timer("lookup");
        if parent.0 != 1 {
            return reply.error(Errno::ENOENT);
        }
        match self
            .views
            .iter()
            .position(|v| v.name.as_bytes() == name.as_bytes())
            .and_then(|i| self.attr(INodeNo(i as u64 + 2)))
        {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = self.timer("getattr");
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// As [`crate::fusefs::RafsFs`]'s: no flush (files are opened with `FOPEN_NOFLUSH`).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.timer("open");
        match self.view(ino) {
            Some(_) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
            ),
            None if ino.0 == 1 => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _t = self.timer("read");
        let Some(v) = self.view(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.reader.read(&v.chunks, v.size, offset, size as usize) {
            Ok(data) => {
                if let Some(o) = &self.observer {
                    o.read(data.len() as u64);
                }
                reply.data(&data)
            }
            Err(e) => {
                tracing::error!("read of blob view {} at {offset}+{size}: {e}", v.name);
                reply.error(Errno::EIO)
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _t = self.timer("readdir");
        if ino.0 != 1 {
            return reply.error(Errno::ENOTDIR);
        }
        let dots = [
            (1u64, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
        ];
        let files = self
            .views
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64 + 2, FileType::RegularFile, v.name.as_str()));
        for (i, (ino, kind, name)) in dots
            .into_iter()
            .chain(files)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, OsStr::new(name)) {
                break;
            }
        }
        reply.ok();
    }
}

/// FUSE options of a blob-view mount: read-only, only its owner (root: the kernel opens the
/// views with the mounter's credentials) may read it.
pub fn blobfs_config(threads: usize) -> fuser::Config {
    use fuser::MountOption;
    let mut c = fuser::Config::default();
    c.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("rafs-blobs".into()),
        MountOption::Subtype("rafs-blobs".into()),
        MountOption::DefaultPermissions,
    ];
    c.n_threads = Some(threads.clamp(1, 64));
    c
}

/// Mounts the RAFS v6 bootstrap file `bootstrap` at `mountpoint` as a kernel EROFS filesystem
/// whose extra devices (one per blob, in blob-table order) are the files `devices`. Needs root
/// and a kernel with file-backed EROFS (`CONFIG_EROFS_FS_BACKED_BY_FILE`, Linux ≥ 6.12).
pub fn mount_erofs(bootstrap: &Path, mountpoint: &Path, devices: &[PathBuf]) -> io::Result<()> {
    use std::fmt::Write;
    let mut data = String::new();
    for d in devices {
        let s = d.to_str().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not UTF-8", d.display()),
            )
        })?;
        if s.contains(',') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{s}: a device path may not contain a comma"),
            ));
        }
        if !data.is_empty() {
            data.push(',');
        }
        let _ = write!(data, "device={s}");
    }
    let data = std::ffi::CString::new(data)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a device path"))?;
    rustix::mount::mount(
        bootstrap,
        mountpoint,
        "erofs",
        rustix::mount::MountFlags::RDONLY,
        Some(data.as_c_str()),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "mount -t erofs {} on {}: {e} (file-backed EROFS needs Linux 6.12 or later with CONFIG_EROFS_FS_BACKED_BY_FILE)",
                bootstrap.display(),
                mountpoint.display()
            ),
        )
    })
}

/// Unmounts a kernel EROFS mount made by [`mount_erofs`].
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::empty()).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("umount {}: {e}", mountpoint.display()),
        )
    })
}
