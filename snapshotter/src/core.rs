//! The sans-IO core of the snapshotter: the snapshot tree (active, view and committed snapshots,
//! parent chains) with containerd's rules for each operation, the mounts a snapshot is served
//! with, how a layer is classified from its labels, and what `Cleanup` may delete. No clock, no
//! disk: operations run over a [`Records`] transaction (the redb store, or a map in tests) with
//! the time passed in, and return what the caller must do on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The kind of a snapshot (containerd's `snapshots.Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, made by `View`; cannot be committed.
    View,
    /// Writable, made by `Prepare`; committed by `Commit`.
    Active,
    /// Read-only, made by `Commit`; the parent of others.
    Committed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// One snapshot as stored, under its key (active, view) or name (committed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Names its directory (`snapshots/<id>`); kept when an active snapshot is committed.
    pub id: u64,
    pub kind: Kind,
    /// The committed snapshot it sits on ("" for none).
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub created: i64,
    pub updated: i64,
    /// Bytes and inodes of its own directory, measured when committed.
    pub size: i64,
    pub inodes: i64,
}

/// Why an operation was refused; each maps to one of containerd's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0:?}: not found")]
    NotFound(String),
    #[error("snapshot {0:?}: already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The metadata store failed.
    #[error("snapshot metadata: {0}")]
    Store(String),
}

/// The records of one transaction: everything an operation reads and writes.
pub trait Records {
    fn get(&self, key: &str) -> Result<Option<Record>, SnapshotError>;
    fn put(&mut self, key: &str, record: &Record) -> Result<(), SnapshotError>;
    fn delete(&mut self, key: &str) -> Result<(), SnapshotError>;
    /// Every record, by key.
    fn all(&self) -> Result<Vec<(String, Record)>, SnapshotError>;
    /// A fresh directory ID (never handed out before).
    fn next_id(&mut self) -> Result<u64, SnapshotError>;
}

/// Longest key or name accepted, and most labels, and longest label (containerd's limits:
/// 4096 bytes of keys and values per label).
const MAX_KEY: usize = 4096;
const MAX_LABELS: usize = 256;
const MAX_LABEL: usize = 4096;

fn check_key(what: &str, key: &str) -> Result<(), SnapshotError> {
    if key.is_empty() {
        return Err(SnapshotError::InvalidArgument(format!(
            "{what} is required"
        )));
    }
    if key.len() > MAX_KEY || key.contains('\0') {
        return Err(SnapshotError::InvalidArgument(format!(
            "{what} {:?} is longer than {MAX_KEY} bytes or holds a NUL",
            truncate(key)
        )));
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), SnapshotError> {
    if labels.len() > MAX_LABELS {
        return Err(SnapshotError::InvalidArgument(format!(
            "{} labels, at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() + v.len() > MAX_LABEL {
            return Err(SnapshotError::InvalidArgument(format!(
                "label {:?}: empty key or longer than {MAX_LABEL} bytes",
                truncate(k)
            )));
        }
    }
    Ok(())
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What a missing parent means and how to fix it: containerd still has the image's layers,
/// the snapshotter's metadata does not (it was lost). Removing the image drops containerd's
/// records of the layers (its GC then cleans up the directories here); pulling it again
/// unpacks them anew.
const LOST_PARENT_FIX: &str = "if containerd still lists it, the snapshotter's metadata lost \
    it: remove the image from containerd (`crictl rmi <image>`, or `ctr -n <namespace> images \
    rm <image>`) and pull it again";

/// Creates an active (`Prepare`) or view (`View`) snapshot `key` on `parent` ("" for none).
pub fn create(
    tx: &mut dyn Records,
    kind: Kind,
    key: &str,
    parent: &str,
    labels: BTreeMap<String, String>,
    now: i64,
) -> Result<Record, SnapshotError> {
    check_key("key", key)?;
    check_labels(&labels)?;
    if kind == Kind::Committed {
        return Err(SnapshotError::InvalidArgument(
            "snapshots are committed by Commit, not created so".into(),
        ));
    }
    if !parent.is_empty() {
        match tx.get(parent)? {
            None => {
                return Err(SnapshotError::NotFound(format!(
                    "{parent} (the parent of {key}; {LOST_PARENT_FIX})"
                )))
            }
            Some(p) if p.kind != Kind::Committed => {
                return Err(SnapshotError::InvalidArgument(format!(
                    "parent {parent:?} is not a committed snapshot"
                )))
            }
            Some(_) => {}
        }
    }
    if tx.get(key)?.is_some() {
        return Err(SnapshotError::AlreadyExists(key.to_string()));
    }
    let r = Record {
        id: tx.next_id()?,
        kind,
        parent: parent.to_string(),
        labels,
        created: now,
        updated: now,
        size: 0,
        inodes: 0,
    };
    tx.put(key, &r)?;
    Ok(r)
}

/// Commits active snapshot `key` as `name` with `labels` (its directory measured at `usage`).
pub fn commit(
    tx: &mut dyn Records,
    name: &str,
    key: &str,
    labels: BTreeMap<String, String>,
    usage: (i64, i64),
    now: i64,
) -> Result<Record, SnapshotError> {
    check_key("name", name)?;
    check_labels(&labels)?;
    let active = tx
        .get(key)?
        .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
    if active.kind != Kind::Active {
        return Err(SnapshotError::FailedPrecondition(format!(
            "snapshot {key:?} is {}, only an active one can be committed",
            active.kind.as_str()
        )));
    }
    if tx.get(name)?.is_some() {
        return Err(SnapshotError::AlreadyExists(name.to_string()));
    }
    let r = Record {
        kind: Kind::Committed,
        labels,
        created: now,
        updated: now,
        size: usage.0,
        inodes: usage.1,
        ..active
    };
    tx.delete(key)?;
    tx.put(name, &r)?;
    Ok(r)
}

/// Removes snapshot `key`; the removed record (its directory is the caller's to delete).
pub fn remove(tx: &mut dyn Records, key: &str) -> Result<Record, SnapshotError> {
    let r = tx
        .get(key)?
        .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
    if let Some((child, _)) = tx.all()?.into_iter().find(|(_, c)| c.parent == key) {
        return Err(SnapshotError::FailedPrecondition(format!(
            "cannot remove snapshot {key:?}: {child:?} sits on it"
        )));
    }
    tx.delete(key)?;
    Ok(r)
}

/// Updates the labels of `key` (containerd's `Update`): `paths` empty replaces them all;
/// `labels` replaces them all; `labels.<name>` sets or (absent from `labels`) removes one.
/// Anything else is refused.
pub fn update(
    tx: &mut dyn Records,
    key: &str,
    labels: BTreeMap<String, String>,
    paths: &[String],
    now: i64,
) -> Result<Record, SnapshotError> {
    let mut r = tx
        .get(key)?
        .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
    if paths.is_empty() {
        r.labels = labels;
    } else {
        for p in paths {
            if p == "labels" {
                r.labels = labels.clone();
            } else if let Some(name) = p.strip_prefix("labels.") {
                match labels.get(name) {
                    Some(v) => {
                        r.labels.insert(name.to_string(), v.clone());
                    }
                    None => {
                        r.labels.remove(name);
                    }
                }
            } else {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot update field {p:?} of a snapshot (only labels)"
                )));
            }
        }
    }
    check_labels(&r.labels)?;
    r.updated = now;
    tx.put(key, &r)?;
    Ok(r)
}

/// The IDs of `key`'s parents, nearest first.
pub fn parent_ids(tx: &dyn Records, record: &Record) -> Result<Vec<u64>, SnapshotError> {
    let mut ids = Vec::new();
    let mut seen = BTreeSet::new();
    let mut parent = record.parent.clone();
    while !parent.is_empty() {
        if !seen.insert(parent.clone()) {
            return Err(SnapshotError::Store(format!(
                "the parents of a snapshot loop at {parent:?}"
            )));
        }
        let p = tx.get(&parent)?.ok_or_else(|| {
            SnapshotError::FailedPrecondition(format!("parent {parent:?}: {LOST_PARENT_FIX}"))
        })?;
        ids.push(p.id);
        parent = p.parent;
    }
    Ok(ids)
}

/// The Nydus bootstrap layer under `record`, if its parents hold one: how many parents sit
/// above it (they stay overlay layers; it and everything below it are the RAFS mount), and the
/// bootstrap layer's record.
pub fn bootstrap_below(
    tx: &dyn Records,
    record: &Record,
) -> Result<Option<(usize, Record)>, SnapshotError> {
    let mut parent = record.parent.clone();
    let mut above = 0;
    let mut seen = BTreeSet::new();
    while !parent.is_empty() && seen.insert(parent.clone()) {
        let Some(p) = tx.get(&parent)? else {
            return Ok(None);
        };
        if is_bootstrap(&p) {
            return Ok(Some((above, p)));
        }
        above += 1;
        parent = p.parent;
    }
    Ok(None)
}

/// A mount as containerd takes it (`containerd.types.Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Where snapshot directories live: `<root>/snapshots/<id>/{fs,work}`.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn dir(&self, id: u64) -> PathBuf {
        self.snapshots().join(id.to_string())
    }
    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }
    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }
    /// Where the RAFS image whose bootstrap layer is snapshot `id` is mounted (one mount per
    /// image, shared by its containers).
    pub fn rafs(&self, id: u64) -> PathBuf {
        self.root.join("rafs").join(id.to_string())
    }
    /// The bootstrap file in bootstrap layer `id` (as the layer's tar holds it).
    pub fn bootstrap(&self, id: u64) -> PathBuf {
        self.fs(id).join("image").join("image.boot")
    }
}

/// The mounts of a snapshot of `kind` with directory `id` on parents `parents` (nearest
/// first), as containerd's overlayfs snapshotter returns them: no parent, a bind mount of its
/// own directory (read-only for a view); a view on one parent, a read-only bind of the parent;
/// otherwise an overlay of the parents (and, when active, its own upper and work directories).
/// `lowest` replaces the lowest layer (a Nydus image's RAFS mount under its bootstrap layer).
pub fn mounts(
    layout: &Layout,
    kind: Kind,
    id: u64,
    parents: &[u64],
    lowest: Option<(usize, &Path)>,
    index_off: bool,
) -> Vec<Mount> {
    let path = |p: &Path| p.display().to_string();
    let mut lowers: Vec<String> = parents.iter().map(|p| path(&layout.fs(*p))).collect();
    if let Some((at, mnt)) = lowest {
        // The lowest `at` layers (the bootstrap layer and the blob layers below it) are the
        // RAFS mount.
        lowers.truncate(at);
        lowers.push(path(mnt));
    }
    if lowers.is_empty() {
        let ro = if kind == Kind::View { "ro" } else { "rw" };
        return vec![Mount {
            kind: "bind".into(),
            source: path(&layout.fs(id)),
            options: vec![ro.into(), "rbind".into()],
        }];
    }
    if kind != Kind::Active && lowers.len() == 1 {
        return vec![Mount {
            kind: "bind".into(),
            source: lowers.remove(0),
            options: vec!["ro".into(), "rbind".into()],
        }];
    }
    let mut options = Vec::new();
    if index_off {
        options.push("index=off".to_string());
    }
    if kind == Kind::Active {
        options.push(format!("workdir={}", path(&layout.work(id))));
        options.push(format!("upperdir={}", path(&layout.fs(id))));
    }
    options.push(format!("lowerdir={}", lowers.join(":")));
    vec![Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options,
    }]
}

/// Labels containerd and nydus-snapshotter use.
pub mod labels {
    /// On a layer-unpack `Prepare`: the chain ID the layer is committed as.
    pub const TARGET_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
    /// The image reference, from CRI.
    pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
    /// The layer's digest, from CRI.
    pub const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
    /// A Nydus data blob layer (the annotation of the layer, as a label).
    pub const NYDUS_BLOB: &str = "containerd.io/snapshot/nydus-blob";
    /// A Nydus bootstrap (metadata) layer.
    pub const NYDUS_BOOTSTRAP: &str = "containerd.io/snapshot/nydus-bootstrap";
}

/// What a `Prepare` is for, from its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// A Nydus blob layer: committed at once as `target`, so containerd never fetches it.
    NydusBlob { target: String },
    /// A layer containerd unpacks (an OCI layer, or a Nydus bootstrap layer).
    Unpack,
    /// A container's root filesystem (no target: nothing is unpacked into it).
    Container,
}

/// Classifies a `Prepare` as nydus-snapshotter does.
pub fn purpose(labels: &BTreeMap<String, String>) -> Purpose {
    match labels.get(labels::TARGET_SNAPSHOT_REF) {
        None => Purpose::Container,
        Some(target) if is_true(labels.get(labels::NYDUS_BLOB)) => Purpose::NydusBlob {
            target: target.clone(),
        },
        Some(_) => Purpose::Unpack,
    }
}

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| v == "true")
}

/// Whether a committed snapshot holds a Nydus bootstrap layer (its labels say so).
pub fn is_bootstrap(r: &Record) -> bool {
    is_true(r.labels.get(labels::NYDUS_BOOTSTRAP))
}

/// Which directories under `snapshots/` `Cleanup` may delete: those whose name is not the ID
/// of any record (directories of snapshots removed while their deletion failed, or made by a
/// `Prepare` that died before its record was written). Anything that is not a number is left.
pub fn orphans(records: &[(String, Record)], dirs: &[String]) -> Vec<u64> {
    let ids: BTreeSet<u64> = records.iter().map(|(_, r)| r.id).collect();
    dirs.iter()
        .filter_map(|d| d.parse::<u64>().ok().filter(|n| n.to_string() == *d))
        .filter(|id| !ids.contains(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Mem {
        map: BTreeMap<String, Record>,
        next: u64,
    }

    impl Records for Mem {
        fn get(&self, key: &str) -> Result<Option<Record>, SnapshotError> {
            Ok(self.map.get(key).cloned())
        }
        fn put(&mut self, key: &str, r: &Record) -> Result<(), SnapshotError> {
            self.map.insert(key.into(), r.clone());
            Ok(())
        }
        fn delete(&mut self, key: &str) -> Result<(), SnapshotError> {
            self.map.remove(key);
            Ok(())
        }
        fn all(&self) -> Result<Vec<(String, Record)>, SnapshotError> {
            Ok(self.map.clone().into_iter().collect())
        }
        fn next_id(&mut self) -> Result<u64, SnapshotError> {
            self.next += 1;
            Ok(self.next)
        }
    }

    fn no_labels() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn prepare_commit_view_remove_follow_containerds_rules() {
        let mut m = Mem::default();
        let a = create(&mut m, Kind::Active, "a", "", no_labels(), 1).unwrap();
        assert_eq!((a.id, a.kind), (1, Kind::Active));
        // The same key again; a missing parent; an active parent.
        assert!(matches!(
            create(&mut m, Kind::Active, "a", "", no_labels(), 2),
            Err(SnapshotError::AlreadyExists(_))
        ));
        assert!(matches!(
            create(&mut m, Kind::Active, "b", "nope", no_labels(), 2),
            Err(SnapshotError::NotFound(_))
        ));
        assert!(matches!(
            create(&mut m, Kind::Active, "b", "a", no_labels(), 2),
            Err(SnapshotError::InvalidArgument(_))
        ));
        // Commit keeps the ID; the key is gone, the name is committed.
        let c = commit(&mut m, "layer1", "a", no_labels(), (10, 2), 3).unwrap();
        assert_eq!((c.id, c.kind, c.size), (1, Kind::Committed, 10));
        assert!(m.get("a").unwrap().is_none());
        assert!(matches!(
            commit(&mut m, "layer1", "layer1", no_labels(), (0, 0), 4),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        let v = create(&mut m, Kind::View, "v", "layer1", no_labels(), 4).unwrap();
        assert!(matches!(
            commit(&mut m, "x", "v", no_labels(), (0, 0), 5),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        // A parent with children stays.
        assert!(matches!(
            remove(&mut m, "layer1"),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        assert_eq!(remove(&mut m, "v").unwrap().id, v.id);
        remove(&mut m, "layer1").unwrap();
        assert!(matches!(
            remove(&mut m, "layer1"),
            Err(SnapshotError::NotFound(_))
        ));
        // Bad keys and labels.
        assert!(matches!(
            create(&mut m, Kind::Active, "", "", no_labels(), 6),
            Err(SnapshotError::InvalidArgument(_))
        ));
        let big: BTreeMap<_, _> = [("k".to_string(), "v".repeat(5000))].into();
        assert!(matches!(
            create(&mut m, Kind::Active, "big", "", big, 6),
            Err(SnapshotError::InvalidArgument(_))
        ));
    }

    #[test]
    fn update_changes_labels_only() {
        let mut m = Mem::default();
        let l: BTreeMap<_, _> =
            [("a".to_string(), "1".to_string()), ("b".into(), "2".into())].into();
        create(&mut m, Kind::Active, "k", "", l, 1).unwrap();
        let new: BTreeMap<_, _> = [("a".to_string(), "9".to_string())].into();
        let r = update(
            &mut m,
            "k",
            new.clone(),
            &["labels.a".into(), "labels.b".into()],
            2,
        )
        .unwrap();
        assert_eq!(r.labels, new);
        assert_eq!(r.updated, 2);
        assert!(matches!(
            update(&mut m, "k", new.clone(), &["parent".into()], 3),
            Err(SnapshotError::InvalidArgument(_))
        ));
        let r = update(&mut m, "k", no_labels(), &[], 4).unwrap();
        assert!(r.labels.is_empty());
        assert!(matches!(
            update(&mut m, "nope", no_labels(), &[], 4),
            Err(SnapshotError::NotFound(_))
        ));
    }

    #[test]
    fn mounts_are_those_of_containerds_overlayfs_snapshotter() {
        let l = Layout {
            root: PathBuf::from("/r"),
        };
        let m = mounts(&l, Kind::Active, 1, &[], None, false);
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].source, "/r/snapshots/1/fs");
        assert_eq!(m[0].options, ["rw", "rbind"]);
        let m = mounts(&l, Kind::View, 3, &[2], None, false);
        assert_eq!(
            (m[0].kind.as_str(), m[0].source.as_str()),
            ("bind", "/r/snapshots/2/fs")
        );
        assert_eq!(m[0].options, ["ro", "rbind"]);
        let m = mounts(&l, Kind::Active, 4, &[3, 2], None, true);
        assert_eq!(m[0].kind, "overlay");
        assert_eq!(
            m[0].options,
            [
                "index=off",
                "workdir=/r/snapshots/4/work",
                "upperdir=/r/snapshots/4/fs",
                "lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs"
            ]
        );
        let m = mounts(&l, Kind::View, 5, &[3, 2], None, false);
        assert_eq!(
            m[0].options,
            ["lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs"]
        );
        // A Nydus image: the bootstrap layer (1 from the top here) and below are the RAFS mount.
        let rafs = Path::new("/mnt/rafs");
        let m = mounts(&l, Kind::Active, 9, &[8, 7, 6], Some((1, rafs)), false);
        assert_eq!(
            m[0].options.last().unwrap(),
            "lowerdir=/r/snapshots/8/fs:/mnt/rafs"
        );
        let m = mounts(&l, Kind::Active, 9, &[7, 6], Some((0, rafs)), false);
        assert_eq!(m[0].options.last().unwrap(), "lowerdir=/mnt/rafs");
    }

    #[test]
    fn parents_are_walked_nearest_first_and_a_missing_one_says_what_to_do() {
        let mut m = Mem::default();
        create(&mut m, Kind::Active, "a", "", no_labels(), 1).unwrap();
        commit(&mut m, "l1", "a", no_labels(), (0, 0), 1).unwrap();
        create(&mut m, Kind::Active, "b", "l1", no_labels(), 1).unwrap();
        commit(&mut m, "l2", "b", no_labels(), (0, 0), 1).unwrap();
        let c = create(&mut m, Kind::Active, "c", "l2", no_labels(), 1).unwrap();
        assert_eq!(parent_ids(&m, &c).unwrap(), [2, 1]);
        m.map.remove("l1");
        let e = parent_ids(&m, &c).unwrap_err();
        assert!(
            e.to_string().contains("\"l1\"") && e.to_string().contains("crictl rmi"),
            "{e}"
        );
    }

    #[test]
    fn layers_are_classified_by_their_labels() {
        let l = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(purpose(&l(&[])), Purpose::Container);
        assert_eq!(
            purpose(&l(&[(labels::TARGET_SNAPSHOT_REF, "sha256:c")])),
            Purpose::Unpack
        );
        assert_eq!(
            purpose(&l(&[
                (labels::TARGET_SNAPSHOT_REF, "sha256:c"),
                (labels::NYDUS_BLOB, "true")
            ])),
            Purpose::NydusBlob {
                target: "sha256:c".into()
            }
        );
        assert_eq!(
            purpose(&l(&[
                (labels::TARGET_SNAPSHOT_REF, "sha256:c"),
                (labels::NYDUS_BOOTSTRAP, "true")
            ])),
            Purpose::Unpack
        );
    }

    #[test]
    fn cleanup_deletes_only_numbered_directories_no_record_owns() {
        let mut m = Mem::default();
        create(&mut m, Kind::Active, "a", "", no_labels(), 1).unwrap();
        let dirs: Vec<String> = ["1", "2", "07", "x", "3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(orphans(&m.all().unwrap(), &dirs), [2, 3]);
    }
}
