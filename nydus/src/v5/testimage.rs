//! Builds RAFS v5 images by hand for the tests, numbered and laid out the way nydus-image does
//! (`Bootstrap::build_rafs` and `v5_dump`): the root is inode 1; a directory's children get
//! consecutive numbers, then its subdirectories are numbered in turn; records are written in
//! DFS pre-order after the tables.

use std::collections::{BTreeMap, HashMap};

use crate::v5::layout::{
    encode_blob_table, encode_inode_table, encode_prefetch_table, encode_xattrs, BlobEntryV5,
    ExtBlobEntryV5, InodeFlagsV5, InodeV5, SuperBlockV5, Xattr, RAFSV5_SUPERBLOCK_SIZE,
};
use crate::{BlobChunkFlags, BlobFeatures, ChunkInfo, RafsSuperFlags};

pub(crate) const MIB: u32 = 1 << 20;
pub(crate) const BLOB_A: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
pub(crate) const BLOB_B: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// One file or directory to put in an image.
#[derive(Debug, Clone, Default)]
pub(crate) struct TNode {
    pub name: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
    pub rdev: u32,
    pub size: u64,
    pub symlink: Vec<u8>,
    pub xattrs: Vec<Xattr>,
    pub chunks: Vec<ChunkInfo>,
    /// Nodes with the same group are names of one file (hard links).
    pub link_group: Option<u32>,
    /// Sorted by name.
    pub children: Vec<TNode>,
}

impl TNode {
    pub fn dir(name: &str, perm: u32, children: Vec<TNode>) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            mode: 0o040000 | perm,
            children,
            ..Self::default()
        }
    }

    pub fn file(name: &str, size: u64, chunks: Vec<ChunkInfo>) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            mode: 0o100644,
            size,
            chunks,
            ..Self::default()
        }
    }

    pub fn symlink(name: &str, target: &str) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            mode: 0o120777,
            size: target.len() as u64,
            symlink: target.as_bytes().to_vec(),
            ..Self::default()
        }
    }

    pub fn chardev(name: &str, rdev: u32) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            mode: 0o020666,
            rdev,
            ..Self::default()
        }
    }

    pub fn owner(self, uid: u32, gid: u32) -> Self {
        Self { uid, gid, ..self }
    }

    pub fn mtime(self, mtime: u64, mtime_nsec: u32) -> Self {
        Self {
            mtime,
            mtime_nsec,
            ..self
        }
    }

    pub fn xattrs(self, xattrs: &[(&str, &[u8])]) -> Self {
        Self {
            xattrs: xattrs
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
                .collect(),
            ..self
        }
    }

    pub fn link(self, group: u32) -> Self {
        Self {
            link_group: Some(group),
            ..self
        }
    }

    fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
}

/// Image-wide settings.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub flags: RafsSuperFlags,
    pub chunk_size: u32,
    pub blobs: Vec<BlobEntryV5>,
    /// Written when non-empty.
    pub ext: Vec<ExtBlobEntryV5>,
    pub prefetch: Vec<u32>,
}

/// Where a path's record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    /// Inode table number.
    pub ino: u64,
    /// Byte offset of the 128-byte inode.
    pub offset: usize,
}

/// A built image.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    pub bytes: Vec<u8>,
    pub sb: SuperBlockV5,
    /// Offset of the first inode record (the end of the tables).
    pub records_start: usize,
    /// Every path (`/`, `/a`, `/a/b`) and its record.
    pub records: BTreeMap<String, Record>,
}

impl Image {
    pub fn record(&self, path: &str) -> Record {
        self.records[path]
    }

    /// Overwrites a field of the inode at `path`.
    pub fn poke(&mut self, path: &str, field_offset: usize, bytes: &[u8]) {
        let at = self.record(path).offset + field_offset;
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

struct Flat<'t> {
    node: &'t TNode,
    path: String,
    /// Inode table number (differs from `inode.ino` for later names of a hard link).
    index: u64,
    inode: InodeV5,
    children: Vec<usize>,
}

fn flatten<'t>(node: &'t TNode, path: String, out: &mut Vec<Flat<'t>>) -> usize {
    let id = out.len();
    out.push(Flat {
        node,
        path: path.clone(),
        index: 0,
        inode: InodeV5::default(),
        children: Vec::new(),
    });
    assert!(
        node.children.windows(2).all(|w| w[0].name < w[1].name),
        "children of {path} must be sorted"
    );
    for c in &node.children {
        let name = String::from_utf8(c.name.clone()).unwrap();
        let child_path = if path == "/" {
            format!("/{name}")
        } else {
            format!("{path}/{name}")
        };
        let cid = flatten(c, child_path, out);
        out[id].children.push(cid);
    }
    id
}

/// Numbers the children of `dir` and then its subdirectories, as `build_rafs` does.
fn number(
    flats: &mut [Flat<'_>],
    dir: usize,
    next: &mut u64,
    groups: &mut HashMap<u32, Vec<usize>>,
) {
    let children = flats[dir].children.clone();
    let parent = flats[dir].inode.ino;
    flats[dir].inode.child_index = *next as u32;
    flats[dir].inode.child_count = children.len() as u32;
    let mut subdirs = Vec::new();
    for &c in &children {
        let index = *next;
        *next += 1;
        flats[c].index = index;
        flats[c].inode.parent = parent;
        match flats[c].node.link_group {
            Some(g) if groups.contains_key(&g) => {
                let members = groups.get_mut(&g).unwrap();
                members.push(c);
                let first = flats[members[0]].inode.ino;
                flats[c].inode.ino = first;
                let nlink = members.len() as u32;
                for &m in members.iter() {
                    flats[m].inode.nlink = nlink;
                }
            }
            group => {
                flats[c].inode.ino = index;
                flats[c].inode.nlink = 1;
                if let Some(g) = group {
                    groups.insert(g, vec![c]);
                }
            }
        }
        if flats[c].node.is_dir() {
            subdirs.push(c);
        }
    }
    flats[dir].inode.nlink = 2 + subdirs.len() as u32;
    for d in subdirs {
        number(flats, d, next, groups);
    }
}

/// Builds the image of `root` with `opts`.
pub(crate) fn build(root: &TNode, opts: &Options) -> Image {
    assert!(root.is_dir());
    let mut flats = Vec::new();
    flatten(root, "/".into(), &mut flats);
    flats[0].inode.ino = 1;
    flats[0].index = 1;
    let mut next = 2;
    number(&mut flats, 0, &mut next, &mut HashMap::new());
    let entries = next - 1;

    let blob_table = encode_blob_table(&opts.blobs).unwrap();
    let prefetch = encode_prefetch_table(&opts.prefetch);
    let inode_table_len = (entries as usize * 4).next_multiple_of(8);
    let prefetch_offset = RAFSV5_SUPERBLOCK_SIZE + inode_table_len;
    let blob_offset = prefetch_offset + prefetch.len();
    let ext_offset = blob_offset + blob_table.len();
    let records_start = ext_offset + opts.ext.len() * ExtBlobEntryV5::SIZE;

    // Records in DFS pre-order, which is the flattening order.
    let mut records = Vec::new();
    let mut offsets = vec![0u64; entries as usize];
    let mut paths = BTreeMap::new();
    for f in &flats {
        let n = f.node;
        let offset = records_start + records.len();
        let index = f.index;
        offsets[index as usize - 1] = offset as u64;
        paths.insert(f.path.clone(), Record { ino: index, offset });
        let name: &[u8] = if f.path == "/" { b"/" } else { &n.name };
        let xattrs = encode_xattrs(&n.xattrs).unwrap();
        let xattr_pairs_padded = xattrs.len().saturating_sub(8) as u64;
        let size = if n.is_dir() {
            let d: u64 = n.children.iter().map(|c| c.name.len() as u64 + 8).sum();
            if d == 0 {
                4096
            } else {
                d.next_multiple_of(4096)
            }
        } else {
            n.size
        };
        let mut flags = InodeFlagsV5::empty();
        if !n.xattrs.is_empty() {
            flags = flags | InodeFlagsV5::XATTR;
        }
        if !n.symlink.is_empty() {
            flags = flags | InodeFlagsV5::SYMLINK;
        }
        if !n.is_dir() && f.inode.nlink > 1 {
            flags = flags | InodeFlagsV5::HARDLINK;
        }
        let inode = InodeV5 {
            digest: [index as u8; 32],
            uid: n.uid,
            gid: n.gid,
            mode: n.mode,
            size,
            blocks: (size + xattr_pairs_padded).div_ceil(512),
            flags,
            child_count: if n.is_dir() {
                f.inode.child_count
            } else {
                n.chunks.len() as u32
            },
            name_size: name.len() as u16,
            symlink_size: n.symlink.len() as u16,
            rdev: n.rdev,
            mtime: n.mtime,
            mtime_nsec: n.mtime_nsec,
            ..f.inode
        };
        records.extend_from_slice(&inode.to_bytes());
        for part in [name, &n.symlink[..]] {
            records.extend_from_slice(part);
            records.resize(records.len().next_multiple_of(8), 0);
        }
        records.extend_from_slice(&xattrs);
        for c in &n.chunks {
            records.extend_from_slice(&c.to_bytes());
        }
    }

    let sb = SuperBlockV5 {
        flags: opts.flags,
        block_size: opts.chunk_size,
        inodes_count: flats.iter().filter(|f| f.inode.ino == f.index).count() as u64,
        inode_table_offset: RAFSV5_SUPERBLOCK_SIZE as u64,
        inode_table_entries: entries as u32,
        prefetch_table_offset: prefetch_offset as u64,
        prefetch_table_entries: opts.prefetch.len() as u32,
        blob_table_offset: blob_offset as u64,
        blob_table_size: blob_table.len() as u32,
        extended_blob_table_offset: ext_offset as u64,
        extended_blob_table_entries: opts.ext.len() as u32,
        ..SuperBlockV5::new()
    };
    let mut bytes = sb.to_bytes().to_vec();
    bytes.extend_from_slice(&encode_inode_table(&offsets).unwrap());
    bytes.extend_from_slice(&prefetch);
    bytes.extend_from_slice(&blob_table);
    for e in &opts.ext {
        bytes.extend_from_slice(&e.to_bytes());
    }
    assert_eq!(bytes.len(), records_start);
    bytes.extend_from_slice(&records);
    Image {
        bytes,
        sb,
        records_start,
        records: paths,
    }
}

pub(crate) const FILE_SIZE: u64 = 3 * MIB as u64 / 2;
pub(crate) const F_SIZE: u64 = 100;
pub(crate) const LINK_TARGET: &str = "sub/deeper/f";
pub(crate) const DEV_RDEV: u32 = (1 << 8) | 3;

pub(crate) fn file_chunks() -> Vec<ChunkInfo> {
    let c = ChunkInfo {
        block_id: [0x11; 32],
        blob_index: 0,
        flags: BlobChunkFlags::COMPRESSED,
        compressed_size: 1000,
        uncompressed_size: MIB,
        ..ChunkInfo::default()
    };
    vec![
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

pub(crate) fn f_chunks() -> Vec<ChunkInfo> {
    vec![ChunkInfo {
        block_id: [0x33; 32],
        blob_index: 1,
        flags: BlobChunkFlags::HAS_CRC32,
        compressed_size: F_SIZE as u32,
        uncompressed_size: F_SIZE as u32,
        crc32: 0xdead_beef,
        ..ChunkInfo::default()
    }]
}

pub(crate) fn file_xattrs() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("security.capability", &[1, 0, 0, 2, 0x20, 0, 0, 0]),
        ("user.x", b"hello"),
    ]
}

/// The sample tree:
///
/// ```text
/// /                   dir 0755                              ino 1
/// /dev0               char device 1:3                       ino 2
/// /file               1.5 MiB, 2 chunks, 2 xattrs, linked   ino 3
/// /link -> sub/deeper/f                                     ino 4
/// /sub                dir 0700, uid/gid 1000                ino 5
/// /sub/deeper         dir                                   ino 6
/// /sub/deeper/f       100 bytes, 1 chunk in blob 1          ino 9
/// /sub/empty          empty file                            ino 7
/// /sub/hard           second name of /file (i_ino 3)        ino 8
/// ```
pub(crate) fn sample_tree() -> TNode {
    let file = TNode::file("file", FILE_SIZE, file_chunks())
        .owner(1000, 1000)
        .mtime(1_700_000_000, 123)
        .xattrs(&file_xattrs())
        .link(1);
    let hard = TNode {
        name: b"hard".to_vec(),
        ..file.clone()
    };
    TNode::dir(
        "/",
        0o755,
        vec![
            TNode::chardev("dev0", DEV_RDEV),
            file,
            TNode::symlink("link", LINK_TARGET),
            TNode::dir(
                "sub",
                0o700,
                vec![
                    TNode::dir(
                        "deeper",
                        0o755,
                        vec![TNode::file("f", F_SIZE, f_chunks()).mtime(5, 6)],
                    ),
                    TNode::file("empty", 0, vec![]),
                    hard,
                ],
            )
            .owner(1000, 1000)
            .xattrs(&[("user.dir", b"1")]),
        ],
    )
}

pub(crate) fn sample_options() -> Options {
    Options {
        flags: RafsSuperFlags::COMPRESSION_ZSTD
            | RafsSuperFlags::HASH_BLAKE3
            | RafsSuperFlags::EXPLICIT_UID_GID
            | RafsSuperFlags::HAS_XATTR,
        chunk_size: MIB,
        blobs: vec![
            BlobEntryV5 {
                readahead_offset: 0,
                readahead_size: 1500,
                blob_id: BLOB_A.into(),
            },
            BlobEntryV5 {
                readahead_offset: 0,
                readahead_size: 0,
                blob_id: BLOB_B.into(),
            },
        ],
        ext: vec![
            ExtBlobEntryV5 {
                chunk_count: 2,
                features: BlobFeatures::CAP_TAR_TOC,
                uncompressed_size: 3 * u64::from(MIB) / 2,
                compressed_size: 1500,
            },
            ExtBlobEntryV5 {
                chunk_count: 1,
                features: BlobFeatures::CAP_TAR_TOC | BlobFeatures::HAS_TOC,
                uncompressed_size: F_SIZE,
                compressed_size: F_SIZE,
            },
        ],
        prefetch: vec![3, 5],
    }
}

pub(crate) fn sample() -> Image {
    build(&sample_tree(), &sample_options())
}
