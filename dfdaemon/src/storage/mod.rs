//! The piece store: one sparse content file per task, pieces written at their
//! offsets, metadata in redb. Readers of any byte range wait for missing pieces.

pub mod blocking;
pub mod metadata;

use bytes::Bytes;
use futures_util::Stream;
pub use metadata::{now_millis, PieceMeta, TaskMeta, TaskStatus};
use metadata::{Metadata, MetadataError};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("task {task_id} failed: {reason}")]
    TaskFailed {
        task_id: String,
        reason: String,
        kind: FailureKind,
    },
    #[error("task {task_id} was removed")]
    TaskRemoved { task_id: String },
    #[error("range {start}-{end} is outside task {task_id} of {content_length} bytes")]
    OutOfRange {
        task_id: String,
        start: u64,
        end: u64,
        content_length: u64,
    },
}

/// Why a task failed, as the readers that waited for it learn it (and as the gRPC and HTTP
/// fronts report it: `UNAVAILABLE`/502, `DATA_LOSS`/502, `INTERNAL`/500).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Its sources (the origin, the parents) could not deliver it: a later attempt may succeed.
    Unavailable,
    /// Its content did not match the digest it was asked with: nothing of it was kept.
    DigestMismatch,
    /// A local failure (the disk, a bug).
    Internal,
}

impl StoreError {
    /// Whether the store's disk (or the user's quota on it) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::StorageFull
                || source.kind() == std::io::ErrorKind::QuotaExceeded)
    }

    /// What kind of failure this is, for the fronts.
    pub fn kind(&self) -> FailureKind {
        match self {
            StoreError::TaskFailed { kind, .. } => *kind,
            StoreError::TaskRemoved { .. } => FailureKind::Unavailable,
            StoreError::Io { .. } | StoreError::Metadata(_) | StoreError::OutOfRange { .. } => {
                FailureKind::Internal
            }
        }
    }
}

/// Buffers per vectored write (Linux's `IOV_MAX` is 1024).
const MAX_IOVECS: usize = 512;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct TaskState {
    meta: TaskMeta,
    failed: Option<(String, FailureKind)>,
    removed: bool,
    /// Every piece stored and the digest (if any) verified; the record may not
    /// be durable yet (`meta.status` turns `Succeeded` once it is).
    complete: bool,
}

impl TaskState {
    fn is_complete(&self) -> bool {
        self.complete || self.meta.status == TaskStatus::Succeeded
    }
}

/// A task in the store. Cheap to clone through `Arc`.
pub struct Task {
    pub id: String,
    path: PathBuf,
    /// Open while the task is in use; closed when the last user leaves, so an
    /// idle store holds no file descriptors.
    file: Mutex<Option<Arc<File>>>,
    state: Mutex<TaskState>,
    changed: watch::Sender<u64>,
    users: AtomicUsize,
    wanted: Mutex<BTreeSet<u32>>,
    /// Pieces this process has sent in full to a child (a seed peer's super-seeding follows
    /// them, see `grpc::upload`).
    uploaded: Mutex<BTreeSet<u32>>,
    /// Notified once the last user has left and the file is closed (a task dropped for a
    /// full disk wakes GC only once its space is really back).
    on_close: Mutex<Option<Arc<tokio::sync::Notify>>>,
}

/// Marks a task as in use while alive; GC never evicts a task in use.
pub struct TaskUse(Arc<Task>);

impl Drop for TaskUse {
    fn drop(&mut self) {
        if self.0.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.file.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let waiter = self
                .0
                .on_close
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(n) = waiter {
                n.notify_one();
            }
        }
    }
}

impl std::ops::Deref for TaskUse {
    type Target = Arc<Task>;
    fn deref(&self) -> &Arc<Task> {
        &self.0
    }
}

impl Task {
    fn lock(&self) -> MutexGuard<'_, TaskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Marks the task in use until the returned guard drops.
    pub fn use_task(self: &Arc<Self>) -> TaskUse {
        self.users.fetch_add(1, Ordering::AcqRel);
        TaskUse(self.clone())
    }

    /// Whether a reader or writer holds the task.
    pub fn in_use(&self) -> bool {
        self.users.load(Ordering::Acquire) > 0
    }

    /// A snapshot of the task's metadata.
    pub fn meta(&self) -> TaskMeta {
        self.lock().meta.clone()
    }

    pub fn content_length(&self) -> u64 {
        self.lock().meta.content_length
    }

    pub fn piece_length(&self) -> u64 {
        self.lock().meta.piece_length
    }

    pub fn piece_count(&self) -> u32 {
        let s = self.lock();
        common::piece::piece_count(s.meta.content_length, s.meta.piece_length)
    }

    /// Whether every piece is present and verified.
    pub fn is_complete(&self) -> bool {
        let s = self.lock();
        s.is_complete() && !s.removed
    }

    /// Records that piece `number` was sent in full to a child (a seed peer then keeps it from
    /// its other children until the task is complete: the first child passes it on).
    pub fn piece_uploaded(&self, number: u32) {
        self.uploaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(number);
    }

    /// Whether piece `number` was sent in full to a child ([`Task::piece_uploaded`]).
    pub fn was_uploaded(&self, number: u32) -> bool {
        self.uploaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&number)
    }

    /// Pieces not yet stored, in order.
    pub fn missing_pieces(&self) -> Vec<u32> {
        let s = self.lock();
        let n = common::piece::piece_count(s.meta.content_length, s.meta.piece_length);
        (0..n).filter(|i| !s.meta.pieces.contains_key(i)).collect()
    }

    /// Piece `number`, if stored.
    pub fn piece(&self, number: u32) -> Option<PieceMeta> {
        self.lock().meta.pieces.get(&number).copied()
    }

    pub fn has_piece(&self, number: u32) -> bool {
        self.lock().meta.pieces.contains_key(&number)
    }

    /// Whether the task was removed from the store (its file is gone or
    /// belongs to a newer task of the same ID).
    pub fn is_removed(&self) -> bool {
        self.lock().removed
    }

    /// The failure reason and kind, if the task failed.
    pub fn failure(&self) -> Option<(String, FailureKind)> {
        self.lock().failed.clone()
    }

    /// Clears a failure so a new download attempt can fill the missing pieces.
    pub fn clear_failure(&self) {
        self.lock().failed = None;
    }

    /// The content file, opened on first use.
    fn handle(&self) -> Result<Arc<File>, StoreError> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = &*f {
            return Ok(h.clone());
        }
        let h = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
                .map_err(io_err(&self.path))?,
        );
        *f = Some(h.clone());
        Ok(h)
    }

    /// Writes bytes at `offset` of the content file (blocking; call from a blocking context).
    /// A removed task takes no more writes (a stale worker's write would only take disk space
    /// back, e.g. after a full disk dropped the task). A failed one does: a later reader may
    /// fill what the failed download left.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        if self.lock().removed {
            return Err(StoreError::TaskRemoved {
                task_id: self.id.clone(),
            });
        }
        self.handle()?
            .write_all_at(data, offset)
            .map_err(io_err(&self.path))
    }

    /// Writes `chunks`, one after the other, at `offset` of the content file with vectored
    /// writes (blocking; as [`Task::write_at`]).
    pub fn write_chunks_at(&self, offset: u64, chunks: &[bytes::Bytes]) -> Result<(), StoreError> {
        if self.lock().removed {
            return Err(StoreError::TaskRemoved {
                task_id: self.id.clone(),
            });
        }
        let file = self.handle()?;
        let mut at = offset;
        let (mut i, mut skip) = (0usize, 0usize);
        while i < chunks.len() {
            let slices: Vec<std::io::IoSlice<'_>> = std::iter::once(&chunks[i][skip..])
                .chain(chunks[i + 1..].iter().map(|c| &c[..]))
                .take(MAX_IOVECS)
                .map(std::io::IoSlice::new)
                .collect();
            let mut n = match rustix::io::pwritev(&*file, &slices, at) {
                Ok(0) => {
                    return Err(io_err(&self.path)(std::io::Error::from(
                        std::io::ErrorKind::WriteZero,
                    )))
                }
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io_err(&self.path)(e.into())),
            };
            at += n as u64;
            while i < chunks.len() && n > 0 {
                let left = chunks[i].len() - skip;
                if n >= left {
                    n -= left;
                    i += 1;
                    skip = 0;
                } else {
                    skip += n;
                    n = 0;
                }
            }
            while i < chunks.len() && chunks[i].len() == skip {
                i += 1;
                skip = 0;
            }
        }
        Ok(())
    }

    /// Reads bytes at `offset` (blocking).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.handle()?
            .read_exact_at(buf, offset)
            .map_err(io_err(&self.path))
    }

    /// The open content file (for zero-copy sends); hold a [`TaskUse`] while using it.
    pub fn open_file(&self) -> Result<Arc<File>, StoreError> {
        self.handle()
    }

    /// Path of the content file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Asks the downloader to fetch this piece before others.
    pub fn want(&self, number: u32) {
        self.wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(number);
        self.notify();
    }

    /// Takes the lowest wanted piece that is still in `candidates`.
    pub fn take_wanted(&self, candidates: &BTreeSet<u32>) -> Option<u32> {
        let mut w = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|n| candidates.contains(n));
        let first = w.iter().next().copied();
        if let Some(n) = first {
            w.remove(&n);
        }
        first
    }

    /// The lowest piece among `candidates` a reader waits for; it stays wanted (until
    /// [`Task::take_wanted`] drops it or it is stored).
    pub fn first_wanted(&self, candidates: &BTreeSet<u32>) -> Option<u32> {
        let w = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        w.iter().copied().find(|n| candidates.contains(n))
    }

    /// A receiver that changes whenever a piece lands or the state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until piece `number` can be read: stored, and for a task whose
    /// digest is verified at the end, its last piece only once verified, so no
    /// client receives the final bytes of a blob that turns out wrong.
    pub async fn wait_piece(&self, number: u32) -> Result<PieceMeta, StoreError> {
        self.wait(number, true).await
    }

    /// Waits until piece `number` is stored, ignoring the hold on the last piece
    /// (for the verifier that computes the digest).
    pub async fn wait_stored(&self, number: u32) -> Result<PieceMeta, StoreError> {
        self.wait(number, false).await
    }

    async fn wait(&self, number: u32, respect_hold: bool) -> Result<PieceMeta, StoreError> {
        let mut rx = self.subscribe();
        let mut asked = false;
        loop {
            {
                let s = self.lock();
                self.check_usable(&s)?;
                if let Some(p) = s.meta.pieces.get(&number) {
                    let n = common::piece::piece_count(s.meta.content_length, s.meta.piece_length);
                    let held = respect_hold
                        && s.meta.digest.is_some()
                        && number + 1 == n
                        && !s.is_complete();
                    if !held {
                        return Ok(*p);
                    }
                }
            }
            if !asked {
                asked = true;
                if !self.has_piece(number) {
                    self.want(number);
                }
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::TaskRemoved {
                    task_id: self.id.clone(),
                });
            }
        }
    }

    /// An error if the task failed or was removed.
    fn check_usable(&self, s: &TaskState) -> Result<(), StoreError> {
        if let Some((reason, kind)) = &s.failed {
            return Err(StoreError::TaskFailed {
                task_id: self.id.clone(),
                reason: reason.clone(),
                kind: *kind,
            });
        }
        if s.removed {
            return Err(StoreError::TaskRemoved {
                task_id: self.id.clone(),
            });
        }
        Ok(())
    }

    /// Waits until the task is complete (every piece stored and verified).
    pub async fn wait_complete(&self) -> Result<(), StoreError> {
        let mut rx = self.subscribe();
        loop {
            {
                let s = self.lock();
                self.check_usable(&s)?;
                if s.is_complete() {
                    return Ok(());
                }
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::TaskRemoved {
                    task_id: self.id.clone(),
                });
            }
        }
    }

    /// Streams bytes `start..end` (exclusive), waiting for pieces as needed.
    pub fn read_range(
        self: &Arc<Self>,
        start: u64,
        end: u64,
        buf_size: usize,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
        let task = self.use_task();
        let piece_length = self.piece_length().max(1);
        let buf_size = buf_size.max(4096) as u64;
        futures_util::stream::unfold((task, start), move |(task, pos)| async move {
            if pos >= end {
                return None;
            }
            let number = (pos / piece_length) as u32;
            if let Err(e) = task.wait_piece(number).await {
                return Some((Err(e), (task, end)));
            }
            let piece_end = ((u64::from(number) + 1) * piece_length).min(end);
            let len = (piece_end - pos).min(buf_size) as usize;
            let t = task.0.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                t.read_at(pos, &mut buf).map(|_| Bytes::from(buf))
            })
            .await;
            match read {
                Ok(Ok(b)) => Some((Ok(b), (task, pos + len as u64))),
                Ok(Err(e)) => Some((Err(e), (task, end))),
                Err(e) => Some((
                    Err(StoreError::Io {
                        path: task.path.clone(),
                        source: std::io::Error::other(e.to_string()),
                    }),
                    (task, end),
                )),
            }
        })
    }
}

/// The content store.
pub struct Store {
    root: PathBuf,
    metadata: Metadata,
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    /// Signalled when a write found the disk full (GC runs a pass at once).
    disk_full: Arc<tokio::sync::Notify>,
}

/// Summary of what start-up recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub complete: usize,
    pub partial: usize,
    pub dropped_pieces: usize,
    pub dropped_tasks: usize,
    pub orphan_files: usize,
}

impl Store {
    /// Opens the store under `dir`. With `keep == false` the store is emptied.
    /// Recovers tasks: complete ones are kept; partial ones keep only the pieces
    /// whose bytes still match their CRC.
    pub fn open(dir: &Path, keep: bool) -> Result<(Store, Recovery), StoreError> {
        let content = dir.join("content").join("tasks");
        let meta_dir = dir.join("metadata");
        if !keep {
            for d in [&content, &meta_dir] {
                if d.exists() {
                    std::fs::remove_dir_all(d).map_err(io_err(d))?;
                }
            }
        }
        std::fs::create_dir_all(&content).map_err(io_err(&content))?;
        std::fs::create_dir_all(&meta_dir).map_err(io_err(&meta_dir))?;
        let (metadata, records) = Metadata::open(&meta_dir.join("dfdaemon.redb"))?;
        let store = Store {
            root: dir.to_path_buf(),
            metadata,
            tasks: Mutex::new(HashMap::new()),
            disk_full: Arc::new(tokio::sync::Notify::new()),
        };
        let rec = store.recover(records)?;
        Ok((store, rec))
    }

    fn recover(&self, records: metadata::Records) -> Result<Recovery, StoreError> {
        let (metas, bad) = (records.tasks, records.undecodable);
        let mut rec = Recovery::default();
        for id in bad {
            self.metadata.delete(&id);
            rec.dropped_tasks += 1;
        }
        let mut known = std::collections::HashSet::new();
        for mut meta in metas {
            let path = self.content_path(&meta.id);
            let size = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.metadata.delete(&meta.id);
                    rec.dropped_tasks += 1;
                    continue;
                }
                Err(e) => {
                    // Not a reason to forget the task: it may be readable later.
                    tracing::warn!(task_id = %meta.id, error = %e, "cannot stat content file; keeping the task");
                    meta.content_length
                }
            };
            if size != meta.content_length {
                let _ = std::fs::remove_file(&path);
                self.metadata.delete(&meta.id);
                rec.dropped_tasks += 1;
                continue;
            }
            if meta.status == TaskStatus::Running {
                let before = meta.pieces.len();
                match std::fs::File::open(&path) {
                    Ok(file) => meta.pieces.retain(|n, p| {
                        let (off, len) =
                            common::piece::piece_range(*n, meta.content_length, meta.piece_length);
                        if len != p.length {
                            return false;
                        }
                        let mut buf = vec![0u8; len as usize];
                        file.read_exact_at(&mut buf, off).is_ok()
                            && crc32fast::hash(&buf) == p.crc32
                    }),
                    Err(e) => {
                        tracing::warn!(task_id = %meta.id, error = %e, "cannot verify partial task; dropping its pieces");
                        meta.pieces.clear();
                    }
                }
                rec.dropped_pieces += before - meta.pieces.len();
                rec.partial += 1;
                self.metadata.put(meta.clone());
            } else {
                rec.complete += 1;
            }
            known.insert(meta.id.clone());
            let task = self.new_task(meta, path);
            self.lock().insert(task.id.clone(), task);
        }
        rec.orphan_files = self.remove_orphans(&known);
        Ok(rec)
    }

    /// Deletes content files that no record describes (a crash between
    /// creating a file and committing its record, or an undecodable record).
    fn remove_orphans(&self, known: &std::collections::HashSet<String>) -> usize {
        let mut removed = 0;
        let tasks_dir = self.root.join("content").join("tasks");
        let Ok(prefixes) = std::fs::read_dir(&tasks_dir) else {
            return 0;
        };
        for prefix in prefixes.flatten() {
            let Ok(files) = std::fs::read_dir(prefix.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if !known.contains(&name) && std::fs::remove_file(f.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Task>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_task(&self, meta: TaskMeta, path: PathBuf) -> Arc<Task> {
        let (changed, _) = watch::channel(0);
        Arc::new(Task {
            id: meta.id.clone(),
            path,
            file: Mutex::new(None),
            state: Mutex::new(TaskState {
                meta,
                failed: None,
                removed: false,
                complete: false,
            }),
            changed,
            users: AtomicUsize::new(0),
            wanted: Mutex::new(BTreeSet::new()),
            uploaded: Mutex::new(BTreeSet::new()),
            on_close: Mutex::new(None),
        })
    }

    /// Root directory of the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `content/tasks/<id[0..3]>/<id>`.
    pub fn content_path(&self, id: &str) -> PathBuf {
        let prefix: String = id.chars().take(3).collect();
        self.root
            .join("content")
            .join("tasks")
            .join(prefix)
            .join(id)
    }

    /// The task with this ID, if stored (complete or partial).
    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        self.lock().get(id).cloned()
    }

    /// All tasks.
    pub fn tasks(&self) -> Vec<Arc<Task>> {
        self.lock().values().cloned().collect()
    }

    /// Creates a task with a sparse content file of `content_length` bytes,
    /// replacing any previous task of that ID.
    pub fn create(&self, mut meta: TaskMeta) -> Result<Arc<Task>, StoreError> {
        if let Some(old) = self.lock().remove(&meta.id) {
            self.mark_removed(&old);
        }
        let path = self.content_path(&meta.id);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(meta.content_length).map_err(io_err(&path))?;
        meta.pieces.clear();
        meta.status = TaskStatus::Running;
        self.metadata.put(meta.clone());
        let task = self.new_task(meta, path);
        *task.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(file));
        self.lock().insert(task.id.clone(), task.clone());
        Ok(task)
    }

    /// Records a piece whose bytes are already written.
    pub fn commit_piece(&self, task: &Task, number: u32, piece: PieceMeta) {
        let snapshot = {
            let mut s = task.lock();
            s.meta.pieces.insert(number, piece);
            s.meta.accessed_at = now_millis();
            s.meta.clone()
        };
        self.metadata.put(snapshot);
        task.notify();
    }

    /// Forgets pieces whose bytes failed a check, so they are fetched again;
    /// a complete task becomes partial.
    pub fn drop_pieces(&self, task: &Task, numbers: &[u32]) {
        if numbers.is_empty() {
            return;
        }
        let snapshot = {
            let mut s = task.lock();
            for n in numbers {
                s.meta.pieces.remove(n);
            }
            s.complete = false;
            s.meta.status = TaskStatus::Running;
            s.meta.clone()
        };
        self.metadata.put(snapshot);
        task.notify();
    }

    /// Marks a task complete, durably: content synced to disk, record committed.
    pub async fn mark_succeeded(&self, task: &Arc<Task>) -> Result<(), StoreError> {
        // Readers may have everything now; durability follows (a crash before the
        // record is committed leaves a partial task whose pieces are re-verified).
        task.lock().complete = true;
        task.notify();
        let t = task.clone();
        tokio::task::spawn_blocking(move || t.handle()?.sync_data().map_err(io_err(&t.path)))
            .await
            .map_err(|e| StoreError::Io {
                path: task.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        let snapshot = {
            let mut s = task.lock();
            s.meta.status = TaskStatus::Succeeded;
            s.meta.accessed_at = now_millis();
            s.meta.clone()
        };
        self.metadata.put(snapshot);
        self.metadata.sync().await?;
        task.notify();
        Ok(())
    }

    /// Fails a task: readers waiting on it get `reason`. Stored pieces are kept
    /// so a later attempt resumes.
    pub fn mark_failed(&self, task: &Task, reason: &str, kind: FailureKind) {
        task.lock().failed = Some((reason.to_string(), kind));
        task.notify();
    }

    /// Updates the access time (for TTL and LRU eviction).
    pub fn touch(&self, task: &Task) {
        let snapshot = {
            let mut s = task.lock();
            s.meta.accessed_at = now_millis();
            s.meta.clone()
        };
        self.metadata.put(snapshot);
    }

    /// Sets the access time explicitly (tests and imports).
    pub fn set_accessed_at(&self, task: &Task, at: u64) {
        let snapshot = {
            let mut s = task.lock();
            s.meta.accessed_at = at;
            s.meta.clone()
        };
        self.metadata.put(snapshot);
    }

    fn mark_removed(&self, task: &Task) {
        task.lock().removed = true;
        task.notify();
    }

    /// Removes a task's file and record. Readers still holding it get an error.
    pub fn remove(&self, id: &str) -> Result<Option<u64>, StoreError> {
        let Some(task) = self.lock().remove(id) else {
            return Ok(None);
        };
        self.mark_removed(&task);
        let len = task.content_length();
        self.metadata.delete(id);
        match std::fs::remove_file(&task.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&task.path)(e)),
        }
        Ok(Some(len))
    }

    /// Fails a task and removes it (e.g. its content did not match its digest),
    /// so nothing of it is ever served as cached.
    pub fn purge(&self, task: &Task, reason: &str, kind: FailureKind) -> Result<(), StoreError> {
        self.mark_failed(task, reason, kind);
        let same = self.get(&task.id).map(|t| std::ptr::eq(&*t, task)) == Some(true);
        if same {
            self.remove(&task.id)?;
        }
        Ok(())
    }

    /// Fails a task whose write found the disk full, and gives its space back: its pieces
    /// could not be completed while the disk is full, and keeping them would only hold the
    /// disk. Wakes GC once the task's last user has left, so GC evicts idle tasks only if the
    /// disk is still above its threshold without the dropped task.
    pub fn fail_disk_full(&self, task: &Task, reason: &str) -> Result<(), StoreError> {
        tracing::warn!(
            task_id = task.id,
            "store disk full; dropping the partial task"
        );
        // Truncate before unlinking: the space of an unlinked file comes back only when its
        // last descriptor closes, and the download's writers may still hold one.
        if self.get(&task.id).map(|t| std::ptr::eq(&*t, task)) == Some(true) {
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&task.path) {
                let _ = f.set_len(0);
            }
        }
        let r = self.purge(task, reason, FailureKind::Internal);
        *task.on_close.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.disk_full.clone());
        if !task.in_use() {
            if let Some(n) = task
                .on_close
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                n.notify_one();
            }
        }
        r
    }

    /// Resolves when a task dropped for a full disk has been closed (its space is back)
    /// since the last call.
    pub async fn disk_full(&self) {
        self.disk_full.notified().await
    }

    /// Bytes allocated on disk by the store's content files (sparse files count
    /// only what is written).
    pub fn disk_usage(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.tasks()
            .iter()
            .filter_map(|t| std::fs::metadata(&t.path).ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }

    /// Metadata writes queued but not yet committed (0 means what is in memory is durable).
    pub fn pending_metadata_writes(&self) -> usize {
        self.metadata.pending()
    }

    /// Waits until queued metadata is committed.
    pub async fn sync_metadata(&self) -> Result<(), StoreError> {
        Ok(self.metadata.sync().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::collections::BTreeMap;

    fn meta(id: &str, len: u64, piece: u64, digest: Option<String>) -> TaskMeta {
        TaskMeta {
            id: id.into(),
            url: "http://o/x".into(),
            content_length: len,
            piece_length: piece,
            status: TaskStatus::Running,
            digest,
            content_type: None,
            pieces: BTreeMap::new(),
            created_at: now_millis(),
            accessed_at: now_millis(),
        }
    }

    fn put_piece(store: &Store, t: &Task, n: u32, data: &[u8]) {
        let off = u64::from(n) * t.piece_length();
        t.write_at(off, data).unwrap();
        store.commit_piece(
            t,
            n,
            PieceMeta {
                length: data.len() as u64,
                crc32: crc32fast::hash(data),
            },
        );
    }

    async fn collect(t: &Arc<Task>, a: u64, b: u64) -> Result<Vec<u8>, StoreError> {
        let mut s = Box::pin(t.read_range(a, b, 4096));
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn reader_waits_for_missing_pieces_and_gets_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), true).unwrap();
        let store = Arc::new(store);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let t = store.create(meta("t1", 10_000, 4096, None)).unwrap();
        let reader = {
            let t = t.clone();
            tokio::spawn(async move { collect(&t, 100, 9_000).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!reader.is_finished());
        // The reader asked for piece 0 first.
        assert_eq!(t.take_wanted(&BTreeSet::from([0, 1, 2])), Some(0));
        put_piece(&store, &t, 2, &data[8192..]);
        put_piece(&store, &t, 0, &data[..4096]);
        put_piece(&store, &t, 1, &data[4096..8192]);
        let got = reader.await.unwrap().unwrap();
        assert_eq!(got, &data[100..9_000]);
    }

    #[tokio::test]
    async fn last_piece_of_a_digest_task_is_held_until_verified_and_failure_reaches_readers() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), true).unwrap();
        let t = store
            .create(meta("t2", 5000, 4096, Some("sha256:00".into())))
            .unwrap();
        put_piece(&store, &t, 0, &[1u8; 4096]);
        put_piece(&store, &t, 1, &[2u8; 904]);
        let reader = {
            let t = t.clone();
            tokio::spawn(async move { collect(&t, 0, 5000).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!reader.is_finished(), "last piece must be held back");
        store
            .purge(&t, "digest mismatch", FailureKind::DigestMismatch)
            .unwrap();
        let err = reader.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(store.get("t2").is_none());
        assert!(!store.content_path("t2").exists());
    }

    #[tokio::test]
    async fn recovery_keeps_complete_tasks_and_verified_pieces_of_partial_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path(), true).unwrap();
            let a = store.create(meta("aaa1", 8192, 4096, None)).unwrap();
            put_piece(&store, &a, 0, &[7u8; 4096]);
            put_piece(&store, &a, 1, &[8u8; 4096]);
            store.mark_succeeded(&a).await.unwrap();
            let b = store.create(meta("bbb1", 12288, 4096, None)).unwrap();
            put_piece(&store, &b, 0, &[1u8; 4096]);
            put_piece(&store, &b, 2, &[3u8; 4096]);
            store.sync_metadata().await.unwrap();
            // Corrupt piece 2 behind the store's back.
            b.write_at(8192, &[9u8; 10]).unwrap();
            // A content file with no record (crash before its record was committed).
            let orphan = store.content_path("fff1");
            std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
            std::fs::write(&orphan, b"orphan").unwrap();
        }
        let (store, rec) = loop {
            match Store::open(dir.path(), true) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        assert_eq!(rec.complete, 1);
        assert_eq!(rec.partial, 1);
        assert_eq!(rec.dropped_pieces, 1);
        assert_eq!(rec.orphan_files, 1);
        assert!(!store.content_path("fff1").exists());
        let a = store.get("aaa1").unwrap();
        assert!(
            a.file.lock().unwrap().is_none(),
            "an idle task holds no file descriptor"
        );
        assert!(a.is_complete());
        assert_eq!(collect(&a, 0, 8192).await.unwrap()[4096], 8);
        let b = store.get("bbb1").unwrap();
        assert_eq!(b.missing_pieces(), vec![1, 2]);
    }

    #[tokio::test]
    async fn keep_false_empties_the_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path(), true).unwrap();
            store.create(meta("ccc1", 10, 4096, None)).unwrap();
            store.sync_metadata().await.unwrap();
        }
        let (store, _) = loop {
            match Store::open(dir.path(), false) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        assert!(store.get("ccc1").is_none());
        assert!(!store.content_path("ccc1").exists());
    }
}
