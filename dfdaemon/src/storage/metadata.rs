//! Task metadata in an embedded transactional store (redb), written by one
//! thread with group commit so piece records do not serialise on fsync.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");

/// Errors of the metadata database.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata database {path}: {message}")]
    Open { path: String, message: String },
    #[error("metadata database: {0}")]
    Db(String),
    #[error("metadata writer stopped")]
    WriterGone,
}

fn db_err(e: impl std::fmt::Display) -> MetadataError {
    MetadataError::Db(e.to_string())
}

/// Lifecycle state of a stored task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Some pieces may be missing.
    Running,
    /// Every piece is present and (for blobs) the digest verified.
    Succeeded,
}

/// A stored piece: its length and CRC-32 (IEEE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceMeta {
    pub length: u64,
    pub crc32: u32,
}

impl PieceMeta {
    /// Dragonfly's digest string `crc32:<decimal>`.
    pub fn digest(&self) -> String {
        format!("crc32:{}", self.crc32)
    }
}

/// Persistent record of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    pub id: String,
    /// The URL the task was first downloaded from.
    pub url: String,
    pub content_length: u64,
    pub piece_length: u64,
    pub status: TaskStatus,
    /// Expected content digest (`sha256:<hex>`), verified before `Succeeded`.
    pub digest: Option<String>,
    /// `Content-Type` the origin sent, replayed when serving from cache.
    pub content_type: Option<String>,
    pub pieces: BTreeMap<u32, PieceMeta>,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Unix milliseconds of the last read or write (GC orders by it).
    pub accessed_at: u64,
}

/// Current Unix time in milliseconds.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

enum Op {
    Put(Box<TaskMeta>),
    Delete(String),
    Sync(tokio::sync::oneshot::Sender<Result<(), MetadataError>>),
}

/// Handle to the metadata database's writer thread, which owns the database.
pub struct Metadata {
    tx: mpsc::Sender<Op>,
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// What the database held when it was opened.
#[derive(Debug, Default)]
pub struct Records {
    pub tasks: Vec<TaskMeta>,
    /// Keys whose records do not decode (to drop).
    pub undecodable: Vec<String>,
}

/// How long the writer waits before it retries writes that failed (a full disk, an I/O error).
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl Metadata {
    /// Opens (or creates) the database at `path`, reads every record, and starts the writer
    /// thread, which owns the database from then on (so it can reopen it after an I/O error).
    pub fn open(path: &Path) -> Result<(Metadata, Records), MetadataError> {
        let db = open_db(path)?;
        let records = load_all(&db)?;
        let (tx, rx) = mpsc::channel::<Op>();
        let pending = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = Writer {
            path: path.to_path_buf(),
            db: Some(db),
            pending: pending.clone(),
            carried: HashMap::new(),
            carried_ops: 0,
        };
        std::thread::Builder::new()
            .name("metadata-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| MetadataError::Db(format!("cannot start writer thread: {e}")))?;
        Ok((Metadata { tx, pending }, records))
    }

    fn send(&self, op: Op) {
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if self.tx.send(op).is_err() {
            self.pending
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Queues a record write (committed with the next batch).
    pub fn put(&self, meta: TaskMeta) {
        self.send(Op::Put(Box::new(meta)));
    }

    /// Queues a record deletion.
    pub fn delete(&self, id: &str) {
        self.send(Op::Delete(id.to_string()));
    }

    /// Writes queued but not yet committed (failed writes waiting for a retry count).
    pub fn pending(&self) -> usize {
        self.pending.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until everything queued so far is durably committed.
    pub async fn sync(&self) -> Result<(), MetadataError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Op::Sync(tx))
            .map_err(|_| MetadataError::WriterGone)?;
        rx.await.map_err(|_| MetadataError::WriterGone)?
    }
}

fn open_db(path: &Path) -> Result<Database, MetadataError> {
    let db = Database::create(path).map_err(|e| MetadataError::Open {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let w = db.begin_write().map_err(db_err)?;
    w.open_table(TASKS).map_err(db_err)?;
    w.commit().map_err(db_err)?;
    Ok(db)
}

/// Reads every record. Records that do not decode are returned as keys to drop.
fn load_all(db: &Database) -> Result<Records, MetadataError> {
    let r = db.begin_read().map_err(db_err)?;
    let t = r.open_table(TASKS).map_err(db_err)?;
    let mut records = Records::default();
    for item in t.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        match serde_json::from_slice::<TaskMeta>(v.value()) {
            Ok(m) if m.id == k.value() => records.tasks.push(m),
            _ => records.undecodable.push(k.value().to_string()),
        }
    }
    Ok(records)
}

/// The writer thread: commits queued writes in batches. A batch that fails (the disk is full,
/// an I/O error) is not lost: its writes are carried into the next commit, retried every
/// [`RETRY_AFTER`] even when nothing new comes, and the database is reopened first (after an
/// I/O error redb refuses every later transaction until it is reopened).
struct Writer {
    path: std::path::PathBuf,
    /// `None` while it cannot be reopened.
    db: Option<Database>,
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Failed writes, newest per task (`None` deletes).
    carried: HashMap<String, Option<Box<TaskMeta>>>,
    /// How many queued operations the carried writes stand for.
    carried_ops: usize,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        loop {
            let mut batch = Vec::new();
            let first = if self.carried.is_empty() {
                rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(RETRY_AFTER)
            };
            match first {
                Ok(op) => batch.push(op),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if !self.carried.is_empty() {
                        let _ = self.commit(Vec::new());
                    }
                    return;
                }
            }
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut replies = Vec::new();
            let mut writes = Vec::new();
            for op in batch {
                match op {
                    Op::Sync(reply) => replies.push(reply),
                    op => writes.push(op),
                }
            }
            let result = self.commit(writes);
            for reply in replies {
                let _ = reply.send(result.clone());
            }
        }
    }

    /// Commits the carried writes and `writes`; on failure carries them all.
    fn commit(&mut self, writes: Vec<Op>) -> Result<(), MetadataError> {
        self.carried_ops += writes.len();
        for op in writes {
            match op {
                Op::Put(m) => {
                    self.carried.insert(m.id.clone(), Some(m));
                }
                Op::Delete(id) => {
                    self.carried.insert(id, None);
                }
                Op::Sync(_) => {}
            }
        }
        if self.carried.is_empty() {
            return Ok(());
        }
        let result = match &self.db {
            Some(db) => commit_writes(db, &self.carried),
            None => Err(MetadataError::Db(
                "the database is closed after an I/O error".into(),
            )),
        };
        match &result {
            Ok(()) => {
                self.pending
                    .fetch_sub(self.carried_ops, std::sync::atomic::Ordering::AcqRel);
                self.carried.clear();
                self.carried_ops = 0;
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    records = self.carried.len(),
                    "metadata commit failed; retrying after reopening the database"
                );
                // Close before reopening: redb allows one open handle per file.
                self.db = None;
                match open_db(&self.path) {
                    Ok(db) => self.db = Some(db),
                    Err(e) => tracing::error!(error = %e, "cannot reopen the metadata database"),
                }
            }
        }
        result
    }
}

fn commit_writes(
    db: &Database,
    writes: &HashMap<String, Option<Box<TaskMeta>>>,
) -> Result<(), MetadataError> {
    let w = db.begin_write().map_err(db_err)?;
    {
        let mut t = w.open_table(TASKS).map_err(db_err)?;
        for (id, m) in writes {
            match m {
                Some(m) => {
                    let bytes = serde_json::to_vec(m).map_err(db_err)?;
                    t.insert(id.as_str(), bytes.as_slice()).map_err(db_err)?;
                }
                None => {
                    t.remove(id.as_str()).map_err(db_err)?;
                }
            }
        }
    }
    w.commit().map_err(db_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> TaskMeta {
        TaskMeta {
            id: id.into(),
            url: "http://x/y".into(),
            content_length: 10,
            piece_length: 4,
            status: TaskStatus::Running,
            digest: None,
            content_type: None,
            pieces: BTreeMap::from([(
                0,
                PieceMeta {
                    length: 4,
                    crc32: 7,
                },
            )]),
            created_at: 1,
            accessed_at: 2,
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_and_deletes_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        {
            let (m, _) = Metadata::open(&path).unwrap();
            m.put(meta("a"));
            m.put(meta("b"));
            m.delete("b");
            m.sync().await.unwrap();
        }
        // The writer thread holds the db until its channel closes; give it a moment.
        let mut tries = 0;
        let records = loop {
            match Metadata::open(&path) {
                Ok((_, records)) => break records,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(records.tasks, vec![meta("a")]);
        assert!(records.undecodable.is_empty());
    }
}
