//! An in-memory filesystem tree: what a layer or an image holds, independent of its on-disk form.
//!
//! The builder fills a [`Tree`] from a directory or a layer tar (file data already written to a
//! blob, so regular files hold [`ChunkInfo`]s, never bytes), the RAFS reader fills one from a
//! bootstrap, and the v6 writer turns one into a bootstrap. [`Tree::apply_layer`] stacks a layer on
//! top of another with the OCI whiteout rules, which is what `merge` and `--parent-bootstrap` do.
//!
//! Nodes live in an arena; a directory maps names to node ids, and hardlinks are several names
//! for one node id (never a directory).

use std::collections::{BTreeMap, HashMap};

use crate::ChunkInfo;

/// Index of a node in its [`Tree`].
pub type NodeId = usize;

/// OCI whiteout prefix: `.wh.name` deletes `name` from the layers below.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// OCI opaque marker: a directory holding it hides everything the layers below put there.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// `S_IFMT` and the file type bits.
pub mod mode {
    /// Mask of the file type bits.
    pub const S_IFMT: u32 = 0o170000;
    /// Socket.
    pub const S_IFSOCK: u32 = 0o140000;
    /// Symbolic link.
    pub const S_IFLNK: u32 = 0o120000;
    /// Regular file.
    pub const S_IFREG: u32 = 0o100000;
    /// Block device.
    pub const S_IFBLK: u32 = 0o060000;
    /// Directory.
    pub const S_IFDIR: u32 = 0o040000;
    /// Character device.
    pub const S_IFCHR: u32 = 0o020000;
    /// FIFO.
    pub const S_IFIFO: u32 = 0o010000;
}

/// What a node is, with its type-specific payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory: children by name, sorted bytewise.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    /// A regular file of `size` bytes stored as `chunks` (in file order; empty for an empty file).
    File { size: u64, chunks: Vec<ChunkInfo> },
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
    /// A character device with its `rdev` (Linux `new_encode_dev` form).
    CharDev(u32),
    /// A block device with its `rdev`.
    BlockDev(u32),
    /// A FIFO.
    Fifo,
    /// A unix socket.
    Socket,
}

impl Kind {
    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(&self) -> u32 {
        match self {
            Kind::Dir(_) => mode::S_IFDIR,
            Kind::File { .. } => mode::S_IFREG,
            Kind::Symlink(_) => mode::S_IFLNK,
            Kind::CharDev(_) => mode::S_IFCHR,
            Kind::BlockDev(_) => mode::S_IFBLK,
            Kind::Fifo => mode::S_IFIFO,
            Kind::Socket => mode::S_IFSOCK,
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self, Kind::Dir(_))
    }
}

/// Ownership, permissions, times and xattrs of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits (`0o7777`); the type bits come from [`Kind`].
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch (negative times are stored as 0).
    pub mtime: u64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// Extended attributes by full name (`user.x`, `security.capability`, ...).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Meta {
    /// A directory's metadata as Docker and Nydus create implied parents: 0755, root, time 0.
    pub fn implied_dir() -> Self {
        Meta {
            perm: 0o755,
            ..Meta::default()
        }
    }
}

/// One file, directory or special file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Metadata.
    pub meta: Meta,
    /// Type and payload.
    pub kind: Kind,
}

impl Node {
    /// The full `st_mode` (type bits and permissions).
    pub fn mode(&self) -> u32 {
        self.kind.type_bits() | (self.meta.perm & 0o7777)
    }
}

/// Errors building or changing a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// A path component is empty, `.`, `..`, contains NUL or is longer than 255 bytes.
    #[error("invalid path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    /// A path goes through something that is not a directory.
    #[error("{path:?}: a parent is not a directory")]
    NotADirectory { path: String },
    /// A hardlink names a target that does not exist or is a directory.
    #[error("hardlink {path:?} -> {target:?}: {reason}")]
    BadLink {
        path: String,
        target: String,
        reason: &'static str,
    },
}

/// Printable form of a byte path for messages.
pub fn display(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// The path of `name` inside the directory at `parent` (`/` or empty for the root); empty
/// `parent` and `name` give the root, `/`.
pub fn child_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let parent = if parent == b"/" { &b""[..] } else { parent };
    [parent, b"/", name].concat()
}

/// Deepest path a tree holds, in components (the RAFS reader's walk limit too).
pub const MAX_DEPTH: usize = 256;

/// The components of `path` (leading `/` and `./` ignored, empty components skipped), checked:
/// no `..`, no NUL, names of at most 255 bytes, at most [`MAX_DEPTH`] components.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, TreeError> {
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        if c.is_empty() || c == b"." {
            continue;
        }
        let bad = |reason| TreeError::BadPath {
            path: display(path),
            reason,
        };
        if c == b".." {
            return Err(bad("'..' is not allowed"));
        }
        if c.contains(&0) {
            return Err(bad("NUL in a name"));
        }
        if c.len() > 255 {
            return Err(bad("a name is longer than 255 bytes"));
        }
        if out.len() == MAX_DEPTH {
            return Err(bad("deeper than 256 levels"));
        }
        out.push(c);
    }
    Ok(out)
}

/// A filesystem tree. Node 0 is the root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new(Meta::implied_dir())
    }
}

impl Tree {
    /// The root node's id.
    pub const ROOT: NodeId = 0;

    /// A tree holding only a root directory with `meta`.
    pub fn new(meta: Meta) -> Self {
        Tree {
            nodes: vec![Node {
                meta,
                kind: Kind::Dir(BTreeMap::new()),
            }],
        }
    }

    /// The node `id`. Ids come from this tree, so this never fails for them.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// The node `id`, mutable.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id]
    }

    /// Number of nodes ever added (including ones no longer reachable).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Children of directory `id` (empty for other nodes).
    pub fn children(&self, id: NodeId) -> impl Iterator<Item = (&[u8], NodeId)> {
        let map = match &self.nodes[id].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        };
        map.into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_slice(), *v)))
    }

    /// The node at `path`, if any.
    pub fn lookup(&self, path: &[u8]) -> Option<NodeId> {
        let mut cur = Self::ROOT;
        for c in components(path).ok()? {
            match &self.nodes[cur].kind {
                Kind::Dir(children) => cur = *children.get(c)?,
                _ => return None,
            }
        }
        Some(cur)
    }

    /// Adds a node and returns its id without linking it anywhere.
    pub fn add_node(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The directory that will hold `path`'s last component, creating missing parents with
    /// [`Meta::implied_dir`]; and that component. Fails on the root path.
    fn parent_for<'p>(&mut self, path: &'p [u8]) -> Result<(NodeId, &'p [u8]), TreeError> {
        let comps = components(path)?;
        let Some((last, dirs)) = comps.split_last() else {
            return Err(TreeError::BadPath {
                path: display(path),
                reason: "names the root",
            });
        };
        let mut cur = Self::ROOT;
        for c in dirs {
            let next = match &self.nodes[cur].kind {
                Kind::Dir(children) => children.get(*c).copied(),
                _ => {
                    return Err(TreeError::NotADirectory {
                        path: display(path),
                    })
                }
            };
            cur = match next {
                Some(id) if self.nodes[id].kind.is_dir() => id,
                Some(_) => {
                    return Err(TreeError::NotADirectory {
                        path: display(path),
                    })
                }
                None => {
                    let id = self.add_node(Node {
                        meta: Meta::implied_dir(),
                        kind: Kind::Dir(BTreeMap::new()),
                    });
                    self.dir_mut(cur).insert(c.to_vec(), id);
                    id
                }
            };
        }
        Ok((cur, last))
    }

    fn dir_mut(&mut self, id: NodeId) -> &mut BTreeMap<Vec<u8>, NodeId> {
        match &mut self.nodes[id].kind {
            Kind::Dir(c) => c,
            _ => unreachable!("dir_mut on a non-directory is never called"),
        }
    }

    /// Puts `node` at `path`, creating missing parent directories. An existing entry is replaced,
    /// except that a directory put on an existing directory keeps the old one's children (tar
    /// streams may name a directory after its contents) and takes the new metadata.
    /// `path` naming the root sets the root's metadata.
    pub fn insert(&mut self, path: &[u8], node: Node) -> Result<NodeId, TreeError> {
        if components(path)?.is_empty() {
            if !node.kind.is_dir() {
                return Err(TreeError::BadPath {
                    path: display(path),
                    reason: "the root must be a directory",
                });
            }
            self.nodes[Self::ROOT].meta = node.meta;
            return Ok(Self::ROOT);
        }
        let (parent, name) = self.parent_for(path)?;
        if let Some(&old) = self.children_map(parent).get(name) {
            if self.nodes[old].kind.is_dir() && node.kind.is_dir() {
                self.nodes[old].meta = node.meta;
                return Ok(old);
            }
        }
        let id = self.add_node(node);
        self.dir_mut(parent).insert(name.to_vec(), id);
        Ok(id)
    }

    fn children_map(&self, id: NodeId) -> &BTreeMap<Vec<u8>, NodeId> {
        static EMPTY: BTreeMap<Vec<u8>, NodeId> = BTreeMap::new();
        match &self.nodes[id].kind {
            Kind::Dir(c) => c,
            _ => &EMPTY,
        }
    }

    /// Makes `path` another name for the node at `target` (a hardlink).
    pub fn link(&mut self, path: &[u8], target: &[u8]) -> Result<NodeId, TreeError> {
        let bad = |reason| TreeError::BadLink {
            path: display(path),
            target: display(target),
            reason,
        };
        let id = self.lookup(target).ok_or_else(|| bad("target not found"))?;
        self.link_id(path, id)
    }

    /// Makes `path` another name for node `id` (a hardlink); `id` must not be a directory.
    pub fn link_id(&mut self, path: &[u8], id: NodeId) -> Result<NodeId, TreeError> {
        if self.nodes.get(id).is_none_or(|n| n.kind.is_dir()) {
            return Err(TreeError::BadLink {
                path: display(path),
                target: format!("node {id}"),
                reason: "target is a directory or no node",
            });
        }
        let (parent, name) = self.parent_for(path)?;
        self.dir_mut(parent).insert(name.to_vec(), id);
        Ok(id)
    }

    /// Removes `path` (and everything below it) if it exists; returns whether it did.
    pub fn remove(&mut self, path: &[u8]) -> bool {
        let Ok(comps) = components(path) else {
            return false;
        };
        let Some((last, dirs)) = comps.split_last() else {
            return false;
        };
        let mut cur = Self::ROOT;
        for c in dirs {
            match self.children_map(cur).get(*c) {
                Some(&id) if self.nodes[id].kind.is_dir() => cur = id,
                _ => return false,
            }
        }
        self.dir_mut(cur).remove(*last).is_some()
    }

    /// Every reachable node once, parents before children, in breadth-first order (the order
    /// Nydus lays inodes out in), with the path of its first name. Hardlinked nodes appear once,
    /// at their first path in that order. Paths are made on demand ([`Order::path`]), so this
    /// takes memory for the nodes, not for their paths.
    pub fn bfs(&self) -> Order<'_> {
        let mut entries: Vec<(usize, &[u8], NodeId)> = vec![(0, b"", Self::ROOT)];
        let mut seen = vec![false; self.nodes.len()];
        seen[Self::ROOT] = true;
        let mut i = 0;
        while i < entries.len() {
            let id = entries[i].2;
            for (name, child) in self.children(id) {
                if !seen[child] {
                    seen[child] = true;
                    entries.push((i, name, child));
                }
            }
            i += 1;
        }
        Order { entries }
    }

    /// Every reachable name in depth-first pre-order (children sorted), hardlinks included:
    /// `(path, node id)`. The root comes first as `/`. Paths are made as the walk goes, so it
    /// holds one path at a time.
    pub fn walk(&self) -> Walk<'_> {
        Walk {
            tree: self,
            stack: Vec::new(),
            path: Vec::new(),
            started: false,
        }
    }

    /// Link count of every reachable node as the filesystem reports it: the number of names for
    /// files, `2 + subdirectories` for directories.
    pub fn nlinks(&self) -> HashMap<NodeId, u32> {
        let mut counts: HashMap<NodeId, u32> = HashMap::new();
        counts.insert(Self::ROOT, 2);
        for id in self.bfs().ids() {
            for (_, child) in self.children(id) {
                if self.nodes[child].kind.is_dir() {
                    counts.insert(child, 2);
                    *counts.entry(id).or_insert(2) += 1;
                } else {
                    *counts.entry(child).or_insert(0) += 1;
                }
            }
        }
        counts
    }

    /// Stacks `upper` (one layer, whiteouts included) on this tree with OCI semantics:
    /// `.wh.name` deletes `name` below, `.wh..wh..opq` hides everything the lower layers put in its
    /// directory, a directory on a directory merges (the upper metadata wins), anything else
    /// replaces. Whiteout entries do not appear in the result. Hardlinks inside `upper` stay
    /// hardlinks; a hardlink to a file of a lower layer (a [`LOWER_HARDLINK_XATTR`] placeholder)
    /// becomes another name of that file, and fails if no lower layer has it.
    pub fn apply_layer(&mut self, upper: &Tree) -> Result<(), TreeError> {
        // Lower-layer hardlinks name files as the lower layers left them, before this layer's
        // own entries replace or remove anything.
        let mut links: Vec<(Vec<u8>, NodeId)> = Vec::new();
        if upper.nodes.iter().any(|n| lower_hardlink_of(n).is_some()) {
            for (path, uid) in upper.walk() {
                let Some(target) = lower_hardlink_of(&upper.nodes[uid]) else {
                    continue;
                };
                let id = self
                    .lookup(target)
                    .filter(|id| !self.nodes[*id].kind.is_dir())
                    .ok_or_else(|| TreeError::BadLink {
                        path: display(&path),
                        target: display(target),
                        reason: "hardlink target is no file of a lower layer",
                    })?;
                links.push((path, id));
            }
        }
        let mut copied: HashMap<NodeId, NodeId> = HashMap::new();
        self.nodes[Self::ROOT].meta = upper.nodes[Tree::ROOT].meta.clone();
        self.merge_dir(Self::ROOT, upper, Tree::ROOT, &mut copied);
        for (path, id) in links {
            self.link_id(&path, id)?;
        }
        Ok(())
    }

    /// The target of node `id` if it stands for a hardlink to a file of a lower layer.
    pub fn lower_hardlink(&self, id: NodeId) -> Option<&[u8]> {
        self.nodes.get(id).and_then(lower_hardlink_of)
    }

    fn merge_dir(
        &mut self,
        lower_dir: NodeId,
        upper: &Tree,
        upper_dir: NodeId,
        copied: &mut HashMap<NodeId, NodeId>,
    ) {
        let up = upper.children_map(upper_dir);
        if up.contains_key(OPAQUE_MARKER) {
            self.dir_mut(lower_dir).clear();
        }
        for name in up.keys() {
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                if name.as_slice() != OPAQUE_MARKER {
                    self.dir_mut(lower_dir).remove(hidden);
                }
            }
        }
        for (name, &uid) in up {
            if name.starts_with(WHITEOUT_PREFIX) {
                continue;
            }
            let unode = &upper.nodes[uid];
            let existing = self.children_map(lower_dir).get(name).copied();
            match existing {
                Some(lid) if unode.kind.is_dir() && self.nodes[lid].kind.is_dir() => {
                    self.nodes[lid].meta = unode.meta.clone();
                    self.merge_dir(lid, upper, uid, copied);
                }
                _ => {
                    let id = self.copy_from(upper, uid, copied);
                    self.dir_mut(lower_dir).insert(name.clone(), id);
                }
            }
        }
    }

    /// Copies `upper`'s subtree at `uid` into this arena (whiteouts inside it dropped: a new
    /// directory has nothing below it to hide).
    fn copy_from(
        &mut self,
        upper: &Tree,
        uid: NodeId,
        copied: &mut HashMap<NodeId, NodeId>,
    ) -> NodeId {
        if let Some(&id) = copied.get(&uid) {
            return id;
        }
        let unode = &upper.nodes[uid];
        let kind = match &unode.kind {
            Kind::Dir(_) => Kind::Dir(BTreeMap::new()),
            other => other.clone(),
        };
        let id = self.add_node(Node {
            meta: unode.meta.clone(),
            kind,
        });
        copied.insert(uid, id);
        if unode.kind.is_dir() {
            for (name, &child) in upper.children_map(uid) {
                if name.starts_with(WHITEOUT_PREFIX) {
                    continue;
                }
                let cid = self.copy_from(upper, child, copied);
                self.dir_mut(id).insert(name.clone(), cid);
            }
        }
        id
    }

    /// Remaps the blob index of every chunk with `f` (used when blob tables are concatenated).
    pub fn map_blob_indexes(&mut self, f: impl Fn(u32) -> u32) {
        for node in &mut self.nodes {
            if let Kind::File { chunks, .. } = &mut node.kind {
                for c in chunks {
                    c.blob_index = f(c.blob_index);
                }
            }
        }
    }
}

/// Xattr of the placeholder a layer tar's hardlink to a file of a lower layer becomes in the
/// layer's own tree (the OCI image spec allows such links; the layer alone does not have the
/// file): an empty regular file whose xattr value is the link target. [`Tree::apply_layer`]
/// resolves it against the lower layers and reversing a layer writes it back as the tar
/// hardlink; it never reaches a merged image.
pub const LOWER_HARDLINK_XATTR: &[u8] = b"trusted.dragonfly-rs.lower-hardlink";

fn lower_hardlink_of(n: &Node) -> Option<&[u8]> {
    match &n.kind {
        Kind::File { size: 0, chunks } if chunks.is_empty() => {
            n.meta.xattrs.get(LOWER_HARDLINK_XATTR).map(Vec::as_slice)
        }
        _ => None,
    }
}

/// The nodes of a tree in breadth-first order; see [`Tree::bfs`].
pub struct Order<'a> {
    /// (index of the parent's entry, name, node); the root is entry 0 with an empty name.
    entries: Vec<(usize, &'a [u8], NodeId)>,
}

impl Order<'_> {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (never: the root is always there).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The node ids in order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.entries.iter().map(|e| e.2)
    }

    /// The path of entry `i` (`/` for the root).
    pub fn path(&self, i: usize) -> Vec<u8> {
        let mut names = Vec::new();
        let mut cur = i;
        while cur != 0 {
            let (parent, name, _) = self.entries[cur];
            names.push(name);
            cur = parent;
        }
        if names.is_empty() {
            return b"/".to_vec();
        }
        let mut out = Vec::new();
        for name in names.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(name);
        }
        out
    }

    /// `(path, node id)` of every entry, paths made one at a time.
    pub fn iter(&self) -> impl Iterator<Item = (Vec<u8>, NodeId)> + '_ {
        (0..self.entries.len()).map(|i| (self.path(i), self.entries[i].2))
    }
}

/// A depth-first walk over a tree's names; see [`Tree::walk`].
pub struct Walk<'a> {
    tree: &'a Tree,
    /// Per open directory: its remaining children and the length of its path.
    stack: Vec<(
        std::collections::btree_map::Iter<'a, Vec<u8>, NodeId>,
        usize,
    )>,
    path: Vec<u8>,
    started: bool,
}

impl Walk<'_> {
    fn open(&mut self, id: NodeId) {
        if let Kind::Dir(children) = &self.tree.nodes[id].kind {
            self.stack.push((children.iter(), self.path.len()));
        }
    }
}

impl Iterator for Walk<'_> {
    type Item = (Vec<u8>, NodeId);

    fn next(&mut self) -> Option<Self::Item> {
        if !self.started {
            self.started = true;
            self.path = b"/".to_vec();
            self.open(Tree::ROOT);
            return Some((self.path.clone(), Tree::ROOT));
        }
        loop {
            let (children, base) = self.stack.last_mut()?;
            let Some((name, &id)) = children.next() else {
                self.stack.pop();
                continue;
            };
            let base = *base;
            self.path.truncate(base);
            if base > 1 {
                self.path.push(b'/');
            }
            self.path.extend_from_slice(name);
            let out = (self.path.clone(), id);
            self.open(id);
            return Some(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> Node {
        Node {
            meta: Meta {
                perm: 0o644,
                ..Meta::default()
            },
            kind: Kind::File {
                size,
                chunks: Vec::new(),
            },
        }
    }

    fn dir() -> Node {
        Node {
            meta: Meta::implied_dir(),
            kind: Kind::Dir(BTreeMap::new()),
        }
    }

    fn names(t: &Tree) -> Vec<String> {
        t.walk().map(|(p, _)| display(&p)).collect()
    }

    fn placeholder(target: &str) -> Node {
        let mut n = file(0);
        n.meta
            .xattrs
            .insert(LOWER_HARDLINK_XATTR.to_vec(), target.as_bytes().to_vec());
        n
    }

    #[test]
    fn lower_hardlinks_name_the_lower_file_as_the_lower_layers_left_it() {
        let mut lower = Tree::default();
        let old = lower.insert(b"a", file(5)).unwrap();
        lower.insert(b"gone", file(3)).unwrap();
        // The upper layer links to `a`, then replaces `a` with a new file: the link keeps the
        // old one (as extracting the tar in order does).
        let mut upper = Tree::default();
        upper.insert(b"x", placeholder("a")).unwrap();
        upper.insert(b"a", file(9)).unwrap();
        lower.apply_layer(&upper).unwrap();
        assert_eq!(lower.lookup(b"x"), Some(old));
        assert_ne!(lower.lookup(b"a"), Some(old));
        assert_eq!(lower.lower_hardlink(old), None);
        // No such lower file, or a directory: an error naming both.
        for target in ["missing", "/"] {
            let mut upper = Tree::default();
            upper.insert(b"y", placeholder(target)).unwrap();
            let err = lower.clone().apply_layer(&upper).unwrap_err().to_string();
            assert!(err.contains("\"y\"") || err.contains("y"), "{err}");
            assert!(err.contains("lower layer"), "{err}");
        }
        // A file with data is never a placeholder, whatever its xattrs.
        let mut n = placeholder("a");
        n.kind = Kind::File {
            size: 1,
            chunks: Vec::new(),
        };
        assert!(lower_hardlink_of(&n).is_none());
    }

    #[test]
    fn insert_creates_parents_and_keeps_children_of_a_renamed_dir() {
        let mut t = Tree::default();
        t.insert(b"a/b/c", file(1)).unwrap();
        let mut m = dir();
        m.meta.perm = 0o700;
        t.insert(b"./a/", m).unwrap();
        assert_eq!(names(&t), ["/", "/a", "/a/b", "/a/b/c"]);
        assert_eq!(t.node(t.lookup(b"/a").unwrap()).meta.perm, 0o700);
        assert!(matches!(
            t.insert(b"a/b/c/d", file(1)),
            Err(TreeError::NotADirectory { .. })
        ));
        assert!(matches!(
            t.insert(b"a/../x", file(1)),
            Err(TreeError::BadPath { .. })
        ));
    }

    #[test]
    fn hardlinks_share_a_node_and_count_links() {
        let mut t = Tree::default();
        t.insert(b"d/f", file(3)).unwrap();
        t.link(b"g", b"d/f").unwrap();
        t.insert(b"d/e", dir()).unwrap();
        let n = t.nlinks();
        let f = t.lookup(b"d/f").unwrap();
        assert_eq!(t.lookup(b"g"), Some(f));
        assert_eq!(n[&f], 2);
        assert_eq!(n[&t.lookup(b"d").unwrap()], 3);
        assert_eq!(n[&Tree::ROOT], 3);
        assert_eq!(
            t.bfs().len(),
            4,
            "root, d, d/e and the hardlinked file once"
        );
        assert!(matches!(t.link(b"h", b"d"), Err(TreeError::BadLink { .. })));
    }

    #[test]
    fn layers_stack_with_oci_whiteouts_and_opaque_dirs() {
        let mut lower = Tree::default();
        for p in ["a/1", "a/2", "b/1", "c/keep", "d"] {
            lower.insert(p.as_bytes(), file(1)).unwrap();
        }
        let mut upper = Tree::default();
        upper.insert(b"a/.wh.1", file(0)).unwrap();
        upper.insert(b"a/3", file(2)).unwrap();
        upper.insert(b"b/.wh..wh..opq", file(0)).unwrap();
        upper.insert(b"b/2", file(2)).unwrap();
        upper.insert(b".wh.d", file(0)).unwrap();
        upper.insert(b"e/.wh.ghost", file(0)).unwrap();
        lower.apply_layer(&upper).unwrap();
        assert_eq!(
            names(&lower),
            ["/", "/a", "/a/2", "/a/3", "/b", "/b/2", "/c", "/c/keep", "/e"]
        );
    }

    #[test]
    fn a_file_replaces_a_directory_and_back() {
        let mut lower = Tree::default();
        lower.insert(b"x/y", file(1)).unwrap();
        lower.insert(b"z", file(1)).unwrap();
        let mut upper = Tree::default();
        upper.insert(b"x", file(5)).unwrap();
        upper.insert(b"z/w", file(5)).unwrap();
        upper.link(b"z/w2", b"z/w").unwrap();
        lower.apply_layer(&upper).unwrap();
        assert_eq!(names(&lower), ["/", "/x", "/z", "/z/w", "/z/w2"]);
        assert_eq!(lower.lookup(b"z/w"), lower.lookup(b"z/w2"));
    }

    #[test]
    fn paths_deeper_than_max_depth_are_refused() {
        let mut t = Tree::default();
        let deep = "/d".repeat(MAX_DEPTH);
        t.insert(deep.as_bytes(), file(1)).unwrap();
        let err = t
            .insert(format!("{deep}/x").as_bytes(), file(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("deeper than 256"), "{err}");
        assert_eq!(t.walk().count(), MAX_DEPTH + 1);
        let order = t.bfs();
        assert_eq!(order.path(order.len() - 1), deep.as_bytes());
    }

    #[test]
    fn walk_and_bfs_give_the_same_names_as_paths_made_by_hand() {
        let mut t = Tree::default();
        for p in ["/a/b/c", "/a/x", "/z", "/a/b/d"] {
            t.insert(p.as_bytes(), file(1)).unwrap();
        }
        t.link(b"/l", b"/a/x").unwrap();
        let walked: Vec<String> = t.walk().map(|(p, _)| display(&p)).collect();
        assert_eq!(
            walked,
            ["/", "/a", "/a/b", "/a/b/c", "/a/b/d", "/a/x", "/l", "/z"]
        );
        let order = t.bfs();
        let bfs: Vec<String> = order.iter().map(|(p, _)| display(&p)).collect();
        // Hardlinks once, at their first name in breadth-first order.
        assert_eq!(bfs, ["/", "/a", "/l", "/z", "/a/b", "/a/b/c", "/a/b/d"]);
    }
}
