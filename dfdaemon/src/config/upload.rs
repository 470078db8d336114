use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Upload gRPC server (peers and schedulers talk to it; used by the P2P issue).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct UploadServer {
    /// Listen address. Default: `0.0.0.0`.
    pub ip: IpAddr,
    /// Listen port. Default: 4000.
    pub port: u16,
}

impl Default for UploadServer {
    fn default() -> Self {
        UploadServer {
            ip: IpAddr::from([0, 0, 0, 0]),
            port: 4000,
        }
    }
}

/// Upload (P2P serving) settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Upload {
    /// Upload server.
    pub server: UploadServer,
    /// Never serve pieces to other peers (leech mode). Default: false.
    pub disable_shared: bool,
    /// Most bytes per second served to other peers, over all connections
    /// (e.g. `100MiB`). Default: 0 (unlimited).
    #[serde(alias = "bandwidthLimit")]
    pub rate_limit: bytesize::ByteSize,
}

impl Upload {
    pub(crate) fn validate(&self, p: &mut Vec<String>) {
        super::check_port(p, "upload.server.port", self.server.port);
    }
}
