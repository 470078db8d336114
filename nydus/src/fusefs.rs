//! A RAFS image as a read-only FUSE filesystem (`fuser`): metadata from the bootstrap in
//! memory, file data read on demand through a [`ChunkReader`] (every chunk checked before the
//! kernel sees it; a chunk that fails its checks twice is `EIO`).
//!
//! Inode numbers are the tree's node ids plus one (FUSE's root is 1), so hardlinks share one.
//! Everything is immutable: attributes and entries are cached by the kernel for a day and
//! opened files keep their page cache across opens.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

use crate::image::Image;
use crate::reader::{BlobReader, ChunkReader};
use crate::tree::{Kind, NodeId, Tree};

/// How long the kernel may cache entries and attributes (the image never changes).
const TTL: Duration = Duration::from_secs(24 * 3600);

/// The FUSE options of an image mount with `threads` workers: read-only, `rafs` as its
/// filesystem name and type. As root, other users (containers' processes) may read it, and with
/// `auto_unmount` it is unmounted when the serving process goes (through a `fusermount3` helper
/// that watches it; a daemon that unmounts itself does without).
pub fn mount_config(threads: usize, auto_unmount: bool) -> fuser::Config {
    use fuser::MountOption;
    use std::os::unix::fs::MetadataExt;
    let mut c = fuser::Config::default();
    c.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("rafs".into()),
        MountOption::Subtype("rafs".into()),
        MountOption::DefaultPermissions,
    ];
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        c.acl = fuser::SessionACL::All;
        if auto_unmount {
            c.mount_options.push(MountOption::AutoUnmount);
        }
    }
    c.n_threads = Some(threads.clamp(1, 64));
    c
}

/// Opens and closes the root directory and `file` (a regular file of the image, relative to
/// the root: [`first_file`]) of the mount at `mountpoint`, so that the kernel learns, while the
/// server is up, that it needs to send no open, release or flush ([`RafsFs`] answers ENOSYS):
/// from then on, closing a file of the mount never waits for the server (which matters while it
/// restarts), and opens cost no round trip.
pub fn warm_up(
    mountpoint: &std::path::Path,
    file: Option<&std::path::Path>,
) -> std::io::Result<()> {
    drop(std::fs::File::open(mountpoint)?);
    if let Some(rel) = file {
        drop(std::fs::File::open(mountpoint.join(rel))?);
    }
    Ok(())
}

/// The path (relative, in directory order) of a regular file of `tree`, if it has one.
pub fn first_file(tree: &Tree) -> Option<std::path::PathBuf> {
    let mut stack = vec![(Tree::ROOT, std::path::PathBuf::new())];
    while let Some((id, path)) = stack.pop() {
        match &tree.node(id).kind {
            Kind::File { .. } => return Some(path),
            Kind::Dir(children) => {
                for (name, &child) in children.iter() {
                    stack.push((child, path.join(OsStr::from_bytes(name))));
                }
            }
            _ => {}
        }
    }
    None
}

/// Watches a mount's FUSE requests (for metrics).
pub trait Observer: Send + Sync {
    /// A request of kind `op` (`lookup`, `read`, ...) was answered after `elapsed`.
    fn request(&self, op: &'static str, elapsed: Duration);
    /// `bytes` of data were returned by a read.
    fn read(&self, bytes: u64);
}

/// Reports a request's duration to an [`Observer`] when dropped.
pub struct Timer<'a> {
    observer: Option<&'a dyn Observer>,
    op: &'static str,
    start: std::time::Instant,
}

impl<'a> Timer<'a> {
    pub fn new(observer: Option<&'a dyn Observer>, op: &'static str) -> Self {
        Timer {
            observer,
            op,
            start: std::time::Instant::now(),
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        if let Some(o) = self.observer {
            o.request(self.op, self.start.elapsed());
        }
    }
}

/// A mounted image.
pub struct RafsFs<R: BlobReader> {
    tree: Tree,
    /// Parent directory of each directory node (the root's is itself).
    parents: Vec<NodeId>,
    nlinks: Vec<u32>,
    reader: ChunkReader<R>,
    files: u64,
    bytes: u64,
    observer: Option<std::sync::Arc<dyn Observer>>,
}

impl<R: BlobReader + 'static> RafsFs<R> {
    /// The filesystem of `image`, its data read through `reader`.
    pub fn new(image: Image, reader: ChunkReader<R>) -> Self {
        let tree = image.tree;
        let n = tree.node_count();
        let mut parents = vec![Tree::ROOT; n];
        let mut nlinks = vec![1u32; n];
        for (id, count) in tree.nlinks() {
            if let Some(x) = nlinks.get_mut(id) {
                *x = count;
            }
        }
        let (mut files, mut bytes) = (0u64, 0u64);
        for id in tree.bfs().ids() {
            for (_, child) in tree.children(id) {
                if tree.node(child).kind.is_dir() {
                    parents[child] = id;
                }
            }
            if let Kind::File { size, .. } = tree.node(id).kind {
                files += 1;
                bytes = bytes.saturating_add(size);
            }
        }
        RafsFs {
            tree,
            parents,
            nlinks,
            reader,
            files,
            bytes,
            observer: None,
        }
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

    fn id(&self, ino: INodeNo) -> Option<NodeId> {
        let id = usize::try_from(ino.0.checked_sub(1)?).ok()?;
        (id < self.tree.node_count()).then_some(id)
    }

    fn attr(&self, id: NodeId) -> FileAttr {
        let n = self.tree.node(id);
        let (kind, size, rdev) = match &n.kind {
            Kind::Dir(_) => (FileType::Directory, 4096, 0),
            Kind::File { size, .. } => (FileType::RegularFile, *size, 0),
            Kind::Symlink(t) => (FileType::Symlink, t.len() as u64, 0),
            Kind::CharDev(d) => (FileType::CharDevice, 0, *d),
            Kind::BlockDev(d) => (FileType::BlockDevice, 0, *d),
            Kind::Fifo => (FileType::NamedPipe, 0, 0),
            Kind::Socket => (FileType::Socket, 0, 0),
        };
        let mtime = UNIX_EPOCH + Duration::new(n.meta.mtime, n.meta.mtime_nsec.min(999_999_999));
        FileAttr {
            ino: INodeNo(id as u64 + 1),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm: (n.meta.perm & 0o7777) as u16,
            nlink: self.nlinks.get(id).copied().unwrap_or(1),
            uid: n.meta.uid,
            gid: n.meta.gid,
            rdev,
            blksize: 4096,
            flags: 0,
        }
    }

    fn kind_of(&self, id: NodeId) -> FileType {
        self.attr(id).kind
    }
}

impl<R: BlobReader + 'static> Filesystem for RafsFs<R> {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = self.timer("lookup");
        let Some(pid) = self.id(parent) else {
            return reply.error(Errno::ENOENT);
        };
        match &self.tree.node(pid).kind {
            Kind::Dir(children) => match children.get(name.as_bytes()) {
                Some(&id) => reply.entry(&TTL, &self.attr(id), Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            _ => reply.error(Errno::ENOTDIR),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = self.timer("getattr");
        match self.id(ino) {
            Some(id) => reply.attr(&TTL, &self.attr(id)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _t = self.timer("readlink");
        match self.id(ino).map(|id| &self.tree.node(id).kind) {
            Some(Kind::Symlink(t)) => reply.data(t),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Nothing to write back: ENOSYS, after which the kernel sends no more flushes. [`warm_up`]
    /// has one sent right after mounting, so a close never waits for a server (one that waited
    /// would hang while dfdaemon restarts, e.g. in a process that forks and execs then).
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

    /// Zero-message opens: ENOSYS, after which the kernel opens files without asking, keeps
    /// their page cache across opens (`FOPEN_KEEP_CACHE`) and sends no release: two round trips
    /// less per file opened. Reads need no file handle.
    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    /// As [`Self::open`], for directories: the kernel then also caches their entries
    /// (`FOPEN_CACHE_DIR`); the image never changes.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
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
        let Some(id) = self.id(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let Kind::File {
            size: file_size,
            chunks,
        } = &self.tree.node(id).kind
        else {
            return reply.error(Errno::EINVAL);
        };
        match self.reader.read(chunks, *file_size, offset, size as usize) {
            Ok(data) => {
                if let Some(o) = &self.observer {
                    o.read(data.len() as u64);
                }
                reply.data(&data)
            }
            Err(e) => {
                tracing::error!("read of inode {} at {offset}+{size}: {e}", ino.0);
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
        let Some(id) = self.id(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let Kind::Dir(children) = &self.tree.node(id).kind else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [
            (id, FileType::Directory, &b"."[..]),
            (self.parents[id], FileType::Directory, &b".."[..]),
        ];
        let entries = dots.into_iter().chain(
            children
                .iter()
                .map(|(name, &child)| (child, self.kind_of(child), name.as_slice())),
        );
        for (i, (child, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(child as u64 + 1),
                i as u64 + 1,
                kind,
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _t = self.timer("statfs");
        reply.statfs(
            self.bytes.div_ceil(4096),
            0,
            0,
            self.files,
            0,
            4096,
            255,
            4096,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _t = self.timer("getxattr");
        let Some(id) = self.id(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.tree.node(id).meta.xattrs.get(name.as_bytes()) {
            None => reply.error(Errno::NO_XATTR),
            Some(v) if size == 0 => reply.size(v.len() as u32),
            Some(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Some(v) => reply.data(v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = self.timer("listxattr");
        let Some(id) = self.id(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut names = Vec::new();
        for k in self.tree.node(id).meta.xattrs.keys() {
            names.extend_from_slice(k);
            names.push(0);
        }
        if size == 0 {
            reply.size(names.len() as u32);
        } else if names.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&names);
        }
    }
}
