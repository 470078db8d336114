//! A sans-IO reader over a whole RAFS v5 bootstrap held in memory.
//!
//! [`BootstrapV5::parse`] checks the superblock and the tables once and keeps slices of the
//! input; inodes (with their names, symlink targets, xattrs and chunk infos) are decoded on
//! demand through the inode table. The input is untrusted: every offset is bounds-checked,
//! nothing is allocated from a count before the bytes it describes are known to be present, and
//! [`BootstrapV5::walk`] guards against directory cycles and unbounded depth. Malformed input
//! yields a [`FormatError`] naming the structure and the field; nothing panics.
//!
//! Inode numbers are inode table indexes from 1 (the root). A directory's children are the
//! contiguous numbers `i_child_index .. i_child_index + i_child_count`, sorted by name. Every
//! name of a hard link has its own number and record; all of them carry the first name's
//! number in `i_ino` ([`InodeRefV5::real_ino`]), which is what a filesystem reports as `st_ino`.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::rc::Rc;

use crate::chunk::ChunkInfo;
use crate::le::{u32_at, u64_at};
use crate::tree::{Kind, Meta, Node, Tree};
use crate::v5::layout::{
    inode_table_entry_offset, parse_blob_table, parse_xattrs, rafsv5_align, ExtBlobEntryV5,
    InodeV5, SuperBlockV5, Xattr, RAFSV5_SUPERBLOCK_SIZE, RAFS_V5_ROOT_INODE,
    XATTR_TABLE_HEADER_SIZE,
};
use crate::v6::FileType;
use crate::{BlobFeatures, Compressor, Digester, FormatError};

/// Depth limit of [`BootstrapV5::walk`] (the root is depth 0), as for RAFS v6.
pub const DEFAULT_MAX_DEPTH: usize = 256;

/// `len` bytes of `bytes` at `offset`, or an error naming `what`.
fn slice_at<'a>(
    bytes: &'a [u8],
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<&'a [u8], FormatError> {
    let outside = || FormatError::Invalid {
        what,
        reason: format!(
            "{len} bytes at offset {offset} lie outside the {}-byte bootstrap",
            bytes.len()
        ),
    };
    let start = usize::try_from(offset).map_err(|_| outside())?;
    let len = usize::try_from(len).map_err(|_| outside())?;
    let end = start.checked_add(len).ok_or_else(outside)?;
    bytes.get(start..end).ok_or_else(outside)
}

/// One data blob: its blob table entry, its extended blob table entry and the filesystem-wide
/// chunk size and algorithms (a v5 image uses one compressor and one digester for all blobs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfoV5 {
    /// Position in the blob table; chunk infos name the blob by it.
    pub index: u32,
    /// The blob id.
    pub blob_id: String,
    /// Start of the prefetch (readahead) range.
    pub readahead_offset: u32,
    /// Length of the prefetch range.
    pub readahead_size: u32,
    /// Chunks in the blob (0 without an extended blob table).
    pub chunk_count: u32,
    /// Features; [`BlobFeatures::V5_NO_EXT_BLOB_TABLE`] alone when the image has no extended
    /// blob table (as Nydus marks such blobs).
    pub features: BlobFeatures,
    /// Size of the uncompressed address space (0 without an extended blob table).
    pub uncompressed_size: u64,
    /// Size of the blob (0 without an extended blob table).
    pub compressed_size: u64,
    /// Chunk size (`s_block_size`).
    pub chunk_size: u32,
    /// Chunk compressor (from `s_flags`).
    pub compressor: Compressor,
    /// Chunk digest algorithm (from `s_flags`).
    pub digester: Digester,
}

/// An inode found by number: where its record is, the decoded inode and the parts that follow
/// it, all checked to lie inside the bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InodeRefV5<'a> {
    /// The inode table number this record was found by (1 = root). It equals `inode.ino`
    /// except for the second and later names of a hard link.
    pub ino: u64,
    /// Byte offset of the record in the bootstrap.
    pub offset: u64,
    /// The decoded and validated inode.
    pub inode: InodeV5,
    /// The file type from `i_mode`.
    pub file_type: FileType,
    /// The name (`/` for the root as Nydus writes it).
    pub name: &'a [u8],
    symlink: &'a [u8],
    xattr_pairs: &'a [u8],
    chunk_infos: &'a [u8],
}

impl InodeRefV5<'_> {
    /// `i_mode`: file type and permissions.
    pub fn mode(&self) -> u32 {
        self.inode.mode
    }

    /// `i_uid` (meaningful when the superblock has `EXPLICIT_UID_GID`).
    pub fn uid(&self) -> u32 {
        self.inode.uid
    }

    /// `i_gid` (meaningful when the superblock has `EXPLICIT_UID_GID`).
    pub fn gid(&self) -> u32 {
        self.inode.gid
    }

    /// `i_size`.
    pub fn size(&self) -> u64 {
        self.inode.size
    }

    /// `(i_mtime, i_mtime_nsec)`.
    pub fn mtime(&self) -> (u64, u32) {
        (self.inode.mtime, self.inode.mtime_nsec)
    }

    /// `i_nlink`.
    pub fn nlink(&self) -> u32 {
        self.inode.nlink
    }

    /// `i_rdev` of a device node.
    pub fn rdev(&self) -> u32 {
        self.inode.rdev
    }

    /// `i_parent`: the parent directory's inode number (0 for the root).
    pub fn parent(&self) -> u64 {
        self.inode.parent
    }

    /// `i_ino`: the inode number every name of a hard link shares (the first name's table
    /// number); two entries are the same file exactly when these are equal.
    pub fn real_ino(&self) -> u64 {
        self.inode.ino
    }

    fn expect_type(&self, want: FileType, what: &'static str) -> Result<(), FormatError> {
        if self.file_type == want {
            return Ok(());
        }
        Err(FormatError::Invalid {
            what,
            reason: format!(
                "inode {} is a {:?}, not a {want:?}",
                self.ino, self.file_type
            ),
        })
    }
}

/// One path visited by [`BootstrapV5::walk`].
#[derive(Debug)]
pub struct WalkEntryV5<'w> {
    /// Absolute path: `/` for the root, `/a/b` below it.
    pub path: &'w [u8],
    /// Number of components in `path` (0 for the root).
    pub depth: usize,
    /// The inode the path names.
    pub inode: &'w InodeRefV5<'w>,
}

/// A parsed RAFS v5 bootstrap borrowing its bytes.
#[derive(Clone)]
pub struct BootstrapV5<'a> {
    bytes: &'a [u8],
    sb: SuperBlockV5,
    compressor: Compressor,
    digester: Digester,
    inode_table: &'a [u8],
    prefetch_table: &'a [u8],
    blobs: Vec<BlobInfoV5>,
    root: InodeRefV5<'a>,
}

impl fmt::Debug for BootstrapV5<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapV5")
            .field("len", &self.bytes.len())
            .field("sb", &self.sb)
            .field("blobs", &self.blobs.len())
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl<'a> BootstrapV5<'a> {
    /// Decodes and validates the superblock (flags, chunk size, table placement), the extended
    /// blob table entries, the blob table (no more entries than the extended table, if there
    /// is one) and the root inode (inode 1, a directory carrying `i_ino` 1).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        if bytes.len() < RAFSV5_SUPERBLOCK_SIZE {
            return Err(FormatError::Truncated {
                what: "bootstrap",
                need: RAFSV5_SUPERBLOCK_SIZE,
                have: bytes.len(),
            });
        }
        let sb = SuperBlockV5::decode(bytes)?;
        sb.validate(bytes.len() as u64)?;
        let compressor = sb.compressor()?;
        let digester = sb.digester()?;

        let inode_table = slice_at(
            bytes,
            sb.inode_table_offset,
            sb.inode_table_size(),
            "inode table",
        )?;
        let prefetch_table = if sb.prefetch_table_entries == 0 {
            &[][..]
        } else {
            slice_at(
                bytes,
                sb.prefetch_table_offset,
                sb.prefetch_table_size(),
                "prefetch table",
            )?
        };
        let ext = if sb.extended_blob_table_entries == 0 {
            Vec::new()
        } else {
            slice_at(
                bytes,
                sb.extended_blob_table_offset,
                sb.extended_blob_table_size(),
                "extended blob table",
            )?
            .chunks_exact(ExtBlobEntryV5::SIZE)
            .map(|raw| {
                let e = ExtBlobEntryV5::decode(raw)?;
                e.validate()?;
                Ok(e)
            })
            .collect::<Result<Vec<_>, FormatError>>()?
        };
        let entries = parse_blob_table(slice_at(
            bytes,
            sb.blob_table_offset,
            sb.blob_table_size.into(),
            "blob table",
        )?)?;
        if !ext.is_empty() && ext.len() < entries.len() {
            return Err(FormatError::field(
                "SuperBlockV5",
                "s_extended_blob_table_entries",
                68,
                sb.extended_blob_table_entries,
                format!("fewer than the {} blob table entries", entries.len()),
            ));
        }
        let blobs = (0u32..)
            .zip(entries)
            .map(|(index, e)| {
                let x = ext.get(index as usize);
                BlobInfoV5 {
                    index,
                    blob_id: e.blob_id,
                    readahead_offset: e.readahead_offset,
                    readahead_size: e.readahead_size,
                    chunk_count: x.map_or(0, |x| x.chunk_count),
                    features: x.map_or(BlobFeatures::V5_NO_EXT_BLOB_TABLE, |x| x.features),
                    uncompressed_size: x.map_or(0, |x| x.uncompressed_size),
                    compressed_size: x.map_or(0, |x| x.compressed_size),
                    chunk_size: sb.block_size,
                    compressor,
                    digester,
                }
            })
            .collect();

        let root = decode_inode(bytes, inode_table, RAFS_V5_ROOT_INODE)?;
        if root.file_type != FileType::Directory {
            return Err(FormatError::field(
                "InodeV5",
                "i_mode",
                60,
                root.inode.mode,
                format!("root inode is a {:?}, not a directory", root.file_type),
            ));
        }
        if root.inode.ino != RAFS_V5_ROOT_INODE {
            return Err(FormatError::field(
                "InodeV5",
                "i_ino",
                40,
                root.inode.ino,
                "the root must carry inode number 1",
            ));
        }
        Ok(Self {
            bytes,
            sb,
            compressor,
            digester,
            inode_table,
            prefetch_table,
            blobs,
            root,
        })
    }

    /// The whole bootstrap.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The superblock.
    pub fn superblock(&self) -> &SuperBlockV5 {
        &self.sb
    }

    /// The chunk size of every file (`s_block_size`).
    pub fn chunk_size(&self) -> u32 {
        self.sb.block_size
    }

    /// The chunk compressor.
    pub fn compressor(&self) -> Compressor {
        self.compressor
    }

    /// The chunk digest algorithm.
    pub fn digester(&self) -> Digester {
        self.digester
    }

    /// The largest inode number (the inode table entries).
    pub fn max_ino(&self) -> u64 {
        (self.inode_table.len() / 4) as u64
    }

    /// The data blobs, in blob table order.
    pub fn blobs(&self) -> &[BlobInfoV5] {
        &self.blobs
    }

    /// The inode numbers of the prefetch table (a directory means all its descendants).
    pub fn prefetch_inos(&self) -> impl Iterator<Item = u32> + 'a {
        self.prefetch_table.chunks_exact(4).map(|c| u32_at(c, 0))
    }

    /// Inode number of the root directory (1).
    pub fn root_ino(&self) -> u64 {
        RAFS_V5_ROOT_INODE
    }

    /// The root directory inode.
    pub fn root(&self) -> InodeRefV5<'a> {
        self.root
    }

    /// The inode with table number `ino`: its inode table entry points past the superblock,
    /// its inode passes [`InodeV5::validate`], and its name, symlink target, xattr table and
    /// (for a regular file) chunk infos lie inside the bootstrap.
    pub fn inode(&self, ino: u64) -> Result<InodeRefV5<'a>, FormatError> {
        decode_inode(self.bytes, self.inode_table, ino)
    }

    /// The children of directory `dir`, in on-disk (name) order. Each must name `dir` as its
    /// parent and have a name that is not `.` or `..` and holds no `/` or NUL.
    pub fn read_dir(&self, dir: &InodeRefV5<'_>) -> Result<Vec<InodeRefV5<'a>>, FormatError> {
        dir.expect_type(FileType::Directory, "directory")?;
        let first = u64::from(dir.inode.child_index);
        (0..u64::from(dir.inode.child_count))
            .map(|i| self.child(dir, first + i))
            .collect()
    }

    /// Inode `ino` as a child of `dir`: see [`Self::read_dir`].
    fn child(&self, dir: &InodeRefV5<'_>, ino: u64) -> Result<InodeRefV5<'a>, FormatError> {
        let c = self.inode(ino)?;
        if c.inode.parent != dir.inode.ino {
            return Err(FormatError::field(
                "InodeV5",
                "i_parent",
                32,
                c.inode.parent,
                format!(
                    "inode {ino} is a child of directory inode {} but names another parent",
                    dir.inode.ino
                ),
            ));
        }
        let name = c.name;
        if name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0) {
            return Err(FormatError::Invalid {
                what: "InodeV5",
                reason: format!(
                    "inode {ino}: name {:?} is . or .. or holds '/' or NUL",
                    String::from_utf8_lossy(name)
                ),
            });
        }
        Ok(c)
    }

    /// The child of `dir` called `name`, found by binary search as nydusd does (Nydus sorts
    /// children by name).
    fn find_child(
        &self,
        dir: &InodeRefV5<'_>,
        name: &[u8],
    ) -> Result<Option<InodeRefV5<'a>>, FormatError> {
        let first = u64::from(dir.inode.child_index);
        let (mut lo, mut hi) = (0u64, u64::from(dir.inode.child_count));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let c = self.child(dir, first + mid)?;
            match c.name.cmp(name) {
                Ordering::Equal => return Ok(Some(c)),
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// The inode at `path`, resolved from the root one `/`-separated component at a time
    /// (empty components are skipped, `.` stays, `..` goes to `i_parent`, the root's `..` is
    /// the root). `None` if a component does not exist or a non-final component is not a
    /// directory.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<InodeRefV5<'a>>, FormatError> {
        let mut cur = self.root;
        for name in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if cur.file_type != FileType::Directory {
                return Ok(None);
            }
            cur = match name {
                b"." => cur,
                b".." if cur.inode.ino == RAFS_V5_ROOT_INODE => cur,
                b".." => self.inode(cur.inode.parent)?,
                _ => match self.find_child(&cur, name)? {
                    Some(c) => c,
                    None => return Ok(None),
                },
            };
        }
        Ok(Some(cur))
    }

    /// The target of symlink `ino` (never empty).
    pub fn read_link<'i>(&self, ino: &InodeRefV5<'i>) -> Result<&'i [u8], FormatError> {
        ino.expect_type(FileType::Symlink, "symlink")?;
        Ok(ino.symlink)
    }

    /// The xattrs of `ino` as full names and values, in on-disk order (empty without
    /// [`crate::v5::InodeFlagsV5::XATTR`]).
    pub fn xattrs(&self, ino: &InodeRefV5<'_>) -> Result<Vec<Xattr>, FormatError> {
        if !ino.inode.has_xattr() {
            return Ok(Vec::new());
        }
        parse_xattrs(ino.xattr_pairs)
    }

    /// The chunk infos of regular file `ino`, in file order: `i_child_count` of them, which
    /// must be `ceil(i_size / chunk size)` unless the file has holes (as Nydus' cached mode
    /// checks), each naming a blob in the table.
    pub fn chunks(&self, ino: &InodeRefV5<'_>) -> Result<Vec<ChunkInfo>, FormatError> {
        ino.expect_type(FileType::Regular, "regular file")?;
        let count = ino.inode.child_count;
        let chunk_size = u64::from(self.sb.block_size);
        let want = ino.size().div_ceil(chunk_size);
        if !ino.inode.has_hole() && want != u64::from(count) {
            return Err(FormatError::field(
                "InodeV5",
                "i_child_count",
                96,
                count,
                format!(
                    "inode {}: a {}-byte file has {want} chunks of {chunk_size} bytes",
                    ino.ino,
                    ino.size()
                ),
            ));
        }
        // `decode_inode` has checked that these bytes are present.
        let mut out = Vec::with_capacity(ino.chunk_infos.len() / ChunkInfo::SIZE);
        for (k, raw) in ino.chunk_infos.chunks_exact(ChunkInfo::SIZE).enumerate() {
            let c = ChunkInfo::decode(raw)?;
            if c.blob_index as usize >= self.blobs.len() {
                return Err(FormatError::field(
                    "ChunkInfo",
                    "blob_index",
                    32,
                    c.blob_index,
                    format!(
                        "inode {} chunk {k}: names no blob (the table has {})",
                        ino.ino,
                        self.blobs.len()
                    ),
                ));
            }
            out.push(c);
        }
        Ok(out)
    }

    /// [`Self::walk_with_depth`] with [`DEFAULT_MAX_DEPTH`].
    pub fn walk<E: From<FormatError>>(
        &self,
        visit: impl FnMut(&WalkEntryV5<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.walk_with_depth(DEFAULT_MAX_DEPTH, visit)
    }

    /// Visits every path depth-first in name order, parents before children, starting with the
    /// root (`/`, depth 0). Each directory is expanded at most once: reaching a directory
    /// `i_ino` a second time (a cycle, or a hard-linked directory) is an error, as is a
    /// directory with children at depth `max_depth`, and every [`Self::read_dir`] error. As
    /// every child must name the directory listing it as its parent, only one directory can
    /// list an inode table entry without error, so the walk's work is linear in the table.
    /// Stops at the first error `visit` returns.
    pub fn walk_with_depth<E: From<FormatError>>(
        &self,
        max_depth: usize,
        mut visit: impl FnMut(&WalkEntryV5<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut expanded = HashSet::new();
        // Children hold their parent's path (shared): the full path is made when a child is
        // visited, so memory follows the entries, not their depth.
        let mut stack = vec![(Rc::new(Vec::new()), b"".as_slice(), 0usize, self.root)];
        while let Some((parent, name, depth, ino)) = stack.pop() {
            let path = crate::tree::child_path(&parent, name);
            let is_dir = ino.file_type == FileType::Directory;
            if is_dir && !expanded.insert(ino.inode.ino) {
                return Err(FormatError::Invalid {
                    what: "directory tree",
                    reason: format!(
                        "directory inode {} is reached again at {} (a cycle or a hard-linked directory)",
                        ino.inode.ino,
                        String::from_utf8_lossy(&path)
                    ),
                }
                .into());
            }
            visit(&WalkEntryV5 {
                path: &path,
                depth,
                inode: &ino,
            })?;
            if !is_dir {
                continue;
            }
            let children = self.read_dir(&ino)?;
            if !children.is_empty() && depth >= max_depth {
                return Err(FormatError::Invalid {
                    what: "directory tree",
                    reason: format!(
                        "{} is deeper than {max_depth} levels",
                        String::from_utf8_lossy(&path)
                    ),
                }
                .into());
            }
            let path = Rc::new(path);
            for child in children.into_iter().rev() {
                stack.push((path.clone(), child.name, depth + 1, child));
            }
        }
        Ok(())
    }

    /// The whole filesystem as a [`Tree`]: metadata (uid/gid as stored), xattrs, hard links
    /// (one node per `i_ino` of a non-directory) and each regular file's chunk infos.
    pub fn to_tree(&self) -> Result<Tree, FormatError> {
        let mut tree = Tree::default();
        let mut node_of: HashMap<u64, crate::tree::NodeId> = HashMap::new();
        let tree_err = |err: crate::tree::TreeError| FormatError::Invalid {
            what: "directory tree",
            reason: err.to_string(),
        };
        self.walk(|e: &WalkEntryV5<'_>| -> Result<(), FormatError> {
            let ino = e.inode;
            let is_dir = ino.file_type == FileType::Directory;
            if !is_dir {
                if let Some(&id) = node_of.get(&ino.real_ino()) {
                    tree.link_id(e.path, id).map_err(tree_err)?;
                    return Ok(());
                }
            }
            let (mtime, mtime_nsec) = ino.mtime();
            let meta = Meta {
                perm: ino.mode() & 0o7777,
                uid: ino.uid(),
                gid: ino.gid(),
                mtime,
                mtime_nsec,
                xattrs: self.xattrs(ino)?.into_iter().collect(),
            };
            let kind = match ino.file_type {
                FileType::Directory => Kind::Dir(Default::default()),
                FileType::Symlink => Kind::Symlink(self.read_link(ino)?.to_vec()),
                FileType::CharDevice => Kind::CharDev(ino.rdev()),
                FileType::BlockDevice => Kind::BlockDev(ino.rdev()),
                FileType::Fifo => Kind::Fifo,
                FileType::Socket => Kind::Socket,
                FileType::Regular => {
                    let chunks = self.chunks(ino)?;
                    // Chunks lie in file order inside the file, without overlapping (holes
                    // between them are zeros), so they never add up to more than its size.
                    let mut end = 0u64;
                    for (k, c) in chunks.iter().enumerate() {
                        let c_end = c.file_offset.checked_add(u64::from(c.uncompressed_size));
                        if c.file_offset < end || c_end.is_none_or(|x| x > ino.size()) {
                            return Err(FormatError::Invalid {
                                what: "chunk info",
                                reason: format!(
                                    "{} chunk {k}: {} bytes at file offset {} overlap the chunk before or end past the {}-byte file",
                                    String::from_utf8_lossy(e.path),
                                    c.uncompressed_size,
                                    c.file_offset,
                                    ino.size()
                                ),
                            });
                        }
                        end = c_end.unwrap_or(u64::MAX);
                    }
                    Kind::File {
                        size: ino.size(),
                        chunks,
                    }
                }
            };
            let id = tree.insert(e.path, Node { meta, kind }).map_err(tree_err)?;
            if !is_dir {
                node_of.insert(ino.real_ino(), id);
            }
            Ok(())
        })?;
        Ok(tree)
    }
}

/// The inode `ino` of the bootstrap `bytes` whose inode table is `inode_table`; see
/// [`BootstrapV5::inode`].
fn decode_inode<'a>(
    bytes: &'a [u8],
    inode_table: &[u8],
    ino: u64,
) -> Result<InodeRefV5<'a>, FormatError> {
    let max_ino = (inode_table.len() / 4) as u64;
    if ino == 0 || ino > max_ino {
        return Err(FormatError::Invalid {
            what: "inode",
            reason: format!("inode {ino} is not in the inode table (1..={max_ino})"),
        });
    }
    // `ino <= max_ino`, so the entry is inside the table.
    let slot = (ino - 1) as usize * 4;
    let entry = u32_at(inode_table, slot);
    let len = bytes.len() as u64;
    let offset = inode_table_entry_offset(entry)
        .filter(|&o| o.checked_add(InodeV5::SIZE as u64).is_some_and(|e| e <= len))
        .ok_or_else(|| {
            FormatError::field(
                "InodeTableV5",
                "inode_offset",
                slot,
                entry,
                format!(
                    "inode {ino}: offset {} (entry << 3) must be past the superblock and hold a 128-byte inode inside the {len}-byte bootstrap",
                    u64::from(entry) << 3
                ),
            )
        })?;
    let inode = InodeV5::decode(bytes.get(offset as usize..).unwrap_or_default())?;
    inode.validate(max_ino)?;
    let file_type = inode.file_type().ok_or_else(|| {
        FormatError::field(
            "InodeV5",
            "i_mode",
            60,
            inode.mode,
            format!("inode {ino}: no known file type"),
        )
    })?;

    let past_end = |field: &'static str, field_offset: usize, value: u64, part: &str| {
        FormatError::field(
            "InodeV5",
            field,
            field_offset,
            value,
            format!(
                "inode {ino} at {offset}: {part} runs past the end of the {len}-byte bootstrap"
            ),
        )
    };
    let padded = |n: u16| u64::from(n).next_multiple_of(8);
    let name_start = offset + InodeV5::SIZE as u64;
    let name = slice_at(bytes, name_start, padded(inode.name_size), "name")
        .map_err(|_| past_end("i_name_size", 100, inode.name_size.into(), "the name"))?;
    let symlink = slice_at(
        bytes,
        name_start + padded(inode.name_size),
        padded(inode.symlink_size),
        "symlink target",
    )
    .map_err(|_| {
        past_end(
            "i_symlink_size",
            102,
            inode.symlink_size.into(),
            "the symlink target",
        )
    })?;
    let mut end = offset + inode.disk_size();
    let xattr_pairs = if inode.has_xattr() {
        let table_past_end = |size: u64| {
            FormatError::field(
                "XattrTableV5",
                "size",
                0,
                size,
                format!("inode {ino}: xattr table runs past the end of the {len}-byte bootstrap"),
            )
        };
        let header = slice_at(bytes, end, XATTR_TABLE_HEADER_SIZE, "xattr table")
            .map_err(|_| table_past_end(0))?;
        let size = u64_at(header, 0);
        let area = rafsv5_align(size)
            .and_then(|padded| {
                slice_at(bytes, end + XATTR_TABLE_HEADER_SIZE, padded, "xattr table").ok()
            })
            .ok_or_else(|| table_past_end(size))?;
        end += XATTR_TABLE_HEADER_SIZE + area.len() as u64;
        // `size <= area.len()`.
        area.get(..size as usize).unwrap_or_default()
    } else {
        &[][..]
    };
    let chunk_infos = if file_type == FileType::Regular {
        let need = u64::from(inode.child_count) * ChunkInfo::SIZE as u64;
        slice_at(bytes, end, need, "chunk infos").map_err(|_| {
            past_end(
                "i_child_count",
                96,
                inode.child_count.into(),
                "the chunk info array",
            )
        })?
    } else {
        &[][..]
    };
    Ok(InodeRefV5 {
        ino,
        offset,
        inode,
        file_type,
        name: name.get(..usize::from(inode.name_size)).unwrap_or_default(),
        symlink: symlink
            .get(..usize::from(inode.symlink_size))
            .unwrap_or_default(),
        xattr_pairs,
        chunk_infos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v5::layout::{InodeFlagsV5, RAFS_SUPER_VERSION_V4};
    use crate::v5::testimage::*;
    use proptest::prelude::*;

    fn walk_paths(boot: &BootstrapV5<'_>) -> Result<Vec<(String, u64)>, FormatError> {
        let mut out = Vec::new();
        boot.walk(|w: &WalkEntryV5<'_>| -> Result<(), FormatError> {
            out.push((String::from_utf8_lossy(w.path).into_owned(), w.inode.ino));
            Ok(())
        })?;
        Ok(out)
    }

    fn names(entries: &[InodeRefV5<'_>]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(e.name).into_owned())
            .collect()
    }

    /// The error of walking `img` (which must parse), reading every inode on the way.
    fn walk_error(img: &[u8]) -> FormatError {
        let boot = BootstrapV5::parse(img).unwrap();
        boot.walk(|w: &WalkEntryV5<'_>| -> Result<(), FormatError> {
            boot.xattrs(w.inode)?;
            if w.inode.file_type == FileType::Regular {
                boot.chunks(w.inode)?;
            }
            Ok(())
        })
        .unwrap_err()
    }

    #[test]
    fn parses_superblock_and_tables() {
        let img = sample();
        let boot = BootstrapV5::parse(&img.bytes).unwrap();
        assert_eq!(boot.superblock(), &img.sb);
        assert_eq!(boot.chunk_size(), MIB);
        assert_eq!(boot.compressor(), Compressor::Zstd);
        assert_eq!(boot.digester(), Digester::Blake3);
        assert_eq!(boot.max_ino(), 9);
        assert_eq!(boot.superblock().inodes_count, 8);
        assert_eq!(boot.root_ino(), 1);
        assert_eq!(boot.prefetch_inos().collect::<Vec<_>>(), [3, 5]);
        let opts = sample_options();
        let want: Vec<BlobInfoV5> = (0..2)
            .map(|i| BlobInfoV5 {
                index: i as u32,
                blob_id: opts.blobs[i].blob_id.clone(),
                readahead_offset: opts.blobs[i].readahead_offset,
                readahead_size: opts.blobs[i].readahead_size,
                chunk_count: opts.ext[i].chunk_count,
                features: opts.ext[i].features,
                uncompressed_size: opts.ext[i].uncompressed_size,
                compressed_size: opts.ext[i].compressed_size,
                chunk_size: MIB,
                compressor: Compressor::Zstd,
                digester: Digester::Blake3,
            })
            .collect();
        assert_eq!(boot.blobs(), want);
        assert_eq!(boot.blobs()[0].blob_id, BLOB_A);
        assert_eq!(boot.blobs()[1].blob_id, BLOB_B);
        assert!(format!("{boot:?}").starts_with("BootstrapV5 { len: "));
    }

    #[test]
    fn numbering_and_layout_follow_nydus_image() {
        let img = sample();
        let inos: Vec<(&str, u64)> = img
            .records
            .iter()
            .map(|(p, r)| (p.as_str(), r.ino))
            .collect();
        assert_eq!(
            inos,
            [
                ("/", 1),
                ("/dev0", 2),
                ("/file", 3),
                ("/link", 4),
                ("/sub", 5),
                ("/sub/deeper", 6),
                ("/sub/deeper/f", 9),
                ("/sub/empty", 7),
                ("/sub/hard", 8),
            ]
        );
        // The first record follows the tables; records are in DFS pre-order.
        assert_eq!(img.record("/").offset, img.records_start);
        assert!(img.record("/sub/deeper/f").offset < img.record("/sub/empty").offset);
        assert_eq!(img.bytes.len() % 8, 0);
    }

    #[test]
    fn root_and_directories_list_children_in_name_order() {
        let img = sample();
        let boot = BootstrapV5::parse(&img.bytes).unwrap();
        let root = boot.root();
        assert_eq!(root.ino, 1);
        assert_eq!(root.name, b"/");
        assert_eq!(root.parent(), 0);
        assert_eq!(root.nlink(), 3);
        let top = boot.read_dir(&root).unwrap();
        assert_eq!(names(&top), ["dev0", "file", "link", "sub"]);
        assert_eq!(top.iter().map(|c| c.ino).collect::<Vec<_>>(), [2, 3, 4, 5]);
        let sub = boot.read_dir(&top[3]).unwrap();
        assert_eq!(names(&sub), ["deeper", "empty", "hard"]);
        assert_eq!(sub.iter().map(|c| c.ino).collect::<Vec<_>>(), [6, 7, 8]);
        assert!(sub.iter().all(|c| c.parent() == 5));
        let deeper = boot.read_dir(&sub[0]).unwrap();
        assert_eq!(names(&deeper), ["f"]);
        assert_eq!(
            boot.read_dir(&deeper[0]).unwrap_err().to_string(),
            "directory: inode 9 is a Regular, not a Directory"
        );
    }

    #[test]
    fn lookup_resolves_paths() {
        let img = sample();
        let boot = BootstrapV5::parse(&img.bytes).unwrap();
        let ino_of = |p: &[u8]| boot.lookup(p).unwrap().map(|i| i.ino);
        assert_eq!(ino_of(b"/"), Some(1));
        assert_eq!(ino_of(b""), Some(1));
        assert_eq!(ino_of(b"/.."), Some(1));
        for (path, rec) in &img.records {
            assert_eq!(ino_of(path.as_bytes()), Some(rec.ino), "{path}");
        }
        assert_eq!(ino_of(b"//sub///deeper/"), Some(6));
        assert_eq!(ino_of(b"sub/./deeper/../hard"), Some(8));
        assert_eq!(ino_of(b"/sub/deeper/../../file"), Some(3));
        assert_eq!(ino_of(b"/nope"), None);
        assert_eq!(ino_of(b"/a"), None);
        assert_eq!(ino_of(b"/zzz"), None);
        assert_eq!(ino_of(b"/su"), None);
        assert_eq!(ino_of(b"/file/x"), None);
        assert_eq!(ino_of(b"/sub/deeper/g"), None);
    }

    #[test]
    fn attributes_and_hardlink_identity() {
        let img = sample();
        let boot = BootstrapV5::parse(&img.bytes).unwrap();
        let get = |p: &[u8]| boot.lookup(p).unwrap().unwrap();

        let file = get(b"/file");
        assert_eq!(file.file_type, FileType::Regular);
        assert_eq!(file.mode(), 0o100644);
        assert_eq!((file.uid(), file.gid()), (1000, 1000));
        assert_eq!(file.size(), FILE_SIZE);
        assert_eq!(file.mtime(), (1_700_000_000, 123));
        assert_eq!(file.nlink(), 2);
        assert_eq!(file.real_ino(), 3);
        assert_eq!(file.inode.blocks, (FILE_SIZE + 48).div_ceil(512));
        let hard = get(b"/sub/hard");
        assert_eq!((hard.ino, hard.real_ino(), hard.nlink()), (8, 3, 2));
        assert_eq!(hard.parent(), 5);
        assert!(hard.inode.is_hardlink() && file.inode.is_hardlink());
        assert!(hard.inode.flags.contains(InodeFlagsV5::HARDLINK));
        assert_eq!(boot.chunks(&hard).unwrap(), boot.chunks(&file).unwrap());
        // inode(i_ino) is the first name's record, as nydusd's getattr sees it.
        assert_eq!(boot.inode(hard.real_ino()).unwrap().name, b"file");

        let dev = get(b"/dev0");
        assert_eq!(dev.file_type, FileType::CharDevice);
        assert_eq!(dev.mode(), 0o020666);
        assert_eq!(dev.rdev(), DEV_RDEV);
        assert_eq!(dev.size(), 0);

        let sub = get(b"/sub");
        assert_eq!(sub.mode(), 0o040700);
        assert_eq!((sub.uid(), sub.gid(), sub.nlink()), (1000, 1000, 3));
        assert_eq!(sub.size(), 4096);
        assert_eq!(get(b"/sub/deeper").nlink(), 2);
        assert_eq!(get(b"/sub/deeper/f").mtime(), (5, 6));
        assert_eq!(get(b"/sub/empty").nlink(), 1);
    }

    #[test]
    fn symlink_xattrs_and_chunks() {
        let img = sample();
        let boot = BootstrapV5::parse(&img.bytes).unwrap();
        let get = |p: &[u8]| boot.lookup(p).unwrap().unwrap();

        let link = get(b"/link");
        assert_eq!(link.file_type, FileType::Symlink);
        assert_eq!(boot.read_link(&link).unwrap(), LINK_TARGET.as_bytes());
        assert_eq!(link.size(), LINK_TARGET.len() as u64);
        assert!(boot.read_link(&boot.root()).is_err());
        assert!(boot.read_dir(&link).is_err());
        assert!(boot.chunks(&link).is_err());

        let file = get(b"/file");
        let want: Vec<Xattr> = file_xattrs()
            .into_iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect();
        assert_eq!(boot.xattrs(&file).unwrap(), want);
        assert_eq!(boot.xattrs(&get(b"/sub/hard")).unwrap(), want);
        assert_eq!(
            boot.xattrs(&get(b"/sub")).unwrap(),
            vec![(b"user.dir".to_vec(), b"1".to_vec())]
        );
        assert_eq!(boot.xattrs(&boot.root()).unwrap(), vec![]);
        assert_eq!(boot.xattrs(&link).unwrap(), vec![]);

        assert_eq!(boot.chunks(&file).unwrap(), file_chunks());
        let f = get(b"/sub/deeper/f");
        assert_eq!(boot.chunks(&f).unwrap(), f_chunks());
        assert_eq!(boot.chunks(&f).unwrap()[0].crc32(), Some(0xdead_beef));
        assert_eq!(boot.chunks(&get(b"/sub/empty")).unwrap(), vec![]);
    }

    #[test]
    fn walk_visits_every_path_depth_first() {
        let img = sample();
        let boot = BootstrapV5::parse(&img.bytes).unwrap();
        let paths = walk_paths(&boot).unwrap();
        let want: Vec<(String, u64)> = img
            .records
            .iter()
            .map(|(p, r)| (p.clone(), r.ino))
            .collect();
        assert_eq!(paths, want);
        let mut depths = Vec::new();
        boot.walk(|w: &WalkEntryV5<'_>| -> Result<(), FormatError> {
            depths.push(w.depth);
            Ok(())
        })
        .unwrap();
        assert_eq!(depths, [0, 1, 1, 1, 1, 2, 3, 2, 2]);

        // Depth 2 holds children, so a limit of 2 stops the walk.
        let err = boot
            .walk_with_depth(2, |_: &WalkEntryV5<'_>| Ok::<(), FormatError>(()))
            .unwrap_err();
        assert!(
            err.to_string().contains("/sub/deeper is deeper than 2"),
            "{err}"
        );
        assert!(boot
            .walk_with_depth(3, |_: &WalkEntryV5<'_>| Ok::<(), FormatError>(()))
            .is_ok());

        // The visitor's error stops the walk.
        let mut seen = 0;
        let err = boot
            .walk(|_: &WalkEntryV5<'_>| {
                seen += 1;
                if seen == 3 {
                    Err(FormatError::Invalid {
                        what: "test",
                        reason: "stop".into(),
                    })
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert_eq!(seen, 3);
        assert!(matches!(err, FormatError::Invalid { what: "test", .. }));
    }

    #[test]
    fn to_tree_keeps_metadata_chunks_and_hardlinks() {
        let img = sample();
        let tree = BootstrapV5::parse(&img.bytes).unwrap().to_tree().unwrap();
        let file = tree.lookup(b"/file").unwrap();
        assert_eq!(tree.lookup(b"/sub/hard"), Some(file));
        let node = tree.node(file);
        assert_eq!(node.mode(), 0o100644);
        assert_eq!((node.meta.uid, node.meta.mtime_nsec), (1000, 123));
        assert_eq!(node.meta.xattrs.len(), 2);
        assert_eq!(
            node.kind,
            Kind::File {
                size: FILE_SIZE,
                chunks: file_chunks()
            }
        );
        assert_eq!(
            tree.node(tree.lookup(b"/link").unwrap()).kind,
            Kind::Symlink(LINK_TARGET.as_bytes().to_vec())
        );
        assert_eq!(
            tree.node(tree.lookup(b"/dev0").unwrap()).kind,
            Kind::CharDev(DEV_RDEV)
        );
        let sub = tree.node(tree.lookup(b"/sub").unwrap());
        assert_eq!(sub.mode(), 0o040700);
        assert_eq!(tree.node(crate::tree::Tree::ROOT).mode(), 0o040755);
        assert_eq!(tree.walk().count(), 9);
        assert_eq!(tree.nlinks()[&file], 2);
    }

    #[test]
    fn image_without_extended_blob_table() {
        let mut opts = sample_options();
        opts.ext.clear();
        let img = build(&sample_tree(), &opts);
        let boot = BootstrapV5::parse(&img.bytes).unwrap();
        assert_eq!(boot.blobs().len(), 2);
        for b in boot.blobs() {
            assert_eq!(b.features, BlobFeatures::V5_NO_EXT_BLOB_TABLE);
            assert_eq!((b.chunk_count, b.compressed_size), (0, 0));
        }
        assert!(boot.to_tree().is_ok());

        // An extended table shorter than the blob table is an error.
        let mut opts = sample_options();
        opts.ext.truncate(1);
        let img = build(&sample_tree(), &opts);
        assert_eq!(
            BootstrapV5::parse(&img.bytes).unwrap_err().field_name(),
            Some("s_extended_blob_table_entries")
        );
        // A longer one is fine, as in Nydus.
        let mut opts = sample_options();
        opts.ext.push(opts.ext[0]);
        let img = build(&sample_tree(), &opts);
        assert_eq!(BootstrapV5::parse(&img.bytes).unwrap().blobs().len(), 2);
    }

    fn set_u32(img: &mut [u8], at: usize, v: u32) {
        img[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u64(img: &mut [u8], at: usize, v: u64) {
        img[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn truncated_bootstraps_are_rejected() {
        let img = sample().bytes;
        for len in [0, 100, 8191] {
            assert_eq!(
                BootstrapV5::parse(&img[..len]).unwrap_err(),
                FormatError::Truncated {
                    what: "bootstrap",
                    need: 8192,
                    have: len
                }
            );
        }
        for len in [8192, img.len() - 1, img.len() - 4] {
            assert!(
                matches!(
                    BootstrapV5::parse(&img[..len]),
                    Err(FormatError::Invalid {
                        what: "bootstrap",
                        ..
                    })
                ),
                "{len}"
            );
        }
        // The inode table ends past the end.
        assert_eq!(
            BootstrapV5::parse(&img[..8200]).unwrap_err().field_name(),
            Some("s_inode_table_offset")
        );
        // The last record (/sub/hard) loses part of its chunk infos.
        let e = walk_error(&img[..img.len() - 8]);
        assert_eq!(e.field_name(), Some("i_child_count"), "{e}");
    }

    #[test]
    fn bad_magic_and_version() {
        let mut img = sample().bytes;
        img[0] ^= 1;
        let e = BootstrapV5::parse(&img).unwrap_err();
        assert!(matches!(e, FormatError::BadMagic { .. }), "{e}");
        assert_eq!(e.field_name(), Some("magic"));

        let mut img = sample().bytes;
        set_u32(&mut img, 4, 0x600);
        assert_eq!(
            BootstrapV5::parse(&img).unwrap_err().field_name(),
            Some("s_fs_version")
        );
        set_u32(&mut img, 4, RAFS_SUPER_VERSION_V4);
        assert!(BootstrapV5::parse(&img).is_ok());

        let mut img = sample().bytes;
        set_u64(&mut img, 16, 0x4 | 0x80 | 0x2);
        assert_eq!(
            BootstrapV5::parse(&img).unwrap_err().field_name(),
            Some("s_flags")
        );
        let mut img = sample().bytes;
        set_u32(&mut img, 12, 3 << 20);
        assert_eq!(
            BootstrapV5::parse(&img).unwrap_err().field_name(),
            Some("s_block_size")
        );
    }

    #[test]
    fn inode_table_offsets_out_of_range() {
        let img = sample();
        let len = img.bytes.len() as u64;
        // The table itself.
        for off in [0, 4096, len, len - 8] {
            let mut b = img.bytes.clone();
            set_u64(&mut b, 32, off);
            assert_eq!(
                BootstrapV5::parse(&b).unwrap_err().field_name(),
                Some("s_inode_table_offset"),
                "{off}"
            );
        }
        // Entries: inside the superblock, past the end, leaving less than an inode.
        for entry in [0, 1024, (len / 8) as u32, (len / 8) as u32 - 15, u32::MAX] {
            let mut b = img.bytes.clone();
            set_u32(&mut b, 8192 + 4 * 2, entry); // inode 3, /file
            let boot = BootstrapV5::parse(&b).unwrap();
            let e = boot.inode(3).unwrap_err();
            assert_eq!(e.field_name(), Some("inode_offset"), "{entry}: {e}");
            assert!(boot.lookup(b"/file").is_err());
            assert_eq!(walk_error(&b).field_name(), Some("inode_offset"));
            // The root's entry is read by parse.
            set_u32(&mut b, 8192, entry);
            assert_eq!(
                BootstrapV5::parse(&b).unwrap_err().field_name(),
                Some("inode_offset")
            );
        }
        // Numbers outside the table.
        let boot = BootstrapV5::parse(&img.bytes).unwrap();
        for ino in [0, 10, u64::MAX] {
            assert!(
                matches!(
                    boot.inode(ino),
                    Err(FormatError::Invalid { what: "inode", .. })
                ),
                "{ino}"
            );
        }
    }

    #[test]
    fn child_index_loops_are_errors() {
        let img = sample();
        // /sub's children start at its own number, or at the root.
        for first in [5, 1, 0] {
            let mut b = img.clone();
            b.poke("/sub", 92, &u32::to_le_bytes(first));
            assert_eq!(walk_error(&b.bytes).field_name(), Some("i_child_index"));
        }
        // The root's children start at the root.
        let mut b = img.clone();
        b.poke("/", 92, &1u32.to_le_bytes());
        assert_eq!(
            BootstrapV5::parse(&b.bytes).unwrap_err().field_name(),
            Some("i_child_index")
        );
        // /sub/deeper lists more children than the table has.
        let mut b = img.clone();
        b.poke("/sub/deeper", 96, &5u32.to_le_bytes());
        assert_eq!(walk_error(&b.bytes).field_name(), Some("i_child_count"));

        // /sub/deeper lists /sub (inode 5) as its child: /sub names another parent.
        let mut b = img.clone();
        b.poke("/sub/deeper", 92, &8u32.to_le_bytes());
        b.poke("/sub/hard", 32, &1u64.to_le_bytes());
        assert_eq!(walk_error(&b.bytes).field_name(), Some("i_parent"));

        // Inode 4 (/link) points at /sub's record: /sub is listed twice by the root.
        let mut b = img.clone();
        let entry = (img.record("/sub").offset / 8) as u32;
        set_u32(&mut b.bytes, 8192 + 4 * 3, entry);
        let e = walk_error(&b.bytes);
        assert!(e.to_string().contains("reached again at /sub"), "{e}");
        // Lookups still terminate.
        let boot = BootstrapV5::parse(&b.bytes).unwrap();
        assert_eq!(boot.lookup(b"/sub/deeper/f").unwrap().unwrap().ino, 9);

        // Inode 9 (/sub/deeper/f) points at /sub/deeper's record, which names /sub as parent.
        let mut b = img.clone();
        let entry = (img.record("/sub/deeper").offset / 8) as u32;
        set_u32(&mut b.bytes, 8192 + 4 * 8, entry);
        assert_eq!(walk_error(&b.bytes).field_name(), Some("i_parent"));
    }

    #[test]
    fn names_and_chunk_counts_beyond_the_file() {
        let img = sample();
        // The last record is /sub/hard: name, xattrs and chunk infos are < 255 bytes.
        let last = img.record("/sub/hard");
        assert!(img.bytes.len() - last.offset - 128 < 255);
        let mut b = img.clone();
        b.poke("/sub/hard", 100, &255u16.to_le_bytes());
        let boot = BootstrapV5::parse(&b.bytes).unwrap();
        assert_eq!(boot.inode(8).unwrap_err().field_name(), Some("i_name_size"));
        assert_eq!(walk_error(&b.bytes).field_name(), Some("i_name_size"));

        let mut b = img.clone();
        b.poke("/sub/hard", 96, &1000u32.to_le_bytes());
        assert_eq!(walk_error(&b.bytes).field_name(), Some("i_child_count"));
        let mut b = img.clone();
        b.poke("/sub/hard", 96, &u32::MAX.to_le_bytes());
        assert_eq!(walk_error(&b.bytes).field_name(), Some("i_child_count"));

        // A name longer than 255 bytes.
        let mut b = img.clone();
        b.poke("/file", 100, &256u16.to_le_bytes());
        assert_eq!(walk_error(&b.bytes).field_name(), Some("i_name_size"));

        // A symlink target past the end: make the last record a symlink.
        let mut b = img.clone();
        b.poke("/sub/hard", 60, &0o120777u32.to_le_bytes());
        b.poke("/sub/hard", 102, &u16::MAX.to_le_bytes());
        let boot = BootstrapV5::parse(&b.bytes).unwrap();
        assert_eq!(
            boot.inode(8).unwrap_err().field_name(),
            Some("i_symlink_size")
        );

        // An xattr table past the end.
        let mut b = img.clone();
        let name_end = last.offset + 128 + 8;
        set_u64(&mut b.bytes, name_end, 1 << 20);
        assert_eq!(walk_error(&b.bytes).field_name(), Some("size"));
        set_u64(&mut b.bytes, name_end, u64::MAX);
        assert_eq!(walk_error(&b.bytes).field_name(), Some("size"));
    }

    #[test]
    fn chunk_checks() {
        let img = sample();
        // The chunk count must match the size (1.5 MiB = 2 chunks) unless the file has holes.
        let mut b = img.clone();
        b.poke("/file", 64, &(3 * u64::from(MIB)).to_le_bytes());
        assert_eq!(walk_error(&b.bytes).field_name(), Some("i_child_count"));
        let flags = InodeFlagsV5::XATTR | InodeFlagsV5::HARDLINK | InodeFlagsV5::HAS_HOLE;
        b.poke("/file", 80, &flags.bits().to_le_bytes());
        let boot = BootstrapV5::parse(&b.bytes).unwrap();
        let file = boot.lookup(b"/file").unwrap().unwrap();
        assert_eq!(boot.chunks(&file).unwrap().len(), 2);

        // A chunk naming blob 2 of 2.
        let mut b = img.clone();
        let f = img.record("/sub/deeper/f").offset;
        set_u32(&mut b.bytes, f + 128 + 8 + 32, 2);
        assert_eq!(walk_error(&b.bytes).field_name(), Some("blob_index"));
    }

    #[test]
    fn inode_field_errors_are_reported() {
        let img = sample();
        let cases: [(&str, usize, &[u8], &str); 8] = [
            ("/file", 88, &0u32.to_le_bytes(), "i_nlink"),
            ("/file", 60, &0o170000u32.to_le_bytes(), "i_mode"),
            ("/file", 40, &0u64.to_le_bytes(), "i_ino"),
            ("/file", 40, &10u64.to_le_bytes(), "i_ino"),
            ("/sub/deeper", 32, &9u64.to_le_bytes(), "i_parent"),
            ("/sub/deeper", 32, &1u64.to_le_bytes(), "i_parent"),
            ("/link", 102, &0u16.to_le_bytes(), "i_symlink_size"),
            ("/dev0", 102, &8u16.to_le_bytes(), "i_symlink_size"),
        ];
        for (path, at, bytes, field) in cases {
            let mut b = img.clone();
            b.poke(path, at, bytes);
            let e = walk_error(&b.bytes);
            assert_eq!(e.field_name(), Some(field), "{path}@{at}: {e}");
        }
        // The root must be a directory numbered 1.
        let mut b = img.clone();
        b.poke("/", 60, &0o100644u32.to_le_bytes());
        assert_eq!(
            BootstrapV5::parse(&b.bytes).unwrap_err().field_name(),
            Some("i_mode")
        );
    }

    #[test]
    fn bad_child_names_are_errors() {
        for name in [&b"."[..], b"..", b"a/", b"\0x"] {
            let mut tree = sample_tree();
            tree.children[0].name = name.to_vec();
            tree.children.sort_by(|a, b| a.name.cmp(&b.name));
            let img = build(&tree, &sample_options());
            let e = walk_error(&img.bytes);
            assert!(
                matches!(
                    e,
                    FormatError::Invalid {
                        what: "InodeV5",
                        ..
                    }
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_tables_are_errors() {
        let img = sample();
        let blob_off = img.sb.blob_table_offset as usize;
        // A blob id that is not UTF-8.
        let mut b = img.bytes.clone();
        b[blob_off + 8] = 0xff;
        assert_eq!(
            BootstrapV5::parse(&b).unwrap_err().field_name(),
            Some("blob_id")
        );
        // Incompatible ext features.
        let mut b = img.bytes.clone();
        set_u32(
            &mut b,
            img.sb.extended_blob_table_offset as usize + 4,
            0x1000,
        );
        assert_eq!(
            BootstrapV5::parse(&b).unwrap_err().field_name(),
            Some("features")
        );
        // More unique inodes than table entries.
        let mut b = img.bytes.clone();
        set_u64(&mut b, 24, 10);
        assert_eq!(
            BootstrapV5::parse(&b).unwrap_err().field_name(),
            Some("s_inodes_count")
        );
    }

    /// Calls every accessor on everything reachable; results are ignored, panics are not.
    fn exercise(bytes: &[u8]) {
        let Ok(boot) = BootstrapV5::parse(bytes) else {
            return;
        };
        let _ = boot.prefetch_inos().count();
        let _ = boot.lookup(b"/sub/deeper/f");
        let _ = boot.lookup(b"/sub/../link/..");
        let _ = boot.walk(|w: &WalkEntryV5<'_>| -> Result<(), FormatError> {
            let _ = boot.xattrs(w.inode);
            let _ = boot.read_dir(w.inode);
            let _ = boot.read_link(w.inode);
            let _ = boot.chunks(w.inode);
            Ok(())
        });
        for ino in (0..=boot.max_ino().min(64) + 1).chain([u64::MAX]) {
            if let Ok(i) = boot.inode(ino) {
                let _ = boot.xattrs(&i);
                let _ = boot.read_dir(&i);
                let _ = boot.read_link(&i);
                let _ = boot.chunks(&i);
            }
        }
        let _ = boot.to_tree();
    }

    /// Offsets where mutations matter: superblock fields, tables, inode records.
    fn interesting_offset(img: &Image) -> impl Strategy<Value = usize> {
        let len = img.bytes.len();
        prop_oneof![
            0usize..80,
            8192..img.records_start,
            img.records_start..len,
            0..len,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parsing_and_walking_mutated_images_never_panics(
            mutations in proptest::collection::vec(
                (interesting_offset(&sample()), any::<u8>()),
                1..12,
            ),
            words in proptest::collection::vec(
                (interesting_offset(&sample()), any::<u32>()),
                0..4,
            ),
            truncate in proptest::option::of(0usize..sample().bytes.len()),
        ) {
            let mut img = sample().bytes;
            for (off, v) in mutations {
                img[off] ^= v;
            }
            for (off, v) in words {
                let at = off.min(img.len() - 4);
                img[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            if let Some(len) = truncate {
                img.truncate(len);
            }
            exercise(&img);
        }

        #[test]
        fn random_bytes_after_a_valid_superblock_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let mut img = sample().bytes[..8192].to_vec();
            img.extend_from_slice(&tail);
            exercise(&img);
        }
    }
}
