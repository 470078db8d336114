//! Turns a [`Tree`] into a RAFS v6 bootstrap (an EROFS image whose files point into blobs).
//!
//! Layout, all in one buffer:
//!
//! ```text
//! 0     1024  1152    1408            4K
//! | 0 | sb  | ext sb | device slots | blob table | prefetch | 4K: shared xattrs (only with
//!   `share_xattrs`) | 4K: meta_blkaddr, one free block
//!   | inodes in breadth-first order, root at nid 128, with inline xattrs, chunk addresses and
//!     inline tails of directories and symlinks |  4K: full directory/symlink blocks |
//!   4K: chunk info table (80 B per unique chunk, sorted by digest and device) | 4K
//! ```
//!
//! Directory and symlink data whose last partial block fits in the inode's block together with the
//! inode is stored inline after the inode (FLAT_INLINE, as Nydus and mkfs.erofs do); full blocks go
//! to a block-aligned area after all inodes, so no space is lost between inodes.
//!
//! Inodes are compact (32 bytes) only when nothing would be lost: mtime 0, ids and link count
//! below 2^16, size below 4 GiB and not a device (nydusd reads the device number and the mtime
//! only from extended inodes).

use std::collections::{BTreeMap, HashMap};

use super::inode::{
    split_xattr_name, xattr_icount, ChunkAddr, ChunkIndexHeader, DataLayout, Dirent, FileType,
    InodeCompact, InodeExtended, InodeFormat, InodeLayout, XattrEntryHeader, XattrIbodyHeader,
};
use super::layout::{
    BlobEntry, DeviceSlot, SuperBlock, SuperBlockExt, EROFS_BLOCK_BITS_12, EROFS_BLOCK_SIZE_4096,
    EROFS_DEVTABLE_OFFSET, EROFS_DEVT_SLOT_SIZE, EROFS_SUPER_OFFSET, RAFS_V6_BLOB_ENTRY_SIZE,
    RAFS_V6_EXT_SUPER_OFFSET, V6_BLOCK_SEG_ALIGNMENT,
};
use super::reader::MAX_XATTR_BYTES;
use crate::tree::{display, Kind, Node, NodeId, Order, Tree};
use crate::{ChunkInfo, FormatError, RafsSuperFlags};

const BS: u64 = EROFS_BLOCK_SIZE_4096;
/// The root inode sits one block into the inode area, so its nid is 128 as in Nydus's images.
const ROOT_NID: u64 = BS / 32;

/// What the bootstrap records besides the tree and the blobs.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Chunk size of every blob.
    pub chunk_size: u32,
    /// Compressor and digester bits plus any other super flags (EXPLICIT_UID_GID, ...);
    /// HAS_XATTR is added when some node has xattrs.
    pub flags: RafsSuperFlags,
    /// Paths to prefetch (files or directories), written as the prefetch table.
    pub prefetch: Vec<Vec<u8>>,
    /// Store each xattr (name and value) that more than one inode has once, in EROFS's shared
    /// xattr area, as `mkfs.erofs` does. Off by default: Nydus 2.4 refuses such bootstraps; the
    /// kernel's EROFS and our reader read them.
    pub share_xattrs: bool,
}

fn invalid(reason: String) -> FormatError {
    FormatError::Invalid {
        what: "bootstrap writer",
        reason,
    }
}

/// Per-inode layout decided before anything is written.
struct Placed {
    id: NodeId,
    /// Index in the breadth-first order (for the path in messages).
    idx: usize,
    offset: u64,
    layout: InodeLayout,
    data_layout: DataLayout,
    xattrs: Vec<u8>,
    /// Directory or symlink bytes (dirents are encoded once nids are known).
    data_len: u64,
    /// First block of the full data blocks (0 if none).
    blkaddr: u32,
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// One xattr entry (header, name suffix, value, padding to 4).
fn encode_xattr_entry(path: &[u8], name: &[u8], value: &[u8]) -> Result<Vec<u8>, FormatError> {
    let (index, suffix) = split_xattr_name(name).ok_or_else(|| {
        invalid(format!(
            "{}: xattr {:?} has no prefix RAFS can store (user., trusted., security., system.posix_acl_*)",
            display(path),
            display(name)
        ))
    })?;
    let name_len = u8::try_from(suffix.len())
        .map_err(|_| invalid(format!("{}: xattr name too long", display(path))))?;
    let value_size = u16::try_from(value.len()).map_err(|_| {
        invalid(format!(
            "{}: xattr {:?} value is {} bytes, more than 65535",
            display(path),
            display(name),
            value.len()
        ))
    })?;
    let h = XattrEntryHeader {
        name_len,
        name_index: index,
        value_size,
    };
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(suffix);
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
    Ok(out)
}

/// An xattr as stored: full name and value.
type XattrPair = (Vec<u8>, Vec<u8>);

type XattrUses<'a> = BTreeMap<(&'a [u8], &'a [u8]), (u32, usize)>;

/// The shared xattr area: entries used by more than one inode, each stored once and referred to
/// by its id (offset from the area's start in 4-byte units). No entry straddles a block.
#[derive(Default)]
struct SharedXattrs {
    ids: HashMap<XattrPair, u32>,
    area: Vec<u8>,
}

impl SharedXattrs {
    fn build(tree: &Tree, order: &Order<'_>) -> Result<SharedXattrs, FormatError> {
        // (name, value) -> (inodes that have it, the first one's entry in `order`).
        let mut uses: XattrUses<'_> = BTreeMap::new();
        for (i, id) in order.ids().enumerate() {
            for (name, value) in &tree.node(id).meta.xattrs {
                uses.entry((name.as_slice(), value.as_slice()))
                    .or_insert((0, i))
                    .0 += 1;
            }
        }
        let mut shared = SharedXattrs::default();
        for ((name, value), (count, first)) in uses {
            let entry = encode_xattr_entry(&order.path(first), name, value)?;
            if count < 2 || entry.len() as u64 > BS {
                continue;
            }
            let at = shared.area.len() as u64;
            if at % BS + entry.len() as u64 > BS {
                shared.area.resize(align(at, BS) as usize, 0);
            }
            let id = u32::try_from(shared.area.len() / 4)
                .map_err(|_| invalid("shared xattr area larger than 16 GiB".into()))?;
            shared.area.extend_from_slice(&entry);
            shared.ids.insert((name.to_vec(), value.to_vec()), id);
        }
        Ok(shared)
    }
}

/// Encodes an inode's xattr area (header, shared ids, inline entries) or nothing when there are
/// no xattrs. At most 255 xattrs of an inode are shared (`h_shared_count` is a byte).
fn encode_xattrs(
    path: &[u8],
    xattrs: &BTreeMap<Vec<u8>, Vec<u8>>,
    shared: &SharedXattrs,
) -> Result<Vec<u8>, FormatError> {
    if xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let total: usize = xattrs.iter().map(|(n, v)| n.len() + v.len()).sum();
    if total > MAX_XATTR_BYTES {
        return Err(invalid(format!(
            "{}: xattrs come to {total} bytes, more than the {MAX_XATTR_BYTES} an inode may hold",
            display(path)
        )));
    }
    let mut ids = Vec::new();
    let mut inline = Vec::new();
    for (name, value) in xattrs {
        match shared.ids.get(&(name.clone(), value.clone())) {
            Some(id) if ids.len() < usize::from(u8::MAX) => ids.push(*id),
            _ => inline.extend_from_slice(&encode_xattr_entry(path, name, value)?),
        }
    }
    let mut out = XattrIbodyHeader {
        reserved: 0,
        shared_count: ids.len() as u8,
    }
    .to_bytes()
    .to_vec();
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out.extend_from_slice(&inline);
    xattr_icount(out.len())?;
    Ok(out)
}

/// One directory block's entries: name and target node.
type DirBlock = Vec<(Vec<u8>, NodeId)>;

/// The directory's entries (`.` and `..` included) sorted by name, packed into blocks: each
/// block is a list of `(name, target node)`. `parent` is the node `..` points to.
fn dir_blocks(tree: &Tree, dir: NodeId, parent: NodeId) -> Vec<DirBlock> {
    let mut entries: Vec<(Vec<u8>, NodeId)> = vec![(b".".to_vec(), dir), (b"..".to_vec(), parent)];
    entries.extend(tree.children(dir).map(|(n, id)| (n.to_vec(), id)));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut blocks: Vec<DirBlock> = vec![Vec::new()];
    let mut used = 0u64;
    for e in entries {
        let len = Dirent::SIZE as u64 + e.0.len() as u64;
        if used + len > BS {
            blocks.push(Vec::new());
            used = 0;
        }
        used += len;
        blocks.last_mut().expect("never empty").push(e);
    }
    blocks
}

fn block_bytes(block: &[(Vec<u8>, NodeId)]) -> u64 {
    block
        .iter()
        .map(|(n, _)| Dirent::SIZE as u64 + n.len() as u64)
        .sum()
}

fn compact_ok(node: &Node, nlink: u32) -> bool {
    let size = match &node.kind {
        Kind::File { size, .. } => *size,
        Kind::Symlink(t) => t.len() as u64,
        _ => 0,
    };
    node.meta.mtime == 0
        && node.meta.mtime_nsec == 0
        && node.meta.uid <= u16::MAX as u32
        && node.meta.gid <= u16::MAX as u32
        && nlink <= u16::MAX as u32
        && size <= u32::MAX as u64
        && !matches!(node.kind, Kind::CharDev(_) | Kind::BlockDev(_))
}

fn file_type(kind: &Kind) -> FileType {
    match kind {
        Kind::Dir(_) => FileType::Directory,
        Kind::File { .. } => FileType::Regular,
        Kind::Symlink(_) => FileType::Symlink,
        Kind::CharDev(_) => FileType::CharDevice,
        Kind::BlockDev(_) => FileType::BlockDevice,
        Kind::Fifo => FileType::Fifo,
        Kind::Socket => FileType::Socket,
    }
}

/// Writes the bootstrap for `tree` whose chunks live in `blobs` (index = position).
pub fn write_bootstrap(
    tree: &Tree,
    blobs: &[BlobEntry],
    opts: &WriteOptions,
) -> Result<Vec<u8>, FormatError> {
    if blobs.len() as u64 >= super::layout::RAFS_V6_MAX_BLOBS {
        return Err(invalid(format!(
            "{} blobs; RAFS v6 holds at most 254",
            blobs.len()
        )));
    }
    let order = tree.bfs();
    let nlinks = tree.nlinks();
    let mut parent_of: HashMap<NodeId, NodeId> = HashMap::new();
    parent_of.insert(Tree::ROOT, Tree::ROOT);
    for id in order.ids() {
        for (_, child) in tree.children(id) {
            if tree.node(child).kind.is_dir() {
                parent_of.insert(child, id);
            }
        }
    }

    // Fixed tables.
    let devtable_end = EROFS_DEVTABLE_OFFSET + blobs.len() as u64 * EROFS_DEVT_SLOT_SIZE;
    let blob_table_offset = align(devtable_end, BS);
    let blob_table_size = blobs.len() as u64 * RAFS_V6_BLOB_ENTRY_SIZE;
    let prefetch_offset = blob_table_offset + blob_table_size;
    let prefetch_ids: Vec<NodeId> = opts
        .prefetch
        .iter()
        .filter_map(|p| tree.lookup(p))
        .collect();
    let prefetch_size = prefetch_ids.len() as u64 * 4;
    let shared = if opts.share_xattrs {
        SharedXattrs::build(tree, &order)?
    } else {
        SharedXattrs::default()
    };
    let xattr_addr = align(prefetch_offset + prefetch_size, BS);
    let meta_addr = xattr_addr + align(shared.area.len() as u64, BS);

    // Pass 1: place inodes (and inline tails) in BFS order.
    let mut placed: Vec<Placed> = Vec::with_capacity(order.len());
    let mut index_of: HashMap<NodeId, usize> = HashMap::with_capacity(order.len());
    let mut cursor = meta_addr + BS;
    let mut dir_blocks_of: HashMap<NodeId, Vec<DirBlock>> = HashMap::new();
    for (path, id) in order.iter() {
        let id = &id;
        let node = tree.node(*id);
        let nlink = nlinks.get(id).copied().unwrap_or(1);
        let layout = if compact_ok(node, nlink) {
            InodeLayout::Compact
        } else {
            InodeLayout::Extended
        };
        let xattrs = encode_xattrs(&path, &node.meta.xattrs, &shared)?;
        let isize = (layout.size() + xattrs.len()) as u64;
        cursor = align(cursor, 32);
        let (offset, data_layout, data_len) = match &node.kind {
            Kind::File { chunks, .. } => {
                let off = cursor;
                cursor += align(isize, 8) + chunks.len() as u64 * ChunkAddr::SIZE as u64;
                (off, DataLayout::ChunkBased, 0)
            }
            Kind::Dir(_) | Kind::Symlink(_) => {
                let d = match &node.kind {
                    Kind::Dir(_) => {
                        let blocks = dir_blocks(tree, *id, parent_of[id]);
                        let d = (blocks.len() as u64 - 1) * BS
                            + block_bytes(blocks.last().expect("never empty"));
                        dir_blocks_of.insert(*id, blocks);
                        d
                    }
                    Kind::Symlink(t) => t.len() as u64,
                    _ => unreachable!(),
                };
                let tail = d % BS;
                if tail != 0 && isize + tail <= BS {
                    if cursor % BS + isize + tail > BS {
                        cursor = align(cursor, BS);
                    }
                    let off = cursor;
                    cursor += isize + tail;
                    (off, DataLayout::FlatInline, d)
                } else {
                    let off = cursor;
                    cursor += isize;
                    (off, DataLayout::FlatPlain, d)
                }
            }
            _ => {
                let off = cursor;
                cursor += isize;
                (off, DataLayout::FlatPlain, 0)
            }
        };
        index_of.insert(*id, placed.len());
        placed.push(Placed {
            id: *id,
            idx: placed.len(),
            offset,
            layout,
            data_layout,
            xattrs,
            data_len,
            blkaddr: 0,
        });
    }

    // Pass 2: full blocks of directories and symlinks after the inodes.
    let mut block_cursor = align(cursor, BS);
    for p in &mut placed {
        let full = match p.data_layout {
            DataLayout::FlatInline => p.data_len / BS,
            DataLayout::FlatPlain => p.data_len.div_ceil(BS),
            DataLayout::ChunkBased => 0,
        };
        if full > 0 {
            p.blkaddr = u32::try_from(block_cursor / BS)
                .map_err(|_| invalid("bootstrap larger than 2^32 blocks".into()))?;
            block_cursor += full * BS;
        }
    }
    let inode_area_end = block_cursor;

    // Chunk info table: one entry per chunk of a blob (digest, device, index), sorted by digest
    // like Nydus's. A blob normally holds a digest once, but one that holds it at several
    // indexes (an image built without dedup, or a crafted one) keeps every entry its files use.
    let mut chunk_table: BTreeMap<([u8; 32], u32, u32), ChunkInfo> = BTreeMap::new();
    for p in &placed {
        if let Kind::File { chunks, .. } = &tree.node(p.id).kind {
            for c in chunks {
                if c.blob_index as usize >= blobs.len() {
                    return Err(invalid(format!(
                        "{}: chunk points to blob {} of {}",
                        display(&order.path(p.idx)),
                        c.blob_index,
                        blobs.len()
                    )));
                }
                chunk_table
                    .entry((c.block_id, c.blob_index + 1, c.index))
                    .or_insert(*c);
            }
        }
    }
    let chunk_table_offset = inode_area_end;
    let chunk_table_size = chunk_table.len() as u64 * ChunkInfo::SIZE as u64;
    let total = align(chunk_table_offset + chunk_table_size, BS);
    let total_usize = usize::try_from(total).map_err(|_| invalid("bootstrap too large".into()))?;
    let mut out = vec![0u8; total_usize];

    let nid_of = |id: NodeId| -> u64 { (placed[index_of[&id]].offset - meta_addr) / 32 };
    debug_assert_eq!(nid_of(Tree::ROOT), ROOT_NID);

    // Pass 3: write inodes, xattrs, chunk addresses, dirents, symlink targets.
    let mut has_xattr = false;
    for (ino, p) in placed.iter().enumerate() {
        let node = tree.node(p.id);
        let nlink = nlinks.get(&p.id).copied().unwrap_or(1);
        has_xattr |= !p.xattrs.is_empty();
        let (size, u) = match &node.kind {
            Kind::File { size, chunks } => {
                let header =
                    ChunkIndexHeader::new(u64::from(opts.chunk_size), EROFS_BLOCK_BITS_12)?;
                let expected = size.div_ceil(u64::from(opts.chunk_size));
                if chunks.len() as u64 != expected {
                    return Err(invalid(format!(
                        "{}: {} chunks for {} bytes at chunk size {}",
                        display(&order.path(p.idx)),
                        chunks.len(),
                        size,
                        opts.chunk_size
                    )));
                }
                (*size, header.to_i_u())
            }
            Kind::Dir(_) | Kind::Symlink(_) => (p.data_len, p.blkaddr),
            Kind::CharDev(rdev) | Kind::BlockDev(rdev) => (0, *rdev),
            Kind::Fifo | Kind::Socket => (0, 0),
        };
        let format = InodeFormat::new(p.layout, p.data_layout).to_raw();
        let xattr_icount = xattr_icount(p.xattrs.len())?;
        let mode = u16::try_from(node.mode()).map_err(|_| invalid("mode".into()))?;
        let ino32 = u32::try_from(ino + 1).map_err(|_| invalid("more than 2^32 inodes".into()))?;
        let bytes: Vec<u8> = match p.layout {
            InodeLayout::Compact => InodeCompact {
                format,
                xattr_icount,
                mode,
                nlink: nlink as u16,
                size: size as u32,
                u,
                ino: ino32,
                uid: node.meta.uid as u16,
                gid: node.meta.gid as u16,
            }
            .to_bytes()
            .to_vec(),
            InodeLayout::Extended => InodeExtended {
                format,
                xattr_icount,
                mode,
                size,
                u,
                ino: ino32,
                uid: node.meta.uid,
                gid: node.meta.gid,
                mtime: node.meta.mtime,
                mtime_nsec: node.meta.mtime_nsec,
                nlink,
            }
            .to_bytes()
            .to_vec(),
        };
        let off = p.offset as usize;
        out[off..off + bytes.len()].copy_from_slice(&bytes);
        let xoff = off + bytes.len();
        out[xoff..xoff + p.xattrs.len()].copy_from_slice(&p.xattrs);
        let body_end = (xoff + p.xattrs.len()) as u64;

        match &node.kind {
            Kind::File { chunks, .. } => {
                let mut at = align(body_end, 8) as usize;
                for c in chunks {
                    if c.uncompressed_offset % BS != 0 {
                        return Err(invalid(format!(
                            "{}: chunk uncompressed offset {:#x} is not 4 KiB aligned",
                            display(&order.path(p.idx)),
                            c.uncompressed_offset
                        )));
                    }
                    let blk = u32::try_from(c.uncompressed_offset / BS)
                        .map_err(|_| invalid("blob larger than 2^32 blocks".into()))?;
                    let addr = ChunkAddr::new(c.blob_index, c.index, blk)?;
                    out[at..at + ChunkAddr::SIZE].copy_from_slice(&addr.to_bytes());
                    at += ChunkAddr::SIZE;
                }
            }
            Kind::Dir(_) => {
                let blocks = &dir_blocks_of[&p.id];
                for (i, block) in blocks.iter().enumerate() {
                    let mut data = Vec::with_capacity(BS as usize);
                    let mut nameoff = block.len() * Dirent::SIZE;
                    for (name, target) in block {
                        let d = Dirent {
                            nid: nid_of(*target),
                            nameoff: nameoff as u16,
                            file_type: file_type(&tree.node(*target).kind) as u8,
                        };
                        data.extend_from_slice(&d.to_bytes());
                        nameoff += name.len();
                    }
                    for (name, _) in block {
                        data.extend_from_slice(name);
                    }
                    let last = i + 1 == blocks.len();
                    let at = if last && p.data_layout == DataLayout::FlatInline {
                        body_end as usize
                    } else {
                        (u64::from(p.blkaddr) * BS) as usize + i * BS as usize
                    };
                    out[at..at + data.len()].copy_from_slice(&data);
                }
            }
            Kind::Symlink(target) => {
                let full = (p.data_len / BS) as usize * BS as usize;
                if p.data_layout == DataLayout::FlatInline {
                    let blk = (u64::from(p.blkaddr) * BS) as usize;
                    out[blk..blk + full].copy_from_slice(&target[..full]);
                    let tail = &target[full..];
                    out[body_end as usize..body_end as usize + tail.len()].copy_from_slice(tail);
                } else {
                    let blk = (u64::from(p.blkaddr) * BS) as usize;
                    out[blk..blk + target.len()].copy_from_slice(target);
                }
            }
            _ => {}
        }
    }

    // Chunk table.
    let mut at = chunk_table_offset as usize;
    for c in chunk_table.values() {
        out[at..at + ChunkInfo::SIZE].copy_from_slice(&c.to_bytes());
        at += ChunkInfo::SIZE;
    }

    // Shared xattr area.
    let at = xattr_addr as usize;
    out[at..at + shared.area.len()].copy_from_slice(&shared.area);

    // Prefetch table (nids).
    let mut at = prefetch_offset as usize;
    for id in &prefetch_ids {
        let nid = u32::try_from(nid_of(*id)).map_err(|_| invalid("prefetch nid".into()))?;
        out[at..at + 4].copy_from_slice(&nid.to_le_bytes());
        at += 4;
    }

    // Device slots and blob table.
    let mut pos = total;
    let mut blocks_total = 0u32;
    for (i, b) in blobs.iter().enumerate() {
        let cnt = u32::try_from(b.uncompressed_size / BS)
            .map_err(|_| invalid(format!("blob {i} larger than 2^32 blocks")))?;
        let mapped = align(pos, V6_BLOCK_SEG_ALIGNMENT) / BS;
        let mapped = u32::try_from(mapped).map_err(|_| invalid("mapped block address".into()))?;
        pos = (u64::from(mapped) + u64::from(cnt)) * BS;
        blocks_total = blocks_total
            .checked_add(cnt)
            .ok_or_else(|| invalid("more than 2^32 data blocks".into()))?;
        let slot = DeviceSlot {
            blob_id: b.blob_id,
            blocks: cnt,
            mapped_blkaddr: mapped,
        };
        let at = (EROFS_DEVTABLE_OFFSET + i as u64 * EROFS_DEVT_SLOT_SIZE) as usize;
        out[at..at + DeviceSlot::SIZE].copy_from_slice(&slot.to_bytes());
        let mut entry = *b;
        entry.blob_index = i as u32;
        let at = (blob_table_offset + i as u64 * RAFS_V6_BLOB_ENTRY_SIZE) as usize;
        out[at..at + BlobEntry::SIZE].copy_from_slice(&entry.to_bytes());
    }

    let mut sb = SuperBlock::new(EROFS_BLOCK_BITS_12);
    sb.root_nid = ROOT_NID as u16;
    sb.inos = placed.len() as u64;
    sb.blocks = blocks_total;
    sb.meta_blkaddr = u32::try_from(meta_addr / BS).map_err(|_| invalid("meta_blkaddr".into()))?;
    if !shared.area.is_empty() {
        sb.xattr_blkaddr =
            u32::try_from(xattr_addr / BS).map_err(|_| invalid("xattr_blkaddr".into()))?;
    }
    sb.extra_devices = blobs.len() as u16;
    let at = EROFS_SUPER_OFFSET as usize;
    out[at..at + SuperBlock::SIZE].copy_from_slice(&sb.to_bytes());

    let mut flags = opts.flags;
    if has_xattr {
        flags |= RafsSuperFlags::HAS_XATTR;
    }
    let ext = SuperBlockExt {
        flags,
        blob_table_offset,
        blob_table_size: blob_table_size as u32,
        chunk_size: opts.chunk_size,
        chunk_table_offset: if chunk_table_size > 0 {
            chunk_table_offset
        } else {
            0
        },
        chunk_table_size,
        prefetch_table_offset: if prefetch_size > 0 {
            prefetch_offset
        } else {
            0
        },
        prefetch_table_size: prefetch_size as u32,
    };
    let at = RAFS_V6_EXT_SUPER_OFFSET as usize;
    out[at..at + SuperBlockExt::SIZE].copy_from_slice(&ext.to_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Meta;
    use crate::v6::Bootstrap;
    use crate::{BlobChunkFlags, BlobFeatures, Compressor, Digester};
    use proptest::prelude::*;

    const CS: u32 = 0x1000;

    fn blob(chunks: u32) -> BlobEntry {
        let mut e = BlobEntry {
            chunk_size: CS,
            chunk_count: chunks,
            compression_algo: Compressor::Zstd.into(),
            digest_algo: Digester::Blake3.into(),
            features: BlobFeatures::ALIGNED | BlobFeatures::CHUNK_INFO_V2,
            ci_uncompressed_size: u64::from(chunks) * 24,
            ci_compressed_size: u64::from(chunks) * 24,
            compressed_size: u64::from(chunks) * 100,
            uncompressed_size: u64::from(chunks) * u64::from(CS),
            ..BlobEntry::default()
        };
        e.set_blob_id(&"ab".repeat(32)).unwrap();
        e
    }

    fn opts() -> WriteOptions {
        WriteOptions {
            chunk_size: CS,
            flags: RafsSuperFlags::EXPLICIT_UID_GID
                .with_compressor(Compressor::Zstd)
                .with_digester(Digester::Blake3),
            prefetch: vec![b"/d0".to_vec()],
            share_xattrs: false,
        }
    }

    /// A node description proptest can generate; chunks get real indexes when added.
    #[derive(Debug, Clone)]
    enum Gen {
        Dir,
        File(u64),
        Symlink(Vec<u8>),
        Dev(bool, u32),
        Fifo,
        Hardlink(usize),
    }

    fn gen_node() -> impl Strategy<Value = Gen> {
        prop_oneof![
            3 => Just(Gen::Dir),
            4 => (0u64..20_000).prop_map(Gen::File),
            1 => proptest::collection::vec(1u8..=255, 1..300).prop_map(Gen::Symlink),
            1 => (any::<bool>(), any::<u32>()).prop_map(|(c, d)| Gen::Dev(c, d)),
            1 => Just(Gen::Fifo),
            1 => (0usize..50).prop_map(Gen::Hardlink),
        ]
    }

    fn gen_meta() -> impl Strategy<Value = Meta> {
        (
            0u32..0o10000,
            prop_oneof![Just(0u32), any::<u32>()],
            prop_oneof![Just(0u32), any::<u32>()],
            prop_oneof![Just(0u64), any::<u32>().prop_map(u64::from)],
            0u32..1_000_000_000,
            proptest::collection::btree_map(
                prop_oneof![
                    Just(b"user.a".to_vec()),
                    Just(b"security.capability".to_vec()),
                    Just(b"trusted.overlay.opaque".to_vec())
                ],
                // Repeated values get shared when sharing is on; 1,500-byte ones do not all
                // fit one block of the shared area.
                prop_oneof![
                    2 => proptest::collection::vec(any::<u8>(), 0..200),
                    2 => Just(b"y".to_vec()),
                    1 => Just(vec![7u8; 1500]),
                    1 => Just(vec![8u8; 1500]),
                ],
                0..3,
            ),
        )
            .prop_map(|(perm, uid, gid, mtime, nsec, xattrs)| Meta {
                perm,
                uid,
                gid,
                mtime,
                mtime_nsec: if mtime == 0 { 0 } else { nsec },
                xattrs,
            })
    }

    /// Builds a tree from generated entries: entry `i` goes into a directory chosen among the
    /// directories made so far, with a name that may be long.
    fn build(entries: &[(Gen, Meta, usize, usize)]) -> (Tree, u32) {
        let mut tree = Tree::default();
        let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
        let mut files: Vec<Vec<u8>> = Vec::new();
        let mut next_chunk = 0u32;
        for (i, (g, meta, parent, name_len)) in entries.iter().enumerate() {
            let parent = &dirs[parent % dirs.len()];
            let mut path = parent.clone();
            path.push(b'/');
            let name = format!("{i}-{}", "n".repeat(*name_len));
            path.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
            let kind = match g {
                Gen::Dir => Kind::Dir(Default::default()),
                Gen::File(size) => {
                    let chunks = (0..size.div_ceil(u64::from(CS)))
                        .map(|k| {
                            let idx = next_chunk;
                            next_chunk += 1;
                            let mut id = [0u8; 32];
                            id[..4].copy_from_slice(&idx.to_le_bytes());
                            ChunkInfo {
                                block_id: id,
                                blob_index: 0,
                                flags: BlobChunkFlags::COMPRESSED | BlobChunkFlags::HAS_CRC32,
                                compressed_size: 100,
                                uncompressed_size: CS.min((size - k * u64::from(CS)) as u32),
                                compressed_offset: u64::from(idx) * 100,
                                uncompressed_offset: u64::from(idx) * u64::from(CS),
                                file_offset: k * u64::from(CS),
                                index: idx,
                                crc32: idx + 1,
                            }
                        })
                        .collect();
                    Kind::File {
                        size: *size,
                        chunks,
                    }
                }
                Gen::Symlink(t) => {
                    Kind::Symlink(t.iter().map(|b| if *b == 0 { 1 } else { *b }).collect())
                }
                Gen::Dev(true, d) => Kind::CharDev(*d),
                Gen::Dev(false, d) => Kind::BlockDev(*d),
                Gen::Fifo => Kind::Fifo,
                Gen::Hardlink(k) => {
                    if files.is_empty() {
                        Kind::Fifo
                    } else {
                        let target = files[k % files.len()].clone();
                        tree.link(&path, &target).unwrap();
                        continue;
                    }
                }
            };
            let is_dir = kind.is_dir();
            let is_file = matches!(kind, Kind::File { .. });
            tree.insert(
                &path,
                Node {
                    meta: meta.clone(),
                    kind,
                },
            )
            .unwrap();
            if is_dir {
                dirs.push(path);
            } else if is_file {
                files.push(path);
            }
        }
        (tree, next_chunk)
    }

    /// `(path, mode, meta, kind)` of every name, for comparing trees across arenas.
    fn flat(t: &Tree) -> Vec<(Vec<u8>, u32, Meta, String)> {
        t.walk()
            .map(|(p, id)| {
                let n = t.node(id);
                let kind = match &n.kind {
                    Kind::Dir(_) => "dir".to_string(),
                    other => format!("{other:?}"),
                };
                (p, n.mode(), n.meta.clone(), kind)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn writer_output_parses_back_to_the_same_tree(
            entries in proptest::collection::vec((gen_node(), gen_meta(), 0usize..1000, 0usize..260), 0..120),
            share_xattrs in any::<bool>(),
        ) {
            let (tree, chunks) = build(&entries);
            let blobs = if chunks > 0 { vec![blob(chunks)] } else { vec![] };
            let bytes = write_bootstrap(&tree, &blobs, &WriteOptions { share_xattrs, ..opts() }).unwrap();
            let b = Bootstrap::parse(&bytes).unwrap();
            let back = b.to_tree().unwrap();
            prop_assert_eq!(flat(&back), flat(&tree));
            prop_assert_eq!(back.nlinks().values().sum::<u32>(), tree.nlinks().values().sum::<u32>());
        }
    }

    #[test]
    fn a_directory_spanning_many_blocks_and_long_names_round_trip() {
        let mut tree = Tree::default();
        for i in 0..3000 {
            let name = format!("{i:04}-{}", "x".repeat(i % 250));
            tree.insert(
                name.as_bytes(),
                Node {
                    meta: Meta::default(),
                    kind: Kind::Fifo,
                },
            )
            .unwrap();
        }
        let bytes = write_bootstrap(&tree, &[], &opts()).unwrap();
        let back = Bootstrap::parse(&bytes).unwrap().to_tree().unwrap();
        assert_eq!(flat(&back), flat(&tree));
    }

    #[test]
    fn names_without_a_storable_xattr_prefix_are_refused() {
        let mut tree = Tree::default();
        let mut meta = Meta::default();
        meta.xattrs.insert(b"weird.name".to_vec(), b"v".to_vec());
        tree.insert(
            b"f",
            Node {
                meta,
                kind: Kind::Fifo,
            },
        )
        .unwrap();
        let err = write_bootstrap(&tree, &[], &opts())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/f") && err.contains("weird.name"), "{err}");
    }

    #[test]
    fn xattrs_several_inodes_have_are_stored_once_when_shared() {
        let mut tree = Tree::default();
        let cap = vec![1u8; 20];
        for i in 0..300 {
            let mut meta = Meta::default();
            meta.xattrs
                .insert(b"security.capability".to_vec(), cap.clone());
            meta.xattrs
                .insert(b"user.own".to_vec(), format!("{i}").into_bytes());
            tree.insert(
                format!("/f{i}").as_bytes(),
                Node {
                    meta,
                    kind: Kind::Fifo,
                },
            )
            .unwrap();
        }
        let plain = write_bootstrap(&tree, &[], &opts()).unwrap();
        let shared = write_bootstrap(
            &tree,
            &[],
            &WriteOptions {
                share_xattrs: true,
                ..opts()
            },
        )
        .unwrap();
        let count = |bytes: &[u8]| bytes.windows(cap.len()).filter(|w| *w == cap).count();
        assert_eq!(count(&plain), 300);
        assert_eq!(count(&shared), 1);
        let b = Bootstrap::parse(&shared).unwrap();
        assert_ne!(b.superblock().xattr_blkaddr, 0);
        assert_eq!(flat(&b.to_tree().unwrap()), flat(&tree));
        let f = b.lookup(b"/f7").unwrap().unwrap();
        assert_eq!(
            b.xattrs(&f).unwrap(),
            vec![
                (b"security.capability".to_vec(), cap.clone()),
                (b"user.own".to_vec(), b"7".to_vec()),
            ]
        );
    }

    #[test]
    fn directories_sharing_blocks_cannot_multiply_the_walk() {
        let mut tree = Tree::default();
        for i in 0..300 {
            tree.insert(format!("/a/f{i:03}").as_bytes(), fifo())
                .unwrap();
        }
        for i in 0..400 {
            tree.insert(
                format!("/d{i:03}").as_bytes(),
                Node {
                    meta: Meta::default(),
                    kind: Kind::Dir(Default::default()),
                },
            )
            .unwrap();
        }
        let mut bytes = write_bootstrap(&tree, &[], &opts()).unwrap();
        let (a_block, dirs) = {
            let b = Bootstrap::parse(&bytes).unwrap();
            let a = b.lookup(b"/a").unwrap().unwrap();
            let dirs: Vec<u64> = (0..400)
                .map(|i| {
                    b.lookup(format!("/d{i:03}").as_bytes())
                        .unwrap()
                        .unwrap()
                        .offset
                })
                .collect();
            (a.inode.u(), dirs)
        };
        assert_ne!(a_block, 0, "/a has a full dirent block");
        // Point every /dNNN at /a's first dirent block (FLAT_PLAIN, one block).
        for off in dirs {
            let off = off as usize;
            assert_eq!(bytes[off] & 1, 0, "compact inode");
            bytes[off..off + 2].copy_from_slice(&0u16.to_le_bytes());
            bytes[off + 8..off + 12].copy_from_slice(&(BS as u32).to_le_bytes());
            bytes[off + 16..off + 20].copy_from_slice(&a_block.to_le_bytes());
        }
        let err = Bootstrap::parse(&bytes).unwrap().to_tree().unwrap_err();
        assert!(err.to_string().contains("share blocks"), "{err}");
    }

    fn fifo() -> Node {
        Node {
            meta: Meta::default(),
            kind: Kind::Fifo,
        }
    }

    #[test]
    fn an_inode_decodes_to_at_most_max_xattr_bytes() {
        // The writer refuses more.
        let mut tree = Tree::default();
        let mut meta = Meta::default();
        for k in 0..5 {
            meta.xattrs
                .insert(format!("user.{k}").into_bytes(), vec![k; 60_000]);
        }
        tree.insert(
            b"/f",
            Node {
                meta,
                kind: Kind::Fifo,
            },
        )
        .unwrap();
        let share = WriteOptions {
            share_xattrs: true,
            ..opts()
        };
        let err = write_bootstrap(&tree, &[], &share).unwrap_err().to_string();
        assert!(err.contains("/f") && err.contains("more than"), "{err}");

        // Shared ids repeated in a crafted inode are refused by the reader: 60 shared entries
        // of 4,000 bytes (240 KB) are fine, 70 (280 KB) are not.
        let mut tree = Tree::default();
        for f in ["/f", "/g"] {
            let mut meta = Meta::default();
            for k in 0..60u8 {
                meta.xattrs
                    .insert(format!("user.{k:02}").into_bytes(), vec![k; 4000]);
            }
            meta.xattrs
                .insert(b"user.z".to_vec(), f.as_bytes().repeat(50));
            tree.insert(
                f.as_bytes(),
                Node {
                    meta,
                    kind: Kind::Fifo,
                },
            )
            .unwrap();
        }
        let mut bytes = write_bootstrap(&tree, &[], &share).unwrap();
        let off = {
            let b = Bootstrap::parse(&bytes).unwrap();
            let f = b.lookup(b"/f").unwrap().unwrap();
            assert_eq!(b.xattrs(&f).unwrap().len(), 61);
            f.offset as usize + f.inode.disk_size()
        };
        assert_eq!(bytes[off + 4], 60, "60 shared ids");
        bytes[off + 4] = 70;
        let first_id = [
            bytes[off + 12],
            bytes[off + 13],
            bytes[off + 14],
            bytes[off + 15],
        ];
        for k in 60..70 {
            let at = off + 12 + 4 * k;
            bytes[at..at + 4].copy_from_slice(&first_id);
        }
        let b = Bootstrap::parse(&bytes).unwrap();
        let f = b.lookup(b"/f").unwrap().unwrap();
        let err = b.xattrs(&f).unwrap_err().to_string();
        assert!(err.contains("more than 262144 bytes"), "{err}");
    }

    #[test]
    fn a_digest_at_two_indexes_of_one_blob_keeps_both_entries() {
        let mut tree = Tree::default();
        for (name, index) in [("/a", 0u32), ("/b", 1)] {
            let c = ChunkInfo {
                block_id: [9; 32],
                blob_index: 0,
                flags: BlobChunkFlags::HAS_CRC32,
                compressed_size: 10,
                uncompressed_size: 10,
                compressed_offset: u64::from(index) * 10,
                uncompressed_offset: u64::from(index) * u64::from(CS),
                file_offset: 0,
                index,
                crc32: 1,
            };
            tree.insert(
                name.as_bytes(),
                Node {
                    meta: Meta::default(),
                    kind: Kind::File {
                        size: 10,
                        chunks: vec![c],
                    },
                },
            )
            .unwrap();
        }
        let bytes = write_bootstrap(&tree, &[blob(2)], &opts()).unwrap();
        let b = Bootstrap::parse(&bytes).unwrap();
        assert_eq!(b.chunk_info_count(), 2);
        let back = b.to_tree().unwrap();
        for (name, index) in [(&b"/a"[..], 0), (b"/b", 1)] {
            let Kind::File { chunks, .. } = &back.node(back.lookup(name).unwrap()).kind else {
                panic!("not a file")
            };
            assert_eq!(chunks[0].index, index);
        }
    }
}
