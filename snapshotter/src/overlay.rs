//! The snapshotter over a directory: containerd's overlayfs snapshotter's behaviour for plain
//! OCI layers (a directory per snapshot, bind and overlay mounts, disk usage), and Nydus blob
//! layers committed without a download. Metadata in [`Store`]; directories
//! `<root>/snapshots/<id>/{fs,work}`, named only by numeric IDs (keys and labels never become
//! paths).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::core::{self, Kind, Layout, Mount, Purpose, Record, SnapshotError};
use crate::filter::{listed, Filter};
use crate::service::{Info, Rafs, Snapshotter};
use crate::store::Store;

/// Snapshots in directories under one root.
pub struct Overlay {
    layout: Layout,
    store: Arc<Store>,
    /// `index=off` on overlay mounts (the kernel has the option), as containerd does.
    index_off: bool,
    /// Mounts Nydus images; without it, containers of Nydus images are refused.
    rafs: Option<Arc<dyn Rafs>>,
    /// Held while a container's snapshot is created and its image mounted, and while one is
    /// removed and its image maybe unmounted: an image is never unmounted under a container
    /// that is being created on it.
    rafs_lock: tokio::sync::Mutex<()>,
    /// Where to abort the process (tests).
    #[cfg(feature = "fault-injection")]
    abort_at: Option<AbortAt>,
}

/// A point of an operation where a test build (feature `fault-injection`) can abort the
/// process, leaving what a `kill -9` at that moment leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AbortAt {
    /// Prepare/View: the snapshot's directories made, its record not yet committed.
    Prepare,
    /// Commit: the usage measured, the committed record not yet written.
    Commit,
    /// Remove: the record removed, the directories not yet.
    Remove,
}

/// Aborts the process if `at` is where the test asked for it.
fn checkpoint(abort_at: Option<AbortAt>, at: AbortAt) {
    if cfg!(feature = "fault-injection") && abort_at == Some(at) {
        tracing::error!(?at, "fault injection: aborting the process");
        std::process::abort();
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn io(what: &str, path: &Path, e: std::io::Error) -> SnapshotError {
    SnapshotError::Store(format!("{what} {}: {e}", path.display()))
}

fn info(name: String, r: Record) -> Info {
    Info {
        name,
        parent: r.parent,
        kind: r.kind,
        labels: r.labels,
        created: r.created,
        updated: r.updated,
    }
}

/// Runs blocking disk and database work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, SnapshotError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SnapshotError::Store(format!("worker: {e}")))?
}

impl Overlay {
    /// The snapshotter rooted at `root` (created if missing; metadata in `root/metadata.redb`).
    pub fn open(root: &Path) -> Result<Overlay, SnapshotError> {
        let layout = Layout {
            root: root.to_path_buf(),
        };
        std::fs::create_dir_all(layout.snapshots())
            .map_err(|e| io("creating", &layout.snapshots(), e))?;
        let store = Store::open(&root.join("metadata.redb"))?;
        Ok(Overlay {
            layout,
            store: Arc::new(store),
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
            rafs: None,
            rafs_lock: tokio::sync::Mutex::new(()),
            #[cfg(feature = "fault-injection")]
            abort_at: None,
        })
    }

    /// Aborts the process at `at` (tests: what a `kill -9` at that moment leaves).
    #[cfg(feature = "fault-injection")]
    pub fn with_abort_at(mut self, at: Option<AbortAt>) -> Self {
        self.abort_at = at;
        self
    }

    fn abort_at(&self) -> Option<AbortAt> {
        #[cfg(feature = "fault-injection")]
        return self.abort_at;
        #[cfg(not(feature = "fault-injection"))]
        return None;
    }

    /// Serves containers of Nydus images with the RAFS mounts `rafs` makes.
    pub fn with_rafs(mut self, rafs: Arc<dyn Rafs>) -> Self {
        self.rafs = Some(rafs);
        self
    }

    /// Mounts the Nydus image whose bootstrap layer is `boot` (for a container on it).
    async fn mount_rafs(&self, boot: &Record) -> Result<(), SnapshotError> {
        let image = boot
            .labels
            .get(core::labels::CRI_IMAGE_REF)
            .cloned()
            .ok_or_else(|| {
                SnapshotError::FailedPrecondition(format!(
                    "the Nydus bootstrap layer (snapshot {}) has no {} label: pull the image \
                     through CRI with disable_snapshot_annotations = false",
                    boot.id,
                    core::labels::CRI_IMAGE_REF
                ))
            })?;
        let Some(rafs) = &self.rafs else {
            return Err(SnapshotError::FailedPrecondition(format!(
                "{image} is a Nydus image and this snapshotter has no lazy-loading runtime"
            )));
        };
        rafs.mount(
            self.layout.bootstrap(boot.id),
            image.clone(),
            self.layout.rafs(boot.id),
        )
        .await
        .map_err(|e| {
            SnapshotError::FailedPrecondition(format!("mounting the Nydus image {image}: {e}"))
        })
    }

    /// The directory layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Creates snapshot `key` and its directories in one transaction.
    async fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let (store, layout, index_off) = (self.store.clone(), self.layout.clone(), self.index_off);
        if let Purpose::NydusBlob { target } = core::purpose(&labels) {
            // A Nydus blob layer: committed at once, empty, so containerd never fetches it
            // (the runtime reads the blob lazily); containerd is told it already exists.
            let name = target.clone();
            blocking(move || {
                store.write(|tx| {
                    let r = core::create(tx, Kind::Active, &key, &parent, labels.clone(), now())?;
                    make_dirs(&layout, r.id)?;
                    core::commit(tx, &target, &key, labels, (0, 0), now())?;
                    Ok(())
                })
            })
            .await?;
            return Err(SnapshotError::AlreadyExists(format!(
                "{name} (a Nydus blob layer, read lazily)"
            )));
        }
        let container = core::purpose(&labels) == Purpose::Container;
        let _serial = if container {
            Some(self.rafs_lock.lock().await)
        } else {
            None
        };
        let key2 = key.clone();
        let abort_at = self.abort_at();
        let (r, parents, boot) = blocking(move || {
            store.write(|tx| {
                let r = core::create(tx, kind, &key2, &parent, labels, now())?;
                make_dirs(&layout, r.id)?;
                checkpoint(abort_at, AbortAt::Prepare);
                let parents = core::parent_ids(tx, &r)?;
                let boot = if container {
                    core::bootstrap_below(tx, &r)?
                } else {
                    None
                };
                Ok((r, parents, boot))
            })
        })
        .await?;
        let Some((above, boot)) = boot else {
            return Ok(core::mounts(
                &self.layout,
                r.kind,
                r.id,
                &parents,
                None,
                index_off,
            ));
        };
        if let Err(e) = self.mount_rafs(&boot).await {
            // The container cannot start: nothing of it is kept.
            drop(_serial);
            let _ = self.remove(key).await;
            return Err(e);
        }
        let mnt = self.layout.rafs(boot.id);
        Ok(core::mounts(
            &self.layout,
            r.kind,
            r.id,
            &parents,
            Some((above, &mnt)),
            index_off,
        ))
    }
}

/// Makes the directories of snapshot `id`, replacing what a snapshot that was never recorded
/// left under that ID.
fn make_dirs(layout: &Layout, id: u64) -> Result<(), SnapshotError> {
    let dir = layout.dir(id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => tracing::info!(dir = %dir.display(), "replaced an orphaned snapshot directory"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", &dir, e)),
    }
    for d in [layout.fs(id), layout.work(id)] {
        std::fs::create_dir_all(&d).map_err(|e| io("creating", &d, e))?;
    }
    Ok(())
}

/// Bytes (allocated blocks) and inodes under `dir`, hard links counted once.
pub fn disk_usage(dir: &Path) -> Result<(i64, i64), SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::BTreeSet::new();
    let (mut size, mut inodes) = (0i64, 0i64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).map_err(|e| io("stat", &p, e))?;
        if seen.insert((m.dev(), m.ino())) {
            inodes += 1;
            size += i64::try_from(m.blocks() * 512).unwrap_or(i64::MAX);
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| io("reading", &p, e))? {
                stack.push(e.map_err(|e| io("reading", &p, e))?.path());
            }
        }
    }
    Ok((size, inodes))
}

impl Snapshotter for Overlay {
    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::Active, key, parent, labels).await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::View, key, parent, labels).await
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, SnapshotError> {
        let (store, layout, index_off) = (self.store.clone(), self.layout.clone(), self.index_off);
        blocking(move || {
            store.read(|tx| {
                let r = tx
                    .get(&key)?
                    .ok_or_else(|| SnapshotError::NotFound(key.clone()))?;
                let parents = core::parent_ids(tx, &r)?;
                let boot = match r.kind {
                    Kind::Committed => None,
                    _ => core::bootstrap_below(tx, &r)?,
                };
                let mnt = boot.map(|(above, b)| (above, layout.rafs(b.id)));
                let lowest = mnt.as_ref().map(|(above, m)| (*above, m.as_path()));
                Ok(core::mounts(
                    &layout, r.kind, r.id, &parents, lowest, index_off,
                ))
            })
        })
        .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let (store, layout) = (self.store.clone(), self.layout.clone());
        let abort_at = self.abort_at();
        blocking(move || {
            let id = store
                .read(|tx| tx.get(&key))?
                .ok_or_else(|| SnapshotError::NotFound(key.clone()))?
                .id;
            let usage = disk_usage(&layout.fs(id))?;
            checkpoint(abort_at, AbortAt::Commit);
            store.write(|tx| core::commit(tx, &name, &key, labels, usage, now()).map(drop))
        })
        .await
    }

    async fn remove(&self, key: String) -> Result<(), SnapshotError> {
        let _serial = self.rafs_lock.lock().await;
        let (store, layout) = (self.store.clone(), self.layout.clone());
        let abort_at = self.abort_at();
        let unused = blocking(move || {
            let (r, unused) = store.write(|tx| {
                let r = tx
                    .get(&key)?
                    .ok_or_else(|| SnapshotError::NotFound(key.clone()))?;
                let boot = match r.kind {
                    Kind::Committed => None,
                    _ => core::bootstrap_below(tx, &r)?.map(|(_, b)| b.id),
                };
                let r = core::remove(tx, &key)?;
                // The image's RAFS mount goes with its last container.
                let mut unused = boot;
                if let Some(b) = boot {
                    for (_, other) in tx.all()? {
                        if other.kind != Kind::Committed
                            && core::bootstrap_below(tx, &other)?.is_some_and(|(_, o)| o.id == b)
                        {
                            unused = None;
                            break;
                        }
                    }
                }
                Ok((r, unused))
            })?;
            // The record is gone; a directory left by a failure here is an orphan for Cleanup.
            checkpoint(abort_at, AbortAt::Remove);
            let dir = layout.dir(r.id);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), "removing a snapshot's directory: {e}");
            }
            Ok(unused)
        })
        .await?;
        if let (Some(b), Some(rafs)) = (unused, &self.rafs) {
            let mnt = self.layout.rafs(b);
            if let Err(e) = rafs.unmount(mnt.clone()).await {
                tracing::warn!(mountpoint = %mnt.display(), "unmounting a Nydus image: {e}");
            }
        }
        Ok(())
    }

    async fn stat(&self, key: String) -> Result<Info, SnapshotError> {
        let store = self.store.clone();
        blocking(move || {
            let r = store
                .read(|tx| tx.get(&key))?
                .ok_or_else(|| SnapshotError::NotFound(key.clone()))?;
            Ok(info(key, r))
        })
        .await
    }

    async fn update(&self, i: Info, paths: Vec<String>) -> Result<Info, SnapshotError> {
        let store = self.store.clone();
        blocking(move || {
            let r = store.write(|tx| core::update(tx, &i.name, i.labels, &paths, now()))?;
            Ok(info(i.name, r))
        })
        .await
    }

    async fn list(&self, filters: Vec<String>) -> Result<Vec<Info>, SnapshotError> {
        let filters: Vec<Filter> = filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<_, _>>()
            .map_err(|e| SnapshotError::InvalidArgument(e.to_string()))?;
        let store = self.store.clone();
        blocking(move || {
            let all = store.read(|tx| tx.all())?;
            Ok(all
                .into_iter()
                .filter(|(k, r)| listed(&filters, k, &r.parent, r.kind.as_str(), &r.labels))
                .map(|(k, r)| info(k, r))
                .collect())
        })
        .await
    }

    async fn usage(&self, key: String) -> Result<(i64, i64), SnapshotError> {
        let (store, layout) = (self.store.clone(), self.layout.clone());
        blocking(move || {
            let r = store
                .read(|tx| tx.get(&key))?
                .ok_or_else(|| SnapshotError::NotFound(key.clone()))?;
            match r.kind {
                Kind::Active => disk_usage(&layout.fs(r.id)),
                _ => Ok((r.size, r.inodes)),
            }
        })
        .await
    }

    async fn cleanup(&self) -> Result<(), SnapshotError> {
        let (store, layout) = (self.store.clone(), self.layout.clone());
        blocking(move || {
            let records = store.read(|tx| tx.all())?;
            let root = layout.snapshots();
            let dirs: Vec<String> = std::fs::read_dir(&root)
                .map_err(|e| io("reading", &root, e))?
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect();
            for id in core::orphans(&records, &dirs) {
                let dir: PathBuf = layout.dir(id);
                std::fs::remove_dir_all(&dir).map_err(|e| io("removing", &dir, e))?;
                tracing::info!(dir = %dir.display(), "removed an orphaned snapshot directory");
            }
            Ok(())
        })
        .await
    }
}
