//! The snapshot metadata in an embedded transactional database (redb, as the piece store's):
//! each operation of [`crate::core`] runs in one write transaction, so a process killed in the
//! middle of `Prepare`, `Commit` or `Remove` leaves the records as they were before it or as
//! they are after it, never in between.

use std::path::Path;

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use crate::core::{Record, Records, SnapshotError};

/// Snapshot key → JSON record.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// `next_id` → the last directory ID handed out.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn err(e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Store(e.to_string())
}

/// The snapshot records of one snapshotter.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, SnapshotError> {
        let db = Database::create(path)
            .map_err(|e| SnapshotError::Store(format!("{}: {e}", path.display())))?;
        let w = db.begin_write().map_err(err)?;
        w.open_table(SNAPSHOTS).map_err(err)?;
        w.open_table(META).map_err(err)?;
        w.commit().map_err(err)?;
        Ok(Store { db })
    }

    /// Runs `f` in one write transaction, committed only if it returns Ok.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut dyn Records) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let mut tx = Write(self.db.begin_write().map_err(err)?);
        let out = f(&mut tx)?;
        tx.0.commit().map_err(err)?;
        Ok(out)
    }

    /// Runs `f` over a consistent snapshot of the records.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&dyn Records) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let tx = Read(self.db.begin_read().map_err(err)?);
        f(&tx)
    }
}

struct Write(WriteTransaction);
struct Read(ReadTransaction);

fn decode(key: &str, bytes: &[u8]) -> Result<Record, SnapshotError> {
    serde_json::from_slice(bytes)
        .map_err(|e| SnapshotError::Store(format!("record of {key:?} is corrupt: {e}")))
}

/// The record of `key` in `t`.
fn get_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Record>, SnapshotError> {
    let v = t.get(key).map_err(err)?;
    v.map(|v| decode(key, v.value())).transpose()
}

/// Every record in `t`, by key.
fn all_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, Record)>, SnapshotError> {
    let mut out = Vec::new();
    for item in t.iter().map_err(err)? {
        let (k, v) = item.map_err(err)?;
        out.push((k.value().to_string(), decode(k.value(), v.value())?));
    }
    Ok(out)
}

fn refuse_write() -> SnapshotError {
    SnapshotError::Store("write in a read transaction".into())
}

impl Records for Write {
    fn get(&self, key: &str) -> Result<Option<Record>, SnapshotError> {
        get_in(&self.0.open_table(SNAPSHOTS).map_err(err)?, key)
    }

    fn put(&mut self, key: &str, record: &Record) -> Result<(), SnapshotError> {
        let bytes = serde_json::to_vec(record).map_err(err)?;
        let mut t = self.0.open_table(SNAPSHOTS).map_err(err)?;
        t.insert(key, bytes.as_slice()).map_err(err)?;
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<(), SnapshotError> {
        let mut t = self.0.open_table(SNAPSHOTS).map_err(err)?;
        t.remove(key).map_err(err)?;
        Ok(())
    }

    fn all(&self) -> Result<Vec<(String, Record)>, SnapshotError> {
        all_in(&self.0.open_table(SNAPSHOTS).map_err(err)?)
    }

    fn next_id(&mut self) -> Result<u64, SnapshotError> {
        let mut t = self.0.open_table(META).map_err(err)?;
        let last = t
            .get("next_id")
            .map_err(err)?
            .map(|v| v.value())
            .unwrap_or(0);
        let id = last + 1;
        t.insert("next_id", id).map_err(err)?;
        Ok(id)
    }
}

impl Records for Read {
    fn get(&self, key: &str) -> Result<Option<Record>, SnapshotError> {
        get_in(&self.0.open_table(SNAPSHOTS).map_err(err)?, key)
    }

    fn put(&mut self, _: &str, _: &Record) -> Result<(), SnapshotError> {
        Err(refuse_write())
    }

    fn delete(&mut self, _: &str) -> Result<(), SnapshotError> {
        Err(refuse_write())
    }

    fn all(&self) -> Result<Vec<(String, Record)>, SnapshotError> {
        all_in(&self.0.open_table(SNAPSHOTS).map_err(err)?)
    }

    fn next_id(&mut self) -> Result<u64, SnapshotError> {
        Err(refuse_write())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{commit, create, Kind};

    #[test]
    fn operations_persist_and_a_failed_one_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("snapstore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meta.redb");
        {
            let s = Store::open(&path).unwrap();
            s.write(|tx| create(tx, Kind::Active, "a", "", Default::default(), 1))
                .unwrap();
            s.write(|tx| commit(tx, "l1", "a", Default::default(), (1, 1), 2))
                .unwrap();
            // A transaction that fails after a write leaves nothing of it.
            let r: Result<(), _> = s.write(|tx| {
                create(tx, Kind::Active, "b", "l1", Default::default(), 3)?;
                create(tx, Kind::Active, "b", "l1", Default::default(), 3).map(drop)
            });
            assert!(matches!(r, Err(SnapshotError::AlreadyExists(_))));
        }
        let s = Store::open(&path).unwrap();
        let all = s.read(|tx| tx.all()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "l1");
        assert_eq!(all[0].1.kind, Kind::Committed);
        // The failed transaction's ID is handed out again: no record has it (a directory of
        // that name is an orphan, which Prepare replaces).
        let c = s
            .write(|tx| create(tx, Kind::Active, "c", "l1", Default::default(), 4))
            .unwrap();
        assert_eq!(c.id, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
