use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Download API server (dfget talks to it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DownloadServer {
    /// Unix socket of the `dfdaemon.v2.DfdaemonDownload` gRPC service.
    /// Default: `/var/run/dragonfly/dfdaemon.sock`.
    pub socket_path: PathBuf,
}

impl Default for DownloadServer {
    fn default() -> Self {
        DownloadServer {
            socket_path: PathBuf::from("/var/run/dragonfly/dfdaemon.sock"),
        }
    }
}

/// Transport for piece bytes from parents (the downloading side decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Vortex over TCP (`storage.server.tcpPort` of the parent).
    #[default]
    Tcp,
    /// Vortex over QUIC (`storage.server.quicPort` of the parent).
    Quic,
}

/// Download behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Download {
    /// Download API server.
    pub server: DownloadServer,
    /// Pieces of one task fetched in parallel. Default: 8.
    pub concurrent_piece_count: u32,
    /// Timeout for one piece (connect + transfer). Default: 120s.
    #[serde(with = "humantime_serde")]
    pub piece_timeout: Duration,
    /// Transport used to fetch pieces from parents: `tcp` or `quic`. Default: tcp.
    pub protocol: Protocol,
    /// Most bytes per second downloaded (origin and parents together), e.g.
    /// `200MiB`. Default: 0 (unlimited).
    #[serde(alias = "bandwidthLimit")]
    pub rate_limit: bytesize::ByteSize,
    /// Most bytes per second fetched in the background for range-read tasks
    /// (the runtime's prefetch, completing pieces a read touched), within
    /// `rateLimit`. Default: 0 (unlimited).
    pub background_rate_limit: bytesize::ByteSize,
}

impl Default for Download {
    fn default() -> Self {
        Download {
            server: DownloadServer::default(),
            concurrent_piece_count: 8,
            piece_timeout: Duration::from_secs(120),
            protocol: Protocol::Tcp,
            rate_limit: bytesize::ByteSize(0),
            background_rate_limit: bytesize::ByteSize(0),
        }
    }
}

impl Download {
    pub(crate) fn validate(&self, p: &mut Vec<String>) {
        if !(1..=64).contains(&self.concurrent_piece_count) {
            p.push("download.concurrentPieceCount: must be 1-64".into());
        }
        if self.piece_timeout.is_zero() {
            p.push("download.pieceTimeout: must be greater than 0".into());
        }
        if self.server.socket_path.as_os_str().is_empty() {
            p.push("download.server.socketPath: must not be empty".into());
        }
    }
}
