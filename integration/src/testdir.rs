//! Per-test scratch directories under /tmp.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::mounts::unmount_all_under;
use crate::{Error, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under /tmp for one test: daemons' data, sockets and logs live here.
///
/// Removed on drop (after unmounting anything still mounted below it), unless the environment
/// variable `KEEP_TEST_DIRS=1` is set, in which case its path is printed and it is kept.
/// Declare it before the daemons that use it, so it is dropped after them.
///
/// Paths are kept short on purpose: unix socket paths are limited to 107 bytes.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    keep: bool,
}

impl TestDir {
    /// Creates `/tmp/dfit-<name>-<pid>-<n>` (name shortened to 20 safe characters) with a `logs/`
    /// subdirectory.
    pub fn new(name: &str) -> Result<TestDir> {
        let short: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(20)
            .collect();
        let pid = std::process::id();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = PathBuf::from(format!("/tmp/dfit-{short}-{pid}-{n}"));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let logs = path.join("logs");
                    std::fs::create_dir(&logs).map_err(|e| Error::io("create dir", &logs, e))?;
                    let keep = std::env::var("KEEP_TEST_DIRS").is_ok_and(|v| v == "1");
                    return Ok(TestDir { path, keep });
                }
                // Left over from an earlier run with the same pid: pick the next number.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("create dir", &path, e)),
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Where daemons started by the harness write their logs (`<dir>/logs`).
    pub fn logs_dir(&self) -> PathBuf {
        self.path.join("logs")
    }

    /// Creates (if needed) and returns the subdirectory `rel`.
    pub fn subdir(&self, rel: impl AsRef<Path>) -> Result<PathBuf> {
        let p = self.path.join(rel);
        std::fs::create_dir_all(&p).map_err(|e| Error::io("create dir", &p, e))?;
        Ok(p)
    }

    /// Keep the directory after the test, whatever `KEEP_TEST_DIRS` says.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let stuck = unmount_all_under(&self.path);
        if self.keep || !stuck.is_empty() {
            if !stuck.is_empty() {
                eprintln!(
                    "test dir {}: still mounted, not removed: {stuck:?}",
                    self.path.display()
                );
            }
            eprintln!("keeping test dir {}", self.path.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("cannot remove test dir {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_dirs_are_distinct_and_removed() {
        let a = TestDir::new("unit/test dir").expect("create a");
        let b = TestDir::new("unit/test dir").expect("create b");
        assert_ne!(a.path(), b.path());
        assert!(a
            .path()
            .to_string_lossy()
            .starts_with("/tmp/dfit-unit-test-dir-"));
        assert!(a.logs_dir().is_dir());
        let p = a.path().to_path_buf();
        std::fs::write(a.join("f"), b"x").expect("write");
        drop(a);
        if std::env::var("KEEP_TEST_DIRS").as_deref() != Ok("1") {
            assert!(!p.exists());
        }
    }
}
