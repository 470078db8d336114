//! Task metadata in an embedded transactional store (redb), written by one
//! thread with group commit so piece records do not serialise on fsync.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");

/// Errors of the metadata database.
#[derive(Debug, thiserror::Error)]
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

/// Handle to the metadata database and its writer thread.
pub struct Metadata {
    db: std::sync::Arc<Database>,
    tx: mpsc::Sender<Op>,
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Metadata {
    /// Opens (or creates) the database at `path` and starts the writer thread.
    pub fn open(path: &Path) -> Result<Metadata, MetadataError> {
        let db = Database::create(path).map_err(|e| MetadataError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        {
            let w = db.begin_write().map_err(db_err)?;
            w.open_table(TASKS).map_err(db_err)?;
            w.commit().map_err(db_err)?;
        }
        let db = std::sync::Arc::new(db);
        let (tx, rx) = mpsc::channel::<Op>();
        let wdb = db.clone();
        let pending = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let wpending = pending.clone();
        std::thread::Builder::new()
            .name("metadata-writer".into())
            .spawn(move || writer_loop(&wdb, rx, &wpending))
            .map_err(|e| MetadataError::Db(format!("cannot start writer thread: {e}")))?;
        Ok(Metadata { db, tx, pending })
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

    /// Writes queued but not yet committed.
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

    /// Reads every record. Records that do not decode are returned as ids to drop.
    pub fn load_all(&self) -> Result<(Vec<TaskMeta>, Vec<String>), MetadataError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(TASKS).map_err(db_err)?;
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            match serde_json::from_slice::<TaskMeta>(v.value()) {
                Ok(m) if m.id == k.value() => ok.push(m),
                _ => bad.push(k.value().to_string()),
            }
        }
        Ok((ok, bad))
    }
}

fn writer_loop(db: &Database, rx: mpsc::Receiver<Op>, pending: &std::sync::atomic::AtomicUsize) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
            if batch.len() >= 1024 {
                break;
            }
        }
        let result = commit_batch(db, &batch);
        if let Err(e) = &result {
            tracing::error!(error = %e, "metadata commit failed");
        }
        let writes = batch.iter().filter(|op| !matches!(op, Op::Sync(_))).count();
        pending.fetch_sub(writes, std::sync::atomic::Ordering::AcqRel);
        for op in batch {
            if let Op::Sync(reply) = op {
                let _ = reply.send(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(MetadataError::Db(e.to_string())),
                });
            }
        }
    }
}

fn commit_batch(db: &Database, batch: &[Op]) -> Result<(), MetadataError> {
    // Later puts of the same task supersede earlier ones in the batch.
    let mut last: std::collections::HashMap<&str, Option<&TaskMeta>> = Default::default();
    for op in batch {
        match op {
            Op::Put(m) => {
                last.insert(m.id.as_str(), Some(m));
            }
            Op::Delete(id) => {
                last.insert(id.as_str(), None);
            }
            Op::Sync(_) => {}
        }
    }
    let w = db.begin_write().map_err(db_err)?;
    {
        let mut t = w.open_table(TASKS).map_err(db_err)?;
        for (id, m) in last {
            match m {
                Some(m) => {
                    let bytes = serde_json::to_vec(m).map_err(db_err)?;
                    t.insert(id, bytes.as_slice()).map_err(db_err)?;
                }
                None => {
                    t.remove(id).map_err(db_err)?;
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
            let m = Metadata::open(&path).unwrap();
            m.put(meta("a"));
            m.put(meta("b"));
            m.delete("b");
            m.sync().await.unwrap();
        }
        // The writer thread holds the db until its channel closes; give it a moment.
        let mut tries = 0;
        let m = loop {
            match Metadata::open(&path) {
                Ok(m) => break m,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let (ok, bad) = m.load_all().unwrap();
        assert_eq!(ok, vec![meta("a")]);
        assert!(bad.is_empty());
    }
}
