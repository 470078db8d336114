//! A sans-IO reader over a whole RAFS v6 bootstrap held in memory.
//!
//! [`Bootstrap::parse`] checks the superblocks and the fixed tables once and keeps slices of the
//! input; everything else (inodes, xattrs, directories, symlinks, chunk addresses) is decoded on
//! demand. The input is untrusted: every offset is bounds-checked, nothing is allocated from a
//! count before the bytes it describes are known to be present, and [`Bootstrap::walk`] guards
//! against directory cycles and unbounded depth. Malformed input yields a [`FormatError`] naming
//! the structure and the problem; nothing panics.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::rc::Rc;

use crate::chunk::ChunkInfo;
use crate::le::u32_at;
use crate::tree::{child_path, Kind, Meta, Node, NodeId, Tree};
use crate::v6::inode::{
    xattr_prefix, ChunkAddr, DataLayout, Dirent, FileType, Inode, InodeFormat, XattrEntryHeader,
    XattrIbodyHeader,
};
use crate::v6::layout::{
    BlobEntry, DeviceSlot, SuperBlock, SuperBlockExt, EROFS_BLOCK_SIZE_4096, EROFS_DEVTABLE_OFFSET,
    EROFS_DEVT_SLOT_SIZE, EROFS_SUPER_OFFSET, RAFS_V6_BLOB_ENTRY_SIZE, RAFS_V6_EXT_SUPER_OFFSET,
};
use crate::FormatError;

/// Longest file name EROFS allows (`EROFS_NAME_LEN`).
pub const EROFS_NAME_LEN: usize = 255;
/// Longest symlink target the reader accepts (Linux `PATH_MAX`).
pub const MAX_SYMLINK_LEN: u64 = 4096;
/// Most bytes (names and values) one inode's xattrs may decode to: the size of the largest
/// inline xattr area.
pub const MAX_XATTR_BYTES: usize = 256 << 10;
/// Depth limit of [`Bootstrap::walk`] (the root is depth 0).
pub const DEFAULT_MAX_DEPTH: usize = crate::tree::MAX_DEPTH;

/// One xattr entry at the start of `bytes`: full name, value and padded entry size.
fn decode_xattr_entry(bytes: &[u8], nid: u64) -> Result<(Vec<u8>, Vec<u8>, usize), FormatError> {
    let h = XattrEntryHeader::decode(bytes)?;
    let entry = bytes.get(..h.entry_size()).ok_or(FormatError::Truncated {
        what: "XattrEntry",
        need: h.entry_size(),
        have: bytes.len(),
    })?;
    let prefix = xattr_prefix(h.name_index).ok_or_else(|| {
        FormatError::field(
            "XattrEntryHeader",
            "e_name_index",
            1,
            h.name_index,
            format!("nid {nid}: unknown xattr name prefix index"),
        )
    })?;
    let name_end = XattrEntryHeader::SIZE + usize::from(h.name_len);
    let value_end = name_end + usize::from(h.value_size);
    let (Some(suffix), Some(value)) = (
        entry.get(XattrEntryHeader::SIZE..name_end),
        entry.get(name_end..value_end),
    ) else {
        return Err(FormatError::Truncated {
            what: "XattrEntry",
            need: value_end,
            have: entry.len(),
        });
    };
    Ok(([prefix, suffix].concat(), value.to_vec(), entry.len()))
}

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

/// An inode found by nid: where it is, what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InodeRef {
    /// The nid (32-byte slot number from the start of the inode area).
    pub nid: u64,
    /// Byte offset of the inode in the bootstrap.
    pub offset: u64,
    /// The decoded inode.
    pub inode: Inode,
    /// The decoded `i_format`.
    pub format: InodeFormat,
    /// The file type from `i_mode`.
    pub file_type: FileType,
}

impl InodeRef {
    /// `i_size`.
    pub fn size(&self) -> u64 {
        self.inode.size()
    }

    /// Byte offset just past the inode and its inline xattrs (where inline data starts).
    /// [`Bootstrap::inode`] has checked that this lies inside the bootstrap.
    fn ibody_end(&self) -> u64 {
        self.offset + (self.inode.disk_size() + self.inode.xattr_size()) as u64
    }

    fn expect_type(&self, want: FileType, what: &'static str) -> Result<(), FormatError> {
        if self.file_type == want {
            return Ok(());
        }
        Err(FormatError::Invalid {
            what,
            reason: format!("nid {} is a {:?}, not a {want:?}", self.nid, self.file_type),
        })
    }
}

/// One inline xattr: the full name (prefix included) and the value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// One entry of a directory, `.` and `..` included, in on-disk order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name (no `/`, no NUL, 1..=255 bytes).
    pub name: Vec<u8>,
    /// nid of the target inode.
    pub nid: u64,
    /// `e_file_type`.
    pub file_type: FileType,
}

/// One path visited by [`Bootstrap::walk`].
#[derive(Debug)]
pub struct WalkEntry<'w> {
    /// Absolute path: `/` for the root, `/a/b` below it.
    pub path: &'w [u8],
    /// Number of components in `path` (0 for the root).
    pub depth: usize,
    /// The inode the path names.
    pub inode: &'w InodeRef,
}

/// A parsed RAFS v6 bootstrap borrowing its bytes.
#[derive(Clone)]
pub struct Bootstrap<'a> {
    bytes: &'a [u8],
    sb: SuperBlock,
    ext: SuperBlockExt,
    block_size: u64,
    devices: Vec<DeviceSlot>,
    blobs: Vec<BlobEntry>,
    prefetch_table: &'a [u8],
    chunk_table: &'a [u8],
    root: InodeRef,
}

impl fmt::Debug for Bootstrap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bootstrap")
            .field("len", &self.bytes.len())
            .field("sb", &self.sb)
            .field("ext", &self.ext)
            .field("devices", &self.devices.len())
            .field("blobs", &self.blobs.len())
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl<'a> Bootstrap<'a> {
    /// Decodes and validates the superblock, the extended superblock, the device slots, the blob
    /// table (each entry against its position, the chunk size and the flags), the prefetch
    /// table, the chunk info table bounds and the root inode (which must be a directory).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let min = EROFS_BLOCK_SIZE_4096 as usize;
        if bytes.len() < min {
            return Err(FormatError::Truncated {
                what: "bootstrap",
                need: min,
                have: bytes.len(),
            });
        }
        let meta_size = bytes.len() as u64;
        let sb = SuperBlock::decode(slice_at(
            bytes,
            EROFS_SUPER_OFFSET,
            SuperBlock::SIZE as u64,
            "SuperBlock",
        )?)?;
        sb.validate(meta_size)?;
        let block_size = sb.block_size()?;
        let ext = SuperBlockExt::decode(slice_at(
            bytes,
            RAFS_V6_EXT_SUPER_OFFSET,
            SuperBlockExt::SIZE as u64,
            "SuperBlockExt",
        )?)?;
        ext.validate(&sb, meta_size)?;

        let device_count = u64::from(sb.extra_devices);
        let devtable = slice_at(
            bytes,
            EROFS_DEVTABLE_OFFSET,
            device_count * EROFS_DEVT_SLOT_SIZE,
            "device table",
        )?;
        let devices = devtable
            .chunks_exact(DeviceSlot::SIZE)
            .map(DeviceSlot::decode)
            .collect::<Result<Vec<_>, _>>()?;

        let blob_table = slice_at(
            bytes,
            ext.blob_table_offset,
            ext.blob_count() * RAFS_V6_BLOB_ENTRY_SIZE,
            "blob table",
        )?;
        let mut blobs = Vec::with_capacity(blob_table.len() / BlobEntry::SIZE);
        for (position, raw) in (0u32..).zip(blob_table.chunks_exact(BlobEntry::SIZE)) {
            let entry = BlobEntry::decode(raw)?;
            entry.validate(position, ext.chunk_size, ext.flags)?;
            blobs.push(entry);
        }

        let prefetch_table = if ext.prefetch_table_size == 0 {
            &[][..]
        } else {
            slice_at(
                bytes,
                ext.prefetch_table_offset,
                ext.prefetch_table_size.into(),
                "prefetch table",
            )?
        };
        // `SuperBlockExt::validate` has checked that the size is a multiple of 4.
        let chunk_table = if ext.chunk_table_size == 0 {
            &[][..]
        } else {
            slice_at(
                bytes,
                ext.chunk_table_offset,
                ext.chunk_table_size,
                "chunk info table",
            )?
        };

        let root = decode_inode(bytes, &sb, sb.root_nid.into())?;
        if root.file_type != FileType::Directory {
            return Err(FormatError::field(
                "SuperBlock",
                "s_root_nid",
                14,
                sb.root_nid,
                format!("root inode is a {:?}, not a directory", root.file_type),
            ));
        }
        Ok(Self {
            bytes,
            sb,
            ext,
            block_size,
            devices,
            blobs,
            prefetch_table,
            chunk_table,
            root,
        })
    }

    /// The whole bootstrap.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The EROFS superblock.
    pub fn superblock(&self) -> &SuperBlock {
        &self.sb
    }

    /// The RAFS extended superblock.
    pub fn ext_superblock(&self) -> &SuperBlockExt {
        &self.ext
    }

    /// The block size (4096, or 512 for tarfs).
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The EROFS device slots (`s_extra_devices` of them).
    pub fn devices(&self) -> &[DeviceSlot] {
        &self.devices
    }

    /// The blob table entries, each validated.
    pub fn blobs(&self) -> &[BlobEntry] {
        &self.blobs
    }

    /// The nids of the prefetch table.
    pub fn prefetch_nids(&self) -> impl Iterator<Item = u32> + 'a {
        self.prefetch_table.chunks_exact(4).map(|c| u32_at(c, 0))
    }

    /// nid of the root directory.
    pub fn root_nid(&self) -> u64 {
        self.root.nid
    }

    /// The root directory inode.
    pub fn root(&self) -> InodeRef {
        self.root
    }

    /// The inode `nid`: decoded, its format and file type known, and its inode plus inline
    /// xattrs inside the bootstrap.
    pub fn inode(&self, nid: u64) -> Result<InodeRef, FormatError> {
        decode_inode(self.bytes, &self.sb, nid)
    }

    /// The xattrs of `ino` as full names (prefix mapped from the name index) and values: the
    /// shared ones first (EROFS's shared xattr area at `s_xattr_blkaddr`, which Nydus never
    /// writes but the kernel and `mkfs.erofs` use), then the inline ones, each in on-disk order.
    pub fn xattrs(&self, ino: &InodeRef) -> Result<Vec<Xattr>, FormatError> {
        let size = ino.inode.xattr_size();
        if size == 0 {
            return Ok(Vec::new());
        }
        let area = slice_at(
            self.bytes,
            ino.offset + ino.inode.disk_size() as u64,
            size as u64,
            "inline xattrs",
        )?;
        let header = XattrIbodyHeader::decode(area)?;
        let shared = usize::from(header.shared_count);
        let ids_end = XattrIbodyHeader::SIZE + shared * 4;
        let ids = area.get(XattrIbodyHeader::SIZE..ids_end).ok_or_else(|| {
            FormatError::field(
                "XattrIbodyHeader",
                "h_shared_count",
                4,
                header.shared_count,
                format!(
                    "nid {}: {shared} shared xattr ids do not fit the {size}-byte xattr area",
                    ino.nid
                ),
            )
        })?;
        let mut out = Vec::new();
        if shared > 0 && self.sb.xattr_blkaddr == 0 {
            return Err(FormatError::field(
                "XattrIbodyHeader",
                "h_shared_count",
                4,
                header.shared_count,
                format!(
                    "nid {}: shared xattr ids but the superblock has no shared xattr area",
                    ino.nid
                ),
            ));
        }
        // Like the inline area (at most 256 KiB), an inode's xattrs decode to at most 256 KiB,
        // however many shared ids point at large shared entries.
        let mut decoded = 0usize;
        let mut account = |name: &[u8], value: &[u8]| {
            decoded += name.len() + value.len();
            if decoded > MAX_XATTR_BYTES {
                return Err(FormatError::Invalid {
                    what: "xattrs",
                    reason: format!(
                        "nid {}: xattrs come to more than {MAX_XATTR_BYTES} bytes",
                        ino.nid
                    ),
                });
            }
            Ok(())
        };
        for id in ids.chunks_exact(4) {
            let id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
            let at = u64::from(self.sb.xattr_blkaddr) * self.block_size + u64::from(id) * 4;
            let rest = usize::try_from(at)
                .ok()
                .and_then(|at| self.bytes.get(at..))
                .ok_or_else(|| {
                    FormatError::field(
                        "XattrShared",
                        "xattr id",
                        0,
                        id,
                        format!(
                            "nid {}: shared xattr at {at} is past the {}-byte bootstrap",
                            ino.nid,
                            self.bytes.len()
                        ),
                    )
                })?;
            let (name, value, _) = decode_xattr_entry(rest, ino.nid)?;
            account(&name, &value)?;
            out.push((name, value));
        }
        let mut pos = ids_end;
        while pos < size {
            let rest = area.get(pos..).unwrap_or_default();
            let (name, value, len) = decode_xattr_entry(rest, ino.nid)?;
            account(&name, &value)?;
            out.push((name, value));
            pos += len;
        }
        Ok(out)
    }

    /// The data of a FLAT_PLAIN or FLAT_INLINE inode as slices of the bootstrap, one per block
    /// (the last one only as long as the data). FLAT_PLAIN: every block from block `i_u`.
    /// FLAT_INLINE (as the kernel maps it): all blocks but the last from block `i_u`, the last
    /// (1..=block size bytes) right after the inode and its xattrs, inside that block.
    fn flat_data(&self, ino: &InodeRef, what: &'static str) -> Result<Vec<&'a [u8]>, FormatError> {
        let size = ino.size();
        let bs = self.block_size;
        let len = self.bytes.len() as u64;
        if size > len {
            return Err(FormatError::field(
                "Inode",
                "i_size",
                8,
                size,
                format!(
                    "nid {}: {what} cannot be larger than the {len}-byte bootstrap",
                    ino.nid
                ),
            ));
        }
        let blocks = size.div_ceil(bs);
        let (plain, tail) = match ino.format.data_layout {
            DataLayout::FlatPlain => (blocks, 0),
            DataLayout::FlatInline if size == 0 => (0, 0),
            DataLayout::FlatInline => (blocks - 1, size - (blocks - 1) * bs),
            DataLayout::ChunkBased => {
                return Err(FormatError::field(
                    "Inode",
                    "i_format",
                    0,
                    ino.format.to_raw(),
                    format!("nid {}: {what} must be FLAT_PLAIN or FLAT_INLINE", ino.nid),
                ))
            }
        };
        // `blocks <= len / bs + 1`: bounded by the input.
        let mut parts = Vec::with_capacity(blocks as usize);
        for i in 0..plain {
            let start = u64::from(ino.inode.u())
                .checked_add(i)
                .and_then(|b| b.checked_mul(bs))
                .ok_or_else(|| {
                    FormatError::field(
                        "Inode",
                        "i_u",
                        16,
                        ino.inode.u(),
                        format!("nid {}: block address overflows", ino.nid),
                    )
                })?;
            parts.push(slice_at(self.bytes, start, bs.min(size - i * bs), what)?);
        }
        if tail > 0 {
            let start = ino.ibody_end();
            if start % bs + tail > bs {
                return Err(FormatError::Invalid {
                    what,
                    reason: format!(
                        "nid {}: inline tail of {tail} bytes at offset {start} crosses a block boundary",
                        ino.nid
                    ),
                });
            }
            parts.push(slice_at(self.bytes, start, tail, what)?);
        }
        Ok(parts)
    }

    /// Every entry of directory `dir` (`.` and `..` included), block by block in on-disk order.
    pub fn read_dir(&self, dir: &InodeRef) -> Result<Vec<DirEntry>, FormatError> {
        dir.expect_type(FileType::Directory, "directory")?;
        let mut out = Vec::new();
        for (index, block) in self
            .flat_data(dir, "directory data")?
            .into_iter()
            .enumerate()
        {
            parse_dirent_block(block, dir.nid, index, &mut out)?;
        }
        Ok(out)
    }

    /// The inode at `path`, resolved from the root one `/`-separated component at a time
    /// (empty components are skipped, `.` and `..` follow the directory entries). `None` if a
    /// component does not exist or a non-final component is not a directory.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<InodeRef>, FormatError> {
        let mut cur = self.root;
        for name in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if cur.file_type != FileType::Directory {
                return Ok(None);
            }
            let Some(entry) = self.read_dir(&cur)?.into_iter().find(|e| e.name == name) else {
                return Ok(None);
            };
            cur = self.inode(entry.nid)?;
        }
        Ok(Some(cur))
    }

    /// The target of symlink `ino` (1..=[`MAX_SYMLINK_LEN`] bytes).
    pub fn read_link(&self, ino: &InodeRef) -> Result<Vec<u8>, FormatError> {
        ino.expect_type(FileType::Symlink, "symlink")?;
        let size = ino.size();
        if size == 0 || size > MAX_SYMLINK_LEN {
            return Err(FormatError::field(
                "Inode",
                "i_size",
                8,
                size,
                format!(
                    "nid {}: symlink target must be 1..={MAX_SYMLINK_LEN} bytes",
                    ino.nid
                ),
            ));
        }
        Ok(self.flat_data(ino, "symlink target")?.concat())
    }

    /// The chunk addresses of chunk-based regular file `ino`: `ceil(i_size / chunk size)` of
    /// them (the extended superblock's chunk size), each naming a blob in the table.
    pub fn chunks(&self, ino: &InodeRef) -> Result<Vec<ChunkAddr>, FormatError> {
        ino.expect_type(FileType::Regular, "regular file")?;
        if ino.format.data_layout != DataLayout::ChunkBased {
            return Err(FormatError::field(
                "Inode",
                "i_format",
                0,
                ino.format.to_raw(),
                format!("nid {}: regular file is not CHUNK_BASED", ino.nid),
            ));
        }
        // The header must be well formed, but like nydusd the count comes from the RAFS chunk
        // size: Nydus writes a larger header chunk size for files whose chunks are contiguous
        // (so the kernel maps them in one go) and still stores one address per RAFS chunk.
        ino.inode
            .chunk_index_header()
            .chunk_size(self.sb.blkszbits)?;
        let chunk_size = u64::from(self.ext.chunk_size);
        let count = ino.size().div_ceil(chunk_size);
        let too_many = || {
            FormatError::field(
                "Inode",
                "i_size",
                8,
                ino.size(),
                format!(
                    "nid {}: {count} chunks of {chunk_size} bytes need chunk indexes past the end of the {}-byte bootstrap",
                    ino.nid,
                    self.bytes.len()
                ),
            )
        };
        let start = ino
            .inode
            .chunk_addrs_offset(ino.offset)
            .ok_or_else(too_many)?;
        let need = count
            .checked_mul(ChunkAddr::SIZE as u64)
            .ok_or_else(too_many)?;
        let table = slice_at(self.bytes, start, need, "chunk indexes").map_err(|_| too_many())?;
        let mut out = Vec::with_capacity(table.len() / ChunkAddr::SIZE);
        for (k, raw) in table.chunks_exact(ChunkAddr::SIZE).enumerate() {
            let addr = ChunkAddr::decode(raw)?;
            if addr
                .blob_index()
                .and_then(|i| self.blobs.get(i as usize))
                .is_none()
            {
                return Err(FormatError::field(
                    "ChunkAddr",
                    "c_blob_addr_hi",
                    2,
                    addr.device_id(),
                    format!(
                        "nid {} chunk {k}: device id names no blob (the table has {})",
                        ino.nid,
                        self.blobs.len()
                    ),
                ));
            }
            out.push(addr);
        }
        Ok(out)
    }

    /// The raw chunk info table (80-byte [`ChunkInfo`] entries; empty if the image has none).
    pub fn chunk_info_table(&self) -> Result<&'a [u8], FormatError> {
        Ok(self.chunk_table)
    }

    /// Number of chunk info table entries.
    pub fn chunk_info_count(&self) -> u64 {
        (self.chunk_table.len() / ChunkInfo::SIZE) as u64
    }

    /// Entry `index` of the chunk info table.
    pub fn chunk_info(&self, index: u64) -> Result<ChunkInfo, FormatError> {
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(ChunkInfo::SIZE))
            .and_then(|s| self.chunk_table.get(s..s.checked_add(ChunkInfo::SIZE)?))
            .ok_or_else(|| FormatError::Invalid {
                what: "chunk info table",
                reason: format!(
                    "index {index} is beyond its {} entries",
                    self.chunk_info_count()
                ),
            })?;
        ChunkInfo::decode(entry)
    }

    /// [`Self::walk_with_depth`] with [`DEFAULT_MAX_DEPTH`].
    pub fn walk<E: From<FormatError>>(
        &self,
        visit: impl FnMut(&WalkEntry<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.walk_with_depth(DEFAULT_MAX_DEPTH, visit)
    }

    /// Visits every path depth-first in directory order, parents before children, starting
    /// with the root (`/`, depth 0); `.` and `..` are skipped. Each directory is expanded at
    /// most once: reaching a directory nid a second time (a cycle, or a hard-linked directory)
    /// is an error, as is a directory with entries at depth `max_depth`, and a directory entry
    /// whose file type disagrees with its inode. Stops at the first error `visit` returns.
    pub fn walk_with_depth<E: From<FormatError>>(
        &self,
        max_depth: usize,
        mut visit: impl FnMut(&WalkEntry<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut expanded = HashSet::new();
        // Every dirent takes 12 bytes of its own in a well-formed bootstrap; directories sharing
        // blocks could otherwise make a small bootstrap list entries without end.
        let mut dirents_left = self.bytes.len() / Dirent::SIZE;
        // Children hold their parent's path (shared) and their name: the full path is made
        // when a child is visited, so memory follows the entries, not their depth.
        let mut stack = vec![(Rc::new(Vec::new()), Vec::new(), 0usize, self.root)];
        while let Some((parent, name, depth, ino)) = stack.pop() {
            let path = child_path(&parent, &name);
            let is_dir = ino.file_type == FileType::Directory;
            if is_dir && !expanded.insert(ino.nid) {
                return Err(FormatError::Invalid {
                    what: "directory tree",
                    reason: format!(
                        "directory nid {} is reached again at {} (a cycle or a hard-linked directory)",
                        ino.nid,
                        String::from_utf8_lossy(&path)
                    ),
                }
                .into());
            }
            visit(&WalkEntry {
                path: &path,
                depth,
                inode: &ino,
            })?;
            if !is_dir {
                continue;
            }
            let entries = self.read_dir(&ino)?;
            dirents_left = dirents_left.checked_sub(entries.len()).ok_or_else(|| {
                FormatError::Invalid {
                    what: "directory tree",
                    reason: format!(
                        "directories list more entries than a {}-byte bootstrap holds (they share blocks), seen at {}",
                        self.bytes.len(),
                        String::from_utf8_lossy(&path)
                    ),
                }
            })?;
            let path = Rc::new(path);
            let mut children = Vec::new();
            for entry in entries {
                if entry.name == b"." || entry.name == b".." {
                    continue;
                }
                if depth >= max_depth {
                    return Err(FormatError::Invalid {
                        what: "directory tree",
                        reason: format!(
                            "{} is deeper than {max_depth} levels",
                            String::from_utf8_lossy(&path)
                        ),
                    }
                    .into());
                }
                let child = self.inode(entry.nid)?;
                if child.file_type != entry.file_type {
                    return Err(FormatError::Invalid {
                        what: "Dirent",
                        reason: format!(
                            "entry {:?} of directory nid {} says {:?}, inode nid {} is a {:?}",
                            String::from_utf8_lossy(&entry.name),
                            ino.nid,
                            entry.file_type,
                            child.nid,
                            child.file_type
                        ),
                    }
                    .into());
                }
                children.push((path.clone(), entry.name, depth + 1, child));
            }
            stack.extend(children.into_iter().rev());
        }
        Ok(())
    }
}

/// The inode `nid` of the bootstrap `bytes` whose superblock is `sb`; see [`Bootstrap::inode`].
fn decode_inode(bytes: &[u8], sb: &SuperBlock, nid: u64) -> Result<InodeRef, FormatError> {
    let len = bytes.len();
    let offset = sb
        .nid_to_offset(nid)
        .filter(|&o| o < len as u64)
        .ok_or_else(|| FormatError::Invalid {
            what: "inode",
            reason: format!("nid {nid} points outside the {len}-byte bootstrap"),
        })?;
    // `offset < len`, so it fits usize and the range is in bounds.
    let inode = Inode::decode(bytes.get(offset as usize..).unwrap_or_default())?;
    let format = inode.format()?;
    let file_type = FileType::from_mode(inode.mode().into()).ok_or_else(|| {
        FormatError::field(
            "Inode",
            "i_mode",
            4,
            inode.mode(),
            format!("nid {nid}: no known file type"),
        )
    })?;
    slice_at(
        bytes,
        offset,
        (inode.disk_size() + inode.xattr_size()) as u64,
        "inode inline xattrs",
    )?;
    Ok(InodeRef {
        nid,
        offset,
        inode,
        format,
        file_type,
    })
}

/// Appends the entries of one directory block (`block` holds only its used bytes) to `out`.
fn parse_dirent_block(
    block: &[u8],
    dir_nid: u64,
    index: usize,
    out: &mut Vec<DirEntry>,
) -> Result<(), FormatError> {
    let bad = |nameoff: u16, reason: String| {
        FormatError::field(
            "Dirent",
            "e_nameoff",
            8,
            nameoff,
            format!("directory nid {dir_nid} block {index}: {reason}"),
        )
    };
    let first = Dirent::decode(block)?;
    let names_start = usize::from(first.nameoff);
    if names_start == 0 || names_start % Dirent::SIZE != 0 || names_start >= block.len() {
        return Err(bad(
            first.nameoff,
            format!(
                "first name offset must be a non-zero multiple of 12 inside the {}-byte block",
                block.len()
            ),
        ));
    }
    // `names_start < block.len()`, so the dirent array is inside the block.
    let dirents = block
        .get(..names_start)
        .unwrap_or_default()
        .chunks_exact(Dirent::SIZE)
        .map(Dirent::decode)
        .collect::<Result<Vec<_>, _>>()?;
    for (j, d) in dirents.iter().enumerate() {
        let start = usize::from(d.nameoff);
        if start < names_start || start >= block.len() {
            return Err(bad(
                d.nameoff,
                format!(
                    "entry {j}: name offset outside the names area {names_start}..{}",
                    block.len()
                ),
            ));
        }
        let end = match dirents.get(j + 1) {
            Some(next) => usize::from(next.nameoff),
            None => {
                let tail = block.get(start..).unwrap_or_default();
                start + tail.iter().position(|&b| b == 0).unwrap_or(tail.len())
            }
        };
        let name = block
            .get(start..end)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                bad(
                    d.nameoff,
                    format!("entry {j}: name {start}..{end} is empty or outside the block"),
                )
            })?;
        if name.len() > EROFS_NAME_LEN || name.iter().any(|&b| b == b'/' || b == 0) {
            return Err(FormatError::Invalid {
                what: "Dirent",
                reason: format!(
                    "directory nid {dir_nid} block {index} entry {j}: name {:?} is longer than 255 bytes or holds '/' or NUL",
                    String::from_utf8_lossy(name)
                ),
            });
        }
        out.push(DirEntry {
            name: name.to_vec(),
            nid: d.nid,
            file_type: d.file_type()?,
        });
    }
    Ok(())
}

impl Bootstrap<'_> {
    /// The whole filesystem as a [`Tree`]: metadata, xattrs, hardlinks (one node per nid),
    /// and for each regular file its chunks resolved through the chunk info table (file offsets
    /// filled in). Compact inodes get the superblock's build time as their mtime, as the kernel
    /// shows them.
    pub fn to_tree(&self) -> Result<Tree, FormatError> {
        let mut chunk_map: HashMap<(u32, u32), ChunkInfo> = HashMap::new();
        for raw in self.chunk_table.chunks_exact(ChunkInfo::SIZE) {
            let c = ChunkInfo::decode(raw)?;
            chunk_map.insert((c.blob_index, c.index), c);
        }
        let chunk_size = u64::from(self.ext.chunk_size);
        let mut tree = Tree::default();
        let mut node_of: HashMap<u64, NodeId> = HashMap::new();
        // Shared xattrs let a small bootstrap give many inodes the same large values; what all
        // inodes together may decode is bounded by the bootstrap's size.
        let mut xattr_budget = (self.bytes.len() as u64).saturating_mul(16) + (16 << 20);
        self.walk(|e: &WalkEntry<'_>| -> Result<(), FormatError> {
            let ino = e.inode;
            if let Some(&id) = node_of.get(&ino.nid) {
                tree.link_id(e.path, id)
                    .map_err(|err| FormatError::Invalid {
                        what: "directory tree",
                        reason: err.to_string(),
                    })?;
                return Ok(());
            }
            let xattrs = self.xattrs(ino)?;
            let xattr_bytes: u64 = xattrs
                .iter()
                .map(|(n, v)| (n.len() + v.len()) as u64)
                .sum();
            xattr_budget = xattr_budget.checked_sub(xattr_bytes).ok_or_else(|| {
                FormatError::Invalid {
                    what: "xattrs",
                    reason: format!(
                        "the inodes' xattrs come to more than 16 times the {}-byte bootstrap (seen at {})",
                        self.bytes.len(),
                        String::from_utf8_lossy(e.path)
                    ),
                }
            })?;
            let (mtime, mtime_nsec) = ino
                .inode
                .mtime()
                .unwrap_or((self.sb.build_time, self.sb.build_time_nsec));
            let meta = Meta {
                perm: u32::from(ino.inode.mode()) & 0o7777,
                uid: ino.inode.uid(),
                gid: ino.inode.gid(),
                mtime,
                mtime_nsec,
                xattrs: xattrs.into_iter().collect(),
            };
            let kind = match ino.file_type {
                FileType::Directory => Kind::Dir(Default::default()),
                FileType::Symlink => Kind::Symlink(self.read_link(ino)?),
                FileType::CharDevice => Kind::CharDev(ino.inode.u()),
                FileType::BlockDevice => Kind::BlockDev(ino.inode.u()),
                FileType::Fifo => Kind::Fifo,
                FileType::Socket => Kind::Socket,
                FileType::Regular => {
                    let mut chunks = Vec::new();
                    for (k, addr) in self.chunks(ino)?.into_iter().enumerate() {
                        let blob = addr.blob_index().unwrap_or(u32::MAX);
                        let mut c =
                            *chunk_map.get(&(blob, addr.chunk_index())).ok_or_else(|| {
                                FormatError::Invalid {
                                    what: "chunk info table",
                                    reason: format!(
                                        "{} chunk {k}: no entry for blob {blob} chunk {}",
                                        String::from_utf8_lossy(e.path),
                                        addr.chunk_index()
                                    ),
                                }
                            })?;
                        c.file_offset = k as u64 * chunk_size;
                        // Every chunk but the last is a whole chunk, the last one the rest: so a
                        // file's chunks add up to exactly its size.
                        let want = chunk_size.min(ino.size().saturating_sub(c.file_offset));
                        if u64::from(c.uncompressed_size) != want {
                            return Err(FormatError::Invalid {
                                what: "chunk info table",
                                reason: format!(
                                    "{} chunk {k} (blob {blob} chunk {}) holds {} bytes; a {}-byte file with {chunk_size}-byte chunks needs {want} there",
                                    String::from_utf8_lossy(e.path),
                                    addr.chunk_index(),
                                    c.uncompressed_size,
                                    ino.size()
                                ),
                            });
                        }
                        chunks.push(c);
                    }
                    Kind::File {
                        size: ino.size(),
                        chunks,
                    }
                }
            };
            let id = tree
                .insert(e.path, Node { meta, kind })
                .map_err(|err| FormatError::Invalid {
                    what: "directory tree",
                    reason: err.to_string(),
                })?;
            node_of.insert(ino.nid, id);
            Ok(())
        })?;
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v6::inode::{
        xattr_entry_size, xattr_icount, ChunkIndexHeader, InodeCompact, InodeExtended, InodeLayout,
        EROFS_XATTR_INDEX_SECURITY, EROFS_XATTR_INDEX_USER,
    };
    use crate::{BlobChunkFlags, BlobFeatures, Compressor, Digester, RafsSuperFlags};
    use proptest::prelude::*;

    const BS: usize = 4096;
    const MIB: u32 = 1 << 20;
    const BLOB_ID: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    // Inode area starts at block 1 (meta_blkaddr = 1); every inode lives in block 2.
    const ROOT_OFF: usize = 2 * BS; // nid 128, FLAT_INLINE dir
    const A_OFF: usize = ROOT_OFF + 128; // nid 132, extended CHUNK_BASED file with 2 xattrs
    const LINK_OFF: usize = A_OFF + 160; // nid 137, FLAT_INLINE symlink
    const SUB_OFF: usize = LINK_OFF + 64; // nid 139, FLAT_PLAIN dir over blocks 3 and 4
    const E_OFF: usize = SUB_OFF + 32; // nid 140, empty regular file (hard-linked 560 times)
    const DEEP_OFF: usize = E_OFF + 32; // nid 141, FLAT_INLINE dir: block 5 plus inline tail
    const SUB_BLK: u32 = 3;
    const DEEP_BLK: u32 = 5;
    const CHUNK_TABLE_BLK: usize = 6;
    const IMAGE_BLOCKS: usize = 7;

    const A_SIZE: u64 = 3 * MIB as u64 / 2;
    const LINK_TARGET: &[u8] = b"sub/deep";

    fn nid(off: usize) -> u64 {
        ((off - BS) / 32) as u64
    }

    fn put(img: &mut [u8], off: usize, bytes: &[u8]) {
        assert!(
            img[off..off + bytes.len()].iter().all(|&b| b == 0),
            "overlap at {off}"
        );
        img[off..off + bytes.len()].copy_from_slice(bytes);
    }

    type Entry = (Vec<u8>, u64, FileType);

    fn entry(name: &str, nid: u64, ft: FileType) -> Entry {
        (name.as_bytes().to_vec(), nid, ft)
    }

    /// Packs sorted entries into dirent blocks of at most one block each, the way mkfs does.
    fn dirent_blocks(entries: &[Entry]) -> Vec<Vec<u8>> {
        let mut blocks = Vec::new();
        let mut start = 0;
        let mut used = 0;
        for (i, (name, _, _)) in entries.iter().enumerate() {
            let need = Dirent::SIZE + name.len();
            if used + need > BS {
                blocks.push(dirent_block(&entries[start..i]));
                start = i;
                used = 0;
            }
            used += need;
        }
        blocks.push(dirent_block(&entries[start..]));
        blocks
    }

    fn dirent_block(entries: &[Entry]) -> Vec<u8> {
        let mut nameoff = entries.len() * Dirent::SIZE;
        let mut out = Vec::new();
        for (name, nid, ft) in entries {
            let d = Dirent {
                nid: *nid,
                nameoff: nameoff as u16,
                file_type: *ft as u8,
            };
            out.extend_from_slice(&d.to_bytes());
            nameoff += name.len();
        }
        for (name, _, _) in entries {
            out.extend_from_slice(name);
        }
        out
    }

    fn compact(layout: DataLayout, mode: u16, size: u32, u: u32, nlink: u16) -> InodeCompact {
        InodeCompact {
            format: InodeFormat::new(InodeLayout::Compact, layout).to_raw(),
            mode,
            nlink,
            size,
            u,
            ..InodeCompact::default()
        }
    }

    fn xattr_entry(index: u8, suffix: &[u8], value: &[u8]) -> Vec<u8> {
        let h = XattrEntryHeader {
            name_len: suffix.len() as u8,
            name_index: index,
            value_size: value.len() as u16,
        };
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(suffix);
        out.extend_from_slice(value);
        out.resize(xattr_entry_size(suffix.len(), value.len()), 0);
        out
    }

    fn cap_value() -> Vec<u8> {
        let mut v = vec![0u8; 20];
        v[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        v[4] = 0x20;
        v
    }

    fn sub_entries() -> Vec<Entry> {
        let mut v = vec![
            entry(".", nid(SUB_OFF), FileType::Directory),
            entry("..", nid(ROOT_OFF), FileType::Directory),
            entry("deep", nid(DEEP_OFF), FileType::Directory),
        ];
        v.extend((0..300).map(|i| entry(&format!("f{i:03}"), nid(E_OFF), FileType::Regular)));
        v
    }

    fn deep_entries() -> Vec<Entry> {
        let mut v = vec![
            entry(".", nid(DEEP_OFF), FileType::Directory),
            entry("..", nid(SUB_OFF), FileType::Directory),
        ];
        v.extend((0..260).map(|i| entry(&format!("g{i:03}"), nid(E_OFF), FileType::Regular)));
        v
    }

    fn chunk_infos() -> [ChunkInfo; 2] {
        let c = ChunkInfo {
            block_id: [0x11; 32],
            blob_index: 0,
            flags: BlobChunkFlags::COMPRESSED,
            compressed_size: 1000,
            uncompressed_size: MIB,
            ..ChunkInfo::default()
        };
        [
            c,
            ChunkInfo {
                block_id: [0x22; 32],
                compressed_size: 500,
                uncompressed_size: MIB / 2,
                compressed_offset: 1000,
                uncompressed_offset: MIB.into(),
                file_offset: MIB.into(),
                index: 1,
                ..c
            },
        ]
    }

    /// The 7-block test image: `/`, `/a`, `/link -> sub/deep`, `/sub` (FLAT_PLAIN, 2 blocks:
    /// `deep` and `f000..f299`), `/sub/deep` (FLAT_INLINE, 1 block + tail: `g000..g259`).
    fn image() -> Vec<u8> {
        let mut img = vec![0u8; IMAGE_BLOCKS * BS];
        let sb = SuperBlock {
            root_nid: nid(ROOT_OFF) as u16,
            inos: 6,
            blocks: 512,
            meta_blkaddr: 1,
            extra_devices: 1,
            ..SuperBlock::new(12)
        };
        put(&mut img, 1024, &sb.to_bytes());
        let ext = SuperBlockExt {
            flags: RafsSuperFlags::COMPRESSION_ZSTD | RafsSuperFlags::HASH_BLAKE3,
            blob_table_offset: BS as u64,
            blob_table_size: 256,
            chunk_size: MIB,
            chunk_table_offset: (CHUNK_TABLE_BLK * BS) as u64,
            chunk_table_size: 160,
            prefetch_table_offset: BS as u64 + 256,
            prefetch_table_size: 8,
        };
        put(&mut img, 1152, &ext.to_bytes());
        let mut dev = DeviceSlot {
            blocks: 512,
            ..DeviceSlot::default()
        };
        dev.set_blob_id(BLOB_ID).unwrap();
        put(&mut img, 1408, &dev.to_bytes());
        let mut blob = BlobEntry {
            chunk_size: MIB,
            chunk_count: 2,
            compression_algo: Compressor::Zstd.into(),
            digest_algo: Digester::Blake3.into(),
            features: BlobFeatures::ALIGNED,
            compressed_size: 1500,
            uncompressed_size: 2 * u64::from(MIB),
            ci_compressor: Compressor::Zstd.into(),
            ci_uncompressed_size: 2 * 16,
            ..BlobEntry::default()
        };
        blob.set_blob_id(BLOB_ID).unwrap();
        put(&mut img, BS, &blob.to_bytes());
        let prefetch = [nid(A_OFF) as u32, nid(SUB_OFF) as u32];
        put(&mut img, BS + 256, &prefetch[0].to_le_bytes());
        put(&mut img, BS + 260, &prefetch[1].to_le_bytes());

        // Root: FLAT_INLINE, its single dirent block right after the inode.
        let root_entries = [
            entry(".", nid(ROOT_OFF), FileType::Directory),
            entry("..", nid(ROOT_OFF), FileType::Directory),
            entry("a", nid(A_OFF), FileType::Regular),
            entry("link", nid(LINK_OFF), FileType::Symlink),
            entry("sub", nid(SUB_OFF), FileType::Directory),
        ];
        let root_block = dirent_block(&root_entries);
        let root = compact(
            DataLayout::FlatInline,
            0o040755,
            root_block.len() as u32,
            0,
            3,
        );
        put(&mut img, ROOT_OFF, &root.to_bytes());
        put(&mut img, ROOT_OFF + 32, &root_block);
        assert!(ROOT_OFF + 32 + root_block.len() <= A_OFF);

        // a: extended, chunk-based, two inline xattrs, two chunk addresses.
        let mut xattrs = XattrIbodyHeader::default().to_bytes().to_vec();
        xattrs.extend(xattr_entry(EROFS_XATTR_INDEX_USER, b"x", b"hello"));
        xattrs.extend(xattr_entry(
            EROFS_XATTR_INDEX_SECURITY,
            b"capability",
            &cap_value(),
        ));
        let a = InodeExtended {
            format: InodeFormat::new(InodeLayout::Extended, DataLayout::ChunkBased).to_raw(),
            xattr_icount: xattr_icount(xattrs.len()).unwrap(),
            mode: 0o100644,
            size: A_SIZE,
            u: ChunkIndexHeader::new(MIB.into(), 12).unwrap().to_i_u(),
            ino: 2,
            uid: 1000,
            gid: 1000,
            mtime: 1_700_000_000,
            mtime_nsec: 0,
            nlink: 1,
        };
        put(&mut img, A_OFF, &a.to_bytes());
        put(&mut img, A_OFF + 64, &xattrs);
        let addrs_off = (A_OFF + 64 + xattrs.len()).next_multiple_of(8);
        put(
            &mut img,
            addrs_off,
            &ChunkAddr::new(0, 0, 0).unwrap().to_bytes(),
        );
        put(
            &mut img,
            addrs_off + 8,
            &ChunkAddr::new(0, 1, 256).unwrap().to_bytes(),
        );
        assert!(addrs_off + 16 <= LINK_OFF);

        let link = compact(
            DataLayout::FlatInline,
            0o120777,
            LINK_TARGET.len() as u32,
            0,
            1,
        );
        put(&mut img, LINK_OFF, &link.to_bytes());
        put(&mut img, LINK_OFF + 32, LINK_TARGET);

        // sub: FLAT_PLAIN, every block at SUB_BLK.., the last one partial.
        let sub_blocks = dirent_blocks(&sub_entries());
        assert_eq!(sub_blocks.len(), 2);
        let sub_size = BS + sub_blocks[1].len();
        let sub = compact(DataLayout::FlatPlain, 0o040755, sub_size as u32, SUB_BLK, 3);
        put(&mut img, SUB_OFF, &sub.to_bytes());
        for (i, b) in sub_blocks.iter().enumerate() {
            put(&mut img, (SUB_BLK as usize + i) * BS, b);
        }

        let e = compact(
            DataLayout::ChunkBased,
            0o100600,
            0,
            ChunkIndexHeader::new(MIB.into(), 12).unwrap().to_i_u(),
            560,
        );
        put(&mut img, E_OFF, &e.to_bytes());

        // deep: FLAT_INLINE, block 0 at DEEP_BLK, the tail block right after the inode.
        let deep_blocks = dirent_blocks(&deep_entries());
        assert_eq!(deep_blocks.len(), 2);
        let deep_size = BS + deep_blocks[1].len();
        let deep = compact(
            DataLayout::FlatInline,
            0o040700,
            deep_size as u32,
            DEEP_BLK,
            2,
        );
        put(&mut img, DEEP_OFF, &deep.to_bytes());
        put(&mut img, DEEP_OFF + 32, &deep_blocks[1]);
        assert!(DEEP_OFF + 32 + deep_blocks[1].len() <= 3 * BS);
        put(&mut img, DEEP_BLK as usize * BS, &deep_blocks[0]);

        for (i, c) in chunk_infos().iter().enumerate() {
            put(&mut img, CHUNK_TABLE_BLK * BS + i * 80, &c.to_bytes());
        }
        img
    }

    fn names(entries: &[DirEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8(e.name.clone()).unwrap())
            .collect()
    }

    fn walk_paths(boot: &Bootstrap<'_>) -> Result<Vec<(String, u64)>, FormatError> {
        let mut out = Vec::new();
        boot.walk(|w: &WalkEntry<'_>| -> Result<(), FormatError> {
            out.push((String::from_utf8_lossy(w.path).into_owned(), w.inode.nid));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn parses_tables_of_the_hand_built_image() {
        let img = image();
        let boot = Bootstrap::parse(&img).unwrap();
        assert_eq!(boot.root_nid(), 128);
        assert_eq!(boot.block_size(), 4096);
        assert_eq!(boot.blobs().len(), 1);
        assert_eq!(boot.blobs()[0].blob_id(), Ok(BLOB_ID));
        assert_eq!(boot.devices().len(), 1);
        assert_eq!(boot.devices()[0].blob_id(), Ok(BLOB_ID));
        assert_eq!(boot.prefetch_nids().collect::<Vec<_>>(), [132, 139]);
        assert_eq!(boot.chunk_info_table().unwrap().len(), 160);
        assert_eq!(boot.chunk_info_count(), 2);
        let infos = chunk_infos();
        assert_eq!(boot.chunk_info(0), Ok(infos[0]));
        assert_eq!(boot.chunk_info(1), Ok(infos[1]));
        assert!(boot.chunk_info(2).is_err());
        assert!(boot.chunk_info(u64::MAX).is_err());
    }

    #[test]
    fn root_directory_lists_inline_dirents() {
        let img = image();
        let boot = Bootstrap::parse(&img).unwrap();
        let entries = boot.read_dir(&boot.root()).unwrap();
        assert_eq!(
            entries,
            vec![
                DirEntry {
                    name: b".".to_vec(),
                    nid: 128,
                    file_type: FileType::Directory
                },
                DirEntry {
                    name: b"..".to_vec(),
                    nid: 128,
                    file_type: FileType::Directory
                },
                DirEntry {
                    name: b"a".to_vec(),
                    nid: 132,
                    file_type: FileType::Regular
                },
                DirEntry {
                    name: b"link".to_vec(),
                    nid: 137,
                    file_type: FileType::Symlink
                },
                DirEntry {
                    name: b"sub".to_vec(),
                    nid: 139,
                    file_type: FileType::Directory
                },
            ]
        );
    }

    #[test]
    fn multi_block_directories_flat_plain_and_flat_inline() {
        let img = image();
        let boot = Bootstrap::parse(&img).unwrap();
        let sub = boot.lookup(b"/sub").unwrap().unwrap();
        assert_eq!(sub.format.data_layout, DataLayout::FlatPlain);
        let got = boot.read_dir(&sub).unwrap();
        let want: Vec<String> = sub_entries()
            .iter()
            .map(|e| String::from_utf8(e.0.clone()).unwrap())
            .collect();
        assert_eq!(names(&got), want);
        assert!(got[3..].iter().all(|e| e.nid == 140));
        assert_eq!(got[2].nid, 141);

        let deep = boot.lookup(b"sub/deep").unwrap().unwrap();
        assert_eq!(deep.format.data_layout, DataLayout::FlatInline);
        let got = boot.read_dir(&deep).unwrap();
        let want: Vec<String> = deep_entries()
            .iter()
            .map(|e| String::from_utf8(e.0.clone()).unwrap())
            .collect();
        assert_eq!(names(&got), want);
        assert_eq!((got[1].nid, got[261].nid), (139, 140));
    }

    #[test]
    fn lookup_resolves_paths() {
        let img = image();
        let boot = Bootstrap::parse(&img).unwrap();
        let nid_of = |p: &[u8]| boot.lookup(p).unwrap().map(|i| i.nid);
        assert_eq!(nid_of(b"/"), Some(128));
        assert_eq!(nid_of(b""), Some(128));
        assert_eq!(nid_of(b"/a"), Some(132));
        assert_eq!(nid_of(b"//sub///deep/"), Some(141));
        assert_eq!(nid_of(b"/sub/deep/g259"), Some(140));
        assert_eq!(nid_of(b"/sub/f252"), Some(140)); // last name of a full block, NUL-ended
        assert_eq!(nid_of(b"/sub/f253"), Some(140)); // first name of the second block
        assert_eq!(nid_of(b"/sub/deep/.."), Some(139));
        assert_eq!(nid_of(b"/sub/deep/g260"), None);
        assert_eq!(nid_of(b"/nope"), None);
        assert_eq!(nid_of(b"/a/x"), None);
        assert_eq!(nid_of(b"/su"), None);
    }

    #[test]
    fn symlink_target_and_type_checks() {
        let img = image();
        let boot = Bootstrap::parse(&img).unwrap();
        let link = boot.lookup(b"/link").unwrap().unwrap();
        assert_eq!(link.file_type, FileType::Symlink);
        assert_eq!(boot.read_link(&link).unwrap(), LINK_TARGET);
        assert!(boot.read_link(&boot.root()).is_err());
        assert!(boot.read_dir(&link).is_err());
        assert!(boot.chunks(&link).is_err());
    }

    #[test]
    fn chunk_based_file_chunks_and_xattrs() {
        let img = image();
        let boot = Bootstrap::parse(&img).unwrap();
        let a = boot.lookup(b"/a").unwrap().unwrap();
        assert_eq!(a.inode.layout(), InodeLayout::Extended);
        assert_eq!(a.size(), A_SIZE);
        assert_eq!(
            boot.chunks(&a).unwrap(),
            vec![
                ChunkAddr::new(0, 0, 0).unwrap(),
                ChunkAddr::new(0, 1, 256).unwrap()
            ]
        );
        assert_eq!(
            boot.xattrs(&a).unwrap(),
            vec![
                (b"user.x".to_vec(), b"hello".to_vec()),
                (b"security.capability".to_vec(), cap_value()),
            ]
        );
        let e = boot.lookup(b"/sub/f000").unwrap().unwrap();
        assert_eq!(boot.chunks(&e).unwrap(), vec![]);
        assert_eq!(boot.xattrs(&e).unwrap(), vec![]);
        assert_eq!(boot.xattrs(&boot.root()).unwrap(), vec![]);
    }

    #[test]
    fn walk_visits_every_path_depth_first() {
        let img = image();
        let boot = Bootstrap::parse(&img).unwrap();
        let paths = walk_paths(&boot).unwrap();
        assert_eq!(paths.len(), 1 + 3 + 1 + 260 + 300);
        let head: Vec<(&str, u64)> = paths[..7].iter().map(|(p, n)| (p.as_str(), *n)).collect();
        assert_eq!(
            head,
            [
                ("/", 128),
                ("/a", 132),
                ("/link", 137),
                ("/sub", 139),
                ("/sub/deep", 141),
                ("/sub/deep/g000", 140),
                ("/sub/deep/g001", 140),
            ]
        );
        assert_eq!(paths[264].0, "/sub/deep/g259");
        assert_eq!(paths[265].0, "/sub/f000");
        assert_eq!(paths.last().unwrap().0, "/sub/f299");

        // Depth 2 holds entries, so a limit of 1 stops the walk with an error.
        let err = boot
            .walk_with_depth(1, |_: &WalkEntry<'_>| Ok::<(), FormatError>(()))
            .unwrap_err();
        assert!(err.to_string().contains("deeper than 1"), "{err}");
    }

    #[test]
    fn truncated_bootstrap_is_rejected() {
        let img = image();
        for len in [0, 1000, 1100, 4095] {
            assert!(
                matches!(
                    Bootstrap::parse(&img[..len]),
                    Err(FormatError::Truncated {
                        what: "bootstrap",
                        ..
                    })
                ),
                "{len}"
            );
        }
        // The inode area would start at the end.
        let e = Bootstrap::parse(&img[..4096]).unwrap_err();
        assert_eq!(e.field_name(), Some("s_meta_blkaddr"));
        // The chunk info table lies past the end.
        let e = Bootstrap::parse(&img[..3 * 4096]).unwrap_err();
        assert_eq!(e.field_name(), Some("s_chunk_table_offset"));
        // Not a multiple of the block size.
        assert!(Bootstrap::parse(&img[..img.len() - 1]).is_err());
    }

    #[test]
    fn nid_out_of_range_is_an_error() {
        let img = image();
        let boot = Bootstrap::parse(&img).unwrap();
        for nid in [1 << 20, u64::MAX, (img.len() as u64 - 4096) / 32] {
            let e = boot.inode(nid).unwrap_err();
            assert!(
                matches!(e, FormatError::Invalid { what: "inode", .. }),
                "{nid}: {e}"
            );
        }
        // An in-range nid on zeroed bytes has no file type.
        assert_eq!(boot.inode(200).unwrap_err().field_name(), Some("i_mode"));
        // The last slot holds a compact inode's first bytes only if 32 bytes remain.
        let last = (img.len() as u64 - 4096) / 32 - 1;
        assert!(boot.inode(last).is_err());
    }

    #[test]
    fn dirent_name_offsets_out_of_bounds_are_errors() {
        // Entry 2 ("a") of the root's inline block.
        let mut img = image();
        let at = ROOT_OFF + 32 + 2 * 12 + 8;
        img[at..at + 2].copy_from_slice(&0xffffu16.to_le_bytes());
        let boot = Bootstrap::parse(&img).unwrap();
        let e = boot.read_dir(&boot.root()).unwrap_err();
        assert_eq!(e.field_name(), Some("e_nameoff"), "{e}");
        assert!(boot.lookup(b"/a").is_err());

        // First nameoff not a multiple of 12.
        let mut img = image();
        let at = ROOT_OFF + 32 + 8;
        img[at..at + 2].copy_from_slice(&61u16.to_le_bytes());
        let boot = Bootstrap::parse(&img).unwrap();
        assert_eq!(
            boot.read_dir(&boot.root()).unwrap_err().field_name(),
            Some("e_nameoff")
        );

        // A name offset pointing backwards makes the previous name end before it starts.
        let mut img = image();
        let at = SUB_BLK as usize * BS + 3 * 12 + 8;
        img[at..at + 2].copy_from_slice(&(256u16 * 12).to_le_bytes());
        let boot = Bootstrap::parse(&img).unwrap();
        let sub = boot.inode(nid(SUB_OFF)).unwrap();
        assert_eq!(
            boot.read_dir(&sub).unwrap_err().field_name(),
            Some("e_nameoff")
        );
    }

    #[test]
    fn directory_cycles_stop_the_walk() {
        // /sub/deep points back at /sub.
        let mut img = image();
        let at = SUB_BLK as usize * BS + 2 * 12;
        img[at..at + 8].copy_from_slice(&nid(SUB_OFF).to_le_bytes());
        let boot = Bootstrap::parse(&img).unwrap();
        let e = walk_paths(&boot).unwrap_err();
        assert!(e.to_string().contains("reached again at /sub/deep"), "{e}");

        // /sub points at the root itself.
        let mut img = image();
        let at = ROOT_OFF + 32 + 4 * 12;
        img[at..at + 8].copy_from_slice(&nid(ROOT_OFF).to_le_bytes());
        let boot = Bootstrap::parse(&img).unwrap();
        let e = walk_paths(&boot).unwrap_err();
        assert!(e.to_string().contains("reached again at /sub"), "{e}");
        // Lookups through the loop still terminate: each step consumes a path component.
        assert_eq!(boot.lookup(b"/sub/sub/sub/a").unwrap().unwrap().nid, 132);
    }

    #[test]
    fn dirent_type_must_match_the_inode() {
        let mut img = image();
        // Root entry "a" claims to be a directory.
        img[ROOT_OFF + 32 + 2 * 12 + 10] = FileType::Directory as u8;
        let boot = Bootstrap::parse(&img).unwrap();
        let e = walk_paths(&boot).unwrap_err();
        assert!(
            matches!(e, FormatError::Invalid { what: "Dirent", .. }),
            "{e}"
        );
    }

    #[test]
    fn chunk_count_beyond_the_data_is_an_error() {
        let mut img = image();
        img[A_OFF + 8..A_OFF + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let boot = Bootstrap::parse(&img).unwrap();
        let a = boot.inode(nid(A_OFF)).unwrap();
        assert_eq!(boot.chunks(&a).unwrap_err().field_name(), Some("i_size"));

        let mut img = image();
        img[A_OFF + 8..A_OFF + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        let boot = Bootstrap::parse(&img).unwrap();
        let a = boot.inode(nid(A_OFF)).unwrap();
        assert_eq!(boot.chunks(&a).unwrap_err().field_name(), Some("i_size"));

        // A chunk naming a blob the table does not have.
        let mut img = image();
        let addrs = (A_OFF + 64 + 60).next_multiple_of(8);
        img[addrs + 8 + 2] = 7;
        let boot = Bootstrap::parse(&img).unwrap();
        let a = boot.inode(nid(A_OFF)).unwrap();
        assert_eq!(
            boot.chunks(&a).unwrap_err().field_name(),
            Some("c_blob_addr_hi")
        );
    }

    #[test]
    fn bad_shared_xattr_ids_and_bad_xattr_entries_are_errors() {
        // The error reading inode A's xattrs after `patch`.
        let xattr_error = |patch: &dyn Fn(&mut Vec<u8>)| {
            let mut img = image();
            patch(&mut img);
            let boot = Bootstrap::parse(&img).unwrap();
            let a = boot.inode(nid(A_OFF)).unwrap();
            boot.xattrs(&a).unwrap_err()
        };
        let hdr = A_OFF + 64;
        // A shared id but no shared xattr area.
        let e = xattr_error(&|img| img[hdr + 4] = 1);
        assert_eq!(e.field_name(), Some("h_shared_count"));
        // More shared ids than the xattr area holds.
        let e = xattr_error(&|img| img[hdr + 4] = 200);
        assert_eq!(e.field_name(), Some("h_shared_count"));
        // A shared id pointing past the bootstrap.
        let e = xattr_error(&|img| {
            img[1024 + 44..1024 + 48].copy_from_slice(&1u32.to_le_bytes());
            img[hdr + 4] = 1;
            img[hdr + 12..hdr + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        });
        assert_eq!(e.field_name(), Some("xattr id"));
        // No prefix has index 5.
        let e = xattr_error(&|img| img[hdr + 12 + 1] = 5);
        assert_eq!(e.field_name(), Some("e_name_index"));
        // A value running past the xattr area.
        let e = xattr_error(&|img| img[hdr + 12 + 2] = 200);
        assert!(
            matches!(
                e,
                FormatError::Truncated {
                    what: "XattrEntry",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn inline_tail_must_not_cross_a_block() {
        let mut img = image();
        // The symlink claims a 4000-byte inline target.
        img[LINK_OFF + 8..LINK_OFF + 12].copy_from_slice(&4000u32.to_le_bytes());
        let boot = Bootstrap::parse(&img).unwrap();
        let link = boot.inode(nid(LINK_OFF)).unwrap();
        let e = boot.read_link(&link).unwrap_err();
        assert!(e.to_string().contains("crosses a block boundary"), "{e}");
    }

    #[test]
    fn root_must_be_a_directory() {
        let mut img = image();
        img[1024 + 14..1024 + 16].copy_from_slice(&(nid(A_OFF) as u16).to_le_bytes());
        assert_eq!(
            Bootstrap::parse(&img).unwrap_err().field_name(),
            Some("s_root_nid")
        );
    }

    /// Calls every accessor on everything reachable; results are ignored, panics are not.
    fn exercise(bytes: &[u8]) {
        let Ok(boot) = Bootstrap::parse(bytes) else {
            return;
        };
        let _ = boot.prefetch_nids().count();
        let _ = boot.lookup(b"/sub/deep/g100");
        let _ = boot.lookup(b"/link");
        for n in 0..boot.chunk_info_count() + 1 {
            let _ = boot.chunk_info(n);
        }
        let _ = boot.walk(|w: &WalkEntry<'_>| -> Result<(), FormatError> {
            let _ = boot.xattrs(w.inode);
            match w.inode.file_type {
                FileType::Directory => {
                    let _ = boot.read_dir(w.inode);
                }
                FileType::Symlink => {
                    let _ = boot.read_link(w.inode);
                }
                _ => {
                    let _ = boot.chunks(w.inode);
                }
            }
            Ok(())
        });
        for nid in [0, 1, 128, 132, 137, 139, 140, 141, 255, u64::MAX] {
            if let Ok(ino) = boot.inode(nid) {
                let _ = boot.xattrs(&ino);
                let _ = boot.read_dir(&ino);
                let _ = boot.read_link(&ino);
                let _ = boot.chunks(&ino);
            }
        }
    }

    /// Offsets where mutations matter: superblocks, tables, inodes, directory blocks.
    fn interesting_offset() -> impl Strategy<Value = usize> {
        prop_oneof![
            1024usize..1536,
            BS..BS + 264,
            ROOT_OFF..DEEP_OFF + 32 + 128,
            SUB_BLK as usize * BS..SUB_BLK as usize * BS + 64,
            (SUB_BLK as usize + 1) * BS..(SUB_BLK as usize + 1) * BS + 64,
            DEEP_BLK as usize * BS..DEEP_BLK as usize * BS + 64,
            0..IMAGE_BLOCKS * BS,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn parsing_and_walking_mutated_images_never_panics(
            mutations in proptest::collection::vec((interesting_offset(), any::<u8>()), 1..12),
            truncate in proptest::option::of(0usize..IMAGE_BLOCKS * BS),
        ) {
            let mut img = image();
            for (off, v) in mutations {
                img[off] = v;
            }
            if let Some(len) = truncate {
                img.truncate(len);
            }
            exercise(&img);
        }
    }
}
