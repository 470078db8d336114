use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Piece server for other peers (Vortex).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageServer {
    /// Listen address of the Vortex piece server. Default: `0.0.0.0`.
    pub ip: std::net::IpAddr,
    /// Vortex over TCP port. Default: 4005.
    pub tcp_port: u16,
    /// Vortex over QUIC (UDP) port. Default: 4006.
    pub quic_port: u16,
}

impl Default for StorageServer {
    fn default() -> Self {
        StorageServer {
            ip: std::net::IpAddr::from([0, 0, 0, 0]),
            tcp_port: 4005,
            quic_port: 4006,
        }
    }
}

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
    /// Piece server for other peers; listens only when P2P is configured
    /// (`scheduler.addrs`) and `upload.disableShared` is false.
    pub server: StorageServer,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            dir: PathBuf::from("/var/lib/dragonfly"),
            keep: true,
            read_buffer_size: bytesize::ByteSize::mib(1),
            server: StorageServer::default(),
        }
    }
}

impl Storage {
    pub(crate) fn validate(&self, p: &mut Vec<String>) {
        if self.dir.as_os_str().is_empty() {
            p.push("storage.dir: must not be empty".into());
        }
        super::check_port(p, "storage.server.tcpPort", self.server.tcp_port);
        super::check_port(p, "storage.server.quicPort", self.server.quic_port);
        let rb = self.read_buffer_size.as_u64();
        if !(4096..=64 * 1024 * 1024).contains(&rb) {
            p.push("storage.readBufferSize: must be 4KiB-64MiB".into());
        }
    }
}
