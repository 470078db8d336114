use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Piece store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Storage {
    /// Directory of the store: `content/tasks/<id[0..3]>/<id>` files and the
    /// `metadata/` database. Default: `/var/lib/dragonfly`.
    pub dir: PathBuf,
    /// Keep cached tasks across restarts. When false the store is emptied at
    /// start-up. Default: true.
    pub keep: bool,
    /// Buffer size for reading task content when serving. Default: 1MiB.
    pub read_buffer_size: bytesize::ByteSize,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            dir: PathBuf::from("/var/lib/dragonfly"),
            keep: true,
            read_buffer_size: bytesize::ByteSize::mib(1),
        }
    }
}

impl Storage {
    pub(crate) fn validate(&self, p: &mut Vec<String>) {
        if self.dir.as_os_str().is_empty() {
            p.push("storage.dir: must not be empty".into());
        }
        let rb = self.read_buffer_size.as_u64();
        if !(4096..=64 * 1024 * 1024).contains(&rb) {
            p.push("storage.readBufferSize: must be 4KiB-64MiB".into());
        }
    }
}
